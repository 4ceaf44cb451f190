/* conf/: the INI loader (cfg_load_file, which only reads files: the input goes to an anonymous
 * memfd, or a temp file under /tmp where memfd_create is missing, and is read through its path),
 * cfg_finish, the command-line form and the address and duration parsers on the input's first
 * lines. Checked: a failed load names the file and leaves the configuration it was loading into
 * exactly as it was (a reload keeps the old one); addresses print and parse back the same; the
 * client_* keys that need each other came together, and client_allow ranges are canonical. */
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cfg.h"
#include "fuzz_common.h"

/* A configuration already loaded, as on a reload: the input is loaded on top of it. */
static const char base_ini[] = "[dbtrust]\n"
                               "workers = 2\n"
                               "[trust]\n"
                               "bundle = /etc/dbtrust/ca-bundle.pem\n"
                               "[listener.orders]\n"
                               "protocol = postgres\n"
                               "listen = 127.0.0.1:5432\n"
                               "upstream = db.example.com\n"
                               "[listener.shop]\n"
                               "protocol = mysql\n"
                               "listen = unix:/run/dbtrust/mysql.sock\n"
                               "upstream = [2001:db8::7]:3307, 10.0.0.9\n";

struct input_file {
    int fd;
    char path[64];
    bool unlink_it;
};

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        FUZZ_CHECK(w > 0, "write to the input file");
        p += w;
        n -= (size_t)w;
    }
}

static void input_open(struct input_file *f, const uint8_t *data, size_t size)
{
    f->unlink_it = false;
    f->fd = memfd_create("dbtrust-fuzz-conf", MFD_CLOEXEC);
    if (f->fd >= 0) {
        snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
    } else {
        snprintf(f->path, sizeof f->path, "/tmp/dbtrust-fuzz-conf-XXXXXX");
        f->fd = mkstemp(f->path);
        FUZZ_CHECK(f->fd >= 0, "mkstemp");
        f->unlink_it = true;
    }
    write_all(f->fd, data, size);
}

static void input_close(struct input_file *f)
{
    if (f->unlink_it)
        unlink(f->path);
    close(f->fd);
}

/* What cfg_addr_format prints must parse back to the same address. */
static void check_addr(const struct cfg_addr *a, bool allow_unix)
{
    char text[300];
    struct cfg_addr back;

    FUZZ_CHECK_CSTR(a->host);
    FUZZ_CHECK(a->is_unix || a->port != 0, "address '%s' without a port", a->host);
    /* Known ambiguity, reported, not a crash: a host named "unix" prints as "unix:PORT", which
     * reads back as a Unix socket path. */
    if (!a->is_unix && strcmp(a->host, "unix") == 0)
        return;
    cfg_addr_format(a, text, sizeof text);
    FUZZ_CHECK(cfg_parse_addr(text, allow_unix, 0, &back) == 0, "'%s' does not parse back", text);
    FUZZ_CHECK(back.is_unix == a->is_unix && strcmp(back.host, a->host) == 0 &&
                   back.port == a->port,
               "'%s' parses back as a different address", text);
}

static bool same_addr(const struct cfg_addr *a, const struct cfg_addr *b)
{
    return strcmp(a->host, b->host) == 0 && a->port == b->port && a->is_unix == b->is_unix;
}

static bool same_listener(const struct cfg_listener *a, const struct cfg_listener *b)
{
    if (strcmp(a->name, b->name) != 0 || a->protocol != b->protocol ||
        !same_addr(&a->listen, &b->listen) || a->upstream_count != b->upstream_count ||
        strcmp(a->server_name, b->server_name) != 0 || strcmp(a->bundle, b->bundle) != 0 ||
        a->connect_timeout_ms != b->connect_timeout_ms ||
        a->handshake_timeout_ms != b->handshake_timeout_ms ||
        a->upstream_dead_timeout_ms != b->upstream_dead_timeout_ms ||
        a->startup_timeout_ms != b->startup_timeout_ms ||
        a->max_connections != b->max_connections ||
        strcmp(a->mysql_rsa_key, b->mysql_rsa_key) != 0 || a->line != b->line ||
        a->client_tls != b->client_tls || strcmp(a->client_cert, b->client_cert) != 0 ||
        strcmp(a->client_key, b->client_key) != 0 || strcmp(a->client_ca, b->client_ca) != 0 ||
        strcmp(a->client_names, b->client_names) != 0 ||
        a->client_allow_count != b->client_allow_count ||
        memcmp(a->client_allow, b->client_allow, a->client_allow_count * sizeof a->client_allow[0]))
        return false;
    for (size_t i = 0; i < a->upstream_count; i++)
        if (!same_addr(&a->upstream[i], &b->upstream[i]))
            return false;
    return true;
}

