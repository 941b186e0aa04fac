"""The ``realodoo`` stage (tests/realodoo/stage.py) and its client, without an Odoo tree.

The stage itself needs real Odoo trees (docs/odoo-addon-realodoo.md); here: its
skip line, the sidecar start/stop commands the checker uses for check 9, on a
real sidecar, and the client's identity check per version.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import conftest

REALODOO = Path(__file__).resolve().parents[1] / "realodoo"


def load(name):
    spec = importlib.util.spec_from_file_location(f"realodoo_{name}", REALODOO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_skips_with_one_line_without_a_tree():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKN_REALODOO_")}
    env["DKN_REALODOO_ROUNDS"] = "3"  # a setting is not a tree
    done = subprocess.run(
        [sys.executable, str(REALODOO / "stage.py")], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("realodoo: skipped, no Odoo tree given"), lines


def test_tree_variables_format(monkeypatch, tmp_path):
    stage = load("stage")
    venv = tmp_path / "venv18"
    (venv / "bin").mkdir(parents=True)
    monkeypatch.setenv("DKN_REALODOO_18", f"/srv/odoo18:{venv}")
    monkeypatch.setenv("DKN_REALODOO_16", "/srv/odoo16:/usr/bin/python3.11")
    monkeypatch.setenv("DKN_REALODOO_17", "")  # empty: not given
    got = {major: (str(tree), str(py)) for major, tree, py in stage.trees()}
    assert got[18] == ("/srv/odoo18", str(venv / "bin" / "python"))
    assert got[16] == ("/srv/odoo16", "/usr/bin/python3.11")
    assert 17 not in got


def test_sidecar_start_and_stop_commands_on_a_real_sidecar(monkeypatch, tmp_path):
    """Check 9 stops and starts process A's own sidecar through these shell commands."""
    stage = load("stage")
    monkeypatch.setenv("DKN_SIDECAR_BIN", str(conftest.sidecar_bin()))
    sidecar = stage.Sidecar(tmp_path, "a", ["--driver", "memory"])
    try:
        sidecar.start()
        assert stage.healthy(sidecar.url)
        subprocess.run(["sh", "-c", sidecar.stop_cmd], check=True, timeout=30)
        assert not stage.healthy(sidecar.url)
        subprocess.run(["sh", "-c", sidecar.start_cmd], check=True, timeout=30)
        stage.wait_for("sidecar", lambda: stage.healthy(sidecar.url), 20)
    finally:
        sidecar.stop()
    assert not stage.healthy(sidecar.url)


class RecordingAdmin:
    def __init__(self):
        self.calls = []

    def call_kw(self, base, model, method, args, kwargs=None):
        self.calls.append((model, method, args, kwargs or {}))


def test_identity_check_sends_the_password_the_way_of_each_version():
    client = load("check_two_process")
    checker = client.Checker.__new__(client.Checker)
    checker.password = "secret"
    for major in (18, 19):
        checker.major = major
        admin = RecordingAdmin()
        checker.answer_identity_check(admin, "http://b", 7)
        if major >= 19:
            # 19's run_check reads the password from the context, not from a field.
            assert admin.calls == [
                ("res.users.identitycheck", "run_check", [[7]], {"context": {"password": "secret"}})
            ]
        else:
            assert admin.calls == [
                ("res.users.identitycheck", "write", [[7], {"password": "secret"}], {}),
                ("res.users.identitycheck", "run_check", [[7]], {}),
            ]
