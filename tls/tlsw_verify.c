/* Certificate verification results turned into a stable reason and a sentence an operator can
 * act on (DESIGN.md "Failure reasons"). OpenSSL keeps only the final error code; the callback
 * below keeps what the message needs: depth, failing certificate, the leaf's names. */
#define TLSW_INTERNAL
#include "tlsw.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <openssl/x509v3.h>

/* The names OpenSSL's host check looked at: DNS and IP SANs, or the subject CN when the
 * certificate has no DNS SAN (the check falls back to the CN only then). */
static void leaf_names(X509 *x, char *list, size_t cap)
{
    char name[256];
    bool have_dns = false;

    list[0] = '\0';
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        if (gn->type == GEN_DNS) {
            const ASN1_STRING *s = gn->d.dNSName;
            tlsw_printable(name, sizeof(name), ASN1_STRING_get0_data(s),
                           (size_t)ASN1_STRING_length(s));
            tlsw_append_name(list, cap, name);
            have_dns = true;
        } else if (gn->type == GEN_IPADD) {
            const ASN1_OCTET_STRING *s = gn->d.iPAddress;
            int len = ASN1_STRING_length(s);
            int af = len == 4 ? AF_INET : len == 16 ? AF_INET6 : -1;
            if (af == -1 || inet_ntop(af, ASN1_STRING_get0_data(s), name, sizeof(name)) == NULL)
                dbt_strlcpy(name, "<bad IP SAN>", sizeof(name));
            tlsw_append_name(list, cap, name);
        }
    }
    GENERAL_NAMES_free(gens);
    if (have_dns)
        return;

    const X509_NAME *subject = X509_get_subject_name(x);
    int idx = -1;
    while ((idx = X509_NAME_get_index_by_NID(subject, NID_commonName, idx)) >= 0) {
        unsigned char *utf8 = NULL;
        int len =
            ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
        if (len >= 0) {
            tlsw_printable(name, sizeof(name), utf8, (size_t)len);
            tlsw_append_name(list, cap, name);
        }
        OPENSSL_free(utf8);
    }
}

/* What a revocation failure needs in its message: the entry (serial, date, reason) or the CRL
 * at fault. */
static void record_revocation(struct tlsw_verify_rec *r, X509_STORE_CTX *sctx, X509 *cert, int err)
{
    X509_CRL *crl = X509_STORE_CTX_get0_current_crl(sctx);
    if (err == X509_V_ERR_CERT_REVOKED && cert != NULL) {
        X509_REVOKED *rev = NULL;
        tlsw_asn1_int_hex(X509_get0_serialNumber(cert), r->serial, sizeof(r->serial));
        r->revoked_at = (time_t)-1;
        r->revoke_reason = -1;
        if (crl != NULL && X509_CRL_get0_by_cert(crl, &rev, cert) == 1 && rev != NULL) {
            r->revoked_at = tlsw_asn1_time(X509_REVOKED_get0_revocationDate(rev));
            ASN1_ENUMERATED *code = X509_REVOKED_get_ext_d2i(rev, NID_crl_reason, NULL, NULL);
            if (code != NULL)
                r->revoke_reason = (int)ASN1_ENUMERATED_get(code);
            ASN1_ENUMERATED_free(code);
        }
    }
    if (crl != NULL) {
        tlsw_name_oneline(X509_CRL_get_issuer(crl), r->crl_issuer, sizeof(r->crl_issuer));
        r->crl_this_update = tlsw_asn1_time(X509_CRL_get0_lastUpdate(crl));
        const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
        r->crl_next_update = next != NULL ? tlsw_asn1_time(next) : (time_t)-1;
    }
}

/* Revocation errors the generation's policy lets pass (PROTOCOLS.md part D). A root has no
 * issuer whose CRL could list it, so its missing CRL never counts; an issuer without a CRL only
 * counts with crl_required; a stale CRL is still applied (its entries stay revoked) and only
 * fails the chain with crl_stale = refuse. */
static bool revocation_tolerated(const struct tlsw_verify_rec *r, X509_STORE_CTX *sctx, X509 *cert,
                                 int err, int depth)
{
    switch (err) {
    case X509_V_ERR_UNABLE_TO_GET_CRL: {
        STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(sctx);
        bool top = chain != NULL && depth == sk_X509_num(chain) - 1;
        bool root = top && cert != NULL && X509_self_signed(cert, 0) == 1;
        return root || !r->crl_required;
    }
    case X509_V_ERR_CRL_HAS_EXPIRED:
    case X509_V_ERR_CRL_NOT_YET_VALID:
        return !r->crl_stale_refuse;
    default:
        return false;
    }
}

