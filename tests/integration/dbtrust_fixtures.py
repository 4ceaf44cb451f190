"""Reusable fixtures for dbtrust's integration suites and the demo.

Everything here starts real things on loopback and cleans them up again:

- ports and temp dirs         free_port(), make_temp_dir(), register_cleanup()
- a throwaway PKI             TestPKI (openssl CLI; faketime for the expired leaf)
- dbtrust itself              DbTrustConfig, DbTrust
- PostgreSQL (PG-specific)    PostgresServer, pg_* wire helpers, run_psql(), pg_conninfo()
- hostile upstreams           ScriptedUpstream + pg_script_* scripts, PgTlsUpstream

MySQL/MariaDB suites reuse the generic parts; PostgreSQL-only code carries "pg"/"Postgres" in
its name. Clients must run under /usr/bin/python3: Debian's psycopg2/psycopg/asyncpg live there.

Cleanup is robust by construction: every started process and temp dir registers an undo action
in one LIFO list that runs at interpreter exit (also on SIGTERM/SIGHUP), and child processes get
a parent-death signal so a SIGKILLed test runner does not leave servers behind.
Set DBTRUST_KEEP_TMP=1 to keep the temp dirs (logs, certificates) for post-mortems.
"""

import atexit
import ctypes
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

# --------------------------------------------------------------------------------------------
# Cleanup registry
# --------------------------------------------------------------------------------------------

_cleanups = []
_cleanup_lock = threading.Lock()


def register_cleanup(fn, *args):
    """Queue fn(*args) to run at exit, newest first (servers stop before their dirs vanish)."""
    with _cleanup_lock:
        _cleanups.append((fn, args))


def run_cleanups():
    """Run every queued cleanup once; a failing one must not stop the others."""
    while True:
        with _cleanup_lock:
            if not _cleanups:
                return
            fn, args = _cleanups.pop()
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - cleanup must go on
            print(f"cleanup {getattr(fn, '__name__', fn)} failed: {exc}", file=sys.stderr)


def _exit_on_signal(signum, _frame):
    """Turn SIGTERM/SIGHUP into an interrupt so atexit handlers (cleanups) run. Not
    SystemExit: unittest's test executor swallows it (bare except) and would carry on."""
    signal.signal(signum, signal.SIG_DFL)  # a second signal kills outright
    raise KeyboardInterrupt(f"signal {signum}")


atexit.register(run_cleanups)
if threading.current_thread() is threading.main_thread():
    for _sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(_sig) in (signal.SIG_DFL, None):
            signal.signal(_sig, _exit_on_signal)


def make_temp_dir(prefix):
    """A fresh temp dir removed at exit (unless DBTRUST_KEEP_TMP is set)."""
    path = tempfile.mkdtemp(prefix=f"dbtrust-{prefix}-")
    if os.environ.get("DBTRUST_KEEP_TMP"):
        print(f"keeping {path}", file=sys.stderr)
    else:
        register_cleanup(shutil.rmtree, path, True)
    return path


def _set_parent_death_signal(sig):
    """preexec_fn: have the kernel send `sig` to the child when the test runner dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


# --------------------------------------------------------------------------------------------
# Ports, sockets, processes
# --------------------------------------------------------------------------------------------

_ports_handed_out = set()


def free_port(host="127.0.0.1"):
    """A TCP port that is free now, below the kernel's ephemeral range (32768+).

    Ephemeral ports would collide with the source ports of our own outgoing connections;
    ports already handed out in this process are never handed out twice.
    """
    for _ in range(200):
        port = random.randrange(20000, 32000)
        if port in _ports_handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _ports_handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port found")


def tcp_accepts(host, port, timeout=0.2):
    """True if a TCP connect to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout, interval=0.05, what="condition"):
    """Poll predicate() until it returns a truthy value; raise TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def recv_exact(sock, n):
    """Read exactly n bytes or raise EOFError (a short read is a protocol failure in tests)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_until_closed(sock, timeout):
    """Read until EOF; return (data, seconds waited, how it ended: 'eof'|'reset'|'timeout')."""
    start = time.monotonic()
    data = bytearray()
    sock.settimeout(0.1)
    while time.monotonic() - start < timeout:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return bytes(data), time.monotonic() - start, "reset"
        if not chunk:
            return bytes(data), time.monotonic() - start, "eof"
        data += chunk
    return bytes(data), time.monotonic() - start, "timeout"


