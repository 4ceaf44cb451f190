/* OpenSSL behind a small API (DESIGN.md "tls/"): trust generations built from a CA bundle,
 * serving identities, and a TLS engine over its own transport BIO that never sees a socket, client
 * role upstream and server role toward clients. Ciphertext and plaintext never share a buffer
 * (h2o's model). */
#ifndef TLSW_H
#define TLSW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "dbt_reason.h"
#include "dbt_util.h"

enum tlsw_verify { TLSW_VERIFY_FULL, TLSW_VERIFY_CA };

/* A CRL past its nextUpdate (or before its thisUpdate): WARN still enforces it (its entries stay
 * revoked, the chain otherwise verifies: an unreachable CRL distribution point must not become an
 * outage); REFUSE fails the chain with tls_crl_stale. */
enum tlsw_crl_stale { TLSW_CRL_STALE_WARN, TLSW_CRL_STALE_REFUSE };

struct tlsw_gen_opts {
    enum tlsw_verify verify; /* FULL: chain + host name/IP; CA: chain only */
    int min_tls_version;     /* TLS1_2_VERSION or TLS1_3_VERSION */
    /* NULL or "sha256/BASE64, ...": in addition to the chain, some certificate of the verified
     * chain must have one of these SPKI pins, else the handshake fails with tls_pin_mismatch. */
    const char *pins;
    /* NULL or "": no CRL source besides the bundle's own X509 CRL blocks; else a file (PEM
     * blocks or one DER CRL) or a directory of such files (hidden entries skipped). */
    const char *crl_path;
    /* An issuer of the chain (the root aside) without a CRL fails it with tls_crl_missing;
     * otherwise only issuers that have a CRL are checked. */
    bool crl_required;
    enum tlsw_crl_stale crl_stale;
};

/* Metadata of one certificate of a bundle (or of a peer chain). */
struct tlsw_cert_info {
    char subject[256]; /* RFC 2253 one-line */
    char issuer[256];
    time_t not_before;
    time_t not_after;
    char sha256[65];   /* hex fingerprint of the DER */
    char spki_pin[64]; /* base64 SHA-256 of the SubjectPublicKeyInfo */
    bool is_ca;
};

/* One CRL of a generation, or of `dbtrust bundle inspect`. */
struct tlsw_crl_info {
    char issuer[256];      /* RFC 2253 one-line */
    char verified_by[256]; /* subject of the CA whose key verified it; "" when none did */
    char verified_by_sha256[65];
    char source[512]; /* the file it was read from */
    time_t this_update;
    time_t next_update; /* (time_t)-1: the CRL has none (it never goes stale) */
    size_t entries;     /* revoked certificates listed */
    bool delta;         /* a delta CRL (deltaCRLIndicator): applied on top of its base */
    char number[80];    /* crlNumber in hex, "" when absent */
};

/* An immutable trust generation: the parsed bundle, its certificates' metadata and the SSL_CTX
 * built from it. Refcounted with atomics; safe to share across worker threads. */
struct tlsw_gen;

/* Reads and validates a PEM bundle, builds a generation with refcount 1. Refuses (returns -1 and
 * writes why into err) an unreadable file, a file without certificates, garbage, or a bundle
 * whose certificates have all expired. */
DBT_MUST_USE int tlsw_gen_load(const char *bundle_path, const struct tlsw_gen_opts *opts,
                               struct tlsw_gen **out, char *err, size_t errlen);
void tlsw_gen_ref(struct tlsw_gen *g);
void tlsw_gen_unref(struct tlsw_gen *g);
size_t tlsw_gen_cert_count(const struct tlsw_gen *g);
const struct tlsw_cert_info *tlsw_gen_cert(const struct tlsw_gen *g, size_t i);
const char *tlsw_gen_sha256(const struct tlsw_gen *g); /* hex hash of the bundle content */
/* The CRLs in force (the newest per issuer; bundle blocks and the crl path together), each
 * verified at load time by a CA of the bundle. Reading them refuses the whole generation when
 * one cannot be parsed or its signature does not verify. */
size_t tlsw_gen_crl_count(const struct tlsw_gen *g);
const struct tlsw_crl_info *tlsw_gen_crl(const struct tlsw_gen *g, size_t i);
/* Hex hash over the files of the crl path (names and bytes), "" without one: with the bundle's
 * hash, what tells a reload whether anything changed. */
