/*
 * ring.c: engine of the single-shot Ring.
 *
 * One request at a time: prep, submit (the ready case completes inline, so
 * a connection already in the backlog costs one io_uring_enter), wait with
 * the GVL released, reap with it held. Whatever ends the call early (timeout,
 * Thread#raise, Timeout, Ctrl-C) cancels the request and reaps its final
 * CQE before the method returns, so the next call never sees a stale
 * completion and the kernel never writes into memory that is gone.
 */
#include "hyperion_io_uring.h"
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SRING_CANCEL_TOKEN 0u
#define SRING_DRAIN_SECONDS 2.0
#define SRING_DIRECT_STREAK 16

int
hio_sring_open(struct hio_sring *r, unsigned depth)
{
    int ret = hio_queue_init(&r->uring, depth, 0, &r->flags);

    if (ret < 0) {
        r->uring.ring_fd = -1;
        return ret;
    }
    r->inited = 1;
    hio_owner_init(&r->owner);
    return 0;
}

void
hio_sring_close(struct hio_sring *r)
{
    if (r->inited) {
        if (hio_owner_forked(&r->owner)) hio_queue_forget(&r->uring);
        else io_uring_queue_exit(&r->uring); /* nothing is in flight between calls */
        r->inited = 0;
    }
    /* A wedged ring had a read the kernel might still finish: leak it. So
     * does a busy one: only the GC closes a ring mid-call, when the fiber
     * parked in that call (under a scheduler) was dropped without resuming. */
    if (!r->wedged && !r->busy) {
        free(r->buf);
    }
    r->buf = NULL;
    r->buf_cap = 0;
}

int
hio_sring_reserve(struct hio_sring *r, size_t len)
{
    char *nb;

    if (r->buf_cap >= len) return 0;
    if (r->wedged) return -EBUSY;
    nb = realloc(r->buf, len);
    if (!nb) return -ENOMEM;
    r->buf = nb;
    r->buf_cap = len;
    return 0;
}

/* ---- Requests ---- */

static struct io_uring_sqe *
sring_sqe(struct hio_sring *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);

    if (!sqe) {
        /* Only possible with a depth-1 ring and an unsubmitted entry. */
        io_uring_submit(&r->uring);
        sqe = io_uring_get_sqe(&r->uring);
    }
    return sqe;
}

static void
sring_prep(struct hio_sop *op)
{
    struct hio_sring *r = op->r;
    struct io_uring_sqe *sqe = sring_sqe(r);

    if (op->polling) {
        io_uring_prep_poll_add(sqe, op->fd, POLLIN);
    } else if (op->kind == HIO_SOP_ACCEPT) {
        io_uring_prep_accept(sqe, op->fd, NULL, NULL, SOCK_CLOEXEC);
    } else {
        /* offset -1: the file position, as read(2); ignored on sockets. */
        io_uring_prep_read(sqe, op->fd, r->buf, op->len, (uint64_t)-1);
    }
    op->token = ++r->seq;
    if (op->token == SRING_CANCEL_TOKEN || op->token == LIBURING_UDATA_TIMEOUT) op->token = r->seq = 1;
    io_uring_sqe_set_data64(sqe, op->token);
    op->pending = 1;
    r->ops++;
}

static void
sring_reap(struct hio_sop *op)
{
    struct io_uring *ring = &op->r->uring;
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;

    io_uring_for_each_cqe(ring, head, cqe) {
        n++;
        if (op->pending && cqe->user_data == op->token) {
            op->pending = 0;
            op->res = cqe->res;
        }
        /* else: the CQE of a cancel request; nothing else is in flight. */
    }
    io_uring_cq_advance(ring, n);
}

/* The request finished: decide whether it is the answer, or whether the
 * EAGAIN fallback needs another step. Older kernels complete accept and read
 * on an O_NONBLOCK fd with -EAGAIN (6.x polls by itself): then poll for
 * POLLIN and try again. */
static void
sring_step(struct hio_sop *op)
{
    if (op->polling) {
        op->polling = 0;
        if (op->res < 0) { op->done = 1; return; }
        sring_prep(op);
        return;
    }
    if (op->res == -EAGAIN) {
        op->polling = 1;
        sring_prep(op);
        return;
    }
    op->done = 1;
}

/* Reap; if our request finished, take the step it calls for. Returns
 * SRING_PENDING (still in the kernel), SRING_STEPPED (a new request of the
 * EAGAIN fallback is queued) or SRING_DONE. */
