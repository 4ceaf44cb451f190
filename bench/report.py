"""Turns the results of one run into the printed report (machine, one table of ratios with
the issues' targets as PASS/MISS, the cost of every route against the floor, the scaling
table) and the list of target verdicts that also goes into the JSON file. A route that failed
leaves FAILED cells and a line saying why; the report never needs every route."""

from dataclasses import dataclass, field

RELAY = "haproxy-relay"  # the floor (issue 19): bytes copied, the client's own TLS through it
ROUTES = ("direct", "dbtrust", RELAY, "stunnel", "pgbouncer")
OTHERS = ("direct", RELAY, "stunnel", "pgbouncer")  # ratio columns: dbtrust vs each
PROXIES = ("dbtrust", RELAY, "stunnel", "pgbouncer")  # routes with a proxy process


@dataclass
class Target:
    """One of the issues' targets: value `op` limit, e.g. ratio >= 1.05 or KiB <= 32."""
    name: str
    value: float
    op: str
    limit: float
    unit: str = "x"
    short: str = ""   # what the table's row does not already say, e.g. "vs pgbouncer"
    issue: int = 6    # the issue that set it (6: first comparison, 14: memory, 19: the floor)

    @property
    def passed(self):
        if self.value is None:
            return False
        return self.value >= self.limit if self.op == ">=" else self.value <= self.limit

    def verdict(self):
        if self.passed:
            return "PASS"
        if self.value is None:
            return "MISS (no value)"
        if self.op == ">=":
            return f"MISS by {(self.limit - self.value) / self.limit * 100:.1f}%"
        return f"MISS by {(self.value - self.limit) / self.limit * 100:.1f}% over"

    def _bound(self):
        sign = "≥" if self.op == ">=" else "≤"
        if self.unit == "x":
            return f"{sign}{self.limit:.2f}x"
        return f"{sign}{self.limit:g}{self.unit}"

    def text(self):
        """The table's form: '≥1.05x pgbouncer: PASS'."""
        return f"{self._bound()}{' ' + self.short if self.short else ''}: {self.verdict()}"

    def summary(self):
        """The closing list's form: 'COPY vs stunnel: 1.21x (target ≥1.50x): MISS by 19.3%'."""
        value = "-" if self.value is None else (
            f"{self.value:.2f}x" if self.unit == "x" else f"{self.value:g}{self.unit}")
        return f"{self.name}: {value} (target {self._bound()}): {self.verdict()}"

    def as_json(self):
        return {"name": self.name, "value": self.value, "op": self.op, "limit": self.limit,
                "unit": self.unit.strip() or "x", "passed": self.passed, "issue": self.issue}


@dataclass
class Row:
    label: str
    unit: str
    values: dict                      # route -> number
    fmt: str = "{:.0f}"
    diff: bool = False                # latency: the ratio columns show dbtrust - that route
    diff_unit: str = "µs"
    diff_fmt: str = "{:+.0f}"
    targets: list = field(default_factory=list)
    note: str = ""
    failed: frozenset = frozenset()   # routes whose load failed: FAILED instead of "-"

    def cell(self, route):
        v = self.values.get(route)
        if v is None:
            return "FAILED" if route in self.failed else "-"
        return self.fmt.format(v)

    def compare(self, other):
        mine, theirs = self.values.get("dbtrust"), self.values.get(other)
        if mine is None or theirs is None or other == "dbtrust":
            return ""
        if self.diff:
            return f"{self.diff_fmt.format(mine - theirs)} {self.diff_unit}"
        return f"{mine / theirs:.2f}x" if theirs else ""


def ratio(values, other, mine="dbtrust"):
    mine, theirs = values.get(mine), values.get(other)
    return round(mine / theirs, 3) if mine is not None and theirs else None


def failed_routes(errors, load):
    """Routes that produced no value for `load`: the load failed, or the route never started
    or failed its check."""
    return frozenset(r for r, e in (errors or {}).items() if {load, "start", "check"} & set(e))


def pick(per_route, key):
    """{route: value of key} for the routes that have it."""
    return {r: v.get(key) for r, v in per_route.items() if v.get(key) is not None}


# -- rows per section --------------------------------------------------------------------------

def cpu_per_tx_row(what, per_route, failed, targets=()):
    return Row(f"  proxy CPU per transaction, {what}", "µs", pick(per_route, "proxy_cpu_us_per_tx"),
               fmt="{:.1f}", failed=failed, targets=list(targets))


