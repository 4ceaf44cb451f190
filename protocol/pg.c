/* PostgreSQL startup phase (pg.h; PROTOCOLS.md part A). Byte in, step out: no sockets. Every
 * length is checked against its bound before a byte of the body is buffered, and a buffer is
 * allocated only then, of exactly that length (wire_alloc): a connection holds what the bytes it
 * was sent need, never a worst case. */
#include "pg.h"

#include <string.h>

#include "dbt_utf8.h"
#include "dbt_util.h"
#include "wire.h"

#define UNTAGGED_HEADER 8  /* Int32 length + Int32 code/version */
#define TAGGED_HEADER   5  /* Byte1 type + Int32 length */
#define CANCEL_FIXED    12 /* length + code + pid; the key follows */
#define TLS_ALERT       0x15
#define TLS_HANDSHAKE   0x16
#define AUTH_SASL       10
#define SASL_MECH_MAX   64    /* a mechanism name and its NUL; PostgreSQL's longest is 19 */
#define AUTH_TOKEN_MAX  65535 /* PG_MAX_AUTH_TOKEN_LENGTH: the server's bound on a SASL body */

const uint8_t pg_ssl_request[8] = {0x00, 0x00, 0x00, 0x08, 0x04, 0xD2, 0x16, 0x2F};
const uint8_t pg_alpn[11] = {10, 'p', 'o', 's', 't', 'g', 'r', 'e', 's', 'q', 'l'};

static const uint8_t answer_no[1] = {'N'};
static const uint8_t answer_yes[1] = {'S'};
static const char out_of_memory[] = "out of memory";

static void set_step(struct pg_step *out, enum pg_action action, const uint8_t *data, size_t len)
{
    out->action = action;
    out->data = data;
    out->len = len;
    out->reason = DBT_NONE;
    out->detail = NULL;
    out->direct = false;
}

static void set_fail(struct pg_step *out, enum dbt_reason reason, const char *detail)
{
    set_step(out, PG_FAIL, NULL, 0);
    out->reason = reason;
    out->detail = detail;
}

/* ---- client leg: SSLRequest / GSSENCRequest / CancelRequest / StartupMessage (A1, A2) ---- */

void pg_client_init(struct pg_client *c)
{
    memset(c, 0, sizeof(*c));
    c->state = PG_C_HEADER;
    c->need = 4;
}

static uint8_t *packet(struct pg_client *c)
{
    return c->heap ? c->heap : c->small;
}

/* A failed machine keeps nothing: its packet is never sent, and it may be a cancel key. */
static void drop_packet(struct pg_client *c)
{
    wire_free(c->heap, c->heap_len);
    c->heap = NULL;
    c->heap_len = 0;
    dbt_wipe(c->small, sizeof(c->small));
}

void pg_client_free(struct pg_client *c)
{
    drop_packet(c);
    c->state = PG_C_FAILED;
}

const uint8_t *pg_client_packet(const struct pg_client *c, size_t *len)
{
    if (c->state != PG_C_DONE) {
        *len = 0;
        return NULL;
    }
    *len = c->need;
    return c->heap ? c->heap : c->small;
}

size_t pg_client_allocated(const struct pg_client *c)
{
    return c->heap ? c->heap_len : 0;
}

static bool client_fail_reason(struct pg_client *c, struct pg_step *out, enum dbt_reason reason,
                               const char *detail)
{
    c->state = PG_C_FAILED;
    drop_packet(c);
    set_fail(out, reason, detail);
    return true;
}

static bool client_fail(struct pg_client *c, struct pg_step *out, const char *detail)
{
    return client_fail_reason(c, out, DBT_CLIENT_PROTOCOL_ERROR, detail);
}

/* Answers an encryption request: 'S' to an SSLRequest when dbtrust serves TLS on this leg (C1),
 * 'N' otherwise. Never an ErrorResponse here: libpq discards it unread (CVE-2024-10977), so the
 * user would see no reason. GSSENCRequest always gets 'N': dbtrust does no GSSAPI encryption.
 * Inside TLS both get 'N', as on a PostgreSQL 17 direct-SSL connection (A3). */
