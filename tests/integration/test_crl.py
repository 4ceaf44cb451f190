"""Certificate revocation lists (issue 17): CRLs next to the bundle, reloaded like it, checked on
every element of the upstream's chain, against real PostgreSQL and MariaDB servers.

Run: /usr/bin/python3 tests/integration/test_crl.py --dbtrust build/dbtrust

Both servers present leaf <- intermediate A <- root A. The bundle holds root A and intermediate
A (a CRL of intermediate A is verified with its key, so it belongs to the trust material). The
CRLs live in a directory of their own, written like a Kubernetes ConfigMap volume (a "..data"
symlink swap per update) and given to dbtrust as [trust] crl. The rotation guard is off except
where a test is about it: revoking the certificate a live upstream presents is exactly what the
guard refuses until forced.
"""
import datetime
import json
import os
import signal
import sys
import time
import unittest

import psycopg2
import pymysql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

RELOAD_DEADLINE_S = 3.0


class W:
    pass


def setUpModule():
    for key in [k for k in os.environ if k.startswith("PG")]:
        del os.environ[key]
    W.tmp = fx.make_temp_dir("test-crl")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.pg = fx.PostgresServer(W.pki.leaf, "pg-crl").start().provision_app_roles()
    W.maria = fx.MariadbServer(W.pki.leaf, "maria-crl").start().provision_app_users()
    # A second leaf under intermediate A: where a server moves after its leaf was revoked.
    W.fresh_leaf = W.pki.make_leaf("leaf-fresh", "localhost", fx.LOCALHOST_SAN,
                                   W.pki.intermediate)
    W.bundle = W.pki.write_bundle("bundle-with-inter.pem", [W.pki.root, W.pki.intermediate])
    W.empty_inter_crl = W.pki.make_crl("inter-empty.crl", W.pki.intermediate)
    W.leaf_revoked_crl = W.pki.make_crl("inter-revokes-leaf.crl", W.pki.intermediate,
                                        revoked=[W.pki.leaf], number=2)
    W.inter_revoked_crl = W.pki.make_crl("root-revokes-inter.crl", W.pki.root,
                                         revoked=[W.pki.intermediate], reason="ca_compromise")
    W.forged_crl = W.pki.make_crl("forged.crl", W.pki.intermediate, revoked=[W.fresh_leaf],
                                  number=3, signer=W.pki.rogue_root)


def tearDownModule():
    fx.run_cleanups()


def read(path):
    with open(path) as f:
        return f.read()


