/* tls/tlsw_bundle*: `dbtrust bundle inspect|merge` below the command line, and the daemon's own
 * loader (tlsw_gen_load) on the same bytes. The input is one or more bundle files, separated by
 * FILE_SEP; each goes to an anonymous memfd (both loaders only read paths). Checked: every index
 * the report hands out is in range and every string terminated; duplicates point at their first
 * copy; inspect and the daemon agree on whether the file loads; a merged bundle reloads as
 * exactly the unique certificates, in order, with nothing to warn about its text. Inspection
 * time is fixed (NOW), so a crash reproduces on any day. */
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "tlsw.h"
#include "tlsw_bundle.h"

#define FILE_SEP  "\n@@next-file@@\n"
#define MAX_FILES 4
#define NOW       ((time_t)1767225600) /* 2026-01-01T00:00:00Z */

struct files {
    size_t n;
    int fd[MAX_FILES];
    char path[MAX_FILES][64];
    const char *paths[MAX_FILES];
};

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        FUZZ_CHECK(w > 0, "write to a memfd");
        p += w;
        n -= (size_t)w;
    }
}

static const uint8_t *find(const uint8_t *p, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (p[i] == (uint8_t)needle[0] && memcmp(p + i, needle, m) == 0)
            return p + i;
    return NULL;
}

static void files_open(struct files *f, const uint8_t *data, size_t size)
{
    f->n = 0;
    while (f->n < MAX_FILES) {
        const uint8_t *sep = f->n + 1 < MAX_FILES ? find(data, size, FILE_SEP) : NULL;
        size_t len = sep ? (size_t)(sep - data) : size;
        int fd = memfd_create("dbtrust-fuzz-bundle", MFD_CLOEXEC);
        FUZZ_CHECK(fd >= 0, "memfd_create");
        write_all(fd, data, len);
        f->fd[f->n] = fd;
        snprintf(f->path[f->n], sizeof f->path[f->n], "/proc/self/fd/%d", fd);
        f->paths[f->n] = f->path[f->n];
        f->n++;
        if (!sep)
            break;
        data = sep + strlen(FILE_SEP);
        size -= len + strlen(FILE_SEP);
    }
}

static void files_close(struct files *f)
{
    for (size_t i = 0; i < f->n; i++)
        close(f->fd[i]);
}

static bool refuses_merge(enum tlsw_bundle_warn k)
{
    return tlsw_bundle_warn_is_error(k) || k == TLSW_BUNDLE_NO_CERTIFICATE ||
           k == TLSW_BUNDLE_GARBAGE || k == TLSW_BUNDLE_CRL_UNVERIFIED;
}

static void check_crls(const struct tlsw_bundle *b, const struct files *f)
{
    for (size_t i = 0; i < tlsw_bundle_crl_count(b); i++) {
        const struct tlsw_bundle_crl *c = tlsw_bundle_crl(b, i);
        FUZZ_CHECK(c->file < f->n && c->index >= 1 && c->line >= 1, "CRL %zu: file %zu", i,
                   c->file);
        FUZZ_CHECK_CSTR(c->info.issuer);
        FUZZ_CHECK_CSTR(c->info.verified_by);
        FUZZ_CHECK_CSTR(c->info.number);
        FUZZ_CHECK(c->newer == TLSW_BUNDLE_NONE ||
                       (c->newer < tlsw_bundle_crl_count(b) && c->newer != i &&
                        tlsw_bundle_crl(b, c->newer)->newer == TLSW_BUNDLE_NONE),
                   "CRL %zu: superseded by %zu, which is not in force", i, c->newer);
        FUZZ_CHECK(c->newer == TLSW_BUNDLE_NONE || c->info.verified_by[0] != '\0',
                   "CRL %zu: superseded without being verified", i);
    }
}

