#!/usr/bin/env ruby
# frozen_string_literal: true

# Per-call cost of the rings' Ruby methods, in ns per call, beside IO#sysread
# as the floor. One process measures every variant in interleaved segments,
# in the order given by --order (the harness rotates it between rounds), and
# prints JSON:
#
#   ruby bench/percall.rb [--iterations 200000] [--order a,b,c]
#
# Variants (all on 127.0.0.1 TCP sockets):
#   sysread          IO#sysread(100) on a socket with data ready (the floor)
#   read_nonblock    IO#read_nonblock(100, exception: false), same socket
#   ring_read        Ring#read(fd, max: 100), same socket: one io_uring_enter
#   each_completion  HotpathRing#each_completion(raw: true) with exactly one
#                    completion already in the CQ (a send submitted and
#                    flushed, untimed, before each timed call)
#   each_completion_hash  the same without raw: (a Hash per completion)
#   copy_release     copy_buffer(id, 100) + release_buffer(id) of a buffer
#                    the kernel filled with 100 bytes
#   take_buffer      take_buffer(id, 100), the same in one call
#   pair_rt          a 16-byte IO#syswrite on one end of a UNIX socketpair and
#                    IO#sysread(16) on the other: the floor of a round trip
#   ring_rt          the same 16-byte syswrite, answered through the ring: a
#                    multishot recv armed on the other end, each_completion
#                    (raw: true) waiting for its completion, take_buffer
#
# "Data ready" is arranged without timing it: the sender writes a block of
# 100-byte records first, then the timed loop reads exactly that many.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "hyperion/io_uring"
require "socket"
require "json"
require "optparse"

