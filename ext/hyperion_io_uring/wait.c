/*
 * wait.c: the one place that blocks.
 *
 * The function that runs without the GVL only submits and waits; it never
 * reaps. Completions are reaped by the caller after the GVL is back, so a
 * Thread#raise, Timeout or signal that arrives during the wait can never
 * lose a CQE: it is still in the CQ when the exception propagates, and the
 * caller's cleanup (cancel + drain) consumes it.
 */
#include "hyperion_io_uring.h"
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
 * valgrind < 3.21 does not treat io_uring_enter as blocking
 * (https://bugs.kde.org/show_bug.cgi?id=463859): a thread waiting in it keeps
 * valgrind's big lock, so no other thread runs meanwhile. Waiting in 10 ms
 * io_uring_enter slices was not enough: the lock is only handed over at the
 * end of a scheduling quantum, by when this thread has taken the GVL back,
 * so a Ruby thread waiting for the GVL (a writer, Timeout's thread) starved
 * for as long as the ring waited. Sleeping in poll(2) on the ring fd instead
 * freed the others, but poll is not woken by a completion queued as
 * DEFER_TASKRUN local work (see hio_wait_scheduler), so every wait took its
 * whole slice. So, under valgrind only: wait in io_uring_enter for at most
 * 1 ms (it runs the deferred work and wakes on a completion), then sleep
 * 1 ms in poll(2), which valgrind knows blocks, so it lets the other
 * threads run; repeat for at most 10 ms. Callers loop until their own
 * deadline. An interrupt (Ruby's UBF, a signal) ends the wait with EINTR.
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

int
hio_wait_nogvl(struct io_uring *ring, unsigned wait_nr, double timeout)
{
    return hio_wait_batch_nogvl(ring, wait_nr, timeout, 0);
}

int
hio_wait_batch_nogvl(struct io_uring *ring, unsigned wait_nr, double timeout, unsigned min_wait_us)
{
    struct wait_args a;

    a.ring = ring;
    a.wait_nr = wait_nr;
    a.min_wait_us = min_wait_us; /* the caller checked hio_batch_wait_supported */
    a.timeout = timeout;
    a.ret = -EINTR; /* what it means when an interrupt kept the wait from running */
#ifdef HAVE_RB_NOGVL
    /* RB_NOGVL_INTR_FAIL: with an interrupt already pending, do not enter the
     * wait at all; the caller's rb_thread_check_ints() then raises it.
     * Never RB_NOGVL_OFFLOAD_SAFE (Ruby 3.4): a scheduler may then run the
     * call on a worker thread, and a SINGLE_ISSUER/DEFER_TASKRUN ring can
     * only be entered by its own (EEXIST from any other). */
    rb_nogvl(wait_fn_nogvl, &a, RUBY_UBF_IO, NULL, RB_NOGVL_INTR_FAIL);
#else
    rb_thread_call_without_gvl(wait_fn_nogvl, &a, RUBY_UBF_IO, NULL);
#endif
    return wait_normalize(a.ret);
}

int
hio_wait_held(struct io_uring *ring, unsigned wait_nr, double timeout)
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

int
hio_submit_get_events(struct io_uring *ring)
{
    int ret;

    /* Without deferred task running the kernel posts CQEs by itself: with
     * nothing to submit and no overflow to flush, a peek needs no syscall. */
    if (io_uring_sq_ready(ring) == 0 && !(ring->flags & IORING_SETUP_DEFER_TASKRUN) &&
        !io_uring_cq_has_overflow(ring))
        return 0;
#ifdef HAVE_IO_URING_SUBMIT_AND_GET_EVENTS
    ret = io_uring_submit_and_get_events(ring);
#else
    ret = io_uring_submit(ring);
#endif
    return wait_normalize(ret);
}

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
 * *io_slot caches an IO that owns the eventfd (the ring marks it; the
 * ring's #close closes it through hio_sched_io_close; otherwise the GC).
 */
#if defined(HAVE_RB_FIBER_SCHEDULER_CURRENT) && defined(HAVE_RB_FIBER_SCHEDULER_IO_WAIT)
static int
wait_sched_fd(struct io_uring *ring, VALUE *io_slot)
{
    int efd, ret;

    if (RTEST(*io_slot)) return rb_io_descriptor(*io_slot);
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) hio_raise_errno(-errno, "eventfd (for a Fiber scheduler wait on the ring)");
    ret = io_uring_register_eventfd(ring, efd);
    if (ret < 0) {
        close(efd);
        hio_raise_errno(ret, "io_uring_register_eventfd (for a Fiber scheduler wait on the ring)");
    }
    *io_slot = rb_io_fdopen(efd, O_RDONLY, NULL);
    return efd;
}
#endif

int
hio_wait_scheduler(struct io_uring *ring, double timeout, VALUE *io_slot)
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
