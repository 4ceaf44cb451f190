/* MySQL/MariaDB connection phase as a pure state machine (PROTOCOLS.md part B). No sockets: the
 * proxy feeds bytes from either leg and executes the returned step.
 *
 * One session object for both legs, not two halves as in pg.h: the legs share what the
 * connection phase is made of - the server's capabilities and nonce decide how the client's
 * response and its RSA blob are read, the client's header decides the SSLRequest, and one
 * sequence counter per leg is advanced by packets from both sides (B2, B3).
 *
 * Order of calls (C = client, S = upstream):
 *   my_session_init -> dial S (on failure: my_fail) ->
 *   my_feed_server(greeting)  -> MY_SEND_CLIENT patched greeting
 *                              | MY_FAIL (no CLIENT_SSL, ...) | MY_CLOSE (S sent an ERR greeting:
 *                                dbtrust's ERR with S's code for C, my_refusal_detail for the log)
 *   [client_tls != MY_TLS_OFF (PROTOCOLS.md C2), C sends an SSLRequest:
 *    my_feed_client(SSLRequest) -> MY_START_CLIENT_TLS: stop feeding C's bytes to the machine,
 *                                run the TLS server handshake on C's leg with the input not
 *                                consumed, then my_client_tls_ready; from here on feed C's
 *                                decrypted bytes (the response comes with seq 2)]
 *   my_feed_client(response)  -> MY_SEND_SERVER_PLAIN (SSLRequest), then on the next call
 *                                MY_START_TLS: stop feeding, run the TLS handshake (verify-full)
 *   my_tls_ready              -> MY_SEND_SERVER (C's response with CLIENT_SSL, seq 2)
 *                                (TLS failed instead: my_fail with the TLS reason)
 *   my_feed_server / my_feed_client (decrypted S bytes, C bytes) -> MY_SEND_CLIENT /
 *       MY_SEND_SERVER re-sequenced, until S's OK/ERR (step.phase_end) ->
 *   relay: keep feeding both legs; the steps are MY_RELAY (forward unchanged). A COM_CHANGE_USER
 *       from C silently re-enters the connection phase until its OK/ERR (B6).
 * Call each feed function again after every step until it returns MY_NEED_MORE (a step may
 * leave input unconsumed, and MY_START_TLS follows MY_SEND_SERVER_PLAIN with no input at all).
 * MY_START_CLIENT_TLS, MY_START_TLS, MY_FAIL and MY_CLOSE end the loop.
 *
 * Buffer lifetimes: step.data of MY_SEND_* / MY_FAIL / MY_CLOSE points into the session and is
 * valid until the next my_* call on the session (write or copy it first; packets carrying a
 * password are wiped on that next call). MY_RELAY data is a prefix of the caller's own input.
 * The EVP_PKEY and the PEM given in my_config are borrowed and must outlive the session.
 *
 * Memory (issue 14): the session struct holds no packet buffer. The packet being assembled gets
 * one of its announced length once its header passed the bound (grown for a longer packet,
 * reused otherwise, released once the relay runs); the PEM answer and a decrypted password get
 * one for that step only. ERR packets and the SSLRequest are written into the struct, so a
 * failure can always be reported. An allocation that fails is MY_FAIL DBT_INTERNAL_ERROR "out
 * of memory" (with an ERR packet where one is due). my_session_wipe releases everything.
 */
#ifndef MYSQL_H
#define MYSQL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dbt_reason.h"
#include "dbt_util.h"

typedef struct evp_pkey_st EVP_PKEY; /* same typedef as <openssl/types.h> (C11 allows both) */

#define MY_HEADER            4
#define MY_MAX_PAYLOAD_CHUNK 0xFFFFFFu /* a payload this long continues in the next packet */
/* Largest connection-phase payload buffered (greeting, HandshakeResponse with its connect
 * attributes, AuthSwitchRequest, AuthMoreData, OK/ERR); longer is a protocol error. */
