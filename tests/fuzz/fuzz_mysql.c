/* my_feed_server / my_feed_client / my_tls_ready / my_fail: a whole MySQL/MariaDB session through
 * the connection phase, the relay and COM_CHANGE_USER, both legs interleaved as the input says.
 *
 * Payload (after the cut header of fuzz_common.h): a list of events
 *   tag % 3 == 0   bytes from the upstream: 2-byte little-endian length, then the bytes
 *   tag % 3 == 1   bytes from the client: same layout
 *   tag % 3 == 2   dbtrust gives up (timeout...): my_fail with reason (tag / 3) % DBT_REASON_COUNT
 * Header flags: 0x08 the RSA bridge key is configured, 0x10 the client leg is a Unix socket,
 * 0x20 the upstream TLS handshake fails (my_fail instead of my_tls_ready), 0x40 a long error
 * context is configured, 0x80 the handshake takes a while: it ends at the next tag % 3 == 2
 * event instead of at once, and the byte events before it are fed to the waiting session. After
 * MY_START_TLS the rest of that event is dropped, as the proxy stops reading (px_mysql.c). Every
 * event is fed whole, in the chosen chunks and byte by byte: the steps (relay steps of a leg
 * merged), the bytes each event consumed and the session's state must agree.
 * TLS on the client leg (PROTOCOLS.md C2) is chosen by the first event's tag when it is a byte
 * event: client_tls = (tag / 3) % 3 (0 off, 1 allow, 2 require), and (tag / 9) % 2 makes the
 * client's TLS handshake fail (my_fail, no packet). Tags 0 and 1 keep client_tls off. After
 * MY_START_CLIENT_TLS the rest of the event is dropped (it is the ClientHello, the TLS engine's);
 * the handshake then ends at once, or with F_TLS_LATE at the next tag % 3 == 2 event, like the
 * upstream one.
 * Memory (issue 14): that first tag also chooses an allocation to fail, (tag / 18) % 8: 0 none,
 * j the session's allocation number j - 1 (packet buffers, the PEM answer, a decrypted password,
 * a change-user's buffer); it must become MY_FAIL DBT_INTERNAL_ERROR "out of memory". After
 * every call the session holds at most one packet buffer, within MY_HEADER + MY_MAX_PACKET,
 * none while relaying (but for a COM_CHANGE_USER being read), and a reply buffer only on the
 * step that hands it out. */
#include <openssl/evp.h>

#include "fuzz_common.h"
#include "fuzz_rsa_key.h"
#include "mysql.h"
#include "wire.h"

#define F_RSA      0x08
#define F_UNIX     0x10
#define F_TLS_FAIL 0x20
#define F_CONTEXT  0x40
#define F_TLS_LATE 0x80

enum leg { LEG_SERVER, LEG_CLIENT, LEG_TLS, LEG_GIVE_UP, LEG_EVENT_END, LEG_CLIENT_TLS };

static EVP_PKEY *rsa_key;
static char rsa_pem[MY_PEM_MAX + 1];
static char long_context[700];

static void setup_once(void)
{
    if (rsa_key)
        return;
    rsa_key = my_rsa_from_pem(fuzz_rsa_key_pem, sizeof fuzz_rsa_key_pem - 1);
    FUZZ_CHECK(rsa_key != NULL, "fuzz RSA key");
    FUZZ_CHECK(my_rsa_public_pem(rsa_key, rsa_pem, sizeof rsa_pem) > 0, "public PEM");
    /* Longer than an ERR message may be, with 2-byte UTF-8 characters to cut around. */
    size_t n = (size_t)snprintf(long_context, sizeof long_context, " [listener ");
    while (n + 3 < sizeof long_context) {
        long_context[n++] = '\xC3';
        long_context[n++] = '\xA9';
    }
    long_context[n] = '\0';
}

struct outcome {
    struct fuzz_trace t;
    struct my_session *s;
};

