/* MySQL/MariaDB connection phase (mysql.h; PROTOCOLS.md part B). Byte in, step out: no sockets.
 * Every length is checked from its 4-byte header before a byte of the payload is buffered, and
 * the buffer is sized by that length then (wire_alloc), never for the worst case. */
#include "mysql.h"

#include <stdio.h>
#include <string.h>

#include "dbt_utf8.h"
#include "wire.h"

#define PKT_OK            0x00
#define PKT_MORE_DATA     0x01 /* AuthMoreData */
#define PKT_NEXT_FACTOR   0x02 /* AuthNextFactor (MySQL MFA) */
#define PKT_SWITCH        0xFE /* AuthSwitchRequest */
#define PKT_ERR           0xFF
#define PROTOCOL_V10      0x0A
#define CSHA2_FULL_AUTH   0x04 /* perform_full_authentication */
#define CSHA2_KEY_REQUEST 0x02 /* request_public_key of caching_sha2_password */
#define SHA256_KEY_REQ    0x01 /* sha256_password asks with 01, not 02 (B4) */
#define CLIENT_MFA        0x10000000u
#define SSL_REQUEST_LEN   32 /* HandshakeResponse41 header: flags, max packet, charset, 23 */
#define GREETING_FIXED    31 /* bytes from the version's NUL+1 to auth-plugin-data-part-2 */
/* Server error codes an ERR greeting is classified by (B5). */
#define ER_CON_COUNT_ERROR 1040 /* too many connections */
#define ER_HOST_IS_BLOCKED 1129 /* too many connection errors from this host */
/* Bytes of a COM_CHANGE_USER kept to read its user, database and plugin: what the fixed
 * buffer of earlier versions held, so the same packets are understood. */
#define CHANGE_USER_KEEP (MY_HEADER + MY_MAX_PACKET)

static const char csha2[] = "caching_sha2_password";
static const char sha256[] = "sha256_password";
static const char out_of_memory[] = "out of memory";

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_header(uint8_t *p, size_t payload, uint8_t seq)
{
    wire_put_le24(p, (uint32_t)payload);
    p[3] = seq;
}

static void set_step(struct my_step *out, enum my_action action, const uint8_t *data, size_t len)
{
    out->action = action;
    out->data = data;
    out->len = len;
    out->reason = DBT_NONE;
    out->detail = NULL;
    out->phase_end = false;
}

static void release_pkt(struct my_session *s)
{
    wire_free(s->pkt, s->pkt_cap);
    s->pkt = NULL;
    s->pkt_cap = 0;
    s->wipe_pkt = 0;
}

/* pkt with room for n bytes. A longer packet replaces the buffer rather than realloc it: the old
 * one may hold a password, and realloc would leave a copy behind unwiped. */
static bool reserve_pkt(struct my_session *s, size_t n)
{
    if (s->pkt && s->pkt_cap >= n)
        return true;
    release_pkt(s);
    s->pkt = wire_alloc(n);
    if (!s->pkt)
        return false;
    s->pkt_cap = n;
    return true;
}

static void release_reply(struct my_session *s)
{
    wire_free(s->reply, s->reply_cap);
    s->reply = NULL;
    s->reply_cap = 0;
}

/* The one-step buffer of the PEM answer or a decrypted password. */
static bool reserve_reply(struct my_session *s, size_t n)
{
    release_reply(s);
    s->reply = wire_alloc(n);
    s->reply_cap = s->reply ? n : 0;
    return s->reply != NULL;
}

/* Password material handed out on the previous call is gone once the proxy calls again. */
static void wipe_handed_out(struct my_session *s)
{
    if (s->wipe_pkt) {
        dbt_wipe(s->pkt, s->wipe_pkt);
        s->wipe_pkt = 0;
    }
    release_reply(s);
}

static void enter(struct my_session *s, struct my_step *out)
{
    wipe_handed_out(s);
    /* The relay reads no packet whole, and an ended session none at all: the packet buffer of
     * the connection phase (its last packet handed out on the previous call) goes, unless a
     * COM_CHANGE_USER is being kept in it. */
    if (s->state == MY_S_ENDED || (s->state == MY_S_RELAY && !s->change_user))
        release_pkt(s);
    set_step(out, MY_NEED_MORE, NULL, 0);
}

bool my_session_init(struct my_session *s, const struct my_config *cfg)
{
    memset(s, 0, sizeof(*s));
    s->cfg = *cfg;
    s->state = MY_S_GREETING;
    s->c_seq = 0xFF; /* the first packet on each leg carries sequence id 0 */
    s->s_seq = 0xFF;
    if (!cfg->rsa_key)
        return true;
    if (!cfg->rsa_pem || strlen(cfg->rsa_pem) > MY_PEM_MAX || my_rsa_size(cfg->rsa_key) < 256) {
        s->state = MY_S_ENDED;
        return false;
    }
    return true;
}

void my_session_wipe(struct my_session *s)
{
    release_pkt(s);
    release_reply(s);
    dbt_wipe(s->out, sizeof s->out);
    s->state = MY_S_ENDED;
}

size_t my_session_allocated(const struct my_session *s)
{
    return (s->pkt ? s->pkt_cap : 0) + (s->reply ? s->reply_cap : 0);
}

bool my_relaying(const struct my_session *s)
{
    return s->state == MY_S_RELAY;
}

/* ---- errors (B5) ---- */

