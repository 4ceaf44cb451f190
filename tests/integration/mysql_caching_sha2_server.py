"""A scripted MySQL 8-like server that speaks caching_sha2_password, for dbtrust's bridge tests.

Why scripted: no MySQL 8 server is packaged for Debian 12 and MariaDB has no caching_sha2 plugin
(TESTING.md), yet the bridge of PROTOCOLS.md B3 is what makes plaintext clients work against
MySQL 8 behind dbtrust. This server implements the server half of the exchange as MySQL's
documentation describes it ("caching_sha2_password information exchange"):

- greeting: HandshakeV10, version "8.0.36-...", CLIENT_SSL | PROTOCOL_41 | SECURE_CONNECTION |
  PLUGIN_AUTH | PLUGIN_AUTH_LENENC | CONNECT_ATTRS | ..., plugin caching_sha2_password, a fresh
  random 20-byte nonce per connection;
- SSLRequest -> TLS (server certificate from the test PKI). Like MySQL it takes the capability
  flags from the SSLRequest and parses the HandshakeResponse inside TLS with them (B2);
- require_secure_transport behaviour: a response that arrives without TLS is refused with ERR
  3159 (so a proxy that forgot to upgrade fails loudly, and the test sees it in the record);
- the 32-byte scramble XOR(SHA256(pw), SHA256(SHA256(SHA256(pw)) || nonce)) is checked the way
  the server does, against the cached SHA256(SHA256(pw)):
    cached and valid -> `01 03` (fast_auth_success) + OK;
    otherwise        -> `01 04` (perform_full_authentication), then, the transport being TLS,
                        the next packet must be `password\\0` in cleartext -> OK (and the
                        user's hash is cached, as MySQL does) or ERR 1045;
- a client that announced another plugin gets an AuthSwitchRequest to caching_sha2_password
  with a new nonce (what MySQL 8 does with a mysql_native_password client);
- command phase: COM_QUERY "select <items>" where items are integers, 'strings',
  current_user(), user(), connection_id() or @@version gets a text resultset; other statements
  (SET ...) get OK; COM_PING / COM_INIT_DB get OK; COM_QUIT closes.

Every connection leaves a fx.PeerConnection record: `data` holds only the bytes that arrived in
plaintext on the TCP stream (so "the password never crossed the wire in clear" is
`password not in record.data`), and `notes` hold the decoded conversation:
    packets            [(direction 'in'|'out', transport 'tcp'|'tls', seq, payload), ...]
    greeting_nonce / nonce (the one in force), ssl_request, tls_version, sni,
    response (fx.MyHandshakeResponse), auth_switch, scramble_valid,
    auth ('fast'|'full'|'denied'|'insecure'), full_auth_packet, full_auth_transport,
    auth_result ('ok'|'denied'), queries [...], quit, error (exception text, if any)

Run this file directly for a self-test with PyMySQL over TLS (fast and full auth, wrong
password, plaintext refused):  /usr/bin/python3 tests/integration/mysql_caching_sha2_server.py
"""

import hashlib
import itertools
import os
import re
import secrets
import socket
import ssl
import struct
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

CSHA2_PLUGIN = "caching_sha2_password"
FAST_AUTH_SUCCESS = b"\x01\x03"
PERFORM_FULL_AUTHENTICATION = b"\x01\x04"
SERVER_VERSION = "8.0.36-dbtrust-scripted"
SERVER_CAPABILITIES = (
    fx.MY_CLIENT_LONG_PASSWORD | fx.MY_CLIENT_FOUND_ROWS | fx.MY_CLIENT_LONG_FLAG
    | fx.MY_CLIENT_CONNECT_WITH_DB | fx.MY_CLIENT_PROTOCOL_41 | fx.MY_CLIENT_INTERACTIVE
    | fx.MY_CLIENT_SSL | fx.MY_CLIENT_TRANSACTIONS | fx.MY_CLIENT_SECURE_CONNECTION
    | fx.MY_CLIENT_MULTI_STATEMENTS | fx.MY_CLIENT_MULTI_RESULTS | fx.MY_CLIENT_PS_MULTI_RESULTS
    | fx.MY_CLIENT_PLUGIN_AUTH | fx.MY_CLIENT_CONNECT_ATTRS | fx.MY_CLIENT_PLUGIN_AUTH_LENENC)
# Not advertised: CLIENT_DEPRECATE_EOF (classic EOF-terminated resultsets are simpler to
# script), compression (nothing to test), CLIENT_LOCAL_FILES.

