"""External OAuth logins (spec §7.1-7.6 and /tmp/design-external.md): GET /authorize, GET /callback
and the PKCE authorization_code grant, against loopback fake providers (oauth_fakes.py).

Every "browser" is a requests.Session that follows each redirect by hand (allow_redirects=False)
and carries its cookies: gotrue /authorize -> provider authorize (the fake approves) -> gotrue
/callback -> the site, with tokens (or an error) in the fragment.

The per-provider matrix and the edge cases run on SQLite only (@SQLITE); the flows that write to
the database in interesting ways run on SQLite and MariaDB: returning users and audit, two
browsers, concurrent first logins, pre-account takeover, a confirmed account's password, one-time
states, disable_signup, invites, PKCE codes, webhooks. After every test the `ext` fixture scans
each server's log for the fakes' codes, access tokens, error bodies and client secrets."""

import base64
import collections
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from types import SimpleNamespace

import jwt
import pytest
import requests

import gotrue
from conftest import DEADLINE, ROOT, base_env, free_port, link_token, unique_email, wait_until
from oauth_fakes import SHAPES, Email
from test_webhooks import Answer, Receiver

SITE = "https://site.example.com"
NIL = "00000000-0000-0000-0000-000000000000"
OPERATOR = "operator-token-for-external-tests-" + secrets.token_hex(16)
HOOK_SECRET = "hook-secret-for-external-tests-" + secrets.token_hex(8)
SQLITE = pytest.mark.parametrize("engine", ["sqlite"])
TOKEN_KEYS = ["access_token", "expires_in", "refresh_token", "token_type"]
NOT_YOURS = "OAuth state does not belong to this browser or was already used"
NO_EXCHANGE = "Unable to exchange external code for {} provider"
NO_EMAIL = "Error getting user email from external provider"


# --- fixtures: fakes, servers wired to them, and the log scan --------------------------------

class External:
    def __init__(self, make_server):
        self.make_server, self.fakes, self.servers = make_server, [], []

    def fake(self, shape, host="127.0.0.1"):
        f = SHAPES[shape](host)
        self.fakes.append(f)
        return f

    def server(self, engine, *fakes, operator=True, oidc_name=None, **settings):
        """A server on a known port whose providers point at `fakes` (callback registered at
        each fake). Settings override; None removes one."""
        port = free_port()
        callback = f"http://127.0.0.1:{port}/callback"
        env = {"PORT": str(port)}
        if operator:
            env["GOTRUE_OPERATOR_TOKEN"] = OPERATOR
        for f in fakes:
            p = f"GOTRUE_EXTERNAL_{f.env}_"
            env.update({p + "ENABLED": "true", p + "CLIENT_ID": f.client_id, p + "SECRET": f.secret,
                        p + "REDIRECT_URI": callback, p + "URL": f.url})
            if f.env == "OIDC" and oidc_name:
                env[p + "NAME"] = oidc_name
            f.redirect_uri = callback
        env.update(settings)
        srv = self.make_server(engine, **env)
        srv.callback = callback
        self.servers.append(srv)
        return srv

    def scan_logs(self):
        leaks = [s for f in self.fakes for s in f.leakables()]
        for srv in self.servers:
            log = srv.log()
            found = [s for s in leaks if s in log]
            assert not found, f"provider secrets in the server log: {found}"


@pytest.fixture
def ext(make_server):
    e = External(make_server)
    yield e
    try:
        e.scan_logs()
    finally:
        for f in e.fakes:
            f.close()


@pytest.fixture
def receiver():
    rcv = Receiver()
    yield rcv
    rcv.close()


class Browser:
    """One browser: a cookie jar; every redirect is followed by the test."""

    def __init__(self):
        self.http = requests.Session()

    def get(self, url, **kw):
        return self.http.get(url, allow_redirects=False, timeout=DEADLINE, **kw)

    @property
    def nonce(self):
        return self.http.cookies.get("nf_oauth_state")


# --- the redirect chain ------------------------------------------------------------------------

def query_of(url):
    """The query of a URL as a dict; each member exactly once."""
    pairs = urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True)
    assert len(pairs) == len(dict(pairs)), url
    return dict(pairs)


def start(srv, fake, browser=None, query=None, headers=None):
    """GET /authorize, then the provider's authorize (which approves or denies): returns the flow
    up to the callback URL the provider sends the browser to."""
    browser = browser or Browser()
    r = browser.get(f"{srv.url}/authorize?{query or 'provider=' + fake.name}", headers=headers)
    assert r.status_code == 302, f"{r.status_code} {r.text}"
    to_provider = r.headers["Location"]
    assert to_provider.startswith(fake.authorize_url + "?"), to_provider
    state = query_of(to_provider)["state"]
    at_provider = browser.get(to_provider)
    assert at_provider.status_code == 302, at_provider.text
    callback = at_provider.headers["Location"]
    assert callback.startswith(srv.callback + "?"), callback
    return SimpleNamespace(browser=browser, authorize=r, to_provider=to_provider, state=state, callback=callback)


def finish(flow, url=None, browser=None):
    """The browser arrives at gotrue's /callback."""
    return (browser or flow.browser).get(url or flow.callback)


def login(srv, fake, browser=None, query=None, headers=None):
    flow = start(srv, fake, browser, query, headers)
    flow.result = finish(flow)
    return flow


def landing(r):
    """(target, [(key, value), ...] of the fragment) of a callback's redirect."""
    assert r.status_code == 302, f"{r.status_code} {r.text}"
    target, _, fragment = r.headers["Location"].partition("#")
    return target, urllib.parse.parse_qsl(fragment, keep_blank_values=True)


def same_url(actual, expected):
    """Equal, allowing `https://host` for `https://host/`."""
    if actual == expected:
        return True
    return urllib.parse.urlsplit(expected).path in ("", "/") and actual.rstrip("/") == expected.rstrip("/")


def tokens_of(srv, r, target=SITE):
    """The tokens of a successful callback (checked: target, member order, the token works)."""
    where, pairs = landing(r)
    assert same_url(where, target), r.headers["Location"]
    assert [k for k, _ in pairs] == TOKEN_KEYS, r.headers["Location"]
    t = dict(pairs)
    assert t["token_type"] == "bearer" and t["expires_in"] == "3600" and len(t["refresh_token"]) >= 16
    me = srv.get("/user", token=t["access_token"])
    assert me.status_code == 200, me.text
    t["user"] = me.json()
    return t


def error_of(r, target=SITE):
    """(error, error_description) of a failed callback."""
    where, pairs = landing(r)
    assert same_url(where, target), r.headers["Location"]
    assert [k for k, _ in pairs] == ["error", "error_description"], r.headers["Location"]
    return pairs[0][1], pairs[1][1]


def claims(srv, access_token):
    return jwt.decode(access_token, srv.env["GOTRUE_JWT_SECRET"], algorithms=["HS256"], options={"verify_aud": False})


