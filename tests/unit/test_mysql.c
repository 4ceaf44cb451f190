/* mysql.h: the MySQL/MariaDB connection-phase machine. A scenario is a list of events (bytes
 * from the upstream, bytes from the client, TLS ready); every scenario is fed whole, with every
 * event split at every offset, and byte by byte: all must give the same steps, since TCP may cut
 * the stream anywhere. Expected packets are written out byte for byte. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "mysql.h"
#include "test_util.h"
#include "wire.h"

TestSuite(mysql, .fini = leak_check);
TestSuite(mysql_bridge, .fini = leak_check);
TestSuite(mysql_relay, .fini = leak_check);
TestSuite(mysql_client_tls, .fini = leak_check);
TestSuite(mysql_memory, .fini = leak_check);

#define MAX_STEPS  32
#define MAX_EVENTS 24

/* ---- driver ---- */

enum ev_kind { SERVER, CLIENT, TLS_READY, CLIENT_TLS_READY };

struct ev {
    enum ev_kind kind;
    const uint8_t *data;
    size_t len;
};

struct rec {
    enum ev_kind leg;
    enum my_action action;
    uint8_t *data; /* a copy: the machine's pointer is only valid until the next call */
    size_t len, cap;
    enum dbt_reason reason;
    const char *detail;
    bool phase_end;
};

struct trace {
    struct rec step[MAX_STEPS];
    size_t n;
    size_t consumed[MAX_EVENTS];
};

static void append(struct rec *r, const uint8_t *p, size_t n)
{
    if (r->len + n > r->cap) {
        r->cap = (r->len + n) * 2;
        r->data = realloc(r->data, r->cap);
        cr_assert_not_null(r->data);
    }
    if (n)
        memcpy(r->data + r->len, p, n);
    r->len += n;
}

/* MY_RELAY steps of one leg in a row are merged: how many there are depends on the cuts. */
static void record(struct trace *t, enum ev_kind leg, const struct my_step *st)
{
    if (st->len > 0)
        cr_assert_not_null(st->data);
    if (st->action == MY_FAIL || st->action == MY_CLOSE)
        cr_assert_not_null(st->detail);
    if (st->action == MY_RELAY && t->n > 0 && t->step[t->n - 1].action == MY_RELAY &&
        t->step[t->n - 1].leg == leg) {
        append(&t->step[t->n - 1], st->data, st->len);
        return;
    }
    cr_assert_lt(t->n, MAX_STEPS);
    struct rec *r = &t->step[t->n++];
    memset(r, 0, sizeof *r);
    r->leg = leg;
    r->action = st->action;
    r->reason = st->reason;
    r->detail = st->detail;
    r->phase_end = st->phase_end;
    append(r, st->data, st->len);
}

static void trace_free(struct trace *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->step[i].data);
    t->n = 0;
}

static struct my_session *new_session(const struct my_config *cfg)
{
    struct my_session *s = malloc(sizeof *s);
    cr_assert_not_null(s);
    memset(s, 0xA5, sizeof *s); /* init must not rely on zeroed memory */
    cr_assert(my_session_init(s, cfg));
    return s;
}

/* What the proxy does at the end of every connection: my_session_wipe gives back all the session
 * holds (leak_check fails the suite otherwise), then the struct goes. */
static void session_free(struct my_session *s)
{
    my_session_wipe(s);
    free(s);
}

/* Feeds one event in a first chunk of `first` bytes, then chunks of `rest`. Returns false once
 * the session ended (MY_FAIL / MY_CLOSE). */
static bool feed_event(struct my_session *s, const struct ev *e, size_t first, size_t rest,
                       struct trace *t, size_t *consumed)
{
    size_t pos = 0, end = first < e->len ? first : e->len;

    if (e->kind == TLS_READY) {
        struct my_step st;
        my_tls_ready(s, &st);
        record(t, TLS_READY, &st);
        return st.action != MY_FAIL;
    }
    if (e->kind == CLIENT_TLS_READY) { /* no step: the machine only takes note */
        my_client_tls_ready(s);
        return s->state != MY_S_ENDED;
    }
    for (long guard = 0; guard < 100000000; guard++) {
        struct my_step st;
        size_t n = e->kind == SERVER ? my_feed_server(s, e->data + pos, end - pos, &st)
                                     : my_feed_client(s, e->data + pos, end - pos, &st);
        cr_assert_leq(n, end - pos);
        if (st.action == MY_RELAY) /* relay data is the caller's own input, never a copy */
            cr_assert(st.data == e->data + pos && st.len == n && n > 0);
        pos += n;
        *consumed = pos;
        if (st.action == MY_NEED_MORE) {
            cr_assert_eq(pos, end, "MY_NEED_MORE left input unconsumed");
            cr_assert_null(st.data);
            if (end == e->len)
                return true;
            end += rest < e->len - end ? rest : e->len - end;
            continue;
        }
        record(t, e->kind, &st);
        if (st.action == MY_FAIL || st.action == MY_CLOSE)
            return false;
        /* the rest of the input is for a TLS handshake: the proxy stops feeding it here */
        if (st.action == MY_START_TLS || st.action == MY_START_CLIENT_TLS)
            return true;
    }
    cr_assert_fail("machine makes no progress");
    return false;
}

static struct my_session *run(const struct my_config *cfg, const struct ev *evs, size_t nev,
                              size_t first, size_t rest, struct trace *t)
{
    struct my_session *s = new_session(cfg);
    cr_assert_leq(nev, MAX_EVENTS);
    memset(t, 0, sizeof *t);
    for (size_t i = 0; i < nev; i++)
        if (!feed_event(s, &evs[i], first, rest, t, &t->consumed[i]))
            break;
    return s;
}

static bool same_step(const struct rec *a, const struct rec *b)
{
    if (a->leg != b->leg || a->action != b->action || a->len != b->len || a->reason != b->reason ||
        a->phase_end != b->phase_end)
        return false;
    if (a->len && memcmp(a->data, b->data, a->len) != 0)
        return false;
    if (!a->detail || !b->detail)
        return a->detail == b->detail;
    return strcmp(a->detail, b->detail) == 0;
}

static void assert_same(const struct trace *a, const struct trace *b, const char *how, size_t k)
{
    cr_assert_eq(a->n, b->n, "%s %zu: %zu steps instead of %zu", how, k, b->n, a->n);
    for (size_t i = 0; i < MAX_EVENTS; i++)
        cr_assert_eq(a->consumed[i], b->consumed[i], "%s %zu: event %zu consumed %zu, not %zu", how,
                     k, i, b->consumed[i], a->consumed[i]);
    for (size_t i = 0; i < a->n; i++)
        cr_assert(same_step(&a->step[i], &b->step[i]), "%s %zu: step %zu differs", how, k, i);
}

static void check_cut(const struct my_config *cfg, const struct ev *evs, size_t nev,
                      const struct trace *whole, size_t first, size_t rest, const char *how)
{
    struct trace t;
    session_free(run(cfg, evs, nev, first, rest, &t));
    assert_same(whole, &t, how, first);
    trace_free(&t);
}

/* Whole, every event split at every offset (sampled offsets past 4096 bytes), byte by byte.
 * Returns the whole-feed trace and, if keep is set, the session that produced it. */
static void run_all(const struct my_config *cfg, const struct ev *evs, size_t nev,
                    struct trace *whole, struct my_session **keep)
{
    size_t longest = 0;
    for (size_t i = 0; i < nev; i++)
        longest = evs[i].len > longest ? evs[i].len : longest;
    struct my_session *s = run(cfg, evs, nev, SIZE_MAX, SIZE_MAX, whole);
    if (keep)
        *keep = s;
    else
        session_free(s);
    for (size_t k = 1; k < longest; k = k < 4096 ? k + 1 : k * 2 + 1)
        check_cut(cfg, evs, nev, whole, k, SIZE_MAX, "split at");
    check_cut(cfg, evs, nev, whole, 1, 1, "byte by byte");
}

static void expect(const struct trace *t, size_t i, enum ev_kind leg, enum my_action action,
                   const void *data, size_t len)
{
    cr_assert_lt(i, t->n, "missing step %zu", i);
    const struct rec *r = &t->step[i];
    cr_assert_eq(r->leg, leg, "step %zu: leg %d, want %d", i, r->leg, leg);
    cr_assert_eq(r->action, action, "step %zu: action %d, want %d", i, r->action, action);
    cr_assert_eq(r->len, len, "step %zu: %zu bytes, want %zu", i, r->len, len);
    if (len)
        cr_assert_arr_eq(r->data, data, len, "step %zu: bytes differ", i);
}

/* ---- vector builders ---- */

/* header (3-byte length, seq) + payload */
static size_t pkt(uint8_t *b, uint8_t seq, const void *payload, size_t n)
{
    b[0] = (uint8_t)n;
    b[1] = (uint8_t)(n >> 8);
    b[2] = (uint8_t)(n >> 16);
    b[3] = seq;
    memcpy(b + 4, payload, n);
    return 4 + n;
}

/* An ERR packet written independently of my_build_err. */
static size_t err_pkt(uint8_t *b, uint8_t seq, uint16_t code, const char *state, const char *msg)
{
    uint8_t p[600];
    size_t n = 0;
    p[n++] = 0xFF;
    p[n++] = (uint8_t)code;
    p[n++] = (uint8_t)(code >> 8);
    if (state) {
        p[n++] = '#';
        memcpy(p + n, state, 5);
        n += 5;
    }
    memcpy(p + n, msg, strlen(msg));
    return pkt(b, seq, p, n + strlen(msg));
}

/* MariaDB 10.11 (Debian 12) greeting payload: CLIENT_MYSQL (bit 0) clear, extended
 * capabilities 0x1d in the last 4 filler bytes, CLIENT_SSL and CLIENT_COMPRESS offered. */
static const uint8_t mariadb_greeting[] = {0x0a, '5',  '.',  '5',  '.',  '5', '-', '1',
                                           '0',  '.',  '1',  '1',  '.',  '6', '-', 'M',
                                           'a',  'r',  'i',  'a',  'D',  'B', '-', '0',
                                           '+',  'd',  'e',  'b',  '1',  '2', 'u', '1',
                                           0x00, 0x2a, 0x00, 0x00, 0x00, /* connection id 42 */
                                           'T',  '4',  'e',  '!',  '7',  'W', '[', ')',
                                           0x00,       /* scramble 1, filler */
                                           0xfe, 0xff, /* caps low: 0x0800 SSL, 0x20 COMPRESS */
                                           0x2d, 0x02, 0x00, /* charset 45, status */
                                           0xff, 0x81,       /* caps high */
                                           0x15, 0,    0,    0,    0,    0,   0,   0x1d,
                                           0x00, 0x00, 0x00, /* plugin data len, MariaDB ext caps */
                                           'M',  'p',  '<',  '5',  'q',  '#', 'r', '9',
                                           '&',  'X',  'k',  'L',  0x00, 'm', 'y', 's',
                                           'q',  'l',  '_',  'n',  'a',  't', 'i', 'v',
                                           'e',  '_',  'p',  'a',  's',  's', 'w', 'o',
                                           'r',  'd',  0x00};
#define MARIADB_CAPS_LO 46 /* offset of the low capability bytes in the payload */

/* MySQL 8.0.36 greeting payload: all capabilities incl. CLIENT_ZSTD (1 << 26). */
static const uint8_t mysql8_greeting[] = {
    0x0a, '8',  '.',  '0',  '.',  '3',  '6',  0x00, 0x0b, 0x00, 0x00, 0x00, /* conn id 11 */
    0x10, 0x22, 0x3c, 0x47, 0x51, 0x6e, 0x71, 0x08, 0x00,                   /* scramble 1 */
    0xff, 0xff, 0xff, 0x02, 0x00, 0xff, 0xdf,                      /* caps, charset, status */
    0x15, 0,    0,    0,    0,    0,    0,    0,    0,    0,    0, /* len, reserved */
    0x2a, 0x17, 0x63, 0x45, 0x39, 0x5d, 0x1a, 0x70, 0x66, 0x33, 0x21, 0x48,
    0x00, 'c',  'a',  'c',  'h',  'i',  'n',  'g',  '_',  's',  'h',  'a',
    '2',  '_',  'p',  'a',  's',  's',  'w',  'o',  'r',  'd',  0x00};
static const uint8_t mysql8_nonce[20] = {0x10, 0x22, 0x3c, 0x47, 0x51, 0x6e, 0x71,
                                         0x08, 0x2a, 0x17, 0x63, 0x45, 0x39, 0x5d,
                                         0x1a, 0x70, 0x66, 0x33, 0x21, 0x48};

/* HandshakeResponse41 header of a MariaDB client: flags 0x3fa68c, 16 MiB, charset 45, 19 zero
 * bytes and extended capabilities 0x1d. */
static const uint8_t response_header[32] = {
    0x8c, 0xa6, 0x3f, 0x00, 0x00, 0x00, 0x00, 0x01, 0x2d, 0, 0, 0, 0,    0,    0,    0,
    0,    0,    0,    0,    0,    0,    0,    0,    0,    0, 0, 0, 0x1d, 0x00, 0x00, 0x00};
/* The SSLRequest dbtrust must build from it: same bytes, 0x0800 set, seq 1. */
static const uint8_t ssl_request[36] = {
    0x20, 0x00, 0x00, 0x01,                               /* 32 bytes, seq 1 */
    0x8c, 0xae, 0x3f, 0x00, 0x00, 0x00, 0x00, 0x01, 0x2d, /* flags | 0x800, max, charset */
    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,
    0,    0,    0,    0,    0,    0,    0,    0,    0, /* 19 zero */
    0x1d, 0x00, 0x00, 0x00};                           /* MariaDB extended caps */

static size_t lenenc_str(uint8_t *b, const char *s)
{
    size_t n = strlen(s);
    b[0] = (uint8_t)n;
    memcpy(b + 1, s, n);
    return 1 + n;
}

/* Response payload: user, 20- or 32-byte auth data (lenenc), database, plugin, attributes. */
static size_t response(uint8_t *p, const char *user, size_t auth_len, const char *db,
                       const char *plugin, const char *program)
{
    size_t n = 0;
    memcpy(p, response_header, 32);
    n = 32;
    memcpy(p + n, user, strlen(user) + 1);
    n += strlen(user) + 1;
    p[n++] = (uint8_t)auth_len;
    for (size_t i = 0; i < auth_len; i++)
        p[n++] = (uint8_t)(0x90 + i);
    memcpy(p + n, db, strlen(db) + 1);
    n += strlen(db) + 1;
    memcpy(p + n, plugin, strlen(plugin) + 1);
    n += strlen(plugin) + 1;
    uint8_t attrs[200];
    size_t a = lenenc_str(attrs, "_client_name");
    a += lenenc_str(attrs + a, "libmariadb");
    a += lenenc_str(attrs + a, "program_name");
    a += lenenc_str(attrs + a, program);
    p[n++] = (uint8_t)a;
    memcpy(p + n, attrs, a);
    return n + a;
}

static const struct my_config tcp_nokey = {0};

/* ---- a login shared by many tests: greeting, response, TLS ---- */

struct login {
    uint8_t greet[200], greet_out[200], resp[400], resp_out[400];
    size_t greet_len, resp_len;
};

static void make_login(struct login *l, const uint8_t *greeting, size_t glen, const char *plugin,
                       size_t auth_len)
{
    uint8_t p[400];
    l->greet_len = pkt(l->greet, 0, greeting, glen);
    size_t n = response(p, "app", auth_len, "shop", plugin, "mariadb");
    l->resp_len = pkt(l->resp, 1, p, n);
    memcpy(l->resp_out, l->resp, l->resp_len);
    l->resp_out[3] = 2;
    l->resp_out[5] |= 0x08;
}

