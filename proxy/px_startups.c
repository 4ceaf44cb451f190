#include "px_startups.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* Distinct addresses in their startup phase at once; beyond this every address is admitted
 * (the table is a defence against a few noisy sources, max_connections bounds the rest). */
#define SLOTS 4096

struct slot {
    uint8_t addr[16];
    uint32_t count; /* 0 = free */
};

struct px_startups {
    uv_mutex_t lock; /* accept and close of every worker; a few instructions inside */
    unsigned limit;
    struct slot slots[SLOTS];
};

struct px_startups *px_startups_new(unsigned limit)
{
    if (limit == 0)
        return NULL;
    struct px_startups *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    if (uv_mutex_init(&t->lock) != 0) {
        free(t);
        return NULL;
    }
    t->limit = limit;
    return t;
}

void px_startups_free(struct px_startups *t)
{
    if (!t)
        return;
    uv_mutex_destroy(&t->lock);
    free(t);
}

uint32_t px_addr_hash(const uint8_t key[16])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    return h;
}

/* Probing stays within a window of PROBE slots from the key's hash: a key with a count is
 * always inside its window (it was placed there and entries never move), and a slot whose
 * count fell to 0 is free again at once, so no tombstones pile up. Returns the slot holding
 * key, else (create) the first free one of the window, else NULL (window full: admit). */
#define PROBE 64

static struct slot *find(struct px_startups *t, const uint8_t key[16], bool create)
{
    uint32_t h = px_addr_hash(key);
    struct slot *free_slot = NULL;
    for (size_t i = 0; i < PROBE; i++) {
        struct slot *s = &t->slots[(h + i) % SLOTS];
        if (s->count > 0 && memcmp(s->addr, key, 16) == 0)
            return s;
        if (s->count == 0 && free_slot == NULL)
            free_slot = s;
    }
    if (!create || free_slot == NULL)
        return NULL;
    memcpy(free_slot->addr, key, 16);
    return free_slot;
}

bool px_startups_enter(struct px_startups *t, const uint8_t *addr, size_t len)
{
    uint8_t key[16] = {0};
    memcpy(key, addr, len < 16 ? len : 16);
    bool admitted = true;
    uv_mutex_lock(&t->lock);
    struct slot *s = find(t, key, true);
    if (s != NULL) {
        if (s->count >= t->limit)
            admitted = false;
        else
            s->count++;
    }
    uv_mutex_unlock(&t->lock);
    return admitted;
}

void px_startups_leave(struct px_startups *t, const uint8_t *addr, size_t len)
{
    uint8_t key[16] = {0};
    memcpy(key, addr, len < 16 ? len : 16);
    uv_mutex_lock(&t->lock);
    struct slot *s = find(t, key, false);
    if (s != NULL && s->count > 0)
        s->count--;
    uv_mutex_unlock(&t->lock);
}
