/*
 * wait.c: the one place that decides how to wait, and waits.
 *
 * Layer: beside the engines' bottom layer; calls liburing, Ruby's thread
 * and Fiber scheduler API, and back into the engine only through the
 * callbacks of its description (wait.h).
 *
 * Engines describe what they want (struct hio_wait, struct hio_drain);
 * this file picks the mechanism: a peek, the Fiber scheduler, a kernel
 * batch wait, a wait without the GVL, a bounded slice with it. The function
 * that runs without the GVL only submits and waits; it never reaps.
 * Completions are reaped through the engine's callback after the GVL is
 * back, so a Thread#raise, Timeout or signal that arrives during the wait
 * can never lose a CQE: it is still in the CQ when the exception
 * propagates, and the engine's end callback (cancel + drain) consumes it.
 */
#include "hyperion_io_uring.h"
#include "hio_valgrind.h"
#include <errno.h>
#include <time.h>
#include <math.h>
#include <ruby/io.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Kernel 6.12; liburing before 2.8 does not define it. */
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif

#ifdef HAVE_RB_FIBER_SCHEDULER_CURRENT
#include <ruby/fiber/scheduler.h>
#endif

double
hio_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double
hio_now_coarse(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct wait_args {
    struct io_uring *ring;
    unsigned wait_nr;
    unsigned min_wait_us; /* > 0: batch wait (wait_batch) */
    double timeout;
    int ret;
};

static void
wait_timespec(double timeout, struct __kernel_timespec *ts)
{
    double whole = floor(timeout);

    ts->tv_sec = (long long)whole;
    ts->tv_nsec = (long long)((timeout - whole) * 1e9);
}

/* EINTR (a signal, Ruby's UBF), ETIME (the timeout), EAGAIN and EBUSY (CQ
 * overflow backpressure, flushed by the next enter) are "no events yet".
 * liburing 2.3 may also report a signal as "submitted N": the caller
 * decides by what is in the CQ, never by this value. */
static int
wait_normalize(int ret)
{
    if (ret >= 0) return 0;
    switch (-ret) {
      case EINTR: case ETIME: case EAGAIN: case EBUSY:
        return 0;
      default:
        return ret;
    }
}

/*
 * valgrind before 3.21 does not know that io_uring_enter can block
 * (https://bugs.kde.org/show_bug.cgi?id=463859): a thread waiting in it
 * keeps valgrind's big lock, which valgrind hands over only at the end of a
 * scheduling quantum, so the other Ruby threads (a writer, Timeout's
 * thread) would starve for as long as the ring waits. poll(2) is a syscall
 * valgrind knows blocks, but poll on the ring fd is not woken by a
 * completion queued as DEFER_TASKRUN local work (see wait_scheduler). So,
 * under valgrind only, a wait alternates: io_uring_enter for at most 1 ms
 * (it runs the deferred work and wakes on a completion), then poll(2) on
 * nothing for 1 ms, which lets the other threads run; at most 10 ms in all,
 * and the caller's loop goes on until its own deadline. An interrupt
 * (Ruby's UBF, a signal) ends it with EINTR.
 */
static void
wait_valgrind(struct wait_args *a)
{
    double end = hio_now() + (a->timeout >= 0 && a->timeout < 0.01 ? a->timeout : 0.01);

    for (;;) {
        struct io_uring_cqe *cqe = NULL;
        struct __kernel_timespec ts;
        double left = end - hio_now();
        int ret;

        if (left < 0) left = 0;
        ts.tv_sec = 0;
        ts.tv_nsec = (long long)((left < 0.001 ? left : 0.001) * 1e9);
        ret = io_uring_submit_and_wait_timeout(a->ring, &cqe, a->wait_nr, &ts, NULL);
        if ((ret < 0 && ret != -ETIME) || io_uring_cq_ready(a->ring) >= a->wait_nr || hio_now() >= end) {
            a->ret = ret;
            return;
        }
        if (poll(NULL, 0, 1) < 0) {
            a->ret = -errno;
            return;
        }
    }
}

/*
 * Batch wait (kernel 6.12, IORING_FEAT_MIN_TIMEOUT): wait for wait_nr CQEs
 * for at most min_wait_us; after that, return as soon as there is one (or
 * at the timeout).
 *
 * liburing 2.8+ has io_uring_submit_and_wait_min_timeout. It is given a
 * timeout even when the caller has none: without one, liburing enters a
 * second time when fewer than wait_nr CQEs came back, which costs another
 * min_wait_us.
 *
 * Older liburing has no call that sets min_wait_usec, so wait_batch
 * publishes the SQ tail itself (what io_uring_submit does first) and enters
 * with IORING_ENTER_EXT_ARG. Rings here never use SQPOLL or a registered
 * ring fd, which would need more.
 */
#ifdef HAVE_IO_URING_SUBMIT_AND_WAIT_MIN_TIMEOUT
static int
wait_batch(struct wait_args *a)
{
    struct io_uring_cqe *cqe = NULL;
    struct __kernel_timespec ts;

    wait_timespec(a->timeout >= 0 ? a->timeout : 1e9, &ts);
    return io_uring_submit_and_wait_min_timeout(a->ring, &cqe, a->wait_nr, &ts, a->min_wait_us, NULL);
}
#else
static int
wait_batch(struct wait_args *a)
{
    struct io_uring_sq *sq = &a->ring->sq;
    struct io_uring_getevents_arg arg;
    struct __kernel_timespec ts;
    unsigned tail = sq->sqe_tail;
    long ret;

    if (sq->sqe_head != tail) {
        sq->sqe_head = tail;
        io_uring_smp_store_release(sq->ktail, tail);
    }
    memset(&arg, 0, sizeof(arg));
#ifdef HAVE_STRUCT_IO_URING_GETEVENTS_ARG_MIN_WAIT_USEC
    arg.min_wait_usec = a->min_wait_us;
#else
    arg.pad = a->min_wait_us; /* the kernel's min_wait_usec since 6.12 */
#endif
    if (a->timeout >= 0) {
        wait_timespec(a->timeout, &ts);
        arg.ts = (uint64_t)(uintptr_t)&ts;
    }
    ret = syscall(__NR_io_uring_enter, a->ring->ring_fd, tail - io_uring_smp_load_acquire(sq->khead), a->wait_nr,
                  IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg, sizeof(arg));
    return ret < 0 ? -errno : (int)ret;
}
#endif

int
hio_batch_wait_supported(const struct io_uring *ring)
{
    return (ring->features & IORING_FEAT_MIN_TIMEOUT) && (ring->features & IORING_FEAT_EXT_ARG) &&
           !(ring->flags & IORING_SETUP_SQPOLL) && !HIO_ON_VALGRIND();
}

static void
wait_run(struct wait_args *a)
{
    if (HIO_ON_VALGRIND()) {
        wait_valgrind(a);
        return;
    }
    if (a->min_wait_us) {
        a->ret = wait_batch(a);
    } else if (a->timeout < 0) {
        a->ret = io_uring_submit_and_wait(a->ring, a->wait_nr);
    } else {
        struct io_uring_cqe *cqe = NULL; /* never NULL to liburing: 2.5 crashed on it */
        struct __kernel_timespec ts;
        wait_timespec(a->timeout, &ts);
        a->ret = io_uring_submit_and_wait_timeout(a->ring, &cqe, a->wait_nr, &ts, NULL);
    }
}

static void *
wait_fn_nogvl(void *p)
{
    wait_run((struct wait_args *)p);
    return NULL;
}

/* Submits and waits without the GVL for wait_nr completions (a batch wait
 * when min_wait_us > 0) or timeout seconds (< 0: no limit). Only waits:
 * reaping happens after the GVL is back. */
static int
wait_nogvl(struct io_uring *ring, unsigned wait_nr, double timeout, unsigned min_wait_us)
{
    struct wait_args a;

    a.ring = ring;
    a.wait_nr = wait_nr;
    a.min_wait_us = min_wait_us;
    a.timeout = timeout;
    a.ret = -EINTR; /* what it means when an interrupt kept the wait from running */
#ifdef HAVE_RB_NOGVL
    /* RB_NOGVL_INTR_FAIL: with an interrupt already pending, do not enter the
     * wait at all; the loop's rb_thread_check_ints() then raises it.
     * Never RB_NOGVL_OFFLOAD_SAFE (Ruby 3.4): a scheduler may then run the
     * call on a worker thread, and a SINGLE_ISSUER/DEFER_TASKRUN ring can
     * only be entered by its own (EEXIST from any other). */
    rb_nogvl(wait_fn_nogvl, &a, RUBY_UBF_IO, NULL, RB_NOGVL_INTR_FAIL);
#else
    rb_thread_call_without_gvl(wait_fn_nogvl, &a, RUBY_UBF_IO, NULL);
#endif
    return wait_normalize(a.ret);
}

/* The same with the GVL held: only for bounded slices. */
static int
wait_held_slice(struct io_uring *ring, unsigned wait_nr, double timeout)
{
    struct wait_args a;

    a.ring = ring;
    a.wait_nr = wait_nr;
    a.min_wait_us = 0;
    a.timeout = timeout;
    a.ret = 0;
    wait_run(&a);
    return wait_normalize(a.ret);
}

/* Whether completions wait as task work the kernel runs only when this
 * task enters it (IORING_SQ_TASKRUN; set only with IORING_SETUP_TASKRUN_FLAG):
 * read from the shared SQ ring, no syscall. */
static inline int
wait_taskrun_pending(const struct io_uring *ring)
{
    return (ring->flags & IORING_SETUP_TASKRUN_FLAG) &&
           (IO_URING_READ_ONCE(*ring->sq.kflags) & IORING_SQ_TASKRUN);
}

int
hio_submit_get_events(struct io_uring *ring)
{
    int ret;

    /* Without deferred task running the kernel posts CQEs by itself, unless
     * it says (IORING_SQ_TASKRUN, COOP_TASKRUN + TASKRUN_FLAG) that some wait
     * as task work for this task's next kernel entry: with nothing to
     * submit, no overflow to flush and no such work, a peek needs no syscall. */
    if (io_uring_sq_ready(ring) == 0 && !(ring->flags & IORING_SETUP_DEFER_TASKRUN) &&
        !io_uring_cq_has_overflow(ring) && !wait_taskrun_pending(ring))
        return 0;
#ifdef HAVE_IO_URING_SUBMIT_AND_GET_EVENTS
    ret = io_uring_submit_and_get_events(ring);
#else
    ret = io_uring_submit(ring);
#endif
    return wait_normalize(ret);
}

/* ---- Fiber scheduler ---- */

/*
 * Under a Fiber scheduler (the calling fiber is non-blocking), wait through
 * the scheduler's io_wait so the other fibers on this thread keep running.
 *
 * Not on the ring fd: with IORING_SETUP_DEFER_TASKRUN (our default where the
 * kernel has it) a completion is first queued as local task work, and that
 * does not wake pollers of the ring fd. Probed on 6.18: poll(2), epoll and
 * IORING_OP_POLL_ADD (io-event's URing selector) on the ring fd all slept
 * through an accept completing, until their timeout; without a timeout the
 * fiber never woke. The kernel does signal an eventfd registered with the
 * ring when the first item lands on the local work list (and when CQEs are
 * posted, for rings without DEFER_TASKRUN), so that is what we wait on.
 * The counter is drained before the last look at the CQ, so a completion
 * that arrives after that look always leaves the eventfd readable.
 *
 * *io_slot caches an IO that owns the eventfd (the binding marks it and
 * closes it through hio_sched_io_close; otherwise the GC does).
 */
#if defined(HAVE_RB_FIBER_SCHEDULER_CURRENT) && defined(HAVE_RB_FIBER_SCHEDULER_IO_WAIT)
static int
wait_sched_fd(struct io_uring *ring, VALUE *io_slot)
{
    int efd, ret;

    if (RTEST(*io_slot)) return rb_io_descriptor(*io_slot);
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) rb_syserr_fail(errno, "eventfd (for a Fiber scheduler wait on the ring)");
    ret = io_uring_register_eventfd(ring, efd);
    if (ret < 0) {
        close(efd);
        rb_syserr_fail(-ret, "io_uring_register_eventfd (for a Fiber scheduler wait on the ring)");
    }
    *io_slot = rb_io_fdopen(efd, O_RDONLY, NULL);
    return efd;
}
#endif