enum { SRING_PENDING, SRING_STEPPED, SRING_DONE };

static int
sring_advance(struct hio_sop *op)
{
    sring_reap(op);
    if (op->pending) return SRING_PENDING;
    sring_step(op);
    return op->done ? SRING_DONE : SRING_STEPPED;
}

static VALUE
sring_body(VALUE arg)
{
    struct hio_sop *op = (struct hio_sop *)arg;
    struct hio_sring *r = op->r;

    /* A kind whose last calls had to wait (an idle listener, a socket
     * without data) will likely wait again: then submit and wait in one
     * io_uring_enter, without the GVL, rather than peek first and wait in a
     * second enter. Every SRING_DIRECT_STREAK direct calls the peek is
     * tried again, so a ring whose requests turn ready goes back to it.
     * A call with no time left (timeout: 0) always peeks. */
    int direct = r->direct[op->kind] > 0 && (op->deadline < 0 || op->deadline > hio_now());

    if (direct) r->direct[op->kind]--;
    sring_prep(op);
    for (;;) {
        double timeout = -1.0;
        int ret, step;

        if (!direct) {
            /* Fast path: submit and collect what completed inline. */
            ret = hio_submit_get_events(&r->uring);
            if (ret < 0) { op->fatal = ret; return Qnil; }
            step = sring_advance(op);
            if (step == SRING_DONE) return Qnil;
            if (step == SRING_STEPPED) continue;
            r->direct[op->kind] = SRING_DIRECT_STREAK;
        }
        direct = 0;
        if (op->deadline >= 0) {
            timeout = op->deadline - hio_now();
            if (timeout <= 0) { op->timed_out = 1; return Qnil; }
        }
        r->waits++;
        if (!hio_wait_scheduler(&r->uring, timeout, &r->sched_io)) {
            ret = hio_wait_nogvl(&r->uring, 1, timeout);
            if (ret < 0) { op->fatal = ret; return Qnil; }
        }
        step = sring_advance(op);
        if (step == SRING_DONE) return Qnil;
        if (step == SRING_STEPPED) continue;
        /* Raises Thread#raise / Timeout / Interrupt; runs trap handlers. */
        rb_thread_check_ints();
    }
}

/* Cancel the pending request and reap its final CQE, waiting at most
 * SRING_DRAIN_SECONDS with the GVL held (a cancel of an accept, read or
 * poll completes at once). If the kernel still holds it, the ring is
 * wedged: its read buffer is leaked rather than freed under the kernel. */
static void
sring_cancel_and_drain(struct hio_sop *op)
{
    struct hio_sring *r = op->r;
    struct io_uring_sqe *sqe = sring_sqe(r);
    double deadline = hio_now() + SRING_DRAIN_SECONDS;

    r->cancels++;
    io_uring_prep_cancel64(sqe, op->token, 0);
    io_uring_sqe_set_data64(sqe, SRING_CANCEL_TOKEN);
    while (op->pending) {
        double left = deadline - hio_now();
        if (left <= 0) break;
        hio_wait_held(&r->uring, 1, left < 0.05 ? left : 0.05);
        sring_reap(op);
    }
    if (op->pending) {
        r->wedged = 1;
        return;
    }
    /* Drain the cancel's own CQE too, so the CQ is empty for the next call. */
    hio_submit_get_events(&r->uring);
    sring_reap(op);
}

void
hio_sring_run(struct hio_sop *op)
{
    int state = 0;

    op->pending = op->polling = op->done = op->timed_out = op->fatal = 0;
    op->res = 0;
    /* Under a Fiber scheduler the call can park its fiber; until it ends,
     * other fibers must not submit, reap (they would eat our CQE) or
     * reallocate the read buffer on this ring (ring_class.c checks). */
    op->r->busy = 1;
    rb_protect(sring_body, (VALUE)op, &state);
    if (op->pending) {
        int was_polling = op->polling;
        sring_cancel_and_drain(op);
        if (!op->pending) {
            /* It may have completed before the cancel reached it. */
            if (was_polling || op->res == -ECANCELED || op->res == -EINTR) op->res = -ECANCELED;
            else op->done = 1;
        }
    }
    op->r->busy = 0;
    if (state) {
        /* An exception ends the call: an fd accepted in the race would leak. */
        if (op->done && op->kind == HIO_SOP_ACCEPT && op->res >= 0) close(op->res);
        rb_jump_tag(state);
    }
}