COM_QUIT, COM_INIT_DB, COM_QUERY, COM_PING = 0x01, 0x02, 0x03, 0x0E
MYSQL_TYPE_LONGLONG, MYSQL_TYPE_VAR_STRING = 0x08, 0xFD
BINARY_CHARSET = 63

ER_ACCESS_DENIED = 1045
ER_UNKNOWN_COM = 1047
ER_PARSE = 1064
ER_NET_PACKETS_OUT_OF_ORDER = 1156
ER_SECURE_TRANSPORT_REQUIRED = 3159


def new_nonce():
    """20 random bytes as MySQL makes them: 7-bit, never NUL nor '$' (the nonce travels
    NUL-terminated, and '$' is the separator of its stored hashes)."""
    out = bytearray()
    while len(out) < 20:
        b = secrets.randbelow(127) + 1
        if b != ord("$"):
            out.append(b)
    return bytes(out)


def sha256(data):
    return hashlib.sha256(data).digest()


def scramble_matches(scramble, stored_hash, nonce):
    """Server-side fast-auth check: with stored_hash = SHA256(SHA256(pw)),
    XOR(scramble, SHA256(stored_hash || nonce)) must be SHA256(pw), whose SHA256 is
    stored_hash. Never needs the password itself."""
    if len(scramble) != 32:
        return False
    mask = sha256(stored_hash + nonce)
    candidate = bytes(a ^ b for a, b in zip(scramble, mask))
    return sha256(candidate) == stored_hash


class ProtocolViolation(Exception):
    """The client broke the protocol (the conversation ends with an ERR where possible)."""


class MysqlCachingSha2Server(fx.ScriptedUpstream):
    """The scripted server (see the module docstring). `users` maps user -> password.

    The cache starts empty (like a server after a restart): the first login of each user goes
    through full authentication. flush_cache() empties it again (FLUSH PRIVILEGES);
    cache_user() pretends an earlier full authentication, so the next login is fast.
    """

    def __init__(self, cert, users, name="csha2-server", require_tls=True):
        super().__init__(self._script, name)
        self.cert = cert
        self.users = dict(users)
        self.require_tls = require_tls
        self._cache = {}  # user -> SHA256(SHA256(password))
        self._cache_lock = threading.Lock()
        self._ids = itertools.count(1000)
        self._ctx = None

    # -- cache control -------------------------------------------------------------------

    def flush_cache(self):
        with self._cache_lock:
            self._cache.clear()

    def cache_user(self, user):
        with self._cache_lock:
            self._cache[user] = sha256(sha256(self.users[user].encode()))

    def is_cached(self, user):
        with self._cache_lock:
            return user in self._cache

    def _cached_hash(self, user):
        with self._cache_lock:
            return self._cache.get(user)

    # -- per connection --------------------------------------------------------------------

    def _tls_context(self):
        if self._ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self.cert.chain, self.cert.key)
            self._ctx = ctx
        return self._ctx

    def _script(self, sock, record, stop_event):
        sock.settimeout(60)  # a client may idle between test steps
        conversation = _Conversation(self, sock, record)
        try:
            conversation.run()
        finally:
            conversation.close()