def check_json_error(r, status, msg):
    assert r.status_code == status, r.text
    assert r.json() == {"code": status, "msg": msg}, r.text


def try_login(srv, email, password):
    return srv.post("/token", data={"grant_type": "password", "username": email, "password": password})


def audit_actions(srv, user_id):
    r = srv.get("/admin/audit", params={"per_page": 1000}, token=OPERATOR)
    assert r.status_code == 200, r.text
    return collections.Counter(e["payload"]["action"] for e in r.json() if e["payload"]["actor_id"] == user_id)


def users_with(srv, email):
    return srv.sql("SELECT * FROM {users} WHERE email = ?", email.lower())


def set_cookie(r, name="nf_oauth_state"):
    """(value, {lower-case attribute: value}) of the Set-Cookie for `name`."""
    raw = [v for k, v in r.raw.headers.items() if k.lower() == "set-cookie" and v.startswith(name + "=")]
    assert len(raw) == 1, r.headers
    first, *attrs = [p.strip() for p in raw[0].split(";")]
    parsed = {}
    for a in attrs:
        k, _, v = a.partition("=")
        parsed[k.lower()] = v
    return first.partition("=")[2], parsed


def pkce_pair():
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


META = {
    "github": lambda f: {"full_name": f.full_name, "avatar_url": f.avatar_url},
    "gitlab": lambda f: {"full_name": f.full_name, "avatar_url": f.avatar_url},
    "google": lambda f: {"full_name": f.full_name, "avatar_url": f.avatar_url},
    "bitbucket": lambda f: {"full_name": f.full_name, "avatar_url": f.avatar_url},
    "facebook": lambda f: {"slug": "Ann B. Lee", "full_name": "Ann Lee", "avatar_url": f.avatar_url},
    "oidc": lambda f: {"full_name": f.full_name, "avatar_url": f.avatar_url},
}


# --- each provider shape: a new user ----------------------------------------------------------

@SQLITE
@pytest.mark.parametrize("shape", list(SHAPES))
def test_new_user_through_each_provider(ext, engine, shape):
    """The whole chain with real HTTP; the provider's endpoints, scope, credentials and profile
    mapping; the state signed with the key derived from JWT_SECRET (no operator token)."""
    fake = ext.fake(shape)
    # one trailing '/' of _URL is removed
    extra = {f"GOTRUE_EXTERNAL_{fake.env}_URL": fake.url + "/"} if shape in ("gitlab", "bitbucket") else {}
    srv = ext.server(engine, fake, operator=False, **extra)
    browser = Browser()
    flow = login(srv, fake, browser)

    # the browser was sent to the provider with exactly these parameters
    assert fake.authorize_queries == [query_of(flow.to_provider)]
    q = fake.authorize_queries[0]
    assert set(q) == {"client_id", "redirect_uri", "response_type", "scope", "state"}
    assert (q["client_id"], q["redirect_uri"], q["response_type"], q["scope"]) == \
        (fake.client_id, srv.callback, "code", fake.scope)
    with pytest.raises(jwt.InvalidSignatureError):  # the state key is derived, not the JWT secret itself
        jwt.decode(q["state"], srv.env["GOTRUE_JWT_SECRET"], algorithms=["HS256"])

    # the browser-binding cookie
    nonce, attrs = set_cookie(flow.authorize)
    assert len(nonce) >= 16 and nonce not in json.dumps(jwt.decode(q["state"], options={"verify_signature": False}))
    assert attrs.get("path") == "/" and attrs.get("max-age") == "300" and "httponly" in attrs
    assert attrs.get("samesite", "").lower() == "lax" and "secure" not in attrs  # the redirect URI is http

    # one code exchange: form, Basic credentials, JSON asked for
    assert len(fake.token_requests) == 1
    exchange = fake.token_requests[0]
    assert {k: exchange.form.get(k) for k in ("grant_type", "code", "redirect_uri")} == \
        {"grant_type": "authorization_code", "code": fake.issued_codes[0], "redirect_uri": srv.callback}
    assert "client_secret" not in exchange.form
    basic = base64.b64encode(f"{fake.client_id}:{fake.secret}".encode()).decode()
    assert exchange.headers["authorization"] == "Basic " + basic
    assert "application/json" in exchange.headers.get("accept", "")

    # the profile endpoints, each with the provider's bearer token
    assert {r.path for r in fake.profile_requests} == {fake.prefix + p for p in fake.profile_paths()}
    assert {r.headers["authorization"] for r in fake.profile_requests} == {"Bearer " + fake.issued_tokens[0]}
    if shape == "facebook":
        me_query = fake.profile_requests[0].query
        assert set(me_query["fields"].split(",")) >= {"email", "first_name", "last_name", "name", "picture"}

    # a new confirmed user, logged in
    tokens = tokens_of(srv, flow.result)
    user = tokens["user"]
    assert user["email"] == fake.email and user["confirmed_at"]
    assert user["app_metadata"] == {"provider": shape}
    assert user["user_metadata"] == META[shape](fake)
    assert claims(srv, tokens["access_token"])["sub"] == user["id"]
    row = users_with(srv, fake.email)
    assert len(row) == 1 and not row[0]["encrypted_password"]  # no password
    r = srv.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200, r.text


@SQLITE
def test_empty_profile_values_are_dropped_and_github_public_email_ignored(ext, engine):
    fake = ext.fake("github")
    fake.full_name = ""
    fake.public_email = unique_email("public")
    srv = ext.server(engine, fake)
    user = tokens_of(srv, login(srv, fake).result)["user"]
    assert user["email"] == fake.email and user["user_metadata"] == {"avatar_url": fake.avatar_url}
    assert users_with(srv, fake.public_email) == []


@SQLITE
@pytest.mark.parametrize("shape", ["github", "gitlab", "bitbucket"])
def test_primary_verified_email_is_chosen_from_several(ext, engine, shape):
    fake = ext.fake(shape)
    main, other = unique_email("main"), unique_email("other")
    fake.emails = [Email(other, verified=True, primary=False), Email(main, verified=True, primary=True)]
    if shape == "gitlab":  # GitLab: /user carries the primary, /user/emails the others
        fake.emails.reverse()
    srv = ext.server(engine, fake)
    assert tokens_of(srv, login(srv, fake).result)["user"]["email"] == main
    assert users_with(srv, other) == []


# --- returning users, audit, case-insensitive provider names ------------------------------------

