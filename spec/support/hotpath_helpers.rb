# frozen_string_literal: true

require "etc"
require "socket"
require_relative "full_io"

# Helpers for the HotpathRing specs (spec/hotpath_*_spec.rb): skipping where
# the hot path does not work, pumping a ring with a deadline, and an echo
# server driven by one ring with clients in threads.
module HotpathHelpers
  include FullIO # read_fully, write_fully

  IORING_CQE_F_MORE = 1 << 1

  def hotpath_class
    Hyperion::IOUring::HotpathRing
  end

  def require_hotpath!
    return if Hyperion::IOUring.hotpath_supported?

    skip "io_uring hot path unsupported here: #{Hyperion::IOUring.hotpath_unsupported_reason}"
  end

  def hp_now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  IORING_SETUP_DEFER_TASKRUN = 1 << 13

  # Whether rings here are set up with DEFER_TASKRUN (Linux 6.1+, unless
  # HYPERION_IO_URING_SETUP=coop or plain): then task_work (an accept, a
  # recv's copy) runs only inside io_uring_enter on the ring; without it,
  # on any return of the owner thread to user space.
  def hotpath_defer_taskrun?
    return @hotpath_defer_taskrun unless @hotpath_defer_taskrun.nil?

    r = hotpath_class.new(queue_depth: 2, n_bufs: 2, buf_size: 64)
    @hotpath_defer_taskrun = (r.stats[:setup_flags] & IORING_SETUP_DEFER_TASKRUN).nonzero? ? true : false
  ensure
    r&.close
  end

  # Whether a ring closed while its owner task lives, with a recv in flight,
  # unmaps its recv buffers at once (hotpath.c, hio_hp_close): only a
  # DEFER_TASKRUN ring on Linux 6.17+. Elsewhere they wait for the owner
  # task to be gone (HotpathRing.deferred_bytes counts them meanwhile).
  def hotpath_buffers_freed_at_close?
    release = ENV["HYPERION_IO_URING_KERNEL_RELEASE"]
    release = Etc.uname[:release] if release.nil? || release.empty?
    hotpath_defer_taskrun? && Gem::Version.new(release[/\A\d+\.\d+/] || "0") >= Gem::Version.new("6.17")
  end

  # Closes sock with an RST (SO_LINGER 0): the peer's sends then fail at
  # once, whatever was queued for it.
  def reset_peer(sock)
    sock.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
    sock.close
  end

  # Reads n bytes on client while reaping ring (what a sender's specs need:
  # the client reads, the ring's sends go on); returns [bytes, completions].
  # Raises after +seconds+ (4x under valgrind) instead of hanging.
  def drain_sent(client, n, ring, seconds: 20)
    data = +"".b
    got = []
    deadline = hp_now + seconds * (ENV["HYPERION_IO_URING_SPEC_UNDER"] == "valgrind" ? 4 : 1)
    while data.bytesize < n
      raise "got #{data.bytesize} of #{n} bytes" if hp_now > deadline

      ring.each_completion(timeout_ms: 1) { |c| got << c }
      chunk = client.read_nonblock(1 << 20, exception: false)
      data << chunk if chunk.is_a?(String)
    end
    [data, got]
  end

  # Reaps completions (as Hashes) until the block returns truthy for the
  # list gathered so far, or +seconds+ pass. Returns the list; never hangs.
  def collect_completions(ring, seconds: 5, timeout_ms: 20)
    got = []
    deadline = hp_now + seconds
    until yield(got)
      raise "gave up after #{seconds}s with #{got.size} completions: #{got.last(5).inspect}" if hp_now > deadline

      ring.each_completion(timeout_ms: timeout_ms) { |c| got << c }
    end
    got
  end

  # Every completion that arrives within +seconds+ (waits the whole time).
  def completions_within(ring, seconds)
    got = []
    deadline = hp_now + seconds
    while (left = deadline - hp_now) > 0
      ring.each_completion(timeout_ms: [left * 1000, 1].max) { |c| got << c }
    end
    got
  end

  # Accepts one connection through the ring's (already armed) multishot
  # accept and returns the new fd.
  def accept_through(ring, seconds: 5)
    got = collect_completions(ring, seconds: seconds) { |cs| cs.any? { |c| c[:op_kind] == hotpath_class::OP_ACCEPT } }
    acc = got.select { |c| c[:op_kind] == hotpath_class::OP_ACCEPT }
    raise "expected one accept, got #{got.inspect}" unless acc.size == 1 && got.size == 1 && acc[0][:result] >= 0

    acc[0][:result]
  end

  # Receives exactly +n+ bytes for +fd+ (releasing every buffer); fails on
  # anything else arriving.
  def recv_through(ring, fd, n, seconds: 5)
    data = +"".b
    deadline = hp_now + seconds
    while data.bytesize < n
      raise "recv timed out after #{data.bytesize} of #{n} bytes" if hp_now > deadline

      ring.each_completion(timeout_ms: 20) do |c|
        unless c[:op_kind] == hotpath_class::OP_RECV && c[:fd] == fd && c[:result].positive?
          raise "unexpected completion #{c.inspect} while receiving on fd #{fd}"
        end

        data << ring.take_buffer(c[:buf_id], c[:result])
      end
    end
    data
  end

  # A fd number that is not open (it was a moment ago).
  def closed_fd_number
    r, w = IO.pipe
    fd = r.fileno
    r.close
    w.close
    fd
  end

  # A listener armed on ring, a connected client and the fd the ring
  # accepted for it. The caller closes all three.
  def open_hotpath_connection(ring, listener: nil)
    listener ||= TCPServer.new("127.0.0.1", 0)
    ring.submit_accept_multishot(listener)
    client = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
    [listener, client, accept_through(ring)]
  end

  # Closes a fd number the spec owns (accepted through a ring).
  def close_fd(fd)
    IO.for_fd(fd).close if fd.is_a?(Integer) && fd >= 0
  rescue Errno::EBADF
    nil
  end

  # Per-example fd-leak check for a whole example group: call
  # #hotpath_fd_snapshot in a before hook and #hotpath_expect_no_new_fds at
  # the end of the after hook that closes the example's sockets and rings.
  def hotpath_fd_snapshot
    GC.start(full_mark: true, immediate_sweep: true)
    @hotpath_fds_before = open_fds
  end

  def hotpath_expect_no_new_fds
    return unless @hotpath_fds_before

    GC.start(full_mark: true, immediate_sweep: true)
    leaked = open_fds.reject { |fd, target| @hotpath_fds_before[fd] == target }
    expect(leaked).to be_empty, "fds leaked: #{leaked.inspect}"
  end

  # An echo server on one HotpathRing, driven from the calling (owner)
  # thread: multishot accept; multishot recv per connection; each received
  # buffer is sent straight back; at EOF the fd is cancelled and closed
  # either at once or after the rest of the batch (alternating per
  # connection, so both orders run). Records everything it saw so the spec
  # can compare it with what the clients did.
  class EchoServer
    attr_reader :ring, :errors, :accepted, :eofs, :recv_completions, :recv_bytes, :send_calls,
                :send_bytes, :send_completions, :max_recv_len, :buf_ids, :closed_immediately,
                :closed_later

    # hold_buffers: copy_buffer in the block and release every buffer only
    # after the batch (makes the buffer ring run dry with few buffers).
    def initialize(ring, listener, hold_buffers: false)
      @ring = ring
      @listener = listener
      @hold_buffers = hold_buffers
      @conns = {}
      @errors = []
      @accepted = []
      @eofs = 0
      @recv_completions = 0
      @recv_bytes = 0
      @send_calls = 0
      @send_bytes = 0
      @send_completions = 0
      @max_recv_len = 0
      @buf_ids = {}
      @closed_immediately = 0
      @closed_later = 0
      @to_release = []
      @to_close = []
      @k = Hyperion::IOUring::HotpathRing
    end

    def open_connections
      @conns.size
    end

    # Serves until the block returns true (checked between batches) or the
    # deadline (monotonic seconds) passes; returns whether the block did.
    def run(deadline)
      @ring.submit_accept_multishot(@listener)
      loop do
        return true if yield
        return false if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        @ring.each_completion(timeout_ms: 20) { |c| handle(c) }
        @to_release.each { |bid| @ring.release_buffer(bid) }
        @to_release.clear
        close_deferred
      end
    end

    # Closes whatever is still open (after a failure).
    def shutdown
      @conns.each_key do |fd|
        @ring.cancel(fd) unless @ring.closed?
        IO.for_fd(fd).close
      rescue StandardError
        nil
      end
      @conns.clear
    end

    private

    Conn = Struct.new(:pending_sends, :eof, :mode)

    def handle(c)
      case c[:op_kind]
      when @k::OP_ACCEPT then on_accept(c)
      when @k::OP_RECV then on_recv(c)
      when @k::OP_SEND then on_send(c)
      else @errors << "unexpected completion #{c.inspect}"
      end
    end

    def on_accept(c)
      return @errors << "accept failed: #{c.inspect}" if c[:result].negative?

      fd = c[:result]
      @errors << "fd #{fd} accepted while still open" if @conns.key?(fd)
      @accepted << fd
      @conns[fd] = Conn.new([], false, @accepted.size.even? ? :immediate : :later)
      @ring.submit_recv_multishot(fd)
    end

    def on_recv(c)
      fd = c[:fd]
      conn = @conns[fd]
      return @errors << "recv for fd #{fd} that is not open: #{c.inspect}" unless conn
      return @errors << "recv on fd #{fd} after its EOF: #{c.inspect}" if conn.eof

      res = c[:result]
      if res.positive?
        @recv_completions += 1
        @recv_bytes += res
        @max_recv_len = res if res > @max_recv_len
        @buf_ids[c[:buf_id]] = true
        data = if @hold_buffers
                 @to_release << c[:buf_id]
                 @ring.copy_buffer(c[:buf_id], res)
               else
                 @ring.take_buffer(c[:buf_id], res)
               end
        @ring.submit_send(fd, data)
        conn.pending_sends << res
        @send_calls += 1
      elsif res.zero?
        @eofs += 1
        conn.eof = true
        finish(fd, conn)
      else
        @errors << "recv error on fd #{fd}: #{c.inspect}"
        conn.eof = true
        finish(fd, conn)
      end
    end

    def on_send(c)
      fd = c[:fd]
      conn = @conns[fd]
      return @errors << "send completion for fd #{fd} that is not open: #{c.inspect}" unless conn

      @send_completions += 1
      want = conn.pending_sends.shift
      if c[:result] == want
        @send_bytes += want
      else
        @errors << "send on fd #{fd}: result #{c[:result]}, expected #{want.inspect}"
      end
      finish(fd, conn) if conn.eof
    end

    # At EOF (and once its sends are done): cancel, then close at once or
    # after the batch.
    def finish(fd, conn)
      return unless conn.pending_sends.empty?

      @ring.cancel(fd)
      if conn.mode == :immediate
        IO.for_fd(fd).close
        @conns.delete(fd)
        @closed_immediately += 1
      else
        @to_close << fd
      end
    end

    def close_deferred
      @to_close.each do |fd|
        IO.for_fd(fd).close
        @conns.delete(fd)
        @closed_later += 1
      end
      @to_close.clear
    end
  end
end
