/* A one-off live check of one upstream: dial, protocol upgrade as the listener's connections
 * do it (PostgreSQL SSLRequest, or none with sslnegotiation = direct; MySQL greeting +
 * SSLRequest), TLS handshake verified against a given trust generation, close.
 * Sends no credentials and no startup packet. Blocking with deadlines, so it runs on a thread
 * of its own, never on a worker loop: the rotation guard uses it, `dbtrust check` will too. */
#ifndef PX_PROBE_H
#define PX_PROBE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "cfg.h"
#include "tlsw.h"

#define PX_PROBE_MAX_CHAIN 8

struct px_probe_result {
    enum dbt_reason reason; /* DBT_NONE: the chain and the name verified */
    char detail[512];       /* why not, in words ("" on success) */
    char address[64];       /* the address that answered, "" if none did */
    char tls_version[16];
    size_t chain_len; /* the verified chain, leaf first (success only) */
    struct tlsw_cert_info chain[PX_PROBE_MAX_CHAIN];
};

/* The name an upstream's certificate must carry: server_name when configured, else its host. */
const char *px_verify_name(const struct cfg_listener *l, size_t upstream_idx);

/* The detail of DBT_UPSTREAM_NO_DIRECT_TLS (sslnegotiation = direct): what happened, then
 * what to change, the same words for connections, the rotation guard and `dbtrust check`. */
void px_no_direct_tls_detail(const struct cfg_listener *l, const char *what, char *buf, size_t cap);

/* Probes upstream number upstream_idx of listener l with trust generation g, within the
 * listener's connect_timeout and handshake_timeout. cancel (may be NULL) is polled at least every
 * 100 ms; a cancelled probe ends with DBT_SHUTDOWN. */
void px_probe(const struct cfg_listener *l, size_t upstream_idx, struct tlsw_gen *g,
              const atomic_bool *cancel, struct px_probe_result *out);

/* True for the failures a different trust bundle can cause or cure: the handshake reached the
 * certificate check and the chain, a validity date or (with [trust] pin) the pins of the
 * verified path did not pass. */
bool px_probe_is_verify_failure(enum dbt_reason r);

#endif
