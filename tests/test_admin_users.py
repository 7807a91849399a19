"""The admin API (/admin/users, /invite's admin check, /admin/users/export): upstream's admin
middleware (spec §2.5), audiences (§3.4-3.5), and §8.1-8.3, over HTTP on SQLite and MariaDB.

Helpers here are shared with test_audit.py and test_cli_admin.py."""

import concurrent.futures
import datetime as dt
import re
import secrets
import time
import uuid
from types import SimpleNamespace

import jwt
import pytest

import gotrue
from conftest import unique_email

NIL = gotrue.NIL_UUID
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
NO_BEARER = "This endpoint requires a Bearer token"


# --- helpers ---------------------------------------------------------------------------------

def claims_of(token):
    return jwt.decode(token, options={"verify_signature": False})


def mint(server, secret=None, algorithm="HS256", **claims):
    """A token signed like the server's (or with another secret/algorithm); exp in 10 minutes."""
    claims.setdefault("exp", int(time.time()) + 600)
    return jwt.encode(claims, secret or server.env["GOTRUE_JWT_SECRET"], algorithm=algorithm)


def bearer(token, **headers):
    return {"Authorization": f"Bearer {token}", **headers}


def new_admin(server, aud="", role="admin", **user_metadata):
    """A confirmed user with `role` in audience `aud`, logged in: .id .email .token .aud"""
    email, headers = unique_email("admin"), {"X-JWT-AUD": aud} if aud else {}
    r = server.post("/signup", json={"email": email, "password": "admin-pw", "data": user_metadata or None},
                    headers=headers)
    assert r.status_code == 200, r.text
    server.sql("UPDATE {users} SET role = ?, confirmed_at = ? WHERE id = ?", role, gotrue.now(), r.json()["id"])
    token = server.login(email, "admin-pw", headers=headers)["access_token"]
    return SimpleNamespace(id=r.json()["id"], email=email, token=token, aud=aud)


def create_user(server, token, headers=None, **body):
    """POST /admin/users (a fresh email unless given); returns the JSON body."""
    body.setdefault("email", unique_email())
    r = server.post("/admin/users", json=body, headers=bearer(token, **(headers or {})))
    assert r.status_code == 200, r.text
    return r.json()


def check_error(r, status, msg):
    """Upstream's error body {"code","msg"}; a msg ending in '*' is a prefix."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == status and set(body) == {"code", "msg"}, body
    if msg.endswith("*"):
        assert body["msg"].startswith(msg[:-1]), body
    else:
        assert body["msg"] == msg, body


def try_login(server, email, password, **kw):
    return server.post("/token", data={"grant_type": "password", "username": email, "password": password}, **kw)


def list_users(server, token, headers=None, **params):
    r = server.get("/admin/users", params=params, headers=bearer(token, **(headers or {})))
    assert r.status_code == 200, r.text
    return r


def emails(r):
    return [u["email"] for u in r.json()["users"]]


@pytest.fixture(scope="module")
def admin(server):
    return new_admin(server)


@pytest.fixture(scope="module")
def system_token(server):
    """A system user's token: sub "0" acts as a super admin (spec §2.5 step 4)."""
    return mint(server, sub="0")


# --- the admin check, route by route -----------------------------------------------------------

def routes(target_id, new_email, invite_email):
    return [("GET", "/admin/users", None),
            ("POST", "/admin/users", {"email": new_email, "password": "pw"}),
            ("GET", f"/admin/users/{target_id}", None),
            ("PUT", f"/admin/users/{target_id}", {"role": "hacked", "user_metadata": {"hacked": True}}),
            ("DELETE", f"/admin/users/{target_id}", None),
            ("GET", "/admin/users/not-a-uuid", None),  # the admin check comes before the id check
            ("GET", "/admin/audit", None),
            ("POST", "/invite", {"email": invite_email})]


