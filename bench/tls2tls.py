"""TLS->TLS: the central trust point's shape (README, "Central trust point"). The client speaks
TLS to the proxy, the proxy verifies the server (verify-full against the bundle) and relays:

    pgbench/psql --TLS, sslmode=require--> proxy --TLS, verify-full--> PostgreSQL

Two routes side by side, each its own process started for this section:
- dbtrust: one listener with `client_tls = require`, `client_cert`, `client_key`;
- pgbouncer: `client_tls_sslmode = require` with the same certificate and key, session pooling,
  `server_tls_sslmode = verify-full` (bench/peers.py).
The serving certificate comes from a small CA of its own ("bench front CA", in the run's PKI
directory): the CA an operator runs for the trust point, not the providers'. Each route is
checked once with verify-full against that CA (and the server's side of the session must be
TLS) before it is measured.

Loads, each route in turn: pgbench -S (persistent connections), pgbench -S -C (a connection per
transaction), COPY TO STDOUT through psql; the proxy's CPU (utime + stime from /proc/PID/stat)
is read around each. Both log in as the md5 user, like the other PostgreSQL routes.

A route that cannot start, fails its check or fails a load is recorded with its error and the
other route is still measured: the section's result holds per-route `errors`.
"""

import os
import re
import traceback

from common import BenchDbTrust, cpu_seconds, fx, log, median
import peers
import pg

ROUTES = ("dbtrust", "pgbouncer")
LISTENER = "pg-tls"
# A COPY row crosses the proxy as one CopyData message: 'd', int32 length, the row's text.
COPY_MESSAGE_BYTES = pg.COPY_ROW_BYTES + 5


class RouteFailed(Exception):
    pass


def compact(text, limit=600):
    """An error on one line for the report: non-empty lines joined, cut at `limit`."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    one = " | ".join(lines)
    return one if len(one) <= limit else one[:limit - 3] + "..."


def make_front_cert(pki):
    """The trust point's own CA and its serving leaf (DNS:localhost, IP:127.0.0.1); the leaf
    sits right under the root, so its chain file is the leaf alone."""
    root = pki.make_root("front-root", "dbtrust bench front CA")
    leaf = pki.make_leaf("front-leaf", "localhost", fx.LOCALHOST_SAN, root)
    return root, leaf


# -- the routes ---------------------------------------------------------------------------

def start_dbtrust(binary, bundle, pg_port, leaf, settings, workdir):
    options = {"client_tls": "require", "client_cert": leaf.chain, "client_key": leaf.key}
    dbtrust = BenchDbTrust(binary, bundle, [(LISTENER, "postgres", f"localhost:{pg_port}",
                                             options)],
                           workdir, workers=settings.workers, name="dbtrust-tls2tls")
    dbtrust.start()
    return dbtrust, pg.PgRoute("dbtrust", dbtrust.port(LISTENER), pid=dbtrust.pid,
                               client_tls=True)


def start_pgbouncer(bundle, pg_port, leaf, settings):
    bouncer = peers.Pgbouncer(bundle, pg_port, pg.DATABASE, pg.USER, pg.PASSWORD,
                              pool_size=settings.target_clients + 16, client_cert=leaf)
    bouncer.name = "pgbouncer-tls2tls"
    bouncer.start()
    return bouncer, pg.PgRoute("pgbouncer", bouncer.port, pid=bouncer.pid, client_tls=True)


def check_route(route, front_root):
    """One session with the client verifying the proxy (verify-full against the front CA):
    the client leg's protocol and cipher, and the server must see its own leg as TLS."""
    env = route.env()
    env.update(PGHOST="localhost", PGHOSTADDR="127.0.0.1", PGSSLMODE="verify-full",
               PGSSLROOTCERT=front_root.cert)
    proc = fx.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", "\\conninfo",
                   "-c", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"],
                  env=env, check=False)
    leg = re.search(r"SSL connection \(protocol: ([^,]+), cipher: ([^,]+),", proc.stdout)
    if proc.returncode != 0 or not leg or proc.stdout.strip().splitlines()[-1] != "t":
        raise RouteFailed(f"route {route.name} is not TLS on both legs (psql exit "
                          f"{proc.returncode}): {proc.stdout}{proc.stderr}")
    return {"protocol": leg.group(1), "cipher": leg.group(2)}


# -- the loads ----------------------------------------------------------------------------

def pgbench_with_cpu(route, clients, seconds, workdir, connect_each):
    cpu0 = cpu_seconds(route.pid)
    result = pg.run_pgbench(route, clients, seconds, workdir, connect_each=connect_each)
    cpu = cpu_seconds(route.pid) - cpu0
    result["proxy_cpu_s"] = round(cpu, 3)
    result["proxy_cpu_us_per_tx"] = round(cpu / result["transactions"] * 1e6, 1)
    return result


