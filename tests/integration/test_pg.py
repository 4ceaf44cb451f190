"""PostgreSQL integration suite for dbtrust: real PostgreSQL 15, real clients, hostile upstreams.

Run: /usr/bin/python3 tests/integration/test_pg.py --dbtrust build/dbtrust [unittest args]

One TLS-only PostgreSQL cluster serves the good path; a second one ("impostor") presents the
bad certificates in turn; scripted Python peers play servers that refuse TLS, inject plaintext
or never answer. A single dbtrust process (config file, one listener per upstream) fronts them
all, so every refusal is followed by a check that the good listener still serves. A few extra
dbtrust processes exercise the one-listener command line.

Assertions target what users and operators see: query results, the server's view of the
connection (pg_stat_ssl), the client's error text and SQLSTATE, and the `reason=` / `listener=`
fields of dbtrust's connection log line.
"""

import asyncio
import hashlib
import io
import os
import secrets
import subprocess
import sys
import threading
import time
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

import asyncpg  # noqa: E402
import psycopg  # noqa: E402
import psycopg2  # noqa: E402
import psycopg2.errors  # noqa: E402

APP, APP_PW = fx.PG_APP_USER, fx.PG_APP_PASSWORD
MD5, MD5_PW = fx.PG_MD5_USER, fx.PG_MD5_PASSWORD
CLEAR, CLEAR_PW = fx.PG_CLEARTEXT_USER, fx.PG_CLEARTEXT_PASSWORD
WRONG_PW = "Wr0ng-pass-for-dbtrust"
DB = fx.PG_APP_DATABASE
COPY_ROWS = 300_000          # ~31 MB of COPY text: well past any startup-phase buffer
CANCEL_DEADLINE_S = 2.0

DBTRUST_BIN = None           # set from --dbtrust before unittest runs
W = types.SimpleNamespace()  # the module's world: servers, peers, dbtrust, listener specs


# --------------------------------------------------------------------------------------------
# Module fixtures
# --------------------------------------------------------------------------------------------

def setUpModule():
    """Start both PostgreSQL clusters, the scripted peers and one dbtrust with all listeners."""
    if not (os.path.isfile(DBTRUST_BIN) and os.access(DBTRUST_BIN, os.X_OK)):
        raise RuntimeError(f"dbtrust binary not found or not executable: {DBTRUST_BIN}")
    for key in [k for k in os.environ if k.startswith("PG")]:
        del os.environ[key]  # libpq inside psycopg2 would obey them silently
    W.tmp = fx.make_temp_dir("test-pg")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.pg = fx.PostgresServer(W.pki.leaf, "pg-main").start().provision_app_roles()
    W.impostor = fx.PostgresServer(W.pki.rogue_leaf, "pg-impostor").start().provision_app_roles()
    W.refuse_peer = fx.ScriptedUpstream(fx.pg_script_refuse_tls, "refuses-tls").start()
    W.inject_peer = fx.ScriptedUpstream(fx.pg_script_plaintext_after_s, "injects").start()
    W.silent_peer = fx.ScriptedUpstream(fx.script_silent, "silent").start()
    W.tls_peer = fx.PgTlsUpstream(W.pki.leaf).start()
    W.closed_port = fx.free_port()  # nobody listens here
    W.admin = psycopg2.connect(W.pg.admin_dsn())
    W.admin.autocommit = True
    W.config = build_dbtrust_config()
    W.dbtrust = fx.DbTrust.from_config(DBTRUST_BIN, W.config, W.tmp).start()


def build_dbtrust_config():
    """One listener per upstream behaviour; listener names are what errors and logs must name."""
    cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s")

    def listener(name, port, **options):
        opts = {"connect_timeout": "2s", "handshake_timeout": "3s", "startup_timeout": "3s"}
        opts.update(options)
        cfg.add_listener(name, "postgres", f"localhost:{port}", **opts)

    listener("orders", W.pg.port)
    listener("slow-client", W.pg.port, startup_timeout="1s")
    listener("unreachable", W.closed_port)
    listener("impostor-control", W.impostor.port)
    listener("rogue-ca", W.impostor.port)
    listener("wrong-name", W.impostor.port)
    listener("expired-cert", W.impostor.port)
    listener("refuses-tls", W.refuse_peer.port)
    listener("injects-plaintext", W.inject_peer.port)
    listener("silent-upstream", W.silent_peer.port, handshake_timeout="1s")
    listener("tls-peer", W.tls_peer.port)
    return cfg


