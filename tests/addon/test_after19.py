"""Odoo after 19 (odoo/http/session.py layout) and the rotation/get details of 19.

Fake Odoo (fake_odoo.build_master), real sidecar.
"""

import io
import json
import logging
import time

import pytest

import fake_odoo


@pytest.fixture(params=["memory", "redis"])
def driver_sidecar(request):
    return request.getfixturevalue(f"{request.param}_sidecar")


def _clean_env(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("DKN_AUTH_"):
            monkeypatch.delenv(key)


@pytest.fixture
def master(driver_sidecar, monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("DKN_AUTH_URL", driver_sidecar.url)
    http = fake_odoo.build_master()
    from dkn_auth import odoo_glue

    odoo_glue.uninstall_for_tests()
    odoo_glue.install()
    yield http
    odoo_glue.uninstall_for_tests()
    fake_odoo.remove()


@pytest.fixture
def odoo(request, driver_sidecar, monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("DKN_AUTH_URL", driver_sidecar.url)
    http = fake_odoo.build(request.param)
    from dkn_auth import odoo_glue

    odoo_glue.uninstall_for_tests()
    odoo_glue.install()
    http.major = request.param
    yield http
    odoo_glue.uninstall_for_tests()
    fake_odoo.remove()


def call(http, handler=None, sid=None):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": io.BytesIO()}
    if sid:
        environ["HTTP_COOKIE"] = f"session_id={sid}"
    if handler:
        environ["fake.handler"] = handler
    out = {}

    def start_response(status, headers, exc_info=None):
        out["status"], out["headers"] = status, dict(headers)

    out["json"] = json.loads(b"".join(http.root(environ, start_response)))
    return out


def login(session, uid=2):
    session["uid"] = uid
    session["login"] = "admin"
    session["db"] = "db1"
    session.should_rotate = True


def store_of(http):
    return http.session.session_store()


# -- item 4: the layout after 19 ------------------------------------------------


def test_installs_on_the_session_module_layout(master, caplog):
    store = store_of(master)
    assert type(store).__name__ == "DknSessionStore"
    assert store is store_of(master)  # one per process, cached like core
    # Bound by name elsewhere before the addon loaded: rebound too.
    assert master.application.session_store is master.session.session_store
    assert master.session.core_calls == []  # core's store never built
    key = store.generate_key()
    assert len(key) == 86
    for n in (84, 86):  # 18/19 sessions and the keys after 19
        assert store.is_valid_session_id("A" * n) and store.is_valid_key("A" * n)
    for bad in ("A" * 85, "A" * 87, "a" * 40, "A" * 85 + "="):
        # 85: core's check lets it through, but core never issues it and the sidecar refuses it.
        assert not store.is_valid_session_id(bad)


def test_request_cycle_with_86_character_sids(master):
    """Login rotates into an 86-character sid the sidecar stores and serves back."""
    out = call(master, login)
    sid = out["json"]["sid"]
    assert len(sid) == 86
    stored = store_of(master).client.get(sid)
    assert stored is not None and stored.data["uid"] == 2
    # update_session_token of the session module ran for the new sid.
    assert (
        stored.data["session_token"]
        == fake_odoo.hmac.new(fake_odoo.SECRET, f"{sid}:2".encode(), fake_odoo.hashlib.sha256).hexdigest()
    )
    seen = call(master, lambda s: s.get("uid"), sid=sid)
    assert seen["json"]["result"] == 2 and seen["json"]["sid"] == sid
    # The device identifier is the first 42 characters, as in 18 and 19.
    store = store_of(master)
    assert store.get_missing_session_identifiers([sid[:42]]) == set()
    store.delete_from_identifiers([sid[:42], "short"])  # a malformed one is skipped, as core does
    assert store.client.get(sid) is None
    assert call(master, lambda s: s.get("uid"), sid=sid)["json"]["result"] is None


def test_soft_rotation_keeps_the_identifier_of_an_86_character_sid(master, monkeypatch):
    sid = call(master, login)["json"]["sid"]
    store = store_of(master)
    session = store.get(sid)
    store.rotate(session, master.fake_env, soft=True)
    assert len(session.sid) == 86 and session.sid[:42] == sid[:42] and session.sid != sid
    old = store.client.get(sid)
    assert old.data["next_sid"] == session.sid
    assert store.client.get(session.sid).data["gc_previous_sessions"] is True


def test_get_keep_sid_keeps_the_cookie_sid(master):
    """After 19, core asks for the cookie's sid with keep_sid=True and never overwrites it."""
    store = store_of(master)
    missing = store.generate_key()
    kept = store.get(missing, keep_sid=True)
    assert kept.sid == missing and not kept.is_new and dict(kept) == {}
    fresh = store.get(missing)
    assert fresh.sid != missing and fresh.is_new
    assert store.get("not-a-sid", keep_sid=True).sid != "not-a-sid"
    assert len(store.get("A" * 85, keep_sid=True).sid) == 86  # never issued: a new session
    # A request with a cookie naming a missing session saves under that sid.
    out = call(master, lambda s: s.__setitem__("visited", True), sid=missing)
    assert out["json"]["sid"] == missing
    assert store.client.get(missing).data["visited"] is True


def test_unknown_session_module_is_refused_with_one_line(memory_sidecar, monkeypatch, caplog):
    _clean_env(monkeypatch)
    monkeypatch.setenv("DKN_AUTH_URL", memory_sidecar.url)
    http = fake_odoo.build_master()
    http.session.session_store = lambda: None  # not a functools.cache: a layout we do not know
    from dkn_auth import odoo_glue

    odoo_glue.uninstall_for_tests()
    try:
        with caplog.at_level(logging.CRITICAL, logger="odoo.addons.dkn_auth"):
            assert odoo_glue.install_or_fail_closed() is None
        assert any("cannot install the session store" in r.getMessage() for r in caplog.records)
        assert any("odoo.http.session differs" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
        out = {}
        http.root({"PATH_INFO": "/"}, lambda status, headers, exc=None: out.update(status=status))
        assert out["status"].startswith("503")
    finally:
        odoo_glue.uninstall_for_tests()
        fake_odoo.remove()


# -- item 5: rotation without an env, get of a missing session ------------------


@pytest.mark.parametrize("odoo", [19], indirect=True)
def test_19_rotation_of_a_user_session_without_env_asserts(odoo):
    store = odoo.root.session_store
    sid = call(odoo, login)["json"]["sid"]
    session = store.get(sid)
    with pytest.raises(AssertionError, match="requires an environment"):
        store.rotate(session, None)
    assert session.sid == sid  # nothing rotated, nothing deleted
    assert store.client.get(sid).data["uid"] == 2


def test_after_19_rotation_of_a_user_session_without_env_asserts(master):
    store = store_of(master)
    sid = call(master, login)["json"]["sid"]
    with pytest.raises(AssertionError):
        store.rotate(store.get(sid), None, soft=True)
    assert store.client.get(sid) is not None and "next_sid" not in store.client.get(sid).data


@pytest.mark.parametrize("odoo", [16, 18], indirect=True)
def test_16_to_18_rotation_without_env_skips_the_token(odoo):
    """As core (``if session.uid and env``): rotated, the token left as it was."""
    store = odoo.root.session_store
    sid = call(odoo, login)["json"]["sid"]
    session = store.get(sid)
    token = session["session_token"]
    store.rotate(session, None)
    assert session.sid != sid and session["session_token"] == token
    assert store.client.get(sid) is None and store.client.get(session.sid) is not None


@pytest.mark.parametrize("odoo", [16, 19], indirect=True)
def test_missing_session_is_saved_under_the_cookie_sid(odoo):
    """16-19 core sets ``session.sid = sid`` right after ``get``: the sid ``get``
    made up for a missing session never reaches the browser."""
    store = odoo.root.session_store
    missing = store.generate_key()
    assert store.get(missing, keep_sid=True).sid == missing
    out = call(odoo, lambda s: s.__setitem__("visited", time.time()), sid=missing)
    assert out["json"]["sid"] == missing
    assert "visited" in store.client.get(missing).data
