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

/* ---- CRLs ----------------------------------------------------------------------------------- */

struct cg_crl_spec {
    long this_days;               /* thisUpdate relative to now (days, may be negative) */
    long next_days;               /* nextUpdate relative to now */
    bool no_next;                 /* no nextUpdate at all */
    long number;                  /* crlNumber, 0 = none */
    long delta_base;              /* > 0: a delta CRL on top of the CRL with this number */
    int reason;                   /* reason code of every entry, -1 = no reason extension */
    const struct cg_cert *signer; /* NULL: the issuer's own key; else this key forges it */
    /* A Freshest CRL extension: OpenSSL applies delta CRLs only to a base (or certificate) that
     * points at them with one. */
    bool freshest;
};

/* The usual fresh CRL: issued yesterday, next one due in 7 days, entries keyCompromise. */
static const struct cg_crl_spec CG_CRL = {
    .this_days = -1, .next_days = 7, .number = 1, .reason = 1};

static inline int cg_crl_add_int_ext(X509_CRL *crl, int nid, long v, int crit)
{
    ASN1_INTEGER *i = ASN1_INTEGER_new();
    int ok = i != NULL && ASN1_INTEGER_set(i, v) == 1 &&
             X509_CRL_add1_ext_i2d(crl, nid, i, crit, 0) == 1;
    ASN1_INTEGER_free(i);
    return ok ? 0 : -1;
}

/* A CRL in the name of issuer listing the n certificates of revoked (revoked an hour ago). */
static inline X509_CRL *cg_crl(const struct cg_cert *issuer, X509 *const *revoked, size_t n,
                               const struct cg_crl_spec *spec)
{
    X509_CRL *crl = X509_CRL_new();
    ASN1_TIME *t = NULL;
    if (crl == NULL || X509_CRL_set_version(crl, X509_CRL_VERSION_2) != 1 ||
        X509_CRL_set_issuer_name(crl, X509_get_subject_name(issuer->cert)) != 1)
        goto fail;
    t = X509_gmtime_adj(NULL, spec->this_days * CG_DAY);
    if (t == NULL || X509_CRL_set1_lastUpdate(crl, t) != 1)
        goto fail;
    ASN1_TIME_free(t);
    t = NULL;
    if (!spec->no_next) {
        t = X509_gmtime_adj(NULL, spec->next_days * CG_DAY);
        if (t == NULL || X509_CRL_set1_nextUpdate(crl, t) != 1)
            goto fail;
        ASN1_TIME_free(t);
        t = NULL;
    }
    for (size_t i = 0; i < n; i++) {
        X509_REVOKED *r = X509_REVOKED_new();
        ASN1_TIME *when = X509_gmtime_adj(NULL, -3600);
        int ok = r != NULL && when != NULL &&
                 X509_REVOKED_set_serialNumber(
                     r, (ASN1_INTEGER *)X509_get0_serialNumber(revoked[i])) == 1 &&
                 X509_REVOKED_set_revocationDate(r, when) == 1;
        ASN1_TIME_free(when);
        if (ok && spec->reason >= 0) {
            ASN1_ENUMERATED *e = ASN1_ENUMERATED_new();
            ok = e != NULL && ASN1_ENUMERATED_set(e, spec->reason) == 1 &&
                 X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, e, 0, 0) == 1;
            ASN1_ENUMERATED_free(e);
        }
        if (!ok || X509_CRL_add0_revoked(crl, r) != 1) {
            X509_REVOKED_free(r);
            goto fail;
        }
    }
    if (spec->number > 0 && cg_crl_add_int_ext(crl, NID_crl_number, spec->number, 0) != 0)
        goto fail;
    if (spec->delta_base > 0 && cg_crl_add_int_ext(crl, NID_delta_crl, spec->delta_base, 1) != 0)
        goto fail;
    if (spec->freshest) {
        X509_EXTENSION *ext =
            X509V3_EXT_conf_nid(NULL, NULL, NID_freshest_crl, "URI:http://crl.invalid/delta.crl");
        int ok = ext != NULL && X509_CRL_add_ext(crl, ext, -1) == 1;
        X509_EXTENSION_free(ext);
        if (!ok)
            goto fail;
    }
    const struct cg_cert *signer = spec->signer != NULL ? spec->signer : issuer;
    if (X509_CRL_sort(crl) != 1 || X509_CRL_sign(crl, signer->key, EVP_sha256()) <= 0)
        goto fail;
    return crl;
fail:
    ASN1_TIME_free(t);
    X509_CRL_free(crl);
    return NULL;
}

/* Appends the CRL to path as PEM (der: writes the file as one DER CRL instead). */
static inline int cg_write_crl(const char *path, X509_CRL *crl, bool append, bool der)
{
    FILE *f = fopen(path, der ? "wb" : append ? "a" : "w");
    if (f == NULL)
        return -1;
    int ok = der ? i2d_X509_CRL_fp(f, crl) : PEM_write_X509_CRL(f, crl);
    return fclose(f) == 0 && ok == 1 ? 0 : -1;
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