class CrlCase(unittest.TestCase):
    guard = "off"
    crl_layout = "configmap"

    def setUp(self):
        self.crl_dir = fx.BundleDirectory(self.crl_layout)
        self.crl_dir.install(read(W.empty_inter_crl))
        self.admin_port = fx.free_port()
        cfg = fx.DbTrustConfig(W.bundle, workers=2, drain_timeout="1s",
                               admin=f"127.0.0.1:{self.admin_port}",
                               trust_options={"reload_interval": "1h", "guard": self.guard,
                                              "crl": self.crl_path(), **self.trust_options()})
        self.pg_spec = cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}",
                                        handshake_timeout="3s")
        self.my_spec = cfg.add_listener("shop", "mysql", f"localhost:{W.maria.port}",
                                        handshake_timeout="3s")
        name = "-".join(self.id().split(".")[-2:])
        self.dbtrust = fx.DbTrust.from_config(sys.argv_dbtrust, cfg, W.tmp,
                                              name=f"dbtrust-{name}").start()
        self.addCleanup(self.dbtrust.stop)
        # The listeners accept before the watches start: "ready" comes after both.
        self.dbtrust.wait_for_line(" ready: ")

    def crl_path(self):
        return self.crl_dir.dir

    def trust_options(self):
        return {}

    # -- helpers -----------------------------------------------------------------------------

    def pg_connect(self, app="dbt-crl"):
        return psycopg2.connect(host="127.0.0.1", port=self.pg_spec.port, user=fx.PG_APP_USER,
                                password=fx.PG_APP_PASSWORD, dbname=fx.PG_APP_DATABASE,
                                sslmode="disable", application_name=app, connect_timeout=5)

    def pg_error(self):
        try:
            self.pg_connect().close()
        except psycopg2.OperationalError as exc:
            return str(exc)
        return None

    def my_error(self):
        res = fx.my_raw_login("127.0.0.1", self.my_spec.port, fx.MY_NATIVE_USER,
                              fx.MY_NATIVE_PASSWORD, fx.MY_APP_DATABASE)
        return res.error.message if res.error else None

    def install_crl(self, path):
        """A CRL update: the ConfigMap's ..data swap; waits for the reload it triggers."""
        mark = self.dbtrust.mark()
        self.crl_dir.install(read(path))
        return self.dbtrust.wait_for_line("bundle_reload", since=mark, timeout=RELOAD_DEADLINE_S)

    def serve(self, cert):
        """Both servers present cert from now on; restored to the usual leaf after the test."""
        self.addCleanup(W.maria.set_certificate, W.pki.leaf)
        self.addCleanup(W.pg.set_certificate, W.pki.leaf)
        W.pg.set_certificate(cert)
        W.maria.set_certificate(cert)

    def assert_revoked_everywhere(self, serial, depth, reason_text):
        pg = self.pg_error() or ""
        self.assertIn("(tls_cert_revoked)", pg)
        self.assertIn(f"serial {serial}", pg)
        self.assertIn(f"depth {depth}", pg)
        self.assertIn(reason_text, pg)
        self.assertIn("[listener orders", pg)
        my = self.my_error() or ""
        self.assertIn("(tls_cert_revoked)", my)
        self.assertIn("[listener shop", my)
        for listener in ("orders", "shop"):
            line = self.dbtrust.wait_for_line("conn_end", f"listener={listener}",
                                              "reason=tls_cert_revoked")
            self.assertIn(f"serial {serial}", fx.parse_logfmt(line)["detail"])


