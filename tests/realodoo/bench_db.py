#!/usr/bin/env python3
"""Per-request cost of dkn_auth's stores on ONE real Odoo tree, side by side.

Starts (in a temporary directory, on loopback) one PostgreSQL with its durable defaults
(``fsync``, ``synchronous_commit=on``: unlike stage.py, whose server runs with both
off) plus ``pg_stat_statements`` and ``track_wal_io_timing``, optionally one Redis, then
one threaded Odoo process per store:

- ``files``: stock Odoo (``--load=base,web``, its filesystem store);
- ``db:NAME=BINARY`` (repeatable): dkn_auth + its own sidecar BINARY, ``--driver db``
  on that PostgreSQL (table ``bench_NAME``); two binaries compare two versions in one run;
  ``db:NAME=BINARY,--flag=value,...`` passes more sidecar flags, e.g.
  ``db:off=BINARY,--db-synchronous-commit=off``;
- ``redis:NAME=BINARY``: the same on the Redis driver.

All processes run at once; passes are interleaved (files, db..., files, db...), each
pass ``--n`` requests, one logged-in user per store, every ``--write-every``-th request
writing the session (``/dkn_probe/set_b``), the others reading (``/dkn_probe/get``).
Prints p50/p90 per store (all, reads, writes) over all its passes, the ratio to files,
and for sidecar stores the sidecar's own mean time per route (its /metrics) and what
PostgreSQL spent (pg_stat_statements mean per statement, WAL syncs and their time).

Usage: python3 tests/realodoo/bench_db.py --tree /srv/odoo18 --python /srv/venv18 \
    --store files --store db:old=/tmp/old-sidecar --store db:new=/tmp/new-sidecar \
    --store db:off=/tmp/new-sidecar,--db-synchronous-commit=off
"""

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage  # noqa: E402


