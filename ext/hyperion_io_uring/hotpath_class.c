/*
 * hotpath_class.c: Ruby binding of Hyperion::IOUring::HotpathRing (its
 * buffer methods are in hotpath_buffers.c).
 *
 * Layer: bindings. Calls the hot path's engine API (engine.h: hotpath.c,
 * hp_queue.c, hp_probe.c), wait.c's hio_wait_ruby, errors.c and args.c.
 *
 * Argument checks and conversions only: hotpath.c does the work and
 * describes the waits, wait.c decides how to wait.
 */
#include "hotpath_class.h"
#include <errno.h>
#include <string.h>
#include <limits.h>
#include <sys/uio.h>

VALUE hio_cHotpathRing;
static ID id_queue_depth, id_n_bufs, id_buf_size;
static ID id_default_n_bufs, id_default_buf_size, id_default_send_buffer_limit;
static ID id_send_buffer_limit, id_connection_send_limit, id_close_timeout, id_timeout, id_send_completions,
    id_zero_copy_min, id_sendfile_min;
static VALUE sym_op_kind, sym_fd, sym_result, sym_buf_id, sym_flags, sym_all, sym_failures;

#define HP_MAX_BUF_SIZE (1024u * 1024u)
/* Frozen Strings of at least this many bytes are sent without a copy.
 * Smaller ones are copied (a slab chunk and a memcpy cost less than a pin
 * and its release); at this size a String's bytes are never embedded in
 * its object, on any Ruby (3.3's largest embedded String holds 640 bytes),
 * nor a substring's shared root. */
#define HP_BORROW_MIN 1024

/* ---- TypedData ---- */

static void
hpc_mark(void *p)
{
    struct hpc *hc = p;
    if (hc->sched_io) rb_gc_mark(hc->sched_io);
    if (hc->owner_thread) rb_gc_mark(hc->owner_thread);
}

/* The GC's close never blocks and never raises (hio_hp_close says what it
 * does with what the kernel still holds). */
static void
hpc_free(void *p)
{
    struct hpc *hc = p;

    if (hc->h) {
        hio_hp_close(hc->h, 1);
        hio_hp_free(hc->h);
    }
    ruby_xfree(hc);
}

static size_t
hpc_memsize(const void *p)
{
    const struct hpc *hc = p;
    return sizeof(*hc) + (hc->h ? hio_hp_memsize(hc->h) : 0);
}

const rb_data_type_t hio_hotpath_type = {
    HP_CLASS,
    { hpc_mark, hpc_free, hpc_memsize, },
    0, 0,
    RUBY_TYPED_FREE_IMMEDIATELY,
};

static VALUE
hpc_alloc(VALUE klass)
{
    struct hpc *hc;
    VALUE obj = TypedData_Make_Struct(klass, struct hpc, &hio_hotpath_type, hc);

    hc->sched_io = Qnil;
    hc->owner_thread = Qnil;
    if (!(hc->h = hio_hp_new())) rb_memerror(); /* not open: safe to free before initialize ran */
    return obj;
}

void
hio_hotpath_refuse(const struct hio_hotpath *h, int why)
{
    if (why == HIO_REFUSE_CLOSED) hio_raise_closed();
    hio_raise_owner(hio_hp_owner(h), (enum hio_owner_verdict)why, HP_CLASS);
}

/* ---- Methods ---- */

/* A byte limit: a positive Fixnum (up to 2**62 - 1: no machine holds more). */
static uint64_t
hpc_limit_arg(VALUE v, const char *what)
{
    if (!RB_INTEGER_TYPE_P(v)) rb_raise(rb_eTypeError, "%s must be an Integer, got %s", what, rb_obj_classname(v));
    if (!FIXNUM_P(v) || FIX2LONG(v) < 1)
        rb_raise(rb_eArgError, "%s must be in 1..%ld bytes (got %"PRIsVALUE")", what, FIXNUM_MAX, v);
    return (uint64_t)FIX2LONG(v);
}

