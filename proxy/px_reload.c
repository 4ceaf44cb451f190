#include "px_reload.h"

#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#include "px_expiry.h"
#include "px_guard.h"
#include "px_log.h"
#include "px_watch.h"

/* A bundle the guard refused is checked again by the poll (the server may have rotated since),
 * but not more often than this: each check is a handshake the server may count as aborted. */
#define GUARD_RECHECK_MS 60000

/* One watched bundle file and CRL path, shared by the listeners that use both. */
struct px_bundle_watch {
    struct px_server *srv;
    char path[4096];
    char crl[4096];           /* "" when the listeners have no CRL path */
    uv_loop_t *loop;          /* the main loop */
    struct px_watch watch;    /* its triggers; bw is freed when they have closed */
    struct tlsw_gen *current; /* main loop's reference to the generation in force */
    /* rotation guard */
    struct px_guard *guard;     /* the run checking candidate, NULL when none */
    struct tlsw_gen *candidate; /* the bundle waiting for the guard's verdict */
    const char *guard_trigger;
    bool guard_quiet;          /* rechecking a bundle already refused and reported */
    const char *rerun_trigger; /* a trigger that fired during the run: reload once more after */
    char guard_refused_sha256[132]; /* content_id of the refused generation */
    char guard_refused_why[1024];   /* that refusal's summary, for a forced reload's log line */
    uint64_t guard_refused_at;
    char last_refusal[512]; /* the poll reports a refusal once, not every interval */
};

double px_unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)(ts.tv_nsec / 1000000) / 1e3;
}

int px_trust_load(const struct cfg *cfg, const char *path, const char *crl, struct tlsw_gen **out,
                  char *err, size_t errlen)
{
    struct tlsw_gen_opts opts = {
        .verify = cfg->verify == CFG_VERIFY_CA ? TLSW_VERIFY_CA : TLSW_VERIFY_FULL,
        .min_tls_version = cfg->min_tls == 13 ? TLS1_3_VERSION : TLS1_2_VERSION,
        .pins = cfg->pins,
        .crl_path = crl,
        .crl_required = cfg->crl_required,
        .crl_stale =
            cfg->crl_stale == CFG_CRL_STALE_REFUSE ? TLSW_CRL_STALE_REFUSE : TLSW_CRL_STALE_WARN,
    };
    struct tlsw_gen *g = NULL;
    if (tlsw_gen_load(path, &opts, &g, err, errlen) != 0)
        return -1;
    /* A bundle of leaf certificates only would make every upstream fail: refuse it rather than
     * replace a working trust store. */
    bool any_ca = false;
    for (size_t i = 0; i < tlsw_gen_cert_count(g); i++)
        any_ca = any_ca || tlsw_gen_cert(g, i)->is_ca;
    if (!any_ca) {
        snprintf(err, errlen, "no CA certificate in bundle %s (only end-entity certificates)",
                 path);
        tlsw_gen_unref(g);
        return -1;
    }
    *out = g;
    return 0;
}

/* The bundle's hash, and the CRL path's after a colon when there is one: what "the same
 * content" means for a reload, and what the guard remembers of a refused candidate. */
static const char *content_id(const struct tlsw_gen *g, char *buf, size_t cap)
{
    const char *crl = tlsw_gen_crl_sha256(g);
    snprintf(buf, cap, "%s%s%s", tlsw_gen_sha256(g), crl[0] ? ":" : "", crl);
    return buf;
}

static bool same_content(const struct tlsw_gen *a, const struct tlsw_gen *b)
{
    return strcmp(tlsw_gen_sha256(a), tlsw_gen_sha256(b)) == 0 &&
           strcmp(tlsw_gen_crl_sha256(a), tlsw_gen_crl_sha256(b)) == 0;
}

/* Hands g to every worker for every listener on this bundle. Each worker swaps it in from its
 * own loop (px_worker_take_trust), so nothing on the data path waits for a lock. */
