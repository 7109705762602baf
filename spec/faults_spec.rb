# frozen_string_literal: true

require "fileutils"
require "json"
require "timeout"

# Faults from outside the process, against the real kernel: io_uring blocked
# by a seccomp filter, the fd limit reached during accept, peers resetting
# connections, a listener closed or shut down under an armed multishot
# accept, a socket closed under an armed recv, and signals every
# millisecond. Each example states what happens and checks that no fd leaks
# (memory errors are what spec:asan and spec:valgrind look for).
RSpec.describe "Fault injection" do
  include HotpathHelpers
  include ChildHelpers

  let(:k) { Hyperion::IOUring::HotpathRing }
  let(:ecanceled) { -Errno::ECANCELED::Errno }
  let(:f_more) { HotpathHelpers::IORING_CQE_F_MORE }

  # Closes sock with an RST instead of a FIN (SO_LINGER on, 0 seconds).
  def reset_close(sock)
    sock.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
    sock.close
  end

  def hotpath_ring
    k.new(queue_depth: 32, n_bufs: 16, buf_size: 4096)
  end

  # Cancels fd on ring, collects the completions that follow for a moment,
  # and closes fd. Returns the completions.
  def cancel_and_close(ring, fd, seconds: 0.1)
    ring.cancel(fd)
    got = completions_within(ring, seconds)
    close_fd(fd)
    got
  end

  # Cancels the listener's multishot accept (one final -ECANCELED), then
  # closes it.
  def cancel_listener(ring, listener)
    ring.cancel(listener)
    got = completions_within(ring, 0.1)
    expect(got.map { |c| [c[:op_kind], c[:result]] }).to eq([[k::OP_ACCEPT, ecanceled]])
    listener.close
  end

  # ---------------------------------------------------------------------------
  describe "io_uring_setup blocked by a seccomp filter (a child process)" do
    # Everything the policy layer and the constructors say, as JSON.
    child_script = <<~'RUBY'
      require "hyperion/io_uring"
      require "json"
      io = Hyperion::IOUring
      fds = -> { Dir.children("/proc/self/fd").map { |n| [n, (File.readlink("/proc/self/fd/#{n}") rescue nil)] }.to_h }
      def attempt
        v = yield
        { "value" => [true, false, nil].include?(v) ? v : v.class.name }
      rescue Exception => e # rubocop:disable Lint/RescueException
        { "error" => e.class.name, "message" => e.message }
      end
      3.times { GC.start }
      before = fds.call
      out = {
        "native_probe" => io.native_probe,
        "supported" => io.supported?,
        "reason" => io.unsupported_reason,
        "auto" => attempt { io.resolve_policy!(:auto) },
        "on" => attempt { io.resolve_policy!(:on) },
        "ring_new" => attempt { io::Ring.new(queue_depth: 8).tap(&:close) },
        "hotpath_supported" => io.hotpath_supported?,
        "hotpath_reason" => io.hotpath_unsupported_reason,
        "hotpath_auto" => attempt { io.resolve_hotpath_policy!(:auto) },
        "hotpath_on" => attempt { io.resolve_hotpath_policy!(:on) },
        "hotpath_new" => attempt { io::HotpathRing.new.tap(&:close) },
        "fiber_ring" => attempt { io.fiber_ring.tap { io.close_fiber_rings } },
        "diagnostics_supported" => io.diagnostics[:supported],
        "hotpath_cached" => io.instance_variable_get(:@hotpath_supported)
      }
      3.times { GC.start }
      out["fds_leaked"] = fds.call.reject { |n, t| before[n] == t }
      puts JSON.generate(out)
    RUBY

    define_method(:child_script) { child_script }

    def seccomp_exec
      src = File.expand_path("support/seccomp_exec.c", __dir__)
      dir = File.expand_path("../tmp/faults_spec", __dir__)
      exe = File.join(dir, "seccomp_exec")
      return exe if File.exist?(exe) && File.mtime(exe) >= File.mtime(src)

      skip "gcc not found: the seccomp helper cannot be built" unless system("command -v gcc >/dev/null 2>&1")
      FileUtils.mkdir_p(dir)
      tmp = "#{exe}.#{Process.pid}"
      # Not under spec:asan's preloaded runtime: gcc is not ours to test.
      out = IO.popen({ "LD_PRELOAD" => nil }, ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", tmp, src],
                     err: %i[child out], &:read)
      raise "building #{src} failed:\n#{out}" unless $?.success?

      File.rename(tmp, exe) # atomic: a concurrent run sees the old file or the new one
      exe
    end

    def run_probe_child(errno)
      cmd = [*(errno ? [seccomp_exec, errno] : []), *child_ruby_cmd, "-e", child_script]
      res = nil
      expect_no_fd_leak { res = run_child(child_ruby_env, cmd, timeout: 60) }
      expect(res.success?).to be(true), res.describe
      JSON.parse(res.out.lines.last)
    end

    def expect_io_uring_refused(r, reason_matcher)
      expect(r["supported"]).to be(false)
      expect(r["reason"]).to reason_matcher
      expect(r["auto"]).to eq("value" => false)
      expect(r["on"]["error"]).to eq("Hyperion::IOUring::Unsupported")
      expect(r["on"]["message"]).to start_with("io_uring required (io_uring: :on) but not supported on this host")
      expect(r["on"]["message"]).to include(r["reason"])
      expect(r["ring_new"]["error"]).to eq("Hyperion::IOUring::Unsupported")
      expect(r["ring_new"]["message"]).to include(r["reason"])
      expect(r["hotpath_supported"]).to be(false)
      expect(r["hotpath_reason"]).to include(r["reason"])
      expect(r["hotpath_auto"]).to eq("value" => false)
      expect(r["hotpath_on"]["error"]).to eq("Hyperion::IOUring::Unsupported")
      expect(r["hotpath_on"]["message"])
        .to start_with("io_uring hotpath required (io_uring_hotpath: :on) but unsupported on this host")
      expect(r["hotpath_new"]["error"]).to eq("Hyperion::IOUring::Unsupported")
      expect(r["fiber_ring"]["error"]).to eq("Hyperion::IOUring::Unsupported")
      expect(r["diagnostics_supported"]).to be(false)
      expect(r["fds_leaked"]).to eq({})
    end

    it "the child script reports io_uring usable without the filter (the control)" do
      require_hotpath!
      r = run_probe_child(nil)
      expect(r).to include("native_probe" => 0, "supported" => true, "reason" => nil, "auto" => { "value" => true },
                           "on" => { "value" => true }, "ring_new" => { "value" => "Hyperion::IOUring::Ring" },
                           "hotpath_supported" => true, "hotpath_new" => { "value" => "Hyperion::IOUring::HotpathRing" },
                           "fds_leaked" => {})
    end

    it "with EPERM: unsupported, the reason names EPERM and kernel.io_uring_disabled; :on and both rings raise Unsupported" do
      r = run_probe_child("EPERM")
      expect(r["native_probe"]).to eq(Errno::EPERM::Errno)
      disabled = "/proc/sys/kernel/io_uring_disabled"
      sysctl = File.exist?(disabled) ? include("(kernel.io_uring_disabled=#{File.read(disabled).strip})") : anything
      expect_io_uring_refused(r, start_with("io_uring_setup failed with EPERM").and(sysctl).and(include("seccomp")))
    end

    it "with ENOSYS: unsupported, the reason names ENOSYS and seccomp; :on and both rings raise Unsupported" do
      r = run_probe_child("ENOSYS")
      expect(r["native_probe"]).to eq(Errno::ENOSYS::Errno)
      expect_io_uring_refused(r, start_with("io_uring_setup failed with ENOSYS").and(include("seccomp")))
    end

    # connect(2) EAGAIN starts no handshake: the socket stays closed (it
    # polls writable, SO_ERROR 0). The probe used to wait on it as if in
    # progress, then took the accept's 1 s timeout for the host's answer
    # and cached false.
    it "with connect(2) failing EAGAIN: the hot-path probe reports EAGAIN, transient, and does not cache it" do
      require_hotpath!
      r = run_probe_child("connect=EAGAIN")
      expect(r["supported"]).to be(true)
      expect(r["hotpath_supported"]).to be(false)
      expect(r["hotpath_reason"]).to include("Errno::EAGAIN").and(include("loopback connect"))
      expect(r["hotpath_cached"]).to be_nil
      expect(r["fds_leaked"]).to eq({})
    end
  end

  # ---------------------------------------------------------------------------
  describe "RLIMIT_NOFILE exhausted during accept" do
    def kernel_nofile_soft
      line = File.foreach("/proc/self/limits").find { |l| l.start_with?("Max open files") }
      Integer(line.split[3])
    end

    # Lowers the soft fd limit to just above the highest open fd and fills
    # every free number below it, yields the filler IOs (close one to free a
    # number), then closes them and restores the limit. Nothing in the block
    # may open an fd until it frees one: no Dir.children, no
    # expect_ring_idle, and no rspec matcher (rspec autoloads their files);
    # the block records, the example asserts afterwards.
    def with_fds_exhausted
      soft, hard = Process.getrlimit(:NOFILE)
      fillers = []
      # One number above the highest open fd stays free, so reading
      # /proc/self/limits below works even when the table is dense.
      limit = open_fds.keys.max + 2
      begin
        Process.setrlimit(:NOFILE, limit, hard)
      rescue Errno::EINVAL, Errno::EPERM => e
        soft = nil
        skip "setrlimit(RLIMIT_NOFILE, #{limit}) refused (#{e.class}; valgrind emulates the fd limit for its client)"
      end
      if kernel_nofile_soft != limit
        skip "setrlimit(RLIMIT_NOFILE) did not reach the kernel (valgrind emulates it for its client), " \
             "so a kernel-side accept cannot hit EMFILE"
      end
      begin
        loop { fillers << File.open(File::NULL) }
      rescue Errno::EMFILE
        nil
      end
      raise "could not fill the fd table (#{fillers.size} fillers for a limit of #{limit})" if fillers.size >= limit

      yield fillers
    ensure
      fillers&.each { |f| f.close unless f.closed? }
      Process.setrlimit(:NOFILE, soft, hard) if soft
    end

    it "Ring#accept raises Errno::EMFILE; once an fd is free it accepts the waiting client and the ring works on" do
      require_io_uring!
      expect_no_fd_leak do
        ring = Hyperion::IOUring::Ring.new(queue_depth: 4)
        with_listener do |server, port|
          client = connect(port)
          client.write("first")
          fd = nil
          errors = []
          with_fds_exhausted do |fillers|
            [2, 0].each do |timeout|
              errors << (ring.accept(server, timeout: timeout) rescue $!) # rubocop:disable Style/RescueModifier
            end
            fillers.pop.close
            fd = ring.accept(server, timeout: 2)
          end
          expect(errors.map(&:class)).to eq([Errno::EMFILE, Errno::EMFILE])
          expect(errors[0].message).to include("accept(fd #{server.fileno})")
          expect(fd).to be_a(Integer)
          sock = socket_for(fd)
          expect(sock.remote_address.ip_port).to eq(client.local_address.ip_port)
          expect(ring.read(fd, max: 5, timeout: 2)).to eq("first")
          expect_ring_idle(ring)
          second = connect(port)
          fd2 = ring.accept(server, timeout: 2)
          expect(socket_for(fd2).remote_address.ip_port).to eq(second.local_address.ip_port)
        ensure
          client&.close
          second&.close
          sock&.close
          IO.for_fd(fd2).close if fd2.is_a?(Integer)
        end
        ring.close
      end
    end

    it "HotpathRing's multishot accept ends with one final -EMFILE completion; re-armed once an fd is free, it accepts" do
      require_hotpath!
      expect_no_fd_leak do
        ring = hotpath_ring
        listener = TCPServer.new("127.0.0.1", 0)
        client = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
        client.write("hello")
        fd = nil
        got = later = healthy = nil
        with_fds_exhausted do |fillers|
          ring.submit_accept_multishot(listener)
          got = collect_completions(ring) { |cs| cs.any? }
          later = completions_within(ring, 0.1)
          healthy = ring.healthy?
          fillers.pop.close
          ring.submit_accept_multishot(listener)
          fd = accept_through(ring)
        end
        expect(got.size).to eq(1)
        expect(got[0]).to include(op_kind: k::OP_ACCEPT, fd: listener.fileno, result: -Errno::EMFILE::Errno, buf_id: -1)
        expect(got[0][:flags] & f_more).to eq(0) # the request ended
        expect(later).to eq([]) # and was not re-armed by the ring (that would spin)
        expect(healthy).to be(true)
        expect(socket_for(fd).tap { |s| s.autoclose = false }.remote_address.ip_port)
          .to eq(client.local_address.ip_port)
        ring.submit_recv_multishot(fd)
        expect(recv_through(ring, fd, 5)).to eq("hello")
        expect(ring.stats).to include(accepts: 1, buffers_in_use: 0)
        expect(cancel_and_close(ring, fd).map { |c| c[:result] }).to eq([ecanceled])
        cancel_listener(ring, listener)
        client.close
        expect(ring.stats[:inflight]).to eq(0)
        ring.close
      end
    end
  end

  # ---------------------------------------------------------------------------
  describe "a peer that resets the connection (RST)" do
    before { require_hotpath! }

    it "ends an armed multishot recv with a final -ECONNRESET after the bytes that came first; nothing is re-armed" do
      expect_no_fd_leak do
        ring = hotpath_ring
        listener, client, fd = open_hotpath_connection(ring)
        ring.submit_recv_multishot(fd)
        client.write("before the reset")
        expect(recv_through(ring, fd, 16)).to eq("before the reset")
        reset_close(client)
        got = collect_completions(ring) { |cs| cs.any? }
        expect(got).to eq([{ op_kind: k::OP_RECV, fd: fd, result: -Errno::ECONNRESET::Errno, buf_id: -1, flags: 0 }])
        expect(completions_within(ring, 0.1)).to eq([])
        expect(ring.healthy?).to be(true)
        expect(cancel_and_close(ring, fd)).to eq([]) # nothing was armed any more
        cancel_listener(ring, listener)
        expect(ring.stats).to include(inflight: 0, buffers_in_use: 0, rearms: 0)
        ring.close
      end
    end

    it "fails a long send cut off by the reset, and the send queued behind it, once each with -EPIPE or -ECONNRESET" do
      expect_no_fd_leak do
        ring = hotpath_ring
        listener, client, fd = open_hotpath_connection(ring)
        client.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
        ring.submit_send(fd, Random.bytes(8 << 20))
        ring.submit_send(fd, "queued behind")
        expect(completions_within(ring, 0.1)).to eq([]) # stuck: the peer does not read
        expect(client.read(1000).bytesize).to eq(1000)
        reset_close(client)
        got = collect_completions(ring) { |cs| cs.size >= 2 }
        expect(completions_within(ring, 0.1)).to eq([])
        expect(got.map { |c| [c[:op_kind], c[:fd]] }).to eq([[k::OP_SEND, fd]] * 2)
        expect(got.map { |c| c[:result] }).to all(satisfy { |r| [-Errno::EPIPE::Errno, -Errno::ECONNRESET::Errno].include?(r) })
        expect(ring.stats).to include(sends: 0, send_bytes: 0)
        expect(ring.healthy?).to be(true)
        expect(cancel_and_close(ring, fd)).to eq([])
        cancel_listener(ring, listener)
        expect(ring.stats[:inflight]).to eq(0)
        ring.close
      end
    end

    it "Ring#read raises Errno::ECONNRESET when the reset comes while it waits; the ring stays idle and usable" do
      require_io_uring!
      expect_no_fd_leak do
        ring = Hyperion::IOUring::Ring.new(queue_depth: 4)
        with_listener do |server, port|
          client = connect(port)
          fd = ring.accept(server, timeout: 5)
          resetter = Thread.new { sleep 0.1; reset_close(client) }
          took = elapsed do
            expect { ring.read(fd, timeout: 10) }.to raise_error(Errno::ECONNRESET, /read\(fd #{fd}\)/)
          end
          expect(took).to be < 5
          resetter.join
          expect_ring_idle(ring)
          IO.for_fd(fd).close
          # A client that wrote, reset and was gone before the accept: the
          # accept still returns its socket; its bytes, then ECONNRESET.
          gone = connect(port)
          gone.write("x")
          reset_close(gone)
          sleep 0.05
          fd = ring.accept(server, timeout: 5)
          expect(ring.read(fd, timeout: 5)).to eq("x")
          expect { ring.read(fd, timeout: 5) }.to raise_error(Errno::ECONNRESET)
          IO.for_fd(fd).close
          expect_ring_idle(ring)
        end
        ring.close
      end
    end
  end

  # ---------------------------------------------------------------------------
  describe "the listener closed or shut down under an armed multishot accept" do
    before { require_hotpath! }

    it "closing the listener without cancel: the ring notices, cancels, and the accept ends with -EBADF" do
      expect_no_fd_leak do
        ring = hotpath_ring
        listener = TCPServer.new("127.0.0.1", 0)
        port = listener.local_address.ip_port
        lfd = listener.fileno
        ring.submit_accept_multishot(listener)
        ring.flush
        # Close the listener's fd by dup2-ing /dev/null over it: the number
        # stays taken, so no accepted socket can get it (a number reused by
        # an accepted socket retires the listener's entry: see the fd-number
        # reuse specs in hotpath_lifecycle_spec.rb).
        devnull = File.open(File::NULL)
        listener.reopen(devnull)
        devnull.close
        expect(File.readlink("/proc/self/fd/#{lfd}")).to eq("/dev/null")
        # The kernel's request keeps its own reference (6.18): the socket
        # would go on listening. The ring's waits look at the number every
        # 100 ms, see it names another file, and cancel: a client that got
        # in meanwhile is closed, never delivered; then the port refuses.
        late = begin
          TCPSocket.new("127.0.0.1", port)
        rescue Errno::ECONNREFUSED
          nil
        end
        got = collect_completions(ring) { |cs| cs.any? }
        got += completions_within(ring, 0.1)
        expect(got).to eq([{ op_kind: k::OP_ACCEPT, fd: lfd, result: -Errno::EBADF::Errno, buf_id: -1, flags: 0 }])
        expect { TCPSocket.new("127.0.0.1", port).close }.to raise_error(Errno::ECONNREFUSED)
        late&.close
        listener.close # (now /dev/null)
        expect(ring.stats).to include(accepts: 0, inflight: 0)
        ring.close
      end
    end

    it "cancel then close: the final -ECANCELED arrives and no connection is accepted after it" do
      expect_no_fd_leak do
        ring = hotpath_ring
        listener = TCPServer.new("127.0.0.1", 0)
        port = listener.local_address.ip_port
        ring.submit_accept_multishot(listener)
        ring.flush
        ring.cancel(listener)
        got = collect_completions(ring) { |cs| cs.any? }
        expect(got).to eq([{ op_kind: k::OP_ACCEPT, fd: listener.fileno, result: ecanceled, buf_id: -1, flags: 0 }])
        listener.close
        expect { TCPSocket.new("127.0.0.1", port).close }.to raise_error(Errno::ECONNREFUSED)
        expect(completions_within(ring, 0.1)).to eq([])
        expect(ring.stats).to include(accepts: 0, inflight: 0, rearms: 0)
        ring.close
      end
    end

    it "shutdown(2) of the listener ends the accept with a final -EINVAL, not re-armed; the port refuses" do
      expect_no_fd_leak do
        ring = hotpath_ring
        listener = TCPServer.new("127.0.0.1", 0)
        port = listener.local_address.ip_port
        ring.submit_accept_multishot(listener)
        ring.flush
        listener.shutdown(Socket::SHUT_RDWR)
        got = collect_completions(ring) { |cs| cs.any? }
        expect(got).to eq([{ op_kind: k::OP_ACCEPT, fd: listener.fileno, result: -Errno::EINVAL::Errno, buf_id: -1, flags: 0 }])
        expect { TCPSocket.new("127.0.0.1", port).close }.to raise_error(Errno::ECONNREFUSED)
        expect(completions_within(ring, 0.1)).to eq([])
        expect(ring.healthy?).to be(true)
        expect(ring.stats).to include(inflight: 0, rearms: 0)
        listener.close
        ring.close
      end
    end

    it "Ring#accept: shutdown by another thread during the wait raises Errno::EINVAL; a close by another thread raises IOError" do
      require_io_uring!
      expect_no_fd_leak do
        ring = Hyperion::IOUring::Ring.new(queue_depth: 4)
        listener = TCPServer.new("127.0.0.1", 0)
        t = Thread.new { sleep 0.1; listener.shutdown(Socket::SHUT_RDWR) }
        took = elapsed { expect { ring.accept(listener, timeout: 10) }.to raise_error(Errno::EINVAL, /accept/) }
        expect(took).to be < 5
        t.join
        listener.close
        expect_ring_idle(ring)

        # Closed (not shut down) by another thread: the request holds the
        # socket, but the wait looks at the listener every 100 ms, cancels,
        # and raises IOError; a client that connected then is not returned.
        listener = TCPServer.new("127.0.0.1", 0)
        port = listener.local_address.ip_port
        late = nil
        t = Thread.new do
          sleep 0.1
          listener.close
          late = begin
            TCPSocket.new("127.0.0.1", port)
          rescue Errno::ECONNREFUSED
            nil
          end
        end
        took = elapsed { expect { ring.accept(listener, timeout: 10) }.to raise_error(IOError, /closed/) }
        expect(took).to be < 5
        t.join
        expect { ring.accept(listener, timeout: 0) }.to raise_error(IOError, /accept: closed stream/)
        expect_ring_idle(ring)
        late&.close
        ring.close
      end
    end
  end

  # ---------------------------------------------------------------------------
  describe "a socket closed by Ruby under an armed multishot recv, without cancel" do
    before { require_hotpath! }

    it "keeps receiving on the closed number (the ring holds the socket) until cancel releases it" do
      expect_no_fd_leak do
        ring = hotpath_ring
        listener, client, fd = open_hotpath_connection(ring)
        ring.submit_recv_multishot(fd)
        ring.flush
        IO.for_fd(fd).close
        # (Nothing below opens an fd until the cancel, so the number stays
        # free: a socket armed on it would retire the old entry.)
        # The kernel (6.18) does not end the request at close(2): the bytes
        # the peer sends now still arrive, byte for byte, for the old number.
        payload = Random.bytes(10_000)
        client.write(payload)
        expect(recv_through(ring, fd, payload.bytesize)).to eq(payload)
        expect(client.read_nonblock(1, exception: false)).to eq(:wait_readable) # no EOF: still held
        # cancel by number still finds it; then the socket is released.
        expect(File.exist?("/proc/self/fd/#{fd}")).to be(false)
        ring.cancel(fd)
        got = collect_completions(ring) { |cs| cs.any? }
        expect(got).to eq([{ op_kind: k::OP_RECV, fd: fd, result: ecanceled, buf_id: -1, flags: 0 }])
        expect(client.wait_readable(5)).to be_truthy
        expect(client.read_nonblock(1, exception: false)).to be_nil # EOF: the server socket is gone
        client.close
        cancel_listener(ring, listener)
        expect(ring.stats).to include(inflight: 0, buffers_in_use: 0)
        ring.close
      end
    end

    it "ends by itself when the peer closes, and ring.close drains one still armed; both release the socket" do
      expect_no_fd_leak do
        ring = hotpath_ring
        listener, client, fd = open_hotpath_connection(ring)
        ring.submit_recv_multishot(fd)
        ring.flush
        IO.for_fd(fd).close
        client.close
        got = collect_completions(ring) { |cs| cs.any? }
        expect(got.size).to eq(1)
        expect(got[0]).to include(op_kind: k::OP_RECV, fd: fd, result: 0, buf_id: -1)
        expect(got[0][:flags] & f_more).to eq(0)

        client2 = TCPSocket.new("127.0.0.1", listener.local_address.ip_port)
        fd2 = accept_through(ring)
        ring.submit_recv_multishot(fd2)
        ring.flush
        IO.for_fd(fd2).close
        expect(ring.stats[:inflight]).to eq(2) # the accept and the orphaned recv
        ring.close
        expect(client2.wait_readable(5)).to be_truthy
        expect(client2.read_nonblock(1, exception: false)).to be_nil
        client2.close
        listener.close
      end
    end
  end

  # ---------------------------------------------------------------------------
  describe "signals every millisecond while the ring waits" do
    # Another process sends SIGUSR1 to this one about every millisecond
    # (Ruby's sleep granularity) until stopped; a trap handler counts them.
    def with_signal_storm
      count = 0
      old = trap(:USR1) { count += 1 }
      storm = start_child(child_ruby_env, [RbConfig.ruby, "-e", <<~RUBY, Process.pid.to_s])
        pid = Integer(ARGV[0])
        $stdout.sync = true
        puts "go"
        sent = 0
        stop = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 60
        while Process.clock_gettime(Process::CLOCK_MONOTONIC) < stop
          Process.kill(:USR1, pid)
          sent += 1
          sleep 0.001
        end
      RUBY
      expect(storm.gets(timeout: 20)).to eq("go")
      yield -> { count }
    ensure
      storm&.kill
      sleep 0.1 # let the handler run for signals already delivered, before DEFAULT (which exits) is back
      trap(:USR1, old || "DEFAULT")
    end

    it "HotpathRing: echo traffic stays byte-exact, waits last their full timeout, healthy? stays true" do
      require_hotpath!
      expect_no_fd_leak do
        with_signal_storm do |handled|
          ring = k.new(queue_depth: 64, n_bufs: 64, buf_size: 4096)
          # A wait with nothing to reap lasts its whole timeout: EINTR is
          # "nothing yet", not an error and not an early return.
          t0 = hp_now
          expect(ring.each_completion(timeout_ms: 200) { raise "nothing was armed" }).to eq(0)
          expect(hp_now - t0).to be >= 0.19
          seen = handled.call

          listener = TCPServer.new("127.0.0.1", 0)
          port = listener.local_address.ip_port
          server = HotpathHelpers::EchoServer.new(ring, listener)
          deadline = hp_now + 30
          problems = Queue.new
          clients = Array.new(16) do |i|
            Thread.new do
              sock = TCPSocket.new("127.0.0.1", port)
              20.times do |j|
                msg = Random.bytes(1 + ((i * 7919 + j * 104_729) % 20_000))
                write_fully(sock, msg, deadline)
                problems << "client #{i} message #{j}: echo differs" unless read_fully(sock, msg.bytesize, deadline) == msg
              end
            rescue StandardError => e
              problems << "client #{i}: #{e.class}: #{e.message}"
            ensure
              sock&.close
            end
          end
          finished = server.run(deadline) { clients.none?(&:alive?) && server.open_connections.zero? }
          clients.each { |t| t.join(1) || t.kill }
          expect(Array.new(problems.size) { problems.pop }).to eq([])
          expect(server.errors).to eq([])
          expect(finished).to be(true)
          expect(server.eofs).to eq(16)
          expect(server.send_bytes).to eq(server.recv_bytes)
          expect(ring.healthy?).to be(true)
          expect(handled.call).to be > seen # signals kept coming while it served
          expect(handled.call).to be > 50
          cancel_listener(ring, listener)
          expect(ring.stats).to include(buffers_in_use: 0, inflight: 0)
          server.shutdown
          ring.close
        end
      end
    end

    it "Ring: accept and read wait their full timeout, then return what arrives, without spurious errors" do
      require_io_uring!
      expect_no_fd_leak do
        with_signal_storm do |handled|
          ring = Hyperion::IOUring::Ring.new(queue_depth: 4)
          with_listener do |server, port|
            took = elapsed { expect(ring.accept(server, timeout: 0.3)).to eq(:wouldblock) }
            expect(took).to be >= 0.29
            seen = handled.call
            expect(seen).to be > 10
            client = connect(port)
            fd = ring.accept(server, timeout: 5)
            took = elapsed { expect(ring.read(fd, timeout: 0.3)).to eq(:wouldblock) }
            expect(took).to be >= 0.29
            50.times do |i|
              writer = Thread.new { sleep 0.002; client.write("message #{i}") }
              expect(ring.read(fd, max: 100, timeout: 5)).to eq("message #{i}")
              writer.join
            end
            expect(handled.call).to be > seen
            expect_ring_idle(ring)
          ensure
            client&.close
            IO.for_fd(fd).close if fd.is_a?(Integer)
          end
          ring.close
        end
      end
    end
  end
end
