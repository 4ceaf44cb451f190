"""MySQL/MariaDB integration suite for dbtrust: real MariaDB 10.11, real clients, hostile upstreams.

PENDING: dbtrust's `protocol = mysql` listener is not implemented yet. This file is deliberately
not named test_*.py, so ctest does not run it; rename it to test_mysql.py once the listener
works (tests/CMakeLists.txt globs integration/test_*.py).

Run against dbtrust:
    /usr/bin/python3 tests/integration/pending_mysql_suite.py --dbtrust build/dbtrust [args]
Self-check of the test logic without dbtrust (what can be checked without it):
    DBTRUST_SUITE_DIRECT=1 /usr/bin/python3 tests/integration/pending_mysql_suite.py
  Every client then goes straight to its server with verified TLS (the server requires it);
  assertions about dbtrust itself (its greeting, ERR packets, log lines, the RSA bridge) are
  skipped, and each refusal is checked from a verifying client's side instead, which proves
  the hostile fixture really presents what the test claims.

The world: one TLS-only MariaDB ("maria-main", users native / ed25519, database app) serves the
good path; a second one ("maria-impostor") presents the bad certificates in turn (FLUSH SSL);
scripted Python peers play a MySQL server without TLS and a MySQL 8 server speaking
caching_sha2_password (mysql_caching_sha2_server.py). One dbtrust process fronts them all with
one listener per upstream behaviour, two of them on Unix sockets, so every refusal is followed
by a check that the good listener still serves.

What dbtrust must do for this suite to pass (MySQL ERR packets, PROTOCOLS.md B5):
- Clients connect in plaintext (mariadb --skip-ssl, PyMySQL without ssl, MySQLdb without ssl);
  dbtrust's greeting is the server's with CLIENT_SSL cleared (version, connection id, plugin and
  MariaDB extended capabilities kept).
- Codes are server-range (see TLS_ERR below: libmariadb turns client-range codes such as 2026
  into "2027 Received malformed packet" and drops the message).
- Certificate failures: ERR after the client's HandshakeResponse, sequence id 2, code 1043,
  SQLSTATE 08S01, message "dbtrust: <summary> (<reason>)[: detail] [listener <name>, upstream
  <host:port>]" with reason tls_untrusted_chain / tls_hostname_mismatch (naming
  wrong.example.org) / tls_cert_expired.
- Upstream without CLIENT_SSL: ERR as the first packet (sequence id 0, no '#SQLSTATE'), code 1043,
  reason upstream_refused_tls, same message shape (listener and upstream too), and not one byte
  sent to that upstream. Unreachable upstream: same shape, code 1429, reason
  upstream_connect_failed.
- A client SSLRequest: ERR 1043 / 08S01 at sequence id 2, reason client_direct_tls.
- caching_sha2_password full authentication bridged with the listener's mysql_rsa_key (PyMySQL
  asks for the key with 02 and gets that key's SPKI PEM); the server receives `password\\0` over
  TLS; a blob dbtrust cannot decrypt gets ERR 1045 / 28000 naming dbtrust and is not forwarded;
  a Unix-socket client's cleartext password is forwarded as is.
- One `conn_end` log line per connection with listener=, client= (client=unix for socket
  listeners), app= (PyMySQL program_name), user=, database=, upstream=, tls=TLSv1.x, reason=;
  never a password anywhere in its output. startup_timeout closes a silent client
  (reason=client_timeout).
"""

import hashlib
import os
import re
import secrets
import shutil
import socket
import sys
import time
import types
import unittest
import zlib
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402
from mysql_caching_sha2_server import MysqlCachingSha2Server  # noqa: E402

import MySQLdb  # noqa: E402
import pymysql  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

DIRECT = os.environ.get("DBTRUST_SUITE_DIRECT") == "1"
MY_CLIENT_ZSTD = 1 << 26  # CLIENT_ZSTD_COMPRESSION_ALGORITHM

NATIVE, NATIVE_PW = fx.MY_NATIVE_USER, fx.MY_NATIVE_PASSWORD
ED, ED_PW = fx.MY_ED_USER, fx.MY_ED_PASSWORD
DB = fx.MY_APP_DATABASE
SHA2_USER, SHA2_PW = "sha2user", "sha2-Secret-pw"
WRONG_PW = "Wr0ng-pass-for-dbtrust"
BLOB_SIZE = 17 * 1024 * 1024 + 12345   # above one 16 MiB (0xFFFFFF) packet: two chunks
INFILE_ROWS = 200_000                   # ~7 MB of LOAD DATA LOCAL: many client packets
SYSBENCH_SECONDS = 10

# dbtrust's ERR codes. Only server-range codes can carry a message to libmariadb clients:
# MariaDB Connector/C 3.3 (the mariadb CLI, mysqlclient) turns an ERR packet with a client-range
# code (2000-2999, e.g. 2026 CR_SSL_CONNECTION_ERROR or 2003) into "ERROR 2027 (HY000): Received
# malformed packet" and drops the message - checked on this machine (Debian 12, mariadb 10.11).
TLS_ERR = (1043, "08S01")          # ER_HANDSHAKE_ERROR: certificate / TLS failures, no TLS
UNREACHABLE_ERR = (1429, "HY000")  # ER_CONNECT_TO_FOREIGN_DATA_SOURCE: upstream unreachable
CLIENT_TLS_ERR = (1043, "08S01")   # the client sent an SSLRequest to the plaintext listener

# libmariadb's own wording when the client itself verifies (direct mode).
DIRECT_CLIENT_ERRORS = {
    "tls_untrusted_chain": "unable to get local issuer certificate",
    "tls_hostname_mismatch": "Validation of SSL server certificate failed",
    "tls_cert_expired": "certificate has expired",
    "upstream_refused_tls": "SSL is required, but the server does not support it",
    "upstream_connect_failed": "Can't connect to server",
}

DBTRUST_BIN = None           # set from --dbtrust before unittest runs
W = types.SimpleNamespace()  # the module's world: servers, peers, dbtrust, listener specs


# --------------------------------------------------------------------------------------------
# Module fixtures
# --------------------------------------------------------------------------------------------

