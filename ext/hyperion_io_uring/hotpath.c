/*
 * hotpath.c: the hot-path core of HotpathRing's engine: open, claim and
 * retire, reap, dispatch, submit, wait, close.
 *
 * Layer: top of the hot path (hp.h shows the layers). Calls hp_send.c,
 * hp_multishot.c, hp_conn.c, hp_slots.c, hp_queue.c, buf_ring.c, setup.c,
 * owner.c, registry.c, wait.c.
 *
 * One ring per worker: a multishot accept per listener, a multishot recv
 * per connection into the provided-buffer ring, and sends, all reaped in
 * batches. Lifetimes: every request the kernel holds is counted in
 * h->inflight until its final CQE. Payloads of sends are ring-owned copies
 * (hp_slots.c); recv buffers are the buffer ring's. Closing cancels
 * everything and drains until inflight is 0 (#close waits up to a second;
 * the GC never waits; another thread cannot cancel), and frees memory only
 * once nothing can touch it any more (hio_hp_close says when).
 *
 * submit_close deadlines: the earliest one bounds every wait (wait.c asks
 * hp_wait_wake_at), and each reap cancels the sends of the closes whose
 * deadline has passed, so the deadline fires even when Ruby only waits and
 * nothing else happens on the ring. No kernel timer and no SQE per close:
 * one clock read per reap while deadlines are pending, none otherwise.
 */
#include "hp.h"
#include "registry.h"
#include "setup.h"
#include "hp_conn.h"
#include "hp_multishot.h"
#include "hp_queue.h"
#include "hp_send.h"
#include "hp_slots.h"
#include "hp_bodies.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define HP_CLOSE_DRAIN_SECONDS 1.0
#define HP_MAX_CQ 65536u

/* ---- claim and retire ---- */

/* The number now names another connection (it was accepted anew, or a
 * different socket was claimed for it). Requests of the previous one are
 * cancelled; their late CQEs no longer match the generation and are
 * dropped. What Ruby must still hear of it is reported first. */
