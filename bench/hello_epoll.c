/*
 * hello_epoll.c: the "ceiling" servers of the benchmark, in C.
 *
 * Not a target and not part of the gem: a minimal server that does no more
 * than the kernel work every server must do, so the report can show the
 * best req/s (accepts/s) this machine and load generator allow, measured in
 * the same run as the Ruby servers.
 *
 *   hello_epoll [--port 0] [--seconds 30] [--accept]
 *
 * Default (HTTP): one thread, level-triggered epoll; the listener is drained
 * with accept4(SOCK_NONBLOCK) until EAGAIN; a readable connection gets one
 * read(2) of up to 16 KiB; complete requests are counted by their "\r\n\r\n"
 * terminators (an incomplete tail is kept for the next read), and the same
 * fixed response as examples/hello_server.rb's is written once per request,
 * in one write(2) for all of them (what is not written at once waits for
 * EPOLLOUT). EOF or an error closes the connection. The same work per
 * request as examples/hello_select_server.rb (one read, one write, a
 * readiness wait shared by the connections ready at once), without the
 * interpreter.
 *
 * --accept: the accept benchmark's server (bench/accept_server.rb's
 * contract): a blocking accept4 loop that closes each connection at once.
 *
 * Contract shared with the Ruby servers the harness starts (bench/harness.rb):
 * 127.0.0.1 only, SO_REUSEADDR, listen backlog 1024 (HTTP) or 4096
 * (--accept); prints "listening on 127.0.0.1:PORT" when ready; stops after
 * --seconds or on SIGINT/SIGTERM; prints "stats: served=N" or "accepted=N"
 * on the way out. And bench/cpu_probe.rb's, reimplemented: with
 * BENCH_PROBE_FD set, SIGUSR1 makes it write
 *
 *   cpu_ns=<CLOCK_PROCESS_CPUTIME_ID in ns> ops=<requests served or accepts>
 *
 * to that fd; BENCH_WATCHDOG=S arms alarm(S).
 *
 * Built by the bench (gcc -O2 -Wall -Wextra, into tmp/bench/); see
 * bench/harness.rb.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BODY "Hello World\n"
static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n" BODY;
#define RESPONSE_LEN (sizeof(RESPONSE) - 1)
#define READ_MAX 16384
/* A request larger than this without its terminator closes the connection. */
#define TAIL_MAX 65536

static volatile sig_atomic_t stop_flag;
static volatile sig_atomic_t probe_flag;
static int probe_fd = -1;
static unsigned long long ops;

static void
on_stop(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void
on_usr1(int sig)
{
    (void)sig;
    probe_flag = 1;
}

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Answers a SIGUSR1 (from the main loop, not the handler: stdio). */
static void
probe_answer(void)
{
    struct timespec ts;
    char line[96];
    int len;

    probe_flag = 0;
    if (probe_fd < 0) return;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    len = snprintf(line, sizeof(line), "cpu_ns=%llu ops=%llu\n",
                   (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec, ops);
    if (write(probe_fd, line, (size_t)len) != len) perror("hello_epoll: probe write");
}

static void
install(int sig, void (*fn)(int))
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: a blocked accept4/epoll_wait returns EINTR */
    sigaction(sig, &sa, NULL);
}

static void
usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [--port 0] [--seconds 30] [--accept]\n", argv0);
    exit(2);
}

static int
listen_on(long port, int backlog, int flags)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);

    if (fd < 0) { perror("socket"); exit(1); }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) { perror("bind"); exit(1); }
    if (listen(fd, backlog) < 0) { perror("listen"); exit(1); }
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0) { perror("getsockname"); exit(1); }
    printf("listening on 127.0.0.1:%u\n", (unsigned)ntohs(sa.sin_port));
    fflush(stdout);
    return fd;
}

/* ---- --accept: a blocking accept4 loop ------------------------------------ */

