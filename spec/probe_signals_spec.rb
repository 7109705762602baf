# frozen_string_literal: true

require "spec_helper"

# The probes behind supported? and hotpath_supported?, and Ring.new /
# HotpathRing.new, under a storm of signals; and what the policy layer does
# with a transient failure (answers false, caches nothing).
RSpec.describe "probes under signals" do
  include HotpathHelpers

  let(:io) { Hyperion::IOUring }
  let(:valgrind) { ENV["HYPERION_IO_URING_SPEC_UNDER"] == "valgrind" }

  # A child process sends SIGUSR1 to this one every ~100 us (a Ruby thread
  # would not do: Process.kill to our own pid with a trap installed only
  # queues the signal inside Ruby, no kill(2) happens). Two senders, so the
  # signals land inside the probe's syscalls often enough: before the
  # connect fix about one probe in five failed here.
  def with_signal_storm(senders: 2)
    received = 0
    old = trap("USR1") { received += 1 }
    target = Process.pid
    kids = Array.new(senders) do
      fork do
        loop do
          Process.kill("USR1", target)
          sleep 0.0001
        end
      rescue StandardError
        exit!(0)
      end
    end
    deadline = hp_now + 5
    sleep 0.01 while received < 20 && hp_now < deadline
    expect(received).to be >= 20
    yield
    received
  ensure
    kids&.each do |pid|
      Process.kill("KILL", pid)
      Process.wait(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
    trap("USR1", old || "DEFAULT")
  end

  describe "under a SIGUSR1 storm" do
    before { require_hotpath! }

    let(:rounds) { valgrind ? 20 : 100 }

    it "reset!; hotpath_supported? is true every time" do
      answers = []
      reasons = Hash.new(0)
      with_signal_storm do
        rounds.times do
          io.reset!
          answers << io.hotpath_supported?
          reasons[io.hotpath_unsupported_reason] += 1 unless answers.last
        end
      end
      expect(reasons).to eq({})
      expect(answers).to all(be(true))
    end

    it "reset!; supported? is true every time" do
      answers = []
      with_signal_storm { rounds.times { io.reset!; answers << io.supported? } }
      expect(answers).to all(be(true))
    end

    it "HotpathRing.new and Ring.new never fail" do
      errors = Hash.new(0)
      with_signal_storm do
        rounds.times do
          io.reset!
          io::HotpathRing.new(queue_depth: 8, n_bufs: 4, buf_size: 256).close
          io::Ring.new(queue_depth: 4).close
        rescue StandardError => e
          errors["#{e.class}: #{e.message}"] += 1
        end
      end
      expect(errors).to eq({})
    end
  end

  describe "a transient failure" do
    before { skip "no native extension: the probe never runs" unless io.native? }

    it "of the setup probe (EINTR, EAGAIN, ENOMEM, EMFILE) answers false and is not cached" do
      %w[EINTR EAGAIN ENOMEM EMFILE].each do |name|
        io.reset!
        errno = Errno.const_get(name)::Errno
        calls = 0
        allow(io).to receive(:native_probe) { (calls += 1) == 1 ? errno : 0 }
        expect(io.supported?).to be(false), name
        expect(io.supported?).to be(true), name
        expect(io.supported?).to be(true), name
        expect(calls).to eq(2), name
      end
    end

    it "of the setup probe with EPERM is cached" do
      calls = 0
      allow(io).to receive(:native_probe) { calls += 1; Errno::EPERM::Errno }
      expect(io.supported?).to be(false)
      expect(io.supported?).to be(false)
      expect(calls).to eq(1)
    end

    it "of the hot-path probe (it raises Errno::EINTR) answers false and is not cached" do
      require_hotpath!
      calls = 0
      allow(io::HotpathRing).to receive(:native_probe) do
        calls += 1
        raise Errno::EINTR, "loopback connect failed" if calls == 1

        nil
      end
      io.reset!
      expect(io.hotpath_supported?).to be(false)
      expect(io.hotpath_unsupported_reason).to be_nil # probed again: it worked
      expect(io.hotpath_supported?).to be(true)
      expect(calls).to eq(2)
    end

    it "of the hot-path probe with a reason (the host's answer) is cached" do
      require_hotpath!
      calls = 0
      allow(io::HotpathRing).to receive(:native_probe) { calls += 1; "multishot recv failed: Invalid argument" }
      io.reset!
      expect(io.hotpath_supported?).to be(false)
      expect(io.hotpath_supported?).to be(false)
      expect(io.hotpath_unsupported_reason).to include("multishot recv")
      expect(calls).to eq(1)
    end
  end
end
