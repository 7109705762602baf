/*
 * hotpath.c: engine of HotpathRing.
 *
 * One ring per worker: a multishot accept per listener, a multishot recv per
 * connection into the provided-buffer ring, and sends, all reaped in batches.
 * Completions are copied out of the CQ into h->q (ring-owned) and the CQ is
 * advanced before Ruby sees any of them, so an exception in a block, a
 * Thread#raise or a Timeout loses nothing: what was not yielded is still
 * queued for the next call.
 *
 * Lifetimes: every request the kernel holds is counted in h->inflight until
 * its final CQE (one without IORING_CQE_F_MORE). Payloads of sends are
 * ring-owned copies; recv buffers are the buffer ring's. close() cancels and
 * drains until inflight is 0, and leaks (never frees) memory the kernel may
 * still write if that fails.
 *
 * submit_close: the fd's multishot requests are cancelled at once; the
 * IORING_OP_CLOSE waits (conn->closing QUEUED) until the fd's queued sends
 * have their final CQEs, then goes into the SQ (ISSUED) with
 * IOSQE_CQE_SKIP_SUCCESS. Until the kernel takes that SQE the number is
 * still the connection's, so Ruby's submits on it are refused; once taken,
 * the number is free, and its next owner (an accept, a submit on another
 * socket) retires the entry as for any reused number.
 */
#include "hyperion_io_uring.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <limits.h>
#include <unistd.h>

#define HP_BGID 0
#define HP_CLOSE_DRAIN_SECONDS 1.0
#define HP_GEN_MASK 0xffffffu
#define HP_MAX_CQ 65536u

/* ---- user_data: kind (8 bits) | generation (24 bits) | fd or send slot (32 bits) ---- */

static inline uint64_t
hp_ud(unsigned kind, uint32_t gen, uint32_t idx)
{
    return ((uint64_t)kind << 56) | ((uint64_t)(gen & HP_GEN_MASK) << 32) | idx;
}
static inline unsigned hp_ud_kind(uint64_t ud) { return (unsigned)(ud >> 56); }
static inline uint32_t hp_ud_gen(uint64_t ud) { return (uint32_t)(ud >> 32) & HP_GEN_MASK; }
static inline uint32_t hp_ud_idx(uint64_t ud) { return (uint32_t)ud; }

/* ---- tables ---- */

static struct hio_conn *
hp_conn(struct hio_hotpath *h, int fd)
{
    if (fd < 0) return NULL;
    if ((unsigned)fd >= h->nconns) {
        unsigned n = h->nconns ? h->nconns : 64, i;
        struct hio_conn *nc;
        while (n <= (unsigned)fd) n *= 2;
        nc = realloc(h->conns, (size_t)n * sizeof(*nc));
        if (!nc) return NULL;
        for (i = h->nconns; i < n; i++) {
            memset(&nc[i], 0, sizeof(nc[i]));
            nc[i].send_head = nc[i].send_tail = -1;
        }
        h->conns = nc;
        h->nconns = n;
    }
    return &h->conns[fd];
}

/* Queue a completion for Ruby. */
static void
hp_push(struct hio_hotpath *h, int op, int fd, int64_t res, int32_t bid, uint32_t flags)
{
    struct hio_completion *c = hio_fifo_push(&h->done, sizeof(*c), 64);

    if (!c) { h->healthy = 0; return; }
    c->op_kind = op;
    c->fd = fd;
    c->result = res;
    c->buf_id = bid;
    c->flags = flags;
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

static void
hp_park(struct hio_hotpath *h, int fd)
{
    int *slot = hio_fifo_push(&h->parked, sizeof(int), 16);

    if (!slot) { h->healthy = 0; return; }
    *slot = fd;
}

/* ---- closes the kernel may not have taken yet ---- */

/* Whether the kernel has taken the SQE at free-running SQ position pos
 * (io_uring_get_sqe handed it out at sq.sqe_tail - 1; the kernel advances
 * the SQ head past what it consumed, in order). */
static int
hp_sq_taken(const struct hio_hotpath *h, uint32_t pos)
{
    return (int32_t)(io_uring_smp_load_acquire(h->uring.sq.khead) - pos) > 0;
}

/* Forgets the closes the kernel has taken: their numbers are free now. Run
 * after every submission that may have taken them (reap, flush), so a
 * position is never compared after the u32 counter wrapped. */
static void
hp_sweep_closes(struct hio_hotpath *h)
{
    const struct hio_close_pending *p;

    while ((p = hio_fifo_front(&h->closes, sizeof(*p))) && hp_sq_taken(h, p->pos)) {
        struct hio_conn *c = &h->conns[p->fd];
        if (c->closing == HIO_CLOSE_ISSUED && c->close_pos == p->pos) c->closing = HIO_CLOSE_NONE;
        hio_fifo_drop(&h->closes);
    }
}

/* ---- SQEs ---- */

static struct io_uring_sqe *
hp_sqe(struct hio_hotpath *h)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&h->uring);

    if (!sqe) {
        /* SQ full: push it to the kernel now. With the CQ overflowing the
         * kernel may refuse (EBUSY) until the next reap; the caller then
         * gets NULL (-EBUSY). Never reap here: handlers call this. */
        h->st.submits++;
        io_uring_submit(&h->uring);
        sqe = io_uring_get_sqe(&h->uring);
    }
    return sqe;
}

static int
hp_prep_cancel(struct hio_hotpath *h, uint64_t target)
{
    struct io_uring_sqe *sqe = hp_sqe(h);

    if (!sqe) return -EBUSY;
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, hp_ud(HIO_OP_CANCEL, 0, 0));
    h->inflight++;
    return 0;
}

/* Closes fd through the ring: no syscall of its own, the SQE goes with the
 * next enter. c is NULL for a number the ring keeps no entry for (not
 * open). Where no SQE can be had (the SQ full and the kernel refusing
 * submissions while the CQ overflows) or no memory to track it, closes it
 * now with close(2): the fd is never leaked. */
