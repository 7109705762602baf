#!/usr/bin/env ruby
# frozen_string_literal: true

# A pre-fork HTTP/1.1 keep-alive "Hello World" server: the parent opens the
# listening socket(s) and forks workers; each worker opens its own
# HotpathRing after the fork (multishot accept, multishot recv, sends). The
# parent never opens a ring: a ring belongs to the process (and thread) that
# made it, and a forked child must never submit to its parent's ring.
#
#   ruby examples/prefork_server.rb [--port 9292] [--workers 2] [--seconds 30] [--reuseport]
#
# Without --reuseport the workers share one listener (each arms a multishot
# accept on it; the kernel hands each connection to one of them). With
# --reuseport the parent opens one SO_REUSEPORT listener per worker on the
# same port and the kernel spreads connections across them by hash.
#
# Prints "listening on 127.0.0.1:PORT" when the workers are up, and how many
# connections and requests each worker served when they stop (after
# --seconds, or on INT/TERM). Every response carries an X-Worker header with
# the worker's pid. Loopback only. Also loaded by spec/prefork_spec.rb.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "hyperion/io_uring"
require "socket"

module PreforkExample
  BODY = "Hello World\n"
  TERMINATOR = "\r\n\r\n"
  HR = Hyperion::IOUring::HotpathRing

  # A started worker: its pid and the pipe it reports on.
  Worker = Struct.new(:pid, :report, :stop)

  module_function

  # The listeners the workers will use: one shared, or one SO_REUSEPORT
  # socket per worker, all on the same port.
  def open_listeners(host: "127.0.0.1", port: 0, workers: 2, reuseport: false)
    return [TCPServer.new(host, port).tap { |l| l.listen(1024) }] unless reuseport

    first = reuseport_listener(host, port)
    port = first.local_address.ip_port
    [first] + Array.new(workers - 1) { reuseport_listener(host, port) }
  end

  def reuseport_listener(host, port)
    sock = Socket.new(:INET, :STREAM)
    sock.setsockopt(:SOCKET, :REUSEADDR, true)
    sock.setsockopt(:SOCKET, :REUSEPORT, true)
    sock.bind(Addrinfo.tcp(host, port))
    sock.listen(1024)
    sock
  end

  # Forks +count+ workers, worker i serving listeners[i % listeners.size].
  # The parent keeps no ring of its own. Each worker serves until its stop
  # pipe closes or +seconds+ pass, then writes "pid connections requests"
  # to its report pipe.
  def start_workers(listeners, count: 2, seconds: 30.0)
    Array.new(count) do |i|
      report_r, report_w = IO.pipe
      stop_r, stop_w = IO.pipe
      pid = fork do
        report_r.close
        stop_w.close
        code = 1
        begin
          served = serve(listeners[i % listeners.size], stop: stop_r, seconds: seconds)
          report_w.write("#{Process.pid} #{served[:connections]} #{served[:requests]}\n")
          code = 0
        rescue Exception => e # rubocop:disable Lint/RescueException
          report_w.write("#{Process.pid} error #{e.class}: #{e.message}\n")
        ensure
          report_w.close
          exit!(code) # no at_exit hooks of the parent (rspec, ...) in the worker
        end
      end
      report_w.close
      stop_r.close
      Worker.new(pid, report_r, stop_w)
    end
  end

  # Tells the workers to stop and collects their reports:
  # { pid => { connections:, requests: } or { error: } }.
  def stop_workers(workers, timeout: 5)
    workers.each { |w| w.stop.close unless w.stop.closed? }
    workers.to_h do |w|
      line = w.report.wait_readable(timeout) ? w.report.read.to_s : ""
      w.report.close
      Process.wait(w.pid)
      pid, *rest = line.split(" ", 3)
      result = if rest[0] == "error" || pid.nil?
                 { error: rest[1] || "no report" }
               else
                 { connections: Integer(rest[0]), requests: Integer(rest[1]) }
               end
      [w.pid, result]
    end
  end

  # One worker's loop: its own HotpathRing, opened here, after the fork.
  def serve(listener, stop:, seconds:)
    unless Hyperion::IOUring.hotpath_supported?
      raise Hyperion::IOUring::Unsupported, Hyperion::IOUring.hotpath_unsupported_reason
    end

    response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Worker: #{Process.pid}\r\n" \
               "Content-Length: #{BODY.bytesize}\r\n\r\n#{BODY}".b.freeze
    ring = HR.new(queue_depth: 256, n_bufs: 64, buf_size: 4096)
    ring.submit_accept_multishot(listener)
    partial = {}
    counts = { connections: 0, requests: 0 }
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
    until stop_requested?(stop) || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      ring.each_completion(raw: true, timeout_ms: 20) do |op, fd, res, buf_id, _flags|
        case op
        when HR::OP_ACCEPT
          next if res.negative?

          counts[:connections] += 1
          ring.submit_recv_multishot(res)
        when HR::OP_RECV
          if res.positive?
            n = count_requests(partial, fd, ring.take_buffer(buf_id, res))
            counts[:requests] += n
            ring.submit_send(fd, n == 1 ? response : response * n) if n.positive?
          elsif res != -Errno::ECANCELED::Errno
            close_conn(ring, partial, fd) # EOF or error
          end
        when HR::OP_SEND
          close_conn(ring, partial, fd) if res.negative? && res != -Errno::ECANCELED::Errno
        end
      end
    end
    partial.each_key { |fd| close_conn(ring, {}, fd) }
    counts
  ensure
    ring&.close
  end

  def stop_requested?(stop)
    stop.read_nonblock(1, exception: false).nil? # EOF: the parent closed it
  end

  # Counts complete requests in data (after what was left last time) and
  # keeps the tail of an incomplete one.
  def count_requests(partial, fd, data)
    data = partial.delete(fd) << data if partial.key?(fd)
    n = 0
    pos = 0
    while (i = data.index(TERMINATOR, pos))
      n += 1
      pos = i + TERMINATOR.bytesize
    end
    partial[fd] = data.byteslice(pos..) if pos < data.bytesize
    n
  end

  def close_conn(ring, partial, fd)
    partial.delete(fd)
    ring.cancel(fd)
    IO.for_fd(fd).close
  rescue SystemCallError, IOError
    nil
  end
end

if $PROGRAM_NAME == __FILE__
  require "optparse"

  opts = { port: 9292, workers: 2, seconds: 30.0, reuseport: false }
  OptionParser.new do |o|
    o.on("--port N", Integer) { |v| opts[:port] = v }
    o.on("--workers N", Integer) { |v| opts[:workers] = v }
    o.on("--seconds S", Float) { |v| opts[:seconds] = v }
    o.on("--reuseport") { opts[:reuseport] = true }
  end.parse!(ARGV)

  listeners = PreforkExample.open_listeners(port: opts[:port], workers: opts[:workers], reuseport: opts[:reuseport])
  port = listeners[0].local_address.ip_port
  workers = PreforkExample.start_workers(listeners, count: opts[:workers], seconds: opts[:seconds])
  listeners.each(&:close) # the workers hold their own copies
  stop = false
  %w[INT TERM].each { |sig| trap(sig) { stop = true } }
  puts "listening on 127.0.0.1:#{port} " \
       "(#{opts[:workers]} workers: #{workers.map(&:pid).join(', ')})"
  $stdout.flush
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + opts[:seconds]
  sleep 0.05 until stop || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  PreforkExample.stop_workers(workers).each do |pid, r|
    puts r[:error] ? "worker #{pid}: #{r[:error]}" : "worker #{pid}: #{r[:connections]} connections, #{r[:requests]} requests"
  end
end
