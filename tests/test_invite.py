"""Invites: POST /invite (admins only), the invite mail, acceptance with POST /verify type
signup plus a password. Lifetimes and SMTP failures are in test_mail.py."""

import pytest

from conftest import link_token, mail_html, unique_email

SITE = "https://site.example.com"
OPERATOR = "operator-token-for-invite-tests"


def check_error(r, status, msg, prefix=False):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == status, r.text
    assert body["msg"].startswith(msg) if prefix else body["msg"] == msg, r.text


def password_login(server, address, password):
    return server.post("/token", data={"grant_type": "password", "username": address, "password": password})


@pytest.fixture(scope="module")
def admin(server):
    return server.admin_token()


def accept(server, mailbox, address):
    """Accept the invite through the link in its mail; returns the user after acceptance."""
    msg = mailbox.wait_for(address)
    assert msg["Subject"] == "You have been invited"
    token = link_token(msg, "invite")
    assert f'href="{SITE}/#invite_token={token}"' in mail_html(msg)
    check_error(server.post("/verify", json={"type": "signup", "token": token}), 422,
                "Invited users must specify a password")
    check_error(server.post("/verify", json={"type": "invite", "token": token, "password": "pw"}), 422,
                "Verify requires a verification type")
    r = server.post("/verify", json={"type": "signup", "token": token, "password": "invitee-pw"})
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "bearer" and r.json()["refresh_token"]
    check_error(server.post("/verify", json={"type": "signup", "token": token, "password": "other-pw"}), 404,
                "User not found")
    assert password_login(server, address, "other-pw").status_code == 400
    return server.get("/user", token=server.login(address, "invitee-pw")["access_token"]).json()


def test_invite_flow_through_the_mail(server, mailbox, admin):
    address = unique_email("invitee")
    r = server.post("/invite", token=admin, json={"email": address, "data": {"name": "Ann"}})
    assert r.status_code == 200, r.text
    user = r.json()
    assert user["email"] == address and user["invited_at"] and user["user_metadata"] == {"name": "Ann"}
    assert user["app_metadata"] == {"provider": "email"}
    assert not {"confirmed_at", "confirmation_sent_at"} & set(user)
    assert f"create a user on {SITE}" in mail_html(mailbox.wait_for(address))
    # no password yet: nobody can sign in as the invitee
    assert password_login(server, address, "").status_code == 400
    after = accept(server, mailbox, address)
    assert after["id"] == user["id"] and after["confirmed_at"] and after["invited_at"]
    assert "confirmation_sent_at" not in after


@pytest.mark.parametrize("auth, msg", [
    (None, "This endpoint requires a Bearer token"),
    ("Bearer", "This endpoint requires a Bearer token"),
    ("Bearer not-a-jwt", "Invalid token: "),
    ("user", "User not allowed"),
    ("admin-of-other-audience", "User not allowed"),
])
def test_invite_requires_an_admin(server, mailbox, admin, auth, msg):
    address, headers = unique_email("nope"), {}
    if auth == "user":
        user = server.confirmed_user()
        headers["Authorization"] = "Bearer " + server.login(user["email"])["access_token"]
    elif auth == "admin-of-other-audience":  # an admin, but of the default audience only
        headers = {"Authorization": "Bearer " + admin, "X-JWT-AUD": "other-site"}
    elif auth:
        headers["Authorization"] = auth
    r = server.post("/invite", json={"email": address}, headers=headers)
    check_error(r, 401, msg, prefix=msg.endswith(": "))
    assert server.user_row(address) is None and mailbox.to(address) == []


def test_invite_refuses_bad_input(server, mailbox, admin):
    invited, signed_up, confirmed = unique_email(), unique_email(), unique_email()
    assert server.post("/invite", token=admin, json={"email": invited}).status_code == 200
    server.signup(signed_up)
    server.confirmed_user(confirmed)
    cases = [({}, 422, "An email address is required"),
             ({"email": ""}, 422, "An email address is required"),
             ({"email": "not-an-address"}, 422, "Unable to validate email address"),
             ({"email": "two@@example.com"}, 422, "Unable to validate email address"),
             ({"email": 7}, 400, "Could not read Invite params: ")]
    cases += [({"email": confirmed.upper()}, 422, "Email address already registered by another user"),
              ({"email": invited}, 429, "Rate limit exceeded, try again later")]  # one invite mail per window
    for body, status, msg in cases:
        check_error(server.post("/invite", token=admin, json=body), status, msg,
                    prefix=msg.startswith(("Unable", "Could not")))
    # an unconfirmed signup belongs to nobody yet: an invite takes it over (ours)
    r = server.post("/invite", token=admin, json={"email": signed_up.upper()})
    assert r.status_code == 200 and server.user_row(signed_up)["invited_at"], r.text
    # invalid JSON is caught by the admin check first, as upstream's middleware does
    check_error(server.post("/invite", token=admin, data="{oops"), 400, "Could not decode admin user params: ",
                prefix=True)
    # the confirmation and then the invite for the taken-over signup
    assert [len(mailbox.to(a)) for a in (invited, confirmed)] == [1, 1] and mailbox.wait_for(signed_up, 2)


def test_signup_disabled_leaves_invites_working(make_server, engine, mailbox):
    server = make_server(engine, GOTRUE_DISABLE_SIGNUP="true", GOTRUE_OPERATOR_TOKEN=OPERATOR)
    address = unique_email("invitee")
    check_error(server.post("/signup", json={"email": address, "password": "pw"}), 403,
                "Signups not allowed for this instance")
    r = server.post("/invite", token=OPERATOR, json={"email": address})  # the operator token is an admin
    assert r.status_code == 200 and r.json()["invited_at"], r.text
    user = accept(server, mailbox, address)
    assert user["email"] == address and user["confirmed_at"]
    entries = server.get("/admin/audit", token=OPERATOR, params={"query": "action:user_invited"}).json()
    assert [(e["payload"]["actor_email"], e["payload"]["traits"]["user_email"]) for e in entries] == \
        [("operator@netlify.com", address)]
