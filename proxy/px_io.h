/* Small I/O helpers shared by both legs: the worker's scratch buffers and writes that try the
 * socket first and copy only what it did not take. */
#ifndef PX_IO_H
#define PX_IO_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct px_conn;
struct px_worker;

/* Queued bytes live in blocks of this size (one block per queued write, up to this much). A
 * worker keeps a few freed blocks for reuse: with glibc, malloc/free of 64 KiB blocks on worker
 * threads trims and faults pages on every write. */
#define PX_WBLOCK       (80 * 1024)
#define PX_WBLOCK_CACHE 32

struct px_wreq {
    uv_write_t req;
    struct px_conn *c;
    struct px_wreq *next_free; /* in the worker's cache */
    size_t cap;
    size_t len;
    size_t *queued; /* the counter this write adds to until its callback */
    uint8_t data[];
};

/* Read allocation: the worker's scratch buffer (consumed synchronously by read callbacks). */
void px_io_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

/* Writes data to s: straight to the socket when nothing is queued on it, the rest copied and
 * queued (added to *queued until written). Returns 0, or -1 after closing the connection on a
 * write error. */
int px_io_send(struct px_conn *c, uv_stream_t *s, size_t *queued, const uint8_t *data, size_t len);

/* Frees the worker's cached blocks (at worker exit). */
void px_io_worker_free(struct px_worker *w);

#endif
