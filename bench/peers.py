"""The peers dbtrust is compared with. stunnel in client mode and pgbouncer with session pooling
(with a plaintext client leg, or serving TLS to clients for the TLS->TLS comparison) each verify
the server as dbtrust does (chain to the test bundle + host name). HAProxy in `mode tcp` is the
floor (issue 19): a relay that only copies bytes while the client does its own TLS, verify-full,
through it; what any proxy hop costs before it does anything of its own.

Each logs to a file in its own temp dir (HAProxy logs nothing), listens on a fresh loopback
port, and registers its stop with the fixtures' cleanup.
"""

import os
import pwd
import shutil
import signal
import subprocess

from common import fx


class PeerProcess:
    """A foreground peer process: start, wait until its port accepts TCP, stop on cleanup."""

    name = "peer"

    def __init__(self):
        self.dir = fx.make_temp_dir(self.name)
        self.port = fx.free_port()
        self.log_path = os.path.join(self.dir, f"{self.name}.log")
        self.proc = None

    def command(self):
        raise NotImplementedError

    def popen_kwargs(self):
        return {}

    def start(self, timeout=10):
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=out,
                                         stdin=subprocess.DEVNULL, cwd=self.dir,
                                         start_new_session=True, **self.popen_kwargs())
        fx.register_cleanup(self.stop)

        def listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n"
                                   f"{self.log_text()}")
            return fx.tcp_accepts("127.0.0.1", self.port)
        fx.wait_for(listening, timeout, what=f"{self.name} to listen")
        return self

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    @property
    def pid(self):
        return self.proc.pid


class Stunnel(PeerProcess):
    """stunnel4 client mode: plaintext in, `protocol = pgsql` (SSLRequest) out, verifyChain +
    checkHost against the bundle. It forwards the server's SASL list untouched, so libpq SCRAM
    logins fail through it: the bench uses the md5 user on every route."""

    name = "stunnel"

    def __init__(self, bundle, upstream_port, host_name="localhost"):
        super().__init__()
        self.config_path = os.path.join(self.dir, "stunnel.conf")
        with open(self.config_path, "w") as f:
            f.write("\n".join([
                "foreground = yes",
                "pid =",
                # The defaults on Debian, spelled out: no Nagle delay on either leg.
                "socket = l:TCP_NODELAY=1",
                "socket = r:TCP_NODELAY=1",
                "[pg]",
                "client = yes",
                f"accept = 127.0.0.1:{self.port}",
                f"connect = 127.0.0.1:{upstream_port}",
                "protocol = pgsql",
                "verifyChain = yes",
                f"CAfile = {bundle}",
                f"checkHost = {host_name}",
                f"sni = {host_name}",
                "",
            ]))

    def command(self):
        return ["stunnel", self.config_path]


class Pgbouncer(PeerProcess):
    """pgbouncer, session pooling, `server_tls_sslmode = verify-full` with the bundle as CA
    file. Clients log in with md5 against a userlist holding the plain password, which
    pgbouncer then uses for the server's md5 challenge. pgbouncer refuses to run as root: it
    runs as the postgres user, in a dir that user owns (with its own copy of the bundle)."""

    name = "pgbouncer"

    def __init__(self, bundle, upstream_port, database, user, password, pool_size=64,
                 host_name="localhost", run_as="postgres", client_cert=None):
        """client_cert: a fixtures Cert to serve TLS to clients with (`client_tls_sslmode =
        require`, its chain and key); None keeps the client leg plaintext."""
        super().__init__()
        self.run_as = pwd.getpwnam(run_as)
        ca_file = os.path.join(self.dir, "bundle.pem")
        shutil.copy(bundle, ca_file)
        client_tls = []
        if client_cert is not None:
            cert_file = os.path.join(self.dir, "client-leg.crt")
            key_file = os.path.join(self.dir, "client-leg.key")
            shutil.copy(client_cert.chain, cert_file)
            shutil.copy(client_cert.key, key_file)
            os.chmod(key_file, 0o600)
            client_tls = ["client_tls_sslmode = require", f"client_tls_cert_file = {cert_file}",
                          f"client_tls_key_file = {key_file}"]
        userlist = os.path.join(self.dir, "userlist.txt")
        with open(userlist, "w") as f:
            f.write(f'"{user}" "{password}"\n')
        self.config_path = os.path.join(self.dir, "pgbouncer.ini")
        with open(self.config_path, "w") as f:
            f.write("\n".join([
                "[databases]",
                f"{database} = host={host_name} port={upstream_port} dbname={database}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = md5",
                f"auth_file = {userlist}",
                "pool_mode = session",
                "max_client_conn = 4000",
                f"default_pool_size = {pool_size}",
                "server_tls_sslmode = verify-full",
                f"server_tls_ca_file = {ca_file}",
                *client_tls,
                f"pidfile = {os.path.join(self.dir, 'pgbouncer.pid')}",
                "ignore_startup_parameters = extra_float_digits",
                "",
            ]))
        os.chmod(userlist, 0o600)
        for root, _dirs, files in os.walk(self.dir):
            os.chown(root, self.run_as.pw_uid, self.run_as.pw_gid)
            for name in files:
                os.chown(os.path.join(root, name), self.run_as.pw_uid, self.run_as.pw_gid)

    def command(self):
        return ["pgbouncer", self.config_path]

    def popen_kwargs(self):
        return {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}


class HaproxyRelay(PeerProcess):
    """HAProxy 2.6, `mode tcp`: every byte from the client to the server and back, nothing
    decrypted, nothing verified (the client does verify-full itself, through it). Foreground
    (-db), one process; no `log` line, so it logs nothing. HAProxy sets TCP_NODELAY on both
    legs by itself.

    nbthread = dbtrust's worker count in the same run (threads): the same number of event
    loops on the same cores, so neither side wins by using more of the shared 2 cores."""

    name = "haproxy-relay"

    def __init__(self, upstream_port, threads, max_connections=4000):
        super().__init__()
        self.threads = threads
        self.config_path = os.path.join(self.dir, "haproxy.cfg")
        with open(self.config_path, "w") as f:
            f.write("\n".join([
                "global",
                f"    nbthread {threads}",
                f"    maxconn {max_connections}",
                "defaults",
                "    mode tcp",
                "    timeout connect 10s",
                # Idle benchmark sessions (memory, pgbench's allowance) must not be cut.
                "    timeout client 1h",
                "    timeout server 1h",
                "listen relay",
                f"    bind 127.0.0.1:{self.port}",
                f"    server db 127.0.0.1:{upstream_port}",
                "",
            ]))

    def command(self):
        return ["haproxy", "-db", "-f", self.config_path]