static size_t login_events(struct ev *e, const struct login *l)
{
    e[0] = (struct ev){SERVER, l->greet, l->greet_len};
    e[1] = (struct ev){CLIENT, l->resp, l->resp_len};
    e[2] = (struct ev){TLS_READY, NULL, 0};
    return 3;
}

/* Steps 0..3 of every login: patched greeting, SSLRequest, START_TLS, response with 0x800. */
static void expect_login(const struct trace *t, const struct login *l, const uint8_t *greet_out)
{
    expect(t, 0, SERVER, MY_SEND_CLIENT, greet_out, l->greet_len);
    expect(t, 1, CLIENT, MY_SEND_SERVER_PLAIN, ssl_request, sizeof ssl_request);
    expect(t, 2, CLIENT, MY_START_TLS, NULL, 0);
    expect(t, 3, TLS_READY, MY_SEND_SERVER, l->resp_out, l->resp_len);
}

static const uint8_t ok_payload[] = {0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00};

/* ---- greeting ---- */

Test(mysql, mariadb_greeting_patched_in_place)
{
    uint8_t in[200], want[200];
    size_t n = pkt(in, 0, mariadb_greeting, sizeof mariadb_greeting);
    memcpy(want, in, n);
    want[4 + MARIADB_CAPS_LO] = 0xde; /* 0xfffe & ~(0x0800 | 0x0020) = 0xf7de */
    want[4 + MARIADB_CAPS_LO + 1] = 0xf7;
    struct ev e = {SERVER, in, n};
    struct trace t;
    struct my_session *s;

    run_all(&tcp_nokey, &e, 1, &t, &s);
    cr_assert_eq(t.n, 1);
    expect(&t, 0, SERVER, MY_SEND_CLIENT, want, n);
    cr_assert_eq(t.consumed[0], n);
    cr_assert_str_eq(s->plugin, "mysql_native_password");
    cr_assert_arr_eq(s->nonce, "T4e!7W[)Mp<5q#r9&XkL", 20);
    cr_assert_eq(s->server_caps, 0x81fffffeu, "the original capabilities are remembered");
    trace_free(&t);
    session_free(s);
}

Test(mysql, mysql8_greeting_clears_ssl_compress_zstd)
{
    uint8_t in[200], want[200];
    size_t n = pkt(in, 0, mysql8_greeting, sizeof mysql8_greeting);
    memcpy(want, in, n);
    want[4 + 21] = 0xdf; /* low 0xffff -> 0xf7df */
    want[4 + 22] = 0xf7;
    want[4 + 27] = 0xdb; /* high 0xdfff -> 0xdbff: CLIENT_ZSTD_COMPRESSION_ALGORITHM */
    struct ev e = {SERVER, in, n};
    struct trace t;
    struct my_session *s;

    run_all(&tcp_nokey, &e, 1, &t, &s);
    cr_assert_eq(t.n, 1);
    expect(&t, 0, SERVER, MY_SEND_CLIENT, want, n);
    cr_assert_str_eq(s->plugin, "caching_sha2_password");
    cr_assert_arr_eq(s->nonce, mysql8_nonce, 20);
    trace_free(&t);
    session_free(s);
}

Test(mysql, greeting_without_ssl_fails_closed)
{
    uint8_t g[200], in[200], want[300];
    memcpy(g, mariadb_greeting, sizeof mariadb_greeting);
    g[MARIADB_CAPS_LO + 1] &= (uint8_t)~0x08;
    size_t n = pkt(in, 0, g, sizeof mariadb_greeting);
    size_t wn = err_pkt(want, 0, 1043, NULL,
                        "dbtrust: upstream does not offer TLS (greeting lacks CLIENT_SSL), "
                        "refusing plaintext (upstream_refused_tls)");
    struct ev e = {SERVER, in, n};
    struct trace t;

    run_all(&tcp_nokey, &e, 1, &t, NULL);
    cr_assert_eq(t.n, 1);
    expect(&t, 0, SERVER, MY_FAIL, want, wn);
    cr_assert_eq(t.step[0].reason, DBT_UPSTREAM_REFUSED_TLS);
    trace_free(&t);
}

/* ---- an ERR packet in place of the greeting (B5) ---- */

static const struct my_config tcp_named = {.context = " [listener shop, upstream db:3306]"};
static const char not_shown[] = "; the server's own text is not shown, the server is not "
                                "authenticated before TLS [listener shop, upstream db:3306]";

/* The upstream's ERR greeting, fed whole and split everywhere: MY_CLOSE with the reason,
 * dbtrust's ERR at seq 0 carrying the server's code and SQLSTATE (if any) and want_msg; none of
 * the server's text in it. Returns the session, right after MY_CLOSE (for my_refusal_detail). */
static struct my_session *err_greeting_case(const void *payload, size_t n, uint16_t code,
                                            const char *state, const char *want_msg,
                                            enum dbt_reason reason, const char *server_text)
{
    uint8_t in[MY_HEADER + 600], want[MY_HEADER + 600];
    size_t in_n = pkt(in, 0, payload, n);
    size_t wn = err_pkt(want, 0, code, state, want_msg);
    struct ev e = {SERVER, in, in_n};
    struct trace t;
    struct my_session *s;

    run_all(&tcp_named, &e, 1, &t, &s);
    cr_assert_eq(t.n, 1);
    expect(&t, 0, SERVER, MY_CLOSE, want, wn);
    cr_assert_eq(t.step[0].reason, reason, "reason %s", dbt_reason_name(t.step[0].reason));
    cr_assert_str_eq(t.step[0].detail, "upstream sent an ERR packet instead of a greeting");
    cr_assert_null(memmem(t.step[0].data, t.step[0].len, server_text, strlen(server_text)),
                   "the server's text reached the client");
    cr_assert_eq(t.consumed[0], in_n);
    trace_free(&t);
    return s;
}

static void expect_refusal_detail(const struct my_session *s, const char *want)
{
    char buf[400];
    cr_assert_eq(my_refusal_detail(s, buf, sizeof buf), strlen(want));
    cr_assert_str_eq(buf, want);
}

/* 1040 in the form servers send before the greeting (no SQLSTATE): the code is kept for the
 * client's retry logic, the words are dbtrust's, the server's go only to the log's detail. */
Test(mysql, err_greeting_1040_text_replaced_code_kept)
{
    static const char msg[] = "\xff\x10\x04Too many connections; please visit http://evil.example";
    char want[600];
    snprintf(want, sizeof want,
             "dbtrust: upstream refused the connection (upstream_too_many_connections): MySQL "
             "error 1040, too many connections on the server%s",
             not_shown);
    struct my_session *s = err_greeting_case(msg, sizeof msg - 1, 1040, NULL, want,
                                             DBT_UPSTREAM_TOO_MANY_CONNECTIONS, "evil.example");
    expect_refusal_detail(s, "upstream sent MySQL error 1040 instead of a greeting; its text "
                             "(unauthenticated, not shown to the client): \"Too many connections; "
                             "please visit http://evil.example\"");
    cr_assert_eq(dbt_reason_class(DBT_UPSTREAM_TOO_MANY_CONNECTIONS), DBT_CLASS_UNREACHABLE);
    /* the next call is the end of it: the packet and the detail are gone */
    struct my_step st;
    cr_assert_eq(my_feed_server(s, NULL, 0, &st), 0);
    cr_assert_eq(st.action, MY_FAIL);
    char buf[64] = "untouched";
    cr_assert_eq(my_refusal_detail(s, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "untouched");
    cr_assert_eq(my_session_allocated(s), 0);
    session_free(s);
}

/* 1129 with a SQLSTATE (not what servers send before the greeting, but kept when present). */
Test(mysql, err_greeting_1129_keeps_sqlstate)
{
    static const char msg[] = "\xff\x69\x04#HY000Host '10.9.8.7' is blocked because of many "
                              "connection errors; unblock with 'mariadb-admin flush-hosts'";
    char want[600];
    snprintf(want, sizeof want,
             "dbtrust: upstream refused the connection (upstream_host_blocked): MySQL error 1129, "
             "the server blocks dbtrust's address after too many connection errors (flush its "
             "host cache: FLUSH HOSTS, or TRUNCATE performance_schema.host_cache)%s",
             not_shown);
    struct my_session *s = err_greeting_case(msg, sizeof msg - 1, 1129, "HY000", want,
                                             DBT_UPSTREAM_HOST_BLOCKED, "10.9.8.7");
    expect_refusal_detail(s, "upstream sent MySQL error 1129 instead of a greeting; its text "
                             "(unauthenticated, not shown to the client): \"Host '10.9.8.7' is "
                             "blocked because of many connection errors; unblock with "
                             "'mariadb-admin flush-hosts'\"");
    session_free(s);
}

/* Any other code: upstream_refused, the code named. A '#' not followed by a SQLSTATE is text. */
Test(mysql, err_greeting_other_code_generic_reason)
{
    static const char msg[] = "\xff\x6a\x04#hy00 Host 'x' is not allowed to connect";
    char want[600];
    snprintf(want, sizeof want,
             "dbtrust: upstream refused the connection (upstream_refused): MySQL error 1130 in "
             "place of its greeting%s",
             not_shown);
    struct my_session *s = err_greeting_case(msg, sizeof msg - 1, 1130, NULL, want,
                                             DBT_UPSTREAM_REFUSED, "not allowed");
    expect_refusal_detail(s, "upstream sent MySQL error 1130 instead of a greeting; its text "
                             "(unauthenticated, not shown to the client): \"#hy00 Host 'x' is "
                             "not allowed to connect\"");
    session_free(s);

    /* no text at all */
    static const char bare[] = "\xff\x10\x04";
    s = err_greeting_case(bare, 3, 1040, NULL,
                          "dbtrust: upstream refused the connection "
                          "(upstream_too_many_connections): MySQL error 1040, too many "
                          "connections on the server; the server's own text is not shown, the "
                          "server is not authenticated before TLS [listener shop, upstream "
                          "db:3306]",
                          DBT_UPSTREAM_TOO_MANY_CONNECTIONS, "Too many");
    expect_refusal_detail(s, "upstream sent MySQL error 1040 instead of a greeting; its text "
                             "(unauthenticated, not shown to the client): \"\"");
    session_free(s);
}

/* The log gets the text bounded and printable: control bytes (a forged log line), escapes and
 * non-ASCII become '?', and past MY_REFUSAL_TEXT_MAX bytes it is cut with "...". */
Test(mysql, err_greeting_text_sanitised_for_the_log)
{
    uint8_t msg[400];
    size_t n = 0;
    memcpy(msg, "\xff\x10\x04", 3);
    n = 3;
    static const char head[] = "a\nreason=none\x1b[31m\xc3\xa9\x7f~ ";
    memcpy(msg + n, head, sizeof head - 1);
    n += sizeof head - 1;
    memset(msg + n, 'x', 200);
    n += 200;
    struct my_session *s = err_greeting_case(msg, n, 1040, NULL,
                                             "dbtrust: upstream refused the connection "
                                             "(upstream_too_many_connections): MySQL error 1040, "
                                             "too many connections on the server; the server's "
                                             "own text is not shown, the server is not "
                                             "authenticated before TLS [listener shop, upstream "
                                             "db:3306]",
                                             DBT_UPSTREAM_TOO_MANY_CONNECTIONS, "reason=none");
    char want[400];
    int k = snprintf(want, sizeof want,
                     "upstream sent MySQL error 1040 instead of a greeting; its text "
                     "(unauthenticated, not shown to the client): \"a?reason=none?[31m???~ ");
    size_t text = strlen("a?reason=none?[31m???~ ");
    memset(want + k, 'x', MY_REFUSAL_TEXT_MAX - text);
    k += (int)(MY_REFUSAL_TEXT_MAX - text);
    snprintf(want + k, sizeof want - (size_t)k, "...\"");
    expect_refusal_detail(s, want);
    /* a short buffer: truncated, terminated, the length written */
    char small[16];
    cr_assert_eq(my_refusal_detail(s, small, sizeof small), 15);
    cr_assert_str_eq(small, "upstream sent M");
    session_free(s);
}

/* An ERR too short to carry a code is no refusal dbtrust can name: a protocol error. */
Test(mysql, err_greeting_without_code_is_a_protocol_error)
{
    static const char *const payloads[] = {"\xff", "\xff\x10"};
    for (size_t i = 0; i < DBT_ARRAY_LEN(payloads); i++) {
        uint8_t in[16], want[300];
        size_t in_n = pkt(in, 0, payloads[i], i + 1);
        size_t wn = err_pkt(want, 0, 1043, NULL,
                            "dbtrust: upstream ERR greeting without an error code "
                            "(upstream_protocol_error)");
        struct ev e = {SERVER, in, in_n};
        struct trace t;
        struct my_session *s;
        run_all(&tcp_nokey, &e, 1, &t, &s);
        cr_assert_eq(t.n, 1);
        expect(&t, 0, SERVER, MY_FAIL, want, wn);
        cr_assert_eq(t.step[0].reason, DBT_UPSTREAM_PROTOCOL_ERROR);
        char buf[64];
        cr_assert_eq(my_refusal_detail(s, buf, sizeof buf), 0);
        trace_free(&t);
        session_free(s);
    }
}

Test(mysql, greeting_over_64k_rejected_before_buffering)
{
    static const uint8_t in[] = {0x01, 0x00, 0x01, 0x00, 0x0a, 0x35}; /* 65537 bytes */
    uint8_t want[200];
    size_t wn = err_pkt(want, 0, 1043, NULL,
                        "dbtrust: connection-phase packet from the upstream over 64 KiB "
                        "(upstream_protocol_error)");
    struct ev e = {SERVER, in, sizeof in};
    struct trace t;

    run_all(&tcp_nokey, &e, 1, &t, NULL);
    cr_assert_eq(t.n, 1);
    expect(&t, 0, SERVER, MY_FAIL, want, wn);
    cr_assert_eq(t.consumed[0], 4, "decided on the header alone");
    trace_free(&t);
}

/* ---- HandshakeResponse, SSLRequest, TLS ---- */

Test(mysql, response_gives_ssl_request_and_forwarded_response)
{
    struct login l;
    uint8_t want_greet[200];
    make_login(&l, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    memcpy(want_greet, l.greet, l.greet_len);
    want_greet[4 + MARIADB_CAPS_LO] = 0xde;
    want_greet[4 + MARIADB_CAPS_LO + 1] = 0xf7;
    uint8_t ok3[16], ok2[16];
    size_t okn = pkt(ok3, 3, ok_payload, sizeof ok_payload);
    pkt(ok2, 2, ok_payload, sizeof ok_payload);
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, ok3, okn};
    struct trace t;
    struct my_session *s;

    run_all(&tcp_nokey, e, ne, &t, &s);
    cr_assert_eq(t.n, 5);
    expect_login(&t, &l, want_greet);
    /* only bit 0x800 of the forwarded response differs from the client's */
    cr_assert_eq(t.step[3].data[5] ^ l.resp[5], 0x08);
    cr_assert_arr_eq(t.step[3].data + 6, l.resp + 6, l.resp_len - 6);
    expect(&t, 4, SERVER, MY_SEND_CLIENT, ok2, okn);
    cr_assert(t.step[4].phase_end);
    cr_assert(my_relaying(s));
    cr_assert_str_eq(s->user, "app");
    cr_assert_str_eq(s->database, "shop");
    cr_assert_str_eq(s->program_name, "mariadb");
    trace_free(&t);
    session_free(s);
}

Test(mysql, client_ssl_request_rejected)
{
    uint8_t g[200], in[64], want[200];
    size_t gn = pkt(g, 0, mariadb_greeting, sizeof mariadb_greeting);
    memcpy(in, ssl_request, sizeof ssl_request);
    size_t wn = err_pkt(want, 2, 1043, "08S01",
                        "dbtrust listener is plaintext; connect without TLS (--skip-ssl / "
                        "ssl-mode=DISABLED)");
    struct ev e[2] = {{SERVER, g, gn}, {CLIENT, in, sizeof ssl_request}};
    struct trace t;

    run_all(&tcp_nokey, e, 2, &t, NULL);
    cr_assert_eq(t.n, 2);
    expect(&t, 1, CLIENT, MY_FAIL, want, wn);
    cr_assert_eq(t.step[1].reason, DBT_CLIENT_DIRECT_TLS);
    trace_free(&t);
}

Test(mysql, oversize_response_rejected_before_buffering)
{
    uint8_t g[200], want[200];
    size_t gn = pkt(g, 0, mariadb_greeting, sizeof mariadb_greeting);
    static const uint8_t in[] = {0x01, 0x00, 0x01, 0x01, 0x8c}; /* 65537 bytes */
    size_t wn = err_pkt(want, 1, 1043, "08S01",
                        "dbtrust: connection-phase packet from the client over 64 KiB "
                        "(client_protocol_error)");
    struct ev e[2] = {{SERVER, g, gn}, {CLIENT, in, sizeof in}};
    struct trace t;

    run_all(&tcp_nokey, e, 2, &t, NULL);
    cr_assert_eq(t.n, 2);
    expect(&t, 1, CLIENT, MY_FAIL, want, wn);
    cr_assert_eq(t.consumed[1], 4);
    trace_free(&t);
}

Test(mysql, plaintext_from_either_side_out_of_turn_fails)
{
    uint8_t g[200];
    size_t gn = pkt(g, 0, mariadb_greeting, sizeof mariadb_greeting);
    static const uint8_t junk[] = {0x01, 0x00, 0x00, 0x01, 0x00};
    struct trace t;

    struct ev early[1] = {{CLIENT, junk, sizeof junk}};
    run_all(&tcp_nokey, early, 1, &t, NULL);
    cr_assert_eq(t.n, 1);
    cr_assert_eq(t.step[0].action, MY_FAIL);
    cr_assert_str_eq(t.step[0].detail, "client sent data before the greeting");
    cr_assert_eq(t.step[0].data[3], 0, "pre-greeting ERR has seq 0");
    cr_assert_eq(t.step[0].data[7], 'd', "and no SQLSTATE");
    trace_free(&t);

    struct ev injected[2] = {{SERVER, g, gn}, {SERVER, junk, sizeof junk}};
    run_all(&tcp_nokey, injected, 2, &t, NULL);
    cr_assert_eq(t.n, 2);
    cr_assert_eq(t.step[1].action, MY_FAIL);
    cr_assert_eq(t.step[1].reason, DBT_UPSTREAM_PROTOCOL_ERROR);
    cr_assert_str_eq(t.step[1].detail, "upstream sent data before the SSLRequest");
    trace_free(&t);
}

Test(mysql, server_packet_out_of_order_fails)
{
    struct login l;
    make_login(&l, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    uint8_t ok[16];
    size_t okn = pkt(ok, 4, ok_payload, sizeof ok_payload); /* 3 expected */
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, ok, okn};
    struct trace t;

    run_all(&tcp_nokey, e, ne, &t, NULL);
    cr_assert_eq(t.n, 5);
    cr_assert_eq(t.step[4].action, MY_FAIL);
    cr_assert_str_eq(t.step[4].detail, "upstream packets out of order");
    cr_assert_eq(t.step[4].data[3], 2);
    trace_free(&t);
}

Test(mysql, unknown_auth_packet_type_fails_as_upstream_error)
{
    /* Forwarded, PyMySQL would take 0x42... for a successful login. */
    struct login l;
    make_login(&l, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    static const uint8_t junk[] = {0x42, 'x', 'y'};
    uint8_t p3[16];
    size_t n3 = pkt(p3, 3, junk, sizeof junk);
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, p3, n3};
    struct trace t;

    run_all(&tcp_nokey, e, ne, &t, NULL);
    cr_assert_eq(t.n, 5);
    cr_assert_eq(t.step[4].action, MY_FAIL);
    cr_assert_eq(t.step[4].reason, DBT_UPSTREAM_PROTOCOL_ERROR);
    cr_assert_str_eq(t.step[4].detail,
                     "upstream sent a packet of unknown type during authentication");
    cr_assert_eq(t.step[4].data[3], 2, "the ERR takes the sequence id the packet would have had");
    cr_assert_eq(t.step[4].data[4], 0xff);
    trace_free(&t);
}

Test(mysql, decoy_login_exact_bytes)
{
    /* HandshakeResponse41, seq 1: caps LONG_PASSWORD|PROTOCOL_41|SECURE_CONNECTION|PLUGIN_AUTH,
     * max packet 16 MiB, utf8mb4_general_ci, 23 zero bytes, "dbtrust", empty auth, plugin. */
    static const uint8_t want[] = {
        0x3f, 0x00, 0x00, 0x01, 0x01, 0x82, 0x08, 0x00, 0x00, 0x00, 0x00, 0x01, 0x2d, 0,
        0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,
        0,    0,    0,    0,    0,    0,    0,    0,    'd',  'b',  't',  'r',  'u',  's',
        't',  0,    0,    'm',  'y',  's',  'q',  'l',  '_',  'n',  'a',  't',  'i',  'v',
        'e',  '_',  'p',  'a',  's',  's',  'w',  'o',  'r',  'd',  0};
    uint8_t buf[128];
    size_t n = my_build_decoy_login(buf, sizeof buf, false);
    cr_assert_eq(n, sizeof want);
    cr_assert_arr_eq(buf, want, sizeof want);
    cr_assert_eq(my_build_decoy_login(buf, sizeof want - 1, false), 0, "too small a buffer");
    /* After an SSLRequest: sequence id 2 and CLIENT_SSL (0x800) among the flags. */
    n = my_build_decoy_login(buf, sizeof buf, true);
    cr_assert_eq(n, sizeof want);
    cr_assert_eq(buf[3], 2);
    cr_assert_eq(buf[5], 0x82 | 0x08);
    cr_assert_arr_eq(buf + 6, want + 6, sizeof want - 6);
}

Test(mysql, auth_switch_resequenced)
{
    struct login l;
    make_login(&l, mariadb_greeting, sizeof mariadb_greeting, "caching_sha2_password", 32);
    static const char sw[] = "\xfemysql_native_password\0ABCDEFGHIJKLMNOPQRST";
    uint8_t sw3[64], sw2[64], ar3[64], ar4[64], ok5[16], ok4[16], greet_out[200];
    uint8_t authresp[20];
    memset(authresp, 0x5a, sizeof authresp);
    size_t swn = pkt(sw3, 3, sw, sizeof sw); /* including the trailing NUL of the nonce */
    pkt(sw2, 2, sw, sizeof sw);
    size_t arn = pkt(ar3, 3, authresp, 20);
    pkt(ar4, 4, authresp, 20);
    size_t okn = pkt(ok5, 5, ok_payload, sizeof ok_payload);
    pkt(ok4, 4, ok_payload, sizeof ok_payload);
    memcpy(greet_out, l.greet, l.greet_len);
    greet_out[4 + MARIADB_CAPS_LO] = 0xde;
    greet_out[4 + MARIADB_CAPS_LO + 1] = 0xf7;
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, sw3, swn};
    e[ne++] = (struct ev){CLIENT, ar3, arn};
    e[ne++] = (struct ev){SERVER, ok5, okn};
    struct trace t;
    struct my_session *s;

    run_all(&tcp_nokey, e, ne, &t, &s);
    cr_assert_eq(t.n, 7);
    expect_login(&t, &l, greet_out);
    expect(&t, 4, SERVER, MY_SEND_CLIENT, sw2, swn); /* server 3 -> client 2 */
    expect(&t, 5, CLIENT, MY_SEND_SERVER, ar4, arn); /* client 3 -> server 4 */
    expect(&t, 6, SERVER, MY_SEND_CLIENT, ok4, okn); /* server 5 -> client 4 */
    cr_assert(t.step[6].phase_end);
    cr_assert_str_eq(s->plugin, "mysql_native_password");
    cr_assert_arr_eq(s->nonce, "ABCDEFGHIJKLMNOPQRST", 20, "the switch's data is the nonce");
    trace_free(&t);
    session_free(s);
}

