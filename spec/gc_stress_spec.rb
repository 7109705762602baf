# frozen_string_literal: true

require "json"

# The GC with requests in flight: an echo server under GC.stress = true, with
# GC.compact and GC.verify_compaction_references running while accepts,
# recvs (into the provided-buffer ring, for HotpathRing) and sends of
# freshly built Strings are in the kernel, on both ring types, for
# thousands of operations; every byte is checked.
#
# The server runs in a child ruby: GC.stress makes every allocation a full
# GC, whose cost grows with the heap, and this process's heap (rspec and
# every spec file) made that about 20 ms a GC; a bare ruby's is a few ms.
# The clients run here, in threads, outside GC.stress, and compare each
# echo with what they sent. The child reports its counters, the fds it left
# open, and what it saw, as JSON on its last line; a crash fails the example
# with the child's stderr.
RSpec.describe "GC with requests in flight" do
  include HotpathHelpers
  include ChildHelpers

  GC_STRESS_SERVER = <<~'RUBY'
    # frozen_string_literal: true

    # (Counters are locals and literals frozen: under GC.stress every
    # allocation is a full GC, so the server's own bookkeeping allocates
    # nothing; the allocations left are the ones under test.)
    require "hyperion/io_uring"
    require "socket"
    require "json"

    mode = ARGV[0]
    conns = Integer(ARGV[1])
    seconds = Float(ARGV[2])
    $stdout.sync = true
    io = Hyperion::IOUring
    fds = -> { Dir.children("/proc/self/fd").to_h { |n| [n, (File.readlink("/proc/self/fd/#{n}") rescue nil)] } }
    verify = GC.respond_to?(:verify_compaction_references)
    compact = GC.respond_to?(:compact)
    3.times { GC.start }
    before = fds.call
    listener = TCPServer.new("127.0.0.1", 0)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
    ops = accepts = served = bytes_in = bytes_out = compactions = verifies = 0
    errors = []
    extra = {}
    puts "PORT #{listener.local_address.ip_port}"

    case mode
    when "hotpath"
      k = io::HotpathRing
      ecanceled = -Errno::ECANCELED::Errno
      econnreset = -Errno::ECONNRESET::Errno
      # Few small buffers: messages span many recvs, and the buffer ring
      # runs dry (ENOBUFS, parked and re-armed recvs) under the slow reader.
      ring = k.new(queue_depth: 64, n_bufs: 16, buf_size: 2048)
      pending = Hash.new(0)
      eof = {}
      ring.submit_accept_multishot(listener)
      next_compact = 100
      while served < conns && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
        GC.stress = true
        begin
          ring.each_completion(timeout_ms: 50, raw: true) do |op, fd, res, bid, _flags|
            ops += 1
            case op
            when k::OP_ACCEPT
              if res >= 0
                accepts += 1
                ring.submit_recv_multishot(res)
              else
                errors << "accept: #{res}"
              end
            when k::OP_RECV
              if res.positive?
                # A fresh String (take_buffer builds one), dropped or
                # changed as soon as it is queued: the ring must have copied
                # it.
                reply = ring.take_buffer(bid, res)
                ring.submit_send(fd, reply)
                reply.replace("changed") if ops.odd?
                reply = nil
                pending[fd] += 1
                bytes_in += res
              elsif res.zero? || res == econnreset
                eof[fd] = true
              elsif res != ecanceled
                errors << "recv on #{fd}: #{res}"
              end
            when k::OP_SEND
              pending[fd] -= 1
              if res.negative?
                errors << "send on #{fd}: #{res}"
              else
                bytes_out += res
              end
            end
            next unless eof[fd] && pending[fd].zero?

            ring.cancel(fd)
            IO.for_fd(fd).close
            eof.delete(fd)
            pending.delete(fd)
            served += 1
          end
        ensure
          GC.stress = false
        end
        next unless compact && ops >= next_compact

        # Compaction with the accept, every connection's recv and maybe
        # sends in the kernel.
        GC.compact
        compactions += 1
        if verify && verifies < 4 && (compactions % 3).zero?
          GC.verify_compaction_references(double_heap: true, toward: :empty)
          verifies += 1
        end
        next_compact = ops + 100
      end
      ring.cancel(listener)
      ring.each_completion(timeout_ms: 100) { |c| errors << "late: #{c}" unless c[:result] == ecanceled }
      extra["stats"] = ring.stats
      extra["healthy"] = ring.healthy?
      ring.close
    when "ring"
      ring = io::Ring.new(queue_depth: 8)
      stop = false
      # Compacts while the main thread waits in the ring (GVL released).
      compactor = Thread.new do
        until stop
          sleep 0.2
          next unless compact

          GC.compact
          compactions += 1
          if verify && verifies < 4 && (compactions % 4).zero?
            GC.verify_compaction_references(double_heap: true, toward: :empty)
            verifies += 1
          end
        end
      end
      GC.stress = true
      begin
        while served < conns && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
          # No keywords in the hot calls: a C method called with keywords
          # gets a new Hash each time, i.e. another full GC here. Without a
          # timeout they wait as long as the clients take; the spec bounds
          # this process from outside.
          fd = ring.accept(listener)
          ops += 1

          accepts += 1
          sock = Socket.for_fd(fd)
          sock.autoclose = true
          loop do
            data = ring.read(fd)
            ops += 1
            break if data.empty?

            bytes_in += data.bytesize
            n = sock.write_nonblock(data, exception: false)
            n = 0 if n == :wait_writable
            while n < data.bytesize
              sock.wait_writable(10)
              m = sock.write_nonblock(data.byteslice(n, data.bytesize - n), exception: false)
              n += m unless m == :wait_writable
            end
            bytes_out += data.bytesize
          end
          sock.close
          served += 1
        end
      ensure
        GC.stress = false
        stop = true
        compactor.join
      end
      extra["stats"] = ring.stats
      ring.close
    end
    listener.close
    3.times { GC.start }
    puts JSON.generate(extra.merge(
      "ops" => ops, "accepts" => accepts, "served" => served, "bytes_in" => bytes_in, "bytes_out" => bytes_out,
      "compactions" => compactions, "verifies" => verifies, "errors" => errors, "gc_count" => GC.count,
      "gc_ms" => GC.stat[:time],
      "fds_leaked" => fds.call.reject { |n, t| before[n] == t }
    ))
  RUBY

  # GC.stress slows everything down by a factor; under the sanitizers even
  # more. Keep the work so that the file runs in well under 30 s.
  def scale
    ENV["HYPERION_IO_URING_SPEC_UNDER"] ? 0.5 : 1.0
  end

  # Clients in threads here: each makes +conns+ connections in turn and
  # sends +rounds+ random messages (1..max_size bytes) on each, reading each
  # echo back before the next. A slow reader (the first client, if asked)
  # sends one big message at once and reads the echo in small pieces, so
  # sends stay queued in the server's ring while it compacts.
  def run_against(mode, clients:, conns:, rounds:, max_size:, slow_reader: false, seconds: 40)
    total_conns = clients * conns + (slow_reader ? 1 : 0)
    child = start_child(child_ruby_env, [*child_ruby_cmd, "-e", GC_STRESS_SERVER, mode, total_conns.to_s, seconds.to_s])
    line = child.gets(timeout: 30)
    raise "server did not start: #{child.finish(timeout: 5).describe}" unless line&.start_with?("PORT ")

    port = Integer(line.split[1])
    deadline = hp_now + seconds
    problems = Queue.new
    sent = Queue.new
    threads = Array.new(clients) do |i|
      Thread.new do
        rng = Random.new(RSpec.configuration.seed * 31 + i)
        conns.times do |c|
          sock = TCPSocket.new("127.0.0.1", port)
          rounds.times do |r|
            msg = rng.bytes(rng.rand(1..max_size))
            write_fully(sock, msg, deadline)
            problems << "client #{i} conn #{c} round #{r}: echo differs" unless read_fully(sock, msg.bytesize, deadline) == msg
            sent << msg.bytesize
          end
          sock.close
        end
      rescue StandardError => e
        problems << "client #{i}: #{e.class}: #{e.message}"
      end
    end
    if slow_reader
      threads << Thread.new do
        sock = TCPSocket.new("127.0.0.1", port)
        sock.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 8192)
        msg = Random.new(RSpec.configuration.seed).bytes(256 * 1024)
        writer = Thread.new { write_fully(sock, msg, deadline) }
        back = +"".b
        while back.bytesize < msg.bytesize
          back << read_fully(sock, [16_384, msg.bytesize - back.bytesize].min, deadline)
          sleep 0.005
        end
        writer.join
        problems << "slow reader: echo differs" unless back == msg
        sent << msg.bytesize
        sock.close
      rescue StandardError => e
        problems << "slow reader: #{e.class}: #{e.message}"
      end
    end
    threads.each { |t| t.join([deadline - hp_now, 0].max + 1) || t.kill }
    res = child.finish(timeout: [deadline - hp_now, 0].max + 30)
    expect(res.success?).to be(true), res.describe
    report = JSON.parse(res.out.lines.last)
    warn report.reject { |k, _| k == "stats" }.inspect if ENV["GC_SPEC_DEBUG"]
    [report, Array.new(problems.size) { problems.pop }, Array.new(sent.size) { sent.pop }.sum]
  ensure
    child&.kill
  end

  def expect_clean(report, problems, total, conns:)
    expect(problems).to eq([])
    expect(report["errors"]).to eq([])
    expect(report["accepts"]).to eq(conns)
    expect(report["served"]).to eq(conns)
    expect(report["bytes_in"]).to eq(total)
    expect(report["bytes_out"]).to eq(total)
    expect(report["fds_leaked"]).to eq({})
    if GC.respond_to?(:compact)
      expect(report["compactions"]).to be >= 5
      expect(report["verifies"]).to be >= 1 if GC.respond_to?(:verify_compaction_references)
    end
  end

  it "HotpathRing: accepts, buffer-ring recvs and sends of fresh Strings under GC.stress and GC.compact, byte-exact" do
    require_hotpath!
    clients = 4
    conns = (6 * scale).ceil
    report, problems, total = expect_no_fd_leak do
      run_against("hotpath", clients: clients, conns: conns, rounds: 16, max_size: 5000, slow_reader: true)
    end
    expect_clean(report, problems, total, conns: clients * conns + 1)
    stats = report["stats"]
    expect(stats).to include("recv_bytes" => total, "send_bytes" => total, "buffers_in_use" => 0,
                             "stale_completions" => 0, "inflight" => 0)
    expect(stats["sends"]).to eq(stats["recvs"])
    expect(report["healthy"]).to be(true)
    # Thousands of operations, and the dry buffer ring was part of them.
    expect(report["ops"]).to be >= (1500 * scale)
    expect(stats["enobufs"]).to be > 0
  end

  it "Ring: accepts and reads under GC.stress while another thread runs GC.compact, byte-exact" do
    require_io_uring!
    clients = 4
    conns = (8 * scale).ceil
    report, problems, total = expect_no_fd_leak do
      run_against("ring", clients: clients, conns: conns, rounds: 12, max_size: 5000)
    end
    expect_clean(report, problems, total, conns: clients * conns)
    expect(report["ops"]).to be >= (450 * scale)
  end
end
