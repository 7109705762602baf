# frozen_string_literal: true

require "spec_helper"

# How each_completion waits when completions are on their way: with
# IORING_SETUP_TASKRUN_FLAG the kernel says (IORING_SQ_TASKRUN, in the
# shared SQ ring) that completions wait as task work this thread must enter
# the kernel to run; the wait then collects them with the GVL held instead
# of releasing it for a blocking enter that would return at once.
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  taskrun_flag = 1 << 9 # IORING_SETUP_TASKRUN_FLAG

  it "collects a recv whose data already arrived without a blocking wait" do
    skip "the kernel did not take IORING_SETUP_TASKRUN_FLAG (Linux < 5.19)" if (ring.stats[:setup_flags] & taskrun_flag).zero?

    _l, client, fd = connection
    ring.submit_recv_multishot(fd)
    ring.each_completion(timeout_ms: 0) {}
    waits = ring.stats[:waits]
    got = []
    20.times do |i|
      client.write("ping #{i}")
      data = nil
      ring.each_completion(raw: true, timeout_ms: 2000) do |op, _fd, res, bid, _flags|
        data = ring.take_buffer(bid, res) if op == k::OP_RECV && res.positive?
      end until data
      got << data
    end
    expect(got).to eq(Array.new(20) { |i| "ping #{i}" })
    # Loopback delivers the bytes, and queues the recv's task work, before
    # write returns; a wait may still block if the kernel's softirq ran
    # late. Without the look at IORING_SQ_TASKRUN every call blocks once.
    expect(ring.stats[:waits] - waits).to be <= 3
  end

  it "still blocks, and wakes, when nothing has arrived yet" do
    _l, client, fd = connection
    ring.submit_recv_multishot(fd)
    ring.each_completion(timeout_ms: 0) {}
    waits = ring.stats[:waits]
    writer = Thread.new { sleep 0.05; client.write("late") }
    data = nil
    ring.each_completion(raw: true, timeout_ms: 2000) do |op, _fd, res, bid, _flags|
      data = ring.take_buffer(bid, res) if op == k::OP_RECV && res.positive?
    end until data
    writer.join
    expect(data).to eq("late")
    expect(ring.stats[:waits] - waits).to be >= 1
  end
end
