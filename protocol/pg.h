/* PostgreSQL startup phase as pure state machines (PROTOCOLS.md part A). No sockets: the proxy
 * feeds bytes and executes the returned step. Two machines, one per leg:
 *   pg_client - what the application sends before its session exists (A1, A2, A4), with dbtrust
 *               optionally the TLS server of that leg (C1);
 *   pg_server - what the upstream sends after TLS until authentication starts (A5, A7).
 */
#ifndef PG_H
#define PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dbt_reason.h"

#define PG_SSL_REQUEST_CODE    80877103u /* (1234 << 16) | 5679 */
#define PG_GSSENC_REQUEST_CODE 80877104u /* (1234 << 16) | 5680 */
#define PG_CANCEL_REQUEST_CODE 80877102u /* (1234 << 16) | 5678 */
#define PG_MAX_STARTUP_PACKET  10000u    /* body limit of the server (backend_startup.c) */
#define PG_MAX_CANCEL_KEY      256u      /* protocol 3.2 variable-length cancel keys */
/* Largest server message buffered during the startup phase (type byte included). Only
 * AuthenticationSASL is ever rewritten; the rest is buffered whole just to keep the framing
 * simple, each message in a buffer of its own announced length. */
#define PG_MAX_SERVER_STARTUP_MSG 16384u
#define PG_IDENT_MAX              64 /* user / database / application_name kept for logs (truncated) */

/* The 8 bytes dbtrust sends upstream, alone, before TLS. */
extern const uint8_t pg_ssl_request[8];
/* ALPN offered on the TLS leg, wire format: PostgreSQL 17+ servers expect "postgresql" (A3). */
extern const uint8_t pg_alpn[11];

enum pg_action {
    PG_NEED_MORE,     /* all input consumed; feed more when it arrives */
    PG_SEND_CLIENT,   /* write step.data/len to the client, then keep feeding */
    PG_DIAL_UPSTREAM, /* StartupMessage complete (step.data/len = the packet, verbatim) */
    PG_CANCEL,        /* CancelRequest complete (step.data/len = the packet, verbatim) */
    PG_RELAY,         /* startup phase over: relay raw bytes; input not consumed is relay data */
    PG_FAIL,          /* step.reason + step.detail; the proxy answers with an ErrorResponse */
    PG_CLOSE,         /* close silently (client opened with a TLS ClientHello: direct SSL) */
    /* Write step.data/len (the answer "S", or nothing for direct TLS) in plaintext, then run a
     * TLS server handshake on the client leg; step.direct tells which. Input not consumed is
     * ciphertext for that handshake (direct TLS: the whole ClientHello, since nothing is
     * consumed). Feed again only after pg_client_tls_started(), with decrypted bytes. */
    PG_START_TLS,
};

struct pg_step {
    enum pg_action action;
    const uint8_t *data; /* valid until the next call on the same machine */
    size_t len;
    enum dbt_reason reason; /* PG_FAIL */
    const char *detail;     /* PG_FAIL: static human text, e.g. "invalid startup packet length" */
    bool direct; /* PG_START_TLS: PostgreSQL 17+ direct TLS (first byte 0x16): ALPN required */
};

/* What dbtrust does with the client leg's SSLRequest (listener option client_tls, C1). */
enum pg_client_tls {
    PG_TLS_OFF,     /* answer 'N', close on a direct-TLS ClientHello: plaintext only (A1) */
    PG_TLS_ALLOW,   /* answer 'S' / accept direct TLS; a plaintext StartupMessage still works */
    PG_TLS_REQUIRE, /* as ALLOW, but a plaintext StartupMessage is refused (client_tls_required) */
};

/* PG_C_TLS: PG_START_TLS was returned, the machine waits for pg_client_tls_started(). */
enum pg_client_state { PG_C_HEADER, PG_C_BODY, PG_C_DONE, PG_C_FAILED, PG_C_TLS };

/* Bytes of a client packet held inside struct pg_client. The 8-byte header always fits: it is
 * read, and its length judged, before anything is allocated. So does every packet a client
 * sends before its StartupMessage: SSLRequest and GSSENCRequest (8), CancelRequest 3.0 (16) and
 * 3.2 with the 32-byte key PostgreSQL 18 hands out (44), with room for middleware that lengthens
 * keys a little (A2). Negotiation and cancels thus never allocate; a StartupMessage (libpq's is
 * some 80-200 bytes, options included) or a longer key gets a buffer of exactly its announced
 * length. Making this larger would make every connection pay for the rare long packet. */
