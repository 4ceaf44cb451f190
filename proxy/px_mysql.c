/* The MySQL/MariaDB driver: drives protocol/mysql.c with the connection's legs (PROTOCOLS.md
 * part B). The server speaks first, so dbtrust dials at accept, greets the client with the
 * server's (patched) greeting, upgrades the upstream leg after the client's response, and keeps
 * both legs flowing through the machine so sequence ids, the RSA bridge and COM_CHANGE_USER
 * stay right. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "px_conn.h"
#include "px_drivers.h"
#include "px_log.h"
#include "px_upstream.h"

#define PX_MY_CONTEXT_MAX 400

struct px_my {
    struct my_session s;
    bool greeted;
    bool retiring, decoy_sent;       /* retire() */
    char context[PX_MY_CONTEXT_MAX]; /* " [listener X, upstream H:P]" for the machine's errors */
};

static struct px_my *my_of(const struct px_conn *c)
{
    return c->proto;
}

static void my_free(struct px_conn *c)
{
    struct px_my *m = my_of(c);
    if (!m)
        return;
    my_session_wipe(&m->s);
    free(m);
    c->proto = NULL;
}

static enum my_client_tls client_tls_mode(const struct cfg_listener *l)
{
    switch (l->client_tls) {
    case CFG_CLIENT_TLS_ALLOW:
        return MY_TLS_ALLOW;
    case CFG_CLIENT_TLS_REQUIRE:
        return MY_TLS_REQUIRE;
    case CFG_CLIENT_TLS_OFF:
        break;
    }
    return MY_TLS_OFF;
}

static void start(struct px_conn *c)
{
    struct px_listener *l = c->wl->l;
    /* Refused from accept (max_connections, max_startup_per_client) or overloaded: say so at
     * once, before a session, a dial or a greeting costs anything. */
    char detail[200];
    enum dbt_reason refusal = px_conn_admission(c, detail, sizeof(detail));
    if (refusal != DBT_NONE) {
        px_conn_fail(c, refusal, detail);
        return;
    }
    struct px_my *m = calloc(1, sizeof(*m));
    c->proto = m;
    struct my_config cfg = {
        .unix_socket = l->cfg->listen.is_unix,
        .rsa_key = l->rsa_key,
        .rsa_pem = l->rsa_pem,
        .context = m ? m->context : NULL,
        .client_tls = client_tls_mode(l->cfg),
    };
    if (!m || !my_session_init(&m->s, &cfg)) {
        px_conn_close(c, DBT_INTERNAL_ERROR, "cannot set up the MySQL session");
        return;
    }
    px_upstream_dial(c); /* the server speaks first: dial now */
}

static void send_decoy(struct px_conn *c)
{
    uint8_t pkt[128];
    size_t n = my_build_decoy_login(pkt, sizeof(pkt), false);
    my_of(c)->decoy_sent = true;
    if (n == 0 || px_leg_send(px_conn_upstream(c), pkt, n) != 0)
        px_conn_close(c, c->reason, NULL);
}

/* Executes steps until the machine needs more input. from_server tells which feed to call. */
static void run(struct px_conn *c, bool from_server, const uint8_t *data, size_t len)
{
    struct px_my *m = my_of(c);
    struct px_leg *client = px_conn_client(c), *up = px_conn_upstream(c);
    while (!px_conn_ending(c)) {
        struct my_step st;
        size_t used = from_server ? my_feed_server(&m->s, data, len, &st)
                                  : my_feed_client(&m->s, data, len, &st);
        data += used;
        len -= used;
        switch (st.action) {
        case MY_NEED_MORE:
            return;
        case MY_SEND_CLIENT:
            if (m->retiring) { /* the greeting, and nobody to give it to */
                send_decoy(c);
                return;
            }
            if (!m->greeted && c->state == PX_CONN_MY_GREETING) {
                /* The patched greeting: now the client may answer. */
                m->greeted = true;
                c->state = PX_CONN_MY_RESPONSE;
                px_dial_release(&c->dial); /* the TLS handshake waits for the client, not us */
                px_conn_set_timer(c, c->wl->l->cfg->startup_timeout_ms);
                px_leg_start_reading(client);
            }
            if (px_leg_send(client, st.data, st.len) != 0)
                return;
            /* The upstream's OK ending authentication (an ERR starts with 0xFF): logged in. */
            if (st.phase_end && st.len > MY_HEADER && st.data[MY_HEADER] == 0x00)
                c->login_ok = true;
            if (st.phase_end && c->state == PX_CONN_RELAY) {
                px_conn_set_timer(c, 0); /* logged in: no phase timer while relaying */
                px_conn_startup_done(c);
            }
            break;
        case MY_SEND_SERVER_PLAIN: {
            dbt_strlcpy(c->user, m->s.user, sizeof(c->user));
            dbt_strlcpy(c->database, m->s.database, sizeof(c->database));
            dbt_strlcpy(c->application_name, m->s.program_name, sizeof(c->application_name));
            /* The client answered: the upstream TLS and login would start now, unless dbtrust
             * went over its memory_limit meanwhile. */
            char detail[200];
            enum dbt_reason refusal = px_conn_admission(c, detail, sizeof(detail));
            if (refusal != DBT_NONE) {
                px_conn_fail(c, refusal, detail);
                return;
            }
            if (px_leg_send(up, st.data, st.len) != 0)
                return;
            break;
        }
        case MY_START_TLS:
            px_leg_stop_reading(client);
            px_upstream_start_tls(c);
            return;
        case MY_START_CLIENT_TLS:
            /* The client's SSLRequest: what follows it is its ClientHello. */
            px_conn_start_client_tls(c, NULL, 0, false, data, len);
            return;
        case MY_SEND_SERVER:
            if (px_leg_send(up, st.data, st.len) != 0)
                return;
            break;
        case MY_RELAY:
            if (px_leg_send(from_server ? client : up, st.data, st.len) != 0)
                return;
            break;
        case MY_FAIL:
            px_conn_fail_with(c, st.reason, st.detail, st.data, st.len);
            return;
        case MY_CLOSE: {
            /* The server refused us before any TLS (1040 too many connections, 1129 host
             * blocked...): the client gets the server's code in dbtrust's words, the log what
             * the unauthenticated server said, made safe. */
            char detail[300];
            if (my_refusal_detail(&m->s, detail, sizeof(detail)) == 0)
                dbt_strlcpy(detail, st.detail, sizeof(detail));
            px_conn_fail_with(c, st.reason, detail, st.data, st.len);
            return;
        }
        }
    }
}

