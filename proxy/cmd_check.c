/* dbtrust check: a real handshake to every configured upstream, the chain it presented and the
 * verdict, before a deployment or a rotation date. With --bundle, the candidate bundle is tried
 * instead of the configured ones: the rotation guard, run by hand before deploying. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "px_cmd.h"
#include "px_probe.h"
#include "px_reload.h"

/* Exit statuses, worst first (documented in --help and the README). */
enum {
    EXIT_VERIFIED = 0,
    EXIT_FAILED = 1,      /* an upstream did not verify (or broke the protocol) */
    EXIT_USAGE = 2,       /* bad arguments, configuration or bundle */
    EXIT_EXPIRING = 3,    /* all verified, but a certificate expires within --min-days */
    EXIT_UNREACHABLE = 4, /* an upstream could not be reached: no verdict for it */
};

static const char check_usage[] =
    "Usage: dbtrust check --config FILE [--tap] [--min-days N] [--bundle CANDIDATE.pem]\n"
    "\n"
    "Connects to every upstream of every listener, upgrades to TLS as the proxy does (no\n"
    "credentials are sent) and verifies the chain and the name against the listener's bundle,\n"
    "or against CANDIDATE.pem with --bundle. Prints each chain with its expiry.\n"
    "  --tap         TAP version 13 output (one test per upstream, and per bundle with\n"
    "                --min-days)\n"
    "  --min-days N  also fail when a certificate of a live chain or of a bundle expires\n"
    "                within N days\n"
    "Exit status: 0 all verified; 1 an upstream failed verification; 2 usage, configuration\n"
    "or bundle error; 3 all verified but a certificate expires within --min-days; 4 an\n"
    "upstream could not be reached (and none failed).\n";

struct check {
    struct cfg cfg;
    bool tap;
    long min_days; /* -1: not asked */
    const char *candidate;
    int test_no;
    int status;
};

/* Keeps the worse of two statuses. */
static void worsen(struct check *ck, int status)
{
    static const int rank[] = {[EXIT_VERIFIED] = 0,
                               [EXIT_EXPIRING] = 1,
                               [EXIT_UNREACHABLE] = 2,
                               [EXIT_FAILED] = 3,
                               [EXIT_USAGE] = 4};
    if (rank[status] > rank[ck->status])
        ck->status = status;
}

static long days_left(time_t not_after, time_t now)
{
    return (long)((not_after - now) / 86400);
}

static void print_cert(const struct check *ck, const char *prefix, const struct tlsw_cert_info *ci,
                       time_t now)
{
    char date[32];
    struct tm tm;
    gmtime_r(&ci->not_after, &tm);
    strftime(date, sizeof(date), "%Y-%m-%d", &tm);
    printf("%s%s%s\n%s    issuer %s, notAfter %s (%ld days left)\n", ck->tap ? "# " : "", prefix,
           ci->subject, ck->tap ? "# " : "", ci->issuer, date, days_left(ci->not_after, now));
}

/* Under a verified chain's certificate, with CRLs in force: the CRL that was checked for it
 * (the chain verified, so it is not on it), or why none was. Nothing without CRLs, so the
 * output of a bundle without any stays as it was. */
static void print_revocation(const struct check *ck, struct tlsw_gen *g,
                             const struct tlsw_cert_info *ci, bool top, time_t now)
{
    const struct tlsw_crl_info *crl = NULL;
    if (tlsw_gen_crl_count(g) == 0)
        return;
    for (size_t i = 0; i < tlsw_gen_crl_count(g); i++)
        if (!tlsw_gen_crl(g, i)->delta && strcmp(tlsw_gen_crl(g, i)->issuer, ci->issuer) == 0)
            crl = tlsw_gen_crl(g, i);
    const char *tap = ck->tap ? "# " : "";
    if (top && strcmp(ci->subject, ci->issuer) == 0) {
        printf("%s    revocation: root of the bundle, no CRL applies\n", tap);
    } else if (crl == NULL) {
        printf("%s    revocation: not checked, no CRL for its issuer%s\n", tap,
               ck->cfg.crl_required ? " (crl_required)" : "");
    } else {
        char next[32] = "none";
        struct tm tm;
        if (crl->next_update != (time_t)-1 && gmtime_r(&crl->next_update, &tm) != NULL)
            strftime(next, sizeof(next), "%Y-%m-%d", &tm);
        bool stale = crl->next_update != (time_t)-1 && crl->next_update < now;
        printf("%s    revocation: not revoked (CRL of its issuer, %zu entries, nextUpdate %s%s)\n",
               tap, crl->entries, next, stale ? ", STALE" : "");
    }
}

