"""Bounded load generator of the end-to-end scenarios (standard library only, so it runs on
the test machine and, for kind, in the client Pod of the stand-in image as /app/load.py).

    load.py login URL COUNT PREFIX
        COUNT logins through URL; prints {"sids": [...], "uids": [...]} (exit 1 if one fails)
    load.py run URL --sids=SIDS [--rate 20] [--max-seconds 300] [--stop-file PATH] [--timeout 5]
        authenticated requests (GET /web/session/get_session_info, the sids round-robin) at a
        fixed rate, open loop (a slow answer does not slow the schedule), each on a new
        connection (so kube-proxy spreads them over the Service's endpoints), until
        --stop-file exists or --max-seconds have passed. Prints one JSON line per request
        ({"type": "req", "t0", "t1", "status", "pod", "s", "err"}: wall-clock start and end,
        HTTP status or 0 for no answer, the answering pod, the sid's index) and a last line
        {"type": "summary", ...}: counts by outcome and status, the failure window (start of
        the first failed request to the end of the last), latencies, requests per pod.
    load.py logout URL --sid=SID
        POST /web/session/logout; prints {"status": ...}
    load.py check URL[,URL...] --sids=SIDS
        GET /web/session/get_session_info for every sid through every URL; prints
        {"URL": {"SID": status, ...}, ...}
    load.py probe SERVICE_URL --sid=SID [--metrics=URL,URL]
        one look during an outage: the status of an anonymous request that needs no session
        (GET /web/webclient/version_info) and of an authenticated one through the Service,
        and the sidecars' backend gauge (a *backend_up sample of each /metrics URL, null
        when absent or unreachable); prints {"anon", "auth", "backend_up": [...]}
    load.py summary FILE
        the summary of the request lines of FILE (as printed by run)

SIDS: comma-separated (sids are URL-safe base64: no commas); give it as --sids=SIDS, with
the "=", since a sid may start with "-".

Outcomes: "ok" (200), "refused" (401: the session is gone, a logout as the user sees it),
"failed" (anything else: 5xx, no answer, timeout).
"""

import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

INFO = "/web/session/get_session_info"


