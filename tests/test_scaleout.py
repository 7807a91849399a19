"""Scale-out and faults (issue 11): several gotrue.py processes on one MariaDB and on a 3-node
Galera cluster, nodes and servers killed mid-load, SQLite under many writers.

These tests start their own processes and clusters and take a few minutes, so they carry the
marker `scaleout` and run only when selected:

    python -m pytest -q -m scaleout tests/test_scaleout.py     # or GOTRUE_TEST_SCALEOUT=1

(The marker is not registered anywhere: there is no pytest.ini and conftest.py is not ours to
change. It is created below with PytestUnknownMarkWarning silenced, and `-m scaleout` selects
by name whether or not a marker is registered.) Without MariaDB or Galera the tests that need
them are skipped, or fail when GOTRUE_TEST_REQUIRE_MYSQL or GOTRUE_TEST_REQUIRE_GALERA is set
(as .ci/run does).

Loads are bounded in count and time; waits poll with deadlines; nothing asserts on timing
except that every request gets an answer within REQUEST_TIMEOUT.
"""
import json
import os
import re
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import unique_email, wait_until
import galera
from mariadb_server import MariaDBUnavailable, create_database
from scaleout import (OPERATOR_TOKEN, REQUEST_TIMEOUT, Database, Load, call, causes, is_503_json, kill_gotrue, login,
                      mysql_env, refresh, signup, sqlite_env, start_gotrues, stop_gotrues, wait_for_2xx)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    pytestmark = pytest.mark.scaleout

PER_PROCESS = 5  # concurrent requests per process in the race tests (3 processes: 15 at once)


@pytest.fixture(scope="module", autouse=True)
def selected(request):
    markexpr = request.config.getoption("markexpr") or ""
    if os.environ.get("GOTRUE_TEST_SCALEOUT") != "1" and not re.search(r"(?<!not )\bscaleout\b", markexpr):
        pytest.skip("scale-out tests run with -m scaleout (or GOTRUE_TEST_SCALEOUT=1): they take minutes")


def unavailable(what, error):
    if os.environ.get("GOTRUE_TEST_REQUIRE_GALERA") or os.environ.get("GOTRUE_TEST_REQUIRE_MYSQL"):
        pytest.fail(f"{what} is required but unavailable: {error}")
    pytest.skip(f"{what} unavailable: {error}")


# --- databases and processes -------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 3-node Galera cluster on loopback, for the whole module."""
    try:
        c = galera.GaleraCluster(str(tmp_path_factory.mktemp("galera"))).start()
    except MariaDBUnavailable as e:
        unavailable("a Galera cluster (Debian packages galera-4, rsync, mariadb-server)", e)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def restartable_db(tmp_path_factory):
    """A plain mariadbd of this module's own, which tests may kill and start again."""
    try:
        db = galera.MariaDB(str(tmp_path_factory.mktemp("restartable"))).start()
    except MariaDBUnavailable as e:
        unavailable("MariaDB", e)
    yield db
    db.cleanup()


class Trio:
    """Three gotrue.py processes on one database (one MariaDB, or one per Galera node)."""

    def __init__(self, servers, db):
        self.servers, self.db = servers, db

    def admin_token(self):
        """An admin user's access token (made on process 1, visible everywhere)."""
        email = unique_email("admin")
        assert signup(self.servers, 0, email).ok
        assert self.db.execute("UPDATE users SET role = 'admin' WHERE email = ?", email) == 1
        a = login(self.servers, 0, email)
        assert a.ok, a
        self.db.sync()
        return a.json()["access_token"]

    def user(self, tag="race"):
        """(email, login response) of a confirmed user, visible on every node."""
        email = unique_email(tag)
        a = signup(self.servers, 0, email)
        assert a.ok, a
        a = login(self.servers, 0, email)
        assert a.ok, a
        self.db.sync()
        return email, a.json()


@pytest.fixture(scope="module", params=["mariadb", "galera"], ids=["1-mariadb-3-processes", "3-galera-nodes"])
def trio(request, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("trio"))
    name = "gt_" + uuid.uuid4().hex[:12]
    if request.param == "mariadb":
        url = create_database(request.getfixturevalue("mariadb_root"), name)
        urls, db = [url] * 3, Database.mysql(url)
    else:
        c = request.getfixturevalue("cluster")
        c.wait_synced()
        urls, db = c.create_database(name), Database.galera(c, name)
    servers = start_gotrues(base, [mysql_env(u) for u in urls])
    yield Trio(servers, db)
    stop_gotrues(servers)


