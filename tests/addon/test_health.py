"""``/web/health`` follows this pod's sidecar, and the start-up warning (real sidecar, fake Odoo).

The addon is imported the way Odoo imports a server-wide module
(``odoo.addons.dkn_auth``), so its controller goes through each version's
routing rules (fake_odoo.py) into the no-database routing map.
"""

import importlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import fake_odoo
from conftest import ROOT, Sidecar

pytest.importorskip("werkzeug")

HEALTH_VERSIONS = [15, 16, 17, 18, 19]
CACHE = 1.0  # odoo_glue.health.CACHE_SECONDS


@pytest.fixture
def serve(monkeypatch):
    """``serve(major, **settings)``: fake Odoo ``major`` with dkn_auth loaded server-wide."""

    def load(major, **env):
        for key in list(os.environ):
            if key.startswith("DKN_AUTH_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        http = fake_odoo.build(major)
        importlib.import_module("odoo.addons.dkn_auth")
        http.major = major
        return http

    yield load
    fake_odoo.remove()


def get(http, path="/web/health", query="", cookie=None):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "wsgi.input": io.BytesIO()}
    if cookie:
        environ["HTTP_COOKIE"] = f"session_id={cookie}"
    out = {}

    def start_response(status, headers, exc_info=None):
        out["status"], out["headers"] = int(status.split()[0]), dict(headers)

    out["body"] = b"".join(http.root(environ, start_response))
    try:
        out["json"] = json.loads(out["body"])
    except ValueError:
        out["json"] = None
    return out


def check_of(http):
    return sys.modules["odoo.addons.dkn_auth.odoo_glue"].health_check()


def wait_cache():
    time.sleep(CACHE + 0.1)


@pytest.mark.parametrize("major", HEALTH_VERSIONS)
def test_health_follows_the_sidecar(serve, own_sidecar, major):
    http = serve(major, DKN_AUTH_URL=own_sidecar.url)
    up = get(http)
    assert up["status"] == 200 and up["json"] == {"status": "pass"}  # core's answer
    assert up["headers"]["Cache-Control"] == "no-store"

    own_sidecar.stop()
    wait_cache()
    down = get(http)
    assert down["status"] == 503, down
    assert down["headers"]["Content-Type"] == "application/json"
    assert down["headers"]["Cache-Control"] == "no-store"
    body = down["json"]
    assert body["status"] == "fail" and body["sidecar"] == own_sidecar.url
    assert body["setting"] == "DKN_AUTH_URL"
    assert f"cannot reach the sidecar at {own_sidecar.url}" in body["error"]
    assert "refused" in body["error"].lower()

    own_sidecar.start()  # same port
    wait_cache()
    again = get(http)
    assert again["status"] == 200 and again["json"] == {"status": "pass"}


@pytest.mark.parametrize("major", [16, 18, 19])
def test_core_parameters_pass_through(serve, memory_sidecar, major):
    http = serve(major, DKN_AUTH_URL=memory_sidecar.url)
    ok = get(http, query="db_server_status=1")
    assert ok["status"] == 200 and ok["json"] == {"status": "pass", "db_server_status": True}
    http.fake_db_up = False
    failing = get(http, query="db_server_status=1")
    assert failing["status"] == 500 and failing["json"]["db_server_status"] is False  # core's own 500


def test_an_early_17_ignores_the_parameter_as_core_does(serve, memory_sidecar):
    http = serve(17, DKN_AUTH_URL=memory_sidecar.url)
    out = get(http, query="db_server_status=1")
    assert out["status"] == 200 and out["json"] == {"status": "pass"}
    assert any("ignoring args" in w for w in http.warnings)


@pytest.mark.parametrize("major", [15, 18])
def test_the_override_is_a_nodb_route_of_the_server_wide_module(serve, memory_sidecar, major):
    http = serve(major, DKN_AUTH_URL=memory_sidecar.url)
    get(http)
    endpoint, routing = http.root.nodb_routes["/web/health"]
    assert routing["auth"] == "none" and routing["save_session"] is False
    assert type(endpoint.__self__).__mro__[1].__module__ == "odoo.addons.dkn_auth.controllers.health"
    assert not http.warnings  # decorated again with @http.route(), as core requires
    assert get(http, "/web/login")["status"] == 200  # Home's other routes are kept


def test_without_dkn_auth_in_server_wide_modules_core_answers(serve, own_sidecar):
    http = serve(18, DKN_AUTH_URL=own_sidecar.url)
    sys.modules["odoo.conf"].server_wide_modules = ["base", "web"]
    own_sidecar.stop()
    assert get(http)["status"] == 200  # what the issue reported: core alone cannot tell


def test_odoo_14_has_no_health_route_and_keeps_working(serve, memory_sidecar):
    http = serve(14, DKN_AUTH_URL=memory_sidecar.url)
    assert "DknAuthHealth" not in vars(sys.modules["odoo.addons.dkn_auth.controllers.health"])
    assert get(http)["status"] != 503
    assert get(http, "/web/login")["status"] == 200


def test_a_backend_outage_does_not_fail_health_unless_readyz_does(serve, redis_sidecar, redis_server):
    """``/web/health`` takes the sidecar's ``/readyz`` as it is.

    The sidecar's ``/readyz`` means "up and configured" and stays 200 when the
    shared Redis/PostgreSQL is down (issue 8), so one backend outage does not
    take every pod out of the load balancer; sidecar builds from before that
    change answer 503 there, and ``/web/health`` then follows them.
    """
    http = serve(18, DKN_AUTH_URL=redis_sidecar.url)
    assert get(http)["status"] == 200
    redis_server.stop()
    try:
        wait_cache()
        readyz = check_of(http).client.transport.request("GET", "/readyz")[0]
        out = get(http)
        if readyz == 200:
            assert out["status"] == 200 and out["json"] == {"status": "pass"}
        else:
            assert readyz == 503 and out["status"] == 503
            assert "answered 503 on /readyz" in out["json"]["error"]
    finally:
        redis_server.start()


