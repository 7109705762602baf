/*
 * hotpath_class.h: what the two files of HotpathRing's binding share
 * (hotpath_class.c, hotpath_buffers.c): the Ruby object's struct and the
 * check every method starts with. Layer: bindings.
 */
#ifndef HIO_HOTPATH_CLASS_H
#define HIO_HOTPATH_CLASS_H 1

#include "hyperion_io_uring.h"

#define HP_CLASS "Hyperion::IOUring::HotpathRing"

/* What a HotpathRing object holds: the engine (opaque) and the Ruby state
 * around it. */
struct hpc {
    struct hio_hotpath *h;
    VALUE sched_io;     /* IO of the eventfd for Fiber scheduler waits */
    VALUE owner_thread; /* the Thread that opened it (for #close once it ended) */
    int in_each;        /* each_completion runs (its block, or a fiber parked in it) */
};

extern const rb_data_type_t hio_hotpath_type;

/* The exception for why h may not be used now (hio_hp_may). */
NORETURN(void hio_hotpath_refuse(const struct hio_hotpath *h, int why));

static inline struct hpc *
hpc_get(VALUE self)
{
    struct hpc *hc;
    TypedData_Get_Struct(self, struct hpc, &hio_hotpath_type, hc);
    return hc;
}

/* The ring the caller may use now, or an exception saying why not. */
static inline struct hpc *
hpc_usable(VALUE self)
{
    struct hpc *hc = hpc_get(self);
    int why = hio_hp_may(hc->h, HIO_USE_CALL);

    if (why) hio_hotpath_refuse(hc->h, why);
    return hc;
}

#endif
