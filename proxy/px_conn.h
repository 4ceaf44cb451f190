/* One proxied connection: client leg (plaintext), upstream leg (TLS), its startup phase, relay
 * and single close path. A connection embeds its uv handles, counts the open ones and is freed
 * only in the last close callback (libuv's rule). */
#ifndef PX_CONN_H
#define PX_CONN_H

#include <netdb.h>

#include "pg.h"
#include "px.h"

enum px_conn_state {
    PX_CONN_CLIENT_STARTUP, /* reading the client's startup packets */
    PX_CONN_MY_GREETING,    /* MySQL: connected, waiting for the server's greeting */
    PX_CONN_MY_RESPONSE,    /* MySQL: greeting sent, waiting for the client's response */
    PX_CONN_MY_RETIRE,      /* MySQL: client gone mid-handshake; ending the upstream's login */
    PX_CONN_DIAL_WAIT,      /* waiting for an upstream connect slot (px_dial.c) */
    PX_CONN_RESOLVING,      /* upstream name lookup */
    PX_CONN_CONNECTING,     /* TCP connect to one upstream address */
    PX_CONN_SSL_ANSWER,     /* PostgreSQL: SSLRequest sent, waiting for exactly 'S' */
    PX_CONN_TLS_HANDSHAKE,  /* TLS handshake with verification */
    PX_CONN_SERVER_STARTUP, /* forwarding server messages until authentication starts */
    PX_CONN_CANCEL_DRAIN,   /* CancelRequest forwarded; waiting for the server to close */
    PX_CONN_RELAY,          /* raw byte pipe */
    PX_CONN_FAILING,        /* error sent to the client; closing once it is written */
    PX_CONN_CLOSING,
};

enum px_leg_state { PX_LEG_NONE, PX_LEG_OPEN, PX_LEG_CLOSING };

#define PX_MY_CONTEXT_MAX 400

/* Startup-phase state, freed when the relay starts so idle connections stay small. */
struct px_pg_startup {
    struct pg_client client;
    struct pg_server server;
    uint8_t *early; /* client bytes read after the StartupMessage (forwarded after it) */
    size_t early_len;
};

struct px_conn {
    struct px_worker *w;
    struct px_worker_listener *wl;
    struct px_conn *prev, *next; /* worker's list */
    struct tlsw_gen *gen;        /* trust generation current at accept; held until close */

    union px_stream client;
    uv_tcp_t upstream;
    uv_timer_t timer;
    uv_getaddrinfo_t gai;
    uv_connect_t connect_req;
    uv_shutdown_t client_shutdown_req;
    uv_shutdown_t upstream_shutdown_req;
    int open_refs; /* open handles + pending getaddrinfo; freed when it reaches 0 */
    enum px_leg_state upstream_leg;
    bool gai_pending;

    enum px_conn_state state;
    enum dbt_reason reason;
    char *detail; /* for the conn_end line; set once a reason comes with one (NULL: none) */
    bool closing;
    bool over_limit;
    bool is_cancel;

    struct tlsw_conn *tls;
    bool tls_up;              /* handshake completed and verified */
    uint64_t connected_ns;    /* upstream TCP connected (uv_hrtime): handshake latency */
    bool tls_first_byte_seen; /* first upstream byte after 'S' must start a TLS record */
    struct px_pg_startup *pg;
    struct my_session *my; /* MySQL listeners: the whole connection runs through it */
    bool my_greeted;
    bool my_retiring, my_decoy_sent; /* px_my_retire */
    bool client_leg_closed;          /* the client handle is closed; sends are dropped */
    char *my_context; /* " [listener X, upstream H:P]" for the machine's own errors (MySQL) */

    /* upstream connect slot (px_dial.c) */
    bool dial_slot, dial_waiting;
    struct px_conn *dial_prev, *dial_next; /* the listener's waiters, in arrival order */

    /* upstream candidates: listener entries in order, each resolved to addresses */
    size_t upstream_idx;
    struct addrinfo *addrs;
    struct addrinfo *next_addr;
    int last_connect_error;

    /* relay */
    size_t queued_to_client;   /* bytes in flight to the client */
    size_t queued_to_upstream; /* ciphertext bytes in flight to the upstream */
    bool client_reading, upstream_reading;
    bool client_eof, upstream_eof; /* that side will send no more */
    bool client_shut_sent, upstream_shut_sent;
    bool recent_io; /* bytes moved since the worker's last idle sweep */
    uint64_t bytes_from_client, bytes_to_client;

    /* for the log line */
    uint64_t start_ms;
    char client_addr[64];
    char upstream_label[280]; /* host:port of the current/last upstream attempt */
    char user[PG_IDENT_MAX], database[PG_IDENT_MAX], application_name[PG_IDENT_MAX];
};

/* Accepts one client on wl; never fails loudly (a failed accept is logged). */
void px_conn_accept(struct px_worker_listener *wl);

/* Ends the connection with a reason (the first reason wins; idempotent). */
void px_conn_close(struct px_conn *c, enum dbt_reason reason, const char *detail);

