"""Keep-alive HTTP/1.1 to the sidecar, one connection per thread or greenlet.

``threading.local`` gives one connection per thread; gevent's monkey patching
(done by Odoo before any addon is imported) turns it into one per greenlet.
Connections are opened on first use and tagged with the process id, so a
connection inherited through ``fork`` (prefork workers) is never shared with
the parent: the child opens its own.

The protocol code is a small HTTP/1.1 client rather than ``http.client``: the
sidecar is a known peer on loopback, and ``http.client`` costs about 100 µs
more per call (a new file object and an e-mail header parser per response),
which is most of the addon's per-request cost. It handles what a server may
send: Content-Length or chunked bodies, bodiless statuses, ``Connection:
close``, and it bounds line lengths, header counts and body sizes.
"""

import os
import socket
import threading

MAX_LINE = 65536
MAX_HEADERS = 100
MAX_BODY = 64 * 1024 * 1024


class TransportError(Exception):
    """The sidecar could not be reached, did not answer in time, or broke the protocol."""


class _Stale(Exception):
    """The idle connection was closed by the peer before our request: safe to resend."""


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body


class Connection:
    def __init__(self, settings):
        self.settings = settings
        if settings.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = settings.socket
            self.host_header = b"localhost"
        else:
            sock = None
            address = (settings.host, settings.port)
            self.host_header = f"{settings.host}:{settings.port}".encode("ascii")
        try:
            if sock is None:
                sock = socket.create_connection(address, timeout=settings.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                sock.settimeout(settings.timeout)
                sock.connect(address)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.pid = os.getpid()
        self.used = False

    def close(self):
        try:
            self.reader.close()
        finally:
            self.sock.close()

    def _line(self):
        line = self.reader.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise TransportError("sidecar sent an over-long line")
        return line

    def exchange(self, method, path, body, headers):
        head = [f"{method} {path} HTTP/1.1".encode("ascii"), b"Host: " + self.host_header]
        for name, value in headers.items():
            head.append(f"{name}: {value}".encode("latin-1"))
        if body is not None:
            head.append(b"Content-Length: " + str(len(body)).encode("ascii"))
        # One send for the whole request: no Nagle/delayed-ACK stall.
        data = b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")
        reused, self.used = self.used, True
        try:
            self.sock.sendall(data)
            status_line = self._line()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            if reused:
                raise _Stale() from exc
            raise
        if not status_line:
            if reused:
                raise _Stale()
            raise TransportError("the sidecar closed the connection without answering")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise TransportError(f"bad status line from the sidecar: {status_line[:80]!r}")
        status = int(parts[1])
        hdrs = {}
        for _ in range(MAX_HEADERS + 1):
            line = self._line()
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise TransportError("the sidecar closed the connection in the headers")
            name, sep, value = line.partition(b":")
            if not sep:
                raise TransportError(f"bad header line from the sidecar: {line[:80]!r}")
            hdrs[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        else:
            raise TransportError("the sidecar sent too many headers")
        keep_alive = hdrs.get("connection", "").lower() != "close" and parts[0] != b"HTTP/1.0"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            payload = b""
        elif "chunked" in hdrs.get("transfer-encoding", "").lower():
            payload = self._chunked()
        elif "content-length" in hdrs:
            try:
                length = int(hdrs["content-length"])
            except ValueError:
                raise TransportError("bad Content-Length from the sidecar") from None
            if not 0 <= length <= MAX_BODY:
                raise TransportError(f"answer of {length} bytes refused")
            payload = self.reader.read(length)
            if len(payload) != length:
                raise TransportError("the sidecar closed the connection in the body")
        else:
            payload = self.reader.read(MAX_BODY + 1)
            if len(payload) > MAX_BODY:
                raise TransportError("answer too large")
            keep_alive = False
        return Response(status, hdrs, payload), keep_alive

    def _chunked(self):
        chunks = []
        total = 0
        while True:
            size_line = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise TransportError("bad chunk size from the sidecar") from None
            if size == 0:
                while self._line() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                raise TransportError("answer too large")
            chunk = self.reader.read(size)
            if len(chunk) != size:
                raise TransportError("the sidecar closed the connection in the body")
            chunks.append(chunk)
            self._line()


class Transport:
    def __init__(self, settings):
        self.settings = settings
        self._local = threading.local()

    @property
    def connection(self):
        """This thread's (greenlet's) open connection, if any."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.pid == os.getpid():
            return conn
        return None

    def _drop(self):
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        # Never close a connection inherited through fork: the parent still uses it.
        if conn is not None and conn.pid == os.getpid():
            conn.close()

    def close(self):
        self._drop()

    def request(self, method, path, body=None, headers=None):
        """Send one request; return ``(status, headers, body_bytes)``.

        Raises :class:`TransportError` when the sidecar is unreachable, times
        out or breaks the connection.
        """
        hdrs = {"Accept": "application/json"}
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        if headers:
            hdrs.update(headers)
        for _attempt in (0, 1):
            conn = self.connection
            try:
                if conn is None:
                    conn = self._local.conn = Connection(self.settings)
                response, keep_alive = conn.exchange(method, path, body, hdrs)
            except _Stale:
                self._drop()
                continue
            except TimeoutError as exc:
                self._drop()
                raise TransportError("the sidecar did not answer in time") from exc
            except TransportError:
                self._drop()
                raise
            except OSError as exc:
                self._drop()
                if isinstance(exc, socket.timeout):  # Python < 3.10
                    raise TransportError("the sidecar did not answer in time") from exc
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise TransportError(
                    f"cannot reach the sidecar at {self.settings.describe()}: {reason}"
                ) from exc
            if not keep_alive:
                self._drop()
            return response.status, response.headers, response.body
        raise TransportError("the sidecar closed the connection twice in a row")
