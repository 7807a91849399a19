"""Security regressions of issue 12, limits and sessions: password brute force (design §5),
sessions ending on a password change (§6), refresh-token reuse between tabs (§8).
Helpers: test_security.py.

The login back-off starts at 1 s after the threshold (blocked until the last failure + 2^(n-N) s),
so the attempts right after the threshold run back to back; further time is moved in the
database (rate_limits.blocked_until), never waited for."""

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import requests

import gotrue
from conftest import link_token, unique_email
from test_security import (BAD_LOGIN, INVALID_REFRESH, LOCKED, admin, assert_refused, password_grant, past,  # noqa: F401
                           refresh, verify)


# --- 5. brute force --------------------------------------------------------------------------------

def assert_locked(r):
    assert (r.status_code, r.json()) == (429, LOCKED), r.text
    assert re.fullmatch(r"[1-9][0-9]*", r.headers.get("Retry-After", "")), r.headers


def fail(server, email, headers=None):
    r = password_grant(server, email, "wrong-pw", headers)
    assert (r.status_code, r.json()) == (400, BAD_LOGIN), r.text


def lift_blocks(server):
    """Make every back-off under way end now (its counter stays)."""
    n = server.sql("UPDATE {rate_limits} SET blocked_until = ? WHERE blocked_until > ?", past(1), gotrue.now())
    assert n >= 1, "no back-off found in rate_limits"


def test_an_account_is_locked_after_five_failures(make_server, engine):
    server = make_server(engine)
    email = unique_email("target")
    server.confirmed_user(email, "right-pw")
    for _ in range(5):
        fail(server, email)
    assert_locked(password_grant(server, email, "wrong-pw"))
    assert_locked(password_grant(server, email, "right-pw"))  # not even the right password is checked
    assert_locked(password_grant(server, email.upper(), "right-pw"))  # the account, whatever the case
    # other accounts, from the same client, are not affected
    other = unique_email("other")
    server.confirmed_user(other)
    assert server.login(other)["access_token"]
    # once the back-off is over the right password works, and resets the count
    lift_blocks(server)
    assert server.login(email, "right-pw")["access_token"]
    for _ in range(5):
        fail(server, email)
    assert_locked(password_grant(server, email, "wrong-pw"))


def test_an_unknown_account_is_locked_the_same_way(make_server, engine):
    server = make_server(engine)
    ghost = unique_email("ghost")
    for _ in range(5):
        fail(server, ghost)
    assert_locked(password_grant(server, ghost, "anything"))
    assert_locked(password_grant(server, ghost.upper(), "anything"))


def test_the_back_off_doubles_up_to_fifteen_minutes(make_server, engine):
    server = make_server(engine)
    email = unique_email("target")
    server.confirmed_user(email, "right-pw")
    for _ in range(5):
        fail(server, email)
    first = password_grant(server, email, "wrong-pw")
    assert_locked(first)
    assert int(first.headers["Retry-After"]) <= 2  # 2^0 s after the fifth failure (rounded up)
    # forty failures later the doubling would be 2^35 s: it stops at 15 minutes
    assert server.sql("UPDATE {rate_limits} SET hits = 40 WHERE hits >= 5 AND blocked_until > ?", gotrue.now()) == 1
    lift_blocks(server)
    fail(server, email)
    r = password_grant(server, email, "right-pw")
    assert_locked(r)
    # (MariaDB keeps whole seconds, and Retry-After rounds up: one second of slack)
    assert 60 < int(r.headers["Retry-After"]) <= 900 + 1, r.headers


def test_a_lock_is_kept_in_the_database_across_a_restart(make_server, engine):
    server = make_server(engine, GOTRUE_SECURITY_LOGIN_MAX_FAILURES=2, GOTRUE_SECURITY_CLIENT_MAX_FAILURES=0)
    for _ in range(35):  # the per-client limit is off (0): past its default of 30, one failure per account
        fail(server, unique_email("ghost"))
    email = unique_email("target")
    server.confirmed_user(email, "right-pw")
    fail(server, email)
    fail(server, email)
    assert_locked(password_grant(server, email, "right-pw"))  # the setting moved the threshold to 2
    # a back-off long enough to outlast the restart (moved in the database, as time would)
    later = gotrue.now() + gotrue.dt.timedelta(seconds=600)
    assert server.sql("UPDATE {rate_limits} SET blocked_until = ? WHERE blocked_until > ?", later, gotrue.now()) >= 1
    server.stop()
    server.start()
    r = password_grant(server, email, "right-pw")
    assert_locked(r)
    assert int(r.headers["Retry-After"]) > 60
    other = unique_email("other")
    server.confirmed_user(other)
    assert server.login(other)["access_token"]  # the lock is the account's, not the client's
    lift_blocks(server)
    assert server.login(email, "right-pw")["access_token"]


