# frozen_string_literal: true

# Counting and comparing this process's open fds through /proc/self/fd.
module FdHelpers
  FD_DIR = "/proc/self/fd"

  # fd number => what it points at ("socket:[123]", "anon_inode:[io_uring]",
  # a path...). The fd Dir.children itself used is closed by the time we
  # readlink it, so it drops out.
  def open_fds
    Dir.children(FD_DIR).each_with_object({}) do |name, fds|
      target = File.readlink(File.join(FD_DIR, name))
      fds[Integer(name)] = target
    rescue Errno::ENOENT
      next
    end
  end

  def fd_count
    open_fds.size
  end

  # Open io_uring ring fds (anon_inode:[io_uring]).
  def io_uring_fd_count
    open_fds.count { |_, target| target == "anon_inode:[io_uring]" }
  end

  # Mappings of io_uring rings (SQ/CQ rings, SQE arrays) in this process.
  def io_uring_mapping_count
    File.foreach("/proc/self/maps").count { |l| l.include?("anon_inode:[io_uring]") }
  end

  def full_gc
    3.times { GC.start(full_mark: true, immediate_sweep: true) }
  end

  # Runs the block and fails when it left fds open that were not open before.
  # Fds the block closed (say, an IO opened by a `let` it consumed) are not
  # leaks; an fd number reused for something else is (the target is compared
  # too). Objects the block dropped are collected first, so a ring freed by
  # the GC counts as closed.
  def expect_no_fd_leak
    full_gc
    before = open_fds
    result = yield
    full_gc
    after = open_fds
    leaked = after.reject { |fd, target| before[fd] == target }
    expect(leaked).to be_empty, "fds leaked: #{leaked.inspect} (#{before.size} open before, #{after.size} after)"
    result
  end

  # The O_* flags of an fd as the kernel reports them in /proc/self/fdinfo,
  # read without wrapping the fd in a Ruby IO (which could change them).
  def fdinfo_flags(fd)
    line = File.foreach("/proc/self/fdinfo/#{fd}").find { |l| l.start_with?("flags:") }
    Integer(line.split[1], 8)
  end
end
