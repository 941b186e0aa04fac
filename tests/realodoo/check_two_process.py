#!/usr/bin/env python3
"""Two-process session checks against real Odoo (16 to 19).

Local tool, kept outside the repository. Needs only the standard library.
Process A and B are two Odoo servers on the same database with separate
--data-dir. The throwaway addon dkn_probe (test_addons/) must be installed in
the database for the concurrency checks.

Checks (each PASS/FAIL/SKIP with details):
  1 shared_login     login on A, the same cookie is valid on B
  2 logout_seen      logout (/web/session/destroy) on B, A no longer accepts the cookie
  3 revoke_device    Odoo 18+: session S1 made on A, admin session S2 revokes S1's device
                     through B (res.device.revoke + identity check); S1 dead on A and B
  4 concurrent_keys  slow request on A (sleep 1 s, sets a) while a quick request on B
                     (4a) or A (4b) sets b; both changes must be read back on A and B
  5 logout_race      slow request on A changing the session while B (5a) or A (5b)
                     logs out; the old cookie must stay dead afterwards (no resurrection)
  6 stop_a           stop A (--stop-a-cmd, run last), the session of check 1 still works on B
  7 form_login       HTML login form with CSRF token on A, webclient page on B,
                     GET /web/session/logout on B, A sends the browser to /web/login
  8 autovacuum       trigger base.autovacuum_job on A (vacuum(max_lifetime=...)); no
                     "_gc_sessions" failure in A's log (--log-a), session still alive
  10 websocket       session made on B opens a bus websocket on A (--ws-a) and subscribes;
                     logout on B closes it with 4001 SESSION_EXPIRED on the next message
  9 sidecar_restart  --sidecar-stop-cmd: A answers 503 for a session request (no
                     silent fallback) and keeps the cookie; --sidecar-start-cmd: the
                     session is still there (needs a persistent backend: Redis/PostgreSQL)
  11 counter_race    one session; per round, two slow read-modify-writes of the same key
                     (/dkn_probe/slow_incr: read counter, sleep, write counter+1) at once,
                     one on A and one on B: the counter must end at +2 every round (the
                     second save refused, re-run by Odoo's retry loop), no 5xx/RPC error;
                     retries counted by the probe (runs - 1) and in the logs (--log-a/-b)
  11c counter_race_control  only when named in --only: both requests on A, on a store
                     without the check (stock Odoo); PASS when increments WERE lost

Exit status: 0 when every check that ran passed, 1 otherwise, 2 on usage errors.
"""

import argparse
import base64
import http.client
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

SESSION_EXPIRED_CODE = 100


class RpcError(Exception):
    def __init__(self, url, error):
        self.url = url
        self.error = error
        data = error.get("data") or {}
        self.name = data.get("name", "")
        self.code = error.get("code")
        super().__init__(f"{url}: {error.get('message')} ({self.name}) {data.get('message', '')}")

    @property
    def expired(self):
        return self.code == SESSION_EXPIRED_CODE or "SessionExpired" in self.name


