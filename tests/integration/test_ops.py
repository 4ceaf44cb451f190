"""Operations (issue 5): the admin endpoint, metrics, JSON logs, expiry warnings, `dbtrust
check` and graceful shutdown, against real PostgreSQL 15 and MariaDB 10.11.

Run: /usr/bin/python3 tests/integration/test_ops.py --dbtrust build/dbtrust

Servers: pg-main (root A -> intermediate A -> leaf), pg-short (a leaf under intermediate A that
expires in 5 days), maria (leaf). The main dbtrust trusts root A plus a root expiring in 10 days
and an expired root, so every expiry warning has something to say.
"""
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import unittest
import urllib.error
import urllib.request

import psycopg2
import pymysql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

DAY = 86400
W = types.SimpleNamespace()


def setUpModule():
    for key in [k for k in os.environ if k.startswith(("PG", "MYSQL", "MARIADB"))]:
        del os.environ[key]
    W.tmp = fx.make_temp_dir("test-ops")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.soon_root = W.pki.make_root("soon-root", "dbtrust root expiring soon", days=10)
    W.old_root = W.pki.make_root("old-root", "dbtrust expired root", days=30,
                                 faketime="2020-01-01 00:00:00")
    W.short_leaf = W.pki.make_leaf("short-leaf", "localhost", fx.LOCALHOST_SAN,
                                   W.pki.intermediate, days=5)
    W.pg = fx.PostgresServer(W.pki.leaf, "pg-ops").start().provision_app_roles()
    W.pg_short = fx.PostgresServer(W.short_leaf, "pg-ops-short").start().provision_app_roles()
    W.maria = fx.MariadbServer(W.pki.leaf, "maria-ops").start().provision_app_users()
    W.bundle = W.pki.write_bundle("ops-bundle.pem", [W.pki.root, W.soon_root, W.old_root])
    W.admin_port = fx.free_port()
    cfg = fx.DbTrustConfig(W.bundle, workers=2, drain_timeout="1s",
                           admin=f"127.0.0.1:{W.admin_port}")
    W.orders = cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
    W.short = cfg.add_listener("short", "postgres", f"localhost:{W.pg_short.port}")
    W.shop = cfg.add_listener("shop", "mysql", f"localhost:{W.maria.port}")
    W.mismatch = cfg.add_listener("mismatch", "postgres", f"localhost:{W.pg.port}",
                                  server_name="db.example.org")
    W.config = cfg
    W.dbtrust = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp, name="dbtrust-ops").start()
    fx.wait_for(lambda: fx.tcp_accepts("127.0.0.1", W.admin_port), 5, what="admin endpoint")


def tearDownModule():
    fx.run_cleanups()


# -- helpers ----------------------------------------------------------------------------------

