"""`dbtrust bundle inspect|merge` from the command line (issue 5 item 4): what operators see before
they deploy a bundle, and the merged bundle other tools must accept.

Run: /usr/bin/python3 tests/integration/test_bundle_cli.py --dbtrust build/dbtrust

Certificates come from the shared TestPKI (openssl CLI); expected fingerprints, pins and dates are
computed here with the openssl CLI and hashlib, never taken from dbtrust's own output.
"""
import base64
import hashlib
import json
import os
import ssl
import stat
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

EXIT_CLEAN, EXIT_WARNINGS, EXIT_REFUSED = 0, 1, 2
ROOT_A = "CN=dbtrust test root A,O=dbtrust tests"
ROOT_B = "CN=dbtrust test root B,O=dbtrust tests"
INTER_A = "CN=dbtrust test intermediate A,O=dbtrust tests"
INTER_B = "CN=dbtrust test intermediate B,O=dbtrust tests"
LEAF = "CN=localhost,O=dbtrust tests"
GARBAGE_BLOCK = "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"


class W:
    pass


def setUpModule():
    W.tmp = fx.make_temp_dir("test-bundle-cli")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    # A root that expired in 2020, and a leaf that becomes valid only in 400 days.
    key = W.pki._new_key("old-root")
    W.old_root = W.pki._sign("old-root", W.pki._csr("old-root", key, "dbtrust old root"),
                             fx._EXT_ROOT, 30, self_key=key, faketime="2020-01-01 00:00:00")
    W.future_leaf = W.pki.make_leaf("future", "localhost", fx.LOCALHOST_SAN,
                                    W.pki.intermediate, faketime="400 days").cert


def tearDownModule():
    fx.run_cleanups()


# -- helpers -----------------------------------------------------------------------------------

def bundle(*args, umask=None):
    """Runs `dbtrust bundle ARGS`; fails the test on a crash or a sanitizer report."""
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    proc = subprocess.run([sys.argv_dbtrust, "bundle", *args], capture_output=True,
                             timeout=60, preexec_fn=preexec)
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    for marker in fx.SANITIZER_MARKERS:
        if marker in err:
            raise AssertionError(f"sanitizer report from dbtrust bundle {args}:\n{err}")
    if proc.returncode < 0:
        raise AssertionError(f"dbtrust bundle {args} died of signal {-proc.returncode}:\n{err}")
    return proc.returncode, out, err


def write(name, text, mode="w"):
    path = os.path.join(W.tmp, name)
    with open(path, mode) as f:
        f.write(text)
    return path


def read(path):
    with open(path) as f:
        return f.read()


def pem(*paths):
    return "".join(read(p) for p in paths)


def der_file(name):
    """Root A in DER form: what a provider's download page often gives."""
    path = os.path.join(W.tmp, name)
    fx.run(["openssl", "x509", "-in", W.pki.root.cert, "-outform", "der", "-out", path])
    return path


def der_sha256(path):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(read(path))).hexdigest()


def spki_pin(path):
    """sha256/BASE64 of the SubjectPublicKeyInfo, the form `pin =` takes."""
    pub = fx.run(["openssl", "x509", "-in", path, "-pubkey", "-noout"]).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub.encode(),
                            capture_output=True, check=True).stdout
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def iso_date(path, which):
    """notBefore/notAfter as dbtrust prints it: 2036-11-20T13:57:29Z."""
    flag = {"notBefore": "-startdate", "notAfter": "-enddate"}[which]
    line = fx.run(["openssl", "x509", "-in", path, flag, "-noout"]).stdout.strip()
    when = ssl.cert_time_to_seconds(line.split("=", 1)[1])
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def cert_blocks(text):
    """The certificate listing of inspect's text output: {"FILE #N": block text}."""
    blocks = {}
    for chunk in text.split("\n\n"):
        lines = chunk.strip("\n").splitlines()
        if lines and " #" in lines[0] and "(line " in lines[0] and len(lines) > 1:
            blocks[lines[0].split(" (line ")[0]] = "\n".join(lines[1:])
    return blocks


def warning_lines(text):
    return [line for line in text.splitlines() if line.startswith(("warning [", "error ["))]


def field(block, name):
    for line in block.splitlines():
        key, _, value = line.strip().partition(":")
        if key == name:
            return value.strip()
    raise AssertionError(f"no {name} in\n{block}")


# -- inspect -------------------------------------------------------------------------------------

