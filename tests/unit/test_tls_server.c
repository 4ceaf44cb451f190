/* tls/ server role: serving identities (tlsw_server_load and its refusals), and the server-role
 * engine joined in memory to the client-role engine or to a raw OpenSSL client that presents
 * certificates and offers ALPN at will, with certificates generated at test time. */
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

#define TLS_PUMP_NO_SERVER
#include "tls_pump.h"

static void setup(void)
{
    tmpdir_make("tls-server");
}

static void teardown(void)
{
    tmpdir_remove();
    leak_check();
}

TestSuite(tls_server, .init = setup, .fini = teardown);

static const char PG_ALPN[] = "\x0apostgresql";

/* A client certificate as client_names sees it: a DNS SAN, under the client CA. */
static const struct cg_spec CLIENT_APP1 = {.cn = "app1",
                                           .san = "DNS:app1.internal",
                                           .eku = "clientAuth",
                                           .not_before_days = -1,
                                           .not_after_days = 90};

/* t as a day in UTC, as failure details write notBefore/notAfter. */
static void day_of(time_t t, char *buf, size_t cap)
{
    struct tm tm;
    cr_assert_not_null(gmtime_r(&t, &tm));
    cr_assert_gt(strftime(buf, cap, "%Y-%m-%d", &tm), 0);
}

/* ---- fixture: the PKI and the files of a serving identity ----------------------------------- */

struct fx {
    struct cg_pki pki;        /* root -> inter -> localhost: the chain dbtrust presents */
    struct cg_cert client_ca; /* issues client certificates */
    struct cg_cert other_ca;  /* an unrelated CA */
    char cert[256], key[256], ca[256];
    struct tlsw_gen *gen; /* trusts pki.root: for the client-role engine */
};

