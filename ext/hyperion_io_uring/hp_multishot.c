/*
 * hp_multishot.c: multishot accept and recv.
 *
 * Layer: above hp_conn.c. Calls hp_conn.c, hp_queue.c, buf_ring.c, fifo.h.
 *
 * One multishot accept per listener and one multishot recv per connection
 * (into the provided-buffer ring), each with an arm state per fd entry:
 * NONE, ARMED (in the kernel), PARKED (recv ended for lack of buffers;
 * re-armed when Ruby releases one) or CANCELLING (Ruby cancelled; the final
 * CQE is due). ms_table is the one place that reads IORING_CQE_F_MORE
 * and decides a transition; this file is the only one that changes a state.
 */
#include "hp_multishot.h"
#include "hp_conn.h"
#include "hp_queue.h"
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * The one table of multishot accept and recv: (arm state, completion) ->
 * verdict. stale says the completion's generation is not the entry's any
 * more.
 *
 * A CQE without IORING_CQE_F_MORE ends the request, whatever res is. Only
 * transient ends are re-armed: a cancel the kernel made (state still ARMED,
 * so not Ruby's), a CQ overflow (an end with a result), ENOBUFS (parked
 * until a buffer comes back). EINVAL, EBADF, ENOTSOCK and the like are
 * final: re-arming them would spin. An error with F_MORE set leaves the
 * request armed: re-arming it would stack a duplicate.
 */
