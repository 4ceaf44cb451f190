#include "px_log.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* One write per line, as for text. Over-long values are cut by the text path's limit first. */
static void json_finish(json_t *obj)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(obj);
    if (!text)
        return;
    size_t n = strlen(text);
    text[n] = '\n';
    ssize_t rc = write(STDERR_FILENO, text, n + 1); /* the NUL's byte holds the newline */
    (void)rc;
    free(text);
}

static void finish_line(struct line *l)
{
    l->buf[l->len++] = '\n';
    /* One write per line: concurrent writers never interleave within a line. */
    ssize_t rc = write(STDERR_FILENO, l->buf, l->len);
    (void)rc;
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
        json_finish(obj);
        return;
    }
    int n = vsnprintf(l.buf + l.len, sizeof(l.buf) - 2 - l.len, fmt, ap);
    va_end(ap);
    if (n > 0)
        l.len += (size_t)n < sizeof(l.buf) - 2 - l.len ? (size_t)n : sizeof(l.buf) - 3 - l.len;
    finish_line(&l);
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

void px_log_event(enum cfg_log_level level, const char *event, ...)
{
    if (!px_log_enabled(level))
        return;
    va_list ap;
    va_start(ap, event);
    if (log_format == CFG_LOG_JSON) {
        json_t *obj = json_start(level);
        if (obj)
            json_object_set_new(obj, "event", json_string(event));
        for (const char *k; obj && (k = va_arg(ap, const char *)) != NULL;) {
            const char *v = va_arg(ap, const char *);
            json_object_set_new(obj, k, json_text(v ? v : ""));
        }
        va_end(ap);
        json_finish(obj);
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
    va_end(ap);
    finish_line(&l);
}