def tearDownModule():
    if getattr(W, "admin", None) is not None:
        W.admin.close()
    fx.run_cleanups()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def port_of(listener):
    return W.config.listeners[listener].port


def unique_app(tag):
    """An application_name that identifies one connection in pg_stat_activity and the log."""
    return f"dbt-{tag}-{secrets.token_hex(3)}"


def dsn(listener="orders", user=APP, password=APP_PW, sslmode="prefer", app=None, dbname=DB):
    """libpq DSN for a client of dbtrust (plaintext leg: sslmode disable/prefer)."""
    return fx.pg_conninfo(host="127.0.0.1", port=port_of(listener), user=user,
                          password=password, dbname=dbname, sslmode=sslmode,
                          application_name=app, connect_timeout=10)


def connect(listener="orders", **kw):
    return fx.pg_connect(dsn(listener, **kw))


query_one = fx.pg_query_one


SERVER_SAW_TLS = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"


def admin_value(sql, args=None):
    return query_one(W.admin, sql, args)[0]


def wait_until_query_active(app, timeout=5):
    """Block until the server runs a statement for `app`: a cancel sent earlier would be a
    no-op and the test would measure nothing."""
    fx.wait_for(lambda: admin_value(
        "select count(*) from pg_stat_activity where application_name = %s "
        "and state = 'active' and query like 'select pg_sleep%%'", (app,)) == 1,
        timeout, what=f"pg_sleep to run for {app}")


def connect_direct():
    """Straight to the server with verify-full: the reference path. Autocommit, so a COPY
    leaves no open transaction holding locks that a later DROP TABLE would wait for."""
    return fx.pg_connect(W.pg.direct_dsn(bundle=W.pki.bundle))


copy_out_digest = fx.pg_copy_out_digest
generated_copy_rows = fx.pg_copy_rows


class DbTrustTestCase(unittest.TestCase):
    """Shared assertions about the good path and refusals."""

    def assert_orders_serves(self):
        """dbtrust keeps serving the good listener after whatever the test did."""
        self.assertTrue(W.dbtrust.alive(), "dbtrust process died")
        conn = connect(app=unique_app("still-serving"))
        try:
            self.assertEqual(query_one(conn, "select 1, current_user"), (1, APP))
        finally:
            conn.close()

    def assert_refused(self, listener, reason, sqlstate="08001"):
        """The refusal is visible everywhere it must be: wire SQLSTATE and message (raw client),
        libpq's error text (psycopg2), dbtrust's log line; dbtrust keeps serving afterwards.
        Returns the ErrorResponse fields."""
        mark = W.dbtrust.mark()
        answers, mtype, body = fx.pg_first_reply(
            "127.0.0.1", port_of(listener),
            {"user": APP, "database": DB, "application_name": unique_app(listener)},
            pre_requests=[fx.PG_SSL_REQUEST])
        self.assertEqual(answers, [b"N"], "dbtrust must answer the client's SSLRequest 'N'")
        self.assertEqual(mtype, "E", f"expected an ErrorResponse, got {mtype!r} {body!r}")
        fields = fx.pg_error_fields(body)
        self.assertEqual(fields.get("C"), sqlstate, fields)
        self.assertIn(reason, fields.get("M", ""), fields)
        self.assertIn(listener, fields.get("M", ""), fields)

        with self.assertRaises(psycopg2.OperationalError) as caught:
            connect(listener, app=unique_app(listener))
        message = str(caught.exception)
        self.assertIn(reason, message)
        self.assertIn(listener, message)
        if caught.exception.pgcode is not None:  # libpq rarely sets it during connection
            self.assertEqual(caught.exception.pgcode, sqlstate)

        W.dbtrust.wait_for_line(f"listener={listener}", f"reason={reason}", since=mark)
        self.assert_orders_serves()
        return fields


# --------------------------------------------------------------------------------------------
# Sanity of the fixtures: the negative tests below only mean something if these hold
# --------------------------------------------------------------------------------------------

