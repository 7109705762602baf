/*
 * probe.c: the runtime probe behind Hyperion::IOUring.supported?: can this
 * process set up a ring at all (seccomp, io_uring_disabled, RLIMIT_MEMLOCK
 * and old kernels say no here).
 *
 * Layer: engine. Calls setup.c and liburing.
 */
#include "engine.h"
#include "setup.h"

int
hio_probe_native(void)
{
    struct io_uring ring;
    unsigned flags = 0;
    int ret = hio_queue_init(&ring, 2, 0, &flags);

    if (ret < 0) return ret;
    io_uring_queue_exit(&ring);
    return 0;
}
