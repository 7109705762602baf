/*
 * ring_class.c: Ruby binding of Hyperion::IOUring::Ring.
 *
 * Layer: bindings. Calls ring.c's engine API (engine.h), wait.c's
 * hio_wait_ruby, errors.c and args.c.
 *
 * Turns Ruby arguments into a struct hio_sreq for ring.c and the result back
 * into Ruby values. Never decides how to wait: ring.c describes the wait,
 * wait.c runs it.
 */
#include "hyperion_io_uring.h"
#include "fdid.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

VALUE hio_cRing;
static ID id_queue_depth, id_timeout, id_max;
static VALUE sym_wouldblock;

#define RINGC_CLASS "Hyperion::IOUring::Ring"

/* ---- TypedData ---- */

/* What a Ring object holds: the engine (opaque) and the Ruby object it
 * waits through under a Fiber scheduler. */
struct ringc {
    struct hio_sring *r;
    VALUE sched_io;     /* IO of the eventfd for Fiber scheduler waits */
    VALUE owner_thread; /* the Thread that opened it (for #close once it ended) */
};

static void
ringc_mark(void *p)
{
    struct ringc *rc = p;
    if (rc->sched_io) rb_gc_mark(rc->sched_io);
    if (rc->owner_thread) rb_gc_mark(rc->owner_thread);
}

/* Never blocks: the engine's close only exits the ring (nothing is in
 * flight between calls) or, in a forked child, forgets it. */
static void
ringc_free(void *p)
{
    struct ringc *rc = p;
    if (rc->r) hio_sring_free(rc->r);
    ruby_xfree(rc);
}

static size_t
ringc_memsize(const void *p)
{
    const struct ringc *rc = p;
    return sizeof(*rc) + (rc->r ? hio_sring_memsize(rc->r) : 0);
}

static const rb_data_type_t ringc_type = {
    RINGC_CLASS,
    { ringc_mark, ringc_free, ringc_memsize, },
    0, 0,
    RUBY_TYPED_FREE_IMMEDIATELY,
};

static VALUE
ringc_alloc(VALUE klass)
{
    struct ringc *rc;
    VALUE obj = TypedData_Make_Struct(klass, struct ringc, &ringc_type, rc);

    rc->sched_io = Qnil;
    rc->owner_thread = Qnil;
    if (!(rc->r = hio_sring_new())) rb_memerror(); /* closed: safe to free before initialize ran */
    return obj;
}

static struct ringc *
ringc_get(VALUE self)
{
    struct ringc *rc;
    TypedData_Get_Struct(self, struct ringc, &ringc_type, rc);
    return rc;
}

/* The exception for why r may not be used now (hio_sring_may). */
NORETURN(static void ringc_refuse(const struct hio_sring *r, int why));

static void
ringc_refuse(const struct hio_sring *r, int why)
{
    switch (why) {
      case HIO_REFUSE_CLOSED:
        hio_raise_closed();
      case HIO_REFUSE_BUSY:
        rb_raise(hio_eError, "Ring busy: another fiber is waiting in accept or read on it; "
                             "use one ring per fiber (Hyperion::IOUring.fiber_ring)");
      case HIO_REFUSE_WEDGED:
        rb_raise(hio_eRingError, "ring wedged: a request could not be cancelled; close it and open a new one");
      default:
        hio_raise_owner(hio_sring_owner(r), (enum hio_owner_verdict)why, RINGC_CLASS);
    }
}

/* The ring the caller may use now, or an exception saying why not. */
static struct ringc *
ringc_usable(VALUE self)
{
    struct ringc *rc = ringc_get(self);
    int why = hio_sring_may(rc->r, HIO_USE_CALL);

    if (why) ringc_refuse(rc->r, why);
    return rc;
}

/* The read-only accessors (fileno, stats): from any thread, not in a
 * forked child. */
static struct hio_sring *
ringc_inspectable(VALUE self)
{
    struct hio_sring *r = ringc_get(self)->r;
    int why = hio_sring_may(r, HIO_USE_INSPECT);

    if (why && why != HIO_REFUSE_CLOSED) ringc_refuse(r, why);
    return r;
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
    struct hio_sring *r = ringc_get(self)->r;
    VALUE opts, kw[1] = { Qundef };
    unsigned depth = 256;
    int ret;

    rb_scan_args(argc, argv, "0:", &opts);
    if (!NIL_P(opts)) rb_get_kwargs(opts, &id_queue_depth, 0, 1, kw);
    if (kw[0] != Qundef) depth = hio_depth_arg(kw[0], "queue_depth");
    if (hio_sring_is_open(r)) rb_raise(rb_eRuntimeError, "ring already initialized");
    hio_require_supported("io_uring", "supported?", "unsupported_reason");
    ret = hio_sring_open(r, depth);
    if (ret < 0) hio_raise_errno(ret, "io_uring_setup(queue_depth: %u)", depth);
    RB_OBJ_WRITE(self, &ringc_get(self)->owner_thread, rb_thread_current());
    return self;
}

