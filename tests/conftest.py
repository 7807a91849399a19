"""Shared fixtures: real gotrue.py servers over HTTP, on SQLite and on a private MariaDB, with a
real SMTP server (aiosmtpd) catching their mail.

    def test_x(server): ...            # a shared server of the module, once per database engine
    def test_y(make_server): ...       # a fresh server (and fresh database) with its own settings
    server.post("/signup", json=...)   # requests against it
    server.sql("UPDATE {users} ...")   # straight to its database, e.g. to move time backwards
    mailbox.wait_for("a@b.test")       # the next mail to that address
"""

import email
import email.policy
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gotrue  # noqa: E402
from mariadb_server import MariaDBUnavailable, create_database, start_private_mariadb  # noqa: E402

ENGINES = ("sqlite", "mariadb")
DEADLINE = 30  # seconds any wait may take before the test fails


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what, timeout=DEADLINE):
    """Poll `check` until it returns something truthy; fail with `what` at the deadline."""
    end = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def unique_email(tag="user"):
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


# --- mail ----------------------------------------------------------------------------------

class Mailbox:
    """What a real aiosmtpd server received, one parsed message per recipient."""

    def __init__(self):
        self.messages = []
        self.cond = threading.Condition()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.cond:
            for rcpt in envelope.rcpt_tos:
                self.messages.append((rcpt.lower(), msg, envelope))
            self.cond.notify_all()
        return "250 OK"

    def to(self, address):
        with self.cond:
            return [m for rcpt, m, _ in self.messages if rcpt == address.lower()]

    def wait_for(self, address, count=1):
        """The count-th mail to `address` (waits for it)."""
        return wait_until(lambda: len(self.to(address)) >= count and self.to(address)[count - 1],
                          f"mail #{count} to {address}")


def mail_html(msg):
    return msg.get_body(("html",)).get_content()


def mail_text(msg):
    return msg.get_body(("plain",)).get_content()


def link_token(msg, kind):
    """The token in the mail's link, e.g. kind='confirmation' for #confirmation_token=..."""
    match = re.search(kind + r"_token=([\w-]+)", mail_html(msg))
    assert match, f"no {kind} link in mail: {mail_html(msg)}"
    return match.group(1)


@pytest.fixture(scope="session")
def mailbox():
    from aiosmtpd.controller import Controller
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=True)
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


# --- databases -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mariadb_root(tmp_path_factory):
    """A root URL (no database) of a MariaDB: GOTRUE_TEST_MYSQL_URL, or a private mariadbd."""
    if os.environ.get("GOTRUE_TEST_MYSQL_URL"):
        yield os.environ["GOTRUE_TEST_MYSQL_URL"].rstrip("/") + "/"
        return
    try:
        url, stop = start_private_mariadb(str(tmp_path_factory.mktemp("mariadb")))
    except MariaDBUnavailable as e:
        if os.environ.get("GOTRUE_TEST_REQUIRE_MYSQL"):
            pytest.fail(f"MariaDB is required (GOTRUE_TEST_REQUIRE_MYSQL) but unavailable: {e}")
        pytest.skip(f"MariaDB tests skipped: {e} (install mariadb-server or set GOTRUE_TEST_MYSQL_URL)")
    yield url
    stop()


@pytest.fixture
def new_database(request, tmp_path):
    """A factory of empty databases for the engine named by the test's `engine` param:
    returns the GOTRUE_ env that points gotrue.py at it."""
    def make(engine):
        if engine == "sqlite":
            return {"GOTRUE_DB_DRIVER": "sqlite", "DATABASE_URL": str(tmp_path / f"gt-{uuid.uuid4().hex[:8]}.db")}
        root = request.getfixturevalue("mariadb_root")
        return {"GOTRUE_DB_DRIVER": "mysql", "DATABASE_URL": create_database(root, "gt_" + uuid.uuid4().hex[:12])}
    return make


