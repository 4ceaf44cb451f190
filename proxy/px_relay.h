/* The relay: a byte pipe from one leg to the other, the same function for both directions,
 * with backpressure and half-close. Knows only legs. */
#ifndef PX_RELAY_H
#define PX_RELAY_H

#include "px_leg.h"

/* Backpressure: stop reading a side while the other side has more than this queued. */
#define PX_HIGH_WATER (256 * 1024)

/* Plaintext read from `from` goes to `to`; reading `from` pauses while `to` is backed up.
 * Returns 0, or -1 when the write failed (already reported by the leg). */
int px_relay_forward(struct px_leg *from, struct px_leg *to, const uint8_t *data, size_t len);
/* Pauses `from` while `to` is backed up (for relays that write through a protocol machine). */
void px_relay_backpressure(struct px_leg *from, struct px_leg *to);
/* `from`'s peer will send no more: pass the half-close on to `to`. */
void px_relay_eof(struct px_leg *from, struct px_leg *to);
/* A write finished: resume a side paused by backpressure. */
void px_relay_resume(struct px_leg *a, struct px_leg *b);
/* Both peers are done and everything was written: the connection can end. */
bool px_relay_finished(const struct px_leg *a, const struct px_leg *b);

#endif
