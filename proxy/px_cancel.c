#include "px_cancel.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "dbt_util.h"

#define BUCKETS 4096 /* chains stay short for tens of thousands of sessions */
#define KEY_MAX 256  /* protocol 3.2 allows secret keys of up to 256 bytes */

struct px_cancel_entry {
    struct px_cancel_entry *next, **pprev; /* bucket chain */
    size_t listener;
    uint32_t pid;
    struct px_cancel_route route;
    size_t key_len;
    uint8_t key[]; /* key_len bytes */
};

struct px_cancel_map {
    uv_mutex_t lock;
    size_t count;
    struct px_cancel_entry *buckets[BUCKETS];
};

struct px_cancel_map *px_cancel_map_new(void)
{
    struct px_cancel_map *m = calloc(1, sizeof(*m));
    if (m && uv_mutex_init(&m->lock) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

static void entry_free(struct px_cancel_entry *e)
{
    dbt_wipe(e->key, e->key_len);
    free(e);
}

void px_cancel_map_free(struct px_cancel_map *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < BUCKETS; i++) {
        while (m->buckets[i]) {
            struct px_cancel_entry *e = m->buckets[i];
            m->buckets[i] = e->next;
            entry_free(e);
        }
    }
    uv_mutex_destroy(&m->lock);
    free(m);
}

/* The pid picks the bucket: the server chose it, it is not secret, and it spreads well. */
static struct px_cancel_entry **bucket(struct px_cancel_map *m, size_t listener, uint32_t pid)
{
    uint32_t h = (pid * 2654435761u) ^ (uint32_t)(listener * 40503u);
    return &m->buckets[h % BUCKETS];
}

struct px_cancel_entry *px_cancel_remember(struct px_cancel_map *m, size_t listener, uint32_t pid,
                                           const uint8_t *key, size_t key_len,
                                           const struct px_cancel_route *route)
{
    if (!m || key_len == 0 || key_len > KEY_MAX)
        return NULL;
    struct px_cancel_entry *e = malloc(sizeof(*e) + key_len);
    if (!e)
        return NULL;
    e->listener = listener;
    e->pid = pid;
    e->route = *route;
    e->key_len = key_len;
    memcpy(e->key, key, key_len);
    uv_mutex_lock(&m->lock);
    struct px_cancel_entry **b = bucket(m, listener, pid);
    e->next = *b;
    e->pprev = b;
    if (*b)
        (*b)->pprev = &e->next;
    *b = e;
    m->count++;
    uv_mutex_unlock(&m->lock);
    return e;
}

void px_cancel_forget(struct px_cancel_map *m, struct px_cancel_entry *e)
{
    if (!m || !e)
        return;
    uv_mutex_lock(&m->lock);
    *e->pprev = e->next;
    if (e->next)
        e->next->pprev = e->pprev;
    m->count--;
    uv_mutex_unlock(&m->lock);
    entry_free(e);
}

bool px_cancel_find(struct px_cancel_map *m, size_t listener, uint32_t pid, const uint8_t *key,
                    size_t key_len, struct px_cancel_route *route)
{
    if (!m)
        return false;
    bool found = false;
    uv_mutex_lock(&m->lock);
    for (struct px_cancel_entry *e = *bucket(m, listener, pid); e && !found; e = e->next) {
        /* The key decides whether a cancel may reach the session: compared in constant time. */
        found = e->listener == listener && e->pid == pid && e->key_len == key_len &&
                CRYPTO_memcmp(e->key, key, key_len) == 0;
        if (found)
            *route = e->route;
    }
    uv_mutex_unlock(&m->lock);
    return found;
}

size_t px_cancel_count(struct px_cancel_map *m)
{
    if (!m)
        return 0;
    uv_mutex_lock(&m->lock);
    size_t n = m->count;
    uv_mutex_unlock(&m->lock);
    return n;
}