struct my_errcode my_errcode_for(enum dbt_reason r)
{
    switch (dbt_reason_class(r)) {
    /* Only server-range codes: MariaDB Connector/C (the mariadb CLI, mysqlclient on Debian)
     * turns an ERR packet carrying a client-range code (2000-2999, e.g. 2026 or 2003) into
     * "2027 Received malformed packet" and drops the message - seen here with mariadb 10.11. */
    case DBT_CLASS_TLS:
        return (struct my_errcode){1043, "08S01"}; /* ER_HANDSHAKE_ERROR */
    case DBT_CLASS_UNREACHABLE:
        return (struct my_errcode){1429, "HY000"}; /* ER_CONNECT_TO_FOREIGN_DATA_SOURCE */
    case DBT_CLASS_PROTOCOL:
        return (struct my_errcode){1043, "08S01"}; /* ER_HANDSHAKE_ERROR */
    case DBT_CLASS_LIMIT:
        return (struct my_errcode){1040, "08004"}; /* ER_CON_COUNT_ERROR */
    case DBT_CLASS_CLIENT_REFUSED:
        /* ER_SECURE_TRANSPORT_REQUIRED for a plaintext client on a TLS-only listener, like a
         * server with require_secure_transport; ER_ACCESS_DENIED_ERROR for the rest. */
        if (r == DBT_CLIENT_TLS_REQUIRED)
            return (struct my_errcode){3159, "HY000"};
        return (struct my_errcode){1045, "28000"};
    case DBT_CLASS_OK:
    case DBT_CLASS_BROKEN:
    case DBT_CLASS_SHUTDOWN:
    case DBT_CLASS_INTERNAL:
        break;
    }
    return (struct my_errcode){1105, "HY000"}; /* ER_UNKNOWN_ERROR */
}

size_t my_build_err(uint8_t *buf, size_t cap, uint8_t seq, uint16_t code, const char *sqlstate,
                    const char *message)
{
    bool with_state = sqlstate && strlen(sqlstate) == 5;
    size_t fixed = MY_HEADER + 3 + (with_state ? 6 : 0);

    if (cap < fixed)
        return 0;
    size_t room = cap - fixed < MY_ERR_MSG_MAX ? cap - fixed : MY_ERR_MSG_MAX;
    size_t mlen = wire_utf8_prefix(message ? message : "", room);
    uint8_t *p = buf + MY_HEADER;
    *p++ = PKT_ERR;
    put_le16(p, code);
    p += 2;
    if (with_state) {
        *p++ = '#';
        memcpy(p, sqlstate, 5);
        p += 5;
    }
    if (mlen)
        memcpy(p, message, mlen);
    p += mlen;
    put_header(buf, (size_t)(p - buf) - MY_HEADER, seq);
    return (size_t)(p - buf);
}

/* The client reads '#' + SQLSTATE only when CLIENT_PROTOCOL_41 is agreed, and before the greeting
 * it knows no capabilities at all: servers send pre-greeting errors without it (B5). While the
 * client's TLS handshake runs no packet is written: the client reads TLS records then, and
 * plaintext in their place would only be a garbled handshake to it. */
static void fail_err(struct my_session *s, struct my_step *out, enum dbt_reason reason,
                     const char *detail, uint16_t code, const char *sqlstate, const char *msg)
{
    size_t n = 0;

    if (s->state != MY_S_RELAY && s->state != MY_S_ENDED && s->state != MY_S_CLIENT_TLS) {
        bool greeted = s->state != MY_S_GREETING;
        bool p41 = (s->server_caps & MY_CLIENT_PROTOCOL_41) &&
                   (s->client_caps == 0 || (s->client_caps & MY_CLIENT_PROTOCOL_41));
        uint8_t seq = greeted ? (uint8_t)(s->c_seq + 1) : 0;
        n = my_build_err(s->out, sizeof s->out, seq, code, greeted && p41 ? sqlstate : NULL, msg);
    }
    s->state = MY_S_ENDED;
    set_step(out, MY_FAIL, n ? s->out : NULL, n);
    out->reason = reason;
    out->detail = detail;
}

static void fail(struct my_session *s, struct my_step *out, enum dbt_reason reason,
                 const char *detail)
{
    char msg[MY_ERR_MSG_MAX + 1];
    struct my_errcode e = my_errcode_for(reason);

    snprintf(msg, sizeof msg, "dbtrust: %s (%s)%s", detail, dbt_reason_name(reason),
             s->cfg.context ? s->cfg.context : "");
    fail_err(s, out, reason, detail, e.code, e.sqlstate, msg);
}

/* 1045/28000 for anything the bridge cannot turn into a password: never forwarded, since a
 * wrong password counts against FAILED_LOGIN_ATTEMPTS and the host's error counter (B3). */
static void fail_auth(struct my_session *s, struct my_step *out, const char *detail,
                      const char *advice)
{
    char msg[MY_ERR_MSG_MAX + 1];

    snprintf(msg, sizeof msg, "Access denied for user '%s' (dbtrust: %s; %s)", s->user, detail,
             advice);
    fail_err(s, out, DBT_CLIENT_PROTOCOL_ERROR, detail, 1045, "28000", msg);
}

void my_fail(struct my_session *s, enum dbt_reason reason, const char *message, struct my_step *out)
{
    struct my_errcode e = my_errcode_for(reason);

    enter(s, out);
    fail_err(s, out, reason, message, e.code, e.sqlstate, message);
}

static void ended(struct my_step *out)
{
    set_step(out, MY_FAIL, NULL, 0);
    out->reason = DBT_INTERNAL_ERROR;
    out->detail = "session fed after it ended";
}

/* ---- framing of the connection phase ---- */

enum assembled { ASM_MORE, ASM_DONE, ASM_FAILED };

static void leg_fail(struct my_session *s, struct my_step *out, enum my_leg leg,
                     const char *client_detail, const char *server_detail)
{
    if (leg == MY_LEG_CLIENT)
        fail(s, out, DBT_CLIENT_PROTOCOL_ERROR, client_detail);
    else
        fail(s, out, DBT_UPSTREAM_PROTOCOL_ERROR, server_detail);
}

/* Buffers one packet of leg in pkt. The connection phase is half-duplex, so one buffer serves
 * both legs: a leg that speaks while the other's packet is half read is out of turn. */
