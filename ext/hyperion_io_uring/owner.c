/*
 * owner.c: who may touch a ring, and what happens after fork.
 *
 * Layer: bottom. Calls libc and liburing only.
 *
 * A ring belongs to the process and the thread that made it. Rings are set
 * up with IORING_SETUP_SINGLE_ISSUER where the kernel has it: another
 * thread's submit gets EEXIST. So Ruby methods that submit, wait or reap
 * (HIO_USE_CALL) run only on the owner thread of the owner process;
 * counters and the fd (HIO_USE_INSPECT) may be read from any of its threads.
 *
 * What happens after fork, in the child:
 * - The ring's SQ/CQ mappings and the memory the kernel writes (buffer
 *   rings) are not inherited: hio_owner_dontfork_ring and _mem mark them at
 *   setup. A child that submitted through an inherited ring (even a NOP)
 *   would corrupt the parent's SQ bookkeeping.
 * - Every method that submits, waits, reaps or reads the ring raises
 *   ForkError (hio_owner_may: HIO_OWNER_FORKED, raised by errors.c).
 * - #close and the GC only forget the ring (HIO_USE_CLOSE is allowed):
 *   hio_owner_forget_ring closes the child's copy of the fd, and nothing
 *   goes through liburing. Memory that was never mapped in the child is
 *   not unmapped; the rest is freed as the child's own.
 * - The C entry point (c_api.c) refuses the parent's handles (-EINVAL).
 * - Hyperion::IOUring.fiber_ring (fiber_rings.rb) sees the pid change and
 *   opens a new ring for the child.
 * The pid is cached (getpid() is a real syscall since glibc 2.25 and the
 * checks run on every call) and refreshed by a pthread_atfork handler.
 *
 * Thread identity is the kernel task (gettid(), cached per thread) plus
 * pthread_self(); hio_thread_id and the hio_owner_*thread* functions in
 * owner.h are the only places that know it. The checks are inline there:
 * they run on every method call.
 *
 * When the owner thread is gone (#close from another thread, the GC of
 * another thread) nobody can cancel through a SINGLE_ISSUER ring: the
 * kernel refuses every other task with EEXIST. What may still touch the
 * ring's memory then, and until when, is said at "Memory after the owner"
 * below; the engines ask hio_owner_task_gone and hand what must wait to
 * hio_owner_defer_release.
 */
#include "owner.h"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

pid_t hio_owner_pid;
__thread pid_t hio_owner_tid_cache;

static void
owner_after_fork_child(void)
{
    hio_owner_pid = getpid();
    /* The child's one thread has a tid of its own; the cache was copied. */
    hio_owner_tid_cache = 0;
}

pid_t
hio_owner_tid_slow(void)
{
    return hio_owner_tid_cache = (pid_t)syscall(SYS_gettid);
}

/*
 * Whether a task_work item of a ring whose fd was closed is cancelled in
 * whatever task runs it: io_should_terminate_tw() also checks
 * percpu_ref_is_dying(&ctx->refs) since 6.17. Before that, the ring's exit
 * work (io_ring_exit_work) first moves DEFER_TASKRUN local work with
 * io_move_task_work_from_local and only then cancels; until about 6.13
 * that move queued it as normal task_work of the owner task, which, alive,
 * ran it on its next return to user space, racing the cancel: a multishot
 * recv whose data had arrived could still pick a buffer and copy into it.
 * Kernels before 6.17 are taken to be the old kind (a backport only makes
 * us keep memory longer than needed). The release is read once:
 * uname(2), or HYPERION_IO_URING_KERNEL_RELEASE (a test seam: "6.6.0"
 * makes this host look old).
 */
int
hio_owner_dying_tw_cancelled(void)
{
    static int cached = -1;

    if (cached < 0) {
        struct utsname u;
        const char *rel = getenv("HYPERION_IO_URING_KERNEL_RELEASE");
        int major = 0, minor = 0;

        if (!rel || !*rel) rel = uname(&u) == 0 ? u.release : "";
        if (sscanf(rel, "%d.%d", &major, &minor) != 2) major = minor = 0;
        cached = major > 6 || (major == 6 && minor >= 17);
    }
    return cached;
}

int
hio_owner_task_gone(const struct hio_owner *o)
{
    /* ESRCH: no thread of this process has that tid. A tid reused by a
     * new thread of ours reads as alive, which only keeps memory longer. */
    return syscall(SYS_tgkill, (long)o->pid, (long)o->thread.tid, 0) < 0 && errno == ESRCH;
}

void
hio_owner_process_init(void)
{
    hio_owner_pid = getpid();
    pthread_atfork(NULL, NULL, owner_after_fork_child);
}

void
hio_owner_init(struct hio_owner *o)
{
    o->pid = hio_owner_pid;
    o->thread = hio_owner_thread_now();
}

