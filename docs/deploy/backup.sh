#!/usr/bin/env bash
# Back up, or restore, gotrue.py's database: the one its configuration names (.env in
# GOTRUE_DIR, then the environment, read by gotrue.py itself), SQLite or MySQL/MariaDB.
#
#   backup.sh                  write BACKUP_DIR/gotrue-<UTC time>.db.gz (SQLite) or .sql.gz
#                              (MySQL), safe while the server runs; delete those older than
#                              KEEP_DAYS days; print the new file's name
#   backup.sh restore FILE     load FILE into the database: stop the service first
#
# Settings (environment): GOTRUE_DIR (default: two levels above this script, /opt/gotrue),
# PYTHON (GOTRUE_DIR/venv/bin/python3, else python3), BACKUP_DIR (/var/backups/gotrue),
# KEEP_DAYS (14). Run it as the service user, e.g. /etc/cron.d/gotrue-backup:
#   15 3 * * *  gotrue  /opt/gotrue/docs/deploy/backup.sh >/dev/null
set -euo pipefail

GOTRUE_DIR=${GOTRUE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x "$GOTRUE_DIR/venv/bin/python3" ] && PYTHON=$GOTRUE_DIR/venv/bin/python3
fi
BACKUP_DIR=${BACKUP_DIR:-/var/backups/gotrue}
KEEP_DAYS=${KEEP_DAYS:-14}
umask 077  # backups hold password hashes
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Which database? gotrue.py's own parser answers. MySQL credentials go to an option file in
# $work (never on a command line, where ps would show them).
settings=$(cd "$GOTRUE_DIR" && "$PYTHON" - "$work/my.cnf" <<'EOF'
import os, shlex, sys
import gotrue
cfg = gotrue.load_config()
db = gotrue.database_params(cfg)
print("driver=" + shlex.quote(cfg.db_driver))
if cfg.db_driver == "sqlite":
    print("db_path=" + shlex.quote(os.path.abspath(db["path"])))
else:
    def quote(value):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    where = {"socket": db["unix_socket"]} if "unix_socket" in db else {"host": db["host"], "port": db["port"]}
    options = {"user": db["user"], "password": db["password"], **where, "default-character-set": "utf8mb4"}
    with open(sys.argv[1], "w") as f:
        f.write("[client]\n" + "".join(f"{k}={quote(v)}\n" for k, v in options.items()))
    print("db_name=" + shlex.quote(db["database"]))
EOF
)
eval "$settings"

backup() {
    mkdir -p "$BACKUP_DIR"
    local out
    if [ "$driver" = sqlite ]; then
        [ -f "$db_path" ] || { echo "backup.sh: no database at $db_path" >&2; exit 1; }
        out=$BACKUP_DIR/gotrue-$(date -u +%Y%m%dT%H%M%SZ).db.gz
        # .backup copies the pages under SQLite's own locks: a consistent copy while the
        # server writes (WAL mode included). Check it before keeping it.
        sqlite3 "$db_path" ".backup '$work/copy.db'"
        [ "$(sqlite3 "$work/copy.db" 'PRAGMA integrity_check')" = ok ] ||
            { echo "backup.sh: the copy of $db_path fails PRAGMA integrity_check" >&2; exit 1; }
        gzip -c "$work/copy.db" > "$out.part"
    else
        out=$BACKUP_DIR/gotrue-$(date -u +%Y%m%dT%H%M%SZ).sql.gz
        # --single-transaction: one consistent snapshot of the InnoDB tables, without locks.
        mysqldump --defaults-extra-file="$work/my.cnf" --single-transaction --no-tablespaces \
            "$db_name" | gzip > "$out.part"
    fi
    mv "$out.part" "$out"  # only complete backups carry the final name
    find "$BACKUP_DIR" -maxdepth 1 -name 'gotrue-*.gz' -mtime +"$KEEP_DAYS" -delete
    echo "$out"
}

restore() {
    local file=$1
    [ -f "$file" ] || { echo "backup.sh: no file $file" >&2; exit 1; }
    if [ "$driver" = sqlite ]; then
        gzip -dcf "$file" > "$work/restore.db"  # -f: an uncompressed file passes through
        [ "$(sqlite3 "$work/restore.db" 'PRAGMA integrity_check')" = ok ] ||
            { echo "backup.sh: $file is not a sound SQLite database" >&2; exit 1; }
        # .restore replaces the content in place; a missing file is created.
        sqlite3 "$db_path" ".restore '$work/restore.db'"
    else
        # The dump drops and re-creates each table; the database itself must exist.
        gzip -dcf "$file" | mysql --defaults-extra-file="$work/my.cnf" "$db_name"
    fi
    echo "restored $file"
}

case "${1:-backup}" in
    backup) backup ;;
    restore) [ $# -eq 2 ] || { echo "usage: $0 restore FILE" >&2; exit 2; }; restore "$2" ;;
    *) echo "usage: $0 [backup | restore FILE]" >&2; exit 2 ;;
esac
