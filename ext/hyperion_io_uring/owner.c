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
 * Thread identity is pthread_self() for now; hio_thread_id and the two
 * hio_owner_*thread* functions in owner.h are the only places that know it.
 * The checks are inline there: they run on every method call.
 */
#include "owner.h"
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

pid_t hio_owner_pid;

static void
owner_after_fork_child(void)
{
    hio_owner_pid = getpid();
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
