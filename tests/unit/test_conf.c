/* conf/: value parsers, the INI loader (errors with file:line), the command-line form, and the
 * final checks. Config fixtures are written into a fresh mkdtemp directory per test. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfg.h"
#include "cfg_internal.h"

static char dir[64];
static char written[16][128];
static size_t written_count;
static char path[128]; /* the last fixture written */

static void make_dir(void)
{
    dbt_strlcpy(dir, "/tmp/dbtrust-test-conf-XXXXXX", sizeof dir);
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    for (size_t i = 0; i < written_count; i++)
        unlink(written[i]);
    rmdir(dir);
}

TestSuite(conf, .init = make_dir, .fini = remove_dir);

/* Writes text (byte-exact) to DIR/name and remembers the path in `path`. */
static const char *fixture(const char *name, const char *text)
{
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    cr_assert_eq(fclose(f), 0);
    cr_assert(written_count < 16);
    dbt_strlcpy(written[written_count++], path, sizeof written[0]);
    return path;
}

static int load(struct cfg *c, const char *text, char *err, size_t n)
{
    cfg_init(c);
    return cfg_load_file(c, fixture("dbtrust.ini", text), err, n);
}

/* The file must fail with exactly "PATH" + suffix, e.g. ":7: key 'x': why". */
static void expect_error(const char *text, const char *suffix)
{
    struct cfg c;
    char err[1024] = "", want[1024];

    cr_assert_eq(load(&c, text, err, sizeof err), -1, "accepted: %s", text);
    snprintf(want, sizeof want, "%s%s", path, suffix);
    cr_assert_str_eq(err, want);
    cr_assert_eq(c.listener_count, 0);
    cfg_free(&c);
}

static void expect_load(struct cfg *c, const char *text)
{
    char err[1024] = "";
    int rc = load(c, text, err, sizeof err);
    cr_assert_eq(rc, 0, "rejected: %s", err);
}

static const char design_example[] =
    "[dbtrust]\n"
    "admin = 127.0.0.1:9187        ; /metrics /healthz /readyz /bundle, POST /reload; off if "
    "absent\n"
    "workers = 0                   ; 0 = number of CPUs\n"
    "log_format = text             ; text | json\n"
    "log_level = info\n"
    "drain_timeout = 30s           ; SIGTERM: stop accepting, let live connections finish this "
    "long\n"
    "user = dbtrust                ; drop privileges after binding when started as root\n"
    "\n"
    "[trust]\n"
    "bundle = /etc/dbtrust/ca-bundle.pem   ; combined PEM bundle, watched and hot-reloaded\n"
    "verify = full                          ; full | ca\n"
    "min_tls = 1.2\n"
    "reload_interval = 10s                  ; content-hash poll, in addition to the directory "
    "watch and SIGHUP\n"
    "guard = on                             ; refuse a bundle that would not verify a live "
    "upstream's current chain\n"
    "; pin = sha256/BASE64SPKI, ...         ; optional, in addition to chain verification\n"
    "\n"
    "[listener.orders]\n"
    "protocol = postgres                    ; postgres | mysql\n"
    "listen = 127.0.0.1:5432\n"
    "upstream = orders.postgres.database.azure.com:5432   ; or a list: a:5432, b:5432 (tried in "
    "order)\n"
    "; server_name = ...                    ; name to verify/SNI when upstream is an IP\n"
    "; bundle = ...                         ; per-listener override of [trust] bundle\n"
    "connect_timeout = 5s\n"
    "handshake_timeout = 10s\n"
    "upstream_dead_timeout = 60s            ; keepalive + TCP_USER_TIMEOUT on the upstream "
    "socket\n"
    "startup_timeout = 10s                  ; client must finish its startup packets within "
    "this\n"
    "max_connections = 1000                 ; beyond it: PostgreSQL 53300 / MySQL 1040 to the "
    "client\n"
    "; mysql_rsa_key = /etc/dbtrust/rsa.pem ; caching_sha2 bridge key (generated at start if "
    "absent)\n"
    "\n"
    "[listener.legacy-mysql]\n"
    "protocol = mysql\n"
    "listen = unix:/run/dbtrust/mysql.sock  ; or host:port\n"
    "upstream = legacy.mysql.database.azure.com:3306\n";

static void assert_addr(const struct cfg_addr *a, const char *host, unsigned port, bool is_unix)
{
    cr_assert_str_eq(a->host, host);
    cr_assert_eq(a->port, port, "port %u, want %u", (unsigned)a->port, port);
    cr_assert_eq(a->is_unix, is_unix);
}

/* ---- the whole file ---- */

Test(conf, design_example_parses_to_expected_values)
{
    struct cfg c;
    char err[512];

    expect_load(&c, design_example);
    cr_assert_str_eq(c.source, path);
    cr_assert(c.admin_enabled);
    assert_addr(&c.admin, "127.0.0.1", 9187, false);
    cr_assert_eq(c.workers, 0);
    cr_assert_eq(c.log_format, CFG_LOG_TEXT);
    cr_assert_eq(c.log_level, CFG_LOG_INFO);
    cr_assert_eq(c.drain_timeout_ms, 30000);
    cr_assert_eq(c.shutdown_delay_ms, 0, "no delay unless asked for");
    cr_assert_str_eq(c.user, "dbtrust");
    cr_assert_str_eq(c.bundle, "/etc/dbtrust/ca-bundle.pem");
    cr_assert_eq(c.verify, CFG_VERIFY_FULL);
    cr_assert_eq(c.min_tls, 12);
    cr_assert_eq(c.reload_interval_ms, 10000);
    cr_assert(c.guard);
    cr_assert_str_eq(c.pins, "");

    cr_assert_eq(c.listener_count, 2);
    const struct cfg_listener *o = &c.listeners[0], *m = &c.listeners[1];
    cr_assert_str_eq(o->name, "orders");
    cr_assert_eq(o->line, 17);
    cr_assert_eq(o->protocol, CFG_PROTO_POSTGRES);
    assert_addr(&o->listen, "127.0.0.1", 5432, false);
    cr_assert_eq(o->upstream_count, 1);
    assert_addr(&o->upstream[0], "orders.postgres.database.azure.com", 5432, false);
    cr_assert_str_eq(o->server_name, "");
    cr_assert_str_eq(o->bundle, "");
    cr_assert_eq(o->connect_timeout_ms, 5000);
    cr_assert_eq(o->handshake_timeout_ms, 10000);
    cr_assert_eq(o->upstream_dead_timeout_ms, 60000);
    cr_assert_eq(o->startup_timeout_ms, 10000);
    cr_assert_eq(o->max_connections, 1000);
    cr_assert_str_eq(o->mysql_rsa_key, "");

    cr_assert_str_eq(m->name, "legacy-mysql");
    cr_assert_eq(m->line, 30);
    cr_assert_eq(m->protocol, CFG_PROTO_MYSQL);
    assert_addr(&m->listen, "/run/dbtrust/mysql.sock", 0, true);
    cr_assert_eq(m->upstream_count, 1);
    assert_addr(&m->upstream[0], "legacy.mysql.database.azure.com", 3306, false);
    cr_assert_eq(m->connect_timeout_ms, 5000, "listener defaults apply");

    cr_assert_eq(cfg_finish(&c, err, sizeof err), 0, "%s", err);
    cfg_free(&c);
    cr_assert_null(c.listeners);
    cr_assert_eq(c.listener_count, 0);
}

Test(conf, every_key_with_non_default_values)
{
    static const char pin1[] = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    static const char pin2[] = "sha256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=";
    char text[2048];
    struct cfg c;

    snprintf(text, sizeof text,
             "[dbtrust]\nadmin = [::1]:9999\nworkers = 4\nlog_format = JSON\nlog_level = debug\n"
             "drain_timeout = 0\nshutdown_delay = 5s\nuser = nobody\n"
             "[trust]\nbundle = /b.pem\nverify = ca\nmin_tls = 1.3\nreload_interval = 500ms\n"
             "guard = off\npin = %s, %s\n"
             "[listener.a_1.x]\nprotocol = postgresql\nlisten = [::]:6432\n"
             "upstream = 10.0.0.7\nserver_name = db.internal\nbundle = /own.pem\n"
             "connect_timeout = 2m\nhandshake_timeout = 1h\nupstream_dead_timeout = 7\n"
             "startup_timeout = 1500ms\nmax_connections = 1000000\n"
             "upstream_connect_limit = 5\n",
             pin1, pin2);
    expect_load(&c, text);
    cr_assert(c.admin_enabled);
    assert_addr(&c.admin, "::1", 9999, false);
    cr_assert_eq(c.workers, 4);
    cr_assert_eq(c.log_format, CFG_LOG_JSON);
    cr_assert_eq(c.log_level, CFG_LOG_DEBUG);
    cr_assert_eq(c.drain_timeout_ms, 0);
    cr_assert_eq(c.shutdown_delay_ms, 5000);
    cr_assert_str_eq(c.user, "nobody");
    cr_assert_str_eq(c.bundle, "/b.pem");
    cr_assert_eq(c.verify, CFG_VERIFY_CA);
    cr_assert_eq(c.min_tls, 13);
    cr_assert_eq(c.reload_interval_ms, 500);
    cr_assert_not(c.guard);
    char pins[256];
    snprintf(pins, sizeof pins, "%s, %s", pin1, pin2);
    cr_assert_str_eq(c.pins, pins);

    const struct cfg_listener *l = &c.listeners[0];
    cr_assert_str_eq(l->name, "a_1.x");
    cr_assert_eq(l->protocol, CFG_PROTO_POSTGRES);
    assert_addr(&l->listen, "::", 6432, false);
    assert_addr(&l->upstream[0], "10.0.0.7", 5432, false);
    cr_assert_str_eq(l->server_name, "db.internal");
    cr_assert_str_eq(l->bundle, "/own.pem");
    cr_assert_eq(l->connect_timeout_ms, 120000);
    cr_assert_eq(l->handshake_timeout_ms, 3600000);
    cr_assert_eq(l->upstream_dead_timeout_ms, 7000);
    cr_assert_eq(l->startup_timeout_ms, 1500);
    cr_assert_eq(l->max_connections, 1000000);
    cr_assert_eq(l->upstream_connect_limit, 5);
    cfg_free(&c);
}

