"""Security regressions of issue 12, mail: header and recipient injection (design §3), mail
bombing (§5), account enumeration through /recover and /signup (§7), non-ASCII local parts (§10).
Helpers: test_security.py."""

import re
import socket
import uuid

import pytest
from aiosmtpd.controller import Controller

from conftest import DEADLINE, Mailbox, free_port, link_token, unique_email, wait_until
from test_security import (INVALID_EMAIL, THROTTLED, admin, assert_refused, envelope_of, row_by_id,  # noqa: F401
                           settled_count, system_token, verify)


# --- 3. mail header and recipient injection --------------------------------------------------------

BAD_ADDRESSES = {
    "encoded word domain": "ceo@=?utf-8?q?attacker=2eexample=3e?=.company.com",
    "encoded word local": "=?utf-8?q?attacker=40evil=2eexample?=@company.com",
    "encoded word in domain label": "ceo@company.=?utf-8?b?ZXZpbA==?=.com",
    "NUL": "ceo\x00@company.com",
    "CR": "ceo\r@company.com",
    "LF": "ceo@company.com\nattacker@evil.example",
    "CRLF header": "ceo@company.com\r\nBcc: attacker@evil.example",
    "trailing LF": "ceo@company.com\n",
    "TAB": "ceo\t@company.com",
    "ESC": "c\x1beo@company.com",
    "unit separator": "ceo@comp\x1fany.com",
    "vertical tab": "ceo@company\x0b.com",
    "DEL": "ceo\x7f@company.com",
}
ENDPOINTS = ["signup", "invite", "recover", "user email", "admin create", "admin update"]


def attempt(server, admin, endpoint, address, target):
    """The request of `endpoint` that would store or mail to `address`."""
    if endpoint == "signup":
        return server.post("/signup", json={"email": address, "password": "pw"})
    if endpoint == "invite":
        return server.post("/invite", token=admin, json={"email": address})
    if endpoint == "recover":
        return server.post("/recover", json={"email": address})
    if endpoint == "user email":
        return server.put("/user", token=target["access_token"], json={"email": address})
    if endpoint == "admin create":
        return server.post("/admin/users", token=admin, json={"email": address, "password": "pw", "confirm": True})
    return server.put(f"/admin/users/{target['id']}", token=admin, json={"email": address})


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("address", list(BAD_ADDRESSES.values()), ids=list(BAD_ADDRESSES))
def test_addresses_that_could_inject_into_mail_are_refused(server, mailbox, admin, endpoint, address):
    target = None
    if endpoint in ("user email", "admin update"):
        target = server.confirmed_user(unique_email("target"))
        target["access_token"] = server.login(target["email"])["access_token"]
    before = server.sql("SELECT COUNT(*) AS n FROM {users}")[0]["n"]
    row = row_by_id(server, target["id"]) if target else None
    r = attempt(server, admin, endpoint, address, target)
    assert (r.status_code, r.json()) == (422, INVALID_EMAIL), r.text
    assert server.sql("SELECT COUNT(*) AS n FROM {users}")[0]["n"] == before
    if target:
        assert row_by_id(server, target["id"]) == row
    with mailbox.cond:
        assert not [rcpt for rcpt, _, _ in mailbox.messages if "evil" in rcpt or "attacker" in rcpt or "=?" in rcpt]


def check_one_recipient(mailbox, stored, count=1):
    """The count-th mail to `stored`: one envelope recipient, that address, and a To of it alone."""
    msg = mailbox.wait_for(stored, count)
    assert envelope_of(mailbox, msg).rcpt_tos == [stored]
    assert msg.get_all("To") == [stored]
    assert msg.get_all("Cc") is None and msg.get_all("Bcc") is None
    return msg


def odd_address(tag):
    """A legitimate address with characters a careless mailer might mangle, in mixed case."""
    return f"O'Neil.{tag}+x-{uuid.uuid4().hex[:8]}@Example.COM"


