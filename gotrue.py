#!/usr/bin/env python3
"""gotrue.py: a drop-in, single-file Python replacement for Netlify's GoTrue.

Read it top to bottom: configuration, database, users and tokens, mail, webhooks, the HTTP
layer and the command line, each building only on what came before it.

    python migrate.py      # create or upgrade the schema (never done by the server itself)
    python gotrue.py       # serve the API with waitress
"""

import argparse
import base64
import collections
import contextlib
import copy
import datetime as dt
import email.policy
import email.utils
import hashlib
import hmac
import html
import ipaddress
import itertools
import json
import logging
import math
import os
import queue
import random
import re
import secrets
import signal
import socket
import sqlite3
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from email.message import EmailMessage
from http.client import HTTPConnection, HTTPSConnection

import bcrypt
import bottle
import jwt
import pymysql
import waitress.channel
import waitress.server
import waitress.task
import waitress.wasyncore
from dotenv import dotenv_values

VERSION = "0.1.0"
NIL_UUID = "00000000-0000-0000-0000-000000000000"
HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_VERSION = "20261203000002"  # the newest migration in schema.sql; the server requires it
log = logging.getLogger("gotrue")

# PyJWT warns about short HMAC keys on every call; we warn once at start instead.
warnings.filterwarnings("ignore", module="jwt")


# ============================================================================================
# Configuration
# ============================================================================================
# Upstream's variable names (GOTRUE_ prefix), types and defaults. Each row: name without the
# prefix, type, default, then other spellings tried when the main one is unset: the bare names
# upstream and its README accept, and the README's spellings where upstream's code differs.

class ConfigError(Exception):
    """Bad configuration: reported as one line naming the variable, before anything starts."""


PROVIDERS = ("bitbucket", "github", "gitlab", "google", "facebook", "oidc")  # oidc: any OpenID provider (ours)
MAIL_KINDS = ("invite", "confirmation", "recovery", "email_change", "signup_attempt")  # the last is ours
LOG_LEVELS = {"panic": logging.CRITICAL, "fatal": logging.CRITICAL, "error": logging.ERROR,
              "warn": logging.WARNING, "warning": logging.WARNING, "info": logging.INFO,
              "debug": logging.DEBUG, "trace": logging.DEBUG}

SETTINGS = [
    ("API_HOST", str, ""),
    ("API_PORT", int, 8081, "PORT"),
    ("API_ENDPOINT", str, ""),
    ("API_REQUEST_ID_HEADER", str, "", "REQUEST_ID_HEADER"),
    ("API_EXPORT_SECRET", str, ""),
    ("API_THREADS", int, 8),                      # ours: waitress worker threads
    ("API_WORKERS", int, 1),                      # ours: processes serving the one port
    ("API_CPU_PINNING", bool, True),              # ours: each worker process's threads on one CPU
    ("SHUTDOWN_TIMEOUT_SEC", int, 10),             # ours: how long SIGTERM waits for requests under way
    ("DB_DRIVER", str, "sqlite"),                 # ours: sqlite by default, mysql for production
    ("DB_DATABASE_URL", str, "gotrue.db", "DATABASE_URL"),
    ("DB_NAMESPACE", str, ""),
    ("DB_MIGRATIONS_PATH", str, "./migrations"),  # parsed for compatibility; schema.sql is ours
    ("DB_CONNECT_TIMEOUT_SEC", int, 5),            # ours: per MySQL host tried
    ("DB_READ_TIMEOUT_SEC", int, 30),              # ours: a MySQL server that stops answering
    ("OPERATOR_TOKEN", str, ""),                  # optional here; upstream requires it
    ("MULTIINSTANCEMODE", bool, False),
    ("RATE_LIMIT_HEADER", str, ""),
    ("LOG_LEVEL", str, "info", "LOG_LEVEL"),
    ("LOG_FILE", str, ""),
    ("LOG_FORMAT", str, "logfmt"),                 # ours: logfmt or json
    ("LOG_DISABLE_COLORS", bool, False),
    ("LOG_QUOTE_EMPTY_FIELDS", bool, False),
    ("LOG_TSFORMAT", str, ""),
    ("LOG_FIELDS", "map", {}),
    ("TRACING_ENABLED", bool, False),
    ("TRACING_HOST", str, ""),
    ("TRACING_PORT", str, ""),
    ("TRACING_SERVICE_NAME", str, "gotrue", "GOTRUE_SERVICE_NAME"),
    ("TRACING_TAGS", "map", {}),
    ("SITE_URL", str, ""),
    ("JWT_SECRET", str, ""),
    ("JWT_EXP", int, 3600),
    ("JWT_AUD", str, ""),
    ("JWT_ADMIN_GROUP_NAME", str, "admin"),
    ("JWT_DEFAULT_GROUP_NAME", str, ""),
    ("JWT_REFRESH_TOKEN_LIFETIME", int, 2592000),
    ("JWT_REFRESH_TOKEN_REUSE_INTERVAL", int, 10),  # ours: a rotated token replayed within it revokes nothing
    ("SECURITY_HIDE_EXISTING_USERS", bool, False),  # ours: /signup does not tell that an address is taken
    ("SECURITY_LOGIN_MAX_FAILURES", int, 5),        # ours: failed logins of one account before a back-off
    ("SECURITY_CLIENT_MAX_FAILURES", int, 30),      # ours: failed logins of one client before a back-off
    ("BCRYPT_COST", int, 10),                     # ours: lower it only to speed up tests
    ("SMTP_HOST", str, ""),
    ("SMTP_PORT", int, 587),
    ("SMTP_USER", str, ""),
    ("SMTP_PASS", str, ""),
    ("SMTP_ADMIN_EMAIL", str, ""),
    ("SMTP_MAX_FREQUENCY", "duration", 900.0),
    ("SMTP_TIMEOUT_SEC", int, 10),                # ours
    ("MAILER_AUTOCONFIRM", bool, False),
    ("MAILER_CONFIRMATION_MAX_AGE", "duration", 86400.0),
    ("MAILER_RECOVERY_MAX_AGE", "duration", 86400.0),
    ("MAILER_INVITE_MAX_AGE", "duration", 604800.0),
    *[(f"MAILER_{part}_{kind.upper()}", str, default, f"GOTRUE_MAILER_{alias}_{kind.upper()}")
      for part, alias, default in (("SUBJECTS", "SUBJECT", ""), ("TEMPLATES", "TEMPLATE", ""),
                                   ("URLPATHS", "URL_PATHS", "/"))
      for kind in MAIL_KINDS],
    *[(f"EXTERNAL_{p.upper()}_{field}", kind, default)
      for p in PROVIDERS
      for field, kind, default in (("ENABLED", bool, False), ("CLIENT_ID", str, ""),
                                   ("SECRET", str, ""), ("REDIRECT_URI", str, ""), ("URL", str, ""))],
    ("EXTERNAL_OIDC_NAME", str, "oidc"),             # ours: how /settings and /authorize name it
    ("EXTERNAL_OIDC_SCOPES", str, "openid email profile"),
    ("EXTERNAL_TIMEOUT_SEC", int, 10),               # ours: bounds each call to a provider
    ("EXTERNAL_EMAIL_DISABLED", bool, False),
    ("EXTERNAL_SAML_ENABLED", bool, False),
    ("EXTERNAL_SAML_METADATA_URL", str, "", "METADATA_URL"),
    ("EXTERNAL_SAML_API_BASE", str, "", "API_BASE"),
    ("EXTERNAL_SAML_NAME", str, ""),
    ("EXTERNAL_SAML_SIGNING_CERT", str, "", "SIGNING_CERT"),
    ("EXTERNAL_SAML_SIGNING_KEY", str, "", "SIGNING_KEY"),
    ("EXTERNAL_REDIRECTURL", str, ""),
    ("DISABLE_SIGNUP", bool, False),
    ("WEBHOOK_URL", str, ""),
    ("WEBHOOK_SECRET", str, ""),
    ("WEBHOOK_RETRIES", int, 3),
    ("WEBHOOK_TIMEOUT_SEC", int, 5, "GOTRUE_WEBHOOK_TIMEOUTSEC"),
    ("WEBHOOK_EVENTS", "list", []),
    ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", bool, False),  # ours: loopback/private targets are opt-in
    ("COOKIE_KEY", str, "nf_jwt"),
    ("COOKIE_DURATION", int, 86400),
    ("ADMIN_UI_ENABLED", bool, False),               # ours: the admin console at /admin/ui
]

WEBHOOK_EVENTS = ("validate", "signup", "login", "usermodified", "userdeleted")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def secure_url(url):
    """HTTPS, or plain HTTP to this machine's loopback (how tests and local setups run)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    try:
        return parts.scheme == "http" and (parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname or "").is_loopback)
    except ValueError:
        return False


def parse_duration(text):
    """Go's duration syntax (`15m`, `1h30m`, `900s`) or, as the README documents, bare seconds."""
    text = text.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text.lstrip("-"))
    if not parts or "".join(n + u for n, u in parts) != text.lstrip("-"):
        raise ValueError(f"invalid duration {text!r} (use seconds or Go syntax such as 15m)")
    total = sum(float(n) * DURATION_UNITS[u] for n, u in parts)
    return -total if text.startswith("-") else total


def parse_setting(kind, text):
    if kind is str:
        return text
    if kind is bool:
        if text in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if text in ("0", "f", "F", "FALSE", "false", "False"):
            return False
        raise ValueError(f"{text!r} is not a boolean (use true or false)")
    if kind is int:
        try:
            return int(text, 0)
        except ValueError:
            try:
                return int(text, 10)  # Go also reads a leading zero as octal; we keep decimals
            except ValueError:
                raise ValueError(f"{text!r} is not a whole number") from None
    if kind == "duration":
        return parse_duration(text)
    if kind == "list":
        return [item for item in text.split(",") if item.strip()]
    if kind == "map":
        items = {}
        for item in text.split(","):
            key, sep, value = item.partition(":")
            if not sep or ":" in value:
                raise ValueError(f"invalid map item: {item!r}")
            items[key] = value
        return items
    raise AssertionError(kind)


class Config:
    """Settings as attributes, lower-cased without the prefix: GOTRUE_JWT_EXP -> cfg.jwt_exp.
    In multi-instance mode each instance gets a copy with its own site settings."""

    instance_id = NIL_UUID

    def __init__(self, environ):
        self.env_file = None
        for name, kind, default, *aliases in SETTINGS:
            raw, spelled = None, "GOTRUE_" + name
            for key in ("GOTRUE_" + name, *aliases):
                if environ.get(key, "") != "":  # an empty value counts as unset
                    raw, spelled = environ[key], key
                    break
            try:
                value = default if raw is None else parse_setting(kind, raw)
            except ValueError as e:
                raise ConfigError(f"{spelled}: {e}") from None
            setattr(self, name.lower(), value)
        self.apply_defaults()
        self.validate()

    def apply_defaults(self):
        """Upstream's post-load defaults: zero (or negative) values fall back to the defaults."""
        if self.jwt_exp == 0:
            self.jwt_exp = 3600
        if self.jwt_refresh_token_lifetime == 0:
            self.jwt_refresh_token_lifetime = 2592000
        if self.smtp_max_frequency == 0:
            self.smtp_max_frequency = 900.0
        for kind, default in (("confirmation", 86400.0), ("recovery", 86400.0), ("invite", 604800.0)):
            if getattr(self, f"mailer_{kind}_max_age") <= 0:
                setattr(self, f"mailer_{kind}_max_age", default)
        if self.cookie_duration == 0:
            self.cookie_duration = 86400
        if self.webhook_retries == 0:
            self.webhook_retries = 3
        if self.webhook_timeout_sec <= 0:
            self.webhook_timeout_sec = 5
        self.jwt_admin_group_name = self.jwt_admin_group_name or "admin"
        self.cookie_key = self.cookie_key or "nf_jwt"
        self.jwt_default_group_name = self.jwt_default_group_name.strip()
        self.db_driver = {"sqlite3": "sqlite", "mariadb": "mysql"}.get(self.db_driver.lower(),
                                                                       self.db_driver.lower())

    def validate(self):
        if self.jwt_exp < 0:
            raise ConfigError("GOTRUE_JWT_EXP: must be a positive number of seconds (tokens would be born expired)")
        if self.jwt_refresh_token_lifetime < 0:
            raise ConfigError("GOTRUE_JWT_REFRESH_TOKEN_LIFETIME: must not be negative")
        unknown = set(self.webhook_events) - set(WEBHOOK_EVENTS)
        if unknown:
            raise ConfigError(f"GOTRUE_WEBHOOK_EVENTS: unknown event {sorted(unknown)[0]!r} "
                              f"(known: {', '.join(WEBHOOK_EVENTS)})")
        if self.db_driver not in ("sqlite", "mysql"):
            raise ConfigError(f"GOTRUE_DB_DRIVER: unknown driver {self.db_driver!r} (use sqlite or mysql)")
        if self.log_format not in ("logfmt", "json"):
            raise ConfigError(f"GOTRUE_LOG_FORMAT: {self.log_format!r} is not logfmt or json")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"GOTRUE_LOG_LEVEL: unknown level {self.log_level!r}")
        if self.multiinstancemode and not self.operator_token:
            raise ConfigError("Operator token secret is required")
        if not 0 < self.api_port < 65536:
            raise ConfigError(f"GOTRUE_API_PORT: {self.api_port} is not a port number")
        if not 4 <= self.bcrypt_cost <= 31:
            raise ConfigError("GOTRUE_BCRYPT_COST: must be between 4 and 31")
        if self.api_threads < 1:
            raise ConfigError("GOTRUE_API_THREADS: must be at least 1")
        if self.api_workers < 1:
            raise ConfigError("GOTRUE_API_WORKERS: must be at least 1")
        if self.external_timeout_sec < 1:
            raise ConfigError("GOTRUE_EXTERNAL_TIMEOUT_SEC: must be at least 1")
        oidc = self.external_oidc_name.lower()
        if oidc != "oidc" and oidc in (*PROVIDERS, "email", "saml"):
            raise ConfigError(f"GOTRUE_EXTERNAL_OIDC_NAME: {oidc!r} is the name of another provider")
        if self.external_oidc_url and not secure_url(self.external_oidc_url):
            raise ConfigError("GOTRUE_EXTERNAL_OIDC_URL: must be https (http only on loopback)")
        for name in ("JWT_REFRESH_TOKEN_REUSE_INTERVAL", "SECURITY_LOGIN_MAX_FAILURES", "SECURITY_CLIENT_MAX_FAILURES"):
            if getattr(self, name.lower()) < 0:
                raise ConfigError(f"GOTRUE_{name}: must not be negative")
        if self.site_url and not urllib.parse.urlsplit(self.site_url).netloc:
            raise ConfigError(f"GOTRUE_SITE_URL: {self.site_url!r} is not an absolute URL")
        database_params(self)  # raises ConfigError for a malformed DATABASE_URL


def load_config(env_file=None, environ=None, multi=False):
    """The .env file (or -c FILE) under the process environment: environment values win.
    `multi` (the `multi` command) switches multi-instance mode on."""
    path = env_file or ".env"
    if env_file and not os.path.isfile(env_file):
        raise ConfigError(f"configuration file {env_file} not found")
    values = {k: v for k, v in dotenv_values(path).items() if v is not None} if os.path.isfile(path) else {}
    values.update(os.environ if environ is None else environ)
    if multi:
        values["GOTRUE_MULTIINSTANCEMODE"] = "true"
    cfg = Config(values)
    cfg.env_file = os.path.abspath(path)
    return cfg


def ensure_jwt_secret(cfg):
    """A fresh install gets its own random secret, saved to .env so that restarts keep tokens."""
    if cfg.jwt_secret:
        if len(cfg.jwt_secret.encode()) < 32:
            log.warning("GOTRUE_JWT_SECRET is shorter than 32 bytes; use a long random value")
        return
    cfg.jwt_secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(cfg.env_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"\n# generated by gotrue.py on first start; keep it secret\nGOTRUE_JWT_SECRET={cfg.jwt_secret}\n")
    except OSError as e:
        raise ConfigError(f"GOTRUE_JWT_SECRET is not set and cannot be saved to {cfg.env_file} ({e.strerror}): "
                          "set it in the environment or the .env file") from None
    log.warning("*** GOTRUE_JWT_SECRET was not set: generated a random secret and saved it to %s. "
                "Keep that file private; set GOTRUE_JWT_SECRET yourself when several servers share "
                "a database. ***", cfg.env_file)


LINES = None  # the LineHandler that logging writes to: the request log line goes to it directly


class LineHandler(logging.Handler):
    """Each record is one line in an append-mode file (or stderr). While a server runs, threads
    only queue their info lines (a line per request) and one writer thread writes what has
    queued, WRITE_EVERY seconds apart, in one os.write: a worker never waits for the disk, and
    never gives up the GIL to write (under load, that hand-over cost more than the line).
    Warnings and errors, and every line outside a server (CLI, start-up, stop), are written at
    once, after what was queued before them."""

    WRITE_EVERY = 0.05

    def __init__(self, path=None):
        super().__init__()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640) if path else sys.stderr.fileno()
        self.owned = bool(path)
        self.pending, self.writer, self.writing = collections.deque(), None, threading.Lock()

    def handle(self, record):
        if self.filter(record):
            self.emit(record)
        return record

    def emit(self, record):
        try:
            self.put(self.format(record), urgent=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)

    def put(self, line, urgent=False):
        if self.writer is None or urgent:
            self.flush(line)
        else:
            self.pending.append(line)

    def write(self, lines):
        data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        with contextlib.suppress(OSError):
            while data:  # a signal can cut a write to a pipe short
                data = data[os.write(self.fd, data):]

    def flush(self, *lines):
        """Write what is queued, then `lines`."""
        with self.writing:
            queued = [self.pending.popleft() for _ in range(len(self.pending))]
            if queued or lines:
                self.write(queued + list(lines))

    def start_writer(self):
        stop = threading.Event()

        def write_until_stopped():
            while not stop.wait(self.WRITE_EVERY):
                self.flush()
        self.writer = threading.Thread(target=write_until_stopped, name="log-writer", daemon=True)
        self.writer.stop = stop
        self.writer.start()

    def stop_writer(self):
        """Write what is queued; from now on each line is written at once."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.stop.set()
            writer.join()
        self.flush()

    def write_line(self, level, message, fields):
        """A line in the format's own shape, without building a LogRecord: the request log line,
        written once per request, is a fifth of a cheap request's time through `logging`."""
        stamp = time.time()
        second = int(stamp)
        if second != self.second:
            self.second, self.second_text = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        when = f"{self.second_text},{int(stamp % 1 * 1000):03d}"
        if self.json:
            self.put(json.dumps({"time": when, "level": level, "msg": message, **fields}, ensure_ascii=False))
        else:
            self.put(" ".join([f"time={when} level={level} msg={message}", *(f"{k}={v}" for k, v in fields.items())]))

    second, second_text, json = None, "", False

    def close(self):
        self.stop_writer()
        if self.owned:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.owned = False
        super().close()


class JSONFormatter(logging.Formatter):
    def format(self, record):
        return json.dumps({"time": self.formatTime(record), "level": record.levelname, "msg": record.getMessage()},
                          ensure_ascii=False)


def setup_logging(cfg):
    """Also called on SIGHUP: a LOG_FILE moved away by logrotate is opened afresh."""
    handler = LineHandler(cfg.log_file or None)
    handler.json = cfg.log_format == "json"
    handler.setFormatter(JSONFormatter() if handler.json else
                         logging.Formatter("time=%(asctime)s level=%(levelname)s msg=%(message)s"))
    root = logging.getLogger()
    global LINES
    serving = LINES is not None and LINES.writer is not None
    LINES = handler
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(LOG_LEVELS[cfg.log_level.lower()])
    if serving:
        handler.start_writer()
    # waitress warns of its queue depth on every request that waits for a thread: noise that
    # cost more than the request under load
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


# --- tracing ---------------------------------------------------------------------------------
# Datadog, through Datadog's own ddtrace (optional: requirements-tracing.txt). Off, it costs a
# test of TRACER against None where a span could start, and nothing else.

TRACER = None  # ddtrace's tracer, when GOTRUE_TRACING_ENABLED


