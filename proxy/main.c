/* dbtrust: command line, configuration, trust loading, listening sockets, privilege drop,
 * workers and signals. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "px.h"
#include "px_admin.h"
#include "px_cancel.h"
#include "px_client_id.h"
#include "px_cmd.h"
#include "px_drivers.h"
#include "px_expiry.h"
#include "px_listen.h"
#include "px_log.h"
#include "px_overload.h"
#include "px_startups.h"
#include "px_reload.h"
#include "px_trim.h"

#ifndef DBTRUST_VERSION
#define DBTRUST_VERSION "0.0.0"
#endif

/* How long exit waits for the log writer to hand the last lines to stderr's reader. */
#define LOG_FLUSH_MS 2000

static const char usage_text[] =
    "Usage:\n"
    "  dbtrust --config FILE                      run with a configuration file\n"
    "  dbtrust --listen HOST:PORT --upstream HOST:PORT --protocol postgres|mysql \\\n"
    "          --bundle CA.pem [--server-name NAME]   run one listener without a file\n"
    "  dbtrust check --config FILE [--tap] [--min-days N] [--bundle CANDIDATE.pem]\n"
    "                                             live handshake to every upstream (see --help)\n"
    "  dbtrust bundle inspect FILE...              certificates, expiry, fingerprints, warnings\n"
    "  dbtrust bundle merge -o OUT FILE...         combined, de-duplicated bundle (atomic)\n"
    "  dbtrust wait --admin HOST:PORT [--timeout 30s]\n"
    "                                             exit 0 once that dbtrust's /readyz answers\n"
    "                                             200, 1 on timeout (entrypoints, init order)\n"
    "  dbtrust --version | --help\n"
    "\n"
    "Applications connect in plaintext to a listener; dbtrust upgrades the upstream leg to TLS\n"
    "and verifies it (chain + host name) against the CA bundle before relaying bytes.\n"
    "PostgreSQL clients: use sslmode=disable or prefer. Exit status: 0 after a clean stop,\n"
    "1 on a configuration or startup error, 2 on a usage error.\n"
    "\n"
    "TLS toward the upstream, per PostgreSQL [listener.NAME] in the configuration file:\n"
    "  sslnegotiation = postgres|direct SSLRequest first (default, every server), or the TLS\n"
    "                                   ClientHello first with ALPN postgresql (PostgreSQL 17+\n"
    "                                   only: one round trip less; no fallback)\n"
    "\n"
    "TLS toward clients, per [listener.NAME] in the configuration file:\n"
    "  client_tls = off|allow|require   serve TLS to clients (default off)\n"
    "  client_cert = FILE               certificate chain dbtrust presents to clients\n"
    "  client_key = FILE                its private key\n"
    "  client_ca = FILE                 optional: clients must present a certificate from it\n"
    "  client_names = NAME, CN=NAME     optional: accepted client certificate names\n"
    "  client_allow = CIDR, ...         optional: client source addresses allowed\n"
    "\n"
    "Stopping: SIGTERM, SIGINT or POST /quitquitquit (admin endpoint, loopback callers) make\n"
    "/readyz answer 503 at once; listeners keep accepting for shutdown_delay (in [dbtrust],\n"
    "default 0s; a second signal ends it), then close, and live connections get drain_timeout.\n"
    "\n"
    "Memory and limits: max_connections counts from accept; max_startup_per_client = N\n"
    "(per listener) bounds pre-login connections per source address; memory_limit = SIZE\n"
    "in [dbtrust] (default 90% of the cgroup limit) pauses accepting above it.\n";

struct cli {
    const char *config;
    const char *listen, *upstream, *protocol, *bundle, *server_name;
};