def everywhere(servers, fn, per_process=PER_PROCESS):
    """Run fn(server_index, k) per_process times on each process, all at once (a barrier lines
    the threads up before the requests go out); returns the Answers."""
    jobs = [(i, k) for i in range(len(servers)) for k in range(per_process)]
    barrier = threading.Barrier(len(jobs))

    def run(job):
        barrier.wait()
        return fn(*job)
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(run, jobs))


class Findings:
    """The fault tests check several properties; each failing one is reported, not only the first."""

    def __init__(self):
        self.items = []

    def check(self, ok, message):
        if not ok:
            self.items.append(message() if callable(message) else message)

    def done(self):
        assert not self.items, "\n".join(f"({n}) {m}" for n, m in enumerate(self.items, 1))


def no_server_errors(answers, servers):
    bad = [a for a in answers if not isinstance(a.status, int) or a.status >= 500]
    assert not bad, (f"{len(bad)} of {len(answers)} requests failed on the server side: {bad[:3]}; "
                     f"logged causes: {causes(bad, servers)}")


# --- (1) and (2): races across processes, on one MariaDB and on Galera ----------------------------

def test_overlapping_signups_make_one_user_per_email(trio):
    """15 signups of each of 4 addresses, from 3 processes at once: one user per address; with
    autoconfirm exactly one signup per address succeeds, the others are told it is taken."""
    emails = [unique_email("overlap") for _ in range(4)]
    answers = everywhere(trio.servers,
                         lambda i, k: signup(trio.servers, i, emails[(i * PER_PROCESS + k) % len(emails)]))
    no_server_errors(answers, trio.servers)
    for email in emails:
        mine = [a for a in answers if a.ok and a.json().get("email") == email]
        assert len(mine) == 1, f"{email}: {len(mine)} signups succeeded: {mine}"
    taken = [a for a in answers if not a.ok]
    assert all(a.status in (400, 422) and "already" in a.json().get("msg", "") for a in taken), taken
    for rows in trio.db.each("SELECT email, COUNT(*) AS n FROM users WHERE email IN (?, ?, ?, ?) GROUP BY email",
                             *emails):
        assert {r["email"]: r["n"] for r in rows} == {e: 1 for e in emails}


def test_user_count_stays_exact_under_concurrent_signups(trio):
    """The per-audience counter behind X-Total-Count is bumped in every signup's transaction:
    15 signups at once on 3 processes leave it equal to the number of rows."""
    admin = trio.admin_token()
    first = call(trio.servers, 0, "list", "GET", "/admin/users?per_page=1", token=admin)
    assert first.ok, first  # the counter row exists from here on
    trio.db.sync()
    answers = everywhere(trio.servers, lambda i, k: signup(trio.servers, i, unique_email("count")))
    no_server_errors(answers, trio.servers)
    assert all(a.ok for a in answers), [a for a in answers if not a.ok]
    for counted, rows in zip(trio.db.each("SELECT n FROM user_counts WHERE aud = ''"),
                             trio.db.each("SELECT COUNT(*) AS n FROM users WHERE aud = ''")):
        assert counted[0]["n"] == rows[0]["n"]
    listed = requests.get(trio.servers[1].url + "/admin/users?per_page=1", timeout=REQUEST_TIMEOUT,
                          headers={"Authorization": f"Bearer {admin}"})
    assert listed.status_code == 200, listed.text
    assert int(listed.headers["X-Total-Count"]) == trio.db.count("SELECT COUNT(*) AS n FROM users WHERE aud = ''")


def test_one_refresh_token_presented_everywhere_succeeds_once(trio):
    _, tokens = trio.user()
    token = tokens["refresh_token"]
    answers = everywhere(trio.servers, lambda i, k: refresh(trio.servers, i, token))
    no_server_errors(answers, trio.servers)
    assert sorted(a.status for a in answers) == [200] + [400] * (len(answers) - 1), answers
    assert all(a.json().get("error") == "invalid_grant" for a in answers if a.status == 400)
    for rows in trio.db.each("SELECT COUNT(*) AS n FROM refresh_tokens WHERE parent = ?", token):
        assert rows[0]["n"] == 1


