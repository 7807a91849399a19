"""Operations: what an operator sees around the API itself. A graceful stop on SIGTERM (requests
under way finish, nothing is half-written, new connections are refused, exit 0; also pre-forked),
readiness (`/health?ready=1`), limits shared by every process on one database and kept across
restarts (and the rate_limits table kept bounded), no secrets in a debug log, one clear line for
operator errors at start, and SIGHUP reopening GOTRUE_LOG_FILE.

Everything runs against real gotrue.py processes over HTTP, with loopback webhook receivers and
SMTP servers made here for the purpose (they can hold their answer until the test releases it)."""

import asyncio
import concurrent.futures
import http.server
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pymysql
import pytest
import requests

import gotrue
from conftest import (DEADLINE, ROOT, Mailbox, Server, base_env, free_port, link_token,
                      unique_email, wait_until)

HOLD_MAX = 2 * DEADLINE  # the longest a holding receiver keeps its answer (teardown releases it)
OPERATOR = "operator-token-7d0c5e1a-ops-" + secrets.token_hex(8)
ALL_EVENTS = "validate,signup,login,usermodified,userdeleted"


# --- loopback helpers -------------------------------------------------------------------------

class Hook:
    """A webhook receiver on 127.0.0.1 that records every delivery (lower-cased headers, body)
    and answers 200 with no body, or the next status of `statuses`. While `release` is not set
    each answer is held back: how a test keeps requests of gotrue.py under way."""

    def __init__(self, hold=False):
        self.deliveries, self.statuses = [], []
        self.lock, self.release = threading.Lock(), threading.Event()
        if not hold:
            self.release.set()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook.lock:
                    hook.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = hook.statuses.pop(0) if hook.statuses else 200
                hook.release.wait(HOLD_MAX)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                except OSError:  # gotrue.py went away meanwhile
                    pass
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def count(self):
        with self.lock:
            return len(self.deliveries)

    def events(self):
        with self.lock:
            return [json.loads(body)["event"] for _, body in self.deliveries]

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class HoldingMailHandler(Mailbox):
    """conftest's Mailbox (a real aiosmtpd handler), which holds each RCPT TO until `release`
    is set, and may require AUTH with one user and password."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        self.release.set()
        self.rcpts = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.cond:
            self.rcpts.append(address.lower())
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, HOLD_MAX)
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def hooks():
    made = []

    def make(hold=False):
        made.append(Hook(hold))
        return made[-1]
    yield make
    for hook in made:
        hook.close()


@pytest.fixture
def smtp_servers():
    """smtp_servers(user=None, password=None): a fresh aiosmtpd on a free port -> (handler, port)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult
    made = []

    def make(user=None, password=None):
        handler = HoldingMailHandler()
        kwargs = {}
        if user:
            def authenticator(server, session, envelope, mechanism, auth_data):
                ok = auth_data.login.decode() == user and auth_data.password.decode() == password
                return AuthResult(success=ok, handled=False)
            kwargs = {"authenticator": authenticator, "auth_required": True, "auth_require_tls": False}
        controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **kwargs)
        controller.start()
        made.append((controller, handler))
        return handler, controller.port
    yield make
    for controller, handler in made:
        handler.release.set()
        controller.stop()


@pytest.fixture
def twins(tmp_path):
    """twins(server, **env): another gotrue.py process on the same database (other port, own
    workdir and log); stopped at teardown."""
    made = []

    def make(server, **env):
        workdir = tmp_path / f"twin{len(made)}"
        workdir.mkdir()
        twin = Server(str(workdir), {**server.env, "PORT": str(free_port()), **env})
        made.append(twin)
        return twin.start()
    yield make
    for twin in made:
        twin.stop()


