/* Workers: one thread and one libuv loop each, accepting on their own SO_REUSEPORT socket per
 * listener, so the kernel spreads connections and nothing on the data path takes a lock. */
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>

#include "px_conn.h"
#include "px_dial.h"
#include "px_io.h"
#include "px_log.h"

static void on_connection(uv_stream_t *server, int status)
{
    struct px_worker_listener *wl = server->data;
    if (status < 0) {
        /* EMFILE and friends: libuv keeps a reserve fd and accepts+closes to avoid a busy loop. */
        px_log(CFG_LOG_WARN, "accept failed on listener %s: %s", wl->l->cfg->name,
               uv_strerror(status));
        return;
    }
    if (wl->w->draining)
        return;
    /* Overloaded: leave the connection unaccepted. libuv stops polling a listener whose last
     * connection was not taken, so the listener pauses (new clients wait in the kernel's
     * backlog) until resume_listeners() takes it. */
    if (!px_may_accept(wl->w->srv)) {
        wl->paused = true;
        return;
    }
    px_conn_accept(wl);
}

static void resume_listeners(struct px_worker *w)
{
    if (atomic_load(&w->srv->overloaded) || w->draining)
        return;
    for (size_t i = 0; i < w->srv->listener_count; i++) {
        struct px_worker_listener *wl = &w->wls[i];
        if (wl->paused && wl->open && px_may_accept(w->srv)) {
            wl->paused = false;
            px_conn_accept(wl); /* uv_accept also restarts polling the listener */
        }
    }
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct px_worker *w = t->data;
    struct px_conn *c = w->conns;
    while (c) {
        struct px_conn *next = c->next;
        if (c->state == PX_CONN_RELAY || c->state == PX_CONN_CLIENT_STARTUP || c->is_cancel)
            px_conn_close(c, DBT_SHUTDOWN, "drain_timeout expired");
        else
            px_conn_fail(c, DBT_SHUTDOWN, "drain_timeout expired");
        c = next;
    }
}

/* A connection that moved bytes once (a 64 KiB read, a bulk COPY) keeps ciphertext buffers of
 * that size; one that stayed quiet for a whole sweep period gives them back. OpenSSL's own
 * record buffers are released by SSL_MODE_RELEASE_BUFFERS already. */
#define PX_IDLE_SWEEP_MS 10000

static void on_idle_sweep(uv_timer_t *t)
{
    struct px_worker *w = t->data;
    for (struct px_conn *c = w->conns; c != NULL; c = c->next) {
        for (size_t i = 0; i < DBT_ARRAY_LEN(c->legs); i++) {
            struct px_leg *l = &c->legs[i];
            if (c->state == PX_CONN_RELAY && !l->recent_io)
                px_leg_trim(l);
            l->recent_io = false;
        }
    }
}

static void close_listeners(struct px_worker *w)
{
    for (size_t i = 0; i < w->srv->listener_count; i++) {
        if (w->wls[i].open) {
            w->wls[i].open = false;
            uv_close(&w->wls[i].handle.handle, NULL);
        }
    }
}

/* A reload published new trust: from now on this worker's new connections take it. Live
 * connections hold their own reference to the generation they started with. */
static void take_trust(struct px_worker *w)
{
    for (size_t i = 0; i < w->srv->listener_count; i++) {
        struct px_worker_listener *wl = &w->wls[i];
        struct tlsw_gen *g = atomic_exchange(&wl->pending_gen, NULL);
        if (g) {
            tlsw_gen_unref(wl->gen);
            wl->gen = g;
            px_resume_forget(wl);
        }
        struct tlsw_server *id = atomic_exchange(&wl->pending_client_id, NULL);
        if (id) {
            tlsw_server_unref(wl->client_id); /* TLS sessions up hold their own reference */
            wl->client_id = id;
        }
    }
}

static void on_wakeup(uv_async_t *a)
{
    struct px_worker *w = a->data;
    take_trust(w);
    resume_listeners(w);
    if (!atomic_load(&w->stop_requested) || w->draining)
        return;
    w->draining = true;
    close_listeners(w);
    uv_close((uv_handle_t *)&w->wakeup, NULL);
    if (w->conn_count > 0) {
        px_log(CFG_LOG_INFO, "worker %u draining %u connection(s)", w->id, w->conn_count);
        uv_timer_start(&w->drain_timer, on_drain_timeout, w->srv->cfg->drain_timeout_ms, 0);
    }
}

static void on_close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void worker_main(void *arg)
{
    struct px_worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_walk(&w->loop, on_close_any, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&w->loop) != 0)
        px_log(CFG_LOG_WARN, "worker %u: loop closed with handles still open", w->id);
    px_io_worker_free(w);
}