def copy_once(route, rows):
    cpu0 = cpu_seconds(route.pid)
    seconds = pg.copy_out(route, rows)
    return seconds, cpu_seconds(route.pid) - cpu0


def copy_summary(runs, cpu_s, rows):
    """Median MB/s of the COPY payload; CPU per GB of CopyData messages relayed (the same
    bytes on both routes, counted from the row count)."""
    megabytes = rows * pg.COPY_ROW_BYTES / 1e6
    relayed = rows * COPY_MESSAGE_BYTES * len(runs)
    return {"mb_per_s": round(megabytes / median(runs), 1), "runs_s": [round(x, 3) for x in runs],
            "megabytes": round(megabytes, 1), "cpu_s": round(cpu_s, 3), "bytes": relayed,
            "cpu_s_per_gb": round(cpu_s / (relayed / 1e9), 3)}


class Measurements:
    """Per route: the loads that worked, and an error for each one that did not."""

    def __init__(self, names):
        self.data = {name: {} for name in names}
        self.errors = {name: {} for name in names}

    def attempt(self, name, load, fn, record=True):
        """fn() for one route and load; its value is kept under `load` when `record`."""
        if "start" in self.errors[name] or "check" in self.errors[name]:
            return None
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - a failed route is reported, not fatal
            log(f"TLS->TLS: {name}: {load} failed:\n{traceback.format_exc()}")
            text = str(exc) if isinstance(exc, RouteFailed) else f"{type(exc).__name__}: {exc}"
            self.errors[name][load] = compact(text)
            return None
        if record and value is not None:
            self.data[name][load] = value
        return value

    def working(self, routes):
        return {name: route for name, route in routes.items()
                if not {"start", "check"} & set(self.errors[name])}


def run_loads(routes, m, settings, workdir):
    working = m.working(routes)
    if not working:
        return
    first = next(iter(working))
    log(f"TLS->TLS warm-up: pgbench -S via {first} (not recorded)")
    m.attempt(first, "warm-up", lambda: pg.run_pgbench(
        working[first], settings.target_clients, max(1, settings.seconds // 3), workdir),
        record=False)
    for name, route in working.items():
        log(f"TLS->TLS pgbench -S -c {settings.target_clients} via {name}")
        m.attempt(name, "select", lambda r=route: pgbench_with_cpu(
            r, settings.target_clients, settings.seconds, workdir, connect_each=False))
    for name, route in working.items():
        log(f"TLS->TLS pgbench -S -C -c {settings.connect_clients} via {name}")
        m.attempt(name, "connect", lambda r=route: pgbench_with_cpu(
            r, settings.connect_clients, settings.seconds, workdir, connect_each=True))
    log(f"TLS->TLS COPY of {settings.copy_rows} rows x {settings.copy_repeats} per route")
    runs = {name: [] for name in working}
    cpu = {name: 0.0 for name in working}
    for _ in range(settings.copy_repeats):  # routes interleaved, as in the pg section
        for name, route in working.items():
            if "copy" in m.errors[name]:
                continue
            done = m.attempt(name, "copy", lambda r=route: copy_once(r, settings.copy_rows),
                             record=False)
            if done:
                runs[name].append(done[0])
                cpu[name] += done[1]
    for name in working:
        if runs[name] and "copy" not in m.errors[name]:
            m.data[name]["copy"] = copy_summary(runs[name], cpu[name], settings.copy_rows)


# -- the section ----------------------------------------------------------------------------

def run_section(binary, pki, pg_server, settings, workdir):
    """Both TLS->TLS routes; returns {routes: {name: loads}, errors: {name: {load: text}},
    client_leg: {name: {protocol, cipher}}, ...}. Never raises for one route's failure."""
    log("TLS->TLS: front CA and serving certificate")
    front_root, leaf = make_front_cert(pki)
    m = Measurements(ROUTES)
    routes, processes, client_leg = {}, [], {}
    starters = {
        "dbtrust": lambda: start_dbtrust(binary, pki.bundle, pg_server.port, leaf, settings,
                                         workdir),
        "pgbouncer": lambda: start_pgbouncer(pki.bundle, pg_server.port, leaf, settings),
    }
    try:
        for name in ROUTES:
            log(f"TLS->TLS: starting {name} with a TLS client leg")
            started = m.attempt(name, "start", starters[name], record=False)
            if started:
                processes.append(started[0])
                routes[name] = started[1]
        for name, route in routes.items():
            leg = m.attempt(name, "check", lambda r=route: check_route(r, front_root),
                            record=False)
            if leg:
                client_leg[name] = leg
        run_loads(routes, m, settings, workdir)
    finally:
        for process in processes:
            process.stop()
    return {"routes": m.data, "errors": {n: e for n, e in m.errors.items() if e},
            "client_leg": client_leg, "clients": settings.target_clients,
            "connect_clients": settings.connect_clients, "front_ca": front_root.cert,
            "serving_cert": leaf.chain}
