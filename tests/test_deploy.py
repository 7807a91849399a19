"""The VPS kit in docs/deploy/, each piece run for real: the systemd unit (systemd-analyze verify,
and its commands start and stop a server), nginx and Caddy proxying /.netlify/identity/ to an
echo server and to gotrue.py, logrotate rotating gotrue.py's log while it runs, and backup.sh
backing up and restoring SQLite and MariaDB databases that gotrue.py then serves.

The files are tested as shipped: a test copies one, replaces the site-specific values (paths,
ports) that it asserts are there, and runs the real tool on the copy. A missing tool skips its
tests on a developer's machine; under CI (env CI set) it fails them: .ci/run installs the tools.
"""

import gzip
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

import pymysql
import pytest
import requests

from conftest import DEADLINE, ROOT, base_env, free_port, migrate, unique_email, wait_until
from mariadb_server import _die_with_parent
import gotrue

DEPLOY = os.path.join(ROOT, "docs", "deploy")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
TOOL_ENV = {**os.environ, "PATH": SEARCH_PATH}


def tool(name):
    """The path of a command-line tool; skip without it, except under CI where it must exist."""
    path = shutil.which(name, path=SEARCH_PATH)
    if not path:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required under CI (.ci/run installs it) but is not installed")
        pytest.skip(f"{name} is not installed (apt-get install {name}); CI installs it")
    return path


def deploy_file(name):
    with open(os.path.join(DEPLOY, name), encoding="utf-8") as f:
        return f.read()


def adapt(text, *replacements):
    """Replace site-specific values; each must be present, so a changed file fails loudly."""
    for old, new in replacements:
        assert old in text, f"expected {old!r} in the shipped file"
        text = text.replace(old, new)
    return text


def run(cmd, timeout=DEADLINE, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=kw.pop("env", TOOL_ENV), **kw)


class Daemon:
    """A process run in the foreground for a test (nginx, caddy, gotrue.py), output to a log."""

    def __init__(self, cmd, log_path, **kw):
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent, **kw)

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_http(self, url, ok=lambda r: True):
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.proc.args[0]} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return ok(requests.get(url, timeout=2, allow_redirects=False))
            except requests.ConnectionError:
                return False
        wait_until(up, f"{url} to answer")
        return self

    def stop(self, sig=signal.SIGTERM, timeout=DEADLINE):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def get_after_sighup(proc, url):
    """GET url from a gotrue.py that was sent SIGHUP; a clear failure if the signal killed it."""
    try:
        return requests.get(url, timeout=DEADLINE)
    except requests.ConnectionError:
        try:
            proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"gotrue.py stopped answering after SIGHUP: {url}") from None
        raise AssertionError(f"gotrue.py exited with {proc.returncode} on SIGHUP: it should reopen "
                             "GOTRUE_LOG_FILE and go on serving") from None


