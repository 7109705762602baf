# frozen_string_literal: true

# Loaded into every benchmarked server (ruby -r ./bench/cpu_probe.rb ...), so
# the examples stay untouched: on SIGUSR1 the server writes one line,
#
#   cpu_ns=<process CPU time, all threads, in ns> ops=<$bench_ops or -1>
#
# to the file descriptor named by BENCH_PROBE_FD (a pipe the harness reads).
# The harness signals before and after each load, so the server's CPU per
# operation comes from the process's own clock (nanoseconds, dead threads
# included) rather than /proc/<pid>/stat's 10 ms ticks. The signal arrives
# while the server is idle, outside the measured window's work.
if (fd = ENV["BENCH_PROBE_FD"])
  $bench_ops = -1
  probe_out = IO.for_fd(Integer(fd), "w", autoclose: false)
  probe_out.sync = true
  trap("USR1") do
    cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID, :nanosecond)
    probe_out.syswrite("cpu_ns=#{cpu} ops=#{$bench_ops}\n")
  end
end

# A hard bound on the server's life, even if the harness itself is killed
# with SIGKILL: alarm(2) (default action: terminate), no thread needed.
if (secs = ENV["BENCH_WATCHDOG"])
  require "fiddle"
  Fiddle::Function.new(Fiddle.dlopen(nil)["alarm"], [Fiddle::TYPE_INT], Fiddle::TYPE_INT).call(Integer(secs))
end
