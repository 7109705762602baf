#!/usr/bin/env ruby
# frozen_string_literal: true

# An HTTP/1.1 keep-alive "Hello World" server under the async gem. One
# accept fiber takes connections through an io_uring ring while the
# connection fibers serve their clients beside it on the same thread: the
# ring waits through the Fiber scheduler (an eventfd registered with the
# ring, io_wait'ed by Async's selector), so the thread never blocks in it.
#
#   ruby examples/async_server.rb [--port 9292] [--seconds 30] [--accept hotpath|ring|async]
#
#   --accept hotpath  the accept fiber drives a HotpathRing (multishot accept)
#   --accept ring     the accept fiber loops on Ring#accept
#   --accept async    Async's own accept (TCPServer#accept through the
#                     scheduler), for comparison
#
# Connection fibers use plain Ruby IO in every mode. Prints
# "listening on 127.0.0.1:PORT" when ready and a summary when it stops (after
# --seconds, or on INT/TERM). Loopback only. Needs the async gem (a
# development dependency: `bundle exec ruby examples/async_server.rb`).
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "hyperion/io_uring"
require "async"
require "socket"
require "io/nonblock"
require "optparse"

opts = { port: 9292, seconds: 30.0, host: "127.0.0.1", accept: "hotpath" }
OptionParser.new do |o|
  o.on("--port N", Integer) { |v| opts[:port] = v }
  o.on("--seconds S", Float) { |v| opts[:seconds] = v }
  o.on("--accept MODE", %w[hotpath ring async]) { |v| opts[:accept] = v }
end.parse!(ARGV)

case opts[:accept]
when "hotpath"
  unless Hyperion::IOUring.hotpath_supported?
    warn "hot path unsupported here: #{Hyperion::IOUring.hotpath_unsupported_reason}"
    exit 2
  end
when "ring"
  unless Hyperion::IOUring.supported?
    warn "io_uring unsupported here: #{Hyperion::IOUring.unsupported_reason}"
    exit 2
  end
end

BODY = "Hello World\n"
RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: #{BODY.bytesize}\r\n\r\n#{BODY}".b.freeze
TERMINATOR = "\r\n\r\n"
HR = Hyperion::IOUring::HotpathRing
stats = Hash.new(0)

# A connection fiber: keep-alive requests until the client closes. Fds the
# rings accept are blocking (as accept4 returns them); a blocking read would
# stall every fiber on the thread, so they are switched to O_NONBLOCK, as
# Ruby's own sockets are.
serve = lambda do |sock|
  sock.nonblock = true
  stats[:connections] += 1
  buf = +"".b
  loop do
    buf << sock.readpartial(16_384)
    n = 0
    while (i = buf.index(TERMINATOR))
      buf = buf.byteslice(i + TERMINATOR.bytesize..)
      n += 1
    end
    next if n.zero?

    stats[:requests] += n
    sock.write(n == 1 ? RESPONSE : RESPONSE * n)
  end
rescue EOFError, Errno::ECONNRESET, Errno::EPIPE
  nil
ensure
  sock.close
end

stopping = false
%w[INT TERM].each { |sig| trap(sig) { stopping = true } }

Sync do |top|
  listener = TCPServer.new(opts[:host], opts[:port])
  listener.listen(1024)

  acceptor = top.async do |task|
    case opts[:accept]
    when "hotpath"
      ring = Hyperion::IOUring.fiber_hotpath_ring(queue_depth: 256, n_bufs: 16, buf_size: 4096)
      ring.submit_accept_multishot(listener)
      loop do
        ring.each_completion(raw: true, timeout_ms: nil) do |op, _fd, res, _buf_id, _flags|
          next unless op == HR::OP_ACCEPT

          if res >= 0
            task.async { serve.call(Socket.for_fd(res)) }
          else
            stats[:accept_errors] += 1
          end
        end
      end
    when "ring"
      ring = Hyperion::IOUring.fiber_ring
      loop do
        fd = ring.accept(listener)
        task.async { serve.call(Socket.for_fd(fd)) } if fd.is_a?(Integer)
      end
    else
      loop do
        sock = listener.accept
        task.async { serve.call(sock) }
      end
    end
  ensure
    Hyperion::IOUring.close_fiber_rings # stopped: the ring's wait was unwound first
  end

  puts "listening on #{opts[:host]}:#{listener.local_address.ip_port} (accept: #{opts[:accept]})"
  $stdout.flush
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + opts[:seconds]
  sleep 0.1 until stopping || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  acceptor.stop
  top.children&.each(&:stop) # the connection fibers
  listener.close
end

puts "served #{stats[:connections]} connections, #{stats[:requests]} requests " \
     "(accept: #{opts[:accept]}, accept errors: #{stats[:accept_errors]})"