def plural(n, word):
    return f"{n} {word}{'s' if n > 1 else ''}"


def select_rows(pg, settings):
    """pgbench -S per client count: tps and the proxy's CPU per transaction. Issue 19's floor:
    from the target client count up, dbtrust ≥ the relay; its CPU at the target count ≤ the
    relay's."""
    rows, main, errors = [], settings.target_clients, pg.get("errors")
    for clients, per_route in pg["select"].items():
        values, failed = pick(per_route, "tps"), failed_routes(errors, f"select c{clients}")
        what = f"-S {plural(clients, 'client')}"
        targets, cpu_targets = [], []
        if clients == main:
            targets = [Target(f"pgbench -S c{main} vs direct", ratio(values, "direct"), ">=", 1.0,
                              short="direct"),
                       Target(f"pgbench -S c{main} vs pgbouncer", ratio(values, "pgbouncer"),
                              ">=", 1.05, short="pgbouncer")]
            cpu = pick(per_route, "proxy_cpu_us_per_tx")
            cpu_targets = [Target(f"proxy CPU per transaction -S c{main} vs relay",
                                  ratio(cpu, RELAY), "<=", 1.0, short="relay", issue=19)]
        if clients >= main:
            targets.append(Target(f"pgbench -S c{clients} vs relay", ratio(values, RELAY), ">=",
                                  1.0, short="relay", issue=19))
        rows.append(Row(f"pgbench {what}", "tps", values, targets=targets, failed=failed))
        rows.append(cpu_per_tx_row(what, per_route, failed, cpu_targets))
    return rows


def copy_rows(pg, settings, crypto):
    copy, errors = pg["copy"], pg.get("errors")
    failed = failed_routes(errors, "copy")
    values = pick(copy, "mb_per_s")
    megabytes = next(iter(copy.values()))["megabytes"] if copy else (
        settings.copy_rows * 1001 / 1e6)
    cpu = pick(copy, "cpu_s_per_gb")
    note = ""
    if crypto:
        floor = 1e9 / crypto
        note = (f"AES-256-GCM 1 core: {crypto / 1e9:.2f} GB/s = {floor:.3f} s/GB"
                + (f"; dbtrust at {cpu['dbtrust'] / floor:.1f}x that" if cpu.get("dbtrust")
                   else ""))
    return [
        Row(f"COPY TO STDOUT {megabytes:.0f} MB", "MB/s", values, fmt="{:.1f}", failed=failed,
            targets=[Target("COPY vs direct", ratio(values, "direct"), ">=", 1.0,
                            short="direct", issue=19),
                     Target("COPY vs stunnel", ratio(values, "stunnel"), ">=", 1.5,
                            short="stunnel")],
            note=f"median of {settings.copy_repeats}"),
        Row("  proxy CPU per GB relayed (COPY)", "s/GB", cpu, fmt="{:.3f}", failed=failed,
            targets=[Target("proxy CPU per GB (COPY) vs relay", ratio(cpu, RELAY), "<=", 1.0,
                            short="relay", issue=19),
                     Target("dbtrust CPU per GB", cpu.get("dbtrust"), "<=", 0.5, " s/GB")],
            note=note),
    ]


def pg_rows(pg, settings, crypto=None):
    rows = select_rows(pg, settings)
    errors = pg.get("errors")
    failed = failed_routes(errors, "connect")
    what = f"-S -C {plural(settings.connect_clients, 'client')}"
    values = pick(pg["connect"], "tps")
    rows.append(Row(f"pgbench {what}", "tps", values, failed=failed,
                    targets=[Target("pgbench -S -C vs direct", ratio(values, "direct"), ">=", 0.95,
                                    short="direct")],
                    note="pgbouncer reuses server sessions"))
    rows.append(cpu_per_tx_row(what, pg["connect"], failed))
    rows += copy_rows(pg, settings, crypto)
    main = settings.target_clients
    for clients in sorted({min(pg["select"]), main} & set(pg["select"])):
        for q in ("p50", "p99"):
            values = pick(pg["select"][clients], f"{q}_us")
            rows.append(Row(f"round trip {q}, -S {plural(clients, 'client')}", "µs", values,
                            diff=True, failed=failed_routes(errors, f"select c{clients}")))
    return rows


