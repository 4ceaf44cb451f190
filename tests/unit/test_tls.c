/* tls/: bundle loading and trust generations, and the client engine joined in memory to an
 * OpenSSL server, with certificates generated at test time (tls_certgen.h). */
#include <criterion/criterion.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "test_util.h"
#include "tls_certgen.h"
#include "tlsw.h"

static void setup(void)
{
    tmpdir_make("tls");
}

static void teardown(void)
{
    tmpdir_remove();
    leak_check();
}

TestSuite(tls, .init = setup, .fini = teardown);

/* ---- certificates and generations ----------------------------------------------------------- */

static struct tlsw_gen *load_ok(const char *path, enum tlsw_verify verify, int min_version)
{
    char err[512] = "";
    struct tlsw_gen *g = NULL;
    struct tlsw_gen_opts o = {.verify = verify, .min_tls_version = min_version};
    int rc = tlsw_gen_load(path, &o, &g, err, sizeof(err));
    cr_assert_eq(rc, 0, "load %s: %s", path, err);
    cr_assert_not_null(g);
    return g;
}

/* Loads a bundle that must be refused; returns the error text. */
static void load_fail(const char *path, char *err, size_t cap)
{
    struct tlsw_gen *g = (struct tlsw_gen *)1;
    struct tlsw_gen_opts o = {.verify = TLSW_VERIFY_FULL, .min_tls_version = TLS1_2_VERSION};
    int rc = tlsw_gen_load(path, &o, &g, err, cap);
    cr_assert_eq(rc, -1, "bundle %s was accepted", path);
    cr_assert_null(g, "out must be NULL on failure");
    cr_assert_gt(strlen(err), 0, "no error text");
}

/* The usual PKI (leaf CG_LEAF) and a generation trusting its root alone (bundle tmpdir/b.pem). */
static struct tlsw_gen *gen_of_root(struct cg_pki *p)
{
    char path[256];
    cr_assert_eq(cg_pki_make(p, &CG_LEAF), 0);
    cr_assert_eq(cg_write_bundle(tmp_path(path, sizeof(path), "b.pem"), &p->root.cert, 1), 0);
    return load_ok(path, TLSW_VERIFY_FULL, 0);
}

/* ---- an in-memory OpenSSL server and the pump between it and the engine --------------------- */

struct server {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *in, *out; /* in: ciphertext from the client; out: ciphertext to it */
    bool done, failed;
    char alpn[64];
};

static int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned inlen, void *arg)
{
    struct server *s = arg;
    static const unsigned char ours[] = "\x0apostgresql";
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, ours, sizeof(ours) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    memcpy(s->alpn, sel, *outlen);
    s->alpn[*outlen] = '\0';
    return SSL_TLSEXT_ERR_OK;
}