static int
run_accept(long port, double deadline)
{
    int lfd = listen_on(port, 4096, 0);
    /* accept4 gives up after 100 ms with EAGAIN, so a signal that lands
     * between the flag checks and the call is seen soon anyway. */
    struct timeval tv = { 0, 100000 };

    setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (!stop_flag && monotonic() < deadline) {
        int fd;

        if (probe_flag) probe_answer();
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            close(fd);
            ops++;
        } else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED && errno != EPROTO) {
            perror("accept4");
            return 1;
        }
    }
    if (probe_flag) probe_answer();
    close(lfd);
    printf("accepted=%llu\n", ops);
    return 0;
}

/* ---- HTTP: epoll, keep-alive ---------------------------------------------- */

struct conn {
    char *tail;     /* bytes of a request not complete yet */
    size_t tail_len;
    char *out;      /* responses not written yet */
    size_t out_len, out_off;
};

static struct conn *conns;
static size_t nconns;

static struct conn *
conn_of(int fd)
{
    if ((size_t)fd >= nconns) {
        size_t n = nconns ? nconns : 1024;
        struct conn *c;

        while (n <= (size_t)fd) n *= 2;
        c = realloc(conns, n * sizeof(*c));
        if (!c) { perror("realloc"); exit(1); }
        memset(c + nconns, 0, (n - nconns) * sizeof(*c));
        conns = c;
        nconns = n;
    }
    return &conns[fd];
}

static void
conn_close(int ep, int fd)
{
    struct conn *c = conn_of(fd);

    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(c->tail);
    free(c->out);
    memset(c, 0, sizeof(*c));
}

/* Writes what is pending; 0 when all of it went, 1 when the socket is full
 * (EPOLLOUT armed), -1 on an error. */
static int
flush_out(int ep, int fd, struct conn *c)
{
    struct epoll_event ev;

    while (c->out_off < c->out_len) {
        ssize_t w = write(fd, c->out + c->out_off, c->out_len - c->out_off);

        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) return -1;
            memset(&ev, 0, sizeof(ev));
            ev.events = EPOLLOUT;
            ev.data.fd = fd;
            epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
            return 1;
        }
        c->out_off += (size_t)w;
    }
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
    return 0;
}

/* Queues n responses and writes them (one write(2) when the socket takes
 * them all, which it does for wrk's one request at a time). */
static int
respond(int ep, int fd, struct conn *c, size_t n)
{
    static char one_batch[RESPONSE_LEN * 64];
    size_t i, len = n * RESPONSE_LEN;
    ssize_t w;

    if (c->out_len == 0 && n <= 64) {
        const char *buf = RESPONSE;

        if (n > 1) {
            for (i = 0; i < n; i++) memcpy(one_batch + i * RESPONSE_LEN, RESPONSE, RESPONSE_LEN);
            buf = one_batch;
        }
        do {
            w = write(fd, buf, len);
        } while (w < 0 && errno == EINTR);
        if (w < 0 && errno != EAGAIN) return -1;
        if (w == (ssize_t)len) return 0;
        if (w < 0) w = 0;
        c->out = malloc(len - (size_t)w);
        if (!c->out) return -1;
        memcpy(c->out, buf + w, len - (size_t)w);
        c->out_len = len - (size_t)w;
        c->out_off = 0;
        return flush_out(ep, fd, c) < 0 ? -1 : 0;
    }
    /* More responses, or some still pending: append, then flush. */
    {
        char *o = realloc(c->out, c->out_len + len);

        if (!o) return -1;
        for (i = 0; i < n; i++) memcpy(o + c->out_len + i * RESPONSE_LEN, RESPONSE, RESPONSE_LEN);
        c->out = o;
        c->out_len += len;
        if (c->out_len - c->out_off == len) return flush_out(ep, fd, c) < 0 ? -1 : 0;
        return 0; /* EPOLLOUT is armed already */
    }
}

