/* The overload budget (memory_limit): the main loop samples dbtrust's resident memory every
 * 100 ms (one read of /proc/self/statm; nothing on the data path). Above the high-water mark
 * (memory_limit) the server is overloaded: workers stop accepting (their listeners are paused,
 * not closed: connections wait in the kernel's backlog) and connections still in their startup
 * are refused (reason overloaded) instead of growing a session; established sessions go on.
 * Below the low-water mark (85 % of it) workers resume. Envoy's overload manager and HAProxy's
 * -m are the models: shed new work, keep what is established. */
#ifndef PX_OVERLOAD_H
#define PX_OVERLOAD_H

#include "px.h"

/* Starts the sampler when memory_limit is set (else does nothing). 0 or a negative uv error. */
DBT_MUST_USE int px_overload_start(struct px_server *srv, uv_loop_t *loop);
void px_overload_stop(struct px_server *srv);

#endif
