/* Sessions kept for resumption, per worker and listener (no lock: one worker owns them).
 * RFC 8446 C.4: a client should use a ticket once, and OpenSSL's client declines to resume a
 * TLS 1.3 session a second time anyway; so a connection takes a session out of the store and
 * puts back the fresh one its own handshake earned. A few are kept so that a burst of new
 * connections does not fall back to full handshakes all but one. */
#include "px.h"

static void drop(struct px_resume_slot *slot)
{
    tlsw_session_free(slot->session);
    tlsw_gen_unref(slot->gen);
    slot->session = NULL;
    slot->gen = NULL;
}

static void remove_at(struct px_worker_listener *wl, unsigned i)
{
    for (; i + 1 < wl->resume_count; i++)
        wl->resume[i] = wl->resume[i + 1];
    wl->resume_count--;
}

void px_resume_put(struct px_worker_listener *wl, struct tlsw_session *s, struct tlsw_gen *gen,
                   size_t upstream)
{
    if (wl->resume_count == PX_RESUME_MAX) {
        drop(&wl->resume[0]); /* the oldest */
        remove_at(wl, 0);
    }
    tlsw_gen_ref(gen);
    wl->resume[wl->resume_count++] =
        (struct px_resume_slot){.session = s, .gen = gen, .upstream = upstream};
}

struct tlsw_session *px_resume_take(struct px_worker_listener *wl, const struct tlsw_gen *gen,
                                    size_t upstream)
{
    for (unsigned i = wl->resume_count; i-- > 0;) { /* newest first */
        struct px_resume_slot *slot = &wl->resume[i];
        if (slot->gen != gen || slot->upstream != upstream)
            continue;
        struct tlsw_session *s = slot->session;
        tlsw_gen_unref(slot->gen);
        remove_at(wl, i);
        return s;
    }
    return NULL;
}

void px_resume_forget(struct px_worker_listener *wl)
{
    for (unsigned i = 0; i < wl->resume_count; i++)
        drop(&wl->resume[i]);
    wl->resume_count = 0;
}
