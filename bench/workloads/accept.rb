# frozen_string_literal: true

# Workload 1, accept: bench/accept_client.c against bench/accept_server.rb
# (four variants) and bench/hello_epoll.c --accept (the ceiling), N in
# flight or in bursts queued while the server is stopped.
module Bench
  ACCEPT_VARIANTS = {
    "select" => "accept_nonblock + IO.select",
    "blocking" => "TCPServer#accept (blocking)",
    "ring" => "Ring#accept",
    "multishot" => "HotpathRing multishot accept",
    "c_accept" => "C accept4 loop (ceiling)"
  }.freeze

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
end
