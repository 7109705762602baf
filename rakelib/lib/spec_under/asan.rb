# frozen_string_literal: true

# spec:asan: the suite against an ASan+UBSan build of the extension.
module SpecUnder
  module_function

  ASAN_DIR = File.join(ROOT, "tmp", "asan")
  ASAN_LIB = File.join(ASAN_DIR, "lib")
  ASAN_SO = File.join(ASAN_LIB, "hyperion", "io_uring", SO_NAME)

  # No stack redzones: Ruby unwinds C frames with __builtin_longjmp (an
  # exception raised under rb_funcall, an interrupt checked in a wait), which
  # ASan does not see, so the poison of our unwound frames stays on the
  # thread's stack and a later frame there is reported (or trips GCC 12's
  # libasan: "CHECK failed ... kCurrentStackFrameMagic"). Heap, global and
  # UBSan checks are unaffected.
  ASAN_EXTRA_CFLAGS = "--param=asan-stack=0"

  # Builds the extension with HYPERION_IO_URING_SANITIZE=1 (extconf.rb adds
  # -fsanitize=address,undefined) in tmp/asan/build, and stages a copy of
  # lib/ with it in tmp/asan/lib: never over the ordinary build in lib/.
  # The whole lib/ is staged (as rake-compiler stages a gem) so that the
  # policy layer, loaded from there, names the .so it loaded
  # (candidate_paths). extconf.rb runs every time (it is quick) so a new .c
  # file is picked up; make rebuilds only what changed.
  def build_asan
    build = File.join(ASAN_DIR, "build", RUBY_VERSION)
    FileUtils.mkdir_p(build)
    # extconf's "checking for..." lines go to extconf.out (mkmf.log has the detail).
    sh({ "HYPERION_IO_URING_SANITIZE" => "1" }, RbConfig.ruby, File.join(EXT_DIR, "extconf.rb"),
       chdir: build, out: File.join(build, "extconf.out"))
    stamp = File.join(build, "extra_cflags")
    unless File.exist?(stamp) && File.read(stamp) == ASAN_EXTRA_CFLAGS
      sh(ENV.fetch("MAKE", "make"), "clean", chdir: build, out: File::NULL)
      File.write(stamp, ASAN_EXTRA_CFLAGS)
    end
    sh(ENV.fetch("MAKE", "make"), "-j#{Etc.nprocessors}", "V=0", "ARCH_FLAG=#{ASAN_EXTRA_CFLAGS}", chdir: build)
    stage_lib(File.join(build, SO_NAME))
    ldd = `ldd #{ASAN_SO}`
    abort "spec:asan: #{ASAN_SO} is not linked against libasan:\n#{ldd}" unless ldd.include?("libasan")
    ASAN_SO
  end

  def stage_lib(so)
    FileUtils.rm_rf(ASAN_LIB)
    Dir.glob("**/*", base: File.join(ROOT, "lib")).each do |rel|
      src = File.join(ROOT, "lib", rel)
      next if File.directory?(src) || rel.end_with?(".so", ".bundle")

      FileUtils.mkdir_p(File.dirname(File.join(ASAN_LIB, rel)))
      FileUtils.cp(src, File.join(ASAN_LIB, rel))
    end
    FileUtils.mkdir_p(File.dirname(ASAN_SO))
    FileUtils.install(so, ASAN_SO, mode: 0o755)
  end

  # The sanitizer runtime the compiler links against, resolved to a file:
  # it must be preloaded, because ASan has to come first in the process's
  # library list and ruby itself is not instrumented.
  def sanitizer_runtime(name)
    cc = RbConfig::CONFIG["CC"].to_s.split.first || "gcc"
    cc = "gcc" unless system("command -v #{cc} >/dev/null 2>&1")
    path = `#{cc} -print-file-name=#{name}`.strip
    abort "spec:asan: #{cc} does not know #{name} (install libasan8/libubsan1)" unless path.start_with?("/") && File.exist?(path)
    File.realpath(path)
  end

  def asan_env
    {
      "LD_PRELOAD" => [sanitizer_runtime("libasan.so"), sanitizer_runtime("libubsan.so"), ENV["LD_PRELOAD"]].compact.join(" "),
      # Ruby never frees everything at exit, so LeakSanitizer would only
      # report Ruby; valgrind (spec:valgrind) looks for our leaks. Ruby
      # installs its own sigaltstack in every thread; with ASan's
      # (use_sigaltstack=1) a thread's exit makes ASan munmap Ruby's
      # malloc'd stack, which fails: "CHECK failed ... unable to unmap".
      "ASAN_OPTIONS" => ["detect_leaks=0:abort_on_error=1:use_sigaltstack=0", ENV["ASAN_OPTIONS"]].compact.join(":"),
      "UBSAN_OPTIONS" => ["print_stacktrace=1:halt_on_error=1", ENV["UBSAN_OPTIONS"]].compact.join(":"),
      # Child rubies a spec spawns without -I find the ASan build too.
      "RUBYLIB" => [ASAN_LIB, ENV["RUBYLIB"]].compact.join(File::PATH_SEPARATOR),
      "HYPERION_IO_URING_SPEC_UNDER" => "asan"
    }
  end

  def run_asan
    so = build_asan
    boot = rspec_boot("spec:asan", so, check_mapped: "libasan")
    env = asan_env
    puts "#{env.map { |k, v| "#{k}=#{v.include?(' ') ? v.dump : v}" }.join(' ')} ruby -I #{ASAN_LIB} -e <boot> -- #{spec_args.join(' ')}"
    return if system(env, RbConfig.ruby, "-I", ASAN_LIB, "-e", boot, "--", *spec_args)

    abort "spec:asan: the suite failed under ASan/UBSan (#{$?})"
  end
end