def http(path, method="GET", port=None):
    """(status, headers, body text) of one request to the admin endpoint."""
    req = urllib.request.Request(f"http://127.0.0.1:{port or W.admin_port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def pg_connect(spec, app="ops-app", password=fx.PG_APP_PASSWORD):
    return psycopg2.connect(host="127.0.0.1", port=spec.port, user=fx.PG_APP_USER,
                            password=password, dbname=fx.PG_APP_DATABASE, sslmode="disable",
                            application_name=app, connect_timeout=5)


def pg_query(spec, app="ops-app"):
    conn = pg_connect(spec, app)
    try:
        cur = conn.cursor()
        cur.execute("select 41 + 1")
        return cur.fetchone()[0]
    finally:
        conn.close()


def metric(text, name, **labels):
    """The value of the one sample of name with exactly these labels (None if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def samples(text, name):
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def fingerprint(cert):
    out = fx.run(["openssl", "x509", "-in", cert.cert, "-noout", "-fingerprint", "-sha256"]).stdout
    return out.split("=", 1)[1].strip().replace(":", "").lower()


def run_check(*args, config=None):
    cmd = [sys.argv_dbtrust, "check"] + (["--config", config] if config else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


# -- the admin endpoint and its metrics -------------------------------------------------------

class TestAdminEndpoint(unittest.TestCase):
    def test_metrics_count_connections_failures_and_apps(self):
        mark = W.dbtrust.mark()
        for _ in range(2):
            self.assertEqual(pg_query(W.orders, app="ops-app"), 42)
        self.assertEqual(pg_query(W.short, app="ops-short"), 42)
        with self.assertRaises(psycopg2.OperationalError) as ctx:
            pg_query(W.mismatch)
        self.assertIn("tls_hostname_mismatch", str(ctx.exception))
        conn = pymysql.connect(host="127.0.0.1", port=W.shop.port, user=fx.MY_NATIVE_USER,
                               password=fx.MY_NATIVE_PASSWORD, database=fx.MY_APP_DATABASE,
                               ssl_disabled=True, program_name="ops-mysql-app")
        conn.cursor().execute("select 1")
        conn.close()
        # Counters move when a connection is freed, which may be after the client returned:
        # wait for every conn_end line (since the test started) before scraping.
        for app, count in (("app=ops-mysql-app", 1), ("app=ops-app", 2), ("app=ops-short", 1)):
            fx.wait_for(lambda: len(W.dbtrust.find_lines("conn_end", app, since=mark)) >= count,
                        5, what=f"conn_end {app}")
        fx.wait_for(lambda: W.dbtrust.find_lines("conn_end", "listener=mismatch", since=mark), 5,
                    what="conn_end of the mismatch listener")
        status, headers, text = http("/metrics")
        self.assertEqual(status, 200)
        self.assertIn("text/plain; version=0.0.4", headers["Content-Type"])
        self.assertGreaterEqual(metric(text, "dbtrust_connections_total", listener="orders",
                                       result="client_closed"), 2)
        self.assertGreaterEqual(metric(text, "dbtrust_tls_failures_total", listener="mismatch",
                                       reason="tls_hostname_mismatch"), 1)
        self.assertEqual(metric(text, "dbtrust_tls_failures_total", listener="orders",
                                reason="tls_untrusted_chain"), 0)
        self.assertGreaterEqual(metric(text, "dbtrust_application_connections_total",
                                       listener="orders", application="ops-app"), 2)
        self.assertEqual(metric(text, "dbtrust_application_connections_total",
                                listener="shop", application="ops-mysql-app"), 1)
        self.assertGreaterEqual(metric(text, "dbtrust_upstream_handshake_seconds_count",
                                       listener="orders"), 2)
        self.assertGreater(metric(text, "dbtrust_upstream_handshake_seconds_sum",
                                  listener="orders"), 0)
        self.assertGreater(metric(text, "dbtrust_bytes_total", listener="orders",
                                  direction="upstream_to_client"), 0)
        self.assertEqual(metric(text, "dbtrust_connections_active", listener="orders"), 0)
        self.assertEqual(metric(text, "dbtrust_bundle_certificates", bundle=W.bundle), 3)
        soon = metric(text, "dbtrust_bundle_expiry_timestamp_seconds", bundle=W.bundle,
                      subject="CN=dbtrust root expiring soon,O=dbtrust tests",
                      sha256=fingerprint(W.soon_root))
        self.assertAlmostEqual(soon, time.time() + 10 * DAY, delta=DAY)
        leaf = metric(text, "dbtrust_upstream_cert_expiry_timestamp_seconds", listener="short",
                      depth="0", subject="CN=localhost,O=dbtrust tests")
        self.assertAlmostEqual(leaf, time.time() + 5 * DAY, delta=DAY)
        self.assertEqual(len(samples(text, "dbtrust_build_info")), 1)
        # Prometheus' own linter accepts the exposition.
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=30)
        self.assertEqual(lint.returncode, 0, lint.stdout + lint.stderr)

    def test_health_ready_and_bundle(self):
        self.assertEqual(http("/healthz")[::2], (200, "ok\n"))
        self.assertEqual(http("/readyz")[::2], (200, "ready\n"))
        status, headers, body = http("/bundle")
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "application/json")
        doc = json.loads(body)
        (entry,) = doc["bundles"]
        self.assertEqual(entry["path"], W.bundle)
        self.assertEqual(sorted(entry["listeners"]), ["mismatch", "orders", "shop", "short"])
        by_sha = {c["sha256"]: c for c in entry["certificates"]}
        root = by_sha[fingerprint(W.pki.root)]
        self.assertEqual(root["subject"], "CN=dbtrust test root A,O=dbtrust tests")
        self.assertTrue(root["is_ca"])
        self.assertIn(by_sha[fingerprint(W.soon_root)]["days_left"], (9, 10))
        self.assertLess(by_sha[fingerprint(W.old_root)]["days_left"], 0)
        self.assertRegex(root["not_after"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

    def test_methods_and_unknown_paths(self):
        status, headers, _ = http("/reload", method="GET")
        self.assertEqual(status, 405)
        self.assertEqual(headers["Allow"], "POST")
        self.assertEqual(http("/metrics", method="POST")[0], 405)
        self.assertEqual(http("/nope")[0], 404)
        self.assertEqual(http("/metrics", method="HEAD")[0], 200)


class TestAdminUnderManyDescriptors(unittest.TestCase):
    """Scrapes keep working when dbtrust holds more than FD_SETSIZE (1024) descriptors: a
    select()-based admin thread refused every connection numbered above it (bench/soak found
    half the scrapes failing at 1000 proxied connections)."""

    def test_metrics_with_1100_open_client_sockets(self):
        import resource
        import socket
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < 4096:
            self.skipTest("needs an open-files hard limit of 4096")
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
        held = []
        try:
            for _ in range(1100):  # silent clients: each holds a descriptor in dbtrust
                held.append(socket.create_connection(("127.0.0.1", W.orders.port), timeout=5))
            fx.wait_for(lambda: (metric(http("/metrics")[2], "dbtrust_connections_active",
                                        listener="orders") or 0) >= 1100, 20,
                        what="1100 connections open in dbtrust")
            for _ in range(5):
                status, _, text = http("/metrics")
                self.assertEqual(status, 200)
                self.assertIn("dbtrust_connections_active", text)
            self.assertEqual(http("/readyz")[0], 200)
        finally:
            for s in held:
                s.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- names clients choose (issue 15): valid UTF-8 everywhere, and no table flooding ------------

def shown(raw, cap=64):
    """What dbtrust keeps of a name a client sent (common/dbt_utf8.h): each ill-formed part and
    each control character becomes U+FFFD, then the text is cut to cap - 1 bytes on a character
    boundary."""
    text = "".join("\ufffd" if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F else ch
                   for ch in raw.decode("utf-8", errors="replace"))
    while len(text.encode()) > cap - 1:
        text = text[:-1]
    return text


def prom_label(text):
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def logfmt_value(line, key):
    """The unescaped value of key= in a text log line."""
    m = re.search(r"(?:^| )" + key + r'=("(?:[^"\\]|\\.)*"|\S*)', line)
    assert m, f"no {key}= in {line!r}"
    v = m.group(1)
    if not v.startswith('"'):
        return v
    return re.sub(r"\\(.)", lambda e: e.group(1), v[1:-1])


def pg_md5_login(port, app, password=fx.PG_MD5_PASSWORD):
    """A PostgreSQL login over a raw socket with application_name given as bytes, whatever they
    are (libpq and psycopg2 only send text). md5 auth. Returns the message types read, ending
    with 'Z' (logged in) or 'E'."""
    body = struct.pack("!I", fx.PG_PROTOCOL_3_0)
    params = ((b"user", fx.PG_MD5_USER.encode()), (b"database", fx.PG_APP_DATABASE.encode()),
              (b"application_name", app))
    for name, value in params:
        body += name + b"\0" + value + b"\0"
    body += b"\0"
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        seen = []
        while True:
            mtype, payload = fx.pg_read_message(sock)
            seen.append(mtype)
            if mtype == "R" and fx.pg_auth_code(payload) == 5:
                inner = hashlib.md5((password + fx.PG_MD5_USER).encode()).hexdigest()
                digest = "md5" + hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                msg = digest.encode() + b"\0"
                sock.sendall(b"p" + struct.pack("!I", len(msg) + 4) + msg)
            elif mtype in ("Z", "E"):
                if mtype == "Z":
                    sock.sendall(b"X\0\0\0\x04")  # Terminate
                return seen
    finally:
        sock.close()


def http_bytes(path, port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.read()


class TestClientChosenNames(unittest.TestCase):
    """application_name / program_name are the client's to choose. dbtrust keeps them as valid
    UTF-8 (cut on a character boundary, anything else replaced), so /metrics stays a scrape
    Prometheus accepts and the log shows the same text; and a name takes a slot of the per-worker
    application table (32 names) only once its session logged in, so clients that cannot log in
    cannot push real applications into "other". One worker: one table."""

    @classmethod
    def setUpClass(cls):
        cls.admin = fx.free_port()
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=1, admin=f"127.0.0.1:{cls.admin}")
        cls.pg = cfg.add_listener("names", "postgres", f"localhost:{W.pg.port}")
        cls.my = cfg.add_listener("mynames", "mysql", f"localhost:{W.maria.port}")
        cls.d = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp, name="dbtrust-names").start()
        fx.wait_for(lambda: fx.tcp_accepts("127.0.0.1", cls.admin), 5, what="admin endpoint")

    def scrape(self):
        """/metrics, decoded strictly (a UnicodeDecodeError fails the test), and linted."""
        raw = http_bytes("/metrics", self.admin)
        text = raw.decode("utf-8", errors="strict")
        lint = subprocess.run(["promtool", "check", "metrics"], input=raw, capture_output=True,
                              timeout=30)
        self.assertEqual(lint.returncode, 0, (lint.stdout + lint.stderr).decode(errors="replace"))
        return text

    def conn_end_lines(self, mark, count):
        """The conn_end lines of the log since mark (raw bytes, decoded strictly)."""
        def lines():
            with open(self.d.log_path, "rb") as f:
                data = f.read().splitlines()[mark:]
            return [ln.decode("utf-8", errors="strict") for ln in data if b" conn_end " in ln]
        fx.wait_for(lambda: len(lines()) >= count, 10, what=f"{count} conn_end lines")
        return lines()

    def test_names_become_valid_utf8_in_metrics_and_log(self):
        names = [
            b"ops-\xff-app",  # a byte no UTF-8 text has
            b"n" * 62 + "\u20ac".encode() + b"tail",  # a 3-byte character across byte 63
            # overlong '/', a surrogate, beyond U+10FFFF, a sequence cut short
            b"bad-\xc0\xaf-\xed\xa0\x80-\xf4\x90\x80\x80-\xe2\x82",
            b'q"b\\s\x1b[2J\x7f-\xc2\x9b',  # label escapes; C0, DEL and C1 controls
            "caf\u00e9-\U0001f600".encode(),  # valid text is kept as it is
        ]
        mark = self.d.mark()
        for raw in names:
            self.assertEqual(pg_md5_login(self.pg.port, raw)[-1], "Z", raw)
        logged = [logfmt_value(line, "app") for line in self.conn_end_lines(mark, len(names))]
        text = self.scrape()
        for raw in names:
            want = shown(raw)
            self.assertIn(want, logged, f"conn_end shows {want!r} for {raw!r}")
            self.assertEqual(metric(text, "dbtrust_application_connections_total",
                                    listener="names", application=prom_label(want)), 1,
                             f"series for {raw!r}")
        self.assertEqual(shown(names[1]), "n" * 62)  # the straddling character dropped whole

    def test_failed_logins_cannot_take_application_slots(self):
        mark = self.d.mark()
        for i in range(40):
            with self.assertRaises(psycopg2.OperationalError):
                psycopg2.connect(host="127.0.0.1", port=self.pg.port, user=fx.PG_APP_USER,
                                 password="wrong", dbname=fx.PG_APP_DATABASE, sslmode="disable",
                                 application_name=f"flood-{i}", connect_timeout=5).close()
        for i in range(3):
            with self.assertRaises(pymysql.err.OperationalError):
                pymysql.connect(host="127.0.0.1", port=self.my.port, user=fx.MY_NATIVE_USER,
                                password="wrong", database=fx.MY_APP_DATABASE, ssl_disabled=True,
                                program_name=f"myflood-{i}", connect_timeout=5).close()
        conn = psycopg2.connect(host="127.0.0.1", port=self.pg.port, user=fx.PG_APP_USER,
                                password=fx.PG_APP_PASSWORD, dbname=fx.PG_APP_DATABASE,
                                sslmode="disable", application_name="real-app", connect_timeout=5)
        conn.cursor().execute("select 1")
        conn.close()
        conn = pymysql.connect(host="127.0.0.1", port=self.my.port, user=fx.MY_NATIVE_USER,
                               password=fx.MY_NATIVE_PASSWORD, database=fx.MY_APP_DATABASE,
                               ssl_disabled=True, program_name="real-mysql-app")
        conn.cursor().execute("select 1")
        conn.close()
        lines = self.conn_end_lines(mark, 45)
        self.assertEqual(len([ln for ln in lines if "app=flood-" in ln]), 40)
        self.assertEqual(len([ln for ln in lines if "app=myflood-" in ln]), 3)
        text = self.scrape()
        self.assertEqual(metric(text, "dbtrust_application_connections_total", listener="names",
                                application="real-app"), 1)
        self.assertEqual(metric(text, "dbtrust_application_connections_total", listener="mynames",
                                application="real-mysql-app"), 1)
        self.assertGreaterEqual(metric(text, "dbtrust_application_connections_total",
                                       listener="names", application="other"), 40)
        # (the readiness probes of the fixture, which never log in, count as other too)
        self.assertGreaterEqual(metric(text, "dbtrust_application_connections_total",
                                       listener="mynames", application="other"), 3)
        self.assertNotIn('application="flood-', text)
        self.assertNotIn('application="myflood-', text)


class TestReloadEndpoint(unittest.TestCase):
    """POST /reload applies a change no file event announced (a rewrite through mmap)."""

    def test_post_reload(self):
        bundle_dir = fx.BundleDirectory()
        bundle_dir.install(fx.pem_of(W.pki.root, W.pki.rogue_root))
        port = fx.free_port()
        cfg = fx.DbTrustConfig(bundle_dir.path, workers=1, admin=f"127.0.0.1:{port}",
                               trust_options={"reload_interval": "1h"})
        cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        d = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp, name="dbtrust-ops-reload").start()
        self.addCleanup(d.stop)
        fx.wait_for(lambda: fx.tcp_accepts("127.0.0.1", port), 5, what="admin endpoint")
        mark = d.mark()
        bundle_dir.rewrite_by_mmap(fx.pem_of(W.pki.rogue_root, W.pki.root))
        time.sleep(0.3)
        self.assertEqual(d.find_lines("bundle_reload", since=mark), [])
        status, _, body = http("/reload", method="POST", port=port)
        self.assertEqual(status, 202)
        self.assertEqual(json.loads(body)["status"], "reload requested")
        d.wait_for_line("bundle_reload", "result=ok", "trigger=admin", since=mark)
        _, _, text = http("/metrics", port=port)
        self.assertEqual(metric(text, "dbtrust_bundle_reloads_total", result="ok"), 1)


# -- logs -------------------------------------------------------------------------------------

class TestLogs(unittest.TestCase):
    def test_expiry_warnings_at_thresholds(self):
        line = W.dbtrust.wait_for_line("cert_expiry", "source=bundle", "expiring soon")
        self.assertIn("threshold_days=14", line)
        self.assertIn(" warn ", line)
        line = W.dbtrust.wait_for_line("cert_expiry", "source=bundle", "expired root")
        self.assertIn("threshold_days=expired", line)
        self.assertIn(" error ", line)
        self.assertEqual(W.dbtrust.find_lines("cert_expiry", "test root A"), [])
        pg_query(W.short, app="ops-expiry")
        line = W.dbtrust.wait_for_line("cert_expiry", "source=upstream", "listener=short",
                                       "depth=0")
        self.assertIn("threshold_days=7", line)
        self.assertIn("days_left=4", line)  # 5 days minus the seconds since it was issued
        # Once per threshold: another connection to the same chain adds nothing.
        mark = W.dbtrust.mark()
        pg_query(W.short, app="ops-expiry")
        time.sleep(0.3)
        self.assertEqual(W.dbtrust.find_lines("cert_expiry", since=mark), [])

    def test_json_lines_and_no_secrets(self):
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=1, log_format="json", log_level="debug")
        orders = cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        shop = cfg.add_listener("shop", "mysql", f"localhost:{W.maria.port}")
        d = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp, name="dbtrust-ops-json").start()
        app = 'ops "json"\tapp\x01\u00e9'
        conn = pg_connect(orders, app=app)
        conn.cursor().execute("select 1")
        conn.close()
        conn = pymysql.connect(host="127.0.0.1", port=shop.port, user=fx.MY_NATIVE_USER,
                               password=fx.MY_NATIVE_PASSWORD, database=fx.MY_APP_DATABASE,
                               ssl_disabled=True, program_name="ops-json-mysql")
        conn.cursor().execute("select 1")
        conn.close()
        d.wait_for_line("conn_end", "ops-json-mysql")
        d.stop()
        records = [json.loads(line) for line in d.log_lines()]  # every line is one JSON object
        for r in records:
            self.assertIn("ts", r)
            self.assertIn(r["level"], ("debug", "info", "warn", "error"))
            self.assertTrue("event" in r or "msg" in r, r)
        ends = [r for r in records if r.get("event") == "conn_end" and r.get("listener") == "orders"
                and r.get("user") == fx.PG_APP_USER]
        self.assertEqual(len(ends), 1, ends)
        # Quotes and non-ASCII survive (escaped by JSON); control characters never reach a log:
        # they are replaced by U+FFFD when the name is read (issue 15, common/dbt_utf8.h).
        self.assertEqual(ends[0]["app"], 'ops "json"\ufffdapp\ufffd\u00e9')
        self.assertEqual(ends[0]["reason"], "client_closed")
        self.assertTrue(ends[0]["tls"].startswith("TLSv1."))
        text = d.output_text()
        for secret in (fx.PG_APP_PASSWORD, fx.MY_NATIVE_PASSWORD):
            self.assertNotIn(secret, text)


class TestStalledLogReader(unittest.TestCase):
    """Issue 15: logging never stops the data path. stderr is a FIFO whose reader opened it and
    never reads (a container runtime or `| logger` that stalls): once its 64 KiB are full,
    connections keep completing, the lines that do not fit are dropped and counted, and when
    the reader drains again one line says how many were lost. A binary that writes each line
    from the worker blocks every worker here: the connections time out instead.

    Each of the 2000 connections gets its answer from a worker and ends with a conn_end line.
    One in ten is a login with a query through PostgreSQL; the others are StartupMessages on a
    listener whose upstream refuses TCP, answered by dbtrust itself with 57P03 (a backend
    start costs tens of milliseconds here: 2000 logins would take minutes)."""

    CONNECTIONS = 2000
    LOGIN_EVERY = 10
    THREADS = 8

    def start_on_fifo(self):
        fifo = os.path.join(W.tmp, "stalled-stderr.fifo")
        if os.path.exists(fifo):
            os.unlink(fifo)
        os.mkfifo(fifo)
        # The reader end first (a non-blocking open needs no writer), so the writer's open
        # returns at once; it never reads until the test says so.
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        writer = os.open(fifo, os.O_WRONLY)
        port = fx.free_port()
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s",
                               admin=f"127.0.0.1:{port}")
        orders = cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        down = cfg.add_listener("down", "postgres", f"127.0.0.1:{fx.free_port()}")
        name = f"dbtrust-stalled-log-{self.id().split('.')[-1]}"
        d = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp, name=name)
        try:
            d.start(stderr=writer)
        finally:
            os.close(writer)  # dbtrust holds the only write end: EOF when it exits
        self.addCleanup(d.stop)
        fx.wait_for(lambda: fx.tcp_accepts("127.0.0.1", port), 5, what="admin endpoint")
        return d, orders, down, port, reader

    @staticmethod
    def refused_startup(spec):
        """A StartupMessage on a listener whose upstream is down: dbtrust's ErrorResponse."""
        with socket.create_connection(("127.0.0.1", spec.port), timeout=5) as s:
            s.sendall(fx.pg_startup_message({"user": "app", "database": "app",
                                             "application_name": "ops-stalled-log"}))
            mtype, body = fx.pg_read_message(s)
        fields = fx.pg_error_fields(body)
        if mtype != "E" or fields.get("C") != "57P03":
            raise AssertionError(f"expected 57P03 from dbtrust, got {mtype} {fields}")
        return fields["M"]

    def run_connections(self, orders, down, timeout):
        """CONNECTIONS connections over THREADS threads: (queries answered, refusals
        answered, errors, seconds). Connecting and the raw sockets time out after 5 s and the
        threads are daemons, so a blocked proxy fails the test instead of hanging it."""
        lock = threading.Lock()
        todo = [self.CONNECTIONS]
        answers, refusals, errors = [], [], []

        def client():
            while True:
                with lock:
                    if todo[0] == 0 or errors:
                        return
                    todo[0] -= 1
                    n = todo[0]
                try:
                    if n % self.LOGIN_EVERY == 0:
                        answers.append(pg_query(orders, app="ops-stalled-log"))
                    else:
                        refusals.append(self.refused_startup(down))
                except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
                    with lock:
                        errors.append(repr(exc))
                    return

        start = time.monotonic()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(self.THREADS)]
        for t in threads:
            t.start()
        # A client stuck on a blocked worker (a query sent, no answer) would wait forever:
        # the first error or the deadline ends the wait.
        while (any(t.is_alive() for t in threads) and not errors
               and time.monotonic() < start + timeout):
            time.sleep(0.1)
        return answers, refusals, list(errors), time.monotonic() - start

    def assert_all_answered(self, orders, down):
        answers, refusals, errors, took = self.run_connections(orders, down, timeout=120)
        self.assertEqual(errors[:3], [], f"after {len(answers) + len(refusals)} connections")
        self.assertEqual(len(answers), self.CONNECTIONS // self.LOGIN_EVERY)
        self.assertEqual(set(answers), {42})
        self.assertEqual(len(refusals), self.CONNECTIONS - len(answers))
        self.assertIn("upstream_connect_failed", refusals[0])
        self.assertLess(took, 120)

    def test_stalled_reader_drops_lines_not_connections(self):
        d, orders, down, port, reader = self.start_on_fifo()
        self.assert_all_answered(orders, down)
        for spec in (orders, down):
            fx.wait_for(lambda s=spec: metric(http("/metrics", port=port)[2],
                                              "dbtrust_connections_active", listener=s.name) == 0,
                        10, what=f"every connection of {spec.name} ended")
        _, _, text = http("/metrics", port=port)
        self.assertIn("# TYPE dbtrust_log_lines_dropped_total counter", text)
        dropped = metric(text, "dbtrust_log_lines_dropped_total")
        self.assertGreater(dropped, 0)

        # The reader wakes up: copy the FIFO into the log file the fixture reads.
        os.set_blocking(reader, True)

        def drain():
            with open(d.log_path, "ab") as log:
                while True:
                    chunk = os.read(reader, 65536)
                    if not chunk:
                        return
                    log.write(chunk)
                    log.flush()

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        line = d.wait_for_line("log_lines_dropped", timeout=10)
        self.assertIn(" warn ", line)
        # Every line lost is accounted for in the log itself, at the place of the gap.
        reported = sum(int(re.search(r" count=(\d+)$", x).group(1))
                       for x in d.find_lines("log_lines_dropped"))
        self.assertEqual(reported, dropped)  # nothing dropped once the reader is back
        self.assertEqual(metric(http("/metrics", port=port)[2],
                                "dbtrust_log_lines_dropped_total"), dropped)
        ends = len(d.find_lines("conn_end", "app=ops-stalled-log"))
        self.assertLess(ends, self.CONNECTIONS)
        self.assertGreaterEqual(ends + reported, self.CONNECTIONS)
        # Lines stay whole: every line of the log is one complete record.
        for x in d.log_lines():
            self.assertRegex(x, r"^\d{4}-\d\d-\d\dT[0-9:.]+Z (debug|info|warn|error) \S")
        # Once the reader keeps up, nothing is lost: logins log again, in order.
        mark = d.mark()
        self.assertEqual(pg_query(orders, app="ops-after-stall"), 42)
        d.wait_for_line("conn_end", "app=ops-after-stall", since=mark)

        # With the reader alive, shutdown writes its last lines and exits at once.
        start = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(10)
        self.assertEqual(d.proc.returncode, 0)
        self.assertLess(time.monotonic() - start, 5)
        drainer.join(5)
        self.assertFalse(drainer.is_alive(), "stderr reaches EOF when dbtrust exits")
        lines = d.lines_since(mark)
        self.assertTrue(any("received SIGTERM" in x for x in lines), lines)
        self.assertTrue(lines[-1].endswith(" info dbtrust stopped"), lines[-1])
        d.check_clean_exit()

    def test_stalled_reader_cannot_hang_shutdown(self):
        d, orders, down, port, _ = self.start_on_fifo()
        self.assert_all_answered(orders, down)
        self.assertGreater(metric(http("/metrics", port=port)[2],
                                  "dbtrust_log_lines_dropped_total"), 0)
        start = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(10)  # the final flush waits 2 s for a reader that never comes back
        self.assertEqual(d.proc.returncode, 0)
        self.assertLess(time.monotonic() - start, 6)


# -- dbtrust check ----------------------------------------------------------------------------

class TestCheckCommand(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=1)
        cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        cfg.add_listener("short", "postgres", f"localhost:{W.pg_short.port}")
        cfg.add_listener("shop", "mysql", f"localhost:{W.maria.port}")
        cls.config = cfg.write(os.path.join(W.tmp, "check.ini"))
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=1)
        cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        cfg.add_listener("gone", "postgres", f"127.0.0.1:{fx.free_port()}", connect_timeout="1s")
        cls.unreachable_config = cfg.write(os.path.join(W.tmp, "check-unreachable.ini"))

    def test_all_verified(self):
        r = run_check(config=self.config)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(len(re.findall(r"^listener \S+ \((postgres|mysql)\) upstream .*: verified",
                                        r.stdout, re.M)), 3, r.stdout)
        self.assertIn(f"listener shop (mysql) upstream localhost:{W.maria.port}", r.stdout)
        self.assertIn("depth 0: CN=localhost,O=dbtrust tests", r.stdout)
        self.assertIn("depth 2: CN=dbtrust test root A,O=dbtrust tests", r.stdout)
        self.assertRegex(r.stdout, r"days left")

    def test_min_days(self):
        r = run_check("--min-days", "7", config=self.config)
        self.assertEqual(r.returncode, 3, r.stdout)
        self.assertRegex(r.stdout, r"short .*EXPIRING: CN=localhost,O=dbtrust tests has 4 days")
        r = run_check("--min-days", "3", config=self.config)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("1 certificate(s), 0 expire within 3 days", r.stdout)

    def test_tap(self):
        r = run_check("--tap", "--min-days", "7", config=self.config)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[:2], ["TAP version 13", "1..4"])
        results = [line for line in lines if re.match(r"^(not )?ok \d+ - ", line)]
        self.assertEqual([line.split(" - ")[0] for line in results],
                         ["ok 1", "not ok 2", "ok 3", "ok 4"], r.stdout)
        self.assertTrue(all(line.startswith("# ") for line in lines[2:] if line not in results))
        self.assertEqual(r.returncode, 3)

    def test_candidate_bundle(self):
        rogue = W.pki.write_bundle("rogue-only.pem", [W.pki.rogue_root])
        r = run_check("--bundle", rogue, config=self.config)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertEqual(r.stdout.count("FAILED tls_untrusted_chain"), 3, r.stdout)
        self.assertIn("issuer CN=dbtrust test root A,O=dbtrust tests is not in the bundle",
                      r.stdout)
        combined = W.pki.write_bundle("combined.pem", [W.pki.rogue_root, W.pki.root])
        r = run_check("--bundle", combined, config=self.config)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn(f"candidate bundle {combined}", r.stdout)

    def test_unreachable_and_usage_errors(self):
        r = run_check(config=self.unreachable_config)
        self.assertEqual(r.returncode, 4, r.stdout)
        self.assertIn("UNREACHABLE upstream_connect_failed", r.stdout)
        self.assertEqual(run_check().returncode, 2)
        self.assertEqual(run_check("--min-days", "soon", config=self.config).returncode, 2)
        self.assertEqual(run_check(config="/nonexistent.ini").returncode, 2)
        garbage = os.path.join(W.tmp, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("not a bundle\n")
        r = run_check("--bundle", garbage, config=self.config)
        self.assertEqual(r.returncode, 2)
        self.assertIn("bundle refused", r.stderr)


# -- pins ------------------------------------------------------------------------------------

def spki_pin(cert):
    """base64(SHA-256(SPKI DER)), computed with the openssl CLI, as an operator would."""
    pub = fx.run(["openssl", "x509", "-in", cert.cert, "-pubkey", "-noout"]).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub.encode(),
                         capture_output=True, check=True).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-binary"], input=der,
                            capture_output=True, check=True).stdout
    import base64
    return base64.b64encode(digest).decode()