static void write_key(const char *path, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    cr_assert_eq(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    cr_assert_eq(fclose(f), 0);
}

static void fx_make(struct fx *f)
{
    static const struct cg_spec ca = {
        .cn = "Client CA", .ca = true, .not_before_days = -10, .not_after_days = 3650};
    static const struct cg_spec other = {
        .cn = "Other Client CA", .ca = true, .not_before_days = -10, .not_after_days = 3650};
    char bundle[256], err[512] = "";
    memset(f, 0, sizeof(*f));
    cr_assert_eq(cg_pki_make(&f->pki, &CG_LEAF), 0);
    cr_assert_eq(cg_issue(&f->client_ca, &ca, NULL), 0);
    cr_assert_eq(cg_issue(&f->other_ca, &other, NULL), 0);
    X509 *chain[] = {f->pki.leaf.cert, f->pki.inter.cert};
    cr_assert_eq(cg_write_bundle(tmp_path(f->cert, sizeof(f->cert), "srv.pem"), chain, 2), 0);
    write_key(tmp_path(f->key, sizeof(f->key), "srv.key"), f->pki.leaf.key);
    cr_assert_eq(cg_write_bundle(tmp_path(f->ca, sizeof(f->ca), "cca.pem"), &f->client_ca.cert, 1),
                 0);
    cr_assert_eq(cg_write_bundle(tmp_path(bundle, sizeof(bundle), "b.pem"), &f->pki.root.cert, 1),
                 0);
    cr_assert_eq(tlsw_gen_load(bundle, NULL, &f->gen, err, sizeof(err)), 0, "%s", err);
}

static void fx_free(struct fx *f)
{
    tlsw_gen_unref(f->gen);
    cg_pki_free(&f->pki);
    cg_free(&f->client_ca);
    cg_free(&f->other_ca);
}

static struct tlsw_server_opts fx_opts(const struct fx *f)
{
    return (struct tlsw_server_opts){.cert_path = f->cert, .key_path = f->key, .ca_path = f->ca};
}

static struct tlsw_server *server_load_ok(const struct tlsw_server_opts *o)
{
    char err[512] = "";
    struct tlsw_server *s = NULL;
    cr_assert_eq(tlsw_server_load(o, &s, err, sizeof(err)), 0, "load: %s", err);
    cr_assert_not_null(s);
    cr_assert_str_empty(err);
    return s;
}

/* Loads an identity that must be refused; the error text goes to err. */
static void server_load_fail(const struct tlsw_server_opts *o, char *err, size_t cap)
{
    struct tlsw_server *s = (struct tlsw_server *)1;
    cr_assert_eq(tlsw_server_load(o, &s, err, cap), -1, "identity was accepted");
    cr_assert_null(s, "out must be NULL on failure");
    cr_assert_gt(strlen(err), 0, "no error text");
    cr_log_info("refused: %s", err); /* shown with --verbose */
}

/* ---- a raw OpenSSL client: any certificate, any ALPN offer, any version -------------------- */

struct raw_client {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *in, *out; /* in: ciphertext from the server; out: ciphertext to it */
    bool done, failed;
    char error[128]; /* why the handshake failed, as OpenSSL says it */
    int sessions;    /* resumable sessions (tickets) the server handed out */
};

static int on_client_session(SSL *ssl, SSL_SESSION *sess)
{
    struct raw_client *cl = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    cl->sessions++;
    return 0; /* not kept */
}

/* The client verifies dbtrust's chain against pki.root for "localhost", so a handshake that
 * succeeds also shows that the intermediate was sent. cert: presented when the server asks
 * (NULL: none). */
static void raw_client_start(struct raw_client *cl, const struct fx *f, const struct cg_cert *cert,
                             const char *alpn, size_t alpn_len, int max_version)
{
    memset(cl, 0, sizeof(*cl));
    cl->ctx = SSL_CTX_new(TLS_client_method());
    cr_assert_not_null(cl->ctx);
    SSL_CTX_set_app_data(cl->ctx, cl);
    cr_assert_eq(X509_STORE_add_cert(SSL_CTX_get_cert_store(cl->ctx), f->pki.root.cert), 1);
    SSL_CTX_set_verify(cl->ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_session_cache_mode(cl->ctx, SSL_SESS_CACHE_CLIENT);
    SSL_CTX_sess_set_new_cb(cl->ctx, on_client_session);
    if (max_version != 0)
        cr_assert_eq(SSL_CTX_set_max_proto_version(cl->ctx, max_version), 1);
    if (cert != NULL) {
        cr_assert_eq(SSL_CTX_use_certificate(cl->ctx, cert->cert), 1);
        cr_assert_eq(SSL_CTX_use_PrivateKey(cl->ctx, cert->key), 1);
    }
    if (alpn != NULL)
        cr_assert_eq(SSL_CTX_set_alpn_protos(cl->ctx, (const uint8_t *)alpn, (unsigned)alpn_len),
                     0);
    cl->ssl = SSL_new(cl->ctx);
    cl->in = BIO_new(BIO_s_mem());
    cl->out = BIO_new(BIO_s_mem());
    cr_assert(cl->ssl && cl->in && cl->out);
    BIO_set_mem_eof_return(cl->in, -1);
    SSL_set_bio(cl->ssl, cl->in, cl->out);
    cr_assert_eq(SSL_set1_host(cl->ssl, "localhost"), 1);
    SSL_set_connect_state(cl->ssl);
}

static void raw_client_free(struct raw_client *cl)
{
    SSL_free(cl->ssl);
    SSL_CTX_free(cl->ctx);
}

/* Runs the raw client and the server engine until the server is done or fails; returns the
 * server's status. The client has seen the server's last flight (an alert, say) on return,
 * unless it had finished first, as a TLS 1.3 client does before the server checks its
 * certificate: it then sees the alert on its next read. */
/* ssl_step, keeping the reason of a failure (an alert received, say). */
static void raw_step(struct raw_client *cl)
{
    if (cl->done || cl->failed)
        return;
    ERR_clear_error();
    int r = SSL_do_handshake(cl->ssl);
    int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(cl->ssl, r);
    if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        unsigned long code = ERR_peek_error();
        const char *reason = code != 0 ? ERR_reason_error_string(code) : NULL;
        dbt_strlcpy(cl->error, reason != NULL ? reason : "?", sizeof(cl->error));
    }
    ERR_clear_error();
    cl->done = r == 1;
    cl->failed = cl->error[0] != '\0';
}

static enum tlsw_status pump_raw(struct tlsw_conn *srv, struct raw_client *cl)
{
    enum tlsw_status st = TLSW_WANT_IO;
    for (int i = 0; i < 20; i++) {
        raw_step(cl);
        bio_to_engine(cl->out, srv);
        st = tlsw_conn_handshake(srv);
        engine_to_bio(srv, cl->in);
        if (st == TLSW_ERROR || (st == TLSW_OK && cl->done))
            break;
    }
    raw_step(cl);
    return st;
}

/* What the client's next read makes of what the server sent: the data, or OpenSSL's reason
 * for failing (e.g. an alert), into buf. Returns the bytes read, or -1. */
static int raw_read(struct raw_client *cl, char *buf, size_t cap)
{
    size_t n = 0;
    ERR_clear_error();
    if (SSL_read_ex(cl->ssl, buf, cap - 1, &n) == 1) {
        buf[n] = '\0';
        return (int)n;
    }
    unsigned long e = ERR_peek_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    dbt_strlcpy(buf, r != NULL ? r : "no error", cap);
    ERR_clear_error();
    return -1;
}

/* ---- scenarios: a server engine against the raw client -------------------------------------- */

struct scenario {
    bool mtls;         /* client_ca set */
    const char *names; /* client_names */
    int server_min;
    const struct cg_spec *client_cert; /* NULL: the client has none */
    bool cert_from_other_ca;
    const char *client_alpn; /* offered by the client, wire format */
    const char *alpn;        /* the server engine's */
    bool alpn_required;
    int client_max;
};

struct run {
    struct fx f;
    struct tlsw_server *srv;
    struct tlsw_conn *c; /* the server-role engine */
    struct raw_client cl;
    struct cg_cert client_cert;
    enum tlsw_status st;
    enum dbt_reason reason;
    char detail[512];
};

static void run_scenario(struct run *r, const struct scenario *sc)
{
    memset(r, 0, sizeof(*r));
    fx_make(&r->f);
    struct tlsw_server_opts o = {.cert_path = r->f.cert,
                                 .key_path = r->f.key,
                                 .ca_path = sc->mtls ? r->f.ca : NULL,
                                 .names = sc->names,
                                 .min_tls_version = sc->server_min};
    r->srv = server_load_ok(&o);
    if (sc->client_cert != NULL)
        cr_assert_eq(cg_issue(&r->client_cert, sc->client_cert,
                              sc->cert_from_other_ca ? &r->f.other_ca : &r->f.client_ca),
                     0);
    raw_client_start(&r->cl, &r->f, sc->client_cert != NULL ? &r->client_cert : NULL,
                     sc->client_alpn, sc->client_alpn != NULL ? strlen(sc->client_alpn) : 0,
                     sc->client_max);
    const char *alpn = sc->alpn;
    r->c = tlsw_conn_new_server(r->srv, (const uint8_t *)alpn, alpn != NULL ? strlen(alpn) : 0,
                                sc->alpn_required);
    cr_assert_not_null(r->c);
    r->st = pump_raw(r->c, &r->cl);
    r->reason = tlsw_conn_failure(r->c, r->detail, sizeof(r->detail));
}

static void run_free(struct run *r)
{
    tlsw_conn_free(r->c);
    tlsw_server_unref(r->srv);
    raw_client_free(&r->cl);
    cg_free(&r->client_cert);
    fx_free(&r->f);
}

static void expect_ok(const struct run *r)
{
    cr_assert_eq(r->st, TLSW_OK, "handshake status %d: %s (%s)", r->st, dbt_reason_name(r->reason),
                 r->detail);
    cr_assert(r->cl.done, "client handshake not done");
    cr_assert_eq(r->reason, DBT_NONE);
    cr_assert_str_empty(r->detail);
}

static void expect_failure(const struct run *r, enum dbt_reason want)
{
    cr_assert_eq(r->st, TLSW_ERROR, "handshake status %d, want TLSW_ERROR", r->st);
    cr_assert_eq(r->reason, want, "reason %s (%s), want %s", dbt_reason_name(r->reason), r->detail,
                 dbt_reason_name(want));
    cr_assert_gt(strlen(r->detail), 0);
    cr_assert_eq(dbt_reason_class(r->reason), DBT_CLASS_CLIENT_REFUSED);
    cr_assert_str_empty(tlsw_conn_peer_name(r->c));
    cr_log_info("%s: %s", dbt_reason_name(r->reason), r->detail); /* shown with --verbose */
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

/* Data both ways between the raw client and the server engine, then close_notify both ways. */
static void exchange_with_raw(struct run *r)
{
    size_t n = 0;
    cr_assert_eq(SSL_write_ex(r->cl.ssl, "ping", 4, &n), 1);
    bio_to_engine(r->cl.out, r->c);
    uint8_t buf[16];
    cr_assert_eq(read_some(r->c, buf, sizeof(buf), &n), TLSW_OK);
    cr_assert_eq(n, 4);
    cr_assert_eq(memcmp(buf, "ping", 4), 0);

    cr_assert_eq(tlsw_conn_write(r->c, (const uint8_t *)"pong", 4), TLSW_OK);
    engine_to_bio(r->c, r->cl.in);
    char cbuf[16];
    cr_assert_eq(raw_read(&r->cl, cbuf, sizeof(cbuf)), 4, "%s", cbuf);
    cr_assert_str_eq(cbuf, "pong");

    /* The client's close_notify ends the server's reads; the server's reaches the client. */
    cr_assert_geq(SSL_shutdown(r->cl.ssl), 0);
    bio_to_engine(r->cl.out, r->c);
    cr_assert_eq(tlsw_conn_read(r->c, buf, sizeof(buf), &n), TLSW_CLOSED);
    tlsw_conn_shutdown(r->c);
    cr_assert_gt(tlsw_conn_pending(r->c), 0, "close_notify is queued");
    engine_to_bio(r->c, r->cl.in);
    cr_assert_eq(SSL_shutdown(r->cl.ssl), 1, "the client saw the server's close_notify");
    cr_assert_eq(tlsw_conn_failure(r->c, NULL, 0), DBT_NONE);
}

/* ---- the server engine against the client engine ------------------------------------------- */

Test(tls_server, engines_joined_data_and_close_notify_both_ways)
{
    struct fx f;
    fx_make(&f);
    struct tlsw_server *s =
        server_load_ok(&(struct tlsw_server_opts){.cert_path = f.cert, .key_path = f.key});
    struct tlsw_conn *srv = tlsw_conn_new_server(s, NULL, 0, false);
    struct tlsw_conn *cli = tlsw_conn_new(f.gen, "localhost", NULL, 0);
    cr_assert(srv && cli);
    enum tlsw_status cs;
    cr_assert_eq(pump_engines(srv, cli, &cs), TLSW_OK);
    cr_assert_eq(cs, TLSW_OK);
    cr_assert_eq(tlsw_conn_failure(srv, NULL, 0), DBT_NONE);
    cr_assert_str_eq(tlsw_conn_version(srv), "TLSv1.3");
    cr_assert_str_eq(tlsw_conn_cipher(srv), tlsw_conn_cipher(cli));
    cr_assert_str_empty(tlsw_conn_peer_name(srv), "no client certificate");
    cr_assert_str_empty(tlsw_conn_peer_name(cli), "client role");
    struct tlsw_cert_info chain[4];
    cr_assert_eq(tlsw_conn_peer_chain(srv, chain, 4), 0, "no client chain");
    cr_assert_eq(tlsw_conn_peer_chain(cli, chain, 4), 3, "the intermediate was sent");
    cr_assert_eq(tlsw_conn_pending(srv), 0, "no session tickets");

    /* client -> server */
    uint8_t buf[16];
    size_t n = 0;
    cr_assert_eq(tlsw_conn_write(cli, (const uint8_t *)"ping", 4), TLSW_OK);
    engine_to_engine(cli, srv);
    cr_assert_eq(read_some(srv, buf, sizeof(buf), &n), TLSW_OK);
    cr_assert_eq(n, 4);
    cr_assert_eq(memcmp(buf, "ping", 4), 0);
    /* server -> client */
    cr_assert_eq(tlsw_conn_write(srv, (const uint8_t *)"pong!", 5), TLSW_OK);
    engine_to_engine(srv, cli);
    cr_assert_eq(read_some(cli, buf, sizeof(buf), &n), TLSW_OK);
    cr_assert_eq(n, 5);
    cr_assert_eq(memcmp(buf, "pong!", 5), 0);
    cr_assert_eq(tlsw_conn_read(cli, buf, sizeof(buf), &n), TLSW_WANT_IO);
    cr_assert_null(tlsw_conn_new_session(cli), "the server issues no tickets");

    /* close_notify: client -> server, then server -> client */
    tlsw_conn_shutdown(cli);
    engine_to_engine(cli, srv);
    cr_assert_eq(tlsw_conn_read(srv, buf, sizeof(buf), &n), TLSW_CLOSED);
    tlsw_conn_shutdown(srv);
    cr_assert_gt(tlsw_conn_pending(srv), 0);
    engine_to_engine(srv, cli);
    cr_assert_eq(tlsw_conn_read(cli, buf, sizeof(buf), &n), TLSW_CLOSED);
    cr_assert_eq(tlsw_conn_failure(srv, NULL, 0), DBT_NONE);
    cr_assert_eq(tlsw_conn_failure(cli, NULL, 0), DBT_NONE);

    tlsw_conn_free(cli);
    tlsw_conn_free(srv);
    tlsw_server_unref(s);
    fx_free(&f);
}

Test(tls_server, engines_joined_large_writes_and_trim)
{
    struct fx f;
    fx_make(&f);
    struct tlsw_server *s =
        server_load_ok(&(struct tlsw_server_opts){.cert_path = f.cert, .key_path = f.key});
    struct tlsw_conn *srv = tlsw_conn_new_server(s, NULL, 0, false);
    struct tlsw_conn *cli = tlsw_conn_new(f.gen, "localhost", NULL, 0);
    cr_assert(srv && cli);
    enum tlsw_status cs;
    cr_assert_eq(pump_engines(srv, cli, &cs), TLSW_OK);
    size_t len = 200 * 1024; /* several records each way */
    uint8_t *out = malloc(len), *in = malloc(len);
    cr_assert(out && in);
    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)(i * 31 + 7);
    struct tlsw_conn *from[] = {srv, cli}, *to[] = {cli, srv};
    for (int dir = 0; dir < 2; dir++) {
        cr_assert_eq(tlsw_conn_write(from[dir], out, len), TLSW_OK);
        engine_to_engine(from[dir], to[dir]);
        memset(in, 0, len);
        size_t got = 0, n = 0;
        while (got < len) {
            cr_assert_eq(read_some(to[dir], in + got, len - got, &n), TLSW_OK);
            got += n;
        }
        cr_assert_eq(memcmp(in, out, len), 0);
        tlsw_conn_trim(to[dir]);
        tlsw_conn_trim(from[dir]);
    }
    /* Still working after the trims. */
    cr_assert_eq(tlsw_conn_write(cli, out, 10), TLSW_OK);
    engine_to_engine(cli, srv);
    size_t n = 0;
    cr_assert_eq(read_some(srv, in, len, &n), TLSW_OK);
    cr_assert_eq(n, 10);
    free(out);
    free(in);
    tlsw_conn_free(cli);
    tlsw_conn_free(srv);
    tlsw_server_unref(s);
    fx_free(&f);
}

Test(tls_server, engines_joined_alpn_postgresql_required)
{
    struct fx f;
    fx_make(&f);
    struct tlsw_server *s =
        server_load_ok(&(struct tlsw_server_opts){.cert_path = f.cert, .key_path = f.key});
    struct tlsw_conn *srv =
        tlsw_conn_new_server(s, (const uint8_t *)PG_ALPN, sizeof(PG_ALPN) - 1, true);
    struct tlsw_conn *cli =
        tlsw_conn_new(f.gen, "localhost", (const uint8_t *)PG_ALPN, sizeof(PG_ALPN) - 1);
    cr_assert(srv && cli);
    enum tlsw_status cs;
    cr_assert_eq(pump_engines(srv, cli, &cs), TLSW_OK);
    cr_assert_eq(cs, TLSW_OK);
    tlsw_conn_free(cli);
    tlsw_conn_free(srv);

    /* The same engines, the client offering no ALPN: refused once the handshake completed. */
    srv = tlsw_conn_new_server(s, (const uint8_t *)PG_ALPN, sizeof(PG_ALPN) - 1, true);
    cli = tlsw_conn_new(f.gen, "localhost", NULL, 0);
    cr_assert(srv && cli);
    cr_assert_eq(pump_engines(srv, cli, &cs), TLSW_ERROR);
    char detail[256];
    cr_assert_eq(tlsw_conn_failure(srv, detail, sizeof(detail)), DBT_CLIENT_TLS_HANDSHAKE_FAILED);
    cr_assert_str_eq(detail, "direct TLS without ALPN 'postgresql'");
    cr_assert_eq(tlsw_conn_handshake(srv), TLSW_ERROR, "errors are sticky");
    uint8_t buf[8];
    size_t n;
    cr_assert_eq(tlsw_conn_read(srv, buf, sizeof(buf), &n), TLSW_ERROR);
    cr_assert_eq(tlsw_conn_write(srv, buf, 1), TLSW_ERROR);
    tlsw_conn_shutdown(srv); /* harmless after a failure */
    tlsw_conn_free(cli);
    tlsw_conn_free(srv);
    tlsw_server_unref(s);
    fx_free(&f);
}

Test(tls_server, client_refusing_our_chain_is_a_client_leg_failure)
{
    struct fx f;
    fx_make(&f);
    /* A bundle that does not hold our root: the client engine refuses dbtrust's chain. */
    char path[256], err[512] = "";
    cr_assert_eq(cg_write_bundle(tmp_path(path, sizeof(path), "o.pem"), &f.other_ca.cert, 1), 0);
    struct tlsw_gen *g = NULL;
    cr_assert_eq(tlsw_gen_load(path, NULL, &g, err, sizeof(err)), 0, "%s", err);
    struct tlsw_server *s =
        server_load_ok(&(struct tlsw_server_opts){.cert_path = f.cert, .key_path = f.key});
    struct tlsw_conn *srv = tlsw_conn_new_server(s, NULL, 0, false);
    struct tlsw_conn *cli = tlsw_conn_new(g, "localhost", NULL, 0);
    cr_assert(srv && cli);
    enum tlsw_status cs;
    cr_assert_eq(pump_engines(srv, cli, &cs), TLSW_ERROR);
    cr_assert_eq(cs, TLSW_ERROR);
    char detail[256];
    cr_assert_eq(tlsw_conn_failure(cli, detail, sizeof(detail)), DBT_TLS_UNTRUSTED_CHAIN);
    cr_assert(strstr(detail, "is not in the bundle)") != NULL, "%s", detail);
    cr_assert_eq(tlsw_conn_failure(srv, detail, sizeof(detail)), DBT_CLIENT_TLS_HANDSHAKE_FAILED);
    cr_assert_str_eq(detail, "tlsv1 alert unknown ca");
    tlsw_conn_free(cli);
    tlsw_conn_free(srv);
    tlsw_server_unref(s);
    tlsw_gen_unref(g);
    fx_free(&f);
}

/* ---- versions, tickets, the plain handshake with a raw client ------------------------------- */

Test(tls_server, tls13_data_and_close_notify)
{
    struct run r;
    run_scenario(&r, &(struct scenario){0});
    expect_ok(&r);
    cr_assert_str_eq(tlsw_conn_version(r.c), "TLSv1.3");
    cr_assert_str_eq(SSL_get_version(r.cl.ssl), "TLSv1.3");
    exchange_with_raw(&r);
    cr_assert_eq(r.cl.sessions, 0, "no session tickets");
    run_free(&r);
}

Test(tls_server, tls12_data_and_close_notify)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.client_max = TLS1_2_VERSION});
    expect_ok(&r);
    cr_assert_str_eq(tlsw_conn_version(r.c), "TLSv1.2");
    cr_assert_gt(strlen(tlsw_conn_cipher(r.c)), 0);
    exchange_with_raw(&r);
    cr_assert_eq(r.cl.sessions, 0, "no resumable session: no ticket, no session id");
    run_free(&r);
}