/* Returns 1 when it waited through the scheduler (which may raise: the
 * scheduler cancelling the fiber, Timeout; nothing is reaped here), 0 when
 * there is no scheduler. */
static int
wait_scheduler(struct io_uring *ring, double timeout, VALUE *io_slot)
{
#if defined(HAVE_RB_FIBER_SCHEDULER_CURRENT) && defined(HAVE_RB_FIBER_SCHEDULER_IO_WAIT)
    VALUE sched = rb_fiber_scheduler_current();
    uint64_t count;
    int efd;

    if (NIL_P(sched)) return 0;
    efd = wait_sched_fd(ring, io_slot);
    /* Drain first, then look: whatever completes after the look signals. */
    while (read(efd, &count, sizeof(count)) == (ssize_t)sizeof(count)) {}
    /* Hand queued requests to the kernel and run deferred work before
     * parking the fiber; if that produced completions, do not park. */
    hio_submit_get_events(ring);
    if (io_uring_cq_ready(ring) || io_uring_cq_has_overflow(ring)) return 1;
    rb_fiber_scheduler_io_wait(sched, *io_slot, INT2FIX(RUBY_IO_READABLE),
                               timeout < 0 ? Qnil : DBL2NUM(timeout));
    return 1;
#else
    (void)ring;
    (void)timeout;
    (void)io_slot;
    return 0;
#endif
}