def test_second_login_is_the_same_user_unchanged_and_audited(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake)
    browser = Browser()
    first = tokens_of(srv, login(srv, fake, browser).result)["user"]
    assert audit_actions(srv, first["id"]) == {"user_signedup": 1}

    fake.full_name, fake.avatar_url = "Renamed At GitHub", "https://avatars.example.com/new.png"
    again = tokens_of(srv, login(srv, fake, browser, query="provider=GitHub").result)["user"]
    assert again["id"] == first["id"]
    assert again["user_metadata"] == first["user_metadata"]  # existing users are not updated
    assert again["app_metadata"] == {"provider": "github"}
    assert audit_actions(srv, first["id"]) == {"user_signedup": 1, "login": 1}
    assert len(users_with(srv, fake.email)) == 1
    assert srv.get("/authorize?provider=GITHUB", allow_redirects=False).status_code == 302


def test_two_browsers_each_finish_their_own_login(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake)
    a, b = start(srv, fake), start(srv, fake)
    assert a.browser.nonce != b.browser.nonce and a.state != b.state
    tb, ta = tokens_of(srv, finish(b)), tokens_of(srv, finish(a))
    assert ta["user"]["id"] == tb["user"]["id"] and ta["refresh_token"] != tb["refresh_token"]


def test_concurrent_first_logins_make_one_user(ext, engine, receiver):
    """Several browsers finishing a first login for one new address at once: one user, and every
    browser gets a redirect (never a 500 from the unique key). The `validate` webhook, which runs
    between the account lookup and the insert, holds them all until every one has looked."""
    fake = ext.fake("github")
    srv = ext.server(engine, fake, GOTRUE_WEBHOOK_URL=receiver.url, GOTRUE_WEBHOOK_EVENTS="validate",
                     GOTRUE_WEBHOOK_ALLOW_PRIVATE_NETWORKS="true", GOTRUE_WEBHOOK_RETRIES="1",
                     GOTRUE_WEBHOOK_TIMEOUT_SEC="20")
    flows = [start(srv, fake) for _ in range(3)]
    receiver.script(*[Answer(200, hang=True) for _ in flows])
    results = [None] * len(flows)

    def run(i):
        results[i] = finish(flows[i])
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(flows))]
    for t in threads:
        t.start()
    wait_until(lambda: receiver.count() == len(flows), "every login to reach the validate hook")
    receiver.release.set()
    for t in threads:
        t.join(DEADLINE)
    assert all(r is not None for r in results)
    assert [r.status_code for r in results] == [302] * len(flows), [r.text for r in results if r.status_code != 302]
    rows = users_with(srv, fake.email)
    assert len(rows) == 1
    ids = {tokens_of(srv, r)["user"]["id"] for r in results if "access_token=" in r.headers["Location"]}
    assert ids == {rows[0]["id"]}


# --- where the browser lands ------------------------------------------------------------------------

@SQLITE
def test_referrer_on_the_site_is_where_the_browser_lands(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake)
    page = SITE + "/blog/post?x=1"
    flow = login(srv, fake, headers={"Referer": page})
    assert jwt.decode(flow.state, OPERATOR, algorithms=["HS256"])["referrer"] == page
    tokens_of(srv, flow.result, target=page)
    # another host (or one that only starts like the site's) is not a referrer: SITE_URL
    for other in ("https://evil.example.net/x", "https://site.example.com.evil.net/", "javascript:alert(1)"):
        flow = login(srv, fake, headers={"Referer": other})
        assert "referrer" not in jwt.decode(flow.state, OPERATOR, algorithms=["HS256"])
        tokens_of(srv, flow.result, target=SITE)
    # errors go back to the referrer too
    fake.deny = True
    assert error_of(login(srv, fake, headers={"Referer": page}).result, target=page)[0] == "access_denied"


@SQLITE
def test_external_redirecturl_wins_over_referrer_and_site(ext, engine):
    fake = ext.fake("github")
    after = "https://app.example.com/after-login"
    srv = ext.server(engine, fake, GOTRUE_EXTERNAL_REDIRECTURL=after)
    tokens_of(srv, login(srv, fake, headers={"Referer": SITE + "/page"}).result, target=after)
    fake.deny = True
    assert error_of(login(srv, fake, headers={"Referer": SITE + "/page"}).result, target=after)[0] == "access_denied"


# --- emails the provider does not vouch for -----------------------------------------------------------

@SQLITE
@pytest.mark.parametrize("autoconfirm", [False, True])
def test_unverified_email_gets_a_confirmation_mail_and_no_tokens(ext, engine, mailbox, autoconfirm):
    fake = ext.fake("github")
    fake.emails = [Email(unique_email("unverified"), verified=False)]
    srv = ext.server(engine, fake, GOTRUE_MAILER_AUTOCONFIRM=str(autoconfirm).lower())
    flow = login(srv, fake)
    if autoconfirm:  # upstream: autoconfirm trusts every address
        assert tokens_of(srv, flow.result)["user"]["email"] == fake.email
        return
    assert flow.result.status_code == 302 and same_url(flow.result.headers["Location"], SITE)
    assert "#" not in flow.result.headers["Location"]
    row = users_with(srv, fake.email)[0]
    assert row["confirmed_at"] is None and row["confirmation_sent_at"] is not None
    msg = mailbox.wait_for(fake.email)
    assert msg["Subject"] == "Confirm Your Signup"
    r = srv.post("/verify", json={"type": "signup", "token": link_token(msg, "confirmation")})
    assert r.status_code == 200, r.text
    me = srv.get("/user", token=r.json()["access_token"]).json()
    assert me["id"] == row["id"] and me["app_metadata"] == {"provider": "github"}


@pytest.mark.parametrize("confirmed", [False, True], ids=["unconfirmed-account", "confirmed-account"])
@SQLITE
def test_unverified_provider_email_never_opens_an_existing_account(ext, engine, confirmed):
    fake = ext.fake("github")
    address = unique_email("owner")
    fake.emails = [Email(address, verified=False)]
    srv = ext.server(engine, fake)
    user = srv.confirmed_user(address, "owner-pw") if confirmed else srv.signup(address, "owner-pw")
    before = users_with(srv, address)[0]
    where, pairs = landing(login(srv, fake).result)
    assert "access_token" not in dict(pairs)
    rows = users_with(srv, address)
    assert len(rows) == 1 and rows[0]["id"] == user["id"]
    assert rows[0]["confirmed_at"] == before["confirmed_at"]
    assert rows[0]["encrypted_password"] == before["encrypted_password"]


def test_verified_provider_email_takes_over_an_unconfirmed_password_account(ext, engine):
    """Pre-account takeover: the attacker's unconfirmed account becomes the victim's, and the
    attacker's password stops working."""
    fake = ext.fake("google")
    victim = fake.email
    srv = ext.server(engine, fake)
    planted = srv.signup(victim, "attacker-pw", data={"planted": True})
    assert try_login(srv, victim, "attacker-pw").json()["error_description"] == "Email not confirmed"
    user = tokens_of(srv, login(srv, fake).result)["user"]
    assert user["id"] == planted["id"] and user["confirmed_at"]
    r = try_login(srv, victim, "attacker-pw")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert r.json()["error_description"] != "Email not confirmed"
    assert not users_with(srv, victim)[0]["encrypted_password"]


