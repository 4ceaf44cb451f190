/* When to reload a set of files: the triggers shared by the CA bundle (px_reload.c) and the
 * serving identity (px_client_id.c). A watch on each file's directory, a settle timer after a
 * burst of directory events, and a content-hash poll. What a reload is stays with the owner:
 * this module only calls reload(arg, trigger) with trigger "watch" (a burst settled) or "poll"
 * (every poll_ms), and knows nothing of its callers. Main loop only. */
#ifndef PX_WATCH_H
#define PX_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Files one owner reloads together (a certificate, its key and a client CA). */
#define PX_WATCH_MAX_FILES 3

typedef void (*px_watch_reload_cb)(void *arg, const char *trigger);
typedef void (*px_watch_freed_cb)(void *arg);

/* Embedded in its owner: the uv handles live inside it, so the owner's memory may be released
 * only once they have all closed, which px_watch_close reports through freed. */
struct px_watch {
    uv_fs_event_t dir_events[PX_WATCH_MAX_FILES]; /* one per distinct directory */
    char dirs[PX_WATCH_MAX_FILES][4096];
    size_t dir_count;
    uv_timer_t settle_timer;
    uv_timer_t poll_timer;
    px_watch_reload_cb reload;
    px_watch_freed_cb freed;
    void *arg;
    int open_handles; /* freed runs when the last one has closed */
    bool closing;
};

/* Starts the triggers for paths[0..n) (n <= PX_WATCH_MAX_FILES; empty paths are skipped, files
 * sharing a directory share its watch). A directory that cannot be watched is logged and left to
 * the poll. Cannot fail; every handle it opens is closed by px_watch_close. */
void px_watch_start(struct px_watch *w, uv_loop_t *loop, const char *const *paths, size_t n,
                    uint32_t poll_ms, px_watch_reload_cb reload, void *arg);
/* Stops the triggers (reload is not called again) and closes the handles; freed(arg) runs from
 * the last close callback, the one point where the owner may release the memory holding w.
 * Idempotent until then: a second call does nothing. */
void px_watch_close(struct px_watch *w, px_watch_freed_cb freed);

#endif
