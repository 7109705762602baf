#!/usr/bin/env ruby
# frozen_string_literal: true

# The 10,000-connection baseline: the HTTP/1.1 keep-alive "Hello World" of
# examples/hello_select_server.rb on nio4r, the epoll selector Puma's reactor
# uses (IO.select cannot wait on fds above 1023). One thread, NIO::Selector
# (epoll), accept_nonblock until EAGAIN, read_nonblock, write_nonblock (what
# does not go at once waits for writability), one NIO::Monitor per
# connection, as a Ruby server on nio4r does without io_uring.
#
#   ruby bench/hello_nio4r_server.rb [--port 9292] [--seconds 30] [--body-size BYTES]
#
# --body-size: the response body is BYTES of the bench's pattern ("a".."z"
# repeated, what bench/conn_client.c -b checks) instead of "Hello World\n".
# Prints "listening on 127.0.0.1:PORT" when ready and "stats: served=N" when
# it stops. Needs the nio4r gem (the Gemfile's :bench group). Loopback only.
require "socket"
require "optparse"
require "nio"

opts = { port: 9292, seconds: 30.0, host: "127.0.0.1", body_size: nil }
OptionParser.new do |o|
  o.on("--port N", Integer) { |v| opts[:port] = v }
  o.on("--seconds S", Float) { |v| opts[:seconds] = v }
  o.on("--body-size BYTES", Integer) { |v| opts[:body_size] = v }
end.parse!(ARGV)

# Hold as many connections as the hard limit allows (10,000 in the bench).
soft, hard = Process.getrlimit(:NOFILE)
Process.setrlimit(:NOFILE, hard) if soft < hard

BODY = opts[:body_size] ? ("abcdefghijklmnopqrstuvwxyz" * (opts[:body_size] / 26 + 1))[0, opts[:body_size]] : "Hello World\n"
RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: #{BODY.bytesize}\r\n\r\n#{BODY}".b.freeze
TERMINATOR = "\r\n\r\n"

listener = TCPServer.new(opts[:host], opts[:port])
listener.listen(1024)
selector = NIO::Selector.new
selector.register(listener, :r)
partial = {} # io => bytes of a request not complete yet
pending = {} # io => bytes of responses not written yet
stop = false
%w[INT TERM].each { |sig| trap(sig) { stop = true } }
deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + opts[:seconds]
puts "listening on #{opts[:host]}:#{listener.addr[1]}"
$stdout.flush
served = 0

close_conn = lambda do |io|
  selector.deregister(io)
  partial.delete(io)
  pending.delete(io)
  io.close unless io.closed?
end

# Writes what it can; the rest waits for writability.
write_out = lambda do |mon, data|
  io = mon.io
  loop do
    n = io.write_nonblock(data, exception: false)
    if n == :wait_writable
      pending[io] = data
      mon.interests = :w
      return
    end
    return if n == data.bytesize

    data = data.byteslice(n..)
  end
end

until stop || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  selector.select(0.1) do |mon|
    io = mon.io
    if io.equal?(listener)
      loop do
        selector.register(listener.accept_nonblock, :r)
      rescue IO::WaitReadable, Errno::ECONNABORTED
        break
      end
      next
    end
    begin
      if mon.writable?
        data = pending.delete(io)
        mon.interests = :r
        write_out.call(mon, data) if data
        next
      end
      data = io.read_nonblock(16_384, exception: false)
      next if data == :wait_readable
      raise EOFError if data.nil?

      data = partial.delete(io) << data if partial.key?(io)
      n = 0
      pos = 0
      while (i = data.index(TERMINATOR, pos))
        n += 1
        pos = i + 4
      end
      partial[io] = data.byteslice(pos..) if pos < data.bytesize
      if n.positive?
        write_out.call(mon, n == 1 ? RESPONSE : RESPONSE * n)
        served += n
      end
    rescue EOFError, SystemCallError, IOError
      close_conn.call(io)
    end
  end
end

selector.close
listener.close
puts "stats: served=#{served}"