static void
hp_issue_close(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    struct io_uring_sqe *sqe = NULL;
    uint32_t pos;

    h->st.closes++;
    if (!c || hio_fifo_reserve(&h->closes, sizeof(struct hio_close_pending), 16) == 0) sqe = hp_sqe(h);
    if (!sqe) {
        int err = close(fd) < 0 ? -errno : 0;
        if (c) c->closing = HIO_CLOSE_NONE;
        if (err) hp_push(h, HIO_OP_CLOSE, fd, err, -1, 0);
        return;
    }
    pos = h->uring.sq.sqe_tail - 1;
    io_uring_prep_close(sqe, fd);
    /* Without CQE_SKIP (before 5.17) the success CQE is due too: counted,
     * and dropped in hp_handle. */
    if (h->close_skip) sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    else h->inflight++;
    io_uring_sqe_set_data64(sqe, hp_ud(HIO_OP_CLOSE, 0, (uint32_t)fd));
    if (!c) return;
    c->closing = HIO_CLOSE_ISSUED;
    c->close_pos = pos;
    *(struct hio_close_pending *)hio_fifo_push(&h->closes, sizeof(struct hio_close_pending), 16) =
        (struct hio_close_pending){ fd, pos }; /* room reserved above */
}

static int
hp_send_start(struct hio_hotpath *h, int32_t slot)
{
    struct hio_send *s = &h->sends[slot];
    struct io_uring_sqe *sqe = hp_sqe(h);

    if (!sqe) return -EBUSY;
    /* MSG_WAITALL: the kernel retries a short stream send by itself (5.18+);
     * a short result still gets continued in hp_on_send. */
    io_uring_prep_send(sqe, s->fd, s->data + s->off, s->len - s->off, MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, hp_ud(HIO_OP_SEND, s->gen, (uint32_t)slot));
    s->inflight = 1;
    h->inflight++;
    return 0;
}

static void
hp_send_free(struct hio_hotpath *h, int32_t slot)
{
    struct hio_send *s = &h->sends[slot];

    free(s->data);
    s->data = NULL;
    s->fd = -1;
    s->inflight = s->cancelled = 0;
    s->next = h->send_free;
    h->send_free = slot;
}

static int32_t
hp_send_alloc(struct hio_hotpath *h)
{
    int32_t slot;

    if (h->send_free < 0) {
        unsigned n = h->nsends ? h->nsends * 2 : 64, i;
        struct hio_send *ns;
        if (n > (unsigned)INT32_MAX / 2) return -1;
        ns = realloc(h->sends, (size_t)n * sizeof(*ns)); /* the kernel holds s->data, never &sends[i] */
        if (!ns) return -1;
        for (i = h->nsends; i < n; i++) {
            memset(&ns[i], 0, sizeof(ns[i]));
            ns[i].fd = -1;
            ns[i].next = (i + 1 < n) ? (int32_t)(i + 1) : -1;
        }
        h->sends = ns;
        h->send_free = (int32_t)h->nsends;
        h->nsends = n;
    }
    slot = h->send_free;
    h->send_free = h->sends[slot].next;
    h->sends[slot].next = -1;
    return slot;
}

/* ---- multishot accept and recv ---- */

/* What one completion of a multishot request means. */
enum hp_ms_act {
    HP_MS_STALE,   /* of a connection the number no longer names: dropped */
    HP_MS_DELIVER, /* for Ruby as it is: data, an accepted fd, or an error the request survives */
    HP_MS_REARM,   /* a transient end (a cancel the kernel made): armed again, Ruby hears nothing */
    HP_MS_PARK,    /* recv ran out of buffers: re-armed once Ruby gives one back */
    HP_MS_END      /* the request is over; Ruby gets res */
};

struct hp_ms_verdict {
    uint8_t act;   /* enum hp_ms_act */
    uint8_t final; /* the kernel is done with the request: no IORING_CQE_F_MORE */
    uint8_t rearm; /* HP_MS_DELIVER: arm again once delivered */
    uint8_t next;  /* the arm state after it (enum hio_arm_state) */
    int32_t res;   /* HP_MS_END: the result Ruby gets */
};

/*
 * The one table of multishot accept and recv: (arm state, completion) ->
 * verdict. state is the request's arm state; stale says the completion's
 * generation is not the entry's any more.
 *
 * A CQE without IORING_CQE_F_MORE ends the request, whatever res is. Only
 * transient ends are re-armed: a cancel the kernel made (state still ARMED,
 * so not Ruby's), a CQ overflow (an end with a result), ENOBUFS (parked
 * until a buffer comes back). EINVAL, EBADF, ENOTSOCK and the like are
 * final: re-arming them would spin. An error with F_MORE set leaves the
 * request armed: re-arming it would stack a duplicate.
 */
static struct hp_ms_verdict
hp_ms_table(unsigned kind, unsigned state, int stale, int res, unsigned flags)
{
    struct hp_ms_verdict v = { HP_MS_DELIVER, !(flags & IORING_CQE_F_MORE), 0, (uint8_t)state, res };

    if (stale) {
        v.act = HP_MS_STALE; /* the entry's state is the new connection's */
        return v;
    }
    if (!v.final) return v;
    v.next = HIO_ARM_NONE;
    if (res > 0 || (kind == HIO_OP_ACCEPT && res == 0)) {
        v.rearm = state == HIO_ARM_ARMED; /* ended with a result: a CQ overflow */
        return v;
    }
    if (res == -ECANCELED && state == HIO_ARM_ARMED) {
        v.act = HP_MS_REARM;
    } else if (kind == HIO_OP_RECV && res == -ENOBUFS && state != HIO_ARM_CANCELLING) {
        /* The bytes stay in the socket; a re-arm after a release gets them. */
        v.act = HP_MS_PARK;
        v.next = HIO_ARM_PARKED;
    } else {
        /* EOF, a final error, or the end of a cancel Ruby asked for (an
         * ENOBUFS end while cancelling is that cancel's end too). */
        v.act = HP_MS_END;
        if (res == -ENOBUFS) v.res = -ECANCELED;
    }
    return v;
}

static uint8_t *
hp_ms_state(struct hio_conn *c, unsigned kind)
{
    return kind == HIO_OP_ACCEPT ? &c->accept : &c->recv;
}

/* Arms a multishot accept or recv on fd (for the entry's generation). */
static int
hp_ms_arm(struct hio_hotpath *h, unsigned kind, int fd, struct hio_conn *c)
{
    struct io_uring_sqe *sqe = hp_sqe(h);

    if (!sqe) return -EBUSY;
    if (kind == HIO_OP_ACCEPT) {
        io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    } else {
        io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = HP_BGID;
    }
    io_uring_sqe_set_data64(sqe, hp_ud(kind, c->gen, (uint32_t)fd));
    *hp_ms_state(c, kind) = HIO_ARM_ARMED;
    h->inflight++;
    return 0;
}