class TestInspect(unittest.TestCase):
    def test_clean_bundle_lists_every_field_and_exits_0(self):
        path = write("clean.pem", "# provider roots\n" + pem(W.pki.root.cert, W.pki.root_b.cert)
                     + pem(W.pki.intermediate.cert))
        rc, out, err = bundle("inspect", path)
        self.assertEqual(rc, EXIT_CLEAN, out + err)
        blocks = cert_blocks(out)
        self.assertEqual(list(blocks), [f"{path} #1", f"{path} #2", f"{path} #3"], out)

        root = blocks[f"{path} #1"]
        self.assertEqual(field(root, "subject"), ROOT_A)
        self.assertEqual(field(root, "issuer"), ROOT_A)
        self.assertEqual(field(root, "notBefore"), iso_date(W.pki.root.cert, "notBefore"))
        self.assertEqual(field(root, "notAfter"), iso_date(W.pki.root.cert, "notAfter"))
        self.assertIn(int(field(root, "days left")), (3648, 3649, 3650))
        self.assertEqual(field(root, "sha256"), der_sha256(W.pki.root.cert))
        self.assertEqual(field(root, "pin"), spki_pin(W.pki.root.cert))
        self.assertEqual(field(root, "ca"), "yes (self-signed root)")
        self.assertIn(f"{path} #1 (line 2)", out, "line of the BEGIN line, after the comment")

        inter = blocks[f"{path} #3"]
        self.assertEqual(field(inter, "subject"), INTER_A)
        self.assertEqual(field(inter, "issuer"), ROOT_A)
        self.assertEqual(field(inter, "sha256"), der_sha256(W.pki.intermediate.cert))
        self.assertEqual(field(inter, "ca"), "yes (intermediate)")
        self.assertEqual(field(blocks[f"{path} #2"], "subject"), ROOT_B)

        self.assertEqual(warning_lines(out), [])
        self.assertEqual(out.strip().splitlines()[-1],
                         "3 certificates in 1 file (3 unique): no warnings")
        self.assertEqual(err, "")

    def test_every_kind_of_warning_exits_1(self):
        first = write("roots.pem", pem(W.pki.root.cert))
        again = write("roots-again.pem", pem(W.pki.intermediate.cert, W.pki.root.cert))
        orphan = write("orphan.pem", pem(W.pki.intermediate_b.cert))
        leaf = write("leaf.pem", pem(W.pki.leaf.cert))
        expired = write("expired.pem", pem(W.old_root))
        future = write("future.pem", pem(W.future_leaf))
        rc, out, err = bundle("inspect", first, again, orphan, leaf, expired, future)
        self.assertEqual(rc, EXIT_WARNINGS, out + err)
        warnings = warning_lines(out)
        expected = [
            f"warning [duplicate] {again} #2 ({ROOT_A}): duplicate of {first} #1 "
            f"(same sha256 {der_sha256(W.pki.root.cert)[:16]}...)",
            f"warning [missing_root] {orphan} #1 ({INTER_B}): intermediate without its root: "
            f"issuer {ROOT_B} is not among the loaded certificates, so no chain through it "
            "verifies",
            f"warning [not_ca] {leaf} #1 ({LEAF}): not a CA: an end-entity certificate cannot "
            "anchor a chain and does not belong in a trust bundle",
        ]
        for line in expected:
            self.assertIn(line, warnings, out)
        expired_line = [w for w in warnings if w.startswith("warning [expired]")]
        self.assertEqual(len(expired_line), 1, warnings)
        self.assertIn(f"{expired} #1 (CN=dbtrust old root,O=dbtrust tests): expired on "
                      "2020-01-31", expired_line[0])
        future_line = [w for w in warnings if w.startswith("warning [not_yet_valid]")]
        self.assertEqual(len(future_line), 1, warnings)
        self.assertRegex(future_line[0], rf"^warning \[not_yet_valid\] {future} #1 .*\(in 40[01] "
                                         r"days\)$")
        # The intermediate A of roots-again.pem has its root (in another file): no warning.
        self.assertFalse([w for w in warnings if INTER_A in w], warnings)
        # Two not_ca: the leaf and the future leaf; nothing else is flagged.
        self.assertEqual(len(warnings), 6, "\n".join(warnings))
        self.assertTrue(out.strip().endswith("7 certificates in 6 files (6 unique): "
                                             "6 warnings, 0 errors"), out)
        blocks = cert_blocks(out)
        self.assertEqual(field(blocks[f"{again} #2"], "duplicate of"), f"{first} #1")
        self.assertLess(int(field(blocks[f"{expired} #1"], "days left")), -2000)

    def test_garbage_between_blocks_is_a_warning(self):
        mangled = pem(W.pki.root_b.cert).replace("-----BEGIN", "----BEGIN", 1)
        text = pem(W.pki.root.cert) + "# next: root B\n" + mangled
        path = write("mangled.pem", text)
        line = text[:text.index("----BEGIN", text.index("# next"))].count("\n") + 1
        rc, out, _ = bundle("inspect", path)
        self.assertEqual(rc, EXIT_WARNINGS, out)
        self.assertEqual(warning_lines(out), [
            f"warning [garbage] {path}: line {line}: text outside the PEM blocks that is not a "
            "comment: a stray or malformed BEGIN/END line (a broken PEM block?)"])
        self.assertEqual(list(cert_blocks(out)), [f"{path} #1"], "root B is lost, not listed")

    def test_unparsable_and_unreadable_files_exit_2_and_the_rest_is_still_listed(self):
        good = write("good.pem", pem(W.pki.root.cert))
        garbage = write("garbage.pem", GARBAGE_BLOCK)
        der = der_file("root.der")
        missing = os.path.join(W.tmp, "missing.pem")
        empty = write("empty.pem", "")
        rc, out, _ = bundle("inspect", good, garbage, der, missing, empty)
        self.assertEqual(rc, EXIT_REFUSED, out)
        self.assertEqual(warning_lines(out), [
            f"error [not_pem] {garbage}: line 1: cannot decode PEM block: bad base64 decode",
            f"error [not_pem] {der}: line 1: no PEM block in the file; binary data (a DER file? "
            "convert it with `openssl x509 -inform der`)",
            f"error [unreadable] {missing}: cannot read: No such file or directory",
            f"warning [no_certificate] {empty}: no certificate in the file",
        ])
        self.assertEqual(list(cert_blocks(out)), [f"{good} #1"])
        self.assertTrue(out.strip().endswith("1 certificate in 5 files (1 unique): "
                                             "1 warning, 3 errors"), out)

    def test_empty_file_alone_is_a_warning(self):
        rc, out, _ = bundle("inspect", write("only-comments.pem", "# nothing yet\n"))
        self.assertEqual(rc, EXIT_WARNINGS, out)
        self.assertEqual(len(warning_lines(out)), 1, out)
        self.assertIn("[no_certificate]", out)


