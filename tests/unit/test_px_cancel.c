/* The cancel map (proxy/px_cancel.c): a CancelRequest finds the server of a live session by
 * its pid and secret key, of any length protocol 3.0 and 3.2 allow, and nothing else. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "px_cancel.h"

static struct px_cancel_route route_to(size_t upstream_idx, uint16_t port)
{
    struct px_cancel_route r = {.upstream_idx = upstream_idx};
    struct sockaddr_in *sin = (struct sockaddr_in *)&r.addr;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return r;
}

static uint16_t port_of(const struct px_cancel_route *r)
{
    return ntohs(((const struct sockaddr_in *)&r->addr)->sin_port);
}

Test(px_cancel, finds_the_server_of_a_live_session_by_pid_and_key)
{
    struct px_cancel_map *m = px_cancel_map_new();
    cr_assert_not_null(m);
    uint8_t key4[4] = {1, 2, 3, 4}, key32[32], key256[256];
    memset(key32, 0x32, sizeof(key32));
    memset(key256, 0x56, sizeof(key256));
    struct px_cancel_route a = route_to(0, 5001), b = route_to(1, 5002), c = route_to(1, 5003);
    struct px_cancel_entry *ea = px_cancel_remember(m, 0, 100, key4, sizeof(key4), &a);
    struct px_cancel_entry *eb = px_cancel_remember(m, 0, 200, key32, sizeof(key32), &b);
    struct px_cancel_entry *ec = px_cancel_remember(m, 1, 100, key256, sizeof(key256), &c);
    cr_assert(ea && eb && ec);
    cr_expect_eq(px_cancel_count(m), 3);

    struct px_cancel_route r;
    cr_assert(px_cancel_find(m, 0, 200, key32, sizeof(key32), &r));
    cr_expect_eq(r.upstream_idx, 1);
    cr_expect_eq(port_of(&r), 5002);
    cr_assert(px_cancel_find(m, 1, 100, key256, sizeof(key256), &r));
    cr_expect_eq(port_of(&r), 5003);
    cr_assert(px_cancel_find(m, 0, 100, key4, sizeof(key4), &r));
    cr_expect_eq(port_of(&r), 5001);

    /* A wrong key, a key of another length, another listener's session: unknown. */
    uint8_t wrong[32];
    memcpy(wrong, key32, sizeof(wrong));
    wrong[31] ^= 1;
    cr_expect(!px_cancel_find(m, 0, 200, wrong, sizeof(wrong), &r));
    cr_expect(!px_cancel_find(m, 0, 200, key32, 4, &r));
    cr_expect(!px_cancel_find(m, 1, 200, key32, sizeof(key32), &r));

    px_cancel_forget(m, eb);
    cr_expect(!px_cancel_find(m, 0, 200, key32, sizeof(key32), &r), "a session that ended");
    cr_expect(px_cancel_find(m, 0, 100, key4, sizeof(key4), &r));
    px_cancel_forget(m, ea);
    px_cancel_forget(m, ec);
    px_cancel_forget(m, NULL);
    cr_expect_eq(px_cancel_count(m), 0);
    px_cancel_map_free(m);
}

Test(px_cancel, refuses_keys_no_protocol_has)
{
    struct px_cancel_map *m = px_cancel_map_new();
    uint8_t key[257] = {0};
    struct px_cancel_route a = route_to(0, 5001);
    cr_expect_null(px_cancel_remember(m, 0, 1, key, sizeof(key), &a));
    cr_expect_null(px_cancel_remember(m, 0, 1, key, 0, &a));
    cr_expect_eq(px_cancel_count(m), 0);
    px_cancel_map_free(m);
}

/* Many sessions with colliding buckets (same pid on many listeners, many pids): every one is
 * found, and removing them in another order leaves the others intact. */
Test(px_cancel, many_sessions_in_shared_buckets)
{
    struct px_cancel_map *m = px_cancel_map_new();
    enum { N = 20000 };
    static struct px_cancel_entry *e[N];
    for (uint32_t i = 0; i < N; i++) {
        uint8_t key[4];
        memcpy(key, &i, sizeof(key));
        struct px_cancel_route r = route_to(i % 3, (uint16_t)(1000 + i % 50000));
        e[i] = px_cancel_remember(m, i % 7, i / 7, key, sizeof(key), &r);
        cr_assert_not_null(e[i]);
    }
    for (uint32_t i = 0; i < N; i += 2)
        px_cancel_forget(m, e[i]);
    for (uint32_t i = 0; i < N; i++) {
        uint8_t key[4];
        memcpy(key, &i, sizeof(key));
        struct px_cancel_route r;
        bool found = px_cancel_find(m, i % 7, i / 7, key, sizeof(key), &r);
        cr_assert_eq(found, i % 2 == 1, "session %u", i);
        if (found)
            cr_assert_eq(port_of(&r), 1000 + i % 50000);
    }
    cr_expect_eq(px_cancel_count(m), N / 2);
    px_cancel_map_free(m); /* frees the rest */
}
