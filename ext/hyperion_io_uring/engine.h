/*
 * engine.h: what the bindings (and c_api.c, hp_probe.c) may use of the two
 * engines. Ruby-free. The engines' structs are opaque here: they are
 * defined in ring.c and hp.h, and reached through these functions.
 */
#ifndef HIO_ENGINE_H
#define HIO_ENGINE_H 1

#include <stddef.h>
#include <stdint.h>
#include "owner.h"
#include "wait.h"

#define HIO_MAX_QUEUE_DEPTH 32768u
#define HIO_MAX_READ (16u * 1024u * 1024u)

/* Why a ring may not be used now: 0 when it may, an owner verdict
 * (HIO_OWNER_FORKED, HIO_OWNER_OTHER_THREAD), or one of these. */
enum hio_refusal {
    HIO_REFUSE_CLOSED = 16, /* not open (never, or no more) */
    HIO_REFUSE_BUSY,        /* Ring: a call is running (a fiber parked in it) */
    HIO_REFUSE_WEDGED       /* Ring: a request could not be cancelled */
};

/* ---- probe.c ---- */

/* Sets up and tears down a two-entry ring: 0, or the -errno of the setup
 * (EINTR and EAGAIN were retried by setup.c). */
int hio_probe_native(void);

/* ---- ring.c: the single-shot Ring ---- */

struct hio_sring;

enum hio_sreq_kind { HIO_SREQ_ACCEPT = 1, HIO_SREQ_READ = 2 };

/* One call's request: what the binding asks, and what came of it. */
struct hio_sreq {
    enum hio_sreq_kind kind;
    int fd;
    unsigned len;      /* READ: bytes at most, into the ring's buffer */
    int flags;         /* ACCEPT: accept4(2) flags of the new fd (SOCK_*) */
    double timeout;    /* seconds it may wait; < 0: no limit */
    int res;           /* done: the request's result (fd, bytes, -errno) */
    int done;          /* 0: it timed out or was cancelled */
    int fatal;         /* -errno of the wait itself */
    int wedged;        /* it could not be cancelled: the ring is unusable now */
    const char *data;  /* READ done with res > 0: the bytes, in the ring's buffer */
};

struct hio_sring_stats {
    uint64_t ops, waits, cancels, kept_reads, kept_accepts;
    unsigned setup_flags;
};

/* A ring not open yet (safe to free), or NULL without memory. */
struct hio_sring *hio_sring_new(void);
/* Closes (never blocks) and frees. */
void hio_sring_free(struct hio_sring *r);
size_t hio_sring_memsize(const struct hio_sring *r);
int hio_sring_open(struct hio_sring *r, unsigned depth);
void hio_sring_close(struct hio_sring *r);
/* A read buffer of at least len bytes: 0, -ENOMEM, or -EBUSY when wedged. */
int hio_sring_reserve(struct hio_sring *r, size_t len);
/* Starts req on r and describes its wait in w, for wait.c to run. Its end
 * callback cancels and drains what the kernel still holds, however the
 * wait ends, so req is final once hio_wait_ruby returns. */
void hio_sring_begin(struct hio_sring *r, struct hio_sreq *req, struct hio_wait *w);
int hio_sring_is_open(const struct hio_sring *r);
/* Whether the caller may use r for use now: 0, an owner verdict, or an
 * enum hio_refusal (a call: closed, busy, wedged; a close: busy). */
int hio_sring_may(const struct hio_sring *r, enum hio_owner_use use);
int hio_sring_fd(const struct hio_sring *r);
const struct hio_owner *hio_sring_owner(const struct hio_sring *r);
void hio_sring_stats(const struct hio_sring *r, struct hio_sring_stats *out);
/* Rings of this process closed while the kernel might still write their
 * read buffer, whose buffer is held now until it cannot (a gauge), and its
 * bytes. Both release what may be released first. */
unsigned long hio_sring_leaked_rings(void);
size_t hio_sring_deferred_bytes(void);

/* ---- hotpath.c: HotpathRing ---- */

struct hio_hotpath;

enum hio_op_kind {
    HIO_OP_ACCEPT = 1,
    HIO_OP_RECV = 2,
    HIO_OP_SEND = 3,
    HIO_OP_CLOSE = 4,
    HIO_OP_CANCEL = 5 /* internal: never reaches Ruby */
};

/* What Ruby sees of one completion (upstream's 24-byte Completion). */
struct hio_completion {
    int32_t op_kind;
    int32_t fd;
    int64_t result;
    int32_t buf_id;
    uint32_t flags;
};

