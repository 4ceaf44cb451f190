/* Admission at accept: who may use a listener, and what a connection over a limit is refused
 * with. Limits count from accept, logged in or not, so memory is bounded by them, not only
 * sessions: client_allow (closed unread), max_connections (the protocol's refusal once the
 * client's first packet is in), a hard ceiling above it (closed unread), and
 * max_startup_per_client (pre-login connections per source address). Decides; the connection
 * acts. */
#ifndef PX_ADMIT_H
#define PX_ADMIT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "px.h"

struct px_admission {
    enum dbt_reason refusal;  /* DBT_NONE: admitted */
    bool close_now;           /* close at accept, unread (refusal says why; already logged) */
    uint8_t startup_addr_len; /* counted in max_startup_per_client (4 or 16), 0 = not */
    uint8_t startup_addr[16];
};

/* peer: the client's address, NULL for a Unix socket; active: the listener's connections
 * including this one; client_addr: its text for log lines. */
void px_admit(struct px_worker_listener *wl, const struct sockaddr_storage *peer, unsigned active,
              const char *client_addr, struct px_admission *out);
/* The connection logged in or ends: it leaves max_startup_per_client. Idempotent. */
void px_admit_leave(struct px_worker_listener *wl, struct px_admission *a);
/* The words for the client and the log for a refusal reason ("" for others). */
void px_admit_detail(const struct px_worker_listener *wl, enum dbt_reason r,
                     const char *client_addr, char *buf, size_t cap);

#endif
