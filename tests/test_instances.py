"""Multi-instance mode (issue 16): starting, the operator API (/instances), the x-nf-sign header
that selects an instance per request, instances kept apart (users, tokens, mail, admins), config
changes seen by every process on the database, and rows written by upstream GoTrue.

Design: the lead's multi-instance design; upstream spec §9 (operator, x-nf-sign), §1.5 (config
JSON), §1.7 (global SMTP/EXTERNAL as defaults). Real servers over HTTP, on SQLite and MariaDB."""

import concurrent.futures
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.parse as urllib_parse
import uuid
from types import SimpleNamespace

import jwt
import pytest
import requests

import gotrue
from conftest import (DEADLINE, Verbs, ROOT, Server, base_env, free_port, link_token, mail_html, migrate, unique_email,
                      wait_until)
from mariadb_server import create_database
from test_admin_users import check_error  # upstream's error body; a msg ending in '*' is a prefix
from oauth_fakes import SHAPES

OPERATOR = "operator-" + secrets.token_hex(24)
ENDPOINT = "https://identity.example.net/.netlify/identity"
NIL = "00000000-0000-0000-0000-000000000000"
NS = 10 ** 9  # config durations are integer nanoseconds
MASK = "<set>"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
NO_BEARER = "This endpoint requires a Bearer token"
NOT_OPERATOR = "Request does not include an Operator token"
BAD_SIGN = "Operator microservice signature is invalid: *"
REFUSED = "gotrue.py: Operator token secret is required"


# --- helpers ---------------------------------------------------------------------------------

def check_grant_error(r, description):
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "invalid_grant", "error_description": description}


def op(**headers):
    return {"Authorization": f"Bearer {OPERATOR}", **headers}


def sign(claims, key=OPERATOR, algorithm="HS256"):
    """An x-nf-sign value: a JWT signed with the operator token."""
    return jwt.encode(claims, key, algorithm=algorithm)


def mint(secret, **claims):
    """An access token signed with an instance's JWT secret; exp in 10 minutes."""
    claims.setdefault("exp", int(time.time()) + 600)
    return jwt.encode(claims, secret, algorithm="HS256")


def multi_env(workdir, db_env, smtp_port=None, **settings):
    """A multi-instance server's environment: no global site URL nor JWT secret."""
    settings = {"GOTRUE_MULTIINSTANCEMODE": "true", "GOTRUE_OPERATOR_TOKEN": OPERATOR,
                "GOTRUE_API_ENDPOINT": ENDPOINT, "GOTRUE_JWT_SECRET": None, "GOTRUE_SITE_URL": None, **settings}
    return base_env(str(workdir), db_env, smtp_port, **settings)


def database_of(env):
    """Direct database access for server.sql, read without the multi-instance switch so that
    it never depends on how gotrue.Config judges the rest of the environment."""
    return gotrue.Database(gotrue.Config({k: v for k, v in env.items() if k != "GOTRUE_MULTIINSTANCEMODE"}))


def start(workdir, env, command=()):
    """A gotrue.py process (`python gotrue.py [command]`) answering /health."""
    server = Server(str(workdir), env)
    server._db = database_of(env)
    if not command:
        return server.start()
    with open(server.log_path, "ab") as log:
        server.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "gotrue.py"), *command], cwd=str(workdir),
                                       env=env, stdout=log, stderr=subprocess.STDOUT)

    def up():
        if server.proc.poll() is not None:
            raise AssertionError(f"gotrue.py exited with {server.proc.returncode}:\n{server.log()}")
        try:
            return server.http.get(server.url + "/health", timeout=1).status_code == 200
        except Exception:
            return False
    wait_until(up, "gotrue.py multi to answer /health")
    return server


def site_config(mailbox, name, **extra):
    """An instance config whose mail goes to the test mailbox through the instance's own SMTP
    settings (the servers here have no global SMTP)."""
    config = {"site_url": f"https://{name}.example.com",
              "jwt": {"secret": secrets.token_hex(32), "aud": f"aud-{name}"},
              "smtp": {"host": "127.0.0.1", "port": mailbox.port, "admin_email": f"noreply@{name}.example.com"},
              "mailer": {"subjects": {"confirmation": f"Welcome to {name}: confirm"}}}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


