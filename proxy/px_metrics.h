/* Metrics (DESIGN.md "Observability"). Every counter a connection touches lives in its worker's
 * view of the listener and has exactly one writer, that worker's thread: updates are a relaxed
 * load and store (no lock, no locked instruction); the admin thread sums the workers' copies
 * when scraped. Rendering as Prometheus text lives here too. */
#ifndef PX_METRICS_H
#define PX_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "dbt_reason.h"

/* Upper bounds of the handshake latency histogram, in seconds (then +Inf). */
#define PX_HS_BUCKET_BOUNDS 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
#define PX_HS_BUCKETS       12
/* Distinct application names counted per worker and listener; later ones count as "other", so
 * a client cannot grow the metrics without bound by inventing names. A name takes a slot only
 * when a session with it logged in (px_stats_app), so clients that cannot log in cannot fill
 * the table either. */
#define PX_APPS_MAX 32
#define PX_APP_NAME 64

typedef atomic_uint_fast64_t px_counter;

/* Single writer: a relaxed load and store, which compiles to plain moves. */
static inline void px_counter_add(px_counter *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t px_counter_get(px_counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

struct px_app_count {
    char name[PX_APP_NAME]; /* written once, before the slot is published */
    px_counter connections;
};

/* One worker's counters for one listener. */
struct px_listener_stats {
    px_counter conns_by_reason[DBT_REASON_COUNT]; /* ended connections, by their reason */
    px_counter bytes_from_client, bytes_to_client;
    px_counter hs_buckets[PX_HS_BUCKETS + 1]; /* per bucket (not cumulative); last = +Inf */
    px_counter hs_count, hs_sum_ns;
    px_counter hs_resumed;   /* of hs_count: resumed sessions (no key exchange, no chain) */
    atomic_size_t app_count; /* published slots of apps (release / acquire) */
    struct px_app_count apps[PX_APPS_MAX];
    px_counter apps_other;
};

/* Records one verified upstream handshake that took ns nanoseconds. */
void px_stats_handshake(struct px_listener_stats *s, uint64_t ns);
/* Counts one ended connection of application app ("" when the client gave none; valid UTF-8,
 * as captured). Under its own name if the name has a slot already, or if logged_in (the upstream
 * accepted the login) and a slot is free; else under "other". */
void px_stats_app(struct px_listener_stats *s, const char *app, bool logged_in);

struct px_server;
/* Writes every metric family in the Prometheus text format (version 0.0.4). */
void px_metrics_render(struct px_server *srv, FILE *out);

#endif
