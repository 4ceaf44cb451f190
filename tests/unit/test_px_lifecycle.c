/* The connection lifecycle's rules, on the proxy's real code and a libuv loop run by the test:
 * dialing stops once a connection is failing; a freed connect slot goes to the next waiter from
 * the loop, in arrival order, never on the releasing connection's stack; a retiring connection
 * (the client left, the driver ends the upstream's login) keeps its first reason and tells the
 * client nothing. A test driver stands in for PostgreSQL/MySQL: it records what the lifecycle
 * asks of it. Sockets are real (loopback), the upstream is a listening socket that never
 * answers. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "px_conn.h"
#include "px_dial.h"
#include "px_io.h"
#include "px_startups.h"
#include "px_upstream.h"
#include "tls_certgen.h"

#include <openssl/ssl.h>

/* ---- the test driver ---- */

static struct {
    int started, connected, errors_built, freed;
    enum dbt_reason reason_at_free;
    bool dial_at_start;
    bool retire_on_close; /* on_close enters RETIRING once */
} drv_seen;

static void t_start(struct px_conn *c)
{
    drv_seen.started++;
    if (drv_seen.dial_at_start)
        px_upstream_dial(c);
}

static void t_on_bytes(struct px_conn *c, struct px_leg *from, const uint8_t *data, size_t len)
{
    (void)c, (void)from, (void)data, (void)len;
}

static void t_on_connected(struct px_conn *c)
{
    (void)c;
    drv_seen.connected++;
}

static void t_on_tls_ready(struct px_conn *c, struct px_leg *leg)
{
    (void)c, (void)leg;
}

static size_t t_build_error(struct px_conn *c, enum dbt_reason reason, const char *message,
                            uint8_t *buf, size_t cap)
{
    (void)c, (void)reason;
    drv_seen.errors_built++;
    size_t n = strlen(message);
    n = n < cap ? n : cap;
    memcpy(buf, message, n);
    return n;
}

static bool t_on_close(struct px_conn *c)
{
    if (!drv_seen.retire_on_close || c->state == PX_CONN_RETIRING)
        return false;
    px_leg_close(px_conn_client(c));
    c->state = PX_CONN_RETIRING;
    return true;
}

static void t_free(struct px_conn *c)
{
    drv_seen.freed++;
    drv_seen.reason_at_free = c->reason;
}

static const struct px_driver test_driver = {
    .name = "test",
    .start = t_start,
    .on_bytes = t_on_bytes,
    .on_connected = t_on_connected,
    .on_tls_ready = t_on_tls_ready,
    .build_error = t_build_error,
    .on_close = t_on_close,
    .free = t_free,
};

/* ---- one server, one worker, one listener, run on the test's thread ---- */

static struct cfg cfg;
static struct px_server srv;
static struct px_listener listener;
static struct px_worker worker;
static struct px_worker_listener *wl;
static int upstream_fd = -1;
static uint16_t listen_port;
static char tmpdir[64];

static int listening_socket(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 64) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void on_connection(uv_stream_t *server, int status)
{
    cr_assert_eq(status, 0);
    px_conn_accept(server->data);
}

static struct tlsw_gen *load_generation(void)
{
    struct cg_cert root;
    cr_assert(cg_issue(&root, &CG_ROOT, NULL) == 0);
    char path[128];
    snprintf(path, sizeof(path), "%s/bundle.pem", tmpdir);
    cr_assert(cg_write_bundle(path, &root.cert, 1) == 0);
    cg_free(&root);
    struct tlsw_gen_opts opts = {.verify = TLSW_VERIFY_FULL, .min_tls_version = TLS1_2_VERSION};
    struct tlsw_gen *g = NULL;
    char err[256];
    cr_assert(tlsw_gen_load(path, &opts, &g, err, sizeof(err)) == 0, "%s", err);
    return g;
}

