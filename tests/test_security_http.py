"""Security regressions of issue 12, the HTTP surface: hostile JSON and metadata size (design §4,
§11), headers, 404s and waitress's own errors (§9). Helpers: test_security.py."""

import json
import socket
import threading
import uuid

import pytest

from conftest import DEADLINE, Server, base_env, link_token, migrate, unique_email
from mariadb_server import create_database
from test_security import admin, jwt_payload, password_grant, refresh, row_by_id, strict_json, system_token  # noqa: F401

MAX_BYTES = 16 * 1024


# --- 4 and 11. hostile JSON ---------------------------------------------------------------------------

def nested(levels, leaf="x"):
    """`levels` levels as JSON_DEPTH counts them, the scalar leaf included: nested(2) == {"k": "x"}.
    (MariaDB's JSON columns refuse a value of more than 32 such levels, 32 objects deep.)"""
    value = leaf
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def nested_lists(levels):
    """An object holding lists, {"k": [[...["x"]...]]}: `levels` levels, the leaf included."""
    value = "x"
    for _ in range(levels - 2):
        value = [value]
    return {"k": value}


WHERE = ["signup data", "invite data", "user data", "user app_metadata", "admin create user_metadata",
         "admin update user_metadata", "admin update app_metadata"]


def write_metadata(server, admin, where, value):
    """Send `value` as the metadata `where` names; returns (response, read): read() gives the
    stored JSON of that column (None when there is no user)."""
    email = unique_email("meta")
    column = "raw_app_meta_data" if "app_metadata" in where else "raw_user_meta_data"

    def read():
        row = server.user_row(email)
        return json.loads(row[column]) if row and row[column] else None
    if where == "signup data":
        return server.post("/signup", json={"email": email, "password": "pw", "data": value}), read
    if where == "invite data":
        return server.post("/invite", token=admin, json={"email": email, "data": value}), read
    if where == "admin create user_metadata":
        return server.post("/admin/users", token=admin, json={"email": email, "password": "pw",
                                                              "user_metadata": value}), read
    user = server.confirmed_user(email)
    if where.startswith("user "):
        server.sql("UPDATE {users} SET role = 'admin' WHERE email = ?", email)  # may set app_metadata
        token = server.login(email)["access_token"]
        key = "data" if where == "user data" else "app_metadata"
        return server.put("/user", token=token, json={key: value}), read
    key = where.split()[-1]
    return server.put(f"/admin/users/{user['id']}", token=admin, json={key: value}), read


def check_refused(r, read, before, word):
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == 422 and word in body["msg"].lower(), body
    assert read() == before


def stored_before(where):
    """What the column holds when the refused write has not happened."""
    if where.startswith(("signup", "invite", "admin create")):
        return None
    return {"provider": "email"} if "app_metadata" in where else {}


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("value", [nested(33), nested(200), nested_lists(33), {"a": 1, "b": nested(32)},
                                   {"a": nested(32, leaf={})}],
                         ids=["33 levels", "200 levels", "33 with lists", "33 below a key", "33 empty leaf"])
def test_metadata_nested_too_deeply_is_422(server, admin, where, value):
    r, read = write_metadata(server, admin, where, value)
    check_refused(r, read, stored_before(where), "nested")


@pytest.mark.parametrize("where", WHERE)
def test_metadata_nested_32_levels_is_stored(server, admin, where):
    value = {"deep": nested(31)}
    r, read = write_metadata(server, admin, where, value)
    assert r.status_code == 200, r.text
    assert read()["deep"] == value["deep"]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("value", [{"blob": "a" * (MAX_BYTES + 100)}, {"blob": "é" * 9000},
                                   {f"k{i}": i for i in range(2000)}],
                         ids=["ascii", "utf-8", "many keys"])
def test_metadata_over_16_kb_is_422(server, admin, where, value):
    r, read = write_metadata(server, admin, where, value)
    check_refused(r, read, stored_before(where), "too large")


@pytest.mark.parametrize("where", WHERE)
def test_metadata_under_16_kb_is_stored(server, admin, where):
    value = {"blob": "é" * 7000}  # 14 KB as UTF-8 (42 KB if it were counted \\u-escaped)
    r, read = write_metadata(server, admin, where, value)
    assert r.status_code == 200, r.text
    assert read()["blob"] == value["blob"]


@pytest.mark.parametrize("where", ["user data", "admin update user_metadata", "admin update app_metadata"])
def test_metadata_cannot_grow_to_megabytes_through_merges(server, admin, where):
    """Each request is small, the merged result is what is limited: 1.3 MB never gets stored."""
    email = unique_email("grow")
    user = server.confirmed_user(email)
    key, column = {"user data": ("data", "raw_user_meta_data"),
                   "admin update user_metadata": ("user_metadata", "raw_user_meta_data"),
                   "admin update app_metadata": ("app_metadata", "raw_app_meta_data")}[where]
    if where == "user data":
        token, path = server.login(email)["access_token"], "/user"
    else:
        token, path = admin, f"/admin/users/{user['id']}"
    piece = "p" * 10000
    for i in range(130):  # 1.3 MB in all if nothing stopped it
        r = server.put(path, token=token, json={key: {f"part{i}": piece}})
        if r.status_code != 200:
            break
    assert r.status_code == 422 and "too large" in r.json()["msg"].lower(), (i, r.text)
    assert len(server.user_row(email)[column].encode()) <= MAX_BYTES + 64