def setUpModule():
    """Start both MariaDB servers, the scripted peers and (unless DIRECT) one dbtrust."""
    if not DIRECT and not (os.path.isfile(DBTRUST_BIN) and os.access(DBTRUST_BIN, os.X_OK)):
        raise RuntimeError(f"dbtrust binary not found or not executable: {DBTRUST_BIN}")
    for key in [k for k in os.environ if k.startswith(("MYSQL", "MARIADB"))]:
        del os.environ[key]  # libmariadb inside MySQLdb would obey them silently
    W.tmp = fx.make_temp_dir("test-mysql")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.client_cert = fx.make_client_cert(W.pki)  # sysbench --mysql-ssl=on (direct mode) only
    W.maria = fx.MariadbServer(W.pki.leaf, "maria-main",
                               client_ca=W.pki.bundle).start().provision_app_users()
    W.impostor = fx.MariadbServer(W.pki.leaf, "maria-impostor").start().provision_app_users()
    W.no_tls_peer = fx.ScriptedUpstream(fx.my_script_refuse_tls, "mysql-no-tls").start()
    W.sha2 = MysqlCachingSha2Server(W.pki.leaf, {SHA2_USER: SHA2_PW}).start()
    W.closed_port = fx.free_port()  # nobody listens here
    W.rsa_key_path, W.rsa_public_pem = make_rsa_key(os.path.join(W.tmp, "bridge-rsa.pem"))
    W.sock_dir = fx.make_temp_dir("mysql-sock")
    W.config = build_dbtrust_config()
    W.routes = build_routes()
    W.dbtrust = None
    if not DIRECT:
        W.dbtrust = fx.dbtrust_from_config(DBTRUST_BIN, W.config, W.tmp).start()
        fx.wait_for_unix_listeners(W.config)


def make_rsa_key(path):
    """The bridge key given to dbtrust (mysql_rsa_key): RSA-2048, PKCS#8 PEM. Returns the path
    and the SPKI PEM of its public half (what PyMySQL must receive when it asks for a key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)


def build_dbtrust_config():
    """One listener per upstream behaviour; listener names are what errors and logs must name."""
    cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s")
    timeouts = {"connect_timeout": "2s", "handshake_timeout": "3s", "startup_timeout": "3s"}

    def listener(name, port, **options):
        cfg.add_listener(name, "mysql", f"localhost:{port}", **{**timeouts, **options})

    def unix_listener(name, port, **options):
        fx.add_unix_listener(cfg, name, "mysql", f"localhost:{port}",
                             os.path.join(W.sock_dir, f"{name}.sock"), **{**timeouts, **options})

    listener("shop", W.maria.port)
    listener("slow-client", W.maria.port, startup_timeout="1s")
    listener("unreachable", W.closed_port)
    listener("impostor-control", W.impostor.port)
    listener("rogue-ca", W.impostor.port)
    listener("wrong-name", W.impostor.port)
    listener("expired-cert", W.impostor.port)
    listener("no-tls", W.no_tls_peer.port)
    listener("sha2", W.sha2.port, mysql_rsa_key=W.rsa_key_path)
    unix_listener("shop-sock", W.maria.port)
    unix_listener("sha2-sock", W.sha2.port)  # no mysql_rsa_key: socket clients need none
    return cfg


@dataclass
class Route:
    """How a client reaches a listener's database in this run: through dbtrust in plaintext,
    or (DIRECT) straight to the server, with verified TLS when `tls`."""
    host: str = "127.0.0.1"
    port: int = None
    unix: str = None
    tls: bool = False


def build_routes():
    if not DIRECT:
        routes = {}
        for name, spec in W.config.listeners.items():
            if isinstance(spec, fx.UnixListenerSpec):
                routes[name] = Route(unix=spec.path)
            else:
                routes[name] = Route(port=spec.port)
        return routes
    server_of = {"shop": W.maria, "slow-client": W.maria, "impostor-control": W.impostor,
                 "rogue-ca": W.impostor, "wrong-name": W.impostor, "expired-cert": W.impostor}
    routes = {name: Route(port=server.port, tls=True) for name, server in server_of.items()}
    routes["no-tls"] = Route(port=W.no_tls_peer.port, tls=True)
    routes["unreachable"] = Route(port=W.closed_port, tls=True)
    routes["sha2"] = Route(port=W.sha2.port, tls=True)
    routes["shop-sock"] = Route(unix=W.maria.socket)  # the server's own socket: no TLS there
    return routes


def tearDownModule():
    fx.run_cleanups()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def route(listener):
    if listener not in W.routes:
        raise unittest.SkipTest(f"no direct equivalent of listener {listener}")
    return W.routes[listener]


def port_of(listener):
    return W.config.listeners[listener].port


def upstream_of(listener):
    return W.config.listeners[listener].upstream


def unique_tag(tag):
    """A program_name that identifies one connection in dbtrust's log (app=)."""
    return f"dbt-{tag}-{secrets.token_hex(3)}"


def pymysql_connect(listener="shop", user=NATIVE, password=NATIVE_PW, database=DB, **kw):
    """PyMySQL to a listener: plaintext through dbtrust; DIRECT: verify-full TLS to the server."""
    r = route(listener)
    args = {"user": user, "password": password, "database": database, "connect_timeout": 10,
            "read_timeout": 120, "write_timeout": 120, "autocommit": True}
    if r.unix:
        args["unix_socket"] = r.unix
    else:
        args.update(host=r.host, port=r.port)
    if r.tls:
        args["ssl"] = {"ca": W.pki.bundle}  # PyMySQL then checks chain and host name
    else:
        args["ssl_disabled"] = True
    args.update(kw)
    return pymysql.connect(**args)


def mysqldb_connect(listener="shop", user=NATIVE, password=NATIVE_PW, database=DB, **kw):
    """mysqlclient (libmariadb 3.3). python3-mysqldb on Debian 12 is 1.4.6: it has no ssl_mode;
    without `ssl` it does not attempt TLS, which is the plaintext leg dbtrust expects."""
    r = route(listener)
    args = {"user": user, "password": password, "database": database, "connect_timeout": 10,
            "autocommit": True}
    if r.unix:
        args["unix_socket"] = r.unix
    else:
        args.update(host=r.host, port=r.port)
    if r.tls:
        args["ssl"] = {"ca": W.pki.bundle}
    args.update(kw)
    return MySQLdb.connect(**args)


def cli_args(listener):
    """mariadb CLI connection arguments (-h 127.0.0.1: `localhost` would mean its socket)."""
    r = route(listener)
    if r.unix:
        return ["-S", r.unix]
    if r.tls:
        return ["-h", r.host, "-P", str(r.port), "--ssl", f"--ssl-ca={W.pki.bundle}",
                "--ssl-verify-server-cert"]
    return ["-h", r.host, "-P", str(r.port), "--skip-ssl"]