Test(tls_server, min_tls13_refuses_tls12_client)
{
    struct run r;
    run_scenario(&r,
                 &(struct scenario){.server_min = TLS1_3_VERSION, .client_max = TLS1_2_VERSION});
    expect_failure(&r, DBT_CLIENT_TLS_HANDSHAKE_FAILED);
    cr_assert_str_eq(r.detail, "unsupported protocol");
    cr_assert_str_eq(r.cl.error, "tlsv1 alert protocol version");
    run_free(&r);
}

Test(tls_server, corrupted_record_after_the_handshake)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.mtls = true, .client_cert = &CLIENT_APP1});
    expect_ok(&r);
    size_t n = 0;
    cr_assert_eq(SSL_write_ex(r.cl.ssl, "query", 5, &n), 1);
    uint8_t rec[256];
    int len = BIO_read(r.cl.out, rec, sizeof(rec));
    cr_assert_gt(len, 10);
    rec[len - 1] ^= 0x01; /* the tag no longer verifies */
    tlsw_conn_feed(r.c, rec, (size_t)len);
    uint8_t buf[16];
    cr_assert_eq(tlsw_conn_read(r.c, buf, sizeof(buf), &n), TLSW_ERROR);
    char detail[256];
    cr_assert_eq(tlsw_conn_failure(r.c, detail, sizeof(detail)), DBT_CLIENT_TLS_HANDSHAKE_FAILED);
    cr_assert_str_eq(detail, "decryption failed or bad record mac");
    cr_assert_str_eq(tlsw_conn_peer_name(r.c), "app1.internal", "the name stays for the log");
    run_free(&r);
}

