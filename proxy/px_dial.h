/* Upstream connect slots (upstream_connect_limit): how many of a listener's connections may be
 * setting up their upstream leg at once (TCP connect through the verified TLS handshake for
 * PostgreSQL, through the server's greeting for MySQL, whose TLS waits for the client). A
 * burst of clients - an application restart, a pool refill - then reaches the server as a
 * bounded trickle instead of a storm of handshakes; the rest wait their turn in arrival order
 * within connect_timeout. Each worker owns its share of the limit: no lock, no cross-thread
 * wakeups. */
#ifndef PX_DIAL_H
#define PX_DIAL_H

#include <stdbool.h>

#include "px.h"

struct px_dial_waiter {
    struct px_worker_listener *wl;
    bool slot, waiting;
    struct px_dial_waiter *prev, *next;        /* the listener's waiters, in arrival order */
    void (*granted)(struct px_dial_waiter *d); /* a queued waiter got its slot */
};

/* Sets up the worker listener's handover (on the worker's loop; closed with the loop). */
void px_dial_init(struct px_worker_listener *wl);
/* True = dial now (the slot is held); false = queued behind earlier waiters: granted() runs
 * from the loop once a slot is free and their turn came. */
bool px_dial_acquire(struct px_dial_waiter *d);
/* The leg is set up, or the connection ends: gives the slot (or the place in the queue) back.
 * Never calls granted() itself: the handover runs from the loop, not on the stack of the
 * connection that releases (which may be closing, or failing inside another waiter's dial).
 * Idempotent. */
void px_dial_release(struct px_dial_waiter *d);

#endif