/* Arms again after a transient end. With no SQE to be had (SQ full and the
 * kernel refusing submissions while the CQ overflows) a recv is parked, to
 * be re-armed by the next reap; an accept reports -EBUSY to Ruby. */
static void
hp_ms_rearm(struct hio_hotpath *h, unsigned kind, int fd)
{
    struct hio_conn *c = &h->conns[fd];

    if (hp_ms_arm(h, kind, fd, c) == 0) {
        h->st.rearms++;
    } else if (kind == HIO_OP_ACCEPT) {
        hp_push(h, HIO_OP_ACCEPT, fd, -EBUSY, -1, 0);
    } else {
        c->recv = HIO_ARM_PARKED;
        hp_park(h, fd);
    }
}

/* Ruby asks for a multishot request on fd (claimed). */
static int
hp_ms_submit(struct hio_hotpath *h, unsigned kind, int fd, struct hio_conn *c)
{
    unsigned state = *hp_ms_state(c, kind);

    /* Already armed: a second accept would double every accept; a parked
     * recv is re-armed when buffers come back. */
    if (state == HIO_ARM_ARMED || (kind == HIO_OP_RECV && state == HIO_ARM_PARKED)) return 0;
    if (kind == HIO_OP_RECV && state == HIO_ARM_CANCELLING) {
        /* Re-armed before the cancel's final CQE: that CQE belongs to the
         * old request; a new generation keeps it from ending this one. */
        c->gen = (c->gen + 1) & HP_GEN_MASK;
    }
    return hp_ms_arm(h, kind, fd, c);
}

/* Ruby cancels fd's multishot recv and accept; their final completions
 * reach Ruby with -ECANCELED (or are dropped as stale once the number is
 * reused). A parked recv has no request in the kernel: it ends at once. */
static void
hp_ms_cancel(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    if (c->recv == HIO_ARM_ARMED) {
        hp_prep_cancel(h, hp_ud(HIO_OP_RECV, c->gen, (uint32_t)fd));
        c->recv = HIO_ARM_CANCELLING;
    } else if (c->recv == HIO_ARM_PARKED) {
        c->recv = HIO_ARM_NONE; /* its parked entry is skipped when popped */
        hp_push(h, HIO_OP_RECV, fd, -ECANCELED, -1, 0);
    }
    if (c->accept == HIO_ARM_ARMED) {
        hp_prep_cancel(h, hp_ud(HIO_OP_ACCEPT, c->gen, (uint32_t)fd));
        c->accept = HIO_ARM_CANCELLING;
    }
}

/* The entry is retired: armed requests are cancelled without a word to
 * Ruby (their late CQEs are stale once the generation moves on). */
static void
hp_ms_forget(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    if (c->recv == HIO_ARM_ARMED) hp_prep_cancel(h, hp_ud(HIO_OP_RECV, c->gen, (uint32_t)fd));
    if (c->accept == HIO_ARM_ARMED) hp_prep_cancel(h, hp_ud(HIO_OP_ACCEPT, c->gen, (uint32_t)fd));
    c->recv = c->accept = HIO_ARM_NONE;
}

/* Closing the ring on a kernel without IORING_ASYNC_CANCEL_ANY: cancels
 * every multishot request the kernel may still hold, one by one. */
static void
hp_ms_cancel_every(struct hio_hotpath *h)
{
    unsigned i;

    for (i = 0; i < h->nconns; i++) {
        struct hio_conn *c = &h->conns[i];
        if (c->recv == HIO_ARM_ARMED || c->recv == HIO_ARM_CANCELLING)
            hp_prep_cancel(h, hp_ud(HIO_OP_RECV, c->gen, i));
        if (c->accept == HIO_ARM_ARMED || c->accept == HIO_ARM_CANCELLING)
            hp_prep_cancel(h, hp_ud(HIO_OP_ACCEPT, c->gen, i));
    }
}

/* Re-arm parked recvs, at most one per buffer the kernel has back. This can
 * overestimate (a buffer filled but not reaped yet counts as free, and one
 * multishot recv may take several), so some re-armed recvs end in ENOBUFS
 * again; counting only buffers released since the last park would be
 * cheaper but can stall: a re-armed recv whose socket has nothing left to
 * read uses no buffer, and no further release comes to re-arm the rest. */
static void
hp_unpark(struct hio_hotpath *h)
{
    unsigned avail = h->bufs.n - h->bufs.in_use;

    while (h->parked.count > 0 && avail > 0) {
        int fd = *(int *)hio_fifo_front(&h->parked, sizeof(int));
        struct hio_conn *c = &h->conns[fd];
        hio_fifo_drop(&h->parked);
        if (c->recv != HIO_ARM_PARKED) continue; /* cancelled or replaced meanwhile */
        if (hp_ms_arm(h, HIO_OP_RECV, fd, c) < 0) { hp_park(h, fd); c->recv = HIO_ARM_PARKED; break; }
        h->st.rearms++;
        avail--;
    }
}

/* Whether a CQE of a multishot request of kind ends it (accounting while
 * the ring is torn down). */
static int
hp_ms_final(unsigned kind, int res, unsigned flags)
{
    return hp_ms_table(kind, HIO_ARM_NONE, 1, res, flags).final;
}

/* The fd number now names another connection (it was accepted anew, or a
 * different socket was armed on it). Requests of the previous one are
 * cancelled; their late CQEs no longer match c->gen and are dropped. */
