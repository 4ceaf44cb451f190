#include "px_overload.h"

#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "px_log.h"

#define SAMPLE_MS 25 /* a flood accepts thousands of connections per 100 ms */
/* The marks sit below memory_limit: what is already in flight when a sample sees the high
 * mark (connections mid-handshake, buffers of a burst) lands under the limit itself. */
#define HIGH_WATER_PCT 90
#define LOW_WATER_PCT  75
/* What one more connection may cost before the next sample, pessimistically: dbtrust's part
 * of a connection before login is 2-4 KiB, the kernel's socket and buffers a few more, a TLS
 * handshake in progress up to ~40 KiB. */
#define ACCEPT_COST (24 * 1024)
/* While overloaded, give freed heap back to the system this often: closed connections leave
 * glibc's arenas holding pages, and resident memory would never fall below the low-water mark. */
#define TRIM_EVERY_MS 1000

struct px_overload {
    struct px_server *srv;
    uv_timer_t timer;
    int statm_fd;
    int usage_fd;       /* the cgroup's memory usage file, or -1 */
    uint64_t high, low; /* bytes */
    uint64_t last_trim_ms;
};

/* What the budget is held against: with a limit taken from the cgroup, the cgroup's own
 * usage, which is what its OOM killer compares (it also charges socket buffers and other
 * kernel memory that resident memory does not show); else resident bytes. 0 on failure. */
static uint64_t resident_bytes(struct px_overload *o)
{
    if (o->usage_fd >= 0) {
        char buf[64];
        ssize_t n = pread(o->usage_fd, buf, sizeof(buf) - 1, 0);
        unsigned long long usage;
        if (n > 0) {
            buf[n] = '\0';
            if (sscanf(buf, "%llu", &usage) == 1)
                return usage;
        }
    }
    char buf[128];
    ssize_t n = pread(o->statm_fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    unsigned long long size, resident;
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2)
        return 0;
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void wake_workers(struct px_server *srv)
{
    for (unsigned i = 0; i < srv->worker_count; i++)
        uv_async_send(&srv->workers[i].wakeup);
}

static void on_sample(uv_timer_t *t)
{
    struct px_overload *o = t->data;
    struct px_server *srv = o->srv;
    uint64_t rss = resident_bytes(o);
    if (rss == 0)
        return;
    bool overloaded = atomic_load(&srv->overloaded);
    long long allowance = rss < o->high ? (long long)((o->high - rss) / ACCEPT_COST) : 0;
    long long before = atomic_exchange(&srv->accept_allowance, allowance);
    if (before <= 0 && allowance > 0 && !overloaded)
        wake_workers(srv); /* listeners paused for want of allowance resume */
    char mib[24], limit[24];
    snprintf(mib, sizeof(mib), "%llu", (unsigned long long)(rss >> 20));
    snprintf(limit, sizeof(limit), "%llu", (unsigned long long)(srv->cfg->memory_limit >> 20));
    if (!overloaded && rss > o->high) {
        atomic_store(&srv->overloaded, true);
        px_log_event(CFG_LOG_WARN, "overloaded", "state", "on", "resident_mib", mib,
                     "memory_limit_mib", limit, "detail",
                     "new connections paused and pending startups refused; established sessions "
                     "continue",
                     NULL);
    } else if (overloaded && rss < o->low) {
        atomic_store(&srv->overloaded, false);
        px_log_event(CFG_LOG_INFO, "overloaded", "state", "off", "resident_mib", mib,
                     "memory_limit_mib", limit, "detail", "accepting again", NULL);
        wake_workers(srv); /* each resumes its paused listeners */
    }
#ifdef __GLIBC__
    uint64_t now = uv_now(t->loop);
    if (atomic_load(&srv->overloaded) && now - o->last_trim_ms >= TRIM_EVERY_MS) {
        o->last_trim_ms = now;
        malloc_trim(0);
    }
#endif
}

int px_overload_start(struct px_server *srv, uv_loop_t *loop)
{
    if (srv->cfg->memory_limit <= 0)
        return 0;
    struct px_overload *o = calloc(1, sizeof(*o));
    if (!o)
        return UV_ENOMEM;
    o->statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (o->statm_fd < 0) {
        px_log(CFG_LOG_WARN, "memory_limit: cannot read /proc/self/statm; no overload budget");
        free(o);
        return 0;
    }
    o->srv = srv;
    o->usage_fd = -1;
    char usage[4200];
    if (srv->cfg->memory_limit_auto && cfg_cgroup_memory_usage_path(usage, sizeof(usage)) == 0)
        o->usage_fd = open(usage, O_RDONLY | O_CLOEXEC);
    o->high = (uint64_t)srv->cfg->memory_limit / 100 * HIGH_WATER_PCT;
    o->low = (uint64_t)srv->cfg->memory_limit / 100 * LOW_WATER_PCT;
    uv_timer_init(loop, &o->timer);
    o->timer.data = o;
    uv_timer_start(&o->timer, on_sample, SAMPLE_MS, SAMPLE_MS);
    uv_unref((uv_handle_t *)&o->timer); /* never what keeps the main loop alive */
    srv->overload = o;
    atomic_store(&srv->accept_allowance, (long long)(o->high / ACCEPT_COST));
    srv->accept_budgeted = true;
    char limit[24];
    snprintf(limit, sizeof(limit), "%llu", (unsigned long long)(srv->cfg->memory_limit >> 20));
    px_log_event(CFG_LOG_INFO, "memory_limit", "memory_limit_mib", limit, "source",
                 srv->cfg->memory_limit_auto ? "cgroup (90 % of its limit)" : "configuration",
                 NULL);
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    struct px_overload *o = h->data;
    close(o->statm_fd);
    if (o->usage_fd >= 0)
        close(o->usage_fd);
    free(o);
}

void px_overload_stop(struct px_server *srv)
{
    struct px_overload *o = srv->overload;
    if (!o)
        return;
    srv->overload = NULL;
    uv_close((uv_handle_t *)&o->timer, on_closed);
}
