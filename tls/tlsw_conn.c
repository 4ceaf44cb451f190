/* TLS engine over a transport BIO (h2o's model), one type for both roles: the client role on the
 * upstream leg, the server role on the client leg (client_tls). The proxy lends ciphertext read
 * from the socket and receives ciphertext to write to it (tlsw_bio.c); plaintext only crosses
 * SSL_read/SSL_write.
 * No socket, no event loop here, so every path is testable in memory. Only the constructors, the
 * checks at the end of the handshake and the failure mapping differ between the roles. */
#define TLSW_INTERNAL
#include "tlsw.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

/* What only the handshake (or explaining its failure) needs: freed once it succeeded, so an
 * idle connection does not carry 1.4 KiB of names. */
struct tlsw_handshake_state {
    struct tlsw_verify_rec vrec;
    /* client role: the ALPN list offered (wire format), kept when the server must pick from it
     * (tlsw_conn_require_alpn) */
    uint8_t offered_alpn[64];
    uint8_t offered_alpn_len;
    bool alpn_required;
    union {
        char host[256];            /* client role: the name verified and sent as SNI */
        struct tlsw_server_hs srv; /* server role */
    };
};

#define TLSW_ERROR_MAX 256

struct tlsw_conn {
    /* Our reference, one of the two: it keeps the SSL_CTX alive for this connection. */
    struct tlsw_gen *gen;       /* client role: the trust generation */
    struct tlsw_server *server; /* server role: the serving identity */
    SSL *ssl;
    BIO *net;                        /* the SSL's rbio and wbio: ciphertext both ways */
    struct tlsw_handshake_state *hs; /* NULL after a successful handshake */
    struct tlsw_app_data app;        /* the SSL's app data: what the callbacks write into */
    bool handshake_done;
    bool failed;
    const char *out_of_memory; /* NULL, or what could not get memory (the failure detail) */
    bool pin_mismatch;
    bool alpn_unselected; /* client role: alpn_required, and the server selected none offered */
    char *error;     /* OpenSSL's reason, captured when the failure happened (NULL until then) */
    char *peer_name; /* server role: the client certificate's name (NULL without one) */
};

/* The failure text buffer, allocated on first use; NULL when even that fails. */
static char *error_buf(struct tlsw_conn *c)
{
    if (c->error == NULL)
        c->error = calloc(1, TLSW_ERROR_MAX);
    return c->error;
}

bool tlsw_is_ip_literal(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return s != NULL && (inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1);
}

/* Records why the engine stopped. The error queue is per thread and the next connection on this
 * worker clears it, so the text has to be copied now, not when the proxy asks. */
static void fail(struct tlsw_conn *c, int ssl_error)
{
    char fallback[64];
    c->failed = true;
    /* A required client certificate that never came is no verification result: OpenSSL only
     * says so with this error (and a certificate_required alert to the client). */
    if (c->server != NULL && c->hs != NULL) {
        unsigned long e = ERR_peek_error();
        c->hs->srv.cert_missing = ERR_GET_LIB(e) == ERR_LIB_SSL &&
                                  ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE;
    }
    if (ssl_error == SSL_ERROR_ZERO_RETURN)
        dbt_strlcpy(fallback, "peer sent close_notify during the handshake", sizeof(fallback));
    else
        snprintf(fallback, sizeof(fallback), "TLS engine error %d", ssl_error);
    char *buf = error_buf(c);
    if (buf != NULL)
        tlsw_openssl_reason(buf, TLSW_ERROR_MAX, fallback);
}

/* Host check and SNI per DESIGN.md: a name gets SNI and (verify full) a host check; an IP
 * literal gets an IP check and no SNI, which RFC 6066 forbids for addresses. OpenSSL 3.0 never
 * matches an IP SAN through SSL_set1_host, hence the branch. */
static int set_peer_identity(struct tlsw_conn *c, enum tlsw_verify verify)
{
    const char *host = c->hs->host;
    if (host[0] == '\0')
        return verify == TLSW_VERIFY_FULL ? -1 : 0; /* full without a name cannot be checked */
    if (tlsw_is_ip_literal(host)) {
        if (verify == TLSW_VERIFY_FULL &&
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host) != 1)
            return -1;
        return 0;
    }
    if (verify == TLSW_VERIFY_FULL) {
        /* "f*.example.com" style wildcards are not allowed by RFC 6125 6.4.3's best practice. */
        SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set1_host(c->ssl, host) != 1)
            return -1;
    }
    return SSL_set_tlsext_host_name(c->ssl, host) == 1 ? 0 : -1;
}

