# frozen_string_literal: true

require "etc"
require "securerandom"

RSpec.describe Hyperion::IOUring do
  let(:real_uname) { Etc.uname }

  # Makes Etc.uname answer as another host would, keeping the other fields.
  def stub_uname(sysname: "Linux", release:)
    uname = real_uname.merge(sysname: sysname, release: release)
    allow(Etc).to receive(:uname).and_return(uname)
    described_class.reset!
  end

  # Sets (or, with nil, unsets) an environment variable for the block.
  def with_env(name, value)
    old = ENV.fetch(name, nil)
    value.nil? ? ENV.delete(name) : ENV[name] = value
    yield
  ensure
    old.nil? ? ENV.delete(name) : ENV[name] = old
  end

  # A value never seen before, so the warn-once memory of an earlier example
  # (in any order) cannot hide a warning.
  def fresh_bad_value(prefix = "maybe")
    "#{prefix}-#{SecureRandom.hex(4)}"
  end

  before { described_class.reset! }
  after { described_class.reset! }

  describe "M:N threads (RUBY_MN_THREADS, Ruby 3.3+)" do
    include ChildHelpers

    it "are on only for RUBY_MN_THREADS > 0 on Ruby 3.3 and later, as Ruby reads it" do
      expect(described_class.mn_threads?({ "RUBY_MN_THREADS" => "1" }, "3.3.0")).to be(true)
      expect(described_class.mn_threads?({ "RUBY_MN_THREADS" => "2" }, "3.4.1")).to be(true)
      expect(described_class.mn_threads?({ "RUBY_MN_THREADS" => "0" }, "3.3.0")).to be(false)
      expect(described_class.mn_threads?({ "RUBY_MN_THREADS" => "yes" }, "3.3.0")).to be(false)
      expect(described_class.mn_threads?({}, "3.4.0")).to be(false)
      expect(described_class.mn_threads?({ "RUBY_MN_THREADS" => "1" }, "3.2.4")).to be(false)
      expect(described_class.mn_threads?({ "RUBY_MN_THREADS" => "1" }, "4.0.0")).to be(true)
    end

    it "make io_uring unsupported with the reason, and ring creation raise Unsupported naming it" do
      skip "needs the native build" unless described_class.native?
      allow(described_class).to receive(:mn_threads?).and_return(true)
      with_env("RUBY_MN_THREADS", "1") do
        described_class.reset!
        expect(described_class.supported?).to be(false)
        expect(described_class.unsupported_reason).to match(/RUBY_MN_THREADS=1: Ruby's M:N threads/)
        expect(described_class.hotpath_supported?).to be(false)
        expect(described_class.resolve_policy!(:auto)).to be(false)
        expect { described_class.resolve_policy!(:on) }.to raise_error(described_class::Unsupported, /RUBY_MN_THREADS/)
        expect { described_class::Ring.new }.to raise_error(described_class::Unsupported, /RUBY_MN_THREADS/)
        expect { described_class::HotpathRing.new }.to raise_error(described_class::Unsupported, /RUBY_MN_THREADS/)
      end
    end

    it "in a real Ruby 3.3+ process started with RUBY_MN_THREADS=1: Ring.new raises Unsupported" do
      skip "Ruby #{RUBY_VERSION} has no M:N threads" if (RUBY_VERSION.split(".").map(&:to_i) <=> [3, 3]).negative?
      skip "needs the native build" unless described_class.native?
      script = 'require "hyperion/io_uring"; begin; Hyperion::IOUring::Ring.new; puts :opened; ' \
               'rescue Hyperion::IOUring::Unsupported => e; puts e.message; end'
      res = run_child(child_ruby_env.merge("RUBY_MN_THREADS" => "1"), child_ruby_cmd + ["-e", script], timeout: 30)
      expect(res.success?).to be(true), res.describe
      expect(res.out).to match(/RUBY_MN_THREADS=1: Ruby's M:N threads/)
    end
  end

  describe "errors" do
    it "has Unsupported as a StandardError and a Hyperion::IOUring::Error" do
      expect(described_class::Unsupported.ancestors).to include(described_class::Error, StandardError)
      expect(described_class::Error.superclass).to eq(StandardError)
      expect { raise described_class::Unsupported, "x" }.to raise_error(StandardError)
    end

    it "has ForkError, ThreadError and RingError under Hyperion::IOUring::Error" do
      %i[ForkError ThreadError RingError].each do |name|
        expect(described_class.const_get(name).superclass).to eq(described_class::Error), name.to_s
      end
    end
  end

  describe ".supported?" do
    it "probes once and caches the answer until reset!" do
      expect(described_class).to receive(:native_probe).once.and_call_original
      first = described_class.supported?
      expect(described_class.supported?).to eq(first)
      expect(described_class.unsupported_reason.nil?).to eq(first)
    end

    it "probes again after reset!" do
      expect(described_class).to receive(:native_probe).twice.and_call_original
      first = described_class.supported?
      expect(described_class.reset!).to be_nil
      expect(described_class.supported?).to eq(first)
    end

    it "is true here with no reason, when the kernel really sets up a ring" do
      require_io_uring!
      expect(described_class.native_probe).to eq(0)
      expect(described_class.supported?).to be(true)
      expect(described_class.unsupported_reason).to be_nil
    end

    it "is false on Darwin, with a reason that names Linux, without probing" do
      stub_uname(sysname: "Darwin", release: "23.1.0")
      expect(described_class).not_to receive(:native_probe)
      expect(described_class.linux?).to be(false)
      expect(described_class.kernel_supports_io_uring?).to be(false)
      expect(described_class.supported?).to be(false)
      expect(described_class.unsupported_reason).to match(/Linux/)
      expect(described_class.unsupported_reason).to include("Darwin")
    end

    it "is false on Linux 5.4, with a reason that names the kernel and the minimum" do
      stub_uname(release: "5.4.0-42-generic")
      expect(described_class).not_to receive(:native_probe)
      expect(described_class.linux?).to be(true)
      expect(described_class.kernel_supports_io_uring?).to be(false)
      expect(described_class.supported?).to be(false)
      expect(described_class.unsupported_reason).to include("5.4.0-42-generic")
      expect(described_class.unsupported_reason).to match(/kernel.*older than 5\.6/)
    end

    %w[5.6.0 6.1.0-13-amd64].each do |release|
      it "is true with the kernel reported as #{release} (the native probe runs for real)" do
        require_io_uring!
        stub_uname(release: release)
        expect(described_class).to receive(:native_probe).once.and_call_original
        expect(described_class.kernel_supports_io_uring?).to be(true)
        expect(described_class.supported?).to be(true)
        expect(described_class.unsupported_reason).to be_nil
      end
    end

    it "is false, never raising, when Etc.uname itself fails" do
      allow(Etc).to receive(:uname).and_raise(Errno::ENOSYS, "uname")
      described_class.reset!
      expect(described_class.linux?).to be(false)
      expect(described_class.supported?).to be(false)
      expect(described_class.unsupported_reason).to be_a(String).and(match(/\S/))
    end

    it "is false, never raising, when the native probe raises" do
      allow(described_class).to receive(:native_probe).and_raise(RuntimeError, "probe exploded")
      expect(described_class.supported?).to be(false)
      expect(described_class.unsupported_reason).to include("probe exploded")
    end
  end

  describe ".unsupported_reason for io_uring_setup failures" do
    # The errno is what the native probe would report on a locked-down host;
    # the sentence is the policy layer's.
    before do
      skip "no native extension: the probe never runs" unless described_class.native?
      allow(described_class).to receive(:native_probe).and_return(errno)
    end

    context "with EPERM" do
      let(:errno) { Errno::EPERM::Errno }

      it "says EPERM and gives /proc/sys/kernel/io_uring_disabled when it exists" do
        expect(described_class.supported?).to be(false)
        reason = described_class.unsupported_reason
        expect(reason).to include("EPERM")
        disabled = described_class.io_uring_disabled
        if disabled.nil?
          expect(reason).not_to include("io_uring_disabled")
        else
          expect(reason).to include("kernel.io_uring_disabled=#{disabled}")
        end
      end
    end

    context "with ENOSYS" do
      let(:errno) { Errno::ENOSYS::Errno }

      it "says ENOSYS and blames a seccomp profile or the kernel" do
        expect(described_class.supported?).to be(false)
        expect(described_class.unsupported_reason).to include("ENOSYS").and(include("seccomp"))
      end
    end

    context "with ENOMEM" do
      let(:errno) { Errno::ENOMEM::Errno }

      it "says ENOMEM and points at RLIMIT_MEMLOCK" do
        expect(described_class.supported?).to be(false)
        expect(described_class.unsupported_reason).to include("ENOMEM").and(include("RLIMIT_MEMLOCK"))
      end
    end

    context "with another errno" do
      let(:errno) { Errno::EINVAL::Errno }

      it "names it" do
        expect(described_class.supported?).to be(false)
        expect(described_class.unsupported_reason).to include("EINVAL")
      end
    end
  end

  describe ".io_uring_disabled" do
    it "is the sysctl's value, or nil without it" do
      path = "/proc/sys/kernel/io_uring_disabled"
      expected = File.exist?(path) ? Integer(File.read(path).strip) : nil
      expect(described_class.io_uring_disabled).to eq(expected)
    end
  end

  describe ".parse_kernel_release" do
    {
      "6.18.44-fc-v782" => [6, 18],
      "5.4.0-42-generic" => [5, 4],
      "5.6" => [5, 6],
      "10.0.1" => [10, 0],
      "garbage" => nil,
      "v5.10" => nil
    }.each do |release, expected|
      it "parses #{release.inspect} as #{expected.inspect}" do
        stub_uname(release: release)
        expect(described_class.parse_kernel_release).to eq(expected)
      end
    end

    it "reads the running kernel when unstubbed (as uname -r reports it)" do
      uname_r = `uname -r`.strip
      skip "no uname(1) here" if uname_r.empty?
      expect(described_class.parse_kernel_release).to eq(uname_r.split(".").first(2).map(&:to_i))
    end

    it "falls back to /proc/sys/kernel/osrelease when Etc.uname gives no release" do
      path = "/proc/sys/kernel/osrelease"
      skip "no #{path} here" unless File.exist?(path)
      stub_uname(release: "")
      expect(described_class.parse_kernel_release).to eq(File.read(path).strip.split(".").first(2).map(&:to_i))
    end

    it "is nil when Etc.uname fails" do
      allow(Etc).to receive(:uname).and_raise(Errno::ENOSYS, "uname")
      expect(described_class.parse_kernel_release).to be_nil
    end
  end

  describe ".linux? and .kernel_supports_io_uring?" do
    it "reads the real host unstubbed" do
      expect(described_class.linux?).to eq(Etc.uname[:sysname] == "Linux")
    end

    it "has MIN_LINUX_KERNEL 5.6" do
      expect(described_class::MIN_LINUX_KERNEL).to eq([5, 6])
    end

    {
      "4.19.0" => false, "5.5.19" => false, "5.6.0" => true, "5.10.0" => true,
      "6.1.0-13-amd64" => true, "10.0" => true, "nonsense" => false
    }.each do |release, expected|
      it "is #{expected} for Linux #{release}" do
        stub_uname(release: release)
        expect(described_class.linux?).to be(true)
        expect(described_class.kernel_supports_io_uring?).to be(expected)
      end
    end

    it "refuses a new-looking kernel that is not Linux" do
      stub_uname(sysname: "FreeBSD", release: "14.0-RELEASE")
      expect(described_class.linux?).to be(false)
      expect(described_class.kernel_supports_io_uring?).to be(false)
    end
  end

  describe ".resolve_policy!" do
    [:off, nil, false].each do |policy|
      it "gives false for #{policy.inspect} without probing" do
        expect(described_class).not_to receive(:supported?)
        expect(described_class.resolve_policy!(policy)).to be(false)
      end
    end

    it "gives supported? for :auto (here)" do
      expect(described_class.resolve_policy!(:auto)).to eq(described_class.supported?)
    end

    it "gives false for :auto on Darwin" do
      stub_uname(sysname: "Darwin", release: "23.1.0")
      expect(described_class.resolve_policy!(:auto)).to be(false)
    end

    [:on, true].each do |policy|
      it "gives true for #{policy.inspect} where supported" do
        require_io_uring!
        expect(described_class.resolve_policy!(policy)).to be(true)
      end

      it "raises Unsupported with the reason for #{policy.inspect} where not supported" do
        stub_uname(release: "5.4.0")
        expect { described_class.resolve_policy!(policy) }.to raise_error(described_class::Unsupported) { |e|
          expect(e.message).to start_with("io_uring required (io_uring: :on) but not supported on this host")
          expect(e.message).to include(described_class.unsupported_reason)
          expect(e.message).to include("5.4.0")
        }
      end
    end

    ["on", :yes, 1, 0, Object.new, "auto"].each do |policy|
      it "raises ArgumentError for #{policy.inspect}" do
        expect { described_class.resolve_policy!(policy) }.to raise_error(ArgumentError) { |e|
          expect(e.message).to start_with("io_uring must be :off, :auto, or :on (got ")
          expect(e.message).to include(policy.inspect)
        }
      end
    end
  end

  describe ".env_policy" do
    {
      "on" => :on, "ON" => :on, "On" => :on, "1" => :on, "true" => :on, "TRUE" => :on, "yes" => :on,
      "Yes" => :on, " on " => :on,
      "off" => :off, "OFF" => :off, "0" => :off, "false" => :off, "False" => :off, "no" => :off, "NO" => :off,
      "auto" => :auto, "AUTO" => :auto, "Auto" => :auto
    }.each do |raw, expected|
      it "reads HYPERION_IO_URING=#{raw.inspect} as #{expected.inspect}, silently" do
        with_env("HYPERION_IO_URING", raw) do
          result = nil
          expect { result = described_class.env_policy }.not_to output.to_stderr
          expect(result).to eq(expected)
        end
      end
    end

    [nil, "", "   "].each do |raw|
      it "gives nil for #{raw.nil? ? 'an unset variable' : raw.inspect}" do
        with_env("HYPERION_IO_URING", raw) do
          result = :unset
          expect { result = described_class.env_policy }.not_to output.to_stderr
          expect(result).to be_nil
        end
      end
    end

    it "reads another variable by name" do
      with_env("HYPERION_IO_URING", "off") do
        with_env("HYPERION_IO_URING_HOTPATH", "yes") do
          expect(described_class.env_policy("HYPERION_IO_URING_HOTPATH")).to eq(:on)
        end
      end
    end

    it "warns once on stderr for a bad value, naming the variable and the accepted values, and gives nil" do
      bad = fresh_bad_value
      with_env("HYPERION_IO_URING", bad) do
        result = :unset
        expect { result = described_class.env_policy }
          .to output(/HYPERION_IO_URING=#{Regexp.escape(bad.inspect)}.*on, off or auto/).to_stderr
        expect(result).to be_nil
        expect { result = described_class.env_policy }.not_to output.to_stderr
        expect(result).to be_nil
      end
    end

    it "warns again for a different bad value or another variable" do
      first = fresh_bad_value
      second = fresh_bad_value("perhaps")
      with_env("HYPERION_IO_URING", first) do
        expect { described_class.env_policy }.to output(/#{first}/).to_stderr
      end
      with_env("HYPERION_IO_URING", second) do
        expect { described_class.env_policy }.to output(/#{second}/).to_stderr
      end
      with_env("HYPERION_IO_URING_HOTPATH", first) do
        expect { described_class.env_policy("HYPERION_IO_URING_HOTPATH") }
          .to output(/HYPERION_IO_URING_HOTPATH=.*#{first}/).to_stderr
      end
    end
  end

  describe ".env_integer" do
    let(:name) { "HYPERION_IO_URING_SPEC_INT" }

    it "gives the default when unset or empty" do
      [nil, "", "  "].each do |raw|
        with_env(name, raw) { expect(described_class.env_integer(name, 17)).to eq(17) }
      end
    end

    it "reads a decimal Integer" do
      with_env(name, "64") { expect(described_class.env_integer(name, 17)).to eq(64) }
      with_env(name, " 128 ") { expect(described_class.env_integer(name, 17)).to eq(128) }
    end

    it "warns once and gives the default for a value that is not a decimal Integer" do
      %w[abc 12abc 0x10 1.5].each do |junk|
        raw = "#{junk}#{'0' * rand(1..3)}" # fresh for the warn-once memory
        with_env(name, raw) do
          result = nil
          expect { result = described_class.env_integer(name, 17) }
            .to output(/#{name}=#{Regexp.escape(raw.inspect)}.*17/).to_stderr
          expect(result).to eq(17)
          expect { described_class.env_integer(name, 17) }.not_to output.to_stderr
        end
      end
    end

    it "warns and gives the default when the validator rejects the value" do
      raw = "-#{rand(1..999_999)}"
      with_env(name, raw) do
        result = nil
        expect { result = described_class.env_integer(name, 8, &:positive?) }.to output(/#{name}/).to_stderr
        expect(result).to eq(8)
      end
      with_env(name, "3") { expect(described_class.env_integer(name, 8, &:positive?)).to eq(3) }
    end
  end

  describe ".diagnostics" do
    it "describes the host for operators" do
      with_env("HYPERION_IO_URING", "auto") do
        d = described_class.diagnostics
        expect(d).to include(
          :kernel_release, :io_uring_disabled, :liburing_version, :linux, :kernel_supports_io_uring,
          :native_extension, :supported, :unsupported_reason
        )
        expect(d[:kernel_release]).to eq(Etc.uname[:release])
        expect(d[:io_uring_disabled]).to eq(described_class.io_uring_disabled)
        expect(d[:supported]).to eq(described_class.supported?)
        expect(d[:unsupported_reason]).to eq(described_class.unsupported_reason)
        expect(d[:native_extension]).to eq(described_class::NATIVE_LIBURING)
        expect(d[:env]).to include("HYPERION_IO_URING" => "auto")
        expect(d[:liburing_version]).to match(/\A\d+\.\d+/) if described_class.native?
      end
    end

    it "reports an unsupported host with its reason" do
      stub_uname(sysname: "Darwin", release: "23.1.0")
      d = described_class.diagnostics
      expect(d).to include(sysname: "Darwin", linux: false, supported: false)
      expect(d[:unsupported_reason]).to match(/Linux/)
    end
  end

  describe "the native extension" do
    it "is the one with liburing here, loaded from a path candidate_paths names" do
      require_io_uring!
      expect(described_class.native?).to be(true)
      expect(described_class.load!).to eq(described_class)
      loaded = $LOADED_FEATURES.grep(%r{hyperion/io_uring/hyperion_io_uring\.(so|bundle)\z})
      expect(loaded.size).to eq(1)
      expect(described_class.candidate_paths).to include(loaded.first)
    end
  end

  describe "Ring.new where io_uring is unsupported" do
    it "raises Unsupported with the reason when supported? says no" do
      allow(described_class).to receive(:supported?).and_return(false)
      allow(described_class).to receive(:unsupported_reason).and_return("spec says no: #{SecureRandom.hex(4)}")
      reason = described_class.unsupported_reason
      expect_no_fd_leak do
        expect { described_class::Ring.new }.to raise_error(described_class::Unsupported, /#{reason}/)
      end
    end

    it "raises Unsupported naming Linux on a host that says Darwin" do
      stub_uname(sysname: "Darwin", release: "23.1.0")
      expect_no_fd_leak do
        expect { described_class::Ring.new(queue_depth: 4) }
          .to raise_error(described_class::Unsupported, /not supported on this host.*Linux/)
      end
    end
  end
end