@pytest.fixture(scope="module")
def bad_credentials(server, admin):
    """Credential kind -> (request headers, expected 401 message)."""
    user = server.confirmed_user()
    user_token = server.login(user["email"])["access_token"]
    wrong_role = new_admin(server, role="Admin")
    app_role = new_admin(server, role="")  # app_metadata is never consulted for authorisation
    r = server.put(f"/admin/users/{app_role.id}", token=admin.token, json={"app_metadata": {"roles": ["admin"]}})
    assert r.status_code == 200
    app_role_token = server.login(app_role.email, "admin-pw")["access_token"]
    assert claims_of(app_role_token)["app_metadata"]["roles"] == ["admin"]
    gone = new_admin(server)
    server.sql("DELETE FROM {users} WHERE id = ?", gone.id)
    past = int(time.time()) - 60
    admin_claims = {"sub": admin.id, "email": admin.email}
    return {
        "no header": ({}, NO_BEARER),
        "basic auth": ({"Authorization": "Basic YWRtaW46YWRtaW4="}, NO_BEARER),
        "two spaces": ({"Authorization": "Bearer  " + admin.token}, NO_BEARER),
        "token with space": ({"Authorization": f"Bearer {admin.token} x"}, NO_BEARER),
        "non-admin user": (bearer(user_token), "User not allowed"),
        "role of another case": (bearer(wrong_role.token), "User not allowed"),
        "admin in app_metadata": (bearer(app_role_token), "User not allowed"),
        "wrong aud header": (bearer(admin.token, **{"X-JWT-AUD": "elsewhere"}), "User not allowed"),
        "expired": (bearer(mint(server, exp=past, **admin_claims)), "Invalid token: *"),
        "wrong secret": (bearer(mint(server, secret=secrets.token_hex(32), **admin_claims)), "Invalid token: *"),
        "HS512": (bearer(mint(server, algorithm="HS512", **admin_claims)), "Invalid token: *"),
        "alg none": (bearer(jwt.encode({**admin_claims, "exp": past + 600}, None, algorithm="none")),
                     "Invalid token: *"),
        "aud array": (bearer(mint(server, aud=["", "x"], **admin_claims)), "Invalid token: *"),
        "not a jwt": (bearer("abc.def.ghi"), "Invalid token: *"),
        "no sub": (bearer(mint(server, email=admin.email)), "Invalid admin user"),
        "unknown sub": (bearer(mint(server, sub=str(uuid.uuid4()))), "Invalid admin user"),
        "non-uuid sub": (bearer(mint(server, sub="someone")), "Invalid admin user"),
        "deleted admin": (bearer(gone.token), "Invalid admin user"),
    }


BAD_KINDS = ["no header", "basic auth", "two spaces", "token with space", "non-admin user", "role of another case",
             "admin in app_metadata", "wrong aud header", "expired", "wrong secret", "HS512", "alg none", "aud array",
             "not a jwt", "no sub", "unknown sub", "non-uuid sub", "deleted admin"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_admin_route_refuses_bad_credentials(server, admin, bad_credentials, kind):
    headers, msg = bad_credentials[kind]
    target = create_user(server, admin.token, user_metadata={"keep": 1})
    new_email, invite_email = unique_email(), unique_email()
    wrong = {}
    for method, path, body in routes(target["id"], new_email, invite_email):
        r = server.request(method, path, headers=headers, json=body)
        try:
            check_error(r, 401, msg)
        except AssertionError:
            wrong[f"{method} {path}"] = (r.status_code, r.text)
        if msg.startswith("Invalid token"):  # an invalid JWT also clears the session cookie
            assert "nf_jwt=;" in r.headers.get("Set-Cookie", ""), (path, r.headers)
    assert not wrong
    assert server.user_row(new_email) is None and server.user_row(invite_email) is None
    r = server.get(f"/admin/users/{target['id']}", token=admin.token)
    assert r.status_code == 200 and r.json()["role"] == "" and r.json()["user_metadata"] == {"keep": 1}


def good_token(server, kind):
    """(headers, audience the request acts in) for each kind of admin."""
    if kind == "admin role":
        return bearer(new_admin(server).token), ""
    if kind == "admin of its own audience":
        aud = "aud-" + uuid.uuid4().hex[:8]
        return bearer(new_admin(server, aud=aud).token), aud
    if kind == "system sub 0":
        return bearer(mint(server, sub="0")), ""
    if kind == "system nil uuid, any audience":
        return bearer(mint(server, sub=NIL, aud="whatever"), **{"X-JWT-AUD": "other-aud"}), "other-aud"
    if kind == "super admin user, any audience":
        su = new_admin(server, role="")
        server.sql("UPDATE {users} SET is_super_admin = ? WHERE id = ?", True, su.id)
        return bearer(su.token, **{"X-JWT-AUD": "other-aud"}), "other-aud"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["admin role", "admin of its own audience", "system sub 0",
                                  "system nil uuid, any audience", "super admin user, any audience"])
def test_every_admin_route_accepts_admins(server, admin, kind):
    headers, aud = good_token(server, kind)
    target = server.post("/admin/users", json={"email": unique_email()}, headers=headers).json()  # in its audience
    assert target["aud"] == aud
    got = {}
    for method, path, body in routes(target["id"], unique_email(), unique_email()):
        r = server.request(method, path, headers=headers, json=body)
        got[f"{method} {path}"] = r.status_code
    expected = {f"{m} {p}": 200 for m, p, _ in routes(target["id"], "", "")}
    expected["GET /admin/users/not-a-uuid"] = 400
    assert got == expected
    assert server.get("/admin/users", headers=headers).json()["aud"] == aud
    assert server.user_row(target["email"]) is None  # the DELETE went through


