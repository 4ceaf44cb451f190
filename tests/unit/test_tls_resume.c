/* tls/: key-share preference (tlsw_conn_prefer_group, tlsw_conn_group), session resumption
 * (tlsw_conn_new_session, tlsw_conn_offer_session, tlsw_conn_resumed) and tlsw_conn_trim, with
 * the client engine joined in memory to OpenSSL servers whose SSL_CTX outlives one connection
 * (the ticket key is the context's), certificates generated at test time (tls_certgen.h). */
#include <criterion/criterion.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "test_util.h"
#include "tls_certgen.h"
#include "tlsw.h"

static void setup(void)
{
    tmpdir_make("tls-resume");
}

static void teardown(void)
{
    tmpdir_remove();
    leak_check();
}

TestSuite(tls_resume, .init = setup, .fini = teardown);

/* ---- certificates and generations ----------------------------------------------------------- */

/* The usual PKI, plus a second server certificate for localhost under the same intermediate
 * (another server: another key, another SSL_CTX, so another ticket key). */
struct fx {
    struct cg_pki pki;
    struct cg_cert leaf2;
    struct tlsw_gen *gen; /* trusts pki.root alone */
};

static struct tlsw_gen *load_gen(const char *path, const char *pins, int min_version)
{
    char err[512] = "";
    struct tlsw_gen *g = NULL;
    struct tlsw_gen_opts o = {
        .verify = TLSW_VERIFY_FULL, .min_tls_version = min_version, .pins = pins};
    cr_assert_eq(tlsw_gen_load(path, &o, &g, err, sizeof(err)), 0, "load %s: %s", path, err);
    cr_assert_not_null(g);
    return g;
}

/* The SPKI pin of x as the generation code computes it ("sha256/" not included). */
static void spki_pin_of(X509 *x, char *out, size_t cap)
{
    char path[256];
    cr_assert_eq(cg_write_bundle(tmp_path(path, sizeof(path), "pin.pem"), &x, 1), 0);
    struct tlsw_gen *g = load_gen(path, NULL, 0);
    cr_assert_eq(tlsw_gen_cert_count(g), 1);
    dbt_strlcpy(out, tlsw_gen_cert(g, 0)->spki_pin, cap);
    cr_assert_eq(strlen(out), 44);
    tlsw_gen_unref(g);
}

/* pin_leaf: the generation also pins the leaf's key (pki.leaf; leaf2 does not match). */
static void fx_make(struct fx *f, bool pin_leaf)
{
    char path[256], pin[64], pins[128] = "";
    memset(f, 0, sizeof(*f));
    cr_assert_eq(cg_pki_make(&f->pki, &CG_LEAF), 0);
    cr_assert_eq(cg_issue(&f->leaf2, &CG_LEAF, &f->pki.inter), 0);
    if (pin_leaf) {
        spki_pin_of(f->pki.leaf.cert, pin, sizeof(pin));
        snprintf(pins, sizeof(pins), "sha256/%s", pin);
    }
    cr_assert_eq(cg_write_bundle(tmp_path(path, sizeof(path), "b.pem"), &f->pki.root.cert, 1), 0);
    f->gen = load_gen(path, pin_leaf ? pins : NULL, 0);
}

static void fx_free(struct fx *f)
{
    tlsw_gen_unref(f->gen);
    cg_free(&f->leaf2);
    cg_pki_free(&f->pki);
}

/* ---- in-memory OpenSSL servers -------------------------------------------------------------- */

/* A server context presenting leaf + inter. groups: NULL (OpenSSL's defaults) or a list for
 * SSL_CTX_set1_groups_list. max_version: 0 (TLS 1.3) or a lower maximum. */
static SSL_CTX *sctx_new(const struct cg_cert *leaf, X509 *inter, const char *groups,
                         int max_version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    cr_assert_not_null(ctx);
    cr_assert_eq(SSL_CTX_use_certificate(ctx, leaf->cert), 1);
    cr_assert_eq(SSL_CTX_use_PrivateKey(ctx, leaf->key), 1);
    cr_assert_eq(SSL_CTX_add1_chain_cert(ctx, inter), 1);
    if (groups != NULL)
        cr_assert_eq(SSL_CTX_set1_groups_list(ctx, groups), 1);
    if (max_version != 0)
        cr_assert_eq(SSL_CTX_set_max_proto_version(ctx, max_version), 1);
    return ctx;
}

/* One server connection over memory BIOs, with the handshake messages it saw counted. */
struct server {
    SSL *ssl;
    BIO *in, *out; /* in: ciphertext from the client; out: ciphertext to it */
    bool done, failed;
    int client_hellos; /* received */
    int server_hellos; /* sent, HelloRetryRequests not included */
    int hrrs;          /* HelloRetryRequests sent */
};

/* RFC 8446 4.1.3: a HelloRetryRequest is a ServerHello with this random. */
static const unsigned char hrr_random[32] = {
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C};

static void on_msg(int write_p, int version, int content_type, const void *buf, size_t len,
                   SSL *ssl, void *arg)
{
    struct server *s = arg;
    const unsigned char *m = buf;
    if (content_type != SSL3_RT_HANDSHAKE || len < 1)
        return;
    if (!write_p && m[0] == SSL3_MT_CLIENT_HELLO)
        s->client_hellos++;
    /* type(1) length(3) legacy_version(2) random(32) */
    if (write_p && m[0] == SSL3_MT_SERVER_HELLO && len >= 38) {
        if (memcmp(m + 6, hrr_random, sizeof(hrr_random)) == 0)
            s->hrrs++;
        else
            s->server_hellos++;
    }
}