static void
hp_retire(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    int32_t slot = c->send_head;

    hp_ms_forget(h, fd, c);
    while (slot >= 0) {
        int32_t next = h->sends[slot].next;
        if (h->sends[slot].inflight) {
            hp_prep_cancel(h, hp_ud(HIO_OP_SEND, h->sends[slot].gen, (uint32_t)slot));
            h->sends[slot].next = -1; /* orphan: freed at its final CQE */
        } else {
            /* Never started (queued behind one in flight, possibly one Ruby
             * cancelled): report it now, before the number's new owner. */
            hp_push(h, HIO_OP_SEND, fd, -ECANCELED, -1, 0);
            hp_send_free(h, slot);
        }
        slot = next;
    }
    /* A close waiting for those sends: the number was closed behind the
     * ring's back (it is reused now), so it must never be closed for the
     * old connection. Ruby learns, as close(2) twice would tell it. */
    if (c->closing == HIO_CLOSE_QUEUED) hp_push(h, HIO_OP_CLOSE, fd, -EBADF, -1, 0);
    c->closing = HIO_CLOSE_NONE; /* an ISSUED close has run: the number is the new owner's */
    c->gen = (c->gen + 1) & HP_GEN_MASK;
    c->send_head = c->send_tail = -1;
    c->ino = c->dev = 0;
}

static void
hp_recycle(struct hio_hotpath *h, unsigned flags)
{
    /* A stale recv consumed a buffer Ruby will never see: give it back. */
    unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
    if (bid < h->bufs.n && !h->bufs.held[bid]) {
        h->bufs.held[bid] = 1;
        h->bufs.in_use++;
        hio_bufring_release(&h->bufs, bid);
    }
}

/* Hands a multishot result to Ruby. An accepted fd retires whatever the
 * ring still kept for its number, first: completions of that old
 * connection reach Ruby before the new one's. Returns 0 when the ring
 * broke instead. */
static int
hp_deliver(struct hio_hotpath *h, unsigned kind, int fd, int res, unsigned flags)
{
    if (kind == HIO_OP_ACCEPT && res >= 0) {
        struct hio_conn *nc = hp_conn(h, res); /* may move h->conns */
        if (!nc) { close(res); h->healthy = 0; return 0; }
        hp_retire(h, res, nc);
        h->st.accepts++;
    } else if (kind == HIO_OP_RECV && res > 0) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        if (!(flags & IORING_CQE_F_BUFFER) || hio_bufring_take(&h->bufs, bid, (unsigned)res) < 0) {
            /* The kernel handed us a buffer we think it does not have. */
            h->healthy = 0;
            hp_push(h, HIO_OP_RECV, fd, -EFAULT, -1, flags);
            return 0;
        }
        h->st.recvs++;
        h->st.recv_bytes += (uint64_t)res;
        hp_push(h, HIO_OP_RECV, fd, res, (int32_t)bid, flags);
        return 1;
    }
    /* F_BUFFER on an error CQE (one stable kernel did that) is ignored:
     * re-adding a buffer the kernel may still list would corrupt. */
    hp_push(h, (int)kind, fd, res, -1, flags);
    return 1;
}

static void
hp_on_multishot(struct hio_hotpath *h, unsigned kind, int fd, uint32_t gen, int res, unsigned flags)
{
    struct hio_conn *c = &h->conns[fd];
    struct hp_ms_verdict v = hp_ms_table(kind, *hp_ms_state(c, kind), c->gen != gen, res, flags);

    if (v.final) h->inflight--;
    if (v.act == HP_MS_STALE) {
        h->st.stale_completions++;
        if (kind == HIO_OP_ACCEPT && res >= 0) close(res); /* nobody wants this connection */
        if (kind == HIO_OP_RECV && res > 0 && (flags & IORING_CQE_F_BUFFER)) hp_recycle(h, flags);
        return;
    }
    *hp_ms_state(c, kind) = v.next;
    if (kind == HIO_OP_RECV && res == -ENOBUFS && v.final) h->st.enobufs++;
    switch (v.act) {
      case HP_MS_DELIVER:
        if (hp_deliver(h, kind, fd, res, flags) && v.rearm) hp_ms_rearm(h, kind, fd);
        break;
      case HP_MS_REARM:
        hp_ms_rearm(h, kind, fd);
        break;
      case HP_MS_PARK:
        hp_park(h, fd);
        break;
      case HP_MS_END:
        hp_push(h, (int)kind, fd, v.res, -1, flags);
        break;
    }
}

static void
hp_fail_sends(struct hio_hotpath *h, struct hio_conn *c, int fd, int64_t err)
{
    while (c->send_head >= 0) {
        int32_t slot = c->send_head;
        c->send_head = h->sends[slot].next;
        hp_push(h, HIO_OP_SEND, fd, err, -1, 0);
        hp_send_free(h, slot);
    }
    c->send_tail = -1;
}

static int hp_fd_identity(int fd, uint64_t *ino, uint64_t *dev);

/* Sends started while reaping (a short send's continuation, the next one
 * queued on the fd) name the socket by fd number. If Ruby closed the number
 * without cancel() and it now names another socket, the old connection's
 * bytes must not go there: compare with the socket submit_send recorded. */
static int
hp_same_socket(int fd, const struct hio_conn *c)
{
    uint64_t ino = 0, dev = 0;

    if (hp_fd_identity(fd, &ino, &dev) < 0) return 0;
    return ino == c->ino && dev == c->dev;
}

/* submit_close's close, once the fd's last queued send has ended (sent,
 * failed or cancelled). The number is checked first, as for a send started
 * while reaping: if Ruby closed it meanwhile and it names another socket
 * now, closing it would close that one. */
static void
hp_close_after_sends(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    if (c->closing != HIO_CLOSE_QUEUED || c->send_head >= 0) return;
    if ((c->ino || c->dev) && !hp_same_socket(fd, c)) {
        c->closing = HIO_CLOSE_NONE;
        hp_push(h, HIO_OP_CLOSE, fd, -EBADF, -1, 0);
        return;
    }
    hp_issue_close(h, fd, c);
}

