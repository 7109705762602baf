/*
 * wait.h: how an engine describes a wait or a drain (wait.c decides how to
 * wait and performs it; it is the one place that blocks).
 *
 * Layer: beside the engines' bottom layer. Ruby-free: engines include it.
 * The binding's entry point, which needs Ruby's types (hio_wait_ruby), is
 * in hyperion_io_uring.h.
 */
#ifndef HIO_WAIT_H
#define HIO_WAIT_H 1

#include <liburing.h>
#include <stdint.h>

/* CLOCK_MONOTONIC, in seconds. */
double hio_now(void);
/* CLOCK_MONOTONIC_COARSE (a few ms of resolution, no syscall): for checks
 * made at most every so often on a hot path. */
double hio_now_coarse(void);

enum hio_wait_flag {
    /* A Ruby method waits: without the GVL, Ruby's interrupts (Thread#raise,
     * Timeout, signals) end the wait and are raised once what is in the CQ
     * was reaped, and a non-blocking fiber under a Fiber scheduler waits
     * through the scheduler. Needs hio_wait_ruby. Without this flag the
     * wait keeps the GVL and is not interruptible: only for bounded waits
     * (a probe), in slices of at most 50 ms. */
    HIO_WAIT_RUBY = 1u << 0,
    /* Never block: submit, let the kernel run deferred work, reap. */
    HIO_WAIT_POLL = 1u << 1,
    /* Before each wait, submit and reap without blocking: for requests
     * that often complete inline (an accept with a connection in the
     * backlog, a read with data ready). */
    HIO_WAIT_PEEK = 1u << 2,
    /* ... except the first time: the caller expects to wait, so the first
     * enter submits and waits at once. */
    HIO_WAIT_NO_FIRST_PEEK = 1u << 3,
    /* The ring can make kernel batch waits (hio_batch_wait_supported). */
    HIO_WAIT_BATCH = 1u << 4
};

/* What reap returns when it queued new requests a peek may complete at
 * once (with HIO_WAIT_PEEK the next round then peeks before it waits). */
#define HIO_REAP_AGAIN 1

struct hio_wait;

/* The engine's side of a wait, called with the GVL held; none raises. */
struct hio_wait_ops {
    int (*reap)(void *ctx);              /* reaps the CQ: 0 or HIO_REAP_AGAIN */
    unsigned (*ready)(void *ctx);        /* how much of what the caller wants is there */
    void (*broken)(void *ctx, int err);  /* optional: a blocking wait failed (-errno) */
    /* Optional: runs when the wait is over, also when it ends with an
     * exception (then raised is set and the exception goes on afterwards). */
    void (*end)(void *ctx, const struct hio_wait *w);
    /* Optional: a CLOCK_MONOTONIC time (hio_now) by which the engine needs
     * reap called again though nothing completed (a deadline of its own),
     * or < 0 for none. A blocking wait returns by then, reaps, and goes on
     * waiting for what the caller wants; the caller's timeout is unchanged. */
    double (*wake_at)(void *ctx);
};

/* What waits add to: enters that may block, kernel batch waits, enters
 * that hand SQEs to the kernel. */
struct hio_wait_counts {
    uint64_t waits, batch_waits, submits;
};

/*
 * Something to look at while a wait blocks, that no completion announces:
 * a listener closed behind the ring's back (the ring's request holds its
 * own reference to the socket, so the kernel never ends it). With a check,
 * no blocking wait lasts longer than every seconds, and check runs before
 * each blocking wait, the first one included (so it can note what it watches
 * before the wait blocks; later ones follow Ruby's interrupts, trap
 * handlers included, and a look at the CQ). GVL held; never raises, never
 * blocks. 0: go on; a -errno ends the wait (watch_err), and the engine's
 * end callback cancels what is in flight as for any early end.
 */
struct hio_wait_watch {
    double every;
    int (*check)(void *arg);
    void *arg;
};

struct hio_wait {
    struct io_uring *ring;
    const struct hio_wait_ops *ops;
    void *ctx;                       /* the ops' argument */
    struct hio_wait_counts *counts;  /* optional */
    /* Seconds it may block, < 0: no limit. Counted from the first time it
     * would block, so a wait that finds what it wants reads no clock. */
    double timeout;
    unsigned flags;                  /* enum hio_wait_flag */
    unsigned want;                   /* the wait ends once ready() >= want */
    /* > 0: a batch window. With HIO_WAIT_BATCH the kernel waits for want
     * completions for at most min_wait_us, then returns as soon as one is
     * there; elsewhere the wait ends at the first completion. Either way
     * the caller may get fewer than want. */
    unsigned min_wait_us;
    struct hio_wait_watch watch;     /* optional (check NULL: none) */
    /* Results (the engine sets them to 0). */
    int err;                 /* -errno that ended the wait, or 0 */
    int timed_out;           /* the timeout passed first */
    int peek_missed;         /* a peek found nothing: the request had to wait */
    int raised;              /* for end: an exception ends the wait */
    int watched;             /* the wait blocked with a watch (its check ran) */
    int watch_err;           /* -errno of the check that ended the wait, or 0 */
};

/* Runs a wait without HIO_WAIT_RUBY (GVL held). Returns w->err. */
int hio_wait_held(struct hio_wait *w);

/* A drain with a budget: what is left in flight after a cancel, reaped
 * until step says it is all back. */
struct hio_drain {
    struct io_uring *ring;
    /* Seconds it may block, GVL held, not interruptible, in slices of at
     * most 50 ms. 0: it never blocks (a finalizer): a few passes that
     * submit, let the kernel run deferred work and reap. */
    double budget;
    void *ctx;
    int (*step)(void *ctx);  /* reaps (GVL held, never raises); nonzero once drained */
};

/* 0 once drained, -ETIME when the budget ran out first, or the fatal
 * -errno that ended it at once (the ring refuses this task, its fd is gone). */
int hio_drain(const struct hio_drain *d);

/* Submits what is queued and flushes completions without blocking (GVL
 * held). 0 or a fatal -errno. */
int hio_submit_get_events(struct io_uring *ring);
/* Whether the kernel can make batch waits on ring (IORING_FEAT_MIN_TIMEOUT,
 * Linux 6.12; never under valgrind). */
int hio_batch_wait_supported(const struct io_uring *ring);

#endif
