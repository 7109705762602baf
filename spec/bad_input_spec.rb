# frozen_string_literal: true

require "fiddle"
require "tmpdir"
require "timeout"

# A sweep of bad input over every public method of Ring, HotpathRing and
# the module: wrong types, nil, negative and huge Integers, closed IOs,
# non-socket fds (a pipe, a regular file, a directory, the ring's own fd),
# frozen Strings, Strings changed right after submit_send, released buffer
# ids. Every call runs in this process under a watchdog: each must give a
# Ruby exception of a sensible class or the documented result; a crash
# fails the suite, a hang fails the example. Each example checks the rings
# still work afterwards and that no fd leaked.
RSpec.describe "Bad input sweep" do
  include HotpathHelpers

  let(:k) { Hyperion::IOUring::HotpathRing }
  let(:io) { Hyperion::IOUring }

  WRONG_TYPES = {
    "nil" => nil, "a String" => "3", "a Symbol" => :three, "a Float" => 3.0, "a Rational" => Rational(3, 1),
    "an Array" => [3], "a Hash" => { fd: 3 }, "an Object" => Object.new, "true" => true
  }.freeze
  BAD_INTEGERS = { "-1" => -1, "2**31" => 2**31, "2**32" => 2**32, "2**64" => 2**64, "-2**64" => -2**64 }.freeze

  # ---- the table machinery -------------------------------------------------

  # What a call did: [:ok, value], [:raised, exception] or [:hung, nil]
  # (still running after +seconds+; the wait is interrupted by Timeout).
  def outcome(seconds = 10)
    [:ok, Timeout.timeout(seconds) { yield }]
  rescue Timeout::Error
    [:hung, nil]
  rescue StandardError => e
    [:raised, e]
  end

  # expected: an exception class, [class, /message/], or a Proc that
  # returns truthy for an acceptable return value (see #returns).
  def check(label, expected, seconds: 10, &call)
    kind, value = outcome(seconds, &call)
    note = nil
    ok = case expected
         when Class then kind == :raised && value.is_a?(expected)
         when Array then kind == :raised && value.is_a?(expected[0]) && value.message.match?(expected[1])
         when Proc
           begin
             kind == :ok && expected.call(value)
           rescue StandardError => e
             note = e.message
             false
           end
         end
    @checked = (@checked || 0) + 1
    return if ok

    got = kind == :raised ? "#{value.class}: #{value.message}" : "#{kind} #{value.inspect}"
    got += " (#{note})" if note
    (@mismatches ||= []) << "#{label}: expected #{describe_expected(expected)}, got #{got}"
  end

  def returns(value = :__any, &block)
    return block if block

    ->(v) { value == :__any || v == value }.tap { |pr| pr.define_singleton_method(:inspect) { "returns #{value.inspect}" } }
  end

  def describe_expected(expected)
    case expected
    when Class then expected.name
    when Array then "#{expected[0].name} matching #{expected[1].inspect}"
    else expected.inspect
    end
  end

  def expect_all_checked(min)
    expect(@mismatches || []).to eq([])
    expect(@checked).to be >= min
  end

  # ---- fixtures --------------------------------------------------------------

  before do
    require_hotpath!
    hotpath_fd_snapshot
    @ring = Hyperion::IOUring::Ring.new(queue_depth: 4)
    @hot = k.new(queue_depth: 32, n_bufs: 16, buf_size: 1024)
    @listener = TCPServer.new("127.0.0.1", 0) # for Ring#accept
    @hot_listener, @client, @conn = open_hotpath_connection(@hot) # a connection accepted by @hot
    @pipe_r, @pipe_w = IO.pipe
    @file = File.open(File.join(Dir.tmpdir, "hio-bad-input-#{Process.pid}"), "w+")
    @file.write("file content")
    @file.flush
    @file.rewind
    @dir = File.open(Dir.tmpdir)
    @closed_io = IO.pipe.each(&:close).first
    @unlistening = Socket.new(:INET, :STREAM) # a socket that is not listening
  end

  after do
    [@client, @listener, @pipe_r, @pipe_w, @dir, @unlistening].each { |s| s&.close unless s&.closed? }
    if @file
      @file.close
      File.unlink(@file.path)
    end
    unless @hot.nil? || @hot.closed?
      @hot.cancel(@conn)
      @hot.cancel(@hot_listener)
      completions_within(@hot, 0.05)
    end
    close_fd(@conn)
    @hot_listener&.close
    @hot&.close
    @ring&.close
    hotpath_expect_no_new_fds
  end

  # The rings still do their job after the sweep.
  def expect_rings_work
    expect(@hot.healthy?).to be(true)
    client = TCPSocket.new("127.0.0.1", @listener.local_address.ip_port)
    fd = @ring.accept(@listener, timeout: 5)
    expect(fd).to be_a(Integer)
    client.write("still fine")
    expect(@ring.read(fd, timeout: 5)).to eq("still fine")
    expect_ring_idle(@ring)
    IO.for_fd(fd).close
    client.close
    @hot.submit_recv_multishot(@conn)
    @client.write("hot still fine")
    expect(recv_through(@hot, @conn, 14)).to eq("hot still fine")
    @hot.submit_send(@conn, "and back")
    got = collect_completions(@hot) { |cs| cs.any? }
    expect(got.map { |c| [c[:op_kind], c[:result]] }).to eq([[k::OP_SEND, 8]])
    expect(read_fully(@client, 8, hp_now + 5)).to eq("and back")
  end

  # The one completion a call produced on ring (within 5 s), as [op, result].
  def next_completion(ring)
    got = collect_completions(ring) { |cs| cs.any? }
    got += completions_within(ring, 0.02)
    raise "expected one completion, got #{got.inspect}" unless got.size == 1

    [got[0][:op_kind], got[0][:result]]
  end

  def completion_is(op, result)
    lambda do |_|
      got = next_completion(@hot)
      raise "completion #{got.inspect}, not #{[op, result].inspect}" unless got == [op, result]

      true
    end
  end

  def neg(errno_class)
    -errno_class::Errno
  end

  # ---- the sweep -------------------------------------------------------------

  # Arguments every fd-taking method rejects before doing anything.
  def sweep_fd_argument(label, &call)
    WRONG_TYPES.each { |name, v| check("#{label} with #{name}", TypeError) { call.call(v) } }
    BAD_INTEGERS.each { |name, v| check("#{label} with #{name}", ArgumentError) { call.call(v) } }
    check("#{label} with a closed IO", [IOError, /closed stream/]) { call.call(@closed_io) }
    check("#{label} with a Ring", TypeError) { call.call(@ring) }
  end

  it "Ring.new and HotpathRing.new: wrong types, out-of-range and huge values, unknown or positional arguments" do
    expect_no_fd_leak do
      r = Hyperion::IOUring::Ring
      WRONG_TYPES.each { |name, v| check("Ring.new(queue_depth: #{name})", TypeError) { r.new(queue_depth: v) } }
      [0, -1, 32_769, 2**31, 2**64, -2**64].each do |v|
        check("Ring.new(queue_depth: #{v})", ArgumentError) { r.new(queue_depth: v) }
      end
      check("Ring.new(8)", ArgumentError) { r.new(8) }
      check("Ring.new(depth: 8)", ArgumentError) { r.new(depth: 8) }
      check("Ring#initialize twice", [RuntimeError, /already initialized/]) { @ring.send(:initialize) }
      { queue_depth: [0, 32_769, 2**64], n_bufs: [0, 3, 65_536, -1, 2**64], buf_size: [0, 2**20 + 1, -1, 2**64],
        send_buffer_limit: [0, -1, 2**62, 2**64], connection_send_limit: [0, -1, 2**64, 2**26 + 1] }
        .each do |kw, values|
          values.each { |v| check("HotpathRing.new(#{kw}: #{v})", ArgumentError) { k.new(kw => v) } }
          [nil, "8", 8.0].each { |v| check("HotpathRing.new(#{kw}: #{v.inspect})", TypeError) { k.new(kw => v) } }
        end
      [-1, -Float::INFINITY].each do |v|
        check("HotpathRing.new(close_timeout: #{v})", ArgumentError) { k.new(close_timeout: v) }
      end
      ["1", :soon, []].each { |v| check("HotpathRing.new(close_timeout: #{v.inspect})", TypeError) { k.new(close_timeout: v) } }
      check("HotpathRing.new(1024)", ArgumentError) { k.new(1024) }
      check("HotpathRing.new(bufs: 8)", ArgumentError) { k.new(bufs: 8) }
      check("HotpathRing#initialize twice", [RuntimeError, /already initialized/]) { @hot.send(:initialize) }
      # Not a ring: copies of the Ruby object get a fresh (closed) struct.
      check("Ring#dup", returns(&:closed?)) { @ring.dup }
      check("HotpathRing#clone", returns(&:closed?)) { @hot.clone }
      check("Marshal.dump(Ring)", TypeError) { Marshal.dump(@ring) }
      check("Marshal.dump(HotpathRing)", TypeError) { Marshal.dump(@hot) }
    end
    expect_all_checked(45)
    expect_rings_work
  end

  it "Ring#accept: bad listeners, non-sockets, bad timeouts and keywords" do
    sweep_fd_argument("accept") { |v| @ring.accept(v, timeout: 0) }
    gone = closed_fd_number
    check("accept(a fd that is not open)", [Errno::EBADF, /accept\(fd #{gone}\)/]) { @ring.accept(gone, timeout: 0) }
    check("accept(a pipe)", Errno::ENOTSOCK) { @ring.accept(@pipe_r, timeout: 0) }
    check("accept(a regular file)", Errno::ENOTSOCK) { @ring.accept(@file, timeout: 0) }
    check("accept(a directory)", Errno::ENOTSOCK) { @ring.accept(@dir, timeout: 0) }
    check("accept(its own ring fd)", Errno::ENOTSOCK) { @ring.accept(@ring.fileno, timeout: 0) }
    check("accept(a socket not listening)", Errno::EINVAL) { @ring.accept(@unlistening, timeout: 0) }
    check("accept(a connected socket)", Errno::EINVAL) { @ring.accept(@client, timeout: 0) }
    %w[1 x].each { |v| check("accept(timeout: #{v.inspect})", TypeError) { @ring.accept(@listener, timeout: v) } }
    [:one, [], Object.new].each { |v| check("accept(timeout: #{v.class})", TypeError) { @ring.accept(@listener, timeout: v) } }
    [-1, -0.001, -2**64, Float::NAN].each do |v|
      check("accept(timeout: #{v})", ArgumentError) { @ring.accept(@listener, timeout: v) }
    end
    check("accept(timeout: Complex(1, 1))", RangeError) { @ring.accept(@listener, timeout: Complex(1, 1)) }
    check("accept(timeout: Rational(1, 50))", returns(:wouldblock)) { @ring.accept(@listener, timeout: Rational(1, 50)) }
    # Huge timeouts are capped (at 1e9 s), not overflowed: a waiting client
    # is accepted at once.
    [Float::INFINITY, 1e300, 2**64].each do |v|
      client = TCPSocket.new("127.0.0.1", @listener.local_address.ip_port)
      check("accept(timeout: #{v}) with a client waiting", returns { |fd| fd.is_a?(Integer) && IO.for_fd(fd).close.nil? }) do
        @ring.accept(@listener, timeout: v)
      end
      client.close
    end
    check("accept(listener, bogus: 1)", ArgumentError) { @ring.accept(@listener, bogus: 1) }
    check("accept(listener, 1)", ArgumentError) { @ring.accept(@listener, 1) }
    check("accept()", ArgumentError) { @ring.accept }
    expect_all_checked(35)
    expect_rings_work
  end

  it "Ring#read: bad fds, non-sockets (documented results), bad max: and timeout:" do
    sweep_fd_argument("read") { |v| @ring.read(v, timeout: 0) }
    gone = closed_fd_number
    check("read(a fd that is not open)", [Errno::EBADF, /read\(fd #{gone}\)/]) { @ring.read(gone, timeout: 0) }
    # Not only sockets: a pipe and a file are read as read(2) would.
    check("read(an empty pipe, timeout: 0)", returns(:wouldblock)) { @ring.read(@pipe_r, timeout: 0) }
    @pipe_w.write("piped")
    check("read(a pipe with data)", returns("piped")) { @ring.read(@pipe_r, timeout: 1) }
    check("read(a regular file)", returns("file content")) { @ring.read(@file, timeout: 1) }
    check("read(/dev/null)", returns("")) { File.open(File::NULL) { |f| @ring.read(f, timeout: 1) } }
    check("read(a pipe's write end)", Errno::EBADF) { @ring.read(@pipe_w, timeout: 0) }
    check("read(a directory)", Errno::EISDIR) { @ring.read(@dir, timeout: 5) }
    check("read(a listening socket)", Errno::ENOTCONN) { @ring.read(@listener, timeout: 0) }
    check("read(its own ring fd)", returns(:wouldblock)) { @ring.read(@ring.fileno, timeout: 0.02) }
    [0, -1, 16 * 1024 * 1024 + 1, 2**31, 2**64, -2**64].each do |v|
      check("read(max: #{v})", ArgumentError) { @ring.read(@pipe_r, max: v, timeout: 0) }
    end
    [nil, "1", 1.5, :one].each { |v| check("read(max: #{v.inspect})", TypeError) { @ring.read(@pipe_r, max: v, timeout: 0) } }
    [-1, Float::NAN].each { |v| check("read(timeout: #{v})", ArgumentError) { @ring.read(@pipe_r, timeout: v) } }
    check("read(timeout: \"0\")", TypeError) { @ring.read(@pipe_r, timeout: "0") }
    @pipe_w.write("big timeout")
    check("read(timeout: Float::INFINITY) with data ready", returns("big timeout")) do
      @ring.read(@pipe_r, timeout: Float::INFINITY)
    end
    check("read(fd, bogus: 1)", ArgumentError) { @ring.read(@pipe_r, bogus: 1) }
    check("read(fd, 10)", ArgumentError) { @ring.read(@pipe_r, 10) }
    expect_ring_idle(@ring)
    expect_all_checked(40)
    expect_rings_work
  end

  it "HotpathRing submit_*: bad fds raise; non-sockets end in an error completion, never re-armed" do
    sweep_fd_argument("submit_accept_multishot") { |v| @hot.submit_accept_multishot(v) }
    sweep_fd_argument("submit_recv_multishot") { |v| @hot.submit_recv_multishot(v) }
    sweep_fd_argument("submit_send") { |v| @hot.submit_send(v, "x") }
    sweep_fd_argument("cancel") { |v| @hot.cancel(v) }
    sweep_fd_argument("queued_send_bytes") { |v| @hot.queued_send_bytes(v) }
    check("queued_send_bytes(a fd that is not open)", returns(0)) { @hot.queued_send_bytes(closed_fd_number) }
    %i[submit_accept_multishot submit_recv_multishot].each do |m|
      gone = closed_fd_number
      check("#{m}(a fd that is not open)", [ArgumentError, /fd #{gone} is not open/]) { @hot.public_send(m, gone) }
    end
    check("submit_send(a fd that is not open)", [ArgumentError, /not open/]) { @hot.submit_send(closed_fd_number, "x") }
    check("cancel(a fd that is not open)", returns(nil)) { @hot.cancel(closed_fd_number) }
    check("cancel(a fd never armed)", returns(nil)) { @hot.cancel(@pipe_r) }
    check("cancel(2**30)", returns(nil)) { @hot.cancel(2**30) }
    # submit_close takes Integers only: an IO (open or closed) is a TypeError.
    WRONG_TYPES.each { |name, v| check("submit_close with #{name}", TypeError) { @hot.submit_close(v) } }
    BAD_INTEGERS.each { |name, v| check("submit_close with #{name}", ArgumentError) { @hot.submit_close(v) } }
    check("submit_close with a closed IO", [TypeError, /Integer fd/]) { @hot.submit_close(@closed_io) }
    check("submit_close with an IO", [TypeError, /Integer fd/]) { @hot.submit_close(@pipe_r) }
    check("submit_close with a Ring", TypeError) { @hot.submit_close(@ring) }
    check("submit_close(a fd that is not open)", completion_is(k::OP_CLOSE, neg(Errno::EBADF))) do
      @hot.submit_close(closed_fd_number)
    end
    check("submit_close(2**30)", completion_is(k::OP_CLOSE, neg(Errno::EBADF))) { @hot.submit_close(2**30) }
    check("submit_close(its own ring fd)", [ArgumentError, /ring's own/]) { @hot.submit_close(@hot.fileno) }
    check("submit_close()", ArgumentError) { @hot.submit_close }
    check("submit_close(fd, 1)", ArgumentError) { @hot.submit_close(@conn, 1) }
    check("submit_close(fd, timeout: -1)", [ArgumentError, />= 0/]) { @hot.submit_close(@conn, timeout: -1) }
    check("submit_close(fd, timeout: Float::NAN)", [ArgumentError, />= 0/]) { @hot.submit_close(@conn, timeout: Float::NAN) }
    check("submit_close(fd, timeout: \"1\")", TypeError) { @hot.submit_close(@conn, timeout: "1") }
    check("submit_close(fd, deadline: 1)", [ArgumentError, /unknown keyword/]) { @hot.submit_close(@conn, deadline: 1) }
    enotsock = neg(Errno::ENOTSOCK)
    { "a pipe" => -> { @pipe_r }, "a regular file" => -> { @file }, "a directory" => -> { @dir },
      "its own ring fd" => -> { @hot.fileno } }.each do |name, target|
      check("submit_accept_multishot(#{name})", completion_is(k::OP_ACCEPT, enotsock)) { @hot.submit_accept_multishot(target.call) }
      check("submit_recv_multishot(#{name})", completion_is(k::OP_RECV, enotsock)) { @hot.submit_recv_multishot(target.call) }
      check("submit_send(#{name}, \"x\")", completion_is(k::OP_SEND, enotsock)) { @hot.submit_send(target.call, "x") }
    end
    check("submit_send(a pipe's write end)", completion_is(k::OP_SEND, enotsock)) { @hot.submit_send(@pipe_w, "x") }
    check("submit_accept_multishot(a socket not listening)", completion_is(k::OP_ACCEPT, neg(Errno::EINVAL))) do
      @hot.submit_accept_multishot(@unlistening)
    end
    check("submit_recv_multishot(a listening socket)", completion_is(k::OP_RECV, neg(Errno::ENOTCONN))) do
      @hot.submit_recv_multishot(@listener)
    end
    check("submit_send(a listening socket)", completion_is(k::OP_SEND, neg(Errno::EPIPE))) do
      @hot.submit_send(@listener, "x")
    end
    check("nothing re-armed after those errors", returns([])) { completions_within(@hot, 0.1) }
    check("submit_accept_multishot()", ArgumentError) { @hot.submit_accept_multishot }
    check("submit_recv_multishot(fd, 1)", ArgumentError) { @hot.submit_recv_multishot(@conn, 1) }
    check("cancel()", ArgumentError) { @hot.cancel }
    expect(@hot.stats).to include(rearms: 0)
    expect_all_checked(100)
    expect_rings_work
  end

  it "HotpathRing#submit_send: bad data, frozen Strings, Strings changed right after, the legacy iovec form" do
    [nil, 123, :sym, ["x"], 1.5].each { |v| check("submit_send(fd, #{v.inspect})", TypeError) { @hot.submit_send(@conn, v) } }
    to_str = Object.new.tap { |o| o.define_singleton_method(:to_str) { "via to_str" } }
    bad_to_str = Object.new.tap { |o| o.define_singleton_method(:to_str) { 42 } }
    check("submit_send(fd, an object whose to_str is not a String)", TypeError) { @hot.submit_send(@conn, bad_to_str) }
    expected = +"".b
    send_and_change = lambda do |label, str, change|
      expected << str.b
      check(label, completion_is(k::OP_SEND, str.bytesize)) do
        @hot.submit_send(@conn, str)
        change&.call(str)
      end
    end
    send_and_change.call("submit_send(fd, a frozen String)", "frozen bytes".freeze, nil)
    send_and_change.call("submit_send(fd, an object with to_str)", to_str.to_str, nil)
    send_and_change.call("submit_send(fd, s) then s.replace", +"replaced after", ->(s) { s.replace("XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX") })
    send_and_change.call("submit_send(fd, s) then s.clear", +("cleared after" * 10), ->(s) { s.clear })
    send_and_change.call("submit_send(fd, s) then s << more", +"appended after", ->(s) { s << ("more" * 1000) })
    send_and_change.call("submit_send(fd, s) then setbyte", +"setbyte after", ->(s) { s.setbyte(0, 0) })
    send_and_change.call("submit_send(fd, s) then force_encoding", +"\u00e9ncoding after", ->(s) { s.force_encoding("BINARY") })
    send_and_change.call("submit_send(fd, a shared substring)", ("z" * 100_000).byteslice(10, 50_000), nil)
    send_and_change.call("submit_send(fd, s) then GC.compact", +("compact" * 100), ->(_) { GC.compact if GC.respond_to?(:compact) })
    check("submit_send(fd, \"\")", completion_is(k::OP_SEND, 0)) { @hot.submit_send(@conn, "") }
    check("the peer got every send's original bytes", returns(expected)) { read_fully(@client, expected.bytesize, hp_now + 5) }

    # Legacy form: submit_send(fd, iov_ptr, iov_count).
    payload = "legacy"
    iov = Fiddle::Pointer.malloc(16, Fiddle::RUBY_FREE)
    iov[0, 16] = [Fiddle::Pointer[payload].to_i, payload.bytesize].pack("Q<*")
    ["4096", nil, 3.5, :sym, Object.new].each do |v|
      check("submit_send(fd, #{v.class} as iov_ptr, 1)", [TypeError, /Fiddle::Pointer or an Integer/]) { @hot.submit_send(@conn, v, 1) }
    end
    check("submit_send(fd, 0, 1)", [ArgumentError, /NULL/]) { @hot.submit_send(@conn, 0, 1) }
    check("submit_send(fd, -1, 1)", [ArgumentError, /negative/]) { @hot.submit_send(@conn, -1, 1) }
    check("submit_send(fd, -2**70, 1)", [ArgumentError, /negative/]) { @hot.submit_send(@conn, -2**70, 1) }
    check("submit_send(fd, 2**64, 1)", RangeError) { @hot.submit_send(@conn, 2**64, 1) }
    check("submit_send(fd, ptr, 2) with a 16-byte pointer", [ArgumentError, /need 32 bytes/]) { @hot.submit_send(@conn, iov, 2) }
    [-1, 1025].each { |n| check("submit_send(fd, ptr, #{n})", ArgumentError) { @hot.submit_send(@conn, iov, n) } }
    check("submit_send(fd, ptr, 2**64)", RangeError) { @hot.submit_send(@conn, iov, 2**64) }
    check("submit_send(fd, ptr, \"1\")", TypeError) { @hot.submit_send(@conn, iov, "1") }
    check("submit_send(fd, ptr, 0)", completion_is(k::OP_SEND, 0)) { @hot.submit_send(@conn, iov, 0) }
    check("submit_send(fd, ptr, 1)", completion_is(k::OP_SEND, 6)) { @hot.submit_send(@conn, iov, 1) }
    check("submit_send(fd, ptr.to_i, 1)", completion_is(k::OP_SEND, 6)) { @hot.submit_send(@conn, iov.to_i, 1) }
    check("the peer got the legacy sends", returns("legacylegacy")) { read_fully(@client, 12, hp_now + 5) }
    check("submit_send(fd)", ArgumentError) { @hot.submit_send(@conn) }
    check("submit_send(fd, s, 1, 2)", ArgumentError) { @hot.submit_send(@conn, "x", 1, 2) }
    expect_all_checked(35)
    expect_rings_work
  end

  it "HotpathRing#each_completion: bad keywords; huge timeouts wait (interruptibly) without spinning" do
    [nil, "1", 1.0, :one].each do |v|
      check("each_completion(min_complete: #{v.inspect})", TypeError) { @hot.each_completion(min_complete: v) {} }
    end
    [-1, 65_537, 2**31, 2**64].each do |v|
      check("each_completion(min_complete: #{v})", ArgumentError) { @hot.each_completion(min_complete: v) {} }
    end
    ["1", :one, Rational(1, 2), Object.new].each do |v|
      check("each_completion(timeout_ms: #{v.class})", TypeError) { @hot.each_completion(timeout_ms: v) {} }
    end
    [-1, -0.5, -2**64, Float::NAN].each do |v|
      check("each_completion(timeout_ms: #{v})", ArgumentError) { @hot.each_completion(timeout_ms: v) {} }
    end
    ["1", 1.5, :one].each do |v|
      check("each_completion(min_wait_us: #{v.inspect})", TypeError) { @hot.each_completion(min_wait_us: v) {} }
    end
    [-1, 1_000_001, 2**32, 2**64].each do |v|
      check("each_completion(min_wait_us: #{v})", ArgumentError) { @hot.each_completion(min_wait_us: v) {} }
    end
    check("each_completion(min_complete: 65536, min_wait_us: 1_000_000, timeout_ms: 1)", returns(0)) do
      @hot.each_completion(min_complete: 65_536, min_wait_us: 1_000_000, timeout_ms: 1) {}
    end
    check("each_completion without a block", LocalJumpError) { @hot.each_completion(timeout_ms: 0) }
    check("each_completion(bogus: 1)", ArgumentError) { @hot.each_completion(bogus: 1) {} }
    check("each_completion(1)", ArgumentError) { @hot.each_completion(1) {} }
    check("each_completion(min_complete: 65536, timeout_ms: 0)", returns(0)) do
      @hot.each_completion(min_complete: 65_536, timeout_ms: 0) {}
    end
    # How many blocking waits an interrupted wait with no limit makes in
    # 0.2 s (1; about 20 under valgrind, which waits in 10 ms slices).
    waits = @hot.stats[:waits]
    check("each_completion(timeout_ms: nil) with nothing pending", returns(:interrupted)) do
      Timeout.timeout(0.2) { @hot.each_completion(timeout_ms: nil) {} }
    rescue Timeout::Error
      :interrupted
    end
    unlimited_waits = @hot.stats[:waits] - waits
    [Float::INFINITY, 1e300, 2**64, 1e13].each do |v|
      # With a completion ready: yields it at once.
      check("each_completion(timeout_ms: #{v}) with one ready", returns(1)) do
        @hot.submit_send(@conn, "")
        @hot.each_completion(timeout_ms: v) {}
      end
      # With nothing to wait for: waits (as with nil) until interrupted,
      # in a few blocking waits, not a busy loop.
      waits = @hot.stats[:waits]
      check("each_completion(timeout_ms: #{v}) with nothing pending", returns(:interrupted)) do
        Timeout.timeout(0.2) { @hot.each_completion(timeout_ms: v) {} }
      rescue Timeout::Error
        :interrupted
      end
      check("  ... waited as timeout_ms: nil does, without spinning", returns { |n| n <= unlimited_waits * 2 + 5 }) do
        @hot.stats[:waits] - waits
      end
      check("  ... and stayed healthy", returns(true)) { @hot.healthy? }
    end
    check("each_completion(raw: \"yes\") yields raw Integers", returns([[k::OP_SEND, @conn, 0, -1]])) do
      got = []
      @hot.submit_send(@conn, "")
      @hot.each_completion(raw: "yes") { |op, fd, res, bid, _flags| got << [op, fd, res, bid] }
      got
    end
    expect_all_checked(35)
    expect_rings_work
  end

  it "HotpathRing buffers: bad and released buffer ids, bad lengths" do
    @hot.submit_recv_multishot(@conn)
    @client.write("0123456789")
    got = collect_completions(@hot) { |cs| cs.sum { |c| c[:result] } >= 10 }
    expect(got.size).to eq(1)
    bid = got[0][:buf_id]
    free_bid = (0...16).find { |b| b != bid }
    %i[copy_buffer take_buffer].each do |m|
      WRONG_TYPES.each { |name, v| check("#{m}(#{name}, 1)", TypeError) { @hot.public_send(m, v, 1) } }
      [-1, 16, 2**31, 2**64, -2**64].each { |v| check("#{m}(#{v}, 1)", ArgumentError) { @hot.public_send(m, v, 1) } }
      check("#{m}(a buffer Ruby does not hold, 1)", [ArgumentError, /not held/]) { @hot.public_send(m, free_bid, 1) }
      [nil, "1", 1.0].each { |v| check("#{m}(bid, #{v.inspect})", TypeError) { @hot.public_send(m, bid, v) } }
      [-1, 11, 1024, 2**64].each { |v| check("#{m}(bid, #{v})", [ArgumentError, /outside the 10 bytes/]) { @hot.public_send(m, bid, v) } }
      check("#{m}(bid)", ArgumentError) { @hot.public_send(m, bid) }
    end
    WRONG_TYPES.each { |name, v| check("release_buffer(#{name})", TypeError) { @hot.release_buffer(v) } }
    [-1, 16, 2**64].each { |v| check("release_buffer(#{v})", ArgumentError) { @hot.release_buffer(v) } }
    check("release_buffer(a buffer Ruby does not hold)", [ArgumentError, /not held/]) { @hot.release_buffer(free_bid) }
    check("copy_buffer(bid, 0)", returns("")) { @hot.copy_buffer(bid, 0) }
    check("copy_buffer(bid, 10)", returns("0123456789")) { @hot.copy_buffer(bid, 10) }
    check("release_buffer(bid)", returns(nil)) { @hot.release_buffer(bid) }
    check("release_buffer(bid) again", [ArgumentError, /not held/]) { @hot.release_buffer(bid) }
    check("copy_buffer(released bid, 1)", [ArgumentError, /not held/]) { @hot.copy_buffer(bid, 1) }
    check("take_buffer(released bid, 1)", [ArgumentError, /not held/]) { @hot.take_buffer(bid, 1) }
    expect(@hot.stats[:buffers_in_use]).to eq(0)
    expect_all_checked(55)
    @hot.cancel(@conn)
    completions_within(@hot, 0.05)
    expect_rings_work
  end

  it "closed and never-initialized rings: IOError from every method that needs the ring, documented answers from the rest" do
    expect_no_fd_leak do
      args = {
        accept: [0], read: [0], submit_accept_multishot: [0], submit_recv_multishot: [0], submit_send: [0, "x"],
        copy_buffer: [0, 1], take_buffer: [0, 1], release_buffer: [0], cancel: [0], submit_close: [0], flush: [],
        batch_wait_supported?: [], zero_copy_supported?: []
      }
      answers = {
        close: nil, closed?: true, fileno: nil, ptr: nil, healthy?: false, force_unhealthy!: nil, send_completions: :all,
        zero_copy_min: nil, sendfile_min: nil
      }
      [[Hyperion::IOUring::Ring, -> { Hyperion::IOUring::Ring.new(queue_depth: 2).tap(&:close) }],
       [k, -> { k.new(queue_depth: 4, n_bufs: 4, buf_size: 64).tap(&:close) }],
       [Hyperion::IOUring::Ring, -> { Hyperion::IOUring::Ring.allocate }],
       [k, -> { k.allocate }]].each do |klass, make|
        ring = make.call
        klass.public_instance_methods(false).each do |m|
          label = "#{klass.name.split('::').last}(#{ring.closed? ? 'closed' : 'open'})##{m}"
          if answers.key?(m)
            check(label, returns(answers[m])) { ring.public_send(m) }
          elsif m == :stats
            check(label, returns { |h| h.is_a?(Hash) }) { ring.stats }
          elsif m == :queued_send_bytes
            check(label, returns(0)) { ring.queued_send_bytes(0) }
          elsif m == :each_completion
            check(label, [IOError, /ring closed/]) { ring.each_completion(timeout_ms: 0) {} }
          elsif args.key?(m)
            check(label, [IOError, /ring closed/]) { ring.public_send(m, *args[m]) }
          else
            (@mismatches ||= []) << "#{label}: a public method the sweep does not know"
          end
        end
      end
    end
    expect_all_checked(40)
  end

  it "module functions: bad policies, environment names and ring options; extra arguments" do
    expect_no_fd_leak do
      %i[resolve_policy! resolve_hotpath_policy!].each do |m|
        ["on", "auto", 1, 0, :yes, Object.new, [], 2**64].each do |v|
          check("#{m}(#{v.inspect})", [ArgumentError, /must be :off, :auto, or :on/]) { io.public_send(m, v) }
        end
        check("#{m}(nil)", returns(false)) { io.public_send(m, nil) }
        check("#{m}(false)", returns(false)) { io.public_send(m, false) }
        check("#{m}(true)", returns(true)) { io.public_send(m, true) }
        check("#{m}()", ArgumentError) { io.public_send(m) }
      end
      [nil, :HYPERION_IO_URING, 42, Object.new].each do |v|
        check("env_policy(#{v.inspect})", TypeError) { io.env_policy(v) }
      end
      check("env_policy(an unset name)", returns(nil)) { io.env_policy("HYPERION_IO_URING_NOT_SET_#{Process.pid}") }
      check("env_policy(\"\")", returns(nil)) { io.env_policy("") }
      check("env_policy(\"A=B\")", returns(nil)) { io.env_policy("A=B") }
      check("env_integer(an unset name, 5)", returns(5)) { io.env_integer("HYPERION_IO_URING_NOT_SET_#{Process.pid}", 5) }
      check("env_integer(nil, 5)", TypeError) { io.env_integer(nil, 5) }
      io.close_fiber_rings # (a ring this fiber already has would be returned whatever the options)
      check("fiber_ring(queue_depth: -1)", ArgumentError) { io.fiber_ring(queue_depth: -1) }
      check("fiber_ring(queue_depth: \"8\")", TypeError) { io.fiber_ring(queue_depth: "8") }
      check("fiber_ring(bogus: 1)", ArgumentError) { io.fiber_ring(bogus: 1) }
      check("fiber_ring(8)", ArgumentError) { io.fiber_ring(8) }
      check("fiber_hotpath_ring(n_bufs: 3)", ArgumentError) { io.fiber_hotpath_ring(n_bufs: 3) }
      check("fiber_hotpath_ring(buf_size: 2**64)", ArgumentError) { io.fiber_hotpath_ring(buf_size: 2**64) }
      check("close_fiber_rings", returns(0)) { io.close_fiber_rings }
      # Every method of the module that takes no argument refuses one.
      io.singleton_methods(false).sort.each do |m|
        meth = io.method(m)
        next unless meth.arity.zero?

        check("#{m}(1)", ArgumentError) { meth.call(1) }
      end
      check("HotpathRing.native_probe", returns(nil)) { k.native_probe }
      check("HotpathRing.native_probe(1)", ArgumentError) { k.native_probe(1) }
    end
    expect_all_checked(50)
  end
end
