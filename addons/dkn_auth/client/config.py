"""Settings of the addon.

Each setting is an environment variable ``DKN_AUTH_*`` or, for installations
without Kubernetes, an ``odoo.conf`` ``[options]`` key of the same name in lower
case. The environment wins over the file, the file over the default.
"""

import os
import urllib.parse

DEFAULT_URL = "http://127.0.0.1:7070"


class ConfigError(ValueError):
    """A setting has a value the addon cannot use; ``setting`` names it."""

    def __init__(self, setting, message):
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class Settings:
    """The addon's settings (no dataclass: Odoo 14 still runs on Python 3.6)."""

    __slots__ = ("url", "socket", "expiry", "anonymous_expiry", "timeout", "refresh_interval")

    def __init__(
        self,
        url=DEFAULT_URL,
        socket="",
        expiry=604800,
        anonymous_expiry=10800,
        timeout=2.0,
        refresh_interval=3600,
    ):
        self.url = url
        self.socket = socket
        self.expiry = expiry
        self.anonymous_expiry = anonymous_expiry
        self.timeout = timeout
        self.refresh_interval = refresh_interval

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Settings({fields})"

    def __eq__(self, other):
        if not isinstance(other, Settings):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None

    @property
    def host(self):
        return urllib.parse.urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self):
        return urllib.parse.urlsplit(self.url).port or 80

    def describe(self):
        if self.socket:
            return f"unix:{self.socket}"
        return self.url


def _lookup(name, options):
    value = os.environ.get(name)
    if value is not None and value.strip() != "":
        return value.strip()
    if options is not None:
        try:
            value = options.get(name.lower())
        except (AttributeError, KeyError, TypeError):
            value = None
        # odoo.conf values are strings; unset options are often None/False.
        if value not in (None, False, ""):
            return str(value).strip()
    return None


def _int(name, raw, default, minimum, maximum):
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected a whole number of seconds, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(name, f"must be between {minimum} and {maximum}, got {value}")
    return value


def load_settings(options=None):
    """Read the settings from the environment and ``options`` (odoo.conf).

    ``options`` is any mapping with ``.get`` (``odoo.tools.config``). Raises
    :class:`ConfigError` naming the first bad setting.
    """
    url = _lookup("DKN_AUTH_URL", options) or DEFAULT_URL
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError("DKN_AUTH_URL", f"expected http://host:port, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError("DKN_AUTH_URL", f"must not carry a path or query, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("DKN_AUTH_URL", f"bad port in {url!r}") from None
    socket_path = _lookup("DKN_AUTH_SOCKET", options) or ""
    if socket_path and not os.path.isabs(socket_path):
        raise ConfigError("DKN_AUTH_SOCKET", f"must be an absolute path, got {socket_path!r}")
    expiry = _int("DKN_AUTH_EXPIRY", _lookup("DKN_AUTH_EXPIRY", options), 604800, 60, 31536000)
    anonymous = _int(
        "DKN_AUTH_ANONYMOUS_EXPIRY",
        _lookup("DKN_AUTH_ANONYMOUS_EXPIRY", options),
        10800,
        60,
        31536000,
    )
    raw_timeout = _lookup("DKN_AUTH_TIMEOUT", options)
    timeout = 2.0
    if raw_timeout is not None:
        try:
            timeout = float(raw_timeout)
        except ValueError:
            raise ConfigError("DKN_AUTH_TIMEOUT", f"expected seconds, got {raw_timeout!r}") from None
        if not 0.01 <= timeout <= 60:
            raise ConfigError("DKN_AUTH_TIMEOUT", f"must be between 0.01 and 60 seconds, got {timeout}")
    refresh = _int(
        "DKN_AUTH_REFRESH_INTERVAL",
        _lookup("DKN_AUTH_REFRESH_INTERVAL", options),
        3600,
        0,
        31536000,
    )
    return Settings(
        url=url.rstrip("/"),
        socket=socket_path,
        expiry=expiry,
        anonymous_expiry=anonymous,
        timeout=timeout,
        refresh_interval=refresh,
    )
