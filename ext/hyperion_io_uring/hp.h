/*
 * hp.h: the hot path's state (HotpathRing's engine), private to its files.
 *
 * Types only: including it calls nothing. Each group of fields names the
 * file that owns it, which is the only one that writes it. The layers, each
 * calling only the ones below it (hp_probe.c and c_api.c sit on top):
 *
 *   hotpath.c                      open, claim/retire, reap, dispatch, submit, close
 *   hp_send.c   hp_multishot.c     sends in order per fd; the multishot table
 *   hp_conn.c                      per-fd entries: identity, generation, pending closes
 *   hp_queue.c  hp_slots.c         SQEs, user_data, Ruby's completion queue; send slots
 *   buf_ring.c fifo.c setup.c owner.c registry.c wait.c (below both engines)
 *
 * The bindings see none of it: engine.h is their view of the engine.
 */
#ifndef HIO_HP_H
#define HIO_HP_H 1

#include "engine.h"
#include "buf_ring.h"
#include "fifo.h"
#include "owner.h"

#define HP_BGID 0
/* Freed payload mappings hp_slots.c keeps for reuse, at most (and at most
 * HP_MAP_CACHE_BYTES of them). */
#define HP_MAP_CACHE 32
/* Size classes of the slab for smaller payloads: 64 B << 0..9, up to
 * 32 KiB (hp_slots.c). */
#define HP_SLAB_CLASSES 10
#define HP_GEN_MASK 0xffffffu
/* Bodies hp_bodies.c keeps a memfd copy of, at most. */
#define HP_BODIES 16

/* A multishot request's state (hp_multishot.c). ORPHANED: an accept whose
 * listener was closed behind the ring's back, cancelled by the ring. */
enum hio_arm_state { HIO_ARM_NONE = 0, HIO_ARM_ARMED, HIO_ARM_PARKED, HIO_ARM_CANCELLING, HIO_ARM_ORPHANED };

/* submit_close: QUEUED waits for the fd's queued sends to end; ISSUED has
 * its IORING_OP_CLOSE in the SQ, not yet taken by the kernel (the number is
 * still this connection's until then). */
enum hio_close_state { HIO_CLOSE_NONE = 0, HIO_CLOSE_QUEUED, HIO_CLOSE_ISSUED };

/* Per fd number. gen changes whenever the number starts naming another
 * connection, so late completions of the previous one are dropped.
 *
 * One per fd up to the highest the ring has seen, so every idle connection
 * costs this much resident memory: the fields are ordered by size (no
 * padding, 48 bytes, not the 56 of the fields grouped by owner), each
 * marked with the file that owns it. */
struct hio_conn {
    uint64_t ino, dev;  /* hp_conn.c: identity of the socket claimed for the number; 0: none */
    uint64_t send_bytes; /* hp_send.c: bytes of the copies queued on the fd */
    uint32_t gen;       /* hp_conn.c */
    uint32_t close_pos; /* hp_conn.c: ISSUED: SQ position of the close SQE */
    uint32_t close_dl;  /* hp_conn.c: QUEUED with a deadline: 1 + its index in h->close_dls, else 0 */
    int32_t send_head, send_tail; /* hp_send.c: queue of send slots, -1: empty */
    uint8_t closing;    /* hp_conn.c: enum hio_close_state */
    uint8_t recv;       /* hp_multishot.c: enum hio_arm_state */
    uint8_t accept;     /* hp_multishot.c: enum hio_arm_state */
};

/* A close SQE the kernel may not have taken yet (hp_conn.c, in SQ order). */
struct hio_close_pending {
    int fd;
    uint32_t pos;
};

/* submit_close's deadline for a QUEUED close (hp_conn.c's min-heap). */
struct hio_close_dl {
    double at; /* CLOCK_MONOTONIC seconds */
    int fd;
};

/* A send slot (hp_slots.c holds them; hp_send.c queues and runs them). */
struct hio_send {
    int fd;
    uint32_t gen;
    char *data;       /* ring-owned copy of the payload */
    size_t map;       /* 0: data is a slab chunk (class cls); else the size of data's own mapping */
    uint64_t token;   /* borrowed: the binding's pin of the memory data points into */
    uint8_t cls;
    uint8_t borrowed; /* data is the caller's (pinned under token), not a copy */
    uint8_t zc;       /* sent with IORING_OP_SEND_ZC (hp_send.c) */
    uint8_t notifs;   /* SEND_ZC notifications still due: the kernel may read data until then */
    uint8_t ended;    /* the send has ended and left its fd's queue; freed at its last notification */
    size_t len, off;
    int32_t next;     /* next in the fd's queue, or in the free list */
    uint8_t inflight; /* the kernel holds a send SQE of it (a sendfile slot: its POLLOUT poll) */
    uint8_t cancelled;
    int32_t body;     /* sent with sendfile(2) from this hp_bodies.c entry's memfd; -1: not */
};