/* The server presents chain[0] (leaf, with key) followed by the rest of chain. */
static void server_start(struct server *s, const struct cg_cert *leaf, X509 *const *extra,
                         size_t nextra, int max_version)
{
    memset(s, 0, sizeof(*s));
    s->ctx = SSL_CTX_new(TLS_server_method());
    cr_assert_not_null(s->ctx);
    if (max_version != 0) {
        /* TLS 1.1 needs security level 0 on OpenSSL 3: the point is the client refusing it. */
        SSL_CTX_set_security_level(s->ctx, 0);
        SSL_CTX_set_min_proto_version(s->ctx, TLS1_VERSION);
        SSL_CTX_set_max_proto_version(s->ctx, max_version);
    }
    cr_assert_eq(SSL_CTX_use_certificate(s->ctx, leaf->cert), 1);
    cr_assert_eq(SSL_CTX_use_PrivateKey(s->ctx, leaf->key), 1);
    for (size_t i = 0; i < nextra; i++)
        cr_assert_eq(SSL_CTX_add1_chain_cert(s->ctx, extra[i]), 1);
    SSL_CTX_set_alpn_select_cb(s->ctx, on_alpn_select, s);
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

/* ---- scenarios ------------------------------------------------------------------------------ */

enum bundle_kind { BUNDLE_ROOT, BUNDLE_OTHER_ROOT, BUNDLE_INTER_ONLY };

enum pin_kind { PIN_NONE, PIN_INTERMEDIATE, PIN_UNRELATED };

struct scenario {
    enum pin_kind pin;
    struct cg_spec leaf;
    const char *host;
    enum tlsw_verify verify;
    enum bundle_kind bundle;
    int client_min;
    int server_max;
    const char *alpn;
    size_t alpn_len;
    bool require_alpn; /* tlsw_conn_require_alpn (PostgreSQL direct TLS) */
};

struct run {
    struct cg_pki pki;
    struct tlsw_gen *gen;
    struct tlsw_conn *c;
    struct server s;
    enum tlsw_status st;
    enum dbt_reason reason;
    char detail[512];
};

static void run_scenario(struct run *r, const struct scenario *sc)
{
    char path[256];
    memset(r, 0, sizeof(*r));
    cr_assert_eq(cg_pki_make(&r->pki, &sc->leaf), 0);
    X509 *bundle = sc->bundle == BUNDLE_ROOT         ? r->pki.root.cert
                   : sc->bundle == BUNDLE_OTHER_ROOT ? r->pki.other_root.cert
                                                     : r->pki.inter.cert;
    cr_assert_eq(cg_write_bundle(tmp_path(path, sizeof(path), "bundle.pem"), &bundle, 1), 0);
    char pins[300] = "";
    if (sc->pin == PIN_INTERMEDIATE) {
        /* The intermediate's pin, read back through a generation holding it. */
        char ipath[256];
        cr_assert_eq(
            cg_write_bundle(tmp_path(ipath, sizeof(ipath), "inter.pem"), &r->pki.inter.cert, 1), 0);
        struct tlsw_gen *ig = load_ok(ipath, TLSW_VERIFY_FULL, 0);
        snprintf(pins, sizeof(pins),
                 "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=, sha256/%s",
                 tlsw_gen_cert(ig, 0)->spki_pin);
        tlsw_gen_unref(ig);
    } else if (sc->pin == PIN_UNRELATED) {
        dbt_strlcpy(pins, "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", sizeof(pins));
    }
    if (pins[0]) {
        char err[512] = "";
        struct tlsw_gen_opts o = {
            .verify = sc->verify, .min_tls_version = sc->client_min, .pins = pins};
        cr_assert_eq(tlsw_gen_load(path, &o, &r->gen, err, sizeof(err)), 0, "%s", err);
    } else {
        r->gen = load_ok(path, sc->verify, sc->client_min);
    }
    X509 *chain[] = {r->pki.inter.cert};
    server_start(&r->s, &r->pki.leaf, chain, 1, sc->server_max);
    r->c = tlsw_conn_new(r->gen, sc->host, (const uint8_t *)sc->alpn, sc->alpn_len);
    cr_assert_not_null(r->c);
    if (sc->require_alpn)
        cr_assert_eq(tlsw_conn_require_alpn(r->c), 0);
    r->st = pump_handshake(r->c, &r->s);
    r->reason = tlsw_conn_failure(r->c, r->detail, sizeof(r->detail));
}

static void run_free(struct run *r)
{
    tlsw_conn_free(r->c);
    tlsw_gen_unref(r->gen);
    server_free(&r->s);
    cg_pki_free(&r->pki);
}

static void expect_failure(const struct run *r, enum dbt_reason want)
{
    cr_assert_eq(r->st, TLSW_ERROR, "handshake status %d, want TLSW_ERROR", r->st);
    cr_assert_eq(r->reason, want, "reason %s (%s), want %s", dbt_reason_name(r->reason), r->detail,
                 dbt_reason_name(want));
    cr_assert_gt(strlen(r->detail), 0);
    cr_log_info("%s: %s", dbt_reason_name(r->reason), r->detail); /* shown with --verbose */
}

static void expect_ok(const struct run *r)
{
    cr_assert_eq(r->st, TLSW_OK, "handshake status %d: %s (%s)", r->st, dbt_reason_name(r->reason),
                 r->detail);
    cr_assert(r->s.done, "server handshake not done");
    cr_assert_eq(r->reason, DBT_NONE);
    cr_assert_str_empty(r->detail);
}

/* Reads until the engine yields data, closes or fails. */
static enum tlsw_status read_some(struct tlsw_conn *c, uint8_t *buf, size_t cap, size_t *n)
{
    enum tlsw_status st;
    do
        st = tlsw_conn_read(c, buf, cap, n);
    while (st == TLSW_OK && *n == 0);
    return st;
}

Test(tls, valid_chain_data_and_close)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.leaf = CG_LEAF, .host = "localhost"});
    expect_ok(&r);
    cr_assert_str_eq(tlsw_conn_version(r.c), "TLSv1.3");
    cr_assert_gt(strlen(tlsw_conn_cipher(r.c)), 0);
    cr_assert_str_eq(SSL_get_servername(r.s.ssl, TLSEXT_NAMETYPE_host_name), "localhost");
    /* The client Finished went out, so the client has nothing left to send. */
    cr_assert_eq(tlsw_conn_pending(r.c), 0);

    struct tlsw_cert_info chain[4];
    size_t n = tlsw_conn_peer_chain(r.c, chain, 4);
    cr_assert_eq(n, 3, "verified chain is leaf, intermediate, root");
    cr_assert_str_eq(chain[0].subject, "CN=localhost,O=dbtrust test");
    cr_assert_str_eq(chain[0].issuer, "CN=Test Intermediate,O=dbtrust test");
    cr_assert_str_eq(chain[1].subject, "CN=Test Intermediate,O=dbtrust test");
    cr_assert_str_eq(chain[2].subject, "CN=Test Root,O=dbtrust test");
    cr_assert(!chain[0].is_ca && chain[1].is_ca && chain[2].is_ca);
    cr_assert_eq(tlsw_conn_peer_chain(r.c, chain, 1), 1, "cap is honoured");

    /* client -> server */
    cr_assert_eq(tlsw_conn_write(r.c, (const uint8_t *)"ping", 4), TLSW_OK);
    client_to_server(r.c, &r.s);
    char sbuf[16] = "";
    size_t sn = 0;
    cr_assert_eq(SSL_read_ex(r.s.ssl, sbuf, sizeof(sbuf), &sn), 1);
    cr_assert_eq(sn, 4);
    cr_assert_eq(memcmp(sbuf, "ping", 4), 0);

    /* server -> client, across the TLS 1.3 session tickets the client must skip */
    cr_assert_eq(SSL_write_ex(r.s.ssl, "pong", 4, &sn), 1);
    server_to_client(&r.s, r.c);
    uint8_t cbuf[16];
    size_t cn = 0;
    cr_assert_eq(read_some(r.c, cbuf, sizeof(cbuf), &cn), TLSW_OK);
    cr_assert_eq(cn, 4);
    cr_assert_eq(memcmp(cbuf, "pong", 4), 0);
    cr_assert_eq(tlsw_conn_read(r.c, cbuf, sizeof(cbuf), &cn), TLSW_WANT_IO);
    cr_assert_eq(cn, 0);

    /* The server's close_notify ends the client's reads. */
    cr_assert_geq(SSL_shutdown(r.s.ssl), 0);
    server_to_client(&r.s, r.c);
    cr_assert_eq(tlsw_conn_read(r.c, cbuf, sizeof(cbuf), &cn), TLSW_CLOSED);
    cr_assert_eq(tlsw_conn_failure(r.c, NULL, 0), DBT_NONE);
    run_free(&r);
}

