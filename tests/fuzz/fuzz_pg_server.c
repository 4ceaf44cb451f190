/* pg_server_feed: what a PostgreSQL server sends (decrypted) after the StartupMessage until
 * authentication starts. The payload is the server's byte stream, fed whole, in the chunks the
 * input chooses and byte by byte (fuzz_common.h); all must agree. Every message forwarded must be
 * the server's own bytes, except an AuthenticationSASL, which must be the server's mechanism list
 * without its "-PLUS" entries (checked here against an independent reading of the message).
 *
 * Flags bits 3-7, k: when k > 0, the machine's allocation number k - 1 (one per message, one
 * more for a SASL rewrite) fails; it must become PG_FAIL DBT_INTERNAL_ERROR "out of memory".
 * After every call the machine holds exactly the message being read (its announced length,
 * nothing before its header is complete) or the one just handed out, and its rewrite.
 *
 * The same stream, in the same chunks, also goes through the login watcher (pg_login_watch_feed,
 * issue 15), which reads the whole login by framing only: it must never consume what it was not
 * given, stop right after each event, repeat its end once finished, keep a key of 4..256 bytes,
 * and agree with itself however the stream is cut. */
#include "dbt_util.h"
#include "fuzz_common.h"
#include "pg.h"
#include "wire.h"

struct outcome {
    struct fuzz_trace t;
    size_t consumed;
    struct pg_server *s;
    struct pg_login_watch w; /* the watcher at the end */
    enum pg_login_event events[64];
    size_t n_events, watch_consumed;
};

/* The login watcher over the whole input, in the chunks cuts gives. */
static void watch(const uint8_t *in, size_t len, struct fuzz_cuts cuts, uint8_t fill,
                  struct outcome *o)
{
    struct pg_login_watch *w = &o->w;
    memset(w, fill, sizeof *w);
    pg_login_watch_init(w);
    size_t pos = 0, end = fuzz_cut(&cuts, len);
    for (size_t guard = 0;; guard++) {
        FUZZ_CHECK(guard <= 2 * len + 16, "watcher makes no progress");
        enum pg_login_event ev;
        size_t n = pg_login_watch_feed(w, in + pos, end - pos, &ev);
        FUZZ_CHECK(n <= end - pos, "watcher consumed %zu of %zu", n, end - pos);
        pos += n;
        FUZZ_CHECK(w->key.len == 0 || (w->key.len >= 4 && w->key.len <= PG_MAX_CANCEL_KEY),
                   "key of %u bytes", w->key.len);
        if (ev == PG_LOGIN_NEED_MORE) {
            FUZZ_CHECK(pos == end, "PG_LOGIN_NEED_MORE left input");
            if (end == len)
                break;
            end += fuzz_cut(&cuts, len - end);
            continue;
        }
        if (o->n_events < DBT_ARRAY_LEN(o->events))
            o->events[o->n_events++] = ev;
        if (ev == PG_LOGIN_AUTH_OK) {
            FUZZ_CHECK(w->auth_ok, "AuthenticationOk not remembered");
            continue;
        }
        FUZZ_CHECK(ev != PG_LOGIN_READY || w->auth_ok, "ready before AuthenticationOk");
        FUZZ_CHECK(ev != PG_LOGIN_INVALID || w->detail != NULL, "invalid without a detail");
        enum pg_login_event again;
        FUZZ_CHECK(pg_login_watch_feed(w, in, len, &again) == 0 && again == ev,
                   "finished watcher consumed or changed its answer");
        break;
    }
    o->watch_consumed = pos;
}

/* The AuthenticationSASL the client should see for msg[0, n) ('R', length, code 10, list):
 * written to out, its length returned; 0 if the list is malformed or has no mechanism left. */
