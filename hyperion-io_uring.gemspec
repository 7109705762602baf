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

  spec.files = Dir.chdir(__dir__) do
    `git ls-files -z 2>/dev/null`.split("\x0").reject do |f|
      f.start_with?("spec/", "bench/", ".ci/", ".git") || f.empty?
    end
  end
  spec.bindir = "bin"
  spec.executables = ["hyperion-io_uring-doctor"]
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/hyperion_io_uring/extconf.rb"]

  # async (for the scheduler specs) is in the Gemfile: its version depends on
  # the Ruby version.
  spec.add_development_dependency "rake", ">= 13.0"
  spec.add_development_dependency "rake-compiler", "~> 1.2"
  spec.add_development_dependency "rspec", "~> 3.12"
end
