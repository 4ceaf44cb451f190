/* The keys of each section, in one table: parsing rule and storage place. The file loader and
 * the command-line form both go through cfg_key_set(), so a value means the same in both. */
#include "cfg_internal.h"

#include <stdio.h>

enum kind {
    K_ADMIN,    /* host:port, enables the admin endpoint */
    K_LISTEN,   /* host:port or unix:/path */
    K_UPSTREAM, /* list of host[:port] */
    K_DURATION, /* min = 1 where 0 would make no sense */
    K_BOOL,
    K_UINT,
    K_CHOICE,
    K_PATH,
    K_HOST,
    K_USER,
    K_PINS,
    K_CLIENT_ALLOW, /* list of CIDRs into client_allow/client_allow_count */
    K_CLIENT_NAMES, /* CN=x, DNS name, URI list */
    K_SIZE,         /* bytes with a KiB/MiB/GiB suffix, or off */
};

struct cfg_key {
    const char *name;
    enum cfg_section section;
    enum kind kind;
    size_t off;  /* into struct cfg, or struct cfg_listener for CFG_SEC_LISTENER */
    size_t size; /* of the field: string capacity */
    uint32_t min, max;
    const struct cfg_choice *choices;
};

/* K_CHOICE and K_UINT store through an int-sized field; enums must have that size. */
_Static_assert(sizeof(enum cfg_protocol) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_client_tls) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_sslnegotiation) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_crl_stale) == sizeof(int), "enum size");
_Static_assert(sizeof(unsigned) == sizeof(uint32_t), "workers is stored as uint32_t");

static const struct cfg_choice log_formats[] = {
    {"text", CFG_LOG_TEXT}, {"json", CFG_LOG_JSON}, {NULL, 0}};
static const struct cfg_choice log_levels[] = {{"debug", CFG_LOG_DEBUG}, {"info", CFG_LOG_INFO},
                                               {"warn", CFG_LOG_WARN},   {"warning", CFG_LOG_WARN},
                                               {"error", CFG_LOG_ERROR}, {NULL, 0}};
static const struct cfg_choice verifies[] = {
    {"full", CFG_VERIFY_FULL}, {"ca", CFG_VERIFY_CA}, {NULL, 0}};
static const struct cfg_choice crl_stale_modes[] = {
    {"warn", CFG_CRL_STALE_WARN}, {"refuse", CFG_CRL_STALE_REFUSE}, {NULL, 0}};
static const struct cfg_choice tls_versions[] = {{"1.2", 12}, {"1.3", 13}, {NULL, 0}};
static const struct cfg_choice protocols[] = {{"postgres", CFG_PROTO_POSTGRES},
                                              {"postgresql", CFG_PROTO_POSTGRES},
                                              {"mysql", CFG_PROTO_MYSQL},
                                              {NULL, 0}};
static const struct cfg_choice client_tls_modes[] = {{"off", CFG_CLIENT_TLS_OFF},
                                                     {"allow", CFG_CLIENT_TLS_ALLOW},
                                                     {"require", CFG_CLIENT_TLS_REQUIRE},
                                                     {NULL, 0}};
static const struct cfg_choice sslnegotiations[] = {
    {"postgres", CFG_SSLNEG_POSTGRES}, {"direct", CFG_SSLNEG_DIRECT}, {NULL, 0}};

#define C(f) offsetof(struct cfg, f), sizeof(((struct cfg *)0)->f)
#define L(f) offsetof(struct cfg_listener, f), sizeof(((struct cfg_listener *)0)->f)

