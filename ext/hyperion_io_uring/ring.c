/*
 * ring.c: engine of the single-shot Ring.
 *
 * Layer: engine. Calls setup.c, wait.c, owner.c and liburing.
 *
 * One request at a time: prep, then a wait wait.c runs (a peek first: the
 * ready case completes inline, so a connection already in the backlog costs
 * one io_uring_enter), reaped through sring_wait_reap. Whatever ends the
 * call early (timeout, Thread#raise, Timeout, Ctrl-C) cancels the request
 * and reaps its final CQE before the method returns (sring_wait_end), so
 * the next call never sees a stale completion and the kernel never writes
 * into memory that is gone.
 */
#include "engine.h"
#include "fdid.h"
#include "hio_valgrind.h"
#include "setup.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#define SRING_CANCEL_TOKEN 0u
#define SRING_DRAIN_SECONDS 2.0
#define SRING_DIRECT_STREAK 16

/* Bytes of a read that completed as an exception ended its call: kept for
 * the next read of the same file (fd number and identity) on this ring. */
struct sring_kept {
    struct sring_kept *next;
    int fd;
    struct hio_fdid id;
    size_t len, off;
    char data[];
};

/* A connection accepted as an exception ended its accept: kept for the
 * next accept on the same listener (fd number and identity). */
struct sring_kept_conn {
    struct sring_kept_conn *next;
    int listener;
    struct hio_fdid id;
    int fd;           /* the accepted connection's, ours until handed out */
    int flags;        /* the accept4(2) flags it was made with */
};

/* At most this many kept connections per ring: a program that interrupts
 * accepts on a listener it then never accepts on again would otherwise
 * hold their fds for ever. Past it the oldest is closed (its client sees
 * the connection reset, as it would have before connections were kept). */
#define SRING_KEPT_CONNS_MAX 64

struct hio_sring {
    struct io_uring uring;
    int inited;       /* io_uring_queue_init succeeded */
    int wedged;       /* a request could not be drained: leak its buffer */
    unsigned flags;   /* setup flags in force */
    struct hio_owner owner;
    uint64_t seq;     /* request tokens */
    char *buf;        /* read scratch, owned here, never moved by the GC */
    size_t buf_cap;
    uint64_t ops, cancels, kept_reads, kept_accepts;
    struct sring_kept *kept; /* in the order they were kept */
    struct sring_kept_conn *kept_conns; /* likewise */
    unsigned nkept_conns;
    struct hio_wait_counts io; /* its waits */
    int busy;         /* a call is running; under a scheduler its fiber may be parked */
    unsigned char direct[3]; /* per hio_sreq_kind: calls left that submit and wait in one enter */
    struct {          /* the call in progress */
        struct hio_sreq *req;
        uint64_t token;
        int pending;  /* an SQE of ours is in the kernel */
        int polling;  /* the pending SQE is the EAGAIN poll fallback */
    } op;
};

struct hio_sring *
hio_sring_new(void)
{
    struct hio_sring *r = calloc(1, sizeof(*r));

    if (r) r->uring.ring_fd = -1;
    return r;
}

void
hio_sring_free(struct hio_sring *r)
{
    hio_sring_close(r);
    free(r);
}

size_t
hio_sring_memsize(const struct hio_sring *r)
{
    size_t sz = sizeof(*r) + r->buf_cap;
    const struct sring_kept *k;

    for (k = r->kept; k; k = k->next) sz += sizeof(*k) + k->len;
    sz += (size_t)r->nkept_conns * sizeof(struct sring_kept_conn);

    if (r->inited) {
        sz += (size_t)r->uring.sq.ring_sz + (size_t)r->uring.cq.ring_sz;
        /* ring_entries, not *kring_entries: that one lives in the ring
         * mapping, which a forked child lacks (io_uring_ring_dontfork). */
        sz += (size_t)r->uring.sq.ring_entries * sizeof(struct io_uring_sqe);
    }
    return sz;
}

int
hio_sring_is_open(const struct hio_sring *r)
{
    return r->inited;
}

