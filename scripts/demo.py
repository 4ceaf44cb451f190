#!/usr/bin/python3
"""dbtrust demo: a legacy client talks plaintext to dbtrust, dbtrust talks verified TLS upstream.

Run by scripts/demo (which installs packages and builds first):
    /usr/bin/python3 scripts/demo.py --dbtrust build/dbtrust

Everything is throwaway: a CA generated now, database servers on free loopback ports in temp
dirs, all stopped and removed on exit. Each database engine is one *section* (a function in
SECTIONS); add e.g. MariaDB by writing section_mariadb(demo) and appending it there.
"""

import argparse
import os
import re
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import dbtrust_fixtures as fx  # noqa: E402


class DemoError(Exception):
    """A step did not show what it should: the demo exits non-zero."""


# --------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------

def banner(title):
    print("\n" + "=" * 78 + f"\n  {title}\n" + "=" * 78, flush=True)


def step(text):
    print(f"\n--> {text}", flush=True)


def show(text, indent="    "):
    print(textwrap.indent(text.rstrip() or "(no output)", indent), flush=True)


def shell_quote(args):
    return " ".join(a if re.fullmatch(r"[\w@%+=:,./-]+", a) else f"'{a}'" for a in args)


# --------------------------------------------------------------------------------------------
# Shared demo state and engine-neutral steps
# --------------------------------------------------------------------------------------------

class Demo:
    """What all sections share: the dbtrust binary, a work dir, the throwaway PKI."""

    def __init__(self, binary):
        self.binary = binary
        self.dir = fx.make_temp_dir("demo")
        self.pki = fx.TestPKI(os.path.join(self.dir, "pki"))

    def start_dbtrust(self, name, config):
        step(f"dbtrust config ({name}.ini):")
        show(config.render())
        return fx.DbTrust.from_config(self.binary, config, self.dir, name=name).start()


def describe_pki(pki):
    step("Throwaway PKI (openssl): the bundle dbtrust trusts holds root A only")
    for label, cert in (("root A (in the bundle)", pki.root),
                        ("intermediate A", pki.intermediate),
                        ("server leaf", pki.leaf),
                        ("rogue root (NOT in the bundle)", pki.rogue_root)):
        with open(cert.cert) as f:
            info = fx.describe_certificate(f.read())
        show(f"{label:32} {info['subject']}")


def show_verified_chain(host, port, bundle, name, starttls):
    """Print the chain an upstream presents and OpenSSL's verdict with the same trust inputs
    dbtrust uses (bundle + host name). Returns True if it verified."""
    cmd = ["openssl", "s_client", "-starttls", starttls, "-connect", f"{host}:{port}",
           "-CAfile", bundle, "-verify_hostname", name, "-showcerts"]
    step("The upstream chain, as seen by: " + shell_quote(cmd))
    proc = subprocess.run(cmd, input="", capture_output=True, text=True, timeout=30)
    certs = fx.split_pem_certificates(proc.stdout)
    if not certs:
        show(proc.stdout + proc.stderr)
        raise DemoError("openssl s_client got no certificates")
    for depth, pem in enumerate(certs):
        info = fx.describe_certificate(pem)
        show(f"depth {depth}: subject  {info['subject']}\n"
             f"         issuer   {info['issuer']}\n"
             f"         notAfter {info['not_after']}")
    with open(bundle) as f:
        anchor = fx.describe_certificate(fx.split_pem_certificates(f.read())[0])
    show(f"anchor : {anchor['subject']}  (from the bundle, never sent by the server)")
    verdict = re.search(r"Verify return code: .*", proc.stdout)
    show(verdict.group(0) if verdict else "no verify result printed")
    return bool(verdict) and verdict.group(0).startswith("Verify return code: 0 (ok)")


def show_log_lines(dbtrust, mark, needle=None):
    """dbtrust's connection log lines since mark (optionally only those containing needle)."""
    lines = [line for line in dbtrust.lines_since(mark) if needle is None or needle in line]
    show("\n".join(lines) if lines else "(no log line yet)")


# --------------------------------------------------------------------------------------------
# PostgreSQL section
# --------------------------------------------------------------------------------------------

PG_QUERY = ("select current_user, version(), ssl, version as tls_version, cipher "
            "from pg_stat_ssl where pid = pg_backend_pid()")


