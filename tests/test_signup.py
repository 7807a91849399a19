"""POST /signup and POST /verify type signup: the confirmation mail's link confirms the account."""

import pytest

from conftest import link_token, mail_html, unique_email


def test_signup_sends_a_confirmation_whose_link_confirms(server, mailbox):
    email = unique_email()
    r = server.post("/signup", json={"email": email, "password": "pw-1", "data": {"full_name": "Ann"}})
    assert r.status_code == 200
    user = r.json()
    assert list(user) == ["id", "aud", "role", "email", "confirmation_sent_at", "app_metadata", "user_metadata",
                          "created_at", "updated_at"]
    assert user["email"] == email and user["app_metadata"] == {"provider": "email"}
    assert user["user_metadata"] == {"full_name": "Ann"}
    msg = mailbox.wait_for(email)
    assert msg["Subject"] == "Confirm Your Signup"
    token = link_token(msg, "confirmation")
    assert f'href="https://site.example.com/#confirmation_token={token}"' in mail_html(msg)
    # not confirmed yet: the password is right but login says so
    r = server.post("/token", data={"grant_type": "password", "username": email, "password": "pw-1"})
    assert r.status_code == 400 and r.json() == {"error": "invalid_grant", "error_description": "Email not confirmed"}
    r = server.post("/verify", json={"type": "signup", "token": token})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600 and len(body["refresh_token"]) == 22
    me = server.get("/user", token=body["access_token"]).json()
    assert me["confirmed_at"] and me["email"] == email
    # single use
    again = server.post("/verify", json={"type": "signup", "token": token})
    assert again.status_code == 404 and again.json() == {"code": 404, "msg": "User not found"}
    assert server.login(email, "pw-1")["access_token"]


def test_email_is_stored_lower_case_and_matched_case_insensitively(server):
    email = unique_email("MiXeD").replace("example", "Example")
    user = server.confirmed_user(email)
    assert user["email"] == email.lower()
    assert server.login(email.upper())["access_token"]
    r = server.post("/signup", json={"email": email.upper(), "password": "x"})
    assert r.status_code == 400
    assert r.json() == {"code": 400, "msg": "A user with this email address has already been registered"}


def test_resignup_of_an_unconfirmed_email_replaces_password_and_data(server):
    """An unconfirmed account belongs to nobody yet: the latest signup's password and data win
    (upstream kept the first password: a pre-account takeover)."""
    email = unique_email()
    first = server.signup(email, "first-pw", data={"a": 1, "b": 2})
    second = server.signup(email, "second-pw", data={"b": None, "c": 3})
    assert second["id"] == first["id"]
    assert second["user_metadata"] == {"c": 3}
    assert len(server.sql("SELECT id FROM {users} WHERE email = ?", email)) == 1
    server.sql("UPDATE {users} SET confirmed_at = ? WHERE email = ?", server.user_row(email)["created_at"], email)
    assert server.post("/token", data={"grant_type": "password", "username": email,
                                       "password": "first-pw"}).status_code == 400
    assert server.login(email, "second-pw")


@pytest.mark.parametrize("body, status, msg", [
    ({"email": "a@example.com"}, 422, "Signup requires a valid password"),
    ({"email": "a@example.com", "password": ""}, 422, "Signup requires a valid password"),
    ({"password": "pw"}, 422, "An email address is required"),
    ({"email": "not-an-email", "password": "pw"}, 422, "Unable to validate email address: invalid format"),
    ({"email": "a@example.com", "password": "p" * 73}, 422, "Password is too long: at most 72 bytes"),
    ({"email": "a@example.com", "password": "é" * 37}, 422, "Password is too long: at most 72 bytes"),
    ({"email": 5, "password": "pw"}, 400, "Could not read Signup params: email must be a string"),
    ({"email": "a@example.com", "password": "pw", "data": [1]}, 400, "Could not read Signup params: data must be an object"),
])
def test_bad_signups_are_refused_and_change_nothing(server, body, status, msg):
    before = server.sql("SELECT COUNT(*) AS n FROM {users}")[0]["n"]
    r = server.post("/signup", json=body)
    assert (r.status_code, r.json()) == (status, {"code": status, "msg": msg})
    assert server.sql("SELECT COUNT(*) AS n FROM {users}")[0]["n"] == before


