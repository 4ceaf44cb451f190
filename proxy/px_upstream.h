/* The upstream leg: name resolution, connect with timeout across every configured upstream and
 * address (within the listener's connect slots), and the TLS handshake with verification. */
#ifndef PX_UPSTREAM_H
#define PX_UPSTREAM_H

#include "px_conn.h"

/* Dials the listener's upstreams in order; the driver's on_connected follows. */
void px_upstream_dial(struct px_conn *c);
/* Dials exactly addr, as the listener's upstream entry upstream_idx (its name is verified): a
 * cancel for a session whose server is known. No other address is tried. addr must stay valid
 * for the connection's life. */
void px_upstream_dial_pinned(struct px_conn *c, size_t upstream_idx, const struct sockaddr *addr);
/* Starts TLS (verify-full) on the connected upstream leg; the driver's on_tls_ready follows. */
void px_upstream_start_tls(struct px_conn *c);
/* The name the certificate must carry: server_name when configured, else the upstream host. */
const char *px_upstream_verify_name(const struct px_conn *c);

#endif