/* The first certificate in certs expiring within --min-days, or NULL. */
static const struct tlsw_cert_info *
expiring(const struct check *ck, const struct tlsw_cert_info *certs, size_t n, time_t now)
{
    for (size_t i = 0; ck->min_days >= 0 && i < n; i++)
        if (days_left(certs[i].not_after, now) < ck->min_days)
            return &certs[i];
    return NULL;
}

static void check_upstream(struct check *ck, const struct cfg_listener *l, size_t u,
                           struct tlsw_gen *g, const char *bundle)
{
    struct px_probe_result r;
    px_probe(l, u, g, NULL, &r);
    time_t now = time(NULL);
    char up[300];
    cfg_addr_format(&l->upstream[u], up, sizeof(up));
    const struct tlsw_cert_info *soon =
        r.reason == DBT_NONE ? expiring(ck, r.chain, r.chain_len, now) : NULL;
    bool ok = r.reason == DBT_NONE && !soon;
    ck->test_no++;
    if (ck->tap)
        printf("%s %d - listener %s upstream %s: ", ok ? "ok" : "not ok", ck->test_no, l->name, up);
    else
        printf("listener %s (%s) upstream %s%s%s%s: ", l->name, cfg_protocol_name(l->protocol), up,
               r.address[0] ? " [" : "", r.address, r.address[0] ? "]" : "");
    if (r.reason == DBT_NONE) {
        printf("verified (%s, name %s, %s %s)", r.tls_version, px_verify_name(l, u),
               ck->candidate ? "candidate bundle" : "bundle", bundle);
        if (soon)
            printf("; EXPIRING: %s has %ld days left (< %ld)", soon->subject,
                   days_left(soon->not_after, now), ck->min_days);
        printf("\n");
        for (size_t d = 0; d < r.chain_len; d++) {
            char prefix[32];
            snprintf(prefix, sizeof(prefix), "  depth %zu: ", d);
            print_cert(ck, prefix, &r.chain[d], now);
            print_revocation(ck, g, &r.chain[d], d + 1 == r.chain_len, now);
        }
        worsen(ck, soon ? EXIT_EXPIRING : EXIT_VERIFIED);
        return;
    }
    bool unreachable = dbt_reason_class(r.reason) == DBT_CLASS_UNREACHABLE;
    printf("%s %s: %s\n", unreachable ? "UNREACHABLE" : "FAILED", dbt_reason_name(r.reason),
           r.detail);
    worsen(ck, unreachable ? EXIT_UNREACHABLE : EXIT_FAILED);
}

static void check_bundle_expiry(struct check *ck, struct tlsw_gen *g, const char *path)
{
    time_t now = time(NULL);
    size_t n = tlsw_gen_cert_count(g), bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += days_left(tlsw_gen_cert(g, i)->not_after, now) < ck->min_days;
    ck->test_no++;
    if (ck->tap)
        printf("%s %d - bundle %s: ", bad ? "not ok" : "ok", ck->test_no, path);
    else
        printf("bundle %s: ", path);
    printf("%zu certificate(s), %zu expire within %ld days\n", n, bad, ck->min_days);
    for (size_t i = 0; i < n; i++) {
        const struct tlsw_cert_info *ci = tlsw_gen_cert(g, i);
        if (days_left(ci->not_after, now) < ck->min_days)
            print_cert(ck, "  expiring: ", ci, now);
    }
    if (bad)
        worsen(ck, EXIT_EXPIRING);
}