const char *tlsw_gen_crl_sha256(const struct tlsw_gen *g);
/* Name of a CRL reason code (RFC 5280 5.3.1), "unspecified" style; "?" when unknown. */
const char *tlsw_crl_reason_name(int code);

/* TLS engine for one leg of a connection: client role toward the upstream (tlsw_conn_new), or
 * server role toward the client (tlsw_conn_new_server, below). */
struct tlsw_conn;

enum tlsw_status {
    TLSW_OK,      /* done (handshake complete / data moved) */
    TLSW_WANT_IO, /* flush pending ciphertext to the peer and/or feed more from it */
    TLSW_CLOSED,  /* the peer sent close_notify (or closed cleanly) */
    TLSW_ERROR,   /* fatal: see tlsw_conn_failure() */
};

/* host: the name to verify and send as SNI, or an IP literal (verified against IP SANs, no SNI).
 * alpn: wire-format protocol list (e.g. "\x0apostgresql") or NULL. Takes a reference on g. */
struct tlsw_conn *tlsw_conn_new(struct tlsw_gen *g, const char *host, const uint8_t *alpn,
                                size_t alpn_len);
void tlsw_conn_free(struct tlsw_conn *c);

/* Drives the handshake; call after every feed. */
enum tlsw_status tlsw_conn_handshake(struct tlsw_conn *c);
/* Ciphertext from the peer, copied: the engine reads it during the calls that follow. */
void tlsw_conn_feed(struct tlsw_conn *c, const uint8_t *data, size_t len);
/* Ciphertext from the peer, lent without a copy: the engine reads it straight from data during
 * the calls that follow, until tlsw_conn_lend_end, which copies what it did not read (so data
 * may be reused afterwards). The proxy lends its read buffer for one read callback. */
void tlsw_conn_lend(struct tlsw_conn *c, const uint8_t *data, size_t len);
void tlsw_conn_lend_end(struct tlsw_conn *c);
/* Where ciphertext for the peer goes: called with each record as the engine writes it, straight
 * from OpenSSL's buffer, and must take all of it (copying what it cannot send at once). Without
 * one, ciphertext waits in the engine: tlsw_conn_pending and tlsw_conn_take. */
typedef void (*tlsw_output_fn)(void *arg, const uint8_t *data, size_t len);
void tlsw_conn_set_output(struct tlsw_conn *c, tlsw_output_fn fn, void *arg);
/* Ciphertext waiting for the peer (no output set): bytes available, and a copy-out. */
size_t tlsw_conn_pending(const struct tlsw_conn *c);
size_t tlsw_conn_take(struct tlsw_conn *c, uint8_t *buf, size_t cap);
/* Decrypted application data. *n = bytes written into buf. Returns TLSW_OK with *n > 0,
 * TLSW_WANT_IO with *n == 0 when more ciphertext is needed, TLSW_CLOSED on close_notify. */
enum tlsw_status tlsw_conn_read(struct tlsw_conn *c, uint8_t *buf, size_t cap, size_t *n);
/* Encrypts all of data: the records go to the output (or wait in the engine without one). */
enum tlsw_status tlsw_conn_write(struct tlsw_conn *c, const uint8_t *data, size_t len);
/* Writes a close_notify alert (to the output, or pending without one). */
void tlsw_conn_shutdown(struct tlsw_conn *c);
/* For idle connections: releases buffers that are empty (ciphertext kept or waiting, which keep
 * the largest size they ever held, e.g. the handshake's certificate flight). */
void tlsw_conn_trim(struct tlsw_conn *c);
/* Gives OpenSSL's record buffers back unless a record is half read or written: for what
 * SSL_MODE_RELEASE_BUFFERS keeps (after records other than application data). */
void tlsw_conn_release_buffers(struct tlsw_conn *c);

/* Key exchange: offer a key share for this group (an OpenSSL NID, e.g. what the server chose
 * last time) before the others. A server that wants another group answers with a
 * HelloRetryRequest, one more round trip per connection (PostgreSQL only takes P-256 by
 * default, OpenSSL offers X25519 first). Before the handshake; 0 = OpenSSL's order. */
void tlsw_conn_prefer_group(struct tlsw_conn *c, int nid);

/* Client role, before the handshake: the server must select one of the ALPN protocols offered
 * to tlsw_conn_new, else the handshake fails after verification with
 * DBT_UPSTREAM_NO_DIRECT_TLS. PostgreSQL direct TLS: libpq refuses a direct connection the
 * server answered without ALPN "postgresql", since only that proves the TLS server is a
 * PostgreSQL 17+ server rather than something terminating TLS for another protocol. -1 when
 * nothing (or a list longer than 63 bytes) was offered. */
