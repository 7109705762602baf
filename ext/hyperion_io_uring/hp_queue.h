/*
 * hp_queue.h: the hot path's SQE and completion-queue primitives and its
 * user_data encoding (hp_queue.c). Bottom layer of the hot path.
 */
#ifndef HIO_HP_QUEUE_H
#define HIO_HP_QUEUE_H 1

#include "hp.h"

/* user_data: kind (8 bits) | generation (24 bits) | fd or send slot (32 bits). */
static inline uint64_t
hp_ud(unsigned kind, uint32_t gen, uint32_t idx)
{
    return ((uint64_t)kind << 56) | ((uint64_t)(gen & HP_GEN_MASK) << 32) | idx;
}
static inline unsigned hp_ud_kind(uint64_t ud) { return (unsigned)(ud >> 56); }
static inline uint32_t hp_ud_gen(uint64_t ud) { return (uint32_t)(ud >> 32) & HP_GEN_MASK; }
static inline uint32_t hp_ud_idx(uint64_t ud) { return (uint32_t)ud; }

/* An SQE, or NULL when the SQ is full and the kernel refuses to take it. */
struct io_uring_sqe *hp_sqe(struct hio_hotpath *h);
/* Queues a cancel of the request with user_data target: 0, or -ENOMEM
 * (the ring is then unhealthy). Without an SQE the cancel is owed and
 * issued by the next hp_cancels_retry, which each reap calls. */
int hp_prep_cancel(struct hio_hotpath *h, uint64_t target);
void hp_cancels_retry(struct hio_hotpath *h);
/* The free-running SQ position of the SQE hp_sqe handed out last. */
uint32_t hp_sq_last(const struct hio_hotpath *h);
/* Whether the kernel has taken the SQE at SQ position pos. */
int hp_sq_taken(const struct hio_hotpath *h, uint32_t pos);
/* Queues a completion for Ruby (inline: every CQE goes through it). */
static inline void
hp_push(struct hio_hotpath *h, int op, int fd, int64_t res, int32_t bid, uint32_t flags)
{
    struct hio_completion *c = hio_fifo_push(&h->done, sizeof(*c), 64);

    if (!c) { h->healthy = 0; return; }
    c->op_kind = op;
    c->fd = fd;
    c->result = res;
    c->buf_id = bid;
    c->flags = flags;
}
/* Frees Ruby's completion queue. */
void hp_queue_teardown(struct hio_hotpath *h);

#endif
