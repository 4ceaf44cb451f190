/* Admin HTTP endpoint (admin = host:port): GET /metrics /healthz /readyz /bundle, POST /reload
 * and /quitquitquit.
 * Served by libmicrohttpd on a thread of its own (px_admin.c). */
#ifndef PX_ADMIN_H
#define PX_ADMIN_H

#include <stddef.h>

#include "px.h"

/* Binds and starts serving. Returns 0, or -1 with the reason in err. */
DBT_MUST_USE int px_admin_start(struct px_server *srv, char *err, size_t errlen);
/* Stops serving and waits for a request in progress to finish. */
void px_admin_stop(struct px_server *srv);

#endif
