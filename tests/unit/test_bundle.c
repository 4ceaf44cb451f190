/* tls/tlsw_bundle.c: `dbtrust bundle inspect|merge` below the command line. Certificates are
 * generated at test time (tls_certgen.h); bundle files are written byte by byte so every kind of
 * damage (garbage between blocks, broken base64, DER, keys) is exact. */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <threads.h>
#include <unistd.h>

#include <openssl/err.h>

#include "test_util.h"
#include "tls_certgen.h"
#include "tlsw_bundle.h"

static void setup(void)
{
    tmpdir_make("bundle");
}

static void teardown(void)
{
    tmpdir_remove();
    leak_check();
}

TestSuite(bundle, .init = setup, .fini = teardown);

/* ---- certificates and files ----------------------------------------------------------------- */

/* The text written into a memory BIO, which is freed (caller frees the text). */
static char *mem_text(BIO *b)
{
    char *data = NULL;
    long len = BIO_get_mem_data(b, &data);
    /* Not strndup: the BIO's buffer has no terminating NUL, and strndup may look one past len. */
    char *s = malloc((size_t)len + 1);
    cr_assert_not_null(s);
    memcpy(s, data, (size_t)len);
    s[len] = '\0';
    BIO_free(b);
    return s;
}

/* The PEM text of one certificate (caller frees). */
static char *pem_of(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    cr_assert_not_null(b);
    cr_assert_eq(PEM_write_bio_X509(b, x), 1);
    return mem_text(b);
}

/* Writes the concatenation of the NULL-terminated text pieces to tmpdir/name. */
static const char *write_parts(char *buf, size_t cap, const char *name, const char *const *parts)
{
    tmp_path(buf, cap, name);
    FILE *f = fopen(buf, "wb");
    cr_assert_not_null(f);
    for (size_t i = 0; parts[i] != NULL; i++)
        cr_assert_eq(fputs(parts[i], f) >= 0, true);
    cr_assert_eq(fclose(f), 0);
    return buf;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    char *buf = calloc(1, 1 << 20);
    cr_assert_not_null(buf);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
    if (len != NULL)
        *len = n;
    return buf;
}

/* The line number of the nth (0-based) occurrence of needle in the file's text. */
static unsigned line_of_nth(const char *text, const char *needle, int nth)
{
    const char *p = text;
    for (int i = 0; i <= nth; i++) {
        p = strstr(i == 0 ? p : p + 1, needle);
        cr_assert_not_null(p, "occurrence %d of %s missing", nth, needle);
    }
    unsigned line = 1;
    for (const char *q = text; q < p; q++)
        line += *q == '\n';
    return line;
}

static struct tlsw_bundle *load_at(const char *const *paths, size_t n, time_t now)
{
    struct tlsw_bundle *b = NULL;
    cr_assert_eq(tlsw_bundle_load(paths, n, now, &b), 0);
    cr_assert_not_null(b);
    return b;
}

static struct tlsw_bundle *load(const char *const *paths, size_t n)
{
    return load_at(paths, n, time(NULL));
}

static size_t count_kind(const struct tlsw_bundle *b, enum tlsw_bundle_warn kind)
{
    size_t n = 0;
    for (size_t i = 0; i < tlsw_bundle_warning_count(b); i++)
        n += tlsw_bundle_warning(b, i)->kind == kind;
    return n;
}

static const struct tlsw_bundle_warning *find_kind(const struct tlsw_bundle *b,
                                                   enum tlsw_bundle_warn kind)
{
    for (size_t i = 0; i < tlsw_bundle_warning_count(b); i++)
        if (tlsw_bundle_warning(b, i)->kind == kind)
            return tlsw_bundle_warning(b, i);
    cr_assert_fail("no %s warning among %zu", tlsw_bundle_warn_name(kind),
                   tlsw_bundle_warning_count(b));
    return NULL;
}

/* Every warning, one per line, for assertion messages. */
static const char *dump_warnings(const struct tlsw_bundle *b)
{
    static char buf[8192];
    buf[0] = '\0';
    for (size_t i = 0; i < tlsw_bundle_warning_count(b); i++) {
        const struct tlsw_bundle_warning *w = tlsw_bundle_warning(b, i);
        size_t used = strlen(buf);
        snprintf(buf + used, sizeof(buf) - used, "\n  [%s] file %zu line %u: %s",
                 tlsw_bundle_warn_name(w->kind), w->file, w->line, w->detail);
    }
    return buf;
}

/* ---- parsing -------------------------------------------------------------------------------- */

/* Independent of tlsw_certinfo.c: hex SHA-256 of the DER and base64 SHA-256 of the SPKI. */
static void expected_fingerprints(X509 *x, char sha[65], char pin[64])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    cr_assert_eq(X509_digest(x, EVP_sha256(), md, &n), 1);
    for (unsigned i = 0; i < n; i++)
        snprintf(sha + 2 * i, 3, "%02x", md[i]);
    unsigned char *der = NULL;
    int dlen = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der);
    cr_assert_gt(dlen, 0);
    cr_assert_eq(EVP_Digest(der, (size_t)dlen, md, &n, EVP_sha256(), NULL), 1);
    EVP_EncodeBlock((unsigned char *)pin, md, (int)n);
    OPENSSL_free(der);
}