class TestFixtureSanity(DbTrustTestCase):

    def openssl_verify(self, cert):
        return fx.run(["openssl", "verify", "-CAfile", W.pki.bundle, "-untrusted",
                       W.pki.intermediate.cert, "-verify_hostname", "localhost", cert.cert],
                      check=False)

    def test_pki_good_leaf_verifies_against_bundle(self):
        self.assertEqual(self.openssl_verify(W.pki.leaf).returncode, 0)

    def test_pki_bad_leaves_fail_for_the_intended_reason(self):
        cases = [(W.pki.rogue_leaf, "unable to get local issuer certificate"),
                 (W.pki.wrong_name_leaf, "hostname mismatch"),
                 (W.pki.expired_leaf, "certificate has expired")]
        for cert, why in cases:
            with self.subTest(cert=cert.name):
                proc = self.openssl_verify(cert)
                self.assertNotEqual(proc.returncode, 0)
                self.assertIn(why, proc.stdout + proc.stderr)

    def test_direct_verify_full_works_and_server_offers_scram_plus(self):
        """The direct reference path works, and the server really offers -PLUS over TLS, so
        the stripping test through dbtrust is meaningful."""
        conn = connect_direct()
        try:
            self.assertEqual(query_one(conn, SERVER_SAW_TLS), (True,))
        finally:
            conn.close()
        with fx.pg_starttls("127.0.0.1", W.pg.port) as tls:
            tls.sendall(fx.pg_startup_message({"user": APP, "database": DB}))
            mtype, body = fx.pg_read_message(tls)
        self.assertEqual(mtype, "R")
        self.assertEqual(fx.pg_sasl_mechanisms(body), ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])

    def test_server_rejects_plaintext_tcp(self):
        """Proves the server side of every dbtrust connection below must be TLS."""
        with self.assertRaises(psycopg2.OperationalError) as caught:
            psycopg2.connect(fx.pg_conninfo(host="127.0.0.1", port=W.pg.port, user=APP,
                                            password=APP_PW, dbname=DB, sslmode="disable"))
        self.assertIn("no encryption", str(caught.exception))

    def test_roles_use_the_intended_password_hashes(self):
        self.assertTrue(admin_value("select rolpassword like 'SCRAM-SHA-256$%%' "
                                    "from pg_authid where rolname = %s", (APP,)))
        self.assertTrue(admin_value("select rolpassword like 'md5%%' "
                                    "from pg_authid where rolname = %s", (MD5,)))


# --------------------------------------------------------------------------------------------
# Good path
# --------------------------------------------------------------------------------------------

class TestPsql(DbTrustTestCase):

    def test_psql_through_dbtrust(self):
        """psql with sslmode=disable (no SSLRequest) and prefer (SSLRequest answered 'N')."""
        for sslmode in ("disable", "prefer"):
            with self.subTest(sslmode=sslmode):
                app = unique_app(f"psql-{sslmode}")
                mark = W.dbtrust.mark()
                proc = fx.run_psql(dsn(sslmode=sslmode, app=app, password=None),
                                   "select 1", "select current_user", SERVER_SAW_TLS,
                                   password=APP_PW)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertEqual(proc.stdout.split(), ["1", APP, "t"])
                line = W.dbtrust.wait_for_line(app, since=mark)
                self.assertIn("listener=orders", line)


class TestWireLevel(DbTrustTestCase):
    """Byte-level behaviour of the startup phase (PROTOCOLS.md A1, A5)."""

    def test_ssl_request_answered_with_exactly_n(self):
        sock, answers = fx.pg_open_plain("127.0.0.1", port_of("orders"), [fx.PG_SSL_REQUEST])
        with sock:
            self.assertEqual(answers, [b"N"])
            data, _, how = fx.read_until_closed(sock, 0.3)
            self.assertEqual((data, how), (b"", "timeout"), "nothing may follow the 'N'")

    def test_gssenc_then_ssl_request_then_startup(self):
        answers, mtype, _ = fx.pg_first_reply(
            "127.0.0.1", port_of("orders"), {"user": APP, "database": DB},
            pre_requests=[fx.PG_GSSENC_REQUEST, fx.PG_SSL_REQUEST])
        self.assertEqual(answers, [b"N", b"N"])
        self.assertEqual(mtype, "R")

    def test_scram_plus_is_stripped(self):
        """A plaintext libpq client aborts if it is offered SCRAM-SHA-256-PLUS (A5)."""
        _, mtype, body = fx.pg_first_reply("127.0.0.1", port_of("orders"),
                                           {"user": APP, "database": DB})
        self.assertEqual(mtype, "R")
        self.assertEqual(fx.pg_sasl_mechanisms(body), ["SCRAM-SHA-256"])
        self.assertEqual(len(body) + 4, 23, "rebuilt AuthenticationSASL length")

    def test_md5_challenge_passes_through(self):
        _, mtype, body = fx.pg_first_reply("127.0.0.1", port_of("orders"),
                                           {"user": MD5, "database": DB})
        self.assertEqual(mtype, "R")
        self.assertEqual(fx.pg_auth_code(body), 5)
        self.assertEqual(len(body), 8, "AuthenticationMD5Password carries a 4-byte salt")


