/* Bounded writer for wire messages (wire.h). A write that does not fit is dropped whole and
 * leaves `overflow` set for good, so `len` always ends on a complete field: a caller that forgets
 * to check overflow still never sends a half-written field. Also the machines' allocator, with
 * the failure injection their tests and fuzz targets use. */
#include "wire.h"

#include <stdlib.h>
#include <string.h>

#include "dbt_util.h"

void wire_out_init(struct wire_out *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = 0;
}

void wire_out_bytes(struct wire_out *w, const void *p, size_t n)
{
    if (w->overflow || n > w->cap - w->len) {
        w->overflow = 1;
        return;
    }
    if (n > 0) /* memcpy with a NULL pointer is undefined even for n == 0 */
        memcpy(w->buf + w->len, p, n);
    w->len += n;
}

void wire_out_u8(struct wire_out *w, uint8_t v)
{
    wire_out_bytes(w, &v, 1);
}

void wire_out_be32(struct wire_out *w, uint32_t v)
{
    uint8_t b[4];
    wire_put_be32(b, v);
    wire_out_bytes(w, b, sizeof b);
}

void wire_out_cstr(struct wire_out *w, const char *s)
{
    wire_out_bytes(w, s, strlen(s) + 1);
}

/* -1: no failure planned. Thread-local: the proxy's workers each have their own, never set. */
static _Thread_local long fail_countdown = -1;

void *wire_alloc(size_t n)
{
    if (fail_countdown >= 0 && fail_countdown-- == 0)
        return NULL;
    return malloc(n);
}

void wire_free(void *p, size_t n)
{
    if (!p)
        return;
    dbt_wipe(p, n);
    free(p);
}

void wire_alloc_fail_after(long after)
{
    fail_countdown = after < 0 ? -1 : after;
}