DBT_MUST_USE int tlsw_conn_require_alpn(struct tlsw_conn *c);
int tlsw_conn_group(const struct tlsw_conn *c); /* the group negotiated (NID), 0 if unknown */

/* Resumption (MySQL/MariaDB send TLS 1.3 tickets; PostgreSQL disables them). A session is
 * only ever offered to the upstream it came from under the trust generation that verified
 * it: the caller keys its cache that way. */
struct tlsw_session;
/* A new reference to the connection's session when it became resumable since the last call
 * (a ticket arrived), else NULL. */
struct tlsw_session *tlsw_conn_new_session(struct tlsw_conn *c);
void tlsw_session_free(struct tlsw_session *s);
/* Offers s for resumption; before the handshake. */
void tlsw_conn_offer_session(struct tlsw_conn *c, struct tlsw_session *s);
bool tlsw_conn_resumed(const struct tlsw_conn *c);

/* After TLSW_ERROR (or a failed handshake): the stable reason and a human detail such as
 * "certificate has expired (depth 0, CN=db.example.com, notAfter 2020-01-31)" or
 * "certificate is for db.example.com, 10.0.0.5, not orders.internal". */
enum dbt_reason tlsw_conn_failure(const struct tlsw_conn *c, char *detail, size_t cap);

const char *tlsw_conn_version(const struct tlsw_conn *c); /* "TLSv1.3" */
const char *tlsw_conn_cipher(const struct tlsw_conn *c);
/* The verified peer chain, leaf first; returns the count written (at most cap). */
size_t tlsw_conn_peer_chain(const struct tlsw_conn *c, struct tlsw_cert_info *out, size_t cap);

/* Server role: the client leg of a central trust point (client_tls). The same engine API as
 * above (handshake, feed, take, read, write, shutdown, failure) drives both roles. A server-role
 * engine's tlsw_conn_failure gives client-leg reasons only (client_cert_missing,
 * client_cert_untrusted, client_cert_expired, client_cert_rejected, else
 * client_tls_handshake_failed; internal_error when out of memory), never tls_*: a refused client
 * says nothing about the upstream. */

struct tlsw_server_opts {
    const char *cert_path; /* PEM chain dbtrust presents, leaf first */
    const char *key_path;  /* its private key (PEM) */
    const char *ca_path;   /* NULL: no client certificate asked for; else clients must present
                              one that chains to a CA in this PEM file */
    const char *names;     /* NULL or "": any verified client name; else a comma list of
                              accepted names: a SAN dNSName/URI, or "CN=x" for the subject CN */
    int min_tls_version;   /* TLS1_2_VERSION or TLS1_3_VERSION */
};

/* An immutable, refcounted serving identity: certificate chain, key, optional client CA store
 * and accepted names, and the SSL_CTX built from them. Safe to share across worker threads. */
struct tlsw_server;

/* Reads and validates: the files exist and parse, the key matches the leaf, the leaf is inside
 * its validity period, the CA file (if any) holds at least one certificate. On failure returns
 * -1 with why in err (naming the file at fault). */
DBT_MUST_USE int tlsw_server_load(const struct tlsw_server_opts *o, struct tlsw_server **out,
                                  char *err, size_t errlen);
void tlsw_server_ref(struct tlsw_server *s);
void tlsw_server_unref(struct tlsw_server *s);
/* Hex SHA-256 over the bytes of the cert, key and CA files as read: equal = nothing changed. */
const char *tlsw_server_sha256(const struct tlsw_server *s);
/* The leaf dbtrust presents (subject, notAfter, fingerprint). */
const struct tlsw_cert_info *tlsw_server_leaf(const struct tlsw_server *s);

/* A server-role engine. alpn: the one wire-format protocol name accepted (e.g.
 * "\x0apostgresql"), or NULL for none; a client offering ALPN without it fails the handshake.
 * alpn_required: a client that offers no ALPN at all is refused once the handshake completes
 * (PostgreSQL direct TLS). Takes a reference on s. */
struct tlsw_conn *tlsw_conn_new_server(struct tlsw_server *s, const uint8_t *alpn, size_t alpn_len,
                                       bool alpn_required);
/* Server role, after the handshake: the client certificate's name that was accepted or checked
 * (the matching SAN, else the first SAN, else the CN), "" without a client certificate. */
