/* The PostgreSQL driver: drives the pure machines of protocol/pg.c with the connection's legs
 * (PROTOCOLS.md A7). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "px_cancel.h"
#include "px_conn.h"
#include "px_drivers.h"
#include "px_log.h"
#include "px_upstream.h"
#include "wire.h"

/* Startup-phase state, freed when the relay starts so idle connections stay small. */
struct px_pg_startup {
    struct pg_client client;
    struct pg_server server;
    uint8_t *early; /* client bytes read after the StartupMessage (forwarded after it) */
    size_t early_len;
};

/* What pg_sasl_initial_flag needs at most: 'p', length, a mechanism name, length, gs2 flag. */
#define PX_PG_SASL_JUDGE 80

struct px_pg {
    struct px_pg_startup *su; /* NULL before the client's first byte and once relaying */
    /* A client refused from accept is read by this much, never by the startup machine: its
     * first packet is skipped, then it gets its refusal (PROTOCOLS.md A1: after an 'N'). */
    uint8_t refuse_hdr[8];
    uint8_t refuse_have, refuse_answers;
    uint32_t refuse_skip;
    /* A TLS client was offered SASL: its first message is judged before the relay goes raw
     * (libpq's channel_binding=prefer over TLS asks for binding the server would refuse). */
    bool judging_sasl;
    size_t sasl_len;
    uint8_t sasl[PX_PG_SASL_JUDGE];
    /* The upstream's messages from the StartupMessage on, read by their framing until the
     * login ends (ReadyForQuery or an error): login_ok, and the BackendKeyData. While it
     * watches, the relay is framed and server bytes pass through watch_login unchanged. */
    bool watching;
    struct pg_login_watch login;
    /* This session in the process's cancel map (px_cancel.c) from its login to its end. */
    struct px_cancel_entry *cancel_entry;
    /* A cancel: the server of its session, when this process knows it. */
    struct px_cancel_route cancel_route;
};

static struct px_pg *pg_of(struct px_conn *c)
{
    return c->proto;
}

static struct px_pg_startup *startup_of(struct px_conn *c)
{
    return pg_of(c) ? pg_of(c)->su : NULL;
}

static void startup_free(struct px_conn *c)
{
    struct px_pg_startup *su = startup_of(c);
    if (!su)
        return;
    pg_client_free(&su->client);
    pg_server_free(&su->server);
    free(su->early);
    /* The StartupMessage buffer held no password, but the client's early bytes might (a
     * pipelining client's PasswordMessage): wipe before freeing. */
    dbt_wipe(su, sizeof(*su));
    free(su);
    pg_of(c)->su = NULL;
}

static void pg_free(struct px_conn *c)
{
    struct px_pg *pg = pg_of(c);
    if (!pg)
        return;
    startup_free(c);
    px_cancel_forget(c->w->srv->cancels, pg->cancel_entry);
    dbt_wipe(pg, sizeof(*pg)); /* the judged bytes hold a SCRAM client nonce */
    free(pg);
    c->proto = NULL;
}

static void keep_early(struct px_conn *c, const uint8_t *data, size_t len)
{
    struct px_pg_startup *pg = startup_of(c);
    if (!pg || len == 0)
        return;
    /* Bounded: a client may not send more than one read's worth before the server speaks. */
    if (pg->early_len + len > PX_READ_CHUNK) {
        px_conn_fail(c, DBT_CLIENT_PROTOCOL_ERROR,
                     "client sent too much data before the server answered its startup message");
        return;
    }
    uint8_t *p = realloc(pg->early, pg->early_len + len);
    if (!p) {
        px_conn_close(c, DBT_INTERNAL_ERROR, "out of memory");
        return;
    }
    memcpy(p + pg->early_len, data, len);
    pg->early = p;
    pg->early_len += len;
}

static enum pg_client_tls client_tls_mode(const struct cfg_listener *l)
{
    switch (l->client_tls) {
    case CFG_CLIENT_TLS_ALLOW:
        return PG_TLS_ALLOW;
    case CFG_CLIENT_TLS_REQUIRE:
        return PG_TLS_REQUIRE;
    case CFG_CLIENT_TLS_OFF:
        break;
    }
    return PG_TLS_OFF;
}

/* Nothing is allocated before the client's first byte: a connection that sends nothing (a
 * port scan, a health probe, a slowloris) costs the connection itself. */