def clean_env(**extra):
    """os.environ without libpq/MySQL client variables that would silently change a test."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "MYSQL", "MARIADB"))}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd, check=True, timeout=60, **kw):
    """subprocess.run with captured text output and a readable error on failure."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                           f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


# --------------------------------------------------------------------------------------------
# Test PKI (openssl CLI)
# --------------------------------------------------------------------------------------------

@dataclass
class Cert:
    """One generated certificate. `chain` is what a server presents: the cert itself plus its
    intermediates, never the root (clients must find the root in their bundle)."""
    name: str
    cert: str           # PEM of this certificate alone
    key: str            # PEM private key
    chain: str          # server file: cert + intermediates (for a root: the root itself)
    is_ca: bool
    issuer: "Cert" = None

    def der(self):
        """DER bytes of the certificate, to compare with what a server presented."""
        with open(self.cert) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())


_EXT_ROOT = """basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
_EXT_INTERMEDIATE = """basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""
_EXT_LEAF = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = {san}
"""

LOCALHOST_SAN = ("DNS:localhost", "IP:127.0.0.1")


class TestPKI:
    """The test PKI of TESTING.md, generated with the openssl CLI into `directory`.

    good:  root A ("dbtrust test root A") -> intermediate A -> leaf (DNS:localhost, IP:127.0.0.1)
    bad:   rogue root -> rogue leaf (localhost)        -> tls_untrusted_chain
           intermediate A -> wrong-name leaf            -> tls_hostname_mismatch
           intermediate A -> expired leaf (faketime)    -> tls_cert_expired
    bundle: root A only.
    EC P-256 keys: generated in milliseconds, accepted by PostgreSQL, MariaDB and OpenSSL 3.
    """

    __test__ = False  # not a unittest/pytest class despite its name

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.root = self.make_root("root-a", "dbtrust test root A")
        self.intermediate = self.make_intermediate("inter-a", "dbtrust test intermediate A",
                                                   self.root)
        self.leaf = self.make_leaf("leaf", "localhost", LOCALHOST_SAN, self.intermediate)
        self.rogue_root = self.make_root("rogue-root", "dbtrust rogue root")
        self.rogue_leaf = self.make_leaf("rogue-leaf", "localhost", LOCALHOST_SAN,
                                         self.rogue_root)
        self.wrong_name_leaf = self.make_leaf("wrong-name", "wrong.example.org",
                                              ("DNS:wrong.example.org",), self.intermediate)
        self.expired_leaf = self.make_leaf("expired", "localhost", LOCALHOST_SAN,
                                           self.intermediate, days=30,
                                           faketime="2020-01-01 00:00:00")
        self.bundle = self.write_bundle("bundle.pem", [self.root])

    # -- building blocks ---------------------------------------------------------------------

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _new_key(self, name):
        key = self._path(f"{name}.key")
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", key])
        os.chmod(key, 0o600)
        return key

    def _csr(self, name, key, common_name):
        csr = self._path(f"{name}.csr")
        run(["openssl", "req", "-new", "-key", key, "-subj", f"/O=dbtrust tests/CN={common_name}",
             "-out", csr])
        return csr

    def _sign(self, name, csr, ext_text, days, issuer=None, self_key=None, faketime=None):
        """openssl x509 -req, optionally under faketime (x509 -req cannot back-date)."""
        ext = self._path(f"{name}.ext")
        with open(ext, "w") as f:
            f.write("[ext]\n" + ext_text)
        cert = self._path(f"{name}.pem")
        cmd = ["openssl", "x509", "-req", "-in", csr, "-days", str(days), "-sha256",
               "-set_serial", str(secrets.randbits(63)), "-extfile", ext, "-extensions", "ext",
               "-out", cert]
        if issuer is None:
            cmd += ["-signkey", self_key]
        else:
            cmd += ["-CA", issuer.cert, "-CAkey", issuer.key]
        if faketime:
            cmd = ["faketime", faketime] + cmd
        run(cmd)
        return cert

    def make_root(self, name, common_name, days=3650):
        key = self._new_key(name)
        cert = self._sign(name, self._csr(name, key, common_name), _EXT_ROOT, days, self_key=key)
        return Cert(name, cert, key, cert, True)

    def make_intermediate(self, name, common_name, issuer, days=1825):
        key = self._new_key(name)
        cert = self._sign(name, self._csr(name, key, common_name), _EXT_INTERMEDIATE, days,
                          issuer=issuer)
        return Cert(name, cert, key, self._chain_file(name, cert, issuer), True, issuer)

    def make_leaf(self, name, common_name, sans, issuer, days=365, faketime=None):
        key = self._new_key(name)
        ext = _EXT_LEAF.format(san=", ".join(sans))
        cert = self._sign(name, self._csr(name, key, common_name), ext, days, issuer=issuer,
                          faketime=faketime)
        return Cert(name, cert, key, self._chain_file(name, cert, issuer), False, issuer)

    def _chain_file(self, name, cert, issuer):
        """cert + the issuer's chain, stopping before the root."""
        parts = [cert]
        while issuer is not None and issuer.issuer is not None:
            parts.append(issuer.cert)
            issuer = issuer.issuer
        path = self._path(f"{name}-chain.pem")
        self._concat(path, parts)
        return path

    def write_bundle(self, filename, roots):
        """A CA bundle file holding the given certificates (roots) only."""
        path = self._path(filename)
        self._concat(path, [r.cert for r in roots])
        return path

    @staticmethod
    def _concat(path, files):
        with open(path, "w") as out:
            for name in files:
                with open(name) as f:
                    out.write(f.read())


