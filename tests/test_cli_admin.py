"""`python gotrue.py admin createuser|deleteuser|editrole` (spec §12), run as a real subprocess
against the database of a running server, and checked over HTTP."""

import os
import subprocess
import sys
import uuid

import pytest

from conftest import DEADLINE, ROOT, unique_email
from test_admin_users import NIL, bearer, check_error, claims_of, try_login, new_admin


def cli(server, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "gotrue.py"), "admin", *args], cwd=server.workdir,
                          env=server.env, capture_output=True, text=True, timeout=DEADLINE)


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def fails(result, message, code=1):
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert "Created user" not in result.stdout and "Removed user" not in result.stdout
    assert "Traceback" not in result.stderr


def audit_mentions(server, email):
    return server.sql("SELECT COUNT(*) AS n FROM {audit_log_entries} WHERE payload LIKE ?", f"%{email}%")[0]["n"]


def test_createuser_then_log_in_over_http(server):
    email = unique_email("cli")
    assert f"Created user: {email}" in ok(cli(server, "createuser", email, "cli-pw", "--confirm"))
    tokens = server.login(email, "cli-pw")
    me = server.get("/user", token=tokens["access_token"])
    assert me.status_code == 200 and me.json()["email"] == email and me.json()["role"] == ""
    assert me.json()["id"] == claims_of(tokens["access_token"])["sub"] == server.user_row(email)["id"]
    assert try_login(server, email, "other").status_code == 400
    assert audit_mentions(server, email) == 1  # only the HTTP login; the CLI writes no entry


def test_first_admin_of_a_new_site(server):
    """How a site gets its first admin: create it on the command line, then use the API."""
    email = unique_email("first-admin")
    ok(cli(server, "createuser", email, "admin-pw", "--admin", "--confirm", "-i", NIL))
    token = server.login(email, "admin-pw")["access_token"]
    r = server.get("/admin/users", params={"filter": email}, token=token)
    assert r.status_code == 200 and [(u["email"], u["role"]) for u in r.json()["users"]] == [(email, "admin")]
    r = server.post("/admin/users", token=token, json={"email": unique_email(), "password": "pw"})
    assert r.status_code == 200, r.text
    check_error(server.get("/admin/users", token=token, headers={"X-JWT-AUD": "other"}), 401, "User not allowed")


def test_superadmin_may_act_in_any_audience(server):
    email = unique_email("super")
    ok(cli(server, "createuser", email, "pw", "--superadmin", "--confirm"))
    token = server.login(email, "pw")["access_token"]
    r = server.get("/admin/users", headers=bearer(token, **{"X-JWT-AUD": "any-aud"}))
    assert r.status_code == 200 and r.json()["aud"] == "any-aud"


def test_role_argument_and_unconfirmed_user(server):
    email = unique_email("editor")
    ok(cli(server, "createuser", email, "pw", "editor"))
    r = try_login(server, email, "pw")
    assert r.status_code == 400 and r.json()["error_description"] == "Email not confirmed"
    row = server.user_row(email)
    assert row["role"] == "editor" and row["confirmed_at"] is None and not row["is_super_admin"]


@pytest.mark.parametrize("layout", [
    pytest.param(["createuser", "EMAIL", "pw", "--confirm", "--aud", "AUD"], id="options last"),
    pytest.param(["-a", "AUD", "--confirm", "createuser", "EMAIL", "pw"], id="options first"),
    pytest.param(["createuser", "-a", "AUD", "--confirm", "EMAIL", "pw"], id="options after the action"),
    pytest.param(["createuser", "--confirm", "-i", NIL, "--aud", "AUD", "EMAIL", "pw"], id="upstream's -i"),
])
def test_createuser_in_an_audience(server, layout):
    email, aud = unique_email("aud"), "cli-" + uuid.uuid4().hex[:8]
    ok(cli(server, *[{"EMAIL": email, "AUD": aud}.get(a, a) for a in layout]))
    assert try_login(server, email, "pw").status_code == 400
    token = server.login(email, "pw", headers={"X-JWT-AUD": aud})["access_token"]
    assert claims_of(token)["aud"] == aud
    fails(cli(server, "deleteuser", email), "Error finding user")  # another audience: not found
    ok(cli(server, "deleteuser", email, "--aud", aud))
    assert server.user_row(email) is None


