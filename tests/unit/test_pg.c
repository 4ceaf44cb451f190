/* pg.h: the PostgreSQL startup machines. Every vector is fed whole, split at every offset and
 * byte by byte; all three must give the same steps, since TCP may cut the stream anywhere. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "dbt_util.h"
#include "pg.h"
#include "test_util.h"
#include "wire.h"

/* Every machine a test makes is given back with pg_client_free / pg_server_free: a buffer left
 * behind fails the suite (leak_check), whatever state the machine ended in. */
TestSuite(pg_client, .fini = leak_check);
TestSuite(pg_client_tls, .fini = leak_check);
TestSuite(pg_client_memory, .fini = leak_check);
TestSuite(pg_server, .fini = leak_check);
TestSuite(pg_server_memory, .fini = leak_check);

#define MAX_STEPS 16

/* ---- driver ---- */

enum leg { CLIENT, SERVER };

struct rec {
    enum pg_action action;
    uint8_t *data; /* a copy: the machine's pointer is only valid until the next call */
    size_t len;
    enum dbt_reason reason;
    const char *detail;
    bool direct;
};

struct trace {
    struct rec step[MAX_STEPS];
    size_t n;
    size_t consumed;
};

/* Where a client machine starts (C1): its client_tls mode, and whether the leg is already
 * encrypted (after SSLRequest/'S' or a direct ClientHello, then pg_client_tls_started). */
enum client_start { PLAINTEXT, AFTER_SSL_REQUEST, AFTER_DIRECT_TLS };

struct client_setup {
    enum pg_client_tls tls;
    enum client_start start;
};

static const uint8_t ssl_req[] = {0x00, 0x00, 0x00, 0x08, 0x04, 0xD2, 0x16, 0x2F};

/* What the proxy does on PG_START_TLS: answer, handshake (not here), then tls_started. */
static void enter_tls(struct pg_client *c, bool direct)
{
    static const uint8_t hello[] = {0x16, 0x03, 0x01, 0x02, 0x00};
    struct pg_step st;

    if (direct) {
        cr_assert_eq(pg_client_feed(c, hello, sizeof hello, &st), 0);
        cr_assert_eq(st.action, PG_START_TLS);
        cr_assert(st.direct);
        cr_assert_eq(st.len, 0);
        cr_assert_null(st.data);
    } else {
        cr_assert_eq(pg_client_feed(c, ssl_req, sizeof ssl_req, &st), sizeof ssl_req);
        cr_assert_eq(st.action, PG_START_TLS);
        cr_assert(!st.direct);
        cr_assert_eq(st.len, 1);
        cr_assert_eq(st.data[0], 'S');
    }
    cr_assert_eq(c->state, PG_C_TLS);
    cr_assert(!c->tls_active);
    pg_client_tls_started(c);
    cr_assert(c->tls_active);
    cr_assert_eq(c->state, PG_C_HEADER);
}

static struct pg_client *new_client(const struct client_setup *setup)
{
    struct pg_client *c = malloc(sizeof *c);
    cr_assert_not_null(c);
    memset(c, 0xA5, sizeof *c); /* init must not rely on zeroed memory */
    pg_client_init(c);
    cr_assert_eq(c->tls, PG_TLS_OFF, "init defaults to today's plaintext behaviour");
    cr_assert(!c->tls_active);
    if (setup) {
        c->tls = setup->tls;
        if (setup->start != PLAINTEXT)
            enter_tls(c, setup->start == AFTER_DIRECT_TLS);
    }
    return c;
}

static void *new_machine(enum leg leg)
{
    if (leg == CLIENT)
        return new_client(NULL);
    struct pg_server *s = malloc(sizeof *s);
    cr_assert_not_null(s);
    memset(s, 0xA5, sizeof *s);
    pg_server_init(s);
    return s;
}

/* What the proxy does once it is done with a machine: give back what it holds, then the struct. */
static void free_machine(enum leg leg, void *m)
{
    if (leg == CLIENT)
        pg_client_free(m);
    else
        pg_server_free(m);
    free(m);
}

static void client_free(struct pg_client *c)
{
    free_machine(CLIENT, c);
}

static size_t feed(enum leg leg, void *m, const uint8_t *in, size_t len, struct pg_step *st)
{
    return leg == CLIENT ? pg_client_feed(m, in, len, st) : pg_server_feed(m, in, len, st);
}

static void record(struct trace *t, const struct pg_step *st)
{
    cr_assert_lt(t->n, MAX_STEPS);
    struct rec *r = &t->step[t->n++];
    r->action = st->action;
    r->len = st->len;
    r->reason = st->reason;
    r->detail = st->detail;
    r->direct = st->direct;
    r->data = NULL;
    if (st->len > 0) {
        cr_assert_not_null(st->data);
        r->data = malloc(st->len);
        memcpy(r->data, st->data, st->len);
    }
    if (st->action == PG_FAIL || st->action == PG_CLOSE)
        cr_assert_not_null(st->detail);
}

static void trace_free(struct trace *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->step[i].data);
    t->n = 0;
}

/* Feeds a first chunk of `first` bytes, then chunks of `rest` bytes, then one empty call (so a
 * PG_RELAY that follows a forwarded 'R' shows whatever the cut). Records every step but
 * PG_NEED_MORE, up to the first one that ends the machine. */
static void run(enum leg leg, void *m, const uint8_t *in, size_t len, size_t first, size_t rest,
                struct trace *t)
{
    size_t pos = 0;
    size_t end = first < len ? first : len;

    memset(t, 0, sizeof *t);
    for (int guard = 0; guard < 100000; guard++) {
        bool last = pos == len;
        struct pg_step st;
        size_t n = feed(leg, m, in + pos, end - pos, &st);
        cr_assert_leq(n, end - pos);
        pos += n;
        t->consumed = pos;
        if (st.action == PG_NEED_MORE) {
            cr_assert_eq(pos, end, "PG_NEED_MORE left input unconsumed");
            cr_assert_null(st.data);
            if (last)
                return;
        } else {
            record(t, &st);
            if (st.action != PG_SEND_CLIENT)
                return;
        }
        if (pos == end && end < len)
            end += rest < len - end ? rest : len - end;
    }
    cr_assert_fail("machine makes no progress");
}

static bool same_step(const struct rec *a, const struct rec *b)
{
    if (a->action != b->action || a->len != b->len || a->reason != b->reason ||
        a->direct != b->direct)
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
    cr_assert_eq(a->consumed, b->consumed, "%s %zu: consumed %zu instead of %zu", how, k,
                 b->consumed, a->consumed);
    for (size_t i = 0; i < a->n; i++)
        cr_assert(same_step(&a->step[i], &b->step[i]), "%s %zu: step %zu differs", how, k, i);
}

static void *new_from(enum leg leg, const struct client_setup *setup)
{
    return leg == CLIENT ? new_client(setup) : new_machine(leg);
}

/* Runs the vector whole, split at every offset and byte by byte; all must agree. Returns the
 * whole-feed trace and, if keep is set, the machine that produced it. A client machine starts
 * as setup says (NULL: client_tls off, plaintext). */
static void run_all_from(enum leg leg, const struct client_setup *setup, const uint8_t *in,
                         size_t len, struct trace *whole, void **keep)
{
    void *m = new_from(leg, setup);
    run(leg, m, in, len, len, len, whole);
    if (keep)
        *keep = m;
    else
        free_machine(leg, m);

    for (size_t k = 1; k < len; k++) {
        struct trace t;
        m = new_from(leg, setup);
        run(leg, m, in, len, k, SIZE_MAX, &t);
        free_machine(leg, m);
        assert_same(whole, &t, "split at", k);
        trace_free(&t);
    }
    struct trace t;
    m = new_from(leg, setup);
    run(leg, m, in, len, 1, 1, &t);
    free_machine(leg, m);
    assert_same(whole, &t, "byte by byte", 1);
    trace_free(&t);
}

static void run_all(enum leg leg, const uint8_t *in, size_t len, struct trace *whole, void **keep)
{
    run_all_from(leg, NULL, in, len, whole, keep);
}

static void expect_data(const struct trace *t, size_t i, enum pg_action action, const void *data,
                        size_t len)
{
    cr_assert_lt(i, t->n, "missing step %zu", i);
    const struct rec *r = &t->step[i];
    cr_assert_eq(r->action, action, "step %zu: action %d, want %d", i, r->action, action);
    cr_assert_eq(r->len, len, "step %zu: %zu bytes, want %zu", i, r->len, len);
    cr_assert_arr_eq(r->data, data, len, "step %zu: bytes differ", i);
}

static void expect_fail(const struct trace *t, size_t i, enum pg_action action,
                        enum dbt_reason reason, const char *detail)
{
    cr_assert_lt(i, t->n, "missing step %zu", i);
    const struct rec *r = &t->step[i];
    cr_assert_eq(r->action, action, "step %zu: action %d, want %d", i, r->action, action);
    cr_assert_eq(r->reason, reason, "step %zu: reason %s", i, dbt_reason_name(r->reason));
    cr_assert_str_eq(r->detail, detail);
    cr_assert_eq(r->len, 0);
}

/* ---- vector builders ---- */

static size_t put(uint8_t *b, size_t at, const void *p, size_t n)
{
    memcpy(b + at, p, n);
    return at + n;
}

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* StartupMessage from a NULL-terminated name, value, name, value... list. */
static size_t startup(uint8_t *b, uint32_t version, const char *const *kv)
{
    size_t at = 8;
    for (; *kv; kv++)
        at = put(b, at, *kv, strlen(*kv) + 1);
    b[at++] = 0;
    be32(b, (uint32_t)at);
    be32(b + 4, version);
    return at;
}

static const uint8_t gss_req[] = {0x00, 0x00, 0x00, 0x08, 0x04, 0xD2, 0x16, 0x30};
/* StartupMessage 3.0, user=bob, written out by hand. */
static const uint8_t startup_bob[] = {0x00, 0x00, 0x00, 0x12, 0x00, 0x03, 0x00, 0x00, 'u',
                                      's',  'e',  'r',  0x00, 'b',  'o',  'b',  0x00, 0x00};

/* ---- client leg ---- */

Test(pg_client, ssl_request_constant)
{
    cr_assert_arr_eq(pg_ssl_request, ssl_req, 8);
}

Test(pg_client, ssl_request_then_startup)
{
    uint8_t in[64];
    size_t n = put(in, 0, ssl_req, sizeof ssl_req);
    n = put(in, n, startup_bob, sizeof startup_bob);
    struct trace t;
    struct pg_client *c;

    run_all(CLIENT, in, n, &t, (void **)&c);
    cr_assert_eq(t.n, 2);
    expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
    expect_data(&t, 1, PG_DIAL_UPSTREAM, startup_bob, sizeof startup_bob);
    cr_assert_eq(t.consumed, n);
    cr_assert_str_eq(c->user, "bob");
    cr_assert_str_eq(c->database, "bob", "database defaults to the user name");
    cr_assert_str_eq(c->application_name, "");
    cr_assert_eq(c->version, 0x00030000u);
    trace_free(&t);
    client_free(c);
}

Test(pg_client, gssenc_then_ssl_then_startup)
{
    static const char *const kv[] = {"user", "alice",   "database", "shop", "application_name",
                                     "psql", "options", "-c x=1",   NULL};
    uint8_t in[256], msg[200];
    size_t mlen = startup(msg, 0x00030000u, kv);
    size_t n = put(in, 0, gss_req, 8);
    n = put(in, n, ssl_req, 8);
    n = put(in, n, msg, mlen);
    struct trace t;
    struct pg_client *c;

    run_all(CLIENT, in, n, &t, (void **)&c);
    cr_assert_eq(t.n, 3);
    expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
    expect_data(&t, 1, PG_SEND_CLIENT, "N", 1);
    expect_data(&t, 2, PG_DIAL_UPSTREAM, msg, mlen);
    cr_assert_str_eq(c->user, "alice");
    cr_assert_str_eq(c->database, "shop");
    cr_assert_str_eq(c->application_name, "psql");
    trace_free(&t);
    client_free(c);
}

static void expect_client_fail(const uint8_t *in, size_t n, size_t sends, const char *detail)
{
    struct trace t;
    run_all(CLIENT, in, n, &t, NULL);
    cr_assert_eq(t.n, sends + 1);
    for (size_t i = 0; i < sends; i++)
        expect_data(&t, i, PG_SEND_CLIENT, "N", 1);
    expect_fail(&t, sends, PG_FAIL, DBT_CLIENT_PROTOCOL_ERROR, detail);
    trace_free(&t);
}

Test(pg_client, duplicate_requests_rejected)
{
    uint8_t in[64];
    size_t n = put(in, 0, ssl_req, 8);
    n = put(in, n, ssl_req, 8);
    expect_client_fail(in, n, 1, "duplicate SSLRequest");

    n = put(in, 0, gss_req, 8);
    n = put(in, n, ssl_req, 8);
    n = put(in, n, gss_req, 8);
    expect_client_fail(in, n, 2, "duplicate GSSENCRequest");
}

Test(pg_client, encryption_request_must_be_8_bytes)
{
    static const uint8_t in[] = {0x00, 0x00, 0x00, 0x0C, 0x04, 0xD2, 0x16, 0x2F, 0, 0, 0, 0};
    expect_client_fail(in, sizeof in, 0, "invalid length of SSLRequest packet");
    static const uint8_t gss[] = {0x00, 0x00, 0x00, 0x09, 0x04, 0xD2, 0x16, 0x30, 0};
    expect_client_fail(gss, sizeof gss, 0, "invalid length of GSSENCRequest packet");
}

static void expect_verbatim_startup(uint32_t version)
{
    static const char *const kv[] = {"user", "carol",           "_pq_.foo", "bar", "_pq_.grease",
                                     "",     "frobnicate_gucs", "on",       NULL};
    uint8_t msg[200];
    size_t mlen = startup(msg, version, kv);
    struct trace t;
    struct pg_client *c;

    run_all(CLIENT, msg, mlen, &t, (void **)&c);
    cr_assert_eq(t.n, 1);
    expect_data(&t, 0, PG_DIAL_UPSTREAM, msg, mlen);
    cr_assert_eq(c->version, version);
    cr_assert_str_eq(c->user, "carol");
    cr_assert_str_eq(c->database, "carol");
    trace_free(&t);
    client_free(c);
}