class TestDrivers(DbTrustTestCase):
    """SCRAM works only because dbtrust strips -PLUS; md5 and cleartext pass through untouched."""

    USERS = ((APP, APP_PW), (MD5, MD5_PW), (CLEAR, CLEAR_PW))

    def test_psycopg2(self):
        for user, password in self.USERS:
            with self.subTest(user=user):
                conn = connect(user=user, password=password, app=unique_app("psycopg2"))
                try:
                    self.assertEqual(query_one(conn, "select current_user, 40 + 2"), (user, 42))
                    self.assertEqual(query_one(conn, SERVER_SAW_TLS), (True,))
                finally:
                    conn.close()

    def test_psycopg3(self):
        for user, password in self.USERS:
            with self.subTest(user=user):
                with psycopg.connect(dsn(user=user, password=password)) as conn:
                    row = conn.execute("select current_user, %s::int", (7,)).fetchone()
                    self.assertEqual(row, (user, 7))

    def test_asyncpg(self):
        async def scenario(user, password, ssl_mode):
            conn = await asyncpg.connect(host="127.0.0.1", port=port_of("orders"), user=user,
                                         password=password, database=DB, ssl=ssl_mode)
            try:
                return (await conn.fetchval("select current_user"),
                        await conn.fetchval(SERVER_SAW_TLS))
            finally:
                await conn.close()

        for user, password in self.USERS:
            for ssl_mode in ("prefer", "disable"):
                with self.subTest(user=user, ssl=ssl_mode):
                    result = asyncio.run(scenario(user, password, ssl_mode))
                    self.assertEqual(result, (user, True))


class TestCopy(DbTrustTestCase):
    """Tens of MB each way: the relay must be byte-exact and not stall on backpressure."""

    GENERATED = (f"copy (select i, md5(i::text), repeat(md5((i * 7)::text), 2) "
                 f"from generate_series(1, {COPY_ROWS}) i order by i) to stdout")

    def test_copy_out_identical_to_direct_verified_connection(self):
        via = connect(app=unique_app("copy-out"))
        direct = connect_direct()
        try:
            through = copy_out_digest(via, self.GENERATED)
            reference = copy_out_digest(direct, self.GENERATED)
        finally:
            via.close()
            direct.close()
        self.assertGreater(reference[1], 30_000_000)
        self.assertEqual(through, reference)

    def test_copy_in_round_trip(self):
        data = generated_copy_rows(COPY_ROWS)
        self.assertGreater(len(data), 30_000_000)
        conn = connect(app=unique_app("copy-in"))
        direct = connect_direct()
        try:
            with conn.cursor() as cur:
                cur.execute("drop table if exists copy_round_trip")
                cur.execute("create table copy_round_trip (id int, h text, p text)")
                cur.copy_expert("copy copy_round_trip from stdin", io.BytesIO(data))
            self.assertEqual(query_one(conn, "select count(*) from copy_round_trip"),
                             (COPY_ROWS,))
            # Read back on the direct verified path: what dbtrust wrote is what the server has.
            digest = copy_out_digest(direct, "copy (select * from copy_round_trip order by id)"
                                             " to stdout")
            self.assertEqual(digest, (hashlib.sha256(data).hexdigest(), len(data)))
        finally:
            direct.close()
            with conn.cursor() as cur:
                cur.execute("drop table if exists copy_round_trip")
            conn.close()


