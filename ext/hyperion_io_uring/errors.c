/*
 * errors.c: errno -> exception, the gem's error classes, and the checks
 * the bindings raise from (owner verdicts, Unsupported).
 *
 * Layer: bindings. Calls Ruby's C API and owner.c.
 */
#include "hyperion_io_uring.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

VALUE hio_eError;
VALUE hio_eUnsupported;
VALUE hio_eForkError;
VALUE hio_eThreadError;
VALUE hio_eRingError;
VALUE hio_eSendBufferFull;

/* Hyperion::IOUring, whose policy methods hio_require_supported asks. */
static VALUE errors_mIOUring;

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

    if (!rb_respond_to(errors_mIOUring, pid)) return;
    if (RTEST(rb_funcall(errors_mIOUring, pid, 0))) return;
    reason = rb_funcall(errors_mIOUring, rb_intern(reason_method), 0);
    rb_raise(hio_eUnsupported, "%s not supported on this host: %"PRIsVALUE, what,
             NIL_P(reason) ? rb_str_new_cstr("unknown reason") : reason);
}

/* The owner rules are owner.c's; this only turns its verdict into the
 * exception. */
void
hio_raise_owner(const struct hio_owner *o, enum hio_owner_verdict v, const char *cls)
{
    char msg[256];

    hio_owner_explain(o, v, cls, msg, sizeof(msg));
    rb_raise(v == HIO_OWNER_FORKED ? hio_eForkError : hio_eThreadError, "%s", msg);
}

/* Whether a #close refused with HIO_OWNER_OTHER_THREAD may go on: the
 * owner's Ruby Thread (recorded by the binding) has ended. Its native
 * thread may live on in Ruby's thread cache (Ruby <= 3.2), where owner.c
 * still sees the task; that task runs no call on the ring (the Thread
 * ended), and the engines' close only releases what it can no longer
 * touch. */
int
hio_owner_thread_ended(VALUE owner_thread)
{
    static ID id_alive;

    if (!RTEST(owner_thread)) return 0;
    if (!id_alive) id_alive = rb_intern("alive?");
    return !RTEST(rb_funcall(owner_thread, id_alive, 0));
}

void
hio_init_errors(VALUE mIOUring)
{
    errors_mIOUring = mIOUring;
    rb_gc_register_address(&errors_mIOUring);
    /* lib/hyperion/io_uring.rb defines them too, before it loads the
     * extension; whichever comes first creates them, with the same
     * superclasses. */
    hio_eError = rb_define_class_under(mIOUring, "Error", rb_eStandardError);
    hio_eUnsupported = rb_define_class_under(mIOUring, "Unsupported", hio_eError);
    hio_eForkError = rb_define_class_under(mIOUring, "ForkError", hio_eError);
    hio_eThreadError = rb_define_class_under(mIOUring, "ThreadError", hio_eError);
    hio_eRingError = rb_define_class_under(mIOUring, "RingError", hio_eError);
    hio_eSendBufferFull = rb_define_class_under(mIOUring, "SendBufferFull", hio_eError);
}