class TestRevocation(CrlCase):
    def test_revoked_leaf_then_fresh_leaf_live_sessions_untouched(self):
        # An empty CRL of the intermediate: everything verifies.
        self.assertIsNone(self.pg_error())
        self.assertIsNone(self.my_error())
        live_pg = self.pg_connect("dbt-live")
        live_cur = live_pg.cursor()
        live_cur.execute("select 1")
        live_my = pymysql.connect(host="127.0.0.1", port=self.my_spec.port,
                                  user=fx.MY_NATIVE_USER, password=fx.MY_NATIVE_PASSWORD,
                                  database=fx.MY_APP_DATABASE, ssl_disabled=True,
                                  autocommit=True, connect_timeout=5)
        with live_my.cursor() as c:
            c.execute("select 1")

        # The CA revokes the server's leaf: the ConfigMap update is picked up by the watch.
        line = self.install_crl(W.leaf_revoked_crl)
        fields = fx.parse_logfmt(line)
        self.assertEqual(fields["result"], "ok", line)
        self.assertEqual(fields["trigger"], "watch", line)
        self.assertEqual(fields["crls"], "1", line)
        self.assertEqual(len(fields["crl_sha256"]), 64, line)
        self.assert_revoked_everywhere(W.pki.serial_hex(W.pki.leaf), 0,
                                       "reason keyCompromise (1)")

        # Sessions that were verified before the revocation are not touched.
        live_cur.execute("select 2")
        self.assertEqual(live_cur.fetchone(), (2,))
        with live_my.cursor() as c:
            c.execute("select 2")
            self.assertEqual(c.fetchone(), (2,))
        live_pg.close()
        live_my.close()

        # The servers move to a fresh leaf: recovered without restarting dbtrust.
        pid = self.dbtrust.proc.pid
        self.serve(W.fresh_leaf)
        self.assertIsNone(self.pg_error())
        self.assertIsNone(self.my_error())
        self.assertEqual(self.dbtrust.proc.pid, pid)
        self.assertTrue(self.dbtrust.alive())

    def test_revoked_intermediate_fails_every_leaf_under_it(self):
        line = self.install_crl(W.inter_revoked_crl)
        self.assertIn("result=ok", line)
        self.assert_revoked_everywhere(W.pki.serial_hex(W.pki.intermediate), 1,
                                       "reason cACompromise (2)")
        self.serve(W.fresh_leaf)  # another leaf of the same intermediate
        pg = self.pg_error() or ""
        self.assertIn("(tls_cert_revoked)", pg)
        self.assertIn("CN=dbtrust test intermediate A", pg)
        self.assertIn("(tls_cert_revoked)", self.my_error() or "")

    def test_forged_crl_is_refused_and_the_old_generation_stays(self):
        line = self.install_crl(W.forged_crl)
        fields = fx.parse_logfmt(line)
        self.assertEqual(fields["result"], "refused", line)
        self.assertIn("signature does not verify with the key of", fields["reason"])
        self.assertIn("CN=dbtrust test intermediate A", fields["reason"])
        self.assertIsNone(self.pg_error())
        self.assertIsNone(self.my_error())

    def test_forged_crl_inside_the_bundle_is_refused(self):
        # The bundle itself carries the forged CRL: a bundle reload is refused the same way.
        path = os.path.join(W.tmp, f"bundle-forged-{os.getpid()}.pem")
        with open(path, "w") as f:
            f.write(read(W.pki.root.cert) + read(W.pki.intermediate.cert) + read(W.forged_crl))
        cfg = fx.DbTrustConfig(path, workers=1, trust_options={"guard": "off"})
        cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        proc = fx.run([sys.argv_dbtrust, "check", "--config",
                       cfg.write(os.path.join(W.tmp, "forged.ini"))], check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("bundle refused", proc.stderr)
        self.assertIn("signature does not verify", proc.stderr)

    def test_sighup_reloads_crls_and_same_content_is_a_no_op(self):
        # Identical bundle and CRLs: a SIGHUP changes nothing and logs nothing.
        mark = self.dbtrust.mark()
        os.kill(self.dbtrust.proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        self.assertEqual(self.dbtrust.find_lines("bundle_reload", since=mark), [])
        self.install_crl(W.leaf_revoked_crl)
        self.assertIn("(tls_cert_revoked)", self.pg_error() or "")


def crl_next_update(path):
    from cryptography import x509
    with open(path, "rb") as f:
        crl = x509.load_pem_x509_crl(f.read())
    return int(crl.next_update.replace(tzinfo=datetime.timezone.utc).timestamp())


def crl_dir_text(*paths):
    """One file holding several CRLs (PEM blocks concatenate)."""
    return "".join(read(p) for p in paths)


class TestStaleness(CrlCase):
    """Intermediate A's CRL is past its nextUpdate (revoking nothing), root A's is due in two
    days. Staleness is warned about like certificate expiry and never breaks connections unless
    crl_stale = refuse."""

    crl_stale = "warn"

    @classmethod
    def setUpClass(cls):
        cls.stale = W.pki.make_crl("inter-stale.crl", W.pki.intermediate, this_update_days=-10,
                                   next_update_days=-2)
        cls.due = W.pki.make_crl("root-due.crl", W.pki.root, this_update_days=-5,
                                 next_update_days=2.5)

    def setUp(self):
        super().setUp()
        mark = self.dbtrust.mark()
        self.crl_dir.install(crl_dir_text(self.stale, self.due))
        self.dbtrust.wait_for_line("bundle_reload", "result=ok", since=mark)

    def trust_options(self):
        return {"crl_stale": self.crl_stale}

    def test_warnings_metric_and_bundle_endpoint(self):
        past = self.dbtrust.wait_for_line("crl_next_update", "threshold_days=past")
        fields = fx.parse_logfmt(past)
        self.assertEqual(past.split()[1], "error", past)
        self.assertEqual(fields["issuer"], "CN=dbtrust test intermediate A,O=dbtrust tests")
        self.assertEqual(fields["bundle"], W.bundle)
        self.assertIn("still enforced", fields["detail"])
        due = self.dbtrust.wait_for_line("crl_next_update", "threshold_days=3")
        self.assertEqual(due.split()[1], "warn", due)
        self.assertIn("CN=dbtrust test root A", due)
        # Once each: an hourly check or another reload of the same CRLs says nothing new.
        os.kill(self.dbtrust.proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        self.assertEqual(len(self.dbtrust.find_lines("crl_next_update", "threshold_days=past")), 1)

        samples = fx.scrape_metrics(self.admin_port)
        for path, issuer in ((self.stale, "CN=dbtrust test intermediate A,O=dbtrust tests"),
                             (self.due, "CN=dbtrust test root A,O=dbtrust tests")):
            self.assertEqual(fx.metric_value(samples, "dbtrust_crl_next_update_timestamp_seconds",
                                             bundle=W.bundle, issuer=issuer),
                             crl_next_update(path))

        status, body = fx.http_get(self.admin_port, "/bundle")
        self.assertEqual(status, 200)
        entry = json.loads(body)["bundles"][0]
        self.assertEqual(entry["crl_path"], self.crl_dir.dir)
        self.assertEqual(len(entry["crl_sha256"]), 64)
        # Fleet view (issue 18): which CRL files each pod runs, as /bundle says.
        self.assertEqual(fx.metric_value(samples, "dbtrust_crl_info", bundle=W.bundle,
                                         sha256=entry["crl_sha256"]), 1)
        crls = {c["issuer"]: c for c in entry["crls"]}
        stale = crls["CN=dbtrust test intermediate A,O=dbtrust tests"]
        self.assertTrue(stale["stale"])
        self.assertEqual(stale["verified_by"], "CN=dbtrust test intermediate A,O=dbtrust tests")
        self.assertEqual(stale["entries"], 0)
        self.assertFalse(crls["CN=dbtrust test root A,O=dbtrust tests"]["stale"])
        self.assertEqual(crls["CN=dbtrust test root A,O=dbtrust tests"]["days_left"], 2)

        # warn: the stale CRL does not stop anyone.
        self.assertIsNone(self.pg_error())
        self.assertIsNone(self.my_error())


class TestStaleRefuse(TestStaleness):
    crl_stale = "refuse"

    # The warnings, metric and /bundle are those of warn; this class is about the connections.
    test_warnings_metric_and_bundle_endpoint = None

    def test_stale_crl_fails_closed(self):
        pg = self.pg_error() or ""
        self.assertIn("(tls_crl_stale)", pg)
        self.assertIn("CRL of CN=dbtrust test intermediate A,O=dbtrust tests, nextUpdate", pg)
        self.assertIn("(tls_crl_stale)", self.my_error() or "")
        line = self.dbtrust.wait_for_line("crl_next_update", "threshold_days=past")
        self.assertIn("chains it covers fail with tls_crl_stale", line)


class TestGuard(CrlCase):
    guard = "on"

    def test_guard_refuses_revoking_a_live_upstream_until_forced(self):
        mark = self.dbtrust.mark()
        self.crl_dir.install(read(W.leaf_revoked_crl))
        line = self.dbtrust.wait_for_line("bundle_guard", "result=refused", since=mark,
                                          timeout=10)
        self.assertIn("tls_cert_revoked", line)
        self.dbtrust.wait_for_line("bundle_reload", "result=refused", since=mark, timeout=10)
        self.assertIsNone(self.pg_error())
        # The operator decides: a forced reload applies the revocation.
        mark = self.dbtrust.mark()
        os.kill(self.dbtrust.proc.pid, signal.SIGUSR2)
        self.dbtrust.wait_for_line("bundle_reload", "result=applied", "guard=overridden",
                                   since=mark)
        self.assertIn("(tls_cert_revoked)", self.pg_error() or "")


class TestCrlFile(CrlCase):
    """crl = one file, renamed over by its writer: watched through its directory."""
    crl_layout = "plain"

    def crl_path(self):
        return self.crl_dir.path

    def test_rename_over_of_the_crl_file(self):
        mark = self.dbtrust.mark()
        self.crl_dir.install(read(W.leaf_revoked_crl))
        self.dbtrust.wait_for_line("bundle_reload", "result=ok", "trigger=watch", since=mark,
                                   timeout=RELOAD_DEADLINE_S)
        self.assertIn("(tls_cert_revoked)", self.pg_error() or "")


class TestCrlTriggers(CrlCase):
    """A CRL change the directory watch cannot see - the file rewritten in place through a hard
    link in another directory (inotify reports a change to the directory the write went
    through) - is applied by each of the other triggers: SIGHUP, POST /reload, the poll."""
    crl_layout = "plain"
    poll = "1h"

    def crl_path(self):
        return self.crl_dir.path

    def trust_options(self):
        return {"reload_interval": self.poll}

    def rewrite_unseen(self, text):
        link = os.path.join(fx.make_temp_dir("crl-link"), "crl.pem")
        os.link(self.crl_dir.path, link)
        mark = self.dbtrust.mark()
        with open(link, "w") as f:
            f.write(text)
        return mark

    def revoke_and_expect(self, trigger, act=None):
        mark = self.rewrite_unseen(read(W.leaf_revoked_crl))
        if trigger != "poll":
            time.sleep(1)
            self.assertEqual(self.dbtrust.find_lines("bundle_reload", since=mark), [],
                             "the watch saw the in-place rewrite: the test proves nothing")
            self.assertIsNone(self.pg_error())
            act()
        self.dbtrust.wait_for_line("bundle_reload", "result=ok", f"trigger={trigger}",
                                   since=mark, timeout=RELOAD_DEADLINE_S + 2)
        self.assertIn("(tls_cert_revoked)", self.pg_error() or "")

    def test_sighup_applies_a_crl_change(self):
        self.revoke_and_expect("sighup", lambda: os.kill(self.dbtrust.proc.pid, signal.SIGHUP))

    def test_post_reload_applies_a_crl_change(self):
        def post():
            import urllib.request
            req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}/reload",
                                         method="POST")
            with urllib.request.urlopen(req, timeout=5) as resp:
                self.assertEqual(resp.status, 202)
        self.revoke_and_expect("admin", post)


class TestCrlPoll(TestCrlTriggers):
    poll = "1s"
    test_sighup_applies_a_crl_change = None
    test_post_reload_applies_a_crl_change = None

    def test_poll_applies_a_crl_change(self):
        self.revoke_and_expect("poll")


class TestTools(unittest.TestCase):
    """dbtrust check and bundle inspect|merge with CRLs (no daemon)."""

    def check(self, crl_dir):
        cfg = fx.DbTrustConfig(W.bundle, workers=1, trust_options={"crl": crl_dir})
        cfg.add_listener("orders", "postgres", f"localhost:{W.pg.port}")
        cfg.add_listener("shop", "mysql", f"localhost:{W.maria.port}")
        path = cfg.write(os.path.join(W.tmp, f"check-{self.id().split('.')[-1]}.ini"))
        return fx.run([sys.argv_dbtrust, "check", "--config", path], check=False)

    def crl_dir(self, *paths):
        d = fx.make_temp_dir("crl-tools")
        for i, p in enumerate(paths):
            with open(os.path.join(d, f"{i}.crl"), "w") as f:
                f.write(read(p))
        return d

    def test_check_prints_revocation_per_chain_element(self):
        root_crl = W.pki.make_crl("root-empty.crl", W.pki.root)
        proc = self.check(self.crl_dir(W.empty_inter_crl, root_crl))
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        lines = proc.stdout.splitlines()
        for listener in ("orders", "shop"):
            start = next(i for i, line in enumerate(lines) if line.startswith(f"listener {listener}"))
            self.assertIn("verified", lines[start])
            self.assertIn("depth 0: CN=localhost", lines[start + 1])
            self.assertEqual(lines[start + 3].strip(), "revocation: not revoked (CRL of its issuer, "
                             "0 entries, nextUpdate " + lines[start + 3].split("nextUpdate ")[1])
            self.assertIn("depth 1: CN=dbtrust test intermediate A", lines[start + 4])
            self.assertIn("revocation: not revoked (CRL of its issuer", lines[start + 6])
            self.assertIn("depth 2: CN=dbtrust test root A", lines[start + 7])
            self.assertEqual(lines[start + 9].strip(), "revocation: root of the bundle, no CRL "
                             "applies")

        proc = self.check(self.crl_dir(W.leaf_revoked_crl))
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertEqual(proc.stdout.count("FAILED tls_cert_revoked: certificate revoked (depth 0, "
                                           "CN=localhost"), 2, proc.stdout)
        self.assertIn(f"serial {W.pki.serial_hex(W.pki.leaf)}", proc.stdout)

    def test_inspect_lists_crls_and_merge_keeps_the_newest(self):
        older = W.pki.make_crl("tools-older.crl", W.pki.intermediate, revoked=[W.pki.leaf],
                               this_update_days=-3)
        newer = W.pki.make_crl("tools-newer.crl", W.pki.intermediate, this_update_days=-1,
                               number=9)
        proc = fx.run([sys.argv_dbtrust, "bundle", "inspect", "--json", W.bundle, older, newer,
                       W.forged_crl], check=False)
        self.assertEqual(proc.returncode, 1, proc.stderr)  # warnings
        doc = json.loads(proc.stdout)
        self.assertEqual(doc["summary"]["crls"], 3)
        crls = doc["crls"]
        self.assertEqual([c["file"] for c in crls], [older, newer, W.forged_crl])
        self.assertEqual(crls[0]["entries"], 1)
        self.assertEqual(crls[0]["superseded_by"], {"file": newer, "index": 1})
        self.assertEqual(crls[1]["number"], "09")
        self.assertEqual(crls[1]["verified_by"], "CN=dbtrust test intermediate A,O=dbtrust tests")
        self.assertIsNone(crls[2]["verified_by"])
        kinds = sorted((w["kind"], w["file"]) for w in doc["warnings"])
        self.assertEqual(kinds, [("crl_superseded", older), ("crl_unverified", W.forged_crl)])

        text = fx.run([sys.argv_dbtrust, "bundle", "inspect", W.bundle, newer], check=False).stdout
        self.assertIn(f"{newer} CRL #1 (line 1)\n  issuer:       CN=dbtrust test intermediate A,"
                      "O=dbtrust tests\n", text)
        self.assertIn("  verified by:  CN=dbtrust test intermediate A,O=dbtrust tests (sha256 ",
                      text)
        self.assertIn("2 certificates in 2 files (2 unique), 1 CRL: no warnings", text)

        # merge refuses a CRL nothing verifies, keeps the newest per issuer otherwise.
        out = os.path.join(W.tmp, "merged-crl.pem")
        proc = fx.run([sys.argv_dbtrust, "bundle", "merge", "-o", out, W.bundle, W.forged_crl],
                      check=False)
        self.assertEqual(proc.returncode, 2, proc.stdout + proc.stderr)
        self.assertIn("signature does not verify", proc.stderr)
        proc = fx.run([sys.argv_dbtrust, "bundle", "merge", "-o", out, W.bundle, older, newer],
                      check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("wrote 2 certificates and 1 CRL (newest per issuer)", proc.stdout)
        merged = json.loads(fx.run([sys.argv_dbtrust, "bundle", "inspect", "--json", out]).stdout)
        self.assertEqual([(c["number"], c["entries"]) for c in merged["crls"]], [("09", 0)])
        self.assertEqual(merged["warnings"], [])


if __name__ == "__main__":
    sys.argv_dbtrust = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