def mysql_rows(mysql, settings):
    threads = settings.sysbench_threads
    errors = mysql.get("errors")
    point, rw = mysql["oltp_point_select"], mysql["oltp_read_write"]
    point_failed = failed_routes(errors, "oltp_point_select")
    rw_failed = failed_routes(errors, "oltp_read_write")
    qps = pick(point, "qps")
    unix = {"direct": qps.get("direct"), "dbtrust": qps.get("dbtrust-unix")}
    unix_failed = frozenset({"dbtrust"}) if "dbtrust-unix" in point_failed else frozenset()
    return [
        Row(f"MariaDB point_select, {threads} thr", "qps", qps, failed=point_failed,
            targets=[Target("MariaDB point_select vs direct TLS", ratio(qps, "direct"),
                            ">=", 1.0, short="direct"),
                     Target(f"MariaDB point_select {threads} thr vs relay", ratio(qps, RELAY),
                            ">=", 1.0, short="relay", issue=19)]),
        cpu_per_tx_row("point_select", point, point_failed),
        Row(f"MariaDB point_select, {threads} thr, app on a Unix socket", "qps",
            {k: v for k, v in unix.items() if v is not None}, failed=unix_failed,
            note="dbtrust column: listener = unix:/path (same host)"),
        Row(f"MariaDB read_write, {threads} thr", "tps", pick(rw, "tps"), failed=rw_failed),
        cpu_per_tx_row("read_write", rw, rw_failed),
    ]


IDLE_MEMORY = (("pg", "PostgreSQL", ""), ("mysql", "MariaDB", ", full handshakes"),
               ("mysql_resumed", "MariaDB", ", resumed upstream"))


def memory_rows(memory):
    """The main table's rows: logged-in idle connections (issue 6; issue 19's ≤ 24 KiB on
    full upstream handshakes, no resumption luck: the resumed MariaDB row is reported only)."""
    rows = []
    for key, title, how in IDLE_MEMORY:
        if key not in memory:
            continue
        m = memory[key]
        label = f"idle conn memory, {title}{how}"
        if m is None:
            rows.append(Row(label, "KiB", {}, failed=frozenset({"dbtrust"}),
                            note="see SECTION FAILED below"))
            continue
        kib = m["kib_per_connection"]
        note = (f"x{m['count']}, {m.get('open_s', 0):.1f} s to open; {m.get('upstream_resumed')} "
                f"upstream handshakes resumed; RSS {m['rss_before_kib'] / 1024:.1f} -> "
                f"{m['rss_after_kib'] / 1024:.1f} MiB; all closed {m['close_s']:.1f} s after "
                "the clients")
        targets = []
        if key != "mysql_resumed":
            targets = [Target(f"{title} idle connection, full handshakes", kib, "<=", 24,
                              " KiB", issue=19)]
        rows.append(Row(label, "KiB", {"dbtrust": kib}, fmt="{:.1f}", targets=targets,
                        note=note))
    if memory.get("rss_settled_kib") is not None:
        rows.append(Row("RSS after closing the PostgreSQL ones", "MiB",
                        {"dbtrust": memory["rss_settled_kib"] / 1024}, fmt="{:.1f}",
                        note=f"{memory['rss_after_close_kib'] / 1024:.1f} MiB right after the "
                             "closes; the figure is after dbtrust's next idle sweep"))
    return rows


STATE_TARGET_NAMES = {
    "idle_tcp": "idle TCP connection", "pg_partial_startup": "partial PostgreSQL startup",
    "mysql_greeted": "MySQL pre-response (greeted)", "tls_after_s": "TLS stalled after 'S'",
    "tls_half_client_hello": "TLS stalled in half a ClientHello",
}


def state_target(key, state):
    if state.get("target_kib") is None:
        return None
    return Target(f"memory per {STATE_TARGET_NAMES.get(key, key)}",
                  state.get("kib_per_connection"), "<=", state["target_kib"], " KiB")


def storm_target(storm):
    peak = storm.get("rss_peak_kib")
    return Target("storm peak RSS", None if peak is None else round(peak / 1024, 1), "<=",
                  storm["memory_limit_mib"], " MiB", short="memory_limit")