static void
hp_on_send(struct hio_hotpath *h, int32_t slot, uint32_t gen, int res, unsigned flags)
{
    struct hio_send *s;
    struct hio_conn *c;
    int fd, cancelled;
    int64_t result;

    h->inflight--;
    if (slot < 0 || (unsigned)slot >= h->nsends) return;
    s = &h->sends[slot];
    s->inflight = 0;
    fd = s->fd;
    c = hp_conn(h, fd);
    if (!c || c->gen != gen || s->gen != gen) {
        h->st.stale_completions++;
        hp_send_free(h, slot);
        return;
    }
    /* Bytes the kernel sent count even when Ruby cancelled meanwhile: a
     * send that finished before the cancel reached it reports its length. */
    if (res > 0) s->off += (size_t)res;
    if (!s->cancelled && ((res > 0 && s->off < s->len) || res == -EAGAIN || res == -EINTR)) {
        if (res > 0) h->st.short_sends++;
        if (!hp_same_socket(fd, c)) res = -EBADF;
        else if (hp_send_start(h, slot) == 0) return;
        else res = -EBUSY;
    }
    cancelled = s->cancelled;
    if (s->off == s->len) {
        result = (int64_t)s->len;
        h->st.sends++;
        h->st.send_bytes += s->len;
    } else {
        result = res < 0 ? res : -ECANCELED;
    }
    hp_push(h, HIO_OP_SEND, fd, result, -1, 0);
    c->send_head = s->next;
    if (c->send_head < 0) c->send_tail = -1;
    hp_send_free(h, slot);
    if (result < 0 || cancelled) {
        /* Later sends on a failed or cancelled stream cannot succeed in
         * order; they report after this one, in the order they were queued. */
        hp_fail_sends(h, c, fd, result < 0 ? result : -ECANCELED);
    } else if (c->send_head >= 0) {
        if (!hp_same_socket(fd, c)) hp_fail_sends(h, c, fd, -EBADF);
        else if (hp_send_start(h, c->send_head) < 0) hp_fail_sends(h, c, fd, -EBUSY);
    }
    hp_close_after_sends(h, fd, c);
}

static void
hp_handle(struct hio_hotpath *h, uint64_t ud, int res, unsigned flags)
{
    unsigned kind = hp_ud_kind(ud);
    uint32_t gen = hp_ud_gen(ud), idx = hp_ud_idx(ud);

    if (h->closing) {
        /* Tearing down: only account for what the kernel gave back. A close
         * was counted only when its success CQE was due too. */
        if (kind == HIO_OP_CLOSE) {
            if (!h->close_skip) h->inflight--;
            return;
        }
        if (kind == HIO_OP_SEND || kind == HIO_OP_CANCEL ||
            ((kind == HIO_OP_ACCEPT || kind == HIO_OP_RECV) && hp_ms_final(kind, res, flags)))
            h->inflight--;
        if (kind == HIO_OP_CANCEL && res == -EINVAL) h->cancel_any_failed = 1;
        return;
    }
    switch (kind) {
      case HIO_OP_ACCEPT:
      case HIO_OP_RECV:
        if (idx < h->nconns) hp_on_multishot(h, kind, (int)idx, gen, res, flags);
        break;
      case HIO_OP_SEND:
        hp_on_send(h, (int32_t)idx, gen, res, flags);
        break;
      case HIO_OP_CLOSE:
        /* Under CQE_SKIP_SUCCESS only a failure posts a CQE; without it the
         * success CQE is dropped here: Ruby hears of failed closes only. */
        if (!h->close_skip) h->inflight--;
        if (res < 0) hp_push(h, HIO_OP_CLOSE, (int)idx, res, -1, 0);
        break;
      case HIO_OP_CANCEL:
        h->inflight--;
        break;
      default:
        break; /* liburing's own timeout SQE on kernels without EXT_ARG */
    }
}

static void
hp_reap(struct hio_hotpath *h)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;

    if (h->closes.count) hp_sweep_closes(h);
    if (io_uring_cq_has_overflow(&h->uring)) h->st.cq_overflows++;
    /* Copy each CQE out and advance before handling: handlers may queue
     * SQEs, and nothing here calls into Ruby. */
    for (;;) {
        struct io_uring_cqe batch[64];
        unsigned i;
        n = 0;
        io_uring_for_each_cqe(&h->uring, head, cqe) {
            batch[n] = *cqe;
            if (++n == 64) break;
        }
        if (n == 0) break;
        io_uring_cq_advance(&h->uring, n);
        for (i = 0; i < n; i++) hp_handle(h, batch[i].user_data, batch[i].res, batch[i].flags);
    }
}

/* ---- public engine API ---- */

int
hio_hp_open(struct hio_hotpath *h, unsigned depth, unsigned n_bufs, unsigned buf_size)
{
    unsigned cq = depth * 4;
    int ret;

    if (cq < 256) cq = 256;
    if (cq < n_bufs * 2) cq = n_bufs * 2;
    if (cq > HP_MAX_CQ) cq = HP_MAX_CQ;
    h->uring.ring_fd = -1;
    h->send_free = -1;
    ret = hio_queue_init(&h->uring, depth, cq, &h->flags);
    if (ret < 0) {
        h->uring.ring_fd = -1;
        snprintf(h->err, sizeof(h->err), "io_uring_setup");
        return ret;
    }
    ret = hio_bufring_setup(&h->bufs, &h->uring, n_bufs, buf_size, HP_BGID);
    if (ret < 0) {
        io_uring_queue_exit(&h->uring);
        h->uring.ring_fd = -1;
        snprintf(h->err, sizeof(h->err), "io_uring_register_buf_ring(%u x %u bytes)", n_bufs, buf_size);
        return ret;
    }
    {
        /* HYPERION_IO_URING_CQE_SKIP=0: closes without IOSQE_CQE_SKIP_SUCCESS,
         * as on kernels before 5.17 (a test seam for that path). */
        const char *env = getenv("HYPERION_IO_URING_CQE_SKIP");
        h->close_skip = (h->uring.features & IORING_FEAT_CQE_SKIP) && !(env && strcmp(env, "0") == 0);
    }
    hio_owner_init(&h->owner);
    {
        /* HYPERION_IO_URING_MIN_WAIT=0: no kernel batch waits, as on kernels
         * before 6.12 (a test seam for that path). */
        const char *env = getenv("HYPERION_IO_URING_MIN_WAIT");
        h->batch_wait = hio_batch_wait_supported(&h->uring) && !(env && strcmp(env, "0") == 0);
    }
    h->depth = depth;
    h->inited = 1;
    h->healthy = 1;
    h->magic = HIO_HOTPATH_MAGIC;
    hio_registry_add(h);
    return 0;
}

static int
hp_fd_identity(int fd, uint64_t *ino, uint64_t *dev)
{
    struct stat st;
    if (fstat(fd, &st) < 0) return -errno;
    *ino = (uint64_t)st.st_ino;
    *dev = (uint64_t)st.st_dev;
    return 0;
}

