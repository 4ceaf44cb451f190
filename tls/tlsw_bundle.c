/* CA bundle files for `dbtrust bundle inspect|merge`: the certificates of one or more PEM files,
 * what is wrong with them as a trust bundle, and an atomically written merge. The daemon's own
 * loader (tlsw_gen.c) only needs "does it load"; an operator about to deploy a bundle needs to
 * know why a rotation might break: an expired root, an intermediate without its root, a leaf
 * pasted by mistake, a certificate lost behind a broken BEGIN line. */
#define TLSW_INTERNAL
#include "tlsw_bundle.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

/* Same limit as the daemon's loader: anything much larger is a wrong path, not a bundle. */
#define BUNDLE_MAX_BYTES (16u * 1024 * 1024)
#define DAY_SECONDS      (24L * 60 * 60)

struct bundle_file {
    char *path;
    size_t cert_count;
};

struct bundle_entry {
    struct tlsw_bundle_cert pub;
    X509 *x509;
    bool trusted; /* came as TRUSTED CERTIFICATE: its trust settings are kept by merge */
};

struct bundle_warning {
    struct tlsw_bundle_warning pub;
    size_t seq; /* insertion order: keeps the report order stable when sorting by position */
};

struct tlsw_bundle {
    struct bundle_file *files;
    size_t file_count;
    struct bundle_entry *certs;
    size_t cert_count, cert_cap;
    struct bundle_warning *warns;
    size_t warn_count, warn_cap;
    size_t unique;
    bool oom; /* a certificate or warning could not be recorded: the report would be wrong */
};

static const struct {
    const char *name;
    bool is_error;
} warn_kinds[] = {
#define TLSW_BUNDLE_WARN_ROW(id, name, is_error) {name, is_error},
    TLSW_BUNDLE_WARN_MAP(TLSW_BUNDLE_WARN_ROW)
#undef TLSW_BUNDLE_WARN_ROW
};

const char *tlsw_bundle_warn_name(enum tlsw_bundle_warn kind)
{
    return (size_t)kind < DBT_ARRAY_LEN(warn_kinds) ? warn_kinds[kind].name : "unknown";
}

bool tlsw_bundle_warn_is_error(enum tlsw_bundle_warn kind)
{
    return (size_t)kind < DBT_ARRAY_LEN(warn_kinds) && warn_kinds[kind].is_error;
}

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

/* The reason of the newest queued OpenSSL error (the one naming what finally failed), then the
 * per-thread queue is cleared so it cannot leak into a later call's error. Some failures queue
 * nothing (an empty PEM block): fallback says what was being done instead. */
static const char *openssl_reason(char *buf, size_t cap, const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    dbt_strlcpy(buf, r != NULL ? r : fallback, cap);
    ERR_clear_error();
    return buf;
}

static void format_day(time_t t, char *buf, size_t cap)
{
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL || strftime(buf, cap, "%Y-%m-%d", &tm) == 0)
        dbt_strlcpy(buf, "?", cap);
}

static void add_warning(struct tlsw_bundle *b, enum tlsw_bundle_warn kind, size_t file, size_t cert,
                        size_t other, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static void add_warning(struct tlsw_bundle *b, enum tlsw_bundle_warn kind, size_t file, size_t cert,
                        size_t other, unsigned line, const char *fmt, ...)
{
    if (b->warn_count == b->warn_cap) {
        size_t ncap = b->warn_cap == 0 ? 16 : 2 * b->warn_cap;
        struct bundle_warning *n = realloc(b->warns, ncap * sizeof(*n));
        if (n == NULL) {
            b->oom = true;
            return;
        }
        b->warns = n;
        b->warn_cap = ncap;
    }
    struct bundle_warning *w = &b->warns[b->warn_count];
    *w = (struct bundle_warning){
        .pub = {.kind = kind, .file = file, .cert = cert, .other = other, .line = line},
        .seq = b->warn_count,
    };
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->pub.detail, sizeof(w->pub.detail), fmt, ap);
    va_end(ap);
    b->warn_count++;
}

/* ---- reading a file ------------------------------------------------------------------------ */

/* Reads the whole file into memory: the parser and the check of the text between blocks must
 * look at the same bytes. Returns 0, or -1 with why in err. */
