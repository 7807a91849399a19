"""Check-then-write races are closed in the database: parallel signups of one address make one
user, parallel refreshes of one token succeed once. Both engines, real threads, real HTTP."""

from concurrent.futures import ThreadPoolExecutor
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
