"""Hot reload of the CA bundle (issue 4, first part): the triggers, validation and the promise
that a reload never touches a live connection.

Run: /usr/bin/python3 tests/integration/test_reload.py --dbtrust build/dbtrust

One PostgreSQL server presents a chain under root A. dbtrust starts with a bundle that holds only
the rogue root, so new connections fail with tls_untrusted_chain until a reload puts root A in.
"""
import json
import os
import shutil
import signal
import sys
import time
import unittest

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

RELOAD_DEADLINE_S = 2.0  # new connections use a changed bundle within 2 s of the file change


class W:
    pass


def setUpModule():
    for key in [k for k in os.environ if k.startswith("PG")]:
        del os.environ[key]
    W.tmp = fx.make_temp_dir("test-reload")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.pg = fx.PostgresServer(W.pki.leaf, "pg-reload").start().provision_app_roles()
    W.garbage = os.path.join(W.tmp, "garbage.pem")
    with open(W.garbage, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")


def tearDownModule():
    fx.run_cleanups()


pem_of = fx.pem_of


class ReloadCase(unittest.TestCase):
    """Each test gets its own bundle directory and dbtrust (poll interval long enough that only
    the trigger under test can explain a reload)."""

    layout = "plain"  # or "configmap" (fx.BundleDirectory)
    guard = "on"      # [trust] guard: the rotation guard (its drill is in test_drill.py)

    def setUp(self):
        self.bundle_dir = fx.BundleDirectory(self.layout)
        self.bundle = self.bundle_dir.path
        self.install(pem_of(W.pki.rogue_root))
        cfg = fx.DbTrustConfig(self.bundle, workers=2, drain_timeout="1s",
                               trust_options={"reload_interval": self.reload_interval(),
                                              "guard": self.guard, **self.more_trust_options()},
                               **self.more_global_options())
        self.spec = cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}",
                                     handshake_timeout="3s")
        self.more_listeners(cfg)
        self.dbtrust = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp,
                                              name=f"dbtrust-{self.id().split('.')[-1]}").start()
        self.addCleanup(self.dbtrust.stop)

    def reload_interval(self):
        return "1h"

    def more_trust_options(self):
        return {}

    def more_global_options(self):
        return {}

    def more_listeners(self, cfg):
        pass

    # -- bundle files ------------------------------------------------------------------------

    def install(self, text):
        self.bundle_dir.install(text)

    # -- clients -----------------------------------------------------------------------------

    def connect(self, app="dbt-reload"):
        return psycopg2.connect(host="127.0.0.1", port=self.spec.port, user=fx.PG_APP_USER,
                                password=fx.PG_APP_PASSWORD, dbname=fx.PG_APP_DATABASE,
                                sslmode="disable", application_name=app, connect_timeout=5)

    def connect_error(self):
        try:
            self.connect().close()
        except psycopg2.OperationalError as exc:
            return str(exc)
        return None

    def wait_until_connects(self, deadline_s):
        start = time.monotonic()
        while time.monotonic() - start < deadline_s:
            if self.connect_error() is None:
                return time.monotonic() - start
            time.sleep(0.05)
        self.fail(f"no successful connection within {deadline_s}s; last error: "
                  f"{self.connect_error()}")