static void check_report(const struct tlsw_bundle *b, const struct files *f)
{
    size_t certs = tlsw_bundle_cert_count(b), per_file = 0, unique = 0;
    bool errors = false, refused = false;

    FUZZ_CHECK(tlsw_bundle_file_count(b) == f->n, "file count");
    for (size_t i = 0; i < f->n; i++) {
        FUZZ_CHECK(strcmp(tlsw_bundle_file_path(b, i), f->paths[i]) == 0, "file path %zu", i);
        per_file += tlsw_bundle_file_cert_count(b, i);
    }
    FUZZ_CHECK(per_file == certs, "certificates per file add up to %zu, not %zu", per_file, certs);
    for (size_t i = 0; i < certs; i++) {
        const struct tlsw_bundle_cert *c = tlsw_bundle_cert(b, i);
        FUZZ_CHECK(c->file < f->n && c->index >= 1 &&
                       c->index <= tlsw_bundle_file_cert_count(b, c->file) && c->line >= 1,
                   "certificate %zu: file %zu index %zu line %u", i, c->file, c->index, c->line);
        FUZZ_CHECK_CSTR(c->info.subject);
        FUZZ_CHECK_CSTR(c->info.issuer);
        FUZZ_CHECK_CSTR(c->info.spki_pin);
        FUZZ_CHECK(strlen(c->info.sha256) == 64, "sha256 '%s'", c->info.sha256);
        if (c->dup_of == TLSW_BUNDLE_NONE) {
            unique++;
            for (size_t j = 0; j < i; j++)
                FUZZ_CHECK(strcmp(tlsw_bundle_cert(b, j)->info.sha256, c->info.sha256) != 0,
                           "certificate %zu repeats %zu but is not marked a duplicate", i, j);
        } else {
            FUZZ_CHECK(c->dup_of < i, "dup_of %zu of %zu", c->dup_of, i);
            const struct tlsw_bundle_cert *first = tlsw_bundle_cert(b, c->dup_of);
            FUZZ_CHECK(first->dup_of == TLSW_BUNDLE_NONE &&
                           strcmp(first->info.sha256, c->info.sha256) == 0,
                       "certificate %zu: dup_of %zu is not its first copy", i, c->dup_of);
        }
        (void)tlsw_bundle_days_left(c->info.not_after, NOW);
    }
    FUZZ_CHECK(unique == tlsw_bundle_unique_count(b), "unique %zu vs %zu", unique,
               tlsw_bundle_unique_count(b));

    const struct tlsw_bundle_warning *prev = NULL;
    for (size_t i = 0; i < tlsw_bundle_warning_count(b); i++) {
        const struct tlsw_bundle_warning *w = tlsw_bundle_warning(b, i);
        FUZZ_CHECK(strcmp(tlsw_bundle_warn_name(w->kind), "unknown") != 0, "kind %d", w->kind);
        FUZZ_CHECK(w->file < f->n, "warning %zu: file %zu", i, w->file);
        FUZZ_CHECK(w->cert == TLSW_BUNDLE_NONE || w->cert < certs, "warning %zu: cert", i);
        FUZZ_CHECK(w->crl == TLSW_BUNDLE_NONE || w->crl < tlsw_bundle_crl_count(b),
                   "warning %zu: crl", i);
        FUZZ_CHECK(w->other == TLSW_BUNDLE_NONE || w->other < certs, "warning %zu: other", i);
        FUZZ_CHECK_CSTR(w->detail);
        if (w->kind == TLSW_BUNDLE_DUPLICATE)
            FUZZ_CHECK(w->cert != TLSW_BUNDLE_NONE &&
                           tlsw_bundle_cert(b, w->cert)->dup_of == w->other,
                       "duplicate warning %zu", i);
        if (w->cert != TLSW_BUNDLE_NONE)
            FUZZ_CHECK(tlsw_bundle_cert(b, w->cert)->file == w->file, "warning %zu: file", i);
        /* a report reads top to bottom: file order, then line */
        FUZZ_CHECK(!prev || prev->file < w->file ||
                       (prev->file == w->file && prev->line <= w->line),
                   "warnings out of order at %zu", i);
        prev = w;
        errors |= tlsw_bundle_warn_is_error(w->kind);
        refused |= refuses_merge(w->kind);
    }
    FUZZ_CHECK(errors == tlsw_bundle_has_errors(b), "has_errors");
    check_crls(b, f);

    char err[512];
    memset(err, 0xEE, sizeof err);
    int rc = tlsw_bundle_mergeable(b, err, sizeof err);
    FUZZ_CHECK(rc == (refused ? -1 : 0), "mergeable %d, refusing warnings %d", rc, refused);
    if (rc != 0)
        FUZZ_CHECK(memchr(err, '\0', sizeof err) != NULL, "mergeable: error not terminated");
}

/* A disagreement that is known and reported is tolerated while fuzzing, so the campaign goes on,
 * and enforced for the reproducers of regressions/: scripts/fuzz lists the known ids in
 * DBTRUST_FUZZ_KNOWN for the fuzzing runs only. */
static bool known(const char *id)
{
    const char *k = getenv("DBTRUST_FUZZ_KNOWN");
    return k != NULL && strstr(k, id) != NULL;
}

/* The daemon loads one file. Inspect promises both ways: an error means the daemon refuses the
 * file, and warnings alone mean it loads it (but for expiry: the daemon judges at the real time).
 */
