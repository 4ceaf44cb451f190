"""PostgreSQL 13 to 18 through dbtrust (issue 16 items 1, 2 and 5): the integration core against
every major a managed fleet runs, protocol 3.2 end to end, and older and newer libpq clients.

Run: /usr/bin/python3 tests/integration/test_pg_matrix.py --dbtrust build/dbtrust [-k pg13]

One TLS-only server per major (15 is Debian's postgresql-15, the others the pinned npm builds
that `scripts/install-deps test` puts in /opt/dbtrust-test/pg<MAJOR>), all with the test CA's
leaf, started at once; one dbtrust with one listener per major (`pg13` ... `pg18`). Each check
is a method generated per major, so a failure's name carries the version (test_cancel_pg13).
test_pg.py covers the Debian 15 path in depth (tens of MB COPY, hostile upstreams, command
line); here the same core runs lighter against each major: what can differ between majors is
the server's side of TLS, authentication and the startup protocol, not dbtrust's relay.

Protocol 3.2 (PostgreSQL 18): BackendKeyData carries a 32-byte key and a CancelRequest is 12 +
key length bytes; a client asking for a newer minor or for unknown `_pq_.` options gets a
NegotiateProtocolVersion ('v') from the server, which dbtrust must relay untouched after
forwarding the StartupMessage verbatim (PROTOCOLS.md A2). Raw-socket tests log in as the
cleartext-password user (the one method a test can answer by hand). Other libpq majors run
psycopg2 in a subprocess with LD_LIBRARY_PATH on that major's libpq (libpq_client.py).
"""

import asyncio
import hashlib
import io
import os
import secrets
import socket
import struct
import sys
import time
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

import asyncpg  # noqa: E402
import psycopg2  # noqa: E402
import psycopg2.errors  # noqa: E402

VERSIONS = (13, 14, 15, 16, 17, 18)
# Extra [listener.pgNN] keys per major: the hook for options only some majors take (e.g.
# sslnegotiation = direct from 17 on). Empty today: every major gets the same listener.
LISTENER_OPTIONS = {major: {} for major in VERSIONS}
# Client libpq majors x server majors of item 5: the oldest and newest libpq against the
# Debian server and the newest server.
LIBPQ_CLIENTS = (13, 18)
LIBPQ_CLIENT_SERVERS = (15, 18)

APP, APP_PW = fx.PG_APP_USER, fx.PG_APP_PASSWORD
MD5, MD5_PW = fx.PG_MD5_USER, fx.PG_MD5_PASSWORD
CLEAR, CLEAR_PW = fx.PG_CLEARTEXT_USER, fx.PG_CLEARTEXT_PASSWORD
WRONG_PW = "Wr0ng-pass-for-the-matrix"
DB = fx.PG_APP_DATABASE

PROTOCOL_3_0 = fx.PG_PROTOCOL_3_0
PROTOCOL_3_2 = (3 << 16) | 2
GREASE_VERSION = (3 << 16) | 9999  # what libpq 19 sends to flush out non-negotiating middleware
GREASE_OPTION = "_pq_.something_unknown"
PG18_KEY_LEN = 32  # MAX_CANCEL_KEY_LENGTH: what PostgreSQL 18 hands out on 3.2
CANCEL_DEADLINE_S = 2.0
COPY_ROWS = 40_000  # ~4 MB each way: past every startup-phase buffer, cheap for six servers
SERVER_SAW_TLS = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"

DBTRUST_BIN = None           # set from --dbtrust before unittest runs
W = types.SimpleNamespace()  # the module's world: servers, dbtrust, listener specs


# --------------------------------------------------------------------------------------------
# Module fixtures
# --------------------------------------------------------------------------------------------

