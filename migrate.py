#!/usr/bin/env python3
"""Create or upgrade the gotrue.py database from schema.sql.

    python migrate.py [-c FILE]

Uses the same configuration as the server (.env, GOTRUE_DB_DRIVER, DATABASE_URL,
GOTRUE_DB_NAMESPACE). Applies the sections of schema.sql whose versions are not yet recorded
in schema_migration, so it creates an empty database, does nothing to an up-to-date one, and
adds only our keys and indexes to a database made by upstream GoTrue's `gotrue migrate`.
"""

import argparse
import os
import re
import sys

import gotrue

UNIQUE_KEYS_VERSION = "20261123000001"  # the migration that adds our unique keys
SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.sql")


class MigrationError(Exception):
    pass


def read_schema(driver):
    """[(versions, description, [statements])] in file order. A section with a line
    `-- only: DRIVER` has no statements on the other driver (its versions are recorded all the same)."""
    sections = []  # [versions, description, lines, the one driver it is for or None]
    for line in open(SCHEMA, encoding="utf-8"):
        header = re.match(r"-- migration: ([\d ]+?) (\D.*)$", line.rstrip())
        only = re.match(r"-- only: (\w+)$", line.rstrip())
        if header:
            sections.append([header.group(1).split(), header.group(2), [], None])
        elif sections and only:
            sections[-1][3] = only.group(1)
        elif sections and not line.startswith("--"):
            sections[-1][2].append(line)
    result = []
    for versions, description, lines, only in sections:
        sql = "".join(lines) if only in (None, driver) else ""
        if driver == "sqlite":  # SQLite's row id is its auto-increment
            sql = sql.replace("bigint NOT NULL AUTO_INCREMENT", "INTEGER NOT NULL")
        result.append((versions, description, [s.strip() for s in sql.split(";") if s.strip()]))
    return result


def find_duplicates(db):
    """What would break the unique keys: the same email twice in one audience, a token twice."""
    emails = db.query("SELECT instance_id, aud, LOWER(email) AS email, COUNT(*) AS n FROM {users}"
                      " GROUP BY instance_id, aud, LOWER(email) HAVING COUNT(*) > 1")
    tokens = db.query("SELECT token, COUNT(*) AS n FROM {refresh_tokens} WHERE token IS NOT NULL"
                      " GROUP BY token HAVING COUNT(*) > 1")
    problems = [f"  email {r['email']!r} in audience {r['aud']!r} (instance {r['instance_id']}): {r['n']} users"
                for r in emails]
    problems += [f"  refresh token {r['token'][:4]}... : {r['n']} rows" for r in tokens]
    return problems


def migrate(cfg):
    db = gotrue.Database(cfg)
    # named without its password: this line is printed
    where = f"database {db.describe()}" + (f", namespace {cfg.db_namespace!r}" if cfg.db_namespace else "")
    try:
        return apply(db, where)
    except MigrationError as e:
        print(f"migrate.py: {e}", file=sys.stderr)
        return 1
    except (db.Error, gotrue.DatabaseUnavailable) as e:
        print(f"migrate.py: database error on {where}: {e}", file=sys.stderr)
        return 1


def apply(db, where):
    tables = db.tables_present()
    if "schema_migration" not in tables:
        # upstream's table, plus a primary key: a Galera cluster may require one on every table
        db.execute("CREATE TABLE schema_migration (version varchar(14) NOT NULL, PRIMARY KEY (version))")
        db.execute("CREATE UNIQUE INDEX version_idx ON schema_migration (version)")
    elif db.driver == "mysql" and not db.one(
            "SELECT 1 AS x FROM information_schema.table_constraints WHERE table_schema = DATABASE()"
            " AND table_name = 'schema_migration' AND constraint_type = 'PRIMARY KEY'"):
        db.execute("ALTER TABLE schema_migration ADD PRIMARY KEY (version)")  # made by upstream's migrator
        print("added a primary key to schema_migration")
    applied = db.applied_versions()
    done = 0
    for versions, description, statements in read_schema(db.driver):
        missing = [v for v in versions if v not in applied]
        if not missing:
            continue
        if len(missing) < len(versions):
            raise MigrationError(f"{where} has only part of upstream's migrations (missing {', '.join(missing)}); "
                                 "run upstream's `gotrue migrate` on it first")
        if versions[0].startswith("2017") and db.names["users"] in tables:
            raise MigrationError(f"{where} already has a {db.names['users']} table that schema_migration does "
                                 "not account for; check DB_NAMESPACE or the database name")
        if versions[0] == UNIQUE_KEYS_VERSION:
            problems = find_duplicates(db)
            if problems:
                raise MigrationError("cannot add the unique keys: these duplicates must be merged or removed first:\n"
                                     + "\n".join(problems))
        with db.transaction():  # DDL is transactional on SQLite; MySQL commits each statement
            for statement in statements:
                db.execute(statement)
            for version in versions:
                db.execute("INSERT INTO schema_migration (version) VALUES (?)", version)
        print(f"applied {' '.join(versions)}: {description}")
        done += 1
    print(f"{where} is up to date (schema version {gotrue.SCHEMA_VERSION}); "
          f"{done} migration{'s' if done != 1 else ''} applied")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="migrate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="dotenv file to load (default: .env if present)")
    args = parser.parse_args(argv)
    try:
        cfg = gotrue.load_config(args.config)
    except gotrue.ConfigError as e:
        print(f"migrate.py: {e}", file=sys.stderr)
        return 1
    return migrate(cfg)


if __name__ == "__main__":
    sys.exit(main())