class Site(Verbs):
    """One instance of a multi-instance server; its requests carry its x-nf-sign."""

    def __init__(self, server, body, config):
        self.server, self.body, self.config = server, body, config
        self.id, self.uuid = body["id"], body["uuid"]
        self.secret = config["jwt"]["secret"]
        self.aud = config["jwt"].get("aud", "")
        self.site_url = config["site_url"]
        self.subject = config.get("mailer", {}).get("subjects", {}).get("confirmation", "Confirm Your Signup")

    def sign(self, **claims):
        return sign({"id": self.id, **claims})

    def request(self, method, path, token=None, headers=None, **kw):
        headers = {"x-nf-sign": self.sign(), **(headers or {})}
        return self.server.request(method, path, token=token, headers=headers, **kw)


    def signup(self, email=None, password="secret-pw", **kw):
        email = email or unique_email()
        r = self.post("/signup", json={"email": email, "password": password}, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def login(self, email, password="secret-pw", **kw):
        r = self.post("/token", data={"grant_type": "password", "username": email, "password": password}, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def refresh(self, token, **kw):
        return self.post("/token", data={"grant_type": "refresh_token", "refresh_token": token}, **kw)

    def db_token(self, email, column="confirmation_token"):
        rows = self.server.sql(f"SELECT {column} FROM {{users}} WHERE instance_id = ? AND email = ?", self.id, email)
        assert len(rows) == 1, rows
        return rows[0][column]

    def confirmed_user(self, email=None, password="secret-pw"):
        """Signed up and confirmed through the database token; logged in."""
        user = self.signup(email, password)
        r = self.post("/verify", json={"type": "signup", "token": self.db_token(user["email"])})
        assert r.status_code == 200, r.text
        return SimpleNamespace(id=user["id"], email=user["email"], **self.login(user["email"], password))

    def admin(self):
        """A confirmed user with the admin role in this instance's audience, logged in."""
        email = unique_email("admin")
        user = self.signup(email, "admin-pw")
        assert self.server.sql("UPDATE {users} SET role = 'admin', confirmed_at = ? WHERE instance_id = ? AND id = ?",
                               gotrue.now(), self.id, user["id"]) == 1
        return SimpleNamespace(id=user["id"], email=email, token=self.login(email, "admin-pw")["access_token"])

    def mail_link_token(self, mailbox, email, kind, count=1, site_url=None, subject=None):
        """The token of the count-th mail to `email`, whose link must be on this instance's site."""
        msg = mailbox.wait_for(email, count)
        if subject:
            assert msg["Subject"] == subject
        token = link_token(msg, kind)
        assert f'href="{site_url or self.site_url}/#{kind}_token={token}"' in mail_html(msg), mail_html(msg)
        return msg, token


def create(server, config, instance_uuid=None):
    r = server.post("/instances", headers=op(), json={"uuid": instance_uuid or str(uuid.uuid4()), "config": config})
    assert r.status_code == 201, r.text
    return Site(server, r.json(), config)


def get_instance(server, site_id, show_secrets=False):
    r = server.get(f"/instances/{site_id}", headers=op(), params={"show_secrets": "true"} if show_secrets else None)
    assert r.status_code == 200, r.text
    return r.json()


def stored_config(server, site_id):
    rows = server.sql("SELECT raw_base_config FROM {instances} WHERE id = ?", site_id)
    assert len(rows) == 1
    return json.loads(rows[0]["raw_base_config"])


def count(server, table, site_id):
    return server.sql(f"SELECT COUNT(*) AS n FROM {{{table}}} WHERE instance_id = ?", site_id)[0]["n"]


# --- fixtures --------------------------------------------------------------------------------

def database_env(engine, workdir, request):
    if engine == "sqlite":
        return {"GOTRUE_DB_DRIVER": "sqlite", "DATABASE_URL": str(workdir / f"gt-{uuid.uuid4().hex[:8]}.db")}
    root = request.getfixturevalue("mariadb_root")
    return {"GOTRUE_DB_DRIVER": "mysql", "DATABASE_URL": create_database(root, "gt_" + uuid.uuid4().hex[:12])}


@pytest.fixture(scope="module")
def multi(engine, tmp_path_factory, request):
    """One multi-instance server per engine for the module (no global SMTP: each instance
    brings its own); tests make their own instances."""
    workdir = tmp_path_factory.mktemp("multi")
    env = multi_env(workdir, database_env(engine, workdir, request))
    migrate(env, str(workdir))
    srv = start(workdir, env)
    yield srv
    srv.stop()


@pytest.fixture
def fresh(engine, tmp_path, request):
    """fresh(**settings) -> a new database and a multi-instance server on it; .more(server)
    starts another process on the same database."""
    started = []

    def make(smtp_port=None, command=(), **settings):
        workdir = tmp_path / f"multi{len(started)}"
        workdir.mkdir()
        env = multi_env(workdir, database_env(engine, tmp_path, request), smtp_port, **settings)
        migrate(env, str(workdir))
        started.append(start(workdir, env, command))
        return started[-1]

    def more(server):
        workdir = tmp_path / f"multi{len(started)}"
        workdir.mkdir()
        started.append(start(workdir, {**server.env, "PORT": str(free_port())}))
        return started[-1]
    make.more = more
    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def pair(multi, mailbox):
    """Two instances A and B of one server: other JWT secrets, audiences, sites, senders and
    confirmation subjects; both mail through the test mailbox."""
    return create(multi, site_config(mailbox, "alpha", jwt={"exp": 1800})), create(multi, site_config(mailbox, "beta"))


# --- starting --------------------------------------------------------------------------------

@pytest.mark.parametrize("command, settings", [
    (["multi"], {}),
    (["multi"], {"GOTRUE_OPERATOR_TOKEN": ""}),
    ([], {"GOTRUE_MULTIINSTANCEMODE": "true"}),
    (["serve"], {"GOTRUE_MULTIINSTANCEMODE": "true"}),
], ids=["multi", "multi-empty-token", "default-command", "serve"])
def test_multi_mode_refuses_to_start_without_the_operator_token(engine, tmp_path, request, command, settings):
    env = base_env(str(tmp_path), database_env(engine, tmp_path, request), None,
                   GOTRUE_JWT_SECRET=None, GOTRUE_SITE_URL=None)
    migrate(env, str(tmp_path))  # a migrated database: the missing token is the only reason to refuse
    result = subprocess.run([sys.executable, os.path.join(ROOT, "gotrue.py"), *command], cwd=str(tmp_path),
                            env={**env, **settings}, capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 1, result.stdout + result.stderr
    assert REFUSED in result.stderr.splitlines(), result.stderr
    assert not os.path.exists(tmp_path / ".env"), "no JWT secret is generated in multi-instance mode"


def test_the_multi_command_serves_instances(fresh, mailbox):
    """`gotrue.py multi` switches multi-instance mode on without GOTRUE_MULTIINSTANCEMODE."""
    server = fresh(command=["multi"], GOTRUE_MULTIINSTANCEMODE=None)
    check_error(server.get("/settings"), 400, "Operator microservice headers missing")
    site = create(server, site_config(mailbox, "cmd"))
    r = site.get("/settings")
    assert r.status_code == 200 and r.json()["disable_signup"] is False
    assert not os.path.exists(os.path.join(server.workdir, ".env")), "no JWT secret is generated"


def test_no_global_jwt_secret_is_generated(multi):
    assert not os.path.exists(os.path.join(multi.workdir, ".env"))
    assert "GOTRUE_JWT_SECRET was not set" not in multi.log()


def test_single_instance_mode_has_no_operator_routes(make_server, engine):
    server = make_server(engine, GOTRUE_OPERATOR_TOKEN=OPERATOR)
    for method, path in (("GET", f"/instances/{uuid.uuid4()}"), ("POST", "/instances"),
                         ("PUT", f"/instances/{uuid.uuid4()}"), ("DELETE", f"/instances/{uuid.uuid4()}")):
        r = server.request(method, path, headers=op(), json={"config": {}})
        assert r.status_code == 404 and r.json()["code"] == 404, (method, path, r.text)
    # and needs no x-nf-sign
    assert server.post("/signup", json={"email": unique_email(), "password": "pw"}).status_code == 200


# --- the operator API ------------------------------------------------------------------------

def operator_routes(site_id):
    return [("GET", "/", None), ("POST", "/instances", {"uuid": str(uuid.uuid4()), "config": {}}),
            ("GET", f"/instances/{site_id}", None), ("PUT", f"/instances/{site_id}", {"config": {"disable_signup": True}}),
            ("DELETE", f"/instances/{site_id}", None)]


def test_operator_routes_need_the_operator_token(multi, mailbox):
    site = create(multi, site_config(mailbox, "guarded"))
    user = site.confirmed_user()
    before = multi.sql("SELECT COUNT(*) AS n FROM {instances}")[0]["n"]
    credentials = [({}, NO_BEARER),
                   ({"Authorization": "Basic b3BlcmF0b3I6eA=="}, NO_BEARER),
                   ({"Authorization": f"Bearer  {OPERATOR}"}, NO_BEARER),
                   ({"Authorization": "Bearer wrong-token"}, NOT_OPERATOR),
                   ({"Authorization": f"Bearer {OPERATOR}x"}, NOT_OPERATOR),
                   ({"Authorization": f"Bearer {user.access_token}"}, NOT_OPERATOR),
                   ({"x-nf-sign": site.sign()}, NO_BEARER),
                   ({"Authorization": f"Bearer {site.sign()}"}, NOT_OPERATOR)]
    for method, path, body in operator_routes(site.id):
        for headers, msg in credentials:
            check_error(multi.request(method, path, headers=headers, json=body), 401, msg)
    # nothing happened: no instance made, none changed or deleted
    assert multi.sql("SELECT COUNT(*) AS n FROM {instances}")[0]["n"] == before
    assert get_instance(multi, site.id)["config"].get("disable_signup") in (False, None)
    assert site.get("/settings").json()["disable_signup"] is False


def test_root_answers_like_health_for_the_operator(multi):
    r = multi.get("/", headers=op())
    assert r.status_code == 200 and r.json() == multi.get("/health").json()
    assert set(r.json()) >= {"name", "description", "version"}


def test_create_read_delete_an_instance(multi, mailbox):
    site_uuid = str(uuid.uuid4())
    config = site_config(mailbox, "crud")
    r = multi.post("/instances", headers=op(), json={"uuid": site_uuid, "config": config, "ignored": 1})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "uuid", "config", "created_at", "updated_at", "endpoint", "state"}
    assert body["uuid"] == site_uuid and body["endpoint"] == ENDPOINT and body["state"] == "active"
    assert str(uuid.UUID(body["id"])) == body["id"] and body["id"] != site_uuid
    assert TIME.fullmatch(body["created_at"]) and TIME.fullmatch(body["updated_at"])
    assert body["config"]["site_url"] == config["site_url"]
    assert body["config"]["smtp"]["admin_email"] == "noreply@crud.example.com"
    assert body["config"]["jwt"]["secret"] == MASK
    # stored as upstream does: one row with the config as JSON text
    assert stored_config(multi, body["id"])["jwt"]["secret"] == config["jwt"]["secret"]
    row = multi.sql("SELECT uuid FROM {instances} WHERE id = ?", body["id"])[0]
    assert row["uuid"] == site_uuid

    got = get_instance(multi, body["id"])
    assert set(got) == {"id", "uuid", "config", "created_at", "updated_at"}
    assert (got["id"], got["uuid"], got["created_at"]) == (body["id"], site_uuid, body["created_at"])
    assert got["config"]["site_url"] == config["site_url"] and got["config"]["jwt"]["aud"] == "aud-crud"

    # another instance with that uuid is refused
    r = multi.post("/instances", headers=op(), json={"uuid": site_uuid, "config": site_config(mailbox, "dup")})
    check_error(r, 400, "An instance with that UUID already exists")
    assert len(multi.sql("SELECT id FROM {instances} WHERE uuid = ?", site_uuid)) == 1

    r = multi.delete(f"/instances/{body['id']}", headers=op())
    assert r.status_code == 204 and r.content == b""
    check_error(multi.get(f"/instances/{body['id']}", headers=op()), 404, "Instance not found")
    assert multi.sql("SELECT id FROM {instances} WHERE id = ?", body["id"]) == []
    # the uuid is free again
    assert multi.post("/instances", headers=op(), json={"uuid": site_uuid, "config": config}).status_code == 201


def test_an_omitted_uuid_is_the_nil_uuid_and_can_be_used_once(multi, mailbox):
    r = multi.post("/instances", headers=op(), json={"config": site_config(mailbox, "nil")})
    assert r.status_code == 201, r.text
    assert r.json()["uuid"] == NIL
    r = multi.post("/instances", headers=op(), json={"config": site_config(mailbox, "nil2")})
    check_error(r, 400, "An instance with that UUID already exists")


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1]", b'{"uuid": 5, "config": %s}', b'{"uuid": "site-1", "config": %s}'],
                         ids=["malformed", "empty", "array", "uuid-number", "uuid-not-a-uuid"])
