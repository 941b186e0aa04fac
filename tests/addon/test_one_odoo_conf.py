"""One odoo.conf read by Odoo (the addon's settings loader) and by the real sidecar process
(``odoo-session-sidecar --config``): they meet at one address set by one key, and errors
name each setting as the user wrote it."""

import configparser
import os
import subprocess
import time
import urllib.request

import pytest

from conftest import free_port, sidecar_bin
from dkn_auth.client import Client
from dkn_auth.client.config import ConfigError, load_settings, url_of_listen


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("DKN_AUTH_"):
            monkeypatch.delenv(key)


class OdooConfig:
    """What ``odoo.tools.config`` holds after ``odoo-bin -c FILE``: the ``[options]``
    values of a RawConfigParser, ``True``/``False`` turned into booleans, and ``rcfile``."""

    def __init__(self, path):
        self.rcfile = str(path)
        parser = configparser.RawConfigParser()
        parser.read([self.rcfile])
        self.options = {}
        for name, value in parser.items("options"):
            if value in ("True", "true"):
                value = True
            elif value in ("False", "false"):
                value = False
            self.options[name] = value

    def get(self, key, default=None):
        return self.options.get(key, default)


def write_conf(tmp_path, body):
    path = tmp_path / "odoo.conf"
    path.write_text(
        "[options]\n"
        "addons_path = /mnt/extra-addons\n"
        "server_wide_modules = base,web,dkn_auth\n"
        "dkn_auth_driver = memory\n"
        "dkn_auth_expiry = 3600\n" + body
    )
    return path


