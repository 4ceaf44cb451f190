#include "px_dial.h"

static unsigned worker_share(const struct px_worker_listener *wl)
{
    unsigned limit = wl->l->cfg->upstream_connect_limit;
    unsigned workers = wl->w->srv->worker_count;
    unsigned share = (limit + workers - 1) / workers;
    return share > 0 ? share : 1;
}

static void unlink_waiter(struct px_dial_waiter *d)
{
    struct px_worker_listener *wl = d->wl;
    if (d->prev)
        d->prev->next = d->next;
    else
        wl->dial_waiters = d->next;
    if (d->next)
        d->next->prev = d->prev;
    else
        wl->dial_waiters_tail = d->prev;
    d->prev = d->next = NULL;
    d->waiting = false;
}

bool px_dial_acquire(struct px_dial_waiter *d)
{
    struct px_worker_listener *wl = d->wl;
    if (d->slot)
        return true;
    if (wl->dials < worker_share(wl)) {
        wl->dials++;
        d->slot = true;
        return true;
    }
    d->waiting = true;
    d->prev = wl->dial_waiters_tail;
    d->next = NULL;
    if (wl->dial_waiters_tail)
        wl->dial_waiters_tail->next = d;
    else
        wl->dial_waiters = d;
    wl->dial_waiters_tail = d;
    return false;
}

void px_dial_release(struct px_dial_waiter *d)
{
    if (d->waiting)
        unlink_waiter(d);
    if (!d->slot)
        return;
    struct px_worker_listener *wl = d->wl;
    d->slot = false;
    wl->dials--;
    /* Hand the slot to the longest waiter still alive. */
    struct px_dial_waiter *next = wl->dial_waiters;
    if (next == NULL)
        return;
    unlink_waiter(next);
    wl->dials++;
    next->slot = true;
    next->granted(next);
}
