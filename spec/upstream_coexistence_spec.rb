# frozen_string_literal: true

require "open3"
require "tmpdir"
require "rbconfig"

# Upstream Hyperion (hyperion-rb) ships its own lib/hyperion/io_uring.rb and
# loads it with require_relative from lib/hyperion.rb. These run a stand-in
# of that layout in a child Ruby.
RSpec.describe "living beside upstream Hyperion" do
  let(:lib) { File.expand_path("../lib", __dir__) }

  def with_fake_upstream
    Dir.mktmpdir do |dir|
      FileUtils.mkdir_p(File.join(dir, "lib/hyperion"))
      File.write(File.join(dir, "lib/hyperion.rb"), <<~RUBY)
        require_relative "hyperion/io_uring"
        module Hyperion; UPSTREAM_LOADED = true; end
      RUBY
      File.write(File.join(dir, "lib/hyperion/io_uring.rb"), <<~RUBY)
        module Hyperion
          module IOUring
            class Unsupported < StandardError; end
            UPSTREAM_IO_URING = true
          end
        end
      RUBY
      yield File.join(dir, "lib")
    end
  end

  def ruby(*args)
    out, status = Open3.capture2e(RbConfig.ruby, *args)
    [out, status]
  end

  it "shadows upstream's io_uring.rb when this gem is required first" do
    with_fake_upstream do |up|
      out, status = ruby("-I#{up}", "-I#{lib}", "-e", <<~RUBY)
        require "hyperion-io_uring"
        require "hyperion"
        p [Hyperion::UPSTREAM_LOADED, defined?(Hyperion::IOUring::UPSTREAM_IO_URING),
           Hyperion::IOUring::Unsupported.superclass.name, Hyperion::IOUring.respond_to?(:diagnostics)]
      RUBY
      expect(status).to be_success, out
      expect(out).to include('[true, nil, "Hyperion::IOUring::Error", true]')
    end
  end

  it "takes over when upstream's io_uring.rb was loaded first but never used (config.ru's require)" do
    with_fake_upstream do |up|
      out, status = ruby("-I#{up}", "-I#{lib}", "-e", <<~RUBY)
        require "hyperion"
        require "hyperion-io_uring"
        io = Hyperion::IOUring
        p [defined?(io::UPSTREAM_IO_URING), io::Unsupported.superclass.name, io.respond_to?(:diagnostics),
           io::Upstream.took_over[:constants].sort, io.diagnostics[:upstream]]
        ring = io::Ring.new(queue_depth: 4) if io.supported?
        ring&.close
        puts "ok"
      RUBY
      expect(status).to be_success, out
      expect(out).to include('[nil, "Hyperion::IOUring::Error", true, [:UPSTREAM_IO_URING, :Unsupported], ')
      expect(out).to include("replaced")
      expect(out).to include("ok")
    end
  end

  it "refuses, saying why, when upstream's module is already in use (its library loaded)" do
    with_fake_upstream do |up|
      out, status = ruby("-I#{up}", "-I#{lib}", "-e", <<~RUBY)
        require "hyperion"
        Hyperion::IOUring.instance_variable_set(:@lib, Object.new) # what upstream's load! leaves
        begin
          require "hyperion-io_uring"
        rescue LoadError => e
          puts e.message
        end
        p defined?(Hyperion::IOUring::UPSTREAM_IO_URING)
      RUBY
      expect(status).to be_success, out
      expect(out).to include("already in use")
      expect(out).to include('the first line of config.ru')
      expect(out).to include('"constant"') # upstream's module left as it was
    end
  end
end