# --- servers -------------------------------------------------------------------------------

class Verbs:
    """get/post/put/delete over the class's own request(method, path, ...)."""

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


class Server(Verbs):
    """A gotrue.py process on a free port, and a session of requests against it."""

    def __init__(self, workdir, env):
        self.env, self.workdir = env, workdir
        self.url = f"http://127.0.0.1:{env['PORT']}"
        self.http = requests.Session()
        self.log_path = os.path.join(workdir, "server.log")
        self.proc = None
        self._db = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "gotrue.py")], cwd=self.workdir,
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"gotrue.py exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                return requests.get(self.url + "/health", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False
        wait_until(up, "gotrue.py to answer /health")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=DEADLINE)
        if self._db:
            self._db.close()

    def log(self):
        """The server's output so far. A running server writes its info lines (a line per
        request) a moment after the request: they are queued, and written in order. So marker
        requests go first, and the log is read once each worker has logged one; every line
        queued before a marker is then in the file."""
        if self.proc and self.proc.poll() is None and self.logs_requests_here():
            workers, prefixes = int(self.env.get("GOTRUE_API_WORKERS") or 1), set()

            def every_worker_marked():
                marker = f"/log-marker-{uuid.uuid4().hex}"
                with requests.Session() as fresh:  # a new connection: any worker may take it
                    fresh.get(self.url + marker, timeout=DEADLINE)
                wait_until(lambda: marker in self.read_log(), "the server to log a marker request")
                line = next(line for line in self.read_log().splitlines() if marker in line)
                prefixes.add(re.search(r'request_id(?:=|": ")(\w+)-', line).group(1))
                return len(prefixes) >= workers
            wait_until(every_worker_marked, f"a marker request logged by each of {workers} workers")
        return self.read_log()

    def read_log(self):
        return open(self.log_path, encoding="utf-8", errors="replace").read()

    def logs_requests_here(self):
        """Request lines go to server.log: info level (or debug) and no LOG_FILE."""
        level = (self.env.get("LOG_LEVEL") or self.env.get("GOTRUE_LOG_LEVEL") or "info").lower()
        return level in ("debug", "info") and not (self.env.get("LOG_FILE") or self.env.get("GOTRUE_LOG_FILE"))

    def request(self, method, path, token=None, headers=None, **kw):
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, self.url + path, headers=headers, timeout=DEADLINE, **kw)

    # direct database access, with gotrue.py's own query helper (`{users}` names a table)
    @property
    def db(self):
        if self._db is None:
            self._db = gotrue.Database(gotrue.Config(self.env))
        return self._db

    def sql(self, statement, *args):
        if statement.lstrip().upper().startswith("SELECT"):
            return self.db.query(statement, *args)
        return self.db.execute(statement, *args)

    def user_row(self, email):
        rows = self.sql("SELECT * FROM {users} WHERE email = ?", email.lower())
        return rows[0] if rows else None

    def backdate(self, email, column, seconds):
        """Move a user's timestamp into the past: how tests make time pass. The limits kept in
        the database (mail windows, login back-offs) age by as much."""
        past = gotrue.now() - gotrue.dt.timedelta(seconds=seconds)
        assert self.sql(f"UPDATE {{users}} SET {column} = ? WHERE email = ?", past, email.lower()) == 1
        self.age_limits(seconds)

    def age_limits(self, seconds):
        step = gotrue.dt.timedelta(seconds=seconds)
        for row in self.sql("SELECT bucket, blocked_until, expires_at FROM {rate_limits}"):
            moved = [gotrue.db_time(row[k]) - step if row[k] else None for k in ("blocked_until", "expires_at")]
            self.sql("UPDATE {rate_limits} SET blocked_until = ?, expires_at = ? WHERE bucket = ?", *moved, row["bucket"])

    # flows used by many tests
    def signup(self, email=None, password="secret-pw", headers=None, **body):
        email = email or unique_email()
        r = self.post("/signup", json={"email": email, "password": password, **body}, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    def confirmed_user(self, email=None, password="secret-pw", headers=None, **body):
        """Sign up and confirm through the database token (mail tests use the mail's link)."""
        user = self.signup(email, password, headers, **body)
        token = self.sql("SELECT confirmation_token FROM {users} WHERE id = ?", user["id"])[0]["confirmation_token"]
        if token:
            r = self.post("/verify", json={"type": "signup", "token": token})
            assert r.status_code == 200, r.text
        return user

    def login(self, email, password="secret-pw", **kw):
        r = self.post("/token", data={"grant_type": "password", "username": email, "password": password}, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def admin_token(self, aud=""):
        """An access token of a fresh confirmed user with the admin role in audience `aud`."""
        email, headers = unique_email("admin"), {"X-JWT-AUD": aud} if aud else {}
        r = self.post("/signup", json={"email": email, "password": "admin-pw"}, headers=headers)
        assert r.status_code == 200, r.text
        self.sql("UPDATE {users} SET role = 'admin', confirmed_at = ? WHERE email = ?", gotrue.now(), email)
        return self.login(email, "admin-pw", headers=headers)["access_token"]


def base_env(workdir, db_env, smtp_port=None, **settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOTRUE_")}
    for key in ("PORT", "DATABASE_URL", "LOG_LEVEL", "REQUEST_ID_HEADER"):
        env.pop(key, None)
    env.update({"PORT": str(free_port()), "GOTRUE_API_HOST": "127.0.0.1",
                "GOTRUE_SITE_URL": "https://site.example.com", "GOTRUE_JWT_SECRET": secrets.token_hex(32),
                "GOTRUE_BCRYPT_COST": "4", "GOTRUE_API_THREADS": "16", "LOG_LEVEL": "info", **db_env})
    if os.environ.get("GOTRUE_TEST_API_WORKERS"):  # run the suite against pre-forked servers
        env["GOTRUE_API_WORKERS"] = os.environ["GOTRUE_TEST_API_WORKERS"]
    if smtp_port:
        env.update({"GOTRUE_SMTP_HOST": "127.0.0.1", "GOTRUE_SMTP_PORT": str(smtp_port),
                    "GOTRUE_SMTP_ADMIN_EMAIL": "admin@site.example.com"})
    env.update({k: str(v) for k, v in settings.items() if v is not None})
    for k in [k for k, v in settings.items() if v is None]:
        env.pop(k, None)
    return env


def migrate(env, workdir):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "migrate.py")], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=DEADLINE * 2)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def make_server(new_database, mailbox, tmp_path, request):
    """make_server(engine, **GOTRUE_settings): a migrated database and a running server.
    Settings are environment variables (None removes one); mail goes to `mailbox`."""
    servers = []

    def make(engine, smtp=True, **settings):
        workdir = tmp_path / f"srv{len(servers)}"
        workdir.mkdir()
        env = base_env(str(workdir), new_database(engine), mailbox.port if smtp else None, **settings)
        migrate(env, str(workdir))
        server = Server(str(workdir), env)
        servers.append(server)
        return server.start()
    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module", params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture(scope="module")
def server(engine, mailbox, tmp_path_factory, request):
    """One default server per test module and engine; tests use unique emails."""
    workdir = tmp_path_factory.mktemp("server")
    if engine == "sqlite":
        db_env = {"GOTRUE_DB_DRIVER": "sqlite", "DATABASE_URL": str(workdir / "gotrue.db")}
    else:
        root = request.getfixturevalue("mariadb_root")
        db_env = {"GOTRUE_DB_DRIVER": "mysql", "DATABASE_URL": create_database(root, "gt_" + uuid.uuid4().hex[:12])}
    env = base_env(str(workdir), db_env, mailbox.port)
    migrate(env, str(workdir))
    srv = Server(str(workdir), env).start()
    yield srv
    srv.stop()
