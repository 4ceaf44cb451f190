/* tls/: certificate revocation lists in trust generations (issue 17, PROTOCOLS.md part D): CRLs
 * from the bundle and from a crl path, validated at load time, checked on every element of the
 * chain, with the crl_required and crl_stale policies. CRLs and certificates are generated at
 * test time (tls_certgen.h); the engine is joined in memory to an OpenSSL server. */
#include <criterion/criterion.h>

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/ssl.h>

#include "test_util.h"
#include "tls_certgen.h"
#include "tlsw.h"

static void setup(void)
{
    tmpdir_make("crl");
}

static void teardown(void)
{
    tmpdir_remove();
    leak_check();
}

TestSuite(crl, .init = setup, .fini = teardown);

/* ---- the server side and the pump ------------------------------------------------------------ */

struct server {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *in, *out;
    bool done, failed;
};

static void server_start(struct server *s, const struct cg_cert *leaf, X509 *inter)
{
    memset(s, 0, sizeof(*s));
    s->ctx = SSL_CTX_new(TLS_server_method());
    cr_assert_not_null(s->ctx);
    cr_assert_eq(SSL_CTX_use_certificate(s->ctx, leaf->cert), 1);
    cr_assert_eq(SSL_CTX_use_PrivateKey(s->ctx, leaf->key), 1);
    cr_assert_eq(SSL_CTX_add1_chain_cert(s->ctx, inter), 1);
    s->ssl = SSL_new(s->ctx);
    s->in = BIO_new(BIO_s_mem());
    s->out = BIO_new(BIO_s_mem());
    cr_assert(s->ssl && s->in && s->out);
    BIO_set_mem_eof_return(s->in, -1);
    SSL_set_bio(s->ssl, s->in, s->out);
    SSL_set_accept_state(s->ssl);
}

static void server_free(struct server *s)
{
    SSL_free(s->ssl);
    SSL_CTX_free(s->ctx);
}

#include "tls_pump.h"

/* ---- fixtures -------------------------------------------------------------------------------- */

struct fx {
    struct cg_pki pki;
    char bundle[256];
    char crl[256];
    X509_CRL *crls[4];
    size_t ncrls;
};

static void fx_make(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    cr_assert_eq(cg_pki_make(&f->pki, &CG_LEAF), 0);
    tmp_path(f->bundle, sizeof(f->bundle), "bundle.pem");
    tmp_path(f->crl, sizeof(f->crl), "crl.pem");
}

static void fx_free(struct fx *f)
{
    for (size_t i = 0; i < f->ncrls; i++)
        X509_CRL_free(f->crls[i]);
    cg_pki_free(&f->pki);
}

/* A CRL issued (or forged) per spec; kept by f. */
static X509_CRL *fx_crl(struct fx *f, const struct cg_cert *issuer, X509 *revoked,
                        const struct cg_crl_spec *spec)
{
    X509_CRL *c = cg_crl(issuer, revoked != NULL ? &revoked : NULL, revoked != NULL, spec);
    cr_assert_not_null(c);
    cr_assert_lt(f->ncrls, DBT_ARRAY_LEN(f->crls));
    f->crls[f->ncrls++] = c;
    return c;
}

/* The bundle: the root and the intermediate (a CRL of the intermediate is verified with its
 * key, so it belongs to the trust material), plus the other root when asked, then crls. */
