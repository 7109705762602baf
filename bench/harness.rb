# frozen_string_literal: true

# The benchmark harness behind `rake bench` and `rake bench:quick`.
#
# Three workloads, each variant run ROUNDS times, interleaved (the order of
# the variants rotates every round), on 127.0.0.1 only:
#
# 1. accept: bench/accept_client.c (built here with gcc -O2) opens and closes
#    N connections, CONC in flight, against bench/accept_server.rb in four
#    variants (select, blocking, ring, multishot), and against
#    bench/hello_epoll.c --accept (c_accept, the ceiling: a reference).
# 2. http: wrk -t1 --latency, -c1/-c50/-c200, against the two example
#    servers (examples/hello_select_server.rb, examples/hello_server.rb) and
#    bench/hello_epoll.c (c_epoll, the ceiling: a reference); wrk's own CPU
#    use is recorded too.
# 3. percall: bench/percall.rb, ns per call.
#
# Server CPU comes from the server's own CLOCK_PROCESS_CPUTIME_ID, read
# through bench/cpu_probe.rb (SIGUSR1 before and after the load). Syscalls
# are counted in a separate, shorter load on the same server process (so the
# tracing never slows the timed run) with `perf stat` on the raw_syscalls
# and syscalls:sys_enter_* tracepoints, or `strace -c -f` where perf cannot.
#
# Every process started here is registered and killed (TERM, then KILL) when
# a run ends, when the harness fails, and at exit; the servers also carry an
# alarm(2) watchdog (BENCH_WATCHDOG) in case the harness is killed outright.
require "etc"
require "fileutils"
require "json"
require "io/wait"
require "rbconfig"
require "tmpdir"
require "timeout"