const char *tlsw_conn_peer_name(const struct tlsw_conn *c);

/* True when s is an IPv4 or IPv6 literal. */
bool tlsw_is_ip_literal(const char *s);

/* tls/-private part: declarations shared between the files of tls/ only. Rather than a private
 * header of its own, tls/ has this guarded section of the public one (only the bundle files add
 * theirs, tlsw_bundle_internal.h); the proxy never defines TLSW_INTERNAL and so never sees
 * OpenSSL types through this header.
 *
 * Layering: dependencies point one way, down this list. A file calls (or hands OpenSSL as a
 * callback) only functions of files listed below it, and no file calls into one above it:
 *
 *   tlsw_conn.c          the engine, top of tls/: calls bio, gen, server, verify, certinfo, util
 *   tlsw_bio.c           the engine's transport BIO: nothing of tls/
 *   tlsw_gen.c           trust generations: verify (tlsw_verify_cb), certinfo, util
 *   tlsw_server.c        serving identities: verify (tlsw_verify_cb), certinfo, util
 *   tlsw_verify.c        verify callback, failure wording: crl, certinfo, util
 *   tlsw_bundle_merge.c  `dbtrust bundle` writing: bundle, util
 *   tlsw_bundle.c        `dbtrust bundle` reading: bundle_text, crl, certinfo, util
 *   tlsw_bundle_text.c   nothing of tls/
 *   tlsw_crl.c           CRLs: reading, checking signatures, metadata: certinfo, util
 *   tlsw_certinfo.c      util
 *   tlsw_util.c          nothing of tls/
 *
 * OpenSSL's callbacks run on behalf of a connection but are installed on the shared contexts
 * by gen and server, below the engine. They reach the connection's state through the SSL's app
 * data, a struct tlsw_app_data that tlsw_conn.c fills, and never call back into tlsw_conn.c. */
#ifdef TLSW_INTERNAL
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* What the verify callback saw, kept per connection: OpenSSL only keeps the final error code,
 * but a useful message needs the depth, the failing certificate and the leaf's names. */
struct tlsw_verify_rec {
    int err;   /* first X509_V_ERR_* reported, X509_V_OK if none */
    int depth; /* depth of the certificate that failed */
    char subject[256];
    char issuer[256];
    time_t not_before;
    time_t not_after;
    bool have_leaf; /* leaf_names has been filled */
    /* Client role: "a.example, 10.0.0.5", the DNS/IP SANs in order, or the CN if none. Server
     * role, for a refused name: the client certificate's DNS/URI SANs, or "CN=x" if none. */
    char leaf_names[512];
    /* Revocation policy of the generation, set before the handshake (tlsw_conn.c). */
    bool crl_required;
    bool crl_stale_refuse;
    /* X509_V_ERR_CERT_REVOKED: the entry of the failing certificate. */
    char serial[80]; /* hex */
    time_t revoked_at;
    int revoke_reason; /* RFC 5280 reason code, -1 when the entry gives none */
    /* X509_V_ERR_CRL_HAS_EXPIRED / CRL_NOT_YET_VALID: the CRL at fault. */
    char crl_issuer[256];
    time_t crl_this_update, crl_next_update;
};

/* Server role: what the handshake callbacks of tlsw_server.c learn about one client and
 * tlsw_conn.c reports, kept with tlsw_verify_rec until the handshake succeeded. */
struct tlsw_server_hs {
    uint8_t alpn[256]; /* the one protocol accepted, wire format; alpn[0] == 0: none */
    bool alpn_required;
    bool alpn_refused;      /* the client offered ALPN without it */
    bool alpn_missing;      /* alpn_required, and the client offered no ALPN at all */
    bool cert_missing;      /* a client certificate was required and none came */
    char alpn_offered[128]; /* "h2, http/1.1": the refused offer, for the failure detail */
    char peer_name[256];    /* the client certificate's accepted name, else its first one */
};

/* An SSL's app data, whatever the role: the part of its connection that OpenSSL's callbacks
 * write into (tlsw_verify_cb, the chain and ALPN callbacks of tlsw_server.c, the new-session
 * callback of tlsw_gen.c). Embedded in struct tlsw_conn and kept by tlsw_conn.c; a callback
 * needs nothing else of the connection. */
struct tlsw_app_data {
    /* Both while the handshake runs, NULL after it succeeded: a callback that finds NULL
     * changes nothing. */
    struct tlsw_verify_rec *vrec;
    struct tlsw_server_hs *srv; /* server role only */
    SSL_SESSION *ticket;        /* client role: referenced, the newest resumable session not
                                   yet handed out by tlsw_conn_new_session */
};

