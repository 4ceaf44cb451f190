"""The rotation drill (issue 4): what a platform team runs before a provider rotates its CA.

Run: /usr/bin/python3 tests/integration/test_drill.py --dbtrust build/dbtrust

Real PostgreSQL 15 and MariaDB 10.11 present root A -> intermediate A -> leaf. One dbtrust
fronts both, trusting a bundle in a Kubernetes ConfigMap-style directory (..data symlink swap),
with the rotation guard on (the default). The phases run in order, each from the state the
previous one left:

  a. rotation under load: persistent clients (psycopg2, PyMySQL, sysbench oltp_read_write) and
     connect-per-transaction clients (pgbench -C, a sysbench script that connects per event) run
     while the bundle becomes A+B, both servers switch to root B -> intermediate B -> leaf B,
     and the bundle becomes B only. Zero failed transactions, zero failed connections, and the
     persistent sessions are the same sessions at the end.
  b. a garbage, an empty and an unreadable bundle are refused (the refusal counter rises by one
     each); service continues.
  c. the guard refuses a bundle without the live chain's root (A only while the servers serve B)
     and names each upstream and the missing issuer; service continues.
  d. the late case: the servers rotate (back to chain A) before the bundle is updated; new
     connections fail with tls_untrusted_chain; the bundle update restores them, same process.
"""
import os
import re
import subprocess
import sys
import threading
import time
import types
import unittest

import psycopg2
import pymysql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

LOAD_SECONDS = 24          # phase (a) timeline: A+B at 4 s, servers to B at 8 s, B only at 14 s
RELOAD_DEADLINE_S = 2.0    # a changed bundle is in force within 2 s of the file change
W = types.SimpleNamespace()

# sysbench's connect-per-transaction client: a new MySQL connection for every event.
CONNECT_PER_EVENT_LUA = """
function thread_init()
  drv = sysbench.sql.driver()
end
function event()
  local con = drv:connect()
  con:query("SELECT 1")
  con:disconnect()
end
"""
# pgbench -C: each transaction on a new connection.
PGBENCH_SCRIPT = "\\set n random(1, 1000)\nBEGIN;\nSELECT :n * 2;\nCOMMIT;\n"


def setUpModule():
    for key in [k for k in os.environ if k.startswith(("PG", "MYSQL", "MARIADB"))]:
        del os.environ[key]
    W.tmp = fx.make_temp_dir("test-drill")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.pg = fx.PostgresServer(W.pki.leaf, "pg-drill").start().provision_app_roles()
    W.maria = fx.MariadbServer(W.pki.leaf, "maria-drill").start().provision_app_users()
    W.bundle = fx.BundleDirectory("configmap")
    W.bundle.install(fx.pem_of(W.pki.root))
    cfg = fx.DbTrustConfig(W.bundle.path, workers=2, drain_timeout="1s",
                           trust_options={"reload_interval": "10s"})  # guard = on by default
    W.pg_spec = cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
    W.my_spec = cfg.add_listener("shop", "mysql", f"localhost:{W.maria.port}")
    W.dbtrust = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp, name="dbtrust-drill").start()
    fx.register_cleanup(W.dbtrust.stop)
    W.pid = W.dbtrust.proc.pid


def tearDownModule():
    fx.run_cleanups()


# -- clients -----------------------------------------------------------------------------------

def pg_connect(app="drill"):
    return psycopg2.connect(host="127.0.0.1", port=W.pg_spec.port, user=fx.PG_APP_USER,
                            password=fx.PG_APP_PASSWORD, dbname=fx.PG_APP_DATABASE,
                            sslmode="disable", application_name=app, connect_timeout=5)


def my_connect(program="drill"):
    return pymysql.connect(host="127.0.0.1", port=W.my_spec.port, user=fx.MY_NATIVE_USER,
                           password=fx.MY_NATIVE_PASSWORD, database=fx.MY_APP_DATABASE,
                           ssl_disabled=True, connect_timeout=5, read_timeout=30,
                           autocommit=True, program_name=program)


def pg_new_connection_error():
    try:
        with pg_connect("drill-probe") as conn:
            conn.cursor().execute("select 1")
        conn.close()
    except psycopg2.Error as exc:
        return str(exc)
    return None


def my_new_connection_error():
    try:
        conn = my_connect("drill-probe")
        with conn.cursor() as cur:
            cur.execute("select 1")
        conn.close()
    except pymysql.Error as exc:
        return str(exc)
    return None


def both_serve():
    return pg_new_connection_error() is None and my_new_connection_error() is None


