/* pg_client_feed: what a PostgreSQL application sends before its session exists (SSLRequest,
 * GSSENCRequest, CancelRequest, StartupMessage). The payload is the client's byte stream, fed
 * whole, in the chunks the input chooses and byte by byte (fuzz_common.h); all must agree.
 *
 * Flags bits 3-4 choose client_tls: 0 off, 1 allow, 2 require, 3 allow. With client TLS on the
 * payload is [P] [P bytes the client sends before any handshake] [the rest, sent inside TLS, as
 * the proxy feeds it decrypted]. The plaintext part reaches the machine up to its end on every
 * call: there the cuts are not arbitrary, since bytes read together with the SSLRequest are
 * refused by design (CVE-2021-23214; test_pg.c checks every cut). After PG_START_TLS the harness
 * hands the rest of the plaintext part to the "handshake" (all of it for direct TLS: the
 * ClientHello), calls pg_client_tls_started and feeds the rest in the chosen cuts. Without a
 * PG_START_TLS the run ends with the plaintext part.
 *
 * Flags bit 5: the machine's one allocation (a packet longer than PG_CLIENT_INLINE) fails; it
 * must become PG_FAIL DBT_INTERNAL_ERROR "out of memory". After every call the machine holds
 * exactly what its packet announced: nothing while it fits PG_CLIENT_INLINE or before its header
 * is complete, its length otherwise, and nothing once it failed. */
#include "fuzz_common.h"
#include "pg.h"
#include "wire.h"

#define F_NO_MEMORY 0x20

struct outcome {
    struct fuzz_trace t;
    size_t consumed;
    struct pg_client *c;
};

/* The bytes of the packet being read (or read last). */
static const uint8_t *current(const struct pg_client *c)
{
    return c->heap ? c->heap : c->small;
}

/* What the machine may hold after any call (issue 14). */
static void check_memory(const struct pg_client *c)
{
    bool long_packet =
        (c->state == PG_C_BODY || c->state == PG_C_DONE) && c->need > PG_CLIENT_INLINE;
    FUZZ_CHECK(pg_client_allocated(c) == (long_packet ? c->need : 0), "%zu bytes held, need %zu",
               pg_client_allocated(c), c->need);
    FUZZ_CHECK(c->state == PG_C_FAILED || c->have <= (c->heap ? c->heap_len : PG_CLIENT_INLINE),
               "%zu bytes read past the buffer", c->have);
}

static bool finished(enum pg_action a)
{
    return a == PG_DIAL_UPSTREAM || a == PG_CANCEL || a == PG_FAIL || a == PG_CLOSE;
}