class _Conversation:
    """One client connection: the packet channel (TCP, then TLS), the sequence counter, and the
    record every step is written to."""

    def __init__(self, server, sock, record):
        self.server = server
        self.raw = sock
        self.chan = sock
        self.transport = "tcp"
        self.seq = -1
        self.record = record
        self.notes = record.notes
        self.notes.update(packets=[], queries=[], sni=None, tls_version=None, quit=False)
        self.connection_id = next(server._ids)
        self.user = None

    def close(self):
        """The TLS wrapper owns the socket once wrapped (the caller's close is then a no-op)."""
        if self.chan is not self.raw:
            self.chan.close()

    # -- packets ---------------------------------------------------------------------------

    def send(self, payload):
        self.seq = (self.seq + 1) & 0xFF
        self.notes["packets"].append(("out", self.transport, self.seq, payload))
        self.chan.sendall(fx.my_packet(self.seq, payload))

    def recv(self):
        """One packet; its sequence id must follow (the server's NET layer checks it too)."""
        header = self._recv_exact(4)
        length = header[0] | header[1] << 8 | header[2] << 16
        payload = self._recv_exact(length)
        seq = header[3]
        self.notes["packets"].append(("in", self.transport, seq, payload))
        if seq != (self.seq + 1) & 0xFF:
            self.seq = seq
            self.send(fx.my_err_packet(ER_NET_PACKETS_OUT_OF_ORDER, "Got packets out of order",
                                       "08S01"))
            raise ProtocolViolation(f"sequence id {seq}, expected {(self.seq + 1) & 0xFF}")
        self.seq = seq
        return payload

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.chan.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"client closed after {len(buf)} of {n} bytes")
            if self.transport == "tcp":
                self.record.data += chunk  # what crossed the wire in clear
            buf += chunk
        return bytes(buf)

    def ok(self):
        self.send(fx.my_ok_packet())

    def deny(self, using_password=True):
        self.notes["auth_result"] = "denied"
        self.send(fx.my_err_packet(
            ER_ACCESS_DENIED, f"Access denied for user '{self.user}'@'127.0.0.1' "
            f"(using password: {'YES' if using_password else 'NO'})", "28000"))

    # -- connection phase ------------------------------------------------------------------

    def run(self):
        nonce = new_nonce()
        self.notes["greeting_nonce"] = self.notes["nonce"] = nonce
        self.send(fx.my_build_greeting(SERVER_VERSION, self.connection_id, nonce,
                                       SERVER_CAPABILITIES, CSHA2_PLUGIN))
        payload = self.recv()
        caps = struct.unpack_from("<I", payload)[0] if len(payload) >= 4 else 0
        if len(payload) == 32 and caps & fx.MY_CLIENT_SSL:
            self.notes["ssl_request"] = payload
            self._start_tls()
            payload = self.recv()
        else:
            caps = None  # no SSLRequest: the response's own flags count
        if self.server.require_tls and self.transport != "tls":
            self.notes["auth"] = "insecure"
            self.send(fx.my_err_packet(
                ER_SECURE_TRANSPORT_REQUIRED, "Connections using insecure transport are "
                "prohibited while --require_secure_transport=ON.", "08004"))
            return
        response = fx.my_parse_handshake_response(payload, caps)
        self.notes["response"] = response
        self.user = response.user
        if self._authenticate(response, nonce):
            self._command_loop()

    def _start_tls(self):
        def on_sni(_sslobj, server_name, _ctx):
            self.notes["sni"] = server_name
        ctx = self.server._tls_context()
        ctx.sni_callback = on_sni
        self.chan = ctx.wrap_socket(self.raw, server_side=True)
        self.transport = "tls"
        self.notes["tls_version"] = self.chan.version()

    def _authenticate(self, response, nonce):
        """The caching_sha2 exchange; True once the client got its OK."""
        scramble = response.auth_response
        if response.plugin is not None and response.plugin != CSHA2_PLUGIN:
            nonce = new_nonce()
            self.notes["auth_switch"] = response.plugin
            self.notes["nonce"] = nonce
            self.send(b"\xfe" + CSHA2_PLUGIN.encode() + b"\0" + nonce + b"\0")
            scramble = self.recv()
        password = self.server.users.get(self.user)
        if password is None:
            self.notes["auth"] = "denied"
            self.deny(bool(scramble))
            return False
        if scramble in (b"", b"\0"):  # empty password: nothing to scramble
            self.notes["auth"] = "empty"
            if password:
                self.deny(using_password=False)
                return False
            self.notes["auth_result"] = "ok"
            self.ok()
            return True
        stored = sha256(sha256(password.encode()))
        self.notes["scramble_valid"] = scramble_matches(scramble, stored, nonce)
        cached = self.server._cached_hash(self.user)
        if cached is not None and scramble_matches(scramble, cached, nonce):
            self.notes["auth"] = "fast"
            self.send(FAST_AUTH_SUCCESS)
            self.notes["auth_result"] = "ok"
            self.ok()
            return True
        self.notes["auth"] = "full"
        self.send(PERFORM_FULL_AUTHENTICATION)
        data = self.recv()
        self.notes["full_auth_packet"] = data
        self.notes["full_auth_transport"] = self.transport
        # On a secure transport MySQL reads this packet as the cleartext password + NUL;
        # anything else (a forwarded RSA blob, a key request '02') is a wrong password.
        if self.transport == "tls" and data == password.encode() + b"\0":
            self.server.cache_user(self.user)
            self.notes["auth_result"] = "ok"
            self.ok()
            return True
        self.deny()
        return False

    # -- command phase ---------------------------------------------------------------------

    def _command_loop(self):
        while True:
            self.seq = -1  # every command starts at sequence id 0
            try:
                payload = self.recv()
            except (EOFError, ConnectionError, socket.timeout):
                return
            if not payload:
                raise ProtocolViolation("empty command packet")
            command = payload[0]
            if command == COM_QUIT:
                self.notes["quit"] = True
                return
            if command == COM_QUERY:
                text = payload[1:].decode(errors="replace")
                self.notes["queries"].append(text)
                self._query(text)
            elif command in (COM_PING, COM_INIT_DB):
                self.ok()
            else:
                self.send(fx.my_err_packet(ER_UNKNOWN_COM, f"Unknown command {command}",
                                           "08S01"))

    def _query(self, text):
        match = re.fullmatch(r"\s*select\s+(.+?)\s*;?\s*", text, re.I | re.S)
        if not match:
            self.ok()  # SET AUTOCOMMIT = 0, SET NAMES ... : accepted and ignored
            return
        columns = []
        for item in (part.strip() for part in match.group(1).split(",")):
            value = self._evaluate(item)
            if value is None:
                self.send(fx.my_err_packet(
                    ER_PARSE, f"scripted server cannot evaluate '{item}'", "42000"))
                return
            columns.append((item, value))
        self._resultset(columns)

    def _evaluate(self, item):
        lowered = item.lower()
        if re.fullmatch(r"-?\d+", item):
            return int(item)
        if len(item) >= 2 and item[0] == item[-1] == "'":
            return item[1:-1]
        if lowered in ("current_user()", "user()"):
            return f"{self.user}@%"
        if lowered == "connection_id()":
            return self.connection_id
        if lowered == "@@version":
            return SERVER_VERSION
        return None

    def _resultset(self, columns):
        """Text resultset, classic form: count, column definitions, EOF, one row, EOF."""
        status = struct.pack("<HH", 0, fx.MY_SERVER_STATUS_AUTOCOMMIT)
        self.send(fx.my_lenenc_int(len(columns)))
        for name, value in columns:
            is_int = isinstance(value, int)
            self.send(b"".join(fx.my_lenenc_str(s) for s in ("def", "", "", "", name, name))
                      + b"\x0c"
                      + struct.pack("<HIBHB", BINARY_CHARSET if is_int else
                                    fx.MY_CHARSET_UTF8MB4, 21 if is_int else 255,
                                    MYSQL_TYPE_LONGLONG if is_int else MYSQL_TYPE_VAR_STRING,
                                    0, 0)
                      + b"\0\0")
        self.send(b"\xfe" + status)
        self.send(b"".join(fx.my_lenenc_str(str(value)) for _, value in columns))
        self.send(b"\xfe" + status)


