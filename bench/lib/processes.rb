# frozen_string_literal: true

# Every process the bench starts, and the CPU time of those it reaped.
module Bench
  # Every child the harness starts, so that none outlives it.
  module Procs
    @pids = {}
    @lock = Mutex.new

    class << self
      def spawn(*cmd, **opts)
        pid = Process.spawn(*cmd, pgroup: true, **opts)
        @lock.synchronize { @pids[pid] = cmd.grep(String).first(3).join(" ") }
        pid
      end

      # TERM the child's process group, KILL it if it has not gone after
      # +grace+ seconds; reap it. Returns its Process::Status (or nil).
      def stop(pid, signal: "TERM", grace: 3.0)
        status = reap(pid)
        return status if status

        signal_group(pid, signal)
        deadline = Bench.monotonic + grace
        while Bench.monotonic < deadline
          return status if (status = reap(pid))

          sleep 0.02
        end
        signal_group(pid, "KILL")
        _, status = Process.wait2(pid)
        status
      rescue Errno::ECHILD
        nil
      ensure
        @lock.synchronize { @pids.delete(pid) }
      end

      # The child's Process::Status once it has exited (nil while it runs;
      # :reaped if it was reaped before).
      def reap(pid)
        _, status = Process.wait2(pid, Process::WNOHANG)
        @lock.synchronize { @pids.delete(pid) } if status
        status
      rescue Errno::ECHILD
        @lock.synchronize { @pids.delete(pid) }
        :reaped
      end

      def signal_group(pid, signal)
        Process.kill(signal, -pid)
      rescue Errno::ESRCH, Errno::EPERM
        begin
          Process.kill(signal, pid)
        rescue Errno::ESRCH
          nil
        end
      end

      def stop_all
        @lock.synchronize { @pids.keys }.each { |pid| stop(pid, grace: 1.0) }
      end

      # Runs a command to completion within +timeout+ seconds; returns
      # [stdout, stderr, status]. Killed (and reported) if it takes longer.
      def capture(*cmd, timeout:)
        out_r, out_w = IO.pipe
        err_r, err_w = IO.pipe
        pid = spawn(*cmd, out: out_w, err: err_w, in: File::NULL)
        out_w.close
        err_w.close
        readers = [Thread.new { out_r.read }, Thread.new { err_r.read }]
        status = nil
        deadline = Bench.monotonic + timeout
        until (status = reap(pid))
          if Bench.monotonic > deadline
            stop(pid, signal: "KILL")
            raise Error, "#{cmd.join(' ')}: still running after #{timeout} s; killed"
          end
          sleep 0.01
        end
        [readers[0].value, readers[1].value, status]
      ensure
        [out_r, err_r].each { |io| io&.close unless io&.closed? }
      end
    end
  end

  at_exit { Procs.stop_all }

  # CPU time (user + system, s) of the children reaped so far: a reaped
  # child's utime + stime (what /proc/PID/stat shows while it runs) are
  # added here when it is waited for, so this covers its whole life.
  def self.reaped_children_cpu
    t = Process.times
    t.cutime + t.cstime
  end
end
