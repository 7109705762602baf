#!/usr/bin/env ruby
# frozen_string_literal: true

# The server side of the accept benchmark: accepts connections on 127.0.0.1
# and closes each at once, in one of four ways.
#
#   ruby bench/accept_server.rb --variant VARIANT [--port 0] [--seconds 120]
#
#   select     IO.select + accept_nonblock(exception: false) until it would
#              block: what a plain Ruby server does
#   blocking   TCPServer#accept in a loop
#   ring       Hyperion::IOUring::Ring#accept
#   multishot  HotpathRing#submit_accept_multishot, drained with
#              each_completion(raw: true)
#
# The io_uring variants get an Integer fd. ring closes it with
# IO.for_fd(fd).close (fcntl(F_GETFL) + ioctl(TCGETS) on top of the
# close(2)); multishot with HotpathRing#submit_close, which goes to the
# kernel with the next each_completion's io_uring_enter (no syscall of its
# own). Prints "listening on 127.0.0.1:PORT" when ready; counts accepted
# connections in $bench_ops for bench/cpu_probe.rb. Stops after --seconds or
# on INT/TERM.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "socket"
require "optparse"

opts = { variant: nil, port: 0, seconds: 120.0, host: "127.0.0.1" }
OptionParser.new do |o|
  o.on("--variant NAME", %w[select blocking ring multishot]) { |v| opts[:variant] = v }
  o.on("--port N", Integer) { |v| opts[:port] = v }
  o.on("--seconds S", Float) { |v| opts[:seconds] = v }
end.parse!(ARGV)
abort "--variant select|blocking|ring|multishot is required" unless opts[:variant]

listener = TCPServer.new(opts[:host], opts[:port])
listener.listen(4096)
$bench_ops = 0
deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + opts[:seconds]
# A blocking accept would not look at a flag: leave through the signal's
# own exception instead. (bench/cpu_probe.rb's alarm(2) bounds the process
# even if nobody signals it; no watchdog thread, which would change how the
# GVL behaves.)
%w[INT TERM].each { |sig| trap(sig) { raise SignalException, sig } }

def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

ring = nil
begin
  case opts[:variant]
  when "select"
    puts "listening on #{opts[:host]}:#{listener.addr[1]}"
    $stdout.flush
    while monotonic < deadline
      next unless IO.select([listener], nil, nil, 0.5)

      loop do
        sock = listener.accept_nonblock(exception: false)
        break if sock == :wait_readable

        sock.close
        $bench_ops += 1
      rescue Errno::ECONNABORTED, Errno::EPROTO
        next
      end
    end
  when "blocking"
    puts "listening on #{opts[:host]}:#{listener.addr[1]}"
    $stdout.flush
    while monotonic < deadline
      begin
        listener.accept.close
        $bench_ops += 1
      rescue Errno::ECONNABORTED, Errno::EPROTO
        next
      end
    end
  when "ring"
    require "hyperion/io_uring"
    ring = Hyperion::IOUring::Ring.new
    puts "listening on #{opts[:host]}:#{listener.addr[1]}"
    $stdout.flush
    loop do
      fd = ring.accept(listener, timeout: 0.5)
      next if fd == :wouldblock

      IO.for_fd(fd).close
      $bench_ops += 1
    end
  when "multishot"
    require "hyperion/io_uring"
    hr = Hyperion::IOUring::HotpathRing
    ring = hr.new
    ring.submit_accept_multishot(listener)
    accept_op = hr::OP_ACCEPT
    close_op = hr::OP_CLOSE
    puts "listening on #{opts[:host]}:#{listener.addr[1]}"
    $stdout.flush
    loop do
      ring.each_completion(raw: true, timeout_ms: 500) do |op, fd, res, _buf_id, _flags|
        if op == close_op
          warn "accept_server: close(#{fd}) failed: #{SystemCallError.new(nil, -res).message}"
          exit 1
        end
        next unless op == accept_op

        if res >= 0
          ring.submit_close(res)
          $bench_ops += 1
        elsif res != -Errno::ECANCELED::Errno && res != -Errno::ECONNABORTED::Errno
          warn "accept_server: multishot accept failed: #{SystemCallError.new(nil, -res).message}"
          exit 1
        end
      end
    end
  end
rescue SignalException
  nil
ensure
  ring&.close
  listener.close
  puts "accepted=#{$bench_ops}"
end
