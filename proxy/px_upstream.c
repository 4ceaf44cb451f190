/* The upstream leg: name resolution, connect with timeout across every configured upstream and
 * address, the TLS handshake with verification, and encrypted reads and writes. */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "px_conn.h"
#include "px_io.h"
#include "px_log.h"
#include "px_probe.h"

static void try_next_upstream(struct px_conn *c);
static void try_next_addr(struct px_conn *c);
static void on_upstream_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static const struct cfg_listener *lcfg(const struct px_conn *c)
{
    return c->wl->l->cfg;
}

/* A MySQL connection relays through its machine from the TLS handshake on, while the login
 * still runs: until it is done, a broken upstream leg is a failed startup, and the client is
 * owed an ERR naming the reason, not a bare close. */
static bool relaying_data(const struct px_conn *c)
{
    return c->state == PX_CONN_RELAY && (c->my == NULL || my_relaying(c->my));
}

/* The name the certificate must carry: server_name when configured, else the upstream host. */
const char *px_upstream_verify_name(const struct px_conn *c)
{
    return px_verify_name(lcfg(c), c->upstream_idx);
}

void px_upstream_dial(struct px_conn *c)
{
    if (!px_dial_acquire(c))
        return; /* queued: px_dial_release calls back */
    c->upstream_idx = 0;
    c->last_connect_error = 0;
    try_next_upstream(c);
}

static void all_attempts_failed(struct px_conn *c)
{
    const struct cfg_listener *l = lcfg(c);
    char detail[256];
    enum dbt_reason r;
    int err = c->last_connect_error;
    if (err == UV_ETIMEDOUT) {
        r = DBT_UPSTREAM_CONNECT_TIMEOUT;
        snprintf(detail, sizeof(detail), "no connection within connect_timeout (%u ms)",
                 l->connect_timeout_ms);
    } else if (err == UV_EAI_NONAME || err == UV_EAI_AGAIN || err == UV_EAI_FAIL ||
               err == UV_EAI_NODATA) {
        r = DBT_UPSTREAM_RESOLVE_FAILED;
        snprintf(detail, sizeof(detail), "could not resolve the upstream name: %s",
                 uv_strerror(err));
    } else {
        r = DBT_UPSTREAM_CONNECT_FAILED;
        snprintf(detail, sizeof(detail), "%s", err ? uv_strerror(err) : "no address");
    }
    if (l->upstream_count > 1) {
        size_t n = strlen(detail);
        snprintf(detail + n, sizeof(detail) - n, " (all %zu upstreams tried)", l->upstream_count);
    }
    px_conn_fail(c, r, detail);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct px_conn *c = req->data;
    c->gai_pending = false;
    if (c->closing) {
        if (res)
            uv_freeaddrinfo(res);
        px_conn_release(c);
        return;
    }
    c->open_refs--; /* the connection holds other refs: the client handle and the timer */
    if (status < 0) {
        c->last_connect_error = status;
        c->upstream_idx++;
        try_next_upstream(c);
        return;
    }
    c->addrs = res;
    c->next_addr = res;
    try_next_addr(c);
}