/* What both roles share: the handshake record, and the SSL over the transport BIO with c->app as
 * its app data (the callbacks of both roles find their part of the connection there). */
DBT_MUST_USE static int attach_ssl(struct tlsw_conn *c, SSL_CTX *ctx)
{
    c->hs = calloc(1, sizeof(*c->hs));
    if (c->hs == NULL)
        return -1;
    c->hs->vrec.err = X509_V_OK;
    c->app.vrec = &c->hs->vrec;
    ERR_clear_error();
    c->ssl = SSL_new(ctx);
    if (c->ssl == NULL)
        return -1;
    c->net = tlsw_bio_new();
    if (c->net == NULL)
        return -1;
    SSL_set_bio(c->ssl, c->net, c->net); /* the SSL owns the BIO (one reference for both) */
    SSL_set_app_data(c->ssl, &c->app);
    return 0;
}

struct tlsw_conn *tlsw_conn_new(struct tlsw_gen *g, const char *host, const uint8_t *alpn,
                                size_t alpn_len)
{
    struct tlsw_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    tlsw_gen_ref(g);
    c->gen = g;
    if (attach_ssl(c, tlsw_gen_ctx(g)) != 0)
        goto fail;
    /* The verify callback is shared by every generation: the policy travels with the record. */
    c->hs->vrec.crl_required = tlsw_gen_crl_required(g);
    c->hs->vrec.crl_stale_refuse = tlsw_gen_crl_stale_refuse(g);
    if (host != NULL) {
        char *h = c->hs->host;
        size_t n = strlen(host);
        if (n >= sizeof(c->hs->host))
            goto fail;
        memcpy(h, host, n + 1);
        /* A trailing dot is legal in DNS but not in SNI (RFC 6066 3) nor in certificates. */
        if (n > 1 && h[n - 1] == '.')
            h[n - 1] = '\0';
    }
    SSL_set_connect_state(c->ssl);
    if (set_peer_identity(c, tlsw_gen_verify_mode(g)) != 0)
        goto fail;
    if (alpn != NULL && alpn_len > 0 &&
        (alpn_len > UINT_MAX || SSL_set_alpn_protos(c->ssl, alpn, (unsigned)alpn_len) != 0))
        goto fail;
    if (alpn != NULL && alpn_len > 0 && alpn_len <= sizeof(c->hs->offered_alpn)) {
        memcpy(c->hs->offered_alpn, alpn, alpn_len);
        c->hs->offered_alpn_len = (uint8_t)alpn_len;
    }
    ERR_clear_error();
    return c;
fail:
    ERR_clear_error();
    tlsw_conn_free(c);
    return NULL;
}

int tlsw_conn_require_alpn(struct tlsw_conn *c)
{
    if (c->server != NULL || c->hs == NULL || c->hs->offered_alpn_len == 0)
        return -1;
    c->hs->alpn_required = true;
    return 0;
}

/* One protocol name in wire format (a length byte, then as many bytes), or none at all. */
static bool alpn_one_name(const uint8_t *alpn, size_t alpn_len)
{
    return alpn_len >= 2 && alpn[0] == alpn_len - 1;
}

struct tlsw_conn *tlsw_conn_new_server(struct tlsw_server *s, const uint8_t *alpn, size_t alpn_len,
                                       bool alpn_required)
{
    bool have_alpn = alpn != NULL && alpn_len > 0;
    if ((have_alpn && !alpn_one_name(alpn, alpn_len)) || (alpn_required && !have_alpn))
        return NULL;
    struct tlsw_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    tlsw_server_ref(s);
    c->server = s;
    if (attach_ssl(c, tlsw_server_ctx(s)) != 0)
        goto fail;
    c->app.srv = &c->hs->srv;
    if (have_alpn)
        memcpy(c->hs->srv.alpn, alpn, alpn_len);
    c->hs->srv.alpn_required = alpn_required;
    SSL_set_accept_state(c->ssl);
    ERR_clear_error();
    return c;
fail:
    ERR_clear_error();
    tlsw_conn_free(c);
    return NULL;
}