static void server_start(struct server *s, SSL_CTX *ctx)
{
    memset(s, 0, sizeof(*s));
    s->ssl = SSL_new(ctx);
    s->in = BIO_new(BIO_s_mem());
    s->out = BIO_new(BIO_s_mem());
    cr_assert(s->ssl && s->in && s->out);
    BIO_set_mem_eof_return(s->in, -1);
    SSL_set_bio(s->ssl, s->in, s->out);
    SSL_set_msg_callback(s->ssl, on_msg);
    SSL_set_msg_callback_arg(s->ssl, s);
    SSL_set_accept_state(s->ssl);
}

static void server_free(struct server *s)
{
    SSL_free(s->ssl);
}

#include "tls_pump.h"

/* ---- the client side ------------------------------------------------------------------------ */

#define NO_PREFER INT_MIN /* dial(): do not call tlsw_conn_prefer_group at all */

/* A client for localhost under g, with prefer (unless NO_PREFER) and offer (unless NULL) set
 * before the handshake, run against a new server connection of ctx. */
static struct tlsw_conn *dial(struct tlsw_gen *g, SSL_CTX *ctx, struct server *s, int prefer,
                              struct tlsw_session *offer, enum tlsw_status *st)
{
    struct tlsw_conn *c = tlsw_conn_new(g, "localhost", NULL, 0);
    cr_assert_not_null(c);
    if (prefer != NO_PREFER)
        tlsw_conn_prefer_group(c, prefer);
    if (offer != NULL)
        tlsw_conn_offer_session(c, offer);
    server_start(s, ctx);
    *st = pump_handshake(c, s);
    return c;
}

static void expect_ok(struct tlsw_conn *c, const struct server *s, enum tlsw_status st)
{
    char detail[512];
    enum dbt_reason r = tlsw_conn_failure(c, detail, sizeof(detail));
    cr_assert_eq(st, TLSW_OK, "handshake status %d: %s (%s)", st, dbt_reason_name(r), detail);
    cr_assert(s->done, "server handshake not done");
    cr_assert_eq(r, DBT_NONE);
    cr_assert_str_empty(detail);
    cr_assert_eq(tlsw_conn_pending(c), 0, "the client has nothing left to send");
}

/* A client that must verify, complete and resume (or not) against ctx. */
static struct tlsw_conn *dial_ok(struct tlsw_gen *g, SSL_CTX *ctx, struct server *s, int prefer,
                                 struct tlsw_session *offer)
{
    enum tlsw_status st;
    struct tlsw_conn *c = dial(g, ctx, s, prefer, offer, &st);
    expect_ok(c, s, st);
    return c;
}

/* Lets the engine process what the server sent after the handshake (TLS 1.3 tickets): no
 * application data may come out. */
static void drain_post_handshake(struct tlsw_conn *c, struct server *s)
{
    uint8_t buf[256];
    size_t n = 1;
    server_to_client(s, c);
    cr_assert_eq(tlsw_conn_read(c, buf, sizeof(buf), &n), TLSW_WANT_IO);
    cr_assert_eq(n, 0);
    client_to_server(c, s); /* nothing expected, but a real proxy flushes here */
}

/* A first, full connection to ctx and the session its ticket gave (asserted present). */
static struct tlsw_session *first_session(struct tlsw_gen *g, SSL_CTX *ctx, struct server *s,
                                          struct tlsw_conn **c)
{
    *c = dial_ok(g, ctx, s, NO_PREFER, NULL);
    drain_post_handshake(*c, s);
    struct tlsw_session *sess = tlsw_conn_new_session(*c);
    cr_assert_not_null(sess);
    return sess;
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

/* len bytes each way (pattern from seed), checked byte for byte on arrival. */
static void exchange(struct tlsw_conn *c, struct server *s, size_t len, unsigned seed)
{
    uint8_t *out = malloc(len), *in = malloc(len);
    cr_assert(out && in);
    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)(i * 31 + seed);

    cr_assert_eq(tlsw_conn_write(c, out, len), TLSW_OK);
    client_to_server(c, s);
    size_t got = 0, n = 0;
    while (got < len && SSL_read_ex(s->ssl, in + got, len - got, &n) == 1)
        got += n;
    cr_assert_eq(got, len, "server got %zu of %zu bytes", got, len);
    cr_assert_eq(memcmp(in, out, len), 0, "client -> server bytes differ");

    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)(i * 17 + seed + 1);
    cr_assert_eq(SSL_write_ex(s->ssl, out, len, &n), 1);
    cr_assert_eq(n, len);
    server_to_client(s, c);
    memset(in, 0, len);
    got = 0;
    while (got < len) {
        cr_assert_eq(read_some(c, in + got, len - got, &n), TLSW_OK, "after %zu bytes", got);
        got += n;
    }
    cr_assert_eq(memcmp(in, out, len), 0, "server -> client bytes differ");
    cr_assert_eq(tlsw_conn_read(c, in, len, &n), TLSW_WANT_IO);
    cr_assert_eq(n, 0);
    free(out);
    free(in);
}

