# frozen_string_literal: true

# Builds hyperion_io_uring.so. Where the platform is not Linux, liburing is
# missing, or this liburing lacks a piece the engine needs, it builds a stub
# (only stub.c): `require` still works and Hyperion::IOUring.supported? is
# false with STUB_REASON (which names the missing piece) as the reason. A
# `gem install` never fails for want of liburing.
#
# The code follows what this liburing has, never its version number: every
# function and struct field the engine uses is checked here, the required
# ones decide native-or-stub, the optional ones become HAVE_* macros.
#
# Forcing the stub (for specs and for hosts that must not use io_uring):
#   HYPERION_IO_URING_FORCE_STUB=1 ruby extconf.rb
#   ruby extconf.rb --with-stub
# Sanitizer build (rake spec:asan): HYPERION_IO_URING_SANITIZE=1.
# Warnings as errors (CI): HYPERION_IO_URING_WERROR=1.

require "mkmf"

# What the engine calls unconditionally. Most are static inline functions in
# liburing.h; have_func takes their address, which works for those too.
REQUIRED_FUNCS = %w[
  io_uring_queue_init_params io_uring_queue_exit io_uring_get_sqe io_uring_submit
  io_uring_submit_and_wait io_uring_submit_and_wait_timeout io_uring_register_eventfd
  io_uring_register_buf_ring io_uring_unregister_buf_ring io_uring_buf_ring_add
  io_uring_buf_ring_advance io_uring_buf_ring_mask
  io_uring_prep_accept io_uring_prep_multishot_accept io_uring_prep_read
  io_uring_prep_recv_multishot io_uring_prep_send io_uring_prep_close io_uring_prep_poll_add
  io_uring_prep_cancel64 io_uring_sqe_set_data64
  io_uring_sq_ready io_uring_cq_ready io_uring_cq_advance io_uring_cq_has_overflow
].freeze

# Used where present, with a fallback otherwise (see the #ifdef at each use).
OPTIONAL_FUNCS = %w[
  io_uring_submit_and_get_events io_uring_ring_dontfork io_uring_buf_ring_init
  io_uring_submit_and_wait_min_timeout io_uring_prep_send_zc io_uring_get_probe_ring
].freeze

def forced_stub?
  ENV["HYPERION_IO_URING_FORCE_STUB"].to_s =~ /\A(1|true|yes)\z/i || with_config("stub")
end

def find_liburing
  pkg_config("liburing") || (have_library("uring", "io_uring_queue_init", "liburing.h") && have_header("liburing.h"))
end

def stub_reason
  return "forced stub build (HYPERION_IO_URING_FORCE_STUB or --with-stub)" if forced_stub?
  return "not Linux (#{RbConfig::CONFIG['host_os']}): io_uring is Linux-only" unless RbConfig::CONFIG["host_os"].include?("linux")
  return "liburing not found when the extension was built (install liburing-dev, then reinstall the gem)" unless find_liburing

  missing = REQUIRED_FUNCS.reject { |f| have_func(f, "liburing.h") }
  unless missing.empty?
    return "this liburing (#{liburing_version || 'unknown version'}) lacks #{missing.join(', ')} " \
           "(Debian 12's liburing 2.3 has them all; upgrade liburing-dev, then reinstall the gem)"
  end

  nil
end

def liburing_version
  @liburing_version ||= (pkg_config("liburing", "modversion") rescue nil)
end

def check_optional_pieces
  have_header("linux/time_types.h")
  have_header("valgrind/memcheck.h") # client requests: no-ops unless run under valgrind
  OPTIONAL_FUNCS.each { |f| have_func(f, "liburing.h") }
  # sendfile_min: (hp_bodies.c): glibc 2.27+.
  have_func("memfd_create", ["sys/mman.h"])
  # Its third field is `pad` up to liburing 2.8 and `min_wait_usec` from 2.9
  # (kernel 6.12's batch waits).
  have_struct_member("struct io_uring_getevents_arg", "min_wait_usec", "liburing.h")
  have_func("rb_nogvl", "ruby/thread.h")
  have_func("rb_fiber_scheduler_current", "ruby/fiber/scheduler.h")
  have_func("rb_fiber_scheduler_io_wait", "ruby/fiber/scheduler.h")
  have_func("rb_io_descriptor", "ruby/io.h")
  have_func("rb_io_closed_p", "ruby/io.h") # 3.3: with rb_io_descriptor, no reach into rb_io_t
end

reason = stub_reason

if reason
  warn "hyperion-io_uring: building the stub extension: #{reason}"
  $defs << "-DHIO_STUB=1"
  $defs << %(-DHIO_STUB_REASON=#{reason.dump.dump})
  $srcs = ["stub.c"]
  $objs = ["stub.o"]
else
  check_optional_pieces
  $defs << %(-DHIO_LIBURING_VERSION=#{liburing_version.to_s.dump.dump}) if liburing_version
  $srcs = Dir[File.join(__dir__, "*.c")].map { |f| File.basename(f) }.reject { |f| f == "stub.c" }.sort
  $objs = $srcs.map { |f| f.sub(/\.c\z/, ".o") }
end

# After the checks: a -Werror there would turn a warning in mkmf's test
# programs into a silently missing feature. The engine files include no
# ruby.h, whose config.h defines _GNU_SOURCE for the bindings: the same
# feature set for every file (IOV_MAX, for one).
$defs << "-D_GNU_SOURCE=1"
$CFLAGS << " -std=gnu11 -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers"
$CFLAGS << " -Werror" if ENV["HYPERION_IO_URING_WERROR"] == "1"

if ENV["HYPERION_IO_URING_SANITIZE"] == "1"
  $CFLAGS << " -fsanitize=address,undefined -fno-omit-frame-pointer -O1 -g"
  $LDFLAGS << " -fsanitize=address,undefined"
end

create_makefile("hyperion/io_uring/hyperion_io_uring")
