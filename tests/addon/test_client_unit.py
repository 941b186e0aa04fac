"""Client parts that need no sidecar: settings, JSON codec, change detection."""

import datetime

import pytest

from dkn_auth.client import codec
from dkn_auth.client.config import ConfigError, load_settings
from dkn_auth.client.diff import Snapshot, changes


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("DKN_AUTH_"):
            monkeypatch.delenv(key)


def test_defaults():
    s = load_settings()
    assert (s.url, s.socket, s.expiry, s.anonymous_expiry, s.timeout) == (
        "http://127.0.0.1:7070",
        "",
        604800,
        10800,
        2.0,
    )
    assert (s.host, s.port) == ("127.0.0.1", 7070)


def test_env_wins_over_odoo_conf(monkeypatch):
    options = {"dkn_auth_expiry": "3600", "dkn_auth_url": "http://127.0.0.1:7000"}
    assert load_settings(options).expiry == 3600
    monkeypatch.setenv("DKN_AUTH_EXPIRY", "7200")
    s = load_settings(options)
    assert s.expiry == 7200 and s.url == "http://127.0.0.1:7000"


def test_seed_sidecar_keys_accepted_in_odoo_conf():
    options = {
        "dkn_auth_driver": "redis",
        "dkn_auth_prefix": "session:",
        "dkn_auth_redis_uri": "redis://localhost:6379/1",
        "dkn_auth_redis_max_conn": "64",
        "dkn_auth_db_uri": False,
    }
    assert load_settings(options).url == "http://127.0.0.1:7070"


@pytest.mark.parametrize(
    "key,value",
    [
        ("DKN_AUTH_URL", "https://127.0.0.1:7070"),
        ("DKN_AUTH_URL", "127.0.0.1:7070"),
        ("DKN_AUTH_URL", "http://127.0.0.1:7070/v1"),
        ("DKN_AUTH_URL", "http://127.0.0.1:notaport"),
        ("DKN_AUTH_SOCKET", "relative.sock"),
        ("DKN_AUTH_EXPIRY", "a week"),
        ("DKN_AUTH_EXPIRY", "0"),
        ("DKN_AUTH_ANONYMOUS_EXPIRY", "-5"),
        ("DKN_AUTH_TIMEOUT", "soon"),
        ("DKN_AUTH_TIMEOUT", "600"),
        ("DKN_AUTH_REFRESH_INTERVAL", "x"),
    ],
)
def test_bad_settings_name_the_setting(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.setting == key
    assert key in str(info.value)


def test_codec_round_trips_tagged_types():
    value = {
        "ids": {3, 1, 2},
        "when": datetime.datetime(2024, 5, 1, 12, 30, 15, 123456),
        "aware": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 5, 1),
        "nested": [{"s": frozenset(["a"])}],
        "plain": {"a": [1, 2.5, None, True, "x"]},
    }
    encoded = codec.encode(value)
    assert encoded["ids"] == {"_type": "set", "value": [1, 2, 3]}
    assert encoded["day"] == {"_type": "date_isoformat", "value": "2024-05-01"}
    assert encoded["when"]["_type"] == "datetime_isoformat"
    decoded = codec.decode(__import__("json").loads(codec.canonical(encoded)))
    assert decoded["ids"] == {1, 2, 3} and isinstance(decoded["ids"], set)
    assert decoded["when"] == value["when"] and type(decoded["when"]) is datetime.datetime
    assert decoded["aware"] == value["aware"]
    assert decoded["day"] == value["day"] and type(decoded["day"]) is datetime.date
    assert decoded["nested"] == [{"s": {"a"}}]
    assert decoded["plain"] == value["plain"]


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
        datetime.datetime(2024, 1, 1),
        datetime.datetime(
            2024, 1, 1, 5, 6, 7, tzinfo=datetime.timezone(datetime.timedelta(hours=-3, minutes=-30))
        ),
        datetime.date(1999, 12, 31),
    ],
)
def test_iso_parsing_without_fromisoformat(value):
    tagged = codec.encode(value)
    back = codec.decode(tagged)
    assert back == value and type(back) is type(value)
    if isinstance(value, datetime.datetime):
        assert back.utcoffset() == value.utcoffset()
    # camptocamp's encoder writes the same tags; a date is not a datetime.
    assert codec.decode({"_type": "datetime_isoformat", "value": "2024-01-01"}) == {
        "_type": "datetime_isoformat",
        "value": "2024-01-01",
    }


def test_codec_documented_type_changes():
    decoded = codec.decode(codec.encode({"t": (1, 2), "k": {1: "a", 2.5: "b", None: "c"}, "b": {True: "d"}}))
    assert decoded["t"] == [1, 2]
    assert decoded["k"] == {"1": "a", "2.5": "b", "null": "c"}
    assert decoded["b"] == {"true": "d"}


def test_codec_refuses_what_json_cannot_hold():
    for value in (b"bytes", object(), __import__("decimal").Decimal("1.5"), {(1, 2): "tuple key"}):
        with pytest.raises(codec.UnencodableValue) as info:
            codec.encode({"key": value})
        assert "session value at session['key']" in str(info.value)
    with pytest.raises(codec.UnencodableValue):
        codec.encode({"ids": {1}}, tagged=False)


def test_codec_untagged_keeps_tag_like_user_data():
    data = {"_type": "set", "value": [1]}
    assert codec.decode({"x": {"_type": "set", "value": [1]}})["x"] == {1}
    # Odoo 18+ path: no decoding at all, so user data is left alone.
    assert codec.encode({"x": data}, tagged=False) == {"x": data}
    # A dict that looks like a tag but is not decodable stays a dict.
    assert codec.decode({"_type": "date_isoformat", "value": "not a date"}) == {
        "_type": "date_isoformat",
        "value": "not a date",
    }


def test_set_order_is_stable_for_the_diff():
    a = codec.canonical(codec.encode({"s": set(range(100, 0, -1))}))
    b = codec.canonical(codec.encode({"s": set(range(1, 101))}))
    assert a == b


def test_changes_only_changed_and_removed_keys():
    stored = {"a": 1, "b": {"x": [1, 2]}, "c": "keep", "d": True}
    snap = Snapshot("s" * 40, stored)
    current = {"a": 1, "b": {"x": [1, 2, 3]}, "c": "keep", "d": 1, "e": None}
    set_, remove = changes(snap, current)
    assert set_ == {"b": {"x": [1, 2, 3]}, "d": 1, "e": None}
    assert remove == []
    set_, remove = changes(snap, {"a": 1})
    assert set_ == {} and sorted(remove) == ["b", "c", "d"]
    assert changes(snap, dict(stored)) == ({}, [])


def test_changes_ignore_key_order_in_nested_dicts():
    snap = Snapshot("s" * 40, {"ctx": {"lang": "en_US", "tz": "UTC"}})
    assert changes(snap, {"ctx": {"tz": "UTC", "lang": "en_US"}}) == ({}, [])