/* The client leg of a loaded listener: the keys that need each other came together, every
 * client_allow range is canonical and lets its own network address in. */
static void check_client_leg(const struct cfg_listener *l)
{
    FUZZ_CHECK_CSTR(l->client_cert);
    FUZZ_CHECK_CSTR(l->client_key);
    FUZZ_CHECK_CSTR(l->client_ca);
    FUZZ_CHECK_CSTR(l->client_names);
    if (l->client_tls == CFG_CLIENT_TLS_OFF)
        FUZZ_CHECK(!l->client_cert[0] && !l->client_key[0] && !l->client_ca[0] &&
                       !l->client_names[0],
                   "client_* file or names without client_tls");
    else
        FUZZ_CHECK(l->client_cert[0] && l->client_key[0] && !l->listen.is_unix,
                   "client_tls without its files, or on a unix: listener");
    FUZZ_CHECK(!l->client_names[0] || l->client_ca[0], "client_names without client_ca");
    FUZZ_CHECK(l->client_allow_count <= CFG_MAX_CLIENT_ALLOW, "%zu ranges", l->client_allow_count);
    FUZZ_CHECK(l->client_allow_count == 0 || !l->listen.is_unix, "client_allow on unix:");
    for (size_t i = 0; i < l->client_allow_count; i++) {
        const struct cfg_cidr *r = &l->client_allow[i];
        unsigned max = r->family == AF_INET ? 32 : 128;
        FUZZ_CHECK(r->family == AF_INET || r->family == AF_INET6, "range family %d", r->family);
        FUZZ_CHECK(r->prefix <= max, "prefix %u", r->prefix);
        for (unsigned bit = r->prefix; bit < 128; bit++)
            FUZZ_CHECK(!(r->addr[bit / 8] & (0x80 >> (bit % 8))), "host bit %u set", bit);
        FUZZ_CHECK(cfg_client_allowed(l, r->family, r->addr), "range %zu refuses itself", i);
    }
}

static void check_loaded(const struct cfg *c)
{
    FUZZ_CHECK_CSTR(c->source);
    FUZZ_CHECK_CSTR(c->bundle);
    FUZZ_CHECK_CSTR(c->pins);
    FUZZ_CHECK_CSTR(c->user);
    if (c->admin_enabled)
        check_addr(&c->admin, false);
    for (size_t i = 0; i < c->listener_count; i++) {
        const struct cfg_listener *l = &c->listeners[i];
        FUZZ_CHECK_CSTR(l->name);
        FUZZ_CHECK(l->name[0] != '\0', "listener without a name");
        FUZZ_CHECK(l->upstream_count >= 1 && l->upstream_count <= CFG_MAX_UPSTREAMS,
                   "%zu upstreams", l->upstream_count);
        check_addr(&l->listen, true);
        for (size_t u = 0; u < l->upstream_count; u++) {
            FUZZ_CHECK(!l->upstream[u].is_unix && l->upstream[u].port != 0, "upstream address");
            check_addr(&l->upstream[u], false);
        }
        FUZZ_CHECK_CSTR(l->server_name);
        FUZZ_CHECK_CSTR(l->bundle);
        FUZZ_CHECK_CSTR(l->mysql_rsa_key);
        check_client_leg(l);
        for (size_t j = 0; j < i; j++)
            FUZZ_CHECK(strcmp(l->name, c->listeners[j].name) != 0, "duplicate listener name");
    }
}

static void check_error(const char *err, size_t cap, const char *path)
{
    FUZZ_CHECK(memchr(err, '\0', cap) != NULL, "error not terminated");
    FUZZ_CHECK(strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':',
               "error does not start with the file: '%s'", err);
}

/* The input's first lines, NUL-terminated, for the one-value parsers and the command line. */
#define LINES 6
static size_t split_lines(const uint8_t *data, size_t size, char *buf, const char *line[LINES])
{
    size_t n = 0, at = 0;
    char *w = buf;
    while (n < LINES && at < size) {
        const uint8_t *nl = memchr(data + at, '\n', size - at);
        size_t len = nl ? (size_t)(nl - (data + at)) : size - at;
        memcpy(w, data + at, len);
        w[len] = '\0';
        line[n++] = w;
        w += len + 1;
        at += len + 1;
    }
    return n;
}

