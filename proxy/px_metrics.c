#include "px_metrics.h"

#include <inttypes.h>
#include <openssl/crypto.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "dbt_utf8.h"
#include "px.h"
#include "px_log.h"

#ifndef DBTRUST_VERSION
#define DBTRUST_VERSION "0.0.0"
#endif

static const double hs_bounds[PX_HS_BUCKETS] = {PX_HS_BUCKET_BOUNDS};

void px_stats_handshake(struct px_listener_stats *s, uint64_t ns)
{
    size_t i = 0;
    while (i < PX_HS_BUCKETS && (double)ns / 1e9 > hs_bounds[i])
        i++;
    px_counter_add(&s->hs_buckets[i], 1);
    px_counter_add(&s->hs_sum_ns, ns);
    px_counter_add(&s->hs_count, 1);
}

void px_stats_app(struct px_listener_stats *s, const char *app, bool logged_in)
{
    size_t n = atomic_load_explicit(&s->app_count, memory_order_relaxed); /* we are the writer */
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s->apps[i].name, app) == 0) {
            px_counter_add(&s->apps[i].connections, 1);
            return;
        }
    }
    /* Only a session the upstream let in may claim a slot: anyone can send names, but a client
     * without valid credentials cannot fill the table and push the real applications into
     * "other" for the life of the process. */
    if (n == PX_APPS_MAX || !logged_in) {
        px_counter_add(&s->apps_other, 1);
        return;
    }
    /* Names are valid UTF-8 already (sanitised at capture); copying them the same way keeps
     * the label valid even if a caller's buffer were longer than a slot. */
    dbt_utf8_copy_cstr(s->apps[n].name, sizeof(s->apps[n].name), app);
    px_counter_add(&s->apps[n].connections, 1);
    /* Release: a reader that sees the new count also sees the name written above. */
    atomic_store_explicit(&s->app_count, n + 1, memory_order_release);
}

/* ---- Prometheus text format ---- */

/* A label value: backslash, double quote and line feed escaped, as the format requires, and
 * valid UTF-8 whatever the bytes: Prometheus rejects the whole scrape over one label that is not.
 * Names peers choose are already clean (sanitised at capture, dbt_utf8.h); this also covers what
 * comes from elsewhere - certificate subjects, bundle paths, listener names - replacing each
 * ill-formed part with U+FFFD, as at capture. */
static void label(FILE *out, const char *v)
{
    const uint8_t *p = (const uint8_t *)v;
    size_t left = strlen(v);
    fputc('"', out);
    while (left > 0) {
        uint32_t cp;
        size_t n = dbt_utf8_next(p, left, &cp);
        if (cp == DBT_UTF8_INVALID)
            fputs(DBT_UTF8_REPLACEMENT, out);
        else if (cp == '\\' || cp == '"')
            fprintf(out, "\\%c", (char)cp);
        else if (cp == '\n')
            fputs("\\n", out);
        else
            fwrite(p, 1, n, out);
        p += n;
        left -= n;
    }
    fputc('"', out);
}

static void family(FILE *out, const char *name, const char *type, const char *help)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Sum of one counter (at offset in px_listener_stats) over every worker's copy for listener i. */
static uint64_t sum_at(struct px_server *srv, size_t i, size_t offset)
{
    uint64_t sum = 0;
    for (unsigned k = 0; k < srv->worker_count; k++)
        sum += px_counter_get((px_counter *)((char *)&srv->workers[k].wls[i].stats + offset));
    return sum;
}

#define SUM(srv, i, field) sum_at((srv), (i), offsetof(struct px_listener_stats, field))
#define SUM_NTH(srv, i, array, n)                                                                  \
    sum_at((srv), (i), offsetof(struct px_listener_stats, array) + (size_t)(n) * sizeof(px_counter))

