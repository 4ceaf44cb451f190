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

/* Free slots go to the longest waiters still alive, in arrival order. A waiter's dial may fail
 * at once and release its slot again: that only re-arms the handover, no recursion. */
static void on_handover(uv_idle_t *h)
{
    struct px_worker_listener *wl = h->data;
    uv_idle_stop(h);
    while (wl->dial_waiters != NULL && wl->dials < worker_share(wl)) {
        struct px_dial_waiter *next = wl->dial_waiters;
        unlink_waiter(next);
        wl->dials++;
        next->slot = true;
        next->granted(next);
    }
}

void px_dial_init(struct px_worker_listener *wl)
{
    uv_idle_init(&wl->w->loop, &wl->dial_handover);
    wl->dial_handover.data = wl;
}

bool px_dial_acquire(struct px_dial_waiter *d)
{
    struct px_worker_listener *wl = d->wl;
    if (d->slot)
        return true;
    /* A slot freed for the waiters is theirs until the handover ran: no overtaking. */
    if (wl->dial_waiters == NULL && wl->dials < worker_share(wl)) {
        wl->dials++;
        d->slot = true;
        return true;
    }
    if (d->waiting)
        return false;
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
    if (wl->dial_waiters != NULL)
        uv_idle_start(&wl->dial_handover, on_handover);
}