static void setup(void)
{
    memset(&drv_seen, 0, sizeof(drv_seen));
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/dbtrust-unit-lifecycle-XXXXXX");
    cr_assert(mkdtemp(tmpdir) != NULL);
    cfg_init(&cfg);
    cfg.listeners = calloc(1, sizeof(*cfg.listeners));
    cfg.listener_count = 1;
    struct cfg_listener *lc = &cfg.listeners[0];
    cfg_listener_init(lc);
    snprintf(lc->name, sizeof(lc->name), "unit");
    uint16_t up_port;
    upstream_fd = listening_socket(&up_port); /* the kernel completes connects; nobody answers */
    snprintf(lc->upstream[0].host, sizeof(lc->upstream[0].host), "127.0.0.1");
    lc->upstream[0].port = up_port;
    lc->upstream_count = 1;
    lc->upstream_connect_limit = 1;

    srv = (struct px_server){.cfg = &cfg, .listener_count = 1, .worker_count = 1};
    srv.listeners = &listener;
    listener = (struct px_listener){.cfg = lc, .drv = &test_driver};
    listener.gen = load_generation();
    listener.startups = px_startups_new(0);

    worker = (struct px_worker){.id = 0, .srv = &srv};
    cr_assert(uv_loop_init(&worker.loop) == 0);
    worker.wls = calloc(1, sizeof(*worker.wls));
    wl = &worker.wls[0];
    wl->w = &worker;
    wl->l = &listener;
    wl->gen = listener.gen;
    tlsw_gen_ref(wl->gen);
    px_dial_init(wl);
    int fd = listening_socket(&listen_port);
    cr_assert(uv_tcp_init(&worker.loop, &wl->handle.tcp) == 0);
    cr_assert(uv_tcp_open(&wl->handle.tcp, fd) == 0);
    wl->handle.handle.data = wl;
    wl->open = true;
    cr_assert(uv_listen(&wl->handle.stream, 64, on_connection) == 0);
}

static void on_close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void teardown(void)
{
    uv_walk(&worker.loop, on_close_any, NULL);
    uv_run(&worker.loop, UV_RUN_DEFAULT);
    cr_expect_eq(uv_loop_close(&worker.loop), 0, "handles left open on the loop");
    px_resume_forget(wl);
    tlsw_gen_unref(wl->gen);
    free(worker.wls);
    px_io_worker_free(&worker);
    tlsw_gen_unref(listener.gen);
    px_startups_free(listener.startups);
    close(upstream_fd);
    cfg_free(&cfg);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    cr_expect(system(cmd) == 0);
}

/* A client socket connected to the listener (the test never reads it unless it says so). */
static int connect_client(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons(listen_port)};
    cr_assert(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    return fd;
}

