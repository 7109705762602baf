# frozen_string_literal: true

# The common set-up of the HotpathRing specs that drive rings against real
# loopback sockets (hotpath_api_spec, hotpath_lifecycle_spec,
# hotpath_submit_close_spec): skip where the hot path does not work; after
# each example close the sockets, fds and rings it made and check that no fd
# leaked.
RSpec.shared_context "hotpath ring" do
  include HotpathHelpers

  let(:k) { described_class }
  let(:ecanceled) { -Errno::ECANCELED::Errno }

  before do
    require_hotpath!
    hotpath_fd_snapshot
  end

  after do
    @sockets&.each { |s| s.close unless s.closed? }
    @fds&.each { |fd| close_fd(fd) }
    @ring&.close
    @rings&.each(&:close)
    hotpath_expect_no_new_fds
  end

  # The example's ring, made on first use.
  def ring
    @ring ||= k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096)
  end

  # Opens a connection accepted through +r+ (the example's ring unless
  # given); everything is closed after the example (fds the example closes
  # itself are taken off the list).
  def connection(r = ring, listener: nil)
    l, client, fd = open_hotpath_connection(r, listener: listener)
    (@sockets ||= []).push(l, client)
    (@fds ||= []) << fd
    [l, client, fd]
  end

  # A connection accepted through +r+ whose server side has a small send
  # buffer, so sends to a client that does not read stay queued and in
  # flight (and short sends get continued). Returns [client, fd]. (Not a
  # small receive buffer as well: loopback then delivers the rest at a
  # crawl, too slow under valgrind, and with SEND_ZC a few KB per
  # retransmit timeout, measured on 6.18.)
  def stalled(r = ring)
    l = TCPServer.new("127.0.0.1", 0)
    l.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096)
    _, client, fd = connection(r, listener: l)
    [client, fd]
  end

  def forget_fd(fd)
    @fds.delete(fd)
  end

  # Closes +fd+ behind the ring's back (close(2), no cancel) and has a
  # client of +other+, a listener made elsewhere, take its number. Returns
  # [that client, the peer +other+ accepted for it].
  def reuse_number_elsewhere(fd, other)
    IO.for_fd(forget_fd(fd)).close
    new_client = TCPSocket.new("127.0.0.1", other.local_address.ip_port)
    @sockets << new_client
    expect(new_client.fileno).to eq(fd)
    peer = other.accept
    @sockets << peer
    [new_client, peer]
  end
end