static void try_next_upstream(struct px_conn *c)
{
    const struct cfg_listener *l = lcfg(c);
    if (c->upstream_idx >= l->upstream_count) {
        c->upstream_idx = l->upstream_count - 1; /* name the last one tried */
        all_attempts_failed(c);
        return;
    }
    const struct cfg_addr *a = &l->upstream[c->upstream_idx];
    snprintf(c->upstream_label, sizeof(c->upstream_label),
             strchr(a->host, ':') ? "[%s]:%u" : "%s:%u", a->host, a->port);
    char port[8];
    snprintf(port, sizeof(port), "%u", a->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    c->state = PX_CONN_RESOLVING;
    px_conn_set_timer(c, l->connect_timeout_ms);
    c->gai.data = c;
    /* Resolved for every new connection, in libuv's thread pool: a DNS failover is followed
     * without blocking the worker. */
    int rc = uv_getaddrinfo(&c->w->loop, &c->gai, on_resolved, a->host, port, &hints);
    if (rc != 0) {
        c->last_connect_error = rc;
        c->upstream_idx++;
        try_next_upstream(c);
        return;
    }
    c->gai_pending = true;
    c->open_refs++;
}

static void on_attempt_closed(uv_handle_t *h)
{
    struct px_conn *c = h->data;
    c->upstream_leg = PX_LEG_NONE;
    if (c->closing) {
        px_conn_release(c);
        return;
    }
    c->open_refs--;
    try_next_addr(c);
}

/* Gives up on the current address; the next one is tried once the handle is closed. */
static void abandon_attempt(struct px_conn *c, int err)
{
    c->last_connect_error = err;
    c->upstream_leg = PX_LEG_CLOSING;
    uv_close((uv_handle_t *)&c->upstream, on_attempt_closed);
}

void px_upstream_connect_timeout(struct px_conn *c)
{
    if (c->state == PX_CONN_RESOLVING) {
        c->last_connect_error = UV_ETIMEDOUT;
        c->upstream_idx = lcfg(c)->upstream_count; /* the lookup itself is stuck: give up */
        all_attempts_failed(c);
        return;
    }
    abandon_attempt(c, UV_ETIMEDOUT);
}

/* Dead-peer detection (upstream_dead_timeout): keepalive probes plus TCP_USER_TIMEOUT, so a
 * blackholed upstream is noticed whether or not data is in flight. */
static void tune_upstream_socket(struct px_conn *c)
{
    uv_os_fd_t fd;
    uv_tcp_nodelay(&c->upstream, 1);
    if (uv_fileno((uv_handle_t *)&c->upstream, &fd) != 0)
        return;
    uint32_t dead_ms = lcfg(c)->upstream_dead_timeout_ms;
    if (dead_ms == 0)
        return;
    int on = 1;
    int idle = (int)(dead_ms / 2000) > 0 ? (int)(dead_ms / 2000) : 1;
    int intvl = (int)(dead_ms / 6000) > 0 ? (int)(dead_ms / 6000) : 1;
    int cnt = 3;
    unsigned int user_timeout = dead_ms;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout));
}

static void on_connected(uv_connect_t *req, int status)
{
    struct px_conn *c = req->data;
    if (status == UV_ECANCELED || c->closing)
        return;
    if (status < 0) {
        abandon_attempt(c, status);
        return;
    }
    tune_upstream_socket(c);
    c->connected_ns = uv_hrtime();
    c->upstream_reading = true;
    uv_read_start((uv_stream_t *)&c->upstream, px_io_alloc, on_upstream_read);
    if (c->my)
        px_my_on_connected(c);
    else
        px_pg_on_connected(c);
}

static void try_next_addr(struct px_conn *c)
{
    if (!c->next_addr) {
        uv_freeaddrinfo(c->addrs);
        c->addrs = NULL;
        c->upstream_idx++;
        try_next_upstream(c);
        return;
    }
    struct addrinfo *ai = c->next_addr;
    c->next_addr = ai->ai_next;
    uv_tcp_init(&c->w->loop, &c->upstream);
    c->upstream.data = c;
    c->open_refs++;
    c->upstream_leg = PX_LEG_OPEN;
    c->state = PX_CONN_CONNECTING;
    px_conn_set_timer(c, lcfg(c)->connect_timeout_ms);
    c->connect_req.data = c;
    int rc = uv_tcp_connect(&c->connect_req, &c->upstream, ai->ai_addr, on_connected);
    if (rc != 0)
        abandon_attempt(c, rc);
}

void px_upstream_stop_reading(struct px_conn *c)
{
    if (c->upstream_reading) {
        uv_read_stop((uv_stream_t *)&c->upstream);
        c->upstream_reading = false;
    }
}

void px_upstream_start_reading(struct px_conn *c)
{
    if (!c->upstream_reading && !c->upstream_eof && !c->closing && c->upstream_leg == PX_LEG_OPEN) {
        c->upstream_reading = true;
        uv_read_start((uv_stream_t *)&c->upstream, px_io_alloc, on_upstream_read);
    }
}

