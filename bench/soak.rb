#!/usr/bin/env ruby
# frozen_string_literal: true

# Soak test: a HotpathRing echo server under churn, watched for leaks.
#
#   ruby bench/soak.rb [--seconds 60] [--clients 200] [--slow-readers 4] [--interval 10] [--seed N]
#   bundle exec rake soak            (SOAK_SECONDS=600 for ten minutes)
#
# The server (this process, one thread, one HotpathRing: multishot accept,
# multishot recv into a 256 x 4 KiB buffer ring, submit_send of every
# received buffer) echoes for a client process forked at start: --clients
# threads that connect, exchange 1..20 random messages (1 byte to 64 KiB,
# log-uniform), check every echo byte for byte, and disconnect: with a FIN,
# with an RST (SO_LINGER 0), or by resetting in the middle of an exchange
# (the server's send then fails), then connect again, until --seconds pass.
# Besides them, --slow-readers threads connect with a 4 KiB receive buffer,
# send 64 KiB every 10 ms and never read: the echoes pile up in the ring
# until the server drops the connection (its queued_send_bytes over a 2 MiB
# high-water mark, or SendBufferFull: submit_close(fd, timeout: 0) cancels
# what is queued), and they connect again. The ring has
# send_buffer_limit: 32 MiB (8 MiB per connection).
#
# Every --interval seconds it prints the server's open fds, RSS and the
# ring's stats. At the end, with every connection closed and the accept
# cancelled, it checks and exits 1 when:
#   - any echo differed, or a client saw an error it did not cause;
#   - the fd count is not back to what it was before the run, or went above
#     the baseline plus the clients plus 32 during it;
#   - RSS kept growing: the last sample is more than max(32 MiB, 25%) above
#     the first sample taken after the warm-up (a sixth of the run, at least
#     one interval);
#   - the ring is unhealthy, holds buffers, or still has requests in flight,
#     or still holds send copies (queued_send_bytes) after the run;
#   - the ring's queued send bytes ever passed send_buffer_limit.
# It reports the peak RSS and the peak queued_send_bytes of the run.
# It always stops: the clients at --seconds, the server by --seconds + 60.
# Loopback only.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "hyperion/io_uring"
require "socket"
require "optparse"
require "json"
require_relative "../spec/support/full_io"