def test_a_client_is_locked_after_its_own_threshold(make_server, engine):
    server = make_server(engine, GOTRUE_RATE_LIMIT_HEADER="X-Client-Id", GOTRUE_SECURITY_CLIENT_MAX_FAILURES=3,
                         GOTRUE_SECURITY_LOGIN_MAX_FAILURES=0)
    email = unique_email("target")
    server.confirmed_user(email, "right-pw")

    def client(name):
        return {"X-Client-Id": name}
    for _ in range(3):  # three accounts, one client
        fail(server, unique_email("ghost"), client("c1"))
    assert_locked(password_grant(server, email, "right-pw", client("c1")))
    # another value of the header is another client
    assert password_grant(server, email, "right-pw", client("c2")).status_code == 200
    # a success from a client resets its count
    fail(server, unique_email("ghost"), client("c3"))
    fail(server, unique_email("ghost"), client("c3"))
    assert password_grant(server, email, "right-pw", client("c3")).status_code == 200
    fail(server, unique_email("ghost"), client("c3"))
    fail(server, unique_email("ghost"), client("c3"))
    assert password_grant(server, email, "right-pw", client("c3")).status_code == 200
    # the per-account limit is off (0): many failures of one account, from many clients
    for i in range(8):
        fail(server, email, client(f"spray-{i}"))
    assert password_grant(server, email, "right-pw", client("c2")).status_code == 200


# --- 6. sessions end on a password change -------------------------------------------------------

def two_sessions(server):
    email = unique_email("sessions")
    user = server.confirmed_user(email, "old-pw")
    return user, server.login(email, "old-pw"), server.login(email, "old-pw")


def test_a_password_change_ends_the_other_sessions_only(server):
    user, s1, s2 = two_sessions(server)
    r = server.put("/user", token=s1["access_token"], json={"password": "new-pw"})
    assert r.status_code == 200, r.text
    r = refresh(server, s2["refresh_token"])
    assert (r.status_code, r.json()) == (400, INVALID_REFRESH), r.text
    r = refresh(server, s1["refresh_token"])
    assert r.status_code == 200, r.text
    assert refresh(server, r.json()["refresh_token"]).status_code == 200
    assert server.login(user["email"], "new-pw")["access_token"]
    assert_refused(server, user["email"], "old-pw")


def test_a_session_that_rotated_its_token_keeps_it_on_a_password_change(server):
    user, s1, s2 = two_sessions(server)
    rotated = refresh(server, s1["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    rotated = rotated.json()
    r = server.put("/user", token=rotated["access_token"], json={"password": "new-pw"})
    assert r.status_code == 200, r.text
    assert refresh(server, rotated["refresh_token"]).status_code == 200
    r = refresh(server, s2["refresh_token"])
    assert (r.status_code, r.json()) == (400, INVALID_REFRESH), r.text


def test_an_admin_password_reset_ends_every_session(server, admin):
    user, s1, s2 = two_sessions(server)
    r = server.put(f"/admin/users/{user['id']}", token=admin, json={"password": "reset-pw"})
    assert r.status_code == 200, r.text
    for session in (s1, s2):
        r = refresh(server, session["refresh_token"])
        assert (r.status_code, r.json()) == (400, INVALID_REFRESH), r.text
    assert server.login(user["email"], "reset-pw")["access_token"]


def test_a_completed_recovery_ends_the_earlier_sessions(server, mailbox):
    user, s1, s2 = two_sessions(server)
    assert server.post("/recover", json={"email": user["email"]}).status_code == 200
    r = verify(server, "recovery", link_token(mailbox.wait_for(user["email"], 2), "recovery"))
    assert r.status_code == 200, r.text
    fresh = r.json()
    for session in (s1, s2):
        r = refresh(server, session["refresh_token"])
        assert (r.status_code, r.json()) == (400, INVALID_REFRESH), r.text
    r = refresh(server, fresh["refresh_token"])
    assert r.status_code == 200, r.text
    assert server.get("/user", token=r.json()["access_token"]).status_code == 200


def test_other_users_sessions_are_untouched(server):
    bystander, b1, _ = two_sessions(server)
    user, s1, _ = two_sessions(server)
    assert server.put("/user", token=s1["access_token"], json={"password": "new-pw"}).status_code == 200
    assert refresh(server, b1["refresh_token"]).status_code == 200


# --- 8. refresh-token races between tabs ------------------------------------------------------------

def rotated_pair(server):
    email = unique_email("tabs")
    server.confirmed_user(email)
    old = server.login(email)["refresh_token"]
    r = refresh(server, old)
    assert r.status_code == 200, r.text
    return old, r.json()["refresh_token"]


def test_a_token_replayed_at_once_is_refused_but_revokes_nothing(server):
    old, new = rotated_pair(server)
    r = refresh(server, old)
    assert (r.status_code, r.json()) == (400, INVALID_REFRESH), r.text
    r = refresh(server, new)
    assert r.status_code == 200, r.text
    assert refresh(server, r.json()["refresh_token"]).status_code == 200


def test_a_token_replayed_after_the_interval_revokes_its_successor(server):
    old, new = rotated_pair(server)
    assert server.sql("UPDATE {refresh_tokens} SET updated_at = ? WHERE token = ?", past(11), old) == 1
    r = refresh(server, old)
    assert (r.status_code, r.json()) == (400, INVALID_REFRESH), r.text
    r = refresh(server, new)
    assert (r.status_code, r.json()) == (400, INVALID_REFRESH), r.text


def test_concurrent_refreshes_leave_exactly_one_working_session(server):
    email = unique_email("race")
    server.confirmed_user(email)
    token = server.login(email)["refresh_token"]
    n = 20
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait()
        return requests.post(server.url + "/token", data={"grant_type": "refresh_token", "refresh_token": token},
                             timeout=60)
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [400] * (n - 1), [r.text for r in results]
    assert all(r.json() == INVALID_REFRESH for r in results if r.status_code == 400)
    winner = next(r.json()["refresh_token"] for r in results if r.status_code == 200)
    r = refresh(server, winner)
    assert r.status_code == 200, r.text
    assert refresh(server, r.json()["refresh_token"]).status_code == 200
