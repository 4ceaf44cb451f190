/* Connection lifecycle: accept, the events of both legs, the phase timer, the single close path
 * and the one log line per connection end. The protocol is reached only through c->drv. */
#include "px_conn.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "px_listen.h"
#include "px_log.h"
#include "px_relay.h"
#include "px_admit.h"
#include "px_hello.h"
#include "px_probe.h"

uint64_t px_now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void on_timer(uv_timer_t *t);
static bool direct_unanswered(struct px_conn *c);
static void set_detail(struct px_conn *c, const char *detail);
static void enter_failing(struct px_conn *c, enum dbt_reason reason, const char *detail);
static void on_client_closed(struct px_leg *l);
static void on_client_tls_done(struct px_leg *l);

static struct px_conn *conn_of(const struct px_leg *l)
{
    return l->owner;
}

static struct px_leg *other_leg(struct px_conn *c, const struct px_leg *l)
{
    return &c->legs[l->side == PX_CLIENT ? PX_UPSTREAM : PX_CLIENT];
}

static const struct px_leg_events client_events = {
    .on_bytes = px_conn_leg_bytes,
    .on_read_end = px_conn_leg_read_end,
    .on_tls_done = on_client_tls_done,
    .on_tls_error = px_conn_leg_tls_error,
    .on_write_done = px_conn_leg_write_done,
    .on_shutdown_done = px_conn_leg_shutdown_done,
    .on_closed = on_client_closed,
    .on_session = NULL,
};

static void peer_address(uv_tcp_t *tcp, struct sockaddr_storage *ss, char *out, size_t cap)
{
    memset(ss, 0, sizeof(*ss));
    int len = sizeof(*ss);
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)ss, &len) != 0)
        ss->ss_family = AF_UNSPEC;
    px_format_sockaddr((struct sockaddr *)ss, out, cap);
}

/* Out of descriptors, libuv accepts and closes the excess itself (its reserve-descriptor
 * trick) without telling us, so nothing would say why clients are being hung up on. The
 * kernel hands out the lowest free number, so a new descriptor this close to the limit means
 * the process is nearly out: say so, at most every 10 s per worker. */
#define PX_FD_HEADROOM 16

static void warn_if_out_of_descriptors(struct px_conn *c)
{
    struct px_worker *w = c->w;
    uv_os_fd_t fd;
    if (w->fd_limit == 0 || uv_fileno(&px_conn_client(c)->s.handle, &fd) != 0 ||
        (uint64_t)fd + PX_FD_HEADROOM < w->fd_limit)
        return;
    uint64_t now = px_now_ms();
    if (w->fd_warned_ms != 0 && now - w->fd_warned_ms < 10000)
        return;
    w->fd_warned_ms = now;
    px_log(CFG_LOG_WARN,
           "open descriptors nearly exhausted on listener %s (descriptor %d of limit %llu): "
           "connections beyond it are closed unanswered; raise the open-files limit "
           "(LimitNOFILE, ulimit -n) or max_connections down",
           c->wl->l->cfg->name, (int)fd, (unsigned long long)w->fd_limit);
}

static void free_unaccepted(uv_handle_t *h)
{
    struct px_leg *l = h->data;
    free(l->owner);
}

/* Past the hard ceiling nothing is read, but the refusal is still written, once, into the
 * fresh socket's empty buffer (no queue, no wait): a legitimate client caught in a flood reads
 * "connection limit reached" (PostgreSQL 53300, MySQL 1040) instead of a bare close. */
static void refuse_unread(struct px_conn *c)
{
    char msg[300], detail[120];
    uint8_t pkt[600];
    snprintf(detail, sizeof(detail), "max_connections (%u) far exceeded: closed at accept",
             c->wl->l->cfg->max_connections);
    px_error_message(c, DBT_LIMIT_REACHED, detail, msg, sizeof(msg));
    size_t n = c->drv->build_error(c, DBT_LIMIT_REACHED, msg, pkt, sizeof(pkt));
    uv_buf_t b = uv_buf_init((char *)pkt, (unsigned)n);
    if (n > 0)
        (void)uv_try_write(&px_conn_client(c)->s.stream, &b, 1);
}