/* The engine's transport (tlsw_bio.c): one BIO is an SSL's read and write side. Input is
 * lent for one call (no copy) or kept (copied); output goes to a sink, or waits without one. */
BIO *tlsw_bio_new(void);
DBT_MUST_USE int tlsw_bio_keep(BIO *b, const uint8_t *data, size_t len);
void tlsw_bio_lend(BIO *b, const uint8_t *data, size_t len);
DBT_MUST_USE int tlsw_bio_lend_end(BIO *b); /* -1: out of memory keeping the unread rest */
void tlsw_bio_set_sink(BIO *b, tlsw_output_fn sink, void *arg);
size_t tlsw_bio_out_pending(BIO *b);
size_t tlsw_bio_out_take(BIO *b, uint8_t *dst, size_t cap);
void tlsw_bio_trim(BIO *b); /* releases empty buffers */

/* Trust generations (tlsw_gen.c). */
SSL_CTX *tlsw_gen_ctx(const struct tlsw_gen *g);
const char *tlsw_gen_pins(const struct tlsw_gen *g); /* "" when none are configured */
enum tlsw_verify tlsw_gen_verify_mode(const struct tlsw_gen *g);
bool tlsw_gen_crl_required(const struct tlsw_gen *g);
bool tlsw_gen_crl_stale_refuse(const struct tlsw_gen *g);

/* Serving identities (tlsw_server.c). */
SSL_CTX *tlsw_server_ctx(const struct tlsw_server *s);

/* Verification (tlsw_verify.c). */

/* Installed on every generation's SSL_CTX and on serving identities' with a client CA; fills
 * the vrec of the SSL's struct tlsw_app_data. */
int tlsw_verify_cb(int ok, X509_STORE_CTX *sctx);
/* Maps a non-OK SSL_get_verify_result() to a reason, and writes the human detail. anchors
 * names where a missing issuer should have been ("the bundle", "client_ca"). */
enum dbt_reason tlsw_verify_describe(long verify_result, const struct tlsw_verify_rec *r,
                                     const char *host, const char *anchors, char *detail,
                                     size_t cap);
/* The server role's mapping of a client certificate that failed: client_cert_expired,
 * client_cert_untrusted, client_cert_rejected (client_names), else
 * client_tls_handshake_failed. */
enum dbt_reason tlsw_verify_describe_client(long verify_result, const struct tlsw_verify_rec *r,
                                            char *detail, size_t cap);

/* Certificate metadata (tlsw_certinfo.c). */
DBT_MUST_USE int tlsw_cert_info_fill(X509 *x, struct tlsw_cert_info *out);
void tlsw_name_oneline(const X509_NAME *name, char *buf, size_t cap);
time_t tlsw_asn1_time(const ASN1_TIME *t); /* (time_t)-1 when unparsable */

/* CRLs (tlsw_crl.c). */

/* CRLs read from their files, each with the file it came from. */
struct tlsw_crl_item {
    X509_CRL *crl;
    char source[512];
};
struct tlsw_crl_list {
    struct tlsw_crl_item *items;
    size_t count, cap;
};
/* Takes crl (freed on failure). */
DBT_MUST_USE int tlsw_crl_list_push(struct tlsw_crl_list *l, X509_CRL *crl, const char *source);
void tlsw_crl_list_free(struct tlsw_crl_list *l);
/* Every CRL of path: a file (X509 CRL PEM blocks, or one DER CRL) or a directory of such files
 * (entries starting with '.' are skipped: a Kubernetes volume's "..data" and its timestamped
 * copies). A file that holds no CRL, or one that does not parse, refuses the whole source: -1
 * with why in err, naming the file. hash, when not NULL, is fed each file's name and bytes. */
DBT_MUST_USE int tlsw_crl_read_path(const char *path, struct tlsw_crl_list *out, EVP_MD_CTX *hash,
                                    char *err, size_t errlen);
/* The certificate of cas that signed crl: its subject is the CRL's issuer, it is a CA allowed to
 * sign CRLs (keyUsage cRLSign when it has a keyUsage) and its key verifies the signature. NULL
 * with why otherwise ("not in the bundle", "signature does not verify..."). */
