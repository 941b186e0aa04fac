"""The Odoo glue against each version's session semantics (fake Odoo, real sidecar)."""

import datetime
import io
import json
import logging
import time

import pytest

import fake_odoo

VERSIONS = [14, 15, 16, 17, 18, 19]


@pytest.fixture(params=["memory", "redis"])
def driver_sidecar(request):
    return request.getfixturevalue(f"{request.param}_sidecar")


@pytest.fixture
def odoo(request, driver_sidecar, monkeypatch):
    major = request.param
    for key in list(__import__("os").environ):
        if key.startswith("DKN_AUTH_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DKN_AUTH_URL", driver_sidecar.url)
    http = fake_odoo.build(major)
    from dkn_auth import odoo_glue

    odoo_glue.uninstall_for_tests()
    odoo_glue.install()
    http.major = major
    yield http
    odoo_glue.uninstall_for_tests()
    fake_odoo.remove()


def versions(*majors):
    return pytest.mark.parametrize("odoo", majors or VERSIONS, indirect=True)


def store(http):
    return http.root.session_store


def raw(http, sid):
    return store(http).client.get(sid)


def call(http, handler=None, sid=None, json_route=False):
    environ = {
        "REQUEST_METHOD": "POST" if json_route else "GET",
        "PATH_INFO": "/",
        "wsgi.input": io.BytesIO(),
        "fake.json": json_route,
    }
    if sid:
        environ["HTTP_COOKIE"] = f"session_id={sid}"
    if handler:
        environ["fake.handler"] = handler
    out = {}

    def start_response(status, headers, exc_info=None):
        out["status"], out["headers"] = status, dict(headers)

    body = b"".join(http.root(environ, start_response))
    out["body"] = body
    out["json"] = json.loads(body) if out["headers"].get("Content-Type") == "application/json" else None
    return out


def login(session, uid=2):
    """What core's login does to a session, per version."""
    session["uid"] = uid
    session["login"] = "admin"
    session["db"] = "db1"
    if isinstance(session, dict):  # 14/15
        session.rotate = True
    else:
        session.should_rotate = True


def logout(session):
    for key in list(session):
        del session[key]
    session["uid"] = None
    if isinstance(session, dict):
        session.rotate = True
    else:
        session.should_rotate = True


# -- loading ------------------------------------------------------------------


@versions()
def test_installed_before_first_use_with_each_versions_key(odoo):
    s = store(odoo)
    assert type(s).__name__ == "DknSessionStore"
    assert s is store(odoo)  # computed once, cached like core
    key = s.generate_key()
    assert len(key) == (84 if odoo.major >= 18 else 40)
    assert s.is_valid_key(key) and not s.is_valid_key("../../etc/passwd")
    if odoo.major < 16:
        before = len(odoo.gc_calls)
        odoo.session_gc(s)
        assert len(odoo.gc_calls) == before  # random GC disabled
    from dkn_auth import odoo_glue

    assert odoo_glue.install() is type(s)  # idempotent


@versions(19)
def test_cached_property_is_named_on_19(odoo):
    import functools

    prop = vars(type(odoo.root))["session_store"]
    assert isinstance(prop, functools.cached_property) and prop.attrname == "session_store"


@versions(16, 18)
def test_replaces_a_store_already_cached(memory_sidecar, odoo):
    from dkn_auth import odoo_glue

    http = fake_odoo.build(odoo.major)
    http.root.session_store  # noqa: B018 - used before the addon loads
    odoo_glue.uninstall_for_tests()
    odoo_glue.install()
    assert type(http.root.session_store).__name__ == "DknSessionStore"


# -- store methods --------------------------------------------------------------


@versions()
def test_new_and_get_missing(odoo):
    s = store(odoo)
    fresh = s.new()
    assert not dict(fresh) or odoo.major < 16  # 14/15 sessions carry default keys
    sid = s.generate_key()
    got = s.get(sid)
    assert got.sid != sid and s.is_valid_key(got.sid)
    assert s.get("garbage").sid != "garbage"
    if odoo.major >= 16:
        assert got.is_new and fresh.is_new
    else:
        assert got.new and fresh.new


