/* The upstream leg: name resolution, connect with timeout across every configured upstream and
 * address, and the TLS handshake with verification. The leg's reads, writes and relay are the
 * common leg code; only what is particular to the upstream side lives here. */
#include "px_upstream.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "px_log.h"
#include "px_probe.h"

static void try_next_upstream(struct px_conn *c);
static void try_next_addr(struct px_conn *c);
static void connect_to(struct px_conn *c, const struct sockaddr *addr);
static void on_tls_done(struct px_leg *l);
static void on_attempt_closed(struct px_leg *l);
static void on_session(struct px_leg *l, struct tlsw_session *s);
static void on_connect_timeout(struct px_conn *c);

static const struct px_leg_events upstream_events = {
    .on_bytes = px_conn_leg_bytes,
    .on_read_end = px_conn_leg_read_end,
    .on_tls_done = on_tls_done,
    .on_tls_error = px_conn_leg_tls_error,
    .on_write_done = px_conn_leg_write_done,
    .on_shutdown_done = px_conn_leg_shutdown_done,
    .on_closed = on_attempt_closed,
    .on_session = on_session,
};

static const struct cfg_listener *lcfg(const struct px_conn *c)
{
    return c->wl->l->cfg;
}

const char *px_upstream_verify_name(const struct px_conn *c)
{
    return px_verify_name(lcfg(c), c->upstream_idx);
}

static void set_label(struct px_conn *c)
{
    const struct cfg_addr *a = &lcfg(c)->upstream[c->upstream_idx];
    snprintf(c->upstream_label, sizeof(c->upstream_label),
             strchr(a->host, ':') ? "[%s]:%u" : "%s:%u", a->host, a->port);
}

static void dial_now(struct px_conn *c)
{
    c->last_connect_error = 0;
    if (c->pinned_addr) {
        set_label(c);
        connect_to(c, c->pinned_addr);
        return;
    }
    c->upstream_idx = 0;
    try_next_upstream(c);
}

static void on_slot_granted(struct px_dial_waiter *d)
{
    dial_now((struct px_conn *)((char *)d - offsetof(struct px_conn, dial)));
}

void px_upstream_dial_pinned(struct px_conn *c, size_t upstream_idx, const struct sockaddr *addr)
{
    c->upstream_idx = upstream_idx;
    c->pinned_addr = addr;
    px_upstream_dial(c);
}

