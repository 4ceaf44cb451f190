/* Byte readers and writers for the wire formats (big-endian for PostgreSQL, little-endian for
 * MySQL), and the one place the machines of pg.c and mysql.c take memory from. */
#ifndef WIRE_H
#define WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t wire_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void wire_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint32_t wire_le24(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}

static inline void wire_put_le24(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
}

/* Longest prefix of s within room bytes that does not cut a UTF-8 sequence, so a truncated
 * error message stays valid text for clients that decode it. */
static inline size_t wire_utf8_prefix(const char *s, size_t room)
{
    size_t n = strlen(s);
    if (n <= room)
        return n;
    n = room;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/* A bounded output buffer: writers append and set `overflow` instead of writing past cap. A write
 * that does not fit is dropped whole (nothing partial is appended) and overflow stays set: every
 * later write is dropped too, so `len` always ends on the last complete write. */
struct wire_out {
    uint8_t *buf;
    size_t cap;
    size_t len;
    int overflow;
};

void wire_out_init(struct wire_out *w, uint8_t *buf, size_t cap);
void wire_out_bytes(struct wire_out *w, const void *p, size_t n);
void wire_out_u8(struct wire_out *w, uint8_t v);
void wire_out_be32(struct wire_out *w, uint32_t v);
/* Appends s and its NUL terminator. */
void wire_out_cstr(struct wire_out *w, const char *s);

/* ---- memory of the machines (issue 14: a connection holds only what its bytes need) ----
 * The machines allocate a buffer only once a length word has announced what it must hold, and
 * only after that length passed its bound, so an idle or refused connection costs its struct
 * alone. Every allocation of pg.c and mysql.c goes through here: a test or a fuzz target can
 * then make any one of them fail and check that it becomes a step ("out of memory"). */

/* malloc(n), or NULL (n == 0 is never asked for). */
void *wire_alloc(size_t n);
/* Zeroes the n bytes at p, then frees p (NULL: nothing): any machine buffer may have held a
 * password or a SCRAM nonce, and freed memory is handed to the next connection as it is. */
void wire_free(void *p, size_t n);
/* Tests and fuzz targets only: the wire_alloc call that follows `after` more successful ones in
 * this thread fails, once; -1 (the default) none. Thread-local, so a setting never reaches a
 * proxy worker. */
void wire_alloc_fail_after(long after);

#endif
