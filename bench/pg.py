"""PostgreSQL part of the bench: the server, the routes a client can take to it, and the loads
(pgbench -S persistent and -C, a bulk COPY TO STDOUT), measured on every route, with the CPU
each route's proxy process spent on them (utime + stime from /proc/PID/stat around each load).

Every route logs in as the fixtures' md5 user: stunnel cannot pass SCRAM (TESTING.md), and one
authentication method everywhere keeps the connect-per-transaction numbers comparable.
"""

import glob
import os
import re
import subprocess
from dataclasses import dataclass

from common import RouteFailed, cpu_seconds, fx, log, median, percentile

USER, PASSWORD = fx.PG_MD5_USER, fx.PG_MD5_PASSWORD
DATABASE = fx.PG_APP_DATABASE
# haproxy-relay: the floor (issue 19), a byte relay with the client's own TLS through it.
ROUTE_ORDER = ("direct", "dbtrust", "haproxy-relay", "stunnel", "pgbouncer")


class BenchPostgres(fx.PostgresServer):
    """The fixtures' TLS-only cluster, with room for the bench's 1000 idle connections."""

    def __init__(self, cert, max_connections):
        super().__init__(cert, "pg-bench")
        self.max_connections = max_connections

    def _write_config(self):
        super()._write_config()
        # A later line wins in postgresql.conf: this overrides the fixtures' 100.
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"\n# bench\nmax_connections = {self.max_connections}\n"
                    "shared_buffers = 512MB\n")  # pgbench scale 10 fits in it

    def admin_psql_db(self, database, *commands):
        cmd = ["psql", self.admin_dsn(database), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        for c in commands:
            cmd += ["-c", c]
        return fx.run(cmd, env=fx.clean_env()).stdout


@dataclass
class PgRoute:
    """How a client reaches the server: `direct` means libpq itself does verify-full against
    the bundle (the direct route, and the byte relay whose port it then dials); every other
    route is a plaintext loopback leg to a verifying proxy."""
    name: str
    port: int
    direct: bool = False
    bundle: str = None
    pid: int = None  # the proxy process, for /proc readings
    client_tls: bool = False  # TLS on the client leg too (the TLS->TLS comparison)

    def libpq_params(self, user=USER, password=PASSWORD):
        params = {"host": "127.0.0.1", "port": self.port, "user": user, "password": password,
                  "dbname": DATABASE, "sslmode": "disable", "connect_timeout": 30}
        if self.client_tls:
            # Encrypt to the proxy without verifying it (what the comparison times); the
            # section checks the served certificate once with verify-full. channel_binding:
            # dbtrust offers no SCRAM-PLUS, and libpq's 'prefer' would announce gs2 'y' on a
            # SCRAM login, which dbtrust refuses. The md5 user makes it moot; spelled out so a
            # switch to a SCRAM user keeps working through both proxies.
            params.update(sslmode="require", channel_binding="disable")
        if self.direct:
            # host names the certificate; hostaddr skips a resolver call per connection.
            params.update(host="localhost", hostaddr="127.0.0.1", sslmode="verify-full",
                          sslrootcert=self.bundle)
        return params

    def env(self, user=USER, password=PASSWORD):
        names = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "user": "PGUSER",
                 "password": "PGPASSWORD", "dbname": "PGDATABASE", "sslmode": "PGSSLMODE",
                 "sslrootcert": "PGSSLROOTCERT", "connect_timeout": "PGCONNECT_TIMEOUT",
                 "channel_binding": "PGCHANNELBINDING"}
        return fx.clean_env(**{names[k]: v for k, v in self.libpq_params(user, password).items()})

    def dsn(self):
        return fx.pg_conninfo(**self.libpq_params())


def start_postgres(pki, max_connections, scale, workdir):
    """Cluster + roles (fixtures), pgbench tables at `scale` built once directly by their
    owner, read access for the md5 user."""
    log("starting PostgreSQL 15")
    pg = BenchPostgres(pki.leaf, max_connections).start().provision_app_roles()
    owner = PgRoute("direct", pg.port, direct=True, bundle=pki.bundle)
    log(f"pgbench -i -s {scale}")
    fx.run(["pgbench", "-i", "-q", "-s", str(scale)], timeout=600, cwd=workdir,
           env=owner.env(fx.PG_APP_USER, fx.PG_APP_PASSWORD))
    pg.admin_psql_db(DATABASE, f"grant select, insert, update on all tables in schema public "
                               f"to {USER}")
    return pg


