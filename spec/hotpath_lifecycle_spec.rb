# frozen_string_literal: true

require "timeout"

# Raised into a thread blocked in a HotpathRing, to tell it from anything else.
HotpathSpecInterrupt = Class.new(StandardError)

# HotpathRing's waits, interrupts, cancel/close, GC, fd-number reuse, fork
# and thread guards, against real loopback sockets.
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  describe "timeouts" do
    it "returns 0 after about timeout_ms when nothing completes" do
      connection # an armed accept is in flight, but nothing completes
      yielded = []
      n = nil
      t = elapsed { n = ring.each_completion(timeout_ms: 200) { |c| yielded << c } }
      expect(n).to eq(0)
      expect(yielded).to eq([])
      expect(t).to be_between(0.18, 1.0)
    end

    it "waits 100 ms by default" do
      ring
      t = elapsed { expect(ring.each_completion { raise "nothing should complete" }).to eq(0) }
      expect(t).to be_between(0.09, 0.8)
    end

    it "returns at once with timeout_ms: 0, yet reaps what the kernel finished" do
      listener, = connection
      t = elapsed { expect(ring.each_completion(timeout_ms: 0) { raise "nothing pending" }).to eq(0) }
      expect(t).to be < 0.05
      client = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
      @sockets << client
      got = []
      deadline = hp_now + 2
      while got.empty? && hp_now < deadline
        t = elapsed { ring.each_completion(timeout_ms: 0) { |c| got << c } }
        expect(t).to be < 0.05
        sleep 0.005 if got.empty?
      end
      expect(got.map { |c| c[:op_kind] }).to eq([k::OP_ACCEPT])
      @fds << got[0][:result]
    end

    it "waits for min_complete completions" do
      listener, = connection
      port = listener.local_address.ip_port
      connector = Thread.new do
        3.times.map do
          sleep 0.05
          TCPSocket.new("127.0.0.1", port)
        end
      end
      got = []
      t = elapsed { expect(ring.each_completion(min_complete: 3, timeout_ms: 3000) { |c| got << c }).to eq(3) }
      @sockets.concat(connector.value)
      @fds.concat(got.map { |c| c[:result] })
      expect(got.map { |c| c[:op_kind] }).to eq([k::OP_ACCEPT] * 3)
      expect(t).to be_between(0.12, 2.5)
    end

    it "counts sends the ring starts itself toward min_complete (no waiting out the timeout)" do
      _, client, fd = connection
      # Each send on one fd starts only when the one before it completes.
      3.times { |i| ring.submit_send(fd, "s#{i}") }
      got = []
      t = elapsed { expect(ring.each_completion(min_complete: 3, timeout_ms: 2000) { |c| got << c[:result] }).to eq(3) }
      expect(got).to eq([2, 2, 2])
      expect(t).to be < 0.5
      3.times { |i| ring.submit_send(fd, "t#{i}") }
      n = Timeout.timeout(2) { ring.each_completion(min_complete: 3, timeout_ms: nil) { nil } }
      expect(n).to eq(3)
      expect(read_fully(client, 12, hp_now + 2)).to eq("s0s1s2t0t1t2")
    end

    it "ignores a signal during the wait: the handler runs, the ring stays healthy" do
      ring
      hits = 0
      old = trap("USR2") { hits += 1 }
      begin
        killer = Thread.new do
          sleep 0.05
          Process.kill("USR2", Process.pid)
        end
        n = nil
        t = elapsed { n = ring.each_completion(timeout_ms: 300) { raise "nothing should complete" } }
        killer.join
        expect(n).to eq(0)
        expect(hits).to eq(1)
        expect(t).to be_between(0.25, 1.5) # the wait went on after the handler
        expect(ring).to be_healthy
      ensure
        trap("USR2", old || "DEFAULT")
      end
    end
  end

  describe "interrupts" do
    it "Thread#raise interrupts each_completion(timeout_ms: nil) within 100 ms, losing no completion" do
      _, client, fd = connection
      ring.submit_recv_multishot(fd) # queued before any interrupt
      target = Thread.current
      received = +"".b
      markers = []
      5.times do |i|
        marker = "before-raise-#{i};"
        markers << marker
        raised_at = nil
        raiser = Thread.new do
          sleep 0.05
          client.write(marker) # a completion races the interrupt
          raised_at = hp_now
          target.raise(HotpathSpecInterrupt, "interrupt #{i}")
        end
        rescued_at = nil
        begin
          # Only stops on the interrupt: a recv completion is consumed and the
          # wait goes on (min_complete is above anything that can come).
          loop do
            ring.each_completion(timeout_ms: nil, min_complete: 1000) do |c|
              raise "unexpected #{c.inspect}" unless c[:op_kind] == k::OP_RECV && c[:result].positive?

              received << ring.take_buffer(c[:buf_id], c[:result])
            end
          end
        rescue HotpathSpecInterrupt
          rescued_at = hp_now
        end
        raiser.join
        expect(rescued_at - raised_at).to be < 0.1
      end
      expect(ring).to be_healthy
      client.write("after-raise;")
      want = markers.join + "after-raise;"
      rest = recv_through(ring, fd, want.bytesize - received.bytesize)
      expect(received + rest).to eq(want)
      expect(completions_within(ring, 0.05)).to eq([])
      expect(ring.stats[:buffers_in_use]).to eq(0)
    end

    it "Timeout.timeout interrupts each_completion(timeout_ms: nil) and the ring still works" do
      _, client, fd = connection
      ring.submit_recv_multishot(fd)
      t = elapsed do
        expect { Timeout.timeout(0.2) { ring.each_completion(timeout_ms: nil) { |c| raise "unexpected #{c}" } } }
          .to raise_error(Timeout::Error)
      end
      expect(t).to be_between(0.19, 0.3)
      expect(ring).to be_healthy
      client.write("after-timeout")
      expect(recv_through(ring, fd, 13)).to eq("after-timeout")
      ring.submit_send(fd, "reply")
      got = collect_completions(ring) { |cs| cs.any? }
      expect(got).to eq([{ op_kind: k::OP_SEND, fd: fd, result: 5, buf_id: -1, flags: 0 }])
      expect(read_fully(client, 5, hp_now + 2)).to eq("reply")
    end
  end

  describe "the block" do
    it "yields the rest of a batch on the next call when the block raises" do
      _, client, fd = connection
      [1, 2, 3, 4, 5].each { |n| ring.submit_send(fd, "x" * n) }
      seen = []
      expect do
        ring.each_completion(min_complete: 5, timeout_ms: 3000) do |c|
          seen << c[:result]
          raise HotpathSpecInterrupt, "from the block" if seen.size == 1
        end
      end.to raise_error(HotpathSpecInterrupt)
      expect(seen).to eq([1])
      expect(ring.stats[:queued]).to eq(4)
      rest = []
      expect(ring.each_completion(timeout_ms: 0) { |c| rest << c }).to eq(4)
      expect(rest.map { |c| [c[:op_kind], c[:fd], c[:result]] }).to eq([2, 3, 4, 5].map { |n| [k::OP_SEND, fd, n] })
      expect(read_fully(client, 15, hp_now + 2)).to eq("x" * 15)
    end

    it "raises Hyperion::IOUring::Error for each_completion or close from inside its own block" do
      _, _client, fd = connection
      ring.submit_send(fd, "a")
      ring.submit_send(fd, "b")
      errors = []
      collect_completions(ring) do |got|
        got.size >= 2
      end.each { |c| expect(c[:result]).to eq(1) }
      ring.submit_send(fd, "c")
      n = ring.each_completion(timeout_ms: 2000) do |_c|
        begin
          ring.each_completion(timeout_ms: 0) { raise "nested block ran" }
        rescue Hyperion::IOUring::Error => e
          errors << e
        end
        begin
          ring.close
        rescue Hyperion::IOUring::Error => e
          errors << e
        end
      end
      expect(n).to eq(1)
      expect(errors.map(&:class)).to eq([Hyperion::IOUring::Error, Hyperion::IOUring::Error])
      expect(errors[0].message).to match(/reentrant/)
      expect(ring).not_to be_closed
      # Not stuck in "inside the block".
      ring.submit_send(fd, "d")
      expect(collect_completions(ring) { |cs| cs.any? }.map { |c| c[:result] }).to eq([1])
    end
  end

  describe "cancel and close" do
    it "cancel ends an armed recv with -ECANCELED; closing after that really closes the socket" do
      expect_no_fd_leak do
        _, client, fd = connection
        ring.submit_recv_multishot(fd)
        expect(ring.each_completion(timeout_ms: 20) { raise "nothing yet" }).to eq(0)
        ring.cancel(fd)
        got = collect_completions(ring) { |cs| cs.any? }
        expect(got).to eq([{ op_kind: k::OP_RECV, fd: fd, result: ecanceled, buf_id: -1, flags: 0 }])
        IO.for_fd(forget_fd(fd)).close
        expect(client.wait_readable(2)).to be_truthy
        expect(client.read_nonblock(1, exception: false)).to be_nil # EOF: the ring let go of the socket
        expect(completions_within(ring, 0.05)).to eq([])
        expect(ring.stats).to include(inflight: 1, buffers_in_use: 0) # only the listener's accept
        ring.close
        @sockets.each(&:close)
      end
    end

    it "closing right after cancel still delivers the -ECANCELED and then lets go of the socket" do
      expect_no_fd_leak do
        _, client, fd = connection
        ring.submit_recv_multishot(fd)
        ring.flush
        ring.cancel(fd)
        IO.for_fd(forget_fd(fd)).close
        got = collect_completions(ring) { |cs| cs.any? }
        expect(got).to eq([{ op_kind: k::OP_RECV, fd: fd, result: ecanceled, buf_id: -1, flags: 0 }])
        expect(client.wait_readable(2)).to be_truthy
        expect(client.read_nonblock(1, exception: false)).to be_nil
        expect(ring.stats[:inflight]).to eq(1)
        ring.close
        @sockets.each(&:close)
      end
    end

    it "cancel reports a send that already finished with its length, the never-started ones after it" do
      _, client, fd = connection
      ring.submit_send(fd, "a" * 10)
      ring.submit_send(fd, "b" * 20)
      ring.submit_send(fd, "c" * 30)
      ring.flush # the first send goes to the kernel (and, with room in the socket, finishes there)
      ring.cancel(fd)
      got = collect_completions(ring) { |cs| cs.size >= 3 }
      got += completions_within(ring, 0.05)
      expect(got.map { |c| [c[:op_kind], c[:fd]] }.uniq).to eq([[k::OP_SEND, fd]])
      results = got.map { |c| c[:result] }
      client.wait_readable(0.2)
      arrived = client.read_nonblock(100, exception: false)
      arrived = "" unless arrived.is_a?(String)
      # The first completion is the first send's: its length if its bytes
      # went out, -ECANCELED if they did not; the two queued behind it never
      # started.
      expect(results[1..]).to eq([ecanceled, ecanceled])
      if arrived == "a" * 10
        expect(results[0]).to eq(10)
        expect(ring.stats).to include(sends: 1, send_bytes: 10)
      else
        expect(arrived).to eq("")
        expect(results[0]).to eq(ecanceled)
      end
    end

    it "cancel of a recv parked for lack of buffers reports -ECANCELED and is not re-armed later" do
      r = k.new(queue_depth: 16, n_bufs: 1, buf_size: 64)
      listener = TCPServer.new("127.0.0.1", 0)
      @sockets = [listener]
      _, c1, fd1 = open_hotpath_connection(r, listener: listener)
      _, c2, fd2 = open_hotpath_connection(r, listener: listener)
      @sockets.push(c1, c2)
      @fds = [fd1, fd2]
      r.submit_recv_multishot(fd1)
      c1.write("one")
      first = collect_completions(r) { |cs| cs.any? }
      expect(first.map { |c| [c[:fd], c[:result]] }).to eq([[fd1, 3]]) # Ruby now holds the only buffer
      r.submit_recv_multishot(fd2)
      c2.write("two")
      expect(completions_within(r, 0.1)).to eq([]) # fd2 parked: no data, no EOF
      expect(r.stats[:enobufs]).to be >= 1
      r.cancel(fd2)
      got = collect_completions(r) { |cs| cs.any? }
      expect(got).to eq([{ op_kind: k::OP_RECV, fd: fd2, result: ecanceled, buf_id: -1, flags: 0 }])
      r.release_buffer(first[0][:buf_id])
      expect(completions_within(r, 0.1)).to eq([]) # the cancelled recv stays cancelled
      c1.write("more")
      expect(recv_through(r, fd1, 4)).to eq("more")
      expect(r.stats[:buffers_in_use]).to eq(0)
    ensure
      r&.close
    end

    it "cancels a send stuck on a non-reading peer with -ECANCELED, in order with the sends queued behind" do
      listener = TCPServer.new("127.0.0.1", 0)
      listener.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096)
      _, client, fd = connection(listener: listener)
      ring.submit_send(fd, Random.bytes(4 << 20)) # far more than the socket buffers hold
      ring.submit_send(fd, "tail")
      expect(completions_within(ring, 0.1)).to eq([])
      ring.cancel(fd)
      got = collect_completions(ring) { |cs| cs.size >= 2 }
      expect(got.map { |c| [c[:op_kind], c[:fd], c[:result]] }).to eq([[k::OP_SEND, fd, ecanceled]] * 2)
      expect(ring.stats).to include(sends: 0, inflight: 1)
      client.close
    end

    it "close with an armed accept, armed recvs and a pending send, under GC.stress, leaks no fd" do
      maps_before = io_uring_mapping_count
      expect_no_fd_leak do
        r = k.new(queue_depth: 16, n_bufs: 8, buf_size: 512)
        listener = TCPServer.new("127.0.0.1", 0)
        listener.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096)
        port = listener.local_address.ip_port
        r.submit_accept_multishot(listener)
        clients = Array.new(3) { TCPSocket.new("127.0.0.1", port) }
        fds = collect_completions(r) { |cs| cs.size >= 3 }.map { |c| c[:result] }
        GC.stress = true
        begin
          fds.first(2).each { |fd| r.submit_recv_multishot(fd) }
          r.submit_send(fds[2], "z" * (1 << 20)) # the client never reads
          clients[0].write("held")
          held = 0
          r.each_completion(timeout_ms: 100, raw: true) { |_op, _fd, res, _bid, _fl| held += 1 if res.positive? }
          inflight = r.stats[:inflight]
          t0 = hp_now
          r.close
          t = hp_now - t0
          closed = r.closed?
          again = r.close
        ensure
          GC.stress = false
        end
        expect(held).to eq(1) # a buffer Ruby still holds at close
        expect(inflight).to eq(4) # accept, 2 recvs, the send
        expect(t).to be < 1.0
        expect(closed).to be(true)
        expect(again).to be_nil # idempotent
        expect(io_uring_mapping_count).to eq(maps_before) # the ring's SQ/CQ are unmapped
        expect(r).not_to be_healthy
        expect { r.each_completion(timeout_ms: 0) { nil } }.to raise_error(IOError)
        # The closed ring no longer steals connections from the listener.
        late = TCPSocket.new("127.0.0.1", port)
        expect(listener.wait_readable(2)).to be_truthy
        listener.accept.close
        late.close
        fds.each { |fd| IO.for_fd(fd).close }
        clients.each(&:close)
        listener.close
      end
    end

    it "cancel then close under GC.stress delivers every -ECANCELED and leaks no fd" do
      expect_no_fd_leak do
        r = k.new(queue_depth: 16, n_bufs: 8, buf_size: 512)
        listener = TCPServer.new("127.0.0.1", 0)
        port = listener.local_address.ip_port
        r.submit_accept_multishot(listener)
        clients = Array.new(2) { TCPSocket.new("127.0.0.1", port) }
        fds = collect_completions(r) { |cs| cs.size >= 2 }.map { |c| c[:result] }
        got = []
        GC.stress = true
        begin
          fds.each { |fd| r.submit_recv_multishot(fd) }
          r.flush
          fds.each { |fd| r.cancel(fd) }
          r.cancel(listener.fileno)
          deadline = hp_now + 5
          r.each_completion(timeout_ms: 50, raw: true) { |*c| got << c } while got.size < 3 && hp_now < deadline
          fds.each { |fd| IO.for_fd(fd).close }
          inflight = r.stats[:inflight]
          r.close
        ensure
          GC.stress = false
        end
        expect(got.map { |c| c[0..2] })
          .to contain_exactly([k::OP_RECV, fds[0], ecanceled], [k::OP_RECV, fds[1], ecanceled],
                              [k::OP_ACCEPT, listener.fileno, ecanceled])
        expect(inflight).to eq(0)
        clients.each(&:close)
        listener.close
      end
    end

    it "GC.compact with a send and a recv in flight moves nothing the kernel uses" do
      listener = TCPServer.new("127.0.0.1", 0)
      listener.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096)
      _, client, fd = connection(listener: listener)
      ring.submit_recv_multishot(fd)
      payload = Random.bytes(1 << 20)
      ring.submit_send(fd, payload.dup) # the only reference to that String is gone at once
      expect(completions_within(ring, 0.05)).to eq([]) # stuck: the client is not reading
      GC.compact
      GC.compact
      client.write("after compact")
      expect(recv_through(ring, fd, 13)).to eq("after compact")
      reader = Thread.new { read_fully(client, payload.bytesize, hp_now + 10) }
      got = collect_completions(ring, seconds: 10) { |cs| cs.any? }
      expect(got).to eq([{ op_kind: k::OP_SEND, fd: fd, result: 1 << 20, buf_id: -1, flags: 0 }])
      expect(reader.value == payload).to be(true)
    end

    # Made in a method of its own so no local of the caller keeps it alive.
    def abandon_ring(listener)
      r = k.new(queue_depth: 8, n_bufs: 4, buf_size: 256)
      r.submit_accept_multishot(listener)
      r.flush
      r.fileno
    end

    def ring_fd_open?(fd)
      File.readlink("/proc/self/fd/#{fd}") == "anon_inode:[io_uring]"
    rescue Errno::ENOENT
      false
    end

    # Runs the GC until the ring's fd is gone (3 s at most); expects it gone.
    def expect_collected(ring_fd)
      deadline = hp_now + 3
      full_gc while ring_fd_open?(ring_fd) && hp_now < deadline
      expect(ring_fd_open?(ring_fd)).to be(false)
    end

    # The collected ring's accept went with it: the listener's connections
    # are ours again.
    def expect_accepts_again(listener)
      client = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
      @sockets << client
      expect(listener.wait_readable(2)).to be_truthy
      @sockets << listener.accept
    end

    it "a ring dropped without close (with an armed accept) is collected by the GC" do
      listener = TCPServer.new("127.0.0.1", 0)
      @sockets = [listener]
      expect_no_fd_leak do
        # On a fiber's stack, which is not scanned once the fiber has ended:
        # the GC marks the thread's machine stack conservatively, and a stale
        # copy of the ring's VALUE left there kept it alive in about half the
        # runs on Debian sid's Ruby 3.3.
        ring_fd = Fiber.new { abandon_ring(listener) }.resume
        expect(ring_fd_open?(ring_fd)).to be(true)
        expect_collected(ring_fd)
      end
      expect_accepts_again(listener)
    end

    it "a ring made by a thread that ended is collected by the GC of another" do
      listener = TCPServer.new("127.0.0.1", 0)
      @sockets = [listener]
      expect_no_fd_leak do
        ring_fd = Thread.new { abandon_ring(listener) }.value
        expect_collected(ring_fd)
      end
      expect_accepts_again(listener)
    end
  end

  describe "fd-number reuse" do
    # Arms a recv on a fresh connection and checks one message arrives.
    def armed_connection(listener)
      _, client, fd = connection(listener: listener)
      ring.submit_recv_multishot(fd)
      client.write("old-1")
      expect(recv_through(ring, fd, 5)).to eq("old-1")
      [client, fd]
    end

    # After the new connection's OP_ACCEPT for fd: arm it, have both peers
    # write, and check only the new peer's bytes arrive for fd.
    def expect_only_new_data(fd, old_client, new_client)
      ring.submit_recv_multishot(fd)
      ring.flush
      begin
        old_client.write("old-3")
      rescue SystemCallError
        nil # the old connection is gone: fine
      end
      new_client.write("new-1")
      got = collect_completions(ring) { |cs| cs.sum { |c| c[:result].clamp(0, 5) } >= 5 }
      got += completions_within(ring, 0.1)
      data = got.map do |c|
        expect([c[:op_kind], c[:fd]]).to eq([k::OP_RECV, fd])
        expect(c[:result]).to be_positive, "unexpected #{c.inspect} for the new connection"
        ring.take_buffer(c[:buf_id], c[:result])
      end
      expect(data.join).to eq("new-1")
      expect(ring.stats[:buffers_in_use]).to eq(0)
    end

    # A client socket for the next connection, connected only once the
    # old number is free: without DEFER_TASKRUN the armed accept runs as
    # task_work at any return of this thread to user space (a close's, a
    # connect's), not only inside the ring's io_uring_enter, and would
    # take another number if the client connected first.
    def unconnected_client
      sock = Socket.new(:INET, :STREAM)
      @sockets << sock
      sock
    end

    # Collects until the OP_ACCEPT; returns [completions before it, the fd].
    def until_accept
      got = collect_completions(ring) { |cs| cs.any? { |c| c[:op_kind] == k::OP_ACCEPT } }
      idx = got.index { |c| c[:op_kind] == k::OP_ACCEPT }
      expect(got[idx + 1..]).to eq([])
      [got[0...idx], got[idx][:result]]
    end

    it "cancel, close, then a new connection on the same number gets only its own bytes" do
      listener = TCPServer.new("127.0.0.1", 0)
      @sockets = [listener]
      old_client, fd = armed_connection(listener)
      new_client = unconnected_client # made now, so it does not take the number
      ring.cancel(fd)
      IO.for_fd(forget_fd(fd)).close
      new_client.connect(listener.local_address)
      before, new_fd = until_accept
      @fds << new_fd
      expect(new_fd).to eq(fd) # the kernel hands out the lowest free number
      # What arrives for fd before the new OP_ACCEPT belongs to the old
      # connection: at most its -ECANCELED.
      expect(before.map { |c| [c[:op_kind], c[:fd], c[:result]] }).to all(eq([k::OP_RECV, fd, ecanceled]))
      expect_only_new_data(fd, old_client, new_client)
    end

    it "close WITHOUT cancel, then a connection accepted on the same number gets only its own bytes" do
      # Documented behaviour: close(2) does not cancel, so the old recv keeps
      # the old socket alive and may deliver its bytes under the number until
      # the ring learns the number names a new connection (its OP_ACCEPT, or
      # a submit on a different socket); from then on the old connection's
      # completions are dropped (stats[:stale_completions]) and it is
      # cancelled.
      listener = TCPServer.new("127.0.0.1", 0)
      @sockets = [listener]
      old_client, fd = armed_connection(listener)
      new_client = unconnected_client
      IO.for_fd(forget_fd(fd)).close
      old_client.write("old-2")
      new_client.connect(listener.local_address)
      before, new_fd = until_accept
      @fds << new_fd
      expect(new_fd).to eq(fd)
      early = before.map do |c|
        expect([c[:op_kind], c[:fd]]).to eq([k::OP_RECV, fd])
        ring.take_buffer(c[:buf_id], c[:result])
      end
      expect(early.join).to eq("old-2").or eq("") # the old connection's, before the new OP_ACCEPT
      expect_only_new_data(fd, old_client, new_client)
      # The old socket was really let go of.
      expect(old_client.wait_readable(2)).to be_truthy
      expect { old_client.read_nonblock(10) }.to raise_error { |e| expect(e).to be_a(EOFError).or be_a(Errno::ECONNRESET) }
    end

    it "close WITHOUT cancel, then the number reused by a socket made elsewhere and armed, gets only its bytes" do
      listener = TCPServer.new("127.0.0.1", 0)
      other = TCPServer.new("127.0.0.1", 0)
      @sockets = [listener, other]
      old_client, fd = armed_connection(listener)
      _, peer = reuse_number_elsewhere(fd, other)
      # Before the ring hears of the new socket, bytes of the old connection
      # can still arrive under the number (close does not cancel): drain them.
      old_client.write("old-2")
      early = completions_within(ring, 0.05).map do |c|
        expect([c[:op_kind], c[:fd]]).to eq([k::OP_RECV, fd])
        ring.take_buffer(c[:buf_id], c[:result])
      end
      expect(early.join).to eq("old-2")
      # Arming the new socket on that number retires the old request.
      expect_only_new_data(fd, old_client, peer)
      expect(old_client.wait_readable(2)).to be_truthy
      expect { old_client.read_nonblock(10) }.to raise_error { |e| expect(e).to be_a(EOFError).or be_a(Errno::ECONNRESET) }
    end
  end

  describe "fd-number reuse with a send in flight" do
    # Conn A (its client never reads) with a send stuck in the kernel; fd
    # closed WITHOUT cancel; its number then taken by a socket made
    # elsewhere. Returns [old client, number, peer of the new socket].
    def stuck_send_then_reuse
      listener = TCPServer.new("127.0.0.1", 0)
      listener.setsockopt(Socket::SOL_SOCKET, Socket::SO_SNDBUF, 4096)
      _, old_client, fd = connection(listener: listener)
      ring.submit_send(fd, "A" * (4 << 20))
      expect(completions_within(ring, 0.05)).to eq([])
      other = TCPServer.new("127.0.0.1", 0)
      @sockets << other
      _, peer = reuse_number_elsewhere(fd, other)
      [old_client, fd, peer]
    end

    def expect_peer_gets_nothing_more(peer)
      expect(peer.wait_readable(0.2)).to be_nil, "the new socket received #{peer.read_nonblock(64, exception: false).inspect}"
    end

    it "a send on the new socket is not queued behind the old connection's, and gets no old bytes" do
      old_client, fd, peer = stuck_send_then_reuse
      ring.submit_send(fd, "hello")
      got = collect_completions(ring, seconds: 2) { |cs| cs.any? { |c| c[:result] == 5 } }
      expect(got.map { |c| [c[:op_kind], c[:fd]] }.uniq).to eq([[k::OP_SEND, fd]])
      expect(got.map { |c| c[:result] }.reject(&:negative?)).to eq([5])
      old_client.close # the old connection's send ends now, if it had not
      completions_within(ring, 0.1).each { |c| expect(c[:result]).to be_negative }
      expect(read_fully(peer, 5, hp_now + 2)).to eq("hello")
      expect_peer_gets_nothing_more(peer)
    end

    it "the old connection's send is not continued on the new socket when its peer goes away" do
      old_client, fd, peer = stuck_send_then_reuse
      old_client.close # the old send comes back short: the ring must not go on by number
      got = completions_within(ring, 0.2)
      expect_peer_gets_nothing_more(peer)
      # The ring was never told about the new socket: the old send's end
      # arrives under the number, and it is an error, not a length.
      expect(got.map { |c| [c[:op_kind], c[:fd]] }.uniq).to eq([[k::OP_SEND, fd]])
      expect(got.map { |c| c[:result] }).to all(be_negative)
    end
  end

  describe "fork and threads" do
    def guarded_calls(r, fd)
      {
        each_completion: -> { r.each_completion(timeout_ms: 0) { nil } },
        submit_accept_multishot: -> { r.submit_accept_multishot(@sockets[0]) },
        submit_recv_multishot: -> { r.submit_recv_multishot(fd) },
        submit_send: -> { r.submit_send(fd, "x") },
        cancel: -> { r.cancel(fd) },
        submit_close: -> { r.submit_close(fd) },
        flush: -> { r.flush },
        release_buffer: -> { r.release_buffer(0) },
        copy_buffer: -> { r.copy_buffer(0, 1) },
        take_buffer: -> { r.take_buffer(0, 1) }
      }
    end

    def outcomes(calls)
      calls.transform_values do |call|
        call.call
        "no error"
      rescue Exception => e # rubocop:disable Lint/RescueException
        e.class.name
      end
    end

    it "raises ForkError in a forked child, whose close leaves the parent's ring working" do
      _, client, fd = connection
      ring.submit_recv_multishot(fd)
      ring.flush
      rd, wr = IO.pipe
      pid = fork do
        rd.close
        result = outcomes(guarded_calls(ring, fd))
        ring.close
        result[:closed_in_child] = ring.closed?
        wr.write(Marshal.dump(result))
        wr.close
        exit!(0)
      end
      wr.close
      result = Marshal.load(rd.read) # rubocop:disable Security/MarshalLoad
      rd.close
      _, status = Process.wait2(pid)
      expect(status).to be_success
      expect(result.delete(:closed_in_child)).to be(true)
      expect(result.values.uniq).to eq(["Hyperion::IOUring::ForkError"])
      expect(ring).not_to be_closed
      expect(ring).to be_healthy
      client.write("after fork")
      expect(recv_through(ring, fd, 10)).to eq("after fork")
    end

    it "raises ThreadError on another thread, and the owner keeps using the ring" do
      _, client, fd = connection
      result = Thread.new do
        outcomes(guarded_calls(ring, fd).merge(close: -> { ring.close }))
      end.value
      expect(result.values.uniq).to eq(["Hyperion::IOUring::ThreadError"])
      expect(result.keys).to include(:close)
      expect(ring).not_to be_closed
      ring.submit_recv_multishot(fd)
      client.write("owner")
      expect(recv_through(ring, fd, 5)).to eq("owner")
    end
  end
end
