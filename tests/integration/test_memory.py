"""Memory a container limit can trust (issue 14): what a not-yet-logged-in connection costs
dbtrust, limits that count from accept, an overload budget, and survival inside a memory cgroup.

Run (root: cgroups, a source address on lo):
    /usr/bin/python3 tests/integration/test_memory.py --dbtrust build/dbtrust [unittest args]
or through ctest (integration.test_memory, RUN_SERIAL).

Environment:
    DBTRUST_MEMTEST_SCALE=0.2    scale the connection counts (2000 per state, 5000 in the storm,
                                 10000 in the cgroup storm) for a quick local run; the
                                 per-state counts never go below 200 (RSS resolution).
    DBTRUST_MEMTEST_JSON=FILE    also write the measured numbers as JSON.
    DBTRUST_OLD_BINARY=PATH      test_old_binary_for_comparison runs the cgroup storm against
                                 that (older) dbtrust too and prints whether the kernel
                                 OOM-killed it; it only reports, never fails.
    DBTRUST_MEMTEST_WITHOUT_NEW_KEYS=1
                                 leave memory_limit / max_startup_per_client out of every
                                 configuration, so that a binary without the feature can run the
                                 storm and overload tests (to document how it behaves); those
                                 tests still assert the issue's targets.

Building an older dbtrust for the comparison (a throwaway worktree, the binary copied out):
    tests/integration/build_old_dbtrust.sh <git ref> [output dir]
    DBTRUST_OLD_BINARY=/tmp/dbtrust-old-<ref>/dbtrust /usr/bin/python3 \\
        tests/integration/test_memory.py --dbtrust build/dbtrust TestCgroup

What the tests assert (numbers are printed by every test, and the failure message of a cost
test carries the measured cost):

TestPerStateCost - 2000 connections held at once in one state, against a fresh dbtrust each
  time (32 warm-up connections of the same state are opened first and kept, so one-time
  allocations are not counted). Cost = (VmRSS with them - VmRSS before) / 2000, after dbtrust
  holds every descriptor (counted in /proc/PID/fd) and 1 s of settling. Every connection must
  still be open and in its state when measured (else the number would be another state's).
    idle TCP (nothing sent)                                             <= 4 KiB
    partial PostgreSQL startup (the 4-byte length word only)            <= 6 KiB
    client TLS after 'S', nothing more (client_tls = require)           <= 24 KiB
    client TLS, half a ClientHello sent                                 <= 24 KiB
    MySQL greeted (dbtrust dialled MariaDB, sent its greeting), no reply <= 24 KiB
  Reported, not asserted: a partial startup holding 4 KiB of a declared 9000-byte packet, and
  200 logged-in idle sessions (psycopg2 and PyMySQL).

TestLimitsFromAccept - max_connections counts every accepted connection, even idle ones:
  - PostgreSQL (client_tls = require, max_connections = 4, 4 idle held): a 5th client's
    SSLRequest gets 'N' (no TLS for a connection that will be refused), its StartupMessage
    SQLSTATE 53300 naming limit_reached and max_connections (4); the slot comes back.
  - MySQL (max_connections = 4, 4 greeted held): a 5th gets ERR 1040 naming limit_reached as
    its first packet, without a greeting; the slot comes back.
  - Hard ceiling (max_connections = 10): holding connections that each sent an SSLRequest, one
    is eventually closed without any byte (not read) and none of the first 10 is; below the
    ceiling every connection is answered ('N'). Searched up to 10 + 8000 connections.
  - max_startup_per_client = 3, from a non-loopback source (10.123.X.Y added to lo): with 3 of
    its startups pending a 4th gets 53300 / 1040 naming client_startup_limit; loopback clients
    are exempt; a freed slot serves the source again.

TestOverloadBudget - memory_limit = 40MiB, a logged-in PostgreSQL and MySQL session, 3 pending
  PostgreSQL startups and 2 greeted MySQL logins; then stalled TLS handshakes are added 500 at a
  time until the gauge dbtrust_overloaded reads 1 (it must read 0 before). Then: VmRSS <= the
  budget; both sessions still answer; a new TCP connection is not refused (listener paused, not
  closed) but gets no answer to its SSLRequest; the pending startups are refused naming
  `overloaded` (SQLSTATE class 53, MySQL 1040/1041); dbtrust logs the overload at most twice
  (enter, leave) apart from conn_end lines. Once the stalled handshakes are gone: the gauge is 0
  again within 25 s, the waiting connection is answered, new logins work, the sessions too.

TestStormWhileServing - 5000 hostile connections (idle and partial startups and garbage on a
  PostgreSQL listener, idle and garbage on a MySQL one, half-ClientHello handshakes on a
  client_tls = require one; max_connections = 1000 each; memory_limit = 64MiB) held 10 s while
  psycopg2 and PyMySQL clients loop (one persistent session each, one reconnecting each):
  persistent sessions see no error at all; reconnecting clients see only clear limit refusals
  (53300 / 1040 / overloaded / limit_reached / client_startup_limit in the message) and succeed
  again after the storm; VmRSS sampled every 50 ms stays <= 64 MiB; 10 s idle sweep + 8 s
  after the storm VmRSS is back within max(8 MiB, 25 %) of the pre-storm value; the gauge is 0.

TestCgroup - dbtrust inside a child memory cgroup (of this process's own; v1 or v2) limited to
  64 MiB (memsw too), no memory_limit in its configuration, listeners with max_connections =
  20000 (so only the budget it derives from the cgroup can protect it): 10000 held connections
  (partial startups, and TLS handshakes stalled after half a ClientHello). dbtrust must be alive
  afterwards, the cgroup must report no OOM kill, and a client must log in after the storm.

Before the feature, expect: cost tests over target (their messages give today's costs); every
test whose configuration has memory_limit or max_startup_per_client fails at start ("dbtrust
could not start ... unknown key"); the cgroup storm OOM-kills dbtrust.
"""

import json
import os
import re
import secrets
import struct
import sys
import threading
import time
import types
import unittest
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pymysql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

SCALE = float(os.environ.get("DBTRUST_MEMTEST_SCALE", "1"))
WITHOUT_NEW_KEYS = os.environ.get("DBTRUST_MEMTEST_WITHOUT_NEW_KEYS") == "1"


def scaled(n, minimum):
    return max(minimum, int(n * SCALE))


PER_STATE = scaled(2000, 200)
WARMUP = 32
ESTABLISHED = scaled(200, 20)
STORM = scaled(5000, 500)
CGROUP_STORM = scaled(10000, 1000)
SETTLE_S = 1.0
IDLE_SWEEP_S = 10.0           # dbtrust's idle sweep period (proxy/px_worker.c)
KIB = 1024
MIB = 1024 * 1024

TARGET_KIB = {"idle_tcp": 4, "pg_partial_startup": 6, "tls_after_s": 24,
              "tls_half_client_hello": 24, "mysql_greeted": 24}

