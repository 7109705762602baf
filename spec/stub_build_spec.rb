# frozen_string_literal: true

require "fileutils"
require "json"
require "open3"
require "rbconfig"
require "tmpdir"

# Builds the extension with HYPERION_IO_URING_FORCE_STUB=1 in a temporary
# directory and loads it in a fresh Ruby: the stub must load, say why it is
# unsupported, and make Ring.new raise Unsupported. Compiles C, so it is
# tagged :slow (exclude with `rspec --tag ~slow`); it runs by default.
RSpec.describe "the forced stub build", :slow do
  repo = File.expand_path("..", __dir__)
  dlext = RbConfig::CONFIG["DLEXT"]

  # Runs a command outside Bundler (no RUBYOPT=-rbundler/setup putting the
  # repo's lib, and its compiled extension, on the load path).
  def self.run_outside_bundler(env, *cmd, chdir:)
    runner = -> { Open3.capture2e(env, *cmd, chdir: chdir) }
    out, status = defined?(Bundler) ? Bundler.with_unbundled_env(&runner) : runner.call
    raise "#{cmd.join(' ')} failed (#{status.inspect}):\n#{out}" unless status.success?

    out
  end

  before(:all) do
    @tmp = Dir.mktmpdir("hyperion-io_uring-stub")
    build = File.join(@tmp, "build")
    @lib = File.join(@tmp, "lib")
    FileUtils.mkdir_p(build)
    @extconf_out = self.class.run_outside_bundler({ "HYPERION_IO_URING_FORCE_STUB" => "1" }, RbConfig.ruby,
                                  File.join(repo, "ext/hyperion_io_uring/extconf.rb"), chdir: build)
    self.class.run_outside_bundler({}, ENV.fetch("MAKE", "make"), chdir: build)
    # mkmf's make leaves the .so in the build dir; require wants it at
    # hyperion/io_uring/hyperion_io_uring.so on the load path.
    dest = File.join(@lib, "hyperion/io_uring")
    FileUtils.mkdir_p(dest)
    FileUtils.cp(File.join(build, "hyperion_io_uring.#{dlext}"), dest)

    # Our lib dir comes before the repo's, which has no stub .so but has the
    # real one (when compiled): the one loaded must be ours.
    script = <<~RUBY
      require "json"
      require "hyperion/io_uring"
      io = Hyperion::IOUring
      ring_new = begin
        io::Ring.new
        ["returned"]
      rescue Exception => e
        [e.class.name, e.message, e.is_a?(io::Error), e.is_a?(StandardError)]
      end
      puts JSON.generate(
        supported: io.supported?,
        reason: io.unsupported_reason,
        native: io::NATIVE_LIBURING,
        stub_reason: io::STUB_REASON,
        resolve_auto: io.resolve_policy!(:auto),
        loaded: $LOADED_FEATURES.grep(/hyperion_io_uring\\.#{dlext}\\z/),
        ring_new: ring_new
      )
    RUBY
    out = self.class.run_outside_bundler({}, RbConfig.ruby, "-I#{@lib}", "-I#{File.join(repo, 'lib')}", "-e", script, chdir: @tmp)
    @report = JSON.parse(out.lines.last, symbolize_names: true)
  end

  after(:all) { FileUtils.rm_rf(@tmp) if @tmp }

  it "says at build time that it builds the stub, and why" do
    expect(@extconf_out).to include("building the stub extension").and(include("forced stub"))
  end

  it "loads the stub .so, not the repo's compiled extension" do
    expect(@report[:loaded]).to eq([File.join(@lib, "hyperion/io_uring/hyperion_io_uring.#{dlext}")])
    expect(@report[:native]).to be(false)
    expect(@report[:stub_reason]).to include("forced stub")
  end

  it "reports unsupported with a reason naming the forced stub" do
    expect(@report[:supported]).to be(false)
    expect(@report[:reason]).to include("forced stub")
    expect(@report[:resolve_auto]).to be(false)
  end

  it "raises Unsupported (a Hyperion::IOUring::Error and a StandardError) with the reason from Ring.new" do
    klass, message, is_error, is_standard = @report[:ring_new]
    expect(klass).to eq("Hyperion::IOUring::Unsupported")
    expect(message).to include("forced stub")
    expect(is_error).to be(true)
    expect(is_standard).to be(true)
  end
end