static void on_connected(struct px_conn *c)
{
    snprintf(my_of(c)->context, PX_MY_CONTEXT_MAX, " [listener %s, upstream %s]",
             c->wl->l->cfg->name, c->upstream_label);
    c->state = PX_CONN_MY_GREETING;
    px_conn_set_timer(c, c->wl->l->cfg->handshake_timeout_ms);
}

static void on_tls_ready(struct px_conn *c, struct px_leg *leg)
{
    if (leg->side == PX_CLIENT) {
        /* The HandshakeResponse follows inside TLS; cleartext passwords may cross now. */
        my_client_tls_ready(&my_of(c)->s);
        return;
    }
    struct my_step st;
    my_tls_ready(&my_of(c)->s, &st);
    if (st.action != MY_SEND_SERVER) {
        px_conn_fail(c, DBT_INTERNAL_ERROR, "TLS became ready in an unexpected state");
        return;
    }
    /* From here both legs run through the machine until the end: the auth exchange is
     * re-sequenced, then relayed while COM_CHANGE_USER is watched for. */
    c->state = PX_CONN_RELAY;
    if (px_leg_send(leg, st.data, st.len) != 0)
        return;
    px_leg_start_reading(px_conn_client(c));
}

/* The client's answer ("Access denied") to the decoy: the login ended as an authentication
 * failure. Before it, the greeting. */
static void on_retire_data(struct px_conn *c, const uint8_t *data, size_t len)
{
    if (!my_of(c)->decoy_sent) {
        run(c, true, data, len);
        return;
    }
    px_conn_close(c, c->reason, NULL);
}

static void on_bytes(struct px_conn *c, struct px_leg *from, const uint8_t *data, size_t len)
{
    bool from_server = from->side == PX_UPSTREAM;
    switch (c->state) {
    case PX_CONN_RETIRING:
        if (from_server)
            on_retire_data(c, data, len);
        break;
    case PX_CONN_MY_GREETING:
    case PX_CONN_MY_RESPONSE:
    case PX_CONN_RELAY:
        if (from_server || c->state != PX_CONN_MY_GREETING)
            run(c, from_server, data, len);
        break;
    default:
        break; /* reads are stopped in the other states */
    }
}

static size_t build_error(struct px_conn *c, enum dbt_reason reason, const char *message,
                          uint8_t *buf, size_t cap)
{
    if (my_of(c) == NULL) { /* refused before any session: the client's first packet, seq 0 */
        struct my_errcode e = my_errcode_for(reason);
        return my_build_err(buf, cap, 0, e.code, e.sqlstate, message);
    }
    struct my_step st;
    my_fail(&my_of(c)->s, reason, message, &st);
    size_t n = st.len <= cap ? st.len : 0;
    if (n > 0)
        memcpy(buf, st.data, n);
    return n;
}

static bool client_caused(enum dbt_reason r)
{
    return r == DBT_CLIENT_CLOSED || r == DBT_CLIENT_RESET || r == DBT_CLIENT_TIMEOUT ||
           r == DBT_CLIENT_PROTOCOL_ERROR || dbt_reason_class(r) == DBT_CLASS_CLIENT_REFUSED;
}

/* The client left during the handshake (reason in c->reason): rather than hang up on the
 * server after its greeting, which the server counts against max_connect_errors for dbtrust's
 * address (blocking every application behind it), finish the login as an authentication
 * failure. True: the client leg is closed and the connection ends when the server answered. */
static bool retire(struct px_conn *c)
{
    struct px_my *m = my_of(c);
    struct px_leg *up = px_conn_upstream(c);
    /* Only before TLS: after it, the login is dbtrust's own and ends as the server says. */
    if (m == NULL || m->retiring || up->tls != NULL || up->state != PX_LEG_OPEN ||
        c->connected_ns == 0 || !client_caused(c->reason))
        return false;
    m->retiring = true;
    px_dial_release(&c->dial);
    px_leg_close(px_conn_client(c));
    c->state = PX_CONN_RETIRING;
    up->halted = false; /* a failing connection had stopped delivering from it */
    px_leg_start_reading(up);
    px_conn_set_timer(c, c->wl->l->cfg->handshake_timeout_ms);
    if (m->greeted)
        send_decoy(c); /* else the greeting is on its way: run() answers it */
    return true;
}

static bool authenticating(const struct px_conn *c)
{
    return my_of(c) != NULL && !my_relaying(&my_of(c)->s);
}

const struct px_driver px_my_driver = {
    .name = "mysql",
    .alpn = NULL, /* MySQL has no ALPN name */
    .alpn_len = 0,
    .start = start,
    .on_bytes = on_bytes,
    .on_connected = on_connected,
    .on_tls_ready = on_tls_ready,
    .build_error = build_error,
    .on_close = retire,
    .authenticating = authenticating,
    .free = my_free,
    .relay_framed = true,
};
