#include "px_probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mysql.h"
#include "pg.h"
#include "px_listen.h"
#include "wire.h"

#define CANCEL_POLL_MS 100

/* A probe in progress: one socket, one deadline, and the result being written. */
struct probe {
    int fd;
    int64_t deadline_ms;
    const atomic_bool *cancel;
    struct px_probe_result *out;
    const struct cfg_listener *l;
    bool direct; /* PostgreSQL sslnegotiation = direct: the ClientHello goes first */
};

const char *px_verify_name(const struct cfg_listener *l, size_t upstream_idx)
{
    if (l->server_name[0])
        return l->server_name;
    size_t i = upstream_idx < l->upstream_count ? upstream_idx : l->upstream_count - 1;
    return l->upstream[i].host;
}

void px_no_direct_tls_detail(const struct cfg_listener *l, const char *what, char *buf, size_t cap)
{
    /* What happened is cut short rather than the advice, which is the point of the text. */
    int n = snprintf(buf, cap,
                     "%.240s (PostgreSQL 16 and older speak only sslnegotiation = postgres): set "
                     "sslnegotiation = postgres for listener %s",
                     what, l->name);
    if (n < 0 && cap > 0)
        buf[0] = '\0';
}

bool px_probe_is_verify_failure(enum dbt_reason r)
{
    /* A pin mismatch too: the pins stay, but the bundle decides which path verifies, and a new
     * one (a cross-signed intermediate, another root) can route it around every pinned key. */
    /* Revocation too: a CRL that revokes the certificate a live upstream presents would fail
     * every new connection to it, which is what the guard exists to say before it happens
     * (force the reload to revoke anyway). tls_crl_missing and tls_crl_stale are the bundle's
     * policy refusing the chain, the same verdict. */
    return r == DBT_TLS_UNTRUSTED_CHAIN || r == DBT_TLS_CERT_EXPIRED ||
           r == DBT_TLS_CERT_NOT_YET_VALID || r == DBT_TLS_PIN_MISMATCH ||
           r == DBT_TLS_CERT_REVOKED || r == DBT_TLS_CRL_MISSING || r == DBT_TLS_CRL_STALE;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int fail(struct probe *p, enum dbt_reason r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct probe *p, enum dbt_reason r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->out->detail, sizeof(p->out->detail), fmt, ap);
    va_end(ap);
    p->out->reason = r;
    return -1;
}

/* Waits until fd is ready for events, in slices so a cancel is seen quickly. Returns 0 when
 * ready, -ETIMEDOUT past the deadline, -ECANCELED when cancelled. */