static void start(struct px_conn *c)
{
    px_conn_set_timer(c, c->wl->l->cfg->startup_timeout_ms);
    px_leg_start_reading(px_conn_client(c));
}

/* The startup machines, on the first byte. */
static struct px_pg_startup *startup_new(struct px_conn *c)
{
    struct px_pg *pg = pg_of(c);
    struct px_pg_startup *su = calloc(1, sizeof(*su));
    if (!su) {
        px_conn_close(c, DBT_INTERNAL_ERROR, "out of memory");
        return NULL;
    }
    pg->su = su;
    pg_client_init(&su->client);
    su->client.tls = client_tls_mode(c->wl->l->cfg);
    pg_server_init(&su->server);
    return su;
}

static void refuse(struct px_conn *c)
{
    char detail[200];
    enum dbt_reason r = px_conn_admission(c, detail, sizeof(detail));
    px_conn_fail(c, r != DBT_NONE ? r : DBT_LIMIT_REACHED, detail);
}

/* A refused client's packets, skipped by their length: SSLRequest and GSSENCRequest get 'N'
 * (an error in their place would not be shown by libpq, CVE-2024-10977), a CancelRequest
 * silence, the StartupMessage the refusal (PostgreSQL 53300) once it is all in. */
static void refuse_read(struct px_conn *c, const uint8_t *data, size_t len)
{
    struct px_pg *pg = pg_of(c);
    while (len > 0 && !px_conn_ending(c)) {
        if (pg->refuse_skip > 0) {
            size_t n = len < pg->refuse_skip ? len : pg->refuse_skip;
            pg->refuse_skip -= (uint32_t)n;
            data += n;
            len -= n;
            if (pg->refuse_skip == 0)
                refuse(c);
            continue;
        }
        if (pg->refuse_have == 0 && pg->refuse_answers == 0 && data[0] == 0x16) {
            px_conn_close(c, c->adm.refusal, "direct TLS from a refused client: closed");
            return;
        }
        size_t n = sizeof(pg->refuse_hdr) - pg->refuse_have;
        n = n < len ? n : len;
        memcpy(pg->refuse_hdr + pg->refuse_have, data, n);
        pg->refuse_have += (uint8_t)n;
        data += n;
        len -= n;
        if (pg->refuse_have < sizeof(pg->refuse_hdr))
            return;
        pg->refuse_have = 0;
        uint32_t plen = wire_be32(pg->refuse_hdr), code = wire_be32(pg->refuse_hdr + 4);
        if (plen == 8 && (code == PG_SSL_REQUEST_CODE || code == PG_GSSENC_REQUEST_CODE) &&
            pg->refuse_answers < 2) {
            pg->refuse_answers++;
            if (px_leg_send(px_conn_client(c), (const uint8_t *)"N", 1) != 0)
                return;
            continue;
        }
        if (code == PG_CANCEL_REQUEST_CODE) {
            c->is_cancel = true; /* a cancel's client expects silence and a close */
            refuse(c);
            return;
        }
        if (plen < 8 || plen > 4 + PG_MAX_STARTUP_PACKET) {
            px_conn_close(c, DBT_CLIENT_PROTOCOL_ERROR, "invalid length of startup packet");
            return;
        }
        pg->refuse_skip = plen - 8;
        if (pg->refuse_skip == 0)
            refuse(c);
    }
}

static size_t listener_index(const struct px_conn *c)
{
    return (size_t)(c->wl->l - c->w->srv->listeners);
}

/* The session is established: a CancelRequest naming its BackendKeyData - to whichever worker
 * it comes - goes to the server that holds it. */
static void remember_session(struct px_conn *c)
{
    struct px_pg *pg = pg_of(c);
    struct pg_backend_key *k = &pg->login.key;
    struct px_cancel_route route = {.upstream_idx = c->upstream_idx};
    int len = sizeof(route.addr);
    if (k->len > 0 &&
        uv_tcp_getpeername(&px_conn_upstream(c)->s.tcp, (struct sockaddr *)&route.addr, &len) == 0)
        pg->cancel_entry = px_cancel_remember(c->w->srv->cancels, listener_index(c), k->pid, k->key,
                                              k->len, &route);
    dbt_wipe(k, sizeof(*k)); /* the map has it; the key cancels this session's queries */
}

