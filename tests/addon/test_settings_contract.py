"""The addon's settings against the settings contract (docs/settings-contract.json).

The JSON is generated from contract/src/lib.rs. For every entry whose ``readers``
contain ``"addon"``, ``load_settings`` must read the variable and its odoo.conf key,
default to the contract's default, and accept exactly the contract's range. In the other
direction, every ``DKN_AUTH_*`` name in config.py's source must be an addon entry.
"""

import ast
import json
import os
import re
from pathlib import Path

import pytest

from dkn_auth.client import config
from dkn_auth.client.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = json.loads((ROOT / "docs" / "settings-contract.json").read_text(encoding="utf-8"))
ENTRIES = {entry["env"]: entry for entry in CONTRACT["settings"]}
ADDON = [entry for entry in CONTRACT["settings"] if "addon" in entry["readers"]]
NUMERIC = [entry for entry in ADDON if entry["type"] in ("integer", "number")]
NAME = re.compile(r"DKN_AUTH_[A-Z0-9_]+")

# A valid value other than the default, for string settings, by the contract's format.
STRING_PROBES = {
    "http://host:port, no path": "http://127.0.0.2:7999",
    "an address like 127.0.0.1:7070": "127.0.0.2:7999",
    "an absolute path": "/run/dkn-contract-test.sock",
}


def ids(entries):
    return [entry["env"] for entry in entries]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("DKN_AUTH_"):
            monkeypatch.delenv(key)


def values(settings):
    """The settings' values, without ``address_source`` (which names where they came from)."""
    return {name: getattr(settings, name) for name in Settings.__slots__ if name != "address_source"}


def attribute(entry):
    """The Settings field named like the variable (``DKN_AUTH_EXPIRY`` -> ``expiry``), if any."""
    name = entry["env"][len("DKN_AUTH_") :].lower()
    return name if name in Settings.__slots__ else None


def parse(entry, text):
    kind = entry["type"]
    if kind == "integer":
        return int(text)
    if kind == "number":
        return float(text)
    if kind == "boolean":
        return text == "true"
    return "" if text is None else text


def number_text(entry, value):
    return str(int(value)) if entry["type"] == "integer" else repr(float(value))


def probe(entry):
    """A valid value of the setting that differs from its default."""
    if entry["type"] in ("integer", "number"):
        default = parse(entry, entry["default"])
        for candidate in (entry["minimum"], entry["maximum"]):
            if parse(entry, number_text(entry, candidate)) != default:
                return number_text(entry, candidate)
    if entry["type"] == "string":
        fmt = entry.get("format") or entry.get("pattern")
        if fmt not in STRING_PROBES:
            pytest.fail(f"{entry['env']}: no probe value for format {fmt!r}; add one to STRING_PROBES")
        return STRING_PROBES[fmt]
    pytest.fail(f"{entry['env']}: no probe value for type {entry['type']!r}")


def step(entry):
    return 1 if entry["type"] == "integer" else 0.001


def names_in_config():
    """Every ``"DKN_AUTH_*"`` string constant in config.py's source."""
    tree = ast.parse(Path(config.__file__).read_text(encoding="utf-8"))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.fullmatch(node.value)
    }


def names_found_by_config():
    """The names config.py looks up: the first argument of its ``_find``/``_lookup`` calls."""
    tree = ast.parse(Path(config.__file__).read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("_find", "_lookup")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(node.args[0].value)
    return found


def test_contract_has_addon_entries():
    assert ADDON, "no entry of docs/settings-contract.json has 'addon' among its readers"
    for entry in ADDON:
        assert entry["odooConfKey"] == entry["env"].lower(), entry


@pytest.mark.parametrize("entry", ADDON, ids=ids(ADDON))
def test_reads_the_variable(monkeypatch, entry):
    default = values(load_settings())
    monkeypatch.setenv(entry["env"], probe(entry))
    assert values(load_settings()) != default, f"load_settings ignores {entry['env']}"


@pytest.mark.parametrize("entry", ADDON, ids=ids(ADDON))
def test_reads_the_odoo_conf_key(monkeypatch, entry):
    default = values(load_settings({}))
    from_file = values(load_settings({entry["odooConfKey"]: probe(entry)}))
    assert from_file != default, f"load_settings ignores odoo.conf key {entry['odooConfKey']}"
    monkeypatch.setenv(entry["env"], probe(entry))
    assert values(load_settings()) == from_file


@pytest.mark.parametrize("entry", ADDON, ids=ids(ADDON))
def test_default_is_the_contracts(monkeypatch, entry):
    unset = load_settings()
    name = attribute(entry)
    if name is not None:
        assert getattr(unset, name) == parse(entry, entry["default"])
    if entry["default"] is not None:
        # Setting the contract's default explicitly changes nothing.
        monkeypatch.setenv(entry["env"], entry["default"])
        assert values(load_settings()) == values(unset)
    else:
        assert name is not None, f"{entry['env']}: no default and no Settings field to check"


@pytest.mark.parametrize("entry", NUMERIC, ids=ids(NUMERIC))
@pytest.mark.parametrize("bound", ["minimum", "maximum"])
def test_bounds_are_accepted(monkeypatch, entry, bound):
    text = number_text(entry, entry[bound])
    from_file = load_settings({entry["odooConfKey"]: text})
    monkeypatch.setenv(entry["env"], text)
    from_env = load_settings()
    name = attribute(entry)
    assert name is not None, f"{entry['env']}: no Settings field to check"
    assert getattr(from_file, name) == getattr(from_env, name) == parse(entry, text)


@pytest.mark.parametrize("entry", NUMERIC, ids=ids(NUMERIC))
@pytest.mark.parametrize("side", ["below", "above"])
def test_out_of_range_names_the_setting(monkeypatch, entry, side):
    if side == "below":
        value = entry["minimum"] - step(entry)
    else:
        value = entry["maximum"] + step(entry)
    text = number_text(entry, value)
    with pytest.raises(ConfigError) as from_file:
        load_settings({entry["odooConfKey"]: text})
    assert from_file.value.setting == entry["env"]
    assert str(from_file.value).startswith(f"{entry['odooConfKey']} in odoo.conf:")
    monkeypatch.setenv(entry["env"], text)
    with pytest.raises(ConfigError) as from_env:
        load_settings()
    assert from_env.value.setting == entry["env"]
    assert str(from_env.value).startswith(f"{entry['env']}:")


def test_every_name_in_config_py_is_an_addon_setting():
    names = names_in_config()
    assert names, "found no DKN_AUTH_* name in config.py"
    missing = sorted(name for name in names if name not in ENTRIES)
    assert not missing, f"config.py reads settings absent from the contract: {missing}"
    not_addon = sorted(name for name in names if "addon" not in ENTRIES[name]["readers"])
    assert not not_addon, f"contract entries read by config.py without 'addon' in readers: {not_addon}"


def test_config_py_looks_up_exactly_the_addon_settings():
    assert names_found_by_config() == {entry["env"] for entry in ADDON}