int
hio_sring_may(const struct hio_sring *r, enum hio_owner_use use)
{
    int v;

    if (!r->inited) return HIO_REFUSE_CLOSED;
    if ((v = (int)hio_owner_may(&r->owner, use)) != HIO_OWNER_OK) return v;
    if (use == HIO_USE_INSPECT) return 0;
    /* A forked child may close the parent's ring whatever runs there. */
    if (r->busy && !(use == HIO_USE_CLOSE && hio_owner_forked(&r->owner))) return HIO_REFUSE_BUSY;
    if (use == HIO_USE_CALL && r->wedged) return HIO_REFUSE_WEDGED;
    return 0;
}

int
hio_sring_fd(const struct hio_sring *r)
{
    return r->inited ? r->uring.ring_fd : -1;
}

const struct hio_owner *
hio_sring_owner(const struct hio_sring *r)
{
    return &r->owner;
}

void
hio_sring_stats(const struct hio_sring *r, struct hio_sring_stats *out)
{
    out->ops = r->ops;
    out->waits = r->io.waits;
    out->cancels = r->cancels;
    out->kept_reads = r->kept_reads;
    out->kept_accepts = r->kept_accepts;
    out->setup_flags = r->flags;
    hio_owner_release_deferred(0);
}

int
hio_sring_open(struct hio_sring *r, unsigned depth)
{
    int ret;

    hio_owner_release_deferred(0);
    ret = hio_queue_init(&r->uring, depth, 0, &r->flags);

    if (ret < 0) {
        r->uring.ring_fd = -1;
        return ret;
    }
    r->inited = 1;
    hio_owner_init(&r->owner);
    return 0;
}

unsigned long
hio_sring_leaked_rings(void)
{
    hio_owner_release_deferred(1);
    return hio_owner_deferred_rings(HIO_RING_SINGLE);
}

size_t
hio_sring_deferred_bytes(void)
{
    hio_owner_release_deferred(1);
    return hio_owner_deferred_bytes(HIO_RING_SINGLE);
}

/* Never blocks (the GC calls it too), and never enters the ring, so any
 * thread may run it. A wedged ring had a read the kernel might still
 * finish; a busy one is mid-call (only the GC closes a ring then, when the
 * fiber parked in that call under a scheduler was dropped without
 * resuming). Their read buffer may still be written by the owner task
 * (owner.c, "Memory after the owner"): it is freed now if that task is
 * gone, else when it is (and counted meanwhile). In a forked child it is
 * the child's own copy of the parent's buffer: freed. */