/* What the harness knows about the session so far, for the checks below. */
struct seen {
    bool greeted;   /* the greeting went to the client */
    bool ssl_sent;  /* the SSLRequest went to the upstream */
    bool tls_ready; /* my_tls_ready returned the response */
    bool tls_wait;  /* MY_START_TLS returned, the handshake not over yet (F_TLS_LATE) */
    bool ended;     /* MY_FAIL / MY_CLOSE */
    enum my_client_tls client_tls;
    bool client_tls_fail;  /* the client's TLS handshake is to fail */
    bool client_tls_wait;  /* MY_START_CLIENT_TLS returned, my_client_tls_ready not called yet */
    bool client_tls_ready; /* my_client_tls_ready was called */
    bool no_memory;        /* an allocation was chosen to fail */
    uint8_t fill;          /* the garbage the session and the steps started with */
    uint8_t flags;         /* of the input */
    struct fuzz_cuts cuts;
};

static void check_packet(const struct my_step *st, const char *what)
{
    FUZZ_CHECK(st->data != NULL && st->len >= MY_HEADER, "%s: %zu bytes", what, st->len);
    FUZZ_CHECK((size_t)wire_le24(st->data) + MY_HEADER == st->len, "%s: one packet, framed", what);
}

static void check_err_packet(const struct my_step *st, const char *what)
{
    check_packet(st, what);
    FUZZ_CHECK(st->len >= MY_HEADER + 3 && st->data[MY_HEADER] == 0xFF, "%s: an ERR packet", what);
    FUZZ_CHECK(st->len <= MY_HEADER + 9 + MY_ERR_MSG_MAX, "%s: ERR message over %d bytes", what,
               MY_ERR_MSG_MAX);
}

/* The greeting the client sees offers no compression (B6), and TLS only when dbtrust serves it
 * on the client leg (B1, C2). */
static void check_greeting(const struct my_step *st, enum my_client_tls client_tls)
{
    const uint8_t *p = st->data + MY_HEADER;
    size_t n = st->len - MY_HEADER;
    FUZZ_CHECK(n >= 1 && p[0] == 0x0A, "greeting is HandshakeV10");
    const uint8_t *nul = memchr(p + 1, 0, n - 1);
    FUZZ_CHECK(nul != NULL, "greeting version terminated");
    size_t v = (size_t)(nul - p) + 1;
    FUZZ_CHECK(n >= v + 20, "greeting capabilities present");
    uint32_t caps = (uint32_t)p[v + 13] | (uint32_t)p[v + 14] << 8 | (uint32_t)p[v + 18] << 16 |
                    (uint32_t)p[v + 19] << 24;
    FUZZ_CHECK(!(caps & (MY_CLIENT_COMPRESS | MY_CLIENT_ZSTD)),
               "greeting still offers compression: caps 0x%08x", caps);
    FUZZ_CHECK(!(caps & MY_CLIENT_SSL) == (client_tls == MY_TLS_OFF),
               "greeting's CLIENT_SSL does not follow client_tls %d: caps 0x%08x", client_tls,
               caps);
}

/* What the session may hold after any call (issue 14). */
static void check_memory(const struct my_session *s, const struct my_step *st)
{
    FUZZ_CHECK(s->pkt_cap <= MY_HEADER + MY_MAX_PACKET && (s->pkt != NULL) == (s->pkt_cap > 0),
               "packet buffer of %zu bytes", s->pkt_cap);
    FUZZ_CHECK(my_session_allocated(s) == s->pkt_cap + s->reply_cap, "allocated");
    /* the reply lives for the step that hands it out */
    FUZZ_CHECK(s->reply == NULL || (st->data == s->reply && st->len <= s->reply_cap),
               "a reply buffer held past its step");
    if (st->action == MY_NEED_MORE || st->action == MY_RELAY)
        FUZZ_CHECK(s->state != MY_S_RELAY || s->pkt == NULL || s->change_user,
                   "a packet buffer held while relaying");
}

