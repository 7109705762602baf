/*
 * setup.h: ring setup with the best flags this kernel accepts (setup.c).
 * Bottom layer.
 */
#ifndef HIO_SETUP_H
#define HIO_SETUP_H 1

#include <liburing.h>

/* io_uring_queue_init_params with the first flag set the kernel takes
 * (cq_entries > entries: IORING_SETUP_CQSIZE). 0 or -errno. */
int hio_queue_init(struct io_uring *ring, unsigned entries, unsigned cq_entries, unsigned *flags_out);
/* The flags rings of this process are set up with; -1 before the first. */
long hio_setup_flags(void);

#endif
