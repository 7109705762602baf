# frozen_string_literal: true

require "io/wait"
require "timeout"
require "tmpdir"

# Syscall counting (perf tracepoints, or strace) and the per-operation
# metrics made of the counts.
module Bench
  # Counts the syscalls a process makes while a block runs: every syscall
  # (raw_syscalls:sys_enter) plus the ones the report breaks out.
  class SyscallCounter
    NAMED = %w[io_uring_enter accept4 accept close read write recvfrom sendto sendmsg recvmsg readv writev select
               pselect6 ppoll poll epoll_wait epoll_ctl fcntl ioctl futex getpid gettid getsockopt setsockopt
               newfstatat newfstat statx mmap munmap madvise brk rt_sigreturn rt_sigprocmask sched_yield].freeze
    TRACEFS = %w[/sys/kernel/tracing /sys/kernel/debug/tracing].freeze

    attr_reader :method, :note

    def initialize(choice)
      @method, @note = pick(choice)
    end

    def available? = !@method.nil?

    def pick(choice)
      return [nil, "syscall counting off (BENCH_SYSCALLS=off)"] if choice == "off"

      if %w[auto perf].include?(choice)
        if perf_ok?
          return [:perf, "`perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_<name>...` on the server " \
                         "during a separate, shorter load (same server process)"]
        end
        return [nil, "perf cannot count syscall tracepoints here"] if choice == "perf"
      end
      if system("command -v strace >/dev/null 2>&1")
        return [:strace, "`strace -c -f -p PID` on the server during a separate, shorter load " \
                         "(perf cannot count syscall tracepoints here)"]
      end

      [nil, "no syscall counter available (neither perf tracepoints nor strace)"]
    end

    def perf_ok?
      return false unless system("command -v perf >/dev/null 2>&1")

      _, _, st = Procs.capture("perf", "stat", "-e", "syscalls:sys_enter_io_uring_enter", "true", timeout: 30)
      st.success?
    rescue Error
      false
    end

    # The NAMED syscalls this kernel has a tracepoint for (perf refuses the
    # whole list if one is missing).
    def perf_events
      @perf_events ||= begin
        dir = TRACEFS.map { |t| File.join(t, "events", "syscalls") }.find { |d| File.directory?(d) }
        names = dir ? NAMED.select { |n| File.directory?(File.join(dir, "sys_enter_#{n}")) } : %w[io_uring_enter]
        ["raw_syscalls:sys_enter", *names.map { |n| "syscalls:sys_enter_#{n}" }]
      end
    end

    # Yields, counting the syscalls of +pid+ meanwhile. Returns
    # { "total" => n, "io_uring_enter" => n, ... }.
    def count(pid, &block)
      case @method
      when :perf then perf_count(pid, &block)
      when :strace then strace_count(pid, &block)
      else
        yield
        nil
      end
    end

    def perf_count(pid)
      Dir.mktmpdir("bench-perf") do |dir|
        ctl = File.join(dir, "ctl")
        ack = File.join(dir, "ack")
        out = File.join(dir, "out")
        err = File.join(dir, "err")
        [ctl, ack].each { |f| File.mkfifo(f) }
        perf = Procs.spawn("perf", "stat", "-x,", "-D", "-1", "--control", "fifo:#{ctl},#{ack}",
                           "-e", perf_events.join(","), "-p", pid.to_s, "-o", out,
                           in: File::NULL, out: File::NULL, err: err)
        ctl_w = ack_r = nil
        begin
          # Opening a FIFO blocks until perf opens the other end; perf may
          # also fail before it does (its stderr says why).
          Timeout.timeout(30) do
            ctl_w = File.open(ctl, "w")
            ack_r = File.open(ack, "r")
          end
          perf_cmd(ctl_w, ack_r, "enable")
          yield
          perf_cmd(ctl_w, ack_r, "disable")
        rescue Errno::EPIPE, Timeout::Error => e
          raise Error, "perf stat failed (#{e.class}): #{File.read(err) rescue ''}"
        ensure
          # perf writes its counts on SIGINT; closing ~40 tracepoint events
          # takes it a moment (one RCU grace period each).
          Procs.stop(perf, signal: "INT", grace: 30)
          [ctl_w, ack_r].each do |io|
            io&.close
          rescue Errno::EPIPE
            nil
          end
        end
        parse_perf(File.read(out))
      end
    end

    def perf_cmd(ctl_w, ack_r, cmd)
      ctl_w.write("#{cmd}\n")
      ctl_w.flush
      raise Error, "perf: no ack for #{cmd}" unless ack_r.wait_readable(30)

      ack_r.gets
    end

    def parse_perf(text)
      counts = {}
      text.each_line do |line|
        f = line.strip.split(",")
        next if f.size < 3 || line.start_with?("#")

        name = f[2].sub(/\Araw_syscalls:sys_enter\z/, "total").sub(/\Asyscalls:sys_enter_/, "")
        counts[name] = f[0] =~ /\A\d+\z/ ? Integer(f[0]) : 0
      end
      raise Error, "perf stat gave no counts:\n#{text}" unless counts.key?("total")

      counts
    end

    def strace_count(pid)
      Dir.mktmpdir("bench-strace") do |dir|
        out = File.join(dir, "out")
        st = Procs.spawn("strace", "-c", "-f", "-p", pid.to_s, "-o", out, in: File::NULL, out: File::NULL,
                                                                          err: File::NULL)
        sleep 1.0 # attaching to every thread takes a moment
        begin
          yield
        ensure
          Procs.stop(st, signal: "INT", grace: 10)
        end
        parse_strace(File.read(out))
      end
    end

    def parse_strace(text)
      counts = { "total" => 0 }
      text.each_line do |line|
        f = line.split
        # % time, seconds, usecs/call, calls, [errors], syscall
        next unless f.size >= 5 && f[0] =~ /\A[\d.]+\z/ && f[3] =~ /\A\d+\z/

        name = f.last
        next if name == "total"

        counts[name] = Integer(f[3])
        counts["total"] += Integer(f[3])
      end
      counts
    end
  end

  MEMORY_SYSCALLS = %w[mmap munmap brk madvise].freeze

  # Syscalls per operation from a count (SyscallCounter#count): all, without
  # the ones +close_path+ costs (and without Ruby's heap growth besides),
  # io_uring_enter, and the eight most frequent.
  def self.syscall_metrics(counts, ops, close_path: %w[close])
    return {} unless counts && ops.positive?

    per = ->(k) { counts.fetch(k, 0).fdiv(ops) }
    named = counts.reject { |k, _| k == "total" }
    other = counts.fetch("total", 0) - named.values.sum
    named["other"] = other if other.positive?
    {
      sys: per.call("total"),
      sys_no_close: per.call("total") - close_path.sum { |k| per.call(k) },
      # ... and without Ruby's own heap growth (the GC mapping pages).
      sys_no_close_mem: per.call("total") - (close_path + MEMORY_SYSCALLS).sum { |k| per.call(k) },
      enter: per.call("io_uring_enter"),
      breakdown: named.reject { |_, v| v.zero? }.sort_by { |_, v| -v }.first(8)
                      .to_h { |k, v| [k, v.fdiv(ops).round(3)] }
    }
  end

  # The log line's syscall part.
  def self.sys_summary(m)
    return "" unless m[:sys]

    format("%.3f syscalls/op (%s)", m[:sys], m[:breakdown].map { |k, v| "#{k} #{v}" }.join(", "))
  end
end
