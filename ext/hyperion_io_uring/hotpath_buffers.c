/*
 * hotpath_buffers.c: Ruby binding of HotpathRing's recv buffers
 * (copy_buffer, release_buffer, take_buffer): which buffer ids Ruby holds,
 * and how much of one it may read.
 *
 * Layer: bindings. Calls hotpath.c's engine API (engine.h).
 */
#include "hotpath_class.h"
#include <errno.h>

/* A buffer id Ruby passed: an Integer; -1 for one too big to be any. */
static long
hpb_id(VALUE bidv)
{
    if (!RB_INTEGER_TYPE_P(bidv)) rb_raise(rb_eTypeError, "buf_id must be an Integer, got %s", rb_obj_classname(bidv));
    return FIXNUM_P(bidv) ? FIX2LONG(bidv) : -1;
}

/* The ArgumentError for a buffer Ruby does not hold (ret from the engine). */
NORETURN(static void hpb_not_held(struct hio_hotpath *h, VALUE bidv, long bid, int ret));

static void
hpb_not_held(struct hio_hotpath *h, VALUE bidv, long bid, int ret)
{
    if (ret == -ERANGE)
        rb_raise(rb_eArgError, "buf_id %"PRIsVALUE" out of range 0..%u", bidv, hio_hp_buffer_count(h) - 1);
    rb_raise(rb_eArgError, "buffer %ld is not held by Ruby (already released, or never delivered by a recv)", bid);
}

/* A new String of the first len bytes of the buffer Ruby holds as bidv. */
static VALUE
hpb_string(struct hio_hotpath *h, VALUE bidv, long bid, VALUE lenv)
{
    const unsigned char *data;
    unsigned wrote;
    long len;
    int ret = hio_hp_buffer(h, bid, &data, &wrote);

    if (ret < 0) hpb_not_held(h, bidv, bid, ret);
    if (!RB_INTEGER_TYPE_P(lenv)) rb_raise(rb_eTypeError, "len must be an Integer, got %s", rb_obj_classname(lenv));
    len = FIXNUM_P(lenv) ? FIX2LONG(lenv) : -1;
    if (len < 0 || len > (long)wrote)
        rb_raise(rb_eArgError, "len %"PRIsVALUE" is outside the %u bytes the kernel wrote into buffer %ld", lenv,
                 wrote, bid);
    return rb_str_new((const char *)data, len);
}

/*
 * call-seq:
 *   ring.copy_buffer(buf_id, len) -> String
 *
 * A new binary String of the first +len+ bytes of buffer +buf_id+ (one
 * copy, straight from the kernel's buffer). The buffer stays held: give it
 * back with #release_buffer. ArgumentError for an id out of range, a buffer
 * Ruby does not hold, or +len+ beyond what the kernel wrote.
 */
static VALUE
hpb_copy(VALUE self, VALUE bidv, VALUE lenv)
{
    struct hio_hotpath *h = hpc_usable(self)->h;

    return hpb_string(h, bidv, hpb_id(bidv), lenv);
}

/*
 * call-seq:
 *   ring.release_buffer(buf_id) -> nil
 *
 * Gives buffer +buf_id+ back to the kernel (and re-arms connections parked
 * for lack of buffers). ArgumentError when Ruby does not hold it (out of
 * range, or released twice).
 */
static VALUE
hpb_release(VALUE self, VALUE bidv)
{
    struct hio_hotpath *h = hpc_usable(self)->h;
    long bid = hpb_id(bidv);
    int ret = hio_hp_release(h, bid);

    if (ret < 0) hpb_not_held(h, bidv, bid, ret);
    return Qnil;
}

/*
 * call-seq:
 *   ring.take_buffer(buf_id, len) -> String
 *
 * #copy_buffer then #release_buffer, in one call.
 */
static VALUE
hpb_take(VALUE self, VALUE bidv, VALUE lenv)
{
    struct hio_hotpath *h = hpc_usable(self)->h;
    long bid = hpb_id(bidv);
    VALUE str = hpb_string(h, bidv, bid, lenv);

    hio_hp_release(h, bid);
    return str;
}

void
hio_init_hotpath_buffers(VALUE klass)
{
    rb_define_method(klass, "copy_buffer", hpb_copy, 2);
    rb_define_method(klass, "release_buffer", hpb_release, 1);
    rb_define_method(klass, "take_buffer", hpb_take, 2);
}
