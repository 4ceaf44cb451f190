/* Serving identities (PROTOCOLS.md part C): dbtrust as the TLS server of the client leg. One
 * identity is the certificate chain and key dbtrust presents, the optional client CA and
 * accepted client names, and the server SSL_CTX built from them. Immutable and refcounted like a
 * trust generation, so a reload publishes a new one while live connections keep theirs. The
 * handshake callbacks of the server role (ALPN, client certificate names) live here too. */
#define TLSW_INTERNAL
#include "tlsw.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

struct tlsw_server {
    atomic_size_t refs;
    SSL_CTX *ctx;
    char *names; /* client_names; NULL: any client certificate that verifies */
    struct tlsw_cert_info leaf;
    char sha256[65];
};

/* The three files as read once: everything (hash, parse, checks) sees the same bytes even if
 * they are being rewritten. */
struct server_files {
    unsigned char *cert, *key, *ca;
    size_t cert_len, key_len, ca_len;
};

/* ---- handshake callbacks -------------------------------------------------------------------- */

static bool ascii_case_equal(const unsigned char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y - 'A' + 'a');
        if (x != y)
            return false;
    }
    return true;
}

enum name_kind { NAME_DNS, NAME_URI, NAME_CN };

/* Whether a name of the certificate equals an entry of client_names ("a, b, CN=c"). Lengths are
 * compared first, so a certificate name with an embedded NUL never matches a shorter entry. */
static bool name_listed(const char *names, enum name_kind kind, const unsigned char *v, size_t n)
{
    for (const char *p = names; *p;) {
        p += strspn(p, " \t,");
        size_t len = strcspn(p, ",");
        const char *next = p + len;
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        bool cn_entry = len >= 3 && ascii_case_equal((const unsigned char *)p, "cn=", 3);
        if (kind == NAME_CN && cn_entry && len - 3 == n && memcmp(p + 3, v, n) == 0)
            return true;
        /* DNS names compare case-insensitively (RFC 4343), URIs exactly. */
        if (kind == NAME_DNS && !cn_entry && len == n && ascii_case_equal(v, p, n))
            return true;
        if (kind == NAME_URI && !cn_entry && len == n && memcmp(p, v, n) == 0)
            return true;
        p = next;
    }
    return false;
}

/* Names of a client certificate as the check saw them: the accepted one, else the first (the
 * connection's peer name), and all of them for a refusal's detail. */
struct name_check {
    bool accepted;
    char peer[256];
    char list[512];
};

static void consider(struct name_check *nc, const char *names, enum name_kind kind,
                     const unsigned char *v, size_t n)
{
    char shown[256];
    tlsw_printable(shown, sizeof(shown), v, n);
    if (kind == NAME_CN) {
        char entry[sizeof(shown) + 3];
        snprintf(entry, sizeof(entry), "CN=%s", shown);
        tlsw_append_name(nc->list, sizeof(nc->list), entry);
    } else {
        tlsw_append_name(nc->list, sizeof(nc->list), shown);
    }
    if (!nc->accepted && names != NULL && name_listed(names, kind, v, n)) {
        nc->accepted = true;
        dbt_strlcpy(nc->peer, shown, sizeof(nc->peer));
    } else if (nc->peer[0] == '\0') {
        dbt_strlcpy(nc->peer, shown, sizeof(nc->peer));
    }
}

/* PROTOCOLS.md C3: any DNS or URI SAN listed in client_names, or, only for a certificate without
 * such SANs, a subject CN listed as "CN=x". As in host name checks (RFC 6125 6.4.4), the CN is
 * not looked at once SANs say what the certificate is for. */
