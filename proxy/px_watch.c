#include "px_watch.h"

#include <assert.h>
#include <libgen.h>
#include <string.h>

#include "dbt_util.h"
#include "px_log.h"

/* Events from a directory come in bursts (a ConfigMap or Secret update is several renames):
 * wait this long after the last one, then reload once. */
#define SETTLE_MS 100

static void on_settled(uv_timer_t *t)
{
    struct px_watch *w = t->data;
    w->reload(w->arg, "watch");
}

static void on_dir_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    struct px_watch *w = h->data;
    (void)filename;
    (void)events;
    if (status < 0) {
        px_log(CFG_LOG_WARN, "watching %s failed: %s (the poll still runs)",
               w->dirs[h - w->dir_events], uv_strerror(status));
        return;
    }
    uv_timer_start(&w->settle_timer, on_settled, SETTLE_MS, 0); /* restarts: after the last */
}

static void on_poll(uv_timer_t *t)
{
    struct px_watch *w = t->data;
    w->reload(w->arg, "poll");
}

/* The directory, not the file: a Kubernetes ConfigMap or Secret volume update swaps the
 * "..data" symlink, and an editor renames over the file; a watch on the old inode would never
 * fire again. */
static void watch_dir(struct px_watch *w, uv_loop_t *loop, const char *path)
{
    if (path[0] == '\0')
        return;
    char tmp[4096];
    dbt_strlcpy(tmp, path, sizeof(tmp));
    const char *dir = dirname(tmp); /* may point into tmp or at a static "." */
    for (size_t i = 0; i < w->dir_count; i++)
        if (strcmp(w->dirs[i], dir) == 0)
            return;
    dbt_strlcpy(w->dirs[w->dir_count], dir, sizeof(w->dirs[0]));
    uv_fs_event_t *ev = &w->dir_events[w->dir_count++];
    uv_fs_event_init(loop, ev);
    ev->data = w;
    w->open_handles++; /* initialised: closed by px_watch_close even if it never started */
    int rc = uv_fs_event_start(ev, on_dir_event, dir, 0);
    if (rc != 0)
        px_log(CFG_LOG_WARN, "cannot watch %s: %s (reload by poll and SIGHUP only)", dir,
               uv_strerror(rc));
}

void px_watch_start(struct px_watch *w, uv_loop_t *loop, const char *const *paths, size_t n,
                    uint32_t poll_ms, px_watch_reload_cb reload, void *arg)
{
    /* A fixed bound, not an error path: callers pass a constant number of files. */
    assert(n <= PX_WATCH_MAX_FILES);
    w->dir_count = 0;
    w->open_handles = 0;
    w->closing = false;
    w->reload = reload;
    w->freed = NULL;
    w->arg = arg;
    for (size_t i = 0; i < n; i++)
        watch_dir(w, loop, paths[i]);
    uv_timer_init(loop, &w->settle_timer);
    uv_timer_init(loop, &w->poll_timer);
    w->settle_timer.data = w->poll_timer.data = w;
    w->open_handles += 2;
    uv_timer_start(&w->poll_timer, on_poll, poll_ms, poll_ms);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct px_watch *w = h->data;
    /* libuv runs close callbacks in no promised order: the last one releases the owner, and w
     * (inside the owner's memory) is not touched after that. */
    if (--w->open_handles == 0)
        w->freed(w->arg);
}

void px_watch_close(struct px_watch *w, px_watch_freed_cb freed)
{
    if (w->closing)
        return;
    w->closing = true;
    w->freed = freed;
    for (size_t i = 0; i < w->dir_count; i++)
        uv_close((uv_handle_t *)&w->dir_events[i], on_handle_closed);
    uv_close((uv_handle_t *)&w->settle_timer, on_handle_closed);
    uv_close((uv_handle_t *)&w->poll_timer, on_handle_closed);
}
