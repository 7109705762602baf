/*
 * hp_slots.c: send slots and their memory.
 *
 * Layer: bottom of the hot path. Calls libc, and owner.c at teardown.
 *
 * A slot holds one submitted send: its payload, copied into ring-owned
 * memory before submit_send returns (the caller's String or iovecs may be
 * freed or moved the moment it does), and where it stands. The kernel holds
 * s->data while the send is in flight, never &sends[i], so the array may
 * move when it grows. Free slots form a list through next.
 *
 * Layer note: teardown hands payloads still in flight to owner.c when they
 * must outlive the ring (hotpath.c decides).
 */
#include "hp_slots.h"
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

int
hp_slots_grow(struct hio_hotpath *h)
{
    unsigned n = h->nsends ? h->nsends * 2 : 64, i;
    struct hio_send *ns;

    if (n > (unsigned)INT32_MAX / 2) return -1;
    ns = realloc(h->sends, (size_t)n * sizeof(*ns));
    if (!ns) return -1;
    for (i = h->nsends; i < n; i++) {
        memset(&ns[i], 0, sizeof(ns[i]));
        ns[i].fd = -1;
        ns[i].next = (i + 1 < n) ? (int32_t)(i + 1) : -1;
    }
    h->sends = ns;
    h->send_free = (int32_t)h->nsends;
    h->nsends = n;
    return 0;
}

void
hp_slots_teardown(struct hio_hotpath *h, enum hio_release inflight_fate)
{
    unsigned i;

    for (i = 0; i < h->nsends; i++) {
        struct hio_send *s = &h->sends[i];
        if (!s->data) continue;
        if (!s->inflight || inflight_fate == HIO_RELEASE_NOW) free(s->data);
        else if (inflight_fate == HIO_RELEASE_DEFER) hio_owner_defer_release(&h->owner, HIO_MEM_FREE, s->data, s->len);
    }
    free(h->sends);
    h->sends = NULL;
    h->nsends = 0;
    h->send_free = -1;
}

unsigned
hp_slots_inflight(const struct hio_hotpath *h)
{
    unsigned i, n = 0;

    for (i = 0; i < h->nsends; i++) n += h->sends[i].data && h->sends[i].inflight;
    return n;
}