Test(bundle, parses_every_certificate_with_metadata_and_position)
{
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    char path[256];
    char *r = pem_of(p.root.cert), *i = pem_of(p.inter.cert);
    const char *parts[] = {"# Subject: Test Root\n", r, "\n# the intermediate\n", i, NULL};
    const char *paths[] = {write_parts(path, sizeof(path), "ca.pem", parts)};
    char *text = slurp(path, NULL);

    struct tlsw_bundle *b = load(paths, 1);
    cr_assert_eq(tlsw_bundle_warning_count(b), 0, "unexpected:%s", dump_warnings(b));
    cr_assert_eq(tlsw_bundle_cert_count(b), 2);
    cr_assert_eq(tlsw_bundle_unique_count(b), 2);
    cr_assert_eq(tlsw_bundle_file_cert_count(b, 0), 2);
    cr_assert_str_eq(tlsw_bundle_file_path(b, 0), path);
    cr_assert_not(tlsw_bundle_has_errors(b));

    const struct tlsw_bundle_cert *c0 = tlsw_bundle_cert(b, 0), *c1 = tlsw_bundle_cert(b, 1);
    cr_assert_eq(c0->index, 1);
    cr_assert_eq(c1->index, 2);
    cr_assert_eq(c0->line, line_of_nth(text, "-----BEGIN", 0));
    cr_assert_eq(c1->line, line_of_nth(text, "-----BEGIN", 1));
    cr_assert_eq(c0->line, 2);
    cr_assert_str_eq(c0->info.subject, "CN=Test Root,O=dbtrust test");
    cr_assert_str_eq(c1->info.subject, "CN=Test Intermediate,O=dbtrust test");
    cr_assert_str_eq(c1->info.issuer, "CN=Test Root,O=dbtrust test");
    cr_assert(c0->info.is_ca && c0->self_signed);
    cr_assert(c1->info.is_ca && !c1->self_signed);
    cr_assert_eq(c0->dup_of, TLSW_BUNDLE_NONE);

    char sha[65], pin[64];
    expected_fingerprints(p.inter.cert, sha, pin);
    cr_assert_str_eq(c1->info.sha256, sha);
    cr_assert_str_eq(c1->info.spki_pin, pin);
    long days = tlsw_bundle_days_left(c1->info.not_after, time(NULL));
    cr_assert(days == 999 || days == 1000, "days left %ld", days);

    tlsw_bundle_free(b);
    free(text);
    free(r);
    free(i);
    cg_pki_free(&p);
}

Test(bundle, days_left_rounds_down)
{
    time_t now = 1700000000;
    cr_assert_eq(tlsw_bundle_days_left(now + 3600, now), 0);
    cr_assert_eq(tlsw_bundle_days_left(now - 3600, now), -1);
    cr_assert_eq(tlsw_bundle_days_left(now + 86400, now), 1);
    cr_assert_eq(tlsw_bundle_days_left(now - 86400, now), -1);
    cr_assert_eq(tlsw_bundle_days_left(now - 86401, now), -2);
}

Test(bundle, warning_names_are_stable_and_only_unparsable_files_are_errors)
{
    cr_assert_str_eq(tlsw_bundle_warn_name(TLSW_BUNDLE_MISSING_ROOT), "missing_root");
    cr_assert_str_eq(tlsw_bundle_warn_name(TLSW_BUNDLE_NOT_YET_VALID), "not_yet_valid");
    cr_assert_str_eq(tlsw_bundle_warn_name(TLSW_BUNDLE_DUPLICATE), "duplicate");
    cr_assert(tlsw_bundle_warn_is_error(TLSW_BUNDLE_UNREADABLE));
    cr_assert(tlsw_bundle_warn_is_error(TLSW_BUNDLE_NOT_PEM));
    cr_assert_not(tlsw_bundle_warn_is_error(TLSW_BUNDLE_GARBAGE));
    cr_assert_not(tlsw_bundle_warn_is_error(TLSW_BUNDLE_EXPIRED));
    cr_assert_not(tlsw_bundle_warn_is_error(TLSW_BUNDLE_NO_CERTIFICATE));
}

/* ---- duplicates, roles, validity ------------------------------------------------------------ */

