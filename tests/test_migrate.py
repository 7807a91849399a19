"""migrate.py on both engines: a fresh database, a second run, a namespace, and a database laid out
by upstream GoTrue's own migrations (upgraded in place, then served by us)."""

import os
import subprocess
import sys

import bcrypt
import pytest

import gotrue
from conftest import ENGINES, ROOT, Server, base_env, migrate

# Upstream's tables as its migrations leave them (migrations/2017..2018*.up.sql, final shape),
# with its unprefixed index names and pop's schema_migration bookkeeping.
UPSTREAM_TABLES = """
CREATE TABLE {ns}users (
  instance_id varchar(255) DEFAULT NULL, id varchar(255) NOT NULL, aud varchar(255) DEFAULT NULL,
  role varchar(255) DEFAULT NULL, email varchar(255) DEFAULT NULL, encrypted_password varchar(255) DEFAULT NULL,
  confirmed_at timestamp NULL DEFAULT NULL, invited_at timestamp NULL DEFAULT NULL,
  confirmation_token varchar(255) DEFAULT NULL, confirmation_sent_at timestamp NULL DEFAULT NULL,
  recovery_token varchar(255) DEFAULT NULL, recovery_sent_at timestamp NULL DEFAULT NULL,
  email_change_token varchar(255) DEFAULT NULL, email_change varchar(255) DEFAULT NULL,
  email_change_sent_at timestamp NULL DEFAULT NULL, last_sign_in_at timestamp NULL DEFAULT NULL,
  raw_app_meta_data JSON NULL DEFAULT NULL, raw_user_meta_data JSON NULL DEFAULT NULL,
  is_super_admin tinyint(1) DEFAULT NULL, created_at timestamp NULL DEFAULT NULL,
  updated_at timestamp NULL DEFAULT NULL, PRIMARY KEY (id)
) /*! ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci */;
CREATE INDEX users_instance_id_idx ON {ns}users (instance_id);
CREATE INDEX users_instance_id_email_idx ON {ns}users (instance_id, email);
CREATE TABLE {ns}instances (
  id varchar(255) NOT NULL, uuid varchar(255) DEFAULT NULL, raw_base_config longtext,
  created_at timestamp NULL DEFAULT NULL, updated_at timestamp NULL DEFAULT NULL, PRIMARY KEY (id)
) /*! ENGINE=InnoDB DEFAULT CHARSET=utf8 */;
CREATE TABLE {ns}refresh_tokens (
  instance_id varchar(255) DEFAULT NULL, id AUTOID, token varchar(255) DEFAULT NULL,
  user_id varchar(255) DEFAULT NULL, revoked tinyint(1) DEFAULT NULL,
  created_at timestamp NULL DEFAULT NULL, updated_at timestamp NULL DEFAULT NULL, PRIMARY KEY (id)
) /*! ENGINE=InnoDB DEFAULT CHARSET=utf8 */;
CREATE INDEX refresh_tokens_instance_id_idx ON {ns}refresh_tokens (instance_id);
CREATE INDEX refresh_tokens_instance_id_user_id_idx ON {ns}refresh_tokens (instance_id, user_id);
CREATE INDEX refresh_tokens_token_idx ON {ns}refresh_tokens (token);
CREATE TABLE {ns}audit_log_entries (
  instance_id varchar(255) DEFAULT NULL, id varchar(255) NOT NULL, payload JSON NULL DEFAULT NULL,
  created_at timestamp NULL DEFAULT NULL, PRIMARY KEY (id)
) /*! ENGINE=InnoDB DEFAULT CHARSET=utf8 */;
CREATE INDEX audit_logs_instance_id_idx ON {ns}audit_log_entries (instance_id);
CREATE TABLE schema_migration (version varchar(14) NOT NULL);
CREATE UNIQUE INDEX version_idx ON schema_migration (version)
"""
UPSTREAM_VERSIONS = ("20171026211738", "20171026211808", "20171026211834", "20180103212743",
                     "20180108183307", "20180119214651", "20180125194653")


def run_migrate(env, workdir):
    return subprocess.run([sys.executable, os.path.join(ROOT, "migrate.py")], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)


def database(env):
    return gotrue.Database(gotrue.Config(env))


def build_upstream_database(env, users):
    db = database(env)
    autoid = "bigint NOT NULL AUTO_INCREMENT" if db.driver == "mysql" else "INTEGER NOT NULL"
    for statement in UPSTREAM_TABLES.replace("AUTOID", autoid).split(";"):
        db.execute(statement)
    for version in UPSTREAM_VERSIONS:
        db.execute("INSERT INTO schema_migration (version) VALUES (?)", version)
    for user_id, email, password in users:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4, prefix=b"2a")).decode()
        db.execute("INSERT INTO {users} (instance_id, id, aud, role, email, encrypted_password, confirmed_at,"
                   " confirmation_token, recovery_token, email_change_token, email_change, raw_app_meta_data,"
                   " raw_user_meta_data, is_super_admin, created_at, updated_at)"
                   " VALUES (?, ?, '', '', ?, ?, ?, '', '', '', '', ?, ?, 0, ?, ?)",
                   gotrue.NIL_UUID, user_id, email, hashed, gotrue.now(), '{"provider":"email"}',
                   '{"full_name":"Old User"}', gotrue.now(), gotrue.now())
    return db


