/*
 * ring_class.c: Ruby binding of Hyperion::IOUring::Ring.
 *
 * Turns Ruby arguments into a struct hio_sreq for ring.c and the result back
 * into Ruby values. Never blocks by itself: ring.c waits through wait.c.
 */
#include "hyperion_io_uring.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>

VALUE hio_cRing;
static ID id_queue_depth, id_timeout, id_max;
static VALUE sym_wouldblock;

/* ---- TypedData ---- */

static void
ringc_mark(void *p)
{
    struct hio_sring *x = p;
    if (x->sched_io) rb_gc_mark(x->sched_io);
}

static void
ringc_free(void *p)
{
    hio_sring_close((struct hio_sring *)p);
    ruby_xfree(p);
}

static size_t
ringc_memsize(const void *p)
{
    const struct hio_sring *r = p;
    size_t sz = sizeof(*r) + r->buf_cap;
    if (r->inited) {
        sz += (size_t)r->uring.sq.ring_sz + (size_t)r->uring.cq.ring_sz;
        /* ring_entries, not *kring_entries: that one lives in the ring
         * mapping, which a forked child lacks (io_uring_ring_dontfork), so
         * ObjectSpace.memsize_of crashed there. */
        sz += (size_t)r->uring.sq.ring_entries * sizeof(struct io_uring_sqe);
    }
    return sz;
}

static const rb_data_type_t ringc_type = {
    "Hyperion::IOUring::Ring",
    { ringc_mark, ringc_free, ringc_memsize, },
    0, 0,
    RUBY_TYPED_FREE_IMMEDIATELY,
};

static VALUE
ringc_alloc(VALUE klass)
{
    struct hio_sring *r;
    VALUE obj = TypedData_Make_Struct(klass, struct hio_sring, &ringc_type, r);
    r->uring.ring_fd = -1; /* safe to free before initialize ran */
    return obj;
}

static struct hio_sring *
ringc_get(VALUE self)
{
    struct hio_sring *r;
    TypedData_Get_Struct(self, struct hio_sring, &ringc_type, r);
    return r;
}

/* The ring the caller may use now, or an exception saying why not. */
static struct hio_sring *
ringc_usable(VALUE self)
{
    struct hio_sring *r = ringc_get(self);

    if (!r->inited) hio_raise_closed();
    hio_owner_check(&r->owner, "Hyperion::IOUring::Ring");
    if (r->busy)
        rb_raise(hio_eError, "Ring busy: another fiber is waiting in accept or read on it; "
                             "use one ring per fiber (Hyperion::IOUring.fiber_ring)");
    if (r->wedged)
        rb_raise(hio_eRingError, "ring wedged: a request could not be cancelled; close it and open a new one");
    return r;
}

/* In a forked child only close and closed? may touch the parent's ring;
 * the read-only accessors (fileno, stats) stay usable from other threads. */
static void
ringc_check_fork(const struct hio_sring *r)
{
    if (r->inited && hio_owner_forked(&r->owner))
        hio_owner_check(&r->owner, "Hyperion::IOUring::Ring");
}

/* ---- Methods ---- */

/*
 * call-seq:
 *   Ring.new(queue_depth: 256) -> ring
 *
 * Opens an io_uring of +queue_depth+ entries (1..32768) for the calling
 * thread. Raises ArgumentError or TypeError for a bad depth,
 * Hyperion::IOUring::Unsupported (with the reason) when the host cannot use
 * io_uring, and Errno::* when io_uring_setup fails.
 */
static VALUE
ringc_initialize(int argc, VALUE *argv, VALUE self)
{
    struct hio_sring *r = ringc_get(self);
    VALUE opts, kw[1] = { Qundef };
    unsigned depth = 256;
    int ret;

    rb_scan_args(argc, argv, "0:", &opts);
    if (!NIL_P(opts)) rb_get_kwargs(opts, &id_queue_depth, 0, 1, kw);
    if (kw[0] != Qundef) depth = hio_depth_arg(kw[0], "queue_depth");
    if (r->inited) rb_raise(rb_eRuntimeError, "ring already initialized");
    hio_require_supported("io_uring", "supported?", "unsupported_reason");
    ret = hio_sring_open(r, depth);
    if (ret < 0) hio_raise_errno(ret, "io_uring_setup(queue_depth: %u)", depth);
    return self;
}

/* Runs req on the ring; returns :wouldblock or raises when it did not
 * complete, Qundef when req->res is its result. */