Test(tls, large_writes_both_ways)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.leaf = CG_LEAF, .host = "localhost"});
    expect_ok(&r);
    size_t len = 200 * 1024; /* several records each way */
    uint8_t *out = malloc(len), *in = malloc(len);
    cr_assert(out && in);
    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)(i * 31 + 7);

    cr_assert_eq(tlsw_conn_write(r.c, out, len), TLSW_OK);
    cr_assert_gt(tlsw_conn_pending(r.c), len, "all of it is encrypted at once");
    client_to_server(r.c, &r.s);
    size_t got = 0, n = 0;
    while (got < len && SSL_read_ex(r.s.ssl, in + got, len - got, &n) == 1)
        got += n;
    cr_assert_eq(got, len);
    cr_assert_eq(memcmp(in, out, len), 0);

    cr_assert_eq(SSL_write_ex(r.s.ssl, out, len, &n), 1);
    server_to_client(&r.s, r.c);
    memset(in, 0, len);
    got = 0;
    while (got < len) {
        cr_assert_eq(read_some(r.c, in + got, len - got, &n), TLSW_OK);
        got += n;
    }
    cr_assert_eq(memcmp(in, out, len), 0);
    free(out);
    free(in);
    run_free(&r);
}

/* The proxy's transport: records go to the output callback as they are made, nothing waits in
 * the engine; lent ciphertext is read in place, and what the engine did not read when the lend
 * ends is its own copy (the lender reuses its buffer at once). */
struct sink {
    uint8_t data[64 * 1024];
    size_t len;
    unsigned calls;
};

static void sink_append(void *arg, const uint8_t *data, size_t len)
{
    struct sink *k = arg;
    cr_assert_leq(k->len + len, sizeof(k->data));
    memcpy(k->data + k->len, data, len);
    k->len += len;
    k->calls++;
}

Test(tls, output_callback_and_lent_ciphertext)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.leaf = CG_LEAF, .host = "localhost"});
    expect_ok(&r);
    struct sink *k = calloc(1, sizeof(*k));
    cr_assert_not_null(k);
    tlsw_conn_set_output(r.c, sink_append, k);
    cr_assert_eq(tlsw_conn_write(r.c, (const uint8_t *)"ping", 4), TLSW_OK);
    cr_assert_eq(k->calls, 1, "one record, handed over at once");
    cr_assert_eq(tlsw_conn_pending(r.c), 0, "nothing waits in the engine");
    cr_assert_eq(BIO_write(r.s.in, k->data, (int)k->len), (int)k->len);
    char sbuf[16];
    size_t sn = 0;
    cr_assert_eq(SSL_read_ex(r.s.ssl, sbuf, sizeof(sbuf), &sn), 1);
    cr_assert_eq(sn, 4);
    cr_assert_eq(memcmp(sbuf, "ping", 4), 0);

    /* Two records from the server (after its session tickets), lent in one buffer: a read
     * stops after the first, so the second is still unread when the lend ends. */
    cr_assert_eq(SSL_write_ex(r.s.ssl, "first", 5, &sn), 1);
    cr_assert_eq(SSL_write_ex(r.s.ssl, "second", 6, &sn), 1);
    uint8_t wire[8192];
    int wn = BIO_read(r.s.out, wire, sizeof(wire));
    cr_assert_gt(wn, 0);
    tlsw_conn_lend(r.c, wire, (size_t)wn);
    uint8_t cbuf[16];
    size_t cn = 0;
    cr_assert_eq(read_some(r.c, cbuf, sizeof(cbuf), &cn), TLSW_OK);
    cr_assert_eq(cn, 5);
    cr_assert_eq(memcmp(cbuf, "first", 5), 0);
    tlsw_conn_lend_end(r.c);
    memset(wire, 0xAA, sizeof(wire)); /* the lender reuses its buffer */
    cr_assert_eq(read_some(r.c, cbuf, sizeof(cbuf), &cn), TLSW_OK, "the rest was kept");
    cr_assert_eq(cn, 6);
    cr_assert_eq(memcmp(cbuf, "second", 6), 0);

    /* A record lent in two halves: the first half waits inside the record layer. */
    cr_assert_eq(SSL_write_ex(r.s.ssl, "split", 5, &sn), 1);
    wn = BIO_read(r.s.out, wire, sizeof(wire));
    cr_assert_gt(wn, 8);
    tlsw_conn_lend(r.c, wire, 8);
    cr_assert_eq(tlsw_conn_read(r.c, cbuf, sizeof(cbuf), &cn), TLSW_WANT_IO);
    tlsw_conn_lend_end(r.c);
    tlsw_conn_lend(r.c, wire + 8, (size_t)wn - 8);
    cr_assert_eq(read_some(r.c, cbuf, sizeof(cbuf), &cn), TLSW_OK);
    tlsw_conn_lend_end(r.c);
    cr_assert_eq(cn, 5);
    cr_assert_eq(memcmp(cbuf, "split", 5), 0);

    /* close_notify goes to the output too. */
    size_t before = k->len;
    tlsw_conn_shutdown(r.c);
    cr_assert_gt(k->len, before);
    cr_assert_eq(tlsw_conn_pending(r.c), 0);
    free(k);
    run_free(&r);
}

Test(tls, client_close_notify_reaches_server)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.leaf = CG_LEAF, .host = "localhost"});
    expect_ok(&r);
    tlsw_conn_shutdown(r.c);
    cr_assert_gt(tlsw_conn_pending(r.c), 0, "close_notify is queued");
    client_to_server(r.c, &r.s);
    char buf[8];
    size_t n;
    ERR_clear_error();
    cr_assert_eq(SSL_read_ex(r.s.ssl, buf, sizeof(buf), &n), 0);
    cr_assert_eq(SSL_get_error(r.s.ssl, 0), SSL_ERROR_ZERO_RETURN);
    run_free(&r);
}