def test_a_request_with_1_3_mb_of_metadata_stores_nothing(server):
    email = unique_email("huge")
    r = server.post("/signup", json={"email": email, "password": "pw", "data": {"blob": "x" * 1_300_000}})
    assert r.status_code in (413, 422) and r.json()["code"] == r.status_code, r.text
    assert server.user_row(email) is None


GARBAGE = {
    "not json": "{not json",
    "deep arrays": "[" * 1000 + "]" * 1000,
    "deep objects": '{"a":' * 1000 + "1" + "}" * 1000,
    "a list": "[1, 2]",
    "a string": '"text"',
    "NaN": '{"a": NaN}',
    "Infinity": '{"a": 1e999}',
}


@pytest.fixture(scope="module")
def lax_server(engine, mailbox, tmp_path_factory, request):
    """A server whose metadata columns hold any text: SQLite never checks JSON, and on MariaDB the
    columns are plain LONGTEXT, as in a database made before MariaDB 10.4.3 (whose JSON type had
    no json_valid() check). Where the check exists such rows cannot be written at all."""
    workdir = tmp_path_factory.mktemp("lax")
    if engine == "sqlite":
        db_env = {"GOTRUE_DB_DRIVER": "sqlite", "DATABASE_URL": str(workdir / "gotrue.db")}
    else:
        db_env = {"GOTRUE_DB_DRIVER": "mysql",
                  "DATABASE_URL": create_database(request.getfixturevalue("mariadb_root"), "gt_" + uuid.uuid4().hex[:12])}
    env = base_env(str(workdir), db_env, mailbox.port)
    migrate(env, str(workdir))
    srv = Server(str(workdir), env)
    if engine != "sqlite":
        srv.sql("ALTER TABLE {users} MODIFY raw_app_meta_data LONGTEXT NULL, MODIFY raw_user_meta_data LONGTEXT NULL")
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("column", ["raw_user_meta_data", "raw_app_meta_data"])
@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_rows_with_hostile_json_are_served_normally(lax_server, column, garbage):
    """The value is planted again before each step: a step that saves the user writes {} back."""
    server = lax_server
    field = "user_metadata" if column == "raw_user_meta_data" else "app_metadata"
    aud = "garbage-" + uuid.uuid4().hex[:8]
    headers = {"X-JWT-AUD": aud}
    email = unique_email("garbage")
    user = server.signup(email, "pw", headers=headers, data={"name": "G"})

    def plant():
        server.sql(f"UPDATE {{users}} SET {column} = ? WHERE id = ?", GARBAGE[garbage], user["id"])
        assert row_by_id(server, user["id"])[column] == GARBAGE[garbage]
    # verify (confirms the account and hands out tokens)
    plant()
    r = server.post("/verify", json={"type": "signup", "token": server.user_row(email)["confirmation_token"]})
    assert r.status_code == 200, r.text
    assert jwt_payload(strict_json(r.text)["access_token"])[field] == {}
    # login and refresh
    plant()
    r = password_grant(server, email, "pw", headers)
    assert r.status_code == 200, r.text
    tokens = strict_json(r.text)
    assert jwt_payload(tokens["access_token"])[field] == {}
    plant()
    r = refresh(server, tokens["refresh_token"])
    assert r.status_code == 200, r.text
    assert jwt_payload(strict_json(r.text)["access_token"])[field] == {}
    # the user's own view and update
    plant()
    r = server.get("/user", token=tokens["access_token"])
    assert r.status_code == 200, r.text
    assert strict_json(r.text)[field] == {}
    plant()
    r = server.put("/user", token=tokens["access_token"], json={"data": {"fresh": True}})
    assert r.status_code == 200, r.text
    assert strict_json(r.text)[field] == ({"fresh": True} if field == "user_metadata" else {})
    # the admin's list and view
    system = system_token(server)
    plant()
    r = server.get("/admin/users", token=system, headers=headers)
    assert r.status_code == 200, r.text
    listed = strict_json(r.text)["users"]
    assert [u["id"] for u in listed] == [user["id"]] and listed[0][field] == {}
    r = server.get(f"/admin/users/{user['id']}", token=system, headers=headers)
    assert r.status_code == 200 and strict_json(r.text)[field] == {}, r.text
    # and delete
    r = server.delete(f"/admin/users/{user['id']}", token=system, headers=headers)
    assert r.status_code == 200, r.text
    assert row_by_id(server, user["id"]) is None


# --- 9. headers -------------------------------------------------------------------------------------

def assert_no_store(r, what):
    assert r.status_code == 200, (what, r.text)
    assert "no-store" in r.headers.get("Cache-Control", ""), (what, r.headers)
    assert r.headers.get("Pragma") == "no-cache", (what, r.headers)


