#!/usr/bin/env python3
"""The ``realodoo`` stage of tests/run.sh: check_two_process.py on real Odoo trees.

For every environment variable ``DKN_REALODOO_<major>=TREE[:PYTHON]`` (e.g.
``DKN_REALODOO_18=/srv/odoo18:/srv/venv18``): TREE is an Odoo source tree
(``odoo-bin``, or ``setup/odoo`` run with TREE on ``PYTHONPATH``), PYTHON a
virtualenv directory (its ``bin/python``) or a Python executable; default
``python3``. For each tree, one database is initialised (``base,web`` and the
test addon ``dkn_probe``), then for each backend (``redis``, ``db``) two Odoo
processes A and B run on it, each with its own data directory and its OWN
sidecar process, the two sidecars on one shared Redis (or one shared
PostgreSQL). Redis and PostgreSQL are real servers started here on free
loopback ports, in a temporary directory. One result line per version and
backend.

Other settings: ``DKN_SIDECAR_BIN`` (the sidecar binary, required),
``DKN_REALODOO_ROUNDS`` (race rounds, default 5), ``DKN_REALODOO_COUNTER_ROUNDS``
(rounds of the counter check 11 and of its control, default 10),
``DKN_REALODOO_BACKENDS`` (default ``redis db``), ``DKN_REALODOO_CONTROL=0`` (skip
the control: check 11 on one stock Odoo process, without ``dkn_auth``, where
increments must be lost), ``DKN_REALODOO_KEEP=1`` (keep the work directory with
every log). Exit status 0 when every line passed, 1 otherwise. No Odoo tree
given: one line, exit 0. Odoo is never downloaded here.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHECKER = HERE / "check_two_process.py"
VAR = re.compile(r"^DKN_REALODOO_(\d+)$")


def log(msg):
    print(msg, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trees():
    """[(major, tree, python)] from the environment, by major."""
    found = []
    for key, value in os.environ.items():
        m = VAR.match(key)
        if not m or not value:
            continue
        tree, _, py = value.partition(":")
        tree = Path(tree)
        if py:
            p = Path(py)
            python = p / "bin" / "python" if p.is_dir() else p
        else:
            python = Path(shutil.which("python3") or sys.executable)
        found.append((int(m.group(1)), tree, python))
    return sorted(found)


def postgres_user():
    """As root, PostgreSQL runs as ``postgres`` (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise SystemExit(
            "realodoo: running as root needs the postgres user (apt-get install postgresql)"
        ) from None
    return pw.pw_uid, pw.pw_gid


def pg_bin(name):
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for d in dirs:
        if (d / name).is_file():
            return str(d / name)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"realodoo: {name} not found (apt-get install postgresql)")
    return found


