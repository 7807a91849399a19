"""Datadog tracing (GOTRUE_TRACING_*, through the optional ddtrace package): what a real
gotrue.py sends to a loopback fake Datadog agent.

The fake agent is a threaded HTTP server on 127.0.0.1 that answers ddtrace's `GET /info`,
takes the msgpack trace payloads of `PUT /v0.4/traces` and `PUT /v0.5/traces` (both formats
are decoded into the same span dicts), and records every request it gets. The tests check:
one `http.request` span per request (service, resource "METHOD /route/pattern", type web,
method/status/route/request-id tags, GOTRUE_TRACING_TAGS, error=1 on a 5xx), child spans in the
same trace under it (`db.query` per SQL statement, `smtp.send` per mail, `webhook.post` per
attempt, `provider.call` per OAuth provider call), nothing at all with tracing off, and a
refusal to start when tracing is on and ddtrace cannot be imported."""

import collections
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import uuid

import pytest
import requests

from conftest import DEADLINE, ROOT, base_env, free_port, link_token, migrate, unique_email, wait_until
from oauth_fakes import GitHubFake

msgpack = pytest.importorskip("msgpack")  # the test's decoder (tests/requirements.txt)

try:  # the server's tracer (requirements-tracing.txt); only the refusal test runs without it
    import ddtrace  # noqa: F401
    NO_DDTRACE = None
except ImportError as e:
    NO_DDTRACE = f"ddtrace is not installed (pip install -r requirements-tracing.txt): {e}"


@pytest.fixture(autouse=True)
def needs_ddtrace(request):
    if NO_DDTRACE and not getattr(request.function, "no_ddtrace_needed", False):
        if os.environ.get("CI"):  # CI installs it: a skip there would hide every tracing test
            pytest.fail(NO_DDTRACE)
        pytest.skip(NO_DDTRACE)

SQLITE = pytest.mark.parametrize("engine", ["sqlite"])
SERVICE = "gotrue-traced"
TAGS = "env:ci,team:auth"
RID = "X-Request-ID"
# keep ddtrace to its traces: no telemetry, no remote configuration polling of the fake agent
QUIET = {"DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false", "DD_REMOTE_CONFIGURATION_ENABLED": "false"}
SQL_VERB = re.compile(r"^[A-Z]+$")


# --- a fake Datadog agent ---------------------------------------------------------------------

def span_v04(raw):
    """One span of a v0.4 payload (a map) as the test's span dict."""
    return {"name": raw.get("name"), "service": raw.get("service"), "resource": raw.get("resource"),
            "type": raw.get("type") or "", "trace_id": raw.get("trace_id"), "span_id": raw.get("span_id"),
            "parent_id": raw.get("parent_id") or 0, "error": raw.get("error") or 0,
            "meta": dict(raw.get("meta") or {}), "metrics": dict(raw.get("metrics") or {}), "api": "v0.4"}


def span_v05(strings, raw):
    """One span of a v0.5 payload: an array of 12, strings as indexes into the payload's table."""
    (service, name, resource, trace_id, span_id, parent_id, _start, _duration, error, meta, metrics,
     kind) = raw
    s = strings.__getitem__
    return {"name": s(name), "service": s(service), "resource": s(resource), "type": s(kind),
            "trace_id": trace_id, "span_id": span_id, "parent_id": parent_id or 0, "error": error or 0,
            "meta": {s(k): s(v) for k, v in meta.items()}, "metrics": {s(k): v for k, v in metrics.items()},
            "api": "v0.5"}


