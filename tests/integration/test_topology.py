"""Real network topology (issue 8): the database is another host, found by a DNS name, behind
a network that drops and fails over.

Run: /usr/bin/python3 tests/integration/test_topology.py --dbtrust build/dbtrust  (root)

Two network namespaces joined by a veth pair, both created (and removed) by this suite:
  dbt-app-N  dbtrust and the clients          10.R.S.1/24, fd00:R:S::1/64
  dbt-db-N   PostgreSQL 15 and MariaDB 10.11   10.R.S.2/24 and .3, fd00:R:S::2/64
The app namespace's /etc/netns/dbt-app-N/hosts names the servers: db.dbtrust.test (A) and
db6.dbtrust.test (AAAA only). Server certificates carry those two names and nothing else, so
every verification here is by name. iptables inside the db namespace makes the blackholes.

The test process's main thread joins the app namespace (setns) for the whole suite, so its
clients and dbtrust's loopback listeners meet there; dbtrust itself runs under `ip netns exec`,
which also bind-mounts the namespace's hosts file; servers are forked while the thread sits in
the db namespace.
"""
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import unittest

import psycopg2
import pymysql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

CLONE_NEWNET = 0x40000000
NAME, NAME6 = "db.dbtrust.test", "db6.dbtrust.test"
W = types.SimpleNamespace()
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


