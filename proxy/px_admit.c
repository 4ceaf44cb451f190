#include "px_admit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "px_log.h"
#include "px_startups.h"

/* The address bytes of a peer (4 or 16), or NULL for another family. */
static const uint8_t *addr_bytes(const struct sockaddr_storage *ss, size_t *len)
{
    if (ss->ss_family == AF_INET) {
        *len = 4;
        return (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr;
    }
    if (ss->ss_family == AF_INET6) {
        *len = 16;
        return (const uint8_t *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
    }
    *len = 0;
    return NULL;
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

/* One line per address per minute: a scan from many ports, or a client retrying in a loop,
 * must not flood the log (the metric still counts every refusal). A small table per worker,
 * indexed by a hash of the address; a collision only means an early repeat of the line. */
static bool refusal_worth_logging(struct px_worker *w, const uint8_t *addr, size_t len)
{
    uint8_t key[16] = {0};
    memcpy(key, addr, len);
    struct px_refusal_note *n = &w->refusals_logged[px_addr_hash(key) % PX_REFUSAL_NOTES];
    uint64_t now = uv_now(&w->loop);
    if (n->at_ms != 0 && memcmp(n->addr, key, sizeof(key)) == 0 && now - n->at_ms < 60000)
        return false;
    memcpy(n->addr, key, sizeof(key));
    n->at_ms = now;
    return true;
}

/* client_allow: a source outside the list is dropped before any byte is read or written. */
static bool client_allowed(struct px_worker_listener *wl, const struct sockaddr_storage *peer,
                           const char *client_addr)
{
    const struct cfg_listener *lc = wl->l->cfg;
    if (lc->client_allow_count == 0)
        return true;
    size_t len;
    const uint8_t *addr = addr_bytes(peer, &len);
    if (addr != NULL && cfg_client_allowed(lc, peer->ss_family, addr))
        return true;
    if (addr == NULL || refusal_worth_logging(wl->w, addr, len))
        px_log_event(CFG_LOG_WARN, "client_refused", "listener", lc->name, "client", client_addr,
                     "reason", dbt_reason_name(DBT_CLIENT_NOT_ALLOWED), "detail",
                     "source address not in client_allow (logged once a minute per address)", NULL);
    return false;
}

/* Past max_connections a client still gets its protocol's refusal, which costs a few hundred
 * bytes per connection until its first packet is in; past this ceiling even that stops: the
 * connection is closed at accept, unread (a flood must not buy memory with refusals). */
static unsigned hard_ceiling(unsigned max)
{
    unsigned twice = max > UINT32_MAX / 2 ? UINT32_MAX : 2 * max;
    return twice > max + 64 ? twice : max + 64;
}

static void warn_ceiling(struct px_worker_listener *wl, unsigned ceiling)
{
    uint64_t now = uv_now(&wl->w->loop);
    if (wl->ceiling_warned_ms != 0 && now - wl->ceiling_warned_ms < 10000)
        return;
    wl->ceiling_warned_ms = now;
    px_log(CFG_LOG_WARN,
           "listener %s: %u connections (twice max_connections): closing new ones at accept, "
           "unread (logged at most every 10 s per worker)",
           wl->l->cfg->name, ceiling);
}

/* max_startup_per_client: counted from accept until login. Loopback is exempt: on a sidecar
 * every client is the same local address. */
static void count_startup(struct px_worker_listener *wl, const struct sockaddr_storage *peer,
                          struct px_admission *a)
{
    struct px_startups *t = wl->l->startups;
    size_t len;
    const uint8_t *addr = addr_bytes(peer, &len);
    if (t == NULL || addr == NULL || is_loopback(peer))
        return;
    if (!px_startups_enter(t, addr, len)) {
        a->refusal = DBT_CLIENT_STARTUP_LIMIT;
        return;
    }
    memcpy(a->startup_addr, addr, len);
    a->startup_addr_len = (uint8_t)len;
}

void px_admit(struct px_worker_listener *wl, const struct sockaddr_storage *peer, unsigned active,
              const char *client_addr, struct px_admission *out)
{
    const struct cfg_listener *lc = wl->l->cfg;
    memset(out, 0, sizeof(*out));
    if (peer != NULL && !client_allowed(wl, peer, client_addr)) {
        out->refusal = DBT_CLIENT_NOT_ALLOWED;
        out->close_now = true;
        return;
    }
    unsigned ceiling = hard_ceiling(lc->max_connections);
    if (active > ceiling) {
        warn_ceiling(wl, ceiling);
        out->refusal = DBT_LIMIT_REACHED;
        out->close_now = true;
        return;
    }
    if (active > lc->max_connections) {
        out->refusal = DBT_LIMIT_REACHED;
        return;
    }
    if (peer != NULL)
        count_startup(wl, peer, out);
}

void px_admit_leave(struct px_worker_listener *wl, struct px_admission *a)
{
    if (a->startup_addr_len == 0)
        return;
    px_startups_leave(wl->l->startups, a->startup_addr, a->startup_addr_len);
    a->startup_addr_len = 0;
}

void px_admit_detail(const struct px_worker_listener *wl, enum dbt_reason r,
                     const char *client_addr, char *buf, size_t cap)
{
    const struct cfg_listener *lc = wl->l->cfg;
    switch (r) {
    case DBT_LIMIT_REACHED:
        snprintf(buf, cap, "max_connections (%u) reached", lc->max_connections);
        break;
    case DBT_CLIENT_STARTUP_LIMIT:
        snprintf(buf, cap,
                 "max_startup_per_client (%u) reached: too many connections from %s are not "
                 "logged in yet",
                 lc->max_startup_per_client, client_addr);
        break;
    case DBT_OVERLOADED:
        snprintf(buf, cap, "dbtrust is over its memory_limit; try again shortly");
        break;
    default:
        if (cap > 0)
            buf[0] = '\0';
        break;
    }
}