/* ---- A listener closed while accept waits ---- */

/*
 * Nothing tells a waiting accept that its listener was closed: Ruby's
 * IO#close interrupts only threads it knows to be blocked on that fd (an
 * io_uring wait is not one), and the kernel's request holds its own
 * reference to the socket, which stays bound and goes on accepting. So
 * while accept blocks, it wakes every RINGC_WATCH_EVERY seconds and looks:
 * an IO listener that is closed?, or a number that no longer names the
 * socket it named at the first of those looks (fstat: closed, or reused for
 * another file). Then the request is cancelled (the port is free once the kernel
 * drops its reference) and accept raises IOError or Errno::EBADF.
 */
#define RINGC_WATCH_EVERY 0.1

struct ringc_listener {
    VALUE io;        /* the IO given, or Qnil for an Integer fd */
    int fd;
    int looks;
    int have_id;
    struct hio_fdid id;
};

/* Whether the listener is gone, from what was noted so far: an IO closed,
 * or a number that no longer names the socket noted. */
static int
ringc_listener_gone(const struct ringc_listener *l)
{
    if (!NIL_P(l->io) && hio_io_closed(l->io)) return -EBADF;
    return l->have_id ? hio_fdid_check(l->fd, &l->id) : 0;
}

/* wait.c's watch: before each blocking wait (GVL held, never raises).
 * Which socket the number names is noted at the second look, after the
 * first slice, not before the wait: most accepts complete within a slice,
 * and an fstat per accept is a syscall more per connection. A number
 * closed in that first slice is seen then (fstat fails); one closed and
 * already reused for another file by then is not (the accept then waits
 * on the old socket, as it would without a watch), unless it is an IO,
 * whose close is seen at every look. */
static int
ringc_listener_check(void *arg)
{
    struct ringc_listener *l = arg;
    int gone = ringc_listener_gone(l);

    if (gone < 0 || l->looks++ == 0 || l->have_id) return gone;
    if (hio_fdid_get(l->fd, &l->id) < 0) return -EBADF;
    l->have_id = 1;
    return 0;
}

NORETURN(static void ringc_raise_listener_closed(const struct ringc_listener *l));

static void
ringc_raise_listener_closed(const struct ringc_listener *l)
{
    if (!NIL_P(l->io) && hio_io_closed(l->io))
        rb_raise(rb_eIOError, "accept: listener (fd %d) closed while accept waited", l->fd);
    rb_syserr_fail(EBADF, "accept: listener fd closed (or reused for another file) while accept waited");
}

/* Runs req on the ring; returns :wouldblock or raises when it did not
 * complete, Qundef when req->res is its result. With a listener, the wait
 * watches it (above). */
static VALUE
ringc_run(struct ringc *rc, struct hio_sreq *req, const char *what, struct ringc_listener *l)
{
    struct hio_wait w;

    hio_sring_begin(rc->r, req, &w);
    if (l) {
        w.watch.check = ringc_listener_check;
        w.watch.arg = l;
        w.watch.every = RINGC_WATCH_EVERY;
    }
    hio_wait_ruby(&w, &rc->sched_io);
    /* A connection that came after a wait that blocked: the listener may
     * have been closed since the last look, and the kernel's socket went
     * on accepting. Look once more; it is nobody's if the listener is gone. */
    if (l && w.watched && req->done && req->res >= 0 && ringc_listener_gone(l) < 0) {
        close(req->res);
        ringc_raise_listener_closed(l);
    }
    if ((req->fatal || req->wedged) && req->done && req->kind == HIO_SREQ_ACCEPT && req->res >= 0) {
        close(req->res); /* accepted, but the call raises: nobody would get it */
        req->done = 0;
    }
    if (req->fatal) hio_raise_errno(req->fatal, "io_uring_enter(%s fd %d)", what, req->fd);
    if (req->wedged) rb_raise(hio_eRingError, "ring wedged: %s on fd %d could not be cancelled", what, req->fd);
    if (w.watch_err) ringc_raise_listener_closed(l);
    if (!req->done) return sym_wouldblock; /* timed out, request cancelled */
    return Qundef;
}

