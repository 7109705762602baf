/*
 * hotpath_buffers.c: Ruby binding of HotpathRing's recv buffers
 * (copy_buffer, release_buffer, take_buffer): which buffer ids Ruby holds,
 * and how much of one it may read.
 *
 * Layer: bindings. Calls hotpath.c's engine API (engine.h).
 */
#include "hotpath_class.h"
#include <errno.h>
#include <string.h>
#include <ruby/encoding.h>

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

/* outbuf as a String #copy_buffer / #take_buffer may write (TypeError,
 * FrozenError), checked before anything else happens. */
static void
hpb_outbuf_check(VALUE outbuf)
{
    if (!RB_TYPE_P(outbuf, T_STRING))
        rb_raise(rb_eTypeError, "outbuf must be a String, got %s", rb_obj_classname(outbuf));
    rb_str_modify(outbuf);
}

/* The first len bytes of the buffer Ruby holds as bidv: in a new String, or
 * replacing outbuf's contents (binary, as IO#read does with its outbuf), so
 * a server that reads into the same String allocates nothing per recv. */
static VALUE
hpb_string(struct hio_hotpath *h, VALUE bidv, long bid, VALUE lenv, VALUE outbuf)
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
    if (NIL_P(outbuf)) return rb_str_new((const char *)data, len);
    /* Room enough: no realloc (rb_str_resize would shrink a String whose
     * spare room outgrew the new length, then grow it for the next). */
    if ((long)rb_str_capacity(outbuf) < len) rb_str_resize(outbuf, len);
    memcpy(RSTRING_PTR(outbuf), data, (size_t)len);
    rb_str_set_len(outbuf, len);
    if (ENCODING_GET_INLINED(outbuf) != rb_ascii8bit_encindex()) rb_enc_associate_index(outbuf, rb_ascii8bit_encindex());
    RB_ENC_CODERANGE_CLEAR(outbuf);
    return outbuf;
}

/* The optional outbuf of copy_buffer and take_buffer. */
static VALUE
hpb_args(int argc, VALUE *argv, VALUE *bidv, VALUE *lenv)
{
    VALUE outbuf = Qnil;

    rb_scan_args(argc, argv, "21", bidv, lenv, &outbuf);
    if (!NIL_P(outbuf)) hpb_outbuf_check(outbuf);
    return outbuf;
}

/*
 * call-seq:
 *   ring.copy_buffer(buf_id, len) -> String
 *   ring.copy_buffer(buf_id, len, outbuf) -> outbuf
 *
 * A new binary String of the first +len+ bytes of buffer +buf_id+ (one
 * copy, straight from the kernel's buffer); with +outbuf+ (a String), its
 * contents are replaced by those bytes instead (binary, like IO#read's
 * outbuf), so a loop that reuses one String allocates nothing. The buffer
 * stays held: give it back with #release_buffer. ArgumentError for an id
 * out of range, a buffer Ruby does not hold, or +len+ beyond what the
 * kernel wrote; TypeError or FrozenError for an outbuf that is not a
 * String or is frozen (checked first: the buffer is untouched then).
 */
static VALUE
hpb_copy(int argc, VALUE *argv, VALUE self)
{
    struct hio_hotpath *h = hpc_usable(self)->h;
    VALUE bidv, lenv, outbuf = hpb_args(argc, argv, &bidv, &lenv);

    return hpb_string(h, bidv, hpb_id(bidv), lenv, outbuf);
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
 *   ring.take_buffer(buf_id, len, outbuf) -> outbuf
 *
 * #copy_buffer then #release_buffer, in one call.
 */
static VALUE
hpb_take(int argc, VALUE *argv, VALUE self)
{
    struct hio_hotpath *h = hpc_usable(self)->h;
    VALUE bidv, lenv, outbuf = hpb_args(argc, argv, &bidv, &lenv);
    long bid = hpb_id(bidv);
    VALUE str = hpb_string(h, bidv, bid, lenv, outbuf);

    hio_hp_release(h, bid);
    return str;
}

void
hio_init_hotpath_buffers(VALUE klass)
{
    rb_define_method(klass, "copy_buffer", hpb_copy, -1);
    rb_define_method(klass, "release_buffer", hpb_release, 1);
    rb_define_method(klass, "take_buffer", hpb_take, -1);
}