Test(tls_server, group_of_the_clients_key_share)
{
    /* OpenSSL's server takes the client's key share when it supports the group: P-384 here,
     * though it would have preferred X25519 (no HelloRetryRequest). */
    struct run r;
    memset(&r, 0, sizeof(r));
    fx_make(&r.f);
    r.srv = server_load_ok(&(struct tlsw_server_opts){
        .cert_path = r.f.cert, .key_path = r.f.key, .ca_path = r.f.ca, .names = "app1.internal"});
    cr_assert_eq(cg_issue(&r.client_cert, &CLIENT_APP1, &r.f.client_ca), 0);
    raw_client_start(&r.cl, &r.f, &r.client_cert, PG_ALPN, sizeof(PG_ALPN) - 1, 0);
    cr_assert_eq(SSL_set1_groups_list(r.cl.ssl, "P-384:X25519"), 1);
    r.c = tlsw_conn_new_server(r.srv, (const uint8_t *)PG_ALPN, sizeof(PG_ALPN) - 1, true);
    cr_assert_not_null(r.c);
    cr_assert_eq(tlsw_conn_group(r.c), 0, "unknown before the handshake");
    r.st = pump_raw(r.c, &r.cl);
    r.reason = tlsw_conn_failure(r.c, r.detail, sizeof(r.detail));
    expect_ok(&r);
    cr_assert_eq(tlsw_conn_group(r.c), NID_secp384r1);
    cr_assert_str_eq(tlsw_conn_peer_name(r.c), "app1.internal");
    run_free(&r);
}

Test(tls_server, plaintext_instead_of_client_hello)
{
    struct fx f;
    fx_make(&f);
    struct tlsw_server *s =
        server_load_ok(&(struct tlsw_server_opts){.cert_path = f.cert, .key_path = f.key});
    struct tlsw_conn *c = tlsw_conn_new_server(s, NULL, 0, false);
    cr_assert_not_null(c);
    cr_assert_eq(tlsw_conn_handshake(c), TLSW_WANT_IO);
    cr_assert_eq(tlsw_conn_pending(c), 0, "a server waits for the ClientHello");
    /* A PostgreSQL StartupMessage where a ClientHello should be. */
    static const uint8_t startup[] = {0, 0, 0, 8, 0, 3, 0, 0};
    tlsw_conn_feed(c, startup, sizeof(startup));
    cr_assert_eq(tlsw_conn_handshake(c), TLSW_ERROR);
    char detail[256];
    cr_assert_eq(tlsw_conn_failure(c, detail, sizeof(detail)), DBT_CLIENT_TLS_HANDSHAKE_FAILED);
    cr_assert_gt(strlen(detail), 0);
    cr_log_info("plaintext: %s", detail);
    cr_assert_str_empty(tlsw_conn_peer_name(c));
    tlsw_conn_free(c);
    tlsw_server_unref(s);
    fx_free(&f);
}

/* ---- client certificates (mTLS) ------------------------------------------------------------- */

static void mtls_accepted(int client_max)
{
    struct run r;
    run_scenario(&r, &(struct scenario){
                         .mtls = true, .client_cert = &CLIENT_APP1, .client_max = client_max});
    expect_ok(&r);
    cr_assert_str_eq(tlsw_conn_peer_name(r.c), "app1.internal");
    /* The CertificateRequest named the client CA. */
    STACK_OF(X509_NAME) *cas = SSL_get_client_CA_list(r.cl.ssl);
    cr_assert_eq(sk_X509_NAME_num(cas), 1);
    cr_assert_eq(
        X509_NAME_cmp(sk_X509_NAME_value(cas, 0), X509_get_subject_name(r.f.client_ca.cert)), 0);
    /* The server engine's peer chain is the client's, verified to the client CA. */
    struct tlsw_cert_info chain[4];
    cr_assert_eq(tlsw_conn_peer_chain(r.c, chain, 4), 2);
    cr_assert_str_eq(chain[0].subject, "CN=app1,O=dbtrust test");
    cr_assert_str_eq(chain[1].subject, "CN=Client CA,O=dbtrust test");
    exchange_with_raw(&r);
    run_free(&r);
}

Test(tls_server, mtls_accepted_tls13)
{
    mtls_accepted(0);
}

Test(tls_server, mtls_accepted_tls12)
{
    mtls_accepted(TLS1_2_VERSION);
}

Test(tls_server, mtls_missing_certificate_tls13)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.mtls = true});
    expect_failure(&r, DBT_CLIENT_CERT_MISSING);
    cr_assert_str_eq(r.detail, "client sent no certificate (client_ca requires one)");
    /* TLS 1.3: the client finished first and learns of it from an alert on its next read
     * (PROTOCOLS.md C3: libpq reports "tlsv13 alert certificate required"). */
    char buf[128];
    cr_assert_eq(raw_read(&r.cl, buf, sizeof(buf)), -1);
    cr_assert_str_eq(buf, "tlsv13 alert certificate required");
    run_free(&r);
}