module PerCall
  VARIANTS = %w[sysread read_nonblock ring_read each_completion each_completion_hash copy_release take_buffer
                pair_rt ring_rt].freeze
  RECORD = 100
  BLOCK_RECORDS = 250 # 25 kB written per refill: fits the socket buffers below

  module_function

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)

  # A connected loopback TCP pair with large buffers (root may force them).
  def tcp_pair
    server = TCPServer.new("127.0.0.1", 0)
    a = TCPSocket.new("127.0.0.1", server.addr[1])
    b = server.accept
    server.close
    [a, b].each do |s|
      s.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
      %i[SO_SNDBUF SO_RCVBUF].each { |o| s.setsockopt(Socket::SOL_SOCKET, o, 1 << 20) }
    end
    [a, b]
  end

  def fill(writer, records)
    data = ("x" * (RECORD * records)).b
    off = 0
    off += writer.syswrite(off.zero? ? data : data.byteslice(off..)) while off < data.bytesize
  end

  # The median of per-block means: robust to what a mean over the whole run
  # would include on a shared machine (preemption, another process's burst),
  # while each block still includes this process's own GC work.
  def block_median(samples)
    samples.sort[samples.size / 2]
  end

  # Times +iterations+ reads of RECORD bytes in blocks of BLOCK_RECORDS,
  # refilling (untimed) between blocks. The block gets the reading socket
  # and must return the String. Returns ns per read (median over blocks).
  def time_reads(iterations)
    writer, reader = tcp_pair
    samples = []
    done = 0
    while done < iterations
      n = [BLOCK_RECORDS, iterations - done].min
      fill(writer, n)
      sleep 0.0002 # let loopback's softirq deliver it all
      t0 = now
      i = 0
      while i < n
        s = yield reader
        raise "short read #{s.inspect[0, 40]}" unless s.is_a?(String) && s.bytesize == RECORD

        i += 1
      end
      samples << (now - t0).fdiv(n)
      done += n
    end
    block_median(samples)
  ensure
    writer&.close
    reader&.close
  end

  def sysread(iterations) = time_reads(iterations) { |r| r.sysread(RECORD) }

  def read_nonblock(iterations) = time_reads(iterations) { |r| r.read_nonblock(RECORD, exception: false) }

  def ring_read(iterations)
    ring = Hyperion::IOUring::Ring.new
    time_reads(iterations) do |r|
      ring.read(r.fileno, max: RECORD)
    end
  ensure
    ring&.close
  end

  # Clock overhead of one timed region (two clock_gettime calls), subtracted
  # from the per-call timings below.
  def clock_overhead
    samples = Array.new(20_000) do
      t0 = now
      now - t0
    end
    samples.sort[samples.size / 2]
  end

  def each_completion(iterations, raw: true)
    hr = Hyperion::IOUring::HotpathRing.new(queue_depth: 256, n_bufs: 16, buf_size: 256)
    a, b = tcp_pair
    fd = a.fileno
    msg = "x"
    yielded = 0
    blk = raw ? proc { |_op, _fd, _res, _bid, _fl| yielded += 1 } : proc { |_c| yielded += 1 }
    overhead = clock_overhead
    waits0 = hr.stats[:waits]
    samples = Array.new(iterations)
    i = 0
    while i < iterations
      hr.submit_send(fd, msg)
      hr.flush
      t0 = now
      raw ? hr.each_completion(raw: true, &blk) : hr.each_completion(&blk)
      samples[i] = now - t0
      i += 1
      b.read_nonblock(65_536, exception: false) if (i % 4096).zero?
    end
    raise "each_completion yielded #{yielded} for #{iterations} sends" unless yielded == iterations

    waits = hr.stats[:waits] - waits0
    samples.sort!
    # The median is robust to the GC runs and interrupts that a mean would
    # include; the mean is reported too.
    { ns: samples[iterations / 2] - overhead, mean_ns: samples.sum.fdiv(iterations) - overhead,
      waits_per_call: waits.fdiv(iterations), clock_ns: overhead }
  ensure
    hr&.close
    a&.close
    b&.close
  end

  def each_completion_hash(iterations) = each_completion(iterations, raw: false)

  # Held buffers of exactly RECORD bytes each: a multishot recv into a
  # buffer ring of RECORD-byte buffers, fed with +count+ records at once.
  def held_buffers(hr, writer, count)
    ids = []
    fill(writer, count)
    deadline = now + 5_000_000_000
    while ids.size < count
      hr.each_completion(raw: true, timeout_ms: 100) do |op, _fd, res, bid, _fl|
        next unless op == Hyperion::IOUring::HotpathRing::OP_RECV
        raise "recv failed: #{res}" if res <= 0

        if res == RECORD then ids << bid
        else hr.release_buffer(bid) # a short record: not part of the sample
        end
      end
      raise "no buffers after 5 s (#{ids.size}/#{count})" if now > deadline
    end
    ids
  end

  def buffer_bench(iterations, batch: 256)
    hr = Hyperion::IOUring::HotpathRing.new(queue_depth: 256, n_bufs: batch * 4, buf_size: RECORD)
    writer, reader = tcp_pair
    hr.submit_recv_multishot(reader.fileno)
    samples = []
    done = 0
    while done < iterations
      ids = held_buffers(hr, writer, batch)
      t0 = now
      yield hr, ids
      samples << (now - t0).fdiv(ids.size)
      done += ids.size
    end
    block_median(samples)
  ensure
    hr&.cancel(reader.fileno) if reader && hr && !hr.closed?
    hr&.close
    writer&.close
    reader&.close
  end

  def copy_release(iterations)
    buffer_bench(iterations) do |hr, ids|
      i = 0
      n = ids.size
      while i < n
        id = ids[i]
        hr.copy_buffer(id, RECORD)
        hr.release_buffer(id)
        i += 1
      end
    end
  end

  def take_buffer(iterations)
    buffer_bench(iterations) do |hr, ids|
      i = 0
      n = ids.size
      while i < n
        hr.take_buffer(ids[i], RECORD)
        i += 1
      end
    end
  end

  MSG16 = ("x" * 16).b.freeze
  RT_BLOCK = 250

  # Round trips in blocks of RT_BLOCK on a UNIX socketpair (a, b): the
  # block writes 16 bytes on a and returns what arrived on b. ns per round
  # trip (median over blocks).
  def time_round_trips(iterations, a, b)
    samples = []
    done = 0
    while done < iterations
      n = [RT_BLOCK, iterations - done].min
      t0 = now
      i = 0
      while i < n
        s = yield a, b
        raise "short read #{s.inspect[0, 40]}" unless s.bytesize == 16

        i += 1
      end
      samples << (now - t0).fdiv(n)
      done += n
    end
    block_median(samples)
  end

  def pair_rt(iterations)
    a, b = UNIXSocket.pair
    time_round_trips(iterations, a, b) do
      a.syswrite(MSG16)
      b.sysread(16)
    end
  ensure
    a&.close
    b&.close
  end

  def ring_rt(iterations)
    hr = Hyperion::IOUring::HotpathRing.new(queue_depth: 64, n_bufs: 64, buf_size: 256)
    a, b = UNIXSocket.pair
    got = nil
    blk = proc do |op, _fd, res, bid, _fl|
      next unless op == Hyperion::IOUring::HotpathRing::OP_RECV
      raise "recv failed: #{res}" unless res.positive?

      got = hr.take_buffer(bid, res)
    end
    hr.submit_recv_multishot(b.fileno)
    time_round_trips(iterations, a, b) do
      a.syswrite(MSG16)
      got = nil
      hr.each_completion(raw: true, timeout_ms: 1000, &blk) until got
      got
    end
  ensure
    hr&.cancel(b.fileno) if b && hr && !hr.closed?
    hr&.close
    a&.close
    b&.close
  end

  # The bare loop of copy_release (array read, counter): what the
  # copy_release figure includes beyond the two calls.
  def loop_overhead
    ids = Array.new(256) { |i| i }
    t0 = now
    200.times do
      i = 0
      while i < 256
        _id = ids[i]
        i += 1
      end
    end
    (now - t0).fdiv(256 * 200)
  end

  def measure(name, iterations)
    r = send(name, iterations)
    r.is_a?(Hash) ? r : { ns: r }
  end

  # Every variant once to warm up, then SEGMENTS passes over all of them
  # (iterations / SEGMENTS calls each), in +order+. A shared VM's speed
  # drifts over seconds (per-call times here move between two levels about
  # 2x apart): interleaving puts every variant in every phase, and each
  # figure is the median over its segments.
  SEGMENTS = 5

  def run_all(order, iterations)
    per = [iterations / SEGMENTS, 1000].max
    order.each { |name| measure(name, per / 4) }
    segs = Array.new(SEGMENTS) { order.to_h { |name| [name, measure(name, per)] } }
    order.to_h do |name|
      runs = segs.map { |seg| seg[name] }
      keys = runs.first.keys
      [name, keys.to_h { |k| [k, median(runs.map { |r| r[k] })] }.merge(segments: runs.map { |r| r[:ns].round })]
    end
  end

  def median(values)
    v = values.sort
    v.size.odd? ? v[v.size / 2] : (v[v.size / 2 - 1] + v[v.size / 2]) / 2.0
  end
end

opts = { iterations: 200_000, order: PerCall::VARIANTS }
OptionParser.new do |o|
  o.on("--iterations N", Integer) { |v| opts[:iterations] = v }
  o.on("--order LIST", Array) { |v| opts[:order] = v }
end.parse!(ARGV)
unknown = opts[:order] - PerCall::VARIANTS
abort "unknown variants: #{unknown.join(', ')}" unless unknown.empty?

results = PerCall.run_all(opts[:order], opts[:iterations])
results["loop_overhead"] = { ns: PerCall.loop_overhead }
puts JSON.generate(results)