def test_every_mail_has_one_recipient_the_stored_address(server, mailbox, admin):
    # signup: the confirmation
    address = odd_address("signup")
    stored = server.signup(address)["email"]
    assert stored == address.lower() and server.user_row(stored)
    check_one_recipient(mailbox, stored)
    # recover: the recovery mail (sent in the background)
    server.sql("UPDATE {users} SET confirmed_at = created_at WHERE email = ?", stored)
    assert server.post("/recover", json={"email": address}).status_code == 200
    assert check_one_recipient(mailbox, stored, 2)["Subject"] == "Reset Your Password"
    # invite
    invitee = odd_address("invite")
    r = server.post("/invite", token=admin, json={"email": invitee})
    assert r.status_code == 200, r.text
    assert check_one_recipient(mailbox, r.json()["email"])["Subject"] == "You have been invited"
    # email change: to the new address only
    owner = unique_email("owner")
    server.confirmed_user(owner)
    new = odd_address("change")
    r = server.put("/user", token=server.login(owner)["access_token"], json={"email": new})
    assert r.status_code == 200, r.text
    assert r.json()["new_email"] == new.lower()
    assert check_one_recipient(mailbox, new.lower())["Subject"] == "Confirm Email Change"
    assert len(mailbox.to(owner)) == 1  # the signup confirmation only


# --- 5. mail bombing: one mail per recipient and kind per window, across audiences ---------------

def test_signup_in_twenty_audiences_sends_one_confirmation(server, mailbox):
    email, tag = unique_email("bombed"), uuid.uuid4().hex[:6]
    replies = [server.post("/signup", json={"email": email, "password": "pw"}, headers={"X-JWT-AUD": f"b{i}-{tag}"})
               for i in range(20)]
    assert [r.status_code for r in replies] == [200] * 20, [r.text for r in replies if r.status_code != 200]
    assert len({r.json()["id"] for r in replies}) == 20
    assert len(server.sql("SELECT id FROM {users} WHERE email = ?", email)) == 20
    assert settled_count(server, mailbox, email) == 1


def test_repeated_email_change_requests_send_one_mail(server, mailbox):
    target = unique_email("target")
    owner = server.confirmed_user(unique_email("owner"))
    access = server.login(owner["email"])["access_token"]
    r = server.put("/user", token=access, json={"email": target})
    assert r.status_code == 200, r.text
    first = row_by_id(server, owner["id"])
    for _ in range(19):
        r = server.put("/user", token=access, json={"email": target})
        assert (r.status_code, r.json()) == (429, THROTTLED), r.text
    assert row_by_id(server, owner["id"]) == first  # nothing changed: the mailed link is still the one
    # another account asking for the same address inside the window is throttled too
    other = server.confirmed_user(unique_email("other"))
    r = server.put("/user", token=server.login(other["email"])["access_token"], json={"email": target})
    assert (r.status_code, r.json()) == (429, THROTTLED), r.text
    assert not row_by_id(server, other["id"])["email_change"]
    assert settled_count(server, mailbox, target) == 1
    # and the one mail's link completes the change
    token = link_token(mailbox.wait_for(target), "email_change")
    r = server.put("/user", token=access, json={"email_change_token": token})
    assert r.status_code == 200 and r.json()["email"] == target, r.text


def test_inviting_an_address_again_inside_the_window_is_throttled(server, mailbox, admin):
    email = unique_email("invitee")
    r = server.post("/invite", token=admin, json={"email": email, "data": {"n": 1}})
    assert r.status_code == 200, r.text
    row = server.user_row(email)
    r = server.post("/invite", token=admin, json={"email": email, "data": {"n": 2}})
    assert (r.status_code, r.json()) == (429, THROTTLED), r.text
    assert server.user_row(email) == row
    # the same address in another audience: the same recipient, so the same window
    other_aud = "aud-" + uuid.uuid4().hex[:6]
    r = server.post("/invite", token=system_token(server), headers={"X-JWT-AUD": other_aud}, json={"email": email})
    assert (r.status_code, r.json()) == (429, THROTTLED), r.text
    assert server.sql("SELECT id FROM {users} WHERE email = ? AND aud = ?", email, other_aud) == []
    assert settled_count(server, mailbox, email) == 1
    # the invite that was mailed still works
    r = verify(server, "signup", link_token(mailbox.wait_for(email), "invite"), password="invitee-pw")
    assert r.status_code == 200, r.text


