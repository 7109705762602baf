# frozen_string_literal: true

require "rbconfig"

# Running a separate ruby (or a program wrapping one) for a spec: with the
# same copy of the gem this process loaded (lib/ or spec:asan's staged
# build), bounded by a deadline, its output captured. Used where a fault
# must not touch the spec process (a seccomp filter) or where a small heap
# keeps GC.stress affordable.
module ChildHelpers
  # The lib/ directory this process loaded hyperion/io_uring from.
  def gem_lib_dir
    rb = $LOADED_FEATURES.find { |f| f.end_with?("/hyperion/io_uring.rb") }
    raise "hyperion/io_uring is not loaded" unless rb

    File.dirname(File.dirname(rb))
  end

  # Environment for a child ruby: bundler's RUBYOPT would load the gemspec
  # (and lib/'s version.rb beside a staged copy); the child needs only the
  # standard library and -I gem_lib_dir. LD_PRELOAD and the sanitizer
  # options (spec:asan) are inherited.
  def child_ruby_env
    { "RUBYOPT" => nil, "BUNDLE_GEMFILE" => nil }
  end

  # [ruby, -I lib] for Process.spawn.
  def child_ruby_cmd
    [RbConfig.ruby, "-I", gem_lib_dir]
  end

  ChildResult = Struct.new(:status, :out, :err, :timed_out, keyword_init: true) do
    def success? = !timed_out && status&.success?

    def describe
      "exit #{timed_out ? 'timed out' : status.inspect}\n--- stdout\n#{out}\n--- stderr\n#{err}"
    end
  end

  # Runs cmd (an argv Array) with env, stdin closed, and waits at most
  # +timeout+ seconds (then kills it with SIGKILL). Returns a ChildResult.
  def run_child(env, cmd, timeout:)
    child = start_child(env, cmd)
    child.finish(timeout: timeout)
  end

  def start_child(env, cmd)
    RunningChild.new(env, cmd)
  end

  # A child whose stdout can be read line by line while it runs.
  class RunningChild
    attr_reader :pid

    def initialize(env, cmd)
      @out_r, out_w = IO.pipe
      @err_r, err_w = IO.pipe
      @pid = Process.spawn(env, *cmd, in: File::NULL, out: out_w, err: err_w, close_others: true)
      out_w.close
      err_w.close
      @out = +""
      @err = +""
      # Drained by a thread so a chatty child never blocks on a full pipe.
      @err_reader = Thread.new { @err << @err_r.read.to_s }
    end

    def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

    # The next line of stdout, or nil at EOF or after +timeout+ seconds.
    def gets(timeout:)
      deadline = now + timeout
      until (i = @out.index("\n"))
        left = deadline - now
        return nil if left <= 0 || !@out_r.wait_readable(left)

        chunk = @out_r.read_nonblock(65_536, exception: false)
        return nil if chunk.nil?

        @out << chunk unless chunk == :wait_readable
      end
      @out.slice!(0..i).chomp
    end

    # Waits for the exit (killing the child after +timeout+ seconds);
    # returns a ChildResult with the rest of stdout and all of stderr.
    def finish(timeout:)
      return @result if @result

      deadline = now + timeout
      status = nil
      timed_out = false
      loop do
        _, status = Process.wait2(@pid, Process::WNOHANG)
        break if status

        if now > deadline
          timed_out = true
          Process.kill(:KILL, @pid)
          _, status = Process.wait2(@pid)
          break
        end
        sleep 0.02 if drain_out(0.05) == false # EOF already: just wait for the exit
      end
      # Whatever it wrote before exiting (bounded: a grandchild could hold
      # the pipe open).
      rest = now + 2
      nil while now < rest && drain_out(0.05) != false
      @err_reader.join(5)
      @result = ChildResult.new(status: status, out: @out.dup, err: @err.dup, timed_out: timed_out)
    ensure
      @out_r.close unless @out_r.closed?
      @err_reader.join(1) || @err_reader.kill
      @err_r.close unless @err_r.closed?
    end

    # Kills the child if it still runs and reaps it (for ensure blocks).
    def kill
      return if @result

      Process.kill(:KILL, @pid)
      finish(timeout: 5)
    rescue Errno::ESRCH
      nil
    end

    private

    # Reads what stdout has within +wait+ seconds; false at EOF, nil when
    # nothing came.
    def drain_out(wait)
      return false if @out_r.closed?
      return nil unless @out_r.wait_readable(wait)

      chunk = @out_r.read_nonblock(65_536, exception: false)
      return false if chunk.nil?

      @out << chunk unless chunk == :wait_readable
      true
    end
  end
end