static void publish(struct px_bundle_watch *bw, struct tlsw_gen *g)
{
    struct px_server *srv = bw->srv;
    double now = px_unix_now();
    for (size_t i = 0; i < srv->listener_count; i++) {
        struct px_listener *l = &srv->listeners[i];
        if (strcmp(cfg_listener_bundle(srv->cfg, l->cfg), bw->path) != 0 ||
            strcmp(cfg_listener_crl(srv->cfg, l->cfg), bw->crl) != 0)
            continue;
        tlsw_gen_ref(g);
        uv_mutex_lock(&srv->trust_lock); /* the admin thread reads l->gen */
        struct tlsw_gen *old_gen = l->gen;
        l->gen = g;
        l->gen_since = now;
        uv_mutex_unlock(&srv->trust_lock);
        tlsw_gen_unref(old_gen);
        for (unsigned k = 0; k < srv->worker_count; k++) {
            tlsw_gen_ref(g);
            struct tlsw_gen *old = atomic_exchange(&srv->workers[k].wls[i].pending_gen, g);
            if (old)
                tlsw_gen_unref(old); /* superseded before the worker picked it up */
        }
    }
    for (unsigned k = 0; k < srv->worker_count; k++)
        uv_async_send(&srv->workers[k].wakeup);
}

/* After publish: g (published and logged) replaces the main loop's generation in force. */
static void take_over(struct px_bundle_watch *bw, struct tlsw_gen *g)
{
    tlsw_gen_unref(bw->current);
    bw->current = g;
    bw->guard_refused_sha256[0] = '\0';
    px_expiry_check(bw->srv);
}

/* The generation g (validated, and passed by the guard if on) goes into force. */
static void apply(struct px_bundle_watch *bw, struct tlsw_gen *g, const char *trigger)
{
    char certs[16], crls[16];
    snprintf(certs, sizeof(certs), "%zu", tlsw_gen_cert_count(g));
    snprintf(crls, sizeof(crls), "%zu", tlsw_gen_crl_count(g));
    bool any_crl = bw->crl[0] != '\0' || tlsw_gen_crl_count(g) > 0;
    publish(bw, g);
    atomic_fetch_add(&bw->srv->reloads_ok, 1);
    /* The CRL fields last: without CRLs the line is what it always was. */
    px_log_event(CFG_LOG_INFO, "bundle_reload", "result", "ok", "trigger", trigger, "path",
                 bw->path, "sha256", tlsw_gen_sha256(g), "previous_sha256",
                 tlsw_gen_sha256(bw->current), "certificates", certs, any_crl ? "crls" : NULL, crls,
                 "crl_path", bw->crl, "crl_sha256", tlsw_gen_crl_sha256(g), NULL);
    take_over(bw, g);
}

/* A forced reload puts g (validated, not checked by the guard) into force. An error, not a
 * success: new connections to an upstream still on a removed CA now fail, by the operator's
 * decision, and the line says which ones the guard had named. */
static void apply_overriding_guard(struct px_bundle_watch *bw, struct tlsw_gen *g,
                                   const char *trigger)
{
    char certs[16], total[16]; /* total: dbtrust_bundle_reloads_total{result="overridden"} */
    snprintf(certs, sizeof(certs), "%zu", tlsw_gen_cert_count(g));
    char id[132];
    const char *detail = strcmp(content_id(g, id, sizeof(id)), bw->guard_refused_sha256) == 0
                             ? bw->guard_refused_why
                             : "the rotation guard has not checked this bundle";
    publish(bw, g);
    snprintf(total, sizeof(total), "%u", atomic_fetch_add(&bw->srv->reloads_overridden, 1) + 1);
    px_log_event(CFG_LOG_ERROR, "bundle_reload", "result", "applied", "guard", "overridden",
                 "trigger", trigger, "path", bw->path, "sha256", tlsw_gen_sha256(g),
                 "previous_sha256", tlsw_gen_sha256(bw->current), "certificates", certs, "detail",
                 detail, "overridden_total", total, NULL);
    take_over(bw, g);
}

static void refuse(struct px_bundle_watch *bw, const char *trigger, const char *why)
{
    char total[16]; /* the counter behind dbtrust_bundle_reloads_total{result="refused"} */
    snprintf(total, sizeof(total), "%u", atomic_fetch_add(&bw->srv->reloads_failed, 1) + 1);
    px_log_event(CFG_LOG_ERROR, "bundle_reload", "result", "refused", "trigger", trigger, "path",
                 bw->path, "reason", why, "kept_sha256", tlsw_gen_sha256(bw->current),
                 "refused_total", total, NULL);
}