@versions(16, 18)
def test_unreadable_session_starts_fresh(odoo, monkeypatch, caplog):
    s = store(odoo)
    sid = s.generate_key()
    s.client.put(sid, {"uid": 2, "broken": 1}, create_only=True)
    real = s.session_class

    def picky(data, sid, new=False):
        if "broken" in data:
            raise ValueError("cannot rebuild this session")
        return real(data, sid, new)

    monkeypatch.setattr(s, "session_class", picky)
    with caplog.at_level(logging.WARNING):
        session = s.get(sid)
    assert session.sid != sid and not session.get("uid") and session.is_new
    assert "unreadable" in caplog.text


@versions()
def test_request_cycle_saves_only_dirty_sessions(odoo):
    r = call(odoo)  # anonymous, untouched: nothing stored
    assert raw(odoo, r["json"]["sid"]) is None or odoo.major < 16

    def put_x(session):
        session["x"] = 1

    r = call(odoo, put_x)
    sid = r["json"]["sid"]
    assert raw(odoo, sid).data["x"] == 1
    r2 = call(odoo, lambda s: s.get("x"), sid=sid)
    assert r2["json"] == {"sid": sid, "result": 1}


@versions()
def test_anonymous_ttl_shorter(odoo, monkeypatch):
    s = store(odoo)
    session = s.new()
    session["x"] = 1
    s.save(session)
    assert raw(odoo, session.sid).ttl <= 10800
    session["uid"] = 2
    s.save(session)
    assert raw(odoo, session.sid).ttl > 10800


@versions(16, 17, 18, 19)
def test_max_inactivity_parameter_honoured(odoo):
    odoo.fake_env.params["sessions.max_inactivity_seconds"] = "900"

    def set_uid(session):
        session["uid"] = 2
        session["db"] = "db1"

    r = call(odoo, set_uid)
    assert 880 <= raw(odoo, r["json"]["sid"]).ttl <= 900
    odoo.fake_env.params["sessions.max_inactivity_seconds"] = str(10 * 31536000)
    r = call(odoo, set_uid)
    assert 31535000 <= raw(odoo, r["json"]["sid"]).ttl <= 31536000  # clamped, not refused
    odoo.fake_env.params["sessions.max_inactivity_seconds"] = "not a number"
    r = call(odoo, set_uid)
    assert r["status"].startswith("200")
    assert 600000 <= raw(odoo, r["json"]["sid"]).ttl <= 604800  # back to DKN_AUTH_EXPIRY


@versions(16, 18)
def test_refresh_keeps_the_ttl_the_session_was_written_with(odoo):
    odoo.fake_env.params["sessions.max_inactivity_seconds"] = "900"

    def set_uid(session):
        session["uid"] = 2
        session["db"] = "db1"

    sid = call(odoo, set_uid)["json"]["sid"]
    # Another worker, which never read the parameter, serves the next request
    # of this session once it has been idle for a while.
    from dkn_auth import odoo_glue

    other = odoo_glue._installed["store_class"](
        store(odoo).client, store(odoo).settings, type(store(odoo).new())
    )
    other.client.patch(sid, ttl=300)
    other.get(sid)
    assert 880 <= raw(odoo, sid).ttl <= 900  # refreshed to 900, not to DKN_AUTH_EXPIRY


@versions(14, 15, 16, 17)
def test_pickle_era_types_round_trip(odoo):
    s = store(odoo)
    session = s.new()
    session["ids"] = {1, 2, 3}
    session["when"] = datetime.datetime(2024, 1, 2, 3, 4, 5)
    session["day"] = datetime.date(2024, 1, 2)
    s.save(session)
    assert raw(odoo, session.sid).data["ids"] == {"_type": "set", "value": [1, 2, 3]}
    assert raw(odoo, session.sid).data["_dkn_ttl"] == 10800
    back = s.get(session.sid)
    assert back["ids"] == {1, 2, 3} and isinstance(back["ids"], set)
    assert back["when"] == datetime.datetime(2024, 1, 2, 3, 4, 5)
    assert type(back["day"]) is datetime.date


@versions(18, 19)
def test_json_era_sessions_untagged(odoo):
    s = store(odoo)
    session = s.new()
    session["odd"] = {"_type": "set", "value": [1]}  # user data that looks like a tag
    s.save(session)
    assert s.get(session.sid)["odd"] == {"_type": "set", "value": [1]}