static enum assembled assemble(struct my_session *s, enum my_leg leg, const uint8_t *in, size_t len,
                               size_t *used, struct my_step *out)
{
    if (s->owner != MY_LEG_NONE && s->owner != leg && *used < len) {
        leg_fail(s, out, leg, "client sent data out of turn during the connection phase",
                 "upstream sent data out of turn during the connection phase");
        return ASM_FAILED;
    }
    while (*used < len) {
        if (s->owner == MY_LEG_NONE) {
            s->owner = leg;
            s->have = 0;
            s->need = MY_HEADER;
        }
        size_t take = s->need - s->have < len - *used ? s->need - s->have : len - *used;
        /* The header is read aside: pkt is sized only once it is known how long the packet is. */
        uint8_t *dst = s->need == MY_HEADER ? s->head : s->pkt;
        memcpy(dst + s->have, in + *used, take);
        s->have += take;
        *used += take;
        if (s->have < s->need)
            continue;
        if (s->need == MY_HEADER) {
            uint32_t payload = wire_le24(s->head);
            if (payload > MY_MAX_PACKET) {
                leg_fail(s, out, leg, "connection-phase packet from the client over 64 KiB",
                         "connection-phase packet from the upstream over 64 KiB");
                return ASM_FAILED;
            }
            if (!reserve_pkt(s, MY_HEADER + payload)) {
                fail(s, out, DBT_INTERNAL_ERROR, out_of_memory);
                return ASM_FAILED;
            }
            memcpy(s->pkt, s->head, MY_HEADER);
            s->need += payload;
            if (payload > 0)
                continue;
        }
        s->owner = MY_LEG_NONE;
        return ASM_DONE;
    }
    return ASM_MORE;
}

/* Both the server and libmysqlclient drop a connection on a sequence id they do not expect
 * (net_serv.cc, ER_NET_PACKETS_OUT_OF_ORDER): a gap here means the legs are out of step. */
static bool in_sequence(struct my_session *s, enum my_leg leg, struct my_step *out)
{
    uint8_t *last = leg == MY_LEG_CLIENT ? &s->c_seq : &s->s_seq;
    if (s->pkt[3] != (uint8_t)(*last + 1)) {
        leg_fail(s, out, leg, "client packets out of order", "upstream packets out of order");
        return false;
    }
    *last = s->pkt[3];
    return true;
}

/* A bounded reader for the variable parts of client packets. */
struct cursor {
    const uint8_t *p;
    size_t n;
    size_t at;
    bool bad;
};

static void skip(struct cursor *c, uint64_t k)
{
    if (c->bad || k > c->n - c->at)
        c->bad = true;
    else
        c->at += (size_t)k;
}

static uint64_t lenenc(struct cursor *c)
{
    static const uint8_t width[4] = {0, 2, 3, 8}; /* after 0xFB (NULL), 0xFC, 0xFD, 0xFE */
    if (c->bad || c->at >= c->n)
        goto bad;
    uint8_t b = c->p[c->at++];
    if (b < 0xFB)
        return b;
    if (b == 0xFB || b == 0xFF || width[b - 0xFB] > c->n - c->at)
        goto bad;
    uint64_t v = 0;
    for (unsigned i = 0; i < width[b - 0xFB]; i++)
        v |= (uint64_t)c->p[c->at + i] << (8 * i);
    c->at += width[b - 0xFB];
    return v;
bad:
    c->bad = true;
    return 0;
}

/* Copies a NUL-terminated string (truncated to cap); to_end accepts a last string without its
 * NUL, as some servers send the plugin name (B1). Returns false if it is malformed. */
static bool cstr(struct cursor *c, char *dst, size_t cap, bool to_end)
{
    if (c->bad || c->at > c->n)
        return !(c->bad = true);
    const uint8_t *nul = memchr(c->p + c->at, 0, c->n - c->at);
    if (!nul && !to_end)
        return !(c->bad = true);
    size_t len = nul ? (size_t)(nul - (c->p + c->at)) : c->n - c->at;
    if (dst && cap) {
        size_t k = len < cap - 1 ? len : cap - 1;
        memcpy(dst, c->p + c->at, k);
        dst[k] = '\0';
    }
    c->at += len + (nul ? 1 : 0);
    return true;
}

/* A NUL-terminated name the client chose (user, database), kept for logs and metrics as valid
 * UTF-8 without control characters (dbt_utf8.h): cut on a character boundary, anything else
 * replaced, so every log line and label that shows it is valid text. */
static bool ident(struct cursor *c, char *dst, size_t cap)
{
    size_t start = c->at;
    if (!cstr(c, NULL, 0, false))
        return false;
    dbt_utf8_copy(dst, cap, c->p + start, c->at - start - 1);
    return true;
}

/* lenenc key/value pairs; only program_name is kept (mysql, mariadb, mysqldump... for logs). */
static void connect_attrs(struct my_session *s, struct cursor *c)
{
    uint64_t total = lenenc(c);
    if (c->bad || total > c->n - c->at)
        return;
    struct cursor a = {c->p, c->at + (size_t)total, c->at, false};
    while (!a.bad && a.at < a.n) {
        uint64_t klen = lenenc(&a);
        size_t key = a.at;
        skip(&a, klen);
        uint64_t vlen = lenenc(&a);
        size_t val = a.at;
        skip(&a, vlen);
        if (a.bad || klen != 12 || memcmp(a.p + key, "program_name", 12) != 0)
            continue;
        /* Sanitised like the user name (ident): it becomes a metric label. */
        dbt_utf8_copy(s->program_name, sizeof s->program_name, a.p + val, (size_t)vlen);
    }
}

/* ---- server greeting (B1, B2, B5) ---- */

/* Where the SQLSTATE of an ERR payload is, if it carries a well-formed one ('#' + 5 of [0-9A-Z],
 * as every SQLSTATE is), else NULL. */
static const uint8_t *err_sqlstate(const uint8_t *p, size_t n)
{
    if (n < 9 || p[3] != '#')
        return NULL;
    for (size_t i = 4; i < 9; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'A' && p[i] <= 'Z')))
            return NULL;
    return p + 4;
}