static int parse_args(int argc, char **argv, struct check *ck, const char **config)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},   {"tap", no_argument, NULL, 't'},
        {"min-days", required_argument, NULL, 'm'}, {"bundle", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case 'c':
            *config = optarg;
            break;
        case 't':
            ck->tap = true;
            break;
        case 'm':
            ck->min_days = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || ck->min_days < 0 || ck->min_days > 36500) {
                fprintf(stderr, "dbtrust check: --min-days wants a number of days, not '%s'\n",
                        optarg);
                return -1;
            }
            break;
        case 'b':
            ck->candidate = optarg;
            break;
        case 'h':
            fputs(check_usage, stdout);
            exit(EXIT_VERIFIED);
        default:
            fputs(check_usage, stderr);
            return -1;
        }
    }
    if (!*config || optind < argc) {
        fprintf(stderr, "dbtrust check: %s\n%s",
                *config ? "unexpected argument" : "--config is required", check_usage);
        return -1;
    }
    return 0;
}

/* Loads every bundle to use: the candidate for all listeners, or each listener's own. */
static int load_bundles(struct check *ck, struct tlsw_gen **gens)
{
    char err[512];
    for (size_t i = 0; i < ck->cfg.listener_count; i++) {
        const struct cfg_listener *l = &ck->cfg.listeners[i];
        const char *path = ck->candidate ? ck->candidate : cfg_listener_bundle(&ck->cfg, l);
        const char *crl = cfg_listener_crl(&ck->cfg, l);
        for (size_t j = 0; j < i && !gens[i]; j++) {
            const struct cfg_listener *o = &ck->cfg.listeners[j];
            const char *other = ck->candidate ? ck->candidate : cfg_listener_bundle(&ck->cfg, o);
            if (strcmp(other, path) == 0 && strcmp(cfg_listener_crl(&ck->cfg, o), crl) == 0) {
                gens[i] = gens[j];
                tlsw_gen_ref(gens[i]);
            }
        }
        if (!gens[i] && px_trust_load(&ck->cfg, path, crl, &gens[i], err, sizeof(err)) != 0) {
            fprintf(stderr, "dbtrust check: bundle refused: %s\n", err);
            return -1;
        }
    }
    return 0;
}

/* True for the first listener using gens[i]: one bundle test per distinct generation. */
static bool first_use(struct tlsw_gen *const *gens, size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (gens[j] == gens[i])
            return false;
    return true;
}

int px_cmd_check(int argc, char **argv)
{
    struct check ck = {.min_days = -1};
    const char *config = NULL;
    char err[1024];
    if (parse_args(argc, argv, &ck, &config) != 0)
        return EXIT_USAGE;
    cfg_init(&ck.cfg);
    if (cfg_load_file(&ck.cfg, config, err, sizeof(err)) != 0 ||
        cfg_finish(&ck.cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "dbtrust check: %s\n", err);
        cfg_free(&ck.cfg);
        return EXIT_USAGE;
    }
    struct tlsw_gen **gens = calloc(ck.cfg.listener_count, sizeof(*gens));
    if (!gens || load_bundles(&ck, gens) != 0) {
        ck.status = EXIT_USAGE;
        goto out;
    }
    int tests = 0;
    for (size_t i = 0; i < ck.cfg.listener_count; i++) {
        tests += (int)ck.cfg.listeners[i].upstream_count;
        tests += ck.min_days >= 0 && first_use(gens, i);
    }
    if (ck.tap)
        printf("TAP version 13\n1..%d\n", tests);
    for (size_t i = 0; i < ck.cfg.listener_count; i++) {
        const struct cfg_listener *l = &ck.cfg.listeners[i];
        const char *path = ck.candidate ? ck.candidate : cfg_listener_bundle(&ck.cfg, l);
        for (size_t u = 0; u < l->upstream_count; u++)
            check_upstream(&ck, l, u, gens[i], path);
    }
    for (size_t i = 0; ck.min_days >= 0 && i < ck.cfg.listener_count; i++) {
        if (first_use(gens, i))
            check_bundle_expiry(&ck, gens[i],
                                ck.candidate ? ck.candidate
                                             : cfg_listener_bundle(&ck.cfg, &ck.cfg.listeners[i]));
    }
out:
    for (size_t i = 0; gens && i < ck.cfg.listener_count; i++)
        if (gens[i])
            tlsw_gen_unref(gens[i]);
    free(gens);
    cfg_free(&ck.cfg);
    return ck.status;
}
