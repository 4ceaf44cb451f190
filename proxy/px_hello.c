#include "px_hello.h"

#include <stdlib.h>
#include <string.h>

#define RECORD_HEADER    5
#define HANDSHAKE_RECORD 0x16
/* RFC 8446 5.1: a plaintext record carries at most 2^14 bytes. */
#define MAX_RECORD (RECORD_HEADER + 16384)

static uint32_t record_size(const uint8_t *p)
{
    return RECORD_HEADER + ((uint32_t)p[3] << 8 | p[4]);
}

enum px_hello_status px_hello_add(struct px_hello *h, const uint8_t *data, size_t len)
{
    if (len > MAX_RECORD || h->len + len > MAX_RECORD + 65536u)
        return PX_HELLO_BAD; /* more than a record and what may follow it in one read */
    if (h->len + len > h->cap) {
        /* Grown by what arrives, not by what the header announces: a client announcing 16 KiB
         * and sending 10 bytes holds 10 bytes (rounded). */
        uint32_t cap = (uint32_t)(h->len + len + 255) & ~255u;
        uint8_t *p = realloc(h->buf, cap);
        if (!p)
            return PX_HELLO_NO_MEMORY;
        h->buf = p;
        h->cap = cap;
    }
    memcpy(h->buf + h->len, data, len);
    h->len += (uint32_t)len;
    if (h->buf[0] != HANDSHAKE_RECORD)
        return PX_HELLO_BAD;
    if (h->len < RECORD_HEADER)
        return PX_HELLO_NEED_MORE;
    uint32_t need = record_size(h->buf);
    if (need > MAX_RECORD)
        return PX_HELLO_BAD;
    return h->len >= need ? PX_HELLO_COMPLETE : PX_HELLO_NEED_MORE;
}

void px_hello_free(struct px_hello *h)
{
    free(h->buf);
    h->buf = NULL;
    h->len = h->cap = 0;
}
