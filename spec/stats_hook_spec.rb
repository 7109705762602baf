# frozen_string_literal: true

require "json"
require "open3"
require "rbconfig"
require "tmpdir"

# HYPERION_IO_URING_STATS=path: a process writes its rings' counters at exit
# (lib/hyperion/io_uring/stats_hook.rb), so a server that does not expose its
# rings (Hyperion) can show they carried the traffic. Run in a child Ruby:
# the hook wraps the ring classes for the life of the process.
RSpec.describe "HYPERION_IO_URING_STATS" do
  let(:lib) { File.expand_path("../lib", __dir__) }

  before { require_io_uring! }

  def child(env, code)
    out, status = Open3.capture2e(env, RbConfig.ruby, "-I#{lib}", "-e", code)
    expect(status).to be_success, out
    out
  end

  it "writes the opened, closed and still-open rings and their counters at exit (%p: the pid)" do
    Dir.mktmpdir do |dir|
      out = child({ "HYPERION_IO_URING_STATS" => File.join(dir, "stats-%p.json") }, <<~RUBY)
        require "hyperion-io_uring"
        require "socket"
        server = TCPServer.new("127.0.0.1", 0)
        ring = Hyperion::IOUring::Ring.new(queue_depth: 4)
        3.times do
          c = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
          IO.for_fd(ring.accept(server, timeout: 2)).close
          c.close
        end
        ring.close
        $left_open = Hyperion::IOUring::Ring.new(queue_depth: 4) # left open (held: the GC may free an unheld one first)
        puts Process.pid
      RUBY
      file = File.join(dir, "stats-#{out.to_i}.json")
      stats = JSON.parse(File.read(file))
      expect(stats["pid"]).to eq(out.to_i)
      expect(stats["rings"]["Ring"]).to include("opened" => 2, "closed" => 1, "open_at_exit" => 1)
      expect(stats["rings"]["Ring"]["ops"]).to be >= 3
    end
  end

  it "is not loaded when the variable is unset" do
    out = child({ "HYPERION_IO_URING_STATS" => nil }, <<~RUBY)
      require "hyperion-io_uring"
      p [defined?(Hyperion::IOUring::StatsHook), Hyperion::IOUring::Ring.ancestors.first.name]
    RUBY
    expect(out).to include('[nil, "Hyperion::IOUring::Ring"]')
  end
end
