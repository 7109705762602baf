# frozen_string_literal: true

require "spec_helper"

# Rings whose owner thread has ended: who may close them, what the GC frees,
# and what a new thread (possibly with the old one's reused pthread_t) gets.
RSpec.describe "rings of threads that ended" do
  include HotpathHelpers

  let(:hp) { Hyperion::IOUring::HotpathRing }
  let(:valgrind) { ENV["HYPERION_IO_URING_SPEC_UNDER"] == "valgrind" }
  # 8 MiB of recv buffers per ring: big enough to see in VmSize.
  let(:n_bufs) { 1024 }
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
    leaked = hp.leaked_rings
    expect_no_ring_fd_leak do
      r = Thread.new { armed_ring }.value
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
    leaked = hp.leaked_rings
    count = 4
    expect_no_ring_fd_leak do
      full_gc
      before = vm_size_mib
      # Each made and dropped in its own thread: no stale VALUE on this stack.
      count.times { Thread.new { armed_ring.fileno }.join }
      grown = vm_size_mib - before
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
      cpu = thread_cpu
      before = vm_size_mib
      Thread.new { r.close }.join
      expect(thread_cpu - cpu).to be < 0.3
      expect(r.closed?).to be(true)
      expect(before - vm_size_mib).to be > buf_mib * 0.9
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
