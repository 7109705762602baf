/*
 * conn_client.c: the load generator of the connections and bodies
 * benchmarks (bench/workloads/conns.rb, bench/workloads/bodies.rb).
 *
 * Holds N keep-alive HTTP/1.1 connections to a loopback server, of which A
 * have a request in flight at any time: when a response is complete, the
 * next request goes out on the next idle connection in round-robin order,
 * so the active A rotate through all N (with N = 10,000 and A = 500, a
 * rotating 5% are active) and every request lands on a connection that sat
 * idle since its last one. One thread, level-triggered epoll: the client
 * costs one CPU and no context switches of its own.
 *
 *   conn_client -p PORT [-h 127.0.0.1] [-n 10000] [-a 500] [-d 5] [-b BYTES] [-g] [-t 120]
 *
 *   -n N      connections held (the hard RLIMIT_NOFILE bounds it: the soft
 *             limit is raised to the hard one)
 *   -a A      requests in flight (at most N)
 *   -d S      seconds of timed load
 *   -b BYTES  the body each response must carry: BYTES of "a".."z"
 *             repeated (the servers' --body-size); default "Hello World\n"
 *   -g        gate: after the setup, print the "ready" line and wait for a
 *             line on stdin before the timed load, and after the "result"
 *             line wait for stdin to close before closing the connections
 *             (the harness reads the server's RSS and CPU in between)
 *   -t T      give up (exit 1) after T seconds in all
 *
 * Setup: connects the N (at most 256 handshakes at once, so the listen
 * backlog never overflows) and sends one request on each as soon as it is
 * connected; when all N are answered it prints
 *
 *   ready connections=N seconds=S
 *
 * Timed load: A in flight for S seconds, then no new requests; the ones in
 * flight are waited for. Prints
 *
 *   result requests=R errors=E seconds=S rate=R p50_us=X p99_us=Y body_bytes=B
 *
 * (seconds from the start of the load to the last response; latency from a
 * request's write to its response's last byte). Every response is checked:
 * status 200, Content-Length equal to the expected body's, and every body
 * byte compared with the expected body (memcmp as it arrives); a mismatch,
 * a short or extra byte, or a closed connection is an error. Exits 0 when
 * there was none and every request was answered in time, 1 otherwise.
 * Connections are closed with SO_LINGER 0 (an RST: no TIME_WAIT sockets
 * left to collide with the next run). 127.0.0.1 only.
 *
 * Built by the bench (gcc -O2 -Wall -Wextra, into tmp/bench/).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HDR_MAX 512
#define CONNECTS_AT_ONCE 256

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
#define REQUEST_LEN (sizeof(REQUEST) - 1)

enum state { ST_NONE = 0, ST_CONNECTING, ST_IDLE, ST_WAIT };

struct conn {
    int fd;
    unsigned char state;
    unsigned short hdr_len;  /* header bytes so far (0 once the body started) */
    int in_body;
    size_t body_got;
    double sent;             /* when the request went out */
    char *hdr;               /* HDR_MAX bytes, allocated at connect */
};

static struct conn *conns;
static long n_conns = 10000, active = 500;
static char *expected;       /* the expected body */
static size_t expected_len;
static int ep;
static struct sockaddr_in sa;
static long errors, answered, in_flight;
static unsigned long long body_bytes;
static double *lat;          /* latencies of the timed load, seconds */
static size_t n_lat, cap_lat;
static int timed;            /* 1 during the timed load: record latencies */

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
usage(const char *argv0)
{
    fprintf(stderr, "usage: %s -p PORT [-h 127.0.0.1] [-n 10000] [-a 500] [-d 5] [-b BYTES] [-g] [-t 120]\n", argv0);
    exit(2);
}

static void
fail_conn(struct conn *c, const char *why)
{
    struct linger lg = { 1, 0 };

    if (errors < 5) fprintf(stderr, "conn_client: fd %d: %s\n", c->fd, why);
    errors++;
    if (c->state == ST_WAIT || c->state == ST_CONNECTING) in_flight--;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(c->fd);
    c->fd = -1;
    c->state = ST_NONE;
}

static int
start_connect(long i)
{
    struct conn *c = &conns[i];
    struct epoll_event ev;
    int one = 1;

    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    if (!c->hdr && !(c->hdr = malloc(HDR_MAX))) return -1;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLOUT;
    ev.data.u64 = (uint64_t)i;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->state = ST_CONNECTING;
    in_flight++;
    return 0;
}