static int parse_cli(int argc, char **argv, struct cli *cli)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"listen", required_argument, NULL, 'l'},
        {"upstream", required_argument, NULL, 'u'},
        {"protocol", required_argument, NULL, 'p'},
        {"bundle", required_argument, NULL, 'b'},
        {"server-name", required_argument, NULL, 's'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            cli->config = optarg;
            break;
        case 'l':
            cli->listen = optarg;
            break;
        case 'u':
            cli->upstream = optarg;
            break;
        case 'p':
            cli->protocol = optarg;
            break;
        case 'b':
            cli->bundle = optarg;
            break;
        case 's':
            cli->server_name = optarg;
            break;
        case 'V':
            printf("dbtrust %s (%s, libuv %s)\n", DBTRUST_VERSION, OpenSSL_version(OPENSSL_VERSION),
                   uv_version_string());
            exit(0);
        case 'h':
            fputs(usage_text, stdout);
            exit(0);
        default:
            fputs(usage_text, stderr);
            return -1;
        }
    }
    if (optind < argc && strcmp(argv[optind], "run") == 0)
        optind++;
    if (optind < argc) {
        fprintf(stderr, "dbtrust: unexpected argument '%s'\n%s", argv[optind], usage_text);
        return -1;
    }
    return 0;
}

static int load_config(const struct cli *cli, struct cfg *cfg)
{
    char err[1024];
    cfg_init(cfg);
    if (cli->config && cfg_load_file(cfg, cli->config, err, sizeof(err)) != 0)
        goto fail;
    if ((cli->listen || cli->upstream || cli->protocol || cli->bundle || cli->server_name) &&
        cfg_add_cli_listener(cfg, cli->listen, cli->upstream, cli->protocol, cli->bundle,
                             cli->server_name, err, sizeof(err)) != 0)
        goto fail;
    if (cfg_finish(cfg, err, sizeof(err)) != 0)
        goto fail;
    return 0;
fail:
    fprintf(stderr, "dbtrust: %s\n", err);
    return -1;
}

/* One generation per distinct bundle path: listeners that share a bundle share its trust. */
static int load_trust(struct px_server *srv)
{
    const struct cfg *cfg = srv->cfg;
    for (size_t i = 0; i < srv->listener_count; i++) {
        struct px_listener *l = &srv->listeners[i];
        const char *path = cfg_listener_bundle(cfg, l->cfg);
        const char *crl = cfg_listener_crl(cfg, l->cfg);
        for (size_t j = 0; j < i; j++) {
            if (cfg_listener_same_trust(cfg, l->cfg, srv->listeners[j].cfg)) {
                l->gen = srv->listeners[j].gen;
                l->gen_since = srv->listeners[j].gen_since;
                tlsw_gen_ref(l->gen);
                break;
            }
        }
        if (l->gen)
            continue;
        char err[512];
        if (px_trust_load(cfg, path, crl, &l->gen, err, sizeof(err)) != 0) {
            px_log(CFG_LOG_ERROR, "listener %s: refusing to start: %s", l->cfg->name, err);
            return -1;
        }
        l->gen_since = px_unix_now();
        char certs[16], crls[16];
        snprintf(certs, sizeof(certs), "%zu", tlsw_gen_cert_count(l->gen));
        snprintf(crls, sizeof(crls), "%zu", tlsw_gen_crl_count(l->gen));
        bool any_crl = crl[0] != '\0' || tlsw_gen_crl_count(l->gen) > 0;
        px_log_event(CFG_LOG_INFO, "bundle_loaded", "listener", l->cfg->name, "path", path,
                     "sha256", tlsw_gen_sha256(l->gen), "certificates", certs,
                     any_crl ? "crls" : NULL, crls, "crl_path", crl, NULL);
        /* One line per certificate: a system bundle holds ~150, so only at debug level (the
         * admin endpoint's /bundle and `dbtrust bundle inspect` list them on demand). */
        for (size_t k = 0; k < tlsw_gen_cert_count(l->gen); k++) {
            const struct tlsw_cert_info *ci = tlsw_gen_cert(l->gen, k);
            char date[32];
            struct tm tm;
            gmtime_r(&ci->not_after, &tm);
            strftime(date, sizeof(date), "%Y-%m-%d", &tm);
            px_log_event(CFG_LOG_DEBUG, "bundle_cert", "subject", ci->subject, "not_after", date,
                         "sha256", ci->sha256, NULL);
        }
    }
    return 0;
}

