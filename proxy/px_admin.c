/* The admin HTTP endpoint: libmicrohttpd with its own polling thread, so a slow scraper never
 * touches a worker loop. It only reads (counters, the generations in force under trust_lock) and
 * asks the main loop for a reload or a stop; it never changes proxy state itself. */
#include "px_admin.h"

#include <jansson.h>
#include <microhttpd.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "px_listen.h"
#include "px_log.h"

#define CT_TEXT    "text/plain; charset=utf-8"
#define CT_METRICS "text/plain; version=0.0.4; charset=utf-8"
#define CT_JSON    "application/json"

struct px_admin {
    struct MHD_Daemon *daemon;
    struct px_server *srv;
};

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, const char *type,
                               char *body, size_t len, bool must_free)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, body, must_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (must_free)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result respond_text(struct MHD_Connection *conn, unsigned status, const char *s)
{
    return respond(conn, status, CT_TEXT, (char *)s, strlen(s), false);
}

static enum MHD_Result respond_json(struct MHD_Connection *conn, unsigned status, json_t *doc)
{
    char *body = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_ENSURE_ASCII) : NULL;
    json_decref(doc);
    if (!body)
        return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    size_t len = strlen(body);
    /* jansson allocates with malloc by default, so MHD may free() it. */
    return respond(conn, status, CT_JSON, body, len, true);
}

static enum MHD_Result metrics(struct px_admin *a, struct MHD_Connection *conn)
{
    char *body = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&body, &len);
    if (!out)
        return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    px_metrics_render(a->srv, out);
    if (fclose(out) != 0) {
        free(body);
        return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    }
    return respond(conn, MHD_HTTP_OK, CT_METRICS, body, len, true);
}

