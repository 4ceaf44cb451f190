"""Direct TLS on the upstream leg (issue 16 item 3): `sslnegotiation = postgres | direct`.

Run against dbtrust:
    /usr/bin/python3 tests/integration/test_pg_direct.py --dbtrust build/dbtrust [unittest args]

Needs `scripts/install-deps test` (PostgreSQL 16, 17 and 18 from npm in /opt/dbtrust-test; the
PostgreSQL 15 of Debian stands in for 16 when 16 is missing).

The world: TLS-only PostgreSQL 18 and 17 servers (trace_connection_negotiation = on, so each
logs "direct SSL connection accepted" for a direct TLS connection and "SSLRequest accepted" for
the other kind), a TLS-only PostgreSQL 16 (no direct TLS: it reads a ClientHello as a startup
packet length and hangs up), recording TCP relays in front of some of them (what dbtrust's
first bytes were, and how many connections it made), a scripted TLS server that completes the
handshake without ALPN, and one dbtrust with a listener per case. Clients talk plaintext to
dbtrust with Debian's libpq 15 (psql, psycopg2), which knows nothing of direct TLS: what goes
upstream is dbtrust's choice alone.

What dbtrust must do for this suite to pass:
- `sslnegotiation = direct` on a postgres listener: the upstream leg starts with the TLS
  ClientHello (first byte 0x16, ALPN postgresql, SNI), no SSLRequest; verify-full as always.
  Sessions and CancelRequests both; `postgres` (the default) keeps the SSLRequest.
- Against a server without direct TLS (PostgreSQL 16): the client gets an ErrorResponse with
  SQLSTATE 08001 naming `upstream_no_direct_tls` and suggesting `sslnegotiation = postgres`;
  dbtrust makes exactly one upstream connection (no fallback to the SSLRequest). The same for
  a TLS server that selects no ALPN `postgresql`.
- `dbtrust check` and the rotation guard's probe negotiate as the listener does: verified
  against 18, `upstream_no_direct_tls` (check: FAILED, exit 1; guard: result=unreachable)
  against 16.
"""

import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

import psycopg2  # noqa: E402

APP, APP_PW, DB = fx.PG_APP_USER, fx.PG_APP_PASSWORD, fx.PG_APP_DATABASE
CANCEL_DEADLINE_S = 2.0
HINT = "sslnegotiation = postgres"
DIRECT_ACCEPTED = "direct SSL connection accepted"  # PostgreSQL 17+ with the trace on
DIRECT_REJECTED = "direct SSL connection rejected"
SSLREQUEST_ACCEPTED = "SSLRequest accepted"
TLS_RECORD_HANDSHAKE = 0x16
PG_SESSION = ("select current_user, s.ssl, s.version, current_setting('server_version_num') "
              "from pg_stat_ssl s where s.pid = pg_backend_pid()")

DBTRUST_BIN = None           # set from --dbtrust before unittest runs
W = types.SimpleNamespace()  # the module's world


class RecordingRelay:
    """A TCP relay on 127.0.0.1 in front of target_port that keeps the first bytes dbtrust sent
    on each connection: what the server saw first, and how many connections there were."""

    def __init__(self, target_port, name):
        self.target_port = target_port
        self.name = name
        self.port = fx.free_port()
        self.firsts = []  # the first bytes (up to 8) of each connection, in accept order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = None

    def start(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        threading.Thread(target=self._accept_loop, daemon=True, name=self.name).start()
        fx.register_cleanup(self.stop)
        return self

    def stop(self):
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def count(self):
        with self._lock:
            return len(self.firsts)

    def firsts_since(self, count):
        with self._lock:
            return list(self.firsts[count:])

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except (OSError, AttributeError):
                return
            with self._lock:
                index = len(self.firsts)
                self.firsts.append(b"")
            threading.Thread(target=self._pump, args=(conn, index), daemon=True).start()

    def _pump(self, client, index):
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        peers = {client: server, server: client}
        open_ends = set(peers)  # a half-close is passed on (a cancel's leg ends with one)
        try:
            while open_ends and not self._stop.is_set():
                ready, _, _ = select.select(list(open_ends), [], [], 0.2)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        open_ends.discard(s)
                        peers[s].shutdown(socket.SHUT_WR)
                        continue
                    if s is client:
                        with self._lock:
                            if len(self.firsts[index]) < 8:
                                self.firsts[index] += data[:8 - len(self.firsts[index])]
                    peers[s].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()


class TlsWithoutAlpn(fx.ScriptedUpstream):
    """A TLS server on a direct connection (ClientHello first) with a valid certificate that
    selects no ALPN protocol: a TLS terminator, not a PostgreSQL 17+ server."""

    def __init__(self, cert):
        super().__init__(self._script, "tls-without-alpn")
        self.cert = cert

    def _script(self, sock, record, stop_event):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert.chain, self.cert.key)
        try:
            tls = ctx.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            record.notes["handshake"] = repr(exc)
            return
        record.notes["alpn"] = tls.selected_alpn_protocol()
        tls.settimeout(2)
        try:
            record.notes["after"] = tls.recv(100)
        except (ssl.SSLError, OSError):
            record.notes["after"] = b""
        tls.close()


