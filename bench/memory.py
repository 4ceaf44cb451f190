"""Memory: what a connection costs dbtrust in each state it can be held in, and what a flood of
hostile connections does to it (issue 6's idle figure, issue 14's per-state costs and storm).

1. Logged-in idle connections (issues 6 and 19): a fresh dbtrust per measurement,
   `idle_connections` (1000) logged-in connections that then sit idle, (RSS with them - RSS
   before) / N. They are opened as fast as the client can: 64 connects in flight (each thread
   blocks in its connect; more would only queue behind the server's backend starts); a few are
   opened and closed first so that one-time allocations (buffer pools, TLS session cache) are
   not counted. No resumption luck: the upstream handshakes dbtrust resumed are counted
   (dbtrust_upstream_tls_resumed_total). PostgreSQL sends no session tickets (every
   connection is a full handshake); MariaDB does, so it is measured twice: against a second
   MariaDB that sends none (the target's figure: every connection a full handshake) and
   against the bench's own (resumed, as in production). Then the PostgreSQL ones are closed
   at once: RSS right after, and after dbtrust's next idle sweep.

2. Per-state cost (issue 14): for each state a fresh dbtrust, `state_warmup` connections of the
   state opened first and kept (one-time allocations are not counted), VmRSS (median of 3
   readings), then `state_connections` (2000) more held at once in that state; cost = (VmRSS
   with them - before) / N, once dbtrust holds their descriptors (/proc/PID/fd) and after 1 s of
   settling. Every connection must still be open when measured (else the figure would be
   another state's); the report says how many reached the state and stayed. States:
     idle TCP               PostgreSQL listener, connected, nothing sent
     partial startup        PostgreSQL listener, the StartupMessage's 4-byte length word only
     MySQL greeted          dbtrust dialled MariaDB and sent the client its greeting; the
                            client never answers (dbtrust holds two descriptors each)
     TLS stalled after 'S'  listener with client_tls = require (a serving certificate from the
                            bench PKI): SSLRequest sent, 'S' received, nothing more
     TLS half ClientHello   the same, then the first half of a real ClientHello
     established idle       logged-in psycopg2 / PyMySQL sessions (`established_connections`
                            each, 8 warm-up sessions), opened 8 at a time
   The pre-login states get long startup/handshake timeouts so that none expires while held.

3. Storm (issue 14): a dbtrust with memory_limit = 64MiB and three listeners (PostgreSQL,
   PostgreSQL with client_tls = require, MySQL; max_connections = 1000 each, 60 s timeouts),
   one logged-in PostgreSQL and one MariaDB session, then `storm_connections` (5000) hostile
   connections opened as fast as the listen backlog takes them (512 connects in flight), a mix
   of idle and partial startups and garbage on the PostgreSQL listener, idle (greeted) and
   garbage on the MySQL one and TLS handshakes stalled in half a ClientHello, held
   `storm_hold_s` (10 s) from the first connect. VmRSS is sampled every 50 ms, the gauge
   dbtrust_overloaded every 100 ms; the two sessions must still answer at the end of the hold.
   Then everything is closed: VmRSS 1 s later, and after dbtrust's 10 s idle sweep.
"""

import concurrent.futures
import secrets
import threading
import time
import traceback

import psycopg2
import pymysql

from common import BenchDbTrust, fx, log, rss_kib
import mysql as my
import pg

PARALLEL_CONNECTS = 8
IDLE_PARALLEL_CONNECTS = 64          # section 1: "as fast as a client can"
WARM_UP_CONNECTIONS = 8
IDLE_SWEEP_S = 10.0                 # dbtrust's idle sweep period (proxy/px_worker.c)
HOLD_OPTIONS = {"max_connections": 20000, "startup_timeout": "120s",
                "handshake_timeout": "120s"}
STORM_MEMORY_LIMIT_MIB = 64
STORM_MAX_CONNECTIONS = 1000
STORM_OPTIONS = {"max_connections": STORM_MAX_CONNECTIONS, "startup_timeout": "60s",
                 "handshake_timeout": "60s"}