/* What every step must look like, whatever the cuts. */
static void check_step(const struct pg_client *c, const struct pg_step *st, const uint8_t *in,
                       size_t pos, size_t first, bool no_memory)
{
    check_memory(c);
    FUZZ_CHECK(st->action == PG_START_TLS || !st->direct, "direct outside PG_START_TLS");
    switch (st->action) {
    case PG_NEED_MORE:
        FUZZ_CHECK(st->data == NULL && st->len == 0, "PG_NEED_MORE with data");
        break;
    case PG_SEND_CLIENT:
        FUZZ_CHECK(st->len == 1 && st->data && st->data[0] == 'N', "only 'N' goes to the client");
        break;
    case PG_DIAL_UPSTREAM:
        FUZZ_CHECK(st->data == current(c) && st->len == c->need, "packet is the machine's own");
        FUZZ_CHECK(st->len >= 8 && st->len <= 4 + PG_MAX_STARTUP_PACKET, "length %zu", st->len);
        FUZZ_CHECK(wire_be32(st->data) == st->len, "length word");
        FUZZ_CHECK(wire_be32(st->data + 4) >> 16 == 3, "protocol 3.x only");
        FUZZ_CHECK(wire_be32(st->data + 4) == c->version, "version recorded");
        FUZZ_CHECK(st->data[st->len - 1] == 0, "terminator last");
        FUZZ_CHECK(c->user[0] != '\0', "a user name is required");
        FUZZ_CHECK(c->tls != PG_TLS_REQUIRE || c->tls_active, "plaintext login on require");
        break;
    case PG_CANCEL:
        FUZZ_CHECK(st->data == current(c) && st->len == c->need, "packet is the machine's own");
        FUZZ_CHECK(st->len >= 13 && st->len <= 12 + PG_MAX_CANCEL_KEY, "length %zu", st->len);
        FUZZ_CHECK(wire_be32(st->data) == st->len, "length word");
        FUZZ_CHECK(wire_be32(st->data + 4) == PG_CANCEL_REQUEST_CODE, "cancel code");
        break;
    case PG_FAIL:
        FUZZ_CHECK(st->detail != NULL && st->len == 0, "PG_FAIL without detail or with data");
        if (st->reason == DBT_CLIENT_TLS_REQUIRED) {
            FUZZ_CHECK(c->tls == PG_TLS_REQUIRE && !c->tls_active, "client_tls_required");
            FUZZ_CHECK(c->user[0] != '\0', "refused only once the StartupMessage is parsed");
            break;
        }
        if (st->reason == DBT_INTERNAL_ERROR) {
            FUZZ_CHECK(no_memory && strcmp(st->detail, "out of memory") == 0, "%s", st->detail);
            FUZZ_CHECK(c->need > PG_CLIENT_INLINE, "allocated for a packet that fits inline");
            break;
        }
        FUZZ_CHECK(st->reason == DBT_CLIENT_PROTOCOL_ERROR, "reason %s",
                   dbt_reason_name(st->reason));
        break;
    case PG_CLOSE:
        FUZZ_CHECK(st->detail != NULL && st->reason == DBT_CLIENT_DIRECT_TLS, "PG_CLOSE");
        FUZZ_CHECK(in[pos] == 0x16, "PG_CLOSE leaves the 0x16 unconsumed");
        FUZZ_CHECK(c->tls == PG_TLS_OFF || pos != first || c->tls_active, "direct TLS refused");
        break;
    case PG_START_TLS:
        FUZZ_CHECK(c->tls != PG_TLS_OFF && !c->tls_active && c->state == PG_C_TLS, "PG_START_TLS");
        if (st->direct) {
            FUZZ_CHECK(st->data == NULL && st->len == 0, "direct TLS: nothing to answer");
            FUZZ_CHECK(pos == first && in[pos] == 0x16, "direct TLS only on the first byte");
        } else {
            FUZZ_CHECK(st->len == 1 && st->data && st->data[0] == 'S', "answer 'S'");
            FUZZ_CHECK(c->seen_ssl_request, "after an SSLRequest");
        }
        break;
    case PG_RELAY:
        FUZZ_CHECK(false, "PG_RELAY before the StartupMessage");
        break;
    }
    FUZZ_CHECK_CSTR(c->user);
    FUZZ_CHECK_CSTR(c->database);
    FUZZ_CHECK_CSTR(c->application_name);
}

static void run(const uint8_t *in, size_t len, uint8_t flags, struct fuzz_cuts cuts, uint8_t fill,
                struct outcome *o)
{
    static const enum pg_client_tls modes[4] = {PG_TLS_OFF, PG_TLS_ALLOW, PG_TLS_REQUIRE,
                                                PG_TLS_ALLOW};
    enum pg_client_tls mode = modes[(flags >> 3) & 3];
    struct pg_client *c = malloc(sizeof *c);
    FUZZ_CHECK(c != NULL, "out of memory");
    memset(c, fill, sizeof *c); /* init must not rely on zeroed memory */
    pg_client_init(c);
    FUZZ_CHECK(c->tls == PG_TLS_OFF && !c->tls_active, "init: client TLS off");
    c->tls = mode;
    memset(o, 0, sizeof *o);
    o->c = c;
    bool no_memory = (flags & F_NO_MEMORY) != 0;
    wire_alloc_fail_after(no_memory ? 0 : -1);

