"""Email change: PUT /user with a new email mails the new address, PUT /user with the
email_change_token from that mail completes it. Lifetimes and SMTP failures: test_mail.py."""

import pytest

from conftest import link_token, mail_html, unique_email

SITE = "https://site.example.com"
MISMATCH = (401, "Email Change Token didn't match token on file")


def check_error(r, status, msg, prefix=False):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == status, r.text
    assert body["msg"].startswith(msg) if prefix else body["msg"] == msg, r.text


def user_with_token(server):
    address = unique_email("old")
    server.confirmed_user(address)
    return address, server.login(address)["access_token"]


def request_change(server, mailbox, access, new):
    """Ask for the change; returns the token from the mail sent to `new`."""
    count = len(mailbox.to(new))
    r = server.put("/user", token=access, json={"email": new})
    assert r.status_code == 200, r.text
    return link_token(mailbox.wait_for(new, count + 1), "email_change"), r.json()


def test_email_change_flow_through_the_mail(server, mailbox):
    old, access = user_with_token(server)
    new = unique_email("new")
    token, user = request_change(server, mailbox, access, new)
    assert user["email"] == old and user["new_email"] == new and user["email_change_sent_at"]
    assert server.get("/user", token=access).json()["new_email"] == new
    assert len(mailbox.to(old)) == 1  # only the signup confirmation: the old address gets nothing
    msg = mailbox.wait_for(new)
    assert msg["Subject"] == "Confirm Email Change" and msg["To"] == new
    html = mail_html(msg)
    assert old in html and new in html and f'href="{SITE}/#email_change_token={token}"' in html
    server.login(old)  # nothing changes before the link is used

    r = server.put("/user", token=access, json={"email_change_token": token, "email": "ignored@example.com"})
    assert r.status_code == 200, r.text
    assert r.json()["email"] == new and "new_email" not in r.json() and r.json()["email_change_sent_at"]
    server.login(new)
    assert server.post("/token", data={"grant_type": "password", "username": old,
                                       "password": "secret-pw"}).status_code == 400
    check_error(server.put("/user", token=access, json={"email_change_token": token}), *MISMATCH)
    assert server.user_row(new)["email_change_token"] == ""


def test_email_change_refused(server, mailbox):
    old, access = user_with_token(server)
    taken = unique_email("taken")
    server.signup(taken)  # unconfirmed accounts count too
    cases = [({"email": "not-an-address"}, 422, "Unable to validate email address"),
             ({"email": taken.upper()}, 422, "Email address already registered by another user"),
             ({"email": 5}, 400, "Could not read User Update params: ")]
    cases += [({"email_change_token": t}, *MISMATCH) for t in ("nope", " ", "\t\n")]  # nothing pending
    for body, status, msg in cases:
        check_error(server.put("/user", token=access, json=body), status, msg, prefix=status != 401)
    check_error(server.put("/user", json={"email": unique_email()}), 401, "This endpoint requires a Bearer token")
    row = server.user_row(old)
    assert (row["email_change"], row["email_change_token"], row["email_change_sent_at"]) in \
        (("", "", None), (None, None, None))
    assert len(mailbox.to(taken)) == 1  # only its own confirmation
    # the same address is no change at all
    r = server.put("/user", token=access, json={"email": old})
    assert r.status_code == 200 and r.json()["email"] == old and "new_email" not in r.json()
    assert len(mailbox.to(old)) == 1


@pytest.mark.parametrize("bad", ["wrong-token", " ", "{upper}", "{token}x"])
def test_wrong_token_leaves_the_change_pending(server, mailbox, bad):
    old, access = user_with_token(server)
    new = unique_email("new")
    token, _ = request_change(server, mailbox, access, new)
    bad = bad.format(token=token, upper=token.upper() if token.upper() != token else token.lower())
    check_error(server.put("/user", token=access, json={"email_change_token": bad}), *MISMATCH)
    assert server.get("/user", token=access).json()["new_email"] == new
    assert server.put("/user", token=access, json={"email_change_token": token}).json()["email"] == new


def test_a_new_request_replaces_the_pending_one(server, mailbox):
    """Email change mails are not throttled; only the latest token counts."""
    old, access = user_with_token(server)
    first, second = unique_email("first"), unique_email("second")
    first_token, _ = request_change(server, mailbox, access, first)
    second_token, user = request_change(server, mailbox, access, second)
    assert user["new_email"] == second
    check_error(server.put("/user", token=access, json={"email_change_token": first_token}), *MISMATCH)
    r = server.put("/user", token=access, json={"email_change_token": second_token})
    assert r.status_code == 200 and r.json()["email"] == second


def test_address_taken_before_confirmation(server, mailbox):
    """Someone signs up with the new address while the change is pending: the change is refused
    and both accounts keep their addresses."""
    old, access = user_with_token(server)
    new = unique_email("contested")
    token, _ = request_change(server, mailbox, access, new)
    other = server.signup(new)
    check_error(server.put("/user", token=access, json={"email_change_token": token}), 422,
                "Email address already registered by another user")
    assert server.get("/user", token=access).json()["email"] == old
    assert server.user_row(new)["id"] == other["id"]