@pytest.fixture(params=ENGINES)
def fresh(request, new_database, tmp_path):
    env = base_env(str(tmp_path), new_database(request.param))
    return env, str(tmp_path)


def test_fresh_database_then_no_op(fresh):
    env, workdir = fresh
    first = run_migrate(env, workdir)
    assert first.returncode == 0, first.stderr
    assert "applied 20261123000001" in first.stdout and "4 migrations applied" in first.stdout
    second = run_migrate(env, workdir)
    assert second.returncode == 0 and "0 migrations applied" in second.stdout and "applied 2" not in second.stdout
    db = database(env)
    assert gotrue.SCHEMA_VERSION in db.applied_versions()
    assert {"users", "refresh_tokens", "instances", "audit_log_entries"} <= db.tables_present()


def index_names(db, table):
    if db.driver == "sqlite":
        return {r["name"] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", table)}
    return {r["name"] for r in db.query("SELECT DISTINCT index_name AS name FROM information_schema.statistics"
                                        " WHERE table_schema = DATABASE() AND table_name = ?", table)}


REDUNDANT_ON_SQLITE = {"refresh_tokens": {"refresh_tokens_token_idx", "refresh_tokens_instance_id_idx"},
                       "audit_log_entries": {"audit_logs_instance_id_idx"}}


def test_sqlite_drops_three_covered_indexes_and_mysql_keeps_upstreams(fresh):
    """A section marked `-- only: sqlite` runs there alone; both engines record its version."""
    env, workdir = fresh
    migrate(env, workdir)
    db = database(env)
    assert "20261203000002" in db.applied_versions()
    for table, redundant in REDUNDANT_ON_SQLITE.items():
        names = index_names(db, table)
        if db.driver == "sqlite":
            assert not names & redundant, names
        else:
            assert redundant <= names, names
    # what covers them is there on both
    assert {"refresh_tokens_token_key", "refresh_tokens_instance_id_user_id_idx"} <= index_names(db, "refresh_tokens")
    assert "audit_log_entries_instance_created_idx" in index_names(db, "audit_log_entries")
    if db.driver == "sqlite":  # the refresh lookup still goes through an index
        plan = " ".join(r["detail"] for r in db.query("EXPLAIN QUERY PLAN SELECT id FROM {refresh_tokens}"
                                                       " WHERE token = ? AND instance_id = ?", "t", gotrue.NIL_UUID))
        assert "USING INDEX refresh_tokens_token_key" in plan, plan


def test_namespace_prefixes_every_table_and_the_server_uses_them(fresh):
    env, workdir = fresh
    env["GOTRUE_DB_NAMESPACE"] = "site1"
    migrate(env, workdir)
    tables = database(env).tables_present()
    assert {"site1_users", "site1_refresh_tokens", "site1_instances", "site1_audit_log_entries"} <= tables
    assert "users" not in tables and "schema_migration" in tables  # pop never namespaces it
    server = Server(workdir, env).start()
    try:
        user = server.signup()
        assert server.sql("SELECT email FROM site1_users")[0]["email"] == user["email"]
    finally:
        server.stop()


def test_upgrades_a_database_made_by_upstream(fresh):
    """Upstream's tables with its data: only our additions are applied, the emails are folded to
    lower case, and the old accounts and refresh tokens keep working on our server."""
    env, workdir = fresh
    db = build_upstream_database(env, [("11111111-1111-4111-8111-111111111111", "Old.User@Example.com", "old-pw")])
    db.execute("INSERT INTO {refresh_tokens} (instance_id, token, user_id, revoked, created_at, updated_at)"
               " VALUES (?, 'upstreamToken123456789', '11111111-1111-4111-8111-111111111111', 0, ?, ?)",
               gotrue.NIL_UUID, gotrue.now(), gotrue.now())
    result = run_migrate(env, workdir)
    assert result.returncode == 0, result.stderr
    assert "applied 20261123000001" in result.stdout and "applied 2017" not in result.stdout
    server = Server(workdir, env).start()
    try:
        tokens = server.login("old.user@example.com", "old-pw")
        assert server.get("/user", token=tokens["access_token"]).json()["user_metadata"] == {"full_name": "Old User"}
        r = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": "upstreamToken123456789"})
        assert r.status_code == 200, r.text
        # the new unique key is in force: the same address cannot be registered again
        assert server.post("/signup", json={"email": "OLD.user@example.com", "password": "x"}).status_code == 400
    finally:
        server.stop()


def test_duplicates_block_the_unique_key_and_are_listed(fresh):
    env, workdir = fresh
    db = build_upstream_database(env, [("22222222-2222-4222-8222-222222222222", "dup@example.com", "a"),
                                       ("33333333-3333-4333-8333-333333333333", "DUP@example.com", "b")])
    result = run_migrate(env, workdir)
    assert result.returncode == 1
    assert "dup@example.com" in result.stderr and "2 users" in result.stderr and "Traceback" not in result.stderr
    assert gotrue.SCHEMA_VERSION not in db.applied_versions()
    assert len(db.query("SELECT id FROM {users}")) == 2  # nothing was changed


def test_unreachable_database_is_a_clear_error(tmp_path):
    env = base_env(str(tmp_path), {"GOTRUE_DB_DRIVER": "mysql", "DATABASE_URL": "root@tcp(127.0.0.1:1)/nothing"})
    result = run_migrate(env, str(tmp_path))
    assert result.returncode == 1 and "database error" in result.stderr and "Traceback" not in result.stderr