X509 *tlsw_crl_signer(X509_CRL *crl, STACK_OF(X509) * cas, char *why, size_t cap);
/* Metadata; verified_by is filled from signer when not NULL. */
void tlsw_crl_info_fill(X509_CRL *crl, X509 *signer, const char *source, struct tlsw_crl_info *out);
/* One PEM block as a CRL: 1 with *out, 0 when the block is no CRL, -1 when it is an X509 CRL
 * block that does not decode. */
int tlsw_pem_crl(const char *name, const unsigned char *der, long derlen, X509_CRL **out);
/* Hex of an ASN1 INTEGER (serial numbers, CRL numbers) into buf; "?" when unreadable. */
void tlsw_asn1_int_hex(const ASN1_INTEGER *i, char *buf, size_t cap);

/* Helpers shared by the files of tls/ (tlsw_util.c). */

/* Real bundles are a few hundred KiB at most (Mozilla's whole store is ~220 KiB); anything much
 * larger is a wrong path (a log file, a device), refused before it is read into memory. */
#define TLSW_BUNDLE_MAX_BYTES (16u * 1024 * 1024)

/* Formats into err; does nothing when err is NULL or errlen is 0. */
void tlsw_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Copies the reason of the oldest queued OpenSSL error into buf (the root cause: callers push
 * generic errors such as "nested asn1 error" after it), or fallback when nothing is queued (some
 * failures queue nothing; NULL says "unknown error"), then clears the queue: it is per thread
 * and must not leak into the next caller's SSL_get_error(). Returns buf. */
const char *tlsw_openssl_reason(char *buf, size_t cap, const char *fallback);
/* Reads the whole file (at most TLSW_BUNDLE_MAX_BYTES) into *out (caller frees), so that
 * everything done with it (hash, parse, checks) sees the same bytes even if the file is being
 * rewritten. On failure returns -1 with why in err, without the path: callers name the file in
 * their own words ("No such file or directory", "larger than ... bytes, not a CA bundle"). */
DBT_MUST_USE int tlsw_read_file(const char *path, unsigned char **out, size_t *outlen, char *err,
                                size_t errlen);
/* Every certificate block of a PEM file (OpenSSL's reader: text between blocks is skipped, as
 * bundles carry "# Subject:" comments; keys and CRLs are skipped). An encrypted or undecodable
 * certificate block, or broken PEM, refuses the whole file: NULL with why in err (naming path).
 * Zero certificates is not an error here; callers word that themselves. */
DBT_MUST_USE STACK_OF(X509) * tlsw_read_certs(const unsigned char *data, size_t len,
                                              const char *path, char *err, size_t errlen);
/* The same, keeping the X509 CRL blocks in crls (NULL: skipped); a CRL block that does not decode
 * refuses the file like a broken certificate. */
DBT_MUST_USE STACK_OF(X509) * tlsw_read_certs_crls(const unsigned char *data, size_t len,
                                                   const char *path, struct tlsw_crl_list *crls,
                                                   char *err, size_t errlen);
/* Peer-supplied bytes (SANs, ALPN names) for a log line: anything outside printable ASCII
 * becomes '?', cut to cap - 1 bytes. */
void tlsw_printable(char *dst, size_t cap, const unsigned char *src, size_t len);
/* Appends name to the list "a, b, c"; ends it with "..." once the next name does not fit. */
void tlsw_append_name(char *list, size_t cap, const char *name);
/* Hex digits of in (lowercase) into out, which holds 2 * len + 1 bytes. */
void tlsw_hex_encode(const unsigned char *in, size_t len, char *out);
/* t in UTC as "2024-01-31" (day) or "2024-01-31T12:00:00Z" (iso), or "?" when t is (time_t)-1
 * (an unparsable certificate time) or cannot be formatted. */
void tlsw_format_day(time_t t, char *buf, size_t cap);

/* One block of PEM_read_bio, as both bundle readers (daemon and inspect) judge it. */
enum tlsw_pem_block {
    TLSW_PEM_CERT,      /* *out: the certificate (caller frees) */
    TLSW_PEM_NOT_CERT,  /* a key, a CRL...: not a trust anchor, ignored */
    TLSW_PEM_ENCRYPTED, /* a certificate block with Proc-Type/DEK-Info headers: refused */
    TLSW_PEM_BAD_CERT,  /* a certificate block whose DER does not decode: refused */
};
enum tlsw_pem_block tlsw_pem_cert(const char *name, const char *header, const unsigned char *der,
                                  long derlen, X509 **out);
void tlsw_format_iso(time_t t, char *buf, size_t cap);
#endif /* TLSW_INTERNAL */

#endif