@versions()
def test_save_sends_only_changes_and_keeps_concurrent_ones(odoo):
    s = store(odoo)
    first = s.new()
    first["a"] = 0
    first["b"] = 0
    first["gone"] = 1
    s.save(first)
    slow = s.get(first.sid)
    quick = s.get(first.sid)
    quick["b"] = "quick"
    s.save(quick)
    slow["a"] = "slow"
    del slow["gone"]
    s.save(slow)
    final = raw(odoo, first.sid).data
    assert final["a"] == "slow" and final["b"] == "quick" and "gone" not in final


@versions()
def test_in_place_change_is_saved(odoo):
    s = store(odoo)
    session = s.new()
    session["ctx"] = {"lang": "en_US"}
    s.save(session)
    loaded = s.get(session.sid)
    loaded["ctx"]["lang"] = "fr_FR"  # no __setitem__: only touch() marks it
    s.save(loaded)
    assert raw(odoo, session.sid).data["ctx"] == {"lang": "fr_FR"}


@versions()
def test_no_write_when_nothing_changed(odoo, monkeypatch):
    s = store(odoo)
    session = s.new()
    session["a"] = 1
    s.save(session)
    version = raw(odoo, session.sid).version
    calls = []
    real = s.client._call
    monkeypatch.setattr(s.client, "_call", lambda *a, **k: (calls.append(a[:2]), real(*a, **k))[1])
    r = call(odoo, lambda sess: sess.get("a"), sid=session.sid)
    assert r["json"]["result"] == 1
    assert [c[0] for c in calls] == ["GET"]  # one read, no write
    assert raw(odoo, session.sid).version == version


@versions()
def test_ttl_refreshed_at_most_once_per_interval(odoo, monkeypatch):
    s = store(odoo)
    session = s.new()
    session["a"] = 1
    s.save(session)
    s.client.patch(session.sid, ttl=5000)  # as if the session had been idle a while
    writes = []
    real = s.client._call
    monkeypatch.setattr(
        s.client, "_call", lambda *a, **k: (writes.append(a[0]) if a[0] != "GET" else None, real(*a, **k))[1]
    )
    s.get(session.sid)
    assert writes == ["PATCH"] and raw(odoo, session.sid).ttl > 10000
    s.get(session.sid)
    assert writes == ["PATCH"]


@versions()
def test_no_resurrection_after_logout_elsewhere(odoo):
    s = store(odoo)
    session = s.new()
    session["uid"] = 2
    s.save(session)
    late = s.get(session.sid)  # a slow request loaded it
    r = call(odoo, logout, sid=session.sid)  # the user logs out meanwhile
    assert r["json"]["sid"] != session.sid
    late["x"] = "late write"
    s.save(late)
    assert raw(odoo, session.sid) is None
    assert s.get(session.sid).get("uid") is None


@versions(16, 17, 18, 19)
def test_rotate_on_login(odoo):
    def anonymous(session):
        session["seen"] = True

    sid = call(odoo, anonymous)["json"]["sid"]
    r = call(odoo, login, sid=sid)
    new_sid = r["json"]["sid"]
    assert new_sid != sid and raw(odoo, sid) is None
    stored = raw(odoo, new_sid).data
    assert stored["uid"] == 2 and stored["seen"] is True
    session = store(odoo).get(new_sid)
    assert stored["session_token"] == fake_odoo.compute_session_token(session, odoo.fake_env)
    assert session.should_rotate is False and "should_rotate" not in stored
    if odoo.major >= 19:
        assert abs(stored["create_time"] - time.time()) < 5
    if odoo.major >= 18:
        assert len(new_sid) == 84


@versions(16, 17, 18, 19)
def test_rotate_of_never_stored_session(odoo):
    s = store(odoo)
    session = s.new()
    old = session.sid
    session["uid"] = 3
    s.rotate(session, odoo.fake_env)
    assert session.sid != old and raw(odoo, session.sid).data["uid"] == 3
    assert raw(odoo, session.sid).data["session_token"]


