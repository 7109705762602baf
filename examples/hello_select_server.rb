#!/usr/bin/env ruby
# frozen_string_literal: true

# The baseline for examples/hello_server.rb: the same HTTP/1.1 keep-alive
# "Hello World", served by a plain IO.select loop with accept_nonblock,
# read_nonblock and syswrite, as a Ruby server does without io_uring.
#
#   ruby examples/hello_select_server.rb [--port 9292] [--seconds 30]
require "socket"
require "optparse"

opts = { port: 9292, seconds: 30.0, host: "127.0.0.1" }
OptionParser.new do |o|
  o.on("--port N", Integer) { |v| opts[:port] = v }
  o.on("--seconds S", Float) { |v| opts[:seconds] = v }
end.parse!(ARGV)

BODY = "Hello World\n"
RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: #{BODY.bytesize}\r\n\r\n#{BODY}".b.freeze
TERMINATOR = "\r\n\r\n"

listener = TCPServer.new(opts[:host], opts[:port])
listener.listen(1024)
clients = []
partial = {}
stop = false
%w[INT TERM].each { |sig| trap(sig) { stop = true } }
deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + opts[:seconds]
puts "listening on #{opts[:host]}:#{listener.addr[1]}"
$stdout.flush
served = 0

until stop || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  readable, = IO.select([listener, *clients], nil, nil, 0.1)
  next unless readable

  readable.each do |io|
    if io.equal?(listener)
      loop do
        clients << listener.accept_nonblock
      rescue IO::WaitReadable, Errno::ECONNABORTED
        break
      end
      next
    end
    begin
      data = io.read_nonblock(16_384)
      data = partial.delete(io) << data if partial.key?(io)
      n = 0
      pos = 0
      while (i = data.index(TERMINATOR, pos))
        n += 1
        pos = i + 4
      end
      partial[io] = data.byteslice(pos..) if pos < data.bytesize
      if n.positive?
        io.syswrite(n == 1 ? RESPONSE : RESPONSE * n)
        served += n
      end
    rescue IO::WaitReadable
      next
    rescue EOFError, SystemCallError, IOError
      clients.delete(io)
      partial.delete(io)
      io.close unless io.closed?
    end
  end
end

clients.each(&:close)
listener.close
puts "stats: served=#{served}"
