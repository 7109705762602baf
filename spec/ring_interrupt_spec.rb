# frozen_string_literal: true

require "fcntl"
require "socket"

RingInterruptSpecError = Class.new(StandardError)

# Nothing lost: a Ring#read interrupted after its data arrived keeps that
# data for the next read on the same fd, a Ring#accept interrupted after the
# kernel accepted keeps the connection for the next accept on the listener,
# and a HotpathRing#cancel that finds the SQ full still reaches the kernel.
RSpec.describe "interrupts and full queues lose nothing" do
  include HotpathHelpers

  describe Hyperion::IOUring::Ring do
    before { require_io_uring! }

    # One round: the peer writes a chunk, and at once (or a moment later)
    # the reading thread gets Thread#raise, so that the raise often lands
    # while the read's completion is coming in. The reader rescues and reads
    # on. At the end every byte written must have been read, in order.
    #
    # The reader takes interrupts only at blocking points (the waits inside
    # ring.read): otherwise Ruby itself may raise one just after any method
    # returned, before its value is stored (IO#readpartial loses bytes the
    # same way in this loop), which is not the ring's to prevent.
    def interrupted_stream(rounds:, chunk:)
      listener = TCPServer.new("127.0.0.1", 0)
      client = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
      peer = listener.accept
      got = +"".b
      total = rounds * chunk
      interrupts = 0
      stats = nil
      ready = Queue.new
      reader = Thread.new do
        ring = Hyperion::IOUring::Ring.new(queue_depth: 4)
        Thread.handle_interrupt(RingInterruptSpecError => :on_blocking) do
          ready << true
          begin
            got << ring.read(client, max: 65_536) while got.bytesize < total
          rescue RingInterruptSpecError
            interrupts += 1
            retry
          end
          stats = ring.stats
        end
      rescue RingInterruptSpecError
        nil # one still pending as the block was left: everything was read by then
      ensure
        ring&.close
      end
      ready.pop
      sent = +"".b
      rng = Random.new(1234)
      rounds.times do |i|
        bytes = ([i % 251].pack("C") * chunk).b
        peer.write(bytes)
        sent << bytes
        sleep(rng.rand * 0.0003) if i.odd?
        reader.raise(RingInterruptSpecError, "round #{i}")
        deadline = monotonic + 0.5
        Thread.pass while got.bytesize < sent.bytesize && monotonic < deadline
      end
      reader.join(10)
      [sent, got, interrupts, stats]
    ensure
      reader&.kill
      [peer, client, listener].each { |io| io&.close }
    end

    it "keeps data that arrived as a read was interrupted for the next read on the fd: no byte lost" do
      expect_no_fd_leak do
        sent, got, interrupts, stats = interrupted_stream(rounds: 1500, chunk: 37)
        expect(interrupts).to be > 100
        expect(stats).not_to be_nil
        expect(got.bytesize).to eq(sent.bytesize), "lost #{sent.bytesize - got.bytesize} bytes"
        expect(got).to eq(sent)
      end
    end

    # Like interrupted_stream, for accepts. Two listeners; each round a
    # client connects to one of them (in turn) and the accepting thread
    # gets Thread#raise at once. The acceptor tries the listeners in turn
    # with short timeouts, asking for nonblock: true twice, then false
    # twice, so a connection kept from one listener's interrupted accept
    # meets accepts on the other listener and in the other mode. Returns
    # [clients, [fd, listener index, nonblock] per accept, interrupts, stats].
    def interrupted_accepts(listeners, rounds:)
      accepted = []
      interrupts = 0
      stats = nil
      ready = Queue.new
      acceptor = Thread.new do
        ring = Hyperion::IOUring::Ring.new(queue_depth: 4)
        attempt = 0
        Thread.handle_interrupt(RingInterruptSpecError => :on_blocking) do
          ready << true
          begin
            while accepted.size < rounds
              li = attempt % 2
              nonblock = (attempt / 2).even?
              attempt += 1
              fd = ring.accept(listeners[li], timeout: 0.01, nonblock: nonblock)
              accepted << [fd, li, nonblock] if fd.is_a?(Integer)
            end
          rescue RingInterruptSpecError
            interrupts += 1
            retry
          end
          stats = ring.stats
        end
      rescue RingInterruptSpecError
        nil # one still pending as the block was left: every client was accepted by then
      ensure
        ring&.close
      end
      ready.pop
      rng = Random.new(4321)
      clients = []
      rounds.times do |i|
        clients << TCPSocket.new("127.0.0.1", listeners[i % 2].local_address.ip_port)
        sleep(rng.rand * 0.0003) if i.odd?
        acceptor.raise(RingInterruptSpecError, "round #{i}")
        deadline = monotonic + 0.5
        Thread.pass while accepted.size <= i && monotonic < deadline
      end
      acceptor.join(10)
      [clients, accepted, interrupts, stats]
    ensure
      acceptor&.kill
    end

    it "keeps a connection accepted as an accept was interrupted for the next accept on that listener: no client lost" do
      listeners = Array.new(2) { TCPServer.new("127.0.0.1", 0) }
      clients = accepted = []
      expect_no_fd_leak do
        clients, accepted, interrupts, stats = interrupted_accepts(listeners, rounds: 300)
        expect(interrupts).to be > 30
        expect(stats).not_to be_nil
        expect(accepted.size).to eq(clients.size), "lost #{clients.size - accepted.size} clients (#{stats.inspect})"
        # Each fd is the connection of one client of the listener its accept
        # named, in the mode its accept asked for.
        clients.each_with_index { |c, i| c.write([i].pack("N")) }
        seen = accepted.map do |fd, li, nonblock|
          io = IO.for_fd(fd, autoclose: false)
          expect(io.fcntl(Fcntl::F_GETFL) & Fcntl::O_NONBLOCK).to eq(nonblock ? Fcntl::O_NONBLOCK : 0)
          expect(io.wait_readable(5)).to be_truthy
          i = io.read_nonblock(4).unpack1("N")
          expect(i % 2).to eq(li), "client #{i} (of listener #{i % 2}) came from an accept on listener #{li}"
          i
        end
        expect(seen.sort).to eq((0...clients.size).to_a)
        puts "  (#{interrupts} interrupts, #{stats[:kept_accepts]} connections kept)" if ENV["VERBOSE"]
      ensure
        accepted.each { |fd, _| IO.for_fd(fd).close }
        clients.each(&:close)
      end
    ensure
      listeners.each(&:close)
    end

    it "keeps the rest of a kept read for the following reads when max: is smaller" do
      r = Hyperion::IOUring::Ring.new(queue_depth: 4)
      with_listener do |server, port|
        client = connect(port)
        peer = server.accept
        payload = Random.new(5).bytes(3000)
        # A read cut short by the fd's own timeout: nothing to keep. Then
        # many interrupted reads with small max: the bytes arrive in order.
        expect(r.read(client, timeout: 0.01)).to eq(:wouldblock)
        peer.write(payload)
        peer.close
        out = +"".b
        loop do
          chunk = r.read(client, max: 7, timeout: 5)
          break if chunk.empty?

          out << chunk
        end
        expect(out).to eq(payload)
      ensure
        peer&.close
        client&.close
      end
    ensure
      r&.close
    end
  end

  describe Hyperion::IOUring::HotpathRing do
    before do
      require_hotpath!
      hotpath_fd_snapshot
    end

    after { hotpath_expect_no_new_fds }

    # A ring of one SQE: every request after the first finds the SQ full.
    it "delivers every cancel when the SQ is full (queue_depth: 1, many recvs armed)" do
      ring = described_class.new(queue_depth: 1, n_bufs: 16, buf_size: 1024)
      listener = TCPServer.new("127.0.0.1", 0)
      pairs = Array.new(24) do
        c = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
        [c, listener.accept]
      end
      fds = pairs.map { |_, s| s.fileno }
      fds.each { |fd| ring.submit_recv_multishot(fd) }
      ring.each_completion(timeout_ms: 0) { |c| raise "unexpected #{c.inspect}" }
      expect(ring.stats[:inflight]).to eq(fds.size)
      # Cancel them all without a wait in between: each cancel's SQE must
      # find room, submitting what is queued when the SQ is full.
      fds.each { |fd| ring.cancel(fd) }
      got = collect_completions(ring, seconds: 5) { |cs| cs.size >= fds.size }
      got += completions_within(ring, 0.1)
      expect(got.map { |c| c[:fd] }.sort).to eq(fds.sort)
      expect(got.map { |c| [c[:op_kind], c[:result]] }.uniq)
        .to eq([[described_class::OP_RECV, -Errno::ECANCELED::Errno]])
      expect(ring.stats[:inflight]).to eq(0)
      # The cancelled recvs are gone: data sent now stays in the sockets.
      pairs.each { |c, _| c.write("x") }
      expect(completions_within(ring, 0.1)).to eq([])
    ensure
      ring&.close
      pairs&.each { |c, s| c.close; s.close }
      listener&.close
    end
  end
end