static void check_step(const struct my_session *s, const struct my_step *st, enum leg leg,
                       struct seen *seen)
{
    check_memory(s, st);
    FUZZ_CHECK(!st->phase_end ||
                   (st->action == MY_SEND_CLIENT && st->len > MY_HEADER &&
                    (st->data[MY_HEADER] == 0x00 || st->data[MY_HEADER] == 0xFF) && my_relaying(s)),
               "phase_end on action %d", st->action);
    switch (st->action) {
    case MY_NEED_MORE:
        FUZZ_CHECK(st->data == NULL && st->len == 0, "MY_NEED_MORE with data");
        break;
    case MY_SEND_CLIENT:
        check_packet(st, "MY_SEND_CLIENT");
        if (!seen->greeted) {
            FUZZ_CHECK(leg == LEG_SERVER, "the first packet to the client is the greeting");
            check_greeting(st, seen->client_tls);
            seen->greeted = true;
        }
        break;
    case MY_SEND_SERVER_PLAIN:
        /* The only plaintext that ever goes upstream (B2). */
        FUZZ_CHECK(!seen->ssl_sent && leg == LEG_CLIENT, "a second plaintext packet upstream");
        FUZZ_CHECK(seen->client_tls != MY_TLS_REQUIRE || seen->client_tls_ready,
                   "a plaintext client got through on a client_tls = require listener");
        check_packet(st, "MY_SEND_SERVER_PLAIN");
        FUZZ_CHECK(st->len == MY_HEADER + 32 && st->data[3] == 1, "SSLRequest: 32 bytes, seq 1");
        FUZZ_CHECK(st->data[MY_HEADER + 1] & (MY_CLIENT_SSL >> 8), "SSLRequest without CLIENT_SSL");
        seen->ssl_sent = true;
        break;
    case MY_START_TLS:
        FUZZ_CHECK(seen->ssl_sent && !seen->tls_ready && st->data == NULL && st->len == 0,
                   "MY_START_TLS");
        break;
    case MY_START_CLIENT_TLS:
        FUZZ_CHECK(leg == LEG_CLIENT && seen->greeted && !seen->ssl_sent &&
                       !seen->client_tls_ready && seen->client_tls != MY_TLS_OFF &&
                       st->data == NULL && st->len == 0,
                   "MY_START_CLIENT_TLS");
        break;
    case MY_SEND_SERVER:
        FUZZ_CHECK(seen->tls_ready || leg == LEG_TLS, "MY_SEND_SERVER before TLS is up");
        check_packet(st, "MY_SEND_SERVER");
        break;
    case MY_RELAY:
        FUZZ_CHECK(st->data != NULL && st->len > 0, "empty MY_RELAY");
        FUZZ_CHECK(seen->tls_ready, "relay before TLS");
        break;
    case MY_FAIL:
        FUZZ_CHECK(st->detail != NULL, "MY_FAIL without detail");
        if (strcmp(st->detail, "out of memory") == 0)
            FUZZ_CHECK(seen->no_memory && st->reason == DBT_INTERNAL_ERROR, "out of memory");
        /* mid-handshake the client could read no MySQL packet */
        FUZZ_CHECK(!seen->client_tls_wait || st->len == 0, "MY_FAIL packet during client TLS");
        if (st->reason == DBT_CLIENT_TLS_REQUIRED && leg == LEG_CLIENT) { /* not my_fail's */
            FUZZ_CHECK(seen->client_tls == MY_TLS_REQUIRE && !seen->client_tls_ready &&
                           !seen->ssl_sent && st->len > MY_HEADER + 3,
                       "client_tls_required");
            FUZZ_CHECK(st->data[3] == 2 && st->data[MY_HEADER + 1] == (3159 & 0xFF) &&
                           st->data[MY_HEADER + 2] == 3159 >> 8,
                       "client_tls_required: ERR 3159 at seq 2");
        }
        if (st->len > 0)
            check_err_packet(st, "MY_FAIL");
        else
            FUZZ_CHECK(st->data == NULL, "MY_FAIL: data without length");
        break;
    case MY_CLOSE: {
        /* the server's ERR greeting: dbtrust's ERR at seq 0 with the server's code, in dbtrust's
         * words (the server is not authenticated); the log's detail printable and bounded */
        FUZZ_CHECK(st->detail != NULL && leg == LEG_SERVER && !seen->greeted, "MY_CLOSE");
        check_err_packet(st, "MY_CLOSE");
        static const char words[] = "dbtrust: upstream refused the connection (";
        FUZZ_CHECK(st->data[3] == 0 && memmem(st->data, st->len, words, sizeof words - 1) != NULL,
                   "MY_CLOSE: not dbtrust's ERR at seq 0");
        char detail[400];
        size_t n = my_refusal_detail(s, detail, sizeof detail);
        FUZZ_CHECK(n > 0 && n < sizeof detail - 1 && strlen(detail) == n,
                   "MY_CLOSE: refusal detail of %zu bytes", n);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(detail[i] >= 0x20 && detail[i] < 0x7F, "MY_CLOSE: detail byte 0x%02x",
                       (unsigned)(uint8_t)detail[i]);
        break;
    }
    }
    FUZZ_CHECK_CSTR(s->user);
    FUZZ_CHECK_CSTR(s->database);
    FUZZ_CHECK_CSTR(s->program_name);
    FUZZ_CHECK_CSTR(s->plugin);
    FUZZ_CHECK(s->nonce_len <= MY_NONCE_LEN, "nonce of %zu bytes", s->nonce_len);
}

