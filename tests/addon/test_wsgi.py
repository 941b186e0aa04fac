"""The WSGI wrapper alone: pass-through when the store is fine, 503 when it failed."""

import pytest

pytest.importorskip("werkzeug")

from dkn_auth.odoo_glue import wsgi  # noqa: E402


def run(app):
    out = {}

    def start_response(status, headers, exc_info=None):
        out["status"], out["headers"] = status, headers
        return out.setdefault("written", []).append

    body = b"".join(wsgi.wrap(app)(None, {}, start_response))
    return out, body


def test_pass_through():
    def app(self, environ, start_response):
        start_response("201 Created", [("X-A", "1")])
        return [b"ok"]

    out, body = run(app)
    assert out["status"] == "201 Created" and body == b"ok"


def test_lazy_start_response_and_write():
    def app(self, environ, start_response):
        def gen():
            write = start_response("200 OK", [])
            write(b"early ")
            yield b"late"

        return gen()

    out, body = run(app)
    assert out["status"] == "200 OK" and body == b"late" and out["written"] == [b"early "]


def test_failure_replaces_the_response_and_closes_it():
    closed = []

    class Body(list):
        def close(self):
            closed.append(True)

    def app(self, environ, start_response):
        wsgi.mark_unavailable("sidecar down")
        start_response("200 OK", [("Content-Type", "application/json")])
        return Body([b'{"error": "Odoo Server Error"}'])

    out, body = run(app)
    assert out["status"] == "503 Service Unavailable" and body == wsgi.BODY and closed
    assert wsgi.failed() is None  # the next request starts clean


def test_failure_escaping_as_exception():
    def app(self, environ, start_response):
        wsgi.mark_unavailable("sidecar down")
        raise RuntimeError("Odoo 14/15 let it escape")

    out, body = run(app)
    assert out["status"].startswith("503")


def test_other_exceptions_propagate():
    def app(self, environ, start_response):
        raise KeyError("not ours")

    with pytest.raises(KeyError):
        run(app)
