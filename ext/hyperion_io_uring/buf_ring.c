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
 * Ownership: a buffer is FREE (on our stack of free buffers: only we can
 * touch it), RING (published in the kernel's ring: it may write it once it
 * picks it for a recv) or HELD (its recv CQE was delivered to Ruby, which
 * has not released it yet). state[] makes a double release or a copy from
 * a buffer Ruby does not hold an ArgumentError instead of silent
 * corruption.
 *
 * Resident memory follows the concurrency, not n (issue 14). The kernel
 * picks buffers from its ring in the order they were added, so a ring with
 * all n published cycles through every one of them and, after a few hundred
 * small requests, every buffer's first page is resident. So only want
 * buffers are kept out of the stack (published, or held by Ruby); the
 * others wait on a LIFO stack whose top (the most recently used, already
 * resident) refills the ring, and whose bottom (unused for a whole window)
 * is given back with MADV_DONTNEED. want starts at HIO_BUFRING_WANT_MIN
 * and adapts:
 * - it doubles (up to n) when recvs run dry (-ENOBUFS, parked and re-armed
 *   by hp_multishot.c when buffers come back) at least BR_GROW_PARKS times
 *   and for more than 1 in BR_GROW_RATIO of the recvs since the window
 *   began or want last changed. A park costs an extra CQE and SQE and
 *   delays that connection's bytes a little; memory stays resident. 10,000
 *   keep-alive connections set up 500 at a time, each sending a request at
 *   once (bench/conn_client.c), parked 48 to 1,189 recvs with want 64
 *   (at most 12% of the recvs, it varies with how busy the machine is):
 *   not worth a bigger pool, and a 1-in-4 bar leaves twice that margin.
 *   With 16 buffers the same run parked more recvs than it made; 300
 *   connections whose bytes are all queued before a reap park most of
 *   theirs with 64: both must grow;
 * - it decays, once a window (HIO_BUFRING_WINDOW seconds of the coarse
 *   clock, checked by hio_bufring_tick after reaps and in idle waits), to
 *   twice the most buffers out of the stack in that window (at least
 *   HIO_BUFRING_WANT_MIN), when that was at most a quarter of want and no
 *   recv ran dry.
 * Buffers published beyond want (after a decay, or for parked recvs)
 * come back as the kernel consumes them. Only FREE buffers are ever
 * madvised: the kernel cannot write them and Ruby does not hold them.
 */
#include "buf_ring.h"
#include "hio_valgrind.h"
#include "owner.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* IORING_REGISTER_PBUF_STATUS (Linux 6.8): the kernel's head of a buffer
 * ring. liburing 2.3 has neither the opcode nor the struct. */
#define BR_REGISTER_PBUF_STATUS 26u
struct br_buf_status {
    uint32_t buf_group;
    uint32_t head;
    uint32_t resv[8];
};

#define BR_GROW_PARKS 32u
#define BR_GROW_RATIO 4u

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

static void
bufr_push(struct hio_bufring *b, unsigned bid)
{
    b->state[bid] = HIO_BUF_FREE;
    b->stack[b->nfree++] = (uint16_t)bid;
}

/* The kernel consumed a published buffer (its CQE is here). */
static void
bufr_consumed(struct hio_bufring *b)
{
    b->published--;
    if (b->want > b->published && b->want - b->published > b->peak) b->peak = b->want - b->published;
}

void
hio_bufring_top_up(struct hio_bufring *b, unsigned at_least)
{
    /* want counts the buffers Ruby holds too: what the ring's traffic
     * keeps out of the stack, which is what stays resident. */
    unsigned target = b->want > b->in_use ? b->want - b->in_use : 0;
    int added = 0;

    if (at_least > target) target = at_least;

    while (b->published < target && b->nfree > 0) {
        unsigned bid = b->stack[--b->nfree];
        b->state[bid] = HIO_BUF_RING;
        bufr_add(b, bid, added++);
        b->published++;
    }
    if (!added) return;
    if (b->nfree < b->clean) b->clean = b->nfree;
    if (b->nfree < b->low) b->low = b->nfree;
    io_uring_buf_ring_advance(b->br, added); /* publishes the tail with release order */
}

/* Registers the (empty) ring of descriptors as buffer group bgid. */
static int
bufr_register(struct hio_bufring *b, struct io_uring *ring)
{
    struct io_uring_buf_reg reg;
    unsigned i;
    int ret = -EINTR;

#ifdef HAVE_IO_URING_BUF_RING_INIT
    io_uring_buf_ring_init(b->br);
#else
    b->br->tail = 0;
#endif
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)(uintptr_t)b->br;
    reg.ring_entries = b->n;
    reg.bgid = b->bgid;
    /* EINTR: kernels that quiesce the ring for a registration wait
     * interruptibly; the registration did not happen, so try again. */
    for (i = 0; i < 100; i++) {
        if ((ret = io_uring_register_buf_ring(ring, &reg, 0)) != -EINTR) break;
    }
    return ret;
}