void px_upstream_dial(struct px_conn *c)
{
    c->dial.granted = on_slot_granted;
    if (!px_dial_acquire(&c->dial)) {
        c->state = PX_CONN_DIAL_WAIT; /* the timer's expiry names the limit */
        px_conn_set_timer(c, lcfg(c)->connect_timeout_ms);
        return;
    }
    dial_now(c);
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
    if (px_conn_ending(c)) {
        if (res)
            uv_freeaddrinfo(res);
        px_conn_release(c); /* the lookup's ref; may be the last one */
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
    set_label(c);
    char port[8];
    snprintf(port, sizeof(port), "%u", a->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    c->state = PX_CONN_RESOLVING;
    px_conn_set_timer_fn(c, l->connect_timeout_ms, on_connect_timeout);
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

static void on_attempt_closed(struct px_leg *l)
{
    struct px_conn *c = l->owner;
    if (px_conn_ending(c)) {
        px_conn_release(c); /* no next address for a connection that is ending */
        return;
    }
    c->open_refs--;
    try_next_addr(c);
}

/* Gives up on the current address; the next one is tried once the handle is closed. */
static void abandon_attempt(struct px_conn *c, int err)
{
    c->last_connect_error = err;
    px_leg_close(px_conn_upstream(c));
}

static void on_connect_timeout(struct px_conn *c)
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
    struct px_leg *up = px_conn_upstream(c);
    uv_tcp_nodelay(&up->s.tcp, 1);
    if (uv_fileno(&up->s.handle, &fd) != 0)
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
    if (status == UV_ECANCELED || px_conn_ending(c))
        return; /* a failing connection's attempt closes with it */
    if (status < 0) {
        abandon_attempt(c, status);
        return;
    }
    tune_upstream_socket(c);
    c->connected_ns = uv_hrtime();
    px_leg_start_reading(px_conn_upstream(c));
    c->drv->on_connected(c);
}

/* One TCP attempt to addr; on_connected or on_attempt_closed follows. */
static void connect_to(struct px_conn *c, const struct sockaddr *addr)
{
    struct px_leg *up = px_conn_upstream(c);
    px_leg_setup(up, c->w, c, PX_UPSTREAM, &upstream_events);
    px_leg_open_tcp(up);
    c->open_refs++;
    c->state = PX_CONN_CONNECTING;
    px_conn_set_timer_fn(c, lcfg(c)->connect_timeout_ms, on_connect_timeout);
    c->connect_req.data = c;
    int rc = uv_tcp_connect(&c->connect_req, &up->s.tcp, addr, on_connected);
    if (rc != 0)
        abandon_attempt(c, rc);
}

static void try_next_addr(struct px_conn *c)
{
    if (c->pinned_addr) { /* the one server that can take it was tried */
        c->upstream_idx = lcfg(c)->upstream_count;
        try_next_upstream(c);
        return;
    }
    if (!c->next_addr) {
        uv_freeaddrinfo(c->addrs);
        c->addrs = NULL;
        c->upstream_idx++;
        try_next_upstream(c);
        return;
    }
    struct addrinfo *ai = c->next_addr;
    c->next_addr = ai->ai_next;
    connect_to(c, ai->ai_addr);
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

/* True when leaf is not among the worker's recent leaves of this listener (it is now). */
static bool first_sight(struct px_worker_listener *wl, const char *leaf)
{
    for (size_t i = 0; i < PX_LEAVES_KEPT; i++)
        if (strcmp(wl->leaves_seen[i], leaf) == 0)
            return false;
    dbt_strlcpy(wl->leaves_seen[wl->leaves_next], leaf, sizeof(wl->leaves_seen[0]));
    wl->leaves_next = (wl->leaves_next + 1) % PX_LEAVES_KEPT;
    return true;
}

/* Logs the verified chain when a worker sees a leaf it has not seen before on this listener:
 * what an operator wants to know after a server certificate rotation, without a line per
 * connection. */
static void log_new_chain(struct px_conn *c)
{
    struct tlsw_cert_info chain[4];
    struct tlsw_conn *tls = px_conn_upstream(c)->tls;
    size_t n = tlsw_conn_peer_chain(tls, chain, DBT_ARRAY_LEN(chain));
    if (n == 0 || !first_sight(c->wl, chain[0].sha256))
        return;
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
                 tlsw_conn_version(tls), "depth0", depth[0], "depth1", depth[1], "depth2", depth[2],
                 "depth3", depth[3], NULL);
}

/* A ticket arrived: the worker's next connection to this upstream under this generation
 * resumes with it, skipping the key exchange and the chain verification that the session
 * already passed. */
static void on_session(struct px_leg *l, struct tlsw_session *s)
{
    struct px_conn *c = l->owner;
    px_resume_put(c->wl, s, c->gen, c->upstream_idx);
}

static void on_tls_done(struct px_leg *l)
{
    struct px_conn *c = l->owner;
    px_dial_release(&c->dial);
    px_stats_handshake(&c->wl->stats, uv_hrtime() - c->connected_ns);
    c->wl->tls_group = tlsw_conn_group(l->tls);
    if (tlsw_conn_resumed(l->tls)) /* a resumption carries no chain; it is the one seen */
        px_counter_add(&c->wl->stats.hs_resumed, 1);
    else
        log_new_chain(c);
    c->drv->on_tls_ready(c, l);
}

void px_upstream_start_tls(struct px_conn *c)
{
    const struct px_driver *drv = c->drv;
    struct tlsw_conn *tls =
        tlsw_conn_new(c->gen, px_upstream_verify_name(c), drv->alpn, drv->alpn_len);
    if (!tls) {
        px_conn_fail(c, DBT_INTERNAL_ERROR, "could not create a TLS session");
        return;
    }
    /* Direct TLS: the server's ALPN "postgresql" is what shows it is a PostgreSQL 17+ server
     * and not some TLS terminator in front of who knows what (libpq insists on it too). */
    if (c->upstream_direct && tlsw_conn_require_alpn(tls) != 0) {
        tlsw_conn_free(tls);
        px_conn_fail(c, DBT_INTERNAL_ERROR, "direct TLS without an ALPN protocol to require");
        return;
    }
    struct px_worker_listener *wl = c->wl;
    tlsw_conn_prefer_group(tls, wl->tls_group);
    struct tlsw_session *s = px_resume_take(wl, c->gen, c->upstream_idx);
    if (s != NULL) {
        tlsw_conn_offer_session(tls, s); /* the engine keeps its own reference */
        tlsw_session_free(s);
    }
    c->state = PX_CONN_TLS_HANDSHAKE;
    px_conn_set_timer(c, lcfg(c)->handshake_timeout_ms);
    px_leg_start_tls(px_conn_upstream(c), tls);
}
