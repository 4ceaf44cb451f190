"""Turns the results of one run into the printed report (machine, one table of ratios with
the issue's targets as PASS/MISS, the scaling table) and the list of target verdicts that
also goes into the JSON file."""

from dataclasses import dataclass, field

ROUTES = ("direct", "dbtrust", "stunnel", "pgbouncer")
OTHERS = ("direct", "stunnel", "pgbouncer")  # ratio columns: dbtrust vs each


@dataclass
class Target:
    """One of issue 6's targets: value `op` limit, e.g. ratio >= 1.05 or KiB <= 32."""
    name: str
    value: float
    op: str
    limit: float
    unit: str = "x"
    short: str = ""   # what the table's row does not already say, e.g. "vs pgbouncer"

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
                "unit": self.unit.strip() or "x", "passed": self.passed}


@dataclass
class Row:
    label: str
    unit: str
    values: dict                      # route -> number
    fmt: str = "{:.0f}"
    lower_is_better: bool = False     # latency, CPU: the ratio columns show the difference
    diff_unit: str = "µs"
    diff_fmt: str = "{:+.0f}"
    targets: list = field(default_factory=list)
    note: str = ""

    def cell(self, route):
        v = self.values.get(route)
        return "-" if v is None else self.fmt.format(v)

    def compare(self, other):
        mine, theirs = self.values.get("dbtrust"), self.values.get(other)
        if mine is None or theirs is None or other == "dbtrust":
            return ""
        if self.lower_is_better:
            return f"{self.diff_fmt.format(mine - theirs)} {self.diff_unit}"
        return f"{mine / theirs:.2f}x" if theirs else ""


def ratio(values, other):
    mine, theirs = values.get("dbtrust"), values.get(other)
    return round(mine / theirs, 3) if mine is not None and theirs else None


# -- rows per section --------------------------------------------------------------------------

def pg_rows(pg, settings):
    rows = []
    main = settings.target_clients
    for clients, per_route in pg["select"].items():
        values = {r: v["tps"] for r, v in per_route.items()}
        targets = []
        if clients == main:
            targets = [Target(f"pgbench -S c{main} vs direct", ratio(values, "direct"), ">=", 1.0,
                              short="direct"),
                       Target(f"pgbench -S c{main} vs pgbouncer", ratio(values, "pgbouncer"),
                              ">=", 1.05, short="pgbouncer")]
        rows.append(Row(f"pgbench -S, {clients} client{'s' if clients > 1 else ''}", "tps",
                        values, targets=targets))
    values = {r: v["tps"] for r, v in pg["connect"].items()}
    rows.append(Row(f"pgbench -S -C, {settings.connect_clients} clients", "tps", values,
                    targets=[Target("pgbench -S -C vs direct", ratio(values, "direct"), ">=", 0.95,
                                    short="direct")],
                    note="pgbouncer reuses server sessions"))
    values = {r: v["mb_per_s"] for r, v in pg["copy"].items()}
    megabytes = next(iter(pg["copy"].values()))["megabytes"]
    rows.append(Row(f"COPY TO STDOUT {megabytes:.0f} MB", "MB/s", values, fmt="{:.1f}",
                    targets=[Target("COPY vs direct", ratio(values, "direct"), ">=", 1.0,
                                    short="direct"),
                             Target("COPY vs stunnel", ratio(values, "stunnel"), ">=", 1.5,
                                    short="stunnel")],
                    note=f"median of {settings.copy_repeats}"))
    for clients in sorted({min(pg["select"]), main} & set(pg["select"])):
        for q in ("p50", "p99"):
            values = {r: v[f"{q}_us"] for r, v in pg["select"][clients].items()}
            rows.append(Row(f"round trip {q}, -S {clients} client{'s' if clients > 1 else ''}",
                            "µs", values, lower_is_better=True))
    return rows


def mysql_rows(mysql, settings):
    point = {r: v["qps"] for r, v in mysql["oltp_point_select"].items()}
    rw = {r: v["tps"] for r, v in mysql["oltp_read_write"].items()}
    threads = settings.sysbench_threads
    return [
        Row(f"MariaDB point_select, {threads} thr", "qps", point,
            targets=[Target("MariaDB point_select vs direct TLS", ratio(point, "direct"),
                            ">=", 1.0, short="direct")]),
        Row(f"MariaDB point_select, {threads} thr, app on a Unix socket", "qps",
            {"direct": point.get("direct"), "dbtrust": point.get("dbtrust-unix")},
            note="dbtrust column: listener = unix:/path (same host)"),
        Row(f"MariaDB read_write, {threads} thr", "tps", rw),
    ]