Test(conf, defaults)
{
    struct cfg c;
    struct cfg_listener l;

    cfg_init(&c);
    cr_assert_str_eq(c.source, "command line");
    cr_assert_not(c.admin_enabled);
    cr_assert_eq(c.workers, 0);
    cr_assert_eq(c.log_format, CFG_LOG_TEXT);
    cr_assert_eq(c.log_level, CFG_LOG_INFO);
    cr_assert_eq(c.drain_timeout_ms, 30000);
    cr_assert_eq(c.shutdown_delay_ms, 0);
    cr_assert_str_eq(c.user, "");
    cr_assert_eq(c.verify, CFG_VERIFY_FULL);
    cr_assert_eq(c.min_tls, 12);
    cr_assert_eq(c.reload_interval_ms, 10000);
    cr_assert(c.guard);
    cr_assert_eq(c.listener_count, 0);
    cfg_listener_init(&l);
    cr_assert_eq(l.connect_timeout_ms, 5000);
    cr_assert_eq(l.handshake_timeout_ms, 10000);
    cr_assert_eq(l.upstream_dead_timeout_ms, 60000);
    cr_assert_eq(l.startup_timeout_ms, 10000);
    cr_assert_eq(l.max_connections, 1000);
    cr_assert_eq(l.upstream_connect_limit, 64);
    cr_assert_eq(l.client_tls, CFG_CLIENT_TLS_OFF);
    cr_assert_eq(l.client_allow_count, 0);
    cr_assert_eq(l.sslnegotiation, CFG_SSLNEG_POSTGRES);
    cfg_free(&c);
}

/* ---- file syntax ---- */

Test(conf, comments_indentation_crlf_and_bom)
{
    struct cfg c;
    /* Debian's inih would read the indented "  workers" as a continuation of "user". */
    expect_load(&c, "\xEF\xBB\xBF[dbtrust]\r\n"
                    "# a comment\r\n"
                    "  user = nobody   # inline hash comment\r\n"
                    "  workers = 3\t; inline semicolon comment\r\n"
                    "\tlog_level = warn\r\n"
                    "[trust] ; after a header\r\n"
                    "bundle = /a;b#c.pem\r\n");
    cr_assert_str_eq(c.user, "nobody");
    cr_assert_eq(c.workers, 3);
    cr_assert_eq(c.log_level, CFG_LOG_WARN);
    cr_assert_str_eq(c.bundle, "/a;b#c.pem", "only a blank before ';'/'#' starts a comment");
    cfg_free(&c);
}

Test(conf, lines_longer_than_inih_buffer)
{
    char text[4096];
    struct cfg c;
    int used = snprintf(text, sizeof text,
                        "[listener.long]\nprotocol = mysql\nlisten = "
                        "127.0.0.1:3306\nupstream = ");
    for (int i = 0; i < CFG_MAX_UPSTREAMS; i++)
        used += snprintf(text + used, sizeof text - (size_t)used,
                         "%sreplica-%d.mysql.database.azure.com", i ? " , " : "", i);
    snprintf(text + used, sizeof text - (size_t)used, "   ; eight of them\nmax_connections = 9\n");
    cr_assert_gt(strlen(strchr(text, 'u')), 300);

    expect_load(&c, text);
    cr_assert_eq(c.listeners[0].upstream_count, CFG_MAX_UPSTREAMS);
    assert_addr(&c.listeners[0].upstream[7], "replica-7.mysql.database.azure.com", 3306, false);
    cr_assert_eq(c.listeners[0].max_connections, 9, "line count stays right after a long line");
    cfg_free(&c);

    memset(text, 0, sizeof text);
    memcpy(text, "[dbtrust]\n", 10);
    memset(text + 10, 'x', 300);
    strcat(text, "\n");
    expect_error(text, ":2: line too long");
}

Test(conf, syntax_error_has_its_line)
{
    expect_error("[dbtrust]\nworkers = 2\n\nnot a key value line\n",
                 ":4: expected 'key = value' or '[section]'");
    expect_error("[dbtrust\nworkers = 2\n", ":1: invalid section header (expected [name])");
    expect_error("workers = 2\n", ":1: key 'workers' outside of a section (start with [dbtrust], "
                                  "[trust] or [listener.NAME])");
    expect_error("[trust]\nbundle = /x\x02y\n", ":2: control character in line");
}

Test(conf, unknown_key_and_section_have_line_numbers)
{
    expect_error("[dbtrust]\nworkers = 1\n\n[listener.orders]\nprotocol = postgres\n; c\n"
                 "listen = 127.0.0.1:5432\nupstream = db:5432\n\n\n\nfoo = 1\n",
                 ":12: unknown key 'foo' in [listener.orders]");
    expect_error("[dbtrust]\nbundle = /x.pem\n", ":2: unknown key 'bundle' in [dbtrust]");
    expect_error("; top\n\n[trust]\nbundle = /x\n[tls]\nmin = 1\n",
                 ":5: unknown section [tls] (expected [dbtrust], [trust] or [listener.NAME])");
    expect_error("[Trust]\n", ":1: unknown section [Trust] (expected [dbtrust], [trust] or "
                              "[listener.NAME])");
}

/* shutdown_delay: a duration like drain_timeout; 0 (the default) keeps the old behaviour of
 * draining as soon as SIGTERM arrives, so it is allowed explicitly too. */
Test(conf, shutdown_delay_values)
{
    static const struct {
        const char *text;
        uint32_t ms;
    } ok[] = {{"0", 0}, {"0s", 0}, {"500ms", 500}, {"5s", 5000}, {"2m", 120000}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char text[256];
        struct cfg c;
        snprintf(text, sizeof text, "[dbtrust]\nshutdown_delay = %s\n[trust]\nbundle = /b.pem\n",
                 ok[i].text);
        expect_load(&c, text);
        cr_assert_eq(c.shutdown_delay_ms, ok[i].ms, "%s", ok[i].text);
        cfg_free(&c);
    }
    expect_error("[dbtrust]\n\nshutdown_delay = soon\n",
                 ":3: key 'shutdown_delay': invalid duration 'soon' (use e.g. 5s, 500ms)");
    expect_error("[dbtrust]\nshutdown_delay = -1s\n",
                 ":2: key 'shutdown_delay': invalid duration '-1s' (use e.g. 5s, 500ms)");
    expect_error("[listener.x]\nshutdown_delay = 5s\n",
                 ":2: unknown key 'shutdown_delay' in [listener.x]");
}

Test(conf, bad_values_name_key_and_line)
{
    expect_error("[listener.x]\nprotocol = postgres\nlisten = 127.0.0.1:1\nupstream = db\n"
                 "\n\nconnect_timeout = abc\n",
                 ":7: key 'connect_timeout': invalid duration 'abc' (use e.g. 5s, 500ms)");
    expect_error("[listener.x]\nconnect_timeout = 0s\n",
                 ":2: key 'connect_timeout': must be greater than 0");
    expect_error("[listener.x]\nprotocol = pg\n",
                 ":2: key 'protocol': invalid protocol 'pg' (use postgres or mysql)");
    expect_error("[dbtrust]\nworkers = 257\n", ":2: key 'workers': 257 is out of range (0-256)");
    expect_error("[dbtrust]\nlog_level = loud\n",
                 ":2: key 'log_level': invalid log_level 'loud' (use debug or info or warn or "
                 "error)");
    expect_error("[trust]\nmin_tls = 1.1\n",
                 ":2: key 'min_tls': invalid min_tls '1.1' (use 1.2 or 1.3)");
    expect_error("[trust]\nguard = maybe\n",
                 ":2: key 'guard': invalid boolean 'maybe' (use on/off, true/false, yes/no, 1/0)");
    expect_error("[trust]\npin = sha256/short\n", ":2: key 'pin': invalid pin 'sha256/short' "
                                                  "(use sha256/BASE64 of the SPKI digest)");
    expect_error("[dbtrust]\nadmin = :9187\n",
                 ":2: key 'admin': invalid address ':9187': missing host (use host:port)");
    expect_error("[dbtrust]\nadmin = unix:/run/a.sock\n",
                 ":2: key 'admin': invalid address 'unix:/run/a.sock': unix sockets are only for "
                 "listen");
    expect_error("[listener.x]\nlisten = 127.0.0.1\n",
                 ":2: key 'listen': invalid address '127.0.0.1': missing port (use host:port)");
    expect_error("[listener.x]\nmax_connections = 0\n",
                 ":2: key 'max_connections': 0 is out of range (1-1000000)");
    expect_error("[listener.x]\nupstream_connect_limit = 0\n",
                 ":2: key 'upstream_connect_limit': 0 is out of range (1-100000)");
    expect_error("[dbtrust]\nuser =\n",
                 ":2: key 'user': empty value (remove the line for the default)");
}