static void connections(struct px_server *srv, FILE *out)
{
    family(out, "dbtrust_connections_total", "counter",
           "Connections ended, by the reason they ended with (none = normal end).");
    for (size_t i = 0; i < srv->listener_count; i++) {
        for (int r = 0; r < DBT_REASON_COUNT; r++) {
            uint64_t n = SUM_NTH(srv, i, conns_by_reason, r);
            if (n == 0 && r != DBT_NONE)
                continue;
            fputs("dbtrust_connections_total{listener=", out);
            label(out, srv->listeners[i].cfg->name);
            fprintf(out, ",result=\"%s\"} %llu\n", dbt_reason_name(r), (unsigned long long)n);
        }
    }
    family(out, "dbtrust_overloaded", "gauge",
           "1 while resident memory is over memory_limit: new connections are paused and "
           "pending startups refused (reason overloaded).");
    fprintf(out, "dbtrust_overloaded %d\n", atomic_load(&srv->overloaded) ? 1 : 0);
    family(out, "dbtrust_connections_active", "gauge", "Connections open now.");
    for (size_t i = 0; i < srv->listener_count; i++) {
        fputs("dbtrust_connections_active{listener=", out);
        label(out, srv->listeners[i].cfg->name);
        fprintf(out, "} %u\n", atomic_load(&srv->listeners[i].active));
    }
    family(out, "dbtrust_tls_failures_total", "counter",
           "TLS set-ups that failed, by reason: upstream (refused, unverified, timed out) and, "
           "on client_tls/client_allow listeners, the client leg's refusals (client_*).");
    for (size_t i = 0; i < srv->listener_count; i++) {
        const struct cfg_listener *lc = srv->listeners[i].cfg;
        bool client_policy = lc->client_tls != CFG_CLIENT_TLS_OFF || lc->client_allow_count > 0;
        for (int r = 0; r < DBT_REASON_COUNT; r++) {
            enum dbt_reason_class cls = dbt_reason_class(r);
            if (cls != DBT_CLASS_TLS && !(cls == DBT_CLASS_CLIENT_REFUSED && client_policy))
                continue;
            fputs("dbtrust_tls_failures_total{listener=", out);
            label(out, srv->listeners[i].cfg->name);
            fprintf(out, ",reason=\"%s\"} %llu\n", dbt_reason_name(r),
                    (unsigned long long)SUM_NTH(srv, i, conns_by_reason, r));
        }
    }
    family(out, "dbtrust_bytes_total", "counter", "Plaintext bytes relayed, by direction.");
    for (size_t i = 0; i < srv->listener_count; i++) {
        const char *name = srv->listeners[i].cfg->name;
        fputs("dbtrust_bytes_total{listener=", out);
        label(out, name);
        fprintf(out, ",direction=\"client_to_upstream\"} %llu\n",
                (unsigned long long)SUM(srv, i, bytes_from_client));
        fputs("dbtrust_bytes_total{listener=", out);
        label(out, name);
        fprintf(out, ",direction=\"upstream_to_client\"} %llu\n",
                (unsigned long long)SUM(srv, i, bytes_to_client));
    }
}

static void handshakes(struct px_server *srv, FILE *out)
{
    family(out, "dbtrust_upstream_handshake_seconds", "histogram",
           "Time from the upstream TCP connection to a verified TLS session.");
    for (size_t i = 0; i < srv->listener_count; i++) {
        uint64_t cumulative = 0;
        for (size_t b = 0; b <= PX_HS_BUCKETS; b++) {
            cumulative += SUM_NTH(srv, i, hs_buckets, b);
            fputs("dbtrust_upstream_handshake_seconds_bucket{listener=", out);
            label(out, srv->listeners[i].cfg->name);
            if (b < PX_HS_BUCKETS)
                fprintf(out, ",le=\"%g\"} %llu\n", hs_bounds[b], (unsigned long long)cumulative);
            else
                fprintf(out, ",le=\"+Inf\"} %llu\n", (unsigned long long)cumulative);
        }
        fputs("dbtrust_upstream_handshake_seconds_sum{listener=", out);
        label(out, srv->listeners[i].cfg->name);
        fprintf(out, "} %.6f\n", (double)SUM(srv, i, hs_sum_ns) / 1e9);
        fputs("dbtrust_upstream_handshake_seconds_count{listener=", out);
        label(out, srv->listeners[i].cfg->name);
        fprintf(out, "} %llu\n", (unsigned long long)SUM(srv, i, hs_count));
    }
    family(out, "dbtrust_upstream_tls_resumed_total", "counter",
           "Upstream TLS sessions resumed from a ticket of an earlier verified session.");
    for (size_t i = 0; i < srv->listener_count; i++) {
        fputs("dbtrust_upstream_tls_resumed_total{listener=", out);
        label(out, srv->listeners[i].cfg->name);
        fprintf(out, "} %llu\n", (unsigned long long)SUM(srv, i, hs_resumed));
    }
}