module Bench
  ROOT = File.expand_path("..", __dir__)

  # Where the run's Ruby code and extension come from: a snapshot of lib/,
  # examples/ and bench/ taken when the run starts (see Bench.snapshot!), so
  # that a `rake compile` in the same tree meanwhile (another terminal, an
  # editor's build) cannot change or break the code under test mid-run.
  def self.src = @src || ROOT
  HOST = "127.0.0.1"

  class Error < StandardError; end

  def self.monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  def self.log(msg)
    $stdout.puts(msg)
    $stdout.flush
  end

  # ---- configuration --------------------------------------------------------

  Config = Struct.new(:mode, :rounds, :accept_n, :accept_conc, :accept_burst, :accept_count_n, :wrk_seconds, :wrk_warmup,
                      :wrk_conns, :count_seconds, :percall_iterations, :out_md, :out_svg, :out_json, :pin,
                      :syscalls, :max_other, :retries, :wait_budget, keyword_init: true) do
    def quick? = mode == :quick

    # The accept loads: [row key, connections, burst?]. "c64": 64 in flight,
    # topped up as each finishes; "b500": bursts of 500 connections queued in
    # the backlog of a stopped server, which is then let go (Bench.run_burst).
    def accept_loads
      accept_conc.map { |c| ["c#{c}", c, false] } + accept_burst.map { |c| ["b#{c}", c, true] }
    end

    # The load under which multishot accept's io_uring_enter per connection
    # is judged ("under burst"): the largest burst, else the largest C.
    def burst_row = accept_burst.empty? ? "c#{accept_conc.max}" : "b#{accept_burst.max}"

    # The load under which accepts/s are compared: the largest continuous C.
    def rate_row = accept_conc.empty? ? burst_row : "c#{accept_conc.max}"
  end

  def self.env_list(name, default) = (ENV[name] || default).split(",").map { |v| Integer(v) }

  def self.config(mode)
    quick = mode == :quick
    results = quick ? File.join(ROOT, "tmp", "bench") : File.join(ROOT, "bench", "results")
    Config.new(
      mode: mode,
      rounds: Integer(ENV.fetch("BENCH_ROUNDS", quick ? "1" : "3")),
      accept_n: Integer(ENV.fetch("BENCH_ACCEPT_N", quick ? "3000" : "20000")),
      accept_conc: env_list("BENCH_ACCEPT_CONC", quick ? "64" : "1,64"),
      accept_burst: env_list("BENCH_ACCEPT_BURST", quick ? "200" : "500"),
      accept_count_n: Integer(ENV.fetch("BENCH_ACCEPT_COUNT_N", quick ? "1000" : "5000")),
      wrk_seconds: Integer(ENV.fetch("BENCH_WRK_SECONDS", quick ? "1" : "5")),
      wrk_warmup: Integer(ENV.fetch("BENCH_WRK_WARMUP", quick ? "0" : "1")),
      wrk_conns: env_list("BENCH_WRK_CONNS", quick ? "50" : "1,50,200"),
      count_seconds: Integer(ENV.fetch("BENCH_COUNT_SECONDS", quick ? "1" : "2")),
      percall_iterations: Integer(ENV.fetch("BENCH_PERCALL_ITERATIONS", quick ? "20000" : "200000")),
      out_md: File.join(results, quick ? "quick.md" : "latest.md"),
      out_svg: File.join(results, quick ? "quick.svg" : "latest.svg"),
      out_json: File.join(results, quick ? "quick.json" : "latest.json"),
      pin: ENV.fetch("BENCH_PIN", "1") != "0" && Etc.nprocessors >= 2 && system("command -v taskset >/dev/null 2>&1"),
      syscalls: ENV.fetch("BENCH_SYSCALLS", "auto"),
      max_other: Float(ENV.fetch("BENCH_MAX_OTHER", "0.10")),
      retries: Integer(ENV.fetch("BENCH_RETRIES", quick ? "0" : "2")),
      wait_budget: Float(ENV.fetch("BENCH_WAIT_BUDGET", quick ? "0" : "300"))
    )
  end

  # ---- processes ------------------------------------------------------------

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

  # A benchmarked server: started pinned, ready once it prints "listening
  # on HOST:PORT", asked for its CPU time through bench/cpu_probe.rb. A
  # +script+ not ending in .rb is an executable that answers the probe
  # itself (bench/hello_epoll.c, the ceiling servers).
  class Server
    attr_reader :pid, :port, :label

    def initialize(label, script, args, cpu:)
      @label = label
      @probe_r, probe_w = IO.pipe
      out_r, out_w = IO.pipe
      runner = script.end_with?(".rb") ? [RbConfig.ruby, "-r", File.join(Bench.src, "bench", "cpu_probe.rb")] : []
      cmd = [*Bench.pin_prefix(cpu), *runner, script, "--port", "0", *args]
      env = { "BENCH_PROBE_FD" => "3", "BENCH_WATCHDOG" => "900" }
      @pid = Procs.spawn(env, *cmd, 3 => probe_w, out: out_w, err: out_w, in: File::NULL, chdir: Bench.src)
      probe_w.close
      out_w.close
      @lines = Queue.new
      @output = []
      @reader = Thread.new do
        out_r.each_line do |line|
          @output << line
          @lines << line
        end
      ensure
        @lines << :eof
        out_r.close
      end
      wait_listening
    end

    def output = @output.join

    def wait_listening
      deadline = Bench.monotonic + 20
      loop do
        left = deadline - Bench.monotonic
        raise Error, "#{@label}: not listening after 20 s:\n#{output}" if left <= 0

        line = pop_with_timeout(left)
        raise Error, "#{@label}: exited before listening:\n#{output}" if line == :eof

        next unless line.is_a?(String) && (m = line.match(/listening on [\d.]+:(\d+)/))

        @port = Integer(m[1])
        return
      end
    end

    # Ruby 3.1's Queue#pop has no timeout: keyword.
    def pop_with_timeout(left)
      Timeout.timeout(left) { @lines.pop }
    rescue Timeout::Error
      nil
    end

    # [cpu_ns, ops] from the server itself.
    def cpu
      Process.kill("USR1", @pid)
      raise Error, "#{@label}: no answer to SIGUSR1:\n#{output}" unless @probe_r.wait_readable(10)

      line = @probe_r.gets
      m = line&.match(/cpu_ns=(\d+) ops=(-?\d+)/)
      raise Error, "#{@label}: bad probe answer #{line.inspect}" unless m

      [Integer(m[1]), Integer(m[2])]
    end

    def alive? = Procs.reap(@pid).nil?

    def stop
      Procs.signal_group(@pid, "CONT") # a stopped process would not see TERM
      status = Procs.stop(@pid)
      @reader.join(3)
      @probe_r.close unless @probe_r.closed?
      status
    end
  end

  def self.pin_prefix(cpu)
    @config&.pin && cpu ? ["taskset", "-c", cpu.to_s] : []
  end

  SERVER_CPU = 0
  LOAD_CPU = 1

  # ---- syscall counting -----------------------------------------------------

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

  # ---- other processes ----------------------------------------------------

  # How much of the benchmark's CPUs other processes used during a timed
  # window: the CPUs' busy time (/proc/stat, steal included) minus the
  # server's and the load generator's own CPU time, as a fraction of the
  # window's CPU time. On a shared machine this is what makes a run noisy,
  # so every timed run records it, the harness waits (within a budget) for
  # the CPUs to be quiet before a run, and retries a run that was disturbed.
  class Interference
    HZ = Etc.sysconf(Etc::SC_CLK_TCK)

    attr_reader :cpus, :waited, :retried

    def initialize(cfg)
      @cfg = cfg
      @cpus = cfg.pin ? [SERVER_CPU, LOAD_CPU] : (0...Etc.nprocessors).to_a
      @waited = 0.0
      @retried = 0
    end

    # Busy ticks of our CPUs.
    def busy_ticks
      File.foreach("/proc/stat").sum do |line|
        next 0 unless line =~ /\Acpu(\d+) /
        next 0 unless @cpus.include?(Integer(Regexp.last_match(1)))

        v = line.split[1..8].map(&:to_i) # user nice system idle iowait irq softirq steal
        v.sum - v[3] - v[4]
      end
    end

    def children_cpu
      t = Process.times
      t.cutime + t.cstime
    end

    # The harness's own CPU time (it polls, signals and spawns).
    def self_cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)

    # Network softirq work the kernel defers to ksoftirqd/N is our load's
    # too: CPU ticks of the ksoftirqd threads of our CPUs.
    def ksoftirqd_ticks
      @ksoftirqd ||= Dir["/proc/[0-9]*/comm"].filter_map do |f|
        name = File.read(f).strip rescue next
        m = name.match(%r{\Aksoftirqd/(\d+)\z}) or next
        File.dirname(f) if @cpus.include?(Integer(m[1]))
      end
      @ksoftirqd.sum do |dir|
        f = File.read(File.join(dir, "stat")).split(") ", 2).last.split
        Integer(f[11]) + Integer(f[12]) # utime, stime (fields 14 and 15)
      rescue SystemCallError
        0
      end
    end

    def start
      { busy: busy_ticks, children: children_cpu, self: self_cpu, softirqd: ksoftirqd_ticks, at: Bench.monotonic }
    end

    # Fraction of the CPUs' time used by others since +mark+, given the
    # CPU seconds our own server used meanwhile (the load generator is a
    # reaped child: its time is in children_cpu; the harness and ksoftirqd
    # count as ours too).
    def other_since(mark, own_cpu_s)
      wall = Bench.monotonic - mark[:at]
      busy = (busy_ticks - mark[:busy]).fdiv(HZ)
      mine = own_cpu_s + (children_cpu - mark[:children]) + (self_cpu - mark[:self]) +
             (ksoftirqd_ticks - mark[:softirqd]).fdiv(HZ)
      [(busy - mine) / (wall * @cpus.size), 0.0].max
    end

    # A fresh wait budget (for a workload's extra pass).
    def new_budget
      @budget_base = @waited
    end

    # Waits (within the budget) until the CPUs are quiet: sampled for 0.5 s,
    # others use less than max_other of them.
    def wait_quiet
      while @waited - (@budget_base || 0.0) < @cfg.wait_budget
        mark = start
        sleep 0.5
        return if other_since(mark, 0.0) <= @cfg.max_other

        sleep 1.0
        @waited += 1.5
      end
    end

    # Runs the timed block (which returns [metrics, own_cpu_s, mark]) until
    # others used at most max_other of the CPUs, at most 1 + retries times.
    # Returns the metrics with :other.
    def run(label)
      tries = 0
      loop do
        wait_quiet
        metrics, own_cpu_s, mark = yield
        metrics[:other] = other_since(mark, own_cpu_s)
        return metrics if metrics[:other] <= @cfg.max_other || tries >= @cfg.retries

        tries += 1
        @retried += 1
        Bench.log format("  (%s: other processes used %.0f%% of the CPUs; run again)", label, metrics[:other] * 100)
      end
    end
  end

  # ---- statistics ------------------------------------------------------------

  def self.median(values)
    v = values.compact.sort
    return nil if v.empty?

    v.size.odd? ? v[v.size / 2] : (v[v.size / 2 - 1] + v[v.size / 2]) / 2.0
  end

  def self.ratio(a, b) = a && b && b.positive? ? a.fdiv(b) : nil

  # ---- workloads --------------------------------------------------------------

  # Collects samples: results[workload][row][variant][metric] = [values].
  # Every run's metrics: data[workload][row][variant] = [metrics, ...]. A
  # run is quiet when other processes used at most +max_other+ of the CPUs
  # during it; statistics use the quiet runs of a variant, or all of its
  # runs when none was quiet (the report says which).
  class Results
    attr_reader :data, :meta

    def initialize(max_other = 1.0)
      @data = Hash.new { |h, k| h[k] = Hash.new { |h2, k2| h2[k2] = Hash.new { |h3, k3| h3[k3] = [] } } }
      @meta = {}
      @max_other = max_other
    end

    def add(workload, row, variant, metrics)
      @data[workload][row][variant] << metrics
    end

    def runs(workload, row, variant) = @data.dig(workload, row, variant) || []

    def quiet?(run) = run[:other].nil? || run[:other] <= @max_other

    def quiet_count(workload, row, variant) = runs(workload, row, variant).count { |r| quiet?(r) }

    # The runs statistics use.
    def used(workload, row, variant)
      all = runs(workload, row, variant)
      quiet = all.select { |r| quiet?(r) }
      quiet.empty? ? all : quiet
    end

    def samples(workload, row, variant, metric) = used(workload, row, variant).map { |r| r[metric] }.compact

    def med(workload, row, variant, metric) = Bench.median(samples(workload, row, variant, metric))

    def to_h = JSON.parse(JSON.generate(@data))
  end

  ACCEPT_VARIANTS = {
    "select" => "accept_nonblock + IO.select",
    "blocking" => "TCPServer#accept (blocking)",
    "ring" => "Ring#accept",
    "multishot" => "HotpathRing multishot accept",
    "c_accept" => "C accept4 loop (ceiling)"
  }.freeze

  # [label, script, extra arguments]; a script without .rb is a C program
  # built by the bench (Bench.c_binary).
  HTTP_VARIANTS = {
    "select" => ["IO.select server", "examples/hello_select_server.rb"],
    "hotpath" => ["HotpathRing server", "examples/hello_server.rb"],
    "hotpath_batch" => ["HotpathRing server, batch waits", "examples/hello_server.rb", %w[--batch auto]],
    "c_epoll" => ["C epoll server (ceiling)", "hello_epoll"]
  }.freeze

  # The ceiling variants: bench/hello_epoll.c, a minimal C server measured
  # like the others, so the report shows the best any server reaches against
  # this load generator on this machine. A reference, never a target.
  CEILING_VARIANTS = %w[c_accept c_epoll].freeze

  PERCALL_VARIANTS = {
    "sysread" => "IO#sysread(100) (floor)",
    "read_nonblock" => "IO#read_nonblock(100, exception: false)",
    "ring_read" => "Ring#read(fd, max: 100)",
    "each_completion" => "each_completion(raw: true), 1 ready",
    "each_completion_hash" => "each_completion (Hash), 1 ready",
    "copy_release" => "copy_buffer(id, 100) + release_buffer(id)",
    "take_buffer" => "take_buffer(id, 100)"
  }.freeze

  def self.rotate(list, round) = list.rotate(round % list.size)

  # bench/NAME.c built (gcc -O2) into tmp/bench/NAME when missing or older
  # than its source; checked once per run, so the run keeps the binary it
  # started with.
  def self.c_binary(name)
    @c_binaries ||= {}
    @c_binaries[name] ||= begin
      bin = File.join(ROOT, "tmp", "bench", name)
      src = File.join(ROOT, "bench", "#{name}.c")
      if !File.exist?(bin) || File.mtime(bin) < File.mtime(src)
        FileUtils.mkdir_p(File.dirname(bin))
        out, err, st = Procs.capture("gcc", "-O2", "-Wall", "-Wextra", "-o", bin, src, timeout: 120)
        raise Error, "gcc failed building #{src}:\n#{out}#{err}" unless st.success?
      end
      bin
    end
  end

  def self.accept_client = c_binary("accept_client")

  # The ceiling servers (HTTP, and --accept).
  def self.hello_epoll = c_binary("hello_epoll")

  # One client run: [rate, connections, seconds].
  def self.accept_client_cmd(port, n, conc)
    [*pin_prefix(LOAD_CPU), accept_client, "-h", HOST, "-p", port.to_s, "-n", n.to_s, "-c", conc.to_s, "-t", "120"]
  end

  def self.parse_accept_client(out, err, st)
    m = out.match(/connections=(\d+) errors=(\d+) seconds=([\d.]+) rate=([\d.]+) end=([\d.]+)/)
    raise Error, "accept_client failed (#{st}): #{out}#{err}" unless st.success? && m

    { rate: Float(m[4]), connections: Integer(m[1]), seconds: Float(m[3]), end: Float(m[5]) }
  end

  # One client run: { rate:, connections:, seconds: }.
  def self.run_accept_client(port, n, conc)
    parse_accept_client(*Procs.capture(*accept_client_cmd(port, n, conc), timeout: 180))
  end

  # Client connections to +port+ whose handshake is done (each waits in
  # the listener's backlog or was accepted): client-side sockets, remote
  # port +port+, state ESTABLISHED, in /proc/net/tcp.
  def self.established_to(port)
    hex = format(":%04X", port)
    File.foreach("/proc/net/tcp").count do |line|
      f = line.split
      f[2]&.end_with?(hex) && f[3] == "01"
    end
  end

  # The burst load: the server is stopped (SIGSTOP), the client connects
  # +burst+ times at once, and once all of them are established (in the
  # backlog) the server is let go (SIGCONT); repeated until +n+. Rate: connections over
  # the time from each SIGCONT to the client's last completion.
  def self.run_burst(server, n, burst)
    done = 0
    active = 0.0
    while done < n
      k = [burst, n - done].min
      out_r, out_w = IO.pipe
      pid = nil
      Process.kill("STOP", server.pid)
      begin
        pid = Procs.spawn(*accept_client_cmd(server.port, k, k), out: out_w, err: out_w, in: File::NULL)
        out_w.close
        deadline = monotonic + 20
        # Wait until all k handshakes are done. Not until the backlog holds
        # k: an accept the ring armed before SIGSTOP (multishot, or
        # Ring#accept's) can still take some connections while the server is
        # stopped. Counting the client's established sockets is exact and
        # needs no settling time.
        until established_to(server.port) >= k
          raise Error, "burst: client exited early: #{out_r.read}" if Procs.reap(pid)
          if monotonic > deadline
            raise Error, "burst: only #{established_to(server.port)} of #{k} connections established after 20 s"
          end

          sleep 0.002
        end
      ensure
        let_go = monotonic
        Process.kill("CONT", server.pid)
      end
      reader = Thread.new { out_r.read }
      st = nil
      deadline = monotonic + 120
      until (st = Procs.reap(pid))
        raise Error, "burst: client still running after 120 s" if monotonic > deadline

        sleep 0.005
      end
      pid = nil
      r = parse_accept_client(reader.value, "", st)
      out_r.close
      active += r[:end] - let_go
      done += r[:connections]
    end
    { rate: done / active, connections: done, seconds: active }
  ensure
    out_w&.close unless out_w&.closed?
    out_r&.close unless out_r&.closed?
    Procs.stop(pid, signal: "KILL") if pid && Procs.reap(pid).nil?
  end

  def self.accept_load(server, n, conc, burst)
    burst ? run_burst(server, n, conc) : run_accept_client(server.port, n, conc)
  end

  def self.run_accept(cfg, results, counter, interference)
    cfg.rounds.times do |round|
      cfg.accept_loads.each do |row, conc, burst|
        rotate(ACCEPT_VARIANTS.keys, round).each do |variant|
          accept_once(cfg, results, counter, interference, row, conc, burst, variant, round + 1)
        end
      end
    end
    loads = cfg.accept_loads.to_h { |row, conc, burst| [row, [conc, burst]] }
    top_up(cfg, results, :accept, loads.keys, ACCEPT_VARIANTS.keys, interference) do |row, variant, label|
      accept_once(cfg, results, counter, interference, row, *loads.fetch(row), variant, label)
    end
  end

  # A run disturbed by other processes (after its reruns) stays in the
  # results but out of the statistics while the variant has quiet runs. Once
  # the rounds are done, variants with fewer than +rounds+ quiet runs get
  # more runs, interleaved, at most +rounds+ more passes, waiting for quiet
  # CPUs within a second wait budget.
  def self.top_up(cfg, results, workload, rows, variants, interference)
    return if cfg.retries.zero?

    interference.new_budget
    cfg.rounds.times do |pass|
      short = rows.product(variants).select { |row, v| results.quiet_count(workload, row, v) < cfg.rounds }
      break if short.empty?

      log "  #{workload}: #{short.size} variant(s) short of #{cfg.rounds} quiet runs: extra pass #{pass + 1}"
      short.each { |row, v| yield row, v, "extra #{pass + 1}" }
    end
  end

  def self.accept_once(cfg, results, counter, interference, row, conc, burst, variant, round)
    server = if variant == "c_accept"
               Server.new("hello_epoll --accept", hello_epoll, ["--accept", "--seconds", "600"], cpu: SERVER_CPU)
             else
               Server.new("accept_server --variant #{variant}", File.join(src, "bench", "accept_server.rb"),
                          ["--variant", variant, "--seconds", "600"], cpu: SERVER_CPU)
             end
    begin
      accept_load(server, [cfg.accept_n / 10, 500].max, conc, burst) # warm-up
      metrics = interference.run("accept #{row} #{variant}") do
        cpu0, ops0 = server.cpu
        mark = interference.start
        r = accept_load(server, cfg.accept_n, conc, burst)
        cpu1, ops1 = server.cpu
        accepted = ops1 - ops0
        if accepted != r[:connections]
          raise Error, "#{variant}: server accepted #{accepted}, client finished #{r[:connections]}"
        end

        [{ rate: r[:rate], cpu_us: (cpu1 - cpu0) / 1000.0 / accepted }, (cpu1 - cpu0) / 1e9, mark]
      end
      if counter.available?
        c = nil
        counts = counter.count(server.pid) { c = accept_load(server, cfg.accept_count_n, conc, burst) }
        metrics.merge!(syscall_metrics(counts, c[:connections], close_path: CLOSE_PATH.fetch(variant)))
      end
      results.add(:accept, row, variant, metrics)
      log format("  accept  %-5s %-10s round %-7s %9.0f accepts/s  %6.2f us CPU/accept  others %2.0f%%  %s",
                 row, variant, "#{round}:", metrics[:rate], metrics[:cpu_us], metrics[:other] * 100,
                 sys_summary(metrics))
    ensure
      server&.stop
    end
  end

  # The syscalls that closing an accepted connection costs, per variant:
  # TCPSocket#close is close(2); Ring#accept gives an Integer fd, closed with
  # IO.for_fd(fd).close, whose IO#initialize adds fcntl(F_GETFL) and
  # ioctl(TCGETS) (an isatty check), seen with strace. The multishot variant
  # closes with HotpathRing#submit_close: an IORING_OP_CLOSE that goes with
  # the next io_uring_enter, so no syscall of its own (its work is inside
  # the io_uring_enter counted).
  CLOSE_PATH = {
    "select" => %w[close], "blocking" => %w[close], "ring" => %w[close fcntl ioctl], "multishot" => [],
    "c_accept" => %w[close]
  }.freeze

  MEMORY_SYSCALLS = %w[mmap munmap brk madvise].freeze

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

  def self.sys_summary(m)
    return "" unless m[:sys]

    format("%.3f syscalls/op (%s)", m[:sys], m[:breakdown].map { |k, v| "#{k} #{v}" }.join(", "))
  end

  def self.parse_duration_ms(text)
    m = text.match(/\A([\d.]+)(us|ms|s|m)\z/) or return nil
    Float(m[1]) * { "us" => 0.001, "ms" => 1.0, "s" => 1000.0, "m" => 60_000.0 }.fetch(m[2])
  end

  # CPU time (user + system, s) of the children reaped so far: a reaped
  # child's utime + stime (what /proc/PID/stat shows while it runs) are
  # added here when it is waited for, so this covers its whole life.
  def self.reaped_children_cpu
    t = Process.times
    t.cutime + t.cstime
  end

  # One wrk run. Also returns :wrk_cpu, wrk's CPU time over its wall time
  # (spawn to reap) as a fraction of one CPU: near 1.0, the load generator
  # was saturated and capped req/s whatever the server. (No other child is
  # reaped meanwhile: the server runs on; perf is not running.)
  def self.run_wrk(port, conns, seconds)
    cpu0 = reaped_children_cpu
    t0 = monotonic
    out, err, st = Procs.capture(*pin_prefix(LOAD_CPU), "wrk", "-t1", "-c#{conns}", "-d#{seconds}s", "--latency",
                                 "--timeout", "5s", "http://#{HOST}:#{port}/", timeout: seconds + 30)
    wall = monotonic - t0
    wrk_cpu = (reaped_children_cpu - cpu0) / wall
    raise Error, "wrk failed (#{st}): #{out}#{err}" unless st.success?

    requests = out[/(\d+) requests in/, 1]
    rps = out[/Requests\/sec:\s+([\d.]+)/, 1]
    raise Error, "cannot parse wrk output:\n#{out}" unless requests && rps

    errors = out[/Socket errors: (.*)/, 1]
    non2xx = out[/Non-2xx or 3xx responses: (\d+)/, 1]
    raise Error, "wrk saw #{non2xx} non-2xx responses:\n#{out}" if non2xx

    { requests: Integer(requests), rps: Float(rps),
      p50: parse_duration_ms(out[/^\s+50%\s+(\S+)/, 1].to_s), p99: parse_duration_ms(out[/^\s+99%\s+(\S+)/, 1].to_s),
      socket_errors: errors, wrk_cpu: wrk_cpu }
  end

  def self.run_http(cfg, results, counter, interference)
    cfg.rounds.times do |round|
      cfg.wrk_conns.each do |conns|
        rotate(HTTP_VARIANTS.keys, round).each do |variant|
          http_once(cfg, results, counter, interference, conns, variant, round + 1)
        end
      end
    end
    rows = cfg.wrk_conns.map { |c| "c#{c}" }
    top_up(cfg, results, :http, rows, HTTP_VARIANTS.keys, interference) do |row, variant, label|
      http_once(cfg, results, counter, interference, Integer(row[1..]), variant, label)
    end
  end

  def self.http_once(cfg, results, counter, interference, conns, variant, round)
    label, script, extra = HTTP_VARIANTS.fetch(variant)
    path = script.end_with?(".rb") ? File.join(src, script) : c_binary(script)
    server = Server.new(label, path, ["--seconds", "600", *extra], cpu: SERVER_CPU)
    begin
      run_wrk(server.port, conns, cfg.wrk_warmup) if cfg.wrk_warmup.positive?
      metrics = interference.run("http c=#{conns} #{variant}") do
        cpu0, = server.cpu
        mark = interference.start
        w = run_wrk(server.port, conns, cfg.wrk_seconds)
        cpu1, = server.cpu
        log "  (wrk socket errors: #{w[:socket_errors]})" if w[:socket_errors]
        [{ rps: w[:rps], p50: w[:p50], p99: w[:p99], cpu_us: (cpu1 - cpu0) / 1000.0 / w[:requests],
           wrk_cpu: w[:wrk_cpu] }, (cpu1 - cpu0) / 1e9, mark]
      end
      if counter.available?
        c = nil
        counts = counter.count(server.pid) { c = run_wrk(server.port, conns, cfg.count_seconds) }
        metrics.merge!(syscall_metrics(counts, c[:requests]))
      end
      results.add(:http, "c#{conns}", variant, metrics)
      log format("  http    c=%-3d %-10s round %-7s %9.0f req/s  p50 %.3f ms  p99 %.3f ms  %6.2f us CPU/req  " \
                 "wrk CPU %3.0f%%  others %2.0f%%  %s", conns, variant, "#{round}:", metrics[:rps],
                 metrics[:p50] || -1, metrics[:p99] || -1, metrics[:cpu_us], metrics[:wrk_cpu] * 100,
                 metrics[:other] * 100, sys_summary(metrics))
    ensure
      server&.stop
    end
  end

  def self.run_percall(cfg, results, interference)
    cfg.rounds.times { |round| percall_once(cfg, results, interference, round, (round + 1).to_s) }
    return if cfg.retries.zero?

    interference.new_budget
    extra = 0
    while results.quiet_count(:percall, "ns", "sysread") < cfg.rounds && extra < cfg.rounds
      extra += 1
      percall_once(cfg, results, interference, cfg.rounds + extra, "extra #{extra}")
    end
  end

  def self.percall_once(cfg, results, interference, round, label)
    order = rotate(PERCALL_VARIANTS.keys, round)
    data = nil
    m = interference.run("percall round #{label}") do
      mark = interference.start
      out, err, st = Procs.capture(*pin_prefix(SERVER_CPU), RbConfig.ruby, File.join(src, "bench", "percall.rb"),
                                   "--iterations", cfg.percall_iterations.to_s, "--order", order.join(","),
                                   timeout: 600)
      raise Error, "percall.rb failed (#{st}):\n#{out}#{err}" unless st.success?

      data = JSON.parse(out.lines.last)
      [{}, 0.0, mark]
    end
    data.each do |name, v|
      results.add(:percall, "ns", name, { ns: v["ns"], waits: v["waits_per_call"], other: m[:other] })
    end
    log "  percall round #{label}: " + data.map { |k, v| format("%s %.0f ns", k, v["ns"]) }.join(", ") +
        format("  (others %.0f%%)", m[:other] * 100)
  end

  # ---- the run --------------------------------------------------------------

  def self.loadavg = File.read("/proc/loadavg").split.first(3).join(" ")

  def self.machine_meta(cfg, counter)
    require "hyperion/io_uring"
    io = Hyperion::IOUring
    cpu_model = File.read("/proc/cpuinfo")[/^model name\s*:\s*(.*)$/, 1] rescue nil
    dirty = `git -C #{ROOT} status --porcelain -- ext lib examples bench 2>/dev/null`.lines.map { |l| l[3..].strip }
    {
      "date" => Time.now.utc.strftime("%Y-%m-%d %H:%M UTC"),
      "commit" => ENV["BENCH_COMMIT"] || `git -C #{ROOT} rev-parse --short HEAD 2>/dev/null`.strip,
      "extension" => extension_id,
      "dirty" => dirty,
      "cpus" => Etc.nprocessors,
      "cpu_model" => cpu_model,
      "kernel" => Etc.uname[:release],
      "ruby" => RUBY_DESCRIPTION,
      "liburing" => io.const_defined?(:LIBURING_VERSION) ? io::LIBURING_VERSION : nil,
      "setup_flags" => (io.diagnostics[:setup_flags] rescue nil),
      "setup_env" => ENV["HYPERION_IO_URING_SETUP"],
      "pinned" => cfg.pin ? "server (and percall.rb) on CPU #{SERVER_CPU}, wrk/accept_client on CPU #{LOAD_CPU} (taskset)" : "not pinned",
      "syscalls" => counter.note,
      "syscall_method" => counter.method&.to_s,
      "mode" => cfg.mode.to_s,
      "rounds" => cfg.rounds,
      "accept_n" => cfg.accept_n,
      "accept_conc" => cfg.accept_conc,
      "accept_burst" => cfg.accept_burst,
      "accept_count_n" => cfg.accept_count_n,
      "wrk_seconds" => cfg.wrk_seconds,
      "wrk_warmup" => cfg.wrk_warmup,
      "wrk_conns" => cfg.wrk_conns,
      "count_seconds" => cfg.count_seconds,
      "percall_iterations" => cfg.percall_iterations
    }
  end

  WORKLOADS = %w[accept http percall].freeze

  # Writes the Markdown and SVG again from a run's JSON (after a change to
  # the report), next to it.
  def self.render(json_path)
    j = JSON.parse(File.read(json_path))
    meta = j.fetch("meta")
    cfg = config(meta["mode"] == "quick" ? :quick : :full)
    cfg.accept_conc = meta["accept_conc"] || []
    cfg.accept_burst = meta["accept_burst"] || []
    cfg.wrk_conns = meta["wrk_conns"] || []
    base = json_path.delete_suffix(".json")
    cfg.out_md = "#{base}.md"
    cfg.out_svg = "#{base}.svg"
    results = Results.new(meta["max_other"] || 1.0)
    results.meta.merge!(meta)
    j.fetch("results").each do |workload, rows|
      rows.each do |row, variants|
        variants.each do |variant, runs|
          runs.each { |run| results.add(workload.to_sym, row, variant, run.transform_keys(&:to_sym)) }
        end
      end
    end
    only = WORKLOADS.select { |w| j["results"].key?(w) }
    report = Report.new(results, cfg, only)
    File.write(cfg.out_svg, report.svg)
    File.write(cfg.out_md, report.markdown)
    log "written: #{cfg.out_md}, #{cfg.out_svg}"
  end

  # Copies lib/ (with the compiled extension), examples/ and bench/ into
  # tmp/bench/src-PID and runs everything from there.
  def self.snapshot!
    dir = File.join(ROOT, "tmp", "bench", "src-#{Process.pid}")
    FileUtils.rm_rf(dir)
    FileUtils.mkdir_p(dir)
    %w[lib examples bench].each { |d| FileUtils.cp_r(File.join(ROOT, d), dir) }
    @src = dir
    $LOAD_PATH.unshift(File.join(dir, "lib"))
    # Bundler may have loaded lib/.../version.rb already (through the
    # gemspec): its snapshot copy counts as loaded, or Ruby warns about
    # VERSION being defined twice.
    lib = File.join(ROOT, "lib")
    $LOADED_FEATURES.select { |f| f.start_with?("#{lib}/") }.each do |f|
      copy = File.join(dir, "lib", f.delete_prefix("#{lib}/"))
      $LOADED_FEATURES << copy if File.exist?(copy)
    end
    at_exit { FileUtils.rm_rf(dir) }
  end

  def self.extension_id
    so = Dir[File.join(src, "lib", "hyperion", "io_uring", "hyperion_io_uring.*")].first
    return nil unless so

    require "digest"
    "#{File.basename(so)} sha256 #{Digest::SHA256.file(so).hexdigest[0, 12]}, built #{File.mtime(so).utc.strftime('%H:%M UTC')}"
  end

  def self.run(mode, only: WORKLOADS)
    cfg = @config = config(mode)
    started = monotonic
    snapshot!
    have = ->(tool) { system("command -v #{tool} >/dev/null 2>&1") }
    if only.include?("http") && !have.call("wrk")
      raise Error, "wrk not found (apt-get install -y wrk)" unless cfg.quick?

      log "bench: wrk not found (apt-get install -y wrk): skipping the HTTP workload in quick mode"
      only -= ["http"]
    end
    if (only.include?("accept") || only.include?("http")) && !have.call("gcc")
      raise Error, "gcc not found (apt-get install -y gcc)"
    end
    require "hyperion/io_uring"
    unless Hyperion::IOUring.hotpath_supported?
      raise Error, "io_uring hot path unsupported here: #{Hyperion::IOUring.hotpath_unsupported_reason}"
    end

    counter = SyscallCounter.new(cfg.syscalls)
    interference = Interference.new(cfg)
    results = Results.new(cfg.max_other)
    results.meta.merge!(machine_meta(cfg, counter))
    results.meta["load_before"] = loadavg
    log "bench (#{mode}): #{cfg.rounds} round(s), interleaved; #{results.meta['pinned']}"
    log "syscalls: #{counter.note}"
    log "load average before: #{results.meta['load_before']}"
    accept_client if only.include?("accept")
    hello_epoll if only.include?("accept") || only.include?("http")
    if only.include?("accept")
      log "accept: #{cfg.accept_n} connections per run, loads #{cfg.accept_loads.map(&:first).join('/')} " \
          "(cN: N in flight; bN: bursts of N queued while the server is stopped)"
      run_accept(cfg, results, counter, interference)
    end
    if only.include?("http")
      log "http: wrk -t1 -c#{cfg.wrk_conns.join('/')} -d#{cfg.wrk_seconds}s --latency"
      run_http(cfg, results, counter, interference)
    end
    if only.include?("percall")
      log "percall: #{cfg.percall_iterations} calls per variant per round"
      run_percall(cfg, results, interference)
    end
    results.meta["load_after"] = loadavg
    results.meta["waited"] = interference.waited.round
    results.meta["retried"] = interference.retried
    results.meta["max_other"] = cfg.max_other
    results.meta["retries"] = cfg.retries
    results.meta["cpus_watched"] = interference.cpus
    results.meta["seconds"] = (monotonic - started).round(1)
    report = Report.new(results, cfg, only)
    FileUtils.mkdir_p(File.dirname(cfg.out_md))
    File.write(cfg.out_svg, report.svg)
    File.write(cfg.out_json, JSON.pretty_generate({ "meta" => results.meta, "results" => results.to_h }))
    md = report.markdown
    File.write(cfg.out_md, md)
    log ""
    log md
    log "written: #{[cfg.out_md, cfg.out_svg, cfg.out_json].map { |f| f.delete_prefix("#{ROOT}/") }.join(', ')}"
    report
  ensure
    Procs.stop_all
  end
end

require_relative "report"
