/*
 * buf_ring.h: the provided-buffer ring (buf_ring.c). Bottom layer.
 */
#ifndef HIO_BUF_RING_H
#define HIO_BUF_RING_H 1

#include <errno.h>
#include <liburing.h>
#include <stddef.h>
#include <stdint.h>
#include "owner.h"

struct hio_bufring {
    struct io_uring_buf_ring *br; /* descriptors, mmap'd */
    size_t br_bytes;
    unsigned char *mem;           /* n * size bytes, mmap'd */
    size_t mem_bytes;
    unsigned n, size;
    unsigned short bgid;
    int registered;
    uint8_t *held;                /* 1: held by Ruby */
    uint32_t *len;                /* bytes the kernel wrote into a held buffer */
    unsigned in_use;
};

int hio_bufring_setup(struct hio_bufring *b, struct io_uring *ring, unsigned n, unsigned size, unsigned short bgid);
/* A recv CQE handed buffer bid (len bytes) to Ruby: -EINVAL for a bid the
 * kernel cannot have given us. */
int hio_bufring_take(struct hio_bufring *b, unsigned bid, unsigned len);
/* 0 when Ruby holds bid; -ERANGE (no such buffer), -ENOENT (not held).
 * Inline, as the accessors below: every buffer method asks. */
static inline int
hio_bufring_check(const struct hio_bufring *b, long bid)
{
    if (bid < 0 || bid >= (long)b->n) return -ERANGE;
    if (!b->held[bid]) return -ENOENT;
    return 0;
}
/* Ruby gives back a buffer it holds. */
void hio_bufring_release(struct hio_bufring *b, unsigned bid);
/* A buffer Ruby never saw (a stale recv's) goes back to the kernel. */
void hio_bufring_recycle(struct hio_bufring *b, unsigned bid);
static inline unsigned
hio_bufring_available(const struct hio_bufring *b)
{
    return b->n - b->in_use;
}

static inline const unsigned char *
hio_bufring_data(const struct hio_bufring *b, unsigned bid)
{
    return b->mem + (size_t)bid * b->size;
}

/* Bytes the kernel wrote into held buffer bid. */
static inline unsigned
hio_bufring_len(const struct hio_bufring *b, unsigned bid)
{
    return b->len[bid];
}
/* Memory it holds, for ObjectSpace.memsize_of. */
size_t hio_bufring_bytes(const struct hio_bufring *b);
/* Unregisters from ring (NULL: it is not ours to unregister from, or not
 * registered), then does what fate says with the memory (HIO_RELEASE_DEFER:
 * added to d, the ring's deferral, whose owner task it waits for). */
void hio_bufring_teardown(struct hio_bufring *b, struct io_uring *ring, enum hio_release fate,
                          struct hio_deferral *d);

#endif