Test(tls_server, mtls_missing_certificate_tls12)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.mtls = true, .client_max = TLS1_2_VERSION});
    expect_failure(&r, DBT_CLIENT_CERT_MISSING);
    cr_assert_str_eq(r.detail, "client sent no certificate (client_ca requires one)");
    cr_assert_str_eq(r.cl.error, "sslv3 alert handshake failure",
                     "TLS 1.2: the alert ends the client's handshake");
    run_free(&r);
}

Test(tls_server, mtls_certificate_of_another_ca)
{
    struct run r;
    run_scenario(&r, &(struct scenario){
                         .mtls = true, .client_cert = &CLIENT_APP1, .cert_from_other_ca = true});
    expect_failure(&r, DBT_CLIENT_CERT_UNTRUSTED);
    cr_assert_str_eq(r.detail, "unable to get local issuer certificate (depth 0, CN=app1,O=dbtrust "
                               "test; issuer CN=Other Client CA,O=dbtrust test is not in "
                               "client_ca)");
    char buf[128];
    cr_assert_eq(raw_read(&r.cl, buf, sizeof(buf)), -1);
    cr_assert_str_eq(buf, "tlsv1 alert unknown ca");
    run_free(&r);
}

Test(tls_server, mtls_certificate_of_another_ca_tls12)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.mtls = true,
                                        .client_cert = &CLIENT_APP1,
                                        .cert_from_other_ca = true,
                                        .client_max = TLS1_2_VERSION});
    expect_failure(&r, DBT_CLIENT_CERT_UNTRUSTED);
    cr_assert(strstr(r.detail, "is not in client_ca)") != NULL, "%s", r.detail);
    cr_assert(r.cl.failed);
    run_free(&r);
}

Test(tls_server, mtls_expired_certificate)
{
    struct run r;
    struct cg_spec old = CLIENT_APP1;
    old.not_before_days = -60;
    old.not_after_days = -2;
    run_scenario(&r, &(struct scenario){.mtls = true, .client_cert = &old});
    expect_failure(&r, DBT_CLIENT_CERT_EXPIRED);
    char day[32];
    day_of(time(NULL) - 2 * CG_DAY, day, sizeof(day));
    char want[256];
    snprintf(want, sizeof(want),
             "certificate has expired (depth 0, CN=app1,O=dbtrust test, notAfter %s)", day);
    cr_assert_str_eq(r.detail, want);
    run_free(&r);
}

Test(tls_server, mtls_not_yet_valid_certificate)
{
    struct run r;
    struct cg_spec early = CLIENT_APP1;
    early.not_before_days = 2;
    run_scenario(&r, &(struct scenario){.mtls = true, .client_cert = &early});
    expect_failure(&r, DBT_CLIENT_CERT_EXPIRED);
    cr_assert(strstr(r.detail, "certificate is not yet valid (depth 0, CN=app1,O=dbtrust test, "
                               "notBefore ") != NULL,
              "%s", r.detail);
    run_free(&r);
}

Test(tls_server, mtls_server_auth_only_certificate)
{
    struct run r;
    struct cg_spec server_only = CLIENT_APP1;
    server_only.eku = "serverAuth";
    run_scenario(&r, &(struct scenario){.mtls = true, .client_cert = &server_only});
    expect_failure(&r, DBT_CLIENT_CERT_UNTRUSTED);
    cr_assert_str_eq(r.detail, "unsuitable certificate purpose (depth 0, CN=app1,O=dbtrust test)");
    run_free(&r);
}

Test(tls_server, mtls_any_name_without_client_names)
{
    struct run r;
    const struct cg_spec cert = {.cn = "app1",
                                 .san = "IP:10.0.0.5,URI:spiffe://example.org/app1,DNS:a.internal",
                                 .eku = "clientAuth",
                                 .not_before_days = -1,
                                 .not_after_days = 90};
    run_scenario(&r, &(struct scenario){.mtls = true, .client_cert = &cert});
    expect_ok(&r);
    cr_assert_str_eq(tlsw_conn_peer_name(r.c), "spiffe://example.org/app1",
                     "the first DNS/URI SAN");
    run_free(&r);
}

Test(tls_server, mtls_peer_name_is_cn_without_san)
{
    struct run r;
    const struct cg_spec cert = {
        .cn = "legacy-app", .eku = "clientAuth", .not_before_days = -1, .not_after_days = 90};
    run_scenario(&r, &(struct scenario){.mtls = true, .client_cert = &cert});
    expect_ok(&r);
    cr_assert_str_eq(tlsw_conn_peer_name(r.c), "legacy-app");
    run_free(&r);
}

/* ---- client_names --------------------------------------------------------------------------- */

/* A client certificate with san/cn, checked against names; *r is left for more checks. */
static void names_run(struct run *r, const char *cn, const char *san, const char *names,
                      int client_max)
{
    const struct cg_spec cert = {
        .cn = cn, .san = san, .eku = "clientAuth", .not_before_days = -1, .not_after_days = 90};
    run_scenario(r,
                 &(struct scenario){
                     .mtls = true, .client_cert = &cert, .names = names, .client_max = client_max});
}

Test(tls_server, names_dns_san_case_insensitive)
{
    struct run r;
    names_run(&r, "app1", "DNS:other.internal,DNS:APP1.internal", "db.internal, App1.Internal", 0);
    expect_ok(&r);
    cr_assert_str_eq(tlsw_conn_peer_name(r.c), "APP1.internal", "the matching SAN, as written");
    run_free(&r);
}

Test(tls_server, names_uri_san_exact)
{
    struct run r;
    names_run(&r, "app1", "URI:spiffe://example.org/ns/prod/sa/app1",
              "spiffe://example.org/ns/prod/sa/app1", 0);
    expect_ok(&r);
    cr_assert_str_eq(tlsw_conn_peer_name(r.c), "spiffe://example.org/ns/prod/sa/app1");
    run_free(&r);

    names_run(&r, "app1", "URI:spiffe://example.org/ns/prod/sa/app1",
              "SPIFFE://example.org/ns/prod/sa/app1", 0);
    expect_failure(&r, DBT_CLIENT_CERT_REJECTED);
    cr_assert_str_eq(r.detail, "client certificate names spiffe://example.org/ns/prod/sa/app1, "
                               "not in client_names");
    run_free(&r);
}

Test(tls_server, names_cn_without_dns_or_uri_san)
{
    struct run r;
    /* An IP SAN is not a name: the CN counts. */
    names_run(&r, "legacy-app", "IP:10.0.0.5", "app1.internal,CN=legacy-app", 0);
    expect_ok(&r);
    cr_assert_str_eq(tlsw_conn_peer_name(r.c), "legacy-app");
    run_free(&r);

    names_run(&r, "legacy-app", NULL, "cn=legacy-app", TLS1_2_VERSION);
    expect_ok(&r);
    run_free(&r);

    /* The CN is compared exactly, and a bare name is not a CN entry. */
    names_run(&r, "legacy-app", NULL, "CN=Legacy-App, legacy-app", 0);
    expect_failure(&r, DBT_CLIENT_CERT_REJECTED);
    cr_assert_str_eq(r.detail, "client certificate names CN=legacy-app, not in client_names");
    run_free(&r);
}

Test(tls_server, names_cn_ignored_when_a_dns_san_exists)
{
    struct run r;
    names_run(&r, "legacy-app", "DNS:app1.internal", "CN=legacy-app", 0);
    expect_failure(&r, DBT_CLIENT_CERT_REJECTED);
    cr_assert_str_eq(r.detail, "client certificate names app1.internal, not in client_names");
    run_free(&r);
}

