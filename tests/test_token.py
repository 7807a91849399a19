"""POST /token: the password and refresh_token grants, the JWT they issue, and refresh rotation."""

import time

import jwt
import pytest

import gotrue

from conftest import unique_email


def claims(server, token):
    return jwt.decode(token, server.env["GOTRUE_JWT_SECRET"], algorithms=["HS256"], options={"verify_aud": False})


def test_password_grant_issues_upstreams_jwt(server):
    email = unique_email()
    user = server.confirmed_user(email, data={"name": "Bo"})
    tokens = server.login(email)
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header == {"alg": "HS256", "kid": "nf-ident", "typ": "JWT"}
    payload = claims(server, tokens["access_token"])
    # no aud when it is ""; session_id (ours) names the session, so a password change can keep it
    assert list(payload) == ["exp", "sub", "email", "app_metadata", "user_metadata", "session_id"]
    assert payload["sub"] == user["id"] and payload["email"] == email
    assert payload["app_metadata"] == {"provider": "email"} and payload["user_metadata"] == {"name": "Bo"}
    assert abs(payload["exp"] - (time.time() + 3600)) < 120


def test_aud_claim_is_a_string(server):
    email = unique_email()
    server.confirmed_user(email, headers={"X-JWT-AUD": "myapp"})
    tokens = server.login(email, headers={"X-JWT-AUD": "myapp"})
    assert claims(server, tokens["access_token"])["aud"] == "myapp"
    # the same address is unknown in the default audience
    r = server.post("/token", data={"grant_type": "password", "username": email, "password": "secret-pw"})
    assert r.status_code == 400


def test_json_body_is_accepted_too(server):
    email = unique_email()
    server.confirmed_user(email)
    r = server.post("/token", json={"grant_type": "password", "username": email, "password": "secret-pw"})
    assert r.status_code == 200 and r.json()["access_token"]


def test_unknown_email_and_wrong_password_look_the_same(server):
    email = unique_email()
    server.signup(email, "right-pw")  # unconfirmed: that must not leak to a wrong password either
    expected = {"error": "invalid_grant", "error_description": "No user found with that email, or password invalid."}
    for username, password in ((email, "wrong-pw"), (unique_email(), "right-pw"), (email, ""), (email, "x" * 100),
                               ("", "")):
        r = server.post("/token", data={"grant_type": "password", "username": username, "password": password})
        assert (r.status_code, r.json()) == (400, expected)


@pytest.mark.parametrize("data, expected", [
    ({}, {"error": "unsupported_grant_type"}),
    ({"grant_type": "authorization_code"}, {"error": "invalid_request", "error_description": "code required"}),
    ({"grant_type": "client_credentials"}, {"error": "unsupported_grant_type"}),
    ({"grant_type": "refresh_token"}, {"error": "invalid_request", "error_description": "refresh_token required"}),
    ({"grant_type": "refresh_token", "refresh_token": "nope"},
     {"error": "invalid_grant", "error_description": "Invalid Refresh Token"}),
])
def test_grant_errors(server, data, expected):
    r = server.post("/token", data=data)
    assert (r.status_code, r.json()) == (400, expected)


def test_refresh_rotates_and_a_reused_token_revokes_its_successor(server):
    email = unique_email()
    server.confirmed_user(email)
    first = server.login(email)
    second = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    # the old token again, past the reuse interval (10 s): refused, the cookie cleared, and the
    # token made from it revoked
    server.sql("UPDATE {refresh_tokens} SET updated_at = ? WHERE token = ?",
               gotrue.now() - gotrue.dt.timedelta(seconds=11), first["refresh_token"])
    reuse = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert reuse.status_code == 400 and reuse.json()["error_description"] == "Invalid Refresh Token"
    assert reuse.headers["Set-Cookie"].startswith("nf_jwt=; Path=/; Expires=Thu, 01 Jan 1970")
    r = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": second["refresh_token"]})
    assert r.status_code == 400 and r.json()["error_description"] == "Invalid Refresh Token"


def test_refresh_uses_the_current_user_data(server):
    email = unique_email()
    server.confirmed_user(email)
    tokens = server.login(email)
    server.put("/user", token=tokens["access_token"], json={"data": {"plan": "pro"}})
    refreshed = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert claims(server, refreshed.json()["access_token"])["user_metadata"] == {"plan": "pro"}


def test_expired_refresh_token(server):
    email = unique_email()
    server.confirmed_user(email)
    tokens = server.login(email)
    server.sql("UPDATE {refresh_tokens} SET created_at = ? WHERE token = ?",
               gotrue.now() - gotrue.dt.timedelta(days=31), tokens["refresh_token"])
    r = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert (r.status_code, r.json()) == (400, {"error": "invalid_grant", "error_description": "Refresh token expired"})


def test_cookie_modes(server):
    email = unique_email()
    server.confirmed_user(email)
    r = server.post("/token", data={"grant_type": "password", "username": email, "password": "secret-pw"},
                    headers={"X-Use-Cookie": "session"})
    assert r.headers["Set-Cookie"] == f"nf_jwt={r.json()['access_token']}; Path=/; HttpOnly; Secure; SameSite=Lax"
    r = server.post("/token", data={"grant_type": "password", "username": email, "password": "secret-pw"})
    assert "Set-Cookie" not in r.headers


def test_rate_limit_header(make_server, engine):
    server = make_server(engine, GOTRUE_RATE_LIMIT_HEADER="My-Custom-Header")
    for _ in range(30):
        assert server.post("/token", json={}, headers={"My-Custom-Header": "1.2.3.4"}).status_code == 400
    r = server.post("/token", json={}, headers={"My-Custom-Header": "1.2.3.4", "X-Forwarded-For": "1.1.1.1"})
    assert (r.status_code, r.json()) == (429, {"code": 429, "msg": "Rate limit exceeded"})
    assert server.post("/token", json={}, headers={"My-Custom-Header": "5.6.7.8"}).status_code == 400
