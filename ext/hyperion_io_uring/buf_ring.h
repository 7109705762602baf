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

/* What a buffer is now (hio_bufring.state). */
enum hio_buf_state {
    HIO_BUF_FREE = 0, /* ours alone, on the stack of free buffers */
    HIO_BUF_RING,     /* published in the kernel's ring, not consumed yet (as far as we know) */
    HIO_BUF_HELD      /* a recv CQE handed it to Ruby, not released yet */
};

/* Least and first number of buffers published; the window of the
 * adaptation (buf_ring.c says why these). */
#define HIO_BUFRING_WANT_MIN 64u
#define HIO_BUFRING_WINDOW 1.0

struct hio_bufring {
    struct io_uring_buf_ring *br; /* descriptors, mmap'd */
    size_t br_bytes;
    unsigned char *mem;           /* n * size bytes, mmap'd */
    size_t mem_bytes;
    unsigned n, size;
    unsigned short bgid;
    int registered;
    struct io_uring *ring;        /* registered with (hio_bufring_withdraw) */
    int can_withdraw;             /* the engine says withdrawing is safe (hotpath.c) */
    uint8_t *state;               /* enum hio_buf_state per buffer */
    uint32_t *len;                /* bytes the kernel wrote into a held buffer */
    unsigned in_use;              /* HELD */
    /* Free buffers: a LIFO stack, the most recently used on top (its
     * pages are resident), the least at the bottom; stack[0..clean) were
     * given back to the OS (or never touched) and not used since. */
    uint16_t *stack;
    unsigned nfree, clean;
    unsigned published;           /* RING */
    unsigned want;                /* how many to keep out of the stack (published + held): want_min..n */
    unsigned want_min;
    /* The adaptation's window (hio_bufring_tick). */
    double win_end;               /* coarse clock; 0: not started */
    unsigned low;                 /* fewest free buffers on the stack in the window */
    unsigned peak;                /* most buffers consumed and not yet replaced, in the window */
    unsigned win_parks;           /* recvs ended dry in the window */
    unsigned g_parks, g_recvs;    /* since the window began or want last grew */
    uint64_t releases_to_os;      /* buffers given back with MADV_DONTNEED */
    uint64_t grows, shrinks;      /* changes of want */
    uint64_t withdrawals;         /* re-registrations that took idle buffers back from the kernel */
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
    if (b->state[bid] != HIO_BUF_HELD) return -ENOENT;
    return 0;
}
/* Ruby gives back a buffer it holds. */
void hio_bufring_release(struct hio_bufring *b, unsigned bid);
/* A buffer Ruby never saw (a stale recv's) goes back to the free stack. */
void hio_bufring_recycle(struct hio_bufring *b, unsigned bid);
/* A multishot recv ended with -ENOBUFS: the ring ran dry. May let more
 * buffers be published (and publishes them). */
void hio_bufring_dry(struct hio_bufring *b);
/* Publishes free buffers until want minus those Ruby holds, or at_least
 * if more, are in the kernel's ring (as far as there are free ones). */
void hio_bufring_top_up(struct hio_bufring *b, unsigned at_least);
/* Called after reaps and from idle waits, with hio_now_coarse(): once a
 * window, lets want decay, takes buffers published far beyond it back from
 * the kernel (only if can_withdraw) and gives the pages of buffers unused
 * for a whole window back to the OS. Cheap when the window is not over.
 * 0, or -errno when the buffer group could not be registered again (no
 * recv can get a buffer any more: the ring is broken). */
int hio_bufring_tick(struct hio_bufring *b, double now);
/* Buffers that can be handed to the kernel: published or free. */
static inline unsigned
hio_bufring_available(const struct hio_bufring *b)
{
    return b->published + b->nfree;
}
/* Pages of the buffers resident now (mincore(2); a syscall, for stats). */
uint64_t hio_bufring_pages_resident(const struct hio_bufring *b);

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