static bool encryption_request(struct pg_client *c, struct pg_step *out, uint32_t code,
                               uint32_t total)
{
    bool ssl = code == PG_SSL_REQUEST_CODE;
    bool *seen = ssl ? &c->seen_ssl_request : &c->seen_gssenc_request;

    if (total != UNTAGGED_HEADER)
        return client_fail(c, out,
                           ssl ? "invalid length of SSLRequest packet"
                               : "invalid length of GSSENCRequest packet");
    /* The server allows each request once, in either order (A1); a loop would let a client
     * hold the connection open forever without ever sending a StartupMessage. */
    if (*seen)
        return client_fail(c, out, ssl ? "duplicate SSLRequest" : "duplicate GSSENCRequest");
    *seen = true;
    c->have = 0;
    c->need = 4;
    if (ssl && c->tls != PG_TLS_OFF && !c->tls_active) {
        /* pg_client_feed refuses the answer if more bytes came with the request (CVE-2021-23214) */
        c->state = PG_C_TLS;
        set_step(out, PG_START_TLS, answer_yes, sizeof answer_yes);
        return true;
    }
    set_step(out, PG_SEND_CLIENT, answer_no, sizeof answer_no);
    return true;
}

/* Fills user/database/application_name the way backend_startup.c reads the body: name\0value\0
 * pairs, then a single \0 that must be the last byte. Returns NULL or the failure detail. */
static const char *parse_startup(struct pg_client *c)
{
    const char *p = (const char *)packet(c) + UNTAGGED_HEADER;
    const char *end = (const char *)packet(c) + c->need;

    while (p < end && *p != '\0') {
        const char *name = p;
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        if (!nul || nul + 1 == end)
            return "invalid startup packet layout: expected terminator as last byte";
        const char *value = nul + 1;
        nul = memchr(value, '\0', (size_t)(end - value));
        if (!nul)
            return "invalid startup packet layout: expected terminator as last byte";
        p = nul + 1;
        /* Kept as valid UTF-8 without control characters (dbt_utf8.h), cut on a character
         * boundary: the log line and the metric label show this text, whatever bytes the
         * client sent. The packet itself is forwarded verbatim. */
        size_t vlen = (size_t)(nul - value);
        if (strcmp(name, "user") == 0)
            dbt_utf8_copy(c->user, sizeof c->user, value, vlen);
        else if (strcmp(name, "database") == 0)
            dbt_utf8_copy(c->database, sizeof c->database, value, vlen);
        else if (strcmp(name, "application_name") == 0)
            dbt_utf8_copy(c->application_name, sizeof c->application_name, value, vlen);
    }
    if (p != end - 1)
        return "invalid startup packet layout: expected terminator as last byte";
    if (c->user[0] == '\0')
        return "no PostgreSQL user name specified in startup packet";
    if (c->database[0] == '\0') /* the server's default, so logs name the real database */
        dbt_strlcpy(c->database, c->user, sizeof c->database);
    return NULL;
}

static bool client_complete(struct pg_client *c, struct pg_step *out)
{
    if (wire_be32(packet(c) + 4) == PG_CANCEL_REQUEST_CODE) {
        c->state = PG_C_DONE;
        set_step(out, PG_CANCEL, packet(c), c->need);
        return true;
    }
    const char *bad = parse_startup(c);
    if (bad)
        return client_fail(c, out, bad);
    /* Refused only now, with the packet parsed: the log then names who tried to log in in
     * plaintext. Nothing of it is forwarded, so no credential leaves dbtrust unencrypted. */
    if (c->tls == PG_TLS_REQUIRE && !c->tls_active)
        return client_fail_reason(c, out, DBT_CLIENT_TLS_REQUIRED,
                                  "TLS is required on this listener (client_tls = require): "
                                  "connect with sslmode=require or stronger");
    /* Verbatim, whatever the minor version and _pq_.* options: the server negotiates with 'v'
     * and greasing clients (3.9990-3.9999) test that middleware does not interfere (A2). */
    c->state = PG_C_DONE;
    set_step(out, PG_DIAL_UPSTREAM, packet(c), c->need);
    return true;
}