/*
 * call-seq:
 *   HotpathRing.new(queue_depth: 1024, n_bufs: 512, buf_size: 8192, send_buffer_limit: 64 MiB, connection_send_limit: send_buffer_limit / 4, close_timeout: 60, send_completions: :all, zero_copy_min: nil, sendfile_min: nil) -> ring
 *
 * Opens a ring of +queue_depth+ SQEs (1..32768; the CQ is 4x larger, since
 * multishot requests complete many times per submission) with a provided-
 * buffer ring of +n_bufs+ buffers (a power of two, 1..32768) of +buf_size+
 * bytes (1..1 MiB). n_bufs and buf_size default to HYPERION_IO_URING_HOTPATH_BUFS
 * and HYPERION_IO_URING_HOTPATH_BUF_SIZE when set. n_bufs is the most the
 * ring uses: it publishes 64 to the kernel at first and more only when
 * recvs keep running dry, and gives the pages of buffers left unused for
 * a second back to the OS (stats[:buffers_wanted],
 * [:buffer_pages_resident]). Raises ArgumentError /
 * TypeError for bad values, Unsupported (with the reason) when
 * hotpath_supported? is false, Errno::* when setup fails.
 *
 * +send_buffer_limit+ bounds the bytes the ring holds for the copies of
 * queued and in-flight sends (#submit_send copies every payload until its
 * completion, and a client that does not read leaves them queued);
 * +connection_send_limit+ bounds them per fd, so that one such client
 * cannot use up the ring's budget for the others. Past either, #submit_send
 * raises SendBufferFull and queues nothing. Integers in 1..2**62-1;
 * send_buffer_limit defaults to HYPERION_IO_URING_SEND_BUFFER_LIMIT or
 * 64 MiB, connection_send_limit to a quarter of it (at least 1) and may not
 * exceed it. #queued_send_bytes and stats[:queued_send_bytes] say how much
 * is held.
 *
 * +close_timeout+ is #submit_close's deadline when it is given no
 * +timeout:+ (Numeric seconds, or nil for none): 60 s, like common
 * servers' send timeouts.
 *
 * +send_completions+ says which #submit_send completions #each_completion
 * yields: +:all+ (the default, upstream's contract: one OP_SEND completion
 * per call, with the length or -errno) or +:failures+ (only those with a
 * negative +result+: a send that went out in full ends silently). A server
 * that only reacts to failed sends saves a completion per response with
 * +:failures+; its steady state is then one completion per request.
 * Counters (stats[:sends], [:send_bytes]) count every send either way.
 *
 * +zero_copy_min+ (bytes, or nil: never, the default): frozen Strings sent
 * without a copy (BORROW_MIN bytes or more, see #submit_send) of at least
 * this size go as IORING_OP_SEND_ZC where the kernel has it (Linux 6.0+,
 * #zero_copy_supported?): the network stack reads the String's pages in
 * place instead of copying them into socket buffers, and the String stays
 * pinned until the kernel's notification that it is done. It pays for
 * large bodies sent through a real NIC; on loopback the kernel copies
 * anyway (stats[:zc_copied] counts the sends it copied after all), so it
 * only adds a completion per send there.
 *
 * +sendfile_min+ (bytes, or nil: never, the default): frozen Strings sent
 * without a copy (BORROW_MIN bytes or more) of at least this size go out
 * with sendfile(2) from a copy of the String in a sealed memfd, made at
 * the String's first such send and reused for the next ones: the kernel
 * sends the memfd's pages instead of copying the bytes into socket
 * buffers, which is most of the CPU a large response costs (on loopback
 * too, where zero_copy_min: cannot help). For bodies sent again and again
 * (a cached page, a static asset): a body sent once pays for the copy
 * and keeps its room until evicted. The ring keeps up to 16 such copies,
 * at most send_buffer_limit bytes of them in all (a budget of their own,
 * beside the send_buffer_limit of queued sends; each copy also keeps its
 * String alive, see HotpathRing.pinned_strings), until the ring closes or
 * a new body needs the room (the least recently sent one no send is using
 * goes). A forked child holds its copy of the memfds until it closes the
 * ring or the GC frees it. Only to a stream socket in O_NONBLOCK mode (as
 * accepted by the ring, and Ruby's own sockets): to anything else such a
 * String goes as any borrowed send, since a blocking socket's sendfile(2)
 * would wait for room with the GVL held. sendfile_min wins over
 * zero_copy_min for the Strings both apply to.
 * The send itself is a nonblocking sendfile(2) made when it reaches the
 * head of its fd's queue (inside #submit_send when nothing is queued
 * ahead of it); what the socket does not take at once waits for
 * writability in the ring. Completions, ordering, #cancel,
 * #submit_close's deadlines and the send limits are those of any send.
 * Like write(2), sendfile(2) to a connection the peer closed raises
 * SIGPIPE (it has no MSG_NOSIGNAL): Ruby's own handler ignores it, so only
 * a program that set trap("PIPE", "SYSTEM_DEFAULT") would die of it.
 * stats[:file_sends], [:body_files].
 */
static VALUE
hpc_initialize(int argc, VALUE *argv, VALUE self)
{
    static ID kw_ids[9];
    struct hio_hotpath *h = hpc_get(self)->h;
    VALUE opts, kw[9] = { Qundef, Qundef, Qundef, Qundef, Qundef, Qundef, Qundef, Qundef, Qundef },
          klass = rb_obj_class(self);
    uint64_t zc_min = 0, file_min = 0;
    enum hio_send_report report = HIO_SEND_REPORT_ALL;
    unsigned depth = 1024, n_bufs, buf_size;
    uint64_t send_limit, conn_limit;
    double close_timeout = HIO_DEFAULT_CLOSE_TIMEOUT;
    int ret;

    if (!kw_ids[0]) {
        kw_ids[0] = id_queue_depth;
        kw_ids[1] = id_n_bufs;
        kw_ids[2] = id_buf_size;
        kw_ids[3] = id_send_buffer_limit;
        kw_ids[4] = id_connection_send_limit;
        kw_ids[5] = id_close_timeout;
        kw_ids[6] = id_send_completions;
        kw_ids[7] = id_zero_copy_min;
        kw_ids[8] = id_sendfile_min;
    }
    rb_scan_args(argc, argv, "0:", &opts);
    if (!NIL_P(opts)) rb_get_kwargs(opts, kw_ids, 0, 9, kw);
    if (kw[0] != Qundef) depth = hio_depth_arg(kw[0], "queue_depth");
    if (kw[1] == Qundef) kw[1] = rb_respond_to(klass, id_default_n_bufs) ? rb_funcall(klass, id_default_n_bufs, 0) : INT2FIX(512);
    if (kw[2] == Qundef) kw[2] = rb_respond_to(klass, id_default_buf_size) ? rb_funcall(klass, id_default_buf_size, 0) : INT2FIX(8192);
    n_bufs = hio_uint_arg(kw[1], "n_bufs", 1, 32768, 1);
    buf_size = hio_uint_arg(kw[2], "buf_size", 1, HP_MAX_BUF_SIZE, 0);
    if (kw[3] == Qundef)
        kw[3] = rb_respond_to(klass, id_default_send_buffer_limit) ? rb_funcall(klass, id_default_send_buffer_limit, 0)
                                                                  : ULL2NUM(HIO_DEFAULT_SEND_LIMIT);
    send_limit = hpc_limit_arg(kw[3], "send_buffer_limit");
    if (kw[4] == Qundef) {
        conn_limit = send_limit / 4 ? send_limit / 4 : 1;
    } else {
        conn_limit = hpc_limit_arg(kw[4], "connection_send_limit");
        if (conn_limit > send_limit)
            rb_raise(rb_eArgError, "connection_send_limit (%llu) must not exceed send_buffer_limit (%llu)",
                     (unsigned long long)conn_limit, (unsigned long long)send_limit);
    }
    if (kw[5] != Qundef) close_timeout = hio_timeout_arg(kw[5], "close_timeout");
    if (kw[6] != Qundef && kw[6] != sym_all) {
        if (kw[6] != sym_failures)
            rb_raise(rb_eArgError, "send_completions must be :all or :failures (got %"PRIsVALUE")", rb_inspect(kw[6]));
        report = HIO_SEND_REPORT_FAILURES;
    }
    if (kw[7] != Qundef && !NIL_P(kw[7])) zc_min = hpc_limit_arg(kw[7], "zero_copy_min");
    if (kw[8] != Qundef && !NIL_P(kw[8])) file_min = hpc_limit_arg(kw[8], "sendfile_min");
    if (hio_hp_was_opened(h)) rb_raise(rb_eRuntimeError, "ring already initialized");
    hio_require_supported("io_uring hotpath", "hotpath_supported?", "hotpath_unsupported_reason");
    ret = hio_hp_open(h, depth, n_bufs, buf_size);
    if (ret < 0)
        hio_raise_errno(ret, "%s(queue_depth: %u, n_bufs: %u, buf_size: %u)", hio_hp_open_error(h), depth, n_bufs,
                        buf_size);
    RB_OBJ_WRITE(self, &hpc_get(self)->owner_thread, rb_thread_current());
    hio_hp_set_send_limits(h, send_limit, conn_limit);
    hio_hp_set_close_timeout(h, close_timeout);
    hio_hp_set_send_report(h, report);
    hio_hp_set_zero_copy_min(h, (size_t)zc_min);
    hio_hp_set_sendfile_min(h, (size_t)file_min);
    return self;
}