def test_recover_throttle_is_kept_in_the_database_across_a_restart(make_server, engine, mailbox):
    server = make_server(engine)
    known, unknown = unique_email("known"), unique_email("unknown")
    server.confirmed_user(known)
    for address in (known, unknown):
        r = server.post("/recover", json={"email": address})
        assert (r.status_code, r.json()) == (200, {}), r.text
    mailbox.wait_for(known, 2)
    server.stop()
    server.start()
    for address in (known, unknown):
        r = server.post("/recover", json={"email": address})
        assert (r.status_code, r.json()) == (429, THROTTLED), r.text
    assert settled_count(server, mailbox, known) == 2


# --- 7. enumeration ----------------------------------------------------------------------------------

def test_recover_answers_alike_for_known_and_unknown_addresses(server, mailbox):
    known, unknown = unique_email("known"), unique_email("unknown")
    server.confirmed_user(known)
    replies = [server.post("/recover", json={"email": a}) for a in (known, unknown)]
    assert [(r.status_code, r.content) for r in replies] == [(200, b"{}"), (200, b"{}")]
    assert {k for k in replies[0].headers if k != "Date"} == {k for k in replies[1].headers if k != "Date"}
    msg = mailbox.wait_for(known, 2)
    assert msg["Subject"] == "Reset Your Password"
    assert verify(server, "recovery", link_token(msg, "recovery")).status_code == 200
    assert server.user_row(unknown) is None and mailbox.to(unknown) == []


def test_recover_with_a_mail_server_that_hangs_up_leaves_no_token(make_server, engine):
    """The answer comes before the mail; the token is committed, the mail fails, the token is
    taken back, and the client was told nothing."""
    operator = "operator-token-for-security-tests"
    with socket.create_server(("127.0.0.1", 0)) as hangup:
        server = make_server(engine, GOTRUE_SMTP_PORT=hangup.getsockname()[1], GOTRUE_OPERATOR_TOKEN=operator,
                             GOTRUE_SMTP_TIMEOUT_SEC=DEADLINE)
        email = unique_email("known")
        r = server.post("/admin/users", token=operator, json={"email": email, "password": "pw", "confirm": True})
        assert r.status_code == 200, r.text
        r = server.post("/recover", json={"email": email})
        assert (r.status_code, r.json()) == (200, {}), r.text
        hangup.settimeout(DEADLINE)
        conn, _ = hangup.accept()  # the background attempt reached the mail server...
        try:
            assert server.user_row(email)["recovery_token"]  # ...with its token stored
        finally:
            conn.close()  # ...which hangs up without a greeting
        wait_until(lambda: not server.user_row(email)["recovery_token"], "the recovery token to be taken back")
    assert server.login(email, "pw")["access_token"]


def test_recover_with_the_mail_server_down_answers_200(make_server, engine):
    operator = "operator-token-for-security-tests"
    server = make_server(engine, GOTRUE_SMTP_PORT=free_port(), GOTRUE_OPERATOR_TOKEN=operator)  # nothing listens
    email = unique_email("known")
    r = server.post("/admin/users", token=operator, json={"email": email, "password": "pw", "confirm": True})
    assert r.status_code == 200, r.text
    r = server.post("/recover", json={"email": email})
    assert (r.status_code, r.json()) == (200, {}), r.text
    failed = re.compile(r"recover.*(fail|error)|(fail|error).*recover", re.I)
    wait_until(lambda: failed.search(server.log()), "the failed recovery mail to be logged")
    wait_until(lambda: not server.user_row(email)["recovery_token"], "the recovery token to be taken back")