/* Sends one request on an idle (or just connected) connection. */
static void
send_request(struct conn *c)
{
    ssize_t w = write(c->fd, REQUEST, REQUEST_LEN);

    if (c->state != ST_CONNECTING) in_flight++;
    c->state = ST_WAIT;
    if (w != (ssize_t)REQUEST_LEN) { fail_conn(c, "short or failed request write"); return; }
    c->hdr_len = 0;
    c->in_body = 0;
    c->body_got = 0;
    c->sent = now();
}

static void
record(double t)
{
    if (n_lat == cap_lat) {
        size_t cap = cap_lat ? cap_lat * 2 : 65536;
        double *l = realloc(lat, cap * sizeof(*l));

        if (!l) { perror("realloc"); exit(1); }
        lat = l;
        cap_lat = cap;
    }
    lat[n_lat++] = t;
}

/* The header is complete (hdr[0..len) ends with \r\n\r\n): 0 if it is a 200
 * with the expected Content-Length. */
static int
check_header(const char *hdr, size_t len)
{
    const char *p;
    char tmp[HDR_MAX + 1];

    memcpy(tmp, hdr, len);
    tmp[len] = '\0';
    if (strncmp(tmp, "HTTP/1.1 200 ", 13) != 0) return -1;
    p = strcasestr(tmp, "\r\nContent-Length:");
    if (!p) return -1;
    return strtoull(p + 17, NULL, 10) == expected_len ? 0 : -1;
}

/* Feeds received bytes to c's response; 1 when it is complete. */
static int
feed(struct conn *c, const char *p, size_t n)
{
    if (!c->in_body) {
        size_t take = n < (size_t)(HDR_MAX - c->hdr_len) ? n : (size_t)(HDR_MAX - c->hdr_len);
        char *end;

        memcpy(c->hdr + c->hdr_len, p, take);
        end = memmem(c->hdr, c->hdr_len + take, "\r\n\r\n", 4);
        if (!end) {
            c->hdr_len += (unsigned short)take;
            if (c->hdr_len >= HDR_MAX) { fail_conn(c, "header too long"); return -1; }
            return 0;
        }
        {
            size_t hl = (size_t)(end - c->hdr) + 4, used = hl - c->hdr_len;

            if (check_header(c->hdr, hl) < 0) { fail_conn(c, "bad status or Content-Length"); return -1; }
            c->in_body = 1;
            p += used;
            n -= used;
        }
    }
    if (c->body_got + n > expected_len) { fail_conn(c, "more bytes than the response"); return -1; }
    if (memcmp(p, expected + c->body_got, n) != 0) { fail_conn(c, "body mismatch"); return -1; }
    c->body_got += n;
    body_bytes += n;
    return c->body_got == expected_len;
}

/* The next idle connection after the last one used, round robin. */
static long next_idx;

static void
send_next(void)
{
    long k;

    for (k = 0; k < n_conns; k++) {
        long i = (next_idx + k) % n_conns;

        if (conns[i].state == ST_IDLE) {
            next_idx = (i + 1) % n_conns;
            send_request(&conns[i]);
            return;
        }
    }
}

/* One epoll pass. keep_load: replace each finished request by a new one. */
static void
pass(int keep_load, int timeout_ms)
{
    static char buf[1 << 16];
    struct epoll_event evs[512];
    int k = epoll_wait(ep, evs, (int)(sizeof(evs) / sizeof(evs[0])), timeout_ms), j;

    if (k < 0) {
        if (errno == EINTR) return;
        perror("epoll_wait");
        exit(1);
    }
    for (j = 0; j < k; j++) {
        struct conn *c = &conns[evs[j].data.u64];
        ssize_t r;
        int done;

        if (c->fd < 0) continue;
        if (c->state == ST_CONNECTING) {
            struct epoll_event ev;
            int err = 0;
            socklen_t el = sizeof(err);

            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err) { fail_conn(c, strerror(err)); continue; }
            memset(&ev, 0, sizeof(ev));
            ev.events = EPOLLIN;
            ev.data.u64 = evs[j].data.u64;
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            send_request(c); /* the setup's one request */
            continue;
        }
        r = read(c->fd, buf, sizeof(buf));
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r <= 0) { fail_conn(c, r == 0 ? "closed by the server" : strerror(errno)); continue; }
        if (c->state != ST_WAIT) { fail_conn(c, "bytes with no request in flight"); continue; }
        done = feed(c, buf, (size_t)r);
        if (done <= 0) continue;
        if (timed) record(now() - c->sent);
        c->state = ST_IDLE;
        in_flight--;
        answered++;
        if (keep_load) send_next();
    }
}

