"""Security regressions of issue 12 (design: pre-account takeover, cross-audience admins).

The other sections of the design live in test_security_*.py, which import the helpers below:
  test_security_mail.py    mail injection, mail bombing, enumeration, non-ASCII local parts
  test_security_limits.py  brute force, sessions ending on a password change, refresh reuse
  test_security_http.py    hostile JSON, metadata size, headers, waitress's own errors

Real servers over HTTP on SQLite and MariaDB, a real SMTP server; time passes by moving database
columns, never by sleeping."""

import base64
import json
import time

import jwt
import pytest

import gotrue
from conftest import link_token, unique_email

BAD_LOGIN = {"error": "invalid_grant", "error_description": "No user found with that email, or password invalid."}
INVALID_REFRESH = {"error": "invalid_grant", "error_description": "Invalid Refresh Token"}
USER_NOT_FOUND = {"code": 404, "msg": "User not found"}
NOT_ALLOWED = {"code": 401, "msg": "User not allowed"}
THROTTLED = {"code": 429, "msg": "Rate limit exceeded, try again later"}
LOCKED = {"code": 429, "msg": "Too many failed login attempts, try again later"}
INVALID_EMAIL = {"code": 422, "msg": "Unable to validate email address: invalid format"}
TAKEN = {"code": 422, "msg": "Email address already registered by another user"}


# --- helpers shared by the test_security_*.py modules ------------------------------------------

def password_grant(server, email, password, headers=None):
    return server.post("/token", data={"grant_type": "password", "username": email, "password": password},
                       headers=headers)


def refresh(server, token):
    return server.post("/token", data={"grant_type": "refresh_token", "refresh_token": token})


def assert_refused(server, email, password, headers=None):
    """The password does not log in (and the answer says nothing more than upstream's)."""
    r = password_grant(server, email, password, headers)
    assert (r.status_code, r.json()) == (400, BAD_LOGIN), r.text


def verify(server, kind, token, **body):
    return server.post("/verify", json={"type": kind, "token": token, **body})


def mint(server, **claims):
    """A token signed with the server's secret; exp in 10 minutes."""
    claims.setdefault("exp", int(time.time()) + 600)
    return jwt.encode(claims, server.env["GOTRUE_JWT_SECRET"], algorithm="HS256")


def system_token(server):
    """sub "0": a system token, which upstream treats as a super admin."""
    return mint(server, sub="0")


def row_by_id(server, user_id):
    rows = server.sql("SELECT * FROM {users} WHERE id = ?", user_id)
    return rows[0] if rows else None


def meta(row, column="raw_user_meta_data"):
    raw = row[column]
    return json.loads(raw) if raw not in (None, "") else None


def settled_count(server, mailbox, address):
    """How many mails `address` got, once every mail already on its way has arrived: a marker
    mail triggered afterwards is waited for first (a request mails before it answers)."""
    marker = unique_email("marker")
    server.signup(marker)
    mailbox.wait_for(marker)
    return len(mailbox.to(address))


def envelope_of(mailbox, msg):
    with mailbox.cond:
        return next(env for _, m, env in mailbox.messages if m is msg)


