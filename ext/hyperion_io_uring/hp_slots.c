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
 *
 * Payloads of HP_MAP_MIN bytes or more get a mapping of their own instead
 * of malloc memory. A client that does not read makes copies pile up (up to
 * the ring's send_buffer_limit); from malloc, 64 KiB copies came from the
 * heap, and after the peers reset RSS stayed near its peak (146 MB of
 * 270 MB measured, issue 11) because freed chunks in the middle of the heap
 * are not given back, and glibc's dynamic mmap threshold moves above 1 MiB
 * after the first large free. munmap gives the pages back at once. A few
 * freed mappings (HP_MAP_CACHE, HP_MAP_CACHE_BYTES) are kept for the next
 * payloads, so a busy ring of large responses does not map and unmap per
 * send.
 *
 * Smaller payloads come from a slab: chunks of 64 B << class (up to
 * 32 KiB), and a freed chunk goes on its class's free list (linked through
 * its first word) while the ring keeps at most HP_SLAB_CACHE_BYTES of them,
 * so a server in its steady state makes no allocation per send
 * (stats[:send_copy_allocs] counts the ones made; glibc's malloc/free pair
 * for a hello-sized copy cost about 4% of a hello server's CPU, perf).
 * What is kept is at most 1 MiB per ring, freed at close.
 *
 * A borrowed slot (hio_hp_submit_send_borrowed: a frozen Ruby String sent
 * without a copy) holds the caller's memory under the binding's token:
 * freeing the slot unpins it (hio_owner_unpin), and a teardown with the
 * send still in flight defers the unpin with the ring's other memory.
 */
#include "hp_slots.h"
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

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
        ns[i].body = -1;
        ns[i].next = (i + 1 < n) ? (int32_t)(i + 1) : -1;
    }
    h->sends = ns;
    h->send_free = (int32_t)h->nsends;
    h->nsends = n;
    return 0;
}

char *
hp_map_get(struct hio_hotpath *h, size_t len, size_t *size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), want = (len + page - 1) & ~(page - 1);
    unsigned i;
    void *p;

    /* A cached mapping that fits without wasting more than half of it. */
    for (i = 0; i < h->map_cached; i++) {
        struct hio_map *m = &h->map_cache[i];
        if (m->size >= want && m->size / 2 <= want) {
            p = m->p;
            *size = m->size;
            h->map_cached_bytes -= m->size;
            *m = h->map_cache[--h->map_cached];
            return p;
        }
    }
    h->st.send_copy_allocs++;
    p = mmap(NULL, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    *size = want;
    return p;
}

void
hp_map_put(struct hio_hotpath *h, char *p, size_t size)
{
    if (h->map_cached < HP_MAP_CACHE && h->map_cached_bytes + size <= HP_MAP_CACHE_BYTES) {
        h->map_cache[h->map_cached].p = p;
        h->map_cache[h->map_cached].size = size;
        h->map_cached++;
        h->map_cached_bytes += size;
        return;
    }
    munmap(p, size);
}

void
hp_slots_teardown(struct hio_hotpath *h, enum hio_release inflight_fate, struct hio_deferral *d)
{
    unsigned i;

    for (i = 0; i < h->nsends; i++) {
        struct hio_send *s = &h->sends[i];
        /* A SEND_ZC's memory is the kernel's until its notification. A
         * sendfile slot's only request is a POLLOUT poll, which reads
         * nothing: its String is not the kernel's (sendfile(2) ran here). */
        int held = (s->inflight && s->body < 0) || s->notifs;
        if (!s->data) continue;
        if (s->borrowed) {
            /* The caller's memory (a pinned Ruby String): unpinned once
             * the kernel cannot read it, like a copy would be freed. */
            if (held && inflight_fate == HIO_RELEASE_DEFER)
                hio_owner_defer_add(d, HIO_MEM_UNPIN, (void *)(uintptr_t)s->token, s->len);
            else if (!held || inflight_fate == HIO_RELEASE_NOW)
                hio_owner_unpin(s->token);
            continue;
        }
        if (held && inflight_fate != HIO_RELEASE_NOW) {
            /* Plain mappings and malloc memory: a forked child has its
             * own copy of either (owner.c releases them there). */
            if (inflight_fate == HIO_RELEASE_DEFER)
                hio_owner_defer_add(d, s->map ? HIO_MEM_MUNMAP : HIO_MEM_FREE, s->data,
                                    s->map ? s->map : hp_slab_size(s->cls));
            continue;
        }
        if (s->map) munmap(s->data, s->map);
        else free(s->data);
    }
    for (i = 0; i < HP_SLAB_CLASSES; i++) {
        while (h->slab[i]) {
            void *next = *(void **)h->slab[i];
            free(h->slab[i]);
            h->slab[i] = next;
        }
    }
    h->slab_cached_bytes = 0;
    for (i = 0; i < h->map_cached; i++) munmap(h->map_cache[i].p, h->map_cache[i].size);
    h->map_cached = 0;
    h->map_cached_bytes = 0;
    free(h->sends);
    h->sends = NULL;
    h->nsends = 0;
    h->send_free = -1;
    h->send_held = 0;
}