void px_conn_accept(struct px_worker_listener *wl)
{
    struct px_worker *w = wl->w;
    struct px_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        px_log(CFG_LOG_ERROR, "out of memory accepting on listener %s", wl->l->cfg->name);
        return;
    }
    c->w = w;
    c->wl = wl;
    c->drv = wl->l->drv;
    c->framed = c->drv->relay_framed;
    c->start_ms = px_now_ms();
    c->state = PX_CONN_CLIENT_STARTUP;
    struct px_leg *client = px_conn_client(c);
    px_leg_setup(client, w, c, PX_CLIENT, &client_events);
    px_leg_setup(px_conn_upstream(c), w, c, PX_UPSTREAM, NULL); /* the dialer sets its events */
    bool is_unix = wl->l->cfg->listen.is_unix;
    struct sockaddr_storage peer;
    if (is_unix)
        px_leg_open_pipe(client);
    else
        px_leg_open_tcp(client);
    if (uv_accept(&wl->handle.stream, &client->s.stream) != 0) {
        /* Nothing to log per connection: the peer vanished between poll and accept. */
        uv_close(&client->s.handle, free_unaccepted);
        return;
    }
    c->open_refs = 1;
    uv_timer_init(&w->loop, &c->timer);
    c->timer.data = c;
    c->open_refs++;
    warn_if_out_of_descriptors(c);

    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->conn_count++;

    c->gen = wl->gen;
    tlsw_gen_ref(c->gen);
    unsigned active = atomic_fetch_add(&wl->l->active, 1) + 1;
    c->dial.wl = wl;
    client->stat_in = &wl->stats.bytes_from_client;
    client->stat_out = &wl->stats.bytes_to_client;

    if (is_unix) {
        dbt_strlcpy(c->client_addr, "unix", sizeof(c->client_addr));
    } else {
        peer_address(&client->s.tcp, &peer, c->client_addr, sizeof(c->client_addr));
        uv_tcp_nodelay(&client->s.tcp, 1);
    }
    px_admit(wl, is_unix ? NULL : &peer, active, c->client_addr, &c->adm);
    if (c->adm.close_now) {
        c->quiet = true; /* px_admit logged it, at a limited rate */
        if (c->adm.refusal == DBT_LIMIT_REACHED)
            refuse_unread(c);
        px_conn_close(c, c->adm.refusal, NULL);
        return;
    }
    c->drv->start(c);
}

enum dbt_reason px_conn_admission(const struct px_conn *c, char *detail, size_t cap)
{
    enum dbt_reason r = c->adm.refusal;
    if (r == DBT_NONE && atomic_load(&c->w->srv->overloaded))
        r = DBT_OVERLOADED;
    px_admit_detail(c->wl, r, c->client_addr, detail, cap);
    return r;
}

void px_conn_startup_done(struct px_conn *c)
{
    px_admit_leave(c->wl, &c->adm);
}

void px_conn_set_timer_fn(struct px_conn *c, uint32_t ms, void (*fn)(struct px_conn *c))
{
    c->on_timeout = fn;
    if (ms == 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer, ms, 0);
}

void px_conn_set_timer(struct px_conn *c, uint32_t ms)
{
    px_conn_set_timer_fn(c, ms, NULL);
}

bool px_conn_logged_in(const struct px_conn *c)
{
    return c->state == PX_CONN_RELAY &&
           (c->drv->authenticating == NULL || !c->drv->authenticating(c));
}