static EVP_PKEY *read_rsa_key(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        px_log(CFG_LOG_ERROR, "cannot open mysql_rsa_key %s: %s", path, strerror(errno));
        return NULL;
    }
    char *pem = calloc(1, 65536);
    size_t n = pem ? fread(pem, 1, 65535, f) : 0;
    fclose(f);
    EVP_PKEY *key = pem ? my_rsa_from_pem(pem, n) : NULL;
    if (pem) {
        dbt_wipe(pem, 65536); /* private key material */
        free(pem);
    }
    if (!key)
        px_log(CFG_LOG_ERROR, "mysql_rsa_key %s is not an RSA private key of >= 2048 bits", path);
    return key;
}

/* The key of the caching_sha2/sha256 bridge (PROTOCOLS.md B3): a configured file, or one key
 * generated at start and shared by the MySQL listeners without a file. Clients that pin the
 * server's public key must be given this key's public half (logged at start). */
static int load_mysql_keys(struct px_server *srv, EVP_PKEY **generated)
{
    for (size_t i = 0; i < srv->listener_count; i++) {
        struct px_listener *l = &srv->listeners[i];
        if (l->cfg->protocol != CFG_PROTO_MYSQL)
            continue;
        if (l->cfg->mysql_rsa_key[0]) {
            l->rsa_key = read_rsa_key(l->cfg->mysql_rsa_key);
        } else {
            if (!*generated)
                *generated = my_rsa_generate(2048);
            l->rsa_key = *generated;
        }
        if (!l->rsa_key || my_rsa_public_pem(l->rsa_key, l->rsa_pem, sizeof(l->rsa_pem)) == 0) {
            px_log(CFG_LOG_ERROR, "listener %s: no usable MySQL bridge key", l->cfg->name);
            return -1;
        }
    }
    return 0;
}

/* After binding: a root-started daemon keeps no privileges it does not need. */
/* Two descriptors per proxied connection: the soft limit (often 1024, also in containers) would
 * cap a listener near 500 connections while the hard limit allows far more. */
static void raise_open_files_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rlim_t before = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
        px_log(CFG_LOG_INFO, "open files limit raised from %llu to %llu",
               (unsigned long long)before, (unsigned long long)rl.rlim_max);
}

static int drop_privileges(const char *user)
{
    if (!user[0] || geteuid() != 0)
        return 0;
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        px_log(CFG_LOG_ERROR, "user '%s' does not exist", user);
        return -1;
    }
    if (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
        px_log(CFG_LOG_ERROR, "cannot switch to user '%s': %s", user, strerror(errno));
        return -1;
    }
    return 0;
}

/* The process's way out (README "Shutdown"): RUNNING, then DELAYING for shutdown_delay (not
 * ready, still accepting), then STOPPED once stop_services ran (drained, or draining). */
enum stop_phase { RUNNING, DELAYING, STOPPED };

struct lifecycle {
    uv_signal_t term, intr, hup, usr2;
    uv_timer_t delay; /* shutdown_delay */
    struct px_server *srv;
    enum stop_phase phase;
    unsigned stop_signals; /* SIGTERM/SIGINT received: the second one cuts the delay short */
};

/* Stops everything the main loop started, in the order that keeps metrics scrapable while
 * connections drain; also the way out when starting failed half-way (each step is a no-op for
 * what never started). Idempotent. */