int px_upstream_write_raw(struct px_conn *c, const uint8_t *data, size_t len)
{
    return px_io_send(c, (uv_stream_t *)&c->upstream, &c->queued_to_upstream, data, len);
}

int px_upstream_flush(struct px_conn *c)
{
    while (tlsw_conn_pending(c->tls) > 0) {
        size_t n = tlsw_conn_take(c->tls, c->w->tls_out, sizeof(c->w->tls_out));
        if (px_io_send(c, (uv_stream_t *)&c->upstream, &c->queued_to_upstream, c->w->tls_out, n) !=
            0)
            return -1;
    }
    return 0;
}

int px_upstream_send(struct px_conn *c, const uint8_t *data, size_t len)
{
    if (tlsw_conn_write(c->tls, data, len) != TLSW_OK) {
        char detail[256];
        enum dbt_reason r = tlsw_conn_failure(c->tls, detail, sizeof(detail));
        px_conn_close(c, r == DBT_NONE ? DBT_TLS_ERROR : r, detail);
        return -1;
    }
    return px_upstream_flush(c);
}

/* Keeps the chain for metrics and expiry warnings (other threads read it) and tells the main
 * loop, which checks its dates. Only when a worker sees a new leaf: not per connection. */
static void remember_chain(struct px_conn *c, const struct tlsw_cert_info *chain, size_t n)
{
    struct px_server *srv = c->w->srv;
    struct px_seen_chain *seen = &c->wl->l->seen;
    uv_mutex_lock(&srv->seen_lock);
    seen->len = n < PX_CHAIN_KEPT ? n : PX_CHAIN_KEPT;
    memcpy(seen->certs, chain, seen->len * sizeof(chain[0]));
    uv_mutex_unlock(&srv->seen_lock);
    atomic_store(&srv->chain_seen, true);
    uv_async_send(&srv->main_wakeup);
}

/* Logs the verified chain when a worker sees a leaf it has not seen before on this listener:
 * what an operator wants to know after a server certificate rotation, without a line per
 * connection. */
static void log_new_chain(struct px_conn *c)
{
    struct tlsw_cert_info chain[4];
    size_t n = tlsw_conn_peer_chain(c->tls, chain, DBT_ARRAY_LEN(chain));
    if (n == 0 || strcmp(chain[0].sha256, c->wl->last_leaf_sha256) == 0)
        return;
    dbt_strlcpy(c->wl->last_leaf_sha256, chain[0].sha256, sizeof(c->wl->last_leaf_sha256));
    remember_chain(c, chain, n);
    char depth[4][600];
    for (size_t i = 0; i < 4; i++) {
        depth[i][0] = '\0';
        if (i < n) {
            struct tm tm;
            char date[32];
            gmtime_r(&chain[i].not_after, &tm);
            strftime(date, sizeof(date), "%Y-%m-%d", &tm);
            snprintf(depth[i], sizeof(depth[i]), "%.250s (issuer %.250s, notAfter %s)",
                     chain[i].subject, chain[i].issuer, date);
        }
    }
    px_log_event(CFG_LOG_INFO, "upstream_verified", "listener", lcfg(c)->name, "upstream",
                 c->upstream_label, "verify_name", px_upstream_verify_name(c), "tls",
                 tlsw_conn_version(c->tls), "depth0", depth[0], "depth1", depth[1], "depth2",
                 depth[2], "depth3", depth[3], NULL);
}

static void fail_tls(struct px_conn *c)
{
    char detail[512];
    enum dbt_reason r = tlsw_conn_failure(c->tls, detail, sizeof(detail));
    px_upstream_flush(c); /* the alert tells the server why */
    if (!c->closing)
        px_conn_fail(c, r == DBT_NONE ? DBT_TLS_HANDSHAKE_FAILED : r, detail);
}

static void deliver_plain(struct px_conn *c, const uint8_t *data, size_t len)
{
    switch (c->state) {
    case PX_CONN_SERVER_STARTUP:
        px_pg_on_server_data(c, data, len);
        break;
    case PX_CONN_RELAY:
        px_relay_to_client(c, data, len);
        break;
    default:
        break; /* a cancel's server sends nothing; anything else is dropped with the conn */
    }
}