static VALUE
ringc_run(struct hio_sring *r, struct hio_sreq *req, const char *what)
{
    struct hio_wait w;

    hio_sring_begin(r, req, &w);
    hio_wait_ruby(&w, &r->sched_io);
    if (req->fatal) hio_raise_errno(req->fatal, "io_uring_enter(%s fd %d)", what, req->fd);
    if (r->wedged) rb_raise(hio_eRingError, "ring wedged: %s on fd %d could not be cancelled", what, req->fd);
    if (!req->done) return sym_wouldblock; /* timed out, request cancelled */
    return Qundef;
}

/*
 * call-seq:
 *   ring.accept(listener, timeout: nil) -> Integer or :wouldblock
 *
 * Accepts one connection on +listener+ (an Integer fd or an IO) and returns
 * the client fd, close-on-exec set. Waits in io_uring_enter with the GVL
 * released; Thread#raise, Timeout and signals interrupt it, and the request
 * is cancelled and reaped before the exception leaves. +timeout+ (seconds)
 * bounds the wait and gives :wouldblock when it passes. ECONNABORTED and
 * ECANCELED also give :wouldblock, as upstream; a bad fd, a non-socket or a
 * socket that is not listening raises Errno::* (a loop never spins on them).
 */
static VALUE
ringc_accept(int argc, VALUE *argv, VALUE self)
{
    struct hio_sring *r;
    struct hio_sreq req;
    VALUE listener, opts, kw[1] = { Qundef }, res;
    double timeout = -1.0;

    rb_scan_args(argc, argv, "1:", &listener, &opts);
    if (!NIL_P(opts)) rb_get_kwargs(opts, &id_timeout, 0, 1, kw);
    if (kw[0] != Qundef) timeout = hio_timeout_arg(kw[0], "accept");
    memset(&req, 0, sizeof(req));
    req.fd = hio_fd_arg(listener, "accept");
    r = ringc_usable(self);
    req.kind = HIO_SREQ_ACCEPT;
    req.deadline = timeout < 0 ? -1.0 : hio_now() + timeout;
    res = ringc_run(r, &req, "accept");
    if (res != Qundef) return res;
    if (req.res >= 0) return INT2FIX(req.res);
    switch (-req.res) {
      case EAGAIN: case EINTR: case ECONNABORTED: case ECANCELED:
        return sym_wouldblock;
      default:
        hio_raise_errno(req.res, "io_uring accept(fd %d)", req.fd);
    }
    UNREACHABLE_RETURN(Qnil);
}

/*
 * call-seq:
 *   ring.read(fd, max: 4096, timeout: nil) -> String, "" or :wouldblock
 *
 * Reads up to +max+ bytes (1..16 MiB) from +fd+ (an Integer or an IO) into
 * a new binary String; "" means end of file. Waits on O_NONBLOCK sockets and
 * pipes, with the GVL released, until data arrives or +timeout+ seconds pass
 * (then :wouldblock). The kernel reads into memory the ring owns, never into
 * a Ruby object, so an interrupted read can never write into freed memory.
 * Errors raise Errno::* naming the fd.
 */
static VALUE
ringc_read(int argc, VALUE *argv, VALUE self)
{
    static ID kw_ids[2];
    struct hio_sring *r;
    struct hio_sreq req;
    VALUE fdv, opts, kw[2] = { Qundef, Qundef }, res;
    double timeout = -1.0;
    long max = 4096;
    int ret;

    if (!kw_ids[0]) { kw_ids[0] = id_max; kw_ids[1] = id_timeout; }
    rb_scan_args(argc, argv, "1:", &fdv, &opts);
    if (!NIL_P(opts)) rb_get_kwargs(opts, kw_ids, 0, 2, kw);
    if (kw[0] != Qundef) {
        if (!RB_INTEGER_TYPE_P(kw[0]))
            rb_raise(rb_eTypeError, "read: max must be an Integer, got %s", rb_obj_classname(kw[0]));
        if (!FIXNUM_P(kw[0]) || FIX2LONG(kw[0]) < 1 || FIX2LONG(kw[0]) > (long)HIO_MAX_READ)
            rb_raise(rb_eArgError, "read: max must be in 1..%u", HIO_MAX_READ);
        max = FIX2LONG(kw[0]);
    }
    if (kw[1] != Qundef) timeout = hio_timeout_arg(kw[1], "read");
    memset(&req, 0, sizeof(req));
    req.fd = hio_fd_arg(fdv, "read");
    r = ringc_usable(self);
    ret = hio_sring_reserve(r, (size_t)max);
    if (ret < 0) hio_raise_errno(ret, "read: buffer of %ld bytes", max);
    req.kind = HIO_SREQ_READ;
    req.len = (unsigned)max;
    req.deadline = timeout < 0 ? -1.0 : hio_now() + timeout;
    res = ringc_run(r, &req, "read");
    if (res != Qundef) return res;
    if (req.res > 0) HIO_MEM_DEFINED(r->buf, (size_t)req.res);
    if (req.res >= 0) return rb_str_new(r->buf, req.res); /* ASCII-8BIT */
    switch (-req.res) {
      case EAGAIN: case EINTR: case ECANCELED:
        return sym_wouldblock;
      default:
        hio_raise_errno(req.res, "io_uring read(fd %d)", req.fd);
    }
    UNREACHABLE_RETURN(Qnil);
}

