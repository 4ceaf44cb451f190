"""Shared pieces of bench/run: paths, the build, the machine's description, /proc readings,
dbtrust processes with an admin endpoint, percentiles.

Servers, PKI, ports and cleanup come from the integration fixtures
(tests/integration/dbtrust_fixtures.py): everything started here registers its stop there, so
one interrupted run leaves nothing behind.
"""

import math
import os
import platform
import re
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import dbtrust_fixtures as fx  # noqa: E402  (after the path insert)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    """Progress on stderr, so stdout carries only the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- build and dependencies ------------------------------------------------------------------

def install_deps():
    subprocess.run([os.path.join(BENCH_DIR, "install-deps")], check=True)


def build_dbtrust(build_dir):
    """RelWithDebInfo build of the current tree (no unit tests); returns the binary's path."""
    build_dir = os.path.join(REPO, build_dir)
    log(f"building dbtrust in {os.path.relpath(build_dir, REPO)}/")
    fx.run(["cmake", "-S", REPO, "-B", build_dir, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
            "-DDBTRUST_TESTS=OFF"], timeout=300)
    fx.run(["cmake", "--build", build_dir, f"-j{os.cpu_count() or 2}"], timeout=900)
    return os.path.join(build_dir, "dbtrust")


# -- the machine -------------------------------------------------------------------------------

def _first_line(cmd):
    """First non-empty output line of a version command (stdout or stderr), or '?'."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        line = line.strip()
        if line and not line.startswith("Initializing"):  # stunnel's preamble
            return line
    return "?"


def _cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_total_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _git_revision():
    """Short commit plus '+dirty' when the tree has local changes (read-only git commands)."""
    head = _first_line(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def machine_description(dbtrust_binary):
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "dbtrust": f"{_first_line([dbtrust_binary, '--version'])} @ {_git_revision()}",
        "postgresql": _first_line([f"{fx.PG_BIN}/postgres", "--version"]),
        "mariadb": _first_line([fx.MARIADBD, "--version"]),
        "openssl": _first_line(["openssl", "version"]),
        "stunnel": _first_line(["stunnel", "-version"]),
        "pgbouncer": _first_line(["pgbouncer", "--version"]),
        "haproxy": _first_line(["haproxy", "-v"]),
        "pgbench": _first_line(["pgbench", "--version"]),
        "sysbench": _first_line(["sysbench", "--version"]),
    }


def aes_gcm_bytes_per_second(seconds):
    """`openssl speed -evp aes-256-gcm` at 16 KiB blocks (one core), bytes per second."""
    out = fx.run(["openssl", "speed", "-mr", "-evp", "aes-256-gcm", "-bytes", "16384",
                  "-seconds", str(seconds)], timeout=seconds * 10 + 30).stdout
    m = re.search(r"^\+F:\d+:AES-256-GCM:([\d.]+)", out, re.M)
    if not m:
        raise RuntimeError(f"cannot read openssl speed output:\n{out}")
    return float(m.group(1))


# -- /proc readings ----------------------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of a process (all its threads) in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def rss_kib(pid):
    return fx.resident_kib(pid)


class Sampler:
    """Calls sample() every `interval` s in a thread for as long as a `with` block runs (a load);
    sample() returning False ends the sampling early (the process went away)."""

    def __init__(self, interval):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(self.interval):
            if self.sample() is False:
                return

    def sample(self):
        raise NotImplementedError


class RssSampler(Sampler):
    """A process's peak RSS while a load runs: .peak_kib afterwards."""

    def __init__(self, pid, interval=0.1):
        super().__init__(interval)
        self.pid = pid
        self.peak_kib = rss_kib(pid)

    def sample(self):
        try:
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
        except (OSError, AssertionError):
            return False
        return True


# -- dbtrust -----------------------------------------------------------------------------------