void tlsw_conn_free(struct tlsw_conn *c)
{
    if (c == NULL)
        return;
    SSL_free(c->ssl); /* frees the BIO */
    SSL_SESSION_free(c->app.ticket);
    tlsw_gen_unref(c->gen);
    tlsw_server_unref(c->server);
    free(c->hs);
    free(c->error);
    free(c->peer_name);
    free(c);
}

/* Verified: the names and the verification record have served their purpose. Renegotiation is
 * off, so the verify callback cannot run again; it would see no record and change nothing. */
static void handshake_succeeded(struct tlsw_conn *c)
{
    c->app.vrec = NULL;
    c->app.srv = NULL;
    free(c->hs);
    c->hs = NULL;
}

void tlsw_conn_trim(struct tlsw_conn *c)
{
    if (c == NULL || c->failed)
        return;
    tlsw_bio_trim(c->net);
    tlsw_conn_release_buffers(c);
}

void tlsw_conn_release_buffers(struct tlsw_conn *c)
{
    /* SSL_MODE_RELEASE_BUFFERS gives the record buffers back after application data only: a
     * connection whose last record was something else (a session ticket) keeps 16 KiB for its
     * life. Refused, harmlessly, while a record is half read or written. */
    if (c != NULL && !c->failed)
        (void)SSL_free_buffers(c->ssl);
}

/* True when pin (base64) is one of the "sha256/BASE64" items of the comma-separated list. */
static bool pin_listed(const char *list, const char *pin)
{
    size_t n = strlen(pin);
    for (const char *p = list; *p;) {
        p += strspn(p, " \t,");
        size_t len = strcspn(p, ",");
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len == 7 + n && strncmp(p, "sha256/", 7) == 0 && memcmp(p + 7, pin, n) == 0)
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

/* With pins configured, the verified chain must also contain a pinned key (HPKP's rule: any
 * certificate of the chain, so a pin on an intermediate survives leaf renewals). */
static bool chain_pinned(struct tlsw_conn *c)
{
    const char *pins = tlsw_gen_pins(c->gen);
    if (pins[0] == '\0')
        return true;
    STACK_OF(X509) *chain = SSL_get0_verified_chain(c->ssl);
    char leaf_pin[64] = "?";
    for (int i = 0; chain != NULL && i < sk_X509_num(chain); i++) {
        struct tlsw_cert_info ci;
        if (tlsw_cert_info_fill(sk_X509_value(chain, i), &ci) != 0)
            continue;
        if (pin_listed(pins, ci.spki_pin))
            return true;
        if (i == 0)
            dbt_strlcpy(leaf_pin, ci.spki_pin, sizeof(leaf_pin));
    }
    char *buf = error_buf(c);
    if (buf != NULL)
        snprintf(buf, TLSW_ERROR_MAX,
                 "no certificate of the verified chain has a configured pin (leaf: sha256/%s)",
                 leaf_pin);
    return false;
}

/* True when the server selected one of the protocols offered. OpenSSL only refuses a
 * selection when nothing was offered at all, so the list is checked here. */
static bool alpn_selected_offered(const struct tlsw_conn *c, char *selected, size_t cap)
{
    const unsigned char *proto = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(c->ssl, &proto, &len);
    tlsw_printable(selected, cap, proto, proto != NULL ? len : 0);
    const uint8_t *list = c->hs->offered_alpn;
    for (size_t i = 0; proto != NULL && len > 0 && i < c->hs->offered_alpn_len;
         i += 1 + (size_t)list[i])
        if (list[i] == len && i + 1 + len <= c->hs->offered_alpn_len &&
            memcmp(list + i + 1, proto, len) == 0)
            return true;
    return false;
}

/* tlsw_conn_require_alpn: refused after verification, so a certificate failure still names
 * itself first. Runs for resumed sessions too: ALPN is negotiated in every handshake. */
static bool client_alpn_ok(struct tlsw_conn *c)
{
    char selected[64], offered[64];
    if (!c->hs->alpn_required || alpn_selected_offered(c, selected, sizeof(selected)))
        return true;
    c->alpn_unselected = true;
    tlsw_printable(offered, sizeof(offered), c->hs->offered_alpn + 1, c->hs->offered_alpn[0]);
    char *buf = error_buf(c);
    if (buf != NULL && selected[0] == '\0')
        snprintf(buf, TLSW_ERROR_MAX,
                 "the server completed the TLS handshake without selecting ALPN '%s'", offered);
    else if (buf != NULL)
        snprintf(buf, TLSW_ERROR_MAX, "the server selected ALPN '%s', not '%s'", selected, offered);
    return false;
}

/* Client role: the handshake verified the chain; the ALPN answer and the pins are checked on
 * top. A resumed session was verified and pin-checked when it was made, under the same
 * generation (same pins); a resumption carries no certificates to check again. */
static bool client_finish(struct tlsw_conn *c)
{
    if (!client_alpn_ok(c))
        return false;
    if (SSL_session_reused(c->ssl) || chain_pinned(c))
        return true;
    c->pin_mismatch = true;
    return false;
}

/* Server role: the client certificate (if asked for) was verified and its name checked during
 * the handshake. What remains is the client that offered no ALPN where one is required, which
 * no callback sees (the ALPN callback only runs for an offer); then the name for the log. */
static bool server_finish(struct tlsw_conn *c)
{
    struct tlsw_server_hs *h = &c->hs->srv;
    const unsigned char *proto = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(c->ssl, &proto, &len);
    if (h->alpn_required && len == 0) {
        h->alpn_missing = true;
        return false;
    }
    /* No session is ever resumed on this side (tlsw_server.c), so a certificate was
     * presented and checked in this very handshake whenever there is a name. */
    if (h->peer_name[0] != '\0') {
        c->peer_name = strdup(h->peer_name);
        if (c->peer_name == NULL) {
            c->out_of_memory = "out of memory keeping the client certificate's name";
            return false;
        }
    }
    return true;
}

/* False: failed after all (a pin, a required ALPN, memory); see tlsw_conn_failure. */
static bool finish_handshake(struct tlsw_conn *c)
{
    c->handshake_done = true;
    if (!(c->server != NULL ? server_finish(c) : client_finish(c))) {
        c->failed = true;
        return false;
    }
    handshake_succeeded(c);
    return true;
}

enum tlsw_status tlsw_conn_handshake(struct tlsw_conn *c)
{
    if (c->failed)
        return TLSW_ERROR;
    if (c->handshake_done)
        return TLSW_OK;
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1)
        return finish_handshake(c) ? TLSW_OK : TLSW_ERROR;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return TLSW_WANT_IO;
    fail(c, e);
    return TLSW_ERROR;
}