class TestPins(unittest.TestCase):
    """[trust] pin: in addition to the chain, a key of the verified chain must be pinned."""

    def start(self, pins):
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=1, trust_options={"pin": pins})
        spec = cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        d = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp,
                                   name=f"dbtrust-pin-{self.id().split('.')[-1]}").start()
        self.addCleanup(d.stop)
        return spec

    def test_pinned_intermediate_connects(self):
        spec = self.start(f"sha256/{spki_pin(W.pki.rogue_root)}, "
                          f"sha256/{spki_pin(W.pki.intermediate)}")
        self.assertEqual(pg_query(spec), 42)

    def test_unpinned_chain_is_refused(self):
        spec = self.start(f"sha256/{spki_pin(W.pki.rogue_root)}")
        with self.assertRaises(psycopg2.OperationalError) as ctx:
            pg_query(spec)
        self.assertIn("tls_pin_mismatch", str(ctx.exception))
        self.assertIn(f"leaf: sha256/{spki_pin(W.pki.leaf)}", str(ctx.exception))


# -- graceful shutdown ------------------------------------------------------------------------

class TestFailedStart(unittest.TestCase):
    def test_admin_address_in_use_stops_the_started_workers_cleanly(self):
        """The admin endpoint starts after the worker threads: when it cannot bind, dbtrust
        must stop and join them before freeing their loops, then exit 1 saying why."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            cfg = fx.DbTrustConfig(W.pki.bundle, workers=4, admin=f"127.0.0.1:{port}")
            cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
            path = cfg.write(os.path.join(W.tmp, "admin-busy.ini"))
            for attempt in range(5):  # the old code raced its own threads: try a few times
                out = subprocess.run([sys.argv_dbtrust, "--config", path], capture_output=True,
                                     text=True, timeout=20, stdin=subprocess.DEVNULL)
                self.assertEqual(out.returncode, 1, out.stderr)
                self.assertIn(f"127.0.0.1:{port}", out.stderr)
                for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error", "ready:"):
                    self.assertNotIn(bad, out.stderr)


class TestGracefulShutdown(unittest.TestCase):
    def start(self, drain):
        port = fx.free_port()
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout=drain,
                               admin=f"127.0.0.1:{port}")
        spec = cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        d = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp,
                                   name=f"dbtrust-drain-{self.id().split('.')[-1]}").start()
        self.addCleanup(d.stop)
        fx.wait_for(lambda: fx.tcp_accepts("127.0.0.1", port), 5, what="admin endpoint")
        return d, spec, port

    def test_sigterm_drains_then_closes_with_reason(self):
        d, spec, port = self.start("2s")
        live = pg_connect(spec, app="ops-drain")
        cur = live.cursor()
        start = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        fx.wait_for(lambda: http("/readyz", port=port)[0] == 503, 2, what="/readyz 503")
        self.assertEqual(http("/healthz", port=port)[0], 200)
        cur.execute("select 7")  # the live session keeps working while draining
        self.assertEqual(cur.fetchone(), (7,))
        self.assertFalse(fx.tcp_accepts("127.0.0.1", spec.port), "new connections refused")
        d.proc.wait(10)
        took = time.monotonic() - start
        self.assertEqual(d.proc.returncode, 0)
        self.assertGreater(took, 1.5)
        self.assertLess(took, 6)
        line = d.wait_for_line("conn_end", "app=ops-drain")
        self.assertIn("reason=shutdown", line)
        self.assertIn("drain_timeout", line)
        with self.assertRaises(psycopg2.Error):
            cur.execute("select 8")
        d.check_clean_exit()

    def test_sigint_ends_as_soon_as_connections_finish(self):
        d, spec, _ = self.start("30s")
        live = pg_connect(spec, app="ops-finish")
        start = time.monotonic()
        d.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        live.cursor().execute("select 1")
        live.close()
        d.proc.wait(10)
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual(d.proc.returncode, 0)
        line = d.wait_for_line("conn_end", "app=ops-finish")
        # The client's Terminate makes the server close too: either side's end may be read
        # first under load. What matters: the session ended, not the drain.
        self.assertRegex(line, r"reason=(client_closed|upstream_closed) ")
        d.check_clean_exit()


# -- sidecar lifecycle (issue 18): shutdown_delay and POST /quitquitquit ----------------------

def non_loopback_address():
    """An IPv4 address of this host that is not loopback (connecting from it to it keeps it as
    the source address), or None."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True).stdout
    found = re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out)
    return found[0] if found else None


