/*
 * args.c: the argument helpers of the bindings: Ruby values in, checked C
 * values out, or TypeError / ArgumentError naming the call.
 *
 * Layer: bindings. Calls Ruby's C API only.
 */
#include "hyperion_io_uring.h"
#include <limits.h>
#include <ruby/io.h>
#include <sys/uio.h>

/* An Integer fd or an IO (anything answering #fileno is not accepted:
 * upstream takes fds and IOs only, and a duck-typed object could lie). */
int
hio_fd_arg(VALUE v, const char *what)
{
    if (RB_INTEGER_TYPE_P(v)) {
        long fd;
        if (!FIXNUM_P(v)) rb_raise(rb_eArgError, "%s: fd out of range", what);
        fd = FIX2LONG(v);
        if (fd < 0 || fd > INT32_MAX) rb_raise(rb_eArgError, "%s: invalid fd %ld", what, fd);
        return (int)fd;
    }
    if (RB_TYPE_P(v, T_FILE)) {
        /* Checked here rather than by GetOpenFile or rb_io_descriptor: their
         * IOError "closed stream" does not say which call got the closed IO. */
#ifdef HAVE_RB_IO_CLOSED_P
        /* Ruby 3.3 deprecates reading rb_io_t's fields. */
        if (RTEST(rb_io_closed_p(v))) rb_raise(rb_eIOError, "%s: closed stream", what);
        return rb_io_descriptor(v);
#else
        rb_io_t *fptr = RFILE(v)->fptr;
        if (!fptr || fptr->fd < 0) rb_raise(rb_eIOError, "%s: closed stream", what);
        return fptr->fd;
#endif
    }
    rb_raise(rb_eTypeError, "%s: expected an Integer fd or an IO, got %s", what, rb_obj_classname(v));
    UNREACHABLE_RETURN(-1);
}

/* Whether io (a T_FILE) is closed; never raises. */
int
hio_io_closed(VALUE io)
{
#ifdef HAVE_RB_IO_CLOSED_P
    return RTEST(rb_io_closed_p(io));
#else
    rb_io_t *fptr = RFILE(io)->fptr;
    return !fptr || fptr->fd < 0;
#endif
}

/* nil -> -1 (wait forever); Numeric seconds >= 0 otherwise, capped at 1e9
 * (no limit, in practice; wait.c's timespec conversion needs a bound). */
double
hio_timeout_arg(VALUE t, const char *what)
{
    double d;

    if (NIL_P(t)) return -1.0;
    if (!rb_obj_is_kind_of(t, rb_cNumeric))
        rb_raise(rb_eTypeError, "%s: timeout must be Numeric or nil, got %s", what, rb_obj_classname(t));
    d = NUM2DBL(t);
    if (d != d || d < 0) rb_raise(rb_eArgError, "%s: timeout must be >= 0", what);
    if (d > 1e9) d = 1e9;
    return d;
}

/* each_completion's timeout_ms: nil -> -1 (no limit); an Integer or Float
 * of milliseconds >= 0 otherwise, in seconds, capped as hio_timeout_arg. */
double
hio_timeout_ms_arg(VALUE v)
{
    double ms;

    if (NIL_P(v)) return -1.0;
    if (!RB_INTEGER_TYPE_P(v) && !RB_FLOAT_TYPE_P(v))
        rb_raise(rb_eTypeError, "timeout_ms must be Numeric or nil, got %s", rb_obj_classname(v));
    ms = NUM2DBL(v);
    if (ms != ms || ms < 0) rb_raise(rb_eArgError, "timeout_ms must be >= 0");
    return ms > 1e12 ? 1e9 : ms / 1000.0;
}

/* A ring's queue_depth: an Integer in 1..HIO_MAX_QUEUE_DEPTH. */
unsigned
hio_depth_arg(VALUE v, const char *what)
{
    long d;

    if (!RB_INTEGER_TYPE_P(v))
        rb_raise(rb_eTypeError, "%s must be an Integer, got %s", what, rb_obj_classname(v));
    if (!FIXNUM_P(v)) rb_raise(rb_eArgError, "%s must be in 1..%u", what, HIO_MAX_QUEUE_DEPTH);
    d = FIX2LONG(v);
    if (d < 1 || d > (long)HIO_MAX_QUEUE_DEPTH)
        rb_raise(rb_eArgError, "%s must be in 1..%u (got %ld)", what, HIO_MAX_QUEUE_DEPTH, d);
    return (unsigned)d;
}