/* The 8-byte header is complete: decide what the packet is before buffering its body. */
static bool client_header(struct pg_client *c, struct pg_step *out)
{
    uint32_t total = wire_be32(c->small);
    uint32_t code = wire_be32(c->small + 4);

    switch (code) {
    case PG_SSL_REQUEST_CODE:
    case PG_GSSENC_REQUEST_CODE:
        return encryption_request(c, out, code, total);
    case PG_CANCEL_REQUEST_CODE:
        /* 16 bytes before 3.2; 12 + key length since (A2). PG 18 accepts keys of 1..256 bytes. */
        if (total < CANCEL_FIXED + 1 || total > CANCEL_FIXED + PG_MAX_CANCEL_KEY)
            return client_fail(c, out, "invalid length of cancel request packet");
        break;
    default:
        if (code >> 16 == 1234)
            return client_fail(c, out, "unsupported negotiation request code");
        if (code >> 16 != 3)
            return client_fail(c, out, "unsupported frontend protocol");
        c->version = code;
        break;
    }
    c->state = PG_C_BODY;
    c->need = total;
    if (total > sizeof(c->small)) {
        /* Exactly what was announced, now that it passed its bound: up to 10004 bytes only for
         * a client that says it will send that many. */
        c->heap = wire_alloc(total);
        if (!c->heap)
            return client_fail_reason(c, out, DBT_INTERNAL_ERROR, out_of_memory);
        c->heap_len = total;
        memcpy(c->heap, c->small, c->have);
    }
    return c->have == c->need ? client_complete(c, out) : false;
}

/* Called whenever `need` bytes are buffered. Returns true when *out holds a step. */
static bool client_advance(struct pg_client *c, struct pg_step *out)
{
    if (c->state == PG_C_BODY)
        return client_complete(c, out);
    if (c->need == 4) {
        /* Bound the length before buffering (backend_startup.c: body 4..10000 bytes). */
        uint32_t total = wire_be32(c->small);
        if (total < UNTAGGED_HEADER || total - 4 > PG_MAX_STARTUP_PACKET)
            return client_fail(c, out, "invalid length of startup packet");
        c->need = UNTAGGED_HEADER;
        return false;
    }
    return client_header(c, out);
}

size_t pg_client_feed(struct pg_client *c, const uint8_t *in, size_t len, struct pg_step *out)
{
    size_t used = 0;

    set_step(out, PG_NEED_MORE, NULL, 0);
    switch (c->state) {
    case PG_C_DONE:
        if (wire_be32(packet(c) + 4) == PG_CANCEL_REQUEST_CODE)
            set_fail(out, DBT_INTERNAL_ERROR, "client fed after its CancelRequest");
        else
            set_step(out, PG_RELAY, NULL, 0);
        return 0;
    case PG_C_FAILED:
        set_fail(out, DBT_INTERNAL_ERROR, "client fed after the startup phase failed");
        return 0;
    case PG_C_TLS:
        /* A caller bug, and a dangerous one: whatever this is, it was not decrypted by the
         * handshake PG_START_TLS asked for. Nothing more is read on this connection. */
        c->state = PG_C_FAILED;
        set_fail(out, DBT_INTERNAL_ERROR, "client fed before pg_client_tls_started");
        return 0;
    case PG_C_HEADER:
    case PG_C_BODY:
        break;
    }
    while (used < len) {
        /* A TLS ClientHello where a packet starts: direct SSL (A3). Left unconsumed either way:
         * it is the first record of the handshake, or the proxy closes without a word. */
        if (c->have == 0 && in[used] == TLS_HANDSHAKE) {
            if (c->tls != PG_TLS_OFF && !c->tls_active && !c->seen_ssl_request &&
                !c->seen_gssenc_request) {
                /* Like the server (backend_startup.c), only the very first byte of a
                 * connection can start direct TLS; later a 0x16 is just a bad length word. */
                c->state = PG_C_TLS;
                set_step(out, PG_START_TLS, NULL, 0);
                out->direct = true;
                return used;
            }
            c->state = PG_C_FAILED;
            set_step(out, PG_CLOSE, NULL, 0);
            out->reason = DBT_CLIENT_DIRECT_TLS;
            out->detail = c->tls == PG_TLS_OFF
                              ? "client opened with a TLS ClientHello (sslnegotiation=direct)"
                              : "TLS ClientHello not at the start of the connection (direct TLS "
                                "must be the first byte)";
            return used;
        }
        size_t take = c->need - c->have;
        if (take > len - used)
            take = len - used;
        memcpy(packet(c) + c->have, in + used, take);
        c->have += take;
        used += take;
        if (c->have == c->need && client_advance(c, out)) {
            /* CVE-2021-23214: bytes that came with the SSLRequest were sent before any TLS; a
             * man in the middle can inject a StartupMessage or a query there that would then be
             * read as if it came over the encrypted channel. The server refuses with these
             * words (backend_startup.c); its check looks at what it buffered, as this does. */
            if (out->action == PG_START_TLS && used < len)
                client_fail(c, out, "received unencrypted data after SSL request");
            return used;
        }
    }
    return used;
}

