"""Load benchmark of issue 13: throughput and latency of each endpoint against its floor.

    python tests/bench.py [--workers N] [--engines sqlite,mariadb] [--big] [--json FILE]
    python -m tests.bench ...

Starts gotrue.py as users run it (migrate applied, bcrypt cost 10, waitress, 8 threads, log level
info) on SQLite and on a private MariaDB, seeds 1,000 confirmed users straight through SQL, and
drives each endpoint with wrk (Debian's `wrk` package) and tests/bench_lua/bench.lua: 2 threads,
16 connections, a 2 s warm-up, then 8 s measured, over loopback. In the same run it measures the
two floors: a bare bottle + waitress app with the same threads (and workers) answering a
constant JSON body, and raw bcrypt.checkpw at cost 10 on as many threads. It prints req/s, p50,
p99 and non-2xx of each endpoint, each rate as a ratio to its floor with PASS/FAIL against the
targets of issue 13; the server's memory (VmRSS) once 20k requests were served and after 20k
more (a mix of GET /settings, GET /user, PUT /user and refresh grants, counted by the Lua
script); and GET /user with 1 and with 2 worker processes (GOTRUE_API_WORKERS), back to back,
with the ceiling the machine's CPUs put on that ratio. The password grant and signup are
measured as the bcrypt floor is, in one run whose warm-up is not counted (SLOW_MODES), between
two runs of that floor whose mean counts (the machine's speed drifts by more than their 5 %
margin). `--big` measures GET /user, the password grant and admin page 1 on a fresh server, adds
99,000 users by SQL, waits for the machine to be quiet, and measures them again on a fresh
server. Each run also records the CPU that the server, the database, wrk and everything else on
the machine used, and the time the hypervisor stole, so a noisy neighbour shows in the table
instead of hiding in a ratio; a run so disturbed is measured again (up to 3 times) and the
quietest counts. `--py-spy DIR` profiles the server during each measured run.

gotrue.py keeps each worker's threads on one CPU (GOTRUE_API_CPU_PINNING); the floor is the bare
app as the issue defines it, threads wherever the kernel puts them. Once at the start the bench
also measures the same bare app pinned as gotrue.py is and shows each rate over it as an
informative column (no verdict): what the code costs over the framework when both are placed
alike. `--no-pinning` runs the server unpinned; `--only user,refresh` measures only some
endpoints (a quicker run while working on them).

Not part of the test suite (pytest does not collect it): speed is measured here, not asserted
there. The exit status is 0 whatever the verdicts; every process it starts is stopped by its PID.
"""

import argparse
import datetime as dt
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LUA = os.path.join(HERE, "bench_lua", "bench.lua")
CLK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
PASSWORD = "bench-pw"

# a body shaped like GET /settings' answer, for the framework floor
FLOOR_BODY = json.dumps({"external": {"bitbucket": False, "github": False, "gitlab": False, "google": False,
                                      "facebook": False, "email": True, "saml": False},
                         "external_labels": {}, "disable_signup": False, "autoconfirm": True},
                        separators=(",", ":")).encode()

PAIR_TRIES, BUSY_PCT = 3, 20  # see Bench.paired
# Answers that take most of a second under load (bcrypt behind 16 connections) are measured as
# the bcrypt floor counts its checks: one run whose warm-up seconds are not counted. Measured
# from an idle server instead, a run loses the work still in flight at its end (up to 8
# half-done bcrypts, ~2 % of 8 s) without the credit the floor gets for work its warm-up began.
SLOW_MODES = ("password", "signup")

# issue 13's targets: minimum ratio of an endpoint's 2xx rate to its floor, per engine
TARGETS = {
    "GET /settings": ("framework", {"sqlite": 0.85, "mariadb": 0.85}),
    "GET /user": ("framework", {"sqlite": 0.60, "mariadb": 0.40}),
    "refresh grant": ("framework", {"sqlite": 0.30, "mariadb": 0.15}),
    "PUT /user (metadata)": ("framework", {}),
    "password grant": ("bcrypt", {"sqlite": 0.95, "mariadb": 0.95}),
    "signup (autoconfirm)": ("bcrypt", {"sqlite": 0.95, "mariadb": 0.95}),
    "admin page 1": ("framework", {}),
}
P99_TARGET_MS = {"refresh grant": 50.0}
RSS_LIMIT_MB = 80.0
RSS_FLAT_MB = 2.0      # growth allowed over the further 20k requests (~100 bytes a request)
BIG_FACTOR = 1.2       # 100k users: within 1.2x of the 1k-user figure
SCALING_TARGET = 1.5   # 2 workers over 1 on GET /user


# --- processes: trees, CPU time, memory ---------------------------------------------------

def _stat(pid):
    """(ppid, cpu seconds) of a process from /proc/PID/stat, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK


def process_tree(pid):
    """pid and all its descendants (workers forked by the server)."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                parents.setdefault(st[0], []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(parents.get(p, []))
    return tree