static int read_file(const char *path, unsigned char **out, size_t *outlen, char *err,
                     size_t errlen)
{
    int ret = -1;
    char ebuf[128];
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0;
    FILE *f = fopen(path, "rb");
    struct stat st;

    if (f == NULL || fstat(fileno(f), &st) != 0) {
        set_err(err, errlen, "%s", strerror_r(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        set_err(err, errlen, "%s", strerror_r(EISDIR, ebuf, sizeof(ebuf)));
        goto out;
    }
    for (;;) {
        if (len == cap) {
            if (cap >= BUNDLE_MAX_BYTES) {
                set_err(err, errlen, "larger than %u bytes, not a CA bundle", BUNDLE_MAX_BYTES);
                goto out;
            }
            size_t ncap = cap == 0 ? 64 * 1024 : cap * 2;
            unsigned char *nbuf = realloc(buf, ncap);
            if (nbuf == NULL) {
                set_err(err, errlen, "out of memory");
                goto out;
            }
            buf = nbuf;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                set_err(err, errlen, "%s", strerror_r(errno, ebuf, sizeof(ebuf)));
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

/* ---- the text outside PEM blocks ----------------------------------------------------------- */

/* OpenSSL's PEM reader silently skips every line before a BEGIN line. That is right for the
 * comments real bundles carry ("# Subject:", curl's title lines, `openssl x509 -text` dumps),
 * but it also skips a certificate whose BEGIN line was mangled in a copy-paste: the bundle then
 * loads without it and the rotation breaks later. Skipped text is therefore classified line by
 * line; this looks only at what OpenSSL skipped and never decodes anything itself. */
enum text_problem { TEXT_OK, TEXT_BINARY, TEXT_ARMOR, TEXT_BASE64 };

static const char *const text_problem_desc[] = {
    [TEXT_OK] = "",
    [TEXT_BINARY] = "binary data (a DER file? convert it with `openssl x509 -inform der`)",
    [TEXT_ARMOR] = "a stray or malformed BEGIN/END line (a broken PEM block?)",
    [TEXT_BASE64] = "base64 data outside a PEM block (a block without its BEGIN line?)",
};

static bool contains(const unsigned char *s, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(s + i, needle, m) == 0)
            return true;
    return false;
}

/* A line of a PEM body: long, only base64 characters, '=' padding at the end only. Hex
 * fingerprints (also long runs of "base64" characters) are common in bundle comments, so a line
 * of hex digits alone does not count. */
static bool looks_like_base64(const unsigned char *s, size_t n)
{
    size_t pad = 0;
    bool only_hex = true;
    if (n < 32)
        return false;
    while (pad < 2 && pad < n && s[n - 1 - pad] == '=')
        pad++;
    for (size_t i = 0; i < n - pad; i++) {
        unsigned char c = s[i];
        bool b64 = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '+' || c == '/';
        if (!b64)
            return false;
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            only_hex = false;
    }
    return !only_hex;
}

static enum text_problem classify_line(const unsigned char *s, size_t n)
{
    while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    for (size_t i = 0; i < n; i++)
        if ((s[i] < 0x20 && s[i] != '\t' && s[i] != '\f' && s[i] != '\v') || s[i] == 0x7f)
            return TEXT_BINARY;
    if (n > 0 && s[0] == '#')
        return TEXT_OK; /* a comment, even a commented-out PEM block */
    /* Any dash run next to BEGIN/END: "----BEGIN ...", "-----END CERTIFICATE----", a stray
     * END line. Plain separator lines of dashes are fine. */
    if (contains(s, n, "---") && (contains(s, n, "BEGIN") || contains(s, n, "END")))
        return TEXT_ARMOR;
    return looks_like_base64(s, n) ? TEXT_BASE64 : TEXT_OK;
}

/* Line numbers for messages. Offsets asked for only grow, so counting is incremental. */
struct line_cursor {
    const unsigned char *data;
    size_t pos;
    unsigned line;
};

static unsigned line_at(struct line_cursor *c, size_t off)
{
    for (; c->pos < off; c->pos++)
        if (c->data[c->pos] == '\n')
            c->line++;
    return c->line;
}

static size_t line_end(const unsigned char *data, size_t from, size_t to)
{
    const unsigned char *nl = memchr(data + from, '\n', to - from);
    return nl != NULL ? (size_t)(nl - data) : to;
}

/* A UTF-8 byte order mark at the start of the file, which OpenSSL skips too. */
static size_t bom_len(const unsigned char *data, size_t off, size_t to)
{
    return off == 0 && to >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
}

/* Where the block that OpenSSL read from [from, to) starts: the first line that OpenSSL takes
 * for a BEGIN line ("-----BEGIN " at the start, "-----" at the end before trailing blanks).
 * Returns to when there is none. */
static size_t find_begin(const unsigned char *data, size_t from, size_t to)
{
    for (size_t off = from; off < to;) {
        size_t end = line_end(data, off, to);
        size_t s = off + bom_len(data, off, to), e = end;
        while (e > s && (data[e - 1] == '\r' || data[e - 1] == ' ' || data[e - 1] == '\t'))
            e--;
        if (e - s >= 16 && memcmp(data + s, "-----BEGIN ", 11) == 0 &&
            memcmp(data + e - 5, "-----", 5) == 0)
            return off;
        off = end + 1;
    }
    return to;
}

/* Checks the skipped text [from, to) and reports its first bad line, once per stretch. In a file
 * without a single PEM block the problem is the whole file, an error rather than a warning. */
static void check_skipped(struct tlsw_bundle *b, size_t file, struct line_cursor *lc, size_t from,
                          size_t to, bool no_block_at_all)
{
    const unsigned char *data = lc->data;
    for (size_t off = from; off < to;) {
        size_t end = line_end(data, off, to);
        size_t s = off + bom_len(data, off, to);
        enum text_problem p = classify_line(data + s, end - s);
        if (p != TEXT_OK) {
            unsigned line = line_at(lc, off);
            if (no_block_at_all)
                add_warning(b, TLSW_BUNDLE_NOT_PEM, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                            "line %u: no PEM block in the file; %s", line, text_problem_desc[p]);
            else
                add_warning(b, TLSW_BUNDLE_GARBAGE, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                            "line %u: text outside the PEM blocks that is not a comment: %s", line,
                            text_problem_desc[p]);
            return;
        }
        off = end + 1;
    }
}

/* ---- PEM blocks ---------------------------------------------------------------------------- */

static int push_cert(struct tlsw_bundle *b, size_t file, X509 *x, bool trusted, unsigned line,
                     const struct tlsw_cert_info *info)
{
    if (b->cert_count == b->cert_cap) {
        size_t ncap = b->cert_cap == 0 ? 16 : 2 * b->cert_cap;
        struct bundle_entry *n = realloc(b->certs, ncap * sizeof(*n));
        if (n == NULL)
            return -1;
        b->certs = n;
        b->cert_cap = ncap;
    }
    struct bundle_entry *e = &b->certs[b->cert_count++];
    e->x509 = x;
    e->trusted = trusted;
    e->pub = (struct tlsw_bundle_cert){
        .info = *info,
        .file = file,
        .index = ++b->files[file].cert_count,
        .line = line,
        /* Signature checked too: a name match alone is what a forged "root" would have. */
        .self_signed = X509_self_signed(x, 1) == 1,
        .dup_of = TLSW_BUNDLE_NONE,
    };
    ERR_clear_error(); /* X509_self_signed leaves a verify error queued for non-roots */
    return 0;
}

/* One decoded PEM block: a certificate is kept, anything else (a key pasted along, a CRL) is
 * reported, as the daemon ignores it and merge drops it. */
static void take_block(struct tlsw_bundle *b, size_t file, const char *name,
                       const unsigned char *der, long derlen, unsigned line)
{
    char ebuf[256];
    /* TRUSTED CERTIFICATE carries OpenSSL trust settings after the DER, hence the _AUX decoder;
     * PEM_X509_INFO_read_bio accepts the same three names. */
    bool trusted = strcmp(name, PEM_STRING_X509_TRUSTED) == 0;
    if (!trusted && strcmp(name, PEM_STRING_X509) != 0 && strcmp(name, PEM_STRING_X509_OLD) != 0) {
        add_warning(b, TLSW_BUNDLE_NOT_CERTIFICATE, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                    "line %u: %s block is not a certificate (ignored by dbtrust, dropped by "
                    "merge)",
                    line, name);
        return;
    }
    const unsigned char *p = der;
    X509 *x = trusted ? d2i_X509_AUX(NULL, &p, derlen) : d2i_X509(NULL, &p, derlen);
    struct tlsw_cert_info info;
    if (x == NULL || tlsw_cert_info_fill(x, &info) != 0) {
        add_warning(b, TLSW_BUNDLE_NOT_PEM, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                    "line %u: %s block does not hold a valid certificate: %s", line, name,
                    openssl_reason(ebuf, sizeof(ebuf), "unknown error"));
        X509_free(x);
        return;
    }
    if (push_cert(b, file, x, trusted, line, &info) != 0) {
        X509_free(x);
        b->oom = true;
    }
}

/* Reads the blocks with OpenSSL's PEM reader, one at a time so that the text it skips before
 * each one can be checked: a memory BIO's pending count tells how far it has read. A block that
 * OpenSSL cannot decode (broken base64, missing END line) stops the file: the daemon refuses
 * such a bundle as a whole. */
static void parse_pem(struct tlsw_bundle *b, size_t file, const unsigned char *data, size_t len)
{
    char ebuf[256];
    struct line_cursor lc = {.data = data, .pos = 0, .line = 1};
    size_t pos = 0, blocks = 0;
    BIO *bio = BIO_new_mem_buf(data, (int)len); /* len <= BUNDLE_MAX_BYTES */

    if (bio == NULL) {
        b->oom = true;
        return;
    }
    for (;;) {
        char *name = NULL, *header = NULL;
        unsigned char *der = NULL;
        long derlen = 0;
        ERR_clear_error();
        int ok = PEM_read_bio(bio, &name, &header, &der, &derlen);
        size_t end = len - (size_t)BIO_pending(bio);
        if (!ok) {
            unsigned long e = ERR_peek_last_error();
            if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
                ERR_clear_error();
                check_skipped(b, file, &lc, pos, len, blocks == 0); /* the tail: no more blocks */
            } else {
                size_t begin = find_begin(data, pos, end);
                check_skipped(b, file, &lc, pos, begin, false);
                unsigned line = line_at(&lc, begin);
                add_warning(b, TLSW_BUNDLE_NOT_PEM, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, line,
                            "line %u: cannot decode PEM block: %s", line,
                            openssl_reason(ebuf, sizeof(ebuf), "empty or malformed block"));
            }
            break;
        }
        size_t begin = find_begin(data, pos, end);
        check_skipped(b, file, &lc, pos, begin, false);
        take_block(b, file, name, der, derlen, line_at(&lc, begin));
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(der);
        pos = end;
        blocks++;
    }
    BIO_free(bio);
}

static void load_file(struct tlsw_bundle *b, size_t file)
{
    char err[256];
    unsigned char *data = NULL;
    size_t len = 0;
    const char *path = b->files[file].path;

    if (read_file(path, &data, &len, err, sizeof(err)) != 0) {
        add_warning(b, TLSW_BUNDLE_UNREADABLE, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, 0,
                    "cannot read: %s", err);
        return;
    }
    size_t before = b->warn_count;
    parse_pem(b, file, data, len);
    free(data);
    bool refused = false;
    for (size_t i = before; i < b->warn_count; i++)
        refused |= tlsw_bundle_warn_is_error(b->warns[i].pub.kind);
    /* A file that failed to parse already says so; "no certificate" would only add noise. */
    if (b->files[file].cert_count == 0 && !refused)
        add_warning(b, TLSW_BUNDLE_NO_CERTIFICATE, file, TLSW_BUNDLE_NONE, TLSW_BUNDLE_NONE, 0,
                    "no certificate in the file");
}

/* ---- checks across all certificates -------------------------------------------------------- */

long tlsw_bundle_days_left(time_t t, time_t now)
{
    long long d = (long long)t - (long long)now;
    /* Floor, not truncation: a certificate that expired an hour ago has -1 days left. */
    return (long)(d >= 0 ? d / DAY_SECONDS : -((-d + DAY_SECONDS - 1) / DAY_SECONDS));
}

static size_t find_first_copy(const struct tlsw_bundle *b, size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (b->certs[j].pub.dup_of == TLSW_BUNDLE_NONE &&
            strcmp(b->certs[j].pub.info.sha256, b->certs[i].pub.info.sha256) == 0)
            return j;
    return TLSW_BUNDLE_NONE;
}

/* Whether some other loaded certificate issued certificate i: names and key identifiers match
 * (X509_check_issued, as the chain builder picks candidates) and its key verifies the
 * signature, so a re-keyed root of the same name is not taken for the right one. */
static bool issuer_loaded(const struct tlsw_bundle *b, size_t i)
{
    X509 *x = b->certs[i].x509;
    bool found = false;
    for (size_t j = 0; j < b->cert_count && !found; j++) {
        X509 *cand = b->certs[j].x509;
        if (j == i || b->certs[j].pub.dup_of != TLSW_BUNDLE_NONE)
            continue;
        found =
            X509_check_issued(cand, x) == X509_V_OK && X509_verify(x, X509_get0_pubkey(cand)) == 1;
    }
    ERR_clear_error();
    return found;
}

static void check_validity(struct tlsw_bundle *b, size_t i, time_t now)
{
    const struct tlsw_bundle_cert *c = &b->certs[i].pub;
    char day[32];
    if (c->info.not_after != (time_t)-1 && c->info.not_after < now) {
        format_day(c->info.not_after, day, sizeof(day));
        add_warning(b, TLSW_BUNDLE_EXPIRED, c->file, i, TLSW_BUNDLE_NONE, c->line,
                    "expired on %s (%ld days ago)", day,
                    tlsw_bundle_days_left(now, c->info.not_after)); /* whole days since */
    }
    if (c->info.not_before != (time_t)-1 && c->info.not_before > now) {
        format_day(c->info.not_before, day, sizeof(day));
        add_warning(b, TLSW_BUNDLE_NOT_YET_VALID, c->file, i, TLSW_BUNDLE_NONE, c->line,
                    "not valid before %s (in %ld days)", day,
                    -tlsw_bundle_days_left(now, c->info.not_before)); /* rounded up */
    }
}

static void check_role(struct tlsw_bundle *b, size_t i)
{
    const struct tlsw_bundle_cert *c = &b->certs[i].pub;
    if (!c->info.is_ca) {
        add_warning(b, TLSW_BUNDLE_NOT_CA, c->file, i, TLSW_BUNDLE_NONE, c->line,
                    "not a CA: an end-entity certificate cannot anchor a chain and does not "
                    "belong in a trust bundle");
        return;
    }
    /* dbtrust verifies without partial chains: an intermediate is trusted only through its
     * root, so one whose root is missing verifies nothing. */
    if (!c->self_signed && !issuer_loaded(b, i))
        add_warning(b, TLSW_BUNDLE_MISSING_ROOT, c->file, i, TLSW_BUNDLE_NONE, c->line,
                    "intermediate without its root: issuer %s is not among the loaded "
                    "certificates, so no chain through it verifies",
                    c->info.issuer);
}

static void check_certs(struct tlsw_bundle *b, time_t now)
{
    for (size_t i = 0; i < b->cert_count; i++) {
        struct tlsw_bundle_cert *c = &b->certs[i].pub;
        c->dup_of = find_first_copy(b, i);
        if (c->dup_of != TLSW_BUNDLE_NONE) {
            const struct tlsw_bundle_cert *first = &b->certs[c->dup_of].pub;
            /* One warning per extra copy; its other findings were reported for the first. */
            add_warning(b, TLSW_BUNDLE_DUPLICATE, c->file, i, c->dup_of, c->line,
                        "duplicate of %s #%zu (same sha256 %.16s...)", b->files[first->file].path,
                        first->index, c->info.sha256);
            continue;
        }
        b->unique++;
        check_validity(b, i, now);
        check_role(b, i);
    }
}

/* File order, then position in the file, then the order found: a report reads top to bottom. */
static int cmp_warning(const void *pa, const void *pb)
{
    const struct bundle_warning *a = pa, *b = pb;
    if (a->pub.file != b->pub.file)
        return a->pub.file < b->pub.file ? -1 : 1;
    if (a->pub.line != b->pub.line)
        return a->pub.line < b->pub.line ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

int tlsw_bundle_load(const char *const *paths, size_t path_count, time_t now,
                     struct tlsw_bundle **out)
{
    struct tlsw_bundle *b = calloc(1, sizeof(*b));
    *out = NULL;
    if (b == NULL)
        return -1;
    b->files = calloc(path_count > 0 ? path_count : 1, sizeof(*b->files));
    if (b->files == NULL)
        goto fail;
    for (size_t i = 0; i < path_count; i++) {
        b->files[i].path = strdup(paths[i]);
        if (b->files[i].path == NULL)
            goto fail;
        b->file_count++;
    }
    for (size_t i = 0; i < path_count && !b->oom; i++)
        load_file(b, i);
    check_certs(b, now);
    if (b->oom)
        goto fail;
    if (b->warn_count > 1)
        qsort(b->warns, b->warn_count, sizeof(*b->warns), cmp_warning);
    *out = b;
    return 0;
fail:
    tlsw_bundle_free(b);
    return -1;
}

void tlsw_bundle_free(struct tlsw_bundle *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->cert_count; i++)
        X509_free(b->certs[i].x509);
    for (size_t i = 0; i < b->file_count; i++)
        free(b->files[i].path);
    free(b->certs);
    free(b->warns);
    free(b->files);
    free(b);
}

size_t tlsw_bundle_file_count(const struct tlsw_bundle *b)
{
    return b->file_count;
}

const char *tlsw_bundle_file_path(const struct tlsw_bundle *b, size_t file)
{
    return file < b->file_count ? b->files[file].path : NULL;
}

size_t tlsw_bundle_file_cert_count(const struct tlsw_bundle *b, size_t file)
{
    return file < b->file_count ? b->files[file].cert_count : 0;
}

size_t tlsw_bundle_cert_count(const struct tlsw_bundle *b)
{
    return b->cert_count;
}

const struct tlsw_bundle_cert *tlsw_bundle_cert(const struct tlsw_bundle *b, size_t i)
{
    return i < b->cert_count ? &b->certs[i].pub : NULL;
}

size_t tlsw_bundle_unique_count(const struct tlsw_bundle *b)
{
    return b->unique;
}

size_t tlsw_bundle_warning_count(const struct tlsw_bundle *b)
{
    return b->warn_count;
}

const struct tlsw_bundle_warning *tlsw_bundle_warning(const struct tlsw_bundle *b, size_t i)
{
    return i < b->warn_count ? &b->warns[i].pub : NULL;
}

bool tlsw_bundle_has_errors(const struct tlsw_bundle *b)
{
    for (size_t i = 0; i < b->warn_count; i++)
        if (tlsw_bundle_warn_is_error(b->warns[i].pub.kind))
            return true;
    return false;
}

/* ---- merge --------------------------------------------------------------------------------- */

int tlsw_bundle_mergeable(const struct tlsw_bundle *b, char *err, size_t errlen)
{
    if (b->file_count == 0) {
        set_err(err, errlen, "no input file");
        return -1;
    }
    for (size_t i = 0; i < b->warn_count; i++) {
        const struct tlsw_bundle_warning *w = &b->warns[i].pub;
        /* Garbage refuses too: text OpenSSL skipped may be a certificate with a broken BEGIN
         * line, and a merge would silently drop it from the bundle. */
        if (tlsw_bundle_warn_is_error(w->kind) || w->kind == TLSW_BUNDLE_NO_CERTIFICATE ||
            w->kind == TLSW_BUNDLE_GARBAGE) {
            set_err(err, errlen, "%s: %s", b->files[w->file].path, w->detail);
            return -1;
        }
    }
    return 0;
}

static void iso_time(time_t t, char *buf, size_t cap)
{
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL || strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        dbt_strlcpy(buf, "?", cap);
}

/* One certificate with its comment lines. Names are RFC 2253 escaped (tlsw_name_oneline), so
 * a subject cannot break out of its comment line; and a line starting with '#' can never be
 * taken for a BEGIN line. */
static int write_entry(BIO *mem, const struct bundle_entry *e, bool first)
{
    char na[32];
    iso_time(e->pub.info.not_after, na, sizeof(na));
    if (BIO_printf(mem, "%s# subject: %s\n# issuer: %s\n# notAfter: %s\n# sha256: %s\n",
                   first ? "" : "\n", e->pub.info.subject, e->pub.info.issuer, na,
                   e->pub.info.sha256) <= 0)
        return -1;
    int ok = e->trusted ? PEM_write_bio_X509_AUX(mem, e->x509) : PEM_write_bio_X509(mem, e->x509);
    return ok == 1 ? 0 : -1;
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The directory and base name of path, for the temp file and the directory fsync. */
static int split_path(const char *path, char *dir, size_t dircap, const char **base)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        dbt_strlcpy(dir, ".", dircap);
        *base = path;
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        if (n >= dircap)
            return -1;
        memcpy(dir, path, n);
        dir[n] = '\0';
        *base = slash + 1;
    }
    return **base != '\0' ? 0 : -1;
}

/* After the rename the new name lives only in the directory's page cache until the directory
 * itself is synced; without this a crash can bring the old bundle (or none) back. */
static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Readers (the daemon's watch and poll, and anyone else) see the old file or the new one,
 * never a half-written one: the temp file is complete and on disk before it takes the name. */
static int write_atomically(const char *path, const char *data, size_t len, char *err,
                            size_t errlen)
{
    char dir[PATH_MAX], tmp[PATH_MAX + 16], ebuf[128];
    const char *base;
    if (split_path(path, dir, sizeof(dir), &base) != 0 ||
        snprintf(tmp, sizeof(tmp), "%s/.%s.XXXXXX", dir, base) >= (int)sizeof(tmp)) {
        set_err(err, errlen, "%s: not a usable file name", path);
        return -1;
    }
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "cannot create a temporary file in %s: %s", dir,
                strerror_r(errno, ebuf, sizeof(ebuf)));
        return -1;
    }
    /* 0644 whatever the umask: a CA bundle is public, and the daemon may run as another user
     * (user = dbtrust) than the one merging. mkstemp creates 0600. */
    const char *step = "fchmod";
    if (fchmod(fd, 0644) != 0 || (step = "write", write_all(fd, data, len) != 0) ||
        (step = "fsync", fsync(fd) != 0)) {
        set_err(err, errlen, "cannot write %s (%s): %s", tmp, step,
                strerror_r(errno, ebuf, sizeof(ebuf)));
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        set_err(err, errlen, "cannot replace %s: %s", path, strerror_r(errno, ebuf, sizeof(ebuf)));
        unlink(tmp);
        return -1;
    }
    if (sync_dir(dir) != 0) {
        set_err(err, errlen, "%s written, but syncing directory %s failed: %s", path, dir,
                strerror_r(errno, ebuf, sizeof(ebuf)));
        return -1;
    }
    return 0;
}

int tlsw_bundle_write(const struct tlsw_bundle *b, const char *path, char *err, size_t errlen)
{
    int ret = -1;
    char ebuf[256];
    BIO *mem = NULL;

    if (tlsw_bundle_mergeable(b, err, errlen) != 0)
        return -1;
    ERR_clear_error();
    mem = BIO_new(BIO_s_mem());
    if (mem == NULL) {
        set_err(err, errlen, "out of memory");
        goto out;
    }
    bool first = true;
    for (size_t i = 0; i < b->cert_count; i++) {
        if (b->certs[i].pub.dup_of != TLSW_BUNDLE_NONE)
            continue;
        if (write_entry(mem, &b->certs[i], first) != 0) {
            set_err(err, errlen, "cannot encode certificate %s: %s", b->certs[i].pub.info.subject,
                    openssl_reason(ebuf, sizeof(ebuf), "unknown error"));
            goto out;
        }
        first = false;
    }
    char *data = NULL;
    long len = BIO_get_mem_data(mem, &data);
    if (len < 0 || (len > 0 && data == NULL)) {
        set_err(err, errlen, "out of memory");
        goto out;
    }
    ret = write_atomically(path, data, (size_t)len, err, errlen);
out:
    BIO_free(mem);
    return ret;
}
