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
# 4. conns: bench/conn_client.c holds 10,000 keep-alive connections, a
#    rotating 5% active, against examples/hello_server.rb, the nio4r server
#    (bench/hello_nio4r_server.rb) and bench/hello_epoll.c; req/s, latency,
#    server CPU per request and server RSS per idle connection.
# 5. bodies: 64 KiB and 1 MiB responses at 50 connections (conn_client -b,
#    every byte checked), HotpathRing vs the IO.select server.
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
#
# This file is the run itself (snapshot, machine facts, the order of the
# workloads, the report written at the end). The plumbing is in bench/lib/:
# config.rb (the BENCH_* knobs), processes.rb (every child, and killing it),
# server.rb (server control, pinning, the C programs), syscall_counter.rb,
# interference.rb (other processes on our CPUs), results.rb (samples and
# statistics), report.rb and chart.rb (Markdown and SVG). What each workload
# runs and measures is in bench/workloads/: accept.rb, http.rb, percall.rb.
require "etc"
require "fileutils"
require "json"

require_relative "lib/config"
require_relative "lib/processes"
require_relative "lib/server"
require_relative "lib/syscall_counter"
require_relative "lib/interference"
require_relative "lib/results"
require_relative "lib/report"
require_relative "lib/chart"
require_relative "lib/conn_client"
require_relative "workloads/accept"
require_relative "workloads/http"
require_relative "workloads/percall"
require_relative "workloads/conns"
require_relative "workloads/bodies"

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

  # The ceiling variants: bench/hello_epoll.c, a minimal C server measured
  # like the others, so the report shows the best any server reaches against
  # this load generator on this machine. A reference, never a target.
  CEILING_VARIANTS = %w[c_accept c_epoll].freeze

  def self.rotate(list, round) = list.rotate(round % list.size)

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
      "percall_iterations" => cfg.percall_iterations,
      "conns_n" => cfg.conns_n,
      "conns_active" => cfg.conns_active,
      "conns_seconds" => cfg.conns_seconds,
      "conns_warmup" => cfg.conns_warmup,
      "body_sizes" => cfg.body_sizes,
      "body_conns" => cfg.body_conns
    }
  end

  WORKLOADS = %w[accept http percall conns bodies].freeze

  # Writes the Markdown and SVG again from a run's JSON (after a change to
  # the report), next to it.
  def self.render(json_path)
    j = JSON.parse(File.read(json_path))
    meta = j.fetch("meta")
    cfg = config(meta["mode"] == "quick" ? :quick : :full)
    cfg.accept_conc = meta["accept_conc"] || []
    cfg.accept_burst = meta["accept_burst"] || []
    cfg.wrk_conns = meta["wrk_conns"] || []
    cfg.conns_n = meta["conns_n"] || cfg.conns_n
    cfg.body_sizes = meta["body_sizes"] || []
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
    if (only & %w[accept http conns bodies]).any? && !have.call("gcc")
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
    hello_epoll if (only & %w[accept http conns]).any?
    conn_client if (only & %w[conns bodies]).any?
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
    if only.include?("conns")
      log "conns: #{cfg.conns_n} connections, #{(cfg.conns_active * 100).round}% active (rotating), " \
          "#{cfg.conns_seconds} s per run"
      run_conns(cfg, results, interference)
    end
    if only.include?("bodies")
      log "bodies: #{cfg.body_sizes.map { |b| body_label(b) }.join(', ')} at #{cfg.body_conns} connections, " \
          "#{cfg.wrk_seconds} s per run, every byte checked"
      run_bodies(cfg, results, interference)
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