/* Ends the startup phase with an error: the client gets a protocol-native error naming the
 * reason, the listener and the upstream, then the connection closes. */
void px_conn_fail(struct px_conn *c, enum dbt_reason reason, const char *detail);
/* The same with a ready error packet (len 0: close without one). */
void px_conn_fail_with(struct px_conn *c, enum dbt_reason reason, const char *detail,
                       const uint8_t *pkt, size_t len);

/* Upstream connect slots (px_dial.c). acquire: true = dial now; false = queued (state
 * DIAL_WAIT), px_upstream_dial runs when a slot frees. release: the leg is set up, or the
 * connection ends; idempotent. */
bool px_dial_acquire(struct px_conn *c);
void px_dial_release(struct px_conn *c);

/* Upstream leg (px_upstream.c). */
void px_upstream_dial(struct px_conn *c);
void px_upstream_start_tls(struct px_conn *c);
/* Sends pending TLS ciphertext to the upstream. Returns 0 or -1 (connection closed). */
int px_upstream_flush(struct px_conn *c);
/* Encrypts and sends plaintext to the upstream. Returns 0 or -1 (connection closed). */
int px_upstream_send(struct px_conn *c, const uint8_t *data, size_t len);

/* Client leg writes: copies data. Returns 0 or -1 (connection closed). */
int px_client_send(struct px_conn *c, const uint8_t *data, size_t len);

/* Relay (px_relay.c). */
void px_relay_start(struct px_conn *c, const uint8_t *to_client, size_t len);
void px_relay_from_client(struct px_conn *c, const uint8_t *data, size_t len);
void px_relay_client_eof(struct px_conn *c);
void px_relay_upstream_eof(struct px_conn *c);
/* Decrypted upstream bytes for the client (relay state). */
void px_relay_to_client(struct px_conn *c, const uint8_t *data, size_t len);
void px_relay_after_write(struct px_conn *c);

/* PostgreSQL startup phase (px_pg.c). */
void px_pg_on_client_data(struct px_conn *c, const uint8_t *data, size_t len);
void px_pg_on_connected(struct px_conn *c);
void px_pg_on_ssl_answer(struct px_conn *c, const uint8_t *data, size_t len);
void px_pg_on_tls_ready(struct px_conn *c);
void px_pg_on_server_data(struct px_conn *c, const uint8_t *data, size_t len);
/* The protocol-native error for message; returns its length (0 = none). */
size_t px_pg_build_error(enum dbt_reason reason, const char *message, uint8_t *buf, size_t cap);

void px_conn_release(struct px_conn *c); /* drops one open_refs; frees at zero */
void px_conn_close_client_leg(struct px_conn *c);
void px_client_stop_reading(struct px_conn *c);
void px_client_start_reading(struct px_conn *c);
void px_upstream_stop_reading(struct px_conn *c);
void px_upstream_start_reading(struct px_conn *c);
void px_upstream_connect_timeout(struct px_conn *c);
void px_upstream_on_eof(struct px_conn *c, bool clean);
/* Writes bytes to the upstream before TLS (the SSLRequest). */
int px_upstream_write_raw(struct px_conn *c, const uint8_t *data, size_t len);
const char *px_upstream_verify_name(const struct px_conn *c);
void px_pg_keep_early(struct px_conn *c, const uint8_t *data, size_t len);
void px_pg_startup_free(struct px_conn *c);

/* MySQL/MariaDB (px_mysql.c). */
int px_my_start(struct px_conn *c);
void px_my_free(struct px_conn *c);
/* The client left during the handshake (reason in c->reason): rather than hang up on the
 * server after its greeting, which the server counts against max_connect_errors for dbtrust's
 * address (blocking every application behind it), finish the login as an authentication
 * failure. True: the client leg is closed and the connection ends when the server answered. */
bool px_my_retire(struct px_conn *c);
void px_my_on_retire_data(struct px_conn *c, const uint8_t *data, size_t len);
void px_my_on_connected(struct px_conn *c);
void px_my_on_server_plain(struct px_conn *c, const uint8_t *data, size_t len);
void px_my_on_client_data(struct px_conn *c, const uint8_t *data, size_t len);
void px_my_on_tls_ready(struct px_conn *c);
void px_my_from_client(struct px_conn *c, const uint8_t *data, size_t len);
void px_my_to_client(struct px_conn *c, const uint8_t *data, size_t len);
size_t px_my_build_error(struct px_conn *c, enum dbt_reason reason, const char *message,
                         uint8_t *buf, size_t cap);

/* The client-facing error text: "dbtrust: <summary> (<reason>): <detail> [listener X, upstream
 * H:P]" - the same words for every protocol. */
void px_error_message(const struct px_conn *c, enum dbt_reason reason, const char *detail,
                      char *buf, size_t cap);

/* Arms the connection's single timer for the current phase (0 = stop it). */
void px_conn_set_timer(struct px_conn *c, uint32_t ms);
uint64_t px_now_ms(void);

#endif
