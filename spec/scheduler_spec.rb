# frozen_string_literal: true

require "timeout"
require "io/nonblock"

# Ring#accept, Ring#read and HotpathRing#each_completion called from a
# non-blocking fiber wait through the Fiber scheduler: the other fibers on
# the thread (a ticker, connection fibers) keep running while they wait.
# Every example runs under spec/support's TestScheduler and under the async
# gem with both of io-event's selectors (URing polls our wait fd from its own
# ring, EPoll from epoll).
RSpec.describe "Rings under a Fiber scheduler" do
  include SchedulerHelpers
  include HotpathHelpers

  let(:hp) { Hyperion::IOUring::HotpathRing }

  before { require_io_uring! }

  # Every ring here is closed explicitly (the GC-collection cases live in
  # spec/fiber_rings_spec.rb), so one collection before and after is enough
  # for expect_no_fd_leak; three per check made this file twice as slow.
  def full_gc
    GC.start(full_mark: true, immediate_sweep: true)
  end

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # The ticker ran at (close to) its free-running rate over [t0, t1]: a
  # thread blocked by the wait would show no ticks and one gap as long as
  # the window (>= 0.15 s). The margins leave room for a loaded 2-core host.
  def expect_ticked_through(ticker, t0, t1, what)
    w = ticker.window(t0, t1)
    span = t1 - t0
    expect(span).to be > 0.1, "#{what}: the wait lasted only #{span.round(3)}s, too short to judge"
    expect(w[:count]).to be >= (0.5 * ticker.expected(span)).floor,
                         "#{what}: #{w[:count]} ticks in #{span.round(3)}s (free-running: ~#{ticker.expected(span).round})"
    expect(w[:max_gap]).to be < 10 * ticker.interval, "#{what}: the ticker stalled for #{w[:max_gap].round(3)}s"
  end

  # A client thread (no scheduler) that connects, then does +rounds+ line
  # round trips with +pause+ between them. Its value: each round-trip time,
  # and when the first round trip started and the client closed.
  def echo_client(port, rounds:, pause:, tag:)
    Thread.new do
      sock = TCPSocket.new("127.0.0.1", port)
      started = now
      rtts = []
      rounds.times do |i|
        line = "#{tag}-#{i}\n"
        t0 = now
        sock.write(line)
        got = sock.gets
        raise "round #{i}: sent #{line.inspect}, got #{got.inspect}" unless got == line

        rtts << now - t0
        sleep pause
      end
      sock.close
      { rtts: rtts, started: started, done: now }
    end
  end

  # Client A was served by a connection fiber while the accept fiber sat in
  # one wait (which B's connection ended), and the ticker kept its rate.
  def expect_served_while_waiting(r, a, b, what)
    expect(a[:rtts].size).to eq(12)
    expect(b[:rtts].size).to eq(2)
    expect(a[:rtts].max).to be < 0.15, "round trips: #{a[:rtts].map { |t| t.round(3) }}"
    wait = r[:waits].find { |t0, t1, *| t0 <= a[:started] + 0.05 && t1 >= r[:b_connect] }
    expect(wait).not_to be_nil,
                        "no #{what} wait spanned client A's round trips: waits (relative to B's connect) " \
                        "#{r[:waits].map { |t0, t1, *| [(t0 - r[:b_connect]).round(3), (t1 - r[:b_connect]).round(3)] }}, " \
                        "A from #{(a[:started] - r[:b_connect]).round(3)}"
    expect_ticked_through(r[:ticker], a[:started], r[:b_connect], "ticker while #{what} waited")
    expect(wait[1] - r[:b_connect]).to be < 0.15, "#{what} returned #{(wait[1] - r[:b_connect]).round(3)}s after B connected"
  end

  def peer_port(fd)
    sock = Socket.for_fd(fd)
    sock.autoclose = false
    sock.remote_address.ip_port
  end

  # Serves lines back on fd until EOF with the fiber's own ring (Ring#read
  # through the scheduler), then closes fd and the fiber's rings.
  def ring_echo(fd)
    sock = Socket.for_fd(fd)
    sock.nonblock = true # accepted fds are blocking, as accept4 returns them
    ring = Hyperion::IOUring.fiber_ring(queue_depth: 8)
    buf = +""
    loop do
      data = ring.read(fd, timeout: 3)
      break if data == "" || data == :wouldblock

      buf << data
      while (i = buf.index("\n"))
        sock.write(buf.slice!(0..i))
      end
    end
  ensure
    Hyperion::IOUring.close_fiber_rings
    sock&.close
  end

  SchedulerHelpers::SCHEDULERS.each do |kind, desc|
    context "under #{desc}" do
      it "Ring#accept wakes on the connection itself (no other fiber runnable, no timeout)" do
        with_listener do |listener, port|
          expect_no_fd_leak do
            client = nil
            connected_at = nil
            th = Thread.new do
              sleep 0.15
              connected_at = now
              client = TCPSocket.new("127.0.0.1", port)
            end
            fd, returned_at = run_scheduled(kind, limit: 3) do
              ring = Hyperion::IOUring::Ring.new(queue_depth: 8)
              fd = ring.accept(listener) # nothing else can wake this thread
              [fd, now].tap { ring.close }
            end
            th.join
            expect(fd).to be_a(Integer)
            expect(peer_port(fd)).to eq(client.local_address.ip_port)
            expect(returned_at - connected_at).to be < 0.15
            IO.for_fd(fd).close
            client.close
          end
        end
      end

      it "Ring#accept waiting leaves the thread to a ticker and to connection fibers (Ring#read)" do
        with_listener do |listener, port|
          expect_no_fd_leak do
            clients = []
            r = run_scheduled(kind) do
              ticker = SchedulerHelpers::Ticker.new
              ring = Hyperion::IOUring::Ring.new(queue_depth: 8)
              waits = []
              accepted = []
              conns = []
              acceptor = spawn_fiber do
                2.times do
                  t0 = now
                  fd = ring.accept(listener, timeout: 3)
                  waits << [t0, now]
                  break unless fd.is_a?(Integer)

                  accepted << fd
                  conns << spawn_fiber { ring_echo(fd) }
                end
              end
              # A: one keep-alive client doing round trips while the
              # acceptor waits for B (which connects after A is done).
              clients << echo_client(port, rounds: 12, pause: 0.015, tag: "a")
              wait_until(3) { !clients[0].alive? }
              b_connect = now
              clients << echo_client(port, rounds: 2, pause: 0, tag: "b")
              wait_until(3) { !clients[1].alive? && conns.size == 2 && !conns.any?(&:alive?) && !acceptor.alive? }
              ticker.stop
              ring.close
              { waits: waits, accepted: accepted, ticker: ticker, b_connect: b_connect }
            end
            expect(r[:accepted].size).to eq(2)
            expect_served_while_waiting(r, *clients.map(&:value), "Ring#accept")
          end
        end
      end

      it "Ring#read waiting leaves the thread to a ticker and wakes when the data arrives" do
        with_listener do |listener, port|
          expect_no_fd_leak do
            client = TCPSocket.new("127.0.0.1", port)
            fd = Integer(listener.accept.tap { |s| s.autoclose = false }.fileno)
            sent_at = nil
            writer = Thread.new do
              sleep 0.25
              sent_at = now
              client.write("payload")
            end
            r = run_scheduled(kind) do
              ticker = SchedulerHelpers::Ticker.new
              ring = Hyperion::IOUring::Ring.new(queue_depth: 8)
              t0 = now
              data = ring.read(fd) # no timeout: only the data can end it
              t1 = now
              ticker.stop
              ring.close
              { data: data, t0: t0, t1: t1, ticker: ticker }
            end
            writer.join
            expect(r[:data]).to eq("payload")
            expect_ticked_through(r[:ticker], r[:t0], sent_at, "ticker while Ring#read waited")
            expect(r[:t1] - sent_at).to be < 0.15
            IO.for_fd(fd).close
            client.close
          end
        end
      end

      it "HotpathRing#each_completion in the accept fiber leaves the thread to a ticker and connection fibers" do
        require_hotpath!
        with_listener do |listener, port|
          expect_no_fd_leak do
            clients = []
            r = run_scheduled(kind) do
              ticker = SchedulerHelpers::Ticker.new
              hot = hp.new(queue_depth: 64, n_bufs: 16, buf_size: 1024)
              hot.submit_accept_multishot(listener)
              accepted = []
              waits = []
              conns = []
              stop = false
              acceptor = spawn_fiber do
                until stop || accepted.size == 2
                  t0 = now
                  n = hot.each_completion(timeout_ms: 1000) do |c|
                    next unless c[:op_kind] == hp::OP_ACCEPT && c[:result] >= 0

                    fd = c[:result]
                    accepted << fd
                    # Connection fibers use plain Ruby IO through the scheduler.
                    conns << spawn_fiber do
                      sock = Socket.for_fd(fd)
                      sock.nonblock = true # else gets blocks the thread
                      while (line = sock.gets)
                        sock.write(line)
                      end
                      sock.close
                    end
                  end
                  waits << [t0, now, n]
                end
              end
              clients << echo_client(port, rounds: 12, pause: 0.015, tag: "a")
              wait_until(3) { !clients[0].alive? }
              b_connect = now
              clients << echo_client(port, rounds: 2, pause: 0, tag: "b")
              wait_until(3) { !clients[1].alive? && accepted.size == 2 && !conns.any?(&:alive?) }
              stop = true
              wait_until(2) { !acceptor.alive? }
              ticker.stop
              stats = hot.stats
              hot.close
              { accepted: accepted, waits: waits, ticker: ticker, b_connect: b_connect, stats: stats }
            end
            expect(r[:accepted].size).to eq(2)
            expect_served_while_waiting(r, *clients.map(&:value), "each_completion")
            expect(r[:stats][:accepts]).to eq(2)
          end
        end
      end
    end
  end

  # Timeouts, interrupts and the busy guard do not depend on how the
  # selector waits for the fd: the EPoll selector is left to the wake-up
  # examples above, to keep the suite fast.
  SchedulerHelpers::SCHEDULERS.first(2).each do |kind, desc|
    context "under #{desc}" do
      it "honours timeout: and timeout_ms: while the ticker keeps ticking" do
        with_listener do |listener, port|
          expect_no_fd_leak do
            client = TCPSocket.new("127.0.0.1", port)
            fd = Integer(listener.accept.tap { |s| s.autoclose = false }.fileno)
            r = run_scheduled(kind) do
              ticker = SchedulerHelpers::Ticker.new
              ring = Hyperion::IOUring::Ring.new(queue_depth: 8)
              out = {}
              t0 = now
              out[:accept] = [ring.accept(listener, timeout: 0.15), t0, now]
              out[:accept_idle] = ring_fdinfo(ring)
              t0 = now
              out[:read] = [ring.read(fd, timeout: 0.15), t0, now]
              out[:read_idle] = ring_fdinfo(ring)
              ring.close
              if Hyperion::IOUring.hotpath_supported?
                hot = hp.new(queue_depth: 8, n_bufs: 4, buf_size: 256)
                t0 = now
                out[:each] = [hot.each_completion(timeout_ms: 150) { raise "no completion expected" }, t0, now]
                hot.close
              end
              ticker.stop
              out.merge(ticker: ticker)
            end
            %i[accept read].each do |op|
              res, t0, t1 = r[op]
              expect(res).to eq(:wouldblock)
              expect(t1 - t0).to be_between(0.14, 0.5), "#{op} took #{(t1 - t0).round(3)}s"
              expect_ticked_through(r[:ticker], t0, t1, "ticker during #{op}(timeout: 0.15)")
              info = r[:"#{op}_idle"]
              expect(info["SqHead"]).to eq(info["SqTail"])
              expect(info["CqHead"]).to eq(info["CqTail"])
              expect(info[:polls]).to eq([]) if info.key?(:polls)
            end
            if r[:each]
              n, t0, t1 = r[:each]
              expect(n).to eq(0)
              expect(t1 - t0).to be_between(0.14, 0.5), "each_completion took #{(t1 - t0).round(3)}s"
              expect_ticked_through(r[:ticker], t0, t1, "ticker during each_completion(timeout_ms: 150)")
            end
            IO.for_fd(fd).close
            client.close
          end
        end
      end

      it "Timeout.timeout interrupts Ring#accept and Ring#read; the ring stays consistent" do
        with_listener do |listener, port|
          expect_no_fd_leak do
            r = run_scheduled(kind) do
              ticker = SchedulerHelpers::Ticker.new
              ring = Hyperion::IOUring::Ring.new(queue_depth: 8)
              out = {}
              t0 = now
              out[:accept_error] = begin
                Timeout.timeout(0.15) { ring.accept(listener) }
              rescue Timeout::Error => e
                e
              end
              out[:accept_time] = [t0, now]
              out[:after_accept] = ring_fdinfo(ring)
              # The next accept gets the next client: the cancelled request
              # neither took it nor left a completion behind.
              client = TCPSocket.new("127.0.0.1", port)
              fd = ring.accept(listener, timeout: 2)
              out[:peer_ok] = fd.is_a?(Integer) && peer_port(fd) == client.local_address.ip_port
              t0 = now
              out[:read_error] = begin
                Timeout.timeout(0.15) { ring.read(fd) }
              rescue Timeout::Error => e
                e
              end
              out[:read_time] = [t0, now]
              out[:after_read] = ring_fdinfo(ring)
              client.write("after the timeout")
              out[:read] = ring.read(fd, timeout: 2)
              out[:stats] = ring.stats
              ticker.stop
              IO.for_fd(fd).close
              client.close
              ring.close
              out.merge(ticker: ticker)
            end
            expect(r[:accept_error]).to be_a(Timeout::Error)
            expect(r[:read_error]).to be_a(Timeout::Error)
            %i[accept_time read_time].each do |k|
              t0, t1 = r[k]
              expect(t1 - t0).to be_between(0.14, 0.45)
              expect_ticked_through(r[:ticker], t0, t1, "ticker until Timeout fired (#{k})")
            end
            [r[:after_accept], r[:after_read]].each do |info|
              expect(info["SqHead"]).to eq(info["SqTail"])
              expect(info["CqHead"]).to eq(info["CqTail"])
              expect(info[:polls]).to eq([]) if info.key?(:polls)
            end
            expect(r[:peer_ok]).to be(true)
            expect(r[:read]).to eq("after the timeout")
            expect(r[:stats][:cancels]).to eq(2)
          end
        end
      end

      it "the scheduler cancelling a fiber parked in Ring#accept or #read leaves the ring consistent" do
        with_listener do |listener, port|
          expect_no_fd_leak do
            r = run_scheduled(kind) do
              ring = Hyperion::IOUring::Ring.new(queue_depth: 8)
              out = {}
              # Parks a fiber in the block's ring call, has the scheduler
              # cancel it, and records how it ended and the ring's state.
              park_and_cancel = lambda do |key, &call|
                parked = spawn_fiber do
                  call.call
                  out[key] = :returned
                rescue cancel_exception_class => e
                  out[key] = e.class
                end
                sleep 0.05
                cancel_fiber(parked)
                wait_until { out[key] }
                out[:"after_#{key}"] = ring_fdinfo(ring)
              end
              park_and_cancel.call(:accept) { ring.accept(listener) }
              client = TCPSocket.new("127.0.0.1", port)
              fd = ring.accept(listener, timeout: 2)
              out[:peer_ok] = fd.is_a?(Integer) && peer_port(fd) == client.local_address.ip_port
              park_and_cancel.call(:read) { ring.read(fd) }
              client.write("still here")
              out[:data] = ring.read(fd, timeout: 2)
              IO.for_fd(fd).close
              client.close
              ring.close
              out.merge(cancel: cancel_exception_class)
            end
            expect(r[:accept]).to eq(r[:cancel])
            expect(r[:read]).to eq(r[:cancel])
            [r[:after_accept], r[:after_read]].each do |info|
              expect(info["SqHead"]).to eq(info["SqTail"])
              expect(info["CqHead"]).to eq(info["CqTail"])
              expect(info[:polls]).to eq([]) if info.key?(:polls)
            end
            expect(r[:peer_ok]).to be(true)
            expect(r[:data]).to eq("still here")
          end
        end
      end

      it "the scheduler cancelling a fiber parked in each_completion loses no completion" do
        require_hotpath!
        with_listener do |listener, port|
          expect_no_fd_leak do
            r = run_scheduled(kind) do
              hot = hp.new(queue_depth: 16, n_bufs: 4, buf_size: 256)
              hot.submit_accept_multishot(listener)
              out = { seen_by_parked: [] }
              parked = spawn_fiber do
                hot.each_completion(timeout_ms: nil) { |c| out[:seen_by_parked] << c }
                out[:parked] = :returned
              rescue cancel_exception_class => e
                out[:parked] = e.class
              end
              sleep 0.05
              # Connect with a blocking socket (no scheduler hop), then cancel
              # at once: the accept completes in the kernel while the parked
              # fiber is being cancelled, and must reach the next caller.
              client = Socket.new(:INET, :STREAM)
              client.nonblock = false
              client.connect(Socket.sockaddr_in(port, "127.0.0.1"))
              cancel_fiber(parked)
              wait_until { out[:parked] }
              got = []
              deadline = now + 2
              got.concat(out[:seen_by_parked])
              while got.none? { |c| c[:op_kind] == hp::OP_ACCEPT } && now < deadline
                hot.each_completion(timeout_ms: 100) { |c| got << c }
              end
              acc = got.find { |c| c[:op_kind] == hp::OP_ACCEPT }
              out[:peer_ok] = acc && acc[:result] >= 0 && peer_port(acc[:result]) == client.local_address.ip_port
              out[:completions] = got.size
              out[:stats] = hot.stats
              IO.for_fd(acc[:result]).close if acc && acc[:result] >= 0
              client.close
              hot.close
              out.merge(cancel: cancel_exception_class)
            end
            expect(r[:parked]).to eq(r[:cancel])
            expect(r[:peer_ok]).to be(true)
            expect(r[:completions]).to eq(1)
            expect(r[:stats][:accepts]).to eq(1)
            expect(r[:stats][:stale_completions]).to eq(0)
          end
        end
      end

      it "lets another fiber queue a send and flush it while the driving fiber waits in each_completion" do
        require_hotpath!
        with_listener do |listener, port|
          expect_no_fd_leak do
            client = TCPSocket.new("127.0.0.1", port)
            fd = Integer(listener.accept.tap { |s| s.autoclose = false }.fileno)
            r = run_scheduled(kind) do
              hot = hp.new(queue_depth: 16, n_bufs: 4, buf_size: 256)
              seen = []
              driver = spawn_fiber do
                t0 = now
                hot.each_completion(timeout_ms: 2000) { |c| seen << c }
                seen << now - t0
              end
              sleep 0.05 # the driver is parked in the scheduler now
              sent_at = now
              hot.submit_send(fd, "from another fiber")
              hot.flush # the parked driver submits only when it wakes
              wait_until(3) { !driver.alive? }
              stats = hot.stats
              hot.close
              { seen: seen, sent_at: sent_at, stats: stats }
            end
            expect(client.read(18)).to eq("from another fiber")
            *completions, waited = r[:seen]
            expect(completions.map { |c| [c[:op_kind], c[:fd], c[:result]] }).to eq([[hp::OP_SEND, fd, 18]])
            expect(waited).to be < 0.5 # woken by the send's completion, not the 2 s timeout
            IO.for_fd(fd).close
            client.close
          end
        end
      end

      it "refuses a second fiber on a ring while one is parked in it" do
        with_listener do |listener, port|
          expect_no_fd_leak do
            r = run_scheduled(kind) do
              ring = Hyperion::IOUring::Ring.new(queue_depth: 8)
              out = {}
              waiter = spawn_fiber { out[:fd] = ring.accept(listener, timeout: 2) }
              sleep 0.02
              out[:accept] = (ring.accept(listener, timeout: 0.05) rescue $!)
              out[:read] = (ring.read(0, timeout: 0.05) rescue $!)
              out[:close] = (ring.close rescue $!)
              client = TCPSocket.new("127.0.0.1", port)
              wait_until { !waiter.alive? }
              out[:peer_ok] = out[:fd].is_a?(Integer) && peer_port(out[:fd]) == client.local_address.ip_port
              out[:later] = ring.accept(listener, timeout: 0.05) # usable again
              IO.for_fd(out[:fd]).close if out[:fd].is_a?(Integer)
              client.close
              ring.close
              if Hyperion::IOUring.hotpath_supported?
                hot = hp.new(queue_depth: 8, n_bufs: 4, buf_size: 256)
                waiter = spawn_fiber { out[:hot_n] = hot.each_completion(timeout_ms: 200) { nil } }
                sleep 0.02
                out[:hot_each] = (hot.each_completion(timeout_ms: 10) { nil } rescue $!)
                out[:hot_close] = (hot.close rescue $!)
                wait_until { !waiter.alive? }
                hot.close
              end
              out
            end
            %i[accept read close].each do |k|
              expect(r[k]).to be_a(Hyperion::IOUring::Error), "#{k}: #{r[k].inspect}"
              expect(r[k].message).to match(/another fiber/)
            end
            expect(r[:peer_ok]).to be(true)
            expect(r[:later]).to eq(:wouldblock)
            if r.key?(:hot_n)
              expect(r[:hot_n]).to eq(0)
              expect(r[:hot_each]).to be_a(Hyperion::IOUring::Error)
              expect(r[:hot_close]).to be_a(Hyperion::IOUring::Error)
            end
          end
        end
      end
    end
  end