def split_pem_certificates(text):
    """All PEM certificate blocks in text, in order."""
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)


def describe_certificate(pem_text):
    """dict(subject, issuer, not_after) of one PEM certificate, via the openssl CLI."""
    out = run(["openssl", "x509", "-noout", "-subject", "-issuer", "-enddate",
               "-nameopt", "oneline"], input=pem_text).stdout
    info = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        info[{"subject": "subject", "issuer": "issuer", "notAfter": "not_after"}
             .get(key.strip(), key.strip())] = value.strip()
    return info


# --------------------------------------------------------------------------------------------
# dbtrust process
# --------------------------------------------------------------------------------------------

@dataclass
class ListenerSpec:
    """One [listener.NAME] section. `options` holds extra keys (timeouts, server_name...)."""
    name: str
    protocol: str
    upstream: str
    port: int
    host: str = "127.0.0.1"
    options: dict = field(default_factory=dict)

    @property
    def listen(self):
        return f"{self.host}:{self.port}"


class DbTrustConfig:
    """Builds a dbtrust INI file; listener ports are allocated here so tests know them early."""

    def __init__(self, bundle, workers=2, verify="full", **global_options):
        self.bundle = bundle
        self.workers = workers
        self.verify = verify
        self.global_options = global_options
        self.listeners = {}

    def add_listener(self, name, protocol, upstream, **options):
        """Add a listener on a fresh loopback port and return its ListenerSpec."""
        spec = ListenerSpec(name, protocol, upstream, free_port(), options=options)
        self.listeners[name] = spec
        return spec

    def render(self):
        lines = ["[dbtrust]", f"workers = {self.workers}"]
        lines += [f"{k} = {v}" for k, v in self.global_options.items()]
        lines += ["", "[trust]", f"bundle = {self.bundle}", f"verify = {self.verify}", ""]
        for spec in self.listeners.values():
            lines += [f"[listener.{spec.name}]", f"protocol = {spec.protocol}",
                      f"listen = {spec.listen}", f"upstream = {spec.upstream}"]
            lines += [f"{k} = {v}" for k, v in spec.options.items()]
            lines.append("")
        return "\n".join(lines)

    def write(self, path):
        with open(path, "w") as f:
            f.write(self.render())
        return path