def test_createuser_refuses_a_duplicate(server):
    email = unique_email("dup")
    ok(cli(server, "createuser", email, "pw"))
    fails(cli(server, "createuser", email, "other"), "Error creating new user: user already exists")
    fails(cli(server, "createuser", email.upper(), "other"), "Error creating new user: user already exists")
    signed_up = server.signup()["email"]
    fails(cli(server, "createuser", signed_up, "other"), "Error creating new user: user already exists")
    assert len(server.sql("SELECT id FROM {users} WHERE email = ?", email)) == 1


@pytest.mark.parametrize("args, message, code", [
    (["createuser"], "Not enough arguments to createuser command. Expected at least email and password values", 1),
    (["createuser", "only-email@example.com"], "Not enough arguments to createuser command", 1),
    (["createuser", "not-an-email", "pw"], "Unable to validate email address", 1),
    (["createuser", "long@example.com", "x" * 73], "Password is too long", 1),
    (["deleteuser"], "Not enough arguments to deleteuser command. Expected at least ID or email", 1),
    (["deleteuser", "nobody-here@example.com"], "Error finding user", 1),
    (["deleteuser", "not-a-uuid"], "Error finding user", 1),
    (["deleteuser", "random-uuid"], "Error finding user", 1),
    (["editrole"], "Not enough arguments", 1),
    (["frobnicate", "x@example.com"], "invalid choice", 2),
])
def test_bad_command_lines_fail_clearly(server, args, message, code):
    args = [str(uuid.uuid4()) if a == "random-uuid" else a for a in args]
    fails(cli(server, *args), message, code)
    for address in ("only-email@example.com", "long@example.com"):
        assert server.user_row(address) is None


@pytest.mark.parametrize("by", ["email", "id"])
def test_deleteuser_removes_the_user_and_its_sessions(server, by):
    email = unique_email("gone")
    ok(cli(server, "createuser", email, "pw", "--confirm"))
    tokens = server.login(email, "pw")
    user_id = claims_of(tokens["access_token"])["sub"]
    arg = email if by == "email" else user_id
    assert f"Removed user: {arg}" in ok(cli(server, "deleteuser", arg))
    assert server.user_row(email) is None
    assert try_login(server, email, "pw").status_code == 400
    r = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.json() == {"error": "invalid_grant", "error_description": "Invalid Refresh Token"}
    admin = new_admin(server)
    check_error(server.get(f"/admin/users/{user_id}", token=admin.token), 404, "User not found")
    fails(cli(server, "deleteuser", arg), "Error finding user")


@pytest.mark.parametrize("by", ["email", "id"])
def test_editrole_makes_an_admin(server, by):
    email = unique_email("promoted")
    ok(cli(server, "createuser", email, "pw", "--confirm"))
    token = server.login(email, "pw")["access_token"]
    check_error(server.get("/admin/users", token=token), 401, "User not allowed")
    arg = email if by == "email" else claims_of(token)["sub"]
    ok(cli(server, "editrole", arg, "admin"))
    assert server.get("/admin/users", token=token).status_code == 200  # the same token, now an admin
    fails(cli(server, "editrole", arg), "Not enough arguments to editrole command")
    assert server.user_row(email)["role"] == "admin"
    ok(cli(server, "editrole", arg, "writer"))
    check_error(server.get("/admin/users", token=token), 401, "User not allowed")


def test_cli_reports_an_unmigrated_database(make_server, engine, tmp_path, new_database):
    """Pointed at an empty database, the CLI says so instead of crashing."""
    srv = make_server(engine)
    env = {**srv.env, **new_database(engine)}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "gotrue.py"), "admin", "createuser", unique_email(), "pw"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=DEADLINE)
    assert r.returncode == 1 and "migrate" in r.stderr and "Traceback" not in r.stderr, r.stderr
