/*
 * hp_multishot.h: multishot accept and recv (hp_multishot.c): their arm
 * states and the one table of what a completion of theirs means.
 */
#ifndef HIO_HP_MULTISHOT_H
#define HIO_HP_MULTISHOT_H 1

#include "hp.h"

/* What one completion of a multishot request means. */
enum hp_ms_act {
    HP_MS_STALE,   /* of a connection the number no longer names: dropped */
    HP_MS_DELIVER, /* for Ruby as it is: data, an accepted fd, or an error the request survives */
    HP_MS_REARM,   /* a transient end (a cancel the kernel made): armed again, Ruby hears nothing */
    HP_MS_PARK,    /* recv ran out of buffers: re-armed once Ruby gives one back */
    HP_MS_END      /* the request is over; Ruby gets res */
};

struct hp_ms_verdict {
    uint8_t act;   /* enum hp_ms_act */
    uint8_t final; /* the kernel is done with the request */
    uint8_t rearm; /* HP_MS_DELIVER: arm again once delivered */
    uint8_t next;  /* the arm state after it (enum hio_arm_state) */
    int32_t res;   /* HP_MS_END: the result Ruby gets */
};

/* A CQE of a multishot accept or recv on fd: the table's verdict, carried
 * out except for HP_MS_DELIVER, which the dispatcher delivers and then
 * hands to hp_ms_delivered. */
struct hp_ms_verdict hp_ms_complete(struct hio_hotpath *h, unsigned kind, int fd, uint32_t gen, int res,
                                    unsigned flags);
/* Arms kind on fd again after a transient end (parks a recv, or reports
 * -EBUSY for an accept, when no SQE can be had). */
void hp_ms_rearm(struct hio_hotpath *h, unsigned kind, int fd);

static inline void
hp_ms_delivered(struct hio_hotpath *h, unsigned kind, int fd, struct hp_ms_verdict v)
{
    if (v.rearm) hp_ms_rearm(h, kind, fd);
}
/* Whether a CQE of a multishot request ends it (accounting in a teardown). */
int hp_ms_final(unsigned kind, int res, unsigned flags);

/* Ruby asks for a multishot request of kind on fd (entry c, claimed). */
int hp_ms_submit(struct hio_hotpath *h, unsigned kind, int fd, struct hio_conn *c);
/* Ruby cancels fd's multishot requests. */
void hp_ms_cancel(struct hio_hotpath *h, int fd, struct hio_conn *c);
/* The entry is retired: its requests are cancelled without a word to Ruby. */
void hp_ms_forget(struct hio_hotpath *h, int fd, struct hio_conn *c);
/* Buffers came back: re-arms parked recvs. */
void hp_ms_unpark(struct hio_hotpath *h);
/* Closing the ring without IORING_ASYNC_CANCEL_ANY: cancels each request. */
void hp_ms_cancel_every(struct hio_hotpath *h);
/* Looks at the listeners of armed accepts, at most every HP_MS_WATCH_EVERY
 * seconds: one closed behind the ring's back (the number closed, or naming
 * another socket now) gets its accept cancelled, which ends with an
 * OP_ACCEPT completion of -EBADF. Never blocks; an fstat per listener. */
#define HP_MS_WATCH_EVERY 0.1
void hp_ms_watch(struct hio_hotpath *h);
/* Whether an accept is armed (the waits then watch its listener). */
static inline int
hp_ms_watching(const struct hio_hotpath *h)
{
    return h->nlisteners > 0;
}
/* Frees the parked list and the listener list. */
void hp_ms_teardown(struct hio_hotpath *h);

#endif
