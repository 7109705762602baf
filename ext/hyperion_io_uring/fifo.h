/*
 * fifo.h: a growable first-in-first-out queue of fixed-size items.
 *
 * Layer: bottom (a data structure; fifo.c calls only libc). The hot path
 * keeps three of them: completions reaped but not yet yielded, connections
 * parked for lack of buffers, and closes the kernel has not taken yet.
 *
 * Memory comes from malloc, never from Ruby's allocator: a push happens in
 * the middle of a reap, where an exception would lose completions. The
 * capacity is 0 or a power of two, so a position is a mask, not a division.
 */
#ifndef HIO_FIFO_H
#define HIO_FIFO_H 1

#include <stddef.h>

struct hio_fifo {
    unsigned char *items;
    unsigned head, count, cap;
};

/* Makes room for one more item (capacity doubles, from first_cap).
 * Returns 0, or -ENOMEM with the queue unchanged. */
int hio_fifo_reserve(struct hio_fifo *f, size_t item_size, unsigned first_cap);
void hio_fifo_free(struct hio_fifo *f);

/* The i-th item from the front (i < count). */
static inline void *
hio_fifo_at(const struct hio_fifo *f, size_t item_size, unsigned i)
{
    return f->items + (size_t)((f->head + i) & (f->cap - 1)) * item_size;
}

/* A slot for a new last item, or NULL without memory. */
static inline void *
hio_fifo_push(struct hio_fifo *f, size_t item_size, unsigned first_cap)
{
    if (f->count == f->cap && hio_fifo_reserve(f, item_size, first_cap) < 0) return NULL;
    return hio_fifo_at(f, item_size, f->count++);
}

/* The first item, or NULL when empty; hio_fifo_drop removes it. */
static inline void *
hio_fifo_front(const struct hio_fifo *f, size_t item_size)
{
    return f->count ? hio_fifo_at(f, item_size, 0) : NULL;
}

static inline void
hio_fifo_drop(struct hio_fifo *f)
{
    f->head = (f->head + 1) & (f->cap - 1);
    f->count--;
}

#endif