/* The SHA-256 hex fingerprint of x, as tlsw_cert_info has it. */
static void fingerprint(X509 *x, char hex[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    cr_assert_eq(X509_digest(x, EVP_sha256(), md, &mdlen), 1);
    cr_assert_eq(mdlen, 32);
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* ---- key-share group preference ------------------------------------------------------------- */

/* "0 if unknown": also before the first handshake step, when OpenSSL has no session yet
 * (SSL_get_negotiated_group reads the session's group without a NULL check). */
Test(tls_resume, group_unknown_before_handshake)
{
    struct fx f;
    fx_make(&f, false);
    struct tlsw_conn *c = tlsw_conn_new(f.gen, "localhost", NULL, 0);
    cr_assert_not_null(c);
    cr_assert_eq(tlsw_conn_group(c), 0);
    tlsw_conn_prefer_group(c, NID_X9_62_prime256v1);
    cr_assert_eq(tlsw_conn_group(c), 0, "a preference is not a negotiated group");
    tlsw_conn_free(c);
    fx_free(&f);
}

/* PostgreSQL's default: P-256 only. OpenSSL's client offers an X25519 key share first, so the
 * first connection costs a HelloRetryRequest; the next one, told the group, does not. */
Test(tls_resume, p256_server_hrr_then_preferred_group_avoids_it)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, "P-256", 0);

    struct server s1;
    struct tlsw_conn *c1 = dial_ok(f.gen, ctx, &s1, NO_PREFER, NULL);
    cr_assert_str_eq(tlsw_conn_version(c1), "TLSv1.3");
    cr_assert_eq(s1.client_hellos, 2, "ClientHello, HelloRetryRequest, ClientHello");
    cr_assert_eq(s1.hrrs, 1);
    cr_assert_eq(s1.server_hellos, 1);
    cr_assert_eq(SSL_get_negotiated_group(s1.ssl), NID_X9_62_prime256v1);
    int learned = tlsw_conn_group(c1);
    cr_assert_eq(learned, NID_X9_62_prime256v1, "group %d (%s)", learned, OBJ_nid2sn(learned));

    struct server s2;
    struct tlsw_conn *c2 = dial_ok(f.gen, ctx, &s2, learned, NULL);
    cr_assert_eq(s2.client_hellos, 1, "no HelloRetryRequest with the preferred group");
    cr_assert_eq(s2.hrrs, 0);
    cr_assert_eq(s2.server_hellos, 1);
    cr_assert_eq(tlsw_conn_group(c2), NID_X9_62_prime256v1);
    cr_assert_eq(SSL_get_negotiated_group(s2.ssl), NID_X9_62_prime256v1);
    exchange(c2, &s2, 1000, 3); /* and the connection carries data */

    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    server_free(&s1);
    server_free(&s2);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* 0 keeps OpenSSL's order: X25519 first (an HRR against P-256 only, none against defaults). */
Test(tls_resume, prefer_zero_changes_nothing)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *p256 = sctx_new(&f.pki.leaf, f.pki.inter.cert, "P-256", 0);
    SSL_CTX *dflt = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);

    struct server s1;
    struct tlsw_conn *c1 = dial_ok(f.gen, p256, &s1, 0, NULL);
    cr_assert_eq(s1.client_hellos, 2);
    cr_assert_eq(s1.hrrs, 1);
    cr_assert_eq(tlsw_conn_group(c1), NID_X9_62_prime256v1);

    struct server s2;
    struct tlsw_conn *c2 = dial_ok(f.gen, dflt, &s2, 0, NULL);
    cr_assert_eq(s2.client_hellos, 1);
    cr_assert_eq(s2.hrrs, 0);
    cr_assert_eq(tlsw_conn_group(c2), NID_X25519, "group %s", OBJ_nid2sn(tlsw_conn_group(c2)));

    /* Preferring what is first anyway is the same. */
    struct server s3;
    struct tlsw_conn *c3 = dial_ok(f.gen, dflt, &s3, NID_X25519, NULL);
    cr_assert_eq(s3.client_hellos, 1);
    cr_assert_eq(tlsw_conn_group(c3), NID_X25519);

    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    tlsw_conn_free(c3);
    server_free(&s1);
    server_free(&s2);
    server_free(&s3);
    SSL_CTX_free(p256);
    SSL_CTX_free(dflt);
    fx_free(&f);
}

/* The preference decides the key share, also against a server that would take X25519. */
Test(tls_resume, preferred_group_is_the_key_share)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *dflt = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    static const int nids[] = {NID_X9_62_prime256v1, NID_secp384r1, NID_secp521r1, NID_X448};
    for (size_t i = 0; i < DBT_ARRAY_LEN(nids); i++) {
        struct server s;
        struct tlsw_conn *c = dial_ok(f.gen, dflt, &s, nids[i], NULL);
        cr_assert_eq(tlsw_conn_group(c), nids[i], "want %s, got %s", OBJ_nid2sn(nids[i]),
                     OBJ_nid2sn(tlsw_conn_group(c)));
        cr_assert_eq(SSL_get_negotiated_group(s.ssl), nids[i]);
        cr_assert_eq(s.client_hellos, 1, "%s", OBJ_nid2sn(nids[i]));
        cr_assert_eq(s.hrrs, 0);
        tlsw_conn_free(c);
        server_free(&s);
    }
    SSL_CTX_free(dflt);
    fx_free(&f);
}

/* The other groups stay offered: a server that takes only a group further down the list is
 * still reached (through an HRR). */
Test(tls_resume, preferred_group_keeps_the_others)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *p384 = sctx_new(&f.pki.leaf, f.pki.inter.cert, "P-384", 0);
    struct server s;
    struct tlsw_conn *c = dial_ok(f.gen, p384, &s, NID_X9_62_prime256v1, NULL);
    cr_assert_eq(tlsw_conn_group(c), NID_secp384r1);
    cr_assert_eq(s.client_hellos, 2);
    cr_assert_eq(s.hrrs, 1);
    tlsw_conn_free(c);
    server_free(&s);
    SSL_CTX_free(p384);
    fx_free(&f);
}

