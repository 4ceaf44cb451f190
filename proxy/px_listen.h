#ifndef PX_LISTEN_H
#define PX_LISTEN_H

#include "px.h"

/* Binds one socket per worker for listener l. Returns 0, or -1 with a message in err. */
DBT_MUST_USE int px_listen_open(struct px_listener *l, unsigned workers, char *err, size_t errlen);
void px_listen_close(struct px_listener *l);

#endif