def test_operator_token_is_an_admin(make_server, engine):
    """GOTRUE_OPERATOR_TOKEN acts as admin with no audience check (spec §2.5 step 2, §14 #65)."""
    op = "op-" + secrets.token_hex(8)
    srv = make_server(engine, GOTRUE_OPERATOR_TOKEN=op)
    created = create_user(srv, op, email="op-user@example.com", password="pw",
                          headers={"X-JWT-AUD": "op-test-aud"})
    assert created["aud"] == "op-test-aud" and created["email"] == "op-user@example.com"
    r = list_users(srv, op, headers={"X-JWT-AUD": "op-test-aud"})
    assert r.json()["aud"] == "op-test-aud" and emails(r) == ["op-user@example.com"]
    assert srv.delete(f"/admin/users/{created['id']}", token=op).status_code == 200
    entries = srv.get("/admin/audit", token=op).json()
    assert sorted(e["payload"]["action"] for e in entries) == ["user_deleted", "user_signedup"]
    for e in entries:
        assert e["payload"]["actor_id"] == NIL and e["payload"]["actor_email"] == "operator@netlify.com"
        assert e["payload"]["traits"] == {"user_id": created["id"], "user_email": "op-user@example.com"}
    check_error(srv.get("/admin/users", token=op + "x"), 401, "Invalid token: *")


def test_operator_token_unset_is_no_master_key(server):
    """The default server has no operator token: an empty or guessed bearer is just a bad JWT."""
    check_error(server.get("/admin/users", token="foobar"), 401, "Invalid token: *")
    check_error(server.get("/admin/users", headers={"Authorization": "Bearer "}), 401, NO_BEARER)


@pytest.mark.parametrize("aud", [{"x": 1}, [1], True, 5])
def test_non_string_body_aud_is_ignored(server, admin, aud):
    r = server.post("/admin/users", token=admin.token, json={"email": unique_email(), "aud": aud})
    assert r.status_code == 400  # the body's aud must be a string when it is read as a field...
    r = server.post("/invite", token=admin.token, json={"email": unique_email(), "aud": aud})
    assert r.status_code == 200 and r.json()["aud"] == ""  # ...and never chooses the audience


def test_body_aud_is_the_audience_of_the_admin_check(server, admin, system_token):
    """A non-empty top-level body `aud` overrides the audience the admin must belong to."""
    email = unique_email()
    r = server.post("/admin/users", token=admin.token, json={"email": email, "password": "pw", "aud": "elsewhere"})
    check_error(r, 401, "User not allowed")
    assert server.user_row(email) is None
    target = create_user(server, admin.token)
    check_error(server.put(f"/admin/users/{target['id']}", token=admin.token,
                           json={"aud": "elsewhere", "role": "x"}), 401, "User not allowed")
    assert server.get(f"/admin/users/{target['id']}", token=admin.token).json()["role"] == ""
    aud = "body-" + uuid.uuid4().hex[:8]
    assert create_user(server, system_token, aud=aud)["aud"] == aud  # a super admin may pick any


@pytest.mark.parametrize("route", ["POST /admin/users", "PUT /admin/users/ID", "POST /invite"])
@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '"text"'])
def test_malformed_admin_body_is_400(server, admin, route, body):
    method, path = route.replace("ID", create_user(server, admin.token)["id"]).split()
    r = server.request(method, path, token=admin.token, data=body, headers={"Content-Type": "application/json"})
    check_error(r, 400, "Could not decode admin user params: *")


# --- audiences ---------------------------------------------------------------------------------

def test_list_is_scoped_to_the_request_audience(server, admin, system_token):
    tag = uuid.uuid4().hex[:10]
    aud = "aud-" + tag
    inside = create_user(server, system_token, aud=aud, email=f"in-{tag}@example.com")
    outside = create_user(server, admin.token, email=f"out-{tag}@example.com")
    r = list_users(server, admin.token, filter=tag)
    assert r.json()["aud"] == "" and emails(r) == [outside["email"]]
    r = list_users(server, system_token, headers={"X-JWT-AUD": aud}, filter=tag)
    assert r.json()["aud"] == aud and emails(r) == [inside["email"]]
    aud_admin = new_admin(server, aud=aud)  # its token's aud is the request audience
    r = list_users(server, aud_admin.token, filter=tag)
    assert r.json()["aud"] == aud and emails(r) == [inside["email"]]
    # a user of another audience is not found (upstream looks single users up by id only)
    r = server.get(f"/admin/users/{outside['id']}", token=aud_admin.token)
    assert (r.status_code, r.json()) == (404, {"code": 404, "msg": "User not found"})


