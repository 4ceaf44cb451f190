/* The relay: a byte pipe between the plaintext client leg and the TLS upstream leg, with
 * backpressure (stop reading one side while the other has more than PX_HIGH_WATER queued) and
 * half-close in both directions. */
#include "px_conn.h"

void px_relay_start(struct px_conn *c, const uint8_t *to_client, size_t len)
{
    c->state = PX_CONN_RELAY;
    px_conn_set_timer(c, 0);
    /* Startup buffers are no longer needed: idle connections keep only their handles (and
     * not the ciphertext buffers the certificate flight grew). */
    px_pg_startup_free(c);
    tlsw_conn_trim(c->tls);
    if (len > 0)
        px_relay_to_client(c, to_client, len);
    if (!c->closing)
        px_client_start_reading(c);
}

void px_relay_from_client(struct px_conn *c, const uint8_t *data, size_t len)
{
    if (c->my)
        px_my_from_client(c, data, len); /* framed: sequence ids, change-user, RSA bridge */
    else if (px_upstream_send(c, data, len) != 0)
        return;
    if (c->closing)
        return;
    if (c->queued_to_upstream > PX_HIGH_WATER)
        px_client_stop_reading(c);
}

void px_relay_to_client(struct px_conn *c, const uint8_t *data, size_t len)
{
    if (c->my) {
        px_my_to_client(c, data, len);
        return;
    }
    px_client_send(c, data, len);
}

static void maybe_finish(struct px_conn *c)
{
    if (c->client_eof && c->upstream_eof && c->queued_to_client == 0 && c->queued_to_upstream == 0)
        px_conn_close(c, c->reason != DBT_NONE ? c->reason : DBT_CLIENT_CLOSED, NULL);
}

static void on_shutdown_done(uv_shutdown_t *req, int status)
{
    struct px_conn *c = req->data;
    (void)status;
    if (!c->closing)
        maybe_finish(c);
}

/* The client is done sending: end the TLS session (close_notify), then the TCP write side. */
void px_relay_client_eof(struct px_conn *c)
{
    c->client_eof = true;
    c->client_reading = false;
    if (c->reason == DBT_NONE)
        c->reason = DBT_CLIENT_CLOSED;
    if (!c->upstream_shut_sent && !c->upstream_eof) {
        c->upstream_shut_sent = true;
        tlsw_conn_shutdown(c->tls);
        if (px_upstream_flush(c) != 0)
            return;
        c->upstream_shutdown_req.data = c;
        uv_shutdown(&c->upstream_shutdown_req, (uv_stream_t *)&c->upstream, on_shutdown_done);
    }
    maybe_finish(c);
}

/* The upstream is done sending: pass the half-close on to the client. */
void px_relay_upstream_eof(struct px_conn *c)
{
    c->upstream_eof = true;
    px_upstream_stop_reading(c);
    if (c->reason == DBT_NONE)
        c->reason = DBT_UPSTREAM_CLOSED;
    if (!c->client_shut_sent) {
        c->client_shut_sent = true;
        c->client_shutdown_req.data = c;
        uv_shutdown(&c->client_shutdown_req, &c->client.stream, on_shutdown_done);
    }
    /* A client that already hung up gets nothing more; end now. */
    if (c->client_eof)
        maybe_finish(c);
}

/* A write finished: resume a side paused by backpressure, or finish a half-closed pipe. */
void px_relay_after_write(struct px_conn *c)
{
    if (c->state != PX_CONN_RELAY)
        return;
    if (c->queued_to_upstream <= PX_HIGH_WATER / 2)
        px_client_start_reading(c);
    if (c->queued_to_client <= PX_HIGH_WATER / 2)
        px_upstream_start_reading(c);
    maybe_finish(c);
}