/*
 * call-seq:
 *   ring.zero_copy_min -> Integer or nil
 *
 * The +zero_copy_min+ the ring was made with (nil: zero-copy sends off).
 */
static VALUE
hpc_zero_copy_min(VALUE self)
{
    size_t min = hio_hp_zero_copy_min(hpc_get(self)->h);
    return min ? SIZET2NUM(min) : Qnil;
}

/*
 * call-seq:
 *   ring.sendfile_min -> Integer or nil
 *
 * The +sendfile_min+ the ring was made with (nil: off; also nil where the
 * C library has no memfd_create).
 */
static VALUE
hpc_sendfile_min(VALUE self)
{
    size_t min = hio_hp_sendfile_min(hpc_get(self)->h);
    return min ? SIZET2NUM(min) : Qnil;
}

/*
 * call-seq:
 *   ring.zero_copy_supported? -> true or false
 *
 * Whether this ring's kernel has IORING_OP_SEND_ZC (Linux 6.0+; false with
 * HYPERION_IO_URING_SEND_ZC=0 in the environment when the ring was made).
 * Without it +zero_copy_min+ is accepted and sends are plain ones. IOError
 * on a closed ring.
 */
static VALUE
hpc_zero_copy_supported_p(VALUE self)
{
    return hio_hp_zero_copy_supported(hpc_usable(self)->h) ? Qtrue : Qfalse;
}

/*
 * call-seq:
 *   ring.send_completions -> :all or :failures
 *
 * Which send completions #each_completion yields (see HotpathRing.new).
 */
static VALUE
hpc_send_completions(VALUE self)
{
    return hio_hp_send_report(hpc_get(self)->h) == HIO_SEND_REPORT_FAILURES ? sym_failures : sym_all;
}

/* SendBufferFull for the send h just refused with -ENOBUFS. */
static void
hpc_raise_send_buffer_full(struct hio_hotpath *h, const char *what)
{
    struct hio_send_refusal r;

    hio_hp_send_refusal(h, &r);
    if (r.which == HIO_LIMIT_CONNECTION)
        rb_raise(hio_eSendBufferFull,
                 "%s: fd %d holds %llu bytes of queued sends; %llu more would pass connection_send_limit "
                 "(%llu bytes)", what, r.fd, (unsigned long long)r.held, (unsigned long long)r.len,
                 (unsigned long long)r.limit);
    rb_raise(hio_eSendBufferFull,
             "%s: the ring holds %llu bytes of queued sends; %llu more for fd %d would pass send_buffer_limit "
             "(%llu bytes)", what, (unsigned long long)r.held, (unsigned long long)r.len, r.fd,
             (unsigned long long)r.limit);
}

static void
hpc_check_submit(int ret, const char *what, int fd)
{
    if (ret == 0) return;
    if (ret == -EBADF) rb_raise(rb_eArgError, "%s: fd %d is not open", what, fd);
    if (ret == -ESHUTDOWN)
        rb_raise(rb_eIOError, "%s: fd %d is being closed (submit_close was called for it)", what, fd);
    if (ret == -EALREADY) rb_raise(rb_eIOError, "%s: fd %d is already being closed", what, fd);
    hio_raise_errno(ret, "%s(fd %d)", what, fd);
}

/* A method that takes one fd (an Integer or an IO) and hands it to op. */
static VALUE
hpc_fd_call(VALUE self, VALUE fdv, const char *what, int (*op)(struct hio_hotpath *, int))
{
    int fd = hio_fd_arg(fdv, what);
    struct hio_hotpath *h = hpc_usable(self)->h;

    hpc_check_submit(op(h, fd), what, fd);
    return Qnil;
}

/*
 * call-seq:
 *   ring.submit_accept_multishot(listener) -> nil
 *
 * Arms a multishot accept on +listener+ (Integer fd or IO): every
 * connection arrives as an OP_ACCEPT completion whose +result+ is the new fd
 * (close-on-exec). Queued; sent to the kernel with the next wait or #flush.
 * Arming a listener that is already armed does nothing. The accept re-arms
 * itself after a transient end; a final error (EINVAL, EBADF, ENOTSOCK)
 * arrives as a completion with a negative +result+.
 */
static VALUE
hpc_submit_accept(VALUE self, VALUE listener)
{
    return hpc_fd_call(self, listener, "submit_accept_multishot", hio_hp_submit_accept);
}

/*
 * call-seq:
 *   ring.submit_recv_multishot(fd) -> nil
 *
 * Arms a multishot recv on +fd+ into the buffer ring: data arrives as
 * OP_RECV completions (+result+ bytes in buffer +buf_id+, which Ruby holds
 * until #release_buffer), +result+ 0 at EOF, negative on error. When the
 * buffers run out the recv is parked and re-armed as buffers come back;
 * no byte is lost and ENOBUFS is never reported as EOF.
 */