Test(pg_client, startup_3_2_forwarded_verbatim)
{
    expect_verbatim_startup(0x00030002u);
}

Test(pg_client, startup_greased_3_9999_forwarded_verbatim)
{
    expect_verbatim_startup(0x0003270Fu);
}

Test(pg_client, idents_truncated_and_terminated)
{
    char longname[200];
    memset(longname, 'u', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    const char *const kv[] = {"application_name", longname, "user", longname, NULL};
    uint8_t msg[600];
    size_t mlen = startup(msg, 0x00030000u, kv);
    struct trace t;
    struct pg_client *c;

    run_all(CLIENT, msg, mlen, &t, (void **)&c);
    expect_data(&t, 0, PG_DIAL_UPSTREAM, msg, mlen);
    cr_assert_eq(strlen(c->user), PG_IDENT_MAX - 1);
    cr_assert_eq(strlen(c->application_name), PG_IDENT_MAX - 1);
    cr_assert_eq(strlen(c->database), PG_IDENT_MAX - 1);
    cr_assert_eq(strncmp(c->user, longname, PG_IDENT_MAX - 1), 0);
    trace_free(&t);
    client_free(c);
}

Test(pg_client, largest_startup_packet_accepted)
{
    static uint8_t msg[4 + PG_MAX_STARTUP_PACKET];
    static char big[PG_MAX_STARTUP_PACKET];
    /* 8 header + "user\0x\0" (7) + "options\0" (8) + value + NUL + final NUL = 10004 */
    size_t vlen = sizeof msg - 8 - 7 - 8 - 2;
    memset(big, 'o', vlen);
    big[vlen] = 0;
    const char *const kv[] = {"user", "x", "options", big, NULL};
    size_t mlen = startup(msg, 0x00030000u, kv);
    cr_assert_eq(mlen, sizeof msg);
    struct trace t;

    run_all(CLIENT, msg, mlen, &t, NULL);
    cr_assert_eq(t.n, 1);
    expect_data(&t, 0, PG_DIAL_UPSTREAM, msg, mlen);
    trace_free(&t);
}

Test(pg_client, oversize_length_rejected_before_buffering)
{
    /* body 10005: only the 8 header bytes are ever sent */
    static const uint8_t in[] = {0x00, 0x00, 0x27, 0x19, 0x00, 0x03, 0x00, 0x00};
    struct trace t;

    run_all(CLIENT, in, sizeof in, &t, NULL);
    cr_assert_eq(t.n, 1);
    expect_fail(&t, 0, PG_FAIL, DBT_CLIENT_PROTOCOL_ERROR, "invalid length of startup packet");
    cr_assert_eq(t.consumed, 4, "decided on the length word alone");
    trace_free(&t);

    /* a length word alone is enough */
    run_all(CLIENT, in, 4, &t, NULL);
    cr_assert_eq(t.n, 1);
    expect_fail(&t, 0, PG_FAIL, DBT_CLIENT_PROTOCOL_ERROR, "invalid length of startup packet");
    trace_free(&t);

    /* one byte over the limit: body 10001, total 10005 */
    static const uint8_t just_over[] = {0x00, 0x00, 0x27, 0x15, 0x00, 0x03, 0x00, 0x00};
    expect_client_fail(just_over, sizeof just_over, 0, "invalid length of startup packet");
    static const uint8_t huge[] = {0x7F, 0xFF, 0xFF, 0xFF};
    expect_client_fail(huge, sizeof huge, 0, "invalid length of startup packet");
}

Test(pg_client, short_length_rejected)
{
    static const uint8_t seven[] = {0x00, 0x00, 0x00, 0x07, 0x00, 0x03, 0x00};
    expect_client_fail(seven, sizeof seven, 0, "invalid length of startup packet");
    static const uint8_t zero[] = {0x00, 0x00, 0x00, 0x00};
    expect_client_fail(zero, sizeof zero, 0, "invalid length of startup packet");
    uint8_t in[16];
    size_t n = put(in, 0, ssl_req, 8);
    n = put(in, n, zero, 4);
    expect_client_fail(in, n, 1, "invalid length of startup packet");
}

Test(pg_client, direct_tls_closes_silently)
{
    static const uint8_t hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03};
    struct trace t;

    run_all(CLIENT, hello, sizeof hello, &t, NULL);
    cr_assert_eq(t.n, 1);
    expect_fail(&t, 0, PG_CLOSE, DBT_CLIENT_DIRECT_TLS,
                "client opened with a TLS ClientHello (sslnegotiation=direct)");
    cr_assert_eq(t.consumed, 0);
    trace_free(&t);

    uint8_t in[32];
    size_t n = put(in, 0, ssl_req, 8);
    n = put(in, n, hello, sizeof hello);
    run_all(CLIENT, in, n, &t, NULL);
    cr_assert_eq(t.n, 2);
    expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
    cr_assert_eq(t.step[1].action, PG_CLOSE);
    cr_assert_eq(t.consumed, 8);
    trace_free(&t);
}

Test(pg_client, cancel_request_3_0)
{
    static const uint8_t in[] = {0x00, 0x00, 0x00, 0x10, 0x04, 0xD2, 0x16, 0x2E,
                                 0x00, 0x00, 0x30, 0x39, 0xDE, 0xAD, 0xBE, 0xEF};
    struct trace t;

    run_all(CLIENT, in, sizeof in, &t, NULL);
    cr_assert_eq(t.n, 1);
    expect_data(&t, 0, PG_CANCEL, in, sizeof in);
    trace_free(&t);
}

Test(pg_client, cancel_request_3_2_after_ssl_request)
{
    uint8_t in[64];
    uint8_t cancel[12 + 32];
    be32(cancel, sizeof cancel);
    be32(cancel + 4, PG_CANCEL_REQUEST_CODE);
    be32(cancel + 8, 4242);
    for (size_t i = 12; i < sizeof cancel; i++)
        cancel[i] = (uint8_t)(i * 7);
    size_t n = put(in, 0, ssl_req, 8);
    n = put(in, n, cancel, sizeof cancel);
    struct trace t;

    run_all(CLIENT, in, n, &t, NULL);
    cr_assert_eq(t.n, 2);
    expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
    expect_data(&t, 1, PG_CANCEL, cancel, sizeof cancel);
    trace_free(&t);
}

Test(pg_client, cancel_key_length_bounds)
{
    static uint8_t in[12 + PG_MAX_CANCEL_KEY + 1];
    struct trace t;

    memset(in, 0x11, sizeof in);
    be32(in + 4, PG_CANCEL_REQUEST_CODE);
    /* 1 and 256 byte keys are accepted, like PG 18 */
    for (uint32_t total = 13; total <= 12 + PG_MAX_CANCEL_KEY;
         total += 12 + PG_MAX_CANCEL_KEY - 13) {
        be32(in, total);
        run_all(CLIENT, in, total, &t, NULL);
        expect_data(&t, 0, PG_CANCEL, in, total);
        trace_free(&t);
    }
    be32(in, 12); /* no key */
    expect_client_fail(in, 12, 0, "invalid length of cancel request packet");
    be32(in, 12 + PG_MAX_CANCEL_KEY + 1);
    expect_client_fail(in, sizeof in, 0, "invalid length of cancel request packet");
}

Test(pg_client, bytes_after_startup_not_consumed)
{
    uint8_t in[64];
    size_t n = put(in, 0, startup_bob, sizeof startup_bob);
    n = put(in, n, "Q\0\0\0\x0dSELECT 1", 14);
    struct trace t;

    run_all(CLIENT, in, n, &t, NULL);
    cr_assert_eq(t.n, 1);
    expect_data(&t, 0, PG_DIAL_UPSTREAM, startup_bob, sizeof startup_bob);
    cr_assert_eq(t.consumed, sizeof startup_bob);
    trace_free(&t);
}

Test(pg_client, unsupported_versions_and_codes)
{
    uint8_t msg[64];
    static const char *const kv[] = {"user", "bob", NULL};
    size_t n = startup(msg, 0x00020000u, kv);
    expect_client_fail(msg, n, 0, "unsupported frontend protocol");
    n = startup(msg, 0x00040000u, kv);
    expect_client_fail(msg, n, 0, "unsupported frontend protocol");
    n = startup(msg, (1234u << 16) | 9999u, kv);
    expect_client_fail(msg, n, 0, "unsupported negotiation request code");
}

Test(pg_client, malformed_startup_layouts)
{
    static const char layout[] = "invalid startup packet layout: expected terminator as last byte";
    uint8_t msg[64];
    be32(msg + 4, 0x00030000u);

    struct {
        const char *body;
        size_t len;
        const char *detail;
    } cases[] = {
        {"", 0, layout},                         /* empty body */
        {"user\0bob\0", 9, layout},              /* no final terminator */
        {"user\0bob", 8, layout},                /* value not terminated */
        {"user", 4, layout},                     /* name not terminated */
        {"user\0", 5, layout},                   /* name without value */
        {"user\0bob\0\0X", 11, layout},          /* bytes after the terminator */
        {"user\0bob\0database\0\0", 19, layout}, /* the terminator eaten as a value */
        {"database\0db\0\0", 13, "no PostgreSQL user name specified in startup packet"},
        {"user\0\0\0", 7, "no PostgreSQL user name specified in startup packet"},
        {"\0", 1, "no PostgreSQL user name specified in startup packet"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(msg + 8, cases[i].body, cases[i].len);
        be32(msg, (uint32_t)(8 + cases[i].len));
        expect_client_fail(msg, 8 + cases[i].len, 0, cases[i].detail);
    }
}

Test(pg_client, finished_machine_consumes_nothing)
{
    struct pg_client *c = new_machine(CLIENT);
    struct pg_step st;

    cr_assert_eq(pg_client_feed(c, startup_bob, sizeof startup_bob, &st), sizeof startup_bob);
    cr_assert_eq(st.action, PG_DIAL_UPSTREAM);
    cr_assert_eq(c->state, PG_C_DONE);
    cr_assert_eq(pg_client_feed(c, (const uint8_t *)"Xxx", 3, &st), 0);
    cr_assert_eq(st.action, PG_RELAY);

    pg_client_free(c);

    pg_client_init(c);
    static const uint8_t cancel[16] = {0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E};
    cr_assert_eq(pg_client_feed(c, cancel, sizeof cancel, &st), sizeof cancel);
    cr_assert_eq(st.action, PG_CANCEL);
    cr_assert_eq(pg_client_feed(c, cancel, sizeof cancel, &st), 0);
    cr_assert_eq(st.action, PG_FAIL);
    cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);

    pg_client_free(c);

    pg_client_init(c);
    static const uint8_t bad[4] = {0, 0, 0, 1};
    cr_assert_eq(pg_client_feed(c, bad, sizeof bad, &st), 4);
    cr_assert_eq(st.action, PG_FAIL);
    cr_assert_eq(st.reason, DBT_CLIENT_PROTOCOL_ERROR);
    cr_assert_eq(c->state, PG_C_FAILED);
    cr_assert_eq(pg_client_feed(c, startup_bob, sizeof startup_bob, &st), 0);
    cr_assert_eq(st.action, PG_FAIL);
    cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
    client_free(c);
}

/* ---- client leg with dbtrust as the TLS server (C1) ---- */

static const uint8_t client_hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03};
static const enum pg_client_tls tls_on[] = {PG_TLS_ALLOW, PG_TLS_REQUIRE};
static const char not_first[] =
    "TLS ClientHello not at the start of the connection (direct TLS must be the first byte)";
static const char tls_required[] = "TLS is required on this listener (client_tls = require): "
                                   "connect with sslmode=require or stronger";

static void expect_start_tls(const struct trace *t, size_t i, bool direct)
{
    cr_assert_lt(i, t->n, "missing step %zu", i);
    const struct rec *r = &t->step[i];
    cr_assert_eq(r->action, PG_START_TLS, "step %zu: action %d", i, r->action);
    cr_assert_eq(r->direct, direct);
    cr_assert_eq(r->reason, DBT_NONE);
    cr_assert_null(r->detail);
    if (direct) {
        cr_assert_eq(r->len, 0, "direct TLS: nothing to write before the handshake");
    } else {
        cr_assert_eq(r->len, 1);
        cr_assert_eq(r->data[0], 'S');
    }
}

Test(pg_client_tls, ssl_request_answered_s)
{
    for (size_t i = 0; i < 2; i++) {
        const struct client_setup setup = {tls_on[i], PLAINTEXT};
        struct trace t;
        struct pg_client *c;

        run_all_from(CLIENT, &setup, ssl_req, sizeof ssl_req, &t, (void **)&c);
        cr_assert_eq(t.n, 1);
        expect_start_tls(&t, 0, false);
        cr_assert_eq(t.consumed, sizeof ssl_req);
        cr_assert_eq(c->state, PG_C_TLS);
        cr_assert(c->seen_ssl_request);
        cr_assert(!c->tls_active, "encrypted only once the proxy says so");
        trace_free(&t);
        client_free(c);

        /* libpq with gssencmode=prefer asks for GSSAPI first: still 'N' */
        uint8_t in[16];
        size_t n = put(in, 0, gss_req, 8);
        n = put(in, n, ssl_req, 8);
        run_all_from(CLIENT, &setup, in, n, &t, NULL);
        cr_assert_eq(t.n, 2);
        expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
        expect_start_tls(&t, 1, false);
        cr_assert_eq(t.consumed, n);
        trace_free(&t);
    }
}

/* Bytes that came in one read with the SSLRequest were sent before any TLS (CVE-2021-23214):
 * whatever they are, they are refused. Only a cut exactly after the SSLRequest (ssl_end) gives
 * PG_START_TLS: what follows in a later read belongs to the handshake. */
