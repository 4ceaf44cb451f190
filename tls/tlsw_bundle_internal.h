/* tls/-private part of `dbtrust bundle`: what tlsw_bundle.c (reading and checking),
 * tlsw_bundle_text.c (the text between PEM blocks) and tlsw_bundle_merge.c (writing) share.
 * Never included outside tls/ (and tests/unit/): it shows OpenSSL types and private layouts. */
#ifndef TLSW_BUNDLE_INTERNAL_H
#define TLSW_BUNDLE_INTERNAL_H

#ifndef TLSW_INTERNAL
#error "tls-private header: define TLSW_INTERNAL before including it"
#endif

#include <stdbool.h>
#include <stddef.h>

#include "tlsw_bundle.h"

struct bundle_file {
    char *path;
    size_t cert_count;
};

struct bundle_entry {
    struct tlsw_bundle_cert pub;
    X509 *x509;
    bool trusted; /* came as TRUSTED CERTIFICATE: its trust settings are kept by merge */
};

struct bundle_crl {
    struct tlsw_bundle_crl pub;
    X509_CRL *crl;
    size_t signer; /* index of the certificate that verifies it, or TLSW_BUNDLE_NONE */
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
    struct bundle_crl *crls;
    size_t crl_count, crl_cap;
    size_t *file_crl_count; /* per file */
    struct bundle_warning *warns;
    size_t warn_count, warn_cap;
    size_t unique;
    bool oom; /* a certificate or warning could not be recorded: the report would be wrong */
};

/* The text OpenSSL's PEM reader skipped (tlsw_bundle_text.c). */

/* Where the block that OpenSSL read from [from, to) of data starts: the first line that OpenSSL
 * takes for a BEGIN line. Returns to when there is none. */
size_t tlsw_bundle_find_begin(const unsigned char *data, size_t from, size_t to);
/* Checks the skipped text [from, to) of data line by line. Returns NULL when all of it may stand
 * between PEM blocks (comments, titles, blank lines), else what is wrong with its first bad line
 * ("binary data (a DER file? ...)"), whose offset goes to *bad_line. */
const char *tlsw_bundle_check_text(const unsigned char *data, size_t from, size_t to,
                                   size_t *bad_line);

#endif
