"""The admin console (issue 15) in a real browser: Debian's headless Chromium driven through
Selenium and Debian's chromium-driver (the driver is built from the same source package as the
browser, so their versions always match; Selenium is told both paths and never downloads
anything), against real gotrue.py servers on SQLite with mail going to the real aiosmtpd box.

Every wait polls with a deadline (WebDriverWait); nothing sleeps. Screenshots of the main
screens go to a temporary directory (GOTRUE_UI_SCREENSHOTS picks another), named at the end.
"""

import csv
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import threading
import urllib.parse
import uuid

import pytest
import requests

from conftest import Server, base_env, free_port, migrate, unique_email, wait_until

import gotrue

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # the tests without a browser still run
    webdriver = None

WAIT = 15  # seconds any one wait in the browser may take
ADMIN_PASSWORD = "console-admin-pw"
EXPORT_SECRET = "export-" + secrets.token_hex(8)
PAGE_FILES = {"/admin/ui": "text/html", "/admin/ui/admin.js": "text/javascript", "/admin/ui/admin.css": "text/css"}


# --- the browser ---------------------------------------------------------------------------

def browser_paths():
    browser = os.environ.get("GOTRUE_TEST_CHROMIUM") or shutil.which("chromium")
    driver = os.environ.get("GOTRUE_TEST_CHROMEDRIVER") or shutil.which("chromedriver")
    return browser, driver


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("admin-ui-downloads")


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory, request):
    folder = os.environ.get("GOTRUE_UI_SCREENSHOTS") or str(tmp_path_factory.mktemp("admin-ui-screenshots"))
    os.makedirs(folder, exist_ok=True)
    yield folder
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    taken = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    if reporter and taken:  # said once output is no longer captured, at the end of the run
        request.config.add_cleanup(lambda: reporter.write_line(f"admin console screenshots ({len(taken)}): {folder}"))


@pytest.fixture(scope="module")
def browser(downloads, tmp_path_factory):
    browser, driver = browser_paths()
    if not (browser and driver and webdriver):
        message = ("Chromium, chromium-driver and Selenium are needed: apt-get install chromium chromium-driver;"
                   " pip install -r tests/requirements.txt")
        if os.environ.get("GOTRUE_TEST_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--disable-gpu", "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps", "--no-first-run", "--disable-translate",
                "--disable-features=Translate,OptimizationHints,MediaRouter", "--lang=en-US",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=options)  # a given path: no Selenium Manager
    drv.set_page_load_timeout(WAIT)
    drv.set_script_timeout(WAIT)
    drv.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield drv
    drv.quit()


# --- servers -------------------------------------------------------------------------------

def start_server(workdir, mailbox_port, **settings):
    db_env = {"GOTRUE_DB_DRIVER": "sqlite", "DATABASE_URL": str(workdir / "gotrue.db")}
    env = base_env(str(workdir), db_env, mailbox_port, **settings)
    migrate(env, str(workdir))
    return Server(str(workdir), env).start()


@pytest.fixture(scope="module")
def site(tmp_path_factory, mailbox):
    """The console's server: SQLite, console on, an export secret, mail to the mailbox."""
    srv = start_server(tmp_path_factory.mktemp("console-server"), mailbox.port, GOTRUE_ADMIN_UI_ENABLED="true",
                       GOTRUE_API_EXPORT_SECRET=EXPORT_SECRET)
    yield srv
    srv.stop()


def make_account(server, email=None, password="user-pw", role=None, confirmed=True, **data):
    email = email or unique_email()
    r = server.post("/signup", json={"email": email, "password": password, "data": data})
    assert r.status_code == 200, r.text
    if confirmed:
        server.sql("UPDATE {users} SET confirmed_at = ? WHERE email = ?", gotrue.now(), email.lower())
    if role:
        server.sql("UPDATE {users} SET role = ? WHERE email = ?", role, email.lower())
    return email.lower()


@pytest.fixture(scope="module")
def admin(site):
    """(email, password, token) of an admin of the console's server."""
    email = make_account(site, unique_email("console-admin"), ADMIN_PASSWORD, role="admin", full_name="Ada Admin")
    return email, ADMIN_PASSWORD, site.login(email, ADMIN_PASSWORD)["access_token"]