def test_metadata_merges_across_processes_lose_no_key(trio):
    email, tokens = trio.user()
    access = tokens["access_token"]
    answers = everywhere(trio.servers, lambda i, k: call(trio.servers, i, "update", "PUT", "/user", token=access,
                                                         json={"data": {f"p{i}k{k}": True}}))
    no_server_errors(answers, trio.servers)
    assert all(a.status == 200 for a in answers), [a for a in answers if a.status != 200]
    wanted = {f"p{i}k{k}" for i in range(3) for k in range(PER_PROCESS)}
    for rows in trio.db.each("SELECT raw_user_meta_data AS m FROM users WHERE email = ?", email):
        assert wanted <= set(json.loads(rows[0]["m"])), sorted(wanted - set(json.loads(rows[0]["m"])))
    seen = call(trio.servers, 2, "get", "GET", "/user", token=access)
    assert wanted <= set(seen.json()["user_metadata"])


def test_admin_edits_across_processes_lose_no_update(trio):
    admin = trio.admin_token()
    email, tokens = trio.user("target")
    user_id = call(trio.servers, 0, "get", "GET", "/user", token=tokens["access_token"]).json()["id"]
    answers = everywhere(trio.servers, lambda i, k: call(trio.servers, i, "admin-edit", "PUT", f"/admin/users/{user_id}",
                                                         token=admin, json={"user_metadata": {f"a{i}k{k}": k}}))
    no_server_errors(answers, trio.servers)
    assert all(a.status == 200 for a in answers), [a for a in answers if a.status != 200]
    wanted = {f"a{i}k{k}" for i in range(3) for k in range(PER_PROCESS)}
    for rows in trio.db.each("SELECT raw_user_meta_data AS m FROM users WHERE id = ?", user_id):
        assert wanted <= set(json.loads(rows[0]["m"])), sorted(wanted - set(json.loads(rows[0]["m"])))


def test_failed_logins_are_counted_once_each_and_block_everywhere(trio):
    """The back-off lives in the database: 15 wrong passwords at once on 3 processes are all
    counted, once each, in the account's bucket and the client's (three accounts in turn, as the
    race is over a bucket's first failure); once an account's threshold (20) is reached on one
    process, all of them refuse even the right password with 429."""
    for _ in range(3):
        email, _ = trio.user("backoff")
        trio.db.sync()
        before = {r["bucket"] for r in trio.db.query("SELECT bucket FROM rate_limits")}
        answers = everywhere(trio.servers, lambda i, k: login(trio.servers, i, email, "wrong-password"))
        no_server_errors(answers, trio.servers)
        assert all(a.status == 400 for a in answers), answers  # under the threshold: plain failures
        # The rows these failures made: the account's bucket, and the client's (all requests come
        # from 127.0.0.1; its threshold is far away; the successful login before cleared it).
        # Buckets are hashes whose recipe is the server's business, so they are found this way.
        new = [r for r in trio.db.query("SELECT bucket, hits FROM rate_limits") if r["bucket"] not in before]
        assert 1 <= len(new) <= 2, new
        for rows in trio.db.each("SELECT hits FROM rate_limits WHERE bucket IN (%s)" % ",".join("?" * len(new)),
                                 *[r["bucket"] for r in new]):
            assert [r["hits"] for r in rows] == [len(answers)] * len(new), \
                f"{len(answers)} failed logins, counted {[r['hits'] for r in rows]}"
    for n in range(20 - len(answers)):  # up to the account's threshold, one process after another
        a = login(trio.servers, n % 3, email, "wrong-password")
        assert a.status == 400, a
    trio.db.sync()
    blocked = [r for r in trio.db.query("SELECT bucket, blocked_until FROM rate_limits")
               if r["bucket"] not in before and r["blocked_until"] is not None]
    assert len(blocked) == 1, blocked  # the account's, blocked from the 20th failure on
    # That failure blocks for 2^0 s. Push the block an hour ahead instead of racing that second:
    # what is tested is that a block written by one process stops the others.
    assert trio.db.execute("UPDATE rate_limits SET blocked_until = DATE_ADD(blocked_until, INTERVAL 1 HOUR)"
                           " WHERE bucket = ?", blocked[0]["bucket"]) == 1
    trio.db.sync()
    for i in range(3):
        a = login(trio.servers, i, email)
        assert a.status == 429, a


