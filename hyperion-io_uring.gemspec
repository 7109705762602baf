# frozen_string_literal: true

require_relative "lib/hyperion/io_uring/version"

Gem::Specification.new do |spec|
  spec.name = "hyperion-io_uring"
  spec.version = Hyperion::IOUring::VERSION
  spec.authors = ["hyperion-io_uring developers"]
  spec.summary = "io_uring rings (accept, read, multishot recv, send) for Ruby HTTP servers"
  spec.description = <<~DESC
    A native extension over liburing that gives Ruby servers (Hyperion first)
    per-fiber io_uring rings: single-shot accept/read and a hot-path ring with
    multishot accept, multishot recv into a provided-buffer ring, send and
    batched completions. Drop-in for Hyperion's Hyperion::IOUring API, with
    interruptible waits, fork and thread guards and truthful probes.
  DESC
  spec.license = "MIT"
  spec.required_ruby_version = ">= 3.1"

  # Globs, not `git ls-files`: a source tree without .git (an unpacked
  # tarball, a vendored copy) must build the same gem. Build products
  # (*.so, *.o, Makefile, tmp/) never match; spec/, bench/, .ci/ and
  # rakelib/ are left out on purpose.
  spec.files = Dir.glob(%w[
    lib/**/*.rb ext/hyperion_io_uring/*.{c,h,rb} bin/* docs/*.md examples/*.rb sig/**/*.rbs
    README.md CHANGELOG.md LICENSE Gemfile Rakefile .rspec hyperion-io_uring.gemspec
  ], base: __dir__).sort
  spec.bindir = "bin"
  spec.executables = ["hyperion-io_uring-doctor"]
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/hyperion_io_uring/extconf.rb"]

  # async (for the scheduler specs) is in the Gemfile: its version depends on
  # the Ruby version.
  spec.add_development_dependency "rake", "~> 13.0"
  spec.add_development_dependency "rake-compiler", "~> 1.2"
  # rbs 3.x installs on Ruby 3.1 (3.9 and 3.10 need >= 3.1; 4.0 needs 3.2).
  spec.add_development_dependency "rbs", "~> 3.9"
  spec.add_development_dependency "rspec", "~> 3.12"
end
