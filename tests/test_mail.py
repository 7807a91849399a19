"""Mail: what every mail looks like, templates, subjects and link paths, throttling, token
lifetimes and single use across the four kinds, and SMTP transport (STARTTLS, implicit TLS,
AUTH, a server that is down or refusing) against real SMTP and HTTP servers."""

import contextlib
import email.utils
import html
import http.server
import re
import socket
import ssl
import subprocess
import threading
import types

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from conftest import Mailbox, free_port, link_token, mail_html, mail_text, unique_email, wait_until

KINDS = ("confirmation", "invite", "recovery", "email_change")
SITE = "https://site.example.com"
OPERATOR = "operator-token-for-mail-tests"
SMTP_USER, SMTP_PASS = "mailer", "smtp-S3cret-pass"
DAY = 86400
# kind: (default lifetime, error when expired, the column that starts the clock)
LIFETIMES = {"confirmation": (DAY, "Confirmation token expired", "confirmation_sent_at"),
             "invite": (7 * DAY, "Confirmation token expired", "invited_at"),
             "recovery": (DAY, "Recovery token expired", "recovery_sent_at"),
             "email_change": (DAY, "Email change token expired", "email_change_sent_at")}
SUBJECTS = {"confirmation": "Confirm Your Signup", "invite": "You have been invited",
            "recovery": "Reset Your Password", "email_change": "Confirm Email Change"}
USED_AGAIN = {"confirmation": (404, "User not found"), "invite": (404, "User not found"),
              "recovery": (404, "User not found"),
              "email_change": (401, "Email Change Token didn't match token on file")}


def check_error(r, status, msg):
    assert r.status_code == status, r.text
    assert r.json()["code"] == status and r.json()["msg"] == msg, r.text


def mails(mailbox, address):
    return len(mailbox.to(address))


def envelope_of(mailbox, msg):
    return next(env for _, m, env in mailbox.messages if m is msg)


def link(msg, kind):
    match = re.search(r'href="([^"]*#' + kind + r'_token=[\w-]+)"', mail_html(msg))
    assert match, mail_html(msg)
    return match.group(1)


def issue(server, mailbox, kind, admin):
    """A fresh user holding a `kind` token read from its mail. Returns .email (the account's
    address, whose row holds the token), .to (where the mail went), .msg, .token and
    .redeem(token): the request that uses a token of this kind."""
    t = types.SimpleNamespace(email=unique_email(kind), redeem=None)
    t.to = t.email
    if kind == "confirmation":
        server.signup(t.email)
        t.redeem = lambda token: server.post("/verify", json={"type": "signup", "token": token})
    elif kind == "invite":
        r = server.post("/invite", token=admin, json={"email": t.email})
        assert r.status_code == 200, r.text
        t.redeem = lambda token: server.post("/verify", json={"type": "signup", "token": token,
                                                               "password": "invitee-pw"})
    else:
        server.confirmed_user(t.email)
        before = mails(mailbox, t.email)
        if kind == "recovery":
            assert server.post("/recover", json={"email": t.email}).status_code == 200
            t.redeem = lambda token: server.post("/verify", json={"type": "recovery", "token": token})
        else:
            access = server.login(t.email)["access_token"]
            t.to = unique_email("new")
            r = server.put("/user", token=access, json={"email": t.to})
            assert r.status_code == 200, r.text
            t.redeem = lambda token: server.put("/user", token=access, json={"email_change_token": token})
        if kind == "recovery":  # sent after the answer
            mailbox.wait_for(t.email, before + 1)
        assert mails(mailbox, t.email) == before + (kind == "recovery")  # none to the old address
    t.msg = mailbox.wait_for(t.to, 2 if kind == "recovery" else 1)
    t.token = link_token(t.msg, kind)
    return t


@pytest.fixture(scope="module")
def admin(server):
    return server.admin_token()


# --- what every mail looks like -------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_mail_headers_parts_and_link(server, mailbox, admin, kind):
    t = issue(server, mailbox, kind, admin)
    msg, envelope = t.msg, envelope_of(mailbox, t.msg)
    assert msg["Subject"] == SUBJECTS[kind]
    assert msg["From"] == envelope.mail_from == "admin@site.example.com"
    assert msg["To"] == t.to and envelope.rcpt_tos == [t.to]
    assert email.utils.parsedate_to_datetime(msg["Date"]).year >= 2024  # a valid RFC 5322 date
    assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", msg["Message-ID"])
    assert msg.get_content_type() == "multipart/alternative"
    url = link(msg, kind)
    assert url == f"{SITE}/#{kind}_token={t.token}"
    assert url in mail_text(msg) and "<a" not in mail_text(msg)
    assert t.redeem(t.token).status_code == 200