static int wait_ready(struct probe *p, short events)
{
    for (;;) {
        if (p->cancel && atomic_load(p->cancel))
            return -ECANCELED;
        int64_t left = p->deadline_ms - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd pfd = {.fd = p->fd, .events = events};
        int n = poll(&pfd, 1, (int)(left < CANCEL_POLL_MS ? left : CANCEL_POLL_MS));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

/* Timeout and cancel as results; other errors get the caller's reason. */
static int io_failed(struct probe *p, int rc, enum dbt_reason timeout_reason, const char *what)
{
    if (rc == -ECANCELED)
        return fail(p, DBT_SHUTDOWN, "probe cancelled");
    if (rc == -ETIMEDOUT)
        return fail(p, timeout_reason, "no answer within the timeout while %s", what);
    return fail(p, DBT_UPSTREAM_RESET, "%s: %s", what, strerror(-rc));
}

static int send_all(struct probe *p, const uint8_t *buf, size_t len, enum dbt_reason timeout_reason)
{
    while (len > 0) {
        ssize_t n = send(p->fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return io_failed(p, -errno, timeout_reason, "sending");
        int rc = wait_ready(p, POLLOUT);
        if (rc != 0)
            return io_failed(p, rc, timeout_reason, "sending");
    }
    return 0;
}

/* Returns bytes read (> 0), 0 on EOF, -1 after fail(). */
static ssize_t recv_some(struct probe *p, uint8_t *buf, size_t cap, enum dbt_reason timeout_reason)
{
    for (;;) {
        ssize_t n = recv(p->fd, buf, cap, 0);
        if (n >= 0)
            return n;
        if (errno != EAGAIN && errno != EINTR)
            return io_failed(p, -errno, timeout_reason, "reading");
        int rc = wait_ready(p, POLLIN);
        if (rc != 0)
            return io_failed(p, rc, timeout_reason, "reading");
    }
}

/* Every address of the name in turn, connect_timeout each, as a connection would. */
static int dial(struct probe *p, const struct cfg_addr *a, uint32_t connect_timeout_ms)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", a->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int grc = getaddrinfo(a->host, port, &hints, &res);
    if (grc != 0)
        return fail(p, DBT_UPSTREAM_RESOLVE_FAILED, "could not resolve the upstream name: %s",
                    gai_strerror(grc));
    int last = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        p->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (p->fd < 0) {
            last = -errno;
            continue;
        }
        p->deadline_ms = now_ms() + connect_timeout_ms;
        int rc = connect(p->fd, ai->ai_addr, ai->ai_addrlen) == 0 ? 0 : -errno;
        if (rc == -EINPROGRESS) {
            rc = wait_ready(p, POLLOUT);
            int so_error = 0;
            socklen_t sl = sizeof(so_error);
            if (rc == 0 && getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &so_error, &sl) == 0)
                rc = -so_error;
        }
        if (rc == 0) {
            px_format_sockaddr(ai->ai_addr, p->out->address, sizeof(p->out->address));
            freeaddrinfo(res);
            return 0;
        }
        close(p->fd);
        p->fd = -1;
        last = rc;
        if (rc == -ECANCELED)
            break;
    }
    freeaddrinfo(res);
    if (last == -ECANCELED)
        return fail(p, DBT_SHUTDOWN, "probe cancelled");
    if (last == -ETIMEDOUT)
        return fail(p, DBT_UPSTREAM_CONNECT_TIMEOUT, "no connection within connect_timeout (%u ms)",
                    connect_timeout_ms);
    return fail(p, DBT_UPSTREAM_CONNECT_FAILED, "%s", last ? strerror(-last) : "no address");
}

static int upgrade_pg(struct probe *p)
{
    if (send_all(p, pg_ssl_request, sizeof(pg_ssl_request), DBT_TLS_HANDSHAKE_TIMEOUT) != 0)
        return -1;
    uint8_t answer;
    ssize_t n = recv_some(p, &answer, 1, DBT_TLS_HANDSHAKE_TIMEOUT);
    if (n < 0)
        return -1;
    const char *detail = "upstream closed the connection instead of answering the SSL request";
    enum dbt_reason r = n == 0 ? DBT_UPSTREAM_RESET : pg_check_ssl_answer(&answer, 1, &detail);
    return r == DBT_NONE ? 0 : fail(p, r, "%s", detail);
}

/* A HandshakeResponse41 as a minimal client would send it: the protocol machine turns its
 * header into the SSLRequest. The user name never reaches the server (the probe ends after
 * the TLS handshake). */
static size_t probe_response(uint8_t *buf, size_t cap)
{
    static const char user[] = "dbtrust-probe";
    size_t len = 32 + sizeof(user) + 1;
    if (cap < MY_HEADER + len)
        return 0;
    memset(buf, 0, MY_HEADER + len);
    wire_put_le24(buf, (uint32_t)len);
    buf[3] = 1;
    uint32_t flags = MY_CLIENT_LONG_PASSWORD | MY_CLIENT_PROTOCOL_41 | MY_CLIENT_SECURE_CONNECTION;
    for (int i = 0; i < 4; i++)
        buf[MY_HEADER + i] = (uint8_t)(flags >> (8 * i));
    buf[MY_HEADER + 4 + 2] = 0x01; /* max packet 64 KiB */
    buf[MY_HEADER + 8] = 45;       /* utf8mb4_general_ci */
    memcpy(buf + MY_HEADER + 32, user, sizeof(user));
    return MY_HEADER + len; /* the trailing 0 is the empty auth response */
}