class BenchDbTrust:
    """A dbtrust process for one measurement: listeners given as (name, protocol, upstream),
    an admin endpoint for its byte counters, and a listener limit above the bench's 1000
    connections. Stopped by the fixtures' cleanup or by stop()."""

    def __init__(self, binary, bundle, listeners, workdir, workers=0, name="dbtrust",
                 unix_listeners=(), **global_options):
        """listeners: (name, protocol, upstream) or (name, protocol, upstream, {extra keys}),
        e.g. {"client_tls": "require", ...} for a TLS client leg (max_connections may be
        given there too).
        unix_listeners: (name, protocol, upstream) served on a Unix socket in workdir, the
        cheaper client leg for an application on the same host.
        global_options: more [dbtrust] keys, e.g. memory_limit="64MiB"."""
        self.admin_port = fx.free_port()
        self.config = fx.DbTrustConfig(bundle, workers=workers,
                                       admin=f"127.0.0.1:{self.admin_port}", drain_timeout="1s",
                                       **global_options)
        self.specs = {}
        for lname, protocol, upstream, *extra in listeners:
            options = {"max_connections": 4000, **(extra[0] if extra else {})}
            self.specs[lname] = self.config.add_listener(lname, protocol, upstream, **options)
        for lname, protocol, upstream in unix_listeners:
            path = os.path.join(workdir, f"{name}-{lname}.sock")
            self.specs[lname] = fx.add_unix_listener(self.config, lname, protocol, upstream,
                                                     path, max_connections=4000)
        self.process = fx.dbtrust_from_config(binary, self.config, workdir, name=name)

    def start(self):
        self.process.start()
        fx.wait_for_unix_listeners(self.config)
        return self

    def socket(self, listener):
        return self.specs[listener].path

    def stop(self, timeout=30):
        self.process.stop(timeout)

    @property
    def pid(self):
        return self.process.proc.pid

    def port(self, listener):
        return self.specs[listener].port

    def metric(self, name, listener):
        """Sum of a metric's samples for one listener, from the admin endpoint."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics",
                                    timeout=5) as resp:
            text = resp.read().decode()
        pattern = rf'^{name}\{{listener="([^"]+)"[^}}]*\}} (\d+)'
        return sum(int(m.group(2)) for m in re.finditer(pattern, text, re.M)
                   if m.group(1) == listener)

    def gauge(self, name, timeout=3):
        """An unlabelled metric's value (e.g. dbtrust_overloaded); None when absent or the
        endpoint does not answer."""
        try:
            status, text = fx.http_get(self.admin_port, "/metrics", timeout=timeout)
        except OSError:
            return None
        if status != 200:
            return None
        return fx.metric_value(fx.parse_metrics(text), name)

    def bytes_relayed(self, listener):
        """Plaintext bytes relayed both ways on a listener (dbtrust_bytes_total)."""
        return self.metric("dbtrust_bytes_total", listener)

    def wait_idle(self, listener, timeout=120):
        """Seconds until no connection is open on the listener any more (after a load's
        clients went away, dbtrust still has to notice and close both legs of each)."""
        start = time.monotonic()
        fx.wait_for(lambda: self.metric("dbtrust_connections_active", listener) == 0, timeout,
                    interval=0.1, what=f"{listener} to have no open connection")
        return round(time.monotonic() - start, 2)

    def settled_bytes_relayed(self, listener, timeout=3.0):
        """The byte counter once it stops moving (it may be updated when a connection ends)."""
        last = self.bytes_relayed(listener)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.bytes_relayed(listener)
            if now == last:
                return now
            last = now
        return last


def proxy_threads(workers):
    """The event-loop threads a dbtrust with `workers` (0 = one per CPU) runs: the thread count
    a peer is given so that it competes for the same cores with as many loops."""
    return workers or os.cpu_count() or 1


# -- per-route failures ------------------------------------------------------------------------

class RouteFailed(Exception):
    """A route that must not produce a number (e.g. it would run in plaintext)."""


def compact(text, limit=600):
    """An error on one line for the report: non-empty lines joined, cut at `limit`."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    one = " | ".join(lines)
    return one if len(one) <= limit else one[:limit - 3] + "..."


class Measurements:
    """Per route: the loads that worked, and an error for each one that did not. A route that
    failed to start or its check is skipped from then on; the other routes are still measured
    and the report shows what is missing."""

    def __init__(self, names, section):
        self.section = section
        self.data = {name: {} for name in names}
        self.errors = {name: {} for name in names}

    def attempt(self, name, load, fn, record=True):
        """fn() for one route and load; its value is kept under `load` when `record`."""
        if "start" in self.errors[name] or "check" in self.errors[name]:
            return None
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - a failed route is reported, not fatal
            log(f"{self.section}: {name}: {load} failed:\n{traceback.format_exc()}")
            text = str(exc) if isinstance(exc, RouteFailed) else f"{type(exc).__name__}: {exc}"
            self.errors[name][load] = compact(text)
            return None
        if record and value is not None:
            self.data[name][load] = value
        return value

    def working(self, routes):
        return {name: route for name, route in routes.items()
                if not {"start", "check"} & set(self.errors[name])}

    def failed(self):
        """{route: {load: error}} of the routes with an error."""
        return {n: e for n, e in self.errors.items() if e}


# -- statistics ---------------------------------------------------------------------------------

def percentile(sorted_values, q):
    """Nearest-rank percentile (q in 0..100) of an already sorted list; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def median(values):
    values = sorted(values)
    return percentile(values, 50) if values else None
