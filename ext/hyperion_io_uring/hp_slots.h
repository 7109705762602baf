/*
 * hp_slots.h: the pool of send slots and their payload memory (hp_slots.c).
 * Bottom layer of the hot path.
 */
#ifndef HIO_HP_SLOTS_H
#define HIO_HP_SLOTS_H 1

#include "hp.h"
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

struct iovec;

/* Adds free slots to the pool: 0, or -1 without memory. */
int hp_slots_grow(struct hio_hotpath *h);

/* A free slot holding a ring-owned copy of the iovecs' len bytes, or -1
 * without memory (inline: every send takes one). */
static inline int32_t
hp_slot_new(struct hio_hotpath *h, const struct iovec *iov, unsigned iovcnt, size_t len)
{
    struct hio_send *s;
    size_t off = 0;
    unsigned i;
    int32_t slot;

    if (h->send_free < 0 && hp_slots_grow(h) < 0) return -1;
    slot = h->send_free;
    s = &h->sends[slot];
    if (!(s->data = malloc(len))) return -1;
    h->send_free = s->next;
    s->next = -1;
    for (i = 0; i < iovcnt; i++) {
        memcpy(s->data + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    s->len = len;
    s->off = 0;
    return slot;
}
/* Frees the slot's payload and returns it to the pool. */
static inline void
hp_slot_free(struct hio_hotpath *h, int32_t slot)
{
    struct hio_send *s = &h->sends[slot];

    free(s->data);
    s->data = NULL;
    s->fd = -1;
    s->inflight = s->cancelled = 0;
    s->next = h->send_free;
    h->send_free = slot;
}
/* Frees the pool. A payload whose send is still in flight gets inflight_fate
 * (hotpath.c decides: now, deferred until the owner task is gone, or
 * forgotten in a forked child); the others are freed. */
void hp_slots_teardown(struct hio_hotpath *h, enum hio_release inflight_fate);
/* Payloads whose send the kernel still holds. */
unsigned hp_slots_inflight(const struct hio_hotpath *h);

#endif
