"""Start a private, throw-away MariaDB server for the test suite.

    url, stop = start_private_mariadb(base_dir)   # url = mysql://root@127.0.0.1:PORT/
    db_url = create_database(url, "gotrue_test")  # mysql://root@127.0.0.1:PORT/gotrue_test
    stop()

Only the standard library and pymysql are used. Run this file directly for a smoke test.
"""
import os, shutil, signal, socket, subprocess, tempfile, time
from urllib.parse import urlsplit, urlunsplit

import pymysql

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
# Options for both the bootstrap (install-db) and the real server: small and fast, durability
# off. Native AIO (io_uring/libaio) is off because sandboxed CI containers often forbid it.
FAST_OPTS = ["--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M",
             "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
             "--innodb-use-native-aio=0", "--skip-log-bin"]


class MariaDBUnavailable(Exception):
    """MariaDB binaries are missing or the server could not be started."""


def _which(*names):
    for name in names:
        path = shutil.which(name, path=SEARCH_PATH)
        if path:
            return path
    raise MariaDBUnavailable(f"none of {', '.join(names)} found on PATH, /usr/sbin or /usr/bin "
                             "(install Debian's mariadb-server package)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _die_with_parent():
    # Linux prctl(PR_SET_PDEATHSIG, SIGTERM): if the test run is killed hard, the server
    # gets SIGTERM instead of being orphaned. Best effort only.
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def start_private_mariadb(base_dir, timeout=60.0):
    """Initialise a datadir in base_dir, start mariadbd on a free port; return (url, stop)."""
    mariadbd = _which("mariadbd", "mysqld")
    install_db = _which("mariadb-install-db", "mysql_install_db")
    base_dir = os.path.abspath(base_dir)
    datadir, log = os.path.join(base_dir, "data"), os.path.join(base_dir, "mariadb.err")
    # Unix socket paths are limited to ~107 bytes; fall back to a short temp dir if needed.
    sock_dir = base_dir if len(base_dir) < 90 else tempfile.mkdtemp(prefix="mdb")
    os.makedirs(datadir, exist_ok=True)

    # --no-defaults must come first; "normal" auth gives a password-less root@localhost/127.0.0.1.
    r = subprocess.run([install_db, "--no-defaults", f"--datadir={datadir}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db",
                        "--skip-name-resolve", *FAST_OPTS],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise MariaDBUnavailable(f"{install_db} failed ({r.returncode}):\n{r.stdout}{r.stderr}")

    for _attempt in range(3):
        port = _free_port()
        with open(log, "ab") as logf:
            proc = subprocess.Popen(
                [mariadbd, "--no-defaults", f"--datadir={datadir}", f"--port={port}",
                 f"--socket={os.path.join(sock_dir, 'mysql.sock')}", "--bind-address=127.0.0.1",
                 f"--pid-file={os.path.join(base_dir, 'mariadb.pid')}", f"--log-error={log}",
                 f"--tmpdir={base_dir}", "--user=root", "--skip-name-resolve",
                 "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
                 *FAST_OPTS],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, preexec_fn=_die_with_parent)
        ready, deadline = False, time.monotonic() + timeout
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=1).close()
                ready = True
            except pymysql.err.OperationalError:
                time.sleep(0.1)
        # Retry only if the server died because someone grabbed our port meanwhile.
        if ready or proc.poll() is None or "already in use" not in _tail(log, 10):
            break
    if not ready:
        if proc.poll() is None:
            why = f"was not accepting connections after {timeout:g}s"
            proc.kill()
            proc.wait()
        else:
            why = f"exited with code {proc.returncode}"
        raise MariaDBUnavailable(f"mariadbd {why}; tail of {log}:\n{_tail(log)}")

    def stop(grace=30.0):
        if proc.poll() is None:
            proc.terminate()  # SIGTERM = clean shutdown
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sock_dir != base_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)

    return f"mysql://root@127.0.0.1:{port}/", stop


def create_database(url, name):
    """CREATE DATABASE name on the server at url; return url pointing at the new database."""
    u = urlsplit(url)
    conn = pymysql.connect(host=u.hostname, port=u.port or 3306, user=u.username or "root",
                           password=u.password or "", autocommit=True)
    try:
        with conn.cursor() as cur:
            quoted = "`" + name.replace("`", "``") + "`"
            cur.execute(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    finally:
        conn.close()
    return urlunsplit((u.scheme, u.netloc, "/" + name, "", ""))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="mariadb-") as tmp:
        t0 = time.monotonic()
        url, stop = start_private_mariadb(tmp)
        print(f"started {url} in {time.monotonic() - t0:.1f}s")
        try:
            db_url = create_database(url, "smoke_test")
            u = urlsplit(db_url)
            conn = pymysql.connect(host=u.hostname, port=u.port, user=u.username,
                                   database=u.path.lstrip("/"))
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                print(db_url, cur.fetchone()[0])
            conn.close()
        finally:
            stop()
        print(f"stopped after {time.monotonic() - t0:.1f}s total")