def psql(caption, port, query, sslmode="disable", app="dbtrust-demo", expanded=True):
    """psql as a legacy app would run it: plaintext to dbtrust, password from the env."""
    step(caption)
    conninfo = fx.pg_conninfo(host="127.0.0.1", port=port, user=fx.PG_APP_USER,
                              dbname=fx.PG_APP_DATABASE, sslmode=sslmode,
                              application_name=app)
    cmd = ["psql", conninfo, "-X"] + (["-x"] if expanded else []) + ["-c", query]
    show("$ PGPASSWORD=... " + shell_quote(cmd))
    env = fx.clean_env(PGPASSWORD=fx.PG_APP_PASSWORD, PGCONNECT_TIMEOUT=10)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def section_postgres(demo):
    banner("PostgreSQL 15: plaintext psql -> dbtrust -> verify-full TLS -> server")
    describe_pki(demo.pki)

    step("Starting a TLS-only PostgreSQL 15 (pg_hba: hostssl only, hostnossl reject)")
    pg = fx.PostgresServer(demo.pki.leaf, "demo-pg").start().provision_app_roles()
    show(f"listening on 127.0.0.1:{pg.port}, presenting leaf + intermediate A")

    config = fx.DbTrustConfig(demo.pki.bundle, workers=2, drain_timeout="1s")
    orders = config.add_listener("orders", "postgres", f"localhost:{pg.port}",
                                 connect_timeout="2s", handshake_timeout="3s")
    dbtrust = demo.start_dbtrust("dbtrust-pg", config)
    show(f"dbtrust listening on {orders.listen} (plaintext, loopback)")

    direct = psql("Without dbtrust: a plaintext client is refused by the server itself",
                  pg.port, "select 1", expanded=False)
    show(direct.stderr or direct.stdout)

    mark = dbtrust.mark()
    ok = psql("Through dbtrust: the same plaintext client works, and the server sees TLS",
              orders.port, PG_QUERY)
    show(ok.stdout + ok.stderr)
    if ok.returncode != 0 or not re.search(r"^ssl\s*\|\s*t$", ok.stdout, re.M):
        raise DemoError("query through dbtrust failed or the server did not see TLS")
    step("dbtrust's log line for that connection")
    fx.wait_for(lambda: dbtrust.find_lines("dbtrust-demo", since=mark), 5, what="log line")
    show_log_lines(dbtrust, mark, "dbtrust-demo")

    if not show_verified_chain("127.0.0.1", pg.port, demo.pki.bundle, "localhost", "postgres"):
        raise DemoError("the upstream chain did not verify")

    step("The server now presents a certificate from a ROGUE CA (pg_ctl reload)")
    pg.set_certificate(demo.pki.rogue_leaf)
    mark = dbtrust.mark()
    refused = psql("The same client through dbtrust: refused, and told why",
                   orders.port, "select 1", app="dbtrust-demo-rogue", expanded=False)
    show(refused.stderr + refused.stdout)
    if refused.returncode == 0 or "tls_untrusted_chain" not in refused.stderr:
        raise DemoError("the rogue certificate was not refused with tls_untrusted_chain")
    step("dbtrust's log line for the refused connection")
    fx.wait_for(lambda: dbtrust.find_lines("reason=tls_untrusted_chain", since=mark), 5,
                what="log line")
    show_log_lines(dbtrust, mark, "reason=tls_untrusted_chain")

    step("The server gets its real certificate back (pg_ctl reload)")
    pg.set_certificate(demo.pki.leaf)
    again = psql("The same app works again; dbtrust was never restarted",
                 orders.port, "select current_user, ssl from pg_stat_ssl "
                              "where pid = pg_backend_pid()", expanded=False)
    show(again.stdout + again.stderr)
    if again.returncode != 0:
        raise DemoError("connection after restoring the certificate failed")

    dbtrust.stop()
    pg.stop()


# --------------------------------------------------------------------------------------------
# MariaDB section
# --------------------------------------------------------------------------------------------

MY_QUERY = ("select current_user() as user, @@version as version, "
            "(select variable_value from information_schema.session_status "
            " where variable_name = 'Ssl_version') as tls_version, "
            "(select variable_value from information_schema.session_status "
            " where variable_name = 'Ssl_cipher') as cipher")


