#include "px_log.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define LINE_MAX_BYTES 4096

static enum cfg_log_level min_level = CFG_LOG_INFO;
static enum cfg_log_format log_format = CFG_LOG_TEXT;

static const char *level_name(enum cfg_log_level l)
{
    switch (l) {
    case CFG_LOG_DEBUG:
        return "debug";
    case CFG_LOG_INFO:
        return "info";
    case CFG_LOG_WARN:
        return "warn";
    case CFG_LOG_ERROR:
        return "error";
    }
    return "info";
}

void px_log_setup(enum cfg_log_level level, enum cfg_log_format format)
{
    min_level = level;
    log_format = format;
}

int px_log_enabled(enum cfg_log_level level)
{
    return level >= min_level;
}

struct line {
    char buf[LINE_MAX_BYTES];
    size_t len;
};

static void put(struct line *l, const char *s, size_t n)
{
    size_t room = sizeof(l->buf) - 2 - l->len; /* keep room for "\n" */
    if (n > room)
        n = room;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

#define TS_CAP 80

static void timestamp(char buf[static TS_CAP])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(buf, TS_CAP, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

static void start_line(struct line *l, enum cfg_log_level level)
{
    char ts[TS_CAP];
    timestamp(ts);
    l->len = (size_t)snprintf(l->buf, sizeof(l->buf), "%s %s ", ts, level_name(level));
}

/* ---- JSON lines (log_format = json): built and escaped by jansson ---- */

/* A JSON string of v. Values can come from clients (application_name) or certificates and need
 * not be UTF-8, which JSON requires: such bytes are written as \xNN text instead. */
static json_t *json_text(const char *v)
{
    json_t *j = json_string(v);
    if (j)
        return j;
    char safe[LINE_MAX_BYTES];
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)v; *p && n + 5 < sizeof(safe); p++) {
        if (*p < 0x80)
            safe[n++] = (char)*p;
        else
            n += (size_t)snprintf(safe + n, sizeof(safe) - n, "\\x%02x", *p);
    }
    safe[n] = '\0';
    return json_string(safe);
}

static json_t *json_start(enum cfg_log_level level)
{
    char ts[TS_CAP];
    timestamp(ts);
    return json_pack("{s:s, s:s}", "ts", ts, "level", level_name(level));
}

/* Where a finished line goes: emit() for every producer, or the writer thread's own direct
 * write for the line that reports drops (it must not queue behind what it reports on). */
typedef void (*line_sink)(const char *s, size_t n);

static void emit(const char *s, size_t n);

/* One line, as for text. Over-long values are cut by the text path's limit first. */
static void json_finish(json_t *obj, line_sink sink)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(obj);
    if (!text)
        return;
    size_t n = strlen(text);
    text[n] = '\n';
    sink(text, n + 1); /* the NUL's byte holds the newline */
    free(text);
}

static void finish_line(struct line *l, line_sink sink)
{
    l->buf[l->len++] = '\n';
    sink(l->buf, l->len);
}

void px_log(enum cfg_log_level level, const char *fmt, ...)
{
    if (!px_log_enabled(level))
        return;
    struct line l;
    start_line(&l, level);
    va_list ap;
    va_start(ap, fmt);
    if (log_format == CFG_LOG_JSON) {
        char msg[LINE_MAX_BYTES];
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        json_t *obj = json_start(level);
        if (obj)
            json_object_set_new(obj, "msg", json_text(msg));
        json_finish(obj, emit);
        return;
    }
    int n = vsnprintf(l.buf + l.len, sizeof(l.buf) - 2 - l.len, fmt, ap);
    va_end(ap);
    if (n > 0)
        l.len += (size_t)n < sizeof(l.buf) - 2 - l.len ? (size_t)n : sizeof(l.buf) - 3 - l.len;
    finish_line(&l, emit);
}

static bool needs_quotes(const char *v)
{
    if (*v == '\0')
        return true;
    for (const char *p = v; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || (unsigned char)*p == 0x7f)
            return true;
    return false;
}

/* logfmt value: quoted when it holds spaces or specials; control bytes become \xNN so a client
 * cannot forge log lines through its application_name. */
static void put_value(struct line *l, const char *v)
{
    if (!needs_quotes(v)) {
        puts_(l, v);
        return;
    }
    put(l, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        char esc[5];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            put(l, esc, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof(esc), "\\x%02x", *p);
            put(l, esc, 4);
        } else {
            put(l, (const char *)p, 1);
        }
    }
    put(l, "\"", 1);
}