Test(mysql, caching_sha2_fast_path)
{
    struct login l;
    make_login(&l, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    static const uint8_t fast[] = {0x01, 0x03};
    uint8_t f3[8], f2[8], ok4[16], ok3[16], greet_out[200];
    size_t fn = pkt(f3, 3, fast, 2);
    pkt(f2, 2, fast, 2);
    size_t okn = pkt(ok4, 4, ok_payload, sizeof ok_payload);
    pkt(ok3, 3, ok_payload, sizeof ok_payload);
    memcpy(greet_out, l.greet, l.greet_len);
    greet_out[4 + 21] = 0xdf;
    greet_out[4 + 22] = 0xf7;
    greet_out[4 + 27] = 0xdb;
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, f3, fn};
    e[ne++] = (struct ev){SERVER, ok4, okn};
    struct trace t;

    run_all(&tcp_nokey, e, ne, &t, NULL);
    cr_assert_eq(t.n, 6);
    expect_login(&t, &l, greet_out);
    expect(&t, 4, SERVER, MY_SEND_CLIENT, f2, fn);
    cr_assert(!t.step[4].phase_end);
    expect(&t, 5, SERVER, MY_SEND_CLIENT, ok3, okn);
    cr_assert(t.step[5].phase_end);
    trace_free(&t);
}

/* ---- errors ---- */

Test(mysql, build_err_exact_bytes)
{
    static const uint8_t with_state[] = {0x16, 0x00, 0x00, 0x02, 0xff, 0x15, 0x04, '#', '2',
                                         '8',  '0',  '0',  '0',  'A',  'c',  'c',  'e', 's',
                                         's',  ' ',  'd',  'e',  'n',  'i',  'e',  'd'};
    static const uint8_t pre41[] = {0x04, 0x00, 0x00, 0x00, 0xff, 0xd3, 0x07, 'x'};
    uint8_t b[600];

    cr_assert_eq(my_build_err(b, sizeof b, 2, 1045, "28000", "Access denied"), sizeof with_state);
    cr_assert_arr_eq(b, with_state, sizeof with_state);
    cr_assert_eq(my_build_err(b, sizeof b, 0, 2003, NULL, "x"), sizeof pre41);
    cr_assert_arr_eq(b, pre41, sizeof pre41);

    /* cut to the buffer, never inside a UTF-8 sequence: "ab\xc3\xa9" with room for 3 */
    size_t n = my_build_err(b, 4 + 3 + 3, 1, 1105, NULL, "ab\xc3\xa9");
    cr_assert_eq(n, 4 + 3 + 2);
    cr_assert_eq(b[0], 5);
    cr_assert_arr_eq(b + 7, "ab", 2);
    cr_assert_eq(my_build_err(b, 6, 1, 1105, NULL, "x"), 0);
    cr_assert_eq(my_build_err(b, 12, 1, 1105, "HY000", "x"), 0);

    /* at most MY_ERR_MSG_MAX bytes of message */
    char big[700];
    memset(big, 'm', sizeof big - 1);
    big[sizeof big - 1] = 0;
    cr_assert_eq(my_build_err(b, sizeof b, 1, 1105, "HY000", big), 4 + 9 + MY_ERR_MSG_MAX);
}

Test(mysql, errcode_mapping)
{
    struct my_errcode e = my_errcode_for(DBT_TLS_HOSTNAME_MISMATCH);
    cr_assert_eq(e.code, 1043);
    cr_assert_str_eq(e.sqlstate, "08S01");
    e = my_errcode_for(DBT_UPSTREAM_CONNECT_FAILED);
    cr_assert_eq(e.code, 1429);
    cr_assert_str_eq(e.sqlstate, "HY000");
    e = my_errcode_for(DBT_CLIENT_PROTOCOL_ERROR);
    cr_assert_eq(e.code, 1043);
    cr_assert_str_eq(e.sqlstate, "08S01");
    e = my_errcode_for(DBT_LIMIT_REACHED);
    cr_assert_eq(e.code, 1040);
    cr_assert_str_eq(e.sqlstate, "08004");
    e = my_errcode_for(DBT_INTERNAL_ERROR);
    cr_assert_eq(e.code, 1105);
    cr_assert_str_eq(e.sqlstate, "HY000");
}

Test(mysql, my_fail_before_greeting_and_after_response)
{
    uint8_t want[300];
    struct my_step st;
    struct my_session *s = new_session(&tcp_nokey);
    my_fail(s, DBT_UPSTREAM_CONNECT_FAILED, "Can't connect to MySQL server on 'db:3306'", &st);
    size_t wn = err_pkt(want, 0, 1429, NULL, "Can't connect to MySQL server on 'db:3306'");
    cr_assert_eq(st.action, MY_FAIL);
    cr_assert_eq(st.len, wn);
    cr_assert_arr_eq(st.data, want, wn);
    session_free(s);

    /* TLS fails after the client's response: seq 2 with SQLSTATE (B5) */
    struct login l;
    make_login(&l, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    struct ev e[3];
    login_events(e, &l);
    struct trace t;
    s = run(&tcp_nokey, e, 2, SIZE_MAX, SIZE_MAX, &t);
    cr_assert_eq(t.n, 3);
    my_fail(s, DBT_TLS_HOSTNAME_MISMATCH, "SSL connection error: hostname mismatch", &st);
    wn = err_pkt(want, 2, 1043, "08S01", "SSL connection error: hostname mismatch");
    cr_assert_eq(st.len, wn);
    cr_assert_arr_eq(st.data, want, wn);
    struct my_step after;
    cr_assert_eq(my_feed_client(s, want, 1, &after), 0);
    cr_assert_eq(after.action, MY_FAIL);
    cr_assert_eq(after.reason, DBT_INTERNAL_ERROR);
    trace_free(&t);
    session_free(s);
}

/* ---- the caching_sha2 / sha256 bridge (B3, B4) ---- */

struct rsa_fixture {
    EVP_PKEY *key;
    char pem[MY_PEM_MAX + 1];
    struct my_config cfg;
};

static void rsa_setup(struct rsa_fixture *f, bool unix_socket)
{
    f->key = my_rsa_generate(2048);
    cr_assert_not_null(f->key);
    cr_assert_gt(my_rsa_public_pem(f->key, f->pem, sizeof f->pem), 0);
    cr_assert_eq(strncmp(f->pem, "-----BEGIN PUBLIC KEY-----\n", 27), 0);
    f->cfg = (struct my_config){.unix_socket = unix_socket, .rsa_key = f->key, .rsa_pem = f->pem};
}

/* What libmysqlclient / PyMySQL do with the PEM they received: (password\0 XOR nonce), then
 * RSA-OAEP (SHA-1, MGF1-SHA-1) with the public key read by PEM_read_bio_PUBKEY. */
static size_t client_blob(const char *pem, const uint8_t *nonce, const char *pw, uint8_t *blob)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *pub = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    BIO_free(b);
    cr_assert_not_null(pub);
    uint8_t buf[256];
    size_t n = strlen(pw) + 1, out = 512;
    memcpy(buf, pw, n);
    for (size_t i = 0; i < n; i++)
        buf[i] ^= nonce[i % 20];
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
    cr_assert_not_null(ctx);
    cr_assert_eq(EVP_PKEY_encrypt_init(ctx), 1);
    cr_assert_eq(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING), 1);
    cr_assert_eq(EVP_PKEY_encrypt(ctx, blob, &out, buf, n), 1);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pub);
    return out;
}

