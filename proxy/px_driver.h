/* A protocol driver (PostgreSQL, MySQL) owns the startup phase of a connection. The connection
 * lifecycle calls it only through this table, which each listener carries; drivers call down
 * into the connection, its legs and the upstream dialer, never the other way round. */
#ifndef PX_DRIVER_H
#define PX_DRIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dbt_reason.h"

struct px_conn;
struct px_leg;

struct px_driver {
    const char *name;
    /* ALPN protocol list for upstream TLS (wire format), NULL for none. */
    const uint8_t *alpn;
    size_t alpn_len;
    /* Accepted: set up the startup state and begin (read the client, or dial first). */
    void (*start)(struct px_conn *c);
    /* Plaintext from either leg, while the driver owns the connection: the whole startup, and
     * for relay_framed drivers the relay too. */
    void (*on_bytes)(struct px_conn *c, struct px_leg *from, const uint8_t *data, size_t len);
    /* TCP connected to an upstream address. */
    void (*on_connected)(struct px_conn *c);
    /* A leg's TLS handshake is complete (the upstream verified). */
    void (*on_tls_ready)(struct px_conn *c, struct px_leg *leg);
    /* The protocol-native error carrying message, into buf; returns its length (0 = none). */
    size_t (*build_error)(struct px_conn *c, enum dbt_reason reason, const char *message,
                          uint8_t *buf, size_t cap);
    /* The connection is about to close (reason set): true when the driver keeps it going to
     * end the upstream's side gracefully (it closes the connection itself later). Optional. */
    bool (*on_close)(struct px_conn *c);
    /* Relaying, but the login still runs (framed relays): a broken leg is a failed startup. */
    bool (*authenticating)(const struct px_conn *c);
    /* Frees (and wipes) the driver's state. */
    void (*free)(struct px_conn *c);
    /* The relay keeps running through on_bytes (MySQL: sequence ids, COM_CHANGE_USER). */
    bool relay_framed;
};

#endif