def setUpModule():
    if not (os.path.isfile(DBTRUST_BIN) and os.access(DBTRUST_BIN, os.X_OK)):
        raise RuntimeError(f"dbtrust binary not found or not executable: {DBTRUST_BIN}")
    for key in [k for k in os.environ if k.startswith("PG")]:
        del os.environ[key]  # libpq inside psycopg2 would obey them silently
    started = time.monotonic()
    W.tmp = fx.make_temp_dir("test-pg-matrix")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.servers = {v: fx.postgres_server_of_major(v, W.pki.leaf, f"pg{v}") for v in VERSIONS}
    fx.start_postgres_servers(list(W.servers.values()))
    W.admin = {}
    for v, server in W.servers.items():
        W.admin[v] = fx.pg_connect(server.admin_dsn())
    W.recorder = fx.PgTlsUpstream(W.pki.leaf, "pg-recorder").start()
    W.bundle_dir = fx.BundleDirectory()
    W.bundle_dir.install(fx.pem_of(W.pki.root))
    W.config = build_dbtrust_config()
    W.dbtrust = fx.DbTrust.from_config(DBTRUST_BIN, W.config, W.tmp).start()
    print(f"\n  matrix world up in {time.monotonic() - started:.1f}s", file=sys.stderr)


def build_dbtrust_config():
    cfg = fx.DbTrustConfig(W.bundle_dir.path, workers=2, drain_timeout="1s",
                           trust_options={"reload_interval": "1h"})

    def listener(name, port, **options):
        opts = {"connect_timeout": "2s", "handshake_timeout": "3s", "startup_timeout": "5s"}
        opts.update(options)
        cfg.add_listener(name, "postgres", f"localhost:{port}", **opts)

    for v, server in W.servers.items():
        listener(listener_of(v), server.port, **LISTENER_OPTIONS[v])
    listener("recorder", W.recorder.port)
    return cfg


def tearDownModule():
    for conn in getattr(W, "admin", {}).values():
        conn.close()
    fx.run_cleanups()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def listener_of(v):
    return f"pg{v}"


def port_of(listener):
    return W.config.listeners[listener].port


def unique_app(tag):
    """An application_name that identifies one connection in pg_stat_activity and the log."""
    return f"dbt-{tag}-{secrets.token_hex(3)}"


def dsn(v, user=APP, password=APP_PW, sslmode="prefer", app=None, listener=None, **extra):
    """libpq DSN for a client of dbtrust's listener for major v (plaintext client leg)."""
    return fx.pg_conninfo(host="127.0.0.1", port=port_of(listener or listener_of(v)), user=user,
                          password=password, dbname=DB, sslmode=sslmode, application_name=app,
                          connect_timeout=10, **extra)


def connect(v, **kw):
    return fx.pg_connect(dsn(v, **kw))


def connect_direct(v):
    """Straight to the server with verify-full: the reference path."""
    return fx.pg_connect(W.servers[v].direct_dsn(bundle=W.pki.bundle))


query_one = fx.pg_query_one


def wait_until_query_active(v, app, timeout=5):
    """Block until server v runs pg_sleep for `app`: a cancel sent earlier would be a no-op."""
    def active():
        return query_one(W.admin[v], "select count(*) from pg_stat_activity where "
                         "application_name = %s and state = 'active' and "
                         "query like 'select pg_sleep%%'", (app,))[0] == 1
    fx.wait_for(active, timeout, what=f"pg_sleep to run for {app} on PostgreSQL {v}")


copy_out_digest = fx.pg_copy_out_digest


def server_major(conn):
    return int(query_one(conn, "show server_version_num")[0]) // 10000


# -- raw protocol (PROTOCOLS.md A1, A2) -------------------------------------------------------

def pg_message(mtype, body):
    return mtype + struct.pack("!I", len(body) + 4) + body


def parse_negotiate(body):
    """NegotiateProtocolVersion body -> (newest version the server speaks, [options it
    did not recognise])."""
    version, count = struct.unpack("!II", body[:8])
    names = [n.decode() for n in body[8:].split(b"\0")[:count]]
    return version, names