def test_create_with_an_undecodable_body_is_400(multi, mailbox, raw):
    """Upstream decodes the body into its struct (uuid a UUID): anything else is a 400."""
    if b"%s" in raw:
        raw = raw % json.dumps(site_config(mailbox, "undecodable")).encode()
    before = multi.sql("SELECT COUNT(*) AS n FROM {instances}")[0]["n"]
    r = multi.post("/instances", headers=op(**{"Content-Type": "application/json"}), data=raw)
    check_error(r, 400, "Error decoding params: *")
    assert multi.sql("SELECT COUNT(*) AS n FROM {instances}")[0]["n"] == before


def test_create_with_a_config_that_is_no_object_is_422(multi):
    site_uuid = str(uuid.uuid4())
    r = multi.post("/instances", headers=op(), json={"uuid": site_uuid, "config": "text"})
    check_error(r, 422, "config: *")
    assert multi.sql("SELECT id FROM {instances} WHERE uuid = ?", site_uuid) == []


def test_concurrent_creates_with_one_uuid_make_one_instance(multi, mailbox):
    """"uuid already used -> 400" holds for concurrent requests too (three rounds of eight)."""
    for _ in range(3):
        site_uuid = str(uuid.uuid4())
        configs = [site_config(mailbox, f"race{i}") for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(len(configs)) as pool:
            answers = list(pool.map(
                lambda c: multi.post("/instances", headers=op(), json={"uuid": site_uuid, "config": c}), configs))
        assert sorted(r.status_code for r in answers) == [201] + [400] * 7, [r.text[:60] for r in answers]
        for r in answers:
            if r.status_code == 400:
                check_error(r, 400, "An instance with that UUID already exists")
        assert len(multi.sql("SELECT id FROM {instances} WHERE uuid = ?", site_uuid)) == 1


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_bad_and_unknown_instance_ids(multi, method):
    for bad in ("not-a-uuid", "1234", "0000000000-bad"):
        check_error(multi.request(method, f"/instances/{bad}", headers=op(), json={"config": {}}),
                    400, "Invalid instance ID")
    check_error(multi.request(method, f"/instances/{uuid.uuid4()}", headers=op(), json={"config": {}}),
                404, "Instance not found")


# --- PUT: merging, secrets, validation -------------------------------------------------------

@pytest.fixture
def rich(multi):
    """An instance with something in every nested block, and a confirmed user."""
    config = {"site_url": "https://rich.example.com",
              "jwt": {"secret": secrets.token_hex(32), "exp": 1200, "aud": "aud-rich", "default_group_name": "member"},
              "smtp": {"host": "smtp.rich.example.com", "port": 2525, "user": "mailer", "pass": "smtp-pass-1",
                       "admin_email": "noreply@rich.example.com", "max_frequency": 60 * NS},
              "mailer": {"autoconfirm": True, "subjects": {"confirmation": "C1", "recovery": "R1"},
                         "url_paths": {"confirmation": "/confirm"}, "confirmation_max_age": 3600 * NS},
              "external": {"github": {"enabled": True, "client_id": "gh-id", "secret": "gh-secret",
                                      "redirect_uri": "https://rich.example.com/.netlify/identity/callback"}},
              "webhook": {"url": "https://hooks.rich.example.com/in", "secret": "hook-secret",
                          "events": ["usermodified", "userdeleted"]}}  # none fires in these tests
    site = create(multi, config)
    email = unique_email()
    user = site.signup(email)  # autoconfirm: no mail
    assert user["confirmed_at"]
    site.user = SimpleNamespace(id=user["id"], email=email)
    return site


def put_config(site, config, **params):
    return site.server.put(f"/instances/{site.id}", headers=op(), json={"config": config}, params=params or None)


def mine(site, secret):
    """A token of the site's user minted with `secret`: 200 on /user while that is the key."""
    return mint(secret, sub=site.user.id, aud=site.aud, email=site.user.email)


def test_put_merges_nested_members_and_replaces_lists(rich):
    r = put_config(rich, {"jwt": {"exp": 7200}, "mailer": {"subjects": {"confirmation": "C2"}},
                          "webhook": {"events": ["validate"]}, "disable_signup": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "uuid", "config", "created_at", "updated_at"}
    assert body["id"] == rich.id and body["uuid"] == rich.uuid
    for config in (body["config"], get_instance(rich.server, rich.id)["config"]):
        assert config["jwt"]["exp"] == 7200
        assert config["jwt"]["aud"] == "aud-rich" and config["jwt"]["default_group_name"] == "member"
        assert config["jwt"]["secret"] == MASK
        assert config["mailer"]["subjects"]["confirmation"] == "C2"
        assert config["mailer"]["subjects"]["recovery"] == "R1"
        assert config["mailer"]["url_paths"]["confirmation"] == "/confirm"
        assert config["mailer"]["autoconfirm"] is True
        assert config["mailer"]["confirmation_max_age"] == 3600 * NS
        assert config["webhook"]["events"] == ["validate"]
        assert config["webhook"]["url"] == "https://hooks.rich.example.com/in"
        assert config["smtp"]["host"] == "smtp.rich.example.com" and config["smtp"]["port"] == 2525
        assert config["smtp"]["max_frequency"] == 60 * NS
        assert config["external"]["github"]["client_id"] == "gh-id"
        assert config["site_url"] == "https://rich.example.com" and config["disable_signup"] is True
        assert "pass" not in config["smtp"]
    stored = stored_config(rich.server, rich.id)
    assert stored["jwt"]["secret"] == rich.secret and stored["smtp"]["pass"] == "smtp-pass-1"
    assert stored["webhook"]["events"] == ["validate"] and stored["mailer"]["subjects"]["recovery"] == "R1"
    # the change is in effect for the instance's requests (within a second)
    wait_until(lambda: rich.get("/settings").json()["disable_signup"] is True, "disable_signup to apply")
    check_error(rich.post("/signup", json={"email": unique_email(), "password": "pw"}), 403,
                "Signups not allowed for this instance")
    tokens = rich.login(rich.user.email)
    assert tokens["expires_in"] == 7200


def test_smtp_password_is_never_shown_kept_when_omitted_and_cleared_by_empty(rich):
    for shown in (get_instance(rich.server, rich.id), get_instance(rich.server, rich.id, show_secrets=True)):
        assert "pass" not in shown["config"]["smtp"]
        assert "smtp-pass-1" not in json.dumps(shown)
    r = put_config(rich, {"smtp": {"host": "smtp2.rich.example.com"}})
    assert r.status_code == 200 and "pass" not in r.json()["config"]["smtp"]
    assert stored_config(rich.server, rich.id)["smtp"]["pass"] == "smtp-pass-1"
    r = put_config(rich, {"smtp": {"pass": ""}})
    assert r.status_code == 200, r.text
    stored = stored_config(rich.server, rich.id)
    assert not stored["smtp"].get("pass")
    assert stored["smtp"]["host"] == "smtp2.rich.example.com" and stored["smtp"]["user"] == "mailer"


def test_secrets_are_masked_unless_asked_and_the_mask_sent_back_keeps_them(rich):
    masked = get_instance(rich.server, rich.id)["config"]
    assert masked["jwt"]["secret"] == MASK
    assert masked["webhook"]["secret"] == MASK
    assert masked["external"]["github"]["secret"] == MASK
    text = json.dumps(get_instance(rich.server, rich.id))
    for secret in (rich.secret, "hook-secret", "gh-secret"):
        assert secret not in text
    shown = get_instance(rich.server, rich.id, show_secrets=True)["config"]
    assert shown["jwt"]["secret"] == rich.secret
    assert shown["webhook"]["secret"] == "hook-secret"
    assert shown["external"]["github"]["secret"] == "gh-secret"
    assert rich.get("/user", token=mine(rich, rich.secret)).status_code == 200

    # an operator UI's round trip: the whole masked config sent back, one member changed
    masked["site_url"] = "https://rich2.example.com"
    r = put_config(rich, masked)
    assert r.status_code == 200, r.text
    assert r.json()["config"]["jwt"]["secret"] == MASK and r.json()["config"]["site_url"] == "https://rich2.example.com"
    shown = get_instance(rich.server, rich.id, show_secrets=True)["config"]
    assert shown["jwt"]["secret"] == rich.secret
    assert shown["webhook"]["secret"] == "hook-secret"
    assert shown["external"]["github"]["secret"] == "gh-secret"
    assert stored_config(rich.server, rich.id)["smtp"]["pass"] == "smtp-pass-1"
    # tokens minted with the stored key still validate: the key really is unchanged
    wait_until(lambda: get_instance(rich.server, rich.id)["config"]["site_url"] == "https://rich2.example.com",
               "the change to be stored")
    r = rich.get("/user", token=mine(rich, rich.secret))
    assert r.status_code == 200 and r.json()["id"] == rich.user.id
    assert rich.get("/user", token=mine(rich, MASK)).status_code == 401
    login = rich.login(rich.user.email)["access_token"]
    jwt.decode(login, rich.secret, algorithms=["HS256"], options={"verify_aud": False})


def test_a_new_jwt_secret_takes_over(rich):
    old, new = rich.secret, secrets.token_hex(32)
    r = put_config(rich, {"jwt": {"secret": new}}, show_secrets="true")
    assert r.status_code == 200 and r.json()["config"]["jwt"]["secret"] == new
    wait_until(lambda: rich.get("/user", token=mine(rich, old)).status_code == 401, "the old key to stop working")
    check_error(rich.get("/user", token=mine(rich, old)), 401, "Invalid token: *")
    assert rich.get("/user", token=mine(rich, new)).status_code == 200
    jwt.decode(rich.login(rich.user.email)["access_token"], new, algorithms=["HS256"], options={"verify_aud": False})


def test_the_mask_never_becomes_a_secret(multi, mailbox):
    """"<set>" stands for a stored secret; where none is stored it keeps that (nothing) or is
    refused, naming the member: it never becomes a key that everybody knows."""
    site = create(multi, site_config(mailbox, "nomask"))
    r = put_config(site, {"webhook": {"url": "https://hooks.nomask.example.com/", "secret": MASK},
                          "external": {"gitlab": {"secret": MASK}}})
    if r.status_code == 422:
        assert r.json()["msg"].startswith(("config.webhook.secret: ", "config.external.gitlab.secret: ")), r.text
    else:
        assert r.status_code == 200, r.text
        stored = stored_config(multi, site.id)
        assert stored["webhook"].get("secret", "") == "" and stored["external"]["gitlab"].get("secret", "") == ""
        assert stored["webhook"]["url"] == "https://hooks.nomask.example.com/"
    # a new instance from a copied (masked) config: its JWT key would be "<set>", and a token
    # with sub "0" signed with it a super admin
    config = site_config(mailbox, "copied")
    config["jwt"]["secret"] = MASK
    site_uuid = str(uuid.uuid4())
    r = multi.post("/instances", headers=op(), json={"uuid": site_uuid, "config": config})
    check_error(r, 422, "config.jwt.secret: *")
    assert multi.sql("SELECT id FROM {instances} WHERE uuid = ?", site_uuid) == []


def test_concurrent_puts_of_different_members_all_stick(rich):
    changes = [{"jwt": {"default_group_name": "reader"}}, {"smtp": {"admin_email": "new@rich.example.com"}},
               {"mailer": {"subjects": {"invite": "I2"}}}, {"mailer": {"url_paths": {"recovery": "/reset"}}},
               {"webhook": {"retries": 7}}, {"cookies": {"duration": 600}}, {"jwt": {"exp": 900}},
               {"mailer": {"subjects": {"email_change": "E2"}}}]
    with concurrent.futures.ThreadPoolExecutor(len(changes)) as pool:
        statuses = list(pool.map(lambda c: put_config(rich, c).status_code, changes))
    assert statuses == [200] * len(changes)
    config = stored_config(rich.server, rich.id)
    assert config["jwt"]["default_group_name"] == "reader" and config["jwt"]["exp"] == 900
    assert config["smtp"]["admin_email"] == "new@rich.example.com" and config["smtp"]["pass"] == "smtp-pass-1"
    assert config["mailer"]["subjects"] == {"confirmation": "C1", "recovery": "R1", "invite": "I2", "email_change": "E2"}
    assert config["mailer"]["url_paths"]["recovery"] == "/reset" and config["mailer"]["url_paths"]["confirmation"] == "/confirm"
    assert config["webhook"]["retries"] == 7 and config["cookies"]["duration"] == 600


def test_non_ascii_config_is_kept_and_used(multi, mailbox):
    """The instances table is utf8 (3 bytes) on MySQL, as upstream made it: 4-byte characters
    must still round-trip."""
    subject = "Bestätigen Sie 🎉 ✓"
    site = create(multi, site_config(mailbox, "unicode", mailer={"subjects": {"confirmation": subject}}))
    assert get_instance(multi, site.id)["config"]["mailer"]["subjects"]["confirmation"] == subject
    r = put_config(site, {"smtp": {"admin_email": "noreply@unicode.example.com"},
                          "mailer": {"subjects": {"recovery": "Zurücksetzen 🔑"}}})
    assert r.status_code == 200, r.text
    config = get_instance(multi, site.id)["config"]
    assert config["mailer"]["subjects"] == {"confirmation": subject, "recovery": "Zurücksetzen 🔑"}
    email = unique_email()
    site.signup(email)
    site.mail_link_token(mailbox, email, "confirmation", subject=subject)


@pytest.mark.parametrize("config, msg", [
    ({"jwt": {"exp": "abc"}}, "config.jwt.exp: must be a whole number"),
    ({"jwt": {"exp": 1.5}}, "config.jwt.exp: must be a whole number"),
    ({"smtp": {"max_frequency": "15m"}}, "config.smtp.max_frequency: must be a duration in nanoseconds (integer)"),
    ({"mailer": {"invite_max_age": "168h"}},
     "config.mailer.invite_max_age: must be a duration in nanoseconds (integer)"),
    ({"site_url": "not a url"}, "config.site_url: is not an absolute URL"),
    ({"jwt": {"secret": ""}}, "config.jwt.secret: is required"),
    ({"smtp": {"port": "x"}}, "config.smtp.port: *"),
    ({"webhook": {"events": "signup"}}, "config.webhook.events: *"),
    ({"disable_signup": "yes"}, "config.disable_signup: *"),
    ({"jwt": "secret"}, "config.jwt*"),
    ({"mailer": {"subjects": {"confirmation": 5}}}, "config.mailer.subjects.confirmation: *"),
    ({"jwt": {"exp": 60, "aud": "changed"}, "smtp": {"max_frequency": "15m"}},
     "config.smtp.max_frequency: must be a duration in nanoseconds (integer)"),
])
def test_malformed_config_is_422_naming_the_member_and_nothing_is_stored(rich, config, msg):
    before = stored_config(rich.server, rich.id)
    check_error(put_config(rich, config), 422, msg)
    assert stored_config(rich.server, rich.id) == before
    assert get_instance(rich.server, rich.id)["config"]["jwt"]["exp"] == 1200


@pytest.mark.parametrize("change, msg", [
    (lambda c: c["jwt"].pop("secret"), "config.jwt.secret: is required"),
    (lambda c: c["jwt"].update(exp="soon"), "config.jwt.exp: must be a whole number"),
    (lambda c: c.update(site_url="/relative"), "config.site_url: is not an absolute URL"),
    (lambda c: c["smtp"].update(max_frequency="1m"),
     "config.smtp.max_frequency: must be a duration in nanoseconds (integer)"),
])
def test_create_with_malformed_config_is_422_and_creates_nothing(multi, mailbox, change, msg):
    config = site_config(mailbox, "broken")
    change(config)
    site_uuid = str(uuid.uuid4())
    check_error(multi.post("/instances", headers=op(), json={"uuid": site_uuid, "config": config}), 422, msg)
    assert multi.sql("SELECT id FROM {instances} WHERE uuid = ?", site_uuid) == []


def test_unknown_config_members_are_ignored(multi, mailbox):
    config = site_config(mailbox, "extra", sms={"provider": "twilio"}, uri_allow_list=["https://x.example.com"])
    site = create(multi, config)
    assert site.get("/settings").status_code == 200
    assert put_config(site, {"password_min_length": 8, "jwt": {"admin_roles": ["x"]}}).status_code == 200


# --- x-nf-sign -------------------------------------------------------------------------------

def sign_cases(site):
    now = int(time.time())
    unknown = str(uuid.uuid4())
    return {
        "missing": (None, 400, "Operator microservice headers missing"),
        "empty": ("", 400, "Operator microservice headers missing"),
        "forged": (sign({"id": site.id}, key="not-the-operator-token"), 400, BAD_SIGN),
        "instance jwt secret": (sign({"id": site.id}, key=site.secret), 400, BAD_SIGN),
        "expired": (sign({"id": site.id, "exp": now - 60}), 400, BAD_SIGN),
        "not yet valid": (sign({"id": site.id, "nbf": now + 600}), 400, BAD_SIGN),
        "HS512": (sign({"id": site.id}, algorithm="HS512"), 400, BAD_SIGN),
        "alg none": (jwt.encode({"id": site.id}, None, algorithm="none"), 400, BAD_SIGN),
        "not a jwt": ("abc.def.ghi", 400, BAD_SIGN),
        "unknown id": (sign({"id": unknown}), 404, "Unable to locate site configuration"),
        "uuid of the instance": (sign({"id": site.uuid}), 404, "Unable to locate site configuration"),
        "non-uuid id": (sign({"id": "site-1"}), 400, "Instance ID is not a valid UUID"),
        "no id": (sign({"site_url": "https://x.example.com"}), 400, "Instance ID is missing"),
    }


SIGN_KINDS = ["missing", "empty", "forged", "instance jwt secret", "expired", "not yet valid", "HS512", "alg none",
              "not a jwt", "unknown id", "uuid of the instance", "non-uuid id", "no id"]


@pytest.fixture(scope="module")
def signed_site(multi, mailbox):
    site = create(multi, site_config(mailbox, "signed"))
    site.user = site.confirmed_user()
    site.admin_user = site.admin()
    return site


@pytest.mark.parametrize("kind", SIGN_KINDS)
def test_requests_without_a_valid_x_nf_sign_are_refused(multi, signed_site, kind):
    value, status, msg = sign_cases(signed_site)[kind]
    headers = {} if value is None else {"x-nf-sign": value}
    new_email = unique_email("unsigned")
    user, admin = signed_site.user, signed_site.admin_user
    requests_ = [
        ("GET", "/settings", {}, None),
        ("POST", "/signup", {}, {"email": new_email, "password": "pw"}),
        ("POST", "/token", {}, {"grant_type": "password", "username": user.email, "password": "secret-pw"}),
        ("POST", "/token", {}, {"grant_type": "refresh_token", "refresh_token": user.refresh_token}),
        ("GET", "/user", {"Authorization": f"Bearer {user.access_token}"}, None),
        ("PUT", "/user", {"Authorization": f"Bearer {user.access_token}"}, {"data": {"x": 1}}),
        ("POST", "/logout", {"Authorization": f"Bearer {user.access_token}"}, None),
        ("POST", "/verify", {}, {"type": "signup", "token": "abc"}),
        ("POST", "/recover", {}, {"email": user.email}),
        ("GET", "/admin/users", {"Authorization": f"Bearer {admin.token}"}, None),
        ("GET", "/admin/users", {"Authorization": f"Bearer {OPERATOR}"}, None),
        ("POST", "/invite", {"Authorization": f"Bearer {OPERATOR}"}, {"email": new_email}),
        ("GET", "/authorize?provider=github", {}, None),
    ]
    for method, path, more, body in requests_:
        r = multi.request(method, path, headers={**headers, **more}, json=body, allow_redirects=False)
        check_error(r, status, msg)
    assert multi.sql("SELECT id FROM {users} WHERE email = ?", new_email) == []
    # nothing was used up: the refresh token still works, the user is unchanged
    r = signed_site.refresh(user.refresh_token)
    assert r.status_code == 200, r.text
    user.refresh_token = r.json()["refresh_token"]
    assert signed_site.get("/user", token=user.access_token).json()["user_metadata"] == {}


def test_a_valid_x_nf_sign_with_time_claims_is_accepted(signed_site):
    now = int(time.time())
    good = sign({"id": signed_site.id, "exp": now + 600, "iat": now - 5, "nbf": now - 5, "netlify_id": "n-1"})
    r = signed_site.server.get("/settings", headers={"x-nf-sign": good})
    assert r.status_code == 200 and set(r.json()) >= {"external", "disable_signup", "autoconfirm"}
    r = signed_site.server.get("/user", headers={"x-nf-sign": good},
                               token=signed_site.user.access_token)
    assert r.status_code == 200 and r.json()["email"] == signed_site.user.email


def test_routes_outside_the_instances_need_no_x_nf_sign(multi):
    assert multi.get("/health").status_code == 200
    r = multi.get("/openapi.yaml")
    assert r.status_code == 200 and "openapi" in r.text


def test_the_site_url_claim_overrides_the_mail_links(multi, mailbox):
    site = create(multi, site_config(mailbox, "override"))
    preview = "https://deploy-preview-7--override.example.com"
    email = unique_email()
    headers = {"x-nf-sign": site.sign(site_url=preview)}
    assert site.server.post("/signup", json={"email": email, "password": "pw"}, headers=headers).status_code == 200
    _, token = site.mail_link_token(mailbox, email, "confirmation", site_url=preview, subject=site.subject)
    assert site.post("/verify", json={"type": "signup", "token": token}).status_code == 200
    # without the claim, the stored site_url
    other = unique_email()
    site.signup(other)
    site.mail_link_token(mailbox, other, "confirmation")
    assert preview not in mail_html(mailbox.wait_for(other))


# --- two instances side by side --------------------------------------------------------------

def test_two_instances_side_by_side(pair, mailbox):
    a, b = pair
    email = unique_email("both")
    # the same address signs up in both: two users
    user_a = a.signup(email, "pw-in-a")
    msg_a, token_a = a.mail_link_token(mailbox, email, "confirmation", 1, subject=a.subject)
    assert "noreply@alpha.example.com" in msg_a["From"]
    user_b = b.signup(email, "pw-in-b")
    msg_b, token_b = b.mail_link_token(mailbox, email, "confirmation", 2, subject=b.subject)
    assert "noreply@beta.example.com" in msg_b["From"]
    assert user_a["id"] != user_b["id"]
    assert (user_a["aud"], user_b["aud"]) == ("aud-alpha", "aud-beta")
    rows = a.server.sql("SELECT instance_id, id FROM {users} WHERE email = ?", email)
    assert sorted((r["instance_id"], r["id"]) for r in rows) == sorted([(a.id, user_a["id"]), (b.id, user_b["id"])])

    # verify: each link confirms its own instance's user
    r = a.post("/verify", json={"type": "signup", "token": token_a})
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] == 1800
    r = b.post("/verify", json={"type": "signup", "token": token_b})
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] == 3600

    # login: each instance knows its own password, and signs with its own key
    login_a, login_b = a.login(email, "pw-in-a"), b.login(email, "pw-in-b")
    check_grant_error(a.post("/token", data={"grant_type": "password", "username": email, "password": "pw-in-b"}),
                      "No user found with that email, or password invalid.")
    claims_a = jwt.decode(login_a["access_token"], a.secret, algorithms=["HS256"], options={"verify_aud": False})
    claims_b = jwt.decode(login_b["access_token"], b.secret, algorithms=["HS256"], options={"verify_aud": False})
    assert (claims_a["sub"], claims_a["aud"]) == (user_a["id"], "aud-alpha")
    assert (claims_b["sub"], claims_b["aud"]) == (user_b["id"], "aud-beta")
    assert a.get("/user", token=login_a["access_token"]).json()["id"] == user_a["id"]
    assert b.get("/user", token=login_b["access_token"]).json()["id"] == user_b["id"]

    # refresh
    r = a.refresh(login_a["refresh_token"])
    assert r.status_code == 200 and r.json()["expires_in"] == 1800
    r = b.refresh(login_b["refresh_token"])
    assert r.status_code == 200 and r.json()["expires_in"] == 3600
    tokens = a.server.sql("SELECT instance_id, user_id FROM {refresh_tokens} WHERE user_id IN (?, ?)",
                          user_a["id"], user_b["id"])
    assert {(t["instance_id"], t["user_id"]) for t in tokens} == {(a.id, user_a["id"]), (b.id, user_b["id"])}

    # admin: each admin sees its own instance's users only
    admin_a, admin_b = a.admin(), b.admin()
    listed_a = a.get("/admin/users", token=admin_a.token, params={"per_page": 1000})
    listed_b = b.get("/admin/users", token=admin_b.token, params={"per_page": 1000})
    assert listed_a.status_code == 200 and listed_b.status_code == 200
    ids_a = {u["id"] for u in listed_a.json()["users"]}
    ids_b = {u["id"] for u in listed_b.json()["users"]}
    assert listed_a.headers["X-Total-Count"] == str(len(ids_a))
    assert listed_b.headers["X-Total-Count"] == str(len(ids_b))
    assert user_a["id"] in ids_a and user_b["id"] not in ids_a and admin_b.id not in ids_a
    assert user_b["id"] in ids_b and user_a["id"] not in ids_b and admin_a.id not in ids_b
    assert a.get(f"/admin/users/{user_a['id']}", token=admin_a.token).json()["email"] == email
    check_error(a.get(f"/admin/users/{user_b['id']}", token=admin_a.token), 404, "User not found")
    # the operator token is an admin, but only inside the instance the x-nf-sign names
    assert b.get(f"/admin/users/{user_b['id']}", token=OPERATOR).status_code == 200
    check_error(b.get(f"/admin/users/{user_a['id']}", token=OPERATOR), 404, "User not found")
    check_error(b.delete(f"/admin/users/{user_a['id']}", token=OPERATOR), 404, "User not found")
    created = b.post("/admin/users", token=OPERATOR, json={"email": unique_email("by-op"), "password": "pw"})
    assert created.status_code == 200, created.text
    assert a.server.sql("SELECT instance_id FROM {users} WHERE id = ?", created.json()["id"])[0]["instance_id"] == b.id
    assert a.get("/user", token=login_a["access_token"]).status_code == 200
    # audit entries carry their instance
    assert a.server.sql("SELECT COUNT(*) AS n FROM {audit_log_entries} WHERE instance_id = ?", a.id)[0]["n"] > 0
    entries = a.get("/admin/audit", token=admin_a.token)
    assert entries.status_code == 200 and created.json()["email"] not in entries.text