static void check_daemon_agrees(const struct tlsw_bundle *b, const char *path)
{
    struct tlsw_gen_opts opts = {.verify = TLSW_VERIFY_FULL, .min_tls_version = 0, .pins = NULL};
    struct tlsw_gen *g = NULL;
    char err[512];

    int rc = tlsw_gen_load(path, &opts, &g, err, sizeof err);
    if (rc != 0) {
        FUZZ_CHECK(g == NULL && memchr(err, '\0', sizeof err) && err[0], "failed load, no why");
        if (strstr(err, "have expired") || strstr(err, "out of memory"))
            return;
        /* A file of CRLs alone has no certificate, and a CRL no CA of the file verifies is
         * refused: warnings for inspect, which may be given the bundle in another file. */
        bool refused = tlsw_bundle_has_errors(b) || tlsw_bundle_cert_count(b) == 0;
        for (size_t i = 0; i < tlsw_bundle_warning_count(b); i++)
            refused |= tlsw_bundle_warning(b, i)->kind == TLSW_BUNDLE_NO_CERTIFICATE ||
                       tlsw_bundle_warning(b, i)->kind == TLSW_BUNDLE_CRL_UNVERIFIED;
        FUZZ_CHECK(refused || known("bundle-daemon-refuses"),
                   "the daemon refuses a bundle inspect passes: %s", err);
        return;
    }
    FUZZ_CHECK(!tlsw_bundle_has_errors(b), "inspect reports an error the daemon loads fine");
    FUZZ_CHECK(tlsw_gen_cert_count(g) == tlsw_bundle_cert_count(b),
               "the daemon loaded %zu certificates, inspect lists %zu", tlsw_gen_cert_count(g),
               tlsw_bundle_cert_count(b));
    for (size_t i = 0; i < tlsw_gen_cert_count(g); i++)
        FUZZ_CHECK(strcmp(tlsw_gen_cert(g, i)->sha256, tlsw_bundle_cert(b, i)->info.sha256) == 0,
                   "certificate %zu differs between the daemon and inspect", i);
    /* Both keep the newest CRL per issuer and key: merge writes what the daemon uses. */
    FUZZ_CHECK(tlsw_gen_crl_count(g) == tlsw_bundle_crl_kept_count(b),
               "the daemon uses %zu CRLs, inspect keeps %zu", tlsw_gen_crl_count(g),
               tlsw_bundle_crl_kept_count(b));
    tlsw_gen_unref(g);
}

static char merge_path[128];

static void setup_once(void)
{
    if (merge_path[0])
        return;
    /* tmpfs where there is one: merge fsyncs the file and its directory on every input. One
     * file per process, unlinked as soon as it is read back. */
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(merge_path, sizeof merge_path, "%s/dbtrust-fuzz-merged-%d.pem", dir, (int)getpid());
}

/* merge writes the unique certificates, each behind comment lines: reloaded, that is exactly
 * those certificates in order, and text nothing warns about. */
static void check_merge(const struct tlsw_bundle *b)
{
    const char *path = merge_path;
    char err[512];
    struct tlsw_bundle *m = NULL;

    FUZZ_CHECK(tlsw_bundle_write(b, path, err, sizeof err) == 0, "merge: %s", err);
    const char *paths[1] = {path};
    FUZZ_CHECK(tlsw_bundle_load(paths, 1, NOW, &m) == 0 && m != NULL, "reload merged");
    unlink(path);
    FUZZ_CHECK(tlsw_bundle_cert_count(m) == tlsw_bundle_unique_count(b),
               "merged bundle has %zu certificates, not %zu", tlsw_bundle_cert_count(m),
               tlsw_bundle_unique_count(b));
    FUZZ_CHECK(tlsw_bundle_unique_count(m) == tlsw_bundle_cert_count(m), "merged duplicates");
    FUZZ_CHECK(tlsw_bundle_crl_count(m) == tlsw_bundle_crl_kept_count(b) &&
                   tlsw_bundle_crl_kept_count(m) == tlsw_bundle_crl_count(m),
               "merged bundle has %zu CRLs (%zu in force), not the %zu kept",
               tlsw_bundle_crl_count(m), tlsw_bundle_crl_kept_count(m),
               tlsw_bundle_crl_kept_count(b));
    for (size_t i = 0, k = 0; i < tlsw_bundle_cert_count(b); i++) {
        const struct tlsw_bundle_cert *c = tlsw_bundle_cert(b, i);
        if (c->dup_of != TLSW_BUNDLE_NONE)
            continue;
        FUZZ_CHECK(strcmp(tlsw_bundle_cert(m, k)->info.sha256, c->info.sha256) == 0,
                   "merged certificate %zu is not unique certificate %zu", k, i);
        k++;
    }
    for (size_t i = 0; i < tlsw_bundle_warning_count(m); i++) {
        const struct tlsw_bundle_warning *w = tlsw_bundle_warning(m, i);
        FUZZ_CHECK(!refuses_merge(w->kind), "merged bundle: %s: %s", tlsw_bundle_warn_name(w->kind),
                   w->detail);
    }
    tlsw_bundle_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct files f;
    struct tlsw_bundle *b = NULL;

    setup_once();
    files_open(&f, data, size);
    FUZZ_CHECK(tlsw_bundle_load(f.paths, f.n, NOW, &b) == 0 && b != NULL, "tlsw_bundle_load");
    check_report(b, &f);
    if (f.n == 1)
        check_daemon_agrees(b, f.paths[0]);
    char err[512];
    if (tlsw_bundle_mergeable(b, err, sizeof err) == 0)
        check_merge(b);
    tlsw_bundle_free(b);
    files_close(&f);
    return 0;
}
