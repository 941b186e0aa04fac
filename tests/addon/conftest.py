"""Fixtures: a real odoo-session-sidecar process (memory or Redis driver).

The binary is ``$DKN_SIDECAR_BIN`` or ``${CARGO_TARGET_DIR:-target}/debug/odoo-session-sidecar``
(build it first: ``cargo build -p odoo-session-sidecar``). Redis tests start their
own ``redis-server`` on a free loopback port and are skipped only when
``redis-server`` is not installed.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "addons"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def sidecar_bin():
    explicit = os.environ.get("DKN_SIDECAR_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug" / "odoo-session-sidecar"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sidecar:
    def __init__(self, args, tmp, port=None, unix_socket=None, env=None):
        self.binary = sidecar_bin()
        if not self.binary.is_file():
            pytest.fail(
                f"sidecar binary not found at {self.binary}: build it with "
                "`cargo build -p odoo-session-sidecar` or set DKN_SIDECAR_BIN"
            )
        self.args = list(args)
        self.tmp = Path(tmp)
        self.port = port
        self.unix_socket = unix_socket
        # The tests set DKN_AUTH_* for the addon; the sidecar gets only its flags.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DKN_AUTH_")}
        self.env.update(env or {})
        self.proc = None
        self.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        cmd = [str(self.binary), *self.args]
        if self.port is None:
            self.port = free_port()
        if self.unix_socket:
            cmd += ["--socket", str(self.unix_socket)]  # replaces the TCP listener
        else:
            cmd += ["--listen", f"127.0.0.1:{self.port}"]
        self.log = open(self.tmp / f"sidecar-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}: {self.read_log()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"sidecar did not become healthy: {self.read_log()}")

    def healthy(self):
        if self.unix_socket:
            from dkn_auth.client.config import Settings
            from dkn_auth.client.transport import Transport, TransportError

            transport = Transport(Settings(socket=str(self.unix_socket), timeout=0.5))
            try:
                return transport.request("GET", "/healthz")[0] == 200
            except TransportError:
                return False
            finally:
                transport.close()
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=0.5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def read_log(self):
        self.log.flush()
        return (self.tmp / f"sidecar-{self.port}.log").read_text(errors="replace")[-4000:]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        self.start()


class Redis:
    def __init__(self, tmp):
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.tmp = Path(tmp)
        self.proc = None
        self.start()

    @property
    def uri(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def tmp_root():
    with tempfile.TemporaryDirectory(prefix="dkn-auth-tests-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def memory_sidecar(tmp_root):
    sc = Sidecar(["--driver", "memory"], tmp_root)
    yield sc
    sc.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_root):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    r = Redis(tmp_root)
    yield r
    r.stop()


@pytest.fixture(scope="session")
def redis_sidecar(tmp_root, redis_server):
    sc = Sidecar(["--driver", "redis", "--redis-uri", redis_server.uri], tmp_root)
    yield sc
    sc.stop()


@pytest.fixture(params=["memory", "redis"])
def sidecar(request):
    return request.getfixturevalue(f"{request.param}_sidecar")


@pytest.fixture
def own_sidecar(tmp_root):
    """A sidecar this test may stop and restart."""
    sc = Sidecar(["--driver", "memory"], tmp_root)
    yield sc
    sc.stop()


@pytest.fixture
def settings_for():
    from dkn_auth.client.config import Settings

    def make(sc, **kw):
        return Settings(url=sc.url, **kw)

    return make