/* A NID that is no group (or one OpenSSL does not know) keeps OpenSSL's list. */
Test(tls_resume, invalid_group_nid_does_not_break_the_handshake)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *p256 = sctx_new(&f.pki.leaf, f.pki.inter.cert, "P-256", 0);
    SSL_CTX *dflt = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    static const int nids[] = {NID_sha256,        999999, -1, INT_MAX, NID_rsaEncryption,
                               0x1000000 | 0x1234 /* TLSEXT_nid_unknown | a private id */};
    for (size_t i = 0; i < DBT_ARRAY_LEN(nids); i++) {
        struct server s1, s2;
        struct tlsw_conn *c1 = dial_ok(f.gen, p256, &s1, nids[i], NULL);
        cr_assert_eq(tlsw_conn_group(c1), NID_X9_62_prime256v1, "nid %d", nids[i]);
        cr_assert_eq(s1.client_hellos, 2, "nid %d: OpenSSL's order (X25519 first) kept", nids[i]);
        struct tlsw_conn *c2 = dial_ok(f.gen, dflt, &s2, nids[i], NULL);
        cr_assert_eq(tlsw_conn_group(c2), NID_X25519, "nid %d", nids[i]);
        cr_assert_eq(s2.client_hellos, 1, "nid %d", nids[i]);
        cr_assert_eq(ERR_peek_error(), 0, "nid %d left an OpenSSL error queued", nids[i]);
        tlsw_conn_free(c1);
        tlsw_conn_free(c2);
        server_free(&s1);
        server_free(&s2);
    }
    SSL_CTX_free(p256);
    SSL_CTX_free(dflt);
    fx_free(&f);
}

/* A real group that TLS 1.3 cannot use as a key share (brainpool is TLS 1.2-only in OpenSSL
 * 3.0) must not break the handshake either. */
Test(tls_resume, group_unusable_in_tls13_does_not_break_the_handshake)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *p256 = sctx_new(&f.pki.leaf, f.pki.inter.cert, "P-256", 0);
    struct server s;
    struct tlsw_conn *c = dial_ok(f.gen, p256, &s, NID_brainpoolP256r1, NULL);
    cr_assert_eq(tlsw_conn_group(c), NID_X9_62_prime256v1);
    tlsw_conn_free(c);
    server_free(&s);
    SSL_CTX_free(p256);
    fx_free(&f);
}

/* TLS 1.2: the server picks from the client's list in the client's order, so the preference
 * moves the choice there too, and tlsw_conn_group reports it. */
Test(tls_resume, group_with_a_tls12_server)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, TLS1_2_VERSION);
    struct server s1, s2;
    struct tlsw_conn *c1 = dial_ok(f.gen, ctx, &s1, NO_PREFER, NULL);
    cr_assert_str_eq(tlsw_conn_version(c1), "TLSv1.2");
    cr_assert_eq(tlsw_conn_group(c1), NID_X25519, "group %s", OBJ_nid2sn(tlsw_conn_group(c1)));
    struct tlsw_conn *c2 = dial_ok(f.gen, ctx, &s2, NID_secp384r1, NULL);
    cr_assert_str_eq(tlsw_conn_version(c2), "TLSv1.2");
    cr_assert_eq(tlsw_conn_group(c2), NID_secp384r1, "group %s", OBJ_nid2sn(tlsw_conn_group(c2)));
    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    server_free(&s1);
    server_free(&s2);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* ---- resumption ----------------------------------------------------------------------------- */

Test(tls_resume, tls13_ticket_resumes)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);

    struct server s1;
    struct tlsw_conn *c1 = dial_ok(f.gen, ctx, &s1, NO_PREFER, NULL);
    cr_assert_str_eq(tlsw_conn_version(c1), "TLSv1.3");
    cr_assert_not(tlsw_conn_resumed(c1));
    /* TLS 1.3: nothing to resume until a ticket has been processed. */
    cr_assert_null(tlsw_conn_new_session(c1), "no ticket read yet");
    drain_post_handshake(c1, &s1);
    struct tlsw_session *sess = tlsw_conn_new_session(c1);
    cr_assert_not_null(sess, "the server's tickets were read");
    cr_assert_null(tlsw_conn_new_session(c1), "no ticket since the last call");
    cr_assert_null(tlsw_conn_new_session(c1));

    struct server s2;
    struct tlsw_conn *c2 = dial_ok(f.gen, ctx, &s2, NO_PREFER, sess);
    cr_assert(tlsw_conn_resumed(c2), "offered session not resumed");
    cr_assert_eq(SSL_session_reused(s2.ssl), 1, "the server did not resume either");
    cr_assert_str_eq(tlsw_conn_version(c2), "TLSv1.3");
    cr_assert_neq(tlsw_conn_group(c2), 0, "psk_dhe_ke still negotiates a group");
    drain_post_handshake(c2, &s2);
    exchange(c2, &s2, 5000, 9);

    /* No session offered: a full handshake on the same server. */
    struct server s3;
    struct tlsw_conn *c3 = dial_ok(f.gen, ctx, &s3, NO_PREFER, NULL);
    cr_assert_not(tlsw_conn_resumed(c3));
    cr_assert_eq(SSL_session_reused(s3.ssl), 0);
    exchange(c3, &s3, 50, 8);

    tlsw_session_free(sess);
    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    tlsw_conn_free(c3);
    server_free(&s1);
    server_free(&s2);
    server_free(&s3);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* OpenSSL's client uses a TLS 1.3 ticket once (RFC 8446 C.4): offered again after it resumed,
 * the session is declined and a full, verified handshake follows. The resumed connection's own
 * tickets are what to keep. */
Test(tls_resume, tls13_session_resumes_once)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    struct server s1, s2, s3;
    struct tlsw_conn *c1;
    struct tlsw_session *sess = first_session(f.gen, ctx, &s1, &c1);
    struct tlsw_conn *c2 = dial_ok(f.gen, ctx, &s2, NO_PREFER, sess);
    cr_assert(tlsw_conn_resumed(c2));
    struct tlsw_conn *c3 = dial_ok(f.gen, ctx, &s3, NO_PREFER, sess);
    cr_assert_not(tlsw_conn_resumed(c3), "a TLS 1.3 ticket is used once");
    cr_assert_eq(tlsw_conn_peer_chain(c3, (struct tlsw_cert_info[4]){0}, 4), 3, "full verify");
    exchange(c3, &s3, 10, 6);
    tlsw_session_free(sess);
    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    tlsw_conn_free(c3);
    server_free(&s1);
    server_free(&s2);
    server_free(&s3);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* The proxy keeps the session after its connection is gone. Ending the connection with our
 * close_notify first keeps it resumable. */
