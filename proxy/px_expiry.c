/* Certificate expiry warnings: every certificate of a bundle in force and of the last chain each
 * upstream presented is checked at start, after each reload, when a new upstream chain is seen
 * and hourly. A certificate is reported once per threshold it crosses (30, 14, 7 days, expired),
 * so a log reader sees the countdown without a line per hour. CRLs in force get the same
 * countdown toward their nextUpdate on a shorter scale (7, 3, 1 day, past), as CRLs are
 * reissued every few days. Runs on the main loop. */
#include "px_expiry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "px_log.h"

#define CHECK_EVERY_MS (60 * 60 * 1000)

static const int thresholds[] = {30, 14, 7, 0};   /* 0 = expired */
static const int crl_thresholds[] = {7, 3, 1, 0}; /* 0 = past nextUpdate */

struct warned {
    char sha256[160]; /* a certificate's fingerprint, or a CRL's identity (crl_key) */
    int threshold;
};

struct px_expiry {
    struct px_server *srv;
    uv_timer_t timer;
    struct warned *warned;
    size_t count, cap;
};

/* The smallest threshold of list (descending, ending with 0) reached, or -1 when more than the
 * first one is left. */
static int threshold_in(const int *list, size_t n, time_t not_after, time_t now)
{
    if (not_after <= now)
        return 0;
    int days = (int)((not_after - now) / 86400);
    int reached = -1;
    for (size_t i = 0; i + 1 < n; i++)
        if (days < list[i])
            reached = list[i];
    return reached;
}

static int threshold_of(time_t not_after, time_t now)
{
    return threshold_in(thresholds, DBT_ARRAY_LEN(thresholds), not_after, now);
}

/* True the first time (sha256, threshold) is seen. */
static bool first_time(struct px_expiry *e, const char *sha256, int threshold)
{
    for (size_t i = 0; i < e->count; i++)
        if (e->warned[i].threshold == threshold && strcmp(e->warned[i].sha256, sha256) == 0)
            return false;
    if (e->count == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 16;
        struct warned *w = realloc(e->warned, cap * sizeof(*w));
        if (!w)
            return true; /* warn anyway, maybe again later */
        e->warned = w;
        e->cap = cap;
    }
    dbt_strlcpy(e->warned[e->count].sha256, sha256, sizeof(e->warned[0].sha256));
    e->warned[e->count++].threshold = threshold;
    return true;
}

static void check_cert(struct px_expiry *e, const struct tlsw_cert_info *ci, time_t now,
                       const char *source, const char *where_key, const char *where,
                       const char *depth)
{
    int t = threshold_of(ci->not_after, now);
    if (t < 0 || !first_time(e, ci->sha256, t))
        return;
    char date[32], days[24], threshold[16];
    struct tm tm;
    gmtime_r(&ci->not_after, &tm);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(days, sizeof(days), "%lld", (long long)((ci->not_after - now) / 86400));
    snprintf(threshold, sizeof(threshold), "%d", t);
    px_log_event(t == 0 ? CFG_LOG_ERROR : CFG_LOG_WARN, "cert_expiry", "source", source, where_key,
                 where, "depth", depth, "subject", ci->subject, "sha256", ci->sha256, "not_after",
                 date, "days_left", days, "threshold_days", t == 0 ? "expired" : threshold, NULL);
}

/* A CRL in force, warned once per threshold. Identified by who signed it and its nextUpdate:
 * the next CRL of the same issuer starts its own countdown. */
static void check_crl(struct px_expiry *e, const struct tlsw_crl_info *ci, time_t now,
                      const char *bundle, bool refuse)
{
    if (ci->next_update == (time_t)-1)
        return; /* no nextUpdate: it never goes stale */
    int t = threshold_in(crl_thresholds, DBT_ARRAY_LEN(crl_thresholds), ci->next_update, now);
    char key[160];
    snprintf(key, sizeof(key), "crl:%s:%s:%lld", ci->verified_by_sha256, ci->delta ? "d" : "",
             (long long)ci->next_update);
    if (t < 0 || !first_time(e, key, t))
        return;
    char date[32], days[24], threshold[16];
    struct tm tm;
    gmtime_r(&ci->next_update, &tm);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(days, sizeof(days), "%lld", (long long)((ci->next_update - now) / 86400));
    snprintf(threshold, sizeof(threshold), "%d", t);
    const char *effect = t != 0   ? "a fresh CRL is due before then"
                         : refuse ? "crl_stale = refuse: chains it covers fail with tls_crl_stale"
                                  : "crl_stale = warn: still enforced, connections go on";
    px_log_event(t == 0 ? CFG_LOG_ERROR : CFG_LOG_WARN, "crl_next_update", "bundle", bundle,
                 "issuer", ci->issuer, "source", ci->source, "next_update", date, "days_left", days,
                 "threshold_days", t == 0 ? "past" : threshold, "detail", effect, NULL);
}

void px_expiry_check(struct px_server *srv)
{
    struct px_expiry *e = srv->expiry;
    if (!e)
        return;
    time_t now = time(NULL);
    uv_mutex_lock(&srv->trust_lock);
    for (size_t i = 0; i < srv->listener_count; i++) {
        const char *path = cfg_listener_bundle(srv->cfg, srv->listeners[i].cfg);
        const struct tlsw_gen *g = srv->listeners[i].gen;
        for (size_t c = 0; c < tlsw_gen_cert_count(g); c++)
            check_cert(e, tlsw_gen_cert(g, c), now, "bundle", "bundle", path, "");
        for (size_t c = 0; c < tlsw_gen_crl_count(g); c++)
            check_crl(e, tlsw_gen_crl(g, c), now, path,
                      srv->cfg->crl_stale == CFG_CRL_STALE_REFUSE);
        /* The certificate clients of a client_tls listener verify: an expiry there locks
         * every TLS client out, so it is warned about like the rest. */
        if (srv->listeners[i].client_id)
            check_cert(e, tlsw_server_leaf(srv->listeners[i].client_id), now, "client_cert",
                       "listener", srv->listeners[i].cfg->name, "0");
    }
    uv_mutex_unlock(&srv->trust_lock);
    uv_mutex_lock(&srv->seen_lock);
    for (size_t i = 0; i < srv->listener_count; i++) {
        const struct px_seen_chain *sc = &srv->listeners[i].seen;
        for (size_t d = 0; d < sc->len; d++) {
            char depth[24];
            snprintf(depth, sizeof(depth), "%zu", d);
            check_cert(e, &sc->certs[d], now, "upstream", "listener", srv->listeners[i].cfg->name,
                       depth);
        }
    }
    uv_mutex_unlock(&srv->seen_lock);
}

static void on_timer(uv_timer_t *t)
{
    struct px_expiry *e = t->data;
    px_expiry_check(e->srv);
}

int px_expiry_start(struct px_server *srv, uv_loop_t *loop)
{
    struct px_expiry *e = calloc(1, sizeof(*e));
    if (!e)
        return UV_ENOMEM;
    e->srv = srv;
    uv_timer_init(loop, &e->timer);
    e->timer.data = e;
    srv->expiry = e;
    px_expiry_check(srv);
    uv_timer_start(&e->timer, on_timer, CHECK_EVERY_MS, CHECK_EVERY_MS);
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    struct px_expiry *e = h->data;
    free(e->warned);
    free(e);
}

void px_expiry_stop(struct px_server *srv)
{
    if (!srv->expiry)
        return;
    uv_close((uv_handle_t *)&srv->expiry->timer, on_closed);
    srv->expiry = NULL;
}