static const struct cfg_key keys[] = {
    {"admin", CFG_SEC_DBTRUST, K_ADMIN, C(admin), 0, 0, NULL},
    {"workers", CFG_SEC_DBTRUST, K_UINT, C(workers), 0, 256, NULL},
    {"log_format", CFG_SEC_DBTRUST, K_CHOICE, C(log_format), 0, 0, log_formats},
    {"log_level", CFG_SEC_DBTRUST, K_CHOICE, C(log_level), 0, 0, log_levels},
    {"drain_timeout", CFG_SEC_DBTRUST, K_DURATION, C(drain_timeout_ms), 0, 0, NULL},
    {"shutdown_delay", CFG_SEC_DBTRUST, K_DURATION, C(shutdown_delay_ms), 0, 0, NULL},
    {"user", CFG_SEC_DBTRUST, K_USER, C(user), 0, 0, NULL},
    {"memory_limit", CFG_SEC_DBTRUST, K_SIZE, C(memory_limit), 0, 0, NULL},

    {"bundle", CFG_SEC_TRUST, K_PATH, C(bundle), 0, 0, NULL},
    {"verify", CFG_SEC_TRUST, K_CHOICE, C(verify), 0, 0, verifies},
    {"min_tls", CFG_SEC_TRUST, K_CHOICE, C(min_tls), 0, 0, tls_versions},
    {"reload_interval", CFG_SEC_TRUST, K_DURATION, C(reload_interval_ms), 1, 0, NULL},
    {"guard", CFG_SEC_TRUST, K_BOOL, C(guard), 0, 0, NULL},
    {"pin", CFG_SEC_TRUST, K_PINS, C(pins), 0, 0, NULL},
    {"crl", CFG_SEC_TRUST, K_PATH, C(crl), 0, 0, NULL},
    {"crl_required", CFG_SEC_TRUST, K_BOOL, C(crl_required), 0, 0, NULL},
    {"crl_stale", CFG_SEC_TRUST, K_CHOICE, C(crl_stale), 0, 0, crl_stale_modes},

    {"protocol", CFG_SEC_LISTENER, K_CHOICE, L(protocol), 0, 0, protocols},
    {"listen", CFG_SEC_LISTENER, K_LISTEN, L(listen), 0, 0, NULL},
    {"upstream", CFG_SEC_LISTENER, K_UPSTREAM, L(upstream), 0, 0, NULL},
    {"server_name", CFG_SEC_LISTENER, K_HOST, L(server_name), 0, 0, NULL},
    {"bundle", CFG_SEC_LISTENER, K_PATH, L(bundle), 0, 0, NULL},
    {"crl", CFG_SEC_LISTENER, K_PATH, L(crl), 0, 0, NULL},
    {"connect_timeout", CFG_SEC_LISTENER, K_DURATION, L(connect_timeout_ms), 1, 0, NULL},
    {"handshake_timeout", CFG_SEC_LISTENER, K_DURATION, L(handshake_timeout_ms), 1, 0, NULL},
    {"upstream_dead_timeout", CFG_SEC_LISTENER, K_DURATION, L(upstream_dead_timeout_ms), 1, 0,
     NULL},
    {"startup_timeout", CFG_SEC_LISTENER, K_DURATION, L(startup_timeout_ms), 1, 0, NULL},
    {"max_connections", CFG_SEC_LISTENER, K_UINT, L(max_connections), 1, 1000000, NULL},
    {"upstream_connect_limit", CFG_SEC_LISTENER, K_UINT, L(upstream_connect_limit), 1, 100000,
     NULL},
    {"mysql_rsa_key", CFG_SEC_LISTENER, K_PATH, L(mysql_rsa_key), 0, 0, NULL},
    {"sslnegotiation", CFG_SEC_LISTENER, K_CHOICE, L(sslnegotiation), 0, 0, sslnegotiations},
    {"max_startup_per_client", CFG_SEC_LISTENER, K_UINT, L(max_startup_per_client), 0, 100000,
     NULL},
    {"client_tls", CFG_SEC_LISTENER, K_CHOICE, L(client_tls), 0, 0, client_tls_modes},
    {"client_cert", CFG_SEC_LISTENER, K_PATH, L(client_cert), 0, 0, NULL},
    {"client_key", CFG_SEC_LISTENER, K_PATH, L(client_key), 0, 0, NULL},
    {"client_ca", CFG_SEC_LISTENER, K_PATH, L(client_ca), 0, 0, NULL},
    {"client_names", CFG_SEC_LISTENER, K_CLIENT_NAMES, L(client_names), 0, 0, NULL},
    {"client_allow", CFG_SEC_LISTENER, K_CLIENT_ALLOW, L(client_allow), 0, 0, NULL},
};

/* The listener keys whose line the listener keeps: their files are loaded later, by the proxy
 * with OpenSSL, which then reports a missing file or a key that does not match the certificate
 * as "FILE:LINE: key 'client_cert': why". */
