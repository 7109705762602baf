/*
 * hp_send.h: sends in order per fd (hp_send.c).
 */
#ifndef HIO_HP_SEND_H
#define HIO_HP_SEND_H 1

#include "hp.h"

struct iovec;

/* Whether sends are queued on the entry (one of them may be in flight). */
static inline int
hp_send_pending(const struct hio_conn *c)
{
    return c->send_head >= 0;
}

/* Queues a send of the iovecs' len bytes on fd (entry c, claimed); -ENOBUFS
 * (h->refused says why) when the copy would pass send_limit or
 * conn_send_limit. */
int hp_send_submit(struct hio_hotpath *h, int fd, struct hio_conn *c, const struct iovec *iov, unsigned iovcnt,
                   size_t len);
/* The same for len (> 0) bytes of the caller's memory, pinned under token:
 * no copy. The engine owns the token from here on: unpinned at the send's
 * end, or at once on -errno. */
int hp_send_submit_borrowed(struct hio_hotpath *h, int fd, struct hio_conn *c, const void *data, size_t len,
                            uint64_t token);
/* The CQE of a send (user_data's slot and generation; flags: F_MORE when a
 * SEND_ZC notification follows). */
void hp_send_complete(struct hio_hotpath *h, int32_t slot, uint32_t gen, int res, unsigned flags);
/* A SEND_ZC notification (IORING_CQE_F_NOTIF): the kernel no longer reads
 * the slot's memory. */
void hp_send_notif(struct hio_hotpath *h, int32_t slot, int res);
/* Ruby (or a submit_close deadline) cancels fd's sends: 0, or -EBUSY when
 * no SQE could be had for the cancel (the in-flight send is marked, so its
 * end fails it). */
int hp_send_cancel(struct hio_hotpath *h, int fd, struct hio_conn *c);
/* The entry is retired: its sends are cancelled or reported, and forgotten. */
void hp_send_forget(struct hio_hotpath *h, int fd, struct hio_conn *c);
/* Closing the ring without IORING_ASYNC_CANCEL_ANY: cancels each send in flight. */
void hp_send_cancel_every(struct hio_hotpath *h);

#endif
