/* Internal to conf/ (and its unit test): value parsers and the key table shared by the file loader
 * and the command-line form.
 * Every parser returns 0, or -1 with a reason for the user in why, e.g. "invalid duration 'abc'
 * (use e.g. 5s, 500ms)". The caller prefixes where the value came from: "FILE:LINE: key 'x': "
 * or "--flag: ". */
#ifndef CFG_INTERNAL_H
#define CFG_INTERNAL_H

#include "cfg.h"

#define CFG_ADDR_UNIX          1u /* unix:/path is allowed (listen addresses) */
#define CFG_ADDR_PORT_OPTIONAL 2u /* the port may be omitted: left 0, the caller defaults it */

struct cfg_choice {
    const char *name;
    int value;
};

DBT_MUST_USE int cfg_value_duration(const char *s, uint32_t *out_ms, char *why, size_t n);
DBT_MUST_USE int cfg_value_bool(const char *s, bool *out, char *why, size_t n);
/* "64MiB", "1GiB", "512KiB", "64M", "1G" or bytes; "off" or "0" = 0 (disabled). */
DBT_MUST_USE int cfg_value_size(const char *s, int64_t *out, char *why, size_t n);
DBT_MUST_USE int cfg_value_uint(const char *s, uint32_t min, uint32_t max, uint32_t *out, char *why,
                                size_t n);
/* choices ends with a { NULL, 0 } entry; what names the set in the message ("protocol"). */
DBT_MUST_USE int cfg_value_choice(const char *s, const struct cfg_choice *choices, const char *what,
                                  int *out, char *why, size_t n);
DBT_MUST_USE int cfg_value_addr(const char *s, unsigned flags, struct cfg_addr *out, char *why,
                                size_t n);
/* Comma-separated host:port list; a missing port is left 0 (defaulted by protocol later). */
DBT_MUST_USE int cfg_value_upstreams(const char *s, struct cfg_addr *out, size_t *count, char *why,
                                     size_t n);
/* A DNS name or IP literal (no brackets, no port): server_name. */
DBT_MUST_USE int cfg_value_host(const char *s, char *why, size_t n);
/* "sha256/BASE64, ..." where each BASE64 encodes a 32-byte SPKI digest. */
DBT_MUST_USE int cfg_value_pins(const char *s, char *why, size_t n);
/* A listener name: [A-Za-z0-9_.-]{1,63}. */
DBT_MUST_USE int cfg_value_name(const char *s, char *why, size_t n);
/* A user name for privilege dropping. */
DBT_MUST_USE int cfg_value_user(const char *s, char *why, size_t n);
/* A string that must fit into cap bytes (paths); checks non-empty and length only. */
DBT_MUST_USE int cfg_value_string(const char *s, size_t cap, char *why, size_t n);
/* client_allow: "CIDR, ADDRESS, ..." (a bare address is /32 or /128) into at most
 * CFG_MAX_CLIENT_ALLOW canonical ranges (cfg_client.c). */
DBT_MUST_USE int cfg_value_client_allow(const char *s, struct cfg_cidr *out, size_t *count,
                                        char *why, size_t n);
/* client_names: "CN=NAME, DNS.NAME, scheme:URI, ..." (cfg_client.c). */
DBT_MUST_USE int cfg_value_client_names(const char *s, char *why, size_t n);

/* Calls each(item, arg) for every comma-separated item of s, trimmed (an item may be empty).
 * Returns the first non-zero result of each, -2 when s is too long to split, else 0. */
DBT_MUST_USE int cfg_each_item(const char *s, int (*each)(const char *item, void *arg), void *arg);

enum cfg_section { CFG_SEC_NONE, CFG_SEC_DBTRUST, CFG_SEC_TRUST, CFG_SEC_LISTENER };

/* One key of one section: how its value is parsed and where it is stored. */
struct cfg_key;

#define CFG_KEY_MAX 48 /* bound of cfg_key_index(), for per-section "seen at line" arrays */

/* NULL when the section has no such key. */
const struct cfg_key *cfg_key_find(enum cfg_section sec, const char *name);
size_t cfg_key_index(const struct cfg_key *k);
const char *cfg_key_name(const struct cfg_key *k);
/* Parses v into c (sections [dbtrust], [trust]) or l ([listener.NAME]). */
DBT_MUST_USE int cfg_key_set(const struct cfg_key *k, struct cfg *c, struct cfg_listener *l,
                             const char *v, char *why, size_t n);
/* Records where a listener key was set, for the keys whose line the listener keeps
 * (client_tls_line, ...); a no-op for the others. */
void cfg_key_set_line(const struct cfg_key *k, struct cfg_listener *l, int line);

/* Appends a listener with defaults; NULL when out of memory. May move c->listeners. */
struct cfg_listener *cfg_listener_add(struct cfg *c);
/* The checks that need the whole listener (listeners[idx]): upstream ports defaulted by protocol,
 * listen address clashes with earlier listeners, protocol-specific keys, the client_* keys that
 * only make sense together. On error *key names the key at fault (always one that was set). */
DBT_MUST_USE int cfg_listener_complete(struct cfg *c, size_t idx, const char **key, char *why,
                                       size_t n);

/* CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (cfg_cpus.c). */
unsigned cfg_usable_cpus(void);

#endif