static void reload_one(struct px_bundle_watch *bw, const char *trigger);

static void on_guard_done(struct px_guard *gd, void *arg)
{
    struct px_bundle_watch *bw = arg;
    char why[1024] = "";
    bool ok = px_guard_verdict(gd, bw->guard_quiet, why, sizeof(why));
    px_guard_free(gd);
    bw->guard = NULL;
    struct tlsw_gen *g = bw->candidate;
    bw->candidate = NULL;
    if (ok) {
        apply(bw, g, bw->guard_trigger);
    } else {
        if (!bw->guard_quiet)
            refuse(bw, bw->guard_trigger, why);
        char id[132];
        dbt_strlcpy(bw->guard_refused_sha256, content_id(g, id, sizeof(id)),
                    sizeof(bw->guard_refused_sha256));
        dbt_strlcpy(bw->guard_refused_why, why, sizeof(bw->guard_refused_why));
        bw->guard_refused_at = uv_now(bw->loop);
        tlsw_gen_unref(g);
    }
    const char *again = bw->rerun_trigger;
    bw->rerun_trigger = NULL;
    if (again)
        reload_one(bw, again);
}

static void reload_one(struct px_bundle_watch *bw, const char *trigger)
{
    struct px_server *srv = bw->srv;
    if (srv->stopping)
        return;
    if (bw->guard) {
        bw->rerun_trigger = trigger; /* the file may have changed again since the run began */
        return;
    }
    char err[512];
    struct tlsw_gen *g = NULL;
    if (px_trust_load(srv->cfg, bw->path, bw->crl, &g, err, sizeof(err)) != 0) {
        /* A change (watch), a signal or a request always reports; the poll only news. */
        if (strcmp(trigger, "poll") != 0 || strcmp(err, bw->last_refusal) != 0)
            refuse(bw, trigger, err);
        dbt_strlcpy(bw->last_refusal, err, sizeof(bw->last_refusal));
        return;
    }
    bw->last_refusal[0] = '\0';
    char id[132];
    if (same_content(g, bw->current)) {
        tlsw_gen_unref(g); /* same content: nothing to do */
        bw->guard_refused_sha256[0] = '\0';
        return;
    }
    if (!srv->cfg->guard) {
        apply(bw, g, trigger);
        return;
    }
    bool recheck = strcmp(content_id(g, id, sizeof(id)), bw->guard_refused_sha256) == 0;
    uint64_t now = uv_now(bw->loop);
    if (recheck && strcmp(trigger, "poll") == 0 && now - bw->guard_refused_at < GUARD_RECHECK_MS) {
        tlsw_gen_unref(g);
        return;
    }
    bw->candidate = g;
    bw->guard_trigger = trigger;
    bw->guard_quiet = recheck && strcmp(trigger, "poll") == 0;
    bw->guard = px_guard_start(bw->loop, srv, bw->path, bw->crl, g, bw->current, on_guard_done, bw);
    if (!bw->guard) {
        bw->candidate = NULL;
        tlsw_gen_unref(g);
        refuse(bw, trigger, "rotation guard could not run (out of memory or threads)");
    }
}

/* Cancels a guard run in progress: it may be the very check an attacker keeps failing, and the
 * file is read again anyway. Blocks the main loop until the probe thread notices (about
 * 100 ms), which an operator's override can afford. */
static void cancel_guard(struct px_bundle_watch *bw)
{
    if (!bw->guard)
        return;
    px_guard_free(bw->guard);
    bw->guard = NULL;
    tlsw_gen_unref(bw->candidate);
    bw->candidate = NULL;
    bw->rerun_trigger = NULL;
}