def test_hidden_existing_users_get_a_fake_signup_and_a_warning_mail(make_server, engine, mailbox):
    server = make_server(engine, GOTRUE_SECURITY_HIDE_EXISTING_USERS="true")
    real = server.post("/signup", json={"email": unique_email("real"), "password": "pw", "data": {"a": 1}})
    assert real.status_code == 200, real.text
    owner = unique_email("owner")
    user = server.confirmed_user(owner, "owner-pw")
    before = server.sql("SELECT * FROM {users} WHERE email = ?", owner)
    r = server.post("/signup", json={"email": owner, "password": "intruder-pw", "data": {"x": 1}})
    assert r.status_code == 200, r.text
    fake = r.json()
    assert list(fake) == list(real.json())
    assert fake["id"] != user["id"] and uuid.UUID(fake["id"])
    assert fake["email"] == owner and fake["aud"] == "" and fake["confirmation_sent_at"]
    assert fake["app_metadata"] == {"provider": "email"} and fake["user_metadata"] == {"x": 1}
    assert server.sql("SELECT * FROM {users} WHERE email = ?", owner) == before
    assert row_by_id(server, fake["id"]) is None
    assert server.login(owner, "owner-pw")["access_token"]
    assert_refused(server, owner, "intruder-pw")
    msg = mailbox.wait_for(owner, 2)  # the first was the signup confirmation
    assert msg["Subject"] == "Someone tried to sign up with your address"
    # once more inside the window: the same kind of answer, no second warning
    r = server.post("/signup", json={"email": owner, "password": "intruder-pw"})
    assert r.status_code == 200 and r.json()["id"] not in (user["id"], fake["id"]), r.text
    assert settled_count(server, mailbox, owner) == 2


def test_signup_of_a_confirmed_address_is_400_by_default(server):
    email = unique_email("owner")
    server.confirmed_user(email)
    r = server.post("/signup", json={"email": email, "password": "other-pw"})
    assert (r.status_code, r.json()) == (
        400, {"code": 400, "msg": "A user with this email address has already been registered"})


# --- 10. non-ASCII local parts ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ascii_mailbox():
    """An SMTP server without SMTPUTF8: it cannot take a non-ASCII address."""
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=False)
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


def test_a_non_ascii_local_part_without_smtputf8_fails_cleanly(make_server, engine, ascii_mailbox, mailbox):
    server = make_server(engine, GOTRUE_SMTP_PORT=ascii_mailbox.port)
    email = f"jösé-{uuid.uuid4().hex[:8]}@example.com"
    r = server.post("/signup", json={"email": email, "password": "pw"})
    assert r.status_code == 500, r.text
    body = r.json()
    assert body["code"] == 500 and body["msg"] == "Error sending confirmation mail" and body.get("error_id")
    assert server.user_row(email) is None
    assert server.sql("SELECT COUNT(*) AS n FROM {users}")[0]["n"] == 0
    assert ascii_mailbox.to(email) == []
    # the same address on the same database, once the mail server speaks SMTPUTF8
    server.stop()
    server.env["GOTRUE_SMTP_PORT"] = str(mailbox.port)
    server.start()
    user = server.signup(email, "pw")
    assert user["email"] == email
    msg = mailbox.wait_for(email)
    assert envelope_of(mailbox, msg).rcpt_tos == [email]
    assert verify(server, "signup", link_token(msg, "confirmation")).status_code == 200
    assert server.login(email, "pw")["access_token"]


def test_a_non_ascii_local_part_works_with_smtputf8(server, mailbox):
    email = f"jösé-{uuid.uuid4().hex[:8]}@example.com"
    server.signup(email, "pw")
    msg = mailbox.wait_for(email)
    assert verify(server, "signup", link_token(msg, "confirmation")).status_code == 200