static void mysql8_greet_out(uint8_t *out, const struct login *l)
{
    memcpy(out, l->greet, l->greet_len);
    out[4 + 21] = 0xdf;
    out[4 + 22] = 0xf7;
    out[4 + 27] = 0xdb;
}

static const uint8_t full_auth[] = {0x01, 0x04};

static size_t pem_packet(uint8_t *b, uint8_t seq, const char *pem)
{
    uint8_t p[MY_PEM_MAX + 1];
    p[0] = 0x01;
    memcpy(p + 1, pem, strlen(pem));
    return pkt(b, seq, p, 1 + strlen(pem));
}

/* Whether any buffer the session holds has these bytes: the struct's own, the packet buffer,
 * the one-step reply. */
static bool session_holds(const struct my_session *s, const void *needle, size_t n)
{
    return memmem(s->out, sizeof s->out, needle, n) != NULL ||
           (s->pkt && memmem(s->pkt, s->pkt_cap, needle, n) != NULL) ||
           (s->reply && memmem(s->reply, s->reply_cap, needle, n) != NULL);
}

Test(mysql_bridge, caching_sha2_full_auth_through_dbtrust_key)
{
    struct rsa_fixture f;
    rsa_setup(&f, false);
    struct login l;
    make_login(&l, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    uint8_t fa3[8], fa2[8], req3[8], blob[256], blob5[300], pem4[MY_PEM_MAX + 8], pw4[32];
    uint8_t ok5[16], ok6[16], greet_out[200];
    size_t fan = pkt(fa3, 3, full_auth, 2);
    pkt(fa2, 2, full_auth, 2);
    size_t reqn = pkt(req3, 3, "\x02", 1);
    size_t bn = client_blob(f.pem, mysql8_nonce, "password", blob);
    cr_assert_eq(bn, 256);
    size_t blobn = pkt(blob5, 5, blob, bn);
    size_t pemn = pem_packet(pem4, 4, f.pem);
    size_t pwn = pkt(pw4, 4, "password", 9); /* with its NUL */
    size_t okn = pkt(ok5, 5, ok_payload, sizeof ok_payload);
    pkt(ok6, 6, ok_payload, sizeof ok_payload);
    mysql8_greet_out(greet_out, &l);
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, fa3, fan};
    e[ne++] = (struct ev){CLIENT, req3, reqn};
    e[ne++] = (struct ev){CLIENT, blob5, blobn};
    e[ne++] = (struct ev){SERVER, ok5, okn};
    struct trace t;
    struct my_session *s;

    run_all(&f.cfg, e, ne, &t, &s);
    cr_assert_eq(t.n, 8);
    expect_login(&t, &l, greet_out);
    /* worked example: server leg 3 (01 04), 4 (password), 5 (OK); client 2, 4 (PEM), 6 */
    expect(&t, 4, SERVER, MY_SEND_CLIENT, fa2, fan);
    expect(&t, 5, CLIENT, MY_SEND_CLIENT, pem4, pemn); /* the 02 never reaches the server */
    expect(&t, 6, CLIENT, MY_SEND_SERVER, pw4, pwn);
    expect(&t, 7, SERVER, MY_SEND_CLIENT, ok6, okn);
    cr_assert(t.step[7].phase_end);
    cr_assert(!session_holds(s, "password", 8), "cleartext wiped after use");
    cr_assert_null(s->reply, "the decrypted password's buffer is gone after the next call");
    trace_free(&t);
    session_free(s);
    my_rsa_free(f.key);
}

static const char undecryptable[] =
    "Access denied for user 'app' (dbtrust: client sent no password blob dbtrust can decrypt; "
    "give the client dbtrust's public key (--get-server-public-key), not the server's)";

Test(mysql_bridge, garbage_blob_denied_never_forwarded)
{
    struct rsa_fixture f;
    rsa_setup(&f, false);
    struct login l;
    make_login(&l, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    uint8_t fa3[8], req3[8], junk[256], junk5[300], want[600];
    size_t fan = pkt(fa3, 3, full_auth, 2);
    size_t reqn = pkt(req3, 3, "\x02", 1);
    memset(junk, 0x42, sizeof junk);
    size_t jn = pkt(junk5, 5, junk, sizeof junk);
    size_t wn = err_pkt(want, 6, 1045, "28000", undecryptable);
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, fa3, fan};
    e[ne++] = (struct ev){CLIENT, req3, reqn};
    e[ne++] = (struct ev){CLIENT, junk5, jn};
    struct trace t;

    run_all(&f.cfg, e, ne, &t, NULL);
    cr_assert_eq(t.n, 7);
    cr_assert_eq(t.step[5].action, MY_SEND_CLIENT);
    expect(&t, 6, CLIENT, MY_FAIL, want, wn);
    cr_assert_eq(t.step[6].reason, DBT_CLIENT_PROTOCOL_ERROR);
    trace_free(&t);

    /* pinned key of the real server: the blob comes without a 02 and cannot be decrypted */
    struct rsa_fixture other;
    rsa_setup(&other, false);
    uint8_t blob[256], blob3[300];
    size_t bn = client_blob(other.pem, mysql8_nonce, "password", blob);
    size_t b3 = pkt(blob3, 3, blob, bn);
    wn = err_pkt(want, 4, 1045, "28000", undecryptable);
    ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, fa3, fan};
    e[ne++] = (struct ev){CLIENT, blob3, b3};
    run_all(&f.cfg, e, ne, &t, NULL);
    cr_assert_eq(t.n, 6);
    expect(&t, 5, CLIENT, MY_FAIL, want, wn);
    trace_free(&t);
    my_rsa_free(other.key);
    my_rsa_free(f.key);
}

Test(mysql_bridge, key_request_without_key_denied)
{
    struct login l;
    make_login(&l, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    uint8_t fa3[8], req3[8], want[600];
    size_t fan = pkt(fa3, 3, full_auth, 2);
    size_t reqn = pkt(req3, 3, "\x02", 1);
    size_t wn = err_pkt(want, 4, 1045, "28000",
                        "Access denied for user 'app' (dbtrust: client asked for an RSA public "
                        "key and none is configured; configure an RSA key for dbtrust or connect "
                        "over its Unix socket)");
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, fa3, fan};
    e[ne++] = (struct ev){CLIENT, req3, reqn};
    struct trace t;

    run_all(&tcp_nokey, e, ne, &t, NULL);
    cr_assert_eq(t.n, 6);
    expect(&t, 5, CLIENT, MY_FAIL, want, wn);
    trace_free(&t);
}

static void cleartext_after_full_auth(const struct my_config *cfg, struct trace *t)
{
    struct login l;
    make_login(&l, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    uint8_t fa3[8], pw3[16], ok5[16];
    size_t fan = pkt(fa3, 3, full_auth, 2);
    size_t pwn = pkt(pw3, 3, "s3cret", 7);
    size_t okn = pkt(ok5, 5, ok_payload, sizeof ok_payload);
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, fa3, fan};
    e[ne++] = (struct ev){CLIENT, pw3, pwn};
    e[ne++] = (struct ev){SERVER, ok5, okn};
    run_all(cfg, e, ne, t, NULL);
}

Test(mysql_bridge, unix_socket_cleartext_forwarded_tcp_denied)
{
    static const struct my_config unix_nokey = {.unix_socket = true};
    uint8_t pw4[16], ok4[16], want[600];
    size_t pwn = pkt(pw4, 4, "s3cret", 7);
    size_t okn = pkt(ok4, 4, ok_payload, sizeof ok_payload);
    struct trace t;

    cleartext_after_full_auth(&unix_nokey, &t);
    cr_assert_eq(t.n, 7);
    expect(&t, 5, CLIENT, MY_SEND_SERVER, pw4, pwn);
    expect(&t, 6, SERVER, MY_SEND_CLIENT, ok4, okn);
    trace_free(&t);

    size_t wn = err_pkt(want, 4, 1045, "28000", undecryptable);
    cleartext_after_full_auth(&tcp_nokey, &t);
    cr_assert_eq(t.n, 6, "nothing reaches the server");
    expect(&t, 5, CLIENT, MY_FAIL, want, wn);
    trace_free(&t);
}

Test(mysql_bridge, sha256_password_key_request_01)
{
    struct rsa_fixture f;
    rsa_setup(&f, false);
    struct login l;
    make_login(&l, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    static const char sw[] = "\xfesha256_password\0"
                             "0123456789abcdefghij";
    uint8_t sw3[64], sw2[64], req3[8], blob[256], blob5[300], pem4[MY_PEM_MAX + 8], pw4[32];
    uint8_t ok5[16], ok6[16], greet_out[200];
    size_t swn = pkt(sw3, 3, sw, sizeof sw);
    pkt(sw2, 2, sw, sizeof sw);
    size_t reqn = pkt(req3, 3, "\x01", 1);
    size_t bn = client_blob(f.pem, (const uint8_t *)"0123456789abcdefghij", "pa55", blob);
    size_t blobn = pkt(blob5, 5, blob, bn);
    size_t pemn = pem_packet(pem4, 4, f.pem);
    size_t pwn = pkt(pw4, 4, "pa55", 5);
    size_t okn = pkt(ok5, 5, ok_payload, sizeof ok_payload);
    pkt(ok6, 6, ok_payload, sizeof ok_payload);
    mysql8_greet_out(greet_out, &l);
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, sw3, swn};
    e[ne++] = (struct ev){CLIENT, req3, reqn};
    e[ne++] = (struct ev){CLIENT, blob5, blobn};
    e[ne++] = (struct ev){SERVER, ok5, okn};
    struct trace t;

    run_all(&f.cfg, e, ne, &t, NULL);
    cr_assert_eq(t.n, 8);
    expect_login(&t, &l, greet_out);
    expect(&t, 4, SERVER, MY_SEND_CLIENT, sw2, swn);
    expect(&t, 5, CLIENT, MY_SEND_CLIENT, pem4, pemn);
    expect(&t, 6, CLIENT, MY_SEND_SERVER, pw4, pwn);
    expect(&t, 7, SERVER, MY_SEND_CLIENT, ok6, okn);
    trace_free(&t);
    my_rsa_free(f.key);
}

Test(mysql_bridge, rsa_helpers)
{
    cr_assert_null(my_rsa_generate(1024), "keys under 2048 bits are refused");
    EVP_PKEY *key = my_rsa_generate(2048);
    cr_assert_eq(my_rsa_size(key), 256);
    char small[64];
    cr_assert_eq(my_rsa_public_pem(key, small, sizeof small), 0, "does not fit");
    cr_assert_null(my_rsa_from_pem("junk", 4));
    struct my_config bad = {.rsa_key = key}; /* rsa_pem missing */
    struct my_session *s = malloc(sizeof *s);
    cr_assert(!my_session_init(s, &bad), "a key without its PEM is a config error");
    session_free(s);
    my_rsa_free(key);
}

/* ---- relay and COM_CHANGE_USER (B6) ---- */

/* Login through the MariaDB greeting with mysql_native_password and an OK at seq 3. */
struct relay_login {
    struct login l;
    uint8_t ok3[16];
    size_t okn;
};