/* A submit on a number submit_close is closing: -ESHUTDOWN while the number
 * is still that connection's (the close waits for sends, or is still in
 * the SQ). A close the kernel took has run: forgotten, and the number
 * (open again, since fstat found it) is treated as reused by the caller. */
static int
hp_check_closing(struct hio_hotpath *h, struct hio_conn *c, uint64_t ino, uint64_t dev)
{
    if (c->closing == HIO_CLOSE_QUEUED) {
        /* Sends are queued, so the identity is known; another socket on the
         * number means Ruby closed it itself: the caller retires it. */
        return ino == c->ino && dev == c->dev ? -ESHUTDOWN : 0;
    }
    if (c->closing == HIO_CLOSE_ISSUED) {
        if (!hp_sq_taken(h, c->close_pos)) return -ESHUTDOWN;
        c->closing = HIO_CLOSE_NONE;
    }
    return 0;
}

/* The one way a number is claimed for a submit: learn which socket fd
 * names now and refuse while submit_close still owns the number. If it
 * named another socket before (closed without cancel and reused, or
 * accepted elsewhere), the entry is retired first. Returns 0 with *out, or
 * -errno. */
static int
hp_claim(struct hio_hotpath *h, int fd, struct hio_conn **out)
{
    struct hio_conn *c;
    uint64_t ino, dev;
    int ret = hp_fd_identity(fd, &ino, &dev);

    if (ret < 0) return ret;
    if (!(c = hp_conn(h, fd))) return -ENOMEM;
    if (c->closing && (ret = hp_check_closing(h, c, ino, dev)) < 0) return ret;
    if (c->ino != ino || c->dev != dev) {
        /* An entry with no identity has nothing to retire: nothing was
         * armed or queued on it since it was accepted or retired. */
        if (c->ino || c->dev) hp_retire(h, fd, c);
        c->ino = ino;
        c->dev = dev;
    }
    *out = c;
    return 0;
}

int
hio_hp_submit_accept(struct hio_hotpath *h, int fd)
{
    struct hio_conn *c;
    int ret = hp_claim(h, fd, &c);

    if (ret < 0) return ret;
    return hp_ms_submit(h, HIO_OP_ACCEPT, fd, c);
}

int
hio_hp_submit_recv(struct hio_hotpath *h, int fd)
{
    struct hio_conn *c;
    int ret = hp_claim(h, fd, &c);

    if (ret < 0) return ret;
    return hp_ms_submit(h, HIO_OP_RECV, fd, c);
}