def test_created_and_invited_users_get_the_header_audience(server, system_token):
    aud = "hdr-" + uuid.uuid4().hex[:8]
    assert create_user(server, system_token, headers={"X-JWT-AUD": aud})["aud"] == aud
    r = server.post("/invite", json={"email": unique_email()}, headers=bearer(system_token, **{"X-JWT-AUD": aud}))
    assert r.status_code == 200 and r.json()["aud"] == aud


def test_created_and_invited_users_get_the_token_audience(server):
    """Spec §3.4: the request audience is X-JWT-AUD, else the verified token's aud, else JWT_AUD;
    it is the audience of users created by /admin/users and /invite."""
    aud_admin = new_admin(server, aud="tok-" + uuid.uuid4().hex[:8])
    created = create_user(server, aud_admin.token)
    r = server.post("/invite", json={"email": unique_email()}, token=aud_admin.token)
    assert r.status_code == 200
    assert (created["aud"], r.json()["aud"]) == (aud_admin.aud, aud_admin.aud)


def test_configured_audience_and_admin_group(make_server, engine):
    """GOTRUE_JWT_AUD is the default audience; GOTRUE_JWT_ADMIN_GROUP_NAME the admin role."""
    srv = make_server(engine, GOTRUE_JWT_ADMIN_GROUP_NAME="staff", GOTRUE_JWT_AUD="api.test")
    check_error(srv.get("/admin/users", token=new_admin(srv, role="admin").token), 401, "User not allowed")
    staff = new_admin(srv, role="staff")
    assert claims_of(staff.token)["aud"] == "api.test"
    assert list_users(srv, staff.token).json()["aud"] == "api.test"
    assert create_user(srv, staff.token)["aud"] == "api.test"
    assert list_users(srv, mint(srv, sub="0")).json()["aud"] == "api.test"  # no aud anywhere: JWT_AUD
    check_error(srv.get("/admin/users", headers=bearer(staff.token, **{"X-JWT-AUD": "other"})), 401,
                "User not allowed")


# --- GET /admin/users: pagination, sort, filter ---------------------------------------------

def backdated_users(server, token, tag, count):
    """`count` users whose emails contain `tag`, created one minute apart, oldest first."""
    users = [create_user(server, token, email=f"pg{tag}-{i}@example.com") for i in range(count)]
    for i, u in enumerate(users):
        server.sql("UPDATE {users} SET created_at = ? WHERE id = ?",
                   gotrue.now() - dt.timedelta(minutes=count - i), u["id"])
    return users


def test_pagination_headers_across_pages(server, admin):
    tag = uuid.uuid4().hex[:10]
    users = backdated_users(server, admin.token, tag, 5)
    base = f"/admin/users?filter=pg{tag}"

    def link(page, rel, extra="&per_page=2"):
        return f'<{base}&page={page}{extra}>; rel="{rel}"'
    expected = {1: [link(2, "next"), link(3, "last")],
                2: [link(3, "next"), link(1, "prev"), link(3, "last")],
                3: [link(2, "prev"), link(3, "last")],
                4: [link(3, "prev"), link(3, "last")]}
    seen = []
    for page, links in expected.items():
        r = list_users(server, admin.token, filter=f"pg{tag}", per_page=2, page=page)
        assert r.headers["Link"] == ", ".join(links)
        assert r.headers["X-Total-Count"] == "5"
        seen += [u["id"] for u in r.json()["users"]]
    assert seen == [u["id"] for u in reversed(users)]  # newest first by default
    r = list_users(server, admin.token, filter=f"pg{tag}")
    assert r.headers["Link"] == link(1, "last", extra="") and r.headers["X-Total-Count"] == "5"
    r = list_users(server, admin.token, filter=f"pg{tag}", page=0)  # page 0 is page 1
    assert len(r.json()["users"]) == 5
    r = list_users(server, admin.token, filter="no-such-user-" + tag)
    assert r.json()["users"] == [] and r.headers["X-Total-Count"] == "0"
    assert r.headers["Link"] == f'</admin/users?filter=no-such-user-{tag}&page=0>; rel="last"'


@pytest.mark.parametrize("sort, newest_first", [(None, True), ("created_at", True), ("created_at desc", True),
                                                ("created_at asc", False), ("created_at ASC", False)])
def test_sort_by_created_at(server, admin, sort, newest_first):
    tag = uuid.uuid4().hex[:10]
    users = backdated_users(server, admin.token, tag, 3)
    params = {"filter": f"pg{tag}", "per_page": 2, **({"sort": sort} if sort else {})}
    pages = [list_users(server, admin.token, page=p, **params) for p in (1, 2)]
    ids = [u["id"] for r in pages for u in r.json()["users"]]
    assert ids == [u["id"] for u in (reversed(users) if newest_first else users)]
    if sort:  # the sort parameter is carried into the links
        assert "sort=" + sort.replace(" ", "+") in pages[0].headers["Link"]