Test(conf, duplicates_are_errors)
{
    expect_error("[dbtrust]\nworkers = 1\nworkers = 2\n",
                 ":3: key 'workers': already set at line 2");
    expect_error("[trust]\nbundle = /a\n[dbtrust]\n[trust]\n",
                 ":4: duplicate section [trust] (first at line 1)");
    expect_error("[trust]\nbundle = /a\n"
                 "[listener.pg]\nprotocol = postgres\nlisten = 127.0.0.1:5432\nupstream = a\n"
                 "[listener.pg]\nprotocol = postgres\nlisten = 127.0.0.1:5433\nupstream = b\n",
                 ":7: duplicate listener name 'pg' (first at line 3)");
    expect_error("[listener.pg]\nprotocol = postgres\nlisten = 127.0.0.1:5432\nupstream = a\n"
                 "[listener.my]\nprotocol = mysql\nupstream = b\nlisten = 127.0.0.1:5432\n",
                 ":8: key 'listen': 127.0.0.1:5432 is already used by [listener.pg]");
    expect_error("[listener.pg]\nprotocol = postgres\nlisten = 0.0.0.0:5432\nupstream = a\n"
                 "[listener.my]\nprotocol = mysql\nupstream = b\nlisten = 127.0.0.1:5432\n",
                 ":8: key 'listen': 127.0.0.1:5432 is already used by [listener.pg]");
    expect_error("[listener.a]\nprotocol = mysql\nlisten = unix:/run/s\nupstream = a\n"
                 "[listener.b]\nprotocol = mysql\nlisten = unix:/run/s\nupstream = b\n",
                 ":7: key 'listen': unix:/run/s is already used by [listener.a]");
}

Test(conf, missing_keys_name_the_section_line)
{
    expect_error("[trust]\nbundle = /a\n\n[listener.x]\nprotocol = mysql\nlisten = 127.0.0.1:1\n",
                 ":4: [listener.x]: missing key 'upstream'");
    expect_error("[listener.x]\nlisten = 127.0.0.1:1\nupstream = a\n[trust]\n",
                 ":1: [listener.x]: missing key 'protocol'");
    expect_error("[dbtrust]\n[listener.empty]\n", ":2: [listener.empty]: missing key 'protocol'");
    expect_error("[listener.x]\nprotocol = mysql\nupstream = a\n",
                 ":1: [listener.x]: missing key 'listen'");
}

Test(conf, listener_names_and_protocol_specific_keys)
{
    expect_error("[listener.]\n", ":1: invalid listener name '' (1-63 of A-Z a-z 0-9 _ . -)");
    expect_error("[listener.a b]\n", ":1: invalid listener name 'a b' (1-63 of A-Z a-z 0-9 _ . -)");
    expect_error("[listener.pg]\nprotocol = postgres\nlisten = 127.0.0.1:5432\nupstream = a\n"
                 "mysql_rsa_key = /k.pem\n",
                 ":5: key 'mysql_rsa_key': only valid with protocol = mysql");
}

Test(conf, ipv6_unix_and_upstream_list_with_default_ports)
{
    struct cfg c;
    expect_load(&c, "[listener.pg]\nupstream = a.example.com, [2001:db8::5]:6000 ,10.1.2.3\n"
                    "listen = [::1]:15432\nprotocol = postgres\n"
                    "[listener.my]\nprotocol = mysql\nlisten = unix:/tmp/my.sock\n"
                    "upstream = m1,m2:3307,[fd00::1]\n");
    const struct cfg_listener *pg = &c.listeners[0], *my = &c.listeners[1];
    assert_addr(&pg->listen, "::1", 15432, false);
    cr_assert_eq(pg->upstream_count, 3);
    assert_addr(&pg->upstream[0], "a.example.com", 5432, false);
    assert_addr(&pg->upstream[1], "2001:db8::5", 6000, false);
    assert_addr(&pg->upstream[2], "10.1.2.3", 5432, false);
    assert_addr(&my->listen, "/tmp/my.sock", 0, true);
    cr_assert_eq(my->upstream_count, 3);
    assert_addr(&my->upstream[0], "m1", 3306, false);
    assert_addr(&my->upstream[1], "m2", 3307, false);
    assert_addr(&my->upstream[2], "fd00::1", 3306, false);
    cfg_free(&c);

    expect_error("[listener.x]\nupstream = unix:/run/db.sock\n",
                 ":2: key 'upstream': invalid address 'unix:/run/db.sock': unix sockets are only "
                 "for listen");
    expect_error("[listener.x]\nupstream = a:1,,b:2\n",
                 ":2: key 'upstream': empty entry in upstream list");
    expect_error("[listener.x]\nupstream = a,b,c,d,e,f,g,h,i\n",
                 ":2: key 'upstream': too many upstreams (max 8)");
}