#define PG_CLIENT_INLINE 64

struct pg_client {
    enum pg_client_state state;
    enum pg_client_tls tls; /* set after pg_client_init (default PG_TLS_OFF = today's behaviour) */
    bool tls_active;        /* the client leg is encrypted now (pg_client_tls_started) */
    /* At most one of each per connection, before the StartupMessage (A1); the SSLRequest
     * answered 'S' counts, so a second one inside that TLS session is a duplicate. */
    bool seen_ssl_request;
    bool seen_gssenc_request;
    uint32_t version;        /* protocol version of the StartupMessage, e.g. 0x00030000 */
    size_t have;             /* bytes of the current packet read so far */
    size_t need;             /* total length of the current packet once known */
    char user[PG_IDENT_MAX]; /* parsed from the StartupMessage, for logs only */
    char database[PG_IDENT_MAX];
    char application_name[PG_IDENT_MAX];
    /* The current packet is in `small` while it fits, else in `heap` (heap_len == need bytes,
     * allocated once the header passed its checks). Read it through pg_client_packet. */
    uint8_t *heap;
    size_t heap_len;
    uint8_t small[PG_CLIENT_INLINE];
};

/* Zeroes the machine: tls = PG_TLS_OFF, tls_active = false, nothing allocated. Set c->tls after
 * it. It does not free: a machine that was fed is given back with pg_client_free first. */
void pg_client_init(struct pg_client *c);
/* Wipes and frees what the machine allocated (the struct itself stays the caller's) and leaves
 * it failed: the packet of PG_DIAL_UPSTREAM / PG_CANCEL is gone, a later feed returns PG_FAIL
 * with DBT_INTERNAL_ERROR. Idempotent; pg_client_init may follow to use the struct again. */
void pg_client_free(struct pg_client *c);
/* The packet of PG_DIAL_UPSTREAM / PG_CANCEL, verbatim (*len bytes, length word included): valid
 * from that step until pg_client_free, later feeds included, since a finished machine never
 * writes it. The proxy sends it once the upstream TLS session is up, without a copy. NULL (and
 * *len = 0) in any other state. */
const uint8_t *pg_client_packet(const struct pg_client *c, size_t *len);
/* Heap bytes the machine holds now (0 while every packet fitted PG_CLIENT_INLINE): for tests
 * and for accounting what a connection costs. */