#define MY_MAX_PACKET       65536u
#define MY_NONCE_LEN        20
#define MY_IDENT_MAX        64   /* user / database / program_name kept for logs (truncated) */
#define MY_PLUGIN_MAX       64   /* auth plugin names are short; longer ones are truncated */
#define MY_PEM_MAX          3072 /* SPKI PEM of an RSA key up to 8192 bits fits */
#define MY_ERR_MSG_MAX      511  /* libmysqlclient keeps MYSQL_ERRMSG_SIZE - 1 bytes of a message */
#define MY_REFUSAL_TEXT_MAX 120  /* bytes of an ERR greeting's text my_refusal_detail quotes */
/* What the session writes without allocating: the longest ERR packet (header, FF, code, '#',
 * SQLSTATE, message) - failures, out of memory included, must always be reportable - and the
 * 36-byte SSLRequest. The PEM answer, the one big packet dbtrust builds, is allocated on demand. */
#define MY_OUT_INLINE (MY_HEADER + 9 + MY_ERR_MSG_MAX)

/* Capability flags used here (B1). */
#define MY_CLIENT_LONG_PASSWORD      0x1u /* MariaDB: "CLIENT_MYSQL" */
#define MY_CLIENT_CONNECT_WITH_DB    0x8u
#define MY_CLIENT_COMPRESS           0x20u
#define MY_CLIENT_PROTOCOL_41        0x200u
#define MY_CLIENT_SSL                0x800u
#define MY_CLIENT_SECURE_CONNECTION  0x8000u
#define MY_CLIENT_PLUGIN_AUTH        0x80000u
#define MY_CLIENT_CONNECT_ATTRS      0x100000u
#define MY_CLIENT_PLUGIN_AUTH_LENENC 0x200000u
#define MY_CLIENT_ZSTD               0x4000000u

#define MY_COM_CHANGE_USER 0x11

enum my_action {
    MY_NEED_MORE,         /* all input consumed; feed more when it arrives */
    MY_SEND_CLIENT,       /* write data/len to the client */
    MY_SEND_SERVER_PLAIN, /* write data/len to the upstream in plaintext (the SSLRequest) */
    MY_START_TLS,         /* run the upstream TLS handshake, then call my_tls_ready */
    /* the client sent an SSLRequest: run a TLS server handshake on the client leg, then call
     * my_client_tls_ready and go on feeding the client's (decrypted) bytes. Input not consumed is
     * ciphertext for that handshake. */
    MY_START_CLIENT_TLS,
    MY_SEND_SERVER, /* write data/len to the upstream over TLS */
    MY_RELAY,       /* forward data/len (a consumed prefix of the input) to the other leg */
    MY_FAIL, /* write data/len (an ERR packet, may be empty) to the client, then close both */
    /* the upstream answered with an ERR packet instead of its greeting: write data/len to the
     * client - dbtrust's ERR with the server's code (and SQLSTATE, if any) but dbtrust's own text,
     * since the server is not authenticated yet - then close both; my_refusal_detail tells the log
     * what the server said */
    MY_CLOSE,
};

struct my_step {
    enum my_action action;
    const uint8_t *data;
    size_t len;
    /* MY_FAIL; MY_CLOSE: by the server's code, 1040 DBT_UPSTREAM_TOO_MANY_CONNECTIONS, 1129
     * DBT_UPSTREAM_HOST_BLOCKED, else DBT_UPSTREAM_REFUSED */
    enum dbt_reason reason;
    const char *detail; /* MY_FAIL, MY_CLOSE: static text for the log */
    /* Set on the MY_SEND_CLIENT that carries the upstream's final OK (data[4] == 0x00) or ERR
     * of a connection phase, login or COM_CHANGE_USER: the session relays from here on. */
    bool phase_end;
};

/* TLS on the client leg, dbtrust as the server (central trust point, PROTOCOLS.md C2). */
enum my_client_tls {
    MY_TLS_OFF,     /* plaintext listener: CLIENT_SSL withheld, an SSLRequest is refused */
    MY_TLS_ALLOW,   /* CLIENT_SSL offered; a plaintext response goes on as with MY_TLS_OFF */
    MY_TLS_REQUIRE, /* CLIENT_SSL offered; a plaintext response is refused (3159) */
};