@versions(16, 18, 19)
def test_logout_does_not_carry_keys_added_meanwhile(odoo):
    s = store(odoo)
    session = s.new()
    session["uid"] = 2
    s.save(session)
    loaded = s.get(session.sid)
    other = s.get(session.sid)
    other["sale_order_id"] = 42  # a concurrent request of the same user
    s.save(other)
    logout(loaded)
    s.rotate(loaded, odoo.fake_env)
    new = raw(odoo, loaded.sid).data
    assert "sale_order_id" not in new and new["uid"] is None
    assert raw(odoo, session.sid) is None


@versions(14, 15)
def test_old_rotation_delete_then_save(odoo):
    sid = call(odoo, lambda s: s.__setitem__("seen", 1))["json"]["sid"]
    r = call(odoo, login, sid=sid)
    new_sid = r["json"]["sid"]
    assert new_sid != sid and raw(odoo, sid) is None
    data = raw(odoo, new_sid).data
    assert data["uid"] == 2 and data["seen"] == 1
    assert "rotate" not in data and "modified" not in data


@versions()
def test_delete_and_vacuum(odoo):
    s = store(odoo)
    session = s.new()
    session["a"] = 1
    s.save(session)
    assert s.vacuum(max_lifetime=60) is None
    assert raw(odoo, session.sid) is not None
    s.delete(session)
    assert raw(odoo, session.sid) is None


@versions(16, 17, 18, 19)
def test_slots_do_not_leak_into_data(odoo):
    s = store(odoo)
    session = s.new()
    session["a"] = 1
    s.save(session)
    loaded = s.get(session.sid)
    assert set(raw(odoo, session.sid).data) == {"a", "_dkn_ttl"}
    assert set(dict(loaded)) == {"a"}  # the TTL key is the store's, not Odoo's


# -- Odoo 18+ devices, 19 soft rotation ------------------------------------------


@versions(18, 19)
def test_device_identifiers(odoo):
    s = store(odoo)
    sessions = []
    for _ in range(3):
        session = s.new()
        session["uid"] = 2
        s.save(session)
        sessions.append(session)
    ids = [x.sid[:42] for x in sessions]
    unknown = s.generate_key()[:42]
    assert s.get_missing_session_identifiers(ids + [unknown]) == {unknown}
    s.delete_from_identifiers(ids[:1])
    assert raw(odoo, sessions[0].sid) is None and raw(odoo, sessions[1].sid) is not None
    assert s.get_missing_session_identifiers(ids) == {ids[0]}


@versions(18)
def test_18_skips_short_identifiers(odoo):
    s = store(odoo)
    session = s.new()
    session["uid"] = 2
    s.save(session)
    s.delete_from_identifiers([session.sid[:2], ""])
    assert raw(odoo, session.sid) is not None


@versions(19)
def test_19_refuses_malformed_identifiers(odoo):
    with pytest.raises(ValueError):
        store(odoo).delete_from_identifiers("a" * 42)  # a string, not a list


@versions(19)
def test_soft_rotation(odoo, monkeypatch):
    s = store(odoo)
    session = s.new()
    session["uid"] = 2
    session["create_time"] = time.time() - 10000
    s.save(session)
    old = session.sid
    loaded = s.get(old)
    concurrent = s.get(old)
    concurrent["from_other_request"] = 1
    s.save(concurrent)
    s.rotate(loaded, odoo.fake_env, soft=True)
    new = loaded.sid
    assert raw(odoo, new).data["from_other_request"] == 1  # same user: carried over
    assert new != old and new[:42] == old[:42]
    old_rec = raw(odoo, old)
    assert old_rec.data["next_sid"] == new and old_rec.ttl <= 120
    assert old_rec.data["deletion_time"] == pytest.approx(time.time() + 120, abs=5)
    new_data = raw(odoo, new).data
    assert new_data["gc_previous_sessions"] is True and "next_sid" not in new_data
    assert new_data["session_token"] == fake_odoo.compute_session_token(loaded, odoo.fake_env)
    # Reading the old sid during the grace period does not extend it.
    s.get(old)
    assert raw(odoo, old).ttl <= 120
    # A parallel request on the old sid follows the rotation instead of making another.
    s.rotate(concurrent, odoo.fake_env, soft=True)
    assert concurrent.sid == new
    # Within the grace period nothing is cleaned; after it the marker goes.
    current = s.get(new)
    s.delete_old_sessions(current)
    assert "gc_previous_sessions" in raw(odoo, new).data
    monkeypatch.setattr(time, "time", lambda real=time.time: real() + 200)
    s.delete_old_sessions(current)
    assert "gc_previous_sessions" not in raw(odoo, new).data