Test(bundle, duplicates_name_both_places_and_count_once)
{
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    char a[256], bpath[256];
    char *r = pem_of(p.root.cert), *i = pem_of(p.inter.cert);
    const char *pa[] = {r, i, NULL};
    const char *pb[] = {i, r, r, NULL}; /* the root twice in the same file too */
    const char *paths[] = {write_parts(a, sizeof(a), "a.pem", pa),
                           write_parts(bpath, sizeof(bpath), "b.pem", pb)};

    struct tlsw_bundle *b = load(paths, 2);
    cr_assert_eq(tlsw_bundle_cert_count(b), 5);
    cr_assert_eq(tlsw_bundle_unique_count(b), 2);
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_DUPLICATE), 3, "%s", dump_warnings(b));
    cr_assert_eq(tlsw_bundle_warning_count(b), 3, "%s", dump_warnings(b));
    /* b.pem #1 (the intermediate) is a copy of a.pem #2; b.pem #2 and #3 of a.pem #1. */
    cr_assert_eq(tlsw_bundle_cert(b, 2)->dup_of, 1);
    cr_assert_eq(tlsw_bundle_cert(b, 3)->dup_of, 0);
    cr_assert_eq(tlsw_bundle_cert(b, 4)->dup_of, 0, "a third copy names the first, not the second");

    const struct tlsw_bundle_warning *w = tlsw_bundle_warning(b, 1);
    cr_assert_eq(w->kind, TLSW_BUNDLE_DUPLICATE);
    cr_assert_eq(w->file, 1);
    cr_assert_eq(w->cert, 3);
    cr_assert_eq(w->other, 0);
    char want[300];
    snprintf(want, sizeof(want), "duplicate of %s #1", a);
    cr_assert_not_null(strstr(w->detail, want), "detail: %s", w->detail);
    tlsw_bundle_free(b);
    free(r);
    free(i);
    cg_pki_free(&p);
}

Test(bundle, intermediate_without_its_root)
{
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    /* Same subject as the real root, another key: names match, the signature does not. */
    struct cg_cert rekeyed = {0};
    cr_assert_eq(cg_issue(&rekeyed, &CG_ROOT, NULL), 0);
    char p1[256], p2[256], p3[256];
    char *r = pem_of(p.root.cert), *i = pem_of(p.inter.cert), *k = pem_of(rekeyed.cert);
    const char *alone[] = {i, NULL}, *with_root[] = {i, r, NULL}, *wrong_root[] = {k, i, NULL};

    const char *paths1[] = {write_parts(p1, sizeof(p1), "alone.pem", alone)};
    struct tlsw_bundle *b = load(paths1, 1);
    cr_assert_eq(tlsw_bundle_warning_count(b), 1, "%s", dump_warnings(b));
    const struct tlsw_bundle_warning *w = find_kind(b, TLSW_BUNDLE_MISSING_ROOT);
    cr_assert_eq(w->cert, 0);
    cr_assert_not_null(strstr(w->detail, "CN=Test Root,O=dbtrust test"), "%s", w->detail);
    tlsw_bundle_free(b);

    /* The root later in the same file, or in another file, both count as loaded. */
    const char *paths2[] = {write_parts(p2, sizeof(p2), "with-root.pem", with_root)};
    b = load(paths2, 1);
    cr_assert_eq(tlsw_bundle_warning_count(b), 0, "%s", dump_warnings(b));
    tlsw_bundle_free(b);
    const char *paths2b[] = {p1, tmp_path(p3, sizeof(p3), "root.pem")};
    const char *root_only[] = {r, NULL};
    write_parts(p3, sizeof(p3), "root.pem", root_only);
    b = load(paths2b, 2);
    cr_assert_eq(tlsw_bundle_warning_count(b), 0, "%s", dump_warnings(b));
    tlsw_bundle_free(b);

    const char *paths3[] = {write_parts(p3, sizeof(p3), "wrong-root.pem", wrong_root)};
    b = load(paths3, 1);
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_MISSING_ROOT), 1, "%s", dump_warnings(b));
    cr_assert_eq(find_kind(b, TLSW_BUNDLE_MISSING_ROOT)->cert, 1);
    tlsw_bundle_free(b);

    free(r);
    free(i);
    free(k);
    cg_free(&rekeyed);
    cg_pki_free(&p);
}

Test(bundle, end_entity_certificate_is_not_a_ca)
{
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    char path[256];
    char *r = pem_of(p.root.cert), *i = pem_of(p.inter.cert), *l = pem_of(p.leaf.cert);
    const char *parts[] = {r, i, l, NULL};
    const char *paths[] = {write_parts(path, sizeof(path), "with-leaf.pem", parts)};
    struct tlsw_bundle *b = load(paths, 1);
    cr_assert_eq(tlsw_bundle_warning_count(b), 1, "%s", dump_warnings(b));
    const struct tlsw_bundle_warning *w = find_kind(b, TLSW_BUNDLE_NOT_CA);
    cr_assert_eq(w->cert, 2);
    cr_assert_eq(w->line, tlsw_bundle_cert(b, 2)->line);
    cr_assert_not(tlsw_bundle_cert(b, 2)->info.is_ca);
    tlsw_bundle_free(b);
    free(r);
    free(i);
    free(l);
    cg_pki_free(&p);
}