static VALUE
hpc_submit_recv(VALUE self, VALUE fdv)
{
    return hpc_fd_call(self, fdv, "submit_recv_multishot", hio_hp_submit_recv);
}

/*
 * call-seq:
 *   ring.submit_send(fd, data) -> nil
 *   ring.submit_send(fd, iov_ptr, iov_count) -> nil
 *
 * Queues a send of +data+ (a String) with MSG_NOSIGNAL (a sendfile_min
 * send has no such flag: see HotpathRing.new). Its bytes are
 * copied into ring-owned memory, so the String may change or die at once;
 * except a frozen String of BORROW_MIN (1024) bytes or more, which is sent
 * without a copy: the ring keeps it alive and pinned (never moved by
 * GC.compact) until the kernel is done with it (stats[:borrowed_sends]
 * counts those). A
 * short send is continued by the ring; exactly one OP_SEND completion
 * arrives per call, with the total length or -errno (with
 * <tt>send_completions: :failures</tt>, only when it failed). Sends on one
 * fd go out in order.
 *
 * The copies count against the ring's +send_buffer_limit+ and the fd's
 * +connection_send_limit+ (see HotpathRing.new) until their completions:
 * a send that would pass either raises Hyperion::IOUring::SendBufferFull
 * (the message names the fd, the limit and the bytes), queues nothing and
 * yields no completion; stats[:send_buffer_full] counts them. The C entry
 * point returns -ENOBUFS instead.
 *
 * The three-argument form is upstream's legacy one: +iov_ptr+ is the
 * address of +iov_count+ (0..IOV_MAX) <tt>struct iovec</tt>, a
 * Fiddle::Pointer or an Integer (anything else is a TypeError); their bytes
 * are copied before this returns. The memory is not checked beyond a
 * Fiddle::Pointer's size: a bad address is the caller's crash.
 */
static VALUE
hpc_submit_send(int argc, VALUE *argv, VALUE self)
{
    struct hio_hotpath *h;
    VALUE fdv, data, count;
    int fd, ret;

    rb_scan_args(argc, argv, "21", &fdv, &data, &count);
    fd = hio_fd_arg(fdv, "submit_send");
    if (NIL_P(count)) {
        StringValue(data);
        h = hpc_usable(self)->h;
        if (OBJ_FROZEN(data) && RSTRING_LEN(data) >= HP_BORROW_MIN)
            ret = hio_hp_submit_send_borrowed(h, fd, RSTRING_PTR(data), (size_t)RSTRING_LEN(data), hio_pin(data));
        else
            ret = hio_hp_submit_send(h, fd, RSTRING_PTR(data), (size_t)RSTRING_LEN(data));
        RB_GC_GUARD(data);
    } else {
        unsigned iovcnt;
        const struct iovec *iov = hio_iov_arg(data, count, "submit_send", &iovcnt);
        h = hpc_usable(self)->h;
        ret = hio_hp_submit_sendv(h, fd, iov, iovcnt);
    }
    if (ret == -ENOBUFS) hpc_raise_send_buffer_full(h, "submit_send");
    hpc_check_submit(ret, "submit_send", fd);
    return Qnil;
}

/*
 * call-seq:
 *   ring.queued_send_bytes(fd) -> Integer
 *
 * Bytes of #submit_send copies the ring holds for +fd+ (an Integer or an
 * IO) now: sends queued or in flight, freed at each one's completion. It
 * grows while the client does not read; a server can stop reading from a
 * client over its own high-water mark (examples/hello_server.rb) well before
 * connection_send_limit makes #submit_send raise SendBufferFull. 0 for a fd
 * the ring has no sends for, and on a closed ring.
 * stats[:queued_send_bytes] is the ring's total.
 */
static VALUE
hpc_queued_send_bytes(VALUE self, VALUE fdv)
{
    int fd = hio_fd_arg(fdv, "queued_send_bytes");
    struct hio_hotpath *h = hpc_get(self)->h;

    return ULL2NUM(hio_hp_is_open(h) ? (unsigned long long)hio_hp_queued_send_bytes(h, fd) : 0ull);
}

struct hpc_each {
    VALUE self;
    struct hpc *hc;
    unsigned want;
    unsigned min_wait_us;
    double timeout;
    int raw;
    long yielded;
};

static VALUE
hpc_each_body(VALUE arg)
{
    struct hpc_each *e = (struct hpc_each *)arg;
    struct hio_hotpath *h = e->hc->h;
    struct hio_completion c;
    struct hio_wait w;
    unsigned limit;
    int ret;

    hio_hp_wait_plan(h, &w, e->want, e->timeout, e->min_wait_us, HIO_WAIT_RUBY);
    ret = hio_wait_ruby(&w, &e->hc->sched_io);
    if (ret < 0) hio_raise_errno(ret, "io_uring_enter(each_completion)");
    /* Yield what is queued now (not what the block queues meanwhile). Each
     * completion leaves the queue before its block runs: an exception in the
     * block loses none of the others. */
    limit = hio_hp_queued(h);
    /* A ring closed meanwhile has nothing queued: pop ends the loop. */
    while (limit-- > 0 && hio_hp_pop(h, &c)) {
        e->yielded++;
        if (e->raw) {
            rb_yield_values(5, INT2FIX(c.op_kind), INT2FIX(c.fd), LL2NUM(c.result), INT2FIX(c.buf_id),
                            UINT2NUM(c.flags));
        } else {
            VALUE hash = rb_hash_new();
            rb_hash_aset(hash, sym_op_kind, INT2FIX(c.op_kind));
            rb_hash_aset(hash, sym_fd, INT2FIX(c.fd));
            rb_hash_aset(hash, sym_result, LL2NUM(c.result));
            rb_hash_aset(hash, sym_buf_id, INT2FIX(c.buf_id));
            rb_hash_aset(hash, sym_flags, UINT2NUM(c.flags));
            rb_yield(hash);
        }
    }
    return Qnil;
}