def run_cli(listener, sql, user=NATIVE, password=NATIVE_PW, database=DB, extra=()):
    args = cli_args(listener) + ["-u", user] + (["-D", database] if database else [])
    return fx.run_mariadb(args + list(extra), sql, password=password)


def query(conn, sql, args=None):
    cur = conn.cursor()
    try:
        cur.execute(sql, args)
        return cur.fetchall()
    finally:
        cur.close()


def query_one(conn, sql, args=None):
    rows = query(conn, sql, args)
    return rows[0] if rows else None


def server_tls_version(conn):
    """The server's view of the session: TLS version of its leg ('' = not TLS)."""
    return query_one(conn, "show status like 'Ssl_version'")[1]


def sysbench(step, workdir, listener="shop"):
    """One sysbench oltp_read_write step. --rand-type=uniform: the default 'special'
    distribution piles 4 threads onto 1% of 1000 rows and produces InnoDB deadlocks (1213),
    which sysbench counts as "ignored errors" even on a direct connection; uniform keeps the
    error count a property of the transport."""
    r = route(listener)
    cmd = ["sysbench", "oltp_read_write", "--db-driver=mysql", f"--mysql-host={r.host}",
           f"--mysql-port={r.port}", f"--mysql-user={NATIVE}", f"--mysql-password={NATIVE_PW}",
           f"--mysql-db={DB}", f"--mysql-ssl={'on' if r.tls else 'off'}", "--tables=2",
           "--table-size=1000", "--threads=4", f"--time={SYSBENCH_SECONDS}",
           "--rand-type=uniform"]
    return fx.run(cmd + [step], check=False, cwd=workdir, timeout=120, env=fx.clean_env())


class MyTestCase(unittest.TestCase):
    """Shared assertions about the good path and refusals."""

    def require_dbtrust(self, why="asserts dbtrust's own behaviour"):
        if DIRECT:
            self.skipTest(f"DBTRUST_SUITE_DIRECT: {why}")

    def mark(self):
        return W.dbtrust.mark() if W.dbtrust else 0

    def expect_log(self, *substrings, since=0, timeout=5):
        """The dbtrust log line with every substring (None in direct mode)."""
        if W.dbtrust is None:
            return None
        return W.dbtrust.wait_for_line(*substrings, since=since, timeout=timeout)

    def wait_for_conn_ends(self, count, since, timeout=10):
        """Block until `count` conn_end lines were logged after `since` (they are written when
        a connection closes, possibly after the client saw its result)."""
        if W.dbtrust is None:
            return []
        fx.wait_for(lambda: len(W.dbtrust.find_lines("conn_end", since=since)) >= count,
                    timeout, what=f"{count} conn_end lines")
        return W.dbtrust.find_lines("conn_end", since=since)

    def assert_shop_serves(self):
        """dbtrust keeps serving the good listener after whatever the test did."""
        if W.dbtrust is not None:
            self.assertTrue(W.dbtrust.alive(), "dbtrust process died")
        conn = pymysql_connect(program_name=unique_tag("still-serving"))
        try:
            self.assertEqual(query_one(conn, "select 1, current_user()"), (1, f"{NATIVE}@%"))
        finally:
            conn.close()

    def assert_dbtrust_message(self, message, listener, reason):
        self.assertIn("dbtrust", message)
        self.assertIn(f"({reason})", message)
        self.assertIn(f"[listener {listener}, upstream {upstream_of(listener)}]", message)

    def assert_refused(self, listener, reason, error=TLS_ERR, before_greeting=False):
        """A refusal is visible everywhere it must be: the raw ERR packet (sequence id, code,
        SQLSTATE, message), PyMySQL, mysqlclient, the mariadb CLI, dbtrust's log line; and
        dbtrust keeps serving. DIRECT: a verifying client refuses the same upstream for the
        same reason (proves the fixture). Returns the raw ERR (None in direct mode).

        before_greeting: dbtrust could not greet (no usable upstream greeting), so its ERR is
        the first packet: sequence id 0 and no '#SQLSTATE' (the client knows no capabilities
        yet, B5); clients then report SQLSTATE HY000."""
        code, sqlstate = error
        if DIRECT:
            proc = run_cli(listener, "select 1")
            self.assertNotEqual(proc.returncode, 0, proc.stdout)
            self.assertIn(DIRECT_CLIENT_ERRORS[reason], proc.stderr)
            self.assert_shop_serves()
            return None

        mark = self.mark()
        res = fx.my_raw_login("127.0.0.1", port_of(listener), NATIVE, NATIVE_PW, DB)
        err = res.error
        self.assertIsNotNone(err, f"expected an ERR packet, got {res.payload[:40]!r}")
        if before_greeting:
            self.assertIsNone(res.greeting, "dbtrust greeted before the upstream was usable")
            self.assertEqual((res.seq, err.sqlstate), (0, None), err)
            sqlstate = "HY000"
        else:
            self.assertIsNotNone(res.greeting)
            self.assertEqual((res.seq, err.sqlstate), (2, sqlstate), err)
        self.assertEqual(err.code, code, err)
        self.assertFalse(2000 <= err.code < 3000, "libmariadb drops client-range codes")
        self.assertTrue(err.message.startswith("dbtrust: "), err.message)
        self.assert_dbtrust_message(err.message, listener, reason)

        with self.assertRaises(pymysql.err.OperationalError) as caught:
            pymysql_connect(listener, program_name=unique_tag(listener))
        self.assertEqual(caught.exception.args[0], code)
        if before_greeting:
            # PyMySQL 1.0.2 always skips 6 bytes of '#SQLSTATE': it loses "dbtrus" here.
            self.assertIn(f"({reason})", caught.exception.args[1])
            self.assertIn(f"[listener {listener}, ", caught.exception.args[1])
        else:
            self.assert_dbtrust_message(caught.exception.args[1], listener, reason)

        with self.assertRaises(MySQLdb.OperationalError) as caught:
            mysqldb_connect(listener)
        self.assertEqual(caught.exception.args[0], code)
        self.assert_dbtrust_message(caught.exception.args[1], listener, reason)

        proc = run_cli(listener, "select 1")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn(f"ERROR {code} ({sqlstate}): dbtrust: ", proc.stderr,
                      "the CLI must show dbtrust's reason")
        self.assert_dbtrust_message(proc.stderr, listener, reason)

        self.expect_log("conn_end", f"listener={listener}", f"reason={reason}", since=mark)
        self.assert_shop_serves()
        return err


