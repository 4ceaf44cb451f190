/* Configuration: INI file (inih) or one-listener command-line flags -> one immutable struct.
 * Every error names file:line and the key. Unknown sections and keys are errors. */
#ifndef CFG_H
#define CFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h> /* AF_INET, AF_INET6 of struct cfg_cidr */

#include "dbt_util.h"

enum cfg_protocol { CFG_PROTO_POSTGRES, CFG_PROTO_MYSQL };
enum cfg_verify { CFG_VERIFY_FULL, CFG_VERIFY_CA };
enum cfg_log_format { CFG_LOG_TEXT, CFG_LOG_JSON };
enum cfg_log_level { CFG_LOG_DEBUG, CFG_LOG_INFO, CFG_LOG_WARN, CFG_LOG_ERROR };

/* TLS toward clients (central trust point): off = plaintext only; allow = TLS if the client asks
 * for it, plaintext otherwise; require = plaintext clients are refused. */
enum cfg_client_tls { CFG_CLIENT_TLS_OFF, CFG_CLIENT_TLS_ALLOW, CFG_CLIENT_TLS_REQUIRE };

/* How a PostgreSQL listener starts TLS toward its upstream (libpq's sslnegotiation): postgres =
 * SSLRequest, 'S', then the handshake (every server); direct = the ClientHello first, ALPN
 * "postgresql" (PostgreSQL 17+ only, one round trip less). Never a fallback from one to the
 * other. */
enum cfg_sslnegotiation { CFG_SSLNEG_POSTGRES, CFG_SSLNEG_DIRECT };
/* A CRL past its nextUpdate: warn = still enforced, connections go on, a warning is logged;
 * refuse = chains it covers fail with tls_crl_stale. */
enum cfg_crl_stale { CFG_CRL_STALE_WARN, CFG_CRL_STALE_REFUSE };

#define CFG_MAX_UPSTREAMS    8
#define CFG_MAX_CLIENT_ALLOW 64

/* One client_allow range. Canonical: no bits set past prefix, and never an IPv4-mapped IPv6
 * range (the config refuses those; write the IPv4 form). */
struct cfg_cidr {
    int family;       /* AF_INET or AF_INET6 */
    uint8_t addr[16]; /* network order; IPv4 in the first 4 bytes, the rest 0 */
    unsigned prefix;  /* 0-32 or 0-128 */
};

/* host:port, [v6]:port, or unix:/path (listen only). */
struct cfg_addr {
    char host[256]; /* name or IP literal without brackets; for unix: the path */
    uint16_t port;
    bool is_unix;
};

struct cfg_listener {
    char name[64];
    enum cfg_protocol protocol;
    struct cfg_addr listen;
    struct cfg_addr upstream[CFG_MAX_UPSTREAMS]; /* tried in order */
    size_t upstream_count;
    char server_name[256]; /* "" = verify the upstream host itself */
    char bundle[4096];     /* "" = [trust] bundle */
    char crl[4096];        /* "" = [trust] crl */
    uint32_t connect_timeout_ms;
    uint32_t handshake_timeout_ms;
    uint32_t upstream_dead_timeout_ms;
    uint32_t startup_timeout_ms;
    uint32_t max_connections;
    uint32_t upstream_connect_limit; /* upstream legs being set up at once (px_dial.c) */
    uint32_t max_startup_per_client; /* pre-login connections per source address, 0 = off */
    char mysql_rsa_key[4096];
    enum cfg_sslnegotiation sslnegotiation; /* postgres listeners only */
    int sslnegotiation_line;                /* where it was set; 0 = not from a file */
    /* The client leg (client_tls). The paths are only checked for length here: the proxy loads
     * them with OpenSSL and reports a failure at the key's line. */
    enum cfg_client_tls client_tls;
    char client_cert[4096], client_key[4096], client_ca[4096]; /* "" = unset */
    char client_names[2048];                                   /* raw comma list, "" = any */
    struct cfg_cidr client_allow[CFG_MAX_CLIENT_ALLOW];
    size_t client_allow_count; /* 0 = every address */
    /* Where client_tls, client_cert, client_key and client_ca were set; 0 = not from a file. */
    int client_tls_line, client_cert_line, client_key_line, client_ca_line;
    int line; /* where the section started, for messages */
};