/* A CancelRequest (Int32 length, Int32 code, Int32 pid, the key): to the server of its session
 * when this process knows it; else (a session of another dbtrust replica, or one that ended) to
 * the listener's upstreams in order - the first reachable one. */
static void dial_for_cancel(struct px_conn *c)
{
    struct px_pg *pg = pg_of(c);
    size_t plen = 0;
    const uint8_t *p = pg_client_packet(&pg->su->client, &plen);
    if (p != NULL && plen > 12 &&
        px_cancel_find(c->w->srv->cancels, listener_index(c), wire_be32(p + 8), p + 12, plen - 12,
                       &pg->cancel_route)) {
        px_upstream_dial_pinned(c, pg->cancel_route.upstream_idx,
                                (const struct sockaddr *)&pg->cancel_route.addr);
        return;
    }
    px_upstream_dial(c);
}

static void on_client_data(struct px_conn *c, const uint8_t *data, size_t len)
{
    struct pg_client *pc = &startup_of(c)->client;
    struct px_leg *client = px_conn_client(c);
    while (!c->closing) {
        struct pg_step st;
        size_t used = pg_client_feed(pc, data, len, &st);
        data += used;
        len -= used;
        switch (st.action) {
        case PG_NEED_MORE:
            return;
        case PG_SEND_CLIENT:
            if (px_leg_send(client, st.data, st.len) != 0)
                return;
            continue;
        case PG_DIAL_UPSTREAM:
            dbt_strlcpy(c->user, pc->user, sizeof(c->user));
            dbt_strlcpy(c->database, pc->database, sizeof(c->database));
            dbt_strlcpy(c->application_name, pc->application_name, sizeof(c->application_name));
            px_leg_stop_reading(client);
            keep_early(c, data, len);
            if (c->closing)
                return;
            char detail[200];
            enum dbt_reason refusal = px_conn_admission(c, detail, sizeof(detail));
            if (refusal != DBT_NONE) { /* overloaded since accept */
                px_conn_fail(c, refusal, detail);
                return;
            }
            px_upstream_dial(c);
            return;
        case PG_CANCEL:
            c->is_cancel = true;
            px_leg_stop_reading(client);
            dial_for_cancel(c);
            return;
        case PG_FAIL:
            /* Before a StartupMessage there is nobody to address an ErrorResponse to that
             * would display it reliably; still, a protocol-3 error is what the server sends. */
            px_conn_fail(c, st.reason, st.detail);
            return;
        case PG_CLOSE:
            px_conn_close(c, st.reason, st.detail);
            return;
        case PG_START_TLS:
            /* 'S' alone, then the handshake; what follows it in this read is the ClientHello
             * (direct TLS: everything, nothing was consumed). */
            if (st.len > 0 && px_leg_send(client, st.data, st.len) != 0)
                return;
            px_conn_start_client_tls(c, pg_alpn, sizeof(pg_alpn), st.direct, data, len);
            return;
        case PG_RELAY:
            return;
        }
    }
}

static void on_connected(struct px_conn *c)
{
    /* Direct TLS (PostgreSQL 17+, PROTOCOLS.md A3): the ClientHello is the first byte, with
     * ALPN "postgresql"; sessions and CancelRequests alike. A server that does not speak it is
     * a failure (upstream_no_direct_tls), never a retry with an SSLRequest. */
    if (c->wl->l->cfg->sslnegotiation == CFG_SSLNEG_DIRECT) {
        c->upstream_direct = true;
        px_upstream_start_tls(c);
        return;
    }
    /* The SSLRequest goes alone; nothing may be pipelined behind it (PROTOCOLS.md A1). */
    c->state = PX_CONN_SSL_ANSWER;
    px_conn_set_timer(c, c->wl->l->cfg->handshake_timeout_ms);
    px_leg_send(px_conn_upstream(c), pg_ssl_request, sizeof(pg_ssl_request));
}

static void on_ssl_answer(struct px_conn *c, const uint8_t *data, size_t len)
{
    const char *detail = NULL;
    enum dbt_reason r = pg_check_ssl_answer(data, len, &detail);
    if (r != DBT_NONE) {
        px_conn_fail(c, r, detail);
        return;
    }
    px_upstream_start_tls(c);
}