def setup_tracing(cfg):
    """ddtrace reads its agent, service and tags from the environment when it is imported."""
    global TRACER
    if not cfg.tracing_enabled:
        return
    os.environ["DD_TRACE_AGENT_URL"] = f"http://{cfg.tracing_host or 'localhost'}:{cfg.tracing_port or 8126}"
    os.environ["DD_SERVICE"] = cfg.tracing_service_name
    os.environ["DD_TAGS"] = ",".join(f"{k}:{v}" for k, v in cfg.tracing_tags.items())
    os.environ["DD_TRACE_LOG_STREAM_HANDLER"] = "false"  # its messages go through our handler, in our format
    try:
        from ddtrace.trace import tracer
    except ImportError:
        raise ConfigError("GOTRUE_TRACING_ENABLED: the ddtrace package is missing "
                          "(pip install -r requirements-tracing.txt)") from None
    TRACER = tracer


@contextlib.contextmanager
def traced(name, resource, **tags):
    """A child span of the request's, when tracing is on."""
    if TRACER is None:
        yield
        return
    span = TRACER.trace(name, resource=resource)
    for key, value in tags.items():
        span.set_tag(key.replace("_", "."), value)
    try:
        yield
    except BaseException as e:  # the error's kind only: a database's message may quote an address
        span.error = 1
        span.set_tag("error.type", type(e).__name__)
        raise
    finally:
        span.finish()


# --- CPU placement -------------------------------------------------------------------------
# CPython runs Python on one core at a time (the GIL), and a thread gives the GIL up on every
# database statement. When a process's threads are spread over cores, each of those hand-overs
# wakes a thread on another core: on a small VM that cost more than the requests' own work (half
# the server's CPU went to the scheduler). So each worker process keeps its threads on one CPU
# (API_CPU_PINNING, ours), as uWSGI's cpu-affinity does; bcrypt, which runs without the GIL for
# ~75 ms, may use every CPU, so logins still use them all.

PLACEMENT = None  # ({home CPU}, {every CPU allowed}) of this worker process, when pinned


def allowed_cpus():
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []


def current_cpu_slot():
    """The CPU this process runs on now (field 39 of /proc/self/stat), as a position among those
    it may use; 0 when unknown. Workers are placed from there: where the kernel started the
    server, so that two servers on one machine are not stacked on one CPU."""
    try:
        with open("/proc/self/stat") as f:
            return allowed_cpus().index(int(f.read().rsplit(")", 1)[1].split()[36]))
    except (OSError, ValueError, IndexError):
        return 0


def pin_to_one_cpu(cfg, slot):
    """This worker on the slot-th CPU it may use (modulo their number); threads started
    afterwards inherit it."""
    global PLACEMENT
    allowed = allowed_cpus()
    if not cfg.api_cpu_pinning or len(allowed) < 2:
        return
    home = {allowed[slot % len(allowed)]}
    with contextlib.suppress(OSError):  # a CPU set that changed meanwhile: stay where we are
        os.sched_setaffinity(0, home)
        PLACEMENT = (home, set(allowed))


@contextlib.contextmanager
def on_every_cpu():
    """The calling thread may run on any allowed CPU meanwhile (Linux sets affinity per thread).
    Placement only ever costs speed: a CPU set changed under us (a cgroup) is not an error."""
    if PLACEMENT is None:
        yield
        return
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, PLACEMENT[1])
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, PLACEMENT[0])


# ============================================================================================
# Database
# ============================================================================================
# One query helper over two engines. SQL is written once, with `?` placeholders and table
# names in braces ({users}); the namespace prefix and the driver's placeholder style are
# filled in once per statement and cached. Each thread keeps its own connection.

MYSQL_CONFLICT = (1213, 1205)  # deadlock (Galera's certification failure too), lock wait timeout
TABLES = ("users", "refresh_tokens", "instances", "audit_log_entries", "user_counts", "rate_limits",
          "one_time_tokens")
MYSQL_LOST = (0, 2006, 2013, 2055)  # connection gone: reconnect and try once more


def database_params(cfg):
    """Connection parameters from DATABASE_URL, in any of the forms the README promises."""
    url = cfg.db_database_url
    if cfg.db_driver == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
        if not path or path.startswith(("mysql:", "tcp(")) or re.search(r"@(tcp|unix)\(", path):
            raise ConfigError(f"DATABASE_URL: {url!r} is not a SQLite path")
        return {"path": path}
    # go-sql-driver DSN `user:pass@tcp(host:port)/db?x=y`, the README's `root@localhost/gotrue`,
    # and `mysql://user:pass@host:port/db`: all split at the last '/' and the last '@'.
    is_url = url.startswith("mysql://")
    rest = url[len("mysql://"):] if is_url else url
    head, slash, tail = rest.rpartition("/")
    database = tail.split("?")[0]
    if not slash or not database:
        raise ConfigError(f"DATABASE_URL: {url!r} names no database (expected user:pass@tcp(host:3306)/dbname)")
    creds, _, addr = head.rpartition("@")
    user, _, password = creds.partition(":")
    params = {"user": urllib.parse.unquote(user) if is_url else user or "root",
              "password": urllib.parse.unquote(password) if is_url else password,
              "database": urllib.parse.unquote(database), "host": "127.0.0.1", "port": 3306}
    match = re.fullmatch(r"(?:(tcp|unix)\((.*)\)|(.*))", addr)
    if match.group(1) == "unix":
        params["unix_socket"], params["hosts"] = match.group(2), [("localhost", 3306)]
        return params
    params["hosts"] = [host_and_port(item, url) for item in (match.group(2) if match.group(1) else match.group(3)).split(",")]
    params["host"], params["port"] = params["hosts"][0]
    return params


def host_and_port(hostport, url):
    """`host:port` of one MySQL server (DATABASE_URL may list several, comma-separated: ours)."""
    host, sep, port = hostport.strip().rpartition(":") if ":" in hostport else (hostport.strip(), "", "")
    if sep and not port.isdigit():
        raise ConfigError(f"DATABASE_URL: bad port {port!r} in {url!r}")
    return host or "127.0.0.1", int(port) if port else 3306


def db_time(value):
    """Timestamps are stored as naive UTC; SQLite gives them back as text."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


class ThreadState(threading.local):
    conn = None  # this thread's connection
    depth = 0  # how many transaction() blocks it is inside


def read_your_writes(conn):
    """On a Galera node, reads wait until the node has applied what other nodes committed before
    them (wsrep_sync_wait=1): a login right after a signup made on another node finds the user."""
    with contextlib.suppress(pymysql.err.Error), conn.cursor() as cur:  # plain MySQL has no wsrep
        cur.execute("SELECT @@wsrep_on")
        if cur.fetchone()[0] in (1, "ON"):
            cur.execute("SET SESSION wsrep_sync_wait = 1")


# Timestamps come back as text, as SQLite gives them: db_time() reads both engines' alike, where
# a time is used, and PyMySQL's Python date parsing of every timestamp column is skipped.
MYSQL_CONVERSIONS = {k: v for k, v in pymysql.converters.conversions.items()
                     if k not in (pymysql.constants.FIELD_TYPE.DATETIME, pymysql.constants.FIELD_TYPE.TIMESTAMP)}

FIELD_PACKETS = {}  # (column-definition packet, encoding) -> PyMySQL's parsed packet


def parsed_field_packet(data, encoding):
    """PyMySQL parses, in Python, the description of every column of every result set: the
    same bytes for the same query each time, and most of a short query's cost. Each distinct
    packet is parsed once per process (the parsed packet is only read after parsing, so threads
    share it). Our SQL is fixed text, so the distinct packets are few; the bound is a safeguard."""
    key = (data, encoding)
    packet = FIELD_PACKETS.get(key)
    if packet is None:
        if len(FIELD_PACKETS) > 4096:
            FIELD_PACKETS.clear()
        packet = FIELD_PACKETS[key] = pymysql.protocol.FieldDescriptorPacket(data, encoding)
    return packet


pymysql.connections.FieldDescriptorPacket = parsed_field_packet  # the name PyMySQL reads it by


CHECKPOINT_EVERY = 64  # SQLite commits between two checkpoints (a refresh writes ~9 frames)
CHECKPOINT_FRAMES = 1000  # SQLite's own default; its backstop is set to four times that


class DatabaseUnavailable(Exception):
    """No database server could be reached: a 503, and the request may be tried again."""


class Database:
    def __init__(self, cfg):
        self.driver = cfg.db_driver
        self.params = database_params(cfg)
        self.timeouts = (cfg.db_connect_timeout_sec, cfg.db_read_timeout_sec)
        self.good_host = 0  # the MySQL host that answered last: tried first
        self.write_lock = threading.Lock()  # SQLite: writers queue here, not in busy-timeout sleeps
        self.commits, self.checkpointer = 0, None  # SQLite: see count_commit
        prefix = cfg.db_namespace + "_" if cfg.db_namespace else ""
        self.names = {t: prefix + t for t in TABLES}
        self.names["ns"] = prefix
        self.local = ThreadState()
        self.statements = {}
        self.for_update = " FOR UPDATE" if self.driver == "mysql" else ""  # SQLite: BEGIN IMMEDIATE
        self.upsert_hit = "INSERT INTO {rate_limits} (bucket, hits, expires_at) VALUES (?, 1, ?) " + (
            "ON DUPLICATE KEY UPDATE hits = hits + 1, expires_at = VALUES(expires_at)" if self.driver == "mysql"
            else "ON CONFLICT (bucket) DO UPDATE SET hits = hits + 1, expires_at = excluded.expires_at")
        if self.driver == "mysql":
            self.IntegrityError, self.Error = pymysql.err.IntegrityError, pymysql.err.Error
            field = "JSON_UNQUOTE(JSON_EXTRACT({0}, '$.{1}'))"
        else:
            self.IntegrityError, self.Error = sqlite3.IntegrityError, sqlite3.Error
            field = "json_extract({0}, '$.{1}')"
        # JSON members the admin filters search: MariaDB has no `->>`, so spell it out
        for column, key in (("raw_user_meta_data", "full_name"), ("payload", "actor_email"),
                            ("payload", "actor_name"), ("payload", "action"), ("payload", "log_type")):
            self.names[key] = field.format(column, key)

    def connect(self):
        return self.connect_mysql() if self.driver == "mysql" else self.connect_sqlite()

    def connect_mysql(self):
        """The first host that answers, starting from the one that answered last (failover)."""
        hosts, params = self.params["hosts"], {k: v for k, v in self.params.items() if k != "hosts"}
        error = None
        for i in range(len(hosts)):
            n = (self.good_host + i) % len(hosts)
            params["host"], params["port"] = hosts[n]
            try:
                conn = pymysql.connect(**params, charset="utf8mb4", autocommit=True, conv=MYSQL_CONVERSIONS,
                                       connect_timeout=self.timeouts[0],
                                       read_timeout=self.timeouts[1], write_timeout=self.timeouts[1],
                                       init_command="SET time_zone = '+00:00'")
                self.good_host = n
                read_your_writes(conn)
                return conn
            except pymysql.err.OperationalError as e:
                error = e
        raise DatabaseUnavailable(f"no database server answered: {error}")

    def connect_sqlite(self):
        conn = sqlite3.connect(self.params["path"], timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")  # webhooks and mail may run inside a write
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint={4 * CHECKPOINT_FRAMES}")  # a backstop: see count_commit
        # SQLite's own lower() folds ASCII only; the admin filters want Unicode, as MySQL does
        conn.create_function("lower", 1, lambda s: s.lower() if isinstance(s, str) else s, deterministic=True)
        return conn

    @property
    def conn(self):
        if self.local.conn is None:
            self.local.conn = self.connect()
        return self.local.conn

    def close(self):
        conn, self.local.conn = self.local.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def statement(self, sql):
        cached = self.statements.get(sql)
        if cached is None:
            cached = sql.format(**self.names)
            if self.driver == "mysql":
                cached = cached.replace("%", "%%").replace("?", "%s")
            self.statements[sql] = cached
        return cached

    def is_lost_connection(self, error):
        return self.driver == "mysql" and (
            isinstance(error, pymysql.err.InterfaceError)
            or (isinstance(error, pymysql.err.OperationalError) and error.args and error.args[0] in MYSQL_LOST))

    def run(self, sql, args):
        """Execute one statement; outside a transaction a lost MySQL connection is retried once."""
        args = tuple(v.isoformat(" ") if isinstance(v, dt.datetime) else v for v in args)
        for attempt in (1, 2):
            cur = self.conn.cursor()
            try:
                if TRACER is None:
                    cur.execute(self.statement(sql), args)
                else:
                    with traced("db.query", sql.split(None, 1)[0].upper(), db_system=self.driver):
                        cur.execute(self.statement(sql), args)
                return cur
            except self.Error as e:
                if attempt == 2 or self.local.depth or not self.is_lost_connection(e):
                    raise
                self.close()

    def query(self, sql, *args):
        cur = self.run(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def one(self, sql, *args):
        rows = self.query(sql, *args)
        return rows[0] if rows else None

    def execute(self, sql, *args):
        return self.run(sql, args).rowcount

    @contextlib.contextmanager
    def transaction(self):
        """All-or-nothing. Nested calls join the outer transaction. SQLite takes the write lock at
        BEGIN so that two writers never deadlock on a read-to-write upgrade. No network I/O
        (mail, webhooks) happens inside one: callers do that before or after."""
        if self.local.depth:
            self.local.depth += 1
            try:
                yield
            finally:
                self.local.depth -= 1
            return
        with self.write_lock if self.driver == "sqlite" else contextlib.nullcontext():
            self.run("BEGIN" if self.driver == "mysql" else "BEGIN IMMEDIATE", ())  # reconnects if lost
            conn, self.local.depth = self.conn, 1
            try:
                yield
                self.local.depth = 0
                self.end(conn.commit, "COMMIT")
                if self.driver == "sqlite":
                    self.count_commit()
            except BaseException:
                self.local.depth = 0
                try:
                    self.end(conn.rollback, "ROLLBACK")
                except Exception:
                    self.close()  # a connection that cannot roll back is not used again
                raise

    def count_commit(self):
        """SQLite copies its log (WAL) back into the database file in checkpoints, which it runs
        inside the commit that fills the log: a writer held the write lock for the copy and two
        fsyncs (9 ms at p99) while every other writer queued. Here a thread of our own does that
        every CHECKPOINT_EVERY commits: most of the copy while writers go on, then the few frames
        written meanwhile under the write lock, so that the log is complete and the next writer
        starts it over (a log never complete would grow forever). Called with the write lock held."""
        self.commits += 1
        if self.commits % CHECKPOINT_EVERY:
            return
        if self.checkpointer is None or self.checkpointer[0] != os.getpid():  # none yet in this process
            wanted = threading.Event()
            threading.Thread(target=self.checkpoint_loop, args=(wanted,), name="checkpointer", daemon=True).start()
            self.checkpointer = (os.getpid(), wanted)
        self.checkpointer[1].set()

    def checkpoint_loop(self, wanted):
        conn = self.connect_sqlite()
        with on_every_cpu():  # SQLite's C code, without the GIL: any CPU may do it
            while wanted.wait():
                wanted.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    with self.write_lock:
                        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    log.debug("checkpoint: %d of %d log frames in the database file", copied, frames)
                except sqlite3.Error as e:  # SQLite's own checkpoints (the backstop) still run
                    log.warning("checkpoint failed: %s", e)

    def end(self, finish, verb):
        """COMMIT or ROLLBACK: a db.query span of its own when tracing."""
        if TRACER is None:
            return finish()
        with traced("db.query", verb, db_system=self.driver):
            finish()

    def describe(self):
        """The database for a log line: the SQLite path, or MySQL's hosts and database, no password."""
        if self.driver == "sqlite":
            return f"sqlite {os.path.abspath(self.params['path'])}"
        hosts = ",".join(f"{h}:{p}" for h, p in self.params["hosts"])
        return f"mysql {self.params['user']}@{self.params.get('unix_socket') or hosts}/{self.params['database']}"

    def is_conflict(self, error):
        """A transaction lost a race it may win when tried again: a deadlock, a lock wait, a
        Galera certification failure (reported as a deadlock), a node not yet synced."""
        if self.driver != "mysql" or not isinstance(error, pymysql.err.OperationalError) or not error.args:
            return False
        return error.args[0] in MYSQL_CONFLICT or "WSREP" in str(error.args[-1])

    def is_unavailable(self, error):
        """The database cannot serve now (down, restarting, locked beyond the busy timeout)."""
        if isinstance(error, DatabaseUnavailable):
            return True
        if self.driver == "sqlite":
            return isinstance(error, sqlite3.OperationalError) and ("locked" in str(error) or "unable to open" in str(error))
        return self.is_lost_connection(error) or (isinstance(error, pymysql.err.OperationalError)
                                                  and bool(error.args) and error.args[0] in (1047, 1053, 1927, 2003))

    def applied_versions(self, strict=False):
        """Versions recorded by the migrations; none when the table is missing (or, unless
        `strict`, when the database cannot be asked)."""
        try:
            return {r["version"] for r in self.query("SELECT version FROM schema_migration")}
        except self.Error as e:
            if strict and (self.is_unavailable(e) or self.is_lost_connection(e)):
                raise
            return set()

    def tables_present(self):
        if self.driver == "mysql":
            rows = self.query("SELECT table_name AS name FROM information_schema.tables WHERE table_schema = DATABASE()")
        else:
            rows = self.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r["name"] for r in rows}


# ============================================================================================
# Users, tokens and the audit log
# ============================================================================================

def now():
    """UTC, naive, at the precision the database keeps (upstream's MySQL columns hold whole
    seconds), so that a response and a later read show the same time."""
    stamp = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    return stamp.replace(microsecond=0) if A and A.db.driver == "mysql" else stamp


def iso_time(value):
    """RFC 3339 in UTC as Go prints it: fractional seconds only when non-zero, trailing zeros cut."""
    text = db_time(value).isoformat()  # "2026-01-02T03:04:05" and ".000120" when non-zero
    return (text.rstrip("0") if "." in text else text) + "Z"


class RandomBytes(threading.local):
    """Randomness for ids (not secrets), 4 KB of os.urandom at a time per thread: each urandom
    call gives up the GIL, which under load costs more than the bytes. A forked child starts
    afresh, so two processes never hand out the same ids."""

    def __init__(self):
        self.buffer, self.used = b"", 0

    def take(self, n):
        if self.used + n > len(self.buffer):
            self.buffer, self.used = os.urandom(4096), 0
        self.used += n
        return self.buffer[self.used - n:self.used]


ID_BYTES = RandomBytes()
os.register_at_fork(after_in_child=ID_BYTES.__init__)


def new_uuid():
    """A random (version 4) UUID: users' and instances' ids."""
    return str(uuid.UUID(bytes=ID_BYTES.take(16), version=4))


def time_ordered_uuid():
    """A version 7 UUID (RFC 9562): the time in milliseconds, then 74 random bits. Audit entries'
    ids: InnoDB keeps a table in primary-key order, so random ids scatter every insert over the
    whole table (and its buffer pool, as the log grows); these append at its end."""
    raw = bytearray(int(time.time() * 1000).to_bytes(6, "big") + ID_BYTES.take(10))
    raw[6] = 0x70 | raw[6] & 0x0F  # version 7
    raw[8] = 0x80 | raw[8] & 0x3F  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(raw)))


def new_token():
    """16 random bytes, base64url without padding: upstream's format for every opaque token."""
    return secrets.token_urlsafe(16)


def same_secret(a, b):
    return hmac.compare_digest(str(a or "").encode(), str(b or "").encode())


CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_uuid(value):
    if isinstance(value, str) and CANONICAL_UUID.fullmatch(value):  # what ids nearly always look like
        return True
    try:
        uuid.UUID(str(value))
        return True
    except ValueError:
        return False


