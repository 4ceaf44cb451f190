/* Trust generations (DESIGN.md "Trust generations and hot reload"): one CA bundle parsed into an
 * X509_STORE, its certificates' metadata, and the client SSL_CTX built on it. Immutable once
 * built; refcounted so a reload can publish a new one while live connections keep the old
 * (haproxy's model). */
#define TLSW_INTERNAL
#include "tlsw.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

/* Real bundles are a few hundred KiB at most (Mozilla's whole store is ~220 KiB); anything much
 * larger is a wrong path (a log file, a device), refused before it is read into memory. */
#define BUNDLE_MAX_BYTES (16u * 1024 * 1024)

struct tlsw_gen {
    atomic_size_t refs;
    SSL_CTX *ctx;
    enum tlsw_verify verify;
    struct tlsw_cert_info *certs;
    size_t cert_count;
    char sha256[65];
    char pins[2048];
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* The reason text of the oldest queued OpenSSL error, then the queue is cleared: the queue is
 * per thread and must not leak into the next caller's SSL_get_error(). */
static const char *openssl_reason(char *buf, size_t cap)
{
    unsigned long e = ERR_peek_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (r != NULL)
        dbt_strlcpy(buf, r, cap);
    else if (e != 0)
        ERR_error_string_n(e, buf, cap);
    else
        dbt_strlcpy(buf, "unknown error", cap);
    ERR_clear_error();
    return buf;
}

/* Reads the whole file; one read of the bytes both hashes and parses the same content, so a
 * concurrent rewrite cannot give a hash that does not match what was loaded. */
static int read_file(const char *path, unsigned char **out, size_t *outlen, char *err,
                     size_t errlen)
{
    int ret = -1;
    char ebuf[128];
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0;
    FILE *f = fopen(path, "rb");

    if (f == NULL) {
        set_err(err, errlen, "cannot open %s: %s", path, strerror_r(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        set_err(err, errlen, "cannot stat %s: %s", path, strerror_r(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        set_err(err, errlen, "cannot read %s: %s", path, strerror_r(EISDIR, ebuf, sizeof(ebuf)));
        goto out;
    }
    for (;;) {
        if (len == cap) {
            if (cap >= BUNDLE_MAX_BYTES) {
                set_err(err, errlen, "%s is larger than %u bytes, not a CA bundle", path,
                        BUNDLE_MAX_BYTES);
                goto out;
            }
            size_t ncap = cap == 0 ? 64 * 1024 : cap * 2;
            unsigned char *nbuf = realloc(buf, ncap);
            if (nbuf == NULL) {
                set_err(err, errlen, "out of memory reading %s", path);
                goto out;
            }
            buf = nbuf;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                set_err(err, errlen, "cannot read %s: %s", path,
                        strerror_r(errno, ebuf, sizeof(ebuf)));
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

static int sha256_hex(const unsigned char *data, size_t len, char out[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return -1;
    for (unsigned i = 0; i < mdlen; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 0x0F];
    }
    out[64] = '\0';
    return 0;
}

static void format_day(time_t t, char *buf, size_t cap)
{
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL || strftime(buf, cap, "%Y-%m-%d", &tm) == 0)
        dbt_strlcpy(buf, "?", cap);
}

/* Parses the PEM certificates into store and g->certs. */
static int load_certs(struct tlsw_gen *g, X509_STORE *store, const unsigned char *data, size_t len,
                      const char *path, char *err, size_t errlen)
{
    int ret = -1;
    char ebuf[256];
    STACK_OF(X509_INFO) *infos = NULL;
    BIO *bio = BIO_new_mem_buf(data, (int)len);

    if (bio == NULL) {
        set_err(err, errlen, "out of memory loading %s", path);
        goto out;
    }
    /* OpenSSL's PEM reader, never a hand-rolled one: it skips text between blocks (bundles
     * carry "# Subject:" comments), knows TRUSTED CERTIFICATE blocks, and rejects a block
     * whose base64 or DER is broken, which refuses the whole bundle. */
    ERR_clear_error();
    infos = PEM_X509_INFO_read_bio(bio, NULL, NULL, NULL);
    if (infos == NULL) {
        set_err(err, errlen, "cannot parse %s: %s", path, openssl_reason(ebuf, sizeof(ebuf)));
        goto out;
    }
    /* An empty file or one with no PEM at all may leave a "no start line" behind. */
    ERR_clear_error();

    size_t n = 0;
    for (int i = 0; i < sk_X509_INFO_num(infos); i++)
        if (sk_X509_INFO_value(infos, i)->x509 != NULL)
            n++;
    if (n == 0) {
        set_err(err, errlen, "no certificate in bundle %s", path);
        goto out;
    }
    g->certs = calloc(n, sizeof(*g->certs));
    if (g->certs == NULL) {
        set_err(err, errlen, "out of memory loading %s", path);
        goto out;
    }

    time_t now = time(NULL), newest = (time_t)-1;
    size_t live = 0;
    for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
        X509 *x = sk_X509_INFO_value(infos, i)->x509;
        if (x == NULL)
            continue; /* CRLs and keys: not trust anchors; bundle inspect warns about them */
        struct tlsw_cert_info *ci = &g->certs[g->cert_count];
        if (tlsw_cert_info_fill(x, ci) != 0) {
            set_err(err, errlen, "cannot read certificate %zu of %s: %s", g->cert_count + 1, path,
                    openssl_reason(ebuf, sizeof(ebuf)));
            goto out;
        }
        /* Duplicates are normal in merged bundles; OpenSSL 3 returns success for them. */
        if (X509_STORE_add_cert(store, x) != 1) {
            set_err(err, errlen, "cannot add certificate %zu (%s) of %s: %s", g->cert_count + 1,
                    ci->subject, path, openssl_reason(ebuf, sizeof(ebuf)));
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
        format_day(newest, day, sizeof(day));
        set_err(err, errlen, "all %zu certificates in %s have expired (latest notAfter %s)",
                g->cert_count, path, day);
        goto out;
    }
    ret = 0;
out:
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    BIO_free(bio);
    return ret;
}

static int build_ctx(struct tlsw_gen *g, X509_STORE *store, int min_version, char *err,
                     size_t errlen)
{
    char ebuf[256];

    ERR_clear_error();
    g->ctx = SSL_CTX_new(TLS_client_method());
    if (g->ctx == NULL) {
        set_err(err, errlen, "cannot create TLS context: %s", openssl_reason(ebuf, sizeof(ebuf)));
        return -1;
    }
    /* The context owns the store from here on, also on the error path below. */
    SSL_CTX_set_cert_store(g->ctx, store);
    if (SSL_CTX_set_min_proto_version(g->ctx, min_version) != 1) {
        set_err(err, errlen, "cannot set minimum TLS version: %s",
                openssl_reason(ebuf, sizeof(ebuf)));
        return -1;
    }
    SSL_CTX_set_verify(g->ctx, SSL_VERIFY_PEER, tlsw_verify_cb);
    /* Compression: CRIME. Renegotiation: the upstream could otherwise swap certificates
     * mid-connection after we verified the first one. Tickets stay on: MySQL servers resume. */
    SSL_CTX_set_options(g->ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_clear_options(g->ctx, SSL_OP_NO_TICKET);
    /* Memory BIOs never refuse a write, so a write may be split across records and retried
     * from a moved buffer; idle connections should not hold 2x16 KiB of record buffers. */
    SSL_CTX_set_mode(g->ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* The client cache belongs to the generation: a new trust store must not resume sessions
     * verified under the old one. Nothing reads it yet (no resumption plumbing), so sessions
     * are not stored internally, where they would pile up unused. */
    SSL_CTX_set_session_cache_mode(g->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
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

    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    enum tlsw_verify verify = opts != NULL ? opts->verify : TLSW_VERIFY_FULL;
    int min_version =
        opts != NULL && opts->min_tls_version != 0 ? opts->min_tls_version : TLS1_2_VERSION;
    if (min_version != TLS1_2_VERSION && min_version != TLS1_3_VERSION) {
        set_err(err, errlen, "unsupported minimum TLS version 0x%04x (TLS 1.2 or 1.3 only)",
                (unsigned)min_version);
        goto out;
    }
    if (verify != TLSW_VERIFY_FULL && verify != TLSW_VERIFY_CA) {
        set_err(err, errlen, "invalid verify mode %d", (int)verify);
        goto out;
    }
    if (read_file(bundle_path, &data, &len, err, errlen) != 0)
        goto out;

    g = calloc(1, sizeof(*g));
    store = X509_STORE_new();
    if (g == NULL || store == NULL) {
        set_err(err, errlen, "out of memory loading %s", bundle_path);
        goto out;
    }
    atomic_init(&g->refs, 1);
    g->verify = verify;
    if (opts != NULL && opts->pins != NULL) {
        if (strlen(opts->pins) >= sizeof(g->pins)) {
            set_err(err, errlen, "pin list too long");
            goto out;
        }
        dbt_strlcpy(g->pins, opts->pins, sizeof(g->pins));
    }
    if (sha256_hex(data, len, g->sha256) != 0) {
        set_err(err, errlen, "cannot hash %s: %s", bundle_path, openssl_reason(ebuf, sizeof(ebuf)));
        goto out;
    }
    /* Chains must end at a self-signed root of the bundle: with PARTIAL_CHAIN an intermediate
     * left in the bundle would become a trust anchor on its own. It is off by default; clearing
     * it says so and guards against a default changing under us. */
    X509_VERIFY_PARAM_clear_flags(X509_STORE_get0_param(store), X509_V_FLAG_PARTIAL_CHAIN);
    if (load_certs(g, store, data, len, bundle_path, err, errlen) != 0)
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
        free(g);
    }
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
    free(g);
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
