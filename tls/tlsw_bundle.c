/* CA bundle files for `dbtrust bundle inspect|merge`: the certificates of one or more PEM files
 * and what is wrong with them as a trust bundle. The daemon's own loader (tlsw_gen.c) only needs
 * "does it load"; an operator about to deploy a bundle needs to know why a rotation might break:
 * an expired root, an intermediate without its root, a leaf pasted by mistake, a certificate
 * lost behind a broken BEGIN line. The text between blocks is judged in tlsw_bundle_text.c, the
 * merged bundle written in tlsw_bundle_merge.c. */
#define TLSW_INTERNAL
#include "tlsw_bundle_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#define DAY_SECONDS (24L * 60 * 60)

static const struct {
    const char *name;
    bool is_error;
} warn_kinds[] = {
#define TLSW_BUNDLE_WARN_ROW(id, name, is_error) {name, is_error},
    TLSW_BUNDLE_WARN_MAP(TLSW_BUNDLE_WARN_ROW)
#undef TLSW_BUNDLE_WARN_ROW
};

const char *tlsw_bundle_warn_name(enum tlsw_bundle_warn kind)
{
    return (size_t)kind < DBT_ARRAY_LEN(warn_kinds) ? warn_kinds[kind].name : "unknown";
}

bool tlsw_bundle_warn_is_error(enum tlsw_bundle_warn kind)
{
    return (size_t)kind < DBT_ARRAY_LEN(warn_kinds) && warn_kinds[kind].is_error;
}

static void add_warning(struct tlsw_bundle *b, enum tlsw_bundle_warn kind, size_t file, size_t cert,
                        size_t other, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static void add_warning(struct tlsw_bundle *b, enum tlsw_bundle_warn kind, size_t file, size_t cert,
                        size_t other, unsigned line, const char *fmt, ...)
{
    if (b->warn_count == b->warn_cap) {
        size_t ncap = b->warn_cap == 0 ? 16 : 2 * b->warn_cap;
        struct bundle_warning *n = realloc(b->warns, ncap * sizeof(*n));
        if (n == NULL) {
            b->oom = true;
            return;
        }
        b->warns = n;
        b->warn_cap = ncap;
    }
    struct bundle_warning *w = &b->warns[b->warn_count];
    *w = (struct bundle_warning){
        .pub = {.kind = kind,
                .file = file,
                .crl = TLSW_BUNDLE_NONE,
                .cert = cert,
                .other = other,
                .line = line},
        .seq = b->warn_count,
    };
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->pub.detail, sizeof(w->pub.detail), fmt, ap);
    va_end(ap);
    b->warn_count++;
}

/* ---- PEM blocks ---------------------------------------------------------------------------- */

/* Line numbers for messages. Offsets asked for only grow, so counting is incremental. */
struct line_cursor {
    const unsigned char *data;
    size_t pos;
    unsigned line;
};

static unsigned line_at(struct line_cursor *c, size_t off)
{
    for (; c->pos < off; c->pos++)
        if (c->data[c->pos] == '\n')
            c->line++;
    return c->line;
}

/* Checks the skipped text [from, to) and reports its first bad line, once per stretch. In a file
 * without a single PEM block the problem is the whole file, an error rather than a warning. */
static void check_skipped(struct tlsw_bundle *b, size_t file, struct line_cursor *lc, size_t from,
                          size_t to, bool no_block_at_all)
{
    size_t off = 0;
    const char *problem = tlsw_bundle_check_text(lc->data, from, to, &off);
    if (problem == NULL)
        return;
    unsigned line = line_at(lc, off);
    if (no_block_at_all)
        add_warning(b, TLSW_BUNDLE_NOT_PEM, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                    "line %u: no PEM block in the file; %s", line, problem);
    else
        add_warning(b, TLSW_BUNDLE_GARBAGE, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                    "line %u: text outside the PEM blocks that is not a comment: %s", line,
                    problem);
}

