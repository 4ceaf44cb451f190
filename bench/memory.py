"""Resident memory per idle proxied connection: a fresh dbtrust, N logged-in connections that
then sit idle, (RSS with them - RSS before) / N. The connections are opened 8 at a time (a
backend start costs tens of milliseconds); a few are opened and closed first so that one-time
allocations (buffer pools, TLS session cache) are not counted as per-connection cost.
"""

import concurrent.futures
import time

import psycopg2
import pymysql

from common import BenchDbTrust, log, rss_kib
import mysql as my
import pg

PARALLEL_CONNECTS = 8
WARM_UP_CONNECTIONS = 8


def pg_connect(port):
    return psycopg2.connect(host="127.0.0.1", port=port, user=pg.USER, password=pg.PASSWORD,
                            dbname=pg.DATABASE, sslmode="disable", connect_timeout=60,
                            application_name="bench-idle")


def my_connect(port):
    return pymysql.connect(host="127.0.0.1", port=port, user=my.USER, password=my.PASSWORD,
                           database=my.DATABASE, ssl_disabled=True, connect_timeout=60,
                           program_name="bench-idle")


def open_connections(connect, port, count):
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_CONNECTS) as pool:
        return list(pool.map(lambda _: connect(port), range(count)))


def close_all(connections):
    for conn in connections:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def per_idle_connection(dbtrust, listener, connect, count):
    """{count, rss_before_kib, rss_after_kib, kib_per_connection} for one listener."""
    close_all(open_connections(connect, dbtrust.port(listener), WARM_UP_CONNECTIONS))
    time.sleep(0.5)
    before = rss_kib(dbtrust.pid)
    connections = open_connections(connect, dbtrust.port(listener), count)
    try:
        time.sleep(1.0)  # let every connection reach its idle state
        after = rss_kib(dbtrust.pid)
    finally:
        close_all(connections)
    return {"count": count, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_connection": round((after - before) / count, 2),
            "close_s": dbtrust.wait_idle(listener)}


def run_section(binary, bundle, pg_server, maria, settings, workdir):
    """Both protocols on one fresh dbtrust (workers as in the comparison)."""
    listeners = [("pg", "postgres", f"localhost:{pg_server.port}")]
    if maria is not None:
        listeners.append(("my", "mysql", f"localhost:{maria.port}"))
    dbtrust = BenchDbTrust(binary, bundle, listeners, workdir, workers=settings.workers,
                           name="dbtrust-memory").start()
    try:
        results = {}
        log(f"{settings.idle_connections} idle PostgreSQL connections through dbtrust")
        results["pg"] = per_idle_connection(dbtrust, "pg", pg_connect, settings.idle_connections)
        if maria is not None:
            log(f"{settings.idle_connections} idle MariaDB connections through dbtrust")
            results["mysql"] = per_idle_connection(dbtrust, "my", my_connect,
                                                   settings.idle_connections)
        results["rss_after_close_kib"] = rss_kib(dbtrust.pid)
        # dbtrust hands freed heap back at its next idle sweep (every 10 s).
        time.sleep(1 if settings.smoke else 11)
        results["rss_settled_kib"] = rss_kib(dbtrust.pid)
        return results
    finally:
        dbtrust.stop()
