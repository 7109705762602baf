#!/usr/bin/env ruby
# frozen_string_literal: true

# A minimal HTTP/1.1 keep-alive "Hello World" server on one HotpathRing:
# multishot accept, multishot recv into the kernel's buffer ring, and
# submit_send, all reaped in batches by each_completion(raw: true).
#
#   ruby examples/hello_server.rb [--port 9292] [--seconds 30] [--batch N|auto] [--batch-wait-us U]
#                                 [--high-water BYTES] [--close-timeout S] [--body-size BYTES]
#                                 [--send-completions failures|all] [--sendfile-min BYTES]
#
# --send-completions: which send completions the ring yields (default
# failures: a response that went out in full ends silently, so each request
# costs one completion, its recv; "all" yields one per response as well,
# upstream's default).
#
# --batch/--batch-wait-us: each_completion(min_complete: N, min_wait_us: U),
# a kernel batch wait (Linux 6.12+): wait up to U microseconds for N
# completions, then take what is there. --batch auto (the default) asks for
# as many as the last call brought (at most 64), so an idle connection is
# answered at once and a busy ring reaps in bigger batches (fewer
# io_uring_enter calls, less CPU per request); --batch 1 takes the first
# completion at once (no batching). Kernels without batch waits take the
# first completion either way.
#
# Slow clients: a client that sends requests and never reads its responses
# would make the ring hold copies of them without end. The ring refuses past
# send_buffer_limit (the ring) and connection_send_limit (one fd) with
# SendBufferFull; before that, this server keeps its own per-connection
# high-water mark (--high-water BYTES, default 1 MiB): while
# ring.queued_send_bytes(fd) is above it, the connection's requests are not
# answered but dropped with the connection (submit_close with a short
# timeout: the responses still queued are cancelled). A server that would
# rather wait can stop reading instead (cancel the recv, re-arm it once the
# bytes drain). --close-timeout S bounds how long any close waits for its
# responses to go out (close_timeout:). A request head that grows past
# 64 KiB without ending drops its client too.
#
# --body-size BYTES: the body is BYTES of "a".."z" repeated (what the bench's
# bench/conn_client.c -b checks, byte for byte) instead of "Hello World\n".
# The response is one frozen String, sent as it is for every request.
#
# --sendfile-min BYTES (default 65536; 0: off): responses of at least BYTES
# go out with sendfile(2) from a memfd copy of the frozen String, made once
# (HotpathRing.new(sendfile_min:)): the kernel sends the copy's pages
# instead of copying the body into socket buffers for every response.
#
# Idle connections cost this server no Ruby object: a connection is its fd
# number in the ring (multishot recv armed), and the only per-connection Ruby
# state is the tail of a request split across reads, kept only while one is.
# It holds as many connections as the hard RLIMIT_NOFILE allows (the soft
# limit is raised to it).
#
# It prints "listening on 127.0.0.1:PORT" when ready and the ring's stats when
# it stops (after --seconds, or on INT/TERM). Loopback only.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "hyperion/io_uring"
require "socket"
require "optparse"

opts = { port: 9292, seconds: 30.0, host: "127.0.0.1", batch: "auto", batch_wait_us: 50, high_water: 1 << 20,
         close_timeout: 10.0, send_completions: :failures, body_size: nil, sendfile_min: 65_536 }
OptionParser.new do |o|
  o.on("--port N", Integer) { |v| opts[:port] = v }
  o.on("--seconds S", Float) { |v| opts[:seconds] = v }
  o.on("--batch N") { |v| opts[:batch] = v == "auto" ? v : Integer(v) }
  o.on("--batch-wait-us U", Integer) { |v| opts[:batch_wait_us] = v }
  o.on("--high-water BYTES", Integer) { |v| opts[:high_water] = v }
  o.on("--close-timeout S", Float) { |v| opts[:close_timeout] = v }
  o.on("--send-completions MODE", %w[failures all]) { |v| opts[:send_completions] = v.to_sym }
  o.on("--body-size BYTES", Integer) { |v| opts[:body_size] = v }
  o.on("--sendfile-min BYTES", Integer) { |v| opts[:sendfile_min] = v }
end.parse!(ARGV)

unless Hyperion::IOUring.hotpath_supported?
  warn "hot path unsupported here: #{Hyperion::IOUring.hotpath_unsupported_reason}"
  exit 2
end

soft, hard = Process.getrlimit(:NOFILE)
Process.setrlimit(:NOFILE, hard) if soft < hard

