/*
 * probe.c: ring setup with the best flags this kernel accepts, and the
 * runtime probe behind Hyperion::IOUring.supported?.
 *
 * Flags, newest first. SINGLE_ISSUER (6.0) + DEFER_TASKRUN (6.1) keep
 * completions from interrupting the Ruby thread with task-work IPIs (measured
 * upstream at a quarter of server time); COOP_TASKRUN (5.19) is the next
 * best. The first set the kernel takes is remembered for the process.
 */
#include "hyperion_io_uring.h"
#include <errno.h>
#include <unistd.h>
#include <string.h>

#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

static const unsigned probe_flag_sets[] = {
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_SUBMIT_ALL,
    0,
};
#define PROBE_NSETS (sizeof(probe_flag_sets) / sizeof(probe_flag_sets[0]))

/* Index of the first flag set that worked; -1 until a ring was made.
 * HYPERION_IO_URING_SETUP=plain starts at the last set (for benchmarks). */
static int probe_first_set = -1;

static int
probe_start_set(void)
{
    if (probe_first_set >= 0) return probe_first_set;
    {
        const char *env = getenv("HYPERION_IO_URING_SETUP");
        if (env && strcmp(env, "plain") == 0) return (int)PROBE_NSETS - 1;
        if (env && strcmp(env, "coop") == 0) return 1;
    }
    return 0;
}

int
hio_queue_init(struct io_uring *ring, unsigned entries, unsigned cq_entries, unsigned *flags_out)
{
    int i, ret = -EINVAL;

    for (i = probe_start_set(); i < (int)PROBE_NSETS; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = probe_flag_sets[i];
        if (cq_entries > entries) {
            p.flags |= IORING_SETUP_CQSIZE;
            p.cq_entries = cq_entries;
        }
        ret = io_uring_queue_init_params(entries, ring, &p);
        if (ret == 0) {
            if (probe_first_set < 0) probe_first_set = i;
            *flags_out = p.flags;
#ifdef HAVE_IO_URING_RING_DONTFORK
            /* A forked child then has no SQ/CQ mappings to corrupt. */
            io_uring_ring_dontfork(ring);
#endif
            return 0;
        }
        /* Only an unknown flag is worth another try; EPERM, ENOSYS,
         * ENOMEM and EMFILE are the host's answer whatever the flags. */
        if (ret != -EINVAL) return ret;
    }
    return ret;
}

/* In a forked child: drop our reference to the parent's ring without
 * submitting, cancelling or unmapping through liburing. */
void
hio_queue_forget(struct io_uring *ring)
{
    if (ring->ring_fd >= 0) close(ring->ring_fd);
    ring->ring_fd = -1;
}

/* ---- Ruby: probes ---- */

/*
 * call-seq:
 *   Hyperion::IOUring.native_probe -> 0 or errno
 *
 * Sets up (and tears down) a two-entry ring. Returns 0 when that worked,
 * else the positive errno io_uring_setup failed with (EPERM, ENOSYS,
 * ENOMEM, ...). Used by supported? and unsupported_reason.
 */
static VALUE
probe_native_probe(VALUE mod)
{
    struct io_uring ring;
    unsigned flags = 0;
    int ret = hio_queue_init(&ring, 2, 0, &flags);

    if (ret < 0) return INT2FIX(-ret);
    io_uring_queue_exit(&ring);
    return INT2FIX(0);
}

/*
 * call-seq:
 *   Hyperion::IOUring.native_setup_flags -> Integer or nil
 *
 * The IORING_SETUP_* flags rings in this process are created with, or nil
 * before the first ring.
 */
static VALUE
probe_setup_flags(VALUE mod)
{
    if (probe_first_set < 0) return Qnil;
    return UINT2NUM(probe_flag_sets[probe_first_set]);
}

void
hio_init_probe(void)
{
    rb_define_singleton_method(hio_mIOUring, "native_probe", probe_native_probe, 0);
    rb_define_singleton_method(hio_mIOUring, "native_setup_flags", probe_setup_flags, 0);
    rb_define_const(hio_mIOUring, "NATIVE_LIBURING", Qtrue);
    rb_define_const(hio_mIOUring, "LIBURING_VERSION", rb_obj_freeze(rb_str_new_cstr(HIO_LIBURING_VERSION)));
    rb_define_const(hio_mIOUring, "STUB_REASON", Qnil);
}