STORM_BUDGET = 64 * MIB
STORM_HOLD_S = 10.0
OVERLOAD_BUDGET = 40 * MIB
OVERLOAD_STEP = 500
OVERLOAD_CAP = 16000
CGROUP_LIMIT = 64 * MIB
CGROUP_HOLD_S = 10.0
CEILING_MAX = 10
CEILING_SEARCH = 8000
CEILING_BATCH = 200
STARTUP_PER_CLIENT = 3

# Long phase timeouts: held connections must still be in their state when measured.
HOLD_TIMEOUTS = {"startup_timeout": "120s", "handshake_timeout": "120s"}

LIMIT_REFUSAL = re.compile(r"53300|\b1040\b|overloaded|limit_reached|client_startup_limit")

DBTRUST_BIN = None           # from --dbtrust


def sanitized_binary():
    """True for an ASan build: its quarantine keeps freed memory and its shadow maps grow with
    every allocation, so resident memory says nothing about dbtrust's own (and never falls back
    below a low-water mark). The budget is measured on the normal build."""
    try:
        with open(DBTRUST_BIN, "rb") as f:
            return b"libasan.so" in f.read()
    except OSError:
        return False


def skip_if_sanitized(test_case):
    if sanitized_binary():
        test_case.skipTest("memory budget behaviour is measured on the normal build "
                           "(ASan's quarantine holds freed memory)")
W = types.SimpleNamespace()  # the module's world
RESULTS = {}                 # measured numbers, printed at the end (and JSON on request)


# --------------------------------------------------------------------------------------------
# Module fixtures
# --------------------------------------------------------------------------------------------

class RoomyMariadbServer(fx.MariadbServer):
    """The fixture's MariaDB with room for thousands of pending logins: max-connections 3000
    and connect-timeout 300 s (the default 10 s would end greeted-but-unanswered logins while
    they are being measured). Later lines of the same section win."""

    EXTRA = [("max-connections", 3000), ("connect-timeout", 300), ("back-log", 1000),
             ("max-connect-errors", 1000000)]

    def _write_config(self):
        super()._write_config()
        with open(self.config_path) as f:
            text = f.read()
        text += "".join(f"{k} = {v}\n" for k, v in self.EXTRA)
        self._write_owned(self.config_path, text, 0o644)


def setUpModule():
    for key in [k for k in os.environ if k.startswith(("PG", "MYSQL", "MARIADB"))]:
        del os.environ[key]
    if not (DBTRUST_BIN and os.path.isfile(DBTRUST_BIN) and os.access(DBTRUST_BIN, os.X_OK)):
        raise RuntimeError(f"dbtrust binary not found or not executable: {DBTRUST_BIN}")
    # Before any server starts: they, and every dbtrust, inherit it.
    W.nofile = fx.raise_open_files_limit(65536)
    need = max(CGROUP_STORM, STORM, PER_STATE + WARMUP) + 2000
    if W.nofile < need:
        raise RuntimeError(f"open-files limit {W.nofile} < {need}: raise it (ulimit -n) or "
                           f"scale the storms down (DBTRUST_MEMTEST_SCALE)")
    W.tmp = fx.make_temp_dir("test-memory")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.serving = W.pki.make_leaf("serving", "localhost", fx.LOCALHOST_SAN, W.pki.intermediate_b)
    W.pg = fx.ConfigurablePostgresServer(W.pki.leaf, "pg-memory",
                                         settings={"max_connections": 600}).start()
    W.pg.provision_app_roles()
    W.maria = RoomyMariadbServer(W.pki.leaf, "maria-memory").start().provision_app_users()
    W.hello = fx.tls_client_hello()
    W.startup = fx.pg_startup_message({"user": fx.PG_APP_USER, "database": fx.PG_APP_DATABASE,
                                       "application_name": "memtest"})
    W.garbage = b"\x7f\xff\xff\xff" + secrets.token_bytes(124)
    W.groups = {}


def tearDownModule():
    fx.run_cleanups()
    report_results()


def report_results():
    if not RESULTS:
        return
    print("\n== issue 14 memory measurements ==", file=sys.stderr)
    for key, value in RESULTS.items():
        print(f"{key}: {json.dumps(value, sort_keys=True)}", file=sys.stderr)
    path = os.environ.get("DBTRUST_MEMTEST_JSON")
    if path:
        with open(path, "w") as f:
            json.dump(RESULTS, f, indent=2, sort_keys=True)


def note(key, **values):
    """Record measured numbers under `key` and print them right away."""
    RESULTS[key] = values
    print(f"\n[memtest] {key}: {json.dumps(values, sort_keys=True)}", file=sys.stderr)


def new_keys(**options):
    """Options that only a dbtrust with issue 14 knows (dropped on request, see the doc)."""
    return {} if WITHOUT_NEW_KEYS else options


def pg_upstream():
    return f"localhost:{W.pg.port}"


def my_upstream():
    return f"localhost:{W.maria.port}"


def serving_options():
    return fx.client_tls_options("require", serving=W.serving)


def start_dbtrust(name, cfg, launcher=(), binary=None, what="", admin_port=None):
    """Start a dbtrust from cfg (optionally through a launcher such as a cgroup's); an
    AssertionError with the log when it cannot start (a missing feature fails the test
    clearly)."""
    binary = binary or DBTRUST_BIN
    path = cfg.write(os.path.join(W.tmp, f"{name}.ini"))
    ports = [s.port for s in cfg.listeners.values()]
    args = [*launcher[1:], binary, "--config", path] if launcher else ["--config", path]
    d = fx.DbTrust(launcher[0] if launcher else binary, args, ports, W.tmp, name)
    try:
        d.start(timeout=15)
        if admin_port:
            fx.wait_for(lambda: fx.tcp_accepts("127.0.0.1", admin_port), 5,
                        what=f"admin endpoint of {name}")
    except (RuntimeError, TimeoutError) as exc:
        d.stop()
        raise AssertionError(f"dbtrust could not start ({name}{'; ' + what if what else ''}):"
                             f"\n{exc}\nconfig:\n{cfg.render()}") from None
    return d


class LazyDbTrust:
    """One dbtrust shared by a test class, started on first use; a start failure is kept and
    reported by every test that needs it."""

    def __init__(self, name, cfg, what, admin_port=None):
        self.name, self.cfg, self.what, self.admin_port = name, cfg, what, admin_port
        self.proc = None
        self.error = None

    def get(self):
        if self.proc is None and self.error is None:
            try:
                self.proc = start_dbtrust(self.name, self.cfg, what=self.what,
                                          admin_port=self.admin_port)
            except AssertionError as exc:
                self.error = str(exc)
        if self.error:
            raise AssertionError(self.error)
        if not self.proc.alive():
            raise AssertionError(f"{self.name} died; log:\n{self.proc.output_text()[-3000:]}")
        return self.proc