def check_route(route):
    """One query through the route, asking the server whether its leg is TLS: a route that
    would silently run in plaintext must not produce a number."""
    proc = fx.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c",
                   "select ssl from pg_stat_ssl where pid = pg_backend_pid()"],
                  env=route.env(), check=False)
    if proc.returncode != 0 or proc.stdout.strip() != "t":
        raise RouteFailed(f"route {route.name} does not reach the server over TLS: "
                           f"{proc.stdout}{proc.stderr}")


# -- pgbench -------------------------------------------------------------------------------

def pgbench_threads(clients):
    return min(clients, os.cpu_count() or 2)


class NoTransactions(RuntimeError):
    """pgbench ran but completed no transaction: connecting its clients used up all of -T."""


def run_pgbench(route, clients, seconds, workdir, connect_each=False, latency_log=False,
                end_times=None, allowance=None):
    """pgbench -S (-C) on a route -> {tps, failed, connect_ms[, p50_us, p99_us, mean_us,
    samples]}. end_times: a list that gets each transaction's end (epoch seconds; implies
    the latency log).

    pgbench's -T clock starts before its clients connect, and each thread connects its clients
    one after the other (~40 ms per TLS backend start here): 1000 clients would use up a 15 s
    run before the first transaction. So -T gets an allowance of 0.1 s per client and thread,
    rounded to whole seconds (none up to 4 clients a thread: a smoke run stays short), unless
    the caller gives its own (whole seconds); the tps pgbench reports leaves the initial
    connection time out. NoTransactions when the connections took all the time there was."""
    threads = pgbench_threads(clients)
    if allowance is None:
        allowance = 0 if connect_each else int(clients / threads * 0.1 + 0.5)
    cmd = ["pgbench", "-n", "-S", "-c", str(clients), "-j", str(threads),
           "-T", str(seconds + allowance)]
    if connect_each:
        cmd.append("-C")
    prefix = os.path.join(workdir, f"pgbench-{route.name}-c{clients}")
    latency_log = latency_log or end_times is not None
    if latency_log:
        cmd += ["-l", f"--log-prefix={prefix}"]
    proc = fx.run(cmd, check=False, timeout=(seconds + allowance) * 4 + 300, cwd=workdir,
                  env=route.env())
    tps = re.search(r"^tps = ([\d.]+)", proc.stdout, re.M)
    processed = re.search(r"^number of transactions actually processed: (\d+)", proc.stdout, re.M)
    if proc.returncode == 0 and processed and processed.group(1) == "0":
        read_latency_logs(prefix)  # removes the empty logs
        raise NoTransactions(f"pgbench on {route.name}: {clients} clients, -T "
                             f"{seconds + allowance}: no transaction")
    if proc.returncode != 0 or not tps or not processed or processed.group(1) == "0":
        raise RuntimeError(f"pgbench on {route.name} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
    connect = re.search(r"^(?:initial|average) connection time = ([\d.]+) ms", proc.stdout, re.M)
    result = {"tps": float(tps.group(1)), "failed": int(failed.group(1)) if failed else 0,
              "connect_ms": float(connect.group(1)) if connect else None,
              "transactions": int(processed.group(1))}
    if latency_log:
        result.update(read_latency_logs(prefix, end_times))
    return result


def read_latency_logs(prefix, end_times=None):
    """Percentiles of pgbench's per-transaction logs (3rd column: latency in µs; 5th and 6th:
    when it ended, epoch seconds and µs, appended to end_times when given); the log files are
    removed afterwards."""
    latencies = []
    for path in glob.glob(prefix + ".*"):
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append(int(fields[2]))
                    if end_times is not None and len(fields) >= 6:
                        end_times.append(int(fields[4]) + int(fields[5]) / 1e6)
        os.unlink(path)
    latencies.sort()
    return {"p50_us": percentile(latencies, 50), "p99_us": percentile(latencies, 99),
            "mean_us": round(sum(latencies) / len(latencies), 1) if latencies else None,
            "samples": len(latencies)}


def pgbench_with_cpu(route, clients, seconds, workdir, connect_each=False, latency_log=False):
    """run_pgbench, plus the route's proxy CPU over the whole run (connections included) when
    it has a proxy process: proxy_cpu_s and proxy_cpu_us_per_tx."""
    cpu0 = cpu_seconds(route.pid) if route.pid else None
    result = run_pgbench(route, clients, seconds, workdir, connect_each=connect_each,
                         latency_log=latency_log)
    if cpu0 is not None:
        cpu = cpu_seconds(route.pid) - cpu0
        result["proxy_cpu_s"] = round(cpu, 3)
        result["proxy_cpu_us_per_tx"] = round(cpu / result["transactions"] * 1e6, 1)
    return result


# -- COPY TO STDOUT -------------------------------------------------------------------------

COPY_ROW_BYTES = 1001  # repeat('x', 1000) + newline in COPY text format
# A COPY row crosses a proxy as one CopyData message: 'd', int32 length, the row's text.
COPY_MESSAGE_BYTES = COPY_ROW_BYTES + 5


def copy_sql(rows):
    return f"COPY (SELECT repeat('x', 1000) FROM generate_series(1, {rows})) TO STDOUT"


def copy_out(route, rows):
    """One bulk COPY through psql, output to /dev/null; seconds of the COPY statement itself
    (psql's \\timing, so the connection set-up is not part of it)."""
    proc = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null",
                           "-c", "\\timing on", "-c", copy_sql(rows)],
                          capture_output=True, text=True, timeout=900, env=route.env())
    m = re.search(r"^Time: ([\d.]+) ms", proc.stdout, re.M)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"COPY on {route.name} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return float(m.group(1)) / 1000


