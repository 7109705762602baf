/*
 * fdid.h: which open file an fd number names (fdid.c). Bottom layer,
 * Ruby-free.
 *
 * An io_uring request holds its own reference to the file its fd named
 * when it was issued. If the number is closed elsewhere the request goes
 * on, and the number may soon name another file. Comparing the identity
 * (device and inode) taken when the request was armed with what the number
 * names now tells the two apart.
 */
#ifndef HIO_FDID_H
#define HIO_FDID_H 1

#include <stdint.h>

struct hio_fdid {
    uint64_t dev, ino;
};

/* The identity of what fd names now (fstat): 0, or -errno (-EBADF: not open). */
int hio_fdid_get(int fd, struct hio_fdid *id);
/* 0 while fd still names the file id was taken from; -EBADF once it is
 * closed or names another file. */
int hio_fdid_check(int fd, const struct hio_fdid *id);
/* Whether fd names a stream socket in O_NONBLOCK mode now: what a
 * sendfile(2) may be made to without blocking the caller (a blocking
 * socket's sendfile waits for room, with the GVL held), and that splits
 * nothing a single send would not (a datagram socket's would). */
int hio_fd_is_nonblocking_stream(int fd);

#endif
