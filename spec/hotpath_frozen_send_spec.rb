# frozen_string_literal: true

require "zlib"
require "fiddle"

# HotpathRing#submit_send of a frozen String of BORROW_MIN bytes or more:
# sent without a copy, the String kept alive and pinned until the kernel is
# done with it (HotpathRing.pinned_strings), even when nothing else
# references it and the GC compacts meanwhile; counted against the send
# limits like a copy. Real loopback sockets, every byte checked.
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  let(:min) { k::BORROW_MIN }

  # Distinct frozen Strings nothing else references once the block returns.
  def send_fresh_frozen(r, fd, count, size)
    crc = 0
    total = 0
    count.times do |i|
      s = (format("%08d:", i) * (size / 9 + 1)).byteslice(0, size).freeze
      crc = Zlib.crc32(s, crc)
      total += s.bytesize
      r.submit_send(fd, s)
    end
    [total, crc]
  end

  it "sends a frozen String without a copy and lets it go at its completion" do
    pinned = k.pinned_strings
    _l, client, fd = connection
    body = ("frozen body " * 10_000).freeze
    ring.submit_send(fd, body)
    expect(k.pinned_strings).to eq(pinned + 1)
    got = collect_completions(ring) { |cs| cs.size >= 1 }
    expect(got.map { |c| c[:result] }).to eq([body.bytesize])
    expect(read_fully(client, body.bytesize, hp_now + 5)).to eq(body)
    expect(ring.stats).to include(borrowed_sends: 1, send_copy_allocs: 0, queued_send_bytes: 0)
    expect(k.pinned_strings).to eq(pinned)
  end

  it "copies frozen Strings under BORROW_MIN bytes and Strings that are not frozen" do
    _l, client, fd = connection
    small = ("s" * (min - 1)).freeze
    big = "b" * (4 * min) # not frozen
    ring.submit_send(fd, small)
    ring.submit_send(fd, big)
    collect_completions(ring) { |cs| cs.size >= 2 }
    expect(read_fully(client, small.bytesize + big.bytesize, hp_now + 5)).to eq(small + big)
    expect(ring.stats).to include(borrowed_sends: 0)
    expect(ring.stats[:send_copy_allocs]).to be >= 1
  end

  it "keeps Strings nothing else references alive and in place through GC.compact while the kernel holds them" do
    skip "GC.compact unavailable" unless GC.respond_to?(:compact)
    pinned = k.pinned_strings
    client, fd = stalled
    total, crc = send_fresh_frozen(ring, fd, 64, 16_384) # most stay queued behind a full socket
    # A shared frozen substring (its bytes are its root's).
    root = ("root-" * 5000).b
    sub = root.byteslice(100, 8000).freeze
    total += sub.bytesize
    crc = Zlib.crc32(sub, crc)
    ring.submit_send(fd, sub)
    root = sub = nil # rubocop:disable Lint/UselessAssignment
    ring.flush
    expect(k.pinned_strings).to eq(pinned + 65)
    3.times do
      GC.compact
      GC.verify_compaction_references(toward: :empty, double_heap: true) if GC.respond_to?(:verify_compaction_references)
      GC.start(full_mark: true, immediate_sweep: true)
      # Garbage that would reuse the freed slots and heap memory.
      Array.new(2000) { |i| "junk #{i}" * 200 }
    end
    data, = drain_sent(client, total, ring)
    expect(data.bytesize).to eq(total)
    expect(Zlib.crc32(data)).to eq(crc)
    collect_completions(ring) { |_| ring.stats[:queued_send_bytes].zero? }
    expect(k.pinned_strings).to eq(pinned)
  end

  it "survives GC.stress while frozen Strings are submitted and in flight" do
    client, fd = stalled
    total = crc = nil
    begin
      GC.stress = true
      total, crc = send_fresh_frozen(ring, fd, 12, 4096)
      ring.flush
    ensure
      GC.stress = false
    end
    data, = drain_sent(client, total, ring)
    expect(Zlib.crc32(data)).to eq(crc)
  end

  it "counts against connection_send_limit: refused sends hold nothing" do
    pinned = k.pinned_strings
    @ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096, send_buffer_limit: 4 << 20,
                  connection_send_limit: 1 << 20)
    client, fd = stalled
    body = ("x" * 65_536).freeze
    accepted = 0
    err = nil
    200.times do
      ring.submit_send(fd, body)
      accepted += 1
    rescue Hyperion::IOUring::SendBufferFull => e
      err = e
      break
    end
    expect(err&.message).to match(/fd #{fd} holds \d+ bytes of queued sends; 65536 more would pass connection_send_limit/)
    expect(ring.queued_send_bytes(fd)).to be_between((1 << 20) - 65_536, 1 << 20)
    expect(k.pinned_strings).to eq(pinned + accepted - (ring.stats[:sends]))
    # The peer goes: every queued send fails and lets its String go.
    reset_peer(client)
    collect_completions(ring, seconds: 10) { |_| ring.stats[:queued_send_bytes].zero? }
    expect(k.pinned_strings).to eq(pinned)
  end

  it "lets the Strings go when the ring is closed with them queued and in flight" do
    pinned = k.pinned_strings
    _client, fd = stalled
    send_fresh_frozen(ring, fd, 20, 32_768)
    ring.flush
    expect(k.pinned_strings).to be > pinned
    ring.close
    expect(k.pinned_strings).to eq(pinned)
  end

  it "is used by the C entry point's callers only through copies (upstream's iovecs)" do
    # The three-argument form always copies: the caller's iovec memory is
    # not a Ruby String the ring could pin.
    _l, client, fd = connection
    buf = Fiddle::Pointer.malloc(4096, Fiddle::RUBY_FREE)
    buf[0, 4096] = "i" * 4096
    iov = [buf.to_i, 4096].pack("QQ")
    ring.submit_send(fd, Fiddle::Pointer[iov].to_i, 1)
    collect_completions(ring) { |cs| cs.size >= 1 }
    expect(read_fully(client, 4096, hp_now + 5)).to eq("i" * 4096)
    expect(ring.stats).to include(borrowed_sends: 0)
  end
end