def copy_with_cpu(route, rows):
    """One COPY -> (seconds, CPU seconds of the route's proxy or None), CPU read right around
    the COPY."""
    cpu0 = cpu_seconds(route.pid) if route.pid else None
    seconds = copy_out(route, rows)
    return seconds, None if cpu0 is None else cpu_seconds(route.pid) - cpu0


def copy_summary(runs, cpu_s, rows):
    """Median MB/s of the COPY payload; the proxy's CPU per GB of CopyData messages relayed
    (counted from the row count: the same bytes on every route, plaintext or not), None
    without a proxy."""
    megabytes = rows * COPY_ROW_BYTES / 1e6
    relayed = rows * COPY_MESSAGE_BYTES * len(runs)
    out = {"mb_per_s": round(megabytes / median(runs), 1), "runs_s": [round(x, 3) for x in runs],
           "megabytes": round(megabytes, 1)}
    if cpu_s is not None:
        out.update(cpu_s=round(cpu_s, 3), bytes=relayed,
                   cpu_s_per_gb=round(cpu_s / (relayed / 1e9), 3))
    return out


def measure_copy(routes, m, rows, repeats, load="copy"):
    """COPY `repeats` times per route, routes interleaved so slow drift hits all alike; each
    route's copy_summary under m.data[route][load] (a route whose COPY failed once has none)."""
    runs = {name: [] for name in routes}
    cpu = {name: 0.0 if route.pid else None for name, route in routes.items()}
    for _ in range(repeats):
        for name, route in routes.items():
            if load in m.errors[name]:
                continue
            done = m.attempt(name, load, lambda r=route: copy_with_cpu(r, rows), record=False)
            if done:
                runs[name].append(done[0])
                if done[1] is not None:
                    cpu[name] += done[1]
    for name in routes:
        if runs[name] and load not in m.errors[name]:
            m.data[name][load] = copy_summary(runs[name], cpu[name], rows)


# -- the section -----------------------------------------------------------------------------

def run_section(routes, m, settings, workdir):
    """All PostgreSQL comparisons on all routes. m: the section's Measurements, holding the
    routes that could not even start. Returns {select: {clients: {route: ...}}, connect,
    copy, errors}; a route that fails its check or a load leaves a gap, not a lost section."""
    for name, route in routes.items():
        m.attempt(name, "check", lambda r=route: check_route(r), record=False)
    working = m.working(routes)
    if not working:
        raise RuntimeError(f"no PostgreSQL route works: {m.failed()}")
    first = "direct" if "direct" in working else next(iter(working))
    log(f"warm-up: pgbench -S via {first} (not recorded)")
    m.attempt(first, "warm-up", lambda: run_pgbench(
        working[first], settings.target_clients, max(1, settings.seconds // 3), workdir),
        record=False)
    for clients in settings.clients:
        for name, route in working.items():
            log(f"pgbench -S -c {clients} via {name}")
            m.attempt(name, f"select c{clients}", lambda r=route, c=clients: pgbench_with_cpu(
                r, c, settings.seconds, workdir, latency_log=True))
    for name, route in working.items():
        log(f"pgbench -S -C -c {settings.connect_clients} via {name}")
        m.attempt(name, "connect", lambda r=route: pgbench_with_cpu(
            r, settings.connect_clients, settings.seconds, workdir, connect_each=True))
    log(f"COPY of {settings.copy_rows} rows x {settings.copy_repeats} per route")
    measure_copy(working, m, settings.copy_rows, settings.copy_repeats)
    return {"select": {c: by_route(m, f"select c{c}") for c in settings.clients},
            "connect": by_route(m, "connect"), "copy": by_route(m, "copy"),
            "errors": m.failed()}


def by_route(m, load):
    """{route: value} of one load, in route order, for the routes that produced it."""
    return {name: loads[load] for name, loads in m.data.items() if load in loads}