Test(tls_resume, session_survives_its_connection_after_shutdown)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    struct server s1, s2;
    struct tlsw_conn *c1;
    struct tlsw_session *sess = first_session(f.gen, ctx, &s1, &c1);
    tlsw_conn_shutdown(c1);
    client_to_server(c1, &s1);
    tlsw_conn_free(c1);
    server_free(&s1);

    struct tlsw_conn *c2 = dial_ok(f.gen, ctx, &s2, NO_PREFER, sess);
    cr_assert(tlsw_conn_resumed(c2));
    tlsw_session_free(sess);
    tlsw_conn_free(c2);
    server_free(&s2);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* ...and so must any other end: the upstream closing first (its close_notify, the proxy's
 * relay EOF path), a timeout, an error. The session's reference is the caller's; nothing in
 * tlsw.h ties its validity to how the connection ended. */
Test(tls_resume, session_survives_its_connection_without_shutdown)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    struct server s1, s2, s3, s4;

    /* Freed as it is. */
    struct tlsw_conn *c1;
    struct tlsw_session *sess = first_session(f.gen, ctx, &s1, &c1);
    tlsw_conn_free(c1);
    struct tlsw_conn *c2 = dial_ok(f.gen, ctx, &s2, NO_PREFER, sess);
    cr_expect(tlsw_conn_resumed(c2), "session not resumed after tlsw_conn_free without shutdown");
    tlsw_session_free(sess);

    /* The server closed first. */
    struct tlsw_conn *c3 = dial_ok(f.gen, ctx, &s3, NO_PREFER, NULL);
    drain_post_handshake(c3, &s3);
    sess = tlsw_conn_new_session(c3);
    cr_assert_not_null(sess);
    cr_assert_geq(SSL_shutdown(s3.ssl), 0);
    server_to_client(&s3, c3);
    uint8_t buf[16];
    size_t n;
    cr_assert_eq(tlsw_conn_read(c3, buf, sizeof(buf), &n), TLSW_CLOSED);
    tlsw_conn_free(c3);
    struct tlsw_conn *c4 = dial_ok(f.gen, ctx, &s4, NO_PREFER, sess);
    cr_expect(tlsw_conn_resumed(c4), "session not resumed after the server closed first");
    tlsw_session_free(sess);

    tlsw_conn_free(c2);
    tlsw_conn_free(c4);
    server_free(&s1);
    server_free(&s2);
    server_free(&s3);
    server_free(&s4);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* A resumed connection gets fresh tickets; the session it yields is a new one that resumes. */
Test(tls_resume, resumed_connection_yields_a_new_session)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);

    struct server s1;
    struct tlsw_conn *c1;
    struct tlsw_session *first = first_session(f.gen, ctx, &s1, &c1);

    struct server s2;
    struct tlsw_conn *c2 = dial_ok(f.gen, ctx, &s2, NO_PREFER, first);
    cr_assert(tlsw_conn_resumed(c2));
    drain_post_handshake(c2, &s2);
    struct tlsw_session *second = tlsw_conn_new_session(c2);
    cr_assert_not_null(second, "the resumed connection's tickets");
    cr_assert_neq((void *)second, (void *)first, "a new ticket is a new session");
    cr_assert_null(tlsw_conn_new_session(c2));
    tlsw_session_free(first);

    struct server s3;
    struct tlsw_conn *c3 = dial_ok(f.gen, ctx, &s3, NO_PREFER, second);
    cr_assert(tlsw_conn_resumed(c3));
    tlsw_session_free(second);

    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    tlsw_conn_free(c3);
    server_free(&s1);
    server_free(&s2);
    server_free(&s3);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* A ticket sent later in the connection's life is a new session again. */
Test(tls_resume, later_ticket_is_a_new_session)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    struct server s;
    struct tlsw_conn *c;
    struct tlsw_session *a = first_session(f.gen, ctx, &s, &c);
    cr_assert_null(tlsw_conn_new_session(c));

    cr_assert_eq(SSL_new_session_ticket(s.ssl), 1);
    cr_assert_eq(SSL_do_handshake(s.ssl), 1, "sends the ticket");
    drain_post_handshake(c, &s);
    struct tlsw_session *b = tlsw_conn_new_session(c);
    cr_assert_not_null(b, "a ticket arrived since the last call");
    cr_assert_neq((void *)a, (void *)b);
    cr_assert_null(tlsw_conn_new_session(c));
    exchange(c, &s, 100, 1); /* a ticket in the middle of the stream is invisible to data */

    struct server s2;
    struct tlsw_conn *c2 = dial_ok(f.gen, ctx, &s2, NO_PREFER, b);
    cr_assert(tlsw_conn_resumed(c2));

    tlsw_session_free(a);
    tlsw_session_free(b);
    tlsw_conn_free(c);
    tlsw_conn_free(c2);
    server_free(&s);
    server_free(&s2);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* The session last returned, freed by the caller (the proxy's per-worker cache drops it when
 * another connection brings a newer one), then two tickets read in one pass: the connection's
 * session is replaced twice, and the second replacement may be allocated where the freed one
 * was. It is still a new session. (Under ASan freed memory is quarantined, not reused, so this
 * can only fail in a build without it.) */
