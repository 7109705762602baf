# frozen_string_literal: true

require "etc"

# Other processes on the benchmark's CPUs: measured during every timed run,
# waited out before one, and a disturbed run done again.
module Bench
  # How much of the benchmark's CPUs other processes used during a timed
  # window: the CPUs' busy time (/proc/stat, steal included) minus the
  # server's and the load generator's own CPU time, as a fraction of the
  # window's CPU time. On a shared machine this is what makes a run noisy,
  # so every timed run records it, the harness waits (within a budget) for
  # the CPUs to be quiet before a run, and retries a run that was disturbed.
  class Interference
    HZ = Etc.sysconf(Etc::SC_CLK_TCK)

    attr_reader :cpus, :waited, :retried

    def initialize(cfg)
      @cfg = cfg
      @cpus = cfg.pin ? [SERVER_CPU, LOAD_CPU] : (0...Etc.nprocessors).to_a
      @waited = 0.0
      @retried = 0
    end

    # Busy ticks of our CPUs.
    def busy_ticks
      File.foreach("/proc/stat").sum do |line|
        next 0 unless line =~ /\Acpu(\d+) /
        next 0 unless @cpus.include?(Integer(Regexp.last_match(1)))

        v = line.split[1..8].map(&:to_i) # user nice system idle iowait irq softirq steal
        v.sum - v[3] - v[4]
      end
    end

    def children_cpu = Bench.reaped_children_cpu

    # The harness's own CPU time (it polls, signals and spawns).
    def self_cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)

    # Network softirq work the kernel defers to ksoftirqd/N is our load's
    # too: CPU ticks of the ksoftirqd threads of our CPUs.
    def ksoftirqd_ticks
      @ksoftirqd ||= Dir["/proc/[0-9]*/comm"].filter_map do |f|
        name = File.read(f).strip rescue next
        m = name.match(%r{\Aksoftirqd/(\d+)\z}) or next
        File.dirname(f) if @cpus.include?(Integer(m[1]))
      end
      @ksoftirqd.sum do |dir|
        f = File.read(File.join(dir, "stat")).split(") ", 2).last.split
        Integer(f[11]) + Integer(f[12]) # utime, stime (fields 14 and 15)
      rescue SystemCallError
        0
      end
    end

    def start
      { busy: busy_ticks, children: children_cpu, self: self_cpu, softirqd: ksoftirqd_ticks, at: Bench.monotonic }
    end

    # Fraction of the CPUs' time used by others since +mark+, given the
    # CPU seconds our own server used meanwhile (the load generator is a
    # reaped child: its time is in children_cpu; the harness and ksoftirqd
    # count as ours too).
    def other_since(mark, own_cpu_s)
      wall = Bench.monotonic - mark[:at]
      busy = (busy_ticks - mark[:busy]).fdiv(HZ)
      mine = own_cpu_s + (children_cpu - mark[:children]) + (self_cpu - mark[:self]) +
             (ksoftirqd_ticks - mark[:softirqd]).fdiv(HZ)
      [(busy - mine) / (wall * @cpus.size), 0.0].max
    end

    # A fresh wait budget (for a workload's extra pass).
    def new_budget
      @budget_base = @waited
    end

    # Waits (within the budget) until the CPUs are quiet: sampled for 0.5 s,
    # others use less than max_other of them.
    def wait_quiet
      while @waited - (@budget_base || 0.0) < @cfg.wait_budget
        mark = start
        sleep 0.5
        return if other_since(mark, 0.0) <= @cfg.max_other

        sleep 1.0
        @waited += 1.5
      end
    end

    # Runs the timed block (which returns [metrics, own_cpu_s, mark]) until
    # others used at most max_other of the CPUs, at most 1 + retries times.
    # Returns the metrics with :other.
    def run(label)
      tries = 0
      loop do
        wait_quiet
        metrics, own_cpu_s, mark = yield
        metrics[:other] = other_since(mark, own_cpu_s)
        return metrics if metrics[:other] <= @cfg.max_other || tries >= @cfg.retries

        tries += 1
        @retried += 1
        Bench.log format("  (%s: other processes used %.0f%% of the CPUs; run again)", label, metrics[:other] * 100)
      end
    end
  end
end
