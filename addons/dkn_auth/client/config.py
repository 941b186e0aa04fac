"""Settings of the addon.

Each setting is an environment variable ``DKN_AUTH_*`` or, for installations
without Kubernetes, an ``odoo.conf`` ``[options]`` key of the same name in lower
case. The environment wins over the file, the file over the default.

When no URL is set, the address comes from the sidecar's own key: ``dkn_auth_listen``
(``DKN_AUTH_LISTEN``), so one odoo.conf read by Odoo and by ``odoo-session-sidecar
--config`` moves both; ``dkn_auth_socket`` is read by both already. Errors name the
setting as the user wrote it: the variable, or the odoo.conf key and the file.
"""

import os
import urllib.parse

DEFAULT_URL = "http://127.0.0.1:7070"


class ConfigError(ValueError):
    """A setting has a value the addon cannot use.

    ``setting`` is its variable name (``DKN_AUTH_EXPIRY``); ``source`` names it as the
    user wrote it (the variable, or ``dkn_auth_expiry in /etc/odoo/odoo.conf``), and the
    message starts with it.
    """

    def __init__(self, setting, message, source=None):
        self.source = source or setting
        super().__init__(f"{self.source}: {message}")
        self.setting = setting


class Settings:
    """The addon's settings (no dataclass: Odoo 14 still runs on Python 3.6)."""

    __slots__ = (
        "url",
        "socket",
        "expiry",
        "anonymous_expiry",
        "timeout",
        "refresh_interval",
        "address_source",
    )

    def __init__(
        self,
        url=DEFAULT_URL,
        socket="",
        expiry=604800,
        anonymous_expiry=10800,
        timeout=2.0,
        refresh_interval=3600,
        address_source="",
    ):
        self.url = url
        self.socket = socket
        self.expiry = expiry
        self.anonymous_expiry = anonymous_expiry
        self.timeout = timeout
        self.refresh_interval = refresh_interval
        # Which setting gave the address, as written ("" = the default).
        self.address_source = address_source

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


def _file_name(options):
    """The odoo.conf ``options`` was read from (``odoo.tools.config.rcfile``), if known."""
    path = getattr(options, "rcfile", None)
    return path if isinstance(path, str) and path else "odoo.conf"


def _find(name, options):
    """``(value, source)``: the variable's value, else the odoo.conf key's, else None.

    ``source`` names where it came from as the user wrote it.
    """
    value = os.environ.get(name)
    if value is not None and value.strip() != "":
        return value.strip(), name
    if options is not None:
        try:
            value = options.get(name.lower())
        except (AttributeError, KeyError, TypeError):
            value = None
        # odoo.conf values are strings; unset options are often None/False.
        if value not in (None, False, "") and str(value).strip() not in ("", "False"):
            return str(value).strip(), f"{name.lower()} in {_file_name(options)}"
    return None, name


def _lookup(name, options):
    return _find(name, options)[0]


def _int(name, found, default, minimum, maximum):
    raw, source = found
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected a whole number of seconds, got {raw!r}", source) from None
    if not minimum <= value <= maximum:
        raise ConfigError(name, f"must be between {minimum} and {maximum}, got {value}", source)
    return value


def url_of_listen(listen, source="DKN_AUTH_LISTEN"):
    """The URL that reaches a sidecar listening on ``listen`` (``DKN_AUTH_LISTEN``).

    ``127.0.0.1:7071`` -> ``http://127.0.0.1:7071``; a wildcard address (``0.0.0.0``,
    ``[::]``, with ``dkn_auth_allow_remote``) is reached on loopback.
    """
    text = listen.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        ipv6 = True
    else:
        host, sep, port = text.rpartition(":")
        ipv6 = False
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            "DKN_AUTH_LISTEN", f"expected an address like 127.0.0.1:7070, got {listen!r}", source
        )
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif ipv6 and host in ("::", "0:0:0:0:0:0:0:0"):
        host = "::1"
    if ipv6:
        host = f"[{host}]"
    return f"http://{host}:{int(port)}"


def load_settings(options=None):
    """Read the settings from the environment and ``options`` (odoo.conf).

    ``options`` is any mapping with ``.get`` (``odoo.tools.config``). Raises
    :class:`ConfigError` naming the first bad setting.
    """
    url, source = _find("DKN_AUTH_URL", options)
    address_source = source if url else ""
    if url is None:
        # No URL: the sidecar's own listen address, when the same file (or environment)
        # sets one, so that one key moves both.
        listen, listen_source = _find("DKN_AUTH_LISTEN", options)
        if listen is not None:
            url = url_of_listen(listen, listen_source)
            address_source = listen_source
        else:
            url = DEFAULT_URL
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError("DKN_AUTH_URL", f"expected http://host:port, got {url!r}", source)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError("DKN_AUTH_URL", f"must not carry a path or query, got {url!r}", source)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("DKN_AUTH_URL", f"bad port in {url!r}", source) from None
    socket_path, socket_source = _find("DKN_AUTH_SOCKET", options)
    socket_path = socket_path or ""
    if socket_path and not os.path.isabs(socket_path):
        raise ConfigError("DKN_AUTH_SOCKET", f"must be an absolute path, got {socket_path!r}", socket_source)
    if socket_path:
        address_source = socket_source
    expiry = _int("DKN_AUTH_EXPIRY", _find("DKN_AUTH_EXPIRY", options), 604800, 60, 31536000)
    anonymous = _int(
        "DKN_AUTH_ANONYMOUS_EXPIRY",
        _find("DKN_AUTH_ANONYMOUS_EXPIRY", options),
        10800,
        60,
        31536000,
    )
    raw_timeout, timeout_source = _find("DKN_AUTH_TIMEOUT", options)
    timeout = 2.0
    if raw_timeout is not None:
        try:
            timeout = float(raw_timeout)
        except ValueError:
            raise ConfigError(
                "DKN_AUTH_TIMEOUT", f"expected seconds, got {raw_timeout!r}", timeout_source
            ) from None
        if not 0.01 <= timeout <= 60:
            raise ConfigError(
                "DKN_AUTH_TIMEOUT",
                f"must be between 0.01 and 60 seconds, got {timeout}",
                timeout_source,
            )
    refresh = _int(
        "DKN_AUTH_REFRESH_INTERVAL",
        _find("DKN_AUTH_REFRESH_INTERVAL", options),
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
        address_source=address_source,
    )