Test(tls_resume, ticket_after_returned_session_was_freed)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    struct server s;
    struct tlsw_conn *c;
    struct tlsw_session *a = first_session(f.gen, ctx, &s, &c);
    tlsw_session_free(a); /* e.g. the worker's cache replaced it with another connection's */

    for (int round = 0; round < 3; round++) {
        /* Two tickets read in one go: the connection's session is replaced twice. */
        cr_assert_eq(SSL_new_session_ticket(s.ssl), 1);
        cr_assert_eq(SSL_new_session_ticket(s.ssl), 1);
        cr_assert_eq(SSL_do_handshake(s.ssl), 1);
        drain_post_handshake(c, &s);
        struct tlsw_session *b = tlsw_conn_new_session(c);
        cr_expect_not_null(b, "round %d: two tickets arrived since the last call", round);
        cr_assert_null(tlsw_conn_new_session(c));
        tlsw_session_free(b);
    }
    tlsw_conn_free(c);
    server_free(&s);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* Pins are checked on a full handshake; a resumed session was pin-checked when it was made. */
Test(tls_resume, pinned_generation_resumes)
{
    struct fx f;
    fx_make(&f, true);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);

    struct server s1;
    struct tlsw_conn *c1 = dial_ok(f.gen, ctx, &s1, NO_PREFER, NULL);
    cr_assert_not(tlsw_conn_resumed(c1));
    drain_post_handshake(c1, &s1);
    struct tlsw_session *sess = tlsw_conn_new_session(c1);
    cr_assert_not_null(sess);

    struct server s2;
    struct tlsw_conn *c2 = dial_ok(f.gen, ctx, &s2, NO_PREFER, sess);
    cr_assert(tlsw_conn_resumed(c2), "a pinned generation must still resume");
    exchange(c2, &s2, 64, 5);

    /* The pins are really enforced on a full handshake with this generation: leaf2 (same CA,
     * another key) is refused, also when it is offered the session of the pinned server. */
    SSL_CTX *other = sctx_new(&f.leaf2, f.pki.inter.cert, NULL, 0);
    struct server s3;
    enum tlsw_status st;
    struct tlsw_conn *c3 = dial(f.gen, other, &s3, NO_PREFER, sess, &st);
    cr_assert_eq(st, TLSW_ERROR, "a different key under a pin must fail, status %d", st);
    cr_assert_not(tlsw_conn_resumed(c3));
    char detail[512];
    cr_assert_eq(tlsw_conn_failure(c3, detail, sizeof(detail)), DBT_TLS_PIN_MISMATCH, "%s", detail);
    cr_assert_null(tlsw_conn_new_session(c3), "nothing to keep from a failed connection");

    tlsw_session_free(sess);
    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    tlsw_conn_free(c3);
    server_free(&s1);
    server_free(&s2);
    server_free(&s3);
    SSL_CTX_free(ctx);
    SSL_CTX_free(other);
    fx_free(&f);
}

/* Another server (another key, another ticket key) cannot decrypt the ticket: a full, verified
 * handshake follows, which shows that server's certificate. */
Test(tls_resume, session_from_another_server_falls_back_to_full_handshake)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *a = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    SSL_CTX *b = sctx_new(&f.leaf2, f.pki.inter.cert, NULL, 0);

    struct server s1;
    struct tlsw_conn *c1;
    struct tlsw_session *sess = first_session(f.gen, a, &s1, &c1);

    struct server s2;
    struct tlsw_conn *c2 = dial_ok(f.gen, b, &s2, NO_PREFER, sess);
    cr_assert_not(tlsw_conn_resumed(c2), "a foreign ticket cannot resume");
    cr_assert_eq(SSL_session_reused(s2.ssl), 0);
    struct tlsw_cert_info chain[4];
    cr_assert_eq(tlsw_conn_peer_chain(c2, chain, 4), 3, "a verified chain: leaf, inter, root");
    char want[65];
    fingerprint(f.leaf2.cert, want);
    cr_assert_str_eq(chain[0].sha256, want, "the new server's certificate was verified");
    exchange(c2, &s2, 300, 7);
    /* And the full handshake's tickets give a session for server b. */
    drain_post_handshake(c2, &s2);
    struct tlsw_session *sess_b = tlsw_conn_new_session(c2);
    cr_assert_not_null(sess_b);
    struct server s3;
    struct tlsw_conn *c3 = dial_ok(f.gen, b, &s3, NO_PREFER, sess_b);
    cr_assert(tlsw_conn_resumed(c3));

    tlsw_session_free(sess);
    tlsw_session_free(sess_b);
    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    tlsw_conn_free(c3);
    server_free(&s1);
    server_free(&s2);
    server_free(&s3);
    SSL_CTX_free(a);
    SSL_CTX_free(b);
    fx_free(&f);
}

/* A TLS 1.3 session offered to a server that stops at TLS 1.2: a full TLS 1.2 handshake. */
Test(tls_resume, tls13_session_to_tls12_server_falls_back)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *v13 = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    SSL_CTX *v12 = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, TLS1_2_VERSION);
    struct server s1;
    struct tlsw_conn *c1;
    struct tlsw_session *sess = first_session(f.gen, v13, &s1, &c1);

    struct server s2;
    struct tlsw_conn *c2 = dial_ok(f.gen, v12, &s2, NO_PREFER, sess);
    cr_assert_str_eq(tlsw_conn_version(c2), "TLSv1.2");
    cr_assert_not(tlsw_conn_resumed(c2));
    exchange(c2, &s2, 100, 2);

    tlsw_session_free(sess);
    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    server_free(&s1);
    server_free(&s2);
    SSL_CTX_free(v13);
    SSL_CTX_free(v12);
    fx_free(&f);
}