class PersistentClient(threading.Thread):
    """One session kept open for the whole drill, querying in a loop: it must never fail and
    must stay the same server session (backend pid / connection id)."""

    def __init__(self, kind):
        super().__init__(daemon=True)
        self.kind = kind
        self.conn = pg_connect("drill-persistent") if kind == "pg" else my_connect("drill-persistent")
        self.session_id = self.session()
        self.stop_event = threading.Event()
        self.queries = 0
        self.errors = []

    def session(self):
        sql = "select pg_backend_pid()" if self.kind == "pg" else "select connection_id()"
        cur = self.conn.cursor()
        cur.execute(sql)
        return cur.fetchone()[0]

    def run(self):
        while not self.stop_event.is_set():
            try:
                if self.session() != self.session_id:
                    self.errors.append("the session changed under the client")
                self.queries += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                self.errors.append(str(exc))
                return
            time.sleep(0.01)

    def finish(self):
        self.stop_event.set()
        self.join(10)
        self.conn.close()


def pgbench(seconds, workdir):
    script = os.path.join(workdir, "drill.pgbench")
    with open(script, "w") as f:
        f.write(PGBENCH_SCRIPT)
    cmd = ["pgbench", "-n", "-C", "-c", "4", "-j", "2", "-T", str(seconds), "-f", script,
           "-h", "127.0.0.1", "-p", str(W.pg_spec.port), "-U", fx.PG_APP_USER,
           fx.PG_APP_DATABASE]
    env = fx.clean_env(PGPASSWORD=fx.PG_APP_PASSWORD, PGSSLMODE="disable")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def sysbench_args():
    return ["--db-driver=mysql", "--mysql-host=127.0.0.1", f"--mysql-port={W.my_spec.port}",
            f"--mysql-user={fx.MY_NATIVE_USER}", f"--mysql-password={fx.MY_NATIVE_PASSWORD}",
            f"--mysql-db={fx.MY_APP_DATABASE}", "--mysql-ssl=off"]


def sysbench(test, step, seconds, workdir, threads):
    cmd = ["sysbench", test] + sysbench_args() + [
        "--tables=2", "--table-size=1000", f"--threads={threads}", f"--time={seconds}",
        "--rand-type=uniform", step]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=workdir, env=fx.clean_env())


def finish(proc, what):
    out, _ = proc.communicate(timeout=LOAD_SECONDS + 60)
    return types.SimpleNamespace(rc=proc.returncode, out=out, what=what)


def number(pattern, text, what):
    m = re.search(pattern, text)
    if not m:
        raise AssertionError(f"{what}: no match for {pattern!r} in:\n{text}")
    return int(m.group(1))


# -- the drill ---------------------------------------------------------------------------------