@pytest.mark.parametrize("raw, msg", [
    (b"", "Could not read Signup params: EOF"),
    (b"{not json", "Could not read Signup params: invalid JSON"),
    (b"[1, 2]", "Could not read Signup params: expected a JSON object"),
])
def test_malformed_bodies_get_400(server, raw, msg):
    r = server.post("/signup", data=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["msg"].startswith(msg)


@pytest.mark.parametrize("raw", [
    b'{"email":"%s","password":"pw","data":{"x":NaN}}',
    b'{"email":"%s","password":"pw","data":{"x":-Infinity}}',
    b'{"email":"%s","password":"pw","data":{"x":"\\ud800"}}',
    b'{"email":"%s","password":"pw","data":' + b"[" * 100000 + b"]" * 100000 + b"}",
])
def test_json_that_cannot_be_stored_or_sent_back_is_400(server, raw):
    email = unique_email()
    r = server.post("/signup", data=raw.replace(b"%s", email.encode()), headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["msg"].startswith("Could not read Signup params: invalid JSON")
    assert server.user_row(email) is None


@pytest.mark.parametrize("email", ["a@" + "." * 64000 + "@", "x" * 250 + "@example.com", "a\x00b@example.com",
                                   "a@b", "two@@example.com"])
def test_hostile_or_long_emails_are_422(server, email):
    r = server.post("/signup", json={"email": email, "password": "pw"})
    assert (r.status_code, r.json()["msg"]) == (422, "Unable to validate email address: invalid format")


def test_an_audience_too_long_for_its_column_is_400(server):
    r = server.post("/signup", json={"email": unique_email(), "password": "pw"}, headers={"X-JWT-AUD": "a" * 300})
    assert (r.status_code, r.json()["msg"]) == (400, "The audience is too long: at most 255 characters")


def test_trailing_bytes_after_the_json_value_are_ignored_as_upstream(server):
    email = unique_email()
    r = server.post("/signup", data=f'{{"email":"{email}","password":"pw"}} trailing'.encode())
    assert r.status_code == 200 and r.json()["email"] == email


def test_audience_comes_from_x_jwt_aud(server):
    email = unique_email()
    user = server.signup(email, headers={"X-JWT-AUD": "other-site"})
    assert user["aud"] == "other-site"
    # the same address in another audience is another account
    assert server.signup(email)["id"] != user["id"]


def test_disabled_signup(make_server, engine):
    server = make_server(engine, GOTRUE_DISABLE_SIGNUP="true")
    r = server.post("/signup", json={"email": unique_email(), "password": "pw"})
    assert (r.status_code, r.json()) == (403, {"code": 403, "msg": "Signups not allowed for this instance"})
    assert server.get("/settings").json()["disable_signup"] is True


def test_autoconfirm_needs_no_mail_and_logs_in_at_once(make_server, engine, mailbox):
    server = make_server(engine, GOTRUE_MAILER_AUTOCONFIRM="true", GOTRUE_JWT_DEFAULT_GROUP_NAME="member")
    email = unique_email()
    user = server.signup(email)
    assert user["confirmed_at"] and "confirmation_sent_at" not in user and user["role"] == "member"
    assert server.login(email)["access_token"]
    assert mailbox.to(email) == []
    assert server.get("/settings").json()["autoconfirm"] is True


def test_email_provider_disabled(make_server, engine):
    server = make_server(engine, GOTRUE_EXTERNAL_EMAIL_DISABLED="true")
    for path, body in (("/signup", {"email": unique_email(), "password": "pw"}), ("/recover", {"email": "x@y.z"})):
        r = server.post(path, json=body)
        assert (r.status_code, r.json()) == (400, {"code": 400, "msg": "Unsupported email provider"})
    assert server.post("/token", data={"grant_type": "password"}).status_code == 400
    assert server.get("/settings").json()["external"]["email"] is False


def test_without_smtp_signup_still_works_and_stores_the_token(make_server, engine):
    """Upstream's no-op mailer: nothing is sent, the token is kept (an admin can confirm)."""
    server = make_server(engine, smtp=False)
    user = server.signup()
    row = server.user_row(user["email"])
    assert row["confirmation_token"] and row["confirmation_sent_at"]
    assert server.post("/verify", json={"type": "signup", "token": row["confirmation_token"]}).status_code == 200


@pytest.mark.parametrize("token", [" ", "\t", "   ", "\n"])
def test_verify_refuses_blank_tokens(server, token):
    r = server.post("/verify", json={"type": "signup", "token": token})
    assert (r.status_code, r.json()) == (422, {"code": 422, "msg": "Verify requires a token"})


@pytest.mark.parametrize("body, status, msg", [
    ({"type": "magic", "token": "abc"}, 422, "Verify requires a verification type"),
    ({"type": "signup", "token": "no-such-token"}, 404, "User not found"),
    ({"type": "recovery", "token": "no-such-token"}, 404, "User not found"),
    ({"type": "signup", "token": 12}, 400, "Could not read verification params: token must be a string"),
])
def test_verify_errors(server, body, status, msg):
    r = server.post("/verify", json=body)
    assert (r.status_code, r.json()) == (status, {"code": status, "msg": msg})


def test_expired_confirmation_token_is_refused(server):
    user = server.signup()
    token = server.user_row(user["email"])["confirmation_token"]
    server.backdate(user["email"], "confirmation_sent_at", 25 * 3600)
    r = server.post("/verify", json={"type": "signup", "token": token})
    assert (r.status_code, r.json()) == (422, {"code": 422, "msg": "Confirmation token expired"})
    assert not server.user_row(user["email"])["confirmed_at"]


def test_verify_sets_the_cookie_when_asked(server):
    user = server.signup()
    token = server.user_row(user["email"])["confirmation_token"]
    r = server.post("/verify", json={"type": "signup", "token": token}, headers={"X-Use-Cookie": "1"})
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"nf_jwt={r.json()['access_token']}; Path=/; Expires=")
    assert "Max-Age=86400; HttpOnly; Secure" in cookie
