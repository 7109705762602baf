/*
 * stub.c: the extension built where io_uring cannot work (not Linux, or
 * liburing missing, or forced with HYPERION_IO_URING_FORCE_STUB=1). It only
 * says why, so that `require` works and supported? is false with a reason.
 *
 * Layer: the whole extension of a stub build (extconf.rb compiles no other
 * file then). Calls Ruby's C API only.
 */
#include <ruby.h>

#ifndef HIO_STUB_REASON
#define HIO_STUB_REASON "stub build"
#endif

RUBY_FUNC_EXPORTED void
Init_hyperion_io_uring(void)
{
    VALUE mIOUring = rb_define_module_under(rb_define_module("Hyperion"), "IOUring");

    rb_define_const(mIOUring, "NATIVE_LIBURING", Qfalse);
    rb_define_const(mIOUring, "LIBURING_VERSION", Qnil);
    rb_define_const(mIOUring, "STUB_REASON", rb_obj_freeze(rb_str_new_cstr(HIO_STUB_REASON)));
}