def memory_targets(memory):
    """Issue 14's targets: KiB per connection in each pre-login state, the storm's peak."""
    targets = [state_target(k, s) for k, s in memory.get("states", {}).items()]
    if memory.get("storm"):
        targets.append(storm_target(memory["storm"]))
    return [t for t in targets if t is not None]


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def state_table(states):
    header = ["state", "held", "KiB/conn", "target", "RSS MiB before -> with", "notes"]
    lines = []
    for key, st in states.items():
        if st.get("failed"):
            lines.append([st["label"], "-", "FAILED", "", "", "see SECTION FAILED below"])
            continue
        target = state_target(key, st)
        n = st["connections"]
        notes = []
        if st["reached_state"] < n or st["still_open"] < n:
            notes.append(f"only {st['reached_state']} reached the state, {st['still_open']} "
                         f"still open when measured")
        if st.get("fds_expected") and st["dbtrust_fds"] < st["fds_expected"]:
            notes.append(f"dbtrust held {st['dbtrust_fds']} descriptors, expected "
                         f">= {st['fds_expected']}")
        if "answered_of_5" in st:
            notes.append(f"{st['answered_of_5']} of 5 answered a query; opened in "
                         f"{st['open_s']:.1f} s")
        else:
            notes.append(f"opened in {st['open_s']:.1f} s")
        lines.append([st["label"], n, f"{st['kib_per_connection']:.1f}",
                      target.text() if target else "reported",
                      f"{mib(st['rss_before_kib'])} -> {mib(st['rss_with_kib'])}",
                      "; ".join(notes)])
    return format_table(header, lines, notes_last=True)


def tls_others(storm, tls):
    """What the TLS connections that got no 'S' got instead (over max_connections)."""
    answers = storm.get("tls_answers")
    if not answers:
        return f"; {tls - storm['tls_got_s']} over max_connections did not"
    got = [f"{answers[k]} {label}" for k, label in (("N", "'N'"), ("none", "no answer in 5 s"),
                                                   ("other", "something else")) if answers[k]]
    return f"; {', '.join(got)}" if got else ""


def storm_table(storm):
    kinds = ", ".join(f"{k} {v['sent']}" for k, v in storm["per_kind"].items())
    failures = [f"{label} {storm[key]}" for key, label in
                (("refused", "refused"), ("timed_out", "timed out"),
                 ("not_attempted", "not attempted")) if storm[key]]
    if storm["overloaded_seen"]:
        cleared = storm["overloaded_cleared_after_close_s"]
        overloaded = (f"1 from {storm['overloaded_after_s']:.1f} s into the storm; 0 again "
                      + (f"{cleared:.1f} s after the close" if cleared is not None
                         else "never seen (final reading "
                              f"{storm['overloaded_final']})"))
    else:
        overloaded = f"never 1 (read every 100 ms; before {storm['overloaded_before']})"
    sessions = ", ".join(f"{'PostgreSQL' if k == 'pg' else 'MariaDB'} {v}"
                         for k, v in storm["sessions"].items())
    target = storm_target(storm)
    tls = storm["per_kind"].get("tls-half-client-hello", {}).get("sent", 0)
    lines = [
        ["hostile connections", storm["hostile"], kinds],
        ["connected", storm["connected"],
         (f"{', '.join(failures)}; " if failures else "") + f"in {storm['open_s']:.1f} s; "
         f"{storm['tls_got_s']} of the {tls} TLS ones got 'S' (then half a ClientHello)"
         + tls_others(storm, tls)],
        ["still open at the end of the hold", storm["open_at_end_of_hold"],
         "garbage is refused at once; past 2 x max_connections a listener closes at accept"],
        ["RSS before the storm, MiB", mib(storm["rss_baseline_kib"]),
         "2 logged-in sessions (PostgreSQL, MariaDB) kept through the storm"],
        ["peak RSS, MiB", mib(storm["rss_peak_kib"]),
         f"VmRSS every 50 ms ({storm['rss_samples']} samples); {target.text()}"],
        ["dbtrust_overloaded", "1" if storm["overloaded_seen"] else "0", overloaded],
        ["established sessions", "", f"a query at the end of the hold: {sessions}"],
        ["RSS 1 s after closing them, MiB", mib(storm["rss_after_storm_kib"]),
         "freed heap stays with glibc until dbtrust's idle sweep"],
        ["RSS after the idle sweep, MiB", mib(storm["rss_after_sweep_kib"]),
         f"{storm['sweep_wait_s']:.0f} s after closing (dbtrust's idle sweep runs every 10 s)"],
    ]
    if not storm["alive"]:
        lines.append(["dbtrust", "DIED", "during or after the storm"])
    return format_table(["storm", "value", "notes"], lines, notes_last=True)


