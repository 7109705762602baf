/*
 * hyperion_io_uring.h: private types and prototypes shared by the .c files.
 *
 * Engine files (ring.c, hotpath.c, buf_ring.c, wait.c, probe.c) own C state
 * only; binding files (ring_class.c, hotpath_class.c) turn Ruby values into
 * C values and back. wait.c is the one place that blocks.
 */
#ifndef HYPERION_IO_URING_H
#define HYPERION_IO_URING_H 1

#include <ruby.h>
#include <ruby/thread.h>
#include <liburing.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include "fifo.h"
#include "registry.h"
#include "setup.h"
#include "wait.h"

#ifndef HIO_LIBURING_VERSION
#define HIO_LIBURING_VERSION "unknown"
#endif

#ifdef HAVE_VALGRIND_MEMCHECK_H
#include <valgrind/memcheck.h>
/* Memcheck cannot see what the kernel writes through io_uring. */
#define HIO_MEM_DEFINED(p, n) VALGRIND_MAKE_MEM_DEFINED((p), (n))
#define HIO_ON_VALGRIND() RUNNING_ON_VALGRIND
#else
#define HIO_MEM_DEFINED(p, n) ((void)(p), (void)(n))
#define HIO_ON_VALGRIND() 0
#endif

#define HIO_MAX_QUEUE_DEPTH 32768u
#define HIO_MAX_READ (16u * 1024u * 1024u)

/* ---- module and classes (ext.c) ---- */
extern VALUE hio_mIOUring;
extern VALUE hio_cRing;
extern VALUE hio_cHotpathRing;
extern VALUE hio_eError;
extern VALUE hio_eUnsupported;
extern VALUE hio_eForkError;
extern VALUE hio_eThreadError;
extern VALUE hio_eRingError;

/* ---- errors.c ---- */
NORETURN(void hio_raise_errno(int err, const char *fmt, ...));
NORETURN(void hio_raise_closed(void));
void hio_require_supported(const char *what, const char *probe, const char *reason_method);
void hio_init_errors(void);

/* ---- args.c: argument helpers of the bindings ---- */
int hio_fd_arg(VALUE io_or_fd, const char *what);
double hio_timeout_arg(VALUE timeout, const char *what);
double hio_timeout_ms_arg(VALUE timeout_ms);
unsigned hio_depth_arg(VALUE v, const char *what);
unsigned hio_uint_arg(VALUE v, const char *what, unsigned lo, unsigned hi, int pow2);
struct iovec;
const struct iovec *hio_iov_arg(VALUE ptr, VALUE count, const char *what, unsigned *iovcnt);

/* ---- owner: the process and OS thread a ring belongs to ---- */
struct hio_owner {
    pid_t pid;
    pthread_t tid;
};
void hio_owner_init(struct hio_owner *o);
int hio_owner_forked(const struct hio_owner *o);
int hio_owner_other_thread(const struct hio_owner *o);
/* Raises ForkError / ThreadError when the caller may not use the ring. */
void hio_owner_check(const struct hio_owner *o, const char *cls);

/* ---- probe.c ---- */
void hio_queue_forget(struct io_uring *ring);
void hio_init_probe(void);

/* ---- wait.c: the binding's side (the engines' side is wait.h) ---- */
/*
 * Runs a wait an engine described, for a Ruby method: without the GVL,
 * through the Fiber scheduler when the calling fiber has one (its eventfd
 * IO cached in *sched_io, which the binding marks). May raise (interrupts)
 * once the engine has reaped what completed; w->end (if any) runs first.
 * Returns w->err: 0 or -errno.
 */
int hio_wait_ruby(struct hio_wait *w, VALUE *sched_io);
/* Closes the eventfd IO of *sched_io (if any) and clears the slot. */
void hio_sched_io_close(VALUE *sched_io);

/* ---- ring.c: the single-shot Ring engine ---- */
enum hio_sreq_kind { HIO_SREQ_ACCEPT = 1, HIO_SREQ_READ = 2 };

/* One call's request: what the binding asks, and what came of it. */
struct hio_sreq {
    enum hio_sreq_kind kind;
    int fd;
    unsigned len;      /* READ: bytes at most, into the ring's buffer */
    double deadline;   /* hio_now() seconds; < 0: none */
    int res;           /* done: the request's result (fd, bytes, -errno) */
    int done;          /* 0: it timed out or was cancelled */
    int fatal;         /* -errno of the wait itself */
};