static void record(struct fuzz_trace *t, enum leg leg, const struct my_step *st)
{
    if (st->action == MY_RELAY && t->n > 0 && t->rec[t->n - 1].action == MY_RELAY &&
        t->rec[t->n - 1].leg == (int)leg) {
        fuzz_trace_extend(t, st->data, st->len);
        return;
    }
    fuzz_trace_add(t, (int)leg, (int)st->action, (int)st->reason, st->phase_end, st->detail,
                   st->data, st->len);
}

static bool ends(enum my_action a)
{
    return a == MY_FAIL || a == MY_CLOSE;
}

/* The upstream TLS handshake, after MY_START_TLS. */
static void tls_step(struct my_session *s, struct fuzz_trace *t, struct seen *seen)
{
    struct my_step st;
    memset(&st, seen->fill, sizeof st);
    if (seen->flags & F_TLS_FAIL) {
        my_fail(s, DBT_TLS_UNTRUSTED_CHAIN,
                "SSL connection error: certificate verify failed: unable to get local issuer "
                "certificate",
                &st);
        FUZZ_CHECK(st.action == MY_FAIL && st.len > 0, "TLS failure gives the client an ERR");
        /* the client's seq 2 was its response inside TLS when its leg is TLS (C2) */
        uint8_t seq = seen->client_tls_ready ? 3 : 2;
        FUZZ_CHECK(st.data[3] == seq, "the ERR after the response has seq %u, got %u", seq,
                   st.data[3]);
    } else {
        my_tls_ready(s, &st);
        FUZZ_CHECK(st.action == MY_SEND_SERVER && st.data[3] == 2, "response at seq 2 over TLS");
        FUZZ_CHECK(st.data[MY_HEADER + 1] & (MY_CLIENT_SSL >> 8), "response without CLIENT_SSL");
    }
    check_step(s, &st, LEG_TLS, seen);
    record(t, LEG_TLS, &st);
    seen->tls_ready = st.action == MY_SEND_SERVER;
    seen->ended = ends(st.action);
}

/* The client leg's TLS server handshake, after MY_START_CLIENT_TLS. */
static void client_tls_step(struct my_session *s, struct fuzz_trace *t, struct seen *seen)
{
    struct my_step st;
    memset(&st, seen->fill, sizeof st);
    if (seen->client_tls_fail) {
        my_fail(s, DBT_CLIENT_TLS_HANDSHAKE_FAILED, "client TLS handshake failed (fuzz)", &st);
        FUZZ_CHECK(st.action == MY_FAIL && st.len == 0, "client TLS failure: no packet");
        check_step(s, &st, LEG_CLIENT_TLS, seen);
        record(t, LEG_CLIENT_TLS, &st);
        seen->client_tls_wait = false;
        seen->ended = true;
        return;
    }
    my_client_tls_ready(s);
    FUZZ_CHECK(s->state == MY_S_RESPONSE && s->client_tls_up && s->c_seq == 1,
               "after my_client_tls_ready: the response at seq 2 is next");
    fuzz_trace_add(t, LEG_CLIENT_TLS, MY_NEED_MORE, DBT_NONE, false, NULL, NULL, 0);
    seen->client_tls_wait = false;
    seen->client_tls_ready = true;
}

/* Feeds one event's bytes; returns how many were consumed. */
static size_t feed_event(struct my_session *s, enum leg leg, const uint8_t *in, size_t len,
                         struct fuzz_trace *t, struct seen *seen)
{
    size_t pos = 0, end = fuzz_cut(&seen->cuts, len);

