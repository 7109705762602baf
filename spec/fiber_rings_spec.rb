# frozen_string_literal: true

# Hyperion::IOUring.fiber_ring / fiber_hotpath_ring / close_fiber_rings:
# one lazily opened ring per fiber, fresh in a forked child, gone with its
# fiber.
RSpec.describe "Per-fiber rings" do
  include SchedulerHelpers
  include HotpathHelpers

  let(:iou) { Hyperion::IOUring }

  before { require_io_uring! }

  # Rings a spec leaves in the main fiber's storage would leak into the next.
  after { iou.close_fiber_rings }

  def ring_fd_open?(fd)
    File.readlink("/proc/self/fd/#{fd}") == "anon_inode:[io_uring]"
  rescue Errno::ENOENT
    false
  end

  it "returns the same Ring on repeated calls from one fiber, ignoring later options" do
    expect_no_fd_leak do
      ring = iou.fiber_ring(queue_depth: 8)
      expect(ring).to be_a(iou::Ring)
      expect(iou.fiber_ring).to be(ring)
      expect(iou.fiber_ring(queue_depth: 64)).to be(ring)
      expect(iou.close_fiber_rings).to eq(1)
      expect(ring).to be_closed
    end
  end

  it "returns the same HotpathRing on repeated calls, apart from the fiber's Ring" do
    require_hotpath!
    expect_no_fd_leak do
      hot = iou.fiber_hotpath_ring(queue_depth: 8, n_bufs: 4, buf_size: 256)
      ring = iou.fiber_ring(queue_depth: 8)
      expect(hot).to be_a(iou::HotpathRing)
      expect(iou.fiber_hotpath_ring).to be(hot)
      expect(hot.fileno).not_to eq(ring.fileno)
      expect(iou.close_fiber_rings).to eq(2)
      expect([hot, ring]).to all(be_closed)
      expect(iou.close_fiber_rings).to eq(0)
    end
  end

  it "gives each fiber its own ring, including a fiber created by that fiber" do
    expect_no_fd_leak do
      mine = iou.fiber_ring(queue_depth: 8)
      outer_rings = []
      inner_rings = []
      Fiber.new do
        outer_rings << iou.fiber_ring(queue_depth: 8) << iou.fiber_ring
        Fiber.new do
          inner_rings << iou.fiber_ring(queue_depth: 8) << iou.fiber_ring
          iou.close_fiber_rings
        end.resume
        outer_rings << iou.fiber_ring # still its own after the child ran
        iou.close_fiber_rings
      end.resume
      expect(outer_rings.uniq.size).to eq(1)
      expect(inner_rings.uniq.size).to eq(1)
      expect([mine, outer_rings[0], inner_rings[0]].uniq.size).to eq(3)
      expect(iou.fiber_ring).to be(mine)
      expect(outer_rings[0]).to be_closed
      expect(inner_rings[0]).to be_closed
      expect(mine).not_to be_closed
      iou.close_fiber_rings
    end
  end

  SchedulerHelpers::SCHEDULERS.first(2).each do |kind, desc|
    it "gives each fiber under #{desc} its own ring, used concurrently" do
      with_listener do |listener, port|
        expect_no_fd_leak do
          clients = []
          r = run_scheduled(kind) do
            out = []
            fibers = 2.times.map do |i|
              spawn_fiber do
                ring = iou.fiber_ring(queue_depth: 8)
                fd = ring.accept(listener, timeout: 2)
                out << [i, ring, iou.fiber_ring, fd.is_a?(Integer) ? ring.read(fd, timeout: 2) : fd]
                IO.for_fd(fd).close if fd.is_a?(Integer)
                iou.close_fiber_rings
              end
            end
            # Both fibers wait in their own ring's accept at the same time.
            2.times { |i| clients << TCPSocket.new("127.0.0.1", port).tap { |c| c.write("client #{i}") } }
            wait_until(3) { fibers.none?(&:alive?) }
            out
          end
          expect(r.size).to eq(2)
          r.each { |_, ring, again, _| expect(again).to be(ring) }
          expect(r.map { |_, ring, _, _| ring }.uniq.size).to eq(2)
          expect(r.map(&:last)).to contain_exactly("client 0", "client 1")
          clients.each(&:close)
        end
      end
    end
  end

  it "opens a fresh ring in a forked child and leaves the parent's working" do
    with_listener do |listener, port|
      ring = iou.fiber_ring(queue_depth: 8)
      parent_fd = ring.fileno
      rd, wr = IO.pipe
      pid = fork do
        rd.close
        child_ring = iou.fiber_ring(queue_depth: 8)
        client = TCPSocket.new("127.0.0.1", port)
        client.write("from the child")
        fd = child_ring.accept(listener, timeout: 2)
        data = child_ring.read(fd, timeout: 2)
        wr.write(Marshal.dump(fresh: !child_ring.equal?(ring), parent_closed_here: ring.closed?,
                              same_again: iou.fiber_ring.equal?(child_ring), data: data))
        wr.close
        exit!(0)
      rescue Exception => e # rubocop:disable Lint/RescueException
        wr.write(Marshal.dump(error: "#{e.class}: #{e.message}"))
        exit!(1)
      end
      wr.close
      got = Marshal.load(rd.read) # rubocop:disable Security/MarshalLoad
      rd.close
      _, status = Process.wait2(pid)
      expect(got[:error]).to be_nil
      expect(status).to be_success
      expect(got).to include(fresh: true, parent_closed_here: true, same_again: true, data: "from the child")
      # The parent's ring is untouched and still its fiber's ring.
      expect(iou.fiber_ring).to be(ring)
      expect(ring.fileno).to eq(parent_fd)
      client = TCPSocket.new("127.0.0.1", port)
      fd = ring.accept(listener, timeout: 2)
      expect(fd).to be_a(Integer)
      IO.for_fd(fd).close
      client.close
      expect_ring_idle(ring)
    end
  end

  it "reopens after the fiber's ring was closed directly" do
    expect_no_fd_leak do
      ring = iou.fiber_ring(queue_depth: 8)
      ring.close
      again = iou.fiber_ring(queue_depth: 8)
      expect(again).not_to be(ring)
      expect(again).not_to be_closed
      expect(iou.close_fiber_rings).to eq(1)
    end
  end

  it "frees a fiber's rings when the dead fiber is collected" do
    require_hotpath!
    expect_no_fd_leak do
      fds = []
      fiber = Fiber.new do
        fds << iou.fiber_ring(queue_depth: 8).fileno
        fds << iou.fiber_hotpath_ring(queue_depth: 8, n_bufs: 4, buf_size: 256).fileno
        nil
      end
      fiber.resume
      expect(fds).to all(satisfy { |fd| ring_fd_open?(fd) })
      fiber = nil # rubocop:disable Lint/UselessAssignment
      full_gc
      expect(fds.select { |fd| ring_fd_open?(fd) }).to eq([])
    end
  end

  it "keeps rings per thread as well" do
    expect_no_fd_leak do
      mine = iou.fiber_ring(queue_depth: 8)
      theirs = Thread.new do
        r = iou.fiber_ring(queue_depth: 8)
        [r.object_id, iou.close_fiber_rings]
      end.value
      expect(theirs[0]).not_to eq(mine.object_id)
      expect(theirs[1]).to eq(1)
      iou.close_fiber_rings
    end
  end
end
