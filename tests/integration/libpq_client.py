"""A psycopg2 client run in its own process, so that LD_LIBRARY_PATH can choose its libpq
(dbtrust_fixtures.run_libpq_client: the npm libpq 18 for sslnegotiation=direct and the
libpq 17+ cancel API). Not a test suite: the name does not match test_*.py.

stdin: JSON {"dsn": "...", "queries": ["select ..."],
             "cancel": {"query": "select pg_sleep(10)", "after_s": 1.0,
                        "method": "PQcancel" | "PQcancelBlocking"}}   (cancel is optional)
stdout: JSON {"libpq_version": int, "rows": [[...], ...] (first row of each query),
              "protocol_version": int (the session's, e.g. 30002 for 3.2: libpq 18's
              PQfullProtocolVersion; 10000 * PQprotocolVersion before 18),
              "error": str | null, "sqlstate": str | null, "stage": "connect" | "query" | ...,
              "cancel": {"ok": bool, "message": str (the cancel API's error text),
                         "sqlstate": str, "query_error": str (what the query raised),
                         "latency_s": float (cancel sent -> query ended), "query_s": float}}

PQcancel is psycopg2's conn.cancel(): libpq's legacy cancel. PQcancelBlocking is libpq 17+'s
PQcancelCreate/PQcancelBlocking, called through ctypes on psycopg2's PGconn (pgconn_ptr): it
replays the connection's sslmode/sslnegotiation, so the CancelRequest travels over TLS.
"""

import ctypes
import json
import sys
import threading
import time

import psycopg2
import psycopg2.extensions


def first_row(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
    return [v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for v in row]


def protocol_version(conn):
    """The protocol version the session runs (major * 10000 + minor): what the server agreed to,
    after any NegotiateProtocolVersion. libpq before 18 only knows the major."""
    libpq = ctypes.CDLL("libpq.so.5")
    pgconn = ctypes.c_void_p(conn.pgconn_ptr)
    if hasattr(libpq, "PQfullProtocolVersion"):
        libpq.PQfullProtocolVersion.argtypes = [ctypes.c_void_p]
        return libpq.PQfullProtocolVersion(pgconn)
    libpq.PQprotocolVersion.argtypes = [ctypes.c_void_p]
    return 10000 * libpq.PQprotocolVersion(pgconn)


def make_canceller(conn, method):
    """A function that sends one cancel for conn; returns (ok, message). The libpq 17+ cancel
    object is created here, before the query runs, in the connection's own thread."""
    if method == "PQcancel":
        def cancel():
            conn.cancel()
            return True, ""
        return cancel
    libpq = ctypes.CDLL("libpq.so.5")
    libpq.PQcancelCreate.restype = ctypes.c_void_p
    libpq.PQcancelCreate.argtypes = [ctypes.c_void_p]
    libpq.PQcancelBlocking.restype = ctypes.c_int
    libpq.PQcancelBlocking.argtypes = [ctypes.c_void_p]
    libpq.PQcancelErrorMessage.restype = ctypes.c_char_p
    libpq.PQcancelErrorMessage.argtypes = [ctypes.c_void_p]
    libpq.PQcancelFinish.argtypes = [ctypes.c_void_p]
    handle = libpq.PQcancelCreate(ctypes.c_void_p(conn.pgconn_ptr))
    if not handle:
        raise RuntimeError("PQcancelCreate returned NULL")

    def cancel():
        try:
            ok = libpq.PQcancelBlocking(handle) == 1
            message = (libpq.PQcancelErrorMessage(handle) or b"").decode(errors="replace")
            return ok, message.strip()
        finally:
            libpq.PQcancelFinish(handle)
    return cancel


def main():
    request = json.load(sys.stdin)
    out = {"libpq_version": psycopg2.extensions.libpq_version(), "rows": [], "error": None,
           "sqlstate": None, "stage": "connect"}
    try:
        conn = psycopg2.connect(request["dsn"])
        conn.autocommit = True
        out["protocol_version"] = protocol_version(conn)
        out["stage"] = "query"
        for sql in request.get("queries", []):
            out["rows"].append(first_row(conn, sql))
        spec = request.get("cancel")
        if spec:
            out["stage"] = "cancel"
            out["cancel"] = run_cancel(conn, spec)
        conn.close()
        out["stage"] = "done"
    except psycopg2.Error as exc:
        out["error"] = str(exc)
        out["sqlstate"] = exc.pgcode
    json.dump(out, sys.stdout)


def run_cancel(conn, spec):
    cancel = make_canceller(conn, spec.get("method", "PQcancel"))
    result = {"ok": None, "message": "", "sqlstate": None, "query_error": None,
              "latency_s": None, "query_s": None}
    sent = {}

    def canceller():
        time.sleep(spec.get("after_s", 1.0))
        sent["at"] = time.monotonic()
        result["ok"], result["message"] = cancel()

    thread = threading.Thread(target=canceller, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        with conn.cursor() as cur:
            cur.execute(spec.get("query", "select pg_sleep(10)"))
    except psycopg2.Error as exc:
        result["sqlstate"] = exc.pgcode
        result["query_error"] = str(exc).strip()
    ended = time.monotonic()
    thread.join(15)
    result["query_s"] = ended - started
    if "at" in sent:
        result["latency_s"] = ended - sent["at"]
    return result


if __name__ == "__main__":
    main()