def test_recover_window_is_shared(trio):
    email, _ = trio.user("recover")
    answers = everywhere(trio.servers, lambda i, k: call(trio.servers, i, "recover", "POST", "/recover",
                                                         json={"email": email}))
    no_server_errors(answers, trio.servers)
    assert sorted(a.status for a in answers) == [200] + [429] * (len(answers) - 1), answers
    trio.db.sync()
    for i in range(3):  # and afterwards, on every process
        a = call(trio.servers, i, "recover", "POST", "/recover", json={"email": email})
        assert a.status == 429, a


# --- (3) Galera node loss ---------------------------------------------------------------------------

def test_galera_node_loss(cluster, tmp_path):
    """One gotrue per node under load, and a fourth whose DATABASE_URL names node 3 first, then
    nodes 1 and 2. Node 3 is SIGKILLed mid-load: the gotrue processes on nodes 1 and 2 keep
    answering 2xx; the one on node 3 answers 503 JSON (no 500, no hang) until the node has
    rejoined and then serves again by itself; the fourth fails over to another node before node 3
    is back (503 JSON meanwhile); everything acknowledged is on every node afterwards."""
    cluster.wait_synced()
    name = "gt_" + uuid.uuid4().hex[:12]
    urls = cluster.create_database(name)
    db = Database.galera(cluster, name)
    failover_url = galera.multi_host_url([cluster[2].url, cluster[0].url, cluster[1].url], name)
    servers = start_gotrues(str(tmp_path), [mysql_env(u) for u in urls] + [mysql_env(failover_url)])
    try:
        _, probe_tokens = Trio(servers, db).user("probe")
        access = probe_tokens["access_token"]
        load = Load(servers, workers=8, iterations=200, seconds=120, tag="nodeloss").start()
        try:
            load.wait_flows(8)
            t_kill = time.monotonic()
            cluster.kill(2)
            load.wait_flows(6, servers=[0, 1])  # the survivors go on
            wait_until(lambda: any(a.server == 2 and a.started > t_kill for a in load.answers),
                       "a request to the gotrue of the dead node")
            failover = []
            wait_for_2xx(servers, 3, access, timeout=60, answers=failover)  # node 3 is still down
            t_failed_over = failover[-1].ended
            load.wait_flows(3, servers=[3])
            cluster.restart(2)
            probes = []
            wait_for_2xx(servers, 2, access, timeout=60, answers=probes)
            t_recovered = probes[-1].ended
            load.wait_flows(3, servers=[2])  # serving flows again, without a restart
        finally:
            load.stop()
        f = Findings()
        survivors = [a for a in load.answers if a.server in (0, 1)]
        bad = [a for a in survivors if not a.ok]
        f.check(survivors and not bad, lambda: f"{len(bad)} of {len(survivors)} answers of gotrue1/2 (surviving "
                                               f"nodes) were not 2xx: {bad[:3]}; {causes(bad, servers)}")
        for i, extra, what in ((2, probes, "gotrue3 (node 3 down or rejoining)"),
                               (3, failover, "gotrue4 (failing over from node 3)")):
            failed = [a for a in load.answers + extra if a.server == i and not a.ok]
            unanswered = [a for a in failed if not isinstance(a.status, int)]
            f.check(not unanswered, lambda: f"{what} gave no answer within {REQUEST_TIMEOUT}s: {unanswered[:3]}")
            not_503 = [a for a in failed if isinstance(a.status, int) and not is_503_json(a)]
            f.check(not not_503, lambda: f"{len(not_503)} of {len(failed)} failed answers of {what} were not "
                                         f"503 JSON: {not_503[:3]}; {causes(not_503, servers)}")
        for i, since, what in ((2, t_recovered, "gotrue3 had recovered"),
                               (3, t_failed_over, "gotrue4 had failed over")):
            bad = [a for a in load.answers if a.server == i and a.started > since and not a.ok]
            f.check(not bad, lambda: f"failures after {what}: {bad[:3]}; {causes(bad, servers)}")
        cluster.wait_synced()
        lost = load.lost(db)
        f.check(lost == {0: [], 1: [], 2: []},
                lambda: f"acknowledged but lost: {({n: p[:5] for n, p in lost.items()})}")
        f.done()
    finally:
        stop_gotrues(servers)
        if not cluster[2].alive():
            cluster.restart(2)