def test_message_ids_are_unique(server, mailbox):
    a, b = unique_email(), unique_email()
    server.signup(a), server.signup(b)
    assert mailbox.wait_for(a)["Message-ID"] != mailbox.wait_for(b)["Message-ID"]


DEFAULTS = {  # (heading, link text) of the default templates the seed README gives
    "invite": ("You have been invited", "Accept the invite"),
    "confirmation": ("Confirm your signup", "Confirm your mail"),
    "recovery": ("Reset Password", "Reset Password"),
    "email_change": ("Confirm Change of Email", "Change Email"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_default_templates_are_the_readmes(server, mailbox, admin, kind):
    t = issue(server, mailbox, kind, admin)
    heading, link_text = DEFAULTS[kind]
    body = mail_html(t.msg)
    assert f"<h2>{heading}</h2>" in body
    assert f'<a href="{link(t.msg, kind)}">{link_text}</a>' in body
    if kind == "invite":
        assert f"create a user on {SITE}" in body
    if kind == "email_change":
        assert f"from {t.email} to {t.to}" in body


def test_links_come_only_from_site_url(server, mailbox):
    spoof = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http",
             "X-Forwarded-Port": "8443", "Forwarded": "host=evil.example;proto=http",
             "Origin": "https://evil.example", "Referer": "https://evil.example/admin"}
    address = unique_email()
    r = server.post("/signup", json={"email": address, "password": "secret-pw"}, headers=spoof)
    assert r.status_code == 200, r.text
    msg = mailbox.wait_for(address)
    assert link(msg, "confirmation").startswith(f"{SITE}/#confirmation_token=")
    assert server.post("/recover", json={"email": address}, headers=spoof).status_code == 200
    assert link(mailbox.wait_for(address, 2), "recovery").startswith(f"{SITE}/#recovery_token=")
    assert "evil" not in mail_html(msg) + mail_text(msg)


# --- subjects, paths and templates ----------------------------------------------------------

def test_subjects_paths_and_template_from_disk(make_server, engine, mailbox, tmp_path):
    template = tmp_path / "confirm.html"
    template.write_text('<p>Hi {{ .Email }} of {{.SiteURL}}</p>\n<a href="{{ .ConfirmationURL }}">Go</a>\n'
                        "<i>{{ .NewEmail }}</i>", encoding="utf-8")
    server = make_server(
        engine, GOTRUE_SITE_URL="https://site.example.com/app/?q=1", GOTRUE_OPERATOR_TOKEN=OPERATOR,
        GOTRUE_MAILER_SUBJECTS_CONFIRMATION="Bitte bestätigen ✓ {{ .Email }}",
        GOTRUE_MAILER_SUBJECTS_INVITE="Join {{ .SiteURL }}",
        GOTRUE_MAILER_SUBJECTS_RECOVERY="Reset for {{ .Email }}",
        GOTRUE_MAILER_SUBJECTS_EMAIL_CHANGE="Switch to {{ .NewEmail }}",
        GOTRUE_MAILER_URLPATHS_CONFIRMATION="/confirm/here",
        GOTRUE_MAILER_URLPATHS_INVITE="https://accounts.example.org/accept",
        GOTRUE_MAILER_URLPATHS_RECOVERY="reset",  # relative: resolved against the site's path
        GOTRUE_MAILER_TEMPLATES_CONFIRMATION=str(template))
    got = {kind: issue(server, mailbox, kind, OPERATOR) for kind in KINDS}
    expected = {
        "confirmation": (f"Bitte bestätigen ✓ {got['confirmation'].email}", "https://site.example.com/confirm/here"),
        "invite": ("Join https://site.example.com/app/?q=1", "https://accounts.example.org/accept"),
        "recovery": (f"Reset for {got['recovery'].email}", "https://site.example.com/app/reset"),
        "email_change": (f"Switch to {got['email_change'].to}", "https://site.example.com/"),
    }
    for kind, (subject, base) in expected.items():
        t = got[kind]
        assert t.msg["Subject"] == subject
        assert link(t.msg, kind) == f"{base}#{kind}_token={t.token}"
        assert t.redeem(t.token).status_code == 200
    # the template from disk, with its variables filled in; the others stay the defaults
    body = mail_html(got["confirmation"].msg)
    assert body.startswith(f"<p>Hi {got['confirmation'].email} of https://site.example.com/app/?q=1</p>")
    assert "<i></i>" in body and "Hi" not in mail_html(got["recovery"].msg)
    # a non-ASCII subject travels as an RFC 2047 encoded word: the raw header is pure ASCII
    raw = envelope_of(mailbox, got["confirmation"].msg).original_content
    subject_line = re.search(rb"^Subject:(.*(?:\r\n[ \t].*)*)", raw, re.M).group(1)
    assert subject_line.isascii() and b"=?utf-8?" in subject_line.lower()


def test_template_values_are_html_escaped(make_server, engine, mailbox, tmp_path):
    template = tmp_path / "change.html"
    template.write_text('<p>{{ .Email }} to {{ .NewEmail }}</p><a href="{{ .ConfirmationURL }}">ok</a>')
    server = make_server(engine, GOTRUE_MAILER_TEMPLATES_EMAIL_CHANGE=str(template))
    tag = unique_email("x").split("@")[0]
    old, new = f"o'neil&{tag}@example.com", f"new&'{tag}@example.com"
    server.confirmed_user(old)
    access = server.login(old)["access_token"]
    assert server.put("/user", token=access, json={"email": new}).status_code == 200
    msg = mailbox.wait_for(new)
    paragraph = re.search(r"<p>(.*)</p>", mail_html(msg)).group(1)
    assert "'" not in paragraph and "&amp;" in paragraph  # escaped (&#x27; or &#39; both do)
    assert html.unescape(paragraph) == f"{old} to {new}"
    assert f"{old} to {new}" in mail_text(msg)  # the text part reads naturally
    r = server.put("/user", token=access, json={"email_change_token": link_token(msg, "email_change")})
    assert r.status_code == 200 and r.json()["email"] == new


class TemplateSite:
    """A loopback HTTP server standing in for the site that hosts the mail templates."""

    def __init__(self, pages):
        self.pages, self.hits, self.release = pages, [], threading.Event()
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                site.hits.append(self.path)
                if self.path == "/tpl/slow.html":
                    site.release.wait(30)  # never answers in time
                body = site.pages.get(self.path)
                self.send_response(200 if body else 404)
                self.end_headers()
                self.wfile.write((body or "not found").encode())

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def template_site():
    site = TemplateSite({"/tpl/confirmation.html": "<p>Custom for {{ .Email }}</p>"
                                                   '<a href="{{ .ConfirmationURL }}">Confirm</a>'})
    yield site
    site.close()


def test_templates_from_url_cached_and_fallbacks(make_server, engine, mailbox, template_site):
    server = make_server(
        engine, GOTRUE_SITE_URL=template_site.url, GOTRUE_OPERATOR_TOKEN=OPERATOR, GOTRUE_SMTP_TIMEOUT_SEC=1,
        # upstream's rule: scheme and host are dropped, the path is read from SITE_URL
        GOTRUE_MAILER_TEMPLATES_CONFIRMATION="https://cdn.example.com/tpl/confirmation.html",
        GOTRUE_MAILER_TEMPLATES_RECOVERY="/tpl/missing.html", GOTRUE_MAILER_TEMPLATES_INVITE="/tpl/slow.html")
    for _ in range(2):
        t = issue(server, mailbox, "confirmation", OPERATOR)
        assert mail_html(t.msg).startswith(f"<p>Custom for {t.email}</p>")
        assert link(t.msg, "confirmation") == f"{template_site.url}/#confirmation_token={t.token}"
        assert t.redeem(t.token).status_code == 200
    assert template_site.hits.count("/tpl/confirmation.html") == 1  # fetched once, then cached
    # a 404 and a server that never answers: the default template, and the failure is logged
    for kind, default_text in (("recovery", "Follow this link to reset the password"),
                               ("invite", "Follow this link to accept the invite")):
        t = issue(server, mailbox, kind, OPERATOR)
        assert default_text in mail_html(t.msg)
        assert t.redeem(t.token).status_code == 200
        assert re.search(rf"level=ERROR .*{kind}.*template", server.log()), server.log()
    assert {"/tpl/missing.html", "/tpl/slow.html"} <= set(template_site.hits)


# --- non-ASCII addresses --------------------------------------------------------------------

@pytest.mark.parametrize("local, domain", [("jörg", "example.com"), ("anna", "bücher.example")])
def test_non_ascii_addresses(server, mailbox, local, domain):
    address = f"{local}-{unique_email().split('@')[0]}@{domain}"
    wire = address.split("@")[0] + "@" + domain.encode("idna").decode()
    server.signup(address)
    msg = mailbox.wait_for(wire)
    assert envelope_of(mailbox, msg).rcpt_tos == [wire]
    assert msg["To"] == wire
    r = server.post("/verify", json={"type": "signup", "token": link_token(msg, "confirmation")})
    assert r.status_code == 200, r.text
    assert server.user_row(address)["confirmed_at"]


# --- throttling and re-signup ---------------------------------------------------------------

def test_resignup_of_unconfirmed_email_resends_after_the_window(server, mailbox):
    """The latest signup's password and data win; each new password gets its own link (mailed
    unless the window forbids it), so a link confirms the password of the signup that made it."""
    address = unique_email()
    server.signup(address, "first-pw", data={"a": 1})
    first = link_token(mailbox.wait_for(address), "confirmation")
    r = server.post("/signup", json={"email": address, "password": "first-pw", "data": {"b": 2}})
    assert r.status_code == 200 and r.json()["user_metadata"] == {"b": 2}, r.text
    assert mails(mailbox, address) == 1 and server.user_row(address)["confirmation_token"] == first  # a resubmission
    assert server.post("/signup", json={"email": address, "password": "second-pw"}).status_code == 200
    assert mails(mailbox, address) == 1 and server.user_row(address)["confirmation_token"] != first
    server.backdate(address, "confirmation_sent_at", 901)  # just past the default 900 s window
    assert server.post("/signup", json={"email": address, "password": "third-pw"}).status_code == 200
    second = link_token(mailbox.wait_for(address, 2), "confirmation")
    assert second != first
    check_error(server.post("/verify", json={"type": "signup", "token": first}), 404, "User not found")
    assert server.post("/verify", json={"type": "signup", "token": second}).status_code == 200
    server.login(address, "third-pw")
    for old in ("first-pw", "second-pw"):
        r = server.post("/token", data={"grant_type": "password", "username": address, "password": old})
        assert r.status_code == 400
    check_error(server.post("/signup", json={"email": address, "password": "x"}), 400,
                "A user with this email address has already been registered")


@pytest.mark.parametrize("setting, window", [(None, 900), ("1m30s", 90), ("-1s", None)])
def test_max_frequency(make_server, engine, mailbox, setting, window):
    """Confirmation: inside the window nothing is sent and the signup still succeeds. Recovery:
    a mail sent inside the window by an earlier process (the backdated column) means nothing is
    sent and the answer is that of an unknown address; a second request to this process inside
    the window is a 429, known address or not. A negative window turns throttling off."""
    server = make_server(engine, GOTRUE_SMTP_MAX_FREQUENCY=setting)
    ages = [window - 30, window + 30] if window else [None]  # None: the mail was just sent
    for age in ages:
        throttled = window is not None and age < window
        address = unique_email()
        server.signup(address)
        if age:
            server.backdate(address, "confirmation_sent_at", age)
        assert server.post("/signup", json={"email": address, "password": "pw"}).status_code == 200
        assert mails(mailbox, address) == (1 if throttled else 2)
        known = unique_email()
        server.confirmed_user(known)
        if age:
            server.backdate(known, "recovery_sent_at", age)
        r = server.post("/recover", json={"email": known})
        if throttled:
            assert (r.status_code, r.json(), mails(mailbox, known)) == (200, {}, 1)
            check_error(server.post("/recover", json={"email": known}), 429, "Rate limit exceeded, try again later")
        else:
            assert r.status_code == 200 and link_token(mailbox.wait_for(known, 2), "recovery")
    if window is None:  # repeated requests, no backdating: every one sends
        for _ in range(2):
            assert server.post("/recover", json={"email": known}).status_code == 200
        assert mailbox.wait_for(known, 4) and mails(mailbox, known) == 4


# --- lifetimes and single use ---------------------------------------------------------------

@pytest.mark.parametrize("late", [False, True], ids=["in-time", "expired"])
@pytest.mark.parametrize("kind", KINDS)
def test_token_lifetimes(server, mailbox, admin, kind, late):
    lifetime, error, column = LIFETIMES[kind]
    t = issue(server, mailbox, kind, admin)
    server.backdate(t.email, column, lifetime + 60 if late else lifetime - 60)
    r = t.redeem(t.token)
    if late:
        check_error(r, 422, error)
    else:
        assert r.status_code == 200, r.text


def test_configured_lifetimes(make_server, engine, mailbox):
    server = make_server(engine, GOTRUE_OPERATOR_TOKEN=OPERATOR, GOTRUE_MAILER_CONFIRMATION_MAX_AGE="1h",
                         GOTRUE_MAILER_RECOVERY_MAX_AGE="30m", GOTRUE_MAILER_INVITE_MAX_AGE="2h")
    lifetimes = {"confirmation": 3600, "email_change": 3600, "recovery": 1800, "invite": 7200}
    for kind, lifetime in lifetimes.items():
        for late in (True, False):
            t = issue(server, mailbox, kind, OPERATOR)
            server.backdate(t.email, LIFETIMES[kind][2], lifetime + 60 if late else lifetime - 60)
            r = t.redeem(t.token)
            assert r.status_code == (422 if late else 200), (kind, late, r.text)


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_are_single_use(server, mailbox, admin, kind):
    t = issue(server, mailbox, kind, admin)
    assert t.redeem(t.token).status_code == 200
    check_error(t.redeem(t.token), *USED_AGAIN[kind])


# --- SMTP transport -------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (the server process trusts it via SSL_CERT_FILE)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


class SecureMailbox(Mailbox):
    """A mailbox that requires TLS and AUTH, records how each mail came, and can refuse logins."""

    def __init__(self):
        super().__init__()
        self.accept, self.reject_data, self.logins, self.tls = True, None, [], []

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        ok = self.accept and (auth_data.login, auth_data.password) == (SMTP_USER.encode(), SMTP_PASS.encode())
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server, session, envelope):
        if self.reject_data:
            return self.reject_data
        self.tls.append(server.transport.get_extra_info("ssl_object") is not None and session.authenticated)
        return await super().handle_DATA(server, session, envelope)