class App:
    """Everything built once at start: config, database, keys, templates."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.db = Database(cfg)
        self.dummy_hash = None
        self.templates = {}  # the defaults from templates/, by kind
        self.instances = Instances()
        self.verified = VerifiedTokens()
        self.request_prefix = secrets.token_hex(6)  # of request ids: one per process
        self.fetched = {}  # fetched templates and discovery documents: URL -> (valid until, content)


A = None  # the running App; set by create_app()
CURRENT = threading.local()  # the site this thread serves now (a request's instance)


def site():
    """The configuration of the site being served: the process's own in single-instance mode,
    the instance that the request names in multi-instance mode."""
    return getattr(CURRENT, "site", None) or A.cfg


def hash_password(password):
    with on_every_cpu():
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(A.cfg.bcrypt_cost, prefix=b"2a")).decode()


def password_matches(user, password):
    """Constant work whether or not the user exists or has a password (no timing oracle)."""
    stored = (user or {}).get("encrypted_password") or ""
    candidate = password.encode()
    usable = stored.startswith("$2") and len(candidate) <= 72  # bcrypt would ignore bytes past 72
    try:
        with on_every_cpu():
            matches = bcrypt.checkpw(candidate[:72], stored.encode() if usable else A.dummy_hash)
    except ValueError:
        return False
    return usable and matches


MAX_JSON_DEPTH = 32  # nesting levels of stored metadata (ours: deeper JSON is refused at write time)
MAX_METADATA_BYTES = 16 * 1024  # encoded size of each metadata object (ours; it travels in every token)


def json_depth(value):
    """Levels of `value` as MySQL's JSON_DEPTH counts them (a scalar or an empty container is 1;
    MariaDB's JSON columns hold at most 32), level by level: no recursion to exhaust."""
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [child for v in level if isinstance(v, (dict, list)) for child in (v.values() if isinstance(v, dict) else v)]
    return depth


def metadata_problem(value):
    """Why `value` may not be stored as metadata, or None."""
    if json_depth(value) > MAX_JSON_DEPTH:
        return f"nested too deeply (at most {MAX_JSON_DEPTH} levels)"
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
        return f"too large (at most {MAX_METADATA_BYTES // 1024} KB)"
    return None


def refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def finite_float(text):
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


STRICT_JSON = json.JSONDecoder(parse_constant=refuse_constant, parse_float=finite_float)  # no NaN or Infinity


def load_meta(raw):
    """Reads are total: metadata that another writer left undecodable or absurdly deep shows
    as {} (and is logged) instead of breaking every request that touches the user."""
    if raw in (None, "", b""):
        return {}
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
        value = STRICT_JSON.decode(text)
        # each level opens a bracket: fewer brackets than the limit cannot be too deep
        if text.count("{") + text.count("[") >= MAX_JSON_DEPTH and json_depth(value) > MAX_JSON_DEPTH:
            raise ValueError("nested too deeply")
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        log.warning("unreadable metadata in the database (%s): shown as {}", str(e)[:80])
        return {}
    return value if isinstance(value, dict) else {}


def merge_meta(stored, patch):
    """Upstream's merge: top-level keys replace, a null value deletes the key. What comes out
    is held to the limits too, so that no series of merges grows past them."""
    merged = dict(stored or {})
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    problem = metadata_problem(merged)
    if problem:
        raise APIError(422, f"The merged metadata would be {problem}")
    return merged


def read_user(row):
    if row is None:
        return None
    row["app_metadata"] = load_meta(row.pop("raw_app_meta_data", None))
    row["user_metadata"] = load_meta(row.pop("raw_user_meta_data", None))
    return row


USER_TIMES = ("confirmed_at", "invited_at", "confirmation_sent_at", "recovery_sent_at")
USER_FIELDS = ("aud", "role", "email", "encrypted_password", *USER_TIMES, "confirmation_token", "recovery_token",
               "email_change_token", "email_change", "email_change_sent_at", "last_sign_in_at", "app_metadata",
               "user_metadata", "is_super_admin")  # what save_user may write


USER_JSON_COLUMNS = ", ".join(["id", "aud", "role", "email", *USER_TIMES, "email_change", "email_change_sent_at",
                               "last_sign_in_at", "raw_app_meta_data", "raw_user_meta_data", "created_at", "updated_at"])


def user_json(user, with_password=False):
    """The user as upstream serialises it: fixed key order, optional keys only when set."""
    out = {"id": user["id"], "aud": user["aud"] or "", "role": user["role"] or "", "email": user["email"] or ""}
    if with_password:
        out["encrypted_password"] = user["encrypted_password"] or ""
    for key in USER_TIMES:
        if user.get(key):
            out[key] = iso_time(user[key])
    if user.get("email_change"):
        out["new_email"] = user["email_change"]
    for key in ("email_change_sent_at", "last_sign_in_at"):
        if user.get(key):
            out[key] = iso_time(user[key])
    out["app_metadata"] = user["app_metadata"]
    out["user_metadata"] = user["user_metadata"]
    out["created_at"] = iso_time(user["created_at"])
    out["updated_at"] = iso_time(user["updated_at"])
    return out


EMAIL_PART = r"[^@\s<>(),;:\"\[\]\x00-\x1f\x7f-\x9f"
EMAIL = re.compile(EMAIL_PART + r"]+@" + EMAIL_PART + r".]+(?:\." + EMAIL_PART + r".]+)+")  # no backtracking


def plausible_email(address):
    """local@domain.tld without controls, and without "=?", which opens an RFC 2047 encoded word
    that mail libraries decode into other addresses."""
    if len(address) > 255 or "=?" in address or not EMAIL.fullmatch(address):
        return False
    domain = address.rpartition("@")[2].lower()
    try:  # a domain that IDNA rewrites (a dropped U+200B, say) would be mailed to another one
        return domain.encode("idna").decode("idna") == domain
    except UnicodeError:
        return False


def find_user(where, *args, lock=False, columns="*"):
    """One user; `lock` holds its row until the transaction ends (read-modify-write)."""
    return read_user(A.db.one(f"SELECT {columns} FROM {{users}} WHERE " + where + (A.db.for_update if lock else ""), *args))


def find_user_by_email(email, aud):
    return find_user("instance_id = ? AND aud = ? AND email = ?", site().instance_id, aud, email.lower())


def find_user_by_id(user_id, lock=False, columns="*"):
    return find_user("instance_id = ? AND id = ?", site().instance_id, str(user_id), lock=lock, columns=columns)


def find_user_by_token(column, token):
    """Lookup by a one-time token; blank never matches, and MySQL's case-insensitive collation
    is not trusted: the value is compared again, exactly and in constant time."""
    token = (token or "").strip()
    if not token:
        return None
    user = find_user(f"instance_id = ? AND {column} = ?", site().instance_id, token)
    return user if user and same_secret(user[column], token) else None


def new_user(email, password_hash, aud, user_metadata=None, provider="email"):
    stamp = now()
    return {"instance_id": site().instance_id, "id": new_uuid(), "aud": aud,
            "role": site().jwt_default_group_name, "email": email.lower(),
            "encrypted_password": password_hash, "confirmed_at": None, "invited_at": None,
            "confirmation_token": "", "confirmation_sent_at": None, "recovery_token": "",
            "recovery_sent_at": None, "email_change_token": "", "email_change": "",
            "email_change_sent_at": None, "last_sign_in_at": None,
            "app_metadata": {"provider": provider} if provider else {},
            "user_metadata": dict(user_metadata or {}), "is_super_admin": False,
            "created_at": stamp, "updated_at": stamp}


def user_row(user):
    row = {k: v for k, v in user.items() if k not in ("app_metadata", "user_metadata")}
    row["raw_app_meta_data"] = json.dumps(user["app_metadata"])
    row["raw_user_meta_data"] = json.dumps(user["user_metadata"])
    return row


def insert_user(user):
    """Insert; the unique (instance, aud, email) key turns a concurrent duplicate into
    IntegrityError, which callers map to their 'already registered' answer."""
    row = user_row(user)
    A.db.execute("INSERT INTO {users} (%s) VALUES (%s)" % (", ".join(row), ", ".join("?" * len(row))),
                 *row.values())
    bump_user_count(user["aud"], 1)


def save_user(user, *columns):
    """Write the named fields (metadata by their API names) and always updated_at, which
    upstream forgets to persist."""
    user["updated_at"] = now()
    row = user_row(user)
    names = list(dict.fromkeys({"app_metadata": "raw_app_meta_data", "user_metadata": "raw_user_meta_data"}.get(c, c)
                               for c in (*columns, "updated_at")))
    A.db.execute("UPDATE {users} SET %s WHERE id = ?" % ", ".join(n + " = ?" for n in names),
                 *[row[n] for n in names], user["id"])


def delete_user(user):
    A.db.execute("DELETE FROM {refresh_tokens} WHERE user_id = ?", user["id"])
    if A.db.execute("DELETE FROM {users} WHERE id = ?", user["id"]):
        bump_user_count(user["aud"], -1)


# X-Total-Count of an audience without a COUNT(*) over it on every admin page: a counter that
# our own writes keep, in their transaction, and that is counted afresh when it is older than
# RECOUNT_AFTER, so users written by anything else (upstream's binary, SQL by hand) show up.
RECOUNT_AFTER = 300


def bump_user_count(aud, delta):
    A.db.execute("UPDATE {user_counts} SET n = n + ? WHERE instance_id = ? AND aud = ?", delta, site().instance_id, aud or "")


def count_users(aud):
    row = A.db.one("SELECT n, counted_at FROM {user_counts} WHERE instance_id = ? AND aud = ?", site().instance_id, aud)
    if row and row["counted_at"] and now() - db_time(row["counted_at"]) < dt.timedelta(seconds=RECOUNT_AFTER):
        return row["n"]
    with A.db.transaction():
        # the counter row is locked first, so writers that bump it wait for the recount
        A.db.one("SELECT n FROM {user_counts} WHERE instance_id = ? AND aud = ?" + A.db.for_update, site().instance_id, aud)
        n = A.db.one("SELECT COUNT(*) AS n FROM {users} WHERE instance_id = ? AND aud = ?", site().instance_id, aud)["n"]
        stamp = now()
        if not A.db.execute("UPDATE {user_counts} SET n = ?, counted_at = ? WHERE instance_id = ? AND aud = ?",
                            n, stamp, site().instance_id, aud):
            with contextlib.suppress(A.db.IntegrityError):  # a concurrent recount made the row
                A.db.execute("INSERT INTO {user_counts} (instance_id, aud, n, counted_at) VALUES (?, ?, ?, ?)",
                             site().instance_id, aud, n, stamp)
    return n


def is_admin(user, aud):
    return bool(user.get("is_super_admin")) or (
        (user.get("aud") or "") == (aud or site().jwt_aud) and user.get("role") == site().jwt_admin_group_name)


def session_of(refresh_token):
    """The `session_id` claim of the access tokens issued with a refresh token (ours): lets a
    password change keep the session that made it. A hash, so the claim reveals no token."""
    return hashlib.sha256(refresh_token.encode()).hexdigest()[:32]


def access_token(user, refresh_token):
    claims = {}
    if user.get("aud"):
        claims["aud"] = user["aud"]
    claims.update(exp=int(time.time()) + site().jwt_exp, sub=user["id"], email=user.get("email") or "",
                  app_metadata=user["app_metadata"], user_metadata=user["user_metadata"],
                  session_id=session_of(refresh_token))
    return sign_hs256(claims, site().jwt_secret)


JWT_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":"nf-ident","typ":"JWT"}').rstrip(b"=")


def sign_hs256(claims, key):
    """The access token exactly as PyJWT would encode it (same header, same JSON), without the
    key checks PyJWT repeats on every call; verification stays PyJWT's."""
    payload = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=")
    signing_input = JWT_HEADER + b"." + payload
    signature = base64.urlsafe_b64encode(hmac.new(key.encode(), signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


class VerifiedTokens:
    """A bounded LRU of tokens already verified, keyed by the exact token text and the key that
    verified it. Safe: a hit means these very bytes had a valid HS256 signature under this very
    key, and the time claims (exp, nbf) are checked again on every hit; only the HMAC and the
    JSON decoding are saved. Failures are never cached."""

    def __init__(self, size=10000):
        self.size, self.entries, self.lock = size, collections.OrderedDict(), threading.Lock()

    def get(self, token, key):
        with self.lock:
            claims = self.entries.get((token, key))
            if claims is not None:
                self.entries.move_to_end((token, key))
        return claims

    def put(self, token, key, claims):
        with self.lock:
            self.entries[(token, key)] = claims
            if len(self.entries) > self.size:
                self.entries.popitem(last=False)


def verify_access_token(token):
    """HS256 only (the algorithm is pinned); `aud` must be a string, as upstream requires."""
    key = site().jwt_secret
    claims = A.verified.get(token, key)
    if claims is not None:
        now_ = time.time()
        if "exp" in claims and now_ >= claims["exp"]:
            raise jwt.ExpiredSignatureError("Signature has expired")
        if "nbf" in claims and now_ < claims["nbf"]:
            raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
        return claims
    claims = jwt.decode(token, key, algorithms=["HS256"], leeway=0, options={"verify_aud": False, "require": []})
    if "aud" in claims and not isinstance(claims["aud"], str):
        raise jwt.InvalidTokenError("aud must be a string")
    A.verified.put(token, key, claims)
    return claims


def store_refresh_token(user, token, parent=None):
    stamp = now()
    A.db.execute("INSERT INTO {refresh_tokens} (instance_id, token, user_id, revoked, parent, created_at, updated_at)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)", site().instance_id, token, user["id"], False, parent, stamp, stamp)


def revoke_descendants(token):
    """A revoked token came back: someone holds a copy. Revoke what was issued from it."""
    with A.db.transaction():
        while token:
            child = A.db.one("SELECT id, token FROM {refresh_tokens} WHERE parent = ?", token)
            if not child:
                return
            A.db.execute("UPDATE {refresh_tokens} SET revoked = ?, updated_at = ? WHERE id = ?", True, now(), child["id"])
            token = child["token"]


def revoke_sessions(user, keep=None):
    """End every session of the user but the one whose `session_id` is `keep`: after a password
    change no other device keeps refreshing (upstream leaves them all valid)."""
    rows = A.db.query("SELECT id, token FROM {refresh_tokens} WHERE user_id = ? AND revoked = ?", user["id"], False)
    for row in rows:
        if session_of(row["token"]) != keep:
            A.db.execute("UPDATE {refresh_tokens} SET revoked = ?, updated_at = ? WHERE id = ?", True, now(), row["id"])


def new_tokens(user):
    """A new refresh token and the access token of its session; store_refresh_token stores it."""
    refresh = new_token()
    return {"access_token": access_token(user, refresh), "token_type": "bearer", "expires_in": site().jwt_exp,
            "refresh_token": refresh}


def token_response(user, parent=None):
    tokens = new_tokens(user)
    store_refresh_token(user, tokens["refresh_token"], parent)
    return tokens


OPERATOR = {"id": NIL_UUID, "email": "operator@netlify.com", "user_metadata": {}, "is_super_admin": True}

AUDIT_TYPES = {"login": "account", "logout": "account", "invite_accepted": "account",
               "user_signedup": "team", "user_invited": "team", "user_deleted": "team",
               "user_modified": "user", "user_recovery_requested": "user",
               "token_refreshed": "token", "token_revoked": "token"}


def audit(actor, *actions, target=None):
    """Audit entries, one per action, in the caller's transaction and one INSERT; `target` marks
    an admin acting on a user. Returns the id of the last."""
    stamp, rows = now(), []
    for action in actions:
        payload = {"timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), "actor_id": actor["id"],
                   "actor_email": actor.get("email") or "", "action": action, "log_type": AUDIT_TYPES[action]}
        name = (actor.get("user_metadata") or {}).get("full_name")
        if name:
            payload["actor_name"] = name
        if target:
            payload["traits"] = {"user_id": target["id"], "user_email": target["email"]}
        rows += [site().instance_id, time_ordered_uuid(), json.dumps(payload), stamp]
    A.db.execute("INSERT INTO {audit_log_entries} (instance_id, id, payload, created_at) VALUES "
                 + ", ".join(["(?, ?, ?, ?)"] * len(actions)), *rows)
    return rows[-3]


# --- limits ---------------------------------------------------------------------------------
# Every limit lives in the rate_limits table, so that all gotrue processes on one database share
# it and a restart resets nothing. A bucket is named by a hash of what it counts (no address is
# stored); rows are pruned once they no longer block anything.

MAX_BACKOFF = 900  # seconds: the longest a run of failed logins blocks


def bucket(*parts):
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def prune_limits():
    if secrets.randbelow(256) == 0:  # now and then is enough to keep the table bounded
        A.db.execute("DELETE FROM {rate_limits} WHERE expires_at < ?", now())


def claim_slot(name, seconds):
    """Take the bucket for `seconds` unless it is taken. Atomic across processes: of concurrent
    claims exactly one wins (a conditional UPDATE, else an INSERT under the primary key)."""
    if seconds <= 0:
        return True
    prune_limits()
    stamp = now()
    until = stamp + dt.timedelta(seconds=seconds)
    if A.db.execute("UPDATE {rate_limits} SET hits = hits + 1, blocked_until = ?, expires_at = ?"
                    " WHERE bucket = ? AND blocked_until <= ?", until, until, name, stamp):
        return True
    try:
        A.db.execute("INSERT INTO {rate_limits} (bucket, hits, blocked_until, expires_at) VALUES (?, 1, ?, ?)",
                     name, until, until)
        return True
    except A.db.IntegrityError:
        return False


def release_slot(name):
    A.db.execute("DELETE FROM {rate_limits} WHERE bucket = ?", name)


def mail_slot(kind, address):
    """One mail of a kind per recipient per SMTP_MAX_FREQUENCY, whichever audience or account
    asks for it (upstream throttles per account, so 20 audiences meant 20 mails)."""
    return bucket("mail", site().instance_id, kind, address.lower())


def blocked_for(names):
    """Seconds until all the buckets let a request through (0: now), and whether any exists."""
    rows = A.db.query("SELECT blocked_until FROM {rate_limits} WHERE bucket IN (%s)" % ", ".join("?" * len(names)),
                      *names)
    stamp = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # with its fraction: a whole-second wait
    waits = [(db_time(r["blocked_until"]) - stamp).total_seconds() for r in rows if r["blocked_until"]]
    return max([0, *[math.ceil(w) for w in waits if w > 0]]), bool(rows)


def record_failures(buckets):
    """One more failure in a row for each (bucket, threshold), in one transaction: from the
    threshold on, a bucket blocks for a time that doubles with each failure (1 s, 2 s, 4 s ...
    MAX_BACKOFF). The count is an atomic upsert, so concurrent failures (on any node) all count,
    once each. A day without failures forgets."""
    stamp = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with A.db.transaction():
        for name, threshold in buckets:
            A.db.execute(A.db.upsert_hit, name, stamp + dt.timedelta(days=1))
            hits = A.db.one("SELECT hits FROM {rate_limits} WHERE bucket = ?", name)["hits"]
            if hits >= threshold:  # rounded up to a whole second: MySQL keeps no fractions
                until = stamp + dt.timedelta(seconds=min(2 ** (hits - threshold), MAX_BACKOFF) + 1 - stamp.microsecond / 1e6)
                A.db.execute("UPDATE {rate_limits} SET blocked_until = ? WHERE bucket = ?", until.replace(microsecond=0), name)


def take_token(name, burst, every):
    """A token bucket as one time per bucket (GCRA): `blocked_until` is when the bucket would be
    full again. A request takes one interval unless that lies more than `burst` intervals
    ahead. Compare-and-set, so concurrent processes never both spend the last token."""
    for _ in range(5):
        stamp = now()
        row = A.db.one("SELECT blocked_until FROM {rate_limits} WHERE bucket = ?", name)
        full_at = max(db_time(row["blocked_until"]) if row and row["blocked_until"] else stamp, stamp)
        if full_at - stamp > dt.timedelta(seconds=every * (burst - 1)):
            return False
        later = full_at + dt.timedelta(seconds=every)
        if row is None:
            with contextlib.suppress(A.db.IntegrityError):
                A.db.execute("INSERT INTO {rate_limits} (bucket, hits, blocked_until, expires_at) VALUES (?, 1, ?, ?)",
                             name, later, later)
                return True
        elif A.db.execute("UPDATE {rate_limits} SET hits = hits + 1, blocked_until = ?, expires_at = ?"
                          " WHERE bucket = ? AND blocked_until = ?", later, later, name, row["blocked_until"]):
            return True
    return False  # lost five races in a row: the bucket is being hammered


@contextlib.contextmanager
def mail_slot_claimed(kind, address, required=False):
    """Claim the recipient's mail slot for a request; yields whether it was free (`required`:
    a 429 when it is not). A request that fails before its mail is out gives the slot back."""
    name = mail_slot(kind, address)
    claimed = claim_slot(name, site().smtp_max_frequency)
    if required and not claimed:
        wait = max(blocked_for([name])[0], 1)
        raise APIError(429, "Rate limit exceeded, try again later", headers=[("Retry-After", str(wait))])
    try:
        yield claimed
    except BaseException:
        if claimed:
            release_slot(name)
        raise


def clear_buckets(names):
    A.db.execute("DELETE FROM {rate_limits} WHERE bucket IN (%s)" % ", ".join("?" * len(names)), *names)


# ============================================================================================
# Mail
# ============================================================================================
# Templates are HTML files in templates/ (or a file or URL named by MAILER_TEMPLATES_*),
# written in upstream's `{{ .Name }}` syntax so that existing templates keep working.

SUBJECTS = {"invite": "You have been invited", "confirmation": "Confirm Your Signup",
            "recovery": "Reset Your Password", "email_change": "Confirm Email Change",
            "signup_attempt": "Someone tried to sign up with your address"}
TEMPLATE_VAR = re.compile(r"\{\{\s*\.([A-Za-z_][\w.]*)\s*\}\}")
TEMPLATE_TTL = 300  # seconds a fetched template is reused before it is fetched again


def render(template, data, escape=True):
    def value(match):
        v = data
        for part in match.group(1).split("."):
            v = v.get(part) if isinstance(v, dict) else None
        text = "" if v is None else v if isinstance(v, str) else json.dumps(v)
        return html.escape(text) if escape else text
    return TEMPLATE_VAR.sub(value, template)


def html_to_text(markup):
    """The plain-text part: links written out, tags dropped."""
    text = re.sub(r'<a\s[^>]*href="([^"]*)"[^>]*>(.*?)</a>', r"\2: \1", markup, flags=re.S | re.I)
    text = re.sub(r"<(br|/p|/h\d|/div|/li)\b[^>]*>", "\n", text, flags=re.I)
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    return re.sub(r"\n\s*\n+", "\n\n", "\n".join(line.strip() for line in text.splitlines())).strip() + "\n"


def template_url(setting):
    """Upstream's rule: the scheme and host are dropped and the rest is read from SITE_URL."""
    rest = re.sub(r"^https?://[^/]*", "", setting)
    return site().site_url.rstrip("/") + ("" if rest.startswith("/") or not rest else "/") + rest


def mail_template(kind):
    """The default from templates/, or the configured file, or the configured URL (cached;
    a failed fetch falls back to the default and is logged)."""
    setting = getattr(site(), f"mailer_templates_{kind}")
    if not setting:
        return A.templates[kind]
    if not A.cfg.multiinstancemode and os.path.isfile(setting):  # an instance may not read the server's files
        if setting not in A.fetched:
            with open(setting, encoding="utf-8") as f:
                A.fetched[setting] = (float("inf"), f.read())
        return A.fetched[setting][1]
    url = template_url(setting)  # a URL per site: the cache is keyed by it
    cached = A.fetched.get(url)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    try:
        with urllib.request.urlopen(url, timeout=A.cfg.smtp_timeout_sec) as resp:
            body = resp.read(1 << 20).decode("utf-8")
        A.fetched[url] = (time.monotonic() + TEMPLATE_TTL, body)
        return body
    except (OSError, ValueError, UnicodeDecodeError) as e:
        log.error("could not fetch the %s mail template from %s (%s); using the default", kind, url, e)
        A.fetched[url] = (time.monotonic() + 30, A.templates[kind])
        return A.templates[kind]


def confirmation_url(kind, token):
    path = getattr(site(), f"mailer_urlpaths_{kind}") or "/"
    base = urllib.parse.urljoin(site().site_url, path).split("#")[0]
    return f"{base}#{kind}_token={token}"


def mail_address(address):
    """Non-ASCII domains go out as IDNA; a non-ASCII local part needs the server's SMTPUTF8."""
    local, _, domain = address.rpartition("@")
    try:
        return f"{local}@{domain.encode('idna').decode()}" if local else address
    except UnicodeError:
        return address


def send_mail(kind, to, token, user, new_email=""):
    """Render and send one mail. Without SMTP_HOST this does nothing, as upstream."""
    cfg = site()
    data = {"SiteURL": cfg.site_url, "ConfirmationURL": confirmation_url(kind, token), "Email": user["email"],
            "NewEmail": new_email, "Token": token, "Data": user["user_metadata"]}
    if not cfg.smtp_host:  # as upstream: nothing is sent; said in the log (never the token)
        log.warning("mail not sent (no GOTRUE_SMTP_HOST): %s mail to %s", kind, to)
        return
    body = render(mail_template(kind), data)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = render(getattr(cfg, f"mailer_subjects_{kind}") or SUBJECTS[kind], data, escape=False)
    domain = urllib.parse.urlsplit(cfg.site_url).hostname or "localhost"
    sender, recipient = cfg.smtp_admin_email or f"noreply@{domain}", mail_address(to)
    msg["From"] = sender
    msg["To"] = recipient  # the validated address itself: it holds no encoded words to decode
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=domain)
    msg.set_content(html_to_text(body))
    msg.add_alternative(body, subtype="html")
    import smtplib  # only servers that send mail pay for it
    try:
        with traced("smtp.send", kind, mail_kind=kind):
            deliver_mail(cfg, msg, sender, recipient)
    except (OSError, UnicodeError, smtplib.SMTPException) as e:
        log.error("sending the %s mail via %s:%s failed: %s", kind, cfg.smtp_host, cfg.smtp_port,
                  str(e).replace(cfg.smtp_pass or "\0", "***"))
        raise MailError(kind) from None


def deliver_mail(cfg, msg, sender, recipient):
    """One SMTP session: implicit TLS on 465, else STARTTLS when offered; AUTH when a user is set."""
    import smtplib
    context = ssl.create_default_context()
    if cfg.smtp_port == 465:
        smtp = smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=cfg.smtp_timeout_sec, context=context)
    else:
        smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.smtp_timeout_sec)
        smtp.ehlo()
        if smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
    with smtp:
        if cfg.smtp_user:
            smtp.login(cfg.smtp_user, cfg.smtp_pass)
        smtp.send_message(msg, sender, [recipient])  # the envelope is never read back from headers