class TestRenameOver(ReloadCase):
    def test_rotation_garbage_and_live_connection(self):
        err = self.connect_error()
        self.assertIn("tls_untrusted_chain", err or "")

        # Rotation: root A added next to the old root (the combined bundle of a rotation).
        mark = self.dbtrust.mark()
        self.install(pem_of(W.pki.rogue_root, W.pki.root))
        took = self.wait_until_connects(RELOAD_DEADLINE_S)
        self.dbtrust.wait_for_line("bundle_reload", "result=ok", "trigger=watch", since=mark)
        print(f"\n  new connections verified with the new bundle after {took:.2f}s", end=" ")

        live = self.connect("dbt-live")
        cur = live.cursor()
        cur.execute("select 1")

        # A garbage bundle is refused, the previous generation stays in force.
        mark = self.dbtrust.mark()
        shutil.copy(W.garbage, self.bundle + ".tmp")
        os.rename(self.bundle + ".tmp", self.bundle)
        self.dbtrust.wait_for_line("bundle_reload", "result=refused", since=mark)
        self.assertIsNone(self.connect_error())
        cur.execute("select 2")
        self.assertEqual(cur.fetchone(), (2,))

        # A bundle without root A would break the live upstream: the rotation guard refuses it,
        # naming the upstream and the missing issuer; nothing changes for anyone.
        mark = self.dbtrust.mark()
        self.install(pem_of(W.pki.rogue_root))
        line = self.dbtrust.wait_for_line("bundle_guard", "result=refused", since=mark)
        self.assertIn(f"upstream=localhost:{W.pg.port}", line)
        self.assertIn("issuer CN=dbtrust test root A", line)
        self.dbtrust.wait_for_line("bundle_reload", "result=refused", "rotation guard",
                                   since=mark)
        self.assertIsNone(self.connect_error())
        cur.execute("select 3")
        self.assertEqual(cur.fetchone(), (3,))
        live.close()

    def test_leaf_only_bundle_is_refused(self):
        mark = self.dbtrust.mark()
        self.install(pem_of(W.pki.leaf))
        line = self.dbtrust.wait_for_line("bundle_reload", "result=refused", since=mark)
        self.assertIn("no CA certificate", line)

    def test_sighup_reloads_and_same_content_is_a_no_op(self):
        # Written in place without a rename and with the watch's event possibly coalesced:
        # SIGHUP applies it regardless.
        mark = self.dbtrust.mark()
        with open(self.bundle, "w") as f:
            f.write(pem_of(W.pki.root))
        os.kill(self.dbtrust.proc.pid, signal.SIGHUP)
        self.wait_until_connects(RELOAD_DEADLINE_S)
        n_ok = len(self.dbtrust.find_lines("bundle_reload", "result=ok", since=mark))
        self.assertGreaterEqual(n_ok, 1)
        os.kill(self.dbtrust.proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        self.assertEqual(len(self.dbtrust.find_lines("bundle_reload", "result=ok", since=mark)),
                         n_ok, "an unchanged bundle must not be reloaded again")


class TestInPlaceRewrite(ReloadCase):
    def test_in_place_write_is_seen_by_the_watch(self):
        mark = self.dbtrust.mark()
        with open(self.bundle, "w") as f:  # truncate and write the same inode
            f.write(pem_of(W.pki.root))
        took = self.wait_until_connects(RELOAD_DEADLINE_S)
        line = self.dbtrust.wait_for_line("bundle_reload", "result=ok", since=mark)
        self.assertIn("trigger=watch", line)
        print(f"\n  in-place rewrite applied after {took:.2f}s", end=" ")


class TestGuardOff(ReloadCase):
    """guard = off applies any valid bundle, even one that breaks new connections; a live
    session is not touched by it."""

    guard = "off"

    def test_bundle_without_the_live_root_is_applied(self):
        self.install(pem_of(W.pki.rogue_root, W.pki.root))
        self.wait_until_connects(RELOAD_DEADLINE_S)
        live = self.connect("dbt-live")
        cur = live.cursor()
        mark = self.dbtrust.mark()
        self.install(pem_of(W.pki.rogue_root))
        self.dbtrust.wait_for_line("bundle_reload", "result=ok", since=mark)
        self.assertEqual(self.dbtrust.find_lines("bundle_guard", since=mark), [])
        self.assertIn("tls_untrusted_chain", self.connect_error() or "")
        cur.execute("select 3")
        self.assertEqual(cur.fetchone(), (3,))
        live.close()


class TestConfigMapSwap(ReloadCase):
    layout = "configmap"

    def test_symlink_swap_is_seen(self):
        self.assertIn("tls_untrusted_chain", self.connect_error() or "")
        mark = self.dbtrust.mark()
        self.install(pem_of(W.pki.root))
        took = self.wait_until_connects(RELOAD_DEADLINE_S)
        self.dbtrust.wait_for_line("bundle_reload", "result=ok", since=mark)
        print(f"\n  ConfigMap ..data swap applied after {took:.2f}s", end=" ")


class TestPollFallback(ReloadCase):
    """Where the directory watch sees nothing (network filesystems; here a rewrite through mmap,
    which inotify does not report) the content-hash poll still applies the change."""

    def reload_interval(self):
        return "500ms"

    def test_poll_alone_applies_a_change(self):
        self.install(pem_of(W.pki.rogue_root, W.pki.root))
        self.wait_until_connects(RELOAD_DEADLINE_S)
        mark = self.dbtrust.mark()
        self.bundle_dir.rewrite_by_mmap(pem_of(W.pki.root, W.pki.rogue_root))  # same length
        line = self.dbtrust.wait_for_line("bundle_reload", "result=ok", since=mark,
                                          timeout=RELOAD_DEADLINE_S)
        self.assertIn("trigger=poll", line)
        self.assertEqual(self.dbtrust.find_lines("trigger=watch", since=mark), [])


def admin_request(port, path, method="POST"):
    """(status, body text) of one request to dbtrust's admin endpoint."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def log_level(line):
    """The level word of a text log line ("TIMESTAMP LEVEL event k=v...")."""
    return line.split()[1]


class TestForcedReload(ReloadCase):
    """The rotation guard's override (POST /reload?force=1, SIGUSR2): removing a compromised CA
    is exactly the change the guard refuses while an upstream still chains to it, and an
    attacker holding a certificate from that CA can keep it refused by serving it to the
    probes. A forced reload applies a valid bundle without the guard, loudly; new connections
    to an upstream still on the removed CA then fail closed, live sessions are untouched."""

    def more_global_options(self):
        self.admin_port = fx.free_port()
        return {"admin": f"127.0.0.1:{self.admin_port}"}

    def setUp(self):
        super().setUp()
        fx.wait_for(lambda: fx.tcp_accepts("127.0.0.1", self.admin_port), 5,
                    what="admin endpoint")

    def overridden_total(self):
        samples = fx.scrape_metrics(self.admin_port)
        return fx.metric_value(samples, "dbtrust_bundle_reloads_total", result="overridden")

    def ok_total(self):
        samples = fx.scrape_metrics(self.admin_port)
        return fx.metric_value(samples, "dbtrust_bundle_reloads_total", result="ok")

    def bundle_in_force(self):
        status, body = admin_request(self.admin_port, "/bundle", method="GET")
        self.assertEqual(status, 200, body)
        (entry,) = json.loads(body)["bundles"]
        return entry

    def refused_by_the_guard(self):
        """Root A (the live upstream's CA) in force with a session open on it, then a bundle
        without root A, which the guard refuses. Returns the live session's cursor."""
        self.install(pem_of(W.pki.rogue_root, W.pki.root))
        self.wait_until_connects(RELOAD_DEADLINE_S)
        live = self.connect("dbt-live")
        self.addCleanup(live.close)
        cur = live.cursor()
        cur.execute("select 1")
        mark = self.dbtrust.mark()
        self.install(pem_of(W.pki.rogue_root))
        self.dbtrust.wait_for_line("bundle_reload", "result=refused", "rotation guard",
                                   since=mark)
        self.assertIsNone(self.connect_error())
        self.assertEqual(self.overridden_total(), 0)
        return cur

    def assert_overridden(self, trigger, since, cur, ok_before):
        line = self.dbtrust.wait_for_line("bundle_reload", "result=applied", "guard=overridden",
                                          since=since)
        fields = fx.parse_logfmt(line)
        self.assertEqual(log_level(line), "error", line)
        self.assertEqual(fields["trigger"], trigger)
        self.assertEqual(fields["certificates"], "1")
        # The detail names what the guard had refused: the upstream still on the removed CA.
        self.assertIn(f"upstream localhost:{W.pg.port} of listener orders", fields["detail"])
        self.assertEqual(self.overridden_total(), 1)
        self.assertEqual(self.ok_total(), ok_before, "an override is not counted as ok")
        entry = self.bundle_in_force()
        self.assertEqual(entry["sha256"], fields["sha256"])
        self.assertEqual([c["sha256"] for c in entry["certificates"]],
                         [fx.cert_sha256(W.pki.rogue_root)])
        # Fail closed toward the upstream still on the removed CA; the live session goes on.
        fx.wait_for(lambda: "tls_untrusted_chain" in (self.connect_error() or ""),
                    RELOAD_DEADLINE_S, what="new connections refused")
        cur.execute("select 4")
        self.assertEqual(cur.fetchone(), (4,))

    def test_post_reload_force_applies_what_the_guard_refused(self):
        cur = self.refused_by_the_guard()
        ok_before = self.ok_total()
        mark = self.dbtrust.mark()
        status, body = admin_request(self.admin_port, "/reload?force=1")
        self.assertEqual(status, 202, body)
        answer = json.loads(body)
        self.assertEqual(answer["status"], "forced reload requested")
        self.assertEqual(answer["guard"], "overridden")
        self.assertIn("guard=overridden", answer["result"])
        self.assertIn('result="overridden"', answer["result"])
        self.assert_overridden("admin_force", mark, cur, ok_before)
        self.assertEqual(self.dbtrust.find_lines("bundle_guard", since=mark), [],
                         "a forced reload runs no guard probes")

        # Forcing again with the same content changes nothing and says so.
        mark = self.dbtrust.mark()
        status, _ = admin_request(self.admin_port, "/reload?force=true")
        self.assertEqual(status, 202)
        line = self.dbtrust.wait_for_line("bundle_reload", "result=unchanged", since=mark)
        self.assertIn("nothing to override", line)
        self.assertEqual(self.overridden_total(), 1)

    def test_sigusr2_applies_what_the_guard_refused(self):
        cur = self.refused_by_the_guard()
        ok_before = self.ok_total()
        mark = self.dbtrust.mark()
        os.kill(self.dbtrust.proc.pid, signal.SIGUSR2)
        self.assert_overridden("sigusr2", mark, cur, ok_before)

    def test_force_still_refuses_an_invalid_bundle(self):
        self.install(pem_of(W.pki.rogue_root, W.pki.root))
        self.wait_until_connects(RELOAD_DEADLINE_S)
        in_force = self.bundle_in_force()["sha256"]
        mark = self.dbtrust.mark()
        shutil.copy(W.garbage, self.bundle + ".tmp")
        os.rename(self.bundle + ".tmp", self.bundle)
        self.dbtrust.wait_for_line("bundle_reload", "result=refused", "trigger=watch", since=mark)
        for force in ("admin", "sigusr2"):
            mark = self.dbtrust.mark()
            if force == "admin":
                self.assertEqual(admin_request(self.admin_port, "/reload?force=1")[0], 202)
            else:
                os.kill(self.dbtrust.proc.pid, signal.SIGUSR2)
            trigger = "admin_force" if force == "admin" else "sigusr2"
            line = self.dbtrust.wait_for_line("bundle_reload", "result=refused",
                                              f"trigger={trigger}", since=mark)
            self.assertEqual(log_level(line), "error", line)
            self.assertEqual(fx.parse_logfmt(line)["kept_sha256"], in_force)
        self.assertEqual(self.dbtrust.find_lines("result=applied", since=0), [])
        self.assertEqual(self.overridden_total(), 0)
        self.assertEqual(self.bundle_in_force()["sha256"], in_force)
        self.assertIsNone(self.connect_error())

    def test_force_values(self):
        """force=1|true overrides; 0|false is an ordinary reload; anything else is refused with
        400 and requests nothing (a typo must neither override nor silently not)."""
        self.install(pem_of(W.pki.rogue_root, W.pki.root))
        self.wait_until_connects(RELOAD_DEADLINE_S)
        self.install(pem_of(W.pki.rogue_root))  # refused by the guard
        self.dbtrust.wait_for_line("bundle_reload", "result=refused", "rotation guard")
        mark = self.dbtrust.mark()
        for query in ("?force=yes", "?force=", "?force", "?force=2"):
            status, body = admin_request(self.admin_port, "/reload" + query)
            self.assertEqual(status, 400, query)
            self.assertIn("force must be 1 or true", body)
        status, body = admin_request(self.admin_port, "/reload?force=0")
        self.assertEqual(status, 202)
        self.assertEqual(json.loads(body)["status"], "reload requested")
        # The ordinary reload runs the guard again, which refuses again.
        self.dbtrust.wait_for_line("bundle_reload", "result=refused", "trigger=admin",
                                   since=mark)
        self.assertEqual(self.dbtrust.find_lines("result=applied", since=mark), [])
        self.assertEqual(self.overridden_total(), 0)
        self.assertIsNone(self.connect_error())


class TestForceCancelsGuardRun(ReloadCase):
    """A guard run held up by an upstream that never answers (an attacker can stall the probes
    too) does not hold up a forced reload: the run is cancelled and never reports."""

    def more_listeners(self, cfg):
        stalled = fx.ScriptedUpstream(fx.script_silent, "stalled").start()
        cfg.add_listener("stalled", "postgres", f"127.0.0.1:{stalled.port}",
                         server_name="localhost", handshake_timeout="20s")

    def test_force_during_a_guard_run(self):
        mark = self.dbtrust.mark()
        self.install(pem_of(W.pki.rogue_root, W.pki.root))
        time.sleep(1)  # the run is waiting for the stalled upstream's answer (20 s)
        self.assertEqual(self.dbtrust.find_lines("bundle_reload", since=mark), [])
        os.kill(self.dbtrust.proc.pid, signal.SIGUSR2)
        line = self.dbtrust.wait_for_line("bundle_reload", "result=applied", "guard=overridden",
                                          since=mark, timeout=2)
        self.assertIn("the rotation guard has not checked this bundle", line)
        self.wait_until_connects(RELOAD_DEADLINE_S)
        time.sleep(0.5)
        self.assertEqual(self.dbtrust.find_lines("bundle_guard", since=mark), [])
        self.assertEqual(len(self.dbtrust.find_lines("bundle_reload", since=mark)), 1)


class TestGuardWithPins(ReloadCase):
    """[trust] pin: a bundle under which a live upstream's chain still verifies, but on a path
    without any pinned key, would make every new connection fail the pin check. The guard
    refuses it like a chain that does not verify (it used to count it as "unreachable")."""

    def more_trust_options(self):
        return {"pin": f"sha256/{fx.spki_pin(W.pki.root)}"}

    def test_bundle_moving_the_path_off_the_pinned_key_is_refused(self):
        # Pinned to root A's key. The new bundle holds root B and intermediate A cross-signed
        # by root B: the served chain (leaf + intermediate A) now verifies to root B, and root
        # A's key is no longer on the path.
        cross = W.pki.cross_sign("inter-a-by-root-b", W.pki.intermediate, W.pki.root_b)
        self.install(pem_of(W.pki.root))
        self.wait_until_connects(RELOAD_DEADLINE_S)
        mark = self.dbtrust.mark()
        self.install(pem_of(W.pki.root_b, cross))
        line = self.dbtrust.wait_for_line("bundle_guard", "result=refused", since=mark)
        fields = fx.parse_logfmt(line)
        self.assertEqual(log_level(line), "error", line)
        self.assertEqual(fields["reason"], "tls_pin_mismatch")
        self.assertEqual(fields["pin"], f"sha256/{fx.spki_pin(W.pki.root)}")
        self.assertIn(f"leaf: sha256/{fx.spki_pin(W.pki.leaf)}", fields["detail"])
        line = self.dbtrust.wait_for_line("bundle_reload", "result=refused", "rotation guard",
                                          since=mark)
        self.assertIn("tls_pin_mismatch", line)
        self.assertEqual(self.dbtrust.find_lines("bundle_reload", "result=ok", since=mark), [])
        self.assertIsNone(self.connect_error())

        # What the guard prevented: forced in, the bundle fails every new connection's pin.
        mark = self.dbtrust.mark()
        os.kill(self.dbtrust.proc.pid, signal.SIGUSR2)
        self.dbtrust.wait_for_line("bundle_reload", "result=applied", "guard=overridden",
                                   since=mark)
        fx.wait_for(lambda: "tls_pin_mismatch" in (self.connect_error() or ""),
                    RELOAD_DEADLINE_S, what="new connections fail the pin check")


class TestPerListenerBundle(unittest.TestCase):
    """bundle = in a listener section overrides [trust] bundle: each listener trusts its own
    file, reloads of one never touch the other, and the guard checks only its own upstreams."""

    def test_override_and_independent_reload(self):
        shared, own = fx.BundleDirectory(), fx.BundleDirectory()
        shared.install(pem_of(W.pki.rogue_root))
        own.install(pem_of(W.pki.root))
        cfg = fx.DbTrustConfig(shared.path, workers=2, drain_timeout="1s")
        orders = cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        billing = cfg.add_listener("billing", "postgres", f"localhost:{W.pg.port}",
                                   bundle=own.path)
        dbtrust = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp,
                                         name="dbtrust-per-listener").start()
        self.addCleanup(dbtrust.stop)

        def error(spec):
            try:
                psycopg2.connect(host="127.0.0.1", port=spec.port, user=fx.PG_APP_USER,
                                 password=fx.PG_APP_PASSWORD, dbname=fx.PG_APP_DATABASE,
                                 sslmode="disable", connect_timeout=5).close()
            except psycopg2.OperationalError as exc:
                return str(exc)
            return None

        self.assertIn("tls_untrusted_chain", error(orders) or "")
        self.assertIsNone(error(billing))
        # billing's file changes: only billing's listener is probed and reloaded.
        mark = dbtrust.mark()
        own.install(pem_of(W.pki.root, W.pki.rogue_root))
        line = dbtrust.wait_for_line("bundle_reload", "result=ok", since=mark)
        self.assertIn(own.path, line)
        guard = dbtrust.find_lines("bundle_guard", since=mark)
        self.assertEqual(len(guard), 1, guard)
        self.assertIn("listener=billing", guard[0])
        self.assertIn("tls_untrusted_chain", error(orders) or "")
        self.assertIsNone(error(billing))
        # The shared file gains root A: orders now connects too.
        mark = dbtrust.mark()
        shared.install(pem_of(W.pki.root))
        line = dbtrust.wait_for_line("bundle_reload", "result=ok", since=mark)
        self.assertIn(shared.path, line)
        fx.wait_for(lambda: error(orders) is None, RELOAD_DEADLINE_S, what="orders connects")


class TestReloadChurn(ReloadCase):
    """1000 reloads while connections open and close: nothing leaks (LSan in the ASan build
    checks every byte at exit; here resident memory must stay flat) and no client fails."""

    RELOADS = 1000

    def test_thousand_reloads_under_connection_churn(self):
        import threading
        good = pem_of(W.pki.rogue_root, W.pki.root)
        alt = pem_of(W.pki.root, W.pki.rogue_root)  # same trust, other bytes: a real reload
        self.install(good)
        self.wait_until_connects(RELOAD_DEADLINE_S)
        pid = self.dbtrust.proc.pid
        stop = threading.Event()
        failures, sessions = [], [0]

        def churn():
            while not stop.is_set():
                try:
                    conn = self.connect("dbt-churn")
                    conn.cursor().execute("select 1")
                    conn.close()
                    sessions[0] += 1
                except Exception as exc:  # noqa: BLE001 - every failure is reported
                    failures.append(str(exc))

        workers = [threading.Thread(target=churn) for _ in range(4)]
        for t in workers:
            t.start()
        time.sleep(1)
        before = fx.resident_kib(pid)
        mark = self.dbtrust.mark()
        try:
            for i in range(self.RELOADS):
                self.install(alt if i % 2 == 0 else good)
                os.kill(pid, signal.SIGHUP)
                fx.wait_for(lambda: len(self.dbtrust.find_lines(
                    "bundle_reload", "result=ok", since=mark)) >= i + 1, timeout=5, interval=0.003,
                    what=f"reload {i + 1}")
        finally:
            stop.set()
            for t in workers:
                t.join()
        after = fx.resident_kib(pid)
        print(f"\n  {self.RELOADS} reloads, {sessions[0]} sessions: resident {before} KiB -> "
              f"{after} KiB ({after - before:+d} KiB)", end=" ")
        self.assertEqual(failures, [])
        self.assertGreater(sessions[0], 100)
        # The ASan build keeps freed memory in quarantine; its leak check runs at exit instead.
        if "asan" not in sys.argv_dbtrust:
            self.assertLess(after - before, 8 * 1024, "resident memory grew across reloads")


if __name__ == "__main__":
    sys.argv_dbtrust = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