# Problems seen when dbtrust processes stop (non-zero exit, sanitizer reports). Suites call
# exit_status_with_process_checks() at the very end, after all processes are stopped.
PROCESS_PROBLEMS = []
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer")


def exit_status_with_process_checks(test_result):
    """Runs the cleanups (stopping every process), then returns the suite's exit status: non-zero
    when a test failed or a dbtrust process exited uncleanly or reported a sanitizer finding."""
    run_cleanups()
    for problem in PROCESS_PROBLEMS:
        print(f"PROCESS CHECK FAILED: {problem}", file=sys.stderr)
    return 0 if test_result.wasSuccessful() and not PROCESS_PROBLEMS else 1


class DbTrust:
    """A dbtrust process: started with given args, ready once every listen port accepts TCP.

    stderr (the log) and stdout go to files in `workdir`. Connection-end log lines are written
    when a connection closes, i.e. possibly after the client already saw its error: use
    wait_for_line() with a mark() taken before the action, never a one-shot read.
    """

    def __init__(self, binary, args, listen_ports, workdir, name="dbtrust"):
        self.binary = binary
        self.args = list(args)
        self.listen_ports = list(listen_ports)
        self.workdir = workdir
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.stderr.log")
        self.stdout_path = os.path.join(workdir, f"{name}.stdout.log")
        self.proc = None

    @classmethod
    def from_config(cls, binary, config, workdir, name="dbtrust"):
        """Write `config` (a DbTrustConfig) into workdir and prepare `dbtrust --config FILE`."""
        path = config.write(os.path.join(workdir, f"{name}.ini"))
        ports = [s.port for s in config.listeners.values()]
        return cls(binary, ["--config", path], ports, workdir, name)

    def start(self, timeout=10):
        """Start and wait until all listen ports accept TCP; raise with the log if it dies."""
        with open(self.log_path, "ab") as err, open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary] + self.args, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=lambda: _set_parent_death_signal(signal.SIGKILL))
        register_cleanup(self.stop)
        deadline = time.monotonic() + timeout
        pending = list(self.listen_ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} during "
                                   f"start-up; log:\n{self.output_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not listen on {pending} within {timeout}s;"
                                   f" log:\n{self.output_text()}")
            pending = [p for p in pending if not tcp_accepts("127.0.0.1", p)]
            if pending:
                time.sleep(0.05)
        return self

    def stop(self, timeout=5):
        """SIGTERM, then SIGKILL after `timeout` (drain_timeout may keep it alive longer)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            PROCESS_PROBLEMS.append(f"{self.name} did not stop within {timeout}s of SIGTERM")
        self.check_clean_exit()

    def check_clean_exit(self):
        """A SIGTERM'ed dbtrust exits 0, and under ASan/UBSan its log holds no report (leaks
        are reported at exit, so this is the only place they can be seen)."""
        if self.proc.returncode not in (0, -signal.SIGKILL):
            PROCESS_PROBLEMS.append(f"{self.name} exited with {self.proc.returncode}")
        text = self.output_text()
        for marker in SANITIZER_MARKERS:
            if marker in text:
                start = text.index(marker)
                PROCESS_PROBLEMS.append(f"{self.name}: sanitizer report:\n{text[start:start + 4000]}")
                break

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- log access --------------------------------------------------------------------------

    def log_text(self):
        """The whole stderr log so far."""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def output_text(self):
        """stderr + stdout, for diagnostics and for "never log a password" checks."""
        with open(self.stdout_path, errors="replace") as f:
            return self.log_text() + f.read()

    def log_lines(self):
        return self.log_text().splitlines()

    def mark(self):
        """A position in the log; pass it as since= to look only at later lines."""
        return len(self.log_lines())

    def lines_since(self, mark):
        return self.log_lines()[mark:]

    def find_lines(self, *substrings, since=0):
        """Log lines after `since` that contain every substring."""
        return [line for line in self.lines_since(since)
                if all(s in line for s in substrings)]

    def wait_for_line(self, *substrings, since=0, timeout=5):
        """The first log line after `since` containing every substring; AssertionError (with
        the log tail) if none appears within timeout."""
        try:
            return wait_for(lambda: (self.find_lines(*substrings, since=since) or [None])[0],
                            timeout, what=f"log line with {substrings}")
        except TimeoutError:
            tail = "\n".join(self.lines_since(since)[-20:])
            raise AssertionError(f"no {self.name} log line containing {substrings} within "
                                 f"{timeout}s; lines since mark:\n{tail}") from None


# --------------------------------------------------------------------------------------------
# Scripted hostile upstreams (generic TCP part)
# --------------------------------------------------------------------------------------------

class PeerConnection:
    """What a scripted peer saw on one connection: bytes received and free-form notes."""

    def __init__(self):
        self.data = bytearray()
        self.notes = {}
        self.done = threading.Event()

    def recv_exact(self, sock, n):
        chunk = recv_exact(sock, n)
        self.data += chunk
        return chunk

    def drain(self, sock, stop_event, timeout=30):
        """Record everything until the other side closes (or stop/timeout)."""
        sock.settimeout(0.1)
        deadline = time.monotonic() + timeout
        while not stop_event.is_set() and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk


class ScriptedUpstream:
    """A TCP server on 127.0.0.1 that runs script(sock, record, stop_event) per connection.

    Scripts play a misbehaving database server. Every connection's PeerConnection is kept in
    `connections`, so a test can assert what dbtrust sent (e.g. no plaintext after 'N').
    """

    def __init__(self, script, name="peer"):
        self.script = script
        self.name = name
        self.port = free_port()
        self.connections = []
        self._stop = threading.Event()
        self._sock = None
        self._lock = threading.Lock()

    def start(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        threading.Thread(target=self._accept_loop, name=f"{self.name}-accept",
                         daemon=True).start()
        register_cleanup(self.stop)
        return self

    def stop(self):
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except (OSError, AttributeError):
                return
            record = PeerConnection()
            with self._lock:
                self.connections.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn, record):
        try:
            conn.settimeout(10)
            self.script(conn, record, self._stop)
        except Exception as exc:  # noqa: BLE001 - recorded for the test to inspect
            record.notes["error"] = repr(exc)
        finally:
            try:
                conn.close()
            finally:
                record.done.set()

    def connection_count(self):
        with self._lock:
            return len(self.connections)

    def connections_since(self, count, timeout=5):
        """Connections accepted after the first `count`, once each script has finished."""
        with self._lock:
            new = self.connections[count:]
        for record in new:
            record.done.wait(timeout)
        return new


def script_silent(sock, record, stop_event):
    """Accept and never answer: record whatever arrives until the other side gives up."""
    record.drain(sock, stop_event)


# --------------------------------------------------------------------------------------------
# PostgreSQL wire helpers (PG-specific)
# --------------------------------------------------------------------------------------------

PG_SSL_REQUEST = struct.pack("!II", 8, 80877103)
PG_GSSENC_REQUEST = struct.pack("!II", 8, 80877104)
PG_CANCEL_CODE = 80877102
PG_PROTOCOL_3_0 = 196608


def pg_startup_message(params, version=PG_PROTOCOL_3_0):
    """StartupMessage: Int32 len, Int32 version, (name\\0 value\\0)* \\0 (PROTOCOLS.md A1)."""
    body = struct.pack("!I", version)
    for name, value in params.items():
        body += name.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def pg_read_message(sock):
    """One tagged backend message -> (type as str, body bytes)."""
    header = recv_exact(sock, 5)
    mtype, length = header[:1].decode(), struct.unpack("!I", header[1:])[0]
    return mtype, recv_exact(sock, length - 4)


def pg_error_response(fields):
    """ErrorResponse 'E' from {code: text}, e.g. {'S': 'FATAL', 'C': '28000', 'M': '...'}."""
    body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def pg_error_fields(body):
    """ErrorResponse/NoticeResponse body -> {field code: text}."""
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1].decode()] = part[1:].decode(errors="replace")
    return fields


def pg_auth_code(body):
    """The Int32 sub-code of an 'R' message (0 ok, 3 cleartext, 5 md5, 10 SASL...)."""
    return struct.unpack("!I", body[:4])[0]


def pg_sasl_mechanisms(body):
    """Mechanism names of an AuthenticationSASL body (code 10), in order."""
    if pg_auth_code(body) != 10:
        raise ValueError(f"not AuthenticationSASL: code {pg_auth_code(body)}")
    return [m.decode() for m in body[4:].split(b"\0") if m]


def pg_open_plain(host, port, pre_requests=(), timeout=10):
    """Open a plaintext PG connection, send each pre-startup request (SSLRequest, GSSENC...)
    and return (socket, [one-byte answers])."""
    sock = socket.create_connection((host, port), timeout=timeout)
    answers = []
    for request in pre_requests:
        sock.sendall(request)
        answers.append(recv_exact(sock, 1))
    return sock, answers


def pg_first_reply(host, port, params, pre_requests=(), timeout=10):
    """Send pre-requests + StartupMessage in plaintext; return (answers, type, body) of the
    server's first message. What a client sees before authenticating."""
    sock, answers = pg_open_plain(host, port, pre_requests, timeout)
    with sock:
        sock.sendall(pg_startup_message(params))
        mtype, body = pg_read_message(sock)
    return answers, mtype, body


