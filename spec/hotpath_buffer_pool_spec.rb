# frozen_string_literal: true

# The provided-buffer pool's resident memory follows the traffic the ring
# sees, not n_bufs (issue 14, buf_ring.c): few connections keep few buffers
# resident; a burst bigger than what is published parks recvs, grows the
# pool and loses nothing; a quiet second lets it shrink and give the pages
# back, and buffers reused after that carry the new bytes, not zeros.
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  let(:defer_taskrun) { 1 << 13 }
  let(:slow) { ENV["HYPERION_IO_URING_SPEC_UNDER"] == "valgrind" ? 5 : 1 }
  let(:want_min) { 64 }

  def pool_ring
    @ring ||= k.new(queue_depth: 256, n_bufs: 512, buf_size: 4096)
  end

  # n connections accepted through the ring, each with its multishot recv
  # armed: [[client, fd], ...].
  def pool_connections(n)
    l = TCPServer.new("127.0.0.1", 0)
    l.listen(1024)
    (@sockets ||= []) << l
    pool_ring.submit_accept_multishot(l)
    Array.new(n) do
      client = TCPSocket.new("127.0.0.1", l.local_address.ip_port)
      @sockets << client
      fd = accept_through(pool_ring)
      (@fds ||= []) << fd
      pool_ring.submit_recv_multishot(fd)
      [client, fd]
    end
  end

  # A message unique to the connection, the round and each offset in it, so
  # a lost, zeroed or reordered piece shows.
  def message(i, round, bytes)
    Array.new(bytes / 16) { |j| format("%03d:%02d:%08d|", i, round, j) }.join
  end

  # Every client sends its message at once (before the ring reaps any),
  # then the ring receives until every byte came or the deadline passed.
  # Returns what each fd received.
  def burst(conns, round, bytes)
    conns.each_with_index { |(client, _), i| client.write(message(i, round, bytes)) }
    got = Hash.new { |h, fd| h[fd] = +"".b }
    total = conns.size * bytes
    deadline = hp_now + 20 * slow
    while got.each_value.sum(&:bytesize) < total
      raise "burst stalled at #{got.each_value.sum(&:bytesize)} of #{total} bytes: #{pool_ring.stats.inspect}" if hp_now > deadline

      pool_ring.each_completion(timeout_ms: 20, raw: true) do |kind, fd, res, bid, _flags|
        raise "unexpected completion #{[kind, fd, res].inspect}" unless kind == k::OP_RECV && res.positive?

        got[fd] << pool_ring.take_buffer(bid, res)
      end
    end
    got
  end

  def expect_intact(conns, got, round, bytes)
    bad = conns.each_with_index.reject { |(_, fd), i| got[fd] == message(i, round, bytes) }
    expect(bad.map { |(_, fd), i| [i, fd, got[fd].bytesize] }).to eq([])
  end

  it "keeps about as many buffers resident as it publishes for a few connections, not n_bufs" do
    conns = pool_connections(4)
    deadline = hp_now + 30 * slow
    # 1,000 small requests: a ring that published all 512 buffers cycled
    # through every one of them (and kept a page of each resident).
    1000.times do |j|
      client, fd = conns[j % 4]
      client.write("x" * 100)
      expect(recv_through(pool_ring, fd, 100, seconds: deadline - hp_now)).to eq("x" * 100)
    end
    st = pool_ring.stats
    expect(st[:buffers_wanted]).to eq(want_min)
    expect(st[:buffers_published]).to be <= want_min
    expect(st[:buffer_pages_resident]).to be <= want_min + 8
    expect(st[:buffers_in_use]).to eq(0)
  end

  it "takes a burst bigger than it publishes intact, in order, parking recvs and growing" do
    conns = pool_connections(300)
    # 16 KiB each: four 4 KiB buffers per connection, 1,200 in all against
    # 64 published.
    got = burst(conns, 1, 16_384)
    expect_intact(conns, got, 1, 16_384)
    st = pool_ring.stats
    expect(st[:enobufs]).to be > 0
    expect(st[:buffers_wanted]).to be > want_min
    expect(st[:buffers_in_use]).to eq(0)
    expect(pool_ring.healthy?).to be(true)
  end

  it "gives the pages back after a quiet second, and reused buffers carry the new bytes" do
    conns = pool_connections(300)
    expect_intact(conns, burst(conns, 1, 16_384), 1, 16_384)
    peak = pool_ring.stats
    expect(peak[:buffers_wanted]).to be > want_min
    # Quiet: each_completion with small timeouts (its reaps and idle wait
    # slices are where the pool looks at the clock), until it shrank.
    deadline = hp_now + 3.5 * slow
    st = nil
    loop do
      pool_ring.each_completion(timeout_ms: 50, raw: true) { |*c| raise "unexpected completion #{c.inspect}" }
      st = pool_ring.stats
      break if st[:buffers_wanted] == want_min && st[:buffer_pages_resident] <= 2 * want_min
      break if hp_now > deadline
    end
    expect(st[:buffers_wanted]).to eq(want_min)
    if (st[:setup_flags] & defer_taskrun).nonzero?
      # Idle buffers published during the burst were taken back from the
      # kernel's ring (only on DEFER_TASKRUN rings: buf_ring.c), and their
      # pages given back. Elsewhere they stay published, the kernel's to
      # write: nothing is on the free stack to give back.
      expect(st[:buffer_releases_to_os]).to be > 0
      expect(st[:buffer_withdrawals]).to be > 0
      expect(st[:buffers_published]).to be <= want_min
      expect(st[:buffer_pages_resident]).to be <= 2 * want_min
      expect(st[:buffer_pages_resident]).to be < peak[:buffer_pages_resident] / 2
    end
    # Buffers given back (zero pages now) and reused carry the new bytes.
    expect_intact(conns, burst(conns, 2, 16_384), 2, 16_384)
    expect_intact(conns, burst(conns, 3, 1_024), 3, 1_024)
    expect(pool_ring.healthy?).to be(true)
  end
end