Test(bundle, expired_and_not_yet_valid)
{
    const struct cg_spec old = {
        .cn = "Old Root", .ca = true, .not_before_days = -400, .not_after_days = -3};
    const struct cg_spec future = {
        .cn = "Future Root", .ca = true, .not_before_days = 5, .not_after_days = 400};
    struct cg_cert o = {0}, f = {0}, good = {0};
    cr_assert_eq(cg_issue(&o, &old, NULL), 0);
    cr_assert_eq(cg_issue(&f, &future, NULL), 0);
    cr_assert_eq(cg_issue(&good, &CG_ROOT, NULL), 0);
    char path[256];
    char *po = pem_of(o.cert), *pf = pem_of(f.cert), *pg = pem_of(good.cert);
    const char *parts[] = {pg, po, pf, NULL};
    const char *paths[] = {write_parts(path, sizeof(path), "validity.pem", parts)};

    struct tlsw_bundle *b = load(paths, 1);
    cr_assert_eq(tlsw_bundle_warning_count(b), 2, "%s", dump_warnings(b));
    const struct tlsw_bundle_warning *w = find_kind(b, TLSW_BUNDLE_EXPIRED);
    cr_assert_eq(w->cert, 1);
    cr_assert_not_null(strstr(w->detail, "(3 days ago)"), "%s", w->detail);
    w = find_kind(b, TLSW_BUNDLE_NOT_YET_VALID);
    cr_assert_eq(w->cert, 2);
    cr_assert_not_null(strstr(w->detail, "(in 5 days)"), "%s", w->detail);
    time_t expired_at = tlsw_bundle_cert(b, 1)->info.not_after;
    tlsw_bundle_free(b);

    /* 3 days and an hour after expiry: 3 days ago, -4 days left (both rounded down). */
    b = load_at(paths, 1, expired_at + 3 * CG_DAY + 3600);
    cr_assert_not_null(strstr(find_kind(b, TLSW_BUNDLE_EXPIRED)->detail, "(3 days ago)"));
    cr_assert_eq(tlsw_bundle_days_left(expired_at, expired_at + 3 * CG_DAY + 3600), -4);
    tlsw_bundle_free(b);

    /* Checked at the time given: ten years on, the good root has expired too. */
    b = load_at(paths, 1, time(NULL) + 3651 * CG_DAY);
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_EXPIRED), 3, "%s", dump_warnings(b));
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_NOT_YET_VALID), 0);
    tlsw_bundle_free(b);

    free(po);
    free(pf);
    free(pg);
    cg_free(&o);
    cg_free(&f);
    cg_free(&good);
}

/* ---- damaged files -------------------------------------------------------------------------- */

/* Loads one file made of parts and checks the only finding's kind and line (0: no finding). */
static struct tlsw_bundle *load_one(const char *name, const char *const *parts)
{
    char path[256];
    const char *paths[] = {write_parts(path, sizeof(path), name, parts)};
    return load(paths, 1);
}

static void expect_only(const struct tlsw_bundle *b, enum tlsw_bundle_warn kind, unsigned line)
{
    cr_assert_eq(tlsw_bundle_warning_count(b), 1, "expected only %s:%s",
                 tlsw_bundle_warn_name(kind), dump_warnings(b));
    const struct tlsw_bundle_warning *w = tlsw_bundle_warning(b, 0);
    cr_assert_eq(w->kind, kind, "got %s: %s", tlsw_bundle_warn_name(w->kind), w->detail);
    cr_assert_eq(w->line, line, "line %u, expected %u: %s", w->line, line, w->detail);
    cr_assert_eq(w->cert, TLSW_BUNDLE_NONE);
}

Test(bundle, broken_base64_is_an_error_with_its_line)
{
    struct cg_cert r = {0};
    cr_assert_eq(cg_issue(&r, &CG_ROOT, NULL), 0);
    char *pr = pem_of(r.cert);
    const char *parts[] = {pr, "# next\n",
                           "-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                           "-----END CERTIFICATE-----\n",
                           NULL};
    struct tlsw_bundle *b = load_one("broken.pem", parts);
    unsigned line = line_of_nth(pr, "-----END", 0) + 2;
    expect_only(b, TLSW_BUNDLE_NOT_PEM, line);
    cr_assert(tlsw_bundle_has_errors(b));
    cr_assert_eq(tlsw_bundle_cert_count(b), 1, "the block before the broken one is listed");
    char err[512] = "";
    cr_assert_eq(tlsw_bundle_mergeable(b, err, sizeof(err)), -1);
    cr_assert_not_null(strstr(err, "broken.pem"), "%s", err);
    tlsw_bundle_free(b);
    free(pr);
    cg_free(&r);
}

Test(bundle, truncated_block_and_non_certificate_der_are_errors)
{
    struct cg_cert r = {0};
    cr_assert_eq(cg_issue(&r, &CG_ROOT, NULL), 0);
    char *pr = pem_of(r.cert);
    char *cut = strdup(pr);
    cut[strlen(cut) / 2] = '\0'; /* no END line */
    const char *truncated[] = {cut, NULL};
    struct tlsw_bundle *b = load_one("truncated.pem", truncated);
    expect_only(b, TLSW_BUNDLE_NOT_PEM, 1);
    tlsw_bundle_free(b);

    /* Valid base64, valid PEM framing, but the DER is not a certificate. */
    const char *not_der[] = {"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n"
                             "-----END CERTIFICATE-----\n",
                             NULL};
    b = load_one("not-der.pem", not_der);
    expect_only(b, TLSW_BUNDLE_NOT_PEM, 1);
    tlsw_bundle_free(b);
    free(cut);
    free(pr);
    cg_free(&r);
}