def test_galera_several_hosts_in_the_url(cluster, tmp_path):
    """DATABASE_URL may name several servers (issue 11), in both syntaxes; a host that does not
    answer is skipped: here the first one is a port nobody listens on."""
    cluster.wait_synced()
    name = "gt_" + uuid.uuid4().hex[:12]
    urls = cluster.create_database(name)
    nobody = galera.free_ports(1)[0]
    hosts = f"127.0.0.1:{nobody},127.0.0.1:{cluster[0].port},127.0.0.1:{cluster[1].port}"
    servers = start_gotrues(str(tmp_path), [mysql_env(urls[0]), mysql_env(f"mysql://root@{hosts}/{name}"),
                                            mysql_env(f"root@tcp({hosts})/{name}?parseTime=true")])
    try:
        for i in (1, 2):
            email = unique_email("multihost")
            assert signup(servers, i, email).ok
            assert login(servers, i, email).ok
    finally:
        stop_gotrues(servers)


# --- (4) one MariaDB restarted mid-load ---------------------------------------------------------------

def test_mariadb_restart_mid_load(restartable_db, tmp_path):
    """Two gotrue processes on one MariaDB that is SIGKILLed and started again mid-load: while it
    is gone they answer 503 JSON, never 500 and never hang; afterwards they serve again without
    a restart; nothing they acknowledged is lost."""
    db_url = restartable_db.create_database("gt_" + uuid.uuid4().hex[:12])
    db = Database.mysql(db_url)
    servers = start_gotrues(str(tmp_path), [mysql_env(db_url)] * 2)
    try:
        _, probe_tokens = Trio(servers, db).user("probe")
        load = Load(servers, workers=6, iterations=200, seconds=120, tag="dbrestart").start()
        try:
            load.wait_flows(6)
            t_kill = time.monotonic()
            restartable_db.kill()
            wait_until(lambda: sum(1 for a in load.answers if a.started > t_kill) >= 6, "requests during the outage")
            restartable_db.start()
            for i in range(2):
                wait_for_2xx(servers, i, probe_tokens["access_token"], timeout=60)
            t_back = time.monotonic()
            load.wait_flows(6)
        finally:
            load.stop()
        f = Findings()
        unanswered = [a for a in load.answers if not isinstance(a.status, int)]
        f.check(not unanswered, lambda: f"no answer within {REQUEST_TIMEOUT}s: {unanswered[:3]}")
        failed = [a for a in load.answers if not a.ok]
        errors = [a for a in failed if isinstance(a.status, int) and not is_503_json(a)]
        f.check(not errors, lambda: f"{len(errors)} of {len(failed)} failed answers were not 503 JSON: {errors[:3]}; "
                                    f"{causes(errors, servers)}")
        late = [a for a in load.answers if a.started > t_back and not a.ok]
        f.check(not late, lambda: f"failures after both processes had recovered: {late[:3]}; {causes(late, servers)}")
        lost = load.lost(db)
        f.check(lost == {0: []}, lambda: f"acknowledged but lost: {lost[0][:5]}")
        f.done()
    finally:
        stop_gotrues(servers)
        if not restartable_db.alive():
            restartable_db.start()