struct hio_sring {
    struct io_uring uring;
    int inited;       /* io_uring_queue_init succeeded */
    int wedged;       /* a request could not be drained: leak its buffer */
    unsigned flags;   /* setup flags in force */
    struct hio_owner owner;
    uint64_t seq;     /* request tokens */
    char *buf;        /* read scratch, owned here, never moved by the GC */
    size_t buf_cap;
    uint64_t ops, waits, cancels;
    int busy;         /* a call is running; under a scheduler its fiber may be parked */
    unsigned char direct[3]; /* per hio_sreq_kind: calls left that submit and wait in one enter */
    struct {          /* the call in progress */
        struct hio_sreq *req;
        uint64_t token;
        int pending;  /* an SQE of ours is in the kernel */
        int polling;  /* the pending SQE is the EAGAIN poll fallback */
    } op;
    VALUE sched_io;   /* IO of the eventfd for Fiber scheduler waits (marked) */
};

int hio_sring_open(struct hio_sring *r, unsigned depth);
void hio_sring_close(struct hio_sring *r);
unsigned long hio_sring_leaked_rings(void);
int hio_sring_reserve(struct hio_sring *r, size_t len);
/* Starts req on r and describes its wait in w, for wait.c to run. Its end
 * callback cancels and drains what the kernel still holds, however the
 * wait ends, so req is final once hio_wait_ruby returns. */
void hio_sring_begin(struct hio_sring *r, struct hio_sreq *req, struct hio_wait *w);

/* ---- buf_ring.c: the provided-buffer ring ---- */
struct hio_bufring {
    struct io_uring_buf_ring *br; /* descriptors, mmap'd */
    size_t br_bytes;
    unsigned char *mem;           /* n * size bytes, mmap'd */
    size_t mem_bytes;
    unsigned n, size;
    unsigned short bgid;
    int registered;
    uint8_t *held;                /* 1: held by Ruby */
    uint32_t *len;                /* bytes the kernel wrote into a held buffer */
    unsigned in_use;
};
int hio_bufring_setup(struct hio_bufring *b, struct io_uring *ring, unsigned n, unsigned size, unsigned short bgid);
int hio_bufring_take(struct hio_bufring *b, unsigned bid, unsigned len);
int hio_bufring_check(const struct hio_bufring *b, long bid);
void hio_bufring_release(struct hio_bufring *b, unsigned bid);
void hio_bufring_recycle(struct hio_bufring *b, unsigned bid);
unsigned hio_bufring_available(const struct hio_bufring *b);
const unsigned char *hio_bufring_data(const struct hio_bufring *b, unsigned bid);
void hio_bufring_teardown(struct hio_bufring *b, struct io_uring *ring, int kernel_may_write);

/* ---- hotpath.c: the HotpathRing engine ---- */
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

struct hio_stats {
    uint64_t accepts, recvs, recv_bytes, sends, send_bytes, short_sends, enobufs, rearms,
        cq_overflows, stale_completions, submits, waits, batch_waits, closes;
};

struct hio_hotpath;

int hio_hp_open(struct hio_hotpath *h, unsigned depth, unsigned n_bufs, unsigned buf_size);
int hio_hp_submit_accept(struct hio_hotpath *h, int fd);
int hio_hp_submit_recv(struct hio_hotpath *h, int fd);
int hio_hp_submit_send(struct hio_hotpath *h, int fd, const void *data, size_t len);
struct iovec;
int hio_hp_submit_sendv(struct hio_hotpath *h, int fd, const struct iovec *iov, unsigned iovcnt);
int hio_hp_cancel(struct hio_hotpath *h, int fd);
/* Cancels fd's multishot requests and closes it through the ring once its
 * queued sends have ended. -EALREADY: a close of it is still pending. */
int hio_hp_submit_close(struct hio_hotpath *h, int fd);
int hio_hp_flush(struct hio_hotpath *h);
int hio_hp_release(struct hio_hotpath *h, unsigned bid);
/* Describes each_completion's wait for wait.c: until want completions are
 * queued (min_wait_us: a batch window) or timeout seconds pass (< 0: none;
 * 0 or want 0: do not block). how: HIO_WAIT_RUBY, or 0 (GVL held). */
void hio_hp_wait_plan(struct hio_hotpath *h, struct hio_wait *w, unsigned want, double timeout, unsigned min_wait_us,
                      unsigned how);
int hio_hp_pop(struct hio_hotpath *h, struct hio_completion *out);
int hio_hp_peek(const struct hio_hotpath *h, struct hio_completion *out);
/* Cancels and drains what is in flight (from_gc: without blocking),
 * closes the fds submit_close asked for, frees the ring. */
void hio_hp_close(struct hio_hotpath *h, int from_gc);
unsigned long hio_hp_leaked_rings(void);
const char *hio_hp_probe(char *reason, size_t cap);

void hio_init_ring_class(void);
void hio_init_hotpath_class(void);
/* hotpath_class.c: the engine of a HotpathRing the caller may use now, or
 * an exception saying why not (closed, forked, another thread). */
struct hio_hotpath *hio_hotpath_usable(VALUE self);
void hio_init_hotpath_buffers(VALUE klass);

#endif
