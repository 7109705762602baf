/*
 * probe.c: the runtime probe behind Hyperion::IOUring.supported?.
 */
#include "hyperion_io_uring.h"
#include "setup.h"
#include <errno.h>
#include <unistd.h>
#include <string.h>

/* In a forked child: drop our reference to the parent's ring without
 * submitting, cancelling or unmapping through liburing. */
void
hio_queue_forget(struct io_uring *ring)
{
    if (ring->ring_fd >= 0) close(ring->ring_fd);
    ring->ring_fd = -1;
}

/* ---- Ruby: probes ---- */

/*
 * call-seq:
 *   Hyperion::IOUring.native_probe -> 0 or errno
 *
 * Sets up (and tears down) a two-entry ring. Returns 0 when that worked,
 * else the positive errno io_uring_setup failed with (EPERM, ENOSYS,
 * ENOMEM, ...). Used by supported? and unsupported_reason.
 */
static VALUE
probe_native_probe(VALUE mod)
{
    struct io_uring ring;
    unsigned flags = 0;
    int ret = hio_queue_init(&ring, 2, 0, &flags);

    if (ret < 0) return INT2FIX(-ret);
    io_uring_queue_exit(&ring);
    return INT2FIX(0);
}

/*
 * call-seq:
 *   Hyperion::IOUring.native_setup_flags -> Integer or nil
 *
 * The IORING_SETUP_* flags rings in this process are created with, or nil
 * before the first ring.
 */
static VALUE
probe_setup_flags(VALUE mod)
{
    long flags = hio_setup_flags();
    return flags < 0 ? Qnil : UINT2NUM((unsigned)flags);
}

void
hio_init_probe(void)
{
    rb_define_singleton_method(hio_mIOUring, "native_probe", probe_native_probe, 0);
    rb_define_singleton_method(hio_mIOUring, "native_setup_flags", probe_setup_flags, 0);
    rb_define_const(hio_mIOUring, "NATIVE_LIBURING", Qtrue);
    rb_define_const(hio_mIOUring, "LIBURING_VERSION", rb_obj_freeze(rb_str_new_cstr(HIO_LIBURING_VERSION)));
    rb_define_const(hio_mIOUring, "STUB_REASON", Qnil);
}