# --------------------------------------------------------------------------------------------
# Sanity of the fixtures: the tests below only mean something if these hold
# --------------------------------------------------------------------------------------------

class TestFixtureSanity(MyTestCase):
    """Straight to the servers and peers, in both modes."""

    def test_verified_cli_reaches_both_users_over_tls(self):
        for user, password in ((NATIVE, NATIVE_PW), (ED, ED_PW)):
            with self.subTest(user=user):
                proc = fx.run_mariadb(
                    W.maria.verified_cli_args(W.pki.bundle) + ["-u", user, "-D", DB],
                    "select current_user(); show status like 'Ssl_version'", password=password)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                lines = proc.stdout.splitlines()
                self.assertEqual(lines[0], f"{user}@%")
                self.assertRegex(lines[1], r"^Ssl_version\tTLSv1\.[23]$")

    def test_server_refuses_plaintext_tcp(self):
        """require_secure_transport=ON: the same password that works over TLS is refused in
        plaintext. MariaDB 10.11 words it as 1045 Access denied (not 3159 like MySQL)."""
        proc = fx.run_mariadb(["-h", "127.0.0.1", "-P", str(W.maria.port), "--skip-ssl",
                               "-u", NATIVE, "-D", DB], "select 1", password=NATIVE_PW)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("ERROR 1045 (28000)", proc.stderr)
        with self.assertRaises(pymysql.err.OperationalError) as caught:
            pymysql.connect(host="127.0.0.1", port=W.maria.port, user=NATIVE,
                            password=NATIVE_PW, database=DB, connect_timeout=5)
        self.assertEqual(caught.exception.args[0], 1045)

    def test_accounts_and_settings(self):
        self.assertEqual(W.maria.user_plugins(),
                         {NATIVE: "mysql_native_password", ED: "ed25519"})
        self.assertEqual(W.maria.admin_value(
            "select count(*) from mysql.global_priv where user = ''"), "0")
        self.assertEqual(W.maria.admin_sql(
            "select @@require_secure_transport, @@local_infile, @@max_allowed_packet, "
            "@@have_ssl, @@skip_name_resolve").split(), ["1", "1", str(64 << 20), "YES", "1"])

    def test_impostor_serves_each_bad_certificate(self):
        """FLUSH SSL really swaps the chain, and each bad leaf fails for its intended reason."""
        cases = [(W.pki.rogue_leaf, "tls_untrusted_chain"),
                 (W.pki.wrong_name_leaf, "tls_hostname_mismatch"),
                 (W.pki.expired_leaf, "tls_cert_expired"), (W.pki.leaf, None)]
        for cert, reason in cases:
            with self.subTest(cert=cert.name):
                W.impostor.set_certificate(cert)
                self.assertEqual(W.impostor.served_leaf_der(), cert.der())
                proc = fx.run_mariadb(W.impostor.verified_cli_args(W.pki.bundle)
                                      + ["-u", NATIVE, "-D", DB], "select 1",
                                      password=NATIVE_PW)
                if reason is None:
                    self.assertEqual((proc.returncode, proc.stdout), (0, "1\n"), proc.stderr)
                else:
                    self.assertIn(DIRECT_CLIENT_ERRORS[reason], proc.stderr)

    def test_no_tls_peer_greeting_lacks_client_ssl(self):
        greeting = fx.my_read_greeting("127.0.0.1", W.no_tls_peer.port)
        self.assertFalse(greeting.capabilities & fx.MY_CLIENT_SSL)
        self.assertTrue(greeting.capabilities & fx.MY_CLIENT_PROTOCOL_41)

    def test_sha2_server_fast_and_full_auth_with_pymysql_over_tls(self):
        """The scripted MySQL 8 server against a real client, before anything relies on it."""
        def connect(password=SHA2_PW):
            return pymysql.connect(host="127.0.0.1", port=W.sha2.port, user=SHA2_USER,
                                   password=password, connect_timeout=5,
                                   ssl={"ca": W.pki.bundle})

        W.sha2.flush_cache()
        for expected in ("full", "fast"):
            count = W.sha2.connection_count()
            conn = connect()
            try:
                self.assertEqual(query_one(conn, "select 7, current_user()"),
                                 (7, f"{SHA2_USER}@%"))
            finally:
                conn.close()
            [record] = W.sha2.connections_since(count)
            self.assertEqual(record.notes["auth"], expected, record.notes)
            self.assertTrue(record.notes["scramble_valid"])
            self.assertNotIn(SHA2_PW.encode(), bytes(record.data))
            if expected == "full":
                self.assertEqual(record.notes["full_auth_packet"], SHA2_PW.encode() + b"\0")
                self.assertEqual(record.notes["full_auth_transport"], "tls")
        W.sha2.flush_cache()
        with self.assertRaises(pymysql.err.OperationalError) as caught:
            connect(WRONG_PW)
        self.assertEqual(caught.exception.args[0], 1045)
        with self.assertRaises(pymysql.err.OperationalError) as caught:
            pymysql.connect(host="127.0.0.1", port=W.sha2.port, user=SHA2_USER,
                            password=SHA2_PW, connect_timeout=5)
        self.assertEqual(caught.exception.args[0], 3159, "plaintext must be refused")

    def test_sha2_server_with_libmariadb_and_auth_switch(self):
        """A second, independent client (libmariadb): full auth, and an AuthSwitchRequest for
        a client that starts with mysql_native_password."""
        W.sha2.flush_cache()
        for extra, expected in (([], "full"), (["--default-auth=mysql_native_password"], "fast")):
            with self.subTest(extra=extra):
                count = W.sha2.connection_count()
                proc = fx.run_mariadb(
                    ["-h", "127.0.0.1", "-P", str(W.sha2.port), "--ssl",
                     f"--ssl-ca={W.pki.bundle}", "--ssl-verify-server-cert", "-u", SHA2_USER]
                    + extra, "select 1, current_user()", password=SHA2_PW)
                self.assertEqual(proc.stdout, f"1\t{SHA2_USER}@%\n", proc.stderr)
                [record] = W.sha2.connections_since(count)
                self.assertEqual(record.notes["auth"], expected)
                self.assertEqual("auth_switch" in record.notes, bool(extra))


# --------------------------------------------------------------------------------------------
# Good path: the clients and workloads
# --------------------------------------------------------------------------------------------

