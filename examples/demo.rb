#!/usr/bin/env ruby
# frozen_string_literal: true

# Serves real loopback TCP connections twice: once through
# Hyperion::IOUring::Ring#accept and #read, once through a plain
# accept_nonblock + IO.select loop, and prints how many each served and how
# fast. Every connection's bytes are checked; a mismatch exits 1.
#
#   bundle exec ruby examples/demo.rb
#
# DEMO_CONNECTIONS (default 2000) and DEMO_SECONDS (default 3, per loop)
# bound the work. Exits 0 without serving when io_uring is unsupported here.

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "socket"
require "hyperion/io_uring"

module Demo
  CONNECTIONS = Integer(ENV.fetch("DEMO_CONNECTIONS", "2000"))
  SECONDS = Float(ENV.fetch("DEMO_SECONDS", "3"))
  # Connections the client keeps open at once, waiting for the server to
  # close them: enough to keep the server busy, well below the backlog, so a
  # full accept queue never costs a 1 s SYN retransmit.
  WINDOW = 32
  BACKLOG = 512
  POLL = 0.2 # seconds any single wait may take

  module_function

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def message(index)
    format("hello from client %05d\n", index)
  end

  # Opens up to CONNECTIONS connections (for at most SECONDS), each sending
  # one message, at most WINDOW open at a time. Returns how many it opened.
  def client(port, deadline)
    open = []
    sent = 0
    while sent < CONNECTIONS && now < deadline
      sock = Socket.tcp("127.0.0.1", port, connect_timeout: 1)
      sock.write(message(sent))
      sent += 1
      open << sock
      retire(open.shift) if open.size >= WINDOW
    end
    open.each { |sock| retire(sock) }
    sent
  rescue SystemCallError, IOError => e
    warn "demo: client stopped after #{sent} connection(s): #{e.class}: #{e.message}"
    open.each(&:close)
    sent
  end

  # Waits (briefly) for the server to close its end, then closes ours.
  def retire(sock)
    sock.wait_readable(2)
  ensure
    sock.close
  end

  # Runs +serve_one+ on each accepted connection until the client is done
  # and everything it sent was served, or the time is up.
  def run(label, listener)
    port = listener.local_address.ip_port
    deadline = now + SECONDS
    client = Thread.new { client(port, deadline) }
    client.report_on_exception = false
    served = bad = 0
    started = now
    hard_stop = deadline + 2
    loop do
      break if !client.alive? && served + bad >= client.value
      break if now > hard_stop

      result = yield
      next if result.nil? # nothing to accept yet

      result ? served += 1 : bad += 1
    end
    elapsed = now - started
    client.join(1)
    { label: label, served: served, bad: bad, sent: (client.alive? ? nil : client.value), seconds: elapsed }
  ensure
    client&.kill
  end

  # Reads until a whole message (or EOF, or a timeout) and checks it.
  def valid?(data)
    data.match?(/\Ahello from client \d{5}\n\z/)
  end

  def ring_loop(listener)
    ring = Hyperion::IOUring::Ring.new(queue_depth: 256)
    run("io_uring Ring#accept/#read", listener) do
      fd = ring.accept(listener, timeout: POLL)
      next nil if fd == :wouldblock

      begin
        data = +""
        until data.end_with?("\n")
          chunk = ring.read(fd, max: 4096, timeout: POLL)
          break if chunk == :wouldblock || chunk.empty?

          data << chunk
        end
        valid?(data)
      ensure
        IO.for_fd(fd).close
      end
    end
  ensure
    ring&.close
  end

  def plain_loop(listener)
    run("plain accept_nonblock/IO.select", listener) do
      client = listener.accept_nonblock(exception: false)
      if client == :wait_readable
        IO.select([listener], nil, nil, POLL)
        next nil
      end

      begin
        client = client.first
        data = +""
        until data.end_with?("\n")
          chunk = client.read_nonblock(4096, exception: false)
          if chunk == :wait_readable
            break unless IO.select([client], nil, nil, POLL)

            next
          end
          break if chunk.nil?

          data << chunk
        end
        valid?(data)
      ensure
        client.close
      end
    end
  end

  def listen
    sock = Socket.new(:INET, :STREAM)
    sock.setsockopt(:SOCKET, :REUSEADDR, true)
    sock.bind(Addrinfo.tcp("127.0.0.1", 0))
    sock.listen(BACKLOG)
    yield sock
  ensure
    sock&.close
  end

  def report(result)
    rate = result[:seconds].positive? ? result[:served] / result[:seconds] : 0.0
    printf("  %-34s %5d served, %d bad, %6.2f s, %8.0f conn/s\n",
           result[:label], result[:served], result[:bad], result[:seconds], rate)
    rate
  end

  def summary
    d = Hyperion::IOUring.diagnostics
    puts "hyperion-io_uring #{d[:gem_version]} on #{d[:sysname]} #{d[:kernel_release]}, " \
         "liburing #{d[:liburing_version] || '-'}, #{RUBY_DESCRIPTION}"
    flags = d[:setup_flags].is_a?(Integer) ? format(" (setup flags 0x%x)", d[:setup_flags]) : ""
    puts "  io_uring: #{d[:supported] ? "supported#{flags}" : "NOT supported: #{d[:unsupported_reason]}"}"
    puts "  hot path: #{d[:hotpath_supported] ? 'supported' : "no (#{d[:hotpath_unsupported_reason]})"}" if d[:supported]
    puts "  (full report: bin/hyperion-io_uring-doctor)"
  end

  def main
    summary
    unless Hyperion::IOUring.supported?
      puts "Skipping the io_uring demo on this host."
      return 0
    end

    puts "Serving up to #{CONNECTIONS} loopback connections per loop (#{SECONDS} s budget each):"
    ring = listen { |l| ring_loop(l) }
    plain = listen { |l| plain_loop(l) }
    rates = [ring, plain].map { |r| report(r) }
    puts format("  io_uring / plain: %.2fx", rates[1].positive? ? rates[0] / rates[1] : 0.0)

    failed = [ring, plain].select { |r| r[:bad].positive? || r[:served].zero? }
    failed.each { |r| warn "demo: #{r[:label]}: #{r[:bad]} bad connection(s), #{r[:served]} served" }
    failed.empty? ? 0 : 1
  end
end

if $PROGRAM_NAME == __FILE__
  # Last resort: whatever hangs, the demo ends (and says so).
  Thread.new do
    sleep 30
    warn "demo: still running after 30 s; giving up"
    exit!(2)
  end
  exit(Demo.main)
end