end

RSpec.describe "examples/async_server.rb" do
  include SchedulerHelpers

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # Reads from io until +pattern+ shows up or +seconds+ pass.
  def read_until(io, pattern, seconds)
    out = +""
    deadline = now + seconds
    until out.match?(pattern)
      left = deadline - now
      break unless left.positive? && io.wait_readable(left)

      chunk = io.read_nonblock(4096, exception: false)
      break if chunk.nil?

      out << chunk unless chunk == :wait_readable
    end
    out
  end

  it "serves keep-alive requests through a HotpathRing accept fiber under Async" do
    require_io_uring!
    skip "hot path unsupported: #{Hyperion::IOUring.hotpath_unsupported_reason}" unless Hyperion::IOUring.hotpath_supported?
    require_scheduler!(:async_uring)
    script = File.expand_path("../examples/async_server.rb", __dir__)
    rd, wr = IO.pipe
    pid = Process.spawn(RbConfig.ruby, script, "--port", "0", "--seconds", "3", "--accept", "hotpath", out: wr, err: wr)
    wr.close
    begin
      line = read_until(rd, /listening on 127\.0\.0\.1:\d+/, 5)
      expect(line).to match(/listening on 127\.0\.0\.1:(\d+)/)
      port = Integer(line[/127\.0\.0\.1:(\d+)/, 1])
      clients = Array.new(3) { TCPSocket.new("127.0.0.1", port) }
      5.times do
        clients.each { |c| c.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n") }
        clients.each do |c|
          resp = read_until(c, /Hello World\n/, 2)
          expect(resp).to start_with("HTTP/1.1 200 OK\r\n")
          expect(resp).to end_with("Hello World\n")
        end
      end
      clients.each(&:close)
      Process.kill(:TERM, pid)
      out = read_until(rd, /served .*\n/, 3)
      expect(out).to include("served 3 connections, 15 requests (accept: hotpath, accept errors: 0)")
      _, status = Process.wait2(pid)
      pid = nil
      expect(status).to be_success
    ensure
      clients&.each { |c| c.close unless c.closed? }
      if pid
        Process.kill(:KILL, pid)
        Process.wait(pid)
      end
      rd.close
    end
  end
end