def test_confirmed_account_keeps_its_password_after_a_provider_login(ext, engine):
    fake = ext.fake("gitlab")
    srv = ext.server(engine, fake)
    owner = srv.confirmed_user(fake.email, "owner-pw")
    assert tokens_of(srv, login(srv, fake).result)["user"]["id"] == owner["id"]
    assert srv.login(fake.email, "owner-pw")["access_token"]
    assert audit_actions(srv, owner["id"])["login"] == 2  # password login above and the provider login


@SQLITE
@pytest.mark.parametrize("shape", ["github", "google", "oidc"])
def test_no_email_at_all_is_server_error(ext, engine, shape):
    fake = ext.fake(shape)
    fake.emails = []
    if shape == "github":
        fake.public_email = unique_email("public")  # /user's email does not count
    srv = ext.server(engine, fake)
    assert error_of(login(srv, fake).result) == ("server_error", NO_EMAIL)
    assert srv.sql("SELECT COUNT(*) AS n FROM {users}")[0]["n"] == 0


@SQLITE
@pytest.mark.parametrize("bad", ["ctl\x01char@example.com", "=?utf-8?q?evil?=@example.com", "no-at-sign",
                                 "two@@example.com", "x" * 250 + "@example.com"],
                         ids=["control-char", "rfc2047-word", "no-at", "double-at", "too-long"])
def test_provider_emails_gotrue_would_refuse_are_not_stored(ext, engine, bad):
    """An address /signup refuses does not get in through a provider (verified or not); with no
    usable address left the login fails as "no email"."""
    fake = ext.fake("bitbucket")
    fake.emails = [Email(bad)]
    srv = ext.server(engine, fake)
    assert error_of(login(srv, fake).result) == ("server_error", NO_EMAIL)
    assert srv.sql("SELECT COUNT(*) AS n FROM {users}")[0]["n"] == 0
    # a good address next to it is used
    fake.emails = [Email(bad), Email(unique_email("good"), primary=False)]
    assert tokens_of(srv, login(srv, fake).result)["user"]["email"] == fake.emails[1].address


# --- the provider says no, or fails ----------------------------------------------------------------

@SQLITE
def test_provider_denial_is_passed_through(ext, engine):
    fake = ext.fake("bitbucket")
    srv = ext.server(engine, fake)
    fake.deny = True
    assert error_of(login(srv, fake).result) == ("access_denied", "The user has denied your application access.")
    assert fake.token_requests == [] and srv.sql("SELECT COUNT(*) AS n FROM {users}")[0]["n"] == 0


@SQLITE
def test_missing_and_rejected_codes(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake)
    flow = start(srv, fake)
    without_code = srv.callback + "?" + urllib.parse.urlencode({"state": flow.state})
    assert error_of(finish(flow, without_code)) == ("invalid_request", "Authorization code missing")
    assert fake.token_requests == []

    flow = start(srv, fake)
    forged = srv.callback + "?" + urllib.parse.urlencode({"state": flow.state, "code": "not-a-code-it-issued"})
    assert error_of(finish(flow, forged)) == ("server_error", NO_EXCHANGE.format("github"))
    # (tried with Basic, and perhaps once more with form credentials, as Go's oauth2 does)
    assert {r.form["code"] for r in fake.token_requests} == {"not-a-code-it-issued"}
    assert len(fake.token_requests) <= 2


@SQLITE
@pytest.mark.parametrize("switch", [
    pytest.param({"token_status": 500}, id="token-500"),
    pytest.param({"token_status": 400}, id="token-400"),
    pytest.param({"token_status": 503}, id="token-503"),
    pytest.param({"token_reply": {"token_type": "bearer"}}, id="no-access-token"),
    pytest.param({"token_reply": {"error": "invalid_grant"}}, id="error-in-200"),
    pytest.param({"credentials": "basic", "secret": "wrong-secret-in-gotrue-config"}, id="wrong-secret"),
    pytest.param({"profile_status": 500}, id="profile-500"),
    pytest.param({"profile_status": 401}, id="profile-401"),
    pytest.param({"emails_status": 404}, id="emails-404"),
])
def test_provider_failures_are_server_errors(ext, engine, switch):
    fake = ext.fake("github")
    settings = {}
    if "secret" in switch:
        settings["GOTRUE_EXTERNAL_GITHUB_SECRET"] = switch.pop("secret")
    for k, v in switch.items():
        setattr(fake, k, v)
    srv = ext.server(engine, fake, **settings)
    expected = NO_EMAIL if any(k.startswith(("profile", "emails")) for k in switch) else NO_EXCHANGE.format("github")
    assert error_of(login(srv, fake).result) == ("server_error", expected)
    assert srv.sql("SELECT COUNT(*) AS n FROM {users}")[0]["n"] == 0
    if settings:
        assert settings["GOTRUE_EXTERNAL_GITHUB_SECRET"] not in srv.log()


@SQLITE
def test_token_endpoint_refusing_basic_gets_the_credentials_as_form_fields(ext, engine):
    fake = ext.fake("facebook")
    fake.credentials = "form"
    srv = ext.server(engine, fake)
    tokens_of(srv, login(srv, fake).result)
    first, second = fake.token_requests
    assert first.headers["authorization"].startswith("Basic ")
    assert "authorization" not in second.headers
    assert (second.form["client_id"], second.form["client_secret"]) == (fake.client_id, fake.secret)
    assert second.form["code"] == first.form["code"] and second.form["grant_type"] == "authorization_code"


@SQLITE
@pytest.mark.parametrize("shape", ["github", "facebook"])
def test_client_secret_with_odd_characters(ext, engine, shape):
    """Basic credentials are form-encoded before base64 (RFC 6749 2.3.1), so any secret gets
    through without the form fallback; Facebook's appsecret_proof is keyed with it as is."""
    fake = ext.fake(shape)
    fake.secret = "p+q/r:s t%u=v&w" + secrets.token_hex(8)
    fake.credentials = "basic"
    srv = ext.server(engine, fake)
    tokens_of(srv, login(srv, fake).result)
    assert len(fake.token_requests) == 1


@SQLITE
def test_unreachable_token_endpoint_is_server_error(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake)
    flow = start(srv, fake)
    code = query_of(flow.callback)["code"]
    srv.stop()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    srv.env["GOTRUE_EXTERNAL_GITHUB_URL"] = dead
    srv.start()
    r = finish(flow)
    assert error_of(r) == ("server_error", NO_EXCHANGE.format("github"))
    assert code not in srv.log()