@pytest.mark.parametrize("sort, msg", [
    ("email", "Bad Sort Parameters: bad field for sort 'email'"),
    ("created_at sideways", "Bad Sort Parameters: bad direction for sort 'sideways', only 'asc' and 'desc' allowed"),
])
def test_bad_sort_is_400(server, admin, sort, msg):
    check_error(server.get("/admin/users", params={"sort": sort}, token=admin.token), 400, msg)


def test_filter_matches_email_or_full_name_case_insensitively(server, admin):
    tag = uuid.uuid4().hex[:10]
    by_email = create_user(server, admin.token, email=f"flt{tag}-alice@example.com")
    by_name = create_user(server, admin.token, user_metadata={"full_name": f"Bob Flt{tag} Smith"})
    create_user(server, admin.token, user_metadata={"full_name": "Carol"})
    r = list_users(server, admin.token, filter=f"FLT{tag.upper()}")
    assert sorted(emails(r)) == sorted([by_email["email"], by_name["email"]])
    assert r.headers["X-Total-Count"] == "2"
    assert emails(list_users(server, admin.token, filter=f"{tag}-ALICE")) == [by_email["email"]]
    assert emails(list_users(server, admin.token, filter=f"flt{tag} smith")) == [by_name["email"]]


def test_filter_and_audit_query_match_non_ascii(server, admin):
    name = f"José Ñúñez {uuid.uuid4().hex[:6]}"
    user = create_user(server, admin.token, user_metadata={"full_name": name})
    assert emails(list_users(server, admin.token, filter=name.upper())) == [user["email"]]


def test_filter_wildcards_are_literal(server, admin):
    tag = uuid.uuid4().hex[:8]
    plain = create_user(server, admin.token, email=f"pct{tag}@example.com")
    assert emails(list_users(server, admin.token, filter=f"pct{tag}")) == [plain["email"]]
    for pattern in (f"p%t{tag}", f"p_t{tag}", f"pct!{tag}"):
        assert emails(list_users(server, admin.token, filter=pattern)) == []


@pytest.mark.parametrize("path", ["/admin/users", "/admin/audit"])
@pytest.mark.parametrize("query", ["per_page=0", "per_page=-1", "per_page=abc", "per_page=1.5", "per_page=%20",
                                   "page=-1", "page=abc", "page=1e3", "per_page=0x10", "page=%B2",
                                   "page=%EF%BC%91", "page=" + "9" * 5000])
def test_malformed_paging_is_400(server, admin, path, query):
    check_error(server.get(f"{path}?{query}", token=admin.token), 400, "Bad Pagination Parameters*")


@pytest.mark.parametrize("path", ["/admin/users", "/admin/audit"])
@pytest.mark.parametrize("query", ["per_page=999999999999999999999999", "page=999999999999999999999999",
                                   "page=99999999999&per_page=99999999999"])
def test_huge_paging_is_clamped_or_400(server, admin, path, query):
    """Never a dropped connection (upstream panics on per_page=0 and overflows on huge values)."""
    r = server.get(f"{path}?{query}", token=admin.token)
    if r.status_code == 400:
        check_error(r, 400, "Bad Pagination Parameters*")
        return
    assert r.status_code == 200, r.text
    items = r.json()["users"] if path == "/admin/users" else r.json()
    assert len(items) <= int(r.headers["X-Total-Count"]) and 'rel="last"' in r.headers["Link"]


@pytest.mark.parametrize("path", ["/admin/users/", "/admin/audit/"])
def test_list_routes_answer_with_a_trailing_slash(server, admin, path):
    r = server.get(path, token=admin.token)
    assert r.status_code == 200 and "X-Total-Count" in r.headers


def test_unknown_admin_path_needs_credentials_first(server):
    check_error(server.get("/admin/nope"), 401, NO_BEARER)


# --- POST /admin/users ---------------------------------------------------------------------

def test_create_user_with_every_field(server, admin):
    email = unique_email()
    u = create_user(server, admin.token, email=email, password="s3cret", confirm=True, role=" editor ",
                    user_metadata={"full_name": "Test User"}, app_metadata={"roles": ["x"]})
    assert list(u) == ["id", "aud", "role", "email", "confirmed_at", "app_metadata", "user_metadata",
                       "created_at", "updated_at"]
    assert uuid.UUID(u["id"]).version == 4
    assert (u["aud"], u["role"], u["email"]) == ("", "editor", email)
    assert u["app_metadata"]["provider"] == "email" and u["user_metadata"] == {"full_name": "Test User"}
    assert all(TIME.fullmatch(u[k]) for k in ("confirmed_at", "created_at", "updated_at"))
    got = server.get(f"/admin/users/{u['id']}", token=admin.token).json()
    assert {k: got[k] for k in ("id", "aud", "role", "email", "app_metadata", "user_metadata")} == \
        {k: u[k] for k in ("id", "aud", "role", "email", "app_metadata", "user_metadata")}
    assert try_login(server, email, "s3cret").status_code == 200
    assert try_login(server, email, "wrong").status_code == 400