class TestSidecarLifecycle(unittest.TestCase):
    """The Cloud SQL Auth Proxy's sidecar ergonomics: after SIGTERM /readyz says 503 at once but
    the listeners keep accepting for shutdown_delay (an application stopping in the same pod
    still reaches its database), then the drain; POST /quitquitquit starts the same stop."""

    def start(self, delay, drain="10s", admin_host="127.0.0.1"):
        port = fx.free_port()
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout=drain,
                               shutdown_delay=delay, admin=f"{admin_host}:{port}")
        spec = cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        d = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp,
                                   name=f"dbtrust-life-{self.id().split('.')[-1]}").start()
        self.addCleanup(d.stop)
        fx.wait_for(lambda: fx.tcp_accepts("127.0.0.1", port), 5, what="admin endpoint")
        fx.wait_for(lambda: http("/readyz", port=port)[0] == 200, 5, what="/readyz 200")
        return d, spec, port

    def assert_not_ready_within(self, port, seconds):
        fx.wait_for(lambda: http("/readyz", port=port)[0] == 503, seconds, interval=0.02,
                    what=f"/readyz 503 within {seconds}s")

    def test_sigterm_keeps_accepting_for_the_delay_then_drains(self):
        d, spec, port = self.start("2s")
        live = pg_connect(spec, app="ops-delay-live")
        mark = d.mark()
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        self.assert_not_ready_within(port, 0.5)
        self.assertEqual(http("/readyz", port=port)[2], "not ready (starting or draining)\n")
        # Not ready is what `dbtrust wait` sees too, while the listener still serves.
        out = run_wait("--admin", f"127.0.0.1:{port}", "--timeout", "300ms")
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("/readyz answered 503", out.stderr)
        time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
        # One second after SIGTERM: a new session, with a real query through dbtrust.
        self.assertEqual(pg_query(spec, app="ops-delay-new"), 42)
        self.assertTrue(d.alive())
        fx.wait_for(lambda: not fx.tcp_accepts("127.0.0.1", spec.port), 3, interval=0.02,
                    what="listener closed once the delay is over")
        self.assertGreater(time.monotonic() - t0, 1.8, "the listener closed before the delay")
        # The drain: the live session still works, and the process waits for it.
        cur = live.cursor()
        cur.execute("select 5")
        self.assertEqual(cur.fetchone(), (5,))
        self.assertTrue(d.alive())
        live.close()
        d.proc.wait(5)  # drain_timeout is 10s: it exits because the last session ended
        self.assertLess(time.monotonic() - t0, 6)
        self.assertEqual(d.proc.returncode, 0)
        line = d.wait_for_line("received SIGTERM", since=mark)
        self.assertIn("still accepting for 2000 ms (shutdown_delay), then draining up to 10000 ms",
                      line)
        d.wait_for_line("shutdown_delay over: no new connections, draining up to 10000 ms",
                        since=mark)
        end = d.wait_for_line("conn_end", "app=ops-delay-live", since=mark)
        self.assertRegex(end, r"reason=(client_closed|upstream_closed) ")
        d.check_clean_exit()

    def test_second_signal_ends_the_delay_and_sigint_delays_like_sigterm(self):
        d, spec, port = self.start("30s")
        mark = d.mark()
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGINT)
        self.assert_not_ready_within(port, 0.5)
        self.assertEqual(pg_query(spec, app="ops-delay-sigint"), 42)
        d.wait_for_line("received SIGINT", "shutdown_delay", since=mark)
        d.proc.send_signal(signal.SIGTERM)  # a second stop signal: drain now
        d.proc.wait(5)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(d.proc.returncode, 0)
        d.wait_for_line("received SIGTERM again during shutdown_delay: no new connections",
                        since=mark)
        d.check_clean_exit()

    def test_quitquitquit_stops_like_sigterm(self):
        d, spec, port = self.start("0s")
        status, headers, _ = http("/quitquitquit", port=port)
        self.assertEqual(status, 405)
        self.assertEqual(headers["Allow"], "POST")
        self.assertEqual(http("/quitquitquit", method="PUT", port=port)[0], 405)
        self.assertTrue(d.alive())
        self.assertEqual(http("/readyz", port=port)[0], 200, "a GET must not stop anything")
        live = pg_connect(spec, app="ops-quit")
        mark = d.mark()
        status, _, body = http("/quitquitquit", method="POST", port=port)
        self.assertEqual(status, 202)
        self.assertEqual(json.loads(body), {"status": "shutdown requested",
                                            "shutdown_delay_ms": 0, "drain_timeout_ms": 10000})
        fx.wait_for(lambda: not fx.tcp_accepts("127.0.0.1", spec.port), 2, interval=0.02,
                    what="listener closed")
        self.assertEqual(http("/readyz", port=port)[0], 503)
        cur = live.cursor()
        cur.execute("select 3")  # drained like SIGTERM: the live session goes on
        self.assertEqual(cur.fetchone(), (3,))
        live.close()
        d.proc.wait(5)
        self.assertEqual(d.proc.returncode, 0)
        d.wait_for_line("POST /quitquitquit: no new connections, draining up to 10000 ms",
                        since=mark)
        d.check_clean_exit()

    def test_quitquitquit_keeps_the_delay_when_sigterm_follows(self):
        """kubelet sends SIGTERM right after a preStop hook that posted /quitquitquit: that
        SIGTERM is the first signal, not a second one, and must not cut the delay short."""
        d, spec, port = self.start("2s")
        t0 = time.monotonic()
        self.assertEqual(http("/quitquitquit", method="POST", port=port)[0], 202)
        self.assertEqual(http("/quitquitquit", method="POST", port=port)[0], 202)
        d.proc.send_signal(signal.SIGTERM)
        self.assert_not_ready_within(port, 0.5)
        time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
        self.assertEqual(pg_query(spec, app="ops-quit-delay"), 42)
        d.proc.wait(6)
        self.assertGreater(time.monotonic() - t0, 1.8)
        self.assertEqual(d.proc.returncode, 0)
        d.check_clean_exit()

    def test_quitquitquit_from_another_host_is_refused(self):
        """The admin endpoint listens on the pod IP in Kubernetes (probes, scrapers): only a
        caller on loopback - a container of the same pod - may stop the proxy."""
        address = non_loopback_address()
        if address is None:
            self.skipTest("no non-loopback IPv4 address on this host")
        d, spec, port = self.start("0s", admin_host="0.0.0.0")
        req = urllib.request.Request(f"http://{address}:{port}/quitquitquit", method="POST")
        with self.assertRaises(urllib.error.HTTPError) as ctx:
            urllib.request.urlopen(req, timeout=5)
        self.assertEqual(ctx.exception.code, 403)
        self.assertIn("loopback", ctx.exception.read().decode())
        time.sleep(0.3)
        self.assertTrue(d.alive())
        self.assertEqual(http("/readyz", port=port)[0], 200)
        self.assertEqual(pg_query(spec), 42)


