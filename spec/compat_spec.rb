# frozen_string_literal: true

require "fiddle"

# What upstream Hyperion's own io_uring specs exercise through the public
# API (hyperion-rb 2.17, spec/hyperion/io_uring*_spec.rb), written here
# against this gem: a server written for upstream must run unchanged.
RSpec.describe "upstream Hyperion::IOUring compatibility" do
  include HotpathHelpers

  let(:io_uring) { Hyperion::IOUring }
  let(:hp) { Hyperion::IOUring::HotpathRing }

  before { io_uring.reset! }

  describe "surface" do
    it "has upstream's constants" do
      expect(io_uring::EXPECTED_ABI).to eq(2)
      expect(io_uring::MIN_LINUX_KERNEL).to eq([5, 6])
      expect(io_uring::Ring::DEFAULT_QUEUE_DEPTH).to eq(256)
      expect([hp::DEFAULT_QUEUE_DEPTH, hp::DEFAULT_N_BUFS, hp::DEFAULT_BUF_SIZE]).to eq([1024, 512, 8192])
      expect([hp::COMPLETION_BYTES, hp::MAX_BATCH]).to eq([24, 64])
      expect([hp::OP_ACCEPT, hp::OP_RECV, hp::OP_SEND, hp::OP_CLOSE]).to eq([1, 2, 3, 4])
    end

    it "keeps Unsupported a StandardError" do
      expect(io_uring::Unsupported.ancestors).to include(StandardError)
    end

    it "answers the Fiddle-era module functions sensibly" do
      require_io_uring!
      expect(io_uring.load!).to be_truthy
      expect(io_uring.candidate_paths).to all(be_a(String))
      expect(io_uring.candidate_paths.any? { |p| File.exist?(p) }).to be(true)
      expect(io_uring.compute_supported).to be(true)
      expect(io_uring.compute_hotpath_supported).to be(true)
    end
  end

  describe "policy, as upstream's specs stub it" do
    it "is false on Darwin and caches the answer without asking uname again" do
      allow(Etc).to receive(:uname).and_return({ sysname: "Darwin", release: "24.0.0" })
      expect(io_uring.supported?).to be(false)
      expect(Etc).not_to receive(:uname)
      expect(io_uring.supported?).to be(false)
    end

    it "gates on the kernel release" do
      { "5.4.0-foo" => false, "5.5.19-foo" => false, "5.6.0-amd64" => true, "6.8.0-bar" => true }.each do |rel, ok|
        allow(Etc).to receive(:uname).and_return({ sysname: "Linux", release: rel })
        expect(io_uring.kernel_supports_io_uring?).to be(ok), rel
      end
    end

    it "resolves policies with upstream's messages" do
      expect(io_uring.resolve_policy!(:off)).to be(false)
      expect { io_uring.resolve_policy!(:bogus) }
        .to raise_error(ArgumentError, "io_uring must be :off, :auto, or :on (got :bogus)")
      expect { io_uring.resolve_hotpath_policy!(:bogus) }
        .to raise_error(ArgumentError, "io_uring_hotpath must be :off, :auto, or :on (got :bogus)")
      allow(Etc).to receive(:uname).and_return({ sysname: "Darwin", release: "24.0.0" })
      expect(io_uring.resolve_policy!(:auto)).to be(false)
      expect { io_uring.resolve_policy!(:on) }.to raise_error(io_uring::Unsupported, /\Aio_uring required/)
      expect { io_uring.resolve_hotpath_policy!(:on) }
        .to raise_error(io_uring::Unsupported, /\Aio_uring hotpath required \(io_uring_hotpath: :on\) but unsupported/)
    end
  end

  describe "Ring, as upstream's server drives it" do
    before { require_io_uring! }

    it "opens and closes a ring without leaking fds" do
      expect_no_fd_leak do
        ring = io_uring::Ring.new(queue_depth: 64)
        expect(ring).not_to be_closed
        ring.close
        expect(ring).to be_closed
      end
    end

    it "accepts byte-for-byte what accept_nonblock accepts" do
      with_listener do |server, port|
        ring = io_uring::Ring.new(queue_depth: 16)
        payload = Random.bytes(1000)
        got = 2.times.map do |i|
          client = connect(port)
          client.write(payload)
          client.close
          sock = if i.zero?
                   socket_for(ring.accept(server.fileno))
                 else
                   IO.select([server], nil, nil, 5)
                   server.accept_nonblock
                 end
          data = sock.read
          sock.close
          data
        end
        expect(got[0]).to eq(payload)
        expect(got[0]).to eq(got[1])
      ensure
        ring&.close
      end
    end

    it "survives 1000 sequential accepts without fd growth" do
      with_listener do |server, port|
        ring = io_uring::Ring.new(queue_depth: 64)
        expect_no_fd_leak do
          1000.times do
            client = connect(port)
            fd = ring.accept(server.fileno)
            expect(fd).to be_a(Integer)
            IO.for_fd(fd).close
            client.close
          end
        end
      ensure
        ring&.close
      end
    end
  end

  describe "HotpathRing, as upstream's specs drive it" do
    before { require_hotpath! }

    # Upstream builds an iovec with Fiddle and polls with min_complete: 0.
    def iovec(*strings)
      ptrs = strings.map { |s| Fiddle::Pointer[s] }
      iov = Fiddle::Pointer.malloc(16 * strings.size, Fiddle::RUBY_FREE)
      iov[0, 16 * strings.size] = ptrs.zip(strings).flat_map { |p, s| [p.to_i, s.bytesize] }.pack("Q<*")
      [iov, ptrs]
    end

    def drain_send(ring)
      result = nil
      deadline = hp_now + 2
      while result.nil? && hp_now < deadline
        ring.each_completion(min_complete: 0, timeout_ms: 200) do |c|
          result = c[:result] if c[:op_kind] == hp::OP_SEND
        end
      end
      result
    end

    it "sends through an iovec pointer built with Fiddle, with the full length" do
      r, w = Socket.pair(:UNIX, :STREAM)
      ring = hp.new(queue_depth: 16, n_bufs: 4, buf_size: 4096)
      payload = +"hello via io_uring\n"
      iov, _keep = iovec(payload, "and more")
      ring.submit_send(w.fileno, iov, 2)
      payload.replace("X" * payload.bytesize) # our copy was taken at submit time
      expect(drain_send(ring)).to eq(27)
      expect(r.read_nonblock(100)).to eq("hello via io_uring\nand more")
    ensure
      ring&.close
      [r, w].each { |s| s&.close }
    end

    it "stays healthy under more clients than buffers and receives the data" do
      with_listener do |listener, port|
        ring = hp.new(queue_depth: 32, n_bufs: 4, buf_size: 256)
        ring.submit_accept_multishot(listener.fileno)
        clients = Array.new(8) { connect(port) }
        accepted = []
        deadline = hp_now + 3
        while accepted.size < 8 && hp_now < deadline
          ring.each_completion(min_complete: 1, timeout_ms: 200) do |c|
            next unless c[:op_kind] == hp::OP_ACCEPT && c[:result] >= 0

            accepted << c[:result]
            ring.submit_recv_multishot(c[:result])
          end
        end
        clients.each_with_index { |c, i| c.write("ping#{i}\r\n" * 40) }
        received = Hash.new { |h, k| h[k] = +"" }
        deadline = hp_now + 3
        while received.values.sum(&:bytesize) < 8 * 40 * 7 && hp_now < deadline
          ring.each_completion(min_complete: 0, timeout_ms: 100) do |c|
            next unless c[:op_kind] == hp::OP_RECV && c[:result].positive?

            received[c[:fd]] << ring.take_buffer(c[:buf_id], c[:result])
          end
          sleep 0.001
        end
        expect(ring.healthy?).to be(true)
        expect(received.size).to eq(8)
        expect(received.values.map { |v| v[0, 4] }).to all(eq("ping"))
        expect(received.values.map(&:bytesize)).to all(eq(7 * 40))
        expect(ring.stats[:buffers_in_use]).to eq(0)
      ensure
        clients&.each(&:close)
        accepted&.each { |fd| ring.cancel(fd) }
        ring&.close
        accepted&.each { |fd| IO.for_fd(fd).close }
      end
    end
  end

  describe "the C entry point upstream's HTTP extension calls" do
    before { require_hotpath! }

    let(:entry) do
      Fiddle::Function.new(Fiddle::Handle::DEFAULT["hyperion_io_uring_hotpath_submit_send"],
                           [Fiddle::TYPE_VOIDP, Fiddle::TYPE_INT, Fiddle::TYPE_VOIDP, Fiddle::TYPE_INT],
                           Fiddle::TYPE_INT)
    end

    def iov_for(*strings)
      ptrs = strings.map { |s| Fiddle::Pointer[s] }
      iov = Fiddle::Pointer.malloc(16 * strings.size, Fiddle::RUBY_FREE)
      iov[0, 16 * strings.size] = ptrs.zip(strings).flat_map { |p, s| [p.to_i, s.bytesize] }.pack("Q<*")
      [iov, ptrs]
    end

    it "is found with dlsym(RTLD_DEFAULT) and queues a send like submit_send" do
      r, w = Socket.pair(:UNIX, :STREAM)
      ring = hp.new
      parts = ["HTTP/1.1 200 OK\r\n", "content-length: 2\r\n\r\n", "ok"]
      iov, _keep = iov_for(*parts)
      expect(entry.call(ring.ptr, w.fileno, iov, parts.size)).to eq(0)
      GC.start # the caller's memory may die at once: ours was copied
      got = []
      ring.each_completion(timeout_ms: 1000) { |c| got << c }
      expect(got.map { |c| [c[:op_kind], c[:fd], c[:result]] }).to eq([[hp::OP_SEND, w.fileno, parts.join.bytesize]])
      expect(r.read_nonblock(100)).to eq(parts.join)
    ensure
      ring&.close
      [r, w].each { |s| s&.close }
    end

    it "rejects a bogus handle, a closed ring and too many iovecs with -EINVAL and errno set" do
      r, w = Socket.pair(:UNIX, :STREAM)
      ring = hp.new
      iov, _keep = iov_for("x")
      einval = -Errno::EINVAL::Errno
      [0, 1, 0xdeadbeef, ring.ptr + 8].each do |bogus|
        expect(entry.call(bogus, w.fileno, iov, 1)).to eq(einval)
        expect(Fiddle.last_error).to eq(Errno::EINVAL::Errno)
      end
      expect(entry.call(ring.ptr, w.fileno, iov, 1025)).to eq(einval)
      handle = ring.ptr
      ring.close
      expect(ring.ptr).to be_nil
      expect(entry.call(handle, w.fileno, iov, 1)).to eq(einval)
      expect(r.read_nonblock(10, exception: false)).to eq(:wait_readable)
    ensure
      ring&.close
      [r, w].each { |s| s&.close }
    end

    it "returns -EBADF for a closed fd" do
      ring = hp.new
      iov, _keep = iov_for("x")
      expect(entry.call(ring.ptr, closed_fd_number, iov, 1)).to eq(-Errno::EBADF::Errno)
    ensure
      ring&.close
    end

    it "refuses the parent's ring in a forked child" do
      ring = hp.new
      iov, _keep = iov_for("x")
      rd, wr = IO.pipe
      pid = fork do
        rd.close
        wr.write(entry.call(ring.ptr, wr.fileno, iov, 1).to_s)
        wr.close
        exit!(0)
      end
      wr.close
      Process.wait(pid)
      expect(Integer(rd.read)).to eq(-Errno::EINVAL::Errno)
      expect(ring.healthy?).to be(true)
    ensure
      rd&.close
      ring&.close
    end
  end
end