static void expect_unencrypted_refused(enum pg_client_tls mode, const uint8_t *in, size_t n,
                                       size_t sends, size_t ssl_end)
{
    const struct client_setup setup = {mode, PLAINTEXT};
    static const char detail[] = "received unencrypted data after SSL request";

    cr_assert_lt(ssl_end, n);
    for (size_t k = 0; k <= n; k++) {
        /* k == 0: byte by byte; k == n: whole; else a cut at k and the rest at once */
        struct pg_client *c = new_client(&setup);
        struct trace t;
        run(CLIENT, c, in, n, k ? k : 1, k ? SIZE_MAX : 1, &t);
        bool cut_there = k == 0 || k == ssl_end;
        cr_assert_eq(t.n, sends + 1, "cut %zu", k);
        for (size_t i = 0; i < sends; i++)
            expect_data(&t, i, PG_SEND_CLIENT, "N", 1);
        if (cut_there) {
            expect_start_tls(&t, sends, false);
            cr_assert_eq(c->state, PG_C_TLS);
        } else {
            expect_fail(&t, sends, PG_FAIL, DBT_CLIENT_PROTOCOL_ERROR, detail);
            cr_assert_eq(c->state, PG_C_FAILED, "cut %zu", k);
            cr_assert(!c->tls_active);
        }
        cr_assert_eq(t.consumed, ssl_end, "cut %zu: the bytes after stay unread", k);
        trace_free(&t);
        client_free(c);
    }
}

Test(pg_client_tls, unencrypted_bytes_after_ssl_request_refused)
{
    for (size_t i = 0; i < 2; i++) {
        uint8_t in[64];
        /* a pipelined (or injected) StartupMessage */
        size_t n = put(in, 0, ssl_req, 8);
        n = put(in, n, startup_bob, sizeof startup_bob);
        expect_unencrypted_refused(tls_on[i], in, n, 0, 8);
        /* even a ClientHello: a client must wait for the 'S' */
        n = put(in, 8, client_hello, sizeof client_hello);
        expect_unencrypted_refused(tls_on[i], in, n, 0, 8);
        /* a single byte is enough */
        n = put(in, 8, "Q", 1);
        expect_unencrypted_refused(tls_on[i], in, n, 0, 8);
        /* after a GSSENCRequest answered 'N' */
        n = put(in, 0, gss_req, 8);
        n = put(in, n, ssl_req, 8);
        n = put(in, n, startup_bob, sizeof startup_bob);
        expect_unencrypted_refused(tls_on[i], in, n, 1, 16);
    }
}

Test(pg_client_tls, failed_machine_stays_failed)
{
    const struct client_setup setup = {PG_TLS_ALLOW, PLAINTEXT};
    struct pg_client *c = new_client(&setup);
    uint8_t in[64];
    size_t n = put(in, 0, ssl_req, 8);
    n = put(in, n, startup_bob, sizeof startup_bob);
    struct pg_step st;

    cr_assert_eq(pg_client_feed(c, in, n, &st), 8);
    cr_assert_eq(st.action, PG_FAIL);
    pg_client_tls_started(c); /* a confused proxy: still nothing is read */
    cr_assert(!c->tls_active);
    cr_assert_eq(c->state, PG_C_FAILED);
    cr_assert_eq(pg_client_feed(c, startup_bob, sizeof startup_bob, &st), 0);
    cr_assert_eq(st.action, PG_FAIL);
    cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
    client_free(c);
}

Test(pg_client_tls, direct_tls_first_byte)
{
    static const uint8_t just_0x16[] = {0x16};
    for (size_t i = 0; i < 2; i++) {
        const struct client_setup setup = {tls_on[i], PLAINTEXT};
        struct trace t;
        struct pg_client *c;

        run_all_from(CLIENT, &setup, client_hello, sizeof client_hello, &t, (void **)&c);
        cr_assert_eq(t.n, 1);
        expect_start_tls(&t, 0, true);
        cr_assert_eq(t.consumed, 0, "the whole ClientHello is the handshake's");
        cr_assert_eq(c->state, PG_C_TLS);
        cr_assert(!c->seen_ssl_request);
        trace_free(&t);
        client_free(c);

        run_all_from(CLIENT, &setup, just_0x16, 1, &t, NULL);
        cr_assert_eq(t.n, 1);
        expect_start_tls(&t, 0, true);
        cr_assert_eq(t.consumed, 0);
        trace_free(&t);
    }
}

Test(pg_client_tls, client_hello_after_negotiation_closes)
{
    static const char old[] = "client opened with a TLS ClientHello (sslnegotiation=direct)";
    uint8_t in[32];
    struct trace t;

    /* client TLS off: the old behaviour, after an SSL 'N' round and after a GSSENC one */
    const uint8_t *first[] = {ssl_req, gss_req};
    for (size_t i = 0; i < 2; i++) {
        const struct client_setup off = {PG_TLS_OFF, PLAINTEXT};
        size_t n = put(in, 0, first[i], 8);
        n = put(in, n, client_hello, sizeof client_hello);
        run_all_from(CLIENT, &off, in, n, &t, NULL);
        cr_assert_eq(t.n, 2);
        expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
        expect_fail(&t, 1, PG_CLOSE, DBT_CLIENT_DIRECT_TLS, old);
        cr_assert_eq(t.consumed, 8);
        trace_free(&t);
    }

    for (size_t i = 0; i < 2; i++) {
        /* client TLS on: direct TLS only as the very first byte, like the server */
        const struct client_setup plain = {tls_on[i], PLAINTEXT};
        size_t n = put(in, 0, gss_req, 8);
        n = put(in, n, client_hello, sizeof client_hello);
        run_all_from(CLIENT, &plain, in, n, &t, NULL);
        cr_assert_eq(t.n, 2);
        expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
        expect_fail(&t, 1, PG_CLOSE, DBT_CLIENT_DIRECT_TLS, not_first);
        cr_assert_eq(t.consumed, 8);
        trace_free(&t);

        /* and never inside TLS */
        for (enum client_start s = AFTER_SSL_REQUEST; s <= AFTER_DIRECT_TLS; s++) {
            const struct client_setup inside = {tls_on[i], s};
            run_all_from(CLIENT, &inside, client_hello, sizeof client_hello, &t, NULL);
            cr_assert_eq(t.n, 1);
            expect_fail(&t, 0, PG_CLOSE, DBT_CLIENT_DIRECT_TLS, not_first);
            cr_assert_eq(t.consumed, 0);
            trace_free(&t);
        }
    }
}

Test(pg_client_tls, requests_inside_tls_answered_n)
{
    static const char *const kv[] = {"user", "alice", "database", "shop", NULL};
    uint8_t msg[128], in[256];
    size_t mlen = startup(msg, 0x00030000u, kv);

    for (size_t i = 0; i < 2; i++) {
        /* direct TLS: neither request was seen before TLS; each gets one 'N', either order */
        const struct client_setup direct = {tls_on[i], AFTER_DIRECT_TLS};
        const uint8_t *first[] = {ssl_req, gss_req}, *second[] = {gss_req, ssl_req};
        for (size_t j = 0; j < 2; j++) {
            size_t n = put(in, 0, first[j], 8);
            n = put(in, n, second[j], 8);
            n = put(in, n, msg, mlen);
            struct trace t;
            struct pg_client *c;
            run_all_from(CLIENT, &direct, in, n, &t, (void **)&c);
            cr_assert_eq(t.n, 3);
            expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
            expect_data(&t, 1, PG_SEND_CLIENT, "N", 1);
            expect_data(&t, 2, PG_DIAL_UPSTREAM, msg, mlen);
            cr_assert_eq(t.consumed, n);
            cr_assert(c->tls_active);
            cr_assert_str_eq(c->user, "alice");
            trace_free(&t);
            client_free(c);
        }

        /* after SSLRequest/'S': a GSSENCRequest still gets its 'N' */
        const struct client_setup via_s = {tls_on[i], AFTER_SSL_REQUEST};
        size_t n = put(in, 0, gss_req, 8);
        n = put(in, n, msg, mlen);
        struct trace t;
        run_all_from(CLIENT, &via_s, in, n, &t, NULL);
        cr_assert_eq(t.n, 2);
        expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
        expect_data(&t, 1, PG_DIAL_UPSTREAM, msg, mlen);
        trace_free(&t);
    }
}

static void expect_fail_from(const struct client_setup *setup, const uint8_t *in, size_t n,
                             size_t sends, const char *detail)
{
    struct trace t;
    run_all_from(CLIENT, setup, in, n, &t, NULL);
    cr_assert_eq(t.n, sends + 1);
    for (size_t i = 0; i < sends; i++)
        expect_data(&t, i, PG_SEND_CLIENT, "N", 1);
    expect_fail(&t, sends, PG_FAIL, DBT_CLIENT_PROTOCOL_ERROR, detail);
    trace_free(&t);
}

Test(pg_client_tls, duplicate_requests_inside_tls_fail)
{
    uint8_t in[32];
    for (size_t i = 0; i < 2; i++) {
        /* the SSLRequest answered 'S' counts: the server, too, allows no second one */
        const struct client_setup via_s = {tls_on[i], AFTER_SSL_REQUEST};
        expect_fail_from(&via_s, ssl_req, 8, 0, "duplicate SSLRequest");
        size_t n = put(in, 0, gss_req, 8);
        n = put(in, n, gss_req, 8);
        expect_fail_from(&via_s, in, n, 1, "duplicate GSSENCRequest");

        const struct client_setup direct = {tls_on[i], AFTER_DIRECT_TLS};
        n = put(in, 0, ssl_req, 8);
        n = put(in, n, ssl_req, 8);
        expect_fail_from(&direct, in, n, 1, "duplicate SSLRequest");
        n = put(in, 0, gss_req, 8);
        n = put(in, n, ssl_req, 8);
        n = put(in, n, gss_req, 8);
        expect_fail_from(&direct, in, n, 2, "duplicate GSSENCRequest");

        /* a GSSENCRequest answered 'N' in plaintext counts inside TLS too */
        struct pg_client *c = new_client(&(struct client_setup){tls_on[i], PLAINTEXT});
        struct pg_step st;
        cr_assert_eq(pg_client_feed(c, gss_req, 8, &st), 8);
        cr_assert_eq(st.action, PG_SEND_CLIENT);
        enter_tls(c, false);
        cr_assert_eq(pg_client_feed(c, gss_req, 8, &st), 8);
        cr_assert_eq(st.action, PG_FAIL);
        cr_assert_str_eq(st.detail, "duplicate GSSENCRequest");
        client_free(c);
    }
}

Test(pg_client_tls, startup_inside_tls_dials)
{
    static const char *const kv[] = {"user", "alice",   "database", "shop", "application_name",
                                     "psql", "options", "-c x=1",   NULL};
    uint8_t msg[200], in[256];
    size_t mlen = startup(msg, 0x00030002u, kv);
    size_t n = put(in, 0, msg, mlen);
    n = put(in, n, "Q\0\0\0\x0dSELECT 1", 14);

    for (size_t i = 0; i < 2; i++) {
        for (enum client_start s = AFTER_SSL_REQUEST; s <= AFTER_DIRECT_TLS; s++) {
            const struct client_setup setup = {tls_on[i], s};
            struct trace t;
            struct pg_client *c;
            run_all_from(CLIENT, &setup, in, n, &t, (void **)&c);
            cr_assert_eq(t.n, 1);
            expect_data(&t, 0, PG_DIAL_UPSTREAM, msg, mlen);
            cr_assert_eq(t.consumed, mlen, "bytes after the StartupMessage are relay data");
            cr_assert_str_eq(c->user, "alice");
            cr_assert_str_eq(c->database, "shop");
            cr_assert_str_eq(c->application_name, "psql");
            cr_assert_eq(c->version, 0x00030002u);
            struct pg_step st;
            cr_assert_eq(pg_client_feed(c, in + mlen, n - mlen, &st), 0);
            cr_assert_eq(st.action, PG_RELAY);
            trace_free(&t);
            client_free(c);
        }
    }
}

/* CancelRequest 3.0 (4-byte key) and 3.2 (32-byte key, what PG 18 servers hand out). */
static size_t cancel_packet(uint8_t *b, size_t key_len)
{
    be32(b, (uint32_t)(12 + key_len));
    be32(b + 4, PG_CANCEL_REQUEST_CODE);
    be32(b + 8, 4242);
    for (size_t i = 0; i < key_len; i++)
        b[12 + i] = (uint8_t)(0xC0 + i);
    return 12 + key_len;
}

Test(pg_client_tls, cancel_inside_tls)
{
    static const size_t keys[] = {4, 32};
    uint8_t in[64];

    for (size_t i = 0; i < 2; i++) {
        for (enum client_start s = AFTER_SSL_REQUEST; s <= AFTER_DIRECT_TLS; s++) {
            for (size_t k = 0; k < 2; k++) {
                const struct client_setup setup = {tls_on[i], s};
                size_t n = cancel_packet(in, keys[k]);
                struct trace t;
                run_all_from(CLIENT, &setup, in, n, &t, NULL);
                cr_assert_eq(t.n, 1);
                expect_data(&t, 0, PG_CANCEL, in, n);
                trace_free(&t);
            }
        }
    }
}

Test(pg_client_tls, require_refuses_plaintext_startup)
{
    static const char *const kv[] = {"user", "alice", "database", "shop", "application_name",
                                     "psql", NULL};
    const struct client_setup setup = {PG_TLS_REQUIRE, PLAINTEXT};
    uint8_t msg[128], in[256];
    size_t mlen = startup(msg, 0x00030000u, kv);

    for (size_t sends = 0; sends < 2; sends++) {
        size_t n = sends ? put(in, 0, gss_req, 8) : 0;
        n = put(in, n, msg, mlen);
        struct trace t;
        struct pg_client *c;
        run_all_from(CLIENT, &setup, in, n, &t, (void **)&c);
        cr_assert_eq(t.n, sends + 1);
        if (sends)
            expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
        expect_fail(&t, sends, PG_FAIL, DBT_CLIENT_TLS_REQUIRED, tls_required);
        cr_assert_eq(t.consumed, n, "read whole, for the log");
        cr_assert_str_eq(c->user, "alice");
        cr_assert_str_eq(c->database, "shop");
        cr_assert_str_eq(c->application_name, "psql");
        cr_assert_eq(c->state, PG_C_FAILED);
        struct pg_step st;
        cr_assert_eq(pg_client_feed(c, msg, mlen, &st), 0);
        cr_assert_eq(st.action, PG_FAIL);
        cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
        trace_free(&t);
        client_free(c);
    }

    /* a malformed packet is a protocol error first, as before */
    memcpy(in + 8, "user\0bob\0", 9);
    be32(in, 17);
    be32(in + 4, 0x00030000u);
    expect_fail_from(&setup, in, 17, 0,
                     "invalid startup packet layout: expected terminator as last byte");
}

