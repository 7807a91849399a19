"""Configuration: upstream's names and types, both spellings where README and code differ, the
.env file under the environment, and bad values failing fast through the real CLI."""

import os
import subprocess
import sys

import pytest
import requests

import gotrue
from conftest import ROOT, base_env, free_port, migrate, wait_until


def config(**env):
    return gotrue.Config(env)


def test_defaults_match_upstream():
    cfg = config()
    assert (cfg.api_port, cfg.jwt_exp, cfg.jwt_admin_group_name, cfg.jwt_refresh_token_lifetime) == (8081, 3600, "admin", 2592000)
    assert (cfg.smtp_port, cfg.smtp_max_frequency, cfg.cookie_key, cfg.cookie_duration) == (587, 900, "nf_jwt", 86400)
    assert (cfg.webhook_retries, cfg.webhook_timeout_sec, cfg.webhook_events) == (3, 5, [])
    assert (cfg.mailer_urlpaths_invite, cfg.mailer_invite_max_age, cfg.mailer_confirmation_max_age) == ("/", 604800, 86400)
    assert (cfg.db_driver, cfg.bcrypt_cost, cfg.tracing_service_name) == ("sqlite", 10, "gotrue")


@pytest.mark.parametrize("env, attribute, value", [
    ({"PORT": "9999"}, "api_port", 9999),
    ({"GOTRUE_API_PORT": "7000", "PORT": "9999"}, "api_port", 7000),       # the prefixed name wins
    ({"DATABASE_URL": "x.db"}, "db_database_url", "x.db"),
    ({"LOG_LEVEL": "debug"}, "log_level", "debug"),                         # README: unprefixed
    ({"REQUEST_ID_HEADER": "X-Request-ID"}, "api_request_id_header", "X-Request-ID"),
    ({"GOTRUE_WEBHOOK_TIMEOUT_SEC": "7"}, "webhook_timeout_sec", 7),        # README spelling
    ({"GOTRUE_WEBHOOK_TIMEOUTSEC": "8"}, "webhook_timeout_sec", 8),         # upstream's code
    ({"GOTRUE_SERVICE_NAME": "svc"}, "tracing_service_name", "svc"),        # README spelling
    ({"GOTRUE_TRACING_SERVICE_NAME": "identity"}, "tracing_service_name", "identity"),
    ({"GOTRUE_SMTP_MAX_FREQUENCY": "900"}, "smtp_max_frequency", 900),      # README: seconds
    ({"GOTRUE_SMTP_MAX_FREQUENCY": "15m"}, "smtp_max_frequency", 900),      # upstream: Go duration
    ({"GOTRUE_SMTP_MAX_FREQUENCY": "1h30m"}, "smtp_max_frequency", 5400),
    ({"GOTRUE_MAILER_URL_PATHS_INVITE": "/i"}, "mailer_urlpaths_invite", "/i"),
    ({"GOTRUE_JWT_EXP": "0x10"}, "jwt_exp", 16),                            # Go's base detection
    ({"GOTRUE_JWT_EXP": "0"}, "jwt_exp", 3600),                             # zero means default
    ({"GOTRUE_MAILER_AUTOCONFIRM": "T"}, "mailer_autoconfirm", True),
    ({"GOTRUE_WEBHOOK_EVENTS": "validate,signup, ,login"}, "webhook_events", ["validate", "signup", "login"]),
    ({"GOTRUE_TRACING_TAGS": "tag1:value1,tag2:value2"}, "tracing_tags", {"tag1": "value1", "tag2": "value2"}),
    ({"GOTRUE_JWT_DEFAULT_GROUP_NAME": "  member "}, "jwt_default_group_name", "member"),
    ({"GOTRUE_DB_DRIVER": "mysql", "DATABASE_URL": "root@localhost/gotrue"}, "db_driver", "mysql"),
])
def test_names_aliases_and_types(env, attribute, value):
    assert getattr(config(**env), attribute) == value


@pytest.mark.parametrize("url, expected", [
    ("root@localhost/gotrue", {"user": "root", "password": "", "host": "localhost", "port": 3306, "database": "gotrue"}),
    ("u:p@tcp(db.example:3307)/gt?parseTime=true&multiStatements=true",
     {"user": "u", "password": "p", "host": "db.example", "port": 3307, "database": "gt"}),
    ("mysql://u:p%40ss@10.0.0.5:3308/gt", {"user": "u", "password": "p@ss", "host": "10.0.0.5", "port": 3308, "database": "gt"}),
    ("u:p@ss@tcp(127.0.0.1)/gt", {"user": "u", "password": "p@ss", "host": "127.0.0.1", "port": 3306, "database": "gt"}),
    ("u@unix(/run/mysqld.sock)/gt", {"user": "u", "password": "", "unix_socket": "/run/mysqld.sock", "database": "gt"}),
])
def test_mysql_url_forms(url, expected):
    params = gotrue.database_params(config(GOTRUE_DB_DRIVER="mysql", DATABASE_URL=url))
    assert {k: params[k] for k in expected} == expected


def test_sqlite_url_forms():
    assert gotrue.database_params(config(DATABASE_URL="sqlite:///data/x.db")) == {"path": "data/x.db"}
    assert gotrue.database_params(config(DATABASE_URL="/var/lib/gotrue.db")) == {"path": "/var/lib/gotrue.db"}


def test_env_file_is_read_and_environment_wins(tmp_path):
    env_file = tmp_path / "site.env"
    env_file.write_text("GOTRUE_JWT_AUD=from-file\nGOTRUE_JWT_EXP=100\nGOTRUE_SITE_URL=https://file.example\n")
    cfg = gotrue.load_config(str(env_file), environ={"GOTRUE_JWT_EXP": "200"})
    assert (cfg.jwt_aud, cfg.jwt_exp, cfg.site_url) == ("from-file", 200, "https://file.example")


