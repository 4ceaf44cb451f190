"""The client side of bench/soak: one process, many threads, one protocol.

    /usr/bin/python3 bench/soak_load.py --protocol pg|mysql --port P --threads N --seconds S

Each thread churns through dbtrust until the deadline: connect (mostly as the md5/native user,
now and then as the SCRAM/ed25519 one), a few rounds of checked queries (a small select whose
answer is known, now and then a larger result whose row count and last row are checked), a
random short idle between rounds, disconnect, and again. Threads start spread over --ramp
seconds so that the servers do not see every connection at once.

Every failed connect and every failed or wrong query is an error, recorded with its text.
stdout carries one `progress {json}` line every --progress seconds and one `result {json}` line
at the end; bench/soak reads them. The module is also imported by bench/soak for the route
checks (connect functions and the users).
"""

import argparse
import hashlib
import json
import math
import os
import random
import sys
import threading
import time

import psycopg2
import pymysql

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import dbtrust_fixtures as fx  # noqa: E402  (constants only: users, passwords, database)

# (user, password) pairs: the first is the common one, the second the costlier method.
PG_USERS = ((fx.PG_MD5_USER, fx.PG_MD5_PASSWORD), (fx.PG_APP_USER, fx.PG_APP_PASSWORD))
MY_USERS = ((fx.MY_NATIVE_USER, fx.MY_NATIVE_PASSWORD), (fx.MY_ED_USER, fx.MY_ED_PASSWORD))
SECOND_USER_SHARE = 0.2      # sessions that log in with SCRAM (PG) or ed25519 (MariaDB)
LARGE_SHARE = 0.1            # rounds that also fetch a larger result
LARGE_ROWS = (1000, 5000)    # its row count, uniformly in this range
ROUNDS = (1, 5)              # query rounds per session
KEEP_ERRORS = 2000           # error records kept in full (all are counted)
QUERY_TIMEOUT_S = 120        # a query (or a login step) that takes longer is an error


def pg_connect(port, user=PG_USERS[0], app="dbtrust-soak"):
    return psycopg2.connect(host="127.0.0.1", port=port, user=user[0], password=user[1],
                            dbname=fx.PG_APP_DATABASE, sslmode="disable", connect_timeout=60,
                            application_name=app,
                            options=f"-c statement_timeout={QUERY_TIMEOUT_S * 1000}")


def my_connect(port, user=MY_USERS[0], app="dbtrust-soak"):
    return pymysql.connect(host="127.0.0.1", port=port, user=user[0], password=user[1],
                           database=fx.MY_APP_DATABASE, ssl_disabled=True, connect_timeout=60,
                           read_timeout=QUERY_TIMEOUT_S, write_timeout=QUERY_TIMEOUT_S,
                           program_name=app, autocommit=True)


class QueryMismatch(Exception):
    """A query answered, but not what it should have."""


def md5_hex(n):
    return hashlib.md5(str(n).encode()).hexdigest()


def run_round(protocol, conn, rng, stats):
    """One round of checked queries on an open connection; raises on any failure."""
    cur = conn.cursor()
    try:
        n = rng.randrange(1, 1_000_000_000)
        cur.execute("select %s + 1", (n,))
        row = cur.fetchone()
        if row is None or int(row[0]) != n + 1:
            raise QueryMismatch(f"select {n} + 1 returned {row!r}")
        stats["queries"] += 1
        # A short index range of a real table: 100 rows whose count and sum are known.
        table, key, last = (("pgbench_accounts", "aid", 100_000) if protocol == "pg"
                            else ("soak_rows", "id", 1000))
        k = rng.randrange(1, last - 98)
        cur.execute(f"select count(*), sum({key}) from {table} where {key} between %s and %s",
                    (k, k + 99))
        row = cur.fetchone()
        if row is None or (int(row[0]), int(row[1])) != (100, 100 * k + 4950):
            raise QueryMismatch(f"{table} count/sum for {key} {k}..{k + 99} returned {row!r}")
        stats["queries"] += 1
        if rng.random() < LARGE_SHARE:
            rows = rng.randrange(*LARGE_ROWS)
            if protocol == "pg":
                cur.execute("select g, md5(g::text) from generate_series(1, %s) g", (rows,))
            else:
                cur.execute("select seq, md5(seq) from seq_1_to_%d" % rows)
            result = cur.fetchall()
            if len(result) != rows or (int(result[-1][0]), result[-1][1]) != (rows, md5_hex(rows)):
                tail = result[-1] if result else None
                raise QueryMismatch(f"{rows}-row result came back with {len(result)} rows, "
                                    f"last {tail!r}")
            stats["queries"] += 1
            stats["large_queries"] += 1
            stats["large_rows"] += rows
    finally:
        cur.close()