def test_settings_are_per_instance(multi, mailbox):
    on = create(multi, site_config(mailbox, "open"))
    off = create(multi, site_config(mailbox, "closed", disable_signup=True, mailer={"autoconfirm": True}))
    assert on.get("/settings").json()["disable_signup"] is False
    assert off.get("/settings").json()["disable_signup"] is True
    assert off.get("/settings").json()["autoconfirm"] is True and on.get("/settings").json()["autoconfirm"] is False
    check_error(off.post("/signup", json={"email": unique_email(), "password": "pw"}), 403,
                "Signups not allowed for this instance")
    on.signup()


def test_instance_config_gets_upstreams_defaults(multi, mailbox):
    """Spec §1.6: zero values fall back to the defaults when an instance config is loaded."""
    site = create(multi, site_config(mailbox, "zeros", jwt={"exp": 0, "admin_group_name": ""},
                                     mailer={"url_paths": {"confirmation": ""}, "confirmation_max_age": 0},
                                     cookies={"key": "", "duration": 0}))
    email = unique_email()
    site.signup(email)
    _, token = site.mail_link_token(mailbox, email, "confirmation")  # url path "/" (checked by the helper)
    r = site.post("/verify", json={"type": "signup", "token": token}, headers={"X-Use-Cookie": "1"})
    assert r.status_code == 200 and r.json()["expires_in"] == 3600, r.text
    assert r.headers["Set-Cookie"].startswith("nf_jwt=") and "Max-Age=86400" in r.headers["Set-Cookie"]
    admin = site.admin()  # role "admin" is the admin group
    assert site.get("/admin/users", token=admin.token).status_code == 200