void pg_client_tls_started(struct pg_client *c)
{
    if (c->state != PG_C_TLS) {
        c->state = PG_C_FAILED; /* a caller bug: never let it pass as an encrypted leg */
        return;
    }
    c->tls_active = true;
    c->state = PG_C_HEADER;
    c->have = 0;
    c->need = 4;
}

/* ---- the upstream's answer to pg_ssl_request (A1, buffer-stuffing rule) ---- */

/* clang-format off */
#define HEX_ANSWER(h, l) "unexpected answer 0x" #h #l " to the SSL request",
#define HEX_ROW(h)                                                                                 \
    HEX_ANSWER(h, 0) HEX_ANSWER(h, 1) HEX_ANSWER(h, 2) HEX_ANSWER(h, 3)                            \
    HEX_ANSWER(h, 4) HEX_ANSWER(h, 5) HEX_ANSWER(h, 6) HEX_ANSWER(h, 7)                            \
    HEX_ANSWER(h, 8) HEX_ANSWER(h, 9) HEX_ANSWER(h, a) HEX_ANSWER(h, b)                            \
    HEX_ANSWER(h, c) HEX_ANSWER(h, d) HEX_ANSWER(h, e) HEX_ANSWER(h, f)

/* Static strings only: details are logged from any worker thread, so no shared scratch buffer. */
static const char *const unexpected_answer[256] = {
    HEX_ROW(0) HEX_ROW(1) HEX_ROW(2) HEX_ROW(3) HEX_ROW(4) HEX_ROW(5) HEX_ROW(6) HEX_ROW(7)
    HEX_ROW(8) HEX_ROW(9) HEX_ROW(a) HEX_ROW(b) HEX_ROW(c) HEX_ROW(d) HEX_ROW(e) HEX_ROW(f)
};
/* clang-format on */

static const char *const extra_after_s[] = {
    "1 unencrypted byte after the SSL response (CVE-2021-23222)",
    "2 unencrypted bytes after the SSL response (CVE-2021-23222)",
    "3 unencrypted bytes after the SSL response (CVE-2021-23222)",
    "4 unencrypted bytes after the SSL response (CVE-2021-23222)",
    "more than 4 unencrypted bytes after the SSL response (CVE-2021-23222)",
};

enum dbt_reason pg_check_ssl_answer(const uint8_t *in, size_t len, const char **detail)
{
    if (len == 0) {
        *detail = "no answer to the SSL request";
        return DBT_UPSTREAM_PROTOCOL_ERROR;
    }
    switch (in[0]) {
    case 'S': {
        if (len == 1) {
            *detail = "server accepted the SSL request";
            return DBT_NONE;
        }
        /* Bytes behind 'S' arrived before any TLS: a MITM can inject them to be read as if
         * they came over the encrypted channel. */
        size_t extra = len - 1;
        size_t last = DBT_ARRAY_LEN(extra_after_s) - 1;
        *detail = extra_after_s[extra - 1 < last ? extra - 1 : last];
        return DBT_UPSTREAM_PLAINTEXT_AFTER_SSL_RESPONSE;
    }
    case 'N':
        *detail = "server does not support SSL (answered 'N')";
        return DBT_UPSTREAM_REFUSED_TLS;
    case 'E':
        /* CVE-2024-10977: the server is not authenticated yet, its text must not be shown. */
        *detail = "server answered the SSL request with an error (text not shown: server not "
                  "authenticated)";
        return DBT_UPSTREAM_REFUSED_TLS;
    default:
        *detail = unexpected_answer[in[0]];
        return DBT_UPSTREAM_PROTOCOL_ERROR;
    }
}

bool pg_is_tls_record_start(uint8_t first_byte)
{
    return first_byte == TLS_HANDSHAKE || first_byte == TLS_ALERT;
}

/* ---- server leg: from the StartupMessage to the first 'R' (A5, A7) ---- */

void pg_server_init(struct pg_server *s)
{
    memset(s, 0, sizeof(*s));
    s->state = PG_S_HEADER;
    s->need = TAGGED_HEADER;
}

