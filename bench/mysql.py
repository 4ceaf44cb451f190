"""MariaDB part of the bench: sysbench oltp_point_select and oltp_read_write through dbtrust
(plaintext loopback leg, --mysql-ssl=off), direct over TLS (--mysql-ssl=on), and over TLS
through the HAProxy byte relay (--mysql-ssl=on to the relay's port: the floor, issue 19). The
CPU of the route's proxy process (utime + stime, /proc/PID/stat) is read around each run.

sysbench 1.0.20 has only on/off for TLS; `on` loads cacert.pem, client-cert.pem and
client-key.pem from its working directory (TESTING.md), so the direct route runs in a
directory holding the bundle and a clientAuth certificate, and the server gets the bundle as
ssl-ca to accept it. libmariadb checks the chain against cacert.pem; sysbench cannot ask it to
check the host name, so the direct route does slightly less than dbtrust's verify-full.
"""

import dataclasses
import os
import re
import shutil
from dataclasses import dataclass

from common import cpu_seconds, fx, log

USER, PASSWORD = fx.MY_NATIVE_USER, fx.MY_NATIVE_PASSWORD
DATABASE = fx.MY_APP_DATABASE
TESTS = ("oltp_point_select", "oltp_read_write")
ROUTE_ORDER = ("direct", "dbtrust", "dbtrust-unix", "haproxy-relay")


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
    pid: int = None  # the proxy process, for /proc readings


class TicketlessMariadb(BenchMariadb):
    """The same server sending no TLS 1.3 session tickets (OpenSSL's NumTickets = 0 through
    an OPENSSL_CONF of its own): every connection dbtrust opens to it is a full handshake.
    MariaDB resumes sessions otherwise, and dbtrust keeps a few tickets per worker, so a burst
    of connections is mostly resumptions; the memory section measures both."""

    def __init__(self, cert, client_ca, max_connections):
        super().__init__(cert, client_ca, max_connections)
        self.name = "maria-bench-ticketless"
        conf_dir = fx.make_temp_dir("openssl-no-tickets")
        os.chmod(conf_dir, 0o755)  # mariadbd reads it as the mysql user
        conf = os.path.join(conf_dir, "openssl.cnf")
        with open(conf, "w") as f:
            f.write("openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\n"
                    "system_default = no_tickets\n[no_tickets]\nNumTickets = 0\n")
        os.chmod(conf, 0o644)
        # The fixtures' command prefix: started as root with the variable set, mariadbd then
        # drops to the mysql user itself.
        self.launcher = ("env", f"OPENSSL_CONF={conf}")


def start_mariadb(pki, max_connections, tickets=True):
    log(f"starting MariaDB 10.11{'' if tickets else ' (no session tickets)'}")
    cls = BenchMariadb if tickets else TicketlessMariadb
    return cls(pki.leaf, pki.bundle, max_connections).start().provision_app_users()


def direct_route(pki, maria):
    """The direct TLS route: a working directory with the files sysbench --mysql-ssl=on reads."""
    workdir = fx.make_temp_dir("sysbench-direct")
    client = fx.make_client_cert(pki, name="bench-client")
    shutil.copy(pki.bundle, os.path.join(workdir, "cacert.pem"))
    shutil.copy(client.chain, os.path.join(workdir, "client-cert.pem"))
    shutil.copy(client.key, os.path.join(workdir, "client-key.pem"))
    return MyRoute("direct", maria.port, True, workdir)


def relay_route(direct, relay):
    """The client's own TLS (the direct route's files) through the byte relay's port."""
    return dataclasses.replace(direct, name="haproxy-relay", port=relay.port, pid=relay.pid)


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
        "transactions": number(r"^\s+transactions:\s+(\d+)\s+\(", int),
        "qps": number(r"^\s+queries:\s+\d+\s+\(([\d.]+) per sec"),
        "ignored_errors": number(r"^\s+ignored errors:\s+(\d+)", int),
        "reconnects": number(r"^\s+reconnects:\s+(\d+)", int),
        "p95_ms": number(r"^\s+95th percentile:\s+([\d.]+)"),
    }


def run_with_cpu(route, test, settings):
    """One sysbench run -> parse_run's figures, plus the route's proxy CPU per transaction
    (the whole run, its connections included) when it has a proxy process."""
    cpu0 = cpu_seconds(route.pid) if route.pid else None
    result = parse_run(sysbench(route, test, "run", settings).stdout)
    if cpu0 is not None and result["transactions"]:
        cpu = cpu_seconds(route.pid) - cpu0
        result["proxy_cpu_s"] = round(cpu, 3)
        result["proxy_cpu_us_per_tx"] = round(cpu / result["transactions"] * 1e6, 1)
    return result


def run_section(routes, m, settings):
    """prepare once (direct), then every test on every route that started. m: the section's
    Measurements; a route failing a run leaves a gap in the table, not a lost section."""
    log(f"sysbench prepare ({settings.sysbench_tables} tables x {settings.sysbench_table_size})")
    sysbench(routes["direct"], "oltp_read_write", "prepare", settings, threads=2)
    working = m.working(routes)
    for test in TESTS:
        for name, route in working.items():
            if name == "dbtrust-unix" and test != "oltp_point_select":
                continue  # the socket's effect shows on the lightest queries
            log(f"sysbench {test} --threads={settings.sysbench_threads} via {name}")
            m.attempt(name, test, lambda r=route, t=test: run_with_cpu(r, t, settings))
    results = {test: {name: loads[test] for name, loads in m.data.items() if test in loads}
               for test in TESTS}
    results["errors"] = m.failed()
    return results