Test(pg_client_tls, require_accepts_plaintext_cancel)
{
    const struct client_setup setup = {PG_TLS_REQUIRE, PLAINTEXT};
    uint8_t in[64];
    struct trace t;

    size_t n = cancel_packet(in, 4);
    run_all_from(CLIENT, &setup, in, n, &t, NULL);
    cr_assert_eq(t.n, 1);
    expect_data(&t, 0, PG_CANCEL, in, n);
    trace_free(&t);

    n = put(in, 0, gss_req, 8);
    size_t cn = cancel_packet(in + n, 32);
    run_all_from(CLIENT, &setup, in, n + cn, &t, NULL);
    cr_assert_eq(t.n, 2);
    expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
    expect_data(&t, 1, PG_CANCEL, in + n, cn);
    trace_free(&t);
}

Test(pg_client_tls, allow_accepts_plaintext_startup)
{
    const struct client_setup setup = {PG_TLS_ALLOW, PLAINTEXT};
    uint8_t in[64];
    struct trace t;
    struct pg_client *c;

    run_all_from(CLIENT, &setup, startup_bob, sizeof startup_bob, &t, (void **)&c);
    cr_assert_eq(t.n, 1);
    expect_data(&t, 0, PG_DIAL_UPSTREAM, startup_bob, sizeof startup_bob);
    cr_assert(!c->tls_active);
    cr_assert_str_eq(c->user, "bob");
    trace_free(&t);
    client_free(c);

    size_t n = put(in, 0, gss_req, 8);
    n = put(in, n, startup_bob, sizeof startup_bob);
    run_all_from(CLIENT, &setup, in, n, &t, NULL);
    cr_assert_eq(t.n, 2);
    expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
    expect_data(&t, 1, PG_DIAL_UPSTREAM, startup_bob, sizeof startup_bob);
    trace_free(&t);
}

Test(pg_client_tls, caller_bugs_fail_closed)
{
    const struct client_setup setup = {PG_TLS_ALLOW, PLAINTEXT};
    struct pg_step st;

    /* fed before the handshake completed: those bytes were never decrypted */
    struct pg_client *c = new_client(&setup);
    cr_assert_eq(pg_client_feed(c, ssl_req, 8, &st), 8);
    cr_assert_eq(st.action, PG_START_TLS);
    cr_assert_eq(pg_client_feed(c, startup_bob, sizeof startup_bob, &st), 0);
    cr_assert_eq(st.action, PG_FAIL);
    cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
    cr_assert_str_eq(st.detail, "client fed before pg_client_tls_started");
    cr_assert_eq(c->state, PG_C_FAILED);
    pg_client_tls_started(c);
    cr_assert(!c->tls_active);
    cr_assert_eq(pg_client_feed(c, startup_bob, sizeof startup_bob, &st), 0);
    cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);

    /* the ClientHello fed again after a direct PG_START_TLS */
    pg_client_free(c);
    pg_client_init(c);
    c->tls = PG_TLS_REQUIRE;
    cr_assert_eq(pg_client_feed(c, client_hello, sizeof client_hello, &st), 0);
    cr_assert_eq(st.action, PG_START_TLS);
    cr_assert_eq(pg_client_feed(c, client_hello, sizeof client_hello, &st), 0);
    cr_assert_eq(st.action, PG_FAIL);
    cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);

    /* tls_started without a PG_START_TLS */
    pg_client_free(c);
    pg_client_init(c);
    c->tls = PG_TLS_ALLOW;
    pg_client_tls_started(c);
    cr_assert(!c->tls_active);
    cr_assert_eq(pg_client_feed(c, startup_bob, sizeof startup_bob, &st), 0);
    cr_assert_eq(st.action, PG_FAIL);
    cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);

    /* client TLS off: never a PG_START_TLS, and init resets the mode */
    pg_client_free(c);
    pg_client_init(c);
    cr_assert_eq(c->tls, PG_TLS_OFF);
    cr_assert_eq(pg_client_feed(c, ssl_req, 8, &st), 8);
    cr_assert_eq(st.action, PG_SEND_CLIENT);
    cr_assert(!st.direct);
    client_free(c);
}

/* ---- upstream's answer to the SSLRequest ---- */

static enum dbt_reason ssl_answer(const char *in, size_t len, const char **detail)
{
    *detail = NULL;
    enum dbt_reason r = pg_check_ssl_answer((const uint8_t *)in, len, detail);
    cr_assert_not_null(*detail);
    return r;
}

Test(pg_ssl_answer, all_branches)
{
    const char *d;

    cr_assert_eq(ssl_answer("S", 1, &d), DBT_NONE);
    cr_assert_eq(ssl_answer("SE", 2, &d), DBT_UPSTREAM_PLAINTEXT_AFTER_SSL_RESPONSE);
    cr_assert_str_eq(d, "1 unencrypted byte after the SSL response (CVE-2021-23222)");
    cr_assert_eq(ssl_answer("S\x16\x03\x03\x00", 5, &d), DBT_UPSTREAM_PLAINTEXT_AFTER_SSL_RESPONSE);
    cr_assert_str_eq(d, "4 unencrypted bytes after the SSL response (CVE-2021-23222)");
    cr_assert_eq(ssl_answer("SR\0\0\0\x08\0\0\0\0", 10, &d),
                 DBT_UPSTREAM_PLAINTEXT_AFTER_SSL_RESPONSE);
    cr_assert_str_eq(d, "more than 4 unencrypted bytes after the SSL response (CVE-2021-23222)");
    cr_assert_eq(ssl_answer("N", 1, &d), DBT_UPSTREAM_REFUSED_TLS);
    cr_assert_str_eq(d, "server does not support SSL (answered 'N')");

    static const char err[] = "EFATAL: click http://evil.example/";
    cr_assert_eq(ssl_answer(err, sizeof err - 1, &d), DBT_UPSTREAM_REFUSED_TLS);
    cr_assert_null(strstr(d, "evil"), "the unauthenticated error text must not leak");
    cr_assert_str_eq(d, "server answered the SSL request with an error (text not shown: server "
                        "not authenticated)");

    cr_assert_eq(ssl_answer("\x16", 1, &d), DBT_UPSTREAM_PROTOCOL_ERROR);
    cr_assert_str_eq(d, "unexpected answer 0x16 to the SSL request");
    cr_assert_eq(ssl_answer("\0", 1, &d), DBT_UPSTREAM_PROTOCOL_ERROR);
    cr_assert_str_eq(d, "unexpected answer 0x00 to the SSL request");
    cr_assert_eq(ssl_answer("\xff", 1, &d), DBT_UPSTREAM_PROTOCOL_ERROR);
    cr_assert_str_eq(d, "unexpected answer 0xff to the SSL request");
    cr_assert_eq(ssl_answer("G", 1, &d), DBT_UPSTREAM_PROTOCOL_ERROR);
    cr_assert_str_eq(d, "unexpected answer 0x47 to the SSL request");
    cr_assert_eq(ssl_answer("", 0, &d), DBT_UPSTREAM_PROTOCOL_ERROR);
}

Test(pg_ssl_answer, tls_record_start)
{
    cr_assert(pg_is_tls_record_start(0x16));
    cr_assert(pg_is_tls_record_start(0x15));
    for (int b = 0; b < 256; b++)
        if (b != 0x15 && b != 0x16)
            cr_assert(!pg_is_tls_record_start((uint8_t)b), "0x%02x", b);
}

/* ---- server leg ---- */

static const uint8_t sasl_both[] = "R\x00\x00\x00\x2A\x00\x00\x00\x0A"
                                   "SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0"; /* + implicit NUL */
static const uint8_t sasl_stripped[] = "R\x00\x00\x00\x17\x00\x00\x00\x0A"
                                       "SCRAM-SHA-256\0";
static const uint8_t md5_req[] = {'R', 0, 0, 0, 12, 0, 0, 0, 5, 0xA1, 0xB2, 0xC3, 0xD4};
static const uint8_t neg_version[] = "v\x00\x00\x00\x15\x00\x03\x00\x00\x00\x00\x00\x01"
                                     "_pq_.foo"; /* + implicit NUL */

Test(pg_server, sasl_plus_stripped)
{
    struct trace t;

    cr_assert_eq(sizeof sasl_both, 43);
    cr_assert_eq(sizeof sasl_stripped, 24);
    run_all(SERVER, sasl_both, sizeof sasl_both, &t, NULL);
    cr_assert_eq(t.n, 2);
    expect_data(&t, 0, PG_SEND_CLIENT, sasl_stripped, sizeof sasl_stripped);
    cr_assert_eq(t.step[1].action, PG_RELAY);
    cr_assert_eq(t.consumed, sizeof sasl_both);
    trace_free(&t);
}

Test(pg_server, sasl_keeps_other_mechanisms_in_order)
{
    static const uint8_t in[] = "R\x00\x00\x00\x36\x00\x00\x00\x0A"
                                "OAUTHBEARER\0SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0";
    static const uint8_t want[] = "R\x00\x00\x00\x23\x00\x00\x00\x0A"
                                  "OAUTHBEARER\0SCRAM-SHA-256\0";
    struct trace t;

    run_all(SERVER, in, sizeof in, &t, NULL);
    expect_data(&t, 0, PG_SEND_CLIENT, want, sizeof want);
    cr_assert_eq(t.step[1].action, PG_RELAY);
    trace_free(&t);
}

static void expect_server_fail(const uint8_t *in, size_t n, size_t sends, const char *detail)
{
    struct trace t;
    run_all(SERVER, in, n, &t, NULL);
    cr_assert_eq(t.n, sends + 1);
    for (size_t i = 0; i < sends; i++)
        cr_assert_eq(t.step[i].action, PG_SEND_CLIENT);
    expect_fail(&t, sends, PG_FAIL, DBT_UPSTREAM_PROTOCOL_ERROR, detail);
    trace_free(&t);
}

Test(pg_server, sasl_only_plus_fails)
{
    static const uint8_t in[] = "R\x00\x00\x00\x1C\x00\x00\x00\x0A"
                                "SCRAM-SHA-256-PLUS\0";
    expect_server_fail(in, sizeof in, 0, "server offers only channel-binding SASL mechanisms");
}

Test(pg_server, sasl_malformed_lists_fail)
{
    static const uint8_t unterminated[] = {'R', 0, 0, 0, 13, 0, 0, 0, 10, 'S', 'C', 'R', 'A', 'M'};
    expect_server_fail(unterminated, sizeof unterminated, 0, "malformed SASL mechanism list");
    static const uint8_t no_final[] = "R\x00\x00\x00\x16\x00\x00\x00\x0ASCRAM-SHA-256";
    expect_server_fail(no_final, sizeof no_final, 0, "malformed SASL mechanism list");
    static const uint8_t trailing[] = "R\x00\x00\x00\x18\x00\x00\x00\x0ASCRAM-SHA-256\0\0X";
    expect_server_fail(trailing, sizeof trailing - 1, 0, "malformed SASL mechanism list");
    static const uint8_t empty[] = {'R', 0, 0, 0, 9, 0, 0, 0, 10, 0};
    expect_server_fail(empty, sizeof empty, 0, "malformed SASL mechanism list");
    static const uint8_t no_code[] = {'R', 0, 0, 0, 6, 0, 0};
    expect_server_fail(no_code, sizeof no_code, 0, "authentication request without a code");
}

/* A NegotiateProtocolVersion then the first 'R' from the server: the 'v' reaches the client
 * byte for byte, the 'R' as `auth_out`, then the machine relays. */
static void expect_negotiate_then_auth(const uint8_t *neg, size_t neg_len, const uint8_t *auth,
                                       size_t auth_len, const uint8_t *auth_out, size_t out_len)
{
    uint8_t in[128];
    size_t n = put(in, 0, neg, neg_len);
    n = put(in, n, auth, auth_len);
    struct trace t;

    run_all(SERVER, in, n, &t, NULL);
    cr_assert_eq(t.n, 3);
    expect_data(&t, 0, PG_SEND_CLIENT, neg, neg_len);
    expect_data(&t, 1, PG_SEND_CLIENT, auth_out, out_len);
    cr_assert_eq(t.step[2].action, PG_RELAY);
    cr_assert_eq(t.consumed, n);
    trace_free(&t);
}

Test(pg_server, negotiate_version_then_md5_forwarded_unchanged)
{
    cr_assert_eq(sizeof neg_version, 22);
    expect_negotiate_then_auth(neg_version, sizeof neg_version, md5_req, sizeof md5_req, md5_req,
                               sizeof md5_req);
}

/* What PostgreSQL 18 answers a greasing SCRAM client (3.9999 plus one unknown _pq_ option): 'v'
 * naming 3.2 and the option, then AuthenticationSASL. The 'v' must reach the client byte for byte
 * (libpq checks both the version and the option list); the SASL list loses -PLUS as always. */
Test(pg_server, negotiate_3_2_then_sasl_stripped)
{
    static const uint8_t neg_3_2[] = "v\x00\x00\x00\x23\x00\x03\x00\x02\x00\x00\x00\x01"
                                     "_pq_.something_unknown"; /* + implicit NUL */

    cr_assert_eq(sizeof neg_3_2, 36);
    expect_negotiate_then_auth(neg_3_2, sizeof neg_3_2, sasl_both, sizeof sasl_both, sasl_stripped,
                               sizeof sasl_stripped);
}