def test_an_instance_template_is_read_from_its_site_never_from_the_servers_disk(multi, mailbox, tmp_path):
    """Upstream (spec §5.3) reads mailer.templates.* from SITE_URL + path. An instance config
    naming a file of the server (its .env, /proc/self/environ) must not get it mailed out."""
    marker = "SERVER-FILE-" + secrets.token_hex(8)
    local = tmp_path / "server-side.html"
    local.write_text(f"<p>{marker}</p><a href=\"{{{{ .ConfirmationURL }}}}\">confirm</a>")
    site_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the fetch fails, the default is used
    site = create(multi, site_config(mailbox, "tpl", site_url=site_url,
                                     mailer={"templates": {"confirmation": str(local)}}))
    email = unique_email()
    site.signup(email)
    msg, _ = site.mail_link_token(mailbox, email, "confirmation")
    assert marker not in mail_html(msg)


def test_failed_logins_in_one_instance_do_not_lock_out_another(fresh, mailbox):
    """The per-account back-off is per instance: failures against B's address (same email, same
    audience) say nothing about A's account."""
    server = fresh(GOTRUE_SECURITY_CLIENT_MAX_FAILURES="0")  # only the account back-off
    a = create(server, site_config(mailbox, "victim", jwt={"aud": ""}))
    b = create(server, site_config(mailbox, "attacker", jwt={"aud": ""}))
    user = a.confirmed_user()
    for _ in range(5):
        r = b.post("/token", data={"grant_type": "password", "username": user.email, "password": "guess"})
        check_grant_error(r, "No user found with that email, or password invalid.")
    # hold every back-off that the failures started for an hour, so nothing depends on timing
    later = gotrue.now() + gotrue.dt.timedelta(hours=1)
    assert server.sql("UPDATE {rate_limits} SET blocked_until = ?, expires_at = ? WHERE hits >= 5", later, later) >= 1
    r = b.post("/token", data={"grant_type": "password", "username": user.email, "password": "guess"})
    assert r.status_code == 429, r.text
    assert a.login(user.email)["access_token"]


