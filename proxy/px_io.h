/* Queued writes on a stream: try the socket first, copy only what it did not take, into blocks
 * a worker keeps for reuse. Knows nothing of connections or legs: completion is reported to the
 * callback the writer passed. */
#ifndef PX_IO_H
#define PX_IO_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "dbt_util.h"

struct px_worker;

/* Queued bytes live in blocks of this size (one block per queued write, up to this much). A
 * worker keeps a few freed blocks for reuse: with glibc, malloc/free of 64 KiB blocks on worker
 * threads trims and faults pages on every write. */
#define PX_WBLOCK       (80 * 1024)
#define PX_WBLOCK_CACHE 32

/* A queued write finished (status < 0: the stream broke); len bytes left the queue. */
typedef void (*px_io_done_cb)(void *arg, size_t len, int status);

/* Where a write goes and whom its completion is reported to. */
struct px_io_target {
    struct px_worker *w; /* owner of the block cache */
    uv_stream_t *stream;
    size_t *queued; /* bytes handed over and not yet written; added to until completion */
    px_io_done_cb done;
    void *arg;
};

/* Writes data: straight to the socket when nothing is queued on it, the rest copied and queued.
 * Returns 0, or a negative uv error when the write failed at once (nothing is reported to the
 * callback then). */
DBT_MUST_USE int px_io_send(const struct px_io_target *t, const uint8_t *data, size_t len);

/* Frees the worker's cached blocks (at worker exit). */
void px_io_worker_free(struct px_worker *w);

#endif