class Servers:
    """One PostgreSQL (Odoo's databases and the sidecars' ``db`` backend) and one Redis."""

    def __init__(self, work):
        self.work = work
        self.procs = []
        self.pg_port = free_port()
        self.redis_port = free_port()

    def start(self):
        pgdir = self.work / "pg"
        pgdir.mkdir()
        ids = postgres_user()
        kw = {}
        if ids:
            os.chown(pgdir, *ids)
            kw = {"user": ids[0], "group": ids[1], "extra_groups": []}
        subprocess.run(
            [pg_bin("initdb"), "-D", str(pgdir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
            + ["--locale=C.UTF-8"],
            check=True,
            stdout=subprocess.DEVNULL,
            **kw,
        )
        pglog = open(self.work / "postgres.log", "ab")  # noqa: SIM115
        self.procs.append(
            subprocess.Popen(
                [pg_bin("postgres"), "-D", str(pgdir / "data"), "-h", "127.0.0.1", "-p", str(self.pg_port)]
                + ["-k", str(pgdir), "-c", "fsync=off", "-c", "synchronous_commit=off"]
                + ["-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdout=pglog,
                stderr=subprocess.STDOUT,
                **kw,
            )
        )
        self.procs.append(
            subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", "--port", str(self.redis_port)]
                + ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.work)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 60
        while subprocess.run(
            [pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.pg_port)], check=False
        ).returncode:
            if time.monotonic() > deadline:
                raise SystemExit("realodoo: PostgreSQL did not start (see postgres.log)")
            time.sleep(0.2)
        self.psql("create role odoo login createdb password 'odoo'")
        self.psql("create database dkn_sessions")

    def psql(self, sql):
        subprocess.run(
            [pg_bin("psql"), "-q", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres"]
            + ["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def sidecar_args(self, backend, major):
        if backend == "redis":
            uri = f"redis://127.0.0.1:{self.redis_port}/0"
            return ["--driver", "redis", "--redis-uri", uri, "--prefix", f"realodoo{major}:"]
        uri = f"postgresql://postgres@127.0.0.1:{self.pg_port}/dkn_sessions?sslmode=disable"
        return ["--driver", "db", "--db-uri", uri, "--db-table", f"sessions_{major}"]

    def stop(self):
        for proc in reversed(self.procs):
            stop(proc)


def stop(proc, timeout=20):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def healthy(url, path="/healthz"):
    try:
        with urllib.request.urlopen(url + path, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_for(what, test, timeout):
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout} s")
        time.sleep(0.3)


class Sidecar:
    """Started through ``sh`` with a pid file, so the checker can stop and start it (check 9)."""

    def __init__(self, work, name, args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pidfile = work / f"sidecar-{name}.pid"
        logfile = work / f"sidecar-{name}.log"
        binary = os.environ["DKN_SIDECAR_BIN"]
        cmd = shlex.join([binary, *args, "--listen", f"127.0.0.1:{self.port}"])
        # Run from an environment without DKN_AUTH_* (main): the sidecar gets only its flags.
        self.start_cmd = (
            f"{cmd} >>{shlex.quote(str(logfile))} 2>&1 & echo $! >{shlex.quote(str(self.pidfile))}"
        )
        pid = shlex.quote(str(self.pidfile))
        self.stop_cmd = f"p=$(cat {pid}); kill $p; while kill -0 $p 2>/dev/null; do sleep 0.1; done"

    def start(self):
        subprocess.run(["sh", "-c", self.start_cmd], check=True)
        wait_for(f"sidecar {self.url}", lambda: healthy(self.url), 30)

    def stop(self):
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


class OdooTree:
    def __init__(self, major, tree, python, servers):
        self.major = major
        self.tree = tree
        self.python = python
        self.servers = servers
        self.db = f"realodoo{major}"
        launcher = tree / "odoo-bin"
        self.env = dict(os.environ)
        if not launcher.is_file():
            launcher = tree / "setup" / "odoo"  # e.g. a 16.0 tree without odoo-bin
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), self.env.get("PYTHONPATH")]))
        self.cmd = [str(python), str(launcher)]
        paths = [tree / "addons", tree / "odoo" / "addons", ROOT / "addons", HERE]
        self.addons = ",".join(str(p) for p in paths if p.is_dir())

    def common(self):
        return [
            f"--addons-path={self.addons}",
            "--db_host=127.0.0.1",
            f"--db_port={self.servers.pg_port}",
            "--db_user=odoo",
            "--db_password=odoo",
            "-d",
            self.db,
        ]

    def init_db(self, work):
        logfile = work / "init.log"
        args = self.common() + ["-i", "base,web,dkn_probe", "--without-demo=all", "--stop-after-init"]
        args += [f"--data-dir={work / 'init-data'}", f"--logfile={logfile}"]
        done = subprocess.run(self.cmd + args, env=self.env, check=False, timeout=1800)
        if done.returncode:
            raise RuntimeError(f"database init failed (exit {done.returncode}), see {logfile}")

    def start(self, work, name, sidecar_url):
        port = free_port()
        logfile = work / f"odoo-{name}.log"
        load = "base,web,dkn_auth" if sidecar_url else "base,web"  # None: stock Odoo
        args = self.common() + [
            f"--load={load}",
            f"--db-filter=^{self.db}$",
            "--no-database-list",
            "--http-interface=127.0.0.1",
            f"--http-port={port}",
            "--workers=0",
            "--max-cron-threads=0",
            f"--data-dir={work / ('data-' + name)}",
            f"--logfile={logfile}",
        ]
        env = dict(self.env, DKN_AUTH_URL=sidecar_url) if sidecar_url else self.env
        proc = subprocess.Popen(self.cmd + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        return proc, url, logfile


def summary(results):
    failed = [r["check"] for r in results if r["status"] == "FAIL"]
    passed = sum(r["status"] == "PASS" for r in results)
    skipped = [r["check"] for r in results if r["status"] == "SKIP"]
    text = f"{passed} passed"
    if skipped:
        text += f", skipped: {', '.join(skipped)}"
    if failed:
        text += f", FAILED: {', '.join(failed)}"
    return not failed, text


def counter_details(results):
    return [f"{r['check']}: {r['detail']}" for r in results if r["check"].startswith("11")]


def run_checker(cmd, work):
    """(results, error): the checker's JSON results, or why there are none."""
    out = work / "results.json"
    with open(work / "checks.log", "wb") as fh:
        cmd = cmd + ["--json", str(out)]
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False, timeout=1800)
    if not out.is_file():
        return None, f"the checker wrote no result, see {work / 'checks.log'}"
    return json.loads(out.read_text()), None


def run_control(odoo, work, counter_rounds):
    """Check 11 on ONE stock Odoo process (filesystem store, no dkn_auth): the
    two increments race inside one process and the last writer wins."""
    proc = None
    try:
        proc, url, log_a = odoo.start(work, "stock", None)
        wait_for(f"Odoo {url}", lambda: healthy(url, "/web/login"), 180)
        cmd = [sys.executable, str(CHECKER), "--a", url, "--b", url, "--db", odoo.db]
        cmd += ["--counter-rounds", str(counter_rounds), "--log-a", str(log_a)]
        cmd += ["--only", "counter_race_control"]
        report, error = run_checker(cmd, work)
        if error:
            return False, error, []
        ok, text = summary(report["results"])
        return ok, text, counter_details(report["results"])
    finally:
        stop(proc)


def run_one(odoo, backend, work, rounds, counter_rounds=10):
    servers = odoo.servers
    sc_a = Sidecar(work, "a", servers.sidecar_args(backend, odoo.major))
    sc_b = Sidecar(work, "b", servers.sidecar_args(backend, odoo.major))
    procs = []
    try:
        sc_a.start()
        sc_b.start()
        a, url_a, log_a = odoo.start(work, "a", sc_a.url)
        procs.append(a)
        b, url_b, log_b = odoo.start(work, "b", sc_b.url)
        procs.append(b)
        for url in (url_a, url_b):
            wait_for(f"Odoo {url}", lambda url=url: healthy(url, "/web/login"), 180)
        cmd = [sys.executable, str(CHECKER), "--a", url_a, "--b", url_b, "--db", odoo.db]
        cmd += ["--rounds", str(rounds), "--stop-a-cmd", f"kill {a.pid}", "--log-a", str(log_a)]
        cmd += ["--log-b", str(log_b), "--counter-rounds", str(counter_rounds)]
        cmd += ["--sidecar-stop-cmd", sc_a.stop_cmd, "--sidecar-start-cmd", sc_a.start_cmd]
        report, error = run_checker(cmd, work)
        if error:
            return False, error, []
        ok, text = summary(report["results"])
        if report["odoo"] != odoo.major:
            return False, f"the tree runs Odoo {report['odoo']}, not {odoo.major}", []
        return ok, text, counter_details(report["results"])
    finally:
        for proc in procs:
            stop(proc)
        sc_a.stop()
        sc_b.stop()


def main():
    given = trees()
    if not given:
        log("realodoo: skipped, no Odoo tree given (set DKN_REALODOO_16=/path/to/odoo[:venv] ... _19)")
        return 0
    if not os.environ.get("DKN_SIDECAR_BIN"):
        raise SystemExit("realodoo: DKN_SIDECAR_BIN must name the sidecar binary")
    for key in [k for k in os.environ if k.startswith("DKN_AUTH_")]:
        del os.environ[key]  # Odoo gets DKN_AUTH_URL explicitly, the sidecars their flags
    rounds = int(os.environ.get("DKN_REALODOO_ROUNDS", "5"))
    counter_rounds = int(os.environ.get("DKN_REALODOO_COUNTER_ROUNDS", "10"))
    control = os.environ.get("DKN_REALODOO_CONTROL", "1") != "0"
    backends = os.environ.get("DKN_REALODOO_BACKENDS", "redis db").split()
    work = Path(tempfile.mkdtemp(prefix="dkn-realodoo-"))
    work.chmod(0o755)  # PostgreSQL runs as another user when we are root
    servers = Servers(work)
    lines = []
    all_ok = True
    try:
        servers.start()
        for major, tree, python in given:
            odoo = OdooTree(major, tree, python, servers)
            vwork = work / str(major)
            vwork.mkdir()
            t0 = time.monotonic()
            try:
                odoo.init_db(vwork)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                for backend in backends:
                    lines.append(f"realodoo Odoo {major} {backend}: FAIL ({exc})")
                    log(lines[-1])
                all_ok = False
                continue
            log(f"realodoo Odoo {major}: database {odoo.db} initialised in {time.monotonic() - t0:.0f} s")
            for backend in backends + (["stock"] if control else []):
                bwork = vwork / backend
                bwork.mkdir()
                t0 = time.monotonic()
                try:
                    if backend == "stock":
                        ok, text, details = run_control(odoo, bwork, counter_rounds)
                    else:
                        ok, text, details = run_one(odoo, backend, bwork, rounds, counter_rounds)
                except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                    ok, text, details = False, f"{type(exc).__name__}: {exc}", []
                all_ok &= ok
                status = "PASS" if ok else "FAIL"
                name = "stock (control, no dkn_auth)" if backend == "stock" else backend
                took = time.monotonic() - t0
                lines.append(f"realodoo Odoo {major} {name}: {status} ({text}; {took:.0f} s)")
                lines.extend("    " + d for d in details)
                for line in lines[-1 - len(details) :]:
                    log(line)
                if not ok:
                    log(f"  logs: {bwork}")
    finally:
        servers.stop()
        keep = os.environ.get("DKN_REALODOO_KEEP") == "1" or not all_ok
        if keep:
            log(f"realodoo: logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    log("realodoo results:")
    for line in lines:
        log("  " + line)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
