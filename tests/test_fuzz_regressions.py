"""Defects found by fuzzing the contract (tests/test_fuzz.py) or while writing it: each test is
the request that showed the defect and the answer openapi.yaml promises, against real servers.

Header values below are Python strings with characters U+0080..U+00FF: requests sends them as
single Latin-1 bytes, i.e. header bytes that are not UTF-8 (legal on the wire, "obs-text")."""

import time
import uuid

import jwt

from conftest import unique_email

NIL_UUID = "00000000-0000-0000-0000-000000000000"


def assert_http_error(r, *statuses):
    """A JSON HTTP error with one of `statuses`, whose body's code is the status."""
    assert r.status_code in statuses, f"{r.status_code} {r.text[:500]}"
    assert r.headers["Content-Type"].split(";")[0] == "application/json", r.headers
    body = r.json()
    assert set(body) <= {"code", "msg", "error_id"} and body["code"] == r.status_code, body
    assert isinstance(body["msg"], str) and body["msg"]
    return body


def system_token(server, **claims):
    """A token of the system user (sub = nil UUID): a super admin of every audience."""
    claims = {"sub": NIL_UUID, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(claims, server.env["GOTRUE_JWT_SECRET"], algorithm="HS256")


# --- 1. header bytes that are not UTF-8 made every route that reads the header answer 500 ----------
# bottle decodes header values as UTF-8 on access and raises UnicodeDecodeError; the plugin turned
# it into {"code":500,"msg":"Internal server error"}. Found by the fuzzer on 14 of 20 operations.

def test_non_utf8_bearer_is_an_invalid_token(server):
    r = server.get("/user", headers={"Authorization": "Bearer \xe9\xe9"})
    assert_http_error(r, 401)


def test_non_utf8_authorization_on_an_admin_route(server):
    r = server.post("/logout", headers={"Authorization": "\x87"})
    assert_http_error(r, 401)
    r = server.get("/admin/users", headers={"Authorization": "Bearer \xff"})
    assert_http_error(r, 401)


def test_non_utf8_audience_header_on_signup(server):
    r = server.post("/signup", json={"email": unique_email(), "password": "secret-pw"}, headers={"X-JWT-AUD": "\xff"})
    assert_http_error(r, 400)


def test_non_utf8_audience_header_with_a_valid_token(server):
    email = unique_email()
    server.confirmed_user(email)
    token = server.login(email)["access_token"]
    r = server.get("/user", token=token, headers={"X-JWT-AUD": "\xe9"})
    assert_http_error(r, 400)
    r = server.get("/admin/users", token=server.admin_token(), headers={"X-JWT-AUD": "n\xbdW\xde\xda\xb0"})
    assert_http_error(r, 400, 401)


def test_non_utf8_audience_header_on_the_password_grant(server):
    r = server.post("/token", data={"grant_type": "password", "username": unique_email(), "password": "x"},
                    headers={"X-JWT-AUD": "_\x81.\xc6"})
    assert r.status_code == 400, r.text
    assert r.json().get("code", 400) == 400


def test_non_utf8_use_cookie_header_on_a_successful_login(server):
    email = unique_email()
    server.confirmed_user(email)
    r = server.post("/token", data={"grant_type": "password", "username": email, "password": "secret-pw"},
                    headers={"X-Use-Cookie": "\xe9"})
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "bearer"


def test_non_utf8_export_secret(make_server):
    server = make_server("sqlite", smtp=False, GOTRUE_API_EXPORT_SECRET="the-export-secret")
    r = server.get("/admin/users/export", token=server.admin_token(), headers={"Export-Secret": "\xe9"})
    assert_http_error(r, 401)


# --- 2. a path with a %-escape that is not UTF-8 was served as another route -----------------------
# bottle drops the undecodable bytes, so /adm%FFin/users is /admin/users: a proxy rule that keeps
# /admin/ private is walked around. Such a path names no route.

def test_undecodable_path_bytes_name_no_route(server):
    admin = server.admin_token()
    assert_http_error(server.get("/adm%FFin/users", token=admin), 400, 404)
    assert_http_error(server.get("/%FFadmin/audit", token=admin), 400, 404)
    assert_http_error(server.get("/heal%FFth"), 400, 404)


# --- 3. an address whose domain IDNA rewrites was stored as given and mailed elsewhere -------------
# "zw@exa\u200bmple.com" (a zero-width space in the domain) is a separate account, but IDNA's
# nameprep drops the U+200B, so its confirmation mail went to zw@example.com: one mailbox, any number
# of distinct accounts that look like its address, each confirmed through it. The stored address
# and the mail's recipient must be the same address: refuse such domains.

def test_domain_that_idna_rewrites_is_refused(server):
    tag = uuid.uuid4().hex[:8]
    for address in [f"zw{tag}@exa\u200bmple.com", f"shy{tag}@exam\u00adple.com", f"lig{tag}@\ufb00.example.com",
                    f"dot{tag}@example\u3002com.org"]:
        r = server.post("/signup", json={"email": address, "password": "secret-pw"})
        body = assert_http_error(r, 422)
        assert body["msg"] == "Unable to validate email address: invalid format", (address, body)


# --- 4. body audiences and roles had no length limit -------------------------------------------------
# The X-JWT-AUD header is limited to 255 characters (400), but a body "aud" (POST /admin/users,
# POST /invite) was stored at any length on SQLite (MySQL's varchar(255) refuses it): users in an
# audience no request can name, since the header that would name it is refused.

def test_body_audience_over_255_characters_is_refused(server):
    token = system_token(server)
    address = unique_email("longaud")
    r = server.post("/admin/users", token=token, json={"email": address, "password": "secret-pw", "aud": "a" * 300})
    assert_http_error(r, 400, 422)
    r = server.post("/invite", token=token, json={"email": address, "aud": "b" * 300})
    assert_http_error(r, 400, 422)
    assert not server.sql("SELECT id FROM {users} WHERE email = ?", address)


def test_role_over_255_characters_is_refused(server):
    address = unique_email("longrole")
    r = server.post("/admin/users", token=system_token(server), json={"email": address, "role": "r" * 300})
    assert_http_error(r, 400, 422)
    assert not server.sql("SELECT id FROM {users} WHERE email = ?", address)


# --- 5. /recover's 429 had no Retry-After ------------------------------------------------------------
# The contract (openapi.yaml) gives every 429 of /token and /recover a Retry-After in whole seconds.

def test_recover_429_says_when_to_retry(server):
    address = unique_email("recover")
    assert server.post("/recover", json={"email": address}).status_code == 200
    r = server.post("/recover", json={"email": address})
    assert_http_error(r, 429)
    assert int(r.headers.get("Retry-After", "0")) >= 1, r.headers


def test_token_rate_limit_429_says_when_to_retry(make_server):
    # the limiter of GOTRUE_RATE_LIMIT_HEADER (30 per header value, then one per 10 s) answered its
    # 429 without Retry-After
    server = make_server("sqlite", smtp=False, GOTRUE_RATE_LIMIT_HEADER="X-Client-Key")
    headers = {"X-Client-Key": "one-client"}
    statuses = [server.post("/token", data={"grant_type": "nope"}, headers=headers).status_code for _ in range(31)]
    assert statuses == [400] * 30 + [429], statuses
    r = server.post("/token", data={"grant_type": "nope"}, headers=headers)
    assert_http_error(r, 429)
    assert int(r.headers.get("Retry-After", "0")) >= 1, r.headers


# --- 6. /token ignored a multipart/form-data body -------------------------------------------------
# Upstream reads form values from the query, a urlencoded body or a multipart body; a multipart
# password grant here read nothing and answered unsupported_grant_type.

def test_token_reads_a_multipart_body(server):
    fields = {"grant_type": (None, "password"), "username": (None, unique_email()), "password": (None, "wrong")}
    r = server.post("/token", files=fields)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "invalid_grant", "error_description": "No user found with that email, or password invalid."}


# --- 7. MySQL/MariaDB: a refresh token with a 4-byte character made the refresh grant a 500 --------
# refresh_tokens is upstream's utf8 (3-byte) table; comparing its column with a string holding a
# character outside the BMP fails ("Illegal mix of collations ... for operation '='"). Such a value
# can be no token of ours.

def test_refresh_token_outside_the_bmp_is_an_invalid_grant(server):
    r = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": "\U0001F600"})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "invalid_grant", "error_description": "Invalid Refresh Token"}


# --- 8. external logins: upstream's texts and paths -------------------------------------------------

def test_authorize_without_a_provider_names_none(server):
    # the text said "Provider None could not be found" (Python's None); upstream names the empty value
    r = server.get("/authorize", allow_redirects=False)
    assert assert_http_error(r, 400)["msg"] == "Unsupported provider: Provider  could not be found"


def test_callback_answers_with_a_trailing_slash_too(server):
    # upstream's /callback is a sub-router, so /callback/ is the same endpoint (a REDIRECT_URI
    # configured with the slash works there); here it was a 404
    r = server.get("/callback/", allow_redirects=False)
    assert assert_http_error(r, 400)["msg"] == "OAuth state parameter missing"
