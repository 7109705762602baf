# frozen_string_literal: true

module Bench
  # Turns the samples of a run into the Markdown table (with the targets of
  # issue 5 marked met / not met) and an SVG chart of the ratios (chart.rb).
  class Report
    SETUP_FLAGS = {
      1 => "IOPOLL", 2 => "SQPOLL", 4 => "SQ_AFF", 8 => "CQSIZE", 16 => "CLAMP", 32 => "ATTACH_WQ",
      64 => "R_DISABLED", 128 => "SUBMIT_ALL", 256 => "COOP_TASKRUN", 512 => "TASKRUN_FLAG", 1024 => "SQE128",
      2048 => "CQE32", 4096 => "SINGLE_ISSUER", 8192 => "DEFER_TASKRUN"
    }.freeze

    # How close to 1 "exactly 1 syscall per accept" must be: a run also has
    # a few syscalls that belong to no accept (an idle wake-up, the signal
    # the probe uses), spread over thousands of accepts.
    EXACT_TOLERANCE = 0.02

    Target = Struct.new(:text, :measured, :value, :limit, :cmp, keyword_init: true) do
      def status
        return "n/a" if value.nil?

        ok = case cmp
             when :ge then value >= limit
             when :le then value <= limit
             when :lt then value < limit
             when :eq then (value - limit).abs <= EXACT_TOLERANCE
             end
        ok ? "met" : "not met"
      end
    end

    def initialize(results, cfg, only)
      @r = results
      @cfg = cfg
      @only = only
      @meta = results.meta
    end

    def med(*key) = @r.med(*key)

    def samples(*key) = @r.samples(*key)

    # "median (min–max)" with +digits+ decimals.
    def spread(values, digits = 0)
      v = values.compact
      return "–" if v.empty?

      m = fmt(Bench.median(v), digits)
      return m if v.size == 1

      "#{m} (#{fmt(v.min, digits)}–#{fmt(v.max, digits)})"
    end

    def fmt(x, digits)
      return "–" if x.nil?
      return x.round.to_s.reverse.scan(/\d{1,3}/).join(",").reverse if digits.zero? && x >= 10_000

      format("%.#{digits}f", x)
    end

    def ratio_s(x) = x ? format("%.2fx", x) : "–"

    # "median% (min–max%)" of fractions.
    def pct_spread(values)
      v = values.compact.map { |x| x * 100 }
      return "–" if v.empty?

      m = format("%.0f%%", Bench.median(v))
      v.size == 1 ? m : format("%s (%.0f–%.0f%%)", m, v.min, v.max)
    end

    def burst_row = @cfg.burst_row

    def rate_row = @cfg.rate_row

    def load_label(row)
      row.start_with?("b") ? "bursts of #{row[1..]}" : "#{row[1..]} in flight"
    end

    def flags_s(flags)
      return "?" unless flags

      names = SETUP_FLAGS.select { |bit, _| (flags & bit).nonzero? }.values
      format("0x%x (%s)", flags, names.empty? ? "none" : names.join("|"))
    end

    # ---- targets ---------------------------------------------------------

    def targets
      t = []
      [["hotpath", "HotpathRing hello server"],
       ["hotpath_nobatch", "HotpathRing hello server without batch waits (--batch 1)"]].each do |v, name|
        next if v != "hotpath" && @r.runs(:http, "c50", v).empty? # a run from before the variant

        rps = Bench.ratio(med(:http, "c50", v, :rps), med(:http, "c50", "select", :rps))
        cpu = Bench.ratio(med(:http, "c50", v, :cpu_us), med(:http, "c50", "select", :cpu_us))
        sys = med(:http, "c50", v, :sys)
        t << Target.new(text: "#{name} req/s >= 1.5x IO.select server (wrk -c50)",
                        measured: ratio_s(rps), value: rps, limit: 1.5, cmp: :ge)
        t << Target.new(text: "... with server CPU per request <= 0.7x the IO.select server's",
                        measured: ratio_s(cpu), value: cpu, limit: 0.7, cmp: :le)
        t << Target.new(text: "... and <= 0.2 syscalls per request",
                        measured: sys && format("%.3f", sys), value: sys, limit: 0.2, cmp: :le)
      end
      t.concat(c_server_targets) if @only.include?("http")
      b = burst_row
      rr_ = rate_row
      ms = Bench.ratio(med(:accept, rr_, "multishot", :rate), med(:accept, rr_, "select", :rate))
      ms_b = Bench.ratio(med(:accept, b, "multishot", :rate), med(:accept, b, "select", :rate))
      enter = med(:accept, b, "multishot", :enter)
      enter_r = med(:accept, rr_, "multishot", :enter)
      t << Target.new(text: "Multishot accept accepts/s >= 1.5x accept_nonblock + IO.select (#{load_label(rr_)})",
                      measured: ms && "#{ratio_s(ms)} (#{load_label(b)}: #{ratio_s(ms_b)})", value: ms, limit: 1.5,
                      cmp: :ge)
      t << Target.new(text: "... with <= 0.3 io_uring_enter per accepted connection under burst (#{load_label(b)})",
                      measured: enter && format("%.3f (%s: %.3f)", enter, load_label(rr_), enter_r || Float::NAN),
                      value: enter, limit: 0.3, cmp: :le)
      ra = Bench.ratio(med(:accept, rr_, "ring", :rate), med(:accept, rr_, "select", :rate))
      ra_b = Bench.ratio(med(:accept, b, "ring", :rate), med(:accept, b, "select", :rate))
      one = med(:accept, b, "ring", :sys_no_close_mem)
      one_r = med(:accept, rr_, "ring", :sys_no_close_mem)
      t << Target.new(text: "Ring#accept accepts/s >= 1.2x accept_nonblock + IO.select (#{load_label(rr_)})",
                      measured: ra && "#{ratio_s(ra)} (#{load_label(b)}: #{ratio_s(ra_b)})", value: ra, limit: 1.2,
                      cmp: :ge)
      t << Target.new(text: "Ring#accept: exactly 1 syscall per accept besides the close, with connections " \
                            "waiting (#{load_label(b)}; the close being IO.for_fd(fd).close: fcntl + ioctl(TCGETS) " \
                            "+ close; Ruby's heap growth, mmap/munmap/brk, not counted)",
                      measured: one && format("%.3f: %s (%s: %.3f)", one, top_syscalls(:accept, b, "ring"),
                                              load_label(rr_), one_r || Float::NAN),
                      value: one, limit: 1.0, cmp: :eq)
      if @only.include?("http") && !@r.runs(:http, "c1", "hotpath").empty?
        p50 = Bench.ratio(med(:http, "c1", "hotpath", :p50), med(:http, "c1", "select", :p50))
        t << Target.new(text: "HotpathRing hello server p50 latency at -c1 <= the IO.select server's (wrk -c1)",
                        measured: p50 && format("%.2fx (%.3f ms vs %.3f ms)", p50, med(:http, "c1", "hotpath", :p50),
                                                med(:http, "c1", "select", :p50)),
                        value: p50, limit: 1.0, cmp: :le)
      end
      t.concat(conns_targets) if @only.include?("conns")
      t.concat(bodies_targets) if @only.include?("bodies")
      rr = Bench.ratio(med(:percall, "ns", "ring_read", :ns), med(:percall, "ns", "sysread", :ns))
      t << Target.new(text: "Ring#read on ready data <= 2.5x IO#sysread",
                      measured: ratio_s(rr), value: rr, limit: 2.5, cmp: :le)
      cr = med(:percall, "ns", "copy_release", :ns)
      t << Target.new(text: "copy_buffer + release_buffer of 100 bytes < 300 ns",
                      measured: cr && format("%.0f ns", cr), value: cr, limit: 300, cmp: :lt)
      rt = Bench.ratio(med(:percall, "ns", "ring_rt", :ns), med(:percall, "ns", "pair_rt", :ns))
      if @only.include?("percall") && rt
        t << Target.new(text: "16-byte syswrite answered through the ring (each_completion + take_buffer) <= 1.3x " \
                              "syswrite + sysread on a socketpair",
                        measured: format("%.2fx (%.0f ns vs %.0f ns)", rt, med(:percall, "ns", "ring_rt", :ns),
                                         med(:percall, "ns", "pair_rt", :ns)),
                        value: rt, limit: 1.3, cmp: :le)
      end
      t
    end

    # Issue 14: the hello server, as it comes, costs no more server CPU per
    # request than the C epoll server, at -c50 and -c200.
    def c_server_targets
      [50, 200].filter_map do |c|
        row = "c#{c}"
        next if @r.runs(:http, row, "c_epoll").empty?

        hot = med(:http, row, "hotpath", :cpu_us)
        ceil = med(:http, row, "c_epoll", :cpu_us)
        r = Bench.ratio(hot, ceil)
        Target.new(text: "HotpathRing hello server CPU per request <= the C epoll server's (wrk -c#{c})",
                   measured: r && format("%.2fx (%.2f µs vs %.2f µs)", r, hot, ceil), value: r, limit: 1.0,
                   cmp: :le)
      end
    end

    def conns_row = "n#{@cfg.conns_n}"

    def conns_targets
      row = conns_row
      n = @cfg.conns_n
      rss = Bench.ratio(med(:conns, row, "hotpath", :rss_idle), med(:conns, row, "nio4r", :rss_idle))
      rss_cold = Bench.ratio(med(:conns, row, "hotpath", :rss_cold), med(:conns, row, "nio4r", :rss_cold))
      cpu = Bench.ratio(med(:conns, row, "hotpath", :cpu_us), med(:conns, row, "nio4r", :cpu_us))
      b = ->(v, k) { (x = med(:conns, row, v, k)) ? format("%.0f B", x) : "–" }
      [Target.new(text: "HotpathRing server RSS per idle connection <= 0.1x the nio4r server's (#{fmt(n, 0)} " \
                        "connections, after a warm-up)",
                  measured: rss && format("%.2fx (%s vs %s; cold, as first measured: %.2fx, %s vs %s)",
                                          rss, b.call("hotpath", :rss_idle), b.call("nio4r", :rss_idle),
                                          rss_cold || Float::NAN, b.call("hotpath", :rss_cold),
                                          b.call("nio4r", :rss_cold)),
                  value: rss, limit: 0.1, cmp: :le),
       Target.new(text: "... and server CPU per request <= 0.8x the nio4r server's (a rotating " \
                        "#{((@meta['conns_active'] || 0.05) * 100).round}% active)",
                  measured: ratio_s(cpu), value: cpu, limit: 0.8, cmp: :le)]
    end

    def bodies_targets
      @cfg.body_sizes.map do |size|
        row = Bench.body_row(size)
        cpu = Bench.ratio(med(:bodies, row, "hotpath", :cpu_us), med(:bodies, row, "select", :cpu_us))
        Target.new(text: "HotpathRing server CPU per request <= 0.7x the IO.select server's (write_nonblock), " \
                         "#{Bench.body_label(size)} responses at #{@cfg.body_conns} connections, every byte checked",
                   measured: ratio_s(cpu), value: cpu, limit: 0.7, cmp: :le)
      end
    end

    # ---- ceiling -----------------------------------------------------------

    def ceiling?(variant) = CEILING_VARIANTS.include?(variant)

    # A run from before the ceiling rows existed has none: no empty rows.
    def shown?(workload, row, variant) = !ceiling?(variant) || !@r.runs(workload, row, variant).empty?

    # A ceiling row's label, marked so no one reads it as a contender.
    def row_label(variant, label) = ceiling?(variant) ? "*#{label}: reference, not a target*" : label

    def pct(x) = x ? format("%.0f%%", x * 100) : "–"

    # The best any server reached here (bench/hello_epoll.c), against the
    # baselines of the targets: what this machine and load generator allow.
    def ceiling_lines
      out = []
      if @only.include?("http") && (c = med(:http, "c50", "c_epoll", :rps))
        sel = med(:http, "c50", "select", :rps)
        hot = med(:http, "c50", "hotpath", :rps)
        ceil = Bench.ratio(c, sel)
        wrk = med(:http, "c50", "c_epoll", :wrk_cpu)
        out << "- Ceiling of this machine/load generator (HTTP, wrk -c50; a reference, not a target): C server " \
               "#{fmt(c, 0)} req/s = #{ratio_s(ceil)} the IO.select server " \
               "(#{fmt(sel, 0)} req/s; the HotpathRing server: #{ratio_s(Bench.ratio(hot, sel))}, " \
               "#{ratio_s(Bench.ratio(hot, c))} of the C server's req/s). wrk used #{pct(wrk)} of a CPU against " \
               "the C server.#{beyond(ceil, 1.5)}"
        others = @cfg.wrk_conns.reject { |k| k == 50 }.filter_map do |k|
          r = Bench.ratio(med(:http, "c#{k}", "c_epoll", :rps), med(:http, "c#{k}", "select", :rps))
          "-c#{k}: #{ratio_s(r)}" if r
        end
        out << "  Other loads, C server vs the IO.select server: #{others.join(', ')}." unless others.empty?
      end
      if @only.include?("accept") && (c = med(:accept, rate_row, "c_accept", :rate))
        sel = med(:accept, rate_row, "select", :rate)
        ceil = Bench.ratio(c, sel)
        ms = Bench.ratio(med(:accept, rate_row, "multishot", :rate), sel)
        others = @cfg.accept_loads.map(&:first).reject { |r| r == rate_row }.filter_map do |r|
          x = Bench.ratio(med(:accept, r, "c_accept", :rate), med(:accept, r, "select", :rate))
          "#{load_label(r)}: #{ratio_s(x)}" if x
        end
        out << "- Ceiling of this machine/load generator (accept, #{load_label(rate_row)}; a reference, not a " \
               "target): C accept4 loop #{fmt(c, 0)} accepts/s = #{ratio_s(ceil)} accept_nonblock + IO.select " \
               "(#{fmt(sel, 0)} accepts/s; multishot accept: #{ratio_s(ms)})" \
               "#{others.empty? ? '' : "; #{others.join(', ')}"}.#{beyond(ceil, 1.5)}"
      end
      out
    end

    def beyond(ceil, target)
      return "" unless ceil

      ceil < target ? " The #{ratio_s(target)} target is above this ceiling." : ""
    end

    # ---- Markdown --------------------------------------------------------

    def markdown
      out = []
      out << "# hyperion-io_uring benchmarks"
      out << ""
      out.concat(header)
      out << ""
      out << "## Targets (issues 5 and 14; ratios of medians from this run)"
      out << ""
      out << "| target | measured | status |"
      out << "| --- | --- | --- |"
      targets.each { |t| out << "| #{t.text} | #{t.measured || '–'} | **#{t.status}** |" }
      out << ""
      lines = ceiling_lines
      unless lines.empty?
        out.concat(lines)
        out << ""
      end
      out.concat(accept_table) if @only.include?("accept")
      out.concat(http_table) if @only.include?("http")
      out.concat(percall_table) if @only.include?("percall")
      out.concat(conns_table) if @only.include?("conns")
      out.concat(bodies_table) if @only.include?("bodies")
      out << "![ratios](#{File.basename(@cfg.out_svg)})"
      out << ""
      out.join("\n")
    end

    def header
      m = @meta
      dirty = m["dirty"].empty? ? "" : " with uncommitted changes in #{m['dirty'].join(', ')}"
      cmd = @cfg.quick? ? "bundle exec rake bench:quick" : "bundle exec rake bench"
      [
        "- Machine: #{m['cpus']} CPUs (#{m['cpu_model']}), Linux #{m['kernel']}, #{m['ruby']}, " \
        "liburing #{m['liburing']}; ring setup flags #{flags_s(m['setup_flags'])}" \
        "#{m['setup_env'] ? " (HYPERION_IO_URING_SETUP=#{m['setup_env']})" : ''}.",
        "- Run: #{m['date']}, commit #{m['commit']}#{dirty}; extension #{m['extension']}; " \
        "`#{cmd}` (#{m['mode']} mode), #{m['seconds']} s.",
        "- Each variant #{m['rounds']} time(s), interleaved (the order rotates every round); cells are " \
        "median (min–max); ratios are of medians.",
        "- Pinning: #{m['pinned']}.",
        "- Load average (1/5/15 min) before: #{m['load_before']}, after: #{m['load_after']}. " \
        "Other processes used #{others_summary} of CPUs #{Array(m['cpus_watched']).join(',')} during the timed " \
        "runs (their busy time in /proc/stat, steal included, minus the server's and the load generator's own); " \
        "before each run the bench waits for them to be quiet and reruns a run they disturbed by more than " \
        "#{(m['max_other'].to_f * 100).round}% (at most #{m['retries']} reruns; #{m['retried']} rerun(s), " \
        "#{m['waited']} s waited). A run still disturbed after that is kept out of the statistics while its " \
        "variant has quiet runs, and variants short of #{m['rounds']} quiet runs get extra interleaved passes. " \
        "Column \"others\": that share in the runs used (median), and how many were quiet.",
        "- Server CPU: the server's own CLOCK_PROCESS_CPUTIME_ID (all threads), read before and after each load " \
        "(bench/cpu_probe.rb; the C ceiling servers, bench/hello_epoll.c, answer the same SIGUSR1 probe " \
        "themselves), divided by the operations the load generator completed.",
        "- Syscalls: #{m['syscalls']}; per operation the load generator completed."
      ]
    end

    def all_runs = @r.data.values.flat_map { |rows| rows.values.flat_map { |vs| vs.values.flatten(1) } }

    def others_summary
      all = all_runs.map { |r| r[:other] }.compact
      return "an unknown share" if all.empty?

      format("a median %.0f%% (max %.0f%%)", Bench.median(all) * 100, all.max * 100)
    end

    # The others' share in the runs used, and how many runs were quiet.
    def others_cell(workload, row, variant)
      v = Bench.median(samples(workload, row, variant, :other))
      return "–" unless v

      runs = @r.runs(workload, row, variant).size
      quiet = @r.quiet_count(workload, row, variant)
      note = if quiet == runs then ""
             elsif quiet.zero? then " (none of #{runs} quiet: all used)"
             else " (#{quiet} of #{runs} runs quiet, used)"
             end
      format("%.0f%%%s", v * 100, note)
    end

    def top_syscalls(workload, row, variant)
      list = samples(workload, row, variant, :breakdown)
      return "–" if list.empty?

      keys = list.flat_map(&:keys).uniq
      keys.map { |k| [k, Bench.median(list.map { |b| b[k] || 0 })] }
          .sort_by { |_, v| -v }.first(5).map { |k, v| "#{k} #{format('%.2f', v)}" }.join(", ")
    end

    def sys_cell(workload, row, variant, key, digits = 3)
      v = samples(workload, row, variant, key)
      v.empty? ? "–" : spread(v, digits)
    end

    def accept_table
      m = @meta
      out = ["## 1. Accept", "",
             "bench/accept_client.c (gcc -O2, one thread, epoll) opens #{fmt(m['accept_n'], 0)} loopback " \
             "connections per run, either N in flight (topped up as each finishes), or in bursts of N: the server " \
             "is stopped (SIGSTOP), the client connects N times, and when all N are established the server is " \
             "let go (SIGCONT; the rate counts from there to the client's last completion); each counts once the server has accepted and closed it " \
             "(the client waits for the FIN, then closes with SO_LINGER 0). bench/accept_server.rb closes each " \
             "connection at once: select and blocking with TCPSocket#close (close(2)); Ring#accept's Integer fd " \
             "with `IO.for_fd(fd).close`, which costs fcntl(F_GETFL) + ioctl(TCGETS) + close(2); multishot's with " \
             "`HotpathRing#submit_close`, an IORING_OP_CLOSE that goes with the next io_uring_enter (no syscall " \
             "of its own). \"excl. closing\" leaves those syscalls out. " \
             "Syscalls: a separate #{fmt(m['accept_count_n'], 0)}-connection load on the same server. " \
             "C accept4 loop (ceiling): bench/hello_epoll.c --accept, blocking accept4 + close(2) in C, measured " \
             "the same way: about the most this machine and accept_client allow, a reference, not a target.", "",
             "| load | server | accepts/s | vs select | server CPU µs/accept | vs select | syscalls/accept | " \
             "excl. closing | io_uring_enter/accept | per accept | others |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
      @cfg.accept_loads.each do |row, _c, _waves|
        base_rate = med(:accept, row, "select", :rate)
        base_cpu = med(:accept, row, "select", :cpu_us)
        ACCEPT_VARIANTS.each do |v, label|
          next unless shown?(:accept, row, v)

          out << "| #{load_label(row)} | #{row_label(v, label)} | #{spread(samples(:accept, row, v, :rate))} | " \
                 "#{ratio_s(Bench.ratio(med(:accept, row, v, :rate), base_rate))} | " \
                 "#{spread(samples(:accept, row, v, :cpu_us), 2)} | " \
                 "#{ratio_s(Bench.ratio(med(:accept, row, v, :cpu_us), base_cpu))} | " \
                 "#{sys_cell(:accept, row, v, :sys)} | #{sys_cell(:accept, row, v, :sys_no_close)} | " \
                 "#{sys_cell(:accept, row, v, :enter)} | #{top_syscalls(:accept, row, v)} | " \
                 "#{others_cell(:accept, row, v)} |"
        end
      end
      out << ""
      out
    end

    def http_table
      m = @meta
      out = ["## 2. HTTP hello world, keep-alive", "",
             "`wrk -t1 -cC -d#{m['wrk_seconds']}s --latency` (after a #{m['wrk_warmup']} s warm-up) against " \
             "examples/hello_select_server.rb (IO.select, read_nonblock, write_nonblock) and examples/hello_server.rb " \
             "(HotpathRing: multishot accept and recv, submit_send, each_completion(raw: true), by default with " \
             "batch waits, --batch auto: each_completion(min_complete: what the last call brought, " \
             "min_wait_us: 50), a kernel batch wait); \"no batch waits\" is the same server with --batch 1. " \
             "Syscalls: a " \
             "separate #{m['count_seconds']} s wrk load on the same server. C epoll server (ceiling): " \
             "bench/hello_epoll.c, the select server's loop in C (epoll, accept4, read, write): about the most " \
             "this machine and wrk allow, a reference, not a target. wrk CPU: wrk's user + system time over its wall " \
             "time during the timed load, in % of one CPU (wrk is pinned to one CPU; near 100%, wrk was " \
             "saturated and capped req/s).", "",
             "| C | server | req/s | vs select | p50 ms | p99 ms | wrk CPU | server CPU µs/req | vs select | " \
             "syscalls/req | io_uring_enter/req | per request | others |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
      @cfg.wrk_conns.each do |c|
        row = "c#{c}"
        base_rps = med(:http, row, "select", :rps)
        base_cpu = med(:http, row, "select", :cpu_us)
        HTTP_VARIANTS.each do |v, (label, _)|
          next unless shown?(:http, row, v)

          out << "| #{c} | #{row_label(v, label)} | #{spread(samples(:http, row, v, :rps))} | " \
                 "#{ratio_s(Bench.ratio(med(:http, row, v, :rps), base_rps))} | " \
                 "#{spread(samples(:http, row, v, :p50), 3)} | #{spread(samples(:http, row, v, :p99), 3)} | " \
                 "#{pct_spread(samples(:http, row, v, :wrk_cpu))} | " \
                 "#{spread(samples(:http, row, v, :cpu_us), 2)} | " \
                 "#{ratio_s(Bench.ratio(med(:http, row, v, :cpu_us), base_cpu))} | " \
                 "#{sys_cell(:http, row, v, :sys)} | #{sys_cell(:http, row, v, :enter)} | " \
                 "#{top_syscalls(:http, row, v)} | #{others_cell(:http, row, v)} |"
        end
      end
      out << ""
      out
    end

    def conns_table
      m = @meta
      row = conns_row
      n = m["conns_n"] || @cfg.conns_n
      base_cpu = med(:conns, row, "nio4r", :cpu_us)
      base_rss = med(:conns, row, "nio4r", :rss_idle)
      active = med(:conns, row, "hotpath", :active) || med(:conns, row, "nio4r", :active)
      out = ["## 4. #{fmt(n, 0)} connections, a rotating #{((m['conns_active'] || 0.05) * 100).round}% active", "",
             "bench/conn_client.c (gcc -O2, one thread, epoll) connects #{fmt(n, 0)} keep-alive connections and " \
             "sends one request on each; then, for #{m['conns_seconds']} s, #{active ? fmt(active, 0) : '?'} " \
             "requests are in flight at any time, each response's successor going out on the next idle " \
             "connection in round-robin order, so the active ones rotate through all of them (latency: from a " \
             "request's write to its response's last byte). Servers: bench/hello_nio4r_server.rb (nio4r's " \
             "epoll selector, as Puma's reactor; IO.select cannot hold fds above 1023), examples/hello_server.rb " \
             "and bench/hello_epoll.c (the ceiling). Both processes raise RLIMIT_NOFILE to the hard limit. " \
             "RSS per idle connection: the server's VmRSS once every connection was answered once and sits " \
             "idle, minus its VmRSS after a #{m['conns_warmup']} s warm-up on 50 connections (closed again), " \
             "which touches what a server touches once whatever its connections (the ring's provided " \
             "buffers, Ruby's heap after a few GCs), divided by #{fmt(n, 0)}; \"cold\": on a fresh server of " \
             "its own, minus its VmRSS when it started listening (the first measurement's method; it includes " \
             "those fixed costs).", "",
             "| server | req/s | p50 ms | p99 ms | server CPU µs/req | vs nio4r | RSS/idle conn | vs nio4r | " \
             "RSS/idle conn cold | others |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
      CONNS_VARIANTS.each do |v, (label, _)|
        next if @r.runs(:conns, row, v).empty?

        out << "| #{row_label(v, label)} | #{spread(samples(:conns, row, v, :rps))} | " \
               "#{spread(samples(:conns, row, v, :p50), 3)} | #{spread(samples(:conns, row, v, :p99), 3)} | " \
               "#{spread(samples(:conns, row, v, :cpu_us), 2)} | " \
               "#{ratio_s(Bench.ratio(med(:conns, row, v, :cpu_us), base_cpu))} | " \
               "#{spread(samples(:conns, row, v, :rss_idle))} B | " \
               "#{ratio_s(Bench.ratio(med(:conns, row, v, :rss_idle), base_rss))} | " \
               "#{spread(samples(:conns, row, v, :rss_cold))} B | #{others_cell(:conns, row, v)} |"
      end
      out << ""
      out
    end

    def bodies_table
      out = ["## 5. Response bodies", "",
             "bench/conn_client.c at #{@cfg.body_conns} connections, all active, #{@meta['wrk_seconds']} s per run " \
             "(after a #{@meta['wrk_warmup']} s warm-up): every response's status, Content-Length and each body " \
             "byte are checked against the expected body, and the bytes checked must equal responses x size. " \
             "examples/hello_select_server.rb (IO.select, write_nonblock, the rest on writability) and " \
             "examples/hello_server.rb (HotpathRing, submit_send of one frozen String per response), both with " \
             "--body-size.", "",
             "| body | server | req/s | MB/s | p50 ms | p99 ms | server CPU µs/req | vs select | others |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
      @cfg.body_sizes.each do |size|
        row = Bench.body_row(size)
        base = med(:bodies, row, "select", :cpu_us)
        BODIES_VARIANTS.each do |v, (label, _)|
          next if @r.runs(:bodies, row, v).empty?

          out << "| #{Bench.body_label(size)} | #{label} | #{spread(samples(:bodies, row, v, :rps))} | " \
                 "#{spread(samples(:bodies, row, v, :mb_s))} | #{spread(samples(:bodies, row, v, :p50), 3)} | " \
                 "#{spread(samples(:bodies, row, v, :p99), 3)} | #{spread(samples(:bodies, row, v, :cpu_us), 2)} | " \
                 "#{ratio_s(Bench.ratio(med(:bodies, row, v, :cpu_us), base))} | #{others_cell(:bodies, row, v)} |"
        end
      end
      out << ""
      out
    end

    def percall_table
      m = @meta
      floor = med(:percall, "ns", "sysread", :ns)
      out = ["## 3. Per-call cost", "",
             "bench/percall.rb, #{fmt(m['percall_iterations'], 0)} calls per variant per round, one process per " \
             "round. Reads take 100 bytes from a loopback TCP socket holding data already (refilled, untimed, " \
             "every 250 reads; median of the 250-read blocks). each_completion: one send is submitted and " \
             "flushed (untimed) before each timed call, so exactly one completion is ready; median of single " \
             "calls, clock cost subtracted. Buffers: median of 256-buffer blocks of 100-byte buffers filled by " \
             "a multishot recv. Round trips: 16 bytes written on one end of a UNIX socketpair and read on the " \
             "other, by IO#sysread or through a HotpathRing (multishot recv armed once, each_completion(raw: " \
             "true) until its completion, take_buffer), median of 250-round-trip blocks.", "",
             "| call | ns/call | vs IO#sysread | others |",
             "| --- | --- | --- | --- |"]
      PERCALL_VARIANTS.each do |v, label|
        next if samples(:percall, "ns", v, :ns).empty? # a run from before the variant

        base = PERCALL_FLOORS[v]
        vs = ratio_s(Bench.ratio(med(:percall, "ns", v, :ns), base ? med(:percall, "ns", base, :ns) : floor))
        vs += " (of the socketpair round trip)" if base && base != v
        vs = "(floor of the round trips)" if base == v
        out << "| #{label} | #{spread(samples(:percall, 'ns', v, :ns))} | #{vs} | #{others_cell(:percall, 'ns', v)} |"
      end
      lo = med(:percall, "ns", "loop_overhead", :ns)
      out << ""
      out << "The buffer rows include their Ruby `while` loop (about #{lo ? lo.round : '?'} ns per iteration)." if lo
      out << ""
      out
    end
  end
end
