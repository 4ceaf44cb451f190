#include "px_io.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "px_conn.h"

void px_io_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct px_conn *c = h->data;
    (void)suggested;
    buf->base = (char *)c->w->read_buf;
    buf->len = sizeof(c->w->read_buf);
}

struct px_wreq *px_wreq_new(struct px_conn *c, size_t len)
{
    struct px_wreq *wr = malloc(sizeof(*wr) + len);
    if (!wr)
        return NULL;
    wr->c = c;
    wr->len = len;
    wr->queued = NULL;
    return wr;
}

/* One completion path for both legs: release the bytes, report a broken leg, finish a failing
 * connection once its error is written, or let the relay resume a paused side. */
static void on_write_done(uv_write_t *req, int status)
{
    struct px_wreq *wr = (struct px_wreq *)req;
    struct px_conn *c = wr->c;
    bool to_client = wr->queued == &c->queued_to_client;
    *wr->queued -= wr->len;
    free(wr);
    if (c->closing)
        return;
    if (status < 0) {
        px_conn_close(c, to_client ? DBT_CLIENT_RESET : DBT_UPSTREAM_RESET, uv_strerror(status));
        return;
    }
    if (c->state == PX_CONN_FAILING) {
        if (c->queued_to_client == 0)
            px_conn_close(c, c->reason, NULL);
        return;
    }
    px_relay_after_write(c);
}

int px_io_send_copy(struct px_conn *c, uv_stream_t *s, size_t *queued, const uint8_t *data,
                    size_t len)
{
    if (len == 0)
        return 0;
    struct px_wreq *wr = px_wreq_new(c, len);
    if (!wr) {
        px_conn_close(c, DBT_INTERNAL_ERROR, "out of memory");
        return -1;
    }
    memcpy(wr->data, data, len);
    return px_wreq_send(wr, s, queued);
}

int px_wreq_send(struct px_wreq *wr, uv_stream_t *s, size_t *queued)
{
    struct px_conn *c = wr->c;
    uv_buf_t b = uv_buf_init((char *)wr->data, (unsigned)wr->len);
    wr->queued = queued;
    *queued += wr->len;
    int rc = uv_write(&wr->req, s, &b, 1, on_write_done);
    if (rc != 0) {
        *queued -= wr->len;
        free(wr);
        px_conn_close(c, s == &c->client.stream ? DBT_CLIENT_RESET : DBT_UPSTREAM_RESET,
                      uv_strerror(rc));
        return -1;
    }
    return 0;
}