# --- the console as a person uses it -------------------------------------------------------

class Console:
    def __init__(self, driver, base, shots):
        self.d, self.base, self.shots = driver, base, shots

    def wait(self, check, what, timeout=WAIT):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.05).until(lambda _: check())
        except TimeoutException:
            raise AssertionError(f"timed out waiting for {what}; the page shows error={self.text('error')!r} "
                                 f"notice={self.text('notice')!r} busy={self.text('busy')!r}") from None

    def el(self, id_):
        return self.d.find_element(By.ID, id_)

    def shown(self, id_):
        return self.el(id_).is_displayed()

    def text(self, id_):
        try:
            return self.el(id_).text
        except WebDriverException:
            return ""

    def value(self, id_):
        return self.el(id_).get_property("value")

    def usable(self, id_):
        """The control, once no running operation holds it disabled."""
        return self.wait(lambda: self.el(id_).is_enabled() and self.el(id_), f"#{id_} to be enabled")

    def type(self, id_, text):
        field = self.usable(id_)
        field.clear()
        field.send_keys(text)

    def click(self, id_):
        self.usable(id_).click()

    def idle(self):
        return not self.shown("busy")

    def view(self):
        return self.d.execute_script(
            "const v = [...document.querySelectorAll('main > section')].find(s => !s.hidden); return v ? v.id : ''")

    def wait_view(self, name, what=None):
        self.wait(lambda: self.view() == "view-" + name and self.idle(), what or f"the {name} view")

    def open(self, url=None):
        self.d.get("about:blank")  # a fresh page: the console's memory (and session) starts empty
        self.d.get(url or self.base + "/admin/ui")
        self.wait_view("login", "the sign-in form")

    def sign_in(self, email, password, expect="users"):
        self.type("login-email", email)
        self.type("login-password", password)
        self.click("login-submit")
        if expect:
            self.wait_view(expect, f"the {expect} view after signing in")
            self.wait(lambda: self.rows("users-rows") if expect == "users" else True, "the first users")

    def fields(self):
        """The user page's list of fields, as a dict."""
        cells = self.d.execute_script(
            "return [...document.querySelectorAll('#user-fields dt, #user-fields dd')].map(e => e.textContent)")
        return dict(zip(cells[::2], cells[1::2]))

    def select(self, id_, value):
        Select(self.usable(id_)).select_by_value(value)

    def rows(self, tbody):
        return self.d.execute_script(
            "return [...document.getElementById(arguments[0]).rows].map(r => [...r.cells].map(c => c.textContent))",
            tbody)

    def go(self, hash_, view):
        self.d.execute_script("location.hash = arguments[0]", hash_)
        self.wait_view(view)

    def search_users(self, text):
        self.type("users-filter", text)
        self.click("users-search-submit")
        self.wait(lambda: self.idle() and text in self.text("users-summary"), f"the users matching {text}")

    def open_user(self, email):
        self.search_users(email)
        self.d.find_element(By.CSS_SELECTOR, "#users-rows a.user-link").click()
        self.wait(lambda: self.view() == "view-user" and self.idle() and self.text("user-title") == email,
                  f"the page of {email}")

    def wait_notice(self, words):
        self.wait(lambda: self.idle() and words in self.text("notice"), f"the notice {words!r}")
        return self.text("notice")

    def wait_error(self, words):
        self.wait(lambda: self.idle() and words in self.text("error"), f"the error {words!r}")
        return self.text("error")

    def screenshot(self, name):
        self.d.save_screenshot(os.path.join(self.shots, name + ".png"))

    def console_problems(self):
        """Uncaught errors and Content-Security-Policy violations the browser logged."""
        return [e["message"] for e in self.d.get_log("browser")
                if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]]


@pytest.fixture
def ui(browser, site, screenshots):
    console = Console(browser, site.url, screenshots)
    browser.get_log("browser")  # drop what earlier tests left
    yield console
    assert console.console_problems() == []


