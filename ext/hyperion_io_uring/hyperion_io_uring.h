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

#ifndef HIO_LIBURING_VERSION
#define HIO_LIBURING_VERSION "unknown"
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
int hio_fd_arg(VALUE io_or_fd, const char *what);
double hio_timeout_arg(VALUE timeout, const char *what);
void hio_init_errors(void);

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

/* ---- probe.c: ring setup with the best flags this kernel takes ---- */
int hio_queue_init(struct io_uring *ring, unsigned entries, unsigned cq_entries, unsigned *flags_out);
void hio_queue_forget(struct io_uring *ring);
void hio_init_probe(void);

/* ---- wait.c: the only place that blocks ---- */
double hio_now(void);
/*
 * Submits what is queued and waits, with the GVL released, until wait_nr
 * completions are ready or timeout seconds pass (timeout < 0: no limit).
 * Returns 0 or a fatal -errno; EINTR, ETIME, EAGAIN, EBUSY mean "nothing
 * yet" and return 0. The caller reaps with the GVL held and then calls
 * rb_thread_check_ints() (or lets the scheduler path do so).
 */
int hio_wait_nogvl(struct io_uring *ring, unsigned wait_nr, double timeout);
/* Submits and flushes completions without blocking (GVL held). */
int hio_submit_get_events(struct io_uring *ring);
/* Waits with the GVL held: only for short bounded drains in cleanup. */
int hio_wait_held(struct io_uring *ring, unsigned wait_nr, double timeout);
/*
 * When the calling fiber is non-blocking under a Fiber scheduler, waits
 * through the scheduler for the ring fd to become readable.
 * Returns 1 when it waited that way, 0 when there is no scheduler.
 */
int hio_wait_scheduler(struct io_uring *ring, double timeout);

/* ---- ring.c: the single-shot Ring engine ---- */
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
};

enum hio_sop_kind { HIO_SOP_ACCEPT = 1, HIO_SOP_READ = 2 };

struct hio_sop {
    struct hio_sring *r;
    enum hio_sop_kind kind;
    int fd;
    unsigned len;
    double deadline;   /* < 0: none */
    uint64_t token;
    int pending;       /* an SQE of ours is in the kernel */
    int polling;       /* the pending SQE is the EAGAIN poll fallback */
    int res;           /* final result of the op */
    int done;
    int timed_out;
    int fatal;         /* -errno from the wait itself */
};

int hio_sring_open(struct hio_sring *r, unsigned depth);
void hio_sring_close(struct hio_sring *r);
int hio_sring_reserve(struct hio_sring *r, size_t len);
/* Runs op to its end; raises only after the request is drained. */
void hio_sring_run(struct hio_sop *op);

void hio_require_supported(const char *what, const char *probe);
unsigned hio_depth_arg(VALUE v, const char *what);
void hio_init_ring_class(void);
void hio_init_hotpath_class(void);

#endif
