"""Scaling (issue 6 item 4): pgbench -S throughput and dbtrust's resident memory at 1, 10, 100
and 1000 connections, for each worker count, next to direct verify-full at the same count.
Each worker count gets a fresh dbtrust; RSS is the peak sampled while pgbench runs; close_s
is how long dbtrust still had connections open after pgbench exited.
"""

from common import BenchDbTrust, RssSampler, log, rss_kib
import pg


def run_section(binary, bundle, pg_server, direct_route, settings, workdir):
    results = {"direct": {}, "dbtrust": {}}
    for count in settings.scaling_counts:
        log(f"scaling: direct, {count} connections")
        results["direct"][count] = pg.run_pgbench(direct_route, count, settings.seconds, workdir)
    for workers in settings.scaling_workers:
        dbtrust = BenchDbTrust(binary, bundle, [("pg", "postgres", f"localhost:{pg_server.port}")],
                               workdir, workers=workers, name=f"dbtrust-w{workers}").start()
        route = pg.PgRoute(f"dbtrust-w{workers}", dbtrust.port("pg"), pid=dbtrust.pid)
        per_count = {}
        results["dbtrust"][workers] = {"rss_start_kib": rss_kib(dbtrust.pid),
                                       "runs": per_count}
        try:
            for count in settings.scaling_counts:
                log(f"scaling: dbtrust workers={workers}, {count} connections")
                with RssSampler(dbtrust.pid) as rss:
                    run = pg.run_pgbench(route, count, settings.seconds, workdir)
                run["rss_peak_kib"] = rss.peak_kib
                run["close_s"] = dbtrust.wait_idle("pg")
                per_count[count] = run
        finally:
            dbtrust.stop()
    return results
