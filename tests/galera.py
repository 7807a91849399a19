"""Private, throw-away MariaDB servers that can be killed and restarted on the same port: a
single server (for database-restart tests) and a 3-node Galera cluster on loopback.

    cluster = GaleraCluster(base_dir).start()      # node 1 bootstraps, nodes 2 and 3 join
    cluster.urls                                    # ["mysql://root@127.0.0.1:P1/", ...]
    cluster.create_database("gt")                   # replicated to every node
    cluster.kill(2)                                 # SIGKILL node 3 (0-based index)
    cluster.restart(2)                              # it rejoins (IST when it can, else SST)
    cluster.wait_synced()                           # size 3, every node Synced, or fail
    cluster.stop()                                  # every node, by PID

    single = MariaDB(base_dir).start()              # one plain mariadbd on a fixed port
    single.kill(); single.start()                   # crash and come back on the same port

Durability: unlike tests/mariadb_server.py, these servers run with
innodb_flush_log_at_trx_commit=2 (the log is written to the OS at each commit), so a SIGKILL of
the process loses nothing a client was told was committed.

Each node has its own data dir (copied from one mariadb-install-db), client port, Galera
group-communication port, IST port and SST port, all on 127.0.0.1; SST uses rsync (Debian's
galera-4 and rsync packages; mariadb-server depends on both). Everything runs as root with
--user=root. Start, kill and restart nodes from a thread that outlives them (the test's main
thread): the servers get SIGTERM when the thread that started them ends (PR_SET_PDEATHSIG), so
that a killed test run leaves no server behind.

Run this file directly for a smoke test that prints how long each step takes.
"""
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

import pymysql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mariadb_server import SEARCH_PATH, MariaDBUnavailable, _die_with_parent, _tail, _which  # noqa: E402

GALERA_LIBS = ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/libgalera_smm.so",
               "/usr/lib/galera-4/libgalera_smm.so", "/usr/lib64/galera-4/libgalera_smm.so",
               "/usr/lib64/galera/libgalera_smm.so")
SERVER_OPTS = ["--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M",
               "--innodb-flush-log-at-trx-commit=2", "--innodb-doublewrite=0",
               "--innodb-use-native-aio=0", "--skip-log-bin", "--skip-name-resolve",
               "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
               "--max-connections=500", "--performance-schema=0"]
# Failure detection in ~2-4 s instead of Galera's 5-15 s defaults, so that a killed node leaves
# the cluster (and the survivors stop waiting for it) quickly; a small page cache file.
PROVIDER_OPTS = ("gcache.size=32M;evs.keepalive_period=PT0.5S;evs.inactive_check_period=PT0.5S;"
                 "evs.suspect_timeout=PT2S;evs.inactive_timeout=PT4S;evs.install_timeout=PT4S;"
                 "gmcast.peer_timeout=PT2S;pc.announce_timeout=PT1S")
START_TIMEOUT = 90.0  # seconds a node may take to accept connections / reach Synced


class GaleraUnavailable(MariaDBUnavailable):
    """The Galera provider library (Debian: galera-4) or the SST tool (rsync) is missing."""


def galera_library():
    for path in GALERA_LIBS:
        if os.path.exists(path):
            return path
    raise GaleraUnavailable("libgalera_smm.so not found (install Debian's galera-4 package); looked in "
                            + ", ".join(GALERA_LIBS))