class TestInspectJson(unittest.TestCase):
    def test_json_document(self):
        first = write("j-roots.pem", pem(W.pki.root.cert, W.pki.intermediate.cert))
        second = write("j-dup.pem", pem(W.pki.root.cert, W.pki.leaf.cert))
        rc, out, err = bundle("inspect", "--json", first, second)
        self.assertEqual(rc, EXIT_WARNINGS, out + err)
        doc = json.loads(out)
        self.assertEqual(doc["summary"], {"files": 2, "certificates": 4, "unique": 3,
                                          "crls": 0, "warnings": 2, "errors": 0})
        self.assertEqual(doc["crls"], [])  # CRLs: test_crl.py
        self.assertEqual(doc["files"], [{"path": first, "certificates": 2},
                                        {"path": second, "certificates": 2}])
        root = doc["certificates"][0]
        self.assertEqual(root["file"], first)
        self.assertEqual(root["index"], 1)
        self.assertEqual(root["subject"], ROOT_A)
        self.assertEqual(root["sha256"], der_sha256(W.pki.root.cert))
        self.assertEqual(root["pin"], spki_pin(W.pki.root.cert))
        self.assertEqual(root["not_after"], iso_date(W.pki.root.cert, "notAfter"))
        self.assertIs(root["ca"], True)
        self.assertIs(root["self_signed"], True)
        self.assertIsNone(root["duplicate_of"])
        self.assertIsInstance(root["days_left"], int)
        self.assertEqual(doc["certificates"][2]["duplicate_of"], {"file": first, "index": 1})
        self.assertIs(doc["certificates"][3]["ca"], False)
        kinds = [(w["kind"], w["severity"], w["file"], w["index"]) for w in doc["warnings"]]
        self.assertEqual(kinds, [("duplicate", "warning", second, 1),
                                 ("not_ca", "warning", second, 2)])
        dup = doc["warnings"][0]
        self.assertEqual(dup["duplicate_of"], {"file": first, "index": 1})
        self.assertEqual(dup["subject"], ROOT_A)
        self.assertIn(f"duplicate of {first} #1", dup["message"])

    def test_json_errors_and_odd_file_names(self):
        # A path that is not UTF-8 must still give a valid JSON document.
        odd = os.path.join(os.fsencode(W.tmp), b"caf\xe9.pem")
        with open(odd, "wb") as f:
            f.write(GARBAGE_BLOCK.encode())
        rc, out, err = bundle("inspect", "--json", os.fsdecode(odd))
        self.assertEqual(rc, EXIT_REFUSED, out + err)
        doc = json.loads(out)
        self.assertEqual(doc["certificates"], [])
        self.assertEqual(len(doc["warnings"]), 1)
        w = doc["warnings"][0]
        self.assertEqual((w["kind"], w["severity"], w["line"]), ("not_pem", "error", 1))
        self.assertTrue(w["file"].endswith("caf?.pem"), w["file"])
        self.assertEqual(doc["summary"]["errors"], 1)