class TestGreetingAndWire(MyTestCase):
    """Byte-level behaviour of the connection phase (PROTOCOLS.md B2, B5)."""

    def test_greeting_is_the_servers_without_client_ssl(self):
        self.require_dbtrust()
        server = fx.my_read_greeting("127.0.0.1", W.maria.port)
        via = fx.my_read_greeting("127.0.0.1", port_of("shop"))
        self.assertFalse(via.capabilities & fx.MY_CLIENT_SSL, "CLIENT_SSL must be cleared")
        self.assertTrue(server.capabilities & fx.MY_CLIENT_SSL)
        self.assertEqual(via.version, server.version)
        self.assertTrue(via.version.startswith("5.5.5-10.11"), via.version)
        self.assertEqual(via.plugin, "mysql_native_password")
        self.assertFalse(via.capabilities & fx.MY_CLIENT_LONG_PASSWORD,
                         "MariaDB marker (CLIENT_MYSQL clear) lost")
        self.assertEqual(via.mariadb_ext_caps, server.mariadb_ext_caps)
        may_clear = fx.MY_CLIENT_SSL | fx.MY_CLIENT_COMPRESS | MY_CLIENT_ZSTD  # B2
        self.assertEqual(via.capabilities & ~may_clear, server.capabilities & ~may_clear)

    def test_connection_id_is_the_servers(self):
        """The greeting's thread id is the server session's: KILL <id> from another
        connection must target the right session."""
        conn = pymysql_connect()
        try:
            self.assertEqual(conn.server_thread_id[0],
                             query_one(conn, "select connection_id()")[0])
        finally:
            conn.close()

    def test_client_ssl_request_is_refused(self):
        """A client that tries TLS on the plaintext listener gets 1043/08S01, not a hang."""
        self.require_dbtrust()
        mark = self.mark()
        with socket.create_connection(("127.0.0.1", port_of("shop")), timeout=10) as sock:
            _, payload = fx.my_read_packet(sock)
            fx.my_parse_greeting(payload)
            sock.sendall(fx.my_packet(1, fx.my_ssl_request(fx.MY_BASIC_CLIENT_CAPS)))
            seq, payload = fx.my_read_packet(sock)
        err = fx.my_parse_err(payload)
        self.assertEqual((seq, err.code, err.sqlstate), (2, *CLIENT_TLS_ERR), err)
        self.assertIn("dbtrust", err.message)
        self.expect_log("conn_end", "listener=shop", "reason=client_direct_tls", since=mark)

    def test_wrong_password_shows_the_servers_error(self):
        """dbtrust relays the server's ERR (re-sequenced); it synthesizes only its own."""
        for user in (NATIVE, ED):
            with self.subTest(user=user):
                with self.assertRaises(pymysql.err.OperationalError) as caught:
                    pymysql_connect(user=user, password=WRONG_PW)
                self.assertEqual(caught.exception.args[0], 1045)
                self.assertIn(f"Access denied for user '{user}'@'127.0.0.1'",
                              caught.exception.args[1])
                self.assertNotIn("dbtrust", caught.exception.args[1])
        proc = run_cli("shop", "select 1", password=WRONG_PW)
        self.assertIn(f"ERROR 1045 (28000): Access denied for user '{NATIVE}'", proc.stderr)
        if not DIRECT:
            res = fx.my_raw_login("127.0.0.1", port_of("shop"), NATIVE, WRONG_PW, DB)
            self.assertEqual((res.seq, res.error.code, res.error.sqlstate), (2, 1045, "28000"))
        self.assert_shop_serves()


class TestClients(MyTestCase):
    """mariadb CLI, PyMySQL and mysqlclient with both users; the server leg is always TLS."""

    USERS = ((NATIVE, NATIVE_PW), (ED, ED_PW))

    def test_mariadb_cli(self):
        for user, password in self.USERS:
            with self.subTest(user=user):
                mark = self.mark()
                proc = run_cli("shop", "select current_user(), 40 + 2; "
                                       "show status like 'Ssl_version'", user, password)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                lines = proc.stdout.splitlines()
                self.assertEqual(lines[0], f"{user}@%\t42")
                self.assertRegex(lines[1], r"^Ssl_version\tTLSv1\.[23]$")
                self.expect_log("conn_end", "listener=shop", f"user={user}", since=mark)

    def test_pymysql(self):
        for user, password in self.USERS:
            with self.subTest(user=user):
                conn = pymysql_connect(user=user, password=password,
                                       program_name=unique_tag("pymysql"))
                try:
                    self.assertEqual(query_one(conn, "select current_user(), %s + 1", (6,)),
                                     (f"{user}@%", 7))
                    self.assertRegex(server_tls_version(conn), r"^TLSv1\.[23]$")
                finally:
                    conn.close()

    def test_mysqlclient(self):
        for user, password in self.USERS:
            with self.subTest(user=user):
                conn = mysqldb_connect(user=user, password=password)
                try:
                    self.assertEqual(query_one(conn, "select current_user(), %s + 1", (6,)),
                                     (f"{user}@%", 7))
                    self.assertRegex(server_tls_version(conn), r"^TLSv1\.[23]$")
                finally:
                    conn.close()

    def test_change_user_between_native_and_ed25519(self):
        """COM_CHANGE_USER re-enters authentication inside the command phase (B6): to an
        ed25519 user (the server answers with an AuthSwitchRequest) and back."""
        conn = mysqldb_connect()
        try:
            session = query_one(conn, "select connection_id()")[0]
            for user, password in ((ED, ED_PW), (NATIVE, NATIVE_PW), (ED, ED_PW)):
                conn.change_user(user, password, DB)
                self.assertEqual(query_one(conn, "select current_user(), connection_id()"),
                                 (f"{user}@%", session))
                self.assertRegex(server_tls_version(conn), r"^TLSv1\.[23]$")
        finally:
            conn.close()
        self.assert_shop_serves()

    def test_conn_end_log_line_fields(self):
        """Operators find a connection by these fields: app= is the client's program_name
        connection attribute (MySQL's application_name), tls= the upstream leg's version."""
        self.require_dbtrust()
        tag = unique_tag("fields")
        mark = self.mark()
        conn = pymysql_connect(program_name=tag)
        query_one(conn, "select 1")
        conn.close()
        line = self.expect_log("conn_end", f"app={tag}", since=mark)
        for expected in ("listener=shop", f"user={NATIVE}", f"database={DB}",
                         f"upstream={upstream_of('shop')}", "client=127.0.0.1:"):
            self.assertIn(expected, line)
        self.assertRegex(line, r" tls=TLSv1\.[23] ")
        self.assertRegex(line, r" reason=(client_closed|upstream_closed) ")


