/*
 * hp_slots.h: the pool of send slots and their payload memory (hp_slots.c).
 * Bottom layer of the hot path.
 */
#ifndef HIO_HP_SLOTS_H
#define HIO_HP_SLOTS_H 1

#include "hp.h"

struct iovec;

/* A free slot holding a ring-owned copy of the iovecs' len bytes, or -1
 * without memory. */
int32_t hp_slot_new(struct hio_hotpath *h, const struct iovec *iov, unsigned iovcnt, size_t len);
/* Frees the slot's payload and returns it to the pool. */
void hp_slot_free(struct hio_hotpath *h, int32_t slot);
/* Frees the pool. A payload the kernel may still read (its send is in
 * flight and kernel_may_read is set) is leaked instead. */
void hp_slots_teardown(struct hio_hotpath *h, int kernel_may_read);

#endif
