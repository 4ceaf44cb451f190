#include "px_client_id.h"

#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "px_expiry.h"
#include "px_log.h"
#include "px_watch.h"

/* The triggers of one listener's identity. */
struct px_id_watch {
    struct px_server *srv;
    size_t listener;
    struct px_watch watch;  /* its triggers; iw is freed when they have closed */
    char last_refusal[512]; /* the poll reports a refusal once, not every interval */
};

/* A message cut to fit ends in "..." (the file, line and key come first, the why last). */
static void mark_cut(char *err, size_t errlen)
{
    if (errlen >= 4)
        memcpy(err + errlen - 4, "...", 4);
}

static const char *key_at_fault(const struct cfg_listener *l, const char *err, int *line)
{
    if (l->client_key[0] && strstr(err, l->client_key) != NULL) {
        *line = l->client_key_line;
        return "client_key";
    }
    if (l->client_ca[0] && strstr(err, l->client_ca) != NULL) {
        *line = l->client_ca_line;
        return "client_ca";
    }
    *line = l->client_cert_line;
    return "client_cert";
}

int px_client_id_load(const struct cfg *cfg, const struct cfg_listener *l, struct tlsw_server **out,
                      char *err, size_t errlen)
{
    struct tlsw_server_opts o = {
        .cert_path = l->client_cert,
        .key_path = l->client_key,
        .ca_path = l->client_ca[0] ? l->client_ca : NULL,
        .names = l->client_names[0] ? l->client_names : NULL,
        .min_tls_version = cfg->min_tls == 13 ? TLS1_3_VERSION : TLS1_2_VERSION,
    };
    char why[400];
    if (tlsw_server_load(&o, out, why, sizeof(why)) == 0)
        return 0;
    int line = 0;
    const char *key = key_at_fault(l, why, &line);
    int n;
    if (line > 0)
        n = snprintf(err, errlen, "%s:%d: key '%s': %s", cfg->source, line, key, why);
    else
        n = snprintf(err, errlen, "listener %s: %s: %s", l->name, key, why);
    if (n < 0 || (size_t)n >= errlen)
        mark_cut(err, errlen);
    return -1;
}

static void log_identity(const char *event, const struct px_listener *l, const char *trigger)
{
    const struct tlsw_cert_info *leaf = tlsw_server_leaf(l->client_id);
    char not_after[32];
    struct tm tm;
    gmtime_r(&leaf->not_after, &tm);
    strftime(not_after, sizeof(not_after), "%Y-%m-%d", &tm);
    px_log_event(CFG_LOG_INFO, event, "listener", l->cfg->name, "trigger", trigger, "cert",
                 l->cfg->client_cert, "subject", leaf->subject, "not_after", not_after,
                 "cert_sha256", leaf->sha256, "sha256", tlsw_server_sha256(l->client_id), NULL);
}

int px_client_id_load_all(struct px_server *srv)
{
    for (size_t i = 0; i < srv->listener_count; i++) {
        struct px_listener *l = &srv->listeners[i];
        if (l->cfg->client_tls == CFG_CLIENT_TLS_OFF)
            continue;
        char err[600];
        if (px_client_id_load(srv->cfg, l->cfg, &l->client_id, err, sizeof(err)) != 0) {
            px_log(CFG_LOG_ERROR, "refusing to start: %s", err);
            return -1;
        }
        log_identity("client_cert_loaded", l, "start");
    }
    return 0;
}

/* Hands s to every worker; each takes it from its own loop, so nothing on the data path
 * waits for a lock. */
static void publish(struct px_server *srv, size_t idx, struct tlsw_server *s)
{
    struct px_listener *l = &srv->listeners[idx];
    uv_mutex_lock(&srv->trust_lock); /* the admin thread reads l->client_id */
    struct tlsw_server *old = l->client_id;
    l->client_id = s;
    uv_mutex_unlock(&srv->trust_lock);
    tlsw_server_unref(old);
    for (unsigned k = 0; k < srv->worker_count; k++) {
        tlsw_server_ref(s);
        struct tlsw_server *prev = atomic_exchange(&srv->workers[k].wls[idx].pending_client_id, s);
        if (prev)
            tlsw_server_unref(prev); /* superseded before the worker picked it up */
        uv_async_send(&srv->workers[k].wakeup);
    }
}

static void reload_one(struct px_id_watch *iw, const char *trigger)
{
    struct px_server *srv = iw->srv;
    struct px_listener *l = &srv->listeners[iw->listener];
    if (srv->stopping)
        return;
    char err[600];
    struct tlsw_server *s = NULL;
    if (px_client_id_load(srv->cfg, l->cfg, &s, err, sizeof(err)) != 0) {
        /* A change, a signal or a request always reports; the poll only news. */
        if (strcmp(trigger, "poll") != 0 || strcmp(err, iw->last_refusal) != 0) {
            char total[16];
            snprintf(total, sizeof(total), "%u",
                     atomic_fetch_add(&srv->client_id_reloads_failed, 1) + 1);
            px_log_event(CFG_LOG_ERROR, "client_cert_reload", "result", "refused", "listener",
                         l->cfg->name, "trigger", trigger, "reason", err, "kept_sha256",
                         tlsw_server_leaf(l->client_id)->sha256, "refused_total", total, NULL);
        }
        dbt_strlcpy(iw->last_refusal, err, sizeof(iw->last_refusal));
        return;
    }
    iw->last_refusal[0] = '\0';
    if (strcmp(tlsw_server_sha256(s), tlsw_server_sha256(l->client_id)) == 0) {
        tlsw_server_unref(s); /* same content: nothing to do */
        return;
    }
    publish(srv, iw->listener, s);
    atomic_fetch_add(&srv->client_id_reloads_ok, 1);
    log_identity("client_cert_reload", l, trigger);
    px_expiry_check(srv);
}

static void on_trigger(void *arg, const char *trigger)
{
    reload_one(arg, trigger);
}

int px_client_id_start(struct px_server *srv, uv_loop_t *loop)
{
    srv->id_watches = calloc(srv->listener_count, sizeof(*srv->id_watches));
    if (!srv->id_watches)
        return UV_ENOMEM;
    for (size_t i = 0; i < srv->listener_count; i++) {
        const struct cfg_listener *lc = srv->listeners[i].cfg;
        if (lc->client_tls == CFG_CLIENT_TLS_OFF)
            continue;
        struct px_id_watch *iw = calloc(1, sizeof(*iw));
        if (!iw)
            return UV_ENOMEM;
        srv->id_watches[srv->id_watch_count++] = iw;
        iw->srv = srv;
        iw->listener = i;
        /* client_ca is optional: px_watch skips an empty path */
        const char *files[] = {lc->client_cert, lc->client_key, lc->client_ca};
        px_watch_start(&iw->watch, loop, files, DBT_ARRAY_LEN(files), srv->cfg->reload_interval_ms,
                       on_trigger, iw);
    }
    return 0;
}

void px_client_id_reload_all(struct px_server *srv, const char *trigger)
{
    for (size_t i = 0; i < srv->id_watch_count; i++)
        reload_one(srv->id_watches[i], trigger);
}

/* The last handle of iw's triggers has closed: the one place an identity watch is freed. */
static void on_watch_freed(void *arg)
{
    free(arg);
}

void px_client_id_stop(struct px_server *srv)
{
    for (size_t i = 0; i < srv->id_watch_count; i++) {
        struct px_id_watch *iw = srv->id_watches[i];
        px_watch_close(&iw->watch, on_watch_freed);
    }
    free(srv->id_watches);
    srv->id_watches = NULL;
    srv->id_watch_count = 0;
}
