# frozen_string_literal: true

module Hyperion
  module IOUring
    # Ruby-side defaults of the native HotpathRing (defined by the extension;
    # absent in the stub build, where hotpath_supported? is false).
    class HotpathRing
      class << self
        # n_bufs used when HotpathRing.new is not given one:
        # HYPERION_IO_URING_HOTPATH_BUFS (a power of two in 1..32768) or 512.
        #
        # @return [Integer]
        def default_n_bufs
          IOUring.env_integer("HYPERION_IO_URING_HOTPATH_BUFS", 512) do |v|
            v.between?(1, 32_768) && (v & (v - 1)).zero?
          end
        end

        # buf_size used when HotpathRing.new is not given one:
        # HYPERION_IO_URING_HOTPATH_BUF_SIZE (1..1 MiB) or 8192.
        #
        # @return [Integer]
        def default_buf_size
          IOUring.env_integer("HYPERION_IO_URING_HOTPATH_BUF_SIZE", 8192) { |v| v.between?(1, 1 << 20) }
        end

        # send_buffer_limit used when HotpathRing.new is not given one: the
        # bytes of send copies one ring may hold,
        # HYPERION_IO_URING_SEND_BUFFER_LIMIT (a positive Integer of bytes)
        # or 64 MiB. A bad value warns once and keeps the default.
        #
        # @return [Integer]
        def default_send_buffer_limit
          IOUring.env_integer("HYPERION_IO_URING_SEND_BUFFER_LIMIT", 64 << 20) do |v|
            v.between?(1, (1 << 62) - 1)
          end
        end
      end
    end
  end
end
