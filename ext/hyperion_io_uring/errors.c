/*
 * errors.c: errno -> exception, the gem's error classes, the Unsupported
 * check of the bindings, and the owner (pid + OS thread) guards.
 */
#include "hyperion_io_uring.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

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

/* Raises Unsupported (with the reason) when the policy layer says the host
 * cannot do what (probe: its predicate, reason: the method that says why);
 * lib/hyperion/io_uring.rb defines them before it loads the extension. */
void
hio_require_supported(const char *what, const char *probe, const char *reason_method)
{
    ID pid = rb_intern(probe);
    VALUE reason;

    if (!rb_respond_to(hio_mIOUring, pid)) return;
    if (RTEST(rb_funcall(hio_mIOUring, pid, 0))) return;
    reason = rb_funcall(hio_mIOUring, rb_intern(reason_method), 0);
    rb_raise(hio_eUnsupported, "%s not supported on this host: %"PRIsVALUE, what,
             NIL_P(reason) ? rb_str_new_cstr("unknown reason") : reason);
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