class TestSessionResumption(MyTestCase):
    """MariaDB sends TLS 1.3 tickets: a worker's next connection to the same upstream resumes
    (no key exchange, no chain to verify again), and the session still works end to end."""

    def test_later_connections_resume(self):
        self.require_dbtrust()
        tag = unique_tag("resume")
        mark = self.mark()
        # Two workers share the connections (SO_REUSEPORT): with 8, each worker gets several.
        for _ in range(8):
            conn = pymysql_connect(program_name=tag)
            try:
                self.assertEqual(query_one(conn, "select current_user(), 2 * 21"),
                                 (f"{NATIVE}@%", 42))
                self.assertRegex(server_tls_version(conn), r"^TLSv1\.3$")
            finally:
                conn.close()
        fx.wait_for(lambda: len(W.dbtrust.find_lines("conn_end", f"app={tag}", since=mark)) >= 8,
                    10, what="8 conn_end lines")
        lines = W.dbtrust.find_lines("conn_end", f"app={tag}", since=mark)
        self.assertEqual(len(lines), 8)
        resumed = [line for line in lines if " resumed=yes " in line]
        full = [line for line in lines if " resumed=no " in line]
        self.assertEqual(len(resumed) + len(full), 8, lines)
        # At most one full handshake per worker; the ticket of one connection serves the next.
        self.assertGreaterEqual(len(resumed), 6, lines)
        for line in resumed:
            self.assertRegex(line, r" tls=TLSv1\.3 ")
            self.assertRegex(line, r" reason=(client_closed|upstream_closed) ")


class TestBulk(MyTestCase):
    """Multi-packet traffic: the relay must be byte-exact in both directions."""

    def test_blob_over_16mib_round_trip(self):
        data = os.urandom(BLOB_SIZE)
        digest = hashlib.sha256(data).hexdigest()
        conn = pymysql_connect(max_allowed_packet=64 << 20)
        try:
            query(conn, "drop table if exists blob_round_trip")
            query(conn, "create table blob_round_trip (id int primary key, b longblob)")
            query(conn, "insert into blob_round_trip values (1, %s)", (data,))
            # The server's view: what dbtrust forwarded from the client is what was sent.
            self.assertEqual(query_one(conn, "select length(b), sha2(b, 256) from "
                                             "blob_round_trip"), (BLOB_SIZE, digest))
            # The client's view: a row packet over 16 MiB comes back intact.
            fetched = query_one(conn, "select b from blob_round_trip")[0]
            self.assertEqual((len(fetched), hashlib.sha256(fetched).hexdigest()),
                             (BLOB_SIZE, digest))
            other = mysqldb_connect()
            try:
                fetched = query_one(other, "select b from blob_round_trip")[0]
                self.assertEqual(hashlib.sha256(fetched).hexdigest(), digest)
            finally:
                other.close()
        finally:
            query(conn, "drop table if exists blob_round_trip")
            conn.close()

    def test_load_data_local_infile(self):
        """The server asks the client for a file (0xFB); the client streams it in packets with
        sequence ids >= 2 (B6). PyMySQL with many packets, then the CLI."""
        path = os.path.join(W.tmp, "infile.csv")
        rows = [f"{i},{hashlib.md5(str(i).encode()).hexdigest()}\n" for i in range(INFILE_ROWS)]
        with open(path, "w") as f:
            f.writelines(rows)
        expected = (INFILE_ROWS, sum(range(INFILE_ROWS)),
                    sum(zlib.crc32(r.split(",")[1].strip().encode()) for r in rows))
        check = "select count(*), sum(id), sum(crc32(h)) from load_target"
        conn = pymysql_connect(local_infile=True)
        try:
            query(conn, "drop table if exists load_target")
            query(conn, "create table load_target (id int primary key, h char(32))")
            query(conn, f"load data local infile '{path}' into table load_target "
                        "fields terminated by ','")
            self.assertEqual(tuple(int(v) for v in query_one(conn, check)), expected)
            query(conn, "truncate table load_target")
            proc = run_cli("shop", f"load data local infile '{path}' into table load_target "
                                   f"fields terminated by ','; {check}",
                           extra=["--local-infile=1"])
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(tuple(int(v) for v in proc.stdout.split()), expected)
        finally:
            query(conn, "drop table if exists load_target")
            conn.close()

    def test_sysbench_oltp_read_write(self):
        """4 threads for 10 s of read-write transactions: no error of any kind."""
        workdir = fx.make_temp_dir("sysbench")
        if route("shop").tls:  # sysbench --mysql-ssl=on loads these from its cwd
            shutil.copy(W.pki.bundle, os.path.join(workdir, "cacert.pem"))
            shutil.copy(W.client_cert.chain, os.path.join(workdir, "client-cert.pem"))
            shutil.copy(W.client_cert.key, os.path.join(workdir, "client-key.pem"))
        try:
            for step in ("prepare", "run"):
                proc = sysbench(step, workdir)
                output = proc.stdout + proc.stderr
                # sysbench 1.0.20 exits 0 from `prepare` even when it could not connect.
                self.assertEqual(proc.returncode, 0, output)
                self.assertNotIn("FATAL", output)
            stats = dict(re.findall(r"^\s+(transactions|ignored errors|reconnects):\s+(\d+)",
                                    proc.stdout, re.M))
            self.assertGreater(int(stats.get("transactions", 0)), 100, proc.stdout)
            self.assertEqual(stats.get("ignored errors"), "0", proc.stdout)
            self.assertEqual(stats.get("reconnects"), "0", proc.stdout)
        finally:
            proc = sysbench("cleanup", workdir)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            self.assertNotIn("FATAL", proc.stdout + proc.stderr)
        self.assert_shop_serves()


class TestUnixSocketListener(MyTestCase):
    """listen = unix:/path: socket clients (mariadb -S) are served over a TLS upstream leg."""

    def test_mariadb_cli_over_unix_socket(self):
        for user, password in ((NATIVE, NATIVE_PW), (ED, ED_PW)):
            with self.subTest(user=user):
                mark = self.mark()
                proc = run_cli("shop-sock", "select current_user(); "
                                            "show status like 'Ssl_version'", user, password)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                lines = proc.stdout.splitlines()
                self.assertEqual(lines[0], f"{user}@%")
                if not DIRECT:  # the server's own socket (direct mode) is not TLS
                    self.assertRegex(lines[1], r"^Ssl_version\tTLSv1\.[23]$")
                self.expect_log("conn_end", "listener=shop-sock", "client=unix",
                                f"user={user}", since=mark)