/* The connection count of application name in worker k's table for listener i, or -1 when the
 * table does not have the name. */
static int64_t app_count_in(struct px_server *srv, size_t i, unsigned k, const char *name)
{
    struct px_listener_stats *s = &srv->workers[k].wls[i].stats;
    size_t n = atomic_load_explicit(&s->app_count, memory_order_acquire);
    for (size_t a = 0; a < n; a++)
        if (strcmp(s->apps[a].name, name) == 0)
            return (int64_t)px_counter_get(&s->apps[a].connections);
    return -1;
}

/* Application names from all workers, merged (each worker keeps its own table): each name is
 * printed at the first worker that has it. */
static void applications(struct px_server *srv, FILE *out)
{
    family(out, "dbtrust_application_connections_total", "counter",
           "Connections ended, by application_name (PostgreSQL) or program_name (MySQL); "
           "a name gets its own series once a session with it logged in (32 names per "
           "worker), other connections count as other.");
    for (size_t i = 0; i < srv->listener_count; i++) {
        for (unsigned k = 0; k < srv->worker_count; k++) {
            struct px_listener_stats *s = &srv->workers[k].wls[i].stats;
            size_t n = atomic_load_explicit(&s->app_count, memory_order_acquire);
            for (size_t a = 0; a < n; a++) {
                const char *name = s->apps[a].name;
                bool earlier = false;
                uint64_t total = 0;
                for (unsigned j = 0; j < srv->worker_count; j++) {
                    int64_t c = app_count_in(srv, i, j, name);
                    earlier = earlier || (j < k && c >= 0);
                    total += c > 0 ? (uint64_t)c : 0;
                }
                if (earlier)
                    continue;
                fputs("dbtrust_application_connections_total{listener=", out);
                label(out, srv->listeners[i].cfg->name);
                fputs(",application=", out);
                label(out, name);
                fprintf(out, "} %llu\n", (unsigned long long)total);
            }
        }
        uint64_t other = SUM(srv, i, apps_other);
        if (other) {
            fputs("dbtrust_application_connections_total{listener=", out);
            label(out, srv->listeners[i].cfg->name);
            fprintf(out, ",application=\"other\"} %llu\n", (unsigned long long)other);
        }
    }
}

/* One distinct bundle in force: its path, its generation (referenced: unref after use) and
 * when that generation went into force. */
struct bundle_in_force {
    const char *path;
    struct tlsw_gen *gen;
    double since;
};

/* The distinct generations in force, one per bundle path. */
static size_t bundles_in_force(struct px_server *srv, struct bundle_in_force *out)
{
    size_t n = 0;
    uv_mutex_lock(&srv->trust_lock);
    for (size_t i = 0; i < srv->listener_count; i++) {
        const char *path = cfg_listener_bundle(srv->cfg, srv->listeners[i].cfg);
        bool seen = false;
        for (size_t j = 0; j < n; j++)
            seen = seen || strcmp(out[j].path, path) == 0;
        if (seen)
            continue;
        out[n] = (struct bundle_in_force){path, srv->listeners[i].gen, srv->listeners[i].gen_since};
        tlsw_gen_ref(out[n++].gen);
    }
    uv_mutex_unlock(&srv->trust_lock);
    return n;
}

/* What each pod runs, as one series per bundle whose labels change with the content: "which pods
 * still run the old bundle" is then a query on sha256 (the bundle's content hash, as in /bundle)
 * rather than a diff of certificate lists. */