static int upgrade_mysql(struct probe *p)
{
    struct my_session *s = calloc(1, sizeof(*s));
    struct my_config mc = {0};
    if (!s || !my_session_init(s, &mc)) {
        free(s);
        return fail(p, DBT_INTERNAL_ERROR, "out of memory");
    }
    struct my_step step = {.action = MY_NEED_MORE};
    uint8_t buf[4096];
    while (step.action == MY_NEED_MORE) {
        ssize_t n = recv_some(p, buf, sizeof(buf), DBT_TLS_HANDSHAKE_TIMEOUT);
        if (n <= 0) {
            if (n == 0)
                fail(p, DBT_UPSTREAM_RESET, "upstream closed the connection before its greeting");
            goto out;
        }
        size_t used = 0;
        while (used < (size_t)n && step.action == MY_NEED_MORE)
            used += my_feed_server(s, buf + used, (size_t)n - used, &step);
    }
    if (step.action != MY_SEND_CLIENT) {
        char refusal[300]; /* an ERR greeting: its code, and its text made safe */
        if (step.action == MY_CLOSE && my_refusal_detail(s, refusal, sizeof(refusal)) > 0)
            fail(p, step.reason, "%s", refusal);
        else
            fail(p, step.reason, "%s", step.detail ? step.detail : "unexpected greeting");
        goto out;
    }
    size_t rlen = probe_response(buf, sizeof(buf));
    size_t used = my_feed_client(s, buf, rlen, &step);
    if (step.action == MY_SEND_SERVER_PLAIN &&
        send_all(p, step.data, step.len, DBT_TLS_HANDSHAKE_TIMEOUT) == 0) {
        used += my_feed_client(s, buf + used, rlen - used, &step);
        if (step.action != MY_START_TLS)
            fail(p, DBT_INTERNAL_ERROR, "the MySQL machine did not reach the TLS step");
    } else if (step.action != MY_SEND_SERVER_PLAIN) {
        fail(p, DBT_INTERNAL_ERROR, "the MySQL machine refused the probe's response");
    }
out:
    my_session_wipe(s);
    free(s);
    return p->out->reason == DBT_NONE ? 0 : -1;
}

static int flush_tls(struct probe *p, struct tlsw_conn *tls)
{
    uint8_t buf[16384];
    while (tlsw_conn_pending(tls) > 0) {
        size_t n = tlsw_conn_take(tls, buf, sizeof(buf));
        if (send_all(p, buf, n, DBT_TLS_HANDSHAKE_TIMEOUT) != 0)
            return -1;
    }
    return 0;
}

/* The server did not answer a direct TLS ClientHello with TLS: the words connections use
 * (px_conn.c, direct_unanswered), so a guard line and `dbtrust check` say what a client hears. */
static int no_direct_tls(struct probe *p, const char *what)
{
    char detail[sizeof(p->out->detail)];
    px_no_direct_tls_detail(p->l, what, detail, sizeof(detail));
    return fail(p, DBT_UPSTREAM_NO_DIRECT_TLS, "%s", detail);
}

/* Before the server's first byte under direct TLS, a close, a reset or plaintext all mean the
 * server does not speak it. */
static int first_answer_failed(struct probe *p, ssize_t n, uint8_t first)
{
    char what[200];
    if (n == 0)
        return no_direct_tls(p, "upstream closed the connection instead of answering a direct "
                                "TLS ClientHello");
    if (n < 0 && p->out->reason == DBT_UPSTREAM_RESET) {
        snprintf(what, sizeof(what),
                 "upstream broke the connection (%.80s) instead of answering a direct TLS "
                 "ClientHello",
                 p->out->detail);
        return no_direct_tls(p, what);
    }
    if (n < 0)
        return -1; /* a timeout or a cancel says so itself */
    snprintf(what, sizeof(what),
             "upstream sent unencrypted data (first byte 0x%02x) where its TLS handshake was due",
             first);
    return no_direct_tls(p, what);
}

