# frozen_string_literal: true

require_relative "../examples/prefork_server"

# Pre-fork workers (examples/prefork_server.rb): the parent opens the
# listener(s) and forks; each worker opens its own HotpathRing and serves
# loopback clients; the parent never opens a ring.
RSpec.describe "Pre-fork workers with a HotpathRing each" do
  include HotpathHelpers

  before { require_hotpath! }

  # Opens +n+ connections one after another (a short pause between them),
  # each sending one request; returns worker pid => responses it sent.
  def hit(port, n, pause: 0.002)
    tally = Hash.new(0)
    n.times do |i|
      c = TCPSocket.new("127.0.0.1", port)
      c.write("GET /#{i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
      resp = +""
      deadline = hp_now + 2
      until resp.include?(PreforkExample::BODY)
        left = deadline - hp_now
        raise "no response to request #{i} (got #{resp.inspect})" unless left.positive? && c.wait_readable(left)

        resp << c.readpartial(4096)
      end
      expect(resp).to start_with("HTTP/1.1 200 OK\r\n")
      tally[Integer(resp[/X-Worker: (\d+)/, 1])] += 1
      c.close
      sleep pause
    end
    tally
  end

  def run_prefork(reuseport:, connections:)
    listeners = PreforkExample.open_listeners(workers: 2, reuseport: reuseport)
    port = listeners[0].local_address.ip_port
    rings_before = io_uring_fd_count
    maps_before = io_uring_mapping_count
    workers = PreforkExample.start_workers(listeners, count: 2, seconds: 10)
    listeners.each(&:close)
    tally = hit(port, connections)
    rings_during = io_uring_fd_count
    reports = PreforkExample.stop_workers(workers)
    {
      workers: workers.map(&:pid), tally: tally, reports: reports,
      parent_rings: [rings_before, rings_during, io_uring_fd_count],
      parent_maps: [maps_before, io_uring_mapping_count]
    }
  ensure
    workers&.each do |w|
      Process.kill(:KILL, w.pid)
      Process.wait(w.pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end

  def expect_all_served(r, connections)
    expect(r[:reports].values.map { |v| v[:error] }.compact).to eq([])
    expect(r[:reports].keys).to match_array(r[:workers])
    # What the workers counted matches what the clients saw, worker by worker.
    r[:workers].each do |pid|
      expect(r[:reports][pid]).to eq(connections: r[:tally][pid], requests: r[:tally][pid])
    end
    expect(r[:tally].values.sum).to eq(connections)
    # The parent never opened a ring: no ring fd or mapping appeared in it.
    expect(r[:parent_rings].uniq.size).to eq(1), "parent ring fds before/during/after: #{r[:parent_rings]}"
    expect(r[:parent_maps].uniq.size).to eq(1)
  end

  it "serves loopback clients from both workers with SO_REUSEPORT listeners" do
    expect_no_fd_leak do
      r = run_prefork(reuseport: true, connections: 40)
      expect_all_served(r, 40)
      # The kernel spreads connections over the two listeners by hash: with
      # 40 connections from distinct ports both workers get some (each one
      # missing all 40 has odds of 2 * 2**-40).
      expect(r[:tally].keys).to match_array(r[:workers])
      expect(r[:tally].values).to all(be_positive)
    end
  end

  it "serves every client with both workers armed on one shared listener" do
    expect_no_fd_leak do
      r = run_prefork(reuseport: false, connections: 20)
      # Which worker gets a connection is the kernel's choice: with one
      # shared listener it tends to hand nearly all of them to one worker
      # (measured: 399 of 400), hence SO_REUSEPORT above and in the README.
      expect_all_served(r, 20)
    end
  end
end