void
hio_sring_close(struct hio_sring *r)
{
    int forked = hio_owner_forked(&r->owner), held = r->wedged || r->busy;

    if (r->inited) {
        if (forked) hio_owner_forget_ring(&r->uring);
        else io_uring_queue_exit(&r->uring); /* nothing is in flight between calls */
        r->inited = 0;
        if (!forked && held && hio_owner_task_gone(&r->owner)) held = 0;
    }
    if (!held || forked) {
        free(r->buf);
    } else if (r->buf) {
        struct hio_deferral *d = hio_owner_defer_begin(&r->owner, HIO_RING_SINGLE);

        hio_owner_defer_add(d, HIO_MEM_FREE, r->buf, r->buf_cap);
        hio_owner_defer_end(d);
    }
    while (r->kept) {
        struct sring_kept *k = r->kept;
        r->kept = k->next;
        free(k);
    }
    /* Nobody will accept them now: in a forked child this closes only the
     * child's copies. */
    while (r->kept_conns) {
        struct sring_kept_conn *c = r->kept_conns;
        r->kept_conns = c->next;
        close(c->fd);
        free(c);
    }
    r->nkept_conns = 0;
    r->buf = NULL;
    r->buf_cap = 0;
    hio_owner_release_deferred(0);
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
sring_prep(struct hio_sring *r)
{
    struct hio_sreq *req = r->op.req;
    struct io_uring_sqe *sqe = sring_sqe(r);

    if (r->op.polling) {
        io_uring_prep_poll_add(sqe, req->fd, POLLIN);
    } else if (req->kind == HIO_SREQ_ACCEPT) {
        io_uring_prep_accept(sqe, req->fd, NULL, NULL, req->flags);
    } else {
        /* offset -1: the file position, as read(2); ignored on sockets. */
        io_uring_prep_read(sqe, req->fd, r->buf, req->len, (uint64_t)-1);
    }
    r->op.token = ++r->seq;
    if (r->op.token == SRING_CANCEL_TOKEN || r->op.token == LIBURING_UDATA_TIMEOUT) r->op.token = r->seq = 1;
    io_uring_sqe_set_data64(sqe, r->op.token);
    r->op.pending = 1;
    r->ops++;
}

static void
sring_reap(struct hio_sring *r)
{
    struct io_uring *ring = &r->uring;
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;

    io_uring_for_each_cqe(ring, head, cqe) {
        n++;
        if (r->op.pending && cqe->user_data == r->op.token) {
            r->op.pending = 0;
            r->op.req->res = cqe->res;
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
sring_step(struct hio_sring *r)
{
    struct hio_sreq *req = r->op.req;

    if (r->op.polling) {
        r->op.polling = 0;
        if (req->res < 0) { req->done = 1; return; }
        sring_prep(r);
        return;
    }
    if (req->res == -EAGAIN) {
        r->op.polling = 1;
        sring_prep(r);
        return;
    }
    req->done = 1;
}

/* wait.c's reap: reap; if our request finished, take the step it calls
 * for. A new request of the EAGAIN fallback is worth a peek. */
static int
sring_wait_reap(void *ctx)
{
    struct hio_sring *r = ctx;

    sring_reap(r);
    if (r->op.pending) return 0;
    sring_step(r);
    return r->op.req->done ? 0 : HIO_REAP_AGAIN;
}

static unsigned
sring_wait_ready(void *ctx)
{
    return (unsigned)((struct hio_sring *)ctx)->op.req->done;
}

static int
sring_drain_step(void *ctx)
{
    struct hio_sring *r = ctx;

    sring_reap(r);
    return !r->op.pending;
}

/* Cancel the pending request and reap its final CQE, within
 * SRING_DRAIN_SECONDS (a cancel of an accept, read or poll completes at
 * once). If the kernel still holds it, the ring is wedged: its read buffer
 * is leaked rather than freed under the kernel. */
static void
sring_cancel_and_drain(struct hio_sring *r)
{
    struct io_uring_sqe *sqe = sring_sqe(r);
    struct hio_drain d;

    r->cancels++;
    io_uring_prep_cancel64(sqe, r->op.token, 0);
    io_uring_sqe_set_data64(sqe, SRING_CANCEL_TOKEN);
    d.ring = &r->uring;
    d.budget = SRING_DRAIN_SECONDS;
    d.ctx = r;
    d.step = sring_drain_step;
    if (hio_drain(&d) < 0) {
        r->wedged = 1;
        return;
    }
    /* Drain the cancel's own CQE too, so the CQ is empty for the next call. */
    hio_submit_get_events(&r->uring);
    sring_reap(r);
}

/* ---- Reads that completed as an exception ended their call ---- */

/*
 * An interrupt (Thread#raise, Timeout, a trap that raises) can end a read
 * whose data the kernel had already copied out of the socket: the cancel
 * came too late, or the CQE was in the CQ when the exception arrived. The
 * bytes are not in the socket any more, so dropping them would lose them.
 * They are kept (copied out of the ring's buffer) and the next read of the
 * same file on this ring returns them first, without a request. The file
 * is told by its identity: if the number was closed and names another
 * file now, the bytes were the old connection's and are dropped.
 */
static void
sring_keep(struct hio_sring *r, const struct hio_sreq *req)
{
    struct sring_kept *k, **tail;

    k = malloc(sizeof(*k) + (size_t)req->res);
    if (!k) return; /* no memory: lost, as before */
    if (hio_fdid_get(req->fd, &k->id) < 0) { /* closed meanwhile: nobody reads it */
        free(k);
        return;
    }
    HIO_MEM_DEFINED(r->buf, (size_t)req->res); /* the kernel wrote it */
    memcpy(k->data, r->buf, (size_t)req->res);
    k->next = NULL;
    k->fd = req->fd;
    k->len = (size_t)req->res;
    k->off = 0;
    for (tail = &r->kept; *tail; tail = &(*tail)->next) {}
    *tail = k;
    r->kept_reads++;
}

/* Serves req from what was kept for its file: 1 when it did (the bytes are
 * in the ring's buffer, req done), 0 when nothing was kept for it. */
static int
sring_take_kept(struct hio_sring *r, struct hio_sreq *req)
{
    struct sring_kept **p = &r->kept;

    while (*p) {
        struct sring_kept *k = *p;
        size_t n;

        if (k->fd != req->fd) {
            p = &k->next;
            continue;
        }
        if (hio_fdid_check(req->fd, &k->id) < 0) { /* another file on the number now */
            *p = k->next;
            free(k);
            continue;
        }
        n = k->len - k->off < req->len ? k->len - k->off : req->len;
        memcpy(r->buf, k->data + k->off, n);
        k->off += n;
        if (k->off == k->len) {
            *p = k->next;
            free(k);
        }
        req->res = (int)n;
        req->done = 1;
        return 1;
    }
    return 0;
}

/* ---- Connections accepted as an exception ended their accept ---- */

/* Whether conn was accepted on the socket listener names now: a listening
 * socket of the same family and port (for AF_UNIX, the same address). The
 * number may have been closed and reused while the accept waited (a trap
 * handler or another thread closing the listener at shutdown). */
static int
sring_conn_of_listener(int listener, int conn)
{
    struct sockaddr_storage la, ca;
    socklen_t llen = sizeof(la), clen = sizeof(ca), alen;
    int acc = 0;

    alen = sizeof(acc);
    if (getsockopt(listener, SOL_SOCKET, SO_ACCEPTCONN, &acc, &alen) < 0 || !acc) return 0;
    if (getsockname(listener, (struct sockaddr *)&la, &llen) < 0) return 0;
    if (getsockname(conn, (struct sockaddr *)&ca, &clen) < 0) return 0;
    if (la.ss_family != ca.ss_family) return 0;
    switch (la.ss_family) {
    case AF_INET:
        return ((struct sockaddr_in *)&la)->sin_port == ((struct sockaddr_in *)&ca)->sin_port;
    case AF_INET6:
        return ((struct sockaddr_in6 *)&la)->sin6_port == ((struct sockaddr_in6 *)&ca)->sin6_port;
    case AF_UNIX:
        return llen == clen && memcmp(&la, &ca, llen) == 0;
    default:
        return 0;
    }
}

/*
 * Likewise an accept: the kernel took the connection off the listener's
 * backlog, so closing it would reset a client that did nothing wrong. It is
 * kept, and the next accept on the same listener returns it first, without
 * a request. If the listener's number names another socket by then, the
 * connection was the old listener's: closed. Returns 0, or -1 when it
 * could not be kept (the caller closes it).
 */
static int
sring_keep_conn(struct hio_sring *r, const struct hio_sreq *req)
{
    struct sring_kept_conn *c, **tail;

    if (!sring_conn_of_listener(req->fd, req->res)) return -1;
    if (!(c = malloc(sizeof(*c)))) return -1;
    if (hio_fdid_get(req->fd, &c->id) < 0) { /* the listener was closed meanwhile */
        free(c);
        return -1;
    }
    c->next = NULL;
    c->listener = req->fd;
    c->fd = req->res;
    c->flags = req->flags;
    if (r->nkept_conns == SRING_KEPT_CONNS_MAX) {
        struct sring_kept_conn *old = r->kept_conns;
        r->kept_conns = old->next;
        close(old->fd);
        free(old);
        r->nkept_conns--;
    }
    for (tail = &r->kept_conns; *tail; tail = &(*tail)->next) {}
    *tail = c;
    r->nkept_conns++;
    r->kept_accepts++;
    return 0;
}

/* Serves req from a connection kept for its listener: 1 when it did (req
 * done, res the fd), 0 when none was kept for it. The fd gets the mode
 * this call asked for (nonblock:), which may differ from its first call's. */
static int
sring_take_kept_conn(struct hio_sring *r, struct hio_sreq *req)
{
    struct sring_kept_conn **p = &r->kept_conns;

    while (*p) {
        struct sring_kept_conn *c = *p;
        int fd = c->fd;

        if (c->listener != req->fd) {
            p = &c->next;
            continue;
        }
        *p = c->next;
        r->nkept_conns--;
        if (hio_fdid_check(req->fd, &c->id) < 0) { /* another file on the number now */
            close(fd);
            free(c);
            continue;
        }
        if ((c->flags ^ req->flags) & SOCK_NONBLOCK) {
            int fl = fcntl(fd, F_GETFL);
            if (fl >= 0) fcntl(fd, F_SETFL, (req->flags & SOCK_NONBLOCK) ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK));
        }
        free(c);
        req->res = fd;
        req->done = 1;
        return 1;
    }
    return 0;
}

/* wait.c's end: runs however the wait ended (an exception included), so
 * the request never outlives the call. */
static void
sring_wait_end(void *ctx, const struct hio_wait *w)
{
    struct hio_sring *r = ctx;
    struct hio_sreq *req = r->op.req;

    if (w->err < 0) req->fatal = w->err;
    /* A kind whose last calls had to wait (an idle listener, a socket
     * without data) will likely wait again: its next SRING_DIRECT_STREAK
     * calls submit and wait in one io_uring_enter rather than peek first.
     * Then the peek is tried again, so a ring whose requests turn ready
     * goes back to it. */
    if (w->peek_missed) r->direct[req->kind] = SRING_DIRECT_STREAK;
    if (r->op.pending) {
        int was_polling = r->op.polling;
        sring_cancel_and_drain(r);
        if (!r->op.pending) {
            /* It may have completed before the cancel reached it. */
            if (was_polling || req->res == -ECANCELED || req->res == -EINTR) req->res = -ECANCELED;
            else req->done = 1;
        }
    }
    r->busy = 0;
    req->wedged = r->wedged;
    if (req->done && req->kind == HIO_SREQ_READ && req->res > 0) {
        if (w->raised) sring_keep(r, req);
        HIO_MEM_DEFINED(r->buf, (size_t)req->res); /* the kernel wrote it (or a kept read was copied) */
        req->data = r->buf;
    }
    /* An exception ends the call: a connection accepted in the race is kept
     * for the next accept on the listener. A watch that found the listener
     * closed ends it too: a connection that came in meanwhile (the socket
     * listened until the cancel) is nobody's, and the client sees it
     * reset, as for the rest of the closed socket's backlog. */
    if ((w->raised || w->watch_err) && req->done && req->kind == HIO_SREQ_ACCEPT && req->res >= 0) {
        if (w->watch_err || sring_keep_conn(r, req) < 0) close(req->res);
        req->done = 0;
        req->res = -ECANCELED;
    }
}

static const struct hio_wait_ops sring_wait_ops = { sring_wait_reap, sring_wait_ready, NULL, sring_wait_end };

void
hio_sring_begin(struct hio_sring *r, struct hio_sreq *req, struct hio_wait *w)
{
    /* A call with no time to wait (timeout: 0) always peeks. */
    int direct = r->direct[req->kind] > 0 && req->timeout != 0;

    hio_owner_release_deferred(0); /* a load, unless something is deferred */
    req->res = req->done = req->fatal = req->wedged = 0;
    req->data = NULL;
    r->op.req = req;
    r->op.pending = r->op.polling = 0;
    /* Under a Fiber scheduler the call can park its fiber; until it ends,
     * other fibers must not submit, reap (they would eat our CQE) or
     * reallocate the read buffer on this ring (ring_class.c checks). */
    r->busy = 1;
    if (direct) r->direct[req->kind]--;
    /* Bytes kept from an interrupted read of this file, or a connection
     * kept from an interrupted accept on this listener, come first. */
    if (req->kind == HIO_SREQ_READ && r->kept && sring_take_kept(r, req)) {
        /* served */
    } else if (req->kind == HIO_SREQ_ACCEPT && r->kept_conns && sring_take_kept_conn(r, req)) {
        /* served */
    } else {
        sring_prep(r);
    }
    w->ring = &r->uring;
    w->ops = &sring_wait_ops;
    w->ctx = r;
    w->counts = &r->io;
    w->timeout = req->timeout;
    /* Submit and collect what completed inline (a connection already in
     * the backlog costs one io_uring_enter), then wait. */
    w->flags = HIO_WAIT_RUBY | HIO_WAIT_PEEK | (direct ? HIO_WAIT_NO_FIRST_PEEK : 0);
    w->want = 1;
    w->min_wait_us = 0;
    w->watch.check = NULL; /* the binding may set one (a listener closed elsewhere) */
    w->watch.arg = NULL;
    w->watch.every = 0;
    w->err = w->timed_out = w->peek_missed = w->raised = w->watched = w->watch_err = 0;
}