def test_created_user_without_confirm_cannot_log_in_yet(server, admin):
    u = create_user(server, admin.token, password="pw")
    assert "confirmed_at" not in u
    r = try_login(server, u["email"], "pw")
    assert r.status_code == 400 and r.json() == {"error": "invalid_grant", "error_description": "Email not confirmed"}


@pytest.mark.parametrize("password", [None, ""])
def test_created_user_without_password_cannot_log_in_with_an_empty_one(server, admin, password):
    """Unlike upstream (which stores the hash of ""), spec §8.2 and the issue."""
    body = {"confirm": True} if password is None else {"confirm": True, "password": password}
    u = create_user(server, admin.token, **body)
    for attempt in ("", " ", "x"):
        r = try_login(server, u["email"], attempt)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", (attempt, r.text)
    server.put(f"/admin/users/{u['id']}", token=admin.token, json={"password": "now-set"})
    assert try_login(server, u["email"], "now-set").status_code == 200


def test_created_user_without_metadata_has_an_empty_object(server, admin):
    """Deliberate: {} where upstream answers null in the creating response (README)."""
    assert create_user(server, admin.token)["user_metadata"] == {}


def test_duplicate_email_is_422_per_audience(server, admin, system_token):
    email = unique_email()
    create_user(server, admin.token, email=email)
    for again in (email, email.upper()):
        r = server.post("/admin/users", token=admin.token, json={"email": again, "password": "pw"})
        check_error(r, 422, "Email address already registered by another user")
    signed_up = server.signup()["email"]  # also against a user from /signup
    check_error(server.post("/admin/users", token=admin.token, json={"email": signed_up}), 422,
                "Email address already registered by another user")
    assert create_user(server, system_token, email=email, aud="second-aud")["aud"] == "second-aud"


def test_concurrent_creates_of_one_email_make_one_user(server, admin):
    email = unique_email("race")

    def attempt(_):
        return server.post("/admin/users", token=admin.token, json={"email": email, "password": "pw"}).status_code
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(attempt, range(6)))
    assert statuses == [200] + [422] * 5
    assert len(server.sql("SELECT id FROM {users} WHERE email = ?", email)) == 1


@pytest.mark.parametrize("body, status, msg", [
    ({}, 422, "An email address is required"),
    ({"email": ""}, 422, "An email address is required"),
    ({"email": "not-an-email"}, 422, "Unable to validate email address: *"),
    ({"email": "two@@example.com"}, 422, "Unable to validate email address: *"),
    ({"email": "a b@example.com"}, 422, "Unable to validate email address: *"),
    ({"email": 5}, 400, "Could not decode admin user params: *"),
    ({"email": "x@example.com", "confirm": "yes"}, 400, "Could not decode admin user params: *"),
    ({"email": "x@example.com", "user_metadata": [1]}, 400, "Could not decode admin user params: *"),
])
def test_create_rejects_bad_input(server, admin, body, status, msg):
    check_error(server.post("/admin/users", token=admin.token, json=body), status, msg)
    if isinstance(body.get("email"), str) and body["email"]:
        assert server.user_row(body["email"]) is None


def test_create_with_empty_body_is_400(server, admin):
    check_error(server.post("/admin/users", token=admin.token), 400, "Could not decode admin user params: *")


def test_create_needs_the_email_provider(make_server, engine):
    op = "op-" + secrets.token_hex(8)
    srv = make_server(engine, GOTRUE_EXTERNAL_EMAIL_DISABLED="true", GOTRUE_OPERATOR_TOKEN=op)
    email = unique_email()
    check_error(srv.post("/admin/users", token=op, json={"email": email, "password": "pw"}), 400,
                "Unsupported email provider")
    assert srv.user_row(email) is None
    check_error(srv.post("/admin/users", json={"email": email}), 401, NO_BEARER)  # admin check first
    assert srv.get("/admin/users", token=op).status_code == 200
    assert srv.post("/invite", token=op, json={"email": email}).status_code == 200  # invites unaffected


