/* The rotation guard ([trust] guard = on): before a changed bundle is published, a live
 * handshake with it to every upstream of the listeners that trust it. A bundle that fails an
 * upstream which the bundle in force still verifies (the old root removed before the server
 * rotated; with [trust] pin, a verified path that no longer holds a pinned key) is refused. A
 * forced reload (px_reload_force_all) skips the guard. Upstreams that cannot be reached, or that
 * fail with both bundles, do not block it: the guard prevents regressions, it does not hold a fix
 * back.
 *
 * A run probes on a thread of its own (px_probe blocks) and reports back on the main loop. */
#ifndef PX_GUARD_H
#define PX_GUARD_H

#include "px.h"

struct px_guard;
typedef void (*px_guard_done_cb)(struct px_guard *gd, void *arg);

/* Starts a run for the listeners whose bundle is bundle_path and CRL path crl_path ("" for none),
 * comparing candidate with current
 * (both referenced by the run). done is called once on loop; then read the verdict and free the
 * run. Returns NULL if the run could not start (out of memory, no thread). */
struct px_guard *px_guard_start(uv_loop_t *loop, const struct px_server *srv,
                                const char *bundle_path, const char *crl_path,
                                struct tlsw_gen *candidate, struct tlsw_gen *current,
                                px_guard_done_cb done, void *arg);
/* Logs one bundle_guard line per upstream (refusals as errors, naming the upstream and the
 * missing issuer) and returns true when the candidate may be published. When it may not,
 * writes a one-line summary into why. quiet: log refusals at debug level (a recheck of a bundle
 * already refused and reported). */
bool px_guard_verdict(const struct px_guard *gd, bool quiet, char *why, size_t cap);
/* Frees a finished run, or cancels a running one (its probes stop within 100 ms, done is not
 * called) and frees it. */
void px_guard_free(struct px_guard *gd);

#endif
