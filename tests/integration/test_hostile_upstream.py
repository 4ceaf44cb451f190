"""Hostile upstreams: scripted servers that break the protocol before, during and after TLS.

Run: /usr/bin/python3 tests/integration/test_hostile_upstream.py --dbtrust build/dbtrust [args]

One dbtrust process fronts a real TLS-only PostgreSQL 15 ("orders") and MariaDB 10.11 ("shop")
plus one listener per hostile behaviour, each pointing at its own scripted peer (Python, ssl
module, the fixture PKI's good leaf, so certificate verification passes and the test reaches
the behaviour it means to test). For every case the test checks what users and operators see:

- the client gets a protocol-native error naming the reason: a PostgreSQL ErrorResponse (raw
  wire and psycopg2) or a MySQL ERR packet (raw wire and PyMySQL), with the reason in
  parentheses, the listener and the SQLSTATE/code of the reason's class;
- dbtrust logs exactly one `conn_end` line per connection, with that reason;
- dbtrust stays alive and its good listeners keep serving real sessions, also while hostile
  connections are in flight (TestConcurrentTraffic).

Cases (PostgreSQL | MySQL):
- before TLS: garbage / huge 'E' / no answer to the SSLRequest, plaintext after a late 'S' |
  greeting with payload length 16 MiB-1, an HTTP server, protocol version 9, a complete but
  truncated greeting, a greeting cut by a close or stalled, a greeting with sequence id 5, an
  ERR packet in place of the greeting (1040, 1129, 1130: the client sees the code in dbtrust's
  words, never the unauthenticated server's text; the log gets that text sanitised);
- mid-handshake: the server closes after reading the ClientHello, after sending part of its
  ServerHello, or resets the connection there (both protocols);
- after TLS, during startup: message length 0x7fffffff, 0xffffffff (-1), 3, an unknown message
  type, an oversized ErrorResponse, a close | packet length 16 MiB-1, sequence id out of order,
  an unknown packet type, a close;
- TLS 1.2 renegotiation requested by the server (dbtrust must refuse it) and TLS 1.3 KeyUpdate
  (must be handled transparently), both protocols;
- slow servers (a relay in front of the real servers that dribbles the server's bytes one at a
  time): 50 ms per byte runs into handshake_timeout (3 s) -> tls_handshake_timeout (MySQL: also
  a greeting that is too slow -> upstream_timeout); 1 ms per byte with a generous timeout must
  work end to end.

Renegotiation and KeyUpdate from Python. The ssl module has no API to renegotiate or to send a
KeyUpdate. What was considered:
- `openssl s_server -tls1_2` renegotiates when it reads "r" (or "R") on stdin, but it speaks
  TLS from the first byte: it cannot answer PostgreSQL's SSLRequest with 'S' or send a MySQL
  greeting and read the SSLRequest first (`-starttls` exists for s_client only). It could be
  spliced behind a Python front that does the preamble, but then the database messages after
  the handshake would have to be typed into s_server's stdin as text lines.
- A hand-made HelloRequest record cannot be injected from outside: after the handshake every
  record is encrypted with keys only the TLS library holds.
- What works: the Python ssl module links the system libssl, and its socket object holds the
  OpenSSL `SSL *`. OpenSSLHooks (below) reads that pointer from the CPython object (layout:
  PyObject_HEAD, Socket weakref, SSL *; checked against the object's type pointer and against
  SSL_is_server/SSL_version before use) and calls SSL_renegotiate + SSL_do_handshake (TLS 1.2
  HelloRequest) and SSL_key_update (TLS 1.3 KeyUpdate) through ctypes on the same library. If
  the layout check fails (another Python), those tests are skipped with the reason.

Each case that found a dbtrust bug says so in a comment.
"""

import ctypes
import os
import secrets
import socket
import ssl
import struct
import sys
import threading
import time
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

import psycopg2  # noqa: E402
import pymysql  # noqa: E402

APP, APP_PW, DB = fx.PG_APP_USER, fx.PG_APP_PASSWORD, fx.PG_APP_DATABASE
NATIVE, NATIVE_PW, MY_DB = fx.MY_NATIVE_USER, fx.MY_NATIVE_PASSWORD, fx.MY_APP_DATABASE

# SQLSTATEs (PostgreSQL) and ERR code/SQLSTATE (MySQL) per reason class (px_pg / mysql.c).
PG_STATE = {"tls": "08001", "protocol": "08P01", "broken": "08006"}
MY_ERR = {"tls": (1043, "08S01"), "protocol": (1043, "08S01"), "broken": (1105, "HY000")}
REASON_CLASS = {
    "upstream_protocol_error": "protocol",
    "upstream_refused_tls": "tls",
    "upstream_plaintext_after_ssl_response": "tls",
    "tls_handshake_failed": "tls",
    "tls_handshake_timeout": "tls",
    "tls_error": "tls",
    "upstream_reset": "broken",
    "upstream_timeout": "broken",
}

SLOW_BYTE_DELAY = 0.05     # "1 byte every 50 ms"
DRIBBLE_BYTE_DELAY = 0.001  # byte by byte, but fast enough for a whole session start
SECRET_TEXT = "unauthenticated-server-text-must-not-be-shown"

DBTRUST_BIN = None           # set from --dbtrust before unittest runs
W = types.SimpleNamespace()  # the module's world


# --------------------------------------------------------------------------------------------
# OpenSSL hooks: renegotiation and KeyUpdate on a Python ssl socket (see the module docstring)
# --------------------------------------------------------------------------------------------

class OpenSSLHooks:
    SSL_KEY_UPDATE_NOT_REQUESTED = 0
    SSL_KEY_UPDATE_REQUESTED = 1
    _VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

    def __init__(self):
        self.error = None
        try:
            import _ssl
            lib = ctypes.CDLL(_ssl.__file__)  # dlsym searches its libssl dependency too
            for name, args in (("SSL_is_server", [ctypes.c_void_p]),
                               ("SSL_version", [ctypes.c_void_p]),
                               ("SSL_renegotiate", [ctypes.c_void_p]),
                               ("SSL_do_handshake", [ctypes.c_void_p]),
                               ("SSL_key_update", [ctypes.c_void_p, ctypes.c_int])):
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, ctypes.c_int
            self.lib = lib
        except (OSError, AttributeError, ImportError) as exc:
            self.error = f"libssl not reachable through ctypes: {exc!r}"

    def pointer(self, tls):
        """The OpenSSL SSL* of a server-side SSLSocket, after checking the CPython layout."""
        if self.error:
            raise unittest.SkipTest(self.error)
        obj = tls._sslobj
        word = ctypes.sizeof(ctypes.c_void_p)
        # PyObject_HEAD = (ob_refcnt, ob_type): a debug/other build would not match this.
        if ctypes.c_void_p.from_address(id(obj) + word).value != id(type(obj)):
            raise unittest.SkipTest("unexpected CPython object layout for _ssl._SSLSocket")
        ptr = ctypes.c_void_p.from_address(id(obj) + 3 * word).value
        if (not ptr or self.lib.SSL_is_server(ptr) != 1
                or self.lib.SSL_version(ptr) != self._VERSIONS.get(tls.version())):
            raise unittest.SkipTest("could not find the SSL* of the Python ssl socket")
        return ptr

    def request_renegotiation(self, tls):
        """TLS 1.2: send a HelloRequest (the client should answer with a new ClientHello)."""
        ptr = self.pointer(tls)
        return self.lib.SSL_renegotiate(ptr), self.lib.SSL_do_handshake(ptr)

    def self_test(self):
        """Find the SSL* of a loopback TLS 1.2 connection before any test relies on it; on
        failure, `error` says why and the renegotiation/KeyUpdate tests skip."""
        if self.error:
            return
        try:
            listener = socket.create_server(("127.0.0.1", 0))
            with listener:
                client = socket.create_connection(listener.getsockname(), timeout=5)
                server, _ = listener.accept()
            ctx = tls_server_context(ssl.TLSVersion.TLSv1_2)
            cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            cctx.load_verify_locations(W.pki.bundle)
            result = {}

            def handshake_client():
                try:
                    result["client"] = cctx.wrap_socket(client, server_hostname="localhost")
                except Exception as exc:  # noqa: BLE001 - reported below
                    result["client_error"] = exc
            t = threading.Thread(target=handshake_client)
            t.start()
            server.settimeout(5)
            tls = ctx.wrap_socket(server, server_side=True)
            t.join(5)
            try:
                self.pointer(tls)
            finally:
                tls.close()
                if "client" in result:
                    result["client"].close()
                client.close()
        except unittest.SkipTest as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure disables the hooks
            self.error = f"OpenSSL hook self-test failed: {exc!r}"

    def key_update(self, tls, requested):
        """TLS 1.3: schedule a KeyUpdate, sent before the next record we write."""
        ptr = self.pointer(tls)
        mode = self.SSL_KEY_UPDATE_REQUESTED if requested else self.SSL_KEY_UPDATE_NOT_REQUESTED
        return self.lib.SSL_key_update(ptr, mode)