/*
 * call-seq:
 *   ring.close -> nil
 *
 * Releases the ring's fd and memory. Idempotent. In a forked child it only
 * drops the child's reference: the parent's ring is never touched.
 */
static VALUE
ringc_close(VALUE self)
{
    struct hio_sring *r = ringc_get(self);

    if (r->inited && !hio_owner_forked(&r->owner) && hio_owner_other_thread(&r->owner))
        hio_owner_check(&r->owner, "Hyperion::IOUring::Ring");
    if (r->inited && r->busy && !hio_owner_forked(&r->owner))
        rb_raise(hio_eError, "cannot close a Ring while another fiber waits in accept or read on it "
                             "(stop that fiber first)");
    hio_sring_close(r);
    hio_sched_io_close(&r->sched_io);
    return Qnil;
}

/*
 * call-seq:
 *   ring.closed? -> true or false
 */
static VALUE
ringc_closed_p(VALUE self)
{
    return ringc_get(self)->inited ? Qfalse : Qtrue;
}

/*
 * call-seq:
 *   ring.fileno -> Integer or nil
 *
 * The io_uring fd (nil once closed). For diagnostics and fd-leak checks.
 */
static VALUE
ringc_fileno(VALUE self)
{
    struct hio_sring *r = ringc_get(self);
    ringc_check_fork(r);
    return r->inited ? INT2FIX(r->uring.ring_fd) : Qnil;
}

/*
 * call-seq:
 *   ring.stats -> Hash
 *
 * Counters: +:ops+ (requests submitted, EAGAIN poll steps included),
 * +:waits+ (io_uring_enter calls that may block: after a call of the same
 * kind had to wait, the next ones submit and wait in one enter),
 * +:cancels+ (requests cancelled by a timeout or an interrupt),
 * +:setup_flags+ (IORING_SETUP_* in force).
 */
static VALUE
ringc_stats(VALUE self)
{
    struct hio_sring *r = ringc_get(self);
    VALUE h;

    ringc_check_fork(r);
    h = rb_hash_new();
    rb_hash_aset(h, ID2SYM(rb_intern("ops")), ULL2NUM(r->ops));
    rb_hash_aset(h, ID2SYM(rb_intern("waits")), ULL2NUM(r->waits));
    rb_hash_aset(h, ID2SYM(rb_intern("cancels")), ULL2NUM(r->cancels));
    rb_hash_aset(h, ID2SYM(rb_intern("setup_flags")), UINT2NUM(r->flags));
    return h;
}

/*
 * call-seq:
 *   Ring.leaked_rings -> Integer
 *
 * How many rings of this process were closed (by #close or the GC) while
 * the kernel might still write into their read buffer, which was then
 * leaked rather than freed: a wedged ring, or one the GC collected while a
 * fiber was parked in its call. 0 in a healthy process.
 */
static VALUE
ringc_s_leaked_rings(VALUE klass)
{
    return ULONG2NUM(hio_sring_leaked_rings());
}

void
hio_init_ring_class(void)
{
    id_queue_depth = rb_intern("queue_depth");
    id_timeout = rb_intern("timeout");
    id_max = rb_intern("max");
    sym_wouldblock = ID2SYM(rb_intern("wouldblock"));

    hio_cRing = rb_define_class_under(hio_mIOUring, "Ring", rb_cObject);
    rb_define_const(hio_cRing, "DEFAULT_QUEUE_DEPTH", INT2FIX(256));
    rb_define_alloc_func(hio_cRing, ringc_alloc);
    rb_define_singleton_method(hio_cRing, "leaked_rings", ringc_s_leaked_rings, 0);
    rb_define_method(hio_cRing, "initialize", ringc_initialize, -1);
    rb_define_method(hio_cRing, "accept", ringc_accept, -1);
    rb_define_method(hio_cRing, "read", ringc_read, -1);
    rb_define_method(hio_cRing, "close", ringc_close, 0);
    rb_define_method(hio_cRing, "closed?", ringc_closed_p, 0);
    rb_define_method(hio_cRing, "fileno", ringc_fileno, 0);
    rb_define_method(hio_cRing, "stats", ringc_stats, 0);
}
