# frozen_string_literal: true

require "fileutils"
require "json"
require "open3"
require "rbconfig"
require "tmpdir"

module StubBuild
  # Runs a command outside Bundler (no RUBYOPT=-rbundler/setup putting the
  # repo's lib, and its compiled extension, on the load path).
  def self.run_outside_bundler(env, *cmd, chdir:)
    runner = -> { Open3.capture2e(env, *cmd, chdir: chdir) }
    out, status = defined?(Bundler) ? Bundler.with_unbundled_env(&runner) : runner.call
    raise "#{cmd.join(' ')} failed (#{status.inspect}):\n#{out}" unless status.success?

    out
  end
end

# Builds the extension with HYPERION_IO_URING_FORCE_STUB=1 in a temporary
# directory and loads it in a fresh Ruby: the stub must load, say why it is
# unsupported, and make Ring.new raise Unsupported. Compiles C, so it is
# tagged :slow (exclude with `rspec --tag ~slow`); it runs by default.
RSpec.describe "the forced stub build", :slow do
  repo = File.expand_path("..", __dir__)
  dlext = RbConfig::CONFIG["DLEXT"]

  before(:all) do
    @tmp = Dir.mktmpdir("hyperion-io_uring-stub")
    build = File.join(@tmp, "build")
    @lib = File.join(@tmp, "lib")
    FileUtils.mkdir_p(build)
    @extconf_out = StubBuild.run_outside_bundler({ "HYPERION_IO_URING_FORCE_STUB" => "1" }, RbConfig.ruby,
                                  File.join(repo, "ext/hyperion_io_uring/extconf.rb"), chdir: build)
    StubBuild.run_outside_bundler({}, ENV.fetch("MAKE", "make"), chdir: build)
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
    out = StubBuild.run_outside_bundler({}, RbConfig.ruby, "-I#{@lib}", "-I#{File.join(repo, 'lib')}", "-e", script, chdir: @tmp)
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

# extconf.rb against a liburing that lacks one function the engine calls:
# a pkg-config entry whose header includes the real liburing.h and then hides
# io_uring_prep_recv_multishot. The build must fall back to the stub and
# name what is missing, never fail.
RSpec.describe "the build against a liburing that lacks a required function", :slow do
  repo = File.expand_path("..", __dir__)

  before(:all) do
    skip "pkg-config or liburing not found: the fake liburing is layered on the real one" \
      unless system("pkg-config --exists liburing", out: File::NULL, err: File::NULL)

    @tmp = Dir.mktmpdir("hyperion-io_uring-oldlib")
    inc = File.join(@tmp, "include")
    FileUtils.mkdir_p(inc)
    File.write(File.join(inc, "liburing.h"), <<~C)
      #include_next <liburing.h>
      #define io_uring_prep_recv_multishot hio_spec_no_such_function
    C
    File.write(File.join(@tmp, "liburing.pc"), <<~PC)
      Name: liburing
      Description: liburing without multishot recv (spec)
      Version: 0.0-spec
      Cflags: -I#{inc}
      Libs: -luring
    PC
    build = File.join(@tmp, "build")
    FileUtils.mkdir_p(build)
    env = { "PKG_CONFIG_PATH" => @tmp, "HYPERION_IO_URING_FORCE_STUB" => nil }
    @out = StubBuild.run_outside_bundler(
      env, RbConfig.ruby, File.join(repo, "ext/hyperion_io_uring/extconf.rb"), chdir: build
    )
    @makefile = File.read(File.join(build, "Makefile"))
  end

  after(:all) { FileUtils.rm_rf(@tmp) if @tmp }

  it "builds the stub, with a reason naming the missing function and the liburing version" do
    expect(@out).to include("building the stub extension")
    reason = @makefile[/-DHIO_STUB_REASON=(.*)$/, 1]
    expect(reason).to include("io_uring_prep_recv_multishot").and(include("0.0-spec"))
    expect(@makefile).to match(/^OBJS = stub\.o$/)
  end

  it "finds every other required function" do
    missing = @out.lines.grep(/\Achecking for io_uring_\w+\(\) in liburing\.h\.\.\. no/)
    expect(missing.map { |l| l[/io_uring_\w+/] }).to eq(["io_uring_prep_recv_multishot"])
  end
end
