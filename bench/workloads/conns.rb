# frozen_string_literal: true

# Workload 4, conns: 10,000 keep-alive connections, a rotating 5% active
# (bench/conn_client.c), against the HotpathRing server, a Ruby server on
# nio4r (bench/hello_nio4r_server.rb) and the C epoll server (the ceiling).
# Per run: req/s, p50/p99, server CPU per request, and the server's resident
# memory per idle connection.
module Bench
  CONNS_VARIANTS = {
    "nio4r" => ["nio4r server", "bench/hello_nio4r_server.rb"],
    "hotpath" => ["HotpathRing server", "examples/hello_server.rb"],
    "c_epoll" => ["C epoll server (ceiling)", "hello_epoll"]
  }.freeze

  # Whether the nio4r gem loads (the Gemfile's :bench group).
  def self.nio4r?
    require "nio"
    true
  rescue LoadError
    false
  end

  def self.run_conns(cfg, results, interference)
    variants = CONNS_VARIANTS.keys
    unless nio4r?
      raise Error, "the nio4r gem is missing (bundle install: it is in the Gemfile's :bench group)" unless cfg.quick?

      log "bench: nio4r missing (bundle install): the conns workload runs without its nio4r server"
      variants -= ["nio4r"]
    end
    row = "n#{cfg.conns_n}"
    cfg.rounds.times do |round|
      rotate(variants, round).each { |v| conns_once(cfg, results, interference, row, v, round + 1) }
    end
    top_up(cfg, results, :conns, [row], variants, interference) do |r, v, label|
      conns_once(cfg, results, interference, r, v, label)
    end
  end

  def self.start_server(label, script, args)
    path = script.end_with?(".rb") ? File.join(src, script) : c_binary(script)
    Server.new(label, path, ["--seconds", "600", *args], cpu: SERVER_CPU)
  end

  # RSS per idle connection, two ways, each on a server of its own:
  # "cold", the first measurement's method: a fresh server's VmRSS when it
  # listens, and again once every connection was answered once and sits
  # idle; "warm" (the target's): the same from a baseline taken after a
  # warm-up of cfg.conns_warmup seconds on 50 connections (closed again),
  # which touches what a server touches once whatever its connections (the
  # ring's provided buffers, Ruby's heap after a few GCs). The warm server
  # then runs the timed load.
  def self.conns_once(cfg, results, interference, row, variant, round)
    label, script = CONNS_VARIANTS.fetch(variant)
    n = cfg.conns_n
    active = [(n * cfg.conns_active).round, 1].max
    rss = { rss_cold: rss_cold(label, script, n, cfg.conns_idle) }
    server = start_server(label, script, [])
    begin
      warm = ConnClient.new(server.port, n: 50, active: 50, seconds: cfg.conns_warmup)
      warm.ready
      warm.go
      warm.finish
      sleep 0.3 # the server closes the warm-up's 50
      metrics = interference.run("conns #{row} #{variant}") do
        warm0 = server.rss
        client = ConnClient.new(server.port, n: n, active: active, seconds: cfg.conns_seconds)
        begin
          setup = client.ready
          sleep cfg.conns_idle
          rss[:rss_idle] ||= (server.rss - warm0).fdiv(n)
          rss[:setup_s] ||= setup[:setup_seconds]
          cpu0, = server.cpu
          mark = interference.start
          r = client.go
          cpu1, = server.cpu
          raise Error, "conns #{variant}: #{r[:errors]} error(s)" unless r[:errors].zero?
        ensure
          st = client.finish
        end
        raise Error, "conns #{variant}: conn_client failed (#{st})" unless st.respond_to?(:success?) && st.success?

        [{ rps: r[:rps], p50: r[:p50], p99: r[:p99], cpu_us: (cpu1 - cpu0) / 1000.0 / r[:requests],
           requests: r[:requests], active: active }.merge(rss), (cpu1 - cpu0) / 1e9, mark]
      end
      results.add(:conns, row, variant, metrics)
      log format("  conns   %-6s %-8s round %-7s %9.0f req/s  p50 %.3f ms  p99 %.3f ms  %6.2f us CPU/req  " \
                 "RSS/idle conn %5.0f B (cold: %5.0f B)  others %2.0f%%", row, variant, "#{round}:",
                 metrics[:rps], metrics[:p50], metrics[:p99], metrics[:cpu_us], metrics[:rss_idle],
                 metrics[:rss_cold], metrics[:other] * 100)
    ensure
      server&.stop
    end
  end

  # A fresh server's RSS growth per connection, n connections answered once
  # and held idle for idle seconds (VmRSS then, minus VmRSS when it listened).
  def self.rss_cold(label, script, n, idle)
    server = start_server(label, script, [])
    sleep 0.2
    rss0 = server.rss
    client = ConnClient.new(server.port, n: n, active: 1, seconds: 0.01)
    begin
      client.ready
      sleep idle
      (server.rss - rss0).fdiv(n)
    ensure
      client.finish
    end
  ensure
    server&.stop
  end
end
