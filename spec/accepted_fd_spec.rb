# frozen_string_literal: true

require "fcntl"
require "io/nonblock"

# The fds the rings accept carry the flags Ruby gives its own accepted
# sockets (TCPServer#accept, accept_nonblock): O_NONBLOCK and close-on-exec.
# Wrapped in a Ruby IO, such an fd is read through the Fiber scheduler
# without holding up the thread, whichever scheduler it is. A blocking fd is
# not: a scheduler with only io_wait (spec/support's TestScheduler) lets
# readpartial/read/gets/sysread/recv block the thread in read(2), and so
# does BasicSocket#recv under async (io-event's io_read hook covers IO#read
# and friends, not recv). The last example keeps that evidence.
RSpec.describe "Accepted fds (O_NONBLOCK like Ruby's own)" do
  include SchedulerHelpers
  include HotpathHelpers

  before { require_io_uring! }

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  def fl(fd) = IO.for_fd(fd, autoclose: false).fcntl(Fcntl::F_GETFL)
  def fdfl(fd) = IO.for_fd(fd, autoclose: false).fcntl(Fcntl::F_GETFD)

  it "Ring#accept returns an O_NONBLOCK, close-on-exec fd; nonblock: false a blocking one" do
    with_listener do |listener, port|
      expect_no_fd_leak do
        ring = Hyperion::IOUring::Ring.new(queue_depth: 8)
        c1 = TCPSocket.new("127.0.0.1", port)
        fd1 = ring.accept(listener, timeout: 2)
        c2 = TCPSocket.new("127.0.0.1", port)
        fd2 = ring.accept(listener.fileno, timeout: 2, nonblock: false)
        c3 = TCPSocket.new("127.0.0.1", port)
        fd3 = ring.accept(listener, nonblock: true)
        c4 = TCPSocket.new("127.0.0.1", port)
        ruby_own = listener.accept

        expect(ruby_own.nonblock?).to be(true) # what Ruby itself hands out
        expect(fl(fd1) & File::NONBLOCK).not_to eq(0)
        expect(fl(fd3) & File::NONBLOCK).not_to eq(0)
        expect(fl(fd2) & File::NONBLOCK).to eq(0)
        [fd1, fd2, fd3].each { |fd| expect(fdfl(fd) & Fcntl::FD_CLOEXEC).not_to eq(0) }
        expect(fl(fd1) & ~File::NONBLOCK).to eq(fl(fd2))
      ensure
        [fd1, fd2, fd3].each { |fd| IO.for_fd(fd).close if fd.is_a?(Integer) }
        [c1, c2, c3, c4, ruby_own].each { |s| s&.close }
        ring&.close
      end
    end
  end

  it "HotpathRing's multishot accept gives O_NONBLOCK, close-on-exec fds" do
    require_hotpath!
    with_listener do |listener, port|
      expect_no_fd_leak do
        ring = Hyperion::IOUring::HotpathRing.new(queue_depth: 16, n_bufs: 8, buf_size: 256)
        ring.submit_accept_multishot(listener)
        clients = Array.new(2) { TCPSocket.new("127.0.0.1", port) }
        fds = []
        deadline = now + 3
        while fds.size < 2 && now < deadline
          ring.each_completion(timeout_ms: 100, raw: true) do |op, _fd, res, _b, _f|
            fds << res if op == Hyperion::IOUring::HotpathRing::OP_ACCEPT && res >= 0
          end
        end
        expect(fds.size).to eq(2)
        fds.each do |fd|
          expect(fl(fd) & File::NONBLOCK).not_to eq(0)
          expect(fdfl(fd) & Fcntl::FD_CLOEXEC).not_to eq(0)
        end
      ensure
        ring&.close
        fds&.each { |fd| IO.for_fd(fd).close }
        clients&.each(&:close)
      end
    end
  end

  ACCEPTED_FD_READERS = {
    "readpartial" => ->(s) { s.readpartial(100) },
    "read(n)" => ->(s) { s.read(6) },
    "gets" => ->(s, *) { s.gets },
    "recv" => ->(s) { s.recv(100) }
  }.freeze

  # Accepts through a Ring inside the scheduler, wraps the fd in a Socket and
  # reads it with +reader+ while a ticker fiber runs; the client thread writes
  # after 0.3 s. Returns [data, ticker window over the read].
  def read_accepted(kind, reader, nonblock:)
    with_listener do |listener, port|
      client = nil
      writer = Thread.new do
        client = TCPSocket.new("127.0.0.1", port)
        sleep 0.3
        client.write("hello\n")
      end
      run_scheduled(kind, limit: 5) do
        ring = Hyperion::IOUring::Ring.new(queue_depth: 8)
        fd = ring.accept(listener, timeout: 2, nonblock: nonblock)
        ring.close
        sock = Socket.for_fd(fd)
        ticker = SchedulerHelpers::Ticker.new
        t0 = now
        data = reader.call(sock)
        t1 = now
        ticker.stop
        sock.close
        [data, ticker.window(t0, t1), t1 - t0]
      end
    ensure
      writer&.join
      client&.close
    end
  end

  SchedulerHelpers::SCHEDULERS.each do |kind, desc|
    context "under #{desc}" do
      ACCEPTED_FD_READERS.each do |name, reader|
        it "#{name} on a wrapped Ring#accept fd leaves the thread to other fibers" do
          expect_no_fd_leak do
            data, window, span = read_accepted(kind, reader, nonblock: true)
            expect(data).to start_with("hello")
            expect(span).to be > 0.2
            expect(window[:count]).to be >= 10, "#{name}: #{window[:count]} ticks in #{span.round(3)}s"
            expect(window[:max_gap]).to be < 0.1, "#{name}: the thread was held for #{window[:max_gap].round(3)}s"
          end
        end
      end
    end
  end

  it "why: a blocking fd (nonblock: false) holds the whole thread under an io_wait-only scheduler" do
    expect_no_fd_leak do
      data, window, span = read_accepted(:test, ACCEPTED_FD_READERS["readpartial"], nonblock: false)
      expect(data).to eq("hello\n")
      expect(span).to be > 0.2
      expect(window[:count]).to be <= 1
      expect(window[:max_gap]).to be > 0.2
    end
  end
end
