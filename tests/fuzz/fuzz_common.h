/* What the libFuzzer targets of tests/fuzz share: how an input chooses where TCP cuts the stream,
 * a recorder for the steps a machine returns, and checks that abort() (libFuzzer then keeps the
 * input as a crash). Header-only: every fuzz_<target>.c is its own executable.
 *
 * Input layout of the protocol targets (make_seeds.py writes seeds this way):
 *   byte 0      bits 0-2: k, the number of cut bytes that follow; bits 3-7: flags of the target
 *   k bytes     chunk sizes, each byte + 1 (1..256), used in turn, cyclically
 *   the rest    the payload: a byte stream, or fuzz_mysql's list of events
 * Each payload is fed whole, in the chosen chunks (byte by byte when k is 0) and, when k > 0,
 * byte by byte as well. Every way must give the same steps, consume the same bytes and leave the
 * machine in the same state: TCP may cut the stream anywhere. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond);        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* ---- cuts ---- */

#define FUZZ_MAX_CUTS 7

struct fuzz_cuts {
    uint8_t size[FUZZ_MAX_CUTS]; /* chunk size - 1 */
    size_t n;                    /* 0: the whole remainder at once */
    size_t next;
};

/* Reads the header; *flags gets bits 3-7 of byte 0. Returns the payload offset. */
static inline size_t fuzz_cuts_parse(const uint8_t *data, size_t size, struct fuzz_cuts *cuts,
                                     uint8_t *flags)
{
    memset(cuts, 0, sizeof *cuts);
    *flags = 0;
    if (size == 0)
        return 0;
    size_t k = data[0] & 7u;
    *flags = data[0] & 0xF8u;
    if (k > size - 1)
        k = size - 1;
    memcpy(cuts->size, data + 1, k);
    cuts->n = k;
    return 1 + k;
}

static inline struct fuzz_cuts fuzz_cuts_whole(void)
{
    struct fuzz_cuts c;
    memset(&c, 0, sizeof c);
    return c;
}

static inline struct fuzz_cuts fuzz_cuts_bytewise(void)
{
    struct fuzz_cuts c;
    memset(&c, 0, sizeof c);
    c.n = 1; /* size[0] == 0: chunks of 1 */
    return c;
}

/* The next chunk: at most left bytes. */
static inline size_t fuzz_cut(struct fuzz_cuts *c, size_t left)
{
    if (c->n == 0)
        return left;
    size_t k = (size_t)c->size[c->next] + 1;
    c->next = (c->next + 1) % c->n;
    return k < left ? k : left;
}

/* The three ways to feed a payload: whole, as chosen, byte by byte (skipped when the choice was
 * already byte by byte). Returns how many ways there are; fills ways[0..3). */
static inline size_t fuzz_ways(const struct fuzz_cuts *chosen, struct fuzz_cuts ways[3])
{
    ways[0] = fuzz_cuts_whole();
    if (chosen->n == 0) {
        ways[1] = fuzz_cuts_bytewise();
        return 2;
    }
    ways[1] = *chosen;
    ways[2] = fuzz_cuts_bytewise();
    return 3;
}

/* Different garbage for each way: a machine that reads memory its init did not set gives
 * different results, which the comparison then catches (ASan alone does not). */
static const uint8_t fuzz_fill[3] = {0xA5, 0x00, 0x5A};

/* ---- recorded steps ---- */

struct fuzz_rec {
    int leg;
    int action;
    int reason;
    bool flag;          /* phase_end (MySQL) */
    const char *detail; /* compared as a string */
    size_t off, len;    /* data: arena[off, off + len) */
};

struct fuzz_trace {
    struct fuzz_rec *rec;
    size_t n, cap;
    uint8_t *arena;
    size_t used, size;
};

static inline void fuzz_trace_bytes(struct fuzz_trace *t, const uint8_t *p, size_t n)
{
    if (n == 0)
        return;
    if (t->used + n > t->size) {
        size_t size = t->size ? t->size : 4096;
        while (size < t->used + n)
            size *= 2;
        t->arena = realloc(t->arena, size);
        FUZZ_CHECK(t->arena != NULL, "out of memory");
        t->size = size;
    }
    memcpy(t->arena + t->used, p, n);
    t->used += n;
}

static inline void fuzz_trace_add(struct fuzz_trace *t, int leg, int action, int reason, bool flag,
                                  const char *detail, const uint8_t *data, size_t len)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->rec = realloc(t->rec, t->cap * sizeof *t->rec);
        FUZZ_CHECK(t->rec != NULL, "out of memory");
    }
    t->rec[t->n++] = (struct fuzz_rec){leg, action, reason, flag, detail, t->used, len};
    fuzz_trace_bytes(t, data, len);
}