static size_t expected_sasl(const uint8_t *msg, size_t n, uint8_t *out)
{
    size_t at = 9, w = 9;
    bool any = false;

    memcpy(out, msg, 9);
    while (at < n && msg[at] != 0) {
        const uint8_t *nul = memchr(msg + at, 0, n - at);
        if (!nul)
            return 0;
        size_t len = (size_t)(nul - (msg + at));
        any = true;
        if (!(len >= 5 && memcmp(msg + at + len - 5, "-PLUS", 5) == 0)) {
            memcpy(out + w, msg + at, len + 1);
            w += len + 1;
        }
        at += len + 1;
    }
    if (at != n - 1 || !any || w == 9)
        return 0;
    out[w++] = 0;
    wire_put_be32(out + 1, (uint32_t)(w - 1));
    return w;
}

/* A forwarded message: msg[0, n) is what the machine consumed for it. */
static void check_forwarded(const struct pg_step *st, const uint8_t *msg, size_t n)
{
    static uint8_t want[PG_MAX_SERVER_STARTUP_MSG];

    FUZZ_CHECK(n >= 5 && n <= PG_MAX_SERVER_STARTUP_MSG, "message of %zu bytes forwarded", n);
    FUZZ_CHECK((size_t)wire_be32(msg + 1) + 1 == n, "forwarded a message cut at the wrong place");
    FUZZ_CHECK(st->len >= 5 && (size_t)wire_be32(st->data + 1) + 1 == st->len,
               "forwarded message framing");
    if (msg[0] == 'R' && n >= 9 && wire_be32(msg + 5) == 10) {
        size_t wn = expected_sasl(msg, n, want);
        FUZZ_CHECK(wn > 0, "a SASL list the machine should have refused was forwarded");
        FUZZ_CHECK(st->len == wn && memcmp(st->data, want, wn) == 0, "SASL list rewritten wrong");
        return;
    }
    FUZZ_CHECK(st->len == n && memcmp(st->data, msg, n) == 0, "message not forwarded verbatim");
}

/* What the machine may hold after a call that returned st (issue 14). */
static void check_memory(const struct pg_server *s, const struct pg_step *st)
{
    size_t want = 0;
    if (st->action == PG_SEND_CLIENT)
        want = s->msg_len + (st->data == s->out ? s->out_len : 0);
    else if (s->state == PG_S_BODY)
        want = s->need;
    if (st->action == PG_SEND_CLIENT)
        FUZZ_CHECK(s->msg && st->len <= s->msg_len && (st->data == s->msg || st->data == s->out),
                   "forwarded from the machine's own buffers");
    if (st->action != PG_FAIL) /* a failure releases on the next call */
        FUZZ_CHECK(pg_server_allocated(s) == want, "%zu bytes held, want %zu",
                   pg_server_allocated(s), want);
    FUZZ_CHECK(s->msg_len <= PG_MAX_SERVER_STARTUP_MSG && s->out_len <= s->msg_len,
               "buffers over the bound");
}

static void run(const uint8_t *in, size_t len, uint8_t flags, struct fuzz_cuts cuts, uint8_t fill,
                struct outcome *o)
{
    long fail_at = (long)(flags >> 3) - 1; /* -1: every allocation succeeds */
    struct pg_server *s = malloc(sizeof *s);
    FUZZ_CHECK(s != NULL, "out of memory");
    memset(s, fill, sizeof *s);
    pg_server_init(s);
    memset(o, 0, sizeof *o);
    o->s = s;
    watch(in, len, cuts, fill, o); /* cuts is a copy: the machine below replays the same */
    wire_alloc_fail_after(fail_at);

