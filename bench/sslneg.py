"""sslnegotiation: what direct TLS on the upstream leg saves per new connection.

    pgbench -S -C --plaintext--> dbtrust --TLS, verify-full--> PostgreSQL 17 / 18

For each of PostgreSQL 17 and 18 (the npm builds of scripts/install-deps test), one dbtrust
holds two listeners to the same server: `sslnegotiation = postgres` (SSLRequest, 'S', then the
TLS handshake) and `sslnegotiation = direct` (the ClientHello first: one round trip less). A
connection per transaction (-C) makes the negotiation part of every transaction; both routes
log in as the md5 user, like the other PostgreSQL routes. The two listeners of a server are
measured back to back, twice, in alternating order, and the tps of each is the mean of its
two runs, so a drift of the box's load does not favour the one measured first.
"""

from common import BenchDbTrust, cpu_seconds, fx, log
import pg

MAJORS = (17, 18)
MODES = ("postgres", "direct")


def start_server(major, pki, max_connections, workdir):
    """The npm PostgreSQL `major`, TLS-only, with the fixtures' roles and pgbench's tables
    (scale 1: -S -C measures connections, not the table)."""
    log(f"sslnegotiation: starting PostgreSQL {major}")
    server = fx.embedded_postgres_server(major, pki.leaf, f"pg{major}-sslneg",
                                         settings={"max_connections": max_connections})
    server.start().provision_app_roles()
    owner = pg.PgRoute("direct", server.port, direct=True, bundle=pki.bundle)
    fx.run(["pgbench", "-i", "-q", "-s", "1"], timeout=300, cwd=workdir,
           env=owner.env(fx.PG_APP_USER, fx.PG_APP_PASSWORD))
    fx.run(["psql", server.admin_dsn(pg.DATABASE), "-X", "-q", "-c",
            f"grant select on all tables in schema public to {pg.USER}"], env=fx.clean_env())
    return server


def measure(route, clients, seconds, workdir):
    cpu0 = cpu_seconds(route.pid)
    result = pg.run_pgbench(route, clients, seconds, workdir, connect_each=True)
    cpu = cpu_seconds(route.pid) - cpu0
    result["proxy_cpu_us_per_tx"] = round(cpu / result["transactions"] * 1e6, 1)
    return result


def mean_of(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(sum(values) / len(values), 2) if values else None


def run_section(binary, pki, settings, workdir):
    """{majors: {17: {postgres: {...}, direct: {...}, ratio}, 18: ...}, clients, seconds}."""
    clients, seconds = settings.sslneg_clients, settings.sslneg_seconds
    servers = {m: start_server(m, pki, clients * 4 + 20, workdir) for m in MAJORS}
    listeners = [(f"pg{m}-{mode}", "postgres", f"localhost:{servers[m].port}",
                  {"sslnegotiation": mode}) for m in MAJORS for mode in MODES]
    dbtrust = BenchDbTrust(binary, pki.bundle, listeners, workdir, workers=settings.workers,
                           name="dbtrust-sslneg").start()
    out = {"clients": clients, "seconds": seconds, "majors": {}}
    try:
        for major in MAJORS:
            routes = {mode: pg.PgRoute(f"pg{major}-{mode}", dbtrust.port(f"pg{major}-{mode}"),
                                       pid=dbtrust.pid) for mode in MODES}
            for route in routes.values():
                pg.check_route(route)
            runs = {mode: [] for mode in MODES}
            for order in (MODES, tuple(reversed(MODES))):
                for mode in order:
                    log(f"sslnegotiation: pgbench -S -C -c {clients} -T {seconds}, PostgreSQL "
                        f"{major}, sslnegotiation = {mode}")
                    runs[mode].append(measure(routes[mode], clients, seconds, workdir))
            result = {mode: {"tps": mean_of(runs[mode], "tps"),
                             "connect_ms": mean_of(runs[mode], "connect_ms"),
                             "proxy_cpu_us_per_tx": mean_of(runs[mode], "proxy_cpu_us_per_tx"),
                             "runs_tps": [r["tps"] for r in runs[mode]]} for mode in MODES}
            direct, postgres = result["direct"]["tps"], result["postgres"]["tps"]
            result["ratio"] = round(direct / postgres, 3) if direct and postgres else None
            out["majors"][major] = result
    finally:
        dbtrust.stop()
        for server in servers.values():
            server.stop()
    return out