def test_responses_carrying_tokens_are_not_cached(server, mailbox):
    email = unique_email("cache")
    server.signup(email)
    r = server.post("/verify", json={"type": "signup", "token": server.user_row(email)["confirmation_token"]})
    assert_no_store(r, "verify signup")
    r = password_grant(server, email, "secret-pw")
    assert_no_store(r, "password grant")
    r = refresh(server, r.json()["refresh_token"])
    assert_no_store(r, "refresh grant")
    access = r.json()["access_token"]
    assert_no_store(server.get("/user", token=access), "GET /user")
    assert_no_store(server.put("/user", token=access, json={"data": {"a": 1}}), "PUT /user")
    assert server.post("/recover", json={"email": email}).status_code == 200
    token = link_token(mailbox.wait_for(email, 2), "recovery")
    assert_no_store(server.post("/verify", json={"type": "recovery", "token": token}), "verify recovery")


def test_nosniff_on_every_response(server):
    responses = {
        200: server.get("/health"),
        400: server.post("/token", data={}),
        401: server.get("/user"),
        404: server.get("/no-such-route"),
        405: server.delete("/signup"),
        422: server.post("/signup", json={"email": "not-an-email", "password": "pw"}),
        204: server.request("OPTIONS", "/signup", headers={"Origin": "https://site.example.com",
                                                           "Access-Control-Request-Method": "POST"}),
    }
    for status, r in responses.items():
        assert r.status_code == status, (status, r.text)
        assert r.headers.get("X-Content-Type-Options") == "nosniff", (status, r.headers)


@pytest.mark.parametrize("mode", ["1", "session"])
def test_the_jwt_cookie_is_samesite_lax(server, mode):
    email = unique_email("cookie")
    server.confirmed_user(email)
    r = password_grant(server, email, "secret-pw", {"X-Use-Cookie": mode})
    assert r.status_code == 200, r.text
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"nf_jwt={r.json()['access_token']}; ")
    assert "SameSite=Lax" in [part.strip() for part in cookie.split(";")], cookie


@pytest.mark.parametrize("method, path", [("GET", "/no-such-route"), ("POST", "/no-such-route"), ("GET", "/"),
                                          ("GET", "/user/extra"), ("PUT", "/settings/x")])
def test_unknown_routes_are_404_json(server, method, path):
    r = server.request(method, path)
    assert (r.status_code, r.json()) == (404, {"code": 404, "msg": "Not Found"}), r.text
    assert r.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_unknown_admin_paths_are_404_json_for_admins_and_401_for_others(server, admin, method):
    r = server.request(method, "/admin/no-such-thing", token=admin, json={} if method in ("POST", "PUT") else None)
    assert (r.status_code, r.json()) == (404, {"code": 404, "msg": "Not Found"}), r.text
    assert r.headers["Content-Type"].startswith("application/json")
    r = server.request(method, "/admin/no-such-thing/deeper")
    assert (r.status_code, r.json()) == (401, {"code": 401, "msg": "This endpoint requires a Bearer token"}), r.text


def raw_exchange(server, head, body_parts=()):
    """Send raw bytes, read what comes back until the server closes; a reader thread keeps
    up while a large body is still being sent (the server may answer and close early)."""
    received = []
    with socket.create_connection(("127.0.0.1", int(server.env["PORT"])), timeout=DEADLINE) as s:
        def read():
            while True:
                try:
                    data = s.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                received.append(data)
        reader = threading.Thread(target=read)
        reader.start()
        try:
            s.sendall(head)
            for part in body_parts:
                s.sendall(part)
        except OSError:
            pass  # the server answered and hung up before the whole body was sent
        reader.join(DEADLINE)
        assert not reader.is_alive(), "the server did not close the connection"
    raw = b"".join(received)
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def check_json_error(status, headers, body, expected):
    assert status == expected, (status, body)
    assert headers.get("content-type", "").startswith("application/json"), headers
    parsed = json.loads(body)
    assert set(parsed) == {"code", "msg"} and parsed["code"] == expected and parsed["msg"], parsed
    assert headers.get("x-content-type-options") == "nosniff", headers


@pytest.mark.parametrize("head", [
    b"\x00\x01 NOT HTTP\r\n\r\n",
    b"GET /health HTTP/1.1 trailing\r\nHost: x\r\n\r\n",
    b"GET\r\nHost: x\r\n\r\n",
], ids=["garbage", "extra word", "method only"])
def test_a_malformed_request_line_is_a_json_400(server, head):
    check_json_error(*raw_exchange(server, head), 400)


def test_a_bad_content_length_is_a_json_400(server):
    head = b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n"
    check_json_error(*raw_exchange(server, head), 400)


def test_a_chunked_body_over_the_limit_is_a_json_413(server):
    head = (b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n")
    chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
    check_json_error(*raw_exchange(server, head, [chunk] * 64 + [b"0\r\n\r\n"]), 413)  # 4 MiB
