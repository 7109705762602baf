# frozen_string_literal: true

# HotpathRing#submit_close(fd, timeout:) and HotpathRing.new(close_timeout:):
# a close held back by sends to a client that never reads is made at the
# deadline, the sends still queued then cancelled (-ECANCELED), even when
# Ruby only waits on the ring; stats[:close_timeouts]. Real loopback sockets
# (issue 11: with 10 MiB queued to a stalled peer the fd stayed open for
# ever).
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  let(:kib64) { "d" * 65_536 }
  let(:slow) { ENV["HYPERION_IO_URING_SPEC_UNDER"] == "valgrind" ? 4 : 1 }

  def fd_open?(fd)
    File.readlink("/proc/self/fd/#{fd}")
    true
  rescue Errno::ENOENT
    false
  end

  # A connection whose client never reads (small buffers both ends), with
  # +n+ sends of 64 KiB queued on it: most stay queued. Returns the fd.
  def stalled_connection(n: 16, r: ring)
    fill(stalled_socket(r), n, r)
  end

  # The connection alone (open every connection of an example before
  # sending: accept_through wants the accept to be the only completion).
  def stalled_socket(r = ring)
    listener = TCPServer.new("127.0.0.1", 0)
    listener.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096)
    _, client, fd = connection(r, listener: listener)
    client.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
    fd
  end

  def fill(fd, n, r = ring)
    n.times { r.submit_send(fd, kib64) }
    r.flush
    fd
  end

  # Waits on the ring (and does nothing else) until the fd is closed or
  # +seconds+ pass; returns [completions, seconds it took or nil].
  def wait_for_close(fd, seconds, r: ring, timeout_ms: 50)
    t0 = hp_now
    got = []
    while hp_now - t0 < seconds
      r.each_completion(timeout_ms: timeout_ms) { |c| got << c }
      return [got, hp_now - t0] unless fd_open?(fd)
    end
    [got, nil]
  end

  it "cancels the sends still queued at the deadline and closes the fd" do
    fd = stalled_connection
    client = @sockets.last
    ring.submit_close(forget_fd(fd), timeout: 0.5)
    early, = wait_for_close(fd, 0.25)
    expect(fd_open?(fd)).to be(true) # before the deadline: still waiting for the sends
    got, took = wait_for_close(fd, 5 * slow)
    expect(took).not_to be_nil, "fd #{fd} still open 5 s after a 0.5 s deadline"
    got = early + got + completions_within(ring, 0.1)
    sends = got.select { |c| c[:op_kind] == k::OP_SEND }
    expect(sends.size).to eq(16)
    results = sends.map { |c| c[:result] }
    # Those the kernel's buffers took went out in full; the rest, in order
    # after them, were cancelled.
    expect(results.drop_while { |r| r == 65_536 }).to all(eq(ecanceled))
    expect(results.count(ecanceled)).to be >= 10
    expect(ring.stats).to include(close_timeouts: 1, queued_send_bytes: 0, closes: 1)
    expect(ring.queued_send_bytes(fd)).to eq(0)
    expect(client.wait_readable(2)).to be_truthy # the client sees the close
  end

  it "fires inside one long each_completion with nothing else happening on the ring" do
    fd = stalled_connection(n: 2)
    ring.submit_close(forget_fd(fd), timeout: 0.3)
    t0 = hp_now
    got = []
    # Both sends' completions (one cancelled at least) end this one wait.
    ring.each_completion(min_complete: 2, timeout_ms: 10_000 * slow) { |c| got << c }
    took = hp_now - t0
    expect(took).to be_between(0.25, 3 * slow)
    expect(got.map { |c| c[:op_kind] }).to eq([k::OP_SEND, k::OP_SEND])
    expect(got.last[:result]).to eq(ecanceled)
    wait_for_close(fd, 2)
    expect(fd_open?(fd)).to be(false)
    expect(ring.stats[:close_timeouts]).to eq(1)
  end

  it "takes the ring's close_timeout when submit_close has no timeout:" do
    @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096, close_timeout: 0.3)
    fd = stalled_connection
    ring.submit_close(forget_fd(fd))
    _, took = wait_for_close(fd, 5 * slow)
    expect(took).to be_between(0.25, 5 * slow)
    expect(ring.stats[:close_timeouts]).to eq(1)
  end

  it "defaults to 60 s, and nil waits for ever" do
    expect(k::DEFAULT_CLOSE_TIMEOUT).to eq(60)
    @rings = [k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096),
              k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096, close_timeout: nil)]
    fds = @rings.map { |r| stalled_connection(r: r) } << stalled_connection
    @rings[0].submit_close(forget_fd(fds[0]))            # the default: 60 s
    @rings[1].submit_close(forget_fd(fds[1]))            # the ring's nil
    ring.submit_close(forget_fd(fds[2]), timeout: nil)   # an explicit nil
    all = @rings + [ring]
    t_end = hp_now + 1.0
    all.each { |r| r.each_completion(timeout_ms: 20) { |_| nil } } while hp_now < t_end
    all.each { |r| expect(r.stats[:close_timeouts]).to eq(0) }
    fds.each { |fd| expect(fd_open?(fd)).to be(true) }
    # Closing the rings (after the example) still closes them.
  end

  it "closes as soon as the sends end when the client reads before the deadline" do
    fd = stalled_connection(n: 8)
    client = @sockets.last
    ring.submit_close(forget_fd(fd), timeout: 30)
    reader = Thread.new { read_fully(client, 8 * 65_536, hp_now + 20) }
    got, took = wait_for_close(fd, 20)
    expect(took).not_to be_nil
    expect(reader.value.bytesize).to eq(8 * 65_536)
    got += completions_within(ring, 0.05)
    expect(got.map { |c| c[:result] }).to eq([65_536] * 8)
    expect(ring.stats[:close_timeouts]).to eq(0)
    # The deadline went with the close: an idle wait is one wait, not
    # wake-ups at a stale deadline (under valgrind, waits are 10 ms slices;
    # with a multishot accept armed, the closed-listener watch slices waits
    # at 100 ms, so 300 ms is at most 4 waits, against 30 at a 10 ms tick).
    waits = ring.stats[:waits]
    ring.each_completion(timeout_ms: 300) { |_| nil }
    expect(ring.stats[:waits] - waits).to be <= (slow > 1 ? 60 : 4)
  end

  it "meets several deadlines in their order, whatever order they were given in" do
    fds = Array.new(3) { stalled_socket }
    fds.zip([1.2, 0.3, 0.7]) do |fd, t|
      fill(fd, 4)
      ring.submit_close(forget_fd(fd), timeout: t * slow)
    end
    closed_at = {}
    t0 = hp_now
    while closed_at.size < 3 && hp_now - t0 < 10 * slow
      ring.each_completion(timeout_ms: 20) { |_| nil }
      fds.each { |fd| closed_at[fd] ||= hp_now - t0 unless fd_open?(fd) }
    end
    expect(closed_at.size).to eq(3)
    expect(closed_at.sort_by(&:last).map(&:first)).to eq([fds[1], fds[2], fds[0]])
    expect(closed_at[fds[1]]).to be >= 0.25 * slow
    expect(ring.stats[:close_timeouts]).to eq(3)
  end

  it "timeout: 0 cancels the sends at the next wait and closes" do
    fd = stalled_connection
    ring.submit_close(forget_fd(fd), timeout: 0)
    _, took = wait_for_close(fd, 3 * slow)
    expect(took).not_to be_nil
    expect(ring.stats).to include(close_timeouts: 1, queued_send_bytes: 0)
  end

  it "forgets the deadline of a number closed behind the ring's back and reused" do
    fd = stalled_connection(n: 4)
    ring.submit_close(fd, timeout: 0.3)
    other = TCPServer.new("127.0.0.1", 0)
    other.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096)
    @sockets << other
    _new_client, peer = reuse_number_elsewhere(fd, other)
    peer_fd = peer.fileno
    expect(peer_fd).not_to eq(fd)
    # The new socket on the old number (the client side) gets sends of its own.
    ring.submit_send(fd, kib64)
    got = completions_within(ring, 0.8 * slow)
    # The old connection's close is reported failed (-EBADF), its sends
    # cancelled; the new send is not touched by the old deadline.
    expect(got).to include(a_hash_including(op_kind: k::OP_CLOSE, fd: fd, result: -Errno::EBADF::Errno))
    expect(ring.stats[:close_timeouts]).to eq(0)
    expect(ring.queued_send_bytes(fd)).to eq(65_536).or eq(0)
    ring.cancel(fd)
    completions_within(ring, 0.1)
  end

  it "checks timeout: and close_timeout:" do
    _, _, fd = connection
    expect { ring.submit_close(fd, timeout: -1) }.to raise_error(ArgumentError, /timeout must be >= 0/)
    expect { ring.submit_close(fd, timeout: "1") }.to raise_error(TypeError, /timeout must be Numeric or nil/)
    expect { ring.submit_close(fd, timeoot: 1) }.to raise_error(ArgumentError, /unknown keyword: :timeoot/)
    expect { k.new(close_timeout: -0.5) }.to raise_error(ArgumentError, /timeout must be >= 0/)
    expect { k.new(close_timeout: :soon) }.to raise_error(TypeError)
  end

  it "ring.close closes a fd whose close waits with a deadline" do
    r = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096)
    fd = stalled_connection(r: r)
    r.submit_close(forget_fd(fd), timeout: 30)
    r.close
    expect(fd_open?(fd)).to be(false)
  end
end