static const struct {
    const char *name;
    size_t off; /* of the int field in struct cfg_listener */
} kept_lines[] = {
    {"client_tls", offsetof(struct cfg_listener, client_tls_line)},
    {"client_cert", offsetof(struct cfg_listener, client_cert_line)},
    {"client_key", offsetof(struct cfg_listener, client_key_line)},
    {"client_ca", offsetof(struct cfg_listener, client_ca_line)},
    /* Not loaded later, but its presence matters: a mysql listener may not carry it at all. */
    {"sslnegotiation", offsetof(struct cfg_listener, sslnegotiation_line)},
};
_Static_assert(DBT_ARRAY_LEN(keys) <= CFG_KEY_MAX, "raise CFG_KEY_MAX");

const struct cfg_key *cfg_key_find(enum cfg_section sec, const char *name)
{
    for (size_t i = 0; i < DBT_ARRAY_LEN(keys); i++) {
        if (keys[i].section == sec && strcmp(keys[i].name, name) == 0)
            return &keys[i];
    }
    return NULL;
}

size_t cfg_key_index(const struct cfg_key *k)
{
    return (size_t)(k - keys);
}

const char *cfg_key_name(const struct cfg_key *k)
{
    return k->name;
}

int cfg_key_set(const struct cfg_key *k, struct cfg *c, struct cfg_listener *l, const char *v,
                char *why, size_t n)
{
    char *field = (k->section == CFG_SEC_LISTENER ? (char *)l : (char *)c) + k->off;
    uint32_t u;
    int choice;

    switch (k->kind) {
    case K_ADMIN:
        if (cfg_value_addr(v, 0, &c->admin, why, n) != 0)
            return -1;
        c->admin_enabled = true;
        return 0;
    case K_LISTEN:
        return cfg_value_addr(v, CFG_ADDR_UNIX, &l->listen, why, n);
    case K_UPSTREAM: {
        struct cfg_addr list[CFG_MAX_UPSTREAMS];
        size_t count;
        if (cfg_value_upstreams(v, list, &count, why, n) != 0)
            return -1;
        memcpy(l->upstream, list, sizeof list);
        l->upstream_count = count;
        return 0;
    }
    case K_DURATION:
        if (cfg_value_duration(v, &u, why, n) != 0)
            return -1;
        if (u < k->min) {
            snprintf(why, n, "must be greater than 0");
            return -1;
        }
        memcpy(field, &u, sizeof u);
        return 0;
    case K_BOOL:
        return cfg_value_bool(v, (bool *)field, why, n);
    case K_SIZE: {
        int64_t size;
        if (cfg_value_size(v, &size, why, n) != 0)
            return -1;
        memcpy(field, &size, sizeof size);
        return 0;
    }
    case K_UINT:
        if (cfg_value_uint(v, k->min, k->max, &u, why, n) != 0)
            return -1;
        memcpy(field, &u, sizeof u);
        return 0;
    case K_CHOICE:
        if (cfg_value_choice(v, k->choices, k->name, &choice, why, n) != 0)
            return -1;
        memcpy(field, &choice, sizeof choice);
        return 0;
    case K_HOST:
        if (cfg_value_host(v, why, n) != 0)
            return -1;
        break;
    case K_USER:
        if (cfg_value_user(v, why, n) != 0)
            return -1;
        break;
    case K_PINS:
        if (cfg_value_pins(v, why, n) != 0)
            return -1;
        break;
    case K_CLIENT_NAMES:
        if (cfg_value_client_names(v, why, n) != 0)
            return -1;
        break;
    case K_CLIENT_ALLOW: {
        struct cfg_cidr list[CFG_MAX_CLIENT_ALLOW];
        size_t count;
        if (cfg_value_client_allow(v, list, &count, why, n) != 0)
            return -1;
        memcpy(l->client_allow, list, count * sizeof list[0]);
        l->client_allow_count = count;
        return 0;
    }
    case K_PATH:
        break;
    }
    /* The string kinds. */
    if (cfg_value_string(v, k->size, why, n) != 0)
        return -1;
    dbt_strlcpy(field, v, k->size);
    return 0;
}

void cfg_key_set_line(const struct cfg_key *k, struct cfg_listener *l, int line)
{
    if (k->section != CFG_SEC_LISTENER)
        return;
    for (size_t i = 0; i < DBT_ARRAY_LEN(kept_lines); i++) {
        if (strcmp(kept_lines[i].name, k->name) == 0)
            memcpy((char *)l + kept_lines[i].off, &line, sizeof line);
    }
}
