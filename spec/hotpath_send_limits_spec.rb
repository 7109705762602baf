# frozen_string_literal: true

require "fiddle"

# HotpathRing's bounded send memory: send_buffer_limit (per ring) and
# connection_send_limit (per fd), SendBufferFull and the C entry point's
# -ENOBUFS, queued_send_bytes and stats[:queued_send_bytes] /
# [:send_buffer_full], and the memory of ended sends given back. Slow
# readers are real loopback clients that never read, with small socket
# buffers, so a submit_send loop fills the kernel's buffers and then the
# ring's copies pile up (issue 11).
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  let(:kib64) { "s" * 65_536 }
  let(:mib) { 1 << 20 }
  let(:under) { ENV.fetch("HYPERION_IO_URING_SPEC_UNDER", "") }

  # A listener whose accepted sockets have a small send buffer.
  def small_sndbuf_listener
    TCPServer.new("127.0.0.1", 0).tap { |l| l.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096) }
  end

  # A connection through +r+ whose client never reads (small buffers both
  # ends); returns [client, fd].
  def slow_reader(r = ring)
    listener = small_sndbuf_listener
    _, client, fd = connection(r, listener: listener)
    client.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
    [client, fd]
  end

  # submit_send(fd, data) until SendBufferFull (or +max+ calls); returns
  # [sends accepted, the exception].
  def send_until_full(r, fd, data, max: 10_000)
    max.times do |i|
      r.submit_send(fd, data)
      r.flush if (i % 16).zero?
    rescue Hyperion::IOUring::SendBufferFull => e
      return [i, e]
    end
    raise "no SendBufferFull after #{max} sends of #{data.bytesize} bytes"
  end

  def rss_mib
    Integer(File.foreach("/proc/self/status").find { |l| l.start_with?("VmRSS:") }.split[1]) / 1024.0
  end

  # Reaps until every send accepted on the fds has its completion; returns
  # the OP_SEND results per fd.
  def send_results(r, expected, seconds: 10)
    got = collect_completions(r, seconds: seconds) do |cs|
      cs.count { |c| c[:op_kind] == k::OP_SEND } >= expected
    end
    got.select { |c| c[:op_kind] == k::OP_SEND }
  end

  describe "connection_send_limit" do
    it "refuses a slow reader's send past it with SendBufferFull, queues nothing, and counts it" do
      @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096, send_buffer_limit: 8 * mib,
                    connection_send_limit: mib)
      _client, fd = slow_reader
      accepted, err = send_until_full(ring, fd, kib64)
      expect(err).to be_a(Hyperion::IOUring::Error)
      expect(err.message).to match(/submit_send: fd #{fd} holds \d+ bytes of queued sends; 65536 more would pass connection_send_limit \(1048576 bytes\)/)
      queued = ring.queued_send_bytes(fd)
      expect(queued).to be <= mib
      expect(queued).to be > mib - 65_536
      expect(ring.queued_send_bytes(IO.for_fd(fd, autoclose: false))).to eq(queued)
      expect(ring.stats).to include(queued_send_bytes: queued, send_buffer_full: 1)
      # Refused again (nothing was queued, and nothing drained meanwhile).
      expect { ring.submit_send(fd, kib64) }.to raise_error(Hyperion::IOUring::SendBufferFull)
      expect(ring.stats).to include(queued_send_bytes: queued, send_buffer_full: 2)
      # Sends that fit still go: a small one while there is room.
      room = mib - queued
      ring.submit_send(fd, "x" * room) if room.positive?
      expect(ring.queued_send_bytes(fd)).to eq(mib) if room.positive?
      accepted += 1 if room.positive?
      # No completion for the refused sends: one per accepted send, once the
      # peer resets and the queued ones fail.
      reset_peer(@sockets.last)
      results = send_results(ring, accepted)
      expect(results.size).to eq(accepted)
      expect(ring.queued_send_bytes(fd)).to eq(0)
      expect(ring.stats[:queued_send_bytes]).to eq(0)
    end

    it "frees room as the client reads, after which sends are taken again" do
      @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096, connection_send_limit: 512 * 1024)
      client, fd = slow_reader
      accepted, = send_until_full(ring, fd, kib64)
      expect(ring.queued_send_bytes(fd)).to be > 0
      reader = Thread.new { read_fully(client, accepted * 65_536, hp_now + 20) }
      results = send_results(ring, accepted, seconds: 20)
      expect(results.map { |c| c[:result] }).to all(eq(65_536))
      expect(reader.value.bytesize).to eq(accepted * 65_536)
      expect(ring.queued_send_bytes(fd)).to eq(0)
      ring.submit_send(fd, kib64)
      expect(ring.queued_send_bytes(fd)).to eq(65_536)
      reader = Thread.new { read_fully(client, 65_536, hp_now + 10) }
      expect(send_results(ring, 1).map { |c| c[:result] }).to eq([65_536])
      expect(reader.value.bytesize).to eq(65_536)
    end

    it "defaults to a quarter of send_buffer_limit (16 MiB of the default 64 MiB)" do
      @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096)
      _client, fd = slow_reader
      _, err = send_until_full(ring, fd, "m" * mib)
      expect(err.message).to include("connection_send_limit (16777216 bytes)")
      expect(ring.queued_send_bytes(fd)).to eq(16 * mib)
      expect(k::DEFAULT_SEND_BUFFER_LIMIT).to eq(64 * mib)
    end

    it "refuses one send bigger than the limit outright" do
      @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096, send_buffer_limit: 4 * mib, connection_send_limit: mib)
      _, client, fd = connection
      expect { ring.submit_send(fd, "b" * (mib + 1)) }
        .to raise_error(Hyperion::IOUring::SendBufferFull, /fd #{fd} holds 0 bytes.*1048577 more.*connection_send_limit \(1048576 bytes\)/)
      expect(ring.stats).to include(queued_send_bytes: 0, send_buffer_full: 1)
      ring.submit_send(fd, "ok")
      expect(send_results(ring, 1).map { |c| c[:result] }).to eq([2])
      expect(read_fully(client, 2, hp_now + 5)).to eq("ok")
    end
  end

  describe "send_buffer_limit" do
    it "bounds the ring's total: a second slow reader hits it, and so does a fast client meanwhile" do
      @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096, send_buffer_limit: 1536 * 1024,
                    connection_send_limit: mib)
      _, fast, fd3 = connection
      _c1, fd1 = slow_reader
      _c2, fd2 = slow_reader
      _, err1 = send_until_full(ring, fd1, kib64)
      expect(err1.message).to include("connection_send_limit")
      _, err2 = send_until_full(ring, fd2, kib64)
      expect(err2.message).to match(/submit_send: the ring holds \d+ bytes of queued sends; 65536 more for fd #{fd2} would pass send_buffer_limit \(1572864 bytes\)/)
      total = ring.queued_send_bytes(fd1) + ring.queued_send_bytes(fd2)
      expect(ring.stats[:queued_send_bytes]).to eq(total)
      expect(total).to be <= 1536 * 1024
      expect { ring.submit_send(fd3, kib64) }.to raise_error(Hyperion::IOUring::SendBufferFull, /send_buffer_limit/)
      # Once the slow readers go, the fast client is served.
      ring.submit_close(fd1, timeout: 0)
      ring.submit_close(fd2, timeout: 0)
      [fd1, fd2].each { |fd| forget_fd(fd) }
      collect_completions(ring) { ring.stats[:queued_send_bytes].zero? }
      ring.submit_send(fd3, kib64)
      reader = Thread.new { read_fully(fast, 65_536, hp_now + 10) }
      collect_completions(ring) { |cs| cs.any? { |c| c[:fd] == fd3 && c[:op_kind] == k::OP_SEND } }
      expect(reader.value.bytesize).to eq(65_536)
      expect(ring.stats[:send_buffer_full]).to eq(3)
    end
  end

  describe "memory of ended sends" do
    it "is given back after the slow readers reset: queued_send_bytes 0 and RSS well below the peak" do
      @ring = k.new(queue_depth: 256, n_bufs: 64, buf_size: 4096) # 64 MiB ring, 16 MiB per connection
      GC.start
      before = rss_mib
      readers = Array.new(4) { slow_reader }
      accepted = readers.sum { |_, fd| send_until_full(ring, fd, kib64).first }
      expect(ring.stats[:queued_send_bytes]).to be > 60 * mib
      peak = rss_mib
      readers.each do |client, _|
        reset_peer(client)
      end
      send_results(ring, accepted)
      expect(ring.stats[:queued_send_bytes]).to eq(0)
      readers.each { |_, fd| expect(ring.queued_send_bytes(fd)).to eq(0) }
      after = rss_mib
      # valgrind and ASan account for memory their own way; the counters
      # above are what they check.
      unless %w[valgrind asan].include?(under)
        expect(peak - before).to be > 48 # the copies were really held
        # Given back, except at most HP_MAP_CACHE_BYTES (4 MiB) kept for reuse.
        expect(after - before).to be < 16, "RSS #{before.round(1)} -> peak #{peak.round(1)} -> #{after.round(1)} MiB"
      end
    end

    it "reuses the freed copies: 400 sends of 64 KiB one after the other keep RSS flat" do
      @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096)
      _, client, fd = connection
      # Counts the bytes into one buffer (RSS is what is measured).
      reader = Thread.new do
        n = 0
        buf = +""
        n += client.readpartial(1 << 16, buf).bytesize while n < 400 * 65_536
        n
      end
      GC.start
      before = rss_mib
      400.times do
        ring.submit_send(fd, kib64)
        expect(send_results(ring, 1).map { |c| c[:result] }).to eq([65_536])
      end
      expect(reader.value).to eq(400 * 65_536)
      expect(ring.stats[:queued_send_bytes]).to eq(0)
      expect(rss_mib - before).to be < 8 unless %w[valgrind asan].include?(under)
    end
  end

  describe "the C entry point" do
    let(:entry) do
      Fiddle::Function.new(Fiddle::Handle::DEFAULT["hyperion_io_uring_hotpath_submit_send"],
                           [Fiddle::TYPE_VOIDP, Fiddle::TYPE_INT, Fiddle::TYPE_VOIDP, Fiddle::TYPE_INT],
                           Fiddle::TYPE_INT)
    end

    it "returns -ENOBUFS with errno ENOBUFS past the limit, and queues nothing" do
      @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096, connection_send_limit: 256 * 1024)
      _client, fd = slow_reader
      data = kib64
      ptr = Fiddle::Pointer[data]
      iov = Fiddle::Pointer.malloc(16, Fiddle::RUBY_FREE)
      iov[0, 16] = [ptr.to_i, data.bytesize].pack("Q<Q<")
      rets = Array.new(200) do |i|
        ring.flush if (i % 16).zero?
        [entry.call(ring.ptr, fd, iov, 1), Fiddle.last_error]
      end
      ok = rets.count { |r, _| r.zero? }
      refused = rets.reject { |r, _| r.zero? }
      expect(refused).not_to be_empty
      expect(refused).to all(eq([-Errno::ENOBUFS::Errno, Errno::ENOBUFS::Errno]))
      expect(ring.queued_send_bytes(fd)).to be <= 256 * 1024
      expect(ring.stats[:send_buffer_full]).to eq(refused.size)
      reset_peer(@sockets.last)
      expect(send_results(ring, ok).size).to eq(ok)
    end
  end

  describe "arguments" do
    it "checks the limits" do
      [0, -1, 2**64].each do |bad|
        expect { k.new(send_buffer_limit: bad) }.to raise_error(ArgumentError, /send_buffer_limit must be in 1\.\./)
        expect { k.new(connection_send_limit: bad) }.to raise_error(ArgumentError, /connection_send_limit must be in/)
      end
      ["1", 1.5, nil].each do |bad|
        expect { k.new(send_buffer_limit: bad) }.to raise_error(TypeError, /send_buffer_limit must be an Integer/)
      end
      expect { k.new(send_buffer_limit: mib, connection_send_limit: mib + 1) }
        .to raise_error(ArgumentError, /connection_send_limit \(1048577\) must not exceed send_buffer_limit \(1048576\)/)
      r = k.new(send_buffer_limit: 1, queue_depth: 8, n_bufs: 8, buf_size: 64)
      r.close
    end

    it "takes the default from HYPERION_IO_URING_SEND_BUFFER_LIMIT, warning about a bad value" do
      old = ENV.fetch("HYPERION_IO_URING_SEND_BUFFER_LIMIT", nil)
      ENV["HYPERION_IO_URING_SEND_BUFFER_LIMIT"] = (2 * mib).to_s
      expect(k.default_send_buffer_limit).to eq(2 * mib)
      @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096)
      _client, fd = slow_reader
      _, err = send_until_full(ring, fd, kib64)
      expect(err.message).to include("connection_send_limit (524288 bytes)")
      ENV["HYPERION_IO_URING_SEND_BUFFER_LIMIT"] = "lots"
      expect { expect(k.default_send_buffer_limit).to eq(64 * mib) }
        .to output(/ignoring HYPERION_IO_URING_SEND_BUFFER_LIMIT="lots": keeping 67108864/).to_stderr
      ENV["HYPERION_IO_URING_SEND_BUFFER_LIMIT"] = "0"
      expect { expect(k.default_send_buffer_limit).to eq(64 * mib) }.to output(/ignoring/).to_stderr
    ensure
      old ? ENV["HYPERION_IO_URING_SEND_BUFFER_LIMIT"] = old : ENV.delete("HYPERION_IO_URING_SEND_BUFFER_LIMIT")
    end

    it "reads queued_send_bytes for any fd: 0 where nothing is queued and on a closed ring" do
      expect(ring.queued_send_bytes(0)).to eq(0)
      expect(ring.queued_send_bytes(100_000)).to eq(0)
      expect { ring.queued_send_bytes(-1) }.to raise_error(ArgumentError)
      expect { ring.queued_send_bytes("1") }.to raise_error(TypeError)
      ring.close
      expect(ring.queued_send_bytes(0)).to eq(0)
    end
  end
end