/* An ERR packet in place of the greeting (B5): 1040 too many connections, 1129 host blocked,
 * 1130 host not allowed... It comes in plaintext from a server not authenticated yet, so anyone
 * on the path can write it: its text never reaches the client, which might believe it (the
 * PostgreSQL side withholds an 'E' answer for the same reason, CVE-2024-10977). The client gets
 * dbtrust's own words in px_error_message's shape, with the server's code - drivers and pools
 * decide on 1040 or 1129 whether to retry - and its SQLSTATE if it sent one (servers send none
 * before the greeting: the client's capabilities are unknown). my_refusal_detail gives the log
 * the code and the text, made safe. */
static void err_greeting(struct my_session *s, const uint8_t *p, size_t n, struct my_step *out)
{
    if (n < 3) {
        fail(s, out, DBT_UPSTREAM_PROTOCOL_ERROR, "upstream ERR greeting without an error code");
        return;
    }
    uint16_t code = le16(p + 1);
    const uint8_t *state = err_sqlstate(p, n);
    char sqlstate[6] = "";
    if (state)
        memcpy(sqlstate, state, 5);
    enum dbt_reason reason = DBT_UPSTREAM_REFUSED;
    const char *what = " in place of its greeting";
    if (code == ER_CON_COUNT_ERROR) {
        reason = DBT_UPSTREAM_TOO_MANY_CONNECTIONS;
        what = ", too many connections on the server";
    } else if (code == ER_HOST_IS_BLOCKED) {
        reason = DBT_UPSTREAM_HOST_BLOCKED;
        what = ", the server blocks dbtrust's address after too many connection errors (flush "
               "its host cache: FLUSH HOSTS, or TRUNCATE performance_schema.host_cache)";
    }
    char msg[MY_ERR_MSG_MAX + 1];
    snprintf(msg, sizeof msg,
             "dbtrust: upstream refused the connection (%s): MySQL error %u%s; the server's own "
             "text is not shown, the server is not authenticated before TLS%s",
             dbt_reason_name(reason), (unsigned)code, what, s->cfg.context ? s->cfg.context : "");
    size_t len = my_build_err(s->out, sizeof s->out, 0, code, state ? sqlstate : NULL, msg);
    s->state = MY_S_ENDED;
    /* pkt, the server's packet, stays for my_refusal_detail until the next call */
    s->refused = true;
    set_step(out, MY_CLOSE, s->out, len);
    out->reason = reason;
    out->detail = "upstream sent an ERR packet instead of a greeting";
}

size_t my_refusal_detail(const struct my_session *s, char *buf, size_t cap)
{
    if (cap == 0 || !s->refused || !s->pkt || s->need < MY_HEADER + 3)
        return 0;
    const uint8_t *p = s->pkt + MY_HEADER;
    size_t n = s->need - MY_HEADER;
    size_t at = err_sqlstate(p, n) ? 9 : 3;
    char text[MY_REFUSAL_TEXT_MAX + 4]; /* "..." and the NUL */
    size_t k = 0;
    for (; at < n && k < MY_REFUSAL_TEXT_MAX; at++, k++)
        text[k] = p[at] >= 0x20 && p[at] < 0x7F ? (char)p[at] : '?';
    if (at < n) {
        memcpy(text + k, "...", 3);
        k += 3;
    }
    text[k] = '\0';
    int w =
        snprintf(buf, cap,
                 "upstream sent MySQL error %u instead of a greeting; its text (unauthenticated, "
                 "not shown to the client): \"%s\"",
                 (unsigned)le16(p + 1), text);
    if (w < 0)
        return 0;
    return (size_t)w < cap ? (size_t)w : cap - 1;
}

static void greeting(struct my_session *s, struct my_step *out)
{
    uint8_t *p = s->pkt + MY_HEADER;
    size_t n = s->need - MY_HEADER;

    if (n >= 1 && p[0] == PKT_ERR) {
        err_greeting(s, p, n, out);
        return;
    }
    const uint8_t *nul = n >= 2 ? memchr(p + 1, 0, n - 1) : NULL;
    if (n < 1 || p[0] != PROTOCOL_V10 || !nul) {
        fail(s, out, DBT_UPSTREAM_PROTOCOL_ERROR, "upstream greeting is not HandshakeV10");
        return;
    }
    size_t v = (size_t)(nul - p) + 1;
    if (n < v + 15) {
        fail(s, out, DBT_UPSTREAM_PROTOCOL_ERROR, "upstream greeting truncated");
        return;
    }
    uint32_t caps = le16(p + v + 13);
    if (!(caps & MY_CLIENT_SSL)) {
        fail(s, out, DBT_UPSTREAM_REFUSED_TLS,
             "upstream does not offer TLS (greeting lacks CLIENT_SSL), refusing plaintext");
        return;
    }
    if (n < v + GREETING_FIXED + 12) {
        fail(s, out, DBT_UPSTREAM_PROTOCOL_ERROR, "upstream greeting truncated");
        return;
    }
    caps |= (uint32_t)le16(p + v + 18) << 16;
    if (!(caps & MY_CLIENT_PROTOCOL_41)) {
        fail(s, out, DBT_UPSTREAM_PROTOCOL_ERROR, "upstream lacks CLIENT_PROTOCOL_41");
        return;
    }
    s->server_caps = caps;

    /* Nonce = part 1 (8 bytes) + the first 12 of part 2 (the 21st byte is a NUL). */
    memcpy(s->nonce, p + v + 4, 8);
    memcpy(s->nonce + 8, p + v + GREETING_FIXED, 12);
    s->nonce_len = MY_NONCE_LEN;
    if (caps & MY_CLIENT_PLUGIN_AUTH) {
        size_t part2 = p[v + 20] > 21 ? (size_t)p[v + 20] - 8 : 13;
        struct cursor c = {p, n, v + GREETING_FIXED, false};
        skip(&c, part2);
        if (!c.bad && c.at < n)
            (void)cstr(&c, s->plugin, sizeof s->plugin, true);
    }

    /* Patched in place, never rebuilt: version, connection id (KILL QUERY through a second
     * connection), scramble, status, plugin and MariaDB's extended capabilities in the filler
     * survive byte for byte. Compression is withheld: it would hide COM_CHANGE_USER (B6).
     * CLIENT_SSL is offered only when dbtrust itself serves TLS on the client leg (C2): else a
     * client in ssl-mode=PREFERRED would send an SSLRequest that only gets refused. */
    uint32_t offered = caps & ~(MY_CLIENT_SSL | MY_CLIENT_COMPRESS);
    if (s->cfg.client_tls != MY_TLS_OFF)
        offered |= MY_CLIENT_SSL;
    put_le16(p + v + 13, (uint16_t)offered);
    put_le16(p + v + 18, (uint16_t)((caps & ~MY_CLIENT_ZSTD) >> 16));
    s->c_seq = 0;
    s->state = MY_S_RESPONSE;
    set_step(out, MY_SEND_CLIENT, s->pkt, s->need);
}