def pct(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Postgres:
    def __init__(self, work, extra):
        self.work = work
        self.port = stage.free_port()
        self.extra = extra
        self.proc = None

    def start(self):
        pgdir = self.work / "pg"
        pgdir.mkdir()
        ids = stage.postgres_user()
        kw = {}
        if ids:
            os.chown(pgdir, *ids)
            kw = {"user": ids[0], "group": ids[1], "extra_groups": []}
        subprocess.run(
            [stage.pg_bin("initdb"), "-D", str(pgdir / "data"), "-U", "postgres", "--auth=trust"]
            + ["-E", "UTF8", "--locale=C.UTF-8"],
            check=True,
            stdout=subprocess.DEVNULL,
            **kw,
        )
        args = ["-c", "shared_preload_libraries=pg_stat_statements", "-c", "track_wal_io_timing=on"]
        args += ["-c", "max_connections=200", "-c", "pg_stat_statements.track=all"]
        for setting in self.extra:
            args += ["-c", setting]
        self.proc = subprocess.Popen(
            [stage.pg_bin("postgres"), "-D", str(pgdir / "data"), "-h", "127.0.0.1"]
            + ["-p", str(self.port), "-k", str(pgdir), *args],
            stdout=open(self.work / "postgres.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            **kw,
        )
        deadline = time.monotonic() + 60
        while subprocess.run(
            [stage.pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
        ).returncode:
            if time.monotonic() > deadline:
                raise SystemExit("bench_db: PostgreSQL did not start (see postgres.log)")
            time.sleep(0.2)
        self.psql("create role odoo login createdb password 'odoo'")
        self.psql("create database dkn_sessions")
        self.psql("create extension pg_stat_statements", db="dkn_sessions")

    def psql(self, sql, db="postgres"):
        done = subprocess.run(
            [stage.pg_bin("psql"), "-qAt", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
            + ["-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    def stop(self):
        stage.stop(self.proc)


class Store:
    def __init__(self, spec):
        kind, _, rest = spec.partition(":")
        self.kind = kind
        if kind == "files":
            self.name, self.binary, self.flags = "files", None, []
        else:
            name, _, rest = rest.partition("=")
            binary, *self.flags = rest.split(",")
            if kind not in ("db", "redis") or not name or not binary:
                raise SystemExit(
                    f"bench_db: --store {spec!r}: expected files, db:NAME=BIN[,FLAG...]"
                    " or redis:NAME=BIN[,FLAG...]"
                )
            self.name, self.binary = f"{kind}:{name}", binary
        self.sidecar = None
        self.proc = None
        self.url = None
        self.sid = None
        self.times = {"read": [], "write": []}
        self.sidecar_ms = {}
        self.sidecar_n = {}

    def sidecar_args(self, pg, redis_port):
        tag = self.name.split(":")[1]
        if self.kind == "db":
            uri = f"postgresql://postgres@127.0.0.1:{pg.port}/dkn_sessions?sslmode=disable"
            return ["--driver", "db", "--db-uri", uri, "--db-table", f"bench_{tag}", *self.flags]
        return [
            "--driver",
            "redis",
            "--redis-uri",
            f"redis://127.0.0.1:{redis_port}/0",
            "--prefix",
            f"{tag}:",
            *self.flags,
        ]


def rpc(url, path, sid, params):
    host, port = url.rsplit("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({"jsonrpc": "2.0", "method": "call", "params": params, "id": 1})
    headers = {"Content-Type": "application/json", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) bench"}
    if sid:
        headers["Cookie"] = f"session_id={sid}"
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        cookie = resp.getheader("Set-Cookie") or ""
    finally:
        conn.close()
    m = re.search(r"session_id=([^;]*)", cookie)
    payload = json.loads(raw)
    if "error" in payload:
        raise RuntimeError(f"{url}{path}: {payload['error']}")
    return payload.get("result"), (m.group(1) if m else None)


def metrics(url):
    """{route: (sum seconds, count)} of the sidecar's request_duration_seconds."""
    with stage.urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"\w*request_duration_seconds_(sum|count)\{(.*)\} (\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        key = f"{labels.get('method', '')} {labels.get('route', '')} {labels.get('status', '')}".strip()
        s, c = out.get(key, (0.0, 0))
        if m.group(1) == "sum":
            s += float(m.group(3))
        else:
            c += int(float(m.group(3)))
        out[key] = (s, c)
    return out


def run_pass(store, n, write_every, counter):
    for i in range(n):
        write = write_every and i % write_every == write_every - 1
        path = "/dkn_probe/set_b" if write else "/dkn_probe/get"
        params = {"value": counter + i} if write else {}
        t0 = time.perf_counter()
        _, sid = rpc(store.url, path, store.sid, params)
        store.times["write" if write else "read"].append((time.perf_counter() - t0) * 1000)
        if sid and sid != store.sid:
            store.sid = sid


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--store", action="append", required=True)
    ap.add_argument("--n", type=int, default=2000, help="requests per pass")
    ap.add_argument("--passes", type=int, default=3, help="passes per store")
    ap.add_argument("--write-every", type=int, default=4)
    ap.add_argument("--pg", action="append", default=[], help="extra PostgreSQL setting, e.g. fsync=off")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    for key in [k for k in os.environ if k.startswith("DKN_AUTH_")]:
        del os.environ[key]
    stores = [Store(s) for s in args.store]
    work = Path(tempfile.mkdtemp(prefix="dkn-bench-db-"))
    work.chmod(0o755)
    pg = Postgres(work, args.pg)
    redis = None
    redis_port = stage.free_port()
    tree = Path(args.tree)
    py = Path(args.python)
    python = py / "bin" / "python" if py.is_dir() else py
    try:
        pg.start()
        if any(s.kind == "redis" for s in stores):
            redis = subprocess.Popen(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
                + ["--appendonly", "no", "--dir", str(work)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        servers = argparse.Namespace(pg_port=pg.port)
        major = 0
        odoo = stage.OdooTree(major, tree, python, servers)
        odoo.db = "bench"
        t0 = time.monotonic()
        odoo.init_db(work)
        print(f"database initialised in {time.monotonic() - t0:.0f} s", flush=True)
        for st in stores:
            url = None
            if st.binary:
                os.environ["DKN_SIDECAR_BIN"] = st.binary
                st.sidecar = stage.Sidecar(work, st.name.replace(":", "-"), st.sidecar_args(pg, redis_port))
                st.sidecar.start()
                url = st.sidecar.url
            st.proc, st.url, _ = odoo.start(work, st.name.replace(":", "-"), url)
        for st in stores:
            stage.wait_for(f"Odoo {st.url}", lambda st=st: stage.healthy(st.url, "/web/login"), 180)
            _, st.sid = rpc(
                st.url,
                "/web/session/authenticate",
                None,
                {"db": odoo.db, "login": "admin", "password": "admin"},
            )
            run_pass(st, 200, args.write_every, 0)  # warm-up, not counted
            st.times = {"read": [], "write": []}
        pg.psql("select pg_stat_statements_reset(); select pg_stat_reset_shared('wal')", db="dkn_sessions")
        for p in range(args.passes):
            for st in stores:
                before = metrics(st.sidecar.url) if st.sidecar else {}
                t0 = time.monotonic()
                run_pass(st, args.n, args.write_every, (p + 1) * 100000)
                after = metrics(st.sidecar.url) if st.sidecar else {}
                for k, (s, c) in after.items():
                    s0, c0 = before.get(k, (0.0, 0))
                    st.sidecar_ms[k] = st.sidecar_ms.get(k, 0.0) + (s - s0) * 1000
                    st.sidecar_n[k] = st.sidecar_n.get(k, 0) + (c - c0)
                print(f"pass {p + 1} {st.name}: {time.monotonic() - t0:.1f} s", flush=True)
        print()
        base = None
        print("| store | p50 all | p90 all | p50 read | p50 write | p90 write | p50 vs files |")
        print("|---|---|---|---|---|---|---|")
        for st in stores:
            alls = st.times["read"] + st.times["write"]
            p50 = statistics.median(alls)
            if st.kind == "files":
                base = p50
            ratio = f"{p50 - base:+.2f} ms ({p50 / base - 1:+.0%})" if base else "-"
            reads, writes = st.times["read"], st.times["write"]
            cells = [
                p50,
                pct(alls, 0.9),
                statistics.median(reads),
                statistics.median(writes),
                pct(writes, 0.9),
            ]
            print(f"| {st.name} | " + " | ".join(f"{v:.2f}" for v in cells) + f" | {ratio} |")
        print()
        for st in stores:
            if not st.sidecar:
                continue
            parts = [
                f"{k} {st.sidecar_ms[k] / st.sidecar_n[k]:.3f} ms x{st.sidecar_n[k]}"
                for k in sorted(st.sidecar_ms)
                if st.sidecar_n.get(k)
            ]
            print(f"sidecar {st.name} mean per route: " + "; ".join(parts))
        print()
        print("pg_stat_statements (sidecar statements, dkn_sessions), mean ms x calls:")
        out = pg.psql(
            "select round(mean_exec_time::numeric, 3), calls, "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 90) from pg_stat_statements s "
            "join pg_database d on d.oid = s.dbid where d.datname = 'dkn_sessions' "
            "order by total_exec_time desc limit 12",
            db="dkn_sessions",
        )
        print(out)
        print("pg_stat_wal (whole server: Odoo's own commits included):")
        print(
            pg.psql(
                "select wal_records, wal_write, wal_sync, round(wal_sync_time::numeric, 1) from pg_stat_wal",
                db="dkn_sessions",
            )
        )
    finally:
        for st in stores:
            stage.stop(st.proc)
            if st.sidecar:
                st.sidecar.stop()
        stage.stop(redis)
        pg.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
