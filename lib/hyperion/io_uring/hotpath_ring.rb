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

      # Submits what is queued and waits, with the GVL released, until
      # +min_complete+ completions are ready or +timeout_ms+ passes (0: do
      # not wait; nil: no limit); then yields each and returns how many it
      # yielded. Each completion is a Hash with :op_kind (OP_ACCEPT,
      # OP_RECV, OP_SEND, or OP_CLOSE for a failed #submit_close), :fd,
      # :result, :buf_id (-1 when none) and :flags; with <tt>raw: true</tt>
      # the block gets those five Integers and nothing is allocated per
      # completion (nor per call: the keywords go to the native method as
      # plain arguments). Completions are copied out of the kernel's queue
      # before the block runs: if the block raises, the rest stay queued for
      # the next call. Thread#raise, Timeout and signals interrupt the wait.
      # Completions the kernel holds as deferred task work (a recv whose
      # data just arrived) are collected without releasing the GVL.
      #
      # +min_wait_us+ (0..1_000_000 microseconds) makes the wait a batch
      # wait: it waits for +min_complete+ completions for at most
      # +min_wait_us+, then returns as soon as at least one is ready (so it
      # may yield fewer than +min_complete+). A busy server then reaps more
      # completions per io_uring_enter; an idle one still answers its first
      # request at once. It needs the kernel's IORING_FEAT_MIN_TIMEOUT
      # (Linux 6.12); elsewhere, under a Fiber scheduler and under valgrind
      # the call waits for the first completion instead
      # (stats[:batch_waits] counts the batch waits made).
      #
      # @example
      #   ring.each_completion(min_complete: 1, timeout_ms: 100) { |c| c[:op_kind] }
      #   ring.each_completion(raw: true) { |op_kind, fd, result, buf_id, flags| ... }
      #   ring.each_completion(raw: true, min_complete: 32, min_wait_us: 50) { |op, fd, res, bid, flags| ... }
      # @param min_complete [Integer] 0..65536 (0: poll, never wait)
      # @param timeout_ms [Numeric, nil]
      # @param raw [Boolean]
      # @param min_wait_us [Integer, nil] 0..1_000_000
      # @yield [completion] or, with raw: true, [op_kind, fd, result, buf_id, flags]
      # @return [Integer] the completions yielded
      # @raise [Hyperion::IOUring::Error] when called from its own block
      def each_completion(min_complete: 1, timeout_ms: 100, raw: false, min_wait_us: nil, &block)
        __each_completion(min_complete, timeout_ms, raw, min_wait_us, &block)
      end
    end
  end
end