# -- failure ----------------------------------------------------------------------


@versions()
def test_store_outage_is_503_with_one_log_line(odoo, caplog, monkeypatch):
    s = store(odoo)
    session = s.new()
    session["uid"] = 2
    s.save(session)
    from dkn_auth.client import Client
    from dkn_auth.client.config import Settings

    s.client = Client(Settings(url="http://127.0.0.1:1", timeout=0.3))
    caplog.set_level(logging.INFO)
    for json_route in (False, True):
        caplog.clear()
        r = call(odoo, sid=session.sid, json_route=json_route)
        assert r["status"].startswith("503")
        assert r["body"] == b"session store unavailable\n"
        records = [x for x in caplog.records if x.levelno >= logging.WARNING]
        assert len(records) == 1 and "session store unavailable" in records[0].getMessage()
        assert records[0].exc_info is None
    # A failing save (not only the load) is a 503 too.
    s.client = Client(s.settings)  # back to the working sidecar
    loaded_sid = session.sid

    def change_then_break(sess):
        sess["x"] = 1
        s.client = Client(Settings(url="http://127.0.0.1:1", timeout=0.3))

    caplog.clear()
    r = call(odoo, change_then_break, sid=loaded_sid, json_route=True)
    assert r["status"].startswith("503")
    assert len([x for x in caplog.records if x.levelno >= logging.WARNING]) == 1


@versions(16, 18)
def test_sidecar_503_is_503(odoo, memory_sidecar, monkeypatch):
    from dkn_auth.client import api

    s = store(odoo)

    def answer_503(method, path, body=None, headers=None):
        return 503, {}, b'{"error": "backend_unavailable", "message": "redis down"}'

    monkeypatch.setattr(s.client.transport, "request", answer_503)
    r = call(odoo, sid=s.generate_key())
    assert r["status"].startswith("503")
    assert api.Unavailable  # mapped through the real error path


@versions(16, 19)
def test_misconfiguration_is_critical_and_fails_closed(memory_sidecar, monkeypatch, caplog, odoo):
    from dkn_auth import odoo_glue

    monkeypatch.setenv("DKN_AUTH_EXPIRY", "a week")
    http = fake_odoo.build(odoo.major)
    odoo_glue.uninstall_for_tests()
    with caplog.at_level(logging.INFO):
        odoo_glue.install()
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and "DKN_AUTH_EXPIRY" in critical[0].getMessage()
    r = call(http, sid=http.root.session_store.generate_key())
    assert r["status"].startswith("503")


def test_install_failure_fails_closed(caplog, monkeypatch):
    from dkn_auth import odoo_glue

    http = fake_odoo.build(13)  # unsupported: install() raises
    odoo_glue.uninstall_for_tests()
    try:
        with caplog.at_level(logging.INFO):
            assert odoo_glue.install_or_fail_closed() is None
        assert any(r.levelno == logging.CRITICAL for r in caplog.records)
        r = call(http)
        assert r["status"].startswith("503") and r["body"] == b"session store unavailable\n"
    finally:
        fake_odoo.remove()


@versions(16, 18)
def test_odoo_conf_keys(odoo, monkeypatch, memory_sidecar):
    from dkn_auth import odoo_glue

    monkeypatch.delenv("DKN_AUTH_URL")
    http = fake_odoo.build(odoo.major)
    http_tools = __import__("sys").modules["odoo.tools"]
    http_tools.config.update({"dkn_auth_url": memory_sidecar.url, "dkn_auth_anonymous_expiry": "600"})
    odoo_glue.uninstall_for_tests()
    odoo_glue.install()
    s = http.root.session_store
    assert s.settings.url == memory_sidecar.url and s.settings.anonymous_expiry == 600
    session = s.new()
    session["a"] = 1
    s.save(session)
    assert s.client.get(session.sid).ttl <= 600