class Topology:
    """The two namespaces, their link and addresses, and the app side's hosts file."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.app, self.db = f"dbt-app-{tag}", f"dbt-db-{tag}"
        r, s = random.randint(64, 250), random.randint(1, 250)
        self.v4 = lambda host: f"10.{r}.{s}.{host}"
        self.v6 = lambda host: f"fd00:{r}:{s}::{host}"
        self.hosts_dir = f"/etc/netns/{self.app}"
        self.db_hosts_dir = f"/etc/netns/{self.db}"
        self.home = None

    def up(self):
        fx.register_cleanup(self.down)
        sh("ip", "netns", "add", self.app)
        sh("ip", "netns", "add", self.db)
        veth_app, veth_db = f"va{os.getpid() % 100000}", f"vd{os.getpid() % 100000}"
        sh("ip", "link", "add", veth_app, "type", "veth", "peer", "name", veth_db)
        sh("ip", "link", "set", veth_app, "netns", self.app)
        sh("ip", "link", "set", veth_db, "netns", self.db)
        # .9 on the app side: a second client address for hosts that must not be dbtrust
        for ns, dev, hosts in ((self.app, veth_app, (1, 9)), (self.db, veth_db, (2, 3))):
            for h in hosts:
                sh("ip", "-n", ns, "addr", "add", f"{self.v4(h)}/24", "dev", dev)
            sh("ip", "-n", ns, "-6", "addr", "add", f"{self.v6(hosts[0])}/64", "dev", dev,
               "nodad")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        os.makedirs(self.hosts_dir, exist_ok=True)
        self.point_name_at(2)
        # The server side names its clients (forward and reverse must agree for MariaDB).
        os.makedirs(self.db_hosts_dir, exist_ok=True)
        with open(os.path.join(self.db_hosts_dir, "hosts"), "w") as f:
            f.write(f"127.0.0.1 localhost\n{self.v4(1)} app.dbtrust.test\n"
                    f"{self.v4(9)} other.dbtrust.test\n{self.v6(1)} app6.dbtrust.test\n")
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        return self

    def hosts_text(self, v4_host):
        return (f"127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
                f"{self.v4(v4_host)} {NAME}\n{self.v6(2)} {NAME6}\n")

    def point_name_at(self, v4_host):
        """The DNS failover: rewritten in place, since `ip netns exec` bind-mounts this very
        file over dbtrust's /etc/hosts (a rename would leave dbtrust the old inode)."""
        path = os.path.join(self.hosts_dir, "hosts")
        mode = "r+" if os.path.exists(path) else "w"
        with open(path, mode) as f:
            f.seek(0)
            f.write(self.hosts_text(v4_host))
            f.truncate()

    def enter(self, ns):
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {ns}")
        finally:
            os.close(fd)

    def leave(self):
        if self.home is not None and _libc.setns(self.home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")

    def exec_prefix(self, ns):
        return ["ip", "netns", "exec", ns]

    def iptables(self, *rule):
        sh(*self.exec_prefix(self.db), "iptables", *rule)

    def blackhole(self, port):
        """Every packet to and from the port vanishes: no RST, no ICMP."""
        self.iptables("-I", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP")
        self.iptables("-I", "OUTPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP")

    def heal(self):
        self.iptables("-F", "INPUT")
        self.iptables("-F", "OUTPUT")

    def down(self):
        try:
            self.leave()
        finally:
            for ns in (self.app, self.db):
                sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(self.hosts_dir, ignore_errors=True)
            shutil.rmtree(self.db_hosts_dir, ignore_errors=True)


class NetPostgres(fx.PostgresServer):
    """Listens on every address of its namespace; TLS clients from the topology's networks."""

    def _write_config(self):
        super()._write_config()
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("listen_addresses = '*'\n")
        hba = os.path.join(self.data, "pg_hba.conf")
        with open(hba) as f:
            text = f.read()
        rules = ("hostssl all all 10.0.0.0/8 scram-sha-256\n"
                 "hostssl all all fd00::/8 scram-sha-256\n")
        self._write_owned(hba, text.replace("hostnossl", rules + "hostnossl", 1), 0o600)


class NetMariadb(fx.MariadbServer):
    """On every address, with a host cache that blocks after 10 connect errors. It runs under
    `ip netns exec` so that it reads the db namespace's hosts file: MariaDB keeps (and blocks)
    a host only once its address resolved, and no resolver is reachable from here."""

    def _write_config(self):
        super()._write_config()
        with open(self.config_path, "a") as f:
            f.write("bind-address = *\nmax-connect-errors = 10\nskip-name-resolve = 0\n")


class V6Listener(fx.ListenerSpec):
    """A listener on an IPv6 address: listen = [addr]:port."""

    @property
    def listen(self):
        return f"[{self.host}]:{self.port}"


def setUpModule():
    if os.geteuid() != 0:
        raise unittest.SkipTest("network namespaces need root")
    for key in [k for k in os.environ if k.startswith(("PG", "MYSQL", "MARIADB"))]:
        del os.environ[key]
    W.tmp = fx.make_temp_dir("test-topology")
    W.pki = fx.TestPKI(os.path.join(W.tmp, "pki"))
    W.leaf = W.pki.make_leaf("db-leaf", NAME, (f"DNS:{NAME}", f"DNS:{NAME6}"),
                             W.pki.intermediate)
    W.net = Topology().up()
    W.net.enter(W.net.db)
    try:
        W.pg = NetPostgres(W.leaf, "pg-topology").start().provision_app_roles()
        maria = NetMariadb(W.leaf, "maria-topology")
        maria.launcher = W.net.exec_prefix(W.net.db)
        W.maria = maria.start().provision_app_users()
    finally:
        W.net.enter(W.net.app)
    W.closed_port = fx.free_port()
    W.bundle = os.path.join(W.tmp, "bundle.pem")
    shutil.copy(W.pki.bundle, W.bundle)
    cfg = fx.DbTrustConfig(W.bundle, workers=2, drain_timeout="1s")
    fast = {"connect_timeout": "2s", "upstream_dead_timeout": "4s"}
    W.orders = cfg.add_listener("orders", "postgres", f"{NAME}:{W.pg.port}", **fast)
    W.by_ip = cfg.add_listener("by-ip", "postgres", f"{W.net.v4(2)}:{W.pg.port}", **fast)
    W.multi = cfg.add_listener("multi", "postgres",
                               f"{NAME}:{W.closed_port}, {NAME}:{W.pg.port}", **fast)
    W.v6 = cfg.listeners["v6"] = V6Listener("v6", "postgres", f"{NAME6}:{W.pg.port}",
                                            fx.free_port(), host="::1", options=fast)
    W.shop = cfg.add_listener("shop", "mysql", f"{NAME}:{W.maria.port}", **fast)
    W.shop6 = cfg.add_listener("shop6", "mysql", f"{NAME6}:{W.maria.port}", **fast)
    path = cfg.write(os.path.join(W.tmp, "topology.ini"))
    W.dbtrust = fx.DbTrust("ip", ["netns", "exec", W.net.app, sys.argv_dbtrust, "--config", path],
                           [], W.tmp, "dbtrust-topology").start()
    for spec in cfg.listeners.values():
        fx.wait_for(lambda: fx.tcp_accepts(spec.host, spec.port), 10,
                    what=f"listener {spec.name}")


def tearDownModule():
    fx.run_cleanups()


def pg_connect(spec, app="topology"):
    return psycopg2.connect(host=spec.host, port=spec.port, user=fx.PG_APP_USER,
                            password=fx.PG_APP_PASSWORD, dbname=fx.PG_APP_DATABASE,
                            sslmode="disable", connect_timeout=15, application_name=app)


def pg_one(conn, sql):
    cur = conn.cursor()
    cur.execute(sql)
    return cur.fetchone()


def my_connect(spec, app="topology"):
    return pymysql.connect(host=spec.host, port=spec.port, user=fx.MY_NATIVE_USER,
                           password=fx.MY_NATIVE_PASSWORD, database=fx.MY_APP_DATABASE,
                           ssl_disabled=True, connect_timeout=15, read_timeout=60,
                           program_name=app)


def my_one(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


def garbled_handshake(host, port, source=None):
    """Reads the MySQL greeting, answers it with garbage, waits for the close. Returns the
    ERR packet a server sent instead of a greeting (a blocked host), else None."""
    with socket.create_connection((host, port), timeout=5,
                                  source_address=(source, 0) if source else None) as s:
        header = fx.recv_exact(s, 4)
        payload = fx.recv_exact(s, int.from_bytes(header[:3], "little"))
        if payload[:1] == b"\xff":
            return payload
        s.sendall(b"\x05\x00\x00\x01garbage")
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
        return None


SERVER_SIDE = ("select host(inet_server_addr()), host(inet_client_addr()), "
               "(select ssl from pg_stat_ssl where pid = pg_backend_pid())")


class TestByName(unittest.TestCase):

    def test_postgres_verified_by_name_on_another_host(self):
        mark = W.dbtrust.mark()
        conn = pg_connect(W.orders, app="by-name")
        try:
            server, client, ssl = pg_one(conn, SERVER_SIDE)
        finally:
            conn.close()
        self.assertEqual((server, client, ssl), (W.net.v4(2), W.net.v4(1), True))
        line = W.dbtrust.wait_for_line("conn_end", "app=by-name ", since=mark)
        self.assertIn(f"upstream={NAME}:{W.pg.port}", line)

    def test_mysql_verified_by_name_on_another_host(self):
        conn = my_connect(W.shop, app="by-name-my")
        try:
            host, cipher = my_one(conn, "select host, (select variable_value from "
                                        "information_schema.session_status where "
                                        "variable_name = 'Ssl_cipher') from "
                                        "information_schema.processlist where id = "
                                        "connection_id()")
        finally:
            conn.close()
        self.assertEqual(host.rsplit(":", 1)[0], "app.dbtrust.test")  # = 10.R.S.1 (db hosts)
        self.assertTrue(cipher, "the upstream leg is not TLS")

    def test_address_without_the_name_fails_verify_full(self):
        """The certificates carry names only: dialled by address, verification fails."""
        with self.assertRaises(psycopg2.OperationalError) as caught:
            pg_connect(W.by_ip, app="by-ip")
        self.assertIn("(tls_hostname_mismatch)", str(caught.exception))


class TestIPv6(unittest.TestCase):

    def test_ipv6_listener_and_aaaa_upstream(self):
        conn = pg_connect(W.v6, app="v6")
        try:
            server, client, ssl = pg_one(conn, SERVER_SIDE)
        finally:
            conn.close()
        self.assertEqual((server, client, ssl), (W.net.v6(2), W.net.v6(1), True))

    def test_ipv6_mysql(self):
        conn = my_connect(W.shop6, app="v6-my")
        try:
            host = my_one(conn, "select host from information_schema.processlist "
                                "where id = connection_id()")[0]
        finally:
            conn.close()
        self.assertEqual(host.rsplit(":", 1)[0], "app6.dbtrust.test")  # = fd00:R:S::1


class TestFailover(unittest.TestCase):

    def tearDown(self):
        W.net.point_name_at(2)

    def test_new_connections_follow_the_name_live_ones_stay(self):
        live = pg_connect(W.orders, app="before-failover")
        try:
            self.assertEqual(pg_one(live, SERVER_SIDE)[0], W.net.v4(2))
            W.net.point_name_at(3)  # the managed database moved
            moved = pg_connect(W.orders, app="after-failover")
            try:
                self.assertEqual(pg_one(moved, SERVER_SIDE)[0], W.net.v4(3))
            finally:
                moved.close()
            self.assertEqual(pg_one(live, SERVER_SIDE)[0], W.net.v4(2))
        finally:
            live.close()

    def test_upstream_list_tried_in_order(self):
        mark = W.dbtrust.mark()
        conn = pg_connect(W.multi, app="multi")
        try:
            self.assertEqual(pg_one(conn, "select 3"), (3,))
        finally:
            conn.close()
        line = W.dbtrust.wait_for_line("conn_end", "app=multi", since=mark)
        self.assertIn(f"upstream={NAME}:{W.pg.port}", line)


class TestBlackhole(unittest.TestCase):

    def tearDown(self):
        W.net.heal()

    def test_session_notices_a_vanished_upstream(self):
        """iptables DROP both ways: no reset ever arrives. Within upstream_dead_timeout (4 s)
        dbtrust closes the session with upstream_timeout and the application gets an error
        instead of hanging."""
        mark = W.dbtrust.mark()
        conn = pg_connect(W.orders, app="blackholed")
        try:
            self.assertEqual(pg_one(conn, "select 1"), (1,))
            W.net.blackhole(W.pg.port)
            start = time.monotonic()
            with self.assertRaises(psycopg2.Error):
                pg_one(conn, "select 2")
            elapsed = time.monotonic() - start
        finally:
            conn.close()
        self.assertLess(elapsed, 12, "the application hung")
        self.assertGreater(elapsed, 2)
        line = W.dbtrust.wait_for_line("conn_end", "app=blackholed", since=mark, timeout=10)
        self.assertIn("reason=upstream_timeout", line)

    def test_mysql_session_notices_a_vanished_upstream(self):
        mark = W.dbtrust.mark()
        conn = my_connect(W.shop, app="blackholed-my")
        try:
            self.assertEqual(my_one(conn, "select 1"), (1,))
            W.net.blackhole(W.maria.port)
            start = time.monotonic()
            with self.assertRaises(pymysql.err.OperationalError):
                my_one(conn, "select 2")
            elapsed = time.monotonic() - start
        finally:
            conn.close()
        self.assertLess(elapsed, 12, "the application hung")
        line = W.dbtrust.wait_for_line("conn_end", "app=blackholed-my", since=mark,
                                       timeout=10)
        self.assertIn("reason=upstream_timeout", line)

    def test_connect_to_a_blackholed_upstream_ends_at_connect_timeout(self):
        W.net.blackhole(W.pg.port)
        start = time.monotonic()
        with self.assertRaises(psycopg2.OperationalError) as caught:
            pg_connect(W.orders, app="connect-blackholed")
        elapsed = time.monotonic() - start
        self.assertIn("(upstream_connect_timeout)", str(caught.exception))
        self.assertLess(elapsed, 6)


class TestMysqlHostCache(unittest.TestCase):
    """The server counts handshakes that end badly against the connecting address, and after
    max_connect_errors (10) blocks it: every application behind that dbtrust. Clients that
    give up or send garbage during the handshake must not count."""

    def test_the_server_does_block_a_host(self):
        """The fixture can fail the test below: straight to the server from another address,
        12 garbled handshakes get that address blocked (ERR 1129)."""
        answers = [garbled_handshake(W.net.v4(2), W.maria.port, source=W.net.v4(9))
                   for _ in range(12)]
        refused = [a for a in answers if a is not None]
        self.assertTrue(refused, "the server never blocked the abusing address")
        self.assertEqual(int.from_bytes(refused[-1][1:3], "little"), 1129, refused[-1])

    def test_guard_probes_do_not_block_dbtrust(self):
        """Every bundle change makes the rotation guard probe each upstream through TLS; a
        probe that left after the handshake would count. 12 changes = 24 probes of MariaDB
        (two MySQL listeners), more than max_connect_errors."""
        with open(W.bundle) as f:
            original = f.read()
        try:
            for i in range(12):
                mark = W.dbtrust.mark()
                with open(W.bundle, "w") as f:
                    f.write(f"# change {i}\n{original}")
                W.dbtrust.proc.send_signal(signal.SIGHUP)
                W.dbtrust.wait_for_line("bundle_reload", "result=ok", since=mark, timeout=20)
        finally:
            with open(W.bundle, "w") as f:
                f.write(original)
        conn = my_connect(W.shop, app="after-probes")
        try:
            self.assertEqual(my_one(conn, "select 6"), (6,))
        finally:
            conn.close()
        self.assertIn("Access denied for user 'dbtrust'", W.maria.log_text())

    def test_abandoned_and_garbled_handshakes_do_not_block_dbtrust(self):
        for i in range(50):
            with socket.create_connection((W.shop.host, W.shop.port), timeout=5) as s:
                fx.recv_exact(s, 4)  # the greeting's header: then hang up
        for i in range(50):
            garbled_handshake(W.shop.host, W.shop.port)
        time.sleep(1)
        conn = my_connect(W.shop, app="after-abuse")
        try:
            self.assertEqual(my_one(conn, "select 4"), (4,))
        finally:
            conn.close()


if __name__ == "__main__":
    sys.argv_dbtrust = os.path.abspath(fx.parse_dbtrust_arg(sys.argv))
    program = unittest.main(verbosity=2, exit=False)
    sys.exit(fx.exit_status_with_process_checks(program.result))
