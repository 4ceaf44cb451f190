/* The serving identity of client_tls listeners (certificate chain, key, optional client CA):
 * loaded at start, then watched and hot-reloaded like the CA bundle (directory watch, which
 * sees a Kubernetes Secret's "..data" swap, a content-hash poll, SIGHUP, POST /reload). A new
 * identity is validated before use and published to the workers by message; TLS sessions
 * already up keep the one they started with. Runs on the main loop. */
#ifndef PX_CLIENT_ID_H
#define PX_CLIENT_ID_H

#include "px.h"

/* Loads listener l's identity. On failure err reads "FILE:LINE: key 'client_cert': why" (the
 * key naming the file at fault) and -1 is returned. */
DBT_MUST_USE int px_client_id_load(const struct cfg *cfg, const struct cfg_listener *l,
                                   struct tlsw_server **out, char *err, size_t errlen);
/* Loads every client_tls listener's identity into srv->listeners[].client_id (before the
 * workers start). Returns 0, or -1 after logging why. */
DBT_MUST_USE int px_client_id_load_all(struct px_server *srv);
/* Starts the reload triggers (after the workers started). 0 or a negative uv error. */
DBT_MUST_USE int px_client_id_start(struct px_server *srv, uv_loop_t *loop);
/* Reloads every identity now (SIGHUP, POST /reload). */
void px_client_id_reload_all(struct px_server *srv, const char *trigger);
void px_client_id_stop(struct px_server *srv);

#endif
