"""Password recovery: POST /recover, the mail, POST /verify type recovery, then PUT /user.
Lifetimes, single use, throttling windows and SMTP failures of every kind are in test_mail.py."""

import pytest

from conftest import link_token, unique_email

SITE = "https://site.example.com"
THROTTLED = {"code": 429, "msg": "Rate limit exceeded, try again later"}


def check_error(r, status, msg, prefix=False):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == status, r.text
    assert body["msg"].startswith(msg) if prefix else body["msg"] == msg, r.text


@pytest.mark.parametrize("confirmed", [True, False], ids=["confirmed", "unconfirmed"])
def test_recovery_flow_through_the_mail(server, mailbox, confirmed):
    address = unique_email()
    (server.confirmed_user if confirmed else server.signup)(address, "old-pw")
    r = server.post("/recover", json={"email": address})
    assert (r.status_code, r.json()) == (200, {})
    msg = mailbox.wait_for(address, 2)  # the first mail was the signup confirmation
    assert msg["Subject"] == "Reset Your Password"
    token = link_token(msg, "recovery")
    assert f'href="{SITE}/#recovery_token={token}"' in msg.get_body(("html",)).get_content()
    assert server.user_row(address)["recovery_sent_at"]

    r = server.post("/verify", json={"type": "recovery", "token": token, "password": "ignored-pw"})
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 3600 and tokens["refresh_token"]
    user = server.get("/user", token=tokens["access_token"]).json()
    assert user["email"] == address and user["confirmed_at"] and user["recovery_sent_at"]
    # the client then sets a new password
    r = server.put("/user", token=tokens["access_token"], json={"password": "new-pw"})
    assert r.status_code == 200, r.text
    server.login(address, "new-pw")
    for pw in ("old-pw", "ignored-pw"):
        r = server.post("/token", data={"grant_type": "password", "username": address, "password": pw})
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    check_error(server.post("/verify", json={"type": "recovery", "token": token}), 404, "User not found")


def test_unknown_and_known_addresses_look_alike(server, mailbox):
    """200 {} for both, then the same 429 for both (whatever the case of the address), and
    mail only for the known one."""
    known, unknown = unique_email("known"), unique_email("unknown")
    server.confirmed_user(known)
    answers = {}
    for address in (known, unknown):
        replies = [server.post("/recover", json={"email": a}) for a in (address, address.upper(), address)]
        answers[address] = [(r.status_code, r.json()) for r in replies]
    assert answers[known] == answers[unknown] == [(200, {}), (429, THROTTLED), (429, THROTTLED)]
    assert mailbox.wait_for(known, 2) and len(mailbox.to(known)) == 2 and mailbox.to(unknown) == []
    assert server.user_row(unknown) is None


@pytest.mark.parametrize("body, status, msg", [
    ({}, 422, "Password recovery requires an email"),
    ({"email": ""}, 422, "Password recovery requires an email"),
    ({"email": None}, 422, "Password recovery requires an email"),
    ("not json", 400, "Could not read verification params: "),
    ({"email": 42}, 400, "Could not read verification params: "),
])
def test_recover_bad_input(server, body, status, msg):
    kw = {"data": body} if isinstance(body, str) else {"json": body}
    check_error(server.post("/recover", **kw), status, msg, prefix=status == 400)


@pytest.mark.parametrize("token", ["", " ", "\t", "   ", "\n", " \t\r\n", None])
@pytest.mark.parametrize("kind", ["signup", "recovery"])
def test_verify_refuses_blank_tokens(server, kind, token):
    check_error(server.post("/verify", json={"type": kind, "token": token}), 422, "Verify requires a token")


def test_verify_refuses_wrong_type_and_unknown_tokens(server, mailbox):
    address = unique_email()
    server.confirmed_user(address)
    assert server.post("/recover", json={"email": address}).status_code == 200
    token = link_token(mailbox.wait_for(address, 2), "recovery")
    for kind in ("invite", "", "email_change", None):
        check_error(server.post("/verify", json={"type": kind, "token": token}), 422,
                    "Verify requires a verification type")
    # a recovery token is not a confirmation token, and a made-up token finds nobody
    check_error(server.post("/verify", json={"type": "signup", "token": token}), 404, "User not found")
    check_error(server.post("/verify", json={"type": "recovery", "token": token.swapcase()}), 404, "User not found")
    check_error(server.post("/verify", data="{"), 400, "Could not read verification params: ", prefix=True)
    assert server.post("/verify", json={"type": "recovery", "token": token}).status_code == 200


def test_throttle_reveals_nothing_after_a_restart(make_server, engine):
    server = make_server(engine)
    known, unknown = unique_email("known"), unique_email("unknown")
    server.confirmed_user(known)
    assert [server.post("/recover", json={"email": a}).status_code for a in (known, unknown)] == [200, 200]
    server.stop()
    server.start()
    answers = [server.post("/recover", json={"email": a}) for a in (known, unknown)]
    assert answers[0].status_code in (200, 429)
    assert (answers[0].status_code, answers[0].json()) == (answers[1].status_code, answers[1].json())