Test(pg_server, error_forwarded_then_relay)
{
    static const uint8_t err[] = "E\x00\x00\x00\x17SFATAL\0C28000\0Mno\0"; /* + final NUL */
    static const uint8_t notice[] = "N\x00\x00\x00\x0dSNOTICE\0";
    uint8_t in[64];
    size_t n = put(in, 0, notice, sizeof notice);
    n = put(in, n, err, sizeof err);
    n = put(in, n, "junk", 4);
    struct trace t;

    run_all(SERVER, in, n, &t, NULL);
    cr_assert_eq(t.n, 3);
    expect_data(&t, 0, PG_SEND_CLIENT, notice, sizeof notice);
    expect_data(&t, 1, PG_SEND_CLIENT, err, sizeof err);
    cr_assert_eq(t.step[2].action, PG_RELAY);
    cr_assert_eq(t.consumed, n - 4);
    trace_free(&t);
}

Test(pg_server, other_message_before_auth_fails_naming_it)
{
    /* A server that answers the StartupMessage with anything but R/E/v/N: libpq would say
     * "expected authentication request from server, but received q" and no more. */
    static const uint8_t query[] = {'q', 0, 0, 0, 8, 1, 2, 3, 4};
    static const uint8_t ready[] = {'Z', 0, 0, 0, 5, 'I'};
    const uint8_t *bad[] = {query, ready};
    const size_t len[] = {sizeof query, sizeof ready};

    for (size_t i = 0; i < 2; i++) {
        struct trace t;
        run_all(SERVER, bad[i], len[i], &t, NULL);
        cr_assert_eq(t.n, 1);
        cr_assert_eq(t.step[0].action, PG_FAIL);
        cr_assert_eq(t.step[0].reason, DBT_UPSTREAM_PROTOCOL_ERROR);
        cr_assert_str_eq(t.step[0].detail, "upstream sent a message other than authentication, "
                                           "an error or a notice before authentication");
        trace_free(&t);
    }
}

Test(pg_server, relay_bytes_after_first_r_not_consumed)
{
    static const uint8_t ok[] = {'R', 0, 0, 0, 8, 0, 0, 0, 0};
    static const uint8_t tail[] = "S\x00\x00\x00\x16server_version\0"
                                  "17\0Z";
    uint8_t in[64];
    size_t n = put(in, 0, ok, sizeof ok);
    n = put(in, n, tail, sizeof tail);
    struct trace t;

    run_all(SERVER, in, n, &t, NULL);
    cr_assert_eq(t.n, 2);
    expect_data(&t, 0, PG_SEND_CLIENT, ok, sizeof ok);
    cr_assert_eq(t.step[1].action, PG_RELAY);
    cr_assert_eq(t.consumed, sizeof ok);
    trace_free(&t);
}

Test(pg_server, message_size_bounds)
{
    static uint8_t in[PG_MAX_SERVER_STARTUP_MSG + 1];
    struct trace t;

    memset(in, 'x', sizeof in);
    in[0] = 'N';
    be32(in + 1, PG_MAX_SERVER_STARTUP_MSG - 1); /* the largest message that fits */
    run_all(SERVER, in, PG_MAX_SERVER_STARTUP_MSG, &t, NULL);
    cr_assert_eq(t.n, 1);
    expect_data(&t, 0, PG_SEND_CLIENT, in, PG_MAX_SERVER_STARTUP_MSG);
    trace_free(&t);

    /* one byte more: refused on the 5 header bytes alone */
    be32(in + 1, PG_MAX_SERVER_STARTUP_MSG);
    expect_server_fail(in, 5, 0, "upstream startup message longer than 16384 bytes");
    be32(in + 1, 0xFFFFFFFFu);
    expect_server_fail(in, 5, 0, "upstream startup message longer than 16384 bytes");
    be32(in + 1, 3);
    expect_server_fail(in, 5, 0, "upstream message length below 4");

    uint8_t two[32];
    size_t n = put(two, 0, neg_version, sizeof neg_version);
    n = put(two, n, "R\x00\x00\x00\x02", 5);
    expect_server_fail(two, n, 1, "upstream message length below 4");
}

Test(pg_server, finished_machine_consumes_nothing)
{
    struct pg_server *s = new_machine(SERVER);
    struct pg_step st;

    cr_assert_eq(pg_server_feed(s, md5_req, sizeof md5_req, &st), sizeof md5_req);
    cr_assert_eq(st.action, PG_SEND_CLIENT);
    cr_assert_eq(pg_server_feed(s, md5_req, sizeof md5_req, &st), 0);
    cr_assert_eq(st.action, PG_RELAY);

    pg_server_free(s);

    pg_server_init(s);
    static const uint8_t bad[] = {'N', 0, 0, 0, 0};
    cr_assert_eq(pg_server_feed(s, bad, sizeof bad, &st), sizeof bad);
    cr_assert_eq(st.action, PG_FAIL);
    cr_assert_eq(pg_server_feed(s, md5_req, sizeof md5_req, &st), 0);
    cr_assert_eq(st.action, PG_FAIL);
    cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
    free_machine(SERVER, s);
}

Test(pg_server, sasl_offered_only_for_sasl)
{
    static const uint8_t cleartext_req[] = {'R', 0, 0, 0, 8, 0, 0, 0, 3};
    static const uint8_t ok[] = {'R', 0, 0, 0, 8, 0, 0, 0, 0};
    static const uint8_t err[] = "E\x00\x00\x00\x17SFATAL\0C28000\0Mno\0";
    static const uint8_t only_plus[] = "R\x00\x00\x00\x1C\x00\x00\x00\x0A"
                                       "SCRAM-SHA-256-PLUS\0";
    uint8_t in[128];
    size_t n = put(in, 0, neg_version, sizeof neg_version);
    n = put(in, n, sasl_both, sizeof sasl_both);
    struct {
        const uint8_t *in;
        size_t len;
        bool sasl;
    } cases[] = {
        {sasl_both, sizeof sasl_both, true},
        {in, n, true}, /* after NegotiateProtocolVersion */
        {md5_req, sizeof md5_req, false},
        {cleartext_req, sizeof cleartext_req, false},
        {ok, sizeof ok, false}, /* trust */
        {err, sizeof err, false},
        {only_plus, sizeof only_plus, false}, /* refused, nothing forwarded */
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct pg_server *s = new_machine(SERVER);
        cr_assert(!s->sasl_offered, "init clears it");
        struct trace t;
        run(SERVER, s, cases[i].in, cases[i].len, cases[i].len, cases[i].len, &t);
        cr_assert_eq(s->sasl_offered, cases[i].sasl, "case %zu", i);
        trace_free(&t);
        free_machine(SERVER, s);
    }
}

/* ---- the client's SASLInitialResponse (C1) ---- */

/* 'p' Int32 len, mechanism\0, Int32 resp_len, resp (resp_len bytes). */
static size_t sasl_initial(uint8_t *b, const char *mech, const char *resp, size_t resp_len)
{
    b[0] = 'p';
    size_t at = put(b, 5, mech, strlen(mech) + 1);
    be32(b + at, (uint32_t)resp_len);
    at = put(b, at + 4, resp, resp_len);
    be32(b + 1, (uint32_t)(at - 1));
    return at;
}

/* Every prefix shorter than decide is NEED_MORE; from decide on, always want. */
static void expect_flag(const uint8_t *in, size_t n, enum pg_sasl_flag want, size_t decide)
{
    cr_assert_leq(decide, n);
    for (size_t k = 0; k <= n; k++) {
        enum pg_sasl_flag got = pg_sasl_initial_flag(in, k);
        cr_assert_eq(got, k < decide ? PG_SASL_NEED_MORE : want, "prefix %zu of %zu: %d", k, n,
                     got);
    }
}

/* What libpq sends (fe-auth-scram.c): an empty user name, the server has it already. */
#define CFM_REST ",,n=,r=rOprNGfwEbeRWgbNEkqO"

Test(pg_sasl, gs2_flags)
{
    uint8_t b[256];
    size_t n;

    cr_assert_eq(pg_sasl_initial_flag(NULL, 0), PG_SASL_NEED_MORE);
    /* decided at 5 + "SCRAM-SHA-256\0" + 4 + 2 = 25 */
    n = sasl_initial(b, "SCRAM-SHA-256", "n" CFM_REST, strlen("n" CFM_REST));
    expect_flag(b, n, PG_SASL_NO_BINDING, 25);
    n = sasl_initial(b, "SCRAM-SHA-256", "y" CFM_REST, strlen("y" CFM_REST));
    expect_flag(b, n, PG_SASL_BINDING_WANTED, 25);
    static const char p[] = "p=tls-server-end-point" CFM_REST;
    n = sasl_initial(b, "SCRAM-SHA-256-PLUS", p, strlen(p));
    expect_flag(b, n, PG_SASL_BINDING, 30);
    /* the flag is what the client sent, whatever the mechanism: the server judges that */
    n = sasl_initial(b, "SCRAM-SHA-256", p, strlen(p));
    expect_flag(b, n, PG_SASL_BINDING, 25);
    /* the shortest decidable header */
    n = sasl_initial(b, "SCRAM-SHA-256", "y,", 2);
    expect_flag(b, n, PG_SASL_BINDING_WANTED, 25);
    /* bytes after the message are not its business */
    n = sasl_initial(b, "SCRAM-SHA-256", "n" CFM_REST, strlen("n" CFM_REST));
    n = put(b, n, "p\0\0\0\x08junk", 9);
    expect_flag(b, n, PG_SASL_NO_BINDING, 25);
}

Test(pg_sasl, not_a_sasl_initial_response)
{
    uint8_t b[64];
    /* a Query, a Terminate, a byte that starts nothing */
    expect_flag((const uint8_t *)"Q\0\0\0\x0dSELECT 1", 14, PG_SASL_OTHER, 1);
    expect_flag((const uint8_t *)"X\0\0\0\x04", 5, PG_SASL_OTHER, 1);
    expect_flag((const uint8_t *)"P", 1, PG_SASL_OTHER, 1);
    /* a PasswordMessage is a 'p' too: its "mechanism" is no SCRAM */
    size_t n = put(b, 0, "p\0\0\0\x28md5", 8);
    n = put(b, n, "0123456789abcdef0123456789abcdef", 32);
    b[n++] = 0;
    cr_assert_eq(n, 41);
    expect_flag(b, n, PG_SASL_OTHER, n);
    n = put(b, 0, "p\0\0\0\x0bsecret", 11);
    b[n++] = 0;
    expect_flag(b, n, PG_SASL_OTHER, n);
}

Test(pg_sasl, other_mechanisms_left_to_the_server)
{
    uint8_t b[256];
    /* OAUTHBEARER's gs2 'y' is fine with PostgreSQL: not dbtrust's to refuse */
    static const char oauth[] = "y,,\x01"
                                "auth=Bearer abc\x01\x01";
    size_t n = sasl_initial(b, "OAUTHBEARER", oauth, strlen(oauth));
    expect_flag(b, n, PG_SASL_OTHER, 5 + 12);
    n = sasl_initial(b, "", "n" CFM_REST, strlen("n" CFM_REST));
    expect_flag(b, n, PG_SASL_OTHER, 6);
    n = sasl_initial(b, "SCRAM", "y" CFM_REST, strlen("y" CFM_REST));
    expect_flag(b, n, PG_SASL_OTHER, 5 + 6);
}

Test(pg_sasl, absurd_lengths)
{
    uint8_t b[256];
    const size_t cfm = strlen("y" CFM_REST);
    size_t n = sasl_initial(b, "SCRAM-SHA-256", "y" CFM_REST, cfm);

    /* message length word */
    static const uint32_t bad_len[] = {0, 3, 4 + 65536, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof bad_len / sizeof bad_len[0]; i++) {
        be32(b + 1, bad_len[i]);
        expect_flag(b, n, PG_SASL_OTHER, 5);
    }
    /* too short to hold the mechanism's NUL: decided at the message's end */
    be32(b + 1, 10);
    expect_flag(b, n, PG_SASL_OTHER, 11);
    /* the mechanism fits, resp_len and a gs2 header do not */
    be32(b + 1, 4 + 14 + 4 + 1);
    expect_flag(b, n, PG_SASL_OTHER, 19);
    /* longer than the bytes at hand is fine as long as it agrees with resp_len */
    be32(b + 1, (uint32_t)(n - 1 + 1000));
    be32(b + 19, (uint32_t)(cfm + 1000));
    expect_flag(b, n, PG_SASL_BINDING_WANTED, 25);

    /* resp_len: one off either way, -1 (no initial response), 0 */
    static const int64_t delta[] = {-1, 1};
    for (size_t i = 0; i < 2; i++) {
        n = sasl_initial(b, "SCRAM-SHA-256", "y" CFM_REST, cfm);
        be32(b + 19, (uint32_t)((int64_t)cfm + delta[i]));
        expect_flag(b, n, PG_SASL_OTHER, 23);
    }
    be32(b + 19, 0xFFFFFFFFu);
    expect_flag(b, n, PG_SASL_OTHER, 23);
    be32(b + 19, 0);
    expect_flag(b, n, PG_SASL_OTHER, 23);
    n = sasl_initial(b, "SCRAM-SHA-256", "y", 1); /* not even a whole gs2 flag */
    expect_flag(b, n, PG_SASL_OTHER, 19);
}

Test(pg_sasl, largest_message)
{
    /* the server's bound: a body of 65535 bytes (PG_MAX_AUTH_TOKEN_LENGTH) */
    static uint8_t b[1 + 4 + 65535 + 1];
    static char resp[65535];
    size_t rlen = 65535 - 14 - 4;
    memset(resp, 'x', rlen);
    memcpy(resp, "n,,", 3);
    size_t n = sasl_initial(b, "SCRAM-SHA-256", resp, rlen);
    cr_assert_eq(n, 1 + 4 + 65535);
    cr_assert_eq(pg_sasl_initial_flag(b, n), PG_SASL_NO_BINDING);
    cr_assert_eq(pg_sasl_initial_flag(b, 25), PG_SASL_NO_BINDING);
    n = sasl_initial(b, "SCRAM-SHA-256", resp, rlen + 1);
    cr_assert_eq(pg_sasl_initial_flag(b, n), PG_SASL_OTHER);
    cr_assert_eq(pg_sasl_initial_flag(b, 5), PG_SASL_OTHER);
}