def _ephemeral_range():
    try:
        low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1, below the kernel's ephemeral range when there is
    room: a port that must stay ours across a restart (a node's client, group, IST and SST ports,
    a restarted server's) is then never handed out meanwhile as the local end of some outgoing
    connection. All are held open while choosing, so there are no repeats."""
    low, _ = _ephemeral_range()
    socks = []
    try:
        candidates = random.sample(range(10000, low), min(4000, low - 10000)) if low > 11000 else []
        for port in candidates:
            if len(socks) == n:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
                socks.append(s)
            except OSError:
                s.close()
        while len(socks) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def install_datadir(datadir):
    """mariadb-install-db into datadir: password-less root@localhost and root@127.0.0.1."""
    install_db = _which("mariadb-install-db", "mysql_install_db")
    os.makedirs(datadir, exist_ok=True)
    r = subprocess.run([install_db, "--no-defaults", f"--datadir={datadir}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
                        *SERVER_OPTS], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise MariaDBUnavailable(f"{install_db} failed ({r.returncode}):\n{r.stdout}{r.stderr}")


def connect(port, timeout=2, **kw):
    return pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=timeout,
                           read_timeout=kw.pop("read_timeout", 30), write_timeout=30, autocommit=True, **kw)


class MariaDB:
    """One mariadbd on a fixed port with its own data dir; start() again after kill() or stop()
    brings it back on the same port with the same data. Subclassed by GaleraNode."""

    def __init__(self, base_dir, name="mariadb", port=None, datadir_template=None):
        self.name = name
        self.base_dir = os.path.abspath(base_dir)
        self.datadir = os.path.join(self.base_dir, "data")
        self.log = os.path.join(self.base_dir, "mariadb.err")
        self.port = port or free_ports(1)[0]
        self.proc = None
        self.mariadbd = _which("mariadbd", "mysqld")
        os.makedirs(self.base_dir, exist_ok=True)
        # Unix socket paths are limited to ~107 bytes; a short private dir of our own
        self.sock_dir = tempfile.mkdtemp(prefix="mdb")
        if not os.path.exists(os.path.join(self.datadir, "mysql")):
            if datadir_template:
                shutil.copytree(datadir_template, self.datadir, dirs_exist_ok=True)
            else:
                install_datadir(self.datadir)

    @property
    def url(self):
        return f"mysql://root@127.0.0.1:{self.port}/"

    def args(self):
        return [self.mariadbd, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
                f"--socket={os.path.join(self.sock_dir, 'mysql.sock')}", "--bind-address=127.0.0.1",
                f"--pid-file={os.path.join(self.base_dir, 'mariadb.pid')}", f"--log-error={self.log}",
                f"--tmpdir={self.base_dir}", "--user=root", *SERVER_OPTS]

    def env(self):
        return {**os.environ, "PATH": SEARCH_PATH}

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, extra=()):
        """Launch the process (no waiting)."""
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")
        with open(self.log, "ab") as logf:
            logf.write(f"\n==== {time.strftime('%H:%M:%S')} starting {self.name}: {' '.join(extra)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen([*self.args(), *extra], stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=logf, env=self.env(), preexec_fn=_die_with_parent)
        return self

    def check_running(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise MariaDBUnavailable(f"{self.name} exited with code {self.proc.returncode}; "
                                     f"tail of {self.log}:\n{_tail(self.log, 40)}")

    def ready(self):
        """True once the server answers a query (a Galera node: once it is Synced)."""
        self.check_running()
        try:
            conn = connect(self.port, timeout=1, read_timeout=5)
        except pymysql.err.OperationalError:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except pymysql.err.Error:
            return False
        finally:
            conn.close()

    def wait_ready(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise MariaDBUnavailable(f"{self.name} not ready after {timeout:g}s; tail of {self.log}:\n"
                                         f"{_tail(self.log, 40)}")
            time.sleep(0.1)
        return self

    def start(self, timeout=START_TIMEOUT):
        return self.spawn().wait_ready(timeout)

    def kill(self):
        """SIGKILL, as a crash or a pulled plug would; waits for the process to be gone."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, grace=30.0):
        """Clean shutdown (SIGTERM), SIGKILL after `grace` seconds."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def query(self, sql, *args, database=None):
        conn = connect(self.port, database=database)
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute(sql, args or None)
                return cur.fetchall()
        finally:
            conn.close()

    def create_database(self, name):
        quoted = "`" + name.replace("`", "``") + "`"
        self.query(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        return self.url + name


# Galera's rsync SST runs an rsync daemon on the joiner. Started as root with no `uid` in its
# config, rsync switches to "nobody", which cannot write the root-owned data dir. mariadbd puts
# its own bin dir first on the SST script's PATH, so a wrapper named rsync cannot simply shadow
# it; instead the nodes use SST method "rsyncroot": mariadbd runs wsrep_sst_rsyncroot (ours,
# found further down PATH), which runs Debian's wsrep_sst_rsync with our rsync wrapper first on
# PATH, and that wrapper keeps the daemon root (--dparam sets a default for every module).
RSYNC_WRAPPER = """#!/bin/sh
for arg in "$@"; do
    if [ "$arg" = "--daemon" ]; then exec {rsync} "$@" --dparam=uid=root --dparam=gid=root; fi
done
exec {rsync} "$@"
"""
SST_WRAPPER = """#!/bin/sh
PATH="{bin_dir}:$PATH" exec {sst} "$@"
"""
SST_METHOD = "rsyncroot"


class GaleraNode(MariaDB):
    """A MariaDB with wsrep on, one of `cluster`'s members."""

    def __init__(self, base_dir, name, cluster, index, ports, datadir_template):
        self.cluster, self.index = cluster, index
        port, self.gcomm_port, self.ist_port, self.sst_port = ports
        super().__init__(base_dir, name, port, datadir_template)

    def env(self):
        return {**os.environ, "PATH": os.pathsep.join([self.cluster.bin_dir, SEARCH_PATH])}

    def args(self):
        provider_opts = (f"gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm_port};"
                         f"ist.recv_addr=127.0.0.1:{self.ist_port};{PROVIDER_OPTS}")
        return [*super().args(), "--wsrep-on=ON", f"--wsrep-provider={self.cluster.library}",
                f"--wsrep-cluster-name={self.cluster.name}", f"--wsrep-cluster-address={self.cluster.address}",
                f"--wsrep-node-name={self.name}", f"--wsrep-node-address=127.0.0.1:{self.gcomm_port}",
                f"--wsrep-node-incoming-address=127.0.0.1:{self.port}",
                f"--wsrep-sst-receive-address=127.0.0.1:{self.sst_port}", f"--wsrep-sst-method={SST_METHOD}",
                f"--wsrep-provider-options={provider_opts}", "--binlog-format=ROW",
                "--innodb-autoinc-lock-mode=2", "--default-storage-engine=InnoDB",
                *self.cluster.extra_args]

    def status(self, timeout=1):
        """wsrep_* status variables (lower-case names without the prefix), or None if unreachable."""
        try:
            conn = connect(self.port, timeout=timeout, read_timeout=5)
        except pymysql.err.OperationalError:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep\\_%'")
                return {k[len("wsrep_"):].lower(): v for k, v in cur.fetchall()}
        except pymysql.err.Error:
            return None
        finally:
            conn.close()

    def synced(self, size=None):
        self.check_running()
        s = self.status()
        return bool(s) and s.get("local_state_comment") == "Synced" and s.get("ready") == "ON" \
            and s.get("cluster_status") == "Primary" and (size is None or s.get("cluster_size") == str(size))

    def ready(self):
        return self.synced()

    def recovered_position(self):
        """After a crash: run `mariadbd --wsrep-recover` to read the last committed position
        from InnoDB, so that the restart can ask for an incremental transfer (IST) instead of
        a full copy. None when it cannot be found (the node then takes a full SST)."""
        log = os.path.join(self.base_dir, "recover.err")
        with open(log, "w"):
            pass
        args = [a for a in self.args() if not a.startswith("--log-error=")]
        subprocess.run([*args, "--wsrep-recover", f"--log-error={log}"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=START_TIMEOUT)
        match = re.findall(r"WSREP: Recovered position: ([0-9a-f-]{36}:-?\d+)", _tail(log, 200))
        return match[-1] if match and not match[-1].endswith(":-1") else None

    def grastate_seqno(self):
        try:
            text = open(os.path.join(self.datadir, "grastate.dat")).read()
        except OSError:
            return None
        m = re.search(r"^seqno:\s*(-?\d+)", text, re.M)
        return int(m.group(1)) if m else None


class GaleraCluster:
    """`size` Galera nodes on loopback. Node indexes are 0-based."""

    def __init__(self, base_dir, size=3, name="gotrue_test", extra_args=()):
        self.library = galera_library()
        rsync = shutil.which("rsync", path=SEARCH_PATH)
        if not rsync:
            raise GaleraUnavailable("rsync not found (Galera's rsync SST needs it; install Debian's rsync)")
        sst = _which("wsrep_sst_rsync")
        self.base_dir, self.name, self.extra_args = os.path.abspath(base_dir), name, list(extra_args)
        self.bin_dir = os.path.join(self.base_dir, "bin")
        os.makedirs(self.bin_dir, exist_ok=True)
        for name, text in (("rsync", RSYNC_WRAPPER.format(rsync=rsync)),
                           (f"wsrep_sst_{SST_METHOD}", SST_WRAPPER.format(bin_dir=self.bin_dir, sst=sst))):
            path = os.path.join(self.bin_dir, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o755)
        template = os.path.join(self.base_dir, "template")
        if not os.path.exists(os.path.join(template, "mysql")):
            install_datadir(template)
        ports = free_ports(4 * size)
        self.address = "gcomm://" + ",".join(f"127.0.0.1:{ports[4 * i + 1]}" for i in range(size))
        self.nodes = [GaleraNode(os.path.join(self.base_dir, f"node{i + 1}"), f"node{i + 1}", self, i,
                                 ports[4 * i:4 * i + 4], template) for i in range(size)]
        self.timings = {}

    def __getitem__(self, i):
        return self.nodes[i]

    def __len__(self):
        return len(self.nodes)

    @property
    def urls(self):
        return [n.url for n in self.nodes]

    def start(self, timeout=START_TIMEOUT):
        """Bootstrap node 1 (--wsrep-new-cluster), then start the others together; returns when
        every node is Synced in a cluster of full size, or raises at the deadline.

        The first start seeds the cluster so that nobody needs a state transfer: node 1
        bootstraps alone once and shuts down cleanly, and its data dir (now carrying the
        cluster's state UUID and position) is copied to the others. Joining nodes that hold the
        cluster's exact state skip SST, which would copy the whole data dir one node at a time."""
        t0 = time.monotonic()
        try:
            if self.nodes[0].grastate_seqno() is None:
                self.seed(timeout)
                self.timings["seed"] = time.monotonic() - t0
            self.nodes[0].spawn(["--wsrep-new-cluster"]).wait_ready(timeout)
            self.timings["bootstrap"] = time.monotonic() - t0
            # Joiners that open their group connections at the same moment often spend seconds
            # agreeing on a membership (EVS retries): each one starts once the previous one is in
            # the group, and their state transfers then overlap.
            for n, node in enumerate(self.nodes[1:], 2):
                node.spawn()
                self.wait_members(n, timeout)
            self.wait_synced(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def seed(self, timeout=START_TIMEOUT):
        first = self.nodes[0]
        first.spawn(["--wsrep-new-cluster"]).wait_ready(timeout)
        first.stop()
        if first.grastate_seqno() in (None, -1):
            raise MariaDBUnavailable(f"{first.name} did not record its position at shutdown; tail of {first.log}:\n"
                                     f"{_tail(first.log, 30)}")
        for node in self.nodes[1:]:
            shutil.rmtree(node.datadir, ignore_errors=True)
            shutil.copytree(first.datadir, node.datadir, ignore=shutil.ignore_patterns("galera.cache", "*.pid"))

    def wait_synced(self, nodes=None, size=None, timeout=START_TIMEOUT):
        """Until each of `nodes` (default: all) is Synced in a primary component of `size`
        (default: the number of nodes) members."""
        nodes = [self.nodes[i] for i in (range(len(self.nodes)) if nodes is None else nodes)]
        size = len(nodes) if size is None else size
        deadline = time.monotonic() + timeout
        while True:
            pending = [n for n in nodes if not n.synced(size)]
            if not pending:
                return self
            if time.monotonic() > deadline:
                report = "\n".join(f"--- {n.name}: {self.describe(n)}\n{_tail(n.log, 25)}" for n in pending)
                raise MariaDBUnavailable(f"Galera nodes not Synced in a cluster of {size} after {timeout:g}s:\n"
                                         + report)
            time.sleep(0.1)

    def wait_members(self, n, timeout=START_TIMEOUT):
        """Until node 1 sees n members in its primary component."""
        deadline = time.monotonic() + timeout
        while (self.nodes[0].status() or {}).get("cluster_size") != str(n):
            self.nodes[0].check_running()
            if time.monotonic() > deadline:
                raise MariaDBUnavailable(f"node1 did not see {n} members after {timeout:g}s: "
                                         f"{self.describe(self.nodes[0])}")
            time.sleep(0.05)

    @staticmethod
    def describe(node):
        if not node.alive():
            return "not running"
        s = node.status()
        if not s:
            return "not answering"
        return ", ".join(f"{k}={s.get(k)}" for k in ("local_state_comment", "cluster_size", "cluster_status",
                                                       "ready", "connected"))

    def kill(self, i):
        """SIGKILL node i; the others keep quorum (2 of 3) and go on."""
        self.nodes[i].kill()

    def restart(self, i, timeout=START_TIMEOUT, wait=True):
        """Start node i again after kill() or stop(): it recovers its position and rejoins,
        by IST when the donors' cache still holds what it missed, else by a full SST."""
        node = self.nodes[i]
        t0 = time.monotonic()
        position = node.recovered_position() if node.grastate_seqno() == -1 else None
        node.spawn([f"--wsrep-start-position={position}"] if position else [])
        if wait:
            self.wait_synced(timeout=timeout)
            self.timings[f"restart node{i + 1}"] = time.monotonic() - t0
        return node

    def stop(self):
        """Every node, by its PID: SIGTERM together, then wait (SIGKILL after a grace period)."""
        for node in self.nodes:
            if node.alive():
                node.proc.terminate()
        for node in self.nodes:
            node.stop(grace=20)
            shutil.rmtree(node.sock_dir, ignore_errors=True)

    def create_database(self, name):
        """CREATE DATABASE on node 1 (replicated); returns one URL per node."""
        self.nodes[0].create_database(name)
        return [n.url + name for n in self.nodes]

    def query_all(self, sql, *args, database=None):
        """The same query on every running node, after that node has applied everything the
        cluster committed before the query (wsrep_sync_wait): [rows per node]."""
        out = []
        for node in self.nodes:
            conn = connect(node.port, database=database, init_command="SET SESSION wsrep_sync_wait = 1")
            try:
                with conn.cursor(pymysql.cursors.DictCursor) as cur:
                    cur.execute(sql, args or None)
                    out.append(cur.fetchall())
            finally:
                conn.close()
        return out


def multi_host_url(urls, database=None, go_dsn=False):
    """One DATABASE_URL naming several servers for failover (issue 11):
    mysql://root@h1:p1,h2:p2/db, or the Go DSN root@tcp(h1:p1,h2:p2)/db."""
    parts = [urlsplit(u) for u in urls]
    hosts = ",".join(f"{p.hostname}:{p.port}" for p in parts)
    database = database if database is not None else parts[0].path.lstrip("/")
    user = parts[0].username or "root"
    if go_dsn:
        return f"{user}@tcp({hosts})/{database}"
    return urlunsplit(("mysql", f"{user}@{hosts}", "/" + database, "", ""))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="galera-") as tmp:
        t0 = time.monotonic()
        cluster = GaleraCluster(tmp)
        print(f"install-db: {time.monotonic() - t0:.1f}s")
        try:
            cluster.start()
            print(f"seed: {cluster.timings['seed']:.1f}s; bootstrap node1: {cluster.timings['bootstrap']:.1f}s; "
                  f"whole cluster Synced (size 3): "
                  f"{cluster.timings['start']:.1f}s; total with install-db {time.monotonic() - t0:.1f}s")
            urls = cluster.create_database("smoke")
            cluster[0].query("CREATE TABLE t (id int PRIMARY KEY, v text)", database="smoke")
            cluster[1].query("INSERT INTO t VALUES (1, 'from node2')", database="smoke")
            print(urls, [r[0]["v"] for r in cluster.query_all("SELECT v FROM t", database="smoke")])
            t1 = time.monotonic()
            cluster.kill(2)
            cluster.wait_synced(nodes=[0, 1], size=2, timeout=60)
            print(f"node3 SIGKILLed; survivors Synced at size 2 after {time.monotonic() - t1:.1f}s")
            cluster[0].query("INSERT INTO t VALUES (2, 'while node3 was down')", database="smoke")
            cluster.restart(2)
            print(f"node3 rejoined (Synced, size 3) in {cluster.timings['restart node3']:.1f}s; "
                  f"rows on each node: {[len(r) for r in cluster.query_all('SELECT * FROM t', database='smoke')]}")
        finally:
            t2 = time.monotonic()
            cluster.stop()
            print(f"stopped in {time.monotonic() - t2:.1f}s")