# --- without a browser ---------------------------------------------------------------------

def test_console_is_404_when_disabled(make_server, site):
    off = make_server("sqlite")
    for path in PAGE_FILES:
        r = off.get(path)
        assert r.status_code == 404, path
        assert r.headers["Content-Type"] == "application/json"
        assert r.json() == {"code": 404, "msg": "Not Found"}
    assert site.get("/admin/ui").status_code == 200  # the same request, with the setting on
    assert site.get("/admin/ui/other.js").status_code == 404  # and only the console's own files


def test_security_headers(site):
    for path, content_type in PAGE_FILES.items():
        r = site.get(path)
        assert r.status_code == 200, path
        assert r.headers["Content-Type"].startswith(content_type)
        csp = {d.split()[0]: d.split()[1:] for d in r.headers["Content-Security-Policy"].split(";") if d.strip()}
        assert csp["default-src"] == ["'self'"]
        assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]  # no inline script or style
        assert csp["frame-ancestors"] == ["'none'"]
        assert "'unsafe-inline'" not in r.headers["Content-Security-Policy"]
        assert "'unsafe-eval'" not in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Frame-Options"] == "DENY"


def test_page_sources_keep_to_the_policy(site):
    """What the policy enforces in the browser, checked in the sources too: no inline script,
    style or handler; only relative references to the console's own files (it works offline
    and under a proxy's prefix); no HTML sinks in the script."""
    html = site.get("/admin/ui").text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I)
    assert scripts == [(' src="ui/admin.js" defer', "")]
    assert not re.search(r"<style\b|\sstyle\s*=|\son[a-z]+\s*=|javascript:", html, re.I)
    refs = re.findall(r'\s(?:src|href)="([^"]*)"', html)
    assert "ui/admin.css" in refs and "ui/admin.js" in refs
    for ref in refs:
        assert ref.startswith(("ui/", "#", "data:")), ref  # nothing absolute, nothing from elsewhere
    js = site.get("/admin/ui/admin.js").text
    code = "\n".join(line for line in js.splitlines() if not line.lstrip().startswith("//"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "localStorage", "sessionStorage", "http://", "https://"):
        assert sink not in code, sink
    css = site.get("/admin/ui/admin.css").text
    assert "@import" not in css and "url(" not in css


# --- in the browser ------------------------------------------------------------------------

def test_sign_in_search_sort_and_page_through_120_users(ui, site, admin):
    tag = "paged-" + uuid.uuid4().hex[:8]
    http = requests.Session()
    for i in range(120):
        r = http.post(site.url + "/admin/users", headers={"Authorization": f"Bearer {admin[2]}"}, timeout=30,
                      json={"email": f"{tag}-{i:03d}@example.com", "user_metadata": {"full_name": f"Paged {i:03d}"}})
        assert r.status_code == 200, r.text
    ui.open()
    ui.screenshot("01-sign-in")
    ui.sign_in(admin[0], admin[1])
    total = site.get("/admin/users", token=admin[2]).headers["X-Total-Count"]
    assert ui.text("users-summary").startswith(f"{total} users, newest first")
    assert ui.text("who-email") == admin[0]

    ui.search_users(tag)
    assert ui.text("users-summary").startswith(f"120 users matching “{tag}”")
    seen = []
    for page, size in ((1, 50), (2, 50), (3, 20)):
        ui.wait(lambda: ui.text("users-page") == f"Page {page} of 3", f"page {page}")
        rows = ui.rows("users-rows")
        assert len(rows) == size
        seen += [row[0] for row in rows]
        if page == 1:
            ui.screenshot("02-users")
            assert rows[0][:3] == [f"{tag}-119@example.com", "Paged 119", ""]  # newest first
            assert rows[0][3] == "no" and rows[0][5] == "never"
            assert not ui.el("users-prev").is_enabled()
        if page < 3:
            ui.click("users-next")
    assert not ui.el("users-next").is_enabled()
    assert sorted(seen) == [f"{tag}-{i:03d}@example.com" for i in range(120)]
    ui.click("users-prev")
    ui.wait(lambda: ui.text("users-page") == "Page 2 of 3", "page 2 again")
    assert ui.rows("users-rows")[0][0] == f"{tag}-069@example.com"

    ui.click("users-sort-created")  # oldest first, back to page 1
    ui.wait(lambda: ui.idle() and ui.text("users-page") == "Page 1 of 3", "the oldest first")
    assert ui.rows("users-rows")[0][0] == f"{tag}-000@example.com"
    assert "oldest first" in ui.text("users-summary")

    ui.search_users(tag + "-07")  # a search narrows: 070..079
    assert [row[0] for row in ui.rows("users-rows")] == [f"{tag}-{i:03d}@example.com" for i in range(70, 80)]
    ui.search_users("nobody-" + tag)
    assert ui.rows("users-rows") == [[f"No users match “nobody-{tag}”."]]


def test_user_page_role_app_metadata_confirm_and_recovery(ui, site, admin, mailbox):
    email = make_account(site, unique_email("subject"), confirmed=False, full_name="Sam Subject", plan="free")
    ui.open()
    ui.sign_in(admin[0], admin[1])
    ui.open_user(email)
    ui.screenshot("03-user")
    fields = ui.fields()
    assert fields["Role"] == "(none)" and fields["Confirmed"] == "no" and fields["Last sign-in"] == "never"
    assert json.loads(ui.text("user-meta")) == {"full_name": "Sam Subject", "plan": "free"}
    assert json.loads(ui.value("app-meta")) == {"provider": "email"}

    ui.type("role-input", "editor")
    ui.click("role-save")
    ui.wait_notice(f"The role of {email} is now “editor”.")
    assert site.user_row(email)["role"] == "editor"
    assert "editor" in ui.text("user-fields")

    # app_metadata: checked before anything is sent
    before = site.user_row(email)["raw_app_meta_data"]
    for bad, words in (('{"roles": ["editor",]}', "Not valid JSON, nothing was saved"),
                       ('["editor"]', "must be a JSON object")):
        ui.type("app-meta", bad)
        ui.click("app-meta-save")
        ui.wait(lambda: ui.shown("app-meta-error") and words in ui.text("app-meta-error"), words)
        assert ui.el("app-meta").get_attribute("aria-invalid") == "true"
    assert site.user_row(email)["raw_app_meta_data"] == before
    ui.type("app-meta", '{"roles": ["editor", "billing"], "plan": {"name": "pro", "seats": 3}}')  # provider removed
    ui.click("app-meta-save")
    ui.wait_notice(f"Saved the app metadata of {email}.")
    assert not ui.shown("app-meta-error")
    stored = json.loads(site.user_row(email)["raw_app_meta_data"])
    assert stored == {"roles": ["editor", "billing"], "plan": {"name": "pro", "seats": 3}}
    assert json.loads(ui.value("app-meta")) == stored

    assert ui.shown("confirm-user")
    ui.click("confirm-user")
    ui.wait_notice(f"{email} is confirmed.")
    assert site.user_row(email)["confirmed_at"]
    assert not ui.shown("confirm-user") and ui.text("confirm-state").startswith("Confirmed on ")

    mails = len(mailbox.to(email))  # the signup's confirmation mail so far
    ui.click("send-recovery")
    ui.wait_notice(f"A recovery mail is on its way to {email}.")
    msg = mailbox.wait_for(email, count=mails + 1)
    assert "recovery_token=" in msg.get_body(("html",)).get_content()
    ui.click("send-recovery")  # the per-address mail window says no, in words
    error = ui.wait_error("Sending the recovery mail failed: Rate limit exceeded")
    assert "{" not in error


def test_invite_create_delete_and_audit_log(ui, site, admin, mailbox):
    ui.open()
    ui.sign_in(admin[0], admin[1])
    invitee = unique_email("invitee")
    ui.d.find_element(By.CSS_SELECTOR, '#nav a[href="#/invite"]').click()
    ui.wait_view("invite")
    ui.type("invite-email", invitee)
    ui.click("invite-submit")
    ui.wait_notice(f"Invitation sent to {invitee}.")
    assert "invite_token=" in mailbox.wait_for(invitee).get_body(("html",)).get_content()
    assert site.user_row(invitee)["invited_at"]
    ui.type("invite-email", invitee)  # the same address again: the API's answer, in words
    ui.click("invite-submit")
    ui.wait_error(f"Inviting {invitee} failed: Rate limit exceeded")
    ui.screenshot("04-invite")

    created = unique_email("created")
    ui.go("#/create", "create")
    ui.type("create-email", created)
    ui.type("create-password", "created-pw-1")
    ui.type("create-name", "Cora Created")
    ui.type("create-role", "editor")
    ui.screenshot("05-create")
    ui.click("create-submit")
    ui.wait(lambda: ui.view() == "view-user" and ui.idle() and ui.text("user-title") == created, "the new user's page")
    assert ui.text("notice") == f"Created {created}."
    assert site.login(created, "created-pw-1")["access_token"]  # confirmed, with that password
    assert site.user_row(created)["role"] == "editor"

    ui.click("delete-user")
    assert ui.shown("delete-confirm")
    assert ui.text("delete-question").startswith(f"Delete {created}? ")
    ui.screenshot("06-delete-confirmation")
    ui.click("delete-no")  # cancelled: nothing happens
    assert not ui.shown("delete-confirm") and site.user_row(created)
    ui.click("delete-user")
    ui.click("delete-yes")
    ui.wait(lambda: ui.view() == "view-users" and ui.idle(), "the users list after deleting")
    assert ui.wait_notice(f"Deleted {created}.")
    assert site.user_row(created) is None

    # the audit log shows what the console did, and filters it
    ui.go("#/audit", "audit")
    ui.wait(lambda: ui.rows("audit-rows"), "audit entries")
    total = int(site.get("/admin/audit", token=admin[2]).headers["X-Total-Count"])
    assert ui.text("audit-summary") == f"{total} entries, newest first"
    assert ui.text("audit-page") == f"Page 1 of {-(-total // 50)}"
    newest = ui.rows("audit-rows")[0]
    assert newest[1:] == [f"{admin[0]} (Ada Admin)", "user_deleted", "team", created]
    ui.screenshot("07-audit")
    for scope, value, expect in (("action", "user_invited", [invitee]), ("action", "user_deleted", [created]),
                                 ("type", "team", [created, created, invitee])):
        ui.select("audit-scope", scope)
        ui.type("audit-value", value)
        ui.click("audit-search-submit")
        ui.wait(lambda: ui.idle() and f"where {scope}:{value}" in ui.text("audit-summary"), f"{scope}:{value}")
        rows = ui.rows("audit-rows")
        assert all(row[2] == value for row in rows) if scope == "action" else all(row[3] == value for row in rows)
        targets = [row[4] for row in rows if row[4] in (invitee, created)]
        assert targets[:len(expect)] == expect, (scope, value, rows[:5])
    ui.select("audit-scope", "author")
    ui.type("audit-value", "Ada Admin")
    ui.click("audit-search-submit")
    ui.wait(lambda: ui.idle() and "where author:Ada Admin" in ui.text("audit-summary"), "author filter")
    assert {row[1] for row in ui.rows("audit-rows")} == {f"{admin[0]} (Ada Admin)"}
    ui.select("audit-scope", "")
    ui.type("audit-value", "x")
    ui.click("audit-search-submit")
    ui.wait_error("Choose what to filter on")


def test_csv_export(ui, site, admin, downloads):
    tricky = make_account(site, unique_email("csv"), full_name='=HYPERLINK("http://evil.example","x"), "quoted"')
    ui.open()
    ui.sign_in(admin[0], admin[1])
    ui.go("#/export", "export")
    ui.wait(lambda: ui.shown("export-form"), "the export form")
    assert ui.text("export-state") == "Enter the export secret to download every user as a CSV file."
    ui.type("export-secret", "wrong-" + EXPORT_SECRET)
    ui.click("export-submit")
    ui.wait_error("Exporting users failed: Invalid export secret.")
    ui.screenshot("08-export")
    for f in os.listdir(downloads):
        os.remove(os.path.join(downloads, f))
    ui.type("export-secret", EXPORT_SECRET)
    ui.click("export-submit")
    notice = ui.wait_notice("Exported ")
    total = int(site.get("/admin/users", token=admin[2]).headers["X-Total-Count"])
    assert notice.startswith(f"Exported {total} users to users-")
    path = wait_until(lambda: [os.path.join(downloads, f) for f in os.listdir(downloads) if f.endswith(".csv")],
                      "the CSV download")[0]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == total
    by_email = {row["email"]: row for row in rows}
    assert by_email[admin[0]]["role"] == "admin" and by_email[admin[0]]["encrypted_password"].startswith("$2")
    assert by_email[tricky]["full_name"] == "'" + '=HYPERLINK("http://evil.example","x"), "quoted"'  # no formula
    assert json.loads(by_email[tricky]["user_metadata"])["full_name"].startswith("=HYPERLINK")


def test_xss_payloads_are_shown_as_text(ui, site, admin):
    """Signup is open to anyone: a name and metadata full of script and HTML must reach the
    page as text. The CSP would block inline script anyway, so the test proves more: no element
    of the payload exists in the DOM, nothing ran, and the browser never even had a CSP
    violation to block."""
    tag = "xss-" + uuid.uuid4().hex[:8]
    name = (f'<img src=x onerror="window.__xss=1" data-xss-probe>{tag}<script>window.__xss=2</script>'
            '<b data-xss-probe>bold</b><iframe srcdoc="<script>parent.__xss=3</script>" data-xss-probe></iframe>')
    meta = {"bio": '"><svg onload="window.__xss=4" data-xss-probe></svg>', "html": "</pre><i data-xss-probe>i</i>"}
    email = make_account(site, f"{tag}@example.com", "xss-user-pw", full_name=name, **meta)
    site.login(email, "xss-user-pw")  # an audit entry whose actor name is the payload
    user_id = site.user_row(email)["id"]
    app_payload = {"note": "</textarea><script>window.__xss=5</script><u data-xss-probe>u</u>"}
    assert site.put(f"/admin/users/{user_id}", token=admin[2], json={"app_metadata": app_payload}).status_code == 200

    ui.open()
    ui.d.execute_script("window.__violations = []; document.addEventListener('securitypolicyviolation',"
                        " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI))")
    ui.sign_in(admin[0], admin[1])
    ui.search_users(tag)
    assert ui.rows("users-rows")[0][:2] == [email, name]
    ui.screenshot("09-xss-users")
    ui.open_user(email)
    assert json.loads(ui.text("user-meta")) == {"full_name": name, **meta}
    assert json.loads(ui.value("app-meta")) == {"provider": "email", **app_payload}
    ui.screenshot("10-xss-user")
    ui.go("#/audit", "audit")
    ui.select("audit-scope", "author")
    ui.type("audit-value", tag)
    ui.click("audit-search-submit")
    ui.wait(lambda: ui.idle() and f"where author:{tag}" in ui.text("audit-summary"), "the payload's audit entries")
    assert [email + f" ({name})", "login"] in [row[1:3] for row in ui.rows("audit-rows")]

    probes = ui.d.execute_script("return document.querySelectorAll('[data-xss-probe], iframe, svg, main img').length")
    assert probes == 0
    assert ui.d.execute_script("return window.__xss === undefined && window.__violations.length === 0")


def test_sign_out_and_reload_end_the_session(ui, site, admin):
    ui.open()
    ui.sign_in(admin[0], admin[1])
    admin_id = site.user_row(admin[0])["id"]
    live = "SELECT COUNT(*) AS n FROM {refresh_tokens} WHERE user_id = ? AND revoked = ?"
    assert site.sql(live, admin_id, False)[0]["n"] >= 1
    ui.click("sign-out")
    ui.wait_view("login", "the sign-in form after signing out")
    assert ui.text("notice") == "Signed out."
    assert site.sql(live, admin_id, False)[0]["n"] == 0  # /logout revoked the session
    assert ui.rows("users-rows") == [] and not ui.shown("nav") and not ui.shown("whoami")
    ui.go("#/audit", "login")  # no way back in without signing in
    assert ui.rows("audit-rows") == []

    ui.sign_in(admin[0], admin[1], expect="audit")  # where the address said; memory only: a reload signs out
    ui.d.refresh()
    ui.wait_view("login", "the sign-in form after a reload")
    assert not ui.shown("nav")
    assert ui.d.execute_script("return sessionStorage.length + localStorage.length + document.cookie.length") == 0


def test_non_admin_is_refused(ui, site):
    email = make_account(site, unique_email("plain"), "plain-pw", role="editor")
    ui.open()
    ui.sign_in(email, "plain-pw", expect="refused")
    assert ui.text("refused-text") == (f"{email} signed in, but it is not an administrator of this site, "
                                       "so it cannot manage users.")
    assert not ui.shown("nav") and ui.rows("users-rows") == []
    ui.screenshot("11-refused")
    ui.click("refused-back")
    ui.wait_view("login")


def test_failed_sign_ins_are_said_in_words(ui, site):
    email = make_account(site, unique_email("throttled"), "right-pw")
    pending = make_account(site, unique_email("pending"), "pending-pw", confirmed=False)
    ui.open()
    ui.sign_in(pending, "pending-pw", expect=None)
    assert ui.wait_error("Sign-in failed") == "Sign-in failed: Email not confirmed."
    # five wrong passwords for one account, then the server backs off (429 + Retry-After)
    for attempt in range(1, 13):
        ui.sign_in(email, "wrong-pw", expect=None)
        error = ui.wait_error("Sign-in failed")
        if "Too many" in error:
            break
        assert error == "Sign-in failed: No user found with that email, or password invalid."
    assert attempt > 5
    assert re.fullmatch(r"Sign-in failed: Too many failed login attempts, try again later\. "
                        r"Wait \d+ (second|seconds|minutes?) before trying again\.", error), error
    assert ui.view() == "view-login"
    ui.screenshot("12-throttled")


class StallingSMTP:
    """A mail server that accepts a connection and says nothing until released: the invite
    stays running for as long as the test wants, then fails."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connected, self.release = threading.Event(), threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        self.sock.settimeout(60)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.connected.set()
        self.release.wait(60)
        conn.close()
        self.sock.close()


def test_a_long_operation_shows_it_is_running_and_a_server_failure_in_words(ui, make_server):
    smtp = StallingSMTP()
    srv = make_server("sqlite", smtp=False, GOTRUE_ADMIN_UI_ENABLED="true", GOTRUE_SMTP_HOST="127.0.0.1",
                      GOTRUE_SMTP_PORT=smtp.port, GOTRUE_SMTP_ADMIN_EMAIL="admin@site.example.com",
                      GOTRUE_MAILER_AUTOCONFIRM="true")  # the admin's signup sends no mail
    email = make_account(srv, unique_email("admin"), "admin-pw", role="admin")
    ui.open(srv.url + "/admin/ui#/invite")
    ui.sign_in(email, "admin-pw", expect="invite")
    invitee = unique_email("stalled")
    ui.type("invite-email", invitee)
    try:
        ui.click("invite-submit")
        assert smtp.connected.wait(WAIT)
        ui.wait(lambda: ui.shown("busy"), "the busy indicator")
        assert ui.text("busy") == "Sending the invitation…"
        assert not ui.el("invite-submit").is_enabled() and not ui.el("invite-email").is_enabled()
        ui.screenshot("13-busy")
    finally:
        smtp.release.set()
    error = ui.wait_error(f"Inviting {invitee} failed")
    assert re.fullmatch(rf"Inviting {re.escape(invitee)} failed: The server failed \(500\): Error inviting user\. "
                        r"Reference: [\w.-]+\.", error), error
    assert ui.el("invite-submit").is_enabled() and not ui.shown("busy")


def test_the_session_is_refreshed_while_the_tab_is_open(ui, make_server):
    srv = make_server("sqlite", GOTRUE_ADMIN_UI_ENABLED="true", GOTRUE_JWT_EXP="3")
    email = make_account(srv, unique_email("admin"), "admin-pw", role="admin")
    ui.open(srv.url + "/admin/ui")
    ui.sign_in(email, "admin-pw")
    admin_id = srv.user_row(email)["id"]
    first = srv.sql("SELECT token FROM {refresh_tokens} WHERE user_id = ?", admin_id)
    assert len(first) == 1

    def refreshes():
        rows = srv.sql("SELECT payload FROM {audit_log_entries}")
        return [r for r in rows if json.loads(r["payload"])["action"] == "token_refreshed"
                and json.loads(r["payload"])["actor_id"] == admin_id]
    wait_until(lambda: len(refreshes()) >= 2, "two refreshes by the open tab")
    # by now the first access token (3 s) has expired; the console still works, quietly
    ui.go("#/export", "export")
    ui.wait(lambda: ui.text("export-state"), "the export check")
    assert ui.text("export-state") == "Export is not enabled on this server: set GOTRUE_API_EXPORT_SECRET to enable it."
    assert not ui.shown("export-form") and not ui.shown("error")
    ui.go("#/users", "users")
    assert ui.rows("users-rows")[0][0] == email and not ui.shown("error")

    # a refused refresh signs out, in words: the account is deleted behind the console's back
    # (which also refuses a token issued by a refresh in flight at this moment)
    srv.sql("DELETE FROM {users} WHERE id = ?", admin_id)
    ui.wait(lambda: ui.view() == "view-login", "the sign-out after a refused refresh")
    assert ui.text("error").startswith("Your session ended and you were signed out: Invalid Refresh Token.")


class PrefixProxy(http.server.ThreadingHTTPServer):
    """A reverse proxy that serves gotrue.py under /.netlify/identity, as Netlify does."""

    daemon_threads = True
    PREFIX = "/.netlify/identity"

    def __init__(self, target):
        self.target, self.seen = urllib.parse.urlsplit(target), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def forward(self):
                outer.seen.append(self.path)
                if not self.path.startswith(outer.PREFIX + "/"):
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn = http.client.HTTPConnection(outer.target.hostname, outer.target.port, timeout=30)
                conn.request(self.command, self.path[len(outer.PREFIX):], body or None, headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()
            do_GET = do_POST = do_PUT = do_DELETE = forward

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_the_console_works_under_a_path_prefix(ui, site, admin):
    tag = "prefixed-" + uuid.uuid4().hex[:8]
    for i in range(26):
        r = site.post("/admin/users", token=admin[2], json={"email": f"{tag}-{i:02d}@example.com"})
        assert r.status_code == 200, r.text
    proxy = PrefixProxy(site.url)
    try:
        ui.open(f"http://127.0.0.1:{proxy.server_address[1]}{proxy.PREFIX}/admin/ui")
        ui.sign_in(admin[0], admin[1])
        ui.select("users-per-page", "25")
        ui.search_users(tag)
        ui.wait(lambda: ui.text("users-page") == "Page 1 of 2" and len(ui.rows("users-rows")) == 25, "25 users a page")
        ui.click("users-next")
        ui.wait(lambda: ui.idle() and ui.text("users-page") == "Page 2 of 2", "page 2 through the proxy")
        assert [row[0] for row in ui.rows("users-rows")] == [f"{tag}-00@example.com"]
        ui.d.find_element(By.CSS_SELECTOR, "#users-rows a.user-link").click()
        ui.wait(lambda: ui.view() == "view-user" and ui.idle() and ui.text("user-title") == f"{tag}-00@example.com",
                "a user through the proxy")
    finally:
        proxy.shutdown()
        proxy.server_close()
    paths = [urllib.parse.urlsplit(p).path for p in proxy.seen]
    assert all(p.startswith(PrefixProxy.PREFIX + "/") for p in paths), paths
    for wanted in ("/admin/ui", "/admin/ui/admin.js", "/admin/ui/admin.css", "/token", "/admin/users"):
        assert PrefixProxy.PREFIX + wanted in paths, wanted