Test(pg_sasl, long_mechanism)
{
    uint8_t b[512];
    char mech[201];
    memset(mech, 'X', sizeof mech - 1);
    memcpy(mech, "SCRAM-", 6);

    /* 63 characters + NUL: the longest judged, decided at 5 + 64 + 4 + 2 */
    mech[63] = 0;
    size_t n = sasl_initial(b, mech, "y" CFM_REST, strlen("y" CFM_REST));
    expect_flag(b, n, PG_SASL_BINDING_WANTED, 75);
    /* 64 characters: no NUL within the 64 bytes after the header */
    mech[63] = 'X';
    mech[64] = 0;
    n = sasl_initial(b, mech, "y" CFM_REST, strlen("y" CFM_REST));
    expect_flag(b, n, PG_SASL_OTHER, 69);
    mech[64] = 'X';
    mech[200] = 0;
    n = sasl_initial(b, mech, "y" CFM_REST, strlen("y" CFM_REST));
    expect_flag(b, n, PG_SASL_OTHER, 69);
}

Test(pg_sasl, malformed_gs2_header)
{
    static const char *const bad[] = {"x,,n=,r=abc", "n=,n=,r=abc", "y=,n=,r=abc", "p,,n=,r=abc",
                                      ",,n=,r=abc"};
    static const size_t decide[] = {24, 25, 25, 25, 24};
    uint8_t b[64];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n = sasl_initial(b, "SCRAM-SHA-256", bad[i], strlen(bad[i]));
        expect_flag(b, n, PG_SASL_OTHER, decide[i]);
    }
}

/* ---- errors dbtrust reports (A6) ---- */

Test(pg_error, sqlstate_per_class)
{
    cr_assert_str_eq(pg_sqlstate_for(DBT_TLS_UNTRUSTED_CHAIN), "08001");
    cr_assert_str_eq(pg_sqlstate_for(DBT_UPSTREAM_REFUSED_TLS), "08001");
    cr_assert_str_eq(pg_sqlstate_for(DBT_UPSTREAM_CONNECT_FAILED), "57P03");
    cr_assert_str_eq(pg_sqlstate_for(DBT_UPSTREAM_RESET), "08006");
    cr_assert_str_eq(pg_sqlstate_for(DBT_CLIENT_PROTOCOL_ERROR), "08P01");
    cr_assert_str_eq(pg_sqlstate_for(DBT_UPSTREAM_PROTOCOL_ERROR), "08P01");
    cr_assert_str_eq(pg_sqlstate_for(DBT_LIMIT_REACHED), "53300");
    cr_assert_str_eq(pg_sqlstate_for(DBT_SHUTDOWN), "57P01");
    cr_assert_str_eq(pg_sqlstate_for(DBT_INTERNAL_ERROR), "XX000");
    cr_assert_str_eq(pg_sqlstate_for(DBT_NONE), "XX000");
    cr_assert_str_eq(pg_sqlstate_for(DBT_REASON_COUNT), "XX000");
    for (int r = 0; r < DBT_REASON_COUNT; r++)
        cr_assert_eq(strlen(pg_sqlstate_for((enum dbt_reason)r)), 5);
}

struct fields {
    char s[64], v[64], c[64], m[512], d[512], h[512];
    bool has_d, has_h;
};

/* Parses an ErrorResponse strictly: exact length word, every field terminated, the final NUL
 * as the last byte, no unknown or repeated field. */
static void parse_error(const uint8_t *b, size_t n, struct fields *f)
{
    memset(f, 0, sizeof *f);
    cr_assert_geq(n, 6);
    cr_assert_eq(b[0], 'E');
    cr_assert_eq(((size_t)b[1] << 24 | (size_t)b[2] << 16 | (size_t)b[3] << 8 | b[4]), n - 1);
    size_t at = 5;
    while (b[at] != 0) {
        char code = (char)b[at++];
        const uint8_t *nul = memchr(b + at, 0, n - at);
        cr_assert_not_null(nul, "field %c not terminated", code);
        size_t len = (size_t)(nul - (b + at));
        char *dst = code == 'S'   ? f->s
                    : code == 'V' ? f->v
                    : code == 'C' ? f->c
                    : code == 'M' ? f->m
                    : code == 'D' ? f->d
                    : code == 'H' ? f->h
                                  : NULL;
        cr_assert_not_null(dst, "unexpected field %c", code);
        cr_assert_eq(dst[0], 0, "field %c repeated", code);
        size_t cap = code == 'S' || code == 'V' || code == 'C' ? sizeof f->s : sizeof f->m;
        f->has_d |= code == 'D';
        f->has_h |= code == 'H';
        cr_assert_lt(len, cap);
        memcpy(dst, b + at, len + 1);
        at += len + 1;
        cr_assert_lt(at, n, "no final terminator");
    }
    cr_assert_eq(at, n - 1, "bytes after the final terminator");
}

Test(pg_error, client_refused_is_28000)
{
    /* the server's code for pg_hba.conf refusals and for the SCRAM channel-binding downgrade */
    cr_assert_str_eq(pg_sqlstate_for(DBT_CLIENT_TLS_REQUIRED), "28000");
    cr_assert_str_eq(pg_sqlstate_for(DBT_CLIENT_CHANNEL_BINDING), "28000");
}

Test(pg_error, full_message_round_trip)
{
    uint8_t buf[512];
    struct fields f;
    const char *m = "could not establish TLS connection to upstream db.example.com:5432";
    const char *d = "certificate verify failed: unable to get local issuer certificate";
    const char *h = "Check the proxy's CA bundle (ca_file=...) and the upstream host name.";

    size_t n = pg_build_error(buf, sizeof buf, "08001", m, d, h);
    cr_assert_eq(n, 5 + 7 + 7 + 7 + strlen(m) + 2 + strlen(d) + 2 + strlen(h) + 2 + 1);
    static const uint8_t head[] = "E\0\0\0\xe8SFATAL\0VFATAL\0C08001\0M";
    cr_assert_eq(n - 1, 0xe8);
    cr_assert_arr_eq(buf, head, sizeof head - 1);
    parse_error(buf, n, &f);
    cr_assert_str_eq(f.s, "FATAL");
    cr_assert_str_eq(f.v, "FATAL");
    cr_assert_str_eq(f.c, "08001");
    cr_assert_str_eq(f.m, m);
    cr_assert_str_eq(f.d, d);
    cr_assert_str_eq(f.h, h);

    n = pg_build_error(buf, sizeof buf, "57P03", "upstream unreachable", NULL, NULL);
    cr_assert_eq(n, 5 + 7 + 7 + 7 + 22 + 1);
    parse_error(buf, n, &f);
    cr_assert_str_eq(f.c, "57P03");
    cr_assert_str_eq(f.m, "upstream unreachable");
    cr_assert(!f.has_d && !f.has_h);
}

Test(pg_error, truncation_keeps_it_valid)
{
    uint8_t buf[700];
    struct fields f;
    char m[201], d[201], h[201];
    memset(m, 'm', 200), memset(d, 'd', 200), memset(h, 'h', 200);
    m[200] = d[200] = h[200] = 0;
    size_t full = pg_build_error(buf, sizeof buf, "08006", m, d, h);
    cr_assert_eq(full, 26 + 3 * 202 + 1);

    for (size_t cap = 0; cap <= full + 3; cap++) {
        memset(buf, 0xEE, sizeof buf);
        size_t n = pg_build_error(buf, cap, "08006", m, d, h);
        if (cap < 29) {
            cr_assert_eq(n, 0, "cap %zu", cap);
            continue;
        }
        cr_assert_leq(n, cap, "cap %zu", cap);
        cr_assert_eq(buf[cap], 0xEE, "wrote past cap %zu", cap);
        parse_error(buf, n, &f);
        cr_assert_str_eq(f.c, "08006");
        cr_assert_str_eq(f.v, "FATAL");
        cr_assert_eq(strncmp(f.m, m, strlen(f.m)), 0);
        cr_assert(!f.has_d || strncmp(f.d, d, strlen(f.d)) == 0);
        cr_assert(!f.has_h || strncmp(f.h, h, strlen(f.h)) == 0);
        if (cap >= full)
            cr_assert_eq(n, full);
        else
            cr_assert(n >= cap - 2, "cap %zu wasted: %zu", cap, n); /* a dropped field is 2 */
    }
    /* the message comes first: at 29 + 200 bytes it is whole and nothing else fits */
    size_t n = pg_build_error(buf, 229, "08006", m, d, h);
    parse_error(buf, n, &f);
    cr_assert_eq(strlen(f.m), 200);
    cr_assert(!f.has_d && !f.has_h);
}

Test(pg_error, truncation_respects_utf8)
{
    uint8_t buf[64];
    struct fields f;
    /* "é" x 20: any cut at an odd offset would split a character */
    char m[41];
    for (int i = 0; i < 20; i++)
        m[2 * i] = '\xc3', m[2 * i + 1] = '\xa9';
    m[40] = 0;
    for (size_t cap = 29; cap <= sizeof buf; cap++) {
        size_t n = pg_build_error(buf, cap, "XX000", m, NULL, NULL);
        parse_error(buf, n, &f);
        cr_assert_eq(strlen(f.m) % 2, 0, "cap %zu cut a UTF-8 sequence", cap);
    }
}

/* ---- memory: a machine holds what the bytes it was sent announced (issue 14) ---- */

static const uint8_t cancel_3_0[] = {0x00, 0x00, 0x00, 0x10, 0x04, 0xD2, 0x16, 0x2E,
                                     0x00, 0x00, 0x30, 0x39, 0xDE, 0xAD, 0xBE, 0xEF};

/* A StartupMessage of exactly len bytes (len >= 19): user=bob, options padded with 'o'. */
static size_t startup_of_len(uint8_t *b, size_t len)
{
    static char pad[PG_MAX_STARTUP_PACKET];
    /* 8 header + "user\0bob\0" (9) + "options\0" (8) + value + NUL + final NUL */
    size_t vlen = len - 8 - 9 - 8 - 2;
    memset(pad, 'o', vlen);
    pad[vlen] = 0;
    const char *const kv[] = {"user", "bob", "options", pad, NULL};
    size_t n = startup(b, 0x00030000u, kv);
    cr_assert_eq(n, len);
    return n;
}

/* Feeds one packet byte by byte to a fresh client (client TLS off): nothing may be allocated
 * before its 8-byte header is complete, then exactly `heap` bytes (0: it fits inline) until the
 * machine is freed. The packet of the final step is pg_client_packet's, in the heap when there
 * is one, and stays there, unchanged, through later feeds. */
static void expect_held_bytewise(const uint8_t *in, size_t n, enum pg_action last, size_t heap)
{
    struct pg_client *c = new_client(NULL);
    struct pg_step st;

    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(pg_client_feed(c, in + i, 1, &st), 1);
        size_t want = i + 1 < 8 ? 0 : heap;
        cr_assert_eq(pg_client_allocated(c), want, "after byte %zu: %zu held, want %zu", i,
                     pg_client_allocated(c), want);
        cr_assert_eq(st.action, i + 1 < n ? PG_NEED_MORE : last, "byte %zu", i);
    }
    size_t len;
    const uint8_t *p = pg_client_packet(c, &len);
    cr_assert_eq(st.data, p);
    cr_assert_eq(len, n);
    cr_assert_eq(p, heap ? c->heap : c->small, "in the heap only when it does not fit");
    cr_assert_arr_eq(p, in, n);
    cr_assert_eq(pg_client_feed(c, (const uint8_t *)"Q\0\0\0\x05", 5, &st), 0);
    cr_assert_eq(pg_client_packet(c, &len), p, "a finished machine never moves its packet");
    cr_assert_arr_eq(p, in, n);
    pg_client_free(c);
    cr_assert_eq(pg_client_allocated(c), 0);
    cr_assert_null(pg_client_packet(c, &len));
    cr_assert_eq(len, 0);
    free(c);
}

Test(pg_client_memory, short_packets_never_allocate)
{
    /* The connection that sends nothing, or only negotiates, costs this struct and no more. */
    cr_assert_lt(sizeof(struct pg_client), 512, "struct pg_client is %zu bytes",
                 sizeof(struct pg_client));
    uint8_t cancel44[44], at64[PG_CLIENT_INLINE], in[128];
    cancel_packet(cancel44, 32);
    startup_of_len(at64, sizeof at64);
    expect_held_bytewise(cancel_3_0, sizeof cancel_3_0, PG_CANCEL, 0);
    expect_held_bytewise(cancel44, sizeof cancel44, PG_CANCEL, 0);
    expect_held_bytewise(startup_bob, sizeof startup_bob, PG_DIAL_UPSTREAM, 0);
    expect_held_bytewise(at64, sizeof at64, PG_DIAL_UPSTREAM, 0);

    /* With every allocation failing, the short paths still work whatever the cuts: they never
     * ask for memory. */
    wire_alloc_fail_after(0);
    struct trace t;
    struct pg_client *c;
    size_t n = put(in, 0, gss_req, 8);
    n = put(in, n, ssl_req, 8);
    n = put(in, n, cancel_3_0, sizeof cancel_3_0);
    run_all(CLIENT, in, n, &t, (void **)&c);
    cr_assert_eq(t.n, 3);
    expect_data(&t, 0, PG_SEND_CLIENT, "N", 1);
    expect_data(&t, 1, PG_SEND_CLIENT, "N", 1);
    expect_data(&t, 2, PG_CANCEL, cancel_3_0, sizeof cancel_3_0);
    cr_assert_eq(pg_client_allocated(c), 0);
    trace_free(&t);
    client_free(c);

    n = put(in, 0, ssl_req, 8);
    n = put(in, n, at64, sizeof at64);
    run_all(CLIENT, in, n, &t, NULL);
    cr_assert_eq(t.n, 2);
    expect_data(&t, 1, PG_DIAL_UPSTREAM, at64, sizeof at64);
    trace_free(&t);

    /* TLS on: 'S', then the packets inside, still without a byte of heap */
    const struct client_setup setup = {PG_TLS_REQUIRE, AFTER_SSL_REQUEST};
    run_all_from(CLIENT, &setup, startup_bob, sizeof startup_bob, &t, NULL);
    expect_data(&t, 0, PG_DIAL_UPSTREAM, startup_bob, sizeof startup_bob);
    trace_free(&t);
    wire_alloc_fail_after(-1);
}

