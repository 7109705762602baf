# frozen_string_literal: true

require "fcntl"
require "io/nonblock"
require "objspace"
require "timeout"

# Raised into a thread blocked in the ring, to tell it from anything else.
RingSpecInterrupt = Class.new(StandardError)

RSpec.describe Hyperion::IOUring::Ring do
  let(:o_cloexec) { 0o2000000 } # O_CLOEXEC as /proc/self/fdinfo shows it

  # The ring is made before the example body, so fd-leak checks and "an fd
  # that is not open" examples never see it appear mid-way.
  before do
    require_io_uring!
    ring
  end

  after do
    @ring&.close
    @ring = nil
  end

  def ring
    @ring ||= described_class.new(queue_depth: 8)
  end

  # Reads fd through the ring until EOF.
  def read_to_eof(ring, fd, max: 4096)
    data = +"".b
    loop do
      chunk = ring.read(fd, max: max, timeout: 5)
      raise "read timed out after #{data.bytesize} bytes" if chunk == :wouldblock
      break if chunk.empty?

      data << chunk
    end
    data
  end

  # Reads exactly n bytes from fd through the ring.
  def read_exactly(ring, fd, n)
    data = +"".b
    while data.bytesize < n
      chunk = ring.read(fd, max: n - data.bytesize, timeout: 5)
      raise "read gave #{chunk.inspect} after #{data.bytesize} of #{n} bytes" if chunk == :wouldblock || chunk.empty?

      data << chunk
    end
    data
  end

  # Raises RingSpecInterrupt into the current thread after delay; returns
  # [thread, ->{ when it raised }].
  def raise_into_current_thread_after(delay)
    target = Thread.current
    raised_at = nil
    thread = Thread.new do
      sleep delay
      raised_at = monotonic
      target.raise(RingSpecInterrupt, "interrupt from spec")
    end
    [thread, -> { raised_at }]
  end

  # Connects a client, sends a marker, accepts it through the ring and checks
  # the accepted fd is that client: proves no stale completion answered.
  def expect_next_client_accepted(ring, server, port, marker)
    expect_ring_idle(ring)
    client = connect(port)
    client.write(marker)
    fd = ring.accept(server, timeout: 5)
    expect(fd).to be_a(Integer)
    sock = socket_for(fd)
    expect(sock.remote_address.ip_port).to eq(client.local_address.ip_port)
    expect(read_exactly(ring, fd, marker.bytesize)).to eq(marker.b)
    # ... and nothing else is queued behind it.
    expect(ring.accept(server, timeout: 0.05)).to eq(:wouldblock)
    expect_ring_idle(ring)
  ensure
    sock&.close
    client&.close
  end

  describe ".new" do
    it "opens an io_uring fd, owned until close" do
      expect_no_fd_leak do
        r = described_class.new(queue_depth: 8)
        expect(r.closed?).to be(false)
        expect(File.readlink("/proc/self/fd/#{r.fileno}")).to eq("anon_inode:[io_uring]")
        r.close
      end
    end

    it "defaults to DEFAULT_QUEUE_DEPTH and takes the bounds 1 and 32768 (as the kernel reports)" do
      expect(described_class::DEFAULT_QUEUE_DEPTH).to eq(256)
      expect_no_fd_leak do
        { nil => 256, 1 => 1, 100 => 128, 32_768 => 32_768 }.each do |depth, entries|
          r = depth ? described_class.new(queue_depth: depth) : described_class.new
          # The kernel rounds the SQ up to a power of two.
          expect(ring_fdinfo(r)["SqMask"] + 1).to eq(entries), "queue_depth: #{depth.inspect}"
          r.close
        end
      end
    end

    it "cannot be initialized twice" do
      expect { ring.send(:initialize) }.to raise_error(RuntimeError, /already initialized/)
      expect(ring.closed?).to be(false)
    end

    it "leaves an allocated but uninitialized ring closed and safe to use or drop" do
      r = described_class.allocate
      expect(r.closed?).to be(true)
      expect(r.fileno).to be_nil
      expect { r.accept(0) }.to raise_error(IOError, "ring closed")
      expect(r.close).to be_nil
    end
  end

  describe "#accept" do
    { "an Integer fd" => :fileno.to_proc, "an IO" => ->(server) { server } }.each do |kind, listener_of|
      it "returns a working client fd with #{kind} listener (bytes both ways, byte for byte)" do
        expect_no_fd_leak do
          with_listener do |server, port|
            payload = Random.new(42).bytes(100_000) + "\x00\xFF\r\n".b
            client = connect(port)
            writer = Thread.new do
              client.write(payload)
              client.close_write
            end
            fd = ring.accept(listener_of.call(server))
            expect(fd).to be_a(Integer)
            sock = socket_for(fd)
            expect(sock.remote_address.ip_port).to eq(client.local_address.ip_port)
            data = read_to_eof(ring, fd, max: 8192)
            writer.join
            expect(data.encoding).to eq(Encoding::BINARY)
            expect(data.bytesize).to eq(payload.bytesize)
            expect(data).to eq(payload)
            sock.write("pong\x00".b)
            expect(client.read(5)).to eq("pong\x00".b)
          ensure
            writer&.kill&.join # a failed read leaves it blocked in write
            sock&.close
            client&.close
          end
        end
      end
    end

    it "returns an fd with FD_CLOEXEC set" do
      with_listener do |server, port|
        client = connect(port)
        fd = ring.accept(server)
        expect(fdinfo_flags(fd) & o_cloexec).to eq(o_cloexec)
        sock = socket_for(fd)
        expect(sock.fcntl(Fcntl::F_GETFD) & Fcntl::FD_CLOEXEC).to eq(Fcntl::FD_CLOEXEC)
      ensure
        sock&.close
        client&.close
      end
    end

    it "waits for a client that connects later, without holding the GVL" do
      with_listener do |server, port|
        count = 0
        counting = true
        counter = Thread.new { count += 1 while counting }
        client = nil
        connector = Thread.new do
          sleep 0.2
          client = connect(port)
        end
        before = count
        fd = nil
        took = elapsed { fd = ring.accept(server, timeout: 5) }
        counted = count - before
        expect(fd).to be_a(Integer)
        expect(took).to be >= 0.15
        # The counter thread needs the GVL: had accept kept it, it would
        # not have counted at all while accept waited.
        expect(counted).to be > 10_000
        connector.join
        sock = socket_for(fd)
        expect(sock.remote_address.ip_port).to eq(client.local_address.ip_port)
      ensure
        counting = false
        counter&.join
        connector&.join
        sock&.close
        client&.close
      end
    end

    it "returns :wouldblock when timeout: passes, roughly on time" do
      with_listener do |server, _port|
        result = nil
        took = elapsed { result = ring.accept(server, timeout: 0.2) }
        expect(result).to eq(:wouldblock)
        expect(took).to be_between(0.18, 1.5)
        expect_ring_idle(ring)
      end
    end

    it "with timeout: 0 returns :wouldblock at once when no client is waiting" do
      with_listener do |server, _port|
        result = nil
        took = elapsed { result = ring.accept(server, timeout: 0) }
        expect(result).to eq(:wouldblock)
        expect(took).to be < 0.1
        expect_ring_idle(ring)
      end
    end

    it "with timeout: 0 returns a client already in the backlog" do
      with_listener do |server, port|
        client = connect(port)
        fd = ring.accept(server, timeout: 0)
        expect(fd).to be_a(Integer)
        sock = socket_for(fd)
        expect(sock.remote_address.ip_port).to eq(client.local_address.ip_port)
      ensure
        sock&.close
        client&.close
      end
    end

    it "accepts after a timed-out accept (the cancelled request left nothing behind)" do
      with_listener do |server, port|
        expect(ring.accept(server, timeout: 0.05)).to eq(:wouldblock)
        expect_next_client_accepted(ring, server, port, "after-timeout")
      end
    end

    # After an accept that had to wait, the next ones submit and wait in one
    # io_uring_enter (ring.c: direct). That path must still take ready
    # clients, keep timeout: 0 a peek (no wait counted), and give way to the
    # peek again after its streak.
    it "after accepts that had to wait: takes ready and late clients, and timeout: 0 still only peeks" do
      with_listener do |server, port|
        expect(ring.accept(server, timeout: 0.05)).to eq(:wouldblock) # had to wait
        waits = ring.stats[:waits]
        expect(ring.accept(server, timeout: 0)).to eq(:wouldblock)
        expect(ring.stats[:waits]).to eq(waits)
        40.times do |i|
          if i.even?
            expect_next_client_accepted(ring, server, port, "ready-#{i}")
          else
            client = nil
            t = Thread.new { sleep 0.01; client = connect(port); client.write("late-#{i}") }
            fd = ring.accept(server, timeout: 5)
            t.join
            sock = socket_for(fd)
            expect(sock.remote_address.ip_port).to eq(client.local_address.ip_port)
            expect(sock.read(5 + i.to_s.size)).to eq("late-#{i}")
          end
        ensure
          sock&.close
          client&.close
        end
        expect_ring_idle(ring)
      end
    end

    it "works on a ring of queue_depth 1, including cancelling a timed-out accept" do
      r = described_class.new(queue_depth: 1)
      with_listener do |server, port|
        expect(r.accept(server, timeout: 0.05)).to eq(:wouldblock)
        expect_next_client_accepted(r, server, port, "depth-1")
      end
    ensure
      r&.close
    end

    it "accepts 2000 clients in a row, each the right one, leaking no fds" do
      expect_no_fd_leak do
        with_listener do |server, port|
          ops_before = ring.stats[:ops]
          2000.times do |i|
            client = connect(port)
            fd = ring.accept(server, timeout: 5)
            raise "accept #{i} gave #{fd.inspect}" unless fd.is_a?(Integer)

            sock = socket_for(fd)
            unless sock.remote_address.ip_port == client.local_address.ip_port
              raise "accept #{i} returned another client"
            end
          ensure
            sock&.close
            client&.close
          end
          expect(ring.stats[:ops] - ops_before).to be >= 2000
        end
      end
    end
  end

  describe "#read" do
    it "waits on a nonblocking socket until data arrives" do
      with_listener do |server, port|
        client = connect(port)
        expect(client.nonblock?).to be(true)
        peer = server.accept
        writer = Thread.new do
          sleep 0.2
          peer.write("late data")
        end
        data = nil
        took = elapsed { data = ring.read(client, timeout: 5) }
        expect(data).to eq("late data")
        expect(took).to be >= 0.15
      ensure
        writer&.join
        peer&.close
        client&.close
      end
    end

    it "waits on a nonblocking pipe until data arrives" do
      rd, wr = IO.pipe
      expect(rd.nonblock?).to be(true)
      writer = Thread.new do
        sleep 0.1
        wr.write("through the pipe")
      end
      data = nil
      took = elapsed { data = ring.read(rd.fileno, timeout: 5) }
      expect(data).to eq("through the pipe")
      expect(took).to be >= 0.05
    ensure
      writer&.join
      rd&.close
      wr&.close
    end

    it "returns a binary String, then \"\" at EOF (and again after)" do
      with_listener do |server, port|
        client = connect(port)
        peer = server.accept
        peer.write("caf\u00e9")
        peer.close
        data = ring.read(client)
        expect(data).to eq("caf\u00e9".b)
        expect(data.encoding).to eq(Encoding::BINARY)
        expect(ring.read(client)).to eq("")
        expect(ring.read(client, timeout: 1)).to eq("")
      ensure
        peer&.close
        client&.close
      end
    end

    it "returns at most max: bytes, in order, leaving the rest for later reads" do
      with_listener do |server, port|
        client = connect(port)
        peer = server.accept
        payload = Random.new(7).bytes(10_000)
        peer.write(payload)
        peer.close
        first = ring.read(client, max: 100, timeout: 5)
        expect(first.bytesize).to eq(100)
        expect(first).to eq(payload.byteslice(0, 100))
        one = ring.read(client, max: 1, timeout: 5)
        expect(one).to eq(payload.byteslice(100, 1))
        rest = read_to_eof(ring, client, max: 3000)
        expect(first + one + rest).to eq(payload)
      ensure
        peer&.close
        client&.close
      end
    end

    it "reads at most 4096 bytes by default" do
      with_listener do |server, port|
        client = connect(port)
        peer = server.accept
        payload = Random.new(9).bytes(10_000)
        peer.write(payload)
        sleep 0.05 # let loopback deliver all of it
        data = ring.read(client, timeout: 5)
        expect(data.bytesize).to eq(4096)
        expect(data).to eq(payload.byteslice(0, 4096))
      ensure
        peer&.close
        client&.close
      end
    end

    it "reads a 1 MiB payload across calls, and takes max: 16 MiB" do
      with_listener do |server, port|
        client = connect(port)
        peer = server.accept
        payload = Random.new(11).bytes(1 << 20)
        writer = Thread.new { peer.write(payload) }
        got = read_exactly(ring, client, payload.bytesize)
        expect(got).to eq(payload)
        writer.join
        peer.write("x")
        expect(ring.read(client, max: 16 * 1024 * 1024, timeout: 5)).to eq("x")
      ensure
        writer&.kill&.join # a failed read leaves it blocked in write
        peer&.close
        client&.close
      end
    end

    it "returns :wouldblock when timeout: passes, and with timeout: 0 when no data is ready" do
      with_listener do |server, port|
        client = connect(port)
        peer = server.accept
        result = nil
        took = elapsed { result = ring.read(client, timeout: 0.2) }
        expect(result).to eq(:wouldblock)
        expect(took).to be_between(0.18, 1.5)
        expect_ring_idle(ring)
        took = elapsed { result = ring.read(client, timeout: 0) }
        expect(result).to eq(:wouldblock)
        expect(took).to be < 0.1
        expect_ring_idle(ring)
        # The cancelled reads consumed nothing.
        peer.write("kept")
        sleep 0.02
        expect(ring.read(client, timeout: 0)).to eq("kept")
      ensure
        peer&.close
        client&.close
      end
    end

    it "keeps reading correctly while the GC compacts the heap during the wait" do
      skip "GC.compact is not available on this Ruby" unless GC.respond_to?(:compact)

      with_listener do |server, port|
        client = connect(port)
        peer = server.accept
        payload = Random.new(5).bytes(60_000)
        churn = Thread.new do
          3.times { GC.compact }
          peer.write(payload)
        end
        got = read_exactly(ring, client, payload.bytesize)
        expect(got).to eq(payload)
      ensure
        churn&.join
        peer&.close
        client&.close
      end
    end
  end

  describe "interrupts" do
    # Thread#raise into this thread 0.1 s from now must end the block (which
    # waits in the ring) with that exception, within +limit+ of the raise.
    def expect_thread_raise_within(limit)
      raiser, raised_at = raise_into_current_thread_after(0.1)
      latency = nil
      expect do
        yield
      rescue RingSpecInterrupt
        latency = monotonic - raised_at.call
        raise
      end.to raise_error(RingSpecInterrupt)
      raiser.join
      expect(latency).to be < limit
    end

    it "Thread#raise reaches a blocked accept within 100 ms; the next accept gets the next client" do
      with_listener do |server, port|
        cancels = ring.stats[:cancels]
        expect_thread_raise_within(0.1) { ring.accept(server) }
        expect(ring.stats[:cancels]).to eq(cancels + 1)
        expect(ring.closed?).to be(false)
        expect_next_client_accepted(ring, server, port, "next-after-raise")
      end
    end

    it "Timeout.timeout reaches a blocked accept within 100 ms; the next accept gets the next client" do
      with_listener do |server, port|
        took = elapsed do
          expect { Timeout.timeout(0.1) { ring.accept(server) } }.to raise_error(Timeout::Error)
        end
        expect(took).to be < 0.2
        expect_next_client_accepted(ring, server, port, "next-after-timeout")
      end
    end

    it "Thread#raise reaches a blocked read within 100 ms; later data is read intact" do
      with_listener do |server, port|
        client = connect(port)
        peer = server.accept
        expect_thread_raise_within(0.1) { ring.read(client) }
        peer.write("after the raise")
        expect_ring_idle(ring)
        expect(read_exactly(ring, client, 15)).to eq("after the raise")
      ensure
        peer&.close
        client&.close
      end
    end

    it "Timeout.timeout reaches a blocked read within 100 ms; later data is read intact" do
      with_listener do |server, port|
        client = connect(port)
        peer = server.accept
        took = elapsed do
          expect { Timeout.timeout(0.1) { ring.read(client) } }.to raise_error(Timeout::Error)
        end
        expect(took).to be < 0.2
        peer.write("after the timeout")
        expect_ring_idle(ring)
        expect(read_exactly(ring, client, 17)).to eq("after the timeout")
      ensure
        peer&.close
        client&.close
      end
    end

    it "Thread#kill ends a thread blocked in accept within 100 ms" do
      with_listener do |server, port|
        entered = Queue.new
        thread = Thread.new do
          r = described_class.new(queue_depth: 4)
          entered << true
          r.accept(server)
        ensure
          r&.close
        end
        entered.pop
        sleep 0.05
        took = elapsed do
          thread.kill
          thread.join(2)
        end
        expect(thread.alive?).to be(false)
        expect(took).to be < 0.1
        # The killed thread's accept was cancelled: it took no client.
        expect_next_client_accepted(ring, server, port, "after-kill")
      end
    end

    it "a signal handler runs while accept waits, and an exception it raises ends the accept" do
      with_listener do |server, port|
        handled = 0
        old = Signal.trap("USR2") do
          handled += 1
          raise RingSpecInterrupt, "from the trap" if handled == 2
        end
        begin
          # First signal: the handler runs, accept keeps waiting for the client.
          client = nil
          helper = Thread.new do
            sleep 0.05
            Process.kill("USR2", Process.pid)
            sleep 0.1
            client = connect(port)
          end
          fd = ring.accept(server, timeout: 5)
          helper.join
          expect(handled).to eq(1)
          expect(fd).to be_a(Integer)
          IO.for_fd(fd).close

          # Second signal: the handler raises, as Ctrl-C's Interrupt would.
          sent_at = nil
          sender = Thread.new do
            sleep 0.05
            sent_at = monotonic
            Process.kill("USR2", Process.pid)
          end
          latency = nil
          expect do
            ring.accept(server)
          rescue RingSpecInterrupt
            latency = monotonic - sent_at
            raise
          end.to raise_error(RingSpecInterrupt, "from the trap")
          expect(latency).to be < 0.1
          expect_next_client_accepted(ring, server, port, "after-signal")
        ensure
          helper&.join
          sender&.join
          client&.close
          Signal.trap("USR2", old)
        end
      end
    end
  end

  describe "GC" do
    it "accepts and reads correctly under GC.stress, with a wait in between" do
      with_listener do |server, port|
        client = connect(port)
        writer = Thread.new do
          sleep 0.05
          client.write("stressed")
        end
        begin
          GC.stress = true
          fd = ring.accept(server, timeout: 5)
          data = ring.read(fd, timeout: 5)
        ensure
          GC.stress = false
        end
        expect(fd).to be_a(Integer)
        expect(data).to eq("stressed")
        expect_ring_idle(ring)
      ensure
        writer&.join
        IO.for_fd(fd).close if fd.is_a?(Integer)
        client&.close
      end
    end

    it "frees 200 rings that were never closed: their fds and mappings are gone" do
      expect_no_fd_leak do
        full_gc
        fds_before = io_uring_fd_count
        maps_before = io_uring_mapping_count
        # Made in a thread that then ends, so no stale stack slot keeps one alive.
        opened = Thread.new do
          rings = Array.new(200) { described_class.new(queue_depth: 4) }
          counts = [io_uring_fd_count, io_uring_mapping_count]
          rings.clear
          counts
        end.value
        expect(opened[0] - fds_before).to eq(200)
        expect(opened[1]).to be > maps_before
        full_gc
        expect(io_uring_fd_count).to eq(fds_before)
        expect(io_uring_mapping_count).to eq(maps_before)
      end
    end
  end

  describe "#close" do
    it "is idempotent, releases the ring fd, and makes every operation raise IOError \"ring closed\"" do
      r = described_class.new(queue_depth: 4)
      fd = r.fileno
      expect(File.readlink("/proc/self/fd/#{fd}")).to eq("anon_inode:[io_uring]")
      expect(r.closed?).to be(false)
      expect(r.close).to be_nil
      expect(r.closed?).to be(true)
      expect(r.fileno).to be_nil
      link = begin
        File.readlink("/proc/self/fd/#{fd}")
      rescue Errno::ENOENT
        nil
      end
      expect(link).not_to eq("anon_inode:[io_uring]")
      expect(r.close).to be_nil
      expect(r.closed?).to be(true)
      with_listener do |server, _port|
        expect { r.accept(server) }.to raise_error(IOError, "ring closed")
        expect { r.read(server, timeout: 0) }.to raise_error(IOError, "ring closed")
      end
    end
  end

  describe "fork" do
    it "refuses the parent's ring in a child except close/closed?; the parent's ring keeps working" do
      skip "fork is not available here" unless Process.respond_to?(:fork)

      with_listener do |server, port|
        held = [described_class.new(queue_depth: 4)] # dropped and collected in the child only
        held_fd = held.first.fileno
        expect_next_client_accepted(ring, server, port, "before-fork")
        queued = connect(port) # waits in the backlog across the fork
        queued.write("queued")
        rd, wr = IO.pipe
        args = { accept: [server, { timeout: 0 }], read: [server, { timeout: 0 }] }
        methods = described_class.public_instance_methods(false) - %i[close closed?]
        pid = Process.fork do
          rd.close
          report = { pid: Process.pid, calls: {} }
          methods.each do |m|
            *pos, kw = args.fetch(m, [{}])
            report[:calls][m] = begin
              ["returned", ring.public_send(m, *pos, **kw).inspect]
            rescue Exception => e # rubocop:disable Lint/RescueException
              [e.class.name, e.message, e.is_a?(Hyperion::IOUring::Error)]
            end
          end
          # Reads only what the child has: the ring mappings are not inherited.
          report[:memsize] = ObjectSpace.memsize_of(ring)
          report[:closed_before] = ring.closed?
          report[:close] = ring.close
          report[:closed_after] = ring.closed?
          report[:close_again] = ring.close
          report[:accept_after_close] = begin
            ring.accept(server, timeout: 0)
          rescue Exception => e # rubocop:disable Lint/RescueException
            [e.class.name, e.message]
          end
          held.clear
          3.times { GC.start(full_mark: true, immediate_sweep: true) }
          report[:held_fd_after_gc] = begin
            File.readlink("/proc/self/fd/#{held_fd}")
          rescue Errno::ENOENT
            :closed
          end
          wr.write(Marshal.dump(report))
          wr.close
          exit!(0)
        rescue Exception => e # rubocop:disable Lint/RescueException
          wr.write(Marshal.dump(crash: "#{e.class}: #{e.message}"))
          exit!(1)
        end
        wr.close
        report = Marshal.load(rd.read) # rubocop:disable Security/MarshalLoad
        _, status = Process.wait2(pid)
        expect(report[:crash]).to be_nil
        expect(status.success?).to be(true), "child exited with #{status.inspect}"

        expect(methods).to include(:accept, :read)
        methods.each do |m|
          klass, message, is_error = report[:calls].fetch(m)
          expect(klass).to eq("Hyperion::IOUring::ForkError"), "#{m} in the child gave #{klass}: #{message}"
          expect(is_error).to be(true)
          expect(message).to include(Process.pid.to_s, report[:pid].to_s)
        end
        expect(Hyperion::IOUring::ForkError.ancestors).to include(Hyperion::IOUring::Error)
        expect(report[:memsize]).to be_a(Integer)
        expect(report.values_at(:closed_before, :close, :closed_after, :close_again)).to eq([false, nil, true, nil])
        expect(report[:accept_after_close]).to eq(["IOError", "ring closed"])
        # The child's GC freed its copy of the held ring (closing only the
        # child's fd); the parent's copy is checked below.
        expect(report[:held_fd_after_gc]).to eq(:closed)

        # The parent's rings: the child's close and GC left them working, and
        # the child's refused accept did not take the queued client.
        expect(ring.closed?).to be(false)
        fd = ring.accept(server, timeout: 5)
        sock = socket_for(fd)
        expect(sock.remote_address.ip_port).to eq(queued.local_address.ip_port)
        expect(read_exactly(ring, fd, 6)).to eq("queued")
        expect_next_client_accepted(ring, server, port, "after-fork")
        expect_next_client_accepted(held.first, server, port, "held-after-fork")
      ensure
        sock&.close
        queued&.close
        rd&.close
        wr&.close
        held&.each(&:close)
      end
    end
  end

  describe "threads" do
    it "raises ThreadError when another thread uses or closes it, and stays usable by its owner" do
      with_listener do |server, port|
        ring # created by this thread
        errors = Thread.new do
          Thread.current.report_on_exception = false
          [
            -> { ring.accept(server, timeout: 0) },
            -> { ring.read(server, timeout: 0) },
            -> { ring.close }
          ].map do |call|
            call.call
            nil
          rescue StandardError => e
            e
          end
        end.value
        errors.each do |e|
          expect(e).to be_a(Hyperion::IOUring::ThreadError)
          expect(e).to be_a(Hyperion::IOUring::Error)
          expect(e.message).to match(/thread/)
        end
        expect(errors.size).to eq(3)
        expect(ring.closed?).to be(false)
        expect_next_client_accepted(ring, server, port, "owner-still-works")
      end
    end

    it "lets each thread use its own ring" do
      with_listener do |server, port|
        results = Array.new(2) do
          Thread.new do
            r = described_class.new(queue_depth: 4)
            fd = r.accept(server, timeout: 5)
            data = read_exactly(r, fd, 7)
            IO.for_fd(fd).close
            data
          ensure
            r&.close
          end
        end
        clients = Array.new(2) { |i| connect(port).tap { |c| c.write("thread#{i}") } }
        expect(results.map(&:value).sort).to eq(%w[thread0 thread1])
      ensure
        clients&.each(&:close)
      end
    end
  end

  describe "bad arguments" do
    it "rejects a queue_depth outside 1..32768 with ArgumentError" do
      [0, -1, 32_769, 2**70].each do |depth|
        expect { described_class.new(queue_depth: depth) }
          .to raise_error(ArgumentError, /queue_depth/), "queue_depth: #{depth}"
      end
    end

    it "rejects a non-Integer queue_depth with TypeError" do
      ["8", nil, 1.5].each do |depth|
        expect { described_class.new(queue_depth: depth) }
          .to raise_error(TypeError, /queue_depth/), "queue_depth: #{depth.inspect}"
      end
    end

    it "rejects unknown keywords" do
      expect { described_class.new(depth: 8) }.to raise_error(ArgumentError, /depth/)
      with_listener do |server, _port|
        expect { ring.accept(server, max: 1) }.to raise_error(ArgumentError, /max/)
      end
    end

    it "leaks no fds when Ring.new fails" do
      expect_no_fd_leak do
        expect { described_class.new(queue_depth: 0) }.to raise_error(ArgumentError)
      end
    end

    describe "#accept" do
      it "raises TypeError for a listener that is neither an Integer nor an IO" do
        [nil, "x", 3.0].each do |listener|
          expect { ring.accept(listener) }
            .to raise_error(TypeError, /accept.*#{listener.class}/), "accept(#{listener.inspect})"
        end
      end

      it "raises ArgumentError for a negative fd" do
        expect { ring.accept(-1) }.to raise_error(ArgumentError, /accept.*-1/)
      end

      it "raises IOError naming the operation for a closed IO" do
        rd, wr = IO.pipe
        rd.close
        expect { ring.accept(rd) }.to raise_error(IOError, /accept.*closed stream/)
      ensure
        wr&.close
      end

      it "raises Errno::ENOTSOCK for a pipe and for a File, naming the fd" do
        rd, wr = IO.pipe
        file = File.open(__FILE__)
        [rd, rd.fileno, file].each do |listener|
          fd = listener.is_a?(IO) ? listener.fileno : listener
          expect { ring.accept(listener, timeout: 1) }
            .to raise_error(Errno::ENOTSOCK, /accept.*fd #{fd}\b/)
        end
      ensure
        rd&.close
        wr&.close
        file&.close
      end

      it "raises Errno::EBADF for an fd that is not open, naming it" do
        rd, wr = IO.pipe
        fd = rd.fileno
        rd.close
        wr.close
        expect(File.exist?("/proc/self/fd/#{fd}")).to be(false)
        expect { ring.accept(fd, timeout: 1) }.to raise_error(Errno::EBADF, /accept.*fd #{fd}\b/)
      end

      it "raises Errno::EINVAL for a socket that is not listening, bound or not" do
        sock = Socket.new(:INET, :STREAM)
        expect { ring.accept(sock, timeout: 1) }.to raise_error(Errno::EINVAL, /accept.*fd #{sock.fileno}\b/)
        sock.bind(Addrinfo.tcp("127.0.0.1", 0))
        expect { ring.accept(sock, timeout: 1) }.to raise_error(Errno::EINVAL, /accept.*fd #{sock.fileno}\b/)
      ensure
        sock&.close
      end

      it "raises ArgumentError for a negative timeout: and TypeError for a non-Numeric one" do
        with_listener do |server, _port|
          expect { ring.accept(server, timeout: -1) }.to raise_error(ArgumentError, /accept.*timeout/)
          expect { ring.accept(server, timeout: Float::NAN) }.to raise_error(ArgumentError, /accept.*timeout/)
          expect { ring.accept(server, timeout: "x") }.to raise_error(TypeError, /accept.*timeout/)
        end
      end

      it "leaves the ring usable after each error" do
        rd, wr = IO.pipe
        expect { ring.accept(rd) }.to raise_error(Errno::ENOTSOCK)
        expect { ring.accept(nil) }.to raise_error(TypeError)
        with_listener do |server, port|
          expect_next_client_accepted(ring, server, port, "after-errors")
        end
      ensure
        rd&.close
        wr&.close
      end
    end

    describe "#read" do
      it "raises ArgumentError for max: outside 1..16 MiB" do
        [0, -1, 16 * 1024 * 1024 + 1, 2**70].each do |max|
          expect { ring.read(0, max: max) }.to raise_error(ArgumentError, /read.*max/), "max: #{max}"
        end
      end

      it "raises TypeError for a non-Integer max:" do
        ["1", 1.0, nil].each do |max|
          expect { ring.read(0, max: max) }.to raise_error(TypeError, /read.*max/), "max: #{max.inspect}"
        end
      end

      it "raises ArgumentError for a negative timeout: and TypeError for a non-Numeric one" do
        expect { ring.read(0, timeout: -1) }.to raise_error(ArgumentError, /read.*timeout/)
        expect { ring.read(0, timeout: "x") }.to raise_error(TypeError, /read.*timeout/)
      end

      it "raises Errno::EBADF for an fd that is not open, naming it" do
        rd, wr = IO.pipe
        fd = rd.fileno
        rd.close
        wr.close
        expect { ring.read(fd, timeout: 1) }.to raise_error(Errno::EBADF, /read.*fd #{fd}\b/)
      end

      it "raises TypeError for a non-fd and IOError for a closed IO" do
        expect { ring.read("x") }.to raise_error(TypeError, /read/)
        rd, wr = IO.pipe
        rd.close
        expect { ring.read(rd) }.to raise_error(IOError, /read.*closed stream/)
      ensure
        wr&.close
      end
    end
  end
end
