/* Small I/O helpers shared by both legs: the worker's read buffer and write requests that own
 * their bytes. */
#ifndef PX_IO_H
#define PX_IO_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct px_conn;

struct px_wreq {
    uv_write_t req;
    struct px_conn *c;
    size_t len;
    size_t *queued; /* the counter this write adds to until its callback */
    uint8_t data[];
};

/* Read allocation: the worker's scratch buffer (consumed synchronously by read callbacks). */
void px_io_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

struct px_wreq *px_wreq_new(struct px_conn *c, size_t len);
/* Queues wr on s; adds wr->len to *queued until the write completes. Returns 0, or -1 after
 * closing the connection on a write error. */
int px_wreq_send(struct px_wreq *wr, uv_stream_t *s, size_t *queued);
/* Copies data into a new write request and queues it. Returns 0 or -1 (connection closed). */
int px_io_send_copy(struct px_conn *c, uv_stream_t *s, size_t *queued, const uint8_t *data,
                    size_t len);

#endif