static void names_rejected(int client_max)
{
    struct run r;
    names_run(&r, "app9", "DNS:app9.internal", "app1.internal, app2.internal", client_max);
    expect_failure(&r, DBT_CLIENT_CERT_REJECTED);
    cr_assert_str_eq(r.detail, "client certificate names app9.internal, not in client_names");
    /* Refused inside the handshake: the client gets an alert, not a session. */
    char buf[128];
    if (client_max == 0)
        cr_assert_eq(raw_read(&r.cl, buf, sizeof(buf)), -1);
    else
        cr_assert(r.cl.failed);
    /* OpenSSL's alert for a refusal by the application (X509_V_ERR_APPLICATION_VERIFICATION). */
    cr_assert_str_eq(client_max == 0 ? buf : r.cl.error, "sslv3 alert handshake failure");

    run_free(&r);
}

Test(tls_server, names_rejected_tls13)
{
    names_rejected(0);
}

Test(tls_server, names_rejected_tls12)
{
    names_rejected(TLS1_2_VERSION);
}

Test(tls_server, names_prefix_or_suffix_is_no_match)
{
    struct run r;
    names_run(&r, "app1", "DNS:app1.internal.evil,DNS:pp1.internal", "app1.internal", 0);
    expect_failure(&r, DBT_CLIENT_CERT_REJECTED);
    cr_assert_str_eq(r.detail, "client certificate names app1.internal.evil, pp1.internal, not in "
                               "client_names");
    run_free(&r);
}

Test(tls_server, names_unreadable_san_is_no_way_to_the_cn)
{
    /* A subjectAltName whose DER does not decode, on a certificate with a listed CN. */
    struct fx f;
    fx_make(&f);
    const struct cg_spec spec = {
        .cn = "app1", .eku = "clientAuth", .not_before_days = -1, .not_after_days = 90};
    struct cg_cert cert = {0};
    cr_assert_eq(cg_issue(&cert, &spec, &f.client_ca), 0);
    static const unsigned char junk[] = {0x30, 0x03, 0x82, 0x05, 'a'}; /* DNS name past the end */
    ASN1_OCTET_STRING *der = ASN1_OCTET_STRING_new();
    cr_assert(der != NULL && ASN1_OCTET_STRING_set(der, junk, sizeof(junk)) == 1);
    X509_EXTENSION *ext = X509_EXTENSION_create_by_NID(NULL, NID_subject_alt_name, 0, der);
    cr_assert_not_null(ext);
    cr_assert_eq(X509_add_ext(cert.cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
    ASN1_OCTET_STRING_free(der);
    cr_assert_gt(X509_sign(cert.cert, f.client_ca.key, EVP_sha256()), 0);

    struct tlsw_server_opts o = fx_opts(&f);
    o.names = "CN=app1";
    struct tlsw_server *s = server_load_ok(&o);
    struct tlsw_conn *c = tlsw_conn_new_server(s, NULL, 0, false);
    struct raw_client cl;
    raw_client_start(&cl, &f, &cert, NULL, 0, 0);
    cr_assert_eq(pump_raw(c, &cl), TLSW_ERROR);
    char detail[256];
    /* OpenSSL already refuses to build a chain from a certificate with an undecodable
     * extension; the name check would refuse it too (no CN fallback past an unreadable SAN). */
    cr_assert_eq(tlsw_conn_failure(c, detail, sizeof(detail)), DBT_CLIENT_CERT_UNTRUSTED, "%s",
                 detail);
    cr_assert_str_empty(tlsw_conn_peer_name(c));
    tlsw_conn_free(c);
    tlsw_server_unref(s);
    raw_client_free(&cl);
    cg_free(&cert);
    fx_free(&f);
}

Test(tls_server, names_need_a_verified_chain_first)
{
    struct run r;
    const struct cg_spec cert = CLIENT_APP1;
    run_scenario(&r, &(struct scenario){.mtls = true,
                                        .client_cert = &cert,
                                        .cert_from_other_ca = true,
                                        .names = "app1.internal"});
    expect_failure(&r, DBT_CLIENT_CERT_UNTRUSTED);
    run_free(&r);
}

/* ---- ALPN ----------------------------------------------------------------------------------- */

Test(tls_server, alpn_offered_and_matching)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.client_alpn = "\x02h2\x0apostgresql",
                                        .alpn = PG_ALPN,
                                        .alpn_required = true});
    expect_ok(&r);
    const unsigned char *sel = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(r.cl.ssl, &sel, &len);
    cr_assert_eq(len, 10);
    cr_assert_eq(memcmp(sel, "postgresql", 10), 0);
    run_free(&r);
}

static void alpn_other(bool required, int client_max)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.client_alpn = "\x02h2\x08http/1.1",
                                        .alpn = PG_ALPN,
                                        .alpn_required = required,
                                        .client_max = client_max});
    expect_failure(&r, DBT_CLIENT_TLS_HANDSHAKE_FAILED);
    cr_assert_str_eq(r.detail, "client offered ALPN h2, http/1.1, not 'postgresql'");
    cr_assert(r.cl.failed, "the ServerHello never came");
    cr_assert_str_eq(r.cl.error, "tlsv1 alert no application protocol");
    run_free(&r);
}

Test(tls_server, alpn_offered_other_fails)
{
    alpn_other(false, 0);
}

Test(tls_server, alpn_offered_other_fails_tls12_required)
{
    alpn_other(true, TLS1_2_VERSION);
}

Test(tls_server, alpn_none_but_required)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.alpn = PG_ALPN, .alpn_required = true});
    expect_failure(&r, DBT_CLIENT_TLS_HANDSHAKE_FAILED);
    cr_assert_str_eq(r.detail, "direct TLS without ALPN 'postgresql'");
    run_free(&r);
}

Test(tls_server, alpn_none_not_required)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.alpn = PG_ALPN, .client_max = TLS1_2_VERSION});
    expect_ok(&r);
    const unsigned char *sel = NULL;
    unsigned int len = 1;
    SSL_get0_alpn_selected(r.cl.ssl, &sel, &len);
    cr_assert_eq(len, 0);
    exchange_with_raw(&r);
    run_free(&r);
}

Test(tls_server, alpn_offer_ignored_without_our_protocol)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.client_alpn = "\x02h2"});
    expect_ok(&r);
    const unsigned char *sel = NULL;
    unsigned int len = 1;
    SSL_get0_alpn_selected(r.cl.ssl, &sel, &len);
    cr_assert_eq(len, 0);
    run_free(&r);
}

Test(tls_server, alpn_and_mtls_together)
{
    struct run r;
    run_scenario(&r, &(struct scenario){.mtls = true,
                                        .client_cert = &CLIENT_APP1,
                                        .names = "app1.internal",
                                        .client_alpn = PG_ALPN,
                                        .alpn = PG_ALPN,
                                        .alpn_required = true});
    expect_ok(&r);
    cr_assert_str_eq(tlsw_conn_peer_name(r.c), "app1.internal");
    run_free(&r);
}

Test(tls_server, conn_new_server_refuses_bad_alpn)
{
    struct fx f;
    fx_make(&f);
    struct tlsw_server *s =
        server_load_ok(&(struct tlsw_server_opts){.cert_path = f.cert, .key_path = f.key});
    static const uint8_t short_len[] = {5, 'a'};
    static const uint8_t two[] = "\x02h2\x0apostgresql";
    static const uint8_t empty_name[] = {0};
    cr_assert_null(tlsw_conn_new_server(s, short_len, sizeof(short_len), false));
    cr_assert_null(tlsw_conn_new_server(s, two, sizeof(two) - 1, false), "one name only");
    cr_assert_null(tlsw_conn_new_server(s, empty_name, sizeof(empty_name), false));
    cr_assert_null(tlsw_conn_new_server(s, NULL, 0, true), "required needs a protocol");
    tlsw_server_unref(s); /* the failed attempts kept no reference (LSan) */
    fx_free(&f);
}

/* ---- loading: what is refused, and why ------------------------------------------------------ */