HOOKS = OpenSSLHooks()


# --------------------------------------------------------------------------------------------
# Building blocks of the scripted peers
# --------------------------------------------------------------------------------------------

def tls_server_context(version=None, alpn=None):
    """A server context with the PKI's good leaf (verification by dbtrust passes). version:
    pin one TLS version (renegotiation needs 1.2, KeyUpdate 1.3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(W.pki.leaf.chain, W.pki.leaf.key)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    ctx.options &= ~ssl.OP_NO_RENEGOTIATION
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def read_tls_record(sock, record):
    """One raw TLS record (header + body) as the client sent it: the ClientHello."""
    header = record.recv_exact(sock, 5)
    if header[0] != 0x16:
        raise ValueError(f"expected a TLS handshake record, got {header!r}")
    return header + record.recv_exact(sock, struct.unpack("!H", header[3:5])[0])


def server_first_flight(client_hello):
    """What a real TLS server answers to this ClientHello (ServerHello and the rest of its
    first flight), produced by an in-memory ssl.SSLObject."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = tls_server_context().wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(client_hello)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def reset_on_close(sock):
    """close() will send a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def stream_until_closed(sock, record, first, filler, total):
    """Send `first`, then `filler` chunks up to `total` bytes; note how much the other side
    took before it closed (a bounded reader stops early)."""
    sent = 0
    started = time.monotonic()
    try:
        sock.sendall(first)
        while sent < total:
            sock.sendall(filler)
            sent += len(filler)
        record.notes["outcome"] = "all sent"
    except OSError as exc:
        record.notes["outcome"] = f"peer closed: {exc.__class__.__name__}"
    record.notes["sent"] = sent
    record.notes["seconds"] = time.monotonic() - started
    record.drain(sock, threading.Event(), timeout=5)


def hold_open(sock, record, stop_event, seconds=8):
    """Keep the connection open and record what arrives (a peer that goes quiet)."""
    record.drain(sock, stop_event, timeout=seconds)


# -- PostgreSQL ------------------------------------------------------------------------------

def pg_tls_accept(sock, record, version=None):
    """SSLRequest -> 'S' -> TLS (server side) -> the StartupMessage read over TLS."""
    record.recv_exact(sock, 8)
    sock.sendall(b"S")
    tls = tls_server_context(version, ["postgresql"]).wrap_socket(sock, server_side=True)
    record.notes["tls_version"] = tls.version()
    length = struct.unpack("!I", fx.recv_exact(tls, 4))[0]
    record.notes["startup"] = struct.pack("!I", length) + fx.recv_exact(tls, length - 4)
    return tls


def pg_message(mtype, body):
    return mtype + struct.pack("!I", len(body) + 4) + body


def pg_auth(code, extra=b""):
    return pg_message(b"R", struct.pack("!I", code) + extra)


def pg_read_tls_message(tls):
    header = fx.recv_exact(tls, 5)
    return header[:1], fx.recv_exact(tls, struct.unpack("!I", header[1:])[0] - 4)


def pg_script_garbage_answer(sock, record, stop_event):
    """Answers the SSLRequest with a byte that is neither 'S', 'N' nor 'E'."""
    record.recv_exact(sock, 8)
    sock.sendall(b"X\x00\x01garbage")
    hold_open(sock, record, stop_event)


def pg_script_huge_error_answer(sock, record, stop_event):
    """Answers the SSLRequest with an 'E' of length 0x7fffffff and 64 MiB of text: the
    unauthenticated text must not be shown (CVE-2024-10977) nor buffered."""
    record.recv_exact(sock, 8)
    text = (f"FATAL {SECRET_TEXT} ".encode() * 4096)[:65536]
    stream_until_closed(sock, record, b"E" + struct.pack("!I", 0x7FFFFFFF) + b"SFATAL\0M",
                        text, 64 << 20)


def pg_script_close_before_answer(sock, record, stop_event):
    """Reads the SSLRequest and closes without answering."""
    record.recv_exact(sock, 8)


def pg_script_late_plaintext(sock, record, stop_event):
    """Answers 'S' alone, then (in a later segment) plaintext instead of a ServerHello."""
    record.recv_exact(sock, 8)
    sock.sendall(b"S")
    time.sleep(0.3)
    try:
        sock.sendall(fx.pg_error_response({"S": "FATAL", "C": "XX000", "M": SECRET_TEXT}))
    except OSError:
        pass
    hold_open(sock, record, stop_event)


def pg_script_close_after_client_hello(sock, record, stop_event):
    record.recv_exact(sock, 8)
    sock.sendall(b"S")
    record.notes["client_hello"] = len(read_tls_record(sock, record))


def pg_script_partial_server_hello(sock, record, stop_event):
    record.recv_exact(sock, 8)
    sock.sendall(b"S")
    flight = server_first_flight(read_tls_record(sock, record))
    record.notes["flight"] = len(flight)
    sock.sendall(flight[:40])  # inside the ServerHello record (~90+ bytes)
    time.sleep(0.2)


def pg_script_reset_in_server_hello(sock, record, stop_event):
    pg_script_partial_server_hello(sock, record, stop_event)
    reset_on_close(sock)


def pg_script_after_tls(reply, then_close=False):
    """TLS and StartupMessage as a real server, then `reply` (raw bytes) over TLS."""
    def script(sock, record, stop_event):
        with pg_tls_accept(sock, record) as tls:
            if reply:
                tls.sendall(reply)
            if not then_close:
                hold_open(tls, record, stop_event)
    return script


def insist_on_renegotiation(tls, record):
    """Send a HelloRequest and read: an OpenSSL server turns the client's no_renegotiation
    warning into a fatal handshake_failure alert; a client that renegotiates would send a
    ClientHello instead, and the read would then wait for application data."""
    record.notes["renegotiate"] = HOOKS.request_renegotiation(tls)
    tls.settimeout(5)
    try:
        data = tls.recv(4096)
        record.notes["after"] = f"read {data!r}"
    except (ssl.SSLError, OSError) as exc:
        record.notes["after"] = f"{exc.__class__.__name__}: {exc}"


def pg_script_renegotiate(sock, record, stop_event):
    """TLS 1.2; after the StartupMessage the server asks for a renegotiation and insists (an
    OpenSSL server turns the client's no_renegotiation warning into a fatal alert)."""
    with pg_tls_accept(sock, record, ssl.TLSVersion.TLSv1_2) as tls:
        insist_on_renegotiation(tls, record)


def pg_script_key_update(sock, record, stop_event):
    """TLS 1.3; KeyUpdate (update_requested) before the cleartext-password request and a
    second one (not requested) before AuthenticationOk: the login must simply work."""
    with pg_tls_accept(sock, record, ssl.TLSVersion.TLSv1_3) as tls:
        record.notes["key_update_1"] = HOOKS.key_update(tls, requested=True)
        tls.sendall(pg_auth(3))
        mtype, body = pg_read_tls_message(tls)
        record.notes["password_message"] = (mtype, body)
        record.notes["key_update_2"] = HOOKS.key_update(tls, requested=False)
        tls.sendall(pg_auth(0) + pg_message(b"Z", b"I"))
        hold_open(tls, record, stop_event)


def end_session(tls, how):
    """End a TLS session: "close_notify" (the server's orderly end), "truncate" (TCP FIN
    without close_notify: what an on-path attacker can forge) or "reset" (TCP RST)."""
    if how == "close_notify":
        tls.unwrap().close()
    elif how == "truncate":
        tls.shutdown(socket.SHUT_RDWR)  # drops the TLS layer: no close_notify
    else:
        reset_on_close(tls)
    tls.close()


TRUNCATED_ANSWER = 4 << 20  # more than the socket buffers hold: dbtrust still has it queued


def pg_script_session_end(how, answer=0):
    """A login that succeeds, one query read, `answer` bytes of NoticeResponse messages, then
    the session ends the given way."""
    def script(sock, record, stop_event):
        tls = pg_tls_accept(sock, record)
        tls.sendall(pg_auth(0) + pg_message(b"K", struct.pack("!II", 4242, 99))
                    + pg_message(b"Z", b"I"))
        record.notes["query"] = pg_read_tls_message(tls)
        notice = pg_message(b"N", b"x" * (65536 - 5))
        for _ in range(answer // len(notice)):
            tls.sendall(notice)
        end_session(tls, how)
    return script


# -- MySQL -----------------------------------------------------------------------------------

MY_SERVER_CAPS = (fx.MY_CLIENT_LONG_PASSWORD | fx.MY_CLIENT_LONG_FLAG
                  | fx.MY_CLIENT_CONNECT_WITH_DB | fx.MY_CLIENT_PROTOCOL_41 | fx.MY_CLIENT_SSL
                  | fx.MY_CLIENT_TRANSACTIONS | fx.MY_CLIENT_SECURE_CONNECTION
                  | fx.MY_CLIENT_MULTI_RESULTS | fx.MY_CLIENT_PLUGIN_AUTH
                  | fx.MY_CLIENT_CONNECT_ATTRS | fx.MY_CLIENT_PLUGIN_AUTH_LENENC)
MY_VERSION = "5.5.5-10.11.99-MariaDB-hostile-script"


def my_greeting_payload(caps=MY_SERVER_CAPS):
    nonce = bytes(secrets.randbelow(126) + 1 for _ in range(20))
    return fx.my_build_greeting(MY_VERSION, 4242, nonce, caps, "mysql_native_password")


def my_tls_accept(sock, record, version=None):
    """Greeting with CLIENT_SSL -> SSLRequest (seq 1) -> TLS -> HandshakeResponse (seq 2)."""
    sock.sendall(fx.my_packet(0, my_greeting_payload()))
    seq, payload = fx.my_read_packet(sock)
    record.notes["ssl_request"] = (seq, payload)
    tls = tls_server_context(version).wrap_socket(sock, server_side=True)
    record.notes["tls_version"] = tls.version()
    record.notes["response"] = fx.my_read_packet(tls)
    return tls


def my_script_greeting(raw, then="hold"):
    """Sends raw bytes as the greeting; then holds the connection open or closes."""
    def script(sock, record, stop_event):
        sock.sendall(raw)
        if then == "hold":
            hold_open(sock, record, stop_event)
    return script


def my_script_greeting_16m(sock, record, stop_event):
    """A greeting whose header announces 16 MiB-1 bytes, followed by 64 MiB of filler."""
    header = struct.pack("<I", 0xFFFFFF)[:3] + b"\x00"
    stream_until_closed(sock, record, header + b"\x0a", b"\x41" * 65536, 64 << 20)


def my_script_close_after_client_hello(sock, record, stop_event):
    sock.sendall(fx.my_packet(0, my_greeting_payload()))
    record.notes["ssl_request"] = fx.my_read_packet(sock)
    record.notes["client_hello"] = len(read_tls_record(sock, record))


def my_script_partial_server_hello(sock, record, stop_event):
    sock.sendall(fx.my_packet(0, my_greeting_payload()))
    record.notes["ssl_request"] = fx.my_read_packet(sock)
    flight = server_first_flight(read_tls_record(sock, record))
    record.notes["flight"] = len(flight)
    sock.sendall(flight[:40])
    time.sleep(0.2)


def my_script_after_tls(reply, then_close=False):
    def script(sock, record, stop_event):
        with my_tls_accept(sock, record) as tls:
            if reply:
                tls.sendall(reply)
            if not then_close:
                hold_open(tls, record, stop_event)
    return script


def my_script_session_end(how):
    """A login that succeeds, one command read, then the session ends the given way."""
    def script(sock, record, stop_event):
        tls = my_tls_accept(sock, record)
        tls.sendall(fx.my_packet(3, fx.my_ok_packet()))
        record.notes["command"] = fx.my_read_packet(tls)
        end_session(tls, how)
    return script


def my_script_renegotiate(sock, record, stop_event):
    with my_tls_accept(sock, record, ssl.TLSVersion.TLSv1_2) as tls:
        insist_on_renegotiation(tls, record)


KEY_UPDATE_REPLY = "scripted server answers over updated keys"


def my_script_key_update(sock, record, stop_event):
    """TLS 1.3; a KeyUpdate (update_requested) before the OK, another before the answer to
    the client's first command, which must arrive readable after dbtrust's own KeyUpdate."""
    with my_tls_accept(sock, record, ssl.TLSVersion.TLSv1_3) as tls:
        record.notes["key_update_1"] = HOOKS.key_update(tls, requested=True)
        tls.sendall(fx.my_packet(3, fx.my_ok_packet()))
        record.notes["command"] = fx.my_read_packet(tls)
        record.notes["key_update_2"] = HOOKS.key_update(tls, requested=False)
        tls.sendall(fx.my_packet(1, fx.my_err_packet(1105, KEY_UPDATE_REPLY)))
        hold_open(tls, record, stop_event)


# -- a relay in front of the real servers that dribbles the server's bytes -------------------

class DribbleRelay:
    """TCP relay to a real server. Bytes from the server to dbtrust are sent one at a time,
    `delay` seconds apart (TCP_NODELAY: one segment each), once `after_up_bytes` bytes went
    the other way (0: from the start; MySQL: 1 = after the greeting) and for the first `limit`
    bytes; the rest flows at full speed. dbtrust -> server is never slowed down."""

    def __init__(self, target_port, delay, after_up_bytes=0, limit=1 << 16, name="relay"):
        self.target_port = target_port
        self.delay = delay
        self.after_up_bytes = after_up_bytes
        self.limit = limit
        self.stats = []
        # The listener and accept loop are the fixtures' scripted peer; this is its script.
        self.peer = fx.ScriptedUpstream(self._serve, name)
        self.port = self.peer.port

    def start(self):
        self.peer.start()
        return self

    def _serve(self, client, record, stop_event):
        stat = {"up": 0, "down": 0, "dribbled": 0}
        self.stats.append(stat)
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done = threading.Event()

        def close_both():
            done.set()
            for s in (client, server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        def up():
            try:
                while not done.is_set():
                    data = client.recv(65536)
                    if not data:
                        break
                    stat["up"] += len(data)
                    server.sendall(data)
            except OSError:
                pass
            close_both()

        def down():
            try:
                while not done.is_set():
                    data = server.recv(65536)
                    if not data:
                        break
                    for i in range(len(data)):
                        if (stat["up"] < self.after_up_bytes
                                or stat["dribbled"] >= self.limit or done.is_set()):
                            client.sendall(data[i:])
                            stat["down"] += len(data) - i
                            break
                        client.sendall(data[i:i + 1])
                        stat["down"] += 1
                        stat["dribbled"] += 1
                        time.sleep(self.delay)
            except OSError:
                pass
            close_both()

        threads = [threading.Thread(target=f, daemon=True) for f in (up, down)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        client.close()
        server.close()


# --------------------------------------------------------------------------------------------
# Module fixtures
# --------------------------------------------------------------------------------------------

def pg_peers():
    """listener name -> (script, extra listener options)."""
    short = {"handshake_timeout": "3s"}
    return {
        "pg-garbage-answer": (pg_script_garbage_answer, {}),
        "pg-huge-error-answer": (pg_script_huge_error_answer, {}),
        "pg-close-before-answer": (pg_script_close_before_answer, {}),
        "pg-late-plaintext": (pg_script_late_plaintext, {}),
        "pg-close-after-hello": (pg_script_close_after_client_hello, {}),
        "pg-partial-server-hello": (pg_script_partial_server_hello, {}),
        "pg-reset-in-server-hello": (pg_script_reset_in_server_hello, {}),
        "pg-len-max": (pg_script_after_tls(b"R" + struct.pack("!I", 0x7FFFFFFF) + b"\0" * 64),
                       {}),
        "pg-len-negative": (pg_script_after_tls(b"R" + struct.pack("!i", -1) + b"\0" * 64), {}),
        "pg-len-short": (pg_script_after_tls(b"R" + struct.pack("!I", 3) + b"\0" * 64), {}),
        "pg-unknown-type": (pg_script_after_tls(pg_message(b"q", b"\x00\x00\x00\x2a")), short),
        "pg-oversized-error": (pg_script_after_tls(fx.pg_error_response(
            {"S": "FATAL", "C": "XX000", "M": "x" * 40000})), {}),
        "pg-close-after-tls": (pg_script_after_tls(b"", then_close=True), {}),
        # Issue 15: the login watcher reads the whole login; a BackendKeyData with a 300-byte key
        # (the bound is 256, PROTOCOLS.md A2) after AuthenticationOk is refused, not relayed.
        "pg-bad-backend-key": (pg_script_after_tls(
            pg_auth(0) + pg_message(b"K", struct.pack("!I", 4242) + b"k" * 300)), {}),
        "pg-renegotiate": (pg_script_renegotiate, {}),
        "pg-key-update": (pg_script_key_update, {}),
        "pg-end-truncate": (pg_script_session_end("truncate"), {}),
        "pg-end-close-notify": (pg_script_session_end("close_notify"), {}),
        "pg-end-reset": (pg_script_session_end("reset"), {}),
        "pg-end-truncate-after-data": (pg_script_session_end("truncate", TRUNCATED_ANSWER), {}),
    }


# What an on-path attacker might write into an ERR greeting: a lure for the user, and control
# bytes that would forge a log line if they reached the log unsanitised.
EVIL_TEXT = "Too many connections; please visit http://evil.example to fix it"
EVIL_TAIL = "\n\x1b[31mreason=none"
MY_ERR_GREETINGS = {  # listener: (code, reason, SQLSTATE in the server's ERR)
    "my-err-1040": (1040, "upstream_too_many_connections", None),
    "my-err-1129": (1129, "upstream_host_blocked", None),
    "my-err-1130": (1130, "upstream_refused", "HY000"),
}


def my_peers():
    greeting = fx.my_packet(0, my_greeting_payload())
    bad_version = bytearray(greeting)
    bad_version[4] = 0x09  # protocol version 9 instead of 10
    cut = fx.my_packet(0, my_greeting_payload())[:30]
    http = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
            b"This is not a MySQL server.\n")
    short = fx.my_packet(0, b"\x0a5.5.5-10.11.99-MariaDB\x00" + b"\x01\x00\x00\x00")
    return {
        "my-greeting-16m": (my_script_greeting_16m, {}),
        "my-greeting-http": (my_script_greeting(http), {}),
        "my-greeting-bad-version": (my_script_greeting(bytes(bad_version)), {}),
        "my-greeting-short": (my_script_greeting(short), {}),
        "my-greeting-cut": (my_script_greeting(cut, then="close"), {}),
        "my-greeting-stall": (my_script_greeting(cut, then="hold"), {"handshake_timeout": "1s"}),
        "my-greeting-bad-seq": (my_script_greeting(b"".join([greeting[:3], b"\x05",
                                                             greeting[4:]])), {}),
        "my-close-after-hello": (my_script_close_after_client_hello, {}),
        "my-partial-server-hello": (my_script_partial_server_hello, {}),
        "my-auth-16m": (my_script_after_tls(struct.pack("<I", 0xFFFFFF)[:3] + b"\x03"
                                            + b"\x00" * 64), {}),
        "my-auth-bad-seq": (my_script_after_tls(fx.my_packet(9, fx.my_ok_packet())), {}),
        "my-auth-garbage": (my_script_after_tls(fx.my_packet(3, b"\x42 garbage \xff\xfe")),
                            {"handshake_timeout": "3s"}),
        "my-close-after-tls": (my_script_after_tls(b"", then_close=True), {}),
        "my-renegotiate": (my_script_renegotiate, {}),
        "my-key-update": (my_script_key_update, {}),
        "my-end-truncate": (my_script_session_end("truncate"), {}),
        "my-end-close-notify": (my_script_session_end("close_notify"), {}),
        **{name: (my_script_greeting(fx.my_packet(0, fx.my_err_packet(
            code, EVIL_TEXT + EVIL_TAIL, sqlstate=state)), then="close"), {})
           for name, (code, _, state) in MY_ERR_GREETINGS.items()},
    }


def setUpModule():
    if not (os.path.isfile(DBTRUST_BIN) and os.access(DBTRUST_BIN, os.X_OK)):
        raise RuntimeError(f"dbtrust binary not found or not executable: {DBTRUST_BIN}")
    for key in [k for k in os.environ if k.startswith(("PG", "MYSQL", "MARIADB"))]:
        del os.environ[key]
    W.tmp = fx.make_temp_dir("test-hostile")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    # Sequentially, in this thread: the servers get a parent-death signal, and Linux sends it
    # when the *thread* that started them ends.
    W.pg = fx.PostgresServer(W.pki.leaf, "pg-hostile").start().provision_app_roles()
    W.maria = fx.MariadbServer(W.pki.leaf, "maria-hostile").start().provision_app_users()
    W.peers = {}
    W.admin_port = fx.free_port()
    cfg = fx.DbTrustConfig(W.pki.bundle, workers=2, drain_timeout="1s",
                           admin=f"127.0.0.1:{W.admin_port}")
    timeouts = {"connect_timeout": "2s", "handshake_timeout": "5s", "startup_timeout": "5s"}

    def listener(name, protocol, port, **options):
        cfg.add_listener(name, protocol, f"localhost:{port}", **{**timeouts, **options})

    listener("orders", "postgres", W.pg.port)
    listener("shop", "mysql", W.maria.port)
    for protocol, peers in (("postgres", pg_peers()), ("mysql", my_peers())):
        for name, (script, options) in peers.items():
            W.peers[name] = fx.ScriptedUpstream(script, name).start()
            listener(name, protocol, W.peers[name].port, **options)

    W.relays = {
        "pg-slow": DribbleRelay(W.pg.port, SLOW_BYTE_DELAY, name="pg-slow"),
        "pg-dribble": DribbleRelay(W.pg.port, DRIBBLE_BYTE_DELAY, name="pg-dribble"),
        "my-slow-greeting": DribbleRelay(W.maria.port, SLOW_BYTE_DELAY, name="my-slow-greeting"),
        "my-slow-tls": DribbleRelay(W.maria.port, SLOW_BYTE_DELAY, after_up_bytes=1,
                                    name="my-slow-tls"),
        "my-dribble": DribbleRelay(W.maria.port, DRIBBLE_BYTE_DELAY, name="my-dribble"),
    }
    for name, relay in W.relays.items():
        relay.start()
        protocol = "postgres" if name.startswith("pg-") else "mysql"
        slow = "slow" in name
        listener(name, protocol, relay.port, handshake_timeout="3s" if slow else "30s",
                 startup_timeout="30s")
    HOOKS.self_test()
    W.config = cfg
    W.dbtrust = fx.DbTrust.from_config(DBTRUST_BIN, cfg, W.tmp).start()
    # start() probed every port with a TCP connect: let those connections end (the slow
    # MySQL listeners keep theirs until handshake_timeout) so that no test counts their
    # conn_end lines as its own.
    fx.wait_for(lambda: len(W.dbtrust.find_lines("conn_end")) >= len(cfg.listeners), 10,
                what="the start-up probes' conn_end lines")
    fx.wait_for(lambda: fx.tcp_accepts("127.0.0.1", W.admin_port), 5, what="admin endpoint")


def tearDownModule():
    fx.run_cleanups()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def port_of(listener):
    return W.config.listeners[listener].port


def unique(tag):
    return f"dbt-{tag}-{secrets.token_hex(3)}"


def pg_dsn(listener, app=None, password=APP_PW):
    return fx.pg_conninfo(host="127.0.0.1", port=port_of(listener), user=APP, password=password,
                          dbname=DB, sslmode="prefer", application_name=app, connect_timeout=10)


def pg_raw_attempt(listener, app, timeout=10):
    """SSLRequest ('N' expected), StartupMessage, first reply: (answers, type, body). A reply
    that does not come is ('', None, <what happened>)."""
    try:
        return fx.pg_first_reply("127.0.0.1", port_of(listener),
                                 {"user": APP, "database": DB, "application_name": app},
                                 pre_requests=[fx.PG_SSL_REQUEST], timeout=timeout)
    except (OSError, EOFError) as exc:
        return [], None, f"{exc.__class__.__name__}: {exc}"


def my_raw_attempt(listener, tag, timeout=10):
    """Greeting, native-password HandshakeResponse with program_name, next packet. Returns
    (greeting or None, seq, payload); payload None (seq = what happened) if nothing came."""
    greeting = None
    try:
        with socket.create_connection(("127.0.0.1", port_of(listener)), timeout=timeout) as sock:
            seq, payload = fx.my_read_packet(sock)
            if payload[:1] == b"\xff":
                return None, seq, payload
            greeting = fx.my_parse_greeting(payload)
            sock.sendall(fx.my_packet(1, fx.my_handshake_response(
                NATIVE, fx.my_native_scramble(NATIVE_PW, greeting.nonce), database=MY_DB,
                attrs={"program_name": tag})))
            return (greeting, *fx.my_read_packet(sock))
    except (OSError, EOFError, ValueError) as exc:
        return greeting, f"{exc.__class__.__name__}: {exc}", None


def pymysql_connect(listener, **kw):
    args = {"host": "127.0.0.1", "port": port_of(listener), "user": NATIVE,
            "password": NATIVE_PW, "database": MY_DB, "connect_timeout": 10,
            "read_timeout": 30, "write_timeout": 30, "autocommit": True, "ssl_disabled": True}
    args.update(kw)
    return pymysql.connect(**args)


def pg_query_good(tag="still-serving"):
    conn = psycopg2.connect(pg_dsn("orders", app=unique(tag)))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("select 1, current_user, ssl from pg_stat_ssl "
                        "where pid = pg_backend_pid()")
            return cur.fetchone()
    finally:
        conn.close()


def my_query_good(tag="still-serving"):
    conn = pymysql_connect("shop", program_name=unique(tag))
    try:
        with conn.cursor() as cur:
            cur.execute("select 1, current_user()")
            return cur.fetchone()
    finally:
        conn.close()


class HostileTestCase(unittest.TestCase):

    maxDiff = None

    def assert_good_listeners_serve(self):
        """dbtrust is alive and both good listeners serve real, verified sessions."""
        self.assertTrue(W.dbtrust.alive(), "dbtrust process died")
        self.assertEqual(pg_query_good(), (1, APP, True))
        self.assertEqual(my_query_good(), (1, f"{NATIVE}@%"))

    def conn_ends(self, listener, since):
        return W.dbtrust.find_lines("conn_end", f"listener={listener} ", since=since)

    def assert_conn_ends(self, listener, reason, since, count, timeout=8):
        """Exactly `count` conn_end lines for the listener since the mark, all with reason."""
        fx.wait_for(lambda: len(self.conn_ends(listener, since)) >= count, timeout,
                    what=f"{count} conn_end line(s) for listener {listener}")
        time.sleep(0.1)  # a duplicate line would come right after
        lines = self.conn_ends(listener, since)
        self.assertEqual(len(lines), count, "\n".join(lines))
        for line in lines:
            self.assertIn(f" reason={reason} ", line + " ")
        return lines

    # -- PostgreSQL ------------------------------------------------------------------------

    def assert_pg_refused(self, listener, reason, detail=None, driver=True, forbidden=None,
                          timeout=10):
        """Raw client: 'N', then an ErrorResponse with the reason's SQLSTATE naming reason and
        listener; psycopg2 shows the same; one conn_end line per attempt; good listeners
        still serve. Returns the ErrorResponse fields."""
        mark = W.dbtrust.mark()
        app = unique(listener)
        started = time.monotonic()
        answers, mtype, body = pg_raw_attempt(listener, app, timeout)
        elapsed = time.monotonic() - started
        self.assertEqual(answers, [b"N"], f"no 'N' to the SSLRequest: {body!r}")
        self.assertEqual(mtype, "E", f"expected dbtrust's ErrorResponse, got {mtype!r} {body!r}"
                                     f" after {elapsed:.1f}s")
        fields = fx.pg_error_fields(body)
        message = fields.get("M", "")
        self.assertEqual(fields.get("C"), PG_STATE[REASON_CLASS[reason]], fields)
        self.assertIn(f"({reason})", message, fields)
        self.assertIn(f"[listener {listener}, upstream localhost:", message, fields)
        self.assertTrue(message.startswith("dbtrust: "), fields)
        if detail:
            self.assertIn(detail, message, fields)
        if forbidden:
            self.assertNotIn(forbidden, str(fields))
        attempts = 1
        if driver:
            with self.assertRaises(psycopg2.OperationalError) as caught:
                psycopg2.connect(pg_dsn(listener, app=unique(listener))).close()
            self.assertIn(f"({reason})", str(caught.exception))
            self.assertIn(f"listener {listener}", str(caught.exception))
            if forbidden:
                self.assertNotIn(forbidden, str(caught.exception))
            attempts += 1
        lines = self.assert_conn_ends(listener, reason, mark, attempts)
        self.assertTrue(any(f"app={app} " in line for line in lines), lines)
        self.assert_good_listeners_serve()
        return fields

    # -- MySQL -----------------------------------------------------------------------------

    def assert_my_refused(self, listener, reason, before_greeting, detail=None, driver=True,
                          timeout=10):
        """Raw client: an ERR naming reason and listener, at sequence id 0 without SQLSTATE
        when dbtrust could not greet, else at sequence id 2 with the class's SQLSTATE; PyMySQL
        shows the same; one conn_end line per attempt; good listeners still serve."""
        mark = W.dbtrust.mark()
        tag = unique(listener)
        started = time.monotonic()
        greeting, seq, payload = my_raw_attempt(listener, tag, timeout)
        elapsed = time.monotonic() - started
        self.assertIsNotNone(payload, f"no packet from dbtrust after {elapsed:.1f}s: {seq}")
        self.assertEqual(payload[:1], b"\xff",
                         f"expected dbtrust's ERR packet, got seq {seq} {payload[:60]!r}")
        err = fx.my_parse_err(payload)
        code, sqlstate = MY_ERR[REASON_CLASS[reason]]
        if before_greeting:
            self.assertIsNone(greeting, "dbtrust greeted although the upstream greeting was bad")
            self.assertEqual((seq, err.sqlstate), (0, None), err)
        else:
            self.assertIsNotNone(greeting)
            self.assertEqual((seq, err.sqlstate), (2, sqlstate), err)
        self.assertEqual(err.code, code, err)
        self.assertTrue(err.message.startswith("dbtrust: "), err)
        self.assertIn(f"({reason})", err.message)
        self.assertIn(f"[listener {listener}, upstream localhost:", err.message)
        if detail:
            self.assertIn(detail, err.message)
        attempts = 1
        if driver:
            with self.assertRaises(pymysql.err.OperationalError) as caught:
                pymysql_connect(listener, program_name=unique(listener)).close()
            self.assertEqual(caught.exception.args[0], code, caught.exception.args)
            self.assertIn(f"({reason})", caught.exception.args[1])
            attempts += 1
        lines = self.assert_conn_ends(listener, reason, mark, attempts)
        if not before_greeting:
            self.assertTrue(any(f"app={tag} " in line for line in lines), lines)
        self.assert_good_listeners_serve()
        return err

    def require_hooks(self):
        if HOOKS.error:
            self.skipTest(HOOKS.error)

    def peer_records(self, listener, count):
        return W.peers[listener].connections_since(count)


# --------------------------------------------------------------------------------------------
# PostgreSQL: before TLS
# --------------------------------------------------------------------------------------------

class TestPgBeforeTls(HostileTestCase):

    def test_garbage_answer_to_ssl_request(self):
        self.assert_pg_refused("pg-garbage-answer", "upstream_protocol_error",
                               detail="unexpected answer 0x58 to the SSL request")

    def test_huge_error_answer_is_neither_shown_nor_buffered(self):
        """An 'E' of length 0x7fffffff answering the SSLRequest: refused as a server without
        TLS, its text not shown (CVE-2024-10977), and dbtrust hangs up instead of reading
        the 64 MiB behind it."""
        count = W.peers["pg-huge-error-answer"].connection_count()
        self.assert_pg_refused("pg-huge-error-answer", "upstream_refused_tls",
                               forbidden=SECRET_TEXT)
        for record in self.peer_records("pg-huge-error-answer", count):
            self.assertTrue(record.notes["outcome"].startswith("peer closed"), record.notes)
            self.assertLess(record.notes["sent"], 32 << 20, record.notes)
            self.assertLess(record.notes["seconds"], 3, record.notes)

    def test_close_without_answer(self):
        self.assert_pg_refused("pg-close-before-answer", "tls_handshake_failed")

    def test_plaintext_after_a_lone_s(self):
        """'S' arrives alone (it passes the one-byte check), then plaintext instead of a
        ServerHello: caught by the first-TLS-byte check, the text is not shown."""
        self.assert_pg_refused("pg-late-plaintext", "upstream_plaintext_after_ssl_response",
                               detail="first byte 0x45", forbidden=SECRET_TEXT)


# --------------------------------------------------------------------------------------------
# Both protocols: the server gives up in the middle of the TLS handshake
# --------------------------------------------------------------------------------------------

class TestMidHandshake(HostileTestCase):

    def test_pg_close_after_client_hello(self):
        count = W.peers["pg-close-after-hello"].connection_count()
        self.assert_pg_refused("pg-close-after-hello", "tls_handshake_failed")
        for record in self.peer_records("pg-close-after-hello", count):
            self.assertGreater(record.notes.get("client_hello", 0), 100, record.notes)

    def test_pg_close_inside_server_hello(self):
        self.assert_pg_refused("pg-partial-server-hello", "tls_handshake_failed")

    def test_pg_reset_inside_server_hello(self):
        self.assert_pg_refused("pg-reset-in-server-hello", "tls_handshake_failed")

    def test_my_close_after_client_hello(self):
        count = W.peers["my-close-after-hello"].connection_count()
        self.assert_my_refused("my-close-after-hello", "tls_handshake_failed",
                               before_greeting=False)
        for record in self.peer_records("my-close-after-hello", count):
            seq, payload = record.notes["ssl_request"]
            self.assertEqual((seq, len(payload)), (1, 32), "SSLRequest before the ClientHello")
            self.assertGreater(record.notes.get("client_hello", 0), 100, record.notes)

    def test_my_close_inside_server_hello(self):
        self.assert_my_refused("my-partial-server-hello", "tls_handshake_failed",
                               before_greeting=False)


# --------------------------------------------------------------------------------------------
# PostgreSQL: after TLS, answering the StartupMessage
# --------------------------------------------------------------------------------------------

class TestPgAfterTls(HostileTestCase):

    def test_message_length_0x7fffffff(self):
        self.assert_pg_refused("pg-len-max", "upstream_protocol_error",
                               detail="longer than 16384 bytes")

    def test_negative_message_length(self):
        self.assert_pg_refused("pg-len-negative", "upstream_protocol_error",
                               detail="longer than 16384 bytes")

    def test_message_length_below_4(self):
        self.assert_pg_refused("pg-len-short", "upstream_protocol_error",
                               detail="length below 4")

    # Was forwarded verbatim before authentication (fixed: only R, E, v and N pass).
    def test_unknown_message_type(self):
        self.assert_pg_refused("pg-unknown-type", "upstream_protocol_error", driver=False,
                               timeout=5)

    def test_oversized_error_response(self):
        self.assert_pg_refused("pg-oversized-error", "upstream_protocol_error",
                               detail="longer than 16384 bytes")

    def test_close_after_tls(self):
        self.assert_pg_refused("pg-close-after-tls", "upstream_reset")

    def test_backend_key_over_256_bytes_after_authentication_ok(self):
        mark = W.dbtrust.mark()
        with self.assertRaises(psycopg2.OperationalError) as caught:
            psycopg2.connect(pg_dsn("pg-bad-backend-key", app=unique("pg-bad-key"))).close()
        self.assertIn("(upstream_protocol_error)", str(caught.exception))
        self.assertIn("BackendKeyData key length outside 4..256", str(caught.exception))
        self.assert_conn_ends("pg-bad-backend-key", "upstream_protocol_error", mark, 1)
        self.assert_good_listeners_serve()


def read_end_of_session(sock):
    """How the session ends for the client: "eof" (an orderly FIN), "reset", or data."""
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        return "reset"
    return "eof" if data == b"" else f"data {data!r}"


def pg_session_end_seen(listener, answer=0):
    """Log in through dbtrust (plaintext client leg), send a query, read `answer` bytes (after a
    pause, so that dbtrust holds part of them when the upstream ends), report the ending."""
    sock, answers = fx.pg_open_plain("127.0.0.1", port_of(listener), [fx.PG_SSL_REQUEST])
    with sock:
        sock.sendall(fx.pg_startup_message({"user": APP, "database": DB}))
        while fx.pg_read_message(sock)[0] != "Z":
            pass
        sock.sendall(pg_message(b"Q", b"select 1\0"))
        if answer:
            time.sleep(1)
            try:
                fx.recv_exact(sock, answer)
            except (OSError, EOFError) as exc:
                return f"answer cut: {exc.__class__.__name__}"
        return read_end_of_session(sock)


def my_session_end_seen(listener):
    with socket.create_connection(("127.0.0.1", port_of(listener)), timeout=10) as sock:
        greeting = fx.my_parse_greeting(fx.my_read_packet(sock)[1])
        sock.sendall(fx.my_packet(1, fx.my_handshake_response(
            NATIVE, fx.my_native_scramble(NATIVE_PW, greeting.nonce), database=MY_DB)))
        seq, ok = fx.my_read_packet(sock)
        if ok[:1] != b"\x00":
            raise AssertionError(f"login through dbtrust failed: {ok!r}")
        sock.sendall(fx.my_packet(0, b"\x0e"))  # COM_PING
        return read_end_of_session(sock)


class TestSessionEnd(HostileTestCase):
    """An upstream TCP close without close_notify during the relay may be an attacker cutting
    the stream: the client must see a reset, not the clean FIN of a server finishing."""

    def check(self, listener, seen, expected, reason, detail=None):
        mark = W.dbtrust.mark()
        self.assertEqual(seen(listener), expected)
        line = self.assert_conn_ends(listener, reason, mark, 1)[0]
        if detail is not None:
            self.assertIn(f'detail="{detail}"', line)
        else:
            self.assertNotIn("close_notify", line)

    def test_pg_truncated_session_resets_the_client(self):
        self.check("pg-end-truncate", pg_session_end_seen, "reset", "upstream_closed",
                   "no close_notify")

    def test_pg_truncated_session_delivers_what_came_then_resets(self):
        self.check("pg-end-truncate-after-data",
                   lambda listener: pg_session_end_seen(listener, TRUNCATED_ANSWER), "reset",
                   "upstream_closed", "no close_notify")

    def test_pg_close_notify_is_an_orderly_end(self):
        self.check("pg-end-close-notify", pg_session_end_seen, "eof", "upstream_closed")

    def test_pg_upstream_reset_resets_the_client(self):
        self.check("pg-end-reset", pg_session_end_seen, "reset", "upstream_reset",
                   "connection reset by peer")

    def test_my_truncated_session_resets_the_client(self):
        self.check("my-end-truncate", my_session_end_seen, "reset", "upstream_closed",
                   "no close_notify")

    def test_my_close_notify_is_an_orderly_end(self):
        self.check("my-end-close-notify", my_session_end_seen, "eof", "upstream_closed")


# --------------------------------------------------------------------------------------------
# MySQL: the greeting (before TLS)
# --------------------------------------------------------------------------------------------

class TestMyGreeting(HostileTestCase):

    def test_greeting_of_16_mib(self):
        """Header announcing 16 MiB-1: refused at the header, nothing buffered."""
        count = W.peers["my-greeting-16m"].connection_count()
        self.assert_my_refused("my-greeting-16m", "upstream_protocol_error",
                               before_greeting=True, detail="over 64 KiB")
        for record in self.peer_records("my-greeting-16m", count):
            self.assertTrue(record.notes["outcome"].startswith("peer closed"), record.notes)
            self.assertLess(record.notes["sent"], 32 << 20, record.notes)
            self.assertLess(record.notes["seconds"], 3, record.notes)

    def test_http_server_instead_of_mysql(self):
        self.assert_my_refused("my-greeting-http", "upstream_protocol_error",
                               before_greeting=True)

    def test_garbage_protocol_version(self):
        self.assert_my_refused("my-greeting-bad-version", "upstream_protocol_error",
                               before_greeting=True, detail="not HandshakeV10")

    def test_complete_but_truncated_greeting(self):
        self.assert_my_refused("my-greeting-short", "upstream_protocol_error",
                               before_greeting=True, detail="greeting truncated")

    def test_greeting_cut_by_close(self):
        self.assert_my_refused("my-greeting-cut", "upstream_reset", before_greeting=True,
                               detail="before its greeting")

    def test_greeting_stalls(self):
        started = time.monotonic()
        self.assert_my_refused("my-greeting-stall", "upstream_timeout", before_greeting=True,
                               driver=False)
        self.assertLess(time.monotonic() - started, 6)

    def test_greeting_with_wrong_sequence_id(self):
        self.assert_my_refused("my-greeting-bad-seq", "upstream_protocol_error",
                               before_greeting=True, detail="out of order")


class TestMyErrGreeting(HostileTestCase):
    """The server answers the connect with an ERR packet instead of its greeting. It is plaintext
    from a server not authenticated yet (anyone on the path can write it), so the client gets
    dbtrust's ERR: the server's code (drivers retry on 1040), SQLSTATE only if the server sent
    one, dbtrust's words naming the reason. Before this, the packet went to the client verbatim
    (its text included) and was logged and counted as upstream_refused_tls."""

    def connections_total(self, listener, reason):
        samples = fx.scrape_metrics(W.admin_port)
        return fx.metric_value(samples, "dbtrust_connections_total", listener=listener,
                               result=reason) or 0

    def assert_dbtrust_words(self, listener, reason, code, message, cut=0):
        """cut: bytes of the message the client dropped (PyMySQL 1.0.2 always skips 6 for a
        '#' + SQLSTATE, whether or not the ERR has one: "t: upstream refused...")."""
        words = f"dbtrust: upstream refused the connection ({reason}): MySQL error {code}"
        self.assertTrue(message.startswith(words[cut:]), message)
        self.assertIn("the server's own text is not shown", message)
        self.assertIn(f"[listener {listener}, upstream localhost:", message)
        for forbidden in ("evil.example", "please visit", "reason=none", "\x1b"):
            self.assertNotIn(forbidden, message)

    def assert_err_greeting(self, listener, mariadb_cli=False):
        code, reason, state = MY_ERR_GREETINGS[listener]
        before = self.connections_total(listener, reason)
        mark = W.dbtrust.mark()
        # raw wire: dbtrust's ERR at seq 0, the server's code and SQLSTATE
        greeting, seq, payload = my_raw_attempt(listener, unique(listener))
        self.assertIsNone(greeting)
        self.assertIsNotNone(payload, seq)
        err = fx.my_parse_err(payload)
        self.assertEqual((seq, err.code, err.sqlstate), (0, code, state), err)
        self.assert_dbtrust_words(listener, reason, code, err.message)
        # PyMySQL: the code its retry logic looks at, dbtrust's message
        with self.assertRaises(pymysql.err.OperationalError) as caught:
            pymysql_connect(listener, program_name=unique(listener)).close()
        self.assertEqual(caught.exception.args[0], code, caught.exception.args)
        self.assert_dbtrust_words(listener, reason, code, caught.exception.args[1],
                                  cut=0 if state else 6)
        attempts = 2
        if mariadb_cli:  # libmariadb, as the mariadb CLI prints it
            r = fx.run_mariadb(["-h", "127.0.0.1", "-P", str(port_of(listener)), "-u", NATIVE,
                                "--skip-ssl", MY_DB], sql="select 1", password=NATIVE_PW)
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertIn(f"ERROR {code} ", r.stderr)
            self.assert_dbtrust_words(listener, reason, code,
                                      r.stderr[r.stderr.index("dbtrust: "):].strip())
            attempts += 1
        # the log: one line per attempt with the reason; the server's text only sanitised
        lines = self.assert_conn_ends(listener, reason, mark, attempts)
        for line in lines:
            self.assertIn(f"upstream sent MySQL error {code} instead of a greeting", line)
            self.assertIn("unauthenticated, not shown to the client", line)
            self.assertIn("please visit http://evil.example to fix it??[31mreason=none", line)
            self.assertNotIn("\x1b", line)
            self.assertNotIn("\\x1b", line)  # not even escaped: it never reached the logger
        # the metric, by reason; nothing counted as a TLS failure, no text in any label
        self.assertEqual(self.connections_total(listener, reason) - before, attempts)
        samples = fx.scrape_metrics(W.admin_port)
        self.assertFalse(any(value for (name, labels), value in samples.items()
                             if name == "dbtrust_tls_failures_total"
                             and ("listener", listener) in labels), samples)
        self.assertFalse([key for key in samples if "evil" in str(key)])
        self.assert_good_listeners_serve()

    def test_1040_too_many_connections(self):
        self.assert_err_greeting("my-err-1040", mariadb_cli=True)

    def test_1129_host_blocked(self):
        self.assert_err_greeting("my-err-1129")

    def test_other_code_with_sqlstate(self):
        self.assert_err_greeting("my-err-1130")


# --------------------------------------------------------------------------------------------
# MySQL: after TLS, during authentication
# --------------------------------------------------------------------------------------------

class TestMyAfterTls(HostileTestCase):

    def test_auth_packet_of_16_mib(self):
        self.assert_my_refused("my-auth-16m", "upstream_protocol_error", before_greeting=False,
                               detail="over 64 KiB")

    def test_auth_packet_out_of_order(self):
        self.assert_my_refused("my-auth-bad-seq", "upstream_protocol_error",
                               before_greeting=False, detail="out of order")

    # Was forwarded re-sequenced; PyMySQL took it for a login (fixed in server_packet).
    def test_auth_packet_of_unknown_type(self):
        self.assert_my_refused("my-auth-garbage", "upstream_protocol_error",
                               before_greeting=False, driver=False, timeout=5)

    # Was a bare close logged as upstream_closed (fixed: the login is still running).
    def test_close_after_tls(self):
        self.assert_my_refused("my-close-after-tls", "upstream_reset", before_greeting=False,
                               driver=False, timeout=5)


# --------------------------------------------------------------------------------------------
# Renegotiation (TLS 1.2) and KeyUpdate (TLS 1.3) requested by the server
# --------------------------------------------------------------------------------------------

class TestRenegotiationAndKeyUpdate(HostileTestCase):

    def assert_peer_saw_refusal(self, listener, count):
        records = self.peer_records(listener, count)
        self.assertTrue(records)
        for record in records:
            if "error" in record.notes and "SkipTest" in record.notes["error"]:
                self.skipTest(record.notes["error"])
            self.assertEqual(record.notes.get("tls_version"), "TLSv1.2", record.notes)
            self.assertEqual(record.notes.get("renegotiate"), (1, 1), record.notes)
            # dbtrust answered the HelloRequest with a no_renegotiation alert, not a ClientHello.
            self.assertIn("NO_RENEGOTIATION", record.notes.get("after", ""), record.notes)

    def test_pg_server_renegotiation_is_refused(self):
        self.require_hooks()
        count = W.peers["pg-renegotiate"].connection_count()
        self.assert_pg_refused("pg-renegotiate", "tls_error")
        self.assert_peer_saw_refusal("pg-renegotiate", count)

    def test_my_server_renegotiation_is_refused(self):
        """dbtrust refuses (no_renegotiation alert, no new ClientHello), the connection ends
        with reason tls_error and dbtrust keeps serving. What the client is told: below."""
        self.require_hooks()
        count = W.peers["my-renegotiate"].connection_count()
        mark = W.dbtrust.mark()
        tag = unique("my-renegotiate")
        my_raw_attempt("my-renegotiate", tag)
        self.assert_peer_saw_refusal("my-renegotiate", count)
        [line] = self.assert_conn_ends("my-renegotiate", "tls_error", mark, 1)
        self.assertIn(f"app={tag} ", line)
        self.assertIn(" tls=TLSv1.2 ", line)
        self.assert_good_listeners_serve()

    # Was a bare close (fixed: a broken leg during the login fails the startup).
    def test_my_tls_error_during_authentication_reaches_the_client(self):
        self.require_hooks()
        self.assert_my_refused("my-renegotiate", "tls_error", before_greeting=False,
                               driver=False, timeout=5)

    def test_pg_key_update_is_transparent(self):
        self.require_hooks()
        count = W.peers["pg-key-update"].connection_count()
        mark = W.dbtrust.mark()
        app = unique("key-update")
        sock, answers = fx.pg_open_plain("127.0.0.1", port_of("pg-key-update"),
                                         [fx.PG_SSL_REQUEST])
        with sock:
            self.assertEqual(answers, [b"N"])
            sock.sendall(fx.pg_startup_message({"user": APP, "database": DB,
                                                "application_name": app}))
            mtype, body = fx.pg_read_message(sock)
            self.assertEqual((mtype, body), ("R", struct.pack("!I", 3)),
                             f"{fx.pg_error_fields(body) if mtype == 'E' else body!r}")
            sock.sendall(pg_message(b"p", b"secret-pw\0"))
            self.assertEqual(fx.pg_read_message(sock), ("R", struct.pack("!I", 0)))
            self.assertEqual(fx.pg_read_message(sock), ("Z", b"I"))
            sock.sendall(pg_message(b"X", b""))
        [record] = self.peer_records("pg-key-update", count)
        self.assertEqual(record.notes.get("tls_version"), "TLSv1.3", record.notes)
        self.assertEqual((record.notes.get("key_update_1"), record.notes.get("key_update_2")),
                         (1, 1), record.notes)
        self.assertEqual(record.notes.get("password_message"), (b"p", b"secret-pw\0"))
        line = W.dbtrust.wait_for_line("conn_end", f"app={app} ", since=mark)
        self.assertRegex(line, r" reason=(client_closed|upstream_closed) ")
        self.assert_good_listeners_serve()

    def test_my_key_update_is_transparent(self):
        self.require_hooks()
        count = W.peers["my-key-update"].connection_count()
        mark = W.dbtrust.mark()
        tag = unique("key-update")
        greeting, seq, payload = my_raw_attempt_keep(self, "my-key-update", tag)
        self.assertEqual((seq, payload[:1]), (2, b"\x00"), payload)
        [record] = self.peer_records("my-key-update", count)
        self.assertEqual(record.notes.get("tls_version"), "TLSv1.3", record.notes)
        self.assertEqual((record.notes.get("key_update_1"), record.notes.get("key_update_2")),
                         (1, 1), record.notes)
        self.assertEqual(record.notes.get("command"), (0, b"\x03select 'after key update'"))
        line = W.dbtrust.wait_for_line("conn_end", f"app={tag} ", since=mark)
        self.assertRegex(line, r" reason=(client_closed|upstream_closed) ")
        self.assert_good_listeners_serve()


def my_raw_attempt_keep(test, listener, tag):
    """Login against the key-update peer and run one command: returns the login result."""
    with socket.create_connection(("127.0.0.1", port_of(listener)), timeout=10) as sock:
        _, payload = fx.my_read_packet(sock)
        greeting = fx.my_parse_greeting(payload)
        sock.sendall(fx.my_packet(1, fx.my_handshake_response(
            NATIVE, fx.my_native_scramble(NATIVE_PW, greeting.nonce), database=MY_DB,
            attrs={"program_name": tag})))
        seq, payload = fx.my_read_packet(sock)
        sock.sendall(fx.my_packet(0, b"\x03select 'after key update'"))
        cseq, reply = fx.my_read_packet(sock)
        test.assertEqual(cseq, 1)
        test.assertEqual(fx.my_parse_err(reply).message, KEY_UPDATE_REPLY)
        sock.sendall(fx.my_packet(0, b"\x01"))  # COM_QUIT
        return greeting, seq, payload


# --------------------------------------------------------------------------------------------
# Slow servers: byte by byte
# --------------------------------------------------------------------------------------------

class TestSlowServers(HostileTestCase):

    def test_pg_byte_every_50ms_hits_handshake_timeout(self):
        started = time.monotonic()
        self.assert_pg_refused("pg-slow", "tls_handshake_timeout", driver=False)
        elapsed = time.monotonic() - started
        self.assertGreater(elapsed, 2.5)
        self.assertLess(elapsed, 6)

    def test_my_tls_byte_every_50ms_hits_handshake_timeout(self):
        """Greeting at full speed, then the TLS handshake one byte per 50 ms."""
        started = time.monotonic()
        self.assert_my_refused("my-slow-tls", "tls_handshake_timeout", before_greeting=False,
                               driver=False)
        elapsed = time.monotonic() - started
        self.assertGreater(elapsed, 2.5)
        self.assertLess(elapsed, 6)

    def test_my_greeting_byte_every_50ms_hits_timeout(self):
        started = time.monotonic()
        self.assert_my_refused("my-slow-greeting", "upstream_timeout", before_greeting=True,
                               driver=False)
        self.assertLess(time.monotonic() - started, 6)

    def test_pg_byte_by_byte_server_works_end_to_end(self):
        relay = W.relays["pg-dribble"]
        before = len(relay.stats)
        app = unique("dribble")
        mark = W.dbtrust.mark()
        conn = psycopg2.connect(pg_dsn("pg-dribble", app=app))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("select current_user, ssl, version from pg_stat_ssl "
                            "where pid = pg_backend_pid()")
                user, tls, version = cur.fetchone()
        finally:
            conn.close()
        self.assertEqual((user, tls), (APP, True))
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        stat = relay.stats[before]
        self.assertGreater(stat["dribbled"], 1000, stat)  # 'S', handshake, auth: byte by byte
        line = W.dbtrust.wait_for_line("conn_end", f"app={app} ", since=mark)
        self.assertRegex(line, r" reason=(client_closed|upstream_closed) ")

    def test_my_byte_by_byte_server_works_end_to_end(self):
        relay = W.relays["my-dribble"]
        before = len(relay.stats)
        tag = unique("dribble")
        mark = W.dbtrust.mark()
        conn = pymysql_connect("my-dribble", program_name=tag, connect_timeout=30)
        try:
            with conn.cursor() as cur:
                cur.execute("select current_user()")
                user = cur.fetchone()[0]
                cur.execute("show status like 'Ssl_version'")
                tls = cur.fetchone()[1]
        finally:
            conn.close()
        self.assertEqual(user, f"{NATIVE}@%")
        self.assertIn(tls, ("TLSv1.2", "TLSv1.3"))
        stat = relay.stats[before]
        self.assertGreater(stat["dribbled"], 1000, stat)
        line = W.dbtrust.wait_for_line("conn_end", f"app={tag} ", since=mark)
        self.assertRegex(line, r" reason=(client_closed|upstream_closed) ")


# --------------------------------------------------------------------------------------------
# Good traffic while hostile connections are in flight
# --------------------------------------------------------------------------------------------

class TestConcurrentTraffic(HostileTestCase):

    def test_good_sessions_unaffected_by_concurrent_hostile_upstreams(self):
        """Good PostgreSQL and MariaDB traffic (one long session each plus reconnects) runs
        while slow (50 ms/byte) and broken upstreams are being handled on the same workers:
        every good query succeeds quickly, every hostile attempt fails with its reason."""
        stop = threading.Event()
        errors, latencies = [], []
        hostile = {}

        def good_pg_session():
            conn = psycopg2.connect(pg_dsn("orders", app=unique("conc-pg")))
            conn.autocommit = True
            try:
                n = 0
                while not stop.is_set():
                    t = time.monotonic()
                    with conn.cursor() as cur:
                        cur.execute("select %s::int + 1", (n,))
                        if cur.fetchone() != (n + 1,):
                            errors.append("pg: wrong result")
                    latencies.append(time.monotonic() - t)
                    n += 1
            finally:
                conn.close()

        def good_my_session():
            conn = pymysql_connect("shop", program_name=unique("conc-my"))
            try:
                n = 0
                while not stop.is_set():
                    t = time.monotonic()
                    with conn.cursor() as cur:
                        cur.execute("select %s + 1", (n,))
                        if cur.fetchone() != (n + 1,):
                            errors.append("mysql: wrong result")
                    latencies.append(time.monotonic() - t)
                    n += 1
            finally:
                conn.close()

        def good_reconnects():
            while not stop.is_set():
                t = time.monotonic()
                if pg_query_good("conc-reconnect") != (1, APP, True):
                    errors.append("pg reconnect: wrong result")
                if my_query_good("conc-reconnect") != (1, f"{NATIVE}@%"):
                    errors.append("mysql reconnect: wrong result")
                latencies.append((time.monotonic() - t) / 2)

        def guarded(fn):
            def run():
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - collected and asserted
                    errors.append(f"{fn.__name__}: {exc!r}")
            return run

        def pg_hostile(listener, repeat):
            def run():
                for i in range(repeat):
                    _, mtype, body = pg_raw_attempt(listener, unique(listener))
                    message = fx.pg_error_fields(body).get("M", "") if mtype == "E" else body
                    hostile.setdefault(listener, []).append(message)
            run.__name__ = listener
            return run

        def my_hostile(listener, repeat):
            def run():
                for i in range(repeat):
                    _, _, payload = my_raw_attempt(listener, unique(listener))
                    message = (fx.my_parse_err(payload).message
                               if payload and payload[:1] == b"\xff" else repr(payload))
                    hostile.setdefault(listener, []).append(message)
            run.__name__ = listener
            return run

        expected = {
            "pg-slow": ("tls_handshake_timeout", 1),
            "my-slow-tls": ("tls_handshake_timeout", 1),
            "my-slow-greeting": ("upstream_timeout", 1),
            "pg-garbage-answer": ("upstream_protocol_error", 10),
            "pg-len-max": ("upstream_protocol_error", 10),
            "pg-partial-server-hello": ("tls_handshake_failed", 10),
            "my-greeting-16m": ("upstream_protocol_error", 10),
            "my-partial-server-hello": ("tls_handshake_failed", 10),
            "my-auth-bad-seq": ("upstream_protocol_error", 10),
        }
        mark = W.dbtrust.mark()
        good = [threading.Thread(target=guarded(f)) for f in
                (good_pg_session, good_my_session, good_reconnects)]
        bad = [threading.Thread(target=guarded(
            (pg_hostile if name.startswith("pg-") else my_hostile)(name, repeat)))
            for name, (_, repeat) in expected.items()]
        for t in good + bad:
            t.start()
        for t in bad:
            t.join(30)
        stop.set()
        for t in good:
            t.join(30)

        self.assertEqual(errors, [])
        self.assertTrue(W.dbtrust.alive(), "dbtrust process died")
        self.assertGreater(len(latencies), 50, "good traffic did not flow")
        self.assertLess(max(latencies), 1.0, f"a good query waited {max(latencies):.2f}s")
        for name, (reason, repeat) in expected.items():
            with self.subTest(listener=name):
                messages = hostile.get(name, [])
                self.assertEqual(len(messages), repeat)
                for message in messages:
                    self.assertIn(f"({reason})", str(message))
                self.assert_conn_ends(name, reason, mark, repeat)
        self.assert_good_listeners_serve()


if __name__ == "__main__":
    DBTRUST_BIN = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