const char *
hio_owner_explain(const struct hio_owner *o, enum hio_owner_verdict v, const char *cls, char *buf, size_t cap)
{
    if (v == HIO_OWNER_FORKED)
        snprintf(buf, cap,
                 "%s was created in process %d and cannot be used in forked child %d; open a new ring in the child",
                 cls, (int)o->pid, (int)hio_owner_pid);
    else
        snprintf(buf, cap, "%s belongs to the thread that created it; open one ring per thread (or per fiber)", cls);
    return buf;
}

void
hio_owner_dontfork_ring(struct io_uring *ring)
{
#ifdef HAVE_IO_URING_RING_DONTFORK
    io_uring_ring_dontfork(ring);
#else
    (void)ring;
#endif
}

void
hio_owner_dontfork_mem(void *p, size_t bytes)
{
    madvise(p, bytes, MADV_DONTFORK);
}

void
hio_owner_forget_ring(struct io_uring *ring)
{
    if (ring->ring_fd >= 0) close(ring->ring_fd);
    ring->ring_fd = -1;
}

/*
 * Memory after the owner.
 *
 * Where can the kernel read or write a ring's user memory (recv buffers,
 * send payloads) on its own? Only in the context of a task whose mm is this
 * process's (copy_to_user/copy_from_user need one):
 *  1. task_work of the ring's submitter task (the owner thread): with
 *     IORING_SETUP_DEFER_TASKRUN only inside io_uring_enter(GETEVENTS) on
 *     that ring by that task (io_run_local_work is refused to any other);
 *     without it, on any return of the owner to user space.
 *  2. io-wq workers of the submitter task (they share the mm), for requests
 *     punted there. A multishot request runs there only if arming its
 *     poll is aborted (io_queue_async -> io_queue_iowq: a file that
 *     cannot be polled), which sockets never are, so recv buffers are not
 *     written from there in practice; a send that met EAGAIN twice may be.
 *  3. The io_uring fallback kworker, which runs task_work the owner can no
 *     longer run. It is a kernel thread (PF_KTHREAD, no user mm), and
 *     io_should_terminate_tw() makes every request it runs complete with
 *     -ECANCELED without touching user memory; since 6.17 the same holds
 *     for any task once the ring is dying (its fd closed). Before that, a
 *     dying DEFER_TASKRUN ring's local work could be handed to the owner
 *     task as normal task_work and run there, before the cancel
 *     (hio_owner_dying_tw_cancelled says which kind this kernel is).
 * When the owner task exits, do_exit -> io_uring_files_cancel ->
 * io_uring_cancel_generic ends with io_uring_clean_tctx, which tears down
 * its io-wq and waits for the workers to exit; task_work still queued runs
 * with PF_EXITING (cancelled) and later task_work falls back to 3. So once
 * the owner task is gone (tgkill says ESRCH; its tid is released after all
 * that), nothing can touch the memory any more: it is released here then.
 *
 * The engines free at close what 1-3 shows safe at once (hotpath.c says
 * what), and defer the rest here, one hio_deferral per closed ring, grouped
 * by owner task: a scan asks the kernel once per owner (tgkill), however
 * many rings it left. Scans are rate-limited (HIO_OWNER_SCAN_MS on the
 * coarse monotonic clock) except when forced, and run from the calls a
 * process using rings makes anyway (owner.h lists them): no thread of our
 * own, and no GC hook (an internal GC event hook puts every Ruby
 * allocation on the slow path). A process that stops touching rings
 * keeps the memory until it calls one of them again.
 *
 * After fork the child's scan (the first one, whatever the clock says)
 * releases the parent's records at once: malloc memory and plain mappings
 * (send payloads) are the child's own copy-on-write copies, which no
 * kernel request of the child touches; DONTFORK mappings (buffer rings)
 * were never inherited, and are only forgotten.
 *
 * The list is touched with the GVL held only (all callers hold it), so it
 * needs no lock.
 */
struct owner_block {
    void *p;
    size_t bytes;
    enum hio_owner_mem kind;
};

struct hio_deferral {
    struct hio_deferral *next;
    pid_t pid, tid;
    enum hio_ring_class cls;
    size_t bytes;
    unsigned n, cap;
    struct owner_block *blocks;
};

struct owner_group {
    struct owner_group *next;
    pid_t pid, tid;
    struct hio_deferral *rings;
};

static struct owner_group *owner_groups;
void *hio_owner_deferred_any; /* owner_groups, for the inline check */
static unsigned long owner_held_rings[HIO_RING_CLASSES];
static size_t owner_held_bytes[HIO_RING_CLASSES];
static hio_unpin_fn owner_unpin;

void
hio_owner_set_unpin(hio_unpin_fn fn)
{
    owner_unpin = fn;
}

