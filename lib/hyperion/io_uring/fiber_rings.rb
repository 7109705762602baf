# frozen_string_literal: true

module Hyperion
  module IOUring
    # One ring per fiber, opened lazily (upstream's pattern, made a helper).
    #
    # The ring lives in fiber-local storage: the fiber-local Thread#[] (on
    # every Ruby), so child fibers never inherit it (Fiber[] storage is copied
    # into fibers a fiber creates). A ring made before a fork is dropped in
    # the child (without touching the parent's ring) and a fresh one opened.
    # The ring goes when its fiber is collected, or by {close_fiber_rings}.
    module FiberRings
      RING_KEY = :__hyperion_io_uring_ring
      HOTPATH_KEY = :__hyperion_io_uring_hotpath_ring

      # A ring, with the pid that opened it.
      Entry = Struct.new(:ring, :pid)

      class << self
        # @api private
        def fetch(key, klass, opts)
          entry = Thread.current[key]
          return entry.ring if entry && entry.pid == Process.pid && !entry.ring.closed?

          entry&.ring&.close # in a forked child this only drops the fd
          ring = klass.new(**opts)
          Thread.current[key] = Entry.new(ring, Process.pid)
          ring
        end

        # @api private
        def close(key)
          entry = Thread.current[key]
          return false unless entry

          Thread.current[key] = nil
          entry.ring.close
          true
        end
      end
    end

    class << self
      # The calling fiber's {Ring}, opened on first use with +opts+
      # (e.g. <tt>queue_depth:</tt>); later calls from the same fiber return
      # the same ring (+opts+ are then ignored). A forked child gets a fresh
      # one.
      #
      # @return [Ring]
      # @raise [Unsupported] where io_uring cannot be used
      def fiber_ring(**opts)
        FiberRings.fetch(FiberRings::RING_KEY, Ring, opts)
      end

      # The calling fiber's {HotpathRing}, opened on first use with +opts+.
      #
      # @return [HotpathRing]
      # @raise [Unsupported] where the hot path cannot be used
      def fiber_hotpath_ring(**opts)
        FiberRings.fetch(FiberRings::HOTPATH_KEY, HotpathRing, opts)
      end

      # Closes the calling fiber's rings (both kinds) and forgets them.
      #
      # @return [Integer] how many rings were closed
      def close_fiber_rings
        [FiberRings::RING_KEY, FiberRings::HOTPATH_KEY].count { |key| FiberRings.close(key) }
      end
    end
  end
end
