#include "px_io.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "px.h"

struct px_wreq {
    uv_write_t req;
    struct px_io_target t;
    struct px_wreq *next_free; /* in the worker's cache */
    size_t cap;
    size_t len;
    uint8_t data[];
};

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

static void on_write_done(uv_write_t *req, int status)
{
    struct px_wreq *wr = (struct px_wreq *)req;
    struct px_io_target t = wr->t;
    size_t len = wr->len;
    *t.queued -= len;
    wreq_free(t.w, wr);
    t.done(t.arg, len, status);
}

/* Copies data into blocks and queues them behind whatever is already queued on the stream. */
static int queue_copy(const struct px_io_target *t, const uint8_t *data, size_t len)
{
    while (len > 0) {
        size_t n = len < PX_WBLOCK ? len : PX_WBLOCK;
        struct px_wreq *wr = wreq_new(t->w, n);
        if (!wr)
            return UV_ENOMEM;
        memcpy(wr->data, data, n);
        wr->t = *t;
        *t->queued += n;
        uv_buf_t b = uv_buf_init((char *)wr->data, (unsigned)n);
        int rc = uv_write(&wr->req, t->stream, &b, 1, on_write_done);
        if (rc != 0) {
            *t->queued -= n;
            wreq_free(t->w, wr);
            return rc;
        }
        data += n;
        len -= n;
    }
    return 0;
}

int px_io_send(const struct px_io_target *t, const uint8_t *data, size_t len)
{
    if (len == 0)
        return 0;
    /* Most writes fit in the socket buffer: no copy, no allocation, no callback. libuv refuses
     * (UV_EAGAIN) while earlier writes are still queued, so order is kept. */
    if (*t->queued == 0) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int rc = uv_try_write(t->stream, &b, 1);
        if (rc >= 0) {
            data += rc;
            len -= (size_t)rc;
        } else if (rc != UV_EAGAIN && rc != UV_ENOSYS) {
            return rc;
        }
        if (len == 0)
            return 0;
    }
    return queue_copy(t, data, len);
}