def test_one_readyz_call_per_second_per_process(serve, memory_sidecar):
    http = serve(18, DKN_AUTH_URL=memory_sidecar.url)
    check = check_of(http)
    before = check.calls
    for _ in range(50):
        assert get(http)["status"] == 200
    assert check.calls - before == 1
    wait_cache()
    get(http)
    assert check.calls - before == 2


def test_a_probe_storm_from_threads_makes_one_call(serve, own_sidecar):
    http = serve(18, DKN_AUTH_URL=own_sidecar.url)
    check = check_of(http)
    own_sidecar.stop()
    wait_cache()
    before = check.calls
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(get(http)["status"])) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [503] * 20 and check.calls - before == 1


def test_a_sidecar_that_hangs_fails_health_within_a_second(serve):
    # Accepts connections (the kernel's backlog) but never answers.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        http = serve(18, DKN_AUTH_URL=url, DKN_AUTH_TIMEOUT="10")
        wait_cache()  # the start-up check also waited for it
        started = time.monotonic()
        out = get(http)
        elapsed = time.monotonic() - started
    assert out["status"] == 503 and "did not answer in time" in out["json"]["error"]
    assert elapsed < 1.8, elapsed  # min(DKN_AUTH_TIMEOUT, 1 s), not 10 s


def test_unix_socket_address(serve, tmp_root):
    path = tmp_root / "health.sock"
    sc = Sidecar(["--driver", "memory"], tmp_root, unix_socket=path)
    try:
        http = serve(19, DKN_AUTH_SOCKET=str(path))
        assert get(http)["status"] == 200
        sc.stop()
        wait_cache()
        body = get(http)["json"]
        assert body["sidecar"] == f"unix:{path}" and body["setting"] == "DKN_AUTH_SOCKET"
    finally:
        sc.stop()


def test_a_bad_setting_fails_health(serve, memory_sidecar):
    http = serve(18, DKN_AUTH_URL=memory_sidecar.url, DKN_AUTH_EXPIRY="a week")
    out = get(http)
    assert out["status"] == 503 and "bad setting DKN_AUTH_EXPIRY" in out["json"]["error"]


def test_a_request_with_a_cookie_still_gets_the_store_503(serve, own_sidecar):
    http = serve(18, DKN_AUTH_URL=own_sidecar.url)
    sid = http.root.session_store.generate_key()
    own_sidecar.stop()
    out = get(http, cookie=sid)
    assert out["status"] == 503 and out["body"] == b"session store unavailable\n"


def test_a_forked_worker_checks_again(serve, own_sidecar):
    http = serve(18, DKN_AUTH_URL=own_sidecar.url)
    assert get(http)["status"] == 200  # cached in the "master"
    own_sidecar.stop()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the prefork worker
        code = 1
        try:
            os.close(r)
            os.write(w, str(get(http)["status"]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    child_status = os.read(r, 16)
    os.close(r)
    os.waitpid(pid, 0)
    assert child_status == b"503"
    assert get(http)["status"] == 200  # the parent's answer is still within its second


GEVENT_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import json, sys
import gevent
sys.path.insert(0, sys.argv[2])
from dkn_auth.client.config import Settings
from dkn_auth.odoo_glue.health import HealthCheck

check = HealthCheck(Settings(url=sys.argv[1]))
results = []
gevent.joinall([gevent.spawn(lambda: results.append(check.status()[0])) for _ in range(30)], raise_error=True)
print(json.dumps({"results": results, "calls": check.calls}))
"""


def test_gevent_greenlets_share_one_check(memory_sidecar):
    pytest.importorskip("gevent")
    out = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, memory_sidecar.url, str(ROOT / "addons")],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    answer = json.loads(out.stdout)
    assert answer == {"results": [True] * 30, "calls": 1}


# -- the start-up warning (issue 12) -----------------------------------------------


def warnings_of(caplog):
    return [
        r
        for r in caplog.records
        if r.name == "odoo.addons.dkn_auth"
        and r.levelno == logging.WARNING
        and "does not answer" in r.message
    ]


def test_start_up_warns_once_when_the_sidecar_is_down(serve, caplog, own_sidecar):
    url = own_sidecar.url
    own_sidecar.stop()
    caplog.set_level(logging.INFO, logger="odoo.addons.dkn_auth")
    serve(18, DKN_AUTH_URL=url)
    sys.modules["odoo.addons.dkn_auth"].post_load()  # the manifest hook: no second warning
    found = warnings_of(caplog)
    assert len(found) == 1, [r.message for r in caplog.records]
    message = found[0].getMessage()
    assert f"the sidecar at {url} (set by DKN_AUTH_URL) does not answer" in message
    assert "Connection refused" in message


def test_start_up_warning_names_the_socket_setting(serve, caplog, tmp_root):
    path = tmp_root / "absent.sock"
    caplog.set_level(logging.INFO, logger="odoo.addons.dkn_auth")
    serve(16, DKN_AUTH_SOCKET=str(path))
    (record,) = warnings_of(caplog)
    assert f"the sidecar at unix:{path} (set by DKN_AUTH_SOCKET) does not answer" in record.getMessage()


def test_no_start_up_warning_when_the_sidecar_answers(serve, caplog, memory_sidecar):
    caplog.set_level(logging.INFO, logger="odoo.addons.dkn_auth")
    serve(18, DKN_AUTH_URL=memory_sidecar.url)
    assert not warnings_of(caplog)
    assert any("sessions are kept by the sidecar" in r.getMessage() for r in caplog.records)