@SQLITE
@pytest.mark.parametrize("slow", ["slow_token", "slow_profile"])
def test_a_hanging_provider_times_out_without_stalling_the_server(ext, engine, slow):
    fake = ext.fake("gitlab")
    srv = ext.server(engine, fake, GOTRUE_EXTERNAL_TIMEOUT_SEC="1", GOTRUE_API_THREADS="2")
    setattr(fake, slow, 3 * DEADLINE)  # held until the fake is closed
    flow = start(srv, fake)
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("r", finish(flow)), daemon=True)
    t.start()
    pending = fake.token_requests if slow == "slow_token" else fake.profile_requests
    wait_until(lambda: pending, "gotrue.py to call the provider")
    assert srv.get("/settings").status_code == 200  # the server answers meanwhile
    t.join(DEADLINE)
    assert "r" in done, "the callback never answered"
    error, description = error_of(done["r"])
    assert error == "server_error" and description in (NO_EXCHANGE.format("gitlab"), NO_EMAIL)
    # no worker is left stuck: more requests than threads still get answers
    for _ in range(4):
        assert srv.get("/health").status_code == 200 and srv.get("/settings").status_code == 200


# --- the state parameter -----------------------------------------------------------------------------

@SQLITE
def test_state_claims_and_cookie(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake)
    browser = Browser()
    flow = start(srv, fake, browser)
    c = jwt.decode(flow.state, OPERATOR, algorithms=["HS256"])
    assert jwt.get_unverified_header(flow.state)["alg"] == "HS256"
    assert (c["site_url"], c["id"], c["netlify_id"], c["function_hooks"]) == (SITE, NIL, "", {})
    assert c["provider"].lower() == "github" and "invite_token" not in c and "referrer" not in c
    assert 240 < c["exp"] - time.time() <= 310  # five minutes
    assert browser.nonce and browser.nonce not in json.dumps(c)  # the state holds a hash of it
    tokens_of(srv, finish(flow))


@SQLITE
def test_state_cookie_is_secure_with_an_https_redirect_uri(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake, GOTRUE_EXTERNAL_GITHUB_REDIRECT_URI="https://id.example.com/callback")
    r = Browser().get(srv.url + "/authorize?provider=github")
    assert r.status_code == 302 and query_of(r.headers["Location"])["redirect_uri"] == "https://id.example.com/callback"
    assert "secure" in set_cookie(r)[1]


def resign(state, key, algorithm="HS256", **changes):
    c = jwt.decode(state, options={"verify_signature": False})
    c.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del c[k]
    return jwt.encode(c, key, algorithm=algorithm)


@SQLITE
@pytest.mark.parametrize("forge", [
    pytest.param(lambda s: resign(s, "another-key-" + OPERATOR), id="other-key"),
    pytest.param(lambda s: resign(s, OPERATOR, exp=int(time.time()) - 30), id="expired"),
    pytest.param(lambda s: resign(s, OPERATOR, algorithm="HS512"), id="hs512"),
    pytest.param(lambda s: resign(s, OPERATOR, provider=None), id="no-provider"),
    pytest.param(lambda s: jwt.encode(jwt.decode(s, options={"verify_signature": False}), None, algorithm="none"),
                 id="alg-none"),
    pytest.param(lambda s: s[:-4] + ("AAAA" if not s.endswith("AAAA") else "BBBB"), id="bad-signature"),
])
def test_states_that_do_not_verify_are_400(ext, engine, forge):
    fake = ext.fake("github")
    srv = ext.server(engine, fake)
    flow = start(srv, fake)
    code = query_of(flow.callback)["code"]
    url = srv.callback + "?" + urllib.parse.urlencode({"state": forge(flow.state), "code": code})
    r = finish(flow, url)
    assert r.status_code == 400 and r.json()["code"] == 400, r.text
    assert r.json()["msg"].startswith("OAuth state is invalid: "), r.text
    assert fake.token_requests == []


@SQLITE
def test_state_signed_with_the_jwt_secret_is_refused(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake, operator=False)
    flow = start(srv, fake)
    url = srv.callback + "?" + urllib.parse.urlencode({"state": resign(flow.state, srv.env["GOTRUE_JWT_SECRET"]),
                                                       "code": query_of(flow.callback)["code"]})
    r = finish(flow, url)
    assert r.status_code == 400 and r.json()["msg"].startswith("OAuth state is invalid: "), r.text


@SQLITE
def test_state_missing_is_400(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake)
    flow = start(srv, fake)
    for query in ({"code": query_of(flow.callback)["code"]}, {"error": "access_denied"}, {}):
        url = srv.callback + ("?" + urllib.parse.urlencode(query) if query else "")
        check_json_error(finish(flow, url), 400, "OAuth state parameter missing")
    assert fake.token_requests == []


def test_state_is_single_use_and_bound_to_the_browser(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake)
    # replayed by the same browser after it was used
    flow = login(srv, fake)
    tokens_of(srv, flow.result)
    assert error_of(finish(flow)) == ("access_denied", NOT_YOURS)
    assert len(fake.token_requests) == 1

    # another browser (no cookie), and a browser holding the cookie of its own login
    victim = start(srv, fake)
    assert error_of(Browser().get(victim.callback)) == ("access_denied", NOT_YOURS)
    attacker = start(srv, fake)
    assert error_of(finish(victim, browser=attacker.browser)) == ("access_denied", NOT_YOURS)
    assert len(fake.token_requests) == 1  # no code was exchanged for them
    # the right state with a cookie that is not its nonce
    forged = start(srv, fake)
    forged.browser.http.cookies.clear()
    forged.browser.http.cookies.set("nf_oauth_state", "guessed-" + secrets.token_hex(8), domain="127.0.0.1")
    assert error_of(finish(forged)) == ("access_denied", NOT_YOURS)


@SQLITE
def test_login_started_before_a_restart_finishes_and_disabled_provider_is_refused(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake, operator=False)  # the derived state key survives a restart
    flow = start(srv, fake)
    srv.stop()
    srv.start()
    tokens_of(srv, finish(flow))
    assert error_of(finish(flow)) == ("access_denied", NOT_YOURS)  # still used after a restart

    flow = start(srv, fake)
    srv.stop()
    srv.env["GOTRUE_EXTERNAL_GITHUB_ENABLED"] = "false"
    srv.start()
    assert error_of(finish(flow)) == ("invalid_request", "Unsupported provider: Provider is not enabled")
    assert len(fake.token_requests) == 1


# --- configuration, /settings, /authorize errors -------------------------------------------------------