static void check_names(const char *names, X509 *leaf, struct name_check *nc)
{
    memset(nc, 0, sizeof(*nc));
    nc->accepted = names == NULL;
    int found = -1;
    GENERAL_NAMES *gens = X509_get_ext_d2i(leaf, NID_subject_alt_name, &found, NULL);
    /* Present but undecodable (or twice): no name can be trusted, the CN no more than the rest. */
    bool have_san = gens == NULL && found != -1;
    if (have_san)
        tlsw_append_name(nc->list, sizeof(nc->list), "(unreadable subjectAltName)");
    for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        if (gn->type != GEN_DNS && gn->type != GEN_URI)
            continue;
        const ASN1_IA5STRING *s =
            gn->type == GEN_DNS ? gn->d.dNSName : gn->d.uniformResourceIdentifier;
        consider(nc, names, gn->type == GEN_DNS ? NAME_DNS : NAME_URI, ASN1_STRING_get0_data(s),
                 (size_t)ASN1_STRING_length(s));
        have_san = true;
    }
    GENERAL_NAMES_free(gens);
    if (have_san)
        return;

    const X509_NAME *subject = X509_get_subject_name(leaf);
    int idx = -1;
    while ((idx = X509_NAME_get_index_by_NID(subject, NID_commonName, idx)) >= 0) {
        unsigned char *utf8 = NULL;
        int len =
            ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
        if (len >= 0)
            consider(nc, names, NAME_CN, utf8, (size_t)len);
        OPENSSL_free(utf8);
    }
}

/* SSL_CTX_set_cert_verify_callback: OpenSSL's chain verification, then client_names on a chain
 * that verified. Refusing here, inside the handshake, sends the client an alert instead of a
 * completed handshake followed by a hang-up; the per-certificate errors were recorded by
 * tlsw_verify_cb on the way. */
static int on_verify_chain(X509_STORE_CTX *sctx, void *arg)
{
    const struct tlsw_server *s = arg;
    int ok = X509_verify_cert(sctx);
    if (ok <= 0)
        return ok;
    SSL *ssl = X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct tlsw_app_data *app = ssl != NULL ? SSL_get_app_data(ssl) : NULL;
    struct tlsw_server_hs *h = app != NULL ? app->srv : NULL;
    struct tlsw_verify_rec *r = app != NULL ? app->vrec : NULL;
    X509 *leaf = X509_STORE_CTX_get0_cert(sctx);
    struct name_check nc;
    check_names(s->names, leaf, &nc);
    if (h != NULL)
        dbt_strlcpy(h->peer_name, nc.peer, sizeof(h->peer_name));
    if (nc.accepted)
        return 1;
    if (r != NULL) {
        r->err = X509_V_ERR_APPLICATION_VERIFICATION;
        r->depth = 0;
        tlsw_name_oneline(X509_get_subject_name(leaf), r->subject, sizeof(r->subject));
        dbt_strlcpy(r->leaf_names, nc.list, sizeof(r->leaf_names));
        r->have_leaf = true;
    }
    X509_STORE_CTX_set_error_depth(sctx, 0);
    X509_STORE_CTX_set_current_cert(sctx, leaf);
    X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

/* SSL_CTX_set_alpn_select_cb: the connection's one protocol, if the client offers it. A client
 * that asked for something else must not get a database server (what PostgreSQL's own
 * alpn_cb does; RFC 7301 3.2: no_application_protocol). Without a protocol of our own, the
 * offer is ignored. OpenSSL has checked the list's framing before calling. */
static int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    struct tlsw_app_data *app = SSL_get_app_data(ssl);
    struct tlsw_server_hs *h = app != NULL ? app->srv : NULL;
    if (h == NULL || h->alpn[0] == 0)
        return SSL_TLSEXT_ERR_NOACK;
    h->alpn_offered[0] = '\0';
    for (unsigned int i = 0; i < inlen;) {
        unsigned int n = in[i];
        if (n == 0 || n > inlen - i - 1)
            break;
        if (n == h->alpn[0] && memcmp(in + i + 1, h->alpn + 1, n) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)n;
            return SSL_TLSEXT_ERR_OK;
        }
        char name[64];
        tlsw_printable(name, sizeof(name), in + i + 1, n);
        tlsw_append_name(h->alpn_offered, sizeof(h->alpn_offered), name);
        i += 1 + n;
    }
    h->alpn_refused = true;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* ---- loading -------------------------------------------------------------------------------- */