static void
wait_stdin(void)
{
    char line[64];

    if (!fgets(line, sizeof(line), stdin)) return;
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int
main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    long port = -1, body = -1, i, started = 0, requests;
    double seconds = 5.0, limit = 120.0, t0, t_go, t_end, t_last;
    int opt, gate = 0, rc = 0;
    struct rlimit rl;

    while ((opt = getopt(argc, argv, "h:p:n:a:d:b:gt:")) != -1) {
        switch (opt) {
          case 'h': host = optarg; break;
          case 'p': port = strtol(optarg, NULL, 10); break;
          case 'n': n_conns = strtol(optarg, NULL, 10); break;
          case 'a': active = strtol(optarg, NULL, 10); break;
          case 'd': seconds = strtod(optarg, NULL); break;
          case 'b': body = strtol(optarg, NULL, 10); break;
          case 'g': gate = 1; break;
          case 't': limit = strtod(optarg, NULL); break;
          default: usage(argv[0]);
        }
    }
    if (port <= 0 || port > 65535 || n_conns <= 0 || active <= 0 || seconds <= 0 || limit <= 0) usage(argv[0]);
    if (active > n_conns) active = n_conns;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) usage(argv[0]);

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && (rlim_t)n_conns + 16 > rl.rlim_cur) {
        fprintf(stderr, "conn_client: %ld connections need more fds than RLIMIT_NOFILE (%llu)\n", n_conns,
                (unsigned long long)rl.rlim_cur);
        return 2;
    }

    if (body < 0) {
        expected = strdup("Hello World\n");
        expected_len = strlen(expected);
    } else {
        expected_len = (size_t)body;
        expected = malloc(expected_len + 1);
        if (!expected) { perror("malloc"); return 1; }
        for (size_t k = 0; k < expected_len; k++) expected[k] = (char)('a' + k % 26);
    }
    conns = calloc((size_t)n_conns, sizeof(*conns));
    if (!conns) { perror("calloc"); return 1; }
    for (i = 0; i < n_conns; i++) conns[i].fd = -1;
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) { perror("epoll_create1"); return 1; }

    /* Setup: N connections, each answered once. */
    t0 = now();
    while (answered + errors < n_conns) {
        while (started < n_conns && in_flight < CONNECTS_AT_ONCE) {
            if (start_connect(started) < 0) {
                perror("conn_client: socket/connect");
                return 1;
            }
            started++;
        }
        if (now() - t0 > limit) { fprintf(stderr, "conn_client: setup not done after %.0f s\n", limit); return 1; }
        pass(0, 100);
    }
    if (errors) { fprintf(stderr, "conn_client: %ld connection(s) failed in the setup\n", errors); return 1; }
    printf("ready connections=%ld seconds=%.3f\n", n_conns, now() - t0);
    fflush(stdout);
    if (gate) wait_stdin();

    /* Timed load: A in flight, rotating. */
    answered = 0;
    body_bytes = 0;
    timed = 1;
    t_go = t_last = now();
    for (i = 0; i < active; i++) send_next();
    t_end = t_go + seconds;
    while (now() < t_end && errors == 0) {
        long before = answered;
        pass(1, 100);
        if (answered != before) t_last = now();
        if (now() - t0 > limit) break;
    }
    /* No new requests; wait (at most 10 s) for the ones in flight. */
    while (in_flight > 0 && now() < t_end + 10.0 && now() - t0 <= limit) {
        long before = answered;
        pass(0, 100);
        if (answered != before) t_last = now();
    }
    if (in_flight > 0) {
        fprintf(stderr, "conn_client: %ld request(s) unanswered\n", in_flight);
        rc = 1;
    }
    if (errors) rc = 1;
    requests = answered;
    qsort(lat, n_lat, sizeof(*lat), cmp_double);
    printf("result requests=%ld errors=%ld seconds=%.6f rate=%.1f p50_us=%.1f p99_us=%.1f body_bytes=%llu\n",
           requests, errors, t_last - t_go, t_last > t_go ? (double)requests / (t_last - t_go) : 0.0,
           n_lat ? lat[n_lat / 2] * 1e6 : 0.0, n_lat ? lat[(size_t)((double)n_lat * 0.99)] * 1e6 : 0.0,
           body_bytes);
    fflush(stdout);
    if (gate) wait_stdin();
    for (i = 0; i < n_conns; i++) {
        if (conns[i].fd >= 0) {
            struct linger lg = { 1, 0 };

            setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            close(conns[i].fd);
        }
        free(conns[i].hdr);
    }
    free(conns);
    free(lat);
    free(expected);
    close(ep);
    return rc;
}
