"""Limits (issue 7 item 2): each one a config key with a default, refused with a clean,
protocol-native error naming the reason, never a crash, hang or busy loop.

Run: /usr/bin/python3 tests/integration/test_limits.py --dbtrust build/dbtrust

- max_connections per listener: PostgreSQL 53300 and MySQL 1040 to the client, the slot comes
  back when a session ends.
- upstream_connect_limit: a burst of clients reaches a server that never answers as at most
  that many concurrent upstream connections; the rest get limit_reached at connect_timeout.
- Startup packet bounds: an oversized PostgreSQL startup packet and an oversized MySQL
  handshake response are refused before they are buffered.
- EMFILE: out of descriptors, dbtrust neither spins nor dies, and serves again afterwards.
- `user =`: root binds a privileged port, then runs as nobody with no capabilities.
(The startup-phase timeout against slow clients is in test_pg/test_mysql: slow-client tests.)
"""
import os
import socket
import struct
import sys
import threading
import time
import types
import unittest

import psycopg2
import pymysql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

W = types.SimpleNamespace()


def setUpModule():
    for key in [k for k in os.environ if k.startswith(("PG", "MYSQL", "MARIADB"))]:
        del os.environ[key]
    W.tmp = fx.make_temp_dir("test-limits")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.pg = fx.PostgresServer(W.pki.leaf, "pg-limits").start().provision_app_roles()
    W.maria = fx.MariadbServer(W.pki.leaf, "maria-limits").start().provision_app_users()
    W.silent = fx.ScriptedUpstream(counting_silent, "silent-upstream").start()
    W.silent_peak = Peak()
    cfg = fx.DbTrustConfig(W.pki.bundle, workers=1, drain_timeout="1s")
    W.pg_small = cfg.add_listener("pg-small", "postgres", f"localhost:{W.pg.port}",
                                  max_connections=2)
    W.my_small = cfg.add_listener("my-small", "mysql", f"localhost:{W.maria.port}",
                                  max_connections=2)
    W.pg_open = cfg.add_listener("pg-open", "postgres", f"localhost:{W.pg.port}")
    W.my_open = cfg.add_listener("my-open", "mysql", f"localhost:{W.maria.port}")
    W.storm = cfg.add_listener("storm", "postgres", f"localhost:{W.silent.port}",
                               upstream_connect_limit=2, connect_timeout="1s",
                               handshake_timeout="3s", startup_timeout="10s")
    W.dbtrust = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp, name="dbtrust-limits")
    W.dbtrust.start()


def tearDownModule():
    fx.run_cleanups()


class Peak:
    """Concurrent connections of a scripted upstream: now and the most seen at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def enter(self):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self):
        with self.lock:
            self.now -= 1


def counting_silent(sock, record, stop_event):
    """Accepts, never answers, counts how many such connections are open at once."""
    W.silent_peak.enter()
    try:
        record.drain(sock, stop_event)
    finally:
        W.silent_peak.leave()


def pg_connect(spec, app="limits"):
    return psycopg2.connect(host="127.0.0.1", port=spec.port, user=fx.PG_APP_USER,
                            password=fx.PG_APP_PASSWORD, dbname=fx.PG_APP_DATABASE,
                            sslmode="disable", connect_timeout=10, application_name=app)


def my_connect(spec, app="limits"):
    return pymysql.connect(host="127.0.0.1", port=spec.port, user=fx.MY_NATIVE_USER,
                           password=fx.MY_NATIVE_PASSWORD, database=fx.MY_APP_DATABASE,
                           ssl_disabled=True, connect_timeout=10, program_name=app)


def pg_raw_error(port, payload, timeout=5):
    """Sends payload to a PostgreSQL listener and returns the ErrorResponse fields."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        mtype, body = fx.pg_read_message(s)
        if mtype != "E":
            raise AssertionError(f"expected an ErrorResponse, got {mtype!r}")
        fields = {}
        for item in body.split(b"\0"):
            if item:
                fields[chr(item[0])] = item[1:].decode()
        return fields


def closed_by_peer(sock):
    sock.settimeout(0.2)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


