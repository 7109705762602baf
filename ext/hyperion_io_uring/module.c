/*
 * module.c: Ruby binding of Hyperion::IOUring's own native functions, the
 * support probe and the setup flags behind supported? and diagnostics.
 *
 * Layer: bindings. Calls probe.c and setup.c.
 */
#include "hyperion_io_uring.h"
#include "setup.h"

/*
 * call-seq:
 *   Hyperion::IOUring.native_probe -> 0 or errno
 *
 * Sets up (and tears down) a two-entry ring. Returns 0 when that worked,
 * else the positive errno io_uring_setup failed with (EPERM, ENOSYS,
 * ENOMEM, ...). Used by supported? and unsupported_reason.
 */
static VALUE
module_native_probe(VALUE mod)
{
    return INT2FIX(-hio_probe_native());
}

/*
 * call-seq:
 *   Hyperion::IOUring.native_setup_flags -> Integer or nil
 *
 * The IORING_SETUP_* flags rings in this process are created with, or nil
 * before the first ring.
 */
static VALUE
module_setup_flags(VALUE mod)
{
    long flags = hio_setup_flags();

    return flags < 0 ? Qnil : UINT2NUM((unsigned)flags);
}

void
hio_init_module(VALUE mIOUring)
{
    rb_define_singleton_method(mIOUring, "native_probe", module_native_probe, 0);
    rb_define_singleton_method(mIOUring, "native_setup_flags", module_setup_flags, 0);
}