def memory_lines(memory):
    out = []
    states = memory.get("states")
    if states:
        first = next((s for s in states.values() if not s.get("failed")), None)
        if first:
            out += [f"-- memory per connection state: N held at once in one state on a fresh "
                    f"dbtrust, after {first['warmup']} warm-up connections of that state; "
                    f"KiB/conn = (VmRSS with them - before) / N --", state_table(states), ""]
    storm = memory.get("storm")
    if storm:
        out += [f"-- storm: {storm['hostile']} hostile connections held {storm['hold_s']:g} s "
                f"against memory_limit = {storm['memory_limit_mib']}MiB, max_connections = "
                f"{storm['max_connections']} on each of 3 listeners (PostgreSQL, PostgreSQL "
                f"client_tls = require, MySQL) --", storm_table(storm), ""]
    return out


def build_rows(results, settings):
    rows = []
    if "pg" in results:
        crypto = results.get("crypto", {}).get("aes_256_gcm_bytes_per_s")
        rows += pg_rows(results["pg"], settings, crypto)
    if "mysql" in results:
        rows += mysql_rows(results["mysql"], settings)
    if "memory" in results:
        rows += memory_rows(results["memory"])
    return rows


# -- printing ------------------------------------------------------------------------------------

def format_table(header, lines, notes_last=False):
    """Plain-text table: first column (and a notes column) left-aligned, numbers right."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    def fmt(cells):
        def left(i):
            return i == 0 or (notes_last and i == len(cells) - 1)
        return "  ".join(str(c).ljust(w) if left(i) else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [fmt(header), "  ".join("-" * w for w in widths)]
    return "\n".join(out + [fmt(line) for line in lines])


def main_table(rows):
    header = (["workload", "unit"] + list(ROUTES)
              + [f"vs {o}" for o in OTHERS] + ["targets / notes"])
    lines = []
    for row in rows:
        notes = [t.text() for t in row.targets] + ([row.note] if row.note else [])
        lines.append([row.label, row.unit] + [row.cell(r) for r in ROUTES]
                     + [row.compare(o) for o in OTHERS] + ["; ".join(notes)])
    return format_table(header, lines, notes_last=True)


def scaling_table(scaling):
    workers = list(scaling["dbtrust"])
    header = ["connections", "direct tps"]
    for w in workers:
        header += [f"w={w} tps", f"w={w} vs direct", f"w={w} RSS MiB", f"w={w} CPU µs/tx",
                   f"w={w} close s"]
    lines = []
    for count, direct in scaling["direct"].items():
        line = [count, f"{direct['tps']:.0f}"]
        for w in workers:
            run = scaling["dbtrust"][w]["runs"].get(count)
            if run is None:
                line += ["-"] * 5
                continue
            cpu = run.get("cpu_us_per_tx")
            line += [f"{run['tps']:.0f}", f"{run['tps'] / direct['tps']:.2f}x",
                     f"{run['rss_peak_kib'] / 1024:.1f}", "-" if cpu is None else f"{cpu:.1f}",
                     f"{run['close_s']:.1f}"]
        lines.append(line)
    return format_table(header, lines)


def held_table(scaling):
    """Sessions held open through dbtrust, a few of them busy: cost per connection alone."""
    workers = list(scaling["dbtrust"])
    header = ["sessions", "busy"]
    for w in workers:
        header += [f"w={w} tps", f"w={w} RSS MiB", f"w={w} CPU µs/tx"]
    counts = sorted({c for w in workers for c in scaling["dbtrust"][w].get("held", {})})
    lines = []
    for count in counts:
        busy = "-"
        line = [count]
        for w in workers:
            run = scaling["dbtrust"][w].get("held", {}).get(count)
            if run is None:
                line += ["-"] * 3
                continue
            busy = run["active"]
            cpu = run.get("cpu_us_per_tx")
            line += [f"{run['tps']:.0f}", f"{run['rss_peak_kib'] / 1024:.1f}",
                     "-" if cpu is None else f"{cpu:.1f}"]
        lines.append(line[:1] + [busy] + line[1:])
    return format_table(header, lines)


def flatness_lines(scaling, key="flatness", what="sessions"):
    """Per worker count: what one more session costs from the base count to the largest."""
    out = []
    for w, per in scaling["dbtrust"].items():
        flat = per.get(key)
        if not flat:
            continue
        cpu = flat["cpu_per_tx_ratio"]
        out.append(f"w={w}: cost per connection from {flat['from']} to {flat['to']} {what}: "
                   f"RSS {flat['rss_kib_per_connection']:+.1f} KiB per added session; CPU per "
                   f"transaction at {flat['to']} / at {flat['from']}: "
                   + ("-" if cpu is None else f"{cpu:.2f}x"))
    return out


def floor_columns(results, settings):
    """(title, {route: loads}, value key, CPU key, value format, CPU format, CPU title)."""
    cols = []
    pg = results.get("pg")
    if pg:
        for c in sorted({settings.target_clients, max(pg["select"], default=0)}
                        & set(pg["select"])):
            cols.append((f"-S {c} tps", pg["select"][c], "tps", "proxy_cpu_us_per_tx",
                         "{:.0f}", "{:.1f}", "CPU µs/tx"))
        cols.append(("-S -C tps", pg["connect"], "tps", "proxy_cpu_us_per_tx", "{:.0f}",
                     "{:.0f}", "CPU µs/tx"))
        cols.append(("COPY MB/s", pg["copy"], "mb_per_s", "cpu_s_per_gb", "{:.1f}", "{:.3f}",
                     "CPU s/GB"))
    mysql = results.get("mysql")
    if mysql:
        cols.append(("point_select qps", mysql["oltp_point_select"], "qps",
                     "proxy_cpu_us_per_tx", "{:.0f}", "{:.1f}", "CPU µs/tx"))
    return cols


def floor_table(results, settings):
    """Every route against the relay: throughput, its ratio to the relay's, the proxy's CPU."""
    cols = floor_columns(results, settings)
    header = ["route"]
    for title, *_rest, cpu_title in cols:
        header += [title, "vs relay", cpu_title]
    lines = []
    for route in ROUTES:
        line = [route]
        for _title, per_route, key, cpu_key, fmt, cpu_fmt, _cpu_title in cols:
            value = per_route.get(route, {}).get(key)
            relay = per_route.get(RELAY, {}).get(key)
            cpu = per_route.get(route, {}).get(cpu_key)
            line += ["-" if value is None else fmt.format(value),
                     f"{value / relay:.2f}x" if value is not None and relay else "-",
                     "-" if cpu is None else cpu_fmt.format(cpu)]
        lines.append(line)
    return format_table(header, lines)


def route_failures(results):
    """One line per route and load that failed in the pg and mysql sections."""
    out = []
    for section in ("pg", "mysql"):
        for name, loads in ((results.get(section) or {}).get("errors") or {}).items():
            for load, error in loads.items():
                out.append(f"ROUTE FAILED: {section} {name} ({load}): {error}")
    return out


def machine_lines(machine, settings):
    m = machine
    return [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, kernel {m['kernel']}",
        f"dbtrust: {m['dbtrust']}",
        f"servers: {m['postgresql']}; {m['mariadb']}",
        f"peers:   {m['stunnel']}; {m['pgbouncer']}; {m.get('haproxy', '?')}",
        f"tools:   {m['openssl']}; {m['pgbench']}; {m['sysbench']}",
        f"run:     {settings.describe()}",
    ]


FOOTNOTES = [
    "direct = the client verifies itself (libpq sslmode=verify-full; sysbench --mysql-ssl=on, "
    "chain only); haproxy-relay = the floor: HAProxy mode tcp copying bytes, the client's own "
    "TLS (as direct) through it, nbthread = dbtrust's workers; stunnel = client mode, protocol "
    "pgsql, verifyChain + checkHost; pgbouncer = session pooling, server_tls_sslmode "
    "verify-full.",
    "All PostgreSQL routes log in as the md5 user (stunnel cannot pass SCRAM). Ratio columns: "
    "dbtrust / that route (throughput, and CPU: below 1.00x dbtrust spends less) or dbtrust - "
    "that route (latency). Proxy CPU = utime + stime of the proxy process (all threads, "
    "/proc/PID/stat) over each run.",
]


TLS2TLS_ROUTES = ("dbtrust", "pgbouncer")


def tls2tls_rows(section, settings):
    """(label, unit, format, load, key, note) per row; values looked up per route."""
    c, cc = section["clients"], section["connect_clients"]
    megabytes = next((loads["copy"]["megabytes"] for loads in section["routes"].values()
                      if "copy" in loads), settings.copy_rows * 1001 / 1e6)
    return [
        (f"pgbench -S, {c} client{'s' if c > 1 else ''}", "tps", "{:.0f}", "select", "tps", ""),
        (f"pgbench -S -C, {cc} client{'s' if cc > 1 else ''}", "tps", "{:.0f}", "connect", "tps",
         "pgbouncer keeps server sessions: dbtrust does a client and a server handshake per "
         "connection"),
        (f"COPY TO STDOUT {megabytes:.0f} MB", "MB/s", "{:.1f}", "copy", "mb_per_s",
         f"median of {settings.copy_repeats}"),
        ("proxy CPU per GB relayed (COPY)", "s/GB", "{:.3f}", "copy", "cpu_s_per_gb",
         "lower is better"),
        (f"proxy CPU per transaction, -S {c} clients", "µs", "{:.1f}", "select",
         "proxy_cpu_us_per_tx", "lower is better"),
        (f"proxy CPU per transaction, -S -C {cc} clients", "µs", "{:.1f}", "connect",
         "proxy_cpu_us_per_tx", "lower is better; each transaction is a new connection"),
    ]


def tls2tls_target(section):
    """Issue 19: TLS->TLS small queries at least 1.10x PgBouncer configured the same way."""
    tps = {name: loads.get("select", {}).get("tps")
           for name, loads in section.get("routes", {}).items()}
    return Target(f"TLS->TLS pgbench -S c{section['clients']} vs pgbouncer",
                  ratio(tps, "pgbouncer"), ">=", 1.10, short="pgbouncer", issue=19)


def tls2tls_table(section, settings):
    """dbtrust and pgbouncer both serving TLS to the client; a failed route's cells say so."""
    routes, errors = section["routes"], section.get("errors", {})
    header = ["workload", "unit", *TLS2TLS_ROUTES, "dbtrust/pgbouncer", "notes"]
    lines = []
    for label, unit, fmt, load, key, note in tls2tls_rows(section, settings):
        values, cells = {}, []
        for name in TLS2TLS_ROUTES:
            value = routes.get(name, {}).get(load, {}).get(key)
            values[name] = value
            cells.append(fmt.format(value) if value is not None
                         else "FAILED" if errors.get(name) else "-")
        mine, theirs = values["dbtrust"], values["pgbouncer"]
        compare = f"{mine / theirs:.2f}x" if mine is not None and theirs else ""
        if (load, key) == ("select", "tps"):
            note = tls2tls_target(section).text()
        lines.append([label, unit, *cells, compare, note])
    legs = section.get("client_leg", {})
    lines.append(["client leg (verify-full check)", "", *[
        (f"{legs[n]['protocol']} {legs[n]['cipher']}" if n in legs
         else "FAILED" if errors.get(n) else "-")
        for n in TLS2TLS_ROUTES], "", ""])
    return format_table(header, lines, notes_last=True)