def start_sidecar(conf, tmp_path):
    """The sidecar with ``--config`` only: its address comes from the file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKN_AUTH_")}
    log = open(tmp_path / "sidecar.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(sidecar_bin()), "--config", str(conf)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    return proc, log


def stop(proc, log):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def wait_ready(client, proc, tmp_path):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "sidecar.log").read_text()
        try:
            if client.ready():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    pytest.fail("the addon never reached the sidecar: " + (tmp_path / "sidecar.log").read_text())


def round_trip(client):
    sid = "0123456789abcdef0123456789abcdef01234567"
    client.put(sid, {"uid": 2, "login": "admin"}, create_only=True)
    got = client.get(sid)
    assert got is not None
    assert got.data == {"uid": 2, "login": "admin"}
    # dkn_auth_expiry = 3600 from the same file is the sidecar's default TTL.
    assert 3590 <= got.ttl <= 3600


def test_dkn_auth_listen_moves_the_sidecar_and_the_addon(tmp_path):
    port = free_port()
    conf = write_conf(tmp_path, f"dkn_auth_listen = 127.0.0.1:{port}\n")
    settings = load_settings(OdooConfig(conf))
    assert settings.url == f"http://127.0.0.1:{port}"
    assert settings.address_source == f"dkn_auth_listen in {conf}"
    assert settings.expiry == 3600
    proc, log = start_sidecar(conf, tmp_path)
    try:
        client = Client(settings)
        wait_ready(client, proc, tmp_path)
        round_trip(client)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        stop(proc, log)


def test_dkn_auth_socket_is_read_by_both(tmp_path):
    sock = tmp_path / "sidecar.sock"
    conf = write_conf(tmp_path, f"dkn_auth_socket = {sock}\ndkn_auth_listen = 127.0.0.1:1\n")
    settings = load_settings(OdooConfig(conf))
    assert settings.socket == str(sock)
    assert settings.describe() == f"unix:{sock}"
    assert settings.address_source == f"dkn_auth_socket in {conf}"
    proc, log = start_sidecar(conf, tmp_path)
    try:
        client = Client(settings)
        wait_ready(client, proc, tmp_path)
        round_trip(client)
    finally:
        stop(proc, log)


def test_an_explicit_url_wins_over_the_listen_address(tmp_path, monkeypatch):
    conf = write_conf(tmp_path, "dkn_auth_listen = 127.0.0.1:7071\ndkn_auth_url = http://127.0.0.1:7072\n")
    assert load_settings(OdooConfig(conf)).url == "http://127.0.0.1:7072"
    conf = write_conf(tmp_path, "dkn_auth_listen = 127.0.0.1:7071\n")
    monkeypatch.setenv("DKN_AUTH_URL", "http://127.0.0.1:7073")
    s = load_settings(OdooConfig(conf))
    assert (s.url, s.address_source) == ("http://127.0.0.1:7073", "DKN_AUTH_URL")
    monkeypatch.delenv("DKN_AUTH_URL")
    monkeypatch.setenv("DKN_AUTH_LISTEN", "127.0.0.1:7074")
    s = load_settings(OdooConfig(conf))
    assert (s.url, s.address_source) == ("http://127.0.0.1:7074", "DKN_AUTH_LISTEN")


@pytest.mark.parametrize(
    "listen,url",
    [
        ("127.0.0.1:7071", "http://127.0.0.1:7071"),
        ("0.0.0.0:7070", "http://127.0.0.1:7070"),
        ("[::1]:7075", "http://[::1]:7075"),
        ("[::]:7075", "http://[::1]:7075"),
        ("10.0.0.5:7070", "http://10.0.0.5:7070"),
    ],
)
def test_url_of_listen(listen, url):
    assert url_of_listen(listen) == url


@pytest.mark.parametrize("listen", ["7070", "localhost", "127.0.0.1:", "127.0.0.1:99999", "[::1]"])
def test_a_bad_listen_address_names_the_file_key(tmp_path, listen):
    conf = write_conf(tmp_path, f"dkn_auth_listen = {listen}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(OdooConfig(conf))
    assert info.value.setting == "DKN_AUTH_LISTEN"
    assert str(info.value).startswith(f"dkn_auth_listen in {conf}: expected an address")


def test_errors_name_the_key_as_written(tmp_path, monkeypatch):
    conf = write_conf(tmp_path, "dkn_auth_timeout = soon\n")
    with pytest.raises(ConfigError) as info:
        load_settings(OdooConfig(conf))
    assert info.value.setting == "DKN_AUTH_TIMEOUT"
    assert str(info.value) == f"dkn_auth_timeout in {conf}: expected seconds, got 'soon'"
    conf = tmp_path / "odoo.conf"
    conf.write_text("[options]\ndkn_auth_expiry = a week\n")
    with pytest.raises(ConfigError) as info:
        load_settings(OdooConfig(conf))
    assert str(info.value).startswith(f"dkn_auth_expiry in {conf}: expected a whole number")
    # The same setting from the environment names the variable.
    monkeypatch.setenv("DKN_AUTH_EXPIRY", "a week")
    with pytest.raises(ConfigError) as info:
        load_settings(OdooConfig(conf))
    assert str(info.value).startswith("DKN_AUTH_EXPIRY: expected a whole number")


def test_the_seed_file_with_odoos_db_settings_loads_unchanged(tmp_path):
    # The original keys and Odoo's db_* keys: the addon takes the default address and
    # dkn_auth_expiry, and ignores the rest (the sidecar's).
    conf = tmp_path / "odoo.conf"
    conf.write_text(
        "[options]\ndb_host = False\ndb_port = False\ndb_user = odoo\ndb_password = False\n"
        "db_name = prod\nserver_wide_modules = base,web,dkn_auth\ndkn_auth_driver = db\n"
        "dkn_auth_prefix = session:\ndkn_auth_expiry = 86400\n"
        "dkn_auth_redis_uri = redis://localhost:6379/1\ndkn_auth_redis_max_conn = 64\n"
    )
    s = load_settings(OdooConfig(conf))
    assert (s.url, s.expiry, s.address_source) == ("http://127.0.0.1:7070", 86400, "")
