#!/usr/bin/env python3
"""Build the ``odoo-session-sidecar`` wheel around an already built binary.

    python3 packaging/wheel/build_wheel.py --out dist/ \
        --binary target/x86_64-unknown-linux-musl/release/odoo-session-sidecar

``pip install odoo_session_sidecar-*.whl`` (or ``pip install odoo-session-sidecar`` from an
index) then puts the native ``odoo-session-sidecar`` on the environment's ``PATH``, beside
an Odoo installed with pip and the ``odoo-addon-dkn_auth`` wheel: no Rust toolchain, and no
Python between the binary and its signals (the binary itself is the installed script, in
the wheel's ``.data/scripts``, as ruff and uv ship theirs).

The platform tag comes from the binary (ELF header): a static binary (no ``PT_INTERP``, as
the release's musl builds are) gets ``manylinux_2_17_<arch>.manylinux2014_<arch>.musllinux_1_1_<arch>``:
it runs on any Linux of that architecture; a binary linked against glibc gets
``manylinux_<X>_<Y>_<arch>`` for the glibc of the machine that built it. ``--platform``
overrides it. Standard library only (Python 3.8+), reproducible (fixed timestamps).
"""

import argparse
import base64
import hashlib
import io
import os
import re
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

NAME = "odoo-session-sidecar"
DIST = "odoo_session_sidecar"
ROOT = Path(__file__).resolve().parents[2]
# 1980-01-01, the earliest date a zip holds: the same binary gives the same wheel.
EPOCH = (1980, 1, 1, 0, 0, 0)
ARCHES = {62: "x86_64", 183: "aarch64"}

INIT = '''"""The odoo-session-sidecar binary installed by this wheel."""

import os
import sys
import sysconfig

__version__ = "{version}"


def binary():
    """Path of the installed ``odoo-session-sidecar`` executable."""
    name = "odoo-session-sidecar"
    for scheme in (None, "posix_user"):
        try:
            scripts = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:
            continue
        path = os.path.join(scripts, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(name + " is not installed next to " + sys.executable)


def main():
    path = binary()
    os.execv(path, [path, *sys.argv[1:]])
'''

MAIN = """from odoo_session_sidecar import main

main()
"""


def elf_facts(path):
    """``(arch, static)`` of an ELF executable."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            raise SystemExit(f"{path}: not a 64-bit ELF executable")
        endian = "<" if head[5] == 1 else ">"
        machine = struct.unpack(endian + "H", head[18:20])[0]
        phoff = struct.unpack(endian + "Q", head[32:40])[0]
        phentsize, phnum = struct.unpack(endian + "HH", head[54:58])
        static = True
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(endian + "I", f.read(4))
            if p_type == 3:  # PT_INTERP: a dynamic loader is needed
                static = False
    if machine not in ARCHES:
        raise SystemExit(f"{path}: unsupported architecture (ELF machine {machine})")
    return ARCHES[machine], static


def platform_tag(path):
    arch, static = elf_facts(path)
    if static:
        return f"manylinux_2_17_{arch}.manylinux2014_{arch}.musllinux_1_1_{arch}"
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    m = re.match(r"glibc (\d+)\.(\d+)", libc)
    if not m:
        raise SystemExit(
            f"{path} is linked dynamically and this machine's glibc is unknown: pass --platform"
        )
    return f"manylinux_{m.group(1)}_{m.group(2)}_{arch}"


def version_of(path):
    """``odoo-session-sidecar --version`` (``odoo-session-sidecar 0.1.0``), else Cargo.toml's."""
    try:
        out = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.split()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        text = (ROOT / "Cargo.toml").read_text()
        m = re.search(
            r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S
        )
        if not m:
            raise SystemExit("no version: pass --version") from None
        return m.group(1)


def metadata(version):
    readme = (Path(__file__).resolve().parent / "README.md").read_text()
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {NAME}\n"
        f"Version: {version}\n"
        "Summary: The session sidecar of odoo-ha-session: shared Odoo login sessions on Redis/PostgreSQL\n"
        "Home-page: https://github.com/odoo-ha-session/odoo-ha-session\n"
        "License: Apache-2.0\n"
        "Classifier: Framework :: Odoo\n"
        "Classifier: License :: OSI Approved :: Apache Software License\n"
        "Classifier: Operating System :: POSIX :: Linux\n"
        "Classifier: Programming Language :: Rust\n"
        "Requires-Python: >=3.6\n"
        "Description-Content-Type: text/markdown\n"
        "\n" + readme
    )


def record_line(name, data):
    digest = (
        base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    )
    return f"{name},sha256={digest},{len(data)}"


def build(binary, out_dir, version=None, platform=None):
    binary = Path(binary)
    version = version or version_of(binary)
    if not re.match(r"^\d+(\.\d+)*([ab]|rc)?\d*(\.post\d+)?(\.dev\d+)?$", version):
        raise SystemExit(f"{version!r} is not a PEP 440 version")
    platform = platform or platform_tag(binary)
    tag = f"py3-none-{platform}"
    info = f"{DIST}-{version}.dist-info"
    data = f"{DIST}-{version}.data"
    wheel_text = "Wheel-Version: 1.0\nGenerator: odoo-ha-session build_wheel.py\nRoot-Is-Purelib: false\n"
    for one in platform.split("."):
        wheel_text += f"Tag: py3-none-{one}\n"
    files = [
        (f"{DIST}/__init__.py", INIT.format(version=version).encode(), 0o644),
        (f"{DIST}/__main__.py", MAIN.encode(), 0o644),
        (f"{data}/scripts/{NAME}", binary.read_bytes(), 0o755),
        (f"{info}/METADATA", metadata(version).encode(), 0o644),
        (f"{info}/WHEEL", wheel_text.encode(), 0o644),
        (f"{info}/top_level.txt", f"{DIST}\n".encode(), 0o644),
    ]
    record = [record_line(name, body) for name, body, _ in files]
    record.append(f"{info}/RECORD,,")
    files.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode(), 0o644))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{DIST}-{version}-{tag}.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body, mode in files:
            zi = zipfile.ZipInfo(name, EPOCH)
            zi.external_attr = (stat.S_IFREG | mode) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, body)
    wheel.write_bytes(buf.getvalue())
    return wheel


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--binary", required=True, help="the odoo-session-sidecar executable to carry"
    )
    p.add_argument(
        "--out", default="dist", help="directory for the wheel (default: dist)"
    )
    p.add_argument(
        "--version", help="the wheel's version (default: the binary's --version)"
    )
    p.add_argument(
        "--platform", help="platform tag (default: from the binary, see above)"
    )
    args = p.parse_args(argv)
    print(build(args.binary, args.out, args.version, args.platform))


if __name__ == "__main__":
    sys.exit(main())
