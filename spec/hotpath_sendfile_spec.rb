# frozen_string_literal: true

require "weakref"
require "zlib"

# HotpathRing.new(sendfile_min:): frozen Strings of at least that size go out
# with sendfile(2) from a sealed memfd copy of the String, made once per
# String and cached by the ring; what the socket does not take at once waits
# for an IORING_OP_POLL_ADD. Real loopback sockets, every byte checked;
# cancels, close deadlines, resets and ring closes with such a send waiting.
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  let(:slow) { ENV["HYPERION_IO_URING_SPEC_UNDER"] == "valgrind" ? 4 : 1 }

  def file_ring(**opts)
    @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096, sendfile_min: 4096, **opts)
    skip "no memfd_create in this C library" unless @ring.sendfile_min
    @ring
  end


  def sends(got) = got.select { |c| c[:op_kind] == k::OP_SEND }

  it "is off unless asked for, and takes nil or a positive Integer" do
    expect(ring.sendfile_min).to be_nil
    expect { k.new(sendfile_min: 0) }.to raise_error(ArgumentError, /sendfile_min/)
    expect { k.new(sendfile_min: "1") }.to raise_error(TypeError, /sendfile_min/)
    @rings = [k.new(queue_depth: 8, n_bufs: 8, buf_size: 512, sendfile_min: nil)]
    expect(@rings[0].sendfile_min).to be_nil
    expect(ring.stats).to include(file_sends: 0, body_files: 0, body_file_bytes: 0)
  end

  it "sends large frozen Strings from one memfd copy each, in order with the others, one completion per call" do
    file_ring
    pinned = k.pinned_strings
    _l, client, fd = connection
    big = ("0123456789abcdef" * 8192).freeze # 128 KiB
    other = ("x" * 300_000).freeze
    calls = [big, "unfrozen #{1}", big, ("s" * 2000).freeze, other, big, "tail"]
    calls.each { |b| ring.submit_send(fd, b) }
    expected = calls.join
    data, got = drain_sent(client, expected.bytesize, ring)
    got += collect_completions(ring) { |cs| sends(got + cs).size >= calls.size }
    expect(data).to eq(expected)
    expect(sends(got).map { |c| c[:result] }).to eq(calls.map(&:bytesize))
    st = ring.stats
    expect(st).to include(file_sends: 4, body_files: 2, sends: calls.size, queued_send_bytes: 0, inflight: 1,
                          body_file_bytes: big.bytesize + other.bytesize)
    # The ring keeps the two bodies (and their Strings) for the next sends.
    expect(k.pinned_strings).to eq(pinned + 2)
    ring.close
    expect(k.pinned_strings).to eq(pinned)
  end

  it "continues a big send to a slow reader until it went out in full, through GC.compact" do
    file_ring(send_completions: :failures)
    skip "GC.compact unavailable" unless GC.respond_to?(:compact)
    client, fd = stalled
    bodies = Array.new(3) { |i| (format("%08d:", i) * 116_509).freeze } # about 1 MiB each
    calls = [bodies[0], bodies[1], bodies[0], bodies[2], bodies[1]]
    crc = calls.reduce(0) { |acc, b| Zlib.crc32(b, acc) }
    total = calls.sum(&:bytesize)
    calls.each { |b| ring.submit_send(fd, b) }
    ring.flush
    bodies = nil # rubocop:disable Lint/UselessAssignment -- only the ring's pins keep them
    calls = nil # rubocop:disable Lint/UselessAssignment
    3.times do
      GC.compact
      GC.start(full_mark: true, immediate_sweep: true)
      Array.new(2000) { |i| "junk #{i}" * 200 }
    end
    data, got = drain_sent(client, total, ring, seconds: 30)
    expect(Zlib.crc32(data)).to eq(crc)
    expect(got).to be_empty # :failures, and none failed
    st = ring.stats
    expect(st).to include(file_sends: 5, body_files: 3, sends: 5, queued_send_bytes: 0, inflight: 1)
    expect(st[:short_sends]).to be > 0 # the socket took each body in pieces
  end

  it "reports a cancel mid-way as ECANCELED, the sends behind it too, and the client got a prefix" do
    file_ring
    client, fd = stalled
    body = ("abcdefghijklmnopqrstuvwxyz" * 80_660).freeze # about 2 MiB: more than the socket takes
    ring.submit_send(fd, body)
    ring.submit_send(fd, body)
    ring.flush
    ring.each_completion(timeout_ms: 20) { |_| nil }
    expect(ring.stats[:inflight]).to eq(2) # the accept, and the first send's poll
    ring.cancel(fd)
    got = collect_completions(ring) { |cs| sends(cs).size >= 2 }
    expect(sends(got).map { |c| c[:result] }).to eq([ecanceled, ecanceled])
    data = +"".b
    while (chunk = client.read_nonblock(1 << 20, exception: false)).is_a?(String) || client.wait_readable(0.2)
      data << chunk if chunk.is_a?(String)
    end
    expect(data.bytesize).to be_between(1, body.bytesize - 1)
    expect(data).to eq(body.byteslice(0, data.bytesize))
    expect(ring.stats).to include(queued_send_bytes: 0, inflight: 1, sends: 0)
    expect(ring.queued_send_bytes(fd)).to eq(0)
  end

  it "cancels a waiting sendfile at submit_close's deadline and closes the fd" do
    file_ring
    client, fd = stalled
    body = ("0123456789" * 200_000).freeze # 2 MB
    3.times { ring.submit_send(fd, body) }
    ring.submit_close(forget_fd(fd), timeout: 0.3)
    got = []
    t0 = hp_now
    got.concat(completions_within(ring, 0.1)) while fd_open_through_proc?(fd) && hp_now - t0 < 5 * slow
    expect(fd_open_through_proc?(fd)).to be(false)
    got += completions_within(ring, 0.1)
    expect(sends(got).map { |c| c[:result] }).to eq([ecanceled] * 3)
    expect(ring.stats).to include(close_timeouts: 1, queued_send_bytes: 0, closes: 1, inflight: 1)
    expect(client.wait_readable(2)).to be_truthy
  end

  it "fails the send to a peer that reset, and the ones queued behind it" do
    file_ring
    client, fd = stalled
    body = ("r" * 1_500_000).freeze
    3.times { ring.submit_send(fd, body) }
    ring.flush
    reset_peer(client)
    got = collect_completions(ring, seconds: 10) { |cs| sends(cs).size >= 3 }
    results = sends(got).map { |c| c[:result] }
    expect(results.first).to be_negative
    expect(results.first).not_to eq(ecanceled)
    expect(results.drop(1)).to all(eq(results.first))
    expect(ring.stats).to include(queued_send_bytes: 0, inflight: 1)
  end

  it "closes with a sendfile waiting for room: no fd, pin or ring left behind" do
    file_ring
    pinned = k.pinned_strings
    leaked = k.leaked_rings # rings of earlier examples may still wait for their owner task
    _client, fd = stalled
    2.times { |i| ring.submit_send(fd, (i.to_s * 3_000_000).freeze) }
    ring.flush
    ring.each_completion(timeout_ms: 20) { |_| nil }
    expect(k.pinned_strings).to be > pinned
    ring.close
    expect(k.pinned_strings).to eq(pinned)
    expect(k.leaked_rings).to be <= leaked
  end

  # The GC of another thread than the owner's cannot cancel, so memory the
  # kernel may still read waits for the owner task (owner.c). A sendfile
  # that waits for room has only a POLLOUT poll in flight, which reads no
  # memory: its String is let go at once.
  it "collected by another thread's GC with a sendfile waiting, its owner alive: no String stays pinned, nothing waits" do
    pinned = k.pinned_strings
    leaked = k.leaked_rings
    deferred = k.deferred_bytes
    listener = TCPServer.new("127.0.0.1", 0)
    listener.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096)
    client = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
    server = listener.accept
    @sockets = [listener, client, server]
    ready = Queue.new
    release = Queue.new
    owner = Thread.new do
      # Made in a Fiber that ends: no stale VALUE of the ring or the String
      # stays on this thread's stack (the GC scans it) while it waits.
      ready << Fiber.new do
        r = k.new(queue_depth: 8, n_bufs: 8, buf_size: 4096, sendfile_min: 4096)
        next [nil, nil, "no memfd_create in this C library"] unless r.sendfile_min

        body = ("b" * 3_000_000).freeze
        r.submit_send(server.fileno, body)
        r.flush
        r.each_completion(timeout_ms: 20) { |_| nil }
        st = r.stats
        next [nil, nil, "not waiting: #{st}"] unless st[:file_sends] == 1 && st[:queued_send_bytes].positive?

        [WeakRef.new(r), WeakRef.new(body), nil]
      end.resume
      release.pop
    end
    weak_ring, weak_body, why = ready.pop
    begin
      skip why if why&.start_with?("no memfd")
      expect(why).to be_nil
      expect(k.pinned_strings).to be > pinned
      deadline = hp_now + 10
      full_gc while (weak_ring.weakref_alive? || weak_body.weakref_alive?) && hp_now < deadline
      expect(weak_ring.weakref_alive?).to be_falsey
      expect(weak_body.weakref_alive?).to be_falsey, "the String stayed pinned"
      expect(owner).to be_alive
      expect(k.pinned_strings).to eq(pinned)
      expect(k.deferred_bytes - deferred).to be < 3_000_000
      expect(k.leaked_rings - leaked).to be <= 1 # the buffer ring may wait, on a kernel before 6.17
    ensure
      release << true
      owner.join
    end
  end

  it "keeps at most 16 bodies and send_buffer_limit bytes of them, dropping the least recently sent" do
    file_ring(send_buffer_limit: 1 << 20, connection_send_limit: 1 << 20)
    pinned = k.pinned_strings
    _l, client, fd = connection
    bodies = Array.new(20) { |i| (format("%04d", i) * 10_000).freeze } # 40 KB each
    calls = bodies + bodies.first(2) + [("b" * 600_000).freeze, ("c" * 600_000).freeze]
    calls.each do |b|
      ring.submit_send(fd, b)
      data, = drain_sent(client, b.bytesize, ring) # one at a time: each entry is idle when the next needs room
      expect(data).to eq(b)
    end
    collect_completions(ring) { |_| ring.stats[:sends] == calls.size }
    st = ring.stats
    # 20 bodies, then the first two again (evicted by then), then two of 600 KB,
    # of which only one fits in the 1 MiB budget at a time.
    expect(st).to include(file_sends: calls.size, body_files: 24, sends: calls.size)
    expect(st[:body_file_bytes]).to be_between(600_000, 1 << 20) # the last 600 KB body and what else fits
    expect(k.pinned_strings - pinned).to be <= 16
    expect(k.pinned_strings - pinned).to be >= 1
  end

  it "sends to a socket only: a pipe gets ENOTSOCK as with any send" do
    file_ring
    r, w = IO.pipe
    (@sockets ||= []).push(r, w)
    ring.submit_send(w.fileno, ("p" * 100_000).freeze)
    got = collect_completions(ring) { |cs| sends(cs).any? }
    expect(sends(got).map { |c| c[:result] }).to eq([-Errno::ENOTSOCK::Errno])
    expect(r.read_nonblock(10, exception: false)).to eq(:wait_readable)
    expect(ring.stats).to include(file_sends: 0, body_files: 0)
  end

  it "sends to a blocking socket as a plain send: sendfile(2) would wait for room in the caller" do
    file_ring
    _l, client, fd = connection
    server_io = IO.for_fd(fd, autoclose: false)
    server_io.nonblock = false
    body = ("b" * 2_000_000).freeze # more than the socket takes at once
    t0 = hp_now
    ring.submit_send(fd, body)
    # The call returned at once, though nobody reads yet: nothing blocked.
    expect(hp_now - t0).to be < 0.5 * slow
    data, got = drain_sent(client, body.bytesize, ring)
    got += collect_completions(ring) { |cs| sends(got + cs).any? } if sends(got).empty?
    expect(data).to eq(body)
    expect(sends(got).map { |c| c[:result] }).to eq([body.bytesize])
    expect(ring.stats).to include(file_sends: 0, body_files: 0, borrowed_sends: 1)
  ensure
    server_io&.nonblock = true
  end

  it "sends to a datagram socket as a plain send" do
    file_ring
    a, b = Socket.pair(:UNIX, :DGRAM)
    (@sockets ||= []).push(a, b)
    a.nonblock = true
    body = ("d" * 5000).freeze
    ring.submit_send(a.fileno, body)
    got = collect_completions(ring) { |cs| sends(cs).any? }
    expect(sends(got).map { |c| c[:result] }).to eq([body.bytesize])
    expect(b.recv(10_000)).to eq(body) # one datagram, as one send makes
    expect(ring.stats).to include(file_sends: 0, body_files: 0)
  end

  def fd_open_through_proc?(fd)
    File.exist?("/proc/self/fd/#{fd}")
  end
end