module Soak
  extend FullIO # read_fully, write_fully (shared with the specs)

  MIB = 1024.0 * 1024

  module_function

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  def fd_count = Dir.children("/proc/self/fd").size

  def rss_bytes
    line = File.foreach("/proc/self/status").find { |l| l.start_with?("VmRSS:") }
    Integer(line.split[1]) * 1024
  end

  # ---- clients (the forked child) -------------------------------------------

  # Runs +clients+ threads against port until deadline; writes a JSON
  # summary to out.
  def run_clients(port, clients:, slow_readers:, deadline:, seed:, out:)
    totals = Hash.new(0)
    problems = Queue.new
    lock = Mutex.new
    add = ->(h) { lock.synchronize { h.each { |k, v| totals[k] += v } } }
    threads = Array.new(clients) do |i|
      Thread.new { client_loop(port, Random.new(seed * 1000 + i), deadline, add, problems) }
    end
    threads += Array.new(slow_readers) do |i|
      Thread.new { slow_reader_loop(port, Random.new(seed * 1000 + clients + i), deadline, add, problems) }
    end
    threads.each { |t| t.join([deadline - now, 0].max + 30) || t.kill }
    errors = Array.new(problems.size) { problems.pop }
    out.write(JSON.generate(totals.merge("errors" => errors.size, "first_errors" => errors.first(10))))
    out.close
  end

  def client_loop(port, rng, deadline, add, problems)
    while now < deadline
      sock = TCPSocket.new("127.0.0.1", port)
      stats = { "connections" => 1 }
      how = rng.rand
      exchanges = rng.rand(1..20)
      aborted = false
      exchanges.times do
        break if now > deadline

        size = Math.exp(rng.rand * Math.log(65_536)).to_i.clamp(1, 65_536)
        msg = rng.bytes(size)
        if how < 0.05 && rng.rand < 0.3
          # Reset in the middle of an exchange: the echo is never read.
          sock.write_nonblock(msg, exception: false)
          aborted = true
          break
        end
        write_fully(sock, msg, deadline + 20)
        back = read_fully(sock, size, deadline + 20)
        if back == msg
          stats["exchanges"] = stats.fetch("exchanges", 0) + 1
          stats["bytes"] = stats.fetch("bytes", 0) + size
        else
          stats["mismatches"] = stats.fetch("mismatches", 0) + 1
          problems << "echo of #{size} bytes differs"
        end
      end
      if aborted || how < 0.25
        sock.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
        stats[aborted ? "aborts" : "resets"] = 1
      end
      sock.close
      add.call(stats)
    end
  rescue StandardError => e
    problems << "#{e.class}: #{e.message}"
    sock&.close unless sock&.closed?
  end

  # A client that sends and never reads, until the server drops it (a reset
  # or EPIPE on its writes); then again.
  def slow_reader_loop(port, rng, deadline, add, problems)
    chunk = rng.bytes(65_536)
    while now < deadline
      sock = TCPSocket.new("127.0.0.1", port)
      sock.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
      stats = { "slow_connections" => 1 }
      begin
        while now < deadline
          n = sock.write_nonblock(chunk, exception: false)
          if n == :wait_writable
            sock.wait_writable(0.1)
          else
            stats["slow_bytes"] = stats.fetch("slow_bytes", 0) + n
            sleep 0.01
          end
        end
      rescue Errno::ECONNRESET, Errno::EPIPE
        stats["slow_dropped"] = 1
      end
      sock.close
      add.call(stats)
    end
  rescue StandardError => e
    problems << "slow reader: #{e.class}: #{e.message}"
    sock&.close unless sock&.closed?
  end

  # ---- the server --------------------------------------------------------------

  # An echo server on one HotpathRing. Connection state: sends in flight and
  # whether the recv ended (EOF or error); closed once both are done.
  class Server
    attr_reader :ring, :open, :closed, :send_errors, :recv_errors, :unexpected, :dropped, :send_buffer_full

    SEND_BUFFER_LIMIT = 32 << 20
    HIGH_WATER = 2 << 20

    def initialize(listener)
      @k = Hyperion::IOUring::HotpathRing
      @ring = @k.new(queue_depth: 1024, n_bufs: 256, buf_size: 4096, send_buffer_limit: SEND_BUFFER_LIMIT)
      @dropped = 0
      @send_buffer_full = 0
      @listener = listener
      @pending = {}
      @ended = {}
      @open = 0
      @closed = 0
      @send_errors = 0
      @recv_errors = 0
      @unexpected = []
      @ecanceled = -Errno::ECANCELED::Errno
      @ring.submit_accept_multishot(listener)
    end

    def connections = @pending.size

    def step(timeout_ms)
      @ring.each_completion(timeout_ms: timeout_ms, raw: true) do |op, fd, res, bid, _flags|
        case op
        when @k::OP_ACCEPT then on_accept(fd, res)
        when @k::OP_RECV then on_recv(fd, res, bid)
        when @k::OP_SEND then on_send(fd, res)
        end
      end
    end

    # Cancels the accept and closes what is still open; drains.
    def shutdown
      @ring.cancel(@listener)
      @pending.each_key { |fd| finish(fd) }
      deadline = Soak.now + 5
      @ring.each_completion(timeout_ms: 20) { |_| nil } while @ring.stats[:inflight].positive? && Soak.now < deadline
    end

    private

    def on_accept(_lfd, res)
      if res.negative?
        @unexpected << "accept failed: #{res}" unless res == @ecanceled
        return
      end
      @pending[res] = 0
      @open += 1
      @ring.submit_recv_multishot(res)
    end

    def on_recv(fd, res, bid)
      unless @pending.key?(fd)
        # A connection closed already: its cancelled recv's end, or bytes a
        # dropped slow reader sent before the cancel reached the recv (the
        # buffer goes back).
        @ring.release_buffer(bid) if res.positive?
        return
      end

      if res.positive?
        data = @ring.take_buffer(bid, res)
        return drop(fd) if @ring.queued_send_bytes(fd) > HIGH_WATER

        begin
          @ring.submit_send(fd, data)
        rescue Hyperion::IOUring::SendBufferFull
          @send_buffer_full += 1
          return drop(fd)
        end
        @pending[fd] += 1
      else
        # 0: EOF; ECONNRESET: the client reset. Either way the recv ended.
        @recv_errors += 1 if res.negative?
        unless res.zero? || res == -Errno::ECONNRESET::Errno
          @unexpected << "recv on fd #{fd}: #{res}"
        end
        @ended[fd] = true
        finish(fd) if @pending[fd].zero?
      end
    end

    def on_send(fd, res)
      return unless @pending.key?(fd)

      @pending[fd] -= 1
      if res.negative?
        # A client that reset mid-exchange: EPIPE or ECONNRESET.
        @send_errors += 1
        unless [-Errno::EPIPE::Errno, -Errno::ECONNRESET::Errno, @ecanceled].include?(res)
          @unexpected << "send on fd #{fd}: #{res}"
        end
      end
      finish(fd) if @ended[fd] && @pending[fd].zero?
    end

    # A client that does not read what it is sent: closed through the ring
    # at once, its queued echoes cancelled (timeout 0). What the ring still
    # reports for it arrives before the number's next accept, and is ignored.
    def drop(fd)
      @ring.submit_close(fd, timeout: 0)
      @pending.delete(fd)
      @ended.delete(fd)
      @dropped += 1
      @closed += 1
    end

    def finish(fd)
      @ring.cancel(fd)
      IO.for_fd(fd).close
      @pending.delete(fd)
      @ended.delete(fd)
      @closed += 1
    end
  end

  # ---- main ------------------------------------------------------------------

  def parse(argv)
    opts = { seconds: 60.0, clients: 200, slow_readers: 4, interval: 10.0, seed: Random.new_seed % 1_000_000 }
    OptionParser.new do |o|
      o.banner = "usage: ruby bench/soak.rb [options]"
      o.on("--seconds S", Float, "how long the clients run (default 60)") { |v| opts[:seconds] = v }
      o.on("--clients N", Integer, "concurrent clients (default 200)") { |v| opts[:clients] = v }
      o.on("--slow-readers N", Integer, "clients that never read (default 4)") { |v| opts[:slow_readers] = v }
      o.on("--interval S", Float, "seconds between samples (default 10)") { |v| opts[:interval] = v }
      o.on("--seed N", Integer, "client random seed") { |v| opts[:seed] = v }
    end.parse!(argv)
    opts
  end

  def sample_line(t0, server)
    s = server.ring.stats
    format("t=%4ds fds=%-4d rss=%6.1fMiB conns=%-4d accepts=%d closed=%d recvs=%d recv_MiB=%.1f sends=%d " \
           "send_MiB=%.1f short=%d enobufs=%d rearms=%d stale=%d cq_overflows=%d inflight=%d bufs_in_use=%d " \
           "send_errors=%d queued_send_MiB=%.1f dropped_slow=%d close_timeouts=%d healthy=%s",
           (now - t0).round, fd_count, rss_bytes / MIB, server.connections, s[:accepts], server.closed, s[:recvs],
           s[:recv_bytes] / MIB, s[:sends], s[:send_bytes] / MIB, s[:short_sends], s[:enobufs], s[:rearms],
           s[:stale_completions], s[:cq_overflows], s[:inflight], s[:buffers_in_use], server.send_errors,
           s[:queued_send_bytes] / MIB, server.dropped, s[:close_timeouts], server.ring.healthy?)
  end

  def main(argv)
    opts = parse(argv)
    unless Hyperion::IOUring.hotpath_supported?
      warn "soak: hot path unsupported here: #{Hyperion::IOUring.hotpath_unsupported_reason}"
      return 2
    end
    $stdout.sync = true
    listener = TCPServer.new("127.0.0.1", 0)
    port = listener.local_address.ip_port
    seconds = opts[:seconds]
    puts "soak: #{opts[:clients]} clients and #{opts[:slow_readers]} slow readers for #{seconds.round}s on 127.0.0.1:#{port} (seed #{opts[:seed]}), " \
         "samples every #{opts[:interval].round}s; #{RUBY_DESCRIPTION}; kernel #{Hyperion::IOUring.kernel_release}"
    rd, wr = IO.pipe
    client_deadline = now + seconds
    pid = fork do
      rd.close
      listener.close
      run_clients(port, clients: opts[:clients], slow_readers: opts[:slow_readers], deadline: client_deadline,
                  seed: opts[:seed], out: wr)
      exit!(0)
    end
    wr.close

    GC.start
    base_fds = fd_count
    server = Server.new(listener)
    t0 = now
    hard_stop = t0 + seconds + 60
    samples = []
    next_sample = t0 + opts[:interval]
    max_fds = 0
    peaks = { rss: rss_bytes, queued: 0 }
    next_fd_check = t0
    client_status = nil
    until (client_status && server.connections.zero?) || now > hard_stop
      server.step(50)
      client_status ||= Process.wait2(pid, Process::WNOHANG)&.last
      if now >= next_fd_check
        max_fds = [max_fds, fd_count].max
        peaks[:rss] = [peaks[:rss], rss_bytes].max
        peaks[:queued] = [peaks[:queued], server.ring.stats[:queued_send_bytes]].max
        next_fd_check = now + 0.25
      end
      next unless now >= next_sample

      line = sample_line(t0, server)
      puts line
      samples << { t: now - t0, fds: fd_count, rss: rss_bytes }
      next_sample += opts[:interval]
    end
    timed_out = now > hard_stop
    unless client_status
      Process.kill(:KILL, pid)
      Process.wait(pid)
    end
    report = begin
      JSON.parse(rd.read)
    rescue JSON::ParserError
      { "errors" => 1, "first_errors" => ["the client process reported nothing"] }
    end
    server.shutdown
    stats = server.ring.stats
    healthy = server.ring.healthy?
    puts sample_line(t0, server).sub(/healthy=\S+/, "(after shutdown)")
    server.ring.close
    GC.start
    end_fds = fd_count # the same fds open as for base_fds: the listener and the pipe
    rd.close
    listener.close
    verdict(opts, report, stats, healthy, samples, base_fds, end_fds, max_fds, timed_out, server, peaks)
  end

  def verdict(opts, report, stats, healthy, samples, base_fds, end_fds, max_fds, timed_out, server, peaks)
    failures = []
    failures << "the server did not finish by --seconds + 60" if timed_out
    failures << "#{report['mismatches']} echo(es) differed" if report["mismatches"].to_i.positive?
    failures << "clients saw #{report['errors']} error(s): #{report['first_errors'].inspect}" if report["errors"].to_i.positive?
    failures << "server saw: #{server.unexpected.first(10).inspect}" unless server.unexpected.empty?
    failures << "ring unhealthy" unless healthy
    failures << "buffers still held: #{stats[:buffers_in_use]}" unless stats[:buffers_in_use].zero?
    failures << "requests still in flight: #{stats[:inflight]}" unless stats[:inflight].zero?
    failures << "send copies still held: #{stats[:queued_send_bytes]} bytes" unless stats[:queued_send_bytes].zero?
    if peaks[:queued] > Server::SEND_BUFFER_LIMIT
      failures << "queued send bytes reached #{peaks[:queued]}, over send_buffer_limit #{Server::SEND_BUFFER_LIMIT}"
    end
    if opts[:slow_readers].positive? && report["slow_connections"].to_i.positive? && server.dropped.zero?
      failures << "no slow reader was dropped"
    end
    failures << "fds: #{end_fds} open after the run, #{base_fds} before" unless end_fds == base_fds
    fd_cap = base_fds + opts[:clients] + 32
    failures << "fds reached #{max_fds} (cap #{fd_cap})" if max_fds > fd_cap || samples.any? { |s| s[:fds] > fd_cap }
    rss = rss_verdict(opts, samples)
    failures << rss[:failure] if rss[:failure]
    puts format("soak: %d connections (%d reset, %d reset mid-exchange), %d exchanges, %.1f MiB echoed and checked; " \
                "server: accepts=%d closed=%d send_errors=%d; fds before/after %d/%d, max %d; %s",
                report["connections"].to_i, report["resets"].to_i, report["aborts"].to_i, report["exchanges"].to_i,
                report["bytes"].to_i / MIB, stats[:accepts], server.closed, server.send_errors, base_fds,
                end_fds, max_fds, rss[:summary])
    puts format("soak: slow readers: %d connections, %.1f MiB sent to the server, %d dropped by it " \
                "(%d at the high-water mark, %d on SendBufferFull; %d close deadlines met); " \
                "peak queued_send_bytes %.1f MiB (limit %d MiB); peak RSS %.1f MiB",
                report["slow_connections"].to_i, report["slow_bytes"].to_i / MIB, server.dropped,
                server.dropped - server.send_buffer_full, server.send_buffer_full, stats[:close_timeouts],
                peaks[:queued] / MIB, Server::SEND_BUFFER_LIMIT >> 20, peaks[:rss] / MIB)
    if failures.empty?
      puts "soak: PASS"
      0
    else
      failures.each { |f| puts "soak: FAIL: #{f}" }
      1
    end
  end

  # The first sample after the warm-up against the last one.
  def rss_verdict(opts, samples)
    warm_t = [opts[:seconds] / 6.0, opts[:interval]].max
    warm = samples.find { |s| s[:t] >= warm_t - 0.5 }
    last = samples.last
    return { summary: "RSS: too few samples to judge (run longer than 2 intervals)" } if warm.nil? || warm.equal?(last)

    growth = last[:rss] - warm[:rss]
    limit = [32 * MIB, warm[:rss] * 0.25].max
    minutes = (last[:t] - warm[:t]) / 60.0
    summary = format("RSS %.1f MiB at %ds -> %.1f MiB at %ds (%+.1f MiB, %+.2f MiB/min)",
                     warm[:rss] / MIB, warm[:t].round, last[:rss] / MIB, last[:t].round, growth / MIB,
                     minutes.positive? ? growth / MIB / minutes : 0.0)
    failure = growth > limit ? "RSS kept growing: #{summary}, over the #{(limit / MIB).round(1)} MiB allowed" : nil
    { summary: summary, failure: failure }
  end
end

exit(Soak.main(ARGV)) if $PROGRAM_NAME == __FILE__
