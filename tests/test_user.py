"""GET /user, PUT /user (password and data; email change lives in test_email_change.py) and
POST /logout."""

import time

import jwt
import pytest

from conftest import unique_email


@pytest.fixture
def session(server):
    email = unique_email()
    user = server.confirmed_user(email, data={"keep": 1, "drop": 2})
    return email, user, server.login(email)


def forge(server, **claims):
    return jwt.encode(claims, server.env["GOTRUE_JWT_SECRET"], algorithm="HS256")


def test_get_user(server, session):
    email, user, tokens = session
    r = server.get("/user", token=tokens["access_token"])
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["id"] == user["id"] and body["email"] == email and body["confirmed_at"]
    assert body["user_metadata"] == {"keep": 1, "drop": 2}
    assert server.get("/user/", token=tokens["access_token"]).status_code == 200  # sub-router slash


@pytest.mark.parametrize("header, msg", [
    (None, "This endpoint requires a Bearer token"),
    ("Token abc", "This endpoint requires a Bearer token"),
    ("Bearer  two spaces", "This endpoint requires a Bearer token"),
    ("Bearer not.a.jwt", "Invalid token: "),
])
def test_auth_errors_are_401_and_clear_the_cookie(server, header, msg):
    r = server.get("/user", headers={"Authorization": header} if header else {})
    assert r.status_code == 401 and r.json()["code"] == 401 and r.json()["msg"].startswith(msg)
    assert r.headers["Set-Cookie"].startswith("nf_jwt=;")


def test_expired_wrong_key_and_unpinned_algorithm_tokens_are_refused(server, session):
    _, user, _ = session
    expired = forge(server, sub=user["id"], exp=int(time.time()) - 60)
    wrong_key = jwt.encode({"sub": user["id"]}, "another-secret-of-enough-length-123456", algorithm="HS256")
    unsigned = jwt.encode({"sub": user["id"]}, None, algorithm="none")
    hs512 = jwt.encode({"sub": user["id"]}, server.env["GOTRUE_JWT_SECRET"], algorithm="HS512")
    for token in (expired, wrong_key, unsigned, hs512):
        r = server.get("/user", token=token)
        assert r.status_code == 401 and r.json()["msg"].startswith("Invalid token:")


def test_audience_must_match(server, session):
    _, user, tokens = session
    r = server.get("/user", token=tokens["access_token"], headers={"X-JWT-AUD": "elsewhere"})
    assert (r.status_code, r.json()["msg"]) == (400, "Token audience doesn't match request audience")
    r = server.get("/user", token=forge(server, sub="0"))
    assert (r.status_code, r.json()["msg"]) == (400, "Could not read User ID claim")
    r = server.get("/user", token=forge(server, sub="99999999-9999-4999-8999-999999999999"))
    assert (r.status_code, r.json()["msg"]) == (404, "User not found")


def test_put_user_merges_data_and_changes_the_password(server, session):
    email, _, tokens = session
    r = server.put("/user", token=tokens["access_token"], json={"data": {"drop": None, "new": [1, 2]}, "password": "new-pw"})
    assert r.status_code == 200
    body = r.json()
    assert body["user_metadata"] == {"keep": 1, "new": [1, 2]}
    assert body["updated_at"] >= body["created_at"]
    assert server.get("/user", token=tokens["access_token"]).json()["updated_at"] == body["updated_at"]  # persisted
    assert server.post("/token", data={"grant_type": "password", "username": email,
                                       "password": "secret-pw"}).status_code == 400
    assert server.login(email, "new-pw")


def test_put_user_empty_body_changes_nothing_but_succeeds(server, session):
    _, user, tokens = session
    r = server.put("/user", token=tokens["access_token"], json={})
    assert r.status_code == 200 and r.json()["user_metadata"] == {"keep": 1, "drop": 2}


def test_app_metadata_needs_admin(server, session):
    _, _, tokens = session
    r = server.put("/user", token=tokens["access_token"], json={"app_metadata": {"roles": ["editor"]}})
    assert (r.status_code, r.json()["msg"]) == (401, "Updating app_metadata requires admin privileges")
    admin = server.admin_token()
    r = server.put("/user", token=admin, json={"app_metadata": {"roles": ["editor"]}})
    assert r.status_code == 200 and r.json()["app_metadata"] == {"provider": "email", "roles": ["editor"]}


@pytest.mark.parametrize("body, status, msg", [
    ({"password": "p" * 73}, 422, "Password is too long: at most 72 bytes"),
    ({"data": "x"}, 400, "Could not read User Update params: data must be an object"),
    ({"password": 123}, 400, "Could not read User Update params: password must be a string"),
])
def test_put_user_bad_input_changes_nothing(server, session, body, status, msg):
    email, _, tokens = session
    r = server.put("/user", token=tokens["access_token"], json=body)
    assert (r.status_code, r.json()) == (status, {"code": status, "msg": msg})
    assert server.login(email)  # the password is unchanged


def test_logout_revokes_every_refresh_token(server, session):
    email, user, tokens = session
    other_device = server.login(email)
    r = server.post("/logout", token=tokens["access_token"])
    assert r.status_code == 204 and r.content == b""
    assert r.headers["Set-Cookie"].startswith("nf_jwt=;")
    for refresh in (tokens["refresh_token"], other_device["refresh_token"]):
        r = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh})
        assert r.status_code == 400
    assert server.sql("SELECT COUNT(*) AS n FROM {refresh_tokens} WHERE user_id = ?", user["id"])[0]["n"] == 0
    assert server.post("/logout").status_code == 401
    r = server.post("/logout", token=forge(server, sub="99999999-9999-4999-8999-999999999999"))
    assert (r.status_code, r.json()["msg"]) == (401, "Invalid user")


def test_a_gotrue_js_session_end_to_end(server, mailbox):
    """What gotrue-js does: signup, confirm from the mail, login (form body), read and update
    the user, refresh, logout."""
    from conftest import link_token
    email = unique_email("js")
    assert server.post("/signup", json={"email": email, "password": "pw", "data": {"full_name": "JS"}}).ok
    token = link_token(mailbox.wait_for(email), "confirmation")
    assert server.post("/verify", json={"token": token, "type": "signup"}).ok
    tokens = server.post("/token", data=f"grant_type=password&username={email}&password=pw",
                         headers={"Content-Type": "application/x-www-form-urlencoded"}).json()
    assert server.get("/user", token=tokens["access_token"]).json()["user_metadata"]["full_name"] == "JS"
    assert server.put("/user", token=tokens["access_token"], json={"data": {"theme": "dark"}}).ok
    refreshed = server.post("/token", data=f"grant_type=refresh_token&refresh_token={tokens['refresh_token']}",
                            headers={"Content-Type": "application/x-www-form-urlencoded"}).json()
    assert server.get("/user", token=refreshed["access_token"]).json()["user_metadata"]["theme"] == "dark"
    assert server.post("/logout", token=refreshed["access_token"]).status_code == 204