def test_external_login_lands_in_the_instance_that_started_it(multi, mailbox):
    """/callback carries no x-nf-sign: the OAuth state (signed with the operator token) names
    the instance. One provider account logs into A and into B as two users."""
    fake = SHAPES["github"]()
    try:
        fake.redirect_uri = multi.url + "/callback"
        github = {"enabled": True, "client_id": fake.client_id, "secret": fake.secret,
                  "redirect_uri": fake.redirect_uri, "url": fake.url}
        a = create(multi, site_config(mailbox, "ext-a", external={"github": github}))
        b = create(multi, site_config(mailbox, "ext-b", external={"github": github}))
        assert a.get("/settings").json()["external"]["github"] is True
        preview = "https://deploy-preview-3--ext-a.example.com"
        seen = {}
        for site, sign_value, target in ((a, a.sign(), a.site_url), (b, b.sign(), b.site_url),
                                         (a, a.sign(site_url=preview), preview)):
            browser = requests.Session()  # a browser: its own cookie jar
            r = browser.get(f"{multi.url}/authorize?provider=github", headers={"x-nf-sign": sign_value},
                            allow_redirects=False, timeout=DEADLINE)
            assert r.status_code == 302, r.text
            to_provider = r.headers["Location"]
            assert to_provider.startswith(fake.authorize_url + "?")
            state = dict(urllib_parse.parse_qsl(urllib_parse.urlsplit(to_provider).query))["state"]
            assert jwt.decode(state, OPERATOR, algorithms=["HS256"])["id"] == site.id
            at_provider = browser.get(to_provider, allow_redirects=False, timeout=DEADLINE)
            assert at_provider.status_code == 302
            r = browser.get(at_provider.headers["Location"], allow_redirects=False, timeout=DEADLINE)  # /callback
            assert r.status_code == 302, r.text
            where, _, fragment = r.headers["Location"].partition("#")
            assert where.rstrip("/") == target, r.headers["Location"]
            tokens = dict(urllib_parse.parse_qsl(fragment))
            claims = jwt.decode(tokens["access_token"], site.secret, algorithms=["HS256"],
                                options={"verify_aud": False})
            assert claims["email"] == fake.email and claims["aud"] == site.aud
            me = site.get("/user", token=tokens["access_token"])
            assert me.status_code == 200 and me.json()["app_metadata"]["provider"] == "github"
            seen.setdefault(site.id, set()).add(claims["sub"])
        assert len(seen[a.id]) == 1 and len(seen[b.id]) == 1 and seen[a.id] != seen[b.id]
        rows = multi.sql("SELECT instance_id FROM {users} WHERE email = ?", fake.email)
        assert sorted(r["instance_id"] for r in rows) == sorted([a.id, b.id])
    finally:
        fake.close()


# --- nothing crosses instances ---------------------------------------------------------------

@pytest.fixture
def crossing(pair, mailbox):
    """A's confirmed user (tokens), A's admin, and B."""
    a, b = pair
    a.user = a.confirmed_user()
    a.admin_user = a.admin()
    return a, b


def test_access_tokens_do_not_cross(crossing):
    a, b = crossing
    token = a.user.access_token
    for method, path, body in (("GET", "/user", None), ("PUT", "/user", {"data": {"x": 1}}), ("POST", "/logout", None)):
        check_error(b.request(method, path, token=token, json=body), 401, "Invalid token: *")
        check_error(b.request(method, path, token=token, json=body, headers={"X-JWT-AUD": a.aud}), 401,
                    "Invalid token: *")
    # untouched in A
    r = a.get("/user", token=token)
    assert r.status_code == 200 and r.json()["user_metadata"] == {}
    assert a.refresh(a.user.refresh_token).status_code == 200


def test_refresh_tokens_do_not_cross(crossing):
    a, b = crossing
    check_grant_error(b.refresh(a.user.refresh_token), "Invalid Refresh Token")
    check_grant_error(b.refresh(a.user.refresh_token, headers={"X-JWT-AUD": a.aud}), "Invalid Refresh Token")
    # not revoked by the attempts
    r = a.refresh(a.user.refresh_token)
    assert r.status_code == 200, r.text