/* ---- client HandshakeResponse41 (B2) ---- */

/* Fills user, database, plugin and program_name. Only the user's terminator is required: the
 * rest is for logs and plugin tracking, and the server judges the packet itself. */
static bool parse_response(struct my_session *s, const uint8_t *p, size_t n)
{
    uint32_t f = s->client_caps;
    struct cursor c = {p, n, SSL_REQUEST_LEN, false};

    if (!ident(&c, s->user, sizeof s->user))
        return false;
    if (f & MY_CLIENT_PLUGIN_AUTH_LENENC)
        skip(&c, lenenc(&c));
    else if (f & MY_CLIENT_SECURE_CONNECTION)
        skip(&c, c.at < n ? p[c.at++] : (c.bad = true, 0));
    else
        (void)cstr(&c, NULL, 0, false);
    if (f & MY_CLIENT_CONNECT_WITH_DB)
        (void)ident(&c, s->database, sizeof s->database);
    if ((f & MY_CLIENT_PLUGIN_AUTH) && !c.bad && c.at < n)
        (void)cstr(&c, s->plugin, sizeof s->plugin, true); /* the plugin the server continues */
    if ((f & MY_CLIENT_CONNECT_ATTRS) && !c.bad && c.at < n)
        connect_attrs(s, &c);
    return true;
}

/* The client's SSLRequest (seq 1) on a listener that serves TLS (C2). Its header is not kept:
 * the upstream SSLRequest is built from the full response that follows inside TLS, so the server
 * and dbtrust read that response with one and the same set of flags (real clients write both
 * packets from one buffer). What the client sends after the SSLRequest is its ClientHello and
 * stays unconsumed, for the TLS engine: bytes injected there cannot pass for plaintext sent
 * inside TLS, the trap PostgreSQL fixed as CVE-2021-23214 (C1). */
static void client_ssl_request(struct my_session *s, uint32_t flags, struct my_step *out)
{
    if (!(flags & MY_CLIENT_PROTOCOL_41)) {
        fail(s, out, DBT_CLIENT_PROTOCOL_ERROR, "client lacks CLIENT_PROTOCOL_41");
        return;
    }
    s->state = MY_S_CLIENT_TLS;
    set_step(out, MY_START_CLIENT_TLS, NULL, 0);
}

/* client_tls = require and the response came over the plaintext leg. The client has already put
 * its credentials on the wire in clear; the least dbtrust can do is keep them from travelling
 * further: nothing is forwarded, not even an SSLRequest, and the packet is wiped at once. */
static void refuse_plaintext(struct my_session *s, const uint8_t *p, size_t n, struct my_step *out)
{
    char msg[MY_ERR_MSG_MAX + 1];
    struct my_errcode e = my_errcode_for(DBT_CLIENT_TLS_REQUIRED);

    s->client_caps = le32(p);      /* decides whether the client reads a SQLSTATE (B5) */
    (void)parse_response(s, p, n); /* for the log only; a malformed one is refused all the same */
    dbt_wipe(s->pkt, s->need);
    snprintf(msg, sizeof msg,
             "dbtrust: client refused (%s): TLS is required on this listener (client_tls = "
             "require); connect with --ssl / ssl-mode=REQUIRED or stronger%s",
             dbt_reason_name(DBT_CLIENT_TLS_REQUIRED), s->cfg.context ? s->cfg.context : "");
    fail_err(s, out, DBT_CLIENT_TLS_REQUIRED,
             "client sent its handshake response in plaintext to a client_tls = require listener",
             e.code, e.sqlstate, msg);
}

static void response(struct my_session *s, struct my_step *out)
{
    uint8_t *p = s->pkt + MY_HEADER;
    size_t n = s->need - MY_HEADER;

    if (n < SSL_REQUEST_LEN) {
        fail(s, out, DBT_CLIENT_PROTOCOL_ERROR,
             "handshake response shorter than 32 bytes (pre-4.1 client)");
        return;
    }
    uint32_t flags = le32(p);
    if (n == SSL_REQUEST_LEN && (flags & MY_CLIENT_SSL)) {
        if (s->client_tls_up)
            fail(s, out, DBT_CLIENT_PROTOCOL_ERROR, "client sent a second SSLRequest inside TLS");
        else if (s->cfg.client_tls != MY_TLS_OFF)
            client_ssl_request(s, flags, out);
        else
            fail_err(s, out, DBT_CLIENT_DIRECT_TLS, "client sent an SSLRequest", 1043, "08S01",
                     "dbtrust listener is plaintext; connect without TLS (--skip-ssl / "
                     "ssl-mode=DISABLED)");
        return;
    }
    /* The leg decides, not the flag: a full response at seq 1 claiming CLIENT_SSL is just as
     * much plaintext. */
    if (!s->client_tls_up && s->cfg.client_tls == MY_TLS_REQUIRE) {
        refuse_plaintext(s, p, n, out);
        return;
    }
    if (!(flags & MY_CLIENT_PROTOCOL_41)) {
        fail(s, out, DBT_CLIENT_PROTOCOL_ERROR, "client lacks CLIENT_PROTOCOL_41");
        return;
    }
    s->client_caps = flags;
    if (!parse_response(s, p, n)) {
        fail(s, out, DBT_CLIENT_PROTOCOL_ERROR, "handshake response without a user name");
        return;
    }
    /* A client may ask for compression we did not offer; the server would grant it. Then the
     * relay cannot frame packets and must not look for COM_CHANGE_USER. */
    s->compressed = (flags & s->server_caps & (MY_CLIENT_COMPRESS | MY_CLIENT_ZSTD)) != 0;

    /* The server keeps the flags, max packet and charset of the SSLRequest and does not parse
     * them again after TLS (sql_authentication.cc, B2): it must be the client's own header, with
     * MariaDB's extended capabilities in the last 4 filler bytes. */
    put_header(s->out, SSL_REQUEST_LEN, ++s->s_seq);
    memcpy(s->out + MY_HEADER, p, SSL_REQUEST_LEN);
    wire_put_le24(s->out + MY_HEADER, (uint32_t)(flags | MY_CLIENT_SSL) & 0xFFFFFFu);
    s->out[MY_HEADER + 3] = (uint8_t)((flags | MY_CLIENT_SSL) >> 24);
    s->state = MY_S_SSL_SENT;
    set_step(out, MY_SEND_SERVER_PLAIN, s->out, MY_HEADER + SSL_REQUEST_LEN);
}