/* What was handed out last is no longer the caller's once it calls again. */
static void release_handed_out(struct pg_server *s)
{
    wire_free(s->msg, s->msg_len);
    s->msg = NULL;
    s->msg_len = 0;
    wire_free(s->out, s->out_len);
    s->out = NULL;
    s->out_len = 0;
}

void pg_server_free(struct pg_server *s)
{
    release_handed_out(s);
    s->state = PG_S_FAILED;
}

size_t pg_server_allocated(const struct pg_server *s)
{
    return (s->msg ? s->msg_len : 0) + (s->out ? s->out_len : 0);
}

static bool server_fail_reason(struct pg_server *s, struct pg_step *out, enum dbt_reason reason,
                               const char *detail)
{
    s->state = PG_S_FAILED;
    set_fail(out, reason, detail);
    return true;
}

static bool server_fail(struct pg_server *s, struct pg_step *out, const char *detail)
{
    return server_fail_reason(s, out, DBT_UPSTREAM_PROTOCOL_ERROR, detail);
}

static bool ends_with_plus(const char *mech, size_t n)
{
    return n >= 5 && memcmp(mech + n - 5, "-PLUS", 5) == 0;
}

/* AuthenticationSASL minus every "-PLUS" mechanism: libpq aborts when a server offers
 * SCRAM-SHA-256-PLUS over a connection that is not TLS on its side, reading it as SSL
 * stripping (fe-auth.c pg_SASL_init, A5). The client leg here is always plaintext. */
static bool strip_channel_binding(struct pg_server *s, size_t total, struct pg_step *out)
{
    const char *p = (const char *)s->msg + TAGGED_HEADER + 4;
    const char *end = (const char *)s->msg + total;
    bool any = false, kept = false;
    struct wire_out w;

    /* The output is never longer than the input: a buffer of the input's size always does. */
    s->out = wire_alloc(total);
    if (!s->out)
        return server_fail_reason(s, out, DBT_INTERNAL_ERROR, out_of_memory);
    s->out_len = total;
    wire_out_init(&w, s->out, s->out_len);
    wire_out_u8(&w, 'R');
    wire_out_be32(&w, 0); /* patched below */
    wire_out_be32(&w, AUTH_SASL);
    while (p < end && *p != '\0') {
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        if (!nul)
            return server_fail(s, out, "malformed SASL mechanism list");
        size_t n = (size_t)(nul - p);
        any = true;
        if (!ends_with_plus(p, n)) {
            wire_out_bytes(&w, p, n + 1);
            kept = true;
        }
        p = nul + 1;
    }
    if (p != end - 1 || !any)
        return server_fail(s, out, "malformed SASL mechanism list");
    if (!kept)
        return server_fail(s, out, "server offers only channel-binding SASL mechanisms");
    wire_out_u8(&w, '\0');
    wire_put_be32(s->out + 1, (uint32_t)(w.len - 1));
    s->sasl_offered = true;
    set_step(out, PG_SEND_CLIENT, s->out, w.len);
    return true;
}

/* Called whenever `need` bytes are buffered. Returns true when *out holds a step. */
static bool server_advance(struct pg_server *s, struct pg_step *out)
{
    if (s->state == PG_S_HEADER) {
        uint32_t mlen = wire_be32(s->head + 1);
        if (mlen < 4)
            return server_fail(s, out, "upstream message length below 4");
        if (mlen > PG_MAX_SERVER_STARTUP_MSG - 1)
            return server_fail(s, out, "upstream startup message longer than 16384 bytes");
        /* A buffer of the announced size, now that it passed the bound: most of these
         * messages are a few dozen bytes. */
        s->msg = wire_alloc(1 + (size_t)mlen);
        if (!s->msg)
            return server_fail_reason(s, out, DBT_INTERNAL_ERROR, out_of_memory);
        s->msg_len = 1 + (size_t)mlen;
        memcpy(s->msg, s->head, TAGGED_HEADER);
        s->state = PG_S_BODY;
        s->need = s->msg_len;
        if (s->have < s->need)
            return false;
    }

    size_t total = s->need;
    s->state = PG_S_HEADER;
    s->have = 0;
    s->need = TAGGED_HEADER;
    switch (s->msg[0]) {
    case 'R':
        /* Past the first 'R' nothing needs rewriting: SCRAM continue/final, MD5, cleartext,
         * AuthenticationOk and the rest are relayed raw. */
        s->state = PG_S_RELAY;
        if (total < TAGGED_HEADER + 4)
            return server_fail(s, out, "authentication request without a code");
        if (wire_be32(s->msg + TAGGED_HEADER) == AUTH_SASL)
            return strip_channel_binding(s, total, out);
        break;
    case 'E':
        s->state = PG_S_RELAY; /* the server closes after it */
        break;
    case 'v': /* NegotiateProtocolVersion */
    case 'N': /* NoticeResponse: allowed at any time */
        break;
    default:
        /* Nothing else may come before authentication; a client would take it for whatever
         * it resembles (libpq: "expected authentication request from server"). */
        return server_fail(s, out,
                           "upstream sent a message other than authentication, an "
                           "error or a notice before authentication");
    }
    set_step(out, PG_SEND_CLIENT, s->msg, total);
    return true;
}