class Browser:
    """One user agent: one session_id cookie, shared by A and B as a browser
    shares cookies across ports of one host (and pods behind one hostname)."""

    _counter = 0

    def __init__(self, name, timeout=30):
        self.name = name
        self.sid = None
        self.timeout = timeout
        self.lock = threading.Lock()

    def call(self, base, path, params=None):
        Browser._counter += 1
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "method": "call",
                "params": params or {},
                "id": Browser._counter,
            }
        ).encode()
        req = urllib.request.Request(base + path, data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("User-Agent", f"Mozilla/5.0 (X11; Linux x86_64) dkn-check/{self.name}")
        with self.lock:
            sid = self.sid
        if sid:
            req.add_header("Cookie", f"session_id={sid}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                self._take_cookie(resp.headers.get_all("Set-Cookie") or [])
        except urllib.error.HTTPError as exc:
            text = exc.read()[:500]
            raise RpcError(
                base + path,
                {
                    "message": f"HTTP {exc.code}",
                    "data": {"message": text.decode(errors="replace")},
                },
            ) from exc
        payload = json.loads(raw)
        if "error" in payload:
            raise RpcError(base + path, payload["error"])
        return payload.get("result")

    def _take_cookie(self, headers):
        for header in headers:
            match = re.match(r"\s*session_id=([^;]*)", header)
            if match:
                with self.lock:
                    self.sid = match.group(1) or None

    def http(self, method, url, form=None):
        """Plain HTTP request without following redirects: (status, headers, body)."""
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        headers = {"User-Agent": f"Mozilla/5.0 (X11; Linux x86_64) dkn-check/{self.name}"}
        with self.lock:
            if self.sid:
                headers["Cookie"] = f"session_id={self.sid}"
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self._take_cookie(resp.headers.get_all("Set-Cookie") or [])
            return resp.status, resp.headers, data.decode(errors="replace")
        finally:
            conn.close()

    def login(self, base, db, login, password):
        info = self.call(
            base,
            "/web/session/authenticate",
            {"db": db, "login": login, "password": password},
        )
        if not info or not info.get("uid"):
            raise RuntimeError(f"login as {login} on {base} failed: {info!r}")
        return info

    def whoami(self, base):
        """uid the server sees for our cookie, or None when the session is dead."""
        try:
            return self.call(base, "/web/session/get_session_info")["uid"]
        except RpcError as exc:
            if exc.expired:
                return None
            raise

    def call_kw(self, base, model, method, args, kwargs=None):
        return self.call(
            base,
            f"/web/dataset/call_kw/{model}/{method}",
            {"model": model, "method": method, "args": args, "kwargs": kwargs or {}},
        )


class MiniWebsocket:
    """Just enough RFC 6455 to talk to Odoo's /websocket (no browser needed)."""

    def __init__(self, base, sid, timeout=5):
        parts = urllib.parse.urlsplit(base)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        # No User-Agent on purpose: Odoo 18 closes browsers of another worker
        # version at once (OUTDATED_VERSION) but lets non-browser clients in.
        request = (
            f"GET /websocket HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {base}\r\nCookie: session_id={sid}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        head, _, self.buffer = head.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        self.new_sid = None
        for line in lines[1:]:
            match = re.match(r"(?i)set-cookie:\s*session_id=([^;]*)", line)
            if match:
                self.new_sid = match.group(1)

    def send_json(self, obj):
        payload = json.dumps(obj).encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        else:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket closed without a close frame")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def next_frame(self, timeout):
        """(opcode, payload) of the next frame, or None when nothing came in time."""
        self.sock.settimeout(timeout)
        try:
            first, second = self._read(2)
        except TimeoutError:
            return None
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8))[0]
        return first & 0x0F, self._read(length)

    def close_code_within(self, timeout):
        """Close code received within ``timeout`` seconds (None: still open)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.next_frame(max(0.05, deadline - time.monotonic()))
            if frame is None:
                return None
            opcode, payload = frame
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def server_major(base):
    info = Browser("probe").call(base, "/web/webclient/version_info")
    return int(info["server_version_info"][0])


def is_up(base):
    try:
        server_major(base)
        return True
    except (OSError, RpcError):
        return False


class Checker:
    def __init__(self, args):
        self.a = args.a.rstrip("/")
        self.b = args.b.rstrip("/")
        self.db = args.db
        self.login_name = args.login
        self.password = args.password
        self.rounds = args.rounds
        self.stop_a_cmd = args.stop_a_cmd
        self.log_a = args.log_a
        self.ws_a = (args.ws_a or args.a).rstrip("/")
        self.sidecar_stop_cmd = args.sidecar_stop_cmd
        self.sidecar_start_cmd = args.sidecar_start_cmd
        self.log_b = args.log_b
        self.counter_rounds = args.counter_rounds
        self.counter_delay = args.counter_delay
        self.results = []
        self.major = server_major(self.a)
        major_b = server_major(self.b)
        if major_b != self.major:
            raise SystemExit(f"A runs Odoo {self.major}, B runs Odoo {major_b}")

    def record(self, name, status, detail):
        self.results.append({"check": name, "status": status, "detail": detail})
        print(f"[{status:4}] {name}: {detail}", flush=True)

    def new_session(self, name, base=None):
        browser = Browser(name)
        browser.login(base or self.a, self.db, self.login_name, self.password)
        return browser

    def check_shared_login(self):
        br = self.new_session("shared_login")
        sid = br.sid
        uid_a = br.whoami(self.a)
        uid_b = br.whoami(self.b)
        ok = uid_a is not None and uid_b == uid_a and br.sid == sid
        self.record(
            "1 shared_login",
            "PASS" if ok else "FAIL",
            f"sid len {len(sid)}; uid on A={uid_a}, on B={uid_b}; cookie after B {'unchanged' if br.sid == sid else 'replaced'}",
        )
        self.shared_session = Browser("stop_a")
        self.shared_session.sid = sid if ok else None
        return ok

    def check_logout_seen(self):
        br = self.new_session("logout_seen")
        sid = br.sid
        before_b = br.whoami(self.b)
        try:
            br.call(self.b, "/web/session/destroy")
            destroy = "destroy on B ok"
        except RpcError as exc:
            destroy = f"destroy on B failed: {exc}"
        # Ask with the original cookie: a browser that missed the new cookie still sends it.
        old = Browser("logout_seen_old")
        old.sid = sid
        after_a = old.whoami(self.a)
        after_b = Browser("x")
        after_b.sid = sid
        after_b = after_b.whoami(self.b)
        ok = before_b is not None and after_a is None and after_b is None
        self.record(
            "2 logout_seen",
            "PASS" if ok else "FAIL",
            f"before: uid on B={before_b}; {destroy}; after: old cookie uid on A={after_a}, on B={after_b}",
        )

    def check_revoke_device(self):
        if self.major < 18:
            self.record("3 revoke_device", "SKIP", f"Odoo {self.major} has no res.device")
            return
        victim = self.new_session("revoke_victim")
        victim_sid = victim.sid
        # An authenticated request writes the device log (check_session -> _update_device).
        v_a = victim.whoami(self.a)
        v_b = victim.whoami(self.b)
        admin = self.new_session("revoke_admin", base=self.b)
        ident = victim_sid[:42]
        devices = admin.call_kw(
            self.b,
            "res.device",
            "search_read",
            [[["session_identifier", "=", ident]]],
            {"fields": ["id"]},
        )
        if not devices:
            self.record(
                "3 revoke_device",
                "FAIL",
                f"no res.device row for identifier {ident[:8]}... (uid on A={v_a}, B={v_b})",
            )
            return
        ids = [d["id"] for d in devices]
        action = admin.call_kw(self.b, "res.device", "revoke", [ids])
        revoke_note = "revoked without identity check"
        if isinstance(action, dict) and action.get("res_model") == "res.users.identitycheck":
            self.answer_identity_check(admin, self.b, action["res_id"])
            revoke_note = "revoked on B after identity check"
        old = Browser("revoke_old")
        old.sid = victim_sid
        after_a = old.whoami(self.a)
        after_b = old.whoami(self.b)
        admin_alive = admin.whoami(self.b)
        ok = (
            v_a is not None
            and v_b is not None
            and after_a is None
            and after_b is None
            and admin_alive is not None
        )
        self.record(
            "3 revoke_device",
            "PASS" if ok else "FAIL",
            f"victim made on A, uid before on A={v_a}, B={v_b}; {revoke_note} ({len(ids)} device rows); "
            f"victim after: uid on A={after_a}, on B={after_b}; revoking admin still uid={admin_alive}",
        )

    def answer_identity_check(self, admin, base, wizard):
        """``res.users.identitycheck``: 16-18 read the password from a field, 19+ from the context."""
        if self.major >= 19:
            admin.call_kw(
                base,
                "res.users.identitycheck",
                "run_check",
                [[wizard]],
                {"context": {"password": self.password}},
            )
        else:
            admin.call_kw(base, "res.users.identitycheck", "write", [[wizard], {"password": self.password}])
            admin.call_kw(base, "res.users.identitycheck", "run_check", [[wizard]])

    def _race(self, br, slow_base, quick_base, value_a, value_b):
        out = {}

        def slow():
            try:
                out["slow"] = br.call(slow_base, "/dkn_probe/slow_set_a", {"value": value_a, "delay": 1.0})
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                out["slow_error"] = str(exc)

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.3)
        try:
            br.call(quick_base, "/dkn_probe/set_b", {"value": value_b})
        except RpcError as exc:
            out["quick_error"] = str(exc)
        thread.join()
        return out

    def check_concurrent_keys(self, same_process):
        quick_base = self.a if same_process else self.b
        label = (
            "4b concurrent_keys(same process A)" if same_process else "4a concurrent_keys(A slow, B quick)"
        )
        lost = {"A": {"a": 0, "b": 0}, "B": {"a": 0, "b": 0}}
        errors = 0
        notes = []
        for i in range(self.rounds):
            br = self.new_session(f"race{i}")
            br.whoami(self.a)
            va, vb = f"a{i}-{time.time_ns()}", f"b{i}-{time.time_ns()}"
            out = self._race(br, self.a, quick_base, va, vb)
            if "slow_error" in out or "quick_error" in out:
                errors += 1
                notes.append(out.get("slow_error") or out.get("quick_error"))
            for name, base in (("A", self.a), ("B", self.b)):
                try:
                    seen = br.call(base, "/dkn_probe/get")
                except RpcError as exc:
                    seen = {}
                    notes.append(f"read on {name}: {exc}")
                lost[name]["a"] += seen.get("a") != va
                lost[name]["b"] += seen.get("b") != vb
        ok = errors == 0 and not any(v for side in lost.values() for v in side.values())
        detail = (
            f"{self.rounds} rounds; read back on A: a lost {lost['A']['a']}, b lost {lost['A']['b']}; "
            f"on B: a lost {lost['B']['a']}, b lost {lost['B']['b']}; failed writes {errors}"
        )
        if notes:
            detail += f"; first error: {notes[0][:160]}"
        self.record(label, "PASS" if ok else "FAIL", detail)

    def _log_offsets(self):
        offsets = {}
        for name, path in (("A", self.log_a), ("B", self.log_b)):
            if path:
                with open(path, "rb") as fh:
                    fh.seek(0, 2)
                    offsets[name] = (path, fh.tell())
        return offsets

    @staticmethod
    def _log_counts(offsets):
        """Retry lines written since ``offsets``: the addon's and Odoo's loop's."""
        addon = odoo = 0
        for path, offset in offsets.values():
            with open(path, "rb") as fh:
                fh.seek(offset)
                tail = fh.read().decode(errors="replace")
            addon += tail.count("changed meanwhile, the request is retried")
            odoo += len(re.findall(r"SERIALIZATION_FAILURE, \d+ tries left", tail))
        return addon, odoo

    def check_counter_race(self, control=False):
        """Two slow increments of one session key at once: +2 per round, or (the
        control, both on A, stock store) the increments a last writer loses."""
        label = (
            "11c counter_race_control(both on A, store without the check)"
            if control
            else "11 counter_race(A and B at once)"
        )
        bases = (self.a, self.a) if control else (self.a, self.b)
        br = self.new_session("counter")
        offsets = self._log_offsets()
        time.sleep(0.2)
        start = br.call(self.a, "/dkn_probe/get").get("counter") or 0
        first = start
        good = lost = retries = http5xx = rpc_errors = disorder = 0
        mismatch_b = 0
        notes = []
        t0 = time.monotonic()
        for i in range(self.counter_rounds):
            token = f"{os.getpid()}-{time.time_ns()}-{i}"
            barrier = threading.Barrier(2)
            out = [None, None]

            def fire(k, base, token=token, barrier=barrier, out=out):
                barrier.wait()
                try:
                    out[k] = br.call(
                        base,
                        "/dkn_probe/slow_incr",
                        {"token": f"{token}-{k}", "delay": self.counter_delay},
                    )
                except RpcError as exc:
                    out[k] = exc
                except OSError as exc:
                    out[k] = exc

            threads = [threading.Thread(target=fire, args=(k, base)) for k, base in enumerate(bases)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            afters = []
            for res in out:
                if isinstance(res, dict):
                    afters.append(res.get("after"))
                    retries += max(0, int(res.get("runs") or 1) - 1)
                elif isinstance(res, RpcError) and str(res.error.get("message", "")).startswith("HTTP 5"):
                    http5xx += 1
                    notes.append(str(res))
                else:
                    rpc_errors += 1
                    notes.append(str(res))
            seen = br.call(self.a, "/dkn_probe/get").get("counter") or 0
            if not control:
                seen_b = br.call(self.b, "/dkn_probe/get").get("counter") or 0
                mismatch_b += seen_b != seen
            if seen == start + 2:
                good += 1
            else:
                lost += max(0, start + 2 - seen)
            if sorted(a for a in afters if a is not None) != [start + 1, start + 2]:
                disorder += 1
            start = seen
        addon_lines, odoo_lines = self._log_counts(offsets) if offsets else (None, None)
        rounds = self.counter_rounds
        detail = (
            f"{rounds} rounds ({self.counter_delay} s each request, {time.monotonic() - t0:.0f} s): "
            f"counter {first} -> {start} (expected {first + 2 * rounds}), rounds at +2: {good}/{rounds}, "
            f"increments lost {lost}; retries (probe runs - 1) {retries}"
        )
        if offsets:
            detail += f", retry lines in the logs: addon {addon_lines}, Odoo {odoo_lines}"
        detail += (
            f"; HTTP 5xx {http5xx}, other errors {rpc_errors}, rounds not applied as +1 then +2: {disorder}"
        )
        if not control:
            detail += f"; B read another counter than A {mismatch_b}x"
        if notes:
            detail += f"; first error: {notes[0][:200]}"
        if control:
            ok = lost > 0 and http5xx == 0 and rpc_errors == 0
        else:
            ok = good == rounds and not (lost or http5xx or rpc_errors or disorder or mismatch_b)
        self.record(label, "PASS" if ok else "FAIL", detail)

    def check_logout_race(self, same_process):
        logout_base = self.a if same_process else self.b
        label = "5b logout_race(same process A)" if same_process else "5a logout_race(A slow, B logout)"
        resurrected = errors = 0
        notes = []
        for i in range(self.rounds):
            br = self.new_session(f"lrace{i}")
            sid = br.sid
            if br.whoami(logout_base) is None:
                errors += 1
                notes.append("session unknown to the logging-out process before the race")
                continue
            out = {}

            def slow(br=br, out=out, i=i):
                try:
                    out["slow"] = br.call(
                        self.a,
                        "/dkn_probe/slow_set_a",
                        {"value": f"late{i}", "delay": 1.0},
                    )
                except RpcError as exc:
                    out["slow_error"] = str(exc)

            thread = threading.Thread(target=slow)
            thread.start()
            time.sleep(0.3)
            other = Browser("lrace_logout")
            other.sid = sid
            try:
                other.call(logout_base, "/web/session/destroy")
            except RpcError as exc:
                notes.append(f"destroy: {exc}")
            thread.join()
            old = Browser("lrace_old")
            old.sid = sid
            if old.whoami(self.a) is not None or old.whoami(self.b) is not None:
                resurrected += 1
        ok = resurrected == 0 and errors == 0
        detail = (
            f"{self.rounds} rounds: old cookie valid again after logout {resurrected}, setup errors {errors}"
        )
        if notes:
            detail += f"; note: {notes[0][:160]}"
        self.record(label, "PASS" if ok else "FAIL", detail)

    def check_form_login(self):
        """The browser path: HTML login form with its CSRF token, webclient page
        on the other process, GET logout seen by the first one."""
        home = "/odoo" if self.major >= 18 else "/web"  # /odoo came with 18
        br = Browser("form_login")
        status, _h, page = br.http("GET", f"{self.a}/web/login")
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        if status != 200 or not match:
            self.record(
                "7 form_login",
                "FAIL",
                f"GET /web/login on A: HTTP {status}, csrf token {'found' if match else 'missing'}",
            )
            return
        status, headers, _ = br.http(
            "POST",
            f"{self.a}/web/login",
            {
                "login": self.login_name,
                "password": self.password,
                "csrf_token": match.group(1),
                "redirect": "",
            },
        )
        logged = status in (302, 303) and "/web/login" not in (headers.get("Location") or "")
        s_b, h_b, page_b = br.http("GET", f"{self.b}{home}")
        webclient_b = s_b == 200 and "session_info" in page_b
        logged_in_sid = br.sid
        s_logout, _h, _ = br.http("GET", f"{self.b}/web/session/logout")
        # Replay the cookie from before the logout: a copy kept by anyone must be dead too.
        old = Browser("form_login_old")
        old.sid = logged_in_sid
        s_a, h_a, _ = old.http("GET", f"{self.a}{home}")
        logged_out_a = s_a in (302, 303) and "/web/login" in (h_a.get("Location") or "")
        ok = logged and webclient_b and logged_out_a
        self.record(
            "7 form_login",
            "PASS" if ok else "FAIL",
            f"POST /web/login on A: HTTP {status} -> {headers.get('Location')}; GET {home} on B: HTTP {s_b}"
            f"{' webclient' if webclient_b else ' (no webclient: ' + str(h_b.get('Location')) + ')'}; "
            f"GET logout on B: HTTP {s_logout}; then {home} on A with the old cookie: HTTP {s_a} -> {h_a.get('Location')}",
        )

    def check_autovacuum(self):
        """Core's autovacuum calls session_store.vacuum(max_lifetime=...) through
        ir.http._gc_sessions; a failure there is only logged, so read the log."""
        admin = self.new_session("autovacuum")
        rows = admin.call_kw(
            self.a,
            "ir.model.data",
            "search_read",
            [[["module", "=", "base"], ["name", "=", "autovacuum_job"]]],
            {"fields": ["res_id"]},
        )
        if not rows:
            self.record("8 autovacuum", "FAIL", "base.autovacuum_job not found")
            return
        offset = None
        if self.log_a:
            with open(self.log_a, "rb") as fh:
                fh.seek(0, 2)
                offset = fh.tell()
        admin.call_kw(self.a, "ir.cron", "method_direct_trigger", [[rows[0]["res_id"]]])
        # The vacuuming process must keep live sessions; B is reported for information.
        alive = admin.whoami(self.a)
        alive_b = admin.whoami(self.b)
        if offset is None:
            self.record(
                "8 autovacuum",
                "PASS" if alive else "FAIL",
                f"triggered on A; log not checked (no --log-a); session uid on A={alive}, on B={alive_b}",
            )
            return
        time.sleep(0.5)
        with open(self.log_a, "rb") as fh:
            fh.seek(offset)
            tail = fh.read().decode(errors="replace")
        failed = [line for line in tail.splitlines() if "Failed" in line and "_gc_sessions" in line]
        ok = not failed and alive is not None
        self.record(
            "8 autovacuum",
            "PASS" if ok else "FAIL",
            f"triggered on A; _gc_sessions failures in A's log: {len(failed)}; session uid on A={alive}, on B={alive_b}"
            + (f"; {failed[0][:200]}" if failed else ""),
        )

    def check_sidecar_restart(self):
        if not (self.sidecar_stop_cmd and self.sidecar_start_cmd):
            self.record(
                "9 sidecar_restart",
                "SKIP",
                "needs --sidecar-stop-cmd and --sidecar-start-cmd",
            )
            return
        br = self.new_session("sidecar_restart")
        before = br.whoami(self.b)
        sid = br.sid
        subprocess.run(self.sidecar_stop_cmd, shell=True, check=False)
        time.sleep(0.5)
        t0 = time.perf_counter()
        try:
            br.call(self.a, "/web/session/get_session_info")
            during = "HTTP 200 (store outage not visible!)"
        except RpcError as exc:
            during = str(exc.error.get("message"))
        except OSError as exc:
            during = f"connection error {exc}"
        outage_ms = (time.perf_counter() - t0) * 1000
        cookie_kept = br.sid == sid
        subprocess.run(self.sidecar_start_cmd, shell=True, check=False)
        deadline = time.monotonic() + 30
        after = None
        while time.monotonic() < deadline:
            try:
                # Asked on A: with one sidecar per process, A's is the one restarted.
                after = br.whoami(self.a)
                break
            except RpcError as exc:
                if "503" not in str(exc.error.get("message")):
                    raise
                time.sleep(0.5)
        ok = before is not None and during.startswith("HTTP 503") and cookie_kept and after == before
        self.record(
            "9 sidecar_restart",
            "PASS" if ok else "FAIL",
            f"uid before={before}; sidecar stopped: A answered {during} in {outage_ms:.0f} ms, cookie "
            f"{'kept' if cookie_kept else 'replaced'}; sidecar back: uid on A={after}",
        )

    def check_websocket(self):
        """The bus websocket re-reads the session from the store on every
        message: a logout on B must close A's websocket with 4001."""
        br = self.new_session("websocket", base=self.b)
        sid = br.sid
        ws = MiniWebsocket(self.ws_a, sid)
        try:
            if ws.status != 101:
                self.record(
                    "10 websocket",
                    "FAIL",
                    f"handshake on A ({self.ws_a}): HTTP {ws.status}",
                )
                return
            # A core store answers an unknown sid with an empty session under
            # the same sid, so the handshake alone proves nothing: ask A over HTTP.
            probe = Browser("websocket_probe")
            probe.sid = sid
            uid_a = probe.whoami(self.a)
            known = ws.new_sid in (None, sid) and uid_a is not None
            ws.send_json({"event_name": "subscribe", "data": {"channels": [], "last": 0}})
            early = ws.close_code_within(1.5)
            br.call(self.b, "/web/session/destroy")
            ws.send_json({"event_name": "subscribe", "data": {"channels": [], "last": 0}})
            late = None if early else ws.close_code_within(5)
        finally:
            ws.close()
        ok = known and early is None and late == 4001
        self.record(
            "10 websocket",
            "PASS" if ok else "FAIL",
            f"session made on B: uid on A={uid_a}, websocket cookie {'kept' if ws.new_sid in (None, sid) else 'replaced'}; "
            f"after subscribe: {'open' if early is None else f'closed {early}'}; after logout on B: "
            f"{'closed ' + str(late) + (' (SESSION_EXPIRED)' if late == 4001 else '') if late else 'still open'}",
        )

    def check_stop_a(self):
        if not self.stop_a_cmd:
            self.record("6 stop_a", "SKIP", "no --stop-a-cmd given")
            return
        try:
            br = getattr(self, "shared_session", None)
            if not br or not br.sid:
                br = self.new_session("stop_a")
            before_b = br.whoami(self.b)
        finally:
            # Asked to stop A: do it even when the set-up above failed.
            subprocess.run(self.stop_a_cmd, shell=True, check=False)
        deadline = time.monotonic() + 60
        while is_up(self.a) and time.monotonic() < deadline:
            time.sleep(0.5)
        a_down = not is_up(self.a)
        after_b = br.whoami(self.b)
        ok = a_down and before_b is not None and after_b == before_b
        self.record(
            "6 stop_a",
            "PASS" if ok else "FAIL",
            f"A {'stopped' if a_down else 'STILL UP'}; session of check 1: uid on B before={before_b}, after={after_b}",
        )

    def latency(self):
        br = self.new_session("latency")
        out = {}
        for name, base in (("A", self.a), ("B", self.b)):
            times = []
            for _ in range(30):
                t0 = time.perf_counter()
                try:
                    br.call(base, "/dkn_probe/get")
                except RpcError:
                    pass
                times.append((time.perf_counter() - t0) * 1000)
            out[name] = round(statistics.median(times), 1)
        self.record(
            "info latency",
            "INFO",
            f"p50 /dkn_probe/get (30 calls, same session): A {out['A']} ms, B {out['B']} ms",
        )

    def preflight(self):
        """One clear error instead of every check crashing the same way."""
        for name, base in (("A", self.a), ("B", self.b)):
            try:
                Browser(f"preflight{name}").login(base, self.db, self.login_name, self.password)
            except (RpcError, RuntimeError, OSError) as exc:
                print(
                    f"preflight: cannot log in on {name} ({base}): {exc}",
                    file=sys.stderr,
                    flush=True,
                )
                return False
        return True

    def run(self, only):
        print(f"Odoo {self.major}: A={self.a} B={self.b} db={self.db}", flush=True)
        if not self.preflight():
            self.record("preflight", "FAIL", "login failed, no check ran (A not stopped)")
            return False
        steps = [
            ("shared_login", self.check_shared_login),
            ("logout_seen", self.check_logout_seen),
            ("revoke_device", self.check_revoke_device),
            ("concurrent_keys", lambda: self.check_concurrent_keys(same_process=False)),
            ("concurrent_keys", lambda: self.check_concurrent_keys(same_process=True)),
            ("logout_race", lambda: self.check_logout_race(same_process=False)),
            ("logout_race", lambda: self.check_logout_race(same_process=True)),
            ("counter_race", self.check_counter_race),
            ("latency", self.latency),
            ("form_login", self.check_form_login),
            ("autovacuum", self.check_autovacuum),
            ("websocket", self.check_websocket),
            ("sidecar_restart", self.check_sidecar_restart),
            ("stop_a", self.check_stop_a),
        ]
        if only and "counter_race_control" in only:
            # Never by default: it passes when increments are LOST (stock store).
            steps.append(("counter_race_control", lambda: self.check_counter_race(control=True)))
        for name, step in steps:
            if only and name not in only:
                continue
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - a crashed check is a failed check
                self.record(name, "FAIL", f"check crashed: {type(exc).__name__}: {exc}")
        return all(r["status"] in ("PASS", "SKIP", "INFO") for r in self.results)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", required=True, help="base URL of process A, e.g. http://127.0.0.1:18069")
    parser.add_argument("--b", required=True, help="base URL of process B")
    parser.add_argument("--db", required=True)
    parser.add_argument("--login", default="admin")
    parser.add_argument("--password", default="admin")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stop-a-cmd", help="shell command that stops process A (run last)")
    parser.add_argument(
        "--ws-a",
        help="websocket base URL of A (prefork: its --gevent-port); default --a",
    )
    parser.add_argument("--log-a", help="Odoo log file of process A (read by the autovacuum check)")
    parser.add_argument("--log-b", help="Odoo log file of process B (retry lines of check 11)")
    parser.add_argument("--counter-rounds", type=int, default=10, help="rounds of check 11")
    parser.add_argument("--counter-delay", type=float, default=0.7, help="sleep of each increment (s)")
    parser.add_argument("--sidecar-stop-cmd", help="shell command that stops the sidecar (check 9)")
    parser.add_argument("--sidecar-start-cmd", help="shell command that starts it again and returns")
    parser.add_argument("--only", nargs="*", help="subset of checks to run")
    parser.add_argument("--json", help="write results to this file")
    args = parser.parse_args()
    checker = Checker(args)
    ok = checker.run(set(args.only or []))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "odoo": checker.major,
                    "a": checker.a,
                    "b": checker.b,
                    "results": checker.results,
                },
                fh,
                indent=2,
            )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
