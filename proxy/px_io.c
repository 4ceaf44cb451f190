#include "px_io.h"

#include <stdlib.h>

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

int px_wreq_send(struct px_wreq *wr, uv_stream_t *s, uv_write_cb on_done, size_t *queued)
{
    struct px_conn *c = wr->c;
    uv_buf_t b = uv_buf_init((char *)wr->data, (unsigned)wr->len);
    wr->queued = queued;
    *queued += wr->len;
    int rc = uv_write(&wr->req, s, &b, 1, on_done);
    if (rc != 0) {
        *queued -= wr->len;
        free(wr);
        px_conn_close(c, s == (uv_stream_t *)&c->client ? DBT_CLIENT_RESET : DBT_UPSTREAM_RESET,
                      uv_strerror(rc));
        return -1;
    }
    return 0;
}