static void on_timer(uv_timer_t *t)
{
    struct px_conn *c = t->data;
    if (c->on_timeout) {
        c->on_timeout(c);
        return;
    }
    switch (c->state) {
    case PX_CONN_CLIENT_STARTUP:
        px_conn_close(c, DBT_CLIENT_TIMEOUT, "client did not finish its startup packets in time");
        break;
    case PX_CONN_CLIENT_TLS:
        px_conn_close(c, DBT_CLIENT_TLS_TIMEOUT,
                      "client did not complete its TLS handshake within handshake_timeout");
        break;
    case PX_CONN_DIAL_WAIT: {
        char detail[160];
        snprintf(detail, sizeof(detail),
                 "no upstream connect slot within connect_timeout (%u ms): "
                 "upstream_connect_limit (%u) connections were being set up",
                 c->wl->l->cfg->connect_timeout_ms, c->wl->l->cfg->upstream_connect_limit);
        px_conn_fail(c, DBT_LIMIT_REACHED, detail);
        break;
    }
    case PX_CONN_MY_GREETING:
        px_conn_fail(c, DBT_UPSTREAM_TIMEOUT, "upstream sent no greeting in time");
        break;
    case PX_CONN_MY_RESPONSE:
        px_conn_close(c, DBT_CLIENT_TIMEOUT, "client did not answer the greeting in time");
        break;
    case PX_CONN_RETIRING:
        px_conn_close(c, c->reason, NULL); /* the server never answered the decoy: hang up */
        break;
    case PX_CONN_SSL_ANSWER:
    case PX_CONN_TLS_HANDSHAKE:
        if (direct_unanswered(c)) {
            char detail[512];
            px_no_direct_tls_detail(c->wl->l->cfg,
                                    "upstream did not answer a direct TLS ClientHello within "
                                    "handshake_timeout",
                                    detail, sizeof(detail));
            px_conn_fail(c, DBT_TLS_HANDSHAKE_TIMEOUT, detail);
            break;
        }
        px_conn_fail(c, DBT_TLS_HANDSHAKE_TIMEOUT,
                     "upstream did not complete the TLS handshake in time");
        break;
    case PX_CONN_SERVER_STARTUP:
        px_conn_fail(c, DBT_UPSTREAM_TIMEOUT,
                     "upstream did not answer the startup message in time");
        break;
    case PX_CONN_CANCEL_DRAIN:
        px_conn_close(c, DBT_CANCEL_FORWARDED, NULL);
        break;
    case PX_CONN_FAILING:
        px_conn_close(c, c->reason, NULL);
        break;
    case PX_CONN_RELAY:
        /* A framed relay runs while authentication still does. */
        if (!px_conn_logged_in(c))
            px_conn_fail(c, DBT_UPSTREAM_TIMEOUT, "authentication did not finish in time");
        break;
    case PX_CONN_RESOLVING:
    case PX_CONN_CONNECTING: /* the dialer arms its own handler */
    case PX_CONN_CLOSING:
        break;
    }
}

/* ---- events of both legs ---- */

static void maybe_finish(struct px_conn *c)
{
    if (px_relay_finished(px_conn_client(c), px_conn_upstream(c)))
        px_conn_close(c, c->reason != DBT_NONE ? c->reason : DBT_CLIENT_CLOSED, NULL);
}

/* client_tls: the ClientHello is gathered (px_hello.c) before a TLS engine exists; the engine
 * gets the whole first record at once. */
static void gather_hello(struct px_conn *c, const uint8_t *data, size_t len)
{
    struct px_leg *client = px_conn_client(c);
    switch (px_hello_add(&c->hello, data, len)) {
    case PX_HELLO_NEED_MORE:
        return;
    case PX_HELLO_BAD:
        px_hello_free(&c->hello);
        px_conn_close(c, DBT_CLIENT_PROTOCOL_ERROR,
                      "client sent something other than a TLS ClientHello after asking for TLS");
        return;
    case PX_HELLO_NO_MEMORY:
        px_hello_free(&c->hello);
        px_conn_close(c, DBT_INTERNAL_ERROR, "out of memory");
        return;
    case PX_HELLO_COMPLETE:
        break;
    }
    struct tlsw_conn *tls = tlsw_conn_new_server(c->wl->client_id, c->hello_alpn, c->hello_alpn_len,
                                                 c->hello_alpn_required);
    if (!tls) {
        px_hello_free(&c->hello);
        px_conn_close(c, DBT_INTERNAL_ERROR, "could not create a TLS session for the client");
        return;
    }
    struct px_hello h = c->hello;
    c->hello = (struct px_hello){0};
    px_leg_start_tls_with(client, tls, h.buf, h.len);
    px_hello_free(&h);
}

