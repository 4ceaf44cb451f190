/* Small helpers shared by the files of tls/: error text (ours and OpenSSL's), reading a bundle
 * file whole and its certificates, hex and date formatting, peer names for log lines. One copy
 * each, so the daemon's loaders and `dbtrust bundle` word the same failure the same way. */
#define TLSW_INTERNAL
#include "tlsw.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>

void tlsw_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *tlsw_openssl_reason(char *buf, size_t cap, const char *fallback)
{
    unsigned long e = ERR_peek_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (r != NULL)
        dbt_strlcpy(buf, r, cap);
    else if (e != 0)
        ERR_error_string_n(e, buf, cap); /* a code without a string: at least it can be looked up */
    else
        dbt_strlcpy(buf, fallback != NULL ? fallback : "unknown error", cap);
    ERR_clear_error();
    return buf;
}

int tlsw_read_file(const char *path, unsigned char **out, size_t *outlen, char *err, size_t errlen)
{
    int ret = -1;
    char ebuf[128];
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0;
    FILE *f = fopen(path, "rb");
    struct stat st;

    if (f == NULL || fstat(fileno(f), &st) != 0) {
        tlsw_set_err(err, errlen, "%s", strerror_r(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        tlsw_set_err(err, errlen, "%s", strerror_r(EISDIR, ebuf, sizeof(ebuf)));
        goto out;
    }
    for (;;) {
        if (len == cap) {
            if (cap >= TLSW_BUNDLE_MAX_BYTES) {
                tlsw_set_err(err, errlen, "larger than %u bytes, not a CA bundle",
                             TLSW_BUNDLE_MAX_BYTES);
                goto out;
            }
            size_t ncap = cap == 0 ? 64 * 1024 : cap * 2;
            unsigned char *nbuf = realloc(buf, ncap);
            if (nbuf == NULL) {
                tlsw_set_err(err, errlen, "out of memory");
                goto out;
            }
            buf = nbuf;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                tlsw_set_err(err, errlen, "%s", strerror_r(errno, ebuf, sizeof(ebuf)));
                goto out;
            }
            break;
        }
    }
    *out = buf;
    *outlen = len;
    buf = NULL;
    ret = 0;
out:
    free(buf);
    if (f != NULL)
        fclose(f);
    return ret;
}

void tlsw_hex_encode(const unsigned char *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0x0F];
    }
    out[2 * len] = '\0';
}

/* The formats stay literal so that -Wformat checks them. */
static void format_utc(time_t t, bool with_time, char *buf, size_t cap)
{
    struct tm tm;
    size_t n = 0;
    if (t != (time_t)-1 && gmtime_r(&t, &tm) != NULL)
        n = with_time ? strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm)
                      : strftime(buf, cap, "%Y-%m-%d", &tm);
    if (n == 0)
        dbt_strlcpy(buf, "?", cap);
}

void tlsw_format_day(time_t t, char *buf, size_t cap)
{
    format_utc(t, false, buf, cap);
}

void tlsw_format_iso(time_t t, char *buf, size_t cap)
{
    format_utc(t, true, buf, cap);
}

enum tlsw_pem_block tlsw_pem_cert(const char *name, const char *header, const unsigned char *der,
                                  long derlen, X509 **out)
{
    *out = NULL;
    /* TRUSTED CERTIFICATE carries OpenSSL trust settings after the DER, hence the _AUX decoder.
     * The three names are the ones OpenSSL's own X509 PEM readers accept. */
    bool trusted = strcmp(name, PEM_STRING_X509_TRUSTED) == 0;
    if (!trusted && strcmp(name, PEM_STRING_X509) != 0 && strcmp(name, PEM_STRING_X509_OLD) != 0)
        return TLSW_PEM_NOT_CERT;
    /* A trust anchor is public: an encrypted one is a mistake, and decrypting it would ask
     * for a pass phrase on the terminal. */
    if (header != NULL && header[0] != '\0')
        return TLSW_PEM_ENCRYPTED;
    const unsigned char *p = der;
    *out = trusted ? d2i_X509_AUX(NULL, &p, derlen) : d2i_X509(NULL, &p, derlen);
    return *out != NULL ? TLSW_PEM_CERT : TLSW_PEM_BAD_CERT;
}

int tlsw_pem_crl(const char *name, const unsigned char *der, long derlen, X509_CRL **out)
{
    *out = NULL;
    if (strcmp(name, PEM_STRING_X509_CRL) != 0)
        return 0;
    const unsigned char *p = der;
    *out = d2i_X509_CRL(NULL, &p, derlen);
    return *out != NULL ? 1 : -1;
}

int tlsw_crl_list_push(struct tlsw_crl_list *l, X509_CRL *crl, const char *source)
{
    if (l->count == l->cap) {
        size_t ncap = l->cap == 0 ? 8 : 2 * l->cap;
        struct tlsw_crl_item *n = realloc(l->items, ncap * sizeof(*n));
        if (n == NULL) {
            X509_CRL_free(crl);
            return -1;
        }
        l->items = n;
        l->cap = ncap;
    }
    l->items[l->count].crl = crl;
    dbt_strlcpy(l->items[l->count].source, source, sizeof(l->items[0].source));
    l->count++;
    return 0;
}