# (kind, listener, weight out of 20), interleaved over the storm's connections.
STORM_KINDS = (("pg-idle", "pg", 4), ("pg-partial-startup", "pg", 4), ("pg-garbage", "pg", 2),
               ("my-idle", "my", 3), ("my-garbage", "my", 1),
               ("tls-half-client-hello", "pg-tls", 6))

# (key, label, listener, descriptors dbtrust holds per connection, target KiB or None)
STATES = (
    ("idle_tcp", "idle TCP (PostgreSQL listener, nothing sent)", "pg", 1, 4),
    ("pg_partial_startup", "partial PostgreSQL startup (length word only)", "pg", 1, 6),
    ("mysql_greeted", "MySQL greeted (MariaDB dialled), client silent", "my", 2, 24),
    ("tls_after_s", "client TLS stalled after 'S'", "pg-tls", 1, 24),
    ("tls_half_client_hello", "client TLS stalled in half a ClientHello", "pg-tls", 1, 24),
)
ESTABLISHED = (
    ("established_pg", "established idle, PostgreSQL (psycopg2)", "pg"),
    ("established_mysql", "established idle, MariaDB (PyMySQL)", "my"),
)


def pg_connect(port, app="bench-idle"):
    conn = psycopg2.connect(host="127.0.0.1", port=port, user=pg.USER, password=pg.PASSWORD,
                            dbname=pg.DATABASE, sslmode="disable", connect_timeout=60,
                            application_name=app)
    conn.autocommit = True
    return conn


def my_connect(port, app="bench-idle"):
    return pymysql.connect(host="127.0.0.1", port=port, user=my.USER, password=my.PASSWORD,
                           database=my.DATABASE, ssl_disabled=True, connect_timeout=60,
                           read_timeout=60, write_timeout=60, autocommit=True,
                           program_name=app)


def select(conn, value):
    """`select value` on a psycopg2 or PyMySQL connection; the integer back."""
    with conn.cursor() as cur:
        cur.execute("select %s + 0", (value,))
        return int(cur.fetchone()[0])


CONNECT = {"pg": pg_connect, "my": my_connect}


def open_connections(connect, port, count, parallel=PARALLEL_CONNECTS):
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda _: connect(port), range(count)))


def close_all(connections):
    for conn in connections:
        try:
            if conn is not None:
                conn.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


# -- readings --------------------------------------------------------------------------------