# --------------------------------------------------------------------------------------------
# Refusals: fail closed, say why, keep serving
# --------------------------------------------------------------------------------------------

class TestRefusedUpstreams(MyTestCase):
    """Each hostile upstream has its own listener; every refusal names reason and listener."""

    def test_impostor_with_good_certificate_is_accepted(self):
        """Control: the impostor server itself is fine; only its certificates are bad."""
        W.impostor.set_certificate(W.pki.leaf)
        conn = pymysql_connect("impostor-control")
        try:
            self.assertEqual(query_one(conn, "select current_user()"), (f"{NATIVE}@%",))
        finally:
            conn.close()

    def test_untrusted_ca(self):
        W.impostor.set_certificate(W.pki.rogue_leaf)
        self.assert_refused("rogue-ca", "tls_untrusted_chain")

    def test_wrong_host_name(self):
        W.impostor.set_certificate(W.pki.wrong_name_leaf)
        err = self.assert_refused("wrong-name", "tls_hostname_mismatch")
        if err is not None:
            self.assertIn("wrong.example.org", err.message)

    def test_expired_certificate(self):
        W.impostor.set_certificate(W.pki.expired_leaf)
        self.assert_refused("expired-cert", "tls_cert_expired")

    def test_server_without_tls(self):
        """Fail closed: the client's credentials never go to a server that offers no TLS."""
        count = W.no_tls_peer.connection_count()
        self.assert_refused("no-tls", "upstream_refused_tls", before_greeting=True)
        records = W.no_tls_peer.connections_since(count)
        self.assertGreaterEqual(len(records), 1 if DIRECT else 4)
        if not DIRECT:
            for record in records:
                self.assertEqual(bytes(record.data), b"", "dbtrust sent bytes to a no-TLS server")

    def test_unreachable_upstream(self):
        self.assert_refused("unreachable", "upstream_connect_failed", error=UNREACHABLE_ERR,
                            before_greeting=True)


class TestStartupTimeout(MyTestCase):

    def test_silent_client_closed_after_startup_timeout(self):
        """A client that never finishes its HandshakeResponse is closed (startup_timeout=1s)."""
        self.require_dbtrust()
        response = fx.my_handshake_response(NATIVE, b"\x01" * 20, database=DB)
        cases = {"sends nothing": b"", "half a response": fx.my_packet(1, response)[:20]}
        for case, prefix in cases.items():
            with self.subTest(case=case):
                mark = self.mark()
                with socket.create_connection(("127.0.0.1", port_of("slow-client")),
                                              timeout=10) as sock:
                    fx.my_parse_greeting(fx.my_read_packet(sock)[1])
                    started = time.monotonic()
                    sock.sendall(prefix)
                    _, elapsed, how = fx.read_until_closed(sock, 6)
                self.assertIn(how, ("eof", "reset"), "dbtrust never closed the idle client")
                self.assertLess(elapsed, 3.0)
                self.assertLess(time.monotonic() - started, 3.5)
                self.expect_log("conn_end", "listener=slow-client", "reason=client_timeout",
                                since=mark)
        self.assert_shop_serves()


# --------------------------------------------------------------------------------------------
# caching_sha2_password bridge (B3) against the scripted MySQL 8 server
# --------------------------------------------------------------------------------------------

def public_numbers(pem):
    return serialization.load_pem_public_key(bytes(pem).rstrip(b"\0")).public_numbers()


