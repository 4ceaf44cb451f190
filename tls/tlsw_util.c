/* Small helpers shared by the files of tls/: error text (ours and OpenSSL's), reading a bundle
 * file whole, hex and date formatting. One copy each, so the daemon's loader and `dbtrust bundle`
 * word the same failure the same way. */
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