def request(base, method, path, sid=None, form=None, timeout=5.0):
    """One request on a new connection: (status, body dict, new sid cookie, error)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    headers = {"Connection": "close"}
    body = None
    if sid:
        headers["Cookie"] = f"session_id={sid}"
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        cookie = None
        for name, value in resp.getheaders():
            if name.lower() == "set-cookie" and value.startswith("session_id="):
                cookie = value.split(";", 1)[0].split("=", 1)[1]
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            data = {"raw": raw[:200].decode("utf-8", "replace")}
        return resp.status, data if isinstance(data, dict) else {}, cookie, None
    except (OSError, http.client.HTTPException) as exc:
        return 0, {}, None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def outcome(status):
    return "ok" if status == 200 else "refused" if status == 401 else "failed"


def summarize(records):
    records = sorted(records, key=lambda r: r["t0"])
    out = {"type": "summary", "requests": len(records), "ok": 0, "refused": 0, "failed": 0}
    by_status, by_pod = {}, {}
    for r in records:
        out[outcome(r["status"])] += 1
        by_status[str(r["status"])] = by_status.get(str(r["status"]), 0) + 1
        if r.get("pod"):
            by_pod[r["pod"]] = by_pod.get(r["pod"], 0) + 1
    bad = [r for r in records if r["status"] != 200]
    out["first_failure"] = bad[0]["t0"] if bad else None
    out["last_failure"] = max(r["t1"] for r in bad) if bad else None
    out["failure_window_s"] = round(out["last_failure"] - out["first_failure"], 3) if bad else 0.0
    out["failure_errors"] = sorted({r.get("err") or str(r["status"]) for r in bad})[:10]
    lat = sorted(r["t1"] - r["t0"] for r in records)
    if lat:
        out["latency_ms"] = {
            "p50": round(1000 * lat[len(lat) // 2], 1),
            "p99": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
            "max": round(1000 * lat[-1], 1),
        }
    if records:
        out["start"] = records[0]["t0"]
        out["end"] = max(r["t1"] for r in records)
        out["seconds"] = round(out["end"] - out["start"], 1)
    out["by_status"] = by_status
    out["by_pod"] = by_pod
    return out


def cmd_login(args):
    sids, uids = [], []
    for i in range(args.count):
        status, body, cookie, err = request(args.url, "POST", "/web/login", form={"login": f"{args.prefix}-{i}"})
        if status != 200 or not cookie:
            print(json.dumps({"error": f"login {i}: {status} {err or body}"}))
            return 1
        sids.append(cookie)
        uids.append(body.get("uid"))
    print(json.dumps({"sids": sids, "uids": uids}))
    return 0


def cmd_run(args):
    lock = threading.Lock()
    records = []

    def one(index, sid, t_sched):
        t0 = time.time()
        status, body, _cookie, err = request(args.url, "GET", INFO, sid=sid, timeout=args.timeout)
        rec = {"type": "req", "t0": round(t0, 4), "t1": round(time.time(), 4), "status": status, "s": index}
        if body.get("pod"):
            rec["pod"] = body["pod"]
        if err or status not in (200, 401):
            rec["err"] = err or str(body.get("error", ""))[:120]
        if t0 - t_sched > 0.5:
            rec["late"] = round(t0 - t_sched, 3)
        with lock:
            records.append(rec)
            sys.stdout.write(json.dumps(rec) + "\n")

    interval = 1.0 / args.rate
    start = time.time()
    deadline = start + args.max_seconds
    # Enough threads that requests hanging up to the timeout never hold the schedule back.
    workers = int(args.rate * (args.timeout + 1)) + 4
    n = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while True:
            t_sched = start + n * interval
            now = time.time()
            if t_sched > now:
                time.sleep(t_sched - now)
            if time.time() >= deadline or (args.stop_file and os.path.exists(args.stop_file)):
                break
            pool.submit(one, n % len(args.sids), args.sids[n % len(args.sids)], t_sched)
            n += 1
    summary = summarize(records)
    summary["rate"] = args.rate
    summary["sessions"] = len(args.sids)
    print(json.dumps(summary))
    return 0


def cmd_logout(args):
    status, body, _cookie, err = request(args.url, "POST", "/web/session/logout", sid=args.sid)
    print(json.dumps({"t": round(time.time(), 3), "status": status, "error": err or body.get("error")}))
    return 0


def cmd_check(args):
    out = {}
    for url in args.urls.split(","):
        out[url] = {}
        for sid in args.sids:
            status, _body, _cookie, _err = request(url, "GET", INFO, sid=sid)
            out[url][sid] = status
    print(json.dumps(out))
    return 0


def backend_up(url):
    """The value of the first ``*_backend_up`` sample of a Prometheus text page, or None."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.endswith("_backend_up"):
            try:
                return float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                return None
    return None


def cmd_probe(args):
    anon, _body, _cookie, _err = request(args.url, "GET", "/web/webclient/version_info", timeout=3)
    auth, _body, _cookie, _err = request(args.url, "GET", INFO, sid=args.sid, timeout=3)
    up = [backend_up(u) for u in (args.metrics or "").split(",") if u]
    print(json.dumps({"t": round(time.time(), 3), "anon": anon, "auth": auth, "backend_up": up}))
    return 0


def cmd_summary(args):
    with open(args.file) as fh:
        records = [json.loads(line) for line in fh if line.startswith('{"type": "req"')]
    print(json.dumps(summarize(records)))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("login")
    p.add_argument("url")
    p.add_argument("count", type=int)
    p.add_argument("prefix")
    p = sub.add_parser("run")
    p.add_argument("url")
    p.add_argument("--sids", required=True, type=lambda v: [s for s in v.split(",") if s])
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--stop-file")
    p.add_argument("--timeout", type=float, default=5.0)
    p = sub.add_parser("check")
    p.add_argument("urls")
    p.add_argument("--sids", required=True, type=lambda v: [s for s in v.split(",") if s])
    p = sub.add_parser("logout")
    p.add_argument("url")
    p.add_argument("--sid", required=True)
    p = sub.add_parser("probe")
    p.add_argument("url")
    p.add_argument("--sid", required=True)
    p.add_argument("--metrics")
    p = sub.add_parser("summary")
    p.add_argument("file")
    args = parser.parse_args(argv)
    if args.cmd == "run" and not 0 < args.rate <= 200:
        parser.error("--rate must be in (0, 200]")
    if args.cmd == "run" and not 0 < args.max_seconds <= 1800:
        parser.error("--max-seconds must be in (0, 1800]")
    return {
        "login": cmd_login,
        "run": cmd_run,
        "check": cmd_check,
        "logout": cmd_logout,
        "probe": cmd_probe,
        "summary": cmd_summary,
    }[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