static void force_one(struct px_bundle_watch *bw, const char *trigger)
{
    struct px_server *srv = bw->srv;
    if (srv->stopping)
        return;
    if (!srv->cfg->guard) {
        reload_one(bw, trigger); /* no guard to override */
        return;
    }
    cancel_guard(bw);
    char err[512];
    struct tlsw_gen *g = NULL;
    /* Force skips the guard only: an invalid bundle is refused as always. */
    if (px_trust_load(srv->cfg, bw->path, bw->crl, &g, err, sizeof(err)) != 0) {
        refuse(bw, trigger, err);
        dbt_strlcpy(bw->last_refusal, err, sizeof(bw->last_refusal));
        return;
    }
    bw->last_refusal[0] = '\0';
    if (same_content(g, bw->current)) {
        /* Said, not silent as for the other triggers: the operator expects an override. */
        px_log_event(CFG_LOG_INFO, "bundle_reload", "result", "unchanged", "trigger", trigger,
                     "path", bw->path, "sha256", tlsw_gen_sha256(g), "detail",
                     "this content is already in force: nothing to override", NULL);
        tlsw_gen_unref(g);
        bw->guard_refused_sha256[0] = '\0';
        return;
    }
    apply_overriding_guard(bw, g, trigger);
}

/* What to watch for a CRL path: a file is watched through its directory like the bundle; a
 * directory through itself ("dir/." has dirname "dir"), where a ConfigMap swaps "..data" and
 * where new CRL files appear. "" when there is no CRL path. */
static const char *crl_watch_path(const char *crl, char *buf, size_t cap)
{
    struct stat st;
    if (crl[0] == '\0' || stat(crl, &st) != 0 || !S_ISDIR(st.st_mode))
        return crl;
    snprintf(buf, cap, "%s/.", crl);
    return buf;
}

static void on_trigger(void *arg, const char *trigger)
{
    reload_one(arg, trigger);
}

int px_reload_start(struct px_server *srv, uv_loop_t *loop)
{
    srv->watches = calloc(srv->listener_count, sizeof(*srv->watches));
    if (!srv->watches)
        return UV_ENOMEM;
    for (size_t i = 0; i < srv->listener_count; i++) {
        const char *path = cfg_listener_bundle(srv->cfg, srv->listeners[i].cfg);
        const char *crl = cfg_listener_crl(srv->cfg, srv->listeners[i].cfg);
        bool seen = false;
        for (size_t j = 0; j < srv->watch_count; j++)
            seen = seen || (strcmp(srv->watches[j]->path, path) == 0 &&
                            strcmp(srv->watches[j]->crl, crl) == 0);
        if (seen)
            continue;
        struct px_bundle_watch *bw = calloc(1, sizeof(*bw));
        if (!bw)
            return UV_ENOMEM;
        srv->watches[srv->watch_count++] = bw;
        bw->srv = srv;
        dbt_strlcpy(bw->path, path, sizeof(bw->path));
        dbt_strlcpy(bw->crl, crl, sizeof(bw->crl));
        bw->loop = loop;
        bw->current = srv->listeners[i].gen;
        tlsw_gen_ref(bw->current);
        char crl_watch[4096 + 2];
        const char *files[] = {bw->path, crl_watch_path(bw->crl, crl_watch, sizeof(crl_watch))};
        px_watch_start(&bw->watch, loop, files, 2, srv->cfg->reload_interval_ms, on_trigger, bw);
    }
    return 0;
}

void px_reload_all(struct px_server *srv, const char *trigger)
{
    for (size_t i = 0; i < srv->watch_count; i++)
        reload_one(srv->watches[i], trigger);
}

void px_reload_force_all(struct px_server *srv, const char *trigger)
{
    for (size_t i = 0; i < srv->watch_count; i++)
        force_one(srv->watches[i], trigger);
}

/* The last handle of bw's triggers has closed: the one place a bundle watch is freed. */
static void on_watch_freed(void *arg)
{
    struct px_bundle_watch *bw = arg;
    tlsw_gen_unref(bw->current);
    free(bw);
}

void px_reload_stop(struct px_server *srv)
{
    srv->stopping = true;
    for (size_t i = 0; i < srv->watch_count; i++) {
        struct px_bundle_watch *bw = srv->watches[i];
        cancel_guard(bw); /* cancels its probes and waits for its thread */
        px_watch_close(&bw->watch, on_watch_freed);
    }
    free(srv->watches);
    srv->watches = NULL;
    srv->watch_count = 0;
}