/* TLS 1.2: the session is resumable when the handshake completes (ticket inside it). */
Test(tls_resume, tls12_session_resumes)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, TLS1_2_VERSION);
    struct server s1;
    struct tlsw_conn *c1 = dial_ok(f.gen, ctx, &s1, NO_PREFER, NULL);
    cr_assert_str_eq(tlsw_conn_version(c1), "TLSv1.2");
    struct tlsw_session *sess = tlsw_conn_new_session(c1);
    cr_assert_not_null(sess, "resumable right after a TLS 1.2 handshake");
    cr_assert_null(tlsw_conn_new_session(c1));
    drain_post_handshake(c1, &s1);
    cr_assert_null(tlsw_conn_new_session(c1), "nothing new after the handshake");

    struct server s2;
    struct tlsw_conn *c2 = dial_ok(f.gen, ctx, &s2, NO_PREFER, sess);
    cr_assert(tlsw_conn_resumed(c2));
    cr_assert_eq(SSL_session_reused(s2.ssl), 1);
    cr_assert_str_eq(tlsw_conn_version(c2), "TLSv1.2");
    exchange(c2, &s2, 2000, 4);

    tlsw_session_free(sess);
    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    server_free(&s1);
    server_free(&s2);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* What the proxy does on its second connection to a P-256-only upstream: group and session
 * together, in one round trip. */
Test(tls_resume, preferred_group_and_session_together)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, "P-256", 0);
    struct server s1;
    struct tlsw_conn *c1 = dial_ok(f.gen, ctx, &s1, NO_PREFER, NULL);
    cr_assert_eq(s1.hrrs, 1);
    int group = tlsw_conn_group(c1);
    drain_post_handshake(c1, &s1);
    struct tlsw_session *sess = tlsw_conn_new_session(c1);
    cr_assert_not_null(sess);

    struct server s2;
    struct tlsw_conn *c2 = dial_ok(f.gen, ctx, &s2, group, sess);
    cr_assert(tlsw_conn_resumed(c2));
    cr_assert_eq(s2.client_hellos, 1);
    cr_assert_eq(s2.hrrs, 0);
    cr_assert_eq(tlsw_conn_group(c2), NID_X9_62_prime256v1);

    /* Without the group, resumption still works, after an HRR (with a fresh session: a TLS
     * 1.3 one resumes once). */
    drain_post_handshake(c2, &s2);
    struct tlsw_session *sess2 = tlsw_conn_new_session(c2);
    cr_assert_not_null(sess2);
    struct server s3;
    struct tlsw_conn *c3 = dial_ok(f.gen, ctx, &s3, NO_PREFER, sess2);
    cr_assert(tlsw_conn_resumed(c3));
    cr_assert_eq(s3.client_hellos, 2);
    cr_assert_eq(s3.hrrs, 1);
    cr_assert_eq(tlsw_conn_group(c3), NID_X9_62_prime256v1);

    tlsw_session_free(sess);
    tlsw_session_free(sess2);
    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    tlsw_conn_free(c3);
    server_free(&s1);
    server_free(&s2);
    server_free(&s3);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