Test(pg_client_memory, longer_packets_get_exactly_their_length)
{
    static uint8_t msg[4 + PG_MAX_STARTUP_PACKET];
    uint8_t cancel[12 + PG_MAX_CANCEL_KEY];
    static const size_t lens[] = {PG_CLIENT_INLINE + 1, 300, 4 + PG_MAX_STARTUP_PACKET};

    for (size_t i = 0; i < DBT_ARRAY_LEN(lens); i++) {
        size_t n = startup_of_len(msg, lens[i]);
        expect_held_bytewise(msg, n, PG_DIAL_UPSTREAM, n);
    }
    /* 52-byte key: 64 in all, inline; one more byte of key and it gets a buffer of its own */
    size_t n = cancel_packet(cancel, PG_CLIENT_INLINE - 12);
    expect_held_bytewise(cancel, n, PG_CANCEL, 0);
    n = cancel_packet(cancel, PG_CLIENT_INLINE - 12 + 1);
    expect_held_bytewise(cancel, n, PG_CANCEL, n);
    n = cancel_packet(cancel, PG_MAX_CANCEL_KEY);
    expect_held_bytewise(cancel, n, PG_CANCEL, n);

    /* the same, whatever the cuts, behind a negotiation round */
    uint8_t in[8 + 300];
    size_t mlen = startup_of_len(msg, 300);
    n = put(in, 0, ssl_req, 8);
    n = put(in, n, msg, mlen);
    struct trace t;
    struct pg_client *c;
    run_all(CLIENT, in, n, &t, (void **)&c);
    cr_assert_eq(t.n, 2);
    expect_data(&t, 1, PG_DIAL_UPSTREAM, msg, mlen);
    cr_assert_eq(pg_client_allocated(c), mlen);
    cr_assert_str_eq(c->user, "bob");
    trace_free(&t);
    client_free(c);
}

/* What an armed allocator proves: the refusal comes from the length check, since the only
 * allocation the machine could have made would have failed with "out of memory". */
static void expect_refused_unallocated(const uint8_t *in, size_t n, size_t consumed,
                                       const char *detail)
{
    struct trace t;
    wire_alloc_fail_after(0);
    run_all(CLIENT, in, n, &t, NULL);
    wire_alloc_fail_after(-1);
    cr_assert_eq(t.n, 1);
    expect_fail(&t, 0, PG_FAIL, DBT_CLIENT_PROTOCOL_ERROR, detail);
    cr_assert_eq(t.consumed, consumed);
    trace_free(&t);
}

Test(pg_client_memory, bounds_checked_before_any_allocation)
{
    static uint8_t msg[4 + PG_MAX_STARTUP_PACKET + 1];
    static const char bad_length[] = "invalid length of startup packet";

    /* the largest packet is accepted, in a buffer of its size */
    size_t n = startup_of_len(msg, 4 + PG_MAX_STARTUP_PACKET);
    struct trace t;
    struct pg_client *c;
    run_all(CLIENT, msg, n, &t, (void **)&c);
    expect_data(&t, 0, PG_DIAL_UPSTREAM, msg, n);
    cr_assert_eq(pg_client_allocated(c), 4 + PG_MAX_STARTUP_PACKET);
    trace_free(&t);
    client_free(c);

    /* one byte more is refused on the length word, with nothing allocated */
    be32(msg, 4 + PG_MAX_STARTUP_PACKET + 1);
    expect_refused_unallocated(msg, sizeof msg, 4, bad_length);
    be32(msg, 0xFFFFFFFFu);
    expect_refused_unallocated(msg, 64, 4, bad_length);
    /* a length within the startup bound that the code does not allow */
    uint8_t cancel[12 + PG_MAX_CANCEL_KEY + 1];
    memset(cancel, 0x22, sizeof cancel);
    be32(cancel, sizeof cancel);
    be32(cancel + 4, PG_CANCEL_REQUEST_CODE);
    expect_refused_unallocated(cancel, sizeof cancel, 8, "invalid length of cancel request packet");
    be32(msg, 4 + PG_MAX_STARTUP_PACKET);
    be32(msg + 4, 0x00040000u);
    expect_refused_unallocated(msg, 4 + PG_MAX_STARTUP_PACKET, 8, "unsupported frontend protocol");
    be32(msg + 4, PG_SSL_REQUEST_CODE);
    expect_refused_unallocated(msg, 4 + PG_MAX_STARTUP_PACKET, 8,
                               "invalid length of SSLRequest packet");
}

Test(pg_client_memory, out_of_memory_is_a_failure_step)
{
    uint8_t msg[300], cancel[12 + PG_MAX_CANCEL_KEY];
    const uint8_t *ins[] = {msg, cancel};
    size_t lens[] = {startup_of_len(msg, sizeof msg), cancel_packet(cancel, PG_MAX_CANCEL_KEY)};

    for (size_t i = 0; i < DBT_ARRAY_LEN(ins); i++) {
        /* k == 0: byte by byte; else a cut at k, then the rest at once */
        for (size_t k = 0; k < lens[i]; k++) {
            struct pg_client *c = new_client(NULL);
            struct trace t;
            wire_alloc_fail_after(0);
            run(CLIENT, c, ins[i], lens[i], k ? k : 1, k ? SIZE_MAX : 1, &t);
            wire_alloc_fail_after(-1);
            cr_assert_eq(t.n, 1);
            expect_fail(&t, 0, PG_FAIL, DBT_INTERNAL_ERROR, "out of memory");
            cr_assert_eq(t.consumed, 8, "failed when the header asked for the buffer");
            cr_assert_eq(c->state, PG_C_FAILED);
            cr_assert_eq(pg_client_allocated(c), 0);
            struct pg_step st;
            cr_assert_eq(pg_client_feed(c, ins[i] + 8, lens[i] - 8, &st), 0);
            cr_assert_eq(st.action, PG_FAIL);
            cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
            trace_free(&t);
            client_free(c);
        }
    }
}

/* A machine freed after any prefix of its input, in any state: nothing stays behind
 * (leak_check), and a freed machine refuses to go on. */
static void expect_free_anywhere(const struct client_setup *setup, const uint8_t *in, size_t n)
{
    for (size_t k = 0; k <= n; k++) {
        struct pg_client *c = new_client(setup);
        struct trace t;
        run(CLIENT, c, in, k, k, k, &t);
        trace_free(&t);
        pg_client_free(c);
        size_t len;
        cr_assert_eq(pg_client_allocated(c), 0);
        cr_assert_null(pg_client_packet(c, &len));
        struct pg_step st;
        cr_assert_eq(pg_client_feed(c, in, n, &st), 0);
        cr_assert_eq(st.action, PG_FAIL);
        cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
        pg_client_free(c); /* idempotent */
        free(c);
    }
}

Test(pg_client_memory, free_at_every_point)
{
    uint8_t msg[300], in[8 + 300 + 14], cancel[12 + PG_MAX_CANCEL_KEY];
    size_t mlen = startup_of_len(msg, sizeof msg);
    size_t n = put(in, 0, ssl_req, 8);
    n = put(in, n, msg, mlen);
    n = put(in, n, "Q\0\0\0\x0dSELECT 1", 14); /* done, then relay data */
    expect_free_anywhere(NULL, in, n);
    expect_free_anywhere(NULL, cancel, cancel_packet(cancel, PG_MAX_CANCEL_KEY));
    /* failed after buffering: the packet is dropped at once */
    const struct client_setup require = {PG_TLS_REQUIRE, PLAINTEXT};
    expect_free_anywhere(&require, msg, mlen);
    struct pg_client *c = new_client(&require);
    struct pg_step st;
    cr_assert_eq(pg_client_feed(c, msg, mlen, &st), mlen);
    cr_assert_eq(st.reason, DBT_CLIENT_TLS_REQUIRED);
    cr_assert_eq(pg_client_allocated(c), 0, "a refused packet is not kept");
    client_free(c);
    msg[mlen - 1] = 'x'; /* no terminator */
    expect_free_anywhere(NULL, msg, mlen);
    c = new_client(NULL);
    cr_assert_eq(pg_client_feed(c, msg, mlen, &st), mlen);
    cr_assert_eq(st.action, PG_FAIL);
    cr_assert_eq(pg_client_allocated(c), 0);
    client_free(c);
    /* refused on its length word */
    static const uint8_t over[] = {0x00, 0x00, 0x27, 0x19, 0x00, 0x03, 0x00, 0x00};
    expect_free_anywhere(NULL, over, sizeof over);
    /* inside TLS */
    const struct client_setup tls = {PG_TLS_ALLOW, AFTER_DIRECT_TLS};
    expect_free_anywhere(&tls, in + 8, n - 8);
}

/* ---- memory of the server machine ---- */

/* Feeds in byte by byte: while a message's 5-byte header is incomplete the machine holds
 * nothing (the previous message is released by the call after the one that handed it out),
 * then exactly that message's length; the SASL rewrite adds a buffer of the list's size. */
Test(pg_server_memory, each_message_in_a_buffer_of_its_length)
{
    cr_assert_lt(sizeof(struct pg_server), 128, "struct pg_server is %zu bytes",
                 sizeof(struct pg_server));
    static const uint8_t notice[] = "N\x00\x00\x00\x0dSNOTICE\0";
    uint8_t in[128];
    size_t n = put(in, 0, neg_version, sizeof neg_version);
    n = put(in, n, notice, sizeof notice);
    n = put(in, n, sasl_both, sizeof sasl_both);
    struct pg_server *s = new_machine(SERVER);
    struct pg_step st;
    size_t start = 0, sends = 0;

    cr_assert_eq(pg_server_allocated(s), 0);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(pg_server_feed(s, in + i, 1, &st), 1);
        size_t msg = 1 + wire_be32(in + start + 1);
        size_t want = i + 1 - start < 5 ? 0 : msg;
        if (st.action == PG_SEND_CLIENT) {
            sends++;
            cr_assert_eq(i + 1, start + msg);
            if (in[start] == 'R') {
                cr_assert_eq(st.data, s->out);
                cr_assert_eq(s->out_len, msg, "the rewrite is never longer than the list");
                want += msg;
            } else {
                cr_assert_eq(st.data, s->msg);
                cr_assert_null(s->out, "no rewrite buffer but for AuthenticationSASL");
            }
            start = i + 1;
        }
        cr_assert_eq(pg_server_allocated(s), want, "byte %zu: %zu held, want %zu", i,
                     pg_server_allocated(s), want);
    }
    cr_assert_eq(sends, 3);
    cr_assert_eq(st.len, sizeof sasl_stripped);
    cr_assert_arr_eq(st.data, sasl_stripped, sizeof sasl_stripped);
    cr_assert_eq(pg_server_feed(s, in, 1, &st), 0);
    cr_assert_eq(st.action, PG_RELAY);
    cr_assert_eq(pg_server_allocated(s), 0, "relaying, the machine holds nothing");
    free_machine(SERVER, s);
}

static void expect_server_refused_unallocated(const uint8_t *in, size_t n, const char *detail)
{
    wire_alloc_fail_after(0);
    expect_server_fail(in, n, 0, detail);
    wire_alloc_fail_after(-1);
}

Test(pg_server_memory, bounds_before_allocation_and_out_of_memory)
{
    static uint8_t in[PG_MAX_SERVER_STARTUP_MSG + 1];
    memset(in, 'x', sizeof in);
    in[0] = 'N';
    be32(in + 1, PG_MAX_SERVER_STARTUP_MSG - 1);
    struct pg_server *s = new_machine(SERVER);
    struct pg_step st;
    cr_assert_eq(pg_server_feed(s, in, PG_MAX_SERVER_STARTUP_MSG, &st), PG_MAX_SERVER_STARTUP_MSG);
    cr_assert_eq(st.action, PG_SEND_CLIENT);
    cr_assert_eq(pg_server_allocated(s), PG_MAX_SERVER_STARTUP_MSG);
    free_machine(SERVER, s);

    be32(in + 1, PG_MAX_SERVER_STARTUP_MSG);
    expect_server_refused_unallocated(in, sizeof in,
                                      "upstream startup message longer than 16384 bytes");
    be32(in + 1, 3);
    expect_server_refused_unallocated(in, 5, "upstream message length below 4");

    /* allocation number `after` fails: one per message, then the rewrite of the SASL list */
    uint8_t two[128];
    size_t n = put(two, 0, neg_version, sizeof neg_version);
    n = put(two, n, sasl_both, sizeof sasl_both);
    const struct {
        long after;
        size_t sends, consumed;
    } cases[] = {
        {0, 0, 5},                      /* the 'v' message's buffer */
        {1, 1, sizeof neg_version + 5}, /* the 'R' message's buffer */
        {2, 1, n},                      /* the rewrite of its list */
    };
    for (size_t i = 0; i < DBT_ARRAY_LEN(cases); i++) {
        for (size_t k = 0; k < n; k++) {
            struct trace t;
            s = new_machine(SERVER);
            wire_alloc_fail_after(cases[i].after);
            run(SERVER, s, two, n, k ? k : 1, k ? SIZE_MAX : 1, &t);
            wire_alloc_fail_after(-1);
            cr_assert_eq(t.n, cases[i].sends + 1, "case %zu cut %zu", i, k);
            if (cases[i].sends)
                expect_data(&t, 0, PG_SEND_CLIENT, neg_version, sizeof neg_version);
            expect_fail(&t, cases[i].sends, PG_FAIL, DBT_INTERNAL_ERROR, "out of memory");
            cr_assert_eq(t.consumed, cases[i].consumed, "case %zu cut %zu", i, k);
            cr_assert(!s->sasl_offered);
            cr_assert_eq(pg_server_feed(s, two, n, &st), 0);
            cr_assert_eq(st.action, PG_FAIL);
            cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
            cr_assert_eq(pg_server_allocated(s), 0);
            trace_free(&t);
            free_machine(SERVER, s);
        }
    }
}