Test(bundle, garbage_between_blocks_hides_a_certificate)
{
    struct cg_cert r = {0}, r2 = {0};
    cr_assert_eq(cg_issue(&r, &CG_ROOT, NULL), 0);
    cr_assert_eq(cg_issue(&r2, &CG_ROOT, NULL), 0);
    char *pr = pem_of(r.cert), *p2 = pem_of(r2.cert);
    /* A copy-paste that lost one dash: OpenSSL skips the whole block. */
    char *mangled = strdup(p2 + 1);
    const char *parts[] = {pr, mangled, NULL};
    struct tlsw_bundle *b = load_one("mangled.pem", parts);
    expect_only(b, TLSW_BUNDLE_GARBAGE, line_of_nth(pr, "-----END", 0) + 1);
    cr_assert_eq(tlsw_bundle_cert_count(b), 1);
    cr_assert_not(tlsw_bundle_has_errors(b), "garbage is a warning for inspect");
    char err[512] = "";
    cr_assert_eq(tlsw_bundle_mergeable(b, err, sizeof(err)), -1, "but merge refuses it");
    tlsw_bundle_free(b);

    /* Base64 body without any armor, after the last block. */
    char *body_only = strdup(strchr(pr, '\n') + 1);
    *strstr(body_only, "-----END") = '\0';
    const char *tail[] = {pr, "\n", body_only, NULL};
    b = load_one("tail.pem", tail);
    expect_only(b, TLSW_BUNDLE_GARBAGE, line_of_nth(pr, "-----END", 0) + 2);
    cr_assert_not_null(strstr(tlsw_bundle_warning(b, 0)->detail, "base64"));
    tlsw_bundle_free(b);

    /* Binary bytes between two blocks. */
    const char *binary[] = {pr, "\x01\x02\x7f binary\n", p2, NULL};
    b = load_one("binary.pem", binary);
    expect_only(b, TLSW_BUNDLE_GARBAGE, line_of_nth(pr, "-----END", 0) + 1);
    cr_assert_eq(tlsw_bundle_cert_count(b), 2);
    tlsw_bundle_free(b);

    free(body_only);
    free(mangled);
    free(pr);
    free(p2);
    cg_free(&r);
    cg_free(&r2);
}

Test(bundle, comments_real_bundles_carry_are_not_garbage)
{
    struct cg_cert r = {0};
    cr_assert_eq(cg_issue(&r, &CG_ROOT, NULL), 0);
    char *pr = pem_of(r.cert);
    char *crlf = calloc(1, 2 * strlen(pr) + 1);
    for (char *s = pr, *d = crlf; *s != '\0'; s++) {
        if (*s == '\n')
            *d++ = '\r';
        *d++ = *s;
    }
    const char *parts[] = {
        "\xEF\xBB\xBF",                                  /* UTF-8 byte order mark */
        "##\n## Bundle of CA Root Certificates\n##\n\n", /* curl's cacert.pem header */
        "GlobalSign Root CA\n==================\n",      /* curl's title lines */
        "# Issuer: CN=T\xC3\xBCrk Root\n",               /* UTF-8 in a comment */
        "# -----BEGIN CERTIFICATE----- (commented out)\n",
        "3014ead11bd0033f08fc8ede9c0ab7ae991447efae40150a18d0d6b25bf0b6ba\n", /* fingerprint */
        "Certificate:\n    Data:\n        Version: 3 (0x2)\n",
        "                    00:c6:7f:3a:21:09:0b:55:1e:2a:9c:1d:77:01\n",
        "----------------------------------------\n",
        crlf,
        NULL};
    struct tlsw_bundle *b = load_one("commented.pem", parts);
    cr_assert_eq(tlsw_bundle_warning_count(b), 0, "false positive:%s", dump_warnings(b));
    cr_assert_eq(tlsw_bundle_cert_count(b), 1);
    cr_assert_eq(tlsw_bundle_cert(b, 0)->line, 15);
    tlsw_bundle_free(b);
    free(crlf);
    free(pr);
    cg_free(&r);
}