size_t pg_client_allocated(const struct pg_client *c);
/* Consumes up to len bytes; returns how many. Call again with the rest after acting on the step
 * (PG_SEND_CLIENT may be returned with input left over). After PG_DIAL_UPSTREAM / PG_CANCEL /
 * PG_FAIL / PG_CLOSE the machine is finished; bytes after the StartupMessage are not consumed
 * (a client must wait for the server before sending more, so the proxy may treat them as relay
 * data). After PG_START_TLS it waits for pg_client_tls_started().
 * Settled details:
 *  - PG_CLOSE (reason DBT_CLIENT_DIRECT_TLS) consumes nothing: a packet starting with 0x16 where
 *    direct TLS cannot be served (tls == PG_TLS_OFF, or not the first byte of the connection).
 *  - client TLS on (tls != PG_TLS_OFF), leg still plaintext:
 *      SSLRequest -> PG_START_TLS "S", direct = false; but if the same call holds any byte
 *      after it -> PG_FAIL DBT_CLIENT_PROTOCOL_ERROR "received unencrypted data after SSL
 *      request" (CVE-2021-23214: those bytes were not encrypted, yet would be read as if they
 *      came over TLS). First byte of the connection 0x16 -> PG_START_TLS, direct = true, no
 *      data, consuming nothing. GSSENCRequest -> 'N' in every mode.
 *      tls == PG_TLS_REQUIRE: a StartupMessage is parsed whole (user, database and
 *      application_name filled for the log), then PG_FAIL DBT_CLIENT_TLS_REQUIRED; a
 *      CancelRequest is still PG_CANCEL (PostgreSQL accepts plaintext cancels, libpq before 17
 *      can send no other, and the key opens nothing but that one cancel).
 *  - inside TLS (tls_active): SSLRequest and GSSENCRequest -> 'N' (each still at most once per
 *    connection), StartupMessage -> PG_DIAL_UPSTREAM, CancelRequest -> PG_CANCEL.
 *  - Fed while waiting for pg_client_tls_started: PG_FAIL DBT_INTERNAL_ERROR, consuming 0, and
 *    the machine is failed (bytes read before the handshake must never pass as decrypted).
 *  - PG_FAIL (DBT_CLIENT_PROTOCOL_ERROR) is returned as soon as the length word is known to be
 *    bad (4 bytes in), before any body is buffered; the bytes read so far count as consumed.
 *    A packet's buffer is allocated only once its 8-byte header passed every check (the
 *    startup bound, 8 for the encryption requests, 12 + 1..256 for a CancelRequest), so a
 *    refused length never costs memory. Allocation failure: PG_FAIL DBT_INTERNAL_ERROR "out of
 *    memory", the machine failed.
 *  - Finished machine, further calls consume 0: after PG_DIAL_UPSTREAM (state PG_C_DONE) they
 *    return PG_RELAY; after PG_CANCEL, PG_FAIL or PG_CLOSE they return PG_FAIL with
 *    DBT_INTERNAL_ERROR (a caller bug: nothing may be relayed on those connections).
 *  - The packet of PG_DIAL_UPSTREAM / PG_CANCEL (step.data, also pg_client_packet) stays valid
 *    until pg_client_free, later calls included. After PG_FAIL / PG_CLOSE the machine holds no
 *    heap any more.
 *  - Failure details (static): "invalid length of startup packet", "invalid length of SSLRequest
 *    packet", "invalid length of GSSENCRequest packet", "duplicate SSLRequest", "duplicate
 *    GSSENCRequest", "invalid length of cancel request packet", "unsupported negotiation request
 *    code", "unsupported frontend protocol", "invalid startup packet layout: expected terminator
 *    as last byte", "no PostgreSQL user name specified in startup packet". */
size_t pg_client_feed(struct pg_client *c, const uint8_t *in, size_t len, struct pg_step *out);
/* The TLS server handshake asked for by PG_START_TLS is complete: from now on the machine is fed
 * decrypted bytes and reads a fresh packet. Called in any other state it fails the machine (the
 * next feed returns PG_FAIL DBT_INTERNAL_ERROR). */
void pg_client_tls_started(struct pg_client *c);

/* Judges what the upstream sent in answer to pg_ssl_request: `in` is everything read so far
 * (len >= 1). Returns DBT_NONE only for exactly the single byte 'S'. 'N' or 'E' ->
 * DBT_UPSTREAM_REFUSED_TLS; 'S' followed by more bytes -> DBT_UPSTREAM_PLAINTEXT_AFTER_SSL_RESPONSE
 * (CVE-2021-23222: nothing may be buffered before the TLS handshake); anything else ->
 * DBT_UPSTREAM_PROTOCOL_ERROR. *detail gets a static explanation. The 'E' text is never shown
 * (CVE-2024-10977: the server is not authenticated yet). */
enum dbt_reason pg_check_ssl_answer(const uint8_t *in, size_t len, const char **detail);

/* The first byte a TLS server sends after 'S' is a TLS record: handshake (0x16) or alert (0x15).
 * Anything else is plaintext injected after the SSL response. */
bool pg_is_tls_record_start(uint8_t first_byte);

enum pg_server_state { PG_S_HEADER, PG_S_BODY, PG_S_RELAY, PG_S_FAILED };

struct pg_server {
    enum pg_server_state state;
    /* The first 'R' forwarded was AuthenticationSASL (code 10): the client's next message is a
     * SASLInitialResponse, which pg_sasl_initial_flag judges. */
    bool sasl_offered;
    size_t have;
    size_t need;
    uint8_t head[5]; /* type and length word of the message being read */
    /* The message being read, head included: msg_len (= its length + 1) bytes, allocated when
     * its length word has passed the bound. Released at the next call once handed out. */
    uint8_t *msg;
    size_t msg_len;
    uint8_t *out; /* the rewritten AuthenticationSASL (out_len bytes), only while handed out */
    size_t out_len;
};