void
hio_owner_unpin(uint64_t token)
{
    if (owner_unpin) owner_unpin(token);
}

static hio_repin_fn owner_repin;

void
hio_owner_set_repin(hio_repin_fn fn)
{
    owner_repin = fn;
}

uint64_t
hio_owner_repin(uint64_t token)
{
    return owner_repin ? owner_repin(token) : 0;
}
static long owner_last_scan_ms = -1;
static pid_t owner_scan_pid; /* the process of the last scan: a child scans at once */

static long
owner_now_ms(void)
{
    struct timespec ts;

#ifdef CLOCK_MONOTONIC_COARSE
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0) return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
#endif
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    return 0;
}

struct hio_deferral *
hio_owner_defer_begin(const struct hio_owner *o, enum hio_ring_class cls)
{
    struct hio_deferral *d = calloc(1, sizeof(*d));

    if (!d) return NULL; /* its blocks are leaked: never freed under the kernel */
    d->pid = o->pid;
    d->tid = o->thread.tid;
    d->cls = cls;
    return d;
}

void
hio_owner_defer_add(struct hio_deferral *d, enum hio_owner_mem kind, void *p, size_t bytes)
{
    if (!d || !p) return;
    if (d->n == d->cap) {
        unsigned cap = d->cap ? d->cap * 2 : 4;
        struct owner_block *nb = realloc(d->blocks, (size_t)cap * sizeof(*nb));
        if (!nb) return; /* leaked */
        d->blocks = nb;
        d->cap = cap;
    }
    d->blocks[d->n].p = p;
    d->blocks[d->n].bytes = bytes;
    d->blocks[d->n].kind = kind;
    d->n++;
    d->bytes += bytes;
}

static void
owner_free_deferral(struct hio_deferral *d)
{
    free(d->blocks);
    free(d);
}

void
hio_owner_defer_end(struct hio_deferral *d)
{
    struct owner_group *g;

    if (!d) return;
    if (!d->n) {
        owner_free_deferral(d);
        return;
    }
    for (g = owner_groups; g; g = g->next)
        if (g->pid == d->pid && g->tid == d->tid) break;
    if (!g) {
        if (!(g = calloc(1, sizeof(*g)))) {
            owner_free_deferral(d); /* its blocks are leaked */
            return;
        }
        g->pid = d->pid;
        g->tid = d->tid;
        g->next = owner_groups;
        owner_groups = g;
        hio_owner_deferred_any = g;
    }
    d->next = g->rings;
    g->rings = d;
    owner_held_rings[d->cls]++;
    owner_held_bytes[d->cls] += d->bytes;
}

/* Releases a group's memory: its owner task is gone, or (forked) it is a
 * forked child's copy of the parent's records. */
static void
owner_release_group(struct owner_group *g, int forked)
{
    while (g->rings) {
        struct hio_deferral *d = g->rings;
        unsigned i;

        g->rings = d->next;
        for (i = 0; i < d->n; i++) {
            struct owner_block *b = &d->blocks[i];
            if (b->kind == HIO_MEM_UNPIN) hio_owner_unpin((uint64_t)(uintptr_t)b->p);
            else if (b->kind == HIO_MEM_FREE) free(b->p);
            else if (b->kind == HIO_MEM_MUNMAP || !forked) munmap(b->p, b->bytes);
            /* else: a DONTFORK mapping of the parent; not ours to unmap */
        }
        owner_held_rings[d->cls]--;
        owner_held_bytes[d->cls] -= d->bytes;
        owner_free_deferral(d);
    }
}

void
hio_owner_release_deferred_scan(int force)
{
    struct owner_group **pp = &owner_groups;
    long now = owner_now_ms();
    pid_t me = hio_owner_tid_cache ? hio_owner_tid_cache : hio_owner_tid_slow();

    if (!force && owner_scan_pid == hio_owner_pid && owner_last_scan_ms >= 0 &&
        now - owner_last_scan_ms < HIO_OWNER_SCAN_MS)
        return;
    owner_last_scan_ms = now;
    owner_scan_pid = hio_owner_pid;
    while (*pp) {
        struct owner_group *g = *pp;
        struct hio_owner o;
        int forked = g->pid != hio_owner_pid;

        o.pid = g->pid;
        o.thread.tid = g->tid;
        /* The calling thread is alive: no syscall for its own group. */
        if (!forked && g->rings && (g->tid == me || !hio_owner_task_gone(&o))) {
            pp = &g->next;
            continue;
        }
        owner_release_group(g, forked);
        *pp = g->next;
        free(g);
    }
    hio_owner_deferred_any = owner_groups;
}

unsigned long
hio_owner_deferred_rings(enum hio_ring_class cls)
{
    return owner_held_rings[cls];
}

size_t
hio_owner_deferred_bytes(enum hio_ring_class cls)
{
    return owner_held_bytes[cls];
}
