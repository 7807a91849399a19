"""The database layer under failure: a MySQL connection that goes away is replaced on the next
request, and an unreachable database is a JSON 500, never a traceback or a hang. And SQLite's
log (WAL) is copied back by a thread of our own, not inside a writer's commit."""

import os
import re
import sqlite3

import pymysql
import pytest

import gotrue
from conftest import unique_email, wait_until


def kill_server_connections(server):
    """KILL every connection of the gotrue.py process to its MariaDB database."""
    params = server.db.params
    admin = pymysql.connect(host=params["host"], port=params["port"], user=params["user"], password=params["password"])
    with admin.cursor() as cur:
        cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                    (params["database"],))
        ids = [row[0] for row in cur.fetchall()]
        for conn_id in ids:
            cur.execute(f"KILL CONNECTION {int(conn_id)}")
    admin.close()
    return len(ids)


def test_lost_mysql_connections_are_reestablished(make_server, mariadb_root):
    server = make_server("mariadb", GOTRUE_API_THREADS="2")
    email = unique_email()
    server.confirmed_user(email)
    tokens = server.login(email)
    server.db.close()  # the test's own connection is not the server's
    assert kill_server_connections(server) >= 1
    for _ in range(4):  # every worker thread meets its dead connection once
        assert server.get("/user", token=tokens["access_token"]).status_code == 200
    assert kill_server_connections(server) >= 1
    assert server.login(email)["access_token"]  # a write path (transaction) after the loss


def test_a_transaction_first_after_the_loss_works_and_leaves_nothing_open(make_server, mariadb_root):
    """The first statement after the loss is BEGIN (signup, verify...): the transaction must run
    on the new connection and commit there, or later requests see stale data."""
    server = make_server("mariadb", GOTRUE_API_THREADS="2", GOTRUE_OPERATOR_TOKEN="op-token-db-test")
    for _ in range(4):
        server.get("/admin/users", token="op-token-db-test")  # every thread has its connection
    server.db.close()
    assert kill_server_connections(server) >= 1
    emails = [unique_email() for _ in range(4)]
    for email in emails:
        r = server.post("/admin/users", token="op-token-db-test", json={"email": email, "confirm": True})
        assert r.status_code == 200, r.text
    r = server.get("/admin/users", token="op-token-db-test", params={"per_page": 100})
    assert set(emails) <= {u["email"] for u in r.json()["users"]}
    # nothing left open on the server's side
    params = server.db.params
    admin = pymysql.connect(host=params["host"], port=params["port"], user=params["user"], password=params["password"])
    with admin.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.innodb_trx")
        assert cur.fetchone()[0] == 0
    admin.close()


@pytest.mark.parametrize("engine_name", ["sqlite", "mariadb"])
def test_database_gone_is_a_json_500(make_server, engine_name):
    server = make_server(engine_name)
    server.sql("DROP TABLE {audit_log_entries}")
    email = unique_email()
    user = server.signup(email)
    token = server.user_row(email)["confirmation_token"]
    r = server.post("/verify", json={"type": "signup", "token": token})
    assert r.status_code == 500 and r.json()["code"] == 500 and "Traceback" not in r.text
    # the transaction was rolled back: the user is still unconfirmed and the token unused
    row = server.user_row(email)
    assert row["confirmation_token"] == token and not row["confirmed_at"] and row["id"] == user["id"]


def test_sqlite_log_is_checkpointed_in_the_background_and_starts_over(make_server):
    """Every CHECKPOINT_EVERY commits the server's checkpointer copies the whole log into the
    database file (the debug line says so), so writers start the log over and it stays small,
    far below SQLite's own backstop (4 x 1000 frames), however many writes come."""
    server = make_server("sqlite", LOG_LEVEL="debug")
    token = server.login(server.confirmed_user()["email"])["access_token"]
    wal = server.env["DATABASE_URL"] + "-wal"
    sizes = []
    for round_ in range(4):
        for i in range(gotrue.CHECKPOINT_EVERY):
            r = server.put("/user", token=token, json={"data": {"round": round_, "i": i}})
            assert r.status_code == 200, r.text
        sizes.append(os.path.getsize(wal))
    done = wait_until(lambda: [(int(a), int(b)) for a, b in
                               re.findall(r"checkpoint: (\d+) of (\d+) log frames", server.log())], "a checkpoint line")
    assert any(copied == frames > 0 for copied, frames in done), done
    page = 4096 + 24  # a log frame: a page and its header
    assert max(sizes) < 2 * gotrue.CHECKPOINT_FRAMES * page, sizes
    conn = sqlite3.connect(server.env["DATABASE_URL"])
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    user = server.get("/user", token=token).json()
    assert user["user_metadata"] == {"round": 3, "i": gotrue.CHECKPOINT_EVERY - 1}