/* Sets up a machine; nothing is allocated yet. It does not free: see pg_server_free. */
void pg_server_init(struct pg_server *s);
/* Wipes and frees what the machine holds (the struct stays the caller's) and leaves it failed:
 * a later feed returns PG_FAIL with DBT_INTERNAL_ERROR. Idempotent. */
void pg_server_free(struct pg_server *s);
/* Heap bytes the machine holds now: for tests and for accounting. */
size_t pg_server_allocated(const struct pg_server *s);
/* Feeds decrypted bytes from the upstream that arrive after the StartupMessage was sent.
 * NegotiateProtocolVersion ('v') and NoticeResponse ('N') before the first 'R' are forwarded
 * (PG_SEND_CLIENT); any other type there -> PG_FAIL (DBT_UPSTREAM_PROTOCOL_ERROR). The first 'R' is
 * forwarded (AuthenticationSASL, code 10, rewritten with every "-PLUS" mechanism removed, A5) and
 * the next call returns PG_RELAY; an 'E' is forwarded and then PG_RELAY too (the server closes). A
 * message longer than PG_MAX_SERVER_STARTUP_MSG, a length < 4, or a SASL list left empty -> PG_FAIL
 * with DBT_UPSTREAM_PROTOCOL_ERROR. */
/* PG_SEND_CLIENT data points into s->msg or s->out, valid until the next call, which releases
 * it. Each message gets a buffer of its announced length once its 5-byte header passed the
 * bound; the rewrite gets one only for an AuthenticationSASL. Allocation failure: PG_FAIL with
 * DBT_INTERNAL_ERROR "out of memory", the machine failed. Once the 'R' or 'E' has been
 * returned, every call returns PG_RELAY consuming 0: the input from there on, including what
 * the same call left unconsumed, is relay data. After PG_FAIL further calls return PG_FAIL with
 * DBT_INTERNAL_ERROR, consuming 0. Failure details (static): "upstream message length below 4",
 * "upstream startup message longer than 16384 bytes", "authentication request without a code",
 * "malformed SASL mechanism list", "server offers only channel-binding SASL mechanisms", "out of
 * memory". */
size_t pg_server_feed(struct pg_server *s, const uint8_t *in, size_t len, struct pg_step *out);

/* ---- watching the upstream's login after the relay started (A5, A7) ----
 * dbtrust relays raw from the first 'R', so the password exchange passes untouched; whether the
 * login succeeded is read from the same bytes on their way to the client, by their framing
 * alone: type byte + Int32 length, only the header and the few body bytes that matter are kept,
 * never a whole message. It reports AuthenticationOk ('R' with code 0), ReadyForQuery ('Z': the
 * session is established; watching ends) and ErrorResponse ('E': the login failed; watching
 * ends), and keeps BackendKeyData ('K') for cancel routing. */

/* BackendKeyData: the key is 4 bytes in protocol 3.0, up to 256 in 3.2 (A2). */
struct pg_backend_key {
    uint32_t pid;
    uint16_t len; /* 0: none received */
    uint8_t key[PG_MAX_CANCEL_KEY];
};

/* Bound on one message during the login: far above anything a server sends there (SASL and GSS
 * tokens are bounded by 65535 bytes, ParameterStatus values are short), low enough that a length
 * word read from the wrong place is refused instead of swallowing the session. */
#define PG_LOGIN_MAX_MSG (1u << 20)

enum pg_login_event {
    PG_LOGIN_NEED_MORE, /* all input consumed; the login goes on */
    PG_LOGIN_AUTH_OK,   /* AuthenticationOk: the credentials were accepted; keep feeding */
    PG_LOGIN_READY,     /* ReadyForQuery after AuthenticationOk: logged in; watching is over */
    PG_LOGIN_ERROR,     /* ErrorResponse: the login failed (the server closes); watching is over */
    PG_LOGIN_INVALID,   /* framing no server sends: w->detail; fail the connection */
};

enum pg_login_state { PG_L_HEADER, PG_L_BODY, PG_L_READY, PG_L_ERROR, PG_L_INVALID };

struct pg_login_watch {
    enum pg_login_state state;
    bool auth_ok;              /* AuthenticationOk seen */
    struct pg_backend_key key; /* the last BackendKeyData seen */
    const char *detail;        /* PG_LOGIN_INVALID: static text */
    uint8_t head[5];           /* type and length word of the current message */
    uint8_t code[4];           /* 'R': the authentication code */
    size_t have;               /* bytes of head read so far */
    uint32_t body;             /* body length of the current message (length word - 4) */
    uint32_t seen;             /* body bytes of it seen */
};

