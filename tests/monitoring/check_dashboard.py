#!/usr/bin/python3
"""ctest monitoring.dashboard: the Grafana dashboard and the alerting rules speak only valid
PromQL about metrics dbtrust exports.

1. docker/monitoring/exported-metrics.txt against the family() calls of proxy/*.c, both ways.
2. The dashboard's structure: unique panel ids, one refId per query of a panel, every query on
   the ${datasource} variable, every $variable defined, panels inside the 24-column grid.
3. Every PromQL expression (each panel query, each variable's label_values() selector, each
   alerting rule) written into one temporary rule file, with Grafana's interval variables
   replaced by durations, and `promtool check rules` must parse it.
4. Every metric name in those expressions is an exported family (histogram series _bucket,
   _sum, _count included) or Prometheus' own `up`.
5. Every alert has a summary, a description and a `runbook` annotation naming a heading that
   exists (docs/runbook.md#...).

A self-test runs first: the name extraction on known expressions, and a dashboard with a
misspelt metric and one with a broken expression, both of which must be refused.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MONITORING = os.path.join(ROOT, "docker", "monitoring")

# Metrics of Prometheus itself that dbtrust's panels and alerts may use.
NON_DBTRUST = {"up"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s",
                    "__range_ms"}
# Grafana's interval variables stand for durations: any valid one checks the syntax.
DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "and", "or", "unless", "inf", "nan", "atan2"}


def read_exported(path):
    """{name: (type, pending)} from the checked-in list."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            if len(line) not in (2, 3) or (len(line) == 3 and line[2] != "pending"):
                raise SystemExit(f"{path}:{n}: expected `name type [pending]`")
            out[line[0]] = (line[1], len(line) == 3)
    return out


def read_proxy_families(proxy_dir):
    """{name: type} of every family(out, "name", "type", ...) call in proxy/*.c."""
    found = {}
    call = re.compile(r'family\(\s*\w+\s*,\s*"(dbtrust_\w+)"\s*,\s*"(\w+)"')
    for name in sorted(os.listdir(proxy_dir)):
        if name.endswith(".c"):
            with open(os.path.join(proxy_dir, name), encoding="utf-8") as f:
                for m in call.finditer(f.read()):
                    found[m.group(1)] = m.group(2)
    return found


def compare_exported(listed, proxy):
    errors = []
    for name, kind in sorted(proxy.items()):
        if name not in listed:
            errors.append(f"proxy/ exports {name} ({kind}): add it to exported-metrics.txt")
        elif listed[name][1]:
            errors.append(f"proxy/ now exports {name}: remove `pending` from its line in "
                          "exported-metrics.txt")
        elif listed[name][0] != kind:
            errors.append(f"{name}: listed as {listed[name][0]}, proxy/ exports a {kind}")
    for name, (kind, pending) in sorted(listed.items()):
        if name not in proxy and not pending:
            errors.append(f"exported-metrics.txt lists {name}, which proxy/ does not export")
    return errors


def series_names(listed):
    """Every series name a query may select, from the families."""
    names = set(NON_DBTRUST)
    for name, (kind, _) in listed.items():
        names.add(name)
        if kind == "histogram":
            names.update(name + s for s in ("_bucket", "_sum", "_count"))
    return names