struct my_config {
    bool unix_socket;    /* the client leg counts as secure: cleartext passwords are forwarded */
    EVP_PKEY *rsa_key;   /* borrowed; RSA >= 2048 bits; NULL: no RSA bridge (B3) */
    const char *rsa_pem; /* borrowed; SPKI PEM of rsa_key ("-----BEGIN PUBLIC KEY-----") */
    /* borrowed, may be NULL or change until used: appended to the errors the machine writes
     * itself, e.g. " [listener shop, upstream db:3306]", so every error names where it came from */
    const char *context;
    enum my_client_tls client_tls; /* default MY_TLS_OFF: today's behaviour */
};

enum my_state {
    MY_S_GREETING,   /* waiting for the upstream greeting */
    MY_S_RESPONSE,   /* greeting sent, waiting for the client's HandshakeResponse */
    MY_S_CLIENT_TLS, /* the client's SSLRequest read; waiting for my_client_tls_ready */
    MY_S_SSL_SENT,   /* SSLRequest handed out; MY_START_TLS is next */
    MY_S_TLS,        /* waiting for my_tls_ready; the response waits in pkt */
    MY_S_AUTH,       /* connection phase: both legs framed and re-sequenced */
    MY_S_RELAY,      /* command phase: raw relay, client->server framed to spot COM_CHANGE_USER */
    MY_S_ENDED,      /* after MY_FAIL / MY_CLOSE */
};

enum my_bridge {
    MY_BRIDGE_NONE,
    MY_BRIDGE_CSHA2,  /* caching_sha2_password sent 01 04: next client packet is judged */
    MY_BRIDGE_SHA256, /* switched to sha256_password: next client packet is judged */
};

enum my_leg { MY_LEG_NONE, MY_LEG_CLIENT, MY_LEG_SERVER };

struct my_session {
    struct my_config cfg;
    enum my_state state;
    uint8_t c_seq;        /* last sequence id seen or sent on the client leg */
    uint8_t s_seq;        /* last sequence id seen or sent on the upstream leg */
    uint32_t server_caps; /* greeting capabilities as the upstream sent them */
    uint32_t client_caps; /* 0 until the HandshakeResponse is read */
    bool compressed;      /* compression agreed: relay stays blind (no change-user watch) */
    bool client_tls_up;   /* my_client_tls_ready: the client leg is TLS, a secure transport */
    bool refused; /* MY_CLOSE: the upstream's ERR greeting waits in pkt until the next call */
    enum my_bridge bridge;
    bool key_sent; /* the PEM was served once in this exchange */
    uint8_t nonce[MY_NONCE_LEN];
    size_t nonce_len;
    char plugin[MY_PLUGIN_MAX]; /* auth plugin in force (greeting, response, switch) */
    char user[MY_IDENT_MAX];    /* for logs only */
    char database[MY_IDENT_MAX];
    char program_name[MY_IDENT_MAX];
    /* connection phase: one packet assembled at a time, by the leg that started it; in the
     * relay, have/need count the bytes of a COM_CHANGE_USER kept in pkt (its first 64 KiB) */
    enum my_leg owner;
    size_t have;
    size_t need;
    uint8_t head[MY_HEADER]; /* the header being read, before pkt is sized by its length */
    /* relay: framing of client->server packets without buffering them */
    uint8_t hdr[MY_HEADER];
    size_t hdr_have;
    size_t left;      /* payload bytes of the current client packet not yet seen */
    uint8_t prev_seq; /* sequence id of the previous client packet */
    bool continued;   /* the previous client packet was a full 0xFFFFFF chunk */
    bool candidate;   /* the current client packet may be a command: look at its first byte */
    bool change_user; /* the current client packet is a COM_CHANGE_USER */
    size_t wipe_pkt;  /* secret bytes at pkt to zero on the next call */
    /* The packet being assembled, header included (pkt_cap bytes, at most MY_HEADER +
     * MY_MAX_PACKET): allocated at the first header, replaced - the old one wiped first - only
     * when a longer packet is announced, released in the relay. NULL: nothing held. */
    uint8_t *pkt;
    size_t pkt_cap;
    /* The PEM answer or a decrypted password (reply_cap bytes): allocated for that step, wiped
     * and freed on the next call. */
    uint8_t *reply;
    size_t reply_cap;
    uint8_t out[MY_OUT_INLINE]; /* ERR packets, the SSLRequest */
};