Test(tls, pin_on_intermediate_accepted)
{
    struct run r;
    run_scenario(&r,
                 &(struct scenario){.leaf = CG_LEAF, .host = "localhost", .pin = PIN_INTERMEDIATE});
    expect_ok(&r);
    run_free(&r);
}

Test(tls, pin_mismatch_refused_after_a_valid_chain)
{
    struct run r;
    run_scenario(&r,
                 &(struct scenario){.leaf = CG_LEAF, .host = "localhost", .pin = PIN_UNRELATED});
    expect_failure(&r, DBT_TLS_PIN_MISMATCH);
    cr_assert(strstr(r.detail, "no certificate of the verified chain has a configured pin (leaf: "
                               "sha256/") != NULL,
              "%s", r.detail);
    run_free(&r);
}

Test(tls, expired_leaf)
{
    struct run r;
    struct cg_spec leaf = CG_LEAF;
    leaf.not_before_days = -60;
    leaf.not_after_days = -2;
    run_scenario(&r, &(struct scenario){.leaf = leaf, .host = "localhost"});
    expect_failure(&r, DBT_TLS_CERT_EXPIRED);
    cr_assert(strstr(r.detail, "expired") != NULL, "%s", r.detail);
    cr_assert(strstr(r.detail, "(depth 0, CN=localhost,O=dbtrust test, notAfter 20") != NULL, "%s",
              r.detail);
    /* A failed handshake leaves an alert for the server, which then fails too. */
    cr_assert(r.s.failed);
    run_free(&r);
}

Test(tls, not_yet_valid_leaf)
{
    struct run r;
    struct cg_spec leaf = CG_LEAF;
    leaf.not_before_days = 2;
    leaf.not_after_days = 90;
    run_scenario(&r, &(struct scenario){.leaf = leaf, .host = "localhost"});
    expect_failure(&r, DBT_TLS_CERT_NOT_YET_VALID);
    cr_assert(strstr(r.detail, "not yet valid (depth 0, CN=localhost") != NULL, "%s", r.detail);
    cr_assert(strstr(r.detail, "notBefore") != NULL, "%s", r.detail);
    run_free(&r);
}

Test(tls, wrong_host)
{
    struct run r;
    struct cg_spec leaf = {.cn = "other.example",
                           .san = "DNS:other.example,DNS:*.other.example",
                           .not_before_days = -1,
                           .not_after_days = 90};
    run_scenario(&r, &(struct scenario){.leaf = leaf, .host = "localhost"});
    expect_failure(&r, DBT_TLS_HOSTNAME_MISMATCH);
    cr_assert_str_eq(r.detail, "certificate is for other.example, *.other.example, not localhost");
    run_free(&r);
}

Test(tls, wrong_host_cn_only)
{
    struct run r;
    struct cg_spec leaf = {.cn = "legacy.example", .not_before_days = -1, .not_after_days = 90};
    run_scenario(&r, &(struct scenario){.leaf = leaf, .host = "localhost"});
    expect_failure(&r, DBT_TLS_HOSTNAME_MISMATCH);
    cr_assert_str_eq(r.detail, "certificate is for legacy.example, not localhost");
    run_free(&r);
}

Test(tls, partial_wildcard_refused)
{
    struct run r;
    struct cg_spec leaf = {
        .cn = "w", .san = "DNS:db*.example.com", .not_before_days = -1, .not_after_days = 90};
    run_scenario(&r, &(struct scenario){.leaf = leaf, .host = "db1.example.com"});
    expect_failure(&r, DBT_TLS_HOSTNAME_MISMATCH);
    run_free(&r);
}

Test(tls, wildcard_and_trailing_dot)
{
    struct run r;
    struct cg_spec leaf = {
        .cn = "w", .san = "DNS:*.example.com", .not_before_days = -1, .not_after_days = 90};
    run_scenario(&r, &(struct scenario){.leaf = leaf, .host = "db.example.com."});
    expect_ok(&r);
    cr_assert_str_eq(SSL_get_servername(r.s.ssl, TLSEXT_NAMETYPE_host_name), "db.example.com");
    run_free(&r);
}

Test(tls, untrusted_root)
{
    struct run r;
    run_scenario(
        &r, &(struct scenario){.leaf = CG_LEAF, .host = "localhost", .bundle = BUNDLE_OTHER_ROOT});
    expect_failure(&r, DBT_TLS_UNTRUSTED_CHAIN);
    cr_assert_str_eq(r.detail, "unable to get local issuer certificate (depth 1, "
                               "CN=Test Intermediate,O=dbtrust test; issuer CN=Test Root,"
                               "O=dbtrust test is not in the bundle)");
    run_free(&r);
}

Test(tls, intermediate_only_bundle_is_not_a_trust_anchor)
{
    struct run r;
    run_scenario(
        &r, &(struct scenario){.leaf = CG_LEAF, .host = "localhost", .bundle = BUNDLE_INTER_ONLY});
    expect_failure(&r, DBT_TLS_UNTRUSTED_CHAIN);
    cr_assert(strstr(r.detail, "CN=Test Root") != NULL, "names the missing root: %s", r.detail);
    run_free(&r);
}

Test(tls, self_signed_leaf)
{
    struct cg_pki p;
    struct tlsw_gen *g = gen_of_root(&p);
    struct cg_cert self = {0};
    cr_assert_eq(cg_issue(&self, &CG_LEAF, NULL), 0);
    struct server s;
    server_start(&s, &self, NULL, 0, 0);
    struct tlsw_conn *c = tlsw_conn_new(g, "localhost", NULL, 0);
    cr_assert_not_null(c);
    cr_assert_eq(pump_handshake(c, &s), TLSW_ERROR);
    char detail[512];
    cr_assert_eq(tlsw_conn_failure(c, detail, sizeof(detail)), DBT_TLS_UNTRUSTED_CHAIN);
    cr_assert(strstr(detail, "self-signed certificate (depth 0, CN=localhost") != NULL, "%s",
              detail);
    tlsw_conn_free(c);
    tlsw_gen_unref(g);
    server_free(&s);
    cg_free(&self);
    cg_pki_free(&p);
}