def start_server(major, name):
    """A TLS-only server of `major` with the app roles; 17+ log direct TLS acceptance."""
    # A developer option, settable in postgresql.conf: each negotiation logs how it went.
    settings = {"trace_connection_negotiation": "on"} if major >= 17 else {}
    try:
        server = fx.embedded_postgres_server(major, W.pki.leaf, name, settings=settings)
    except RuntimeError:
        if major != 16:
            raise
        server = fx.PostgresServer(W.pki.leaf, name)  # Debian's 15: no direct TLS either
    return server.start().provision_app_roles()


def setUpModule():
    for key in [k for k in os.environ if k.startswith("PG")]:
        del os.environ[key]  # libpq would obey them silently
    if not (DBTRUST_BIN and os.path.isfile(DBTRUST_BIN) and os.access(DBTRUST_BIN, os.X_OK)):
        raise RuntimeError(f"dbtrust binary not found or not executable: {DBTRUST_BIN}")
    W.tmp = fx.make_temp_dir("test-pg-direct")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.pg = {18: start_server(18, "pg18-direct"), 17: start_server(17, "pg17-direct"),
            16: start_server(16, "pg16-no-direct")}
    W.relay = {major: RecordingRelay(W.pg[major].port, f"relay-{major}").start()
               for major in (18, 17, 16)}
    W.no_alpn = TlsWithoutAlpn(W.pki.leaf).start()
    timeouts = {"connect_timeout": "3s", "handshake_timeout": "5s", "startup_timeout": "5s"}
    W.config = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s")
    W.listener = {}

    def listener(name, port, **options):
        spec = W.config.add_listener(name, "postgres", f"localhost:{port}",
                                     **{**timeouts, **options})
        W.listener[name] = spec.port

    for major in (18, 17, 16):
        listener(f"direct{major}", W.relay[major].port, sslnegotiation="direct")
    listener("postgres18", W.relay[18].port, sslnegotiation="postgres")
    listener("default18", W.pg[18].port)
    listener("wrongname18", W.pg[18].port, sslnegotiation="direct",
             server_name="wrong.example.org")
    listener("noalpn", W.no_alpn.port, sslnegotiation="direct")
    W.dbtrust = fx.DbTrust.from_config(DBTRUST_BIN, W.config, W.tmp, name="dbtrust-direct")
    W.dbtrust.start(timeout=10)


def tearDownModule():
    fx.run_cleanups()


def dsn(listener, app=None, **extra):
    return fx.pg_conninfo(host="127.0.0.1", port=W.listener[listener], user=APP,
                          password=APP_PW, dbname=DB, sslmode="disable",
                          application_name=app, connect_timeout=15, **extra)


def connect(listener, app=None):
    conn = psycopg2.connect(dsn(listener, app))
    conn.autocommit = True
    return conn


def query_one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def unique_app(tag):
    return f"dbt-{tag}-{os.urandom(3).hex()}"


def log_count(server, text):
    return server.log_text().count(text)


