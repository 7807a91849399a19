"""The audit log (spec §8.4-8.5): every action upstream records is written once, with upstream's
payload, in the action's own transaction; GET /admin/audit filters and paginates them."""

import collections
import re
import secrets
import uuid

import pytest

import gotrue
from conftest import free_port, unique_email
from test_admin_users import NIL, TIME, bearer, check_error, create_user, try_login, mint, new_admin

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
LOG_TYPES = {"login": "account", "logout": "account", "invite_accepted": "account", "user_signedup": "team",
             "user_invited": "team", "user_deleted": "team", "user_modified": "user",
             "user_recovery_requested": "user", "token_refreshed": "token", "token_revoked": "token"}


def audit(server, token, **params):
    r = server.get("/admin/audit", params={"per_page": 1000, **params}, token=token)
    assert r.status_code == 200, r.text
    return r


def summary(entries):
    """Each entry as (action, actor email, target email or None), counted."""
    return collections.Counter((e["payload"]["action"], e["payload"]["actor_email"],
                                e["payload"].get("traits", {}).get("user_email")) for e in entries)


def check_entry(entry, actor_id=None):
    """The entry and payload shapes of upstream (§8.4, §8.5)."""
    assert list(entry) == ["id", "payload", "created_at"] and uuid.UUID(entry["id"])
    assert TIME.fullmatch(entry["created_at"])
    p = entry["payload"]
    assert set(p) - {"actor_name", "traits"} == {"timestamp", "actor_id", "actor_email", "action", "log_type"}, p
    assert STAMP.fullmatch(p["timestamp"]) and p["log_type"] == LOG_TYPES[p["action"]]
    if "traits" in p:
        assert set(p["traits"]) == {"user_id", "user_email"}
    if actor_id:
        assert p["actor_id"] == actor_id


def refresh(server, refresh_token):
    return server.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token})


def test_every_action_is_recorded_exactly_once(make_server, engine):
    """A fresh server, one of each action (and some failures that must record nothing), then the
    whole log compared with what upstream writes."""
    srv = make_server(engine)
    admin = new_admin(srv, full_name="Ada Admin")  # its login is the first entry
    ids = {admin.email: admin.id}

    u1 = srv.confirmed_user()                                       # user_signedup (at /verify)
    ids[u1["email"]] = u1["id"]
    assert try_login(srv, u1["email"], "wrong").status_code == 400   # nothing
    tokens = srv.login(u1["email"])                                 # login
    fresh = refresh(srv, tokens["refresh_token"])                   # token_refreshed + token_revoked
    assert fresh.status_code == 200
    assert refresh(srv, tokens["refresh_token"]).status_code == 400     # reuse: nothing
    assert srv.put("/user", token=tokens["access_token"], json={"data": {"x": 1}}).status_code == 200  # user_modified
    assert srv.post("/recover", json={"email": u1["email"]}).status_code == 200   # user_recovery_requested
    assert srv.post("/recover", json={"email": unique_email()}).status_code == 200  # unknown: nothing
    assert srv.post("/logout", token=fresh.json()["access_token"]).status_code == 204  # logout

    unconfirmed = srv.signup()                                      # nothing until verified
    assert try_login(srv, unconfirmed["email"], "secret-pw").status_code == 400

    invited = unique_email("invitee")                               # user_invited (admin)
    r = srv.post("/invite", token=admin.token, json={"email": invited})
    assert r.status_code == 200
    ids[invited] = r.json()["id"]
    r = srv.post("/verify", json={"type": "signup", "token": srv.user_row(invited)["confirmation_token"],
                                  "password": "invitee-pw"})
    assert r.status_code == 200                                     # user_signedup (invitee)

    u3 = create_user(srv, admin.token, password="pw")               # user_signedup (admin)
    ids[u3["email"]] = u3["id"]
    assert srv.put(f"/admin/users/{u3['id']}", token=admin.token, json={"role": "x"}).status_code == 200
    assert srv.delete(f"/admin/users/{u3['id']}", token=admin.token).status_code == 200

    r = audit(srv, admin.token)
    entries = r.json()
    assert summary(entries) == collections.Counter({
        ("login", admin.email, None): 1,
        ("user_signedup", u1["email"], None): 1,
        ("login", u1["email"], None): 1,
        ("token_refreshed", u1["email"], None): 1,
        ("token_revoked", u1["email"], None): 1,
        ("user_modified", u1["email"], None): 1,
        ("user_recovery_requested", u1["email"], None): 1,
        ("logout", u1["email"], None): 1,
        ("user_invited", admin.email, invited): 1,
        ("user_signedup", invited, None): 1,
        ("user_signedup", admin.email, u3["email"]): 1,
        ("user_modified", admin.email, u3["email"]): 1,
        ("user_deleted", admin.email, u3["email"]): 1,
    })
    for e in entries:
        p = e["payload"]
        check_entry(e, actor_id=ids[p["actor_email"]])
        assert p.get("actor_name") == ("Ada Admin" if p["actor_email"] == admin.email else None)
        if "traits" in p:
            assert p["actor_email"] == admin.email and p["traits"]["user_id"] == ids[p["traits"]["user_email"]]
    assert r.headers["X-Total-Count"] == str(len(entries)) == "13"
    assert srv.sql("SELECT COUNT(*) AS n FROM {audit_log_entries}")[0]["n"] == 13
    assert r.headers["Link"] == '</admin/audit?page=1&per_page=1000>; rel="last"'
    # newest first
    stamps = [e["created_at"] for e in entries]
    assert stamps == sorted(stamps, key=lambda s: gotrue.db_time(s.rstrip("Z")), reverse=True)

    # pagination across pages: 13 entries, 5 a page
    def link(page, rel):
        return f'</admin/audit?page={page}&per_page=5>; rel="{rel}"'
    seen = []
    for page, links in {1: [link(2, "next"), link(3, "last")],
                        2: [link(3, "next"), link(1, "prev"), link(3, "last")],
                        3: [link(2, "prev"), link(3, "last")]}.items():
        r = srv.get(f"/admin/audit?page={page}&per_page=5", token=admin.token)
        assert r.headers["Link"] == ", ".join(links) and r.headers["X-Total-Count"] == "13"
        seen += [e["id"] for e in r.json()]
    assert sorted(seen) == sorted(e["id"] for e in entries)
    r = srv.get("/admin/audit", token=admin.token)
    assert r.headers["Link"] == '</admin/audit?page=1>; rel="last"' and len(r.json()) == 13


