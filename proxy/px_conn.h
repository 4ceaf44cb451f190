/* One proxied connection: two legs of one type (client and upstream), the protocol driver that
 * owns its startup phase (through the listener's px_driver table), the phase timer and the
 * single close path with its one log line. A connection embeds its uv handles, counts the open
 * ones and is freed only in the last close callback (libuv's rule). */
#ifndef PX_CONN_H
#define PX_CONN_H

#include <netdb.h>

#include "pg.h"
#include "px.h"
#include "px_admit.h"
#include "px_dial.h"
#include "px_hello.h"
#include "px_driver.h"
#include "px_leg.h"

enum px_conn_state {
    PX_CONN_CLIENT_STARTUP, /* reading the client's startup packets */
    PX_CONN_CLIENT_TLS,     /* client_tls: the client's TLS handshake with dbtrust */
    PX_CONN_MY_GREETING,    /* MySQL: connected, waiting for the server's greeting */
    PX_CONN_MY_RESPONSE,    /* MySQL: greeting sent, waiting for the client's response */
    PX_CONN_RETIRING,       /* the client left; the driver ends the upstream's login (below) */
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

struct px_conn {
    struct px_worker *w;
    struct px_worker_listener *wl;
    const struct px_driver *drv;
    struct px_conn *prev, *next; /* worker's list */
    struct tlsw_gen *gen;        /* trust generation current at accept; held until close */

    struct px_leg legs[2]; /* [PX_CLIENT], [PX_UPSTREAM] */
    uv_timer_t timer;
    void (*on_timeout)(struct px_conn *c); /* the phase's own handler; NULL: by state */
    uv_getaddrinfo_t gai;
    uv_connect_t connect_req;
    int open_refs; /* open handles + pending getaddrinfo; freed when it reaches 0 */
    bool gai_pending;

    enum px_conn_state state;
    enum px_conn_state resume_state; /* what the client's TLS handshake interrupted */
    struct px_hello hello;           /* client_tls: the ClientHello before an engine exists */
    const uint8_t *hello_alpn;
    uint8_t hello_alpn_len;
    bool hello_alpn_required;
    enum dbt_reason reason;
    char *detail; /* for the conn_end line; set once a reason comes with one (NULL: none) */
    bool closing;
    struct px_admission adm; /* decided at accept (px_admit.c) */
    bool is_cancel;
    /* PostgreSQL direct TLS (sslnegotiation = direct): the upstream leg began with our
     * ClientHello, not an upgrade request the server agreed to (px_conn.c: direct_unanswered). */
    bool upstream_direct;
    bool abort_client;    /* close the client leg with a reset, not a FIN (a truncated upstream) */
    uint64_t reset_by_ms; /* abort_client: reset by then even if the client has not read all */
    bool framed; /* relay through the driver (MySQL always; PostgreSQL while judging SASL) */
    bool quiet;  /* refused before any byte was read: counted, logged at a limited rate */
    /* The upstream accepted the login (PostgreSQL: ReadyForQuery after AuthenticationOk; MySQL:
     * the OK that ends authentication). Set by the driver; only such a session's application
     * name may take a slot of the metrics' application table. */
    bool login_ok;
    uint64_t connected_ns; /* upstream TCP connected (uv_hrtime): handshake latency */
    void *proto;           /* the driver's startup state */

    struct px_dial_waiter dial; /* upstream connect slot */

    /* upstream candidates: listener entries in order, each resolved to addresses */
    size_t upstream_idx;
    const struct sockaddr *pinned_addr; /* a cancel's known server (px_upstream_dial_pinned) */
    struct addrinfo *addrs;
    struct addrinfo *next_addr;
    int last_connect_error;