/* A ticket arrived (TLS 1.3 sends them after the handshake): the worker's next connection
 * to this upstream under this generation resumes with it, skipping the key exchange and the
 * chain verification that the session already passed. */
static void keep_new_session(struct px_conn *c)
{
    struct tlsw_session *s = tlsw_conn_new_session(c->tls);
    if (s == NULL)
        return;
    px_resume_put(c->wl, s, c->gen, c->upstream_idx);
}

static void drain_plain(struct px_conn *c)
{
    /* The read buffer is free again: its ciphertext was copied into the TLS engine. Records
     * are decrypted into it until it is full, then handed on in one piece: one write to the
     * client per read from the upstream, not one per TLS record. */
    uint8_t *buf = c->w->read_buf;
    size_t have = 0;
    for (;;) {
        size_t n = 0;
        enum tlsw_status st = tlsw_conn_read(c->tls, buf + have, sizeof(c->w->read_buf) - have, &n);
        if (st == TLSW_OK && n > 0) {
            have += n;
            if (have < sizeof(c->w->read_buf))
                continue;
        }
        if (have > 0) {
            deliver_plain(c, buf, have);
            have = 0;
            if (c->closing || c->state == PX_CONN_FAILING)
                return;
            if (c->state == PX_CONN_RELAY && c->queued_to_client > PX_HIGH_WATER)
                px_upstream_stop_reading(c); /* backpressure: the client is not keeping up */
            if (st == TLSW_OK)
                continue;
        }
        if (st == TLSW_CLOSED) {
            px_upstream_on_eof(c, true);
            return;
        }
        if (st == TLSW_ERROR) {
            char detail[256];
            enum dbt_reason r = tlsw_conn_failure(c->tls, detail, sizeof(detail));
            if (relaying_data(c))
                px_conn_close(c, r == DBT_NONE ? DBT_TLS_ERROR : r, detail);
            else
                px_conn_fail(c, r == DBT_NONE ? DBT_TLS_ERROR : r, detail);
            return;
        }
        break;
    }
    keep_new_session(c);
    px_upstream_flush(c);
}

static void handshake_step(struct px_conn *c)
{
    enum tlsw_status st = tlsw_conn_handshake(c->tls);
    if (st == TLSW_ERROR) {
        fail_tls(c);
        return;
    }
    if (px_upstream_flush(c) != 0)
        return;
    if (st != TLSW_OK)
        return;
    c->tls_up = true;
    px_dial_release(c);
    px_stats_handshake(&c->wl->stats, uv_hrtime() - c->connected_ns);
    c->wl->tls_group = tlsw_conn_group(c->tls);
    if (tlsw_conn_resumed(c->tls)) /* a resumption carries no chain; it is the one seen */
        px_counter_add(&c->wl->stats.hs_resumed, 1);
    else
        log_new_chain(c);
    if (c->my)
        px_my_on_tls_ready(c);
    else
        px_pg_on_tls_ready(c);
    if (!c->closing && c->state != PX_CONN_FAILING)
        drain_plain(c); /* the server's first records may have arrived with the handshake */
}

void px_upstream_start_tls(struct px_conn *c)
{
    bool pg = c->my == NULL; /* MySQL has no ALPN name */
    c->tls = tlsw_conn_new(c->gen, px_upstream_verify_name(c), pg ? pg_alpn : NULL,
                           pg ? sizeof(pg_alpn) : 0);
    if (!c->tls) {
        px_conn_fail(c, DBT_INTERNAL_ERROR, "could not create a TLS session");
        return;
    }
    struct px_worker_listener *wl = c->wl;
    tlsw_conn_prefer_group(c->tls, wl->tls_group);
    struct tlsw_session *s = px_resume_take(wl, c->gen, c->upstream_idx);
    if (s != NULL) {
        tlsw_conn_offer_session(c->tls, s); /* the engine keeps its own reference */
        tlsw_session_free(s);
    }
    c->state = PX_CONN_TLS_HANDSHAKE;
    px_conn_set_timer(c, lcfg(c)->handshake_timeout_ms);
    handshake_step(c);
}