    size_t pos = 0, msg_start = 0, end = fuzz_cut(&cuts, len);
    bool auth_seen = false;
    struct pg_step st;
    for (size_t guard = 0;; guard++) {
        FUZZ_CHECK(guard <= 2 * len + 16, "no progress");
        memset(&st, fill, sizeof st);
        size_t n = pg_server_feed(s, in + pos, end - pos, &st);
        FUZZ_CHECK(n <= end - pos, "consumed %zu of %zu", n, end - pos);
        pos += n;
        check_memory(s, &st);
        switch (st.action) {
        case PG_NEED_MORE:
            FUZZ_CHECK(pos == end && st.data == NULL && st.len == 0, "PG_NEED_MORE");
            if (end == len)
                goto out;
            end += fuzz_cut(&cuts, len - end);
            continue;
        case PG_SEND_CLIENT:
            FUZZ_CHECK(!auth_seen, "a message forwarded after the first 'R' or 'E'");
            check_forwarded(&st, in + msg_start, pos - msg_start);
            auth_seen = in[msg_start] == 'R' || in[msg_start] == 'E';
            msg_start = pos;
            break;
        case PG_RELAY:
            FUZZ_CHECK(auth_seen && n == 0 && st.data == NULL, "PG_RELAY");
            break;
        case PG_FAIL:
            FUZZ_CHECK(st.detail != NULL && st.len == 0, "PG_FAIL");
            if (st.reason == DBT_INTERNAL_ERROR) {
                FUZZ_CHECK(fail_at >= 0 && strcmp(st.detail, "out of memory") == 0, "%s",
                           st.detail);
                break;
            }
            FUZZ_CHECK(st.reason == DBT_UPSTREAM_PROTOCOL_ERROR, "reason %s",
                       dbt_reason_name(st.reason));
            break;
        default:
            FUZZ_CHECK(false, "unexpected action %d", st.action);
        }
        fuzz_trace_add(&o->t, 0, (int)st.action, (int)st.reason, false, st.detail, st.data, st.len);
        if (st.action == PG_RELAY || st.action == PG_FAIL)
            break;
    }
out:
    o->consumed = pos;
    wire_alloc_fail_after(-1);
    if (st.action != PG_RELAY && st.action != PG_FAIL)
        return;
    /* Finished: nothing more is consumed, the same answer again. */
    static const uint8_t one = 'Z';
    struct pg_step again;
    FUZZ_CHECK(pg_server_feed(s, pos < len ? in + pos : &one, pos < len ? len - pos : 1, &again) ==
                   0,
               "finished machine consumed");
    if (st.action == PG_RELAY)
        FUZZ_CHECK(again.action == PG_RELAY, "PG_RELAY expected");
    else
        FUZZ_CHECK(again.action == PG_FAIL && again.reason == DBT_INTERNAL_ERROR,
                   "PG_FAIL internal_error expected");
    FUZZ_CHECK(pg_server_allocated(s) == 0, "a finished machine holds nothing");
}

static void same(const struct outcome *a, const struct outcome *b, const char *how)
{
    fuzz_trace_same(&a->t, &b->t, how);
    FUZZ_CHECK(a->consumed == b->consumed, "%s: consumed %zu vs %zu", how, a->consumed,
               b->consumed);
    FUZZ_CHECK(a->s->state == b->s->state && a->s->have == b->s->have && a->s->need == b->s->need,
               "%s: machine state", how);
    const uint8_t *x = a->s->state == PG_S_BODY ? a->s->msg : a->s->head;
    const uint8_t *y = b->s->state == PG_S_BODY ? b->s->msg : b->s->head;
    FUZZ_CHECK(memcmp(x, y, a->s->have) == 0, "%s: buffered bytes", how);
    FUZZ_CHECK(pg_server_allocated(a->s) == pg_server_allocated(b->s), "%s: memory held", how);
    FUZZ_CHECK(a->n_events == b->n_events &&
                   memcmp(a->events, b->events, a->n_events * sizeof a->events[0]) == 0,
               "%s: watcher events", how);
    FUZZ_CHECK(a->watch_consumed == b->watch_consumed && a->w.state == b->w.state &&
                   a->w.auth_ok == b->w.auth_ok && a->w.key.len == b->w.key.len &&
                   a->w.key.pid == b->w.key.pid &&
                   memcmp(a->w.key.key, b->w.key.key, a->w.key.len) == 0,
               "%s: watcher state", how);
}

static void outcome_free(struct outcome *o)
{
    pg_server_free(o->s);
    FUZZ_CHECK(pg_server_allocated(o->s) == 0, "pg_server_free left memory");
    free(o->s);
}

FUZZ_SPLIT_ENTRY((void)0)