/* Counters since the ring opened; each is counted by the file of its concern. */
struct hio_stats {
    uint64_t accepts, recvs, recv_bytes, sends, send_bytes, short_sends, enobufs, rearms,
        cq_overflows, stale_completions, closes;
    uint64_t send_buffer_full; /* sends refused with -ENOBUFS (hp_send.c) */
    uint64_t close_timeouts;   /* submit_close deadlines that cancelled sends (hotpath.c) */
    uint64_t cancels_owed;     /* cancels that found no SQE and were issued later (hp_queue.c) */
    uint64_t send_copy_allocs; /* malloc/mmap calls for send copies: 0 per send once warm (hp_slots.c) */
    uint64_t borrowed_sends;   /* sends of the caller's memory, without a copy (hp_send.c) */
    uint64_t zc_sends;         /* IORING_OP_SEND_ZC requests made (hp_send.c) */
    uint64_t zc_copied;        /* ... whose notification said the kernel copied the bytes anyway */
    uint64_t file_sends;       /* sends made with sendfile(2) from a memfd copy (hp_send.c) */
    uint64_t body_files;       /* memfd copies of bodies made (hp_bodies.c) */
    struct hio_wait_counts io; /* submits, waits, batch_waits */
};

/* The counters and the state, as HotpathRing#stats reports them. */
struct hio_hp_stats {
    struct hio_stats st;
    uint64_t buffers_in_use, inflight, queued;
    uint64_t buffers_published;     /* in the kernel's buffer ring now (buf_ring.c) */
    uint64_t buffers_wanted;        /* how many the ring keeps published now: adapts */
    uint64_t buffer_pages_resident; /* pages of the buffer pool resident now (mincore) */
    uint64_t buffer_releases_to_os; /* buffers whose pages were given back (MADV_DONTNEED) */
    uint64_t buffer_withdrawals;    /* idle published buffers taken back from the kernel's ring */
    uint64_t queued_send_bytes; /* bytes of send copies the ring holds now */
    uint64_t body_file_bytes;   /* bytes of the memfd copies of bodies kept now (hp_bodies.c) */
    unsigned setup_flags;
};

/* Which limit refused a send (-ENOBUFS), for the binding's message. */
enum hio_send_limit_kind { HIO_LIMIT_RING = 1, HIO_LIMIT_CONNECTION = 2 };
struct hio_send_refusal {
    int fd;
    int which;      /* enum hio_send_limit_kind */
    uint64_t limit; /* the limit that refused it */
    uint64_t held;  /* bytes held against that limit before the send */
    uint64_t len;   /* the send's bytes */
};

/* send_buffer_limit and connection_send_limit when none are set. */
#define HIO_DEFAULT_SEND_LIMIT (64ull * 1024 * 1024)
/* submit_close's deadline when none is set: seconds. */
#define HIO_DEFAULT_CLOSE_TIMEOUT 60.0

/* A ring not open yet (safe to free), or NULL without memory. */
struct hio_hotpath *hio_hp_new(void);
/* Frees a ring hio_hp_close closed (or that never opened). */
void hio_hp_free(struct hio_hotpath *h);
size_t hio_hp_memsize(const struct hio_hotpath *h);
/* 0, or -errno with hio_hp_open_error saying which step failed. */
int hio_hp_open(struct hio_hotpath *h, unsigned depth, unsigned n_bufs, unsigned buf_size);
const char *hio_hp_open_error(const struct hio_hotpath *h);

int hio_hp_submit_accept(struct hio_hotpath *h, int fd);
int hio_hp_submit_recv(struct hio_hotpath *h, int fd);
int hio_hp_submit_send(struct hio_hotpath *h, int fd, const void *data, size_t len);
struct iovec;
/* The send submits: 0, or -errno; -ENOBUFS when the bytes would pass the
 * ring's or the connection's limit (hio_hp_send_refusal says which). */
int hio_hp_submit_sendv(struct hio_hotpath *h, int fd, const struct iovec *iov, unsigned iovcnt);
/* A send of len bytes at data without a copy: the memory is the caller's,
 * pinned under token, and must stay put and unchanged until the engine
 * calls hio_owner_unpin(token): the kernel is done with it (the send's
 * final CQE, or its ring's memory released at close, owner.c), or at once
 * when this returns -errno. The engine owns the token from the call on.
 * len > 0. It counts against the send limits like a copy. */
int hio_hp_submit_send_borrowed(struct hio_hotpath *h, int fd, const void *data, size_t len, uint64_t token);
/* Bytes of copies held for the ring's sends (<= ring_limit), and for one
 * connection's (<= conn_limit; at most ring_limit). Set before sending. */
void hio_hp_set_send_limits(struct hio_hotpath *h, uint64_t ring_limit, uint64_t conn_limit);
void hio_hp_send_limits(const struct hio_hotpath *h, uint64_t *ring_limit, uint64_t *conn_limit);
/* Which send completions reach Ruby: every one (upstream's contract, the
 * default), or only failures (a send that went out in full ends silently:
 * one completion per request in a server's steady state). */
enum hio_send_report { HIO_SEND_REPORT_ALL = 0, HIO_SEND_REPORT_FAILURES = 1 };
void hio_hp_set_send_report(struct hio_hotpath *h, enum hio_send_report report);
enum hio_send_report hio_hp_send_report(const struct hio_hotpath *h);
/* Borrowed sends of at least min bytes go as IORING_OP_SEND_ZC where the
 * kernel has it (0: never). Whether it has it: */