@pytest.fixture
def daemons():
    started = []

    def start(cmd, log_path, **kw):
        started.append(Daemon(cmd, log_path, **kw))
        return started[-1]
    yield start
    for daemon in reversed(started):
        daemon.stop()


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers any request with the path and headers it received, as JSON."""

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.dumps({"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                           "body": self.rfile.read(length).decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def site_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<h1>the static site</h1>")
    return root


# --- systemd unit ---------------------------------------------------------------------------

# Directives a unit may use (systemd.unit, .service, .exec, .kill, .resource-control): the
# fallback syntax check refuses anything else, as systemd-analyze would warn about it.
UNIT_DIRECTIVES = {
    "Unit": {"Description", "Documentation", "Wants", "Requires", "Requisite", "BindsTo", "PartOf", "After",
             "Before", "Conflicts", "ConditionPathExists", "AssertPathExists", "StartLimitIntervalSec",
             "StartLimitBurst"},
    "Service": {"Type", "User", "Group", "WorkingDirectory", "ExecStartPre", "ExecStart", "ExecStartPost",
                "ExecReload", "ExecStop", "ExecStopPost", "KillSignal", "KillMode", "TimeoutStartSec",
                "TimeoutStopSec", "TimeoutSec", "Restart", "RestartSec", "Environment", "EnvironmentFile",
                "StateDirectory", "LogsDirectory", "RuntimeDirectory", "CacheDirectory", "ConfigurationDirectory",
                "UMask", "NoNewPrivileges", "ProtectSystem", "ReadWritePaths", "ReadOnlyPaths",
                "InaccessiblePaths", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateUsers",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                "ProtectClock", "ProtectHostname", "ProtectProc", "ProcSubset", "RestrictAddressFamilies",
                "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
                "MemoryDenyWriteExecute", "CapabilityBoundingSet", "AmbientCapabilities",
                "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber", "DynamicUser", "LimitNOFILE", "MemoryMax"},
    "Install": {"WantedBy", "RequiredBy", "Alias", "Also"},
}
BOOLEAN_DIRECTIVES = {"NoNewPrivileges", "PrivateTmp", "PrivateDevices", "PrivateUsers", "ProtectKernelTunables",
                      "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
                      "ProtectHostname", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
                      "MemoryDenyWriteExecute", "DynamicUser"}


def parse_unit(text):
    """{section: [(key, value), ...]} of a unit file; AssertionError on a malformed line."""
    sections, current = {}, None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", stripped)
        if header:
            assert header.group(1) not in sections, f"line {number}: section [{header.group(1)}] twice"
            current = sections[header.group(1)] = []
            continue
        assert current is not None, f"line {number}: {line!r} outside any section"
        key, equals, value = stripped.partition("=")
        assert equals and re.fullmatch(r"[A-Za-z]+", key.strip()), f"line {number}: not Key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def check_unit_syntax(text):
    """What we can check without systemd: sections, directive names, booleans, commands."""
    sections = parse_unit(text)
    assert set(sections) == {"Unit", "Service", "Install"}, sorted(sections)
    for section, entries in sections.items():
        for key, value in entries:
            assert key in UNIT_DIRECTIVES[section], f"[{section}] {key}: unknown directive"
            if key in BOOLEAN_DIRECTIVES:
                assert value in ("yes", "no", "true", "false"), f"{key}={value}: not a boolean"
            if key.startswith("Exec"):
                assert value.lstrip("-@:+!").startswith("/"), f"{key}={value}: the command needs an absolute path"
    service = dict(sections["Service"])
    assert service.get("Restart") in ("on-failure", "always", "on-abnormal")
    assert service.get("ProtectSystem") in ("strict", "full", "yes")
    return sections


def install_unit(tmp_path):
    """The unit with /opt/gotrue replaced by an app directory that holds the code (symlinks)
    and a venv/bin/python3 that runs this interpreter. Returns (unit path, app dir)."""
    app = tmp_path / "opt-gotrue"
    (app / "venv" / "bin").mkdir(parents=True)
    for name in ("gotrue.py", "migrate.py", "schema.sql", "templates"):
        os.symlink(os.path.join(ROOT, name), app / name)
    python = app / "venv" / "bin" / "python3"
    python.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    python.chmod(0o755)
    unit = tmp_path / "gotrue.service"
    unit.write_text(adapt(deploy_file("gotrue.service"), ("/opt/gotrue", str(app))))
    return unit, app


def test_systemd_unit_verifies(tmp_path):
    unit, app = install_unit(tmp_path)
    sections = check_unit_syntax(unit.read_text())
    service = sections["Service"]
    keys = dict(service)
    assert keys["User"] == "gotrue" and keys["WorkingDirectory"] == str(app)
    assert keys["NoNewPrivileges"] == "yes" and keys["PrivateTmp"] == "yes"
    assert "/var/lib/gotrue" in keys["ReadWritePaths"].split()
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert [v for k, v in service if k == "ExecStartPre"] == [f"{app}/venv/bin/python3 migrate.py"]

    if not shutil.which("systemd-analyze", path=SEARCH_PATH):
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is required under CI (.ci/run installs systemd)")
        return  # the syntax check above is all we can do here
    verify = [tool("systemd-analyze"), "verify", "--man=no"]
    result = run([*verify, str(unit)])
    # verify exits 0 on unknown keys and bad values too: it only warns. Any word about our unit fails.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "gotrue.service" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr

    # The check has teeth here: a broken copy is reported.
    broken = tmp_path / "broken" / "gotrue.service"
    broken.parent.mkdir()
    broken.write_text(adapt(unit.read_text(), ("Restart=on-failure", "Restart=sometimes"),
                            (f"{app}/venv/bin/python3 gotrue.py", "/nonexistent/python3 gotrue.py")))
    result = run([*verify, str(broken)])
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "/nonexistent/python3" in output and "sometimes" in output, output


def test_systemd_unit_commands_start_reload_and_stop_the_server(tmp_path, daemons):
    """What systemd would run, run by hand: ExecStartPre (migrate) and ExecStart in
    WorkingDirectory with the unit's Environment= and the .env, ExecReload, then KillSignal."""
    unit, app = install_unit(tmp_path)
    service = parse_unit(unit.read_text())["Service"]
    keys = dict(service)
    port = free_port()
    data = tmp_path / "var-lib-gotrue"
    data.mkdir()
    dotenv = app / ".env"
    dotenv.write_text(f"GOTRUE_JWT_SECRET={uuid.uuid4().hex * 2}\nGOTRUE_API_HOST=127.0.0.1\nPORT={port}\n"
                      f"DATABASE_URL={data / 'gotrue.db'}\nGOTRUE_SITE_URL=https://example.com\n"
                      "GOTRUE_BCRYPT_COST=4\n")
    dotenv.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOTRUE_") and k not in ("PORT", "DATABASE_URL")}
    for value in (v for k, v in service if k == "Environment"):
        env.update(item.split("=", 1) for item in shlex.split(value))
    cwd = keys["WorkingDirectory"]

    for command in (v for k, v in service if k == "ExecStartPre"):
        result = run(shlex.split(command), cwd=cwd, env=env, timeout=DEADLINE * 2)
        assert result.returncode == 0, result.stdout + result.stderr
    assert (data / "gotrue.db").exists()

    server = daemons(shlex.split(keys["ExecStart"]), str(tmp_path / "server.log"), cwd=cwd, env=env)
    url = f"http://127.0.0.1:{port}"
    server.wait_http(url + "/health?ready=1", ok=lambda r: r.status_code == 200)
    assert requests.get(url + "/settings", timeout=DEADLINE).json()["autoconfirm"] is False

    reload = shlex.split(keys["ExecReload"].replace("$MAINPID", str(server.proc.pid)))
    assert run(reload).returncode == 0
    r = get_after_sighup(server.proc, url + "/health")  # still serving after the SIGHUP
    assert r.status_code == 200 and server.proc.poll() is None, server.log()

    stop_signal = getattr(signal, keys["KillSignal"])
    assert server.stop(stop_signal, timeout=float(keys["TimeoutStopSec"])) == 0, server.log()