static VALUE
hpc_each_ensure(VALUE arg)
{
    ((struct hpc_each *)arg)->hc->in_each = 0;
    return Qnil;
}

/*
 * The body of #each_completion (lib/hyperion/io_uring/hotpath_ring.rb):
 * the keywords arrive as positional arguments, because a C method that
 * takes keywords gets them in a new Hash on every call, and a busy server
 * calls this once per batch, an idle one once per request.
 */
static VALUE
hpc_each_completion(VALUE self, VALUE min_complete, VALUE timeout_ms, VALUE raw, VALUE min_wait_us)
{
    struct hpc_each e;

    memset(&e, 0, sizeof(e));
    e.want = hio_uint_arg(min_complete, "min_complete", 0, 65536, 0);
    e.timeout = hio_timeout_ms_arg(timeout_ms);
    e.raw = RTEST(raw);
    /* Up to 1 s: a batch wait is meant to be short (the kernel takes a u32). */
    if (!NIL_P(min_wait_us)) e.min_wait_us = hio_uint_arg(min_wait_us, "min_wait_us", 0, 1000000, 0);
    rb_need_block();
    e.self = self;
    e.hc = hpc_usable(self);
    if (e.hc->in_each)
        rb_raise(hio_eError, "each_completion is not reentrant (called from its own block, or from "
                             "another fiber while it waits under the Fiber scheduler)");
    e.hc->in_each = 1;
    rb_ensure(hpc_each_body, (VALUE)&e, hpc_each_ensure, (VALUE)&e);
    return LONG2NUM(e.yielded);
}

/*
 * call-seq:
 *   ring.cancel(fd) -> nil
 *
 * Cancels +fd+'s multishot recv (or accept) and its pending sends; call it
 * before closing the fd (or use #submit_close). Their final completions
 * arrive with -ECANCELED (a send that finished first reports its length).
 * After #submit_close it cancels the sends the close waits for; the close
 * then follows at once.
 */
static VALUE
hpc_cancel(VALUE self, VALUE fdv)
{
    return hpc_fd_call(self, fdv, "cancel", hio_hp_cancel);
}

/*
 * call-seq:
 *   ring.submit_close(fd) -> nil
 *   ring.submit_close(fd, timeout: seconds) -> nil
 *
 * Closes the Integer +fd+ through the ring, in place of
 * <tt>ring.cancel(fd); IO.for_fd(fd).close</tt> and without a syscall of
 * its own: the close goes to the kernel with the next #each_completion or
 * #flush.
 *
 * The fd's multishot recv (or accept) is cancelled at once, as by #cancel:
 * its final completion arrives with -ECANCELED. Sends already queued on the
 * fd with #submit_send still go out, in order, each with its OP_SEND
 * completion; the fd is closed after the last of them ended (sent, failed
 * or cancelled by #cancel). A close that succeeds yields nothing; one that
 * fails yields an OP_CLOSE completion with -errno as +result+ (-EBADF for a
 * number that is not open). stats[:closes] counts the closes made.
 *
 * Until the close has gone to the kernel the number is still the
 * connection's: #submit_send, #submit_recv_multishot and
 * #submit_accept_multishot on it raise IOError, and so does a second
 * submit_close. After that the number is closed: those calls raise
 * ArgumentError ("not open") as for any closed fd, or, once something else
 * got the number (an accept of this ring, a socket opened elsewhere), work
 * on that. A submit_close of a number whose first close has run closes
 * whatever the number names then, as close(2) twice would. Do not close
 * the fd yourself as well: that is a double close too. (While the close
 * waits for sends, the ring notices: the number is checked before the
 * close goes out, and one that names another socket by then is left alone,
 * with an OP_CLOSE -EBADF.)
 *
 * +timeout+ (Numeric seconds, or nil for none; default: the ring's
 * +close_timeout+, 60 s) is how long the close waits for those sends: at
 * the deadline the sends still queued are cancelled (their OP_SEND
 * completions come with -ECANCELED) and the fd is closed, as by #cancel;
 * stats[:close_timeouts] counts it. The deadline bounds the ring's waits,
 * so it fires while #each_completion waits with nothing else happening
 * (within a few milliseconds; it is checked when the ring reaps, so a
 * server that never waits on the ring never closes). A peer that never
 * reads holds its connection for at most +timeout+. 0 cancels the sends at
 * the next wait or #flush.
 *
 * An IO is a TypeError: the IO would close the number again later, when it
 * may name another connection; close the IO itself. ArgumentError for a
 * negative fd and for the ring's own (#fileno). Closing the ring (#close,
 * or the GC) still closes every fd given to submit_close: one the kernel
 * did not get yet, or one still waiting for sends (which #close cancels),
 * is closed with close(2).
 *
 *   ring.submit_send(fd, response)
 *   ring.submit_close(fd) # the response goes out first
 */
static VALUE
hpc_submit_close(int argc, VALUE *argv, VALUE self)
{
    static ID kw_ids[1];
    struct hio_hotpath *h;
    VALUE fdv, opts, kw[1] = { Qundef };
    double timeout;
    int fd, ret;

    if (!kw_ids[0]) kw_ids[0] = id_timeout;
    rb_scan_args(argc, argv, "1:", &fdv, &opts);
    if (!NIL_P(opts)) rb_get_kwargs(opts, kw_ids, 0, 1, kw);
    if (RB_TYPE_P(fdv, T_FILE))
        rb_raise(rb_eTypeError, "submit_close: expected an Integer fd, got %s (the IO would close the number "
                                "again later, when it may name another connection; close the IO itself)",
                 rb_obj_classname(fdv));
    fd = hio_fd_arg(fdv, "submit_close");
    timeout = kw[0] == Qundef ? -2.0 : hio_timeout_arg(kw[0], "submit_close");
    h = hpc_usable(self)->h;
    if (timeout == -2.0) timeout = hio_hp_close_timeout(h);
    ret = hio_hp_submit_close(h, fd, timeout);
    if (ret == -EINVAL) rb_raise(rb_eArgError, "submit_close: fd %d is the ring's own (use #close)", fd);
    hpc_check_submit(ret, "submit_close", fd);
    return Qnil;
}

