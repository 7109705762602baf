# frozen_string_literal: true

# Workload 5, bodies: 64 KiB and 1 MiB responses at 50 connections
# (bench/conn_client.c -b, every body byte compared), the HotpathRing server
# against the IO.select server with write_nonblock, both with --body-size.
module Bench
  BODIES_VARIANTS = {
    "select" => ["IO.select server (write_nonblock)", "examples/hello_select_server.rb"],
    "hotpath" => ["HotpathRing server", "examples/hello_server.rb"]
  }.freeze

  def self.body_row(size) = size % (1 << 20) == 0 ? "#{size >> 20}m" : (size % 1024 == 0 ? "#{size >> 10}k" : size.to_s)

  def self.body_label(size) = size % (1 << 20) == 0 ? "#{size >> 20} MiB" : (size % 1024 == 0 ? "#{size >> 10} KiB" : "#{size} B")

  def self.run_bodies(cfg, results, interference)
    rows = cfg.body_sizes.to_h { |size| [body_row(size), size] }
    cfg.rounds.times do |round|
      rows.each do |row, size|
        rotate(BODIES_VARIANTS.keys, round).each do |v|
          bodies_once(cfg, results, interference, row, size, v, round + 1)
        end
      end
    end
    top_up(cfg, results, :bodies, rows.keys, BODIES_VARIANTS.keys, interference) do |row, v, label|
      bodies_once(cfg, results, interference, row, rows.fetch(row), v, label)
    end
  end

  def self.bodies_once(cfg, results, interference, row, size, variant, round)
    label, script = BODIES_VARIANTS.fetch(variant)
    conns = cfg.body_conns
    server = start_server(label, script, ["--body-size", size.to_s])
    begin
      if cfg.wrk_warmup.positive?
        warm = ConnClient.new(server.port, n: conns, active: conns, seconds: cfg.wrk_warmup, body: size)
        warm.ready
        warm.go
        warm.finish
      end
      metrics = interference.run("bodies #{row} #{variant}") do
        client = ConnClient.new(server.port, n: conns, active: conns, seconds: cfg.wrk_seconds, body: size)
        begin
          client.ready
          cpu0, = server.cpu
          mark = interference.start
          r = client.go
          cpu1, = server.cpu
        ensure
          st = client.finish
        end
        # conn_client compared every byte as it came; the totals must agree.
        if !r[:errors].zero? || r[:body_bytes] != r[:requests] * size
          raise Error, "bodies #{variant}: #{r[:errors]} error(s), #{r[:body_bytes]} body bytes for " \
                       "#{r[:requests]} responses of #{size}"
        end
        raise Error, "bodies #{variant}: conn_client failed (#{st})" unless st.respond_to?(:success?) && st.success?

        [{ rps: r[:rps], p50: r[:p50], p99: r[:p99], cpu_us: (cpu1 - cpu0) / 1000.0 / r[:requests],
           requests: r[:requests], mb_s: r[:body_bytes] / r[:seconds] / 1e6, checked: r[:body_bytes] },
         (cpu1 - cpu0) / 1e9, mark]
      end
      results.add(:bodies, row, variant, metrics)
      log format("  bodies  %-4s %-8s round %-7s %8.0f req/s  %7.0f MB/s  p50 %.3f ms  p99 %.3f ms  %7.2f us CPU/req  " \
                 "others %2.0f%%", row, variant, "#{round}:", metrics[:rps], metrics[:mb_s], metrics[:p50],
                 metrics[:p99], metrics[:cpu_us], metrics[:other] * 100)
    ensure
      server&.stop
    end
  end
end
