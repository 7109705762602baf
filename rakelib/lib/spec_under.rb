# frozen_string_literal: true

# What spec:asan and spec:valgrind (rakelib/sanitizers.rake) share: which
# spec files to run, and the ruby -e program that boots rspec on a given
# build of the extension. The ASan build and run are in spec_under/asan.rb,
# the valgrind run in spec_under/valgrind.rb (its report: valgrind_report.rb).

require "etc"
require "fileutils"
require "rbconfig"

module SpecUnder
  extend FileUtils # rake's sh

  ROOT = File.expand_path("../..", __dir__)
  EXT_DIR = File.join(ROOT, "ext", "hyperion_io_uring")
  SO_NAME = "hyperion_io_uring.#{RbConfig::CONFIG['DLEXT']}".freeze

  module_function

  def spec_args
    files = ENV["SPEC"].to_s.split
    files.empty? ? ["spec"] : files
  end

  # A ruby -e program that requires the gem and then runs rspec, so the
  # copy found first on $LOAD_PATH (the one given with -I) is the one
  # loaded, and a feature already in $LOADED_FEATURES is not loaded again
  # from ./lib. It prints which .so was loaded, and aborts when it is not
  # the expected one.
  def rspec_boot(label, expected_so, check_mapped: nil)
    <<~RUBY
      # rspec unshifts ./lib unless it is on $LOAD_PATH already: keep it
      # behind the -I directory, so a later require finds the same copy.
      lib = #{File.join(ROOT, "lib").dump}
      $LOAD_PATH.push(lib) unless $LOAD_PATH.include?(lib)
      # Bundler already loaded lib/.../version.rb (through the gemspec): a
      # staged copy of a file loaded from lib/ counts as loaded too.
      staged = #{File.dirname(File.dirname(File.dirname(expected_so))).dump}
      if staged != lib
        $LOADED_FEATURES.select { |f| f.start_with?(lib + "/") }.each do |f|
          copy = staged + f.delete_prefix(lib)
          $LOADED_FEATURES << copy if File.exist?(copy)
        end
      end
      require "hyperion/io_uring"
      want = File.realpath(#{expected_so.dump})
      loaded = $LOADED_FEATURES.grep(%r{/hyperion_io_uring\\.[a-z]+\\z}).map { |f| File.realpath(f) }
      abort "#{label}: expected \#{want} to be loaded, got \#{loaded.inspect}" unless loaded == [want]
      maps = File.foreach("/proc/self/maps").map { |l| l.split[5] }.compact.uniq
      mapped = #{check_mapped.inspect}
      abort "#{label}: \#{mapped} is not mapped into the process" if mapped && maps.none? { |m| m.include?(mapped) }
      warn "#{label}: loaded \#{want}" + (mapped ? " (\#{mapped} mapped)" : "") +
           "; io_uring supported: \#{Hyperion::IOUring.supported?}" +
           (Hyperion::IOUring.supported? ? "" : " (\#{Hyperion::IOUring.unsupported_reason})")
      Hyperion::IOUring.reset!
      require "rspec/core"
      exit RSpec::Core::Runner.run(ARGV, $stderr, $stdout).to_i
    RUBY
  end
end

require_relative "spec_under/asan"
require_relative "spec_under/valgrind"
