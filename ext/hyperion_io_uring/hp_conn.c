/*
 * hp_conn.c: the hot path's per-fd entries.
 *
 * Layer: above hp_queue.c. Calls hp_queue.c, fifo.h, fdid.c, libc.
 *
 * An entry says which connection its number names: the identity (inode and
 * device) of the socket claimed for it, and a generation that changes when
 * the number starts naming another connection, so that late completions of
 * the previous one are dropped.
 *
 * submit_close: the IORING_OP_CLOSE waits (QUEUED) until the fd's queued
 * sends have their final CQEs, then goes into the SQ (ISSUED) with
 * IOSQE_CQE_SKIP_SUCCESS. Until the kernel takes that SQE the number is
 * still the connection's, so Ruby's submits on it are refused; once taken,
 * the number is free, and its next owner (an accept, a submit on another
 * socket) retires the entry as for any reused number.
 *
 * A QUEUED close may have a deadline (submit_close's timeout): a min-heap
 * of them (h->close_dls, each entry's index kept in its conn, so a close
 * that leaves QUEUED early is taken out at once) gives the earliest, which
 * bounds the ring's waits (hotpath.c); when it passes, hotpath.c cancels
 * the fd's sends and the close follows their ends. A peer that never reads
 * then costs a connection for at most the timeout, not for ever.
 */
#include "hp_conn.h"
#include "fdid.h"
#include "hp_queue.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Every idle connection pays for one (hp.h): keep it padding-free. */
_Static_assert(sizeof(struct hio_conn) == 48, "struct hio_conn grew: reorder its fields, or update the bench's note");

/* The capacity doubles, but only the entries up to fd are set up: the
 * rest of a large allocation stays untouched (glibc maps it, or extends its
 * heap, with pages the kernel supplies at first touch), so a server that
 * reached fd 10,000 keeps 10,001 entries resident, not the 16,384 a
 * doubled table holds. The kernel hands out the lowest free number, so the
 * numbers in use are dense from 0 and nconns follows the highest. */
struct hio_conn *
hp_conn_grow(struct hio_hotpath *h, int fd)
{
    unsigned i;

    if ((unsigned)fd >= h->conns_cap) {
        unsigned n = h->conns_cap ? h->conns_cap : 64;
        struct hio_conn *nc;

        while (n <= (unsigned)fd) n *= 2;
        nc = realloc(h->conns, (size_t)n * sizeof(*nc));
        if (!nc) return NULL;
        h->conns = nc;
        h->conns_cap = n;
    }
    for (i = h->nconns; i <= (unsigned)fd; i++) {
        memset(&h->conns[i], 0, sizeof(h->conns[i]));
        h->conns[i].send_head = h->conns[i].send_tail = -1; /* hp_send.c's empty queue */
    }
    h->nconns = (unsigned)fd + 1;
    return &h->conns[fd];
}

void
hp_conns_teardown(struct hio_hotpath *h)
{
    free(h->conns);
    h->conns = NULL;
    h->nconns = h->conns_cap = 0;
    hio_fifo_free(&h->closes);
    free(h->close_dls);
    h->close_dls = NULL;
    h->nclose_dls = h->close_dls_cap = 0;
}

/* ---- deadlines of QUEUED closes: a min-heap by at ---- */

static void
conn_dl_set(struct hio_hotpath *h, unsigned i, struct hio_close_dl d)
{
    h->close_dls[i] = d;
    h->conns[d.fd].close_dl = i + 1;
}