static json_t *iso_time(time_t t)
{
    char buf[32];
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

static json_t *cert_json(const struct tlsw_cert_info *ci, time_t now)
{
    /* Names come from certificates: json_string refuses invalid UTF-8, so fall back to a
     * lossless-enough marker rather than dropping the certificate from the list. */
    json_t *subject = json_string(ci->subject), *issuer = json_string(ci->issuer);
    return json_pack("{s:o, s:o, s:s, s:s, s:o, s:o, s:I, s:b}", "subject",
                     subject ? subject : json_string("(not UTF-8)"), "issuer",
                     issuer ? issuer : json_string("(not UTF-8)"), "sha256", ci->sha256, "spki_pin",
                     ci->spki_pin, "not_before", iso_time(ci->not_before), "not_after",
                     iso_time(ci->not_after), "days_left",
                     (json_int_t)((ci->not_after - now) / 86400), "is_ca", ci->is_ca);
}

static json_t *crl_json(const struct tlsw_crl_info *ci, time_t now)
{
    json_t *issuer = json_string(ci->issuer), *by = json_string(ci->verified_by);
    json_t *o = json_pack("{s:o, s:o, s:s, s:o, s:I, s:b, s:s}", "issuer",
                          issuer ? issuer : json_string("(not UTF-8)"), "verified_by",
                          by ? by : json_string("(not UTF-8)"), "source", ci->source, "this_update",
                          iso_time(ci->this_update), "entries", (json_int_t)ci->entries, "delta",
                          ci->delta, "number", ci->number);
    if (o == NULL)
        return json_null();
    if (ci->next_update == (time_t)-1) {
        json_object_set_new(o, "next_update", json_null());
        json_object_set_new(o, "stale", json_false());
    } else {
        json_object_set_new(o, "next_update", iso_time(ci->next_update));
        json_object_set_new(o, "days_left",
                            json_integer((json_int_t)((ci->next_update - now) / 86400)));
        json_object_set_new(o, "stale", json_boolean(ci->next_update <= now));
    }
    return o;
}

static enum MHD_Result bundle(struct px_admin *a, struct MHD_Connection *conn)
{
    struct px_server *srv = a->srv;
    time_t now = time(NULL);
    json_t *bundles = json_array();
    uv_mutex_lock(&srv->trust_lock);
    for (size_t i = 0; i < srv->listener_count; i++) {
        const char *path = cfg_listener_bundle(srv->cfg, srv->listeners[i].cfg);
        json_t *entry = NULL;
        size_t k;
        json_t *v;
        json_array_foreach(bundles, k, v)
        {
            if (strcmp(json_string_value(json_object_get(v, "path")), path) == 0)
                entry = v;
        }
        if (!entry) {
            const struct tlsw_gen *g = srv->listeners[i].gen;
            json_t *certs = json_array();
            for (size_t c = 0; c < tlsw_gen_cert_count(g); c++)
                json_array_append_new(certs, cert_json(tlsw_gen_cert(g, c), now));
            json_t *crls = json_array();
            for (size_t c = 0; c < tlsw_gen_crl_count(g); c++)
                json_array_append_new(crls, crl_json(tlsw_gen_crl(g, c), now));
            entry = json_pack("{s:s, s:s, s:[], s:o, s:o}", "path", path, "sha256",
                              tlsw_gen_sha256(g), "listeners", "certificates", certs, "crls", crls);
            const char *crl_path = cfg_listener_crl(srv->cfg, srv->listeners[i].cfg);
            if (crl_path[0] != '\0') {
                json_object_set_new(entry, "crl_path", json_string(crl_path));
                json_object_set_new(entry, "crl_sha256", json_string(tlsw_gen_crl_sha256(g)));
            }
            json_array_append_new(bundles, entry);
        }
        json_array_append_new(json_object_get(entry, "listeners"),
                              json_string(srv->listeners[i].cfg->name));
    }
    uv_mutex_unlock(&srv->trust_lock);
    return respond_json(conn, MHD_HTTP_OK, json_pack("{s:o}", "bundles", bundles));
}

/* ?force=1|true overrides the rotation guard (README "Removing a compromised CA"); 0|false or
 * no force is an ordinary reload. Anything else is refused: an override must not happen by a
 * typo, nor a typo silently mean no override. Returns 0, or -1 for a value it refuses. */
static int force_argument(struct MHD_Connection *conn, bool *force)
{
    const char *v = NULL;
    *force = false;
    if (MHD_lookup_connection_value_n(conn, MHD_GET_ARGUMENT_KIND, "force", strlen("force"), &v,
                                      NULL) != MHD_YES)
        return 0;
    if (v && (strcmp(v, "1") == 0 || strcmp(v, "true") == 0)) {
        *force = true;
        return 0;
    }
    return v && (strcmp(v, "0") == 0 || strcmp(v, "false") == 0) ? 0 : -1;
}

static enum MHD_Result forced_reload(struct px_admin *a, struct MHD_Connection *conn)
{
    atomic_store(&a->srv->force_reload_requested, true);
    uv_async_send(&a->srv->main_wakeup);
    bool guard = a->srv->cfg->guard;
    return respond_json(
        conn, MHD_HTTP_ACCEPTED,
        json_pack("{s:s, s:s, s:s}", "status", "forced reload requested", "guard",
                  guard ? "overridden" : "off", "result",
                  guard ? "see the bundle_reload log line (result=applied guard=overridden) and "
                          "dbtrust_bundle_reloads_total{result=\"overridden\"}"
                        : "guard = off: an ordinary reload; see the bundle_reload log line and "
                          "dbtrust_bundle_reloads_total"));
}

static enum MHD_Result reload(struct px_admin *a, struct MHD_Connection *conn)
{
    bool force;
    if (force_argument(conn, &force) != 0)
        return respond_text(
            conn, MHD_HTTP_BAD_REQUEST,
            "force must be 1 or true (override the rotation guard), or 0 or false\n");
    if (force)
        return forced_reload(a, conn);
    atomic_store(&a->srv->reload_requested, true);
    uv_async_send(&a->srv->main_wakeup);
    return respond_json(conn, MHD_HTTP_ACCEPTED,
                        json_pack("{s:s, s:s}", "status", "reload requested", "result",
                                  "see the bundle_reload log line and "
                                  "dbtrust_bundle_reloads_total"));
}

/* Only a caller in this host's network namespace (a container of the same pod, a local
 * script) may stop the proxy: the admin endpoint often listens on the pod IP for probes and
 * scrapers, and none of them should be able to take a pod's database path away. */
static bool from_loopback(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    if (!sa)
        return false;
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family != AF_INET6)
        return false;
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a6) || (IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127);
}