static void
hp_retire(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    hp_ms_forget(h, fd, c);
    hp_send_forget(h, fd, c);
    hp_conn_retire(h, fd, c);
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
    int ret = hp_conn_identity(fd, &ino, &dev);

    if (ret < 0) return ret;
    if (!(c = hp_conn_get(h, fd))) return -ENOMEM;
    if (c->closing && (ret = hp_conn_check_closing(h, c, ino, dev)) < 0) return ret;
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

/* ---- close deadlines ---- */

/* The QUEUED closes whose deadline has passed: their sends are cancelled
 * (completions with -ECANCELED, or the bytes of one that finished first)
 * and the close follows the last one's end (hp_send_complete). */
static void
hp_expire_closes(struct hio_hotpath *h)
{
    double now = hio_now();
    int fd;

    while ((fd = hp_conn_pop_expired(h, now)) >= 0) {
        struct hio_conn *c = &h->conns[fd];
        if (hp_send_cancel(h, fd, c) < 0) {
            /* No memory to keep the cancel owed: try again shortly. */
            hp_conn_close_after_sends(h, fd, c, now + 0.01);
            break;
        }
        h->st.close_timeouts++;
    }
}

/* ---- reap and dispatch ---- */

/* Hands a multishot result to Ruby. An accepted fd retires whatever the
 * ring still kept for its number, first: completions of that old
 * connection reach Ruby before the new one's. Returns 0 when the ring
 * broke instead. */
static int
hp_deliver(struct hio_hotpath *h, unsigned kind, int fd, int res, unsigned flags)
{
    if (kind == HIO_OP_ACCEPT && res >= 0) {
        struct hio_conn *nc = hp_conn_get(h, res); /* may move h->conns */
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
hp_dispatch(struct hio_hotpath *h, uint64_t ud, int res, unsigned flags)
{
    unsigned kind = hp_ud_kind(ud);
    uint32_t gen = hp_ud_gen(ud), idx = hp_ud_idx(ud);
    struct hp_ms_verdict v;

    if (h->closing) {
        /* Tearing down: only account for what the kernel gave back. A close
         * was counted only when its success CQE was due too. */
        if (kind == HIO_OP_CLOSE) {
            if (!h->close_skip) h->inflight--;
            return;
        }
        /* A SEND_ZC's CQE with F_MORE is not its last: its notification is. */
        if ((kind == HIO_OP_SEND && !(flags & IORING_CQE_F_MORE)) || kind == HIO_OP_CANCEL ||
            ((kind == HIO_OP_ACCEPT || kind == HIO_OP_RECV) && hp_ms_final(kind, res, flags)))
            h->inflight--;
        if (kind == HIO_OP_CANCEL && res == -EINVAL && !h->cancel_fallback) h->cancel_fallback = 1;
        return;
    }
    switch (kind) {
      case HIO_OP_ACCEPT:
      case HIO_OP_RECV:
        if (idx >= h->nconns) break;
        v = hp_ms_complete(h, kind, (int)idx, gen, res, flags);
        if (v.act == HP_MS_DELIVER && hp_deliver(h, kind, (int)idx, res, flags))
            hp_ms_delivered(h, kind, (int)idx, v);
        break;
      case HIO_OP_SEND:
#ifdef IORING_CQE_F_NOTIF
        if (flags & IORING_CQE_F_NOTIF) {
            hp_send_notif(h, (int32_t)idx, res);
            break;
        }
#endif
        hp_send_complete(h, (int32_t)idx, gen, res, flags);
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

    if (h->closes.count) hp_conn_sweep_closes(h);
    if (h->nclose_dls && !h->closing) hp_expire_closes(h);
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
        for (i = 0; i < n; i++) hp_dispatch(h, batch[i].user_data, batch[i].res, batch[i].flags);
    }
    if (h->cancels_owed.count) hp_cancels_retry(h);
}

/* ---- open ---- */

struct hio_hotpath *
hio_hp_new(void)
{
    struct hio_hotpath *h = calloc(1, sizeof(*h));

    if (!h) return NULL;
    h->uring.ring_fd = -1;
    h->send_free = -1;
    h->send_limit = HIO_DEFAULT_SEND_LIMIT;
    h->conn_send_limit = HIO_DEFAULT_SEND_LIMIT / 4;
    h->close_timeout = HIO_DEFAULT_CLOSE_TIMEOUT;
    return h;
}

void
hio_hp_free(struct hio_hotpath *h)
{
    free(h);
    hio_owner_release_deferred(0); /* the GC frees rings: a natural point */
}

size_t
hio_hp_memsize(const struct hio_hotpath *h)
{
    size_t sz = sizeof(*h);

    if (h->inited) {
        sz += hio_bufring_bytes(&h->bufs);
        sz += (size_t)h->nconns * sizeof(struct hio_conn) + (size_t)h->nsends * sizeof(struct hio_send);
        sz += (size_t)h->done.cap * sizeof(struct hio_completion) + (size_t)h->parked.cap * sizeof(int);
        sz += (size_t)h->closes.cap * sizeof(struct hio_close_pending);
        sz += (size_t)h->close_dls_cap * sizeof(struct hio_close_dl);
        sz += (size_t)h->send_held + h->map_cached_bytes + h->slab_cached_bytes;
        sz += h->body_bytes; /* memfd pages: memory, if not the heap's */
    }
    return sz;
}

const char *
hio_hp_open_error(const struct hio_hotpath *h)
{
    return h->err;
}

/* IORING_OP_SEND_ZC (Linux 6.0): asked of the kernel's opcode probe. */
static int
hp_probe_send_zc(struct io_uring *ring)
{
#if defined(HAVE_IO_URING_PREP_SEND_ZC) && defined(HAVE_IO_URING_GET_PROBE_RING)
    struct io_uring_probe *p = io_uring_get_probe_ring(ring);
    int ok;
    const char *env = getenv("HYPERION_IO_URING_SEND_ZC");

    /* HYPERION_IO_URING_SEND_ZC=0: as on kernels without it (a test seam). */
    if (!p || (env && strcmp(env, "0") == 0)) {
        if (p) io_uring_free_probe(p);
        return 0;
    }
    ok = io_uring_opcode_supported(p, IORING_OP_SEND_ZC);
    io_uring_free_probe(p);
    return ok;
#else
    (void)ring;
    return 0;
#endif
}

int
hio_hp_open(struct hio_hotpath *h, unsigned depth, unsigned n_bufs, unsigned buf_size)
{
    unsigned cq = depth * 4;
    int ret;

    if (cq < 256) cq = 256;
    if (cq < n_bufs * 2) cq = n_bufs * 2;
    if (cq > HP_MAX_CQ) cq = HP_MAX_CQ;
    hio_owner_release_deferred(0);
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
    /* Taking idle buffers back from the kernel's ring relies on nothing
     * consuming them outside our own io_uring_enter (buf_ring.c). */
    h->bufs.can_withdraw = (h->flags & IORING_SETUP_DEFER_TASKRUN) != 0;
    h->zc_ok = hp_probe_send_zc(&h->uring);
    h->zc_flags = 1u << 3; /* IORING_SEND_ZC_REPORT_USAGE (6.2); dropped on a kernel that refuses it */
    hio_owner_init(&h->owner);
    {
        /* HYPERION_IO_URING_MIN_WAIT=0: no kernel batch waits, as on kernels
         * before 6.12 (a test seam for that path). */
        const char *env = getenv("HYPERION_IO_URING_MIN_WAIT");
        h->batch_wait = hio_batch_wait_supported(&h->uring) && !(env && strcmp(env, "0") == 0);
    }
    h->inited = 1;
    h->healthy = 1;
    h->magic = HIO_HOTPATH_MAGIC;
    hio_registry_add(h);
    return 0;
}

/* ---- submit ---- */

int
hio_hp_submit_accept(struct hio_hotpath *h, int fd)
{
    struct hio_conn *c;
    int ret = hp_claim(h, fd, &c);

    return ret < 0 ? ret : hp_ms_submit(h, HIO_OP_ACCEPT, fd, c);
}

int
hio_hp_submit_recv(struct hio_hotpath *h, int fd)
{
    struct hio_conn *c;
    int ret = hp_claim(h, fd, &c);

    return ret < 0 ? ret : hp_ms_submit(h, HIO_OP_RECV, fd, c);
}

/* The entry a send on fd goes to. Claimed on its first use since it was
 * accepted or armed, when sends are still pending on it (if it names
 * another socket now, the new send must not queue behind the old
 * connection's), and after submit_close. Otherwise no syscall: an idle
 * keep-alive connection's send costs none. */
static int
hp_send_entry(struct hio_hotpath *h, int fd, struct hio_conn **out)
{
    struct hio_conn *c;

    if (fd < 0) return -EBADF;
    c = (unsigned)fd < h->nconns ? &h->conns[fd] : NULL;
    if (!c || (!c->ino && !c->dev) || hp_send_pending(c) || c->closing) return hp_claim(h, fd, out);
    *out = c;
    return 0;
}

int
hio_hp_submit_sendv(struct hio_hotpath *h, int fd, const struct iovec *iov, unsigned iovcnt)
{
    struct hio_conn *c;
    size_t len = 0;
    unsigned i;
    int ret;

    if (iovcnt > IOV_MAX) return -EINVAL;
    for (i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len && !iov[i].iov_base) return -EFAULT;
        if (iov[i].iov_len > SIZE_MAX / 2 - len) return -EINVAL;
        len += iov[i].iov_len;
    }
    if ((ret = hp_send_entry(h, fd, &c)) < 0) return ret;
    return hp_send_submit(h, fd, c, iov, iovcnt, len);
}

int
hio_hp_submit_send_borrowed(struct hio_hotpath *h, int fd, const void *data, size_t len, uint64_t token)
{
    struct hio_conn *c;
    int ret;

    if (!data || len == 0 || len > SIZE_MAX / 2) ret = -EINVAL;
    else if ((ret = hp_send_entry(h, fd, &c)) == 0) return hp_send_submit_borrowed(h, fd, c, data, len, token);
    hio_owner_unpin(token);
    return ret;
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
    hp_send_cancel(h, fd, c);
    return 0;
}

void
hio_hp_set_send_limits(struct hio_hotpath *h, uint64_t ring_limit, uint64_t conn_limit)
{
    h->send_limit = ring_limit;
    h->conn_send_limit = conn_limit < ring_limit ? conn_limit : ring_limit;
}

void
hio_hp_send_limits(const struct hio_hotpath *h, uint64_t *ring_limit, uint64_t *conn_limit)
{
    *ring_limit = h->send_limit;
    *conn_limit = h->conn_send_limit;
}

void
hio_hp_set_send_report(struct hio_hotpath *h, enum hio_send_report report)
{
    h->send_failures_only = report == HIO_SEND_REPORT_FAILURES;
}

enum hio_send_report
hio_hp_send_report(const struct hio_hotpath *h)
{
    return h->send_failures_only ? HIO_SEND_REPORT_FAILURES : HIO_SEND_REPORT_ALL;
}

void
hio_hp_set_zero_copy_min(struct hio_hotpath *h, size_t min)
{
    h->zc_min = min;
}

size_t
hio_hp_zero_copy_min(const struct hio_hotpath *h)
{
    return h->zc_min;
}

void
hio_hp_set_sendfile_min(struct hio_hotpath *h, size_t min)
{
#ifdef HAVE_MEMFD_CREATE
    h->file_min = min;
#else
    (void)h;
    (void)min;
#endif
}

size_t
hio_hp_sendfile_min(const struct hio_hotpath *h)
{
    return h->file_min;
}

int
hio_hp_zero_copy_supported(const struct hio_hotpath *h)
{
    return h->zc_ok;
}

void
hio_hp_send_refusal(const struct hio_hotpath *h, struct hio_send_refusal *out)
{
    *out = h->refused;
}

uint64_t
hio_hp_queued_send_bytes(const struct hio_hotpath *h, int fd)
{
    return fd >= 0 && (unsigned)fd < h->nconns ? h->conns[fd].send_bytes : 0;
}

void
hio_hp_set_close_timeout(struct hio_hotpath *h, double timeout)
{
    h->close_timeout = timeout;
}

double
hio_hp_close_timeout(const struct hio_hotpath *h)
{
    return h->close_timeout;
}

int
hio_hp_submit_close(struct hio_hotpath *h, int fd, double timeout)
{
    struct hio_conn *c;
    int ret;

    if (fd < 0) return -EBADF;
    /* The kernel refuses to close a ring through a ring, but the close(2)
     * fallbacks would not, and io_uring_queue_exit would close it again. */
    if (fd == h->uring.ring_fd) return -EINVAL;
    if ((unsigned)fd >= h->nconns) {
        /* A number the ring never saw: grow the table only if it is open
         * (Ruby may pass any Integer); a number that is not open gets its
         * -EBADF from the kernel like any other. */
        if (fcntl(fd, F_GETFD) < 0) {
            hp_conn_issue_close(h, fd, NULL);
            return 0;
        }
        if (!(c = hp_conn_get(h, fd))) return -ENOMEM;
    } else {
        c = &h->conns[fd];
    }
    if ((ret = hp_conn_check_close_again(h, c)) < 0) return ret;
    if (hp_send_pending(c) && timeout >= 0 && hp_conn_reserve_deadline(h) < 0) return -ENOMEM;
    hp_ms_cancel(h, fd, c);
    if (hp_send_pending(c)) {
        /* A deadline already passed (timeout 0) is met by the next reap or
         * flush, like any other. */
        hp_conn_close_after_sends(h, fd, c, timeout >= 0 ? hio_now() + timeout : -1.0);
    } else {
        hp_conn_issue_close(h, fd, c);
    }
    return 0;
}

int
hio_hp_flush(struct hio_hotpath *h)
{
    int ret;

    if (h->nclose_dls) hp_expire_closes(h);
    if (io_uring_sq_ready(&h->uring) == 0) return 0;
    h->st.io.submits++;
    ret = io_uring_submit(&h->uring);
    if (h->closes.count) hp_conn_sweep_closes(h);
    return ret == -EBUSY || ret == -EAGAIN ? 0 : ret;
}

int
hio_hp_release(struct hio_hotpath *h, long bid)
{
    int ret = hio_bufring_check(&h->bufs, bid);

    if (ret < 0) return ret;
    hio_bufring_release(&h->bufs, (unsigned)bid);
    if (h->parked.count) hp_ms_unpark(h);
    return 0;
}

/* ---- wait ---- */

/* The buffer pool's once-a-window look (buf_ring.c), after reaps and in
 * idle wait slices: one coarse clock read when it is not due. */
static void
hp_bufs_tick(struct hio_hotpath *h)
{
    if (hio_bufring_tick(&h->bufs, hio_now_coarse()) < 0) h->healthy = 0; /* no buffer group any more */
}

static int
hp_wait_reap(void *ctx)
{
    struct hio_hotpath *h = ctx;

    hp_reap(h);
    hp_bufs_tick(h);
    hp_ms_unpark(h);
    return 0;
}

static unsigned
hp_wait_ready(void *ctx)
{
    return ((struct hio_hotpath *)ctx)->done.count;
}

static void
hp_wait_broken(void *ctx, int err)
{
    ((struct hio_hotpath *)ctx)->healthy = 0;
}

/* The earliest submit_close deadline: the wait returns by then, and its
 * reap cancels what the close waits for. */
static double
hp_wait_wake_at(void *ctx)
{
    return hp_conn_next_deadline((struct hio_hotpath *)ctx);
}

static const struct hio_wait_ops hp_wait_ops = { hp_wait_reap, hp_wait_ready, hp_wait_broken, NULL, hp_wait_wake_at };

/* wait.c's watch: the listeners of armed accepts (hp_ms_watch rate-limits
 * itself). A closed one's cancel goes with the wait's next submit, and its
 * end is a completion like any other: the check never ends the wait. */
static int
hp_wait_watch(void *ctx)
{
    struct hio_hotpath *h = ctx;

    hp_ms_watch(h);
    hp_bufs_tick(h); /* an idle ring gives its buffers back too */
    return 0;
}

void
hio_hp_wait_plan(struct hio_hotpath *h, struct hio_wait *w, unsigned want, double timeout, unsigned min_wait_us,
                 unsigned how)
{
    hio_owner_release_deferred(0); /* a load, unless something is deferred */
    w->ring = &h->uring;
    w->ops = &hp_wait_ops;
    w->ctx = h;
    w->counts = &h->st.io;
    w->timeout = timeout;
    w->flags = how | (h->batch_wait ? HIO_WAIT_BATCH : 0);
    /* min_complete: 0 (upstream's polling form) or timeout_ms: 0: do not
     * wait; submit, let the kernel run deferred work, peek. */
    if (timeout == 0 || want == 0) w->flags |= HIO_WAIT_POLL;
    w->want = want;
    w->min_wait_us = min_wait_us;
    w->watch.check = NULL;
    w->watch.arg = NULL;
    w->watch.every = 0;
    if (hp_ms_watching(h)) {
        /* Looked at here too (one coarse clock read when not due): a busy
         * ring's waits end on completions, never after an idle slice. */
        hp_ms_watch(h);
        w->watch.check = hp_wait_watch;
        w->watch.arg = h;
        w->watch.every = HP_MS_WATCH_EVERY;
    }
    w->err = w->timed_out = w->peek_missed = w->raised = w->watched = w->watch_err = 0;
}

/* ---- close ---- */

/* Closed rings whose memory the kernel might still touch, held until it
 * cannot (owner.c), and that memory's bytes: gauges, after a forced scan. */
unsigned long
hio_hp_leaked_rings(void)
{
    hio_owner_release_deferred(1);
    return hio_owner_deferred_rings(HIO_RING_HOTPATH);
}

size_t
hio_hp_deferred_bytes(void)
{
    hio_owner_release_deferred(1);
    return hio_owner_deferred_bytes(HIO_RING_HOTPATH);
}

static void
hp_free_tables(struct hio_hotpath *h, enum hio_release inflight_fate, struct hio_deferral *d)
{
    hp_slots_teardown(h, inflight_fate, d);
    hp_bodies_teardown(h);
    hp_conns_teardown(h);
    hp_ms_teardown(h);
    hp_queue_teardown(h);
}

static int
hp_drain_step(void *ctx)
{
    struct hio_hotpath *h = ctx;

    hp_reap(h);
    if (h->cancel_fallback == 1) {
        /* Older kernel (no IORING_ASYNC_CANCEL_ANY): request by request. */
        h->cancel_fallback = 2;
        hp_ms_cancel_every(h);
        hp_send_cancel_every(h);
    }
    return h->inflight <= 0;
}

/* Cancels everything in flight and reaps until the kernel holds nothing of
 * ours, blocking for at most budget seconds (0: never). */
static void
hp_drain_all(struct hio_hotpath *h, double budget)
{
    struct io_uring_sqe *sqe;
    struct hio_drain d;

    h->closing = 1;
    if (h->inflight <= 0) return;
    /* IORING_ASYNC_CANCEL_ANY (5.19): one SQE cancels every request. */
    if ((sqe = hp_sqe(h))) {
        io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, hp_ud(HIO_OP_CANCEL, 0, 0));
        h->inflight++;
    }
    d.ring = &h->uring;
    d.budget = budget;
    d.ctx = h;
    d.step = hp_drain_step;
    hio_drain(&d);
}

/*
 * #close drains for at most HP_CLOSE_DRAIN_SECONDS; the GC (from_gc) never
 * waits: a finalizer must not block, and it may run on any thread. Only
 * the owner thread can cancel (a SINGLE_ISSUER ring refuses any other task
 * with EEXIST), so another thread (#close once the owner ended, or the GC)
 * does not drain at all, and a drain stops at the first fatal error.
 *
 * Then the ring is exited (munmap and close, no io_uring_enter) and its
 * memory released as soon as nothing can touch it (owner.c, "Memory after
 * the owner", lists who could):
 * - nothing in flight any more, or the owner task gone: all of it, now;
 * - otherwise, on a DEFER_TASKRUN ring of a 6.17+ kernel: the recv
 *   buffers now. They are written only by recv task_work, which on such a
 *   ring runs inside an io_uring_enter on this ring by its owner task
 *   (multishot recvs on sockets do not run in io-wq: owner.c), and nobody
 *   can enter it once its fd is closed here: the owner thread is either us
 *   or not inside a call on it (each_completion refuses #close; the GC
 *   never frees a ring a frame still uses). The one other runner is the ring's exit work, which
 *   hands that local work on; since 6.17 whoever runs it cancels it
 *   (hio_owner_dying_tw_cancelled). The payloads of sends still in flight
 *   wait for the owner task to be gone (a send can be in its io-wq);
 * - otherwise (COOP_TASKRUN or no flags, kernels before 6.1; or a kernel
 *   before 6.17, whose exit work may hand DEFER_TASKRUN local work to the
 *   live owner as normal task_work and let it run before the cancel):
 *   task_work may run whenever the owner returns to user space, so
 *   buffers and payloads wait for the owner task to be gone.
 * Memory that waits is counted in hio_hp_leaked_rings (the ring, once)
 * and hio_hp_deferred_bytes until it is released.
 */
void
hio_hp_close(struct hio_hotpath *h, int from_gc)
{
    enum hio_release bufs_fate = HIO_RELEASE_NOW, sends_fate = HIO_RELEASE_NOW;
    struct hio_deferral *d = NULL;
    int self, held;

    if (!h->inited) return;
    hio_registry_remove(h);
    h->magic = 0;
    if (hio_owner_forked(&h->owner)) {
        /* The child never submits to, cancels on or unregisters from the
         * parent's ring; its buffer memory was never mapped here (DONTFORK).
         * Send payloads (malloc or plain mappings) are the child's own
         * copies, which no request of the child's touches: freed. */
        hio_bufring_teardown(&h->bufs, NULL, HIO_RELEASE_FORGET, NULL);
        hio_owner_forget_ring(&h->uring);
        hp_free_tables(h, HIO_RELEASE_NOW, NULL);
        hio_owner_release_deferred(0);
        h->inited = 0;
        h->closed = 1;
        return;
    }
    self = !hio_owner_other_thread(&h->owner);
    if (self) hp_drain_all(h, from_gc ? 0 : HP_CLOSE_DRAIN_SECONDS);
    else h->closing = 1;
    held = h->inflight > 0; /* the kernel still holds requests of ours */
    if (held && (self || !hio_owner_task_gone(&h->owner))) {
        sends_fate = HIO_RELEASE_DEFER;
        if (!(h->flags & IORING_SETUP_DEFER_TASKRUN) || !hio_owner_dying_tw_cancelled())
            bufs_fate = HIO_RELEASE_DEFER;
    }
    hp_conn_close_leftovers(h);
    if (sends_fate == HIO_RELEASE_DEFER || bufs_fate == HIO_RELEASE_DEFER)
        d = hio_owner_defer_begin(&h->owner, HIO_RING_HOTPATH);
    /* Unregistering is an io_uring_register call: only the owner may, and
     * only once the kernel gave every buffer back; exiting the ring drops
     * the registration anyway. */
    hio_bufring_teardown(&h->bufs, self && !held ? &h->uring : NULL, bufs_fate, d);
    io_uring_queue_exit(&h->uring);
    hp_free_tables(h, sends_fate, d);
    hio_owner_defer_end(d); /* counted only if something waits */
    h->inited = 0;
    h->closed = 1;
    hio_owner_release_deferred(0);
}

/* ---- what the bindings read ---- */

int
hio_hp_is_open(const struct hio_hotpath *h)
{
    return h->inited;
}

int
hio_hp_may(const struct hio_hotpath *h, enum hio_owner_use use)
{
    return h->inited ? (int)hio_owner_may(&h->owner, use) : HIO_REFUSE_CLOSED;
}

int
hio_hp_was_opened(const struct hio_hotpath *h)
{
    return h->inited || h->closed;
}

int
hio_hp_healthy(const struct hio_hotpath *h)
{
    return h->inited && h->healthy;
}

void
hio_hp_set_unhealthy(struct hio_hotpath *h)
{
    h->healthy = 0;
}

int
hio_hp_fd(const struct hio_hotpath *h)
{
    return h->inited ? h->uring.ring_fd : -1;
}

int
hio_hp_batch_wait(const struct hio_hotpath *h)
{
    return h->batch_wait;
}

const struct hio_owner *
hio_hp_owner(const struct hio_hotpath *h)
{
    return &h->owner;
}

unsigned
hio_hp_queued(const struct hio_hotpath *h)
{
    return h->done.count;
}

void
hio_hp_stats(const struct hio_hotpath *h, struct hio_hp_stats *out)
{
    hio_owner_release_deferred(0);
    out->st = h->st;
    out->buffers_in_use = h->bufs.in_use;
    out->buffers_published = h->bufs.published;
    out->buffers_wanted = h->bufs.want;
    out->buffer_pages_resident = hio_bufring_pages_resident(&h->bufs);
    out->buffer_releases_to_os = h->bufs.releases_to_os;
    out->buffer_withdrawals = h->bufs.withdrawals;
    out->inflight = h->inflight < 0 ? 0 : (uint64_t)h->inflight;
    out->queued = h->done.count;
    out->queued_send_bytes = h->send_held;
    out->body_file_bytes = h->body_bytes;
    out->setup_flags = h->flags;
}

int
hio_hp_callable(const struct hio_hotpath *h)
{
    return h->magic == HIO_HOTPATH_MAGIC && h->inited && hio_owner_may(&h->owner, HIO_USE_CALL) == HIO_OWNER_OK;
}


unsigned
hio_hp_buffer_count(const struct hio_hotpath *h)
{
    return h->bufs.n;
}

int
hio_hp_buffer(const struct hio_hotpath *h, long bid, const unsigned char **data, unsigned *len)
{
    int ret = hio_bufring_check(&h->bufs, bid);

    if (ret < 0) return ret;
    *data = hio_bufring_data(&h->bufs, (unsigned)bid);
    *len = hio_bufring_len(&h->bufs, (unsigned)bid);
    return 0;
}