@SQLITE
def test_settings_and_unusable_providers(make_server, engine):
    port = free_port()
    cb = f"http://127.0.0.1:{port}/callback"

    def full(p):
        return {f"GOTRUE_EXTERNAL_{p}_{k}": v for k, v in
                (("ENABLED", "true"), ("CLIENT_ID", p.lower() + "-id"), ("SECRET", p.lower() + "-secret"),
                 ("REDIRECT_URI", cb), ("URL", "http://127.0.0.1:9"))}
    env = {"PORT": str(port), **full("GITHUB"), **full("GITLAB"), **full("GOOGLE"), **full("BITBUCKET"),
           **full("FACEBOOK")}
    env.update(GOTRUE_EXTERNAL_GITLAB_ENABLED="false", GOTRUE_EXTERNAL_GOOGLE_CLIENT_ID=None,
               GOTRUE_EXTERNAL_BITBUCKET_SECRET=None, GOTRUE_EXTERNAL_FACEBOOK_REDIRECT_URI=None)
    srv = make_server(engine, **env)
    s = srv.get("/settings").json()
    assert s["external"] == {"bitbucket": False, "github": True, "gitlab": False, "google": False,
                             "facebook": False, "email": True, "saml": False}
    assert s["external_labels"] == {}
    for query, msg in [
        ("provider=gitlab", "Provider is not enabled"),
        ("provider=google", "Missing Oauth client ID"),
        ("provider=bitbucket", "Missing Oauth secret"),
        ("provider=FaceBook", "Missing redirect URI"),
        ("provider=twitter", "Provider twitter could not be found"),
    ]:
        check_json_error(srv.get("/authorize?" + query, allow_redirects=False), 400, "Unsupported provider: " + msg)
    r = srv.get("/authorize?provider=GitHub", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].startswith("http://127.0.0.1:9/login/oauth/authorize?")
    # the error is 400 before any invite lookup; an unknown invite of a usable provider is 404
    check_json_error(srv.get("/authorize?provider=gitlab&invite_token=nope", allow_redirects=False), 400,
                     "Unsupported provider: Provider is not enabled")
    check_json_error(srv.get("/authorize?provider=github&invite_token=nope", allow_redirects=False), 404,
                     "User not found")


@SQLITE
def test_gotrue_js_urls(ext, engine):
    """What gotrue-js builds: loginExternalUrl and acceptInviteExternalUrl."""
    fake = ext.fake("github")
    srv = ext.server(engine, fake, GOTRUE_DISABLE_SIGNUP="true")
    api_url = srv.url
    invited = srv.post("/invite", token=OPERATOR, json={"email": fake.email})
    assert invited.status_code == 200, invited.text
    token = users_with(srv, fake.email)[0]["confirmation_token"]
    browser = Browser()
    r = browser.get(f"{api_url}/authorize?provider={'github'}")
    assert r.status_code == 302 and r.headers["Location"].startswith(fake.authorize_url + "?")
    r = browser.get(f"{api_url}/authorize?provider={'github'}&invite_token={token}")
    assert r.status_code == 302 and r.headers["Location"].startswith(fake.authorize_url + "?")
    assert jwt.decode(query_of(r.headers["Location"])["state"], OPERATOR, algorithms=["HS256"])["invite_token"] == token


# --- disable_signup and invites --------------------------------------------------------------------------

def test_disable_signup_refuses_new_users_but_lets_existing_ones_in(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake, GOTRUE_DISABLE_SIGNUP="true")
    assert error_of(login(srv, fake).result) == ("access_denied", "Signups not allowed for this instance")
    assert users_with(srv, fake.email) == []
    r = srv.post("/admin/users", token=OPERATOR, json={"email": fake.email, "password": "pw-1", "confirm": True})
    assert r.status_code == 200, r.text
    tokens = tokens_of(srv, login(srv, fake).result)
    assert tokens["user"]["id"] == r.json()["id"]
    assert audit_actions(srv, r.json()["id"])["login"] == 1


def invite(srv, address, **data):
    r = srv.post("/invite", token=OPERATOR, json={"email": address, "data": data or None})
    assert r.status_code == 200, r.text
    return r.json(), users_with(srv, address)[0]["confirmation_token"]


def test_invite_accepted_through_a_provider(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake, GOTRUE_DISABLE_SIGNUP="true")  # invites do not need signups
    user, token = invite(srv, fake.email, team="blue")
    flow = login(srv, fake, query=f"provider=github&invite_token={token}")
    tokens = tokens_of(srv, flow.result)
    me = tokens["user"]
    assert me["id"] == user["id"] and me["confirmed_at"] and me["invited_at"]
    assert me["app_metadata"] == {"provider": "github"}
    assert me["user_metadata"] == {"team": "blue", "full_name": fake.full_name, "avatar_url": fake.avatar_url}
    assert audit_actions(srv, user["id"]) == {"invite_accepted": 1}
    # the invite is spent
    check_json_error(srv.get(f"/authorize?provider=github&invite_token={token}", allow_redirects=False), 404,
                     "User not found")
    # a later plain login is a login of that user
    assert tokens_of(srv, login(srv, fake).result)["user"]["id"] == user["id"]


def test_invites_that_cannot_be_accepted(ext, engine):
    fake = ext.fake("gitlab")
    srv = ext.server(engine, fake)
    # the provider does not know the invited address (the token is trimmed, as upstream)
    address = unique_email("invited")
    user, token = invite(srv, address)
    flow = login(srv, fake, query="provider=gitlab&invite_token=" + urllib.parse.quote(f"  {token} "))
    assert error_of(flow.result) == ("invalid_request", "Invited email does not match emails from external provider")
    # the provider knows it, but not as a verified address (ours: stricter than upstream)
    fake.emails = [Email(address, verified=False), Email(unique_email("other"), primary=False)]
    flow = login(srv, fake, query=f"provider=gitlab&invite_token={token}")
    assert error_of(flow.result) == ("invalid_request", "Invited email does not match emails from external provider")
    row = users_with(srv, address)[0]
    assert row["confirmed_at"] is None and row["confirmation_token"] == token
    # expired (MAILER_INVITE_MAX_AGE, 168h by default)
    fake.emails = [Email(address)]
    srv.backdate(address, "invited_at", 169 * 3600)
    flow = login(srv, fake, query=f"provider=gitlab&invite_token={token}")
    assert error_of(flow.result) == ("invalid_request", "Invite expired")
    assert users_with(srv, address)[0]["confirmed_at"] is None
    # cancelled between /authorize and /callback
    other = unique_email("cancelled")
    fake.emails = [Email(other)]
    cancelled, token2 = invite(srv, other)
    flow = start(srv, fake, query=f"provider=gitlab&invite_token={token2}")
    assert srv.delete(f"/admin/users/{cancelled['id']}", token=OPERATOR).status_code == 200
    assert error_of(finish(flow)) == ("server_error", "User not found")
    assert users_with(srv, other) == []
    # unknown at /authorize
    check_json_error(srv.get("/authorize?provider=gitlab&invite_token=no-such-invite", allow_redirects=False), 404,
                     "User not found")


# --- PKCE --------------------------------------------------------------------------------------------------