# --- GET / PUT / DELETE /admin/users/{id} ---------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("user_id, status, msg", [
    ("not-a-uuid", 400, "user_id must be an UUID"),
    ("12345", 400, "user_id must be an UUID"),
    ("00000000-0000-0000-0000-00000000000g", 400, "user_id must be an UUID"),
    ("random", 404, "User not found"),
    (NIL, 404, "User not found"),
])
def test_bad_user_id(server, admin, method, user_id, status, msg):
    user_id = str(uuid.uuid4()) if user_id == "random" else user_id
    r = server.request(method, f"/admin/users/{user_id}", token=admin.token,
                       json={"role": "x"} if method == "PUT" else None)
    check_error(r, status, msg)


@pytest.mark.parametrize("form", [str.upper, lambda s: "{" + s + "}", lambda s: "urn:uuid:" + s,
                                  lambda s: s.replace("-", "")], ids=["upper", "braces", "urn", "hex"])
def test_uuid_forms_upstream_accepts(server, admin, form):
    u = create_user(server, admin.token)
    r = server.get(f"/admin/users/{form(u['id'])}", token=admin.token)
    assert r.status_code == 200 and r.json()["id"] == u["id"]


def test_get_user_reads_back_from_the_database(server, admin):
    u = create_user(server, admin.token, user_metadata={"full_name": "Test Get User"})
    for path in (f"/admin/users/{u['id']}", f"/admin/users/{u['id']}/"):
        got = server.get(path, token=admin.token)
        assert got.status_code == 200 and got.headers["Content-Type"] == "application/json"
        body = got.json()
        assert body["email"] == u["email"] and body["app_metadata"] == {"provider": "email"}
        assert body["user_metadata"] == {"full_name": "Test Get User"}
        assert list(body) == ["id", "aud", "role", "email", "app_metadata", "user_metadata", "created_at",
                              "updated_at"]


def test_update_every_field(server, admin):
    old_email, new_email = unique_email(), unique_email()
    u = create_user(server, admin.token, email=old_email, password="old-pw", user_metadata={"a": 1, "b": 2})
    r = server.put(f"/admin/users/{u['id']}", token=admin.token, json={
        "role": " testing ", "confirm": True, "password": "new-pw", "email": new_email,
        "app_metadata": {"roles": ["writer", "editor"]}, "user_metadata": {"a": None, "c": {"d": 3}}})
    assert r.status_code == 200, r.text
    expected = {"role": "testing", "email": new_email, "app_metadata": {"provider": "email", "roles": ["writer", "editor"]},
                "user_metadata": {"b": 2, "c": {"d": 3}}}
    for body in (r.json(), server.get(f"/admin/users/{u['id']}", token=admin.token).json()):
        assert {k: body[k] for k in expected} == expected
        assert TIME.fullmatch(body["confirmed_at"])
    assert try_login(server, new_email, "new-pw").status_code == 200
    assert try_login(server, new_email, "old-pw").status_code == 400
    assert try_login(server, old_email, "new-pw").status_code == 400
    # null deletes a key; metadata merges are top-level replacements
    r = server.put(f"/admin/users/{u['id']}", token=admin.token, json={"app_metadata": {"provider": None}})
    assert r.json()["app_metadata"] == {"roles": ["writer", "editor"]}


def test_update_confirm_false_and_empty_body_change_nothing(server, admin):
    u = create_user(server, admin.token, password="pw", role="keep")
    for body in ({"confirm": False}, {}, {"role": "", "password": "", "email": ""}):
        r = server.put(f"/admin/users/{u['id']}", token=admin.token, json=body)
        assert r.status_code == 200 and "confirmed_at" not in r.json() and r.json()["role"] == "keep", r.text
    assert try_login(server, u["email"], "pw").json()["error_description"] == "Email not confirmed"


def test_update_by_a_system_user(server, admin):
    u = create_user(server, admin.token)
    r = server.put(f"/admin/users/{u['id']}", token=mint(server, sub=NIL),
                   json={"role": "testing", "user_metadata": {"name": "David"}})
    assert r.status_code == 200
    got = server.get(f"/admin/users/{u['id']}", token=admin.token).json()
    assert (got["role"], got["user_metadata"]) == ("testing", {"name": "David"})


@pytest.mark.parametrize("email, status, msg", [
    ("not-an-email", 422, "Unable to validate email address: *"),
    ("taken", 422, "Email address already registered by another user"),
])
def test_update_email_rejects_invalid_or_taken(server, admin, email, status, msg):
    u, other = create_user(server, admin.token), create_user(server, admin.token)
    email = other["email"] if email == "taken" else email
    check_error(server.put(f"/admin/users/{u['id']}", token=admin.token, json={"email": email}), status, msg)
    assert server.get(f"/admin/users/{u['id']}", token=admin.token).json()["email"] == u["email"]


@pytest.mark.parametrize("body", [{"role": 5}, {"confirm": 1}, {"app_metadata": "x"}, {"password": ["x"]}])
def test_update_rejects_wrong_types(server, admin, body):
    u = create_user(server, admin.token)
    check_error(server.put(f"/admin/users/{u['id']}", token=admin.token, json=body), 400,
                "Could not decode admin user params: *")