static void one_values(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + LINES);
    const char *line[LINES] = {NULL};
    FUZZ_CHECK(buf != NULL, "out of memory");
    size_t n = split_lines(data, size, buf, line);

    for (size_t i = 0; i < n; i++) {
        struct cfg_addr a;
        uint32_t ms;
        if (cfg_parse_addr(line[i], true, 0, &a) == 0)
            check_addr(&a, true);
        if (cfg_parse_addr(line[i], false, 5432, &a) == 0)
            check_addr(&a, false);
        if (cfg_parse_duration_ms(line[i], &ms) == 0) {
            char text[32];
            uint32_t back = 0;
            snprintf(text, sizeof text, "%ums", (unsigned)ms);
            FUZZ_CHECK(cfg_parse_duration_ms(text, &back) == 0 && back == ms, "%s", text);
        }
    }
    /* --listen --upstream --protocol --bundle --server-name; a missing line is a missing flag */
    struct cfg c;
    char err[1024];
    cfg_init(&c);
    if (cfg_add_cli_listener(&c, line[0], line[1], line[2], line[3], line[4], err, sizeof err) ==
        0) {
        check_loaded(&c);
        if (cfg_finish(&c, err, sizeof err) == 0)
            FUZZ_CHECK(c.workers >= 1 && c.listener_count >= 1, "cfg_finish");
    } else {
        FUZZ_CHECK(memchr(err, '\0', sizeof err) != NULL && c.listener_count == 0, "cli error");
    }
    cfg_free(&c);
    free(buf);
}

static struct cfg base;

static void setup_once(void)
{
    static bool done;
    char err[1024];
    struct input_file f;
    if (done)
        return;
    done = true;
    input_open(&f, (const uint8_t *)base_ini, sizeof base_ini - 1);
    cfg_init(&base);
    FUZZ_CHECK(cfg_load_file(&base, f.path, err, sizeof err) == 0, "base config: %s", err);
    input_close(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct input_file f;
    struct cfg c;
    char err[1024];

    setup_once();
    input_open(&f, data, size);

    /* Alone, as at start. */
    cfg_init(&c);
    memset(err, 0, sizeof err);
    if (cfg_load_file(&c, f.path, err, sizeof err) == 0) {
        FUZZ_CHECK(strcmp(c.source, f.path) == 0, "source");
        check_loaded(&c);
        if (cfg_finish(&c, err, sizeof err) == 0)
            FUZZ_CHECK(c.workers >= 1 && c.workers <= 256, "workers %u", c.workers);
    } else {
        check_error(err, sizeof err, f.path);
        FUZZ_CHECK(c.listener_count == 0 && c.listeners == NULL, "failed load kept listeners");
    }
    cfg_free(&c);

    /* On top of a loaded configuration, as on a reload: a failure changes nothing. */
    struct cfg before;
    memcpy(&before, &base, sizeof base);
    memcpy(&c, &base, sizeof base);
    c.listeners = malloc(base.listener_count * sizeof *c.listeners);
    FUZZ_CHECK(c.listeners != NULL, "out of memory");
    memcpy(c.listeners, base.listeners, base.listener_count * sizeof *c.listeners);
    struct cfg_listener *mine = c.listeners;
    before.listeners = mine;
    if (cfg_load_file(&c, f.path, err, sizeof err) == 0) {
        check_loaded(&c);
        FUZZ_CHECK(c.listener_count >= base.listener_count, "listeners lost on reload");
        for (size_t i = 0; i < base.listener_count; i++)
            FUZZ_CHECK(same_listener(&c.listeners[i], &base.listeners[i]),
                       "listener %zu changed by the new file", i);
    } else {
        check_error(err, sizeof err, f.path);
        FUZZ_CHECK(memcmp(&c, &before, sizeof c) == 0, "a failed load changed the configuration");
        FUZZ_CHECK(memcmp(mine, base.listeners, base.listener_count * sizeof *mine) == 0,
                   "a failed load changed a listener");
    }
    cfg_free(&c);
    input_close(&f);

    one_values(data, size);
    return 0;
}