static void stop_services(struct lifecycle *lc)
{
    if (lc->phase == STOPPED)
        return;
    lc->phase = STOPPED;
    uv_close((uv_handle_t *)&lc->term, NULL);
    uv_close((uv_handle_t *)&lc->intr, NULL);
    uv_close((uv_handle_t *)&lc->hup, NULL);
    uv_close((uv_handle_t *)&lc->usr2, NULL);
    uv_close((uv_handle_t *)&lc->delay, NULL);
    struct px_server *srv = lc->srv;
    atomic_store(&srv->ready, false); /* /readyz: take this pod out of rotation while draining */
    px_reload_stop(srv);
    px_client_id_stop(srv);
    px_overload_stop(srv);
    px_trim_stop(srv);
    px_workers_stop(srv); /* returns when every connection ended or drain_timeout passed */
    px_admin_stop(srv);   /* metrics stay scrapable during the drain */
    px_expiry_stop(srv);
    uv_close((uv_handle_t *)&srv->main_wakeup, NULL); /* no thread can send to it any more */
}

static void drain_now(struct lifecycle *lc, const char *why)
{
    px_log(CFG_LOG_INFO, "%s: no new connections, draining up to %u ms", why,
           lc->srv->cfg->drain_timeout_ms);
    stop_services(lc);
}

static void on_delay_over(uv_timer_t *t)
{
    drain_now(t->data, "shutdown_delay over");
}

/* A stop request: SIGTERM, SIGINT or POST /quitquitquit (by_signal false). /readyz turns 503
 * at once so the pod leaves the Service endpoints; with a shutdown_delay the listeners keep
 * accepting meanwhile (an application stopping in the same pod still reaches its database),
 * then the drain. A second signal during the delay means "now" (a second Ctrl-C, a repeated
 * kill). Another POST, or the first signal after a POST, does not: kubelet sends SIGTERM right
 * after a preStop hook that posted, and that must not cut the delay short. */
static void request_stop(struct lifecycle *lc, const char *what, bool by_signal)
{
    struct px_server *srv = lc->srv;
    if (by_signal)
        lc->stop_signals++;
    if (lc->phase == STOPPED)
        return;
    if (lc->phase == DELAYING) {
        if (by_signal && lc->stop_signals >= 2) {
            char why[96];
            snprintf(why, sizeof why, "%s again during shutdown_delay", what);
            uv_timer_stop(&lc->delay);
            drain_now(lc, why);
        }
        return;
    }
    atomic_store(&srv->ready, false);
    uint32_t delay = srv->cfg->shutdown_delay_ms;
    if (delay == 0) {
        drain_now(lc, what);
        return;
    }
    lc->phase = DELAYING;
    px_log(CFG_LOG_INFO,
           "%s: not ready; still accepting for %u ms (shutdown_delay), then draining up to %u ms",
           what, delay, srv->cfg->drain_timeout_ms);
    uv_timer_start(&lc->delay, on_delay_over, delay, 0);
}

static void on_stop_signal(uv_signal_t *s, int signum)
{
    request_stop(s->data, signum == SIGTERM ? "received SIGTERM" : "received SIGINT", true);
}

/* Everything that runs beside the listeners: workers, reload triggers, the admin endpoint.
 * Returns 0, or -1 after logging why (stop_services undoes the part that started). */
static int start_services(struct px_server *srv, uv_loop_t *loop)
{
    /* Before the workers: they read the accept budget from their first connection on. */
    int rc = px_overload_start(srv, loop);
    if (rc != 0) {
        px_log(CFG_LOG_ERROR, "cannot start the overload budget: %s", uv_strerror(rc));
        return -1;
    }
    rc = px_workers_start(srv);
    if (rc != 0) {
        px_log(CFG_LOG_ERROR, "cannot start workers: %s", uv_strerror(rc));
        return -1;
    }
    rc = px_reload_start(srv, loop);
    if (rc != 0) {
        px_log(CFG_LOG_ERROR, "cannot start bundle reload: %s", uv_strerror(rc));
        return -1;
    }
    rc = px_client_id_start(srv, loop);
    if (rc != 0) {
        px_log(CFG_LOG_ERROR, "cannot start client certificate reload: %s", uv_strerror(rc));
        return -1;
    }
    rc = px_trim_start(srv, loop);
    if (rc != 0) {
        px_log(CFG_LOG_ERROR, "cannot start the heap trim timer: %s", uv_strerror(rc));
        return -1;
    }
    if (px_expiry_start(srv, loop) != 0)
        return -1;
    char err[512];
    if (srv->cfg->admin_enabled && px_admin_start(srv, err, sizeof(err)) != 0) {
        px_log(CFG_LOG_ERROR, "%s", err);
        return -1;
    }
    return 0;
}