class MailError(Exception):
    pass


def expired(sent_at, max_age):
    return bool(sent_at) and now() > db_time(sent_at) + dt.timedelta(seconds=max_age)


class AfterAnswer:
    """One worker thread for work that runs after the response (a bounded queue: when it is
    full the request is refused with a 503 rather than growing without limit)."""

    def __init__(self):
        self.queue = queue.Queue(maxsize=1000)
        self.thread = None
        self.lock = threading.Lock()

    def submit(self, fn, *args):
        """Run fn(*args) for the site being served now."""
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="after-answer", daemon=True)
                self.thread.start()
        try:
            self.queue.put_nowait((site(), fn, args))
        except queue.Full:
            raise APIError(503, "Too many requests in progress, try again later") from None

    def drain(self, deadline):
        """Wait (until the monotonic `deadline`) for the work already promised."""
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def run(self):
        while True:
            CURRENT.site, fn, args = self.queue.get()
            try:
                fn(*args)
            except Exception:
                log.exception("%s failed after the answer", fn.__name__)
            finally:
                CURRENT.site = None
                self.queue.task_done()


AFTER_ANSWER = AfterAnswer()


# A mail is sent only after the change that holds its token is committed, so that no database
# lock waits on SMTP; if the mail cannot go, that change is taken back and the request fails.

LINKS = {"confirmation": ("confirmation_token", "confirmation_sent_at"), "invite": ("confirmation_token", "invited_at"),
         "recovery": ("recovery_token", "recovery_sent_at"), "email_change": ("email_change_token", "email_change_sent_at")}


def new_link(kind, user):
    """A fresh one-time token for `kind` on the user, in memory; returns the columns it set."""
    token_column, sent_column = LINKS[kind]
    user[token_column], user[sent_column] = new_token(), now()
    return [token_column, sent_column]


def store_link(kind, user):
    """Store a fresh token for `kind` unless a mail of this kind went out within
    SMTP_MAX_FREQUENCY. The check is part of the UPDATE, so of concurrent requests one wins.
    Returns whether the caller should mail the link."""
    token_column, sent_column = LINKS[kind]
    token, stamp = new_token(), now()
    sql = f"UPDATE {{users}} SET {token_column} = ?, {sent_column} = ?, updated_at = ? WHERE id = ?"
    args = [token, stamp, stamp, user["id"]]
    if site().smtp_max_frequency > 0:
        sql += f" AND ({sent_column} IS NULL OR {sent_column} < ?)"
        args.append(stamp - dt.timedelta(seconds=site().smtp_max_frequency))
    if A.db.execute(sql, *args) != 1:
        return False
    user[token_column], user[sent_column], user["updated_at"] = token, stamp, stamp
    return True


def mail_link(kind, user, before, audit_ids=()):
    """Mail the link whose token was just committed. On failure, undo: restore the user as it
    was `before` (None: remove the user this request created) and drop the audit entries."""
    to = user["email_change"] if kind == "email_change" else user["email"]
    try:
        send_mail(kind, to, user[LINKS[kind][0]], user, user["email_change"] if kind == "email_change" else "")
    except MailError:
        release_slot(mail_slot(kind, to))
        with A.db.transaction():
            if before is None:
                delete_user(user)
            else:
                save_user(before, *USER_FIELDS)
            for entry in audit_ids:
                A.db.execute("DELETE FROM {audit_log_entries} WHERE id = ?", entry)
        raise


# ============================================================================================
# Webhooks
# ============================================================================================
# Synchronous and inside the caller's transaction: a refusal rolls the whole action back.
# Targets on loopback, private or link-local addresses are refused at connect time (so DNS
# cannot be used to sneak past the check) unless WEBHOOK_ALLOW_PRIVATE_NETWORKS is set.
# WEBHOOK_TIMEOUT_SEC bounds a whole attempt, not each read: a timer cuts the socket.

HOOK = threading.local()  # the sockets of the attempt under way on this thread


class BlockedAddress(OSError):
    pass


def watch_socket(sock):
    if not HOOK.allow_private:
        ip = ipaddress.ip_address(sock.getpeername()[0])
        ip = getattr(ip, "ipv4_mapped", None) or ip
        if not ip.is_global:
            sock.close()
            raise BlockedAddress(f"address {ip} is not public")
    HOOK.sockets.append(sock)


class Watched:
    def connect(self):
        super().connect()
        watch_socket(self.sock)


class HookHTTPConnection(Watched, HTTPConnection):
    pass


class HookHTTPSConnection(Watched, HTTPSConnection):
    pass


class HookHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(HookHTTPConnection, req)


class HookHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(HookHTTPSConnection, req, context=self._context)