static void bundle_identities(FILE *out, const struct bundle_in_force *b, size_t n)
{
    family(out, "dbtrust_bundle_info", "gauge",
           "The bundle in force, by path and SHA-256 of its content (as in /bundle); always 1.");
    for (size_t i = 0; i < n; i++) {
        fputs("dbtrust_bundle_info{bundle=", out);
        label(out, b[i].path);
        fprintf(out, ",sha256=\"%s\"} 1\n", tlsw_gen_sha256(b[i].gen));
    }
    family(out, "dbtrust_bundle_loaded_timestamp_seconds", "gauge",
           "When the bundle in force was loaded: at start or by the reload that applied it "
           "(Unix time).");
    for (size_t i = 0; i < n; i++) {
        fputs("dbtrust_bundle_loaded_timestamp_seconds{bundle=", out);
        label(out, b[i].path);
        fprintf(out, "} %.3f\n", b[i].since);
    }
    /* The CRLs of a `crl =` path travel in the same generation as their bundle (CRL blocks
     * inside the bundle are covered by its sha256): which pods run which CRL files. */
    family(out, "dbtrust_crl_info", "gauge",
           "The CRL files in force with a bundle, by bundle path and SHA-256 over the files of "
           "the crl path (as crl_sha256 in /bundle); always 1. Absent without a crl path.");
    for (size_t i = 0; i < n; i++) {
        const char *sha = tlsw_gen_crl_sha256(b[i].gen);
        if (sha == NULL || sha[0] == '\0')
            continue;
        fputs("dbtrust_crl_info{bundle=", out);
        label(out, b[i].path);
        fprintf(out, ",sha256=\"%s\"} 1\n", sha);
    }
}

/* The serving certificates of client_tls listeners: what clients see, and when it expires. */
static void client_identities(struct px_server *srv, FILE *out)
{
    family(out, "dbtrust_client_cert_reloads_total", "counter",
           "Serving certificate reloads of client_tls listeners: applied (ok) and refused.");
    fprintf(out, "dbtrust_client_cert_reloads_total{result=\"ok\"} %u\n",
            atomic_load(&srv->client_id_reloads_ok));
    fprintf(out, "dbtrust_client_cert_reloads_total{result=\"refused\"} %u\n",
            atomic_load(&srv->client_id_reloads_failed));
    size_t n = 0;
    struct tlsw_server **ids = calloc(srv->listener_count, sizeof(*ids));
    const char **names = calloc(srv->listener_count, sizeof(*names));
    uv_mutex_lock(&srv->trust_lock);
    for (size_t i = 0; ids && names && i < srv->listener_count; i++) {
        if (!srv->listeners[i].client_id)
            continue;
        names[n] = srv->listeners[i].cfg->name;
        ids[n] = srv->listeners[i].client_id;
        tlsw_server_ref(ids[n++]);
    }
    uv_mutex_unlock(&srv->trust_lock);
    family(out, "dbtrust_client_cert_expiry_timestamp_seconds", "gauge",
           "notAfter of the certificate a client_tls listener presents (Unix time).");
    for (size_t i = 0; i < n; i++) {
        const struct tlsw_cert_info *leaf = tlsw_server_leaf(ids[i]);
        fputs("dbtrust_client_cert_expiry_timestamp_seconds{listener=", out);
        label(out, names[i]);
        fputs(",subject=", out);
        label(out, leaf->subject);
        fprintf(out, ",sha256=\"%s\"} %lld\n", leaf->sha256, (long long)leaf->not_after);
    }
    /* Like dbtrust_bundle_info: which pods present the old serving certificate. */
    family(out, "dbtrust_client_cert_info", "gauge",
           "The certificate a client_tls listener presents, by SHA-256 of its DER; always 1.");
    for (size_t i = 0; i < n; i++) {
        fputs("dbtrust_client_cert_info{listener=", out);
        label(out, names[i]);
        fprintf(out, ",sha256=\"%s\"} 1\n", tlsw_server_leaf(ids[i])->sha256);
        tlsw_server_unref(ids[i]);
    }
    free(ids);
    free(names);
}

