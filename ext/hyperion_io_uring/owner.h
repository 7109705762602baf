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

/*
 * The identity of a thread: the kernel task (gettid()), which is what
 * IORING_SETUP_SINGLE_ISSUER ties a ring to, plus pthread_self(). Neither
 * alone is enough: glibc reuses a pthread_t (the stack of a thread that
 * exited) for the next thread, and the kernel reuses a tid once pid_max
 * wraps; a new thread would need both to pass for the owner. A Ruby <= 3.2
 * Thread that ended leaves its native thread cached for ~3 s, and a new
 * Ruby Thread may run on it: same task, so the kernel (and this check)
 * accept it.
 */
typedef struct {
    pid_t tid;
    pthread_t pt;
} hio_thread_id;

struct hio_owner {
    pid_t pid;
    hio_thread_id thread;
};

/* What a caller wants to do with a ring. */
enum hio_owner_use {
    HIO_USE_CALL,    /* submit, wait, reap: only the owner thread of the owner process */
    HIO_USE_INSPECT, /* read counters or the fd: any thread of the owner process */
    HIO_USE_CLOSE    /* close: the owner thread, any thread once the owner's task is gone, or a forked child */
};

enum hio_owner_verdict { HIO_OWNER_OK = 0, HIO_OWNER_FORKED, HIO_OWNER_OTHER_THREAD };

/* Once per process, before any ring: caches the pid, refreshed in a child. */
void hio_owner_process_init(void);
/* The calling thread of the calling process becomes o's owner. */
void hio_owner_init(struct hio_owner *o);

/* The checks run on every method call, so they are inline; they read
 * owner.c's pid cache (getpid() is a real syscall since glibc 2.25) and
 * the calling thread's cached tid. */
extern pid_t hio_owner_pid;
extern __thread pid_t hio_owner_tid_cache;
pid_t hio_owner_tid_slow(void);

static inline hio_thread_id
hio_owner_thread_now(void)
{
    hio_thread_id t;

    t.tid = hio_owner_tid_cache ? hio_owner_tid_cache : hio_owner_tid_slow();
    t.pt = pthread_self();
    return t;
}

static inline int
hio_owner_same_thread(hio_thread_id a, hio_thread_id b)
{
    return a.tid == b.tid && pthread_equal(a.pt, b.pt);
}

/* Whether o's owner thread (its kernel task) has exited: a syscall
 * (tgkill with signal 0), so only on close paths, never per call. Once
 * true it stays true. */
int hio_owner_task_gone(const struct hio_owner *o);

/* Whether this kernel (6.17+) cancels task_work of a ring whose fd was
 * closed in whatever task runs it, so a dying DEFER_TASKRUN ring's recv
 * buffers can no longer be written even while the owner task lives. Read
 * once (owner.c says why older kernels may still write them). */
int hio_owner_dying_tw_cancelled(void);

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

/* Whether the caller may use a ring owned by o for use. A close from
 * another thread is allowed once the owner's task is gone; the bindings
 * also allow it once the owner's Ruby Thread ended (its native thread may
 * live on in Ruby's cache, hio_owner_task_gone cannot see that). */
static inline enum hio_owner_verdict
hio_owner_may(const struct hio_owner *o, enum hio_owner_use use)
{
    if (hio_owner_forked(o)) return use == HIO_USE_CLOSE ? HIO_OWNER_OK : HIO_OWNER_FORKED;
    if (use == HIO_USE_INSPECT || !hio_owner_other_thread(o)) return HIO_OWNER_OK;
    if (use == HIO_USE_CLOSE && hio_owner_task_gone(o)) return HIO_OWNER_OK;
    return HIO_OWNER_OTHER_THREAD;
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

/*
 * Memory the kernel may still touch on behalf of o's owner task, kept
 * until that task is gone (owner.c, "Memory after the owner", says why
 * that is the moment). One closed ring's memory is one deferral: begin,
 * add each block, end. Never fails: without memory for the records, the
 * blocks are leaked instead (never freed under the kernel). begin may
 * return NULL (then add and end do nothing).
 *
 * kind says how to release a block, and what a forked child does with it:
 * a child has its own copy-on-write copy of malloc memory and of plain
 * mappings (released there), but not of MADV_DONTFORK mappings (their
 * addresses may hold something else in the child: forgotten there).
 * HIO_MEM_UNPIN is memory the process owns elsewhere (a Ruby String a send
 * was given without a copy): p is the token the binding pinned it under,
 * and releasing it is hio_owner_unpin(token), in a child as well (the
 * child's copy of the pin holds the child's copy of the String).
 */
/* The binding's hook that unpins a token (set once at load); it is plain C
 * (no Ruby API): it runs in GC free functions too. */
typedef void (*hio_unpin_fn)(uint64_t token);
void hio_owner_set_unpin(hio_unpin_fn fn);
void hio_owner_unpin(uint64_t token);
/* The hook that pins a token's String once more: a new token, or 0 (plain
 * C too; it never raises). */
typedef uint64_t (*hio_repin_fn)(uint64_t token);
void hio_owner_set_repin(hio_repin_fn fn);
uint64_t hio_owner_repin(uint64_t token);
enum hio_owner_mem { HIO_MEM_FREE, HIO_MEM_MUNMAP, HIO_MEM_MUNMAP_DONTFORK, HIO_MEM_UNPIN };
/* Which ring class a deferral counts for (Ring.leaked_rings, HotpathRing's). */
enum hio_ring_class { HIO_RING_SINGLE, HIO_RING_HOTPATH, HIO_RING_CLASSES };
struct hio_deferral;
struct hio_deferral *hio_owner_defer_begin(const struct hio_owner *o, enum hio_ring_class cls);
void hio_owner_defer_add(struct hio_deferral *d, enum hio_owner_mem kind, void *p, size_t bytes);
void hio_owner_defer_end(struct hio_deferral *d);

/* Releases what was deferred for owner tasks that are gone now (one
 * tgkill per owner task), and in a forked child what the child has its
 * own copy of. At most one scan per HIO_OWNER_SCAN_MS unless force;
 * nothing but a load when nothing is deferred. Called with the GVL held:
 * on ring open, close and GC free, on Ring#accept/#read and
 * HotpathRing#each_completion, on #stats, and (forced) by the leaked_rings
 * and deferred_bytes class methods. */
#define HIO_OWNER_SCAN_MS 100
extern void *hio_owner_deferred_any;
void hio_owner_release_deferred_scan(int force);
static inline void
hio_owner_release_deferred(int force)
{
    if (hio_owner_deferred_any) hio_owner_release_deferred_scan(force);
}
/* Closed rings of cls whose memory is deferred now, and its bytes. */
unsigned long hio_owner_deferred_rings(enum hio_ring_class cls);
size_t hio_owner_deferred_bytes(enum hio_ring_class cls);

/* What a teardown does with memory the kernel was given. */
enum hio_release {
    HIO_RELEASE_NOW,   /* nothing can touch it any more: unmap or free it */
    HIO_RELEASE_DEFER, /* hio_owner_defer_add: until the owner task is gone */
    HIO_RELEASE_FORGET /* a forked child's view of the parent's memory: drop the pointer only */
};

#endif
