/* A leg: one side of a proxied connection - the client's stream or the upstream's - with its
 * optional TLS engine (server role toward clients, client role toward upstreams), the bytes
 * queued toward its peer and its reading/EOF/shutdown state. Both sides are this one type, so
 * reading, decrypting, writing, backpressure and half-close are written once. A leg knows
 * nothing of protocols or connections: it reports to its owner through an events table
 * (PgBouncer's SBuf and h2o's socket are the models). */
#ifndef PX_LEG_H
#define PX_LEG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "px.h"

enum px_side { PX_CLIENT, PX_UPSTREAM };
enum px_leg_state { PX_LEG_NONE, PX_LEG_OPEN, PX_LEG_CLOSING };

struct px_leg;

/* What a leg tells its owner. Every handler is called from the leg's own callbacks; the leg
 * stays valid during the call (its memory belongs to the owner, which frees it only after the
 * handle closed). */
struct px_leg_events {
    /* Plaintext from the peer: decrypted when the leg has TLS. */
    void (*on_bytes)(struct px_leg *l, const uint8_t *data, size_t len);
    /* The peer will send no more: 0 = TLS close_notify, UV_EOF, or a read error. */
    void (*on_read_end)(struct px_leg *l, int status);
    /* The TLS handshake completed (and, in the client role, the peer was verified). */
    void (*on_tls_done)(struct px_leg *l);
    /* TLS failed: r is the engine's reason (DBT_NONE when it has none), detail its words.
     * Also when the first byte after agreeing to TLS is not a TLS record (r set by the leg). */
    void (*on_tls_error)(struct px_leg *l, enum dbt_reason r, const char *detail);
    /* A queued write finished (status < 0: the stream broke), or a write failed at once. */
    void (*on_write_done)(struct px_leg *l, int status);
    /* The write side was shut down (px_leg_shutdown). */
    void (*on_shutdown_done)(struct px_leg *l);
    /* The handle is closed: the leg may be reopened or its owner freed. */
    void (*on_closed)(struct px_leg *l);
    /* The peer sent a resumable session (client role; NULL = not kept). Takes s. */
    void (*on_session)(struct px_leg *l, struct tlsw_session *s);
};

struct px_leg {
    union px_stream s; /* handle data points back at the leg */
    struct px_worker *w;
    void *owner;
    const struct px_leg_events *ev;
    enum px_side side;
    enum px_leg_state state;
    struct tlsw_conn *tls; /* NULL: plaintext */
    size_t queued;         /* bytes handed to the socket, not yet written (ciphertext with TLS) */
    uint64_t bytes_in, bytes_out;   /* plaintext, for the log line */
    px_counter *stat_in, *stat_out; /* the listener's byte counters, or NULL */
    uv_shutdown_t shutdown_req;
    bool reading;
    bool halted;         /* the owner ends the connection: deliver nothing more */
    bool eof;            /* the peer will send no more */
    bool shut_sent;      /* our write side is shut (close_notify and FIN) */
    bool tls_up;         /* handshake completed */
    bool expect_record;  /* the next byte read must start a TLS record (CVE-2021-23214/23222) */
    bool recent_io;      /* bytes moved since the worker's last idle sweep */
    int tls_write_error; /* a TLS record could not be handed to the socket: the uv error (< 0)
                            until px_leg_flush reports it (the engine's output callback cannot),
                            then 1 - later records are dropped */
};

/* Sets a leg up before its handle exists. */
void px_leg_setup(struct px_leg *l, struct px_worker *w, void *owner, enum px_side side,
                  const struct px_leg_events *ev);
/* Initialises the handle on the worker's loop (Unix socket or TCP) and opens the leg. */
void px_leg_open_tcp(struct px_leg *l);
void px_leg_open_pipe(struct px_leg *l);

void px_leg_start_reading(struct px_leg *l); /* unless EOF seen, halted or not open */
void px_leg_stop_reading(struct px_leg *l);
/* Stops reading for good and delivers nothing more (the connection is failing). */
void px_leg_halt(struct px_leg *l);

/* Sends plaintext (encrypted when the leg has TLS). Returns 0, or -1 after reporting the
 * failure (on_write_done or on_tls_error). Dropped silently when the leg is not open. */
int px_leg_send(struct px_leg *l, const uint8_t *data, size_t len);
/* After the TLS engine ran: reports a record it wrote that the socket refused. 0 or -1 as
 * above. */
int px_leg_flush(struct px_leg *l);

/* Attaches a TLS engine (the leg owns it from now) and starts its handshake: the next byte
 * from the peer must start a TLS record. */
void px_leg_start_tls(struct px_leg *l, struct tlsw_conn *tls);
/* The same when the first ciphertext was read already (a direct TLS ClientHello). */
void px_leg_start_tls_with(struct px_leg *l, struct tlsw_conn *tls, const uint8_t *data,
                           size_t len);

/* Ends our direction: close_notify when TLS is up, then a TCP shutdown. Idempotent. */
void px_leg_shutdown(struct px_leg *l);
/* Closes the handle (a pending TLS alert is sent first, best effort). on_closed follows. */
void px_leg_close(struct px_leg *l);
/* Bytes the kernel still holds for the peer (written but not yet acknowledged); 0 when unknown
 * or not TCP. */
size_t px_leg_unsent(const struct px_leg *l);
/* Closes with a TCP reset instead of a FIN, so the peer cannot take the end for an orderly
 * one; unsent bytes are dropped. A plain close for a Unix socket or after px_leg_shutdown. */
void px_leg_abort(struct px_leg *l);
/* Releases TLS buffers of a leg that went quiet. */
void px_leg_trim(struct px_leg *l);

#endif