int
hio_bufring_setup(struct hio_bufring *b, struct io_uring *ring, unsigned n, unsigned size, unsigned short bgid)
{
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
    b->state = calloc(n, 1);
    b->len = calloc(n, sizeof(uint32_t));
    b->stack = calloc(n, sizeof(uint16_t));
    if (!b->br || !b->mem || !b->state || !b->len || !b->stack) {
        hio_bufring_teardown(b, NULL, HIO_RELEASE_NOW, NULL);
        return -ENOMEM;
    }
    if ((ret = bufr_register(b, ring)) < 0) {
        hio_bufring_teardown(b, NULL, HIO_RELEASE_NOW, NULL);
        return ret;
    }
    b->registered = 1;
    b->ring = ring;
    /* Buffer 0 on top: the first published are the first pages. Nothing
     * was touched yet, so the whole stack counts as clean. */
    for (i = 0; i < n; i++) bufr_push(b, n - 1 - i);
    b->clean = b->low = n;
    b->want = b->want_min = n < HIO_BUFRING_WANT_MIN ? n : HIO_BUFRING_WANT_MIN;
    hio_bufring_top_up(b, 0);
    return 0;
}

/* A recv CQE handed buffer bid (len bytes) to Ruby. Returns -EINVAL for a
 * bid the kernel cannot have given us (we never release it then). */
int
hio_bufring_take(struct hio_bufring *b, unsigned bid, unsigned len)
{
    if (bid >= b->n || b->state[bid] != HIO_BUF_RING || len > b->size) return -EINVAL;
    b->state[bid] = HIO_BUF_HELD;
    b->len[bid] = len;
    HIO_MEM_DEFINED(b->mem + (size_t)bid * b->size, len);
    b->in_use++;
    b->g_recvs++;
    bufr_consumed(b);
    return 0;
}

void
hio_bufring_release(struct hio_bufring *b, unsigned bid)
{
    b->len[bid] = 0;
    b->in_use--;
    bufr_push(b, bid);
    hio_bufring_top_up(b, 0);
}

/* A buffer Ruby never saw (a stale recv's) goes back to the free stack. */
void
hio_bufring_recycle(struct hio_bufring *b, unsigned bid)
{
    if (bid >= b->n || b->state[bid] != HIO_BUF_RING) return;
    bufr_consumed(b);
    bufr_push(b, bid);
    hio_bufring_top_up(b, 0);
}

void
hio_bufring_dry(struct hio_bufring *b)
{
    b->win_parks++;
    if (++b->g_parks >= BR_GROW_PARKS && b->g_parks * BR_GROW_RATIO > b->g_recvs && b->want < b->n) {
        b->want = b->want * 2 < b->n ? b->want * 2 : b->n;
        b->grows++;
        b->g_parks = b->g_recvs = 0;
    }
    hio_bufring_top_up(b, 0);
}

/* MADV_DONTNEED over buffers [lo, hi]: their pages are freed, and read as
 * zeros (to memcheck: undefined) until the kernel writes them again. */
static void
bufr_dontneed(struct hio_bufring *b, unsigned lo, unsigned hi)
{
    unsigned char *p = b->mem + (size_t)lo * b->size;
    size_t bytes = (size_t)(hi - lo + 1) * b->size;

    if (madvise(p, bytes, MADV_DONTNEED) == 0) {
        HIO_MEM_UNDEFINED(p, bytes);
        b->releases_to_os += hi - lo + 1;
    }
}

/* Gives back the buffers at the bottom of the stack that no top-up took in
 * the whole window (stack[clean..low)), in runs of adjacent buffers. */
static void
bufr_trim(struct hio_bufring *b)
{
    unsigned i, lo = 0, hi = 0;
    int run = 0;

    if (b->low <= b->clean) return;
    for (i = b->clean; i < b->low; i++) {
        unsigned bid = b->stack[i];
        if (run && bid == hi + 1) {
            hi = bid;
        } else if (run && bid + 1 == lo) {
            lo = bid;
        } else {
            if (run) bufr_dontneed(b, lo, hi);
            lo = hi = bid;
            run = 1;
        }
    }
    if (run) bufr_dontneed(b, lo, hi);
    b->clean = b->low;
}

/* The buffers the kernel has not consumed: its head, from
 * IORING_REGISTER_PBUF_STATUS, up to our tail. */
static int
bufr_kernel_head(struct hio_bufring *b, uint16_t *head)
{
    struct br_buf_status st;
    long ret;

    memset(&st, 0, sizeof(st));
    st.buf_group = b->bgid;
    ret = syscall(__NR_io_uring_register, b->ring->ring_fd, BR_REGISTER_PBUF_STATUS, &st, 1);
    if (ret < 0) return -errno;
    *head = (uint16_t)st.head;
    return 0;
}

