"""Scaling (issue 6 item 4, issue 19 item 4): pgbench -S throughput, dbtrust's resident memory
and its CPU per transaction at 100, 500, 1000 and 2000 concurrent sessions on one server, for
each worker count, next to direct verify-full at the same count.

pgbench's -T clock runs while its threads connect their clients one after the other, which
at 2000 sessions on a busy 2-core box can take minutes: each route keeps the connect time per
client of its last run and gives the next count twice that as -T allowance (and runs it again
with more when the connections still used up the whole run).

Each worker count gets a fresh dbtrust. RSS is the peak sampled while pgbench runs; close_s is
how long dbtrust still had connections open after pgbench exited. CPU per transaction is read
over the steady state only: from the moment dbtrust holds all the sessions
(dbtrust_connections_active) to the last sample before pgbench's last transaction, against
the transactions pgbench logged as ended in that window (its -l log). The connection phase
(a TLS handshake each, milliseconds of CPU) would otherwise dwarf the per-query cost at 2000
sessions and hide whether that cost stays flat. `flatness` compares the smallest count from
100 up (the base) with the largest: RSS per added session and the CPU/transaction ratio.

With every session busy, the server's own throughput falls as its backends multiply (fewer
queries per wakeup for every process on the box), which moves dbtrust's CPU per transaction
for reasons that are not dbtrust's. The `held` runs separate the two: the same number of
sessions open through dbtrust, all but `target_clients` of them logged in and idle, and
pgbench -S on the remaining ones. If a connection costs dbtrust only its memory, the CPU per
transaction stays flat from 100 to 2000 sessions and RSS grows by one idle session's size.
"""

import math
import time

from common import BenchDbTrust, RssSampler, Sampler, cpu_seconds, log, rss_kib
import memory
import pg

FLAT_BASE = 100  # the flatness line starts here when the run has that count


class SteadyCpu(Sampler):
    """Samples a dbtrust's CPU (epoch time, CPU seconds) every `interval` s once it holds
    `count` connections on `listener`; window() turns the samples into CPU per transaction."""

    def __init__(self, dbtrust, listener, count, interval=0.25):
        super().__init__(interval)
        self.dbtrust, self.listener, self.count = dbtrust, listener, count
        self.connected_at = None
        self.samples = []

    def _all_connected(self):
        try:
            return self.dbtrust.metric("dbtrust_connections_active", self.listener) >= self.count
        except OSError:
            return False

    def sample(self):
        if self.connected_at is None:
            if self._all_connected():  # the scrape itself is not in the window
                self.connected_at = time.time()
        else:
            self.samples.append((time.time(), cpu_seconds(self.dbtrust.pid)))
        return True

    def window(self, end_times):
        """{steady_s, steady_transactions, cpu_us_per_tx} between the first sample and the last
        one before the final transaction (the disconnects after it are not steady state);
        None values when there was no such window."""
        empty = {"steady_s": None, "steady_transactions": None, "cpu_us_per_tx": None}
        if not end_times or len(self.samples) < 2:
            return empty
        last_tx = max(end_times)
        inside = [s for s in self.samples if s[0] <= last_tx - self.interval]
        if len(inside) < 2:
            return empty
        (t0, cpu0), (t1, cpu1) = inside[0], inside[-1]
        n = sum(t0 < t <= t1 for t in end_times)
        if n == 0:
            return empty
        return {"steady_s": round(t1 - t0, 2), "steady_transactions": n,
                "cpu_us_per_tx": round((cpu1 - cpu0) / n * 1e6, 1)}


class ConnectPace:
    """How long pgbench takes per client and thread to connect on one route, learnt from its
    last run (0.1 s before any): the -T allowance for the next count."""

    MARGIN = 2.0

    def __init__(self):
        self.per_client_s = 0.1

    def allowance(self, clients):
        per_thread = clients / pg.pgbench_threads(clients)
        return math.ceil(self.per_client_s * per_thread * self.MARGIN)

    def learn(self, clients, run):
        # pgbench 15's "initial connection time" is the sum over its threads: per client, it
        # is that over all the clients.
        if run.get("connect_ms"):
            self.per_client_s = max(0.005, run["connect_ms"] / 1000 / clients)

    def run(self, route, clients, seconds, workdir, **kwargs):
        """run_pgbench with this route's allowance; once more with a larger one when the
        connections used up the run. kwargs: end_times (a list, emptied before a retry)."""
        allowance = self.allowance(clients)
        try:
            result = pg.run_pgbench(route, clients, seconds, workdir, latency_log=True,
                                    allowance=allowance, **kwargs)
        except pg.NoTransactions:
            per_thread = clients / pg.pgbench_threads(clients)
            # Connecting took longer than the whole -T: at least that much per client.
            self.per_client_s = max(self.per_client_s * 3, (seconds + allowance) / per_thread)
            log(f"scaling: {route.name}, {clients} connections: connecting outlasted -T "
                f"{seconds + allowance}; again with an allowance of {self.allowance(clients)} s")
            if kwargs.get("end_times") is not None:
                kwargs["end_times"].clear()
            result = pg.run_pgbench(route, clients, seconds, workdir, latency_log=True,
                                    allowance=self.allowance(clients), **kwargs)
        self.learn(clients, result)
        return result


