# frozen_string_literal: true

# `rake bench:hyperion`: upstream Hyperion 2.17.0's own server, installed
# and booted as `rake integration` does it (spec/integration/setup.rb: the
# recipe of docs/MIGRATING.md), with io_uring off, with ring accept
# (HYPERION_IO_URING=on) and with the hot path, under wrk -t1 -c50 -d5s
# against the hello app (access log off: --no-log-requests). The server is pinned to CPU 0 and wrk to CPU 1 when
# there are two; each mode runs 3 times, interleaved; medians of req/s and
# of the server's CPU time (utime + stime, all threads) per request.
# Writes bench/results/hyperion.md and hyperion.json. Ruby >= 3.3, wrk.

require "etc"
require "json"
require "socket"
require "rbconfig"
require_relative "../spec/integration/setup"

module HyperionBench
  MODES = {
    "io_uring off" => { "HYPERION_IO_URING" => "off", "HYPERION_IO_URING_HOTPATH" => "off" },
    "HYPERION_IO_URING=on (ring accept)" => { "HYPERION_IO_URING" => "on", "HYPERION_IO_URING_HOTPATH" => "off" },
    "+ HYPERION_IO_URING_HOTPATH=on" => { "HYPERION_IO_URING" => "on", "HYPERION_IO_URING_HOTPATH" => "on" }
  }.freeze
  ROUNDS = Integer(ENV.fetch("BENCH_ROUNDS", "3"))
  SECONDS = Integer(ENV.fetch("BENCH_SECONDS", "5"))
  CONNS = 50
  CLK_TCK = 100.0 # USER_HZ on Linux
  OUT = File.expand_path("results", __dir__)

  module_function

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  def two_cpus? = Etc.nprocessors >= 2 && system("command -v taskset >/dev/null")
  def pin(cpu, cmd) = two_cpus? ? ["taskset", "-c", cpu.to_s, *cmd] : cmd

  def cpu_ticks(pid)
    f = File.read("/proc/#{pid}/stat").split(") ", 2).last.split
    f[11].to_i + f[12].to_i # utime, stime (fields 14, 15)
  end

  def free_port
    s = TCPServer.new("127.0.0.1", 0)
    s.local_address.ip_port
  ensure
    s&.close
  end

  def boot(env)
    port = free_port
    cmd = pin(0, ["bundle", "exec", "hyperion", "-b", "127.0.0.1", "-p", port.to_s, "-w", "1", "--async-io", "--no-log-requests", "config.ru"])
    log = File.join(Integration::WORK, "bench-hyperion.log")
    pid = Bundler.with_unbundled_env do
      Process.spawn(Integration.env.merge(env), *cmd, chdir: Integration::APP, in: File::NULL, %i[out err] => [log, "w"])
    end
    deadline = now + 30
    loop do
      raise "hyperion did not start: #{File.read(log)}" if now > deadline || Process.waitpid(pid, Process::WNOHANG)

      begin
        TCPSocket.new("127.0.0.1", port).close
        break
      rescue SystemCallError
        sleep 0.1
      end
    end
    [pid, port]
  end

  def stop(pid, port)
    Process.kill(:TERM, pid)
    deadline = now + 5
    while Process.waitpid(pid, Process::WNOHANG).nil?
      (TCPSocket.new("127.0.0.1", port).close rescue nil) # a ring accept waits for one more client
      if now > deadline
        Process.kill(:KILL, pid)
        Process.wait(pid)
        break
      end
      sleep 0.1
    end
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end

  def run_one(env)
    pid, port = boot(env)
    url = "http://127.0.0.1:#{port}/"
    system(*pin(1, ["wrk", "-t1", "-c#{CONNS}", "-d1s", url]), out: File::NULL) # warm up
    t0 = cpu_ticks(pid)
    out = IO.popen(pin(1, ["wrk", "-t1", "-c#{CONNS}", "-d#{SECONDS}s", url]), &:read)
    ticks = cpu_ticks(pid) - t0
    requests = out[/(\d+) requests in/, 1].to_i
    errors = out[/Non-2xx or 3xx responses: (\d+)/, 1].to_i + out[/Socket errors: .*/].to_s.scan(/\d+/).sum(&:to_i)
    { rps: out[/Requests\/sec:\s+([\d.]+)/, 1].to_f, cpu_us_per_req: requests.zero? ? nil : ticks / CLK_TCK * 1e6 / requests,
      requests: requests, errors: errors }
  ensure
    stop(pid, port) if pid
  end

  def median(xs)
    s = xs.compact.sort
    s.empty? ? nil : s[s.size / 2]
  end

  def run
    abort "bench:hyperion needs wrk (apt-get install wrk)" unless system("command -v wrk >/dev/null")
    Integration.setup!
    samples = MODES.keys.to_h { |m| [m, []] }
    ROUNDS.times do |round|
      order = MODES.keys.rotate(round)
      order.each do |mode|
        r = run_one(MODES[mode])
        puts format("bench:hyperion round %d  %-36s %9.0f req/s  %6.1f µs CPU/req  (%d errors)",
                    round + 1, mode, r[:rps], r[:cpu_us_per_req] || 0, r[:errors])
        samples[mode] << r
      end
    end
    report(samples)
  end

  def report(samples)
    base = samples["io_uring off"]
    base_rps = median(base.map { |r| r[:rps] })
    base_cpu = median(base.map { |r| r[:cpu_us_per_req] })
    rows = samples.map do |mode, rs|
      rps = median(rs.map { |r| r[:rps] })
      cpu = median(rs.map { |r| r[:cpu_us_per_req] })
      range = rs.map { |r| r[:rps] }.minmax.map(&:round)
      "| #{mode} | #{rps.round.to_s.reverse.scan(/\d{1,3}/).join(',').reverse} (#{(rps / base_rps).round(2)}x; #{range.join('–')}) " \
        "| #{cpu.round(1)} (#{(cpu / base_cpu).round(2)}x) | #{rs.sum { |r| r[:errors] }} |"
    end
    uname = Etc.uname
    md = <<~MD
      # bench:hyperion

      Upstream Hyperion #{Integration::HYPERION_VERSION} (`bundle exec hyperion -w 1 --async-io --no-log-requests config.ru`,
      the recipe of docs/MIGRATING.md) serving "hello" on 127.0.0.1, `wrk -t1 -c#{CONNS} -d#{SECONDS}s`,
      #{two_cpus? ? 'server pinned to CPU 0 and wrk to CPU 1' : 'not pinned (one CPU or no taskset)'}, medians of #{ROUNDS} interleaved runs
      (min–max req/s in brackets). Server CPU: utime + stime of the server process per request.

      #{RUBY_DESCRIPTION}; Linux #{uname[:release]}; #{Etc.nprocessors} CPUs; hyperion-io_uring #{Integration.version};
      load average at the end #{File.read("/proc/loadavg").split.first(3).join(" ")} (other work on the machine
      moves req/s; CPU µs per request is the steadier figure).

      | mode | req/s | server CPU µs/request | errors |
      | --- | --- | --- | --- |
      #{rows.join("\n")}
    MD
    FileUtils.mkdir_p(OUT)
    File.write(File.join(OUT, "hyperion.md"), md)
    File.write(File.join(OUT, "hyperion.json"), JSON.pretty_generate(samples))
    puts md
  end
end

HyperionBench.run if $PROGRAM_NAME == __FILE__