class FakeAgent:
    """A threaded HTTP server playing the Datadog agent; records every request and every span."""

    Request = collections.namedtuple("Request", "method path headers")

    def __init__(self):
        self.requests, self.spans, self.problems = [], [], []
        self.lock = threading.Lock()
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def body(self):
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def answer(self, status, doc):
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_any(self):
                body = self.body()
                path = self.path.split("?")[0]
                with agent.lock:
                    agent.requests.append(FakeAgent.Request(self.command, path,
                                                            {k.lower(): v for k, v in self.headers.items()}))
                if self.command == "GET" and path == "/info":
                    return self.answer(200, {"version": "7.99.0", "endpoints": ["/v0.4/traces", "/v0.5/traces"],
                                             "client_drop_p0s": False})
                if self.command in ("PUT", "POST") and path in ("/v0.4/traces", "/v0.5/traces"):
                    agent.record(path, self.headers, body)
                    return self.answer(200, {})
                return self.answer(404, {})

            do_GET = do_PUT = do_POST = do_DELETE = handle_any

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def record(self, path, headers, body):
        try:
            assert "msgpack" in headers.get("Content-Type", ""), headers.get("Content-Type")
            payload = msgpack.unpackb(body, raw=False, strict_map_key=False)
            if path == "/v0.4/traces":
                traces = [[span_v04(s) for s in trace] for trace in payload]
            else:
                strings, raw_traces = payload
                traces = [[span_v05(strings, s) for s in trace] for trace in raw_traces]
            count = headers.get("X-Datadog-Trace-Count")
            assert count is None or int(count) == len(traces), (count, len(traces))
        except Exception as e:  # a payload the agent could not read: the test fails on it
            with self.lock:
                self.problems.append(f"{path}: {e!r}")
            return
        with self.lock:
            self.spans.extend(s for trace in traces for s in trace)

    def snapshot(self):
        with self.lock:
            assert not self.problems, self.problems
            return list(self.spans)

    def request_count(self):
        with self.lock:
            return len(self.requests)

    def request_span(self, request_id):
        """The one http.request span of the request sent with that X-Request-ID (waits for it)."""
        def found():
            spans = [s for s in self.snapshot() if s["name"] == "http.request"
                     and s["meta"].get("request_id") == request_id]
            assert len(spans) <= 1, f"{len(spans)} request spans for {request_id}: {spans}"
            return spans[0] if spans else None
        return wait_until(found, f"the http.request span of request {request_id}")

    def children(self, parent, name=None):
        return [s for s in self.snapshot() if s["trace_id"] == parent["trace_id"]
                and s["parent_id"] == parent["span_id"] and (name is None or s["name"] == name)]

    def wait_children(self, parent, name, count=1):
        return wait_until(lambda: len(self.children(parent, name)) >= count and self.children(parent, name),
                          f"{count} {name} span(s) under {parent['resource']}")

    def trace(self, span):
        return [s for s in self.snapshot() if s["trace_id"] == span["trace_id"]]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class GarbageReceiver:
    """A webhook receiver that answers every POST with 200 and a body that is not JSON."""

    def __init__(self):
        self.count = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.count += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "17")
                self.end_headers()
                self.wfile.write(b"<html>oops</html>")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def agent():
    a = FakeAgent()
    yield a
    a.close()


def tracing_env(agent, service=SERVICE, enabled="true", **settings):
    env = {"GOTRUE_TRACING_ENABLED": enabled, "GOTRUE_TRACING_HOST": "127.0.0.1",
           "GOTRUE_TRACING_PORT": str(agent.port), "GOTRUE_TRACING_SERVICE_NAME": service,
           "GOTRUE_TRACING_TAGS": TAGS, "REQUEST_ID_HEADER": RID, **QUIET}
    env.update(settings)
    return env


def rid(tag):
    return f"{tag}-{uuid.uuid4().hex[:12]}"


def check_request_span(span, method, route, status, request_id, service=SERVICE):
    assert span["name"] == "http.request", span
    assert span["service"] == service, span
    assert span["resource"] == f"{method} {route}", span
    assert span["type"] == "web", span
    assert span["parent_id"] == 0, f"a request span is the root of its trace: {span}"
    meta = span["meta"]
    assert meta.get("http.method") == method, span
    assert meta.get("http.status_code") == str(status), span
    assert meta.get("http.route") == route, span
    assert meta.get("request_id") == request_id, span
    assert meta.get("env") == "ci" and meta.get("team") == "auth", f"GOTRUE_TRACING_TAGS missing: {span}"
    assert span["error"] == (1 if status >= 500 else 0), span


def check_db_spans(spans, driver):
    assert spans
    for s in spans:
        assert s["name"] == "db.query" and SQL_VERB.match(s["resource"]), s
        assert s["meta"].get("db.system") == driver, s
    return {s["resource"] for s in spans}