@contextlib.contextmanager
def secure_smtp(port, tls_files, implicit=False):
    box = SecureMailbox()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    tls = {"ssl_context": context, "auth_require_tls": False} if implicit else \
        {"tls_context": context, "require_starttls": True, "auth_require_tls": True}
    controller = Controller(box, hostname="127.0.0.1", port=port, auth_required=True,
                            authenticator=box.authenticate, **tls)
    try:
        controller.start()
    except OSError as e:
        pytest.skip(f"cannot listen on 127.0.0.1:{port}: {e}")
    try:
        yield box
    finally:
        controller.stop()


def smtp_settings(port, tls_files):
    return {"GOTRUE_SMTP_PORT": port, "GOTRUE_SMTP_USER": SMTP_USER, "GOTRUE_SMTP_PASS": SMTP_PASS,
            "SSL_CERT_FILE": tls_files[0], "GOTRUE_OPERATOR_TOKEN": OPERATOR, "GOTRUE_SMTP_TIMEOUT_SEC": 5}


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls_on_port_465(make_server, engine, tls_files):
    with secure_smtp(465, tls_files, implicit=True) as box:
        server = make_server(engine, **smtp_settings(465, tls_files))
        address = server.signup()["email"]
        msg = box.wait_for(address)
        assert box.tls == [True] and box.logins == [(SMTP_USER, SMTP_PASS)]
        assert server.post("/verify", json={"type": "signup", "token": link_token(msg, "confirmation")}).status_code == 200