/*
 * Takes the buffers published and not consumed back from the kernel:
 * unregisters the group and registers it again, empty, then publishes
 * keep of them again (the most recently published) and gives the others'
 * pages back. The kernel looks the group up at each buffer selection, so
 * armed multishot recvs pick from the new ring; one that found no group
 * in between ends with ENOBUFS and is parked as any other.
 *
 * Which ones were not consumed is the kernel's head, read just before.
 * That is exact only because nothing consumes buffers between the read
 * and the unregister: on a DEFER_TASKRUN ring (the only kind can_withdraw
 * is set for, hotpath.c) recvs run only inside an io_uring_enter by the
 * owner task, which is us, here. Anything consumed before the read has
 * its CQE in the CQ (or reaped), and stays RING until that CQE takes or
 * recycles it.
 *
 * Returns 0 (done, or nothing done: can_withdraw is cleared when the
 * kernel lacks PBUF_STATUS or refuses), or -errno when the group could not
 * be registered again.
 */
static int
bufr_withdraw(struct hio_bufring *b, unsigned keep)
{
    uint16_t head = 0, tail = b->br->tail;
    unsigned count, mask = io_uring_buf_ring_mask(b->n), i, nl;
    int ret;

    if (bufr_kernel_head(b, &head) < 0) {
        b->can_withdraw = 0; /* before 6.8: decay waits for consumption */
        return 0;
    }
    count = (uint16_t)(tail - head);
    if (count > b->published) { b->can_withdraw = 0; return 0; }
    for (i = 0; i < count; i++) {
        if (b->state[b->br->bufs[(uint16_t)(head + i) & mask].bid] != HIO_BUF_RING) {
            b->can_withdraw = 0; /* not what we published: leave it alone */
            return 0;
        }
    }
    if (io_uring_unregister_buf_ring(b->ring, b->bgid) < 0) { b->can_withdraw = 0; return 0; }
    /* The entries stay readable in our mapping until the new ring is
     * written: note them first. The oldest (head side) go to the bottom
     * of the stack, given back; the newest keep go on top, published again. */
    nl = count > keep ? count - keep : 0;
    memmove(b->stack + nl, b->stack, (size_t)b->nfree * sizeof(*b->stack));
    for (i = 0; i < count; i++) {
        unsigned bid = b->br->bufs[(uint16_t)(head + i) & mask].bid;
        b->state[bid] = HIO_BUF_FREE;
        if (i < nl) b->stack[i] = (uint16_t)bid;
        else b->stack[b->nfree + i] = (uint16_t)bid;
    }
    b->nfree += count;
    b->published -= count;
    ret = bufr_register(b, b->ring);
    if (ret < 0) {
        b->registered = 0;
        b->can_withdraw = 0;
        return ret;
    }
    b->withdrawals++;
    /* Below the old stack, whose clean part moved up by nl with it. */
    i = b->clean;
    b->clean = 0;
    b->low = nl;
    bufr_trim(b);
    b->clean = nl + i;
    hio_bufring_top_up(b, 0);
    return 0;
}

int
hio_bufring_tick(struct hio_bufring *b, double now)
{
    int ret = 0;

    if (now < b->win_end) return 0;
    if (b->win_end > 0) {
        unsigned target;
        if (b->win_parks == 0 && b->peak * 4 <= b->want && b->want > b->want_min) {
            unsigned w = b->peak * 2;
            b->want = w > b->want_min ? w : b->want_min;
            b->shrinks++;
        }
        bufr_trim(b);
        target = b->want > b->in_use ? b->want - b->in_use : 0;
        if (b->can_withdraw && b->registered && b->win_parks == 0 &&
            b->published >= target + (target / 4 > 8 ? target / 4 : 8))
            ret = bufr_withdraw(b, target);
    }
    b->win_end = now + HIO_BUFRING_WINDOW;
    b->low = b->nfree;
    b->peak = b->win_parks = b->g_parks = b->g_recvs = 0;
    return ret;
}

uint64_t
hio_bufring_pages_resident(const struct hio_bufring *b)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t npages, i;
    unsigned char *vec;
    uint64_t count = 0;

    if (!b->mem || pg <= 0) return 0;
    npages = (b->mem_bytes + (size_t)pg - 1) / (size_t)pg;
    if (!(vec = malloc(npages))) return 0;
    if (mincore(b->mem, b->mem_bytes, vec) == 0)
        for (i = 0; i < npages; i++) count += vec[i] & 1;
    free(vec);
    return count;
}

size_t
hio_bufring_bytes(const struct hio_bufring *b)
{
    return b->mem_bytes + b->br_bytes + (size_t)b->n * (sizeof(*b->state) + sizeof(*b->len) + sizeof(*b->stack));
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
    free(b->state);
    free(b->len);
    free(b->stack);
    b->state = NULL;
    b->len = NULL;
    b->stack = NULL;
    b->in_use = b->published = b->nfree = b->clean = 0;
}