class HookRedirectHandler(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            return None  # not followed: the redirect counts as a failed attempt
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def hook_opener():
    """urllib with only what a webhook needs: HTTP(S) through the guarded connections."""
    opener = urllib.request.OpenerDirector()
    for handler in (HookHTTPHandler(), HookHTTPSHandler(), HookRedirectHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def public_url(url):
    """A URL fit for an error message: no credentials, query or fragment."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class AttemptDeadline:
    """Shuts the attempt's sockets down when its time is up; `expired` tells why a read failed."""

    def __init__(self, seconds, allow_private):
        self.expired = False
        self.sockets = HOOK.sockets = []
        HOOK.allow_private = allow_private
        self.timer = threading.Timer(seconds, self.expire)

    def expire(self):
        self.expired = True
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


def webhook_signature(body):
    claims = {"iss": "gotrue", "sub": site().instance_id, "iat": int(time.time()), "sha256": hashlib.sha256(body).hexdigest()}
    return jwt.encode(claims, site().webhook_secret, algorithm="HS256")


class HookTimeout(Exception):
    pass


def deliver_once(opener, req, seconds, allow_private):
    """One attempt: (status, body), or HookTimeout when the attempt as a whole overran (a
    socket cut by the deadline may also end a reply early that looks complete)."""
    deadline = AttemptDeadline(seconds, allow_private)
    try:
        with deadline, opener.open(req, timeout=seconds) as resp:
            result = resp.status, resp.read(1 << 20)
    except urllib.error.HTTPError as e:
        result = e.code, b""
    except Exception as e:
        if deadline.expired or isinstance(getattr(e, "reason", e), (TimeoutError, socket.timeout)):
            raise HookTimeout() from None
        raise
    if deadline.expired:
        raise HookTimeout()
    return result


def post_webhook(event, body):
    """Deliver with upstream's retry rules; returns the response body or raises APIError."""
    cfg, url = site(), site().webhook_url
    headers = {"Content-Type": "application/json", "X-Netlify-Event": "identity_" + event}
    if cfg.webhook_secret:
        headers["x-webhook-signature"] = webhook_signature(body)
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None:  # user:pass@ in the URL becomes Basic auth, as Go's client does
        basic = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    opener, shown = hook_opener(), public_url(url)
    for attempt in range(1, cfg.webhook_retries + 1):
        try:
            with traced("webhook.post", event, webhook_event=event, attempt=attempt):
                status, reply = deliver_once(opener, urllib.request.Request(url, body, headers, method="POST"),
                                             cfg.webhook_timeout_sec, cfg.webhook_allow_private_networks)
        except HookTimeout:
            log.warning("webhook %s to %s timed out (attempt %d of %d)", event, shown, attempt, cfg.webhook_retries)
            if attempt == cfg.webhook_retries:
                raise APIError(504, f"Failed to perform webhook in time frame ({cfg.webhook_timeout_sec} seconds)")
            continue
        except urllib.error.URLError as e:  # never connected: no retry, as upstream
            log.error("webhook %s to %s failed to connect: %s", event, shown, e.reason)
            raise APIError(502, f"Failed to connect to {shown}")
        except Exception as e:  # a broken exchange after connecting
            log.error("webhook %s to %s failed: %s", event, shown, e)
            raise APIError(500, f"Failed to trigger webhook to {shown}")
        if status in (200, 202, 204):
            return reply
        log.warning("webhook %s to %s answered %s (attempt %d of %d)", event, shown, status, attempt, cfg.webhook_retries)
    raise APIError(422, "Failed to handle signup webhook")


def webhook(event, user):
    """Fire `event` if configured, before the action is written (no lock is held meanwhile).
    A 2xx JSON reply may replace the user's metadata: it is applied to `user`, which the caller
    then stores, so a token made next already carries it."""
    cfg = site()
    if not cfg.webhook_url or event not in cfg.webhook_events:
        return
    body = json.dumps({"event": event, "instance_id": site().instance_id, "user": user_json(user)}).encode()
    reply = post_webhook(event, body)
    if event == "userdeleted" or not reply.strip():
        return
    try:  # like upstream: the first JSON value counts; it must be an object of objects
        data, _ = json.JSONDecoder().raw_decode(reply.decode("utf-8").strip())
        data = data or {}
        if not isinstance(data, dict) or any(not isinstance(data.get(k), (dict, type(None)))
                                             for k in ("app_metadata", "user_metadata")):
            raise ValueError("expected {\"app_metadata\": {...}, \"user_metadata\": {...}}")
    except (ValueError, RecursionError) as e:
        raise APIError(500, f"Webhook returned malformed JSON: {e}")
    for key in ("app_metadata", "user_metadata"):
        if data.get(key) is not None:
            user[key] = data[key]


# ============================================================================================
# External providers
# ============================================================================================
# OAuth2 authorization-code logins. One table says where each provider lives and one small
# reader per provider turns its answers into (emails, metadata); the flow itself is shared.
# Every call goes through the webhooks' guarded urllib opener with a whole-call deadline
# (EXTERNAL_TIMEOUT_SEC), so a provider that hangs costs a worker that long and no longer.
# Provider codes, tokens and answers are never logged.

class Provider:
    def __init__(self, authorize, token, api, custom_api, scope):
        self.authorize, self.token, self.api, self.custom_api, self.scope = authorize, token, api, custom_api, scope


OAUTH = {  # upstream's endpoints; a custom URL keeps each path and replaces scheme and host
    "github": Provider("https://github.com/login/oauth/authorize", "https://github.com/login/oauth/access_token",
                       "https://api.github.com", "/api/v3", "user:email"),
    "gitlab": Provider("https://gitlab.com/oauth/authorize", "https://gitlab.com/oauth/token",
                       "https://gitlab.com/api/v4", "/api/v4", "read_user"),
    "google": Provider("https://accounts.google.com/o/oauth2/auth", "https://accounts.google.com/o/oauth2/token",
                       "https://www.googleapis.com", "", "email profile"),
    "bitbucket": Provider("https://bitbucket.org/site/oauth2/authorize",
                          "https://bitbucket.org/site/oauth2/access_token", "https://api.bitbucket.org/2.0", "/2.0",
                          "account email"),
    "facebook": Provider("https://www.facebook.com/dialog/oauth", "https://graph.facebook.com/oauth/access_token",
                         "https://graph.facebook.com", "", "email"),
}
STATE_LIFETIME = 300  # seconds between /authorize and /callback
CODE_LIFETIME = 300  # seconds a PKCE authorization code waits to be exchanged
NONCE_COOKIE = "nf_oauth_state"


class Profile:
    """What a provider says of its user: [(email, verified, primary)] and user metadata."""

    def __init__(self, emails, metadata):
        self.emails = [(e.lower(), bool(v), bool(p)) for e, v, p in emails if isinstance(e, str) and plausible_email(e)]
        self.metadata = {k: v for k, v in metadata.items() if v}


def provider_setting(name, field):
    return getattr(site(), f"external_{name}_{field}")


def provider_name(asked):
    """The configured provider that `asked` names (case-insensitive; OIDC also by its NAME)."""
    asked = (asked or "").strip().lower()
    if asked and asked == site().external_oidc_name.lower():
        return "oidc"
    return asked if asked in PROVIDERS else None


def provider_problem(name):
    """Why the provider cannot be used (upstream's texts), or None."""
    if name is None:
        return "Provider could not be found"
    for field, problem in (("enabled", "Provider is not enabled"), ("client_id", "Missing Oauth client ID"),
                           ("secret", "Missing Oauth secret"), ("redirect_uri", "Missing redirect URI")):
        if not provider_setting(name, field):
            return problem
    return None


def usable_provider(asked):
    name = provider_name(asked)
    problem = provider_problem(name)
    if problem:
        if name is None:
            problem = f"Provider {asked or ''} could not be found"
        raise APIError(400, f"Unsupported provider: {problem}")
    return name


def provider_call(url, form=None, headers=()):
    """One call to a provider: the parsed JSON answer, or ProviderError. A form posts it."""
    req = urllib.request.Request(url, urllib.parse.urlencode(form).encode() if form else None,
                                 {"Accept": "application/json", "User-Agent": f"gotrue.py/{VERSION}", **dict(headers)})
    try:
        with traced("provider.call", public_url(url)):
            status, body = deliver_once(hook_opener(), req, A.cfg.external_timeout_sec, allow_private=True)
        if not 200 <= status < 300:
            raise ProviderError(f"status {status}", status)
        text = body.decode("utf-8")
        if text.lstrip().startswith(("{", "[")):
            return json.loads(text)
        return dict(urllib.parse.parse_qsl(text))  # older token endpoints answer a form
    except HookTimeout:
        raise ProviderError("timed out") from None
    except (OSError, ValueError, RecursionError, urllib.error.URLError) as e:
        raise ProviderError(type(e).__name__) from None


class ProviderError(Exception):
    def __init__(self, reason, status=None):
        super().__init__(reason)
        self.status = status


def oidc_endpoints():
    """The OpenID provider's discovery document (cached an hour). It, and every endpoint it
    names, must be HTTPS unless on loopback: the userinfo answer is trusted as is."""
    discovery = provider_setting("oidc", "url").rstrip("/") + "/.well-known/openid-configuration"
    cached = A.fetched.get(discovery)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    doc = provider_call(discovery)
    endpoints = {k: doc.get(k) for k in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint")}
    if not all(isinstance(url, str) and secure_url(url) for url in endpoints.values()):
        raise ProviderError("discovery names an endpoint that is not HTTPS")
    A.fetched[discovery] = (time.monotonic() + 3600, endpoints)
    return endpoints




def endpoints(name):
    """(authorize URL, token URL, API base) of a provider, honouring its custom URL."""
    if name == "oidc":
        found = oidc_endpoints()
        return found["authorization_endpoint"], found["token_endpoint"], found["userinfo_endpoint"]
    p, base = OAUTH[name], provider_setting(name, "url").rstrip("/")
    if not base:
        return p.authorize, p.token, p.api
    path = lambda url: urllib.parse.urlsplit(url).path  # noqa: E731
    return base + path(p.authorize), base + path(p.token), base + p.custom_api


def exchange_code(name, code):
    """The provider's access token for `code`: client credentials by Basic auth, and once more
    as form fields when the provider refuses those (as Go's oauth2 package does)."""
    client_id, secret = provider_setting(name, "client_id"), provider_setting(name, "secret")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": provider_setting(name, "redirect_uri")}
    basic = base64.b64encode(f"{urllib.parse.quote(client_id)}:{urllib.parse.quote(secret)}".encode()).decode()
    try:
        answer = provider_call(endpoints(name)[1], form, [("Authorization", "Basic " + basic)])
    except ProviderError as e:
        if e.status not in (400, 401):
            raise
        answer = provider_call(endpoints(name)[1], {**form, "client_id": client_id, "client_secret": secret})
    token = answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise ProviderError("no access token in the answer")
    return token


def github_profile(get):
    user = get("/user")
    emails = [(e.get("email"), e.get("verified"), e.get("primary")) for e in get("/user/emails")]
    return Profile(emails, {"full_name": user.get("name"), "avatar_url": user.get("avatar_url")})


def gitlab_profile(get):
    user = get("/user")
    emails = [(e.get("email"), False, False) for e in get("/user/emails")]
    emails.append((user.get("email"), bool(user.get("confirmed_at")), True))
    return Profile(emails, {"full_name": user.get("name"), "avatar_url": user.get("avatar_url")})


def google_profile(get):
    me = get("/userinfo/v2/me")
    return Profile([(me.get("email"), me.get("verified_email"), True)],
                   {"full_name": me.get("name"), "avatar_url": me.get("picture")})


def bitbucket_profile(get):
    user = get("/user")
    emails = [(e.get("email"), e.get("is_confirmed"), e.get("is_primary")) for e in get("/user/emails")["values"]]
    return Profile(emails, {"full_name": user.get("display_name"), "avatar_url": (user.get("avatar") or {}).get("href")})


def facebook_profile(get, token):
    proof = hmac.new(provider_setting("facebook", "secret").encode(), token.encode(), hashlib.sha256).hexdigest()
    me = get("/me?" + urllib.parse.urlencode({"fields": "email,first_name,last_name,name,picture",
                                              "appsecret_proof": proof}))
    name = f"{me.get('first_name') or ''} {me.get('last_name') or ''}".strip()
    picture = ((me.get("picture") or {}).get("data") or {}).get("url")
    return Profile([(me.get("email"), True, True)], {"slug": me.get("name"), "full_name": name, "avatar_url": picture})


def oidc_profile(get):
    info = get("")  # the API base of OIDC is its userinfo endpoint
    return Profile([(info.get("email"), info.get("email_verified") is True, True)],
                   {"full_name": info.get("name"), "avatar_url": info.get("picture")})


PROFILES = {"github": github_profile, "gitlab": gitlab_profile, "google": google_profile,
            "bitbucket": bitbucket_profile, "oidc": oidc_profile}


def fetch_profile(name, code):
    """Exchange the code and read the profile; each failure as upstream reports it."""
    try:
        token = exchange_code(name, code)
    except ProviderError as e:
        log.warning("external login via %s: code exchange failed (%s)", name, e)
        raise APIError(500, f"Unable to exchange external code for {name} provider")
    api = endpoints(name)[2]

    def get(path):
        return provider_call(api + path, headers=[("Authorization", "Bearer " + token)])
    try:
        profile = facebook_profile(get, token) if name == "facebook" else PROFILES[name](get)
        if not profile.emails:
            raise ProviderError("no email")
        return profile
    except (ProviderError, AttributeError, KeyError, TypeError) as e:
        log.warning("external login via %s: reading the profile failed (%s)", name, type(e).__name__)
        raise APIError(500, "Error getting user email from external provider")


# --- state, browser binding and one-time codes ---------------------------------------------

def state_key():
    """Upstream signs the state with OPERATOR_TOKEN; without one (ours makes it optional), a key
    derived from JWT_SECRET, so that no state can be made from an access token's key alone."""
    return A.cfg.operator_token or hmac.new(site().jwt_secret.encode(), b"gotrue.py oauth state",
                                            hashlib.sha256).hexdigest()


def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


def read_state(token):
    if not token:
        raise APIError(400, "OAuth state parameter missing")
    try:
        claims = jwt.decode(token, state_key(), algorithms=["HS256"], options={"require": ["exp"]})
        if not isinstance(claims.get("provider"), str):
            raise jwt.InvalidTokenError("no provider")
    except jwt.PyJWTError as e:
        raise APIError(400, f"OAuth state is invalid: {e}")
    return claims


def consume_state(claims, nonce):
    """The state must come back in the browser that started the flow (the cookie's nonce), and
    only once: upstream's state can be replayed by anyone for five minutes (login CSRF)."""
    if not nonce or not same_secret(digest(nonce), claims.get("nonce")):
        raise APIError(403, "OAuth state does not belong to this browser or was already used")
    try:
        A.db.execute("INSERT INTO {one_time_tokens} (token_hash, kind, instance_id, expires_at) VALUES (?, ?, ?, ?)",
                     digest(nonce), "oauth_state", site().instance_id,
                     dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc).replace(tzinfo=None))
    except A.db.IntegrityError:
        raise APIError(403, "OAuth state does not belong to this browser or was already used") from None
    if secrets.randbelow(64) == 0:
        A.db.execute("DELETE FROM {one_time_tokens} WHERE expires_at < ?", now())


def issue_code(user, challenge):
    """A PKCE authorization code: single use, short-lived, stored hashed."""
    code = secrets.token_urlsafe(32)
    A.db.execute("INSERT INTO {one_time_tokens} (token_hash, kind, instance_id, user_id, data, expires_at)"
                 " VALUES (?, ?, ?, ?, ?, ?)", digest(code), "pkce", site().instance_id, user["id"], challenge,
                 now() + dt.timedelta(seconds=CODE_LIFETIME))
    return code


def redeem_code(code, verifier):
    """The user a PKCE code was issued to, if the verifier matches; a code is burnt by its first
    use, right or wrong."""
    row = A.db.one("SELECT * FROM {one_time_tokens} WHERE token_hash = ? AND kind = ? AND instance_id = ?",
                   digest(code), "pkce", site().instance_id)
    if not row or A.db.execute("DELETE FROM {one_time_tokens} WHERE token_hash = ?", row["token_hash"]) != 1:
        return None
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    if db_time(row["expires_at"]) < now() or not same_secret(challenge, row["data"]):
        return None
    return find_user_by_id(row["user_id"])


# --- account resolution ---------------------------------------------------------------------

def external_account(name, profile, state):
    """The user a provider login lands on, made or confirmed as needed (spec §7.5), and
    whether tokens may be issued (not while the chosen email awaits confirmation)."""
    if state.get("invite_token"):
        return accept_invite_externally(name, profile, state["invite_token"]), True
    cfg, aud = site(), request_aud()
    trusted = [e for e in profile.emails if e[1] or cfg.mailer_autoconfirm]
    for email_, verified, _ in trusted:
        user = find_user_by_email(email_, aud)
        if user:
            return sign_in_externally(user, verified or cfg.mailer_autoconfirm), True
    if cfg.disable_signup:
        raise APIError(403, "Signups not allowed for this instance")
    email_, verified, _ = next((e for e in profile.emails if e[2]), profile.emails[0])
    if find_user_by_email(email_, aud):  # an unverified email never opens an existing account
        raise APIError(403, "The email address from the external provider is not verified")
    user = new_user(email_, "", aud, profile.metadata, provider=name)
    webhook("validate", user)
    if verified or cfg.mailer_autoconfirm:
        return sign_in_externally(user, True, new=True), True
    with mail_slot_claimed("confirmation", email_) as mailing:
        new_link("confirmation", user)
        with A.db.transaction():
            insert_user(user)
        if mailing:
            mail_link("confirmation", user, None)
    return user, False


def sign_in_externally(user, verified, new=False):
    """Log a user in through a provider; an unconfirmed account is confirmed by the verified
    email, and any password a signup left on it stops working (nobody owned it until now)."""
    confirming = not user["confirmed_at"]
    webhook("signup" if confirming else "login", user)
    with A.db.transaction():
        if confirming:
            user["confirmed_at"], user["encrypted_password"], user["confirmation_token"] = now(), "", ""
        user["last_sign_in_at"] = now()
        if new:
            insert_user(user)
        else:
            save_user(user, "confirmed_at", "encrypted_password", "confirmation_token", "last_sign_in_at",
                      "app_metadata", "user_metadata")
        audit(user, "user_signedup" if confirming else "login")
    return user


def accept_invite_externally(name, profile, invite_token):
    """Upstream accepts any provider email, verified or not, and never expires the invite;
    here the invited address must be among the provider's verified emails, in time."""
    user = find_user_by_token("confirmation_token", invite_token)
    if not user or not user["invited_at"]:
        raise APIError(404, "User not found")
    if expired(user["invited_at"], site().mailer_invite_max_age):
        raise APIError(400, "Invite expired")
    if user["email"] not in [e for e, verified, _ in profile.emails if verified]:
        raise APIError(400, "Invited email does not match emails from external provider")
    user["app_metadata"] = merge_meta(user["app_metadata"], {"provider": name})
    user["user_metadata"] = merge_meta(user["user_metadata"], profile.metadata)
    webhook("signup", user)
    with A.db.transaction():
        if A.db.execute("UPDATE {users} SET confirmation_token = '' WHERE id = ? AND confirmation_token = ?",
                        user["id"], invite_token) != 1:
            raise APIError(404, "User not found")
        user["confirmed_at"], user["last_sign_in_at"], user["confirmation_token"] = now(), now(), ""
        save_user(user, "confirmed_at", "last_sign_in_at", "app_metadata", "user_metadata")
        audit(user, "invite_accepted")
    return user


# ============================================================================================
# Instances
# ============================================================================================
# Multi-instance mode: one process serves many sites. Each instance's configuration is a JSON
# document in the instances table, keyed as upstream's (§1.5 of the spec), and becomes a copy
# of the process's Config with that site's settings: what site() returns while a request of
# that instance is served. The global SMTP and provider settings are defaults under every
# instance, whose non-zero values win (upstream's merge).

INSTANCE_GROUPS = {"JWT": "jwt", "SMTP": "smtp", "MAILER": "mailer", "EXTERNAL": "external", "WEBHOOK": "webhook",
                   "COOKIE": "cookies"}
INSTANCE_NESTED = {"SUBJECTS": "subjects", "TEMPLATES": "templates", "URLPATHS": "url_paths", "EMAIL": "email",
                   "SAML": "saml", **{p.upper(): p for p in PROVIDERS}}
PROCESS_WIDE = {"SMTP_TIMEOUT_SEC", "EXTERNAL_TIMEOUT_SEC", "WEBHOOK_ALLOW_PRIVATE_NETWORKS"}
SECRET_PATHS = {("jwt", "secret"), ("webhook", "secret"), ("external", "saml", "signing_key"),
                *[("external", p, "secret") for p in PROVIDERS]}
SECRET_SHOWN = "<set>"


def instance_path(name):
    """The JSON path of an instance setting (GOTRUE_MAILER_SUBJECTS_INVITE -> mailer.subjects.invite),
    or None for a setting of the whole process."""
    if name in ("SITE_URL", "DISABLE_SIGNUP"):
        return (name.lower(),)
    if name == "EXTERNAL_REDIRECTURL":
        return ("external", "redirect_url")
    group, _, rest = name.partition("_")
    if group not in INSTANCE_GROUPS or name in PROCESS_WIDE:
        return None
    head, _, tail = rest.partition("_")
    if head in INSTANCE_NESTED and tail:
        return INSTANCE_GROUPS[group], INSTANCE_NESTED[head], tail.lower()
    return INSTANCE_GROUPS[group], rest.lower()


INSTANCE_SETTINGS = [(row[0], row[1], row[2], instance_path(row[0])) for row in SETTINGS if instance_path(row[0])]


def json_member(data, path):
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def instance_value(kind, value, path):
    """A setting from the instance JSON, checked: ValueError names the member."""
    where = "config." + ".".join(path)
    expected = {str: "a string", bool: "true or false", int: "a whole number", "list": "a list of strings",
                "duration": "a duration in nanoseconds (integer)"}[kind]
    if kind in (int, "duration"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "list":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"{where}: must be {expected}")
    return value / 1e9 if kind == "duration" else list(value) if kind == "list" else value


def instance_config(data, instance_id):
    """The Config of one instance; ValueError for a member that cannot make sense."""
    if not isinstance(data, dict):
        raise ValueError("config: must be an object")
    for path in SECRET_PATHS:
        if json_member(data, path) == SECRET_SHOWN:  # a copied, masked config: never a key everybody knows
            raise ValueError(f"config.{'.'.join(path)}: \"{SECRET_SHOWN}\" stands for a stored secret; send the secret")
    cfg = copy.copy(A.cfg)
    cfg.settings_reply = None
    for name, kind, default, path in INSTANCE_SETTINGS:
        value = json_member(data, path)
        shared = path[0] in ("smtp", "external")
        if value is None or (shared and not value):
            value = getattr(A.cfg, name.lower()) if shared else copy.copy(default)
        else:
            value = instance_value(kind, value, path)
        setattr(cfg, name.lower(), value)
    cfg.instance_id = instance_id
    cfg.apply_defaults()
    if not urllib.parse.urlsplit(cfg.site_url).netloc:
        raise ValueError("config.site_url: is not an absolute URL")
    if not cfg.jwt_secret:
        raise ValueError("config.jwt.secret: is required")
    return cfg


def merge_config(stored, patch, path=()):
    """Upstream's PUT: objects merged member by member, anything else replaced. A secret sent
    back as it is shown ("<set>") keeps the stored one (ours)."""
    merged = dict(stored)
    for key, value in patch.items():
        here = (*path, key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value, here)
        elif value == SECRET_SHOWN and here in SECRET_PATHS:
            continue  # the stored secret stays (and none is made up where none is stored)
        else:
            merged[key] = value
    return merged


def shown_config(data, show_secrets, path=()):
    """The config as the operator API shows it: never the SMTP password (upstream), and the
    other secrets as "<set>" unless asked for (ours)."""
    shown = {}
    for key, value in data.items():
        here = (*path, key)
        if here == ("smtp", "pass"):
            continue
        if isinstance(value, dict):
            shown[key] = shown_config(value, show_secrets, here)
        else:
            shown[key] = SECRET_SHOWN if here in SECRET_PATHS and value and not show_secrets else value
    return shown


class Instances:
    """Instance configurations cached per process. A cached one is compared with its row at
    most once a second, so a change made through any process applies everywhere within 1 s."""

    def __init__(self):
        self.cache = {}  # id -> (checked at, raw JSON, Config)

    def get(self, instance_id):
        hit = self.cache.get(instance_id)
        if hit and time.monotonic() - hit[0] < 1:
            return hit[2]
        row = A.db.one("SELECT raw_base_config FROM {instances} WHERE id = ?", instance_id)
        if not row:
            self.cache.pop(instance_id, None)
            return None
        raw = row["raw_base_config"]
        cfg = hit[2] if hit and hit[1] == raw else instance_config(json.loads(raw or "null"), instance_id)
        self.cache[instance_id] = (time.monotonic(), raw, cfg)
        return cfg


# ============================================================================================
# HTTP layer
# ============================================================================================
# Every handler returns reply(...) or raises APIError; one plugin turns both (and anything
# unexpected, as a 500 without a traceback) into a JSON response.

MAX_BODY = 1 << 20
CORS_METHODS = ("GET", "POST", "PUT", "DELETE")
# upstream's list plus what the real clients send (X-Nf-Client from gotrue-js and the widget)
CORS_HEADERS = {"accept", "authorization", "content-type", "x-jwt-aud", "x-use-cookie", "x-nf-client",
                "x-requested-with"}
BEARER = re.compile(r"[Bb]earer (\S+)")
TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]{1,255}")

app = bottle.Bottle()
app.uninstall(bottle.JSONPlugin)  # every route answers bytes through reply(): one wrapper less per request
bottle.BaseRequest.MEMFILE_MAX = MAX_BODY
request = bottle.request


class APIError(Exception):
    """The one error type: upstream's {"code","msg"} body, or its OAuth {"error",...} body."""

    def __init__(self, status, msg="", oauth=None, headers=()):
        super().__init__(msg)
        self.status, self.msg, self.oauth, self.headers = status, msg, oauth, list(headers)

    def body(self):
        if self.oauth:
            return {"error": self.oauth, **({"error_description": self.msg} if self.msg else {})}
        body = {"code": self.status, "msg": self.msg}
        if self.status >= 500:
            body["error_id"] = request.environ.get("gotrue.request_id", "")
        return body


def oauth_error(code, description="", headers=()):
    return APIError(400, description, oauth=code, headers=headers)


JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # json.dumps would make one per call


def json_bytes(body):
    # Go's encoder escapes <, > and &: do the same so the bytes match upstream's.
    text = JSON_ENCODER.encode(body)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


JSON_TYPE = {"Content-Type": "application/json"}


def reply(body, status=200, headers=()):
    if body is None:
        resp = bottle.HTTPResponse(b"", status)
    else:
        resp = bottle.HTTPResponse(json_bytes(body), status, JSON_TYPE)
    for name, value in headers:
        resp.add_header(name, value)
    return resp


NO_STORE = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]  # on what carries tokens or a user


CONFLICT_RETRIES = 6  # tries of a request whose transaction lost a race (Galera, deadlocks)


def with_retries(callback, *args, **kwargs):
    """Run the handler; when its transaction lost a race to another one (on another Galera node,
    say), run it again from the start, after a short random pause. Every transaction is rolled
    back whole before that, and mail goes out only after commits, so nothing is done twice."""
    for attempt in range(1, CONFLICT_RETRIES + 1):
        try:
            return callback(*args, **kwargs)
        except A.db.Error as e:
            if attempt == CONFLICT_RETRIES or not A.db.is_conflict(e):
                raise
            log.info("database conflict, retrying request_id=%s attempt=%d error=%s",
                     request.environ.get("gotrue.request_id"), attempt, e.args[0])
            time.sleep(random.uniform(0.005, 0.02) * attempt)


def api_plugin(callback):
    def wrapper(*args, **kwargs):
        try:
            request.environ["gotrue.route"] = request.route.rule
            CURRENT.site = request_site() if A.cfg.multiinstancemode else None
            request.environ["gotrue.instance"] = site().instance_id
            return with_retries(callback, *args, **kwargs)
        except APIError as e:
            if e.status >= 500:
                log.error("request %s failed: %s %s", request.environ.get("gotrue.request_id"), e.status, e.msg)
            return reply(e.body(), e.status, e.headers)
        except MailError as e:
            return reply(APIError(500, MAIL_ERRORS[e.args[0]]).body(), 500)
        except pymysql.err.DataError as e:  # MySQL's strict mode: a value does not fit its column
            log.info("request %s: value refused by the database: %s", request.environ.get("gotrue.request_id"), e)
            return reply(APIError(422, "A value is too long or malformed for the database").body(), 422)
        except Exception as e:
            if A.db.is_unavailable(e):  # down, restarting, out of its cluster: try again soon
                log.error("request %s: database unavailable: %s", request.environ.get("gotrue.request_id"), e)
                return reply(APIError(503, "Database unavailable").body(), 503, [("Retry-After", "1")])
            log.exception("request %s failed", request.environ.get("gotrue.request_id"))
            return reply(APIError(500, "Internal server error").body(), 500)
        finally:
            CURRENT.site = None
    return wrapper


SITELESS = {"/health", "/", "/instances", "/instances/<instance_id>", "/openapi.yaml", "/admin/ui", "/admin/ui/",
            "/admin/ui/<name>"}


