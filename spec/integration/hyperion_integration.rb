# frozen_string_literal: true

require "json"
require "socket"
require "timeout"
require_relative "setup"

# `rake integration`, step 2: upstream Hyperion's own CLI, booted with the
# command docs/MIGRATING.md gives (`bundle exec hyperion ... config.ru`, with
# config/hyperion.rb requiring "hyperion-io_uring"), serving on 127.0.0.1, in
# each io_uring mode under both of io-event's selectors. Each context boots
# one server and runs its checks in order (rspec --order defined); the
# server is killed at the end whatever happened. Not named *_spec.rb: `rake
# spec` leaves it out (it needs the installation setup.rb makes).
RSpec.describe "Upstream Hyperion #{Integration::HYPERION_VERSION} on hyperion-io_uring" do
  MODES = {
    "io_uring off" => { "HYPERION_IO_URING" => "off", "HYPERION_IO_URING_HOTPATH" => "off" },
    "HYPERION_IO_URING=on (ring accept)" => { "HYPERION_IO_URING" => "on", "HYPERION_IO_URING_HOTPATH" => "off" },
    "HYPERION_IO_URING=on + HYPERION_IO_URING_HOTPATH=on" => { "HYPERION_IO_URING" => "on", "HYPERION_IO_URING_HOTPATH" => "on" }
  }.freeze
  SELECTORS = %w[EPoll URing].freeze
  MIB = 1024 * 1024

  # A running `bundle exec hyperion`: its pid (bundle exec loads hyperion in
  # the same process), its port and its log.
  class Server
    attr_reader :pid, :port, :log, :stats_path

    def initialize(env, dir)
      @port = free_port
      @log = File.join(dir, "hyperion.log")
      @stats_path = File.join(dir, "io_uring-stats.json")
      File.delete(@stats_path) if File.exist?(@stats_path)
      cmd = ["bundle", "exec", "hyperion", "-b", "127.0.0.1", "-p", @port.to_s, "-w", "1", "--async-io", "config.ru"]
      full_env = Integration.env.merge(env).merge("HYPERION_IO_URING_STATS" => @stats_path)
      Bundler.with_unbundled_env do
        @pid = Process.spawn(full_env, *cmd, chdir: Integration::APP, in: File::NULL, %i[out err] => [@log, "w"])
      end
    end

    def free_port
      s = TCPServer.new("127.0.0.1", 0)
      s.local_address.ip_port
    ensure
      s&.close
    end

    def alive?
      Process.waitpid(@pid, Process::WNOHANG).nil?
    rescue Errno::ECHILD
      false
    end

    def wait_ready(seconds = 30)
      deadline = now + seconds
      until now > deadline
        raise "hyperion exited during boot:\n#{File.read(@log)}" unless alive?
        return if (HTTP.get(@port, "/", timeout: 1) rescue nil)&.first == 200

        sleep 0.1
      end
      raise "hyperion not answering after #{seconds}s:\n#{File.read(@log)}"
    end

    def fd_count = Dir.children("/proc/#{@pid}/fd").size
    def rss_bytes = File.read("/proc/#{@pid}/status")[/^VmRSS:\s+(\d+)/, 1].to_i * 1024

    # SIGTERM; seconds until it exited, or nil if it had not within
    # +limit+. A server still up then is nudged with one connection (an
    # accept waiting on a closed listener wakes for it), then killed.
    def term(limit)
      t0 = now
      Process.kill(:TERM, @pid)
      loop do
        return now - t0 unless alive?
        break if now - t0 > limit

        sleep 0.02
      end
      nil
    ensure
      finish
    end

    def finish
      deadline = now + 5
      while alive? && now < deadline
        (TCPSocket.new("127.0.0.1", @port).close rescue nil)
        sleep 0.2
      end
      if alive?
        Process.kill(:KILL, @pid)
        Process.wait(@pid) rescue nil
      end
    end

    def stats = File.exist?(@stats_path) ? JSON.parse(File.read(@stats_path))["rings"] : nil
    def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # Just enough HTTP/1.1 for keep-alive GETs with Content-Length answers.
  module HTTP
    module_function

    def request(path) = "GET #{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    def get(port, path, timeout: 5)
      sock = TCPSocket.new("127.0.0.1", port)
      roundtrip(sock, path, timeout: timeout)
    ensure
      sock&.close
    end

    def roundtrip(sock, path, timeout: 5)
      sock.write(request(path))
      read_response(sock, timeout: timeout)
    end

    # [status, body]
    def read_response(sock, timeout: 5)
      Timeout.timeout(timeout) do
        head = +""
        head << sock.readpartial(4096) until head.include?("\r\n\r\n")
        header, rest = head.split("\r\n\r\n", 2)
        status = header[/\AHTTP\/1\.1 (\d+)/, 1].to_i
        len = header[/^content-length:\s*(\d+)/i, 1].to_i
        rest << sock.readpartial(65_536) while rest.bytesize < len
        [status, rest]
      end
    end
  end

  let(:server) { @server }

  def self.boot(env)
    before(:context) do
      @dir = File.join(Integration::WORK, "run-#{env.values.join('-')}")
      FileUtils.mkdir_p(@dir)
      @server = Server.new(env, @dir)
      @server.wait_ready
      HTTP.get(@server.port, "/") # warm up: lazy state, first connection
      sleep 0.3
      @base_fds = @server.fd_count
      @base_rss = @server.rss_bytes
    end
    after(:context) { @server&.finish }
  end

  describe "hyperion-io_uring-doctor in the app" do
    def doctor(dir)
      Bundler.with_unbundled_env do
        IO.popen(Integration.env, %w[bundle exec hyperion-io_uring-doctor], chdir: dir, err: %i[child out], &:read)
      end
    end

    it "says `hyperion config.ru` runs on this gem where config/hyperion.rb requires it" do
      out = doctor(Integration::APP)
      expect(out).to include("runs on this gem (config/hyperion.rb requires hyperion-io_uring)")
      expect(out).not_to include("WARNING")
    end

    it "warns where nothing requires it (a Gemfile entry alone)" do
      bare = File.join(Integration::WORK, "bare-app")
      FileUtils.mkdir_p(bare)
      File.write(File.join(bare, "config.ru"), "run ->(_env) { [200, {}, [\"hi\"]] }\n")
      out = doctor(bare)
      expect(out).to include("WARNING: `hyperion config.ru` here runs on hyperion-rb #{Integration::HYPERION_VERSION}'s own")
    end
  end

  MODES.each do |mode, mode_env|
    SELECTORS.each do |selector|
      context "#{mode}, IO_EVENT_SELECTOR=#{selector}" do
        ring_accept = mode_env["HYPERION_IO_URING"] == "on" && mode_env["HYPERION_IO_URING_HOTPATH"] == "off"
        hotpath = mode_env["HYPERION_IO_URING_HOTPATH"] == "on"
        boot(mode_env.merge("IO_EVENT_SELECTOR" => selector))

        it "serves 2000 keep-alive requests from 20 concurrent clients, all 200 with the body" do
          results = Array.new(20) do
            Thread.new do
              sock = TCPSocket.new("127.0.0.1", server.port)
              Array.new(100) { HTTP.roundtrip(sock, "/") }
            ensure
              sock&.close
            end
          end.flat_map(&:value)
          expect(results.size).to eq(2000)
          bad = results.reject { |r| r == [200, "hello"] }
          expect(bad).to be_empty, "#{bad.size} bad responses, e.g. #{bad.first.inspect}"
        end

        it "answers a second connection while another sits idle" do
          idle = TCPSocket.new("127.0.0.1", server.port)
          sleep 0.2
          t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
          expect(HTTP.get(server.port, "/", timeout: 2)).to eq([200, "hello"])
          expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0).to be < 1
          expect(HTTP.roundtrip(idle, "/", timeout: 2)).to eq([200, "hello"]) # and the idle one still works
        ensure
          idle&.close
        end

        it "returns to its fd count after the load" do
          deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
          sleep 0.05 until server.fd_count <= @base_fds || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
          expect(server.fd_count).to be <= @base_fds
        end

        it "keeps its RSS within the send limits while clients take 1 MiB answers and never read; " \
           "drops them, and goes on serving the others" do
          limit = 64 * MIB # HotpathRing's default send_buffer_limit (issue 11)
          margin = 64 * MIB
          hostile = Array.new(4) do
            s = TCPSocket.new("127.0.0.1", server.port)
            s.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 64 * 1024)
            s.write(HTTP.request("/big") * 200) rescue nil
            s
          end
          peak = 0
          good = []
          t_end = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 4
          while Process.clock_gettime(Process::CLOCK_MONOTONIC) < t_end
            peak = [peak, server.rss_bytes].max
            good << (HTTP.get(server.port, "/", timeout: 3) rescue $!)
            sleep 0.05
          end
          expect(good.count([200, "hello"])).to eq(good.size), "other clients: #{good.reject { |g| g == [200, 'hello'] }.first(3).inspect}"
          expect(peak - @base_rss).to be <= limit + margin,
                                      "RSS #{@base_rss / MIB} MiB -> peak #{peak / MIB} MiB with 4 clients not reading"
          # Dropped: once the hostile clients reset, the server lets their
          # connections go (and, with send limits, it drops them itself).
          hostile.each do |s|
            s.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
            s.close
          end
          deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
          sleep 0.05 until server.fd_count <= @base_fds || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
          expect(server.fd_count).to be <= @base_fds
          expect(HTTP.get(server.port, "/", timeout: 2)).to eq([200, "hello"])
        end

        it "ends within 2 s of SIGTERM" do
          took = server.term(2.0)
          expect(took).not_to be_nil, "still running 2 s after SIGTERM"
        ensure
          server.finish
        end

        it "ran on this gem's rings (HYPERION_IO_URING_STATS, written at exit)" do
          stats = server.stats
          expect(stats).not_to be_nil, "no stats file: the server did not exit cleanly, or did not load hyperion-io_uring"
          if hotpath
            hp = stats.fetch("HotpathRing", {})
            expect(hp["opened"]).to be >= 1
            expect(hp["accepts"]).to be >= 22
            expect(hp["recvs"]).to be >= 2000
            expect(hp["sends"]).to be >= 2000
            expect(hp["send_buffer_full"]).to be >= 1 # the slow readers met the send limits
          elsif ring_accept
            r = stats.fetch("Ring", {})
            expect(r["opened"]).to be >= 1
            expect(r["ops"]).to be >= 22 # every connection above came through Ring#accept
            expect(stats.fetch("HotpathRing", {})["opened"].to_i).to eq(0)
          else
            expect(stats.values.sum { |h| h["opened"].to_i }).to eq(0)
          end
        end

        # Hyperion logs a client's reset (ECONNRESET, EPIPE) as "unhandled in
        # connection" at error level. Only the slow-reader check resets its
        # clients (on purpose: a close with unread data is a reset; every
        # other client reads all it asked for, then closes): one such line
        # for each of its four is allowed. On the hot path the send limits
        # refuse the slow readers' answers, and Hyperion 2.17 logs each
        # refusal ("unhandled in drive_pending_requests", Errno::ENOBUFS):
        # at most one per request they sent. Nothing else.
        it "logged no warn or error lines (but the slow readers' resets and send-limit refusals)" do
          lines = File.readlines(server.log).grep(/"level":\s*"(warn|error|fatal)"|\b(WARN|ERROR|FATAL)\b/)
          resets = lines.grep(/"message":"unhandled in connection".*"error_class":"Errno::(ECONNRESET|EPIPE)"/)
          refused = hotpath ? lines.grep(/"message":"unhandled in drive_pending_requests".*"error_class":"Errno::ENOBUFS"/) : []
          expect(lines - resets - refused).to be_empty, (lines - resets - refused).first(5).join
          expect(resets.size).to be <= 4, resets.first(5).join
          expect(refused.size).to be <= 4 * 200
        end
      end
    end
  end
end
