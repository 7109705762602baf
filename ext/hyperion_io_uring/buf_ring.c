/*
 * buf_ring.c: the provided-buffer ring the kernel picks recv buffers from.
 *
 * Layer: bottom. Calls liburing and owner.c (what a fork inherits).
 *
 * Both the ring of buffer descriptors and the buffers are mmap'd here (page
 * aligned, not inherited by a forked child: it has nothing to free or corrupt),
 * never Ruby memory: the GC cannot move or free what the kernel writes.
 * liburing 2.3 lacks io_uring_setup_buf_ring, so registration is by hand.
 *
 * Ownership: a buffer is either in the kernel's ring or held by Ruby (its
 * recv CQE was delivered and it was not released yet). held[] makes a double
 * release or a copy from a buffer Ruby does not hold an ArgumentError instead
 * of silent corruption.
 */
#include "buf_ring.h"
#include "hio_valgrind.h"
#include "owner.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void *
bufr_map(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    hio_owner_dontfork_mem(p, bytes);
    return p;
}

static void
bufr_add(struct hio_bufring *b, unsigned bid, int offset)
{
    io_uring_buf_ring_add(b->br, b->mem + (size_t)bid * b->size, b->size, (unsigned short)bid,
                          io_uring_buf_ring_mask(b->n), offset);
}

int
hio_bufring_setup(struct hio_bufring *b, struct io_uring *ring, unsigned n, unsigned size, unsigned short bgid)
{
    struct io_uring_buf_reg reg;
    unsigned i;
    int ret;

    memset(b, 0, sizeof(*b));
    b->n = n;
    b->size = size;
    b->bgid = bgid;
    b->br_bytes = (size_t)n * sizeof(struct io_uring_buf);
    b->mem_bytes = (size_t)n * size;
    b->br = bufr_map(b->br_bytes);
    b->mem = bufr_map(b->mem_bytes);
    b->held = calloc(n, 1);
    b->len = calloc(n, sizeof(uint32_t));
    if (!b->br || !b->mem || !b->held || !b->len) {
        hio_bufring_teardown(b, NULL, HIO_RELEASE_NOW, NULL);
        return -ENOMEM;
    }
#ifdef HAVE_IO_URING_BUF_RING_INIT
    io_uring_buf_ring_init(b->br);
#else
    b->br->tail = 0;
#endif
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)(uintptr_t)b->br;
    reg.ring_entries = n;
    reg.bgid = bgid;
    /* EINTR: kernels that quiesce the ring for a registration wait
     * interruptibly; the registration did not happen, so try again. */
    for (i = 0; i < 100; i++) {
        if ((ret = io_uring_register_buf_ring(ring, &reg, 0)) != -EINTR) break;
    }
    if (ret < 0) {
        hio_bufring_teardown(b, NULL, HIO_RELEASE_NOW, NULL);
        return ret;
    }
    b->registered = 1;
    for (i = 0; i < n; i++) bufr_add(b, i, (int)i);
    io_uring_buf_ring_advance(b->br, (int)n); /* publishes the tail with release order */
    return 0;
}

/* A recv CQE handed buffer bid (len bytes) to Ruby. Returns -EINVAL for a
 * bid the kernel cannot have given us (we never release it then). */
int
hio_bufring_take(struct hio_bufring *b, unsigned bid, unsigned len)
{
    if (bid >= b->n || b->held[bid] || len > b->size) return -EINVAL;
    b->held[bid] = 1;
    b->len[bid] = len;
    HIO_MEM_DEFINED(b->mem + (size_t)bid * b->size, len);
    b->in_use++;
    return 0;
}

void
hio_bufring_release(struct hio_bufring *b, unsigned bid)
{
    b->held[bid] = 0;
    b->len[bid] = 0;
    b->in_use--;
    bufr_add(b, bid, 0);
    io_uring_buf_ring_advance(b->br, 1);
}

/* A buffer Ruby never saw (a stale recv's) goes back to the kernel. */
void
hio_bufring_recycle(struct hio_bufring *b, unsigned bid)
{
    if (bid >= b->n || b->held[bid]) return;
    bufr_add(b, bid, 0);
    io_uring_buf_ring_advance(b->br, 1);
}

size_t
hio_bufring_bytes(const struct hio_bufring *b)
{
    return b->mem_bytes + b->br_bytes + (size_t)b->n * (sizeof(*b->held) + sizeof(*b->len));
}

/*
 * Unregisters (when ring is given: still open, ours, and the kernel gave
 * back every request) and releases the memory as fate says. The ring of
 * descriptors is pinned by the kernel at registration and read through
 * its own mapping, so unmapping ours never frees pages it reads; the
 * buffers are written through our addresses, by the tasks owner.c lists,
 * which is what decides fate (hotpath.c).
 */
void
hio_bufring_teardown(struct hio_bufring *b, struct io_uring *ring, enum hio_release fate,
                     struct hio_deferral *d)
{
    if (b->registered && ring) io_uring_unregister_buf_ring(ring, b->bgid);
    b->registered = 0;
    if (fate == HIO_RELEASE_NOW) {
        if (b->br) munmap(b->br, b->br_bytes);
        if (b->mem) munmap(b->mem, b->mem_bytes);
    } else if (fate == HIO_RELEASE_DEFER) {
        /* Both DONTFORK (bufr_map): a forked child never had them. */
        hio_owner_defer_add(d, HIO_MEM_MUNMAP_DONTFORK, b->br, b->br_bytes);
        hio_owner_defer_add(d, HIO_MEM_MUNMAP_DONTFORK, b->mem, b->mem_bytes);
    }
    b->br = NULL;
    b->mem = NULL;
    free(b->held);
    free(b->len);
    b->held = NULL;
    b->len = NULL;
    b->in_use = 0;
}