def cpu_seconds(pids):
    return sum((_stat(p) or (0, 0.0))[1] for p in pids)


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine_busy():
    """(CPU seconds the whole machine spent busy in processes or stolen, in interrupts, stolen),
    all CPUs, from /proc/stat. Interrupt time (mostly softirq: loopback TCP) is charged to no
    process; stolen time is the hypervisor running other guests on our CPUs (on this VM, most of
    the "other load" that disturbs a run)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]] + [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + steal) / CLK, (irq + softirq) / CLK, steal / CLK


def wait_idle(pids=None, timeout=30.0, under=0.1):
    """Wait until these processes use under `under` of one CPU (over 0.2 s): a run's leftovers
    (requests still queued when wrk stopped, a bcrypt queue especially) must not eat into the
    next run's window. pids None: the whole machine, which after a bulk seeding goes on writing
    it out for a while (the database and the kernel), and that is not the server's speed. False
    when still busy at the timeout."""
    used = (lambda: cpu_seconds(pids)) if pids is not None else (lambda: sum(machine_busy()[:2]))
    end, last = time.monotonic() + timeout, used()
    while time.monotonic() < end:
        time.sleep(0.2)
        now = used()
        if now - last < 0.2 * under:
            return True
        last = now
    return False


def stop_pids(pids, grace=15.0):
    """SIGTERM the given PIDs (those still alive), then SIGKILL what remains after `grace`."""
    alive = [p for p in pids if _stat(p)]
    for p in alive:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace
    while time.monotonic() < end and any(_alive(p) for p in alive):
        time.sleep(0.05)
    for p in alive:
        if _alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- the floors (run as child processes of this script) ------------------------------------

def floor_app(port, threads, workers, pinned=False):
    """A bare bottle + waitress app answering a constant JSON body: the framework floor. With
    workers > 1, that many forked processes serve one listening socket, as the server does.
    `pinned`: each process's threads on one CPU, placed as gotrue.py places its workers
    (GOTRUE_API_CPU_PINNING), for the informative second floor."""
    import bottle
    import waitress.server
    app = bottle.Bottle()

    @app.get("/settings")
    def settings():
        bottle.response.content_type = "application/json"
        return FLOOR_BODY

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)

    sys.path.insert(0, ROOT)
    import types

    import gotrue
    first, placement = gotrue.current_cpu_slot(), types.SimpleNamespace(api_cpu_pinning=pinned)

    def run(index):
        gotrue.pin_to_one_cpu(placement, first + index)  # as gotrue.py places its workers
        waitress.server.create_server(app, sockets=[sock], threads=threads, ident="floor").run()
    if workers <= 1:
        run(0)
        return
    kids = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                run(index)
            finally:
                os._exit(0)
        kids.append(pid)

    def stop(signum, frame):
        for k in kids:
            with_suppressed(os.kill, k, signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop)
    for k in kids:
        os.waitpid(k, 0)


def with_suppressed(fn, *args):
    try:
        fn(*args)
    except OSError:
        pass


def bcrypt_floor(threads, warmup, duration):
    """threads x bcrypt.checkpw at cost 10: how many checks a second the machine does. Prints
    JSON: checks completed inside the measured window, their rate, p50 and p99 of one check."""
    import threading

    import bcrypt
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10, prefix=b"2a"))
    start = time.perf_counter() + warmup
    end = start + duration
    samples = [[] for _ in range(threads)]
    done = [0] * threads

    def work(i):
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            bcrypt.checkpw(PASSWORD.encode(), hashed)
            t1 = time.perf_counter()
            done[i] += 1
            if start <= t1 <= end:
                samples[i].append(t1 - t0)
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    lat = sorted(s for per in samples for s in per)
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: 0.0)
    print(json.dumps({"requests": len(lat), "rps": len(lat) / duration, "p50_ms": pick(0.50), "p99_ms": pick(0.99),
                      "checks_all": sum(done) + 1}))  # + the hash made at the start


# --- measuring -----------------------------------------------------------------------------

class Result(dict):
    """One measured run: rps (2xx answers a second), p50_ms, p99_ms, non2xx, requests, and the
    CPU used meanwhile: server/db in ms per answer, wrk and the rest of the machine in % of it."""


def disturbance(r):
    """How much of a CPU a run lost to others: other processes and interrupts charged to none
    of ours, or the hypervisor's stolen time, which the kernel partly charges to whichever of
    our processes was running (so it hides from "other")."""
    return max(r["other_cpu_pct"], r.get("steal_cpu_pct", 0.0))


def bracketed(before, after):
    """A floor measured before and after its endpoint: their mean, and the worse load."""
    mean = Result(before)
    for key in ("rps", "server_cpu_ms"):
        mean[key] = (before[key] + after[key]) / 2
    for key in ("other_cpu_pct", "steal_cpu_pct"):
        mean[key] = max(before[key], after[key])
    mean["rps_before"], mean["rps_after"] = before["rps"], after["rps"]
    return mean


class Bench:
    def __init__(self, args, workdir):
        self.args, self.workdir = args, workdir
        self.watch = {}        # name -> callable giving the PIDs to account CPU to
        self.floor_stops = []  # stop the floor apps that framework_floor() started
        self.counter = 0

    def note(self, text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def wrk(self, url, mode, seconds, quota=0, limit=None, **env):
        """One wrk run; returns a Result. quota > 0: stop after quota answers per wrk thread
        (each thread touches a flag file, then wrk gets SIGINT), within `limit` seconds."""
        a = self.args
        self.counter += 1
        out = os.path.join(self.workdir, f"wrk-{self.counter}.json")
        flag = os.path.join(self.workdir, f"wrk-{self.counter}.flag")
        wenv = dict(os.environ, BENCH_MODE=mode, BENCH_THREADS=str(a.wrk_threads), BENCH_OUT=out,
                    BENCH_FLAG=flag, BENCH_QUOTA=str(quota), BENCH_PASSWORD=PASSWORD,
                    BENCH_NONCE=uuid.uuid4().hex[:8], **{k: str(v) for k, v in env.items()})
        cmd = ["wrk", f"-t{a.wrk_threads}", f"-c{a.connections}", f"-d{int(limit or seconds)}s",
               "--timeout", "10s", "-s", LUA, url]
        self.settle()
        groups = {name: pids() for name, pids in self.watch.items()}
        cpu0 = {name: cpu_seconds(p) for name, p in groups.items()}
        (busy0, irq0, steal0), t0 = machine_busy(), time.monotonic()
        with open(os.path.join(self.workdir, f"wrk-{self.counter}.log"), "wb") as log:
            proc = subprocess.Popen(cmd, env=wenv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG if quota else 0)
                if pid:
                    break
                if all(os.path.exists(flag + str(i)) for i in range(a.wrk_threads)):
                    os.kill(proc.pid, signal.SIGINT)  # wrk prints and calls done() early
                    quota = 0
                else:
                    time.sleep(0.05)
        except BaseException:
            stop_pids([proc.pid], grace=2)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        (busy, irq, steal), wall = machine_busy(), time.monotonic() - t0
        busy, irq, steal = busy - busy0, irq - irq0, steal - steal0
        cpu = {name: cpu_seconds(p) - cpu0[name] for name, p in groups.items()}
        if proc.returncode != 0 or not os.path.exists(out):
            log = open(os.path.join(self.workdir, f"wrk-{self.counter}.log"), errors="replace").read()
            raise RuntimeError(f"wrk {mode} failed ({proc.returncode}):\n{log}")
        with open(out) as f:
            w = json.load(f)
        secs = w["duration_us"] / 1e6
        errors = sum(w["errors"][k] for k in ("status", "timeout", "connect", "read", "write"))
        ok = max(0, w["requests"] - w["errors"]["status"])
        if "window" in w:  # BENCH_SKIP: only the answers inside the counted window
            win = w["window"]
            ok, secs, errors = win["ok"], win["seconds"], errors - w["errors"]["status"] + win["bad"]
        wrk_cpu = usage.ru_utime + usage.ru_stime
        ours = wrk_cpu + sum(cpu.values())
        r = Result(rps=ok / secs, p50_ms=w["latency_us"]["p50"] / 1000, p99_ms=w["latency_us"]["p99"] / 1000,
                   non2xx=errors, requests=w["requests"], seconds=secs, pool_exhausted=w["pool_exhausted"],
                   wrk_cpu_pct=100 * wrk_cpu / wall, other_cpu_pct=max(0.0, 100 * (busy - ours) / wall),
                   irq_cpu_pct=100 * irq / wall, steal_cpu_pct=100 * steal / wall)
        for name, seconds_used in cpu.items():
            r[f"{name}_cpu_ms"] = 1000 * seconds_used / max(1, w["requests"])
            r[f"{name}_cpu_pct"] = 100 * seconds_used / wall
        return r

    def measure(self, url, mode, name, fresh=None, warmup=True, **env):
        """2 s warm-up, then the measured 8 s (issue 13's load); for SLOW_MODES both in one run.
        `fresh`: a callable giving env for each run (refresh tokens are never presented twice)."""
        a = self.args
        seconds, one_run = a.duration, warmup and a.warmup > 0 and mode in SLOW_MODES
        if one_run:  # its warm-up in the same run, not counted
            seconds, env = a.warmup + a.duration, dict(env, BENCH_SKIP=a.warmup, BENCH_WINDOW=a.duration)
        elif warmup and a.warmup > 0:
            warm = self.wrk(url, mode, a.warmup, **env, **(fresh() if fresh else {}))
            self.requests_served += warm["requests"]
        spy = self.py_spy(name) if a.py_spy and self.profile_pid else None
        try:
            r = self.wrk(url, mode, seconds, **env, **(fresh() if fresh else {}))
        finally:
            if spy:
                with_suppressed(os.kill, spy.pid, signal.SIGINT)  # py-spy writes its file on SIGINT
                try:
                    spy.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    stop_pids([spy.pid], grace=2)
        self.requests_served += r["requests"]
        self.note(f"  {name}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                  f"non-2xx {r['non2xx']}, other load {r['other_cpu_pct']:.0f}% (stolen {r['steal_cpu_pct']:.0f}%)")
        return r

    requests_served = 0
    profile_pid = None     # the gotrue.py server to profile (--py-spy), when one is running

    def py_spy(self, name):
        """py-spy sampling the server (and its workers) through the measured run; its raw
        (collapsed stacks) output goes to --py-spy DIR, one file per run."""
        slug = "".join(c if c.isalnum() else "-" for c in f"{self.engine}-{name}").strip("-").lower()
        path = os.path.join(self.args.py_spy, slug + ".txt")
        os.makedirs(self.args.py_spy, exist_ok=True)
        cmd = ["py-spy", "record", "--nonblocking", "--subprocesses", "-r", "100", "-f", "raw", "-o", path,
               "-p", str(self.profile_pid)] + (["--gil"] if self.args.py_spy_gil else [])
        log = open(os.path.join(self.workdir, slug + ".py-spy.log"), "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        time.sleep(0.5)
        return proc

    # --- floors ----------------------------------------------------------------------------

    def framework_floor(self, workers, pinned=False):
        """Start the floor app, measure it once, and keep it running: each framework endpoint is
        measured right after a floor run of its own (see `paired`), so a machine that is slower
        for a while slows both figures of a ratio alike. Returns that first measurement. The
        pinned floor (informative) is measured once and stopped."""
        from conftest import free_port, wait_until
        port = free_port()
        log = open(os.path.join(self.workdir, f"floor-{workers}{'-pinned' * pinned}.log"), "wb")
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_floor", str(port), str(self.args.threads),
                                 str(workers), "pinned" if pinned else ""],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        tree = [proc.pid]
        try:
            def up():
                if proc.poll() is not None:
                    raise RuntimeError(f"the floor app exited with {proc.returncode}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return True
                except OSError:
                    return False
            wait_until(up, "the floor app")
            time.sleep(0.3)
            tree = process_tree(proc.pid)
            if workers == self.args.workers and not pinned:  # the one that `paired` measures again
                self.floor_url, self.floor_tree = f"http://127.0.0.1:{port}", tree
            return self.floor_run(f"framework floor{', pinned' * pinned} ({workers} worker(s))",
                                  f"http://127.0.0.1:{port}", tree, warmup=True)
        finally:
            def stop():
                stop_pids(sorted(set(tree + process_tree(proc.pid)), reverse=True))
                proc.wait()
                log.close()
            if pinned:
                stop()
            else:
                self.floor_stops.append(stop)

    def floor_run(self, name, url=None, tree=None, warmup=False):
        """A floor app, measured now (the server's own CPU accounting set aside meanwhile)."""
        tree = tree or self.floor_tree
        watch, self.watch, served = self.watch, {"server": lambda: tree}, self.requests_served
        try:
            return self.measure(url or self.floor_url, "settings", name, warmup=warmup)
        finally:
            self.watch, self.requests_served = watch, served  # the server's count: floors' requests are not its own

    def paired(self, url, mode, name, floor="framework", **kw):
        """An endpoint and, just before it, its floor (the framework's, or bcrypt's): the
        ratio's two figures are taken seconds apart. bcrypt's floor is measured after the
        endpoint too, and the pair's floor is the mean of the two: the machine's speed drifts
        (that floor moved by 7 % within a minute) by more than the 5 % that target leaves. A
        disturbed pair is measured again (see `quietest`)."""
        def pair():
            f = self.floor_once(floor, name)
            r = self.measure(url, mode, name, **kw)
            r["floor"] = bracketed(f, self.floor_once(floor, name)) if floor == "bcrypt" else f
            return r, max(disturbance(r["floor"]), disturbance(r))
        return self.quietest(pair)

    def quietest(self, run):
        """run() -> (result, disturbance): run again while others took more than BUSY_PCT of a
        CPU meanwhile (see `disturbance`), at most PAIR_TRIES times in all; the quietest counts."""
        best = None
        for attempt in range(1, PAIR_TRIES + 1):
            r, noise = run()
            r["attempts"] = attempt
            if best is None or noise < best[0]:
                best = (noise, r)
            if noise <= BUSY_PCT:
                break
            self.note(f"  (other load or steal {noise:.0f}% during that run: measuring it again)")
        return best[1]

    def quiet_measure(self, url, mode, name, **env):
        """One endpoint without a floor, run again while disturbed (see `quietest`)."""
        def run():
            r = self.measure(url, mode, name, **env)
            return r, disturbance(r)
        return self.quietest(run)

    def settle(self):
        """Wait for the watched server to finish the requests of its last run: leftovers (a queue
        of bcrypts especially) must not run inside the next run, its own or a floor's."""
        server = self.watch.get("server")
        if server and not wait_idle(server()):
            self.note("  (the server was still busy with the previous run's requests after 30 s)")

    def floor_once(self, floor, name):
        """One run of a floor, once the server has settled."""
        self.settle()
        if floor == "framework":
            return self.floor_run(f"framework floor (before {name})")
        return self.bcrypt_floor(self.args.threads * self.args.workers)

    def stop_floors(self):
        while self.floor_stops:
            self.floor_stops.pop()()

    floor_url, floor_tree = None, []

    def bcrypt_floor(self, threads):
        a = self.args
        (busy0, irq0, steal0), t0 = machine_busy(), time.monotonic()
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_bcrypt", str(threads), str(a.warmup),
                                 str(a.duration)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        try:
            pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            stop_pids([proc.pid], grace=2)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        out = proc.stdout.read()
        proc.stdout.close()
        if proc.returncode != 0:
            raise RuntimeError(f"the bcrypt floor failed ({proc.returncode}): {out}")
        (busy, irq, steal), wall = machine_busy(), time.monotonic() - t0
        busy, irq, steal = busy - busy0, irq - irq0, steal - steal0
        own = usage.ru_utime + usage.ru_stime
        r = Result(json.loads(out), non2xx=0, server_cpu_pct=100 * own / wall, wrk_cpu_pct=0.0,
                   other_cpu_pct=max(0.0, 100 * (busy - own) / wall), irq_cpu_pct=100 * irq / wall,
                   steal_cpu_pct=100 * steal / wall)
        r["server_cpu_ms"] = 1000 * own / max(1, r.pop("checks_all"))
        self.note(f"  bcrypt floor: {r['rps']:.1f} checks/s, p50 {r['p50_ms']:.0f} ms on {threads} threads, "
                  f"{r['server_cpu_pct']:.0f}% CPU, other load {r['other_cpu_pct']:.0f}% (stolen {r['steal_cpu_pct']:.0f}%)")
        return r


# --- a gotrue.py server and its data -------------------------------------------------------

class Site:
    """A migrated database with seeded users, and the gotrue.py processes serving it."""

    def __init__(self, bench, engine, db_env, db_pid):
        from conftest import base_env, migrate
        a = bench.args
        self.bench, self.engine, self.db_pid = bench, engine, db_pid
        self.dir = os.path.join(bench.workdir, engine)
        os.makedirs(self.dir, exist_ok=True)
        self.env = base_env(self.dir, db_env, LOG_LEVEL=a.log_level, GOTRUE_BCRYPT_COST="10",
                            GOTRUE_API_THREADS=str(a.threads), GOTRUE_API_WORKERS=str(a.workers),
                            GOTRUE_API_CPU_PINNING=str(a.pinning).lower(),
                            GOTRUE_MAILER_AUTOCONFIRM="true")
        migrate(self.env, self.dir)
        self.server = None
        self.refresh_checked = self.refresh_by_login = False
        self.users = []        # (id, email, full_name) of the seeded users, in order
        self.hashed = None
        self.files = 0

    @property
    def db(self):
        from conftest import Server
        if not hasattr(self, "_db_server"):
            self._db_server = Server(self.dir, self.env)
        return self._db_server.db

    def seed(self, start, count):
        """count confirmed users user{start}..@bench.example, by SQL in batches, one precomputed
        bcrypt hash (cost 10) for all: no HTTP, no bcrypt per user."""
        import bcrypt

        import gotrue
        if self.hashed is None:
            self.hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10, prefix=b"2a")).decode()
        columns = ("instance_id", "id", "aud", "role", "email", "encrypted_password", "confirmed_at",
                   "confirmation_token", "recovery_token", "email_change_token", "email_change", "raw_app_meta_data",
                   "raw_user_meta_data", "is_super_admin", "created_at", "updated_at")
        base = gotrue.now() - dt.timedelta(days=2)
        batch = 500
        for first in range(start, start + count, batch):
            rows = []
            for i in range(first, min(start + count, first + batch)):
                stamp = base + dt.timedelta(seconds=i)
                uid, email, name = str(uuid.uuid4()), f"user{i}@bench.example", f"User {i}"
                rows.append((gotrue.NIL_UUID, uid, "", "", email, self.hashed, stamp, "", "", "", "",
                             '{"provider":"email"}', json.dumps({"full_name": name}), 0, stamp, stamp))
                self.users.append((uid, email, name))
            marks = ", ".join(["(" + ", ".join("?" * len(columns)) + ")"] * len(rows))
            with self.db.transaction():
                self.db.execute(f"INSERT INTO {{users}} ({', '.join(columns)}) VALUES {marks}",
                                *[v for row in rows for v in row])
        # the server recounts X-Total-Count on its first admin page (in a warm-up), as it does
        # every few minutes in production
        self.db.execute("DELETE FROM {user_counts}")

    def write(self, lines):
        self.files += 1
        path = os.path.join(self.dir, f"data-{self.files}.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def sample(self, n=1000):
        """n of the seeded users, spread evenly over all of them."""
        step = max(1, len(self.users) // n)
        return self.users[::step][:n]

    def access_tokens(self, users):
        """Bearer tokens shaped as the server's own (same claims, HS256, kid nf-ident)."""
        import jwt
        exp = int(time.time()) + 86400
        return [jwt.encode({"exp": exp, "sub": uid, "email": email, "app_metadata": {"provider": "email"},
                            "user_metadata": {"full_name": name}, "session_id": secrets.token_hex(16)},
                           self.env["GOTRUE_JWT_SECRET"], algorithm="HS256", headers={"kid": "nf-ident"})
                for uid, email, name in users]

    def refresh_tokens(self, users):
        """A file of refresh tokens, each to be presented once. By SQL, one per user, as a login
        leaves them; the first is tried over HTTP, and should the server refuse tokens made that
        way (a changed storage), they come from real password logins instead, only as many as
        wrk has connections (twice): the Lua script chains the answers, so that is enough."""
        import requests
        if self.refresh_by_login:
            return self.refresh_tokens_by_login(users)
        path = self.refresh_tokens_by_sql(users)
        if not self.refresh_checked:
            with open(path) as f:
                tokens = f.read().split()
            r = requests.post(self.server.url + "/token", timeout=60,
                              data={"grant_type": "refresh_token", "refresh_token": tokens[0]})
            if r.status_code != 200:
                self.bench.note(f"  refresh tokens inserted by SQL are refused ({r.status_code} {r.text[:100]}): "
                                "getting them by password logins instead")
                self.refresh_by_login = True
                return self.refresh_tokens_by_login(users)
            self.refresh_checked = True
            tokens[0] = r.json()["refresh_token"]  # the first was used: its successor replaces it
            path = self.write(tokens)
        return path

    def refresh_tokens_by_login(self, users):
        import concurrent.futures

        import requests
        a = self.bench.args

        def login(email):
            r = requests.post(self.server.url + "/token", timeout=120,
                              data={"grant_type": "password", "username": email, "password": PASSWORD})
            r.raise_for_status()
            return r.json()["refresh_token"]
        with concurrent.futures.ThreadPoolExecutor(a.connections) as pool:
            return self.write(list(pool.map(login, [e for _, e, _ in users[:2 * a.connections]])))

    def refresh_tokens_by_sql(self, users):
        import gotrue
        stamp, tokens, rows = gotrue.now(), [], []
        for uid, _, _ in users:
            token = secrets.token_urlsafe(16)
            tokens.append(token)
            rows.append((gotrue.NIL_UUID, token, uid, False, None, stamp, stamp))
        for i in range(0, len(rows), 500):
            chunk = rows[i:i + 500]
            marks = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
            with self.db.transaction():
                self.db.execute("INSERT INTO {refresh_tokens} (instance_id, token, user_id, revoked, parent, created_at,"
                                f" updated_at) VALUES {marks}", *[v for row in chunk for v in row])
        return self.write(tokens)

    def start(self, workers):
        from conftest import Server, free_port
        env = dict(self.env, PORT=str(free_port()), GOTRUE_API_WORKERS=str(workers))
        self.server = Server(self.dir, env).start()
        time.sleep(0.5)  # let any worker processes come up before their PIDs are read
        pid = self.server.proc.pid
        self.tree = process_tree(pid)
        self.bench.watch = {"server": lambda: self.tree}
        self.bench.profile_pid, self.bench.engine = pid, self.engine
        if self.db_pid:
            self.bench.watch["db"] = lambda: [self.db_pid]
        self.bench.requests_served = 0
        return self.server

    def stop(self):
        if self.server:
            tree = sorted(set(self.tree + process_tree(self.server.proc.pid)), reverse=True)
            self.server.stop()               # SIGTERM to the main process, as a user's Ctrl-C
            stop_pids([p for p in tree if p != self.server.proc.pid])  # any worker left behind
            self.server = None
            self.bench.watch, self.bench.profile_pid = {}, None

    def rss(self):
        """(largest VmRSS of a server process, their sum), MB."""
        self.tree = process_tree(self.server.proc.pid)
        sizes = [rss_mb(p) for p in self.tree]
        return max(sizes), sum(sizes)

    def close(self):
        self.stop()
        if hasattr(self, "_db_server"):
            self._db_server.db.close()


def run_engine(bench, engine, db_env, db_pid):
    a = bench.args
    out = {"engine": engine, "rows": {}, "rss": [], "scaling": {}, "big": {}}
    site = Site(bench, engine, db_env, db_pid)
    try:
        bench.note(f"{engine}: seeding {a.users:,} users")
        site.seed(0, a.users)
        seeded = site.sample(a.users)
        tokens_file = site.write(site.access_tokens(seeded))
        emails_file = site.write([email for _, email, _ in seeded])
        admin = _admin_token(site)
        server = site.start(a.workers)
        url = server.url
        out["processes"] = len(site.tree)
        bench.note(f"{engine}: gotrue.py up ({len(site.tree)} process(es)), measuring")
        rows = out["rows"]
        rss_idle = site.rss()
        endpoints = [  # (wrk mode, row, run name, options of `paired`)
            ("settings", "GET /settings", "GET /settings", {}),
            ("user", "GET /user", "GET /user", {"BENCH_DATA": tokens_file}),
            ("refresh", "refresh grant", "refresh grant",
             {"fresh": lambda: {"BENCH_DATA": site.refresh_tokens(seeded)}}),
            ("put", "PUT /user (metadata)", "PUT /user", {"BENCH_DATA": tokens_file}),
            ("password", "password grant", "password grant", {"floor": "bcrypt", "BENCH_DATA": emails_file}),
            ("signup", "signup (autoconfirm)", "signup", {"floor": "bcrypt"}),
            *([("admin", "admin page 1", "admin page 1", {"BENCH_ADMIN": admin})] if a.big else [])]
        for mode, row, name, options in endpoints:
            if not a.only or mode in a.only:
                rows[row] = bench.paired(url, mode, name, **options)
        for r in rows.values():
            r["engine"] = engine
        out["rss"].append(("idle after start", 0) + rss_idle)
        out["rss"].append(("after the endpoints", bench.requests_served) + site.rss())
        if a.rss_requests:
            # first up to rss_requests served in all (the endpoints' runs count; at least 2k
            # mixed ones, so that both samples follow the same traffic), then rss_requests more
            first = max(2000, a.rss_requests - bench.requests_served)
            for step, count in ((1, first), (2, a.rss_requests)):
                quota = -(-count // a.wrk_threads)
                r = bench.wrk(url, "mix", 0, quota=quota, limit=a.rss_limit, BENCH_DATA=tokens_file,
                              BENCH_DATA2=site.refresh_tokens(seeded))
                bench.requests_served += r["requests"]
                out["rss"].append((f"+{r['requests']:,} mixed requests", bench.requests_served) + site.rss())
                out[f"mix{step}"] = r
                bench.note(f"  RSS after {bench.requests_served:,} requests: {out['rss'][-1][2]:.1f} MB "
                           f"(mix at {r['rps']:.0f} req/s, non-2xx {r['non2xx']})")
        scaling = a.scaling and "GET /user" in rows

        def user_with(workers, url):
            r = bench.quiet_measure(url, "user", f"GET /user, {workers} worker(s)", BENCH_DATA=tokens_file)
            r["processes"] = len(site.tree)
            return r
        if scaling:  # both worker counts back to back: the main table's figure is minutes older
            out["scaling"][a.workers] = user_with(a.workers, url)
        site.stop()

        if scaling:
            other = 2 if a.workers == 1 else 1
            server = site.start(other)
            bench.note(f"{engine}: GOTRUE_API_WORKERS={other} ({len(site.tree)} process(es))")
            out["scaling"][other] = user_with(other, server.url)
            site.stop()

        if a.big:
            out["big"] = big_comparison(bench, site, rows, admin, (tokens_file, emails_file))
    finally:
        site.close()
    return out


def big_comparison(bench, site, rows, admin, files):
    """The endpoints of the 100k-user check, with 1k users and then with 100k, each time on a
    freshly started server and about a minute apart: taken from the main table instead, the 1k
    figure was minutes older, and the machine's speed moving meanwhile showed as a slowdown.
    Returns {row: (1k result, 100k result)}."""
    a = bench.args

    def measure_all(label, data):
        server = site.start(a.workers)
        runs = [("user", "GET /user", {"BENCH_DATA": data[0]}), ("password", "password grant", {"BENCH_DATA": data[1]}),
                ("admin", "admin page 1", {"BENCH_ADMIN": admin})]
        got = {row: bench.quiet_measure(server.url, mode, f"{row}, {label}", **env) for mode, row, env in runs
               if row in rows}
        site.stop()
        return got
    small = measure_all(f"{a.users:,} users", files)
    bench.note(f"{site.engine}: seeding {a.big_users - a.users:,} more users")
    t0 = time.monotonic()
    site.seed(a.users, a.big_users - a.users)
    bench.note(f"  seeded in {time.monotonic() - t0:.0f} s")
    if not wait_idle(timeout=60, under=0.15):
        bench.note("  (the machine was still busy 60 s after seeding)")
    spread = site.sample(a.users)
    big = measure_all(f"{a.big_users:,} users", (site.write(site.access_tokens(spread)),
                                                 site.write([e for _, e, _ in spread])))
    return {row: (small[row], big[row]) for row in big}


def _admin_token(site):
    import jwt

    import gotrue
    return jwt.encode({"sub": gotrue.NIL_UUID, "exp": int(time.time()) + 86400, "email": "admin@bench.example",
                       "app_metadata": {}, "user_metadata": {}}, site.env["GOTRUE_JWT_SECRET"], algorithm="HS256")


# --- the report ----------------------------------------------------------------------------

def ceiling(r):
    """How many times its rate a run could reach with every CPU of the machine, at the CPU per
    request it used (server, database, wrk, interrupts and other load alike)."""
    used = sum(r.get(k, 0) for k in ("server_cpu_pct", "db_cpu_pct", "wrk_cpu_pct", "irq_cpu_pct", "other_cpu_pct"))
    return NCPU * 100 / used if used else float("inf")


def verdict(ok):
    return "PASS" if ok else "FAIL"


def report(args, floors, engines, started, load):
    lines = []
    p = lines.append
    fw, bc = floors["framework"], floors["bcrypt"]
    p(f"gotrue.py load benchmark (issue 13): wrk -t{args.wrk_threads} -c{args.connections}, {args.duration:g} s after a "
      f"{args.warmup:g} s warm-up, loopback; GOTRUE_API_THREADS={args.threads}, GOTRUE_API_WORKERS={args.workers}, "
      f"bcrypt cost 10, LOG_LEVEL={args.log_level}, {args.users:,} users; {NCPU} CPUs, load average at start {load}")
    p("")
    pf = floors.get("pinned")
    p("| engine | endpoint | req/s | p50 ms | p99 ms | non-2xx | floor | ratio | target | result | CPU ratio "
      "| pinned-floor ratio |")
    p("|---|---|---:|---:|---:|---:|---|---:|---|---|---:|---:|")
    p(f"| - | framework floor (bottle + waitress, constant JSON) | {fw['rps']:.0f} | {fw['p50_ms']:.1f} | "
      f"{fw['p99_ms']:.1f} | {fw['non2xx']} | | | | | | |")
    if pf:
        p(f"| - | framework floor, pinned as gotrue.py (informative) | {pf['rps']:.0f} | {pf['p50_ms']:.1f} | "
          f"{pf['p99_ms']:.1f} | {pf['non2xx']} | | | | | | |")
    p(f"| - | bcrypt floor (checkpw cost 10, {args.threads * args.workers} threads) | {bc['rps']:.1f} | "
      f"{bc['p50_ms']:.0f} | {bc['p99_ms']:.0f} | - | | | | | | |")
    checks = []
    for e in engines:
        for name, r in e["rows"].items():
            kind, mins = TARGETS[name]
            floor = r.get("floor", fw if kind == "framework" else bc)
            ratio = r["rps"] / floor["rps"] if floor["rps"] else 0.0
            cpu_ratio = floor["server_cpu_ms"] / r["server_cpu_ms"] if r.get("server_cpu_ms") else 0.0
            target, result = "", ""
            parts = []
            if e["engine"] in mins:
                parts.append(f">= {mins[e['engine']]:.2f}")
                ok = ratio >= mins[e["engine"]]
                if name in P99_TARGET_MS:
                    parts.append(f"p99 <= {P99_TARGET_MS[name]:.0f} ms")
                    ok = ok and r["p99_ms"] <= P99_TARGET_MS[name]
                target, result = ", ".join(parts), verdict(ok)
                checks.append(ok)
            pinned = f"{r['rps'] / pf['rps']:.2f}" if pf and kind == "framework" and pf["rps"] else ""
            p(f"| {e['engine']} | {name} | {r['rps']:.{0 if r['rps'] >= 100 else 1}f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['non2xx']} | {kind} {floor['rps']:.{0 if floor['rps'] >= 100 else 1}f} | {ratio:.2f} | {target} | {result} | "
              f"{cpu_ratio:.2f} | {pinned} |")
    p("")
    p("floor: the floor's req/s measured just before that endpoint (bcrypt's checks/s: the mean of a run before "
      "and one after it); a pair measured while "
      f"other load or the hypervisor took more than {BUSY_PCT}% of a CPU was measured again, up to {PAIR_TRIES} times, and the "
      "quietest pair counts (the first two rows above are the first floor runs). "
      "ratio: 2xx answers a second over the floor's (the verdict). CPU ratio: the floor's CPU time per answer over "
      "the gotrue.py processes' own (the database's excluded): a cross-check that other processes disturb less "
      "(stolen time is partly charged to both)." + (" pinned-floor ratio (informative, no verdict): req/s over the same bare app with its "
      "threads on one CPU as gotrue.py's are (GOTRUE_API_CPU_PINNING), measured once at the start: what the "
      "code costs over the framework when both are placed alike." if pf else ""))
    p("")
    p("Memory (VmRSS of the server; largest process, and the sum when there are several):")
    p("")
    p("| engine | after | requests served | RSS MB (max) | RSS MB (sum) |")
    p("|---|---|---:|---:|---:|")
    for e in engines:
        for label, served, biggest, total in e["rss"]:
            p(f"| {e['engine']} | {label} | {served:,} | {biggest:.1f} | {total:.1f} |")
    mem_checks = []
    for e in engines:
        samples = e["rss"]
        after20k = [s for s in samples if s[1] >= args.rss_requests]
        if args.rss_requests and after20k:
            top = max(s[2] for s in after20k)
            mem_checks.append((e["engine"], f"RSS after >= {args.rss_requests // 1000}k requests < {RSS_LIMIT_MB:.0f} MB",
                               f"{top:.1f} MB", top < RSS_LIMIT_MB))
        if args.rss_requests and len(samples) >= 4:
            growth = samples[-1][2] - samples[-2][2]
            mem_checks.append((e["engine"], f"flat over a further {args.rss_requests // 1000}k "
                               f"(growth <= {RSS_FLAT_MB:.0f} MB)", f"{growth:+.1f} MB", growth <= RSS_FLAT_MB))
    if mem_checks:
        p("")
        p("| engine | check | measured | result |")
        p("|---|---|---:|---|")
        for engine, what, measured, ok in mem_checks:
            p(f"| {engine} | {what} | {measured} | {verdict(ok)} |")
            checks.append(ok)

    if args.scaling and any(e["scaling"] for e in engines):
        p("")
        p("Worker processes (GOTRUE_API_WORKERS), GET /user and the framework floor:")
        p("")
        p("| engine | 1 worker req/s | 2 workers req/s | processes seen | ratio | machine's ceiling | target | result |")
        p("|---|---:|---:|---|---:|---:|---|---|")
        lo, hi = min(floors["scaling"]), max(floors["scaling"])
        f1, f2 = floors["scaling"][lo], floors["scaling"][hi]
        p(f"| framework floor | {f1['rps']:.0f} | {f2['rps']:.0f} | {lo}, {hi} | {f2['rps'] / f1['rps']:.2f} | "
          f"{ceiling(f1):.2f} | | |")
        for e in engines:
            if not e["scaling"]:
                continue
            s1, s2 = e["scaling"][lo], e["scaling"][hi]
            ratio = s2["rps"] / s1["rps"] if s1["rps"] else 0.0
            procs = f"{s1.get('processes', e['processes'])}, {s2.get('processes', e['processes'])}"
            ok = ratio >= SCALING_TARGET
            checks.append(ok)
            p(f"| {e['engine']} GET /user | {s1['rps']:.0f} | {s2['rps']:.0f} | {procs} | {ratio:.2f} | "
              f"{ceiling(s1):.2f} | >= {SCALING_TARGET} | {verdict(ok)} |")
        p("")
        p("machine's ceiling (informative): what more workers could give over the 1-worker run at its CPU per "
          "request: the machine's CPUs over what that run used of them (server, database, wrk, interrupts, other "
          "load), which the workers share with the database and wrk. An upper bound: a second worker's requests "
          "cost more CPU (it shares its CPU with wrk, the interrupts and the database; see the CPU table), and the "
          "unplaced floor's cost changes with its process count, so its ceiling is no bound.")

    if args.big:
        p("")
        p(f"{args.big_users:,} users against {args.users:,} (req/s, each pair on freshly started servers about a minute "
          f"apart; the figure may fall to 1/{BIG_FACTOR} of the small one):")
        p("")
        p(f"| engine | endpoint | {args.users // 1000}k req/s | {args.big_users // 1000}k req/s | "
          f"{args.users // 1000}k p50 ms | {args.big_users // 1000}k p50 ms | slowdown | target | result |")
        p("|---|---|---:|---:|---:|---:|---:|---|---|")
        for e in engines:
            for name, (small, r) in e["big"].items():
                slow = small["rps"] / r["rps"] if r["rps"] else float("inf")
                ok = slow <= BIG_FACTOR
                checks.append(ok)
                p(f"| {e['engine']} | {name} | {small['rps']:.1f} | {r['rps']:.1f} | {small['p50_ms']:.1f} | "
                  f"{r['p50_ms']:.1f} | {slow:.2f}x | <= {BIG_FACTOR}x | {verdict(ok)} |")

    p("")
    p(f"Where the CPU went during each measured run (server and db: CPU ms per request and % of one CPU; wrk, "
      f"interrupts (loopback TCP) and other load on the machine: % of one CPU, of {NCPU * 100} %; 'stolen': the "
      f"time the hypervisor ran other guests on this VM's CPUs meanwhile, partly in 'other' and partly charged "
      f"to whichever process was running):")
    p("")
    p("| engine | run | server ms/req | server % | db ms/req | db % | wrk % | softirq % | other % | stolen % |")
    p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    diag = [("-", "framework floor", fw), ("-", "bcrypt floor", bc)]
    for e in engines:
        diag += [(e["engine"], name, r) for name, r in e["rows"].items()]
        diag += [(e["engine"], f"mixed requests #{i}", e[f"mix{i}"]) for i in (1, 2) if f"mix{i}" in e]
        diag += [(e["engine"], f"GET /user, {w} worker(s)", r) for w, r in sorted(e["scaling"].items())]
        diag += [(e["engine"], f"{name}, {n // 1000}k users", r) for name, pair in e["big"].items()
                 for n, r in zip((args.users, args.big_users), pair)]
    for engine, name, r in diag:
        db = (f"{r['db_cpu_ms']:.2f} | {r['db_cpu_pct']:.0f}" if "db_cpu_ms" in r else "- | -")
        p(f"| {engine} | {name} | {r.get('server_cpu_ms', 0):.2f} | {r.get('server_cpu_pct', 0):.0f} | {db} | "
          f"{r.get('wrk_cpu_pct', 0):.0f} | {r.get('irq_cpu_pct', 0):.0f} | {r['other_cpu_pct']:.0f} | "
          f"{r.get('steal_cpu_pct', 0):.0f} |")
    p("")
    for e in engines:
        runs = [(args.workers, e.get("processes"))] + [(w, r.get("processes")) for w, r in e["scaling"].items()
                                                        if w != args.workers]
        for wanted, seen in runs:
            if seen is not None and seen < wanted:
                p(f"NOTE: {e['engine']}: GOTRUE_API_WORKERS={wanted} but the server ran {seen} process(es): "
                  f"the setting is not honoured by this gotrue.py.")
    others = sorted(disturbance(r) for _, _, r in diag)
    median = others[len(others) // 2]
    if median > 20:
        p(f"NOTE: other load and the hypervisor took a median {median:.0f} % CPU (of {NCPU * 100} %) during the "
          f"runs: the req/s ratios are disturbed by it; rerun on a quiet machine to trust them.")
    p(f"{sum(checks)} of {len(checks)} targets met; {time.monotonic() - started:.0f} s in all.")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python tests/bench.py", description=__doc__.split("\n\n")[0],
                                     epilog="Needs wrk (apt-get install wrk) and, for MariaDB, mariadbd "
                                            "(apt-get install mariadb-server).")
    parser.add_argument("--workers", type=int, default=1, help="GOTRUE_API_WORKERS of the server (default 1)")
    parser.add_argument("--engines", default="sqlite,mariadb", help="comma-separated: sqlite, mariadb")
    parser.add_argument("--threads", type=int, default=8, help="GOTRUE_API_THREADS and the floors' threads (8)")
    parser.add_argument("--users", type=int, default=1000, help="users seeded before measuring (1000)")
    parser.add_argument("--duration", type=float, default=8, help="measured seconds of each run (8)")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up seconds before each run (2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (16)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk -t (2)")
    parser.add_argument("--rss-requests", type=int, default=20000,
                        help="requests of each of the two memory steps (20000; 0 skips them)")
    parser.add_argument("--rss-limit", type=float, default=60, help="seconds a memory step may take at most (60)")
    parser.add_argument("--no-scaling", dest="scaling", action="store_false",
                        help="skip GET /user with the other worker count (1 vs 2)")
    parser.add_argument("--big", action="store_true", help="also seed 100k users and compare (adds a few minutes)")
    parser.add_argument("--big-users", type=int, default=100000, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="info", help="the server's LOG_LEVEL (info: as users run it)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--py-spy", metavar="DIR", help="profile the server with py-spy (pip install py-spy) "
                        "during each measured run; raw collapsed stacks in DIR, one file per run")
    parser.add_argument("--py-spy-gil", action="store_true", help="with --py-spy: sample only the thread holding "
                        "the GIL (where the Python CPU goes) instead of every busy thread (where they wait too)")
    parser.add_argument("--no-pinning", dest="pinning", action="store_false",
                        help="run the server with GOTRUE_API_CPU_PINNING=false (threads on every CPU)")
    parser.add_argument("--only", type=lambda v: set(v.split(",")), default=set(),
                        help="measure only these endpoints (comma-separated: settings, user, refresh, put, "
                             "password, signup, admin); a quicker run while working on one")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    args = parser.parse_args(argv)
    if args.py_spy:
        import shutil
        if not shutil.which("py-spy"):
            parser.error("--py-spy needs py-spy on PATH: pip install py-spy")
        args.py_spy = os.path.abspath(args.py_spy)
    if args.workers < 1 or args.threads < 1 or args.connections < args.wrk_threads:
        parser.error("--workers and --threads must be >= 1, --connections >= --wrk-threads")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_floor"]:
        return floor_app(*map(int, argv[1:4]), pinned=argv[4:5] == ["pinned"])
    if argv[:1] == ["_bcrypt"]:
        return bcrypt_floor(int(argv[1]), float(argv[2]), float(argv[3]))
    args = parse_args(argv)
    sys.path[:0] = [HERE, ROOT]
    import shutil
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk (Debian's package)")
    from mariadb_server import MariaDBUnavailable, create_database, start_private_mariadb

    def terminate(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
    started = time.monotonic()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    workdir = tempfile.mkdtemp(prefix="gotrue-bench-")
    bench = Bench(args, workdir)
    engines, stops = [], []
    try:
        bench.note(f"work directory {workdir}; floors first")
        floors = {"framework": bench.framework_floor(args.workers),
                  "bcrypt": bench.bcrypt_floor(args.threads * args.workers)}
        if args.pinning:
            floors["pinned"] = bench.framework_floor(args.workers, pinned=True)
        floors["scaling"] = {args.workers: floors["framework"]}
        if args.scaling:
            other = 2 if args.workers == 1 else 1
            floors["scaling"][other] = bench.framework_floor(other)
        for engine in args.engines.split(","):
            engine = engine.strip()
            if engine == "sqlite":
                db_env, db_pid = {"GOTRUE_DB_DRIVER": "sqlite", "DATABASE_URL": os.path.join(workdir, "bench.db")}, None
            elif engine == "mariadb":
                try:
                    base = os.path.join(workdir, "mariadb")
                    root, stop = start_private_mariadb(base)
                except MariaDBUnavailable as e:
                    bench.note(f"mariadb skipped: {e}")
                    continue
                stops.append(stop)
                with open(os.path.join(base, "mariadb.pid")) as f:
                    db_pid = int(f.read())
                db_env = {"GOTRUE_DB_DRIVER": "mysql", "DATABASE_URL": create_database(root, "bench")}
            else:
                raise SystemExit(f"unknown engine {engine!r}")
            engines.append(run_engine(bench, engine, db_env, db_pid))
            if engine == "mariadb":
                stops.pop()()
    except KeyboardInterrupt:
        bench.note("interrupted")
        return 130
    finally:
        for stop in reversed(stops):
            stop()
        bench.stop_floors()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            bench.note(f"kept {workdir}")
    text = report(args, floors, engines, started, load)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "floors": floors, "engines": engines, "report": text}, f, indent=1,
                      default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
