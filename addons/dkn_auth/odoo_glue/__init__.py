"""Install the sidecar session store into the running Odoo.

Called when the addon is imported as a server-wide module (and again, as a
no-op, by the manifest's ``post_load``): before any request, so the
filesystem store is never used.
"""

import functools
import importlib
import logging
import re
import sys

from . import health

_logger = logging.getLogger("odoo.addons.dkn_auth")

_installed = {}


def odoo_major(release):
    """14..19 from ``odoo.release.version_info`` (also 'saas~17' forms)."""
    first = release.version_info[0]
    if isinstance(first, int):
        return first
    match = re.search(r"(\d+)", str(first))
    if not match:
        raise RuntimeError(f"cannot read the Odoo version from {release.version_info!r}")
    return int(match.group(1))


def _options():
    try:
        from odoo.tools import config
    except ImportError:
        return None
    return config


def _replace_lazy(cls, name, factory):
    """Replace a lazily computed attribute with one of the same kind."""
    for klass in cls.__mro__:
        if name in vars(klass):
            existing = vars(klass)[name]
            break
    else:
        existing = None
    cached_property = getattr(functools, "cached_property", None)  # Python 3.8+
    if cached_property is not None and isinstance(existing, cached_property):
        prop = cached_property(factory)
    elif existing is not None and not isinstance(existing, property):
        prop = type(existing)(factory)  # odoo.tools.func.lazy_property
    else:
        from odoo.tools.func import lazy_property

        prop = lazy_property(factory)
    setattr(cls, name, prop)
    set_name = getattr(prop, "__set_name__", None)
    if set_name is not None:
        # A cached_property assigned after class creation has no name yet.
        set_name(cls, name)


def session_module(http):
    """``odoo.http.session`` when this Odoo keeps its store there (after 19), else ``None``.

    That layout has a module-level ``@functools.cache session_store()``
    instead of ``Application.session_store``.
    """
    if not hasattr(http, "__path__"):
        return None  # 14-19: odoo/http.py is a module, not a package
    try:
        module = importlib.import_module("odoo.http.session")
    except ImportError:
        return None
    return module if callable(getattr(module, "session_store", None)) else None


def _replace_module_store(module, factory):
    """Replace ``module.session_store()`` and every binding of it in loaded odoo modules.

    Code that did ``from odoo.http.session import session_store`` before the
    addon was loaded holds core's function: it is rebound too, so no caller
    can reach the filesystem store.
    """
    original = module.session_store
    missing = [n for n in ("cache_clear", "cache_info") if not hasattr(original, n)]
    store_cls = getattr(module, "SessionStore", None)
    if missing or store_cls is None or not hasattr(store_cls, "is_valid_session_id"):
        raise RuntimeError(
            "dkn_auth: odoo.http.session differs from what dkn_auth knows (a functools.cache "
            "session_store() and SessionStore.is_valid_session_id); refusing to guess"
        )
    if original.cache_info().currsize:
        _logger.warning(
            "dkn_auth: the session store was used before dkn_auth was loaded; "
            "load it with server_wide_modules (or --load) so no session is kept on disk"
        )
    original.cache_clear()

    @functools.cache
    def session_store():
        return factory(None)

    session_store.__doc__ = "The dkn_auth session store (one per process)."
    session_store._dkn_auth = True
    for name, loaded in list(sys.modules.items()):
        in_odoo = name == "odoo" or name.startswith("odoo.")
        if in_odoo and getattr(loaded, "session_store", None) is original:
            loaded.session_store = session_store
    module.session_store = session_store
    return session_store


def install():
    """Idempotent. Returns the store class installed."""
    if "store_class" in _installed:
        return _installed["store_class"]
    from odoo import http, release

    from ..client import Client, ConfigError, load_settings
    from ..client.config import Settings
    from . import wsgi
    from .store import make_session_class, make_store_class

    major = odoo_major(release)
    if major < 14:
        raise RuntimeError(f"dkn_auth supports Odoo 14 and later, not {major}")

    config_error = None
    try:
        settings = load_settings(_options())
    except ConfigError as exc:
        config_error = exc
        settings = Settings()
        # Fail closed: every request answers 503 until the setting is fixed,
        # rather than quietly keeping sessions on the local disk.
        _logger.critical("dkn_auth: bad setting %s, sessions are unavailable: %s", exc.setting, exc)

    module = session_module(http)
    base_session = getattr(module or http, "Session", None) or http.OpenERPSession
    session_class = make_session_class(base_session)
    if module is not None:
        store_class = make_store_class(module, major, layout="module")
    else:
        store_class = make_store_class(http, major)
    client = None if config_error else Client(settings)

    def session_store(self):
        return store_class(client, settings, session_class, config_error)

    root_cls = type(http.root)
    if module is not None:
        _replace_module_store(module, session_store)
    else:
        if "session_store" in vars(http.root):
            _logger.warning(
                "dkn_auth: the session store was used before dkn_auth was loaded; "
                "load it with server_wide_modules (or --load) so no session is kept on disk"
            )
        _replace_lazy(root_cls, "session_store", session_store)
        vars(http.root).pop("session_store", None)
    if hasattr(http, "session_gc"):
        # Odoo 14/15 randomly sweeps the session directory on requests.
        http.session_gc = lambda session_store: None
    if not getattr(root_cls.__call__, "_dkn_auth", False):
        root_cls.__call__ = wsgi.wrap(root_cls.__call__)

    check = health.HealthCheck(settings, config_error)
    _installed["store_class"] = store_class
    _installed["session_class"] = session_class
    _installed["settings"] = settings
    _installed["health"] = check
    if not config_error:
        _logger.info(
            "dkn_auth: Odoo %s sessions are kept by the sidecar at %s%s",
            major,
            settings.describe(),
            " (odoo.http.session layout)" if module is not None else "",
        )
        warn_if_sidecar_down(check)
    return store_class


def warn_if_sidecar_down(check):
    """Once at start: a WARNING when the sidecar does not answer ``/readyz``.

    Not fatal: Odoo often starts before its sidecar (a pod's containers start
    together). Requests needing a session answer 503 and ``/web/health``
    fails until the sidecar answers.
    """
    ok, error = check.probe()
    if not ok:
        _logger.warning(
            "dkn_auth: the sidecar at %s (set by %s) does not answer: %s; requests with a session "
            "answer 503 and /web/health fails until it does",
            check.address,
            health.address_setting(check.settings),
            error,
        )
    return ok


def health_check():
    """The installed :class:`health.HealthCheck`, or ``None`` when not installed."""
    return _installed.get("health")


def install_or_fail_closed():
    """``install()``, and if it breaks, make Odoo answer 503 rather than use files.

    Odoo only logs an exception raised while loading a server-wide module and
    carries on with its filesystem store: that silent fallback is what this
    prevents.
    """
    try:
        return install()
    except Exception:
        _logger.critical(
            "dkn_auth: cannot install the session store, every request answers 503", exc_info=True
        )
        from odoo import http

        from . import wsgi

        def refuse(self, environ, start_response):
            return wsgi.unavailable_response(start_response)

        type(http.root).__call__ = refuse
        return None


def uninstall_for_tests():
    """Forget the installation (tests build a fresh fake Odoo each time)."""
    _installed.clear()
