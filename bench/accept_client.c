/*
 * accept_client.c: the load generator of the accept benchmark.
 *
 * Opens and closes N loopback TCP connections as fast as it can, keeping
 * CONC of them in flight (non-blocking connects on one epoll; one thread,
 * so the client costs one CPU and no context switches of its own).
 *
 * A connection counts once the server has accepted and closed it: the client
 * waits for the server's FIN (read() == 0), then closes with SO_LINGER 0.
 * Waiting for the server bounds the connections not yet accepted to CONC,
 * so the listen backlog never overflows (an overflowed backlog drops the SYN
 * and the kernel retries it a second later, which would measure the retry
 * timer, not the server). The RST of the lingerless close frees both ends at
 * once: a bench that opens 100,000s of connections leaves no TIME_WAIT
 * sockets behind to collide with later runs.
 *
 *   accept_client -p PORT [-h 127.0.0.1] [-n 20000] [-c 64] [-t 60]
 *
 * Prints one line, "connections=N errors=E seconds=S rate=R end=T", and
 * exits 0 when all N completed within the time limit (-t seconds), 1
 * otherwise. T is CLOCK_MONOTONIC (system-wide) when the last connection
 * completed: the harness's burst load compares it with the moment it let a
 * stopped server go on.
 * Built by the bench (gcc -O2); see bench/bench.rake.
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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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
    fprintf(stderr, "usage: %s -p PORT [-h 127.0.0.1] [-n 20000] [-c 64] [-t 60]\n", argv0);
    exit(2);
}

/* Starts one non-blocking connect and registers it; -1 on a local error. */
static int
start_one(int ep, const struct sockaddr_in *sa)
{
    struct epoll_event ev;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) return -1;
    if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    memset(&ev, 0, sizeof(ev));
    /* Readable (the server's FIN or data), or an error/hang-up. */
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        return -1;
    }
    return 0;
}

/* The server closed (or reset) the connection: close ours without linger.
 * Returns 1 for a clean EOF, 0 for an error (refused, reset, ...). */
static int
finish_one(int ep, int fd)
{
    struct linger lg = { 1, 0 };
    char b[64];
    ssize_t n;
    int ok;

    n = read(fd, b, sizeof(b));
    ok = n == 0;
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return -1; /* spurious: keep waiting */
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
    return ok;
}

int
main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    long n = 20000, conc = 64, port = -1, started = 0, done = 0, errors = 0, inflight = 0;
    double limit = 60.0, t0, elapsed, last = 0.0;
    struct sockaddr_in sa;
    struct epoll_event evs[256];
    int opt, ep;

    while ((opt = getopt(argc, argv, "h:p:n:c:t:")) != -1) {
        switch (opt) {
          case 'h': host = optarg; break;
          case 'p': port = strtol(optarg, NULL, 10); break;
          case 'n': n = strtol(optarg, NULL, 10); break;
          case 'c': conc = strtol(optarg, NULL, 10); break;
          case 't': limit = strtod(optarg, NULL); break;
          default: usage(argv[0]);
        }
    }
    if (port <= 0 || port > 65535 || n <= 0 || conc <= 0 || limit <= 0) usage(argv[0]);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) usage(argv[0]);
    if (conc > n) conc = n;

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) { perror("epoll_create1"); return 1; }

    t0 = now();
    while (done + errors < n) {
        int k, i;

        while (inflight < conc && started < n) {
            if (start_one(ep, &sa) < 0) {
                errors++;
                if (errno == EMFILE || errno == ENFILE || errno == EADDRNOTAVAIL) {
                    perror("socket/connect");
                    goto out;
                }
            } else {
                inflight++;
            }
            started++;
        }
        if (now() - t0 > limit) break;
        k = epoll_wait(ep, evs, (int)(sizeof(evs) / sizeof(evs[0])), 100);
        if (k < 0 && errno != EINTR) { perror("epoll_wait"); break; }
        for (i = 0; i < k; i++) {
            int r = finish_one(ep, evs[i].data.fd);
            if (r < 0) continue;
            inflight--;
            if (r) done++;
            else errors++;
            last = now();
        }
    }
out:
    elapsed = now() - t0;
    printf("connections=%ld errors=%ld seconds=%.6f rate=%.1f end=%.6f\n", done, errors, elapsed,
           elapsed > 0 ? (double)done / elapsed : 0.0, last);
    fflush(stdout);
    close(ep);
    return done == n ? 0 : 1;
}
