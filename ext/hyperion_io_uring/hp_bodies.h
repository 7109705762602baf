/*
 * hp_bodies.h: sealed memfd copies of large frozen bodies, sent with
 * sendfile(2) (hp_bodies.c). Bottom layer of the hot path, beside hp_slots.c.
 */
#ifndef HIO_HP_BODIES_H
#define HIO_HP_BODIES_H 1

#include "hp.h"

/* The entry holding a memfd copy of the len bytes at p (a frozen String
 * pinned under token), made on the first send of it, with a reference
 * taken for one send; -1 when there is none and none can be made (the
 * send then goes out as a plain one). */
int32_t hp_body_get(struct hio_hotpath *h, const char *p, size_t len, uint64_t token);
/* A send that used entry i has ended. */
void hp_body_put(struct hio_hotpath *h, int32_t i);
static inline int hp_body_fd(const struct hio_hotpath *h, int32_t i) { return h->bodies[i].fd; }
/* Closes every memfd and unpins every String (the kernel holds neither:
 * sendfile(2) has returned, and skbs hold their own page references). */
void hp_bodies_teardown(struct hio_hotpath *h);

#endif