# -- merge ---------------------------------------------------------------------------------------

def dir_entries(path):
    return sorted(os.listdir(os.path.dirname(path)))


class TestMerge(unittest.TestCase):
    def setUp(self):
        self.dir = fx.make_temp_dir("bundle-merge")

    def path(self, name):
        return os.path.join(self.dir, name)

    def test_merge_dedups_comments_and_verifies_a_leaf_chain(self):
        a = write("m-a.pem", pem(W.pki.root.cert))
        b = write("m-b.pem", "# rotation target\n" + pem(W.pki.root_b.cert, W.pki.root.cert))
        c = write("m-c.pem", pem(W.old_root, W.pki.root_b.cert))
        out = self.path("ca-bundle.pem")
        rc, stdout, err = bundle("merge", "-o", out, a, b, c, umask=0o077)
        self.assertEqual(rc, EXIT_CLEAN, stdout + err)
        self.assertEqual(stdout, f"wrote 3 certificates from 3 files to {out}, "
                                 "2 duplicates dropped\n")
        # Expired certificates are kept, but said so; duplicates name both places.
        self.assertIn(f"warning [expired] {c} #1 (CN=dbtrust old root,O=dbtrust tests)", err)
        self.assertIn(f"warning [duplicate] {b} #2 ({ROOT_A}): duplicate of {a} #1", err)
        self.assertIn(f"warning [duplicate] {c} #2 ({ROOT_B}): duplicate of {b} #1", err)
        self.assertEqual(len(warning_lines(err)), 3, err)

        self.assertEqual(stat.S_IMODE(os.stat(out).st_mode), 0o644)
        self.assertEqual(dir_entries(out), ["ca-bundle.pem"], "temp file left behind")
        text = read(out)
        self.assertEqual(text.count("-----BEGIN CERTIFICATE-----"), 3, text)
        subjects = [line[len("# subject: "):] for line in text.splitlines()
                    if line.startswith("# subject: ")]
        self.assertEqual(subjects, [ROOT_A, ROOT_B, "CN=dbtrust old root,O=dbtrust tests"])
        self.assertIn(f"# subject: {ROOT_A}\n# issuer: {ROOT_A}\n"
                      f"# notAfter: {iso_date(W.pki.root.cert, 'notAfter')}\n"
                      f"# sha256: {der_sha256(W.pki.root.cert)}\n-----BEGIN CERTIFICATE-----\n",
                      text)
        blocks = [part[part.index("-----BEGIN"):] + "-----END CERTIFICATE-----\n"
                  for part in text.split("-----END CERTIFICATE-----\n")[:-1]]
        hashes = [hashlib.sha256(ssl.PEM_cert_to_DER_cert(b)).hexdigest() for b in blocks]
        self.assertEqual(hashes, [der_sha256(W.pki.root.cert), der_sha256(W.pki.root_b.cert),
                                  der_sha256(W.old_root)])

        # Other tools accept it: openssl verifies both providers' leaf chains against it.
        for leaf, inter in ((W.pki.leaf, W.pki.intermediate), (W.pki.leaf_b,
                                                               W.pki.intermediate_b)):
            proc = fx.run(["openssl", "verify", "-CAfile", out, "-untrusted", inter.cert,
                           leaf.cert], check=False)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            self.assertIn(": OK", proc.stdout)
        proc = fx.run(["openssl", "verify", "-CAfile", out, W.pki.rogue_leaf.cert], check=False)
        self.assertNotEqual(proc.returncode, 0, "the rogue leaf must not verify")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(out)
        self.assertEqual(ctx.cert_store_stats()["x509_ca"], 3)

        # And dbtrust itself reads it back as a clean bundle (but for the expired root).
        rc, again, _ = bundle("inspect", out)
        self.assertEqual(rc, EXIT_WARNINGS)
        self.assertEqual([w.split(" ")[1] for w in warning_lines(again)], ["[expired]"])

    def test_merge_replaces_an_existing_bundle_by_rename(self):
        out = self.path("bundle.pem")
        with open(out, "w") as f:
            f.write("previous\n")
        os.link(out, self.path("old-inode"))
        rc, stdout, err = bundle("merge", "-o", out, W.pki.root.cert)
        self.assertEqual(rc, EXIT_CLEAN, stdout + err)
        self.assertEqual(stdout, f"wrote 1 certificate from 1 file to {out}, "
                                 "0 duplicates dropped\n")
        self.assertEqual(err, "")
        self.assertEqual(read(self.path("old-inode")), "previous\n", "rewritten in place")
        self.assertIn(f"# subject: {ROOT_A}\n", read(out))
        self.assertEqual(dir_entries(out), ["bundle.pem", "old-inode"])

    def test_refused_merge_leaves_out_untouched(self):
        out = self.path("bundle.pem")
        previous = pem(W.pki.rogue_root.cert)
        good = write("r-good.pem", pem(W.pki.root.cert))
        cases = {
            "garbage": (write("r-garbage.pem", GARBAGE_BLOCK),
                        "line 1: cannot decode PEM block: bad base64 decode"),
            "empty": (write("r-empty.pem", ""), "no certificate in the file"),
            "missing": (os.path.join(W.tmp, "r-missing.pem"),
                        "cannot read: No such file or directory"),
            # Root B behind a mangled BEGIN line: merging would silently drop it.
            "mangled": (write("r-mangled.pem", pem(W.pki.rogue_root.cert) + pem(
                W.pki.root_b.cert).replace("-----BEGIN", "----BEGIN")),
                "text outside the PEM blocks that is not a comment"),
            # No PEM at all: a DER file.
            "der": (der_file("r-root.der"), "no PEM block in the file; binary data"),
        }
        for name, (bad, why) in cases.items():
            with self.subTest(name):
                with open(out, "w") as f:
                    f.write(previous)
                before = os.stat(out)
                rc, stdout, err = bundle("merge", "-o", out, good, bad)
                self.assertEqual(rc, EXIT_REFUSED, stdout + err)
                self.assertEqual(stdout, "")
                refusal = [line for line in err.splitlines() if "refusing" in line]
                self.assertEqual(len(refusal), 1, err)
                self.assertTrue(refusal[0].startswith(
                    f"dbtrust bundle merge: refusing to write {out}: {bad}: "), refusal)
                self.assertIn(why, refusal[0])
                self.assertEqual(read(out), previous)
                self.assertEqual(os.stat(out).st_ino, before.st_ino)
                self.assertEqual(dir_entries(out), ["bundle.pem"])

    def test_unwritable_destination_exits_1(self):
        out = os.path.join(self.dir, "no-such-dir", "bundle.pem")
        rc, stdout, err = bundle("merge", "-o", out, W.pki.root.cert)
        self.assertEqual(rc, EXIT_WARNINGS, stdout + err)
        self.assertIn("cannot create a temporary file in", err)
        self.assertFalse(os.path.exists(out))