Test(conf, missing_file)
{
    struct cfg c;
    char err[512], want[512];

    cfg_init(&c);
    snprintf(path, sizeof path, "%s/absent.ini", dir);
    cr_assert_eq(cfg_load_file(&c, path, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: cannot open: No such file or directory", path);
    cr_assert_str_eq(err, want);
}

Test(conf, failed_load_leaves_config_unchanged)
{
    struct cfg c;
    char err[512];

    cfg_init(&c);
    cr_assert_eq(
        cfg_add_cli_listener(&c, "127.0.0.1:7000", "db", "mysql", "/ca.pem", NULL, err, sizeof err),
        0, "%s", err);
    c.workers = 5;
    cr_assert_eq(cfg_load_file(&c,
                               fixture("bad.ini", "[dbtrust]\nworkers = 9\n[listener.q]\n"
                                                  "protocol = mysql\nlisten = 127.0.0.1:7001\n"
                                                  "upstream = x\nbogus = 1\n"),
                               err, sizeof err),
                 -1);
    cr_assert_eq(c.workers, 5);
    cr_assert_eq(c.listener_count, 1);
    cr_assert_str_eq(c.listeners[0].name, "default");
    cr_assert_str_eq(c.source, "command line");

    /* A good file adds its listeners after the existing one, and checks clashes with it. */
    cr_assert_eq(cfg_load_file(&c,
                               fixture("good.ini", "[listener.q]\nprotocol = mysql\n"
                                                   "listen = 127.0.0.1:7000\nupstream = x\n"),
                               err, sizeof err),
                 -1);
    cr_assert(strstr(err, ":3: key 'listen': 127.0.0.1:7000 is already used by "
                          "[listener.default]"),
              "%s", err);
    cfg_free(&c);
}

/* ---- the client leg (client_tls, client_cert, client_key, client_ca, client_names,
 * client_allow) ---- */

#define PG_LISTENER   "[listener.x]\nprotocol = postgres\nlisten = 127.0.0.1:5432\nupstream = db\n"
#define UNIX_LISTENER "[listener.u]\nprotocol = mysql\nlisten = unix:/run/u.sock\nupstream = db\n"

Test(conf, client_leg_every_key)
{
    struct cfg c;

    expect_load(&c, "[trust]\nbundle = /ca.pem\n"
                    "[listener.central]\n"
                    "protocol = postgres\n"
                    "listen = 0.0.0.0:5432\n"
                    "upstream = db\n"
                    "client_allow = 10.0.0.0/8, fd00::/8\n"
                    "client_names = app1.internal, CN=legacy-batch\n"
                    "client_tls = require\n"
                    "client_cert = /etc/dbtrust/tls/tls.crt\n"
                    "client_key = /etc/dbtrust/tls/tls.key\n"
                    "client_ca = /etc/dbtrust/clients-ca.pem\n"
                    "[listener.plain]\n"
                    "protocol = mysql\n"
                    "listen = 127.0.0.1:3306\n"
                    "upstream = db\n");
    const struct cfg_listener *l = &c.listeners[0], *p = &c.listeners[1];
    cr_assert_eq(l->client_tls, CFG_CLIENT_TLS_REQUIRE);
    cr_assert_str_eq(l->client_cert, "/etc/dbtrust/tls/tls.crt");
    cr_assert_str_eq(l->client_key, "/etc/dbtrust/tls/tls.key");
    cr_assert_str_eq(l->client_ca, "/etc/dbtrust/clients-ca.pem");
    cr_assert_str_eq(l->client_names, "app1.internal, CN=legacy-batch", "kept raw");
    cr_assert_eq(l->client_allow_count, 2);
    cr_assert_eq(l->client_allow[0].family, AF_INET);
    cr_assert_eq(l->client_allow[0].prefix, 8);
    cr_assert_eq(memcmp(l->client_allow[0].addr, "\x0a\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16), 0);
    cr_assert_eq(l->client_allow[1].family, AF_INET6);
    cr_assert_eq(l->client_allow[1].prefix, 8);
    cr_assert_eq(memcmp(l->client_allow[1].addr, "\xfd\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16), 0);
    cr_assert_eq(l->client_tls_line, 9);
    cr_assert_eq(l->client_cert_line, 10);
    cr_assert_eq(l->client_key_line, 11);
    cr_assert_eq(l->client_ca_line, 12);

    /* The defaults: off, nothing set, every address, no lines. */
    cr_assert_eq(p->client_tls, CFG_CLIENT_TLS_OFF);
    cr_assert_str_eq(p->client_cert, "");
    cr_assert_str_eq(p->client_key, "");
    cr_assert_str_eq(p->client_ca, "");
    cr_assert_str_eq(p->client_names, "");
    cr_assert_eq(p->client_allow_count, 0);
    cr_assert_eq(p->client_tls_line + p->client_cert_line + p->client_key_line + p->client_ca_line,
                 0);
    cfg_free(&c);
}

Test(conf, client_leg_valid_combinations)
{
    struct cfg c;

    /* allow, one file for both certificate and key (OpenSSL reads both from it), no client CA */
    expect_load(&c,
                PG_LISTENER "client_tls = Allow\nclient_cert = /tls.pem\nclient_key = /tls.pem\n");
    cr_assert_eq(c.listeners[0].client_tls, CFG_CLIENT_TLS_ALLOW);
    cr_assert_eq(c.listeners[0].client_ca_line, 0);
    cfg_free(&c);
    /* a client CA without names: any certificate it verified is accepted */
    expect_load(&c, PG_LISTENER "client_tls = require\nclient_cert = /c\nclient_key = /k\n"
                                "client_ca = /ca\n");
    cr_assert_str_eq(c.listeners[0].client_names, "");
    cr_assert_eq(c.listeners[0].client_ca_line, 8);
    cfg_free(&c);
    /* client_allow needs no TLS; client_tls = off said out loud is the default */
    expect_load(&c, PG_LISTENER "client_tls = off\nclient_allow = 192.0.2.7\n");
    cr_assert_eq(c.listeners[0].client_tls, CFG_CLIENT_TLS_OFF);
    cr_assert_eq(c.listeners[0].client_tls_line, 5);
    cr_assert_eq(c.listeners[0].client_allow_count, 1);
    cr_assert_eq(c.listeners[0].client_allow[0].prefix, 32, "a bare address is one host");
    cfg_free(&c);
    /* a Unix socket listener may say client_tls = off */
    expect_load(&c, UNIX_LISTENER "client_tls = off\n");
    cfg_free(&c);
}

Test(conf, client_leg_cli_listener_has_no_lines)
{
    struct cfg c;
    char err[512];

    cfg_init(&c);
    cr_assert_eq(cfg_add_cli_listener(&c, "127.0.0.1:5432", "db", "postgres", "/ca.pem", NULL, err,
                                      sizeof err),
                 0, "%s", err);
    const struct cfg_listener *l = &c.listeners[0];
    cr_assert_eq(l->client_tls, CFG_CLIENT_TLS_OFF);
    cr_assert_eq(l->client_allow_count, 0);
    cr_assert_eq(l->client_tls_line + l->client_cert_line + l->client_key_line + l->client_ca_line,
                 0);
    cfg_free(&c);
}

Test(conf, client_leg_keys_that_need_each_other)
{
    expect_error(PG_LISTENER "client_tls = require\n",
                 ":5: key 'client_tls': needs client_cert and client_key (the certificate chain "
                 "dbtrust presents to clients, and its private key)");
    expect_error(PG_LISTENER "client_tls = allow\nclient_cert = /c\n",
                 ":5: key 'client_tls': needs client_key (the private key of client_cert)");
    expect_error(PG_LISTENER "client_key = /k\n\nclient_tls = require\n",
                 ":7: key 'client_tls': needs client_cert (the certificate chain dbtrust presents "
                 "to clients)");
    expect_error(PG_LISTENER "client_cert = /c\n",
                 ":5: key 'client_cert': has no effect without client_tls = allow or require");
    expect_error(PG_LISTENER "client_tls = off\nclient_key = /k\n",
                 ":6: key 'client_key': has no effect without client_tls = allow or require");
    expect_error(PG_LISTENER "client_ca = /ca\n",
                 ":5: key 'client_ca': has no effect without client_tls = allow or require");
    expect_error(PG_LISTENER "client_names = app1.internal\n",
                 ":5: key 'client_names': has no effect without client_tls = allow or require");
    expect_error(PG_LISTENER "client_tls = require\nclient_cert = /c\nclient_key = /k\n"
                             "client_names = app1.internal\n",
                 ":8: key 'client_names': needs client_ca (names are only checked on verified "
                 "client certificates)");
    expect_error(UNIX_LISTENER "client_tls = require\nclient_cert = /c\nclient_key = /k\n",
                 ":5: key 'client_tls': not available on a unix: listener (a Unix socket is local; "
                 "its file permissions guard it)");
    expect_error(UNIX_LISTENER "\nclient_allow = 10.0.0.0/8\n",
                 ":6: key 'client_allow': not available on a unix: listener (a Unix socket is "
                 "local; its file permissions guard it)");
    /* The check runs when the section ends: a later listen = unix: is seen too. */
    expect_error("[listener.u]\nprotocol = mysql\nupstream = db\nclient_allow = 10.0.0.0/8\n"
                 "listen = unix:/run/u.sock\n[trust]\n",
                 ":4: key 'client_allow': not available on a unix: listener (a Unix socket is "
                 "local; its file permissions guard it)");
}

Test(conf, client_leg_bad_values)
{
    expect_error(PG_LISTENER "client_tls = on\n",
                 ":5: key 'client_tls': invalid client_tls 'on' (use off or allow or require)");
    expect_error(PG_LISTENER "client_tls = allow\nclient_tls = require\n",
                 ":6: key 'client_tls': already set at line 5");
    expect_error(PG_LISTENER "client_allow = 10.0.0.1/8\n",
                 ":5: key 'client_allow': 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?");
    expect_error(PG_LISTENER "client_allow = 10.0.0.0/33\n",
                 ":5: key 'client_allow': invalid prefix length in '10.0.0.0/33' (0-32 for IPv4)");
    expect_error(PG_LISTENER "client_allow = 10.0.0.0/8, 10.0.0.256\n",
                 ":5: key 'client_allow': invalid address '10.0.0.256' (use e.g. 10.0.0.0/8, "
                 "192.0.2.7 or fd00::/8)");
    expect_error(PG_LISTENER "client_allow = 10.0.0.0/8,,fd00::/8\n",
                 ":5: key 'client_allow': empty entry in client_allow list");
    expect_error(PG_LISTENER "client_names = app1.internal, app 2\n",
                 ":5: key 'client_names': invalid client name 'app 2' (use CN=NAME, a DNS name or "
                 "a URI, without blanks)");
}

Test(conf, client_allow_too_many_entries)
{
    char list[2048], text[2400];
    int used = 0;
    struct cfg c;

    for (int i = 0; i < CFG_MAX_CLIENT_ALLOW; i++)
        used +=
            snprintf(list + used, sizeof list - (size_t)used, "%s10.0.%d.0/24", i ? ", " : "", i);
    snprintf(text, sizeof text, PG_LISTENER "client_allow = %s\nmax_connections = 7\n", list);
    expect_load(&c, text);
    cr_assert_eq(c.listeners[0].client_allow_count, CFG_MAX_CLIENT_ALLOW);
    cr_assert_eq(c.listeners[0].client_allow[63].addr[2], 63);
    cr_assert_eq(c.listeners[0].max_connections, 7, "a long line keeps the line count");
    cfg_free(&c);

    snprintf(text, sizeof text, PG_LISTENER "client_allow = %s, 192.0.2.1\n", list);
    expect_error(text, ":5: key 'client_allow': too many client_allow entries (max 64)");
}

static void expect_cidr(const char *s, int family, const char *addr, unsigned prefix)
{
    struct cfg_cidr list[CFG_MAX_CLIENT_ALLOW];
    uint8_t want[16] = {0};
    size_t n = 99;
    char why[256] = "";

    cr_assert_eq(cfg_value_client_allow(s, list, &n, why, sizeof why), 0, "%s: %s", s, why);
    cr_assert_eq(n, 1, "%s", s);
    cr_assert_eq(inet_pton(family, addr, want), 1);
    cr_assert_eq(list[0].family, family, "%s", s);
    cr_assert_eq(list[0].prefix, prefix, "%s: prefix %u", s, list[0].prefix);
    cr_assert_eq(memcmp(list[0].addr, want, sizeof want), 0, "%s", s);
}

static void expect_bad_cidr(const char *s, const char *want)
{
    struct cfg_cidr list[CFG_MAX_CLIENT_ALLOW];
    size_t n = 99;
    char why[256] = "";

    cr_assert_eq(cfg_value_client_allow(s, list, &n, why, sizeof why), -1, "accepted '%s'", s);
    cr_assert_str_eq(why, want);
    cr_assert_eq(n, 99, "count untouched on error");
}

#define BAD_ADDR(s) "invalid address '" s "' (use e.g. 10.0.0.0/8, 192.0.2.7 or fd00::/8)"

Test(conf, client_allow_values)
{
    struct cfg_cidr list[CFG_MAX_CLIENT_ALLOW];
    size_t n;
    char why[256];

    expect_cidr("10.0.0.0/8", AF_INET, "10.0.0.0", 8);
    expect_cidr("192.0.2.7", AF_INET, "192.0.2.7", 32);
    expect_cidr("192.0.2.7/32", AF_INET, "192.0.2.7", 32);
    expect_cidr("192.0.2.128/25", AF_INET, "192.0.2.128", 25);
    expect_cidr("0.0.0.0/0", AF_INET, "0.0.0.0", 0);
    expect_cidr("fd00::/8", AF_INET6, "fd00::", 8);
    expect_cidr("2001:db8::/32", AF_INET6, "2001:db8::", 32);
    expect_cidr("2001:DB8:0:0:8000::/65", AF_INET6, "2001:db8:0:0:8000::", 65);
    expect_cidr("::1", AF_INET6, "::1", 128);
    expect_cidr("::/0", AF_INET6, "::", 0);
    expect_cidr("::/96", AF_INET6, "::", 96);
    expect_cidr("  10.1.0.0/16\t", AF_INET, "10.1.0.0", 16);

    cr_assert_eq(cfg_value_client_allow(" 10.0.0.0/8 ,fd00::/8,192.0.2.1, ::1/128 ", list, &n, why,
                                        sizeof why),
                 0, "%s", why);
    cr_assert_eq(n, 4);
    cr_assert_eq(list[3].family, AF_INET6);
    cr_assert_eq(list[3].prefix, 128);

    expect_bad_cidr("10.0.0.1/8", "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?");
    expect_bad_cidr("192.0.2.129/25",
                    "192.0.2.129/25 has host bits set; did you mean 192.0.2.128/25?");
    expect_bad_cidr("10.0.0.1/0", "10.0.0.1/0 has host bits set; did you mean 0.0.0.0/0?");
    expect_bad_cidr("fd00::1/8", "fd00::1/8 has host bits set; did you mean fd00::/8?");
    expect_bad_cidr("2001:db8:0:0:8000::/64",
                    "2001:db8:0:0:8000::/64 has host bits set; did you mean 2001:db8::/64?");
    expect_bad_cidr("10.0.0.0/33", "invalid prefix length in '10.0.0.0/33' (0-32 for IPv4)");
    expect_bad_cidr("fd00::/129", "invalid prefix length in 'fd00::/129' (0-128 for IPv6)");
    expect_bad_cidr("10.0.0.0/", "invalid prefix length in '10.0.0.0/' (0-32 for IPv4)");
    expect_bad_cidr("10.0.0.0/-1", "invalid prefix length in '10.0.0.0/-1' (0-32 for IPv4)");
    expect_bad_cidr("10.0.0.0/ 8", "invalid prefix length in '10.0.0.0/ 8' (0-32 for IPv4)");
    expect_bad_cidr("10.0.0.0/0x8", "invalid prefix length in '10.0.0.0/0x8' (0-32 for IPv4)");
    expect_bad_cidr("10.0.0.0/8/8", "invalid prefix length in '10.0.0.0/8/8' (0-32 for IPv4)");
    expect_bad_cidr("10.0.0.256", BAD_ADDR("10.0.0.256"));
    expect_bad_cidr("10.1/16", BAD_ADDR("10.1/16"));
    expect_bad_cidr("010.0.0.0/8", BAD_ADDR("010.0.0.0/8"));
    expect_bad_cidr("10.0.0.0 /8", BAD_ADDR("10.0.0.0 /8"));
    expect_bad_cidr("db.internal", BAD_ADDR("db.internal"));
    expect_bad_cidr("[fd00::]/8", BAD_ADDR("[fd00::]/8"));
    expect_bad_cidr("fe80::1%eth0", BAD_ADDR("fe80::1%eth0"));
    expect_bad_cidr("/8", BAD_ADDR("/8"));
    expect_bad_cidr("1111:2222:3333:4444:5555:6666:7777:8888:9999/128",
                    BAD_ADDR("1111:2222:3333:4444:5555:6666:7777:8888:9999/128"));
    expect_bad_cidr("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104 is an IPv4-mapped range; write it "
                                           "as 10.0.0.0/8 (clients are matched as IPv4)");
    expect_bad_cidr("::ffff:192.0.2.7", "::ffff:192.0.2.7 is an IPv4-mapped range; write it as "
                                        "192.0.2.7/32 (clients are matched as IPv4)");
    expect_bad_cidr("::ffff:0:0/80", "::ffff:0:0/80 has host bits set; did you mean ::/80?");
    expect_bad_cidr("", "empty entry in client_allow list");
    expect_bad_cidr("10.0.0.0/8,", "empty entry in client_allow list");
    char big[5000];
    memset(big, ' ', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    expect_bad_cidr(big, "client_allow list too long");
}

/* Whether the listener with client_allow = list lets ip in. */
static bool allowed(const char *list, const char *ip)
{
    static struct cfg_listener l;
    uint8_t addr[16];
    char why[256];
    int family = strchr(ip, ':') ? AF_INET6 : AF_INET;

    cfg_listener_init(&l);
    if (list)
        cr_assert_eq(
            cfg_value_client_allow(list, l.client_allow, &l.client_allow_count, why, sizeof why), 0,
            "%s: %s", list, why);
    cr_assert_eq(inet_pton(family, ip, addr), 1, "%s", ip);
    return cfg_client_allowed(&l, family, addr);
}

Test(conf, client_allowed)
{
    /* no list: everyone */
    cr_assert(allowed(NULL, "192.0.2.1"));
    cr_assert(allowed(NULL, "2001:db8::1"));
    cr_assert(allowed(NULL, "::ffff:192.0.2.1"));

    /* IPv4, the edges of the range */
    cr_assert(allowed("10.0.0.0/8", "10.0.0.0"));
    cr_assert(allowed("10.0.0.0/8", "10.255.255.255"));
    cr_assert_not(allowed("10.0.0.0/8", "9.255.255.255"));
    cr_assert_not(allowed("10.0.0.0/8", "11.0.0.0"));
    cr_assert(allowed("10.0.0.0/9", "10.127.255.255"), "a prefix inside a byte");
    cr_assert_not(allowed("10.0.0.0/9", "10.128.0.0"));
    cr_assert_not(allowed("192.0.2.128/25", "192.0.2.127"));
    cr_assert(allowed("192.0.2.128/25", "192.0.2.128"));
    cr_assert(allowed("192.0.2.128/25", "192.0.2.255"));
    cr_assert_not(allowed("192.0.2.128/25", "192.0.3.0"));
    cr_assert(allowed("192.0.2.7", "192.0.2.7"));
    cr_assert_not(allowed("192.0.2.7", "192.0.2.6"));
    cr_assert_not(allowed("192.0.2.7", "192.0.2.8"));
    cr_assert(allowed("192.0.2.6/31", "192.0.2.7"));
    cr_assert_not(allowed("192.0.2.6/31", "192.0.2.8"));

    /* IPv6 */
    cr_assert(allowed("fd00::/8", "fd00::1"));
    cr_assert(allowed("fd00::/8", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    cr_assert_not(allowed("fd00::/8", "fc00::1"));
    cr_assert_not(allowed("fd00::/8", "fe00::"));
    cr_assert(allowed("2001:db8::/33", "2001:db8:7fff:ffff:ffff:ffff:ffff:ffff"));
    cr_assert_not(allowed("2001:db8::/33", "2001:db8:8000::"));
    cr_assert(allowed("2001:db8::/127", "2001:db8::1"));
    cr_assert_not(allowed("2001:db8::/127", "2001:db8::2"));
    cr_assert(allowed("::1", "::1"));
    cr_assert_not(allowed("::1", "::"));
    cr_assert_not(allowed("::1", "::2"));

    /* IPv4-mapped clients (a dual-stack [::] listener) are matched as IPv4 */
    cr_assert(allowed("10.0.0.0/8", "::ffff:10.1.2.3"));
    cr_assert_not(allowed("10.0.0.0/8", "::ffff:11.1.2.3"));
    cr_assert(allowed("192.0.2.7", "::ffff:192.0.2.7"));
    cr_assert_not(allowed("10.0.0.0/8", "::10.1.2.3"), "IPv4-compatible is not IPv4-mapped");
    cr_assert_not(allowed("::/0", "::ffff:10.1.2.3"), "IPv4 clients need an IPv4 range");
    cr_assert_not(allowed("10.0.0.0/8", "fd00::a00:1"));
    cr_assert_not(allowed("fd00::/8", "10.0.0.1"), "families do not mix");

    /* /0 */
    cr_assert(allowed("0.0.0.0/0", "0.0.0.0"));
    cr_assert(allowed("0.0.0.0/0", "255.255.255.255"));
    cr_assert(allowed("0.0.0.0/0", "::ffff:203.0.113.9"));
    cr_assert_not(allowed("0.0.0.0/0", "2001:db8::1"));
    cr_assert(allowed("::/0", "2001:db8::1"));
    cr_assert(allowed("::/0", "::"));
    cr_assert_not(allowed("::/0", "203.0.113.9"));

    /* several ranges: any one */
    cr_assert(allowed("10.0.0.0/8, fd00::/8, 192.0.2.7", "192.0.2.7"));
    cr_assert(allowed("10.0.0.0/8, fd00::/8, 192.0.2.7", "fd12::7"));
    cr_assert_not(allowed("10.0.0.0/8, fd00::/8, 192.0.2.7", "192.0.2.8"));

    /* with a list, an address of another family (AF_UNIX...) is refused */
    static struct cfg_listener l;
    char why[256];
    cfg_listener_init(&l);
    cr_assert(cfg_client_allowed(&l, AF_UNIX, (const uint8_t *)"x"));
    cr_assert_eq(cfg_value_client_allow("0.0.0.0/0, ::/0", l.client_allow, &l.client_allow_count,
                                        why, sizeof why),
                 0);
    cr_assert_not(cfg_client_allowed(&l, AF_UNIX, (const uint8_t *)"x"));
}

Test(conf, client_names_values)
{
    static const char *const good[] = {
        "app1.internal",
        "CN=legacy-batch",
        "app1.internal, CN=legacy-batch",
        "CN=Legacy Batch Job (nightly)",
        "CN=db\xc3\xa9",
        "spiffe://cluster.local/ns/shop/sa/orders",
        "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        "urn:isbn:0451450523",
        "my_host-1.svc.cluster.local",
        "localhost",
        "  a.internal ,\tb.internal  ",
    };
    static const struct {
        const char *s, *why;
    } bad[] = {
        {"app 2", "invalid client name 'app 2' (use CN=NAME, a DNS name or a URI, without blanks)"},
        {"*.internal",
         "invalid client name '*.internal' (use CN=NAME, a DNS name or a URI, without blanks)"},
        {"a..b", "invalid client name 'a..b' (use CN=NAME, a DNS name or a URI, without blanks)"},
        {".a", "invalid client name '.a' (use CN=NAME, a DNS name or a URI, without blanks)"},
        {"a.", "invalid client name 'a.' (use CN=NAME, a DNS name or a URI, without blanks)"},
        {"spiffe://x/a b",
         "invalid client name 'spiffe://x/a b' (use CN=NAME, a DNS name or a URI, without "
         "blanks)"},
        {"1http://x", "invalid client name '1http://x' (use CN=NAME, a DNS name or a URI, without "
                      "blanks)"},
        {"spiffe:", "invalid client name 'spiffe:' (use CN=NAME, a DNS name or a URI, without "
                    "blanks)"},
        {":x", "invalid client name ':x' (use CN=NAME, a DNS name or a URI, without blanks)"},
        {"CN=", "invalid client name 'CN=' (use CN=NAME: the name right after '=', no control "
                "characters)"},
        {"CN= batch", "invalid client name 'CN= batch' (use CN=NAME: the name right after '=', no "
                      "control characters)"},
        {"CN=a\x7f", "invalid client name 'CN=a\x7f' (use CN=NAME: the name right after '=', no "
                     "control characters)"},
        {"cn=batch", "invalid client name 'cn=batch' (write CN= in capitals)"},
        {"CN =batch",
         "invalid client name 'CN =batch' (use CN=NAME, a DNS name or a URI, without blanks)"},
        {"O=Example", "invalid client name 'O=Example' (use CN=NAME, a DNS name or a URI, without "
                      "blanks)"},
        {"db.internal:5432",
         "invalid client name 'db.internal:5432' (a certificate name has no port; use the name)"},
        {"a,,b", "empty entry in client_names list"},
        {"a,", "empty entry in client_names list"},
    };
    char why[256], name[300];

    for (size_t i = 0; i < DBT_ARRAY_LEN(good); i++)
        cr_assert_eq(cfg_value_client_names(good[i], why, sizeof why), 0, "%s: %s", good[i], why);
    for (size_t i = 0; i < DBT_ARRAY_LEN(bad); i++) {
        cr_assert_eq(cfg_value_client_names(bad[i].s, why, sizeof why), -1, "accepted '%s'",
                     bad[i].s);
        cr_assert_str_eq(why, bad[i].why);
    }

    /* A DNS label is at most 63 characters, a name at most 253, an entry at most 255. */
    memset(name, 'a', 63);
    name[63] = '\0';
    cr_assert_eq(cfg_value_client_names(name, why, sizeof why), 0);
    strcat(name, "a");
    cr_assert_eq(cfg_value_client_names(name, why, sizeof why), -1);
    memcpy(name, "CN=", 3);
    memset(name + 3, 'c', 252);
    name[255] = '\0';
    cr_assert_eq(cfg_value_client_names(name, why, sizeof why), 0, "%s", why);
    strcat(name, "c");
    cr_assert_eq(cfg_value_client_names(name, why, sizeof why), -1);
    cr_assert_str_eq(why, "client name 'CN=ccccccccccccccccccccccccccccc...' too long (max 255 "
                          "characters)");
}

/* ---- command line ---- */

Test(conf, cli_listener)
{
    struct cfg c;
    char err[512];

    cfg_init(&c);
    cr_assert_eq(cfg_add_cli_listener(&c, "127.0.0.1:5432", "db.example.com", "postgres",
                                      "/etc/dbtrust/ca.pem", "db.internal", err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(c.listener_count, 1);
    const struct cfg_listener *l = &c.listeners[0];
    cr_assert_str_eq(l->name, "default");
    cr_assert_eq(l->protocol, CFG_PROTO_POSTGRES);
    assert_addr(&l->listen, "127.0.0.1", 5432, false);
    cr_assert_eq(l->upstream_count, 1);
    assert_addr(&l->upstream[0], "db.example.com", 5432, false);
    cr_assert_str_eq(l->server_name, "db.internal");
    cr_assert_eq(l->connect_timeout_ms, 5000);
    cr_assert_str_eq(c.bundle, "/etc/dbtrust/ca.pem");
    cr_assert_eq(cfg_finish(&c, err, sizeof err), 0, "%s", err);
    cfg_free(&c);
}

static void expect_cli_error(const char *listen, const char *upstream, const char *protocol,
                             const char *bundle, const char *want)
{
    struct cfg c;
    char err[512] = "";

    cfg_init(&c);
    cr_assert_eq(
        cfg_add_cli_listener(&c, listen, upstream, protocol, bundle, NULL, err, sizeof err), -1);
    cr_assert_str_eq(err, want);
    cr_assert_eq(c.listener_count, 0);
    cr_assert_str_eq(c.bundle, "", "a rejected command line changes nothing");
    cfg_free(&c);
}

Test(conf, cli_errors)
{
    expect_cli_error("127.0.0.1:5432", "db", NULL, "/ca.pem",
                     "--protocol: missing (a listener needs --listen, --upstream and --protocol)");
    expect_cli_error(NULL, "db", "mysql", NULL,
                     "--listen: missing (a listener needs --listen, --upstream and --protocol)");
    expect_cli_error("127.0.0.1:5432", "db", "oracle", NULL,
                     "--protocol: invalid protocol 'oracle' (use postgres or mysql)");
    expect_cli_error("127.0.0.1:5432", "db:99999", "mysql", NULL,
                     "--upstream: invalid address 'db:99999': invalid port (1-65535)");
    expect_cli_error("::1:5432", "db", "mysql", NULL,
                     "--listen: invalid address '::1:5432': IPv6 needs brackets, e.g. "
                     "[::1]:5432");
    expect_cli_error("127.0.0.1:5432", "", "mysql", NULL, "--upstream: empty value");
    expect_cli_error(NULL, NULL, NULL, "", "--bundle: empty path");
}

Test(conf, cli_bundle_overrides_file_and_name_clash)
{
    struct cfg c;
    char err[512];

    expect_load(&c, "[trust]\nbundle = /file.pem\n[listener.default]\nprotocol = mysql\n"
                    "listen = 127.0.0.1:3306\nupstream = m\n");
    cr_assert_eq(cfg_add_cli_listener(&c, NULL, NULL, NULL, "/cli.pem", NULL, err, sizeof err), 0);
    cr_assert_str_eq(c.bundle, "/cli.pem");
    cr_assert_eq(c.listener_count, 1);
    cr_assert_eq(cfg_add_cli_listener(&c, "127.0.0.1:1", "a", "mysql", NULL, NULL, err, sizeof err),
                 -1);
    cr_assert_str_eq(err, "--listen: a listener named 'default' is already configured");
    cr_assert_eq(c.listener_count, 1);
    cfg_free(&c);
}

/* ---- final checks ---- */

Test(conf, finish_needs_a_listener)
{
    struct cfg c;
    char err[512];

    cfg_init(&c);
    cr_assert_eq(cfg_finish(&c, err, sizeof err), -1);
    cr_assert_str_eq(err, "no listener configured (use --config FILE or "
                          "--listen/--upstream/--protocol/--bundle)");
}

Test(conf, finish_refuses_without_bundle)
{
    struct cfg c;
    char err[512];

    cfg_init(&c);
    cr_assert_eq(
        cfg_add_cli_listener(&c, "127.0.0.1:5432", "db", "postgres", NULL, NULL, err, sizeof err),
        0, "%s", err);
    cr_assert_eq(cfg_finish(&c, err, sizeof err), -1);
    cr_assert_str_eq(err, "refusing to start without a trust bundle: set [trust] bundle = FILE or "
                          "--bundle");
    cfg_free(&c);

    /* A per-listener bundle is enough for that listener, but not for the others. */
    expect_load(&c, "[listener.a]\nprotocol = mysql\nlisten = 127.0.0.1:1\nupstream = a\n"
                    "bundle = /a.pem\n");
    cr_assert_eq(cfg_finish(&c, err, sizeof err), 0, "%s", err);
    cfg_free(&c);
    expect_load(&c, "[listener.a]\nprotocol = mysql\nlisten = 127.0.0.1:1\nupstream = a\n"
                    "bundle = /a.pem\n[listener.b]\nprotocol = mysql\nlisten = 127.0.0.1:2\n"
                    "upstream = b\n");
    cr_assert_eq(cfg_finish(&c, err, sizeof err), -1);
    cfg_free(&c);
}

Test(conf, finish_resolves_workers)
{
    struct cfg c;
    char err[512];
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    expect_load(&c, "[dbtrust]\nworkers = 0\n[trust]\nbundle = /ca.pem\n[listener.a]\n"
                    "protocol = postgres\nlisten = 127.0.0.1:1\nupstream = a\n");
    cr_assert_eq(c.workers, 0);
    cr_assert_eq(cfg_finish(&c, err, sizeof err), 0, "%s", err);
    cr_assert_gt(c.workers, 0);
    cr_assert_eq(c.workers, cpus > 256 ? 256 : (unsigned)cpus);
    c.workers = 3;
    cr_assert_eq(cfg_finish(&c, err, sizeof err), 0);
    cr_assert_eq(c.workers, 3, "an explicit count is kept");
    cfg_free(&c);
}

/* ---- value parsers ---- */

Test(conf, durations)
{
    static const struct {
        const char *s;
        uint32_t ms;
    } good[] = {
        {"10s", 10000},        {"500ms", 500}, {"2m", 120000}, {"1h", 3600000},
        {"7", 7000},           {"0", 0},       {"0ms", 0},     {"4294967295ms", 4294967295u},
        {"1193h", 4294800000u}};
    static const char *const bad[] = {
        "",  "abc", "5x",  "-1",       "1.5s",  "10 s",           " 10s",
        "s", "ms",  "10S", "4294968s", "1194h", "99999999999999h"};
    uint32_t ms;
    char why[256];

    for (size_t i = 0; i < DBT_ARRAY_LEN(good); i++) {
        cr_assert_eq(cfg_value_duration(good[i].s, &ms, why, sizeof why), 0, "%s", good[i].s);
        cr_assert_eq(ms, good[i].ms, "%s", good[i].s);
        cr_assert_eq(cfg_parse_duration_ms(good[i].s, &ms), 0);
    }
    for (size_t i = 0; i < DBT_ARRAY_LEN(bad); i++) {
        cr_assert_eq(cfg_value_duration(bad[i], &ms, why, sizeof why), -1, "'%s'", bad[i]);
        cr_assert_eq(cfg_parse_duration_ms(bad[i], &ms), -1);
    }
    cr_assert_eq(cfg_value_duration("1194h", &ms, why, sizeof why), -1);
    cr_assert_str_eq(why, "duration '1194h' out of range (max 1193h)");
}

Test(conf, booleans_numbers_choices)
{
    static const char *const yes[] = {"on", "true", "yes", "1", "ON", "True"};
    static const char *const no[] = {"off", "false", "no", "0", "NO"};
    static const struct cfg_choice abc[] = {{"a", 1}, {"alias", 1}, {"b", 2}, {NULL, 0}};
    char why[256];
    bool b;
    uint32_t u;
    int v;

    for (size_t i = 0; i < DBT_ARRAY_LEN(yes); i++) {
        b = false;
        cr_assert_eq(cfg_value_bool(yes[i], &b, why, sizeof why), 0);
        cr_assert(b, "%s", yes[i]);
    }
    for (size_t i = 0; i < DBT_ARRAY_LEN(no); i++) {
        b = true;
        cr_assert_eq(cfg_value_bool(no[i], &b, why, sizeof why), 0);
        cr_assert_not(b, "%s", no[i]);
    }
    cr_assert_eq(cfg_value_bool("2", &b, why, sizeof why), -1);
    cr_assert_eq(cfg_value_bool("", &b, why, sizeof why), -1);

    cr_assert_eq(cfg_value_uint("256", 0, 256, &u, why, sizeof why), 0);
    cr_assert_eq(u, 256);
    cr_assert_eq(cfg_value_uint("-1", 0, 256, &u, why, sizeof why), -1);
    cr_assert_str_eq(why, "invalid number '-1'");
    cr_assert_eq(cfg_value_uint("+1", 0, 256, &u, why, sizeof why), -1);
    cr_assert_eq(cfg_value_uint("0x10", 0, 256, &u, why, sizeof why), -1);
    cr_assert_eq(cfg_value_uint("4294967296", 0, UINT32_MAX, &u, why, sizeof why), -1);

    cr_assert_eq(cfg_value_choice("ALIAS", abc, "thing", &v, why, sizeof why), 0);
    cr_assert_eq(v, 1);
    cr_assert_eq(cfg_value_choice("c", abc, "thing", &v, why, sizeof why), -1);
    cr_assert_str_eq(why, "invalid thing 'c' (use a or b)", "aliases are not advertised");
}

static void expect_addr(const char *s, unsigned flags, const char *host, unsigned port,
                        bool is_unix)
{
    struct cfg_addr a;
    char why[256] = "";
    cr_assert_eq(cfg_value_addr(s, flags, &a, why, sizeof why), 0, "%s: %s", s, why);
    assert_addr(&a, host, port, is_unix);
}

static void expect_bad_addr(const char *s, unsigned flags, const char *want)
{
    struct cfg_addr a;
    char why[256];
    cr_assert_eq(cfg_value_addr(s, flags, &a, why, sizeof why), -1, "accepted %s", s);
    cr_assert_str_eq(why, want);
}

Test(conf, addresses)
{
    struct cfg_addr a;
    char buf[300];

    expect_addr("127.0.0.1:5432", 0, "127.0.0.1", 5432, false);
    expect_addr("db-1.example.com:1", 0, "db-1.example.com", 1, false);
    expect_addr("[::1]:65535", 0, "::1", 65535, false);
    expect_addr("[2001:db8::1]", CFG_ADDR_PORT_OPTIONAL, "2001:db8::1", 0, false);
    expect_addr("my_db", CFG_ADDR_PORT_OPTIONAL, "my_db", 0, false);
    expect_addr("unix:/run/dbtrust/pg.sock", CFG_ADDR_UNIX, "/run/dbtrust/pg.sock", 0, true);

    expect_bad_addr("db:0", 0, "invalid address 'db:0': invalid port (1-65535)");
    expect_bad_addr("db:65536", 0, "invalid address 'db:65536': invalid port (1-65535)");
    expect_bad_addr("db:", 0, "invalid address 'db:': invalid port (1-65535)");
    expect_bad_addr("db:54x", 0, "invalid address 'db:54x': invalid port (1-65535)");
    expect_bad_addr("db", 0, "invalid address 'db': missing port (use host:port)");
    expect_bad_addr("10.0.0.256:1", 0, "invalid address '10.0.0.256:1': invalid host name or IP");
    expect_bad_addr("a b:1", 0, "invalid address 'a b:1': invalid host name or IP");
    expect_bad_addr("a..b:1", 0, "invalid address 'a..b:1': invalid host name or IP");
    expect_bad_addr("[::1:5432", 0, "invalid address '[::1:5432': missing ']'");
    expect_bad_addr("[::1]5432", 0, "invalid address '[::1]5432': expected ':' after ']'");
    expect_bad_addr("[db]:5432", 0, "invalid address '[db]:5432': invalid IPv6 address");
    expect_bad_addr("[]:5432", 0, "invalid address '[]:5432': invalid IPv6 address");
    expect_bad_addr("unix:run/x", CFG_ADDR_UNIX,
                    "invalid address 'unix:run/x': unix socket path must be absolute");
    char longpath[200] = "unix:/";
    memset(longpath + 6, 'p', 107);
    char want[300];
    snprintf(want, sizeof want, "invalid address '%s': unix socket path too long (max 107)",
             longpath);
    expect_bad_addr(longpath, CFG_ADDR_UNIX, want);
    longpath[6 + 106] = '\0';
    expect_addr(longpath, CFG_ADDR_UNIX, longpath + 5, 0, true);

    /* The public form defaults the port, or requires it when the default is 0. */
    cr_assert_eq(cfg_parse_addr("db", false, 3306, &a), 0);
    assert_addr(&a, "db", 3306, false);
    cr_assert_eq(cfg_parse_addr("db", false, 0, &a), -1);
    cr_assert_eq(cfg_parse_addr("unix:/x", false, 0, &a), -1);
    cr_assert_eq(cfg_parse_addr("unix:/x", true, 0, &a), 0);

    cfg_addr_format(&(struct cfg_addr){.host = "::1", .port = 5}, buf, sizeof buf);
    cr_assert_str_eq(buf, "[::1]:5");
    cfg_addr_format(&(struct cfg_addr){.host = "db", .port = 5432}, buf, sizeof buf);
    cr_assert_str_eq(buf, "db:5432");
    cfg_addr_format(&(struct cfg_addr){.host = "/s", .is_unix = true}, buf, sizeof buf);
    cr_assert_str_eq(buf, "unix:/s");
}

Test(conf, upstream_lists)
{
    struct cfg_addr list[CFG_MAX_UPSTREAMS];
    size_t n = 99;
    char why[256];

    cr_assert_eq(cfg_value_upstreams(" a:1 ,\tb , [::2]:3 ", list, &n, why, sizeof why), 0, "%s",
                 why);
    cr_assert_eq(n, 3);
    assert_addr(&list[0], "a", 1, false);
    assert_addr(&list[1], "b", 0, false);
    assert_addr(&list[2], "::2", 3, false);
    cr_assert_eq(cfg_value_upstreams("a,", list, &n, why, sizeof why), -1);
    cr_assert_str_eq(why, "empty entry in upstream list");
}

Test(conf, names_hosts_pins)
{
    char why[256], name[80];

    cr_assert_eq(cfg_value_name("orders", why, sizeof why), 0);
    cr_assert_eq(cfg_value_name("A-z_0.9", why, sizeof why), 0);
    memset(name, 'n', 63);
    name[63] = '\0';
    cr_assert_eq(cfg_value_name(name, why, sizeof why), 0);
    strcat(name, "n");
    cr_assert_eq(cfg_value_name(name, why, sizeof why), -1);
    cr_assert_eq(cfg_value_name("a/b", why, sizeof why), -1);

    cr_assert_eq(cfg_value_host("db.example.com", why, sizeof why), 0);
    cr_assert_eq(cfg_value_host("192.0.2.1", why, sizeof why), 0);
    cr_assert_eq(cfg_value_host("2001:db8::1", why, sizeof why), 0);
    cr_assert_eq(cfg_value_host("db.example.com:5432", why, sizeof why), -1);
    cr_assert_str_eq(why, "invalid host name or IP 'db.example.com:5432'");

    cr_assert_eq(cfg_value_user("dbtrust", why, sizeof why), 0);
    cr_assert_eq(cfg_value_user("-x", why, sizeof why), -1);

    cr_assert_eq(
        cfg_value_pins("sha256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=", why, sizeof why), 0);
    cr_assert_eq(
        cfg_value_pins("sha1/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=", why, sizeof why), -1);
    cr_assert_eq(
        cfg_value_pins("sha256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E", why, sizeof why), -1);

    cr_assert_str_eq(cfg_protocol_name(CFG_PROTO_POSTGRES), "postgres");
    cr_assert_str_eq(cfg_protocol_name(CFG_PROTO_MYSQL), "mysql");
}

/* Issue 14: the overload budget and the per-source startup limit. */
Test(conf, memory_limit_sizes_and_off)
{
    static const struct {
        const char *text;
        int64_t bytes;
    } ok[] = {
        {"64MiB", INT64_C(64) << 20},
        {"64M", INT64_C(64) << 20},
        {"1GiB", INT64_C(1) << 30},
        {"2G", INT64_C(2) << 30},
        {"16384KiB", INT64_C(16) << 20},
        {"off", 0},
        {"0", 0},
    };
    const char *base = "[listener.x]\nprotocol = postgres\nlisten = 127.0.0.1:1\n"
                       "upstream = db\nbundle = /b.pem\n[dbtrust]\nmemory_limit = ";
    for (size_t i = 0; i < DBT_ARRAY_LEN(ok); i++) {
        char text[512];
        snprintf(text, sizeof text, "%s%s\n", base, ok[i].text);
        struct cfg c;
        expect_load(&c, text);
        cr_assert_eq(c.memory_limit, ok[i].bytes, "%s", ok[i].text);
        cfg_free(&c);
    }
    expect_error("[dbtrust]\nmemory_limit = 64MB\n",
                 ":2: key 'memory_limit': invalid size '64MB' (use e.g. 256MiB, 1GiB, or off)");
    expect_error("[dbtrust]\nmemory_limit = 8MiB\n",
                 ":2: key 'memory_limit': 8MiB is too small (at least 16MiB, or off)");
    expect_error("[dbtrust]\nmemory_limit = MiB\n",
                 ":2: key 'memory_limit': invalid size 'MiB' (use e.g. 256MiB, 1GiB, or off)");
    expect_error("[dbtrust]\nmemory_limit = 99999999999GiB\n",
                 ":2: key 'memory_limit': invalid size '99999999999GiB' (use e.g. 256MiB, 1GiB, "
                 "or off)");
}

Test(conf, memory_limit_defaults_to_auto_then_the_cgroup)
{
    struct cfg c;
    cfg_init(&c);
    cr_assert_eq(c.memory_limit, CFG_MEMORY_AUTO);
    cfg_free(&c);
    expect_load(&c, "[listener.x]\nprotocol = postgres\nlisten = 127.0.0.1:1\nupstream = db\n"
                    "bundle = /b.pem\n");
    char err[256];
    cr_assert_eq(cfg_finish(&c, err, sizeof err), 0, "%s", err);
    uint64_t cg = cfg_cgroup_memory_limit();
    cr_assert_eq(c.memory_limit, cg > 0 ? (int64_t)(cg / 10 * 9) : 0);
    cr_assert_eq(c.memory_limit_auto, cg > 0);
    cfg_free(&c);
}

Test(conf, max_startup_per_client)
{
    struct cfg c;
    expect_load(&c, "[listener.x]\nprotocol = postgres\nlisten = 127.0.0.1:1\nupstream = db\n"
                    "max_startup_per_client = 8\n");
    cr_assert_eq(c.listeners[0].max_startup_per_client, 8);
    cfg_free(&c);
    expect_load(&c, "[listener.x]\nprotocol = postgres\nlisten = 127.0.0.1:1\nupstream = db\n");
    cr_assert_eq(c.listeners[0].max_startup_per_client, 0, "off by default");
    cfg_free(&c);
    expect_error("[listener.x]\nmax_startup_per_client = -1\n",
                 ":2: key 'max_startup_per_client': invalid number '-1'");
}

/* sslnegotiation (issue 16): postgres | direct on postgres listeners, postgres by default; a
 * mysql listener refuses the key whatever its value, at the key's line. */
Test(conf, sslnegotiation_values_default_and_protocol)
{
    static const char head[] = "[listener.pg]\nprotocol = postgres\nlisten = 127.0.0.1:5432\n"
                               "upstream = a\n";
    char text[512];
    struct cfg c;

    expect_load(&c, head);
    cr_assert_eq(c.listeners[0].sslnegotiation, CFG_SSLNEG_POSTGRES);
    cr_assert_eq(c.listeners[0].sslnegotiation_line, 0);
    cfg_free(&c);

    snprintf(text, sizeof text, "%ssslnegotiation = direct\n", head);
    expect_load(&c, text);
    cr_assert_eq(c.listeners[0].sslnegotiation, CFG_SSLNEG_DIRECT);
    cr_assert_eq(c.listeners[0].sslnegotiation_line, 5);
    cfg_free(&c);

    snprintf(text, sizeof text, "%ssslnegotiation = Postgres\n", head);
    expect_load(&c, text);
    cr_assert_eq(c.listeners[0].sslnegotiation, CFG_SSLNEG_POSTGRES);
    cfg_free(&c);

    /* Two listeners: each keeps its own choice. */
    expect_load(&c, "[listener.a]\nprotocol = postgres\nlisten = 127.0.0.1:1\nupstream = a\n"
                    "sslnegotiation = direct\n"
                    "[listener.b]\nprotocol = postgresql\nlisten = 127.0.0.1:2\nupstream = b\n");
    cr_assert_eq(c.listeners[0].sslnegotiation, CFG_SSLNEG_DIRECT);
    cr_assert_eq(c.listeners[1].sslnegotiation, CFG_SSLNEG_POSTGRES);
    cfg_free(&c);

    snprintf(text, sizeof text, "%s\nsslnegotiation = auto\n", head);
    expect_error(
        text, ":6: key 'sslnegotiation': invalid sslnegotiation 'auto' (use postgres or direct)");
    expect_error("[listener.pg]\nsslnegotiation = \n",
                 ":2: key 'sslnegotiation': empty value (remove the line for the default)");
    snprintf(text, sizeof text, "%ssslnegotiation = direct\nsslnegotiation = postgres\n", head);
    expect_error(text, ":6: key 'sslnegotiation': already set at line 5");
    expect_error("[listener.my]\nprotocol = mysql\nlisten = 127.0.0.1:3306\nupstream = a\n"
                 "sslnegotiation = direct\n",
                 ":5: key 'sslnegotiation': only valid with protocol = postgres");
    expect_error("[listener.my]\nsslnegotiation = postgres\nprotocol = mysql\n"
                 "listen = 127.0.0.1:3306\nupstream = a\n",
                 ":2: key 'sslnegotiation': only valid with protocol = postgres");
}

/* The one-listener command line has no flag for it: such a listener negotiates as every
 * server understands. */
Test(conf, sslnegotiation_cli_listener_is_postgres)
{
    struct cfg c;
    char err[512] = "";

    cfg_init(&c);
    cr_assert_eq(cfg_add_cli_listener(&c, "127.0.0.1:5432", "db:5432", "postgres", "/b.pem", NULL,
                                      err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(c.listeners[0].sslnegotiation, CFG_SSLNEG_POSTGRES);
    cr_assert_eq(c.listeners[0].sslnegotiation_line, 0);
    cfg_free(&c);
}

/* ---- revocation (CRLs) ---- */

Test(conf, crl_keys_trust_and_listener_override)
{
    struct cfg c;
    char err[1024] = "";

    cfg_init(&c);
    cr_assert_str_eq(c.crl, "");
    cr_assert_not(c.crl_required);
    cr_assert_eq(c.crl_stale, CFG_CRL_STALE_WARN);
    cfg_free(&c);

    int rc = load(&c,
                  "[trust]\nbundle = /etc/dbtrust/ca.pem\ncrl = /etc/dbtrust/crls\n"
                  "crl_required = on\ncrl_stale = refuse\n"
                  "[listener.a]\nprotocol = postgres\nlisten = 127.0.0.1:1\nupstream = db\n"
                  "[listener.b]\nprotocol = mysql\nlisten = 127.0.0.1:2\nupstream = db\n"
                  "crl = /etc/dbtrust/b.crl\n"
                  "[listener.c]\nprotocol = mysql\nlisten = 127.0.0.1:3\nupstream = db\n",
                  err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_str_eq(c.crl, "/etc/dbtrust/crls");
    cr_assert(c.crl_required);
    cr_assert_eq(c.crl_stale, CFG_CRL_STALE_REFUSE);
    cr_assert_str_eq(cfg_listener_crl(&c, &c.listeners[0]), "/etc/dbtrust/crls");
    cr_assert_str_eq(cfg_listener_crl(&c, &c.listeners[1]), "/etc/dbtrust/b.crl");
    /* Same bundle, another CRL path: not the same trust, so not one generation. */
    cr_assert_not(cfg_listener_same_trust(&c, &c.listeners[0], &c.listeners[1]));
    cr_assert(cfg_listener_same_trust(&c, &c.listeners[0], &c.listeners[2]));
    cfg_free(&c);
}

Test(conf, crl_bad_values_name_key_and_line)
{
    expect_error("[trust]\n\ncrl_stale = ignore\n",
                 ":3: key 'crl_stale': invalid crl_stale 'ignore' (use warn or refuse)");
    expect_error("[trust]\ncrl_required = sometimes\n",
                 ":2: key 'crl_required': invalid boolean 'sometimes' (use on/off, true/false, "
                 "yes/no, 1/0)");
    /* crl_required and crl_stale are trust-wide: a listener cannot relax them. */
    expect_error("[listener.x]\ncrl_stale = warn\n", ":2: unknown key 'crl_stale' in [listener.x]");
}
