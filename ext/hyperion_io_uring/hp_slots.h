/*
 * hp_slots.h: the pool of send slots and their payload memory (hp_slots.c).
 * Bottom layer of the hot path.
 */
#ifndef HIO_HP_SLOTS_H
#define HIO_HP_SLOTS_H 1

#include "hp.h"
#include "hp_bodies.h"
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

struct iovec;

/* Payloads of at least this many bytes get a mapping of their own
 * (hp_slots.c says why). */
#define HP_MAP_MIN (32u * 1024u)
/* At most this many bytes of freed mappings are kept for reuse per ring. */
#define HP_MAP_CACHE_BYTES (4u * 1024u * 1024u)
/* At most this many bytes of freed slab chunks are kept per ring. */
#define HP_SLAB_CACHE_BYTES (1u * 1024u * 1024u)

/* The slab class of a payload of len (1..HP_MAP_MIN - 1) bytes: chunks of
 * 64 << cls bytes. */
static inline unsigned
hp_slab_class(size_t len)
{
    return len <= 64 ? 0 : (unsigned)(64 - __builtin_clzll((unsigned long long)(len - 1))) - 6;
}
static inline size_t hp_slab_size(unsigned cls) { return (size_t)64 << cls; }

/* Adds free slots to the pool: 0, or -1 without memory. */
int hp_slots_grow(struct hio_hotpath *h);
/* Memory for a payload of len >= HP_MAP_MIN bytes: its own mapping (a
 * freed one reused when one fits), *size set to the mapping's size; NULL
 * without memory. */
char *hp_map_get(struct hio_hotpath *h, size_t len, size_t *size);
/* Gives a mapping back: kept for reuse while the cache has room, else
 * unmapped (its pages go back to the system at once). */
void hp_map_put(struct hio_hotpath *h, char *p, size_t size);

/* A free slot holding a ring-owned copy of the iovecs' len bytes (counted
 * in send_held), or -1 without memory (inline: every send takes one). */
static inline int32_t
hp_slot_new(struct hio_hotpath *h, const struct iovec *iov, unsigned iovcnt, size_t len)
{
    struct hio_send *s;
    size_t off = 0, map = 0;
    unsigned i;
    int32_t slot;

    if (h->send_free < 0 && hp_slots_grow(h) < 0) return -1;
    slot = h->send_free;
    s = &h->sends[slot];
    if (len >= HP_MAP_MIN) {
        s->data = hp_map_get(h, len, &map);
    } else {
        unsigned cls = hp_slab_class(len);
        s->cls = (uint8_t)cls;
        if ((s->data = h->slab[cls])) {
            /* A freed chunk of the class: no allocation. */
            h->slab[cls] = *(void **)s->data;
            h->slab_cached_bytes -= hp_slab_size(cls);
        } else {
            h->st.send_copy_allocs++;
            s->data = malloc(hp_slab_size(cls));
        }
    }
    if (!s->data) return -1;
    s->map = map;
    h->send_free = s->next;
    s->next = -1;
    for (i = 0; i < iovcnt; i++) {
        memcpy(s->data + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    s->len = len;
    s->off = 0;
    h->send_held += len;
    return slot;
}
/* A free slot whose payload is the caller's len bytes at data, pinned
 * under token (counted in send_held like a copy), or -1 without memory. */
static inline int32_t
hp_slot_borrow(struct hio_hotpath *h, const void *data, size_t len, uint64_t token)
{
    struct hio_send *s;
    int32_t slot;

    if (h->send_free < 0 && hp_slots_grow(h) < 0) return -1;
    slot = h->send_free;
    s = &h->sends[slot];
    h->send_free = s->next;
    s->next = -1;
    s->data = (char *)data;
    s->map = 0;
    s->borrowed = 1;
    s->token = token;
    s->len = len;
    s->off = 0;
    h->send_held += len;
    return slot;
}
/* Frees the slot's payload (a borrowed one is unpinned) and returns the
 * slot to the pool. */
static inline void
hp_slot_free(struct hio_hotpath *h, int32_t slot)
{
    struct hio_send *s = &h->sends[slot];

    if (s->body >= 0) hp_body_put(h, s->body);
    if (s->data) {
        h->send_held -= s->len;
        if (s->borrowed) {
            hio_owner_unpin(s->token);
        } else if (s->map) {
            hp_map_put(h, s->data, s->map);
        } else if (h->slab_cached_bytes + hp_slab_size(s->cls) <= HP_SLAB_CACHE_BYTES) {
            /* Kept for the next payload of its class. */
            *(void **)s->data = h->slab[s->cls];
            h->slab[s->cls] = s->data;
            h->slab_cached_bytes += hp_slab_size(s->cls);
        } else {
            free(s->data);
        }
    }
    s->data = NULL;
    s->map = 0;
    s->borrowed = s->zc = s->notifs = s->ended = 0;
    s->fd = -1;
    s->inflight = s->cancelled = 0;
    s->body = -1;
    s->next = h->send_free;
    h->send_free = slot;
}
/* Frees the pool and the cached mappings. A payload whose send is still in
 * flight gets inflight_fate (hotpath.c decides: now, or deferred in d until
 * the owner task is gone); the others are freed. */
void hp_slots_teardown(struct hio_hotpath *h, enum hio_release inflight_fate, struct hio_deferral *d);

#endif
