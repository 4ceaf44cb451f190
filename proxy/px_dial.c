/* Upstream connect slots (upstream_connect_limit): how many of a listener's connections may be
 * setting up their upstream leg at once (TCP connect through the verified TLS handshake for
 * PostgreSQL, through the server's greeting for MySQL, whose TLS waits for the client). A
 * burst of clients - an application restart, a pool refill - then reaches the server as a
 * bounded trickle instead of a storm of handshakes; the rest wait their turn in arrival order
 * within connect_timeout. Each worker owns its share of the limit: no lock, no cross-thread
 * wakeups. */
#include "px_conn.h"

static unsigned worker_share(const struct px_worker_listener *wl)
{
    unsigned limit = wl->l->cfg->upstream_connect_limit;
    unsigned workers = wl->w->srv->worker_count;
    unsigned share = (limit + workers - 1) / workers;
    return share > 0 ? share : 1;
}

static void unlink_waiter(struct px_conn *c)
{
    struct px_worker_listener *wl = c->wl;
    if (c->dial_prev)
        c->dial_prev->dial_next = c->dial_next;
    else
        wl->dial_waiters = c->dial_next;
    if (c->dial_next)
        c->dial_next->dial_prev = c->dial_prev;
    else
        wl->dial_waiters_tail = c->dial_prev;
    c->dial_prev = c->dial_next = NULL;
    c->dial_waiting = false;
}

bool px_dial_acquire(struct px_conn *c)
{
    struct px_worker_listener *wl = c->wl;
    if (c->dial_slot)
        return true;
    if (wl->dials < worker_share(wl)) {
        wl->dials++;
        c->dial_slot = true;
        return true;
    }
    c->dial_waiting = true;
    c->dial_prev = wl->dial_waiters_tail;
    c->dial_next = NULL;
    if (wl->dial_waiters_tail)
        wl->dial_waiters_tail->dial_next = c;
    else
        wl->dial_waiters = c;
    wl->dial_waiters_tail = c;
    c->state = PX_CONN_DIAL_WAIT;
    px_conn_set_timer(c, wl->l->cfg->connect_timeout_ms);
    return false;
}

void px_dial_release(struct px_conn *c)
{
    if (c->dial_waiting)
        unlink_waiter(c);
    if (!c->dial_slot)
        return;
    struct px_worker_listener *wl = c->wl;
    c->dial_slot = false;
    wl->dials--;
    /* Hand the slot to the longest waiter still alive. */
    struct px_conn *next = wl->dial_waiters;
    if (next == NULL)
        return;
    unlink_waiter(next);
    wl->dials++;
    next->dial_slot = true;
    px_upstream_dial(next);
}