/*
 * call-seq:
 *   ring.flush -> Integer
 *
 * Submits what is queued now instead of with the next wait; returns how
 * many SQEs the kernel took.
 */
static VALUE
hpc_flush(VALUE self)
{
    struct hio_hotpath *h = hpc_usable(self)->h;
    int ret = hio_hp_flush(h);

    if (ret < 0) hio_raise_errno(ret, "io_uring_submit(flush)");
    return INT2FIX(ret);
}

/*
 * call-seq:
 *   ring.close -> nil
 *
 * Cancels everything in flight, waits (at most a second) for the kernel to
 * give it all back, unregisters and frees the buffer ring, and closes the
 * ring. Idempotent. Memory the kernel could still touch is released only
 * once it cannot (see docs/RELIABILITY.md): with a DEFER_TASKRUN ring on a
 * 6.17+ kernel the recv buffers always go at once; payloads of sends still in flight wait
 * until the owner thread's kernel task has exited. In a forked child it
 * only drops the child's reference.
 *
 * From another thread: ThreadError while the thread that opened the ring is
 * alive. Once it has ended, any thread may close the ring: nothing can be
 * cancelled then (the kernel refuses other threads), so the ring is exited
 * without a drain, and its memory is released as above.
 */
static VALUE
hpc_close(VALUE self)
{
    struct hpc *hc = hpc_get(self);
    int why = hio_hp_may(hc->h, HIO_USE_CLOSE);

    if (why == HIO_OWNER_OTHER_THREAD && hio_owner_thread_ended(hc->owner_thread)) why = 0;
    if (why == HIO_REFUSE_CLOSED) return Qnil;
    if (why) hio_hotpath_refuse(hc->h, why);
    if (hc->in_each)
        rb_raise(hio_eError, "cannot close a ring while each_completion runs (from its block, or "
                             "from another fiber while it waits under the Fiber scheduler)");
    hio_hp_close(hc->h, 0);
    hio_sched_io_close(&hc->sched_io);
    hc->owner_thread = Qnil; /* only a close of an open ring asks it: let the Thread go */
    return Qnil;
}

/*
 * call-seq:
 *   ring.closed? -> true or false
 */
static VALUE
hpc_closed_p(VALUE self)
{
    return hio_hp_is_open(hpc_get(self)->h) ? Qfalse : Qtrue;
}

/*
 * call-seq:
 *   ring.healthy? -> true or false
 *
 * False once the ring itself failed (a wait failed with an error other than
 * EINTR, ETIME, EAGAIN or EBUSY, or the kernel broke the buffer protocol),
 * after #force_unhealthy!, and when closed. Signals never make it false.
 */
static VALUE
hpc_healthy_p(VALUE self)
{
    return hio_hp_healthy(hpc_get(self)->h) ? Qtrue : Qfalse;
}

/*
 * call-seq:
 *   ring.force_unhealthy! -> nil
 *
 * Marks the ring unhealthy (upstream's test seam for the fallback path).
 */
static VALUE
hpc_force_unhealthy(VALUE self)
{
    hio_hp_set_unhealthy(hpc_get(self)->h);
    return Qnil;
}

/*
 * call-seq:
 *   ring.fileno -> Integer or nil
 */
static VALUE
hpc_fileno(VALUE self)
{
    struct hio_hotpath *h = hpc_get(self)->h;
    return hio_hp_is_open(h) ? INT2FIX(hio_hp_fd(h)) : Qnil;
}

/*
 * call-seq:
 *   ring.ptr -> Integer or nil
 *
 * A handle for the exported C function
 * <tt>int hyperion_io_uring_hotpath_submit_send(void *ring, int fd, const void *iov, unsigned iovcnt)</tt>
 * (upstream's HTTP extension finds it with dlsym(RTLD_DEFAULT, ...)); nil
 * once closed. The function checks the handle against the live rings, so a
 * stale or bogus one gets -EINVAL, never a crash.
 */
static VALUE
hpc_ptr(VALUE self)
{
    struct hio_hotpath *h = hpc_get(self)->h;
    return hio_hp_is_open(h) ? ULL2NUM((unsigned long long)(uintptr_t)h) : Qnil;
}

/*
 * call-seq:
 *   ring.batch_wait_supported? -> true or false
 *
 * Whether #each_completion's +min_wait_us:+ makes kernel batch waits on
 * this ring (IORING_FEAT_MIN_TIMEOUT, Linux 6.12+; never under valgrind,
 * nor with HYPERION_IO_URING_MIN_WAIT=0 in the environment when the ring
 * was made).
 * When false, +min_wait_us:+ is accepted and the wait ends at the first
 * completion. IOError on a closed ring.
 */
static VALUE
hpc_batch_wait_supported_p(VALUE self)
{
    return hio_hp_batch_wait(hpc_usable(self)->h) ? Qtrue : Qfalse;
}