def median_rss(pid, samples=3, interval=0.2):
    values = []
    for i in range(samples):
        values.append(rss_kib(pid))
        if i + 1 < samples:
            time.sleep(interval)
    return sorted(values)[len(values) // 2]


def wait_fds(pid, at_least, timeout):
    """Wait until the process holds at least that many descriptors; the count then (also
    when the timeout passed: the report shows it)."""
    deadline = time.monotonic() + timeout
    while True:
        count = fx.open_fd_count(pid)
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def wait_fds_stable(pid, quiet=0.5, timeout=15):
    """Wait until the descriptor count has not moved for `quiet` s; returns it."""
    deadline = time.monotonic() + timeout
    last, since = fx.open_fd_count(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        count = fx.open_fd_count(pid)
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def first_my_packet(buf):
    if not fx.my_packet_complete(buf):
        return None
    length = buf[0] | buf[1] << 8 | buf[2] << 16
    return bytes(buf[4:4 + length])


# -- 1. logged-in idle connections (issue 6) ----------------------------------------------------

def per_idle_connection(dbtrust, listener, connect, count):
    """{count, rss_before_kib, rss_after_kib, kib_per_connection, upstream_resumed, open_s,
    close_s} for one listener."""
    close_all(open_connections(connect, dbtrust.port(listener), WARM_UP_CONNECTIONS))
    time.sleep(0.5)
    before = rss_kib(dbtrust.pid)
    resumed0 = dbtrust.metric("dbtrust_upstream_tls_resumed_total", listener)
    start = time.monotonic()
    connections = open_connections(connect, dbtrust.port(listener), count,
                                   parallel=IDLE_PARALLEL_CONNECTS)
    opened_s = time.monotonic() - start
    try:
        time.sleep(1.0)  # let every connection reach its idle state
        after = rss_kib(dbtrust.pid)
        resumed = dbtrust.metric("dbtrust_upstream_tls_resumed_total", listener) - resumed0
    finally:
        close_all(connections)
    return {"count": count, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_connection": round((after - before) / count, 2),
            "upstream_resumed": resumed, "open_s": round(opened_s, 2),
            "close_s": dbtrust.wait_idle(listener)}


def idle_on_fresh_dbtrust(binary, bundle, protocol, upstream, connect, settings, workdir,
                          name, settle=None):
    """per_idle_connection on a dbtrust of its own (no heap left over from another
    measurement). settle: a dict that gets the RSS right after closing them and after the
    next idle sweep."""
    dbtrust = BenchDbTrust(binary, bundle, [("idle", protocol, upstream)], workdir,
                           workers=settings.workers, name=name).start()
    try:
        result = per_idle_connection(dbtrust, "idle", connect, settings.idle_connections)
        if settle is not None:
            settle["rss_after_close_kib"] = rss_kib(dbtrust.pid)
            # dbtrust hands freed heap back at its next idle sweep (every 10 s).
            time.sleep(1 if settings.smoke else IDLE_SWEEP_S + 1)
            settle["rss_settled_kib"] = rss_kib(dbtrust.pid)
        return result
    finally:
        dbtrust.stop()


def idle_mariadb_full(binary, pki, settings, workdir):
    """MariaDB idle connections, each a full upstream handshake: a ticketless server."""
    ticketless = my.start_mariadb(pki, settings.idle_connections + 200, tickets=False)
    try:
        return idle_on_fresh_dbtrust(binary, pki.bundle, "mysql", f"localhost:{ticketless.port}",
                                     my_connect, settings, workdir, "dbtrust-memory-my")
    finally:
        ticketless.stop()


def idle_logged_in(binary, pki, pg_server, maria, settings, workdir, results, errors):
    """PostgreSQL, MariaDB with full handshakes only (a ticketless server), MariaDB with
    resumption (the bench's server): each on a fresh dbtrust (workers as in the comparison).
    A failed one is kept in `errors`; the others still run."""
    n = settings.idle_connections
    log(f"{n} idle PostgreSQL connections through dbtrust")
    results["pg"] = attempt(errors, "idle_pg", lambda: idle_on_fresh_dbtrust(
        binary, pki.bundle, "postgres", f"localhost:{pg_server.port}", pg_connect, settings,
        workdir, "dbtrust-memory-pg", settle=results))
    if maria is None:
        return
    log(f"{n} idle MariaDB connections through dbtrust, full handshakes (no tickets)")
    results["mysql"] = attempt(errors, "idle_mysql",
                               lambda: idle_mariadb_full(binary, pki, settings, workdir))
    log(f"{n} idle MariaDB connections through dbtrust, upstream sessions resumed")
    results["mysql_resumed"] = attempt(errors, "idle_mysql_resumed", lambda: idle_on_fresh_dbtrust(
        binary, pki.bundle, "mysql", f"localhost:{maria.port}", my_connect, settings, workdir,
        "dbtrust-memory-my-resumed"))


# -- 2. per-state cost (issue 14) ----------------------------------------------------------------

class Context:
    """What the per-state and storm measurements share: servers, certificates, bytes."""

    def __init__(self, binary, pki, pg_server, maria, settings, workdir):
        self.binary, self.bundle, self.settings, self.workdir = (binary, pki.bundle, settings,
                                                                 workdir)
        self.pg_upstream = f"localhost:{pg_server.port}"
        self.my_upstream = f"localhost:{maria.port}" if maria is not None else None
        # dbtrust's serving certificate for the client_tls = require listener.
        serving = pki.make_leaf("memory-serving", "localhost", fx.LOCALHOST_SAN,
                                pki.intermediate)
        self.tls_options = {"client_tls": "require", "client_cert": serving.chain,
                            "client_key": serving.key}
        self.hello = fx.tls_client_hello()
        self.startup = fx.pg_startup_message({"user": pg.USER, "database": pg.DATABASE,
                                              "application_name": "bench-memory"})
        self.garbage = b"\x7f\xff\xff\xff" + secrets.token_bytes(124)
        self.settle_s = 0.2 if settings.smoke else 1.0
        self.rss_samples = 1 if settings.smoke else 3

    def listeners(self, options):
        out = [("pg", "postgres", self.pg_upstream, dict(options)),
               ("pg-tls", "postgres", self.pg_upstream, {**options, **self.tls_options})]
        if self.my_upstream:
            out.append(("my", "mysql", self.my_upstream, dict(options)))
        return out

    def dbtrust(self, name, options, **global_options):
        return BenchDbTrust(self.binary, self.bundle, self.listeners(options), self.workdir,
                            workers=self.settings.workers, name=name,
                            **global_options).start()

    def first_bytes(self, state):
        return {"idle_tcp": b"", "pg_partial_startup": self.startup[:4], "mysql_greeted": b"",
                "tls_after_s": fx.PG_SSL_REQUEST,
                "tls_half_client_hello": fx.PG_SSL_REQUEST}[state]

    def median_rss(self, pid):
        return median_rss(pid, self.rss_samples)


def hold_state(ctx, state, port, count):
    """Open `count` connections and bring them into `state`: (HeldConnections, indices that
    reached it)."""
    conns = fx.HeldConnections([("127.0.0.1", port, ctx.first_bytes(state))] * count,
                               connect_timeout=10)
    reached = conns.connected_indices()
    if state.startswith("tls_"):
        answered = conns.expect(lambda b: len(b) >= 1, reached, timeout=30)
        reached = [i for i in answered if conns.received[i][:1] == b"S"]
        if state == "tls_half_client_hello":
            conns.send(ctx.hello[:len(ctx.hello) // 2], reached)
    elif state == "mysql_greeted":
        greeted = conns.expect(fx.my_packet_complete, reached, timeout=60)
        reached = [i for i in greeted
                   if (first_my_packet(conns.received[i]) or b"")[:1] == b"\x0a"]
    return conns, reached


def measure_state(ctx, key, label, listener, fds_per_connection, target_kib):
    n, warmup = ctx.settings.state_connections, ctx.settings.state_warmup
    log(f"memory per state: {n} x {label}")
    d = ctx.dbtrust(f"dbtrust-mem-{key}", HOLD_OPTIONS)
    port, pid = d.port(listener), d.pid
    warm = conns = None
    try:
        warm, _ = hold_state(ctx, key, port, warmup)
        fd_warm = wait_fds_stable(pid)
        time.sleep(ctx.settle_s)
        before = ctx.median_rss(pid)
        start = time.monotonic()
        conns, reached = hold_state(ctx, key, port, n)
        fds_expected = fd_warm + n * fds_per_connection
        fds = wait_fds(pid, fds_expected, 30)
        opened_s = time.monotonic() - start
        time.sleep(ctx.settle_s)
        after = ctx.median_rss(pid)
        still_open = len(conns.open_indices())
    finally:
        if conns is not None:
            conns.close()
        if warm is not None:
            warm.close()
        d.stop()
    return {"label": label, "listener": listener, "connections": n, "warmup": warmup,
            "rss_before_kib": before, "rss_with_kib": after,
            "kib_per_connection": round((after - before) / n, 2), "target_kib": target_kib,
            "reached_state": len(reached), "still_open": still_open, "dbtrust_fds": fds,
            "fds_expected": fds_expected, "open_s": round(opened_s, 2)}


def measure_established(ctx, key, label, listener):
    n = ctx.settings.established_connections
    log(f"memory per state: {n} x {label}")
    d = ctx.dbtrust(f"dbtrust-mem-{key}", HOLD_OPTIONS)
    port, pid, connect = d.port(listener), d.pid, CONNECT[listener]
    warm, sessions = [], []
    try:
        warm = open_connections(connect, port, WARM_UP_CONNECTIONS)
        time.sleep(ctx.settle_s)
        before = ctx.median_rss(pid)
        start = time.monotonic()
        sessions = open_connections(connect, port, n)
        opened_s = time.monotonic() - start
        answered = sum(select(c, i) == i for i, c in enumerate(sessions[:5]))
        time.sleep(ctx.settle_s)
        after = ctx.median_rss(pid)
    finally:
        close_all(sessions)
        close_all(warm)
        d.stop()
    return {"label": label, "listener": listener, "connections": n,
            "warmup": WARM_UP_CONNECTIONS, "rss_before_kib": before, "rss_with_kib": after,
            "kib_per_connection": round((after - before) / n, 2), "target_kib": None,
            "reached_state": n, "still_open": n, "answered_of_5": answered,
            "open_s": round(opened_s, 2)}


def attempt(errors, part, measure):
    """Run one measurement; a failure is logged and kept in `errors` (the run then fails),
    and the other measurements still run."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - reported, and the run exits non-zero
        log(f"memory: {part} failed:\n{traceback.format_exc()}")
        errors[part] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        return None


def per_state(ctx, errors):
    states = {}
    for key, label, listener, fds, target in STATES:
        if listener == "my" and not ctx.my_upstream:
            continue
        result = attempt(errors, key,
                         lambda: measure_state(ctx, key, label, listener, fds, target))
        states[key] = result or {"label": label, "target_kib": target, "failed": True}
    for key, label, listener in ESTABLISHED:
        if listener == "my" and not ctx.my_upstream:
            continue
        result = attempt(errors, key, lambda: measure_established(ctx, key, label, listener))
        states[key] = result or {"label": label, "target_kib": None, "failed": True}
    return states


# -- 3. storm (issue 14) -------------------------------------------------------------------------

def storm_targets(ctx, d, count):
    """(kinds, targets): `count` connections interleaved over STORM_KINDS."""
    first = {"pg-idle": b"", "pg-partial-startup": ctx.startup[:4], "pg-garbage": ctx.garbage,
             "my-idle": b"", "my-garbage": ctx.garbage, "tls-half-client-hello":
             fx.PG_SSL_REQUEST}
    kinds = [(k, lst) for k, lst, weight in STORM_KINDS for _ in range(weight)
             if lst != "my" or ctx.my_upstream]
    names, targets = [], []
    for i in range(count):
        kind, listener = kinds[(i * 7) % len(kinds)]  # 7 is coprime with 20
        names.append(kind)
        targets.append(("127.0.0.1", d.port(listener), first[kind]))
    return names, targets


class GaugeWatch(threading.Thread):
    """Reads dbtrust_overloaded every `interval` s: [(monotonic time, value)]."""

    def __init__(self, dbtrust, interval=0.1):
        super().__init__(daemon=True)
        self.dbtrust, self.interval = dbtrust, interval
        self.readings = []
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.wait(self.interval):
            self.readings.append((time.monotonic(), self.dbtrust.gauge("dbtrust_overloaded",
                                                                       timeout=2)))

    def finish(self):
        self.stop_event.set()
        self.join(5)

    def first(self, value, after=0.0):
        return next((t for t, v in self.readings if v == value and t >= after), None)


def session_answers(conn, value):
    try:
        return "ok" if select(conn, value) == value else "wrong answer"
    except Exception as exc:  # noqa: BLE001 - reported
        return f"{type(exc).__name__}: {str(exc).strip()[:120]}"


def storm(ctx):
    s = ctx.settings
    n = s.storm_connections
    log(f"storm: {n} hostile connections, memory_limit = {STORM_MEMORY_LIMIT_MIB}MiB, "
        f"max_connections = {STORM_MAX_CONNECTIONS} per listener")
    d = ctx.dbtrust("dbtrust-mem-storm", STORM_OPTIONS,
                    memory_limit=f"{STORM_MEMORY_LIMIT_MIB}MiB")
    pid = d.pid
    sessions = {}
    held = sampler = watch = None
    try:
        sessions["pg"] = pg_connect(d.port("pg"), "bench-storm-session")
        if ctx.my_upstream:
            sessions["my"] = my_connect(d.port("my"), "bench-storm-session")
        for i, conn in enumerate(sessions.values()):
            select(conn, i)
        wait_fds_stable(pid)
        time.sleep(ctx.settle_s)
        gauge_before = d.gauge("dbtrust_overloaded")
        baseline = ctx.median_rss(pid)
        sampler = fx.RssSampler(pid, interval=0.05).start()
        watch = GaugeWatch(d)
        watch.start()
        names, targets = storm_targets(ctx, d, n)
        start = time.monotonic()
        held = fx.HeldConnections(targets, window=512, connect_timeout=2, open_budget=30)
        opened_s = time.monotonic() - start
        tls = [i for i, k in enumerate(names) if k == "tls-half-client-hello"]
        answered = held.expect(lambda b: len(b) >= 1, tls, timeout=5)
        got_s = [i for i in answered if held.received[i][:1] == b"S"]
        tls_answers = {"S": len(got_s),
                       "N": sum(held.received[i][:1] == b"N" for i in answered),
                       "none": len(tls) - len(answered)}
        tls_answers["other"] = len(answered) - tls_answers["S"] - tls_answers["N"]
        held.send(ctx.hello[:len(ctx.hello) // 2], got_s)
        time.sleep(max(0.0, s.storm_hold_s - (time.monotonic() - start)))
        open_at_end = set(held.open_indices())
        per_kind = {}
        connected = set(held.connected_indices())
        for i, kind in enumerate(names):
            k = per_kind.setdefault(kind, {"sent": 0, "connected": 0, "open_at_end": 0})
            k["sent"] += 1
            k["connected"] += i in connected
            k["open_at_end"] += i in open_at_end
        session_state = {name: session_answers(conn, 100 + i)
                         for i, (name, conn) in enumerate(sessions.items())}
        peak_during = sampler.peak_kib
        held.close()
        end = time.monotonic()
        time.sleep(1.0)
        rss_after = rss_kib(pid)
        sweep_s = 1.0 if s.smoke else IDLE_SWEEP_S + 1
        time.sleep(max(0.0, end + sweep_s - time.monotonic()))
        rss_swept = ctx.median_rss(pid)
        watch.finish()
        sampler.stop()
        gauge_after = d.gauge("dbtrust_overloaded")
        on = watch.first(1.0, start)
        off = watch.first(0.0, on) if on is not None else None
        return {
            "hostile": n, "memory_limit_mib": STORM_MEMORY_LIMIT_MIB,
            "max_connections": STORM_MAX_CONNECTIONS, "hold_s": s.storm_hold_s,
            "connected": len(connected), "refused": held.refused, "timed_out": held.timed_out,
            "not_attempted": held.not_attempted, "open_s": round(opened_s, 2),
            "open_at_end_of_hold": len(open_at_end), "tls_got_s": len(got_s),
            "tls_answers": tls_answers,
            "per_kind": per_kind, "rss_baseline_kib": baseline,
            "rss_peak_kib": peak_during, "rss_peak_overall_kib": sampler.peak_kib,
            "rss_samples": len(sampler.samples),
            "overloaded_before": gauge_before,
            "overloaded_seen": any(v == 1.0 for _, v in watch.readings),
            "overloaded_after_s": None if on is None else round(on - start, 2),
            "overloaded_cleared_after_close_s": (None if off is None
                                                 else round(max(0.0, off - end), 2)),
            "overloaded_final": gauge_after,
            "rss_after_storm_kib": rss_after, "rss_after_sweep_kib": rss_swept,
            "sweep_wait_s": sweep_s, "sessions": session_state, "alive": d.process.alive(),
        }
    finally:
        if watch is not None:
            watch.finish()
        if sampler is not None:
            sampler.stop()
        if held is not None:
            held.close()
        close_all(sessions.values())
        d.stop()


# -- the section -----------------------------------------------------------------------------------

def roomy_mariadb(maria):
    """Greeted logins held for a while: MariaDB's connect_timeout (10 s) would end them, and
    max_connect_errors could block the host after the storm's aborted handshakes. Returns the
    previous values for restore_mariadb()."""
    old = {k: maria.admin_value(f"select @@global.{k}")
           for k in ("connect_timeout", "max_connect_errors")}
    maria.admin_sql("set global connect_timeout = 300; "
                    "set global max_connect_errors = 1000000")
    return old


def restore_mariadb(maria, old):
    maria.admin_sql("; ".join(f"set global {k} = {v}" for k, v in old.items()))


def run_section(binary, pki, pg_server, maria, settings, workdir):
    results, errors = {}, {}
    idle_logged_in(binary, pki, pg_server, maria, settings, workdir, results, errors)
    ctx = Context(binary, pki, pg_server, maria, settings, workdir)
    old = roomy_mariadb(maria) if maria is not None else None
    try:
        results["states"] = per_state(ctx, errors)
        results["storm"] = attempt(errors, "storm", lambda: storm(ctx))
    finally:
        if old:
            restore_mariadb(maria, old)
    if errors:
        results["errors"] = errors
    return results
