/* Certificate revocation lists (PROTOCOLS.md part D): read from a file or a directory of PEM/DER
 * files, checked against the CAs of the trust material before they are used, and described for
 * logs, metrics and `dbtrust bundle inspect`. The daemon's generations (tlsw_gen.c) and the
 * bundle tools (tlsw_bundle.c) share this, so both judge a CRL the same way. */
#define TLSW_INTERNAL
#include "tlsw.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

/* A CRL directory holds a handful of files (one per issuing CA); a huge one is a wrong path. */
#define CRL_DIR_MAX_FILES 1024

const char *tlsw_crl_reason_name(int code)
{
    /* RFC 5280 5.3.1; 7 is unused. */
    static const char *const names[] = {
        "unspecified",   "keyCompromise",        "cACompromise",    "affiliationChanged",
        "superseded",    "cessationOfOperation", "certificateHold", "?",
        "removeFromCRL", "privilegeWithdrawn",   "aACompromise",
    };
    return code >= 0 && (size_t)code < DBT_ARRAY_LEN(names) ? names[code] : "?";
}

void tlsw_asn1_int_hex(const ASN1_INTEGER *i, char *buf, size_t cap)
{
    BIGNUM *bn = i != NULL ? ASN1_INTEGER_to_BN(i, NULL) : NULL;
    char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
    dbt_strlcpy(buf, hex != NULL ? hex : "?", cap);
    OPENSSL_free(hex);
    BN_free(bn);
    ERR_clear_error();
}

void tlsw_crl_info_fill(X509_CRL *crl, X509 *signer, const char *source, struct tlsw_crl_info *out)
{
    memset(out, 0, sizeof(*out));
    tlsw_name_oneline(X509_CRL_get_issuer(crl), out->issuer, sizeof(out->issuer));
    if (signer != NULL) {
        struct tlsw_cert_info ci;
        if (tlsw_cert_info_fill(signer, &ci) == 0) {
            dbt_strlcpy(out->verified_by, ci.subject, sizeof(out->verified_by));
            dbt_strlcpy(out->verified_by_sha256, ci.sha256, sizeof(out->verified_by_sha256));
        }
    }
    dbt_strlcpy(out->source, source, sizeof(out->source));
    out->this_update = tlsw_asn1_time(X509_CRL_get0_lastUpdate(crl));
    const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
    out->next_update = next != NULL ? tlsw_asn1_time(next) : (time_t)-1;
    STACK_OF(X509_REVOKED) *rev = X509_CRL_get_REVOKED(crl);
    out->entries = rev != NULL ? (size_t)sk_X509_REVOKED_num(rev) : 0;
    ASN1_INTEGER *delta = X509_CRL_get_ext_d2i(crl, NID_delta_crl, NULL, NULL);
    out->delta = delta != NULL;
    ASN1_INTEGER_free(delta);
    ASN1_INTEGER *num = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
    if (num != NULL)
        tlsw_asn1_int_hex(num, out->number, sizeof(out->number));
    ASN1_INTEGER_free(num);
    ERR_clear_error();
}

/* Whether x may sign CRLs: a CA, and cRLSign among its key usages when it lists any (OpenSSL's
 * chain check refuses the CRL at handshake time otherwise: better to say so at load). */
static bool may_sign_crls(X509 *x)
{
    if (X509_check_ca(x) == 0)
        return false;
    return (X509_get_extension_flags(x) & EXFLAG_KUSAGE) == 0 ||
           (X509_get_key_usage(x) & KU_CRL_SIGN) != 0;
}

X509 *tlsw_crl_signer(X509_CRL *crl, STACK_OF(X509) * cas, char *why, size_t cap)
{
    char issuer[256];
    bool named = false, usable = false;
    X509 *found = NULL;

    for (int i = 0; cas != NULL && i < sk_X509_num(cas) && found == NULL; i++) {
        X509 *x = sk_X509_value(cas, i);
        if (X509_NAME_cmp(X509_get_subject_name(x), X509_CRL_get_issuer(crl)) != 0)
            continue;
        named = true;
        if (!may_sign_crls(x))
            continue;
        usable = true;
        /* A name match alone is what a forged CRL would have: the key decides. */
        EVP_PKEY *key = X509_get0_pubkey(x);
        if (key != NULL && X509_CRL_verify(crl, key) == 1)
            found = x;
    }
    ERR_clear_error();
    if (found != NULL)
        return found;
    tlsw_name_oneline(X509_CRL_get_issuer(crl), issuer, sizeof(issuer));
    if (!named)
        tlsw_set_err(why, cap, "its issuer %s is not a certificate of the bundle", issuer);
    else if (!usable)
        tlsw_set_err(why, cap, "its issuer %s is not a CA allowed to sign CRLs (keyUsage)", issuer);
    else
        tlsw_set_err(why, cap,
                     "its signature does not verify with the key of %s (forged, or signed by "
                     "another key)",
                     issuer);
    return NULL;
}