void my_tls_ready(struct my_session *s, struct my_step *out)
{
    enter(s, out);
    if (s->state != MY_S_TLS) {
        s->state = MY_S_ENDED;
        set_step(out, MY_FAIL, NULL, 0);
        out->reason = DBT_INTERNAL_ERROR;
        out->detail = "my_tls_ready called outside the TLS setup";
        return;
    }
    uint8_t *flags = s->pkt + MY_HEADER;
    flags[1] |= MY_CLIENT_SSL >> 8; /* the only byte that differs from what the client sent */
    s->pkt[3] = ++s->s_seq;
    s->state = MY_S_AUTH;
    s->wipe_pkt = s->need; /* the auth response may be a cleartext password */
    set_step(out, MY_SEND_SERVER, s->pkt, s->need);
}

void my_client_tls_ready(struct my_session *s)
{
    wipe_handed_out(s);
    if (s->state != MY_S_CLIENT_TLS) {
        /* No step to report it with: the next feed says "session fed after it ended". */
        s->state = MY_S_ENDED;
        return;
    }
    /* The client's counter stays at the SSLRequest's 1: its response inside TLS is seq 2 and
     * dbtrust's packets to it go on from there (B2, C2). */
    s->client_tls_up = true;
    s->state = MY_S_RESPONSE;
}

/* ---- connection phase after TLS (B2, B3, B4) ---- */

static void relay_reset(struct my_session *s)
{
    s->state = MY_S_RELAY;
    s->hdr_have = 0;
    s->left = 0;
    s->prev_seq = s->c_seq;
    s->continued = false;
    s->candidate = false;
    s->change_user = false;
}

/* AuthSwitchRequest / AuthNextFactor: FE plugin\0 data. The data becomes the nonce the client
 * hashes or XORs its password with from now on (B3). */
static void switch_plugin(struct my_session *s, const uint8_t *p, size_t n)
{
    struct cursor c = {p, n, 1, false};

    s->bridge = MY_BRIDGE_NONE;
    if (n == 1) { /* pre-4.1 "old password" switch: the greeting scramble stays */
        dbt_strlcpy(s->plugin, "mysql_old_password", sizeof s->plugin);
        return;
    }
    (void)cstr(&c, s->plugin, sizeof s->plugin, true); /* cannot fail with to_end */
    size_t data = n - c.at;
    if (data > 0 && p[n - 1] == 0x00)
        data--;
    s->nonce_len = data < MY_NONCE_LEN ? data : MY_NONCE_LEN;
    memcpy(s->nonce, p + c.at, s->nonce_len);
    s->key_sent = false;
    /* sha256_password has no "full auth" signal: its first answer is the key request (B4). */
    s->bridge = strcmp(s->plugin, sha256) == 0 ? MY_BRIDGE_SHA256 : MY_BRIDGE_NONE;
}

static void server_packet(struct my_session *s, struct my_step *out)
{
    const uint8_t *p = s->pkt + MY_HEADER;
    size_t n = s->need - MY_HEADER;
    uint8_t type = n ? p[0] : PKT_OK;

    if (type != PKT_OK && type != PKT_ERR && type != PKT_MORE_DATA && type != PKT_NEXT_FACTOR &&
        type != PKT_SWITCH) {
        /* A client would take it for whatever it resembles (PyMySQL: a successful login). */
        fail(s, out, DBT_UPSTREAM_PROTOCOL_ERROR,
             "upstream sent a packet of unknown type during authentication");
        return;
    }
    s->pkt[3] = ++s->c_seq;
    set_step(out, MY_SEND_CLIENT, s->pkt, s->need);
    if (n == 0)
        return; /* not a connection-phase packet; the client will judge it */
    switch (type) {
    case PKT_OK:
    case PKT_ERR:
        /* Commands restart at sequence id 0 on both legs: a raw relay is right from here. */
        s->bridge = MY_BRIDGE_NONE;
        relay_reset(s);
        out->phase_end = true;
        return;
    case PKT_NEXT_FACTOR:
        /* Same layout as a switch, and the exchange goes on (B6). */
        if (s->server_caps & s->client_caps & CLIENT_MFA)
            switch_plugin(s, p, n);
        return;
    case PKT_SWITCH:
        switch_plugin(s, p, n);
        return;
    case PKT_MORE_DATA:
        if (n == 2 && p[1] == CSHA2_FULL_AUTH && strcmp(s->plugin, csha2) == 0) {
            s->bridge = MY_BRIDGE_CSHA2;
            s->key_sent = false;
        }
        return;
    }
}

static void forward_client(struct my_session *s, struct my_step *out)
{
    s->bridge = MY_BRIDGE_NONE;
    s->pkt[3] = ++s->s_seq;
    s->wipe_pkt = s->need;
    set_step(out, MY_SEND_SERVER, s->pkt, s->need);
}

