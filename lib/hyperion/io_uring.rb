# frozen_string_literal: true

require "etc"
require_relative "io_uring/version"
require_relative "io_uring/upstream"

Hyperion::IOUring::Upstream.take_over!
Hyperion::IOUring::Upstream.shadow!

module Hyperion
  # io_uring rings for Ruby servers, with upstream Hyperion's API.
  #
  # The policy layer lives here: whether the host can use io_uring
  # ({supported?}, {hotpath_supported?}, {unsupported_reason}), what the
  # operator asked for ({resolve_policy!}, {resolve_hotpath_policy!},
  # {env_policy}) and what to tell them ({diagnostics}). The rings themselves
  # ({Ring}, {HotpathRing}) are defined by the native extension.
  module IOUring
    # ABI of upstream's Rust library; kept for code that compares it.
    EXPECTED_ABI = 2
    # IORING_OP_ACCEPT was stabilised in Linux 5.6.
    MIN_LINUX_KERNEL = [5, 6].freeze

    # Base class of the gem's errors.
    class Error < StandardError; end
    # The host cannot use io_uring (or the hot path); the message says why.
    # A StandardError, as upstream's.
    class Unsupported < Error; end
    # A ring was used in a process forked after it was created.
    class ForkError < Error; end
    # A ring was used from a thread other than the one that created it.
    class ThreadError < Error; end
    # The ring itself failed (a request could not be cancelled, or setup
    # succeeded but the ring later broke).
    class RingError < Error; end
    # HotpathRing#submit_send refused a send: its copy would pass the ring's
    # send_buffer_limit or the connection's connection_send_limit (the
    # message names the fd, the limit and the bytes). Nothing was queued.
    class SendBufferFull < Error; end

    POLICY_WORDS = {
      "on" => :on, "1" => :on, "true" => :on, "yes" => :on,
      "off" => :off, "0" => :off, "false" => :off, "no" => :off,
      "auto" => :auto
    }.freeze
    private_constant :POLICY_WORDS
  end
end

begin
  require "hyperion/io_uring/hyperion_io_uring"
rescue LoadError => e
  Hyperion::IOUring.const_set(:NATIVE_LOAD_ERROR, e)
  Hyperion::IOUring.const_set(:NATIVE_LIBURING, false)
  Hyperion::IOUring.const_set(:LIBURING_VERSION, nil)
  Hyperion::IOUring.const_set(:STUB_REASON, "native extension not loaded (#{e.message}); run `rake compile` or reinstall the gem")
end

require_relative "io_uring/policy"
require_relative "io_uring/hotpath_ring"
require_relative "io_uring/fiber_rings"

# The stub extension (and a failed load) defines no Ring. Without this,
# Ring.new would be a NameError instead of Unsupported with the reason.
unless Hyperion::IOUring.const_defined?(:Ring, false)
  module Hyperion
    module IOUring
      # Stands in for the native Ring where the extension has none.
      class Ring
        DEFAULT_QUEUE_DEPTH = 256

        # @raise [Unsupported] always, with {IOUring.unsupported_reason}
        def initialize(queue_depth: DEFAULT_QUEUE_DEPTH)
          raise Unsupported, "io_uring not supported on this host: #{IOUring.unsupported_reason}"
        end
      end
    end
  end
end

# HYPERION_IO_URING_STATS=path: ring counters written at exit (stats_hook.rb).
unless ENV.fetch("HYPERION_IO_URING_STATS", "").empty?
  require_relative "io_uring/stats_hook"
  Hyperion::IOUring::StatsHook.install!
end