static int worker_init(struct px_server *srv, struct px_worker *w, unsigned id)
{
    w->id = id;
    w->srv = srv;
    int rc = uv_loop_init(&w->loop);
    if (rc != 0)
        return rc;
    w->loop_ready = true;
    uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    w->wakeup.data = w;
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    struct rlimit rl; /* read after main raised the soft limit */
    w->fd_limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                      ? (uint64_t)rl.rlim_cur
                      : 0;
    uv_timer_init(&w->loop, &w->idle_sweep_timer);
    w->idle_sweep_timer.data = w;
    uv_timer_start(&w->idle_sweep_timer, on_idle_sweep, PX_IDLE_SWEEP_MS, PX_IDLE_SWEEP_MS);
    uv_unref((uv_handle_t *)&w->idle_sweep_timer); /* never what keeps a draining loop alive */
    w->wls = calloc(srv->listener_count, sizeof(*w->wls));
    if (!w->wls)
        return UV_ENOMEM;
    for (size_t i = 0; i < srv->listener_count; i++) {
        struct px_worker_listener *wl = &w->wls[i];
        struct px_listener *l = &srv->listeners[i];
        wl->w = w;
        wl->l = l;
        px_dial_init(wl);
        wl->gen = l->gen;
        tlsw_gen_ref(wl->gen);
        wl->client_id = l->client_id;
        if (wl->client_id)
            tlsw_server_ref(wl->client_id);
        if (l->fds[id] < 0)
            continue;
        if (l->cfg->listen.is_unix) {
            uv_pipe_init(&w->loop, &wl->handle.pipe, 0);
            rc = uv_pipe_open(&wl->handle.pipe, l->fds[id]);
        } else {
            uv_tcp_init(&w->loop, &wl->handle.tcp);
            rc = uv_tcp_open(&wl->handle.tcp, l->fds[id]);
        }
        wl->handle.handle.data = wl;
        wl->open = true;
        if (rc == 0)
            rc = uv_listen(&wl->handle.stream, 511, on_connection);
        if (rc != 0)
            return rc;
        l->fds[id] = -1; /* owned by the handle now */
    }
    return 0;
}

int px_workers_start(struct px_server *srv)
{
    srv->workers = calloc(srv->worker_count, sizeof(*srv->workers));
    if (!srv->workers)
        return UV_ENOMEM;
    for (unsigned i = 0; i < srv->worker_count; i++) {
        int rc = worker_init(srv, &srv->workers[i], i);
        if (srv->workers[i].loop_ready)
            srv->workers_ready = i + 1;
        if (rc != 0)
            return rc; /* px_workers_stop undoes what was set up */
    }
    for (unsigned i = 0; i < srv->worker_count; i++) {
        int rc = uv_thread_create(&srv->workers[i].thread, worker_main, &srv->workers[i]);
        if (rc != 0)
            return rc;
        srv->workers_running = i + 1;
    }
    return 0;
}

/* A loop whose thread never started (a later worker failed to start): its handles are closed
 * here, on the main thread, which is the only one that ever touched it. */
static void close_unstarted(struct px_worker *w)
{
    uv_walk(&w->loop, on_close_any, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    (void)uv_loop_close(&w->loop);
    px_io_worker_free(w);
}

static void drop_trust(struct px_server *srv, struct px_worker *w)
{
    for (size_t j = 0; w->wls && j < srv->listener_count; j++) {
        px_resume_forget(&w->wls[j]);
        tlsw_gen_unref(w->wls[j].gen);
        w->wls[j].gen = NULL;
        tlsw_gen_unref(atomic_exchange(&w->wls[j].pending_gen, NULL));
        tlsw_server_unref(w->wls[j].client_id);
        w->wls[j].client_id = NULL;
        tlsw_server_unref(atomic_exchange(&w->wls[j].pending_client_id, NULL));
    }
}

void px_workers_stop(struct px_server *srv)
{
    for (unsigned i = 0; i < srv->workers_running; i++) {
        atomic_store(&srv->workers[i].stop_requested, true);
        uv_async_send(&srv->workers[i].wakeup);
    }
    for (unsigned i = 0; i < srv->workers_running; i++)
        uv_thread_join(&srv->workers[i].thread);
    for (unsigned i = srv->workers_running; i < srv->workers_ready; i++)
        close_unstarted(&srv->workers[i]);
    for (unsigned i = 0; srv->workers && i < srv->worker_count; i++)
        drop_trust(srv, &srv->workers[i]);
    srv->workers_running = srv->workers_ready = 0; /* a second call does nothing */
}

void px_workers_free(struct px_server *srv)
{
    for (unsigned i = 0; srv->workers && i < srv->worker_count; i++)
        free(srv->workers[i].wls);
    free(srv->workers);
    srv->workers = NULL;
}