/* The client packet after caching_sha2's 01 04, or the first answer to sha256_password (B3
 * "Classifying the client packet"). The upstream leg is TLS, where the server reads only
 * "password\0": a key request or a blob must never reach it. */
static void bridge_packet(struct my_session *s, struct my_step *out)
{
    const uint8_t *p = s->pkt + MY_HEADER;
    size_t n = s->need - MY_HEADER;
    uint8_t key_request = s->bridge == MY_BRIDGE_CSHA2 ? CSHA2_KEY_REQUEST : SHA256_KEY_REQ;
    EVP_PKEY *key = s->cfg.rsa_key;

    s->wipe_pkt = s->need;
    /* A client on a TLS leg is on a secure transport (client_authentication.cc
     * is_secure_transport): it sends "password\0" and never asks for a key. Whatever else it
     * sends is not run through the RSA bridge - a 255-byte password would otherwise be taken for
     * a blob - and not forwarded either (B3: failed-login counters). */
    if (s->client_tls_up) {
        if (n >= 1 && p[n - 1] == 0x00)
            forward_client(s, out);
        else
            fail_auth(s, out, "client on a TLS connection sent no cleartext password",
                      "over TLS the client must send its password in clear (secure transport)");
        return;
    }
    if (n == 1 && p[0] == key_request) {
        if (!key) {
            fail_auth(s, out, "client asked for an RSA public key and none is configured",
                      "configure an RSA key for dbtrust or connect over its Unix socket");
            return;
        }
        if (s->key_sent) {
            fail_auth(s, out, "client asked for the RSA public key twice",
                      "the client cannot use dbtrust's key");
            return;
        }
        size_t pem = strlen(s->cfg.rsa_pem);
        if (!reserve_reply(s, MY_HEADER + 1 + pem)) {
            fail(s, out, DBT_INTERNAL_ERROR, out_of_memory);
            return;
        }
        s->key_sent = true;
        put_header(s->reply, 1 + pem, ++s->c_seq);
        s->reply[MY_HEADER] = PKT_MORE_DATA;
        memcpy(s->reply + MY_HEADER + 1, s->cfg.rsa_pem, pem);
        set_step(out, MY_SEND_CLIENT, s->reply, MY_HEADER + 1 + pem);
        return;
    }
    /* An empty password: nothing secret, nothing to decrypt. */
    if (n == 1 && p[0] == 0x00) {
        forward_client(s, out);
        return;
    }
    if (key && n == my_rsa_size(key)) {
        /* The password is shorter than the modulus (OAEP padding), n bytes always hold it. */
        if (!reserve_reply(s, MY_HEADER + n)) {
            fail(s, out, DBT_INTERNAL_ERROR, out_of_memory);
            return;
        }
        size_t pw =
            my_rsa_decrypt_password(key, s->nonce, s->nonce_len, p, n, s->reply + MY_HEADER, n);
        if (pw > 0) {
            s->bridge = MY_BRIDGE_NONE;
            put_header(s->reply, pw, ++s->s_seq);
            set_step(out, MY_SEND_SERVER, s->reply, MY_HEADER + pw); /* wiped on the next call */
            return;
        }
        release_reply(s); /* nothing to hand out: not kept a step longer */
    }
    /* A Unix-socket client counts as a secure transport and sends the password in clear. */
    if (s->cfg.unix_socket && n >= 1 && p[n - 1] == 0x00) {
        forward_client(s, out);
        return;
    }
    fail_auth(s, out, "client sent no password blob dbtrust can decrypt",
              "give the client dbtrust's public key (--get-server-public-key), not the server's");
}

static void client_packet(struct my_session *s, struct my_step *out)
{
    if (s->bridge != MY_BRIDGE_NONE)
        bridge_packet(s, out);
    else
        forward_client(s, out);
}

/* ---- command phase: COM_CHANGE_USER watch (B6) ---- */

/* 11 user\0 auth db\0 charset:2 plugin\0 [attrs]: the server answers it like a login. */
static void enter_change_user(struct my_session *s)
{
    struct cursor c = {s->pkt, s->have, 1, false};
    char plugin[MY_PLUGIN_MAX] = "";

    if (ident(&c, s->user, sizeof s->user)) {
        if (s->client_caps & MY_CLIENT_SECURE_CONNECTION)
            skip(&c, c.at < c.n ? s->pkt[c.at++] : (c.bad = true, 0));
        else
            (void)cstr(&c, NULL, 0, false);
        s->database[0] = '\0';
        (void)ident(&c, s->database, sizeof s->database);
        skip(&c, 2);
        if ((s->client_caps & MY_CLIENT_PLUGIN_AUTH) && !c.bad && c.at < c.n)
            (void)cstr(&c, plugin, sizeof plugin, true);
    }
    dbt_strlcpy(s->plugin, plugin, sizeof s->plugin);
    dbt_wipe(s->pkt, s->have);
    s->state = MY_S_AUTH;
    s->owner = MY_LEG_NONE;
    s->c_seq = 0;
    s->s_seq = 0;
    s->bridge = MY_BRIDGE_NONE;
    s->key_sent = false;
}

/* Frames client->server packets without holding them back. A command starts at sequence id 0;
 * not every seq-0 packet is one: a chunk after a full 0xFFFFFF chunk continues its command, and
 * LOAD DATA LOCAL streams count 2, 3, ... 255, 0 (a 0 after a 255 is taken for a wrap-around,
 * at worst missing a change-user, which then runs unbridged). */