class TestMaxConnections(unittest.TestCase):

    def test_postgres_third_session_gets_53300_and_the_slot_comes_back(self):
        first, second = pg_connect(W.pg_small), pg_connect(W.pg_small)
        try:
            mark = W.dbtrust.mark()
            with self.assertRaises(psycopg2.OperationalError) as caught:
                pg_connect(W.pg_small, app="limits-third")
            text = str(caught.exception)
            self.assertIn("(limit_reached)", text)
            self.assertIn("max_connections (2) reached", text)
            self.assertIn("[listener pg-small,", text)
            W.dbtrust.wait_for_line("conn_end", "listener=pg-small", "reason=limit_reached",
                                    since=mark)
            fields = pg_raw_error(W.pg_small.port, fx.pg_startup_message(
                {"user": fx.PG_APP_USER, "database": fx.PG_APP_DATABASE}))
            self.assertEqual(fields["C"], "53300", fields)
            self.assertEqual(fields["S"], "FATAL", fields)
            for conn in (first, second):
                cur = conn.cursor()
                cur.execute("select 1")
                self.assertEqual(cur.fetchone(), (1,))
        finally:
            first.close()
        fx.wait_for(lambda: self._can_connect(W.pg_small), 5, what="a freed slot")
        second.close()

    @staticmethod
    def _can_connect(spec):
        try:
            conn = pg_connect(spec, app="limits-again")
        except psycopg2.OperationalError:
            return False
        conn.close()
        return True

    def test_mysql_third_session_gets_1040(self):
        first, second = my_connect(W.my_small), my_connect(W.my_small)
        try:
            with self.assertRaises(pymysql.err.OperationalError) as caught:
                my_connect(W.my_small, app="limits-third")
            code, message = caught.exception.args[:2]
            self.assertEqual(code, 1040, message)
            self.assertIn("(limit_reached)", message)
            self.assertIn("max_connections (2) reached", message)
            with first.cursor() as cur:
                cur.execute("select 40 + 2")
                self.assertEqual(cur.fetchone(), (42,))
        finally:
            first.close()
            second.close()

    def test_other_listeners_are_not_limited(self):
        conns = [pg_connect(W.pg_open) for _ in range(4)]
        try:
            for conn in conns:
                cur = conn.cursor()
                cur.execute("select 2")
                self.assertEqual(cur.fetchone(), (2,))
        finally:
            for conn in conns:
                conn.close()


class TestUpstreamConnectLimit(unittest.TestCase):

    def test_burst_reaches_the_upstream_as_at_most_the_limit(self):
        """8 clients at once against a server that never answers: at most 2 upstream
        connections at a time; the ones that waited longer than connect_timeout (1 s) get
        limit_reached naming the key; the 2 that dialled time out in the TLS phase (3 s)."""
        W.silent_peak.most = 0
        mark = W.dbtrust.mark()
        errors = []

        def client(i):
            try:
                pg_connect(W.storm, app=f"storm-{i}")
                errors.append("connected?")
            except psycopg2.OperationalError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        elapsed = time.monotonic() - start
        self.assertEqual(len(errors), 8, errors)
        self.assertLessEqual(W.silent_peak.most, 2)
        self.assertGreaterEqual(W.silent_peak.most, 1)
        limited = [e for e in errors if "(limit_reached)" in e]
        self.assertEqual(len(limited), 6, errors)
        for e in limited:
            self.assertIn("upstream_connect_limit (2)", e)
            self.assertIn("[listener storm,", e)
        timed_out = [e for e in errors if "(tls_handshake_timeout)" in e]
        self.assertEqual(len(timed_out), 2, errors)
        self.assertLess(elapsed, 10)
        fx.wait_for(lambda: len(W.dbtrust.find_lines("conn_end", "listener=storm",
                                                     since=mark)) >= 8, 5, what="8 conn_end")
        lines = W.dbtrust.find_lines("conn_end", "listener=storm", since=mark)
        self.assertEqual(sum("reason=limit_reached" in line for line in lines), 6, lines)


class TestStartupBounds(unittest.TestCase):

    def test_postgres_oversized_startup_packet(self):
        # A length far beyond the server's own limit (10000): refused from the header alone.
        fields = pg_raw_error(W.pg_open.port, struct.pack("!II", 0x7FFFFFF0, 196608))
        self.assertEqual(fields["C"], "08P01", fields)
        self.assertIn("dbtrust", fields["M"])
        self.assertIn("(client_protocol_error)", fields["M"])

    def test_mysql_oversized_handshake_response(self):
        """A HandshakeResponse claiming 16 MiB - 1: refused with an ERR, never buffered."""
        with socket.create_connection(("127.0.0.1", W.my_open.port), timeout=5) as s:
            header = fx.recv_exact(s, 4)
            fx.recv_exact(s, int.from_bytes(header[:3], "little"))  # the greeting
            s.sendall(b"\xff\xff\xff\x01" + b"\0" * 4096)
            header = fx.recv_exact(s, 4)
            payload = fx.recv_exact(s, int.from_bytes(header[:3], "little"))
            self.assertEqual(payload[0], 0xFF, payload[:40])
            code = int.from_bytes(payload[1:3], "little")
            self.assertEqual(code, 1043, payload)  # ER_HANDSHAKE_ERROR
            self.assertIn(b"(client_protocol_error)", payload)