class TestCancel(DbTrustTestCase):
    """CancelRequest arrives on a new plaintext connection; dbtrust must forward it over TLS."""

    def test_psycopg2_cancel(self):
        app = unique_app("cancel")
        conn = connect(app=app)
        try:
            error, took = fx.pg_cancel_running_sleep(conn, lambda: wait_until_query_active(app),
                                                     CANCEL_DEADLINE_S + 5)
            self.assertIsNotNone(took, "query still running after cancel")
            self.assertIsInstance(error, psycopg2.errors.QueryCanceled)
            self.assertLess(took, CANCEL_DEADLINE_S)
            self.assertEqual(query_one(conn, "select 1"), (1,))
        finally:
            conn.close()

    def test_asyncpg_cancel_on_timeout(self):
        """asyncio.wait_for's timeout makes asyncpg send a CancelRequest (after its own
        SSLRequest/'N' exchange); the session must be usable right after."""
        app = unique_app("acancel")

        async def scenario():
            conn = await asyncpg.connect(host="127.0.0.1", port=port_of("orders"), user=APP,
                                         password=APP_PW, database=DB, ssl="prefer",
                                         server_settings={"application_name": app})
            try:
                with self.assertRaises(asyncio.TimeoutError):
                    await asyncio.wait_for(conn.fetchval("select pg_sleep(30)"), timeout=0.5)
                started = time.monotonic()
                value = await asyncio.wait_for(conn.fetchval("select 41 + 1"), timeout=5)
                return value, time.monotonic() - started
            finally:
                await conn.close()

        value, elapsed = asyncio.run(scenario())
        self.assertEqual(value, 42)
        self.assertLess(elapsed, CANCEL_DEADLINE_S)
        self.assertEqual(admin_value("select count(*) from pg_stat_activity where "
                                     "application_name = %s and state = 'active'", (app,)), 0)


class TestServerMessagesPassThrough(DbTrustTestCase):
    """dbtrust relays the server's own messages; it synthesizes errors only for its own."""

    def test_wrong_password_shows_server_error(self):
        for user in (APP, MD5):
            with self.subTest(user=user):
                with self.assertRaises(psycopg2.OperationalError) as caught:
                    connect(user=user, password=WRONG_PW)
                message = str(caught.exception)
                self.assertIn(f'password authentication failed for user "{user}"', message)
                self.assertNotIn("dbtrust", message)
        proc = fx.run_psql(dsn(password=None), "select 1", password=WRONG_PW)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn(f'password authentication failed for user "{APP}"', proc.stderr)
        self.assertEqual(proc.stdout, "")
        self.assert_orders_serves()

    def test_startup_forwarded_verbatim_with_sni_and_server_error_relayed(self):
        """The StartupMessage reaches the server byte for byte (A2: unknown options and
        _pq_.* included), SNI names the upstream host, and the server's ErrorResponse reaches
        the client unchanged."""
        params = {"user": APP, "database": DB, "application_name": unique_app("verbatim"),
                  "options": "-c statement_timeout=5s", "_pq_.dbtrust_test": "1"}
        startup = fx.pg_startup_message(params)
        count = W.tls_peer.connection_count()
        sock, answers = fx.pg_open_plain("127.0.0.1", port_of("tls-peer"), [fx.PG_SSL_REQUEST])
        with sock:
            sock.sendall(startup)
            mtype, body = fx.pg_read_message(sock)
        self.assertEqual(answers, [b"N"])
        self.assertEqual((mtype, fx.pg_error_fields(body)), ("E", fx.PgTlsUpstream.DEFAULT_REPLY))
        [record] = W.tls_peer.connections_since(count)
        self.assertEqual(record.notes.get("startup"), startup, record.notes)
        self.assertEqual(record.notes.get("sni"), "localhost")
        self.assertIn(record.notes.get("tls_version"), ("TLSv1.2", "TLSv1.3"))


# --------------------------------------------------------------------------------------------
# Refusals: fail closed, say why
# --------------------------------------------------------------------------------------------

