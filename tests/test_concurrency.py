"""Check-then-write races are closed in the database: parallel signups of one address make one
user, parallel refreshes of one token succeed once. Both engines, real threads, real HTTP."""

from concurrent.futures import ThreadPoolExecutor
import socket
import threading

import requests

from conftest import unique_email

N = 20


def in_parallel(fn, n=N):
    """Run fn n times at once (a barrier lines the threads up before the requests go out)."""
    barrier = threading.Barrier(n)

    def run(_):
        barrier.wait()
        return fn()
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_parallel_signups_of_one_email_make_one_user(server):
    email = unique_email("race")
    results = in_parallel(lambda: requests.post(server.url + "/signup", json={"email": email, "password": "pw"},
                                                timeout=60))
    assert all(r.status_code == 200 for r in results), {r.status_code: r.text for r in results}
    assert len({r.json()["id"] for r in results}) == 1
    assert server.sql("SELECT COUNT(*) AS n FROM {users} WHERE email = ?", email)[0]["n"] == 1


def test_parallel_refreshes_of_one_token_succeed_once(server):
    email = unique_email("race")
    server.confirmed_user(email)
    token = server.login(email)["refresh_token"]
    results = in_parallel(lambda: requests.post(server.url + "/token", timeout=60,
                                                data={"grant_type": "refresh_token", "refresh_token": token}))
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [400] * (N - 1), [r.text for r in results]
    assert all(r.json()["error"] == "invalid_grant" for r in results if r.status_code == 400)
    new_rows = server.sql("SELECT COUNT(*) AS n FROM {refresh_tokens} WHERE parent = ?", token)[0]["n"]
    assert new_rows == 1


def test_parallel_verifications_of_one_token_succeed_once(server):
    user = server.signup()
    token = server.user_row(user["email"])["confirmation_token"]
    results = in_parallel(lambda: requests.post(server.url + "/verify", json={"type": "signup", "token": token},
                                                timeout=60), n=10)
    assert sorted(r.status_code for r in results) == [200] + [404] * 9


def test_parallel_metadata_updates_lose_nothing(server):
    """Each request merges its own key: the row lock (MySQL) or write lock (SQLite) queues them."""
    email = unique_email("race")
    server.confirmed_user(email)
    token = server.login(email)["access_token"]
    keys = iter(range(N))
    lock = threading.Lock()

    def update():
        with lock:
            key = f"k{next(keys)}"
        return requests.put(server.url + "/user", json={"data": {key: True}}, timeout=60,
                            headers={"Authorization": f"Bearer {token}"}).status_code
    assert in_parallel(update) == [200] * N
    metadata = server.get("/user", token=token).json()["user_metadata"]
    assert sorted(metadata) == sorted(f"k{i}" for i in range(N))


def test_parallel_invites_of_one_email_make_one_user(server):
    admin, email = server.admin_token(), unique_email("race")
    results = in_parallel(lambda: requests.post(server.url + "/invite", json={"email": email}, timeout=60,
                                                headers={"Authorization": f"Bearer {admin}"}), n=8)
    # one invite mail per recipient and window: the others are throttled
    assert sorted(r.status_code for r in results) == [200] + [429] * 7, [r.text for r in results]
    assert server.sql("SELECT COUNT(*) AS n FROM {users} WHERE email = ?", email)[0]["n"] == 1


def test_a_stuck_mail_server_does_not_hold_the_database(make_server, engine):
    """While a signup waits on an SMTP server that never greets, requests that write (an admin
    creating a user, that user logging in) are served: no database lock is held across SMTP."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        server = make_server(engine, GOTRUE_SMTP_PORT=silent.getsockname()[1], GOTRUE_SMTP_TIMEOUT_SEC=20,
                             GOTRUE_OPERATOR_TOKEN="op-token-for-this-test")
        email, other = unique_email("stuck"), unique_email("other")
        stuck = ThreadPoolExecutor(1).submit(requests.post, server.url + "/signup",
                                             json={"email": email, "password": "pw"}, timeout=60)
        silent.settimeout(30)
        conn, _ = silent.accept()  # the signup has written its user and now waits for a greeting
        try:
            r = server.post("/admin/users", token="op-token-for-this-test",
                            json={"email": other, "password": "pw", "confirm": True})
            assert r.status_code == 200, r.text
            assert server.login(other, "pw")["access_token"]
            assert not stuck.done()  # all of that happened while the signup was still waiting
        finally:
            conn.close()  # the mail server hangs up: the signup fails and is taken back
        assert stuck.result().status_code == 500
        assert server.user_row(email) is None
