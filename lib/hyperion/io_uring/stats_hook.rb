# frozen_string_literal: true

require "json"

module Hyperion
  module IOUring
    # HYPERION_IO_URING_STATS=path: at exit, the process writes to +path+ (a
    # JSON object) how many Rings and HotpathRings it opened and closed and
    # the sum of their #stats counters, so a run of a server that does not
    # expose the rings (Hyperion) can show they carried its traffic. A "%p"
    # in the path becomes the pid (one file per worker). Loaded only when the
    # variable is set; it costs nothing otherwise. Counters of a ring the GC
    # freed without #close are lost (Hyperion closes its rings).
    module StatsHook
      COUNTERS = %i[ops waits cancels accepts recvs recv_bytes sends send_bytes closes enobufs
                    send_buffer_full close_timeouts].freeze

      @mutex = Mutex.new
      @totals = Hash.new { |h, k| h[k] = Hash.new(0) }

      # Wrapped around Ring and HotpathRing.
      module Track
        def initialize(*args, **kw)
          super
          StatsHook.add(self, :opened)
        end

        def close
          StatsHook.add(self, :closed, stats) unless closed?
          super
        end
      end

      class << self
        # @return [String, nil] where the stats go, from the environment
        def path
          raw = ENV.fetch("HYPERION_IO_URING_STATS", "")
          raw.empty? ? nil : raw.gsub("%p", Process.pid.to_s)
        end

        # Counts one ring event (and its counters, at close).
        def add(ring, event, stats = nil)
          name = ring.class.name.split("::").last
          @mutex.synchronize do
            t = @totals[name]
            t[event] += 1
            stats&.each { |k, v| t[k] += v if COUNTERS.include?(k) }
          end
        rescue StandardError
          nil # never break a ring's close over a counter
        end

        # The totals so far, the rings still open counted as they stand.
        def snapshot
          live = Hash.new { |h, k| h[k] = Hash.new(0) }
          [IOUring::Ring, IOUring::HotpathRing].each do |klass|
            ObjectSpace.each_object(klass) do |ring|
              next if ring.closed?

              name = klass.name.split("::").last
              live[name][:open_at_exit] += 1
              ring.stats.each { |k, v| live[name][k] += v if COUNTERS.include?(k) }
            rescue StandardError
              nil
            end
          end
          @mutex.synchronize do
            (@totals.keys | live.keys).to_h do |name|
              merged = Hash.new(0)
              [@totals[name], live[name]].each { |h| h.each { |k, v| merged[k] += v } }
              [name, merged]
            end
          end
        end

        # Writes the snapshot to {path}.
        def write
          return unless (file = path)

          File.write(file, JSON.generate({ pid: Process.pid, version: IOUring::VERSION, rings: snapshot }))
        rescue StandardError => e
          warn "hyperion-io_uring: HYPERION_IO_URING_STATS: #{e.class}: #{e.message}"
        end

        # Wraps the ring classes and registers the at-exit write (once).
        def install!
          return if @installed

          @installed = true
          IOUring::Ring.prepend(Track) if IOUring::Ring.method_defined?(:stats)
          IOUring::HotpathRing.prepend(Track) if IOUring::HotpathRing.method_defined?(:stats)
          at_exit { write }
        end
      end
    end
  end
end
