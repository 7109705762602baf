/*
 * fdid.c: which open file an fd number names (see fdid.h).
 *
 * Layer: bottom. Calls libc only.
 */
#include "fdid.h"
#include <fcntl.h>
#include <sys/socket.h>
#include <errno.h>
#include <sys/stat.h>

int
hio_fdid_get(int fd, struct hio_fdid *id)
{
    struct stat st;

    if (fstat(fd, &st) < 0) return -errno;
    id->dev = (uint64_t)st.st_dev;
    id->ino = (uint64_t)st.st_ino;
    return 0;
}

int
hio_fdid_check(int fd, const struct hio_fdid *id)
{
    struct hio_fdid now;

    if (hio_fdid_get(fd, &now) < 0) return -EBADF;
    return now.dev == id->dev && now.ino == id->ino ? 0 : -EBADF;
}

int
hio_fd_is_nonblocking_stream(int fd)
{
    int type = 0, flags = fcntl(fd, F_GETFL);
    socklen_t tlen = sizeof(type);

    /* getsockopt fails with ENOTSOCK on anything but a socket. */
    return flags >= 0 && (flags & O_NONBLOCK) && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 &&
           type == SOCK_STREAM;
}