def pkce_code(srv, fake, challenge):
    flow = login(srv, fake, query=f"provider={fake.name}&code_challenge={challenge}&code_challenge_method=S256")
    assert flow.result.status_code == 302, flow.result.text
    where = flow.result.headers["Location"]
    assert "#" not in where and "access_token" not in where
    target, _, query = where.partition("?")
    assert same_url(target, SITE), where
    assert list(dict(urllib.parse.parse_qsl(query))) == ["code"], where
    return dict(urllib.parse.parse_qsl(query))["code"]


def exchange(srv, code=None, verifier=None):
    data = {"grant_type": "authorization_code"}
    data.update({k: v for k, v in (("code", code), ("code_verifier", verifier)) if v is not None})
    return srv.post("/token", data=data)


INVALID_CODE = {"error": "invalid_grant", "error_description": "Invalid authorization code"}


def test_pkce_flow(ext, engine):
    fake = ext.fake("google")
    srv = ext.server(engine, fake)
    verifier, challenge = pkce_pair()
    code = pkce_code(srv, fake, challenge)
    assert not any(code in str(v) for row in srv.sql("SELECT * FROM {one_time_tokens}") for v in row.values())
    r = exchange(srv, code, verifier)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"} and body["token_type"] == "bearer"
    me = srv.get("/user", token=body["access_token"]).json()
    assert me["email"] == fake.email and me["app_metadata"] == {"provider": "google"}
    refreshed = srv.post("/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    # single use
    r = exchange(srv, code, verifier)
    assert (r.status_code, r.json()) == (400, INVALID_CODE)

    # a wrong verifier burns the code
    verifier, challenge = pkce_pair()
    code = pkce_code(srv, fake, challenge)
    r = exchange(srv, code, pkce_pair()[0])
    assert (r.status_code, r.json()) == (400, INVALID_CODE)
    r = exchange(srv, code, verifier)
    assert (r.status_code, r.json()) == (400, INVALID_CODE)

    # expired (five minutes)
    verifier, challenge = pkce_pair()
    code = pkce_code(srv, fake, challenge)
    past = gotrue.now() - gotrue.dt.timedelta(seconds=10)
    assert srv.sql("UPDATE {one_time_tokens} SET expires_at = ?", past) >= 1
    r = exchange(srv, code, verifier)
    assert (r.status_code, r.json()) == (400, INVALID_CODE)

    # missing members; an unknown code
    r = exchange(srv, None, verifier)
    assert (r.status_code, r.json()) == (400, {"error": "invalid_request", "error_description": "code required"})
    r = exchange(srv, "some-code", None)
    assert (r.status_code, r.json()) == (400, {"error": "invalid_request",
                                               "error_description": "code_verifier required"})
    r = exchange(srv, "never-issued-" + secrets.token_hex(8), verifier)
    assert (r.status_code, r.json()) == (400, INVALID_CODE)


@SQLITE
def test_pkce_lands_on_the_referrer_with_the_code(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake)
    verifier, challenge = pkce_pair()
    page = SITE + "/app"
    flow = login(srv, fake, headers={"Referer": page},
                 query=f"provider=github&code_challenge={challenge}&code_challenge_method=S256")
    where = flow.result.headers["Location"]
    assert where.startswith(page + "?code="), where
    code = query_of(where)["code"]
    assert exchange(srv, code, verifier).status_code == 200


@SQLITE
def test_pkce_challenge_checks(ext, engine):
    fake = ext.fake("github")
    srv = ext.server(engine, fake)
    _, good = pkce_pair()
    unsupported = "Unsupported code_challenge_method: only S256"
    for query, msg in [
        (f"code_challenge={good}", unsupported),
        (f"code_challenge={good}&code_challenge_method=plain", unsupported),
        ("code_challenge=short&code_challenge_method=S256", "Invalid code_challenge"),
        (f"code_challenge={'a' * 129}&code_challenge_method=S256", "Invalid code_challenge"),
        (f"code_challenge={'a' * 42}%2B&code_challenge_method=S256", "Invalid code_challenge"),
        (f"code_challenge={'a' * 42}%3D&code_challenge_method=S256", "Invalid code_challenge"),
    ]:
        check_json_error(srv.get("/authorize?provider=github&" + query, allow_redirects=False), 400, msg)
    for ok in ("a" * 43, "A-._~" * 25 + "abc", good):
        r = srv.get(f"/authorize?provider=github&code_challenge={ok}&code_challenge_method=S256", allow_redirects=False)
        assert r.status_code == 302, (ok, r.text)


# --- OpenID Connect ----------------------------------------------------------------------------------------

@SQLITE
def test_oidc_provider_by_discovery(ext, engine, mailbox):
    fake = ext.fake("oidc")
    scopes = "openid email profile groups"
    srv = ext.server(engine, fake, oidc_name="keycloak", GOTRUE_EXTERNAL_OIDC_SCOPES=scopes)
    s = srv.get("/settings").json()
    assert s["external"] == {"bitbucket": False, "github": False, "gitlab": False, "google": False,
                             "facebook": False, "email": True, "saml": False, "keycloak": True}
    assert s["external_labels"] == {"keycloak": "keycloak"}

    flow = login(srv, fake, query="provider=keycloak")
    q = fake.authorize_queries[-1]
    assert (q["scope"], q["client_id"], q["redirect_uri"]) == (scopes, fake.client_id, srv.callback)
    assert fake.discovery_fetches >= 1
    user = tokens_of(srv, flow.result)["user"]
    assert user["email"] == fake.email and user["user_metadata"] == META["oidc"](fake)
    assert user["app_metadata"]["provider"] in ("oidc", "keycloak")
    token_request = fake.token_requests[-1]
    assert token_request.path == fake.prefix + fake.token_path and token_request.form["code"] == fake.issued_codes[-1]

    # provider=oidc and the name in any case select it too
    for name in ("oidc", "KeyCloak"):
        r = Browser().get(f"{srv.url}/authorize?provider={name}")
        assert r.status_code == 302 and r.headers["Location"].startswith(fake.authorize_url + "?"), r.text

    # email_verified false, or absent, is not verified
    for omit in (False, True):
        fake.emails = [Email(unique_email("oidc-unverified"), verified=False)]
        fake.omit_email_verified = omit
        flow = login(srv, fake, query="provider=keycloak")
        assert "#" not in flow.result.headers["Location"]
        assert users_with(srv, fake.email)[0]["confirmed_at"] is None
        assert mailbox.wait_for(fake.email)["Subject"] == "Confirm Your Signup"


@SQLITE
def test_oidc_default_name_in_settings(ext, engine):
    fake = ext.fake("oidc")
    srv = ext.server(engine, fake)
    s = srv.get("/settings").json()
    assert s["external"]["oidc"] is True and s["external_labels"] == {"oidc": "oidc"}
    assert fake.authorize_queries == [] and fake.token_requests == []
    assert tokens_of(srv, login(srv, fake).result)["user"]["app_metadata"] == {"provider": "oidc"}


@SQLITE
@pytest.mark.parametrize("member", ["authorization_endpoint", "token_endpoint", "userinfo_endpoint"])
def test_oidc_endpoints_must_be_https_unless_loopback(ext, engine, member):
    """A discovery document naming a plain-http endpoint on a public host is not followed: the
    browser is not sent there, the code and client secret are not posted there."""
    fake = ext.fake("oidc")
    fake.discovery_overrides = {member: "http://idp.invalid/" + member}
    srv = ext.server(engine, fake, GOTRUE_EXTERNAL_TIMEOUT_SEC="2")
    browser = Browser()
    r = browser.get(srv.url + "/authorize?provider=oidc")
    if r.status_code != 302:
        assert r.status_code >= 400
        return
    location = r.headers["Location"]
    assert not location.startswith("http://idp.invalid"), location
    at_provider = browser.get(location)
    assert at_provider.status_code == 302
    where, pairs = landing(browser.get(at_provider.headers["Location"]))
    assert dict(pairs).get("error") == "server_error", pairs
    assert fake.profile_requests == []


@SQLITE
@pytest.mark.parametrize("name", ["github", "GitHub", "email", "saml"])
def test_oidc_name_cannot_shadow_another_provider(ext, engine, name):
    """OIDC's NAME is a key of /settings' `external` and a value of `provider`: it must not take
    over a built-in provider's name (refused at start, or the built-in one wins)."""
    github, oidc = ext.fake("github"), ext.fake("oidc")
    try:
        srv = ext.server(engine, github, oidc, oidc_name=name, GOTRUE_EXTERNAL_EMAIL_DISABLED="true")
    except AssertionError as e:  # refused to start: fine, if it names the setting
        assert "OIDC_NAME" in str(e), e
        return
    external = srv.get("/settings").json()["external"]
    assert (external["github"], external["email"], external["saml"]) == (True, False, False), external
    r = Browser().get(srv.url + "/authorize?provider=github")
    assert r.status_code == 302 and r.headers["Location"].startswith(github.authorize_url + "?"), r.headers


@pytest.mark.parametrize("url", ["http://oidc.example.test/realms/demo", "ftp://127.0.0.1/x"])
def test_oidc_url_must_be_https_unless_loopback(tmp_path, url):
    """A discovery document fetched over plain HTTP from a non-loopback host could name any
    (HTTPS) endpoint: gotrue.py refuses such a URL at start, before anything is fetched (the
    host here is a reserved name that nothing could serve)."""
    env = base_env(str(tmp_path), {"GOTRUE_DB_DRIVER": "sqlite", "DATABASE_URL": str(tmp_path / "gt.db")},
                   GOTRUE_EXTERNAL_OIDC_ENABLED="true", GOTRUE_EXTERNAL_OIDC_URL=url)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "gotrue.py")], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "GOTRUE_EXTERNAL_OIDC_URL" in result.stderr, result.stderr