size_t pg_server_feed(struct pg_server *s, const uint8_t *in, size_t len, struct pg_step *out)
{
    size_t used = 0;

    set_step(out, PG_NEED_MORE, NULL, 0);
    if (s->state != PG_S_BODY) /* no message half read: the last one was handed out */
        release_handed_out(s);
    switch (s->state) {
    case PG_S_RELAY:
        set_step(out, PG_RELAY, NULL, 0);
        return 0;
    case PG_S_FAILED:
        set_fail(out, DBT_INTERNAL_ERROR, "upstream fed after the startup phase failed");
        return 0;
    case PG_S_HEADER:
    case PG_S_BODY:
        break;
    }
    while (used < len) {
        size_t take = s->need - s->have;
        if (take > len - used)
            take = len - used;
        uint8_t *dst = s->state == PG_S_HEADER ? s->head : s->msg;
        memcpy(dst + s->have, in + used, take);
        s->have += take;
        used += take;
        if (s->have == s->need && server_advance(s, out))
            return used;
    }
    return used;
}

/* ---- the upstream's login, watched on its way to the client ---- */

#define AUTH_OK         0
#define BACKEND_KEY_MIN 4 /* protocol 3.0; 3.2 allows up to PG_MAX_CANCEL_KEY (A2) */

void pg_login_watch_init(struct pg_login_watch *w)
{
    memset(w, 0, sizeof(*w));
    w->state = PG_L_HEADER;
}

static size_t login_invalid(struct pg_login_watch *w, size_t used, const char *detail,
                            enum pg_login_event *ev)
{
    w->state = PG_L_INVALID;
    w->detail = detail;
    *ev = PG_LOGIN_INVALID;
    return used;
}

/* The header is complete: judge the length word before a byte of the body is looked at. Returns
 * NULL or the failure detail. */
static const char *login_header(struct pg_login_watch *w)
{
    uint32_t mlen = wire_be32(w->head + 1);
    if (mlen < 4)
        return "upstream message length below 4";
    if (mlen > PG_LOGIN_MAX_MSG)
        return "upstream message during login longer than 1048576 bytes";
    w->body = mlen - 4;
    w->seen = 0;
    switch (w->head[0]) {
    case 'R':
        if (w->body < 4)
            return "authentication request without a code";
        break;
    case 'K':
        w->key.len = 0; /* until this one is whole */
        if (w->body < 4 + BACKEND_KEY_MIN || w->body > 4 + PG_MAX_CANCEL_KEY)
            return "BackendKeyData key length outside 4..256";
        break;
    case 'Z':
        if (w->body != 1)
            return "ReadyForQuery of wrong length";
        /* A server that skipped authentication would hand the client a session dbtrust
         * cannot count as logged in; no PostgreSQL server does. */
        if (!w->auth_ok)
            return "ReadyForQuery before AuthenticationOk";
        break;
    default:
        break;
    }
    return NULL;
}

/* Keeps the body bytes that matter: the code of an 'R', the pid and key of a 'K'. */
static void login_body(struct pg_login_watch *w, const uint8_t *in, size_t take)
{
    for (size_t i = 0; i < take; i++) {
        uint32_t at = w->seen + (uint32_t)i;
        if ((w->head[0] == 'R' || w->head[0] == 'K') && at < 4)
            w->code[at] = in[i];
        else if (w->head[0] == 'K')
            w->key.key[at - 4] = in[i];
        else
            break; /* nothing else is kept */
    }
}