FAILURES = {"confirmation": "Error sending confirmation mail", "invite": "Error inviting user",
            "recovery": "Error recovering user", "email_change": "Error sending change email"}
@pytest.mark.parametrize("kind", KINDS)
def test_smtp_down_refusing_then_retry(make_server, engine, tls_files, kind):
    """Mail fails (nothing listening, a server refusing the login, then refusing the message):
    upstream's 500, nothing half-saved, no user lost, logged without secrets. Once SMTP works the same request succeeds over STARTTLS
    with AUTH and the link in the mail completes the flow."""
    port = free_port()
    server = make_server(engine, **smtp_settings(port, tls_files))
    address, new_address = unique_email(kind), unique_email("new")
    if kind in ("recovery", "email_change"):  # an existing confirmed user, made without mail
        r = server.post("/admin/users", token=OPERATOR, json={"email": address, "password": "pw", "confirm": True})
        assert r.status_code == 200, r.text
        access = server.login(address, "pw")["access_token"]
    request = {"confirmation": lambda: server.post("/signup", json={"email": address, "password": "pw"}),
               "invite": lambda: server.post("/invite", token=OPERATOR, json={"email": address}),
               "recovery": lambda: server.post("/recover", json={"email": address}),
               "email_change": lambda: server.put("/user", token=access, json={"email": new_address})}[kind]
    before = server.user_row(address)

    def nothing_saved():
        row = server.user_row(address)
        if before is None:
            return row is None  # the new user was rolled back
        columns = ("recovery_token", "recovery_sent_at", "email_change", "email_change_token", "email_change_sent_at")
        return all(row[column] == before[column] for column in columns)

    def fails(n):
        """The n-th failed send: upstream's 500, or for /recover, which mails after answering
        (ours), a 200 and the failure in the log. Either way nothing stays saved."""
        r = request()
        if kind == "recovery":
            assert (r.status_code, r.json()) == (200, {})
            wait_until(lambda: len(re.findall(rf"level=ERROR .*mail.*{port}", server.log())) >= n, "the failed send")
        else:
            check_error(r, 500, FAILURES[kind])
        wait_until(nothing_saved, "the change to be undone")
        if before is not None:
            server.login(address, "pw")  # the account still works as before

    fails(1)  # nothing listening
    with secure_smtp(port, tls_files) as box:
        box.accept = False
        fails(2)  # the login is refused
        assert box.messages == [] and box.logins
        box.accept, box.reject_data = True, "554 5.7.1 Message refused"
        fails(3)  # the message is refused
        assert box.messages == []
        box.reject_data = None
        r = request()
        assert r.status_code == 200, r.text
        to = new_address if kind == "email_change" else address
        msg = box.wait_for(to)
        assert box.tls == [True] and box.logins[-1] == (SMTP_USER, SMTP_PASS)
    token = link_token(msg, kind)
    redeem = {"confirmation": lambda: server.post("/verify", json={"type": "signup", "token": token}),
              "invite": lambda: server.post("/verify", json={"type": "signup", "token": token, "password": "pw"}),
              "recovery": lambda: server.post("/verify", json={"type": "recovery", "token": token}),
              "email_change": lambda: server.put("/user", token=access, json={"email_change_token": token})}[kind]
    assert redeem().status_code == 200
    log = server.log()
    assert len(re.findall(rf"level=ERROR .*mail.*{port}", log)) == 3, log
    assert SMTP_PASS not in log and server.env["GOTRUE_JWT_SECRET"] not in log


def test_smtp_server_that_never_answers_times_out(make_server, engine):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never greets
        server = make_server(engine, GOTRUE_SMTP_PORT=silent.getsockname()[1], GOTRUE_SMTP_TIMEOUT_SEC=1)
        address = unique_email()
        check_error(server.post("/signup", json={"email": address, "password": "pw"}), 500, FAILURES["confirmation"])
        assert server.user_row(address) is None


def test_template_setting_named_like_a_kind_falls_back(make_server, engine, mailbox):
    """MAILER_TEMPLATES_RECOVERY=invite is read from SITE_URL/invite, which serves nothing here:
    the default recovery template must be used, as for any template that cannot be fetched."""
    server = make_server(engine, GOTRUE_SITE_URL=f"http://127.0.0.1:{free_port()}",
                         GOTRUE_MAILER_TEMPLATES_RECOVERY="invite")
    address = unique_email()
    server.confirmed_user(address)
    r = server.post("/recover", json={"email": address})
    assert r.status_code == 200, r.text
    assert "Follow this link to reset the password" in mail_html(mailbox.wait_for(address, 2))