# -- usage -------------------------------------------------------------------------------------

class TestUsage(unittest.TestCase):
    def test_usage_errors_exit_2(self):
        root = W.pki.root.cert
        cases = [
            ((), "missing subcommand"),
            (("frobnicate",), "unknown subcommand 'frobnicate'"),
            (("inspect",), "no FILE given"),
            (("inspect", "--bogus", root), "invalid option '--bogus'"),
            (("merge", root), "-o OUT is required"),
            (("merge", "-o", os.path.join(W.tmp, "x.pem")), "no FILE given"),
            (("merge", root, "-o"), "option '-o' needs an argument"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                rc, out, err = bundle(*args)
                self.assertEqual(rc, EXIT_REFUSED, out + err)
                self.assertEqual(out, "")
                self.assertIn(message, err)
                self.assertIn("Usage:", err)
        self.assertFalse(os.path.exists(os.path.join(W.tmp, "x.pem")))

    def test_help(self):
        for args in (("--help",), ("inspect", "--help"), ("merge", "-h")):
            with self.subTest(args=args):
                rc, out, err = bundle(*args)
                self.assertEqual(rc, EXIT_CLEAN)
                self.assertIn("dbtrust bundle inspect [--json] FILE...", out)
                self.assertIn("dbtrust bundle merge -o OUT FILE...", out)
                self.assertEqual(err, "")


if __name__ == "__main__":
    sys.argv_dbtrust = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
