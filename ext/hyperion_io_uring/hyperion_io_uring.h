/*
 * hyperion_io_uring.h: the bindings' header: the Ruby classes, errors,
 * argument helpers and wait.c's Ruby side. Only binding files include it
 * (ext.c, module.c, ring_class.c, hotpath_class.c, hotpath_buffers.c,
 * errors.c, args.c) and wait.c; engine files never do, and see no Ruby.
 *
 * Layers, each calling only the ones below it:
 *   bindings   ext.c module.c ring_class.c hotpath_class.c hotpath_buffers.c
 *              (with errors.c, args.c)
 *   engines    c_api.c hp_probe.c > hotpath.c (hp.h has its layers); ring.c;
 *              probe.c (engine.h is what the bindings see of them)
 *   below      wait.c setup.c owner.c registry.c buf_ring.c fifo.c
 */
#ifndef HYPERION_IO_URING_H
#define HYPERION_IO_URING_H 1

#include <ruby.h>
#include <ruby/thread.h>
#include "engine.h"

#ifndef HIO_LIBURING_VERSION
#define HIO_LIBURING_VERSION "unknown"
#endif

/* ---- classes (ring_class.c, hotpath_class.c) and errors (errors.c) ---- */
extern VALUE hio_cRing;
extern VALUE hio_cHotpathRing;
extern VALUE hio_eError;
extern VALUE hio_eUnsupported;
extern VALUE hio_eForkError;
extern VALUE hio_eThreadError;
extern VALUE hio_eRingError;
extern VALUE hio_eSendBufferFull;

/* ---- pins.c: Strings the kernel reads without a copy ---- */
/* Pins str (kept alive and unmoved) under a token for the engine. */
uint64_t hio_pin(VALUE str);
/* Plain C, no Ruby API (owner.c's unpin hook). */
void hio_unpin(uint64_t token);
uint64_t hio_repin(uint64_t token);
long hio_pins_live(void);
void hio_init_pins(void);

/* ---- errors.c ---- */
NORETURN(void hio_raise_errno(int err, const char *fmt, ...));
NORETURN(void hio_raise_closed(void));
/* Raises ForkError / ThreadError for owner.c's verdict v on a ring of
 * class cls owned by o. */
NORETURN(void hio_raise_owner(const struct hio_owner *o, enum hio_owner_verdict v, const char *cls));
/* Whether the owner's Ruby Thread (the binding records it) has ended, so a
 * #close from another thread may go on. */
int hio_owner_thread_ended(VALUE owner_thread);
/* Raises Unsupported unless IOUring.<probe> is true (reason_method says why). */
void hio_require_supported(const char *what, const char *probe, const char *reason_method);
void hio_init_errors(VALUE mIOUring);

/* ---- args.c: argument helpers of the bindings ---- */
int hio_fd_arg(VALUE io_or_fd, const char *what);
int hio_io_closed(VALUE io);
double hio_timeout_arg(VALUE timeout, const char *what);
double hio_timeout_ms_arg(VALUE timeout_ms);
unsigned hio_depth_arg(VALUE v, const char *what);
unsigned hio_uint_arg(VALUE v, const char *what, unsigned lo, unsigned hi, int pow2);
struct iovec;
const struct iovec *hio_iov_arg(VALUE ptr, VALUE count, const char *what, unsigned *iovcnt);

/* ---- wait.c: the bindings' side (the engines' side is wait.h) ---- */
/*
 * Runs a wait an engine described, for a Ruby method: without the GVL,
 * through the Fiber scheduler when the calling fiber has one (its eventfd
 * IO cached in *sched_io, which the binding marks). May raise (interrupts)
 * once the engine has reaped what completed; w->end (if any) runs first.
 * Returns w->err: 0 or -errno.
 */
int hio_wait_ruby(struct hio_wait *w, VALUE *sched_io);
/* Closes the eventfd IO of *sched_io (if any) and clears the slot. */
void hio_sched_io_close(VALUE *sched_io);

/* ---- the bindings' Init functions and shared lookups ---- */
void hio_init_module(VALUE mIOUring);
void hio_init_ring_class(VALUE mIOUring);
void hio_init_hotpath_class(VALUE mIOUring);
void hio_init_hotpath_buffers(VALUE cHotpathRing);

#endif