/* Requests from other threads: POST /reload and /quitquitquit (admin), a new upstream chain
 * (workers). */
static void on_main_wakeup(uv_async_t *a)
{
    struct lifecycle *lc = a->data;
    struct px_server *srv = lc->srv;
    /* Before an ordinary reload that came with it: that one then finds the content in force
     * instead of starting a guard run the force would cancel. */
    if (atomic_exchange(&srv->force_reload_requested, false))
        px_reload_force_all(srv, "admin_force");
    if (atomic_exchange(&srv->reload_requested, false)) {
        px_reload_all(srv, "admin");
        px_client_id_reload_all(srv, "admin");
    }
    if (atomic_exchange(&srv->chain_seen, false))
        px_expiry_check(srv);
    /* Last: a stop without delay stops the reload triggers the requests above use. */
    if (atomic_exchange(&srv->quit_requested, false))
        request_stop(lc, "POST /quitquitquit", false);
}

static void on_hup(uv_signal_t *s, int signum)
{
    struct lifecycle *lc = s->data;
    (void)signum;
    px_reload_all(lc->srv, "sighup");
    px_client_id_reload_all(lc->srv, "sighup");
}

/* The rotation guard's override (README "Removing a compromised CA"); the bundle only: the
 * serving identity has no guard to override. */
static void on_usr2(uv_signal_t *s, int signum)
{
    struct lifecycle *lc = s->data;
    (void)signum;
    px_reload_force_all(lc->srv, "sigusr2");
}