DBT_MUST_USE static int read_files(const struct tlsw_server_opts *o, struct server_files *f,
                                   char *err, size_t errlen)
{
    char ebuf[256];
    if (tlsw_read_file(o->cert_path, &f->cert, &f->cert_len, ebuf, sizeof(ebuf)) != 0) {
        tlsw_set_err(err, errlen, "cannot read certificate %s: %s", o->cert_path, ebuf);
        return -1;
    }
    if (tlsw_read_file(o->key_path, &f->key, &f->key_len, ebuf, sizeof(ebuf)) != 0) {
        tlsw_set_err(err, errlen, "cannot read key %s: %s", o->key_path, ebuf);
        return -1;
    }
    if (o->ca_path != NULL &&
        tlsw_read_file(o->ca_path, &f->ca, &f->ca_len, ebuf, sizeof(ebuf)) != 0) {
        tlsw_set_err(err, errlen, "cannot read client CA %s: %s", o->ca_path, ebuf);
        return -1;
    }
    return 0;
}

static void free_files(struct server_files *f)
{
    if (f->key != NULL)
        dbt_wipe(f->key, f->key_len); /* private key material: not left in freed heap */
    free(f->cert);
    free(f->key);
    free(f->ca);
}

DBT_MUST_USE static int digest_part(EVP_MD_CTX *md, const unsigned char *data, size_t len,
                                    bool present)
{
    unsigned char frame[9];
    frame[0] = present ? 1 : 0;
    for (int i = 0; i < 8; i++)
        frame[1 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    if (EVP_DigestUpdate(md, frame, sizeof(frame)) != 1)
        return -1;
    return len == 0 || EVP_DigestUpdate(md, data, len) == 1 ? 0 : -1;
}

/* Each file is framed (present or not, its length) before its bytes, so that bytes moving from
 * one file to the next, or a CA file appearing, cannot leave the hash unchanged. */
DBT_MUST_USE static int hash_files(const struct server_files *f, char out[65])
{
    int ret = -1;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        digest_part(ctx, f->cert, f->cert_len, true) != 0 ||
        digest_part(ctx, f->key, f->key_len, true) != 0 ||
        digest_part(ctx, f->ca, f->ca_len, f->ca != NULL) != 0 ||
        EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32)
        goto out;
    tlsw_hex_encode(md, mdlen, out);
    ret = 0;
out:
    EVP_MD_CTX_free(ctx);
    return ret;
}