static void on_tls_ready(struct px_conn *c, struct px_leg *leg)
{
    struct px_pg_startup *pg = startup_of(c);
    struct pg_client *pc = &pg->client;
    if (leg->side == PX_CLIENT) {
        pg_client_tls_started(pc); /* the startup packets follow, encrypted */
        return;
    }
    size_t plen = 0;
    const uint8_t *packet = pg_client_packet(pc, &plen);
    if (c->is_cancel) {
        /* Forward the CancelRequest verbatim, end the TLS session and wait for the server to
         * close: the client's cancel returns only once the server has it. */
        if (px_leg_send(leg, packet, plen) != 0)
            return;
        px_leg_shutdown(leg);
        c->state = PX_CONN_CANCEL_DRAIN;
        px_conn_set_timer(c, 5000);
        return;
    }
    c->state = PX_CONN_SERVER_STARTUP;
    pg_login_watch_init(&pg_of(c)->login);
    pg_of(c)->watching = true;
    if (px_leg_send(leg, packet, plen) != 0)
        return;
    if (pg->early_len)
        px_leg_send(leg, pg->early, pg->early_len);
}

/* Feeds the login watcher what the upstream sent, before it goes anywhere. Returns false if the
 * connection failed (framing no server sends). defer: the startup machine reads the same bytes
 * next and names the fault in its own words; a fault only the watcher sees is reported when
 * that machine hands over to the relay (on_server_data). */
static bool watch_login(struct px_conn *c, const uint8_t *data, size_t len, bool defer)
{
    struct px_pg *pg = pg_of(c);
    while (pg->watching) {
        enum pg_login_event ev;
        size_t used = pg_login_watch_feed(&pg->login, data, len, &ev);
        data += used;
        len -= used;
        switch (ev) {
        case PG_LOGIN_NEED_MORE:
            return true;
        case PG_LOGIN_AUTH_OK:
            continue;
        case PG_LOGIN_READY:
        case PG_LOGIN_ERROR: /* the login is over either way */
            if (ev == PG_LOGIN_READY) {
                c->login_ok = true;
                remember_session(c);
            }
            pg->watching = false;
            c->framed = pg->judging_sasl; /* raw again, unless the client's side still is */
            return true;
        case PG_LOGIN_INVALID:
            pg->watching = false;
            if (defer)
                return true;
            px_conn_fail(c, DBT_UPSTREAM_PROTOCOL_ERROR, pg->login.detail);
            return false;
        }
    }
    return true;
}

static void on_server_data(struct px_conn *c, const uint8_t *data, size_t len)
{
    struct pg_server *ps = &startup_of(c)->server;
    if (!watch_login(c, data, len, true))
        return;
    while (!c->closing && c->state == PX_CONN_SERVER_STARTUP) {
        struct pg_step st;
        size_t used = pg_server_feed(ps, data, len, &st);
        data += used;
        len -= used;
        switch (st.action) {
        case PG_NEED_MORE:
            return;
        case PG_SEND_CLIENT:
            if (px_leg_send(px_conn_client(c), st.data, st.len) != 0)
                return;
            continue;
        case PG_RELAY:
            if (pg_of(c)->login.state == PG_L_INVALID) { /* framing the watcher refused */
                px_conn_fail(c, DBT_UPSTREAM_PROTOCOL_ERROR, pg_of(c)->login.detail);
                return;
            }
            /* Over a TLS client leg the first SASL message is judged first (judge_sasl). */
            if (ps->sasl_offered && px_conn_client(c)->tls_up) {
                pg_of(c)->judging_sasl = true;
                c->framed = true;
            }
            /* The login goes on past the first 'R' (a password exchange): the server's
             * bytes keep passing the watcher until it ends. */
            if (pg_of(c)->watching)
                c->framed = true;
            startup_free(c); /* data points into the read buffer, not into the startup state */
            px_conn_start_relay(c, data, len);
            return;
        case PG_FAIL:
            px_conn_fail(c, st.reason, st.detail);
            return;
        default:
            px_conn_fail(c, DBT_INTERNAL_ERROR, "unexpected step from the server machine");
            return;
        }
    }
}

/* SCRAM across a TLS client leg: dbtrust strips -PLUS (the client would bind to dbtrust's
 * certificate, not the server's), so libpq with channel_binding=prefer, seeing TLS but no
 * -PLUS, sends gs2 flag 'y'; a TLS-connected server refuses that as a downgrade with a
 * confusing "channel binding negotiation error". 'y' cannot be rewritten to 'n': the gs2
 * header is signed by the client's proof. So say what to change instead. */