static size_t relay_login_events(struct ev *e, struct relay_login *r)
{
    make_login(&r->l, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    r->okn = pkt(r->ok3, 3, ok_payload, sizeof ok_payload);
    size_t ne = login_events(e, &r->l);
    e[ne++] = (struct ev){SERVER, r->ok3, r->okn};
    return ne;
}

static size_t change_user(uint8_t *b, const char *user, const char *plugin)
{
    uint8_t p[200];
    size_t n = 0;
    p[n++] = 0x11;
    memcpy(p + n, user, strlen(user) + 1);
    n += strlen(user) + 1;
    p[n++] = 20;
    memset(p + n, 0x77, 20);
    n += 20;
    memcpy(p + n, "shop", 5);
    n += 5;
    p[n++] = 0x2d;
    p[n++] = 0x00;
    memcpy(p + n, plugin, strlen(plugin) + 1);
    n += strlen(plugin) + 1;
    return pkt(b, 0, p, n);
}

Test(mysql_relay, change_user_to_other_plugin_with_full_auth)
{
    struct rsa_fixture f;
    rsa_setup(&f, false);
    struct relay_login r;
    static const uint8_t nonce2[20] = "NEWNONCE-0123456789!";
    static const uint8_t result[] = {0x01, 0x00, 0x00, 0x01, 0x01, 0x05, 0x00, 0x00, 0x00,
                                     0x11, 0x22, 0x33, 0x44, 0x11, 0x00, 0x00, 0x00, 0x11};
    uint8_t q[32], cu[128], sw[64], sw1[64], scr2[64], scr[32], fa3[8], req4[8],
        pem5[MY_PEM_MAX + 8];
    uint8_t blob[256], blob6[300], pw4[32], ok5[16], ok7[16], sw_payload[64];
    size_t qn = pkt(q, 0, "\x03select 1", 9);
    size_t cun = change_user(cu, "bob", "mysql_native_password");
    sw_payload[0] = 0xfe;
    memcpy(sw_payload + 1, "caching_sha2_password", 22);
    memcpy(sw_payload + 23, nonce2, 20);
    sw_payload[43] = 0;
    size_t swn = pkt(sw, 1, sw_payload, 44);
    pkt(sw1, 1, sw_payload, 44);
    memset(scr, 0x3c, sizeof scr);
    size_t scrn = pkt(scr2, 2, scr, 32);
    size_t fan = pkt(fa3, 3, full_auth, 2);
    size_t reqn = pkt(req4, 4, "\x02", 1);
    size_t pemn = pem_packet(pem5, 5, f.pem);
    size_t bn = client_blob(f.pem, nonce2, "hunter2", blob);
    size_t blobn = pkt(blob6, 6, blob, bn);
    size_t pwn = pkt(pw4, 4, "hunter2", 8);
    size_t okn = pkt(ok5, 5, ok_payload, sizeof ok_payload);
    pkt(ok7, 7, ok_payload, sizeof ok_payload);
    struct ev e[MAX_EVENTS];
    size_t ne = relay_login_events(e, &r);
    e[ne++] = (struct ev){CLIENT, q, qn};
    e[ne++] = (struct ev){SERVER, result, sizeof result};
    e[ne++] = (struct ev){CLIENT, cu, cun};
    e[ne++] = (struct ev){SERVER, sw, swn};
    e[ne++] = (struct ev){CLIENT, scr2, scrn};
    e[ne++] = (struct ev){SERVER, fa3, fan};
    e[ne++] = (struct ev){CLIENT, req4, reqn};
    e[ne++] = (struct ev){CLIENT, blob6, blobn};
    e[ne++] = (struct ev){SERVER, ok5, okn};
    e[ne++] = (struct ev){CLIENT, q, qn};
    e[ne++] = (struct ev){SERVER, result, sizeof result};
    struct trace t;
    struct my_session *s;

    run_all(&f.cfg, e, ne, &t, &s);
    cr_assert_eq(t.n, 16);
    cr_assert(t.step[4].phase_end);
    expect(&t, 5, CLIENT, MY_RELAY, q, qn);
    expect(&t, 6, SERVER, MY_RELAY, result, sizeof result); /* not framed, not re-sequenced */
    expect(&t, 7, CLIENT, MY_RELAY, cu, cun);               /* verbatim, seq 0 on both legs */
    expect(&t, 8, SERVER, MY_SEND_CLIENT, sw1, swn);
    expect(&t, 9, CLIENT, MY_SEND_SERVER, scr2, scrn);
    expect(&t, 10, SERVER, MY_SEND_CLIENT, fa3, fan);
    expect(&t, 11, CLIENT, MY_SEND_CLIENT, pem5, pemn);
    expect(&t, 12, CLIENT, MY_SEND_SERVER, pw4, pwn);
    expect(&t, 13, SERVER, MY_SEND_CLIENT, ok7, okn);
    cr_assert(t.step[13].phase_end);
    expect(&t, 14, CLIENT, MY_RELAY, q, qn);
    expect(&t, 15, SERVER, MY_RELAY, result, sizeof result);
    cr_assert_str_eq(s->user, "bob");
    cr_assert(my_relaying(s));
    trace_free(&t);
    session_free(s);
    my_rsa_free(f.key);
}

/* LOAD DATA LOCAL: the file streams at seq 2, 3, ... 255, 0, 1... - the packet at seq 0 after
 * 255 starts with 0x11 and must not be taken for a COM_CHANGE_USER. */
Test(mysql_relay, load_data_wraparound_not_change_user)
{
    struct relay_login r;
    static const char query[] = "\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t";
    uint8_t q[64], req[16], file[4096], ok[16], cu[128], cuok[16], cuok1[16];
    size_t qn = pkt(q, 0, query, sizeof query - 1);
    size_t reqn = pkt(req, 1,
                      "\xfb"
                      "f",
                      2);
    size_t fn = 0;
    for (unsigned seq = 2; seq < 256 + 2; seq++)
        fn += pkt(file + fn, (uint8_t)seq,
                  seq == 256 ? "\x11"
                               "ab\n"
                             : "row\n",
                  4);
    fn += pkt(file + fn, 2, "", 0); /* end of file */
    size_t okn = pkt(ok, 3, ok_payload, sizeof ok_payload);
    size_t cun = change_user(cu, "carol", "mysql_native_password");
    size_t cuokn = pkt(cuok, 1, ok_payload, sizeof ok_payload);
    pkt(cuok1, 1, ok_payload, sizeof ok_payload);
    struct ev e[MAX_EVENTS];
    size_t ne = relay_login_events(e, &r);
    e[ne++] = (struct ev){CLIENT, q, qn};
    e[ne++] = (struct ev){SERVER, req, reqn};
    e[ne++] = (struct ev){CLIENT, file, fn};
    e[ne++] = (struct ev){SERVER, ok, okn};
    e[ne++] = (struct ev){CLIENT, cu, cun};
    e[ne++] = (struct ev){SERVER, cuok, cuokn};
    struct trace t;
    struct my_session *s;

    run_all(&tcp_nokey, e, ne, &t, &s);
    cr_assert_eq(t.n, 11);
    expect(&t, 7, CLIENT, MY_RELAY, file, fn);
    expect(&t, 8, SERVER, MY_RELAY, ok, okn); /* still relaying: no change-user was seen */
    expect(&t, 9, CLIENT, MY_RELAY, cu, cun);
    expect(&t, 10, SERVER, MY_SEND_CLIENT, cuok1, cuokn);
    cr_assert(t.step[10].phase_end);
    cr_assert_str_eq(s->user, "carol");
    trace_free(&t);
    session_free(s);
}

/* A 16 MiB COM_QUERY: a 0xFFFFFF chunk, then a continuation at seq 1 starting with 0x11, its
 * payload full of fake change-user headers. Only the real COM_CHANGE_USER after it counts. */
Test(mysql_relay, multi_packet_16mib_command_not_change_user, .timeout = 120)
{
    struct relay_login r;
    size_t big = 4 + MY_MAX_PAYLOAD_CHUNK + 4 + 10 + 128;
    uint8_t *in = malloc(big);
    cr_assert_not_null(in);
    static const uint8_t fake[] = {0x05, 0x00, 0x00, 0x00, 0x11};
    in[0] = in[1] = in[2] = 0xFF;
    in[3] = 0;
    in[4] = 0x03;
    for (size_t i = 5; i < 4 + MY_MAX_PAYLOAD_CHUNK; i++)
        in[i] = fake[(i - 5) % sizeof fake];
    size_t n = 4 + MY_MAX_PAYLOAD_CHUNK;
    n += pkt(in + n, 1,
             "\x11"
             "continued",
             10);
    size_t before_cu = n;
    n += change_user(in + n, "dave", "mysql_native_password");
    uint8_t ok1[16];
    size_t okn = pkt(ok1, 1, ok_payload, sizeof ok_payload);
    struct ev e[MAX_EVENTS];
    size_t ne = relay_login_events(e, &r);
    e[ne++] = (struct ev){CLIENT, in, n};
    e[ne++] = (struct ev){SERVER, ok1, okn};
    struct trace whole, t;
    struct my_session *s = run(&tcp_nokey, e, ne - 1, SIZE_MAX, SIZE_MAX, &whole);
    /* Nothing of the 16 MiB command was buffered: the session holds only the change-user's
     * payload, read into a buffer of its size. */
    cr_assert_eq(my_session_allocated(s), n - before_cu - MY_HEADER);
    cr_assert(feed_event(s, &e[ne - 1], SIZE_MAX, SIZE_MAX, &whole, &whole.consumed[ne - 1]));

    cr_assert_eq(whole.n, 7);
    expect(&whole, 5, CLIENT, MY_RELAY, in, n);
    expect(&whole, 6, SERVER, MY_SEND_CLIENT, ok1, okn);
    cr_assert(whole.step[6].phase_end);
    cr_assert_str_eq(s->user, "dave");
    session_free(s);
    /* sampled cuts: inside every header and around every packet boundary */
    static const size_t around[] = {1, 2, 3, 4, 5, 6};
    for (size_t i = 0; i < DBT_ARRAY_LEN(around); i++) {
        size_t bases[] = {0, 4 + MY_MAX_PAYLOAD_CHUNK - 3, before_cu - 3};
        for (size_t b = 0; b < DBT_ARRAY_LEN(bases); b++) {
            session_free(run(&tcp_nokey, e, ne, bases[b] + around[i], SIZE_MAX, &t));
            assert_same(&whole, &t, "split at", bases[b] + around[i]);
            trace_free(&t);
        }
    }
    session_free(run(&tcp_nokey, e, ne, 65537, 65537, &t));
    assert_same(&whole, &t, "chunks of", 65537);
    trace_free(&t);
    session_free(run(&tcp_nokey, e, ne, 1, 1, &t));
    assert_same(&whole, &t, "byte by byte", 1);
    trace_free(&t);
    trace_free(&whole);
    free(in);
}

/* ---- dbtrust as the TLS server on the client leg (C2) ---- */

/* The start of a ClientHello record: what a client sends right behind its SSLRequest. */
static const uint8_t client_hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01,
                                       0x00, 0x01, 0xfc, 0x03, 0x03};

/* A login whose client leg runs TLS: the client's SSLRequest (seq 1, the same 32 bytes as the
 * SSLRequest dbtrust builds, MariaDB extended capabilities included) with its ClientHello in
 * the same read, then inside TLS the response at seq 2 with CLIENT_SSL set, as real clients
 * write it. The server leg sees that response unchanged, at its own seq 2. */
struct tls_login {
    struct login l;
    uint8_t hello[sizeof ssl_request + sizeof client_hello];
};

static void make_tls_login(struct tls_login *t, const uint8_t *greeting, size_t glen,
                           const char *plugin, size_t auth_len)
{
    make_login(&t->l, greeting, glen, plugin, auth_len);
    t->l.resp[3] = 2;
    t->l.resp[5] |= 0x08;
    memcpy(t->l.resp_out, t->l.resp, t->l.resp_len);
    memcpy(t->hello, ssl_request, sizeof ssl_request);
    memcpy(t->hello + sizeof ssl_request, client_hello, sizeof client_hello);
}

static size_t tls_login_events(struct ev *e, const struct tls_login *t)
{
    e[0] = (struct ev){SERVER, t->l.greet, t->l.greet_len};
    e[1] = (struct ev){CLIENT, t->hello, sizeof t->hello};
    e[2] = (struct ev){CLIENT_TLS_READY, NULL, 0};
    e[3] = (struct ev){CLIENT, t->l.resp, t->l.resp_len};
    e[4] = (struct ev){TLS_READY, NULL, 0};
    return 5;
}

/* The greeting of a client_tls listener: CLIENT_SSL kept, compression still withheld. */
static void greet_out_tls(uint8_t *out, const struct login *l, bool mysql8)
{
    memcpy(out, l->greet, l->greet_len);
    if (mysql8) {
        out[4 + 21] = 0xdf; /* low 0xffff -> 0xffdf */
        out[4 + 22] = 0xff;
        out[4 + 27] = 0xdb; /* CLIENT_ZSTD_COMPRESSION_ALGORITHM */
    } else {
        out[4 + MARIADB_CAPS_LO] = 0xde; /* 0xfffe & ~0x0020 = 0xffde */
        out[4 + MARIADB_CAPS_LO + 1] = 0xff;
    }
}

/* Steps 0..4: greeting with CLIENT_SSL, client TLS, upstream SSLRequest (server leg seq 1),
 * upstream TLS, the response at seq 2 on the server leg. */
static void expect_tls_login(const struct trace *t, const struct tls_login *tl,
                             const uint8_t *greet_out)
{
    expect(t, 0, SERVER, MY_SEND_CLIENT, greet_out, tl->l.greet_len);
    expect(t, 1, CLIENT, MY_START_CLIENT_TLS, NULL, 0);
    cr_assert_eq(t->consumed[1], sizeof ssl_request, "the ClientHello is left unconsumed");
    expect(t, 2, CLIENT, MY_SEND_SERVER_PLAIN, ssl_request, sizeof ssl_request);
    expect(t, 3, CLIENT, MY_START_TLS, NULL, 0);
    expect(t, 4, TLS_READY, MY_SEND_SERVER, tl->l.resp_out, tl->l.resp_len);
}

static const struct my_config tls_allow = {.client_tls = MY_TLS_ALLOW};
static const struct my_config tls_require = {.client_tls = MY_TLS_REQUIRE};

