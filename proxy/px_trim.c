#include "px_trim.h"

#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

/* A burst of closes (each close_notify and last read takes 16 KiB TLS record buffers for a
 * moment) leaves glibc's arenas fragmented, holding more than with the connections open (2000
 * closed at once: 54 -> 98 MiB resident). After this many closes the free pages go back. */
#define TRIM_AFTER_CLOSES 64
#define TRIM_CHECK_MS     5000

struct px_trim {
    uv_timer_t timer;
    struct px_server *srv;
};

static void on_timer(uv_timer_t *t)
{
    struct px_trim *tr = t->data;
    if (atomic_load(&tr->srv->closed_since_trim) < TRIM_AFTER_CLOSES)
        return;
    atomic_store(&tr->srv->closed_since_trim, 0);
#ifdef __GLIBC__
    /* Workers keep running meanwhile; one allocating from the arena being trimmed waits for
     * that arena only. */
    malloc_trim(0);
#endif
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

int px_trim_start(struct px_server *srv, uv_loop_t *loop)
{
    struct px_trim *tr = calloc(1, sizeof(*tr));
    if (!tr)
        return UV_ENOMEM;
    tr->srv = srv;
    uv_timer_init(loop, &tr->timer);
    tr->timer.data = tr;
    uv_timer_start(&tr->timer, on_timer, TRIM_CHECK_MS, TRIM_CHECK_MS);
    srv->trim = tr;
    return 0;
}

void px_trim_stop(struct px_server *srv)
{
    if (!srv->trim)
        return;
    uv_close((uv_handle_t *)&srv->trim->timer, on_closed);
    srv->trim = NULL;
}