/* An Integer in lo..hi (a power of two when pow2). */
unsigned
hio_uint_arg(VALUE v, const char *what, unsigned lo, unsigned hi, int pow2)
{
    long n;

    if (!RB_INTEGER_TYPE_P(v)) rb_raise(rb_eTypeError, "%s must be an Integer, got %s", what, rb_obj_classname(v));
    n = FIXNUM_P(v) ? FIX2LONG(v) : -1;
    if (n < (long)lo || n > (long)hi || (pow2 && (n & (n - 1))))
        rb_raise(rb_eArgError, "%s must be %sin %u..%u (got %"PRIsVALUE")", what,
                 pow2 ? "a power of two " : "", lo, hi, v);
    return (unsigned)n;
}

/* A Fiddle::Pointer (without loading Fiddle: no pointer exists unless it is). */
static int
args_fiddle_pointer_p(VALUE v)
{
    ID id_fiddle = rb_intern("Fiddle"), id_pointer = rb_intern("Pointer");
    VALUE fiddle, pointer;

    if (!rb_const_defined(rb_cObject, id_fiddle)) return 0;
    fiddle = rb_const_get(rb_cObject, id_fiddle);
    if (!RB_TYPE_P(fiddle, T_MODULE) || !rb_const_defined(fiddle, id_pointer)) return 0;
    pointer = rb_const_get(fiddle, id_pointer);
    return RB_TYPE_P(pointer, T_CLASS) && RTEST(rb_obj_is_kind_of(v, pointer));
}

/* Upstream's legacy submit_send(fd, iov_ptr, iov_count): the address of
 * iov_count (0..IOV_MAX) struct iovec, a Fiddle::Pointer or an Integer and
 * nothing else (no #to_i: a String would be read as an address). What a
 * raw address points at cannot be checked; a Fiddle::Pointer of known size
 * at least covers the iovecs. */
const struct iovec *
hio_iov_arg(VALUE ptr, VALUE count, const char *what, unsigned *iovcnt)
{
    VALUE addr;
    long cnt;

    if (!RB_INTEGER_TYPE_P(count)) rb_raise(rb_eTypeError, "iov_count must be an Integer");
    cnt = NUM2LONG(count);
    if (cnt < 0 || cnt > IOV_MAX) rb_raise(rb_eArgError, "iov_count must be in 0..%d (got %ld)", IOV_MAX, cnt);
    if (RB_INTEGER_TYPE_P(ptr)) {
        addr = ptr;
    } else if (args_fiddle_pointer_p(ptr)) {
        VALUE size = rb_funcall(ptr, rb_intern("size"), 0);
        addr = rb_funcall(ptr, rb_intern("to_i"), 0);
        if (RB_INTEGER_TYPE_P(size) && NUM2LL(size) > 0 && NUM2LL(size) < cnt * (long long)sizeof(struct iovec))
            rb_raise(rb_eArgError, "%s: %ld iovecs need %ld bytes, the pointer has %lld", what, cnt,
                     cnt * (long)sizeof(struct iovec), NUM2LL(size));
    } else {
        rb_raise(rb_eTypeError, "%s: iov_ptr must be a Fiddle::Pointer or an Integer address, got %s", what,
                 rb_obj_classname(ptr));
    }
    if (FIXNUM_P(addr) ? FIX2LONG(addr) < 0 : RB_INTEGER_TYPE_P(addr) && RBIGNUM_NEGATIVE_P(addr))
        rb_raise(rb_eArgError, "%s: negative iov pointer", what);
    if (cnt > 0 && NUM2ULL(addr) == 0) rb_raise(rb_eArgError, "%s: NULL iov pointer", what);
    *iovcnt = (unsigned)cnt;
    return (const struct iovec *)(uintptr_t)NUM2ULL(addr);
}