static void fx_bundle(struct fx *f, bool other_root, X509_CRL *const *crls, size_t n)
{
    X509 *certs[] = {f->pki.root.cert, f->pki.inter.cert, f->pki.other_root.cert};
    cr_assert_eq(cg_write_bundle(f->bundle, certs, other_root ? 3 : 2), 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(cg_write_crl(f->bundle, crls[i], true, false), 0);
}

static int fx_load(struct fx *f, const struct tlsw_gen_opts *o, struct tlsw_gen **g, char *err,
                   size_t cap)
{
    struct tlsw_gen_opts opts = o != NULL ? *o : (struct tlsw_gen_opts){0};
    opts.verify = TLSW_VERIFY_FULL;
    return tlsw_gen_load(f->bundle, &opts, g, err, cap);
}

static struct tlsw_gen *fx_load_ok(struct fx *f, const struct tlsw_gen_opts *o)
{
    char err[512] = "";
    struct tlsw_gen *g = NULL;
    cr_assert_eq(fx_load(f, o, &g, err, sizeof(err)), 0, "load: %s", err);
    return g;
}

static void fx_load_refused(struct fx *f, const struct tlsw_gen_opts *o, const char *want)
{
    char err[512] = "";
    struct tlsw_gen *g = NULL;
    cr_assert_eq(fx_load(f, o, &g, err, sizeof(err)), -1, "a bad CRL was accepted");
    cr_assert_null(g);
    cr_assert(strstr(err, want) != NULL, "error '%s' lacks '%s'", err, want);
}

/* One handshake of g against the server presenting f's leaf (and intermediate); returns the
 * reason (DBT_NONE when it verified) and the detail. */
static enum dbt_reason fx_handshake(struct fx *f, struct tlsw_gen *g, const struct cg_cert *leaf,
                                    char *detail, size_t cap)
{
    struct server s;
    server_start(&s, leaf != NULL ? leaf : &f->pki.leaf, f->pki.inter.cert);
    struct tlsw_conn *c = tlsw_conn_new(g, "localhost", NULL, 0);
    cr_assert_not_null(c);
    enum tlsw_status st = pump_handshake(c, &s);
    enum dbt_reason r = tlsw_conn_failure(c, detail, cap);
    cr_assert_eq(st == TLSW_OK, r == DBT_NONE, "status %d, reason %s (%s)", st, dbt_reason_name(r),
                 detail);
    cr_log_info("%s: %s", dbt_reason_name(r), detail);
    tlsw_conn_free(c);
    server_free(&s);
    return r;
}

#define EXPECT_REASON(f, g, want, detail)                                                          \
    do {                                                                                           \
        enum dbt_reason got_ = fx_handshake(f, g, NULL, detail, sizeof(detail));                   \
        cr_assert_eq(got_, want, "reason %s (%s), want %s", dbt_reason_name(got_), detail,         \
                     dbt_reason_name(want));                                                       \
    } while (0)

/* ---- checking -------------------------------------------------------------------------------- */

Test(crl, revoked_leaf_fails_with_entry_details)
{
    struct fx f;
    char detail[512], serial[80];
    fx_make(&f);
    X509_CRL *c = fx_crl(&f, &f.pki.inter, f.pki.leaf.cert, &CG_CRL);
    fx_bundle(&f, false, &c, 1);
    struct tlsw_gen *g = fx_load_ok(&f, NULL);
    cr_assert_eq(tlsw_gen_crl_count(g), 1);
    EXPECT_REASON(&f, g, DBT_TLS_CERT_REVOKED, detail);
    /* Hex as OpenSSL prints it, maybe with a leading 0. */
    snprintf(serial, sizeof(serial), "%lX, revoked",
             ASN1_INTEGER_get(X509_get0_serialNumber(f.pki.leaf.cert)));
    cr_assert(strstr(detail, "certificate revoked (depth 0, CN=localhost,O=dbtrust test") != NULL,
              "%s", detail);
    cr_assert(strstr(detail, serial) != NULL, "%s lacks %s", detail, serial);
    cr_assert(strstr(detail, "reason keyCompromise (1)") != NULL, "%s", detail);
    cr_assert(strstr(detail, ", revoked 20") != NULL && strstr(detail, "Z, reason") != NULL, "%s",
              detail);
    tlsw_gen_unref(g);
    fx_free(&f);
}

Test(crl, revoked_intermediate_fails_every_leaf_under_it)
{
    struct fx f;
    char detail[512];
    fx_make(&f);
    struct cg_crl_spec spec = CG_CRL;
    spec.reason = 2; /* cACompromise */
    X509_CRL *c = fx_crl(&f, &f.pki.root, f.pki.inter.cert, &spec);
    fx_bundle(&f, false, &c, 1);
    struct tlsw_gen *g = fx_load_ok(&f, NULL);
    EXPECT_REASON(&f, g, DBT_TLS_CERT_REVOKED, detail);
    cr_assert(strstr(detail, "(depth 1, CN=Test Intermediate") != NULL, "%s", detail);
    cr_assert(strstr(detail, "reason cACompromise (2)") != NULL, "%s", detail);
    /* Another leaf of the same intermediate fails the same way. */
    struct cg_spec other = CG_LEAF;
    other.cn = "localhost-2";
    struct cg_cert leaf2;
    cr_assert_eq(cg_issue(&leaf2, &other, &f.pki.inter), 0);
    cr_assert_eq(fx_handshake(&f, g, &leaf2, detail, sizeof(detail)), DBT_TLS_CERT_REVOKED);
    cg_free(&leaf2);
    tlsw_gen_unref(g);
    fx_free(&f);
}

Test(crl, entry_without_reason_code)
{
    struct fx f;
    char detail[512];
    fx_make(&f);
    struct cg_crl_spec spec = CG_CRL;
    spec.reason = -1;
    X509_CRL *c = fx_crl(&f, &f.pki.inter, f.pki.leaf.cert, &spec);
    fx_bundle(&f, false, &c, 1);
    struct tlsw_gen *g = fx_load_ok(&f, NULL);
    EXPECT_REASON(&f, g, DBT_TLS_CERT_REVOKED, detail);
    cr_assert(strstr(detail, "reason none given") != NULL, "%s", detail);
    tlsw_gen_unref(g);
    fx_free(&f);
}

Test(crl, crls_that_revoke_nothing_of_the_chain_change_nothing)
{
    struct fx f;
    char detail[512] = "";
    fx_make(&f);
    /* An empty CRL of the intermediate, and one of an unrelated CA of the bundle revoking a
     * certificate with the leaf's serial: neither concerns this chain. */
    X509_CRL *c[2] = {fx_crl(&f, &f.pki.inter, NULL, &CG_CRL),
                      fx_crl(&f, &f.pki.other_root, f.pki.leaf.cert, &CG_CRL)};
    fx_bundle(&f, true, c, 2);
    struct tlsw_gen *g = fx_load_ok(&f, NULL);
    cr_assert_eq(tlsw_gen_crl_count(g), 2);
    const struct tlsw_crl_info *ci = tlsw_gen_crl(g, 1);
    cr_assert_str_eq(ci->issuer, "CN=Other Root,O=dbtrust test");
    cr_assert_str_eq(ci->verified_by, "CN=Other Root,O=dbtrust test");
    cr_assert_eq(ci->entries, 1);
    cr_assert_str_eq(ci->number, "01");
    cr_assert_str_eq(ci->source, f.bundle);
    EXPECT_REASON(&f, g, DBT_NONE, detail);
    tlsw_gen_unref(g);
    fx_free(&f);
}

Test(crl, issuer_without_crl_passes_unless_required)
{
    struct fx f;
    char detail[512] = "";
    fx_make(&f);
    X509_CRL *c = fx_crl(&f, &f.pki.root, NULL, &CG_CRL); /* the root's only */
    fx_bundle(&f, false, &c, 1);
    struct tlsw_gen *g = fx_load_ok(&f, NULL);
    EXPECT_REASON(&f, g, DBT_NONE, detail);
    tlsw_gen_unref(g);

    struct tlsw_gen_opts req = {.crl_required = true};
    g = fx_load_ok(&f, &req);
    EXPECT_REASON(&f, g, DBT_TLS_CRL_MISSING, detail);
    cr_assert(strstr(detail, "depth 0, CN=localhost") != NULL, "%s", detail);
    cr_assert(strstr(detail, "issuer CN=Test Intermediate") != NULL, "%s", detail);
    tlsw_gen_unref(g);

    /* Both issuers with a CRL: required is satisfied (the root itself needs none). */
    X509_CRL *both[2] = {c, fx_crl(&f, &f.pki.inter, NULL, &CG_CRL)};
    fx_bundle(&f, false, both, 2);
    g = fx_load_ok(&f, &req);
    EXPECT_REASON(&f, g, DBT_NONE, detail);
    tlsw_gen_unref(g);
    fx_free(&f);
}

Test(crl, stale_crl_is_still_enforced_and_refuse_fails_closed)
{
    struct fx f;
    char detail[512] = "";
    fx_make(&f);
    struct cg_crl_spec stale = CG_CRL;
    stale.this_days = -20;
    stale.next_days = -3;
    X509_CRL *revoking = fx_crl(&f, &f.pki.inter, f.pki.leaf.cert, &stale);
    fx_bundle(&f, false, &revoking, 1);
    struct tlsw_gen *g = fx_load_ok(&f, NULL); /* a stale CRL loads */
    EXPECT_REASON(&f, g, DBT_TLS_CERT_REVOKED, detail);
    tlsw_gen_unref(g);

    /* Stale but revoking nothing: warn lets the chain through... */
    X509_CRL *empty = fx_crl(&f, &f.pki.inter, NULL, &stale);
    fx_bundle(&f, false, &empty, 1);
    g = fx_load_ok(&f, NULL);
    EXPECT_REASON(&f, g, DBT_NONE, detail);
    tlsw_gen_unref(g);
    /* ...refuse does not. */
    struct tlsw_gen_opts refuse = {.crl_stale = TLSW_CRL_STALE_REFUSE};
    g = fx_load_ok(&f, &refuse);
    EXPECT_REASON(&f, g, DBT_TLS_CRL_STALE, detail);
    cr_assert(strstr(detail, "CRL of CN=Test Intermediate,O=dbtrust test, nextUpdate 20") != NULL,
              "%s", detail);
    cr_assert(strstr(detail, "crl_stale = refuse") != NULL, "%s", detail);
    tlsw_gen_unref(g);
    fx_free(&f);
}

Test(crl, delta_crl_applies_on_top_of_its_base)
{
    struct fx f;
    char detail[512] = "";
    fx_make(&f);
    struct cg_crl_spec base = CG_CRL, delta = CG_CRL;
    base.number = 5;
    base.freshest = true;
    delta.number = 6;
    delta.delta_base = 5;
    X509_CRL *c[2] = {fx_crl(&f, &f.pki.inter, NULL, &base),
                      fx_crl(&f, &f.pki.inter, f.pki.leaf.cert, &delta)};
    fx_bundle(&f, false, c, 1); /* the empty base alone */
    struct tlsw_gen *g = fx_load_ok(&f, NULL);
    EXPECT_REASON(&f, g, DBT_NONE, detail);
    tlsw_gen_unref(g);
    fx_bundle(&f, false, c, 2);
    g = fx_load_ok(&f, NULL);
    cr_assert_eq(tlsw_gen_crl_count(g), 2, "a delta CRL does not replace its base");
    cr_assert(tlsw_gen_crl(g, 1)->delta);
    EXPECT_REASON(&f, g, DBT_TLS_CERT_REVOKED, detail);
    tlsw_gen_unref(g);
    fx_free(&f);
}

Test(crl, newest_per_issuer_is_in_force)
{
    struct fx f;
    char detail[512] = "";
    fx_make(&f);
    struct cg_crl_spec older = CG_CRL, newer = CG_CRL;
    older.this_days = -3;
    newer.number = 2;
    /* The leaf was put on hold, then released: the newer CRL no longer lists it. */
    X509_CRL *c[2] = {fx_crl(&f, &f.pki.inter, NULL, &newer),
                      fx_crl(&f, &f.pki.inter, f.pki.leaf.cert, &older)};
    fx_bundle(&f, false, c, 2);
    struct tlsw_gen *g = fx_load_ok(&f, NULL);
    cr_assert_eq(tlsw_gen_crl_count(g), 1);
    cr_assert_eq(tlsw_gen_crl(g, 0)->entries, 0);
    cr_assert_str_eq(tlsw_gen_crl(g, 0)->number, "02");
    EXPECT_REASON(&f, g, DBT_NONE, detail);
    tlsw_gen_unref(g);
    fx_free(&f);
}

Test(crl, no_crl_no_check)
{
    struct fx f;
    char detail[512] = "";
    fx_make(&f);
    fx_bundle(&f, false, NULL, 0);
    struct tlsw_gen *g = fx_load_ok(&f, NULL);
    cr_assert_eq(tlsw_gen_crl_count(g), 0);
    cr_assert_str_empty(tlsw_gen_crl_sha256(g));
    EXPECT_REASON(&f, g, DBT_NONE, detail);
    tlsw_gen_unref(g);
    fx_free(&f);
}

/* ---- validation before use ------------------------------------------------------------------- */

Test(crl, forged_signature_refuses_the_generation)
{
    struct fx f;
    fx_make(&f);
    struct cg_crl_spec forged = CG_CRL;
    forged.signer = &f.pki.other_root; /* the intermediate's name, another key */
    X509_CRL *c = fx_crl(&f, &f.pki.inter, f.pki.leaf.cert, &forged);
    fx_bundle(&f, true, &c, 1);
    fx_load_refused(&f, NULL, "its signature does not verify with the key of CN=Test Intermediate");
    fx_load_refused(&f, NULL, "CRL 1 (from ");
    fx_free(&f);
}

Test(crl, crl_of_a_ca_outside_the_bundle_is_refused)
{
    struct fx f;
    fx_make(&f);
    X509_CRL *c = fx_crl(&f, &f.pki.other_root, NULL, &CG_CRL);
    fx_bundle(&f, false, &c, 1); /* other_root not in the bundle */
    fx_load_refused(&f, NULL,
                    "its issuer CN=Other Root,O=dbtrust test is not a certificate of the "
                    "bundle");
    fx_free(&f);
}

Test(crl, issuer_without_crl_sign_usage_is_refused)
{
    struct fx f;
    fx_make(&f);
    /* The leaf "issues" a CRL: not a CA. */
    X509_CRL *c = fx_crl(&f, &f.pki.leaf, NULL, &CG_CRL);
    X509 *certs[] = {f.pki.root.cert, f.pki.leaf.cert};
    cr_assert_eq(cg_write_bundle(f.bundle, certs, 2), 0);
    cr_assert_eq(cg_write_crl(f.bundle, c, true, false), 0);
    fx_load_refused(&f, NULL, "is not a CA allowed to sign CRLs");
    fx_free(&f);
}

Test(crl, broken_crl_block_is_refused)
{
    struct fx f;
    fx_make(&f);
    fx_bundle(&f, false, NULL, 0);
    FILE *fp = fopen(f.bundle, "a");
    cr_assert_not_null(fp);
    fputs("-----BEGIN X509 CRL-----\nMIIBAAAAAAAAAAAA\n-----END X509 CRL-----\n", fp);
    fclose(fp);
    fx_load_refused(&f, NULL, "PEM block 3");
    fx_free(&f);
}

/* ---- the crl path ---------------------------------------------------------------------------- */

Test(crl, crl_file_pem_and_der)
{
    struct fx f;
    char detail[512] = "";
    fx_make(&f);
    fx_bundle(&f, false, NULL, 0);
    X509_CRL *c = fx_crl(&f, &f.pki.inter, f.pki.leaf.cert, &CG_CRL);
    struct tlsw_gen_opts o = {.crl_path = f.crl};
    for (int der = 0; der <= 1; der++) {
        cr_assert_eq(cg_write_crl(f.crl, c, false, der), 0);
        struct tlsw_gen *g = fx_load_ok(&f, &o);
        cr_assert_eq(tlsw_gen_crl_count(g), 1);
        cr_assert_str_eq(tlsw_gen_crl(g, 0)->source, f.crl);
        cr_assert_eq(strlen(tlsw_gen_crl_sha256(g)), 64);
        EXPECT_REASON(&f, g, DBT_TLS_CERT_REVOKED, detail);
        tlsw_gen_unref(g);
    }
    fx_free(&f);
}

Test(crl, crl_directory_skips_hidden_entries_and_hashes_content)
{
    struct fx f;
    char dir[256], p[300], detail[512] = "";
    fx_make(&f);
    fx_bundle(&f, false, NULL, 0);
    tmp_path(dir, sizeof(dir), "crls");
    cr_assert_eq(mkdir(dir, 0755), 0);
    X509_CRL *root_crl = fx_crl(&f, &f.pki.root, NULL, &CG_CRL);
    X509_CRL *inter_crl = fx_crl(&f, &f.pki.inter, NULL, &CG_CRL);
    X509_CRL *revoking = fx_crl(&f, &f.pki.inter, f.pki.leaf.cert,
                                &(struct cg_crl_spec){
                                    .this_days = 0,
                                    .next_days = 7,
                                    .number = 2,
                                    .reason = 1,
                                });
    snprintf(p, sizeof(p), "%s/root.crl", dir);
    cr_assert_eq(cg_write_crl(p, root_crl, false, true), 0);
    snprintf(p, sizeof(p), "%s/inter.pem", dir);
    cr_assert_eq(cg_write_crl(p, inter_crl, false, false), 0);
    /* What a ConfigMap volume holds besides its files: never read. */
    snprintf(p, sizeof(p), "%s/.hidden", dir);
    cr_assert_eq(cg_write_text(p, "garbage", 7), 0);
    struct tlsw_gen_opts o = {.crl_path = dir};
    struct tlsw_gen *g = fx_load_ok(&f, &o);
    cr_assert_eq(tlsw_gen_crl_count(g), 2);
    EXPECT_REASON(&f, g, DBT_NONE, detail);
    char first[65];
    dbt_strlcpy(first, tlsw_gen_crl_sha256(g), sizeof(first));
    tlsw_gen_unref(g);

    /* A newer CRL of the intermediate replaces the old one: revoked, and the hash moved. */
    snprintf(p, sizeof(p), "%s/inter.pem", dir);
    cr_assert_eq(cg_write_crl(p, revoking, false, false), 0);
    g = fx_load_ok(&f, &o);
    cr_assert_str_neq(tlsw_gen_crl_sha256(g), first);
    EXPECT_REASON(&f, g, DBT_TLS_CERT_REVOKED, detail);
    tlsw_gen_unref(g);

    /* A file that is no CRL refuses the whole directory, naming it. */
    snprintf(p, sizeof(p), "%s/notes.txt", dir);
    cr_assert_eq(cg_write_text(p, "hello\n", 6), 0);
    fx_load_refused(&f, &o, "notes.txt");
    unlink(p);
    snprintf(p, sizeof(p), "%s/.hidden", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/root.crl", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/inter.pem", dir);
    unlink(p);
    fx_free(&f);
}

Test(crl, missing_crl_path_is_refused)
{
    struct fx f;
    fx_make(&f);
    fx_bundle(&f, false, NULL, 0);
    struct tlsw_gen_opts o = {.crl_path = "/nonexistent/dbtrust.crl"};
    fx_load_refused(&f, &o, "cannot read CRL path /nonexistent/dbtrust.crl");
    fx_free(&f);
}

Test(crl, reason_names)
{
    cr_assert_str_eq(tlsw_crl_reason_name(0), "unspecified");
    cr_assert_str_eq(tlsw_crl_reason_name(1), "keyCompromise");
    cr_assert_str_eq(tlsw_crl_reason_name(6), "certificateHold");
    cr_assert_str_eq(tlsw_crl_reason_name(10), "aACompromise");
    cr_assert_str_eq(tlsw_crl_reason_name(7), "?");
    cr_assert_str_eq(tlsw_crl_reason_name(11), "?");
    cr_assert_str_eq(tlsw_crl_reason_name(-1), "?");
}

/* ---- `dbtrust bundle inspect|merge` ------------------------------------------------------------
 */

#include "tlsw_bundle.h"

static size_t count_kind(const struct tlsw_bundle *b, enum tlsw_bundle_warn kind)
{
    size_t n = 0;
    for (size_t i = 0; i < tlsw_bundle_warning_count(b); i++)
        n += tlsw_bundle_warning(b, i)->kind == kind;
    return n;
}

Test(crl, inspect_agrees_with_the_daemon_and_merge_keeps_the_newest)
{
    struct fx f;
    char merged[256], err[512];
    fx_make(&f);
    struct cg_crl_spec older = CG_CRL, stale = CG_CRL;
    older.this_days = -3;
    stale.this_days = -10;
    stale.next_days = -1;
    X509_CRL *c[3] = {fx_crl(&f, &f.pki.inter, f.pki.leaf.cert, &older),
                      fx_crl(&f, &f.pki.inter, NULL, &CG_CRL),
                      fx_crl(&f, &f.pki.root, NULL, &stale)};
    fx_bundle(&f, false, c, 3);
    struct tlsw_gen *g = fx_load_ok(&f, NULL);
    struct tlsw_bundle *b = NULL;
    const char *paths[] = {f.bundle};
    cr_assert_eq(tlsw_bundle_load(paths, 1, time(NULL), &b), 0);
    cr_assert_eq(tlsw_bundle_crl_count(b), 3);
    cr_assert_eq(tlsw_bundle_crl_kept_count(b), tlsw_gen_crl_count(g));
    cr_assert_eq(tlsw_bundle_crl(b, 0)->newer, 1, "the older CRL of the intermediate");
    cr_assert_eq(tlsw_bundle_crl(b, 0)->info.entries, 1);
    cr_assert_str_eq(tlsw_bundle_crl(b, 2)->info.verified_by, "CN=Test Root,O=dbtrust test");
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_CRL_SUPERSEDED), 1);
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_CRL_STALE), 1);
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_NOT_CERTIFICATE), 0, "CRLs are no longer ignored");
    cr_assert_not(tlsw_bundle_has_errors(b));

    tmp_path(merged, sizeof(merged), "merged.pem");
    cr_assert_eq(tlsw_bundle_write(b, merged, err, sizeof(err)), 0, "%s", err);
    tlsw_bundle_free(b);
    paths[0] = merged;
    cr_assert_eq(tlsw_bundle_load(paths, 1, time(NULL), &b), 0);
    cr_assert_eq(tlsw_bundle_crl_count(b), 2);
    cr_assert_eq(tlsw_bundle_crl(b, 0)->info.entries, 0, "the newer CRL of the intermediate");
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_CRL_SUPERSEDED), 0);
    tlsw_bundle_free(b);
    tlsw_gen_unref(g);
    fx_free(&f);
}

Test(crl, inspect_reports_a_broken_crl_block_as_an_error)
{
    struct fx f;
    fx_make(&f);
    fx_bundle(&f, false, NULL, 0);
    FILE *fp = fopen(f.bundle, "a");
    cr_assert_not_null(fp);
    fputs("-----BEGIN X509 CRL-----\nMIIBAAAAAAAAAAAA\n-----END X509 CRL-----\n", fp);
    fclose(fp);
    struct tlsw_bundle *b = NULL;
    const char *paths[] = {f.bundle};
    cr_assert_eq(tlsw_bundle_load(paths, 1, time(NULL), &b), 0);
    cr_assert_eq(count_kind(b, TLSW_BUNDLE_BAD_CRL), 1);
    cr_assert(tlsw_bundle_has_errors(b), "the daemon refuses this bundle");
    tlsw_bundle_free(b);
    fx_free(&f);
}