static void out_of_memory_keeping(struct tlsw_conn *c)
{
    c->out_of_memory = "out of memory buffering ciphertext";
    fail(c, SSL_ERROR_SSL);
}

void tlsw_conn_feed(struct tlsw_conn *c, const uint8_t *data, size_t len)
{
    if (!c->failed && tlsw_bio_keep(c->net, data, len) != 0)
        out_of_memory_keeping(c);
}

void tlsw_conn_lend(struct tlsw_conn *c, const uint8_t *data, size_t len)
{
    tlsw_bio_lend(c->net, data, len);
}

void tlsw_conn_lend_end(struct tlsw_conn *c)
{
    /* After a failure nothing will be read: the rest is dropped, not kept. */
    if (c->failed)
        tlsw_bio_lend(c->net, NULL, 0);
    if (tlsw_bio_lend_end(c->net) != 0)
        out_of_memory_keeping(c);
}

void tlsw_conn_set_output(struct tlsw_conn *c, tlsw_output_fn fn, void *arg)
{
    tlsw_bio_set_sink(c->net, fn, arg);
}

size_t tlsw_conn_pending(const struct tlsw_conn *c)
{
    return tlsw_bio_out_pending(c->net);
}

size_t tlsw_conn_take(struct tlsw_conn *c, uint8_t *buf, size_t cap)
{
    return tlsw_bio_out_take(c->net, buf, cap);
}

/* OpenSSL wants the thread's error queue empty before an I/O call. ERR_clear_error walks all
 * of its slots every time, a cost per record on the relay path; the queue is empty nearly
 * always (every failure path clears it), which one look at its top tells. */
