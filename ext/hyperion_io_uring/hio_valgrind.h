/*
 * hio_valgrind.h: what memcheck cannot see. The kernel writes through
 * io_uring (recv buffers, read buffers) behind valgrind's back; wait.c
 * waits differently under it. No-ops unless built with valgrind's headers
 * and run under valgrind. Bottom layer.
 */
#ifndef HIO_VALGRIND_H
#define HIO_VALGRIND_H 1

#ifdef HAVE_VALGRIND_MEMCHECK_H
#include <valgrind/memcheck.h>
#define HIO_MEM_DEFINED(p, n) VALGRIND_MAKE_MEM_DEFINED((p), (n))
#define HIO_MEM_UNDEFINED(p, n) VALGRIND_MAKE_MEM_UNDEFINED((p), (n))
#define HIO_ON_VALGRIND() RUNNING_ON_VALGRIND
#else
#define HIO_MEM_DEFINED(p, n) ((void)(p), (void)(n))
#define HIO_MEM_UNDEFINED(p, n) ((void)(p), (void)(n))
#define HIO_ON_VALGRIND() 0
#endif

#endif