/* Sets up a session; nothing is allocated, also when it fails. Returns false (session unusable)
 * if cfg->rsa_key is set but is not an RSA key of at least 2048 bits, or rsa_pem is missing or
 * longer than MY_PEM_MAX. */
DBT_MUST_USE bool my_session_init(struct my_session *s, const struct my_config *cfg);
/* Wipes and frees every buffer the session holds (any may have held password material) and
 * ends it (a later feed: MY_FAIL DBT_INTERNAL_ERROR); the struct itself stays the caller's.
 * Call it before freeing the session; idempotent, and harmless after a failed init. */
void my_session_wipe(struct my_session *s);
/* Heap bytes the session holds now: for tests and for accounting what a connection costs. */
size_t my_session_allocated(const struct my_session *s);

/* Feed bytes from the upstream (plain TCP until MY_START_TLS, decrypted afterwards) / from the
 * client. Returns how many bytes were consumed; see the call order above. Settled details:
 *  - every length is checked from the 4-byte header before a byte of the payload is buffered
 *    (MY_MAX_PACKET); sequence ids must follow on each leg, else MY_FAIL;
 *  - bytes from the upstream before the SSLRequest, or from the client before the greeting or
 *    while TLS is being set up, are a protocol error (nothing is sent in plaintext ahead of TLS);
 *    client bytes fed between MY_START_CLIENT_TLS and my_client_tls_ready belong to the TLS
 *    handshake: MY_FAIL with DBT_INTERNAL_ERROR;
 *  - client_tls == MY_TLS_REQUIRE and the client's response arrives on the plaintext leg: MY_FAIL
 *    with ERR 3159 (DBT_CLIENT_TLS_REQUIRED) at seq 2; the response is wiped, nothing of it
 *    reaches the upstream and no SSLRequest is sent (user, database and program_name are kept
 *    for the log);
 *  - after MY_FAIL / MY_CLOSE every call returns MY_FAIL (DBT_INTERNAL_ERROR, no data). */
DBT_MUST_USE size_t my_feed_server(struct my_session *s, const uint8_t *in, size_t len,
                                   struct my_step *out);
DBT_MUST_USE size_t my_feed_client(struct my_session *s, const uint8_t *in, size_t len,
                                   struct my_step *out);
/* The upstream TLS session is verified: returns MY_SEND_SERVER with the client's response
 * (CLIENT_SSL set, seq 2). Called in any other state: MY_FAIL with DBT_INTERNAL_ERROR. */
void my_tls_ready(struct my_session *s, struct my_step *out);
/* The TLS server handshake on the client leg (after MY_START_CLIENT_TLS) is done: the machine
 * waits for the client's HandshakeResponse41 at seq 2, fed decrypted through my_feed_client, and
 * counts the client leg as a secure transport from now on (a cleartext password after
 * caching_sha2's 01 04 or for sha256_password is forwarded, never judged as an RSA blob). Called
 * in any other state, it ends the session: the next feed returns MY_FAIL (DBT_INTERNAL_ERROR).
 * Between MY_START_CLIENT_TLS and this call, MY_FAIL carries no packet (my_fail included): the
 * client is in the middle of a TLS handshake and can read no MySQL packet. */
void my_client_tls_ready(struct my_session *s);

