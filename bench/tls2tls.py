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

import re

from common import BenchDbTrust, Measurements, RouteFailed, fx, log
import peers
import pg

ROUTES = ("dbtrust", "pgbouncer")
LISTENER = "pg-tls"


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
        m.attempt(name, "select", lambda r=route: pg.pgbench_with_cpu(
            r, settings.target_clients, settings.seconds, workdir))
    for name, route in working.items():
        log(f"TLS->TLS pgbench -S -C -c {settings.connect_clients} via {name}")
        m.attempt(name, "connect", lambda r=route: pg.pgbench_with_cpu(
            r, settings.connect_clients, settings.seconds, workdir, connect_each=True))
    log(f"TLS->TLS COPY of {settings.copy_rows} rows x {settings.copy_repeats} per route")
    pg.measure_copy(working, m, settings.copy_rows, settings.copy_repeats)  # interleaved


# -- the section ----------------------------------------------------------------------------

def run_section(binary, pki, pg_server, settings, workdir):
    """Both TLS->TLS routes; returns {routes: {name: loads}, errors: {name: {load: text}},
    client_leg: {name: {protocol, cipher}}, ...}. Never raises for one route's failure."""
    log("TLS->TLS: front CA and serving certificate")
    front_root, leaf = make_front_cert(pki)
    m = Measurements(ROUTES, "TLS->TLS")
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
    return {"routes": m.data, "errors": m.failed(),
            "client_leg": client_leg, "clients": settings.target_clients,
            "connect_clients": settings.connect_clients, "front_ca": front_root.cert,
            "serving_cert": leaf.chain}