def tls2tls_lines(section, settings):
    out = ["-- TLS->TLS (central trust point): pgbench/psql --TLS, sslmode=require--> proxy "
           "--TLS, verify-full--> PostgreSQL; md5 user on both; dbtrust: listener client_tls = "
           "require; pgbouncer: client_tls_sslmode = require, session pooling; same serving "
           "certificate (bench front CA) --",
           tls2tls_table(section, settings)]
    for name, loads in section.get("errors", {}).items():
        for load, error in loads.items():
            out.append(f"ROUTE FAILED: TLS->TLS {name} ({load}): {error}")
    return out + [""]


def sslneg_lines(section):
    """sslnegotiation = postgres vs direct, per server major: tps and the ratio."""
    header = ["server", "postgres tps", "direct tps", "direct/postgres", "postgres connect ms",
              "direct connect ms", "postgres CPU µs/tx", "direct CPU µs/tx", "runs (tps)"]
    lines = []
    for major, r in section["majors"].items():
        p, d = r["postgres"], r["direct"]

        def num(value, fmt):
            return fmt.format(value) if value is not None else "-"
        runs = "postgres " + "/".join(f"{t:.0f}" for t in p["runs_tps"]) + \
            ", direct " + "/".join(f"{t:.0f}" for t in d["runs_tps"])
        lines.append([f"PostgreSQL {major}", num(p["tps"], "{:.1f}"), num(d["tps"], "{:.1f}"),
                      num(r["ratio"], "{:.2f}x"), num(p["connect_ms"], "{:.2f}"),
                      num(d["connect_ms"], "{:.2f}"), num(p["proxy_cpu_us_per_tx"], "{:.0f}"),
                      num(d["proxy_cpu_us_per_tx"], "{:.0f}"), runs])
    return [f"-- sslnegotiation: pgbench -S -C -c {section['clients']} through dbtrust "
            f"(plaintext client leg, md5 user), {section['seconds']} s per run, two runs per "
            "mode in alternating order; postgres = SSLRequest then TLS, direct = ClientHello "
            "first --", format_table(header, lines, notes_last=True), ""]