class TestOutOfDescriptors(unittest.TestCase):
    """A dbtrust whose descriptor limit is tiny: accept fails with EMFILE. libuv's reserve
    descriptor accepts and closes the excess, so the loop does not spin on a readable listen
    socket; when descriptors are free again, it serves."""

    def test_emfile_no_busy_loop_and_recovery(self):
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=1, drain_timeout="1s",
                               trust_options={"guard": "off"})
        spec = cfg.add_listener("tight", "postgres", f"localhost:{W.pg.port}")
        path = cfg.write(os.path.join(W.tmp, "tight.ini"))
        d = fx.DbTrust("prlimit", ["--nofile=48:48", sys.argv_dbtrust, "--config", path],
                       [spec.port], W.tmp, "dbtrust-tight").start()
        try:
            self._assert_serves(spec)
            held = []
            for _ in range(80):
                try:
                    held.append(socket.create_connection(("127.0.0.1", spec.port), timeout=2))
                except OSError:
                    break
            time.sleep(0.5)
            cpu0 = self._cpu_seconds(d.proc.pid)
            time.sleep(2)
            busy = self._cpu_seconds(d.proc.pid) - cpu0
            self.assertLess(busy, 0.5, "dbtrust spins while out of descriptors")
            self.assertTrue(d.alive())
            d.wait_for_line("open descriptors nearly exhausted", "listener tight", timeout=5)
            # The excess was closed by libuv's reserve descriptor, not left hanging.
            closed = sum(closed_by_peer(s) for s in held)
            self.assertGreater(closed, 0, "no connection beyond the limit was closed")
            for s in held:
                s.close()
            fx.wait_for(lambda: self._serves(spec), 15, what="service after EMFILE")
        finally:
            d.stop()

    @staticmethod
    def _cpu_seconds(pid):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _assert_serves(self, spec):
        self.assertTrue(self._serves(spec))

    @staticmethod
    def _serves(spec):
        try:
            conn = pg_connect(spec, app="after-emfile")
        except psycopg2.OperationalError:
            return False
        try:
            cur = conn.cursor()
            cur.execute("select 7")
            return cur.fetchone() == (7,)
        finally:
            conn.close()


class TestPrivileges(unittest.TestCase):
    """`user =`: started as root, dbtrust binds (here a privileged port), loads its bundle,
    then runs as that user with no supplementary groups."""

    @staticmethod
    def _privileged_port():
        for port in range(1000, 700, -1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                    return port
                except OSError:
                    continue
        raise unittest.SkipTest("no free port below 1024")

    def test_drops_to_user_after_binding(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to bind a privileged port and to switch users")
        port = self._privileged_port()
        cfg = fx.DbTrustConfig(W.pki.bundle, workers=1, drain_timeout="1s", user="nobody",
                               trust_options={"guard": "off"})
        spec = cfg.add_listener("low", "postgres", f"localhost:{W.pg.port}")
        spec.port = port
        path = cfg.write(os.path.join(W.tmp, "privileges.ini"))
        d = fx.DbTrust(sys.argv_dbtrust, ["--config", path], [port], W.tmp,
                       "dbtrust-privileges").start()
        try:
            with open(f"/proc/{d.proc.pid}/status") as f:
                status = dict(line.split(":", 1) for line in f.read().splitlines())
            ids = {"Uid": status["Uid"].split(), "Gid": status["Gid"].split()}
            self.assertEqual(ids["Uid"], ["65534"] * 4, status["Uid"])  # nobody
            self.assertEqual(ids["Gid"], ["65534"] * 4, status["Gid"])  # nogroup
            self.assertEqual(status["Groups"].strip(), "")
            self.assertEqual(status["CapEff"].strip(), "0000000000000000")
            conn = pg_connect(spec, app="as-nobody")
            try:
                cur = conn.cursor()
                cur.execute("select 5")
                self.assertEqual(cur.fetchone(), (5,))
            finally:
                conn.close()
        finally:
            d.stop()


if __name__ == "__main__":
    sys.argv_dbtrust = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