void
hio_sched_io_close(VALUE *io_slot)
{
    VALUE io = *io_slot;

    *io_slot = Qnil;
    if (RTEST(io)) rb_io_close(io); /* a no-op on an IO already closed */
}

/* ---- Deciding how to wait ---- */

static void
wait_count_submit(const struct hio_wait *w)
{
    if (w->counts && io_uring_sq_ready(w->ring)) w->counts->submits++;
}

/* One blocking wait for a Ruby method: through the Fiber scheduler when
 * there is one, else without the GVL, as a kernel batch wait when the
 * caller has a batch window and wants more than one more completion. */
static int
wait_ruby_once(struct hio_wait *w, double left, VALUE *sched_io)
{
    unsigned ready;

    if (wait_scheduler(w->ring, left, sched_io)) return hio_submit_get_events(w->ring);
    ready = w->ops->ready(w->ctx);
    if (w->min_wait_us && (w->flags & HIO_WAIT_BATCH) && w->want > ready + 1) {
        if (w->counts) w->counts->batch_waits++;
        return wait_nogvl(w->ring, w->want - ready, left, w->min_wait_us);
    }
    return wait_nogvl(w->ring, 1, left, 0);
}

enum { WAIT_LOOK_BLOCK = 0, WAIT_LOOK_DONE = 1, WAIT_LOOK_AGAIN = 2 };