class TestRefusedUpstreams(DbTrustTestCase):
    """Each hostile upstream has its own listener; every refusal names reason and listener."""

    def test_impostor_with_good_certificate_is_accepted(self):
        """Control: the impostor cluster itself is fine; only its certificates are bad."""
        W.impostor.set_certificate(W.pki.leaf)
        conn = connect("impostor-control", app=unique_app("control"))
        try:
            self.assertEqual(query_one(conn, "select current_user"), (APP,))
        finally:
            conn.close()

    def test_rogue_ca(self):
        W.impostor.set_certificate(W.pki.rogue_leaf)
        self.assert_refused("rogue-ca", "tls_untrusted_chain")
        proc = fx.run_psql(dsn("rogue-ca", password=None), "select 1", password=APP_PW)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("tls_untrusted_chain", proc.stderr, "psql must show dbtrust's reason")

    def test_wrong_name(self):
        W.impostor.set_certificate(W.pki.wrong_name_leaf)
        fields = self.assert_refused("wrong-name", "tls_hostname_mismatch")
        self.assertIn("wrong.example.org", fields["M"] + fields.get("D", ""))

    def test_expired(self):
        W.impostor.set_certificate(W.pki.expired_leaf)
        self.assert_refused("expired-cert", "tls_cert_expired")

    def test_upstream_refuses_tls(self):
        count = W.refuse_peer.connection_count()
        self.assert_refused("refuses-tls", "upstream_refused_tls")
        records = W.refuse_peer.connections_since(count)
        self.assertGreaterEqual(len(records), 2)
        for record in records:  # fail closed: no plaintext StartupMessage after the 'N'
            self.assertEqual(bytes(record.data), fx.PG_SSL_REQUEST)

    def test_plaintext_after_ssl_response(self):
        count = W.inject_peer.connection_count()
        fields = self.assert_refused("injects-plaintext", "upstream_plaintext_after_ssl_response")
        self.assertNotIn(fx.PG_INJECTED_MESSAGE, str(fields), "unauthenticated text shown")
        for record in W.inject_peer.connections_since(count):
            self.assertEqual(bytes(record.data), fx.PG_SSL_REQUEST,
                             "nothing (no ClientHello, no StartupMessage) after 'S'+junk")

    def test_silent_upstream_hits_handshake_timeout(self):
        """The upstream accepts but never answers the SSLRequest: handshake_timeout (1s)."""
        started = time.monotonic()
        mark = W.dbtrust.mark()
        _, mtype, body = fx.pg_first_reply("127.0.0.1", port_of("silent-upstream"),
                                           {"user": APP, "database": DB})
        elapsed = time.monotonic() - started
        fields = fx.pg_error_fields(body)
        self.assertEqual(mtype, "E")
        self.assertEqual(fields.get("C"), "08001", fields)
        self.assertIn("tls_handshake_timeout", fields.get("M", ""))
        self.assertIn("silent-upstream", fields.get("M", ""))
        self.assertGreater(elapsed, 0.8)
        self.assertLess(elapsed, 3.5)
        W.dbtrust.wait_for_line("listener=silent-upstream", "reason=tls_handshake_timeout",
                                since=mark)
        self.assert_orders_serves()


class TestUnreachableAndTimeouts(DbTrustTestCase):

    def test_unreachable_upstream(self):
        fields = self.assert_refused("unreachable", "upstream_connect_failed", sqlstate="57P03")
        self.assertIn(str(W.closed_port), fields["M"] + fields.get("D", ""))

    def test_silent_client_closed_after_startup_timeout(self):
        """A client that connects and never finishes its startup packets (startup_timeout=1s)."""
        cases = {"sends nothing": b"", "stops after SSLRequest": fx.PG_SSL_REQUEST,
                 "half a StartupMessage": fx.pg_startup_message({"user": APP})[:9]}
        for case, prefix in cases.items():
            with self.subTest(case=case):
                mark = W.dbtrust.mark()
                sock, _ = fx.pg_open_plain("127.0.0.1", port_of("slow-client"))
                with sock:
                    sock.sendall(prefix)
                    _, elapsed, how = fx.read_until_closed(sock, 6)
                self.assertIn(how, ("eof", "reset"), "dbtrust never closed the idle client")
                self.assertGreater(elapsed, 0.8)
                self.assertLess(elapsed, 3.0)
                W.dbtrust.wait_for_line("listener=slow-client", "reason=client_timeout",
                                        since=mark)
        self.assert_orders_serves()


# --------------------------------------------------------------------------------------------
# Load and hygiene
# --------------------------------------------------------------------------------------------