def first_reply(listener):
    """What a client sees for a StartupMessage: (type, fields of an ErrorResponse or None)."""
    _, mtype, body = fx.pg_first_reply("127.0.0.1", W.listener[listener],
                                       {"user": APP, "database": DB}, timeout=20)
    return mtype, fx.pg_error_fields(body) if mtype == "E" else None


class DirectCase(unittest.TestCase):

    def assert_direct_hello(self, first, what):
        self.assertTrue(first, f"{what}: the relay saw no byte")
        self.assertEqual(first[0], TLS_RECORD_HANDSHAKE,
                         f"{what}: first bytes {first.hex()} are not a TLS handshake record")
        self.assertNotEqual(first[:8], fx.PG_SSL_REQUEST, f"{what}: an SSLRequest was sent")

    def conn_end(self, listener, *substrings, since=0):
        return fx.parse_logfmt(W.dbtrust.wait_for_line(
            "conn_end", f"listener={listener}", *substrings, since=since, timeout=10))


class TestDirectSessions(DirectCase):
    """(a) A direct listener against 18 and 17: SCRAM session over TLS, ClientHello first."""

    def check_session(self, major):
        listener = f"direct{major}"
        relay, server = W.relay[major], W.pg[major]
        count, accepted = relay.count(), log_count(server, DIRECT_ACCEPTED)
        app = unique_app(f"direct{major}")
        mark = W.dbtrust.mark()
        conn = connect(listener, app)
        try:
            user, tls_on, version, num = query_one(conn, PG_SESSION)
        finally:
            conn.close()
        self.assertEqual((user, tls_on, version), (APP, True, "TLSv1.3"))
        self.assertEqual(int(num) // 10000, major)
        firsts = relay.firsts_since(count)
        self.assertEqual(len(firsts), 1, firsts)
        self.assert_direct_hello(firsts[0], listener)
        # The server itself says the connection was direct (it also means ALPN "postgresql"
        # was offered: PostgreSQL 17+ drops a direct connection without it).
        fx.wait_for(lambda: log_count(server, DIRECT_ACCEPTED) > accepted, 5,
                    what=f"PostgreSQL {major} to log '{DIRECT_ACCEPTED}'")
        line = self.conn_end(listener, f"app={app}", since=mark)
        self.assertEqual(line["reason"], "client_closed")
        self.assertEqual(line["tls"], "TLSv1.3")

    def test_18(self):
        self.check_session(18)

    def test_17(self):
        self.check_session(17)

    def test_psql_scram_18(self):
        proc = fx.run_psql(dsn("direct18"), PG_SESSION, password=None, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        user, tls_on, version, num = proc.stdout.strip().split("|")
        self.assertEqual((user, tls_on, version), (APP, "t", "TLSv1.3"))
        self.assertEqual(int(num) // 10000, 18)

    def test_postgres_negotiation_still_sends_the_sslrequest(self):
        """The default and `postgres`: SSLRequest first; the server logs no direct TLS."""
        count, accepted = W.relay[18].count(), log_count(W.pg[18], DIRECT_ACCEPTED)
        requests = log_count(W.pg[18], SSLREQUEST_ACCEPTED)
        for listener in ("postgres18", "default18"):
            conn = connect(listener, unique_app(listener))
            try:
                self.assertEqual(query_one(conn, PG_SESSION)[:3], (APP, True, "TLSv1.3"))
            finally:
                conn.close()
        firsts = W.relay[18].firsts_since(count)
        self.assertEqual(firsts, [fx.PG_SSL_REQUEST])
        fx.wait_for(lambda: log_count(W.pg[18], SSLREQUEST_ACCEPTED) >= requests + 2, 5,
                    what=f"PostgreSQL 18 to log '{SSLREQUEST_ACCEPTED}' twice")
        self.assertEqual(log_count(W.pg[18], DIRECT_ACCEPTED), accepted)


class TestDirectCancel(DirectCase):
    """(a) A CancelRequest through a direct listener: its own upstream leg, also direct."""

    def check_cancel(self, major):
        """The session and its cancel run in a child process (libpq_client.py, libpq of
        `major`, PQcancel: a plaintext CancelRequest to dbtrust): psycopg2's cancel holds the
        GIL while it waits, which would stall this process's relay threads."""
        listener, relay = f"direct{major}", W.relay[major]
        count, mark = relay.count(), W.dbtrust.mark()
        accepted = log_count(W.pg[major], DIRECT_ACCEPTED)
        out = fx.run_libpq_client(major, {
            "dsn": dsn(listener, unique_app(f"cancel{major}")),
            "queries": ["select 1"],
            "cancel": {"query": "select pg_sleep(30)", "after_s": 2.0, "method": "PQcancel"}})
        self.assertIsNone(out["error"], out)
        cancel = out["cancel"]
        self.assertTrue(cancel["ok"], cancel)
        self.assertEqual(cancel["sqlstate"], "57014", cancel)  # query_canceled
        self.assertLess(cancel["latency_s"], CANCEL_DEADLINE_S, cancel)
        # Two upstream connections (the session, the cancel), both begun with a ClientHello,
        # both accepted by the server as direct TLS.
        firsts = relay.firsts_since(count)
        self.assertEqual(len(firsts), 2, firsts)
        for first in firsts:
            self.assert_direct_hello(first, listener)
        self.assertGreaterEqual(log_count(W.pg[major], DIRECT_ACCEPTED), accepted + 2)
        self.conn_end(listener, "reason=cancel_forwarded", since=mark)

    def test_18(self):
        self.check_cancel(18)

    def test_17(self):
        self.check_cancel(17)


class TestNoDirectTls(DirectCase):
    """(b) A direct listener against a server without direct TLS fails closed, once."""

    def test_server_without_direct_tls(self):
        relay = W.relay[16]
        count, mark = relay.count(), W.dbtrust.mark()
        mtype, fields = first_reply("direct16")
        self.assertEqual(mtype, "E")
        self.assertEqual(fields["C"], "08001")
        self.assertIn("upstream_no_direct_tls", fields["M"])
        self.assertIn(HINT, fields["M"])
        self.assertIn("listener direct16", fields["M"])
        self.assertIn("PostgreSQL 17", fields.get("H", ""))
        line = self.conn_end("direct16", "reason=upstream_no_direct_tls", since=mark)
        self.assertIn(HINT, line["detail"])
        # No fallback: exactly one upstream connection, and it began with the ClientHello.
        time.sleep(0.5)
        firsts = relay.firsts_since(count)
        self.assertEqual(len(firsts), 1, firsts)
        self.assert_direct_hello(firsts[0], "direct16")

    def test_psycopg2_sees_the_reason(self):
        with self.assertRaises(psycopg2.OperationalError) as caught:
            connect("direct16").close()
        self.assertIn("upstream_no_direct_tls", str(caught.exception))
        self.assertIn(HINT, str(caught.exception))

    def test_tls_server_without_alpn(self):
        count, mark = W.no_alpn.connection_count(), W.dbtrust.mark()
        mtype, fields = first_reply("noalpn")
        self.assertEqual(mtype, "E")
        self.assertEqual(fields["C"], "08001")
        self.assertIn("upstream_no_direct_tls", fields["M"])
        self.assertIn("without selecting ALPN 'postgresql'", fields["M"])
        self.assertIn(HINT, fields["M"])
        self.conn_end("noalpn", "reason=upstream_no_direct_tls", since=mark)
        records = W.no_alpn.connections_since(count)
        self.assertEqual(len(records), 1)
        self.assertIsNone(records[0].notes.get("alpn"))
        self.assertEqual(records[0].notes.get("after"), b"",
                         "dbtrust sent data (the StartupMessage) to a server without ALPN")


class TestVerifyFullOnDirect(DirectCase):
    """(c) verify-full still applies: a name the certificate does not carry is refused."""

    def test_wrong_name(self):
        rejected = log_count(W.pg[18], DIRECT_REJECTED)
        mark = W.dbtrust.mark()
        mtype, fields = first_reply("wrongname18")
        self.assertEqual(mtype, "E")
        self.assertEqual(fields["C"], "08001")
        self.assertIn("tls_hostname_mismatch", fields["M"])
        self.assertIn("wrong.example.org", fields["M"])
        self.conn_end("wrongname18", "reason=tls_hostname_mismatch", since=mark)
        # A direct connection that failed verification (dbtrust's alert ends the server's
        # handshake), not a negotiation failure.
        fx.wait_for(lambda: log_count(W.pg[18], DIRECT_REJECTED) > rejected, 5,
                    what=f"PostgreSQL 18 to log '{DIRECT_REJECTED}'")


def write_config(name, listeners, bundle):
    config = fx.DbTrustConfig(bundle, workers=1)
    for lname, port, options in listeners:
        config.add_listener(lname, "postgres", f"localhost:{port}",
                            connect_timeout="3s", handshake_timeout="5s", **options)
    return config, config.write(os.path.join(W.tmp, f"{name}.ini"))


class TestCheckCommand(DirectCase):
    """(d) `dbtrust check` negotiates as the listener does."""

    def run_check(self, name, listeners):
        _, path = write_config(name, listeners, W.pki.bundle)
        return subprocess.run([DBTRUST_BIN, "check", "--config", path], capture_output=True,
                              text=True, timeout=60)

    def test_direct_against_18_verifies(self):
        accepted = log_count(W.pg[18], DIRECT_ACCEPTED)
        proc = self.run_check("check18", [("c18", W.pg[18].port, {"sslnegotiation": "direct"})])
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("listener c18 (postgres)", proc.stdout)
        self.assertIn("verified (TLSv1.3, name localhost", proc.stdout)
        fx.wait_for(lambda: log_count(W.pg[18], DIRECT_ACCEPTED) > accepted, 5,
                    what="PostgreSQL 18 to log the probe's direct connection")

    def test_direct_against_16_fails_with_the_hint(self):
        proc = self.run_check("check16", [
            ("c16direct", W.pg[16].port, {"sslnegotiation": "direct"}),
            ("c16postgres", W.pg[16].port, {})])
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        lines = proc.stdout.splitlines()
        direct = [line for line in lines if line.startswith("listener c16direct ")]
        self.assertEqual(len(direct), 1, proc.stdout)
        self.assertIn("FAILED upstream_no_direct_tls", direct[0])
        self.assertIn(f"{HINT} for listener c16direct", direct[0])
        plain = [line for line in lines if line.startswith("listener c16postgres ")]
        self.assertEqual(len(plain), 1, proc.stdout)
        self.assertIn("verified", plain[0])


class TestRotationGuard(DirectCase):
    """(e) The rotation guard's probe uses the listener's negotiation."""

    def test_guard_probes_direct(self):
        bundle_dir = fx.BundleDirectory()
        bundle_dir.install(fx.pem_of(W.pki.root))
        config, _ = write_config("guard", [
            ("g18", W.pg[18].port, {"sslnegotiation": "direct"}),
            ("g16", W.pg[16].port, {"sslnegotiation": "direct"})], bundle_dir.path)
        dbtrust = fx.DbTrust.from_config(DBTRUST_BIN, config, W.tmp, name="dbtrust-guard")
        dbtrust.start(timeout=10)
        self.addCleanup(dbtrust.stop)
        accepted = log_count(W.pg[18], DIRECT_ACCEPTED)
        mark = dbtrust.mark()
        bundle_dir.install(fx.pem_of(W.pki.root, W.pki.rogue_root))
        ok = dbtrust.wait_for_line("bundle_guard", "listener=g18", since=mark, timeout=15)
        self.assertIn("result=verified", ok)
        self.assertIn("reason=none", ok)
        bad = dbtrust.wait_for_line("bundle_guard", "listener=g16", since=mark, timeout=15)
        self.assertIn("result=unreachable", bad)
        self.assertIn("reason=upstream_no_direct_tls", bad)
        self.assertIn(HINT, bad)
        # Not a verification failure: the bundle is applied.
        dbtrust.wait_for_line("bundle_reload", "result=ok", since=mark, timeout=15)
        self.assertGreater(log_count(W.pg[18], DIRECT_ACCEPTED), accepted,
                           "the probe of g18 was not a direct TLS connection")


if __name__ == "__main__":
    DBTRUST_BIN = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
