# frozen_string_literal: true

# HotpathRing.new(send_completions: :failures): a send that went out in
# full yields nothing, a failed one still yields its OP_SEND with -errno, and
# the bytes arrive in order either way; :all (the default, upstream's
# contract) yields every one. Real loopback sockets.
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  def failures_ring
    @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096, send_completions: :failures)
  end

  it "defaults to :all and yields one OP_SEND per call" do
    expect(ring.send_completions).to eq(:all)
    _l, client, fd = connection
    3.times { |i| ring.submit_send(fd, "m#{i}") }
    ring.submit_send(fd, "")
    got = collect_completions(ring) { |cs| cs.size >= 4 }
    # The empty send completes at once (it queues nothing), the others with
    # their lengths.
    expect(got.map { |c| [c[:op_kind], c[:result]] }.sort).to eq([[k::OP_SEND, 0], [k::OP_SEND, 2], [k::OP_SEND, 2], [k::OP_SEND, 2]])
    expect(read_fully(client, 6, hp_now + 5)).to eq("m0m1m2")
  end

  it "with :failures yields nothing for sends that went out, and the bytes arrive in order" do
    failures_ring
    expect(ring.send_completions).to eq(:failures)
    _l, client, fd = connection
    payloads = Array.new(50) { |i| "payload #{i};" * (i + 1) }
    payloads.each { |p| ring.submit_send(fd, p) }
    ring.submit_send(fd, "")
    expected = payloads.join
    got = []
    data = +"".b
    deadline = hp_now + 5
    while data.bytesize < expected.bytesize && hp_now < deadline
      ring.each_completion(timeout_ms: 10) { |c| got << c }
      data << client.read_nonblock(65_536, exception: false).then { |r| r.is_a?(String) ? r : "" }
    end
    expect(data).to eq(expected)
    ring.each_completion(timeout_ms: 50) { |c| got << c }
    expect(got).to be_empty
    expect(ring.stats).to include(sends: 50, send_bytes: expected.bytesize, inflight: 1, queued_send_bytes: 0)
  end

  it "with :failures still yields a failed send's OP_SEND with -errno" do
    failures_ring
    l = TCPServer.new("127.0.0.1", 0).tap { |s| s.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096) }
    _l, client, fd = connection(ring, listener: l)
    client.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
    # Fill the socket so a send waits in the kernel, then reset the peer.
    ring.submit_send(fd, "x" * (1 << 20))
    ring.submit_send(fd, "y" * 10)
    ring.flush
    reset_peer(client)
    got = collect_completions(ring) { |cs| cs.count { |c| c[:op_kind] == k::OP_SEND } >= 2 }
    sends = got.select { |c| c[:op_kind] == k::OP_SEND }
    expect(sends.map { |c| c[:fd] }).to eq([fd, fd])
    expect(sends.map { |c| c[:result] }).to all(be_negative)
  end

  it "with :failures reports a cancelled send" do
    failures_ring
    l = TCPServer.new("127.0.0.1", 0).tap { |s| s.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096) }
    _l, client, fd = connection(ring, listener: l)
    client.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
    16.times { ring.submit_send(fd, "x" * 65_536) }
    ring.flush
    ring.cancel(fd)
    got = collect_completions(ring) { |cs| cs.any? { |c| c[:op_kind] == k::OP_SEND && c[:result] == ecanceled } }
    # The queued one never started: -ECANCELED. The big one failed too,
    # unless it had gone out in full before the cancel reached it.
    results = got.select { |c| c[:op_kind] == k::OP_SEND }.map { |c| c[:result] }
    expect(results.last).to eq(ecanceled)
    expect(results).to all(be_negative)
  end

  it "refuses other values" do
    expect { k.new(send_completions: :some) }.to raise_error(ArgumentError, /send_completions must be :all or :failures/)
    expect { k.new(send_completions: "all") }.to raise_error(ArgumentError)
    @ring = k.new(queue_depth: 8, n_bufs: 8, buf_size: 512, send_completions: :all)
    expect(ring.send_completions).to eq(:all)
  end
end
