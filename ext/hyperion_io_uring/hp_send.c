/*
 * hp_send.c: sends in order per fd.
 *
 * Layer: above hp_conn.c. Calls hp_conn.c, hp_slots.c, hp_queue.c.
 *
 * Each fd has a queue of send slots; only its head is in the kernel, so
 * sends on one fd go out in order and a short send is continued before the
 * next starts. Exactly one OP_SEND completion reaches Ruby per submit, with
 * the total length or -errno; with send_failures_only (send_completions:
 * :failures) only the failed ones do: a send that went out in full ends
 * without a word.
 *
 * Why not IOSQE_CQE_SKIP_SUCCESS for those: the ring itself must learn
 * that a send ended, to free (or unpin) its payload and start the next
 * send queued on the fd, and a skipped CQE says nothing. So the kernel
 * still posts it and the ring reaps it (a few ns in C: hp_reap copies a
 * batch of CQEs at a time); what is saved is the completion Ruby would
 * yield and dispatch (a block call, about a microsecond in Ruby 3.1). A send that fails or is cancelled fails the
 * ones queued behind it (a stream cannot skip bytes), in the order they
 * were queued. When the last queued send has ended, a close submit_close
 * held back goes out (hp_conn.c).
 *
 * Memory: every queued or in-flight send holds a copy of its bytes until its
 * final CQE. A peer that does not read leaves them all queued, so the bytes
 * held are bounded: per ring (send_limit) and per connection
 * (conn_send_limit, so that one such peer cannot take the whole ring's
 * budget from the others). A send that would pass either is refused with
 * -ENOBUFS before anything is copied or queued; the caller backs off (stops
 * reading from that client, or drops it).
 *
 * Zero copy (zc_min): a borrowed send (a pinned frozen String) of at least
 * zc_min bytes goes as IORING_OP_SEND_ZC (Linux 6.0+), whose pages the NIC
 * reads in place. It completes twice: the send's CQE (with IORING_CQE_F_MORE
 * when a notification follows), then a notification (IORING_CQE_F_NOTIF)
 * once the kernel no longer reads the memory. The send's CQE ends the send
 * as usual (its result, the next send on the fd, a short send continued
 * with another SEND_ZC); the slot, and the pin of its String, stay until
 * every notification came (s->notifs), and h->inflight counts each due
 * notification, so a close drains them. The notification says whether
 * the kernel copied after all (IORING_NOTIF_USAGE_ZC_COPIED, 6.2+:
 * stats[:zc_copied]); on loopback it always does.
 *
 * sendfile (file_min): a borrowed send of at least file_min bytes goes out
 * with sendfile(2) from a sealed memfd copy of the String (hp_bodies.c),
 * so the kernel sends the memfd's pages instead of copying the bytes. It
 * runs inline (a nonblocking sendfile(2) when the send reaches the head of
 * its fd's queue, like write_nonblock); what the socket does not take at
 * once waits for an IORING_OP_POLL_ADD (POLLOUT), whose CQE (the send's
 * user_data) continues it. So the poll is the only request such a send has
 * in the kernel, and cancelling it (Ruby, a close deadline, a closing ring)
 * cancels the send; s->off counts the bytes the socket took. A send that
 * ends inline reports like any other, through Ruby's completion queue.
 */
#include "hp_send.h"
#include "hp_bodies.h"
#include "hp_conn.h"
#include "fdid.h"
#include "hp_queue.h"
#include "hp_slots.h"
#include <errno.h>
#include <poll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>

#ifndef IORING_CQE_F_NOTIF
#define IORING_CQE_F_NOTIF (1U << 3)
#endif
/* Kernel 6.2's UAPI; liburing 2.3's header predates it. */
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif

/* A sendfile slot: sends what the socket takes now from its body's memfd.
 * 1: ended (*res 0, or -errno), 0: waits for POLLOUT (the poll is in
 * flight), -EBUSY: no SQE for the poll and nothing sent yet. */