class TestRotationDrill(unittest.TestCase):
    """Phases a-d in order (unittest sorts by name)."""

    def install_and_wait(self, text, *expect):
        """Swap the ConfigMap to text; wait for the bundle_reload line carrying expect."""
        mark = W.dbtrust.mark()
        start = time.monotonic()
        W.bundle.install(text)
        line = W.dbtrust.wait_for_line("bundle_reload", *expect, since=mark,
                                       timeout=RELOAD_DEADLINE_S + 3)
        return line, time.monotonic() - start, mark

    def test_a_rotation_under_load(self):
        workdir = fx.make_temp_dir("drill-load")
        prep = sysbench("oltp_read_write", "prepare", 10, workdir, 1)
        prepared = finish(prep, "sysbench prepare")
        self.assertEqual(prepared.rc, 0, prepared.out)
        lua = os.path.join(workdir, "connect_per_event.lua")
        with open(lua, "w") as f:
            f.write(CONNECT_PER_EVENT_LUA)

        persistent = [PersistentClient("pg"), PersistentClient("pg"), PersistentClient("my"),
                      PersistentClient("my")]
        for client in persistent:
            client.start()
        loads = [
            (pgbench(LOAD_SECONDS, workdir), "pgbench -C"),
            (sysbench(lua, "run", LOAD_SECONDS, workdir, 2), "sysbench connect-per-event"),
            (sysbench("oltp_read_write", "run", LOAD_SECONDS, workdir, 2),
             "sysbench oltp_read_write"),
        ]
        t0 = time.monotonic()

        def at(second):
            time.sleep(max(0.0, t0 + second - time.monotonic()))

        at(4)  # step 1: the combined bundle (old + new root)
        line, took, _ = self.install_and_wait(fx.pem_of(W.pki.root, W.pki.root_b), "result=ok",
                                              "trigger=watch")
        self.assertIn("certificates=2", line)
        at(8)  # step 2: the provider rotates both servers to the new chain
        mark = W.dbtrust.mark()
        W.pg.set_certificate(W.pki.leaf_b)
        W.maria.set_certificate(W.pki.leaf_b)
        for listener in ("orders", "shop"):
            W.dbtrust.wait_for_line("upstream_verified", f"listener={listener}",
                                    "dbtrust test intermediate B", since=mark)
        at(14)  # step 3: the old root leaves the bundle; the guard sees it is no longer needed
        line, _, mark = self.install_and_wait(fx.pem_of(W.pki.root_b), "result=ok")
        self.assertEqual(len(W.dbtrust.find_lines("bundle_guard", "result=verified",
                                                  since=mark)), 2)

        results = [finish(proc, what) for proc, what in loads]
        for client in persistent:
            client.finish()

        pgb, per_event, oltp = results
        for r in results:
            self.assertEqual(r.rc, 0, f"{r.what} failed:\n{r.out}")
            self.assertNotIn("FATAL", r.out, r.what)
        pg_txns = number(r"number of transactions actually processed: (\d+)", pgb.out, pgb.what)
        pg_failed = number(r"number of failed transactions: (\d+)", pgb.out, pgb.what)
        self.assertEqual(pg_failed, 0, pgb.out)
        self.assertNotIn("aborted", pgb.out)
        ev_events = number(r"total number of events:\s+(\d+)", per_event.out, per_event.what)
        oltp_txns = number(r"transactions:\s+(\d+)", oltp.out, oltp.what)
        for r in (per_event, oltp):
            self.assertEqual(number(r"ignored errors:\s+(\d+)", r.out, r.what), 0, r.out)
            self.assertEqual(number(r"reconnects:\s+(\d+)", r.out, r.what), 0, r.out)
        self.assertGreater(pg_txns, 100)
        self.assertGreater(ev_events, 100)
        self.assertGreater(oltp_txns, 10)
        for client in persistent:
            self.assertEqual(client.errors, [], client.kind)
            self.assertGreater(client.queries, 100)
        # The servers now serve chain B, and dbtrust verifies it with the B-only bundle.
        self.assertTrue(both_serve())
        self.assertEqual(W.dbtrust.proc.pid, W.pid)
        print(f"\n  rotation under load: pgbench -C {pg_txns} txns (0 failed), sysbench "
              f"connect-per-event {ev_events} connections, oltp_read_write {oltp_txns} txns, "
              f"{sum(c.queries for c in persistent)} queries on 4 persistent sessions; "
              f"bundle applied {took:.2f}s after the swap", end=" ")

    def test_b_garbage_bundle_is_refused(self):
        live = PersistentClient("pg")
        line, _, _ = self.install_and_wait(
            "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
            "result=refused")
        self.assertIn("trigger=watch", line)
        refused_before = number(r"refused_total=(\d+)", line, "refusal counter")
        line, _, _ = self.install_and_wait("", "result=refused")  # an empty bundle
        self.assertEqual(number(r"refused_total=(\d+)", line, "refusal counter"),
                         refused_before + 1)
        mark = W.dbtrust.mark()
        W.bundle.install_missing()  # bundle.pem now a dangling symlink: unreadable
        line = W.dbtrust.wait_for_line("bundle_reload", "result=refused", since=mark)
        self.assertEqual(number(r"refused_total=(\d+)", line, "refusal counter"),
                         refused_before + 2)
        self.assertIsNone(pg_new_connection_error())
        self.assertIsNone(my_new_connection_error())
        self.assertEqual(live.session(), live.session_id)
        live.conn.close()

    def test_c_guard_refuses_bundle_without_live_root(self):
        # The servers serve chain B; a bundle with root A only would break both upstreams.
        line, _, mark = self.install_and_wait(fx.pem_of(W.pki.root), "result=refused",
                                              "rotation guard")
        refusals = W.dbtrust.find_lines("bundle_guard", "result=refused", since=mark)
        self.assertEqual(len(refusals), 2, refusals)
        for upstream in (f"upstream=localhost:{W.pg.port}", f"upstream=localhost:{W.maria.port}"):
            found = [r for r in refusals if upstream in r]
            self.assertEqual(len(found), 1, (upstream, refusals))
            self.assertIn("reason=tls_untrusted_chain", found[0])
            self.assertIn("issuer CN=dbtrust test root B", found[0])
        self.assertTrue(both_serve())
        # Put the bundle in force back on disk: same content, a no-op.
        mark = W.dbtrust.mark()
        W.bundle.install(fx.pem_of(W.pki.root_b))
        time.sleep(0.5)
        self.assertEqual(W.dbtrust.find_lines("bundle_reload", since=mark), [])

    def test_d_late_bundle_update_restores_service(self):
        # The next rotation (back to chain A) reaches the servers before the bundle.
        W.pg.set_certificate(W.pki.leaf)
        W.maria.set_certificate(W.pki.leaf)
        pg_err, my_err = pg_new_connection_error(), my_new_connection_error()
        self.assertIn("tls_untrusted_chain", pg_err or "")
        self.assertIn("tls_untrusted_chain", my_err or "")
        line, took, mark = self.install_and_wait(fx.pem_of(W.pki.root_b, W.pki.root),
                                                 "result=ok")
        fx.wait_for(both_serve, RELOAD_DEADLINE_S, what="both listeners serving again")
        self.assertEqual(W.dbtrust.proc.pid, W.pid, "restored without a restart")
        self.assertEqual(W.dbtrust.find_lines("bundle_guard", "result=refused", since=mark), [])
        print(f"\n  late bundle update: service restored {took:.2f}s after the swap", end=" ")


if __name__ == "__main__":
    sys.argv_dbtrust = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
