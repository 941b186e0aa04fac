#!/usr/bin/env python3
"""Per-request cost of the session store: dkn_auth through the sidecar vs files.

Measures what one Odoo request spends in its session store, outside Odoo:

- read-only request: ``get(sid)``  (most requests: nothing changed, no save)
- changing request:  ``get(sid)`` + one key changed + ``save(session)``

for the dkn_auth store (fake Odoo 16 and 18 session classes, real sidecar with
the memory and the Redis driver) and for a stand-in of Odoo's
FilesystemSessionStore (one pickle file per session, written to a temporary
file and renamed, as werkzeug's store does; Odoo 18 writes JSON files the same
way). Run:

    DKN_SIDECAR_BIN=.../release/odoo-session-sidecar python3 tests/addon/bench_store.py [--n 5000]

Use a release build of the sidecar: a debug build adds about 100 µs per call.
"""

import argparse
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "addons"))

import fake_odoo  # noqa: E402
from conftest import Redis, Sidecar  # noqa: E402

SESSION = {
    "context": {"lang": "en_US", "tz": "Europe/Brussels", "uid": 2, "allowed_company_ids": [1]},
    "db": "prod",
    "debug": "",
    "login": "admin@example.com",
    "uid": 2,
    "session_token": "f" * 64,
    "_geoip": {"city": "Brussels", "country_code": "BE", "latitude": 50.85, "longitude": 4.35},
    "website_sale_current_pl": 1,
    "sale_order_id": 42,
}


class FilesystemStore:
    """Odoo's FilesystemSessionStore in miniature: a pickle file per sid."""

    def __init__(self, path):
        self.path = path

    def _file(self, sid):
        return os.path.join(self.path, sid[:2], sid)

    def get(self, sid):
        try:
            with open(self._file(sid), "rb") as f:
                return pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):
            return {}

    def save(self, sid, data):
        fn = self._file(sid)
        os.makedirs(os.path.dirname(fn), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(fn))
        with os.fdopen(fd, "wb") as f:
            pickle.dump(data, f, pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, fn)


def percentiles(samples):
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1e6  # noqa: E731
    return {"p50_us": round(pick(0.50), 1), "p90_us": round(pick(0.90), 1), "p99_us": round(pick(0.99), 1)}


def timed(fn, n):
    for _ in range(min(200, n)):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_fs(n, tmp):
    store = FilesystemStore(str(tmp / "fs"))
    sid = os.urandom(20).hex()
    store.save(sid, dict(SESSION))
    counter = [0]

    def read():
        store.get(sid)

    def change():
        data = store.get(sid)
        counter[0] += 1
        data["sale_order_id"] = counter[0]
        store.save(sid, data)

    return {"get": percentiles(timed(read, n)), "get+save": percentiles(timed(change, n))}


def bench_dkn(n, url, major, unix_socket=None):
    os.environ["DKN_AUTH_URL"] = url
    if unix_socket:
        os.environ["DKN_AUTH_SOCKET"] = str(unix_socket)
    else:
        os.environ.pop("DKN_AUTH_SOCKET", None)
    http = fake_odoo.build(major)
    from dkn_auth import odoo_glue

    odoo_glue.uninstall_for_tests()
    odoo_glue.install()
    store = http.root.session_store
    session = store.new()
    session.update(SESSION)
    store.save(session)
    sid = session.sid
    counter = [0]

    def read():
        store.get(sid)

    def change():
        s = store.get(sid)
        counter[0] += 1
        s["sale_order_id"] = counter[0]
        store.save(s)

    result = {"get": percentiles(timed(read, n)), "get+save": percentiles(timed(change, n))}
    odoo_glue.uninstall_for_tests()
    fake_odoo.remove()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dkn-bench-"))
    results = {"n": args.n, "session_bytes": len(json.dumps(SESSION))}
    try:
        results["filesystem (pickle files)"] = bench_fs(args.n, tmp)
        sc = Sidecar(["--driver", "memory"], tmp)
        try:
            for major in (16, 18):
                results[f"dkn_auth odoo{major}, sidecar memory"] = bench_dkn(args.n, sc.url, major)
        finally:
            sc.stop()
        sock = tmp / "sidecar.sock"
        sc = Sidecar(["--driver", "memory"], tmp, unix_socket=sock)
        try:
            results["dkn_auth odoo18, sidecar memory, unix socket"] = bench_dkn(args.n, sc.url, 18, sock)
        finally:
            sc.stop()
        if shutil.which("redis-server"):
            redis = Redis(tmp)
            sc = Sidecar(["--driver", "redis", "--redis-uri", redis.uri], tmp)
            try:
                for major in (16, 18):
                    results[f"dkn_auth odoo{major}, sidecar redis"] = bench_dkn(args.n, sc.url, major)
            finally:
                sc.stop()
                redis.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