# -- `dbtrust wait` (issue 18): entrypoints where native sidecars are not available -----------

def run_wait(*args, timeout=30):
    return subprocess.run([sys.argv_dbtrust, "wait"] + list(args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


class TestWaitCommand(unittest.TestCase):
    def test_returns_0_once_ready(self):
        port = fx.free_port()
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=1, admin=f"127.0.0.1:{port}")
        spec = cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        waiter = subprocess.Popen([sys.argv_dbtrust, "wait", "--admin", f"127.0.0.1:{port}",
                                   "--timeout", "30s"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        self.addCleanup(lambda: waiter.poll() is None and waiter.kill())
        time.sleep(0.7)
        self.assertIsNone(waiter.poll(), "returned while nothing listened")
        d = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp, name="dbtrust-wait").start()
        self.addCleanup(d.stop)
        out, err = waiter.communicate(timeout=15)
        self.assertEqual(waiter.returncode, 0, err)
        self.assertEqual((out, err), ("", ""))
        self.assertEqual(http("/readyz", port=port)[0], 200)
        self.assertEqual(pg_query(spec), 42)
        # Ready already: at once.
        start = time.monotonic()
        self.assertEqual(run_wait("--admin", f"localhost:{port}", "--timeout", "5s").returncode, 0)
        self.assertLess(time.monotonic() - start, 2)

    def test_timeout_exits_1(self):
        port = fx.free_port()  # nobody listens there
        start = time.monotonic()
        out = run_wait("--admin", f"127.0.0.1:{port}", "--timeout", "1s")
        took = time.monotonic() - start
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertGreaterEqual(took, 1.0)
        self.assertLess(took, 1.6)
        self.assertEqual(out.stderr, f"dbtrust wait: 127.0.0.1:{port} not ready after 1000 ms: "
                                     "Connection refused\n")

    def test_bad_arguments_exit_2_with_usage(self):
        for args in ([], ["--admin"], ["--admin", "localhost"], ["--admin", "::1:9187"],
                     ["--admin", "127.0.0.1:9187", "--timeout", "soon"],
                     ["--admin", "127.0.0.1:9187", "extra"], ["--bogus"]):
            out = run_wait(*args)
            self.assertEqual(out.returncode, 2, args)
            self.assertIn("Usage: dbtrust wait --admin HOST:PORT [--timeout DURATION]", out.stderr,
                          args)
        out = run_wait("--help")
        self.assertEqual(out.returncode, 0)
        self.assertIn("Exit status: 0 ready; 1 not ready within the timeout", out.stdout)
        out = subprocess.run([sys.argv_dbtrust, "--help"], capture_output=True, text=True)
        self.assertIn("dbtrust wait --admin HOST:PORT [--timeout 30s]", out.stdout)

# -- fleet view (issue 18): which pods run which bundle ---------------------------------------

class TestFleetMetrics(unittest.TestCase):
    def scrape(self, port):
        status, _, text = http("/metrics", port=port)
        self.assertEqual(status, 200)
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=30)
        self.assertEqual(lint.returncode, 0, lint.stdout + lint.stderr)
        return text

    def test_bundle_info_and_loaded_timestamp_follow_a_reload(self):
        bundle_dir = fx.BundleDirectory()
        old_text = fx.pem_of(W.pki.root)
        bundle_dir.install(old_text)
        port = fx.free_port()
        cfg = fx.DbTrustConfig(bundle_dir.path, workers=1, admin=f"127.0.0.1:{port}",
                               trust_options={"reload_interval": "1h"})
        cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        cfg.add_listener("edge", "postgres", f"localhost:{W.pg.port}",
                         **fx.client_tls_options("allow", serving=W.pki.leaf))
        d = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp, name="dbtrust-fleet").start()
        self.addCleanup(d.stop)
        fx.wait_for(lambda: fx.tcp_accepts("127.0.0.1", port), 5, what="admin endpoint")
        path = bundle_dir.path
        old_sha = hashlib.sha256(old_text.encode()).hexdigest()

        text = self.scrape(port)
        (entry,) = json.loads(http("/bundle", port=port)[2])["bundles"]
        self.assertEqual(entry["sha256"], old_sha)
        self.assertEqual(samples(text, "dbtrust_bundle_info"),
                         [f'dbtrust_bundle_info{{bundle="{path}",sha256="{old_sha}"}} 1'])
        loaded = metric(text, "dbtrust_bundle_loaded_timestamp_seconds", bundle=path)
        self.assertAlmostEqual(loaded, time.time(), delta=5)
        self.assertEqual(len(samples(text, "dbtrust_bundle_loaded_timestamp_seconds")), 1)
        # The serving certificate of the client_tls listener, by the fingerprint of its DER.
        self.assertEqual(samples(text, "dbtrust_client_cert_info"),
                         [f'dbtrust_client_cert_info{{listener="edge",'
                          f'sha256="{fingerprint(W.pki.leaf)}"}} 1'])

        time.sleep(1.2)  # the next load is measurably later
        new_text = fx.pem_of(W.pki.root, W.soon_root)
        new_sha = hashlib.sha256(new_text.encode()).hexdigest()
        mark = d.mark()
        bundle_dir.install(new_text)
        self.assertEqual(http("/reload", method="POST", port=port)[0], 202)
        d.wait_for_line("bundle_reload", "result=ok", f"sha256={new_sha}", since=mark)
        text = self.scrape(port)
        self.assertEqual(samples(text, "dbtrust_bundle_info"),
                         [f'dbtrust_bundle_info{{bundle="{path}",sha256="{new_sha}"}} 1'])
        self.assertNotIn(old_sha, "\n".join(samples(text, "dbtrust_bundle_info")))
        self.assertEqual(json.loads(http("/bundle", port=port)[2])["bundles"][0]["sha256"],
                         new_sha)
        reloaded = metric(text, "dbtrust_bundle_loaded_timestamp_seconds", bundle=path)
        self.assertGreater(reloaded, loaded + 1)
        self.assertAlmostEqual(reloaded, time.time(), delta=5)


if __name__ == "__main__":
    sys.argv_dbtrust = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