void tlsw_crl_list_free(struct tlsw_crl_list *l)
{
    for (size_t i = 0; i < l->count; i++)
        X509_CRL_free(l->items[i].crl);
    free(l->items);
    memset(l, 0, sizeof(*l));
}

STACK_OF(X509) * tlsw_read_certs(const unsigned char *data, size_t len, const char *path, char *err,
                                 size_t errlen)
{
    return tlsw_read_certs_crls(data, len, path, NULL, err, errlen);
}

/* A CRL block of a bundle: kept when the caller wants CRLs, else skipped like a key. */
static int take_crl(struct tlsw_crl_list *crls, const char *name, const unsigned char *der,
                    long derlen, const char *path, size_t block, char *err, size_t errlen)
{
    char ebuf[256];
    X509_CRL *crl = NULL;
    if (crls == NULL)
        return 0;
    int rc = tlsw_pem_crl(name, der, derlen, &crl);
    if (rc < 0) {
        tlsw_set_err(err, errlen, "cannot parse %s: PEM block %zu: %s", path, block,
                     tlsw_openssl_reason(ebuf, sizeof(ebuf), "not a valid CRL"));
        return -1;
    }
    if (rc > 0 && tlsw_crl_list_push(crls, crl, path) != 0) {
        tlsw_set_err(err, errlen, "out of memory loading %s", path);
        return -1;
    }
    return 0;
}

/* OpenSSL's PEM reader, never a hand-rolled one. Keys are not trust anchors and are skipped, as
 * `bundle inspect` says; CRLs are kept for callers that check revocation. */
STACK_OF(X509) * tlsw_read_certs_crls(const unsigned char *data, size_t len, const char *path,
                                      struct tlsw_crl_list *crls, char *err, size_t errlen)
{
    char ebuf[256];
    STACK_OF(X509) *certs = sk_X509_new_null();
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    if (certs == NULL || bio == NULL) {
        tlsw_set_err(err, errlen, "out of memory loading %s", path);
        goto fail;
    }
    for (size_t block = 1;; block++) {
        char *name = NULL, *header = NULL;
        unsigned char *der = NULL;
        long derlen = 0;
        ERR_clear_error();
        if (PEM_read_bio(bio, &name, &header, &der, &derlen) != 1) {
            unsigned long e = ERR_peek_last_error();
            if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
                ERR_clear_error(); /* no more blocks */
                break;
            }
            tlsw_set_err(err, errlen, "cannot parse %s: PEM block %zu: %s", path, block,
                         tlsw_openssl_reason(ebuf, sizeof(ebuf), "malformed block"));
            goto fail;
        }
        X509 *x = NULL;
        enum tlsw_pem_block kind = tlsw_pem_cert(name, header, der, derlen, &x);
        int crl_rc = kind == TLSW_PEM_NOT_CERT
                         ? take_crl(crls, name, der, derlen, path, block, err, errlen)
                         : 0;
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(der);
        if (crl_rc != 0)
            goto fail;
        if (kind == TLSW_PEM_ENCRYPTED || kind == TLSW_PEM_BAD_CERT) {
            tlsw_set_err(err, errlen, "cannot parse %s: PEM block %zu: %s", path, block,
                         kind == TLSW_PEM_ENCRYPTED
                             ? "an encrypted certificate (trust anchors are public)"
                             : tlsw_openssl_reason(ebuf, sizeof(ebuf), "not a valid certificate"));
            goto fail;
        }
        if (x != NULL && sk_X509_push(certs, x) <= 0) {
            X509_free(x);
            tlsw_set_err(err, errlen, "out of memory loading %s", path);
            goto fail;
        }
    }
    BIO_free(bio);
    return certs;
fail:
    BIO_free(bio);
    sk_X509_pop_free(certs, X509_free);
    return NULL;
}

void tlsw_append_name(char *list, size_t cap, const char *name)
{
    size_t used = strlen(list);
    if (used >= 3 && strcmp(list + used - 3, "...") == 0)
        return; /* already cut */
    const char *sep = used > 0 ? ", " : "";
    /* Each name keeps room for a later ", ..." and the NUL. */
    if (used + strlen(sep) + strlen(name) + 5 < cap)
        snprintf(list + used, cap - used, "%s%s", sep, name);
    else if (used + strlen(sep) + 3 < cap)
        snprintf(list + used, cap - used, "%s...", sep);
}

/* SAN bytes come from the peer: a hostile certificate must not forge log lines. */
void tlsw_printable(char *dst, size_t cap, const unsigned char *src, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i] >= 0x20 && src[i] < 0x7F ? (char)src[i] : '?';
    dst[n] = '\0';
}