static void event_to(line_sink sink, enum cfg_log_level level, const char *event, va_list ap)
{
    if (log_format == CFG_LOG_JSON) {
        json_t *obj = json_start(level);
        if (obj)
            json_object_set_new(obj, "event", json_string(event));
        for (const char *k; obj && (k = va_arg(ap, const char *)) != NULL;) {
            const char *v = va_arg(ap, const char *);
            json_object_set_new(obj, k, json_text(v ? v : ""));
        }
        json_finish(obj, sink);
        return;
    }
    struct line l;
    start_line(&l, level);
    puts_(&l, event);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        put(&l, " ", 1);
        puts_(&l, k);
        put(&l, "=", 1);
        put_value(&l, v ? v : "");
    }
    finish_line(&l, sink);
}

void px_log_event(enum cfg_log_level level, const char *event, ...)
{
    if (!px_log_enabled(level))
        return;
    va_list ap;
    va_start(ap, event);
    event_to(emit, level, event, ap);
    va_end(ap);
}

/* ---- Delivery: synchronous until px_log_start, then through the writer thread ----
 *
 * stderr is often a pipe (container runtimes, `| logger`); when its reader stalls, a blocking
 * write(2) would stop whichever thread logs, i.e. a worker and every connection it serves.
 * So the long-running proxy hands lines to one writer thread through two fixed buffers: the
 * producers append whole lines to `fill` under a lock held only for the copy, the writer swaps
 * the buffers and writes the full one without the lock. When `fill` has no room, the line is
 * dropped and counted; nothing waits for the reader. O_NONBLOCK on stderr is no way out: the
 * file description is shared with whoever started us (a terminal, the runtime). */

/* Two halves: one being written, one being filled. With a 64 KiB pipe that absorbs about 1100
 * conn_end lines of a burst before the first drop. */
#define QUEUE_HALF (128 * 1024)

enum delivery {
    DELIVER_SYNC,    /* write(2) in the calling thread: before start, after a clean stop */
    DELIVER_QUEUED,  /* copy into the writer thread's buffer */
    DELIVER_STALLED, /* stop timed out with the writer stuck in write(2): drop and count */
};

static struct {
    _Atomic enum delivery mode; /* read without the lock only to see DELIVER_SYNC */
    uv_mutex_t lock;
    uv_cond_t wake; /* lines to write, or stop */
    uv_cond_t done; /* the writer thread has written everything and ended */
    uv_thread_t thread;
    char *halves[2];
    char *fill;              /* producers append here */
    size_t fill_len;         /* whole lines only */
    size_t fill_lines;       /* how many */
    uint64_t dropped_unseen; /* drops the writer has not taken into a report yet */
    bool started, stopping, ended;
} queue;

static atomic_uint_fast64_t dropped_total;

uint64_t px_log_dropped_total(void)
{
    return atomic_load_explicit(&dropped_total, memory_order_relaxed);
}

static void count_drops(uint64_t n)
{
    atomic_fetch_add_explicit(&dropped_total, n, memory_order_relaxed);
}

/* Whole buffer or error; EINTR and short writes (a pipe takes what fits) resume. If whoever
 * shares our stderr made it non-blocking, wait for room here rather than lose the lines: only
 * the writer thread (or a thread of a short-lived command) ever waits in this function. */
static bool write_all(const char *s, size_t n)
{
    while (n > 0) {
        ssize_t rc = write(STDERR_FILENO, s, n);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {.fd = STDERR_FILENO, .events = POLLOUT};
            if (poll(&p, 1, -1) >= 0 || errno == EINTR)
                continue;
        }
        if (rc <= 0)
            return false;
        s += rc;
        n -= (size_t)rc;
    }
    return true;
}

static void write_direct(const char *s, size_t n)
{
    (void)write_all(s, n);
}

static void emit(const char *s, size_t n)
{
    if (atomic_load_explicit(&queue.mode, memory_order_acquire) == DELIVER_SYNC) {
        /* One write per line: concurrent writers never interleave within a line. */
        write_direct(s, n);
        return;
    }
    bool sync = false;
    uv_mutex_lock(&queue.lock);
    switch (atomic_load_explicit(&queue.mode, memory_order_relaxed)) {
    case DELIVER_SYNC: /* the writer ended since the check above; its last write is done */
        sync = true;
        break;
    case DELIVER_QUEUED:
        if (n <= QUEUE_HALF - queue.fill_len) {
            memcpy(queue.fill + queue.fill_len, s, n);
            queue.fill_len += n;
            queue.fill_lines++;
            uv_cond_signal(&queue.wake);
        } else {
            queue.dropped_unseen++;
            count_drops(1);
        }
        break;
    case DELIVER_STALLED:
        count_drops(1);
        break;
    }
    uv_mutex_unlock(&queue.lock);
    if (sync)
        write_direct(s, n);
}