    for (size_t guard = 0;; guard++) {
        FUZZ_CHECK(guard <= 2 * len + 16, "no progress");
        struct my_step st;
        memset(&st, seen->fill, sizeof st);
        size_t n = leg == LEG_SERVER ? my_feed_server(s, in + pos, end - pos, &st)
                                     : my_feed_client(s, in + pos, end - pos, &st);
        FUZZ_CHECK(n <= end - pos, "consumed %zu of %zu", n, end - pos);
        if (st.action == MY_RELAY) /* relay data is the caller's own input, never a copy */
            FUZZ_CHECK(st.data == in + pos && st.len == n, "MY_RELAY is not the consumed input");
        pos += n;
        check_step(s, &st, leg, seen);
        if (st.action == MY_NEED_MORE) {
            FUZZ_CHECK(pos == end, "MY_NEED_MORE left input unconsumed");
            if (end == len)
                return pos;
            end += fuzz_cut(&seen->cuts, len - end);
            continue;
        }
        record(t, leg, &st);
        if (ends(st.action)) {
            seen->ended = true;
            return pos;
        }
        if (st.action == MY_START_TLS) {
            if (seen->flags & F_TLS_LATE)
                seen->tls_wait = true;
            else
                tls_step(s, t, seen);
            return pos; /* the proxy stops reading the client during the handshake */
        }
        if (st.action == MY_START_CLIENT_TLS) {
            seen->client_tls_wait = true;
            if (!(seen->flags & F_TLS_LATE))
                client_tls_step(s, t, seen);
            return pos; /* the rest is the ClientHello: the TLS engine's */
        }
    }
}

/* After MY_FAIL / MY_CLOSE every call fails without a packet (mysql.h). */
static void check_ended(struct my_session *s)
{
    static const uint8_t one = 0;
    struct my_step st;
    FUZZ_CHECK(my_feed_server(s, &one, 1, &st) == 0 && st.action == MY_FAIL &&
                   st.reason == DBT_INTERNAL_ERROR && st.len == 0,
               "server fed after the end");
    FUZZ_CHECK(my_feed_client(s, &one, 1, &st) == 0 && st.action == MY_FAIL &&
                   st.reason == DBT_INTERNAL_ERROR && st.len == 0,
               "client fed after the end");
    my_fail(s, DBT_SHUTDOWN, "shutting down", &st);
    FUZZ_CHECK(st.action == MY_FAIL && st.len == 0, "my_fail after the end wrote a packet");
    my_tls_ready(s, &st);
    FUZZ_CHECK(st.action == MY_FAIL && st.reason == DBT_INTERNAL_ERROR, "my_tls_ready after end");
    FUZZ_CHECK(!my_relaying(s), "relaying after the end");
}

static void run(const uint8_t *p, size_t n, uint8_t flags, struct fuzz_cuts cuts, uint8_t fill,
                struct outcome *o)
{
    struct my_config cfg = {
        .unix_socket = (flags & F_UNIX) != 0,
        .rsa_key = (flags & F_RSA) ? rsa_key : NULL,
        .rsa_pem = (flags & F_RSA) ? rsa_pem : NULL,
        .context = (flags & F_CONTEXT) ? long_context : NULL,
    };
    struct seen seen = {.fill = fill, .flags = flags, .cuts = cuts};
    long fail_at = -1;
    if (n > 0 && p[0] % 3 != 2) {
        seen.client_tls = (enum my_client_tls)((p[0] / 3) % 3);
        seen.client_tls_fail = (p[0] / 9) % 2 == 1;
        fail_at = (long)((p[0] / 18) % 8) - 1;
    }
    seen.no_memory = fail_at >= 0;
    cfg.client_tls = seen.client_tls;
    struct my_session *s = malloc(sizeof *s);
    FUZZ_CHECK(s != NULL, "out of memory");
    memset(s, fill, sizeof *s); /* init must not rely on zeroed memory */
    FUZZ_CHECK(my_session_init(s, &cfg), "my_session_init");
    memset(o, 0, sizeof *o);
    o->s = s;
    wire_alloc_fail_after(fail_at);