static int push_cert(struct tlsw_bundle *b, size_t file, X509 *x, bool trusted, unsigned line,
                     const struct tlsw_cert_info *info)
{
    if (b->cert_count == b->cert_cap) {
        size_t ncap = b->cert_cap == 0 ? 16 : 2 * b->cert_cap;
        struct bundle_entry *n = realloc(b->certs, ncap * sizeof(*n));
        if (n == NULL)
            return -1;
        b->certs = n;
        b->cert_cap = ncap;
    }
    struct bundle_entry *e = &b->certs[b->cert_count++];
    e->x509 = x;
    e->trusted = trusted;
    e->pub = (struct tlsw_bundle_cert){
        .info = *info,
        .file = file,
        .index = ++b->files[file].cert_count,
        .line = line,
        /* Signature checked too: a name match alone is what a forged "root" would have. */
        .self_signed = X509_self_signed(x, 1) == 1,
        .dup_of = TLSW_BUNDLE_NONE,
    };
    ERR_clear_error(); /* X509_self_signed leaves a verify error queued for non-roots */
    return 0;
}

static int push_crl(struct tlsw_bundle *b, size_t file, X509_CRL *crl, unsigned line)
{
    if (b->crl_count == b->crl_cap) {
        size_t ncap = b->crl_cap == 0 ? 8 : 2 * b->crl_cap;
        struct bundle_crl *n = realloc(b->crls, ncap * sizeof(*n));
        if (n == NULL)
            return -1;
        b->crls = n;
        b->crl_cap = ncap;
    }
    struct bundle_crl *e = &b->crls[b->crl_count++];
    memset(e, 0, sizeof(*e));
    e->crl = crl;
    e->signer = TLSW_BUNDLE_NONE;
    e->pub.file = file;
    e->pub.index = ++b->file_crl_count[file];
    e->pub.line = line;
    e->pub.newer = TLSW_BUNDLE_NONE;
    return 0;
}

/* An X509 CRL block: kept for the checks across files (the daemon uses it); one that does not
 * decode refuses the file, as it does in the daemon. Returns false for any other block. */