static size_t relay_client(struct my_session *s, const uint8_t *in, size_t len, struct my_step *out)
{
    size_t used = 0;

    if (s->compressed) /* 7-byte compressed headers: nothing to frame */
        used = len;
    while (used < len) {
        if (s->hdr_have < MY_HEADER) {
            s->hdr[s->hdr_have++] = in[used++];
            if (s->hdr_have < MY_HEADER)
                continue;
            uint8_t seq = s->hdr[3];
            s->left = wire_le24(s->hdr);
            s->candidate = seq == 0 && !s->continued && s->prev_seq != 0xFF && s->left > 0 &&
                           s->left < MY_MAX_PAYLOAD_CHUNK;
            s->continued = s->left == MY_MAX_PAYLOAD_CHUNK;
            s->prev_seq = seq;
            s->change_user = false;
            if (s->left == 0)
                s->hdr_have = 0;
            continue;
        }
        if (s->candidate) {
            s->candidate = false;
            s->change_user = in[used] == MY_COM_CHANGE_USER;
            s->have = 0;
            /* Sized by what the header announced, up to what is ever read of it. */
            s->need = s->left < CHANGE_USER_KEEP ? s->left : CHANGE_USER_KEEP;
            if (s->change_user && !reserve_pkt(s, s->need)) {
                fail(s, out, DBT_INTERNAL_ERROR, out_of_memory);
                return used;
            }
        }
        size_t take = s->left < len - used ? s->left : len - used;
        if (s->change_user && s->have < s->need) {
            size_t k = take < s->need - s->have ? take : s->need - s->have;
            memcpy(s->pkt + s->have, in + used, k); /* for user and plugin, wiped after */
            s->have += k;
        }
        used += take;
        s->left -= take;
        if (s->left > 0)
            continue;
        s->hdr_have = 0;
        if (s->change_user) {
            enter_change_user(s);
            break;
        }
    }
    set_step(out, used ? MY_RELAY : MY_NEED_MORE, used ? in : NULL, used);
    return used;
}

/* ---- entry points ---- */

size_t my_feed_server(struct my_session *s, const uint8_t *in, size_t len, struct my_step *out)
{
    size_t used = 0;

    enter(s, out);
    switch (s->state) {
    case MY_S_GREETING:
    case MY_S_AUTH:
        break;
    case MY_S_RESPONSE:
    case MY_S_CLIENT_TLS:
        /* Plaintext from the upstream before TLS would reach the client unauthenticated. */
        if (len > 0)
            fail(s, out, DBT_UPSTREAM_PROTOCOL_ERROR, "upstream sent data before the SSLRequest");
        return 0;
    case MY_S_SSL_SENT:
    case MY_S_TLS:
        if (len > 0) {
            s->state = MY_S_ENDED;
            set_step(out, MY_FAIL, NULL, 0);
            out->reason = DBT_INTERNAL_ERROR;
            out->detail = "upstream bytes fed before my_tls_ready";
        }
        return 0;
    case MY_S_RELAY:
        if (len > 0)
            set_step(out, MY_RELAY, in, len);
        return len;
    case MY_S_ENDED:
        ended(out);
        return 0;
    }
    switch (assemble(s, MY_LEG_SERVER, in, len, &used, out)) {
    case ASM_MORE:
    case ASM_FAILED:
        return used;
    case ASM_DONE:
        break;
    }
    if (!in_sequence(s, MY_LEG_SERVER, out))
        return used;
    if (s->state == MY_S_GREETING)
        greeting(s, out);
    else
        server_packet(s, out);
    return used;
}

size_t my_feed_client(struct my_session *s, const uint8_t *in, size_t len, struct my_step *out)
{
    size_t used = 0;

    enter(s, out);
    switch (s->state) {
    case MY_S_GREETING:
        if (len > 0)
            fail(s, out, DBT_CLIENT_PROTOCOL_ERROR, "client sent data before the greeting");
        return 0;
    case MY_S_RESPONSE:
    case MY_S_AUTH:
        break;
    case MY_S_SSL_SENT:
        s->state = MY_S_TLS;
        set_step(out, MY_START_TLS, NULL, 0);
        return 0;
    case MY_S_TLS:
        /* pkt still holds the response until my_tls_ready */
        if (len > 0)
            fail(s, out, DBT_CLIENT_PROTOCOL_ERROR, "client sent data before the server answered");
        return 0;
    case MY_S_CLIENT_TLS:
        /* These bytes are the client's side of the TLS handshake: the proxy's to decrypt. Read
         * here as plaintext, they would be what C1 warns against. */
        if (len > 0) {
            s->state = MY_S_ENDED;
            set_step(out, MY_FAIL, NULL, 0);
            out->reason = DBT_INTERNAL_ERROR;
            out->detail = "client bytes fed before my_client_tls_ready";
        }
        return 0;
    case MY_S_RELAY:
        return relay_client(s, in, len, out);
    case MY_S_ENDED:
        ended(out);
        return 0;
    }
    switch (assemble(s, MY_LEG_CLIENT, in, len, &used, out)) {
    case ASM_MORE:
    case ASM_FAILED:
        return used;
    case ASM_DONE:
        break;
    }
    if (!in_sequence(s, MY_LEG_CLIENT, out))
        return used;
    if (s->state == MY_S_RESPONSE)
        response(s, out);
    else
        client_packet(s, out);
    return used;
}

size_t my_build_decoy_login(uint8_t *buf, size_t cap, bool tls)
{
    static const char user[] = "dbtrust";
    static const char plugin[] = "mysql_native_password";
    size_t len = 32 + sizeof user + 1 + sizeof plugin;
    if (cap < MY_HEADER + len)
        return 0;
    memset(buf, 0, MY_HEADER + len);
    wire_put_le24(buf, (uint32_t)len);
    buf[3] = tls ? 2 : 1;
    uint32_t flags = MY_CLIENT_LONG_PASSWORD | MY_CLIENT_PROTOCOL_41 | MY_CLIENT_SECURE_CONNECTION |
                     MY_CLIENT_PLUGIN_AUTH | (tls ? MY_CLIENT_SSL : 0u);
    uint8_t *p = buf + MY_HEADER;
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(flags >> (8 * i));
    p[7] = 0x01; /* max packet 16 MiB */
    p[8] = 45;   /* utf8mb4_general_ci */
    memcpy(p + 32, user, sizeof user);
    /* p[32 + sizeof user] = 0: an empty auth response */
    memcpy(p + 32 + sizeof user + 1, plugin, sizeof plugin);
    return MY_HEADER + len;
}
