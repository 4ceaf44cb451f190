/* Certificate metadata for logs, /bundle and metrics: names, validity, fingerprints, SPKI pin.
 * Everything here ends up in log lines, so names are escaped (RFC 2253) and bounded. */
#define TLSW_INTERNAL
#include "tlsw.h"

#include <string.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

/* Cuts s at cap-1 bytes without leaving half a UTF-8 sequence at the end. */
static void copy_utf8_bounded(char *dst, const char *src, size_t srclen, size_t cap)
{
    size_t n = srclen < cap ? srclen : cap - 1;
    if (n < srclen)
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void tlsw_name_oneline(const X509_NAME *name, char *buf, size_t cap)
{
    if (cap == 0)
        return;
    buf[0] = '\0';
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL)
        return;
    /* RFC 2253 escaping keeps control characters out of log lines; UTF-8 is left readable
     * rather than \XX-escaped, subjects of provider CAs are plain ASCII anyway. */
    unsigned long flags = (XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) | ASN1_STRFLGS_UTF8_CONVERT;
    if (X509_NAME_print_ex(b, name, 0, flags) >= 0) {
        char *data = NULL;
        long len = BIO_get_mem_data(b, &data);
        if (len > 0 && data != NULL)
            copy_utf8_bounded(buf, data, (size_t)len, cap);
    }
    BIO_free(b);
}

time_t tlsw_asn1_time(const ASN1_TIME *t)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return (time_t)-1;
    return timegm(&tm);
}

/* The pin format of HPKP (RFC 7469) and of curl's --pinnedpubkey: base64(SHA-256(SPKI DER)). */
static int spki_pin(X509 *x, char *out, size_t cap)
{
    int ret = -1;
    unsigned char *der = NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    int derlen = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der);
    if (derlen <= 0)
        goto out;
    if (EVP_Digest(der, (size_t)derlen, md, &mdlen, EVP_sha256(), NULL) != 1)
        goto out;
    if (cap < 4 * ((mdlen + 2) / 3) + 1)
        goto out;
    EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen);
    ret = 0;
out:
    OPENSSL_free(der);
    return ret;
}

int tlsw_cert_info_fill(X509 *x, struct tlsw_cert_info *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    memset(out, 0, sizeof(*out));
    tlsw_name_oneline(X509_get_subject_name(x), out->subject, sizeof(out->subject));
    tlsw_name_oneline(X509_get_issuer_name(x), out->issuer, sizeof(out->issuer));
    out->not_before = tlsw_asn1_time(X509_get0_notBefore(x));
    out->not_after = tlsw_asn1_time(X509_get0_notAfter(x));
    if (X509_digest(x, EVP_sha256(), md, &mdlen) != 1 || mdlen * 2 >= sizeof(out->sha256))
        return -1;
    tlsw_hex_encode(md, mdlen, out->sha256);
    if (spki_pin(x, out->spki_pin, sizeof(out->spki_pin)) != 0)
        return -1;
    /* Any of basicConstraints CA:TRUE, keyCertSign, or a v1 self-signed root counts: that is
     * what the chain builder accepts as an issuer. */
    out->is_ca = X509_check_ca(x) != 0;
    return 0;
}