/* Ready to read the first byte the upstream sends after the StartupMessage. */
void pg_login_watch_init(struct pg_login_watch *w);
/* Reads up to len bytes of what the upstream sends; returns how many it consumed and sets *ev.
 * Stops right after the byte that completes an event (AuthenticationOk, ReadyForQuery,
 * ErrorResponse: at the end of that message), so call again with the rest while *ev is
 * PG_LOGIN_AUTH_OK. Once READY, ERROR or INVALID every call consumes 0 and repeats it.
 * Settled details (PG_LOGIN_INVALID, static w->detail): a length word below 4 ("upstream message
 * length below 4"), above PG_LOGIN_MAX_MSG ("upstream message during login longer than 1048576
 * bytes"), an 'R' shorter than its code ("authentication request without a code"), an
 * AuthenticationOk with a body other than its code ("AuthenticationOk of wrong length"), a 'K'
 * whose key is not 4..256 bytes ("BackendKeyData key length outside 4..256"), a 'Z' of another
 * length than 5 ("ReadyForQuery of wrong length"), a 'Z' before AuthenticationOk
 * ("ReadyForQuery before AuthenticationOk"). Other message types pass unread. */
size_t pg_login_watch_feed(struct pg_login_watch *w, const uint8_t *in, size_t len,
                           enum pg_login_event *ev);

/* The gs2 channel-binding flag (RFC 5802 section 7) of a SCRAM SASLInitialResponse. */
enum pg_sasl_flag {
    PG_SASL_NEED_MORE,
    PG_SASL_NO_BINDING,     /* gs2 'n' */
    PG_SASL_BINDING_WANTED, /* gs2 'y' */
    PG_SASL_BINDING,        /* gs2 'p' */
    PG_SASL_OTHER,          /* not a SASLInitialResponse, or malformed: let the server judge */
};

/* The client's first message after AuthenticationSASL, as read so far (may be partial):
 * 'p' Int32 len, mechanism\0, Int32 resp_len, then the client-first-message whose gs2 header
 * starts with "n,", "y," or "p=". Never needs more than 5 + 64 + 4 + 2 bytes to decide; a longer
 * mechanism name or a bad length is PG_SASL_OTHER. Why: over a TLS client leg libpq with
 * channel_binding=prefer, offered only SCRAM-SHA-256 (dbtrust strips -PLUS), sends 'y', which a
 * TLS-connected server rejects as a downgrade; the flag cannot be rewritten because the gs2
 * header is signed inside the SCRAM proof (C1).
 * Also PG_SASL_OTHER: a mechanism not named SCRAM-* (OAUTHBEARER has a gs2 header too, but no
 * -PLUS variant, and PostgreSQL accepts its 'y'), a resp_len that is not exactly the rest of the
 * message, a message body over 65535 bytes (the server's PG_MAX_AUTH_TOKEN_LENGTH). A partial
 * input is judged only once the bytes that decide have arrived, so a longer prefix never changes
 * an answer other than PG_SASL_NEED_MORE. */
enum pg_sasl_flag pg_sasl_initial_flag(const uint8_t *in, size_t len);

/* SQLSTATE for an error dbtrust itself reports (A6): 08001 TLS/cert, 57P03 unreachable, 08006
 * broken, 08P01 protocol, 53300 limit, 57P01 shutdown, 28000 client refused by the listener's
 * own policy (client_tls = require, client certificates, channel binding: the code the server
 * uses for pg_hba.conf refusals and for the SCRAM channel-binding downgrade), XX000 internal. */
const char *pg_sqlstate_for(enum dbt_reason r);

/* Builds an ErrorResponse (protocol 3, severity FATAL in 'S' and 'V', code, 'M' message,
 * optional 'D' detail and 'H' hint, NULL to omit) into buf. Returns its length, or 0 if it does
 * not fit. Strings are truncated to keep the message under cap. */
size_t pg_build_error(uint8_t *buf, size_t cap, const char *sqlstate, const char *message,
                      const char *detail, const char *hint);

#endif