Test(bundle, files_without_certificates)
{
    struct cg_cert r = {0};
    cr_assert_eq(cg_issue(&r, &CG_ROOT, NULL), 0);

    const char *empty[] = {NULL};
    struct tlsw_bundle *b = load_one("empty.pem", empty);
    expect_only(b, TLSW_BUNDLE_NO_CERTIFICATE, 0);
    char err[512] = "";
    cr_assert_eq(tlsw_bundle_mergeable(b, err, sizeof(err)), -1);
    cr_assert_not_null(strstr(err, "no certificate"), "%s", err);
    tlsw_bundle_free(b);

    const char *comments[] = {"# nothing here yet\n\n", NULL};
    b = load_one("comments.pem", comments);
    expect_only(b, TLSW_BUNDLE_NO_CERTIFICATE, 0);
    tlsw_bundle_free(b);

    /* A DER certificate: no PEM at all, which the daemon cannot load: an error. */
    unsigned char *der = NULL;
    int dlen = i2d_X509(r.cert, &der);
    cr_assert_gt(dlen, 0);
    char path[256];
    cr_assert_eq(cg_write_text(tmp_path(path, sizeof(path), "root.der"), der, (size_t)dlen), 0);
    const char *paths[] = {path};
    b = load(paths, 1);
    expect_only(b, TLSW_BUNDLE_NOT_PEM, 1);
    cr_assert_not_null(strstr(tlsw_bundle_warning(b, 0)->detail, "DER"));
    tlsw_bundle_free(b);
    OPENSSL_free(der);

    /* Only a private key: reported, and the file still holds no certificate. */
    BIO *kb = BIO_new(BIO_s_mem());
    cr_assert_not_null(kb);
    cr_assert_eq(PEM_write_bio_PrivateKey(kb, r.key, NULL, NULL, 0, NULL, NULL), 1);
    char *key = mem_text(kb);
    const char *key_only[] = {"# oops\n", key, NULL};
    b = load_one("key.pem", key_only);
    cr_assert_eq(tlsw_bundle_warning_count(b), 2, "%s", dump_warnings(b));
    cr_assert_eq(find_kind(b, TLSW_BUNDLE_NOT_CERTIFICATE)->line, 2);
    cr_assert_not_null(strstr(find_kind(b, TLSW_BUNDLE_NOT_CERTIFICATE)->detail, "PRIVATE KEY"));
    find_kind(b, TLSW_BUNDLE_NO_CERTIFICATE);
    tlsw_bundle_free(b);
    free(key);
    cg_free(&r);
}

Test(bundle, unreadable_files_are_errors_and_the_others_still_load)
{
    struct cg_cert r = {0};
    cr_assert_eq(cg_issue(&r, &CG_ROOT, NULL), 0);
    char good[256], missing[256], dir[256];
    char *pr = pem_of(r.cert);
    const char *parts[] = {pr, NULL};
    write_parts(good, sizeof(good), "good.pem", parts);
    tmp_path(missing, sizeof(missing), "missing.pem");
    tmp_path(dir, sizeof(dir), "subdir");
    cr_assert_eq(mkdir(dir, 0755), 0);
    const char *paths[] = {missing, good, dir};

    struct tlsw_bundle *b = load(paths, 3);
    cr_assert_eq(tlsw_bundle_file_count(b), 3);
    cr_assert_eq(tlsw_bundle_cert_count(b), 1);
    cr_assert_eq(tlsw_bundle_cert(b, 0)->file, 1);
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_UNREADABLE), 2, "%s", dump_warnings(b));
    cr_assert_eq(tlsw_bundle_warning_count(b), 2, "%s", dump_warnings(b));
    cr_assert_eq(tlsw_bundle_warning(b, 0)->file, 0, "sorted by file");
    cr_assert_not_null(strstr(tlsw_bundle_warning(b, 0)->detail, "No such file"));
    cr_assert_eq(tlsw_bundle_warning(b, 1)->file, 2);
    cr_assert(tlsw_bundle_has_errors(b));
    tlsw_bundle_free(b);
    free(pr);
    cg_free(&r);
}

/* ---- merge ---------------------------------------------------------------------------------- */

static size_t count_dir_entries(void)
{
    size_t n = 0;
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) /* temp files start with '.': they count */
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* Parses a merged file independently of tlsw_bundle.c: every certificate, in order. */
static size_t read_back(const char *path, X509 **out, size_t cap)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t n = 0;
    X509 *x;
    while (n < cap && (x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL)
        out[n++] = x;
    ERR_clear_error();
    fclose(f);
    return n;
}

