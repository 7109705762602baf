/*
 * owner.h: who may touch a ring: the process and the thread that made it,
 * and what a forked child does instead (owner.c). Bottom layer.
 */
#ifndef HIO_OWNER_H
#define HIO_OWNER_H 1

#include <liburing.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/types.h>

/* The identity of a thread. pthread_t today; the one place to change for
 * gettid() (with hio_owner_thread_now and hio_owner_same_thread below). */
typedef pthread_t hio_thread_id;

struct hio_owner {
    pid_t pid;
    hio_thread_id thread;
};

/* What a caller wants to do with a ring. */
enum hio_owner_use {
    HIO_USE_CALL,    /* submit, wait, reap: only the owner thread of the owner process */
    HIO_USE_INSPECT, /* read counters or the fd: any thread of the owner process */
    HIO_USE_CLOSE    /* close: the owner thread, or a forked child (which only forgets it) */
};

enum hio_owner_verdict { HIO_OWNER_OK = 0, HIO_OWNER_FORKED, HIO_OWNER_OTHER_THREAD };

/* Once per process, before any ring: caches the pid, refreshed in a child. */
void hio_owner_process_init(void);
/* The calling thread of the calling process becomes o's owner. */
void hio_owner_init(struct hio_owner *o);

/* The checks run on every method call, so they are inline; they read
 * owner.c's pid cache (getpid() is a real syscall since glibc 2.25). */
extern pid_t hio_owner_pid;

static inline hio_thread_id
hio_owner_thread_now(void)
{
    return pthread_self();
}

static inline int
hio_owner_same_thread(hio_thread_id a, hio_thread_id b)
{
    return pthread_equal(a, b);
}

static inline int
hio_owner_forked(const struct hio_owner *o)
{
    return o->pid != hio_owner_pid;
}

static inline int
hio_owner_other_thread(const struct hio_owner *o)
{
    return !hio_owner_same_thread(o->thread, hio_owner_thread_now());
}

/* Whether the caller may use a ring owned by o for use. */
static inline enum hio_owner_verdict
hio_owner_may(const struct hio_owner *o, enum hio_owner_use use)
{
    if (hio_owner_forked(o)) return use == HIO_USE_CLOSE ? HIO_OWNER_OK : HIO_OWNER_FORKED;
    if (use != HIO_USE_INSPECT && hio_owner_other_thread(o)) return HIO_OWNER_OTHER_THREAD;
    return HIO_OWNER_OK;
}
/* Why not, for an exception message about a ring of class cls. */
const char *hio_owner_explain(const struct hio_owner *o, enum hio_owner_verdict v, const char *cls, char *buf,
                              size_t cap);

/* Keeps a forked child from inheriting the ring's SQ/CQ mappings. */
void hio_owner_dontfork_ring(struct io_uring *ring);
/* Keeps a forked child from inheriting memory the kernel writes. */
void hio_owner_dontfork_mem(void *p, size_t bytes);
/* In a forked child: drops the child's reference to the parent's ring
 * without submitting, cancelling or unmapping through liburing. */
void hio_owner_forget_ring(struct io_uring *ring);

#endif
