# frozen_string_literal: true

# HotpathRing#submit_close: the close that waits for the sends queued before
# it, cancels the recv, goes with the next each_completion and never closes a
# number that names another socket by then; ring.close with closes pending;
# with and without CQE_SKIP_SUCCESS. Real loopback sockets.
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  describe "submit_close" do
    let(:ebadf) { -Errno::EBADF::Errno }

    # Whether the fd number is open in this process (no IO made for it).
    def fd_open?(fd)
      File.readlink("/proc/self/fd/#{fd}")
      true
    rescue Errno::ENOENT
      false
    end

    def triples(completions)
      completions.map { |c| [c[:op_kind], c[:fd], c[:result]] }
    end

    # A listener whose accepted sockets have a tiny send buffer, so a big
    # send stays stuck while the client does not read.
    def small_sndbuf_listener
      TCPServer.new("127.0.0.1", 0).tap { |l| l.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096) }
    end

    # Reads from sock until EOF; returns the bytes (nil at the deadline).
    def read_until_eof(sock, seconds: 10, chunk: 1 << 20, pause: 0)
      data = +"".b
      deadline = hp_now + seconds
      loop do
        return nil if hp_now > deadline

        got = sock.read_nonblock(chunk, exception: false)
        case got
        when :wait_readable then sock.wait_readable(0.5)
        when nil then return data
        else
          data << got
          sleep pause if pause.positive?
        end
      end
    end

    it "cancels the recv and closes the fd with the next each_completion: EOF for the client, the number closed" do
      expect_no_fd_leak do
        _, client, fd = connection
        ring.submit_recv_multishot(fd)
        ring.flush
        closes = ring.stats[:closes]
        expect(ring.submit_close(forget_fd(fd))).to be_nil
        expect(fd_open?(fd)).to be(true) # batched: nothing went to the kernel yet
        got = []
        ring.each_completion(timeout_ms: 2000) { |c| got << c }
        expect(fd_open?(fd)).to be(false)
        expect(client.wait_readable(2)).to be_truthy
        expect(client.read_nonblock(1, exception: false)).to be_nil # EOF
        got += completions_within(ring, 0.05)
        # The recv's end, as with cancel; a successful close yields nothing.
        expect(got).to eq([{ op_kind: k::OP_RECV, fd: fd, result: ecanceled, buf_id: -1, flags: 0 }])
        expect(ring.stats).to include(closes: closes + 1, inflight: 1) # the listener's accept
        ring.close
        @sockets.each(&:close)
      end
    end

    it "lets the sends queued before it go out in full and in order, then closes" do
      listener = small_sndbuf_listener
      _, client, fd = connection(listener: listener)
      ring.submit_recv_multishot(fd)
      payload = Random.bytes(4 << 20) # far more than the socket buffers hold
      ring.submit_send(fd, payload)
      ring.submit_send(fd, "tail") # queued behind: started by the ring when the first ends
      ring.submit_close(forget_fd(fd))
      expect { ring.submit_send(fd, "late") }.to raise_error(IOError, /submit_send: fd #{fd} is being closed/)
      # The client does not read yet: the send is stuck, and the fd stays
      # open (the close waits for it).
      early = completions_within(ring, 0.2)
      expect(triples(early)).to eq([[k::OP_RECV, fd, ecanceled]])
      expect(fd_open?(fd)).to be(true)
      expect(client.wait_readable(0)).to be_truthy # data, not EOF, is waiting
      expect(ring.stats[:closes]).to eq(0)
      # Now it reads, slowly; the ring is driven meanwhile.
      reader = Thread.new { read_until_eof(client, seconds: 20, chunk: 64 << 10, pause: 0.0005) }
      got = []
      deadline = hp_now + 20
      ring.each_completion(timeout_ms: 20) { |c| got << c } while reader.alive? && hp_now < deadline
      data = reader.value
      expect(data).not_to be_nil, "no EOF within 20 s"
      expect(data.bytesize).to eq(payload.bytesize + 4)
      expect(data == payload + "tail").to be(true)
      got += completions_within(ring, 0.05)
      expect(triples(got)).to eq([[k::OP_SEND, fd, payload.bytesize], [k::OP_SEND, fd, 4]])
      expect(fd_open?(fd)).to be(false)
      expect(ring.stats).to include(closes: 1, sends: 2, inflight: 1)
    end

    it "still closes when a queued send fails, after that send's completion" do
      _, client, fd = connection(listener: small_sndbuf_listener)
      client.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii")) # close sends a RST
      ring.submit_send(fd, Random.bytes(4 << 20))
      ring.submit_send(fd, "after")
      ring.submit_close(forget_fd(fd))
      expect(completions_within(ring, 0.1)).to eq([])
      client.close # the peer resets: the send fails
      got = collect_completions(ring) { |cs| cs.size >= 2 }
      got += completions_within(ring, 0.1)
      expect(got.map { |c| [c[:op_kind], c[:fd]] }).to eq([[k::OP_SEND, fd]] * 2)
      expect(got.map { |c| c[:result] }).to all(be_negative)
      expect(fd_open?(fd)).to be(false)
      expect(ring.stats[:closes]).to eq(1)
    end

    it "cancel after submit_close cancels the sends it waits for, and the close follows" do
      _, client, fd = connection(listener: small_sndbuf_listener)
      ring.submit_send(fd, Random.bytes(4 << 20))
      ring.submit_send(fd, "after")
      ring.submit_close(forget_fd(fd))
      expect(completions_within(ring, 0.1)).to eq([])
      ring.cancel(fd)
      got = collect_completions(ring) { |cs| cs.size >= 2 }
      got += completions_within(ring, 0.1)
      expect(triples(got)).to eq([[k::OP_SEND, fd, ecanceled]] * 2)
      expect(fd_open?(fd)).to be(false)
      expect(read_until_eof(client)).not_to be_nil # whatever got through, then EOF
    end

    it "the number is reused by a later accept only once closed; the new connection works" do
      listener = TCPServer.new("127.0.0.1", 0)
      @sockets = [listener]
      _, old_client, fd = connection(listener: listener)
      new_client = Socket.new(:INET, :STREAM) # its number now, while fd is still open
      @sockets << new_client
      ring.submit_recv_multishot(fd)
      old_client.write("old")
      expect(recv_through(ring, fd, 3)).to eq("old")
      ring.submit_close(forget_fd(fd))
      got = collect_completions(ring) { |cs| cs.any? }
      expect(triples(got)).to eq([[k::OP_RECV, fd, ecanceled]])
      new_client.connect(listener.local_address)
      new_fd = accept_through(ring)
      @fds << new_fd
      expect(new_fd).to eq(fd) # the lowest free number: the closed one
      ring.submit_recv_multishot(new_fd)
      new_client.write("new-1")
      expect(recv_through(ring, new_fd, 5)).to eq("new-1")
      ring.submit_send(new_fd, "reply")
      expect(triples(collect_completions(ring) { |cs| cs.any? })).to eq([[k::OP_SEND, new_fd, 5]])
      expect(read_fully(new_client, 5, hp_now + 2)).to eq("reply")
      expect(read_until_eof(old_client)).to eq("") # the old peer got its EOF, nothing else
      expect(completions_within(ring, 0.05)).to eq([])
    end

    it "a connection that arrives before the close went to the kernel gets its own number, whichever" do
      listener = TCPServer.new("127.0.0.1", 0)
      @sockets = [listener]
      _, old_client, fd = connection(listener: listener)
      ring.submit_recv_multishot(fd)
      ring.flush
      ring.submit_close(forget_fd(fd))
      new_client = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
      @sockets << new_client
      got = collect_completions(ring) { |cs| cs.any? { |c| c[:op_kind] == k::OP_ACCEPT } }
      got += completions_within(ring, 0.05)
      acc = got.select { |c| c[:op_kind] == k::OP_ACCEPT }
      expect(acc.size).to eq(1)
      new_fd = acc[0][:result]
      @fds << new_fd
      expect(triples(got - acc)).to eq([[k::OP_RECV, fd, ecanceled]]).or eq([]) # dropped as stale if reused first
      expect(fd_open?(fd)).to be(new_fd == fd)
      ring.submit_recv_multishot(new_fd)
      new_client.write("mine")
      expect(recv_through(ring, new_fd, 4)).to eq("mine")
      expect(read_until_eof(old_client)).to eq("")
    end

    it "a close waiting for sends never closes the number once it names another socket" do
      # Ruby's bug: it closes the fd itself after submit_close, and the
      # number goes to a socket made elsewhere while the old send runs.
      _, old_client, fd = connection(listener: small_sndbuf_listener)
      other = TCPServer.new("127.0.0.1", 0) # its number now, while fd is still open
      @sockets << other
      ring.submit_send(fd, "A" * (4 << 20))
      ring.submit_close(fd)
      expect(completions_within(ring, 0.05)).to eq([])
      new_client, peer = reuse_number_elsewhere(fd, other) # Ruby's bug: close(2) after submit_close
      reader = Thread.new { read_until_eof(old_client) }
      got = collect_completions(ring, seconds: 10) { |cs| cs.any? { |c| c[:op_kind] == k::OP_CLOSE } }
      got += completions_within(ring, 0.05)
      expect(triples(got)).to eq([[k::OP_SEND, fd, 4 << 20], [k::OP_CLOSE, fd, ebadf]])
      expect(reader.value&.bytesize).to eq(4 << 20)
      # The socket that has the number now was not touched.
      new_client.write("still open")
      expect(read_fully(peer, 10, hp_now + 2)).to eq("still open")
      peer.write("both ways")
      expect(read_fully(new_client, 9, hp_now + 2)).to eq("both ways")
      expect(ring.stats[:closes]).to eq(0)
    end

    it "a close waiting for sends is dropped (-EBADF) when the ring accepts a new connection on the number" do
      listener = small_sndbuf_listener
      @sockets = [listener]
      _, old_client, fd = connection(listener: listener)
      new_client = Socket.new(:INET, :STREAM) # its number now, while fd is still open
      @sockets << new_client
      ring.submit_send(fd, "A" * (4 << 20))
      ring.submit_close(fd)
      expect(completions_within(ring, 0.05)).to eq([])
      IO.for_fd(forget_fd(fd)).close # Ruby's bug again
      new_client.connect(listener.local_address)
      got = collect_completions(ring) { |cs| cs.any? { |c| c[:op_kind] == k::OP_ACCEPT } }
      got += completions_within(ring, 0.1)
      expect(triples(got)).to eq([[k::OP_CLOSE, fd, ebadf], [k::OP_ACCEPT, listener.fileno, fd]])
      @fds << fd
      ring.submit_recv_multishot(fd)
      new_client.write("new")
      expect(recv_through(ring, fd, 3)).to eq("new")
      old_client.close # the old send (cancelled, its completion dropped as stale) is gone
      expect(completions_within(ring, 0.1)).to eq([])
      expect(ring.stats[:closes]).to eq(0)
    end

    it "refuses submits on the number until the close went to the kernel; afterwards it is a closed fd" do
      listener, _client, fd = connection
      ring.submit_close(forget_fd(fd))
      {
        submit_send: -> { ring.submit_send(fd, "x") },
        submit_recv_multishot: -> { ring.submit_recv_multishot(fd) },
        submit_accept_multishot: -> { ring.submit_accept_multishot(fd) },
        submit_close: -> { ring.submit_close(fd) }
      }.each do |name, call|
        expect { call.call }.to raise_error(IOError, /#{name}: fd #{fd} is (already )?being closed/), name.to_s
      end
      expect(ring.cancel(fd)).to be_nil # nothing left to cancel: harmless
      ring.flush
      expect(fd_open?(fd)).to be(false)
      expect { ring.submit_send(fd, "x") }.to raise_error(ArgumentError, /not open/)
      expect { ring.submit_recv_multishot(fd) }.to raise_error(ArgumentError, /not open/)
      # A second close, once the first ran, is close(2) twice: EBADF.
      ring.submit_close(fd)
      got = collect_completions(ring) { |cs| cs.any? }
      expect(got).to eq([{ op_kind: k::OP_CLOSE, fd: fd, result: ebadf, buf_id: -1, flags: 0 }])
      # A socket opened elsewhere on the number is an ordinary fd for the ring.
      other_client = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
      @sockets << other_client
      expect(other_client.fileno).to eq(fd)
      other_fd = accept_through(ring)
      @fds << other_fd
      ring.submit_send(fd, "works")
      expect(triples(collect_completions(ring) { |cs| cs.any? })).to eq([[k::OP_SEND, fd, 5]])
      expect(read_fully(IO.for_fd(other_fd, autoclose: false), 5, hp_now + 2)).to eq("works")
    end

    it "a number that is not open yields OP_CLOSE with -EBADF, also far beyond the ring's table" do
      require "objspace"
      ring
      gone = closed_fd_number
      size = ObjectSpace.memsize_of(ring)
      [gone, 1 << 30, (1 << 31) - 1].each { |n| expect(ring.submit_close(n)).to be_nil }
      got = collect_completions(ring) { |cs| cs.size >= 3 }
      got += completions_within(ring, 0.05)
      expect(triples(got)).to eq([[k::OP_CLOSE, gone, ebadf], [k::OP_CLOSE, 1 << 30, ebadf],
                                  [k::OP_CLOSE, (1 << 31) - 1, ebadf]])
      expect(ObjectSpace.memsize_of(ring)).to be < size + (1 << 20) # no table for those numbers
      expect(ring.stats).to include(closes: 3, inflight: 0)
      expect(ring).to be_healthy
    end

    it "closes a fd the ring never saw (a pipe's read end)" do
      expect_no_fd_leak do
        rd, wr = IO.pipe
        rd.autoclose = false # the ring closes it
        fd = rd.fileno
        ring.submit_close(fd)
        expect(ring.each_completion(timeout_ms: 0) { |c| raise "unexpected #{c}" }).to eq(0)
        expect(fd_open?(fd)).to be(false)
        expect { wr.write("x") }.to raise_error(Errno::EPIPE) # no reader left
        wr.close
        ring.close
      end
    end

    it "closes a listener with an armed multishot accept: -ECANCELED, then connections are refused" do
      server = TCPServer.new("127.0.0.1", 0)
      server.autoclose = false # the ring closes the fd
      lfd = server.fileno
      port = server.local_address.ip_port
      ring.submit_accept_multishot(lfd)
      ring.flush
      ring.submit_close(lfd)
      got = collect_completions(ring) { |cs| cs.any? }
      got += completions_within(ring, 0.05)
      expect(triples(got)).to eq([[k::OP_ACCEPT, lfd, ecanceled]])
      expect(fd_open?(lfd)).to be(false)
      expect { TCPSocket.new("127.0.0.1", port).close }.to raise_error(Errno::ECONNREFUSED)
      expect(ring.stats[:inflight]).to eq(0)
    ensure
      server&.close # autoclose false: only the Ruby object
    end

    it "takes an Integer fd only: TypeError for an IO (left open), ArgumentError for a negative one" do
      listener, client, fd = connection
      [listener, client, TCPServer.new("127.0.0.1", 0).tap(&:close)].each do |io|
        expect { ring.submit_close(io) }.to raise_error(TypeError, /submit_close: expected an Integer fd, got TCP/)
      end
      expect(listener).not_to be_closed
      [nil, "3", 3.0, :three].each { |v| expect { ring.submit_close(v) }.to raise_error(TypeError) }
      [-1, 2**31, 2**64].each { |v| expect { ring.submit_close(v) }.to raise_error(ArgumentError, /submit_close/) }
      expect { ring.submit_close }.to raise_error(ArgumentError)
      expect(completions_within(ring, 0.05)).to eq([])
      expect(ring.stats[:closes]).to eq(0)
      client.write("alive")
      ring.submit_recv_multishot(fd)
      expect(recv_through(ring, fd, 5)).to eq("alive")
    end

    describe "ring.close with closes pending" do
      it "closes an fd whose close was never submitted" do
        expect_no_fd_leak do
          listener = TCPServer.new("127.0.0.1", 0)
          client = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
          sock = listener.accept
          sock.autoclose = false
          fd = sock.fileno
          r = k.new(queue_depth: 8, n_bufs: 4, buf_size: 256) # nothing armed, nothing in flight
          r.submit_close(fd)
          r.close
          expect(fd_open?(fd)).to be(false)
          expect(read_until_eof(client)).to eq("")
          [client, listener].each(&:close)
        end
      end

      it "closes an fd whose close waited for a send the ring's close cancelled" do
        expect_no_fd_leak do
          r = k.new(queue_depth: 8, n_bufs: 4, buf_size: 256)
          listener = small_sndbuf_listener
          _, client, fd = open_hotpath_connection(r, listener: listener)
          r.submit_send(fd, Random.bytes(4 << 20))
          r.submit_close(fd)
          expect(completions_within(r, 0.05)).to eq([])
          r.close
          expect(fd_open?(fd)).to be(false)
          expect(read_until_eof(client)).not_to be_nil
          [client, listener].each(&:close)
        end
      end
    end

    it "without CQE_SKIP_SUCCESS (HYPERION_IO_URING_CQE_SKIP=0) the success CQE is dropped, failures still arrive" do
      saved = ENV.fetch("HYPERION_IO_URING_CQE_SKIP", nil)
      begin
        ENV["HYPERION_IO_URING_CQE_SKIP"] = "0"
        plain = k.new(queue_depth: 16, n_bufs: 4, buf_size: 256)
      ensure
        saved ? ENV["HYPERION_IO_URING_CQE_SKIP"] = saved : ENV.delete("HYPERION_IO_URING_CQE_SKIP")
      end
      run_cqe_modes(plain)
    ensure
      plain&.close
    end

    # With a ring whose closes post a success CQE, and with the default one:
    # a successful close yields nothing either way; only the success CQE's
    # accounting (stats[:inflight] until reaped) differs.
    def run_cqe_modes(plain)
      @sockets ||= []
      [[plain, 1], [ring, 0]].each do |r, due|
        listener = TCPServer.new("127.0.0.1", 0)
        @sockets << listener
        _, client, fd = open_hotpath_connection(r, listener: listener)
        @sockets << client
        r.submit_close(fd)
        r.flush
        expect(fd_open?(fd)).to be(false)
        expect(r.stats[:inflight]).to eq(1 + due) # the listener's accept (+ the close's success CQE)
        expect(completions_within(r, 0.1)).to eq([])
        expect(r.stats[:inflight]).to eq(1)
        gone = closed_fd_number
        r.submit_close(gone)
        got = collect_completions(r) { |cs| cs.any? }
        expect(got).to eq([{ op_kind: k::OP_CLOSE, fd: gone, result: ebadf, buf_id: -1, flags: 0 }])
        expect(r.stats).to include(inflight: 1, closes: 2)
        r.cancel(listener.fileno)
        completions_within(r, 0.05)
      end
    end
  end
end