/* Counts the complete requests in tail + data[0..len) and keeps the rest. */
static long
count_requests(struct conn *c, const char *data, size_t len)
{
    const char *buf = data, *p, *end;
    char *joined = NULL;
    size_t total = len, pos = 0;
    long n = 0;

    if (c->tail_len) {
        joined = malloc(c->tail_len + len);
        if (!joined) return -1;
        memcpy(joined, c->tail, c->tail_len);
        memcpy(joined + c->tail_len, data, len);
        total = c->tail_len + len;
        buf = joined;
        free(c->tail);
        c->tail = NULL;
        c->tail_len = 0;
    }
    end = buf + total;
    while ((p = memmem(buf + pos, (size_t)(end - (buf + pos)), "\r\n\r\n", 4)) != NULL) {
        n++;
        pos = (size_t)(p - buf) + 4;
    }
    if (pos < total) {
        if (total - pos > TAIL_MAX) { free(joined); return -1; }
        c->tail = malloc(total - pos);
        if (!c->tail) { free(joined); return -1; }
        memcpy(c->tail, buf + pos, total - pos);
        c->tail_len = total - pos;
    }
    free(joined);
    return n;
}

static int
run_http(long port, double deadline)
{
    static char rbuf[READ_MAX];
    struct epoll_event ev, evs[256];
    int lfd = listen_on(port, 1024, SOCK_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC);

    if (ep < 0) { perror("epoll_create1"); return 1; }
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) { perror("epoll_ctl"); return 1; }

    while (!stop_flag && monotonic() < deadline) {
        int k, i;

        if (probe_flag) probe_answer();
        k = epoll_wait(ep, evs, (int)(sizeof(evs) / sizeof(evs[0])), 100);
        if (k < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (i = 0; i < k; i++) {
            int fd = evs[i].data.fd;
            struct conn *c;
            ssize_t r;
            long n;

            if (fd == lfd) {
                for (;;) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

                    if (cfd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED) continue;
                        break; /* EAGAIN (or EMFILE: try again on the next readiness) */
                    }
                    conn_of(cfd);
                    memset(&ev, 0, sizeof(ev));
                    ev.events = EPOLLIN;
                    ev.data.fd = cfd;
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev) < 0) close(cfd);
                }
                continue;
            }
            c = conn_of(fd);
            if (evs[i].events & EPOLLOUT) {
                int f = flush_out(ep, fd, c);

                if (f < 0) { conn_close(ep, fd); continue; }
                if (f == 0) {
                    memset(&ev, 0, sizeof(ev));
                    ev.events = EPOLLIN;
                    ev.data.fd = fd;
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
                }
                continue;
            }
            r = read(fd, rbuf, sizeof(rbuf));
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) { conn_close(ep, fd); continue; }
            n = count_requests(c, rbuf, (size_t)r);
            if (n < 0 || (n > 0 && respond(ep, fd, c, (size_t)n) < 0)) { conn_close(ep, fd); continue; }
            ops += (unsigned long long)n;
        }
    }
    if (probe_flag) probe_answer();
    for (size_t fd = 0; fd < nconns; fd++) {
        if ((int)fd != lfd && (int)fd != ep && (conns[fd].tail || conns[fd].out)) {
            free(conns[fd].tail);
            free(conns[fd].out);
        }
    }
    close(ep);
    close(lfd);
    printf("stats: served=%llu\n", ops);
    return 0;
}

int
main(int argc, char **argv)
{
    long port = 0;
    double seconds = 30.0;
    int accept_mode = 0, i;
    const char *env;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--accept")) accept_mode = 1;
        else usage(argv[0]);
    }
    if (port < 0 || port > 65535 || seconds <= 0) usage(argv[0]);
    if ((env = getenv("BENCH_PROBE_FD")) != NULL) probe_fd = atoi(env);
    if ((env = getenv("BENCH_WATCHDOG")) != NULL) alarm((unsigned)atoi(env));
    install(SIGINT, on_stop);
    install(SIGTERM, on_stop);
    install(SIGUSR1, on_usr1);
    signal(SIGPIPE, SIG_IGN);
    return accept_mode ? run_accept(port, monotonic() + seconds)
                       : run_http(port, monotonic() + seconds);
}