def render(results, settings, targets, problems):
    out = ["== dbtrust bench: one run ==", *machine_lines(results["machine"], settings), ""]
    rows = build_rows(results, settings)
    if rows:
        out += [main_table(rows), "", *FOOTNOTES, ""]
    if floor_columns(results, settings):
        out += ["-- every route against the floor (haproxy-relay): throughput, its ratio to "
                "the relay's, the proxy process's CPU per transaction or per GB --",
                floor_table(results, settings), ""]
    if "memory" in results:
        out += memory_lines(results["memory"])
    if "scaling" in results:
        out += [f"-- scaling: pgbench -S, {settings.seconds} s per point (plus 0.1 s per "
                "session and pgbench thread to connect); RSS = dbtrust peak during the run; "
                "CPU µs/tx = dbtrust's CPU while it held every session / the transactions that "
                "ended meanwhile; close s = time dbtrust still held connections after pgbench "
                "exited --", scaling_table(results["scaling"]),
                *flatness_lines(results["scaling"]), "",
                f"-- scaling, cost per connection alone: that many sessions open through "
                f"dbtrust, all but {settings.target_clients} logged in and idle; pgbench -S "
                f"{settings.seconds} s on those; CPU µs/tx = dbtrust's CPU over the pgbench run / "
                "its transactions --", held_table(results["scaling"]),
                *flatness_lines(results["scaling"], "held_flatness", "sessions held"), ""]
    if "tls2tls" in results:
        out += tls2tls_lines(results["tls2tls"], settings)
    if "sslneg" in results:
        out += sslneg_lines(results["sslneg"])
    out += target_lines(targets)
    out += route_failures(results)
    for name, error in results.get("errors", {}).items():
        out.append(f"SECTION FAILED: {name}: {error}")
    for part, error in (results.get("memory") or {}).get("errors", {}).items():
        out.append(f"SECTION FAILED: memory, {part}: {error}")
    for problem in problems:
        out.append(f"PROCESS PROBLEM: {problem}")
    return "\n".join(out)