def pg_starttls(host, port, server_hostname=None, cafile=None, timeout=10):
    """SSLRequest -> 'S' -> TLS client socket. With cafile: verify-full against it."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.sendall(PG_SSL_REQUEST)
    answer = recv_exact(sock, 1)
    if answer != b"S":
        sock.close()
        raise ConnectionError(f"server answered {answer!r} to SSLRequest")
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(sock, server_hostname=server_hostname or host)


def pg_served_leaf_der(host, port):
    """DER of the leaf certificate a PG server presents now (no verification)."""
    with pg_starttls(host, port) as tls:
        return tls.getpeercert(binary_form=True)


def pg_conninfo(**kw):
    """libpq keyword/value conninfo string with proper quoting."""
    def quote(v):
        v = str(v)
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" if (
            not v or any(c in v for c in " '\\")) else v
    return " ".join(f"{k}={quote(v)}" for k, v in kw.items() if v is not None)


def run_psql(conninfo, *commands, password=None, timeout=30):
    """psql -X -A -t with one -c per command; returns CompletedProcess (no check)."""
    cmd = ["psql", conninfo, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    for command in commands:
        cmd += ["-c", command]
    env = clean_env(PGCONNECT_TIMEOUT=10, **({"PGPASSWORD": password} if password else {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# --------------------------------------------------------------------------------------------
# PostgreSQL scripted upstreams (PG-specific scripts for ScriptedUpstream)
# --------------------------------------------------------------------------------------------

def pg_script_refuse_tls(sock, record, stop_event):
    """Answer the SSLRequest with 'N' (server without TLS, or a downgrading MITM)."""
    record.recv_exact(sock, 8)
    sock.sendall(b"N")
    record.drain(sock, stop_event)


PG_INJECTED_MESSAGE = "injected plaintext from a man in the middle"


def pg_script_plaintext_after_s(sock, record, stop_event):
    """Answer 'S' and, in the same send, plaintext bytes (CVE-2021-23222 buffer stuffing)."""
    record.recv_exact(sock, 8)
    sock.sendall(b"S" + pg_error_response({"S": "FATAL", "V": "FATAL", "C": "XX000",
                                           "M": PG_INJECTED_MESSAGE}))
    record.drain(sock, stop_event)


class PgTlsUpstream(ScriptedUpstream):
    """A fake PG server that does real TLS (python ssl) with a given certificate.

    It answers 'S', completes the handshake, records the SNI and ALPN the client offered and
    the StartupMessage it received over TLS, then rejects it with `reply_fields` (an
    ErrorResponse), which lets a test see exactly what dbtrust forwarded.
    """

    DEFAULT_REPLY = {"S": "FATAL", "V": "FATAL", "C": "28000",
                     "M": "scripted TLS peer rejects everyone"}

    def __init__(self, cert, name="pg-tls-peer", reply_fields=None):
        super().__init__(self._script, name)
        self.cert = cert
        self.reply_fields = reply_fields or self.DEFAULT_REPLY

    def _context(self, record):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert.chain, self.cert.key)
        ctx.set_alpn_protocols(["postgresql"])

        def on_sni(_sslobj, server_name, _ctx):
            record.notes["sni"] = server_name
        ctx.sni_callback = on_sni
        return ctx

    def _script(self, sock, record, stop_event):
        record.recv_exact(sock, 8)
        sock.sendall(b"S")
        record.notes.setdefault("sni", None)
        tls = self._context(record).wrap_socket(sock, server_side=True)
        record.notes["alpn"] = tls.selected_alpn_protocol()
        record.notes["tls_version"] = tls.version()
        length = struct.unpack("!I", recv_exact(tls, 4))[0]
        record.notes["startup"] = struct.pack("!I", length) + recv_exact(tls, length - 4)
        tls.sendall(pg_error_response(self.reply_fields))
        tls.close()


# --------------------------------------------------------------------------------------------
# PostgreSQL 15 server (PG-specific)
# --------------------------------------------------------------------------------------------

PG_BIN = "/usr/lib/postgresql/15/bin"
PG_APP_USER, PG_APP_PASSWORD = "app", "apppw"
PG_MD5_USER, PG_MD5_PASSWORD = "md5user", "md5userpw"
# Cleartext `password` auth: the only method where a password crosses dbtrust's plaintext leg,
# hence the one that makes "the log never contains a password" a test that can fail.
PG_CLEARTEXT_USER, PG_CLEARTEXT_PASSWORD = "clearuser", "clearuserpw"
PG_APP_DATABASE = "app"

_PG_HBA = """# dbtrust tests: TLS-only for TCP; the unix socket is the admin's back door.
local   all  postgres                trust
hostssl all  md5user   127.0.0.1/32  md5
hostssl all  clearuser 127.0.0.1/32  password
hostssl all  all       127.0.0.1/32  scram-sha-256
hostnossl all all      0.0.0.0/0     reject
"""


def _postgres_ids():
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


class PostgresServer:
    """A throwaway TLS-only PostgreSQL 15 cluster on 127.0.0.1:<free port>.

    initdb and the postmaster run as the postgres user (they refuse root) in a temp dir that
    user owns. TCP accepts TLS only (pg_hba hostnossl reject); the admin connects through the
    unix socket in the temp dir. The postmaster is our direct child with a parent-death signal,
    so it cannot outlive the test run.
    """

    def __init__(self, cert, name="pg", port=None):
        self.name = name
        self.cert = cert
        self.port = port or free_port()
        self.dir = make_temp_dir(name)
        self.data = os.path.join(self.dir, "data")
        self.socket_dir = os.path.join(self.dir, "sock")
        self.tls_dir = os.path.join(self.dir, "tls")
        self.log_path = os.path.join(self.dir, "postgres.log")
        self.proc = None
        self.uid, self.gid = _postgres_ids()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout=60):
        """initdb, TLS-only configuration, start, wait until it accepts connections."""
        for d in (self.socket_dir, self.tls_dir):
            os.makedirs(d, mode=0o700)
        self._chown_tree(self.dir)
        self._run_as_postgres([f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres",
                               "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync",
                               "--no-instructions"], timeout=120)
        self._install_certificate(self.cert)
        self._write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [f"{PG_BIN}/postgres", "-D", self.data], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True,
                preexec_fn=lambda: _set_parent_death_signal(signal.SIGQUIT),
                **self._user_kwargs())
        register_cleanup(self.stop)
        self._wait_ready(timeout)
        return self

    def stop(self, timeout=15):
        """Fast shutdown (SIGINT), then SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def _wait_ready(self, timeout):
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres {self.name} exited with {self.proc.returncode};"
                                   f" log:\n{self.log_text()}")
            return run([f"{PG_BIN}/pg_isready", "-q", "-h", self.socket_dir, "-p",
                        str(self.port)], check=False).returncode == 0
        wait_for(ready, timeout, interval=0.1, what=f"postgres {self.name} to accept")

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    # -- configuration -----------------------------------------------------------------------

    def _user_kwargs(self):
        """Popen arguments that run a command as postgres (no-op if we already are)."""
        if os.geteuid() == self.uid:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def _run_as_postgres(self, cmd, timeout=60):
        return run(cmd, cwd=self.dir, timeout=timeout, env=clean_env(), **self._user_kwargs())

    def _chown_tree(self, path):
        if os.geteuid() != 0:
            return
        for root, dirs, files in os.walk(path):
            os.chown(root, self.uid, self.gid)
            for name in files:
                os.chown(os.path.join(root, name), self.uid, self.gid)

    def _write_owned(self, path, text, mode=0o600):
        """Write a file atomically (tmp + rename) owned by postgres with `mode`."""
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        if os.geteuid() == 0:
            os.chown(tmp, self.uid, self.gid)
        os.replace(tmp, path)

    def _install_certificate(self, cert):
        """Server files: chain (leaf + intermediates) and key, key mode 600 owned by postgres."""
        with open(cert.chain) as f:
            chain = f.read()
        with open(cert.key) as f:
            key = f.read()
        self._write_owned(os.path.join(self.tls_dir, "server.key"), key, 0o600)
        self._write_owned(os.path.join(self.tls_dir, "server.crt"), chain, 0o644)
        self.cert = cert

    def _write_config(self):
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": self.port,
            "unix_socket_directories": f"'{self.socket_dir}'",
            "ssl": "on",
            "ssl_cert_file": f"'{self.tls_dir}/server.crt'",
            "ssl_key_file": f"'{self.tls_dir}/server.key'",
            "max_connections": 100,
            # A throwaway cluster: durability costs time and buys nothing here.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        conf = os.path.join(self.data, "postgresql.conf")
        with open(conf, "a") as f:
            f.write("\n# dbtrust test settings\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self._write_owned(os.path.join(self.data, "pg_hba.conf"), _PG_HBA, 0o600)

    # -- administration ----------------------------------------------------------------------

    def admin_psql(self, *commands):
        """Run statements as postgres over the unix socket, one psql session, one -c each
        (CREATE DATABASE cannot run in the implicit transaction of a multi-statement -c)."""
        cmd = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir,
               "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        for c in commands:
            cmd += ["-c", c]
        return run(cmd, env=clean_env()).stdout

    def admin_dsn(self, dbname="postgres"):
        return pg_conninfo(host=self.socket_dir, port=self.port, user="postgres", dbname=dbname)

    def provision_app_roles(self):
        """Role app (SCRAM), role md5user (md5: password_encryption set in the same session),
        role clearuser (cleartext `password` method in pg_hba), database app owned by app."""
        self.admin_psql(f"create role {PG_APP_USER} login password '{PG_APP_PASSWORD}'")
        self.admin_psql(f"create role {PG_CLEARTEXT_USER} login "
                        f"password '{PG_CLEARTEXT_PASSWORD}'")
        self.admin_psql("set password_encryption = 'md5'",
                        f"create role {PG_MD5_USER} login password '{PG_MD5_PASSWORD}'")
        self.admin_psql(f"create database {PG_APP_DATABASE} owner {PG_APP_USER}")
        return self

    def direct_dsn(self, user=PG_APP_USER, password=PG_APP_PASSWORD, dbname=PG_APP_DATABASE,
                   bundle=None, **extra):
        """A verify-full libpq DSN straight to the server (the reference path)."""
        return pg_conninfo(host="localhost", port=self.port, user=user, password=password,
                           dbname=dbname, sslmode="verify-full", sslrootcert=bundle, **extra)

    def set_certificate(self, cert, timeout=10):
        """Write new server files, `pg_ctl reload`, and wait until new connections get them
        (reload is asynchronous; live connections keep the old chain)."""
        self._install_certificate(cert)
        self._run_as_postgres([f"{PG_BIN}/pg_ctl", "-D", self.data, "reload"])
        expected = cert.der()
        wait_for(lambda: pg_served_leaf_der("127.0.0.1", self.port) == expected, timeout,
                 interval=0.1, what=f"postgres {self.name} to serve {cert.name}")
