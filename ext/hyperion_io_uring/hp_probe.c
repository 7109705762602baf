/*
 * hp_probe.c: the functional probe behind hotpath_supported?: a small
 * HotpathRing really completes a multishot accept and a multishot recv on a
 * loopback connection.
 *
 * Layer: above hotpath.c. Calls the hot path's engine API (engine.h:
 * hotpath.c, hp_queue.c), wait.c and libc sockets.
 */
#include "engine.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int
probe_listener(int *lfd_out, struct sockaddr_in *addr)
{
    socklen_t alen = sizeof(*addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    if (fd < 0) return -errno;
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)addr, sizeof(*addr)) < 0 || listen(fd, 8) < 0 ||
        getsockname(fd, (struct sockaddr *)addr, &alen) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    *lfd_out = fd;
    return 0;
}

struct probe_wait {
    struct hio_hotpath *h;
    int op;
    struct hio_wait ring; /* the ring's own description, whose reap it uses */
};

static int
probe_reap(void *ctx)
{
    struct probe_wait *p = ctx;

    return p->ring.ops->reap(p->ring.ctx);
}

/* Whether a completion of op is first in the queue; others are dropped. */
static unsigned
probe_ready(void *ctx)
{
    struct probe_wait *p = ctx;
    struct hio_completion c;

    while (hio_hp_peek(p->h, &c)) {
        if (c.op_kind == p->op) return 1;
        hio_hp_pop(p->h, &c);
    }
    return 0;
}

static const struct hio_wait_ops probe_wait_ops = { probe_reap, probe_ready, NULL, NULL };

/* The next completion of op, within a second (GVL held, not interruptible:
 * the probe is short and bounded). */
static int
probe_next(struct hio_hotpath *h, int op, struct hio_completion *out)
{
    struct probe_wait p;
    struct hio_wait w;

    p.h = h;
    p.op = op;
    hio_hp_wait_plan(h, &p.ring, 1, 1.0, 0, 0);
    w = p.ring;
    w.ops = &probe_wait_ops;
    w.ctx = &p;
    if (hio_wait_held(&w) < 0) return -EIO;
    if (!probe_ready(&p)) return -ETIMEDOUT;
    hio_hp_pop(h, out);
    return 0;
}

/*
 * A functional probe: a small ring with a buffer ring really completes a
 * multishot accept and a multishot recv on a loopback connection. Returns
 * NULL when it worked, else reason (filled in).
 */
const char *
hio_hp_probe(char *reason, size_t cap)
{
    struct hio_hotpath *h = hio_hp_new();
    struct hio_completion c;
    struct sockaddr_in addr;
    int lfd = -1, cfd = -1, sfd = -1, ret;
    const char *step = "";
    const unsigned char *data;
    unsigned len;

    if (!h) {
        snprintf(reason, cap, "probe ring: %s", strerror(ENOMEM));
        return reason;
    }
    ret = hio_hp_open(h, 8, 4, 256);
    if (ret < 0) {
        snprintf(reason, cap, "%s failed: %s%s", hio_hp_open_error(h), strerror(-ret),
                 ret == -EINVAL ? " (provided buffer rings need Linux 5.19+)" : "");
        hio_hp_free(h);
        return reason;
    }
    step = "loopback listener";
    if ((ret = probe_listener(&lfd, &addr)) < 0) goto fail;
    step = "multishot accept";
    if ((ret = hio_hp_submit_accept(h, lfd)) < 0) goto fail;
    hio_hp_flush(h);
    cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (cfd < 0 || connect(cfd, (struct sockaddr *)&addr, sizeof(addr)) < 0) { ret = -errno; step = "loopback connect"; goto fail; }
    if ((ret = probe_next(h, HIO_OP_ACCEPT, &c)) < 0) goto fail;
    if (c.result < 0) { ret = (int)c.result; goto fail; }
    sfd = (int)c.result;
    step = "multishot recv";
    if ((ret = hio_hp_submit_recv(h, sfd)) < 0) goto fail;
    if (write(cfd, "hyperion", 8) != 8) { ret = -errno; step = "loopback write"; goto fail; }
    if ((ret = probe_next(h, HIO_OP_RECV, &c)) < 0) goto fail;
    if (c.result != 8 || hio_hp_buffer(h, c.buf_id, &data, &len) < 0 || memcmp(data, "hyperion", 8) != 0) {
        ret = c.result < 0 ? (int)c.result : -EIO;
        goto fail;
    }
    hio_hp_release(h, c.buf_id);
    hio_hp_close(h, 0);
    hio_hp_free(h);
    close(sfd);
    close(cfd);
    close(lfd);
    return NULL;
fail:
    snprintf(reason, cap, "%s failed: %s%s", step, strerror(-ret),
             ret == -EINVAL ? " (multishot accept needs Linux 5.19+, multishot recv 6.0+)" : "");
    hio_hp_close(h, 0);
    hio_hp_free(h);
    if (sfd >= 0) close(sfd);
    if (cfd >= 0) close(cfd);
    if (lfd >= 0) close(lfd);
    return reason;
}
