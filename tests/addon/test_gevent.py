"""Under gevent (Odoo's websocket/longpolling process) each greenlet has its own connection."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import json, sys, secrets
import gevent
sys.path.insert(0, sys.argv[2])
from dkn_auth.client import Client
from dkn_auth.client.config import Settings

client = Client(Settings(url=sys.argv[1]))
seen = {}

def work(n):
    for _ in range(20):
        sid = secrets.token_hex(20)
        client.put(sid, {"greenlet": n}, create_only=True)
        assert client.get(sid).data == {"greenlet": n}
        gevent.sleep(0)
    seen[n] = client.transport._local.conn.sock.getsockname()[1]

gevent.joinall([gevent.spawn(work, n) for n in range(5)], raise_error=True)
print(json.dumps(seen))
"""


def test_one_connection_per_greenlet(memory_sidecar):
    pytest.importorskip("gevent")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, memory_sidecar.url, str(ROOT / "addons")],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    ports = json.loads(out.stdout)
    assert len(ports) == 5 and len(set(ports.values())) == 5
