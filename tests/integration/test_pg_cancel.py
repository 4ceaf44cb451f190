#!/usr/bin/env python3
"""Cancels find their server (issue 16): a listener with two upstreams of different PostgreSQL
versions, `upstream = first, second`. The first (PostgreSQL 18 from npm) is down when the
session connects, so the session lives on the second (Debian's 15); the first is back up when
the cancel arrives. dbtrust remembered the session's BackendKeyData with the server that holds
it: the cancel must reach the second - the query ends within 2 s - and the first must receive
nothing. A cancel naming a session dbtrust does not know (another replica's, or one that ended)
goes to the listener's first reachable upstream.

Run: /usr/bin/python3 test_pg_cancel.py --dbtrust build/dbtrust
"""

import os
import secrets
import socket
import struct
import sys
import threading
import time
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

import psycopg2  # noqa: E402
import psycopg2.errors  # noqa: E402

APP, APP_PW, DB = fx.PG_APP_USER, fx.PG_APP_PASSWORD, fx.PG_APP_DATABASE
FIRST_MAJOR = 18
DBTRUST_BIN = None
W = types.SimpleNamespace()


class RestartablePostgres(fx.PostgresServer):
    """A server that is stopped and started again on its data directory and port."""

    def relaunch(self, timeout=60):
        self.launch().wait_ready(timeout)

    def log_size(self):
        return os.path.getsize(self.log_path)

    def log_since(self, offset):
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


def setUpModule():
    if not (DBTRUST_BIN and os.path.isfile(DBTRUST_BIN) and os.access(DBTRUST_BIN, os.X_OK)):
        raise RuntimeError(f"dbtrust binary not found or not executable: {DBTRUST_BIN}")
    for key in [k for k in os.environ if k.startswith("PG")]:
        del os.environ[key]
    W.tmp = fx.make_temp_dir("test-pg-cancel")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    root = fx.embedded_pg_dir(FIRST_MAJOR)  # fails early, naming install-deps
    W.first = RestartablePostgres(
        W.pki.leaf, f"pg{FIRST_MAJOR}-first", bin_dir=os.path.join(root, "native", "bin"),
        lib_dir=os.path.join(root, "native", "lib"),
        settings={"log_connections": "on"}).start().provision_app_roles()
    W.second = fx.PostgresServer(W.pki.leaf, "pg15-second").start().provision_app_roles()
    W.first.stop()  # down when the sessions connect
    cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s")
    W.multi = cfg.add_listener("multi", "postgres",
                               f"localhost:{W.first.port}, localhost:{W.second.port}",
                               connect_timeout="2s")
    W.dbtrust = fx.DbTrust.from_config(DBTRUST_BIN, cfg, W.tmp).start()


def tearDownModule():
    fx.run_cleanups()


def connect():
    return psycopg2.connect(fx.pg_conninfo(host="127.0.0.1", port=W.multi.port, user=APP,
                                           password=APP_PW, dbname=DB, sslmode="disable",
                                           connect_timeout=10))


def cancel_sleep(conn):
    """Runs pg_sleep(10) on conn, cancels it through dbtrust after 0.5 s; returns (seconds from
    the cancel to the query's end, what the query raised)."""
    outcome = {}

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute("select pg_sleep(10)")
            outcome["error"] = None
        except psycopg2.Error as exc:
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)
    sent = time.monotonic()
    conn.cancel()  # a CancelRequest on a new connection to dbtrust
    t.join(15)
    return outcome["ended"] - sent, outcome["error"]


def raw_cancel(pid, key):
    """A CancelRequest for (pid, key) sent to dbtrust; returns once dbtrust closed it."""
    with socket.create_connection(("127.0.0.1", W.multi.port), timeout=10) as sock:
        sock.sendall(struct.pack("!III", 12 + len(key), fx.PG_CANCEL_CODE, pid) + key)
        sock.recv(1)


class TestCancelRouting(unittest.TestCase):

    def setUp(self):
        if W.first.proc is not None and W.first.proc.poll() is None:
            W.first.stop()

    def test_cancel_reaches_the_server_that_holds_the_session(self):
        conn = connect()
        self.addCleanup(conn.close)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("show server_version_num")
            self.assertTrue(cur.fetchone()[0].startswith("15"), "session not on the second")
        W.first.relaunch()  # the first is back when the cancel arrives
        mark = W.first.log_size()
        took, error = cancel_sleep(conn)
        self.assertIsInstance(error, psycopg2.errors.QueryCanceled, repr(error))
        self.assertLess(took, 2.0)
        time.sleep(0.3)
        self.assertNotIn("connection received", W.first.log_since(mark),
                         "the cancel went to the first upstream")
        with conn.cursor() as cur:  # the session goes on
            cur.execute("select 1")
            self.assertEqual(cur.fetchone(), (1,))

    def test_unknown_session_goes_to_the_first_reachable_upstream(self):
        W.first.relaunch()
        mark = W.first.log_size()
        raw_cancel(secrets.randbelow(1 << 31), secrets.token_bytes(4))
        fx.wait_for(lambda: "connection received" in W.first.log_since(mark), 5,
                    what="the unknown cancel at the first upstream")


if __name__ == "__main__":
    DBTRUST_BIN = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