def mariadb(caption, port, query):
    """The mariadb CLI as a legacy app would run it: plaintext (--skip-ssl) to dbtrust."""
    step(caption)
    cmd = ["mariadb", "-h", "127.0.0.1", "-P", str(port), "--skip-ssl",
           "-u", fx.MY_NATIVE_USER, fx.MY_APP_DATABASE, "-E", "-e", query]
    show("$ MYSQL_PWD=... " + shell_quote(cmd))
    env = fx.clean_env(MYSQL_PWD=fx.MY_NATIVE_PASSWORD)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def section_mariadb(demo):
    banner("MariaDB 10.11: plaintext mariadb CLI -> dbtrust -> verify-full TLS -> server")
    step("Starting a TLS-only MariaDB 10.11 (require_secure_transport=ON)")
    db = fx.MariadbServer(demo.pki.leaf, "demo-mariadb").start()
    db.provision_app_users()
    show(f"listening on 127.0.0.1:{db.port}, presenting leaf + intermediate A")

    config = fx.DbTrustConfig(demo.pki.bundle, workers=2, drain_timeout="1s")
    shop = config.add_listener("shop", "mysql", f"localhost:{db.port}",
                               connect_timeout="2s", handshake_timeout="3s")
    dbtrust = demo.start_dbtrust("dbtrust-mariadb", config)
    show(f"dbtrust listening on {shop.listen} (plaintext, loopback)")

    mark = dbtrust.mark()
    ok = mariadb("Through dbtrust: a plaintext client works, and the server sees TLS",
                 shop.port, MY_QUERY)
    show(ok.stdout + ok.stderr)
    if ok.returncode != 0 or not re.search(r"tls_version: TLSv1\.[23]", ok.stdout):
        raise DemoError("query through dbtrust failed or the server did not see TLS")
    step("dbtrust's log line for that connection")
    fx.wait_for(lambda: dbtrust.find_lines("user=native", since=mark), 5, what="log line")
    show_log_lines(dbtrust, mark, "user=native")

    if not show_verified_chain("127.0.0.1", db.port, demo.pki.bundle, "localhost", "mysql"):
        raise DemoError("the upstream chain did not verify")

    step("The server now presents a certificate from a ROGUE CA (FLUSH SSL)")
    db.set_certificate(demo.pki.rogue_leaf)
    refused = mariadb("The same client through dbtrust: refused, and told why", shop.port,
                      "select 1")
    show(refused.stderr + refused.stdout)
    if refused.returncode == 0 or "tls_untrusted_chain" not in refused.stderr:
        raise DemoError("the rogue certificate was not refused with tls_untrusted_chain")

    step("The server gets its real certificate back (FLUSH SSL)")
    db.set_certificate(demo.pki.leaf)
    again = mariadb("The same app works again; dbtrust was never restarted", shop.port,
                    "select current_user() as user")
    show(again.stdout + again.stderr)
    if again.returncode != 0:
        raise DemoError("connection after restoring the certificate failed")

    dbtrust.stop()
    db.stop()


SECTIONS = [("PostgreSQL 15", section_postgres), ("MariaDB 10.11", section_mariadb)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dbtrust", default=os.path.join(REPO, "build", "dbtrust"),
                        help="path to the dbtrust binary")
    parser.add_argument("--only", action="append", metavar="SECTION",
                        help="run only sections whose name starts with this (repeatable)")
    args = parser.parse_args()
    binary = os.path.abspath(args.dbtrust)
    if not os.access(binary, os.X_OK):
        sys.exit(f"demo: dbtrust binary not found or not executable: {binary}")

    failed = []
    try:
        demo = Demo(binary)
        for name, section in SECTIONS:
            if args.only and not any(name.lower().startswith(o.lower()) for o in args.only):
                continue
            try:
                section(demo)
            except (DemoError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                print(f"\n!! {name}: {exc}", flush=True)
                failed.append(name)
    finally:
        fx.run_cleanups()

    banner("Summary")
    for name, _ in SECTIONS:
        status = "FAILED" if name in failed else "ok"
        if args.only and not any(name.lower().startswith(o.lower()) for o in args.only):
            status = "skipped"
        show(f"{name:20} {status}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