class TestConcurrency(DbTrustTestCase):

    THREADS, QUERIES = 20, 20

    def test_parallel_sessions(self):
        barrier = threading.Barrier(self.THREADS)
        results, errors = {}, []

        def session(n):
            try:
                conn = connect(app=unique_app(f"par{n}"))
                try:
                    barrier.wait(20)  # all sessions open at once
                    pid = query_one(conn, "select pg_backend_pid()")[0]
                    for q in range(self.QUERIES):
                        self.assertEqual(query_one(conn, "select %s::int * 1000 + %s::int",
                                                   (n, q)), (n * 1000 + q,))
                    results[n] = (pid, query_one(conn, SERVER_SAW_TLS)[0])
                finally:
                    conn.close()
            except Exception as exc:  # noqa: BLE001 - collected and reported
                errors.append(f"session {n}: {exc!r}")

        threads = [threading.Thread(target=session, args=(n,)) for n in range(self.THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), self.THREADS)
        self.assertEqual(len({pid for pid, _ in results.values()}), self.THREADS)
        self.assertTrue(all(tls for _, tls in results.values()))


class TestLogHygiene(DbTrustTestCase):

    def test_log_never_contains_passwords(self):
        """Log lines are written for SCRAM, md5, cleartext and failed logins, and none holds a
        password. Only the cleartext logins put a password on the wire through dbtrust, so they
        are what can catch a leak. Waiting for the lines first keeps the check from passing on
        an empty log."""
        mark = W.dbtrust.mark()
        apps = []
        for user, password in ((APP, APP_PW), (MD5, MD5_PW), (CLEAR, CLEAR_PW),
                               (CLEAR, WRONG_PW), (APP, WRONG_PW)):
            app = unique_app("hygiene")
            apps.append(app)
            try:
                connect(user=user, password=password, app=app).close()
            except psycopg2.OperationalError:
                pass  # the wrong password, expected
        for app in apps:
            W.dbtrust.wait_for_line(app, since=mark)
        output = W.dbtrust.output_text()
        for secret in (APP_PW, MD5_PW, CLEAR_PW, WRONG_PW):
            self.assertNotIn(secret, output)


# --------------------------------------------------------------------------------------------
# Backpressure
# --------------------------------------------------------------------------------------------

class TestBackpressure(DbTrustTestCase):
    """A client that stops reading must not make dbtrust buffer the server's output."""

    def test_stalled_client_keeps_memory_bounded(self):
        pid = W.dbtrust.proc.pid
        before = fx.resident_kib(pid)
        conninfo = fx.pg_conninfo(host="127.0.0.1", port=port_of("orders"), user=APP,
                                  dbname=DB, sslmode="disable", application_name="dbt-stall")
        # ~400 MB of COPY output into a pipe nobody reads: psql blocks on stdout, stops reading
        # its socket, and dbtrust must stop reading the server instead of queueing the rest.
        copy = ("copy (select repeat('x', 1000) from generate_series(1, 400000)) to stdout")
        proc = subprocess.Popen(["psql", conninfo, "-X", "-c", copy], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=fx.clean_env(PGPASSWORD=APP_PW))
        try:
            time.sleep(4)
            grown = fx.resident_kib(pid) - before
            self.assertIsNone(proc.poll(), "psql should still be blocked on its stdout")
            # Socket buffers hold the rest; dbtrust itself queues ~256 KiB per direction. The
            # bound leaves room for ASan's quarantine of freed write buffers (~17 MiB seen) and
            # is still far below the 400 MB an unbounded relay would hold.
            self.assertLess(grown, 64 * 1024, f"dbtrust grew by {grown} KiB for a stalled client")
            # Draining the pipe resumes the flow to the end: the relay restarts after the stall.
            total = 0
            while True:
                chunk = proc.stdout.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
            self.assertEqual(proc.wait(60), 0)
            self.assertEqual(total, 400000 * 1001)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# Command line
# --------------------------------------------------------------------------------------------

