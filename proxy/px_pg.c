/* PostgreSQL startup phase: drives the pure machines of protocol/pg.c with the connection's
 * sockets (PROTOCOLS.md A7). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "px_conn.h"
#include "px_log.h"

void px_pg_startup_free(struct px_conn *c)
{
    if (!c->pg)
        return;
    free(c->pg->early);
    /* The StartupMessage buffer held no password, but the client's early bytes might (a
     * pipelining client's PasswordMessage): wipe before freeing. */
    dbt_wipe(c->pg, sizeof(*c->pg));
    free(c->pg);
    c->pg = NULL;
}

void px_pg_keep_early(struct px_conn *c, const uint8_t *data, size_t len)
{
    if (!c->pg || len == 0)
        return;
    /* Bounded: a client may not send more than one read's worth before the server speaks. */
    if (c->pg->early_len + len > PX_READ_CHUNK) {
        px_conn_fail(c, DBT_CLIENT_PROTOCOL_ERROR,
                     "client sent too much data before the server answered its startup message");
        return;
    }
    uint8_t *p = realloc(c->pg->early, c->pg->early_len + len);
    if (!p) {
        px_conn_close(c, DBT_INTERNAL_ERROR, "out of memory");
        return;
    }
    memcpy(p + c->pg->early_len, data, len);
    c->pg->early = p;
    c->pg->early_len += len;
}

void px_pg_on_client_data(struct px_conn *c, const uint8_t *data, size_t len)
{
    struct pg_client *pc = &c->pg->client;
    while (!c->closing) {
        struct pg_step st;
        size_t used = pg_client_feed(pc, data, len, &st);
        data += used;
        len -= used;
        switch (st.action) {
        case PG_NEED_MORE:
            return;
        case PG_SEND_CLIENT:
            if (px_client_send(c, st.data, st.len) != 0)
                return;
            continue;
        case PG_DIAL_UPSTREAM:
            dbt_strlcpy(c->user, pc->user, sizeof(c->user));
            dbt_strlcpy(c->database, pc->database, sizeof(c->database));
            dbt_strlcpy(c->application_name, pc->application_name, sizeof(c->application_name));
            px_client_stop_reading(c);
            px_pg_keep_early(c, data, len);
            if (c->closing)
                return;
            if (c->over_limit) {
                char detail[96];
                snprintf(detail, sizeof(detail), "max_connections (%u) reached",
                         c->wl->l->cfg->max_connections);
                px_conn_fail(c, DBT_LIMIT_REACHED, detail);
                return;
            }
            px_upstream_dial(c);
            return;
        case PG_CANCEL:
            c->is_cancel = true;
            px_client_stop_reading(c);
            px_upstream_dial(c);
            return;
        case PG_FAIL:
            /* Before a StartupMessage there is nobody to address an ErrorResponse to that
             * would display it reliably; still, a protocol-3 error is what the server sends. */
            px_conn_fail(c, st.reason, st.detail);
            return;
        case PG_CLOSE:
            px_conn_close(c, st.reason, st.detail);
            return;
        case PG_RELAY:
            return;
        }
    }
}

void px_pg_on_connected(struct px_conn *c)
{
    /* The SSLRequest goes alone; nothing may be pipelined behind it (PROTOCOLS.md A1). */
    c->state = PX_CONN_SSL_ANSWER;
    px_conn_set_timer(c, c->wl->l->cfg->handshake_timeout_ms);
    px_upstream_write_raw(c, pg_ssl_request, sizeof(pg_ssl_request));
}

void px_pg_on_ssl_answer(struct px_conn *c, const uint8_t *data, size_t len)
{
    const char *detail = NULL;
    enum dbt_reason r = pg_check_ssl_answer(data, len, &detail);
    if (r != DBT_NONE) {
        px_conn_fail(c, r, detail);
        return;
    }
    px_upstream_start_tls(c);
}

void px_pg_on_tls_ready(struct px_conn *c)
{
    struct pg_client *pc = &c->pg->client;
    if (c->is_cancel) {
        /* Forward the CancelRequest verbatim, end the TLS session and wait for the server to
         * close: the client's cancel returns only once the server has it. */
        if (px_upstream_send(c, pc->buf, pc->need) != 0)
            return;
        tlsw_conn_shutdown(c->tls);
        if (px_upstream_flush(c) != 0)
            return;
        c->state = PX_CONN_CANCEL_DRAIN;
        px_conn_set_timer(c, 5000);
        return;
    }
    c->state = PX_CONN_SERVER_STARTUP;
    if (px_upstream_send(c, pc->buf, pc->need) != 0)
        return;
    if (c->pg->early_len && px_upstream_send(c, c->pg->early, c->pg->early_len) != 0)
        return;
}

void px_pg_on_server_data(struct px_conn *c, const uint8_t *data, size_t len)
{
    struct pg_server *ps = &c->pg->server;
    while (!c->closing && c->state == PX_CONN_SERVER_STARTUP) {
        struct pg_step st;
        size_t used = pg_server_feed(ps, data, len, &st);
        data += used;
        len -= used;
        switch (st.action) {
        case PG_NEED_MORE:
            return;
        case PG_SEND_CLIENT:
            if (px_client_send(c, st.data, st.len) != 0)
                return;
            continue;
        case PG_RELAY:
            px_relay_start(c, data, len);
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

size_t px_pg_build_error(enum dbt_reason reason, const char *message, uint8_t *buf, size_t cap)
{
    const char *hint = NULL;
    if (dbt_reason_class(reason) == DBT_CLASS_TLS)
        hint = "dbtrust verifies the upstream against its CA bundle; check the bundle and the "
               "upstream host name (see dbtrust's log)";
    return pg_build_error(buf, cap, pg_sqlstate_for(reason), message, NULL, hint);
}