/*
 * call-seq:
 *   ring.stats -> Hash
 *
 * Counters since the ring opened: :accepts, :recvs, :recv_bytes, :sends,
 * :send_bytes, :short_sends (continued by the ring), :enobufs (recvs parked
 * for lack of buffers), :rearms (multishot requests re-armed), :cq_overflows,
 * :stale_completions (late completions of cancelled or replaced connections,
 * dropped), :buffers_in_use (held by Ruby now), :buffers_published (in
 * the kernel's buffer ring now, not consumed yet), :buffers_wanted (how
 * many the pool keeps out of its free stack now, published or held: 64
 * at first, or n_bufs if smaller; it doubles when recvs run dry often, up
 * to n_bufs, and decays after a quiet second), :buffer_pages_resident
 * (pages of the n_bufs x buf_size pool resident now, from mincore(2) at
 * this call), :buffer_releases_to_os (buffers whose pages were given back
 * with MADV_DONTNEED after a window unused), :buffer_withdrawals (times
 * idle published buffers were taken back from the kernel's ring after a
 * decay; DEFER_TASKRUN rings on Linux 6.8+ only), :submits and :waits
 * (io_uring_enter calls that submitted / waited), :batch_waits (waits made
 * as kernel batch waits, see #each_completion's min_wait_us:), :closes
 * (closes made for #submit_close), :close_timeouts (submit_close deadlines
 * that cancelled the sends they waited for), :send_buffer_full (sends
 * refused with SendBufferFull), :cancels_owed (cancels that found no free
 * SQE even after the full SQ was submitted, kept and issued at the next
 * reap instead of dropped), :send_copy_allocs (allocations made for
 * send copies: small copies come from a per-ring slab of freed chunks and
 * large ones from a cache of mappings, so it stops growing once a server
 * is warm), :borrowed_sends (frozen Strings sent without a copy),
 * :zc_sends (IORING_OP_SEND_ZC requests, see zero_copy_min:), :zc_copied
 * (those the kernel copied after all, Linux 6.2+), :file_sends (sends
 * made with sendfile(2), see sendfile_min:), :body_files (memfd copies of
 * bodies made for them), :body_file_bytes (bytes of those kept now: up to
 * 16 bodies and send_buffer_limit bytes, a budget apart from the sends'),
 * plus
 * :inflight (requests the kernel holds),
 * :queued (completions not yet yielded), :queued_send_bytes (bytes of send
 * copies the ring holds now, see #queued_send_bytes) and :setup_flags.
 */
static VALUE
hpc_stats(VALUE self)
{
    struct hio_hp_stats st;
    VALUE s = rb_hash_new();

    hio_hp_stats(hpc_get(self)->h, &st);
#define HPC_STAT(name, val) rb_hash_aset(s, ID2SYM(rb_intern(name)), ULL2NUM((unsigned long long)(val)))
    HPC_STAT("accepts", st.st.accepts);
    HPC_STAT("recvs", st.st.recvs);
    HPC_STAT("recv_bytes", st.st.recv_bytes);
    HPC_STAT("sends", st.st.sends);
    HPC_STAT("send_bytes", st.st.send_bytes);
    HPC_STAT("short_sends", st.st.short_sends);
    HPC_STAT("enobufs", st.st.enobufs);
    HPC_STAT("rearms", st.st.rearms);
    HPC_STAT("cq_overflows", st.st.cq_overflows);
    HPC_STAT("stale_completions", st.st.stale_completions);
    HPC_STAT("buffers_in_use", st.buffers_in_use);
    HPC_STAT("buffers_published", st.buffers_published);
    HPC_STAT("buffers_wanted", st.buffers_wanted);
    HPC_STAT("buffer_pages_resident", st.buffer_pages_resident);
    HPC_STAT("buffer_releases_to_os", st.buffer_releases_to_os);
    HPC_STAT("buffer_withdrawals", st.buffer_withdrawals);
    HPC_STAT("submits", st.st.io.submits);
    HPC_STAT("waits", st.st.io.waits);
    HPC_STAT("batch_waits", st.st.io.batch_waits);
    HPC_STAT("closes", st.st.closes);
    HPC_STAT("close_timeouts", st.st.close_timeouts);
    HPC_STAT("send_buffer_full", st.st.send_buffer_full);
    HPC_STAT("cancels_owed", st.st.cancels_owed);
    HPC_STAT("send_copy_allocs", st.st.send_copy_allocs);
    HPC_STAT("borrowed_sends", st.st.borrowed_sends);
    HPC_STAT("zc_sends", st.st.zc_sends);
    HPC_STAT("zc_copied", st.st.zc_copied);
    HPC_STAT("file_sends", st.st.file_sends);
    HPC_STAT("body_files", st.st.body_files);
    HPC_STAT("body_file_bytes", st.body_file_bytes);
    HPC_STAT("inflight", st.inflight);
    HPC_STAT("queued", st.queued);
    HPC_STAT("queued_send_bytes", st.queued_send_bytes);
    HPC_STAT("setup_flags", st.setup_flags);
#undef HPC_STAT
    return s;
}

/*
 * call-seq:
 *   HotpathRing.native_probe -> nil or String
 *
 * Runs the functional hot-path probe: nil when a multishot accept and a
 * multishot recv into a buffer ring completed on loopback, else the reason.
 * Signals never fail it (an interrupted connect is waited for). A step
 * that fails with a transient error (EINTR, EAGAIN, ENOMEM, EMFILE, ...)
 * is retried a few times; if it still fails, this raises that
 * SystemCallError (Errno::*) instead of returning a reason, so the caller
 * does not take a momentary failure for the host's answer.
 */
static VALUE
hpc_s_probe(VALUE klass)
{
    char reason[256];
    int err = 0;
    const char *r = hio_hp_probe(reason, sizeof(reason), &err);

    if (r && hio_probe_transient(err)) rb_syserr_fail(-err, r);
    return r ? rb_str_new_cstr(r) : Qnil;
}

/*
 * call-seq:
 *   HotpathRing.pinned_strings -> Integer
 *
 * Pins this process holds now on frozen Strings sent without a copy (see
 * #submit_send): one per send in flight, and one per body a ring keeps a
 * sendfile_min copy of (a String both hold counts twice). Each pinned
 * String is kept alive and unmoved until the kernel is done with it. A
 * gauge: 0 once every such send has completed and every ring with cached
 * bodies was closed (or its memory was released).
 */
static VALUE
hpc_s_pinned_strings(VALUE klass)
{
    return LONG2NUM(hio_pins_live());
}

/*
 * call-seq:
 *   HotpathRing.leaked_rings -> Integer
 *
 * How many closed rings of this process hold memory now that the kernel
 * might still write (buffer ring, send payloads): #close gives the kernel a
 * second to hand everything back; the GC never waits, and a ring collected
 * by another thread than its own cannot cancel at all. That memory is
 * released once the owner thread's kernel task has exited (and in a forked
 * child at once), and the count goes down then: a gauge, 0 in a healthy
 * process. Releases what may be released before it counts.
 */