/* A look that never blocks and never raises: reap what the CQ holds (peek:
 * submit and let the kernel run deferred work first). WAIT_LOOK_DONE when
 * ready() reached want, WAIT_LOOK_AGAIN when reaping queued requests worth
 * another look, WAIT_LOOK_BLOCK, or a fatal -errno of the peek. */
static inline int
wait_look(struct hio_wait *w, int peek)
{
    int again = 0, ret;

    /* Completions that are there but not posted yet: collecting them takes
     * an enter that returns at once, cheaper with the GVL held than a
     * release and a re-acquire around it: a busy server's usual case, and
     * a request that arrived while the last batch was being answered. */
    if (!peek && !io_uring_cq_ready(w->ring) && wait_taskrun_pending(w->ring)) peek = 1;
    if (peek) {
        if ((ret = hio_submit_get_events(w->ring)) < 0) return ret;
        again = w->ops->reap(w->ctx) == HIO_REAP_AGAIN;
    } else if (io_uring_cq_ready(w->ring)) {
        again = w->ops->reap(w->ctx) == HIO_REAP_AGAIN;
    }
    if (w->want > 0 && w->ops->ready(w->ctx) >= w->want) return WAIT_LOOK_DONE;
    return again ? WAIT_LOOK_AGAIN : WAIT_LOOK_BLOCK;
}