void hio_hp_set_zero_copy_min(struct hio_hotpath *h, size_t min);
size_t hio_hp_zero_copy_min(const struct hio_hotpath *h);
int hio_hp_zero_copy_supported(const struct hio_hotpath *h);
/* Borrowed sends of at least min bytes go out with sendfile(2) from a
 * sealed memfd copy of the String, made once and cached (hp_bodies.c;
 * 0: never; without memfd_create it stays 0). */
void hio_hp_set_sendfile_min(struct hio_hotpath *h, size_t min);
size_t hio_hp_sendfile_min(const struct hio_hotpath *h);
/* The last send refused with -ENOBUFS. */
void hio_hp_send_refusal(const struct hio_hotpath *h, struct hio_send_refusal *out);
/* Bytes of send copies held for fd's connection now (0 for a fd without). */
uint64_t hio_hp_queued_send_bytes(const struct hio_hotpath *h, int fd);
int hio_hp_cancel(struct hio_hotpath *h, int fd);
/* Cancels fd's multishot requests and closes it through the ring once its
 * queued sends have ended, or at timeout seconds (< 0: no deadline) with
 * the sends still queued then cancelled. -EALREADY: a close of it is still
 * pending. */
int hio_hp_submit_close(struct hio_hotpath *h, int fd, double timeout);
/* submit_close's deadline when the caller gives none: seconds, < 0 none. */
void hio_hp_set_close_timeout(struct hio_hotpath *h, double timeout);
double hio_hp_close_timeout(const struct hio_hotpath *h);
int hio_hp_flush(struct hio_hotpath *h);
/* Ruby gives buffer bid back: 0, or -ERANGE / -ENOENT as hio_hp_buffer. */
int hio_hp_release(struct hio_hotpath *h, long bid);

/* Describes each_completion's wait for wait.c: until want completions are
 * queued (min_wait_us: a batch window) or timeout seconds pass (< 0: none;
 * 0 or want 0: do not block). how: HIO_WAIT_RUBY, or 0 (GVL held). */
void hio_hp_wait_plan(struct hio_hotpath *h, struct hio_wait *w, unsigned want, double timeout, unsigned min_wait_us,
                      unsigned how);
/* Completions reaped, not yet yielded: take the first, look at it, count. */
int hio_hp_pop(struct hio_hotpath *h, struct hio_completion *out);
int hio_hp_peek(const struct hio_hotpath *h, struct hio_completion *out);
unsigned hio_hp_queued(const struct hio_hotpath *h);

/* Cancels and drains what is in flight (from_gc: without blocking),
 * closes the fds submit_close asked for, frees the ring's memory. */
void hio_hp_close(struct hio_hotpath *h, int from_gc);
int hio_hp_is_open(const struct hio_hotpath *h);
/* Whether the caller may use h for use now: 0, an owner verdict, or
 * HIO_REFUSE_CLOSED. */
int hio_hp_may(const struct hio_hotpath *h, enum hio_owner_use use);
/* It was opened once (it may be closed now). */
int hio_hp_was_opened(const struct hio_hotpath *h);
int hio_hp_healthy(const struct hio_hotpath *h);
void hio_hp_set_unhealthy(struct hio_hotpath *h);
int hio_hp_fd(const struct hio_hotpath *h);
/* each_completion(min_wait_us:) makes kernel batch waits on this ring. */
int hio_hp_batch_wait(const struct hio_hotpath *h);
const struct hio_owner *hio_hp_owner(const struct hio_hotpath *h);
void hio_hp_stats(const struct hio_hotpath *h, struct hio_hp_stats *out);
/* Whether the C entry point may submit on h from here: open, and this is
 * its process and thread. Only for a handle known to be live. */
int hio_hp_callable(const struct hio_hotpath *h);

/* A recv buffer Ruby holds: 0 with its bytes and how many the kernel
 * wrote, -ERANGE for no such buffer, -ENOENT for one Ruby does not hold. */
int hio_hp_buffer(const struct hio_hotpath *h, long bid, const unsigned char **data, unsigned *len);
unsigned hio_hp_buffer_count(const struct hio_hotpath *h);

/* Rings of this process closed while the kernel might still write their
 * memory, whose memory is held now until it cannot (a gauge), and its
 * bytes. Both release what may be released first. */
unsigned long hio_hp_leaked_rings(void);
size_t hio_hp_deferred_bytes(void);

/* ---- hp_probe.c ---- */

/* The functional hot-path probe: NULL when it worked, else reason, with
 * *err the -errno of the step that failed (transient ones were retried). */
const char *hio_hp_probe(char *reason, size_t cap, int *err);
/* Whether a probe's -errno (or errno) is transient: a signal, a momentary
 * shortage. Such a failure must not be taken as the host's answer. */
int hio_probe_transient(int err);

#endif
