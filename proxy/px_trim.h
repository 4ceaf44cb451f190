/* Gives free heap back to the system after bursts of closed connections, from the main loop:
 * malloc_trim walks every arena, and on a worker's loop it would stall that worker's traffic
 * for as long (px_trim.c). */
#ifndef PX_TRIM_H
#define PX_TRIM_H

#include "px.h"

/* Checks every few seconds whether enough connections ended to trim. 0 or a negative uv error. */
DBT_MUST_USE int px_trim_start(struct px_server *srv, uv_loop_t *loop);
void px_trim_stop(struct px_server *srv);

#endif