def target_lines(targets):
    """Issue 19's targets (against the floor) first, then the earlier issues' ones."""
    out = []
    for title, group in (("issue 19, against the floor",
                          [t for t in targets if t.issue == 19]),
                         ("issues 6 and 14", [t for t in targets if t.issue != 19])):
        if group:
            out.append(f"targets ({title}): {sum(t.passed for t in group)} of {len(group)} met")
            out += [f"  {t.summary()}" for t in group]
    return out


def all_targets(results, settings):
    targets = [t for row in build_rows(results, settings) for t in row.targets]
    if results.get("tls2tls"):
        targets.append(tls2tls_target(results["tls2tls"]))
    if "memory" in results:
        targets += memory_targets(results["memory"])
    if results.get("scaling"):
        targets += scaling_targets(results["scaling"])
    return targets


# Flat within this machine's noise: CPU per transaction moves ±25 % between runs here.
FLAT_CPU_RATIO = 1.25


def scaling_targets(scaling):
    """Issue 19 item 4: cost per connection flat from 100 to 2000 sessions, read from the held
    runs (the busy sessions are the same few at every count)."""
    out = []
    for w, per in scaling["dbtrust"].items():
        flat = per.get("held_flatness")
        if flat:
            out.append(Target(f"CPU per transaction, {flat['to']} sessions held vs "
                              f"{flat['from']}, workers={w}", flat["cpu_per_tx_ratio"], "<=",
                              FLAT_CPU_RATIO, issue=19))
    return out