void px_conn_leg_bytes(struct px_leg *l, const uint8_t *data, size_t len)
{
    struct px_conn *c = conn_of(l);
    if (c->closing)
        return;
    if (c->state == PX_CONN_CLIENT_TLS && l->tls == NULL) {
        gather_hello(c, data, len);
        return;
    }
    struct px_leg *to = other_leg(c, l);
    if (c->state == PX_CONN_RELAY && !c->framed) {
        px_relay_forward(l, to, data, len);
        return;
    }
    c->drv->on_bytes(c, l, data, len);
    if (!c->closing && c->state == PX_CONN_RELAY)
        px_relay_backpressure(l, to);
}

/* A peer will send no more while relaying: pass the half-close on, end once both are done. */
static void relay_eof(struct px_conn *c, struct px_leg *from)
{
    if (c->reason == DBT_NONE)
        c->reason = from->side == PX_CLIENT ? DBT_CLIENT_CLOSED : DBT_UPSTREAM_CLOSED;
    px_relay_eof(from, other_leg(c, from));
    if (!c->closing)
        maybe_finish(c);
}

static void client_read_end(struct px_conn *c, int status)
{
    bool eof = status == UV_EOF || status == 0;
    if (c->state == PX_CONN_RELAY && eof)
        relay_eof(c, px_conn_client(c));
    else if (eof)
        px_conn_close(c, DBT_CLIENT_CLOSED, NULL);
    else
        px_conn_close(c, DBT_CLIENT_RESET, uv_strerror(status));
}

/* A server ends the session right after the client's goodbye (Terminate, COM_QUIT), often
 * before the client's own close is read: the client's FIN is then already waiting in the
 * socket. One peek at connection end decides who hung up first, instead of the event order. */