static void judge_sasl(struct px_conn *c, const uint8_t *data, size_t len)
{
    struct px_pg *pg = pg_of(c);
    size_t take = sizeof(pg->sasl) - pg->sasl_len;
    if (take > len)
        take = len;
    memcpy(pg->sasl + pg->sasl_len, data, take);
    pg->sasl_len += take;
    enum pg_sasl_flag f = pg_sasl_initial_flag(pg->sasl, pg->sasl_len);
    if (f == PG_SASL_NEED_MORE && pg->sasl_len < sizeof(pg->sasl))
        return;
    if (f == PG_SASL_BINDING_WANTED) {
        px_conn_fail(c, DBT_CLIENT_CHANNEL_BINDING,
                     "the client asked for SCRAM channel binding, which cannot pass through "
                     "dbtrust (it would bind to dbtrust's certificate; the server refuses it "
                     "as a downgrade): set channel_binding=disable in the connection string");
        return;
    }
    pg->judging_sasl = false;
    c->framed = pg->watching; /* the server's side may still be watched */
    struct px_leg *up = px_conn_upstream(c);
    if (px_leg_send(up, pg->sasl, pg->sasl_len) != 0)
        return;
    dbt_wipe(pg->sasl, sizeof(pg->sasl));
    pg->sasl_len = 0;
    if (len > take)
        px_leg_send(up, data + take, len - take);
}

static void on_bytes(struct px_conn *c, struct px_leg *from, const uint8_t *data, size_t len)
{
    if (c->state == PX_CONN_RELAY) { /* framed while judging SASL or watching the login */
        if (from->side == PX_CLIENT && pg_of(c)->judging_sasl)
            judge_sasl(c, data, len);
        else if (from->side == PX_CLIENT)
            px_leg_send(px_conn_upstream(c), data, len);
        else if (watch_login(c, data, len, false)) /* unchanged, once the watcher saw them */
            px_leg_send(px_conn_client(c), data, len);
        return;
    }
    if (from->side == PX_CLIENT && pg_of(c) == NULL) { /* the first byte */
        c->proto = calloc(1, sizeof(struct px_pg));
        if (c->proto == NULL) {
            px_conn_close(c, DBT_INTERNAL_ERROR, "out of memory");
            return;
        }
    }
    if (from->side == PX_CLIENT && c->adm.refusal != DBT_NONE &&
        c->state == PX_CONN_CLIENT_STARTUP) {
        refuse_read(c, data, len);
        return;
    }
    if (from->side == PX_CLIENT) {
        if (c->state == PX_CONN_CLIENT_STARTUP && startup_of(c) == NULL && !startup_new(c))
            return;
        if (c->state == PX_CONN_CLIENT_STARTUP)
            on_client_data(c, data, len);
        else /* a client that pipelines while dbtrust dials: kept for after the startup */
            keep_early(c, data, len);
        return;
    }
    if (c->state == PX_CONN_SSL_ANSWER)
        on_ssl_answer(c, data, len);
    else if (c->state == PX_CONN_SERVER_STARTUP)
        on_server_data(c, data, len);
    /* else: a cancel's server sends nothing; anything else ends with the connection */
}

static size_t build_error(struct px_conn *c, enum dbt_reason reason, const char *message,
                          uint8_t *buf, size_t cap)
{
    (void)c;
    const char *hint = NULL;
    if (reason == DBT_UPSTREAM_NO_DIRECT_TLS)
        hint = "sslnegotiation = direct needs PostgreSQL 17 or newer on every hop to the server "
               "(and any pooler or proxy in front of it); dbtrust never falls back to the "
               "SSLRequest";
    else if (dbt_reason_class(reason) == DBT_CLASS_TLS)
        hint = "dbtrust verifies the upstream against its CA bundle; check the bundle and the "
               "upstream host name (see dbtrust's log)";
    return pg_build_error(buf, cap, pg_sqlstate_for(reason), message, NULL, hint);
}

const struct px_driver px_pg_driver = {
    .name = "postgres",
    .alpn = pg_alpn,
    .alpn_len = sizeof(pg_alpn),
    .start = start,
    .on_bytes = on_bytes,
    .on_connected = on_connected,
    .on_tls_ready = on_tls_ready,
    .build_error = build_error,
    .on_close = NULL,
    .authenticating = NULL,
    .free = pg_free,
    .relay_framed = false,
};
