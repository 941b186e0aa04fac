"""Keep-alive HTTP/1.1 to the sidecar, one connection per thread or greenlet.

``threading.local`` gives one connection per thread; gevent's monkey patching
(done by Odoo before any addon is imported) turns it into one per greenlet.
Connections are opened on first use and tagged with the process id, so a
connection inherited through ``fork`` (prefork workers) is never shared with
the parent: the child opens its own.
"""

import errno
import http.client
import os
import socket
import threading

# Errors that mean "the idle keep-alive connection was closed by the other
# side before we used it": the request was not processed, sending it again on
# a fresh connection is safe.
_STALE_ERRORS = (
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


class TransportError(Exception):
    """The sidecar could not be reached or did not answer in time."""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _TCPConnection(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        # Small request/response pairs: never wait for Nagle.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Transport:
    def __init__(self, settings):
        self.settings = settings
        self._local = threading.local()

    def _new_connection(self):
        s = self.settings
        if s.socket:
            return UnixHTTPConnection(s.socket, timeout=s.timeout)
        return _TCPConnection(s.host, s.port, timeout=s.timeout)

    def _connection(self):
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn, True
        # Never close an inherited connection: the parent still uses the socket.
        conn = self._new_connection()
        local.conn = conn
        local.pid = os.getpid()
        return conn, False

    def _drop(self):
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and self._local.pid == os.getpid():
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
        for attempt in (0, 1):
            conn, reused = self._connection()
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
            except _STALE_ERRORS as exc:
                self._drop()
                if reused and attempt == 0:
                    continue
                raise TransportError(f"connection to the sidecar broke: {exc!r}") from exc
            except TimeoutError as exc:
                self._drop()
                raise TransportError("the sidecar did not answer in time") from exc
            except OSError as exc:
                self._drop()
                reason = errno.errorcode.get(exc.errno, "") if exc.errno else ""
                raise TransportError(
                    f"cannot reach the sidecar at {self.settings.describe()}: {reason or exc}"
                ) from exc
            except http.client.HTTPException as exc:
                self._drop()
                raise TransportError(f"bad answer from the sidecar: {exc!r}") from exc
            if resp.will_close:
                self._drop()
            return resp.status, resp.headers, data
        raise AssertionError("unreachable")  # pragma: no cover
