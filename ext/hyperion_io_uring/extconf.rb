# frozen_string_literal: true

# Builds hyperion_io_uring.so. Where the platform is not Linux, or liburing
# is missing, it builds a stub (only stub.c): `require` still works and
# Hyperion::IOUring.supported? is false with STUB_REASON as the reason.
#
# Forcing the stub (for specs and for hosts that must not use io_uring):
#   HYPERION_IO_URING_FORCE_STUB=1 ruby extconf.rb
#   ruby extconf.rb --with-stub
# Sanitizer build (rake spec:asan): HYPERION_IO_URING_SANITIZE=1.

require "mkmf"

def stub_reason
  return "forced stub build (HYPERION_IO_URING_FORCE_STUB or --with-stub)" if ENV["HYPERION_IO_URING_FORCE_STUB"].to_s =~ /\A(1|true|yes)\z/i || with_config("stub")
  return "not Linux (#{RbConfig::CONFIG['host_os']}): io_uring is Linux-only" unless RbConfig::CONFIG["host_os"].include?("linux")

  found = pkg_config("liburing")
  found ||= have_library("uring", "io_uring_queue_init", "liburing.h") && have_header("liburing.h")
  return "liburing not found when the extension was built (install liburing-dev, then reinstall the gem)" unless found
  return "liburing.h lacks io_uring_register_buf_ring (liburing >= 2.2 needed)" unless have_func("io_uring_register_buf_ring", "liburing.h")

  nil
end

reason = stub_reason
$CFLAGS << " -std=gnu11 -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers"
$CFLAGS << " -Werror" if ENV["HYPERION_IO_URING_WERROR"] == "1"

if ENV["HYPERION_IO_URING_SANITIZE"] == "1"
  $CFLAGS << " -fsanitize=address,undefined -fno-omit-frame-pointer -O1 -g"
  $LDFLAGS << " -fsanitize=address,undefined"
end

if reason
  warn "hyperion-io_uring: building the stub extension: #{reason}"
  $defs << "-DHIO_STUB=1"
  $defs << %(-DHIO_STUB_REASON=#{reason.dump.dump})
  $srcs = ["stub.c"]
  $objs = ["stub.o"]
else
  have_header("linux/time_types.h")
  have_header("valgrind/memcheck.h") # client requests: no-ops unless run under valgrind
  %w[io_uring_get_events io_uring_submit_and_get_events io_uring_ring_dontfork
     io_uring_prep_recv_multishot io_uring_prep_multishot_accept
     io_uring_prep_cancel_fd io_uring_submit_and_wait_timeout io_uring_buf_ring_init
     io_uring_major_version].each { |f| have_func(f, "liburing.h") }
  have_func("rb_nogvl", "ruby/thread.h")
  have_func("rb_fiber_scheduler_current", "ruby/fiber/scheduler.h")
  have_func("rb_fiber_scheduler_io_wait", "ruby/fiber/scheduler.h")
  have_func("rb_io_descriptor", "ruby/io.h")
  version = (pkg_config("liburing", "modversion") rescue nil)
  $defs << %(-DHIO_LIBURING_VERSION=#{version.to_s.dump.dump}) if version
  $srcs = Dir[File.join(__dir__, "*.c")].map { |f| File.basename(f) }.reject { |f| f == "stub.c" }.sort
  $objs = $srcs.map { |f| f.sub(/\.c\z/, ".o") }
end

create_makefile("hyperion/io_uring/hyperion_io_uring")