/* Runs the loop until cond holds (or fails the test after about 5 s). */
#define RUN_UNTIL(cond)                                                                            \
    do {                                                                                           \
        for (int spin_ = 0; !(cond); spin_++) {                                                    \
            cr_assert(spin_ < 5000, "timed out waiting for " #cond);                               \
            uv_run(&worker.loop, UV_RUN_NOWAIT);                                                   \
            usleep(1000);                                                                          \
        }                                                                                          \
    } while (0)

static unsigned conn_count(void)
{
    return worker.conn_count;
}

/* The newest connection of the worker (the list is newest first). */
static struct px_conn *newest(void)
{
    return worker.conns;
}

TestSuite(px_lifecycle, .init = setup, .fini = teardown, .timeout = 30);

/* A connection that fails while its upstream name is being looked up (here: an error too big
 * for the socket buffers, so the connection stays FAILING while it is written) must not go on
 * to connect when the lookup returns. */
Test(px_lifecycle, dialing_stops_once_the_connection_is_failing)
{
    drv_seen.dial_at_start = true;
    int client = connect_client();
    RUN_UNTIL(conn_count() == 1);
    struct px_conn *c = newest();
    cr_assert_eq(c->state, PX_CONN_RESOLVING);
    size_t big = 16u << 20;
    uint8_t *pkt = calloc(1, big);
    px_conn_fail_with(c, DBT_SHUTDOWN, "unit test", pkt, big);
    free(pkt);
    cr_assert_eq(c->state, PX_CONN_FAILING);
    cr_assert_gt(px_conn_client(c)->queued, 0, "the error must still be on its way");
    cr_assert(px_conn_ending(c));
    /* Give the lookup (thread pool) and any connect time to complete. */
    for (int i = 0; i < 300 && conn_count() == 1; i++) {
        uv_run(&worker.loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    cr_expect_eq(drv_seen.connected, 0, "a failing connection connected upstream");
    cr_expect_eq(px_conn_upstream(c)->state, PX_LEG_NONE, "an upstream attempt was opened");
    close(client); /* the error's write breaks: the connection ends */
    RUN_UNTIL(conn_count() == 0);
    cr_expect_eq(drv_seen.reason_at_free, DBT_SHUTDOWN);
}

/* upstream_connect_limit = 1: the second connection waits for the slot. Closing the first must
 * not dial for the second inside px_conn_close (on the closing connection's stack): the loop
 * hands the slot over on its next turn. */
Test(px_lifecycle, slot_handover_runs_from_the_loop)
{
    drv_seen.dial_at_start = true;
    int a = connect_client();
    RUN_UNTIL(conn_count() == 1);
    struct px_conn *first = newest();
    int b = connect_client();
    RUN_UNTIL(conn_count() == 2);
    struct px_conn *second = newest();
    cr_assert_neq(first, second);
    cr_assert_eq(second->state, PX_CONN_DIAL_WAIT);
    px_conn_close(first, DBT_CLIENT_CLOSED, NULL);
    cr_expect_eq(second->state, PX_CONN_DIAL_WAIT, "the slot was handed over re-entrantly");
    uv_run(&worker.loop, UV_RUN_NOWAIT);
    cr_expect_neq(second->state, PX_CONN_DIAL_WAIT, "the loop did not hand the slot over");
    px_conn_close(second, DBT_CLIENT_CLOSED, NULL);
    RUN_UNTIL(conn_count() == 0);
    close(a);
    close(b);
}

/* The driver retires the connection (client gone). What happens on the upstream side later - a
 * broken write, a failure, the timer - ends it with the client's reason, and no error is
 * built for a client that is not there. */
Test(px_lifecycle, retiring_keeps_the_first_reason_and_tells_nobody)
{
    drv_seen.retire_on_close = true;
    int client = connect_client();
    RUN_UNTIL(conn_count() == 1);
    struct px_conn *c = newest();
    px_conn_close(c, DBT_CLIENT_CLOSED, NULL);
    cr_assert_eq(c->state, PX_CONN_RETIRING);
    cr_assert(!c->closing);
    px_conn_fail(c, DBT_UPSTREAM_RESET, "the upstream broke while retiring");
    cr_expect_eq(drv_seen.errors_built, 0, "an error was built for a client that left");
    cr_expect(c->closing);
    RUN_UNTIL(conn_count() == 0);
    cr_expect_eq(drv_seen.reason_at_free, DBT_CLIENT_CLOSED);
    close(client);
}

Test(px_lifecycle, retiring_then_closed_by_an_upstream_event_keeps_the_reason)
{
    drv_seen.retire_on_close = true;
    int client = connect_client();
    RUN_UNTIL(conn_count() == 1);
    struct px_conn *c = newest();
    px_conn_close(c, DBT_CLIENT_TIMEOUT, "client too slow");
    cr_assert_eq(c->state, PX_CONN_RETIRING);
    px_conn_close(c, DBT_UPSTREAM_RESET, "connection reset by peer");
    RUN_UNTIL(conn_count() == 0);
    cr_expect_eq(drv_seen.reason_at_free, DBT_CLIENT_TIMEOUT);
    close(client);
}

/* ---- connect slots alone ---- */

static int granted_order[8], granted_count;
static bool inside_release;

static struct px_dial_waiter waiters[4];

static void on_granted_indexed(struct px_dial_waiter *d)
{
    cr_expect(!inside_release, "granted() ran inside px_dial_release");
    granted_order[granted_count++] = (int)(d - waiters);
}

static void release(struct px_dial_waiter *d)
{
    inside_release = true;
    px_dial_release(d);
    inside_release = false;
}

Test(px_lifecycle, slots_go_to_waiters_in_arrival_order_without_overtaking)
{
    granted_count = 0;
    for (int i = 0; i < 4; i++)
        waiters[i] = (struct px_dial_waiter){.wl = wl, .granted = on_granted_indexed};
    cr_assert(px_dial_acquire(&waiters[0]));
    cr_assert(!px_dial_acquire(&waiters[1]));
    cr_assert(!px_dial_acquire(&waiters[2]));
    release(&waiters[0]);
    /* The slot is free but promised: a newcomer queues behind the waiters. */
    cr_expect(!px_dial_acquire(&waiters[3]), "a newcomer overtook the waiters");
    cr_expect_eq(granted_count, 0);
    uv_run(&worker.loop, UV_RUN_NOWAIT);
    cr_assert_eq(granted_count, 1);
    cr_expect_eq(granted_order[0], 1);
    release(&waiters[2]); /* gives up its place in the queue: never granted */
    release(&waiters[1]);
    uv_run(&worker.loop, UV_RUN_NOWAIT);
    cr_assert_eq(granted_count, 2);
    cr_expect_eq(granted_order[1], 3);
    release(&waiters[3]);
    uv_run(&worker.loop, UV_RUN_NOWAIT);
    cr_expect_eq(granted_count, 2);
    cr_expect_eq(wl->dials, 0);
}