static int handshake(struct probe *p, struct tlsw_conn *tls, bool pg)
{
    uint8_t buf[16384];
    bool first = true;
    for (;;) {
        enum tlsw_status st = tlsw_conn_handshake(tls);
        if (st == TLSW_ERROR) {
            enum dbt_reason r = tlsw_conn_failure(tls, p->out->detail, sizeof(p->out->detail));
            p->out->reason = r;
            if (r == DBT_UPSTREAM_NO_DIRECT_TLS) { /* a TLS server without ALPN "postgresql" */
                char what[sizeof(p->out->detail)];
                dbt_strlcpy(what, p->out->detail, sizeof(what));
                return no_direct_tls(p, what);
            }
            return -1;
        }
        if (flush_tls(p, tls) != 0)
            return -1;
        if (st == TLSW_OK)
            return 0;
        ssize_t n = recv_some(p, buf, sizeof(buf), DBT_TLS_HANDSHAKE_TIMEOUT);
        if (p->direct && first && (n <= 0 || !pg_is_tls_record_start(buf[0])))
            return first_answer_failed(p, n, n > 0 ? buf[0] : 0);
        if (n < 0)
            return -1;
        if (n == 0)
            return fail(p, DBT_TLS_HANDSHAKE_FAILED,
                        "upstream closed the connection during the TLS handshake");
        if (pg && first && !pg_is_tls_record_start(buf[0]))
            return fail(p, DBT_UPSTREAM_PLAINTEXT_AFTER_SSL_RESPONSE,
                        "upstream sent plaintext after accepting the SSL request");
        first = false;
        tlsw_conn_feed(tls, buf, (size_t)n);
    }
}

/* A MySQL server counts a connection that leaves after the TLS handshake against
 * max_connect_errors for dbtrust's address; a failed login does not. So the probe logs in as
 * nobody and waits for the refusal (best effort: the verdict is already in). */
static void end_mysql_login(struct probe *p, struct tlsw_conn *tls)
{
    uint8_t buf[16384];
    size_t n = my_build_decoy_login(buf, sizeof(buf), true);
    if (n == 0 || tlsw_conn_write(tls, buf, n) != TLSW_OK || flush_tls(p, tls) != 0)
        return;
    for (;;) {
        size_t got = 0;
        enum tlsw_status st = tlsw_conn_read(tls, buf, sizeof(buf), &got);
        if (st == TLSW_OK && got > 0)
            return; /* the server's answer ("Access denied") */
        if (st != TLSW_WANT_IO || flush_tls(p, tls) != 0)
            return;
        ssize_t r = recv_some(p, buf, sizeof(buf), DBT_UPSTREAM_TIMEOUT);
        if (r <= 0)
            return;
        tlsw_conn_feed(tls, buf, (size_t)r);
    }
}

void px_probe(const struct cfg_listener *l, size_t upstream_idx, struct tlsw_gen *g,
              const atomic_bool *cancel, struct px_probe_result *out)
{
    memset(out, 0, sizeof(*out));
    out->reason = DBT_NONE;
    bool pg = l->protocol == CFG_PROTO_POSTGRES;
    struct probe p = {.fd = -1,
                      .cancel = cancel,
                      .out = out,
                      .l = l,
                      .direct = pg && l->sslnegotiation == CFG_SSLNEG_DIRECT};
    if (dial(&p, &l->upstream[upstream_idx], l->connect_timeout_ms) != 0)
        return;
    p.deadline_ms = now_ms() + l->handshake_timeout_ms;
    struct tlsw_conn *tls = NULL;
    /* The listener's own negotiation: a direct listener's probe sends no SSLRequest, so a
     * verdict holds for the connections it speaks for. */
    if (!p.direct && (pg ? upgrade_pg(&p) : upgrade_mysql(&p)) != 0)
        goto out;
    tls = tlsw_conn_new(g, px_verify_name(l, upstream_idx), pg ? pg_alpn : NULL,
                        pg ? sizeof(pg_alpn) : 0);
    if (!tls || (p.direct && tlsw_conn_require_alpn(tls) != 0)) {
        fail(&p, DBT_INTERNAL_ERROR, "could not create a TLS session");
        goto out;
    }
    if (handshake(&p, tls, pg) != 0)
        goto out;
    out->chain_len = tlsw_conn_peer_chain(tls, out->chain, PX_PROBE_MAX_CHAIN);
    dbt_strlcpy(out->tls_version, tlsw_conn_version(tls), sizeof(out->tls_version));
    if (!pg)
        end_mysql_login(&p, tls);
    tlsw_conn_shutdown(tls);
    (void)flush_tls(&p, tls); /* best effort: the verdict is already in */
    out->reason = DBT_NONE;
    out->detail[0] = '\0';
out:
    tlsw_conn_free(tls);
    close(p.fd);
}