def refuses_connections(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # queued just as the listening socket closed: try again
        return False


def children(pid):
    """Live child processes of `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def open_files(pid):
    paths = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return paths


def within(check, seconds):
    """Whether `check` comes true within `seconds` (a bounded poll that reports, not fails)."""
    try:
        return bool(wait_until(check, "", timeout=seconds))
    except AssertionError:
        return False


def post_in_thread(pool, url, **kw):
    """A request on its own connection (requests.Session is not for threads)."""
    return pool.submit(requests.post, url, timeout=HOLD_MAX + DEADLINE, **kw)


def hook_settings(hook, events="validate", **more):
    return {"GOTRUE_WEBHOOK_URL": hook.url, "GOTRUE_WEBHOOK_EVENTS": events,
            "GOTRUE_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "GOTRUE_WEBHOOK_TIMEOUT_SEC": str(HOLD_MAX + 10),
            "GOTRUE_WEBHOOK_RETRIES": "1", **more}


# --- 1. graceful stop ---------------------------------------------------------------------------

def stop_with_signups_under_way(srv, hook, mailbox, n=3):
    """Hold n signups in their validate webhook, SIGTERM, check the listening socket is closed
    while they are still under way, release them: each completes normally. Returns the emails."""
    emails = [unique_email("inflight") for _ in range(n)]
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        try:
            futures = [post_in_thread(pool, srv.url + "/signup", json={"email": e, "password": "inflight-pw"})
                       for e in emails]
            wait_until(lambda: hook.count() == n, f"{n} signups to wait in their webhook")
            assert srv.user_row(emails[0]) is None  # the webhook runs before anything is written
            srv.proc.send_signal(signal.SIGTERM)
            # (well within SHUTDOWN_TIMEOUT_SEC: a failure here must not cut the held requests)
            refused = within(lambda: refuses_connections(int(srv.env["PORT"])), seconds=4)
            assert srv.proc.poll() is None, "exited with requests under way"
        finally:
            hook.release.set()
        responses = [f.result() for f in futures]
    for email, r in zip(emails, responses):
        assert r.status_code == 200, r.text
        assert r.json()["email"] == email
    assert srv.proc.wait(timeout=DEADLINE) == 0, srv.log()
    for email in emails:  # whole: the user, its token, and the mail carrying that token
        row = srv.user_row(email)
        assert row and row["confirmation_token"] and row["confirmation_sent_at"] and not row["confirmed_at"]
        assert link_token(mailbox.wait_for(email), "confirmation") == row["confirmation_token"]
    assert refused, "after SIGTERM, new connections were still accepted (not refused) while requests were under way"
    return emails


def test_sigterm_finishes_requests_under_way_then_exits_0(make_server, engine, hooks, mailbox):
    hook = hooks(hold=True)
    srv = make_server(engine, **hook_settings(hook))
    emails = stop_with_signups_under_way(srv, hook, mailbox)
    assert hook.events() == ["validate"] * 3
    # a restart serves them: the users can confirm and log in
    srv.start()
    for email in emails:
        token = srv.user_row(email)["confirmation_token"]
        assert srv.post("/verify", json={"type": "signup", "token": token}).status_code == 200
        assert srv.login(email, "inflight-pw")["access_token"]


def test_sigterm_to_prefork_master_drains_every_worker_and_exits_0(make_server, hooks, mailbox):
    hook = hooks(hold=True)
    srv = make_server("sqlite", GOTRUE_API_WORKERS="2", **hook_settings(hook))
    workers = wait_until(lambda: len(children(srv.proc.pid)) == 2 and children(srv.proc.pid), "two workers")
    stop_with_signups_under_way(srv, hook, mailbox)
    assert not [pid for pid in workers if alive(pid)], "a worker outlived its master"


def test_sigterm_to_prefork_master_right_after_start(make_server):
    """A SIGTERM that comes as soon as the server answers (a deploy, a restart loop) stops every
    worker too, even one that is still setting itself up."""
    srv = make_server("sqlite", GOTRUE_API_WORKERS="2")
    workers = children(srv.proc.pid)  # both are forked before either answers
    srv.proc.send_signal(signal.SIGTERM)
    try:
        code = srv.proc.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        code = None
    left = [pid for pid in workers if alive(pid)]
    assert code == 0 and not left, f"exit {code}; workers still running: {left}\n{srv.log()}"
    assert refuses_connections(int(srv.env["PORT"]))


def test_shutdown_timeout_bounds_the_wait_and_a_cut_request_writes_nothing(make_server, hooks):
    """A request still held after GOTRUE_SHUTDOWN_TIMEOUT_SEC does not keep the process: it exits
    0 while the webhook still holds, and the signup it cut off left no user behind."""
    hook = hooks(hold=True)
    srv = make_server("sqlite", GOTRUE_SHUTDOWN_TIMEOUT_SEC="1", **hook_settings(hook))
    email = unique_email("cut")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            future = post_in_thread(pool, srv.url + "/signup", json={"email": email, "password": "cut-pw"})
            wait_until(lambda: hook.count() == 1, "the signup to wait in its webhook")
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(timeout=DEADLINE) == 0, srv.log()
            assert not hook.release.is_set()  # it did not wait for the receiver
        finally:
            hook.release.set()
        with pytest.raises(requests.ConnectionError):
            future.result()
    assert srv.user_row(email) is None


def test_sigterm_keeps_a_recovery_mail_already_promised(make_server, smtp_servers):
    """/recover answers 200 at once and mails afterwards: a SIGTERM right after the answer must
    not drop that mail, or the address owner waits for a mail that never comes and the recovery
    window (SMTP_MAX_FREQUENCY) refuses them a new one."""
    smtp, port = smtp_servers()
    srv = make_server("sqlite", smtp=False, GOTRUE_SMTP_HOST="127.0.0.1", GOTRUE_SMTP_PORT=str(port),
                      GOTRUE_SMTP_ADMIN_EMAIL="admin@site.example.com", GOTRUE_OPERATOR_TOKEN=OPERATOR)
    email = unique_email("promised")
    r = srv.post("/admin/users", token=OPERATOR, json={"email": email, "password": "old-pw", "confirm": True})
    assert r.status_code == 200, r.text
    smtp.release.clear()
    try:
        assert srv.post("/recover", json={"email": email}).status_code == 200
        wait_until(lambda: email in smtp.rcpts, "the recovery mail to be under way")
        srv.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: refuses_connections(int(srv.env["PORT"])), "new connections to be refused")
    finally:
        smtp.release.set()
    code = srv.proc.wait(timeout=DEADLINE)
    assert code == 0, srv.log()
    assert within(lambda: smtp.to(email), seconds=5), "the recovery mail promised by a 200 was lost on SIGTERM"
    srv.start()
    r = srv.post("/verify", json={"type": "recovery", "token": link_token(smtp.to(email)[0], "recovery")})
    assert r.status_code == 200, r.text


# --- 2. readiness -------------------------------------------------------------------------------

def health(srv, ready=False):
    r = srv.get("/health", params={"ready": "1"} if ready else None)
    return r.status_code, r.json(), r.headers


def test_readiness_says_when_the_schema_is_out_of_date(make_server, engine):
    srv = make_server(engine)
    status, body, _ = health(srv, ready=True)
    assert status == 200 and body["name"] == "GoTrue" and body["version"] == gotrue.VERSION
    assert srv.sql("DELETE FROM schema_migration WHERE version = ?", gotrue.SCHEMA_VERSION) == 1
    status, body, headers = health(srv, ready=True)
    assert status == 503, body
    assert body["code"] == 503 and body["msg"] == "Database schema out of date: run python migrate.py"
    assert headers["Content-Type"].startswith("application/json")
    assert health(srv)[0] == 200  # liveness is not readiness
    srv.sql("INSERT INTO schema_migration (version) VALUES (?)", gotrue.SCHEMA_VERSION)
    assert health(srv, ready=True)[0] == 200


def test_readiness_without_the_migrations_table(make_server):
    srv = make_server("sqlite")
    srv.sql("DROP TABLE schema_migration")
    status, body, _ = health(srv, ready=True)
    assert (status, body["code"], body["msg"]) == (503, 503, "Database schema out of date: run python migrate.py")
    assert health(srv)[0] == 200


def test_readiness_says_when_the_database_is_gone_and_liveness_does_not_ask_it(make_server):
    srv = make_server("mariadb")
    email = unique_email()
    srv.confirmed_user(email)
    assert health(srv, ready=True)[0] == 200
    params = srv.db.params
    srv.db.close()
    root = pymysql.connect(host=params["host"], port=params["port"], user=params["user"], password=params["password"],
                           autocommit=True)
    try:
        with root.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                        (params["database"],))
            for (conn_id,) in cur.fetchall():
                cur.execute(f"KILL CONNECTION {int(conn_id)}")
            cur.execute(f"DROP DATABASE `{params['database']}`")
    finally:
        root.close()
    status, body, headers = health(srv, ready=True)
    assert status == 503 and body["code"] == 503, body
    assert body["msg"].startswith("Database unavailable: "), body
    assert "error_id" in body and headers.get("Retry-After")
    status, body, _ = health(srv)
    assert status == 200 and body["name"] == "GoTrue"  # liveness never touches the database
    assert srv.post("/token", data={"grant_type": "password", "username": email,
                                    "password": "secret-pw"}).status_code == 503


def test_readiness_when_the_sqlite_file_cannot_be_opened(make_server):
    """A SQLite database that cannot be opened (its path is now a directory) is 'unavailable',
    not 'schema out of date: run python migrate.py' (migrate.py cannot help there)."""
    srv = make_server("sqlite", GOTRUE_API_THREADS="1")  # the one thread opens its connection late
    path = srv.env["DATABASE_URL"]
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.rename(path + suffix, path + suffix + ".moved")
    os.mkdir(path)
    assert health(srv)[0] == 200
    status, body, _ = health(srv, ready=True)
    assert status == 503, body
    assert body["msg"].startswith("Database unavailable"), body


# --- 3. limits shared across processes and restarts ----------------------------------------------

def token_request(srv, client):
    """A /token request that the limiter counts and nothing else does (no login is attempted)."""
    return srv.post("/token", data={"grant_type": "nothing"}, headers={"X-Real-IP": client})


class Refills:
    """The /token bucket gives one request back every 10 s: how many extra requests may pass
    since `started`, whatever the machine's speed (one second of slack for whole-second
    timestamps)."""

    def __init__(self):
        self.started, self.used = time.monotonic(), 0

    def passed(self):
        self.used += 1
        allowed = int((time.monotonic() - self.started + 1) // 10)
        assert self.used <= allowed, f"{self.used} requests passed an exhausted bucket (refills allow {allowed})"

    def expect_429(self, srv, client):
        for _ in range(20):
            r = token_request(srv, client)
            if r.status_code == 429:
                assert r.json() == {"code": 429, "msg": "Rate limit exceeded"}
                assert int(r.headers["Retry-After"]) > 0
                return
            assert r.status_code == 400, r.text
            self.passed()
        raise AssertionError("no 429 in 20 requests")


def test_token_rate_limit_is_shared_by_processes_and_kept_across_restarts(make_server, engine, twins):
    a = make_server(engine, GOTRUE_RATE_LIMIT_HEADER="X-Real-IP")
    b = twins(a)
    client = f"203.0.113.{secrets.randbelow(200) + 1}"
    refills = Refills()
    for i in range(30):  # 15 on each process: one bucket of 30
        r = token_request((a, b)[i % 2], client)
        assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type", (i, r.text)
    refills.expect_429(a, client)
    refills.expect_429(b, client)
    assert token_request(b, "198.51.100.77").status_code == 400  # another client has its own bucket
    for srv in (a, b):
        srv.stop()
    for srv in (b, a):
        srv.start()
    refills.expect_429(b, client)
    refills.expect_429(a, client)


def test_failed_login_backoff_is_shared_by_processes(make_server, engine, twins):
    a = make_server(engine, GOTRUE_RATE_LIMIT_HEADER="X-Real-IP")
    b = twins(a)
    email, other = unique_email("victim"), unique_email("bystander")
    a.confirmed_user(email, "right-pw")
    b.confirmed_user(other, "right-pw")
    statuses = []
    for i in range(8):  # alternating processes, each from another client: only the account counts
        r = (a, b)[i % 2].post("/token", data={"grant_type": "password", "username": email, "password": f"wrong-{i}"},
                               headers={"X-Real-IP": f"192.0.2.{i + 10}"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json() == {"code": 429, "msg": "Too many failed login attempts, try again later"}
            assert int(r.headers["Retry-After"]) >= 1
            break
        assert r.json()["error"] == "invalid_grant"
    assert statuses[:5] == [400] * 5, statuses
    # the back-off starts at the 5th failure counted on either process (1 s, doubling): a
    # per-process count would have reached 4 on each by the 8th attempt and blocked nothing
    assert statuses[-1] == 429, statuses
    assert b.login(other, "right-pw", headers={"X-Real-IP": "192.0.2.99"})["access_token"]  # per account


def test_recover_window_is_shared_by_processes_and_kept_across_restarts(make_server, engine, twins):
    a = make_server(engine)
    b = twins(a)
    address = unique_email("window")
    assert a.post("/recover", json={"email": address}).status_code == 200
    r = b.post("/recover", json={"email": address.upper()})
    assert r.status_code == 429 and r.json()["code"] == 429 and int(r.headers["Retry-After"]) > 0, r.text
    assert b.post("/recover", json={"email": unique_email("other")}).status_code == 200
    for srv in (a, b):
        srv.stop()
        srv.start()
        assert srv.post("/recover", json={"email": address}).status_code == 429


def test_expired_limit_rows_are_pruned(make_server, engine):
    srv = make_server(engine)
    for i in range(20):  # windows that will have passed
        assert srv.post("/recover", json={"email": unique_email(f"old{i}")}).status_code == 200
    past = gotrue.now() - gotrue.dt.timedelta(hours=2)
    srv.sql("UPDATE {rate_limits} SET blocked_until = ?, expires_at = ?", past, past)
    expired = lambda: srv.sql("SELECT COUNT(*) AS n FROM {rate_limits} WHERE expires_at < ?", gotrue.now())[0]["n"]
    assert expired() >= 20
    live = unique_email("live")
    assert srv.post("/recover", json={"email": live}).status_code == 200  # a window still open
    # every claim prunes with probability 1/256: 3000 claims all missing it is a 1e-5 chance
    end, sent = time.monotonic() + 4 * DEADLINE, 0
    while expired():
        assert sent < 3000 and time.monotonic() < end, f"expired rows still there after {sent} claims"
        for _ in range(16):
            assert srv.post("/recover", json={"email": f"prune-{sent}-{uuid.uuid4().hex[:6]}@example.com"}).status_code == 200
            sent += 1
    r = srv.post("/recover", json={"email": live})
    assert r.status_code == 429, r.text  # pruning spared what still blocks
    assert srv.sql("SELECT COUNT(*) AS n FROM {rate_limits}")[0]["n"] <= sent + 1


# --- 4. no secrets in the log ---------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_debug_log_holds_no_secrets(make_server, engine, hooks, smtp_servers):
    smtp_user, smtp_pass = "mailer", "smtp-pass-" + secrets.token_hex(12)
    mail, smtp_port = smtp_servers(smtp_user, smtp_pass)
    hook = hooks()
    hook_pass = "hook-basic-pass-" + secrets.token_hex(8)
    hook_url = hook.url.replace("http://", f"http://hookuser:{hook_pass}@")
    webhook_secret, export_secret = "webhook-secret-" + secrets.token_hex(16), "export-secret-" + secrets.token_hex(8)
    srv = make_server(engine, smtp=False, LOG_LEVEL="debug", GOTRUE_SMTP_HOST="127.0.0.1", GOTRUE_SMTP_PORT=str(smtp_port),
                      GOTRUE_SMTP_USER=smtp_user, GOTRUE_SMTP_PASS=smtp_pass, GOTRUE_SMTP_ADMIN_EMAIL="admin@site.example.com",
                      GOTRUE_OPERATOR_TOKEN=OPERATOR, GOTRUE_API_EXPORT_SECRET=export_secret,
                      **hook_settings(hook, ALL_EVENTS, GOTRUE_WEBHOOK_URL=hook_url, GOTRUE_WEBHOOK_SECRET=webhook_secret,
                                      GOTRUE_WEBHOOK_TIMEOUT_SEC="10"))
    secrets_seen = [srv.env["GOTRUE_JWT_SECRET"], OPERATOR, webhook_secret, export_secret, smtp_pass, hook_pass]

    def pw(tag):
        secrets_seen.append(f"{tag}-pw-{secrets.token_hex(6)}")
        return secrets_seen[-1]

    def tokens(r):
        assert r.status_code == 200, r.text
        body = r.json()
        secrets_seen.extend([body["access_token"], body["refresh_token"]])
        return body

    def mailed(address, kind, count=1):
        token = link_token(mail.wait_for(address, count), kind)
        secrets_seen.append(token)
        return token

    # signup, confirmation mail, verify, login (form and query string), refresh
    email, first = unique_email("secrets"), pw("signup")
    assert srv.post("/signup", json={"email": email, "password": first}).status_code == 200
    session = tokens(srv.post("/verify", json={"type": "signup", "token": mailed(email, "confirmation")}))
    session = tokens(srv.post("/token", data={"grant_type": "password", "username": email, "password": first}))
    tokens(srv.post("/token", params={"grant_type": "password", "username": email, "password": first}))
    session = tokens(srv.post("/token", data={"grant_type": "refresh_token", "refresh_token": session["refresh_token"]}))
    # failures that carry secrets too: a wrong password, a replayed and a made-up refresh token, a bad link
    wrong = pw("wrong")
    assert srv.post("/token", data={"grant_type": "password", "username": email, "password": wrong}).status_code == 400
    made_up = secrets.token_urlsafe(16)
    secrets_seen.append(made_up)
    assert srv.post("/token", data={"grant_type": "refresh_token", "refresh_token": made_up}).status_code == 400
    bad_link = secrets.token_urlsafe(16)
    secrets_seen.append(bad_link)
    assert srv.post("/verify", json={"type": "signup", "token": bad_link}).status_code == 404
    # password change, user data, email change
    second = pw("changed")
    r = srv.put("/user", token=session["access_token"], json={"password": second, "data": {"k": "v"}})
    assert r.status_code == 200, r.text
    new_address = unique_email("moved")
    r = srv.put("/user", token=session["access_token"], json={"email": new_address})
    assert r.status_code == 200, r.text
    change = mailed(new_address, "email_change")
    r = srv.put("/user", token=session["access_token"], json={"email_change_token": change})
    assert r.status_code == 200, r.text
    email = new_address
    # recovery
    assert srv.post("/recover", json={"email": email}).status_code == 200
    recovered = tokens(srv.post("/verify", json={"type": "recovery", "token": mailed(email, "recovery", 2)}))
    third = pw("recovered")
    assert srv.put("/user", token=recovered["access_token"], json={"password": third}).status_code == 200
    tokens(srv.post("/token", data={"grant_type": "password", "username": email, "password": third}))
    assert srv.post("/logout", token=recovered["access_token"]).status_code == 204
    # admin: create, read, update (password), export, delete
    admin_email, admin_pw = unique_email("byadmin"), pw("admin-created")
    r = srv.post("/admin/users", token=OPERATOR, json={"email": admin_email, "password": admin_pw, "confirm": True})
    assert r.status_code == 200, r.text
    user_id = r.json()["id"]
    assert srv.get(f"/admin/users/{user_id}", token=OPERATOR).status_code == 200
    r = srv.put(f"/admin/users/{user_id}", token=OPERATOR, json={"password": pw("admin-reset"), "role": "editor"})
    assert r.status_code == 200, r.text
    r = srv.get("/admin/users/export", token=OPERATOR, headers={"Export-Secret": export_secret})
    assert r.status_code == 200, r.text
    assert srv.delete(f"/admin/users/{user_id}", token=OPERATOR).status_code == 200
    # invite, accepted with a password
    invited = unique_email("invited")
    assert srv.post("/invite", token=OPERATOR, json={"email": invited}).status_code == 200
    tokens(srv.post("/verify", json={"type": "signup", "token": mailed(invited, "invite"), "password": pw("invited")}))
    # a webhook refusal is logged (with the receiver's URL): the URL's password must not be
    hook.statuses.append(500)
    refused = pw("refused")
    r = srv.post("/signup", json={"email": unique_email("refused"), "password": refused})
    assert r.status_code >= 400
    wait_until(lambda: "webhook" in srv.log().lower(), "the webhook failure in the log")
    # the hook saw signed deliveries (the secret was in use) and SMTP logged in with its password
    assert all("x-webhook-signature" in headers for headers, _ in hook.deliveries) and hook.count() >= 8
    assert mail.to(invited)
    # every request of the flow is in the log, at debug level, and nothing secret is
    log = srv.log()
    assert log.count("request completed") >= 20, log
    leaked = [s for s in secrets_seen if s in log]
    assert not leaked, f"secrets in the log: {leaked}\n{log}"


# --- 5. operator errors at start --------------------------------------------------------------------

def run_cli(*args, env=None, cwd=None, script="gotrue.py"):
    base = {k: v for k, v in os.environ.items() if not k.startswith("GOTRUE_") and k not in ("PORT", "DATABASE_URL")}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], env={**base, **(env or {})},
                          cwd=cwd, capture_output=True, text=True, timeout=2 * DEADLINE)


def closed_port():
    port = free_port()
    assert refuses_connections(port)
    return port


@pytest.mark.parametrize("command", [[], ["admin", "confirm", "someone@example.com"], ["migrate"]])
def test_unreachable_mysql_is_one_line_saying_so(tmp_path, command):
    env = base_env(str(tmp_path), {"GOTRUE_DB_DRIVER": "mysql",
                                   "DATABASE_URL": f"root@tcp(127.0.0.1:{closed_port()})/gotrue"},
                   smtp_port=closed_port(), GOTRUE_DB_CONNECT_TIMEOUT_SEC="2")  # (no warning about mail)
    result = run_cli(*command, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "database error" in lines[0], result.stderr
    assert "schema" not in lines[0] and "python migrate.py" not in lines[0], result.stderr  # not "migrate first"


def test_version_needs_no_configuration(tmp_path):
    (tmp_path / ".env").write_text("GOTRUE_JWT_EXP=abc\nDATABASE_URL=root@tcp(127.0.0.1:1)/nowhere\n")
    result = run_cli("version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == gotrue.VERSION and result.stderr == ""
    served = run_cli(cwd=tmp_path)  # the same .env does stop anything that reads it
    assert served.returncode == 1 and "GOTRUE_JWT_EXP" in served.stderr


def test_database_password_is_never_printed(tmp_path, mariadb_root):
    """DATABASE_URL carries the database password: neither the server's refusal to serve an
    unmigrated database nor migrate.py's report may print it (they end up in logs)."""
    from urllib.parse import urlsplit
    root = urlsplit(mariadb_root)
    name, password = "gt_" + uuid.uuid4().hex[:12], "db-pass-" + secrets.token_hex(10)
    conn = pymysql.connect(host=root.hostname, port=root.port, user=root.username or "root", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            cur.execute(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'")
            cur.execute(f"GRANT ALL ON `{name}`.* TO '{name}'@'%'")
    finally:
        conn.close()
    env = base_env(str(tmp_path), {"GOTRUE_DB_DRIVER": "mysql",
                                   "DATABASE_URL": f"{name}:{password}@tcp(127.0.0.1:{root.port})/{name}"})
    refused = run_cli(env=env, cwd=tmp_path)
    assert refused.returncode == 1 and "migrate.py" in refused.stderr, refused.stderr
    migrated = run_cli(env=env, cwd=tmp_path, script="migrate.py")
    assert migrated.returncode == 0, migrated.stderr
    wrong = run_cli(env={**env, "DATABASE_URL": f"{name}:{password}x@tcp(127.0.0.1:{root.port})/{name}"}, cwd=tmp_path)
    assert wrong.returncode == 1 and "database error" in wrong.stderr and "Traceback" not in wrong.stderr
    leaks = [f"{what}: {out}" for what, result in (("serve, unmigrated", refused), ("migrate.py", migrated),
                                                  ("serve, wrong password", wrong))
             for out in (result.stdout + result.stderr).splitlines() if password in out]
    assert not leaks, "\n".join(leaks)


# --- 6. SIGHUP reopens the log file ------------------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_reopens_the_log_file(make_server, tmp_path, workers):
    path = tmp_path / "gotrue.log"
    srv = make_server("sqlite", GOTRUE_LOG_FILE=str(path), GOTRUE_API_WORKERS=workers,
                      GOTRUE_API_REQUEST_ID_HEADER="X-Request-Id")
    assert srv.get("/settings", headers={"X-Request-Id": "before-rotation"}).status_code == 200
    wait_until(lambda: "before-rotation" in path.read_text(), "the request line in the log file")
    rotated = tmp_path / "gotrue.log.1"
    os.rename(path, rotated)
    srv.proc.send_signal(signal.SIGHUP)
    sent = []

    def reopened():
        assert len(sent) < 500, "the log file was not reopened"
        sent.append(f"after-rotation-{len(sent)}")
        assert srv.get("/settings", headers={"X-Request-Id": sent[-1]}).status_code == 200
        return path.exists() and re.search(r"request_id=after-rotation-\d+", path.read_text())
    wait_until(reopened, "a request line in the new log file")
    wait_until(lambda: all(re.search(rf"request_id={rid}\b", path.read_text() + rotated.read_text()) for rid in sent),
               "every request line in one of the files")
    assert "before-rotation" in rotated.read_text() and "before-rotation" not in path.read_text()
    # the new file takes every later line, from every worker; the old one is let go (logrotate
    # frees its disk space), and the server keeps serving
    late = [f"late-{i}" for i in range(8)]
    for rid in late:
        assert srv.get("/settings", headers={"X-Request-Id": rid}).status_code == 200
    wait_until(lambda: all(re.search(rf"request_id={rid}\b", path.read_text()) for rid in late), "the late lines")
    assert not any(f"request_id={rid}" in rotated.read_text() for rid in late)
    holders = [srv.proc.pid, *children(srv.proc.pid)]
    wait_until(lambda: not [pid for pid in holders if str(rotated) in open_files(pid)],
               "the rotated file to be closed by every process")


# --- CPU placement (GOTRUE_API_CPU_PINNING) -------------------------------------------------

CPUS = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="CPU placement needs at least two CPUs")


def thread_cpus(pid):
    """{thread id: the CPUs it may run on} of every thread of a process."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            line = next(x for x in f if x.startswith("Cpus_allowed_list:"))
        cpus = set()
        for part in line.split(":", 1)[1].strip().split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
        found[int(tid)] = cpus
    return found


def home_cpu(pid):
    """The one CPU every thread of a worker runs on (fails if they are not all on the same one)."""
    placed = {frozenset(cpus) for cpus in thread_cpus(pid).values()}
    assert len(placed) == 1 and len(next(iter(placed))) == 1, f"threads of {pid} placed on {placed}"
    return next(iter(next(iter(placed))))


@needs_two_cpus
def test_a_single_process_keeps_every_thread_on_one_cpu(make_server, engine):
    srv = make_server(engine)
    assert srv.get("/settings").status_code == 200
    assert len(thread_cpus(srv.proc.pid)) > 8  # waitress's 16 threads (base_env), the loop, the log writer
    home = home_cpu(srv.proc.pid)
    # logins still work (bcrypt runs on every CPU meanwhile, and comes back)
    user = srv.confirmed_user()
    assert srv.login(user["email"])["access_token"]
    assert srv.post("/token", data={"grant_type": "password", "username": user["email"],
                                    "password": "wrong"}).status_code == 400
    assert home_cpu(srv.proc.pid) == home


@needs_two_cpus
def test_workers_are_spread_over_cpus_and_a_replacement_takes_the_dead_ones(make_server):
    srv = make_server("sqlite", GOTRUE_API_WORKERS="2")
    workers = wait_until(lambda: len(children(srv.proc.pid)) == 2 and children(srv.proc.pid), "two workers")
    for pid in workers:
        wait_until(lambda pid=pid: len(thread_cpus(pid)) > 8, "the worker's threads")
    placed = {pid: home_cpu(pid) for pid in workers}
    assert len(set(placed.values())) == 2  # one CPU each, not the same one
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    new = wait_until(lambda: [p for p in children(srv.proc.pid) if p not in workers], "a replacement")[0]
    wait_until(lambda: len(thread_cpus(new)) > 8, "its threads")
    assert home_cpu(new) == placed[victim]
    assert srv.get("/settings").status_code == 200


@needs_two_cpus
def test_pinning_can_be_switched_off(make_server):
    srv = make_server("sqlite", GOTRUE_API_CPU_PINNING="false")
    assert srv.get("/settings").status_code == 200
    assert all(cpus == set(CPUS) for cpus in thread_cpus(srv.proc.pid).values())


@needs_two_cpus
def test_on_every_cpu_widens_only_the_calling_thread_and_restores_it(monkeypatch):
    home, seen = {CPUS[0]}, {}
    monkeypatch.setattr(gotrue, "PLACEMENT", (home, set(CPUS)))

    def pinned_thread():
        os.sched_setaffinity(0, home)
        with gotrue.on_every_cpu():
            seen["inside"] = os.sched_getaffinity(0)
            seen["main"] = os.sched_getaffinity(threading.main_thread().native_id)
            with pytest.raises(ZeroDivisionError), gotrue.on_every_cpu():
                1 / 0  # noqa: B018 - an error inside still restores the placement
        seen["after"] = os.sched_getaffinity(0)
    before = os.sched_getaffinity(0)
    worker = threading.Thread(target=pinned_thread)
    worker.start()
    worker.join()
    assert seen == {"inside": set(CPUS), "main": before, "after": home}
