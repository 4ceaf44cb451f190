/* Trust bundle loading and hot reload (DESIGN.md "Trust generations and hot reload"). Runs on
 * the main loop, off the data path: a reload builds a new generation, validates it and publishes
 * it to every worker by message; live connections keep the generation they started with. */
#ifndef PX_RELOAD_H
#define PX_RELOAD_H

#include "px.h"

/* Loads and validates a bundle and its CRLs (crl: a file or directory, "" for none besides
 * the bundle's CRL blocks) into a new generation (refcount 1). Refuses what tlsw refuses
 * (unreadable, empty, garbage, no certificate, all expired, a CRL that does not parse or whose
 * signature no CA of the bundle verifies) and a bundle without any CA certificate. Returns 0,
 * or -1 with the reason in err. */
DBT_MUST_USE int px_trust_load(const struct cfg *cfg, const char *path, const char *crl,
                               struct tlsw_gen **out, char *err, size_t errlen);

/* The wall clock as Unix time in seconds (ms precision): when a generation went into force, for
 * dbtrust_bundle_loaded_timestamp_seconds. */
double px_unix_now(void);

/* Starts the triggers for every distinct bundle: a watch on its directory (sees a Kubernetes
 * ConfigMap "..data" symlink swap, rename-over and in-place writes) and a content-hash poll every
 * reload_interval. Call after the workers started. Returns 0 or a negative uv error. */
DBT_MUST_USE int px_reload_start(struct px_server *srv, uv_loop_t *loop);
/* Reloads every bundle now (SIGHUP). */
void px_reload_all(struct px_server *srv, const char *trigger);
/* Reloads every bundle now without the rotation guard (SIGUSR2, POST /reload?force=1): the way
 * out when the guard refuses to drop a compromised CA that an attacker keeps "in use" by serving
 * its certificate to the probes. The bundle must still be valid; a guard run in progress is
 * cancelled. Applied bundles are logged at error level (result=applied guard=overridden) and
 * counted in reloads_overridden. With guard = off this is an ordinary reload. */
void px_reload_force_all(struct px_server *srv, const char *trigger);
/* Stops the triggers (before the workers stop) and frees them. */
void px_reload_stop(struct px_server *srv);

#endif