def strict_json(text):
    """JSON as RFC 8259 has it: NaN and Infinity (which Python accepts) are errors."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def jwt_payload(token):
    """The claims of a JWT, read strictly (no NaN)."""
    part = token.split(".")[1]
    return strict_json(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode())


def past(seconds):
    return gotrue.now() - gotrue.dt.timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def admin(server):
    return server.admin_token()


# --- 1. pre-account takeover: an unconfirmed account belongs to nobody yet -----------------------

def test_victim_signup_replaces_the_attackers_password_and_link(server, mailbox):
    email = unique_email("victim")
    planted = server.signup(email, "attacker-pw", data={"planted": True})
    attacker_link = link_token(mailbox.wait_for(email, 1), "confirmation")
    server.backdate(email, "confirmation_sent_at", 3600)  # the victim comes after the mail window
    second = server.signup(email, "victim-pw", data={"name": "Vic"})
    assert second["id"] == planted["id"]
    assert second["user_metadata"] == {"name": "Vic"}  # replaced, not merged with the planted data
    victim_link = link_token(mailbox.wait_for(email, 2), "confirmation")
    assert victim_link != attacker_link
    r = verify(server, "signup", attacker_link)
    assert (r.status_code, r.json()) == (404, USER_NOT_FOUND)
    r = verify(server, "signup", victim_link)
    assert r.status_code == 200, r.text
    me = server.get("/user", token=r.json()["access_token"]).json()
    assert me["id"] == planted["id"] and me["confirmed_at"] and me["user_metadata"] == {"name": "Vic"}
    assert server.login(email, "victim-pw")["access_token"]
    assert_refused(server, email, "attacker-pw")
    assert len(server.sql("SELECT id FROM {users} WHERE email = ?", email)) == 1


def test_resignup_inside_the_mail_window_still_kills_the_earlier_link(server, mailbox):
    """No new mail (throttled), but the attacker's link and password are gone all the same, and
    signing up without data leaves no planted metadata."""
    email = unique_email("victim")
    server.signup(email, "attacker-pw", data={"planted": True})
    attacker_link = link_token(mailbox.wait_for(email, 1), "confirmation")
    again = server.signup(email, "victim-pw")
    assert again["user_metadata"] == {}
    assert meta(server.user_row(email)) == {}
    assert server.user_row(email)["confirmation_token"] not in ("", None, attacker_link)
    r = verify(server, "signup", attacker_link)
    assert (r.status_code, r.json()) == (404, USER_NOT_FOUND)
    assert settled_count(server, mailbox, email) == 1
    # an admin confirming now activates nothing the attacker knows
    row = server.user_row(email)
    assert verify(server, "signup", row["confirmation_token"]).status_code == 200
    assert_refused(server, email, "attacker-pw")
    assert server.login(email, "victim-pw")


def test_resignup_with_the_same_password_keeps_the_first_link(server, mailbox):
    email = unique_email("twice")
    first = server.signup(email, "same-pw")
    link = link_token(mailbox.wait_for(email, 1), "confirmation")
    assert server.signup(email, "same-pw")["id"] == first["id"]
    assert server.user_row(email)["confirmation_token"] == link
    r = verify(server, "signup", link)
    assert r.status_code == 200, r.text
    assert server.login(email, "same-pw")["access_token"]


def test_recovery_of_an_unconfirmed_account_drops_the_attackers_password(server, mailbox):
    email = unique_email("victim")
    server.signup(email, "attacker-pw")
    mailbox.wait_for(email, 1)
    r = server.post("/recover", json={"email": email})
    assert (r.status_code, r.json()) == (200, {})
    msg = mailbox.wait_for(email, 2)
    assert msg["Subject"] == "Reset Your Password"
    r = verify(server, "recovery", link_token(msg, "recovery"))
    assert r.status_code == 200, r.text
    access = r.json()["access_token"]
    assert server.get("/user", token=access).json()["confirmed_at"]
    assert_refused(server, email, "attacker-pw")
    r = server.put("/user", token=access, json={"password": "victim-pw"})
    assert r.status_code == 200, r.text
    assert server.login(email, "victim-pw")["access_token"]
    assert_refused(server, email, "attacker-pw")


def test_recovery_of_a_confirmed_account_keeps_its_password(server, mailbox):
    email = unique_email("owner")
    server.confirmed_user(email, "own-pw")
    assert server.post("/recover", json={"email": email}).status_code == 200
    r = verify(server, "recovery", link_token(mailbox.wait_for(email, 2), "recovery"))
    assert r.status_code == 200, r.text
    assert server.login(email, "own-pw")["access_token"]


def test_admin_confirmation_drops_the_pending_password(server, admin):
    email = unique_email("victim")
    user = server.signup(email, "attacker-pw")
    r = server.put(f"/admin/users/{user['id']}", token=admin, json={"confirm": True})
    assert r.status_code == 200, r.text
    assert r.json()["confirmed_at"]
    assert_refused(server, email, "attacker-pw")
    # a password set by the same request is the account's password
    other = unique_email("victim")
    user = server.signup(other, "attacker-pw")
    r = server.put(f"/admin/users/{user['id']}", token=admin, json={"confirm": True, "password": "admin-set-pw"})
    assert r.status_code == 200, r.text
    assert server.login(other, "admin-set-pw")["access_token"]
    assert_refused(server, other, "attacker-pw")


def test_invite_of_an_unconfirmed_address_takes_it_from_the_attacker(server, mailbox, admin):
    email = unique_email("victim")
    planted = server.signup(email, "attacker-pw", data={"planted": True})
    attacker_link = link_token(mailbox.wait_for(email, 1), "confirmation")
    r = server.post("/invite", token=admin, json={"email": email, "data": {"team": "blue"}})
    assert r.status_code == 200, r.text
    invited = r.json()
    assert invited["id"] == planted["id"] and invited["invited_at"]
    assert invited["user_metadata"] == {"team": "blue"}
    msg = mailbox.wait_for(email, 2)
    assert msg["Subject"] == "You have been invited"
    invite_link = link_token(msg, "invite")
    assert_refused(server, email, "attacker-pw")
    r = verify(server, "signup", attacker_link)
    assert (r.status_code, r.json()) == (404, USER_NOT_FOUND)
    r = verify(server, "signup", invite_link, password="victim-pw")
    assert r.status_code == 200, r.text
    assert server.login(email, "victim-pw")["access_token"]
    assert_refused(server, email, "attacker-pw")
    assert len(server.sql("SELECT id FROM {users} WHERE email = ?", email)) == 1
    assert meta(server.user_row(email)) == {"team": "blue"}


def test_invite_of_a_confirmed_address_is_still_refused(server, admin):
    email = unique_email("owner")
    server.confirmed_user(email, "own-pw")
    before = server.user_row(email)
    r = server.post("/invite", token=admin, json={"email": email})
    assert (r.status_code, r.json()) == (422, TAKEN)
    assert server.user_row(email) == before
    assert server.login(email, "own-pw")


# --- 2. cross-audience administration ------------------------------------------------------------

def tenant_user(server, aud, **body):
    """A confirmed user (password secret-pw) in audience `aud`."""
    return server.confirmed_user(unique_email(aud), headers={"X-JWT-AUD": aud}, **body)


def test_an_admin_of_one_audience_cannot_touch_users_of_another(server):
    admin_a = server.admin_token("tenant-a")
    victim = tenant_user(server, "tenant-b", data={"name": "B"})
    before = row_by_id(server, victim["id"])
    path = f"/admin/users/{victim['id']}"
    takeover = {"role": "admin", "password": "taken-over-pw", "confirm": True, "email": unique_email("moved"),
                "user_metadata": {"owned": True}, "app_metadata": {"roles": ["admin"]}}
    for headers in ({}, {"X-JWT-AUD": "tenant-a"}):
        for method, body in (("GET", None), ("PUT", takeover), ("PUT", {**takeover, "aud": "tenant-a"}),
                             ("DELETE", None)):
            r = server.request(method, path, token=admin_a, headers=headers, json=body)
            assert (r.status_code, r.json()) == (404, USER_NOT_FOUND), (method, headers, body, r.text)
    # naming the other audience (header or body) fails the admin check itself
    for headers, body in (({}, {"aud": "tenant-b", "role": "admin"}),
                          ({"X-JWT-AUD": "tenant-b"}, {"role": "admin"})):
        r = server.put(path, token=admin_a, headers=headers, json=body)
        assert (r.status_code, r.json()) == (401, NOT_ALLOWED), r.text
    r = server.delete(path, token=admin_a, headers={"X-JWT-AUD": "tenant-b"})
    assert (r.status_code, r.json()) == (401, NOT_ALLOWED), r.text
    # nothing changed: not promoted, not moved, not deleted, the password is the owner's
    assert row_by_id(server, victim["id"]) == before
    headers_b = {"X-JWT-AUD": "tenant-b"}
    token_b = server.login(victim["email"], headers=headers_b)["access_token"]
    assert server.get("/admin/users", token=token_b, headers=headers_b).status_code == 401
    assert_refused(server, victim["email"], "taken-over-pw", headers_b)
    # the same admin does manage its own audience
    own = tenant_user(server, "tenant-a")
    r = server.put(f"/admin/users/{own['id']}", token=admin_a, json={"user_metadata": {"ok": True}})
    assert r.status_code == 200 and r.json()["user_metadata"] == {"ok": True}, r.text
    assert server.get(f"/admin/users/{own['id']}", token=admin_a).status_code == 200


def test_invite_creates_the_user_in_the_audience_the_admin_check_approved(server, mailbox):
    admin_a = server.admin_token("tenant-a")
    email = unique_email("invitee")
    r = server.post("/invite", token=admin_a, headers={"X-JWT-AUD": "tenant-b"},
                    json={"email": email, "aud": "tenant-a"})
    assert r.status_code == 200, r.text
    assert r.json()["aud"] == "tenant-a"
    assert [row["aud"] for row in server.sql("SELECT aud FROM {users} WHERE email = ?", email)] == ["tenant-a"]
    assert mailbox.wait_for(email)["Subject"] == "You have been invited"


def test_invite_naming_another_audience_in_the_body_is_refused(server):
    admin_a = server.admin_token("tenant-a")
    email = unique_email("invitee")
    r = server.post("/invite", token=admin_a, headers={"X-JWT-AUD": "tenant-a"},
                    json={"email": email, "aud": "tenant-b"})
    assert (r.status_code, r.json()) == (401, NOT_ALLOWED), r.text
    assert server.sql("SELECT aud FROM {users} WHERE email = ?", email) == []


def test_super_admins_and_system_tokens_act_across_audiences(server):
    victim = tenant_user(server, "tenant-b")
    path = f"/admin/users/{victim['id']}"
    boss = unique_email("boss")
    server.confirmed_user(boss, headers={"X-JWT-AUD": "tenant-a"})
    server.sql("UPDATE {users} SET is_super_admin = 1 WHERE email = ?", boss)
    boss_token = server.login(boss, headers={"X-JWT-AUD": "tenant-a"})["access_token"]
    r = server.get(path, token=boss_token)
    assert r.status_code == 200 and r.json()["id"] == victim["id"], r.text
    r = server.put(path, token=system_token(server), json={"user_metadata": {"by": "system"}})
    assert r.status_code == 200 and r.json()["user_metadata"] == {"by": "system"}, r.text
    r = server.delete(path, token=boss_token)
    assert r.status_code == 200, r.text
    assert row_by_id(server, victim["id"]) is None


def test_the_operator_token_acts_across_audiences(make_server, engine):
    operator = "operator-token-for-security-tests"
    server = make_server(engine, GOTRUE_OPERATOR_TOKEN=operator)
    victim = tenant_user(server, "tenant-b")
    path = f"/admin/users/{victim['id']}"
    r = server.get(path, token=operator)
    assert r.status_code == 200 and r.json()["aud"] == "tenant-b", r.text
    r = server.put(path, token=operator, json={"role": "editor"})
    assert r.status_code == 200, r.text
    assert row_by_id(server, victim["id"])["role"] == "editor"
    r = server.delete(path, token=operator)
    assert r.status_code == 200, r.text
    assert row_by_id(server, victim["id"]) is None
    email = unique_email("invitee")
    r = server.post("/invite", token=operator, headers={"X-JWT-AUD": "tenant-b"}, json={"email": email})
    assert r.status_code == 200 and r.json()["aud"] == "tenant-b", r.text