Test(tls, ip_san_matches_without_sni)
{
    struct run r;
    struct cg_spec leaf = {.cn = "db",
                           .san = "DNS:db.example,IP:127.0.0.1",
                           .not_before_days = -1,
                           .not_after_days = 90};
    run_scenario(&r, &(struct scenario){.leaf = leaf, .host = "127.0.0.1"});
    expect_ok(&r);
    cr_assert_null(SSL_get_servername(r.s.ssl, TLSEXT_NAMETYPE_host_name), "no SNI for an IP");
    run_free(&r);
}

Test(tls, ipv6_san_matches)
{
    struct run r;
    struct cg_spec leaf = {
        .cn = "db", .san = "IP:::1", .not_before_days = -1, .not_after_days = 90};
    run_scenario(&r, &(struct scenario){.leaf = leaf, .host = "::1"});
    expect_ok(&r);
    cr_assert_null(SSL_get_servername(r.s.ssl, TLSEXT_NAMETYPE_host_name));
    run_free(&r);
}

Test(tls, ip_san_mismatch)
{
    struct run r;
    struct cg_spec leaf = {.cn = "db",
                           .san = "IP:127.0.0.2,DNS:db.example",
                           .not_before_days = -1,
                           .not_after_days = 90};
    run_scenario(&r, &(struct scenario){.leaf = leaf, .host = "127.0.0.1"});
    expect_failure(&r, DBT_TLS_HOSTNAME_MISMATCH);
    cr_assert_str_eq(r.detail, "certificate is for 127.0.0.2, db.example, not 127.0.0.1");
    run_free(&r);
}

Test(tls, ip_host_does_not_match_dns_san_of_same_text)
{
    struct run r;
    struct cg_spec leaf = {
        .cn = "db", .san = "DNS:127.0.0.1", .not_before_days = -1, .not_after_days = 90};
    run_scenario(&r, &(struct scenario){.leaf = leaf, .host = "127.0.0.1"});
    expect_failure(&r, DBT_TLS_HOSTNAME_MISMATCH);
    cr_assert_str_eq(r.detail, "certificate is for 127.0.0.1, not 127.0.0.1 (it is a DNS name "
                               "there; an address needs an IP SAN)");
    run_free(&r);
}

Test(tls, verify_ca_ignores_host_but_sends_sni)
{
    struct run r;
    struct cg_spec leaf = {.cn = "other.example",
                           .san = "DNS:other.example",
                           .not_before_days = -1,
                           .not_after_days = 90};
    run_scenario(&r,
                 &(struct scenario){.leaf = leaf, .host = "localhost", .verify = TLSW_VERIFY_CA});
    expect_ok(&r);
    cr_assert_str_eq(SSL_get_servername(r.s.ssl, TLSEXT_NAMETYPE_host_name), "localhost");
    run_free(&r);
}

Test(tls, verify_ca_still_checks_chain)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.leaf = CG_LEAF,
                                        .host = "localhost",
                                        .verify = TLSW_VERIFY_CA,
                                        .bundle = BUNDLE_OTHER_ROOT});
    expect_failure(&r, DBT_TLS_UNTRUSTED_CHAIN);
    run_free(&r);
}

Test(tls, tls11_server_refused)
{
    struct run r;
    run_scenario(
        &r, &(struct scenario){.leaf = CG_LEAF, .host = "localhost", .server_max = TLS1_1_VERSION});
    expect_failure(&r, DBT_TLS_HANDSHAKE_FAILED);
    /* The server answers a ClientHello offering only 1.2+ with a protocol_version alert. */
    cr_assert(strstr(r.detail, "protocol") != NULL, "%s", r.detail);
    run_free(&r);
}

Test(tls, min_tls13_refuses_tls12_server)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.leaf = CG_LEAF,
                                        .host = "localhost",
                                        .client_min = TLS1_3_VERSION,
                                        .server_max = TLS1_2_VERSION});
    expect_failure(&r, DBT_TLS_HANDSHAKE_FAILED);
    cr_assert(strstr(r.detail, "protocol version") != NULL, "%s", r.detail);
    run_free(&r);
}

Test(tls, tls12_server_accepted)
{
    struct run r;
    run_scenario(
        &r, &(struct scenario){.leaf = CG_LEAF, .host = "localhost", .server_max = TLS1_2_VERSION});
    expect_ok(&r);
    cr_assert_str_eq(tlsw_conn_version(r.c), "TLSv1.2");
    run_free(&r);
}

Test(tls, alpn_postgresql)
{
    struct run r;
    static const char alpn[] = "\x0apostgresql";
    run_scenario(
        &r, &(struct scenario){
                .leaf = CG_LEAF, .host = "localhost", .alpn = alpn, .alpn_len = sizeof(alpn) - 1});
    expect_ok(&r);
    cr_assert_str_eq(r.s.alpn, "postgresql");
    run_free(&r);
}

/* Direct TLS: the server selected what was offered. */
Test(tls, required_alpn_selected)
{
    struct run r;
    static const char alpn[] = "\x0apostgresql";
    run_scenario(&r, &(struct scenario){.leaf = CG_LEAF,
                                        .host = "localhost",
                                        .alpn = alpn,
                                        .alpn_len = sizeof(alpn) - 1,
                                        .require_alpn = true});
    expect_ok(&r);
    cr_assert_str_eq(r.s.alpn, "postgresql");
    run_free(&r);
}

