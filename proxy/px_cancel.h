/* Where each live PostgreSQL session of this process runs, by its BackendKeyData (the pid and
 * secret key a CancelRequest names), so a cancel reaches the server that holds the session even
 * when the listener has several upstreams or a name with several addresses. One map for the
 * process, shared by the workers: a cancel arrives on a new connection that any worker may
 * accept. A mutex guards it for one table operation - a session's login, its end, a cancel -
 * never per byte. The key is a secret: compared in constant time, wiped when it leaves. */
#ifndef PX_CANCEL_H
#define PX_CANCEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct px_cancel_map;
struct px_cancel_entry;

/* The server of one session: the listener's upstream entry (its name is verified) and the
 * address dbtrust connected to. */
struct px_cancel_route {
    size_t upstream_idx;
    struct sockaddr_storage addr;
};

/* NULL when out of memory (cancels then take the listener's upstreams in order). */
struct px_cancel_map *px_cancel_map_new(void);
void px_cancel_map_free(struct px_cancel_map *m);

/* Records a logged-in session of listener (its index). Returns the entry to forget at the
 * session's end, or NULL (not recorded: out of memory, or a key longer than 256 bytes). */
struct px_cancel_entry *px_cancel_remember(struct px_cancel_map *m, size_t listener, uint32_t pid,
                                           const uint8_t *key, size_t key_len,
                                           const struct px_cancel_route *route);
/* The session ended: its key can no longer cancel anything. NULL is a no-op. */
void px_cancel_forget(struct px_cancel_map *m, struct px_cancel_entry *e);
/* True and *route filled when a live session of listener has this pid and key. */
bool px_cancel_find(struct px_cancel_map *m, size_t listener, uint32_t pid, const uint8_t *key,
                    size_t key_len, struct px_cancel_route *route);
/* Sessions recorded now (for tests and metrics). */
size_t px_cancel_count(struct px_cancel_map *m);

#endif