def run_cli(*args, env=None, cwd=None, timeout=60):
    base = {k: v for k, v in os.environ.items() if not k.startswith("GOTRUE_") and k not in ("PORT", "DATABASE_URL")}
    return subprocess.run([sys.executable, os.path.join(ROOT, "gotrue.py"), *args], env={**base, **(env or {})},
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("env, names", [
    ({"GOTRUE_JWT_EXP": "abc"}, "GOTRUE_JWT_EXP"),
    ({"GOTRUE_DB_DRIVER": "postgres"}, "GOTRUE_DB_DRIVER"),
    ({"GOTRUE_DB_DRIVER": "mysql", "DATABASE_URL": "root@localhost"}, "DATABASE_URL"),
    ({"GOTRUE_DB_DRIVER": "mysql", "DATABASE_URL": "u@tcp(h:notaport)/db"}, "DATABASE_URL"),
    ({"GOTRUE_MAILER_AUTOCONFIRM": "yes please"}, "GOTRUE_MAILER_AUTOCONFIRM"),
    ({"GOTRUE_SMTP_MAX_FREQUENCY": "soon"}, "GOTRUE_SMTP_MAX_FREQUENCY"),
    ({"GOTRUE_TRACING_TAGS": "novalue"}, "GOTRUE_TRACING_TAGS"),
    ({"LOG_LEVEL": "loud"}, "GOTRUE_LOG_LEVEL"),
    ({"GOTRUE_SITE_URL": "not a url"}, "GOTRUE_SITE_URL"),
    ({"PORT": "abc"}, "PORT:"),                                        # named as the user spelled it
    ({"GOTRUE_JWT_EXP": "-5"}, "GOTRUE_JWT_EXP"),                      # tokens born expired
    ({"GOTRUE_JWT_REFRESH_TOKEN_LIFETIME": "-1"}, "GOTRUE_JWT_REFRESH_TOKEN_LIFETIME"),
    ({"GOTRUE_WEBHOOK_EVENTS": "signup,Login"}, "GOTRUE_WEBHOOK_EVENTS"),  # upstream ignored it silently
    ({"DATABASE_URL": "root@tcp(127.0.0.1:3306)/gotrue"}, "is not a SQLite path"),  # Go DSN, driver left at sqlite
    ({"GOTRUE_API_WORKERS": "0"}, "GOTRUE_API_WORKERS"),
    ({"GOTRUE_EXTERNAL_OIDC_NAME": "github"}, "GOTRUE_EXTERNAL_OIDC_NAME"),
])
def test_bad_config_fails_fast_with_one_clear_line(tmp_path, env, names):
    result = run_cli(env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], result.stderr


def test_missing_config_file_is_an_error(tmp_path):
    result = run_cli("-c", str(tmp_path / "nope.env"), cwd=tmp_path)
    assert result.returncode == 1 and "nope.env" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_commands(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("serve", "migrate", "admin", "version"):
        assert command in result.stdout


def test_server_refuses_to_start_without_schema(tmp_path):
    result = run_cli(env={"GOTRUE_JWT_SECRET": "x" * 40, "PORT": str(free_port())}, cwd=tmp_path)
    assert result.returncode == 1
    assert "python migrate.py" in result.stderr and "Traceback" not in result.stderr


def test_fresh_start_generates_and_keeps_a_jwt_secret(tmp_path):
    """Nothing configured: the server starts on SQLite, makes a secret, saves it to .env, and
    uses the same one after a restart (tokens stay valid)."""
    env = {k: v for k, v in base_env(str(tmp_path), {}).items()
           if k not in ("GOTRUE_JWT_SECRET", "GOTRUE_SITE_URL", "GOTRUE_API_HOST")}
    migrate(env, str(tmp_path))
    secrets_seen, outputs = [], []
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "gotrue.py")], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{env['PORT']}/health"
            wait_until(lambda: _answers(url), "the server to start")
        finally:
            proc.terminate()
            output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output  # SIGTERM is a clean stop
        secret = gotrue.load_config(str(tmp_path / ".env"), environ={}).jwt_secret
        assert len(secret) >= 32
        secrets_seen.append(secret)
        assert secret not in output  # announced, never printed
        outputs.append(output)
    assert "GOTRUE_JWT_SECRET was not set" in outputs[0]  # the first start says so loudly
    assert "GOTRUE_JWT_SECRET was not set" not in outputs[1]  # the restart finds it in .env
    assert secrets_seen[0] == secrets_seen[1]
    assert oct(os.stat(tmp_path / ".env").st_mode & 0o777) == "0o600"


def _answers(url):
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def test_serving_an_unmigrated_sqlite_path_creates_no_file(tmp_path):
    result = run_cli(env={"DATABASE_URL": str(tmp_path / "fresh.db"), "GOTRUE_JWT_SECRET": "x" * 40}, cwd=tmp_path)
    assert result.returncode == 1 and "migrate.py" in result.stderr, result.stderr
    assert not (tmp_path / "fresh.db").exists()


def test_a_port_in_use_is_one_line(tmp_path):
    import socket
    with socket.create_server(("127.0.0.1", 0)) as taken:
        env = {"PORT": str(taken.getsockname()[1]), "GOTRUE_API_HOST": "127.0.0.1", "GOTRUE_JWT_SECRET": "x" * 40,
               "DATABASE_URL": str(tmp_path / "gt.db")}
        assert run_cli("migrate", env=env, cwd=tmp_path).returncode == 0
        result = run_cli(env=env, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("gotrue.py: cannot listen on 127.0.0.1:"), result.stderr
