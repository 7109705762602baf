# frozen_string_literal: true

require "io/wait"

# bench/conn_client.c, the load generator of the conns and bodies workloads,
# driven through its gate (-g): it connects and answers every connection
# once, says "ready", waits for "go", runs the timed load, says "result",
# and holds its connections until its stdin closes. The harness reads the
# server's RSS and CPU between those steps.
module Bench
  def self.conn_client = c_binary("conn_client")

  class ConnClient
    READY = /\Aready connections=(\d+) seconds=([\d.]+)/
    RESULT = /\Aresult requests=(\d+) errors=(\d+) seconds=([\d.]+) rate=([\d.]+) p50_us=([\d.]+) p99_us=([\d.]+) body_bytes=(\d+)/

    # n connections, +active+ requests in flight, +seconds+ of timed load,
    # responses carrying +body+ bytes of the pattern (nil: "Hello World\n").
    def initialize(port, n:, active:, seconds:, body: nil, limit: 180)
      @limit = limit
      cmd = [*Bench.pin_prefix(LOAD_CPU), Bench.conn_client, "-h", HOST, "-p", port.to_s, "-n", n.to_s,
             "-a", active.to_s, "-d", seconds.to_s, "-t", limit.to_s, "-g"]
      cmd += ["-b", body.to_s] if body
      @in_r, @in_w = IO.pipe
      @out_r, out_w = IO.pipe
      @err_r, err_w = IO.pipe
      @pid = Procs.spawn(*cmd, in: @in_r, out: out_w, err: err_w)
      [@in_r, out_w, err_w].each(&:close)
      @err = Thread.new { @err_r.read }
    end

    # Waits for the setup: { connections:, setup_seconds: }.
    def ready
      m = expect(READY, "ready")
      { connections: Integer(m[1]), setup_seconds: Float(m[2]) }
    end

    # Starts the timed load and waits for its result: { requests:, errors:,
    # seconds:, rps:, p50: (ms), p99: (ms), body_bytes: }.
    def go
      @in_w.puts("go")
      @in_w.flush
      m = expect(RESULT, "result")
      { requests: Integer(m[1]), errors: Integer(m[2]), seconds: Float(m[3]), rps: Float(m[4]),
        p50: Float(m[5]) / 1000.0, p99: Float(m[6]) / 1000.0, body_bytes: Integer(m[7]) }
    end

    # Lets the client close its connections and exit; its Process::Status.
    def finish
      @in_w.close unless @in_w.closed?
      deadline = Bench.monotonic + 30
      until (st = Procs.reap(@pid))
        break if Bench.monotonic > deadline

        sleep 0.01
      end
      st || Procs.stop(@pid, signal: "KILL")
    ensure
      [@in_w, @out_r].each { |io| io.close unless io.closed? }
      @err.join(1)
      @err_r.close unless @err_r.closed?
    end

    def expect(re, what)
      deadline = Bench.monotonic + @limit
      loop do
        left = deadline - Bench.monotonic
        raise Error, "conn_client: no #{what} line after #{@limit} s" if left <= 0
        next unless @out_r.wait_readable([left, 1.0].min)

        line = @out_r.gets
        if line.nil?
          st = Procs.stop(@pid)
          raise Error, "conn_client exited (#{st}) before its #{what} line: #{@err.value}"
        end
        m = line.match(re) and return m
      end
    end
  end

  # Resident memory of +pid+ in bytes (VmRSS).
  def self.rss(pid)
    File.read("/proc/#{pid}/status")[/^VmRSS:\s+(\d+) kB/, 1].to_i * 1024
  end
end
