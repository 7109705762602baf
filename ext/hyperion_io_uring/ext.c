/*
 * ext.c: Init_hyperion_io_uring. Defines the module, its classes and
 * constants (through each binding's Init); nothing else lives here.
 *
 * Layer: bindings (the entry Ruby calls). Calls the bindings' Init
 * functions and owner.c's process setup.
 */
#include "hyperion_io_uring.h"

RUBY_FUNC_EXPORTED void
Init_hyperion_io_uring(void)
{
    VALUE mIOUring = rb_define_module_under(rb_define_module("Hyperion"), "IOUring");

    hio_owner_process_init();
    rb_define_const(mIOUring, "NATIVE_LIBURING", Qtrue);
    rb_define_const(mIOUring, "LIBURING_VERSION", rb_obj_freeze(rb_str_new_cstr(HIO_LIBURING_VERSION)));
    rb_define_const(mIOUring, "STUB_REASON", Qnil);
    hio_init_errors(mIOUring);
    hio_init_pins();
    hio_init_module(mIOUring);
    hio_init_ring_class(mIOUring);
    hio_init_hotpath_class(mIOUring);
    hio_init_hotpath_buffers(hio_cHotpathRing);
}
