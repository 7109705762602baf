/*
 * errors.c: errno -> exception, argument helpers shared by the bindings,
 * and the owner (pid + OS thread) guards.
 */
#include "hyperion_io_uring.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>
#include <ruby/io.h>

/* ---- Exceptions ---- */

void
hio_raise_errno(int err, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    rb_syserr_fail(err < 0 ? -err : err, msg);
}

void
hio_raise_closed(void)
{
    rb_raise(rb_eIOError, "ring closed");
}

/* ---- Arguments ---- */

/* An Integer fd or an IO (anything answering #fileno is not accepted:
 * upstream takes fds and IOs only, and a duck-typed object could lie). */
int
hio_fd_arg(VALUE v, const char *what)
{
    if (RB_INTEGER_TYPE_P(v)) {
        long fd;
        if (!FIXNUM_P(v)) rb_raise(rb_eArgError, "%s: fd out of range", what);
        fd = FIX2LONG(v);
        if (fd < 0 || fd > INT32_MAX) rb_raise(rb_eArgError, "%s: invalid fd %ld", what, fd);
        return (int)fd;
    }
    if (RB_TYPE_P(v, T_FILE)) {
        /* Checked here rather than by GetOpenFile or rb_io_descriptor: their
         * IOError "closed stream" does not say which call got the closed IO. */
#ifdef HAVE_RB_IO_CLOSED_P
        /* Ruby 3.3 deprecates reading rb_io_t's fields. */
        if (RTEST(rb_io_closed_p(v))) rb_raise(rb_eIOError, "%s: closed stream", what);
        return rb_io_descriptor(v);
#else
        rb_io_t *fptr = RFILE(v)->fptr;
        if (!fptr || fptr->fd < 0) rb_raise(rb_eIOError, "%s: closed stream", what);
        return fptr->fd;
#endif
    }
    rb_raise(rb_eTypeError, "%s: expected an Integer fd or an IO, got %s", what, rb_obj_classname(v));
    UNREACHABLE_RETURN(-1);
}

/* nil -> -1 (wait forever); Numeric seconds >= 0 otherwise. */
double
hio_timeout_arg(VALUE t, const char *what)
{
    double d;

    if (NIL_P(t)) return -1.0;
    if (!rb_obj_is_kind_of(t, rb_cNumeric))
        rb_raise(rb_eTypeError, "%s: timeout must be Numeric or nil, got %s", what, rb_obj_classname(t));
    d = NUM2DBL(t);
    if (d != d || d < 0) rb_raise(rb_eArgError, "%s: timeout must be >= 0", what);
    if (d > 1e9) d = 1e9;
    return d;
}

/* ---- Owner guards ---- */

/* getpid() is a real syscall since glibc 2.25, and the guards run on every
 * method call: cache it, and refresh the cache in a forked child. */
static pid_t owner_pid_cache;

static void
owner_after_fork_child(void)
{
    owner_pid_cache = getpid();
}

static pid_t
owner_current_pid(void)
{
    if (!owner_pid_cache) owner_pid_cache = getpid();
    return owner_pid_cache;
}

void
hio_owner_init(struct hio_owner *o)
{
    o->pid = owner_current_pid();
    o->tid = pthread_self();
}

int
hio_owner_forked(const struct hio_owner *o)
{
    return o->pid != owner_current_pid();
}

int
hio_owner_other_thread(const struct hio_owner *o)
{
    return !pthread_equal(o->tid, pthread_self());
}

void
hio_owner_check(const struct hio_owner *o, const char *cls)
{
    if (hio_owner_forked(o))
        rb_raise(hio_eForkError,
                 "%s was created in process %d and cannot be used in forked child %d; open a new ring in the child",
                 cls, (int)o->pid, (int)owner_current_pid());
    if (hio_owner_other_thread(o))
        rb_raise(hio_eThreadError,
                 "%s belongs to the thread that created it; open one ring per thread (or per fiber)", cls);
}

void
hio_init_errors(void)
{
    owner_pid_cache = getpid();
    pthread_atfork(NULL, NULL, owner_after_fork_child);
    /* Defined in Ruby too (lib/hyperion/io_uring/errors.rb mirrors these);
     * whichever loads first creates them, with the same superclasses. */
    hio_eError = rb_define_class_under(hio_mIOUring, "Error", rb_eStandardError);
    hio_eUnsupported = rb_define_class_under(hio_mIOUring, "Unsupported", hio_eError);
    hio_eForkError = rb_define_class_under(hio_mIOUring, "ForkError", hio_eError);
    hio_eThreadError = rb_define_class_under(hio_mIOUring, "ThreadError", hio_eError);
    hio_eRingError = rb_define_class_under(hio_mIOUring, "RingError", hio_eError);
}
