#ifndef PX_LISTEN_H
#define PX_LISTEN_H

#include "px.h"

/* Binds one socket per worker for listener l. Returns 0, or -1 with a message in err. */
DBT_MUST_USE int px_listen_open(struct px_listener *l, unsigned workers, char *err, size_t errlen);
void px_listen_close(struct px_listener *l);

struct addrinfo;
struct sockaddr;
/* "1.2.3.4:5432" or "[::1]:5432" ("?" for another family), for logs and messages. */
void px_format_sockaddr(const struct sockaddr *sa, char *buf, size_t cap);
/* Resolves a host:port to bind (listeners, the admin endpoint). Returns 0, or -1 with
 * "cannot resolve <what> HOST:PORT: why" in err. Free *res with freeaddrinfo. */
DBT_MUST_USE int px_resolve_bind(const struct cfg_addr *a, const char *what, struct addrinfo **res,
                                 char *err, size_t errlen);

#endif