def test_query_scopes(server):
    """author (email or full name), action, type: case-insensitive substring matches (§8.5)."""
    tag = uuid.uuid4().hex[:8]
    admin = new_admin(server, full_name=f"Quentin Q{tag}")
    u = create_user(server, admin.token)
    server.put(f"/admin/users/{u['id']}", token=admin.token, json={"role": "r"})
    server.delete(f"/admin/users/{u['id']}", token=admin.token)
    mine = ["login", "user_signedup", "user_modified", "user_deleted"]
    for value in (admin.email, admin.email.upper(), f"q{tag}".upper(), f"quentin q{tag}"):
        entries = audit(server, admin.token, query=f"author:{value}").json()
        assert sorted(e["payload"]["action"] for e in entries) == sorted(mine), value
        for e in entries:
            check_entry(e, actor_id=admin.id)
            assert e["payload"]["actor_name"] == f"Quentin Q{tag}"

    def targeting(entries):
        return sorted(e["payload"]["action"] for e in entries if e["payload"].get("traits", {}).get("user_id") == u["id"])
    for query, actions in [("action:user_deleted", ["user_deleted"]), ("action:USER_DEL", ["user_deleted"]),
                           ("type:team", ["user_deleted", "user_signedup"]), ("type:USER", ["user_modified"]),
                           ("action:user_", ["user_deleted", "user_modified", "user_signedup"])]:
        r = audit(server, admin.token, query=query)
        assert targeting(r.json()) == actions, query
        scope, _, value = query.partition(":")
        field = {"action": "action", "type": "log_type"}[scope]
        assert all(value.lower() in e["payload"][field] for e in r.json()), query
        assert r.headers["X-Total-Count"] == str(len(r.json()))
    assert audit(server, admin.token, query=f"author:nobody-{tag}").json() == []


@pytest.mark.parametrize("query", ["nocolon", "foo:bar", "actor:x", "Author:x", ":x"])
def test_invalid_query_scope_is_400(server, query):
    admin = new_admin(server)
    check_error(server.get("/admin/audit", params={"query": query}, token=admin.token), 400,
                f"Invalid query scope: {query}")