DBT_MUST_USE static int build_ctx(struct tlsw_server *s, int min_version, char *err, size_t errlen)
{
    char ebuf[256];
    ERR_clear_error();
    s->ctx = SSL_CTX_new(TLS_server_method());
    if (s->ctx == NULL) {
        tlsw_set_err(err, errlen, "cannot create TLS context: %s",
                     tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
        return -1;
    }
    if (SSL_CTX_set_min_proto_version(s->ctx, min_version) != 1) {
        tlsw_set_err(err, errlen, "cannot set minimum TLS version: %s",
                     tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
        return -1;
    }
    /* Compression: CRIME. Renegotiation: a client could otherwise swap certificates after its
     * first one was checked, and it costs the server a handshake on the client's whim. */
    SSL_CTX_set_options(s->ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
    /* No tickets, no session cache: database drivers such as libpq build a fresh SSL_CTX for
     * every connection and never resume, so a TLS 1.3 ticket would cost every handshake its
     * encryption and a record for nothing, and a cache would only hold memory. It also means
     * every client certificate is checked, always against the current client_ca: a resumption
     * would skip that. */
    SSL_CTX_set_num_tickets(s->ctx, 0);
    SSL_CTX_set_session_cache_mode(s->ctx, SSL_SESS_CACHE_OFF);
    /* As on the client contexts: the transport BIO never refuses a write, so writes may be split
     * across records and retried from a moved buffer; idle connections hold no record
     * buffers. */
    SSL_CTX_set_mode(s->ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_alpn_select_cb(s->ctx, on_alpn_select, NULL);
    return 0;
}

/* pem_password_cb for the key: never prompt. OpenSSL's default callback would read a pass
 * phrase from the terminal, which blocks a daemon (or a reload) forever. */
static int on_passphrase(char *buf, int size, int rwflag, void *u)
{
    *(bool *)u = true;
    return -1;
}

/* Whether the file has a PEM block of a private key at all ("PRIVATE KEY", "EC PRIVATE KEY",
 * "ENCRYPTED PRIVATE KEY"...): for a file without one, OpenSSL's decoder only says
 * "unsupported", which tells an operator nothing. */
static bool has_key_block(const unsigned char *data, size_t len)
{
    bool found = false;
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    while (bio != NULL && !found) {
        char *name = NULL, *header = NULL;
        unsigned char *der = NULL;
        long derlen = 0;
        if (PEM_read_bio(bio, &name, &header, &der, &derlen) != 1)
            break;
        found = strstr(name, "PRIVATE KEY") != NULL;
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_clear_free(der, (size_t)derlen);
    }
    BIO_free(bio);
    ERR_clear_error();
    return found;
}

DBT_MUST_USE static EVP_PKEY *read_key(const unsigned char *data, size_t len, const char *path,
                                       char *err, size_t errlen)
{
    char ebuf[256];
    bool asked = false;
    if (!has_key_block(data, len)) {
        tlsw_set_err(err, errlen, "no private key in %s", path);
        return NULL;
    }
    ERR_clear_error();
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    EVP_PKEY *pkey = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, on_passphrase, &asked) : NULL;
    BIO_free(bio);
    if (pkey != NULL) {
        ERR_clear_error();
        return pkey;
    }
    if (asked)
        tlsw_set_err(err, errlen,
                     "key %s is encrypted, and dbtrust does not ask for pass phrases: store it "
                     "unencrypted, readable by dbtrust only",
                     path);
    else
        tlsw_set_err(err, errlen, "cannot parse key %s: no usable private key (%s)", path,
                     tlsw_openssl_reason(ebuf, sizeof(ebuf), "unknown error"));
    ERR_clear_error();
    return NULL;
}

/* A server certificate outside its validity period fails every handshake: refusing it keeps
 * the previous identity in place instead. */
DBT_MUST_USE static int check_leaf_dates(X509 *leaf, const struct tlsw_cert_info *ci,
                                         const char *path, char *err, size_t errlen)
{
    char day[32];
    if (X509_cmp_current_time(X509_get0_notBefore(leaf)) != -1) {
        tlsw_format_day(ci->not_before, day, sizeof(day));
        tlsw_set_err(err, errlen, "certificate %s is not valid yet (notBefore %s)", path, day);
        return -1;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) != 1) {
        tlsw_format_day(ci->not_after, day, sizeof(day));
        tlsw_set_err(err, errlen, "certificate %s has expired (notAfter %s)", path, day);
        return -1;
    }
    return 0;
}

/* The leaf and its intermediates as the chain dbtrust presents, leaf first. */
DBT_MUST_USE static int use_chain(struct tlsw_server *s, STACK_OF(X509) * chain, const char *path,
                                  char *err, size_t errlen)
{
    char ebuf[256];
    ERR_clear_error();
    if (SSL_CTX_use_certificate(s->ctx, sk_X509_value(chain, 0)) != 1) {
        tlsw_set_err(err, errlen, "cannot use certificate %s: %s", path,
                     tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
        return -1;
    }
    for (int i = 1; i < sk_X509_num(chain); i++) {
        if (SSL_CTX_add1_chain_cert(s->ctx, sk_X509_value(chain, i)) != 1) {
            tlsw_set_err(err, errlen, "cannot use certificate %d of %s: %s", i + 1, path,
                         tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
            return -1;
        }
    }
    return 0;
}

/* The key, which must be the leaf's: checked before the context sees it, since OpenSSL would
 * quietly drop the certificate of a mismatching key and then report something vaguer. */
DBT_MUST_USE static int use_key(struct tlsw_server *s, X509 *leaf, const struct tlsw_server_opts *o,
                                const struct server_files *f, char *err, size_t errlen)
{
    int ret = -1;
    EVP_PKEY *pkey = read_key(f->key, f->key_len, o->key_path, err, errlen);
    if (pkey == NULL)
        return -1;
    if (X509_check_private_key(leaf, pkey) != 1 || SSL_CTX_use_PrivateKey(s->ctx, pkey) != 1 ||
        SSL_CTX_check_private_key(s->ctx) != 1) {
        tlsw_set_err(err, errlen, "key %s does not match certificate %s", o->key_path,
                     o->cert_path);
        goto out;
    }
    ret = 0;
out:
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return ret;
}

/* The certificate file (leaf first, then its intermediates) and the key. */
DBT_MUST_USE static int use_identity(struct tlsw_server *s, const struct tlsw_server_opts *o,
                                     const struct server_files *f, char *err, size_t errlen)
{
    int ret = -1;
    char ebuf[256];
    STACK_OF(X509) *chain = tlsw_read_certs(f->cert, f->cert_len, o->cert_path, err, errlen);
    if (chain == NULL)
        return -1;
    if (sk_X509_num(chain) == 0) {
        tlsw_set_err(err, errlen, "no certificate in %s", o->cert_path);
        goto out;
    }
    X509 *leaf = sk_X509_value(chain, 0);
    if (tlsw_cert_info_fill(leaf, &s->leaf) != 0) {
        tlsw_set_err(err, errlen, "cannot read certificate %s: %s", o->cert_path,
                     tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
        goto out;
    }
    if (check_leaf_dates(leaf, &s->leaf, o->cert_path, err, errlen) != 0 ||
        use_chain(s, chain, o->cert_path, err, errlen) != 0 ||
        use_key(s, leaf, o, f, err, errlen) != 0)
        goto out;
    ret = 0;
out:
    sk_X509_pop_free(chain, X509_free); /* the context holds its own references */
    ERR_clear_error();
    return ret;
}

/* PROTOCOLS.md C3: clients must present a certificate that chains to this file's CAs; their
 * names go into the CertificateRequest so clients with several certificates pick the right one. */
DBT_MUST_USE static int use_client_ca(struct tlsw_server *s, const char *path,
                                      const unsigned char *data, size_t len, char *err,
                                      size_t errlen)
{
    int ret = -1;
    char ebuf[256];
    X509_STORE *store = NULL;
    STACK_OF(X509) *certs = tlsw_read_certs(data, len, path, err, errlen);
    if (certs == NULL)
        return -1;
    if (sk_X509_num(certs) == 0) {
        tlsw_set_err(err, errlen, "no certificate in client CA %s", path);
        goto out;
    }
    store = X509_STORE_new();
    if (store == NULL) {
        tlsw_set_err(err, errlen, "out of memory loading %s", path);
        goto out;
    }
    /* As for bundles: a chain must end at a self-signed CA of the file, never at an
     * intermediate that happens to be in it. */
    X509_VERIFY_PARAM_clear_flags(X509_STORE_get0_param(store), X509_V_FLAG_PARTIAL_CHAIN);
    for (int i = 0; i < sk_X509_num(certs); i++) {
        X509 *x = sk_X509_value(certs, i);
        if (X509_STORE_add_cert(store, x) != 1 || SSL_CTX_add_client_CA(s->ctx, x) != 1) {
            tlsw_set_err(err, errlen, "cannot add certificate %d of %s: %s", i + 1, path,
                         tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
            goto out;
        }
    }
    /* A verify store of its own, not the context's certificate store: OpenSSL completes the
     * chain dbtrust presents from the latter, and client CAs have no place in it. */
    SSL_CTX_set0_verify_cert_store(s->ctx, store);
    store = NULL;
    SSL_CTX_set_verify(s->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, tlsw_verify_cb);
    SSL_CTX_set_cert_verify_callback(s->ctx, on_verify_chain, s);
    ret = 0;
out:
    X509_STORE_free(store);
    sk_X509_pop_free(certs, X509_free);
    ERR_clear_error();
    return ret;
}

DBT_MUST_USE static int check_opts(const struct tlsw_server_opts *o, int *min_version, char *err,
                                   size_t errlen)
{
    if (o == NULL || o->cert_path == NULL || o->key_path == NULL) {
        tlsw_set_err(err, errlen, "a serving identity needs a certificate and a key file");
        return -1;
    }
    *min_version = o->min_tls_version != 0 ? o->min_tls_version : TLS1_2_VERSION;
    if (*min_version != TLS1_2_VERSION && *min_version != TLS1_3_VERSION) {
        tlsw_set_err(err, errlen, "unsupported minimum TLS version 0x%04x (TLS 1.2 or 1.3 only)",
                     (unsigned)*min_version);
        return -1;
    }
    bool have_names = o->names != NULL && o->names[0] != '\0';
    /* Names without a CA could never be checked; a list without an entry would refuse every
     * client. Both are configuration mistakes, not policies. */
    if (have_names && o->ca_path == NULL) {
        tlsw_set_err(err, errlen, "client_names needs client_ca");
        return -1;
    }
    if (have_names && o->names[strspn(o->names, " \t,")] == '\0') {
        tlsw_set_err(err, errlen, "client_names has no name");
        return -1;
    }
    return 0;
}

static void server_free(struct tlsw_server *s)
{
    if (s == NULL)
        return;
    SSL_CTX_free(s->ctx);
    free(s->names);
    free(s);
}

int tlsw_server_load(const struct tlsw_server_opts *o, struct tlsw_server **out, char *err,
                     size_t errlen)
{
    int ret = -1;
    int min_version = 0;
    struct server_files f = {0};
    struct tlsw_server *s = NULL;

    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (check_opts(o, &min_version, err, errlen) != 0 || read_files(o, &f, err, errlen) != 0)
        goto out;
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        tlsw_set_err(err, errlen, "out of memory loading %s", o->cert_path);
        goto out;
    }
    atomic_init(&s->refs, 1);
    if (o->names != NULL && o->names[0] != '\0' && (s->names = strdup(o->names)) == NULL) {
        tlsw_set_err(err, errlen, "out of memory loading %s", o->cert_path);
        goto out;
    }
    if (hash_files(&f, s->sha256) != 0) {
        tlsw_set_err(err, errlen, "cannot hash %s", o->cert_path);
        goto out;
    }
    if (build_ctx(s, min_version, err, errlen) != 0 || use_identity(s, o, &f, err, errlen) != 0)
        goto out;
    if (o->ca_path != NULL && use_client_ca(s, o->ca_path, f.ca, f.ca_len, err, errlen) != 0)
        goto out;
    *out = s;
    s = NULL;
    ret = 0;
out:
    server_free(s);
    free_files(&f);
    ERR_clear_error();
    return ret;
}

void tlsw_server_ref(struct tlsw_server *s)
{
    /* Taking a reference needs no ordering: the caller already holds one. */
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void tlsw_server_unref(struct tlsw_server *s)
{
    if (s == NULL)
        return;
    /* acq_rel: every other holder's use happens-before the free done by the last one. */
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        server_free(s);
}

const char *tlsw_server_sha256(const struct tlsw_server *s)
{
    return s->sha256;
}

const struct tlsw_cert_info *tlsw_server_leaf(const struct tlsw_server *s)
{
    return &s->leaf;
}

SSL_CTX *tlsw_server_ctx(const struct tlsw_server *s)
{
    return s->ctx;
}
