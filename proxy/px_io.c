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

static struct px_wreq *wreq_new(struct px_worker *w, size_t len)
{
    struct px_wreq *wr;
    if (len <= PX_WBLOCK && w->free_wreqs) {
        wr = w->free_wreqs;
        w->free_wreqs = wr->next_free;
        w->free_wreq_count--;
    } else {
        size_t cap = len <= PX_WBLOCK ? PX_WBLOCK : len;
        wr = malloc(sizeof(*wr) + cap);
        if (!wr)
            return NULL;
        wr->cap = cap;
    }
    wr->len = len;
    wr->queued = NULL;
    return wr;
}

static void wreq_free(struct px_worker *w, struct px_wreq *wr)
{
    if (wr->cap == PX_WBLOCK && w->free_wreq_count < PX_WBLOCK_CACHE) {
        wr->next_free = w->free_wreqs;
        w->free_wreqs = wr;
        w->free_wreq_count++;
        return;
    }
    free(wr);
}

void px_io_worker_free(struct px_worker *w)
{
    while (w->free_wreqs) {
        struct px_wreq *wr = w->free_wreqs;
        w->free_wreqs = wr->next_free;
        free(wr);
    }
    w->free_wreq_count = 0;
}

/* One completion path for both legs: release the bytes, report a broken leg, finish a failing
 * connection once its error is written, or let the relay resume a paused side. */
static void on_write_done(uv_write_t *req, int status)
{
    struct px_wreq *wr = (struct px_wreq *)req;
    struct px_conn *c = wr->c;
    bool to_client = wr->queued == &c->queued_to_client;
    *wr->queued -= wr->len;
    wreq_free(c->w, wr);
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

static int write_failed(struct px_conn *c, uv_stream_t *s, int rc)
{
    px_conn_close(c, s == &c->client.stream ? DBT_CLIENT_RESET : DBT_UPSTREAM_RESET,
                  uv_strerror(rc));
    return -1;
}

/* Copies data into blocks and queues them behind whatever is already queued on s. */
static int queue_copy(struct px_conn *c, uv_stream_t *s, size_t *queued, const uint8_t *data,
                      size_t len)
{
    while (len > 0) {
        size_t n = len < PX_WBLOCK ? len : PX_WBLOCK;
        struct px_wreq *wr = wreq_new(c->w, n);
        if (!wr) {
            px_conn_close(c, DBT_INTERNAL_ERROR, "out of memory");
            return -1;
        }
        memcpy(wr->data, data, n);
        wr->c = c;
        wr->queued = queued;
        *queued += n;
        uv_buf_t b = uv_buf_init((char *)wr->data, (unsigned)n);
        int rc = uv_write(&wr->req, s, &b, 1, on_write_done);
        if (rc != 0) {
            *queued -= n;
            wreq_free(c->w, wr);
            return write_failed(c, s, rc);
        }
        data += n;
        len -= n;
    }
    return 0;
}

int px_io_send(struct px_conn *c, uv_stream_t *s, size_t *queued, const uint8_t *data, size_t len)
{
    if (len == 0)
        return 0;
    /* Most writes fit in the socket buffer: no copy, no allocation, no callback. libuv refuses
     * (UV_EAGAIN) while earlier writes are still queued, so order is kept. */
    if (*queued == 0) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int rc = uv_try_write(s, &b, 1);
        if (rc >= 0) {
            data += rc;
            len -= (size_t)rc;
        } else if (rc != UV_EAGAIN && rc != UV_ENOSYS) {
            return write_failed(c, s, rc);
        }
        if (len == 0)
            return 0;
    }
    return queue_copy(c, s, queued, data, len);
}
