/* Certificate expiry warnings at 30, 14 and 7 days and at expiry, for the bundles in force and
 * the upstream chains last seen (px_expiry.c). Main loop only. */
#ifndef PX_EXPIRY_H
#define PX_EXPIRY_H

#include "px.h"

/* Checks now, then hourly. Returns 0 or a negative uv error. */
DBT_MUST_USE int px_expiry_start(struct px_server *srv, uv_loop_t *loop);
/* Checks now (after a reload, or when a worker saw a new upstream chain). */
void px_expiry_check(struct px_server *srv);
void px_expiry_stop(struct px_server *srv);

#endif
