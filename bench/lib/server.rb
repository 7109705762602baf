# frozen_string_literal: true

require "fileutils"
require "io/wait"
require "rbconfig"
require "timeout"

# Server control: a benchmarked server started pinned and probed for its
# CPU time, the CPUs the server and the load generator run on, and the C
# programs (load generator, ceiling servers) the bench builds.
module Bench
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
      # The soft fd limit raised to the hard one (20,000 on the development
      # machines): the conns workload holds 10,000 connections.
      hard = Process.getrlimit(:NOFILE)[1]
      @pid = Procs.spawn(env, *cmd, 3 => probe_w, out: out_w, err: out_w, in: File::NULL, chdir: Bench.src,
                                                 rlimit_nofile: [hard, hard])
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

  # Resident memory of the server (VmRSS), in bytes.
  class Server
    def rss = Bench.rss(@pid)
  end

  # The ceiling servers (HTTP, and --accept).
  def self.hello_epoll = c_binary("hello_epoll")
end
