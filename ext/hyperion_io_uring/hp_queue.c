/*
 * hp_queue.c: the hot path's SQE and completion-queue primitives.
 *
 * Layer: bottom of the hot path. Calls liburing and fifo.h only.
 *
 * Completions are copied out of the kernel's CQ into the ring-owned queue
 * h->done before Ruby sees any of them, so an exception in a block, a
 * Thread#raise or a Timeout loses nothing: what was not yielded is still
 * queued for the next call. Every request the kernel holds is counted in
 * h->inflight until its final CQE.
 */
#include "hp_queue.h"
#include <errno.h>

struct io_uring_sqe *
hp_sqe(struct hio_hotpath *h)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&h->uring);

    if (!sqe) {
        /* SQ full: push it to the kernel now. With the CQ overflowing the
         * kernel may refuse (EBUSY) until the next reap; the caller then
         * gets NULL (-EBUSY). Never reap here: handlers call this. */
        h->st.io.submits++;
        io_uring_submit(&h->uring);
        sqe = io_uring_get_sqe(&h->uring);
    }
    return sqe;
}

/* A cancel is never dropped. hp_sqe has already pushed a full SQ to the
 * kernel; when even that gives no SQE (the kernel refusing a submit while
 * its CQ overflows), the target waits in cancels_owed, and every reap (which
 * makes room in the CQ) issues what is owed first. A target that ended in
 * the meantime gets -ENOENT from its cancel, which is harmless. */
static int
hp_issue_cancel(struct hio_hotpath *h, struct io_uring_sqe *sqe, uint64_t target)
{
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, hp_ud(HIO_OP_CANCEL, 0, 0));
    h->inflight++;
    return 0;
}

int
hp_prep_cancel(struct hio_hotpath *h, uint64_t target)
{
    struct io_uring_sqe *sqe;
    uint64_t *owed;

    /* Owed ones first, so cancels reach the kernel in the order asked. */
    if (h->cancels_owed.count) hp_cancels_retry(h);
    if (!h->cancels_owed.count && (sqe = hp_sqe(h))) return hp_issue_cancel(h, sqe, target);
    if (!(owed = hio_fifo_push(&h->cancels_owed, sizeof(*owed), 8))) {
        h->healthy = 0;
        return -ENOMEM;
    }
    *owed = target;
    h->st.cancels_owed++;
    return 0;
}

void
hp_cancels_retry(struct hio_hotpath *h)
{
    const uint64_t *owed;
    struct io_uring_sqe *sqe;

    while ((owed = hio_fifo_front(&h->cancels_owed, sizeof(*owed))) && (sqe = hp_sqe(h))) {
        hp_issue_cancel(h, sqe, *owed);
        hio_fifo_drop(&h->cancels_owed);
    }
}

/* io_uring_get_sqe handed the last SQE out at sq.sqe_tail - 1; the kernel
 * advances the SQ head past what it consumed, in order. */
uint32_t
hp_sq_last(const struct hio_hotpath *h)
{
    return h->uring.sq.sqe_tail - 1;
}

int
hp_sq_taken(const struct hio_hotpath *h, uint32_t pos)
{
    return (int32_t)(io_uring_smp_load_acquire(h->uring.sq.khead) - pos) > 0;
}

int
hio_hp_pop(struct hio_hotpath *h, struct hio_completion *out)
{
    const struct hio_completion *c = hio_fifo_front(&h->done, sizeof(*c));

    if (!c) return 0;
    *out = *c;
    hio_fifo_drop(&h->done);
    return 1;
}

void
hp_queue_teardown(struct hio_hotpath *h)
{
    hio_fifo_free(&h->done);
    hio_fifo_free(&h->cancels_owed);
}

int
hio_hp_peek(const struct hio_hotpath *h, struct hio_completion *out)
{
    const struct hio_completion *c = hio_fifo_front(&h->done, sizeof(*c));

    if (!c) return 0;
    *out = *c;
    return 1;
}