/* A sealed memfd copy of a pinned frozen String (hp_bodies.c). */
struct hio_body {
    const char *ptr;  /* the String's bytes: with len, what identifies it */
    size_t len;
    uint64_t token;   /* the entry's own pin of the String; keeps ptr its bytes */
    uint64_t used;    /* h->body_tick of its last send (least recently used goes first) */
    int fd;           /* the memfd (an entry with len 0 is free) */
    unsigned refs;    /* send slots sending from it */
};

#define HIO_HOTPATH_MAGIC 0x48494f55u /* "HIOU" */

struct hio_hotpath {
    /* hotpath.c */
    uint32_t magic;              /* HIO_HOTPATH_MAGIC while open (C entry point) */
    struct io_uring uring;
    int inited, closed, healthy, closing;
    int cancel_fallback;         /* 1: IORING_ASYNC_CANCEL_ANY failed, cancel one by one; 2: done */
    int batch_wait;              /* each_completion(min_wait_us:) makes kernel batch waits */
    unsigned flags;              /* setup flags in force */
    struct hio_owner owner;
    char err[160];               /* which step of open failed */
    double close_timeout;        /* submit_close's default deadline: seconds, < 0 none */
    /* hp_queue.c */
    long inflight;               /* requests whose final CQE is still due */
    struct hio_fifo done;        /* struct hio_completion: reaped, not yet yielded */
    struct hio_fifo cancels_owed; /* uint64_t targets: cancels no SQE could be had for (hp_queue.c) */
    /* hp_slots.c */
    struct hio_send *sends;
    unsigned nsends;
    int32_t send_free;
    uint64_t send_held;          /* bytes of payload copies held (queued, in flight, orphaned) */
    struct hio_map { void *p; size_t size; } map_cache[HP_MAP_CACHE]; /* freed mappings kept for reuse */
    unsigned map_cached;
    size_t map_cached_bytes;
    void *slab[HP_SLAB_CLASSES]; /* free chunks per size class, linked through their first word */
    size_t slab_cached_bytes;
    /* hp_send.c (the limits: hotpath.c, before the first send) */
    uint64_t send_limit, conn_send_limit; /* send_buffer_limit, connection_send_limit */
    int send_failures_only;               /* send_completions: :failures (hotpath.c sets it) */
    size_t zc_min;                        /* zero_copy_min: borrowed sends this big use SEND_ZC; 0: never */
    unsigned zc_flags;                    /* SEND_ZC's zc_flags (IORING_SEND_ZC_REPORT_USAGE, or 0) */
    int zc_ok;                            /* this kernel has IORING_OP_SEND_ZC (hotpath.c probes) */
    struct hio_send_refusal refused;      /* the last send refused with -ENOBUFS */
    size_t file_min;                      /* sendfile_min: borrowed sends this big use sendfile(2); 0: never */
    /* hp_bodies.c */
    struct hio_body bodies[HP_BODIES];
    uint64_t body_bytes;         /* bytes in the memfds of the entries */
    uint64_t body_tick;
    /* hp_conn.c */
    struct hio_conn *conns;
    unsigned nconns;             /* entries set up: fds 0..nconns-1 */
    unsigned conns_cap;          /* entries allocated (the rest untouched, so not resident) */
    struct hio_fifo closes;      /* struct hio_close_pending: ISSUED closes, until the kernel takes them */
    struct hio_close_dl *close_dls; /* min-heap by at: deadlines of QUEUED closes */
    unsigned nclose_dls, close_dls_cap;
    int close_skip;              /* closes use IOSQE_CQE_SKIP_SUCCESS (IORING_FEAT_CQE_SKIP) */
    /* hp_multishot.c */
    struct hio_fifo parked;      /* int: fds whose recv ended with ENOBUFS */
    int *listeners;              /* fds with an accept armed once (pruned when it ends) */
    unsigned nlisteners, cap_listeners;
    double watch_next;           /* hio_now_coarse() of the next look at them */
    /* buf_ring.c */
    struct hio_bufring bufs;
    /* every file counts what its concern does */
    struct hio_stats st;
};

#endif
