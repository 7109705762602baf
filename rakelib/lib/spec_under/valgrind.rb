# frozen_string_literal: true

require_relative "../valgrind_report"

# spec:valgrind: the suite under valgrind memcheck, sorted by ValgrindReport.
module SpecUnder
  module_function

  # Ruby 3.1 is noisy under memcheck: its conservative GC reads uninitialised
  # stack words, and it never frees everything at exit. Debian's libruby has
  # no symbols, so suppressions can only say "these frames are in libruby",
  # and valgrind cannot say "no frame is in hyperion_io_uring.so". So:
  #
  # 1. spec/support/ruby.supp suppresses the bulk of Ruby's noise, written so
  #    that an error with one of our frames near the top is never matched.
  # 2. valgrind writes every remaining error as XML (one file per process,
  #    forked children included), and ValgrindReport (valgrind_report.rb) sorts them:
  #    - invalid read/write/free, overlap...: ours when any frame of any of
  #      its stacks (where it happened, where the block was allocated or
  #      freed) is in hyperion_io_uring.so;
  #    - uninitialised value / syscall param: ours when our code used it, or
  #      passed it to libc/liburing/the kernel, within the innermost
  #      UNINIT_DEPTH frames; "suspect" (printed, not failing) when libruby
  #      frames sit between, which is how Ruby's conservative GC scanning
  #      our stack frame looks;
  #    - definitely lost: ours when the allocation reached our code through
  #      the allocator and Ruby's xmalloc only (Ruby 3.1 frees nothing at
  #      exit, so what Ruby allocated on our behalf is not ours).
  #    Ours fails the task. The rest is counted, and the suppressions
  #    valgrind generated for it are written to other.supp in the run's
  #    directory for whoever updates ruby.supp.
  #
  # VALGRIND_OPTS is honoured by valgrind (e.g. --track-origins=yes).

  VALGRIND_ROOT = File.join(ROOT, "tmp", "valgrind")
  SUPPRESSIONS = File.join(ROOT, "spec", "support", "ruby.supp")
  # valgrind before 3.21 does not know that io_uring_enter can block
  # (https://bugs.kde.org/show_bug.cgi?id=463859): a thread waiting in it
  # keeps valgrind's big lock, so no other thread runs until the wait ends.
  # The extension works around it when it was built with
  # valgrind/memcheck.h (wait.c: under valgrind it sleeps in poll(2) on the
  # ring fd); built without it, a spec in which another thread must act
  # while a ring waits hangs, so the task refuses such a build.
  VALGRIND_FIXED = Gem::Version.new("3.21")

  # Whether the compiled extension knows it may run under valgrind
  # (extconf.rb found valgrind/memcheck.h); nil when that cannot be told.
  def valgrind_aware_build?
    makefile = File.join(ROOT, "tmp", RbConfig::CONFIG["arch"], "hyperion_io_uring", RUBY_VERSION, "Makefile")
    return nil unless File.exist?(makefile)

    File.read(makefile).include?("-DHAVE_VALGRIND_MEMCHECK_H")
  end

  def valgrind_timeout
    Float(ENV.fetch("VALGRIND_TIMEOUT", "1800"))
  end

  def valgrind_version
    Gem::Version.new(`valgrind --version`[/\d+(\.\d+)+/] || "0")
  end

  def run_valgrind
    abort "spec:valgrind: valgrind not found (sudo apt-get install -y valgrind)" unless system("command -v valgrind >/dev/null 2>&1")
    version = valgrind_version
    if version < VALGRIND_FIXED && valgrind_aware_build? == false
      abort "spec:valgrind: the extension was built without valgrind/memcheck.h (valgrind was installed later?), so " \
            "under valgrind #{version} (io_uring_enter not known to block, fixed in 3.21, KDE bug 463859) no other " \
            "thread would run while a ring waits. Rebuild it: " \
            "rm -rf tmp/#{RbConfig::CONFIG['arch']}/hyperion_io_uring && bundle exec rake compile"
    end
    so = File.join(ROOT, "lib", "hyperion", "io_uring", SO_NAME)
    # One directory per run: a concurrent run must not delete our output.
    Dir[File.join(VALGRIND_ROOT, "run-*")].each { |d| FileUtils.rm_rf(d) if File.mtime(d) < Time.now - 86_400 }
    dir = File.join(VALGRIND_ROOT, "run-#{Time.now.strftime('%Y%m%d-%H%M%S')}-#{Process.pid}")
    FileUtils.mkdir_p(dir)
    # --fair-sched=yes: valgrind runs one thread at a time, and its default
    # lock hands over so unfairly that a CPU-bound Ruby thread (ring_spec's
    # GVL counter) starved the others for seconds on a loaded machine.
    valgrind = %W[
      valgrind --tool=memcheck --error-limit=no --num-callers=40 --fair-sched=yes
      --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite
      --suppressions=#{SUPPRESSIONS} --gen-suppressions=all
      --xml=yes --xml-file=#{dir}/vg.%p.xml --log-file=#{dir}/vg.%p.log
    ]
    env = { "HYPERION_IO_URING_SPEC_UNDER" => "valgrind" }
    boot = rspec_boot("spec:valgrind", so)
    puts "#{valgrind.join(' ')} ruby -I lib -e <boot> -- #{spec_args.join(' ')}"
    status = run_with_timeout(env, *valgrind, RbConfig.ruby, "-I", File.join(ROOT, "lib"), "-e", boot, "--", *spec_args,
                              timeout: valgrind_timeout)
    abort "spec:valgrind: #{dir} was removed while valgrind ran" unless Dir.exist?(dir)
    report = ValgrindReport.new(Dir[File.join(dir, "vg.*.xml")])
    abort "spec:valgrind: valgrind wrote no XML output (#{dir})" if report.files.empty?
    report.print
    abort "spec:valgrind: #{report.ours.size} error(s) in hyperion_io_uring" unless report.ours.empty?
    abort "spec:valgrind: the suite did not pass under valgrind (#{status || 'timed out'})" unless status&.success?
  end

  # Runs a command in its own process group; kills the group after +timeout+
  # seconds (or on Ctrl-C). Returns the Process::Status, or nil on timeout.
  def run_with_timeout(env, *cmd, timeout:)
    pid = Process.spawn(env, *cmd, pgroup: true)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      _, status = Process.wait2(pid, Process::WNOHANG)
      return status if status

      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        warn "spec:valgrind: still running after #{timeout.round} s (VALGRIND_TIMEOUT); stopping it"
        kill_group(pid)
        return nil
      end
      sleep 0.5
    end
  rescue Interrupt
    kill_group(pid)
    raise
  end

  def kill_group(pid)
    Process.kill("TERM", -pid)
    20.times do
      return if Process.wait(pid, Process::WNOHANG)

      sleep 0.25
    end
    Process.kill("KILL", -pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end
end