Test(tls_server, load_missing_files)
{
    struct fx f;
    fx_make(&f);
    char nope[256], err[512], want[600];
    tmp_path(nope, sizeof(nope), "nope.pem");
    struct tlsw_server_opts o = fx_opts(&f);
    o.cert_path = nope;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "cannot read certificate %s: No such file or directory", nope);
    cr_assert_str_eq(err, want);
    o = fx_opts(&f);
    o.key_path = nope;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "cannot read key %s: No such file or directory", nope);
    cr_assert_str_eq(err, want);
    o = fx_opts(&f);
    o.ca_path = nope;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "cannot read client CA %s: No such file or directory", nope);
    cr_assert_str_eq(err, want);
    fx_free(&f);
}

Test(tls_server, load_garbage)
{
    struct fx f;
    fx_make(&f);
    char junk[256], err[512], want[600];
    static const char text[] = "this is not PEM\n\x01\x02\xff\n";
    cr_assert_eq(cg_write_text(tmp_path(junk, sizeof(junk), "junk"), text, sizeof(text) - 1), 0);
    struct tlsw_server_opts o = fx_opts(&f);
    o.cert_path = junk;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "no certificate in %s", junk);
    cr_assert_str_eq(err, want);
    o = fx_opts(&f);
    o.key_path = junk;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "no private key in %s", junk);
    cr_assert_str_eq(err, want);
    /* Certificates are not a key. */
    o.key_path = f.cert;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "no private key in %s", f.cert);
    cr_assert_str_eq(err, want);
    /* A certificate block whose DER is garbage. */
    cr_assert_eq(cg_write_text(junk,
                               "-----BEGIN CERTIFICATE-----\nTUlJQmdhcmJhZ2U=\n"
                               "-----END CERTIFICATE-----\n",
                               strlen("-----BEGIN CERTIFICATE-----\nTUlJQmdhcmJhZ2U=\n"
                                      "-----END CERTIFICATE-----\n")),
                 0);
    o = fx_opts(&f);
    o.cert_path = junk;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "cannot parse %s: PEM block 1: ", junk);
    cr_assert_eq(strncmp(err, want, strlen(want)), 0, "%s", err);
    /* A key block whose DER is garbage. */
    static const char bad_key[] = "-----BEGIN PRIVATE KEY-----\nTUlJQmdhcmJhZ2U=\n"
                                  "-----END PRIVATE KEY-----\n";
    cr_assert_eq(cg_write_text(junk, bad_key, sizeof(bad_key) - 1), 0);
    o = fx_opts(&f);
    o.key_path = junk;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "cannot parse key %s: no usable private key (", junk);
    cr_assert_eq(strncmp(err, want, strlen(want)), 0, "%s", err);
    fx_free(&f);
}

Test(tls_server, load_key_mismatch)
{
    struct fx f;
    fx_make(&f);
    char other[256], err[512], want[600];
    write_key(tmp_path(other, sizeof(other), "other.key"), f.client_ca.key);
    struct tlsw_server_opts o = fx_opts(&f);
    o.key_path = other;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "key %s does not match certificate %s", other, f.cert);
    cr_assert_str_eq(err, want);
    fx_free(&f);
}

Test(tls_server, load_key_of_another_type)
{
    struct fx f;
    fx_make(&f);
    char other[256], err[512], want[600];
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    cr_assert_not_null(rsa);
    write_key(tmp_path(other, sizeof(other), "rsa.key"), rsa);
    EVP_PKEY_free(rsa);
    struct tlsw_server_opts o = fx_opts(&f);
    o.key_path = other;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "key %s does not match certificate %s", other, f.cert);
    cr_assert_str_eq(err, want);
    fx_free(&f);
}

static void load_dated_leaf(long not_before_days, long not_after_days, char *err, size_t cap,
                            char *path, size_t pcap)
{
    struct fx f;
    fx_make(&f);
    struct cg_spec spec = CG_LEAF;
    spec.not_before_days = not_before_days;
    spec.not_after_days = not_after_days;
    struct cg_cert leaf = {0};
    cr_assert_eq(cg_issue(&leaf, &spec, &f.pki.inter), 0);
    tmp_path(path, pcap, "dated.pem");
    X509 *chain[] = {leaf.cert, f.pki.inter.cert};
    cr_assert_eq(cg_write_bundle(path, chain, 2), 0);
    char key[256];
    write_key(tmp_path(key, sizeof(key), "dated.key"), leaf.key);
    server_load_fail(&(struct tlsw_server_opts){.cert_path = path, .key_path = key}, err, cap);
    cg_free(&leaf);
    fx_free(&f);
}

Test(tls_server, load_expired_leaf)
{
    char err[512], path[256], day[32], want[600];
    load_dated_leaf(-60, -2, err, sizeof(err), path, sizeof(path));
    day_of(time(NULL) - 2 * CG_DAY, day, sizeof(day));
    snprintf(want, sizeof(want), "certificate %s has expired (notAfter %s)", path, day);
    cr_assert_str_eq(err, want);
}

Test(tls_server, load_not_yet_valid_leaf)
{
    char err[512], path[256], day[32], want[600];
    load_dated_leaf(3, 90, err, sizeof(err), path, sizeof(path));
    day_of(time(NULL) + 3 * CG_DAY, day, sizeof(day));
    snprintf(want, sizeof(want), "certificate %s is not valid yet (notBefore %s)", path, day);
    cr_assert_str_eq(err, want);
}

static void load_encrypted_key(bool traditional)
{
    struct fx f;
    fx_make(&f);
    char path[256], err[512], want[600];
    BIO *b = BIO_new_file(tmp_path(path, sizeof(path), "enc.key"), "w");
    cr_assert_not_null(b);
    unsigned char pass[] = "secret";
    /* PKCS#8 "ENCRYPTED PRIVATE KEY", or the older "Proc-Type: 4,ENCRYPTED" headers. */
    int ok =
        traditional
            ? PEM_write_bio_PrivateKey_traditional(b, f.pki.leaf.key, EVP_aes_256_cbc(), pass, 6,
                                                   NULL, NULL)
            : PEM_write_bio_PrivateKey(b, f.pki.leaf.key, EVP_aes_256_cbc(), pass, 6, NULL, NULL);
    cr_assert_eq(ok, 1);
    BIO_free(b);
    struct tlsw_server_opts o = fx_opts(&f);
    o.key_path = path;
    server_load_fail(&o, err, sizeof(err)); /* and no prompt on the terminal */
    snprintf(want, sizeof(want),
             "key %s is encrypted, and dbtrust does not ask for pass phrases: store it "
             "unencrypted, readable by dbtrust only",
             path);
    cr_assert_str_eq(err, want);
    fx_free(&f);
}

Test(tls_server, load_encrypted_key_pkcs8)
{
    load_encrypted_key(false);
}

Test(tls_server, load_encrypted_key_traditional)
{
    load_encrypted_key(true);
}

Test(tls_server, load_client_ca_without_certificates)
{
    struct fx f;
    fx_make(&f);
    char path[256], err[512], want[600];
    cr_assert_eq(cg_write_text(tmp_path(path, sizeof(path), "empty.pem"), "", 0), 0);
    struct tlsw_server_opts o = fx_opts(&f);
    o.ca_path = path;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "no certificate in client CA %s", path);
    cr_assert_str_eq(err, want);
    /* A key is not a CA either. */
    o.ca_path = f.key;
    server_load_fail(&o, err, sizeof(err));
    snprintf(want, sizeof(want), "no certificate in client CA %s", f.key);
    cr_assert_str_eq(err, want);
    fx_free(&f);
}

