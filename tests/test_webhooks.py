"""Webhooks (spec §6): signed events delivered to a real loopback HTTP receiver, vetoes that
roll the action back, metadata replies, retries and timeouts, broken receivers, the event
filter and the private-network guard. Every test runs on SQLite and on MariaDB."""

import collections
import functools
import socket
import hashlib
import http.server
import json
import threading
import time

import jwt
import pytest

from conftest import free_port, unique_email, wait_until

NIL_UUID = "00000000-0000-0000-0000-000000000000"
SECRET = "hook-secret-9f4c1d7e-5a2b-4c3d-8e9f-0a1b2c3d"
OPERATOR = "operator-token-for-webhook-tests"
ALL_EVENTS = "validate,signup,login,usermodified,userdeleted"
PW = "secret-pw"
HANG = 20  # how long a "slow" receiver holds its answer (until the test's teardown releases it)
USER_KEYS_NEW = ["id", "aud", "role", "email", "app_metadata", "user_metadata", "created_at", "updated_at"]
FAILED = "Failed to handle signup webhook"


# --- a scripted loopback receiver -----------------------------------------------------------

class Answer:
    """One scripted reply: status and body (bytes, str, or JSON-able), optionally held back until
    the receiver is released (`hang`), sent chunked, or `raw` bytes instead of any HTTP at all."""

    def __init__(self, status=200, body=b"", hang=False, chunked=False, raw=None, trickle=0):
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        self.status, self.body = status, body.encode() if isinstance(body, str) else body
        self.hang, self.chunked, self.raw, self.trickle = hang, chunked, raw, trickle

    def send(self, handler, release):
        if self.hang:
            release.wait(HANG)
        try:
            if self.trickle:  # the headers of a 200, one line every 0.4 s
                handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for i in range(self.trickle):
                    release.wait(0.4)
                    handler.wfile.write(b"X-Slow-%d: x\r\n" % i)
                handler.wfile.write(b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if self.raw is not None:
                handler.wfile.write(self.raw)
                return
            handler.send_response(self.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Connection", "close")
            if self.chunked:
                handler.send_header("Transfer-Encoding", "chunked")
            elif self.status != 204:
                handler.send_header("Content-Length", str(len(self.body)))
            handler.end_headers()
            if self.chunked:
                if self.body:
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(self.body), self.body))
                handler.wfile.write(b"0\r\n\r\n")
            elif self.status != 204:
                handler.wfile.write(self.body)
        except OSError:  # the client gave up (timeout) before the answer came
            pass
        finally:
            handler.close_connection = True