/* Appends to the last record, whose data ends the arena (relay steps merged: how many there are
 * depends on the cuts, not what they carry). */
static inline void fuzz_trace_extend(struct fuzz_trace *t, const uint8_t *data, size_t len)
{
    FUZZ_CHECK(t->n > 0 && t->rec[t->n - 1].off + t->rec[t->n - 1].len == t->used, "bad extend");
    t->rec[t->n - 1].len += len;
    fuzz_trace_bytes(t, data, len);
}

static inline void fuzz_trace_free(struct fuzz_trace *t)
{
    free(t->rec);
    free(t->arena);
    memset(t, 0, sizeof *t);
}

static inline bool fuzz_same_detail(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

/* Aborts with the first difference; how says which ways were compared. */
static inline void fuzz_trace_same(const struct fuzz_trace *a, const struct fuzz_trace *b,
                                   const char *how)
{
    size_t n = a->n < b->n ? a->n : b->n;
    for (size_t i = 0; i < n; i++) {
        const struct fuzz_rec *x = &a->rec[i], *y = &b->rec[i];
        FUZZ_CHECK(x->leg == y->leg && x->action == y->action && x->reason == y->reason &&
                       x->flag == y->flag,
                   "%s: step %zu: leg/action/reason/flag %d/%d/%d/%d vs %d/%d/%d/%d", how, i,
                   x->leg, x->action, x->reason, x->flag, y->leg, y->action, y->reason, y->flag);
        FUZZ_CHECK(fuzz_same_detail(x->detail, y->detail), "%s: step %zu: detail '%s' vs '%s'", how,
                   i, x->detail ? x->detail : "(null)", y->detail ? y->detail : "(null)");
        FUZZ_CHECK(x->len == y->len, "%s: step %zu (action %d): %zu vs %zu bytes", how, i,
                   x->action, x->len, y->len);
        FUZZ_CHECK(x->len == 0 || memcmp(a->arena + x->off, b->arena + y->off, x->len) == 0,
                   "%s: step %zu (action %d): data differs", how, i, x->action);
    }
    FUZZ_CHECK(a->n == b->n, "%s: %zu steps vs %zu", how, a->n, b->n);
}

/* With DBTRUST_FUZZ_TRACE set in the environment, the whole-feed steps of each input go to
 * stderr: what a reproducer does, step by step (leg, action, reason, flag, bytes, detail). */
static inline void fuzz_trace_dump(const struct fuzz_trace *t)
{
    static int on = -1;
    if (on < 0)
        on = getenv("DBTRUST_FUZZ_TRACE") != NULL;
    if (!on)
        return;
    for (size_t i = 0; i < t->n; i++) {
        const struct fuzz_rec *r = &t->rec[i];
        fprintf(stderr, "step %zu: leg %d action %d reason %d flag %d len %zu%s%s\n", i, r->leg,
                r->action, r->reason, r->flag, r->len, r->detail ? " detail: " : "",
                r->detail ? r->detail : "");
    }
    fprintf(stderr, "--\n");
}

/* A copy of a NUL-terminated field must be terminated within its array. */
#define FUZZ_CHECK_CSTR(arr) FUZZ_CHECK(memchr((arr), '\0', sizeof(arr)) != NULL, "%s", #arr)

/* The entry point of every protocol target: the input after its cut header is fed whole, in
 * the chosen cuts and byte by byte (each over different leftover memory, fuzz_fill), and the
 * three outcomes must agree. The target defines struct outcome (its trace in .t), run(),
 * same() and outcome_free(); setup runs first on every input. */
#define FUZZ_SPLIT_ENTRY(setup)                                                                    \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)                                   \
    {                                                                                              \
        struct fuzz_cuts chosen, ways[3];                                                          \
        uint8_t flags;                                                                             \
        size_t off = fuzz_cuts_parse(data, size, &chosen, &flags);                                 \
        size_t nways = fuzz_ways(&chosen, ways);                                                   \
        struct outcome o[3];                                                                       \
        setup;                                                                                     \
        for (size_t i = 0; i < nways; i++)                                                         \
            run(data + off, size - off, flags, ways[i], fuzz_fill[i], &o[i]);                      \
        fuzz_trace_dump(&o[0].t);                                                                  \
        for (size_t i = 1; i < nways; i++)                                                         \
            same(&o[0], &o[i], i == 1 ? "whole vs chosen cuts" : "whole vs byte by byte");         \
        for (size_t i = 0; i < nways; i++) {                                                       \
            fuzz_trace_free(&o[i].t);                                                              \
            outcome_free(&o[i]);                                                                   \
        }                                                                                          \
        return 0;                                                                                  \
    }

#endif
