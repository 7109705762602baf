# frozen_string_literal: true

# Workload 2, http: wrk against the example servers and the C ceiling
# server, req/s, latency, server CPU, wrk's CPU and syscalls per request.
module Bench
  # [label, script, extra arguments]; a script without .rb is a C program
  # built by the bench (Bench.c_binary).
  # BENCH_BASELINE=DIR adds the hello server of another tree (DIR holds its
  # lib/, with the extension built, and examples/), interleaved with the
  # others: before/after figures of a change from one run.
  HTTP_VARIANTS = {
    "select" => ["IO.select server", "examples/hello_select_server.rb"],
    "hotpath" => ["HotpathRing server", "examples/hello_server.rb"],
    "hotpath_nobatch" => ["HotpathRing server, no batch waits", "examples/hello_server.rb", %w[--batch 1]],
    "c_epoll" => ["C epoll server (ceiling)", "hello_epoll"]
  }.merge(
    if ENV["BENCH_BASELINE"].to_s.empty? then {}
    else { "hotpath_baseline" => ["HotpathRing server (baseline build)",
                                  File.expand_path("examples/hello_server.rb", ENV["BENCH_BASELINE"])] }
    end
  ).freeze

  # The variants run: BENCH_HTTP_VARIANTS=select,hotpath,... narrows them.
  def self.http_variants
    only = ENV["BENCH_HTTP_VARIANTS"].to_s.split(",").map(&:strip)
    only.empty? ? HTTP_VARIANTS.keys : HTTP_VARIANTS.keys & only
  end

  def self.parse_duration_ms(text)
    m = text.match(/\A([\d.]+)(us|ms|s|m)\z/) or return nil
    Float(m[1]) * { "us" => 0.001, "ms" => 1.0, "s" => 1000.0, "m" => 60_000.0 }.fetch(m[2])
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
        rotate(http_variants, round).each do |variant|
          http_once(cfg, results, counter, interference, conns, variant, round + 1)
        end
      end
    end
    rows = cfg.wrk_conns.map { |c| "c#{c}" }
    top_up(cfg, results, :http, rows, http_variants, interference) do |row, variant, label|
      http_once(cfg, results, counter, interference, Integer(row[1..]), variant, label)
    end
  end

  def self.http_once(cfg, results, counter, interference, conns, variant, round)
    label, script, extra = HTTP_VARIANTS.fetch(variant)
    path = if script.start_with?("/") then script
           elsif script.end_with?(".rb") then File.join(src, script)
           else c_binary(script)
           end
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
end