int tlsw_verify_cb(int ok, X509_STORE_CTX *sctx)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct tlsw_app_data *app = ssl != NULL ? SSL_get_app_data(ssl) : NULL;
    struct tlsw_verify_rec *r = app != NULL ? app->vrec : NULL;
    if (r == NULL)
        return ok; /* not one of our connections, or past its handshake: change nothing */

    int depth = X509_STORE_CTX_get_error_depth(sctx);
    X509 *cert = X509_STORE_CTX_get_current_cert(sctx);
    if (depth == 0 && cert != NULL && !r->have_leaf) {
        leaf_names(cert, r->leaf_names, sizeof(r->leaf_names));
        r->have_leaf = true;
    }
    if (!ok && revocation_tolerated(r, sctx, cert, X509_STORE_CTX_get_error(sctx), depth))
        return 1;
    /* The first error is the one verification stops at (we never override ok otherwise). */
    if (!ok && r->err == X509_V_OK) {
        r->err = X509_STORE_CTX_get_error(sctx);
        record_revocation(r, sctx, cert, r->err);
        r->depth = depth;
        if (cert != NULL) {
            tlsw_name_oneline(X509_get_subject_name(cert), r->subject, sizeof(r->subject));
            tlsw_name_oneline(X509_get_issuer_name(cert), r->issuer, sizeof(r->issuer));
            r->not_before = tlsw_asn1_time(X509_get0_notBefore(cert));
            r->not_after = tlsw_asn1_time(X509_get0_notAfter(cert));
        }
    }
    return ok;
}

/* Whether name is one entry of the "a, b, c" list. An IP host listed in a failed IP check can
 * only be a DNS SAN spelling the address, which OpenSSL never matches against an address. */
static bool list_has(const char *list, const char *name)
{
    size_t n = name != NULL ? strlen(name) : 0;
    for (const char *p = list; n > 0 && (p = strstr(p, name)) != NULL; p += n)
        if ((p == list || (p >= list + 2 && p[-2] == ',' && p[-1] == ' ')) &&
            (p[n] == '\0' || p[n] == ','))
            return true;
    return false;
}

/* Errors that mean "no path to a root of the bundle"; they name the missing issuer. */
static bool is_missing_issuer(long v)
{
    return v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
           v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
           v == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE;
}

static enum dbt_reason describe_revoked(const struct tlsw_verify_rec *r, bool have, int depth,
                                        const char *subject, char *detail, size_t cap)
{
    char when[32], reason[48];
    tlsw_format_iso(have ? r->revoked_at : (time_t)-1, when, sizeof(when));
    if (!have || r->revoke_reason < 0)
        dbt_strlcpy(reason, "none given", sizeof(reason));
    else
        snprintf(reason, sizeof(reason), "%s (%d)", tlsw_crl_reason_name(r->revoke_reason),
                 r->revoke_reason);
    snprintf(detail, cap, "certificate revoked (depth %d, %s, serial %s, revoked %s, reason %s)",
             depth, subject, have && r->serial[0] != '\0' ? r->serial : "?", when, reason);
    return DBT_TLS_CERT_REVOKED;
}

