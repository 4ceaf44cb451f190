/* Process-wide runtime: listeners, workers and what they share. Only proxy/ includes <uv.h>. */
#ifndef PX_H
#define PX_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "cfg.h"
#include "mysql.h"
#include "px_metrics.h"
#include "tlsw.h"

#define PX_MAX_WORKERS   256
#define PX_REFUSAL_NOTES 256 /* addresses remembered per worker for rate-limited refusal logs */
/* Per-worker scratch buffer for socket reads. Read callbacks consume it synchronously, so one
 * buffer serves every connection of the worker and idle connections hold no read buffer. */
#define PX_READ_CHUNK (64 * 1024)

/* A client-facing stream: TCP or a Unix socket (listen = unix:/path). */
union px_stream {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
};

#define PX_CHAIN_KEPT 4 /* certificates of an upstream chain kept for metrics and warnings */

/* The chain an upstream presented in the last verified handshake of a listener. */
struct px_seen_chain {
    size_t len;
    struct tlsw_cert_info certs[PX_CHAIN_KEPT]; /* leaf first */
};

/* One configured listener, shared by every worker. */
struct px_listener {
    const struct cfg_listener *cfg;
    const struct px_driver *drv; /* the protocol driver (px_driver.h), chosen at start */
    struct tlsw_gen *gen; /* generation in force (workers hold their own ref); srv->trust_lock */
    double gen_since;     /* Unix time gen went into force (loaded or reloaded); trust_lock */
    struct px_seen_chain seen;    /* under srv->seen_lock: written when a new leaf appears */
    int fds[PX_MAX_WORKERS];      /* one SO_REUSEPORT listening socket per worker (-1 = none) */
    atomic_uint active;           /* live connections across workers, for max_connections */
    struct px_startups *startups; /* max_startup_per_client: pre-login connections per source */
    /* client_tls: the serving identity in force (NULL when client_tls = off); swapped by
     * reloads like gen, under srv->trust_lock; workers hold their own reference */
    struct tlsw_server *client_id;
    EVP_PKEY *rsa_key;            /* MySQL caching_sha2/sha256 bridge key (mysql listeners) */
    char rsa_pem[MY_PEM_MAX + 1]; /* its public half, served to clients that ask */
};

struct px_bundle_watch;
struct px_id_watch;
struct px_overload;
struct px_startups;
struct px_driver;
struct px_dial_waiter;

struct px_server {
    struct cfg *cfg;
    struct px_bundle_watch **watches; /* reload triggers, one per distinct bundle (main loop) */
    size_t watch_count;
    struct px_id_watch **id_watches; /* serving identity triggers, per client_tls listener */
    size_t id_watch_count;
    atomic_uint client_id_reloads_ok, client_id_reloads_failed;
    bool stopping;
    atomic_uint reloads_ok, reloads_failed;
    /* bundles applied by a forced reload, the rotation guard skipped */
    atomic_uint reloads_overridden;
    atomic_bool ready; /* workers running, not draining: /readyz */
    /* memory_limit: resident memory above the high-water mark; workers stop accepting and
     * refuse new startups until it falls below the low-water mark (px_overload.c) */
    atomic_bool overloaded;
    struct px_overload *overload;
    /* With a memory_limit: connections the workers may still accept until the next sample
     * (headroom / a pessimistic cost per connection), so a flood cannot overshoot the budget
     * between two samples. */
    bool accept_budgeted;
    atomic_llong accept_allowance;
    uv_mutex_t trust_lock;  /* listeners[].gen: swapped by reloads, read by the admin thread */
    uv_mutex_t seen_lock;   /* listeners[].seen: written by workers, read by admin and expiry */
    uv_async_t main_wakeup; /* from other threads to the main loop: reload requests, new chains */
    atomic_bool reload_requested, chain_seen;
    atomic_bool force_reload_requested; /* POST /reload?force=1 */
    atomic_bool quit_requested;         /* POST /quitquitquit: the SIGTERM path, from main */
    struct px_admin *admin;
    struct px_expiry *expiry;
    struct px_trim *trim;
    struct px_cancel_map *cancels; /* live PostgreSQL sessions by BackendKeyData (px_cancel.c) */
    struct px_listener *listeners;
    size_t listener_count;
    struct px_worker *workers;
    unsigned worker_count;
    unsigned workers_ready;        /* loops initialised (px_workers_start), first ones first */
    unsigned workers_running;      /* threads started; px_workers_stop joins exactly these */
    atomic_uint closed_since_trim; /* connections freed since the main loop last trimmed */
};

