# ruff: noqa: F811 - the fixtures are imported from test_glue
"""Issue 11: concurrent requests of one browser through the fake Odoo, real sidecar.

- Odoo 19 soft rotation: two requests that soft-rotate the same sid at once end
  on one new session (the loser follows the winner, cookie included).
- Same-key writes: two requests that change the same key both land, in order,
  through Odoo's own retry loop (16+); 14/15 have none (last writer wins).
"""

import logging
import threading
import time

import pytest

import fake_odoo
from test_glue import call, driver_sidecar, odoo, raw, store, versions  # noqa: F401,F811 - fixtures

HOURS_4 = 4 * 3600


@pytest.fixture(autouse=True)
def backend_up(driver_sidecar):
    """Earlier suites stop and restart the shared Redis: wait until it answers again."""
    import urllib.error
    import urllib.request

    def answers(path):
        try:
            with urllib.request.urlopen(f"{driver_sidecar.url}{path}", timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code == 404
        except OSError:
            return False

    # Pooled connections to the old Redis process fail once each: use them all up.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        results = []
        threads = [
            threading.Thread(target=lambda out=results: out.append(answers(f"/v1/sessions/{'a' * 40}")))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if answers("/readyz?backend=1") and all(results):
            return
        time.sleep(0.1)
    raise AssertionError("the sidecar's backend does not answer")


def _logged_in(http, **extra):
    s = store(http)
    session = s.new()
    # Stored with core's default keys, as after a first request.
    session.update(
        {**fake_odoo.default_session(http.major), "uid": 2, "login": "admin", "db": "db1", **extra}
    )
    session["session_token"] = fake_odoo.compute_session_token(session, http.fake_env)
    s.save(session)
    return session.sid


def _run_together(http, handlers, sid):
    out = [None] * len(handlers)

    def run(i):
        out[i] = call(http, handlers[i], sid=sid)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(handlers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return out


@versions(19)
def test_19_concurrent_soft_rotations_end_on_one_session(odoo, monkeypatch):
    old = _logged_in(odoo, create_time=time.time() - HOURS_4)
    client = store(odoo).client
    loaded = threading.Barrier(2, timeout=10)
    checked = threading.Barrier(2, timeout=10)
    real_rotate = client.rotate
    rotations = []

    def rotate(sid, new_sid, **kw):
        # Both requests have passed core's "already rotated?" read: only the
        # sidecar can tell the second rotation from the first now.
        rotations.append(new_sid)
        checked.wait()
        return real_rotate(sid, new_sid, **kw)

    monkeypatch.setattr(client, "rotate", rotate)

    def handler(key):
        def run(session):
            loaded.wait()
            session[key] = 1  # each request's own change
            return key

        return run

    a, b = _run_together(odoo, [handler("from_a"), handler("from_b")], old)
    assert len(rotations) == 2, ("both requests rotated", a, b, odoo.errors)
    assert a["status"] == b["status"] == "200 OK", (a, b, odoo.errors)
    new = a["json"]["sid"]
    assert b["json"]["sid"] == new, "the request that lost the race is on the winner's sid"
    assert a["headers"]["Set-Cookie"].startswith(f"session_id={new};")
    assert b["headers"]["Set-Cookie"].startswith(f"session_id={new};")
    assert new != old and new[:42] == old[:42]
    live = [sid for sid in rotations if raw(odoo, sid) is not None]
    assert live == [new], "exactly one new session lives"
    record = raw(odoo, new)
    assert record.ttl > 600000
    assert record.data["from_a"] == record.data["from_b"] == 1, "the loser's change is carried over"
    session = store(odoo).get(new)
    assert record.data["session_token"] == fake_odoo.compute_session_token(session, odoo.fake_env)
    old_rec = raw(odoo, old)
    assert old_rec.data["next_sid"] == new and old_rec.ttl <= 120
    # The next request on the new cookie is an ordinary one (no rotation).
    c = call(odoo, lambda s: s["uid"], sid=new)
    assert c["json"] == {"sid": new, "result": 2}


def _counter_handlers(n):
    loaded = threading.Barrier(n, timeout=10)
    attempts = []

    def handler(session):
        first = len([a for a in attempts if a is threading.current_thread()]) == 0
        attempts.append(threading.current_thread())
        if first:
            loaded.wait()  # every request has loaded the session before any saves
        session["counter"] = session.get("counter", 0) + 1
        return session["counter"]

    return [handler] * n, attempts


@versions(16, 17, 18, 19)
def test_same_key_writes_are_retried_by_odoos_loop(odoo, caplog):
    sid = _logged_in(odoo, create_time=time.time(), counter=0, other="x")
    handlers, attempts = _counter_handlers(2)
    with caplog.at_level(logging.INFO, logger="odoo.addons.dkn_auth"):
        a, b = _run_together(odoo, handlers, sid)
    assert a["status"] == b["status"] == "200 OK", (a, b, odoo.errors)
    assert sorted([a["json"]["result"], b["json"]["result"]]) == [1, 2]
    assert raw(odoo, sid).data["counter"] == 2, "both increments applied, in order"
    assert odoo.retries == ["SERIALIZATION_FAILURE"], "one request re-run by Odoo's retry loop"
    assert len(attempts) == 3
    assert "changed meanwhile, the request is retried" in caplog.text
    assert not odoo.errors


@versions(16, 19)
def test_different_keys_still_merge_without_retry(odoo):
    sid = _logged_in(odoo, create_time=time.time())
    loaded = threading.Barrier(2, timeout=10)

    def handler(key):
        def run(session):
            loaded.wait()
            session[key] = key
            return key

        return run

    _run_together(odoo, [handler("a"), handler("b")], sid)
    data = raw(odoo, sid).data
    assert data["a"] == "a" and data["b"] == "b"
    assert odoo.retries == []


@versions(14, 15)
def test_same_key_writes_on_14_15_last_writer_wins(odoo, caplog):
    """14/15 save the session after the request, outside any retry loop: the
    conflict is logged and this request's value is written (as before)."""
    sid = _logged_in(odoo, counter=0)
    handlers, _attempts = _counter_handlers(2)
    with caplog.at_level(logging.WARNING, logger="odoo.addons.dkn_auth"):
        a, b = _run_together(odoo, handlers, sid)
    assert a["status"] == b["status"] == "200 OK"
    assert raw(odoo, sid).data["counter"] == 1
    assert "no retry loop here" in caplog.text


@versions(18)
def test_retry_gives_up_after_odoos_tries(odoo, monkeypatch):
    """A key that keeps changing: Odoo's loop re-runs 5 times, then the error
    is the request's (a 500 or JSON error, as for any serialization failure)."""
    sid = _logged_in(odoo, counter=0)
    client = store(odoo).client
    real_patch = client.patch

    def patch(s, **kw):
        if kw.get("expect"):
            real_patch(s, set_={"counter": time.monotonic()})  # someone else, every time
        return real_patch(s, **kw)

    monkeypatch.setattr(client, "patch", patch)
    r = call(odoo, lambda s: s.__setitem__("counter", 1), sid=sid)
    assert r["status"].startswith("500")
    assert len(odoo.retries) == fake_odoo.MAX_TRIES_ON_CONCURRENCY_FAILURE - 1
    import psycopg2.errors

    assert isinstance(odoo.errors[-1], psycopg2.errors.SerializationFailure)


@pytest.mark.parametrize("odoo", [18], indirect=True)
def test_no_conflict_when_key_unchanged(odoo):
    sid = _logged_in(odoo, counter=5)
    r = call(odoo, lambda s: s.__setitem__("counter", 6), sid=sid)
    assert r["status"] == "200 OK"
    assert raw(odoo, sid).data["counter"] == 6
    assert odoo.retries == []