/* The SIGTERM path (shutdown_delay, then the drain), for Kubernetes Jobs whose main container
 * must stop its sidecar; the main loop does the work (on_main_wakeup). */
static enum MHD_Result quit(struct px_admin *a, struct MHD_Connection *conn)
{
    if (!from_loopback(conn))
        return respond_text(conn, MHD_HTTP_FORBIDDEN,
                            "POST /quitquitquit is accepted from loopback addresses only\n");
    const struct cfg *cfg = a->srv->cfg;
    atomic_store(&a->srv->quit_requested, true);
    uv_async_send(&a->srv->main_wakeup);
    return respond_json(conn, MHD_HTTP_ACCEPTED,
                        json_pack("{s:s, s:I, s:I}", "status", "shutdown requested",
                                  "shutdown_delay_ms", (json_int_t)cfg->shutdown_delay_ms,
                                  "drain_timeout_ms", (json_int_t)cfg->drain_timeout_ms));
}

static enum MHD_Result method_not_allowed(struct MHD_Connection *conn, const char *allow)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen("method not allowed\n"), (void *)"method not allowed\n", MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, CT_TEXT);
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_METHOD_NOT_ALLOWED, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls)
{
    static int request_seen;
    struct px_admin *a = cls;
    (void)version;
    (void)upload_data;
    /* First call: headers only. Answer on the second, once any body has been consumed. */
    if (*con_cls == NULL) {
        *con_cls = &request_seen;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        *upload_data_size = 0; /* no endpoint takes a body: ignore it */
        return MHD_YES;
    }
    bool get =
        strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    if (strcmp(url, "/reload") == 0)
        return post ? reload(a, conn) : method_not_allowed(conn, "POST");
    if (strcmp(url, "/quitquitquit") == 0)
        return post ? quit(a, conn) : method_not_allowed(conn, "POST");
    bool known = strcmp(url, "/metrics") == 0 || strcmp(url, "/healthz") == 0 ||
                 strcmp(url, "/readyz") == 0 || strcmp(url, "/bundle") == 0;
    if (!known)
        return respond_text(conn, MHD_HTTP_NOT_FOUND,
                            "not found: /metrics /healthz /readyz /bundle, "
                            "POST /reload /quitquitquit\n");
    if (!get)
        return method_not_allowed(conn, "GET, HEAD");
    if (strcmp(url, "/metrics") == 0)
        return metrics(a, conn);
    if (strcmp(url, "/healthz") == 0)
        return respond_text(conn, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0)
        return atomic_load(&a->srv->ready) ? respond_text(conn, MHD_HTTP_OK, "ready\n")
                                           : respond_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                                                          "not ready (starting or draining)\n");
    return bundle(a, conn);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* libmicrohttpd's own messages, as one warning line each. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    px_log(CFG_LOG_WARN, "admin endpoint: %s", msg);
}

int px_admin_start(struct px_server *srv, char *err, size_t errlen)
{
    const struct cfg_addr *addr = &srv->cfg->admin;
    struct addrinfo *res = NULL;
    if (px_resolve_bind(addr, "admin address", &res, err, errlen) != 0)
        return -1;
    struct px_admin *a = calloc(1, sizeof(*a));
    if (!a) {
        freeaddrinfo(res);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    a->srv = srv;
    /* epoll, not the default select(): a process proxying 500 connections holds descriptors
     * beyond FD_SETSIZE (1024), and select() refuses those, so scrapes failed under load. */
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (res->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    a->daemon = MHD_start_daemon(
        /* the logger first: libmicrohttpd reports problems with later options through it */
        flags, addr->port, NULL, NULL, handle, a, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, res->ai_addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)16, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)10, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024), MHD_OPTION_END);
    freeaddrinfo(res);
    if (!a->daemon) {
        free(a);
        snprintf(err, errlen, "cannot serve the admin endpoint on %s:%u (address in use?)",
                 addr->host, addr->port);
        return -1;
    }
    srv->admin = a;
    return 0;
}

void px_admin_stop(struct px_server *srv)
{
    if (!srv->admin)
        return;
    MHD_stop_daemon(srv->admin->daemon); /* joins its thread: no request runs after this */
    free(srv->admin);
    srv->admin = NULL;
}