Test(pg_server_memory, free_at_every_point)
{
    static const uint8_t only_plus[] = "R\x00\x00\x00\x1C\x00\x00\x00\x0A"
                                       "SCRAM-SHA-256-PLUS\0";
    uint8_t in[128];
    size_t n = put(in, 0, neg_version, sizeof neg_version);
    n = put(in, n, sasl_both, sizeof sasl_both);
    n = put(in, n, "R\0\0\0\x08\0\0\0\0", 9); /* relay data */
    const uint8_t *ins[] = {in, only_plus};
    const size_t lens[] = {n, sizeof only_plus};

    for (size_t i = 0; i < DBT_ARRAY_LEN(ins); i++) {
        for (size_t k = 0; k <= lens[i]; k++) {
            struct pg_server *s = new_machine(SERVER);
            struct trace t;
            run(SERVER, s, ins[i], k, k, k, &t);
            trace_free(&t);
            pg_server_free(s);
            cr_assert_eq(pg_server_allocated(s), 0);
            struct pg_step st;
            cr_assert_eq(pg_server_feed(s, ins[i], lens[i], &st), 0);
            cr_assert_eq(st.action, PG_FAIL);
            cr_assert_eq(st.reason, DBT_INTERNAL_ERROR);
            pg_server_free(s);
            free(s);
        }
    }
}

/* ---- the login watcher (issue 15) ---- */

TestSuite(pg_login);

#define LOGIN_EVENTS 8

struct login_trace {
    enum pg_login_event ev[LOGIN_EVENTS];
    size_t n;
    size_t consumed;
    struct pg_login_watch w; /* the watcher at the end */
};

/* Feeds a first chunk of `first` bytes, then chunks of `rest`; records every event but
 * PG_LOGIN_NEED_MORE, up to the first one that ends the watch. */
static void login_run(const uint8_t *in, size_t len, size_t first, size_t rest,
                      struct login_trace *t)
{
    size_t pos = 0;
    size_t end = first < len ? first : len;

    memset(t, 0, sizeof *t);
    pg_login_watch_init(&t->w);
    for (int guard = 0; guard < 100000; guard++) {
        enum pg_login_event ev;
        size_t n = pg_login_watch_feed(&t->w, in + pos, end - pos, &ev);
        cr_assert_leq(n, end - pos);
        pos += n;
        t->consumed = pos;
        if (ev == PG_LOGIN_NEED_MORE) {
            cr_assert_eq(pos, end, "PG_LOGIN_NEED_MORE left input unconsumed");
        } else {
            cr_assert_lt(t->n, LOGIN_EVENTS);
            t->ev[t->n++] = ev;
            if (ev != PG_LOGIN_AUTH_OK) {
                /* A finished watch consumes nothing and repeats its end. */
                enum pg_login_event again;
                cr_assert_eq(pg_login_watch_feed(&t->w, in, len, &again), 0);
                cr_assert_eq(again, ev);
                return;
            }
        }
        if (pos == len)
            return;
        if (pos == end)
            end += rest < len - end ? rest : len - end;
    }
    cr_assert_fail("watcher makes no progress");
}

static void login_same(const struct login_trace *a, const struct login_trace *b, const char *how,
                       size_t k)
{
    cr_assert_eq(a->n, b->n, "%s %zu: %zu events instead of %zu", how, k, b->n, a->n);
    for (size_t i = 0; i < a->n; i++)
        cr_assert_eq(a->ev[i], b->ev[i], "%s %zu: event %zu differs", how, k, i);
    cr_assert_eq(a->consumed, b->consumed, "%s %zu: consumed", how, k);
    cr_assert_eq(a->w.state, b->w.state, "%s %zu: state", how, k);
    cr_assert_eq(a->w.auth_ok, b->w.auth_ok, "%s %zu: auth_ok", how, k);
    cr_assert_eq(a->w.key.pid, b->w.key.pid, "%s %zu: pid", how, k);
    cr_assert_eq(a->w.key.len, b->w.key.len, "%s %zu: key length", how, k);
    cr_assert_arr_eq(a->w.key.key, b->w.key.key, a->w.key.len, "%s %zu: key", how, k);
    if (a->w.detail || b->w.detail)
        cr_assert_str_eq(a->w.detail, b->w.detail, "%s %zu: detail", how, k);
}

/* Whole, split at every offset, byte by byte: all agree. Returns the whole run. */
static void login_all(const uint8_t *in, size_t len, struct login_trace *whole)
{
    login_run(in, len, len, len, whole);
    for (size_t k = 1; k < len; k++) {
        struct login_trace t;
        login_run(in, len, k, SIZE_MAX, &t);
        login_same(whole, &t, "split at", k);
    }
    struct login_trace t;
    login_run(in, len, 1, 1, &t);
    login_same(whole, &t, "byte by byte", 1);
}

/* Appends one message: type, length word, body. */
static size_t msg(uint8_t *b, size_t at, char type, const void *body, size_t n)
{
    b[at] = (uint8_t)type;
    be32(b + at + 1, (uint32_t)(4 + n));
    return put(b, at + 5, body, n);
}

static size_t auth(uint8_t *b, size_t at, uint32_t code)
{
    uint8_t c[4];
    be32(c, code);
    return msg(b, at, 'R', c, 4);
}

/* BackendKeyData with pid 4242 and a key of key_len bytes 0x10, 0x11, ... */
static size_t backend_key(uint8_t *b, size_t at, size_t key_len)
{
    uint8_t body[4 + 300];
    be32(body, 4242);
    for (size_t i = 0; i < key_len; i++)
        body[4 + i] = (uint8_t)(0x10 + i);
    return msg(b, at, 'K', body, 4 + key_len);
}

static size_t after_auth(uint8_t *b, size_t at, size_t key_len)
{
    at = msg(b, at, 'S', "application_name\0psql\0", 22);
    at = msg(b, at, 'S',
             "server_version\0"
             "15.8\0",
             20);
    at = backend_key(b, at, key_len);
    return msg(b, at, 'Z', "I", 1);
}

static void expect_key(const struct pg_login_watch *w, size_t key_len)
{
    cr_assert_eq(w->key.pid, 4242);
    cr_assert_eq(w->key.len, key_len);
    for (size_t i = 0; i < key_len; i++)
        cr_assert_eq(w->key.key[i], (uint8_t)(0x10 + i));
}

Test(pg_login, trust_login_3_0_key)
{
    uint8_t in[512];
    size_t n = after_auth(in, auth(in, 0, 0), 4);
    n = put(in, n, "Q\0\0\0\x0dselect 1\0", 14); /* the session's first bytes: not read */
    struct login_trace t;
    login_all(in, n, &t);
    cr_assert_eq(t.n, 2);
    cr_assert_eq(t.ev[0], PG_LOGIN_AUTH_OK);
    cr_assert_eq(t.ev[1], PG_LOGIN_READY);
    cr_assert_eq(t.consumed, n - 14, "stops right after ReadyForQuery");
    cr_assert(t.w.auth_ok);
    expect_key(&t.w, 4);
}

Test(pg_login, scram_login_3_2_keys)
{
    static const size_t keys[] = {32, 256};
    for (size_t k = 0; k < DBT_ARRAY_LEN(keys); k++) {
        uint8_t in[1024];
        size_t n = put(in, 0, neg_version, sizeof neg_version);
        n = put(in, n, sasl_both, sizeof sasl_both);
        n = msg(in, n, 'R', "\0\0\0\x0br=nonce,s=salt,i=4096", 26); /* SASLContinue */
        n = msg(in, n, 'R', "\0\0\0\x0cv=proof", 11);               /* SASLFinal */
        n = msg(in, n, 'N', "SNOTICE\0Mhello\0\0", 16);
        n = after_auth(in, auth(in, n, 0), keys[k]);
        struct login_trace t;
        login_all(in, n, &t);
        cr_assert_eq(t.n, 2);
        cr_assert_eq(t.ev[0], PG_LOGIN_AUTH_OK);
        cr_assert_eq(t.ev[1], PG_LOGIN_READY);
        cr_assert_eq(t.consumed, n);
        expect_key(&t.w, keys[k]);
    }
}

Test(pg_login, wrong_password_is_an_error)
{
    static const char err[] = "SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0";
    uint8_t in[512];
    size_t n = put(in, 0, md5_req, sizeof md5_req);
    n = msg(in, n, 'E', err, sizeof err - 1);
    struct login_trace t;
    login_all(in, n, &t);
    cr_assert_eq(t.n, 1);
    cr_assert_eq(t.ev[0], PG_LOGIN_ERROR);
    cr_assert_eq(t.consumed, n);
    cr_assert(!t.w.auth_ok);
    cr_assert_eq(t.w.key.len, 0);
}

Test(pg_login, error_after_authentication_ok)
{
    /* "database does not exist" comes after AuthenticationOk: not logged in. */
    static const char err[] = "SFATAL\0C3D000\0Mdatabase \"x\" does not exist\0\0";
    uint8_t in[256];
    size_t n = msg(in, auth(in, 0, 0), 'E', err, sizeof err - 1);
    struct login_trace t;
    login_all(in, n, &t);
    cr_assert_eq(t.n, 2);
    cr_assert_eq(t.ev[0], PG_LOGIN_AUTH_OK);
    cr_assert_eq(t.ev[1], PG_LOGIN_ERROR);
    cr_assert_eq(t.w.state, PG_L_ERROR);
}

Test(pg_login, long_messages_pass_unbuffered)
{
    /* A NoticeResponse of 64 KiB: read by its length, never held. */
    size_t body = 65536;
    uint8_t *in = malloc(body + 64);
    cr_assert_not_null(in);
    in[0] = 'N';
    be32(in + 1, (uint32_t)(4 + body));
    memset(in + 5, 'x', body);
    size_t n = 5 + body;
    n = msg(in, auth(in, n, 0), 'Z', "I", 1);
    struct login_trace t;
    login_run(in, n, n, n, &t);
    cr_assert_eq(t.n, 2);
    cr_assert_eq(t.ev[1], PG_LOGIN_READY);
    login_run(in, n, 1, 1, &t);
    cr_assert_eq(t.n, 2);
    cr_assert_eq(t.ev[1], PG_LOGIN_READY);
    free(in);
}

/* Framing no server sends: fail closed with a clear detail, at every cut. */
static void expect_login_invalid(const uint8_t *in, size_t n, size_t events, const char *detail)
{
    struct login_trace t;
    login_all(in, n, &t);
    cr_assert_eq(t.n, events + 1);
    cr_assert_eq(t.ev[events], PG_LOGIN_INVALID);
    cr_assert_eq(t.w.state, PG_L_INVALID);
    cr_assert_str_eq(t.w.detail, detail);
}

Test(pg_login, invalid_framing_fails_closed)
{
    uint8_t in[1024];
    size_t n;

    n = put(in, 0, "S\0\0\0\x03", 5);
    expect_login_invalid(in, n, 0, "upstream message length below 4");
    n = put(in, 0, "N\x00\x10\x00\x01", 5); /* 1 MiB + 1 */
    expect_login_invalid(in, n, 0, "upstream message during login longer than 1048576 bytes");
    n = put(in, 0, "\x16\x03\x01\x02\x00", 5); /* a TLS record where a message should be */
    expect_login_invalid(in, n, 0, "upstream message during login longer than 1048576 bytes");
    n = msg(in, 0, 'R', "\0\0", 2);
    expect_login_invalid(in, n, 0, "authentication request without a code");
    n = msg(in, 0, 'R', "\0\0\0\0\0\0\0\0", 8);
    expect_login_invalid(in, n, 0, "AuthenticationOk of wrong length");
    n = backend_key(in, auth(in, 0, 0), 3);
    expect_login_invalid(in, n, 1, "BackendKeyData key length outside 4..256");
    n = backend_key(in, auth(in, 0, 0), 257);
    expect_login_invalid(in, n, 1, "BackendKeyData key length outside 4..256");
    n = msg(in, auth(in, 0, 0), 'Z', "II", 2);
    expect_login_invalid(in, n, 1, "ReadyForQuery of wrong length");
    n = msg(in, put(in, 0, md5_req, sizeof md5_req), 'Z', "I", 1);
    expect_login_invalid(in, n, 0, "ReadyForQuery before AuthenticationOk");
}

Test(pg_login, largest_message_accepted)
{
    /* Exactly PG_LOGIN_MAX_MSG: passes (fed as a header and a body length, not built). */
    struct pg_login_watch w;
    enum pg_login_event ev;
    uint8_t head[5] = {'N'};
    be32(head + 1, PG_LOGIN_MAX_MSG);
    pg_login_watch_init(&w);
    cr_assert_eq(pg_login_watch_feed(&w, head, 5, &ev), 5);
    cr_assert_eq(ev, PG_LOGIN_NEED_MORE);
    cr_assert_eq(w.state, PG_L_BODY);
    cr_assert_eq(w.body, PG_LOGIN_MAX_MSG - 4);
}

/* ---- names from the StartupMessage are kept as valid UTF-8 (issue 15) ---- */

Test(pg_client, idents_sanitised_to_valid_utf8)
{
    char app[80];
    memset(app, 'a', 62);
    memcpy(app + 62, "\xE2\x82\xAC", 4); /* € straddles byte 63, then the NUL */
    const char *const kv[] = {
        "user", "bob\xFF", "database", "d\xC3\xA9j\xC3\xA0\x1B[2J", "application_name", app, NULL};
    uint8_t m[600];
    size_t mlen = startup(m, 0x00030000u, kv);
    struct trace t;
    struct pg_client *c;

    run_all(CLIENT, m, mlen, &t, (void **)&c);
    expect_data(&t, 0, PG_DIAL_UPSTREAM, m, mlen); /* the packet itself goes on verbatim */
    cr_assert_str_eq(c->user, "bob\xEF\xBF\xBD");
    cr_assert_str_eq(c->database, "d\xC3\xA9j\xC3\xA0\xEF\xBF\xBD[2J");
    cr_assert_eq(strlen(c->application_name), 62, "the straddling character is dropped whole");
    cr_assert_eq(strncmp(c->application_name, app, 62), 0);
    trace_free(&t);
    client_free(c);
}
