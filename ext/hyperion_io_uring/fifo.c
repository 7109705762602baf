/*
 * fifo.c: growing and freeing the FIFO of fifo.h.
 *
 * Layer: bottom. Calls only libc.
 */
#include "fifo.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int
hio_fifo_reserve(struct hio_fifo *f, size_t item_size, unsigned first_cap)
{
    unsigned cap, i;
    unsigned char *n;

    if (f->count < f->cap) return 0;
    cap = f->cap ? f->cap * 2 : first_cap;
    if (cap < f->cap || (size_t)cap > (size_t)-1 / item_size) return -ENOMEM;
    n = malloc((size_t)cap * item_size);
    if (!n) return -ENOMEM;
    /* Unwrapped into the new array, oldest first. */
    for (i = 0; i < f->count; i++) memcpy(n + (size_t)i * item_size, hio_fifo_at(f, item_size, i), item_size);
    free(f->items);
    f->items = n;
    f->cap = cap;
    f->head = 0;
    return 0;
}

void
hio_fifo_free(struct hio_fifo *f)
{
    free(f->items);
    f->items = NULL;
    f->head = f->count = f->cap = 0;
}