# --------------------------------------------------------------------------------------------
# Self-test (run this file): PyMySQL over TLS straight to the scripted server
# --------------------------------------------------------------------------------------------

def _self_test():
    import pymysql

    tmp = fx.make_temp_dir("csha2-selftest")
    pki = fx.TestPKI(os.path.join(tmp, "pki"))
    server = MysqlCachingSha2Server(pki.leaf, {"sha2user": "sha2pw"}).start()

    def connect(password="sha2pw", **kw):
        return pymysql.connect(host="127.0.0.1", port=server.port, user="sha2user",
                               password=password, database="app", connect_timeout=5,
                               ssl={"ca": pki.bundle}, **kw)

    for expected in ("full", "fast"):
        count = server.connection_count()
        conn = connect()
        with conn.cursor() as cur:
            cur.execute("select 1, current_user()")
            assert cur.fetchone() == (1, "sha2user@%"), "resultset"
        conn.close()
        [record] = server.connections_since(count)
        assert record.notes["auth"] == expected, record.notes
        assert record.notes["scramble_valid"], record.notes
        assert b"sha2pw" not in bytes(record.data), "password crossed TCP in clear"
        if expected == "full":
            assert record.notes["full_auth_packet"] == b"sha2pw\0", record.notes
            assert record.notes["full_auth_transport"] == "tls"
        print(f"ok: {expected} authentication over {record.notes['tls_version']}")

    server.flush_cache()
    try:
        connect(password="wrong")
        raise AssertionError("a wrong password was accepted")
    except pymysql.err.OperationalError as exc:
        assert exc.args[0] == ER_ACCESS_DENIED, exc
    print("ok: wrong password -> 1045")

    try:
        pymysql.connect(host="127.0.0.1", port=server.port, user="sha2user", password="sha2pw",
                        connect_timeout=5)
        raise AssertionError("plaintext login accepted")
    except pymysql.err.OperationalError as exc:
        assert exc.args[0] == ER_SECURE_TRANSPORT_REQUIRED, exc
    print("ok: plaintext refused with 3159")


if __name__ == "__main__":
    _self_test()
    fx.run_cleanups()