class TestUpstreamChainLog(DbTrustTestCase):
    """upstream_verified is logged once per chain a worker sees, not at every flip between
    nodes that serve one upstream name with different certificates."""

    def test_two_nodes_flipping_log_each_chain_once(self):
        bundle = W.pki.write_bundle("roots-a-b.pem", [W.pki.root, W.pki.root_b])
        cfg = fx.DbTrustConfig(bundle, workers=1, drain_timeout="1s")
        cfg.add_listener("flip", "postgres", f"localhost:{W.pg.port}")
        proc = fx.DbTrust.from_config(DBTRUST_BIN, cfg, W.tmp, name="dbtrust-flip").start()
        self.addCleanup(proc.stop)
        self.addCleanup(W.pg.set_certificate, W.pki.leaf)
        port = cfg.listeners["flip"].port
        for leaf in (W.pki.leaf, W.pki.leaf_b, W.pki.leaf, W.pki.leaf_b, W.pki.leaf):
            W.pg.set_certificate(leaf)
            out = fx.run_psql(fx.pg_conninfo(host="127.0.0.1", port=port, user=APP, dbname=DB,
                                             sslmode="disable"),
                              "select current_user", password=APP_PW)
            self.assertEqual(out.returncode, 0, out.stderr)
        lines = proc.find_lines("upstream_verified", "listener=flip")
        self.assertEqual(len(lines), 2, "\n".join(lines))
        self.assertIn("dbtrust test intermediate B", lines[1])


class TestCommandLine(DbTrustTestCase):
    """The one-listener form: --listen --upstream --protocol --bundle [--server-name]."""

    def start_cli(self, upstream, *extra):
        port = fx.free_port()
        args = ["--listen", f"127.0.0.1:{port}", "--upstream", upstream,
                "--protocol", "postgres", "--bundle", W.pki.bundle, *extra]
        proc = fx.DbTrust(DBTRUST_BIN, args, [port], W.tmp, name=f"cli-{port}").start()
        self.addCleanup(proc.stop)
        return port

    def psql_via(self, port):
        return fx.run_psql(fx.pg_conninfo(host="127.0.0.1", port=port, user=APP, dbname=DB,
                                          sslmode="prefer"),
                           "select current_user", SERVER_SAW_TLS, password=APP_PW)

    def test_upstream_by_host_name(self):
        proc = self.psql_via(self.start_cli(f"localhost:{W.pg.port}"))
        self.assertEqual((proc.returncode, proc.stdout.split()), (0, [APP, "t"]), proc.stderr)

    def test_upstream_ip_literal_matches_ip_san(self):
        proc = self.psql_via(self.start_cli(f"127.0.0.1:{W.pg.port}"))
        self.assertEqual((proc.returncode, proc.stdout.split()), (0, [APP, "t"]), proc.stderr)

    def test_server_name_is_the_verified_name(self):
        good = self.psql_via(self.start_cli(f"127.0.0.1:{W.pg.port}", "--server-name",
                                            "localhost"))
        self.assertEqual(good.returncode, 0, good.stderr)
        bad = self.psql_via(self.start_cli(f"127.0.0.1:{W.pg.port}", "--server-name",
                                           "wrong.example.org"))
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("tls_hostname_mismatch", bad.stderr)

    def test_unix_socket_listener(self):
        """listen = unix:/path serves psql's Unix-socket connections (host = directory)."""
        sock_dir = fx.make_temp_dir("pg-sock")
        port = 5999
        args = ["--listen", f"unix:{sock_dir}/.s.PGSQL.{port}", "--upstream",
                f"localhost:{W.pg.port}", "--protocol", "postgres", "--bundle", W.pki.bundle]
        proc = fx.DbTrust(DBTRUST_BIN, args, [], W.tmp, name="cli-unix").start()
        self.addCleanup(proc.stop)
        fx.wait_for(lambda: os.path.exists(f"{sock_dir}/.s.PGSQL.{port}"), timeout=5)
        out = fx.run_psql(fx.pg_conninfo(host=sock_dir, port=port, user=APP, dbname=DB,
                                         sslmode="disable"),
                          "select current_user", SERVER_SAW_TLS, password=APP_PW)
        self.assertEqual((out.returncode, out.stdout.split()), (0, [APP, "t"]), out.stderr)
        line = proc.wait_for_line("conn_end", "client=unix", "app=psql")
        # psql's Terminate makes the server close too: either side's EOF may arrive first.
        self.assertRegex(line, r"reason=(client_closed|upstream_closed) ")

    def test_refuses_to_start_without_bundle(self):
        port = fx.free_port()
        proc = subprocess.run([DBTRUST_BIN, "--listen", f"127.0.0.1:{port}", "--upstream",
                               f"localhost:{W.pg.port}", "--protocol", "postgres"],
                              capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("bundle", (proc.stderr + proc.stdout).lower())


if __name__ == "__main__":
    DBTRUST_BIN = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
