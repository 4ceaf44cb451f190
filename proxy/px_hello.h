/* The first TLS record of a client that asked dbtrust for TLS, gathered before any TLS engine
 * exists. OpenSSL allocates its record and handshake buffers (~40 KiB) as soon as it sees the
 * first byte of a ClientHello, so a client that stops half-way (a slowloris, a scanner) would
 * hold them for the whole handshake timeout; gathered here it holds what it sent. */
#ifndef PX_HELLO_H
#define PX_HELLO_H

#include <stddef.h>
#include <stdint.h>

enum px_hello_status {
    PX_HELLO_NEED_MORE, /* keep gathering */
    PX_HELLO_COMPLETE,  /* the first record is whole: hand buf/len to the engine */
    PX_HELLO_BAD,       /* not a TLS handshake record, or longer than a record can be */
    PX_HELLO_NO_MEMORY,
};

struct px_hello {
    uint8_t *buf;
    uint32_t len, cap;
};

/* Appends data; tells whether the first record is complete. */
enum px_hello_status px_hello_add(struct px_hello *h, const uint8_t *data, size_t len);
void px_hello_free(struct px_hello *h);

#endif