def test_mail_tokens_do_not_cross(crossing, mailbox):
    a, b = crossing
    # confirmation
    pending = unique_email("pending")
    a.signup(pending, "pending-pw")
    _, confirmation = a.mail_link_token(mailbox, pending, "confirmation", subject=a.subject)
    check_error(b.post("/verify", json={"type": "signup", "token": confirmation}), 404, "User not found")
    # recovery
    r = a.post("/recover", json={"email": a.user.email})
    assert (r.status_code, r.json()) == (200, {})
    _, recovery = a.mail_link_token(mailbox, a.user.email, "recovery", count=2)
    check_error(b.post("/verify", json={"type": "recovery", "token": recovery}), 404, "User not found")
    # invite
    invitee = unique_email("invitee")
    r = a.post("/invite", token=a.admin_user.token, json={"email": invitee})
    assert r.status_code == 200, r.text
    _, invite = a.mail_link_token(mailbox, invitee, "invite")
    check_error(b.post("/verify", json={"type": "signup", "token": invite, "password": "taken-over"}),
                404, "User not found")
    assert b.server.sql("SELECT id FROM {users} WHERE instance_id = ? AND email IN (?, ?)", b.id, pending,
                        invitee) == []
    # each still works once, in its own instance
    assert a.post("/verify", json={"type": "signup", "token": confirmation}).status_code == 200
    assert a.post("/verify", json={"type": "recovery", "token": recovery}).status_code == 200
    r = a.post("/verify", json={"type": "signup", "token": invite, "password": "invitee-pw"})
    assert r.status_code == 200, r.text
    a.login(invitee, "invitee-pw")
    check_grant_error(b.post("/token", data={"grant_type": "password", "username": invitee,
                                             "password": "invitee-pw"}),
                      "No user found with that email, or password invalid.")


def test_admin_tokens_do_not_cross(crossing, mailbox):
    a, b = crossing
    victim = b.confirmed_user()
    system = mint(a.secret, sub="0", aud=a.aud)
    nil_admin = mint(a.secret, sub=NIL)
    for token in (a.admin_user.token, system, nil_admin):
        for headers in ({}, {"X-JWT-AUD": a.aud}, {"X-JWT-AUD": b.aud}):
            for method, path, body in (("GET", "/admin/users", None),
                                       ("POST", "/admin/users", {"email": unique_email(), "password": "pw"}),
                                       ("GET", f"/admin/users/{victim.id}", None),
                                       ("PUT", f"/admin/users/{victim.id}", {"role": "hacked"}),
                                       ("DELETE", f"/admin/users/{victim.id}", None),
                                       ("GET", "/admin/audit", None),
                                       ("POST", "/invite", {"email": unique_email()})):
                r = b.request(method, path, token=token, headers=headers, json=body)
                check_error(r, 401, "Invalid token: *")
    # an aud member in the body does not help either
    r = b.post("/admin/users", token=a.admin_user.token, json={"email": unique_email(), "password": "pw",
                                                              "aud": a.aud})
    check_error(r, 401, "Invalid token: *")
    row = b.server.sql("SELECT role FROM {users} WHERE id = ?", victim.id)
    assert row and row[0]["role"] == ""
    assert b.get("/user", token=victim.access_token).status_code == 200
    # the same tokens are admins at home
    assert a.get("/admin/users", token=a.admin_user.token).status_code == 200
    assert a.get("/admin/users", token=system).status_code == 200


def test_an_address_taken_in_one_instance_is_free_in_another(crossing, mailbox):
    a, b = crossing
    r = b.post("/invite", token=OPERATOR, json={"email": a.user.email})
    assert r.status_code == 200, r.text
    _, token = b.mail_link_token(mailbox, a.user.email, "invite", count=2)  # #1: A's confirmation
    r = b.post("/verify", json={"type": "signup", "token": token, "password": "b-pw"})
    assert r.status_code == 200, r.text
    b.login(a.user.email, "b-pw")
    a.login(a.user.email)  # A's account and password untouched
    check_grant_error(a.post("/token", data={"grant_type": "password", "username": a.user.email,
                                             "password": "b-pw"}),
                      "No user found with that email, or password invalid.")
    r = b.post("/admin/users", token=OPERATOR, json={"email": a.admin_user.email, "password": "pw"})
    assert r.status_code == 200, r.text


def test_an_audience_of_one_instance_means_nothing_in_another(crossing):
    """X-JWT-AUD picks an audience inside the signed instance: B's user in audience aud-alpha
    is not one of A's users, and A's admin of aud-alpha cannot see it."""
    a, b = crossing
    email = unique_email("aud")
    in_a = a.signup(email)
    in_b = b.signup(email, headers={"X-JWT-AUD": a.aud})
    assert in_b["aud"] == a.aud and in_b["id"] != in_a["id"]
    listed = a.get("/admin/users", token=a.admin_user.token, headers={"X-JWT-AUD": a.aud},
                   params={"per_page": 1000}).json()["users"]
    assert [u["id"] for u in listed if u["email"] == email] == [in_a["id"]]
    check_error(a.get(f"/admin/users/{in_b['id']}", token=a.admin_user.token, headers={"X-JWT-AUD": a.aud}),
                404, "User not found")


def test_a_shared_jwt_secret_does_not_bridge_instances(multi, mailbox):
    """Two instances with one JWT secret and audience (an operator's mistake): every lookup
    is still scoped to the instance the x-nf-sign names."""
    shared = secrets.token_hex(32)
    a = create(multi, site_config(mailbox, "left", jwt={"secret": shared, "aud": "shared"}))
    c = create(multi, site_config(mailbox, "right", jwt={"secret": shared, "aud": "shared"}))
    user, admin = a.confirmed_user(), a.admin()
    r = c.get("/user", token=user.access_token)
    assert r.status_code in (401, 404) and user.email not in r.text, r.text
    r = c.put("/user", token=user.access_token, json={"data": {"from": "right"}})
    assert r.status_code in (401, 404) and user.email not in r.text, r.text
    assert c.post("/logout", token=user.access_token).status_code in (401, 404)
    check_grant_error(c.refresh(user.refresh_token), "Invalid Refresh Token")
    for headers in ({}, {"X-JWT-AUD": "shared"}):
        check_error(c.get("/admin/users", token=admin.token, headers=headers), 401, "Invalid admin user")
        check_error(c.post("/invite", token=admin.token, headers=headers, json={"email": unique_email()}), 401,
                    "Invalid admin user")
    pending = a.signup()
    check_error(c.post("/verify", json={"type": "signup", "token": a.db_token(pending["email"])}), 404,
                "User not found")
    # A's user is unchanged, its refresh token was neither used nor revoked
    me = a.get("/user", token=user.access_token).json()
    assert me["user_metadata"] == {}
    assert a.refresh(user.refresh_token).status_code == 200


# --- deleting an instance --------------------------------------------------------------------

def test_deleting_an_instance_removes_its_users_and_tokens_only(pair):
    a, b = pair
    users_a = [a.confirmed_user() for _ in range(2)]
    user_b = b.confirmed_user()
    assert count(a.server, "users", a.id) == 2 and count(a.server, "refresh_tokens", a.id) >= 2
    users_b, tokens_b = count(b.server, "users", b.id), count(b.server, "refresh_tokens", b.id)
    audit_a = count(a.server, "audit_log_entries", a.id)
    assert audit_a > 0

    r = a.server.delete(f"/instances/{a.id}", headers=op())
    assert r.status_code == 204, r.text
    assert count(a.server, "users", a.id) == 0
    assert count(a.server, "refresh_tokens", a.id) == 0
    assert a.server.sql("SELECT id FROM {users} WHERE id IN (?, ?)", users_a[0].id, users_a[1].id) == []
    assert count(a.server, "audit_log_entries", a.id) == audit_a  # the audit log stays
    assert count(b.server, "users", b.id) == users_b and count(b.server, "refresh_tokens", b.id) == tokens_b
    check_error(a.server.get(f"/instances/{a.id}", headers=op()), 404, "Instance not found")
    wait_until(lambda: a.get("/settings").status_code == 404, "the deleted instance to be gone")
    check_error(a.post("/token", data={"grant_type": "refresh_token", "refresh_token": users_a[0].refresh_token}),
                404, "Unable to locate site configuration")
    # B carries on
    assert b.get("/user", token=user_b.access_token).status_code == 200
    assert b.refresh(user_b.refresh_token).status_code == 200
    b.login(user_b.email)
    check_error(a.server.delete(f"/instances/{a.id}", headers=op()), 404, "Instance not found")


# --- several processes on one database -------------------------------------------------------

