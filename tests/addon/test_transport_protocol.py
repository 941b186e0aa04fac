"""The HTTP/1.1 client against scripted peers: framing, limits, stale connections."""

import socket
import threading

import pytest

from dkn_auth.client.config import Settings
from dkn_auth.client.transport import Transport, TransportError


class Peer:
    """Accepts connections and answers each request with the next canned reply.

    A reply of ``None`` closes the connection without answering.
    """

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests = []
        self.connections = 0
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while self.replies:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            # The file object holds the socket open: close both on exit.
            with conn, conn.makefile("rb") as reader:
                while self.replies:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = reader.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    self.requests.append(head + reader.read(length))
                    reply = self.replies.pop(0)
                    if reply is None:
                        break
                    conn.sendall(reply)
                    if b"Connection: close" in reply:
                        break

    def transport(self, timeout=1.0):
        return Transport(Settings(url=f"http://127.0.0.1:{self.port}", timeout=timeout))


def test_content_length_and_keep_alive():
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
    peer = Peer([reply, reply])
    t = peer.transport()
    assert t.request("GET", "/a")[0] == 200
    assert t.request("PATCH", "/b", b'{"set":{}}')[2] == b"{}"
    assert peer.connections == 1
    assert peer.requests[1].startswith(b"PATCH /b HTTP/1.1\r\n")
    assert b"Content-Length: 10\r\n" in peer.requests[1] and peer.requests[1].endswith(b'{"set":{}}')


def test_chunked_body():
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3\r\n{"a\r\n4;x=1\r\n": 1\r\n1\r\n}\r\n0\r\n\r\n'
    )
    status, headers, body = Peer([reply]).transport().request("GET", "/")
    assert (status, body) == (200, b'{"a": 1}')


def test_no_content_and_connection_close():
    peer = Peer([b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbye"])
    t = peer.transport()
    assert t.request("DELETE", "/x")[0] == 204
    assert t.request("GET", "/y")[2] == b"bye"  # read to the end, then the connection is dropped
    assert t.connection is None


def test_stale_idle_connection_is_retried_once():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    peer = Peer([ok, None, ok])  # the second request finds the connection closed
    t = peer.transport()
    assert t.request("GET", "/1")[0] == 200
    assert t.request("GET", "/2")[0] == 200
    assert peer.connections == 2


def test_fresh_connection_closed_is_an_error():
    peer = Peer([None])
    with pytest.raises(TransportError, match="closed the connection"):
        peer.transport().request("GET", "/")


@pytest.mark.parametrize(
    "reply,message",
    [
        (b"SMTP ready\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n", "refused"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "too many headers"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n", "over-long line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    ],
)
def test_protocol_errors(reply, message):
    t = Peer([reply]).transport()
    with pytest.raises(TransportError, match=message):
        t.request("GET", "/")
    assert t.connection is None


def test_truncated_body():
    peer = Peer([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort"])
    with pytest.raises(TransportError, match="in the body"):
        peer.transport().request("GET", "/")
