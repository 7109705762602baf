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
 *     punted there. Multishot requests never run in io-wq (it re-arms
 *     their poll instead), so recv buffers are never written from there;
 *     a send that met EAGAIN twice may be.
 *  3. The io_uring fallback kworker, which runs task_work the owner can no
 *     longer run. It is a kernel thread (PF_KTHREAD, no user mm), and
 *     io_should_terminate_tw() makes every request it runs complete with
 *     -ECANCELED without touching user memory; since 6.17 the same holds
 *     for any task once the ring is dying (its fd closed).
 * When the owner task exits, do_exit -> io_uring_files_cancel ->
 * io_uring_cancel_generic ends with io_uring_clean_tctx, which tears down
 * its io-wq and waits for the workers to exit; task_work still queued runs
 * with PF_EXITING (cancelled) and later task_work falls back to 3. So once
 * the owner task is gone (tgkill says ESRCH; its tid is released after all
 * that), nothing can touch the memory any more: it is released here then.
 *
 * The engines free at close what 1-3 shows safe at once (hotpath.c says
 * what), and defer the rest to this list. It is touched with the GVL held
 * only (ring open/close and dfree all hold it), so it needs no lock.
 */
struct owner_deferred {
    struct owner_deferred *next;
    pid_t pid, tid;
    enum hio_owner_mem kind;
    void *p;
    size_t bytes;
};

static struct owner_deferred *owner_deferred_head;

static void
owner_release(enum hio_owner_mem kind, void *p, size_t bytes)
{
    if (kind == HIO_MEM_MUNMAP) munmap(p, bytes);
    else free(p);
}

void
hio_owner_defer_release(const struct hio_owner *o, enum hio_owner_mem kind, void *p, size_t bytes)
{
    struct owner_deferred *d;

    if (!p) return;
    if (!(d = malloc(sizeof(*d)))) return; /* leaked: never freed under the kernel */
    d->pid = o->pid;
    d->tid = o->thread.tid;
    d->kind = kind;
    d->p = p;
    d->bytes = bytes;
    d->next = owner_deferred_head;
    owner_deferred_head = d;
}

void
hio_owner_release_deferred(void)
{
    struct owner_deferred **pp = &owner_deferred_head;

    while (*pp) {
        struct owner_deferred *d = *pp;
        struct hio_owner o;

        o.pid = d->pid;
        o.thread.tid = d->tid;
        if (d->pid != hio_owner_pid) {
            /* Inherited through fork: never mapped here (DONTFORK) or the
             * child's own copy; forget the record only. */
            *pp = d->next;
            free(d);
            continue;
        }
        if (!hio_owner_task_gone(&o)) {
            pp = &d->next;
            continue;
        }
        *pp = d->next;
        owner_release(d->kind, d->p, d->bytes);
        free(d);
    }
}