/* A server that verifies but selects no ALPN (the test server only knows "postgresql"): not a
 * direct-TLS PostgreSQL server, refused after the handshake. Without the requirement the same
 * handshake passes. */
Test(tls, required_alpn_not_selected)
{
    struct run r;
    static const char alpn[] = "\x05other";
    struct scenario sc = {
        .leaf = CG_LEAF, .host = "localhost", .alpn = alpn, .alpn_len = sizeof(alpn) - 1};
    run_scenario(&r, &sc);
    expect_ok(&r);
    run_free(&r);
    sc.require_alpn = true;
    run_scenario(&r, &sc);
    expect_failure(&r, DBT_UPSTREAM_NO_DIRECT_TLS);
    cr_assert_str_eq(r.detail,
                     "the server completed the TLS handshake without selecting ALPN 'other'");
    run_free(&r);
}

/* A certificate failure is named first: the ALPN check runs only on a verified peer. */
Test(tls, required_alpn_after_verification)
{
    struct run r;
    static const char alpn[] = "\x05other";
    run_scenario(&r, &(struct scenario){.leaf = CG_LEAF,
                                        .host = "wrong.example.org",
                                        .alpn = alpn,
                                        .alpn_len = sizeof(alpn) - 1,
                                        .require_alpn = true});
    expect_failure(&r, DBT_TLS_HOSTNAME_MISMATCH);
    run_free(&r);
}

Test(tls, require_alpn_needs_an_offer)
{
    struct cg_pki p;
    struct tlsw_gen *g = gen_of_root(&p);
    struct tlsw_conn *c = tlsw_conn_new(g, "localhost", NULL, 0);
    cr_assert_not_null(c);
    cr_assert_eq(tlsw_conn_require_alpn(c), -1);
    tlsw_conn_free(c);
    tlsw_gen_unref(g);
    cg_pki_free(&p);
}

Test(tls, no_alpn_by_default)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.leaf = CG_LEAF, .host = "localhost"});
    expect_ok(&r);
    cr_assert_str_empty(r.s.alpn);
    run_free(&r);
}

Test(tls, plaintext_answer_is_wrong_version_number)
{
    struct cg_pki p;
    struct tlsw_gen *g = gen_of_root(&p);
    struct tlsw_conn *c = tlsw_conn_new(g, "localhost", NULL, 0);
    cr_assert_not_null(c);
    cr_assert_eq(tlsw_conn_handshake(c), TLSW_WANT_IO);
    cr_assert_gt(tlsw_conn_pending(c), 0, "ClientHello queued");
    /* A PostgreSQL ErrorResponse where a ServerHello should be. */
    static const char pg_error[] = "E\0\0\0\x20SFATAL\0C08P01\0Mnope\0\0";
    tlsw_conn_feed(c, (const uint8_t *)pg_error, sizeof(pg_error) - 1);
    cr_assert_eq(tlsw_conn_handshake(c), TLSW_ERROR);
    cr_assert_eq(tlsw_conn_handshake(c), TLSW_ERROR, "errors are sticky");
    char detail[256];
    cr_assert_eq(tlsw_conn_failure(c, detail, sizeof(detail)), DBT_TLS_HANDSHAKE_FAILED);
    cr_assert_str_eq(detail, "wrong version number");
    uint8_t buf[8];
    size_t n;
    cr_assert_eq(tlsw_conn_read(c, buf, sizeof(buf), &n), TLSW_ERROR);
    cr_assert_eq(tlsw_conn_write(c, buf, 1), TLSW_ERROR);
    tlsw_conn_shutdown(c); /* harmless after a failure */
    /* The detail survives other OpenSSL activity on this thread. */
    ERR_put_error(ERR_LIB_SSL, 0, SSL_R_BAD_LENGTH, __FILE__, __LINE__);
    cr_assert_eq(tlsw_conn_failure(c, detail, sizeof(detail)), DBT_TLS_HANDSHAKE_FAILED);
    cr_assert_str_eq(detail, "wrong version number");
    ERR_clear_error();
    tlsw_conn_free(c);
    tlsw_gen_unref(g);
    cg_pki_free(&p);
}

Test(tls, detail_is_truncated_safely)
{
    struct run r;
    struct cg_spec leaf = {.cn = "other.example",
                           .san = "DNS:other.example",
                           .not_before_days = -1,
                           .not_after_days = 90};
    run_scenario(&r, &(struct scenario){.leaf = leaf, .host = "localhost"});
    char small[12];
    cr_assert_eq(tlsw_conn_failure(r.c, small, sizeof(small)), DBT_TLS_HOSTNAME_MISMATCH);
    cr_assert_str_eq(small, "certificate");
    run_free(&r);
}

Test(tls, connection_outlives_generation_reference)
{
    struct cg_pki p;
    struct tlsw_gen *g = gen_of_root(&p);
    struct tlsw_conn *c = tlsw_conn_new(g, "localhost", NULL, 0);
    cr_assert_not_null(c);
    tlsw_gen_unref(g); /* a reload published a new generation: the connection keeps this one */
    X509 *chain[] = {p.inter.cert};
    struct server s;
    server_start(&s, &p.leaf, chain, 1, 0);
    cr_assert_eq(pump_handshake(c, &s), TLSW_OK);
    tlsw_conn_free(c); /* frees the generation */
    server_free(&s);
    cg_pki_free(&p);
}

Test(tls, conn_new_refuses_bad_input)
{
    struct cg_pki p;
    struct tlsw_gen *g = gen_of_root(&p);
    cr_assert_null(tlsw_conn_new(g, NULL, NULL, 0), "verify full needs a host");
    cr_assert_null(tlsw_conn_new(g, "", NULL, 0));
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    cr_assert_null(tlsw_conn_new(g, longname, NULL, 0));
    static const uint8_t bad_alpn[] = {5, 'a'}; /* length prefix past the end */
    cr_assert_null(tlsw_conn_new(g, "localhost", bad_alpn, sizeof(bad_alpn)));
    tlsw_gen_unref(g); /* the failed attempts must not have kept references (ASan/LSan) */
    cg_pki_free(&p);
}