static int
send_file_step(struct hio_hotpath *h, int32_t slot, int *res)
{
    struct hio_send *s = &h->sends[slot];
    struct io_uring_sqe *sqe;

    while (s->off < s->len) {
        off_t pos = (off_t)s->off;
        ssize_t n = sendfile(s->fd, hp_body_fd(h, s->body), &pos, s->len - s->off);
        if (n > 0) {
            s->off += (size_t)n;
            if (s->off == s->len) break;
            h->st.short_sends++; /* the socket is full: wait for room */
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (!(n < 0 && errno == EAGAIN)) {
            *res = n < 0 ? -errno : -EIO; /* 0: the memfd is shorter than the body (cannot happen: sealed) */
            return 1;
        }
        if (s->off < s->len) {
            if (!(sqe = hp_sqe(h))) {
                /* Once part of it went out, the send cannot be refused as
                 * if nothing happened: it fails, with a completion. */
                if (s->off == 0) return -EBUSY;
                *res = -EBUSY;
                return 1;
            }
            io_uring_prep_poll_add(sqe, s->fd, POLLOUT);
            io_uring_sqe_set_data64(sqe, hp_ud(HIO_OP_SEND, s->gen, (uint32_t)slot));
            s->inflight = 1;
            h->inflight++;
            return 0;
        }
    }
    *res = 0;
    return 1;
}

/* Starts the send in slot: 0 (in flight), 1 (a sendfile slot that ended at
 * once: *res), or -EBUSY (no SQE). */
static int
send_start(struct hio_hotpath *h, int32_t slot, int *res)
{
    struct hio_send *s = &h->sends[slot];
    struct io_uring_sqe *sqe;

    if (s->body >= 0) return send_file_step(h, slot, res);
    if (!(sqe = hp_sqe(h))) return -EBUSY;
    /* MSG_WAITALL: the kernel retries a short stream send by itself (5.18+);
     * a short result still gets continued in hp_send_complete. */
#ifdef HAVE_IO_URING_PREP_SEND_ZC
    if (s->borrowed && h->zc_min && s->len >= h->zc_min && h->zc_ok) {
        io_uring_prep_send_zc(sqe, s->fd, s->data + s->off, s->len - s->off, MSG_NOSIGNAL | MSG_WAITALL,
                              h->zc_flags);
        s->zc = 1;
        h->st.zc_sends++;
    } else
#endif
    {
        io_uring_prep_send(sqe, s->fd, s->data + s->off, s->len - s->off, MSG_NOSIGNAL | MSG_WAITALL);
        s->zc = 0;
    }
    io_uring_sqe_set_data64(sqe, hp_ud(HIO_OP_SEND, s->gen, (uint32_t)slot));
    s->inflight = 1;
    h->inflight++;
    return 0;
}

/* The slot leaves c's queue (its bytes no longer count for c). */
static inline void
send_dequeued(struct hio_hotpath *h, struct hio_conn *c, int32_t slot)
{
    uint64_t len = h->sends[slot].len;

    c->send_bytes = c->send_bytes > len ? c->send_bytes - len : 0;
}

static void
send_fail_all(struct hio_hotpath *h, struct hio_conn *c, int fd, int64_t err)
{
    while (c->send_head >= 0) {
        int32_t slot = c->send_head;
        c->send_head = h->sends[slot].next;
        send_dequeued(h, c, slot);
        hp_push(h, HIO_OP_SEND, fd, err, -1, 0);
        hp_slot_free(h, slot);
    }
    c->send_tail = -1;
}

/* -ENOBUFS (and what refused it) when len more bytes would pass a limit. */
static int
send_check_limits(struct hio_hotpath *h, int fd, const struct hio_conn *c, size_t len)
{
    struct hio_send_refusal *r = &h->refused;

    if (len <= h->conn_send_limit && c->send_bytes <= h->conn_send_limit - len &&
        len <= h->send_limit && h->send_held <= h->send_limit - len)
        return 0;
    r->fd = fd;
    r->len = len;
    if (len > h->conn_send_limit || c->send_bytes > h->conn_send_limit - len) {
        r->which = HIO_LIMIT_CONNECTION;
        r->limit = h->conn_send_limit;
        r->held = c->send_bytes;
    } else {
        r->which = HIO_LIMIT_RING;
        r->limit = h->send_limit;
        r->held = h->send_held;
    }
    h->st.send_buffer_full++;
    return -ENOBUFS;
}

static void send_end(struct hio_hotpath *h, struct hio_conn *c, int fd, int32_t slot, int res);

/* Queues the new slot (len bytes) on fd: started at once when nothing is
 * ahead of it. On failure the slot is freed (a borrowed one unpinned). */
static int
send_enqueue(struct hio_hotpath *h, int fd, struct hio_conn *c, int32_t slot, size_t len)
{
    struct hio_send *s = &h->sends[slot];
    int ret, res = 0;

    s->fd = fd;
    s->gen = c->gen;
    c->send_bytes += len;
    if (c->send_tail < 0) {
        c->send_head = c->send_tail = slot;
        ret = send_start(h, slot, &res);
        if (ret < 0) {
            c->send_head = c->send_tail = -1;
            send_dequeued(h, c, slot);
            hp_slot_free(h, slot);
            return ret;
        }
        if (ret == 1) send_end(h, c, fd, slot, res); /* a sendfile that went out (or failed) at once */
    } else {
        /* Queued behind the one in flight: sends on one fd stay in order. */
        h->sends[c->send_tail].next = slot;
        c->send_tail = slot;
    }
    return 0;
}

int
hp_send_submit(struct hio_hotpath *h, int fd, struct hio_conn *c, const struct iovec *iov, unsigned iovcnt,
               size_t len)
{
    int32_t slot;
    int ret;

    if (len == 0) {
        if (!h->send_failures_only) hp_push(h, HIO_OP_SEND, fd, 0, -1, 0);
        return 0;
    }
    if ((ret = send_check_limits(h, fd, c, len)) < 0) return ret;
    slot = hp_slot_new(h, iov, iovcnt, len);
    if (slot < 0) return -ENOMEM;
    return send_enqueue(h, fd, c, slot, len);
}

int
hp_send_submit_borrowed(struct hio_hotpath *h, int fd, struct hio_conn *c, const void *data, size_t len,
                        uint64_t token)
{
    int32_t slot;
    int ret, file;

    if ((ret = send_check_limits(h, fd, c, len)) < 0 || (slot = hp_slot_borrow(h, data, len, token)) < 0) {
        hio_owner_unpin(token);
        return ret < 0 ? ret : -ENOMEM;
    }
    /* Only to a nonblocking stream socket: sendfile(2) would also write to
     * a pipe or a file, where IORING_OP_SEND fails with ENOTSOCK, and to a
     * blocking socket it would wait for room in the caller (io_uring never
     * blocks it, whatever the socket's mode). The others go as plain sends. */
    if (h->file_min && len >= h->file_min && hio_fd_is_nonblocking_stream(fd))
        h->sends[slot].body = hp_body_get(h, data, len, token);
    file = h->sends[slot].body >= 0;
    /* On failure send_enqueue frees the slot, which unpins the token. */
    if ((ret = send_enqueue(h, fd, c, slot, len)) >= 0) {
        h->st.borrowed_sends++;
        if (file) h->st.file_sends++;
    }
    return ret;
}

/* The send has ended: its slot goes, unless a SEND_ZC notification is
 * still due (then at the last one, hp_send_notif). */
static inline void
send_release(struct hio_hotpath *h, int32_t slot)
{
    struct hio_send *s = &h->sends[slot];

    if (s->notifs) {
        s->ended = 1;
        s->next = -1;
        return;
    }
    hp_slot_free(h, slot);
}

void
hp_send_notif(struct hio_hotpath *h, int32_t slot, int res)
{
    struct hio_send *s;

    h->inflight--;
    if (slot < 0 || (unsigned)slot >= h->nsends) return;
    s = &h->sends[slot];
    if (!s->notifs) return;
    if ((unsigned)res & IORING_NOTIF_USAGE_ZC_COPIED) h->st.zc_copied++;
    if (--s->notifs == 0 && s->ended) hp_slot_free(h, slot);
}

void
hp_send_complete(struct hio_hotpath *h, int32_t slot, uint32_t gen, int res, unsigned flags)
{
    struct hio_send *s;
    struct hio_conn *c;
    int fd;

    if (slot < 0 || (unsigned)slot >= h->nsends) {
        h->inflight--;
        return;
    }
    s = &h->sends[slot];
    /* F_MORE: a SEND_ZC notification follows, and is this request's final
     * CQE (h->inflight goes down then). */
    if (flags & IORING_CQE_F_MORE) s->notifs++;
    else h->inflight--;
    s->inflight = 0;
    fd = s->fd;
    c = hp_conn_get(h, fd);
    if (!c || c->gen != gen || s->gen != gen) {
        h->st.stale_completions++;
        send_release(h, slot);
        return;
    }
    if (s->body >= 0) {
        /* A sendfile slot's CQE is its POLLOUT poll's: the poll mask (the
         * error bits too: sendfile then says which), or -errno. */
        int ret;
        if (!s->cancelled && res > 0) {
            if (!hp_conn_same_socket(fd, c)) res = -EBADF;
            else if ((ret = send_file_step(h, slot, &res)) == 0) return;
            else if (ret < 0) res = -EBUSY;
        }
        send_end(h, c, fd, slot, res);
        return;
    }
    if (res == -EINVAL && s->zc && h->zc_flags) {
        /* A 6.0/6.1 kernel: SEND_ZC without IORING_SEND_ZC_REPORT_USAGE. */
        h->zc_flags = 0;
        res = -EAGAIN;
    }
    /* Bytes the kernel sent count even when Ruby cancelled meanwhile: a
     * send that finished before the cancel reached it reports its length. */
    if (res > 0) s->off += (size_t)res;
    if (!s->cancelled && ((res > 0 && s->off < s->len) || res == -EAGAIN || res == -EINTR)) {
        int unused;
        if (res > 0) h->st.short_sends++;
        if (!hp_conn_same_socket(fd, c)) res = -EBADF;
        else if (send_start(h, slot, &unused) == 0) return;
        else res = -EBUSY;
    }
    send_end(h, c, fd, slot, res);
}

/* The send at the head of c's queue has ended (res: its last result):
 * reports it, then starts the next one queued (a sendfile may end at once
 * too, hence the loop), or fails the rest after a failure or a cancel. */
static void
send_end(struct hio_hotpath *h, struct hio_conn *c, int fd, int32_t slot, int res)
{
    for (;;) {
        struct hio_send *s = &h->sends[slot];
        int cancelled = s->cancelled, ret;
        int64_t result;

        if (s->off == s->len) {
            result = (int64_t)s->len;
            h->st.sends++;
            h->st.send_bytes += s->len;
        } else {
            result = res < 0 ? res : -ECANCELED;
        }
        if (result < 0 || !h->send_failures_only) hp_push(h, HIO_OP_SEND, fd, result, -1, 0);
        c->send_head = s->next;
        if (c->send_head < 0) c->send_tail = -1;
        send_dequeued(h, c, slot);
        send_release(h, slot);
        if (result < 0 || cancelled) {
            /* Later sends on a failed or cancelled stream cannot succeed in
             * order; they report after this one, in the order they were queued. */
            send_fail_all(h, c, fd, result < 0 ? result : -ECANCELED);
            break;
        }
        if (c->send_head < 0) break;
        if (!hp_conn_same_socket(fd, c)) {
            send_fail_all(h, c, fd, -EBADF);
            break;
        }
        slot = c->send_head;
        if ((ret = send_start(h, slot, &res)) == 0) break;
        if (ret < 0) {
            send_fail_all(h, c, fd, -EBUSY);
            break;
        }
    }
    if (c->send_head < 0) hp_conn_sends_ended(h, fd, c);
}

int
hp_send_cancel(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    struct hio_send *s;

    if (c->send_head < 0) return 0;
    s = &h->sends[c->send_head];
    if (s->inflight) {
        /* The sends queued behind it fail when its final CQE arrives
         * (hp_send_complete), so completions keep the order of the calls. */
        s->cancelled = 1;
        return hp_prep_cancel(h, hp_ud(HIO_OP_SEND, s->gen, (uint32_t)c->send_head));
    }
    send_fail_all(h, c, fd, -ECANCELED);
    hp_conn_sends_ended(h, fd, c); /* cancel after submit_close: close now */
    return 0;
}

void
hp_send_forget(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    int32_t slot = c->send_head;

    while (slot >= 0) {
        int32_t next = h->sends[slot].next;
        if (h->sends[slot].inflight) {
            hp_prep_cancel(h, hp_ud(HIO_OP_SEND, h->sends[slot].gen, (uint32_t)slot));
            h->sends[slot].next = -1; /* orphan: freed at its final CQE (and SEND_ZC notification) */
        } else if (h->sends[slot].notifs) {
            send_release(h, slot); /* freed at its last SEND_ZC notification */
        } else {
            /* Never started (queued behind one in flight, possibly one Ruby
             * cancelled): report it now, before the number's new owner. */
            hp_push(h, HIO_OP_SEND, fd, -ECANCELED, -1, 0);
            hp_slot_free(h, slot);
        }
        slot = next;
    }
    c->send_head = c->send_tail = -1;
    c->send_bytes = 0; /* orphans still count in send_held until their CQE */
}

void
hp_send_cancel_every(struct hio_hotpath *h)
{
    unsigned i;

    for (i = 0; i < h->nsends; i++)
        if (h->sends[i].inflight) hp_prep_cancel(h, hp_ud(HIO_OP_SEND, h->sends[i].gen, i));
}
