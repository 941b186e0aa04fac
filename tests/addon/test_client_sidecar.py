"""The client against a real sidecar process: transport, API mapping, identifiers."""

import os
import secrets
import shutil
import socket
import threading
import time

import pytest

from dkn_auth.client import BadRequest, Client, Gone, NotFound, PreconditionFailed, Unavailable
from dkn_auth.client import api as api_module
from dkn_auth.client.config import Settings
from dkn_auth.client.transport import Transport


def sid40():
    return secrets.token_hex(20)


def sid84():
    return secrets.token_urlsafe(63)


@pytest.fixture
def client(sidecar, settings_for):
    c = Client(settings_for(sidecar))
    yield c
    c.close()


@pytest.mark.parametrize("make_sid", [sid40, sid84])
def test_session_lifecycle(client, make_sid):
    sid = make_sid()
    assert client.get(sid) is None
    v1 = client.put(sid, {"uid": 2, "ctx": {"lang": "en_US"}}, ttl=600, create_only=True)
    rec = client.get(sid)
    assert rec.version == v1 and rec.data == {"uid": 2, "ctx": {"lang": "en_US"}}
    assert 590 <= rec.ttl <= 600
    with pytest.raises(PreconditionFailed) as info:
        client.put(sid, {"x": 1}, create_only=True)
    assert info.value.current_version == v1
    v2 = client.patch(sid, set_={"a": 1}, remove=["ctx"], ttl=900)
    assert v2 > v1
    rec = client.get(sid)
    assert rec.data == {"uid": 2, "a": 1} and rec.ttl > 600
    # A patch that changes nothing keeps the version.
    assert client.patch(sid, set_={"a": 1}) == v2
    with pytest.raises(PreconditionFailed):
        client.patch(sid, set_={"a": 2}, if_match=v1)
    client.delete(sid)
    assert client.get(sid) is None
    with pytest.raises(Gone):
        client.patch(sid, set_={"a": 3})
    with pytest.raises(Gone):
        client.put(sid, {"a": 3}, create_only=True)
    client.delete(sid)  # deleting twice is fine


def test_patch_is_update_only(client):
    with pytest.raises(NotFound):
        client.patch(sid40(), set_={"a": 1})


