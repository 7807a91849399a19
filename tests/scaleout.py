#!/usr/bin/env python3
"""Scale-out and fault measurements of gotrue.py, and the machinery tests/test_scaleout.py uses.

    python tests/scaleout.py [--seconds 20] [--workers 6] [--only single,trio,galera]

runs the same bounded load (signup, login, refresh, metadata update; plus contention: one shared
user's metadata updated by every worker with its own key, and signups racing for a small pool of
shared addresses) in three set-ups, with one fault injected mid-load in each:

    1 process  / 1 MariaDB        the MariaDB is SIGKILLed and restarted
    3 processes / 1 MariaDB       the MariaDB is SIGKILLed and restarted
    3 processes / 3 Galera nodes  node 3 is SIGKILLed and restarted (it rejoins)

and prints a table: requests sent (and per second, fault included), answers by status,
conflicts the servers retried (lines with "retrying" in their logs), 5xx answers, rows lost
(acknowledged with a 2xx but absent afterwards, on any node), stale reads (of 40 signups each
followed at once by a login on the next process, before the fault: logins that did not see the
user), and recovery time (from the database being back to the affected gotrue answering a
database-backed request with a 2xx again, and from the fault itself). Needs mariadbd and, for the
Galera row, Debian's galera-4 and rsync; PATH must include /usr/sbin. Takes about 2 minutes with
the defaults (the Galera cluster's start included).

Importable: Load (the load generator and its record), Database (checks straight against the
database, on every Galera node), start_gotrues (several gotrue.py processes sharing one JWT
secret), probe and wait_for_2xx.
"""
import argparse
import collections
import json
import os
import re
import secrets
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid

import pymysql
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])

from conftest import Server, base_env, migrate, wait_until  # noqa: E402
import galera  # noqa: E402