static bool client_hung_up(struct px_conn *c)
{
    uv_os_fd_t fd;
    uint8_t b;
    struct px_leg *client = px_conn_client(c);
    if (client->eof || uv_fileno(&client->s.handle, &fd) != 0)
        return client->eof;
    return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* The upstream's side of a live session was cut or broke: what the server sent before still
 * reaches the client (bounded, like an error being written), then the client's connection is
 * reset rather than ended with a FIN, so the client knows the session broke. */
#define PX_RESET_WAIT_MS 5000

/* A reset drops what the kernel has not sent yet: wait (bounded) until the client has it. */
static void reset_when_sent(struct px_conn *c)
{
    if (px_leg_unsent(px_conn_client(c)) == 0 || px_now_ms() >= c->reset_by_ms) {
        px_conn_close(c, c->reason, NULL);
        return;
    }
    px_conn_set_timer_fn(c, 10, reset_when_sent);
}

static void end_with_reset(struct px_conn *c, enum dbt_reason r, const char *detail)
{
    struct px_leg *client = px_conn_client(c);
    c->abort_client = true;
    enter_failing(c, r, detail); /* ends once the client has its bytes */
    c->reset_by_ms = px_now_ms() + PX_RESET_WAIT_MS;
    if (client->queued == 0)
        reset_when_sent(c);
    else
        px_conn_set_timer(c, PX_RESET_WAIT_MS);
}

/* The upstream's TCP stream ended without a TLS close_notify while the client is still there.
 * Anyone on the path can end a TCP stream, so passing it on as a FIN would let an attacker who
 * cuts the session look like the server finishing (a truncation attack). MySQL and MariaDB
 * servers never send close_notify (they close quietly), so their server-side ends always take
 * this path: the client still gets every byte, then a reset. */
static void truncated(struct px_conn *c)
{
    end_with_reset(c, DBT_UPSTREAM_CLOSED, "no close_notify");
}

/* Direct TLS (sslnegotiation = direct): the ClientHello was the connection's first byte and the
 * server has not sent a single TLS record yet. A server that does not speak direct TLS never
 * will: PostgreSQL 16 and older read the ClientHello as a startup packet length and hang up
 * ("invalid length of startup packet"), other servers answer in plaintext. That is said as
 * such, and never retried with an SSLRequest: the operator chose direct, and a silent fallback
 * would hide the hop that does not speak it. */
static bool direct_unanswered(struct px_conn *c)
{
    return c->upstream_direct && c->state == PX_CONN_TLS_HANDSHAKE &&
           px_conn_upstream(c)->expect_record;
}

static void fail_no_direct_tls(struct px_conn *c, const char *what)
{
    char detail[512];
    px_no_direct_tls_detail(c->wl->l->cfg, what, detail, sizeof(detail));
    px_conn_fail(c, DBT_UPSTREAM_NO_DIRECT_TLS, detail);
}

/* The upstream will send no more: close_notify (clean) or TCP EOF. */
static void upstream_eof(struct px_conn *c, bool clean)
{
    if (direct_unanswered(c)) {
        fail_no_direct_tls(c, "upstream closed the connection instead of answering a direct TLS "
                              "ClientHello");
        return;
    }
    switch (c->state) {
    case PX_CONN_RELAY:
        if (c->reason == DBT_NONE && client_hung_up(c))
            c->reason = DBT_CLIENT_CLOSED;
        if (!px_conn_logged_in(c))
            px_conn_fail(c, DBT_UPSTREAM_RESET,
                         "upstream closed the connection during authentication");
        else if (!clean && c->reason == DBT_NONE)
            truncated(c);
        else
            relay_eof(c, px_conn_upstream(c));
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

static void upstream_read_end(struct px_conn *c, int status)
{
    if (c->state == PX_CONN_RETIRING) {
        px_conn_close(c, c->reason, NULL); /* it hung up first: nothing left to end */
    } else if (status == 0 || status == UV_EOF) {
        upstream_eof(c, status == 0);
    } else if (direct_unanswered(c)) {
        /* PostgreSQL 16 hangs up with most of the ClientHello unread: the kernel resets. */
        char what[160];
        snprintf(what, sizeof(what),
                 "upstream broke the connection (%s) instead of answering a direct TLS "
                 "ClientHello",
                 uv_strerror(status));
        fail_no_direct_tls(c, what);
    } else if (c->state == PX_CONN_RELAY && px_conn_client(c)->eof) {
        /* The client already said goodbye (COM_QUIT, Terminate): a server that closes hard
         * after it, before our close_notify lands, is a normal end, not a broken leg. */
        px_conn_close(c, DBT_CLIENT_CLOSED, NULL);
    } else if (px_conn_logged_in(c)) {
        /* A broken session must not end like a finished one. */
        end_with_reset(c, status == UV_ETIMEDOUT ? DBT_UPSTREAM_TIMEOUT : DBT_UPSTREAM_RESET,
                       uv_strerror(status));
    } else if (c->state == PX_CONN_TLS_HANDSHAKE || c->state == PX_CONN_SSL_ANSWER) {
        px_conn_fail(c, DBT_TLS_HANDSHAKE_FAILED, uv_strerror(status));
    } else {
        px_conn_fail(c, DBT_UPSTREAM_RESET, uv_strerror(status));
    }
}

void px_conn_leg_read_end(struct px_leg *l, int status)
{
    struct px_conn *c = conn_of(l);
    if (c->closing)
        return;
    if (l->side == PX_CLIENT)
        client_read_end(c, status);
    else
        upstream_read_end(c, status);
}

void px_conn_leg_tls_error(struct px_leg *l, enum dbt_reason r, const char *detail)
{
    struct px_conn *c = conn_of(l);
    if (c->closing)
        return;
    if (l->side == PX_CLIENT) {
        /* No error message can reach a client whose TLS session failed: log it and close. */
        if (r == DBT_NONE)
            r = l->tls_up ? DBT_CLIENT_RESET : DBT_CLIENT_TLS_HANDSHAKE_FAILED;
        px_conn_close(c, r, detail);
        return;
    }
    /* Direct TLS answered in plaintext, or by a TLS server that is not PostgreSQL 17+ (no ALPN
     * "postgresql"): the server does not speak direct TLS (direct_unanswered). */
    if (c->upstream_direct && !l->tls_up &&
        (r == DBT_UPSTREAM_PLAINTEXT_AFTER_SSL_RESPONSE || r == DBT_UPSTREAM_NO_DIRECT_TLS)) {
        fail_no_direct_tls(c, detail);
        return;
    }
    if (!l->tls_up)
        px_conn_fail(c, r == DBT_NONE ? DBT_TLS_HANDSHAKE_FAILED : r, detail);
    else if (px_conn_logged_in(c))
        px_conn_close(c, r == DBT_NONE ? DBT_TLS_ERROR : r, detail);
    else
        px_conn_fail(c, r == DBT_NONE ? DBT_TLS_ERROR : r, detail);
}

/* One completion path for both legs: report a broken leg, finish a failing connection once its
 * error is written, or let the relay resume a paused side. */
void px_conn_leg_write_done(struct px_leg *l, int status)
{
    struct px_conn *c = conn_of(l);
    if (c->closing)
        return;
    if (status < 0) {
        px_conn_close(c, l->side == PX_CLIENT ? DBT_CLIENT_RESET : DBT_UPSTREAM_RESET,
                      uv_strerror(status));
        return;
    }
    if (c->state == PX_CONN_FAILING) {
        if (px_conn_client(c)->queued > 0)
            return;
        if (c->abort_client)
            reset_when_sent(c);
        else
            px_conn_close(c, c->reason, NULL);
        return;
    }
    if (c->state != PX_CONN_RELAY)
        return;
    px_relay_resume(px_conn_client(c), px_conn_upstream(c));
    maybe_finish(c);
}

void px_conn_leg_shutdown_done(struct px_leg *l)
{
    struct px_conn *c = conn_of(l);
    if (!c->closing)
        maybe_finish(c);
}

void px_conn_start_client_tls(struct px_conn *c, const uint8_t *alpn, size_t alpn_len,
                              bool alpn_required, const uint8_t *ciphertext, size_t len)
{
    c->resume_state = c->state;
    c->state = PX_CONN_CLIENT_TLS;
    c->hello_alpn = alpn;
    c->hello_alpn_len = (uint8_t)alpn_len;
    c->hello_alpn_required = alpn_required;
    px_conn_set_timer(c, c->wl->l->cfg->handshake_timeout_ms);
    if (len > 0)
        gather_hello(c, ciphertext, len);
    if (!c->closing)
        px_leg_start_reading(px_conn_client(c));
}

static void on_client_tls_done(struct px_leg *l)
{
    struct px_conn *c = conn_of(l);
    c->state = c->resume_state;
    px_conn_set_timer(c, c->wl->l->cfg->startup_timeout_ms);
    c->drv->on_tls_ready(c, l);
}

void px_conn_start_relay(struct px_conn *c, const uint8_t *to_client, size_t len)
{
    px_conn_startup_done(c);
    c->state = PX_CONN_RELAY;
    px_conn_set_timer(c, 0);
    /* Idle connections keep only their handles, not the ciphertext buffers the certificate
     * flight grew. */
    px_leg_trim(px_conn_upstream(c));
    px_leg_trim(px_conn_client(c));
    if (len > 0 && px_leg_send(px_conn_client(c), to_client, len) != 0)
        return;
    if (!c->closing)
        px_leg_start_reading(px_conn_client(c));
}

/* ---- failing and closing ---- */

static const char *summary_for(enum dbt_reason r)
{
    switch (dbt_reason_class(r)) {
    case DBT_CLASS_TLS:
        if (r == DBT_TLS_UNTRUSTED_CHAIN || r == DBT_TLS_HOSTNAME_MISMATCH ||
            r == DBT_TLS_CERT_EXPIRED || r == DBT_TLS_CERT_NOT_YET_VALID ||
            r == DBT_TLS_PIN_MISMATCH)
            return "upstream certificate rejected";
        return "could not establish TLS to upstream";
    case DBT_CLASS_UNREACHABLE:
        /* a MySQL server that answered with an ERR instead of its greeting (mysql.c) */
        if (r == DBT_UPSTREAM_TOO_MANY_CONNECTIONS || r == DBT_UPSTREAM_HOST_BLOCKED ||
            r == DBT_UPSTREAM_REFUSED)
            return "upstream refused the connection";
        return "upstream unreachable";
    case DBT_CLASS_PROTOCOL:
        return "protocol violation";
    case DBT_CLASS_LIMIT:
        return "connection limit reached";
    case DBT_CLASS_SHUTDOWN:
        return "dbtrust is shutting down";
    case DBT_CLASS_BROKEN:
        return "upstream connection lost";
    case DBT_CLASS_CLIENT_REFUSED:
        return "client refused";
    default:
        return "internal error";
    }
}

void px_error_message(const struct px_conn *c, enum dbt_reason reason, const char *detail,
                      char *buf, size_t cap)
{
    const char *upstream = c->upstream_label[0] ? c->upstream_label : "(not dialed)";
    snprintf(buf, cap, "dbtrust: %s (%s)%s%s [listener %s, upstream %s]", summary_for(reason),
             dbt_reason_name(reason), detail && *detail ? ": " : "", detail ? detail : "",
             c->wl->l->cfg->name, upstream);
}

void px_conn_fail(struct px_conn *c, enum dbt_reason reason, const char *detail)
{
    if (c->closing || c->state == PX_CONN_FAILING)
        return;
    if (c->state == PX_CONN_RETIRING) { /* nobody left to tell */
        px_conn_close(c, c->reason, NULL);
        return;
    }
    char msg[900];
    uint8_t pkt[1400];
    px_error_message(c, reason, detail, msg, sizeof(msg));
    size_t n = c->drv->build_error(c, reason, msg, pkt, sizeof(pkt));
    px_conn_fail_with(c, reason, detail, pkt, n);
}

/* Most connections end without a detail, so it is not carried in every connection. */
static void set_detail(struct px_conn *c, const char *detail)
{
    if (detail == NULL || detail == c->detail)
        return;
    free(c->detail);
    c->detail = strdup(detail); /* NULL on ENOMEM: the line goes out without it */
}

/* FAILING: the reason is settled and both legs deliver nothing more; the connection closes
 * once what the client is owed is written, or when its timer runs out. */
static void enter_failing(struct px_conn *c, enum dbt_reason reason, const char *detail)
{
    c->reason = reason;
    set_detail(c, detail);
    px_leg_halt(px_conn_client(c));
    px_leg_halt(px_conn_upstream(c));
    c->state = PX_CONN_FAILING;
}

void px_conn_fail_with(struct px_conn *c, enum dbt_reason reason, const char *detail,
                       const uint8_t *pkt, size_t len)
{
    if (c->closing || c->state == PX_CONN_FAILING)
        return;
    if (c->state == PX_CONN_RETIRING) { /* nobody left to tell */
        px_conn_close(c, c->reason, NULL);
        return;
    }
    px_dial_release(&c->dial);
    struct px_leg *client = px_conn_client(c);
    /* A cancel's client expects silence and a close (PROTOCOLS.md A4); a client whose TLS
     * handshake is not done cannot read an error. */
    if (c->is_cancel || len == 0 || c->state == PX_CONN_CLIENT_TLS ||
        (client->tls && !client->tls_up)) {
        px_conn_close(c, reason, detail);
        return;
    }
    enter_failing(c, reason, detail);
    px_leg_send(client, pkt, len);
    if (c->closing)
        return;
    if (client->queued == 0) {
        px_conn_close(c, reason, NULL);
        return;
    }
    /* A client that never reads its error must not pin the connection. */
    px_conn_set_timer(c, 5000);
}

static void log_conn_end(struct px_conn *c)
{
    char in[24], out[24], dur[24];
    struct px_leg *client = px_conn_client(c), *up = px_conn_upstream(c);
    snprintf(in, sizeof(in), "%llu", (unsigned long long)client->bytes_in);
    snprintf(out, sizeof(out), "%llu", (unsigned long long)client->bytes_out);
    snprintf(dur, sizeof(dur), "%llu", (unsigned long long)(px_now_ms() - c->start_ms));
    enum dbt_reason_class cls = dbt_reason_class(c->reason);
    enum cfg_log_level lvl = cls == DBT_CLASS_OK ? CFG_LOG_INFO : CFG_LOG_WARN;
    bool up_tls = up->tls_up;
    px_log_event(lvl, "conn_end", "listener", c->wl->l->cfg->name, "client", c->client_addr, "app",
                 c->application_name, "user", c->user, "database", c->database, "upstream",
                 c->upstream_label, "tls", up_tls ? tlsw_conn_version(up->tls) : "", "cipher",
                 up_tls ? tlsw_conn_cipher(up->tls) : "", "resumed",
                 !up_tls                      ? ""
                 : tlsw_conn_resumed(up->tls) ? "yes"
                                              : "no",
                 "reason", dbt_reason_name(c->reason), "bytes_in", in, "bytes_out", out,
                 "duration_ms", dur, "client_tls",
                 client->tls_up ? tlsw_conn_version(client->tls) : "", "client_cert",
                 client->tls_up ? tlsw_conn_peer_name(client->tls) : "", "detail",
                 c->detail != NULL ? c->detail : "", NULL);
}

static void conn_free(struct px_conn *c)
{
    struct px_worker *w = c->w;
    /* Counted before the line is logged: whoever reads the line finds the metrics counted. */
    px_counter_add(&c->wl->stats.conns_by_reason[c->reason], 1);
    if (!c->is_cancel) /* a cancel is the same application's second socket, not a session */
        px_stats_app(&c->wl->stats, c->application_name, c->login_ok);
    if (!c->quiet)
        log_conn_end(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->conn_count--;
    atomic_fetch_sub(&c->wl->l->active, 1);
    px_dial_release(&c->dial);
    px_conn_startup_done(c);
    for (size_t i = 0; i < DBT_ARRAY_LEN(c->legs); i++)
        if (c->legs[i].tls)
            tlsw_conn_free(c->legs[i].tls);
    if (c->addrs)
        uv_freeaddrinfo(c->addrs);
    px_hello_free(&c->hello);
    c->drv->free(c);
    tlsw_gen_unref(c->gen);
    free(c->detail);
    free(c);
    /* Counted for px_trim.c, which gives free heap back from the main loop. */
    atomic_fetch_add_explicit(&w->srv->closed_since_trim, 1, memory_order_relaxed);
    if (w->draining && w->conn_count == 0)
        uv_timer_stop(&w->drain_timer); /* nothing left to wait for: the loop can end */
}

void px_conn_release(struct px_conn *c)
{
    if (--c->open_refs == 0)
        conn_free(c); /* the only place a connection is freed */
}

static void on_timer_closed(uv_handle_t *h)
{
    px_conn_release(h->data);
}

static void on_client_closed(struct px_leg *l)
{
    px_conn_release(conn_of(l));
}

/* The reason is settled once the error is on its way, or the client left and the driver ends
 * the upstream's side (px_conn.h): later events end the connection sooner, nothing more. */
static bool reason_settled(const struct px_conn *c)
{
    return c->state == PX_CONN_FAILING || c->state == PX_CONN_RETIRING;
}

void px_conn_close(struct px_conn *c, enum dbt_reason reason, const char *detail)
{
    if (c->closing)
        return;
    if (!reason_settled(c)) {
        c->reason = reason;
        set_detail(c, detail);
    }
    if (c->drv->on_close && c->drv->on_close(c))
        return; /* the driver ends the upstream's side first, then closes */
    c->closing = true;
    px_dial_release(&c->dial);
    c->state = PX_CONN_CLOSING;
    if (c->gai_pending)
        uv_cancel((uv_req_t *)&c->gai); /* its callback still runs and releases its ref */
    if (c->abort_client)
        px_leg_abort(px_conn_client(c));
    else
        px_leg_close(px_conn_client(c));
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    px_leg_close(px_conn_upstream(c));
}
