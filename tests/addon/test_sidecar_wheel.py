"""The sidecar's wheel (packaging/wheel/build_wheel.py): built from the locally built binary,
installed with pip into a fresh virtual environment, ``odoo-session-sidecar`` on its PATH
answering ``--version`` and a session round trip on the memory driver; uninstalled cleanly."""

import base64
import hashlib
import importlib.util
import os
import struct
import subprocess
import sys
import time
import zipfile

import pytest

from conftest import ROOT, free_port, sidecar_bin
from dkn_auth.client import Client
from dkn_auth.client.config import Settings

SCRIPT = ROOT / "packaging" / "wheel" / "build_wheel.py"


def builder():
    spec = importlib.util.spec_from_file_location("build_wheel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cargo_version():
    text = (ROOT / "Cargo.toml").read_text()
    section = text.split("[workspace.package]", 1)[1]
    return section.split('version = "', 1)[1].split('"', 1)[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    binary = sidecar_bin()
    if not binary.is_file():
        pytest.fail(f"sidecar binary not found at {binary}: cargo build -p odoo-session-sidecar")
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--binary", str(binary), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    path = out / run.stdout.strip().rsplit("/", 1)[-1]
    assert path.is_file(), run.stdout
    return path


def test_wheel_metadata_and_record(wheel):
    version = cargo_version()
    name, ver, py, abi, plat = wheel.name[: -len(".whl")].split("-")
    assert (name, ver, py, abi) == ("odoo_session_sidecar", version, "py3", "none")
    assert plat.startswith(("manylinux_", "musllinux_"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = f"odoo_session_sidecar-{version}.dist-info"
        script = f"odoo_session_sidecar-{version}.data/scripts/odoo-session-sidecar"
        assert set(names) == {
            "odoo_session_sidecar/__init__.py",
            "odoo_session_sidecar/__main__.py",
            script,
            f"{info}/METADATA",
            f"{info}/WHEEL",
            f"{info}/top_level.txt",
            f"{info}/RECORD",
        }
        # The binary as built, executable.
        assert z.read(script) == sidecar_bin().read_bytes()
        assert (z.getinfo(script).external_attr >> 16) & 0o111
        wheel_file = z.read(f"{info}/WHEEL").decode()
        assert "Root-Is-Purelib: false" in wheel_file
        tags = [line.split(": ", 1)[1] for line in wheel_file.splitlines() if line.startswith("Tag: ")]
        assert tags == [f"py3-none-{p}" for p in plat.split(".")]
        meta = z.read(f"{info}/METADATA").decode()
        assert "Name: odoo-session-sidecar\n" in meta and f"Version: {version}\n" in meta
        record = z.read(f"{info}/RECORD").decode().splitlines()
        listed = {}
        for line in record:
            path, digest, size = line.rsplit(",", 2)
            listed[path] = (digest, size)
        assert set(listed) == set(names)
        assert listed[f"{info}/RECORD"] == ("", "")
        for path in names:
            if path.endswith("/RECORD"):
                continue
            body = z.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
            assert listed[path] == (f"sha256={want}", str(len(body))), path


def test_the_wheel_is_reproducible(wheel, tmp_path):
    again = builder().build(sidecar_bin(), tmp_path)
    assert again.name == wheel.name
    assert again.read_bytes() == wheel.read_bytes()


def _elf(machine, interp):
    """A minimal 64-bit little-endian ELF header with one program header."""
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<H", head, 18, machine)
    struct.pack_into("<Q", head, 32, 64)  # e_phoff
    struct.pack_into("<HH", head, 54, 56, 1)  # e_phentsize, e_phnum
    ph = bytearray(56)
    struct.pack_into("<I", ph, 0, 3 if interp else 1)
    return bytes(head + ph)


def test_static_binaries_get_the_portable_tags(tmp_path):
    b = builder()
    static = tmp_path / "static"
    static.write_bytes(_elf(183, interp=False))
    assert b.platform_tag(static) == ("manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64")
    dynamic = tmp_path / "dynamic"
    dynamic.write_bytes(_elf(62, interp=True))
    assert b.platform_tag(dynamic).startswith("manylinux_2_")
    assert b.platform_tag(dynamic).endswith("_x86_64")
    wheel = b.build(static, tmp_path / "out", version="1.2.3")
    assert wheel.name == (
        "odoo_session_sidecar-1.2.3-py3-none-"
        "manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64.whl"
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel):
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-index", "--no-deps", str(wheel)], check=True)
    return root


def test_pip_install_puts_the_sidecar_on_path(venv):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKN_AUTH_")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    out = subprocess.run(
        ["odoo-session-sidecar", "--version"], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"odoo-session-sidecar {cargo_version()}"
    found = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import odoo_session_sidecar as o; print(o.binary())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.strip() == str(venv / "bin" / "odoo-session-sidecar")
    via_module = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "odoo_session_sidecar", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert via_module.stdout == out.stdout


def test_the_installed_sidecar_serves_a_session(venv, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKN_AUTH_")}
    log = open(tmp_path / "sidecar.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(venv / "bin" / "odoo-session-sidecar"), "--driver", "memory", "--listen", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        client = Client(Settings(url=f"http://127.0.0.1:{port}", timeout=2.0))
        deadline = time.monotonic() + 20
        while not client.ready():
            assert proc.poll() is None, (tmp_path / "sidecar.log").read_text()
            assert time.monotonic() < deadline, "the installed sidecar never answered"
            time.sleep(0.05)
        sid = "0123456789abcdef0123456789abcdef01234567"
        assert client.put(sid, {"uid": 2}, ttl=600, create_only=True) == 1
        got = client.get(sid)
        assert got.data == {"uid": 2} and 590 <= got.ttl <= 600
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_pip_uninstall_removes_the_binary(tmp_path, wheel):
    root = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-index", "--no-deps", str(wheel)], check=True)
    assert (root / "bin" / "odoo-session-sidecar").is_file()
    subprocess.run([*pip, "uninstall", "-y", "odoo-session-sidecar"], check=True)
    assert not (root / "bin" / "odoo-session-sidecar").exists()
    site = subprocess.run(
        [str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('platlib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert not any(p.name.startswith("odoo_session_sidecar") for p in os.scandir(site) if p.is_dir())
