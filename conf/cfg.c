/* Configuration lifecycle: defaults, the one-listener command-line form, final checks. The INI
 * file loader is cfg_file.c, the value parsers cfg_values.c, the key table cfg_keys.c. */
#include "cfg_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

#define MAX_WORKERS 256 /* same bound as the workers key */

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

void cfg_init(struct cfg *c)
{
    memset(c, 0, sizeof *c);
    dbt_strlcpy(c->source, "command line", sizeof c->source);
    c->workers = 0;
    c->log_format = CFG_LOG_TEXT;
    c->log_level = CFG_LOG_INFO;
    c->drain_timeout_ms = 30000;
    c->verify = CFG_VERIFY_FULL;
    c->min_tls = 12;
    c->reload_interval_ms = 10000;
    c->guard = true;
    c->memory_limit = CFG_MEMORY_AUTO;
}

void cfg_listener_init(struct cfg_listener *l)
{
    memset(l, 0, sizeof *l);
    l->protocol = CFG_PROTO_POSTGRES; /* placeholder: protocol is a required key */
    l->connect_timeout_ms = 5000;
    l->handshake_timeout_ms = 10000;
    l->upstream_dead_timeout_ms = 60000;
    l->startup_timeout_ms = 10000;
    l->max_connections = 1000;
    l->upstream_connect_limit = 64;
}

void cfg_free(struct cfg *c)
{
    free(c->listeners);
    c->listeners = NULL;
    c->listener_count = 0;
}

const char *cfg_protocol_name(enum cfg_protocol p)
{
    return p == CFG_PROTO_MYSQL ? "mysql" : "postgres";
}

