/*
 * pins.c: Ruby Strings the kernel reads without a copy, kept alive and in
 * place until it is done with them.
 *
 * Layer: bindings. Calls the Ruby API, and owner.c to register its unpin
 * hook. The engines only see tokens (hio_hp_submit_send_borrowed) and give
 * them back through hio_owner_unpin when the kernel no longer reads the
 * memory: at the send's final completion, or, for a ring closed with the
 * send still in flight, once its owner task is gone (owner.c).
 *
 * One table per process, marked from a hidden object that is a GC root:
 * a send can outlive its ring (a ring collected by the GC with a send in
 * flight defers the unpin), so the ring's own mark function would be too
 * short-lived. Entries are marked with rb_gc_mark, which pins them: the
 * compactor never moves a pinned object, so even an embedded String's
 * bytes stay where the kernel reads them. Free entries hold a Fixnum (the
 * next free index), which marking skips.
 *
 * hio_unpin is plain C and touches no Ruby object: it runs inside GC free
 * functions (a ring collected with sends that ended) and from owner.c.
 * All of it runs with the GVL held.
 */
#include "hyperion_io_uring.h"

static VALUE *pins;
static long pins_n, pins_cap, pins_free = -1, pins_live;
static VALUE pins_root;

static void
pins_mark(void *p)
{
    long i;

    for (i = 0; i < pins_n; i++)
        if (!SPECIAL_CONST_P(pins[i])) rb_gc_mark(pins[i]);
}

static size_t
pins_memsize(const void *p)
{
    return (size_t)pins_cap * sizeof(VALUE);
}

static const rb_data_type_t pins_type = {
    "Hyperion::IOUring::pins",
    { pins_mark, NULL, pins_memsize, },
    0, 0,
    RUBY_TYPED_FREE_IMMEDIATELY,
};

/* A free entry's index, or -1 without memory. */
static long
pins_take(void)
{
    long i;

    if (pins_free < 0) {
        if (pins_n == pins_cap) {
            long cap = pins_cap ? pins_cap * 2 : 64;
            /* Plain realloc: no GC may run (and mark) while the table moves. */
            VALUE *np = realloc(pins, (size_t)cap * sizeof(VALUE));
            if (!np) return -1;
            pins = np;
            pins_cap = cap;
        }
        pins[pins_n] = INT2FIX(-1);
        pins_free = pins_n++;
    }
    i = pins_free;
    pins_free = FIX2LONG(pins[i]);
    pins_live++;
    return i;
}

uint64_t
hio_pin(VALUE str)
{
    long i = pins_take();

    if (i < 0) rb_memerror();
    pins[i] = str;
    return (uint64_t)i + 1;
}

/* A second pin of the String token pins (hp_bodies.c keeps one while it
 * caches a copy of the String); 0 when token pins nothing or there is no
 * memory. Plain C like hio_unpin: it never raises. */
uint64_t
hio_repin(uint64_t token)
{
    long i = (long)token - 1, j;

    if (token == 0 || i >= pins_n || SPECIAL_CONST_P(pins[i])) return 0;
    if ((j = pins_take()) < 0) return 0;
    pins[j] = pins[i];
    return (uint64_t)j + 1;
}

void
hio_unpin(uint64_t token)
{
    long i = (long)token - 1;

    if (token == 0 || i >= pins_n || SPECIAL_CONST_P(pins[i])) return;
    pins[i] = LONG2FIX(pins_free);
    pins_free = i;
    pins_live--;
}

long
hio_pins_live(void)
{
    return pins_live;
}

void
hio_init_pins(void)
{
    /* Non-NULL data: the GC calls no dmark for a T_DATA whose pointer is NULL. */
    pins_root = TypedData_Wrap_Struct(0, &pins_type, &pins);
    rb_gc_register_mark_object(pins_root);
    hio_owner_set_unpin(hio_unpin);
    hio_owner_set_repin(hio_repin);
}