def test_a_config_change_through_one_process_is_seen_by_another(fresh, mailbox):
    one = fresh()
    two = fresh.more(one)
    site = create(one, site_config(mailbox, "shared-db"))
    there = Site(two, site.body, site.config)  # the same instance, through process two
    assert there.get("/settings").json()["disable_signup"] is False
    first = unique_email()
    there.signup(first)
    there.mail_link_token(mailbox, first, "confirmation", subject=site.subject)

    r = put_config(site, {"disable_signup": True})
    assert r.status_code == 200, r.text
    wait_until(lambda: there.get("/settings").json()["disable_signup"] is True,
               "process two to see disable_signup")
    check_error(there.post("/signup", json={"email": unique_email(), "password": "pw"}), 403,
                "Signups not allowed for this instance")

    r = put_config(site, {"disable_signup": False, "site_url": "https://moved.example.com",
                          "mailer": {"subjects": {"confirmation": "Moved: confirm"}}})
    assert r.status_code == 200, r.text
    wait_until(lambda: there.get("/settings").json()["disable_signup"] is False,
               "process two to see signups enabled again")
    second = unique_email()
    there.signup(second)
    there.mail_link_token(mailbox, second, "confirmation", site_url="https://moved.example.com",
                          subject="Moved: confirm")

    # a new key through process one: process two verifies with it
    user = there.confirmed_user()
    new = secrets.token_hex(32)
    assert put_config(site, {"jwt": {"secret": new}}).status_code == 200
    minted = mint(new, sub=user.id, aud=site.aud)
    wait_until(lambda: there.get("/user", token=minted).status_code == 200, "process two to use the new key")
    check_error(there.get("/user", token=user.access_token), 401, "Invalid token: *")

    # deleted through process one: gone in process two
    assert one.delete(f"/instances/{site.id}", headers=op()).status_code == 204
    wait_until(lambda: there.get("/settings").status_code == 404, "process two to lose the instance")
    check_error(there.get("/settings"), 404, "Unable to locate site configuration")


def test_an_instance_created_by_one_process_serves_in_another(fresh, mailbox):
    one = fresh()
    two = fresh.more(one)
    site = create(two, site_config(mailbox, "born-in-two"))
    here = Site(one, site.body, site.config)
    user = here.confirmed_user()
    assert site.get("/user", token=user.access_token).json()["id"] == user.id
    assert site.refresh(user.refresh_token).status_code == 200


def test_multi_mode_with_a_table_namespace(fresh, mailbox):
    server = fresh(GOTRUE_DB_NAMESPACE="tenant")
    site = create(server, site_config(mailbox, "namespaced"))
    user = site.confirmed_user()
    assert server.db.names["instances"] == "tenant_instances"
    assert server.sql("SELECT id FROM {instances} WHERE id = ?", site.id) == [{"id": site.id}]
    assert server.sql("SELECT instance_id FROM {users} WHERE id = ?", user.id) == [{"instance_id": site.id}]
    assert put_config(site, {"disable_signup": True}).status_code == 200
    wait_until(lambda: site.get("/settings").json()["disable_signup"] is True, "disable_signup to apply")
    assert server.delete(f"/instances/{site.id}", headers=op()).status_code == 204
    assert server.sql("SELECT id FROM {users} WHERE id = ?", user.id) == []


# --- global SMTP settings as defaults --------------------------------------------------------

def test_global_smtp_settings_are_defaults_under_every_instance(fresh, mailbox):
    server = fresh(smtp_port=mailbox.port)  # GOTRUE_SMTP_HOST/PORT/ADMIN_EMAIL from the environment
    plain = create(server, {"site_url": "https://plain.example.com", "jwt": {"secret": secrets.token_hex(32)}})
    own = create(server, {"site_url": "https://own.example.com", "jwt": {"secret": secrets.token_hex(32)},
                          "smtp": {"admin_email": "hello@own.example.com"}})
    for site, sender in ((plain, "admin@site.example.com"), (own, "hello@own.example.com")):
        email = unique_email()
        site.signup(email)
        msg, _ = site.mail_link_token(mailbox, email, "confirmation", subject="Confirm Your Signup")
        assert sender in msg["From"]


# --- rows written by upstream GoTrue ---------------------------------------------------------

def upstream_config(mailbox, secret):
    """raw_base_config as upstream's Go code writes it: every member present, zero values, Go
    durations as integer nanoseconds, events null, smtp.pass omitted when empty."""
    oauth = {"client_id": "", "secret": "", "redirect_uri": "", "url": "", "enabled": False}
    content = {"invite": "", "confirmation": "", "recovery": "", "email_change": ""}
    return {
        "site_url": "https://upstream.example.org",
        "jwt": {"secret": secret, "exp": 900, "aud": "", "admin_group_name": "admin", "default_group_name": "reader"},
        "smtp": {"max_frequency": 900 * NS, "host": "127.0.0.1", "port": mailbox.port, "user": "",
                 "admin_email": "identity@upstream.example.org"},
        "mailer": {"autoconfirm": False, "subjects": {**content, "confirmation": "Upstream says confirm"},
                   "templates": content, "url_paths": {**content, "confirmation": "/confirm"},
                   "confirmation_max_age": 86400 * NS, "recovery_max_age": 86400 * NS, "invite_max_age": 604800 * NS},
        "external": {"bitbucket": oauth, "github": oauth, "gitlab": oauth, "google": oauth, "facebook": oauth,
                     "email": {"disabled": False},
                     "saml": {"enabled": False, "metadata_url": "", "api_base": "", "name": "", "signing_cert": "",
                              "signing_key": ""},
                     "redirect_url": ""},
        "disable_signup": False,
        "webhook": {"url": "", "retries": 0, "timeout_sec": 0, "secret": "", "events": None},
        "cookies": {"key": "", "duration": 0},
    }


def test_an_instance_row_written_by_upstream_works(multi, mailbox):
    secret = secrets.token_hex(32)
    site_id, site_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = gotrue.now().replace(microsecond=0)
    config = upstream_config(mailbox, secret)
    multi.sql("INSERT INTO {instances} (id, uuid, raw_base_config, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
              site_id, site_uuid, json.dumps(config), stamp, stamp)

    got = get_instance(multi, site_id, show_secrets=True)
    assert (got["id"], got["uuid"]) == (site_id, site_uuid)
    assert got["created_at"] == stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert got["config"]["site_url"] == "https://upstream.example.org" and got["config"]["jwt"]["secret"] == secret
    assert got["config"]["smtp"]["max_frequency"] == 900 * NS
    assert got["config"]["mailer"]["invite_max_age"] == 604800 * NS

    site = Site(multi, got, config)
    assert site.get("/settings").json()["disable_signup"] is False
    email = unique_email("upstream")
    user = site.signup(email)
    assert user["role"] == "reader"
    msg = mailbox.wait_for(email)
    assert msg["Subject"] == "Upstream says confirm" and "identity@upstream.example.org" in msg["From"]
    token = link_token(msg, "confirmation")
    assert f'href="https://upstream.example.org/confirm#confirmation_token={token}"' in mail_html(msg) or \
        f'href="https://upstream.example.org/confirm/#confirmation_token={token}"' in mail_html(msg), mail_html(msg)
    r = site.post("/verify", json={"type": "signup", "token": token}, headers={"X-Use-Cookie": "1"})
    assert r.status_code == 200 and r.json()["expires_in"] == 900, r.text
    # cookies {"key": "", "duration": 0}: upstream's defaults apply (§1.6)
    assert r.headers["Set-Cookie"].startswith(f"nf_jwt={r.json()['access_token']};"), r.headers["Set-Cookie"]
    assert "Max-Age=86400" in r.headers["Set-Cookie"]
    claims = jwt.decode(site.login(email)["access_token"], secret, algorithms=["HS256"], options={"verify_aud": False})
    assert claims["sub"] == user["id"]
    assert multi.sql("SELECT instance_id FROM {users} WHERE id = ?", user["id"])[0]["instance_id"] == site_id

    # a PUT keeps upstream's format: durations stay integer nanoseconds
    assert put_config(site, {"mailer": {"recovery_max_age": 3600 * NS}}).status_code == 200
    stored = stored_config(multi, site_id)
    assert stored["mailer"]["recovery_max_age"] == 3600 * NS and stored["mailer"]["invite_max_age"] == 604800 * NS
    assert isinstance(stored["smtp"]["max_frequency"], int) and stored["smtp"]["max_frequency"] == 900 * NS
    assert stored["jwt"]["secret"] == secret


def test_an_upstream_row_without_config_is_a_500_not_a_crash(multi):
    """Upstream: "Error loading environment config" when the row holds no config."""
    site_id = str(uuid.uuid4())
    multi.sql("INSERT INTO {instances} (id, uuid, raw_base_config, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
              site_id, str(uuid.uuid4()), None, gotrue.now(), gotrue.now())
    r = multi.get("/settings", headers={"x-nf-sign": sign({"id": site_id})})
    assert r.status_code == 500, r.text
    assert r.json()["code"] == 500
    assert r.json()["msg"] in ("Error loading environment config", "Database error loading instance"), r.text
    assert multi.get("/health").status_code == 200
