"""MariaDB part of the bench: sysbench oltp_point_select and oltp_read_write through dbtrust
(plaintext loopback leg, --mysql-ssl=off) and direct over TLS (--mysql-ssl=on).

sysbench 1.0.20 has only on/off for TLS; `on` loads cacert.pem, client-cert.pem and
client-key.pem from its working directory (TESTING.md), so the direct route runs in a
directory holding the bundle and a clientAuth certificate, and the server gets the bundle as
ssl-ca to accept it. libmariadb checks the chain against cacert.pem; sysbench cannot ask it to
check the host name, so the direct route does slightly less than dbtrust's verify-full.
"""

import os
import re
import shutil
from dataclasses import dataclass

from common import fx, log

USER, PASSWORD = fx.MY_NATIVE_USER, fx.MY_NATIVE_PASSWORD
DATABASE = fx.MY_APP_DATABASE
TESTS = ("oltp_point_select", "oltp_read_write")


class BenchMariadb(fx.MariadbServer):
    """The fixtures' TLS-only MariaDB, with room for the bench's 1000 idle connections."""

    def __init__(self, cert, client_ca, max_connections):
        super().__init__(cert, "maria-bench", client_ca=client_ca)
        self.max_connections = max_connections

    def _write_config(self):
        super()._write_config()
        # A later key wins in an option file: this overrides the fixtures' 200.
        with open(self.config_path, "a") as f:
            f.write(f"max-connections = {self.max_connections}\n")


@dataclass
class MyRoute:
    name: str
    port: int
    tls: bool
    workdir: str  # sysbench's cwd (holds the TLS files on the direct route)
    socket: str = None  # a Unix-socket listener instead of 127.0.0.1:port


def start_mariadb(pki, max_connections):
    log("starting MariaDB 10.11")
    return BenchMariadb(pki.leaf, pki.bundle, max_connections).start().provision_app_users()


def direct_route(pki, maria):
    """The direct TLS route: a working directory with the files sysbench --mysql-ssl=on reads."""
    workdir = fx.make_temp_dir("sysbench-direct")
    client = fx.make_client_cert(pki, name="bench-client")
    shutil.copy(pki.bundle, os.path.join(workdir, "cacert.pem"))
    shutil.copy(client.chain, os.path.join(workdir, "client-cert.pem"))
    shutil.copy(client.key, os.path.join(workdir, "client-key.pem"))
    return MyRoute("direct", maria.port, True, workdir)


def sysbench(route, test, step, settings, threads=None, seconds=None):
    """One sysbench step on a route; the CompletedProcess after checking it really ran."""
    where = ([f"--mysql-socket={route.socket}"] if route.socket else
             ["--mysql-host=127.0.0.1", f"--mysql-port={route.port}"])
    cmd = ["sysbench", test, "--db-driver=mysql", *where,
           f"--mysql-user={USER}", f"--mysql-password={PASSWORD}",
           f"--mysql-db={DATABASE}", f"--mysql-ssl={'on' if route.tls else 'off'}",
           f"--tables={settings.sysbench_tables}", f"--table-size={settings.sysbench_table_size}",
           f"--threads={threads or settings.sysbench_threads}",
           f"--time={seconds or settings.seconds}", "--rand-type=uniform", step]
    proc = fx.run(cmd, check=False, cwd=route.workdir, timeout=(seconds or 60) * 4 + 600,
                  env=fx.clean_env())
    output = proc.stdout + proc.stderr
    # sysbench 1.0.20 exits 0 from `prepare` even when it could not connect.
    if proc.returncode != 0 or "FATAL" in output:
        raise RuntimeError(f"sysbench {test} {step} on {route.name} failed:\n{output}")
    return proc


def parse_run(stdout):
    """transactions/s, queries/s, errors and the 95th percentile latency of a `run`."""
    def number(pattern, cast=float):
        m = re.search(pattern, stdout, re.M)
        return cast(m.group(1)) if m else None
    return {
        "tps": number(r"^\s+transactions:\s+\d+\s+\(([\d.]+) per sec"),
        "qps": number(r"^\s+queries:\s+\d+\s+\(([\d.]+) per sec"),
        "ignored_errors": number(r"^\s+ignored errors:\s+(\d+)", int),
        "reconnects": number(r"^\s+reconnects:\s+(\d+)", int),
        "p95_ms": number(r"^\s+95th percentile:\s+([\d.]+)"),
    }


def run_section(routes, settings):
    """prepare once (direct), then every test on every route."""
    log(f"sysbench prepare ({settings.sysbench_tables} tables x {settings.sysbench_table_size})")
    sysbench(routes["direct"], "oltp_read_write", "prepare", settings, threads=2)
    results = {}
    for test in TESTS:
        results[test] = {}
        for name, route in routes.items():
            if name == "dbtrust-unix" and test != "oltp_point_select":
                continue  # the socket's effect shows on the lightest queries
            log(f"sysbench {test} --threads={settings.sysbench_threads} via {name}")
            results[test][name] = parse_run(sysbench(route, test, "run", settings).stdout)
    return results
