#include "px_guard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "px_log.h"
#include "px_probe.h"

enum verdict {
    V_PASSED,      /* the candidate verifies this upstream */
    V_REGRESSION,  /* the candidate fails where the bundle in force verifies: refuse */
    V_FAILS_BOTH,  /* fails with either bundle: not the candidate's doing */
    V_UNREACHABLE, /* no handshake got as far as the certificates */
};

struct target {
    const struct cfg_listener *l;
    size_t upstream_idx;
    enum verdict verdict;
    struct px_probe_result with_candidate;
    enum dbt_reason with_current; /* DBT_NONE when only the candidate was tried and passed */
};

struct px_guard {
    uv_async_t done_async;
    uv_thread_t thread;
    bool thread_started;
    atomic_bool cancel;
    px_guard_done_cb done;
    void *arg;
    struct tlsw_gen *candidate, *current;
    char bundle_path[4096];
    char candidate_sha256[65];
    const char *pins; /* [trust] pin (the config outlives every run) */
    size_t target_count;
    struct target targets[];
};

static void judge(struct px_guard *gd, struct target *t)
{
    px_probe(t->l, t->upstream_idx, gd->candidate, &gd->cancel, &t->with_candidate);
    enum dbt_reason r = t->with_candidate.reason;
    if (r == DBT_NONE) {
        t->verdict = V_PASSED;
        return;
    }
    if (!px_probe_is_verify_failure(r)) {
        t->verdict = V_UNREACHABLE;
        return;
    }
    /* The candidate does not verify the live chain. Refuse only if the bundle in force does:
     * a candidate that fixes nothing for this upstream must not be held back by it. */
    struct px_probe_result now;
    px_probe(t->l, t->upstream_idx, gd->current, &gd->cancel, &now);
    t->with_current = now.reason;
    t->verdict = now.reason == DBT_NONE                   ? V_REGRESSION
                 : px_probe_is_verify_failure(now.reason) ? V_FAILS_BOTH
                                                          : V_UNREACHABLE;
}

static void run(void *arg)
{
    struct px_guard *gd = arg;
    for (size_t i = 0; i < gd->target_count && !atomic_load(&gd->cancel); i++)
        judge(gd, &gd->targets[i]);
    uv_async_send(&gd->done_async);
}

static void on_done(uv_async_t *a)
{
    struct px_guard *gd = a->data;
    uv_thread_join(&gd->thread);
    gd->thread_started = false;
    gd->done(gd, gd->arg);
}

struct px_guard *px_guard_start(uv_loop_t *loop, const struct px_server *srv,
                                const char *bundle_path, const char *crl_path,
                                struct tlsw_gen *candidate, struct tlsw_gen *current,
                                px_guard_done_cb done, void *arg)
{
    size_t n = 0;
    for (size_t i = 0; i < srv->listener_count; i++) {
        const struct cfg_listener *l = srv->listeners[i].cfg;
        if (strcmp(cfg_listener_bundle(srv->cfg, l), bundle_path) == 0 &&
            strcmp(cfg_listener_crl(srv->cfg, l), crl_path) == 0)
            n += l->upstream_count;
    }
    struct px_guard *gd = calloc(1, sizeof(*gd) + n * sizeof(gd->targets[0]));
    if (!gd)
        return NULL;
    for (size_t i = 0; i < srv->listener_count; i++) {
        const struct cfg_listener *l = srv->listeners[i].cfg;
        if (strcmp(cfg_listener_bundle(srv->cfg, l), bundle_path) != 0 ||
            strcmp(cfg_listener_crl(srv->cfg, l), crl_path) != 0)
            continue;
        for (size_t u = 0; u < l->upstream_count; u++)
            gd->targets[gd->target_count++] = (struct target){.l = l, .upstream_idx = u};
    }
    gd->done = done;
    gd->arg = arg;
    gd->pins = srv->cfg->pins;
    dbt_strlcpy(gd->bundle_path, bundle_path, sizeof(gd->bundle_path));
    dbt_strlcpy(gd->candidate_sha256, tlsw_gen_sha256(candidate), sizeof(gd->candidate_sha256));
    tlsw_gen_ref(candidate);
    tlsw_gen_ref(current);
    gd->candidate = candidate;
    gd->current = current;
    uv_async_init(loop, &gd->done_async, on_done);
    gd->done_async.data = gd;
    if (uv_thread_create(&gd->thread, run, gd) != 0) {
        px_guard_free(gd);
        return NULL;
    }
    gd->thread_started = true;
    return gd;
}

static const char *verdict_name(enum verdict v)
{
    switch (v) {
    case V_PASSED:
        return "verified";
    case V_REGRESSION:
        return "refused";
    case V_FAILS_BOTH:
        return "fails_with_both_bundles";
    case V_UNREACHABLE:
        break;
    }
    return "unreachable";
}

bool px_guard_verdict(const struct px_guard *gd, bool quiet, char *why, size_t cap)
{
    size_t refused = 0;
    for (size_t i = 0; i < gd->target_count; i++) {
        const struct target *t = &gd->targets[i];
        const struct px_probe_result *r = &t->with_candidate;
        enum cfg_log_level level = t->verdict == V_REGRESSION ? CFG_LOG_ERROR
                                   : t->verdict == V_PASSED   ? CFG_LOG_INFO
                                                              : CFG_LOG_WARN;
        if (quiet && level > CFG_LOG_INFO)
            level = CFG_LOG_DEBUG;
        char upstream[300];
        cfg_addr_format(&t->l->upstream[t->upstream_idx], upstream, sizeof(upstream));
        /* A pin mismatch names the pins the path missed; other lines end before that field
         * (the NULL key ends the list). */
        const char *pin_key = r->reason == DBT_TLS_PIN_MISMATCH ? "pin" : NULL;
        px_log_event(level, "bundle_guard", "result", verdict_name(t->verdict), "listener",
                     t->l->name, "upstream", upstream, "address", r->address, "reason",
                     dbt_reason_name(r->reason), "detail", r->detail, "path", gd->bundle_path,
                     "sha256", gd->candidate_sha256, pin_key, gd->pins, NULL);
        if (t->verdict == V_REGRESSION && refused++ == 0)
            snprintf(why, cap,
                     "rotation guard: the new bundle would not verify upstream %s of listener "
                     "%s, which the bundle in force verifies (%s: %s)",
                     upstream, t->l->name, dbt_reason_name(r->reason), r->detail);
    }
    if (refused > 1) {
        size_t n = strlen(why);
        snprintf(why + n, cap - n, " and %zu more upstream(s)", refused - 1);
    }
    return refused == 0;
}

static void on_closed(uv_handle_t *h)
{
    struct px_guard *gd = h->data;
    tlsw_gen_unref(gd->candidate);
    tlsw_gen_unref(gd->current);
    free(gd);
}

void px_guard_free(struct px_guard *gd)
{
    if (gd->thread_started) {
        atomic_store(&gd->cancel, true);
        uv_thread_join(&gd->thread);
    }
    /* Closing also drops a completion still queued: done is never called after this. */
    uv_close((uv_handle_t *)&gd->done_async, on_closed);
}
