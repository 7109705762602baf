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
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Attempts of the whole probe when a step fails with a transient error. */
#define PROBE_ATTEMPTS 5
#define PROBE_STEP_SECONDS 1.0

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

/*
 * A loopback connect that a signal cannot fail. A blocking connect(2)
 * interrupted by a signal returns EINTR while the handshake goes on in the
 * kernel, and calling it again gives EALREADY (or EISCONN): measured, a
 * SIGUSR1 every 100 us made 22 of 50 probes fail that way. So: connect
 * without blocking, wait for writability with poll (EINTR there only means
 * "poll again"), and take the handshake's result from SO_ERROR.
 */
static int
probe_connect(int *cfd_out, const struct sockaddr_in *addr)
{
    double deadline = hio_now() + PROBE_STEP_SECONDS;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), err = 0;
    socklen_t elen = sizeof(err);

    if (fd < 0) return -errno;
    *cfd_out = fd;
    if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) == 0) return 0;
    if (errno != EINPROGRESS && errno != EINTR && errno != EALREADY && errno != EAGAIN) return -errno;
    for (;;) {
        struct pollfd pfd;
        double left = deadline - hio_now();
        int n;

        if (left <= 0) return -ETIMEDOUT;
        pfd.fd = fd;
        pfd.events = POLLOUT;
        pfd.revents = 0;
        n = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -errno;
        if (n > 0) break;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0) return -errno;
    return err ? -err : 0;
}

/* A write of a few bytes to a fresh loopback socket; EINTR and EAGAIN
 * (a non-blocking socket) only mean "again". */
static int
probe_write(int fd, const char *data, size_t len)
{
    double deadline = hio_now() + PROBE_STEP_SECONDS;
    size_t off = 0;

    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n >= 0) { off += (size_t)n; continue; }
        if (errno != EINTR && errno != EAGAIN) return -errno;
        if (hio_now() > deadline) return -ETIMEDOUT;
        if (errno == EAGAIN) {
            struct pollfd pfd = { fd, POLLOUT, 0 };
            poll(&pfd, 1, 10);
        }
    }
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

/* Errors worth another attempt: a signal, a momentary shortage of memory,
 * fds or ports. The others are the host's answer (EINVAL: no multishot
 * here; EPERM, ENOSYS: io_uring blocked; ETIMEDOUT: a loopback accept or
 * recv that took over a second, after which the hot path is no use). */
int
hio_probe_transient(int err)
{
    switch (err < 0 ? -err : err) {
      case EINTR: case EAGAIN: case EBUSY: case ENOMEM: case ENOBUFS:
      case EMFILE: case ENFILE: case EADDRINUSE: case EADDRNOTAVAIL:
        return 1;
      default:
        return 0;
    }
}

/* One attempt of the probe: 0, or -errno with *step naming what failed. */
static int
probe_once(const char **step)
{
    struct hio_hotpath *h = hio_hp_new();
    struct hio_completion c;
    struct sockaddr_in addr;
    int lfd = -1, cfd = -1, sfd = -1, ret;
    const unsigned char *data;
    unsigned len;

    *step = "probe ring";
    if (!h) return -ENOMEM;
    ret = hio_hp_open(h, 8, 4, 256);
    if (ret < 0) {
        *step = hio_hp_open_error(h);
        hio_hp_free(h);
        return ret;
    }
    *step = "loopback listener";
    if ((ret = probe_listener(&lfd, &addr)) < 0) goto out;
    *step = "multishot accept";
    if ((ret = hio_hp_submit_accept(h, lfd)) < 0) goto out;
    hio_hp_flush(h);
    *step = "loopback connect";
    if ((ret = probe_connect(&cfd, &addr)) < 0) goto out;
    *step = "multishot accept";
    if ((ret = probe_next(h, HIO_OP_ACCEPT, &c)) < 0) goto out;
    if (c.result < 0) { ret = (int)c.result; goto out; }
    sfd = (int)c.result;
    *step = "multishot recv";
    if ((ret = hio_hp_submit_recv(h, sfd)) < 0) goto out;
    *step = "loopback write";
    if ((ret = probe_write(cfd, "hyperion", 8)) < 0) goto out;
    *step = "multishot recv";
    if ((ret = probe_next(h, HIO_OP_RECV, &c)) < 0) goto out;
    if (c.result != 8 || hio_hp_buffer(h, c.buf_id, &data, &len) < 0 || memcmp(data, "hyperion", 8) != 0) {
        ret = c.result < 0 ? (int)c.result : -EIO;
        goto out;
    }
    hio_hp_release(h, c.buf_id);
    ret = 0;
out:
    hio_hp_close(h, 0);
    hio_hp_free(h);
    if (sfd >= 0) close(sfd);
    if (cfd >= 0) close(cfd);
    if (lfd >= 0) close(lfd);
    return ret;
}

/*
 * A functional probe: a small ring with a buffer ring really completes a
 * multishot accept and a multishot recv on a loopback connection. Returns
 * NULL when it worked, else reason (filled in) with *err the -errno. A
 * transient failure (hio_probe_transient) is tried again, up to
 * PROBE_ATTEMPTS times with a short pause, before it is reported.
 */
const char *
hio_hp_probe(char *reason, size_t cap, int *err)
{
    const char *step = "";
    int attempt, ret = 0;

    for (attempt = 0; attempt < PROBE_ATTEMPTS; attempt++) {
        if (attempt) {
            struct timespec ts = { 0, 1000000L << attempt }; /* 2, 4, 8, 16 ms */
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
        }
        if ((ret = probe_once(&step)) == 0 || !hio_probe_transient(ret)) break;
    }
    *err = ret;
    if (ret == 0) return NULL;
    snprintf(reason, cap, "%s failed: %s%s", step, strerror(-ret),
             ret == -EINVAL ? (strncmp(step, "io_uring", 8) == 0 ? " (provided buffer rings need Linux 5.19+)"
                                                                  : " (multishot accept needs Linux 5.19+, multishot recv 6.0+)")
                            : "");
    return reason;
}