def request_site():
    """Multi-instance mode: the instance a request is for, named by the `x-nf-sign` JWT that the
    operator's proxy adds (HS256, signed with the operator token), or for /callback by the OAuth
    state, which is signed the same way. Routes that serve no site need neither."""
    rule = request.route.rule
    if rule in SITELESS:
        return None
    if rule in ("/callback", "/callback/"):
        with contextlib.suppress(APIError):
            return instance_from_signature(request.query.getunicode("state") or "")
        return None  # the callback reports its bad state itself
    signature = header("x-nf-sign")
    if not signature:
        raise APIError(400, "Operator microservice headers missing")
    return instance_from_signature(signature)


def instance_from_signature(token):
    try:
        claims = jwt.decode(token, A.cfg.operator_token, algorithms=["HS256"], options={"verify_aud": False})
    except jwt.PyJWTError as e:
        raise APIError(400, f"Operator microservice signature is invalid: {e}")
    if not claims.get("id"):
        raise APIError(400, "Instance ID is missing")
    if not is_uuid(claims["id"]):
        raise APIError(400, "Instance ID is not a valid UUID")
    try:
        cfg = A.instances.get(str(claims["id"]))
    except (ValueError, RecursionError, TypeError):
        raise APIError(500, "Error loading environment config") from None
    if cfg is None:
        raise APIError(404, "Unable to locate site configuration")
    if claims.get("site_url") and isinstance(claims["site_url"], str):
        cfg = copy.copy(cfg)
        cfg.site_url = claims["site_url"]
    return cfg


app.install(api_plugin)
MAIL_ERRORS = {"confirmation": "Error sending confirmation mail", "invite": "Error inviting user",
               "recovery": "Error recovering user", "email_change": "Error sending change email",
               "signup_attempt": "Error sending confirmation mail"}  # as a real signup's: reveals nothing


@app.error(404)
def not_found(_):
    bottle.response.content_type = "application/json"
    return json_bytes({"code": 404, "msg": "Not Found"})


@app.error(405)
def not_allowed(_):
    bottle.response.content_type = "application/json"
    return json_bytes({"code": 405, "msg": "Method Not Allowed"})


NOSNIFF = ("X-Content-Type-Options", "nosniff")
REQUEST_COUNTER = itertools.count(1)  # request ids: a per-process prefix and this, far cheaper than uuid4


class JSONErrorTask(waitress.task.ErrorTask):
    """waitress answers malformed requests itself (bad request line, bad Content-Length, a
    chunked body over the limit): in our JSON error shape, not its text."""

    def execute(self):
        error = self.request.error
        body = json_bytes({"code": error.code, "msg": f"{error.reason}: {error.body}".rstrip(": ")})
        self.status = f"{error.code} {error.reason}"
        self.response_headers += [("Content-Type", "application/json"), NOSNIFF]
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JSONErrorChannel(waitress.channel.HTTPChannel):
    error_task_class = JSONErrorTask


def wsgi(environ, start_response):
    """Outermost layer: a request id, the answer (in a span when tracing) and a log line."""
    started = time.monotonic()
    header = A.cfg.api_request_id_header
    environ["gotrue.request_id"] = (header and environ.get("HTTP_" + header.upper().replace("-", "_"))) \
        or f"{A.request_prefix}-{next(REQUEST_COUNTER):x}"
    result = answer(environ, start_response) if TRACER is None else traced_answer(environ, start_response)
    if environ["PATH_INFO"] != "/health" and LINES and log.isEnabledFor(logging.INFO):
        LINES.write_line("INFO", "request completed", {
            "method": environ["REQUEST_METHOD"], "path": repr(environ["PATH_INFO"]),
            "route": environ.get("gotrue.route", "-"), "status": environ.get("gotrue.status", "?")[:3],
            "duration_ms": round((time.monotonic() - started) * 1000, 1), "request_id": environ["gotrue.request_id"],
            "instance": environ.get("gotrue.instance", NIL_UUID)})
    return result