struct cfg_listener *cfg_listener_add(struct cfg *c)
{
    /* Listeners are few and added once at start: growing by one keeps it simple. */
    struct cfg_listener *grown = realloc(c->listeners, (c->listener_count + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    c->listeners = grown;
    cfg_listener_init(&grown[c->listener_count]);
    return &grown[c->listener_count++];
}

static bool is_wildcard(const char *host)
{
    return strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0;
}

/* Two listeners on one address would both bind (workers use SO_REUSEPORT) and then share the
 * accepted connections between them, e.g. a postgres and a mysql listener. */
static bool addr_clash(const struct cfg_addr *a, const struct cfg_addr *b)
{
    if (a->is_unix || b->is_unix)
        return a->is_unix && b->is_unix && strcmp(a->host, b->host) == 0;
    return a->port == b->port &&
           (strcasecmp(a->host, b->host) == 0 || is_wildcard(a->host) || is_wildcard(b->host));
}

/* A Unix socket is local: its file permissions say who may connect, and TLS on it would protect
 * nothing. Refused rather than ignored, like every client_* key that cannot take effect. */
static int check_client_unix(const struct cfg_listener *l, const char **key, char *why, size_t n)
{
    if (!l->listen.is_unix)
        return 0;
    if (l->client_tls != CFG_CLIENT_TLS_OFF)
        *key = "client_tls";
    else if (l->client_allow_count > 0)
        *key = "client_allow";
    else
        return 0;
    return fail(why, n,
                "not available on a unix: listener (a Unix socket is local; its file permissions "
                "guard it)");
}

/* Without client_tls these keys would be silently ignored, while the operator believes the
 * client leg is authenticated: an error instead. */
static int check_client_tls_off(const struct cfg_listener *l, const char **key, char *why, size_t n)
{
    const struct {
        const char *key, *value;
    } needs_tls[] = {{"client_cert", l->client_cert},
                     {"client_key", l->client_key},
                     {"client_ca", l->client_ca},
                     {"client_names", l->client_names}};

    for (size_t i = 0; i < DBT_ARRAY_LEN(needs_tls); i++) {
        if (needs_tls[i].value[0]) {
            *key = needs_tls[i].key;
            return fail(why, n, "has no effect without client_tls = allow or require");
        }
    }
    return 0;
}

static int check_client_tls_on(const struct cfg_listener *l, const char **key, char *why, size_t n)
{
    *key = "client_tls";
    if (!l->client_cert[0] && !l->client_key[0])
        return fail(why, n,
                    "needs client_cert and client_key (the certificate chain dbtrust presents to "
                    "clients, and its private key)");
    if (!l->client_cert[0])
        return fail(why, n,
                    "needs client_cert (the certificate chain dbtrust presents to clients)");
    if (!l->client_key[0])
        return fail(why, n, "needs client_key (the private key of client_cert)");
    /* Names are read from a certificate only once it verified against client_ca; without it
     * anyone could present a self-made certificate with an accepted name. */
    if (l->client_names[0] && !l->client_ca[0]) {
        *key = "client_names";
        return fail(why, n,
                    "needs client_ca (names are only checked on verified client certificates)");
    }
    return 0;
}

static int check_client_leg(const struct cfg_listener *l, const char **key, char *why, size_t n)
{
    if (check_client_unix(l, key, why, n) != 0)
        return -1;
    if (l->client_tls == CFG_CLIENT_TLS_OFF)
        return check_client_tls_off(l, key, why, n);
    return check_client_tls_on(l, key, why, n);
}

int cfg_listener_complete(struct cfg *c, size_t idx, const char **key, char *why, size_t n)
{
    struct cfg_listener *l = &c->listeners[idx];
    uint16_t port = l->protocol == CFG_PROTO_MYSQL ? 3306 : 5432;

    for (size_t i = 0; i < l->upstream_count; i++) {
        if (l->upstream[i].port == 0)
            l->upstream[i].port = port;
    }
    if (l->mysql_rsa_key[0] && l->protocol != CFG_PROTO_MYSQL) {
        *key = "mysql_rsa_key";
        return fail(why, n, "only valid with protocol = mysql");
    }
    /* Even "postgres" is refused: MySQL has no such choice, and a key that cannot take effect
     * would suggest it does. */
    if (l->sslnegotiation_line && l->protocol != CFG_PROTO_POSTGRES) {
        *key = "sslnegotiation";
        return fail(why, n, "only valid with protocol = postgres");
    }
    if (check_client_leg(l, key, why, n) != 0)
        return -1;
    for (size_t i = 0; i < idx; i++) {
        if (addr_clash(&l->listen, &c->listeners[i].listen)) {
            char addr[300];
            cfg_addr_format(&l->listen, addr, sizeof addr);
            *key = "listen";
            return fail(why, n, "%s is already used by [listener.%s]", addr, c->listeners[i].name);
        }
    }
    return 0;
}

int cfg_add_cli_listener(struct cfg *c, const char *listen, const char *upstream,
                         const char *protocol, const char *bundle, const char *server_name,
                         char *err, size_t errlen)
{
    const struct {
        const char *flag, *key, *value;
        bool required;
    } flags[] = {{"--protocol", "protocol", protocol, true},
                 {"--listen", "listen", listen, true},
                 {"--upstream", "upstream", upstream, true},
                 {"--server-name", "server_name", server_name, false}};
    struct cfg_listener l, *added;
    char why[512];
    const char *key = NULL;

    if (bundle && !*bundle)
        return fail(err, errlen, "--bundle: empty path");
    if (bundle && cfg_value_string(bundle, sizeof c->bundle, why, sizeof why) != 0)
        return fail(err, errlen, "--bundle: %s", why);
    if (listen || upstream || protocol || server_name) {
        cfg_listener_init(&l);
        dbt_strlcpy(l.name, "default", sizeof l.name);
        for (size_t i = 0; i < DBT_ARRAY_LEN(flags); i++) {
            if (!flags[i].value && flags[i].required)
                return fail(err, errlen,
                            "%s: missing (a listener needs --listen, --upstream and --protocol)",
                            flags[i].flag);
            if (!flags[i].value)
                continue;
            if (!*flags[i].value)
                return fail(err, errlen, "%s: empty value", flags[i].flag);
            const struct cfg_key *k = cfg_key_find(CFG_SEC_LISTENER, flags[i].key);
            if (cfg_key_set(k, c, &l, flags[i].value, why, sizeof why) != 0)
                return fail(err, errlen, "%s: %s", flags[i].flag, why);
        }
        for (size_t i = 0; i < c->listener_count; i++) {
            if (strcmp(c->listeners[i].name, l.name) == 0)
                return fail(err, errlen,
                            "--listen: a listener named 'default' is already configured");
        }
        added = cfg_listener_add(c);
        if (!added)
            return fail(err, errlen, "out of memory");
        *added = l;
        if (cfg_listener_complete(c, c->listener_count - 1, &key, why, sizeof why) != 0) {
            c->listener_count--;
            return fail(err, errlen, "--%s: %s", key, why);
        }
    }
    /* Last, so that a rejected command line changes nothing. With a file, this overrides its
     * [trust] bundle. */
    if (bundle)
        dbt_strlcpy(c->bundle, bundle, sizeof c->bundle);
    return 0;
}

int cfg_finish(struct cfg *c, char *err, size_t errlen)
{
    if (c->listener_count == 0)
        return fail(err, errlen,
                    "no listener configured (use --config FILE or "
                    "--listen/--upstream/--protocol/--bundle)");
    for (size_t i = 0; i < c->listener_count; i++) {
        /* Fail closed: without a bundle there is nothing to verify the upstream against. */
        if (!c->listeners[i].bundle[0] && !c->bundle[0])
            return fail(err, errlen,
                        "refusing to start without a trust bundle: set [trust] "
                        "bundle = FILE or --bundle");
    }
    if (c->workers == 0) {
        unsigned cpus = cfg_usable_cpus();
        c->workers = cpus < 1 ? 1 : cpus > MAX_WORKERS ? MAX_WORKERS : cpus;
    }
    if (c->memory_limit == CFG_MEMORY_AUTO) {
        /* A container's limit is what the OOM killer enforces: keep a tenth of it as headroom
         * for what is already in flight when dbtrust starts shedding. */
        uint64_t cg = cfg_cgroup_memory_limit();
        c->memory_limit = cg > 0 ? (int64_t)(cg / 10 * 9) : 0;
        c->memory_limit_auto = cg > 0;
    }
    return 0;
}