Test(tls_server, load_bad_options)
{
    struct fx f;
    fx_make(&f);
    char err[512];
    struct tlsw_server_opts o = fx_opts(&f);
    o.min_tls_version = TLS1_1_VERSION;
    server_load_fail(&o, err, sizeof(err));
    cr_assert_str_eq(err, "unsupported minimum TLS version 0x0302 (TLS 1.2 or 1.3 only)");
    o = fx_opts(&f);
    o.ca_path = NULL;
    o.names = "app1.internal";
    server_load_fail(&o, err, sizeof(err));
    cr_assert_str_eq(err, "client_names needs client_ca");
    o = fx_opts(&f);
    o.names = " , ,";
    server_load_fail(&o, err, sizeof(err));
    cr_assert_str_eq(err, "client_names has no name");
    server_load_fail(&(struct tlsw_server_opts){.cert_path = f.cert}, err, sizeof(err));
    cr_assert_str_eq(err, "a serving identity needs a certificate and a key file");
    server_load_fail(NULL, err, sizeof(err));
    /* The certificates and the key in one file, either order; names "" (any client): fine. */
    for (int key_first = 0; key_first < 2; key_first++) {
        char both[256];
        FILE *fp = fopen(tmp_path(both, sizeof(both), "both.pem"), "w");
        cr_assert_not_null(fp);
        if (key_first)
            cr_assert_eq(PEM_write_PrivateKey(fp, f.pki.leaf.key, NULL, NULL, 0, NULL, NULL), 1);
        cr_assert_eq(PEM_write_X509(fp, f.pki.leaf.cert), 1);
        cr_assert_eq(PEM_write_X509(fp, f.pki.inter.cert), 1);
        if (!key_first)
            cr_assert_eq(PEM_write_PrivateKey(fp, f.pki.leaf.key, NULL, NULL, 0, NULL, NULL), 1);
        cr_assert_eq(fclose(fp), 0);
        struct tlsw_server *s = server_load_ok(
            &(struct tlsw_server_opts){.cert_path = both, .key_path = both, .names = ""});
        tlsw_server_unref(s);
    }
    fx_free(&f);
}

/* ---- identity metadata and lifetime --------------------------------------------------------- */

Test(tls_server, leaf_metadata)
{
    struct fx f;
    fx_make(&f);
    struct tlsw_server_opts o = fx_opts(&f);
    struct tlsw_server *s = server_load_ok(&o);
    const struct tlsw_cert_info *leaf = tlsw_server_leaf(s);
    cr_assert_str_eq(leaf->subject, "CN=localhost,O=dbtrust test");
    cr_assert_str_eq(leaf->issuer, "CN=Test Intermediate,O=dbtrust test");
    cr_assert_not(leaf->is_ca);
    time_t now = time(NULL);
    cr_assert(leaf->not_after > now + 89 * CG_DAY && leaf->not_after < now + 91 * CG_DAY);
    unsigned char md[32];
    unsigned int mdlen = 0;
    char hex[65];
    cr_assert_eq(X509_digest(f.pki.leaf.cert, EVP_sha256(), md, &mdlen), 1);
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    cr_assert_str_eq(leaf->sha256, hex, "the fingerprint of the DER");
    tlsw_server_unref(s);
    fx_free(&f);
}

Test(tls_server, sha256_follows_the_three_files)
{
    struct fx f;
    fx_make(&f);
    struct tlsw_server_opts o = fx_opts(&f);
    struct tlsw_server *a = server_load_ok(&o);
    const char *ha = tlsw_server_sha256(a);
    cr_assert_eq(strlen(ha), 64);
    cr_assert_eq(strspn(ha, "0123456789abcdef"), 64);

    /* The same bytes again, also rewritten: the same hash (a no-op reload). */
    struct tlsw_server *b = server_load_ok(&o);
    cr_assert_str_eq(tlsw_server_sha256(b), ha);
    tlsw_server_unref(b);
    cr_assert_eq(cg_write_bundle(f.ca, &f.client_ca.cert, 1), 0);
    b = server_load_ok(&o);
    cr_assert_str_eq(tlsw_server_sha256(b), ha);
    tlsw_server_unref(b);

    /* Each file counts: another CA, no CA, another key and certificate. */
    X509 *two[] = {f.client_ca.cert, f.other_ca.cert};
    cr_assert_eq(cg_write_bundle(f.ca, two, 2), 0);
    b = server_load_ok(&o);
    cr_assert_str_neq(tlsw_server_sha256(b), ha);
    tlsw_server_unref(b);
    o.ca_path = NULL;
    b = server_load_ok(&o);
    cr_assert_str_neq(tlsw_server_sha256(b), ha);
    tlsw_server_unref(b);
    struct cg_cert leaf2 = {0};
    cr_assert_eq(cg_issue(&leaf2, &CG_LEAF, &f.pki.inter), 0);
    X509 *chain[] = {leaf2.cert, f.pki.inter.cert};
    cr_assert_eq(cg_write_bundle(f.cert, chain, 2), 0);
    write_key(f.key, leaf2.key);
    o = fx_opts(&f);
    cr_assert_eq(cg_write_bundle(f.ca, &f.client_ca.cert, 1), 0);
    b = server_load_ok(&o);
    cr_assert_str_neq(tlsw_server_sha256(b), ha);
    cr_assert_str_neq(tlsw_server_leaf(b)->sha256, tlsw_server_leaf(a)->sha256);
    tlsw_server_unref(b);
    cg_free(&leaf2);
    tlsw_server_unref(a);
    fx_free(&f);
}

Test(tls_server, connection_outlives_identity_reference)
{
    struct fx f;
    fx_make(&f);
    struct tlsw_server_opts o = fx_opts(&f);
    o.names = "app1.internal";
    struct tlsw_server *s = server_load_ok(&o);
    struct tlsw_conn *c = tlsw_conn_new_server(s, NULL, 0, false);
    cr_assert_not_null(c);
    tlsw_server_unref(s); /* a reload published a new identity: the connection keeps this one */
    struct cg_cert cert = {0};
    cr_assert_eq(cg_issue(&cert, &CLIENT_APP1, &f.client_ca), 0);
    struct raw_client cl;
    raw_client_start(&cl, &f, &cert, NULL, 0, 0);
    cr_assert_eq(pump_raw(c, &cl), TLSW_OK);
    cr_assert_str_eq(tlsw_conn_peer_name(c), "app1.internal", "client_names still readable");
    tlsw_conn_free(c); /* frees the identity (ASan/LSan watch) */
    raw_client_free(&cl);
    cg_free(&cert);
    fx_free(&f);
}

Test(tls_server, refcount_pairs)
{
    struct fx f;
    fx_make(&f);
    struct tlsw_server_opts o = fx_opts(&f);
    struct tlsw_server *s = server_load_ok(&o);
    for (int i = 0; i < 3; i++)
        tlsw_server_ref(s);
    for (int i = 0; i < 3; i++)
        tlsw_server_unref(s);
    cr_assert_str_eq(tlsw_server_leaf(s)->subject, "CN=localhost,O=dbtrust test", "still alive");
    tlsw_server_unref(s); /* the last: frees (LSan reports it otherwise) */
    tlsw_server_unref(NULL);
    fx_free(&f);
}

static int hammer(void *arg)
{
    struct tlsw_server *s = arg;
    for (int i = 0; i < 20000; i++) {
        tlsw_server_ref(s);
        tlsw_server_unref(s);
    }
    tlsw_server_unref(s); /* the reference the spawner took for this thread */
    return 0;
}

Test(tls_server, refcount_across_threads)
{
    struct fx f;
    fx_make(&f);
    struct tlsw_server_opts o = fx_opts(&f);
    struct tlsw_server *s = server_load_ok(&o);
    thrd_t t[4];
    for (int i = 0; i < 4; i++) {
        tlsw_server_ref(s);
        cr_assert_eq(thrd_create(&t[i], hammer, s), thrd_success);
    }
    tlsw_server_unref(s); /* the last thread to finish frees it */
    for (int i = 0; i < 4; i++)
        cr_assert_eq(thrd_join(t[i], NULL), thrd_success);
    fx_free(&f);
}
