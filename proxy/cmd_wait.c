/* dbtrust wait: blocks until a dbtrust's /readyz answers 200, for entrypoints and init ordering
 * where native sidecars are not available (`dbtrust wait --admin 127.0.0.1:9187 && exec app`).
 *
 * The probe is a raw HTTP/1.0 GET over a socket, not a client library: it only needs the status
 * line of one loopback answer from our own admin endpoint, and the image carries no HTTP client
 * library (libmicrohttpd is a server only). Every step is bounded by the deadline, so a
 * black-holed address cannot hold the command past --timeout. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cfg.h"
#include "px_cmd.h"

enum { EXIT_READY = 0, EXIT_TIMEOUT = 1, EXIT_USAGE = 2 };

#define WAIT_RETRY_MS     200   /* between two probes */
#define WAIT_DEFAULT_MS   30000 /* --timeout */
#define WAIT_STATUS_LINE  256   /* "HTTP/1.1 200 OK\r\n" and then some */
#define WAIT_PROBE_MAX_MS 2000  /* one probe; a stuck one gives way to the next attempt */

static const char wait_usage[] =
    "Usage: dbtrust wait --admin HOST:PORT [--timeout DURATION]\n"
    "\n"
    "Waits until the dbtrust whose admin endpoint is HOST:PORT is ready (GET /readyz answers\n"
    "200), asking every 200 ms: for an application's entrypoint or an init step where native\n"
    "sidecars are not available, e.g. `dbtrust wait --admin 127.0.0.1:9187 && exec app`.\n"
    "  --admin HOST:PORT    the admin endpoint (admin = in [dbtrust]); [v6]:port for IPv6\n"
    "  --timeout DURATION   give up after this long (default 30s; e.g. 500ms, 10s, 2m)\n"
    "Exit status: 0 ready; 1 not ready within the timeout; 2 usage error.\n";

struct wait_args {
    struct cfg_addr admin;
    uint32_t timeout_ms;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int left_ms(uint64_t deadline)
{
    uint64_t now = mono_ms();
    return now >= deadline ? 0 : (int)(deadline - now);
}

static int usage_error(const char *why, const char *arg)
{
    fprintf(stderr, "dbtrust wait: %s%s%s\n%s", why, arg ? " " : "", arg ? arg : "", wait_usage);
    return -1;
}

static int parse_args(int argc, char **argv, struct wait_args *w)
{
    static const struct option opts[] = {
        {"admin", required_argument, NULL, 'a'},
        {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool have_admin = false;
    int ch;
    optind = 1;
    w->timeout_ms = WAIT_DEFAULT_MS;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'a':
            if (cfg_parse_addr(optarg, false, 0, &w->admin) != 0 || w->admin.port == 0)
                return usage_error("--admin wants HOST:PORT, not", optarg);
            have_admin = true;
            break;
        case 't':
            if (cfg_parse_duration_ms(optarg, &w->timeout_ms) != 0)
                return usage_error("--timeout wants a duration such as 30s, not", optarg);
            break;
        case 'h':
            fputs(wait_usage, stdout);
            exit(EXIT_READY);
        default:
            fputs(wait_usage, stderr);
            return -1;
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument", argv[optind]);
    if (!have_admin)
        return usage_error("--admin is required", NULL);
    return 0;
}

/* Waits until fd has events, or the deadline. 0 when ready, -1 (errno ETIMEDOUT) otherwise. */
static int await(int fd, short events, uint64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int rc = poll(&p, 1, left_ms(deadline));
        if (rc > 0)
            return 0;
        if (rc == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (errno != EINTR)
            return -1;
    }
}

static int connect_by(const struct addrinfo *ai, uint64_t deadline)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (errno != EINPROGRESS || await(fd, POLLOUT, deadline) != 0 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            int saved = err ? err : errno;
            close(fd);
            errno = saved;
            return -1;
        }
    }
    return fd;
}

/* Sends the request and reads up to the status line's end: the HTTP status, or -1. */
static int exchange(int fd, const char *host, uint64_t deadline)
{
    char req[512], resp[WAIT_STATUS_LINE];
    int n = snprintf(req, sizeof(req), "GET /readyz HTTP/1.0\r\nHost: %s\r\n\r\n", host);
    if (await(fd, POLLOUT, deadline) != 0 || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
        return -1; /* a loopback socket takes 100 bytes in one send, or is broken */
    size_t got = 0;
    while (got < sizeof(resp) - 1 && !memchr(resp, '\n', got)) {
        if (await(fd, POLLIN, deadline) != 0)
            return -1;
        ssize_t r = recv(fd, resp + got, sizeof(resp) - 1 - got, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    resp[got] = '\0';
    int minor, status;
    if (sscanf(resp, "HTTP/1.%d %3d", &minor, &status) != 2) {
        errno = EPROTO;
        return -1;
    }
    return status;
}

/* One GET /readyz to every address of the endpoint until one answers: its HTTP status, or -1
 * with why in last (kept for the timeout message). */
static int probe(const struct wait_args *w, uint64_t deadline, char *last, size_t n)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)w->admin.port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(w->admin.host, port, &hints, &res);
    if (rc != 0) {
        snprintf(last, n, "cannot resolve %s: %s", w->admin.host, gai_strerror(rc));
        return -1;
    }
    int status = -1;
    for (const struct addrinfo *ai = res; ai && status < 0; ai = ai->ai_next) {
        int fd = connect_by(ai, deadline);
        if (fd >= 0) {
            status = exchange(fd, w->admin.host, deadline);
            close(fd);
        }
        if (status < 0)
            snprintf(last, n, "%s", strerror(errno));
        else
            snprintf(last, n, "/readyz answered %d", status);
    }
    freeaddrinfo(res);
    return status;
}

int px_cmd_wait(int argc, char **argv)
{
    struct wait_args w = {0};
    if (parse_args(argc, argv, &w) != 0)
        return EXIT_USAGE;
    uint64_t deadline = mono_ms() + w.timeout_ms;
    char last[512] = "no answer";
    for (;;) {
        /* Each probe gets at least WAIT_RETRY_MS, so --timeout 0 (or the last moment) is still
         * one honest attempt: the answer comes from another thread, after a scheduling delay. */
        uint64_t now = mono_ms();
        uint64_t until = deadline > now + WAIT_RETRY_MS ? deadline : now + WAIT_RETRY_MS;
        if (until > now + WAIT_PROBE_MAX_MS)
            until = now + WAIT_PROBE_MAX_MS;
        if (probe(&w, until, last, sizeof(last)) == 200)
            return EXIT_READY;
        int left = left_ms(deadline);
        if (left == 0)
            break;
        struct timespec pause = {0, (long)(left < WAIT_RETRY_MS ? left : WAIT_RETRY_MS) * 1000000};
        while (nanosleep(&pause, &pause) != 0 && errno == EINTR)
            ;
    }
    char admin[300];
    cfg_addr_format(&w.admin, admin, sizeof(admin));
    fprintf(stderr, "dbtrust wait: %s not ready after %u ms: %s\n", admin, w.timeout_ms, last);
    return EXIT_TIMEOUT;
}
