#!/usr/bin/env ruby
# frozen_string_literal: true

# The baseline for examples/hello_server.rb: the same HTTP/1.1 keep-alive
# "Hello World", served by a plain IO.select loop with accept_nonblock,
# read_nonblock and write_nonblock, as a Ruby server does without io_uring.
#
#   ruby examples/hello_select_server.rb [--port 9292] [--seconds 30] [--body-size BYTES]
#
# --body-size BYTES: the body is BYTES of "a".."z" repeated, as in
# examples/hello_server.rb. What write_nonblock cannot write at once waits
# for writability (IO.select's write set); the connection's requests are
# not read meanwhile.
require "socket"
require "optparse"

opts = { port: 9292, seconds: 30.0, host: "127.0.0.1", body_size: nil }
OptionParser.new do |o|
  o.on("--port N", Integer) { |v| opts[:port] = v }
  o.on("--seconds S", Float) { |v| opts[:seconds] = v }
  o.on("--body-size BYTES", Integer) { |v| opts[:body_size] = v }
end.parse!(ARGV)

BODY = opts[:body_size] ? ("abcdefghijklmnopqrstuvwxyz" * (opts[:body_size] / 26 + 1))[0, opts[:body_size]] : "Hello World\n"
RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: #{BODY.bytesize}\r\n\r\n#{BODY}".b.freeze
TERMINATOR = "\r\n\r\n"

listener = TCPServer.new(opts[:host], opts[:port])
listener.listen(1024)
clients = []
partial = {}
pending = {} # io => bytes of responses not written yet
stop = false
%w[INT TERM].each { |sig| trap(sig) { stop = true } }
deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + opts[:seconds]
puts "listening on #{opts[:host]}:#{listener.addr[1]}"
$stdout.flush
served = 0

close_conn = lambda do |io|
  clients.delete(io)
  partial.delete(io)
  pending.delete(io)
  io.close unless io.closed?
end

# Writes what the socket takes; the rest waits in pending for writability.
write_out = lambda do |io, data|
  loop do
    n = io.write_nonblock(data, exception: false)
    if n == :wait_writable
      pending[io] = data
      return
    end
    return if n == data.bytesize

    data = data.byteslice(n..)
  end
end

until stop || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  readers = pending.empty? ? [listener, *clients] : [listener, *clients.reject { |c| pending.key?(c) }]
  readable, writable, = IO.select(readers, pending.empty? ? nil : pending.keys, nil, 0.1)
  next unless readable

  writable&.each do |io|
    write_out.call(io, pending.delete(io))
  rescue SystemCallError, IOError
    close_conn.call(io)
  end
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
        write_out.call(io, n == 1 ? RESPONSE : RESPONSE * n)
        served += n
      end
    rescue IO::WaitReadable
      next
    rescue EOFError, SystemCallError, IOError
      close_conn.call(io)
    end
  end
end

clients.each(&:close)
listener.close
puts "stats: served=#{served}"