int
hio_hp_submit_sendv(struct hio_hotpath *h, int fd, const struct iovec *iov, unsigned iovcnt)
{
    struct hio_conn *c;
    struct hio_send *s;
    size_t len = 0, off = 0;
    unsigned i;
    int32_t slot;
    int ret;

    if (iovcnt > IOV_MAX) return -EINVAL;
    for (i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len && !iov[i].iov_base) return -EFAULT;
        if (iov[i].iov_len > SIZE_MAX / 2 - len) return -EINVAL;
        len += iov[i].iov_len;
    }
    if (fd < 0) return -EBADF;
    c = (unsigned)fd < h->nconns ? &h->conns[fd] : NULL;
    /* Claimed on its first use since it was accepted or armed, when sends
     * are still pending on it (if it names another socket now, the new send
     * must not queue behind the old connection's), and after submit_close.
     * Otherwise no syscall: an idle keep-alive connection's send costs none. */
    if ((!c || (!c->ino && !c->dev) || c->send_head >= 0 || c->closing) && (ret = hp_claim(h, fd, &c)) < 0)
        return ret;
    if (len == 0) {
        hp_push(h, HIO_OP_SEND, fd, 0, -1, 0);
        return 0;
    }
    slot = hp_send_alloc(h);
    if (slot < 0) return -ENOMEM;
    s = &h->sends[slot];
    /* The caller's memory may be freed or moved the moment we return. */
    s->data = malloc(len);
    if (!s->data) { hp_send_free(h, slot); return -ENOMEM; }
    for (i = 0; i < iovcnt; i++) {
        memcpy(s->data + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    s->len = len;
    s->off = 0;
    s->fd = fd;
    s->gen = c->gen;
    s->next = -1;
    if (c->send_tail < 0) {
        c->send_head = c->send_tail = slot;
        ret = hp_send_start(h, slot);
        if (ret < 0) {
            c->send_head = c->send_tail = -1;
            hp_send_free(h, slot);
            return ret;
        }
    } else {
        /* Queued behind the one in flight: sends on one fd stay in order. */
        h->sends[c->send_tail].next = slot;
        c->send_tail = slot;
    }
    return 0;
}

int
hio_hp_submit_send(struct hio_hotpath *h, int fd, const void *data, size_t len)
{
    struct iovec iov;

    iov.iov_base = (void *)data;
    iov.iov_len = len;
    return hio_hp_submit_sendv(h, fd, &iov, 1);
}

int
hio_hp_cancel(struct hio_hotpath *h, int fd)
{
    struct hio_conn *c;

    if (fd < 0) return -EINVAL;
    if ((unsigned)fd >= h->nconns) return 0;
    c = &h->conns[fd];
    hp_ms_cancel(h, fd, c);
    if (c->send_head >= 0) {
        int32_t head = c->send_head;
        struct hio_send *s = &h->sends[head];
        if (s->inflight) {
            /* The sends queued behind it fail when its final CQE arrives
             * (hp_on_send), so completions keep the order of the calls. */
            s->cancelled = 1;
            hp_prep_cancel(h, hp_ud(HIO_OP_SEND, s->gen, (uint32_t)head));
        } else {
            hp_fail_sends(h, c, fd, -ECANCELED);
            hp_close_after_sends(h, fd, c); /* cancel after submit_close: close now */
        }
    }
    return 0;
}

int
hio_hp_submit_close(struct hio_hotpath *h, int fd)
{
    struct hio_conn *c;

    if (fd < 0) return -EBADF;
    /* The kernel refuses to close a ring through a ring, but the close(2)
     * fallbacks would not, and io_uring_queue_exit would close it again. */
    if (fd == h->uring.ring_fd) return -EINVAL;
    if ((unsigned)fd >= h->nconns) {
        /* A number the ring never saw: grow the table only if it is open
         * (Ruby may pass any Integer); a number that is not open gets its
         * -EBADF from the kernel like any other. */
        if (fcntl(fd, F_GETFD) < 0) {
            hp_issue_close(h, fd, NULL);
            return 0;
        }
        if (!(c = hp_conn(h, fd))) return -ENOMEM;
    } else {
        c = &h->conns[fd];
    }
    if (c->closing == HIO_CLOSE_QUEUED) return -EALREADY;
    if (c->closing == HIO_CLOSE_ISSUED) {
        if (!hp_sq_taken(h, c->close_pos)) return -EALREADY;
        /* The first close has run: the number is closed, or names whatever
         * was opened since; closing it again is what close(2) twice does. */
        c->closing = HIO_CLOSE_NONE;
    }
    hp_ms_cancel(h, fd, c);
    if (c->send_head >= 0) {
        c->closing = HIO_CLOSE_QUEUED; /* hp_close_after_sends, at the last send's end */
        return 0;
    }
    hp_issue_close(h, fd, c);
    return 0;
}

int
hio_hp_flush(struct hio_hotpath *h)
{
    int ret;

    if (io_uring_sq_ready(&h->uring) == 0) return 0;
    h->st.submits++;
    ret = io_uring_submit(&h->uring);
    if (h->closes.count) hp_sweep_closes(h);
    return ret == -EBUSY || ret == -EAGAIN ? 0 : ret;
}

int
hio_hp_release(struct hio_hotpath *h, unsigned bid)
{
    int ret = hio_bufring_check(&h->bufs, (long)bid);

    if (ret < 0) return ret;
    hio_bufring_release(&h->bufs, bid);
    if (h->parked.count) hp_unpark(h);
    return 0;
}

int
hio_hp_wait(struct hio_hotpath *h, unsigned want, double timeout, int interruptible, unsigned min_wait_us)
{
    double deadline = timeout < 0 ? -1.0 : hio_now() + timeout;

    for (;;) {
        double left = -1.0;
        unsigned nr;
        int ret;

        if (io_uring_cq_ready(&h->uring)) { hp_reap(h); hp_unpark(h); }
        if (h->done.count >= want && want > 0) return 0;
        if (timeout == 0 || want == 0) {
            /* min_complete: 0 (upstream's polling form) or timeout_ms: 0:
             * do not wait; submit, let the kernel run deferred work, peek. */
            if (io_uring_sq_ready(&h->uring)) h->st.submits++;
            ret = hio_submit_get_events(&h->uring);
            hp_reap(h);
            hp_unpark(h);
            return ret;
        }
        if (deadline >= 0) {
            left = deadline - hio_now();
            if (left <= 0) return 0;
        }
        /* Wake for the first CQE, not for want - q_count of them: requests
         * the ring starts itself while reaping (a send queued behind
         * another on its fd, a short send's continuation, a re-arm) cannot
         * complete before that reap, so the kernel alone may never see
         * enough CQEs (min_complete: 2 with two sends on one fd waited for
         * the whole timeout, or forever). The loop re-checks q_count. */
        nr = 1;
        h->st.waits++;
        if (io_uring_sq_ready(&h->uring)) h->st.submits++;
        if (interruptible) {
            if (hio_wait_scheduler(&h->uring, left, &h->sched_io)) {
                ret = hio_submit_get_events(&h->uring);
            } else if (min_wait_us && want > h->done.count + 1 && h->batch_wait) {
                /* A batch wait ends at min_wait_us with whatever is there
                 * (at least one), so the ring's own late requests cannot
                 * stall it; the caller gets what it brought, even if less
                 * than want. */
                h->st.batch_waits++;
                ret = hio_wait_batch_nogvl(&h->uring, want - h->done.count, left, min_wait_us);
                if (ret < 0) { h->healthy = 0; return ret; }
                hp_reap(h);
                hp_unpark(h);
                if (h->done.count > 0) return 0;
                rb_thread_check_ints();
                continue;
            } else {
                ret = hio_wait_nogvl(&h->uring, nr, left);
            }
        } else {
            ret = hio_wait_held(&h->uring, nr, left < 0 || left > 0.05 ? 0.05 : left);
        }
        if (ret < 0) { h->healthy = 0; return ret; }
        hp_reap(h);
        hp_unpark(h);
        /* A batch wait the kernel cannot make (no IORING_FEAT_MIN_TIMEOUT,
         * valgrind, a Fiber scheduler) ends at the first completion, as the
         * batch wait would once min_wait_us passed. */
        if (h->done.count >= want || (min_wait_us && h->done.count > 0)) return 0;
        if (interruptible) rb_thread_check_ints();
    }
}

static void
hp_free_tables(struct hio_hotpath *h, int kernel_may_write)
{
    unsigned i;

    for (i = 0; i < h->nsends; i++) {
        /* A send the kernel may still read from keeps its payload (leaked). */
        if (h->sends[i].data && !(kernel_may_write && h->sends[i].inflight)) free(h->sends[i].data);
    }
    free(h->sends);
    free(h->conns);
    hio_fifo_free(&h->done);
    hio_fifo_free(&h->parked);
    hio_fifo_free(&h->closes);
    h->sends = NULL;
    h->conns = NULL;
    h->nsends = h->nconns = 0;
    h->send_free = -1;
}

/* Cancel everything in flight and reap until the kernel holds nothing of
 * ours, for at most HP_CLOSE_DRAIN_SECONDS with the GVL held. */
static void
hp_drain_all(struct hio_hotpath *h)
{
    double deadline = hio_now() + HP_CLOSE_DRAIN_SECONDS;
    int fallback_done = 0;

    h->closing = 1;
    if (h->inflight <= 0) return;
    {
        /* IORING_ASYNC_CANCEL_ANY (5.19): one SQE cancels every request. */
        struct io_uring_sqe *sqe = hp_sqe(h);
        if (sqe) {
            io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
            io_uring_sqe_set_data64(sqe, hp_ud(HIO_OP_CANCEL, 0, 0));
            h->inflight++;
        }
    }
    while (h->inflight > 0) {
        double left = deadline - hio_now();
        if (left <= 0) break;
        hio_wait_held(&h->uring, 1, left < 0.05 ? left : 0.05);
        hp_reap(h);
        if (h->cancel_any_failed && !fallback_done) {
            /* Older kernel: cancel request by request. */
            unsigned i;
            fallback_done = 1;
            hp_ms_cancel_every(h);
            for (i = 0; i < h->nsends; i++)
                if (h->sends[i].inflight) hp_prep_cancel(h, hp_ud(HIO_OP_SEND, h->sends[i].gen, i));
        }
    }
}

/* At ring close, the closes submit_close asked for that the kernel never
 * got: still waiting for sends (which the drain cancelled), or still in the
 * SQ (never submitted, or refused). Done with close(2): never leaked. */
static void
hp_close_leftovers(struct hio_hotpath *h)
{
    unsigned i;

    hp_sweep_closes(h);
    for (i = 0; i < h->closes.count; i++) {
        const struct hio_close_pending *p = hio_fifo_at(&h->closes, sizeof(*p), i);
        struct hio_conn *c = &h->conns[p->fd];
        if (c->closing != HIO_CLOSE_ISSUED || c->close_pos != p->pos) continue;
        c->closing = HIO_CLOSE_NONE;
        close(p->fd); /* counted in closes when it was issued */
    }
    h->closes.count = 0;
    for (i = 0; i < h->nconns; i++) {
        struct hio_conn *c = &h->conns[i];
        if (c->closing != HIO_CLOSE_QUEUED) continue;
        c->closing = HIO_CLOSE_NONE;
        if (!(c->ino || c->dev) || hp_same_socket((int)i, c)) {
            h->st.closes++;
            close((int)i);
        }
    }
}

void
hio_hp_close(struct hio_hotpath *h)
{
    int kernel_may_write;

    if (!h->inited) return;
    hio_registry_remove(h);
    h->magic = 0;
    if (hio_owner_forked(&h->owner)) {
        /* The child never submits to, cancels on or unregisters from the
         * parent's ring; its buffer memory was never mapped here (DONTFORK). */
        hio_bufring_teardown(&h->bufs, NULL, 1);
        hio_queue_forget(&h->uring);
        hp_free_tables(h, 1);
        h->inited = 0;
        h->closed = 1;
        return;
    }
    if (hio_owner_other_thread(&h->owner)) {
        /* Only the GC gets here (methods check the thread). A single-issuer
         * ring refuses submissions from this thread, so nothing can be
         * cancelled: closing the fd makes the kernel cancel, but not
         * synchronously, so what it may still write is leaked. */
        kernel_may_write = h->inflight > 0;
    } else {
        hp_drain_all(h);
        kernel_may_write = h->inflight > 0;
    }
    hp_close_leftovers(h);
    if (kernel_may_write) h->leaked = 1;
    hio_bufring_teardown(&h->bufs, &h->uring, kernel_may_write);
    io_uring_queue_exit(&h->uring);
    hp_free_tables(h, kernel_may_write);
    h->inited = 0;
    h->closed = 1;
}

/* ---- probe ---- */

static int
hp_probe_listener(int *lfd_out, struct sockaddr_in *addr)
{
    socklen_t alen = sizeof(*addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    if (fd < 0) return -errno;
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)addr, sizeof(*addr)) < 0 || listen(fd, 8) < 0 ||
        getsockname(fd, (struct sockaddr *)addr, &alen) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    *lfd_out = fd;
    return 0;
}

