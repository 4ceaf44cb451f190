/* Trust generations (DESIGN.md "Trust generations and hot reload"): one CA bundle parsed into an
 * X509_STORE, its certificates' metadata, and the client SSL_CTX built on it. Immutable once
 * built; refcounted so a reload can publish a new one while live connections keep the old
 * (haproxy's model). */
#define TLSW_INTERNAL
#include "tlsw.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

struct tlsw_gen {
    atomic_size_t refs;
    SSL_CTX *ctx;
    enum tlsw_verify verify;
    struct tlsw_cert_info *certs;
    size_t cert_count;
    char sha256[65];
    char pins[2048];
    struct tlsw_crl_info *crls;
    size_t crl_count;
    char crl_sha256[65];
    bool crl_required;
    bool crl_stale_refuse;
};

static int sha256_hex(const unsigned char *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return -1;
    tlsw_hex_encode(md, mdlen, out);
    return 0;
}

/* The bundle's certificates into store and g->certs; its CRL blocks into crls, and the
 * certificates themselves into *out_certs (the issuers CRLs are checked against). */
static int load_certs(struct tlsw_gen *g, X509_STORE *store, const unsigned char *data, size_t len,
                      const char *path, struct tlsw_crl_list *crls, STACK_OF(X509) * *out_certs,
                      char *err, size_t errlen)
{
    int ret = -1;
    char ebuf[256];
    STACK_OF(X509) *certs = tlsw_read_certs_crls(data, len, path, crls, err, errlen);
    if (certs == NULL)
        return -1;
    size_t n = (size_t)sk_X509_num(certs);
    if (n == 0) {
        tlsw_set_err(err, errlen, "no certificate in bundle %s", path);
        goto out;
    }
    g->certs = calloc(n, sizeof(*g->certs));
    if (g->certs == NULL) {
        tlsw_set_err(err, errlen, "out of memory loading %s", path);
        goto out;
    }

    time_t now = time(NULL), newest = (time_t)-1;
    size_t live = 0;
    for (size_t i = 0; i < n; i++) {
        X509 *x = sk_X509_value(certs, (int)i);
        struct tlsw_cert_info *ci = &g->certs[g->cert_count];
        if (tlsw_cert_info_fill(x, ci) != 0) {
            tlsw_set_err(err, errlen, "cannot read certificate %zu of %s: %s", g->cert_count + 1,
                         path, tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
            goto out;
        }
        /* Duplicates are normal in merged bundles; OpenSSL 3 returns success for them. */
        if (X509_STORE_add_cert(store, x) != 1) {
            tlsw_set_err(err, errlen, "cannot add certificate %zu (%s) of %s: %s",
                         g->cert_count + 1, ci->subject, path,
                         tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
            goto out;
        }
        g->cert_count++;
        if (ci->not_after != (time_t)-1 && ci->not_after > newest)
            newest = ci->not_after;
        if (ci->not_after == (time_t)-1 || ci->not_after > now)
            live++;
    }
    /* A bundle of only expired roots cannot verify anything: refusing it keeps the previous
     * generation in place instead of failing every new connection. */
    if (live == 0) {
        char day[32];
        tlsw_format_day(newest, day, sizeof(day));
        tlsw_set_err(err, errlen, "all %zu certificates in %s have expired (latest notAfter %s)",
                     g->cert_count, path, day);
        goto out;
    }
    ret = 0;
out:
    if (ret == 0) {
        *out_certs = certs; /* the store holds its own references */
        return 0;
    }
    sk_X509_pop_free(certs, X509_free);
    return ret;
}

static bool is_delta(X509_CRL *c)
{
    ASN1_INTEGER *d = X509_CRL_get_ext_d2i(c, NID_delta_crl, NULL, NULL);
    bool delta = d != NULL;
    ASN1_INTEGER_free(d);
    return delta;
}

/* Index into kept of the CRL that c would replace or lose to: same issuer, same signing key,
 * same kind (a delta CRL never replaces its base). SIZE_MAX when none. */
static size_t same_scope(const struct tlsw_crl_list *kept, X509 *const *signers, X509_CRL *c,
                         X509 *signer, bool delta)
{
    for (size_t i = 0; i < kept->count; i++) {
        X509_CRL *k = kept->items[i].crl;
        if (is_delta(k) == delta && signers[i] == signer &&
            X509_NAME_cmp(X509_CRL_get_issuer(k), X509_CRL_get_issuer(c)) == 0)
            return i;
    }
    return SIZE_MAX;
}

/* Checks every CRL against the bundle's CAs (one that cannot be verified refuses the
 * generation: a forged or mis-delivered CRL must not fail connections later) and keeps the
 * newest per issuer (thisUpdate), as OpenSSL would prefer it anyway, so metrics and warnings
 * speak of the CRL actually in force. */
static int load_crls(struct tlsw_gen *g, X509_STORE *store, struct tlsw_crl_list *all,
                     STACK_OF(X509) * cas, char *err, size_t errlen)
{
    int ret = -1;
    char why[512], ebuf[256];
    struct tlsw_crl_list kept = {0};
    X509 **signers = calloc(all->count + 1, sizeof(*signers));
    if (signers == NULL) {
        tlsw_set_err(err, errlen, "out of memory loading CRLs");
        return -1;
    }
    for (size_t i = 0; i < all->count; i++) {
        X509_CRL *c = all->items[i].crl;
        X509 *signer = tlsw_crl_signer(c, cas, why, sizeof(why));
        if (signer == NULL) {
            tlsw_set_err(err, errlen, "CRL %zu (from %s) refused: %s", i + 1, all->items[i].source,
                         why);
            goto out;
        }
        size_t k = same_scope(&kept, signers, c, signer, is_delta(c));
        if (k != SIZE_MAX) {
            /* Equal thisUpdate: the first one read stays (bundle before the crl path). */
            if (ASN1_TIME_compare(X509_CRL_get0_lastUpdate(c),
                                  X509_CRL_get0_lastUpdate(kept.items[k].crl)) <= 0)
                continue;
            X509_CRL_free(kept.items[k].crl);
            kept.items[k] = all->items[i];
        } else {
            signers[kept.count] = signer;
            if (tlsw_crl_list_push(&kept, c, all->items[i].source) != 0) {
                all->items[i].crl = NULL;
                tlsw_set_err(err, errlen, "out of memory loading CRLs");
                goto out;
            }
        }
        all->items[i].crl = NULL; /* moved to kept */
    }
    g->crls = calloc(kept.count + 1, sizeof(*g->crls));
    if (g->crls == NULL) {
        tlsw_set_err(err, errlen, "out of memory loading CRLs");
        goto out;
    }
    for (size_t i = 0; i < kept.count; i++) {
        if (X509_STORE_add_crl(store, kept.items[i].crl) != 1) {
            tlsw_set_err(err, errlen, "cannot add CRL from %s: %s", kept.items[i].source,
                         tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
            goto out;
        }
        tlsw_crl_info_fill(kept.items[i].crl, signers[i], kept.items[i].source,
                           &g->crls[g->crl_count++]);
    }
    ret = 0;
out:
    tlsw_crl_list_free(&kept);
    free(signers);
    return ret;
}

/* With CRLs (or crl_required) every element of the chain is checked (CRL_CHECK_ALL: the leaf
 * alone would miss a revoked intermediate); delta CRLs are applied on top of their base. Without
 * either, nothing changes: no lookup per handshake. */
static void set_crl_flags(struct tlsw_gen *g, X509_STORE *store)
{
    if (g->crl_count == 0 && !g->crl_required)
        return;
    unsigned long flags = X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL;
    for (size_t i = 0; i < g->crl_count; i++)
        if (g->crls[i].delta)
            flags |= X509_V_FLAG_USE_DELTAS;
    X509_VERIFY_PARAM_set_flags(X509_STORE_get0_param(store), flags);
}

/* The CRLs of the bundle and of the crl path into store; hash of the crl path's files. */
static int load_revocation(struct tlsw_gen *g, X509_STORE *store, struct tlsw_crl_list *crls,
                           STACK_OF(X509) * cas, const struct tlsw_gen_opts *opts, char *err,
                           size_t errlen)
{
    int ret = -1;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    const char *path = opts != NULL ? opts->crl_path : NULL;
    EVP_MD_CTX *hash = NULL;

    g->crl_required = opts != NULL && opts->crl_required;
    g->crl_stale_refuse = opts != NULL && opts->crl_stale == TLSW_CRL_STALE_REFUSE;
    if (path != NULL && path[0] != '\0') {
        hash = EVP_MD_CTX_new();
        if (hash == NULL || EVP_DigestInit_ex(hash, EVP_sha256(), NULL) != 1) {
            tlsw_set_err(err, errlen, "cannot hash CRLs");
            goto out;
        }
        if (tlsw_crl_read_path(path, crls, hash, err, errlen) != 0)
            goto out;
        if (EVP_DigestFinal_ex(hash, md, &mdlen) != 1 || mdlen != 32) {
            tlsw_set_err(err, errlen, "cannot hash CRLs");
            goto out;
        }
        tlsw_hex_encode(md, mdlen, g->crl_sha256);
    }
    if (load_crls(g, store, crls, cas, err, errlen) != 0)
        goto out;
    set_crl_flags(g, store);
    ret = 0;
out:
    EVP_MD_CTX_free(hash);
    return ret;
}

/* SSL_CTX_sess_set_new_cb: a resumable session arrived (a TLS 1.3 ticket, or a TLS 1.2 session
 * at the end of its handshake); kept in the connection's app data for tlsw_conn_new_session. */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct tlsw_app_data *app = SSL_get_app_data(ssl);
    if (app == NULL)
        return 0;                  /* not ours: OpenSSL drops its reference */
    SSL_SESSION_free(app->ticket); /* a newer ticket replaces it (MariaDB sends two) */
    app->ticket = sess;
    return 1; /* the reference is ours now */
}

static int build_ctx(struct tlsw_gen *g, X509_STORE *store, int min_version, char *err,
                     size_t errlen)
{
    char ebuf[256];

    ERR_clear_error();
    g->ctx = SSL_CTX_new(TLS_client_method());
    if (g->ctx == NULL) {
        tlsw_set_err(err, errlen, "cannot create TLS context: %s",
                     tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
        return -1;
    }
    /* The context owns the store from here on, also on the error path below. */
    SSL_CTX_set_cert_store(g->ctx, store);
    if (SSL_CTX_set_min_proto_version(g->ctx, min_version) != 1) {
        tlsw_set_err(err, errlen, "cannot set minimum TLS version: %s",
                     tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
        return -1;
    }
    SSL_CTX_set_verify(g->ctx, SSL_VERIFY_PEER, tlsw_verify_cb);
    /* Compression: CRIME. Renegotiation: the upstream could otherwise swap certificates
     * mid-connection after we verified the first one. Tickets stay on: MySQL servers resume. */
    SSL_CTX_set_options(g->ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_clear_options(g->ctx, SSL_OP_NO_TICKET);
    /* The transport BIO never refuses a write, so a write may be split across records and
     * retried from a moved buffer; idle connections should not hold 2x16 KiB of record
     * buffers. */
    SSL_CTX_set_mode(g->ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Sessions to resume are kept by the proxy, per listener, upstream and generation (a new
     * trust store must not resume sessions verified under the old one), not in OpenSSL's
     * internal store, where every connection's session would pile up unused. */
    SSL_CTX_set_session_cache_mode(g->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(g->ctx, on_new_session);
    return 0;
}

int tlsw_gen_load(const char *bundle_path, const struct tlsw_gen_opts *opts, struct tlsw_gen **out,
                  char *err, size_t errlen)
{
    int ret = -1;
    unsigned char *data = NULL;
    size_t len = 0;
    X509_STORE *store = NULL;
    struct tlsw_gen *g = NULL;
    char ebuf[256];
    struct tlsw_crl_list crls = {0};
    STACK_OF(X509) *cas = NULL;

    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    enum tlsw_verify verify = opts != NULL ? opts->verify : TLSW_VERIFY_FULL;
    int min_version =
        opts != NULL && opts->min_tls_version != 0 ? opts->min_tls_version : TLS1_2_VERSION;
    if (min_version != TLS1_2_VERSION && min_version != TLS1_3_VERSION) {
        tlsw_set_err(err, errlen, "unsupported minimum TLS version 0x%04x (TLS 1.2 or 1.3 only)",
                     (unsigned)min_version);
        goto out;
    }
    if (verify != TLSW_VERIFY_FULL && verify != TLSW_VERIFY_CA) {
        tlsw_set_err(err, errlen, "invalid verify mode %d", (int)verify);
        goto out;
    }
    if (tlsw_read_file(bundle_path, &data, &len, ebuf, sizeof(ebuf)) != 0) {
        tlsw_set_err(err, errlen, "cannot read %s: %s", bundle_path, ebuf);
        goto out;
    }

    g = calloc(1, sizeof(*g));
    store = X509_STORE_new();
    if (g == NULL || store == NULL) {
        tlsw_set_err(err, errlen, "out of memory loading %s", bundle_path);
        goto out;
    }
    atomic_init(&g->refs, 1);
    g->verify = verify;
    if (opts != NULL && opts->pins != NULL) {
        if (strlen(opts->pins) >= sizeof(g->pins)) {
            tlsw_set_err(err, errlen, "pin list too long");
            goto out;
        }
        dbt_strlcpy(g->pins, opts->pins, sizeof(g->pins));
    }
    if (sha256_hex(data, len, g->sha256) != 0) {
        tlsw_set_err(err, errlen, "cannot hash %s: %s", bundle_path,
                     tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
        goto out;
    }
    /* Chains must end at a self-signed root of the bundle: with PARTIAL_CHAIN an intermediate
     * left in the bundle would become a trust anchor on its own. It is off by default; clearing
     * it says so and guards against a default changing under us. */
    X509_VERIFY_PARAM_clear_flags(X509_STORE_get0_param(store), X509_V_FLAG_PARTIAL_CHAIN);
    if (load_certs(g, store, data, len, bundle_path, &crls, &cas, err, errlen) != 0 ||
        load_revocation(g, store, &crls, cas, opts, err, errlen) != 0)
        goto out;

    X509_STORE *owned = store;
    store = NULL; /* build_ctx hands it to the SSL_CTX even when it fails */
    if (build_ctx(g, owned, min_version, err, errlen) != 0) {
        if (g->ctx == NULL)
            X509_STORE_free(owned);
        goto out;
    }
    *out = g;
    g = NULL;
    ret = 0;
out:
    if (g != NULL) {
        SSL_CTX_free(g->ctx);
        free(g->certs);
        free(g->crls);
        free(g);
    }
    tlsw_crl_list_free(&crls);
    sk_X509_pop_free(cas, X509_free);
    X509_STORE_free(store);
    free(data);
    ERR_clear_error();
    return ret;
}

void tlsw_gen_ref(struct tlsw_gen *g)
{
    /* Taking a reference needs no ordering: the caller already holds one. */
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
}

void tlsw_gen_unref(struct tlsw_gen *g)
{
    if (g == NULL)
        return;
    /* acq_rel: every other holder's use happens-before the free done by the last one. */
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1)
        return;
    SSL_CTX_free(g->ctx);
    free(g->certs);
    free(g->crls);
    free(g);
}

size_t tlsw_gen_crl_count(const struct tlsw_gen *g)
{
    return g->crl_count;
}

const struct tlsw_crl_info *tlsw_gen_crl(const struct tlsw_gen *g, size_t i)
{
    return i < g->crl_count ? &g->crls[i] : NULL;
}

const char *tlsw_gen_crl_sha256(const struct tlsw_gen *g)
{
    return g->crl_sha256;
}

bool tlsw_gen_crl_required(const struct tlsw_gen *g)
{
    return g->crl_required;
}

bool tlsw_gen_crl_stale_refuse(const struct tlsw_gen *g)
{
    return g->crl_stale_refuse;
}

size_t tlsw_gen_cert_count(const struct tlsw_gen *g)
{
    return g->cert_count;
}

const struct tlsw_cert_info *tlsw_gen_cert(const struct tlsw_gen *g, size_t i)
{
    return i < g->cert_count ? &g->certs[i] : NULL;
}

const char *tlsw_gen_sha256(const struct tlsw_gen *g)
{
    return g->sha256;
}

SSL_CTX *tlsw_gen_ctx(const struct tlsw_gen *g)
{
    return g->ctx;
}

const char *tlsw_gen_pins(const struct tlsw_gen *g)
{
    return g->pins;
}

enum tlsw_verify tlsw_gen_verify_mode(const struct tlsw_gen *g)
{
    return g->verify;
}