/* The upstream will send no more: close_notify (clean) or TCP EOF. */
void px_upstream_on_eof(struct px_conn *c, bool clean)
{
    switch (c->state) {
    case PX_CONN_RELAY:
        if (relaying_data(c))
            px_relay_upstream_eof(c);
        else
            px_conn_fail(c, DBT_UPSTREAM_RESET,
                         "upstream closed the connection during authentication");
        break;
    case PX_CONN_CANCEL_DRAIN:
        px_conn_close(c, DBT_CANCEL_FORWARDED, NULL);
        break;
    case PX_CONN_MY_GREETING:
        px_conn_fail(c, DBT_UPSTREAM_RESET, "upstream closed the connection before its greeting");
        break;
    case PX_CONN_SSL_ANSWER:
    case PX_CONN_TLS_HANDSHAKE:
        px_conn_fail(c, DBT_TLS_HANDSHAKE_FAILED,
                     "upstream closed the connection during the TLS handshake");
        break;
    default:
        px_conn_fail(c, DBT_UPSTREAM_RESET,
                     clean ? "upstream ended the TLS session during startup"
                           : "upstream closed the connection during startup");
        break;
    }
}

static void on_upstream_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct px_conn *c = s->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        if (c->state == PX_CONN_MY_RETIRE) {
            px_conn_close(c, c->reason, NULL); /* it hung up first: nothing left to end */
        } else if (nread == UV_EOF) {
            px_upstream_on_eof(c, false);
        } else if (c->state == PX_CONN_RELAY && c->client_eof) {
            /* The client already said goodbye (COM_QUIT, Terminate): a server that closes hard
             * after it, before our close_notify lands, is a normal end, not a broken leg. */
            px_conn_close(c, DBT_CLIENT_CLOSED, NULL);
        } else if (relaying_data(c)) {
            px_conn_close(c, nread == UV_ETIMEDOUT ? DBT_UPSTREAM_TIMEOUT : DBT_UPSTREAM_RESET,
                          uv_strerror((int)nread));
        } else if (c->state == PX_CONN_TLS_HANDSHAKE || c->state == PX_CONN_SSL_ANSWER) {
            px_conn_fail(c, DBT_TLS_HANDSHAKE_FAILED, uv_strerror((int)nread));
        } else {
            px_conn_fail(c, DBT_UPSTREAM_RESET, uv_strerror((int)nread));
        }
        return;
    }
    const uint8_t *data = (const uint8_t *)buf->base;
    c->recent_io = true;
    if (c->state == PX_CONN_SSL_ANSWER) {
        px_pg_on_ssl_answer(c, data, (size_t)nread);
        return;
    }
    if (c->state == PX_CONN_MY_RETIRE) {
        px_my_on_retire_data(c, data, (size_t)nread);
        return;
    }
    if (c->state == PX_CONN_MY_GREETING || c->state == PX_CONN_MY_RESPONSE) {
        px_my_on_server_plain(c, data, (size_t)nread);
        return;
    }
    if (!c->tls)
        return;
    if (!c->tls_first_byte_seen) {
        c->tls_first_byte_seen = true;
        /* CVE-2021-23222: whatever follows the one-byte answer must be TLS. A first record that
         * is not a handshake or an alert is plaintext injected by someone on the path. */
        if (!pg_is_tls_record_start(data[0])) {
            char detail[128];
            snprintf(detail, sizeof(detail),
                     "upstream sent unencrypted data (first byte 0x%02x) after agreeing to TLS",
                     data[0]);
            px_conn_fail(c, DBT_UPSTREAM_PLAINTEXT_AFTER_SSL_RESPONSE, detail);
            return;
        }
    }
    tlsw_conn_feed(c->tls, data, (size_t)nread);
    if (c->state == PX_CONN_TLS_HANDSHAKE)
        handshake_step(c);
    else
        drain_plain(c);
}
