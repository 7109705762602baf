/*
 * hp_conn.h: the hot path's per-fd entries (hp_conn.c): which connection a
 * number names (identity, generation) and the closes submit_close asked for.
 */
#ifndef HIO_HP_CONN_H
#define HIO_HP_CONN_H 1

#include "hp.h"

/* Grows the table to hold fd: its entry, or NULL without memory. */
struct hio_conn *hp_conn_grow(struct hio_hotpath *h, int fd);

/* fd's entry, the table grown to hold it; NULL for fd < 0 or without memory. */
static inline struct hio_conn *
hp_conn_get(struct hio_hotpath *h, int fd)
{
    if (fd < 0) return NULL;
    return (unsigned)fd < h->nconns ? &h->conns[fd] : hp_conn_grow(h, fd);
}
void hp_conns_teardown(struct hio_hotpath *h);

/* The socket fd names now (fstat): 0 or -errno. */
int hp_conn_identity(int fd, uint64_t *ino, uint64_t *dev);
/* Whether fd still names the socket the entry was claimed for. */
int hp_conn_same_socket(int fd, const struct hio_conn *c);
/* A new generation: completions of requests made before are stale. */
void hp_conn_new_generation(struct hio_conn *c);
/* The entry's part of a retire: the number names another connection now. */
void hp_conn_retire(struct hio_hotpath *h, int fd, struct hio_conn *c);

/* Whether submit_close still owns the number, for a claim of the socket
 * (ino, dev): -ESHUTDOWN, or 0 (a close the kernel took is forgotten). */
int hp_conn_check_closing(struct hio_hotpath *h, struct hio_conn *c, uint64_t ino, uint64_t dev);
/* For a second submit_close: -EALREADY while the first is pending, else 0. */
int hp_conn_check_close_again(struct hio_hotpath *h, struct hio_conn *c);
/* submit_close with sends queued: the close waits for them, until the
 * CLOCK_MONOTONIC time at (< 0: no deadline; else hp_conn_reserve_deadline
 * made room first). */
void hp_conn_close_after_sends(struct hio_hotpath *h, int fd, struct hio_conn *c, double at);
/* Room for one more deadline: 0 or -ENOMEM. */
int hp_conn_reserve_deadline(struct hio_hotpath *h);
/* The earliest deadline of a QUEUED close, or < 0 when none has one. */
double hp_conn_next_deadline(const struct hio_hotpath *h);
/* The fd of a QUEUED close whose deadline is at or before now (taken out
 * of the heap; the close stays QUEUED), or -1. */
int hp_conn_pop_expired(struct hio_hotpath *h, double now);
void hp_conn_close_held_back(struct hio_hotpath *h, int fd, struct hio_conn *c);

/* The fd's queued sends have all ended: the close they held back goes out
 * (inline: every send's completion asks). */
static inline void
hp_conn_sends_ended(struct hio_hotpath *h, int fd, struct hio_conn *c)
{
    if (c->closing == HIO_CLOSE_QUEUED) hp_conn_close_held_back(h, fd, c);
}
/* Closes fd through the ring (c: its entry, NULL for a number the ring
 * keeps none for), or with close(2) when no SQE can be had. */
void hp_conn_issue_close(struct hio_hotpath *h, int fd, struct hio_conn *c);
/* Forgets the closes the kernel has taken. */
void hp_conn_sweep_closes(struct hio_hotpath *h);
/* At ring close: the closes the kernel never got are made with close(2). */
void hp_conn_close_leftovers(struct hio_hotpath *h);

#endif