    /* for the log line */
    uint64_t start_ms;
    char client_addr[64];
    char upstream_label[280]; /* host:port of the current/last upstream attempt */
    char user[PG_IDENT_MAX], database[PG_IDENT_MAX], application_name[PG_IDENT_MAX];
};

static inline struct px_leg *px_conn_client(struct px_conn *c)
{
    return &c->legs[PX_CLIENT];
}

static inline struct px_leg *px_conn_upstream(struct px_conn *c)
{
    return &c->legs[PX_UPSTREAM];
}

/* Accepts one client on wl; never fails loudly (a failed accept is logged). */
void px_conn_accept(struct px_worker_listener *wl);

/* Ends the connection with a reason (the first reason wins; idempotent).
 *
 * Two states settle the reason before the end: FAILING (the error is on its way to the client)
 * and RETIRING. A driver enters RETIRING from its on_close hook when the client left during the
 * startup but hanging up on the server would hurt (MySQL counts an aborted handshake against
 * dbtrust's address, max_connect_errors): the client leg is closed, the upstream leg reads, and
 * the driver ends the upstream's login itself. While retiring nothing goes to the client, the
 * client's reason stays whatever ends it, and any upstream EOF, error, failure or the timer
 * closes the connection. */
void px_conn_close(struct px_conn *c, enum dbt_reason reason, const char *detail);

/* Ends the startup phase with an error: the client gets a protocol-native error naming the
 * reason, the listener and the upstream, then the connection closes. */
void px_conn_fail(struct px_conn *c, enum dbt_reason reason, const char *detail);
/* The same with a ready error packet (len 0: close without one). */
void px_conn_fail_with(struct px_conn *c, enum dbt_reason reason, const char *detail,
                       const uint8_t *pkt, size_t len);

/* client_tls: starts a TLS server handshake on the client leg with the listener's serving
 * identity; ciphertext already read goes to the engine first. alpn: the accepted protocol
 * (wire format) or NULL; alpn_required: PostgreSQL direct TLS. The driver's on_tls_ready
 * follows; a failure or timeout closes the connection with a client_* reason. */
void px_conn_start_client_tls(struct px_conn *c, const uint8_t *alpn, size_t alpn_len,
                              bool alpn_required, const uint8_t *ciphertext, size_t len);

/* What the startup must be refused with (a limit decided at accept, or overloaded now), with
 * the detail for the client; DBT_NONE to go on. */
enum dbt_reason px_conn_admission(const struct px_conn *c, char *detail, size_t cap);
/* The client logged in (or never will): it no longer counts in max_startup_per_client. */
void px_conn_startup_done(struct px_conn *c);

/* The startup is over: relay raw bytes from now; to_client goes to the client first. */
void px_conn_start_relay(struct px_conn *c, const uint8_t *to_client, size_t len);

/* Arms the connection's single timer for the current phase (0 = stop it); on expiry the state
 * says what went wrong. */
void px_conn_set_timer(struct px_conn *c, uint32_t ms);
/* The same with the phase's own handler. */
void px_conn_set_timer_fn(struct px_conn *c, uint32_t ms, void (*fn)(struct px_conn *c));

void px_conn_release(struct px_conn *c); /* drops one open_refs; frees at zero */

/* The connection is ending - failing (its error is on the way to the client) or closing:
 * nothing new starts. Every callback that would start the next step (a dial, the next address,
 * a protocol step) asks this one question first. */
static inline bool px_conn_ending(const struct px_conn *c)
{
    return c->closing || c->state == PX_CONN_FAILING;
}

/* Relaying, and the login is over: a broken leg is the end of a session, not a failed start. */
bool px_conn_logged_in(const struct px_conn *c);

/* The handlers both legs share (the upstream dialer installs them on its leg too). */
void px_conn_leg_bytes(struct px_leg *l, const uint8_t *data, size_t len);
void px_conn_leg_read_end(struct px_leg *l, int status);
void px_conn_leg_tls_error(struct px_leg *l, enum dbt_reason r, const char *detail);
void px_conn_leg_write_done(struct px_leg *l, int status);
void px_conn_leg_shutdown_done(struct px_leg *l);

/* The client-facing error text: "dbtrust: <summary> (<reason>): <detail> [listener X, upstream
 * H:P]" - the same words for every protocol. */
void px_error_message(const struct px_conn *c, enum dbt_reason reason, const char *detail,
                      char *buf, size_t cap);

uint64_t px_now_ms(void);

#endif