REQUEST_TIMEOUT = 30  # seconds: the bound on any one answer (also while a database is gone)
PASSWORD = "load-pw-1"
OPERATOR_TOKEN = "scaleout-operator-" + secrets.token_hex(8)
# Settings of every gotrue.py process started here: signups are confirmed at once (so every
# acknowledged user can log in); failed logins are counted per account (20 before a back-off) and
# per client, but the client's threshold is out of reach (all load comes from 127.0.0.1, so a
# reachable one would make the runs interfere); no SMTP server (mail is not sent; the tokens and
# mail windows are still made and kept).
SETTINGS = {"GOTRUE_MAILER_AUTOCONFIRM": "true", "GOTRUE_SECURITY_LOGIN_MAX_FAILURES": "20",
            "GOTRUE_SECURITY_CLIENT_MAX_FAILURES": "1000000", "GOTRUE_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "GOTRUE_API_THREADS": "16", "LOG_LEVEL": "info"}


# --- gotrue processes ------------------------------------------------------------------------

def start_gotrues(base_dir, db_envs, migrate_first=True, **settings):
    """One gotrue.py per entry of db_envs (GOTRUE_DB_DRIVER/DATABASE_URL), all with one JWT
    secret, each in its own work dir (its log: server.log there). The schema is migrated once,
    through the first entry. Returns the started Servers."""
    servers = []
    shared = None
    try:
        for i, db_env in enumerate(db_envs):
            workdir = os.path.join(base_dir, f"gotrue{i + 1}-{uuid.uuid4().hex[:6]}")
            os.makedirs(workdir)
            env = base_env(workdir, db_env, None, **{**SETTINGS, **settings})
            env["PORT"] = str(galera.free_ports(1)[0])  # outside the ephemeral range: see free_ports
            if shared is None:
                shared = env["GOTRUE_JWT_SECRET"]
                if migrate_first:
                    migrate(env, workdir)
            env["GOTRUE_JWT_SECRET"] = shared
            servers.append(Server(workdir, env).start())
    except BaseException:
        stop_gotrues(servers)
        raise
    return servers


def stop_gotrues(servers):
    for server in servers:
        try:
            server.stop()
        except Exception:
            if server.proc and server.proc.poll() is None:
                server.proc.kill()


def kill_gotrue(server):
    """SIGKILL: no clean shutdown, open transactions die with their connections."""
    server.proc.kill()
    server.proc.wait()


def mysql_env(url):
    return {"GOTRUE_DB_DRIVER": "mysql", "DATABASE_URL": url}


def sqlite_env(path):
    return {"GOTRUE_DB_DRIVER": "sqlite", "DATABASE_URL": path}


def causes(answers, servers, limit=5):
    """For 5xx answers with an error_id: the last line of the traceback the server logged for it
    (the exception), so that a failing assertion says why."""
    out = []
    logs = {}
    for a in answers:
        error_id = a.json().get("error_id") if isinstance(a.status, int) and a.status >= 500 else None
        if not error_id or a.server < 0:
            continue
        log = logs.setdefault(a.server, servers[a.server].log())
        at = log.find(error_id)
        if at < 0:
            out.append(f"{a.op} on gotrue{a.server + 1}: {a.status} (nothing logged for {error_id})")
            continue
        chunk = log[at:at + 20000].split("\ntime=")[0].split("\n")
        lines = [line for line in chunk if line.strip()]
        out.append(f"{a.op} on gotrue{a.server + 1}: {a.status}: {lines[-1].strip()[:300]}")
        if len(out) >= limit:
            break
    return out


def retries_logged(servers):
    """How many times the servers logged that they retried a conflicting transaction."""
    return sum(len(re.findall(r"retrying", s.log())) for s in servers)


# --- HTTP --------------------------------------------------------------------------------------

class Answer:
    """One request and its outcome: status is the HTTP status, or a string for no answer
    ('refused', 'timeout', 'error: ...')."""
    __slots__ = ("server", "op", "status", "body", "started", "ended")

    def __init__(self, server, op, status, body, started, ended):
        self.server, self.op, self.status, self.body, self.started, self.ended = \
            server, op, status, body, started, ended

    @property
    def ok(self):
        return isinstance(self.status, int) and 200 <= self.status < 300

    @property
    def server_error(self):
        return isinstance(self.status, int) and self.status >= 500

    def json(self):
        return self.body if isinstance(self.body, dict) else {}

    def __repr__(self):
        return f"<{self.op} on gotrue{self.server + 1}: {self.status} {str(self.body)[:200]}>"


def call(servers, i, op, method, path, token=None, **kw):
    """One request on a fresh connection (a kept-alive connection to a restarted process would
    fail on the client's side and be miscounted as the server's)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    try:
        r = requests.request(method, servers[i].url + path, headers=headers, timeout=REQUEST_TIMEOUT, **kw)
    except requests.Timeout:
        return Answer(i, op, "timeout", None, started, time.monotonic())
    except requests.ConnectionError as e:
        refused = "refused" in str(e).lower()
        return Answer(i, op, "refused" if refused else f"error: {type(e).__name__}", str(e)[:200], started,
                      time.monotonic())
    try:
        body = r.json()
    except ValueError:
        body = r.text[:300]
    return Answer(i, op, r.status_code, body, started, time.monotonic())


def signup(servers, i, email, password=PASSWORD, data=None):
    return call(servers, i, "signup", "POST", "/signup", json={"email": email, "password": password,
                                                                 "data": data or {}})


def login(servers, i, email, password=PASSWORD):
    return call(servers, i, "login", "POST", "/token",
                data={"grant_type": "password", "username": email, "password": password})


def refresh(servers, i, token):
    return call(servers, i, "refresh", "POST", "/token", data={"grant_type": "refresh_token", "refresh_token": token})


def probe(servers, i, access_token):
    """A request that needs the database (GET /user reads the user's row)."""
    return call(servers, i, "probe", "GET", "/user", token=access_token)


def wait_for_2xx(servers, i, access_token, timeout=60, answers=None):
    """Poll server i with database-backed requests until one gets a 2xx; returns the seconds it
    took. Every answer is appended to `answers` when given."""
    t0 = time.monotonic()

    def check():
        a = probe(servers, i, access_token)
        if answers is not None:
            answers.append(a)
        return a.ok
    wait_until(check, f"gotrue{i + 1} to answer a database-backed request with 2xx", timeout)
    return time.monotonic() - t0


def is_503_json(answer):
    body = answer.json()
    return answer.status == 503 and body.get("code") == 503 and isinstance(body.get("msg"), str)


# --- the database, straight ----------------------------------------------------------------------

class Database:
    """Read-only checks against gotrue's tables, with `?` placeholders. For a Galera cluster,
    `each()` runs the query on every node after that node has applied everything committed
    before it (wsrep_sync_wait), and `query()` on node 1 the same way."""

    def __init__(self, kind, target, galera_cluster=None, database=None):
        self.kind, self.target, self.cluster, self.database = kind, target, galera_cluster, database

    @classmethod
    def mysql(cls, url):
        u = requests.utils.urlparse(url)
        return cls("mysql", [(u.hostname, u.port)], database=u.path.lstrip("/"))

    @classmethod
    def galera(cls, cluster, database):
        return cls("mysql", [("127.0.0.1", n.port) for n in cluster.nodes], cluster, database)

    @classmethod
    def sqlite(cls, path):
        return cls("sqlite", path)

    def _mysql(self, host, port, sql, args):
        conn = pymysql.connect(host=host, port=port, user="root", database=self.database, autocommit=True,
                               connect_timeout=5, read_timeout=60,
                               init_command="SET SESSION wsrep_sync_wait = 1" if self.cluster else None)
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute(sql.replace("%", "%%").replace("?", "%s"), args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def query(self, sql, *args):
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.target, timeout=60)
            conn.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in conn.execute(sql, args)]
            finally:
                conn.close()
        host, port = self.target[0]
        return self._mysql(host, port, sql, args)

    def each(self, sql, *args, nodes=None):
        """[rows of each node] (one entry for a single database)."""
        if self.kind == "sqlite" or not self.cluster:
            return [self.query(sql, *args)]
        picked = range(len(self.target)) if nodes is None else nodes
        return [self._mysql(*self.target[i], sql, args) for i in picked]

    def execute(self, sql, *args):
        """A write (tests use it to make time pass); returns the rows changed."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.target, timeout=60, isolation_level=None)
            try:
                return conn.execute(sql, args).rowcount
            finally:
                conn.close()
        host, port = self.target[0]
        conn = pymysql.connect(host=host, port=port, user="root", database=self.database, autocommit=True)
        try:
            with conn.cursor() as cur:
                return cur.execute(sql.replace("%", "%%").replace("?", "%s"), args)
        finally:
            conn.close()

    def sync(self):
        """Barrier: returns once every node has applied what was committed before the call."""
        self.each("SELECT 1")

    def count(self, sql, *args):
        return self.query(sql, *args)[0]["n"]


# --- the load --------------------------------------------------------------------------------------

class Load:
    """`workers` threads, each running at most `iterations` flows and stopping at `seconds` or at
    stop(). A flow runs on one process (round robin over flows: the same client talks to the
    same process, as behind a sticky load balancer), so that what it reads back it wrote on that
    process's node: signup, password login, refresh, PUT /user. Options add contention across
    processes: `hot` (email, access token) of a user whose metadata every flow merges its own key
    into; `pool` addresses that every flow also tries to sign up; `deletes` makes every 4th flow
    end by deleting its user (admin API), so that deletions race with kills.

    Everything acknowledged with a 2xx is recorded: users (email -> id), refresh tokens (token ->
    user id), hot keys, deleted users. answers holds every Answer."""

    def __init__(self, servers, workers=6, iterations=40, seconds=60, tag="load", hot=None, pool=(), deletes=False,
                 skip=None):
        self.servers, self.workers, self.iterations, self.seconds = servers, workers, iterations, seconds
        self.tag, self.hot, self.pool, self.deletes = tag, hot, list(pool), deletes
        self.skip = skip or (lambda i: False)  # server indexes not to start flows on (known down)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.answers = []
        self.users, self.tokens, self.hot_keys, self.deleted, self.pool_ids = {}, {}, set(), set(), {}
        self.flows_done = collections.Counter()  # per server: flows that got all their 2xx
        self.threads = []
        self.flow_counter = 0

    # recording
    def note(self, answer):
        with self.lock:
            self.answers.append(answer)
        return answer

    def start(self):
        self.deadline = time.monotonic() + self.seconds
        self.threads = [threading.Thread(target=self.run, args=(w,), daemon=True, name=f"load-{w}")
                        for w in range(self.workers)]
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(REQUEST_TIMEOUT * 6)
        return self

    def join(self):
        for t in self.threads:
            t.join(self.seconds + REQUEST_TIMEOUT * 6)
        return self

    def running(self):
        return any(t.is_alive() for t in self.threads)

    def next_server(self):
        with self.lock:
            for _ in range(len(self.servers)):
                self.flow_counter += 1
                i = self.flow_counter % len(self.servers)
                if not self.skip(i):
                    return i
            return self.flow_counter % len(self.servers)

    def run(self, worker):
        for it in range(self.iterations):
            if self.stopping.is_set() or time.monotonic() > self.deadline:
                return
            try:
                self.flow(worker, it, self.next_server())
            except Exception as e:  # a bug in the harness must not pass for a quiet server
                self.note(Answer(-1, "harness", f"error: {e!r}", None, time.monotonic(), time.monotonic()))

    def flow(self, worker, it, i):
        s = self.servers
        email = f"{self.tag}-{worker}-{it}-{uuid.uuid4().hex[:6]}@example.com"
        a = self.note(signup(s, i, email, data={"worker": worker}))
        if not a.ok:
            return
        with self.lock:
            self.users[email] = a.json().get("id")
        a = self.note(login(s, i, email))
        if not a.ok:
            return
        with self.lock:
            self.tokens[a.json()["refresh_token"]] = self.users[email]
        a = self.note(refresh(s, i, a.json()["refresh_token"]))
        if not a.ok:
            return
        with self.lock:
            self.tokens[a.json()["refresh_token"]] = self.users[email]
        access = a.json()["access_token"]
        a = self.note(call(s, i, "update", "PUT", "/user", token=access, json={"data": {"it": it}}))
        if not a.ok:
            return
        if self.hot:
            key = f"w{worker}i{it}"
            a = self.note(call(s, i, "hot-update", "PUT", "/user", token=self.hot[1], json={"data": {key: True}}))
            if a.ok:
                with self.lock:
                    self.hot_keys.add(key)
        if self.pool:
            address = self.pool[(worker + it) % len(self.pool)]
            a = self.note(signup(s, i, address))
            if a.ok:
                with self.lock:
                    self.pool_ids.setdefault(address, set()).add(a.json().get("id"))
        if self.deletes and it % 4 == 3:
            a = self.note(call(s, i, "delete", "DELETE", f"/admin/users/{self.users[email]}", token=OPERATOR_TOKEN))
            if a.ok:
                with self.lock:
                    self.deleted.add(email)
        with self.lock:
            self.flows_done[i] += 1

    # waiting (poll with deadlines, no sleeps)
    def wait_flows(self, n, servers=None, timeout=60):
        """Until n more flows completed (on the given server indexes, default any)."""
        def done():
            with self.lock:
                return sum(v for k, v in self.flows_done.items() if servers is None or k in servers)
        start = done()
        wait_until(lambda: done() >= start + n or not self.running(),
                   f"{n} more completed flows on {servers or 'any process'}", timeout)
        assert done() >= start + n, f"the load ended before {n} more flows completed on {servers or 'any process'}"

    # reading the record
    def statuses(self, server=None):
        return collections.Counter(a.status for a in self.answers if server is None or a.server == server)

    def failures(self, server=None, allowed=()):
        """Answers that are neither 2xx nor an expected 4xx, nor in `allowed` (statuses)."""
        expected_4xx = {("signup", 400), ("signup", 422)} if self.pool else set()
        return [a for a in self.answers if (server is None or a.server == server) and not a.ok
                and (a.op, a.status) not in expected_4xx and a.status not in allowed]

    def lost(self, db, nodes=None):
        """What was acknowledged but is not in the database: {node index: [problems]}."""
        out = {}
        sqls = ("SELECT id, email, raw_user_meta_data FROM users", "SELECT token FROM refresh_tokens")
        users_each = db.each(sqls[0], nodes=nodes)
        tokens_each = db.each(sqls[1], nodes=nodes)
        with self.lock:
            users, tokens, deleted = dict(self.users), dict(self.tokens), set(self.deleted)
            hot_keys = set(self.hot_keys)
        deleted_ids = {users[e] for e in deleted}
        for n, (rows, token_rows) in enumerate(zip(users_each, tokens_each)):
            by_email = {r["email"]: r for r in rows}
            present = {r["token"] for r in token_rows}
            problems = [f"user {e} missing" for e in users if e not in deleted and e not in by_email]
            problems += [f"user {e} still present after an acknowledged delete" for e in deleted if e in by_email]
            problems += [f"refresh token {t[:8]}... of user {u} missing" for t, u in tokens.items()
                         if u not in deleted_ids and t not in present]
            if self.hot:
                row = by_email.get(self.hot[0].lower())
                meta = json.loads(row["raw_user_meta_data"] or "{}") if row else {}
                problems += [f"hot user's key {k} missing" for k in sorted(hot_keys) if k not in meta]
            for address in self.pool:
                n_rows = sum(1 for r in rows if r["email"] == address.lower())
                if n_rows != 1 and (address in self.pool_ids or n_rows > 1):
                    problems.append(f"{n_rows} users for pool address {address}")
            out[n] = problems
        return out


def hot_user(servers, tag):
    """A confirmed user on server 0 (autoconfirm) and its access token."""
    email = f"{tag}-hot-{uuid.uuid4().hex[:6]}@example.com"
    a = signup(servers, 0, email)
    assert a.ok, a
    a = login(servers, 0, email)
    assert a.ok, a
    return email, a.json()["access_token"]


# --- the script ------------------------------------------------------------------------------------

def read_after_write(servers, n=40):
    """Signups on one process, each followed at once by a login on the next one: how many logins
    did not see the user (a Galera node that has not applied the other node's write yet answers
    "no user found" unless reads wait for it: wsrep_sync_wait)."""
    misses = 0
    for k in range(n):
        email = f"raw-{k}-{uuid.uuid4().hex[:6]}@example.com"
        if signup(servers, k % len(servers), email).ok:
            a = login(servers, (k + 1) % len(servers), email)
            misses += a.status == 400
    return misses


def run_scenario(name, servers, db, fault, args):
    """Load with contention; `fault(load)` runs mid-load in this thread and returns
    (seconds from the database being back to 2xx, seconds from the fault to 2xx)."""
    email, access = hot_user(servers, "bench")
    db.sync()
    pool = [f"bench-pool-{k}-{uuid.uuid4().hex[:6]}@example.com" for k in range(5)]
    load = Load(servers, workers=args.workers, iterations=10 ** 6, seconds=args.seconds, tag="bench",
                hot=(email, access), pool=pool).start()
    recovery = (None, None)
    t0 = time.monotonic()
    try:
        load.wait_flows(max(3, args.workers), timeout=args.seconds)
        stale = read_after_write(servers)
        recovery = fault(load, access)
        load.join()
    finally:
        load.stop()
    elapsed = time.monotonic() - t0
    db.sync()
    lost = load.lost(db)
    statuses = load.statuses()
    return {"scenario": name, "requests": sum(statuses.values()), "rate": sum(statuses.values()) / elapsed,
            "stale": stale,
            "statuses": " ".join(f"{k}:{v}" for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))),
            "retried": retries_logged(servers),
            "5xx": sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500),
            "no answer": sum(v for k, v in statuses.items() if not isinstance(k, int)),
            "lost": sum(len(v) for v in lost.values()), "lost_detail": lost,
            "recovery": recovery}


def restart_single(db_server):
    def fault(load, access):
        servers = load.servers
        t_fault = time.monotonic()
        db_server.kill()
        wait_until(lambda: any(a.server_error or not isinstance(a.status, int) for a in load.answers
                               if a.started > t_fault) or not load.running(), "the load to meet the outage", 30)
        db_server.start()
        t_back = time.monotonic()
        for i in range(len(servers)):
            wait_for_2xx(servers, i, access, timeout=60)
        return time.monotonic() - t_back, time.monotonic() - t_fault
    return fault


def kill_galera_node(cluster, index):
    def fault(load, access):
        servers = load.servers
        t_fault = time.monotonic()
        cluster.kill(index)
        load.wait_flows(len(servers), servers=[i for i in range(len(servers)) if i != index], timeout=60)
        cluster.restart(index)
        t_back = time.monotonic()
        wait_for_2xx(servers, index, access, timeout=60)
        return time.monotonic() - t_back, time.monotonic() - t_fault
    return fault


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="load duration of each scenario (default 20)")
    parser.add_argument("--workers", type=int, default=6, help="client threads (default 6)")
    parser.add_argument("--only", default="single,trio,galera", help="scenarios: single, trio, galera")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) and print its path")
    args = parser.parse_args(argv)
    wanted = args.only.split(",")
    base = tempfile.mkdtemp(prefix="gotrue-scaleout-")
    rows, cleanups = [], []
    try:
        if {"single", "trio"} & set(wanted):
            single = galera.MariaDB(os.path.join(base, "mariadb")).start()
            cleanups.append(single.cleanup)
            for name, n in (("1 process / 1 MariaDB", 1), ("3 processes / 1 MariaDB", 3)):
                if ("single" if n == 1 else "trio") not in wanted:
                    continue
                url = single.create_database("bench_" + uuid.uuid4().hex[:8])
                servers = start_gotrues(base, [mysql_env(url)] * n)
                cleanups.append(lambda s=servers: stop_gotrues(s))
                rows.append(run_scenario(name, servers, Database.mysql(url), restart_single(single), args))
                stop_gotrues(servers)
                print(format_row(rows[-1]), flush=True)
        if "galera" in wanted:
            t0 = time.monotonic()
            cluster = galera.GaleraCluster(os.path.join(base, "galera")).start()
            cleanups.append(cluster.stop)
            print(f"(Galera cluster of 3 started in {time.monotonic() - t0:.1f}s)", flush=True)
            name = "bench_" + uuid.uuid4().hex[:8]
            urls = cluster.create_database(name)
            servers = start_gotrues(base, [mysql_env(u) for u in urls])
            cleanups.append(lambda s=servers: stop_gotrues(s))
            rows.append(run_scenario("3 processes / 3 Galera nodes", servers, Database.galera(cluster, name),
                                     kill_galera_node(cluster, 2), args))
            print(format_row(rows[-1]), flush=True)
    finally:
        for cleanup in reversed(cleanups):
            cleanup()
        if args.keep:
            print(f"work dir kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(rows))
    for row in rows:
        for node, problems in row["lost_detail"].items():
            for p in problems[:10]:
                print(f"  {row['scenario']}: node {node + 1}: {p}")
    return 0


def format_row(row):
    back, fault = row["recovery"]
    rec = "-" if back is None else f"{back:.1f}s after DB back ({fault:.1f}s after fault)"
    return (f"{row['scenario']}: {row['requests']} requests ({row['rate']:.0f}/s) [{row['statuses']}], "
            f"retried {row['retried']}, 5xx {row['5xx']}, no answer {row['no answer']}, lost {row['lost']}, "
            f"stale reads {row['stale']}/40, recovery {rec}")


def table(rows):
    head = ["set-up", "requests", "req/s", "answers by status", "retried", "5xx", "lost", "stale reads",
            "recovery (DB back / fault)"]
    body = []
    for r in rows:
        back, fault = r["recovery"]
        body.append([r["scenario"], str(r["requests"]), f"{r['rate']:.0f}", r["statuses"], str(r["retried"]),
                     str(r["5xx"]), str(r["lost"]), f"{r['stale']}/40",
                     "-" if back is None else f"{back:.1f}s / {fault:.1f}s"])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


if __name__ == "__main__":
    sys.exit(main())
