# frozen_string_literal: true

require "socket"
require "timeout"

# A listener closed elsewhere (another thread, a trap handler, a fiber)
# while a ring's accept waits on it. Nothing in the kernel tells the ring:
# its request holds its own reference to the socket, which stays bound and
# goes on accepting. The rings notice by looking at the listener while they
# wait (wait.c's watch), cancel, and let the port go.
RSpec.describe "a listener closed under a waiting accept" do
  include HotpathHelpers
  include SchedulerHelpers

  # The bound on noticing (250 ms), widened where instrumentation slows
  # every wakeup down; never skipped.
  def notice_bound
    case ENV["HYPERION_IO_URING_SPEC_UNDER"]
    when "valgrind" then 5.0
    when "asan" then 0.75
    else 0.25
    end
  end

  # Binds a fresh listener on +port+ (raises Errno::EADDRINUSE while the old
  # socket is still alive), then closes it.
  def expect_port_free(port)
    again = TCPServer.new("127.0.0.1", port)
    again.close
  end

  # A connect to a port nobody listens on is refused.
  def expect_refused(port)
    expect { TCPSocket.new("127.0.0.1", port).close }.to raise_error(Errno::ECONNREFUSED)
  end

  # Bounds a call the unfixed gem would never end (Timeout reaches a
  # waiting accept), so a failure fails instead of hanging the suite.
  def bounded(&block)
    Timeout.timeout(10 * notice_bound + 5, &block)
  end

  def close_later(io, delay)
    Thread.new do
      sleep delay
      closed_at = monotonic
      io.close
      closed_at
    end
  end

  describe Hyperion::IOUring::Ring do
    # Made before the example body, so the fd-leak checks never see it appear.
    before do
      require_io_uring!
      @ring = described_class.new(queue_depth: 8)
    end

    after { @ring&.close }

    attr_reader :ring

    it "raises IOError within 250 ms when its IO listener is closed by another thread, and the port is free" do
      expect_no_fd_leak do
        server = TCPServer.new("127.0.0.1", 0)
        port = server.local_address.ip_port
        closer = close_later(server, 0.2)
        expect { bounded { ring.accept(server) } }.to raise_error(IOError)
        took = monotonic - closer.value
        expect(took).to be < notice_bound
        expect_ring_idle(ring)
        expect_refused(port)
        expect_port_free(port)
      end
    end

    it "raises Errno::EBADF within 250 ms when its Integer fd listener is closed, also with timeout:" do
      expect_no_fd_leak do
        [nil, 30].each do |timeout|
          server = TCPServer.new("127.0.0.1", 0)
          port = server.local_address.ip_port
          closer = close_later(server, 0.2)
          expect { bounded { ring.accept(server.fileno, timeout: timeout) } }.to raise_error(Errno::EBADF, /closed/)
          expect(monotonic - closer.value).to be < notice_bound
          expect_ring_idle(ring)
          expect_port_free(port)
        end
      end
    end

    it "raises Errno::EBADF when the fd number was closed and reused for another socket meanwhile" do
      expect_no_fd_leak do
        server = TCPServer.new("127.0.0.1", 0)
        port = server.local_address.ip_port
        fd = server.fileno
        other = nil
        reuser = Thread.new do
          sleep 0.2
          server.close
          other = Socket.new(:INET, :STREAM) # the lowest free number: fd again
          monotonic
        end
        expect { bounded { ring.accept(fd) } }.to raise_error(Errno::EBADF)
        expect(monotonic - reuser.value).to be < notice_bound
        expect(other.fileno).to eq(fd)
        expect_port_free(port)
      ensure
        other&.close
      end
    end

    it "does not accept a client that connects after the close (the client is refused or reset)" do
      expect_no_fd_leak do
        server = TCPServer.new("127.0.0.1", 0)
        port = server.local_address.ip_port
        late = nil
        closer = Thread.new do
          sleep 0.2
          server.close
          # Connects at once, before the ring can have looked: the kernel's
          # socket is still alive then, so the connection may complete.
          begin
            late = TCPSocket.new("127.0.0.1", port)
          rescue Errno::ECONNREFUSED
            late = :refused
          end
        end
        expect { bounded { ring.accept(server) } }.to raise_error(IOError)
        closer.join
        if late.is_a?(TCPSocket)
          # Whatever the handshake got, nobody serves it: reset or EOF.
          expect(late.wait_readable(2)).to be_truthy
          begin
            expect(late.read_nonblock(1, exception: false)).to be_nil
          rescue Errno::ECONNRESET
            nil
          end
          late.close
        end
        expect_refused(port)
        expect_port_free(port)
      end
    end

    it "raises IOError when a trap handler closes the listener while the main thread's accept waits" do
      skip "traps run on the main thread" unless Thread.current == Thread.main
      server = TCPServer.new("127.0.0.1", 0)
      port = server.local_address.ip_port
      old = Signal.trap("USR2") { server.close }
      kicker = Thread.new do
        sleep 0.2
        t = monotonic
        Process.kill("USR2", Process.pid)
        t
      end
      expect { bounded { ring.accept(server) } }.to raise_error(IOError)
      expect(monotonic - kicker.value).to be < notice_bound
      expect_ring_idle(ring)
      expect_port_free(port)
    ensure
      Signal.trap("USR2", old) if old
      server&.close
    end

    it "keeps accepting while the listener stays open (the watch only wakes, it never cancels an open listener)" do
      with_listener do |server, port|
        client = nil
        connector = Thread.new do
          sleep 0.5 # several of the watch's wakeups pass first
          client = connect(port)
        end
        fd = ring.accept(server, timeout: 5)
        connector.join
        expect(fd).to be_a(Integer)
        sock = socket_for(fd)
        expect(sock.remote_address.ip_port).to eq(client.local_address.ip_port)
      ensure
        sock&.close
        client&.close
      end
    end

    it "raises IOError under a Fiber scheduler when another thread closes the listener" do
      server = TCPServer.new("127.0.0.1", 0)
      port = server.local_address.ip_port
      outcome = run_scheduled(:test, limit: 10 * notice_bound + 5) do
        r = described_class.new(queue_depth: 4)
        closer = close_later(server, 0.2)
        begin
          r.accept(server)
          :accepted
        rescue IOError => e
          [e.class, monotonic - closer.value]
        ensure
          r.close
        end
      end
      expect(outcome[0]).to eq(IOError)
      expect(outcome[1]).to be < notice_bound
      expect_port_free(port)
    ensure
      server&.close
    end
  end

  describe Hyperion::IOUring::HotpathRing do
    before do
      require_hotpath!
      hotpath_fd_snapshot
      @ring = described_class.new(queue_depth: 16, n_bufs: 16, buf_size: 4096)
    end

    after do
      @ring&.close
      hotpath_expect_no_new_fds
    end

    attr_reader :ring

    [["each_completion(timeout_ms: nil)", nil], ["each_completion(timeout_ms: 1000)", 1000]].each do |what, tmo|
      it "ends an armed multishot accept with a final completion when another thread closes the listener " \
         "(#{what} waiting), and frees the port" do
        server = TCPServer.new("127.0.0.1", 0)
        port = server.local_address.ip_port
        fd = server.fileno
        ring.submit_accept_multishot(server)
        ring.flush
        closer = close_later(server, 0.2)
        got = []
        deadline = monotonic + 5
        got_at = nil
        while got.empty? && monotonic < deadline
          ring.each_completion(timeout_ms: tmo) { |c| got << c }
          got_at = monotonic
        end
        expect(got.size).to eq(1), got.inspect
        expect(got[0][:op_kind]).to eq(described_class::OP_ACCEPT)
        expect(got[0][:fd]).to eq(fd)
        expect([-Errno::EBADF::Errno, -Errno::ECANCELED::Errno]).to include(got[0][:result])
        expect(got[0][:flags] & HotpathHelpers::IORING_CQE_F_MORE).to eq(0)
        expect(got_at - closer.value).to be < notice_bound
        expect(ring.stats[:inflight]).to eq(0)
        expect_refused(port)
        expect_port_free(port)
      end
    end

    it "notices while it is busy with other completions (each wait ends early, never a whole idle slice)" do
      server = TCPServer.new("127.0.0.1", 0)
      port = server.local_address.ip_port
      ring.submit_accept_multishot(server)
      client = TCPSocket.new("127.0.0.1", port)
      cfd = accept_through(ring)
      ring.submit_recv_multishot(cfd)
      stop = false
      pinger = Thread.new do
        until stop
          client.write("x")
          sleep 0.005
        end
      end
      closer = close_later(server, 0.2)
      ended = nil
      deadline = monotonic + 5
      until ended || monotonic > deadline
        ring.each_completion(timeout_ms: 1000) do |c|
          if c[:op_kind] == described_class::OP_RECV && c[:result].positive?
            ring.release_buffer(c[:buf_id])
          elsif c[:op_kind] == described_class::OP_ACCEPT
            ended = [c, monotonic]
          end
        end
      end
      expect(ended).not_to be_nil
      expect(ended[0][:result]).to be < 0
      expect(ended[1] - closer.value).to be < notice_bound
      expect_refused(port)
      expect_port_free(port)
    ensure
      stop = true
      pinger&.join
      ring.cancel(cfd) if cfd
      close_fd(cfd)
      client&.close
    end

    it "re-arming a listener whose accept is still being cancelled leaves exactly one accept armed" do
      with_listener do |server, port|
        ring.submit_accept_multishot(server)
        ring.flush
        ring.cancel(server)
        ring.submit_accept_multishot(server) # before the cancel's end was reaped
        completions_within(ring, 0.2)
        expect(ring.stats[:inflight]).to eq(1)
        clients = Array.new(3) { TCPSocket.new("127.0.0.1", port) }
        got = collect_completions(ring) { |cs| cs.count { |c| c[:op_kind] == described_class::OP_ACCEPT } >= 3 }
        got += completions_within(ring, 0.1)
        accepts = got.select { |c| c[:op_kind] == described_class::OP_ACCEPT }
        expect(accepts.map { |c| c[:result] }).to all(be >= 0)
        expect(accepts.size).to eq(3)
        accepts.each { |c| close_fd(c[:result]) }
        ring.cancel(server)
        ends = completions_within(ring, 0.2)
        expect(ends.map { |c| [c[:op_kind], c[:result]] }).to eq([[described_class::OP_ACCEPT, -Errno::ECANCELED::Errno]])
        expect(ring.stats[:inflight]).to eq(0)
        clients.each(&:close)
      end
    end
  end
end