def test_concurrent_patches_of_different_keys_both_survive(client):
    sid = sid40()
    client.put(sid, {"n": 0}, create_only=True)

    def worker(key):
        for i in range(50):
            client.patch(sid, set_={key: i})

    threads = [threading.Thread(target=worker, args=(f"k{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.get(sid).data == {"n": 0, "k0": 49, "k1": 49, "k2": 49, "k3": 49}


def test_rotate(client):
    old, new = sid84(), sid84()
    client.put(old, {"uid": 1, "a": 1}, create_only=True)
    client.rotate(old, new, set_={"b": 2}, remove=["a"], ttl=300)
    assert client.get(old) is None
    assert client.get(new).data == {"uid": 1, "b": 2}
    with pytest.raises(Gone):
        client.rotate(old, sid84(), set_={})
    with pytest.raises(NotFound):
        client.rotate(sid84(), sid84(), set_={})
    # Never-stored session (anonymous login): the new one is `data`.
    anon, logged = sid84(), sid84()
    client.rotate(anon, logged, data={"uid": 7})
    assert client.get(logged).data == {"uid": 7}
    with pytest.raises(PreconditionFailed):
        client.rotate(logged, new, set_={})


def test_soft_rotate_keeps_old_readable(client):
    old = sid84()
    new = old[:42] + sid84()[42:]
    client.put(old, {"uid": 1}, create_only=True)
    client.rotate(
        old, new, set_={"gc_previous_sessions": True}, keep_old={"ttl": 120, "set": {"next_sid": new}}
    )
    rec = client.get(old)
    assert rec.data["next_sid"] == new and rec.ttl <= 120
    assert client.get(new).data == {"uid": 1, "gc_previous_sessions": True}


def test_identifiers(client):
    sids = [sid84() for _ in range(3)]
    for sid in sids:
        client.put(sid, {"uid": 1}, create_only=True)
    absent = [sid84()[:42] for _ in range(2)]
    ids = [s[:42] for s in sids]
    assert client.missing_identifiers(ids + absent) == set(absent)
    assert client.delete_identifiers(ids[:2]) == 2
    assert client.get(sids[0]) is None and client.get(sids[2]) is not None
    assert client.missing_identifiers(ids) == set(ids[:2])


def test_identifier_batches(client, monkeypatch):
    calls = []
    real = client._call

    def counting(method, path, *args, **kwargs):
        calls.append(path)
        return real(method, path, *args, **kwargs)

    monkeypatch.setattr(client, "_call", counting)
    live = sid84()
    client.put(live, {}, create_only=True)
    # One Odoo cron batch (100,000 identifiers), split into calls of IDENTIFIER_BATCH.
    ids = [sid84()[:42] for _ in range(99999)] + [live[:42]]
    calls.clear()
    missing = client.missing_identifiers(ids)
    assert len(missing) == len(ids) - 1 and live[:42] not in missing
    assert calls.count("/v1/identifiers/missing") == -(-len(ids) // api_module.IDENTIFIER_BATCH)
    calls.clear()
    assert client.delete_identifiers(ids[-2500:]) == 1
    assert calls.count("/v1/identifiers/delete") == -(-2500 // api_module.DELETE_BATCH)
    assert client.get(live) is None


def test_bad_input_is_bad_request(client):
    with pytest.raises(BadRequest) as info:
        client.put("not-a-sid", {"a": 1})
    assert info.value.status == 400 and info.value.code == "invalid_sid"
    with pytest.raises(BadRequest) as info:
        client.delete_identifiers(["short"])
    assert info.value.code == "invalid_identifier"


def test_one_connection_per_thread_reused(memory_sidecar, settings_for):
    client = Client(settings_for(memory_sidecar))
    client.get(sid40())
    conn = client.transport._local.conn
    sock = conn.sock
    for _ in range(20):
        client.get(sid40())
    assert client.transport._local.conn is conn and conn.sock is sock
    other = []
    t = threading.Thread(target=lambda: (client.get(sid40()), other.append(client.transport._local.conn)))
    t.start()
    t.join()
    assert other[0] is not conn


def test_reconnects_once_after_sidecar_restart(own_sidecar, settings_for):
    client = Client(settings_for(own_sidecar))
    sid = sid40()
    client.put(sid, {"a": 1}, create_only=True)
    own_sidecar.restart()  # same port, the kept-alive connection is now dead
    assert client.get(sid) is None  # memory driver: restarted empty, but answered


def test_unreachable_is_unavailable(settings_for):
    class Closed:
        url = "http://127.0.0.1:1"

    client = Client(Settings(url="http://127.0.0.1:1", timeout=0.5))
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as info:
        client.get(sid40())
    assert time.monotonic() - t0 < 2
    assert info.value.status == 0 and "127.0.0.1:1" in info.value.message


def test_timeout_is_unavailable():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        client = Client(Settings(url=f"http://127.0.0.1:{port}", timeout=0.3))
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            client.get(sid40())  # accepted by the kernel, never answered
        assert time.monotonic() - t0 < 1.5
    finally:
        server.close()


def test_unix_socket(tmp_root):
    from conftest import Sidecar

    path = tmp_root / f"sc-{os.getpid()}.sock"
    sc = Sidecar(["--driver", "memory"], tmp_root, unix_socket=path)
    try:
        client = Client(Settings(socket=str(path)))
        sid = sid40()
        client.put(sid, {"via": "unix"}, create_only=True)
        assert client.get(sid).data == {"via": "unix"}
        assert client.transport._local.conn.sock.family == socket.AF_UNIX
    finally:
        sc.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another user")
def test_unix_socket_serves_another_user_whatever_the_umask():
    """In a Pod the sidecar (uid 65532) and Odoo (its image's user) share the socket's
    emptyDir: connecting needs write permission on the socket, which a umask of 022 or 077
    would keep from Odoo's user."""
    import tempfile

    from conftest import Sidecar

    directory = tempfile.mkdtemp(prefix="dkn-sock-")
    os.chmod(directory, 0o755)  # noqa: S103 - reachable by the other user, as an emptyDir is
    path = os.path.join(directory, "sidecar.sock")
    old_umask = os.umask(0o077)
    try:
        sc = Sidecar(["--driver", "memory"], directory, unix_socket=path)
    finally:
        os.umask(old_umask)
    try:
        assert os.stat(path).st_mode & 0o777 == 0o666
        sid = sid40()
        Client(Settings(socket=path)).put(sid, {"who": "root"}, create_only=True)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                other = Client(Settings(socket=path))
                code = 0 if other.get(sid).data == {"who": "root"} else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "uid 65534 could not use the socket"
    finally:
        sc.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_child_process_opens_its_own_connection(memory_sidecar, settings_for):
    client = Client(settings_for(memory_sidecar))
    client.get(sid40())
    parent_port = client.transport._local.conn.sock.getsockname()[1]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(r)
            client.get(sid40())
            child_port = client.transport._local.conn.sock.getsockname()[1]
            os.write(w, str(child_port).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    child_port = int(os.read(r, 100) or b"0")
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert child_port and child_port != parent_port
    client.get(sid40())  # the parent's connection still works
    assert client.transport._local.conn.sock.getsockname()[1] == parent_port


def test_redis_down_is_503_then_recovers(redis_sidecar, redis_server, settings_for):
    client = Client(settings_for(redis_sidecar, timeout=5))
    sid = sid40()
    client.put(sid, {"a": 1}, create_only=True)
    redis_server.stop()
    try:
        with pytest.raises(Unavailable) as info:
            client.get(sid)
        assert info.value.status == 503 and info.value.code == "backend_unavailable"
        # /readyz means "this sidecar is up and configured" (a backend outage must not
        # take every pod out of its Service); ?backend=1 also pings the backend (older
        # sidecars ignore the query and always did).
        assert client.transport.request("GET", "/readyz?backend=1")[0] == 503
    finally:
        redis_server.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and client.transport.request("GET", "/readyz?backend=1")[0] != 200:
        time.sleep(0.2)
    assert client.ready()
    assert client.get(sid) is None  # the Redis server restarted empty (no persistence)


def test_transport_request_raw(memory_sidecar, settings_for):
    t = Transport(settings_for(memory_sidecar))
    status, headers, body = t.request("GET", "/healthz")
    assert status == 200