/*
 * The wait: rounds of (look, wait, reap) until ready() reaches want, the
 * timeout passes or the ring fails. look is the first round's look (peeked:
 * it was a peek), which the caller made.
 *
 * A blocking wait asks the kernel for the first completion, not for the
 * number still missing: requests the ring starts itself while reaping (a
 * send queued behind another on its fd, a short send's continuation, a
 * re-arm) cannot complete before that reap, so the kernel alone may never
 * see enough CQEs. A batch window is the exception, since it ends at
 * min_wait_us with whatever is there.
 */
static int
wait_loop(struct hio_wait *w, VALUE *sched_io, int look, int peeked)
{
    int ruby = (w->flags & HIO_WAIT_RUBY) != 0, peek = (w->flags & HIO_WAIT_PEEK) != 0;
    double deadline = -1.0;

    for (;;) {
        double left = -1.0;
        int ret, again;

        if (look < 0) return look;
        if (look == WAIT_LOOK_DONE) return 0;
        if (look == WAIT_LOOK_AGAIN) {
            look = wait_look(w, peek);
            peeked = peek;
            continue;
        }
        if (w->flags & HIO_WAIT_POLL) {
            if (peeked) return 0;
            wait_count_submit(w);
            ret = hio_submit_get_events(w->ring);
            w->ops->reap(w->ctx);
            return ret;
        }
        if (peeked) w->peek_missed = 1;
        if (w->timeout >= 0) {
            if (deadline < 0) {
                deadline = hio_now() + w->timeout;
                left = w->timeout;
            } else {
                left = deadline - hio_now();
            }
            if (left <= 0) {
                w->timed_out = 1;
                return 0;
            }
        }
        if (w->ops->wake_at) {
            /* The engine's own deadline bounds this wait, not the caller's. */
            double at = w->ops->wake_at(w->ctx);
            if (at >= 0) {
                double until = at - hio_now();
                if (until < 0) until = 0;
                if (left < 0 || until < left) left = until;
            }
        }
        if (w->watch.check) {
            /* Before each blocking wait (the first one included, so the
             * check can note what it watches), and each wait a slice of at
             * most watch.every. */
            if ((w->watch_err = w->watch.check(w->watch.arg)) < 0) return 0;
            w->watched = 1;
            if (left < 0 || left > w->watch.every) left = w->watch.every;
        }
        if (w->counts) w->counts->waits++;
        wait_count_submit(w);
        if (ruby) ret = wait_ruby_once(w, left, sched_io);
        else ret = wait_held_slice(w->ring, 1, left < 0 || left > 0.05 ? 0.05 : left);
        if (ret < 0) {
            if (w->ops->broken) w->ops->broken(w->ctx, ret);
            return ret;
        }
        again = w->ops->reap(w->ctx) == HIO_REAP_AGAIN;
        /* A batch window the kernel cannot make (no IORING_FEAT_MIN_TIMEOUT,
         * valgrind, a Fiber scheduler) ends at the first completion, as the
         * kernel's batch wait would once min_wait_us passed. */
        if (w->ops->ready(w->ctx) >= w->want || (w->min_wait_us && w->ops->ready(w->ctx) > 0)) return 0;
        /* Raises Thread#raise / Timeout / Interrupt; runs trap handlers.
         * Whatever completed is reaped already. */
        if (!again && ruby) rb_thread_check_ints();
        look = wait_look(w, peek);
        peeked = peek;
    }
}