def run_dbtrust_count(dbtrust, route, pace, count, settings, workdir):
    """One pgbench -S run through dbtrust: tps, peak RSS, steady-state CPU, close time."""
    end_times = []
    with RssSampler(dbtrust.pid) as rss, SteadyCpu(dbtrust, "pg", count) as cpu:
        run = pace.run(route, count, settings.seconds, workdir, end_times=end_times)
    run.update(cpu.window(end_times))
    run["rss_peak_kib"] = rss.peak_kib
    run["close_s"] = dbtrust.wait_idle("pg")
    return run


def run_held_count(dbtrust, route, count, active, settings, workdir):
    """count sessions through dbtrust, all but `active` idle: pgbench -S on the active ones,
    dbtrust's CPU per transaction over the whole pgbench run, and its RSS with them all."""
    active = min(active, count)
    held = memory.open_connections(memory.pg_connect, route.port, count - active)
    try:
        with RssSampler(dbtrust.pid) as rss:
            run = pg.pgbench_with_cpu(route, active, settings.seconds, workdir)
        run["cpu_us_per_tx"] = run.get("proxy_cpu_us_per_tx")
        run["rss_peak_kib"] = rss.peak_kib
        run["held"], run["active"] = count - active, active
    finally:
        memory.close_all(held)
    dbtrust.wait_idle("pg")
    return run


def flatness(runs):
    """Cost per connection from the base count (FLAT_BASE if measured, else the smallest) to
    the largest: RSS per added session and CPU/transaction at the top over the base."""
    counts = sorted(runs)
    base = FLAT_BASE if FLAT_BASE in runs else counts[0]
    top = counts[-1]
    if top == base:
        return None
    lo, hi = runs[base], runs[top]
    kib = (hi["rss_peak_kib"] - lo["rss_peak_kib"]) / (top - base)
    cpu_lo, cpu_hi = lo.get("cpu_us_per_tx"), hi.get("cpu_us_per_tx")
    return {"from": base, "to": top, "rss_kib_per_connection": round(kib, 2),
            "cpu_per_tx_ratio": round(cpu_hi / cpu_lo, 3) if cpu_lo and cpu_hi else None}


def run_section(binary, bundle, pg_server, direct_route, settings, workdir):
    results = {"direct": {}, "dbtrust": {}}
    pace = ConnectPace()
    for count in settings.scaling_counts:
        log(f"scaling: direct, {count} connections")
        results["direct"][count] = pace.run(direct_route, count, settings.seconds, workdir)
    for workers in settings.scaling_workers:
        dbtrust = BenchDbTrust(binary, bundle, [("pg", "postgres", f"localhost:{pg_server.port}")],
                               workdir, workers=workers, name=f"dbtrust-w{workers}").start()
        route = pg.PgRoute(f"dbtrust-w{workers}", dbtrust.port("pg"), pid=dbtrust.pid)
        per_count, per_held, pace = {}, {}, ConnectPace()
        results["dbtrust"][workers] = {"rss_start_kib": rss_kib(dbtrust.pid),
                                       "runs": per_count, "held": per_held}
        try:
            for count in settings.scaling_counts:
                log(f"scaling: dbtrust workers={workers}, {count} connections")
                per_count[count] = run_dbtrust_count(dbtrust, route, pace, count, settings,
                                                     workdir)
            for count in settings.scaling_counts:
                log(f"scaling: dbtrust workers={workers}, {count} sessions, "
                    f"{settings.target_clients} of them busy")
                per_held[count] = run_held_count(dbtrust, route, count, settings.target_clients,
                                                 settings, workdir)
        finally:
            dbtrust.stop()
        results["dbtrust"][workers]["flatness"] = flatness(per_count)
        results["dbtrust"][workers]["held_flatness"] = flatness(per_held)
    return results
