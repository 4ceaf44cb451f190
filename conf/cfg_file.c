/* INI file loader on top of inih (Debian 12: r55).
 *
 * Debian's libinih is built without INI_HANDLER_LINENO, with INI_MAX_LINE 200 on the stack, and
 * with multi-line values on (an indented line continues the previous key: "  workers = 2" after
 * "user = x" would silently become a second value of user). Its run-time knobs (ini_max_line,
 * ini_allow_multiline, ...) are exported but have no effect. So our reader function does the
 * line-level work and hands inih one clean "key = value" line at a time:
 * - it counts lines, which gives the line number of every handler call (inih calls the handler
 *   for a line before it reads the next one);
 * - it strips leading blanks (no continuation lines), comments ('#'/';' at the start, or after
 *   a blank inline) and a UTF-8 BOM;
 * - it handles [section] headers itself, since inih reports no empty sections to the handler;
 * - a line longer than inih's buffer is passed as "key=" LONG_MARK and the handler takes the
 *   value from the reader (an upstream list or pin list easily exceeds 200 characters).
 * The first error stops the parse: the reader then reports end of file. */
#include "cfg_internal.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define LONG_MARK "\x01" /* control characters are refused in the file, so this cannot clash */

struct load {
    struct cfg *c; /* the staging copy */
    const char *path;
    FILE *f;
    char *buf; /* getline's */
    size_t cap;
    int lineno;
    const char *long_value; /* of the current line, when it is over-long */
    enum cfg_section sec;
    char sec_name[80]; /* "[listener.orders]" */
    int sec_line;
    int key_line[CFG_KEY_MAX]; /* where each key of the current section was set; 0 = not */
    int dbtrust_line, trust_line;
    char *err;
    size_t errlen;
    int err_line; /* 0 while there is no error */
};

/* Keeps the first error only: later ones are usually consequences of it. */
__attribute__((format(printf, 3, 4))) static int fail_at(struct load *ld, int line, const char *fmt,
                                                         ...)
{
    va_list ap;
    int used;

    if (ld->err_line)
        return -1;
    ld->err_line = line;
    used = snprintf(ld->err, ld->errlen, "%s:%d: ", ld->path, line);
    if (used < 0 || (size_t)used >= ld->errlen)
        return -1;
    va_start(ap, fmt);
    vsnprintf(ld->err + used, ld->errlen - (size_t)used, fmt, ap);
    va_end(ap);
    return -1;
}

static struct cfg_listener *current_listener(struct load *ld)
{
    return ld->sec == CFG_SEC_LISTENER ? &ld->c->listeners[ld->c->listener_count - 1] : NULL;
}

static int key_line(struct load *ld, const char *name)
{
    return ld->key_line[cfg_key_index(cfg_key_find(CFG_SEC_LISTENER, name))];
}

static int end_section(struct load *ld)
{
    static const char *const required[] = {"protocol", "listen", "upstream"};
    char why[512];
    const char *key = NULL;

    if (ld->sec != CFG_SEC_LISTENER)
        return 0;
    for (size_t i = 0; i < DBT_ARRAY_LEN(required); i++) {
        if (!key_line(ld, required[i]))
            return fail_at(ld, ld->sec_line, "%s: missing key '%s'", ld->sec_name, required[i]);
    }
    if (cfg_listener_complete(ld->c, ld->c->listener_count - 1, &key, why, sizeof why) != 0)
        return fail_at(ld, key_line(ld, key), "key '%s': %s", key, why);
    return 0;
}

static int begin_listener(struct load *ld, const char *name)
{
    char why[512];
    struct cfg_listener *l;

    if (cfg_value_name(name, why, sizeof why) != 0)
        return fail_at(ld, ld->lineno, "%s", why);
    for (size_t i = 0; i < ld->c->listener_count; i++) {
        if (strcmp(ld->c->listeners[i].name, name) == 0)
            return fail_at(ld, ld->lineno, "duplicate listener name '%s' (first at line %d)", name,
                           ld->c->listeners[i].line);
    }
    l = cfg_listener_add(ld->c);
    if (!l)
        return fail_at(ld, ld->lineno, "out of memory");
    dbt_strlcpy(l->name, name, sizeof l->name);
    l->line = ld->lineno;
    return 0;
}

/* once: the line of the first [dbtrust] or [trust]; a second one is more likely a paste error
 * than an intended split, and would make "which value wins" a question. */
static int begin_single(struct load *ld, const char *name, int *once)
{
    if (*once)
        return fail_at(ld, ld->lineno, "duplicate section [%s] (first at line %d)", name, *once);
    *once = ld->lineno;
    return 0;
}

/* line is "[...]" with blanks and comments already stripped. */
static int begin_section(struct load *ld, char *line)
{
    size_t len = strlen(line);
    char *name = line + 1;
    int rc;

    if (end_section(ld) != 0)
        return -1;
    if (line[len - 1] != ']')
        return fail_at(ld, ld->lineno, "invalid section header (expected [name])");
    line[len - 1] = '\0';
    memset(ld->key_line, 0, sizeof ld->key_line);
    ld->sec_line = ld->lineno;
    if (strcmp(name, "dbtrust") == 0) {
        ld->sec = CFG_SEC_DBTRUST;
        rc = begin_single(ld, name, &ld->dbtrust_line);
    } else if (strcmp(name, "trust") == 0) {
        ld->sec = CFG_SEC_TRUST;
        rc = begin_single(ld, name, &ld->trust_line);
    } else if (strncmp(name, "listener.", 9) == 0) {
        ld->sec = CFG_SEC_LISTENER;
        rc = begin_listener(ld, name + 9);
    } else {
        return fail_at(ld, ld->lineno,
                       "unknown section [%s] (expected [dbtrust], [trust] or [listener.NAME])",
                       name);
    }
    snprintf(ld->sec_name, sizeof ld->sec_name, "[%.70s]", name);
    return rc;
}

