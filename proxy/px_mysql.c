/* MySQL/MariaDB: drives protocol/mysql.c with the connection's sockets (PROTOCOLS.md part B).
 * The server speaks first, so dbtrust dials at accept, greets the client with the server's
 * (patched) greeting, upgrades the upstream leg after the client's response, and keeps both legs
 * flowing through the machine so sequence ids, the RSA bridge and COM_CHANGE_USER stay right. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "px_conn.h"
#include "px_log.h"

int px_my_start(struct px_conn *c)
{
    struct px_listener *l = c->wl->l;
    c->my = malloc(sizeof(*c->my));
    c->my_context = calloc(1, PX_MY_CONTEXT_MAX);
    struct my_config cfg = {
        .unix_socket = l->cfg->listen.is_unix,
        .rsa_key = l->rsa_key,
        .rsa_pem = l->rsa_pem,
        .context = c->my_context,
    };
    if (!c->my || !c->my_context || !my_session_init(c->my, &cfg)) {
        px_conn_close(c, DBT_INTERNAL_ERROR, "cannot set up the MySQL session");
        return -1;
    }
    if (c->over_limit) {
        char detail[96];
        snprintf(detail, sizeof(detail), "max_connections (%u) reached", l->cfg->max_connections);
        px_conn_fail(c, DBT_LIMIT_REACHED, detail);
        return -1;
    }
    px_upstream_dial(c);
    return 0;
}

void px_my_free(struct px_conn *c)
{
    free(c->my_context);
    c->my_context = NULL;
    if (!c->my)
        return;
    my_session_wipe(c->my);
    free(c->my);
    c->my = NULL;
}

static void send_decoy(struct px_conn *c)
{
    uint8_t pkt[128];
    size_t n = my_build_decoy_login(pkt, sizeof(pkt), false);
    c->my_decoy_sent = true;
    if (n == 0 || px_upstream_write_raw(c, pkt, n) != 0)
        px_conn_close(c, c->reason, NULL);
}

/* Executes steps until the machine needs more input. from_server tells which feed to call. */
static void run(struct px_conn *c, bool from_server, const uint8_t *data, size_t len)
{
    while (!c->closing && c->state != PX_CONN_FAILING) {
        struct my_step st;
        size_t used = from_server ? my_feed_server(c->my, data, len, &st)
                                  : my_feed_client(c->my, data, len, &st);
        data += used;
        len -= used;
        switch (st.action) {
        case MY_NEED_MORE:
            return;
        case MY_SEND_CLIENT:
            if (c->my_retiring) { /* the greeting, and nobody to give it to */
                send_decoy(c);
                return;
            }
            if (!c->my_greeted && c->state == PX_CONN_MY_GREETING) {
                /* The patched greeting: now the client may answer. */
                c->my_greeted = true;
                c->state = PX_CONN_MY_RESPONSE;
                px_dial_release(c); /* the TLS handshake waits for the client, not for us */
                px_conn_set_timer(c, c->wl->l->cfg->startup_timeout_ms);
                px_client_start_reading(c);
            }
            if (px_client_send(c, st.data, st.len) != 0)
                return;
            if (st.phase_end && c->state == PX_CONN_RELAY)
                px_conn_set_timer(c, 0); /* logged in: no phase timer while relaying */
            break;
        case MY_SEND_SERVER_PLAIN:
            dbt_strlcpy(c->user, c->my->user, sizeof(c->user));
            dbt_strlcpy(c->database, c->my->database, sizeof(c->database));
            dbt_strlcpy(c->application_name, c->my->program_name, sizeof(c->application_name));
            if (px_upstream_write_raw(c, st.data, st.len) != 0)
                return;
            break;
        case MY_START_TLS:
            px_client_stop_reading(c);
            px_upstream_start_tls(c);
            return;
        case MY_SEND_SERVER:
            if (px_upstream_send(c, st.data, st.len) != 0)
                return;
            break;
        case MY_RELAY:
            if (from_server) {
                if (px_client_send(c, st.data, st.len) != 0)
                    return;
            } else if (px_upstream_send(c, st.data, st.len) != 0) {
                return;
            }
            break;
        case MY_FAIL:
            px_conn_fail_with(c, st.reason, st.detail, st.data, st.len);
            return;
        case MY_CLOSE:
            /* The server refused us before any TLS (1040 too many connections, 1129 host
             * blocked...): its ERR greeting is forwarded as is so the client sees why. */
            px_conn_fail_with(c, DBT_UPSTREAM_REFUSED_TLS,
                              "upstream answered with an error greeting", st.data, st.len);
            return;
        }
    }
}