/* One file: X509 CRL PEM blocks (anything else between them skipped), or a single DER CRL. */
static int read_crl_bytes(const unsigned char *data, size_t len, const char *path,
                          struct tlsw_crl_list *out, char *err, size_t errlen)
{
    char ebuf[256];
    size_t before = out->count;
    bool pem = len >= 11 && memmem(data, len, "-----BEGIN ", 11) != NULL;

    if (!pem) {
        const unsigned char *p = data;
        X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)len);
        if (crl == NULL || p != data + len) {
            X509_CRL_free(crl);
            tlsw_set_err(err, errlen, "cannot parse CRL file %s: %s", path,
                         tlsw_openssl_reason(ebuf, sizeof(ebuf), "not a DER CRL"));
            return -1;
        }
        if (tlsw_crl_list_push(out, crl, path) != 0) {
            tlsw_set_err(err, errlen, "out of memory loading %s", path);
            return -1;
        }
        return 0;
    }
    /* The PEM reader of the bundle, keeping CRLs: a broken block refuses the file. */
    STACK_OF(X509) *certs = tlsw_read_certs_crls(data, len, path, out, err, errlen);
    if (certs == NULL)
        return -1;
    sk_X509_pop_free(certs, X509_free); /* issuers come from the bundle, not from here */
    if (out->count == before) {
        tlsw_set_err(err, errlen, "no CRL in %s", path);
        return -1;
    }
    return 0;
}

static int read_crl_file(const char *path, struct tlsw_crl_list *out, EVP_MD_CTX *hash, char *err,
                         size_t errlen)
{
    char ebuf[256];
    unsigned char *data = NULL;
    size_t len = 0;
    if (tlsw_read_file(path, &data, &len, ebuf, sizeof(ebuf)) != 0) {
        tlsw_set_err(err, errlen, "cannot read CRL file %s: %s", path, ebuf);
        return -1;
    }
    /* The name too: a CRL moved to another file in the directory is a change worth a reload. */
    if (hash != NULL && (EVP_DigestUpdate(hash, path, strlen(path) + 1) != 1 ||
                         EVP_DigestUpdate(hash, data, len) != 1)) {
        free(data);
        tlsw_set_err(err, errlen, "cannot hash %s", path);
        return -1;
    }
    int rc = read_crl_bytes(data, len, path, out, err, errlen);
    free(data);
    return rc;
}

static int skip_hidden(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

static int read_crl_dir(const char *dir, struct tlsw_crl_list *out, EVP_MD_CTX *hash, char *err,
                        size_t errlen)
{
    char ebuf[128], path[4096];
    struct dirent **names = NULL;
    /* Sorted: the same directory always loads (and hashes) in the same order. */
    int n = scandir(dir, &names, skip_hidden, alphasort);
    if (n < 0) {
        tlsw_set_err(err, errlen, "cannot read CRL directory %s: %s", dir,
                     strerror_r(errno, ebuf, sizeof(ebuf)));
        return -1;
    }
    int rc = 0;
    if (n > CRL_DIR_MAX_FILES) {
        tlsw_set_err(err, errlen, "CRL directory %s has %d entries (at most %d)", dir, n,
                     CRL_DIR_MAX_FILES);
        rc = -1;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        struct stat st;
        if (snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name) >= (int)sizeof(path))
            continue;
        /* stat, not lstat: a ConfigMap's files are symlinks into ..data. Subdirectories and
         * sockets are not CRLs. */
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        rc = read_crl_file(path, out, hash, err, errlen);
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

int tlsw_crl_read_path(const char *path, struct tlsw_crl_list *out, EVP_MD_CTX *hash, char *err,
                       size_t errlen)
{
    char ebuf[128];
    struct stat st;
    if (stat(path, &st) != 0) {
        tlsw_set_err(err, errlen, "cannot read CRL path %s: %s", path,
                     strerror_r(errno, ebuf, sizeof(ebuf)));
        return -1;
    }
    if (S_ISDIR(st.st_mode))
        return read_crl_dir(path, out, hash, err, errlen);
    return read_crl_file(path, out, hash, err, errlen);
}