def answer(environ, start_response):
    """Undecodable paths, CORS (preflights end here) and the body limit, then the routes."""
    origin, method = environ.get("HTTP_ORIGIN"), environ["REQUEST_METHOD"]
    try:  # bottle drops what it cannot decode, so /adm%FFin would reach /admin
        environ["PATH_INFO"].encode("latin-1").decode("utf-8")
    except UnicodeError:
        environ["PATH_INFO"] = "/%FF"  # matches no route: a 404
    if method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
        return preflight(environ, start_response, origin)

    def start(status, headers, exc_info=None):
        environ["gotrue.status"] = status
        headers += [("Vary", "Origin"), NOSNIFF]
        if origin and method in CORS_METHODS:
            headers += [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Credentials", "true")]
        return start_response(status, headers, exc_info)

    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length > MAX_BODY or length < 0:
        body = json_bytes({"code": 413, "msg": "Request body too large (limit 1 MiB)"})
        start("413 Request Entity Too Large", [("Content-Type", "application/json")])
        return [body]
    return app(environ, start)


def traced_answer(environ, start):
    """The request as one Datadog span: resource "METHOD /route/pattern" (or "METHOD status"
    where no route answered: a 404, a preflight, a 413), its status and id."""
    with TRACER.trace("http.request", span_type="web") as span:
        result = answer(environ, start)
        status = int(environ.get("gotrue.status", "500")[:3])
        span.resource = f"{environ['REQUEST_METHOD']} {environ.get('gotrue.route', status)}"
        for key, value in (("http.method", environ["REQUEST_METHOD"]), ("http.status_code", str(status)),
                           ("http.route", environ.get("gotrue.route", "")), ("request_id", environ["gotrue.request_id"])):
            span.set_tag(key, value)
        span.error = int(status >= 500)
        return result


def preflight(environ, start_response, origin):
    environ["gotrue.status"] = "204"
    headers = [("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"), NOSNIFF]
    wanted = environ["HTTP_ACCESS_CONTROL_REQUEST_METHOD"].upper()
    asked = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")
    names = [h.strip().lower() for h in asked.split(",") if h.strip()]
    if origin and wanted in CORS_METHODS and all(n in CORS_HEADERS for n in names):
        headers += [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", wanted),
                    ("Access-Control-Allow-Credentials", "true")]
        if asked:
            headers.append(("Access-Control-Allow-Headers", asked))
    start_response("204 No Content", headers)
    return [b""]


# --- reading requests -----------------------------------------------------------------------

def header(name, default="", strict=False):
    """A request header as text. WSGI hands over latin-1; headers are read as UTF-8, and bytes
    that are not UTF-8 become U+FFFD (bottle would raise: a 500), or a 400 where the value is
    used as a name (`strict`)."""
    raw = request.environ.get("HTTP_" + name.upper().replace("-", "_"))
    if raw is None:
        return default
    try:
        return raw.encode("latin-1").decode("utf-8", "strict" if strict else "replace")
    except UnicodeError:
        raise APIError(400, f"The {name} header is not UTF-8") from None


def body_bytes():
    if "gotrue.body" not in request.environ:
        request.environ["gotrue.body"] = request.body.read(MAX_BODY + 1)
    return request.environ["gotrue.body"]


def json_body():
    """Upstream decodes leniently: the first JSON value counts, trailing bytes are ignored."""
    text = body_bytes().decode("utf-8", "replace").lstrip()
    if not text:
        raise ValueError("EOF")
    try:
        value, _ = STRICT_JSON.raw_decode(text)
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()  # lone surrogates fail here
    except (ValueError, RecursionError) as e:
        raise ValueError(f"invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


TYPE_NAMES = {str: "a string", dict: "an object", bool: "a boolean"}


def read_params(context, **fields):
    """The JSON body's fields with the given types (null and absent give None);
    anything malformed is a 400 whose message starts with the endpoint's `context`."""
    try:
        body = json_body()
        for name, kind in fields.items():
            if body.get(name) is not None and not isinstance(body[name], kind):
                raise ValueError(f"{name} must be {TYPE_NAMES[kind]}")
    except ValueError as e:
        raise APIError(400, f"{context}: {e}")
    for name, kind in fields.items():  # every object field is metadata, stored and put in tokens
        problem = kind is dict and body.get(name) is not None and metadata_problem(body[name])
        if problem:
            raise APIError(422, f"{context}: {name} is {problem}")
    return {name: body.get(name) for name in fields}


def form_params():
    """POST /token reads form fields: the query string and a urlencoded body (or JSON)."""
    params = dict(urllib.parse.parse_qsl(request.environ.get("QUERY_STRING", ""), keep_blank_values=True))
    body = body_bytes()
    if "json" in (request.content_type or ""):
        with contextlib.suppress(ValueError):
            params.update({k: v for k, v in json_body().items() if isinstance(v, str)})
    elif (request.content_type or "").startswith("multipart/form-data"):
        try:
            params.update({k: v for k, v in request.forms.decode().items()})
        except Exception:  # bottle's parser raises its own errors for a malformed multipart body
            raise APIError(400, "Could not read the multipart form") from None
    elif body:
        params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return params


def validate_email(address):
    if not address:
        raise APIError(422, "An email address is required")
    if not plausible_email(address):
        raise APIError(422, "Unable to validate email address: invalid format")
    return address.lower()


def email_taken():
    return APIError(422, "Email address already registered by another user")


def check_password(password):
    if len(password.encode()) > 72:
        raise APIError(422, "Password is too long: at most 72 bytes")
    return password


def request_aud(claims=None):
    """X-JWT-AUD, else the verified token's aud, else JWT_AUD."""
    claims = claims or request.environ.get("gotrue.claims") or {}
    return short_aud(header("X-JWT-AUD", strict=True) or claims.get("aud") or site().jwt_aud)


def short_aud(aud):
    if len(aud) > 255:  # the column's size: a longer one could be stored on SQLite and never named
        raise APIError(400, "The audience is too long: at most 255 characters")
    return aud


def require_email_provider():
    if site().external_email_disabled:
        raise APIError(400, "Unsupported email provider")


# --- cookies and authentication -------------------------------------------------------------

def cookie_header(token=None):
    """Set (token given, mode from x-use-cookie) or clear the JWT cookie."""
    name = site().cookie_key
    if token is None:
        return ("Set-Cookie", f"{name}=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly; Secure;"
                              " SameSite=Lax")
    extra = ""
    if header("X-Use-Cookie") != "session":
        expires = email.utils.formatdate(time.time() + site().cookie_duration, usegmt=True)
        extra = f"; Expires={expires}; Max-Age={site().cookie_duration}"
    return ("Set-Cookie", f"{name}={token}; Path=/{extra}; HttpOnly; Secure; SameSite=Lax")


def token_reply(user, tokens=None):
    tokens = tokens or token_response(user)
    wants_cookie = header("X-Use-Cookie") and site().cookie_duration > 0
    return reply(tokens, headers=NO_STORE + ([cookie_header(tokens["access_token"])] if wants_cookie else []))


def bearer_token():
    match = BEARER.fullmatch(header("Authorization", ""))
    if not match:
        raise APIError(401, "This endpoint requires a Bearer token", headers=[cookie_header()])
    return match.group(1)


def require_claims(token=None):
    try:
        claims = request.environ["gotrue.claims"] = verify_access_token(token or bearer_token())
        return claims
    except jwt.PyJWTError as e:
        raise APIError(401, f"Invalid token: {e}", headers=[cookie_header()])


def current_user(claims, lock=False, columns="*"):
    if not is_uuid(claims.get("sub")):
        raise APIError(400, "Could not read User ID claim")
    user = find_user_by_id(claims["sub"], lock=lock, columns=columns)
    if not user:
        raise APIError(404, "User not found")
    return user


def require_admin():
    """Returns (acting admin, audience). The operator token, a system token (sub "0" or the nil
    UUID) or a user with the admin role in the request audience may act."""
    token = bearer_token()
    if A.cfg.operator_token and same_secret(token, A.cfg.operator_token):
        return OPERATOR, request_aud()
    claims = require_claims(token)
    sub = claims.get("sub") or ""
    if sub in ("0", NIL_UUID):
        actor = {"id": NIL_UUID, "email": "", "aud": claims.get("aud") or "",
                 "user_metadata": {}, "is_super_admin": True}
    else:
        actor = find_user_by_id(sub) if is_uuid(sub) else None
        if not actor:
            raise APIError(401, "Invalid admin user")
    aud = request_aud()
    if body_bytes().strip():
        try:
            body_aud = json_body().get("aud")
            aud = short_aud(body_aud) if body_aud and isinstance(body_aud, str) else aud
        except ValueError as e:
            raise APIError(400, f"Could not decode admin user params: {e}")
    if not is_admin(actor, aud):
        raise APIError(401, "User not allowed")
    return actor, aud


def rate_limited():
    """Upstream's /token limiter (a bucket of 30 per header value, one more every 10 s), kept in
    the database so that every process and restart shares it (upstream: per process)."""
    name = A.cfg.rate_limit_header
    return bool(name) and not take_token(bucket("token", site().instance_id, header(name, "")), 30, 10)


# --- public endpoints -----------------------------------------------------------------------

@app.get("/health")
def health():
    """Liveness, without touching the database; `?ready=1` (ours) is readiness: the database
    answers and has the schema this version needs, else a 503 saying which."""
    if request.query.get("ready"):
        try:
            versions = A.db.applied_versions(strict=True)
        except Exception as e:
            raise APIError(503, f"Database unavailable: {type(e).__name__}", headers=[("Retry-After", "1")])
        if SCHEMA_VERSION not in versions:
            raise APIError(503, "Database schema out of date: run python migrate.py")
    return reply({"description": "GoTrue is a user registration and authentication API", "name": "GoTrue",
                  "version": VERSION})


@app.get("/openapi.yaml")
def openapi():
    """The contract of this API, OpenAPI 3.1 (ours)."""
    with open(os.path.join(HERE, "openapi.yaml"), "rb") as f:
        return bottle.HTTPResponse(f.read(), 200, {"Content-Type": "application/yaml"})


@app.get("/settings")
def settings():
    cfg = site()
    if getattr(cfg, "settings_reply", None) is None:  # a site's settings do not change: encoded once
        cfg.settings_reply = json_bytes(settings_body(cfg))
    return bottle.HTTPResponse(cfg.settings_reply, 200, JSON_TYPE)


def settings_body(cfg):
    # a provider shows as enabled only when it can be used (upstream shows the bare flag)
    external = {p: not provider_problem(p) for p in PROVIDERS if p != "oidc"}
    external.update(email=not cfg.external_email_disabled, saml=cfg.external_saml_enabled)
    labels = {"saml": cfg.external_saml_name} if cfg.external_saml_name else {}
    if cfg.external_oidc_enabled:
        external[cfg.external_oidc_name] = not provider_problem("oidc")
        labels[cfg.external_oidc_name] = cfg.external_oidc_name
    return {"external": external, "external_labels": labels, "disable_signup": cfg.disable_signup,
            "autoconfirm": cfg.mailer_autoconfirm}


@app.post("/signup")
def signup():
    require_email_provider()
    if site().disable_signup:
        raise APIError(403, "Signups not allowed for this instance")
    p = read_params("Could not read Signup params", email=str, password=str, data=dict)
    if not p["password"]:
        raise APIError(422, "Signup requires a valid password")
    email_ = validate_email(p["email"])
    aud = request_aud()
    password_hash = hash_password(check_password(p["password"]))
    for attempt in (1, 2):
        try:
            user = find_user_by_email(email_, aud)
            if user and user["confirmed_at"]:
                return reply(user_json(signup_of_taken_address(user, aud, p["data"])))
            return reply(user_json(sign_up(user, email_, p["password"], password_hash, aud, p["data"])))
        except A.db.IntegrityError:
            if attempt == 2:  # a concurrent signup inserted it: the second pass sees that user
                raise


def sign_up(user, email_, password, password_hash, aud, data):
    """Create the user, or take over an unconfirmed signup of the same address; then confirm it
    (autoconfirm) or mail a confirmation (at most one per SMTP_MAX_FREQUENCY and recipient).

    An unconfirmed account belongs to nobody yet: the latest signup's password and data replace
    the pending ones (upstream kept the first signup's password, so whoever signed up a victim's
    address first could log in once the victim confirmed). Each password gets its own link, so a
    link confirms the password of the signup that asked for it; a resubmission with the same
    password keeps the link already mailed."""
    before = dict(user) if user else None
    if user is None:
        user, new_password = new_user(email_, password_hash, aud, data), True
        webhook("validate", user)
    else:
        new_password = not password_matches(user, password)
        user["encrypted_password"], user["user_metadata"] = password_hash, merge_meta({}, data or {})
    if site().mailer_autoconfirm:
        webhook("signup", user)
        user["confirmed_at"], user["confirmation_token"] = now(), ""
        with A.db.transaction():
            store_signup(user, before)
            audit(user, "user_signedup")
        return user
    with mail_slot_claimed("confirmation", email_) as mailing:
        if mailing or new_password:
            new_link("confirmation", user)
        with A.db.transaction():
            store_signup(user, before)
        if mailing:
            mail_link("confirmation", user, before)
    return user


def store_signup(user, before):
    if before is None:
        insert_user(user)
    else:
        save_user(user, "encrypted_password", "user_metadata", "app_metadata", "confirmed_at", "confirmation_token",
                  "confirmation_sent_at")


def signup_of_taken_address(owner, aud, data):
    """Upstream's 400, or with SECURITY_HIDE_EXISTING_USERS (ours) the answer a new signup gets,
    for a user that is never stored, and a note to the owner (throttled like confirmations)."""
    if not site().security_hide_existing_users:
        raise APIError(400, "A user with this email address has already been registered")
    user = new_user(owner["email"], "", aud, data)
    user["confirmed_at" if site().mailer_autoconfirm else "confirmation_sent_at"] = now()
    with mail_slot_claimed("signup_attempt", owner["email"]) as mailing:
        if mailing:
            send_mail("signup_attempt", owner["email"], "", owner)
    return user


@app.post("/verify")
def verify():
    p = read_params("Could not read verification params", type=str, token=str, password=str)
    token = (p["token"] or "").strip()
    if not token:
        raise APIError(422, "Verify requires a token")
    if p["type"] not in ("signup", "recovery"):
        raise APIError(422, "Verify requires a verification type")
    column = "confirmation_token" if p["type"] == "signup" else "recovery_token"
    user = find_user_by_token(column, token)
    if not user:
        raise APIError(404, "User not found")
    confirming = not user["confirmed_at"]
    if p["type"] == "signup":
        invited = bool(user["invited_at"])
        sent = user["confirmation_sent_at"] or user["invited_at"]  # invites expire too
        if expired(sent, site().mailer_invite_max_age if invited else site().mailer_confirmation_max_age):
            raise APIError(422, "Confirmation token expired")
        if invited and not user["encrypted_password"]:
            if not p["password"]:
                raise APIError(422, "Invited users must specify a password")
            user["encrypted_password"] = hash_password(check_password(p["password"]))
        webhook("signup", user)
    elif expired(user["recovery_sent_at"], site().mailer_recovery_max_age):
        raise APIError(422, "Recovery token expired")
    elif confirming:
        try:
            webhook("signup", user)
        except APIError:  # upstream reports any failure of this step this way
            raise APIError(500, "Database error updating user")
    with A.db.transaction():
        # one-time: of concurrent requests with the token only one clears it
        if A.db.execute(f"UPDATE {{users}} SET {column} = '' WHERE id = ? AND {column} = ?", user["id"], token) != 1:
            raise APIError(404, "User not found")
        user[column] = ""
        if p["type"] == "recovery":
            # the address owner is back in: other sessions end, and on an account nobody had
            # confirmed, the password someone else may have set stops working (the owner sets one)
            revoke_sessions(user)
            if confirming:
                user["encrypted_password"] = ""
        if confirming:
            user["confirmed_at"] = now()
            save_user(user, "confirmed_at", "encrypted_password", "app_metadata", "user_metadata")
            audit(user, "user_signedup")
        return token_reply(user)


@app.post("/recover")
def recover():
    """Answers the same, at once, for known and unknown addresses: the lookup, the token and
    the mail happen after the answer, so neither the answer nor its timing tells whether the
    address has an account. The window is per address whether or not it exists, so a 429
    reveals nothing either; it is kept in the database (all processes, across restarts)."""
    require_email_provider()
    p = read_params("Could not read verification params", email=str)
    if not p["email"]:
        raise APIError(422, "Password recovery requires an email")
    address, aud = validate_email(p["email"]), request_aud()
    with mail_slot_claimed("recovery", address, required=True):
        AFTER_ANSWER.submit(send_recovery, address, aud)
    return reply({})


def send_recovery(address, aud):
    user = find_user_by_email(address, aud)
    if not user:
        return
    before = dict(user)
    with A.db.transaction():
        if not store_link("recovery", user):  # mailed within the window (by upstream's binary, say)
            return
        entry = audit(user, "user_recovery_requested")
    try:
        mail_link("recovery", user, before, [entry])
    except MailError:
        pass  # undone and logged; the client was told nothing either way


@app.post("/token")
def token():
    require_email_provider()
    if rate_limited():
        raise APIError(429, "Rate limit exceeded", headers=[("Retry-After", "10")])  # one more every 10 s
    params = form_params()
    grant = params.get("grant_type")
    if grant == "password":
        return password_grant(params.get("username", ""), params.get("password", ""))
    if grant == "refresh_token":
        return refresh_grant(params.get("refresh_token", ""))
    if grant == "authorization_code":
        return code_grant(params.get("code", ""), params.get("code_verifier", ""))
    raise oauth_error("unsupported_grant_type")


def login_buckets(username, aud):
    """(bucket, threshold) of the failed logins counted for this attempt: the account (known
    or not, so a 429 reveals nothing) and the client (RATE_LIMIT_HEADER's value, else the peer)."""
    cfg = A.cfg
    client = header(cfg.rate_limit_header, "") if cfg.rate_limit_header else request.remote_addr
    pairs = [(bucket("login", site().instance_id, aud, username.lower()), cfg.security_login_max_failures),
             (bucket("client", site().instance_id, client or ""), cfg.security_client_max_failures)]
    return [(name, threshold) for name, threshold in pairs if threshold > 0]


def password_grant(username, password):
    """Unknown email and wrong password look the same, and take the same bcrypt time;
    'Email not confirmed' is only said to someone who knows the password. Runs of failures
    per account and per client back off (ours: upstream lets a script try passwords forever)."""
    aud = request_aud()
    buckets = login_buckets(username, aud)
    wait, counted = blocked_for([name for name, _ in buckets]) if buckets else (0, False)
    if wait:
        raise APIError(429, "Too many failed login attempts, try again later", headers=[("Retry-After", str(wait))])
    user = find_user_by_email(username, aud) if username else None
    if not password_matches(user, password):
        record_failures(buckets)
        raise oauth_error("invalid_grant", "No user found with that email, or password invalid.")
    if counted:
        clear_buckets([name for name, _ in buckets])
    if not user["confirmed_at"]:
        raise oauth_error("invalid_grant", "Email not confirmed")
    webhook("login", user)
    with A.db.transaction():
        audit(user, "login")
        user["last_sign_in_at"] = now()
        save_user(user, "last_sign_in_at", "app_metadata", "user_metadata")
        log_login("password", user)
        return token_reply(user)


REFRESH_COLUMNS = ("id", "token", "revoked", "created_at", "updated_at")
REFRESH_USER_COLUMNS = ("id", "aud", "email", "raw_app_meta_data", "raw_user_meta_data")  # what the new tokens need
REFRESH_LOOKUP = ("SELECT " + ", ".join([*(f"t.{c} AS t_{c}" for c in REFRESH_COLUMNS), *(f"u.{c}" for c in REFRESH_USER_COLUMNS)])
                  + " FROM {refresh_tokens} t JOIN {users} u ON u.id = t.user_id AND u.instance_id = t.instance_id"
                  " WHERE t.token = ? AND t.instance_id = ?")


def refresh_token_and_user(token):
    """The refresh token's row and (the columns needed of) its user's, in one query: (None, None)
    when either is missing."""
    row = A.db.one(REFRESH_LOOKUP, token, site().instance_id)
    if row is None:
        return None, None
    return {c: row.pop("t_" + c) for c in REFRESH_COLUMNS}, read_user(row)


def log_login(method, user):
    """Upstream's metering line of every login, written as the request line is (no LogRecord:
    a refresh is cheap enough for that to show)."""
    if LINES and log.isEnabledFor(logging.INFO):
        LINES.write_line("INFO", "login", {"metering": "true", "action": "login", "login_method": method,
                                           "user_id": user["id"]})


def refresh_grant(token):
    """Rotation is one conditional UPDATE: of concurrent refreshes with one token exactly one
    wins. A token that comes back after it was rotated revokes what was issued from it."""
    if not token:
        raise oauth_error("invalid_request", "refresh_token required")
    if not TOKEN_CHARS.fullmatch(token):  # ours are base64url; MySQL's utf8 column cannot even compare others
        raise oauth_error("invalid_grant", "Invalid Refresh Token")
    row, user = refresh_token_and_user(token)
    if not user or not same_secret(row["token"], token):
        raise oauth_error("invalid_grant", "Invalid Refresh Token")
    if row["revoked"]:
        # another tab that refreshed at the same moment is not a thief: within the reuse
        # interval a replay is refused but revokes nothing
        if expired(row["updated_at"], site().jwt_refresh_token_reuse_interval):
            log.warning("revoked refresh token reused user_id=%s: revoking its descendants", user["id"])
            revoke_descendants(token)
        raise oauth_error("invalid_grant", "Invalid Refresh Token", headers=[cookie_header()])
    if expired(row["created_at"], site().jwt_refresh_token_lifetime):
        raise oauth_error("invalid_grant", "Refresh token expired", headers=[cookie_header()])
    tokens = new_tokens(user)  # signed before the transaction: the write lock is held for SQL only
    with A.db.transaction():
        won = A.db.execute("UPDATE {refresh_tokens} SET revoked = ?, updated_at = ? WHERE id = ? AND revoked = ?",
                           True, now(), row["id"], False)
        if won != 1:
            raise oauth_error("invalid_grant", "Invalid Refresh Token", headers=[cookie_header()])
        audit(user, "token_refreshed", "token_revoked")
        store_refresh_token(user, tokens["refresh_token"], parent=token)
    log_login("token", user)
    return token_reply(user, tokens)


@app.post("/logout")
def logout():
    claims = require_claims()
    sub = claims.get("sub")
    user = {"id": NIL_UUID, "email": claims.get("email") or "", "user_metadata": {}} if sub in ("0", NIL_UUID) \
        else (find_user_by_id(sub) if is_uuid(sub) else None)
    if not user:
        raise APIError(401, "Invalid user", headers=[cookie_header()])
    with A.db.transaction():
        audit(user, "logout")
        A.db.execute("DELETE FROM {refresh_tokens} WHERE instance_id = ? AND user_id = ?", site().instance_id, user["id"])
    return reply(None, 204, [cookie_header()])


@app.get("/user")
@app.get("/user/")
def get_user():
    claims = require_claims()
    if not is_uuid(claims.get("sub")):
        raise APIError(400, "Could not read User ID claim")
    if request_aud(claims) != (claims.get("aud") or ""):
        raise APIError(400, "Token audience doesn't match request audience")
    return reply(user_json(current_user(claims, columns=USER_JSON_COLUMNS)), headers=NO_STORE)


@app.put("/user")
@app.put("/user/")
def update_user():
    claims = require_claims()
    p = read_params("Could not read User Update params", email=str, password=str, email_change_token=str,
                    data=dict, app_metadata=dict)
    me = current_user(claims)  # a 404 before any bcrypt work
    password_hash = hash_password(check_password(p["password"])) if p["password"] else None
    new_email = None
    if p["email"] and not p["email_change_token"] and p["email"].lower() != me["email"]:
        new_email = validate_email(p["email"])  # the address changes once the new one confirms
    # one change mail per recipient and window, whoever asks (ours: upstream mails every time)
    with mail_slot_claimed("email_change", new_email, required=True) if new_email else contextlib.nullcontext():
        user, before, entries = apply_user_update(claims, p, password_hash, new_email)
        if new_email:  # the mail goes to the new address
            mail_link("email_change", user, before, entries)
    return reply(user_json(user), headers=NO_STORE)


def apply_user_update(claims, p, password_hash, new_email):
    with A.db.transaction():
        user = current_user(claims, lock=True)  # read-modify-write: concurrent updates queue here
        before, changed = dict(user), []
        if password_hash:
            user["encrypted_password"] = password_hash
            changed.append("encrypted_password")
            revoke_sessions(user, keep=claims.get("session_id"))  # other devices sign in again
        if p["data"] is not None:
            user["user_metadata"] = merge_meta(user["user_metadata"], p["data"])
            changed.append("user_metadata")
        if p["app_metadata"] is not None:
            if not is_admin(user, site().jwt_aud):
                raise APIError(401, "Updating app_metadata requires admin privileges")
            user["app_metadata"] = merge_meta(user["app_metadata"], p["app_metadata"])
            changed.append("app_metadata")
        if p["email_change_token"]:
            changed += confirm_email_change(user, p["email_change_token"].strip())
        elif new_email:
            if find_user_by_email(new_email, user["aud"]):
                raise email_taken()
            user["email_change"] = new_email
            changed += ["email_change", *new_link("email_change", user)]
        try:
            save_user(user, *changed)
        except A.db.IntegrityError:
            raise email_taken()
        return user, before, [audit(user, "user_modified")]


def confirm_email_change(user, token):
    if expired(user["email_change_sent_at"], site().mailer_confirmation_max_age):
        raise APIError(422, "Email change token expired")
    if not user["email_change_token"] or not same_secret(token, user["email_change_token"]):
        raise APIError(401, "Email Change Token didn't match token on file")
    if find_user_by_email(user["email_change"], user["aud"]):
        raise email_taken()
    user["email"], user["email_change"], user["email_change_token"] = user["email_change"], "", ""
    return ["email", "email_change", "email_change_token"]


# --- external logins --------------------------------------------------------------------------

PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9._~-]{43,128}")
OAUTH_CODES = {400: "invalid_request", 401: "unauthorized_client", 403: "access_denied", 500: "server_error",
               503: "temporarily_unavailable"}


@app.get("/authorize")
def authorize():
    """Send the browser to the provider, with a signed state and a nonce cookie that binds the
    flow to this browser. With a PKCE challenge (ours) the flow ends in a one-time code."""
    query = request.query
    name = usable_provider(query.getunicode("provider"))
    invite = (query.getunicode("invite_token") or "").strip()
    if invite and not find_user_by_token("confirmation_token", invite):
        raise APIError(404, "User not found")
    state = {"exp": int(time.time()) + STATE_LIFETIME, "site_url": site().site_url, "id": site().instance_id,
             "netlify_id": "", "function_hooks": {}, "provider": query.getunicode("provider") or name}
    if invite:
        state["invite_token"] = invite
    referrer = header("Referer", "")
    if referrer and urllib.parse.urlsplit(referrer).hostname == urllib.parse.urlsplit(site().site_url).hostname:
        state["referrer"] = referrer
    state.update(pkce_challenge(query))
    nonce = secrets.token_urlsafe(24)
    state["nonce"] = digest(nonce)
    try:
        authorize_url = endpoints(name)[0]
    except ProviderError:
        raise APIError(500, f"Unable to reach the {name} provider") from None
    params = {"client_id": provider_setting(name, "client_id"), "redirect_uri": provider_setting(name, "redirect_uri"),
              "response_type": "code", "scope": site().external_oidc_scopes if name == "oidc" else OAUTH[name].scope,
              "state": jwt.encode(state, state_key(), algorithm="HS256")}
    secure = "; Secure" if provider_setting(name, "redirect_uri").startswith("https:") else ""
    cookie = f"{NONCE_COOKIE}={nonce}; Path=/; Max-Age={STATE_LIFETIME}; HttpOnly; SameSite=Lax{secure}"
    separator = "&" if "?" in authorize_url else "?"
    return reply(None, 302, [("Location", authorize_url + separator + urllib.parse.urlencode(params)),
                             ("Set-Cookie", cookie)])


def pkce_challenge(query):
    challenge, method = query.getunicode("code_challenge"), query.getunicode("code_challenge_method")
    if not challenge and not method:
        return {}
    if method != "S256":
        raise APIError(400, "Unsupported code_challenge_method: only S256")
    if not PKCE_CHALLENGE.fullmatch(challenge or ""):
        raise APIError(400, "Invalid code_challenge")
    return {"code_challenge": challenge}


@app.get("/callback")
@app.get("/callback/")
def callback():
    """Back from the provider. A bad state is a JSON 400; after that, every outcome is a
    redirect to the site, with tokens (or a PKCE code) or an error in the URL."""
    state = read_state(request.query.getunicode("state"))
    target = site().external_redirecturl or state.get("referrer") or site().site_url
    clear = ("Set-Cookie", f"{NONCE_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")
    try:
        suffix = finish_external_login(state)
    except MailError as e:
        suffix = "#" + urllib.parse.urlencode({"error": "server_error", "error_description": MAIL_ERRORS[e.args[0]]})
    except APIError as e:
        code = e.oauth or OAUTH_CODES.get(e.status, "server_error")
        suffix = "#" + urllib.parse.urlencode({"error": code, "error_description": e.msg})
    if suffix.startswith("?"):  # a query goes before any fragment the target has
        base, hash_, fragment = target.partition("#")
        target, suffix = base + ("&" if "?" in base else "?") + suffix[1:], hash_ + fragment
    return reply(None, 302, [("Location", target + suffix), clear])


def finish_external_login(state):
    query = request.query
    consume_state(state, request.get_cookie(NONCE_COOKIE))
    if query.get("error"):
        raise APIError(400, query.getunicode("error_description") or "", oauth=query.getunicode("error"))
    if not query.get("code"):
        raise APIError(400, "Authorization code missing")
    name = usable_provider(state["provider"])
    profile = fetch_profile(name, query.getunicode("code"))
    for attempt in (1, 2):
        try:
            user, signed_in = external_account(name, profile, state)
            break
        except A.db.IntegrityError:
            if attempt == 2:  # a concurrent first login made the user: the second pass finds it
                raise
    if not signed_in:
        return ""
    log_login(name, user)
    if state.get("code_challenge"):
        return "?" + urllib.parse.urlencode({"code": issue_code(user, state["code_challenge"])})
    with A.db.transaction():
        tokens = token_response(user)
    return "#" + urllib.parse.urlencode({"access_token": tokens["access_token"], "expires_in": tokens["expires_in"],
                                         "refresh_token": tokens["refresh_token"], "token_type": "bearer"})


def code_grant(code, verifier):
    """The README's authorization_code grant (ours; upstream refuses it): a PKCE code from
    /callback and its verifier give the usual token response."""
    if not code:
        raise oauth_error("invalid_request", "code required")
    if not verifier:
        raise oauth_error("invalid_request", "code_verifier required")
    user = redeem_code(code, verifier)
    if not user:
        raise oauth_error("invalid_grant", "Invalid authorization code")
    with A.db.transaction():
        return token_reply(user)


# --- operator endpoints (multi-instance mode) ---------------------------------------------------

def require_operator():
    if not A.cfg.multiinstancemode:
        raise APIError(404, "Not Found")
    if not same_secret(bearer_token(), A.cfg.operator_token):
        raise APIError(401, "Request does not include an Operator token")


def instance_row(instance_id):
    try:
        instance_id = str(uuid.UUID(instance_id))
    except ValueError:
        raise APIError(400, "Invalid instance ID")
    row = A.db.one("SELECT * FROM {instances} WHERE id = ?", instance_id)
    if not row:
        raise APIError(404, "Instance not found")
    return row


def instance_json(row, config):
    return {"id": row["id"], "uuid": row["uuid"] or NIL_UUID,
            "config": shown_config(config, request.query.get("show_secrets") == "true"),
            "created_at": iso_time(row["created_at"]), "updated_at": iso_time(row["updated_at"])}


def checked_config(data, instance_id):
    """The config as it will be stored, refused with a 422 naming the member when it cannot
    serve requests (upstream stores anything and fails later, at request time)."""
    try:
        instance_config(data, instance_id)
    except ValueError as e:
        raise APIError(422, str(e))
    return json.dumps(data)


def operator_params():
    try:
        return json_body()
    except ValueError as e:
        raise APIError(400, f"Error decoding params: {e}")


@app.get("/")
def manifest():
    require_operator()
    return health()


@app.post("/instances")
def create_instance():
    require_operator()
    p = operator_params()
    site_uuid, config = p.get("uuid") or NIL_UUID, p.get("config") or {}
    if not is_uuid(site_uuid):
        raise APIError(400, "Error decoding params: uuid must be a UUID")
    site_uuid = str(uuid.UUID(str(site_uuid)))
    row = {"id": new_uuid(), "uuid": site_uuid, "created_at": now(), "updated_at": now()}
    raw = checked_config(config, row["id"])
    try:  # a unique key on uuid (ours) decides between concurrent creations
        A.db.execute("INSERT INTO {instances} (id, uuid, raw_base_config, created_at, updated_at)"
                     " VALUES (?, ?, ?, ?, ?)", row["id"], site_uuid, raw, row["created_at"], row["updated_at"])
    except A.db.IntegrityError:
        raise APIError(400, "An instance with that UUID already exists") from None
    body = {**instance_json(row, config), "endpoint": A.cfg.api_endpoint, "state": "active"}
    return reply(body, 201)


@app.get("/instances/<instance_id>")
def get_instance(instance_id):
    require_operator()
    row = instance_row(instance_id)
    return reply(instance_json(row, json.loads(row["raw_base_config"] or "{}")))


@app.put("/instances/<instance_id>")
def update_instance(instance_id):
    require_operator()
    patch = operator_params().get("config") or {}
    with A.db.transaction():
        row = A.db.one("SELECT * FROM {instances} WHERE id = ?" + A.db.for_update, instance_row(instance_id)["id"])
        config = merge_config(json.loads(row["raw_base_config"] or "{}"), patch) if isinstance(patch, dict) else patch
        row["updated_at"] = now()
        A.db.execute("UPDATE {instances} SET raw_base_config = ?, updated_at = ? WHERE id = ?",
                     checked_config(config, row["id"]), row["updated_at"], row["id"])
    return reply(instance_json(row, config))


@app.delete("/instances/<instance_id>")
def delete_instance(instance_id):
    """The instance, its users and their refresh tokens; audit entries stay (as upstream)."""
    require_operator()
    row = instance_row(instance_id)
    with A.db.transaction():
        for table in ("refresh_tokens", "users", "user_counts"):
            A.db.execute(f"DELETE FROM {{{table}}} WHERE instance_id = ?", row["id"])
        A.db.execute("DELETE FROM {instances} WHERE id = ?", row["id"])
    return reply(None, 204)


# --- admin endpoints ------------------------------------------------------------------------

@app.post("/invite")
def invite():
    actor, aud = require_admin()
    p = read_params("Could not read Invite params", email=str, data=dict)
    email_ = validate_email(p["email"])  # the invitee joins the audience the admin check approved
    user = find_user_by_email(email_, aud)
    if user and user["confirmed_at"]:
        raise email_taken()
    before = dict(user) if user else None
    if user:  # unconfirmed: nobody owns it yet, so the invite replaces whatever signup made it
        user["encrypted_password"], user["user_metadata"] = "", merge_meta({}, p["data"] or {})
    else:
        user = new_user(email_, "", aud, p["data"])
    with mail_slot_claimed("invite", email_, required=True):
        webhook("validate", user)
        new_link("invite", user)
        try:
            with A.db.transaction():
                if before:
                    save_user(user, "encrypted_password", "user_metadata", "confirmation_token", "invited_at")
                else:
                    insert_user(user)
                entries = [audit(actor, "user_invited", target=user)]
        except A.db.IntegrityError:
            raise email_taken() from None
        mail_link("invite", user, before, entries)
    return reply(user_json(user))


def short_role(role):
    if len(role.strip()) > 255:
        raise APIError(422, "The role is too long: at most 255 characters")
    return role.strip()


def paginate():
    query = request.query

    def number(name, default):
        raw = query.get(name, "")
        if raw == "":
            return default
        if not re.fullmatch(r"[0-9]{1,12}", raw):
            raise APIError(400, f'Bad Pagination Parameters: {name} must be a whole number, got "{raw}"')
        return int(raw)
    page, per_page = max(number("page", 1), 1), number("per_page", 50)
    if per_page == 0:
        raise APIError(400, "Bad Pagination Parameters: per_page must be at least 1")
    return min(page, 10 ** 9), min(per_page, 1000)


def paginated(table, where, args, direction, page, per_page, total=None):
    """One page of `table` (newest first unless direction is ASC) plus upstream's Link and
    X-Total-Count headers. The page's ids are picked from the index alone and only then are
    their rows read, so a deep page costs no more row reads than the first."""
    if total is None:
        total = A.db.one(f"SELECT COUNT(*) AS n FROM {{{table}}} WHERE {where}", *args)["n"]
    order = f"created_at {direction}, id {direction}"
    rows = A.db.query(f"SELECT t.* FROM {{{table}}} t JOIN (SELECT id FROM {{{table}}} WHERE {where} ORDER BY {order}"
                      f" LIMIT ? OFFSET ?) page ON page.id = t.id ORDER BY t.{order.replace(', ', ', t.')}",
                      *args, per_page, (page - 1) * per_page)
    pairs = [(k, v) for k, v in urllib.parse.parse_qsl(request.query_string, keep_blank_values=True) if k != "page"]

    def link(n, rel):
        query = urllib.parse.urlencode(sorted(pairs + [("page", str(n))], key=lambda kv: kv[0]))
        return f'<{request.path}?{query}>; rel="{rel}"'
    last = -(-total // per_page)
    links = ([link(page + 1, "next")] if last > page else []) + ([link(page - 1, "prev")] if page > 1 else [])
    headers = [("Link", ", ".join(links + [link(last, "last")])), ("X-Total-Count", str(total))]
    return rows, headers


def like(text):
    return "%" + re.sub(r"([!%_])", r"!\1", text.lower()) + "%"


def list_users(with_password=False):
    actor, aud = require_admin()
    page, per_page = paginate()
    where, args = "instance_id = ? AND aud = ?", [site().instance_id, aud]
    if request.query.getunicode("filter"):
        where += " AND (email LIKE ? ESCAPE '!' OR LOWER({full_name}) LIKE ? ESCAPE '!')"
        args += [like(request.query.getunicode("filter"))] * 2
    order = []
    for item in request.query.getall("sort"):
        field, _, direction = item.strip().partition(" ")
        if field != "created_at":
            raise APIError(400, f"Bad Sort Parameters: bad field for sort '{field}'")
        direction = direction.strip().lower() or "desc"
        if direction not in ("asc", "desc"):
            raise APIError(400, f"Bad Sort Parameters: bad direction for sort '{direction}', only 'asc' and 'desc' allowed")
        order.append(direction)
    direction = (order or ["desc"])[0].upper()
    total = None if request.query.getunicode("filter") else count_users(aud)
    rows, headers = paginated("users", where, args, direction, page, per_page, total)
    users = [user_json(read_user(r), with_password) for r in rows]
    return reply({"aud": aud, "users": users}, headers=headers)


@app.get("/admin/users")
@app.get("/admin/users/")
def admin_list_users():
    return list_users()


@app.get("/admin/users/export")
def admin_export_users():
    if not A.cfg.api_export_secret:
        return admin_get_user("export")
    require_admin()
    if not same_secret(header("Export-Secret", ""), A.cfg.api_export_secret):
        raise APIError(401, "Invalid export secret")
    return list_users(with_password=True)


ADMIN_USER_FIELDS = dict(email=str, password=str, aud=str, role=str, confirm=bool, user_metadata=dict,
                         app_metadata=dict)


@app.post("/admin/users")
@app.post("/admin/users/")
def admin_create_user():
    actor, aud = require_admin()
    require_email_provider()
    p = read_params("Could not decode admin user params", **ADMIN_USER_FIELDS)
    email_ = validate_email(p["email"])
    aud = p["aud"] or request_aud()
    # Unlike upstream, no password means no password (not the hash of ""): nobody can log in
    # with an empty one.
    password_hash = hash_password(check_password(p["password"])) if p["password"] else ""
    user = new_user(email_, password_hash, aud, p["user_metadata"])
    if p["role"]:
        user["role"] = short_role(p["role"])
    if p["confirm"]:
        user["confirmed_at"] = now()
    try:
        with A.db.transaction():
            if find_user_by_email(email_, aud):
                raise email_taken()
            insert_user(user)
            audit(actor, "user_signedup", target=user)
    except A.db.IntegrityError:
        raise email_taken()
    return reply(user_json(user))


def load_user(user_id, actor, aud, lock=False):
    """The user an admin acts on. An admin acts in the one audience its check approved: a user
    of another audience is not found (upstream lets it read, change and delete them); the
    operator and super admins act in every audience."""
    try:
        user_id = str(uuid.UUID(user_id))
    except ValueError:
        raise APIError(400, "user_id must be an UUID")
    user = find_user_by_id(user_id, lock)
    if not user or not (actor.get("is_super_admin") or (user["aud"] or "") == aud):
        raise APIError(404, "User not found")
    return user


@app.get("/admin/users/<user_id>")
@app.get("/admin/users/<user_id>/")
def admin_get_user(user_id):
    return reply(user_json(load_user(user_id, *require_admin())))


@app.put("/admin/users/<user_id>")
@app.put("/admin/users/<user_id>/")
def admin_update_user(user_id):
    actor, aud = require_admin()
    load_user(user_id, actor, aud)
    p = read_params("Could not decode admin user params", **ADMIN_USER_FIELDS)
    password_hash = hash_password(check_password(p["password"])) if p["password"] else None
    new_email = validate_email(p["email"]) if p["email"] else None
    try:
        with A.db.transaction():
            user = load_user(user_id, actor, aud, lock=True)
            changed = []
            if p["role"]:
                user["role"] = short_role(p["role"])
                changed.append("role")
            if p["confirm"] and not user["confirmed_at"]:
                # the admin vouches for the address, not for whoever set the pending password
                user["confirmed_at"], user["encrypted_password"] = now(), ""
                changed += ["confirmed_at", "encrypted_password"]
            if password_hash:
                user["encrypted_password"] = password_hash
                changed.append("encrypted_password")
                revoke_sessions(user)
            if new_email and new_email != user["email"]:
                user["email"] = new_email
                changed.append("email")
            for key in ("app_metadata", "user_metadata"):
                if p[key] is not None:
                    user[key] = merge_meta(user[key], p[key])
                    changed.append(key)
            save_user(user, *changed)
            audit(actor, "user_modified", target=user)
    except A.db.IntegrityError:
        raise email_taken()
    fire_and_log("usermodified", user)
    return reply(user_json(user))


@app.delete("/admin/users/<user_id>")
@app.delete("/admin/users/<user_id>/")
def admin_delete_user(user_id):
    actor, aud = require_admin()
    with A.db.transaction():
        user = load_user(user_id, actor, aud, lock=True)
        audit(actor, "user_deleted", target=user)
        delete_user(user)  # and its refresh tokens, which upstream leaves behind
    fire_and_log("userdeleted", user)
    return reply({})


def fire_and_log(event, user):
    """After-the-fact events: a failing receiver is logged, the action stands; metadata a
    `usermodified` receiver returns is stored (a deleted user has nothing left to store)."""
    try:
        metadata = (user["app_metadata"], user["user_metadata"])
        webhook(event, user)
        if event != "userdeleted" and metadata != (user["app_metadata"], user["user_metadata"]):
            with A.db.transaction():
                save_user(user, "app_metadata", "user_metadata")
    except APIError as e:
        log.error("webhook %s for user %s failed: %s %s", event, user["id"], e.status, e.msg)


# The admin console (ours): one page and its script and style, files in templates/. They hold
# no data and need no login; the page signs in with the password grant and then calls the admin
# API like any client, so it has no privilege of its own.
CONSOLE_FILES = {"": ("admin.html", "text/html; charset=utf-8"), "admin.js": ("admin.js", "text/javascript"),
                 "admin.css": ("admin.css", "text/css")}
CONSOLE_HEADERS = [("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
                   ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"), *NO_STORE]


@app.get("/admin/ui/")
def admin_console_slash():
    if not A.cfg.admin_ui_enabled:
        raise APIError(404, "Not Found")
    return reply(None, 301, [("Location", "../ui")])  # relative: right behind a path prefix too


@app.get("/admin/ui")
@app.get("/admin/ui/<name>")
def admin_console(name=""):
    if not A.cfg.admin_ui_enabled or name not in CONSOLE_FILES:
        raise APIError(404, "Not Found")
    filename, content_type = CONSOLE_FILES[name]
    with open(os.path.join(HERE, "templates", filename), "rb") as f:
        return bottle.HTTPResponse(f.read(), 200, [("Content-Type", content_type), *CONSOLE_HEADERS])


@app.route("/admin/<rest:path>", ["GET", "POST", "PUT", "DELETE"])
def admin_unknown(rest):
    require_admin()  # as upstream: credentials are checked before the path is
    raise APIError(404, "Not Found")


AUDIT_SCOPES = {"author": "(LOWER({actor_email}) LIKE ? ESCAPE '!' OR LOWER({actor_name}) LIKE ? ESCAPE '!')",
                "action": "LOWER({action}) LIKE ? ESCAPE '!'", "type": "LOWER({log_type}) LIKE ? ESCAPE '!'"}


@app.get("/admin/audit")
@app.get("/admin/audit/")
def admin_audit():
    require_admin()
    page, per_page = paginate()
    where, args = "instance_id = ?", [site().instance_id]
    query = request.query.getunicode("query", "")
    if query:
        scope, sep, value = query.partition(":")
        if not sep or scope not in AUDIT_SCOPES:
            raise APIError(400, f"Invalid query scope: {query}")
        where += " AND " + AUDIT_SCOPES[scope]
        args += [like(value)] * AUDIT_SCOPES[scope].count("?")
    rows, headers = paginated("audit_log_entries", where, args, "DESC", page, per_page)
    entries = [{"id": r["id"], "payload": json.loads(r["payload"]), "created_at": iso_time(r["created_at"])}
               for r in rows]
    return reply(entries, headers=headers)


# ============================================================================================
# Command line
# ============================================================================================

def create_app(cfg, check_schema=True):
    """Build everything a request needs, once."""
    global A
    A = App(cfg)
    A.dummy_hash = hash_password(secrets.token_hex(8)).encode()  # for logins of unknown users
    for kind in MAIL_KINDS:
        with open(os.path.join(HERE, "templates", kind + ".html"), encoding="utf-8") as f:
            A.templates[kind] = f.read()
    missing_file = cfg.db_driver == "sqlite" and not os.path.exists(A.db.params["path"])  # opening would create it
    if check_schema and (missing_file or SCHEMA_VERSION not in A.db.applied_versions()):
        raise ConfigError(f"the database schema is missing or out of date ({A.db.describe()}): "
                          "run `python migrate.py` first")
    return A


def serve(cfg):
    if cfg.multiinstancemode:
        log.info("multi-instance mode: each request names its instance with x-nf-sign")
    else:
        if not cfg.site_url:
            cfg.site_url = f"http://localhost:{cfg.api_port}"
            log.warning("GOTRUE_SITE_URL is not set: mail links will point to %s", cfg.site_url)
        ensure_jwt_secret(cfg)
        if not cfg.smtp_host and not cfg.mailer_autoconfirm:
            log.warning("mail is not sent (no GOTRUE_SMTP_HOST): confirmations, recoveries and invites cannot "
                        "complete; set GOTRUE_MAILER_AUTOCONFIRM=true to try it locally, or confirm users with "
                        "`python gotrue.py admin confirm EMAIL`")
    create_app(cfg)  # before the tracer: the schema check at start is no request's span
    setup_tracing(cfg)
    A.db.close()  # each worker opens its own connections
    host = cfg.api_host or "0.0.0.0"
    try:
        sock = socket.create_server((host, cfg.api_port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=1024)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{cfg.api_port}: {e.strerror}") from None
    # the start line is written whatever LOG_LEVEL says: where it listens, on which database
    LINES.write_line("INFO", f"gotrue.py {VERSION} listening on http://{host}:{sock.getsockname()[1]} "
                     f"({A.db.describe()}, {cfg.api_workers} worker{'s' if cfg.api_workers > 1 else ''})", {})
    if cfg.api_workers == 1:
        run_worker(cfg, sock, current_cpu_slot())
    else:
        supervise(cfg, sock)
    log.info("stopped")


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def run_worker(cfg, sock, cpu_slot):
    """waitress's threads on the listening socket, until SIGTERM or SIGINT; then the requests
    under way are finished and answered (for at most SHUTDOWN_TIMEOUT_SEC) before it exits."""
    pin_to_one_cpu(cfg, cpu_slot)  # before waitress starts its threads
    server = waitress.server.create_server(wsgi, sockets=[sock], threads=cfg.api_threads, ident="gotrue",
                                           max_request_body_size=2 * MAX_BODY, clear_untrusted_proxy_headers=True)
    server.channel_class = JSONErrorChannel

    def stop(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: setup_logging(cfg))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked around fork by supervise()
    LINES.start_writer()
    try:
        server.asyncore.loop(timeout=server.adj.asyncore_loop_timeout, map=server._map)
    except (SystemExit, KeyboardInterrupt):
        drain(server, cfg.shutdown_timeout_sec)
    finally:
        LINES.stop_writer()  # a worker ends with os._exit: nothing may stay queued


def drain(server, seconds):
    """Stop accepting, then keep waitress's loop turning (it is what writes the answers) until
    no request is under way or `seconds` have passed."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # the listening socket only (waitress's own close() also stops the trigger the threads need)
    waitress.wasyncore.dispatcher.close(server)
    dispatcher, end = server.task_dispatcher, time.monotonic() + seconds

    def busy():
        channels = [c for c in server._map.values() if isinstance(c, waitress.channel.HTTPChannel)]
        return dispatcher.active_count or dispatcher.queue or any(c.requests or c.total_outbufs_len for c in channels)
    while busy() and time.monotonic() < end:
        server.asyncore.loop(timeout=0.05, map=server._map, count=1)
    dispatcher.shutdown(timeout=max(0.1, end - time.monotonic()))
    AFTER_ANSWER.drain(end)  # a recovery mail promised by a 200 still goes out
    A.db.close()
    if TRACER is not None:  # send the last spans: a worker ends with os._exit, which skips atexit
        TRACER.shutdown(timeout=max(0.5, end - time.monotonic()))


def supervise(cfg, sock):
    """API_WORKERS > 1 (ours): pre-fork. N processes serve the one inherited socket (the kernel
    hands each connection to one of them); this process only watches: a worker that dies is
    replaced, SIGTERM/SIGINT stop them all, SIGHUP reopens every log."""
    workers, stopping = {}, []  # pid -> index (a replacement takes the dead worker's CPU)
    first_cpu = current_cpu_slot()

    def spawn(index):
        # a signal between fork and run_worker's handlers would run this process's handler in the
        # child: it waits, blocked, until the child can take it
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        else:
            A.request_prefix = secrets.token_hex(6)
            try:
                run_worker(cfg, sock, first_cpu + index)
            finally:
                os._exit(0)
        workers[pid] = index

    def forward(signum, frame):
        if signum == signal.SIGHUP:
            setup_logging(cfg)
        else:
            stopping.append(signum)
            sock.close()  # this process's copy too, or the kernel would go on accepting for nobody
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for index in range(cfg.api_workers):
        spawn(index)
    while workers:
        pid, status = os.wait()
        index = workers.pop(pid, None)
        if not stopping and index is not None:
            log.warning("worker %d ended (status %d): starting another", pid, status)
            spawn(index)


def admin_command(cfg, args):
    """`admin createuser|deleteuser|editrole|confirm`: how a new site makes its first admin.
    With -i, on that instance (multi-instance mode)."""
    create_app(cfg)
    if args.instance_id and cfg.multiinstancemode:  # single-instance mode accepts and ignores it, as before
        CURRENT.site = A.instances.get(args.instance_id) if is_uuid(args.instance_id) else None
        if CURRENT.site is None:
            raise SystemExit(f"Error finding instance {args.instance_id}")
        cfg = CURRENT.site
    aud = args.aud if args.aud is not None else cfg.jwt_aud
    if args.action == "createuser":
        if len(args.args) < 2:
            raise SystemExit("Not enough arguments to createuser command. Expected at least email and password values")
        address, password = validate_cli(validate_email, args.args[0]), args.args[1]
        user = new_user(address, hash_password(validate_cli(check_password, password)), aud)
        user["is_super_admin"] = args.superadmin
        user["role"] = args.args[2] if len(args.args) > 2 else cfg.jwt_admin_group_name if args.admin else user["role"]
        if args.confirm or cfg.mailer_autoconfirm:
            user["confirmed_at"] = now()
        try:
            with A.db.transaction():
                insert_user(user)
        except A.db.IntegrityError:
            raise SystemExit("Error creating new user: user already exists")
        print(f"Created user: {address} (id {user['id']}, role {user['role'] or '(none)'})")
        return
    if not args.args:
        raise SystemExit("Not enough arguments to deleteuser command. Expected at least ID or email")
    user = find_user_by_email(args.args[0], aud) or (find_user_by_id(args.args[0]) if is_uuid(args.args[0]) else None)
    if not user:
        raise SystemExit(f"Error finding user ({args.args[0]}): no such email in audience {aud!r} and no such id")
    with A.db.transaction():
        if args.action == "deleteuser":
            delete_user(user)
            print(f"Removed user: {args.args[0]}")
        elif args.action == "confirm":  # ours: the way out when no mail can be sent
            if not user["confirmed_at"]:
                user["confirmed_at"] = now()
                save_user(user, "confirmed_at")
            print(f"Confirmed {user['email']}")
        else:
            if len(args.args) < 2:
                raise SystemExit("Not enough arguments to editrole command. Expected email or ID and the role")
            user["role"] = args.args[1].strip()
            save_user(user, "role")
            print(f"Changed role of {user['email']} to {user['role'] or '(none)'}")


def validate_cli(check, value):
    try:
        return check(value)
    except APIError as e:
        raise SystemExit(e.msg)


COMMANDS = {"serve": "serve the API (the default)",
            "multi": "serve many sites from one process (multi-instance mode; needs GOTRUE_OPERATOR_TOKEN)",
            "migrate": "create or upgrade the database schema (same as migrate.py)",
            "admin": "manage users: admin createuser|deleteuser|editrole|confirm ... (see admin --help)",
            "version": "print the version"}


def admin_parser():
    admin = argparse.ArgumentParser(prog="gotrue.py admin", description="Manage users from the command line.")
    admin.add_argument("action", choices=("createuser", "deleteuser", "editrole", "confirm"))
    admin.add_argument("args", nargs="*", metavar="ARG",
                       help="createuser EMAIL PASSWORD [ROLE] | deleteuser EMAIL|ID | editrole EMAIL|ID ROLE | "
                            "confirm EMAIL|ID (keeps the password: the server's operator vouches for it)")
    admin.add_argument("-a", "--aud", help="audience (default: GOTRUE_JWT_AUD)")
    admin.add_argument("-i", "--instance_id", help="the instance to act on (multi-instance mode)")
    admin.add_argument("--confirm", action="store_true", help="create the user confirmed")
    admin.add_argument("--admin", action="store_true", help="give the user the admin role")
    admin.add_argument("--superadmin", action="store_true", help="make the user a super admin")
    return admin


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="gotrue.py", description="GoTrue-compatible user management API.", formatter_class=argparse.RawTextHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:9} {text}" for name, text in COMMANDS.items()))
    parser.add_argument("-c", "--config", help="dotenv file to load (default: .env if present)")
    parser.add_argument("-i", "--instance_id", help="the instance (admin commands, multi-instance mode)")
    parser.add_argument("command", nargs="?", default="serve", choices=COMMANDS, metavar="COMMAND")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "admin":
        # options may stand anywhere among the arguments, as with upstream's CLI
        admin_args = admin_parser().parse_intermixed_args(args.rest)
        admin_args.instance_id = admin_args.instance_id or args.instance_id
    elif args.rest:
        parser.error(f"unexpected arguments: {' '.join(args.rest)}")
    if args.command == "version":
        print(VERSION)
        return 0
    try:
        cfg = load_config(args.config, multi=args.command == "multi")
        setup_logging(cfg)
        if args.command == "migrate":
            import migrate
            return migrate.migrate(cfg)
        if args.command == "admin":
            admin_command(cfg, admin_args)
        else:
            serve(cfg)
    except ConfigError as e:
        print(f"gotrue.py: {e}", file=sys.stderr)
        return 1
    except (sqlite3.Error, pymysql.err.Error, DatabaseUnavailable) as e:
        print(f"gotrue.py: database error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