void px_my_on_connected(struct px_conn *c)
{
    snprintf(c->my_context, PX_MY_CONTEXT_MAX, " [listener %s, upstream %s]", c->wl->l->cfg->name,
             c->upstream_label);
    c->state = PX_CONN_MY_GREETING;
    px_conn_set_timer(c, c->wl->l->cfg->handshake_timeout_ms);
}

void px_my_on_server_plain(struct px_conn *c, const uint8_t *data, size_t len)
{
    run(c, true, data, len);
}

void px_my_on_client_data(struct px_conn *c, const uint8_t *data, size_t len)
{
    run(c, false, data, len);
}

void px_my_on_tls_ready(struct px_conn *c)
{
    struct my_step st;
    my_tls_ready(c->my, &st);
    if (st.action != MY_SEND_SERVER) {
        px_conn_fail(c, DBT_INTERNAL_ERROR, "TLS became ready in an unexpected state");
        return;
    }
    /* From here both legs run through the machine until the end: the auth exchange is
     * re-sequenced, then relayed while COM_CHANGE_USER is watched for. */
    c->state = PX_CONN_RELAY;
    px_pg_startup_free(c);
    if (px_upstream_send(c, st.data, st.len) != 0)
        return;
    px_client_start_reading(c);
}

void px_my_from_client(struct px_conn *c, const uint8_t *data, size_t len)
{
    run(c, false, data, len);
}

void px_my_to_client(struct px_conn *c, const uint8_t *data, size_t len)
{
    run(c, true, data, len);
}

size_t px_my_build_error(struct px_conn *c, enum dbt_reason reason, const char *message,
                         uint8_t *buf, size_t cap)
{
    struct my_step st;
    my_fail(c->my, reason, message, &st);
    size_t n = st.len <= cap ? st.len : 0;
    if (n > 0)
        memcpy(buf, st.data, n);
    return n;
}

static bool client_caused(enum dbt_reason r)
{
    return r == DBT_CLIENT_CLOSED || r == DBT_CLIENT_RESET || r == DBT_CLIENT_TIMEOUT ||
           r == DBT_CLIENT_PROTOCOL_ERROR;
}

bool px_my_retire(struct px_conn *c)
{
    /* Only before TLS: after it, the login is dbtrust's own and ends as the server says. */
    if (c->my == NULL || c->my_retiring || c->tls != NULL || c->upstream_leg != PX_LEG_OPEN ||
        c->connected_ns == 0 || !client_caused(c->reason))
        return false;
    c->my_retiring = true;
    px_dial_release(c);
    px_conn_close_client_leg(c);
    c->state = PX_CONN_MY_RETIRE;
    px_upstream_start_reading(c); /* a failing connection had stopped reading it */
    px_conn_set_timer(c, c->wl->l->cfg->handshake_timeout_ms);
    if (c->my_greeted)
        send_decoy(c); /* else the greeting is on its way: run() answers it */
    return true;
}

void px_my_on_retire_data(struct px_conn *c, const uint8_t *data, size_t len)
{
    if (!c->my_decoy_sent) {
        run(c, true, data, len); /* the greeting */
        return;
    }
    /* Its answer ("Access denied"): the login ended as an authentication failure. */
    px_conn_close(c, c->reason, NULL);
}