    /* [first, limit): what the machine may see now; end: where the current call's input ends */
    size_t first = 0, limit = len, end;
    if (mode == PG_TLS_OFF) {
        end = fuzz_cut(&cuts, len);
    } else {
        first = len > 0 ? 1 : 0;
        limit = len > 0 && in[0] < len - 1 ? 1 + (size_t)in[0] : len;
        end = limit;
    }
    size_t pos = first;
    struct pg_step st;
    for (size_t guard = 0;; guard++) {
        FUZZ_CHECK(guard <= 2 * len + 16, "no progress");
        memset(&st, fill, sizeof st);
        size_t n = pg_client_feed(c, in + pos, end - pos, &st);
        FUZZ_CHECK(n <= end - pos, "consumed %zu of %zu", n, end - pos);
        pos += n;
        check_step(c, &st, in, pos, first, no_memory);
        if (st.action == PG_NEED_MORE) {
            FUZZ_CHECK(pos == end, "PG_NEED_MORE left input unconsumed");
            if (end == limit)
                break;
            end += fuzz_cut(&cuts, limit - end);
            continue;
        }
        fuzz_trace_add(&o->t, 0, (int)st.action, (int)st.reason, st.direct, st.detail, st.data,
                       st.len);
        if (st.action == PG_START_TLS) {
            /* CVE-2021-23214: an 'S' only when nothing came after the SSLRequest */
            FUZZ_CHECK(st.direct || pos == end, "PG_START_TLS with unencrypted bytes unread");
            pg_client_tls_started(c);
            FUZZ_CHECK(c->tls_active && c->state == PG_C_HEADER, "pg_client_tls_started");
            pos = limit;
            limit = len;
            end = pos + fuzz_cut(&cuts, len - pos);
            continue;
        }
        if (finished(st.action))
            break;
    }
    o->consumed = pos;
    wire_alloc_fail_after(-1);
    if (!finished(st.action))
        return;

    /* A finished machine consumes nothing and, after a StartupMessage, says relay; its packet
     * stays where it was (the proxy sends it after the TLS handshake, without a copy). */
    size_t plen;
    const uint8_t *packet = pg_client_packet(c, &plen);
    bool sent = st.action == PG_DIAL_UPSTREAM || st.action == PG_CANCEL;
    FUZZ_CHECK(sent ? packet == st.data && plen == st.len : packet == NULL && plen == 0,
               "pg_client_packet");
    static const uint8_t one = 'Q';
    const uint8_t *more = pos < len ? in + pos : &one;
    size_t more_len = pos < len ? len - pos : 1;
    struct pg_step again;
    FUZZ_CHECK(pg_client_feed(c, more, more_len, &again) == 0, "finished machine consumed");
    if (st.action == PG_DIAL_UPSTREAM) {
        FUZZ_CHECK(again.action == PG_RELAY && again.data == NULL, "PG_RELAY expected");
    } else {
        FUZZ_CHECK(again.action == PG_FAIL && again.reason == DBT_INTERNAL_ERROR,
                   "PG_FAIL internal_error expected, got %d", again.action);
    }
    check_memory(c);
    if (sent) {
        const struct fuzz_rec *r = &o->t.rec[o->t.n - 1];
        FUZZ_CHECK(pg_client_packet(c, &plen) == packet, "packet moved");
        FUZZ_CHECK(memcmp(packet, o->t.arena + r->off, r->len) == 0, "packet changed");
    }
}

static void same(const struct outcome *a, const struct outcome *b, const char *how)
{
    fuzz_trace_same(&a->t, &b->t, how);
    FUZZ_CHECK(a->consumed == b->consumed, "%s: consumed %zu vs %zu", how, a->consumed,
               b->consumed);
    const struct pg_client *x = a->c, *y = b->c;
    FUZZ_CHECK(x->state == y->state && x->have == y->have && x->need == y->need, "%s: state", how);
    if (x->state != PG_C_FAILED) /* a failed machine drops its bytes */
        FUZZ_CHECK(memcmp(current(x), current(y), x->have) == 0, "%s: buffered bytes", how);
    FUZZ_CHECK(pg_client_allocated(x) == pg_client_allocated(y), "%s: memory held", how);
    FUZZ_CHECK(x->seen_ssl_request == y->seen_ssl_request &&
                   x->seen_gssenc_request == y->seen_gssenc_request && x->version == y->version,
               "%s: requests seen / version", how);
    FUZZ_CHECK(x->tls == y->tls && x->tls_active == y->tls_active, "%s: client TLS", how);
    FUZZ_CHECK(strcmp(x->user, y->user) == 0 && strcmp(x->database, y->database) == 0 &&
                   strcmp(x->application_name, y->application_name) == 0,
               "%s: idents", how);
}

static void outcome_free(struct outcome *o)
{
    pg_client_free(o->c);
    FUZZ_CHECK(pg_client_allocated(o->c) == 0, "pg_client_free left memory");
    free(o->c);
}

FUZZ_SPLIT_ENTRY((void)0)