def flow(srv, mailbox, tag):
    """signup -> the confirmation mail -> verify -> password login -> GET /user, each request
    with its own X-Request-ID; returns ({step: request id}, the user, [what no span may show])."""
    email, ids = unique_email(tag), {}

    def call(step, method, path, **kw):
        ids[step] = rid(f"{tag}-{step}")
        r = srv.request(method, path, headers={RID: ids[step]}, **kw)
        assert r.status_code == 200, f"{step}: {r.status_code} {r.text}"
        return r

    user = call("signup", "POST", "/signup", json={"email": email, "password": "secret-pw"}).json()
    token = link_token(mailbox.wait_for(email), "confirmation")
    call("verify", "POST", "/verify", json={"type": "signup", "token": token})
    tokens = call("login", "POST", "/token",
                  data={"grant_type": "password", "username": email, "password": "secret-pw"}).json()
    me = call("user", "GET", "/user", token=tokens["access_token"]).json()
    assert me["id"] == user["id"]
    secrets = [email, "secret-pw", token, tokens["access_token"], tokens["refresh_token"],
               srv.env["GOTRUE_JWT_SECRET"]]
    return ids, user, secrets


# --- tracing on -------------------------------------------------------------------------------

def test_request_spans_with_db_and_mail_children(make_server, engine, mailbox, agent):
    srv = make_server(engine, **tracing_env(agent))
    driver = "sqlite" if engine == "sqlite" else "mysql"
    ids, user, secrets = flow(srv, mailbox, "traced")

    admin = srv.admin_token()
    ids["admin"] = rid("admin-get")
    r = srv.get(f"/admin/users/{user['id']}", token=admin, headers={RID: ids["admin"]})
    assert r.status_code == 200, r.text
    ids["missing"] = rid("missing")
    r = srv.post("/verify", json={"type": "signup", "token": "no-such-token"}, headers={RID: ids["missing"]})
    assert 400 <= r.status_code < 500, r.text
    missing_status = r.status_code

    expected = {"signup": ("POST", "/signup", 200), "verify": ("POST", "/verify", 200),
                "login": ("POST", "/token", 200), "user": ("GET", "/user", 200),
                "admin": ("GET", "/admin/users/<user_id>", 200),
                "missing": ("POST", "/verify", missing_status)}
    spans = {}
    for step, (method, route, status) in expected.items():
        spans[step] = agent.request_span(ids[step])
        check_request_span(spans[step], method, route, status, ids[step])
    assert len({s["trace_id"] for s in spans.values()}) == len(spans), "each request is its own trace"

    # every statement is a db.query child of its request's span, in that request's trace
    verbs = {}
    for step, span in spans.items():
        verbs[step] = check_db_spans(agent.wait_children(span, "db.query"), driver)
        for s in agent.trace(span):
            assert s["service"] == SERVICE, s
            assert s is span or s["parent_id"] != 0, f"a second root in the trace of {step}: {s}"
    assert "INSERT" in verbs["signup"], verbs
    assert "UPDATE" in verbs["verify"], verbs
    assert "COMMIT" in verbs["signup"] and "COMMIT" in verbs["verify"], verbs  # the end of a transaction too
    assert "SELECT" in verbs["user"] and "SELECT" in verbs["admin"], verbs

    # the confirmation mail of the signup
    (mail,) = agent.wait_children(spans["signup"], "smtp.send")
    assert mail["meta"].get("mail.kind") == "confirmation", mail
    assert mail["service"] == SERVICE and mail["error"] == 0, mail
    for step in ("verify", "login", "user", "admin", "missing"):
        assert not agent.children(spans[step], "smtp.send"), step

    # no address, password, token or key in any span sent to Datadog
    sent = json.dumps(agent.snapshot())
    assert not [s for s in secrets if s in sent]


@SQLITE
@pytest.mark.parametrize("workers", ["1", "2"])
def test_spans_of_the_last_requests_are_sent_before_the_server_stops(make_server, engine, agent, workers):
    """A graceful stop (SIGTERM) flushes what the tracer still holds: once the process is gone,
    the agent already has the span of the last request (pre-forked workers too)."""
    srv = make_server(engine, smtp=False, GOTRUE_API_WORKERS=workers, **tracing_env(agent))
    last = [rid("last") for _ in range(4)]
    for request_id in last:
        assert srv.get("/settings", headers={RID: request_id}).status_code == 200
    srv.stop()
    assert srv.proc.returncode == 0, srv.log()
    sent = {s["meta"].get("request_id") for s in agent.snapshot()}
    assert not [request_id for request_id in last if request_id not in sent], "spans lost at the stop"


@SQLITE
def test_unreachable_agent_does_not_disturb_requests(make_server, engine, mailbox):
    """The tracer's complaints (it cannot send) are log lines in the server's format, like
    every other line, not ddtrace's own plain text."""
    class Nobody:  # a port where no agent listens
        port = free_port()
    srv = make_server(engine, **tracing_env(Nobody))
    flow(srv, mailbox, "no-agent")
    srv.stop()
    assert srv.proc.returncode == 0, srv.log()
    output = srv.log()
    complaints = [line for line in output.splitlines() if "traces" in line]
    assert complaints, f"the tracer said nothing about the unreachable agent:\n{output}"
    assert all(line.startswith("time=") and " level=" in line for line in complaints), complaints


