"""Is this process's sidecar reachable? For ``/web/health`` and the start-up check.

Importable without Odoo. ``/web/health`` (see ``..controllers``) answers
core's answer when the sidecar answers ``200`` on its ``/readyz`` and a 503
naming the sidecar's address and the error when it does not. ``/readyz``
means "this sidecar is up and configured": a shared backend outage (Redis,
PostgreSQL) does not fail it, so one backend outage never takes every pod
out of a load balancer at once.

A probe storm must not multiply calls: the answer is kept for
``CACHE_SECONDS`` per process (the cache is tagged with the process id, so a
prefork worker never uses an answer its master got before the fork), and
requests arriving while a check runs wait for that check instead of sending
their own. A check waits at most ``min(DKN_AUTH_TIMEOUT, PROBE_TIMEOUT)``.
"""

import json
import os
import threading
import time

from ..client import Client
from ..client.config import Settings

CACHE_SECONDS = 1.0
PROBE_TIMEOUT = 1.0  # seconds; a health route must answer quickly


def probe_settings(settings):
    """The addon's settings with the timeout capped at ``PROBE_TIMEOUT``."""
    fields = {name: getattr(settings, name) for name in Settings.__slots__}
    fields["timeout"] = min(settings.timeout, PROBE_TIMEOUT)
    return Settings(**fields)


def address_setting(settings):
    """The setting that sets the sidecar's address in use."""
    return "DKN_AUTH_SOCKET" if settings.socket else "DKN_AUTH_URL"


class HealthCheck:
    def __init__(self, settings, config_error=None, cache_seconds=CACHE_SECONDS, clock=time.monotonic):
        self.settings = settings
        self.config_error = config_error
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.client = Client(probe_settings(settings))
        self._lock = threading.Lock()  # a gevent lock once Odoo has monkey-patched
        self._cached = None  # (pid, monotonic time, ok, error)
        self.calls = 0  # /readyz calls made by this process (tests, diagnostics)

    @property
    def address(self):
        return self.settings.describe()

    def probe(self):
        """One uncached ``/readyz`` call: ``(ok, error)``."""
        if self.config_error is not None:
            return False, f"bad setting {self.config_error.setting}: {self.config_error}"
        self.calls += 1
        try:
            return self.client.readiness()
        finally:
            # One short connection per check: in threaded Odoo every request has
            # its own thread, and a kept-alive socket would outlive it.
            self.client.close()

    def _fresh(self):
        cached = self._cached
        if cached is None or cached[0] != os.getpid():
            return None
        if self.clock() - cached[1] >= self.cache_seconds:
            return None
        return cached[2], cached[3]

    def status(self):
        """``(ok, error)``, from a check at most ``cache_seconds`` old."""
        answer = self._fresh()
        if answer is not None:
            return answer
        with self._lock:
            answer = self._fresh()  # another thread or greenlet just checked
            if answer is not None:
                return answer
            ok, error = self.probe()
            self._cached = (os.getpid(), self.clock(), ok, error)
            return ok, error

    def failure_body(self, error):
        return json.dumps(
            {
                "status": "fail",
                "dkn_auth": "session sidecar unavailable",
                "sidecar": self.address,
                "setting": address_setting(self.settings),
                "error": error,
            }
        )


FAILURE_HEADERS = (
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("Retry-After", "5"),
)