/* A whole message went by. Returns true when it is an event (*ev set). */
static bool login_message(struct pg_login_watch *w, enum pg_login_event *ev)
{
    switch (w->head[0]) {
    case 'R':
        if (wire_be32(w->code) != AUTH_OK)
            return false; /* SASL, MD5, cleartext...: the exchange goes on */
        if (w->body != 4) {
            w->state = PG_L_INVALID;
            w->detail = "AuthenticationOk of wrong length";
            *ev = PG_LOGIN_INVALID;
            return true;
        }
        w->auth_ok = true;
        *ev = PG_LOGIN_AUTH_OK;
        return true;
    case 'K':
        w->key.pid = wire_be32(w->code);
        w->key.len = (uint16_t)(w->body - 4);
        return false;
    case 'Z':
        w->state = PG_L_READY;
        *ev = PG_LOGIN_READY;
        return true;
    case 'E':
        w->state = PG_L_ERROR;
        *ev = PG_LOGIN_ERROR;
        return true;
    default:
        return false;
    }
}

size_t pg_login_watch_feed(struct pg_login_watch *w, const uint8_t *in, size_t len,
                           enum pg_login_event *ev)
{
    size_t used = 0;

    *ev = PG_LOGIN_NEED_MORE;
    switch (w->state) {
    case PG_L_READY:
        *ev = PG_LOGIN_READY;
        return 0;
    case PG_L_ERROR:
        *ev = PG_LOGIN_ERROR;
        return 0;
    case PG_L_INVALID:
        *ev = PG_LOGIN_INVALID;
        return 0;
    case PG_L_HEADER:
    case PG_L_BODY:
        break;
    }
    while (used < len) {
        if (w->state == PG_L_HEADER) {
            size_t take = sizeof(w->head) - w->have;
            if (take > len - used)
                take = len - used;
            memcpy(w->head + w->have, in + used, take);
            w->have += take;
            used += take;
            if (w->have < sizeof(w->head))
                break;
            w->have = 0;
            const char *bad = login_header(w);
            if (bad)
                return login_invalid(w, used, bad, ev);
            w->state = PG_L_BODY;
        } else {
            size_t take = w->body - w->seen;
            if (take > len - used)
                take = len - used;
            login_body(w, in + used, take);
            w->seen += (uint32_t)take;
            used += take;
        }
        if (w->state == PG_L_BODY && w->seen == w->body) {
            w->state = PG_L_HEADER;
            if (login_message(w, ev))
                return used;
        }
    }
    return used;
}

/* ---- the client's SASLInitialResponse (A5, C1) ---- */

/* Checks run in wire order, each only once the bytes it reads are there, so an answer other
 * than PG_SASL_NEED_MORE never changes as more of the message arrives. */
enum pg_sasl_flag pg_sasl_initial_flag(const uint8_t *in, size_t len)
{
    if (len < 1)
        return PG_SASL_NEED_MORE;
    if (in[0] != 'p')
        return PG_SASL_OTHER;
    if (len < TAGGED_HEADER)
        return PG_SASL_NEED_MORE;
    uint32_t mlen = wire_be32(in + 1);
    if (mlen < 4 || mlen - 4 > AUTH_TOKEN_MAX)
        return PG_SASL_OTHER;
    size_t end = 1 + (size_t)mlen; /* the whole message */

    /* The mechanism name: its NUL within SASL_MECH_MAX bytes and inside the message. */
    size_t limit = TAGGED_HEADER + SASL_MECH_MAX < end ? TAGGED_HEADER + SASL_MECH_MAX : end;
    size_t avail = len < limit ? len : limit;
    const uint8_t *nul = memchr(in + TAGGED_HEADER, '\0', avail - TAGGED_HEADER);
    if (!nul)
        return avail == limit ? PG_SASL_OTHER : PG_SASL_NEED_MORE;
    /* The downgrade check that rejects 'y' is SCRAM's (auth-scram.c); OAUTHBEARER also starts
     * with a gs2 header, but has no -PLUS variant and the server accepts its 'y'. */
    size_t mech = (size_t)(nul - (in + TAGGED_HEADER));
    if (mech < 6 || memcmp(in + TAGGED_HEADER, "SCRAM-", 6) != 0)
        return PG_SASL_OTHER;

