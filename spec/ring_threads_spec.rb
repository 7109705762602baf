# frozen_string_literal: true

require "spec_helper"
require "etc"

# Rings whose owner thread has ended: who may close them, what the GC frees,
# and what a new thread (possibly with the old one's reused pthread_t) gets.
RSpec.describe "rings of threads that ended" do
  include HotpathHelpers

  let(:hp) { Hyperion::IOUring::HotpathRing }
  let(:valgrind) { ENV["HYPERION_IO_URING_SPEC_UNDER"] == "valgrind" }
  # 32 MiB of recv buffers per ring: well above what else may map or unmap
  # meanwhile (a thread stack, a send payload of another example).
  let(:n_bufs) { 4096 }
  let(:buf_size) { 8192 }
  let(:buf_mib) { (n_bufs * buf_size) >> 20 }

  before do
    require_hotpath!
    @sockets = []
    @listener = TCPServer.new("127.0.0.1", 0)
  end

  after do
    @sockets.each { |s| s.close unless s.closed? }
    @listener.close
  end

  def vm_size_mib
    File.read("/proc/self/status")[/^VmSize:\s+(\d+)/, 1].to_i / 1024.0
  end

  def thread_cpu
    Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
  end

  # Like expect_no_fd_leak, for ring fds only (the sockets the rings
  # received on stay open in @sockets until the example ends).
  def expect_no_ring_fd_leak
    full_gc
    before = io_uring_fd_count
    yield
    full_gc
    expect(io_uring_fd_count).to eq(before)
  end

  # Memory of earlier examples' rings that waits for their owner task
  # (owner.c) is released by the next ring made or closed, which would show
  # as a shrink in the middle of a VmSize measurement: let it go first. On
  # Ruby <= 3.2 an ended thread's task lives on for ~3 s.
  def settle_deferred
    deadline = hp_now + 10
    sleep 0.05 while hp.deferred_bytes.positive? && hp_now < deadline
  end

  def task_alive?(tid)
    File.exist?("/proc/self/task/#{tid}")
  end

  # A HotpathRing with a multishot recv armed on a loopback connection (the
  # kernel holds the buffer ring), made on the calling thread.
  def armed_ring
    r = hp.new(queue_depth: 8, n_bufs: n_bufs, buf_size: buf_size)
    client = TCPSocket.new("127.0.0.1", @listener.local_address.ip_port)
    server = @listener.accept
    @sockets << client << server
    r.submit_recv_multishot(server.fileno)
    r.flush
    r.each_completion(timeout_ms: 0) { |c| raise "unexpected #{c}" }
    expect(r.stats[:inflight]).to be >= 1
    r
  end

  # Waits (at most 10 s) until the kernel thread tid is gone: Ruby <= 3.2
  # keeps an ended thread's native thread for ~3 s to reuse it.
  def wait_task_gone(tid)
    deadline = hp_now + 10
    sleep 0.05 while task_alive?(tid) && hp_now < deadline
    expect(task_alive?(tid)).to be(false)
  end

  it "a HotpathRing made in a thread that ended is closed from the main thread, and its buffers are unmapped" do
    settle_deferred
    leaked = hp.leaked_rings
    expect_no_ring_fd_leak do
      r, tid = Thread.new { [armed_ring, Thread.current.native_thread_id] }.value
      # Elsewhere the buffers of a ring closed with a recv in flight wait
      # for the owner task (the memory-deferred examples below show that).
      wait_task_gone(tid) unless hotpath_buffers_freed_at_close?
      before = vm_size_mib
      expect { r.close }.not_to raise_error
      expect(r.closed?).to be(true)
      expect(before - vm_size_mib).to be > buf_mib * 0.9
    end
    expect(hp.leaked_rings).to eq(leaked)
  end

  it "a Ring made in a thread that ended is closed from the main thread" do
    expect_no_fd_leak do
      r = Thread.new { Hyperion::IOUring::Ring.new(queue_depth: 4) }.value
      expect { r.close }.not_to raise_error
      expect(r.closed?).to be(true)
    end
  end

  # Before 6.17, a closed DEFER_TASKRUN ring's exit work could hand a recv
  # whose data had arrived to the live owner task as normal task_work, and
  # that ran before the cancel: its buffers must wait for the owner task
  # there. HYPERION_IO_URING_KERNEL_RELEASE makes this host look like such a
  # kernel (read once, so in a child). The ring is freed by the GC of the
  # main thread while its owner thread waits on a Queue, alive (the GC frees
  # from any thread; no native thread cache needed, so on every Ruby); then
  # the owner ends.
  describe "recv buffers of a ring freed while its owner task lives" do
    include ChildHelpers

    # Prints: freed, owner alive at the free, MiB unmapped by the free, rings
    # deferred, owner gone later, MiB unmapped then, rings still deferred.
    let(:script) do
      <<~'RUBY'
        require "hyperion/io_uring"
        require "socket"
        require "weakref"
        hp = Hyperion::IOUring::HotpathRing
        now = -> { Process.clock_gettime(Process::CLOCK_MONOTONIC) }
        vm = -> { File.read("/proc/self/status")[/^VmSize:\s+(\d+)/, 1].to_i / 1024.0 }
        task = ->(tid) { File.exist?("/proc/self/task/#{tid}") }
        l = TCPServer.new("127.0.0.1", 0)
        socks = []
        ready = Queue.new
        release = Queue.new
        owner = Thread.new do
          # Made in a Fiber that ends: no stale VALUE of the ring lingers on
          # this thread's stack while it waits (the GC scans it).
          weak = Fiber.new do
            ring = hp.new(queue_depth: 8, n_bufs: Integer(ARGV[0]), buf_size: Integer(ARGV[1]))
            socks << TCPSocket.new("127.0.0.1", l.local_address.ip_port) << l.accept
            ring.submit_recv_multishot(socks.last.fileno)
            ring.flush
            ring.each_completion(timeout_ms: 0) { }
            raise "no recv in flight" unless ring.stats[:inflight] >= 1
            WeakRef.new(ring)
          end.resume
          ready << [weak, Thread.current.native_thread_id]
          release.pop
        end
        weak, tid = ready.pop
        leaked = hp.leaked_rings
        before = vm.call
        deadline = now.call + 30
        GC.start while weak.weakref_alive? && now.call < deadline
        freed = !weak.weakref_alive?
        alive = task.call(tid)
        at_free = before - vm.call
        deferred = hp.leaked_rings - leaked
        release << true
        owner.join
        deadline = now.call + 10
        sleep 0.05 while task.call(tid) && now.call < deadline
        gone = !task.call(tid)
        left = hp.leaked_rings - leaked # releases what waited, with no ring opened or closed
        puts [freed, alive, at_free.round(1), deferred, gone, (before - vm.call).round(1), left].join(" ")
      RUBY
    end

    def run_script(env)
      res = run_child(child_ruby_env.merge(env), child_ruby_cmd + ["-e", script, n_bufs.to_s, buf_size.to_s], timeout: valgrind ? 180 : 60)
      expect(res.success?).to be(true), res.describe
      freed, alive, at_free, deferred, gone, later, left = res.out.split
      expect(freed).to eq("true"), "the GC never freed the ring\n#{res.describe}"
      expect(alive).to eq("true")
      expect(gone).to eq("true")
      expect(left).to eq("0")
      [at_free.to_f, deferred.to_i, later.to_f]
    end

    it "wait for the owner task on a kernel before 6.17, then are unmapped" do
      at_free, deferred, later = run_script("HYPERION_IO_URING_KERNEL_RELEASE" => "6.6.0")
      expect(at_free).to be < buf_mib * 0.5
      expect(deferred).to eq(1)
      expect(later).to be > buf_mib * 0.9
    end

    it "are unmapped at the free on a 6.17+ kernel" do
      skip "needs a DEFER_TASKRUN ring on a 6.17+ kernel (HotpathHelpers#hotpath_buffers_freed_at_close?)" unless hotpath_buffers_freed_at_close?
      at_free, deferred, later = run_script({})
      expect(at_free).to be > buf_mib * 0.9
      expect(deferred).to eq(0)
      expect(later).to be > buf_mib * 0.9
    end
  end

  # Rings collected by the GC of another thread while their owner thread
  # still runs, with a send in flight to a client that does not read: the
  # kernel may still read its payload (owner.c), so it waits for the owner
  # task. leaked_rings and deferred_bytes are gauges of what waits now.
  describe "memory deferred while the owner task lives" do
    include ChildHelpers

    let(:payload) { 4 << 20 } # a mapping of its own (hp_slots.c), seen in VmSize
    let(:count) { 3 }
    # What waits per ring: the payload in flight, and where the kernel may
    # still run a recv's task_work, the recv buffers of stalled_send_ring
    # (16 x 4 KiB) and their ring of 16-byte io_uring_buf entries.
    let(:deferred_per_ring) { payload + (hotpath_buffers_freed_at_close? ? 0 : 16 * (4096 + 16)) }

    # count rings made on a thread that then waits on +release+, each with
    # one payload-sized send in flight (the second was never submitted and
    # goes at close), dropped and collected here. Returns [thread, tid].
    def deferring_owner(release)
      ready = Queue.new
      t = Thread.new do
        count.times { stalled_send_ring }
        ready << Thread.current.native_thread_id
        release.pop
      end
      tid = ready.pop
      deadline = hp_now + 10
      full_gc while hp.leaked_rings < @leaked + count && hp_now < deadline
      expect(hp.leaked_rings - @leaked).to eq(count)
      expect(hp.deferred_bytes - @deferred).to eq(count * deferred_per_ring)
      [t, tid]
    end

    def stalled_send_ring
      r = hp.new(queue_depth: 8, n_bufs: 16, buf_size: 4096)
      client = Socket.new(:INET, :STREAM)
      client.setsockopt(:SOCKET, :RCVBUF, 4096)
      client.connect(@listener.local_address)
      server = @listener.accept
      server.setsockopt(:SOCKET, :SNDBUF, 4096)
      @sockets << client << server
      2.times { r.submit_send(server.fileno, "x" * payload) }
      r.flush
      r.each_completion(timeout_ms: 50) { nil }
      expect(r.stats[:inflight]).to eq(1)
      nil # the ring is dropped here, open
    end

    before do
      full_gc
      @leaked = hp.leaked_rings
      @deferred = hp.deferred_bytes
    end

    it "is released once the owner task is gone, by leaked_rings alone (no ring opened or closed), and the gauges go back" do
      release = Queue.new
      t, tid = deferring_owner(release)
      before = vm_size_mib
      release << true
      t.join
      wait_task_gone(tid)
      expect(hp.leaked_rings).to eq(@leaked)
      expect(hp.deferred_bytes).to eq(@deferred)
      expect(before - vm_size_mib).to be > count * (payload >> 20) * 0.9
    end

    # VmSize shows the release before a gauge (whose scan is forced) runs.
    def released_by
      release = Queue.new
      t, tid = deferring_owner(release)
      yield :alive
      expect(hp.deferred_bytes - @deferred).to eq(count * deferred_per_ring)
      release << true
      t.join
      wait_task_gone(tid)
      sleep 0.15 # past the scan rate limit (HIO_OWNER_SCAN_MS)
      before = vm_size_mib
      yield :gone
      expect(before - vm_size_mib).to be > count * (payload >> 20) * 0.9
      expect(hp.deferred_bytes).to eq(@deferred)
    end

    it "is released by HotpathRing#stats and Ring#stats once the owner task is gone" do
      ring = hp.new(queue_depth: 4, n_bufs: 4, buf_size: 4096)
      released_by { ring.stats }
      ring.close
      single = Hyperion::IOUring::Ring.new(queue_depth: 2)
      released_by { single.stats }
      single.close
    end

    it "is released by the GC free of a ring closed long before" do
      ring = hp.new(queue_depth: 4, n_bufs: 4, buf_size: 4096)
      ring.close
      released_by do |phase|
        next unless phase == :gone

        ring = nil
        full_gc
      end
      expect(ring).to be_nil
    end

    it "a forked child releases its copy of the parent's deferred memory and counts none" do
      release = Queue.new
      t, tid = deferring_owner(release)
      rd, wr = IO.pipe
      pid = fork do
        rd.close
        before = vm_size_mib
        wr.puts [hp.leaked_rings, hp.deferred_bytes, (before - vm_size_mib).round(1)].join(" ")
        wr.close
        exit!(0)
      end
      wr.close
      out = rd.read
      rd.close
      _, status = Process.wait2(pid)
      expect(status.success?).to be(true)
      leaked, bytes, freed = out.split
      expect(leaked.to_i).to eq(0)
      expect(bytes.to_i).to eq(0)
      expect(freed.to_f).to be > count * (payload >> 20) * 0.9
      # The parent still holds its own: the owner task lives.
      expect(hp.leaked_rings - @leaked).to eq(count)
      release << true
      t.join
      wait_task_gone(tid)
      expect(hp.leaked_rings).to eq(@leaked)
    end
  end

  it "a ring whose owner thread still runs cannot be closed from another thread" do
    gate = Queue.new
    done = Queue.new
    owner = Thread.new do
      r = armed_ring
      gate << r
      done.pop
      r.close
    end
    r = gate.pop
    expect { r.close }.to raise_error(Hyperion::IOUring::ThreadError)
    done << true
    owner.join
    expect(r.closed?).to be(true)
  end

  it "the GC of another thread frees rings of ended threads with all their memory, leaking none" do
    settle_deferred
    leaked = hp.leaked_rings
    count = 4
    expect_no_ring_fd_leak do
      full_gc
      settle_deferred
      before = vm_size_mib
      # Each made and dropped in its own thread: no stale VALUE on this stack.
      # GC off meanwhile: a GC between two (valgrind makes one likely) would
      # free the first rings before their growth was measured.
      GC.disable
      begin
        count.times { Thread.new { armed_ring.fileno }.join }
        grown = vm_size_mib - before
      ensure
        GC.enable
      end
      expect(grown).to be > count * buf_mib * 0.9
      Thread.new { full_gc }.join
      expect(vm_size_mib - before).to be < grown - count * buf_mib * 0.9
    end
    expect(hp.leaked_rings).to eq(leaked)
  end

  describe "after the owner's kernel thread exited" do
    # Made in a thread, returned with that thread's kernel tid; once the tid
    # is gone, glibc hands its stack (and so its pthread_t) to the next
    # thread.
    def orphan(&make)
      ring, tid = Thread.new { [make.call, Thread.current.native_thread_id] }.value
      wait_task_gone(tid)
      ring
    end

    it "a new thread gets ThreadError (not EEXIST) from a HotpathRing, and close frees it" do
      r = orphan { armed_ring }
      errors = Array.new(3) do
        Thread.new do
          r.each_completion(timeout_ms: 0) { nil }
          :no_error
        rescue StandardError => e
          e.class
        end.value
      end
      expect(errors.uniq).to eq([Hyperion::IOUring::ThreadError])
      # Measured in the closing thread, after it started: on Ruby 3.3 starting
      # it grows the malloc heap by its VM stack (1 MiB), which stays.
      cpu, freed = Thread.new do
        cpu = thread_cpu
        before = vm_size_mib
        r.close
        [thread_cpu - cpu, before - vm_size_mib]
      end.value
      expect(cpu).to be < 0.3
      expect(r.closed?).to be(true)
      expect(freed).to be > buf_mib * 0.9
    end

    it "a new thread gets ThreadError (not EEXIST) from a Ring" do
      r = orphan { Hyperion::IOUring::Ring.new(queue_depth: 4) }
      errors = Array.new(3) do
        Thread.new do
          r.accept(@listener, timeout: 0)
          :no_error
        rescue StandardError => e
          e.class
        end.value
      end
      expect(errors.uniq).to eq([Hyperion::IOUring::ThreadError])
      r.close
      expect(r.closed?).to be(true)
    end
  end

  it "a close whose drain hits a fatal kernel error (EBADF) returns within a few ms of CPU" do
    r = armed_ring
    # The ring's fd closed behind its back: every io_uring_enter of the
    # drain now fails with EBADF.
    IO.for_fd(r.fileno, autoclose: true).close
    cpu = thread_cpu
    t0 = hp_now
    r.close
    expect(thread_cpu - cpu).to be < (valgrind ? 0.3 : 0.05)
    expect(hp_now - t0).to be < (valgrind ? 0.5 : 0.1)
    expect(r.closed?).to be(true)
  end
end
