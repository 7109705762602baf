# frozen_string_literal: true

# The memory of HotpathRing#submit_send's copies is reused: small copies
# come from a per-ring slab of freed chunks, large ones from a cache of
# mappings, so a server in its steady state allocates nothing per send
# (stats[:send_copy_allocs] stops growing). Real loopback sockets, every
# byte checked.
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  # Sends each payload in turn on fd, reads it back on client and reaps
  # its completion; returns the bytes the client got.
  def round_trips(fd, client, payloads)
    payloads.map do |p|
      ring.submit_send(fd, p)
      got = collect_completions(ring) { |cs| cs.any? { |c| c[:op_kind] == k::OP_SEND } }
      expect(got.map { |c| c[:result] }).to eq([p.bytesize])
      read_fully(client, p.bytesize, hp_now + 5)
    end
  end

  it "makes no allocation per send once warm, for hello-sized and larger copies" do
    _l, client, fd = connection
    hello = +"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nHello World\n" # not frozen: copied
    sizes = [hello.bytesize, 1, 64, 65, 1000, 4096, 20_000, 32_767, 40_000]
    payloads = sizes.map { |n| (hello * (n / hello.bytesize + 1)).byteslice(0, n) }
    expect(round_trips(fd, client, payloads)).to eq(payloads) # warm-up: one allocation per size class
    warm = ring.stats[:send_copy_allocs]
    expect(warm).to be_between(1, sizes.size)
    200.times do |i|
      p = payloads[i % payloads.size]
      expect(round_trips(fd, client, [p])).to eq([p])
    end
    expect(ring.stats[:send_copy_allocs]).to eq(warm)
    expect(ring.stats).to include(queued_send_bytes: 0)
  end

  it "keeps many queued copies apart (no chunk is handed out twice)" do
    _l, client, fd = connection
    payloads = Array.new(300) { |i| format("%05d", i) * (1 + i % 40) }
    payloads.each { |p| ring.submit_send(fd, p) }
    expected = payloads.join
    got = collect_completions(ring, seconds: 10) { |cs| cs.size >= payloads.size }
    expect(got.map { |c| c[:result] }).to eq(payloads.map(&:bytesize))
    expect(read_fully(client, expected.bytesize, hp_now + 5)).to eq(expected)
    # Again, from the chunks the first round freed.
    allocs = ring.stats[:send_copy_allocs]
    payloads.each { |p| ring.submit_send(fd, p) }
    collect_completions(ring, seconds: 10) { |cs| cs.size >= payloads.size }
    expect(read_fully(client, expected.bytesize, hp_now + 5)).to eq(expected)
    expect(ring.stats[:send_copy_allocs]).to eq(allocs)
  end
end
