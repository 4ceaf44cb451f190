/* Connection lifecycle: accept, the client leg, the phase timer, the single close path and the
 * one log line per connection end. */
#include "px_conn.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "px_io.h"
#include "px_listen.h"
#include "px_log.h"

uint64_t px_now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void on_timer(uv_timer_t *t);
static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void format_peer(uv_tcp_t *tcp, char *out, size_t cap)
{
    struct sockaddr_storage ss = {0};
    int len = sizeof(ss);
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0)
        ss.ss_family = AF_UNSPEC;
    px_format_sockaddr((struct sockaddr *)&ss, out, cap);
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
    if (w->fd_limit == 0 || uv_fileno(&c->client.handle, &fd) != 0 ||
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
    c->start_ms = px_now_ms();
    c->state = PX_CONN_CLIENT_STARTUP;
    bool is_unix = wl->l->cfg->listen.is_unix;
    if (is_unix)
        uv_pipe_init(&w->loop, &c->client.pipe, 0);
    else
        uv_tcp_init(&w->loop, &c->client.tcp);
    c->client.handle.data = c;
    c->open_refs = 1;
    if (uv_accept(&wl->handle.stream, &c->client.stream) != 0) {
        /* Nothing to log per connection: the peer vanished between poll and accept. */
        uv_close(&c->client.handle, (uv_close_cb)free);
        return;
    }
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
    c->over_limit = active > wl->l->cfg->max_connections;

    if (is_unix) {
        dbt_strlcpy(c->client_addr, "unix", sizeof(c->client_addr));
    } else {
        format_peer(&c->client.tcp, c->client_addr, sizeof(c->client_addr));
        uv_tcp_nodelay(&c->client.tcp, 1);
    }
    if (wl->l->cfg->protocol == CFG_PROTO_MYSQL) {
        px_my_start(c); /* the server speaks first: dial now */
        return;
    }
    c->pg = calloc(1, sizeof(*c->pg));
    if (!c->pg) {
        px_conn_close(c, DBT_INTERNAL_ERROR, "out of memory");
        return;
    }
    pg_client_init(&c->pg->client);
    pg_server_init(&c->pg->server);
    px_conn_set_timer(c, wl->l->cfg->startup_timeout_ms);
    c->client_reading = true;
    uv_read_start(&c->client.stream, px_io_alloc, on_client_read);
}