/* ---- bundles -------------------------------------------------------------------------------- */

Test(tls, bundle_metadata)
{
    char path[256];
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    X509 *certs[] = {p.root.cert, p.inter.cert, p.leaf.cert};
    cr_assert_eq(cg_write_bundle(tmp_path(path, sizeof(path), "b.pem"), certs, 3), 0);
    struct tlsw_gen *g = load_ok(path, TLSW_VERIFY_FULL, TLS1_2_VERSION);
    cr_assert_eq(tlsw_gen_cert_count(g), 3);
    cr_assert_null(tlsw_gen_cert(g, 3));

    const struct tlsw_cert_info *root = tlsw_gen_cert(g, 0);
    cr_assert_str_eq(root->subject, "CN=Test Root,O=dbtrust test");
    cr_assert_str_eq(root->issuer, "CN=Test Root,O=dbtrust test");
    cr_assert(root->is_ca);
    cr_assert_eq(strlen(root->sha256), 64);
    cr_assert_eq(strspn(root->sha256, "0123456789abcdef"), 64);
    cr_assert_eq(strlen(root->spki_pin), 44);
    cr_assert_eq(root->spki_pin[43], '=');
    time_t now = time(NULL);
    cr_assert(root->not_before <= now && root->not_before > now - 11 * CG_DAY);
    cr_assert(root->not_after > now + 3649 * CG_DAY && root->not_after < now + 3651 * CG_DAY);

    /* The fingerprint is of the DER: compare with OpenSSL's own. */
    unsigned char md[32];
    unsigned int mdlen = 0;
    cr_assert_eq(X509_digest(p.root.cert, EVP_sha256(), md, &mdlen), 1);
    char hex[65];
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    cr_assert_str_eq(root->sha256, hex);

    cr_assert_str_eq(tlsw_gen_cert(g, 1)->subject, "CN=Test Intermediate,O=dbtrust test");
    cr_assert_str_eq(tlsw_gen_cert(g, 1)->issuer, "CN=Test Root,O=dbtrust test");
    cr_assert(tlsw_gen_cert(g, 1)->is_ca);
    /* A server certificate in a CA bundle loads (bundle inspect warns), flagged as non-CA. */
    cr_assert_not(tlsw_gen_cert(g, 2)->is_ca);
    cr_assert_str_neq(tlsw_gen_cert(g, 0)->spki_pin, tlsw_gen_cert(g, 1)->spki_pin);

    /* The bundle hash is over the file bytes. */
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    unsigned char buf[16384];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    cr_assert_eq(EVP_Digest(buf, n, md, &mdlen, EVP_sha256(), NULL), 1);
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    cr_assert_str_eq(tlsw_gen_sha256(g), hex);
    tlsw_gen_unref(g);
    cg_pki_free(&p);
}

Test(tls, bundle_same_content_same_hash)
{
    char a[256], b[256];
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    cr_assert_eq(cg_write_bundle(tmp_path(a, sizeof(a), "a.pem"), &p.root.cert, 1), 0);
    cr_assert_eq(cg_write_bundle(tmp_path(b, sizeof(b), "b.pem"), &p.root.cert, 1), 0);
    struct tlsw_gen *ga = load_ok(a, TLSW_VERIFY_FULL, 0);
    struct tlsw_gen *gb = load_ok(b, TLSW_VERIFY_FULL, 0);
    cr_assert_str_eq(tlsw_gen_sha256(ga), tlsw_gen_sha256(gb));
    X509 *two[] = {p.root.cert, p.other_root.cert};
    cr_assert_eq(cg_write_bundle(b, two, 2), 0);
    struct tlsw_gen *gc = load_ok(b, TLSW_VERIFY_FULL, 0);
    cr_assert_str_neq(tlsw_gen_sha256(ga), tlsw_gen_sha256(gc));
    tlsw_gen_unref(ga);
    tlsw_gen_unref(gb);
    tlsw_gen_unref(gc);
    cg_pki_free(&p);
}

Test(tls, bundle_duplicates_load)
{
    char path[256];
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    X509 *certs[] = {p.root.cert, p.root.cert};
    cr_assert_eq(cg_write_bundle(tmp_path(path, sizeof(path), "b.pem"), certs, 2), 0);
    struct tlsw_gen *g = load_ok(path, TLSW_VERIFY_FULL, 0);
    cr_assert_eq(tlsw_gen_cert_count(g), 2);
    tlsw_gen_unref(g);
    cg_pki_free(&p);
}

Test(tls, bundle_missing_file)
{
    char path[256], err[512];
    load_fail(tmp_path(path, sizeof(path), "nope.pem"), err, sizeof(err));
    cr_assert(strstr(err, "No such file or directory") != NULL, "%s", err);
    cr_assert(strstr(err, "nope.pem") != NULL, "%s", err);
}

Test(tls, bundle_directory)
{
    char err[512];
    load_fail(tmpdir, err, sizeof(err));
    cr_assert(strstr(err, "Is a directory") != NULL, "%s", err);
}

Test(tls, bundle_empty_file)
{
    char path[256], err[512];
    cr_assert_eq(cg_write_text(tmp_path(path, sizeof(path), "e.pem"), "", 0), 0);
    load_fail(path, err, sizeof(err));
    cr_assert(strstr(err, "no certificate in bundle") != NULL, "%s", err);
}

Test(tls, bundle_garbage_text)
{
    char path[256], err[512];
    static const char text[] = "this is not a bundle\n\x01\x02\xff binary too\n";
    cr_assert_eq(cg_write_text(tmp_path(path, sizeof(path), "g.pem"), text, sizeof(text) - 1), 0);
    load_fail(path, err, sizeof(err));
    cr_assert(strstr(err, "no certificate in bundle") != NULL, "%s", err);
}

