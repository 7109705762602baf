# frozen_string_literal: true

require "zlib"

# HotpathRing.new(zero_copy_min:): frozen Strings sent without a copy go as
# IORING_OP_SEND_ZC where the kernel has it; each send's CQE (F_MORE) ends
# the send and a notification (F_NOTIF) later lets the String go. Real
# loopback sockets (where the kernel copies anyway: stats[:zc_copied]),
# every byte checked, GC.compact while the kernel holds the Strings.
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  def zc_ring(**opts)
    @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096, zero_copy_min: 4096, **opts)
    skip "this kernel has no IORING_OP_SEND_ZC (Linux 6.0+)" unless @ring.zero_copy_supported?
    @ring
  end


  it "is off unless asked for, and takes nil or a positive Integer" do
    expect(ring.zero_copy_min).to be_nil
    expect { k.new(zero_copy_min: 0) }.to raise_error(ArgumentError, /zero_copy_min/)
    expect { k.new(zero_copy_min: "1") }.to raise_error(TypeError, /zero_copy_min/)
    @rings = [k.new(queue_depth: 8, n_bufs: 8, buf_size: 512, zero_copy_min: nil)]
    expect(@rings[0].zero_copy_min).to be_nil
  end

  it "sends large frozen Strings with SEND_ZC, one completion per call, and lets them go after the notification" do
    zc_ring
    pinned = k.pinned_strings
    _l, client, fd = connection
    bodies = Array.new(8) { |i| (format("zc%06d|", i) * 20_000).freeze } # 180 KB each
    small = ("s" * 2000).freeze # borrowed, under zero_copy_min: a plain send
    bodies.each { |b| ring.submit_send(fd, b) }
    ring.submit_send(fd, small)
    expected = bodies.join + small
    data, got = drain_sent(client, expected.bytesize, ring)
    got += collect_completions(ring) { |cs| (got + cs).count { |c| c[:op_kind] == k::OP_SEND } >= 9 }
    expect(data).to eq(expected)
    sends = got.select { |c| c[:op_kind] == k::OP_SEND }
    expect(sends.map { |c| c[:result] }).to eq(bodies.map(&:bytesize) + [small.bytesize])
    collect_completions(ring) { |_| k.pinned_strings == pinned }
    st = ring.stats
    expect(st[:zc_sends]).to be >= 8
    expect(st).to include(borrowed_sends: 9, sends: 9, queued_send_bytes: 0, inflight: 1) # the accept
    expect(st[:zc_copied]).to be <= st[:zc_sends]
  end

  it "keeps the Strings alive and unmoved through GC.compact until the notifications, with short sends continued" do
    zc_ring(send_completions: :failures)
    skip "GC.compact unavailable" unless GC.respond_to?(:compact)
    pinned = k.pinned_strings
    client, fd = stalled
    crc = 0
    total = 0
    12.times do |i|
      s = (format("%08d:", i) * 8000).freeze # 72 KB, nothing else references it
      crc = Zlib.crc32(s, crc)
      total += s.bytesize
      ring.submit_send(fd, s)
    end
    ring.flush
    3.times do
      GC.compact
      GC.start(full_mark: true, immediate_sweep: true)
      Array.new(2000) { |i| "junk #{i}" * 200 }
    end
    data, got = drain_sent(client, total, ring)
    expect(Zlib.crc32(data)).to eq(crc)
    expect(got).to be_empty # :failures, and none failed
    collect_completions(ring) { |_| k.pinned_strings == pinned }
    expect(ring.stats[:inflight]).to eq(1)
  end

  it "drains the notifications when the ring is closed with SEND_ZC sends in flight" do
    zc_ring
    pinned = k.pinned_strings
    leaked = k.leaked_rings # rings of earlier examples may still wait for their owner task
    client, fd = stalled
    6.times { |i| ring.submit_send(fd, (i.to_s * 100_000).freeze) }
    ring.flush
    ring.each_completion(timeout_ms: 10) { |_| nil }
    # Pages a SEND_ZC handed to the socket stay the kernel's until they are
    # sent or dropped, whatever happens to the request: the peer resets, so
    # they are dropped and every notification comes within close's drain.
    reset_peer(client)
    ring.close
    expect(k.pinned_strings).to eq(pinned)
    expect(k.leaked_rings).to be <= leaked
  end

  it "fails a SEND_ZC to a peer that reset, and still lets the Strings go" do
    zc_ring
    pinned = k.pinned_strings
    client, fd = stalled
    4.times { |i| ring.submit_send(fd, (i.to_s * 200_000).freeze) }
    ring.flush
    reset_peer(client)
    got = collect_completions(ring, seconds: 10) { |cs| cs.count { |c| c[:op_kind] == k::OP_SEND } >= 4 }
    expect(got.select { |c| c[:op_kind] == k::OP_SEND }.map { |c| c[:result] }.last).to be_negative
    collect_completions(ring) { |_| k.pinned_strings == pinned }
    expect(ring.stats).to include(queued_send_bytes: 0, inflight: 1)
  end
end