static bool take_crl_block(struct tlsw_bundle *b, size_t file, const char *name,
                           const unsigned char *der, long derlen, unsigned line)
{
    char ebuf[256];
    X509_CRL *crl = NULL;
    int rc = tlsw_pem_crl(name, der, derlen, &crl);
    if (rc == 0)
        return false;
    if (rc < 0) {
        add_warning(b, TLSW_BUNDLE_BAD_CRL, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                    "line %u: %s block does not hold a valid CRL: %s", line, name,
                    tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
        return true;
    }
    if (push_crl(b, file, crl, line) != 0) {
        X509_CRL_free(crl);
        b->oom = true;
    }
    return true;
}

/* One decoded PEM block: a certificate or a CRL is kept, anything else (a key pasted along) is
 * reported, as the daemon ignores it and merge drops it. */
static void take_block(struct tlsw_bundle *b, size_t file, const char *name, const char *header,
                       const unsigned char *der, long derlen, unsigned line)
{
    char ebuf[256];
    X509 *x = NULL;
    if (take_crl_block(b, file, name, der, derlen, line))
        return;
    enum tlsw_pem_block kind = tlsw_pem_cert(name, header, der, derlen, &x);
    if (kind == TLSW_PEM_NOT_CERT) {
        add_warning(b, TLSW_BUNDLE_NOT_CERTIFICATE, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                    "line %u: %s block is neither a certificate nor a CRL (ignored by dbtrust, "
                    "dropped by merge)",
                    line, name);
        return;
    }
    if (kind == TLSW_PEM_ENCRYPTED) {
        add_warning(b, TLSW_BUNDLE_NOT_PEM, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                    "line %u: %s block is encrypted (Proc-Type header): dbtrust refuses the "
                    "bundle; trust anchors are public",
                    line, name);
        return;
    }
    bool trusted = strcmp(name, PEM_STRING_X509_TRUSTED) == 0;
    struct tlsw_cert_info info;
    if (x == NULL || tlsw_cert_info_fill(x, &info) != 0) {
        add_warning(b, TLSW_BUNDLE_NOT_PEM, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                    "line %u: %s block does not hold a valid certificate: %s", line, name,
                    tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
        X509_free(x);
        return;
    }
    if (push_cert(b, file, x, trusted, line, &info) != 0) {
        X509_free(x);
        b->oom = true;
    }
}

/* Reads the blocks with OpenSSL's PEM reader, one at a time so that the text it skips before
 * each one can be checked: a memory BIO's pending count tells how far it has read. A block that
 * OpenSSL cannot decode (broken base64, missing END line) stops the file: the daemon refuses
 * such a bundle as a whole. */
static void parse_pem(struct tlsw_bundle *b, size_t file, const unsigned char *data, size_t len)
{
    char ebuf[256];
    struct line_cursor lc = {.data = data, .pos = 0, .line = 1};
    size_t pos = 0, blocks = 0;
    BIO *bio = BIO_new_mem_buf(data, (int)len); /* len <= TLSW_BUNDLE_MAX_BYTES */

    if (bio == NULL) {
        b->oom = true;
        return;
    }
    for (;;) {
        char *name = NULL, *header = NULL;
        unsigned char *der = NULL;
        long derlen = 0;
        ERR_clear_error();
        int ok = PEM_read_bio(bio, &name, &header, &der, &derlen);
        size_t end = len - (size_t)BIO_pending(bio);
        if (!ok) {
            unsigned long e = ERR_peek_last_error();
            if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
                ERR_clear_error();
                check_skipped(b, file, &lc, pos, len, blocks == 0); /* the tail: no more blocks */
            } else {
                size_t begin = tlsw_bundle_find_begin(data, pos, end);
                check_skipped(b, file, &lc, pos, begin, false);
                unsigned line = line_at(&lc, begin);
                add_warning(b, TLSW_BUNDLE_NOT_PEM, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                            "line %u: cannot decode PEM block: %s", line,
                            tlsw_openssl_reason(ebuf, sizeof(ebuf), "empty or malformed block"));
            }
            break;
        }
        size_t begin = tlsw_bundle_find_begin(data, pos, end);
        check_skipped(b, file, &lc, pos, begin, false);
        take_block(b, file, name, header, der, derlen, line_at(&lc, begin));
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(der);
        pos = end;
        blocks++;
    }
    BIO_free(bio);
}

static void load_file(struct tlsw_bundle *b, size_t file)
{
    char err[256];
    unsigned char *data = NULL;
    size_t len = 0;
    const char *path = b->files[file].path;

    if (tlsw_read_file(path, &data, &len, err, sizeof(err)) != 0) {
        add_warning(b, TLSW_BUNDLE_UNREADABLE, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, 0,
                    "cannot read: %s", err);
        return;
    }
    size_t before = b->warn_count;
    parse_pem(b, file, data, len);
    free(data);
    bool refused = false;
    for (size_t i = before; i < b->warn_count; i++)
        refused |= tlsw_bundle_warn_is_error(b->warns[i].pub.kind);
    /* A file that failed to parse already says so; "no certificate" would only add noise. A
     * file of CRLs alone is what a CRL file is (inspected or merged with its bundle). */
    if (b->files[file].cert_count == 0 && b->file_crl_count[file] == 0 && !refused)
        add_warning(b, TLSW_BUNDLE_NO_CERTIFICATE, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, 0,
                    "no certificate in the file");
}

/* ---- checks across all certificates -------------------------------------------------------- */

long tlsw_bundle_days_left(time_t t, time_t now)
{
    long long d = (long long)t - (long long)now;
    /* Floor, not truncation: a certificate that expired an hour ago has -1 days left. */
    return (long)(d >= 0 ? d / DAY_SECONDS : -((-d + DAY_SECONDS - 1) / DAY_SECONDS));
}

static size_t find_first_copy(const struct tlsw_bundle *b, size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (b->certs[j].pub.dup_of == TLSW_BUNDLE_NONE &&
            strcmp(b->certs[j].pub.info.sha256, b->certs[i].pub.info.sha256) == 0)
            return j;
    return TLSW_BUNDLE_NONE;
}

/* Whether some other loaded certificate issued certificate i: names and key identifiers match
 * (X509_check_issued, as the chain builder picks candidates) and its key verifies the
 * signature, so a re-keyed root of the same name is not taken for the right one. */
static bool issuer_loaded(const struct tlsw_bundle *b, size_t i)
{
    X509 *x = b->certs[i].x509;
    bool found = false;
    for (size_t j = 0; j < b->cert_count && !found; j++) {
        X509 *cand = b->certs[j].x509;
        if (j == i || b->certs[j].pub.dup_of != TLSW_BUNDLE_NONE)
            continue;
        found =
            X509_check_issued(cand, x) == X509_V_OK && X509_verify(x, X509_get0_pubkey(cand)) == 1;
    }
    ERR_clear_error();
    return found;
}

static void check_validity(struct tlsw_bundle *b, size_t i, time_t now)
{
    const struct tlsw_bundle_cert *c = &b->certs[i].pub;
    char day[32];
    if (c->info.not_after != (time_t)-1 && c->info.not_after < now) {
        tlsw_format_day(c->info.not_after, day, sizeof(day));
        add_warning(b, TLSW_BUNDLE_EXPIRED, c->file, i, TLSW_BUNDLE_NONE, c->line,
                    "expired on %s (%ld days ago)", day,
                    tlsw_bundle_days_left(now, c->info.not_after)); /* whole days since */
    }
    if (c->info.not_before != (time_t)-1 && c->info.not_before > now) {
        tlsw_format_day(c->info.not_before, day, sizeof(day));
        add_warning(b, TLSW_BUNDLE_NOT_YET_VALID, c->file, i, TLSW_BUNDLE_NONE, c->line,
                    "not valid before %s (in %ld days)", day,
                    -tlsw_bundle_days_left(now, c->info.not_before)); /* rounded up */
    }
}

static void check_role(struct tlsw_bundle *b, size_t i)
{
    const struct tlsw_bundle_cert *c = &b->certs[i].pub;
    if (!c->info.is_ca) {
        add_warning(b, TLSW_BUNDLE_NOT_CA, c->file, i, TLSW_BUNDLE_NONE, c->line,
                    "not a CA: an end-entity certificate cannot anchor a chain and does not "
                    "belong in a trust bundle");
        return;
    }
    /* dbtrust verifies without partial chains: an intermediate is trusted only through its
     * root, so one whose root is missing verifies nothing. */
    if (!c->self_signed && !issuer_loaded(b, i))
        add_warning(b, TLSW_BUNDLE_MISSING_ROOT, c->file, i, TLSW_BUNDLE_NONE, c->line,
                    "intermediate without its root: issuer %s is not among the loaded "
                    "certificates, so no chain through it verifies",
                    c->info.issuer);
}

static void check_certs(struct tlsw_bundle *b, time_t now)
{
    for (size_t i = 0; i < b->cert_count; i++) {
        struct tlsw_bundle_cert *c = &b->certs[i].pub;
        c->dup_of = find_first_copy(b, i);
        if (c->dup_of != TLSW_BUNDLE_NONE) {
            const struct tlsw_bundle_cert *first = &b->certs[c->dup_of].pub;
            /* One warning per extra copy; its other findings were reported for the first. */
            add_warning(b, TLSW_BUNDLE_DUPLICATE, c->file, i, c->dup_of, c->line,
                        "duplicate of %s #%zu (same sha256 %.16s...)", b->files[first->file].path,
                        first->index, c->info.sha256);
            continue;
        }
        b->unique++;
        check_validity(b, i, now);
        check_role(b, i);
    }
}

/* ---- checks of the CRLs ------------------------------------------------------------------- */

static bool crl_is_delta(X509_CRL *c)
{
    ASN1_INTEGER *d = X509_CRL_get_ext_d2i(c, NID_delta_crl, NULL, NULL);
    bool delta = d != NULL;
    ASN1_INTEGER_free(d);
    return delta;
}

/* The CA among the unique certificates of every file that signed CRL i (as the daemon judges
 * it, tlsw_crl_signer), filling its metadata; a warning when there is none. */
static void verify_crl(struct tlsw_bundle *b, size_t i)
{
    char why[512];
    struct bundle_crl *c = &b->crls[i];
    STACK_OF(X509) *cas = sk_X509_new_null();
    if (cas == NULL) {
        b->oom = true;
        return;
    }
    for (size_t j = 0; j < b->cert_count; j++)
        if (b->certs[j].pub.dup_of == TLSW_BUNDLE_NONE && sk_X509_push(cas, b->certs[j].x509) <= 0)
            b->oom = true;
    X509 *signer = tlsw_crl_signer(c->crl, cas, why, sizeof(why));
    sk_X509_free(cas); /* the certificates stay b's */
    for (size_t j = 0; signer != NULL && j < b->cert_count; j++)
        if (b->certs[j].x509 == signer)
            c->signer = j;
    tlsw_crl_info_fill(c->crl, signer, b->files[c->pub.file].path, &c->pub.info);
    if (signer == NULL) {
        size_t before = b->warn_count;
        add_warning(b, TLSW_BUNDLE_CRL_UNVERIFIED, c->pub.file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE,
                    c->pub.line, "%s: dbtrust refuses a bundle with it", why);
        if (b->warn_count > before)
            b->warns[before].pub.crl = i;
    }
}

static void check_crl_dates(struct tlsw_bundle *b, size_t i, time_t now)
{
    const struct tlsw_bundle_crl *c = &b->crls[i].pub;
    char day[32];
    size_t before = b->warn_count;
    if (c->info.next_update != (time_t)-1 && c->info.next_update < now) {
        tlsw_format_iso(c->info.next_update, day, sizeof(day));
        add_warning(b, TLSW_BUNDLE_CRL_STALE, c->file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, c->line,
                    "past its nextUpdate %s (%ld days ago): still enforced with crl_stale = warn, "
                    "chains it covers fail with crl_stale = refuse",
                    day, tlsw_bundle_days_left(now, c->info.next_update));
    } else if (c->info.this_update != (time_t)-1 && c->info.this_update > now) {
        tlsw_format_iso(c->info.this_update, day, sizeof(day));
        add_warning(b, TLSW_BUNDLE_CRL_STALE, c->file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, c->line,
                    "thisUpdate %s is in the future (a clock off?)", day);
    }
    if (b->warn_count > before)
        b->warns[before].pub.crl = i;
}

/* Whether CRL j is preferred over CRL i of the same scope: newer, or as new and read first (the
 * daemon's rule, so merge writes what the daemon would use). */
static bool crl_preferred(const struct tlsw_bundle *b, size_t j, size_t i)
{
    const struct bundle_crl *cj = &b->crls[j], *ci = &b->crls[i];
    if (cj->signer == TLSW_BUNDLE_NONE || cj->signer != ci->signer ||
        crl_is_delta(cj->crl) != crl_is_delta(ci->crl) ||
        X509_NAME_cmp(X509_CRL_get_issuer(cj->crl), X509_CRL_get_issuer(ci->crl)) != 0)
        return false;
    int cmp =
        ASN1_TIME_compare(X509_CRL_get0_lastUpdate(cj->crl), X509_CRL_get0_lastUpdate(ci->crl));
    return cmp > 0 || (cmp == 0 && j < i);
}

static void check_superseded(struct tlsw_bundle *b, size_t i)
{
    struct bundle_crl *c = &b->crls[i];
    if (c->signer == TLSW_BUNDLE_NONE)
        return;
    for (size_t j = 0; j < b->crl_count; j++)
        if (j != i && crl_preferred(b, j, i) &&
            (c->pub.newer == TLSW_BUNDLE_NONE || crl_preferred(b, j, c->pub.newer)))
            c->pub.newer = j;
    if (c->pub.newer == TLSW_BUNDLE_NONE)
        return;
    const struct tlsw_bundle_crl *n = &b->crls[c->pub.newer].pub;
    size_t before = b->warn_count;
    add_warning(b, TLSW_BUNDLE_CRL_SUPERSEDED, c->pub.file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE,
                c->pub.line,
                "superseded by CRL #%zu of %s (same issuer, thisUpdate not older): not used by "
                "dbtrust, dropped by merge",
                n->index, b->files[n->file].path);
    if (b->warn_count > before)
        b->warns[before].pub.crl = i;
}

static void check_crls(struct tlsw_bundle *b, time_t now)
{
    for (size_t i = 0; i < b->crl_count; i++)
        verify_crl(b, i);
    for (size_t i = 0; i < b->crl_count; i++) {
        check_crl_dates(b, i, now);
        check_superseded(b, i);
    }
}

size_t tlsw_bundle_crl_count(const struct tlsw_bundle *b)
{
    return b->crl_count;
}

const struct tlsw_bundle_crl *tlsw_bundle_crl(const struct tlsw_bundle *b, size_t i)
{
    return i < b->crl_count ? &b->crls[i].pub : NULL;
}

size_t tlsw_bundle_crl_kept_count(const struct tlsw_bundle *b)
{
    size_t n = 0;
    for (size_t i = 0; i < b->crl_count; i++)
        n += b->crls[i].signer != TLSW_BUNDLE_NONE && b->crls[i].pub.newer == TLSW_BUNDLE_NONE;
    return n;
}

/* File order, then position in the file, then the order found: a report reads top to bottom. */
static int cmp_warning(const void *pa, const void *pb)
{
    const struct bundle_warning *a = pa, *b = pb;
    if (a->pub.file != b->pub.file)
        return a->pub.file < b->pub.file ? -1 : 1;
    if (a->pub.line != b->pub.line)
        return a->pub.line < b->pub.line ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

int tlsw_bundle_load(const char *const *paths, size_t path_count, time_t now,
                     struct tlsw_bundle **out)
{
    struct tlsw_bundle *b = calloc(1, sizeof(*b));
    *out = NULL;
    if (b == NULL)
        return -1;
    b->files = calloc(path_count > 0 ? path_count : 1, sizeof(*b->files));
    b->file_crl_count = calloc(path_count > 0 ? path_count : 1, sizeof(*b->file_crl_count));
    if (b->files == NULL || b->file_crl_count == NULL)
        goto fail;
    for (size_t i = 0; i < path_count; i++) {
        b->files[i].path = strdup(paths[i]);
        if (b->files[i].path == NULL)
            goto fail;
        b->file_count++;
    }
    for (size_t i = 0; i < path_count && !b->oom; i++)
        load_file(b, i);
    check_certs(b, now);
    check_crls(b, now);
    if (b->oom)
        goto fail;
    if (b->warn_count > 1)
        qsort(b->warns, b->warn_count, sizeof(*b->warns), cmp_warning);
    *out = b;
    return 0;
fail:
    tlsw_bundle_free(b);
    return -1;
}

void tlsw_bundle_free(struct tlsw_bundle *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->cert_count; i++)
        X509_free(b->certs[i].x509);
    for (size_t i = 0; i < b->crl_count; i++)
        X509_CRL_free(b->crls[i].crl);
    free(b->crls);
    free(b->file_crl_count);
    for (size_t i = 0; i < b->file_count; i++)
        free(b->files[i].path);
    free(b->certs);
    free(b->warns);
    free(b->files);
    free(b);
}

size_t tlsw_bundle_file_count(const struct tlsw_bundle *b)
{
    return b->file_count;
}

const char *tlsw_bundle_file_path(const struct tlsw_bundle *b, size_t file)
{
    return file < b->file_count ? b->files[file].path : NULL;
}

size_t tlsw_bundle_file_cert_count(const struct tlsw_bundle *b, size_t file)
{
    return file < b->file_count ? b->files[file].cert_count : 0;
}

size_t tlsw_bundle_cert_count(const struct tlsw_bundle *b)
{
    return b->cert_count;
}

const struct tlsw_bundle_cert *tlsw_bundle_cert(const struct tlsw_bundle *b, size_t i)
{
    return i < b->cert_count ? &b->certs[i].pub : NULL;
}

size_t tlsw_bundle_unique_count(const struct tlsw_bundle *b)
{
    return b->unique;
}

size_t tlsw_bundle_warning_count(const struct tlsw_bundle *b)
{
    return b->warn_count;
}

const struct tlsw_bundle_warning *tlsw_bundle_warning(const struct tlsw_bundle *b, size_t i)
{
    return i < b->warn_count ? &b->warns[i].pub : NULL;
}

bool tlsw_bundle_has_errors(const struct tlsw_bundle *b)
{
    for (size_t i = 0; i < b->warn_count; i++)
        if (tlsw_bundle_warn_is_error(b->warns[i].pub.kind))
            return true;
    return false;
}
