# frozen_string_literal: true

# `rake integration`, step 1: a Hyperion installation as a user makes it.
# Into a private GEM_HOME: this gem built and installed from the checkout
# (`gem build` + `gem install`), then an app directory whose Gemfile pins
# hyperion-rb 2.17.0 and async-http (Hyperion's --async-io wants a real
# fiber-IO library) and whose config/hyperion.rb requires "hyperion-io_uring"
# and "async/http" (docs/MIGRATING.md). Then step 2, spec/integration/hyperion_integration.rb,
# boots `bundle exec hyperion` there in every mode.

require "fileutils"
require "rbconfig"
require "bundler"

module Integration
  ROOT = File.expand_path("../..", __dir__)
  HYPERION_VERSION = "2.17.0"
  WORK = File.expand_path(ENV.fetch("INTEGRATION_DIR", File.join(ROOT, "tmp/integration")))
  # Reused between runs when it persists (CI points it outside the copied tree).
  GEM_HOME = File.expand_path(ENV.fetch("INTEGRATION_GEM_HOME", File.join(WORK, "gems")))
  APP = File.join(WORK, "app")

  GEMFILE = <<~RUBY
    # frozen_string_literal: true

    source "https://rubygems.org"

    gem "hyperion-rb", "#{HYPERION_VERSION}"
    # Installed from the checkout by `gem install` (not on RubyGems).
    gem "hyperion-io_uring", "%<version>s"
    # --async-io needs a fiber-IO library; async-http is the real one
    # (pinned to the release this was tested with: 0.105.0, async 2.46).
    gem "async-http", "~> 0.105.0"
    # hyperion-rb 2.17.0 needs openssl >= 3.0, < 4; newer releases in
    # async-http's dependency tree want openssl 4. The pin keeps the
    # resolution on 3.x, which builds from source (libssl-dev).
    gem "openssl", "~> 3.3"
  RUBY

  # The docs' config/hyperion.rb, which Hyperion's CLI loads first thing
  # (before it checks --async-io's library and long before any ring).
  HYPERION_CONFIG = <<~RUBY
    require "hyperion-io_uring"
    require "async/http" # --async-io
  RUBY

  # The app. /big answers 1 MiB (the slow-reader check); anything else "hello".
  CONFIG_RU = <<~RUBY
    BIG = ("x" * 1024 * 1024).freeze
    run lambda { |env|
      if env["PATH_INFO"] == "/big"
        [200, { "content-type" => "application/octet-stream" }, [BIG]]
      else
        [200, { "content-type" => "text/plain" }, ["hello"]]
      end
    }
  RUBY

  module_function

  def version
    Gem::Specification.load(File.join(ROOT, "hyperion-io_uring.gemspec")).version.to_s
  end

  # The environment every command of the installation runs in: the private
  # GEM_HOME only, the app's Gemfile, nothing of the development bundle.
  def env
    {
      "GEM_HOME" => GEM_HOME, "GEM_PATH" => GEM_HOME, "BUNDLE_GEMFILE" => File.join(APP, "Gemfile"),
      "PATH" => "#{GEM_HOME}/bin:#{ENV.fetch('PATH', '/usr/bin:/bin')}",
      "RUBYOPT" => nil, "RUBYLIB" => nil, "BUNDLE_PATH" => nil, "BUNDLE_BIN_PATH" => nil,
      "BUNDLER_SETUP" => nil, "BUNDLE_APP_CONFIG" => File.join(APP, ".bundle")
    }
  end

  def sh(*cmd, chdir: WORK)
    puts "integration: #{cmd.join(' ')}"
    Bundler.with_unbundled_env do
      system(env, *cmd, chdir: chdir, exception: true)
    end
  end

  def setup!
    FileUtils.mkdir_p([WORK, APP, GEM_HOME])
    gem_file = File.join(WORK, "hyperion-io_uring-#{version}.gem")
    sh "gem", "build", File.join(ROOT, "hyperion-io_uring.gemspec"), "--output", gem_file, chdir: ROOT
    sh "gem", "install", "--local", "--no-document", gem_file
    File.write(File.join(APP, "Gemfile"), format(GEMFILE, version: version))
    File.write(File.join(APP, "config.ru"), CONFIG_RU)
    FileUtils.mkdir_p(File.join(APP, "config"))
    File.write(File.join(APP, "config/hyperion.rb"), HYPERION_CONFIG)
    sh "bundle", "install", "--jobs", "2", "--quiet", chdir: APP
    sh "bundle", "exec", "ruby", "-e", <<~RUBY, chdir: APP
      require "hyperion-io_uring"
      so = $LOADED_FEATURES.grep(%r{/hyperion_io_uring[.]so}).first
      abort "integration: the installed gem is not the one loaded (\#{so})" unless so&.start_with?(ENV["GEM_HOME"])
      puts "integration: hyperion-io_uring \#{Hyperion::IOUring::VERSION} from \#{so}; supported? \#{Hyperion::IOUring.supported?}"
    RUBY
  end
end

if $PROGRAM_NAME == __FILE__
  if Gem::Version.new(RUBY_VERSION) < Gem::Version.new("3.3")
    puts "integration: skipped: hyperion-rb #{Integration::HYPERION_VERSION} needs Ruby >= 3.3 " \
         "(this is #{RUBY_VERSION}); CI runs it in the trixie leg (.ci/leg trixie)"
    exit 0
  end
  Integration.setup!
  spec = File.join(__dir__, "hyperion_integration.rb")
  exec(RbConfig.ruby, "-S", "rspec", "--order", "defined", "--format", "documentation", spec, *ARGV)
end