@SQLITE
def test_requests_answered_before_the_routes_are_spans_too(make_server, engine, agent):
    """A CORS preflight, a body over the limit, /health and a 404 each become a request span;
    the schema check at start is no span of its own (no root span but requests')."""
    srv = make_server(engine, smtp=False, **tracing_env(agent))
    cases = {"preflight": ("OPTIONS", "/token", {"Origin": "https://site.example",
                                                 "Access-Control-Request-Method": "POST"}, None, 204),
             "too-large": ("POST", "/signup", {"Content-Type": "application/json"}, b"x" * (1024 * 1024 + 1), 413),
             "health": ("GET", "/health", {}, None, 200),
             "missing": ("GET", "/no-such-route", {}, None, 404)}
    for tag, (method, path, headers, body, status) in cases.items():
        request_id = rid(tag)
        r = srv.request(method, path, headers={RID: request_id, **headers}, data=body)
        assert r.status_code == status, (tag, r.status_code, r.text)
        span = agent.request_span(request_id)
        if tag == "health":
            check_request_span(span, method, "/health", status, request_id)
            continue
        assert span["resource"] == f"{method} {status}" and span["parent_id"] == 0, (tag, span)  # no route answered
        assert span["meta"].get("http.status_code") == str(status) and span["meta"].get("team") == "auth", span
    roots = [s for s in agent.snapshot() if s["parent_id"] == 0]
    assert all(s["name"] == "http.request" for s in roots), [s for s in roots if s["name"] != "http.request"]


@SQLITE
def test_server_error_is_an_error_span_with_its_webhook_attempt(make_server, engine, agent):
    """A webhook receiver that answers garbage makes the signup a 500: its request span has
    error=1, and the webhook attempt is a webhook.post child. (Payloads forced to v0.4 here; the
    other tests take ddtrace's default, v0.5.)"""
    receiver = GarbageReceiver()
    try:
        srv = make_server(engine, smtp=False, **tracing_env(
            agent, GOTRUE_WEBHOOK_URL=receiver.url, GOTRUE_WEBHOOK_EVENTS="validate",
            GOTRUE_WEBHOOK_SECRET="hook-secret-for-tracing-tests", GOTRUE_WEBHOOK_ALLOW_PRIVATE_NETWORKS="true",
            GOTRUE_WEBHOOK_RETRIES="1", GOTRUE_MAILER_AUTOCONFIRM="true", DD_TRACE_API_VERSION="v0.4"))
        broken = rid("broken")
        r = srv.post("/signup", json={"email": unique_email(), "password": "secret-pw"}, headers={RID: broken})
        assert receiver.count == 1
    finally:
        receiver.close()
    assert r.status_code == 500, r.text
    status = r.status_code

    span = agent.request_span(broken)
    check_request_span(span, "POST", "/signup", status, broken)
    (hook,) = agent.wait_children(span, "webhook.post")
    assert hook["meta"].get("webhook.event") == "validate", hook
    assert hook["api"] == "v0.4"

    ok = rid("fine")  # the server still serves, and a 4xx is no error
    r = srv.post("/signup", json={"email": "not-an-email", "password": "secret-pw"}, headers={RID: ok})
    assert 400 <= r.status_code < 500, r.text
    check_request_span(agent.request_span(ok), "POST", "/signup", r.status_code, ok)