/* A HandshakeResponse41 for user "dbtrust" with an empty password: what dbtrust sends a server
 * whose client gave up during the handshake, and what the guard's probe sends once TLS is up.
 * The server answers "Access denied", an authentication failure, which unlike a handshake
 * abandoned after the greeting does not count against max_connect_errors for dbtrust's
 * address. No secret in it. tls: after an SSLRequest (sequence id 2, CLIENT_SSL), else the
 * plaintext answer to the greeting (sequence id 1). Returns its length, 0 if cap is too
 * small. */
size_t my_build_decoy_login(uint8_t *buf, size_t cap, bool tls);
/* dbtrust gives up (upstream unreachable, TLS failed, timeout...): MY_FAIL with an ERR packet
 * for the client built from reason (my_errcode_for) and message, at the sequence id the client
 * expects (0 and no SQLSTATE before the greeting, B5). No packet once relaying or ended, nor
 * while the client's TLS handshake runs. */
void my_fail(struct my_session *s, enum dbt_reason reason, const char *message,
             struct my_step *out);
/* Right after MY_CLOSE (before any other my_* call): the log's detail of the refusal - the
 * server's code and its text made safe for a log line (printable ASCII, anything else '?', at
 * most MY_REFUSAL_TEXT_MAX bytes, "..." when cut), marked as unauthenticated. Never for the
 * client (MY_CLOSE's packet is dbtrust's own) nor for a metric label. Writes a NUL-terminated
 * string (truncated to cap) and returns its length; 0 and nothing written at any other time. */
size_t my_refusal_detail(const struct my_session *s, char *buf, size_t cap);
/* True once the session is in the command phase (raw relay). */
bool my_relaying(const struct my_session *s);

/* ERR packet (B5): header with seq, FF, code, '#' + SQLSTATE unless sqlstate is NULL (before
 * CLIENT_PROTOCOL_41 is agreed), message truncated to MY_ERR_MSG_MAX bytes and to cap (never
 * inside a UTF-8 sequence). Returns the packet length, 0 if cap cannot hold even an empty one. */
DBT_MUST_USE size_t my_build_err(uint8_t *buf, size_t cap, uint8_t seq, uint16_t code,
                                 const char *sqlstate, const char *message);

struct my_errcode {
    uint16_t code;
    const char *sqlstate;
};
/* TLS -> 1043 08S01 (ER_HANDSHAKE_ERROR), unreachable -> 1429 HY000, protocol -> 1043
 * 08S01 (ER_HANDSHAKE_ERROR), limit -> 1040 08004 (ER_CON_COUNT_ERROR), else 1105 HY000. */
struct my_errcode my_errcode_for(enum dbt_reason r);

/* ---- RSA bridge helpers (mysql_rsa.c, libcrypto) ---- */

/* A fresh RSA key (bits >= 2048), or NULL. Free with my_rsa_free. */
DBT_MUST_USE EVP_PKEY *my_rsa_generate(unsigned bits);
/* A private key from PEM text (PKCS#8 or traditional RSA), or NULL if it is not RSA >= 2048. */
DBT_MUST_USE EVP_PKEY *my_rsa_from_pem(const char *pem, size_t len);
void my_rsa_free(EVP_PKEY *key);
/* Writes the SPKI PEM of key's public half, NUL-terminated, into buf; returns its length
 * without the NUL, 0 on failure or if it does not fit. */
DBT_MUST_USE size_t my_rsa_public_pem(EVP_PKEY *key, char *buf, size_t cap);
/* Turns a client's RSA blob into "password\0" (B3): RSA-OAEP (SHA-1, MGF1-SHA-1) decryption,
 * XOR with the nonce (cyclic), last byte must be 0x00. Writes the result including the NUL to
 * out and returns its length; 0 if any step fails (out is wiped then). */
DBT_MUST_USE size_t my_rsa_decrypt_password(EVP_PKEY *key, const uint8_t *nonce, size_t nonce_len,
                                            const uint8_t *blob, size_t len, uint8_t *out,
                                            size_t cap);
/* Size of key's modulus in bytes (the length of every blob encrypted to it). */
size_t my_rsa_size(EVP_PKEY *key);

#endif