def raw_startup(port, params, version):
    """Send a StartupMessage in plaintext; return the socket and the first message."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(fx.pg_startup_message(params, version=version))
    return sock, fx.pg_read_message(sock)


def raw_login(sock, first):
    """Finish a cleartext-password login begun with `first` (the first server message); return
    every message up to ReadyForQuery, as (type, body)."""
    messages = [first]
    while True:
        mtype, body = messages[-1]
        if mtype == "E":
            raise AssertionError(f"server refused the login: {fx.pg_error_fields(body)}")
        if mtype == "R" and fx.pg_auth_code(body) == 3:  # AuthenticationCleartextPassword
            sock.sendall(pg_message(b"p", CLEAR_PW.encode() + b"\0"))
        if mtype == "Z":
            return messages
        messages.append(fx.pg_read_message(sock))


def backend_key(messages):
    """(pid, key bytes) of the BackendKeyData among `messages`."""
    [body] = [b for t, b in messages if t == "K"]
    return struct.unpack("!I", body[:4])[0], body[4:]


def first_reply_direct(v, params, version):
    """What server v itself answers first to this StartupMessage over a verified TLS leg: the
    reference for what the client must see through dbtrust."""
    with fx.pg_starttls("127.0.0.1", W.servers[v].port, server_hostname="localhost",
                        cafile=W.pki.bundle) as tls:
        tls.sendall(fx.pg_startup_message(params, version=version))
        return fx.pg_read_message(tls)


def raw_cancel(listener, pid, key):
    """A CancelRequest of 12 + len(key) bytes through dbtrust; the server answers nothing and
    closes. Returns how the connection ended."""
    packet = struct.pack("!III", 12 + len(key), fx.PG_CANCEL_CODE, pid) + key
    with socket.create_connection(("127.0.0.1", port_of(listener)), timeout=10) as sock:
        sock.sendall(packet)
        data, _, how = fx.read_until_closed(sock, 5)
    return data, how


# --------------------------------------------------------------------------------------------
# Per-major checks: each check_<name>(v) becomes test_<name>_pg<v>
# --------------------------------------------------------------------------------------------

class MatrixChecks:
    """The integration core of item 1 and the raw protocol cases of item 2, for one major."""

    def check_scram_psql(self, v):
        """psql 15 (Debian's, for every major) with sslmode=prefer: SSLRequest answered 'N',
        SCRAM-SHA-256 after dbtrust stripped -PLUS; the server's leg is TLS."""
        app = unique_app(f"psql{v}")
        mark = W.dbtrust.mark()
        proc = fx.run_psql(dsn(v, app=app, password=None), "select current_user",
                           "show server_version_num", SERVER_SAW_TLS, password=APP_PW)
        self.assertEqual(proc.returncode, 0, f"PostgreSQL {v}: {proc.stderr}")
        user, version_num, tls = proc.stdout.split()
        self.assertEqual((user, int(version_num) // 10000, tls), (APP, v, "t"))
        line = W.dbtrust.wait_for_line(app, since=mark)
        self.assertIn(f"listener={listener_of(v)}", line)

    def check_scram_psycopg2(self, v):
        conn = connect(v, app=unique_app(f"psycopg2-{v}"))
        try:
            self.assertEqual(query_one(conn, "select current_user, 40 + 2"), (APP, 42))
            self.assertEqual(query_one(conn, SERVER_SAW_TLS), (True,))
            self.assertEqual(server_major(conn), v)
        finally:
            conn.close()

    def check_scram_asyncpg(self, v):
        """asyncpg has its own protocol and SCRAM code (not libpq)."""
        async def scenario():
            conn = await asyncpg.connect(host="127.0.0.1", port=port_of(listener_of(v)),
                                         user=APP, password=APP_PW, database=DB, ssl="prefer")
            try:
                return (await conn.fetchval("select current_user"),
                        await conn.fetchval(SERVER_SAW_TLS),
                        int(await conn.fetchval("show server_version_num")) // 10000)
            finally:
                await conn.close()

        self.assertEqual(asyncio.run(scenario()), (APP, True, v))

    def check_md5(self, v):
        """The md5 challenge passes through untouched (and the role really is md5-hashed)."""
        self.assertTrue(query_one(W.admin[v], "select rolpassword like 'md5%%' from pg_authid "
                                  "where rolname = %s", (MD5,))[0])
        conn = connect(v, user=MD5, password=MD5_PW, app=unique_app(f"md5-{v}"))
        try:
            self.assertEqual(query_one(conn, "select current_user"), (MD5,))
            self.assertEqual(query_one(conn, SERVER_SAW_TLS), (True,))
        finally:
            conn.close()

    def check_copy_out(self, v):
        sql = (f"copy (select i, md5(i::text), repeat(md5((i * 7)::text), 2) "
               f"from generate_series(1, {COPY_ROWS}) i order by i) to stdout")
        via, direct = connect(v, app=unique_app(f"copy-out-{v}")), connect_direct(v)
        try:
            through, reference = copy_out_digest(via, sql), copy_out_digest(direct, sql)
        finally:
            via.close()
            direct.close()
        self.assertGreater(reference[1], 3_000_000)
        self.assertEqual(through, reference, f"PostgreSQL {v}: COPY OUT differs from direct")

    def check_copy_in(self, v):
        data = fx.pg_copy_rows(COPY_ROWS)
        conn, direct = connect(v, app=unique_app(f"copy-in-{v}")), connect_direct(v)
        try:
            with conn.cursor() as cur:
                cur.execute("drop table if exists copy_round_trip")
                cur.execute("create table copy_round_trip (id int, h text, p text)")
                cur.copy_expert("copy copy_round_trip from stdin", io.BytesIO(data))
            # Read back on the direct verified path: what dbtrust wrote is what the server has.
            digest = copy_out_digest(direct, "copy (select * from copy_round_trip order by id) "
                                             "to stdout")
            self.assertEqual(digest, (hashlib.sha256(data).hexdigest(), len(data)),
                             f"PostgreSQL {v}: COPY IN arrived altered")
        finally:
            direct.close()
            with conn.cursor() as cur:
                cur.execute("drop table if exists copy_round_trip")
            conn.close()

    def check_cancel(self, v):
        """libpq's PQcancel (psycopg2 conn.cancel()): a plaintext CancelRequest on a new
        connection, which dbtrust forwards over TLS."""
        app = unique_app(f"cancel-{v}")
        conn = connect(v, app=app)
        try:
            error, took = fx.pg_cancel_running_sleep(
                conn, lambda: wait_until_query_active(v, app), CANCEL_DEADLINE_S + 5)
            self.assertIsNotNone(took, f"PostgreSQL {v}: query still runs after cancel")
            self.assertIsInstance(error, psycopg2.errors.QueryCanceled)
            self.assertLess(took, CANCEL_DEADLINE_S)
            self.assertEqual(query_one(conn, "select 1"), (1,))
        finally:
            conn.close()

    def check_wrong_password(self, v):
        """The server's own refusal reaches the client: 28P01 and its message, not dbtrust's."""
        async def scenario():
            await asyncpg.connect(host="127.0.0.1", port=port_of(listener_of(v)), user=APP,
                                  password=WRONG_PW, database=DB, ssl="disable")

        with self.assertRaises(asyncpg.PostgresError) as caught:
            asyncio.run(scenario())
        self.assertEqual(caught.exception.sqlstate, "28P01", caught.exception)
        self.assertIn(f'password authentication failed for user "{APP}"', str(caught.exception))
        with self.assertRaises(psycopg2.OperationalError) as caught:
            connect(v, password=WRONG_PW)
        self.assertIn(f'password authentication failed for user "{APP}"', str(caught.exception))
        self.assertNotIn("dbtrust", str(caught.exception))

    def check_protocol_3_2_startup(self, v):
        """A 3.2 StartupMessage through dbtrust: PostgreSQL 18 takes it and hands out a 32-byte
        cancel key; older majors answer NegotiateProtocolVersion (3.0), relayed byte for byte,
        and keep 4-byte keys. A CancelRequest of 12 + key length bytes cancels within 2 s."""
        app = unique_app(f"p32-{v}")
        params = {"user": CLEAR, "database": DB, "application_name": app}
        sock, first = raw_startup(port_of(listener_of(v)), params, PROTOCOL_3_2)
        with sock:
            if v >= 18:
                self.assertEqual(first[0], "R", f"PostgreSQL {v} negotiated: {first}")
            else:
                self.assertEqual(first[0], "v", f"PostgreSQL {v} did not negotiate: {first}")
                self.assertEqual(parse_negotiate(first[1]), (PROTOCOL_3_0, []))
                self.assertEqual(first, first_reply_direct(v, params, PROTOCOL_3_2))
            pid, key = backend_key(raw_login(sock, first))
            self.assertEqual(len(key), PG18_KEY_LEN if v >= 18 else 4, f"PostgreSQL {v}")
            self.assert_raw_cancel(v, sock, app, pid, key)

    def check_greased_startup(self, v):
        """Minor version 3.9999 plus an unknown _pq_ option, as libpq 19 greases: the server
        answers NegotiateProtocolVersion with its newest minor and the option it did not know;
        the client gets exactly the server's message, and the session then works."""
        app = unique_app(f"grease-{v}")
        params = {"user": CLEAR, "database": DB, "application_name": app, GREASE_OPTION: "x"}
        sock, first = raw_startup(port_of(listener_of(v)), params, GREASE_VERSION)
        with sock:
            self.assertEqual(first[0], "v", f"PostgreSQL {v}: {first}")
            newest = PROTOCOL_3_2 if v >= 18 else PROTOCOL_3_0
            self.assertEqual(parse_negotiate(first[1]), (newest, [GREASE_OPTION]))
            self.assertEqual(first, first_reply_direct(v, params, GREASE_VERSION),
                             f"PostgreSQL {v}: NegotiateProtocolVersion altered on the way")
            messages = raw_login(sock, first)
            _, key = backend_key(messages)
            self.assertEqual(len(key), PG18_KEY_LEN if v >= 18 else 4)
            sock.sendall(pg_message(b"Q", b"select current_user\0"))
            replies = []
            while not replies or replies[-1][0] != "Z":
                replies.append(fx.pg_read_message(sock))
            self.assertIn(CLEAR.encode(), b"".join(b for t, b in replies if t == "D"))

    def assert_raw_cancel(self, v, sock, app, pid, key):
        """Run pg_sleep on the raw session `sock`, cancel it with (pid, key) through dbtrust."""
        sock.sendall(pg_message(b"Q", b"select pg_sleep(30)\0"))
        wait_until_query_active(v, app)
        mark = W.dbtrust.mark()
        started = time.monotonic()
        data, how = raw_cancel(listener_of(v), pid, key)
        self.assertEqual((data, how), (b"", "eof"), "a cancel's client gets silence and a close")
        replies = [fx.pg_read_message(sock)]  # RowDescription, then the error
        while replies[-1][0] not in ("E", "Z"):
            replies.append(fx.pg_read_message(sock))
        elapsed = time.monotonic() - started
        mtype, body = replies[-1]
        self.assertEqual(mtype, "E", f"PostgreSQL {v}: {replies}")
        self.assertEqual(fx.pg_error_fields(body).get("C"), "57014", fx.pg_error_fields(body))
        self.assertLess(elapsed, CANCEL_DEADLINE_S)
        self.assertEqual(fx.pg_read_message(sock), ("Z", b"I"))
        W.dbtrust.wait_for_line(f"listener={listener_of(v)}", "reason=cancel_forwarded",
                                since=mark)


def add_tests(cls, cases):
    """Add a test method per (name, docstring, function, args): test(self) = function(self,
    *args). Generated rather than subtests, so a failure's name says which case failed."""
    for name, doc, function, args in cases:
        def test(self, function=function, args=args):
            function(self, *args)
        test.__name__, test.__doc__ = name, doc
        setattr(cls, name, test)
    return cls


def generate_per_major(cls):
    """test_<name>_pg<v> for each check_<name> and major, so -k pg13 runs one major."""
    checks = [(n, f) for n, f in vars(MatrixChecks).items() if n.startswith("check_")]
    return add_tests(cls, [(f"test_{n[len('check_'):]}_pg{v}",
                            f"PostgreSQL {v}: {f.__doc__ or n}", f, (v,))
                           for n, f in checks for v in VERSIONS])


@generate_per_major
class TestMatrix(MatrixChecks, unittest.TestCase):
    pass


# --------------------------------------------------------------------------------------------
# Protocol options reach the server verbatim (item 2)
# --------------------------------------------------------------------------------------------

class TestStartupVerbatim(unittest.TestCase):

    def test_greased_and_3_2_startup_messages_reach_the_upstream_byte_for_byte(self):
        """The recording TLS peer sees exactly what the client sent: no version "fix-up", no
        option dropped (the real servers' answers are checked per major above)."""
        for version in (GREASE_VERSION, PROTOCOL_3_2):
            with self.subTest(version=f"3.{version & 0xFFFF}"):
                startup = fx.pg_startup_message({"user": APP, "database": DB,
                                                 GREASE_OPTION: "x", "_pq_.another": "y"},
                                                version=version)
                count = W.recorder.connection_count()
                sock, answers = fx.pg_open_plain("127.0.0.1", port_of("recorder"),
                                                 [fx.PG_SSL_REQUEST])
                with sock:
                    sock.sendall(startup)
                    mtype, body = fx.pg_read_message(sock)
                self.assertEqual((answers, mtype), ([b"N"], "E"))
                self.assertEqual(fx.pg_error_fields(body), fx.PgTlsUpstream.DEFAULT_REPLY)
                # Only connections that got as far as a StartupMessage: a rotation guard's
                # probe (handshake only) may come in between.
                [record] = [r for r in W.recorder.connections_since(count)
                            if "startup" in r.notes]
                self.assertEqual(record.notes["startup"], startup)


# --------------------------------------------------------------------------------------------
# libpq of other majors as clients (items 2 and 5)
# --------------------------------------------------------------------------------------------

class LibpqClientChecks:

    def check_libpq_client(self, client, server):
        """psycopg2 on libpq `client` through dbtrust to PostgreSQL `server`: SCRAM login and
        a cancel within 2 s. libpq 18 asks for protocol 3.2 (max_protocol_version): against 18
        the session runs 3.2 (its cancel carries the 32-byte key), against older servers libpq
        accepts their NegotiateProtocolVersion and runs 3.0. libpq 17+ also cancels with
        PQcancelBlocking (SSLRequest answered 'N', then the CancelRequest)."""
        extra = {"max_protocol_version": "3.2"} if client >= 18 else {}
        expected_protocol = 30002 if client >= 18 and server >= 18 else 30000
        methods = ("PQcancel", "PQcancelBlocking") if client >= 17 else ("PQcancel",)
        for method in methods:
            with self.subTest(method=method):
                out = fx.run_libpq_client(client, {
                    "dsn": dsn(server, app=unique_app(f"libpq{client}"), **extra),
                    "queries": ["select current_user, s.ssl from pg_stat_ssl s "
                                "where s.pid = pg_backend_pid()", "show server_version_num"],
                    "cancel": {"method": method, "after_s": 0.7,
                               "query": "select pg_sleep(10)"}})
                where = f"libpq {client} -> PostgreSQL {server}: {out}"
                self.assertEqual(out["libpq_version"] // 10000, client, where)
                self.assertIsNone(out["error"], where)
                self.assertEqual(out["rows"][0], [APP, True], where)
                self.assertEqual(int(out["rows"][1][0]) // 10000, server, where)
                self.assertEqual(out["protocol_version"], expected_protocol, where)
                result = out["cancel"]
                self.assertIn(result["ok"], (True, None), where)  # PQcancel reports nothing
                self.assertEqual(result["sqlstate"], "57014", where)  # query_canceled
                self.assertLess(result["latency_s"], CANCEL_DEADLINE_S, where)


def generate_client_pairs(cls):
    return add_tests(cls, [(f"test_libpq{c}_client_pg{v}", f"libpq {c} client, PostgreSQL {v}",
                            LibpqClientChecks.check_libpq_client, (c, v))
                           for c in LIBPQ_CLIENTS for v in LIBPQ_CLIENT_SERVERS])


@generate_client_pairs
class TestLibpqClients(LibpqClientChecks, unittest.TestCase):
    pass


# --------------------------------------------------------------------------------------------
# Man in the middle (each major's server turns impostor) and a bundle reload across majors
# --------------------------------------------------------------------------------------------

class TestTrust(unittest.TestCase):

    def assert_refused(self, listener, reason):
        """dbtrust's own 08001 naming the reason and listener, on the wire and in libpq's text;
        its log line says the same."""
        mark = W.dbtrust.mark()
        answers, mtype, body = fx.pg_first_reply(
            "127.0.0.1", port_of(listener), {"user": APP, "database": DB},
            pre_requests=[fx.PG_SSL_REQUEST])
        self.assertEqual((answers, mtype), ([b"N"], "E"), body)
        fields = fx.pg_error_fields(body)
        self.assertEqual(fields.get("C"), "08001", fields)
        self.assertIn(reason, fields.get("M", ""), fields)
        self.assertIn(listener, fields.get("M", ""), fields)
        with self.assertRaises(psycopg2.OperationalError) as caught:
            psycopg2.connect(dsn(None, listener=listener))
        self.assertIn(reason, str(caught.exception))
        W.dbtrust.wait_for_line(f"listener={listener}", f"reason={reason}", since=mark)
        return fields

    def check_mitm(self, v):
        """PostgreSQL v's own server turns impostor for a moment: a rogue CA's chain and a
        certificate for another name are refused by dbtrust whatever TLS stack serves them
        (the npm builds carry OpenSSL 1.1, Debian's 15 OpenSSL 3); the good chain is back
        after."""
        server = W.servers[v]
        self.addCleanup(server.set_certificate, W.pki.leaf)
        server.set_certificate(W.pki.rogue_leaf)
        self.assert_refused(listener_of(v), "tls_untrusted_chain")
        server.set_certificate(W.pki.wrong_name_leaf)
        fields = self.assert_refused(listener_of(v), "tls_hostname_mismatch")
        self.assertIn("wrong.example.org", fields["M"] + fields.get("D", ""))
        server.set_certificate(W.pki.leaf)
        conn = psycopg2.connect(dsn(v))
        try:
            self.assertEqual(server_major(conn), v)
        finally:
            conn.close()

    def test_bundle_reload_keeps_a_session_per_major(self):
        """The combined bundle of a CA rotation (old root + new root) is applied while one
        session per major stays open: each keeps its backend, and new sessions still verify."""
        sessions = {v: connect(v, app=unique_app(f"reload-{v}")) for v in VERSIONS}
        try:
            pids = {v: query_one(c, "select pg_backend_pid()")[0] for v, c in sessions.items()}
            mark = W.dbtrust.mark()
            W.bundle_dir.install(fx.pem_of(W.pki.root, W.pki.root_b))
            W.dbtrust.wait_for_line("bundle_reload", "result=ok", since=mark)
            for v, conn in sessions.items():
                with self.subTest(major=v):
                    self.assertEqual(query_one(conn, "select pg_backend_pid()"), (pids[v],))
                    fresh = connect(v, app=unique_app(f"after-reload-{v}"))
                    try:
                        self.assertEqual(query_one(fresh, SERVER_SAW_TLS), (True,))
                        self.assertEqual(server_major(fresh), v)
                    finally:
                        fresh.close()
        finally:
            for conn in sessions.values():
                conn.close()


add_tests(TestTrust, [(f"test_mitm_pg{v}", f"PostgreSQL {v}: rogue chain and wrong name refused.",
                       TestTrust.check_mitm, (v,)) for v in VERSIONS])


if __name__ == "__main__":
    DBTRUST_BIN = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