class Receiver:
    """A real ThreadingHTTPServer on 127.0.0.1 that records every request (method, path,
    lower-cased headers, raw body) and answers from a queue; 200 with no body when it is empty."""

    Request = collections.namedtuple("Request", "method path headers body")

    def __init__(self):
        self.requests, self.queue = [], collections.deque()
        self.lock, self.release = threading.Lock(), threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append(Receiver.Request(
                        self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    answer = receiver.queue.popleft() if receiver.queue else Answer()
                answer.send(self, receiver.release)

            do_GET = do_PUT = do_DELETE = do_POST

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def script(self, *answers):
        """Queue replies: an int is a bare status, a dict a 200 with that JSON body."""
        with self.lock:
            for a in answers:
                self.queue.append(Answer(a) if isinstance(a, int) else Answer(body=a) if isinstance(a, dict) else a)

    def take(self):
        """The requests received so far (and forget them)."""
        with self.lock:
            taken, self.requests[:] = list(self.requests), []
            return taken

    def count(self):
        with self.lock:
            return len(self.requests)

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    rcv = Receiver()
    yield rcv
    rcv.close()


def hook_server(make_server, engine, url, **settings):
    """A server delivering every event to `url`, signed with SECRET, loopback allowed."""
    env = {"GOTRUE_WEBHOOK_URL": url, "GOTRUE_WEBHOOK_SECRET": SECRET, "GOTRUE_WEBHOOK_EVENTS": ALL_EVENTS,
           "GOTRUE_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "GOTRUE_OPERATOR_TOKEN": OPERATOR}
    env.update(settings)
    return make_server(engine, **env)


def event_of(req):
    return json.loads(req.body)["event"]


def events(reqs):
    return [event_of(r) for r in reqs]


def check_delivery(req, event, secret=SECRET):
    """Upstream's request format (§6.3); returns the payload's user."""
    assert (req.method, req.path) == ("POST", "/hook")
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-netlify-event"] == "identity_" + event
    claims = jwt.decode(req.headers["x-webhook-signature"], secret, algorithms=["HS256"],
                        options={"require": ["iat"]}, leeway=60)
    assert set(claims) == {"iss", "sub", "iat", "sha256"}  # no exp
    assert claims["iss"] == "gotrue" and claims["sub"] == NIL_UUID
    assert abs(claims["iat"] - time.time()) < 300
    assert claims["sha256"] == hashlib.sha256(req.body).hexdigest()
    assert jwt.get_unverified_header(req.headers["x-webhook-signature"])["alg"] == "HS256"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(req.headers["x-webhook-signature"], "wrong-" + secret, algorithms=["HS256"])
    payload = json.loads(req.body)
    assert list(payload) == ["event", "instance_id", "user"]
    assert payload["event"] == event and payload["instance_id"] == NIL_UUID
    return payload["user"]


def access_claims(srv, token):
    return jwt.decode(token, srv.env["GOTRUE_JWT_SECRET"], algorithms=["HS256"], options={"verify_aud": False})


def admin(srv, method, path, **kw):
    return srv.request(method, path, token=OPERATOR, **kw)


def refresh_tokens(srv, user_id):
    return srv.sql("SELECT * FROM {refresh_tokens} WHERE user_id = ?", user_id)


def error(r):
    return r.status_code, r.json()["code"], r.json()["msg"]


def assert_logged_without_secret(srv, *expected):
    """The failure made it into the server's log (case-insensitive), the webhook secret did not."""
    log = wait_until(lambda: all(e.lower() in srv.log().lower() for e in expected) and srv.log(),
                     f"log lines {expected}")
    assert SECRET not in log


# --- events, payloads, headers, signatures --------------------------------------------------

def test_user_lifecycle_events_payloads_and_signatures(make_server, engine, receiver):
    srv = hook_server(make_server, engine, receiver.url)
    email = unique_email()

    user = srv.signup(email, data={"a": 1})
    (req,) = receiver.take()
    hooked = check_delivery(req, "validate")
    assert list(hooked) == USER_KEYS_NEW  # a fresh user: not yet confirmed, no mail sent yet
    assert hooked["id"] == user["id"] and hooked["email"] == email
    assert (hooked["aud"], hooked["role"]) == ("", "")
    assert hooked["app_metadata"] == {"provider": "email"} and hooked["user_metadata"] == {"a": 1}

    # re-submitting an unconfirmed signup creates nobody: no validate (§4.1 step 7)
    srv.signup(email, data={"a": 1})
    assert receiver.take() == []

    token = srv.user_row(email)["confirmation_token"]
    r = srv.post("/verify", json={"type": "signup", "token": token})
    assert r.status_code == 200, r.text
    (req,) = receiver.take()
    hooked = check_delivery(req, "signup")
    assert hooked["id"] == user["id"] and "confirmed_at" not in hooked  # fired just before confirming

    tokens = srv.login(email)
    (req,) = receiver.take()
    hooked = check_delivery(req, "login")
    assert hooked["id"] == user["id"] and "confirmed_at" in hooked

    # no webhook for: refresh grant, PUT /user, /recover, /logout, POST /admin/users
    r = srv.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200, r.text
    assert srv.put("/user", token=tokens["access_token"], json={"data": {"b": 2}}).status_code == 200
    assert srv.post("/recover", json={"email": email}).status_code == 200
    assert srv.post("/logout", token=tokens["access_token"]).status_code == 204
    r = admin(srv, "POST", "/admin/users", json={"email": unique_email("made"), "password": PW})
    assert r.status_code == 200, r.text
    assert receiver.take() == []

    r = admin(srv, "PUT", f"/admin/users/{user['id']}", json={"user_metadata": {"c": 3}})
    assert r.status_code == 200, r.text
    (req,) = receiver.take()
    hooked = check_delivery(req, "usermodified")
    assert hooked["id"] == user["id"] and hooked["user_metadata"] == {"a": 1, "b": 2, "c": 3}  # after the update

    invitee = unique_email("invitee")
    r = admin(srv, "POST", "/invite", json={"email": invitee})
    assert r.status_code == 200, r.text
    (req,) = receiver.take()
    hooked = check_delivery(req, "validate")
    assert hooked["email"] == invitee and hooked["id"] == r.json()["id"]

    r = admin(srv, "DELETE", f"/admin/users/{user['id']}")
    assert r.status_code == 200 and r.json() == {}
    (req,) = receiver.take()
    hooked = check_delivery(req, "userdeleted")
    assert hooked["id"] == user["id"] and hooked["email"] == email


def test_autoconfirm_signup_fires_validate_then_signup(make_server, engine, receiver):
    srv = hook_server(make_server, engine, receiver.url, GOTRUE_MAILER_AUTOCONFIRM="true")
    user = srv.signup(unique_email(), data={"a": 1})
    assert "confirmed_at" in user
    reqs = receiver.take()
    assert events(reqs) == ["validate", "signup"]
    assert "confirmed_at" not in check_delivery(reqs[1], "signup")
    assert check_delivery(reqs[1], "signup")["id"] == user["id"]


def test_unsigned_without_secret_and_event_filter_is_exact(make_server, engine, receiver):
    srv = hook_server(make_server, engine, receiver.url, GOTRUE_MAILER_AUTOCONFIRM="true",
                      GOTRUE_WEBHOOK_SECRET=None, GOTRUE_WEBHOOK_EVENTS="login,userdeleted")
    email = unique_email()
    user = srv.signup(email)
    assert receiver.take() == []  # neither validate nor signup
    srv.login(email)
    (req,) = receiver.take()
    assert event_of(req) == "login" and req.headers["x-netlify-event"] == "identity_login"
    assert "x-webhook-signature" not in req.headers
    assert admin(srv, "PUT", f"/admin/users/{user['id']}", json={"role": "x"}).status_code == 200
    assert receiver.take() == []
    assert admin(srv, "DELETE", f"/admin/users/{user['id']}").status_code == 200
    assert events(receiver.take()) == ["userdeleted"]


def test_no_events_configured_sends_nothing(make_server, engine, receiver):
    srv = hook_server(make_server, engine, receiver.url, GOTRUE_MAILER_AUTOCONFIRM="true",
                      GOTRUE_WEBHOOK_EVENTS=None)
    email = unique_email()
    srv.signup(email)
    srv.login(email)
    assert receiver.take() == []


# --- vetoes: the action fails and leaves nothing behind -------------------------------------

def veto_signup_validate(srv, receiver):
    email = unique_email()
    receiver.script(400, 400)
    r = srv.post("/signup", json={"email": email, "password": PW})
    assert events(receiver.take()) == ["validate", "validate"]
    assert srv.user_row(email) is None
    return r


def veto_signup_autoconfirm(srv, receiver):
    email = unique_email()
    receiver.script(200, 400, 400)  # validate passes, signup is refused
    r = srv.post("/signup", json={"email": email, "password": PW})
    assert events(receiver.take()) == ["validate", "signup", "signup"]
    assert srv.user_row(email) is None
    assert srv.sql("SELECT * FROM {audit_log_entries}") == []  # user_signedup rolled back too
    return r


def veto_verify(kind, srv, receiver):
    """A refused `signup` event while verifying either token of an unconfirmed user."""
    email = unique_email()
    srv.signup(email)  # unconfirmed: verifying a signup or a recovery token confirms it
    if kind == "recovery":
        assert srv.post("/recover", json={"email": email}).status_code == 200
    column = {"signup": "confirmation_token", "recovery": "recovery_token"}[kind]
    token = wait_until(lambda: srv.user_row(email)[column], "the token (/recover stores it after answering)")
    receiver.take()
    receiver.script(400, 400)
    r = srv.post("/verify", json={"type": kind, "token": token})
    assert events(receiver.take()) == ["signup", "signup"]
    row = srv.user_row(email)
    assert row["confirmed_at"] is None and row[column] == token
    assert refresh_tokens(srv, row["id"]) == []
    # still usable once the receiver agrees
    assert srv.post("/verify", json={"type": kind, "token": token}).status_code == 200
    return r


def veto_login(srv, receiver):
    email = unique_email()
    user = srv.confirmed_user(email)
    receiver.take()
    audits = len(srv.sql("SELECT * FROM {audit_log_entries}"))
    issued = len(refresh_tokens(srv, user["id"]))  # by the verification
    receiver.script(400, 400)
    r = srv.post("/token", data={"grant_type": "password", "username": email, "password": PW})
    assert events(receiver.take()) == ["login", "login"]
    assert len(refresh_tokens(srv, user["id"])) == issued
    assert len(srv.sql("SELECT * FROM {audit_log_entries}")) == audits  # no `login` entry
    assert srv.user_row(email)["last_sign_in_at"] is None
    srv.login(email)  # fine once the receiver agrees
    return r


def veto_invite(srv, receiver):
    email = unique_email("invitee")
    receiver.script(400, 400)
    r = admin(srv, "POST", "/invite", json={"email": email})
    assert events(receiver.take()) == ["validate", "validate"]
    assert srv.user_row(email) is None
    return r


VETOES = [
    pytest.param(veto_signup_validate, {}, (422, FAILED), id="signup-validate"),
    pytest.param(veto_signup_autoconfirm, {"GOTRUE_MAILER_AUTOCONFIRM": "true"}, (422, FAILED),
                 id="signup-autoconfirm"),
    pytest.param(functools.partial(veto_verify, "signup"), {}, (422, FAILED), id="verify-signup"),
    pytest.param(veto_login, {}, (422, FAILED), id="login"),
    pytest.param(veto_invite, {}, (422, FAILED), id="invite-validate"),
    pytest.param(functools.partial(veto_verify, "recovery"), {}, (500, "Database error updating user"), id="verify-recovery"),
]


@pytest.mark.parametrize("action, settings, expected", VETOES)
def test_veto_aborts_action_without_leftovers(make_server, engine, receiver, action, settings, expected):
    """A non-2xx answer (after all retries) fails the request and rolls everything back."""
    srv = hook_server(make_server, engine, receiver.url, GOTRUE_WEBHOOK_RETRIES="2", **settings)
    r = action(srv, receiver)  # checks that both attempts were made and nothing was left behind
    status, msg = expected
    assert error(r) == (status, status, msg), r.text


# --- metadata from the hook's reply -----------------------------------------------------------

def test_reply_metadata_replaces_and_reaches_the_jwt(make_server, engine, receiver):
    srv = hook_server(make_server, engine, receiver.url, GOTRUE_MAILER_AUTOCONFIRM="true")
    email = unique_email()
    receiver.script(Answer(body={"app_metadata": {"roles": ["member"]}, "user_metadata": {"by": "validate"}},
                           chunked=True),
                    {"user_metadata": {"by": "signup"}, "ignored": True})
    user = srv.post("/signup", json={"email": email, "password": PW, "data": {"a": 1}}).json()
    # replaced, not merged: `provider` and the signup data are gone
    assert user["app_metadata"] == {"roles": ["member"]} and user["user_metadata"] == {"by": "signup"}
    assert events(receiver.take()) == ["validate", "signup"]

    receiver.script({"app_metadata": {"roles": ["editor"]}})
    tokens = srv.login(email)
    claims = access_claims(srv, tokens["access_token"])
    assert claims["app_metadata"] == {"roles": ["editor"]} and claims["user_metadata"] == {"by": "signup"}
    me = srv.get("/user", token=tokens["access_token"]).json()
    assert me["app_metadata"] == {"roles": ["editor"]} and me["user_metadata"] == {"by": "signup"}

    # 204, an empty 200, `{}` and nulls change nothing
    for answer in (204, Answer(200, chunked=True), {}, {"app_metadata": None, "user_metadata": None}):
        receiver.script(answer)
        claims = access_claims(srv, srv.login(email)["access_token"])
        assert (claims["app_metadata"], claims["user_metadata"]) == ({"roles": ["editor"]}, {"by": "signup"})
    assert events(receiver.take()) == ["login"] * 5

    # persisted: the refresh grant (no hook) signs the stored metadata
    r = srv.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert access_claims(srv, r.json()["access_token"])["app_metadata"] == {"roles": ["editor"]}
    assert receiver.take() == []

    # usermodified: the reply is applied after the admin's update and shows in its response
    receiver.script({"app_metadata": {"roles": ["from-hook"]}})
    r = admin(srv, "PUT", f"/admin/users/{user['id']}", json={"user_metadata": {"x": 1}})
    assert r.status_code == 200, r.text
    assert r.json()["app_metadata"] == {"roles": ["from-hook"]}
    assert r.json()["user_metadata"] == {"by": "signup", "x": 1}
    claims = access_claims(srv, srv.login(email)["access_token"])
    assert claims["app_metadata"] == {"roles": ["from-hook"]}

    # userdeleted: the reply is ignored, even garbage (not even an error is logged)
    receiver.script(Answer(200, b"not json at all"))
    assert admin(srv, "DELETE", f"/admin/users/{user['id']}").status_code == 200
    assert srv.user_row(email) is None
    assert events(receiver.take()) == ["usermodified", "login", "userdeleted"]
    assert "malformed" not in srv.log().lower()


def test_after_the_fact_events_only_log_failures(make_server, engine, receiver):
    srv = hook_server(make_server, engine, receiver.url, GOTRUE_WEBHOOK_RETRIES="1")
    user = srv.signup(unique_email())
    receiver.script(500)
    r = admin(srv, "PUT", f"/admin/users/{user['id']}", json={"user_metadata": {"kept": True}})
    assert r.status_code == 200 and r.json()["user_metadata"] == {"kept": True}
    assert json.loads(srv.user_row(user["email"])["raw_user_meta_data"]) == {"kept": True}
    receiver.script(500)
    r = admin(srv, "DELETE", f"/admin/users/{user['id']}")
    assert r.status_code == 200 and r.json() == {}
    assert srv.user_row(user["email"]) is None
    assert events(receiver.take()) == ["validate", "usermodified", "userdeleted"]
    assert_logged_without_secret(srv, "usermodified", "userdeleted")


# --- retries, timeouts, broken and unreachable receivers ------------------------------------

def test_non_success_statuses_are_retried(make_server, engine, receiver):
    srv = hook_server(make_server, engine, receiver.url, GOTRUE_WEBHOOK_RETRIES="3")
    # 201 is not a success for upstream; 200, 202 and 204 are
    receiver.script(500, 201, 204)
    email = unique_email()
    assert srv.post("/signup", json={"email": email, "password": PW}).status_code == 200
    assert events(receiver.take()) == ["validate"] * 3
    receiver.script(202)
    assert srv.post("/signup", json={"email": unique_email(), "password": PW}).status_code == 200
    assert len(receiver.take()) == 1
    receiver.script(400, 401, 503)
    email = unique_email()
    r = srv.post("/signup", json={"email": email, "password": PW})
    assert error(r) == (422, 422, FAILED)
    assert len(receiver.take()) == 3 and srv.user_row(email) is None
    assert_logged_without_secret(srv, "webhook", "503")


def test_negative_retries_means_no_attempt(make_server, engine, receiver):
    srv = hook_server(make_server, engine, receiver.url, GOTRUE_WEBHOOK_RETRIES="-1")
    email = unique_email()
    r = srv.post("/signup", json={"email": email, "password": PW})
    assert error(r) == (422, 422, FAILED)
    assert receiver.count() == 0 and srv.user_row(email) is None


@pytest.mark.parametrize("spelling", ["GOTRUE_WEBHOOK_TIMEOUT_SEC", "GOTRUE_WEBHOOK_TIMEOUTSEC"])
def test_timeouts_are_retried_then_504(make_server, engine, receiver, spelling):
    srv = hook_server(make_server, engine, receiver.url, GOTRUE_WEBHOOK_RETRIES="2", **{spelling: "1"})
    email = unique_email()
    receiver.script(Answer(hang=True), Answer(hang=True))
    r = srv.post("/signup", json={"email": email, "password": PW})
    assert error(r) == (504, 504, "Failed to perform webhook in time frame (1 seconds)")
    assert srv.user_row(email) is None
    wait_until(lambda: receiver.count() >= 2, "both attempts")
    assert events(receiver.take()) == ["validate", "validate"]
    # a timeout followed by an answer in time succeeds
    receiver.script(Answer(hang=True), {"user_metadata": {"second": "try"}})
    r = srv.post("/signup", json={"email": email, "password": PW})
    assert r.status_code == 200 and r.json()["user_metadata"] == {"second": "try"}
    assert len(receiver.take()) == 2
    assert_logged_without_secret(srv, "webhook")


def test_timeout_bounds_the_whole_attempt(make_server, engine, receiver):
    srv = hook_server(make_server, engine, receiver.url, GOTRUE_WEBHOOK_RETRIES="1", GOTRUE_WEBHOOK_TIMEOUT_SEC="1")
    email = unique_email()
    receiver.script(Answer(trickle=6))  # every gap is shorter than the timeout, the whole answer is not
    r = srv.post("/signup", json={"email": email, "password": PW})
    assert receiver.count() == 1
    assert srv.user_row(email) is None
    assert error(r) == (504, 504, "Failed to perform webhook in time frame (1 seconds)"), r.text


def test_receiver_down_is_502_without_retry(make_server, engine):
    url = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens there
    srv = hook_server(make_server, engine, url, GOTRUE_MAILER_AUTOCONFIRM="true", GOTRUE_WEBHOOK_RETRIES="3")
    email = unique_email()
    r = srv.post("/signup", json={"email": email, "password": PW})
    assert error(r) == (502, 502, f"Failed to connect to {url}")
    assert srv.user_row(email) is None
    assert_logged_without_secret(srv, url)


GARBAGE = [
    pytest.param(Answer(200, b"<html>oops</html>"), 500, "Webhook returned malformed JSON: ", id="not-json"),
    pytest.param(Answer(raw=b"garbage, not HTTP\r\n\r\n"), 500, "Failed to trigger webhook to {url}", id="not-http"),
    pytest.param(Answer(raw=b""), 500, "Failed to trigger webhook to {url}", id="hangs-up"),
    pytest.param(Answer(200, b"[1, 2]"), 500, "Webhook returned malformed JSON: ", id="json-array"),
    pytest.param(Answer(200, b'{"app_metadata": "admin"}'), 500, "Webhook returned malformed JSON: ",
                 id="metadata-not-object"),
]


@pytest.mark.parametrize("answer, status, msg", GARBAGE)
def test_garbage_from_receiver_fails_the_signup(make_server, engine, receiver, answer, status, msg):
    srv = hook_server(make_server, engine, receiver.url, GOTRUE_WEBHOOK_RETRIES="3")
    email = unique_email()
    receiver.script(answer)
    r = srv.post("/signup", json={"email": email, "password": PW})
    assert srv.user_row(email) is None
    assert receiver.count() == 1  # no retry after a broken exchange
    assert_logged_without_secret(srv, "webhook")
    assert r.status_code == status and r.json()["code"] == status, r.text
    assert r.json()["msg"].startswith(msg.format(url=receiver.url)), r.text


# --- the private-network guard ----------------------------------------------------------------

@pytest.mark.parametrize("host, allow", [("127.0.0.1", None), ("localhost", "false"),
                                         ("[::ffff:127.0.0.1]", None), ("0.0.0.0", None)])
def test_private_addresses_refused_unless_allowed(make_server, engine, receiver, host, allow):
    url = f"http://{host}:{receiver.port}/hook"
    srv = hook_server(make_server, engine, url, GOTRUE_MAILER_AUTOCONFIRM="true",
                      GOTRUE_WEBHOOK_ALLOW_PRIVATE_NETWORKS=allow)
    email = unique_email()
    r = srv.post("/signup", json={"email": email, "password": PW})
    assert error(r) == (502, 502, f"Failed to connect to {url}")
    assert receiver.count() == 0
    assert srv.user_row(email) is None
    assert_logged_without_secret(srv, url)


def test_redirects_leave_http_only_and_credentials_stay_out_of_errors(make_server, engine, receiver):
    """A receiver that redirects to ftp:// (which urllib would follow) gets no FTP connection:
    the redirect is a failed attempt. Credentials in WEBHOOK_URL never reach the client."""
    with socket.create_server(("127.0.0.1", 0)) as ftp:
        ftp.settimeout(0.5)
        target = f"ftp://127.0.0.1:{ftp.getsockname()[1]}/"
        srv = hook_server(make_server, engine, receiver.url.replace("http://", "http://user:pw@"),
                          GOTRUE_WEBHOOK_RETRIES="1")
        receiver.script(Answer(302, b"", raw=f"HTTP/1.1 302 Found\r\nLocation: {target}\r\n"
                                           "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()))
        r = srv.post("/signup", json={"email": unique_email(), "password": PW})
        assert error(r) == (422, 422, FAILED)
        with pytest.raises(socket.timeout):
            ftp.accept()
    down = f"http://user:secret-pw@127.0.0.1:{free_port()}/hook?token=abc"
    srv = hook_server(make_server, engine, down)
    r = srv.post("/signup", json={"email": unique_email(), "password": PW})
    assert error(r) == (502, 502, f"Failed to connect to http://127.0.0.1:{down.split(':')[3].split('/')[0]}/hook")
    assert "secret-pw" not in r.text and "token=abc" not in r.text
