/*
 * ext.c: Init_hyperion_io_uring. Defines the module, classes and constants;
 * nothing else lives here.
 */
#include "hyperion_io_uring.h"

VALUE hio_mIOUring;
VALUE hio_eError;
VALUE hio_eUnsupported;
VALUE hio_eForkError;
VALUE hio_eThreadError;
VALUE hio_eRingError;

RUBY_FUNC_EXPORTED void
Init_hyperion_io_uring(void)
{
    VALUE mHyperion = rb_define_module("Hyperion");

    hio_mIOUring = rb_define_module_under(mHyperion, "IOUring");
    hio_init_errors();
    hio_init_probe();
    hio_init_ring_class();
    hio_init_hotpath_class();
}