/*
 * call-seq:
 *   ring.accept(listener, timeout: nil, nonblock: true) -> Integer or :wouldblock
 *
 * Accepts one connection on +listener+ (an Integer fd or an IO) and returns
 * the client fd, close-on-exec set and, like the sockets Ruby's own
 * TCPServer#accept returns, O_NONBLOCK set; nonblock: false leaves it
 * blocking (what accept4(2) gives without flags, and what earlier versions
 * returned). Waits in io_uring_enter with the GVL
 * released; Thread#raise, Timeout and signals interrupt it, and the request
 * is cancelled and reaped before the exception leaves. A connection the
 * kernel accepted as the exception came is not lost: the next accept on
 * the same listener (same fd number, same socket) returns it first, with
 * the mode that call asks for. Its client waits until then: a loop that
 * stops accepting on an exception should close the ring, which closes
 * those nobody accepted (at most 64 are kept per ring, the oldest closed
 * past that). stats[:kept_accepts] counts them.
 *
 * A listener closed elsewhere while accept waits (another thread, a trap
 * handler, another fiber) ends it within about 100 ms: the wait wakes every
 * 100 ms to look at the listener (IO#closed? for an IO; for any listener,
 * whether its fd number still names the socket it named when the wait
 * began). Then the request is cancelled, so the socket is released and the
 * port can be bound again, and accept raises IOError (an IO that is
 * closed) or Errno::EBADF (an fd closed, or reused for another file). A
 * client that connected in between is not returned: it is closed. +timeout+ (seconds)
 * bounds the wait and gives :wouldblock when it passes. ECONNABORTED and
 * ECANCELED also give :wouldblock, as upstream; a bad fd, a non-socket or a
 * socket that is not listening raises Errno::* (a loop never spins on them).
 */