void px_conn_set_timer(struct px_conn *c, uint32_t ms)
{
    if (ms == 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_timer(uv_timer_t *t)
{
    struct px_conn *c = t->data;
    switch (c->state) {
    case PX_CONN_CLIENT_STARTUP:
        px_conn_close(c, DBT_CLIENT_TIMEOUT, "client did not finish its startup packets in time");
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
    case PX_CONN_RESOLVING:
    case PX_CONN_CONNECTING:
        px_upstream_connect_timeout(c);
        break;
    case PX_CONN_MY_GREETING:
        px_conn_fail(c, DBT_UPSTREAM_TIMEOUT, "upstream sent no greeting in time");
        break;
    case PX_CONN_MY_RESPONSE:
        px_conn_close(c, DBT_CLIENT_TIMEOUT, "client did not answer the greeting in time");
        break;
    case PX_CONN_MY_RETIRE:
        px_conn_close(c, c->reason, NULL); /* the server never answered the decoy: hang up */
        break;
    case PX_CONN_SSL_ANSWER:
    case PX_CONN_TLS_HANDSHAKE:
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
        /* MySQL relays through its machine while authentication still runs. */
        if (c->my && !my_relaying(c->my))
            px_conn_fail(c, DBT_UPSTREAM_TIMEOUT, "authentication did not finish in time");
        break;
    case PX_CONN_CLOSING:
        break;
    }
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct px_conn *c = s->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        if (c->state == PX_CONN_RELAY && nread == UV_EOF) {
            px_relay_client_eof(c);
        } else if (nread == UV_EOF) {
            px_conn_close(c, DBT_CLIENT_CLOSED, NULL);
        } else {
            px_conn_close(c, DBT_CLIENT_RESET, uv_strerror((int)nread));
        }
        return;
    }
    const uint8_t *data = (const uint8_t *)buf->base;
    c->recent_io = true;
    c->bytes_from_client += (uint64_t)nread;
    px_counter_add(&c->wl->stats.bytes_from_client, (uint64_t)nread);
    switch (c->state) {
    case PX_CONN_CLIENT_STARTUP:
        px_pg_on_client_data(c, data, (size_t)nread);
        break;
    case PX_CONN_MY_RESPONSE:
        px_my_on_client_data(c, data, (size_t)nread);
        break;
    case PX_CONN_RELAY:
        px_relay_from_client(c, data, (size_t)nread);
        break;
    default:
        /* Reads are stopped outside these states; bytes here would be a client that pipelines
         * while dbtrust dials. Keep them for after the StartupMessage. */
        if (c->pg)
            px_pg_keep_early(c, data, (size_t)nread);
        break;
    }
}

void px_client_stop_reading(struct px_conn *c)
{
    if (c->client_reading) {
        uv_read_stop(&c->client.stream);
        c->client_reading = false;
    }
}

void px_client_start_reading(struct px_conn *c)
{
    if (!c->client_reading && !c->client_eof && !c->closing) {
        c->client_reading = true;
        uv_read_start(&c->client.stream, px_io_alloc, on_client_read);
    }
}

int px_client_send(struct px_conn *c, const uint8_t *data, size_t len)
{
    /* Every byte the client gets passes here: server data, greetings and dbtrust's errors. */
    if (c->client_leg_closed)
        return 0;
    c->bytes_to_client += len;
    px_counter_add(&c->wl->stats.bytes_to_client, len);
    return px_io_send(c, &c->client.stream, &c->queued_to_client, data, len);
}

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
    char msg[900];
    uint8_t pkt[1400];
    px_error_message(c, reason, detail, msg, sizeof(msg));
    size_t n = c->my ? px_my_build_error(c, reason, msg, pkt, sizeof(pkt))
                     : px_pg_build_error(reason, msg, pkt, sizeof(pkt));
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

void px_conn_fail_with(struct px_conn *c, enum dbt_reason reason, const char *detail,
                       const uint8_t *pkt, size_t len)
{
    if (c->closing || c->state == PX_CONN_FAILING)
        return;
    px_dial_release(c);
    c->reason = reason;
    set_detail(c, detail);
    /* A cancel's client expects silence and a close (PROTOCOLS.md A4). */
    if (c->is_cancel || len == 0) {
        px_conn_close(c, reason, detail);
        return;
    }
    px_client_stop_reading(c);
    if (c->upstream_leg == PX_LEG_OPEN)
        px_upstream_stop_reading(c);
    c->state = PX_CONN_FAILING;
    px_client_send(c, pkt, len);
    if (c->closing)
        return;
    if (c->queued_to_client == 0) {
        px_conn_close(c, reason, NULL);
        return;
    }
    /* A client that never reads its error must not pin the connection. */
    px_conn_set_timer(c, 5000);
}

static void log_conn_end(struct px_conn *c)
{
    char in[24], out[24], dur[24];
    snprintf(in, sizeof(in), "%llu", (unsigned long long)c->bytes_from_client);
    snprintf(out, sizeof(out), "%llu", (unsigned long long)c->bytes_to_client);
    snprintf(dur, sizeof(dur), "%llu", (unsigned long long)(px_now_ms() - c->start_ms));
    enum dbt_reason_class cls = dbt_reason_class(c->reason);
    enum cfg_log_level lvl = cls == DBT_CLASS_OK ? CFG_LOG_INFO : CFG_LOG_WARN;
    px_log_event(lvl, "conn_end", "listener", c->wl->l->cfg->name, "client", c->client_addr, "app",
                 c->application_name, "user", c->user, "database", c->database, "upstream",
                 c->upstream_label, "tls", c->tls_up ? tlsw_conn_version(c->tls) : "", "cipher",
                 c->tls_up ? tlsw_conn_cipher(c->tls) : "", "resumed",
                 !c->tls_up                  ? ""
                 : tlsw_conn_resumed(c->tls) ? "yes"
                                             : "no",
                 "reason", dbt_reason_name(c->reason), "bytes_in", in, "bytes_out", out,
                 "duration_ms", dur, "detail", c->detail != NULL ? c->detail : "", NULL);
}

static void conn_free(struct px_conn *c)
{
    struct px_worker *w = c->w;
    log_conn_end(c);
    px_counter_add(&c->wl->stats.conns_by_reason[c->reason], 1);
    if (!c->is_cancel) /* a cancel is the same application's second socket, not a session */
        px_stats_app(&c->wl->stats, c->application_name);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->conn_count--;
    atomic_fetch_sub(&c->wl->l->active, 1);
    px_dial_release(c);
    if (c->tls)
        tlsw_conn_free(c->tls);
    if (c->addrs)
        uv_freeaddrinfo(c->addrs);
    px_pg_startup_free(c);
    px_my_free(c);
    tlsw_gen_unref(c->gen);
    free(c->detail);
    free(c);
    px_worker_conn_gone(w);
}

void px_conn_release(struct px_conn *c)
{
    if (--c->open_refs == 0)
        conn_free(c); /* the only place a connection is freed */
}

static void on_handle_closed(uv_handle_t *h)
{
    px_conn_release(h->data);
}

void px_conn_close_client_leg(struct px_conn *c)
{
    if (c->client_leg_closed)
        return;
    c->client_leg_closed = true;
    c->client_reading = false;
    uv_close(&c->client.handle, on_handle_closed);
}

void px_conn_close(struct px_conn *c, enum dbt_reason reason, const char *detail)
{
    if (c->closing)
        return;
    if (c->state != PX_CONN_FAILING) {
        c->reason = reason;
        set_detail(c, detail);
    }
    if (px_my_retire(c))
        return; /* the rest closes once the server refused the decoy login */
    c->closing = true;
    px_dial_release(c);
    c->state = PX_CONN_CLOSING;
    if (c->gai_pending)
        uv_cancel((uv_req_t *)&c->gai); /* its callback still runs and releases its ref */
    px_conn_close_client_leg(c);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    if (c->upstream_leg == PX_LEG_OPEN) {
        /* Be polite to the server: a pending TLS alert tells it why (best effort, no wait). */
        if (c->tls && tlsw_conn_pending(c->tls) > 0) {
            uint8_t alert[512];
            size_t n = tlsw_conn_take(c->tls, alert, sizeof(alert));
            uv_buf_t b = uv_buf_init((char *)alert, (unsigned)n);
            (void)uv_try_write((uv_stream_t *)&c->upstream, &b, 1);
        }
        c->upstream_leg = PX_LEG_CLOSING;
        uv_close((uv_handle_t *)&c->upstream, on_handle_closed);
    }
}