    size_t at = (size_t)(nul - in) + 1;
    if (end < at + 4 + 2) /* no room for resp_len and a gs2 header */
        return PG_SASL_OTHER;
    if (len < at + 4)
        return PG_SASL_NEED_MORE;
    /* The server reads exactly resp_len bytes, then wants the message's end (pq_getmsgend);
     * -1 (no initial response) is not SCRAM either. */
    if (wire_be32(in + at) != end - (at + 4))
        return PG_SASL_OTHER;
    at += 4;

    /* gs2-cbind-flag "n" / "y" then ",", or "p=" cb-name (RFC 5802 section 7). */
    if (len < at + 1)
        return PG_SASL_NEED_MORE;
    uint8_t flag = in[at];
    if (flag != 'n' && flag != 'y' && flag != 'p')
        return PG_SASL_OTHER;
    if (len < at + 2)
        return PG_SASL_NEED_MORE;
    if (in[at + 1] != (flag == 'p' ? '=' : ','))
        return PG_SASL_OTHER;
    return flag == 'n'   ? PG_SASL_NO_BINDING
           : flag == 'y' ? PG_SASL_BINDING_WANTED
                         : PG_SASL_BINDING;
}

/* ---- errors dbtrust reports itself (A6) ---- */

const char *pg_sqlstate_for(enum dbt_reason r)
{
    switch (dbt_reason_class(r)) {
    case DBT_CLASS_TLS:
        return "08001"; /* sqlclient_unable_to_establish_sqlconnection */
    case DBT_CLASS_UNREACHABLE:
        return "57P03"; /* cannot_connect_now: the only code pg_isready reports as rejecting */
    case DBT_CLASS_BROKEN:
        return "08006"; /* connection_failure */
    case DBT_CLASS_PROTOCOL:
        return "08P01"; /* protocol_violation */
    case DBT_CLASS_LIMIT:
        return "53300"; /* too_many_connections */
    case DBT_CLASS_SHUTDOWN:
        return "57P01"; /* admin_shutdown */
    case DBT_CLASS_CLIENT_REFUSED:
        return "28000"; /* invalid_authorization_specification: what pg_hba.conf refusals say */
    case DBT_CLASS_OK:
    case DBT_CLASS_INTERNAL:
        break;
    }
    return "XX000";
}

/* An optional field takes what the mandatory ones left; dropped rather than sent empty. */
static bool optional_fits(const char *s, size_t *room, size_t *n)
{
    if (!s || *room < 2)
        return false;
    *n = wire_utf8_prefix(s, *room - 2);
    if (*n == 0 && s[0] != '\0')
        return false;
    *room -= 2 + *n;
    return true;
}

static void put_field(struct wire_out *w, char code, const char *s, size_t n)
{
    wire_out_u8(w, (uint8_t)code);
    wire_out_bytes(w, s, n);
    wire_out_u8(w, '\0');
}

size_t pg_build_error(uint8_t *buf, size_t cap, const char *sqlstate, const char *message,
                      const char *detail, const char *hint)
{
    static const char severity[] = "FATAL";
    size_t dlen = 0, hlen = 0;

    if (!sqlstate)
        sqlstate = "XX000";
    if (!message)
        message = "";
    /* 'E' + Int32, S and V and C fields, the code and NUL of 'M', the final terminator. */
    size_t base = 1 + 4 + 2 * (sizeof severity + 1) + strlen(sqlstate) + 2 + 2 + 1;
    if (cap < base)
        return 0;
    size_t room = cap - base;
    size_t mlen = wire_utf8_prefix(message, room);
    room -= mlen;
    bool with_detail = optional_fits(detail, &room, &dlen);
    bool with_hint = optional_fits(hint, &room, &hlen);

    struct wire_out w;
    wire_out_init(&w, buf, cap);
    wire_out_u8(&w, 'E');
    wire_out_be32(&w, 0); /* patched below */
    /* 'V' is the never-localized severity (9.6+); libpq prefers it when present. */
    put_field(&w, 'S', severity, sizeof severity - 1);
    put_field(&w, 'V', severity, sizeof severity - 1);
    put_field(&w, 'C', sqlstate, strlen(sqlstate));
    put_field(&w, 'M', message, mlen);
    if (with_detail)
        put_field(&w, 'D', detail, dlen);
    if (with_hint)
        put_field(&w, 'H', hint, hlen);
    wire_out_u8(&w, '\0');
    if (w.overflow) /* cannot happen: sized above; never hand out a partial message */
        return 0;
    wire_put_be32(buf + 1, (uint32_t)(w.len - 1));
    return w.len;
}