static VALUE
ringc_accept(int argc, VALUE *argv, VALUE self)
{
    struct ringc *rc;
    struct hio_sreq req;
    static ID kw_ids[2];
    struct ringc_listener l;
    VALUE listener, opts, kw[2] = { Qundef, Qundef }, res;
    double timeout = -1.0;

    if (!kw_ids[0]) { kw_ids[0] = id_timeout; kw_ids[1] = rb_intern("nonblock"); }
    rb_scan_args(argc, argv, "1:", &listener, &opts);
    if (!NIL_P(opts)) rb_get_kwargs(opts, kw_ids, 0, 2, kw);
    if (kw[0] != Qundef) timeout = hio_timeout_arg(kw[0], "accept");
    memset(&req, 0, sizeof(req));
    req.fd = hio_fd_arg(listener, "accept");
    rc = ringc_usable(self);
    req.kind = HIO_SREQ_ACCEPT;
    req.flags = SOCK_CLOEXEC | (kw[1] == Qundef || RTEST(kw[1]) ? SOCK_NONBLOCK : 0);
    req.timeout = timeout;
    memset(&l, 0, sizeof(l));
    l.io = RB_TYPE_P(listener, T_FILE) ? listener : Qnil;
    l.fd = req.fd;
    res = ringc_run(rc, &req, "accept", &l);
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
 *
 * Nothing is lost to an interrupt: when Thread#raise, Timeout or a trap
 * that raises ends a read whose bytes the kernel had already taken from
 * the socket (the cancel came too late), the exception goes on and the
 * bytes are kept by the ring; the next #read of the same fd on this ring
 * returns them first (up to +max+ at a time), before anything newer. They
 * are dropped if the fd number names another file by then (closed and
 * reused), and when the ring is closed. stats[:kept_reads] counts them.
 */
static VALUE
ringc_read(int argc, VALUE *argv, VALUE self)
{
    static ID kw_ids[2];
    struct ringc *rc;
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
    rc = ringc_usable(self);
    ret = hio_sring_reserve(rc->r, (size_t)max);
    if (ret < 0) hio_raise_errno(ret, "read: buffer of %ld bytes", max);
    req.kind = HIO_SREQ_READ;
    req.len = (unsigned)max;
    req.timeout = timeout;
    res = ringc_run(rc, &req, "read", NULL);
    if (res != Qundef) return res;
    if (req.res >= 0) return rb_str_new(req.data, req.res); /* ASCII-8BIT */
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
 * drops the child's reference: the parent's ring is never touched. From
 * another thread: ThreadError while the thread that opened the ring is
 * alive; once that thread has ended, any thread may close it.
 */
static VALUE
ringc_close(VALUE self)
{
    struct ringc *rc = ringc_get(self);
    int why = hio_sring_may(rc->r, HIO_USE_CLOSE);

    if (why == HIO_OWNER_OTHER_THREAD && hio_owner_thread_ended(rc->owner_thread)) why = 0;
    if (why == HIO_REFUSE_BUSY)
        rb_raise(hio_eError, "cannot close a Ring while another fiber waits in accept or read on it "
                             "(stop that fiber first)");
    if (why && why != HIO_REFUSE_CLOSED) ringc_refuse(rc->r, why);
    hio_sring_close(rc->r);
    hio_sched_io_close(&rc->sched_io);
    rc->owner_thread = Qnil; /* only a close of an open ring asks it: let the Thread go */
    return Qnil;
}

/*
 * call-seq:
 *   ring.closed? -> true or false
 */
static VALUE
ringc_closed_p(VALUE self)
{
    return hio_sring_is_open(ringc_get(self)->r) ? Qfalse : Qtrue;
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
    struct hio_sring *r = ringc_inspectable(self);
    return hio_sring_is_open(r) ? INT2FIX(hio_sring_fd(r)) : Qnil;
}

/*
 * call-seq:
 *   ring.stats -> Hash
 *
 * Counters: +:ops+ (requests submitted, EAGAIN poll steps included),
 * +:waits+ (io_uring_enter calls that may block: after a call of the same
 * kind had to wait, the next ones submit and wait in one enter),
 * +:cancels+ (requests cancelled by a timeout or an interrupt),
 * +:kept_reads+ (reads whose data arrived as an interrupt ended them, kept
 * for the next #read of that fd), +:kept_accepts+ (connections accepted as
 * an interrupt ended the accept, kept for the next #accept on that
 * listener),
 * +:setup_flags+ (IORING_SETUP_* in force).
 */
static VALUE
ringc_stats(VALUE self)
{
    struct hio_sring_stats st;
    VALUE h;

    hio_sring_stats(ringc_inspectable(self), &st);
    h = rb_hash_new();
    rb_hash_aset(h, ID2SYM(rb_intern("ops")), ULL2NUM(st.ops));
    rb_hash_aset(h, ID2SYM(rb_intern("waits")), ULL2NUM(st.waits));
    rb_hash_aset(h, ID2SYM(rb_intern("cancels")), ULL2NUM(st.cancels));
    rb_hash_aset(h, ID2SYM(rb_intern("kept_reads")), ULL2NUM(st.kept_reads));
    rb_hash_aset(h, ID2SYM(rb_intern("kept_accepts")), ULL2NUM(st.kept_accepts));
    rb_hash_aset(h, ID2SYM(rb_intern("setup_flags")), UINT2NUM(st.setup_flags));
    return h;
}

/*
 * call-seq:
 *   Ring.leaked_rings -> Integer
 *
 * How many closed rings of this process (by #close or the GC) hold a read
 * buffer now that the kernel might still write: a wedged ring, or one the
 * GC collected while a fiber was parked in its call. The buffer is freed
 * once the owner thread's kernel task has exited (and in a forked child at
 * once), and the count goes down then: a gauge, 0 in a healthy process.
 * Releases what may be released before it counts.
 */
static VALUE
ringc_s_leaked_rings(VALUE klass)
{
    return ULONG2NUM(hio_sring_leaked_rings());
}

/*
 * call-seq:
 *   Ring.deferred_bytes -> Integer
 *
 * The bytes of the read buffers leaked_rings counts. Releases what may be
 * released before it counts.
 */
static VALUE
ringc_s_deferred_bytes(VALUE klass)
{
    return SIZET2NUM(hio_sring_deferred_bytes());
}

void
hio_init_ring_class(VALUE mIOUring)
{
    id_queue_depth = rb_intern("queue_depth");
    id_timeout = rb_intern("timeout");
    id_max = rb_intern("max");
    sym_wouldblock = ID2SYM(rb_intern("wouldblock"));

    hio_cRing = rb_define_class_under(mIOUring, "Ring", rb_cObject);
    rb_define_const(hio_cRing, "DEFAULT_QUEUE_DEPTH", INT2FIX(256));
    rb_define_alloc_func(hio_cRing, ringc_alloc);
    rb_define_singleton_method(hio_cRing, "leaked_rings", ringc_s_leaked_rings, 0);
    rb_define_singleton_method(hio_cRing, "deferred_bytes", ringc_s_deferred_bytes, 0);
    rb_define_method(hio_cRing, "initialize", ringc_initialize, -1);
    rb_define_method(hio_cRing, "accept", ringc_accept, -1);
    rb_define_method(hio_cRing, "read", ringc_read, -1);
    rb_define_method(hio_cRing, "close", ringc_close, 0);
    rb_define_method(hio_cRing, "closed?", ringc_closed_p, 0);
    rb_define_method(hio_cRing, "fileno", ringc_fileno, 0);
    rb_define_method(hio_cRing, "stats", ringc_stats, 0);
}