def test_self_service_update_is_user_modified_without_traits(server):
    user = server.confirmed_user(data={"full_name": "Sam Self"})
    token = server.login(user["email"])["access_token"]
    assert server.put("/user", token=token, json={}).status_code == 200  # even an empty update
    admin = new_admin(server)
    entries = audit(server, admin.token, query=f"author:{user['email']}").json()
    assert sorted(e["payload"]["action"] for e in entries) == ["login", "user_modified", "user_signedup"]
    for e in entries:
        check_entry(e, actor_id=user["id"])
        assert "traits" not in e["payload"] and e["payload"]["actor_name"] == "Sam Self"


def test_system_user_actions_are_recorded_as_the_system_user(server):
    u = create_user(server, mint(server, sub="0"))
    admin = new_admin(server)
    entries = audit(server, admin.token, query="action:user_signedup").json()
    mine = [e for e in entries if e["payload"].get("traits", {}).get("user_id") == u["id"]]
    assert len(mine) == 1 and mine[0]["payload"]["actor_id"] == NIL
    check_entry(mine[0])


def test_failed_actions_leave_no_audit_entry(make_server, engine):
    """Entries are written in the action's transaction: when a webhook refuses a signup or a
    login after its entry was written, the entry is rolled back with the action."""
    op = "op-" + secrets.token_hex(8)
    srv = make_server(engine, GOTRUE_OPERATOR_TOKEN=op, GOTRUE_MAILER_AUTOCONFIRM="true",
                      GOTRUE_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hook", GOTRUE_WEBHOOK_EVENTS="signup,login")
    email = unique_email()
    r = srv.post("/signup", json={"email": email, "password": "pw"})
    assert r.status_code == 502, r.text  # nobody listens: "Failed to connect"
    assert srv.user_row(email) is None
    user = create_user(srv, op, password="pw", confirm=True)
    assert try_login(srv, user["email"], "pw").status_code == 502
    # a self-service update that fails half-way (app_metadata needs an admin) keeps nothing
    srv.sql("UPDATE {users} SET confirmed_at = ? WHERE id = ?", gotrue.now(), user["id"])
    token = gotrue_token(srv, user)
    r = srv.put("/user", token=token, json={"data": {"half": True}, "app_metadata": {"roles": ["x"]}})
    check_error(r, 401, "Updating app_metadata requires admin privileges")
    assert srv.get(f"/admin/users/{user['id']}", token=op).json()["user_metadata"] == {}
    entries = audit(srv, op).json()
    assert summary(entries) == collections.Counter({("user_signedup", "operator@netlify.com", user["email"]): 1})


def gotrue_token(server, user):
    """An access token for `user` as the server would sign it (its login is refused here)."""
    return mint(server, sub=user["id"], email=user["email"], app_metadata={}, user_metadata={})


def test_audit_requires_an_admin(server):
    user = server.confirmed_user()
    check_error(server.get("/admin/audit", token=server.login(user["email"])["access_token"]), 401, "User not allowed")
    check_error(server.get("/admin/audit"), 401, "This endpoint requires a Bearer token")
    check_error(server.get("/admin/audit", headers=bearer("x.y.z")), 401, "Invalid token: *")


def test_entry_ids_are_time_ordered_uuids(server):
    """Audit ids are version 7 UUIDs (time first): InnoDB stores a table in primary-key order,
    and random ids scattered every insert of a growing log over the whole table."""
    admin = new_admin(server)
    before = int(gotrue.time.time() * 1000)
    for role in ("a", "b", "c"):
        u = create_user(server, admin.token)
        assert server.put(f"/admin/users/{u['id']}", token=admin.token, json={"role": role}).status_code == 200
    entries = [e for e in audit(server, admin.token, query=f"author:{admin.email}").json()
               if e["payload"]["action"] != "login"]
    ids = [uuid.UUID(e["id"]) for e in entries]
    assert len(ids) == 6 and all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    millis = [int.from_bytes(i.bytes[:6], "big") for i in ids]
    assert all(before - 1000 <= m <= int(gotrue.time.time() * 1000) + 1000 for m in millis), (before, millis)
    assert len(set(ids)) == 6
