/*
 * hp_bodies.c: sealed memfd copies of large frozen bodies, for sends the
 * kernel makes from page-cache pages instead of copying them
 * (HotpathRing.new(sendfile_min:)).
 *
 * Layer: bottom of the hot path, beside hp_slots.c. Calls owner.c (the
 * binding's pin hooks).
 *
 * Why: a send from user memory (IORING_OP_SEND, write(2)) copies each byte
 * into socket buffers in the sender's context. With a 1 MiB body at 50
 * connections that copy (_copy_from_iter) was 57% of the server's CPU and
 * tcp_sendmsg 95% of it, in the HotpathRing and the IO.select server alike.
 * sendfile(2) from a file gives the socket references to the file's pages
 * instead: the sender copies nothing, and the receiver copies from those
 * pages as it would have from socket buffers. IORING_OP_SEND_ZC cannot do
 * that on loopback: zero-copy fragments delivered to a local socket are
 * copied (skb_orphan_frags_rx), in the sender's softirq.
 *
 * The pages must not change while the network stack holds them, which is
 * after sendfile(2) returns and until the peer has read them: the body is
 * copied once into a memfd, sealed (F_SEAL_WRITE and friends) and never
 * written again; closing the memfd leaves in-flight pages to the skbs that
 * hold them. A String is recognised by its bytes' address and length: the
 * entry keeps its own pin of the String, so no other String's bytes can be
 * there while the entry lives (a frozen String's bytes never change).
 *
 * HP_BODIES entries, at most send_buffer_limit bytes in all; an entry no
 * send is using makes room for a new one, the least recently used first.
 * An entry keeps its String alive until it is evicted or the ring closes.
 */
#include "hp_bodies.h"
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

static void
body_drop(struct hio_hotpath *h, struct hio_body *b)
{
    close(b->fd);
    hio_owner_unpin(b->token);
    h->body_bytes -= b->len;
    b->ptr = NULL;
    b->len = 0;
    b->fd = -1;
    b->token = 0;
}

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#define BODY_MFD_NOEXEC_SEAL MFD_NOEXEC_SEAL

/* A memfd holding the len bytes at p, sealed against change; -1 on failure. */
static int
body_memfd(const char *p, size_t len)
{
#ifdef HAVE_MEMFD_CREATE
    size_t off = 0;
    /* MFD_NOEXEC_SEAL (6.3): a kernel with vm.memfd_noexec=2 refuses a
     * memfd without it (and =1 logs a warning); older kernels refuse the
     * flag itself with EINVAL. */
    int fd = memfd_create("hyperion-io_uring-body", MFD_CLOEXEC | MFD_ALLOW_SEALING | BODY_MFD_NOEXEC_SEAL);

    if (fd < 0 && errno == EINVAL) fd = memfd_create("hyperion-io_uring-body", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -1;
    while (off < len) {
        ssize_t n = pwrite(fd, p + off, len - off, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) goto fail;
        off += (size_t)n;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) goto fail;
    return fd;
fail:
    close(fd);
    return -1;
#else
    (void)p;
    (void)len;
    return -1;
#endif
}

int32_t
hp_body_get(struct hio_hotpath *h, const char *p, size_t len, uint64_t token)
{
    struct hio_body *b, *victim = NULL;
    int32_t i, free_i = -1;
    uint64_t pin;
    int fd;

    for (i = 0; i < HP_BODIES; i++) {
        b = &h->bodies[i];
        if (b->len == len && b->ptr == p) {
            b->refs++;
            b->used = ++h->body_tick;
            return i;
        }
        if (!b->len) {
            if (free_i < 0) free_i = i;
        } else if (!b->refs && (!victim || b->used < victim->used)) {
            victim = b;
        }
    }
    if (len > h->send_limit) return -1;
    /* Room: a free entry, else the least recently used idle one; and the
     * bytes under send_limit, evicting idle entries oldest first. */
    if (free_i < 0) {
        if (!victim) return -1;
        free_i = (int32_t)(victim - h->bodies);
        body_drop(h, victim);
    }
    while (h->body_bytes + len > h->send_limit) {
        victim = NULL;
        for (i = 0; i < HP_BODIES; i++) {
            b = &h->bodies[i];
            if (b->len && !b->refs && (!victim || b->used < victim->used)) victim = b;
        }
        if (!victim) return -1;
        body_drop(h, victim);
    }
    if (!(pin = hio_owner_repin(token))) return -1;
    if ((fd = body_memfd(p, len)) < 0) {
        hio_owner_unpin(pin);
        return -1;
    }
    b = &h->bodies[free_i];
    b->ptr = p;
    b->len = len;
    b->token = pin;
    b->fd = fd;
    b->refs = 1;
    b->used = ++h->body_tick;
    h->body_bytes += len;
    h->st.body_files++;
    return free_i;
}

void
hp_body_put(struct hio_hotpath *h, int32_t i)
{
    if (i >= 0 && i < HP_BODIES && h->bodies[i].refs) h->bodies[i].refs--;
}

void
hp_bodies_teardown(struct hio_hotpath *h)
{
    unsigned i;

    for (i = 0; i < HP_BODIES; i++)
        if (h->bodies[i].len) body_drop(h, &h->bodies[i]);
    h->body_bytes = 0;
}