static void trust(struct px_server *srv, FILE *out)
{
    family(out, "dbtrust_bundle_reloads_total", "counter",
           "Bundle reloads applied (ok), applied by a forced reload without the rotation guard "
           "(overridden) and refused (invalid bundle or rotation guard).");
    fprintf(out, "dbtrust_bundle_reloads_total{result=\"ok\"} %u\n", atomic_load(&srv->reloads_ok));
    fprintf(out, "dbtrust_bundle_reloads_total{result=\"overridden\"} %u\n",
            atomic_load(&srv->reloads_overridden));
    fprintf(out, "dbtrust_bundle_reloads_total{result=\"refused\"} %u\n",
            atomic_load(&srv->reloads_failed));

    struct bundle_in_force *b = calloc(srv->listener_count, sizeof(*b));
    size_t n = b ? bundles_in_force(srv, b) : 0;
    bundle_identities(out, b, n);
    family(out, "dbtrust_bundle_certificates", "gauge", "Certificates in the bundle in force.");
    for (size_t i = 0; i < n; i++) {
        fputs("dbtrust_bundle_certificates{bundle=", out);
        label(out, b[i].path);
        fprintf(out, "} %zu\n", tlsw_gen_cert_count(b[i].gen));
    }
    family(out, "dbtrust_bundle_expiry_timestamp_seconds", "gauge",
           "notAfter of each certificate of the bundle in force (Unix time).");
    for (size_t i = 0; i < n; i++) {
        for (size_t c = 0; c < tlsw_gen_cert_count(b[i].gen); c++) {
            const struct tlsw_cert_info *ci = tlsw_gen_cert(b[i].gen, c);
            fputs("dbtrust_bundle_expiry_timestamp_seconds{bundle=", out);
            label(out, b[i].path);
            fputs(",subject=", out);
            label(out, ci->subject);
            fprintf(out, ",sha256=\"%s\"} %lld\n", ci->sha256, (long long)ci->not_after);
        }
    }
    family(out, "dbtrust_crl_next_update_timestamp_seconds", "gauge",
           "nextUpdate of each CRL in force, by bundle and issuer (Unix time; a CRL past it is "
           "still enforced unless crl_stale = refuse).");
    for (size_t i = 0; i < n; i++) {
        for (size_t c = 0; c < tlsw_gen_crl_count(b[i].gen); c++) {
            const struct tlsw_crl_info *ci = tlsw_gen_crl(b[i].gen, c);
            if (ci->next_update == (time_t)-1 || ci->delta)
                continue; /* none to wait for; a delta's base carries the issuer's date */
            fputs("dbtrust_crl_next_update_timestamp_seconds{bundle=", out);
            label(out, b[i].path);
            fputs(",issuer=", out);
            label(out, ci->issuer);
            fprintf(out, "} %lld\n", (long long)ci->next_update);
        }
        tlsw_gen_unref(b[i].gen); /* the reference bundles_in_force took */
    }
    free(b);
    client_identities(srv, out);

    family(out, "dbtrust_upstream_cert_expiry_timestamp_seconds", "gauge",
           "notAfter of each certificate of the chain seen in the last verified handshake with "
           "a new leaf, by listener and depth (0 = leaf).");
    uv_mutex_lock(&srv->seen_lock);
    for (size_t i = 0; i < srv->listener_count; i++) {
        const struct px_seen_chain *sc = &srv->listeners[i].seen;
        for (size_t d = 0; d < sc->len; d++) {
            fputs("dbtrust_upstream_cert_expiry_timestamp_seconds{listener=", out);
            label(out, srv->listeners[i].cfg->name);
            fprintf(out, ",depth=\"%zu\",subject=", d);
            label(out, sc->certs[d].subject);
            fprintf(out, "} %lld\n", (long long)sc->certs[d].not_after);
        }
    }
    uv_mutex_unlock(&srv->seen_lock);
}

void px_metrics_render(struct px_server *srv, FILE *out)
{
    family(out, "dbtrust_build_info", "gauge", "Version of dbtrust and of the OpenSSL it runs on.");
    fputs("dbtrust_build_info{version=", out);
    label(out, DBTRUST_VERSION);
    fputs(",openssl=", out);
    label(out, OpenSSL_version(OPENSSL_VERSION));
    fputs("} 1\n", out);
    connections(srv, out);
    handshakes(srv, out);
    applications(srv, out);
    trust(srv, out);
    family(out, "dbtrust_log_lines_dropped_total", "counter",
           "Log lines dropped because the reader of stderr did not keep up (connections never "
           "wait for the log).");
    fprintf(out, "dbtrust_log_lines_dropped_total %" PRIu64 "\n", px_log_dropped_total());
}