# --- webhooks -------------------------------------------------------------------------------------------------

def hook_events(receiver):
    return [json.loads(r.body)["event"] for r in receiver.take()]


def test_webhooks_see_external_logins_and_can_veto_or_add_metadata(ext, engine, receiver):
    fake = ext.fake("github")
    srv = ext.server(engine, fake, GOTRUE_WEBHOOK_URL=receiver.url, GOTRUE_WEBHOOK_SECRET=HOOK_SECRET,
                     GOTRUE_WEBHOOK_EVENTS="validate,signup,login", GOTRUE_WEBHOOK_ALLOW_PRIVATE_NETWORKS="true",
                     GOTRUE_WEBHOOK_RETRIES="1")
    # a new user: validate, then signup when confirming; the replies reach the token
    receiver.script({"app_metadata": {"provider": "github", "roles": ["member"]}}, {"user_metadata": {"by": "hook"}})
    tokens = tokens_of(srv, login(srv, fake).result)
    reqs = receiver.take()
    assert [json.loads(r.body)["event"] for r in reqs] == ["validate", "signup"]
    hooked = json.loads(reqs[0].body)["user"]
    assert hooked["email"] == fake.email and hooked["app_metadata"] == {"provider": "github"}
    assert jwt.decode(reqs[0].headers["x-webhook-signature"], HOOK_SECRET, algorithms=["HS256"])["iss"] == "gotrue"
    c = claims(srv, tokens["access_token"])
    assert c["app_metadata"] == {"provider": "github", "roles": ["member"]} and c["user_metadata"] == {"by": "hook"}
    user_id = tokens["user"]["id"]

    # returning: login
    receiver.script({"app_metadata": {"roles": ["editor"]}})
    tokens = tokens_of(srv, login(srv, fake).result)
    assert hook_events(receiver) == ["login"]
    assert claims(srv, tokens["access_token"])["app_metadata"] == {"roles": ["editor"]}

    # a veto of the login: an error redirect (the webhook failure is upstream's 422, hence
    # server_error), no tokens, no audit entry
    logins = audit_actions(srv, user_id)["login"]
    receiver.script(403)
    assert error_of(login(srv, fake).result) == ("server_error", "Failed to handle signup webhook")
    assert hook_events(receiver) == ["login"]
    assert audit_actions(srv, user_id)["login"] == logins

    # a veto of a new user: nobody is created
    fake.emails = [Email(unique_email("vetoed"))]
    receiver.script(400)
    assert error_of(login(srv, fake).result) == ("server_error", "Failed to handle signup webhook")
    assert hook_events(receiver) == ["validate"]
    assert users_with(srv, fake.email) == []


# --- the logs ------------------------------------------------------------------------------------------------

@SQLITE
def test_no_provider_secret_reaches_the_log(ext, engine):
    """Success and failure paths at debug level; the `ext` fixture scans every test's log the
    same way, this one makes sure the callbacks were logged at all."""
    fake = ext.fake("facebook")
    srv = ext.server(engine, fake, LOG_LEVEL="debug")
    tokens_of(srv, login(srv, fake).result)
    fake.token_status = 500
    assert error_of(login(srv, fake).result)[0] == "server_error"
    fake.token_status, fake.profile_status = None, 502
    assert error_of(login(srv, fake).result)[0] == "server_error"
    fake.profile_status = None
    flow = start(srv, fake)
    bogus = srv.callback + "?" + urllib.parse.urlencode({"state": flow.state, "code": "x" + fake.issued_codes[-1]})
    assert error_of(finish(flow, bogus))[0] == "server_error"
    _, challenge = pkce_pair()
    pkce_code(srv, fake, challenge)
    log = srv.log()
    assert log.count("/callback") >= 5  # the requests were logged ...
    assert len(fake.issued_codes) >= 5 and len(fake.issued_tokens) >= 3 and len(fake.error_bodies) >= 2
    leaked = [s for s in fake.leakables() if s in log]  # ... without what the provider handed out
    assert not leaked, leaked