Test(tls_resume, no_session_before_handshake_or_after_failure)
{
    struct fx f;
    fx_make(&f, false);
    struct tlsw_conn *c = tlsw_conn_new(f.gen, "localhost", NULL, 0);
    cr_assert_not_null(c);
    cr_assert_null(tlsw_conn_new_session(c));
    cr_assert_not(tlsw_conn_resumed(c));
    tlsw_conn_offer_session(c, NULL); /* harmless */
    cr_assert_eq(tlsw_conn_handshake(c), TLSW_WANT_IO);
    cr_assert_null(tlsw_conn_new_session(c), "mid-handshake");
    static const char junk[] = "E\0\0\0\x20SFATAL\0C08P01\0Mnope\0\0";
    tlsw_conn_feed(c, (const uint8_t *)junk, sizeof(junk) - 1);
    cr_assert_eq(tlsw_conn_handshake(c), TLSW_ERROR);
    cr_assert_null(tlsw_conn_new_session(c));
    cr_assert_not(tlsw_conn_resumed(c));
    tlsw_session_free(NULL); /* like free(NULL) */
    tlsw_conn_free(c);

    /* A NULL offer is a full handshake. */
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    struct server s;
    c = dial_ok(f.gen, ctx, &s, NO_PREFER, NULL);
    cr_assert_not(tlsw_conn_resumed(c));
    tlsw_conn_free(c);
    server_free(&s);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* ---- trim ----------------------------------------------------------------------------------- */

Test(tls_resume, trim_after_handshake_keeps_the_connection_working)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    struct server s;
    struct tlsw_conn *c = dial_ok(f.gen, ctx, &s, NO_PREFER, NULL);
    drain_post_handshake(c, &s); /* both BIOs empty now */
    cr_assert_eq(tlsw_conn_pending(c), 0);
    tlsw_conn_trim(c);
    cr_assert_eq(tlsw_conn_pending(c), 0);
    exchange(c, &s, 100 * 1024, 11); /* regrows both BIOs */
    tlsw_conn_trim(c);
    tlsw_conn_trim(c); /* twice in a row: nothing to do the second time */
    exchange(c, &s, 10, 12);
    tlsw_conn_trim(c);

    /* Later tickets and close_notify still arrive through the new input BIO. */
    cr_assert_eq(SSL_new_session_ticket(s.ssl), 1);
    cr_assert_eq(SSL_do_handshake(s.ssl), 1);
    drain_post_handshake(c, &s);
    struct tlsw_session *sess = tlsw_conn_new_session(c);
    cr_assert_not_null(sess);
    tlsw_session_free(sess);
    cr_assert_geq(SSL_shutdown(s.ssl), 0);
    server_to_client(&s, c);
    uint8_t buf[16];
    size_t n;
    cr_assert_eq(tlsw_conn_read(c, buf, sizeof(buf), &n), TLSW_CLOSED);
    /* ...and our close_notify leaves through the new output BIO. */
    tlsw_conn_shutdown(c);
    cr_assert_gt(tlsw_conn_pending(c), 0);
    client_to_server(c, &s);
    ERR_clear_error();
    cr_assert_eq(SSL_read_ex(s.ssl, buf, sizeof(buf), &n), 0);
    cr_assert_eq(SSL_get_error(s.ssl, 0), SSL_ERROR_ZERO_RETURN);
    ERR_clear_error();

    tlsw_conn_free(c);
    server_free(&s);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* Not idle: bytes waiting in either BIO must survive a trim. */
Test(tls_resume, trim_keeps_pending_ciphertext)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *ctx = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    struct server s;
    struct tlsw_conn *c = dial_ok(f.gen, ctx, &s, NO_PREFER, NULL);
    drain_post_handshake(c, &s);
    exchange(c, &s, 40000, 21);

    /* Input not yet decrypted. */
    size_t n = 0;
    cr_assert_eq(SSL_write_ex(s.ssl, "from server", 11, &n), 1);
    server_to_client(&s, c);
    tlsw_conn_trim(c);
    uint8_t buf[64];
    cr_assert_eq(read_some(c, buf, sizeof(buf), &n), TLSW_OK);
    cr_assert_eq(n, 11);
    cr_assert_eq(memcmp(buf, "from server", 11), 0);

    /* Output not yet taken. */
    cr_assert_eq(tlsw_conn_write(c, (const uint8_t *)"from client", 11), TLSW_OK);
    size_t pending = tlsw_conn_pending(c);
    cr_assert_gt(pending, 11);
    tlsw_conn_trim(c);
    cr_assert_eq(tlsw_conn_pending(c), pending);
    client_to_server(c, &s);
    char sbuf[64];
    cr_assert_eq(SSL_read_ex(s.ssl, sbuf, sizeof(sbuf), &n), 1);
    cr_assert_eq(n, 11);
    cr_assert_eq(memcmp(sbuf, "from client", 11), 0);

    /* Half a record in the input BIO: trim must not drop it either. */
    cr_assert_eq(SSL_write_ex(s.ssl, "split record", 12, &n), 1);
    uint8_t rec[256];
    int rl = BIO_read(s.out, rec, sizeof(rec));
    cr_assert_gt(rl, 10);
    tlsw_conn_feed(c, rec, 5);
    cr_assert_eq(tlsw_conn_read(c, buf, sizeof(buf), &n), TLSW_WANT_IO);
    tlsw_conn_trim(c);
    tlsw_conn_feed(c, rec + 5, (size_t)rl - 5);
    cr_assert_eq(read_some(c, buf, sizeof(buf), &n), TLSW_OK);
    cr_assert_eq(n, 12);
    cr_assert_eq(memcmp(buf, "split record", 12), 0);

    tlsw_conn_free(c);
    server_free(&s);
    SSL_CTX_free(ctx);
    fx_free(&f);
}

/* Trim on resumed and TLS 1.2 connections too. */
Test(tls_resume, trim_on_resumed_and_tls12_connections)
{
    struct fx f;
    fx_make(&f, false);
    SSL_CTX *v13 = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, 0);
    SSL_CTX *v12 = sctx_new(&f.pki.leaf, f.pki.inter.cert, NULL, TLS1_2_VERSION);

    struct server s1;
    struct tlsw_conn *c1;
    struct tlsw_session *sess = first_session(f.gen, v13, &s1, &c1);
    struct server s2;
    struct tlsw_conn *c2 = dial_ok(f.gen, v13, &s2, NO_PREFER, sess);
    cr_assert(tlsw_conn_resumed(c2));
    drain_post_handshake(c2, &s2);
    tlsw_conn_trim(c2);
    exchange(c2, &s2, 20000, 31);

    struct server s3;
    struct tlsw_conn *c3 = dial_ok(f.gen, v12, &s3, NO_PREFER, NULL);
    drain_post_handshake(c3, &s3);
    tlsw_conn_trim(c3);
    exchange(c3, &s3, 20000, 41);
    tlsw_conn_trim(c3);
    exchange(c3, &s3, 20, 42);

    tlsw_session_free(sess);
    tlsw_conn_free(c1);
    tlsw_conn_free(c2);
    tlsw_conn_free(c3);
    server_free(&s1);
    server_free(&s2);
    server_free(&s3);
    SSL_CTX_free(v13);
    SSL_CTX_free(v12);
    fx_free(&f);
}

/* After a failure trim does nothing and frees nothing twice. */
Test(tls_resume, trim_after_failure_is_harmless)
{
    struct fx f;
    fx_make(&f, false);
    struct tlsw_conn *c = tlsw_conn_new(f.gen, "localhost", NULL, 0);
    cr_assert_not_null(c);
    cr_assert_eq(tlsw_conn_handshake(c), TLSW_WANT_IO);
    uint8_t hello[4096];
    cr_assert_gt(tlsw_conn_take(c, hello, sizeof(hello)), 0);
    static const char junk[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
    tlsw_conn_feed(c, (const uint8_t *)junk, sizeof(junk) - 1);
    cr_assert_eq(tlsw_conn_handshake(c), TLSW_ERROR);
    tlsw_conn_trim(c);
    char detail[128];
    cr_assert_eq(tlsw_conn_failure(c, detail, sizeof(detail)), DBT_TLS_HANDSHAKE_FAILED);
    cr_assert_str_eq(detail, "wrong version number");
    tlsw_conn_trim(NULL);
    tlsw_conn_free(c);
    fx_free(&f);
}