Test(tls, bundle_broken_pem_block)
{
    char path[256], err[512];
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    /* One good certificate then a block whose DER is garbage: the whole bundle is refused. */
    cr_assert_eq(cg_write_bundle(tmp_path(path, sizeof(path), "g.pem"), &p.root.cert, 1), 0);
    FILE *f = fopen(path, "a");
    cr_assert_not_null(f);
    fputs("-----BEGIN CERTIFICATE-----\nTUlJQmdhcmJhZ2U=\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    load_fail(path, err, sizeof(err));
    cr_assert(strstr(err, "cannot parse") != NULL, "%s", err);
    cg_pki_free(&p);
}

Test(tls, bundle_key_only)
{
    char path[256], err[512];
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    FILE *f = fopen(tmp_path(path, sizeof(path), "k.pem"), "w");
    cr_assert_not_null(f);
    cr_assert_eq(PEM_write_PrivateKey(f, p.leaf.key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    load_fail(path, err, sizeof(err));
    cr_assert(strstr(err, "no certificate in bundle") != NULL, "%s", err);
    cg_pki_free(&p);
}

Test(tls, bundle_all_expired)
{
    char path[256], err[512];
    struct cg_cert a = {0}, b = {0};
    const struct cg_spec old = {
        .cn = "Old Root", .ca = true, .not_before_days = -400, .not_after_days = -30};
    cr_assert_eq(cg_issue(&a, &old, NULL), 0);
    cr_assert_eq(cg_issue(&b, &old, NULL), 0);
    X509 *certs[] = {a.cert, b.cert};
    cr_assert_eq(cg_write_bundle(tmp_path(path, sizeof(path), "x.pem"), certs, 2), 0);
    load_fail(path, err, sizeof(err));
    cr_assert(strstr(err, "all 2 certificates") != NULL, "%s", err);
    cr_assert(strstr(err, "expired") != NULL, "%s", err);

    /* One live root is enough: rotation bundles carry the old root until it is gone. */
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    X509 *mixed[] = {a.cert, p.root.cert};
    cr_assert_eq(cg_write_bundle(path, mixed, 2), 0);
    struct tlsw_gen *g = load_ok(path, TLSW_VERIFY_FULL, 0);
    cr_assert_eq(tlsw_gen_cert_count(g), 2);
    tlsw_gen_unref(g);
    cg_pki_free(&p);
    cg_free(&a);
    cg_free(&b);
}

Test(tls, bundle_bad_options)
{
    char path[256], err[512];
    struct cg_pki p;
    cr_assert_eq(cg_pki_make(&p, &CG_LEAF), 0);
    cr_assert_eq(cg_write_bundle(tmp_path(path, sizeof(path), "b.pem"), &p.root.cert, 1), 0);
    struct tlsw_gen *g = NULL;
    struct tlsw_gen_opts o = {.verify = TLSW_VERIFY_FULL, .min_tls_version = TLS1_1_VERSION};
    cr_assert_eq(tlsw_gen_load(path, &o, &g, err, sizeof(err)), -1);
    cr_assert_null(g);
    cr_assert(strstr(err, "unsupported minimum TLS version") != NULL, "%s", err);
    /* NULL options mean the defaults. */
    cr_assert_eq(tlsw_gen_load(path, NULL, &g, err, sizeof(err)), 0, "%s", err);
    tlsw_gen_unref(g);
    cg_pki_free(&p);
}

Test(tls, refcount_pairs)
{
    struct cg_pki p;
    struct tlsw_gen *g = gen_of_root(&p);
    for (int i = 0; i < 3; i++)
        tlsw_gen_ref(g);
    for (int i = 0; i < 3; i++)
        tlsw_gen_unref(g);
    cr_assert_eq(tlsw_gen_cert_count(g), 1, "still alive with the first reference");
    tlsw_gen_unref(g); /* the last: frees (LSan reports it otherwise) */
    tlsw_gen_unref(NULL);
    cg_pki_free(&p);
}

static int hammer(void *arg)
{
    struct tlsw_gen *g = arg;
    for (int i = 0; i < 20000; i++) {
        tlsw_gen_ref(g);
        tlsw_gen_unref(g);
    }
    tlsw_gen_unref(g); /* the reference the spawner took for this thread */
    return 0;
}

Test(tls, refcount_across_threads)
{
    struct cg_pki p;
    struct tlsw_gen *g = gen_of_root(&p);
    thrd_t t[4];
    for (int i = 0; i < 4; i++) {
        tlsw_gen_ref(g);
        cr_assert_eq(thrd_create(&t[i], hammer, g), thrd_success);
    }
    tlsw_gen_unref(g); /* the last thread to finish frees it */
    for (int i = 0; i < 4; i++)
        cr_assert_eq(thrd_join(t[i], NULL), thrd_success);
    cg_pki_free(&p);
}

Test(tls, ip_literals)
{
    cr_assert(tlsw_is_ip_literal("127.0.0.1"));
    cr_assert(tlsw_is_ip_literal("10.0.0.5"));
    cr_assert(tlsw_is_ip_literal("::1"));
    cr_assert(tlsw_is_ip_literal("2001:db8::5"));
    cr_assert_not(tlsw_is_ip_literal("localhost"));
    cr_assert_not(tlsw_is_ip_literal("db.example.com"));
    cr_assert_not(tlsw_is_ip_literal("1.2.3"));
    cr_assert_not(tlsw_is_ip_literal("[::1]"));
    cr_assert_not(tlsw_is_ip_literal("127.0.0.1 "));
    cr_assert_not(tlsw_is_ip_literal(""));
    cr_assert_not(tlsw_is_ip_literal(NULL));
}