# --- nginx ----------------------------------------------------------------------------------

def nginx_config(tmp_path, upstream_port, port):
    """The shipped server block inside a minimal nginx.conf that keeps everything in tmp_path."""
    prefix = tmp_path / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    snippet = prefix / "site.conf"
    snippet.write_text(adapt(deploy_file("nginx.conf"),
                             ("listen 80;\n", f"listen 127.0.0.1:{port};\n"), ("listen [::]:80;\n", ""),
                             ("root /var/www/example.com;", f"root {site_root(tmp_path)};"),
                             ("http://127.0.0.1:8081", f"http://127.0.0.1:{upstream_port}")))
    temp = "".join(f"    {kind}_temp_path {prefix}/tmp/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = prefix / "nginx.conf"
    conf.write_text(("user root;\n" if os.geteuid() == 0 else "") +  # workers may read tmp_path
                    f"daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
                    f"events {{ worker_connections 64; }}\n"
                    f"http {{\n    access_log {prefix}/access.log;\n{temp}    include {snippet};\n}}\n")
    return [tool("nginx"), "-p", str(prefix), "-c", str(conf)]


def start_nginx(tmp_path, daemons, upstream_port):
    port = free_port()
    cmd = nginx_config(tmp_path, upstream_port, port)
    result = run([*cmd, "-t"])
    assert result.returncode == 0, result.stderr
    daemons(cmd, str(tmp_path / "nginx.out")).wait_http(f"http://127.0.0.1:{port}/")
    return f"http://127.0.0.1:{port}"


def test_nginx_config_is_valid(tmp_path):
    result = run([*nginx_config(tmp_path, free_port(), free_port()), "-t"])
    assert result.returncode == 0 and "syntax is ok" in result.stderr, result.stderr


def test_nginx_proxies_the_identity_path_and_the_client_address(tmp_path, daemons, echo_port):
    site = start_nginx(tmp_path, daemons, echo_port)
    # A client-supplied X-Real-IP is replaced by the address nginx saw.
    r = requests.get(site + "/.netlify/identity/settings?x=1", headers={"X-Real-IP": "203.0.113.9"}, timeout=DEADLINE)
    seen = r.json()
    assert seen["path"] == "/settings?x=1"
    assert seen["headers"]["X-Real-IP"] == "127.0.0.1"
    r = requests.post(site + "/.netlify/identity/token", data={"grant_type": "password"}, timeout=DEADLINE)
    assert r.json()["path"] == "/token" and r.json()["body"] == "grant_type=password"
    # The rest of the site is not proxied; the bare prefix is redirected to the proxied one.
    assert "the static site" in requests.get(site + "/", timeout=DEADLINE).text
    r = requests.get(site + "/.netlify/identity", allow_redirects=False, timeout=DEADLINE)
    assert r.status_code == 301 and r.headers["Location"].endswith("/.netlify/identity/")


def client_failures(server, address):
    """Failed logins gotrue.py counted for a client address (its rate_limits bucket)."""
    rows = server.sql("SELECT hits FROM {rate_limits} WHERE bucket = ?", gotrue.bucket("client", gotrue.NIL_UUID, address))
    return rows[0]["hits"] if rows else 0


def test_nginx_in_front_of_gotrue(tmp_path, daemons, make_server):
    server = make_server("sqlite", GOTRUE_RATE_LIMIT_HEADER="X-Real-IP", GOTRUE_MAILER_AUTOCONFIRM="true")
    site = start_nginx(tmp_path, daemons, int(server.env["PORT"]))
    identity = site + "/.netlify/identity"
    settings = requests.get(identity + "/settings", timeout=DEADLINE)
    assert settings.status_code == 200 and settings.json()["autoconfirm"] is True
    assert settings.json() == server.get("/settings").json()

    email = unique_email()
    assert requests.post(identity + "/signup", json={"email": email, "password": "secret-pw"},
                         timeout=DEADLINE).status_code == 200
    token = requests.post(identity + "/token", data={"grant_type": "password", "username": email,
                                                     "password": "secret-pw"}, timeout=DEADLINE).json()
    r = requests.get(identity + "/user", headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=DEADLINE)
    assert r.status_code == 200 and r.json()["email"] == email

    # gotrue.py counts failed logins per X-Real-IP: through nginx a client cannot pick its own.
    assert_client_address_reaches_gotrue(server, identity)


def assert_client_address_reaches_gotrue(server, identity):
    for n in range(3):
        r = requests.post(identity + "/token", headers={"X-Real-IP": f"203.0.113.{n}"}, timeout=DEADLINE,
                          data={"grant_type": "password", "username": unique_email(), "password": "wrong"})
        assert r.status_code == 400, r.text
    assert client_failures(server, "127.0.0.1") == 3
    assert [client_failures(server, f"203.0.113.{n}") for n in range(3)] == [0, 0, 0]
    # Straight to gotrue.py (no proxy) the header is taken as sent: so it is the header that counts.
    r = server.post("/token", headers={"X-Real-IP": "198.51.100.7"},
                    data={"grant_type": "password", "username": unique_email(), "password": "wrong"})
    assert r.status_code == 400 and client_failures(server, "198.51.100.7") == 1


# --- Caddy ----------------------------------------------------------------------------------

def caddy_config(tmp_path, upstream_port, port):
    """The shipped Caddyfile on a loopback port over plain HTTP, admin API off, state in tmp_path."""
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text("{\n\tadmin off\n}\n\n" + adapt(
        deploy_file("Caddyfile"), ("\nexample.com {", f"\nhttp://127.0.0.1:{port} {{"),
        ("root * /var/www/example.com", f"root * {site_root(tmp_path)}"),
        ("reverse_proxy 127.0.0.1:8081", f"reverse_proxy 127.0.0.1:{upstream_port}")))
    home = tmp_path / "caddy-home"
    home.mkdir()
    env = {**TOOL_ENV, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}
    return caddyfile, env


def start_caddy(tmp_path, daemons, upstream_port):
    port = free_port()
    caddyfile, env = caddy_config(tmp_path, upstream_port, port)
    daemons([tool("caddy"), "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
            str(tmp_path / "caddy.out"), env=env).wait_http(f"http://127.0.0.1:{port}/")
    return f"http://127.0.0.1:{port}"


def test_caddyfile_is_valid(tmp_path):
    caddyfile, env = caddy_config(tmp_path, free_port(), free_port())
    result = run([tool("caddy"), "validate", "--config", str(caddyfile), "--adapter", "caddyfile"], env=env)
    assert result.returncode == 0 and "Valid configuration" in result.stdout + result.stderr, result.stderr
    # ... and the shipped file as it is (automatic HTTPS for example.com) adapts without error.
    result = run([tool("caddy"), "adapt", "--config", os.path.join(DEPLOY, "Caddyfile"), "--adapter", "caddyfile"],
                 env=env)
    assert result.returncode == 0 and '"example.com"' in result.stdout, result.stderr


def test_caddy_proxies_the_identity_path_and_the_client_address(tmp_path, daemons, echo_port):
    site = start_caddy(tmp_path, daemons, echo_port)
    r = requests.get(site + "/.netlify/identity/settings?x=1", headers={"X-Real-IP": "203.0.113.9"}, timeout=DEADLINE)
    seen = r.json()
    assert seen["path"] == "/settings?x=1"
    assert seen["headers"]["X-Real-Ip"] == "127.0.0.1"  # Go writes header names canonically
    r = requests.post(site + "/.netlify/identity/token", data={"grant_type": "password"}, timeout=DEADLINE)
    assert r.json()["path"] == "/token" and r.json()["body"] == "grant_type=password"
    assert "the static site" in requests.get(site + "/", timeout=DEADLINE).text


def test_caddy_in_front_of_gotrue(tmp_path, daemons, make_server):
    server = make_server("sqlite", GOTRUE_RATE_LIMIT_HEADER="X-Real-IP")
    identity = start_caddy(tmp_path, daemons, int(server.env["PORT"])) + "/.netlify/identity"
    settings = requests.get(identity + "/settings", timeout=DEADLINE)
    assert settings.status_code == 200 and settings.json() == server.get("/settings").json()
    assert "external" in settings.json()
    assert_client_address_reaches_gotrue(server, identity)


# --- logrotate ------------------------------------------------------------------------------

def logrotate_config(tmp_path, log_file, pid):
    conf = tmp_path / "logrotate.conf"
    conf.write_text(adapt(deploy_file("logrotate"), ("/var/log/gotrue/gotrue.log", str(log_file)),
                          ("systemctl reload gotrue.service", f"kill -HUP {pid}")))
    conf.chmod(0o644)  # logrotate ignores a config file that others may write
    return conf


def test_logrotate_dry_run(tmp_path):
    log_file = tmp_path / "log" / "gotrue.log"
    log_file.parent.mkdir()
    log_file.write_text("a line\n")
    conf = logrotate_config(tmp_path, log_file, 1)  # -d runs no script: pid 1 is never signalled
    result = run([tool("logrotate"), "-d", "-f", "-s", str(tmp_path / "state"), str(conf)])
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "error" not in output.lower(), output
    assert f"renaming {log_file} to {log_file}.1" in output and "running postrotate script" in output, output
    assert log_file.read_text() == "a line\n" and not os.path.exists(f"{log_file}.1")  # a dry run


def test_logrotate_rotates_the_log_of_a_running_gotrue(tmp_path, make_server):
    log_file = tmp_path / "log" / "gotrue.log"
    log_file.parent.mkdir()
    server = make_server("sqlite", GOTRUE_LOG_FILE=str(log_file))
    assert server.get("/before-rotation").status_code == 404
    wait_until(lambda: "/before-rotation" in log_file.read_text(), "the request in gotrue.py's log")
    conf = logrotate_config(tmp_path, log_file, server.proc.pid)
    rotate = [tool("logrotate"), "-f", "-s", str(tmp_path / "state"), str(conf)]

    result = run(rotate)
    assert result.returncode == 0, result.stdout + result.stderr
    rotated = tmp_path / "log" / "gotrue.log.1"
    assert "/before-rotation" in rotated.read_text()
    assert (log_file.stat().st_mode & 0o777) == 0o640  # `create 0640`

    # After the SIGHUP gotrue.py writes to the new file (the signal is handled asynchronously:
    # ask until a request shows up in one of the two files, then check which one).
    markers = []

    def logged():
        markers.append(f"/after-rotation-{len(markers)}")
        assert get_after_sighup(server.proc, server.url + markers[-1]).status_code == 404
        return any(m in log_file.read_text() + rotated.read_text() for m in markers)
    wait_until(logged, "gotrue.py to log a request after the rotation")
    assert server.proc.poll() is None
    wait_until(lambda: markers[-1] in log_file.read_text() + rotated.read_text(), "the last request logged")
    assert markers[-1] in log_file.read_text(), "gotrue.py still writes to the rotated file"
    assert markers[-1] not in rotated.read_text()

    # A second rotation compresses the first one (delaycompress) and keeps the newest plain.
    assert run(rotate).returncode == 0
    with gzip.open(f"{log_file}.2.gz", "rt") as f:
        assert "/before-rotation" in f.read()
    assert markers[-1] in rotated.read_text()


# --- backups --------------------------------------------------------------------------------

def backup_sh(gotrue_dir, backup_dir, *args):
    """backup.sh as cron runs it: a plain environment, the configuration from GOTRUE_DIR/.env."""
    env = {"PATH": SEARCH_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "GOTRUE_DIR": str(gotrue_dir), "BACKUP_DIR": str(backup_dir), "PYTHON": sys.executable,
           "PYTHONPATH": ROOT}  # the code is in ROOT, the .env in GOTRUE_DIR
    return run(["bash", os.path.join(DEPLOY, "backup.sh"), *args], env=env, timeout=DEADLINE * 2)


def mysql_user_url(server, password):
    """A MariaDB user with a password full of characters that need quoting, owning the server's
    database; the Go DSN of the database as that user."""
    root = urlsplit(server.env["DATABASE_URL"])
    database = root.path.lstrip("/")
    user = "bk_" + uuid.uuid4().hex[:8]
    conn = pymysql.connect(host=root.hostname, port=root.port, user=root.username or "root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", (user, password))
        cur.execute(f"GRANT ALL ON `{database}`.* TO %s@'127.0.0.1'", (user,))
    conn.close()
    return f"{user}:{password}@tcp({root.hostname}:{root.port})/{database}?parseTime=true"


def mysql_root(server):
    root = urlsplit(server.env["DATABASE_URL"])
    return pymysql.connect(host=root.hostname, port=root.port, user=root.username or "root", autocommit=True), \
        root.path.lstrip("/")


@pytest.mark.parametrize("engine", ["sqlite", "mariadb"])
def test_backup_and_restore(engine, make_server, tmp_path):
    for name in ("sqlite3",) if engine == "sqlite" else ("mysqldump", "mysql"):
        tool(name)
    server = make_server(engine, GOTRUE_MAILER_AUTOCONFIRM="true")
    workdir = server.workdir
    if engine == "sqlite":
        database_url = server.env["DATABASE_URL"]
    else:
        # backup.sh reads a Go DSN with a password that must survive the option-file quoting.
        password = "#p@ss:w\"o #rd\\s;x\\y'z "
        database_url = mysql_user_url(server, password)
        database_url = "'" + database_url.replace("\\", "\\\\").replace("'", "\\'") + "'"  # dotenv quoting
    with open(os.path.join(workdir, ".env"), "w") as f:
        f.write(f"GOTRUE_DB_DRIVER={server.env['GOTRUE_DB_DRIVER']}\nDATABASE_URL={database_url}\n"
                f"GOTRUE_JWT_SECRET={server.env['GOTRUE_JWT_SECRET']}\n")
    if engine == "mariadb":
        assert gotrue.database_params(gotrue.load_config(os.path.join(workdir, ".env"), {}))["password"] == password

    kept = [server.signup(unique_email("kept"), data={"full_name": f"Zoë 🦊 {n}"}) for n in range(3)]
    backups = tmp_path / "backups"
    result = backup_sh(workdir, backups)  # while the server runs
    assert result.returncode == 0, result.stdout + result.stderr
    backup = result.stdout.strip()
    assert os.path.dirname(backup) == str(backups) and os.listdir(backups) == [os.path.basename(backup)]
    assert backup.endswith(".db.gz" if engine == "sqlite" else ".sql.gz")
    assert (os.stat(backup).st_mode & 0o777) == 0o600
    later = server.signup(unique_email("later"))  # after the backup: gone after the restore

    # Lose the database, restore the backup, start again.
    server.stop()
    server._db = None
    if engine == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(database_url + suffix):
                os.remove(database_url + suffix)
    else:
        conn, database = mysql_root(server)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE `{database}`")
            cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        conn.close()
    result = backup_sh(workdir, backups, "restore", backup)
    assert result.returncode == 0, result.stdout + result.stderr
    migrate(server.env, workdir)  # as the unit's ExecStartPre does: nothing to do
    server.start()

    for user in kept:
        tokens = server.login(user["email"])
        me = server.get("/user", token=tokens["access_token"]).json()
        assert me["id"] == user["id"] and me["user_metadata"] == user["user_metadata"]
    assert kept[0]["user_metadata"]["full_name"] == "Zoë 🦊 0"
    r = server.post("/token", data={"grant_type": "password", "username": later["email"], "password": "secret-pw"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_backup_keeps_recent_backups_and_refuses_a_bad_restore(tmp_path):
    tool("sqlite3")
    workdir = tmp_path / "app"
    workdir.mkdir()
    database = tmp_path / "gotrue.db"
    env = base_env(str(workdir), {"GOTRUE_DB_DRIVER": "sqlite", "DATABASE_URL": str(database)})
    migrate(env, str(workdir))
    (workdir / ".env").write_text(f"DATABASE_URL={database}\n")
    backups = tmp_path / "backups"
    backups.mkdir()
    old, recent = backups / "gotrue-20200101T000000Z.db.gz", backups / "gotrue-20200201T000000Z.db.gz"
    for path, days in ((old, 15), (recent, 13)):
        path.write_bytes(b"")
        stamp = time.time() - days * 86400 - 3600
        os.utime(path, (stamp, stamp))

    result = backup_sh(workdir, backups)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(backups)) == sorted([recent.name, os.path.basename(result.stdout.strip())])

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    result = backup_sh(workdir, backups, "restore", str(garbage))
    assert result.returncode != 0 and "not a sound SQLite database" in result.stderr, result.stderr
    tables = sqlite3.connect(database).execute("SELECT COUNT(*) FROM schema_migration").fetchone()[0]
    assert tables > 0  # untouched

    # A wrong DATABASE_URL is an error, not an empty backup of a new file.
    (workdir / ".env").write_text(f"DATABASE_URL={tmp_path / 'missing.db'}\n")
    result = backup_sh(workdir, backups)
    assert result.returncode != 0 and "no database at" in result.stderr
    assert not (tmp_path / "missing.db").exists()