/* Waits (GVL held, at most 1 s) for the next completion of op. */
static int
hp_probe_next(struct hio_hotpath *h, int op, struct hio_completion *out)
{
    double deadline = hio_now() + 1.0;

    while (hio_now() < deadline) {
        while (hio_hp_pop(h, out)) if (out->op_kind == op) return 0;
        if (hio_hp_wait(h, 1, 0.05, 0, 0) < 0) return -EIO;
    }
    return -ETIMEDOUT;
}

/*
 * A functional probe: a small ring with a buffer ring really completes a
 * multishot accept and a multishot recv on a loopback connection. Returns
 * NULL when it worked, else reason (filled in).
 */
const char *
hio_hp_probe(char *reason, size_t cap)
{
    struct hio_hotpath h;
    struct hio_completion c;
    struct sockaddr_in addr;
    int lfd = -1, cfd = -1, sfd = -1, ret;
    const char *step = "";

    memset(&h, 0, sizeof(h));
    ret = hio_hp_open(&h, 8, 4, 256);
    if (ret < 0) {
        snprintf(reason, cap, "%s failed: %s%s", h.err, strerror(-ret),
                 ret == -EINVAL ? " (provided buffer rings need Linux 5.19+)" : "");
        return reason;
    }
    step = "loopback listener";
    if ((ret = hp_probe_listener(&lfd, &addr)) < 0) goto fail;
    step = "multishot accept";
    if ((ret = hio_hp_submit_accept(&h, lfd)) < 0) goto fail;
    hio_hp_flush(&h);
    cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (cfd < 0 || connect(cfd, (struct sockaddr *)&addr, sizeof(addr)) < 0) { ret = -errno; step = "loopback connect"; goto fail; }
    if ((ret = hp_probe_next(&h, HIO_OP_ACCEPT, &c)) < 0) goto fail;
    if (c.result < 0) { ret = (int)c.result; goto fail; }
    sfd = (int)c.result;
    step = "multishot recv";
    if ((ret = hio_hp_submit_recv(&h, sfd)) < 0) goto fail;
    if (write(cfd, "hyperion", 8) != 8) { ret = -errno; step = "loopback write"; goto fail; }
    if ((ret = hp_probe_next(&h, HIO_OP_RECV, &c)) < 0) goto fail;
    if (c.result != 8 || c.buf_id < 0 || memcmp(hio_bufring_data(&h.bufs, (unsigned)c.buf_id), "hyperion", 8) != 0) {
        ret = c.result < 0 ? (int)c.result : -EIO;
        goto fail;
    }
    hio_hp_release(&h, (unsigned)c.buf_id);
    hio_hp_close(&h);
    close(sfd);
    close(cfd);
    close(lfd);
    return NULL;
fail:
    snprintf(reason, cap, "%s failed: %s%s", step, strerror(-ret),
             ret == -EINVAL ? " (multishot accept needs Linux 5.19+, multishot recv 6.0+)" : "");
    hio_hp_close(&h);
    if (sfd >= 0) close(sfd);
    if (cfd >= 0) close(cfd);
    if (lfd >= 0) close(lfd);
    return reason;
}