/* Cuts a comment: one that starts the line, or '#'/';' after a blank (so "a;b" stays a value). */
static void strip_comment(char *s)
{
    for (char *p = s; *p; p++) {
        if ((*p == '#' || *p == ';') && (p == s || isspace((unsigned char)p[-1]))) {
            *p = '\0';
            return;
        }
    }
}

static char *trim(char *s)
{
    char *end = s + strlen(s);
    while (isspace((unsigned char)*s))
        s++;
    while (end > s && isspace((unsigned char)end[-1]))
        end--;
    *end = '\0';
    return s;
}

/* inih's ini_reader: fgets-like, one line per call. */
static char *read_line(char *str, int num, void *stream)
{
    struct load *ld = stream;
    ssize_t n;
    char *s;

    if (ld->err_line)
        return NULL;
    n = getline(&ld->buf, &ld->cap, ld->f);
    if (n < 0) {
        if (ferror(ld->f))
            fail_at(ld, ld->lineno + 1, "read error: %s", strerror(errno));
        return NULL;
    }
    ld->lineno++;
    ld->long_value = NULL;
    s = ld->buf;
    if (ld->lineno == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
        s += 3;
    for (char *p = s; p < ld->buf + n; p++) {
        if ((unsigned char)*p < 0x20 && *p != '\t' && *p != '\n' && *p != '\r') {
            fail_at(ld, ld->lineno, "control character in line");
            return NULL;
        }
    }
    strip_comment(s);
    s = trim(s);
    if (*s == '[') {
        if (begin_section(ld, s) != 0)
            return NULL;
        *s = '\0'; /* inih sees an empty line: sections are ours */
    }
    if (strlen(s) + 1 <= (size_t)num) {
        memcpy(str, s, strlen(s) + 1);
        return str;
    }
    /* Over-long: give inih the key and a mark, keep the value here (see the top comment). */
    char *delim = strpbrk(s, "=:");
    size_t keylen = delim ? (size_t)(delim - s) + 1 : 0;
    if (!delim || keylen + sizeof LONG_MARK > (size_t)num) {
        fail_at(ld, ld->lineno, "line too long");
        return NULL;
    }
    memcpy(str, s, keylen);
    memcpy(str + keylen, LONG_MARK, sizeof LONG_MARK);
    ld->long_value = trim(delim + 1);
    return str;
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
    struct load *ld = user;
    const struct cfg_key *k;
    char why[512];

    if (ld->long_value && strcmp(value, LONG_MARK) == 0)
        value = ld->long_value;
    if (ld->sec == CFG_SEC_NONE) {
        fail_at(ld, ld->lineno,
                "key '%s' outside of a section (start with [dbtrust], [trust] or [listener.NAME])",
                name);
        return 0;
    }
    k = cfg_key_find(ld->sec, name);
    if (!k) {
        fail_at(ld, ld->lineno, "unknown key '%s' in %s", name, ld->sec_name);
        return 0;
    }
    if (ld->key_line[cfg_key_index(k)]) {
        fail_at(ld, ld->lineno, "key '%s': already set at line %d", name,
                ld->key_line[cfg_key_index(k)]);
        return 0;
    }
    if (*value == '\0') {
        fail_at(ld, ld->lineno, "key '%s': empty value (remove the line for the default)", name);
        return 0;
    }
    if (cfg_key_set(k, ld->c, current_listener(ld), value, why, sizeof why) != 0) {
        fail_at(ld, ld->lineno, "key '%s': %s", name, why);
        return 0;
    }
    ld->key_line[cfg_key_index(k)] = ld->lineno;
    if (ld->sec == CFG_SEC_LISTENER)
        cfg_key_set_line(k, current_listener(ld), ld->lineno);
    return 1;
}

int cfg_load_file(struct cfg *c, const char *path, char *err, size_t errlen)
{
    struct cfg stage = *c;
    struct load ld = {.c = &stage, .path = path, .err = err, .errlen = errlen};
    int rc = -1, r;

    /* Parse into a copy, so that a failed load (a reload, say) leaves c exactly as it was. */
    stage.listeners = NULL;
    stage.listener_count = 0;
    for (size_t i = 0; i < c->listener_count; i++) {
        struct cfg_listener *l = cfg_listener_add(&stage);
        if (!l) {
            snprintf(err, errlen, "%s: out of memory", path);
            goto out;
        }
        *l = c->listeners[i];
    }
    dbt_strlcpy(stage.source, path, sizeof stage.source);
    ld.f = fopen(path, "r");
    if (!ld.f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto out;
    }
    r = ini_parse_stream(read_line, &ld, on_key, &ld);
    if (r > 0 && (!ld.err_line || r < ld.err_line)) {
        /* inih's own complaint: a line with neither '=' nor ':'. Our line count is inih's. */
        ld.err_line = 0;
        fail_at(&ld, r, "expected 'key = value' or '[section]'");
    } else if (r < 0 && !ld.err_line) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    if (ld.err_line || end_section(&ld) != 0)
        goto out;
    cfg_free(c);
    *c = stage;
    stage.listeners = NULL;
    rc = 0;
out:
    free(stage.listeners);
    free(ld.buf);
    if (ld.f)
        fclose(ld.f);
    return rc;
}
