# frozen_string_literal: true

require "etc"
require "securerandom"

# HotpathRing's API surface: constants, arguments, buffers, the completion
# forms, stats, closed rings, environment defaults and the hot-path policy.
RSpec.describe Hyperion::IOUring::HotpathRing do
  include_context "hotpath ring"

  def new_ring(**opts)
    k.new(**opts).tap { |r| (@rings ||= []) << r }
  end

  # A ring holding one received buffer with +data+ in it: [ring, buf_id, fd].
  def ring_holding(data, **opts)
    r = new_ring(**opts)
    _, client, fd = connection(r)
    r.submit_recv_multishot(fd)
    client.write(data)
    got = collect_completions(r) { |cs| cs.any? }
    expect(got.size).to eq(1)
    expect(got[0]).to include(op_kind: k::OP_RECV, fd: fd, result: data.bytesize)
    [r, got[0][:buf_id], fd]
  end

  describe "constants" do
    it "has upstream's op kinds and defaults" do
      expect([k::OP_ACCEPT, k::OP_RECV, k::OP_SEND, k::OP_CLOSE]).to eq([1, 2, 3, 4])
      expect([k::DEFAULT_QUEUE_DEPTH, k::DEFAULT_N_BUFS, k::DEFAULT_BUF_SIZE]).to eq([1024, 512, 8192])
    end

    it "uses DEFAULT_N_BUFS buffers when n_bufs is not given" do
      r = new_ring
      expect { r.release_buffer(k::DEFAULT_N_BUFS) }.to raise_error(ArgumentError, /out of range 0\.\.511/)
      expect { r.release_buffer(k::DEFAULT_N_BUFS - 1) }.to raise_error(ArgumentError, /not held/)
    end
  end

  describe ".new arguments" do
    it "rejects a queue_depth outside 1..32768 or not an Integer, leaking nothing" do
      expect_no_fd_leak do
        expect { k.new(queue_depth: 0) }.to raise_error(ArgumentError, /queue_depth/)
        expect { k.new(queue_depth: 32_769) }.to raise_error(ArgumentError, /queue_depth/)
        expect { k.new(queue_depth: -1) }.to raise_error(ArgumentError)
        expect { k.new(queue_depth: 2**70) }.to raise_error(ArgumentError)
        expect { k.new(queue_depth: "x") }.to raise_error(TypeError)
        expect { k.new(queue_depth: nil) }.to raise_error(TypeError)
        expect { k.new(queue_depth: 8.0) }.to raise_error(TypeError)
      end
    end

    it "rejects an n_bufs that is not a power of two in 1..32768" do
      expect_no_fd_leak do
        [3, 0, -2, 65_536, 32_767, 2**70].each do |n|
          expect { k.new(n_bufs: n) }.to raise_error(ArgumentError, /n_bufs/), "n_bufs: #{n}"
        end
        expect { k.new(n_bufs: "x") }.to raise_error(TypeError)
        expect { k.new(n_bufs: nil) }.to raise_error(TypeError)
      end
    end

    it "rejects a buf_size outside 1..1 MiB" do
      expect_no_fd_leak do
        [0, -1, 2**20 + 1].each do |n|
          expect { k.new(n_bufs: 1, buf_size: n) }.to raise_error(ArgumentError, /buf_size/), "buf_size: #{n}"
        end
        expect { k.new(buf_size: "x") }.to raise_error(TypeError)
      end
    end

    it "takes the bounds themselves" do
      expect_no_fd_leak do
        [{ queue_depth: 1, n_bufs: 1, buf_size: 1 }, { n_bufs: 1, buf_size: 2**20 },
         { n_bufs: 32_768, buf_size: 1 }].each do |opts|
          r = k.new(**opts)
          expect(r).to be_healthy
          r.close
        end
      end
    end

    it "rejects unknown keywords and positional arguments" do
      expect { k.new(depth: 8) }.to raise_error(ArgumentError)
      expect { k.new(8) }.to raise_error(ArgumentError)
    end

    it "raises Unsupported with the hot path's reason when hotpath_supported? is false" do
      allow(Hyperion::IOUring).to receive(:hotpath_supported?).and_return(false)
      allow(Hyperion::IOUring).to receive(:hotpath_unsupported_reason).and_return("multishot recv needs 6.0 (spec)")
      expect { k.new }.to raise_error(Hyperion::IOUring::Unsupported, /multishot recv needs 6\.0 \(spec\)/)
      expect(Hyperion::IOUring::Unsupported.ancestors).to include(StandardError)
    end
  end

  describe "submit arguments" do
    it "raises TypeError for nil or a String fd, ArgumentError for -1 and for a fd that is not open" do
      r = new_ring(queue_depth: 8, n_bufs: 4, buf_size: 64)
      listener, _client, fd = connection(r)
      bad = closed_fd_number
      calls = {
        submit_accept_multishot: ->(x) { r.submit_accept_multishot(x) },
        submit_recv_multishot: ->(x) { r.submit_recv_multishot(x) },
        submit_send: ->(x) { r.submit_send(x, "data") },
        cancel: ->(x) { r.cancel(x) },
        submit_close: ->(x) { r.submit_close(x) }
      }
      calls.each do |name, call|
        expect { call.call(nil) }.to raise_error(TypeError), "#{name}(nil)"
        expect { call.call("x") }.to raise_error(TypeError), "#{name}(\"x\")"
        expect { call.call(-1) }.to raise_error(ArgumentError), "#{name}(-1)"
        expect { call.call(2**70) }.to raise_error(ArgumentError), "#{name}(2**70)"
      end
      %i[submit_accept_multishot submit_recv_multishot submit_send].each do |name|
        expect { calls[name].call(bad) }.to raise_error(ArgumentError, /not open/), "#{name}(closed fd #{bad})"
      end
      expect { r.submit_send(fd, nil) }.to raise_error(TypeError)
      expect { r.submit_send(fd, 42) }.to raise_error(TypeError)
      closed_io = TCPServer.new("127.0.0.1", 0).tap(&:close)
      expect { r.submit_accept_multishot(closed_io) }.to raise_error(IOError)
      # An IO works as well as its fd number, and none of the above broke the ring.
      expect(r.submit_accept_multishot(listener)).to be_nil
      expect(r.submit_send(fd, "ok")).to be_nil
      got = collect_completions(r) { |cs| cs.any? }
      expect(got).to eq([{ op_kind: k::OP_SEND, fd: fd, result: 2, buf_id: -1, flags: 0 }])
      expect(r).to be_healthy
    end

    it "reports ENOTSOCK and EINVAL as final completions and never re-arms them" do
      r = new_ring(queue_depth: 8, n_bufs: 4, buf_size: 64)
      rd, wr = IO.pipe
      unbound = Socket.new(:INET, :STREAM)
      (@sockets ||= []).push(rd, wr, unbound)
      r.submit_recv_multishot(rd.fileno)
      r.submit_accept_multishot(unbound) # not listening
      got = collect_completions(r) { |cs| cs.size >= 2 }
      got += completions_within(r, 0.1)
      expect(got.map { |c| [c[:op_kind], c[:fd], c[:result], c[:flags] & HotpathHelpers::IORING_CQE_F_MORE] })
        .to contain_exactly([k::OP_RECV, rd.fileno, -Errno::ENOTSOCK::Errno, 0],
                            [k::OP_ACCEPT, unbound.fileno, -Errno::EINVAL::Errno, 0])
      expect(r.stats).to include(rearms: 0, inflight: 0)
      expect(r).to be_healthy
    end

    it "arms a listener once however often submit_accept_multishot is called" do
      r = new_ring(queue_depth: 8, n_bufs: 4, buf_size: 64)
      listener, = connection(r)
      3.times { r.submit_accept_multishot(listener) }
      @sockets << TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
      got = collect_completions(r) { |cs| cs.any? }
      got += completions_within(r, 0.05)
      expect(got.map { |c| c[:op_kind] }).to eq([k::OP_ACCEPT]) # not one per call
      @fds << got[0][:result]
      expect(r.stats[:inflight]).to eq(1)
    end
  end

  describe "buffers" do
    it "copies, takes and releases a held buffer; bad ids and lengths are ArgumentError" do
      r, bid, = ring_holding("hello", n_bufs: 8, buf_size: 64)
      other = (bid + 1) % 8
      expect(r.stats[:buffers_in_use]).to eq(1)
      copy = r.copy_buffer(bid, 5)
      expect(copy).to eq("hello")
      expect(copy.encoding).to eq(Encoding::BINARY)
      expect(r.copy_buffer(bid, 2)).to eq("he")
      expect(r.copy_buffer(bid, 0)).to eq("")
      expect { r.copy_buffer(bid, 6) }.to raise_error(ArgumentError, /5 bytes/) # longer than the kernel wrote
      expect { r.copy_buffer(bid, 64) }.to raise_error(ArgumentError)
      expect { r.copy_buffer(bid, -1) }.to raise_error(ArgumentError)
      expect { r.copy_buffer(bid, "5") }.to raise_error(TypeError)
      [8, -1, 2**70].each do |id|
        expect { r.copy_buffer(id, 1) }.to raise_error(ArgumentError), "copy_buffer(#{id})"
        expect { r.take_buffer(id, 1) }.to raise_error(ArgumentError), "take_buffer(#{id})"
        expect { r.release_buffer(id) }.to raise_error(ArgumentError), "release_buffer(#{id})"
      end
      expect { r.copy_buffer("x", 1) }.to raise_error(TypeError)
      expect { r.release_buffer(nil) }.to raise_error(TypeError)
      # A buffer Ruby does not hold (still the kernel's).
      expect { r.copy_buffer(other, 1) }.to raise_error(ArgumentError, /not held/)
      expect { r.take_buffer(other, 1) }.to raise_error(ArgumentError, /not held/)
      expect { r.release_buffer(other) }.to raise_error(ArgumentError, /not held/)
      expect { r.take_buffer(bid, 6) }.to raise_error(ArgumentError) # refused: still held
      expect(r.stats[:buffers_in_use]).to eq(1)
      expect(r.take_buffer(bid, 5)).to eq("hello")
      expect(r.stats[:buffers_in_use]).to eq(0)
      # Released: twice is an error, and so is reading it.
      expect { r.release_buffer(bid) }.to raise_error(ArgumentError, /not held/)
      expect { r.take_buffer(bid, 5) }.to raise_error(ArgumentError, /not held/)
      expect { r.copy_buffer(bid, 1) }.to raise_error(ArgumentError, /not held/)
      expect(r.stats[:buffers_in_use]).to eq(0)
      expect(r).to be_healthy
    end

    it "copy_buffer and take_buffer write into an outbuf: its bytes replaced, binary, no new String" do
      r, bid, = ring_holding("hello world", n_bufs: 8, buf_size: 64)
      out = String.new("a longer string than the data, in UTF-8: \u00e9", capacity: 256)
      expect(out.encoding).to eq(Encoding::UTF_8)
      expect(r.copy_buffer(bid, 5, out)).to equal(out)
      expect(out).to eq("hello")
      expect(out.encoding).to eq(Encoding::BINARY)
      expect(out.valid_encoding?).to be(true)
      # The same String again, shorter and then longer than before.
      expect(r.copy_buffer(bid, 2, out)).to equal(out)
      expect(out).to eq("he")
      expect(r.copy_buffer(bid, 11, out)).to eq("hello world")
      # A String that must grow (embedded, no room for 11 bytes).
      small = +"x"
      expect(r.copy_buffer(bid, 11, small)).to eq("hello world")
      # A String another one shares (a substring of it): the other keeps its bytes.
      tail = out.byteslice(6..)
      expect(r.copy_buffer(bid, 5, out)).to eq("hello")
      expect(tail).to eq("world")
      # Bad outbufs are refused before the buffer is touched: still held.
      expect { r.take_buffer(bid, 5, "frozen".freeze) }.to raise_error(FrozenError)
      expect { r.take_buffer(bid, 5, 42) }.to raise_error(TypeError, /outbuf/)
      expect { r.copy_buffer(bid, 5, :sym) }.to raise_error(TypeError, /outbuf/)
      expect(r.stats[:buffers_in_use]).to eq(1)
      # nil is no outbuf: a new String.
      expect(r.copy_buffer(bid, 5, nil)).not_to equal(out)
      expect(r.take_buffer(bid, 11, out)).to equal(out)
      expect(out).to eq("hello world")
      expect(r.stats[:buffers_in_use]).to eq(0)
      expect { r.take_buffer(bid, 5, out) }.to raise_error(ArgumentError, /not held/)
      expect(out).to eq("hello world") # untouched by the refused call
    end

    it "release_buffer gives the buffer back to the kernel, which uses it again" do
      r = new_ring(n_bufs: 1, buf_size: 16)
      _, client, fd = connection(r)
      r.submit_recv_multishot(fd)
      client.write("first")
      c1 = collect_completions(r) { |cs| cs.any? }.first
      expect(c1).to include(op_kind: k::OP_RECV, result: 5, buf_id: 0)
      client.write("second")
      expect(completions_within(r, 0.05)).to eq([]) # no buffer: nothing, and no EOF either
      expect(r.release_buffer(0)).to be_nil
      c2 = collect_completions(r) { |cs| cs.any? }.first
      expect(c2).to include(op_kind: k::OP_RECV, result: 6, buf_id: 0)
      expect(r.take_buffer(0, 6)).to eq("second")
      expect(r.stats[:enobufs]).to be >= 1
    end
  end

  describe "each_completion" do
    it "needs a block and checks its keywords" do
      r = new_ring(queue_depth: 8, n_bufs: 4, buf_size: 64)
      expect { r.each_completion }.to raise_error(LocalJumpError)
      expect { r.each_completion(timeout_ms: -1) { nil } }.to raise_error(ArgumentError)
      expect { r.each_completion(timeout_ms: "x") { nil } }.to raise_error(TypeError)
      expect { r.each_completion(min_complete: -1) { nil } }.to raise_error(ArgumentError)
      expect { r.each_completion(min_complete: "x") { nil } }.to raise_error(TypeError)
      expect { r.each_completion(bogus: 1) { nil } }.to raise_error(ArgumentError)
      expect(r.each_completion(timeout_ms: 0) { nil }).to eq(0) # still usable
    end

    it "yields a Hash with :op_kind, :fd, :result, :buf_id and :flags" do
      r = new_ring(queue_depth: 8, n_bufs: 4, buf_size: 64)
      listener = TCPServer.new("127.0.0.1", 0)
      (@sockets ||= []) << listener
      r.submit_accept_multishot(listener)
      @sockets << TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
      c = collect_completions(r) { |cs| cs.any? }.first
      @fds = [c[:result]]
      expect(c).to be_a(Hash)
      expect(c.keys).to eq(%i[op_kind fd result buf_id flags])
      expect(c.values).to all(be_an(Integer))
      expect(c).to include(op_kind: k::OP_ACCEPT, fd: listener.fileno, buf_id: -1)
      expect(c[:flags] & HotpathHelpers::IORING_CQE_F_MORE).to eq(HotpathHelpers::IORING_CQE_F_MORE) # the accept goes on
    end

    it "with raw: true yields five Integers and allocates nothing per completion" do
      r = new_ring(queue_depth: 64, n_bufs: 4, buf_size: 64)
      _, client, fd = connection(r)
      200.times { r.submit_send(fd, "x") }
      got = []
      deadline = hp_now + 5
      while r.stats[:sends] < 200 && hp_now < deadline
        r.each_completion(timeout_ms: 20, raw: true) { |*a| got << a }
      end
      expect(got.size).to eq(200)
      expect(got).to all(eq([k::OP_SEND, fd, 1, -1, 0]))
      read_fully(client, 200, hp_now + 2)
      # Now count allocations across a raw batch of 100.
      100.times { r.submit_send(fd, "y") }
      n = 0
      sum = 0
      GC.disable
      begin
        before = GC.stat(:total_allocated_objects)
        n += r.each_completion(min_complete: 100, timeout_ms: 3000, raw: true) do |op, f, res, bid, fl|
          sum += op + f + res + bid + fl
        end
        allocated = GC.stat(:total_allocated_objects) - before
      ensure
        GC.enable
      end
      expect(n).to eq(100)
      expect(sum).to eq(100 * (k::OP_SEND + fd + 1 - 1 + 0))
      expect(allocated).to be < 20 # a Hash per completion would be 100+
    end

    describe "min_wait_us: (batch wait)" do
      it "checks the keyword: an Integer in 0..1_000_000; nil is none" do
        r = new_ring(queue_depth: 8, n_bufs: 4, buf_size: 64)
        expect { r.each_completion(min_wait_us: -1) { nil } }.to raise_error(ArgumentError, /min_wait_us/)
        expect { r.each_completion(min_wait_us: 1_000_001) { nil } }.to raise_error(ArgumentError, /min_wait_us/)
        expect { r.each_completion(min_wait_us: "50") { nil } }.to raise_error(TypeError, /min_wait_us/)
        expect(r.each_completion(min_wait_us: nil, timeout_ms: 0) { nil }).to eq(0)
        expect(r.each_completion(min_wait_us: 0, timeout_ms: 0) { nil }).to eq(0)
        expect(r.batch_wait_supported?).to be(true).or be(false)
      end

      # Both paths: the kernel's batch wait where it has one, and the
      # fallback (HYPERION_IO_URING_MIN_WAIT=0, as before Linux 6.12 and
      # under valgrind), which ends at the first completion.
      [nil, "0"].each do |min_wait_env|
        context(min_wait_env ? "without kernel batch waits (HYPERION_IO_URING_MIN_WAIT=0)" : "as the kernel allows") do
          around do |ex|
            saved = ENV.fetch("HYPERION_IO_URING_MIN_WAIT", nil)
            ENV["HYPERION_IO_URING_MIN_WAIT"] = min_wait_env
            ex.run
          ensure
            ENV["HYPERION_IO_URING_MIN_WAIT"] = saved
          end

          it "is made by the kernel only where it can be (Linux 6.12+, not valgrind), and not when turned off" do
            r = new_ring(queue_depth: 8, n_bufs: 4, buf_size: 64)
            major, minor = Etc.uname[:release].scan(/\d+/).first(2).map(&:to_i)
            kernel_can = ([major, minor] <=> [6, 12]) >= 0 && ENV["HYPERION_IO_URING_SPEC_UNDER"] != "valgrind"
            expect(r.batch_wait_supported?).to be(min_wait_env.nil? && kernel_can)
          end

          it "returns with what is ready once min_wait_us has passed, short of min_complete, long before timeout_ms" do
            r = new_ring(queue_depth: 16, n_bufs: 8, buf_size: 64)
            _, client, fd = connection(r)
            r.submit_recv_multishot(fd)
            client.write("one")
            got = []
            waits = r.stats[:batch_waits]
            t0 = hp_now
            n = r.each_completion(min_complete: 8, min_wait_us: 20_000, timeout_ms: 10_000, raw: true) { |*c| got << c }
            took = hp_now - t0
            expect(n).to eq(1)
            expect(got[0][0, 3]).to eq([k::OP_RECV, fd, 3])
            r.release_buffer(got[0][3])
            expect(took).to be < 5 # not the 10 s timeout
            if r.batch_wait_supported?
              expect(r.stats[:batch_waits]).to eq(waits + 1)
            else
              expect(r.stats[:batch_waits]).to eq(waits)
            end
          end

          it "returns as soon as min_complete are ready, with all of them" do
            r = new_ring(queue_depth: 64, n_bufs: 4, buf_size: 64)
            conns = Array.new(8) { connection(r) }
            conns.each_with_index { |(_, _, fd), i| r.submit_send(fd, "m#{i}") }
            got = []
            t0 = hp_now
            deadline = t0 + 5
            while got.size < 8 && hp_now < deadline
              r.each_completion(min_complete: 8, min_wait_us: 1_000_000, timeout_ms: 5000, raw: true) { |*c| got << c }
            end
            took = hp_now - t0
            expect(got.map { |c| c[0, 3] }).to match_array(conns.each_with_index.map { |(_, _, fd), i| [k::OP_SEND, fd, "m#{i}".bytesize] })
            expect(took).to be < 0.9 if r.batch_wait_supported? # did not sit out the 1 s batch window
            conns.each_with_index { |(_, client, _), i| expect(read_fully(client, 2, hp_now + 2)).to eq("m#{i}") }
          end

          it "does not stall on the ring's own follow-up requests (ordered sends on one fd)" do
            r = new_ring(queue_depth: 64, n_bufs: 4, buf_size: 64)
            _, client, fd = connection(r)
            4.times { |i| r.submit_send(fd, "s#{i}") }
            got = []
            deadline = hp_now + 5
            # Each send starts when the one before it completes (at a reap), so
            # no wait can see 4 at once: each call ends after min_wait_us.
            while got.size < 4 && hp_now < deadline
              r.each_completion(min_complete: 4, min_wait_us: 2_000, timeout_ms: 5000, raw: true) { |*c| got << c }
            end
            expect(got.map { |c| c[0, 3] }).to eq(Array.new(4) { |i| [k::OP_SEND, fd, 2] })
            expect(read_fully(client, 8, hp_now + 2)).to eq("s0s1s2s3")
          end

          it "still ends at timeout_ms when nothing completes" do
            r = new_ring(queue_depth: 8, n_bufs: 4, buf_size: 64)
            t0 = hp_now
            expect(r.each_completion(min_complete: 4, min_wait_us: 1000, timeout_ms: 50) { nil }).to eq(0)
            expect(hp_now - t0).to be_between(0.04, 3)
          end
        end
      end
    end
  end

  describe "a closed ring" do
    it "raises IOError from every method that uses it; close is idempotent" do
      r = new_ring(queue_depth: 8, n_bufs: 4, buf_size: 64)
      _, _client, fd = connection(r)
      expect(r).not_to be_closed
      expect(r.fileno).to be_an(Integer)
      expect(r.close).to be_nil
      expect(r.close).to be_nil
      expect(r).to be_closed
      expect(r).not_to be_healthy
      expect(r.fileno).to be_nil
      {
        submit_accept_multishot: -> { r.submit_accept_multishot(@sockets[0]) },
        submit_recv_multishot: -> { r.submit_recv_multishot(fd) },
        submit_send: -> { r.submit_send(fd, "x") },
        each_completion: -> { r.each_completion(timeout_ms: 0) { nil } },
        copy_buffer: -> { r.copy_buffer(0, 1) },
        take_buffer: -> { r.take_buffer(0, 1) },
        release_buffer: -> { r.release_buffer(0) },
        cancel: -> { r.cancel(fd) },
        submit_close: -> { r.submit_close(fd) },
        flush: -> { r.flush }
      }.each { |name, call| expect { call.call }.to raise_error(IOError), name.to_s }
      expect(r.stats).to be_a(Hash)
    end
  end

  describe "health" do
    it "is healthy until force_unhealthy! (upstream's test seam)" do
      r = new_ring(queue_depth: 8, n_bufs: 4, buf_size: 64)
      expect(r).to be_healthy
      expect(r.force_unhealthy!).to be_nil
      expect(r).not_to be_healthy
      expect(r.each_completion(timeout_ms: 0) { nil }).to eq(0) # still usable, just flagged
    end
  end

  describe "stats" do
    it "has every counter, and they match what happened" do
      r = new_ring(queue_depth: 32, n_bufs: 8, buf_size: 1024)
      expect(r.stats.keys).to include(:accepts, :recvs, :recv_bytes, :sends, :send_bytes, :short_sends, :enobufs,
                                      :rearms, :cq_overflows, :stale_completions, :buffers_in_use, :submits,
                                      :waits, :closes)
      expect(r.stats.values).to all(be_an(Integer))
      expect(r.stats).to include(accepts: 0, recvs: 0, sends: 0, buffers_in_use: 0, closes: 0)
      listener, c1, fd1 = connection(r)
      c2 = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
      @sockets << c2
      fd2 = accept_through(r)
      @fds << fd2
      [fd1, fd2].each { |fd| r.submit_recv_multishot(fd) }
      c1.write("a" * 100)
      c2.write("b" * 300)
      held = []
      bytes = 0
      collect_completions(r) do |cs|
        cs.drop(held.size).each { |c| held << c[:buf_id] && bytes += c[:result] }
        bytes >= 400
      end
      expect(r.stats).to include(accepts: 2, recvs: held.size, recv_bytes: 400, buffers_in_use: held.size)
      held.each_with_index do |bid, i|
        r.release_buffer(bid)
        expect(r.stats[:buffers_in_use]).to eq(held.size - i - 1)
      end
      r.submit_send(fd1, "x" * 10)
      r.submit_send(fd2, "y" * 20)
      r.submit_send(fd2, "z" * 30)
      collect_completions(r) { |cs| cs.size >= 3 }
      expect(r.stats).to include(sends: 3, send_bytes: 60, buffers_in_use: 0, stale_completions: 0,
                                 enobufs: 0, cq_overflows: 0, inflight: 3) # accept + 2 recvs
      expect(r.stats[:waits]).to be > 0
      expect(r.stats[:submits]).to be > 0
    end
  end

  describe "environment defaults" do
    around do |ex|
      saved = ENV.to_h.select { |key, _| key.start_with?("HYPERION_IO_URING_HOTPATH") }
      ex.run
    ensure
      %w[HYPERION_IO_URING_HOTPATH_BUFS HYPERION_IO_URING_HOTPATH_BUF_SIZE].each { |key| ENV.delete(key) }
      ENV.update(saved)
    end

    # Sends +size+ bytes through a fresh ring's recv; returns the recv
    # completions and the bytes, releasing each buffer as it arrives.
    def recv_pieces(ring, size)
      _, client, fd = connection(ring)
      ring.submit_recv_multishot(fd)
      msg = Random.bytes(size)
      client.write(msg)
      pieces = []
      data = +"".b
      deadline = hp_now + 5
      while data.bytesize < size && hp_now < deadline
        ring.each_completion(timeout_ms: 20) do |c|
          pieces << c
          data << ring.take_buffer(c[:buf_id], c[:result])
        end
      end
      expect(data == msg).to be(true)
      pieces
    end

    it "takes n_bufs and buf_size from HYPERION_IO_URING_HOTPATH_BUFS and _BUF_SIZE" do
      ENV["HYPERION_IO_URING_HOTPATH_BUFS"] = "4"
      ENV["HYPERION_IO_URING_HOTPATH_BUF_SIZE"] = "64"
      r = new_ring
      pieces = recv_pieces(r, 1000)
      expect(pieces.size).to be >= 16 # 1000 / 64
      expect(pieces.map { |c| c[:result] }).to all(be_between(1, 64))
      expect(pieces.map { |c| c[:buf_id] }).to all(be_between(0, 3))
      expect { r.release_buffer(4) }.to raise_error(ArgumentError, /out of range 0\.\.3/)
      # Explicit keywords still win.
      r2 = new_ring(n_bufs: 8, buf_size: 512)
      expect(recv_pieces(r2, 1000).map { |c| c[:result] }.max).to be > 64
    end

    it "warns once about a bad value and keeps the default" do
      bad = "nope-#{SecureRandom.hex(4)}"
      ENV["HYPERION_IO_URING_HOTPATH_BUFS"] = bad
      ENV["HYPERION_IO_URING_HOTPATH_BUF_SIZE"] = "64"
      r = nil
      expect { r = new_ring }.to output(/HYPERION_IO_URING_HOTPATH_BUFS=#{Regexp.escape(bad.inspect)}.*512/).to_stderr
      expect { r.release_buffer(512) }.to raise_error(ArgumentError, /out of range 0\.\.511/)
      expect { new_ring }.not_to output.to_stderr # once
      ENV["HYPERION_IO_URING_HOTPATH_BUFS"] = "3" # not a power of two
      ENV["HYPERION_IO_URING_HOTPATH_BUF_SIZE"] = (2**20 + 1).to_s
      r3 = nil
      expect { r3 = new_ring }.to output(/HYPERION_IO_URING_HOTPATH_BUF.*HYPERION_IO_URING_HOTPATH_BUF/m).to_stderr
      pieces = recv_pieces(r3, 1000)
      expect(pieces.map { |c| c[:result] }.max).to be > 64 # buf_size back at 8192, not 64 or 1 MiB + 1
      expect { r3.release_buffer(512) }.to raise_error(ArgumentError, /out of range 0\.\.511/)
    end
  end

  describe "policy" do
    it "reports the hot path supported here, with no reason" do
      expect(Hyperion::IOUring.hotpath_supported?).to be(true)
      expect(Hyperion::IOUring.hotpath_unsupported_reason).to be_nil
    end

    it "resolves :on, :auto and :off, and rejects anything else with upstream's message" do
      io = Hyperion::IOUring
      expect(io.resolve_hotpath_policy!(:on)).to be(true)
      expect(io.resolve_hotpath_policy!(:auto)).to be(true)
      expect(io.resolve_hotpath_policy!(:off)).to be(false)
      expect { io.resolve_hotpath_policy!(:bogus) }
        .to raise_error(ArgumentError, "io_uring_hotpath must be :off, :auto, or :on (got :bogus)")
      expect { io.resolve_hotpath_policy!("on") }
        .to raise_error(ArgumentError, 'io_uring_hotpath must be :off, :auto, or :on (got "on")')
    end

    it "raises Unsupported for :on and answers false for :auto where the hot path does not work" do
      io = Hyperion::IOUring
      allow(io).to receive(:hotpath_supported?).and_return(false)
      allow(io).to receive(:hotpath_unsupported_reason).and_return("no multishot recv (spec)")
      expect(io.resolve_hotpath_policy!(:auto)).to be(false)
      expect(io.resolve_hotpath_policy!(:off)).to be(false)
      expect { io.resolve_hotpath_policy!(:on) }
        .to raise_error(io::Unsupported,
                        /\Aio_uring hotpath required \(io_uring_hotpath: :on\) but unsupported on this host .*no multishot recv \(spec\)/)
    end
  end
end
