/* CA bundle files as an operator sees them (`dbtrust bundle inspect|merge`, DESIGN.md
 * "Interfaces"): every certificate of one or more PEM files with its metadata, the problems
 * worth a warning before the bundle is deployed, and a merged, de-duplicated bundle written
 * atomically. Command line only, never on the data path; OpenSSL stays behind this header. */
#ifndef TLSW_BUNDLE_H
#define TLSW_BUNDLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "dbt_util.h"
#include "tlsw.h"

/* What can be wrong with a bundle: enum value, stable name (used in output and by scripts), and
 * whether it is an error (the file could not be read or parsed: the daemon would refuse it) or a
 * warning (the daemon would load it, but something is probably not what the operator meant). */
#define TLSW_BUNDLE_WARN_MAP(X)                                                                    \
    X(UNREADABLE, "unreadable", true)            /* cannot open or read the file */                \
    X(NOT_PEM, "not_pem", true)                  /* a block OpenSSL cannot decode, or no PEM */    \
    X(NO_CERTIFICATE, "no_certificate", false)   /* parses, but holds no certificate */            \
    X(GARBAGE, "garbage", false)                 /* non-comment text outside the PEM blocks */     \
    X(NOT_CERTIFICATE, "not_certificate", false) /* a key, CRL... block: ignored, not merged */    \
    X(DUPLICATE, "duplicate", false)             /* same DER (SHA-256) as an earlier cert */       \
    X(EXPIRED, "expired", false)                                                                   \
    X(NOT_YET_VALID, "not_yet_valid", false)                                                       \
    X(NOT_CA, "not_ca", false)             /* end-entity certificate in a trust bundle */          \
    X(MISSING_ROOT, "missing_root", false) /* intermediate whose issuer is not loaded */           \
    X(BAD_CRL, "bad_crl", true)            /* an X509 CRL block that does not decode */            \
    /* no CA of the input verifies its signature: the daemon refuses a bundle with it */           \
    X(CRL_UNVERIFIED, "crl_unverified", false)                                                     \
    X(CRL_STALE, "crl_stale", false)           /* past nextUpdate, or thisUpdate in the future */  \
    X(CRL_SUPERSEDED, "crl_superseded", false) /* a newer CRL of the same issuer is loaded */

enum tlsw_bundle_warn {
#define TLSW_BUNDLE_WARN_ENUM(id, name, is_error) TLSW_BUNDLE_##id,
    TLSW_BUNDLE_WARN_MAP(TLSW_BUNDLE_WARN_ENUM)
#undef TLSW_BUNDLE_WARN_ENUM
};

const char *tlsw_bundle_warn_name(enum tlsw_bundle_warn kind);
bool tlsw_bundle_warn_is_error(enum tlsw_bundle_warn kind);

/* "No certificate" in the index fields below. */
#define TLSW_BUNDLE_NONE SIZE_MAX

/* One certificate of one file, in file order. */
struct tlsw_bundle_cert {
    struct tlsw_cert_info info;
    size_t file;   /* index of its file */
    size_t index;  /* 1-based position among the certificates of its file */
    unsigned line; /* line of its BEGIN line in the file */
    bool self_signed;
    size_t dup_of; /* the first certificate with the same SHA-256, or TLSW_BUNDLE_NONE */
};

/* One CRL of one file, in file order. */
struct tlsw_bundle_crl {
    struct tlsw_crl_info info; /* verified_by "" when no certificate of the input verifies it */
    size_t file;
    size_t index;  /* 1-based position among the CRLs of its file */
    unsigned line; /* line of its BEGIN line */
    size_t newer;  /* the CRL that supersedes it (same issuer and key), or TLSW_BUNDLE_NONE */
};

struct tlsw_bundle_warning {
    enum tlsw_bundle_warn kind;
    size_t file;      /* index of the file it is about */
    size_t crl;       /* the CRL it is about (CRL_* kinds), or TLSW_BUNDLE_NONE */
    size_t cert;      /* the certificate it is about, or TLSW_BUNDLE_NONE for the whole file */
    size_t other;     /* DUPLICATE: the earlier copy; otherwise TLSW_BUNDLE_NONE */
    unsigned line;    /* problem's line, or its certificate's; 0: the whole file */
    char detail[640]; /* human text, without the file name and certificate number */
};

struct tlsw_bundle;

/* Reads every file and checks the certificates together, as one bundle, at time now. A file
 * that cannot be read or parsed does not fail the call: it becomes an error warning, so one
 * report covers all files. Returns -1 (and *out NULL) only when memory runs out. */
DBT_MUST_USE int tlsw_bundle_load(const char *const *paths, size_t path_count, time_t now,
                                  struct tlsw_bundle **out);
void tlsw_bundle_free(struct tlsw_bundle *b);

size_t tlsw_bundle_file_count(const struct tlsw_bundle *b);
const char *tlsw_bundle_file_path(const struct tlsw_bundle *b, size_t file);
size_t tlsw_bundle_file_cert_count(const struct tlsw_bundle *b, size_t file);

size_t tlsw_bundle_cert_count(const struct tlsw_bundle *b);
const struct tlsw_bundle_cert *tlsw_bundle_cert(const struct tlsw_bundle *b, size_t i);
size_t tlsw_bundle_unique_count(const struct tlsw_bundle *b); /* certificates minus duplicates */

/* The CRLs (X509 CRL blocks), checked against the certificates of all files: who verifies each,
 * which are stale, which are superseded by a newer one of the same issuer. */
size_t tlsw_bundle_crl_count(const struct tlsw_bundle *b);
const struct tlsw_bundle_crl *tlsw_bundle_crl(const struct tlsw_bundle *b, size_t i);
/* CRLs merge writes: verified and not superseded (the newest per issuer). */
size_t tlsw_bundle_crl_kept_count(const struct tlsw_bundle *b);

size_t tlsw_bundle_warning_count(const struct tlsw_bundle *b);
const struct tlsw_bundle_warning *tlsw_bundle_warning(const struct tlsw_bundle *b, size_t i);
bool tlsw_bundle_has_errors(const struct tlsw_bundle *b);

/* Whole days from now until t, rounded down: -1 for a certificate that expired an hour ago. */
long tlsw_bundle_days_left(time_t t, time_t now);

/* Whether merge may write: no file unreadable or unparsable, none without a certificate, none
 * with garbage between its blocks (it may hide a certificate whose BEGIN line is broken), no CRL
 * that no certificate of the input verifies (the daemon would refuse the merged bundle). On
 * refusal returns -1 and says why, naming the file. */
DBT_MUST_USE int tlsw_bundle_mergeable(const struct tlsw_bundle *b, char *err, size_t errlen);

/* Writes the unique certificates, in order, each re-encoded by OpenSSL and preceded by comment
 * lines (subject, issuer, notAfter, sha256), then the newest CRL per issuer (and key), to path: a
 * temp file in the same directory, fsync, rename over path, fsync of the directory; mode 0644.
 * Refuses what tlsw_bundle_mergeable refuses; path is untouched on any failure before the rename.
 */
DBT_MUST_USE int tlsw_bundle_write(const struct tlsw_bundle *b, const char *path, char *err,
                                   size_t errlen);

#endif
