# frozen_string_literal: true

require "fileutils"
require "open3"
require "rbconfig"
require "rubygems/package"
require "tmpdir"
require "zlib"

# `gem build` of the gemspec, from the checkout and from a copy of it with no
# .git (an unpacked tarball, a vendored tree): both must pack the sources
# and nothing built or test-only.
RSpec.describe "the packaged gem" do
  root = File.expand_path("..", __dir__)
  # Not copied: the repository, build trees and installed bundles.
  not_copied = %w[.git tmp pkg vendor .bundle].freeze
  # Planted in the copy: build products and local files that must stay out.
  planted = %w[
    ext/hyperion_io_uring/ring.o ext/hyperion_io_uring/hyperion_io_uring.so
    ext/hyperion_io_uring/Makefile ext/hyperion_io_uring/mkmf.log
    lib/hyperion/io_uring/hyperion_io_uring.so lib/hyperion/io_uring/scratch.o
    tmp/x86_64-linux/hyperion_io_uring/ring.o Gemfile.lock hyperion-io_uring-0.0.1.gem
  ].freeze

  # Runs `gem build` (the RubyGems of this Ruby) of the gemspec in +dir+,
  # outside Bundler and with git unable to find a repository above +dir+.
  # Returns what it printed.
  def self.build_gem(dir, out)
    runner = 'require "rubygems/gem_runner"; Gem::GemRunner.new.run(ARGV)'
    env = { "GIT_CEILING_DIRECTORIES" => File.dirname(dir) }
    cmd = [RbConfig.ruby, "-e", runner, "build", "hyperion-io_uring.gemspec", "--output", out]
    run = -> { Open3.capture2e(env, *cmd, chdir: dir) }
    output, status = defined?(Bundler) ? Bundler.with_unbundled_env(&run) : run.call
    raise "gem build in #{dir} failed (#{status.inspect}):\n#{output}" unless status.success?

    output
  end

  # The files in a .gem's data.tar.gz: name => mode.
  def self.gem_entries(path)
    entries = {}
    File.open(path, "rb") do |io|
      Gem::Package::TarReader.new(io).each do |outer|
        next unless outer.full_name == "data.tar.gz"

        Zlib::GzipReader.wrap(outer) do |gz|
          Gem::Package::TarReader.new(gz).each { |e| entries[e.full_name] = e.header.mode if e.file? }
        end
      end
    end
    entries
  end

  # Copies the files under +root+ (modes kept) to +dest+, except the
  # top-level entries in +skip+, then writes a dummy file at each path of
  # +plant+.
  def self.copy_tree(root, dest, skip:, plant:)
    Dir.children(root).reject { |name| skip.include?(name) }.each do |name|
      src = File.join(root, name)
      next FileUtils.cp(src, dest, preserve: true) if File.file?(src)

      Dir.glob("**/*", File::FNM_DOTMATCH, base: src).each do |rel|
        from = File.join(src, rel)
        next unless File.file?(from)

        FileUtils.mkdir_p(File.join(dest, name, File.dirname(rel)))
        FileUtils.cp(from, File.join(dest, name, rel), preserve: true)
      end
    end
    plant.each do |rel|
      path = File.join(dest, rel)
      FileUtils.mkdir_p(File.dirname(path))
      File.write(path, "not a source file\n") unless File.exist?(path)
    end
  end

  before(:all) do
    @tmp = Dir.mktmpdir("hyperion-io_uring-gem")
    copy = File.join(@tmp, "src")
    FileUtils.mkdir_p(copy)
    self.class.copy_tree(root, copy, skip: not_copied, plant: planted)
    @copy_has_git = File.exist?(File.join(copy, ".git"))
    @copy_output = self.class.build_gem(copy, File.join(@tmp, "copy.gem"))
    @checkout_output = self.class.build_gem(root, File.join(@tmp, "checkout.gem"))
    @copy = self.class.gem_entries(File.join(@tmp, "copy.gem"))
    @checkout = self.class.gem_entries(File.join(@tmp, "checkout.gem"))
    @spec = Gem::Package.new(File.join(@tmp, "copy.gem")).spec
  end

  after(:all) { FileUtils.rm_rf(@tmp) if @tmp }

  def sources(root, *patterns)
    Dir.glob(patterns, base: root).sort
  end

  it "is built from a tree without .git" do
    expect(@copy_has_git).to be(false)
    expect(@copy).not_to be_empty
  end

  it "packs the same files from the checkout and from the copy without .git" do
    expect(@copy.keys.sort).to eq(@checkout.keys.sort)
  end

  it "packs the Ruby sources" do
    expect(@copy.keys).to include("lib/hyperion/io_uring.rb", "lib/hyperion-io_uring.rb")
    lib = sources(root, "lib/hyperion/io_uring/*.rb")
    expect(lib).to include("lib/hyperion/io_uring/version.rb", "lib/hyperion/io_uring/policy.rb")
    expect(@copy.keys).to include(*lib)
  end

  it "packs extconf.rb and every C source and header" do
    c_sources = sources(root, "ext/hyperion_io_uring/*.{c,h}")
    expect(c_sources).to include("ext/hyperion_io_uring/ring.c", "ext/hyperion_io_uring/hyperion_io_uring.h")
    expect(@copy.keys).to include("ext/hyperion_io_uring/extconf.rb", *c_sources)
    expect(@spec.extensions).to eq(["ext/hyperion_io_uring/extconf.rb"])
  end

  it "packs the doctor as an executable" do
    expect(@spec.executables).to eq(["hyperion-io_uring-doctor"])
    expect(@copy.keys).to include("bin/hyperion-io_uring-doctor")
    expect(@copy["bin/hyperion-io_uring-doctor"] & 0o111).not_to eq(0)
  end

  it "packs the documentation and the RBS signatures" do
    expect(@copy.keys).to include("README.md", "CHANGELOG.md", "LICENSE", *sources(root, "docs/*.md"))
    signatures = sources(root, "sig/**/*.rbs")
    expect(signatures).to include("sig/hyperion/io_uring.rbs")
    expect(@copy.keys).to include(*signatures)
  end

  it "packs no build products, specs, benchmarks or CI scripts" do
    unwanted = @copy.keys.select do |f|
      f.end_with?(".so", ".o", ".bundle", ".gem", ".log", "Makefile", "Gemfile.lock") ||
        f.start_with?("spec/", "bench/", ".ci/", "rakelib/", "tmp/", "pkg/", ".git")
    end
    expect(unwanted).to be_empty
    expect(@checkout.keys.grep(/\.(so|o)\z/)).to be_empty
  end

  it "builds with no warning but the missing homepage" do
    [@copy_output, @checkout_output].each do |output|
      warnings = output.lines.grep(/\AWARNING:/).reject do |l|
        l.include?("no homepage specified") || l.include?("guides.rubygems.org/specification-reference")
      end
      expect(warnings).to be_empty, "gem build warned:\n#{output}"
    end
  end
end