def median_rss(pid, samples=3, interval=0.2):
    values = []
    for i in range(samples):
        values.append(fx.resident_kib(pid))
        if i + 1 < samples:
            time.sleep(interval)
    return sorted(values)[len(values) // 2]


def wait_fds(pid, at_least, timeout):
    """Wait until the process holds at least that many descriptors; returns the count (also
    when the timeout passed: the caller reports it)."""
    deadline = time.monotonic() + timeout
    while True:
        count = fx.open_fd_count(pid)
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def wait_fds_stable(pid, quiet=0.5, timeout=15):
    """Wait until the process's descriptor count has not changed for `quiet` s (connections
    still being set up or torn down, e.g. DbTrust.start's probes, have settled); returns it."""
    deadline = time.monotonic() + timeout
    last, since = fx.open_fd_count(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        count = fx.open_fd_count(pid)
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def gauge(admin_port, name="dbtrust_overloaded", timeout=3):
    """The value of an unlabelled gauge on /metrics; None if absent or unreachable."""
    try:
        status, text = fx.http_get(admin_port, "/metrics", timeout=timeout)
    except OSError:
        return None
    if status != 200:
        return None
    return fx.metric_value(fx.parse_metrics(text), name)


def pg_connect(port, app="memtest", timeout=10):
    conn = psycopg2.connect(host="127.0.0.1", port=port, user=fx.PG_APP_USER,
                            password=fx.PG_APP_PASSWORD, dbname=fx.PG_APP_DATABASE,
                            sslmode="disable", connect_timeout=timeout, application_name=app)
    conn.autocommit = True
    return conn


def pg_select(conn, value=42):
    with conn.cursor() as cur:
        cur.execute("select %s::int", (value,))
        return cur.fetchone()[0]


def my_connect(port, app="memtest", timeout=10):
    return pymysql.connect(host="127.0.0.1", port=port, user=fx.MY_NATIVE_USER,
                           password=fx.MY_NATIVE_PASSWORD, database=fx.MY_APP_DATABASE,
                           ssl_disabled=True, connect_timeout=timeout, read_timeout=30,
                           write_timeout=30, autocommit=True, program_name=app)


def my_select(conn, value=42):
    with conn.cursor() as cur:
        cur.execute("select %s + 0", (value,))
        return int(cur.fetchone()[0])


def first_pg_message(buf):
    """(type, fields-or-body) of the first whole backend message in buf, else None."""
    if not fx.pg_message_complete(buf):
        return None
    mtype = chr(buf[0])
    length = struct.unpack("!I", bytes(buf[1:5]))[0]
    body = bytes(buf[5:1 + length])
    return mtype, (fx.pg_error_fields(body) if mtype in "EN" else body)


def first_my_packet(buf):
    if not fx.my_packet_complete(buf):
        return None
    length = buf[0] | buf[1] << 8 | buf[2] << 16
    return bytes(buf[4:4 + length])


def close_quietly(*conns):
    for conn in conns:
        try:
            if conn is not None:
                conn.close()
        except Exception:  # noqa: BLE001 - best effort
            pass


def kib(n_bytes):
    return None if n_bytes is None else round(n_bytes / KIB)


# --------------------------------------------------------------------------------------------
# 1. Per-state cost
# --------------------------------------------------------------------------------------------

def per_state_config():
    cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s")
    common = {"max_connections": 20000, **HOLD_TIMEOUTS}
    W.pg_plain = cfg.add_listener("pg-plain", "postgres", pg_upstream(), **common)
    W.pg_tls = cfg.add_listener("pg-tls", "postgres", pg_upstream(), **common,
                                **serving_options())
    W.my = cfg.add_listener("my", "mysql", my_upstream(), **common)
    return cfg


def large_partial_startup():
    """The first 4 KiB of a StartupMessage that declares 9000 bytes (a long `options`)."""
    body = struct.pack("!I", fx.PG_PROTOCOL_3_0) + b"user\0app\0options\0"
    body += b"-c x=" + b"y" * (9000 - 4 - len(body) - 5 - 2) + b"\0\0"
    message = struct.pack("!I", len(body) + 4) + body
    assert len(message) == 9000
    return message[:4096]


class TestPerStateCost(unittest.TestCase):
    def setUp(self):
        skip_if_sanitized(self)

    """KiB of dbtrust's VmRSS per connection held in one pre-login state (see the module doc)."""

    def held(self, state, port, n):
        """Open n connections and bring them into `state`; returns (HeldConnections, indices
        that reached it, connections dbtrust holds descriptors for per client)."""
        first = {"idle_tcp": b"", "pg_partial_startup": W.startup[:4],
                 "pg_partial_startup_4k_of_9000": large_partial_startup(),
                 "tls_after_s": fx.PG_SSL_REQUEST, "tls_half_client_hello": fx.PG_SSL_REQUEST,
                 "mysql_greeted": b""}[state]
        conns = fx.HeldConnections([("127.0.0.1", port, first)] * n, connect_timeout=10)
        reached = conns.connected_indices()
        if state.startswith("tls_"):
            answered = conns.expect(lambda b: len(b) >= 1, reached, timeout=30)
            reached = [i for i in answered if conns.received[i][:1] == b"S"]
            if state == "tls_half_client_hello":
                conns.send(W.hello[:len(W.hello) // 2], reached)
        elif state == "mysql_greeted":
            greeted = conns.expect(fx.my_packet_complete, reached, timeout=60)
            reached = [i for i in greeted if first_my_packet(conns.received[i])[:1] == b"\x0a"]
        return conns, reached

    def measure(self, state, label, listener, fds_per_conn, target_kib):
        n = PER_STATE
        d = start_dbtrust(f"dbtrust-cost-{state}", per_state_config())
        port = getattr(W, listener).port
        pid = d.proc.pid
        warm = conns = None
        try:
            warm, _ = self.held(state, port, WARMUP)
            fd_warm = wait_fds_stable(pid)
            time.sleep(SETTLE_S)
            before = median_rss(pid)
            start = time.monotonic()
            conns, reached = self.held(state, port, n)
            fds_expected = fd_warm + n * fds_per_conn
            fds = wait_fds(pid, fds_expected, 30)
            opened_s = time.monotonic() - start
            time.sleep(SETTLE_S)
            after = median_rss(pid)
            still_open = conns.open_indices()
            alive = d.alive()
        finally:
            close_quietly(conns, warm)
            d.stop()
        per = (after - before) / n
        note(f"cost.{state}", connections=n, rss_before_kib=before, rss_with_kib=after,
             kib_per_connection=round(per, 2), target_kib=target_kib, reached_state=len(reached),
             still_open=len(still_open), dbtrust_fds=fds, open_seconds=round(opened_s, 2))
        msg = (f"{label}: {n} held -> dbtrust VmRSS {before} -> {after} KiB = {per:.1f} KiB per "
               f"connection (target: {'<= %s KiB' % target_kib if target_kib else 'reported'});"
               f" {len(reached)} reached the state, {len(still_open)} still open when "
               f"measured, dbtrust held {fds} descriptors (expected >= {fds_expected})")
        self.assertTrue(alive, f"dbtrust died while holding them; {msg}")
        self.assertEqual(len(reached), n, f"not every connection reached the state; {msg}")
        self.assertEqual(len(still_open), n, f"dbtrust closed some (so the cost is not that "
                                             f"state's); {msg}")
        if target_kib is not None:
            self.assertLessEqual(per, target_kib, msg)
        return per

    def test_idle_tcp(self):
        self.measure("idle_tcp", "idle TCP (nothing sent)", "pg_plain", 1,
                     TARGET_KIB["idle_tcp"])

    def test_pg_partial_startup(self):
        self.measure("pg_partial_startup", "partial PostgreSQL startup (length word only)",
                     "pg_plain", 1, TARGET_KIB["pg_partial_startup"])

    def test_pg_partial_startup_4k_of_9000_reported(self):
        self.measure("pg_partial_startup_4k_of_9000",
                     "partial PostgreSQL startup (4 KiB of a declared 9000-byte packet)",
                     "pg_plain", 1, None)

    def test_tls_stalled_after_s(self):
        self.measure("tls_after_s", "client TLS stalled after 'S' (no ClientHello)", "pg_tls",
                     1, TARGET_KIB["tls_after_s"])

    def test_tls_stalled_half_client_hello(self):
        self.measure("tls_half_client_hello", "client TLS stalled in half a ClientHello",
                     "pg_tls", 1, TARGET_KIB["tls_half_client_hello"])

    def test_mysql_greeted_before_response(self):
        self.measure("mysql_greeted", "MySQL greeted, no HandshakeResponse (upstream dialled)",
                     "my", 2, TARGET_KIB["mysql_greeted"])

    def established(self, key, label, connect, query):
        """Logged-in idle sessions: reported, not asserted."""
        n = ESTABLISHED
        d = start_dbtrust(f"dbtrust-cost-{key}", per_state_config())
        pid = d.proc.pid
        sessions, warm = [], []
        try:
            with ThreadPoolExecutor(8) as pool:
                warm = list(pool.map(lambda _: connect(), range(8)))
                time.sleep(SETTLE_S)
                before = median_rss(pid)
                sessions = list(pool.map(lambda _: connect(), range(n)))
            answers = {query(c) for c in sessions[:5]}
            time.sleep(SETTLE_S)
            after = median_rss(pid)
        finally:
            close_quietly(*sessions, *warm)
            d.stop()
        per = (after - before) / n
        note(f"cost.{key}", connections=n, rss_before_kib=before, rss_with_kib=after,
             kib_per_connection=round(per, 2), target_kib=None)
        self.assertEqual(answers, {42}, f"{label}: sessions did not answer")

    def test_established_idle_postgres_reported(self):
        self.established("established_idle_pg", "logged-in psycopg2 sessions",
                         lambda: pg_connect(W.pg_plain.port, timeout=30), pg_select)

    def test_established_idle_mysql_reported(self):
        self.established("established_idle_mysql", "logged-in PyMySQL sessions",
                         lambda: my_connect(W.my.port, timeout=30), my_select)


# --------------------------------------------------------------------------------------------
# 2. Limits count from accept; hard ceiling; max_startup_per_client
# --------------------------------------------------------------------------------------------

def limits_group():
    if "limits" not in W.groups:
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s")
        W.pg_lim = cfg.add_listener("pg-lim", "postgres", pg_upstream(), max_connections=4,
                                    **HOLD_TIMEOUTS, **serving_options())
        W.my_lim = cfg.add_listener("my-lim", "mysql", my_upstream(), max_connections=4,
                                    **HOLD_TIMEOUTS)
        W.pg_ceiling = cfg.add_listener("pg-ceiling", "postgres", pg_upstream(),
                                        max_connections=CEILING_MAX, **HOLD_TIMEOUTS)
        W.groups["limits"] = LazyDbTrust("dbtrust-limits", cfg, "max_connections listeners")
    return W.groups["limits"].get()


def per_client_group():
    if "per-client" not in W.groups:
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s")
        opts = {**new_keys(max_startup_per_client=STARTUP_PER_CLIENT), **HOLD_TIMEOUTS}
        W.pg_per_client = cfg.add_listener("pg-per-client", "postgres", pg_upstream(), **opts)
        W.my_per_client = cfg.add_listener("my-per-client", "mysql", my_upstream(), **opts)
        W.groups["per-client"] = LazyDbTrust("dbtrust-per-client", cfg,
                                             "max_startup_per_client not implemented?")
    return W.groups["per-client"].get()


def source_address(test):
    if not hasattr(W, "source"):
        try:
            W.source = fx.add_loopback_source_address()
        except RuntimeError as exc:
            W.source = None
            W.source_error = str(exc)
    if W.source is None:
        test.skipTest(f"no non-loopback source address: {W.source_error}")
    return W.source


class TestLimitsFromAccept(unittest.TestCase):

    def hold(self, port, n, first=b"", source=None):
        conns = fx.HeldConnections([("127.0.0.1", port, first)] * n, source=source,
                                   connect_timeout=5)
        self.addCleanup(conns.close)
        self.assertEqual(len(conns.connected_indices()), n, "could not open the connections")
        return conns

    def pg_ssl_then_startup(self, port, source=None):
        """A new client: SSLRequest, its one-byte answer, then (after 'N') a StartupMessage and
        the first message back; the connection is closed afterwards. Returns (answer, first
        message or None)."""
        conn = self.hold(port, 1, fx.PG_SSL_REQUEST, source)
        try:
            conn.expect(lambda b: len(b) >= 1, timeout=5)
            answer = bytes(conn.received[0][:1])
            if answer != b"N":
                return answer, None
            del conn.received[0][:1]
            conn.send(W.startup)
            conn.expect(fx.pg_message_complete, timeout=5)
            return answer, first_pg_message(conn.received[0])
        finally:
            conn.close()

    def test_pg_idle_connections_count_and_over_limit_gets_n_then_53300(self):
        limits_group()
        port = W.pg_lim.port
        idle = self.hold(port, 4)
        time.sleep(0.3)  # accepted by now (nothing to read back from an idle connection)
        answer, reply = self.pg_ssl_then_startup(port)
        self.assertEqual(answer, b"N", "over max_connections (4 idle connections held), an "
                                       "SSLRequest must get 'N': no TLS handshake is spent on "
                                       "a connection that will be refused")
        self.assertIsNotNone(reply, "no reply to the StartupMessage over the limit")
        mtype, fields = reply
        self.assertEqual(mtype, "E", reply)
        self.assertEqual(fields.get("C"), "53300", fields)
        self.assertIn("(limit_reached)", fields.get("M", ""), fields)
        self.assertIn("max_connections (4)", fields.get("M", ""), fields)
        idle.close([0])
        fx.wait_for(lambda: self.pg_ssl_then_startup(port)[0] == b"S", 5,
                    what="the freed slot to serve a TLS client again")

    def test_mysql_over_limit_gets_1040_at_once(self):
        limits_group()
        port = W.my_lim.port
        held = self.hold(port, 4)
        greeted = held.expect(fx.my_packet_complete, timeout=10)
        self.assertEqual(len(greeted), 4, "the 4 held connections were not greeted")
        extra = self.hold(port, 1)
        start = time.monotonic()
        extra.expect(fx.my_packet_complete, timeout=5)
        waited = time.monotonic() - start
        payload = first_my_packet(extra.received[0])
        self.assertIsNotNone(payload, "no packet for a MySQL client over max_connections")
        self.assertEqual(payload[:1], b"\xff", f"expected ERR 1040 instead of a greeting: "
                                               f"{payload[:40]!r}")
        err = fx.my_parse_err(payload)
        self.assertEqual(err.code, 1040, err)
        self.assertIn("(limit_reached)", err.message)
        self.assertLess(waited, 2.0, "the refusal must come at once")
        held.close([0])

        def greeted_again():
            probe = self.hold(port, 1)
            probe.expect(fx.my_packet_complete, timeout=5)
            payload = first_my_packet(probe.received[0])
            probe.close()
            return payload is not None and payload[:1] == b"\x0a"
        fx.wait_for(greeted_again, 5, what="the freed slot to greet a client again")

    def test_hard_ceiling_closes_at_accept_without_reading(self):
        d = limits_group()
        port = W.pg_ceiling.port
        mark = d.mark()
        opened = []
        first_unread = None
        total = CEILING_MAX + CEILING_SEARCH
        offset = 0
        try:
            # The first max_connections alone (answered before more arrive: accept order is
            # not connect order within a batch), then batches until one is closed unread.
            while offset < total and first_unread is None:
                size = CEILING_MAX if offset == 0 else CEILING_BATCH
                batch = fx.HeldConnections([("127.0.0.1", port, fx.PG_SSL_REQUEST)] * size,
                                           connect_timeout=3)
                opened.append(batch)
                batch.expect(lambda b: len(b) >= 1, timeout=3.0)
                # Closed unread: its SSLRequest never answered 'N'; at most dbtrust's one
                # refusal written at accept (53300), then the close.
                silent = [i for i in batch.poll_closed() if batch.received[i][:1] != b"N"]
                for i in silent:
                    got = bytes(batch.received[i])
                    self.assertTrue(got == b"" or (got[:1] == b"E" and b"C53300" in got),
                                    f"a connection closed at the ceiling got {got[:80]!r}")
                silent += [i for i, sock in enumerate(batch.socks) if sock is None]  # refused
                if silent:
                    first_unread = offset + min(silent)
                offset += size
            answers = [bytes(c.received[i][:1]) for c in opened for i in range(len(c.socks))]
            answered_below = [i for i, a in enumerate(answers[:first_unread or len(answers)])
                              if a == b"N"]
        finally:
            for batch in opened:
                batch.close()
        ceiling_lines = [line for line in d.lines_since(mark)
                         if "ceiling" in line and "conn_end" not in line][:3]
        note("limits.hard_ceiling", max_connections=CEILING_MAX,
             first_closed_unread_at=first_unread, searched=total, log=ceiling_lines)
        self.assertIsNotNone(first_unread, f"holding {total} connections on a listener with "
                                           f"max_connections = {CEILING_MAX}, none was closed "
                                           f"at accept without being read (no hard ceiling)")
        self.assertGreaterEqual(first_unread, CEILING_MAX,
                                "a connection within max_connections was closed unread")
        self.assertEqual(len(answered_below), first_unread,
                         f"below the ceiling ({first_unread}) every connection must be read and "
                         f"answered 'N' (over the limit: no TLS); {len(answered_below)} were")

    def test_pg_startup_per_client_from_a_non_loopback_source(self):
        per_client_group()
        source = source_address(self)
        port = W.pg_per_client.port
        pending = self.hold(port, STARTUP_PER_CLIENT, W.startup[:4], source=source)
        time.sleep(0.3)
        fourth = self.hold(port, 1, W.startup, source=source)
        fourth.expect(fx.pg_message_complete, timeout=5)
        reply = first_pg_message(fourth.received[0])
        self.assertIsNotNone(reply, f"no answer to a {STARTUP_PER_CLIENT + 1}th startup from "
                                    f"{source}")
        mtype, fields = reply
        self.assertEqual(mtype, "E", f"the {STARTUP_PER_CLIENT + 1}th pending startup from one "
                                     f"source must be refused: {reply}")
        self.assertEqual(fields.get("C"), "53300", fields)
        self.assertIn("client_startup_limit", fields.get("M", ""), fields)
        # Loopback is exempt: more pending startups from 127.0.0.1 than the limit, then a login.
        self.hold(port, STARTUP_PER_CLIENT + 2, W.startup[:4])
        conn = pg_connect(port, app="memtest-loopback")
        self.assertEqual(pg_select(conn), 42)
        conn.close()
        pending.close([0])

        def served_again():
            probe = self.hold(port, 1, W.startup, source=source)
            probe.expect(fx.pg_message_complete, timeout=5)
            reply = first_pg_message(probe.received[0])
            probe.close()
            return reply is not None and reply[0] == "R"
        fx.wait_for(served_again, 5, what=f"a freed slot to serve {source} again")

    def test_mysql_startup_per_client_from_a_non_loopback_source(self):
        per_client_group()
        source = source_address(self)
        port = W.my_per_client.port
        pending = self.hold(port, STARTUP_PER_CLIENT, source=source)
        self.assertEqual(len(pending.expect(fx.my_packet_complete, timeout=10)),
                         STARTUP_PER_CLIENT)
        fourth = self.hold(port, 1, source=source)
        fourth.expect(fx.my_packet_complete, timeout=5)
        payload = first_my_packet(fourth.received[0])
        self.assertIsNotNone(payload, "no packet at all for the 4th pending login")
        if payload[:1] == b"\x0a":  # greeted: the refusal may wait for its response
            greeting = fx.my_parse_greeting(payload)
            del fourth.received[0][:]
            fourth.send(fx.my_packet(1, fx.my_handshake_response(
                fx.MY_NATIVE_USER, fx.my_native_scramble(fx.MY_NATIVE_PASSWORD, greeting.nonce),
                database=fx.MY_APP_DATABASE)))
            fourth.expect(fx.my_packet_complete, timeout=5)
            payload = first_my_packet(fourth.received[0])
        self.assertIsNotNone(payload)
        self.assertEqual(payload[:1], b"\xff", f"the 4th pending login from {source} must be "
                                               f"refused: {payload[:60]!r}")
        err = fx.my_parse_err(payload)
        self.assertEqual(err.code, 1040, err)
        self.assertIn("client_startup_limit", err.message)
        loopback = self.hold(port, STARTUP_PER_CLIENT + 2)
        greeted = loopback.expect(fx.my_packet_complete, timeout=10)
        self.assertEqual(
            [first_my_packet(loopback.received[i])[:1] for i in greeted],
            [b"\x0a"] * (STARTUP_PER_CLIENT + 2), "loopback clients are exempt")
        pending.close([0])

        def greeted_again():
            probe = self.hold(port, 1, source=source)
            probe.expect(fx.my_packet_complete, timeout=5)
            payload = first_my_packet(probe.received[0])
            probe.close()
            return payload is not None and payload[:1] == b"\x0a"
        fx.wait_for(greeted_again, 5, what=f"a freed slot to greet {source} again")


# --------------------------------------------------------------------------------------------
# 3. Overload budget
# --------------------------------------------------------------------------------------------

class TestOverloadBudget(unittest.TestCase):
    def setUp(self):
        skip_if_sanitized(self)


    def test_overload_pauses_refuses_and_resumes(self):
        admin = fx.free_port()
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s",
                               admin=f"127.0.0.1:{admin}",
                               **new_keys(memory_limit=f"{OVERLOAD_BUDGET // MIB}MiB"))
        pg = cfg.add_listener("pg", "postgres", pg_upstream(), max_connections=20000,
                              **HOLD_TIMEOUTS)
        tls = cfg.add_listener("pg-tls", "postgres", pg_upstream(), max_connections=20000,
                               **HOLD_TIMEOUTS, **serving_options())
        my = cfg.add_listener("my", "mysql", my_upstream(), max_connections=100,
                              **HOLD_TIMEOUTS)
        d = start_dbtrust("dbtrust-overload", cfg, what="memory_limit not implemented?",
                          admin_port=admin)
        pid = d.proc.pid
        self.assertEqual(gauge(admin), 0.0, "the gauge dbtrust_overloaded must be exported "
                                            "and 0 while not overloaded")
        pg_session = pg_connect(pg.port, app="memtest-established")
        my_session = my_connect(my.port, app="memtest-established")
        self.addCleanup(close_quietly, pg_session, my_session)
        pending_pg = fx.HeldConnections([("127.0.0.1", pg.port, W.startup[:4])] * 3)
        pending_my = fx.HeldConnections([("127.0.0.1", my.port)] * 2)
        self.addCleanup(pending_pg.close)
        self.addCleanup(pending_my.close)
        self.assertEqual(len(pending_my.expect(fx.my_packet_complete, timeout=10)), 2)
        mark = d.mark()
        sampler = fx.RssSampler(pid).start()
        self.addCleanup(sampler.stop)
        held = []
        self.addCleanup(lambda: [h.close() for h in held])
        overloaded = None
        while sum(len(h.socks) for h in held) < OVERLOAD_CAP:
            batch = fx.HeldConnections([("127.0.0.1", tls.port, fx.PG_SSL_REQUEST)]
                                       * OVERLOAD_STEP, connect_timeout=2, window=512)
            held.append(batch)
            if not batch.connected_indices():
                overloaded = gauge(admin)
                break  # nothing accepted any more: paused, whatever the gauge says
            got_s = [i for i in batch.expect(lambda b: len(b) >= 1, timeout=5)
                     if batch.received[i][:1] == b"S"]
            batch.send(W.hello[:len(W.hello) // 2], got_s)
            time.sleep(0.3)
            overloaded = gauge(admin)
            if overloaded == 1.0 or not d.alive():
                break
        count = sum(len(h.connected_indices()) for h in held)
        rss_now = fx.resident_kib(pid) if d.alive() else None
        state = (f"{count} stalled TLS handshakes held, dbtrust VmRSS {rss_now} KiB (peak "
                 f"{sampler.peak_kib}), memory_limit {OVERLOAD_BUDGET // KIB} KiB")
        self.assertTrue(d.alive(), f"dbtrust died: {state}")
        self.assertEqual(overloaded, 1.0, f"dbtrust_overloaded never became 1: {state}")

        # While overloaded.
        self.assertLessEqual(sampler.peak_kib, OVERLOAD_BUDGET // KIB, state)
        self.assertEqual(pg_select(pg_session, 7), 7, "an established session must go on")
        self.assertEqual(my_select(my_session, 8), 8, "an established session must go on")
        probe = fx.HeldConnections([("127.0.0.1", pg.port, fx.PG_SSL_REQUEST)],
                                   connect_timeout=3)
        self.addCleanup(probe.close)
        self.assertEqual(probe.refused, 0, "a paused listener must not refuse connections "
                                           "(closed instead of paused?)")
        probe_waiting = bool(probe.connected_indices())
        if probe_waiting:
            probe.expect(lambda b: len(b) >= 1, timeout=1.5)
            self.assertEqual(bytes(probe.received[0]), b"", "a new connection was served while "
                                                            "overloaded (listener not paused)")
        pending_pg.send(W.startup[4:])
        pending_pg.expect(fx.pg_message_complete, timeout=5)
        for i in range(3):
            reply = first_pg_message(pending_pg.received[i])
            self.assertIsNotNone(reply, "a startup completed while overloaded got no answer")
            self.assertEqual(reply[0], "E", f"a startup completed while overloaded must be "
                                            f"refused: {reply}")
            fields = reply[1] if isinstance(reply[1], dict) else {}
            self.assertTrue(fields.get("C", "").startswith("53"), reply)
            self.assertIn("overloaded", fields.get("M", ""), reply)
        for i in range(2):
            greeting = fx.my_parse_greeting(first_my_packet(pending_my.received[i]))
            pending_my.received[i][:] = b""
            pending_my.send(fx.my_packet(1, fx.my_handshake_response(
                fx.MY_NATIVE_USER, fx.my_native_scramble(fx.MY_NATIVE_PASSWORD, greeting.nonce),
                database=fx.MY_APP_DATABASE)), [i])
        pending_my.expect(fx.my_packet_complete, timeout=5)
        for i in range(2):
            payload = first_my_packet(pending_my.received[i])
            self.assertIsNotNone(payload, "a MySQL login completed while overloaded got no "
                                          "answer")
            self.assertEqual(payload[:1], b"\xff", f"a MySQL login completed while overloaded "
                                                   f"must be refused: {payload[:60]!r}")
            err = fx.my_parse_err(payload) if payload[:1] == b"\xff" else fx.MyError(0, "", "")
            self.assertIn(err.code, (1040, 1041), err)
            self.assertIn("overloaded", err.message)

        # Release the pressure: dbtrust resumes.
        released = time.monotonic()
        for h in held:
            h.close()
        try:
            fx.wait_for(lambda: gauge(admin) == 0.0, IDLE_SWEEP_S + 15, interval=0.25,
                        what="dbtrust_overloaded back to 0")
        except TimeoutError:
            self.fail(f"dbtrust_overloaded still {gauge(admin)} {IDLE_SWEEP_S + 15:.0f} s after "
                      f"the stalled handshakes closed; VmRSS {fx.resident_kib(pid)} KiB")
        resumed_s = time.monotonic() - released
        if probe_waiting:
            probe.expect(lambda b: len(b) >= 1, timeout=10)
            self.assertEqual(bytes(probe.received[0][:1]), b"N",
                             "the connection that waited in the backlog was not served after "
                             "resuming")
        conn = pg_connect(pg.port, app="memtest-after-overload", timeout=20)
        self.assertEqual(pg_select(conn, 9), 9)
        conn.close()
        self.assertEqual(pg_select(pg_session, 10), 10)
        self.assertEqual(my_select(my_session, 11), 11)
        sampler.stop()
        lines = [line for line in d.lines_since(mark)
                 if "overload" in line and "conn_end" not in line]
        note("overload", stalled_handshakes=count, peak_rss_kib=sampler.peak_kib,
             memory_limit_kib=OVERLOAD_BUDGET // KIB, resumed_after_s=round(resumed_s, 1),
             log_lines=lines[:4])
        self.assertGreaterEqual(len(lines), 1, "the overload was not logged")
        self.assertLessEqual(len(lines), 2, f"the overload must be logged once (entering, and "
                                            f"leaving), not per connection: {lines[:6]}")


# --------------------------------------------------------------------------------------------
# 4. Storm while serving
# --------------------------------------------------------------------------------------------

class QueryLoop(threading.Thread):
    """A client running `select` in a loop: persistent (one session, reconnecting only after
    an error) or reconnecting (connect, query, close, each time). Every error is kept with the
    time it happened."""

    def __init__(self, name, connect, select, persistent):
        super().__init__(name=name, daemon=True)
        self.connect, self.select, self.persistent = connect, select, persistent
        self.ok_times, self.errors, self.connect_seconds = [], [], []
        self.stop_event = threading.Event()

    def run(self):
        conn, n = None, 0
        while not self.stop_event.is_set():
            n += 1
            try:
                if conn is None:
                    start = time.monotonic()
                    conn = self.connect()
                    self.connect_seconds.append(time.monotonic() - start)
                got = self.select(conn, n % 1000)
                if got != n % 1000:
                    raise AssertionError(f"select returned {got}, not {n % 1000}")
                self.ok_times.append(time.monotonic())
                if not self.persistent:
                    close_quietly(conn)
                    conn = None
            except Exception as exc:  # noqa: BLE001 - judged by the test
                self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
                close_quietly(conn)
                conn = None
                self.stop_event.wait(0.2)
            self.stop_event.wait(0.02)
        close_quietly(conn)

    def ok_after(self, t):
        return sum(1 for x in self.ok_times if x > t)

    def finish(self):
        self.stop_event.set()
        self.join(40)
        if self.is_alive():
            self.errors.append((time.monotonic(), "a query or connect hung for over 40 s"))


def storm_targets(n, pg_port, tls_port, my_port):
    """n connections interleaved over six kinds (weights out of 20)."""
    kinds = [("pg-idle", pg_port, b"", 4), ("pg-partial-startup", pg_port, W.startup[:4], 4),
             ("pg-garbage", pg_port, W.garbage, 2), ("my-idle", my_port, b"", 3),
             ("my-garbage", my_port, W.garbage, 1),
             ("tls-slow-handshake", tls_port, fx.PG_SSL_REQUEST, 6)]
    pattern = [k for k in kinds for _ in range(k[3])]
    names, targets = [], []
    for i in range(n):
        name, port, first, _ = pattern[(i * 7) % len(pattern)]  # 7 is coprime with 20
        names.append(name)
        targets.append(("127.0.0.1", port, first))
    return names, targets


class TestStormWhileServing(unittest.TestCase):
    def setUp(self):
        skip_if_sanitized(self)


    def test_storm_of_hostile_connections_while_clients_run_queries(self):
        admin = fx.free_port()
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s",
                               admin=f"127.0.0.1:{admin}",
                               **new_keys(memory_limit=f"{STORM_BUDGET // MIB}MiB"))
        limits = {"max_connections": 1000, "startup_timeout": "60s", "handshake_timeout": "60s"}
        pg = cfg.add_listener("pg", "postgres", pg_upstream(), **limits)
        tls = cfg.add_listener("pg-tls", "postgres", pg_upstream(), **limits,
                               **serving_options())
        my = cfg.add_listener("my", "mysql", my_upstream(), **limits)
        d = start_dbtrust("dbtrust-storm", cfg, what="memory_limit not implemented?",
                          admin_port=admin)
        pid = d.proc.pid
        loops = [
            QueryLoop("pg-persistent", lambda: pg_connect(pg.port, "memtest-persistent", 30),
                      pg_select, True),
            QueryLoop("pg-reconnecting", lambda: pg_connect(pg.port, "memtest-reconnect", 30),
                      pg_select, False),
            QueryLoop("my-persistent", lambda: my_connect(my.port, "memtest-persistent", 30),
                      my_select, True),
            QueryLoop("my-reconnecting", lambda: my_connect(my.port, "memtest-reconnect", 30),
                      my_select, False),
        ]
        for loop in loops:
            loop.start()
        self.addCleanup(lambda: [loop.finish() for loop in loops])
        fx.wait_for(lambda: all(len(loop.ok_times) >= 3 for loop in loops), 30,
                    what="every client loop to run queries")
        time.sleep(SETTLE_S)
        baseline = median_rss(pid)
        overload_seen = []
        sampler = fx.RssSampler(pid, interval=0.05).start()
        self.addCleanup(sampler.stop)
        watch_stop = threading.Event()

        def watch_gauge():
            while not watch_stop.wait(0.5):
                overload_seen.append(gauge(admin, timeout=2))
        watcher = threading.Thread(target=watch_gauge, daemon=True)
        watcher.start()

        storm_start = time.monotonic()
        names, targets = storm_targets(STORM, pg.port, tls.port, my.port)
        storm = fx.HeldConnections(targets, window=512, connect_timeout=2, open_budget=30)
        self.addCleanup(storm.close)
        tls_idx = [i for i, k in enumerate(names) if k == "tls-slow-handshake"]
        got_s = [i for i in storm.expect(lambda b: len(b) >= 1, tls_idx, timeout=5)
                 if storm.received[i][:1] == b"S"]
        storm.send(W.hello[:len(W.hello) // 2], got_s)
        opened_s = time.monotonic() - storm_start
        time.sleep(max(0.0, STORM_HOLD_S - (time.monotonic() - storm_start)))
        still_open = len(storm.open_indices())
        connected = len(storm.connected_indices())
        storm.close()
        storm_end = time.monotonic()

        tolerance = max(8 * KIB, baseline // 4)
        try:
            fx.wait_for(lambda: fx.resident_kib(pid) <= baseline + tolerance,
                        IDLE_SWEEP_S + 8, interval=0.25, what="VmRSS back near the baseline")
        except TimeoutError:
            pass
        settled = median_rss(pid) if d.alive() else None
        recovered_s = time.monotonic() - storm_end
        try:
            fx.wait_for(lambda: all(loop.ok_after(storm_end) >= 2 for loop in loops), 30,
                        what="every client loop to succeed after the storm")
        except TimeoutError:
            pass
        watch_stop.set()
        watcher.join(5)
        sampler.stop()
        final_gauge = gauge(admin)
        for loop in loops:
            loop.finish()

        summary = {
            "hostile": STORM, "connected": connected,
            "connect_failures": storm.connect_failures, "tls_got_s": len(got_s),
            "open_at_end_of_hold": still_open, "open_seconds": round(opened_s, 2),
            "baseline_rss_kib": baseline, "peak_rss_kib": sampler.peak_kib,
            "budget_kib": STORM_BUDGET // KIB, "settled_rss_kib": settled,
            "settle_seconds": round(recovered_s, 1),
            "overloaded_seen": any(v == 1.0 for v in overload_seen),
            "final_overloaded_gauge": final_gauge,
        }
        for loop in loops:
            during = sum(1 for t in loop.ok_times if storm_start <= t <= storm_end)
            summary[loop.name] = {"ok": len(loop.ok_times), "ok_during_storm": during,
                                  "ok_after": loop.ok_after(storm_end),
                                  "errors": len(loop.errors),
                                  "max_connect_s": round(max(loop.connect_seconds or [0]), 2)}
        note("storm", **summary)
        text = json.dumps(summary, sort_keys=True)

        self.assertTrue(d.alive(), f"dbtrust died in the storm: {text}")
        for loop in loops:
            if loop.persistent:
                self.assertEqual(loop.errors, [], f"{loop.name}: an established session must "
                                                  f"not fail: {text}")
            else:
                unclear = [e for _, e in loop.errors if not LIMIT_REFUSAL.search(e)]
                self.assertEqual(unclear, [], f"{loop.name}: errors other than a clear limit "
                                              f"refusal: {text}")
            self.assertGreaterEqual(loop.ok_after(storm_end), 2,
                                    f"{loop.name} did not work again after the storm: {text}")
        self.assertLessEqual(sampler.peak_kib, STORM_BUDGET // KIB,
                             f"VmRSS peak over the memory_limit budget: {text}")
        self.assertIsNotNone(settled)
        self.assertLessEqual(settled, baseline + tolerance,
                             f"VmRSS not back within {tolerance} KiB of the pre-storm "
                             f"{baseline} KiB after the idle sweep: {text}")
        self.assertEqual(final_gauge, 0.0, f"dbtrust_overloaded after the storm: {text}")


# --------------------------------------------------------------------------------------------
# 5. Cgroup
# --------------------------------------------------------------------------------------------

def cgroup_storm(binary, tag):
    """Run dbtrust (binary) in a fresh 64 MiB memory cgroup and storm it with CGROUP_STORM held
    connections; returns what happened (never raises for dbtrust's own fate)."""
    try:
        cg = fx.MemoryCgroup(f"dbtrust-memtest-{tag}", CGROUP_LIMIT)
    except (RuntimeError, OSError) as exc:
        raise unittest.SkipTest(f"no memory cgroup to use: {exc}")
    cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s")
    limits = {"max_connections": 20000, "startup_timeout": "60s", "handshake_timeout": "60s"}
    pg = cfg.add_listener("pg", "postgres", pg_upstream(), **limits)
    tls = cfg.add_listener("pg-tls", "postgres", pg_upstream(), **limits, **serving_options())
    d = start_dbtrust(f"dbtrust-cgroup-{tag}", cfg, launcher=cg.launcher(), binary=binary)
    pid = d.proc.pid
    result = {"binary": binary, "cgroup": cg.path, "limit_kib": CGROUP_LIMIT // KIB,
              "in_cgroup": pid in cg.pids()}
    time.sleep(0.5)
    result["baseline_rss_kib"] = fx.resident_kib(pid)
    oom_before = cg.oom_kills()
    sampler = fx.RssSampler(pid, interval=0.05).start()
    half = CGROUP_STORM // 2
    targets = ([("127.0.0.1", pg.port, W.startup[:4])] * half
               + [("127.0.0.1", tls.port, fx.PG_SSL_REQUEST)] * (CGROUP_STORM - half))
    targets = [t for pair in zip(targets[:half], targets[half:]) for t in pair]
    start = time.monotonic()
    storm = fx.HeldConnections(targets, window=512, connect_timeout=2, open_budget=40)
    try:
        tls_idx = list(range(1, len(targets), 2))
        got_s = [i for i in storm.expect(lambda b: len(b) >= 1, tls_idx, timeout=10)
                 if storm.received[i][:1] == b"S"]
        storm.send(W.hello[:len(W.hello) // 2], got_s)
        result["open_seconds"] = round(time.monotonic() - start, 1)
        deadline = start + result["open_seconds"] + CGROUP_HOLD_S
        while time.monotonic() < deadline and d.alive():
            time.sleep(0.2)
        result.update(connected=len(storm.connected_indices()),
                      connect_failures=storm.connect_failures, tls_got_s=len(got_s),
                      open_at_end=len(storm.open_indices()))
        result["kernel_kib_with_storm"] = kib(cg.kernel_bytes())
    finally:
        storm.close()
        sampler.stop()
    result.update(alive=d.alive(), exit_status=None if d.alive() else d.proc.returncode,
                  oom_kills=cg.oom_kills() - oom_before, limit_hits=cg.limit_hits(),
                  peak_rss_kib=sampler.peak_kib, cgroup_peak_kib=kib(cg.peak_bytes()))
    login_error = None
    if d.alive():
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = pg_connect(pg.port, app="memtest-after-cgroup-storm", timeout=10)
                result["login_after"] = pg_select(conn, 5) == 5
                conn.close()
                break
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                login_error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    result["login_after"] = False
                    result["login_error"] = login_error
                    break
                time.sleep(1)
    else:
        result["log_tail"] = d.output_text()[-800:]
    d.stop()
    cg.remove()
    return result


class TestCgroup(unittest.TestCase):
    def setUp(self):
        skip_if_sanitized(self)


    def test_survives_a_storm_in_a_64mib_cgroup_without_memory_limit(self):
        result = cgroup_storm(DBTRUST_BIN, "current")
        note("cgroup", **{k: v for k, v in result.items() if k != "log_tail"})
        text = json.dumps({k: v for k, v in result.items() if k != "log_tail"}, sort_keys=True)
        self.assertTrue(result["in_cgroup"], f"dbtrust did not start inside the cgroup: {text}")
        self.assertEqual(result["oom_kills"], 0,
                         f"the kernel OOM-killed dbtrust in its 64 MiB cgroup: {text}\n"
                         f"{result.get('log_tail', '')}")
        self.assertTrue(result["alive"], f"dbtrust died in the storm: {text}\n"
                                         f"{result.get('log_tail', '')}")
        self.assertTrue(result.get("login_after"), f"no login after the storm: {text}")

    def test_old_binary_for_comparison(self):
        """Reports only: the same storm against DBTRUST_OLD_BINARY (see the module doc)."""
        old = os.environ.get("DBTRUST_OLD_BINARY")
        if not old:
            self.skipTest("DBTRUST_OLD_BINARY not set")
        if not (os.path.isfile(old) and os.access(old, os.X_OK)):
            self.skipTest(f"DBTRUST_OLD_BINARY={old} is not an executable file")
        try:
            result = cgroup_storm(os.path.abspath(old), "old")
        except AssertionError as exc:  # it could not even start: report, do not fail
            print(f"\n[memtest] old binary {old} did not start: {exc}", file=sys.stderr)
            return
        result.pop("log_tail", None)
        note("cgroup_old_binary", **result)
        print(f"\n[memtest] old binary {old}: "
              f"{'OOM-killed' if result['oom_kills'] else 'not OOM-killed'} "
              f"({'alive' if result['alive'] else 'dead'}) in a "
              f"{CGROUP_LIMIT // MIB} MiB cgroup under {CGROUP_STORM} held connections",
              file=sys.stderr)


if __name__ == "__main__":
    DBTRUST_BIN = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