static void event_direct(enum cfg_log_level level, const char *event, ...)
{
    va_list ap;
    va_start(ap, event);
    event_to(write_direct, level, event, ap);
    va_end(ap);
}

static void writer_main(void *arg)
{
    (void)arg;
    uint64_t unreported = 0; /* lines lost since the last line that said so */
    uv_mutex_lock(&queue.lock);
    for (;;) {
        while (queue.fill_len == 0 && !queue.stopping)
            uv_cond_wait(&queue.wake, &queue.lock);
        if (queue.fill_len == 0)
            break; /* stopping, and everything queued is written */
        char *batch = queue.fill;
        size_t len = queue.fill_len, lines = queue.fill_lines;
        queue.fill = batch == queue.halves[0] ? queue.halves[1] : queue.halves[0];
        queue.fill_len = queue.fill_lines = 0;
        /* Drops happen only while `fill` is full, so they all came after this batch's lines:
         * the report goes right after the batch, where the gap is. */
        unreported += queue.dropped_unseen;
        queue.dropped_unseen = 0;
        uv_mutex_unlock(&queue.lock);
        if (!write_all(batch, len)) {
            unreported += lines; /* stderr closed or broken: those lines are lost too */
            count_drops(lines);
        } else if (unreported > 0) {
            char count[24];
            snprintf(count, sizeof(count), "%" PRIu64, unreported);
            event_direct(CFG_LOG_WARN, "log_lines_dropped", "count", count, NULL);
            unreported = 0;
        }
        uv_mutex_lock(&queue.lock);
    }
    queue.ended = true;
    /* Later lines are written by their producers again, after everything queued before. */
    atomic_store_explicit(&queue.mode, DELIVER_SYNC, memory_order_release);
    uv_cond_signal(&queue.done);
    uv_mutex_unlock(&queue.lock);
}

int px_log_start(void)
{
    if (queue.started)
        return 0; /* once per process: the lock is never initialised twice */
    int rc = UV_ENOMEM;
    queue.halves[0] = malloc(QUEUE_HALF);
    queue.halves[1] = malloc(QUEUE_HALF);
    if (!queue.halves[0] || !queue.halves[1])
        goto fail;
    /* The lock and conditions live until the process ends (never destroyed): a thread that
     * outlived px_log_stop in an error path may still take the lock and find DELIVER_SYNC. */
    if ((rc = uv_mutex_init(&queue.lock)) != 0 || (rc = uv_cond_init(&queue.wake)) != 0 ||
        (rc = uv_cond_init(&queue.done)) != 0)
        goto fail;
    queue.fill = queue.halves[0];
    /* Every signal blocked in the writer: a handler run there would only interrupt its writes,
     * and libuv's signal pipe is served by the main loop anyway. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    atomic_store(&queue.mode, DELIVER_QUEUED);
    rc = uv_thread_create(&queue.thread, writer_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        atomic_store(&queue.mode, DELIVER_SYNC);
        goto fail;
    }
    queue.started = true;
    return 0;
fail:
    free(queue.halves[0]);
    free(queue.halves[1]);
    queue.halves[0] = queue.halves[1] = NULL;
    return rc;
}

void px_log_stop(unsigned timeout_ms)
{
    if (!queue.started || atomic_load(&queue.mode) != DELIVER_QUEUED)
        return;
    uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
    uv_mutex_lock(&queue.lock);
    queue.stopping = true;
    uv_cond_signal(&queue.wake);
    while (!queue.ended) {
        uint64_t now = uv_hrtime();
        if (now >= deadline || uv_cond_timedwait(&queue.done, &queue.lock, deadline - now) != 0)
            break;
    }
    bool ended = queue.ended;
    if (!ended)
        atomic_store(&queue.mode, DELIVER_STALLED);
    uv_mutex_unlock(&queue.lock);
    if (!ended) {
        /* The reader stalled: the writer stays blocked in write(2) until the process exits.
         * Its buffers stay allocated (it may still read them); lines from now on are dropped. */
        return;
    }
    uv_thread_join(&queue.thread);
    free(queue.halves[0]);
    free(queue.halves[1]);
    queue.halves[0] = queue.halves[1] = queue.fill = NULL;
}
