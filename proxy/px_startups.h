/* max_startup_per_client: how many connections from one source address may be in their startup
 * phase (accepted, not logged in yet) at once, across the workers of a listener. A central trust
 * point's defence against one scanner or one broken pool holding every pre-login slot; logged-in
 * sessions are not counted. Touched at accept and at login or close, never per byte. */
#ifndef PX_STARTUPS_H
#define PX_STARTUPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct px_startups;

/* A hash of an address padded to 16 bytes (IPv4 in the first 4), for small address tables. */
uint32_t px_addr_hash(const uint8_t key[16]);

/* A table for one listener; NULL when limit is 0 (off) or out of memory. */
struct px_startups *px_startups_new(unsigned limit);
void px_startups_free(struct px_startups *t);
/* Counts one more startup from addr (4 or 16 bytes). False: the address is at its limit (not
 * counted then). A full table counts nothing and admits (max_connections still bounds it). */
bool px_startups_enter(struct px_startups *t, const uint8_t *addr, size_t len);
/* The startup of a connection that entered ended (logged in or closed). */
void px_startups_leave(struct px_startups *t, const uint8_t *addr, size_t len);

#endif