    size_t at = 0;
    while (at < n && !seen.ended) {
        uint8_t tag = p[at++];
        if (tag % 3 == 2 && seen.client_tls_wait) {
            client_tls_step(s, &o->t, &seen);
            continue;
        }
        if (tag % 3 == 2 && seen.tls_wait) {
            seen.tls_wait = false;
            tls_step(s, &o->t, &seen);
            continue;
        }
        if (tag % 3 == 2) {
            struct my_step st;
            memset(&st, fill, sizeof st);
            bool greeted = s->state != MY_S_GREETING, relaying = my_relaying(s);
            enum dbt_reason reason = (enum dbt_reason)((tag / 3) % DBT_REASON_COUNT);
            my_fail(s, reason, "dbtrust gave up (fuzz)", &st);
            FUZZ_CHECK(st.action == MY_FAIL, "my_fail");
            check_step(s, &st, LEG_GIVE_UP, &seen);
            FUZZ_CHECK((relaying || seen.client_tls_wait) == (st.len == 0),
                       "ERR packet unless relaying or in the client's TLS handshake");
            if (st.len > 0 && !greeted) /* before the greeting: seq 0, no SQLSTATE (B5) */
                FUZZ_CHECK(st.data[3] == 0 && st.data[MY_HEADER + 3] != '#', "early ERR");
            record(&o->t, LEG_GIVE_UP, &st);
            seen.ended = true;
            break;
        }
        size_t len = at + 2 <= n ? (size_t)p[at] | (size_t)p[at + 1] << 8 : 0;
        at = at + 2 <= n ? at + 2 : n;
        if (len > n - at)
            len = n - at;
        enum leg leg = tag % 3 == 0 ? LEG_SERVER : LEG_CLIENT;
        size_t used = feed_event(s, leg, p + at, len, &o->t, &seen);
        fuzz_trace_add(&o->t, LEG_EVENT_END, 0, (int)used, false, NULL, NULL, 0);
        at += len;
    }
    wire_alloc_fail_after(-1);
    if (seen.ended)
        check_ended(s);
}

static void same(const struct outcome *a, const struct outcome *b, const char *how)
{
    const struct my_session *x = a->s, *y = b->s;

    fuzz_trace_same(&a->t, &b->t, how);
    FUZZ_CHECK(x->state == y->state && x->c_seq == y->c_seq && x->s_seq == y->s_seq,
               "%s: state/seq %d/%u/%u vs %d/%u/%u", how, x->state, x->c_seq, x->s_seq, y->state,
               y->c_seq, y->s_seq);
    FUZZ_CHECK(x->server_caps == y->server_caps && x->client_caps == y->client_caps &&
                   x->compressed == y->compressed && x->client_tls_up == y->client_tls_up,
               "%s: capabilities", how);
    FUZZ_CHECK(x->bridge == y->bridge && x->key_sent == y->key_sent, "%s: bridge", how);
    FUZZ_CHECK(x->nonce_len == y->nonce_len && memcmp(x->nonce, y->nonce, x->nonce_len) == 0,
               "%s: nonce", how);
    FUZZ_CHECK(strcmp(x->plugin, y->plugin) == 0 && strcmp(x->user, y->user) == 0 &&
                   strcmp(x->database, y->database) == 0 &&
                   strcmp(x->program_name, y->program_name) == 0,
               "%s: plugin/user/database/program '%s' '%s' '%s' '%s' vs '%s' '%s' '%s' '%s'", how,
               x->plugin, x->user, x->database, x->program_name, y->plugin, y->user, y->database,
               y->program_name);
    if (x->state == MY_S_AUTH)
        FUZZ_CHECK(x->owner == y->owner && x->have == y->have && x->need == y->need,
                   "%s: packet being assembled", how);
    if (x->state == MY_S_RELAY)
        FUZZ_CHECK(x->hdr_have == y->hdr_have && x->left == y->left && x->prev_seq == y->prev_seq &&
                       x->continued == y->continued && x->candidate == y->candidate &&
                       x->change_user == y->change_user,
                   "%s: relay framing", how);
}

static void outcome_free(struct outcome *o)
{
    my_session_wipe(o->s);
    FUZZ_CHECK(my_session_allocated(o->s) == 0, "my_session_wipe left memory");
    free(o->s);
}

FUZZ_SPLIT_ENTRY(setup_once())