@SQLITE
def test_provider_calls_are_children_of_the_callback(make_server, engine, agent):
    fake = GitHubFake()
    try:
        srv_port = free_port()
        callback = f"http://127.0.0.1:{srv_port}/callback"
        fake.redirect_uri = callback
        srv = make_server(engine, smtp=False, PORT=str(srv_port), **tracing_env(
            agent, GOTRUE_EXTERNAL_GITHUB_ENABLED="true", GOTRUE_EXTERNAL_GITHUB_CLIENT_ID=fake.client_id,
            GOTRUE_EXTERNAL_GITHUB_SECRET=fake.secret, GOTRUE_EXTERNAL_GITHUB_REDIRECT_URI=callback,
            GOTRUE_EXTERNAL_GITHUB_URL=fake.url))
        browser = requests.Session()
        r = browser.get(f"{srv.url}/authorize?provider=github", allow_redirects=False, timeout=DEADLINE)
        assert r.status_code == 302, r.text
        at_provider = browser.get(r.headers["Location"], allow_redirects=False, timeout=DEADLINE)
        assert at_provider.status_code == 302, at_provider.text
        assert at_provider.headers["Location"].startswith(callback + "?")
        done = rid("callback")
        r = browser.get(at_provider.headers["Location"], allow_redirects=False, timeout=DEADLINE,
                        headers={RID: done})
        assert r.status_code == 302 and "access_token=" in r.headers["Location"], r.headers.get("Location")
        calls = len(fake.token_requests) + len(fake.profile_requests)
    finally:
        fake.close()

    span = agent.request_span(done)
    check_request_span(span, "GET", "/callback", 302, done)
    provider = agent.wait_children(span, "provider.call", calls)
    assert len(provider) == calls, provider
    for s in provider:
        assert s["resource"].startswith(fake.url), s
        assert fake.secret not in json.dumps(s), s
    check_db_spans(agent.children(span, "db.query"), "sqlite")


@SQLITE
def test_forked_workers_trace_every_request_once(make_server, engine, agent):
    srv = make_server(engine, smtp=False, GOTRUE_API_WORKERS="2", GOTRUE_MAILER_AUTOCONFIRM="true",
                      **tracing_env(agent))
    ids = []
    for _ in range(6):
        ids.append(rid("forked"))
        r = srv.post("/signup", json={"email": unique_email(), "password": "secret-pw"}, headers={RID: ids[-1]})
        assert r.status_code == 200, r.text
    for request_id in ids:  # request_span also fails on a duplicate
        span = agent.request_span(request_id)
        check_request_span(span, "POST", "/signup", 200, request_id)
        check_db_spans(agent.wait_children(span, "db.query"), "sqlite")


# --- tracing off, ddtrace missing ---------------------------------------------------------------

@SQLITE
def test_tracing_off_sends_nothing(make_server, engine, mailbox, agent):
    """A server with every other tracing setting pointing at the agent, but TRACING_ENABLED off,
    runs a whole flow and stops (a tracer would flush at exit): the agent got no request at all.
    Then a traced server on the same agent is seen (the positive control)."""
    off = make_server(engine, **tracing_env(agent, service="gotrue-untraced", enabled="false"))
    flow(off, mailbox, "untraced")
    off.stop()
    assert agent.request_count() == 0, agent.requests

    on = make_server(engine, **tracing_env(agent))
    ids, _, _ = flow(on, mailbox, "control")
    marker = rid("marker")
    assert on.get("/settings", headers={RID: marker}).status_code == 200
    check_request_span(agent.request_span(marker), "GET", "/settings", 200, marker)
    for step in ids:
        agent.request_span(ids[step])
    assert not [s for s in agent.snapshot() if s["service"] != SERVICE]
    assert not [s for s in agent.snapshot() if "untraced" in s["meta"].get("request_id", "")]


def test_missing_ddtrace_refuses_to_start(tmp_path, mailbox):
    """TRACING_ENABLED with no importable ddtrace (a package on PYTHONPATH that fails to import,
    without naming itself): exit 1, one line on stderr naming the package."""
    fake_site = tmp_path / "site"
    (fake_site / "ddtrace").mkdir(parents=True)
    (fake_site / "ddtrace" / "__init__.py").write_text('raise ImportError("simulated: not installed")\n')
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = base_env(str(workdir), {"GOTRUE_DB_DRIVER": "sqlite", "DATABASE_URL": str(workdir / "gotrue.db")},
                   mailbox.port, GOTRUE_TRACING_ENABLED="true", GOTRUE_TRACING_HOST="127.0.0.1",
                   GOTRUE_TRACING_PORT="8126", **QUIET)
    migrate(env, str(workdir))
    env["PYTHONPATH"] = str(fake_site) + os.pathsep + env.get("PYTHONPATH", "")
    check = subprocess.run([sys.executable, "-c", "import ddtrace"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "simulated" in check.stderr  # the fake shadows the real one

    result = subprocess.run([sys.executable, os.path.join(ROOT, "gotrue.py")], cwd=str(workdir), env=env,
                            capture_output=True, text=True, timeout=DEADLINE)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and "ddtrace" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


test_missing_ddtrace_refuses_to_start.no_ddtrace_needed = True  # it makes its own missing ddtrace