def test_delete_user_revokes_its_refresh_tokens(server, admin):
    u = create_user(server, admin.token, password="pw", confirm=True)
    tokens = server.login(u["email"], "pw")
    server.login(u["email"], "pw")
    assert server.sql("SELECT COUNT(*) AS n FROM {refresh_tokens} WHERE user_id = ?", u["id"])[0]["n"] == 2
    r = server.delete(f"/admin/users/{u['id']}", token=admin.token)
    assert r.status_code == 200 and r.json() == {}
    check_error(server.get(f"/admin/users/{u['id']}", token=admin.token), 404, "User not found")
    check_error(server.delete(f"/admin/users/{u['id']}", token=admin.token), 404, "User not found")
    assert server.sql("SELECT COUNT(*) AS n FROM {refresh_tokens} WHERE user_id = ?", u["id"])[0]["n"] == 0
    r = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 400 and r.json() == {"error": "invalid_grant", "error_description": "Invalid Refresh Token"}
    assert server.get("/user", token=tokens["access_token"]).status_code == 404
    assert try_login(server, u["email"], "pw").status_code == 400


# --- GET /admin/users/export ---------------------------------------------------------------

def test_export_needs_admin_and_the_export_secret(make_server, engine):
    secret, op = "exp-" + secrets.token_hex(8), "op-" + secrets.token_hex(8)
    srv = make_server(engine, GOTRUE_API_EXPORT_SECRET=secret, GOTRUE_OPERATOR_TOKEN=op)
    with_pw = create_user(srv, op, email="a-pw@example.com", password="pw")
    no_pw = create_user(srv, op, email="b-nopw@example.com")
    r = srv.get("/admin/users/export", token=op, headers={"Export-Secret": secret})
    assert r.status_code == 200, r.text
    assert r.headers["X-Total-Count"] == "2" and r.headers["Link"] == '</admin/users/export?page=1>; rel="last"'
    users = {u["email"]: u for u in r.json()["users"]}
    assert list(users[with_pw["email"]])[:5] == ["id", "aud", "role", "email", "encrypted_password"]
    assert users[with_pw["email"]]["encrypted_password"].startswith("$2")
    assert users[no_pw["email"]]["encrypted_password"] == ""
    assert "encrypted_password" not in list_users(srv, op).json()["users"][0]
    r = srv.get("/admin/users/export?per_page=1&filter=nopw", token=op, headers={"Export-Secret": secret})
    assert [u["email"] for u in r.json()["users"]] == [no_pw["email"]]
    assert r.headers["Link"] == '</admin/users/export?filter=nopw&page=1&per_page=1>; rel="last"'
    user = new_admin(srv, role="")
    for headers, token, msg in [({"Export-Secret": secret + "x"}, op, "Invalid export secret"),
                                ({"Export-Secret": secret[:-1]}, op, "Invalid export secret"),
                                ({}, op, "Invalid export secret"),
                                ({"Export-Secret": secret}, user.token, "User not allowed"),
                                ({"Export-Secret": secret}, None, NO_BEARER)]:
        check_error(srv.get("/admin/users/export", token=token, headers=headers), 401, msg)


def test_export_route_is_absent_without_a_secret(server, admin):
    """Without GOTRUE_API_EXPORT_SECRET the path falls through to /admin/users/{user_id}."""
    check_error(server.get("/admin/users/export", token=admin.token, headers={"Export-Secret": ""}), 400,
                "user_id must be an UUID")


def test_total_count_follows_writes_and_notices_foreign_ones(make_server, engine):
    """X-Total-Count comes from a counter our writes keep exact; rows written behind our back
    (upstream's binary, SQL by hand) show up once the counter is older than RECOUNT_AFTER."""
    srv = make_server(engine)
    token = mint(srv, sub="0")

    def total():
        return int(list_users(srv, token).headers["X-Total-Count"])
    assert total() == 0
    ids = [create_user(srv, token)["id"] for _ in range(3)]
    srv.signup()
    assert total() == 4
    assert srv.delete(f"/admin/users/{ids[0]}", token=token).status_code == 200
    assert total() == 3
    srv.sql("DELETE FROM {users} WHERE id = ?", ids[1])  # a foreign writer
    assert total() == 3  # not yet seen ...
    srv.sql("UPDATE {user_counts} SET counted_at = ?", gotrue.now() - gotrue.dt.timedelta(seconds=301))
    assert total() == 2  # ... until the counter is old enough to be counted again
    assert int(list_users(srv, token, filter="@").headers["X-Total-Count"]) == 2  # filters always count