class Worker:
    """One client thread; its counters are its own (summed after the threads are joined)."""

    def __init__(self, index, args, deadline, stop, errors, errors_lock):
        self.index = index
        self.args = args
        self.deadline = deadline
        self.stop = stop
        self.errors = errors
        self.errors_lock = errors_lock
        self.rng = random.Random(f"{args.seed}-{args.protocol}-{args.label}-{index}")
        self.stats = {"sessions": 0, "second_user_sessions": 0, "connect_attempts": 0,
                      "connect_errors": 0, "query_errors": 0, "queries": 0, "large_queries": 0,
                      "large_rows": 0, "rounds": 0}
        self.connect_ms = []
        self.phase = "starting"
        self.phase_since = time.monotonic()
        self.thread = threading.Thread(target=self.run, name=f"soak-{index}", daemon=True)

    def set_phase(self, phase):
        self.phase, self.phase_since = phase, time.monotonic()

    def error(self, phase, exc):
        text = f"{type(exc).__name__}: {str(exc).strip()}"
        with self.errors_lock:
            self.errors["count"] += 1
            self.errors["by_text"][text] = self.errors["by_text"].get(text, 0) + 1
            if len(self.errors["records"]) < KEEP_ERRORS:
                self.errors["records"].append({
                    "time": time.strftime("%H:%M:%S"), "protocol": self.args.protocol,
                    "thread": f"{self.args.label}/{self.index}", "phase": phase, "text": text})
        print(f"[soak-load {self.args.label}] {self.args.protocol} thread {self.index} "
              f"{phase} error: {text}", file=sys.stderr, flush=True)

    def idle(self, lo, hi):
        """Sleep a random while, cut short by the deadline; False once it has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return False
        self.stop.wait(min(left, self.rng.uniform(lo, hi)))
        return time.monotonic() < self.deadline

    def run(self):
        args = self.args
        connect = pg_connect if args.protocol == "pg" else my_connect
        users = PG_USERS if args.protocol == "pg" else MY_USERS
        if not self.idle(0, args.ramp):
            self.set_phase("done")
            return
        while time.monotonic() < self.deadline:
            second = self.rng.random() < SECOND_USER_SHARE
            user = users[1 if second else 0]
            self.set_phase("connect")
            self.stats["connect_attempts"] += 1
            t0 = time.monotonic()
            try:
                conn = connect(args.port, user)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and kept
                self.stats["connect_errors"] += 1
                self.error(f"connect as {user[0]}", exc)
                self.idle(0.5, 1.5)
                continue
            self.connect_ms.append(round((time.monotonic() - t0) * 1000, 2))
            self.stats["sessions"] += 1
            self.stats["second_user_sessions"] += second
            try:
                for _ in range(self.rng.randint(*ROUNDS)):
                    self.set_phase("query")
                    try:
                        run_round(args.protocol, conn, self.rng, self.stats)
                    except Exception as exc:  # noqa: BLE001
                        self.stats["query_errors"] += 1
                        self.error(f"query as {user[0]}", exc)
                        break
                    self.stats["rounds"] += 1
                    self.set_phase("idle")
                    if not self.idle(args.idle_min, args.idle_max):
                        break
            finally:
                self.set_phase("close")
                try:
                    conn.close()
                except Exception as exc:  # noqa: BLE001
                    self.error("close", exc)
        self.set_phase("done")


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[max(1, min(len(values), math.ceil(q / 100 * len(values)))) - 1]


def totals(workers, errors, errors_lock):
    out = {k: sum(w.stats[k] for w in workers) for k in workers[0].stats}
    with errors_lock:
        out["errors"] = errors["count"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=("pg", "mysql"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--ramp", type=float, default=20.0, help="thread starts spread over this")
    p.add_argument("--idle-min", type=float, default=0.2)
    p.add_argument("--idle-max", type=float, default=3.0)
    p.add_argument("--progress", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--seed", default="soak")
    p.add_argument("--label", default="0", help="names this process in error records")
    args = p.parse_args()

    threading.stack_size(512 * 1024)
    start = time.monotonic()
    deadline = start + args.seconds
    stop = threading.Event()
    errors, errors_lock = {"count": 0, "by_text": {}, "records": []}, threading.Lock()
    workers = [Worker(i, args, deadline, stop, errors, errors_lock) for i in range(args.threads)]
    for w in workers:
        w.thread.start()
    try:
        while time.monotonic() < deadline:
            stop.wait(min(args.progress, max(0.0, deadline - time.monotonic())))
            print("progress " + json.dumps(totals(workers, errors, errors_lock)), flush=True)
    except KeyboardInterrupt:
        pass
    stop.set()
    # Every thread finishes its current step (a query, a login) and closes its connection.
    hung = []
    join_until = time.monotonic() + QUERY_TIMEOUT_S + 30
    for w in workers:
        w.thread.join(max(0.0, join_until - time.monotonic()))
        if w.thread.is_alive():
            hung.append({"thread": f"{args.label}/{w.index}", "phase": w.phase,
                         "for_s": round(time.monotonic() - w.phase_since, 1)})
    result = totals(workers, errors, errors_lock)
    connect_ms = [ms for w in workers for ms in w.connect_ms]
    with errors_lock:
        result.update(protocol=args.protocol, label=args.label, threads=args.threads,
                      seconds=round(time.monotonic() - start, 1), hung=hung,
                      connect_ms={"p50": percentile(connect_ms, 50),
                                  "p99": percentile(connect_ms, 99),
                                  "max": max(connect_ms) if connect_ms else None},
                      error_texts=dict(errors["by_text"]), error_records=list(errors["records"]))
    print("result " + json.dumps(result), flush=True)
    os._exit(0)  # hung threads (reported above) must not keep the process alive


if __name__ == "__main__":
    main()