enum dbt_reason tlsw_verify_describe(long v, const struct tlsw_verify_rec *r, const char *host,
                                     const char *anchors, char *detail, size_t cap)
{
    char day[32];
    const char *what = X509_verify_cert_error_string(v);
    /* Depth and subject belong to this error only if the callback saw the same one. */
    bool have = r != NULL && r->err == v;
    int depth = have ? r->depth : -1;
    const char *subject = have && r->subject[0] != '\0' ? r->subject : "?";

    switch (v) {
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        if (r != NULL && r->have_leaf && r->leaf_names[0] != '\0')
            snprintf(detail, cap, "certificate is for %s, not %s%s", r->leaf_names,
                     host != NULL ? host : "?",
                     v == X509_V_ERR_IP_ADDRESS_MISMATCH && list_has(r->leaf_names, host)
                         ? " (it is a DNS name there; an address needs an IP SAN)"
                         : "");
        else
            snprintf(detail, cap, "certificate has no DNS or IP name, not %s",
                     host != NULL ? host : "?");
        return DBT_TLS_HOSTNAME_MISMATCH;
    case X509_V_ERR_CERT_HAS_EXPIRED:
        tlsw_format_day(have ? r->not_after : (time_t)-1, day, sizeof(day));
        snprintf(detail, cap, "%s (depth %d, %s, notAfter %s)", what, depth, subject, day);
        return DBT_TLS_CERT_EXPIRED;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        tlsw_format_day(have ? r->not_before : (time_t)-1, day, sizeof(day));
        snprintf(detail, cap, "%s (depth %d, %s, notBefore %s)", what, depth, subject, day);
        return DBT_TLS_CERT_NOT_YET_VALID;
    case X509_V_ERR_CERT_REVOKED:
        return describe_revoked(r, have, depth, subject, detail, cap);
    case X509_V_ERR_UNABLE_TO_GET_CRL:
        snprintf(detail, cap,
                 "no CRL for the issuer of depth %d, %s (issuer %s) and crl_required = on", depth,
                 subject, have && r->issuer[0] != '\0' ? r->issuer : "?");
        return DBT_TLS_CRL_MISSING;
    case X509_V_ERR_CRL_HAS_EXPIRED:
    case X509_V_ERR_CRL_NOT_YET_VALID:
        tlsw_format_iso(
            have ? (v == X509_V_ERR_CRL_HAS_EXPIRED ? r->crl_next_update : r->crl_this_update)
                 : (time_t)-1,
            day, sizeof(day));
        snprintf(detail, cap, "%s (CRL of %s, %s %s; checking depth %d, %s) and crl_stale = refuse",
                 what, have && r->crl_issuer[0] != '\0' ? r->crl_issuer : "?",
                 v == X509_V_ERR_CRL_HAS_EXPIRED ? "nextUpdate" : "thisUpdate", day, depth,
                 subject);
        return DBT_TLS_CRL_STALE;
    case X509_V_ERR_OUT_OF_MEM:
    case X509_V_ERR_UNSPECIFIED:
    case X509_V_ERR_APPLICATION_VERIFICATION:
        snprintf(detail, cap, "%s", what);
        return DBT_TLS_ERROR;
    default:
        break;
    }
    /* Everything else (missing issuer, self-signed in chain, bad signature, not a CA, path
     * length, purpose, weak key, ...) means the chain does not lead to a root we trust. */
    if (!have)
        snprintf(detail, cap, "%s", what);
    else if (is_missing_issuer(v))
        snprintf(detail, cap, "%s (depth %d, %s; issuer %s is not in %s)", what, depth, subject,
                 r->issuer[0] != '\0' ? r->issuer : "?", anchors);
    else
        snprintf(detail, cap, "%s (depth %d, %s)", what, depth, subject);
    return DBT_TLS_UNTRUSTED_CHAIN;
}

enum dbt_reason tlsw_verify_describe_client(long v, const struct tlsw_verify_rec *r, char *detail,
                                            size_t cap)
{
    /* Only tlsw_server.c's chain check reports this, after the chain itself verified. */
    if (v == X509_V_ERR_APPLICATION_VERIFICATION && r != NULL && r->err == v) {
        if (r->leaf_names[0] != '\0')
            snprintf(detail, cap, "client certificate names %s, not in client_names",
                     r->leaf_names);
        else
            snprintf(detail, cap, "client certificate has no DNS or URI name and no CN (%s)",
                     r->subject[0] != '\0' ? r->subject : "empty subject");
        return DBT_CLIENT_CERT_REJECTED;
    }
    /* The same sentences as for an upstream's chain; the reasons are the client leg's own, so
     * that a refused client never counts as a failure of the upstream. */
    switch (tlsw_verify_describe(v, r, NULL, "client_ca", detail, cap)) {
    case DBT_TLS_CERT_EXPIRED:
    case DBT_TLS_CERT_NOT_YET_VALID:
        return DBT_CLIENT_CERT_EXPIRED;
    case DBT_TLS_UNTRUSTED_CHAIN:
        return DBT_CLIENT_CERT_UNTRUSTED;
    default:
        return DBT_CLIENT_TLS_HANDSHAKE_FAILED;
    }
}