static void
conn_dl_up(struct hio_hotpath *h, unsigned i)
{
    struct hio_close_dl d = h->close_dls[i];

    while (i > 0 && h->close_dls[(i - 1) / 2].at > d.at) {
        conn_dl_set(h, i, h->close_dls[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    conn_dl_set(h, i, d);
}

static void
conn_dl_down(struct hio_hotpath *h, unsigned i)
{
    struct hio_close_dl d = h->close_dls[i];
    unsigned n = h->nclose_dls;

    for (;;) {
        unsigned l = 2 * i + 1, m = i;
        double at = d.at;
        if (l < n && h->close_dls[l].at < at) { m = l; at = h->close_dls[l].at; }
        if (l + 1 < n && h->close_dls[l + 1].at < at) m = l + 1;
        if (m == i) break;
        conn_dl_set(h, i, h->close_dls[m]);
        i = m;
    }
    conn_dl_set(h, i, d);
}

/* Takes c's deadline (if any) out of the heap. */
static void
conn_dl_remove(struct hio_hotpath *h, struct hio_conn *c)
{
    unsigned i;

    if (!c->close_dl) return;
    i = c->close_dl - 1;
    c->close_dl = 0;
    if (i != --h->nclose_dls) {
        struct hio_close_dl last = h->close_dls[h->nclose_dls];
        conn_dl_set(h, i, last);
        if (i > 0 && h->close_dls[(i - 1) / 2].at > last.at) conn_dl_up(h, i);
        else conn_dl_down(h, i);
    }
}

int
hp_conn_reserve_deadline(struct hio_hotpath *h)
{
    struct hio_close_dl *n;
    unsigned cap;

    if (h->nclose_dls < h->close_dls_cap) return 0;
    cap = h->close_dls_cap ? h->close_dls_cap * 2 : 16;
    if (!(n = realloc(h->close_dls, (size_t)cap * sizeof(*n)))) return -ENOMEM;
    h->close_dls = n;
    h->close_dls_cap = cap;
    return 0;
}

double
hp_conn_next_deadline(const struct hio_hotpath *h)
{
    return h->nclose_dls ? h->close_dls[0].at : -1.0;
}

int
hp_conn_pop_expired(struct hio_hotpath *h, double now)
{
    int fd;

    if (!h->nclose_dls || h->close_dls[0].at > now) return -1;
    fd = h->close_dls[0].fd;
    conn_dl_remove(h, &h->conns[fd]);
    return fd;
}

int
hp_conn_identity(int fd, uint64_t *ino, uint64_t *dev)
{
    struct hio_fdid id;
    int ret = hio_fdid_get(fd, &id);

    if (ret < 0) return ret;
    *ino = id.ino;
    *dev = id.dev;
    return 0;
}

/* Requests the ring starts by itself (a short send's continuation, the next
 * send queued on the fd, a close held back by sends) name the socket by fd
 * number. If Ruby closed the number without cancel and it now names another
 * socket, the old connection's bytes (or close) must not go there. */
int
hp_conn_same_socket(int fd, const struct hio_conn *c)
{
    uint64_t ino = 0, dev = 0;

    if (hp_conn_identity(fd, &ino, &dev) < 0) return 0;
    return ino == c->ino && dev == c->dev;
}

void
hp_conn_new_generation(struct hio_conn *c)
{
    c->gen = (c->gen + 1) & HP_GEN_MASK;
}

void
hp_conn_retire(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    /* A close waiting for sends: the number was closed behind the ring's
     * back (it is reused now), so it must never be closed for the old
     * connection. Ruby learns, as close(2) twice would tell it. */
    if (c->closing == HIO_CLOSE_QUEUED) hp_push(h, HIO_OP_CLOSE, fd, -EBADF, -1, 0);
    conn_dl_remove(h, c);
    c->closing = HIO_CLOSE_NONE; /* an ISSUED close has run: the number is the new owner's */
    hp_conn_new_generation(c);
    c->ino = c->dev = 0;
}

/* A claim on a number submit_close is closing: -ESHUTDOWN while the number
 * is still that connection's (the close waits for sends, or is still in
 * the SQ). A close the kernel took has run: forgotten, and the number
 * (open again, since fstat found it) is treated as reused by the caller. */
int
hp_conn_check_closing(struct hio_hotpath *h, struct hio_conn *c, uint64_t ino, uint64_t dev)
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

int
hp_conn_check_close_again(struct hio_hotpath *h, struct hio_conn *c)
{
    if (c->closing == HIO_CLOSE_QUEUED) return -EALREADY;
    if (c->closing == HIO_CLOSE_ISSUED) {
        if (!hp_sq_taken(h, c->close_pos)) return -EALREADY;
        /* The first close has run: the number is closed, or names whatever
         * was opened since; closing it again is what close(2) twice does. */
        c->closing = HIO_CLOSE_NONE;
    }
    return 0;
}

void
hp_conn_close_after_sends(struct hio_hotpath *h, int fd, struct hio_conn *c, double at)
{
    c->closing = HIO_CLOSE_QUEUED;
    if (at < 0) return;
    /* hp_conn_reserve_deadline made room. */
    h->close_dls[h->nclose_dls].at = at;
    h->close_dls[h->nclose_dls].fd = fd;
    conn_dl_up(h, h->nclose_dls++);
}

/* The number is checked first, as for a send started while reaping: if
 * Ruby closed it meanwhile and it names another socket now, closing it
 * would close that one. */
void
hp_conn_close_held_back(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    conn_dl_remove(h, c);
    if ((c->ino || c->dev) && !hp_conn_same_socket(fd, c)) {
        c->closing = HIO_CLOSE_NONE;
        hp_push(h, HIO_OP_CLOSE, fd, -EBADF, -1, 0);
        return;
    }
    hp_conn_issue_close(h, fd, c);
}

/* No syscall of its own: the SQE goes with the next enter. Where no SQE can
 * be had (the SQ full and the kernel refusing submissions while the CQ
 * overflows) or no memory to track it, closes it now with close(2): the fd
 * is never leaked. */
void
hp_conn_issue_close(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    struct io_uring_sqe *sqe = NULL;
    struct hio_close_pending *p;
    uint32_t pos;

    h->st.closes++;
    if (!c || hio_fifo_reserve(&h->closes, sizeof(*p), 16) == 0) sqe = hp_sqe(h);
    if (!sqe) {
        int err = close(fd) < 0 ? -errno : 0;
        if (c) c->closing = HIO_CLOSE_NONE;
        if (err) hp_push(h, HIO_OP_CLOSE, fd, err, -1, 0);
        return;
    }
    pos = hp_sq_last(h);
    io_uring_prep_close(sqe, fd);
    /* Without CQE_SKIP (before 5.17) the success CQE is due too: counted,
     * and dropped by the dispatcher. */
    if (h->close_skip) sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    else h->inflight++;
    io_uring_sqe_set_data64(sqe, hp_ud(HIO_OP_CLOSE, 0, (uint32_t)fd));
    if (!c) return;
    c->closing = HIO_CLOSE_ISSUED;
    c->close_pos = pos;
    p = hio_fifo_push(&h->closes, sizeof(*p), 16); /* room reserved above */
    p->fd = fd;
    p->pos = pos;
}

/* Run after every submission that may have taken them (reap, flush), so a
 * position is never compared after the u32 counter wrapped. */
void
hp_conn_sweep_closes(struct hio_hotpath *h)
{
    const struct hio_close_pending *p;

    while ((p = hio_fifo_front(&h->closes, sizeof(*p))) && hp_sq_taken(h, p->pos)) {
        struct hio_conn *c = &h->conns[p->fd];
        if (c->closing == HIO_CLOSE_ISSUED && c->close_pos == p->pos) c->closing = HIO_CLOSE_NONE;
        hio_fifo_drop(&h->closes);
    }
}

/* The closes submit_close asked for that the kernel never got: still
 * waiting for sends (which the drain cancelled), or still in the SQ (never
 * submitted, or refused). Done with close(2): never leaked. */
void
hp_conn_close_leftovers(struct hio_hotpath *h)
{
    unsigned i;

    hp_conn_sweep_closes(h);
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
        conn_dl_remove(h, c);
        c->closing = HIO_CLOSE_NONE;
        if (!(c->ino || c->dev) || hp_conn_same_socket((int)i, c)) {
            h->st.closes++;
            close((int)i);
        }
    }
}
