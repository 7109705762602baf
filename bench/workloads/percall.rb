# frozen_string_literal: true

require "json"
require "rbconfig"

# Workload 3, percall: runs bench/percall.rb (the measured process, ns per
# call) once per round, pinned like the servers.
module Bench
  PERCALL_VARIANTS = {
    "sysread" => "IO#sysread(100) (floor)",
    "read_nonblock" => "IO#read_nonblock(100, exception: false)",
    "ring_read" => "Ring#read(fd, max: 100)",
    "each_completion" => "each_completion(raw: true), 1 ready",
    "each_completion_hash" => "each_completion (Hash), 1 ready",
    "copy_release" => "copy_buffer(id, 100) + release_buffer(id)",
    "take_buffer" => "take_buffer(id, 100)",
    "pair_rt" => "16-byte syswrite + sysread on a UNIX socketpair (round-trip floor)",
    "ring_rt" => "16-byte syswrite answered through the ring (each_completion + take_buffer)"
  }.freeze

  # The rows compared with another floor than IO#sysread: row => its floor.
  PERCALL_FLOORS = { "pair_rt" => "pair_rt", "ring_rt" => "pair_rt" }.freeze

  def self.run_percall(cfg, results, interference)
    cfg.rounds.times { |round| percall_once(cfg, results, interference, round, (round + 1).to_s) }
    return if cfg.retries.zero?

    interference.new_budget
    extra = 0
    while results.quiet_count(:percall, "ns", "sysread") < cfg.rounds && extra < cfg.rounds
      extra += 1
      percall_once(cfg, results, interference, cfg.rounds + extra, "extra #{extra}")
    end
  end

  def self.percall_once(cfg, results, interference, round, label)
    order = rotate(PERCALL_VARIANTS.keys, round)
    data = nil
    m = interference.run("percall round #{label}") do
      mark = interference.start
      out, err, st = Procs.capture(*pin_prefix(SERVER_CPU), RbConfig.ruby, File.join(src, "bench", "percall.rb"),
                                   "--iterations", cfg.percall_iterations.to_s, "--order", order.join(","),
                                   timeout: 600)
      raise Error, "percall.rb failed (#{st}):\n#{out}#{err}" unless st.success?

      data = JSON.parse(out.lines.last)
      [{}, 0.0, mark]
    end
    data.each do |name, v|
      results.add(:percall, "ns", name, { ns: v["ns"], waits: v["waits_per_call"], other: m[:other] })
    end
    log "  percall round #{label}: " + data.map { |k, v| format("%s %.0f ns", k, v["ns"]) }.join(", ") +
        format("  (others %.0f%%)", m[:other] * 100)
  end
end