def cpu_row(pg, crypto):
    values = {r: v["cpu_s_per_gb"] for r, v in pg["proxy_cpu"].items()}
    cpu = values.get("dbtrust")
    note = ""
    if crypto:
        floor = 1e9 / crypto
        note = (f"AES-256-GCM 1 core: {crypto / 1e9:.2f} GB/s = {floor:.3f} s/GB"
                + (f"; dbtrust at {cpu / floor:.1f}x that" if cpu else ""))
    return Row("proxy CPU per GB relayed (COPY)", "s/GB", values, fmt="{:.3f}",
               lower_is_better=True, diff_unit="s/GB", diff_fmt="{:+.3f}",
               targets=[Target("dbtrust CPU per GB", cpu, "<=", 0.5, " s/GB")], note=note)


def memory_rows(memory):
    """The main table's rows: issue 6's logged-in idle connections."""
    rows = []
    for key, title in (("pg", "PostgreSQL"), ("mysql", "MariaDB")):
        if key in memory:
            m = memory[key]
            kib = m["kib_per_connection"]
            note = (f"RSS {m['rss_before_kib'] / 1024:.1f} -> {m['rss_after_kib'] / 1024:.1f} "
                    f"MiB; all closed {m['close_s']:.1f} s after the clients")
            if key == "mysql" and "pg" in memory and (
                    m["rss_before_kib"] > memory["pg"]["rss_before_kib"] + 8 * 1024):
                note += ("; reuses heap the PostgreSQL ones freed (fresh process: per-state "
                         "table)")
            rows.append(Row(f"idle conn memory, {title} x{m['count']}", "KiB", {"dbtrust": kib},
                            fmt="{:.1f}",
                            targets=[Target(f"{title} idle connection", kib, "<=", 32, " KiB")],
                            note=note))
    if "rss_settled_kib" in memory:
        rows.append(Row("RSS after closing them all", "MiB",
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
        rows += pg_rows(results["pg"], settings)
    if "mysql" in results:
        rows += mysql_rows(results["mysql"], settings)
    if "pg" in results:
        crypto = results.get("crypto", {}).get("aes_256_gcm_bytes_per_s")
        rows.append(cpu_row(results["pg"], crypto))
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
        header += [f"w={w} tps", f"w={w} vs direct", f"w={w} RSS MiB", f"w={w} close s"]
    lines = []
    for count, direct in scaling["direct"].items():
        line = [count, f"{direct['tps']:.0f}"]
        for w in workers:
            run = scaling["dbtrust"][w]["runs"].get(count)
            if run is None:
                line += ["-", "-", "-", "-"]
                continue
            line += [f"{run['tps']:.0f}", f"{run['tps'] / direct['tps']:.2f}x",
                     f"{run['rss_peak_kib'] / 1024:.1f}", f"{run['close_s']:.1f}"]
        lines.append(line)
    return format_table(header, lines)


def machine_lines(machine, settings):
    m = machine
    return [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, kernel {m['kernel']}",
        f"dbtrust: {m['dbtrust']}",
        f"servers: {m['postgresql']}; {m['mariadb']}",
        f"peers:   {m['stunnel']}; {m['pgbouncer']}",
        f"tools:   {m['openssl']}; {m['pgbench']}; {m['sysbench']}",
        f"run:     {settings.describe()}",
    ]


FOOTNOTES = [
    "direct = the client verifies itself (libpq sslmode=verify-full; sysbench --mysql-ssl=on, "
    "chain only); stunnel = client mode, protocol pgsql, verifyChain + checkHost; "
    "pgbouncer = session pooling, server_tls_sslmode verify-full.",
    "All PostgreSQL routes log in as the md5 user (stunnel cannot pass SCRAM). Ratio columns: "
    "dbtrust / that route (throughput) or dbtrust - that route (latency, CPU).",
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
    if "memory" in results:
        out += memory_lines(results["memory"])
    if "scaling" in results:
        out += [f"-- scaling: pgbench -S, {settings.seconds} s per point; RSS = dbtrust peak "
                "during the run; close s = time dbtrust still held connections after pgbench "
                "exited --", scaling_table(results["scaling"]), ""]
    if "tls2tls" in results:
        out += tls2tls_lines(results["tls2tls"], settings)
    if "sslneg" in results:
        out += sslneg_lines(results["sslneg"])
    if targets:
        passed = sum(t.passed for t in targets)
        out.append(f"targets: {passed} of {len(targets)} met")
        out += [f"  {t.summary()}" for t in targets]
    for name, error in results.get("errors", {}).items():
        out.append(f"SECTION FAILED: {name}: {error}")
    for part, error in (results.get("memory") or {}).get("errors", {}).items():
        out.append(f"SECTION FAILED: memory, {part}: {error}")
    for problem in problems:
        out.append(f"PROCESS PROBLEM: {problem}")
    return "\n".join(out)


def all_targets(results, settings):
    targets = [t for row in build_rows(results, settings) for t in row.targets]
    if "memory" in results:
        targets += memory_targets(results["memory"])
    return targets