static struct hp_ms_verdict
ms_table(unsigned kind, unsigned state, int stale, int res, unsigned flags)
{
    struct hp_ms_verdict v = { HP_MS_DELIVER, !(flags & IORING_CQE_F_MORE), 0, (uint8_t)state, res };

    if (stale) {
        v.act = HP_MS_STALE; /* the entry's state is the new connection's */
        return v;
    }
    if (state == HIO_ARM_ORPHANED) {
        /* Its listener was closed behind the ring's back and the ring
         * cancelled it: a connection it accepted meanwhile is nobody's
         * (dropped and closed, as the closed socket's backlog is reset),
         * and its end reaches Ruby as -EBADF, whatever ended it. */
        if (!v.final) {
            v.act = HP_MS_STALE;
        } else {
            v.act = HP_MS_END;
            v.next = HIO_ARM_NONE;
            v.res = -EBADF;
        }
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
ms_state(struct hio_conn *c, unsigned kind)
{
    return kind == HIO_OP_ACCEPT ? &c->accept : &c->recv;
}

static void
ms_park(struct hio_hotpath *h, int fd)
{
    int *slot = hio_fifo_push(&h->parked, sizeof(int), 16);

    if (!slot) { h->healthy = 0; return; }
    *slot = fd;
}

/* fd joins the listeners the waits watch (once). */
static int
ms_listener_add(struct hio_hotpath *h, int fd)
{
    unsigned i;

    for (i = 0; i < h->nlisteners; i++)
        if (h->listeners[i] == fd) return 0;
    if (h->nlisteners == h->cap_listeners) {
        unsigned cap = h->cap_listeners ? h->cap_listeners * 2 : 4;
        int *nl = realloc(h->listeners, cap * sizeof(*nl));
        if (!nl) return -ENOMEM;
        h->listeners = nl;
        h->cap_listeners = cap;
    }
    h->listeners[h->nlisteners++] = fd;
    return 0;
}

/* Arms a multishot accept or recv on fd, for the entry's generation. */
static int
ms_arm(struct hio_hotpath *h, unsigned kind, int fd, struct hio_conn *c)
{
    struct io_uring_sqe *sqe;

    /* An accept that is not watched could outlive its listener. */
    if (kind == HIO_OP_ACCEPT && ms_listener_add(h, fd) < 0) return -ENOMEM;
    if (!(sqe = hp_sqe(h))) return -EBUSY;
    if (kind == HIO_OP_ACCEPT) {
        /* O_NONBLOCK like the sockets Ruby accepts: a connection fiber that
         * wraps the fd never blocks its thread in read(2) (the ring's own
         * recv and send do not care; see spec/accepted_fd_spec.rb). */
        io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    } else {
        io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = HP_BGID;
    }
    io_uring_sqe_set_data64(sqe, hp_ud(kind, c->gen, (uint32_t)fd));
    *ms_state(c, kind) = HIO_ARM_ARMED;
    h->inflight++;
    return 0;
}

/* Arms again after a transient end. With no SQE to be had (SQ full and the
 * kernel refusing submissions while the CQ overflows) a recv is parked, to
 * be re-armed by the next reap; an accept reports -EBUSY to Ruby. */
void
hp_ms_rearm(struct hio_hotpath *h, unsigned kind, int fd)
{
    struct hio_conn *c = &h->conns[fd];

    if (ms_arm(h, kind, fd, c) == 0) {
        h->st.rearms++;
    } else if (kind == HIO_OP_ACCEPT) {
        hp_push(h, HIO_OP_ACCEPT, fd, -EBUSY, -1, 0);
    } else {
        c->recv = HIO_ARM_PARKED;
        ms_park(h, fd);
    }
}

struct hp_ms_verdict
hp_ms_complete(struct hio_hotpath *h, unsigned kind, int fd, uint32_t gen, int res, unsigned flags)
{
    struct hio_conn *c = &h->conns[fd];
    struct hp_ms_verdict v = ms_table(kind, *ms_state(c, kind), c->gen != gen, res, flags);

    if (v.final) h->inflight--;
    if (v.act == HP_MS_STALE) {
        h->st.stale_completions++;
        if (kind == HIO_OP_ACCEPT && res >= 0) close(res); /* nobody wants this connection */
        /* A buffer Ruby will never see goes back to the kernel. */
        if (kind == HIO_OP_RECV && res > 0 && (flags & IORING_CQE_F_BUFFER))
            hio_bufring_recycle(&h->bufs, flags >> IORING_CQE_BUFFER_SHIFT);
        return v;
    }
    *ms_state(c, kind) = v.next;
    if (kind == HIO_OP_RECV && res == -ENOBUFS && v.final) {
        h->st.enobufs++;
        hio_bufring_dry(&h->bufs); /* may publish more buffers */
    }
    switch (v.act) {
      case HP_MS_REARM:
        hp_ms_rearm(h, kind, fd);
        break;
      case HP_MS_PARK:
        ms_park(h, fd);
        break;
      case HP_MS_END:
        if (kind == HIO_OP_ACCEPT && res >= 0) close(res); /* an orphaned accept's last connection */
        hp_push(h, (int)kind, fd, v.res, -1, flags);
        break;
      default:
        break;
    }
    return v;
}

int
hp_ms_final(unsigned kind, int res, unsigned flags)
{
    return ms_table(kind, HIO_ARM_NONE, 1, res, flags).final;
}

int
hp_ms_submit(struct hio_hotpath *h, unsigned kind, int fd, struct hio_conn *c)
{
    unsigned state = *ms_state(c, kind);

    /* Already armed: a second accept would double every accept; a parked
     * recv is re-armed when buffers come back. */
    if (state == HIO_ARM_ARMED || (kind == HIO_OP_RECV && state == HIO_ARM_PARKED)) return 0;
    if (state == HIO_ARM_CANCELLING || state == HIO_ARM_ORPHANED) {
        /* Re-armed before the cancel's final CQE: that CQE belongs to the
         * old request; a new generation keeps it from ending this one (it
         * is dropped as stale). For an accept, the old end would otherwise
         * look like a cancel the kernel made and re-arm a second one. */
        hp_conn_new_generation(c);
    }
    return ms_arm(h, kind, fd, c);
}

/* The final completions reach Ruby with -ECANCELED (or are dropped as stale
 * once the number is reused). A parked recv has no request in the kernel:
 * it ends at once. */
void
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

/* Late CQEs of the cancelled requests are stale once the generation moves on. */
void
hp_ms_forget(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    if (c->recv == HIO_ARM_ARMED) hp_prep_cancel(h, hp_ud(HIO_OP_RECV, c->gen, (uint32_t)fd));
    if (c->accept == HIO_ARM_ARMED) hp_prep_cancel(h, hp_ud(HIO_OP_ACCEPT, c->gen, (uint32_t)fd));
    c->recv = c->accept = HIO_ARM_NONE;
}

/* At most one per buffer the kernel has or can be given (published, or
 * free on the stack). The ring is topped up first, beyond what it keeps
 * published if need be, to a buffer per parked recv: recvs re-armed with
 * the ring dry would park again at once, and those parks would count as
 * evidence that the ring needs more buffers (buf_ring.c grows it on real
 * ones). A parked recv may have nothing to read (a recv armed on a dry
 * ring ends at once), so such a buffer can stay published unused: its
 * pages are never touched until the kernel writes it. The count can still
 * overestimate (a buffer filled but not reaped yet counts as free, and one
 * multishot recv may take several), so some re-armed recvs end in ENOBUFS
 * again; counting only buffers released since the last park would be
 * cheaper but can stall: a re-armed recv whose socket has nothing left to
 * read uses no buffer, and no further release comes to re-arm the rest. */
void
hp_ms_unpark(struct hio_hotpath *h)
{
    unsigned avail;

    if (h->parked.count == 0) return;
    hio_bufring_top_up(&h->bufs, h->parked.count);
    avail = hio_bufring_available(&h->bufs);
    while (h->parked.count > 0 && avail > 0) {
        int fd = *(int *)hio_fifo_front(&h->parked, sizeof(int));
        struct hio_conn *c = &h->conns[fd];
        hio_fifo_drop(&h->parked);
        if (c->recv != HIO_ARM_PARKED) continue; /* cancelled or replaced meanwhile */
        if (ms_arm(h, HIO_OP_RECV, fd, c) < 0) { ms_park(h, fd); c->recv = HIO_ARM_PARKED; break; }
        h->st.rearms++;
        avail--;
    }
}

void
hp_ms_cancel_every(struct hio_hotpath *h)
{
    unsigned i;

    for (i = 0; i < h->nconns; i++) {
        struct hio_conn *c = &h->conns[i];
        if (c->recv == HIO_ARM_ARMED || c->recv == HIO_ARM_CANCELLING)
            hp_prep_cancel(h, hp_ud(HIO_OP_RECV, c->gen, i));
        if (c->accept == HIO_ARM_ARMED || c->accept == HIO_ARM_CANCELLING || c->accept == HIO_ARM_ORPHANED)
            hp_prep_cancel(h, hp_ud(HIO_OP_ACCEPT, c->gen, i));
    }
}

/*
 * A listener closed elsewhere while its accept is armed: the kernel's
 * request keeps its own reference to the socket, which stays bound and
 * goes on accepting, and nothing tells the ring. So the waits look, at
 * most every HP_MS_WATCH_EVERY seconds (each_completion's plan, and each
 * blocking slice of its wait): does the number still name the socket
 * claimed for it (fstat)? If not, the accept is cancelled and ORPHANED.
 * Entries whose accept ended leave the list here.
 */
void
hp_ms_watch(struct hio_hotpath *h)
{
    double now = hio_now_coarse();
    unsigned i = 0;

    /* 10 ms early is due: the coarse clock (a tick of a few ms) would
     * otherwise make a wait's slice end just short of it, and double the
     * time to notice. */
    if (now + 0.01 < h->watch_next) return;
    h->watch_next = now + HP_MS_WATCH_EVERY;
    while (i < h->nlisteners) {
        int fd = h->listeners[i];
        struct hio_conn *c = &h->conns[fd];

        if (c->accept == HIO_ARM_NONE) {
            h->listeners[i] = h->listeners[--h->nlisteners];
            continue;
        }
        /* With no SQE to be had, it stays ARMED and is tried next time. */
        if (c->accept == HIO_ARM_ARMED && !hp_conn_same_socket(fd, c) &&
            hp_prep_cancel(h, hp_ud(HIO_OP_ACCEPT, c->gen, (uint32_t)fd)) == 0)
            c->accept = HIO_ARM_ORPHANED;
        i++;
    }
}

void
hp_ms_teardown(struct hio_hotpath *h)
{
    hio_fifo_free(&h->parked);
    free(h->listeners);
    h->listeners = NULL;
    h->nlisteners = h->cap_listeners = 0;
}