def test_readiness_follows_the_database(restartable_db, tmp_path):
    """GET /health stays 200 (the process is alive); GET /health?ready=1 answers 503 JSON while
    the database cannot be reached and 200 once it can."""
    db_url = restartable_db.create_database("gt_" + uuid.uuid4().hex[:12])
    servers = start_gotrues(str(tmp_path), [mysql_env(db_url)])
    try:
        url = servers[0].url
        assert requests.get(url + "/health?ready=1", timeout=REQUEST_TIMEOUT).status_code == 200
        restartable_db.kill()
        assert requests.get(url + "/health", timeout=REQUEST_TIMEOUT).status_code == 200
        r = requests.get(url + "/health?ready=1", timeout=REQUEST_TIMEOUT)
        assert r.status_code == 503 and r.json().get("code") == 503, (r.status_code, r.text)
        restartable_db.start()
        wait_until(lambda: requests.get(url + "/health?ready=1", timeout=REQUEST_TIMEOUT).status_code == 200,
                   "readiness once the database is back")
    finally:
        stop_gotrues(servers)
        if not restartable_db.alive():
            restartable_db.start()


# --- (5) gotrue SIGKILLed mid-load -----------------------------------------------------------------

def test_gotrue_killed_mid_load(mariadb_root, tmp_path):
    """Two processes under load with deletions; one is SIGKILLed mid-load and started again: no
    refresh token outlives its user, the user counter equals the rows, every user acknowledged
    (and not deleted) can log in, every acknowledged deletion held."""
    db_url = create_database(mariadb_root, "gt_" + uuid.uuid4().hex[:12])
    db = Database.mysql(db_url)
    servers = start_gotrues(str(tmp_path), [mysql_env(db_url)] * 2)
    try:
        listed = call(servers, 0, "list", "GET", "/admin/users?per_page=1", token=OPERATOR_TOKEN)
        assert listed.ok, listed  # creates the counter row the signups and deletions keep
        down = lambda i: servers[i].proc.poll() is not None  # noqa: E731  (no flows start on a dead process)
        load = Load(servers, workers=6, iterations=40, seconds=90, tag="killed", deletes=True, skip=down).start()
        try:
            load.wait_flows(8)
            kill_gotrue(servers[1])
            load.wait_flows(4, servers=[0])
            servers[1].start()
            load.wait_flows(4, servers=[1])
        finally:
            load.stop()
        f = Findings()
        bad = [a for a in load.answers if a.server == 0 and not a.ok]
        f.check(not bad, lambda: f"the process that was not killed failed: {bad[:3]}; {causes(bad, servers)}")
        orphans = db.count("SELECT COUNT(*) AS n FROM refresh_tokens t WHERE NOT EXISTS"
                           " (SELECT 1 FROM users u WHERE u.id = t.user_id)")
        f.check(orphans == 0, f"{orphans} refresh tokens of users that do not exist")
        counted = db.query("SELECT n FROM user_counts WHERE aud = ''")[0]["n"]
        rows = db.count("SELECT COUNT(*) AS n FROM users WHERE aud = ''")
        f.check(counted == rows, f"user_counts says {counted}, the users table has {rows}")
        lost = load.lost(db)
        f.check(lost == {0: []}, lambda: f"acknowledged but lost: {lost[0][:5]}")
        alive = [e for e in load.users if e not in load.deleted]
        failed = [(e, a) for n, e in enumerate(alive) for a in [login(servers, n % 2, e)] if not a.ok]
        f.check(not failed, lambda: f"{len(failed)} of {len(alive)} acknowledged users cannot log in: {failed[:3]}")
        f.done()
    finally:
        stop_gotrues(servers)


# --- (6) SQLite under many writers -----------------------------------------------------------------

@pytest.mark.parametrize("processes", [1, 2], ids=["1-process-many-threads", "2-processes-one-file"])
def test_sqlite_under_load(processes, tmp_path):
    """No 500 ("database is locked") from SQLite: 16 client threads with contention against one
    process (16 server threads), or against two processes on one file."""
    path = str(tmp_path / "gotrue.db")
    servers = start_gotrues(str(tmp_path), [sqlite_env(path)] * processes)
    try:
        db = Database.sqlite(path)
        email, tokens = Trio(servers, db).user("hot")
        pool = [unique_email("pool") for _ in range(4)]
        load = Load(servers, workers=16, iterations=8, seconds=90, tag="sqlite", hot=(email, tokens["access_token"]),
                    pool=pool).start().join()
        assert not load.running()
        failures = load.failures()
        assert not failures, f"{len(failures)} failures: {failures[:5]}; {causes(failures, servers)}"
        assert load.lost(db) == {0: []}
    finally:
        stop_gotrues(servers)
