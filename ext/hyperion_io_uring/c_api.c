/*
 * c_api.c: the C entry point upstream Hyperion's HTTP extension calls.
 *
 * Upstream's ext/hyperion_http/response_writer.c looks the symbol up with
 * dlsym(RTLD_DEFAULT, "hyperion_io_uring_hotpath_submit_send") and calls it,
 * GVL held, with the value of HotpathRing#ptr. Ruby loads extensions with
 * RTLD_GLOBAL, so exporting it with default visibility is enough (the rest
 * of the extension is built with -fvisibility=hidden).
 *
 * The handle is never dereferenced before it is found in the registry of
 * live rings: a bogus or stale pointer gets -EINVAL, never a crash.
 *
 * Layer: above hotpath.c. Calls registry.c and hotpath.c.
 */
#include "engine.h"
#include "registry.h"
#include <errno.h>
#include <limits.h>
#include <sys/uio.h>

/*
 * int hyperion_io_uring_hotpath_submit_send(void *ring, int fd,
 *                                           const void *iov, unsigned iovcnt)
 *
 * Queues a send of the iovecs' bytes on fd exactly as HotpathRing#submit_send
 * does (one OP_SEND completion with the total, sends in order per fd). The
 * bytes are copied before it returns. Returns 0, or a negative errno with
 * errno set: -EINVAL for a handle that is not a live ring of this process
 * and thread, or iovcnt above IOV_MAX; -EBADF for a closed fd;
 * -ESHUTDOWN for a fd HotpathRing#submit_close is closing; -ENOBUFS when
 * the copy would pass the ring's send_buffer_limit or the fd's
 * connection_send_limit (nothing is queued: upstream's response writer then
 * raises Errno::ENOBUFS for that connection only, and the others go on).
 */
__attribute__((visibility("default"))) int
hyperion_io_uring_hotpath_submit_send(void *ring, int fd, const void *iov, unsigned iovcnt)
{
    struct hio_hotpath *h = ring;
    int ret;

    if (!ring || !hio_registry_live(ring) || !hio_hp_callable(h) || iovcnt > IOV_MAX || (iovcnt && !iov) || fd < 0) {
        errno = EINVAL;
        return -EINVAL;
    }
    ret = hio_hp_submit_sendv(h, fd, (const struct iovec *)iov, iovcnt);
    if (ret < 0) errno = -ret;
    return ret;
}