static void log_started(const struct px_server *srv)
{
    for (size_t i = 0; i < srv->listener_count; i++) {
        const struct cfg_listener *l = srv->listeners[i].cfg;
        char listen[300], up[300];
        cfg_addr_format(&l->listen, listen, sizeof(listen));
        cfg_addr_format(&l->upstream[0], up, sizeof(up));
        px_log_event(CFG_LOG_INFO, "listening", "listener", l->name, "protocol",
                     cfg_protocol_name(l->protocol), "listen", listen, "upstream", up, "verify",
                     srv->cfg->verify == CFG_VERIFY_CA ? "ca" : "full", NULL);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "check") == 0)
        return px_cmd_check(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "bundle") == 0)
        return px_cmd_bundle(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "wait") == 0)
        return px_cmd_wait(argc - 1, argv + 1);
    struct cli cli = {0};
    if (parse_cli(argc, argv, &cli) != 0)
        return 2;
    struct cfg cfg;
    if (load_config(&cli, &cfg) != 0)
        return 1;
    px_log_setup(cfg.log_level, cfg.log_format);
    signal(SIGPIPE, SIG_IGN);
    raise_open_files_limit();

    int status = 1;
    EVP_PKEY *generated_key = NULL;
    struct px_server srv = {.cfg = &cfg, .listener_count = cfg.listener_count};
    uv_mutex_init(&srv.trust_lock);
    uv_mutex_init(&srv.seen_lock);
    srv.worker_count = cfg.workers > PX_MAX_WORKERS ? PX_MAX_WORKERS : cfg.workers;
    srv.listeners = calloc(cfg.listener_count, sizeof(*srv.listeners));
    srv.cancels = px_cancel_map_new(); /* NULL: cancels take the upstreams in order */
    if (!srv.listeners)
        goto out;
    for (size_t i = 0; i < cfg.listener_count; i++) {
        srv.listeners[i].cfg = &cfg.listeners[i];
        srv.listeners[i].drv =
            cfg.listeners[i].protocol == CFG_PROTO_MYSQL ? &px_my_driver : &px_pg_driver;
        srv.listeners[i].startups = px_startups_new(cfg.listeners[i].max_startup_per_client);
        for (unsigned k = 0; k < PX_MAX_WORKERS; k++)
            srv.listeners[i].fds[k] = -1;
    }
    if (load_trust(&srv) != 0 || px_client_id_load_all(&srv) != 0 ||
        load_mysql_keys(&srv, &generated_key) != 0)
        goto out;
    for (size_t i = 0; i < srv.listener_count; i++) {
        char err[512];
        if (px_listen_open(&srv.listeners[i], srv.worker_count, err, sizeof(err)) != 0) {
            px_log(CFG_LOG_ERROR, "%s", err);
            goto out;
        }
    }
    if (drop_privileges(cfg.user) != 0)
        goto out;
    /* From here on the proxy runs: no thread may block on a stalled reader of stderr. Everything
     * before (config, bundles, listen errors) was written synchronously, in order. */
    int log_rc = px_log_start();
    if (log_rc != 0)
        px_log(CFG_LOG_WARN, "cannot start the log writer (%s): logging stays synchronous",
               uv_strerror(log_rc));

    uv_loop_t *loop = uv_default_loop();
    struct lifecycle lc = {.srv = &srv, .phase = RUNNING};
    uv_signal_init(loop, &lc.term);
    uv_signal_init(loop, &lc.intr);
    uv_signal_init(loop, &lc.hup);
    uv_signal_init(loop, &lc.usr2);
    uv_timer_init(loop, &lc.delay);
    lc.term.data = lc.intr.data = lc.hup.data = lc.usr2.data = lc.delay.data = &lc;
    uv_signal_start(&lc.term, on_stop_signal, SIGTERM);
    uv_signal_start(&lc.intr, on_stop_signal, SIGINT);
    uv_signal_start(&lc.hup, on_hup, SIGHUP);
    uv_signal_start(&lc.usr2, on_usr2, SIGUSR2);
    uv_async_init(loop, &srv.main_wakeup, on_main_wakeup);
    srv.main_wakeup.data = &lc;

    if (start_services(&srv, loop) != 0) {
        /* Worker threads may run already: stop and join them before anything is freed. */
        stop_services(&lc);
        uv_run(loop, UV_RUN_DEFAULT); /* the close callbacks of what was started */
        (void)uv_loop_close(loop);
        goto out;
    }
    atomic_store(&srv.ready, true);
    log_started(&srv);
    px_log(CFG_LOG_INFO, "dbtrust %s ready: %zu listener(s), %u worker(s)", DBTRUST_VERSION,
           srv.listener_count, srv.worker_count);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    px_log(CFG_LOG_INFO, "dbtrust stopped");
    status = 0;
out:
    for (size_t i = 0; srv.listeners && i < srv.listener_count; i++) {
        px_listen_close(&srv.listeners[i]);
        if (srv.listeners[i].gen)
            tlsw_gen_unref(srv.listeners[i].gen);
        tlsw_server_unref(srv.listeners[i].client_id);
        px_startups_free(srv.listeners[i].startups);
        if (srv.listeners[i].rsa_key && srv.listeners[i].rsa_key != generated_key)
            my_rsa_free(srv.listeners[i].rsa_key);
    }
    if (generated_key)
        my_rsa_free(generated_key);
    px_workers_free(&srv);
    px_cancel_map_free(srv.cancels);
    free(srv.listeners);
    uv_mutex_destroy(&srv.trust_lock);
    uv_mutex_destroy(&srv.seen_lock);
    cfg_free(&cfg);
    /* The last lines (conn_end of the drain, "dbtrust stopped") reach a live reader; a stalled
     * one costs at most this wait. */
    px_log_stop(LOG_FLUSH_MS);
    return status;
}
