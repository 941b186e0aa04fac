"""Odoo stand-in for the end-to-end tests: a small WSGI app that keeps its sessions
through the dkn_auth client (addons/dkn_auth/client, copied into the image as
``dkn_client``) and the injected sidecar, with the calls Odoo's session store makes:

- ``POST /web/login`` (form or JSON ``login``): a new anonymous session is saved
  create-only (Odoo's first request), then rotated to a fresh sid carrying the uid
  (Odoo's login: ``session.rotate``), with the logged-in TTL (``DKN_AUTH_EXPIRY``);
- ``GET /web/session/get_session_info``: the session is read (``store.get``), refused
  with 401 without a uid, and one key is saved with a partial update (``PATCH``), as a
  request that touches the session does;
- ``POST /web/session/logout``: rotated to an anonymous session (Odoo's logout), the old
  sid is tombstoned;
- ``GET /web/webclient/version_info``: needs no session (``auth="none"`` in Odoo), so it
  answers while the shared backend is down;
- ``GET /standin/env``: the ``DKN_AUTH_*`` variables this container received;
- ``GET /healthz``: the readiness probe: 200 when the sidecar's ``/readyz`` answers 200
  (what that means is the sidecar's business), 503 once SIGTERM arrived.

SIGTERM, as a real app behind a Service: the pod keeps serving its in-flight and new
requests for ``STANDIN_SIGTERM_GRACE`` seconds (default 5: endpoints and kube-proxy rules
need a moment to drop the pod), then stops accepting, finishes what is in flight and exits.

The sid travels in the ``session_id`` cookie, as with Odoo. Answers are JSON and name the
pod, so the tests can tell which replica answered.
"""

import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from http.cookies import SimpleCookie
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from dkn_client import Client, SidecarError, load_settings

POD = os.environ.get("POD_NAME") or socket.gethostname()
SETTINGS = load_settings()
CLIENT = Client(SETTINGS)
# Odoo 18+ sids: 84 URL-safe base64 characters (the first 42 identify the device).
SID_BYTES = 63
TERMINATING = threading.Event()


def new_sid():
    return secrets.token_urlsafe(SID_BYTES)


def answer(start_response, status, body, cookie=None):
    payload = json.dumps(dict(body, pod=POD)).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    if cookie is not None:
        headers.append(("Set-Cookie", f"session_id={cookie}; Path=/; HttpOnly; SameSite=Lax"))
    start_response(status, headers)
    return [payload]


def read_body(environ):
    try:
        size = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        size = 0
    raw = environ["wsgi.input"].read(size) if size else b""
    if environ.get("CONTENT_TYPE", "").startswith("application/json"):
        try:
            value = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return {k: v[0] for k, v in parse_qs(raw.decode()).items()}


def cookie_sid(environ):
    jar = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    return jar["session_id"].value if "session_id" in jar else None


def login(environ, start_response):
    name = read_body(environ).get("login") or ""
    if not name:
        return answer(start_response, "400 Bad Request", {"error": "login required"})
    # First request of a visitor: an anonymous session, written create-only.
    anonymous = new_sid()
    CLIENT.put(anonymous, {"context": {"lang": "en_US"}, "uid": None}, ttl=SETTINGS.anonymous_expiry, create_only=True)
    # Login: one atomic rotation to a new sid that carries the user (as Odoo's rotate).
    sid = new_sid()
    uid = 2 + sum(name.encode()) % 1000
    data = {
        "context": {"lang": "en_US", "tz": "UTC"},
        "uid": uid,
        "login": name,
        "session_token": secrets.token_hex(32),
        "create_time": time.time(),
    }
    CLIENT.rotate(anonymous, sid, data=data, ttl=SETTINGS.expiry)
    return answer(start_response, "200 OK", {"uid": uid, "login": name, "sid": sid}, cookie=sid)


def session_info(environ, start_response):
    sid = cookie_sid(environ)
    record = CLIENT.get(sid) if sid else None
    if record is None or not record.data.get("uid"):
        return answer(start_response, "401 Unauthorized", {"error": "session expired"})
    # An authenticated request that changes one key saves only that key (PATCH).
    CLIENT.patch(sid, set_={"last_pod": POD}, ttl=SETTINGS.expiry)
    return answer(
        start_response,
        "200 OK",
        {"uid": record.data["uid"], "login": record.data.get("login"), "ttl": record.ttl},
    )


def logout(environ, start_response):
    sid = cookie_sid(environ)
    if not sid:
        return answer(start_response, "400 Bad Request", {"error": "no session"})
    anonymous = new_sid()
    # Logout: rotate to an anonymous session; the old sid is deleted and tombstoned.
    CLIENT.rotate(sid, anonymous, data={"context": {"lang": "en_US"}, "uid": None}, ttl=SETTINGS.anonymous_expiry)
    return answer(start_response, "200 OK", {"logged_out": True}, cookie=anonymous)


def env_info(environ, start_response):
    env = {k: v for k, v in os.environ.items() if k.startswith("DKN_AUTH_")}
    return answer(start_response, "200 OK", {"env": env})


def version_info(environ, start_response):
    return answer(start_response, "200 OK", {"server_version": "stand-in", "server_serie": "18.0"})


def healthz(environ, start_response):
    ok = CLIENT.ready() and not TERMINATING.is_set()
    return answer(start_response, "200 OK" if ok else "503 Service Unavailable", {"sidecar_ready": ok})


ROUTES = {
    ("POST", "/web/login"): login,
    ("GET", "/web/session/get_session_info"): session_info,
    ("POST", "/web/session/logout"): logout,
    ("GET", "/web/webclient/version_info"): version_info,
    ("GET", "/standin/env"): env_info,
    ("GET", "/healthz"): healthz,
}


def application(environ, start_response):
    handler = ROUTES.get((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
    if handler is None:
        return answer(start_response, "404 Not Found", {"error": "no route"})
    try:
        return handler(environ, start_response)
    except (SidecarError, OSError, ValueError) as exc:  # the test wants the reason, not a bare 500
        status = getattr(exc, "status", 0)
        # As dkn_auth's WSGI wrapper: a store outage is a 503.
        code = "503 Service Unavailable" if status == 0 or status >= 500 else "500 Internal Server Error"
        return answer(start_response, code, {"error": f"{type(exc).__name__}: {exc}"})


class Server(ThreadingMixIn, WSGIServer):
    # Not daemon threads: server_close() waits for the requests in flight.
    daemon_threads = False
    block_on_close = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def main():
    port = int(os.environ.get("STANDIN_PORT", "8069"))
    sys.stderr.write(f"odoo stand-in on :{port}, sidecar {SETTINGS.describe()}\n")
    grace = float(os.environ.get("STANDIN_SIGTERM_GRACE", "5"))
    with make_server("0.0.0.0", port, application, server_class=Server, handler_class=QuietHandler) as httpd:

        def on_sigterm(_signum, _frame):
            if TERMINATING.is_set():
                return
            TERMINATING.set()
            sys.stderr.write(f"SIGTERM: serving {grace:g} s more, then exiting\n")
            # shutdown() waits for serve_forever() to return: never call it from its thread.
            threading.Timer(grace, httpd.shutdown).start()

        signal.signal(signal.SIGTERM, on_sigterm)
        httpd.serve_forever()
        sys.stderr.write("stopped accepting; finishing the requests in flight\n")
    sys.stderr.write("exiting\n")


if __name__ == "__main__":
    main()