static VALUE
hpc_s_leaked_rings(VALUE klass)
{
    return ULONG2NUM(hio_hp_leaked_rings());
}

/*
 * call-seq:
 *   HotpathRing.deferred_bytes -> Integer
 *
 * The bytes of the memory leaked_rings counts: held now, until the kernel
 * can no longer touch it. Releases what may be released before it counts.
 */
static VALUE
hpc_s_deferred_bytes(VALUE klass)
{
    return SIZET2NUM(hio_hp_deferred_bytes());
}

void
hio_init_hotpath_class(VALUE mIOUring)
{
    id_queue_depth = rb_intern("queue_depth");
    id_n_bufs = rb_intern("n_bufs");
    id_buf_size = rb_intern("buf_size");
    id_default_n_bufs = rb_intern("default_n_bufs");
    id_default_buf_size = rb_intern("default_buf_size");
    id_default_send_buffer_limit = rb_intern("default_send_buffer_limit");
    id_send_buffer_limit = rb_intern("send_buffer_limit");
    id_connection_send_limit = rb_intern("connection_send_limit");
    id_close_timeout = rb_intern("close_timeout");
    id_timeout = rb_intern("timeout");
    id_send_completions = rb_intern("send_completions");
    id_zero_copy_min = rb_intern("zero_copy_min");
    id_sendfile_min = rb_intern("sendfile_min");
    sym_all = ID2SYM(rb_intern("all"));
    sym_failures = ID2SYM(rb_intern("failures"));
    sym_op_kind = ID2SYM(rb_intern("op_kind"));
    sym_fd = ID2SYM(rb_intern("fd"));
    sym_result = ID2SYM(rb_intern("result"));
    sym_buf_id = ID2SYM(rb_intern("buf_id"));
    sym_flags = ID2SYM(rb_intern("flags"));

    hio_cHotpathRing = rb_define_class_under(mIOUring, "HotpathRing", rb_cObject);
    rb_define_const(hio_cHotpathRing, "DEFAULT_QUEUE_DEPTH", INT2FIX(1024));
    rb_define_const(hio_cHotpathRing, "DEFAULT_N_BUFS", INT2FIX(512));
    rb_define_const(hio_cHotpathRing, "DEFAULT_BUF_SIZE", INT2FIX(8192));
    rb_define_const(hio_cHotpathRing, "DEFAULT_SEND_BUFFER_LIMIT", ULL2NUM(HIO_DEFAULT_SEND_LIMIT));
    rb_define_const(hio_cHotpathRing, "DEFAULT_CLOSE_TIMEOUT", INT2FIX((int)HIO_DEFAULT_CLOSE_TIMEOUT));
    rb_define_const(hio_cHotpathRing, "COMPLETION_BYTES", INT2FIX(24));
    rb_define_const(hio_cHotpathRing, "BORROW_MIN", INT2FIX(HP_BORROW_MIN));
    rb_define_const(hio_cHotpathRing, "MAX_BATCH", INT2FIX(64));
    rb_define_const(hio_cHotpathRing, "OP_ACCEPT", INT2FIX(HIO_OP_ACCEPT));
    rb_define_const(hio_cHotpathRing, "OP_RECV", INT2FIX(HIO_OP_RECV));
    rb_define_const(hio_cHotpathRing, "OP_SEND", INT2FIX(HIO_OP_SEND));
    rb_define_const(hio_cHotpathRing, "OP_CLOSE", INT2FIX(HIO_OP_CLOSE));
    rb_define_alloc_func(hio_cHotpathRing, hpc_alloc);
    rb_define_singleton_method(hio_cHotpathRing, "native_probe", hpc_s_probe, 0);
    rb_define_singleton_method(hio_cHotpathRing, "leaked_rings", hpc_s_leaked_rings, 0);
    rb_define_singleton_method(hio_cHotpathRing, "pinned_strings", hpc_s_pinned_strings, 0);
    rb_define_singleton_method(hio_cHotpathRing, "deferred_bytes", hpc_s_deferred_bytes, 0);
    rb_define_method(hio_cHotpathRing, "initialize", hpc_initialize, -1);
    rb_define_method(hio_cHotpathRing, "submit_accept_multishot", hpc_submit_accept, 1);
    rb_define_method(hio_cHotpathRing, "submit_recv_multishot", hpc_submit_recv, 1);
    rb_define_method(hio_cHotpathRing, "submit_send", hpc_submit_send, -1);
    rb_define_private_method(hio_cHotpathRing, "__each_completion", hpc_each_completion, 4);
    rb_define_method(hio_cHotpathRing, "cancel", hpc_cancel, 1);
    rb_define_method(hio_cHotpathRing, "submit_close", hpc_submit_close, -1);
    rb_define_method(hio_cHotpathRing, "queued_send_bytes", hpc_queued_send_bytes, 1);
    rb_define_method(hio_cHotpathRing, "send_completions", hpc_send_completions, 0);
    rb_define_method(hio_cHotpathRing, "zero_copy_min", hpc_zero_copy_min, 0);
    rb_define_method(hio_cHotpathRing, "sendfile_min", hpc_sendfile_min, 0);
    rb_define_method(hio_cHotpathRing, "zero_copy_supported?", hpc_zero_copy_supported_p, 0);
    rb_define_method(hio_cHotpathRing, "flush", hpc_flush, 0);
    rb_define_method(hio_cHotpathRing, "close", hpc_close, 0);
    rb_define_method(hio_cHotpathRing, "closed?", hpc_closed_p, 0);
    rb_define_method(hio_cHotpathRing, "healthy?", hpc_healthy_p, 0);
    rb_define_method(hio_cHotpathRing, "force_unhealthy!", hpc_force_unhealthy, 0);
    rb_define_method(hio_cHotpathRing, "fileno", hpc_fileno, 0);
    rb_define_method(hio_cHotpathRing, "stats", hpc_stats, 0);
    rb_define_method(hio_cHotpathRing, "batch_wait_supported?", hpc_batch_wait_supported_p, 0);
    rb_define_method(hio_cHotpathRing, "ptr", hpc_ptr, 0);
}