Test(bundle, merge_writes_unique_certificates_in_order_with_comments)
{
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    const struct cg_spec old = {
        .cn = "Old Root", .ca = true, .not_before_days = -400, .not_after_days = -3};
    struct cg_cert o = {0};
    cr_assert_eq(cg_issue(&o, &old, NULL), 0);
    char a[256], bp[256], out[256];
    char *r = pem_of(p.root.cert), *i = pem_of(p.inter.cert), *po = pem_of(o.cert);
    const char *pa[] = {"# a\n", r, i, NULL}, *pb[] = {i, po, r, NULL};
    const char *paths[] = {write_parts(a, sizeof(a), "a.pem", pa),
                           write_parts(bp, sizeof(bp), "b.pem", pb)};
    struct tlsw_bundle *b = load(paths, 2);
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_EXPIRED), 1);

    mode_t old_mask = umask(077); /* the bundle must be 0644 whatever the umask */
    char err[512] = "";
    int rc = tlsw_bundle_write(b, tmp_path(out, sizeof(out), "merged.pem"), err, sizeof(err));
    umask(old_mask);
    cr_assert_eq(rc, 0, "%s", err);
    struct stat st;
    cr_assert_eq(stat(out, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0644, "mode %o", (unsigned)(st.st_mode & 07777));
    cr_assert_eq(count_dir_entries(), 3, "a temp file was left behind");

    X509 *got[8];
    size_t n = read_back(out, got, 8);
    cr_assert_eq(n, 3, "root, intermediate, expired root (kept), each once");
    cr_assert_eq(X509_cmp(got[0], p.root.cert), 0);
    cr_assert_eq(X509_cmp(got[1], p.inter.cert), 0);
    cr_assert_eq(X509_cmp(got[2], o.cert), 0);
    for (size_t k = 0; k < n; k++)
        X509_free(got[k]);

    char *text = slurp(out, NULL);
    const struct tlsw_bundle_cert *c = tlsw_bundle_cert(b, 1);
    char want[512];
    snprintf(want, sizeof(want),
             "# subject: CN=Test Intermediate,O=dbtrust test\n"
             "# issuer: CN=Test Root,O=dbtrust test\n# notAfter: ");
    cr_assert_not_null(strstr(text, want), "%s", text);
    snprintf(want, sizeof(want), "Z\n# sha256: %s\n-----BEGIN CERTIFICATE-----\n", c->info.sha256);
    cr_assert_not_null(strstr(text, want), "%s", text);
    const char *head = "# subject: CN=Test Root,O=dbtrust test\n";
    cr_assert_eq(strncmp(text, head, strlen(head)), 0, "%s", text);
    tlsw_bundle_free(b);

    /* The result is itself a clean bundle. */
    const char *again[] = {out};
    b = load(again, 1);
    cr_assert_eq(tlsw_bundle_cert_count(b), 3);
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_DUPLICATE), 0);
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_GARBAGE), 0, "%s", dump_warnings(b));
    cr_assert_eq(tlsw_bundle_warning_count(b), 1, "only the expired root:%s", dump_warnings(b));
    tlsw_bundle_free(b);
    free(text);
    free(r);
    free(i);
    free(po);
    cg_free(&o);
    cg_pki_free(&p);
}

