"""Packaging: a plain folder on addons_path and the wheel both load the addon."""

import ast
import importlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fake_odoo
from conftest import ROOT

ADDON = ROOT / "addons" / "dkn_auth"


def manifest():
    return ast.literal_eval(ADDON.joinpath("__manifest__.py").read_text())


@pytest.mark.parametrize("major", [14, 15, 16, 17, 18, 19])
def test_manifest_version_loads_on_every_series(major):
    # Odoo prefixes a x.y.z version with its series; 18+ refuse a version that
    # carries another series (e.g. 16.0.1.0.0 on 18), so the manifest has none.
    version = manifest()["version"]
    assert re.match(r"^[0-9]+\.[0-9]+(\.[0-9]+)?$", version)
    m = manifest()
    assert m["license"] in ("LGPL-3", "AGPL-3") and m["depends"] == ["base", "web"]
    assert m["post_load"] == "post_load" and m["installable"]


def _load_as_addon(addons_dir, monkeypatch, memory_sidecar):
    monkeypatch.setenv("DKN_AUTH_URL", memory_sidecar.url)
    http = fake_odoo.build(18)
    sys.modules["odoo.addons"].__path__ = [str(addons_dir)]
    for name in [m for m in sys.modules if m.startswith("odoo.addons.dkn_auth")]:
        del sys.modules[name]
    from dkn_auth import odoo_glue

    odoo_glue.uninstall_for_tests()
    try:
        module = importlib.import_module("odoo.addons.dkn_auth")
        store = http.root.session_store
        assert type(store).__name__ == "DknSessionStore"
        assert type(store).__module__ == "odoo.addons.dkn_auth.odoo_glue.store"
        assert Path(module.__file__).parent == Path(addons_dir) / "dkn_auth"
        assert "odoo.addons.dkn_auth.controllers.health" in sys.modules  # the /web/health override
        module.post_load()  # the manifest hook after the import: a no-op
        assert http.root.session_store is store
    finally:
        for name in [m for m in sys.modules if m.startswith("odoo.addons.dkn_auth")]:
            del sys.modules[name]
        fake_odoo.remove()


def test_plain_folder_on_addons_path(monkeypatch, memory_sidecar):
    _load_as_addon(ROOT / "addons", monkeypatch, memory_sidecar)


def test_wheel(tmp_path, monkeypatch, memory_sidecar):
    # Build from a copy: setuptools leaves build/ and *.egg-info behind.
    source = tmp_path / "src"
    shutil.copytree(ADDON, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("odoo_addon_dkn_auth-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "odoo/addons/dkn_auth/__manifest__.py" in names
    assert "odoo/addons/dkn_auth/client/transport.py" in names
    assert "odoo/addons/dkn_auth/controllers/health.py" in names
    # odoo/ and odoo/addons/ belong to Odoo: the wheel must not own them.
    assert "odoo/__init__.py" not in names and "odoo/addons/__init__.py" not in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    _load_as_addon(target / "odoo" / "addons", monkeypatch, memory_sidecar)