BODY = opts[:body_size] ? ("abcdefghijklmnopqrstuvwxyz" * (opts[:body_size] / 26 + 1))[0, opts[:body_size]] : "Hello World\n"
RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: #{BODY.bytesize}\r\n\r\n#{BODY}".b.freeze
MAX_HEAD = 64 << 10 # bytes of an unfinished request head kept for a client
TERMINATOR = "\r\n\r\n".b.freeze # binary, like what take_buffer returns: no encoding negotiation per search
HR = Hyperion::IOUring::HotpathRing

listener = TCPServer.new(opts[:host], opts[:port])
listener.listen(1024)
# A response bigger than the mark would never be sent: the mark is at least
# two of them.
high_water = [opts[:high_water], 2 * RESPONSE.bytesize].max
ring = HR.new(close_timeout: opts[:close_timeout], send_completions: opts[:send_completions],
              sendfile_min: opts[:sendfile_min].positive? ? opts[:sendfile_min] : nil)
ring.submit_accept_multishot(listener)
dropped = 0
partial = {} # fd => bytes of a request not complete yet
rbuf = String.new(capacity: 16 << 10) # what each recv is read into
stop = false
%w[INT TERM].each { |sig| trap(sig) { stop = true } }
auto_batch = opts[:batch] == "auto"
batch = auto_batch ? 1 : opts[:batch]
batch_wait_us = opts[:batch_wait_us]
deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + opts[:seconds]
puts "listening on #{opts[:host]}:#{listener.addr[1]}"
$stdout.flush

# submit_close cancels the fd's recv, lets the responses already queued on it
# go out, then closes it through the ring with the next each_completion (no
# syscall of its own). IOError: a close of it is already pending (EOF and a
# failed send can both end a connection in one batch).
close_conn = lambda do |fd, timeout: nil|
  partial.delete(fd)
  timeout ? ring.submit_close(fd, timeout: timeout) : ring.submit_close(fd)
rescue IOError
  nil
end

# The loop runs once per request, so what it does per request is written
# out in it rather than in helpers: a lambda call costs more than the work.
until stop || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  n = ring.each_completion(raw: true, timeout_ms: 100, min_complete: batch, min_wait_us: batch_wait_us) do |op, fd, res, buf_id, _flags|
    if op == HR::OP_RECV && res.positive?
      # Into the same String each time: no allocation per request.
      data = ring.take_buffer(buf_id, res, rbuf)
      # Prepend the tail of a request split across reads, if any.
      if !partial.empty? && (head = partial.delete(fd))
        data = head << data
      end
      # Count the complete requests; keep the tail of an incomplete one.
      count = 0
      pos = 0
      len = data.bytesize
      while (i = data.index(TERMINATOR, pos))
        count += 1
        pos = i + 4
        break if pos == len
      end
      if pos < len
        # A head that never ends is not a request: drop its sender rather
        # than keep its bytes.
        if len - pos > MAX_HEAD
          close_conn.call(fd, timeout: 0)
          next
        end
        partial[fd] = data.byteslice(pos..)
      end
      next if count.zero?

      begin
        # A client with more than the high-water mark still queued is not
        # reading what it asked for: drop it (its queued responses are
        # cancelled at once) rather than queue more. Checked before the
        # send, so a burst of pipelined requests from a client that reads
        # is answered whole. SendBufferFull: the ring's own limits.
        if ring.queued_send_bytes(fd) > high_water
          dropped += 1
          close_conn.call(fd, timeout: 0)
        else
          ring.submit_send(fd, count == 1 ? RESPONSE : RESPONSE * count)
        end
      rescue Hyperion::IOUring::SendBufferFull
        dropped += 1
        close_conn.call(fd, timeout: 0)
      rescue IOError
        # Dropped earlier in this batch, its close pending: the request goes
        # with it, and so does any tail kept above (the fd number is reused).
        partial.delete(fd)
      end
    else
      case op
      when HR::OP_ACCEPT
        ring.submit_recv_multishot(res) if res >= 0
      when HR::OP_RECV
        # -ECANCELED: the recv's end after a close (a client dropped above);
        # a tail a later recv of the same batch kept must not greet the
        # next connection that gets this fd number.
        if res == -Errno::ECANCELED::Errno
          partial.delete(fd)
        else
          close_conn.call(fd) # EOF or error
        end
      when HR::OP_SEND
        close_conn.call(fd) if res.negative? && res != -Errno::ECANCELED::Errno
      when HR::OP_CLOSE
        warn "close(#{fd}) failed: #{SystemCallError.new(nil, -res).message}"
      end
    end
  end
  batch = n.clamp(1, 64) if auto_batch
end

stats = ring.stats
ring.close
listener.close
puts "stats: #{stats.map { |k, v| "#{k}=#{v}" }.join(' ')} dropped_slow_clients=#{dropped}"
