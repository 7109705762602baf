# frozen_string_literal: true

require "etc"

# The run's knobs: counts and durations for a full or a quick run, each
# overridable with a BENCH_* variable (bench/README.md lists them).
module Bench
  Config = Struct.new(:mode, :rounds, :accept_n, :accept_conc, :accept_burst, :accept_count_n, :wrk_seconds, :wrk_warmup,
                      :wrk_conns, :count_seconds, :percall_iterations, :conns_n, :conns_active, :conns_seconds,
                      :conns_warmup, :conns_idle, :body_sizes, :body_conns, :out_md, :out_svg, :out_json, :pin,
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
      # conns: connections held, the share of them active, seconds of load
      # and of the warm-up before the RSS baseline.
      conns_n: Integer(ENV.fetch("BENCH_CONNS_N", quick ? "1000" : "10000")),
      conns_active: Float(ENV.fetch("BENCH_CONNS_ACTIVE", "0.05")),
      conns_seconds: Float(ENV.fetch("BENCH_CONNS_SECONDS", quick ? "1" : "5")),
      conns_warmup: Float(ENV.fetch("BENCH_CONNS_WARMUP", quick ? "0.5" : "1")),
      # How long the connections sit idle, all answered, before the RSS
      # per idle connection is read: long enough for a server to settle
      # after the setup's burst (the ring's buffer pool gives back what the
      # burst took after a quiet second; Ruby's GC may run), the same for
      # every server.
      conns_idle: Float(ENV.fetch("BENCH_CONNS_IDLE", quick ? "0.2" : "2")),
      # bodies: response body sizes at BENCH_BODY_CONNS connections, for
      # wrk_seconds each.
      body_sizes: env_list("BENCH_BODY_SIZES", "65536,1048576"),
      body_conns: Integer(ENV.fetch("BENCH_BODY_CONNS", "50")),
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
end
