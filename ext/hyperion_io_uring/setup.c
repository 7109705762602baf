/*
 * setup.c: ring setup with the best flags this kernel accepts.
 *
 * Layer: bottom. Calls liburing, and owner.c for what a fork inherits.
 *
 * Flags, newest first. SINGLE_ISSUER (6.0) + DEFER_TASKRUN (6.1) keep
 * completions from interrupting the Ruby thread with task-work IPIs
 * (measured upstream at a quarter of server time); COOP_TASKRUN (5.19) is
 * the next best. The first set the kernel takes is remembered for the
 * process.
 */
#include "setup.h"
#include "owner.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* io_uring_setup attempts when it fails with EINTR or EAGAIN. */
#define SETUP_ATTEMPTS 5

/* io_uring_queue_init_params, again after EINTR (a signal during the
 * setup's allocations) and EAGAIN (a momentary shortage), with pauses of
 * 1, 2, 4, 8 ms. Other errors are the host's answer and come back at once
 * (ENOMEM too: before 5.12 it is RLIMIT_MEMLOCK, which waiting never
 * fixes; the policy layer does not cache it). */
static int
setup_init(unsigned entries, struct io_uring *ring, struct io_uring_params *p)
{
    struct io_uring_params copy = *p;
    int attempt, ret = -EINVAL;

    for (attempt = 0; attempt < SETUP_ATTEMPTS; attempt++) {
        if (attempt) {
            struct timespec ts = { 0, 500000L << attempt };
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
            *p = copy;
        }
        ret = io_uring_queue_init_params(entries, ring, p);
        if (ret != -EINTR && ret != -EAGAIN) break;
    }
    return ret;
}

#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

/* TASKRUN_FLAG (5.19, so on every kernel that takes the rest of its set)
 * makes the kernel raise IORING_SQ_TASKRUN in the SQ ring's flags while
 * completions wait as task work: wait.c then collects them with the GVL
 * held instead of releasing it for a wait that would return at once. */
static const unsigned setup_flag_sets[] = {
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_SUBMIT_ALL,
    0,
};
#define SETUP_NSETS (sizeof(setup_flag_sets) / sizeof(setup_flag_sets[0]))

/* Index of the first flag set that worked; -1 until a ring was made.
 * HYPERION_IO_URING_SETUP=plain starts at the last set (for benchmarks),
 * =coop at COOP_TASKRUN. */
static int setup_first_set = -1;

static int
setup_start_set(void)
{
    const char *env;

    if (setup_first_set >= 0) return setup_first_set;
    env = getenv("HYPERION_IO_URING_SETUP");
    if (env && strcmp(env, "plain") == 0) return (int)SETUP_NSETS - 1;
    if (env && strcmp(env, "coop") == 0) return 1;
    return 0;
}

int
hio_queue_init(struct io_uring *ring, unsigned entries, unsigned cq_entries, unsigned *flags_out)
{
    int i, ret = -EINVAL;

    for (i = setup_start_set(); i < (int)SETUP_NSETS; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = setup_flag_sets[i];
        if (cq_entries > entries) {
            p.flags |= IORING_SETUP_CQSIZE;
            p.cq_entries = cq_entries;
        }
        ret = setup_init(entries, ring, &p);
        if (ret == 0) {
            if (setup_first_set < 0) setup_first_set = i;
            *flags_out = p.flags;
            hio_owner_dontfork_ring(ring);
            return 0;
        }
        /* Only an unknown flag is worth another try; EPERM, ENOSYS,
         * ENOMEM and EMFILE are the host's answer whatever the flags. */
        if (ret != -EINVAL) return ret;
    }
    return ret;
}

long
hio_setup_flags(void)
{
    return setup_first_set < 0 ? -1 : (long)setup_flag_sets[setup_first_set];
}