Test(mysql_client_tls, greeting_offers_ssl_by_mode)
{
    static const enum my_client_tls modes[] = {MY_TLS_OFF, MY_TLS_ALLOW, MY_TLS_REQUIRE};
    struct login maria, my8;
    make_login(&maria, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    make_login(&my8, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);

    for (size_t i = 0; i < DBT_ARRAY_LEN(modes); i++) {
        struct my_config cfg = {.client_tls = modes[i]};
        const struct login *ls[2] = {&maria, &my8};
        for (int m = 0; m < 2; m++) {
            uint8_t want[200];
            greet_out_tls(want, ls[m], m == 1);
            if (modes[i] == MY_TLS_OFF) /* today: CLIENT_SSL cleared too */
                want[4 + (m == 1 ? 22 : MARIADB_CAPS_LO + 1)] &= (uint8_t)~0x08;
            struct ev e = {SERVER, ls[m]->greet, ls[m]->greet_len};
            struct trace t;
            run_all(&cfg, &e, 1, &t, NULL);
            cr_assert_eq(t.n, 1);
            /* byte for byte: version, connection id, scramble, plugin and MariaDB's extended
             * capabilities (0x1d in the filler) are untouched */
            expect(&t, 0, SERVER, MY_SEND_CLIENT, want, ls[m]->greet_len);
            cr_assert_eq(!!(t.step[0].data[4 + (m == 1 ? 22 : MARIADB_CAPS_LO + 1)] & 0x08),
                         modes[i] != MY_TLS_OFF, "mode %zu, greeting %d", i, m);
            trace_free(&t);
        }
    }
}

Test(mysql_client_tls, ssl_request_starts_client_tls_leaving_client_hello)
{
    struct tls_login tl;
    make_tls_login(&tl, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    uint8_t greet_out[200];
    greet_out_tls(greet_out, &tl.l, false);
    struct ev e[2] = {{SERVER, tl.l.greet, tl.l.greet_len}, {CLIENT, tl.hello, sizeof tl.hello}};
    struct trace t;
    struct my_session *s;

    run_all(&tls_require, e, 2, &t, &s);
    cr_assert_eq(t.n, 2, "nothing goes upstream before the client's response");
    expect(&t, 0, SERVER, MY_SEND_CLIENT, greet_out, tl.l.greet_len);
    expect(&t, 1, CLIENT, MY_START_CLIENT_TLS, NULL, 0);
    cr_assert_eq(t.consumed[1], sizeof ssl_request);
    cr_assert_eq(s->state, MY_S_CLIENT_TLS);
    cr_assert_eq(s->c_seq, 1);
    cr_assert_eq(s->s_seq, 0);
    trace_free(&t);
    session_free(s);
}

Test(mysql_client_tls, native_login_over_tls_client_leg)
{
    struct tls_login tl;
    make_tls_login(&tl, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    uint8_t greet_out[200], ok3[16], q[32];
    greet_out_tls(greet_out, &tl.l, false);
    size_t okn = pkt(ok3, 3, ok_payload, sizeof ok_payload);
    size_t qn = pkt(q, 0, "\x03select 1", 9);
    static const uint8_t result[] = {0x01, 0x00, 0x00, 0x01, 0x01};
    struct ev e[MAX_EVENTS];
    size_t ne = tls_login_events(e, &tl);
    e[ne++] = (struct ev){SERVER, ok3, okn};
    e[ne++] = (struct ev){CLIENT, q, qn};
    e[ne++] = (struct ev){SERVER, result, sizeof result};
    struct trace t;
    struct my_session *s;

    run_all(&tls_allow, e, ne, &t, &s);
    cr_assert_eq(t.n, 8);
    expect_tls_login(&t, &tl, greet_out);
    /* server leg 0 greeting, 1 SSLRequest, 2 response, 3 OK; client leg 0 greeting,
     * 1 SSLRequest, 2 response, 3 OK: the shift is gone, the counters do it */
    expect(&t, 5, SERVER, MY_SEND_CLIENT, ok3, okn);
    cr_assert(t.step[5].phase_end);
    expect(&t, 6, CLIENT, MY_RELAY, q, qn);
    expect(&t, 7, SERVER, MY_RELAY, result, sizeof result);
    cr_assert(my_relaying(s));
    cr_assert(s->client_tls_up);
    cr_assert_str_eq(s->user, "app");
    cr_assert_str_eq(s->database, "shop");
    cr_assert_str_eq(s->program_name, "mariadb");
    cr_assert_eq(s->client_caps, 0x3fae8cu);
    trace_free(&t);
    session_free(s);
}

Test(mysql_client_tls, caching_sha2_fast_path_over_tls_client_leg)
{
    struct tls_login tl;
    make_tls_login(&tl, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    static const uint8_t fast[] = {0x01, 0x03};
    uint8_t greet_out[200], f3[8], ok4[16];
    greet_out_tls(greet_out, &tl.l, true);
    size_t fn = pkt(f3, 3, fast, 2);
    size_t okn = pkt(ok4, 4, ok_payload, sizeof ok_payload);
    struct ev e[MAX_EVENTS];
    size_t ne = tls_login_events(e, &tl);
    e[ne++] = (struct ev){SERVER, f3, fn};
    e[ne++] = (struct ev){SERVER, ok4, okn};
    struct trace t;

    run_all(&tls_require, e, ne, &t, NULL);
    cr_assert_eq(t.n, 7);
    expect_tls_login(&t, &tl, greet_out);
    expect(&t, 5, SERVER, MY_SEND_CLIENT, f3, fn); /* server 3 -> client 3 */
    cr_assert(!t.step[5].phase_end);
    expect(&t, 6, SERVER, MY_SEND_CLIENT, ok4, okn); /* server 4 -> client 4 */
    cr_assert(t.step[6].phase_end);
    trace_free(&t);
}

/* caching_sha2 full authentication over a TLS client leg, with an RSA key configured all the
 * same: the client sends password\0 at seq 4 and it goes upstream at seq 4, untouched. */
static void tls_full_auth(const struct my_config *cfg, const uint8_t *answer, size_t alen,
                          struct trace *t, struct my_session **s)
{
    struct tls_login tl;
    make_tls_login(&tl, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    static uint8_t fa3[8], ans4[600], ok5[16];
    size_t fan = pkt(fa3, 3, full_auth, 2);
    size_t ansn = pkt(ans4, 4, answer, alen);
    size_t okn = pkt(ok5, 5, ok_payload, sizeof ok_payload);
    struct ev e[MAX_EVENTS];
    size_t ne = tls_login_events(e, &tl);
    e[ne++] = (struct ev){SERVER, fa3, fan};
    e[ne++] = (struct ev){CLIENT, ans4, ansn};
    e[ne++] = (struct ev){SERVER, ok5, okn};
    run_all(cfg, e, ne, t, s);
    uint8_t greet_out[200];
    greet_out_tls(greet_out, &tl.l, true);
    expect_tls_login(t, &tl, greet_out);
    expect(t, 5, SERVER, MY_SEND_CLIENT, fa3, fan); /* 01 04: server 3 -> client 3 */
}

Test(mysql_client_tls, caching_sha2_full_auth_cleartext_forwarded)
{
    struct rsa_fixture f;
    rsa_setup(&f, false);
    f.cfg.client_tls = MY_TLS_REQUIRE;
    uint8_t pw4[32], ok5[16];
    size_t pwn = pkt(pw4, 4, "s3cret", 7);
    size_t okn = pkt(ok5, 5, ok_payload, sizeof ok_payload);
    struct trace t;
    struct my_session *s;

    tls_full_auth(&f.cfg, (const uint8_t *)"s3cret", 7, &t, &s);
    cr_assert_eq(t.n, 8);
    expect(&t, 6, CLIENT, MY_SEND_SERVER, pw4, pwn); /* client 4 -> server 4 */
    expect(&t, 7, SERVER, MY_SEND_CLIENT, ok5, okn); /* server 5 -> client 5 */
    cr_assert(t.step[7].phase_end);
    cr_assert(!session_holds(s, "s3cret", 6), "cleartext wiped after use");
    trace_free(&t);
    session_free(s);

    /* A 255-character password: password\0 is as long as the RSA modulus, and still not a
     * blob - it goes upstream as the client sent it. */
    uint8_t longpw[256], longpw4[300];
    memset(longpw, 'p', 255);
    longpw[255] = 0x00;
    cr_assert_eq(my_rsa_size(f.key), sizeof longpw);
    size_t ln = pkt(longpw4, 4, longpw, sizeof longpw);
    tls_full_auth(&f.cfg, longpw, sizeof longpw, &t, NULL);
    cr_assert_eq(t.n, 8);
    expect(&t, 6, CLIENT, MY_SEND_SERVER, longpw4, ln);
    expect(&t, 7, SERVER, MY_SEND_CLIENT, ok5, okn);
    trace_free(&t);

    /* the empty password: a single 00 */
    uint8_t empty4[8];
    size_t en = pkt(empty4, 4, "", 1);
    tls_full_auth(&f.cfg, (const uint8_t *)"", 1, &t, NULL);
    cr_assert_eq(t.n, 8);
    expect(&t, 6, CLIENT, MY_SEND_SERVER, empty4, en);
    trace_free(&t);
    my_rsa_free(f.key);
}

Test(mysql_client_tls, key_request_or_blob_from_tls_client_denied)
{
    struct rsa_fixture f;
    rsa_setup(&f, false);
    f.cfg.client_tls = MY_TLS_ALLOW;
    static const char denied[] =
        "Access denied for user 'app' (dbtrust: client on a TLS connection sent no cleartext "
        "password; over TLS the client must send its password in clear (secure transport))";
    uint8_t want[600];
    size_t wn = err_pkt(want, 5, 1045, "28000", denied);
    struct trace t;

    /* 02 would get the PEM on a plaintext leg; over TLS there is no key to ask for */
    tls_full_auth(&f.cfg, (const uint8_t *)"\x02", 1, &t, NULL);
    cr_assert_eq(t.n, 7, "nothing reaches the server");
    expect(&t, 6, CLIENT, MY_FAIL, want, wn);
    cr_assert_eq(t.step[6].reason, DBT_CLIENT_PROTOCOL_ERROR);
    trace_free(&t);

    /* A blob dbtrust could decrypt is not decrypted: a TLS client never sends one. OAEP is
     * randomized; take one that does not end in 00 (which would pass for password\0). */
    uint8_t blob[256];
    size_t bn;
    do
        bn = client_blob(f.pem, mysql8_nonce, "password", blob);
    while (blob[bn - 1] == 0x00);
    tls_full_auth(&f.cfg, blob, bn, &t, NULL);
    cr_assert_eq(t.n, 7);
    expect(&t, 6, CLIENT, MY_FAIL, want, wn);
    trace_free(&t);
    my_rsa_free(f.key);
}

Test(mysql_client_tls, sha256_password_cleartext_over_tls_client_leg)
{
    struct rsa_fixture f;
    rsa_setup(&f, false);
    f.cfg.client_tls = MY_TLS_REQUIRE;
    struct tls_login tl;
    make_tls_login(&tl, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    static const char sw[] = "\xfesha256_password\0"
                             "0123456789abcdefghij";
    uint8_t sw3[64], pw4[16], ok5[16], greet_out[200];
    size_t swn = pkt(sw3, 3, sw, sizeof sw);
    size_t pwn = pkt(pw4, 4, "pa55", 5);
    size_t okn = pkt(ok5, 5, ok_payload, sizeof ok_payload);
    greet_out_tls(greet_out, &tl.l, true);
    struct ev e[MAX_EVENTS];
    size_t ne = tls_login_events(e, &tl);
    e[ne++] = (struct ev){SERVER, sw3, swn};
    e[ne++] = (struct ev){CLIENT, pw4, pwn};
    e[ne++] = (struct ev){SERVER, ok5, okn};
    struct trace t;

    run_all(&f.cfg, e, ne, &t, NULL);
    cr_assert_eq(t.n, 8);
    expect_tls_login(&t, &tl, greet_out);
    expect(&t, 5, SERVER, MY_SEND_CLIENT, sw3, swn); /* server 3 -> client 3 */
    expect(&t, 6, CLIENT, MY_SEND_SERVER, pw4, pwn); /* client 4 -> server 4, no key asked */
    expect(&t, 7, SERVER, MY_SEND_CLIENT, ok5, okn);
    cr_assert(t.step[7].phase_end);
    trace_free(&t);
    my_rsa_free(f.key);
}

static const char tls_required_msg[] =
    "dbtrust: client refused (client_tls_required): TLS is required on this listener "
    "(client_tls = require); connect with --ssl / ssl-mode=REQUIRED or stronger"
    " [listener shop, upstream db:3306]";

Test(mysql_client_tls, require_refuses_plaintext_response)
{
    struct my_config cfg = {.client_tls = MY_TLS_REQUIRE,
                            .context = " [listener shop, upstream db:3306]"};
    struct login l;
    make_login(&l, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    uint8_t greet_out[200], want[600];
    greet_out_tls(greet_out, &l, false);
    size_t wn = err_pkt(want, 2, 3159, "HY000", tls_required_msg);
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    struct trace t;
    struct my_session *s;

    run_all(&cfg, e, ne, &t, &s);
    cr_assert_eq(t.n, 2, "no SSLRequest, nothing at all upstream");
    expect(&t, 0, SERVER, MY_SEND_CLIENT, greet_out, l.greet_len);
    expect(&t, 1, CLIENT, MY_FAIL, want, wn);
    cr_assert_eq(t.step[1].reason, DBT_CLIENT_TLS_REQUIRED);
    cr_assert_str_eq(dbt_reason_name(t.step[1].reason), "client_tls_required");
    /* who it was, for the log; the credentials themselves are gone */
    cr_assert_str_eq(s->user, "app");
    cr_assert_str_eq(s->database, "shop");
    cr_assert_str_eq(s->program_name, "mariadb");
    static const uint8_t auth[] = {0x90, 0x91, 0x92, 0x93};
    cr_assert(!session_holds(s, auth, sizeof auth), "response wiped");
    cr_assert(!session_holds(s, "app", 4));
    trace_free(&t);
    session_free(s);

    /* A full response claiming CLIENT_SSL is no less plaintext. */
    l.resp[5] |= 0x08;
    run_all(&cfg, e, ne, &t, NULL);
    cr_assert_eq(t.n, 2);
    expect(&t, 1, CLIENT, MY_FAIL, want, wn);
    trace_free(&t);
}

Test(mysql_client_tls, allow_plaintext_response_as_today)
{
    struct login l;
    make_login(&l, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    uint8_t greet_out[200], ok3[16], ok2[16];
    greet_out_tls(greet_out, &l, false);
    size_t okn = pkt(ok3, 3, ok_payload, sizeof ok_payload);
    pkt(ok2, 2, ok_payload, sizeof ok_payload);
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    e[ne++] = (struct ev){SERVER, ok3, okn};
    struct trace t;
    struct my_session *s;

    run_all(&tls_allow, e, ne, &t, &s);
    cr_assert_eq(t.n, 5);
    expect_login(&t, &l, greet_out);
    expect(&t, 4, SERVER, MY_SEND_CLIENT, ok2, okn); /* server 3 -> client 2, as today */
    cr_assert(t.step[4].phase_end);
    cr_assert(!s->client_tls_up);
    trace_free(&t);
    session_free(s);

    /* and a plaintext client's full auth is still judged by the bridge */
    uint8_t want[600];
    size_t wn = err_pkt(want, 4, 1045, "28000", undecryptable);
    cleartext_after_full_auth(&tls_allow, &t);
    cr_assert_eq(t.n, 6, "nothing reaches the server");
    expect(&t, 5, CLIENT, MY_FAIL, want, wn);
    trace_free(&t);
}

Test(mysql_client_tls, response_out_of_order_after_tls)
{
    struct tls_login tl;
    make_tls_login(&tl, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    static const uint8_t wrong[] = {1, 3, 0}; /* as if no SSLRequest had come; one too far */
    for (size_t i = 0; i < DBT_ARRAY_LEN(wrong); i++) {
        tl.l.resp[3] = wrong[i];
        struct ev e[MAX_EVENTS];
        size_t ne = tls_login_events(e, &tl);
        struct trace t;
        run_all(&tls_allow, e, ne - 1, &t, NULL);
        cr_assert_eq(t.n, 3, "seq %u", wrong[i]);
        cr_assert_eq(t.step[2].action, MY_FAIL);
        cr_assert_eq(t.step[2].reason, DBT_CLIENT_PROTOCOL_ERROR);
        cr_assert_str_eq(t.step[2].detail, "client packets out of order");
        cr_assert_eq(t.step[2].data[3], 2, "the ERR goes at the client leg's next seq");
        trace_free(&t);
    }
}

Test(mysql_client_tls, upstream_tls_failure_err_at_client_seq_3)
{
    struct tls_login tl;
    make_tls_login(&tl, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    struct ev e[MAX_EVENTS];
    size_t ne = tls_login_events(e, &tl);
    struct trace t;
    struct my_session *s = run(&tls_require, e, ne - 1, SIZE_MAX, SIZE_MAX, &t);
    cr_assert_eq(t.n, 4);
    cr_assert_eq(t.step[3].action, MY_START_TLS);
    struct my_step st;
    my_fail(s, DBT_TLS_HOSTNAME_MISMATCH, "SSL connection error: hostname mismatch", &st);
    uint8_t want[200];
    size_t wn = err_pkt(want, 3, 1043, "08S01", "SSL connection error: hostname mismatch");
    cr_assert_eq(st.action, MY_FAIL);
    cr_assert_eq(st.len, wn);
    cr_assert_arr_eq(st.data, want, wn);
    trace_free(&t);
    session_free(s);
}

Test(mysql_client_tls, failures_during_the_client_handshake_carry_no_packet)
{
    struct tls_login tl;
    make_tls_login(&tl, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    struct ev e[MAX_EVENTS];
    tls_login_events(e, &tl);
    struct trace t;
    struct my_step st;

    /* ciphertext fed to the machine instead of the TLS engine */
    struct my_session *s = run(&tls_allow, e, 2, SIZE_MAX, SIZE_MAX, &t);
    cr_assert_eq(my_feed_client(s, client_hello, sizeof client_hello, &st), 0);
    cr_assert_eq(st.action, MY_FAIL);
    cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
    cr_assert_eq(st.len, 0);
    cr_assert_null(st.data);
    cr_assert_eq(my_feed_client(s, NULL, 0, &st), 0);
    cr_assert_eq(st.action, MY_FAIL, "ended");
    trace_free(&t);
    session_free(s);

    /* nothing to read for now: no failure */
    s = run(&tls_allow, e, 2, SIZE_MAX, SIZE_MAX, &t);
    cr_assert_eq(my_feed_client(s, NULL, 0, &st), 0);
    cr_assert_eq(st.action, MY_NEED_MORE);
    cr_assert_eq(my_feed_server(s, NULL, 0, &st), 0);
    cr_assert_eq(st.action, MY_NEED_MORE);
    /* the upstream speaking out of turn */
    static const uint8_t junk[] = {0x01, 0x00, 0x00, 0x01, 0x00};
    cr_assert_eq(my_feed_server(s, junk, sizeof junk, &st), 0);
    cr_assert_eq(st.action, MY_FAIL);
    cr_assert_eq(st.reason, DBT_UPSTREAM_PROTOCOL_ERROR);
    cr_assert_eq(st.len, 0);
    trace_free(&t);
    session_free(s);

    /* the handshake failed or timed out */
    s = run(&tls_allow, e, 2, SIZE_MAX, SIZE_MAX, &t);
    my_fail(s, DBT_CLIENT_TLS_HANDSHAKE_FAILED, "client TLS handshake failed", &st);
    cr_assert_eq(st.action, MY_FAIL);
    cr_assert_eq(st.reason, DBT_CLIENT_TLS_HANDSHAKE_FAILED);
    cr_assert_eq(st.len, 0);
    trace_free(&t);
    session_free(s);

    /* my_client_tls_ready out of place ends the session */
    s = run(&tls_allow, e, 1, SIZE_MAX, SIZE_MAX, &t);
    my_client_tls_ready(s);
    cr_assert_eq(my_feed_client(s, tl.l.resp, tl.l.resp_len, &st), 0);
    cr_assert_eq(st.action, MY_FAIL);
    cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
    trace_free(&t);
    session_free(s);
}

Test(mysql_client_tls, ssl_request_edge_cases)
{
    struct tls_login tl;
    make_tls_login(&tl, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    struct ev e[MAX_EVENTS];
    tls_login_events(e, &tl);
    struct trace t;

    /* a second SSLRequest inside TLS */
    uint8_t again[36];
    memcpy(again, ssl_request, sizeof again);
    again[3] = 2;
    e[3] = (struct ev){CLIENT, again, sizeof again};
    run_all(&tls_allow, e, 4, &t, NULL);
    cr_assert_eq(t.n, 3);
    cr_assert_eq(t.step[2].action, MY_FAIL);
    cr_assert_eq(t.step[2].reason, DBT_CLIENT_PROTOCOL_ERROR);
    cr_assert_str_eq(t.step[2].detail, "client sent a second SSLRequest inside TLS");
    cr_assert_eq(t.step[2].data[3], 3, "over TLS, after the client's seq 2");
    trace_free(&t);

    /* an SSLRequest without CLIENT_PROTOCOL_41 */
    uint8_t old[36];
    memcpy(old, ssl_request, sizeof old);
    old[5] &= (uint8_t)~0x02;
    e[1] = (struct ev){CLIENT, old, sizeof old};
    run_all(&tls_allow, e, 2, &t, NULL);
    cr_assert_eq(t.n, 2);
    cr_assert_eq(t.step[1].action, MY_FAIL);
    cr_assert_str_eq(t.step[1].detail, "client lacks CLIENT_PROTOCOL_41");
    trace_free(&t);

    /* an SSLRequest at seq 2 */
    uint8_t late[36];
    memcpy(late, ssl_request, sizeof late);
    late[3] = 2;
    e[1] = (struct ev){CLIENT, late, sizeof late};
    run_all(&tls_require, e, 2, &t, NULL);
    cr_assert_eq(t.n, 2);
    cr_assert_str_eq(t.step[1].detail, "client packets out of order");
    trace_free(&t);
}

/* COM_CHANGE_USER over a TLS client leg: caching_sha2 full auth again, and the client again
 * sends its password in clear. */
Test(mysql_client_tls, change_user_full_auth_over_tls_client_leg)
{
    struct rsa_fixture f;
    rsa_setup(&f, false);
    f.cfg.client_tls = MY_TLS_REQUIRE;
    struct tls_login tl;
    make_tls_login(&tl, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    static const uint8_t nonce2[20] = "NEWNONCE-0123456789!";
    uint8_t ok3[16], cu[128], sw[64], scr2[64], scr[32], fa3[8], pw4[32], ok5[16], swp[64];
    size_t okn = pkt(ok3, 3, ok_payload, sizeof ok_payload);
    size_t cun = change_user(cu, "bob", "mysql_native_password");
    swp[0] = 0xfe;
    memcpy(swp + 1, "caching_sha2_password", 22);
    memcpy(swp + 23, nonce2, 20);
    swp[43] = 0;
    size_t swn = pkt(sw, 1, swp, 44);
    memset(scr, 0x3c, sizeof scr);
    size_t scrn = pkt(scr2, 2, scr, 32);
    size_t fan = pkt(fa3, 3, full_auth, 2);
    size_t pwn = pkt(pw4, 4, "hunter2", 8);
    size_t ok5n = pkt(ok5, 5, ok_payload, sizeof ok_payload);
    struct ev e[MAX_EVENTS];
    size_t ne = tls_login_events(e, &tl);
    e[ne++] = (struct ev){SERVER, ok3, okn};
    e[ne++] = (struct ev){CLIENT, cu, cun};
    e[ne++] = (struct ev){SERVER, sw, swn};
    e[ne++] = (struct ev){CLIENT, scr2, scrn};
    e[ne++] = (struct ev){SERVER, fa3, fan};
    e[ne++] = (struct ev){CLIENT, pw4, pwn};
    e[ne++] = (struct ev){SERVER, ok5, ok5n};
    struct trace t;
    struct my_session *s;

    run_all(&f.cfg, e, ne, &t, &s);
    cr_assert_eq(t.n, 12);
    expect(&t, 5, SERVER, MY_SEND_CLIENT, ok3, okn);
    expect(&t, 6, CLIENT, MY_RELAY, cu, cun);
    expect(&t, 7, SERVER, MY_SEND_CLIENT, sw, swn);
    expect(&t, 8, CLIENT, MY_SEND_SERVER, scr2, scrn);
    expect(&t, 9, SERVER, MY_SEND_CLIENT, fa3, fan);
    expect(&t, 10, CLIENT, MY_SEND_SERVER, pw4, pwn); /* no PEM, no decryption */
    expect(&t, 11, SERVER, MY_SEND_CLIENT, ok5, ok5n);
    cr_assert(t.step[11].phase_end);
    cr_assert_str_eq(s->user, "bob");
    trace_free(&t);
    session_free(s);
    my_rsa_free(f.key);
}

/* ---- memory: buffers sized by what was announced (issue 14) ---- */

/* caching_sha2 full authentication through dbtrust's key (the PEM answer and the decrypted
 * password: the two buffers made for one step), a command relayed, then a COM_CHANGE_USER
 * answered with an OK: every kind of buffer the session makes. */
struct memory_scenario {
    struct login l;
    uint8_t fa3[8], req3[8], blob[256], blob5[300], ok5[16], q[32], cu[128], cuok[16];
    struct ev e[MAX_EVENTS];
    size_t ne;
};

static const uint8_t query_result[] = {0x01, 0x00, 0x00, 0x01, 0x01};

static void memory_scenario(struct memory_scenario *m, const struct rsa_fixture *f)
{
    make_login(&m->l, mysql8_greeting, sizeof mysql8_greeting, "caching_sha2_password", 32);
    size_t fan = pkt(m->fa3, 3, full_auth, 2);
    size_t reqn = pkt(m->req3, 3, "\x02", 1);
    size_t bn = client_blob(f->pem, mysql8_nonce, "password", m->blob);
    size_t blobn = pkt(m->blob5, 5, m->blob, bn);
    size_t okn = pkt(m->ok5, 5, ok_payload, sizeof ok_payload);
    size_t qn = pkt(m->q, 0, "\x03select 1", 9);
    size_t cun = change_user(m->cu, "bob", "mysql_native_password");
    size_t cuokn = pkt(m->cuok, 1, ok_payload, sizeof ok_payload);
    m->ne = login_events(m->e, &m->l);
    m->e[m->ne++] = (struct ev){SERVER, m->fa3, fan};
    m->e[m->ne++] = (struct ev){CLIENT, m->req3, reqn};
    m->e[m->ne++] = (struct ev){CLIENT, m->blob5, blobn};
    m->e[m->ne++] = (struct ev){SERVER, m->ok5, okn};
    m->e[m->ne++] = (struct ev){CLIENT, m->q, qn};
    m->e[m->ne++] = (struct ev){SERVER, query_result, sizeof query_result};
    m->e[m->ne++] = (struct ev){CLIENT, m->cu, cun};
    m->e[m->ne++] = (struct ev){SERVER, m->cuok, cuokn};
    m->e[m->ne++] = (struct ev){CLIENT, m->q, qn};
}

/* After each event, the session holds exactly what the packets so far announced. */
Test(mysql_memory, buffers_sized_by_announced_lengths)
{
    cr_assert_lt(sizeof(struct my_session), 2048, "struct my_session is %zu bytes",
                 sizeof(struct my_session));
    struct rsa_fixture f;
    rsa_setup(&f, false);
    struct memory_scenario m;
    memory_scenario(&m, &f);
    struct my_session *s = new_session(&f.cfg);
    cr_assert_eq(my_session_allocated(s), 0, "nothing before the first byte");

    /* the greeting: nothing until its header is complete, then its length */
    struct trace t;
    memset(&t, 0, sizeof t);
    for (size_t i = 0; i < MY_HEADER; i++) {
        struct ev b = {SERVER, m.l.greet + i, 1};
        cr_assert(feed_event(s, &b, 1, 1, &t, &t.consumed[0]));
        cr_assert_eq(my_session_allocated(s), i + 1 < MY_HEADER ? 0 : m.l.greet_len, "byte %zu", i);
    }
    struct ev rest = {SERVER, m.l.greet + MY_HEADER, m.l.greet_len - MY_HEADER};
    cr_assert(feed_event(s, &rest, SIZE_MAX, SIZE_MAX, &t, &t.consumed[0]));
    cr_assert_eq(my_session_allocated(s), m.l.greet_len);

    size_t pem = MY_HEADER + 1 + strlen(f.pem), blob = m.e[5].len, cu = m.e[9].len - MY_HEADER;
    size_t resp = m.l.resp_len, pw = MY_HEADER + 256;
    cr_assert_gt(resp, m.l.greet_len);
    cr_assert_gt(blob, resp);
    /* held when the event's first step is returned, and once the machine asks for more (the
     * call after a step releases what that step handed out) */
    const size_t at_step[] = {
        0,          /* greeting: checked above */
        resp,       /* the longer response replaced the greeting's buffer */
        resp,       /* TLS ready: the response waited in it */
        resp,       /* 01 04: reused */
        resp + pem, /* the PEM answer: a buffer for that step */
        blob + pw,  /* the blob replaced the response's; the password, for one step */
        blob,       /* the OK: reused */
        0,          /* relaying: the connection phase's buffer is gone */
        0,          /* the upstream leg is never buffered in the relay */
        cu,         /* the COM_CHANGE_USER read, exactly its payload */
        cu,         /* its OK assembled in the same buffer */
        0,          /* relaying again */
    };
    const size_t after[] = {0, resp, resp, resp, resp, blob, 0, 0, 0, cu, 0, 0};
    cr_assert_eq(DBT_ARRAY_LEN(at_step), m.ne);
    for (size_t i = 1; i < m.ne; i++) {
        struct my_step st;
        size_t used = 0;
        if (m.e[i].kind == TLS_READY)
            my_tls_ready(s, &st);
        else if (m.e[i].kind == SERVER)
            used = my_feed_server(s, m.e[i].data, m.e[i].len, &st);
        else
            used = my_feed_client(s, m.e[i].data, m.e[i].len, &st);
        cr_assert_neq(st.action, MY_NEED_MORE);
        cr_assert_eq(my_session_allocated(s), at_step[i], "event %zu: %zu held, want %zu", i,
                     my_session_allocated(s), at_step[i]);
        record(&t, m.e[i].kind, &st);
        struct ev remain = {m.e[i].kind, m.e[i].data + used, m.e[i].len - used};
        if (m.e[i].kind != TLS_READY)
            cr_assert(feed_event(s, &remain, SIZE_MAX, SIZE_MAX, &t, &t.consumed[i]));
        cr_assert_eq(my_session_allocated(s), after[i], "after event %zu: %zu held, want %zu", i,
                     my_session_allocated(s), after[i]);
    }
    cr_assert(my_relaying(s));
    cr_assert_str_eq(s->user, "bob");
    trace_free(&t);
    my_session_wipe(s);
    cr_assert_eq(my_session_allocated(s), 0);
    free(s);
    my_rsa_free(f.key);
}

/* The k-th allocation fails, for every k: the steps before it are those of a session with
 * memory, the failure is MY_FAIL DBT_INTERNAL_ERROR "out of memory" (an ERR for the client
 * where one is due, none while relaying), and nothing leaks. */
Test(mysql_memory, out_of_memory_at_every_allocation_is_a_step)
{
    struct rsa_fixture f;
    rsa_setup(&f, false);
    struct memory_scenario m;
    memory_scenario(&m, &f);
    static const size_t ways[][2] = {{SIZE_MAX, SIZE_MAX}, {1, 1}, {5, 3}};

    for (size_t w = 0; w < DBT_ARRAY_LEN(ways); w++) {
        struct trace ref;
        session_free(run(&f.cfg, m.e, m.ne, ways[w][0], ways[w][1], &ref));
        cr_assert_eq(ref.n, 13);
        size_t failures = 0;
        for (long k = 0;; k++) {
            cr_assert_lt(k, 64, "the failure never stopped");
            struct trace t;
            wire_alloc_fail_after(k);
            struct my_session *s = run(&f.cfg, m.e, m.ne, ways[w][0], ways[w][1], &t);
            wire_alloc_fail_after(-1);
            cr_assert_gt(t.n, 0);
            const struct rec *last = &t.step[t.n - 1];
            if (last->action != MY_FAIL) { /* k is past the last allocation */
                assert_same(&ref, &t, "no failure", (size_t)k);
                trace_free(&t);
                session_free(s);
                break;
            }
            failures++;
            for (size_t i = 0; i + 1 < t.n; i++) {
                const struct rec *x = &ref.step[i], *y = &t.step[i];
                /* what the relay forwarded before the failure: a prefix, when cut short */
                if (i + 2 == t.n && y->action == MY_RELAY)
                    cr_assert(x->action == MY_RELAY && x->leg == y->leg && y->len <= x->len &&
                                  memcmp(x->data, y->data, y->len) == 0,
                              "k %ld: relay step %zu differs", k, i);
                else
                    cr_assert(same_step(x, y), "k %ld: step %zu differs", k, i);
            }
            cr_assert_eq(last->reason, DBT_INTERNAL_ERROR);
            cr_assert_str_eq(last->detail, "out of memory");
            static const char msg[] = "dbtrust: out of memory (internal_error)";
            const struct rec *before = t.n > 1 ? &t.step[t.n - 2] : NULL;
            if (before && (before->phase_end || before->action == MY_RELAY)) {
                cr_assert_eq(last->len, 0, "k %ld: no ERR in the relay", k);
            } else {
                cr_assert_gt(last->len, MY_HEADER + 9, "k %ld: an ERR for the client", k);
                cr_assert_eq(last->data[MY_HEADER], 0xFF);
                cr_assert_arr_eq(last->data + last->len - strlen(msg), msg, strlen(msg));
            }
            trace_free(&t);
            session_free(s);
        }
        /* greeting, response, PEM answer, blob, password, change-user */
        cr_assert_eq(failures, 6, "%zu allocations", failures);
        trace_free(&ref);
    }
    my_rsa_free(f.key);
}

/* A response of exactly MY_MAX_PACKET payload bytes is read into a buffer of that size; one
 * byte more is refused on the header, before anything is allocated for it. */
Test(mysql_memory, largest_packet_accepted_one_over_refused_before_allocation)
{
    static uint8_t p[MY_MAX_PACKET], resp[MY_HEADER + MY_MAX_PACKET],
        resp_out[MY_HEADER + MY_MAX_PACKET];
    static char db[MY_MAX_PACKET];
    size_t base = response(p, "app", 20, "", "mysql_native_password", "mariadb");
    memset(db, 'd', MY_MAX_PACKET - base);
    db[MY_MAX_PACKET - base] = 0;
    size_t n = response(p, "app", 20, db, "mysql_native_password", "mariadb");
    cr_assert_eq(n, MY_MAX_PACKET);
    size_t rn = pkt(resp, 1, p, n);
    memcpy(resp_out, resp, rn);
    resp_out[3] = 2;
    resp_out[5] |= 0x08;
    uint8_t g[200], want_greet[200];
    size_t gn = pkt(g, 0, mariadb_greeting, sizeof mariadb_greeting);
    memcpy(want_greet, g, gn);
    want_greet[4 + MARIADB_CAPS_LO] = 0xde;
    want_greet[4 + MARIADB_CAPS_LO + 1] = 0xf7;
    struct ev e[3] = {{SERVER, g, gn}, {CLIENT, resp, rn}, {TLS_READY, NULL, 0}};
    struct trace whole;

    struct my_session *s = run(&tcp_nokey, e, 3, SIZE_MAX, SIZE_MAX, &whole);
    cr_assert_eq(whole.n, 4);
    expect(&whole, 0, SERVER, MY_SEND_CLIENT, want_greet, gn);
    expect(&whole, 1, CLIENT, MY_SEND_SERVER_PLAIN, ssl_request, sizeof ssl_request);
    expect(&whole, 3, TLS_READY, MY_SEND_SERVER, resp_out, rn);
    cr_assert_eq(my_session_allocated(s), MY_HEADER + MY_MAX_PACKET);
    session_free(s);
    static const size_t cuts[] = {1, 2, 3, 4, 5, 4096, MY_MAX_PACKET - 1, MY_MAX_PACKET + 3};
    for (size_t i = 0; i < DBT_ARRAY_LEN(cuts); i++)
        check_cut(&tcp_nokey, e, 3, &whole, cuts[i], SIZE_MAX, "split at");
    check_cut(&tcp_nokey, e, 3, &whole, 1, 1, "byte by byte");
    trace_free(&whole);

    /* one more byte: refused on the header, though every allocation would now fail */
    wire_put_le24(resp, MY_MAX_PACKET + 1);
    uint8_t want[200];
    size_t wn = err_pkt(want, 1, 1043, "08S01",
                        "dbtrust: connection-phase packet from the client over 64 KiB "
                        "(client_protocol_error)");
    struct trace t;
    s = run(&tcp_nokey, e, 1, SIZE_MAX, SIZE_MAX, &t);
    trace_free(&t);
    wire_alloc_fail_after(0);
    struct my_step st;
    cr_assert_eq(my_feed_client(s, resp, rn, &st), MY_HEADER);
    wire_alloc_fail_after(-1);
    cr_assert_eq(st.action, MY_FAIL);
    cr_assert_eq(st.reason, DBT_CLIENT_PROTOCOL_ERROR);
    cr_assert_eq(st.len, wn);
    cr_assert_arr_eq(st.data, want, wn);
    cr_assert_eq(my_session_allocated(s), gn, "the greeting's buffer only");
    session_free(s);
}

/* In the relay only a COM_CHANGE_USER is read into a buffer: as long as its payload, up to the
 * 64 KiB of it that are ever looked at. */
Test(mysql_memory, relay_keeps_only_a_change_user)
{
    struct relay_login r;
    static uint8_t bigq[MY_HEADER + 100000], longcu[MY_HEADER + 70000];
    uint8_t cu[128], cuok[16];
    bigq[MY_HEADER] = 0x03;
    memset(bigq + MY_HEADER + 1, 'x', 100000 - 1);
    wire_put_le24(bigq, 100000);
    bigq[3] = 0;
    size_t cun = change_user(cu, "carol", "mysql_native_password");
    size_t cuokn = pkt(cuok, 1, ok_payload, sizeof ok_payload);
    /* a COM_CHANGE_USER whose attributes go on past 64 KiB */
    memcpy(longcu, cu, cun);
    longcu[MY_HEADER + 1] = 'b'; /* "carol" -> "barol" */
    memset(longcu + cun, 0x42, sizeof longcu - cun);
    wire_put_le24(longcu, 70000);
    struct ev e[MAX_EVENTS];
    size_t ne = relay_login_events(e, &r);
    size_t login = ne;
    e[ne++] = (struct ev){CLIENT, bigq, sizeof bigq};
    e[ne++] = (struct ev){SERVER, query_result, sizeof query_result};
    e[ne++] = (struct ev){CLIENT, cu, cun};
    e[ne++] = (struct ev){SERVER, cuok, cuokn};
    e[ne++] = (struct ev){CLIENT, longcu, sizeof longcu};
    e[ne++] = (struct ev){SERVER, cuok, cuokn};
    e[ne++] = (struct ev){CLIENT, bigq, sizeof bigq};
    /* after each event, once the machine asks for more: the OK that ends a change-user is
     * handed out from the change-user's buffer, which goes on the call after */
    const size_t held[] = {0, 0, cun - MY_HEADER, 0, MY_HEADER + MY_MAX_PACKET, 0, 0};
    static const size_t ways[][2] = {{SIZE_MAX, SIZE_MAX}, {1, 1}, {7, 4093}};

    for (size_t w = 0; w < DBT_ARRAY_LEN(ways); w++) {
        struct trace t;
        struct my_session *s = run(&tcp_nokey, e, login, ways[w][0], ways[w][1], &t);
        for (size_t i = login; i < ne; i++) {
            cr_assert(feed_event(s, &e[i], ways[w][0], ways[w][1], &t, &t.consumed[i]));
            cr_assert_eq(my_session_allocated(s), held[i - login],
                         "way %zu, event %zu: %zu held, want %zu", w, i, my_session_allocated(s),
                         held[i - login]);
            if (i == login + 4)
                cr_assert_str_eq(s->user, "barol", "read from the first 64 KiB kept");
        }
        cr_assert(my_relaying(s));
        trace_free(&t);
        session_free(s);
    }
}

/* The packet buffer lives as long as a connection phase and no longer: nothing is held once the
 * login's OK went out, nor after each COM_CHANGE_USER exchange (OK or ERR), and the next
 * COM_CHANGE_USER - here one that needs the RSA bridge, so every buffer comes back - works from
 * a released session exactly as the first did. */
Test(mysql_memory, released_after_login_and_each_change_user)
{
    struct rsa_fixture f;
    rsa_setup(&f, false);
    struct relay_login r;
    static const uint8_t nonce2[20] = "NEWNONCE-0123456789!";
    static const uint8_t result[] = {0x01, 0x00, 0x00, 0x01, 0x01};
    uint8_t q[32], cu1[128], cuok1[16], cu2[128], sw[64], sw1[64], scr2[64], scr[32], fa3[8],
        req4[8], pem5[MY_PEM_MAX + 8], blob[256], blob6[300], pw4[32], ok5[16], ok7[16],
        sw_payload[64], cu3[128], cuerr[96];
    size_t qn = pkt(q, 0, "\x03select 1", 9);
    size_t cu1n = change_user(cu1, "bob", "mysql_native_password");
    size_t cuok1n = pkt(cuok1, 1, ok_payload, sizeof ok_payload);
    size_t cu2n = change_user(cu2, "carol", "mysql_native_password");
    sw_payload[0] = 0xfe;
    memcpy(sw_payload + 1, "caching_sha2_password", 22);
    memcpy(sw_payload + 23, nonce2, 20);
    sw_payload[43] = 0;
    size_t swn = pkt(sw, 1, sw_payload, 44);
    pkt(sw1, 1, sw_payload, 44);
    memset(scr, 0x3c, sizeof scr);
    size_t scrn = pkt(scr2, 2, scr, 32);
    size_t fan = pkt(fa3, 3, full_auth, 2);
    size_t reqn = pkt(req4, 4, "\x02", 1);
    size_t pemn = pem_packet(pem5, 5, f.pem);
    size_t bn = client_blob(f.pem, nonce2, "hunter2", blob);
    size_t blobn = pkt(blob6, 6, blob, bn);
    size_t pwn = pkt(pw4, 4, "hunter2", 8);
    size_t okn = pkt(ok5, 5, ok_payload, sizeof ok_payload);
    pkt(ok7, 7, ok_payload, sizeof ok_payload);
    size_t cu3n = change_user(cu3, "dave", "mysql_native_password");
    size_t cuerrn = err_pkt(cuerr, 1, 1045, "28000", "Access denied for user 'dave'");
    struct ev e[MAX_EVENTS];
    size_t ne = relay_login_events(e, &r);
    size_t login = ne;
    e[ne++] = (struct ev){CLIENT, q, qn};
    e[ne++] = (struct ev){SERVER, result, sizeof result};
    e[ne++] = (struct ev){CLIENT, cu1, cu1n}; /* first change-user: a plain OK */
    e[ne++] = (struct ev){SERVER, cuok1, cuok1n};
    e[ne++] = (struct ev){CLIENT, q, qn};
    e[ne++] = (struct ev){SERVER, result, sizeof result};
    e[ne++] = (struct ev){CLIENT, cu2, cu2n}; /* second: switch to caching_sha2, full auth */
    e[ne++] = (struct ev){SERVER, sw, swn};
    e[ne++] = (struct ev){CLIENT, scr2, scrn};
    e[ne++] = (struct ev){SERVER, fa3, fan};
    e[ne++] = (struct ev){CLIENT, req4, reqn};
    e[ne++] = (struct ev){CLIENT, blob6, blobn};
    e[ne++] = (struct ev){SERVER, ok5, okn};
    e[ne++] = (struct ev){CLIENT, q, qn};
    e[ne++] = (struct ev){CLIENT, cu3, cu3n}; /* third: refused */
    e[ne++] = (struct ev){SERVER, cuerr, cuerrn};
    e[ne++] = (struct ev){CLIENT, q, qn};
    e[ne++] = (struct ev){SERVER, result, sizeof result};
    cr_assert_leq(ne, MAX_EVENTS);
    /* held after each event, once the machine asked for more (what the proxy sees between
     * reads: its loop calls until MY_NEED_MORE); SIZE_MAX: mid-exchange, checked as > 0 */
    const size_t held[] = {
        0,        /* the login's OK: the connection phase is over */
        0,        /* a command */
        0,        /* its result */
        SIZE_MAX, /* change-user 1, kept */
        0,        /* its OK: released */
        0,        /* a command */
        0,        /* its result */
        SIZE_MAX, /* change-user 2, kept */
        SIZE_MAX, /* the switch to caching_sha2 */
        SIZE_MAX, /* the scramble */
        SIZE_MAX, /* 01 04 */
        SIZE_MAX, /* the key request, answered with the PEM */
        SIZE_MAX, /* the blob, forwarded as the password */
        0,        /* its OK: released */
        0,        /* a command */
        SIZE_MAX, /* change-user 3, kept */
        0,        /* its ERR ends the exchange too: released */
        0,        /* a command */
        0,        /* its result */
    };
    cr_assert_eq(DBT_ARRAY_LEN(held), ne - login + 1);
    static const size_t ways[][2] = {{SIZE_MAX, SIZE_MAX}, {1, 1}, {3, 7}};

    for (size_t w = 0; w < DBT_ARRAY_LEN(ways); w++) {
        struct trace t;
        struct my_session *s = run(&f.cfg, e, login, ways[w][0], ways[w][1], &t);
        cr_assert(my_relaying(s));
        cr_assert_eq(my_session_allocated(s), held[0], "way %zu: %zu held after the login", w,
                     my_session_allocated(s));
        for (size_t i = login; i < ne; i++) {
            cr_assert(feed_event(s, &e[i], ways[w][0], ways[w][1], &t, &t.consumed[i]));
            size_t want = held[i - login + 1], got = my_session_allocated(s);
            if (want == SIZE_MAX)
                cr_assert_gt(got, 0, "way %zu, event %zu: nothing held mid-exchange", w, i);
            else
                cr_assert_eq(got, want, "way %zu, event %zu: %zu held, want %zu", w, i, got, want);
            if (i == login + 5)
                cr_assert_str_eq(s->user, "bob");
            if (i == login + 12)
                cr_assert_str_eq(s->user, "carol");
        }
        cr_assert_str_eq(s->user, "dave");
        cr_assert(my_relaying(s));
        /* the second change-user ran exactly as it would in a fresh session */
        size_t k = 0;
        while (k < t.n && !(t.step[k].leg == CLIENT && t.step[k].action == MY_RELAY &&
                            t.step[k].len == cu2n && memcmp(t.step[k].data, cu2, cu2n) == 0))
            k++;
        cr_assert_lt(k + 8, t.n, "way %zu: the second change-user was not relayed", w);
        expect(&t, k + 1, SERVER, MY_SEND_CLIENT, sw1, swn);
        expect(&t, k + 2, CLIENT, MY_SEND_SERVER, scr2, scrn);
        expect(&t, k + 3, SERVER, MY_SEND_CLIENT, fa3, fan);
        expect(&t, k + 4, CLIENT, MY_SEND_CLIENT, pem5, pemn);
        expect(&t, k + 5, CLIENT, MY_SEND_SERVER, pw4, pwn);
        expect(&t, k + 6, SERVER, MY_SEND_CLIENT, ok7, okn);
        cr_assert(t.step[k + 6].phase_end);
        /* then the command and the third change-user relayed in one run, its ERR forwarded */
        cr_assert_eq(t.step[k + 7].action, MY_RELAY);
        cr_assert_eq(t.step[k + 7].len, qn + cu3n);
        expect(&t, k + 8, SERVER, MY_SEND_CLIENT, cuerr, cuerrn);
        cr_assert(t.step[k + 8].phase_end);
        trace_free(&t);
        session_free(s);
    }
    my_rsa_free(f.key);
}

/* The proxy ends a connection with my_session_wipe wherever it is: at the start, mid-packet,
 * with a packet handed out, in the relay, after a failure. Nothing may stay behind. */
static void expect_wipe_anywhere(const struct my_config *cfg, const struct ev *evs, size_t nev)
{
    for (size_t i = 0; i < nev; i++) {
        size_t len = evs[i].len;
        const size_t cuts[] = {0, 1, 3, 4, 5, len / 2, len ? len - 1 : 0, len};
        for (size_t c = 0; c < DBT_ARRAY_LEN(cuts); c++) {
            if (cuts[c] > len || (evs[i].kind != SERVER && evs[i].kind != CLIENT && c > 0))
                continue;
            struct trace t;
            struct my_session *s = run(cfg, evs, i, SIZE_MAX, SIZE_MAX, &t);
            struct ev part = evs[i];
            part.len = cuts[c];
            if (s->state != MY_S_ENDED)
                (void)feed_event(s, &part, SIZE_MAX, SIZE_MAX, &t, &t.consumed[i]);
            trace_free(&t);
            my_session_wipe(s);
            cr_assert_eq(my_session_allocated(s), 0, "event %zu cut %zu", i, cuts[c]);
            struct my_step st;
            static const uint8_t one = 0;
            cr_assert_eq(my_feed_client(s, &one, 1, &st), 0);
            cr_assert_eq(st.action, MY_FAIL);
            cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
            my_session_wipe(s); /* idempotent */
            free(s);
        }
    }
}

Test(mysql_memory, wipe_at_every_point)
{
    struct rsa_fixture f;
    rsa_setup(&f, false);
    struct memory_scenario m;
    memory_scenario(&m, &f);
    expect_wipe_anywhere(&f.cfg, m.e, m.ne);

    /* failures: a refused plaintext response, an oversize packet, a garbage blob */
    struct login l;
    make_login(&l, mariadb_greeting, sizeof mariadb_greeting, "mysql_native_password", 20);
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    expect_wipe_anywhere(&tls_require, e, ne);
    static const uint8_t over[] = {0x01, 0x00, 0x01, 0x01, 0x8c};
    e[1] = (struct ev){CLIENT, over, sizeof over};
    expect_wipe_anywhere(&tcp_nokey, e, 2);
    memmove(m.blob5 + MY_HEADER, m.blob5 + MY_HEADER + 1, 255); /* not the blob any more */
    expect_wipe_anywhere(&f.cfg, m.e, 7);
    my_rsa_free(f.key);
}

/* Issue 15: user, database and program_name are kept as valid UTF-8 without control characters
 * (dbt_utf8.h) for the log and the metric label; the packet itself goes upstream verbatim. */
Test(mysql, names_sanitised_to_valid_utf8)
{
    struct login l;
    uint8_t p[400];
    char program[80];
    memset(program, 'p', 62);
    memcpy(program + 62, "\xE2\x82\xAC", 4); /* € straddles byte 63 */
    l.greet_len = pkt(l.greet, 0, mariadb_greeting, sizeof mariadb_greeting);
    size_t n = response(p, "ap\xFFp", 20, "sh\xC0\xAFop\n", "mysql_native_password", program);
    l.resp_len = pkt(l.resp, 1, p, n);
    memcpy(l.resp_out, l.resp, l.resp_len);
    l.resp_out[3] = 2;
    l.resp_out[5] |= 0x08;
    struct ev e[MAX_EVENTS];
    size_t ne = login_events(e, &l);
    struct trace t;
    struct my_session *s;

    run_all(&tcp_nokey, e, ne, &t, &s);
    cr_assert_eq(t.n, 4);
    expect(&t, 3, TLS_READY, MY_SEND_SERVER, l.resp_out, l.resp_len); /* verbatim */
    cr_assert_str_eq(s->user, "ap\xEF\xBF\xBDp");
    cr_assert_str_eq(s->database, "sh\xEF\xBF\xBD\xEF\xBF\xBDop\xEF\xBF\xBD");
    cr_assert_eq(strlen(s->program_name), 62, "the straddling character is dropped whole");
    cr_assert_eq(strncmp(s->program_name, program, 62), 0);
    trace_free(&t);
    session_free(s);
}