def substitute(expr):
    """Grafana variables out of an expression so promtool can parse it: interval variables
    become durations, the others (used inside regex matchers) a plain word."""
    def repl(m):
        name = m.group(1) or m.group(2)
        return DURATIONS.get(name, "x")
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def metric_names(expr):
    """Metric names an expression selects, by removing everything that is not one: strings,
    label matchers, ranges, grouping clauses, numbers, functions and keywords."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    if "__name__" in s:
        raise ValueError("selects by __name__: name metrics directly so they can be checked")
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?P<num>\d[\w.]*)|(?P<id>[A-Za-z_:][\w:]*)(?P<call>\s*\()?", s):
        ident = m.group("id")
        if ident and not m.group("call") and ident.lower() not in KEYWORDS:
            names.add(ident)
    return names


def variable_exprs(variable):
    """The PromQL inside a query variable: label_values(SELECTOR, label) or query_result(EXPR)."""
    q = variable.get("query")
    if isinstance(q, dict):
        q = q.get("query", "")
    if not isinstance(q, str):
        return []
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q)
    if m:
        return [m.group(1)]
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", q)
    if m:
        return [m.group(1)]
    if re.fullmatch(r"\s*(label_names|metrics)\(.*\)\s*", q):
        return []
    return [q]


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def dashboard_exprs(dash, errors):
    """[(where, expr)] of a dashboard, checking its structure on the way."""
    exprs = []
    variables = set(GRAFANA_BUILTINS)
    for v in dash.get("templating", {}).get("list", []):
        variables.add(v["name"])
        if v.get("type") == "query":
            for e in variable_exprs(v):
                exprs.append((f"variable ${v['name']}", e))
    ids = set()
    for p in walk_panels(dash.get("panels", [])):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            errors.append(f"{where}: duplicate panel id")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24 or g.get("w", 0) <= 0 or g.get("h", 0) <= 0:
            errors.append(f"{where}: gridPos {g} outside the 24-column grid")
        if p.get("type") == "row":
            continue
        targets = p.get("targets", [])
        if not targets:
            errors.append(f"{where}: no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            errors.append(f"{where}: refIds {refs} are not unique")
        for t in targets:
            ds = t.get("datasource", p.get("datasource", {}))
            if not isinstance(ds, dict) or ds.get("uid") != "${datasource}":
                errors.append(f"{where} {t.get('refId')}: datasource is not ${{datasource}}")
            if not t.get("expr"):
                errors.append(f"{where} {t.get('refId')}: no expr")
                continue
            exprs.append((f"{where} query {t.get('refId')}", t["expr"]))
    for where, e in exprs:
        for m in re.finditer(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", e):
            if (m.group(1) or m.group(2)) not in variables:
                errors.append(f"{where}: ${m.group(1) or m.group(2)} is not a dashboard variable")
    return exprs


def slug(heading):
    """The anchor GitHub and most Markdown renderers give a heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def check_runbook_links(rules_path, errors):
    """Every alert's `runbook` annotation names a file under the repository and a heading in it."""
    with open(rules_path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    for g in doc["groups"]:
        for r in g["rules"]:
            if "alert" not in r:
                continue
            link = r.get("annotations", {}).get("runbook")
            for key in ("summary", "description"):
                if not r.get("annotations", {}).get(key):
                    errors.append(f"alert {r['alert']}: no {key} annotation")
            if not link:
                errors.append(f"alert {r['alert']}: no runbook annotation")
                continue
            path, _, anchor = link.partition("#")
            try:
                with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                    anchors = {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", f.read(), re.M)}
            except OSError:
                errors.append(f"alert {r['alert']}: runbook {path} does not exist")
                continue
            if anchor not in anchors:
                errors.append(f"alert {r['alert']}: no heading #{anchor} in {path}")


def alert_exprs(rules_path):
    with open(rules_path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    return [(f"rule {r.get('alert') or r.get('record')} #{i}", r["expr"])
            for g in doc["groups"] for i, r in enumerate(g["rules"])]


def promtool_parse(exprs, promtool, errors):
    """All expressions through `promtool check rules`, each as a recording rule named after
    its index, so a parse error points back at where it came from."""
    rules = [{"record": f"dbtrust_check:expr_{i}", "expr": substitute(e)}
             for i, (_, e) in enumerate(exprs)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="dbtrust-check-") as f:
        yaml.safe_dump({"groups": [{"name": "dbtrust_check", "rules": rules}]}, f)
        f.flush()
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        named = False
        for m in re.finditer(r"expr_(\d+)", out):
            named = True
            where, e = exprs[int(m.group(1))]
            errors.append(f"{where}: promtool cannot parse {e!r}")
        if not named:
            errors.append("promtool check rules failed:\n" + out)


def check_names(exprs, allowed, errors):
    for where, e in exprs:
        try:
            names = metric_names(substitute(e))
        except ValueError as err:
            errors.append(f"{where}: {err}")
            continue
        for n in sorted(names - allowed):
            errors.append(f"{where}: {n} is not a metric dbtrust exports")


def check(dashboard, rules_path, listed, proxy, promtool):
    errors = compare_exported(listed, proxy)
    exprs = dashboard_exprs(dashboard, errors)
    if rules_path:
        exprs += alert_exprs(rules_path)
        check_runbook_links(rules_path, errors)
    promtool_parse(exprs, promtool, errors)
    check_names(exprs, series_names(listed), errors)
    return errors, exprs


def self_test(promtool):
    cases = {
        'sum by (listener, le) (rate(dbtrust_upstream_handshake_seconds_bucket{job=~"$job"}[5m]))':
            {"dbtrust_upstream_handshake_seconds_bucket"},
        'increase(a_total[1h] offset 1h) / ignoring (x) group_left (y) b{c="d{e}"} > 1e3':
            {"a_total", "b"},
        'min without (instance, pod) (x_seconds - time()) < 30 * 86400 and on() up == 0':
            {"x_seconds", "up"},
        'histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))': {"h_bucket"},
        'count by (bundle) (count by (bundle, sha256) (bundle_info)) > bool 1': {"bundle_info"},
    }
    for expr, want in cases.items():
        got = metric_names(substitute(expr))
        assert got == want, f"self-test: {expr!r}: {sorted(got)}, expected {sorted(want)}"
    listed = {"dbtrust_connections_total": ("counter", False)}
    proxy = {"dbtrust_connections_total": "counter"}

    def dash(expr):
        return {"templating": {"list": []}, "panels": [{
            "id": 1, "type": "timeseries", "title": "t",
            "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8},
            "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"}, "expr": expr}]}]}
    good = 'sum(rate(dbtrust_connections_total[$__rate_interval]))'
    errors, _ = check(dash(good), None, listed, proxy, promtool)
    assert not errors, f"self-test: a good dashboard was refused: {errors}"
    for bad, why in (('sum(rate(dbtrust_connection_total[5m]))', "not a metric"),
                     ('sum(rate(dbtrust_connections_total[5m])', "cannot parse"),
                     ('rate(dbtrust_connections_total[$window])', "not a dashboard variable")):
        errors, _ = check(dash(bad), None, listed, proxy, promtool)
        assert any(why in e for e in errors), f"self-test: {bad!r} not refused ({errors})"
    # The exported list both ways, and its pending marker.
    assert compare_exported({}, proxy), "self-test: an unlisted family was accepted"
    assert compare_exported({"dbtrust_x": ("gauge", False), **listed}, proxy), \
        "self-test: a listed family proxy/ does not export was accepted"
    assert not compare_exported({"dbtrust_x": ("gauge", True), **listed}, proxy)
    assert compare_exported({"dbtrust_connections_total": ("counter", True)}, proxy), \
        "self-test: a pending family that proxy/ exports was accepted"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dashboard", default=os.path.join(MONITORING, "dbtrust-dashboard.json"))
    ap.add_argument("--rules", default=os.path.join(MONITORING, "dbtrust-alerts.yaml"))
    ap.add_argument("--exported", default=os.path.join(MONITORING, "exported-metrics.txt"))
    ap.add_argument("--proxy", default=os.path.join(ROOT, "proxy"))
    ap.add_argument("--promtool", default=os.environ.get("PROMTOOL", "promtool"))
    args = ap.parse_args()
    self_test(args.promtool)
    with open(args.dashboard, encoding="utf-8") as f:
        dashboard = json.load(f)
    listed = read_exported(args.exported)
    errors, exprs = check(dashboard, args.rules, listed, read_proxy_families(args.proxy),
                          args.promtool)
    for e in errors:
        print("FAIL", e)
    if errors:
        return 1
    print(f"ok: {len(exprs)} expressions parse and name only the {len(listed)} exported "
          f"families (+ up); exported-metrics.txt matches proxy/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