struct wait_call {
    struct hio_wait *w;
    VALUE *sched_io;
    int look, peeked;
};

static VALUE
wait_protected(VALUE p)
{
    struct wait_call *c = (struct wait_call *)p;

    c->w->err = wait_loop(c->w, c->sched_io, c->look, c->peeked);
    return Qnil;
}

/* The first look, which neither blocks nor raises: a wait that finds what
 * it wants there needs neither rb_protect nor a clock. */
static inline int
wait_first_look(struct hio_wait *w, int *peeked)
{
    *peeked = (w->flags & HIO_WAIT_PEEK) && !(w->flags & HIO_WAIT_NO_FIRST_PEEK);
    return wait_look(w, *peeked);
}

/* The rest of hio_wait_ruby, once the first look found it must wait. */
static int __attribute__((noinline))
wait_ruby_rounds(struct hio_wait *w, VALUE *sched_io, int look, int peeked)
{
    struct wait_call c;
    int state = 0;

    if (!w->ops->end) return w->err = wait_loop(w, sched_io, look, peeked);
    /* The engine's end runs however the wait ends, before an exception
     * leaves: it cancels and drains what the kernel still holds. */
    c.w = w;
    c.sched_io = sched_io;
    c.look = look;
    c.peeked = peeked;
    rb_protect(wait_protected, (VALUE)&c, &state);
    w->raised = state != 0;
    w->ops->end(w->ctx, w);
    if (state) rb_jump_tag(state);
    return w->err;
}

int
hio_wait_ruby(struct hio_wait *w, VALUE *sched_io)
{
    int peeked, look = wait_first_look(w, &peeked);

    if (look != WAIT_LOOK_DONE && look >= 0) return wait_ruby_rounds(w, sched_io, look, peeked);
    w->err = look < 0 ? look : 0;
    if (w->ops->end) w->ops->end(w->ctx, w);
    return w->err;
}

int
hio_wait_held(struct hio_wait *w)
{
    int peeked, look;

    w->flags &= ~(unsigned)HIO_WAIT_RUBY;
    look = wait_first_look(w, &peeked);
    w->err = wait_loop(w, NULL, look, peeked);
    if (w->ops->end) w->ops->end(w->ctx, w);
    return w->err;
}

/* A drain that may not block makes a few passes: a cancel of a poll-armed
 * request (an accept, a recv, a send waiting for room) completes inline,
 * and its CQE is posted by the deferred work the next enter runs. */
#define WAIT_DRAIN_PASSES 4

/*
 * A fatal error of the ring itself (EEXIST: not the submitter task of a
 * SINGLE_ISSUER ring; EBADF/EOPNOTSUPP: its fd was closed or replaced;
 * EBADFD, ENXIO: the ring is disabled or dying; EFAULT...) ends the drain
 * at once: no enter will ever succeed, and looping on it held the GVL and a
 * CPU for the whole budget (1 s per ring, measured). Only "no events yet"
 * (wait_normalize) goes on.
 */
int
hio_drain(const struct hio_drain *d)
{
    double deadline = hio_now() + d->budget;
    int pass = 0, ret;

    for (;;) {
        double left;

        if (d->step(d->ctx)) return 0;
        if (d->budget <= 0) {
            if (pass++ == WAIT_DRAIN_PASSES) return -ETIME;
            if ((ret = hio_submit_get_events(d->ring)) < 0) return ret;
            continue;
        }
        left = deadline - hio_now();
        if (left <= 0) return -ETIME;
        if ((ret = wait_held_slice(d->ring, 1, left < 0.05 ? left : 0.05)) < 0) {
            d->step(d->ctx); /* what was already in the CQ */
            return ret;
        }
    }
}