static void clear_error_queue(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

enum tlsw_status tlsw_conn_read(struct tlsw_conn *c, uint8_t *buf, size_t cap, size_t *n)
{
    *n = 0;
    if (c->failed)
        return TLSW_ERROR;
    if (cap == 0)
        return TLSW_OK;
    clear_error_queue();
    size_t got = 0;
    if (SSL_read_ex(c->ssl, buf, cap, &got) == 1) {
        if (!c->handshake_done && SSL_is_init_finished(c->ssl) && !finish_handshake(c))
            return TLSW_ERROR;
        *n = got;
        return TLSW_OK;
    }
    int e = SSL_get_error(c->ssl, 0);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        /* Post-handshake messages (session tickets, a KeyUpdate that queues our answer) end
         * here too: the proxy flushes tlsw_conn_pending() after every read. */
        return TLSW_WANT_IO;
    case SSL_ERROR_ZERO_RETURN:
        ERR_clear_error();
        return TLSW_CLOSED;
    default:
        fail(c, e);
        return TLSW_ERROR;
    }
}

enum tlsw_status tlsw_conn_write(struct tlsw_conn *c, const uint8_t *data, size_t len)
{
    size_t off = 0;
    if (c->failed)
        return TLSW_ERROR;
    /* Partial writes are on, so each call may stop at a record boundary; the transport BIO
     * always takes the record, so looping finishes the buffer. */
    while (off < len) {
        size_t written = 0;
        clear_error_queue();
        if (SSL_write_ex(c->ssl, data + off, len - off, &written) == 1) {
            off += written;
            continue;
        }
        int e = SSL_get_error(c->ssl, 0);
        if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && off == 0)
            return TLSW_WANT_IO; /* nothing consumed: only before the handshake is done */
        fail(c, e);
        return TLSW_ERROR;
    }
    return TLSW_OK;
}

void tlsw_conn_shutdown(struct tlsw_conn *c)
{
    /* After a fatal error OpenSSL forbids SSL_shutdown; before the handshake there is no
     * session to close. */
    if (c->failed || !c->handshake_done)
        return;
    ERR_clear_error();
    (void)SSL_shutdown(c->ssl); /* 0 = sent, peer's alert not seen yet: all we need */
    ERR_clear_error();
}

/* The client leg's reasons only: a client that failed its handshake says nothing about the
 * upstream, and must not count as tls_* in the metrics of the upstream's health. */
static enum dbt_reason server_failure(const struct tlsw_conn *c, const char *error, char *detail,
                                      size_t cap)
{
    const struct tlsw_handshake_state *hs = c->hs; /* stays until a handshake succeeded */
    if (hs == NULL) {
        dbt_strlcpy(detail, error, cap);
        return DBT_CLIENT_TLS_HANDSHAKE_FAILED;
    }
    const struct tlsw_server_hs *h = &hs->srv;
    if (h->cert_missing) {
        dbt_strlcpy(detail, "client sent no certificate (client_ca requires one)", cap);
        return DBT_CLIENT_CERT_MISSING;
    }
    long v = SSL_get_verify_result(c->ssl);
    if (v != X509_V_OK)
        return tlsw_verify_describe_client(v, &hs->vrec, detail, cap);
    char want[256];
    tlsw_printable(want, sizeof(want), h->alpn + 1, h->alpn[0]);
    if (h->alpn_refused)
        snprintf(detail, cap, "client offered ALPN %s, not '%s'", h->alpn_offered, want);
    else if (h->alpn_missing)
        snprintf(detail, cap, "direct TLS without ALPN '%s'", want);
    else
        dbt_strlcpy(detail, error, cap);
    return DBT_CLIENT_TLS_HANDSHAKE_FAILED;
}

enum dbt_reason tlsw_conn_failure(const struct tlsw_conn *c, char *detail, size_t cap)
{
    char scratch[1];
    if (detail == NULL || cap == 0) {
        detail = scratch;
        cap = sizeof(scratch);
    }
    detail[0] = '\0';
    if (!c->failed)
        return DBT_NONE;
    if (c->out_of_memory != NULL) {
        dbt_strlcpy(detail, c->out_of_memory, cap);
        return DBT_INTERNAL_ERROR;
    }
    const char *error = c->error != NULL ? c->error : "no details (out of memory)";
    if (c->server != NULL)
        return server_failure(c, error, detail, cap);
    if (c->pin_mismatch) {
        dbt_strlcpy(detail, error, cap);
        return DBT_TLS_PIN_MISMATCH;
    }
    if (c->alpn_unselected) {
        dbt_strlcpy(detail, error, cap);
        return DBT_UPSTREAM_NO_DIRECT_TLS;
    }
    long v = SSL_get_verify_result(c->ssl);
    if (v != X509_V_OK && c->hs != NULL) /* hs stays until a handshake succeeded */
        return tlsw_verify_describe(v, &c->hs->vrec, c->hs->host, "the bundle", detail, cap);
    dbt_strlcpy(detail, error, cap);
    return c->handshake_done ? DBT_TLS_ERROR : DBT_TLS_HANDSHAKE_FAILED;
}

