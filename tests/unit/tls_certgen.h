/* Test certificates generated at test time with OpenSSL (EC P-256: fast), so no fixture file can
 * silently expire. Header-only: each tests/unit/test_*.c is its own executable. */
#ifndef TLS_CERTGEN_H
#define TLS_CERTGEN_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define CG_DAY (24L * 60 * 60)

/* A key and its certificate. */
struct cg_cert {
    EVP_PKEY *key;
    X509 *cert;
};

struct cg_spec {
    const char *cn;
    const char *san; /* "DNS:localhost,IP:127.0.0.1" or NULL */
    bool ca;
    long not_before_days; /* relative to now, may be negative */
    long not_after_days;
    /* extendedKeyUsage of a leaf, NULL = "serverAuth"; client certificates need "clientAuth"
     * (OpenSSL checks the purpose of a TLS client's certificate). */
    const char *eku;
};

static inline int cg_add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (ext == NULL)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : -1;
}

/* Issues a certificate for spec, signed by issuer (NULL = self-signed). Returns 0 on success. */
static inline int cg_issue(struct cg_cert *out, const struct cg_spec *spec,
                           const struct cg_cert *issuer)
{
    static long serial = 1000;
    out->key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    out->cert = X509_new();
    if (out->key == NULL || out->cert == NULL)
        return -1;
    X509 *x = out->cert;
    X509 *ix = issuer != NULL ? issuer->cert : x;
    EVP_PKEY *ikey = issuer != NULL ? issuer->key : out->key;

    if (X509_set_version(x, X509_VERSION_3) != 1 ||
        ASN1_INTEGER_set(X509_get_serialNumber(x), serial++) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), spec->not_before_days * CG_DAY) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), spec->not_after_days * CG_DAY) == NULL ||
        X509_set_pubkey(x, out->key) != 1)
        return -1;
    X509_NAME *name = X509_get_subject_name(x);
    if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"dbtrust test",
                                   -1, -1, 0) != 1 ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)spec->cn, -1,
                                   -1, 0) != 1)
        return -1;
    if (X509_set_issuer_name(x, X509_get_subject_name(ix)) != 1)
        return -1;
    if (cg_add_ext(x, ix, NID_subject_key_identifier, "hash") != 0 ||
        cg_add_ext(x, ix, NID_authority_key_identifier, "keyid:always") != 0)
        return -1;
    if (spec->ca) {
        if (cg_add_ext(x, ix, NID_basic_constraints, "critical,CA:TRUE") != 0 ||
            cg_add_ext(x, ix, NID_key_usage, "critical,keyCertSign,cRLSign") != 0)
            return -1;
    } else {
        if (cg_add_ext(x, ix, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
            cg_add_ext(x, ix, NID_key_usage, "critical,digitalSignature") != 0 ||
            cg_add_ext(x, ix, NID_ext_key_usage, spec->eku != NULL ? spec->eku : "serverAuth") != 0)
            return -1;
    }
    if (spec->san != NULL && cg_add_ext(x, ix, NID_subject_alt_name, spec->san) != 0)
        return -1;
    return X509_sign(x, ikey, EVP_sha256()) > 0 ? 0 : -1;
}

static inline void cg_free(struct cg_cert *c)
{
    EVP_PKEY_free(c->key);
    X509_free(c->cert);
    c->key = NULL;
    c->cert = NULL;
}

/* The usual test PKI: a root, an intermediate under it, a server certificate for localhost. */
static const struct cg_spec CG_ROOT = {
    .cn = "Test Root", .ca = true, .not_before_days = -10, .not_after_days = 3650};
static const struct cg_spec CG_INTER = {
    .cn = "Test Intermediate", .ca = true, .not_before_days = -10, .not_after_days = 1000};
static const struct cg_spec CG_LEAF = {
    .cn = "localhost", .san = "DNS:localhost", .not_before_days = -1, .not_after_days = 90};

/* root -> intermediate -> leaf, plus an unrelated root for "untrusted". */
struct cg_pki {
    struct cg_cert root, inter, leaf, other_root;
};

/* Issues the PKI with leaf as the leaf's spec (usually &CG_LEAF). Returns 0 on success. */
static inline int cg_pki_make(struct cg_pki *p, const struct cg_spec *leaf)
{
    const struct cg_spec other = {
        .cn = "Other Root", .ca = true, .not_before_days = -10, .not_after_days = 3650};
    memset(p, 0, sizeof(*p));
    if (cg_issue(&p->root, &CG_ROOT, NULL) != 0 || cg_issue(&p->inter, &CG_INTER, &p->root) != 0 ||
        cg_issue(&p->leaf, leaf, &p->inter) != 0)
        return -1;
    return cg_issue(&p->other_root, &other, NULL);
}

static inline void cg_pki_free(struct cg_pki *p)
{
    cg_free(&p->root);
    cg_free(&p->inter);
    cg_free(&p->leaf);
    cg_free(&p->other_root);
}

/* Writes the certificates (n of them) as one PEM bundle. */
static inline int cg_write_bundle(const char *path, X509 *const *certs, size_t n)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    int ret = 0;
    for (size_t i = 0; i < n; i++) {
        /* Text between blocks, as in real bundles: must be skipped by the loader. */
        fprintf(f, "# certificate %zu\n", i);
        if (PEM_write_X509(f, certs[i]) != 1)
            ret = -1;
    }
    if (fclose(f) != 0)
        ret = -1;
    return ret;
}

static inline int cg_write_text(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    size_t n = fwrite(data, 1, len, f);
    return fclose(f) == 0 && n == len ? 0 : -1;
}

#endif
