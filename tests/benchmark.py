"""Benchmark: what a request costs, and whether admin listing stays flat as users grow.

    python tests/benchmark.py [--engines sqlite,mariadb] [--sizes 1000,100000] [--requests 200]

Starts real gotrue.py servers (as the tests do), fills each database with N users straight
through SQL, then times requests from one client thread over loopback and prints a table of
median milliseconds. Not part of the test suite: speed is measured here, not asserted there.
"""

import argparse
import statistics
import sys
import tempfile
import time
import uuid

import bcrypt
import jwt

from conftest import Server, base_env, migrate
from mariadb_server import create_database, start_private_mariadb

import gotrue


def fill(db, n, aud=""):
    """n confirmed users, inserted in batches (no HTTP, no bcrypt per user)."""
    hashed = bcrypt.hashpw(b"bench-pw", bcrypt.gensalt(10, prefix=b"2a")).decode()
    base = gotrue.now() - gotrue.dt.timedelta(days=1)
    columns = ("instance_id", "id", "aud", "role", "email", "encrypted_password", "confirmed_at", "confirmation_token",
               "recovery_token", "email_change_token", "email_change", "raw_app_meta_data", "raw_user_meta_data",
               "is_super_admin", "created_at", "updated_at")
    sql = "INSERT INTO {users} (%s) VALUES %s"
    for start in range(0, n, 500):
        rows = []
        for i in range(start, min(n, start + 500)):
            stamp = base + gotrue.dt.timedelta(seconds=i)
            rows.append((gotrue.NIL_UUID, str(uuid.uuid4()), aud, "", f"user{i}@bench.example", hashed, stamp, "", "",
                         "", "", '{"provider":"email"}', f'{{"full_name":"User {i}"}}', 0, stamp, stamp))
        placeholders = ", ".join(["(" + ", ".join("?" * len(columns)) + ")"] * len(rows))
        with db.transaction():
            db.execute(sql % (", ".join(columns), placeholders), *[v for row in rows for v in row])


def timed(server, n_requests, method, path, **kw):
    samples = []
    for _ in range(n_requests):
        t0 = time.perf_counter()
        r = server.request(method, path, **kw)
        samples.append((time.perf_counter() - t0) * 1000)
        assert r.status_code < 300, (path, r.status_code, r.text)
    return statistics.median(samples)


def timed_sql(server, n_requests, sql, *args):
    samples = []
    for _ in range(n_requests):
        t0 = time.perf_counter()
        server.db.query(sql, *args)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def bench(engine, size, n_requests, workdir, mariadb_root):
    db_env = ({"GOTRUE_DB_DRIVER": "sqlite", "DATABASE_URL": f"{workdir}/bench-{size}.db"} if engine == "sqlite" else
              {"GOTRUE_DB_DRIVER": "mysql", "DATABASE_URL": create_database(mariadb_root, f"bench_{size}_{uuid.uuid4().hex[:6]}")})
    env = base_env(workdir, db_env, LOG_LEVEL="warn", GOTRUE_BCRYPT_COST="10", GOTRUE_MAILER_AUTOCONFIRM="true")
    migrate(env, workdir)
    server = Server(workdir, env)
    fill(server.db, size)
    server.start()
    try:
        admin = jwt.encode({"sub": gotrue.NIL_UUID}, env["GOTRUE_JWT_SECRET"], algorithm="HS256")
        user = server.login("user7@bench.example", "bench-pw")
        results = {
            "GET /health": timed(server, n_requests, "GET", "/health"),
            "GET /user": timed(server, n_requests, "GET", "/user", token=user["access_token"]),
            "admin list, page 1": timed(server, n_requests, "GET", "/admin/users?per_page=50", token=admin),
            "admin list, last page": timed(server, n_requests, "GET",
                                           f"/admin/users?per_page=50&page={size // 50}", token=admin),
            "admin list, sort asc": timed(server, n_requests, "GET", "/admin/users?sort=created_at%20asc", token=admin),
            "admin get user": timed(server, n_requests, "GET", f"/admin/users/{user_id(server)}", token=admin),
            "(a plain COUNT(*), for comparison)": timed_sql(server, n_requests, "SELECT COUNT(*) AS n FROM {users}"
                                                  " WHERE instance_id = ? AND aud = ?", gotrue.NIL_UUID, ""),
            "admin filter (substring)": timed(server, max(5, n_requests // 10), "GET",
                                              "/admin/users?filter=user77", token=admin),
            "POST /token (bcrypt 10)": timed(server, max(5, n_requests // 10), "POST", "/token",
                                             data={"grant_type": "password", "username": "user7@bench.example",
                                                   "password": "bench-pw"}),
        }
    finally:
        server.stop()
    return results


def user_id(server):
    return server.sql("SELECT id FROM {users} WHERE email = 'user9@bench.example'")[0]["id"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="sqlite,mariadb")
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    table = {}
    with tempfile.TemporaryDirectory() as workdir:
        stop = None
        root = None
        if "mariadb" in args.engines:
            root, stop = start_private_mariadb(workdir + "/mariadb")
        try:
            for engine in args.engines.split(","):
                for size in sizes:
                    print(f"{engine}, {size} users ...", file=sys.stderr)
                    table[(engine, size)] = bench(engine, size, args.requests, workdir, root)
        finally:
            if stop:
                stop()
    columns = list(table)
    print("| median ms | " + " | ".join(f"{e} {s:,}" for e, s in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name in next(iter(table.values())):
        print(f"| {name} | " + " | ".join(f"{table[c][name]:.2f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