const char *tlsw_conn_version(const struct tlsw_conn *c)
{
    return SSL_get_version(c->ssl);
}

const char *tlsw_conn_cipher(const struct tlsw_conn *c)
{
    const SSL_CIPHER *cipher = SSL_get_current_cipher(c->ssl);
    return cipher != NULL ? SSL_CIPHER_get_name(cipher) : "";
}

size_t tlsw_conn_peer_chain(const struct tlsw_conn *c, struct tlsw_cert_info *out, size_t cap)
{
    /* The verified chain ends at the bundle's root, which is what expiry metrics need; the
     * chain as sent is the fallback (e.g. after a failed verification). */
    STACK_OF(X509) *chain = SSL_get0_verified_chain(c->ssl);
    if (chain == NULL)
        chain = SSL_get_peer_cert_chain(c->ssl);
    size_t n = 0;
    for (int i = 0; chain != NULL && i < sk_X509_num(chain) && n < cap; i++)
        if (tlsw_cert_info_fill(sk_X509_value(chain, i), &out[n]) == 0)
            n++;
    ERR_clear_error();
    return n;
}

/* OpenSSL 3.0's default client list, minus nothing: only the order changes. */
static const int default_groups[] = {
    NID_X25519,    NID_X9_62_prime256v1, NID_X448,      NID_secp521r1, NID_secp384r1,
    NID_ffdhe2048, NID_ffdhe3072,        NID_ffdhe4096, NID_ffdhe6144, NID_ffdhe8192,
};

void tlsw_conn_prefer_group(struct tlsw_conn *c, int nid)
{
    if (nid == 0 || nid == default_groups[0])
        return;
    int groups[DBT_ARRAY_LEN(default_groups) + 1];
    size_t n = 0;
    groups[n++] = nid;
    for (size_t i = 0; i < DBT_ARRAY_LEN(default_groups); i++)
        if (default_groups[i] != nid)
            groups[n++] = default_groups[i];
    /* An unknown NID (a server's private group) is refused: keep OpenSSL's order then. */
    if (SSL_set1_groups(c->ssl, groups, (long)n) != 1)
        ERR_clear_error();
}

int tlsw_conn_group(const struct tlsw_conn *c)
{
    if (SSL_get0_session(c->ssl) == NULL) /* OpenSSL 3.0 would read through it */
        return 0;
    int nid = SSL_get_negotiated_group(c->ssl);
    return nid > 0 ? nid : 0;
}

const char *tlsw_conn_peer_name(const struct tlsw_conn *c)
{
    return c->peer_name != NULL ? c->peer_name : "";
}

struct tlsw_session *tlsw_conn_new_session(struct tlsw_conn *c)
{
    /* A pointer test on the relay path: OpenSSL told us when a ticket arrived (tlsw_gen.c). */
    if (c->app.ticket == NULL || c->failed || !c->handshake_done)
        return NULL;
    /* A copy: SSL_free marks the connection's own session unresumable when the connection
     * ends without close_notify (the upstream hung up first, a timeout), which would spoil
     * the cached one if it were the same object. */
    SSL_SESSION *copy = SSL_SESSION_dup(c->app.ticket);
    SSL_SESSION_free(c->app.ticket);
    c->app.ticket = NULL;
    return (struct tlsw_session *)(void *)copy; /* the opaque name of an SSL_SESSION */
}

void tlsw_session_free(struct tlsw_session *s)
{
    SSL_SESSION_free((SSL_SESSION *)(void *)s);
}

void tlsw_conn_offer_session(struct tlsw_conn *c, struct tlsw_session *s)
{
    /* Refused (expired, another protocol version): a full handshake follows. */
    if (s != NULL && SSL_set_session(c->ssl, (SSL_SESSION *)(void *)s) != 1)
        ERR_clear_error();
}

bool tlsw_conn_resumed(const struct tlsw_conn *c)
{
    return SSL_session_reused(c->ssl) == 1;
}