class TestCachingSha2Bridge(MyTestCase):

    def connect_sha2(self, listener="sha2", password=SHA2_PW, **kw):
        return pymysql_connect(listener, user=SHA2_USER, password=password, database=None,
                               **kw)

    def assert_password_only_over_tls(self, record, password=SHA2_PW):
        """Full authentication happened and the cleartext password reached the server inside
        TLS, never on the plaintext TCP stream. With the right password the client's scramble
        (made over the nonce in dbtrust's greeting) is valid for the server's own nonce."""
        self.assertEqual(record.notes.get("auth"), "full", record.notes)
        self.assertEqual(record.notes.get("full_auth_packet"), password.encode() + b"\0")
        self.assertEqual(record.notes.get("full_auth_transport"), "tls")
        self.assertNotIn(password.encode(), bytes(record.data))
        self.assertEqual(record.notes.get("scramble_valid"), password == SHA2_PW,
                         "the scramble was not made over the server's nonce")
        self.assertNotIn(b"\x02", [p for d, _, _, p in record.notes["packets"] if d == "in"],
                         "the client's key request must not reach the server")

    def assert_ssl_request_matches_response(self, record):
        """B2: the SSLRequest is the first 32 bytes of the client's HandshakeResponse (the
        server parses the response with the SSLRequest's flags)."""
        response = next(payload for direction, transport, seq, payload in record.notes["packets"]
                        if (direction, transport, seq) == ("in", "tls", 2))
        self.assertEqual(record.notes["ssl_request"], response[:32])

    def test_full_auth_through_the_public_key_bridge(self):
        """PyMySQL on a plaintext leg asks for the server's public key (02), gets dbtrust's
        (the listener's mysql_rsa_key), encrypts the password to it; dbtrust decrypts and sends
        `password\\0` over TLS, as the server expects on a secure transport."""
        W.sha2.flush_cache()
        count = W.sha2.connection_count()
        mark = self.mark()
        tag = unique_tag("sha2-full")
        conn = self.connect_sha2(program_name=tag)
        try:
            self.assertEqual(query_one(conn, "select 1, current_user()"), (1, f"{SHA2_USER}@%"))
            if not DIRECT:
                self.assertIsNotNone(conn.server_public_key, "client never asked for a key")
                self.assertEqual(public_numbers(conn.server_public_key),
                                 public_numbers(W.rsa_public_pem),
                                 "the PEM served is not the listener's mysql_rsa_key")
        finally:
            conn.close()
        [record] = W.sha2.connections_since(count)
        self.assert_password_only_over_tls(record)
        self.assert_ssl_request_matches_response(record)
        self.assertEqual(record.notes["response"].user, SHA2_USER)
        if not DIRECT:
            self.assertEqual(record.notes["sni"], "localhost")
        line = self.expect_log("conn_end", f"app={tag}", since=mark)
        if line:
            self.assertIn("listener=sha2", line)
            self.assertIn(f"user={SHA2_USER}", line)

    def test_decrypted_password_is_wiped(self):
        """Issue 7: the password dbtrust decrypts for the bridge exists in its memory only
        while it is sent. After a full-auth login, a core of the live process (gcore) holds
        neither the password nor the `password\\0` packet built from it."""
        self.require_dbtrust()
        if os.environ.get("ASAN_OPTIONS"):
            self.skipTest("a core of an ASan process maps terabytes of shadow memory")
        W.sha2.flush_cache()
        count = W.sha2.connection_count()
        conn = self.connect_sha2(program_name=unique_tag("sha2-wipe"))
        try:
            self.assertEqual(query_one(conn, "select 1, current_user()"), (1, f"{SHA2_USER}@%"))
        finally:
            conn.close()
        # (a probe that only checks the server's TLS may have connected too)
        [record] = [r for r in W.sha2.connections_since(count) if "auth" in r.notes]
        self.assert_password_only_over_tls(record)  # dbtrust really decrypted it
        core = os.path.join(W.tmp, "dbtrust-wipe")
        proc = fx.run(["gcore", "-o", core, str(W.dbtrust.proc.pid)], check=False, timeout=120)
        path = f"{core}.{W.dbtrust.proc.pid}"
        self.assertTrue(os.path.exists(path), proc.stdout + proc.stderr)
        try:
            with open(path, "rb") as f:
                image = f.read()
            self.assertGreater(len(image), 1 << 20, "the core is not a process image")
            self.assertIn(b"dbtrust", image)  # the search can find things that are there
            self.assertNotIn(SHA2_PW.encode(), image, "decrypted password left in memory")
        finally:
            os.unlink(path)
        self.assert_shop_serves()

    def test_fast_auth_needs_no_key(self):
        W.sha2.cache_user(SHA2_USER)
        count = W.sha2.connection_count()
        conn = self.connect_sha2()
        try:
            self.assertEqual(query_one(conn, "select 2"), (2,))
            self.assertIsNone(conn.server_public_key)
        finally:
            conn.close()
        [record] = W.sha2.connections_since(count)
        self.assertEqual(record.notes["auth"], "fast")
        self.assertNotIn("full_auth_packet", record.notes)

    def test_wrong_password_gets_the_servers_error(self):
        W.sha2.flush_cache()
        count = W.sha2.connection_count()
        with self.assertRaises(pymysql.err.OperationalError) as caught:
            self.connect_sha2(password=WRONG_PW)
        self.assertEqual(caught.exception.args[0], 1045)
        self.assertIn(f"Access denied for user '{SHA2_USER}'", caught.exception.args[1])
        self.assertNotIn("dbtrust", caught.exception.args[1])
        [record] = W.sha2.connections_since(count)
        self.assert_password_only_over_tls(record, WRONG_PW)
        self.assertFalse(record.notes["scramble_valid"])

    def test_undecryptable_blob_is_never_forwarded(self):
        """A client pinned to some other public key (e.g. the real server's) sends a blob
        dbtrust cannot decrypt: ERR 1045 from dbtrust, and nothing reaches the server (a
        forwarded blob would count as a failed login there)."""
        self.require_dbtrust()
        _, other_pem = make_rsa_key(os.path.join(W.tmp, "other-rsa.pem"))
        W.sha2.flush_cache()
        count = W.sha2.connection_count()
        mark = self.mark()
        with self.assertRaises(pymysql.err.OperationalError) as caught:
            self.connect_sha2(server_public_key=other_pem)
        self.assertEqual(caught.exception.args[0], 1045)
        self.assertIn("dbtrust", caught.exception.args[1])
        [record] = W.sha2.connections_since(count)
        self.assertEqual(record.notes["auth"], "full")
        self.assertNotIn("full_auth_packet", record.notes, "the blob was forwarded")
        self.expect_log("conn_end", "listener=sha2", "reason=client_protocol_error", since=mark)
        conn = self.connect_sha2()  # the listener still bridges
        conn.close()

    def test_unix_socket_client_sends_cleartext(self):
        """On a Unix socket the client counts as secure and sends `password\\0` itself; dbtrust
        forwards it over TLS and no key is involved."""
        self.require_dbtrust("the scripted server has no Unix socket")
        W.sha2.flush_cache()
        count = W.sha2.connection_count()
        mark = self.mark()
        conn = self.connect_sha2("sha2-sock")
        try:
            self.assertEqual(query_one(conn, "select 3"), (3,))
            self.assertIsNone(conn.server_public_key)
        finally:
            conn.close()
        [record] = W.sha2.connections_since(count)
        self.assert_password_only_over_tls(record)
        self.expect_log("conn_end", "listener=sha2-sock", "client=unix", since=mark)


# --------------------------------------------------------------------------------------------
# Hygiene
# --------------------------------------------------------------------------------------------

class TestLogHygiene(MyTestCase):

    def test_log_never_contains_passwords(self):
        """Log lines are written for native, ed25519, change_user, failed logins and both
        caching_sha2 paths where the password crosses dbtrust (decrypted from the RSA blob;
        cleartext on the Unix socket), and none holds a password. Waiting for the lines first
        keeps the check from passing on an empty log."""
        self.require_dbtrust("there is no dbtrust log")
        mark = self.mark()
        attempts = 0

        def attempt(fn):
            nonlocal attempts
            attempts += 1
            try:
                conn = fn()
                query_one(conn, "select 1")
                conn.close()
            except (pymysql.err.OperationalError, MySQLdb.OperationalError):
                pass  # the wrong passwords, expected

        attempt(lambda: pymysql_connect())
        attempt(lambda: pymysql_connect(user=ED, password=ED_PW))
        attempt(lambda: pymysql_connect(password=WRONG_PW))
        attempt(lambda: mysqldb_connect(user=ED, password=WRONG_PW))
        for listener in ("sha2", "sha2-sock"):
            W.sha2.flush_cache()
            attempt(lambda: pymysql_connect(listener, SHA2_USER, SHA2_PW, None))
            W.sha2.flush_cache()
            attempt(lambda: pymysql_connect(listener, SHA2_USER, WRONG_PW, None))
        conn = mysqldb_connect()
        conn.change_user(ED, ED_PW, DB)
        conn.close()
        attempts += 1
        self.assertEqual(run_cli("shop", "select 1").returncode, 0)
        attempts += 1
        self.wait_for_conn_ends(attempts, mark)
        output = W.dbtrust.output_text()
        for secret in (NATIVE_PW, ED_PW, SHA2_PW, WRONG_PW):
            self.assertNotIn(secret, output)


if __name__ == "__main__":
    if not DIRECT:
        DBTRUST_BIN = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    else:
        fx.parse_dbtrust_arg(sys.argv)
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