Test(bundle, merge_replaces_by_rename_never_in_place)
{
    struct cg_cert r = {0};
    cr_assert_eq(cg_issue(&r, &CG_ROOT, NULL), 0);
    char in[256], out[256], alias[256];
    char *pr = pem_of(r.cert);
    const char *parts[] = {pr, NULL};
    const char *paths[] = {write_parts(in, sizeof(in), "in.pem", parts)};
    const char *old[] = {"old content\n", NULL};
    write_parts(out, sizeof(out), "out.pem", old);
    /* A second name for the old inode: an in-place rewrite would change what it shows. A
     * reader holding the old file open sees the same. */
    cr_assert_eq(link(out, tmp_path(alias, sizeof(alias), "old-inode.pem")), 0);
    struct stat before, after;
    cr_assert_eq(stat(out, &before), 0);

    struct tlsw_bundle *b = load(paths, 1);
    char err[512] = "";
    cr_assert_eq(tlsw_bundle_write(b, out, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(stat(out, &after), 0);
    cr_assert_neq(before.st_ino, after.st_ino, "written in place");
    char *kept = slurp(alias, NULL);
    cr_assert_str_eq(kept, "old content\n");
    cr_assert_eq(count_dir_entries(), 3);
    tlsw_bundle_free(b);
    free(kept);
    free(pr);
    cg_free(&r);
}

/* A reader racing the merges (the daemon's poll, a sidecar's own check) must always find the
 * file, complete: the old bundle or the new one, never a missing or half-written one. */
struct racing_reader {
    const char *path;
    const char *versions[2];
    atomic_bool stop;
    atomic_int reads, torn, missing;
};

static int read_racing(void *arg)
{
    struct racing_reader *r = arg;
    static char buf[1 << 16];
    while (!atomic_load(&r->stop)) {
        FILE *f = fopen(r->path, "rb");
        if (f == NULL) {
            atomic_fetch_add(&r->missing, errno == ENOENT);
            continue;
        }
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        atomic_fetch_add(&r->reads, 1);
        if (strcmp(buf, r->versions[0]) != 0 && strcmp(buf, r->versions[1]) != 0)
            atomic_fetch_add(&r->torn, 1);
    }
    return 0;
}

Test(bundle, concurrent_readers_see_the_old_or_the_new_bundle)
{
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    char a[256], bpath[256], out[256], err[512] = "";
    char *r = pem_of(p.root.cert), *i = pem_of(p.inter.cert);
    const char *pa[] = {r, NULL}, *pb[] = {r, i, NULL};
    const char *paths_a[] = {write_parts(a, sizeof(a), "a.pem", pa)};
    const char *paths_b[] = {write_parts(bpath, sizeof(bpath), "b.pem", pb)};
    struct tlsw_bundle *ba = load(paths_a, 1), *bb = load(paths_b, 1);
    tmp_path(out, sizeof(out), "out.pem");
    cr_assert_eq(tlsw_bundle_write(bb, out, err, sizeof(err)), 0, "%s", err);
    char *version_b = slurp(out, NULL);
    cr_assert_eq(tlsw_bundle_write(ba, out, err, sizeof(err)), 0, "%s", err);
    char *version_a = slurp(out, NULL);
    cr_assert_str_neq(version_a, version_b);

    struct racing_reader reader = {.path = out, .versions = {version_a, version_b}};
    thrd_t t;
    cr_assert_eq(thrd_create(&t, read_racing, &reader), thrd_success);
    for (int k = 0; k < 300; k++)
        cr_assert_eq(tlsw_bundle_write(k % 2 == 0 ? bb : ba, out, err, sizeof(err)), 0, "%s", err);
    atomic_store(&reader.stop, true);
    thrd_join(t, NULL);

    cr_assert_gt(atomic_load(&reader.reads), 0);
    cr_assert_eq(atomic_load(&reader.missing), 0, "the bundle was missing %d times",
                 atomic_load(&reader.missing));
    cr_assert_eq(atomic_load(&reader.torn), 0, "%d reads saw a partial bundle",
                 atomic_load(&reader.torn));
    cr_assert_eq(count_dir_entries(), 3);
    tlsw_bundle_free(ba);
    tlsw_bundle_free(bb);
    free(version_a);
    free(version_b);
    free(r);
    free(i);
    cg_pki_free(&p);
}

Test(bundle, refused_or_failed_merge_leaves_out_untouched)
{
    struct cg_cert r = {0};
    cr_assert_eq(cg_issue(&r, &CG_ROOT, NULL), 0);
    char good[256], bad[256], out[256], nodir[256];
    char *pr = pem_of(r.cert);
    const char *parts[] = {pr, NULL};
    const char *garbage[] = {"-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                             "-----END CERTIFICATE-----\n",
                             NULL};
    const char *old[] = {"previous bundle\n", NULL};
    write_parts(good, sizeof(good), "good.pem", parts);
    write_parts(bad, sizeof(bad), "bad.pem", garbage);
    write_parts(out, sizeof(out), "out.pem", old);
    const char *paths[] = {good, bad};

    struct tlsw_bundle *b = load(paths, 2);
    char err[512] = "";
    cr_assert_eq(tlsw_bundle_write(b, out, err, sizeof(err)), -1);
    cr_assert_not_null(strstr(err, "bad.pem"), "%s", err);
    cr_assert_not_null(strstr(err, "line 1"), "%s", err);
    char *text = slurp(out, NULL);
    cr_assert_str_eq(text, "previous bundle\n");
    cr_assert_eq(count_dir_entries(), 3, "nothing new in the directory");
    tlsw_bundle_free(b);
    free(text);

    /* An I/O failure (no such directory) creates nothing either. */
    const char *ok_paths[] = {good};
    b = load(ok_paths, 1);
    tmp_path(nodir, sizeof(nodir), "no-such-dir/out.pem");
    cr_assert_eq(tlsw_bundle_write(b, nodir, err, sizeof(err)), -1);
    cr_assert_not_null(strstr(err, "no-such-dir"), "%s", err);
    cr_assert_eq(access(nodir, F_OK), -1);
    cr_assert_eq(count_dir_entries(), 3);
    tlsw_bundle_free(b);
    free(pr);
    cg_free(&r);
}

Test(bundle, merge_keeps_trusted_certificate_form)
{
    struct cg_cert r = {0};
    cr_assert_eq(cg_issue(&r, &CG_ROOT, NULL), 0);
    ASN1_OBJECT *server_auth = OBJ_nid2obj(NID_server_auth);
    cr_assert_eq(X509_add1_trust_object(r.cert, server_auth), 1);
    BIO *mb = BIO_new(BIO_s_mem());
    cr_assert_not_null(mb);
    cr_assert_eq(PEM_write_bio_X509_AUX(mb, r.cert), 1);
    char *trusted = mem_text(mb);
    char in[256], out[256];
    const char *parts[] = {trusted, NULL};
    const char *paths[] = {write_parts(in, sizeof(in), "trusted.pem", parts)};

    struct tlsw_bundle *b = load(paths, 1);
    cr_assert_eq(tlsw_bundle_warning_count(b), 0, "%s", dump_warnings(b));
    cr_assert_eq(tlsw_bundle_cert_count(b), 1);
    char err[512] = "";
    cr_assert_eq(tlsw_bundle_write(b, tmp_path(out, sizeof(out), "out.pem"), err, sizeof(err)), 0,
                 "%s", err);
    char *text = slurp(out, NULL);
    cr_assert_not_null(strstr(text, "-----BEGIN TRUSTED CERTIFICATE-----"), "%s", text);
    tlsw_bundle_free(b);
    free(text);
    free(trusted);
    cg_free(&r);
}
