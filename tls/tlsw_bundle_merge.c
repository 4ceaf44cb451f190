/* `dbtrust bundle merge`: the unique certificates of a checked bundle, each with comment lines
 * naming it, written so that a reader (the daemon's watch and poll, anyone else) sees the old file
 * or the new one and never a half-written one, and so that the new one survives a crash. */
#define TLSW_INTERNAL
#include "tlsw_bundle_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>

int tlsw_bundle_mergeable(const struct tlsw_bundle *b, char *err, size_t errlen)
{
    if (b->file_count == 0) {
        tlsw_set_err(err, errlen, "no input file");
        return -1;
    }
    for (size_t i = 0; i < b->warn_count; i++) {
        const struct tlsw_bundle_warning *w = &b->warns[i].pub;
        /* Garbage refuses too: text OpenSSL skipped may be a certificate with a broken BEGIN
         * line, and a merge would silently drop it from the bundle. */
        if (tlsw_bundle_warn_is_error(w->kind) || w->kind == TLSW_BUNDLE_NO_CERTIFICATE ||
            w->kind == TLSW_BUNDLE_GARBAGE || w->kind == TLSW_BUNDLE_CRL_UNVERIFIED) {
            tlsw_set_err(err, errlen, "%s: %s", b->files[w->file].path, w->detail);
            return -1;
        }
    }
    return 0;
}

/* One certificate with its comment lines. Names are RFC 2253 escaped (tlsw_name_oneline), so
 * a subject cannot break out of its comment line; and a line starting with '#' can never be
 * taken for a BEGIN line. */
static int write_entry(BIO *mem, const struct bundle_entry *e, bool first)
{
    char na[32];
    tlsw_format_iso(e->pub.info.not_after, na, sizeof(na));
    if (BIO_printf(mem, "%s# subject: %s\n# issuer: %s\n# notAfter: %s\n# sha256: %s\n",
                   first ? "" : "\n", e->pub.info.subject, e->pub.info.issuer, na,
                   e->pub.info.sha256) <= 0)
        return -1;
    int ok = e->trusted ? PEM_write_bio_X509_AUX(mem, e->x509) : PEM_write_bio_X509(mem, e->x509);
    return ok == 1 ? 0 : -1;
}

/* One CRL with its comment lines; merge keeps the newest per issuer. */
static int write_crl(BIO *mem, const struct bundle_crl *c, bool first)
{
    char tu[32], nu[32];
    tlsw_format_iso(c->pub.info.this_update, tu, sizeof(tu));
    if (c->pub.info.next_update == (time_t)-1)
        dbt_strlcpy(nu, "none", sizeof(nu));
    else
        tlsw_format_iso(c->pub.info.next_update, nu, sizeof(nu));
    if (BIO_printf(mem, "%s# CRL issuer: %s\n# thisUpdate: %s\n# nextUpdate: %s\n# entries: %zu\n",
                   first ? "" : "\n", c->pub.info.issuer, tu, nu, c->pub.info.entries) <= 0)
        return -1;
    return PEM_write_bio_X509_CRL(mem, c->crl) == 1 ? 0 : -1;
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
        tlsw_set_err(err, errlen, "%s: not a usable file name", path);
        return -1;
    }
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        tlsw_set_err(err, errlen, "cannot create a temporary file in %s: %s", dir,
                     strerror_r(errno, ebuf, sizeof(ebuf)));
        return -1;
    }
    /* 0644 whatever the umask: a CA bundle is public, and the daemon may run as another user
     * (user = dbtrust) than the one merging. mkstemp creates 0600. */
    const char *step = "fchmod";
    if (fchmod(fd, 0644) != 0 || (step = "write", write_all(fd, data, len) != 0) ||
        (step = "fsync", fsync(fd) != 0)) {
        tlsw_set_err(err, errlen, "cannot write %s (%s): %s", tmp, step,
                     strerror_r(errno, ebuf, sizeof(ebuf)));
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        tlsw_set_err(err, errlen, "cannot replace %s: %s", path,
                     strerror_r(errno, ebuf, sizeof(ebuf)));
        unlink(tmp);
        return -1;
    }
    if (sync_dir(dir) != 0) {
        tlsw_set_err(err, errlen, "%s written, but syncing directory %s failed: %s", path, dir,
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
        tlsw_set_err(err, errlen, "out of memory");
        goto out;
    }
    bool first = true;
    for (size_t i = 0; i < b->cert_count; i++) {
        if (b->certs[i].pub.dup_of != TLSW_BUNDLE_NONE)
            continue;
        if (write_entry(mem, &b->certs[i], first) != 0) {
            tlsw_set_err(err, errlen, "cannot encode certificate %s: %s",
                         b->certs[i].pub.info.subject,
                         tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
            goto out;
        }
        first = false;
    }
    for (size_t i = 0; i < b->crl_count; i++) {
        const struct bundle_crl *c = &b->crls[i];
        if (c->signer == TLSW_BUNDLE_NONE || c->pub.newer != TLSW_BUNDLE_NONE)
            continue;
        if (write_crl(mem, c, first) != 0) {
            tlsw_set_err(err, errlen, "cannot encode the CRL of %s: %s", c->pub.info.issuer,
                         tlsw_openssl_reason(ebuf, sizeof(ebuf), NULL));
            goto out;
        }
        first = false;
    }
    char *data = NULL;
    long len = BIO_get_mem_data(mem, &data);
    if (len < 0 || (len > 0 && data == NULL)) {
        tlsw_set_err(err, errlen, "out of memory");
        goto out;
    }
    ret = write_atomically(path, data, (size_t)len, err, errlen);
out:
    BIO_free(mem);
    return ret;
}