struct cfg {
    char source[4096]; /* config file path, or "command line" */
    /* [dbtrust] */
    struct cfg_addr admin;
    bool admin_enabled;
    unsigned workers; /* resolved: never 0 after cfg_finish() */
    enum cfg_log_format log_format;
    enum cfg_log_level log_level;
    uint32_t drain_timeout_ms;
    /* After SIGTERM (or POST /quitquitquit): /readyz says 503 at once, but listeners keep
     * accepting this long before the drain, so an application stopping in the same pod can
     * still open connections. 0 = drain at once. */
    uint32_t shutdown_delay_ms;
    char user[64];
    /* Overload budget in bytes: > 0 a limit, 0 off; CFG_MEMORY_AUTO (the default) becomes 90 %
     * of the cgroup memory limit in cfg_finish, or 0 without one. */
    int64_t memory_limit;
    bool memory_limit_auto; /* the value came from the cgroup, for the start-up log */
    /* [trust] */
    char bundle[4096];
    enum cfg_verify verify;
    int min_tls; /* 12 or 13 */
    uint32_t reload_interval_ms;
    bool guard;
    char pins[2048]; /* raw comma-separated sha256/BASE64 list */
    char crl[4096];  /* "" = only the bundle's own CRL blocks; a file or a directory */
    bool crl_required;
    enum cfg_crl_stale crl_stale;
    /* [listener.NAME] */
    struct cfg_listener *listeners;
    size_t listener_count;
};

#define CFG_MEMORY_AUTO (-1)

/* Defaults of DESIGN.md. */
void cfg_init(struct cfg *c);
void cfg_listener_init(struct cfg_listener *l);
void cfg_free(struct cfg *c); /* frees listeners; the struct itself is the caller's */

/* Parses an INI file into c (already cfg_init'ed) and validates it. On error returns -1 with
 * "FILE:LINE: key 'x': why" in err. */
DBT_MUST_USE int cfg_load_file(struct cfg *c, const char *path, char *err, size_t errlen);

/* The one-listener form: --listen --upstream --protocol --bundle [--server-name]. Adds one
 * listener named "default" (or overrides the bundle when a file was loaded too). */
DBT_MUST_USE int cfg_add_cli_listener(struct cfg *c, const char *listen, const char *upstream,
                                      const char *protocol, const char *bundle,
                                      const char *server_name, char *err, size_t errlen);

/* Final checks after all sources: at least one listener, a trust bundle for every listener,
 * workers resolved to the CPU count when 0. */
DBT_MUST_USE int cfg_finish(struct cfg *c, char *err, size_t errlen);

/* Parsers shared with the CLI. Return 0 on success. */
DBT_MUST_USE int cfg_parse_addr(const char *s, bool allow_unix, uint16_t default_port,
                                struct cfg_addr *out);
DBT_MUST_USE int cfg_parse_duration_ms(const char *s, uint32_t *out_ms); /* "10s", "500ms", "2m" */

const char *cfg_protocol_name(enum cfg_protocol p);

/* The bundle a listener trusts: its own override, else [trust] bundle. */
static inline const char *cfg_listener_bundle(const struct cfg *c, const struct cfg_listener *l)
{
    return l->bundle[0] ? l->bundle : c->bundle;
}

/* The CRL path a listener uses besides its bundle's CRL blocks: its own override, else
 * [trust] crl; "" when none. */
static inline const char *cfg_listener_crl(const struct cfg *c, const struct cfg_listener *l)
{
    return l->crl[0] ? l->crl : c->crl;
}

/* Whether two listeners trust the same material (bundle and CRL path): one generation, one
 * watch, one guard run serve them both. */
static inline bool cfg_listener_same_trust(const struct cfg *c, const struct cfg_listener *a,
                                           const struct cfg_listener *b)
{
    return strcmp(cfg_listener_bundle(c, a), cfg_listener_bundle(c, b)) == 0 &&
           strcmp(cfg_listener_crl(c, a), cfg_listener_crl(c, b)) == 0;
}

/* True when the listener has no client_allow, or addr (family AF_INET/AF_INET6, 4 or 16 bytes,
 * network order) is inside one of its ranges. An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 * is matched as IPv4. Any other family is refused when there is a list. */
bool cfg_client_allowed(const struct cfg_listener *l, int family, const uint8_t *addr);

/* The memory limit of this process's cgroup (v2 memory.max, or v1 memory.limit_in_bytes, the
 * lowest along the path up to the root), or 0 when there is none. */
uint64_t cfg_cgroup_memory_limit(void);
/* The path of this process's cgroup memory usage file (v1 memory.usage_in_bytes, v2
 * memory.current): what the cgroup's limit is compared with. 0, or -1 without a cgroup. */
DBT_MUST_USE int cfg_cgroup_memory_usage_path(char *out, size_t cap);

/* "host:port", "[v6]:port" or "unix:/path", for messages and log lines. */
void cfg_addr_format(const struct cfg_addr *a, char *buf, size_t n);

#endif