/* A session to resume: only offered to the listener's upstream entry it came from, under the
 * trust generation that verified it (referenced). */
#define PX_RESUME_MAX  4
#define PX_LEAVES_KEPT 8
struct px_resume_slot {
    struct tlsw_session *session;
    struct tlsw_gen *gen;
    size_t upstream;
};

/* A worker's view of one listener: its accept handle and its reference to the current trust
 * generation (replaced by a message to the worker on reload, never under a lock). */
struct px_worker_listener {
    union px_stream handle;
    struct px_worker *w;
    struct px_listener *l;
    struct tlsw_gen *gen;                   /* the generation new connections take */
    _Atomic(struct tlsw_gen *) pending_gen; /* published by a reload, taken on wakeup */
    struct tlsw_server *client_id;          /* serving identity new TLS clients get (or NULL) */
    _Atomic(struct tlsw_server *) pending_client_id; /* published by a reload, like pending_gen */
    bool open;
    bool paused; /* overloaded: a connection waits in libuv unaccepted, the listener unpolled */
    uint64_t ceiling_warned_ms; /* last "hard ceiling reached" warning */
    /* Leaves (SHA-256, hex) seen lately, newest at leaves_next - 1: an upstream name served by
     * several nodes with different certificates logs each chain once, not at every flip. */
    char leaves_seen[PX_LEAVES_KEPT][65];
    unsigned leaves_next;
    int tls_group;  /* key exchange group the upstream chose last (NID) */
    unsigned dials; /* connect slots in use (px_dial.c) */
    struct px_dial_waiter *dial_waiters, *dial_waiters_tail;
    uv_idle_t dial_handover; /* hands freed slots to waiters from the loop (px_dial.c) */
    struct px_resume_slot resume[PX_RESUME_MAX]; /* oldest first (px_resume.c) */
    unsigned resume_count;
    struct px_listener_stats stats; /* written by this worker only */
};

struct px_conn;

struct px_worker {
    unsigned id;
    struct px_server *srv;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;
    uv_timer_t drain_timer;
    uv_timer_t idle_sweep_timer; /* releases buffers of connections that went quiet */
    atomic_bool stop_requested;
    bool loop_ready; /* uv_loop_init succeeded */
    bool draining;
    struct px_worker_listener *wls;
    struct px_conn *conns; /* intrusive list of live connections (for shutdown) */
    unsigned conn_count;
    uint64_t fd_limit;     /* RLIMIT_NOFILE (0 = unlimited), for the EMFILE warning */
    uint64_t fd_warned_ms; /* last "descriptors nearly exhausted" warning */
    /* What a read callback got: plaintext, or ciphertext the TLS engine reads straight from
     * here (lent for the callback, tlsw_conn_lend). */
    uint8_t read_buf[PX_READ_CHUNK];
    /* Plaintext decrypted from read_buf, handed on in one piece. */
    uint8_t plain_buf[PX_READ_CHUNK];
    struct px_wreq *free_wreqs; /* write blocks kept for reuse (px_io.c) */
    /* client_allow refusals logged lately, by address hash: a scan must not flood the log */
    struct px_refusal_note {
        uint8_t addr[16];
        uint64_t at_ms;
    } refusals_logged[PX_REFUSAL_NOTES];
    unsigned free_wreq_count;
};

/* True when a worker may accept one more connection now (memory budget). */
static inline bool px_may_accept(struct px_server *srv)
{
    if (atomic_load_explicit(&srv->overloaded, memory_order_relaxed))
        return false;
    return !srv->accept_budgeted || atomic_fetch_sub(&srv->accept_allowance, 1) > 0;
}

/* Starts one thread per worker; each runs its own loop. Returns 0 or a negative uv error. */
DBT_MUST_USE int px_workers_start(struct px_server *srv);
/* Asks every worker to stop accepting and drain (SIGTERM); joins them. Their counters stay
 * readable until px_workers_free. */
void px_workers_stop(struct px_server *srv);
void px_workers_free(struct px_server *srv);

/* Sessions for resumption (px_resume.c): put one (the store takes s, references gen), take
 * one for gen and upstream (the caller frees it; NULL if none), forget all (new trust,
 * shutdown). */
void px_resume_put(struct px_worker_listener *wl, struct tlsw_session *s, struct tlsw_gen *gen,
                   size_t upstream);
struct tlsw_session *px_resume_take(struct px_worker_listener *wl, const struct tlsw_gen *gen,
                                    size_t upstream);
void px_resume_forget(struct px_worker_listener *wl);

#endif
