"""Minimal stand-ins for the parts of Odoo 14 to 19 the session store touches.

Written from the facts in docs/odoo-addon.md ("What each Odoo version calls"),
not copied from Odoo: per version the Session class (dict-based on 14/15,
``__slots__`` MutableMapping on 16-19 with pickle/JSON copies, properties on
19), the key format (40 hex / 84 URL-safe base64), how the store is created
(lazy property on ``Root``/``Application``, ``functools.cached_property`` on
19), and a WSGI entry point that loads, saves and rotates sessions the way
core does, including swallowing exceptions into its own error responses.

Controllers and routing (for ``/web/health``), per version: 14/15 register
controllers in ``controllers_per_module`` and keep a method's routing on
``.routing`` (an override without ``@route`` loses the route); 16+ register in
``Controller.children_classes`` and keep it on ``.original_routing`` (an
override without ``@route`` is decorated with a warning), ``route_wrapper``
drops parameters the endpoint does not take. Both build each top controller's
leaf subclasses among the given modules into one class, the no-database map
from ``[''] + server_wide_modules`` and only ``auth='none'`` routes. Core's
``Home.health``: none on 14 (none in the rebranded 14.0 tree read), ``health()`` on
15 and on the 17.0 snapshot read (early 17.0), ``health(db_server_status=False)``
on 16 (the later 16.0 read), 18 and 19; ``make_response`` takes a status on
16+ only.
"""

import base64
import collections.abc
import functools
import hashlib
import hmac
import inspect
import json
import os
import pickle
import re
import sys
import threading
import time
import types
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qsl

MODULES = (
    "odoo",
    "odoo.addons",
    "odoo.addons.web",
    "odoo.addons.web.controllers",
    "odoo.addons.web.controllers.home",
    "odoo.addons.web.controllers.main",
    "odoo.conf",
    "odoo.http",
    "odoo.release",
    "odoo.service",
    "odoo.service.security",
    "odoo.tools",
    "odoo.tools.func",
    "odoo.tools._vendor",
    "odoo.tools._vendor.sessions",
)

SECRET = b"fake-database-secret"
ADDONS = Path(__file__).resolve().parents[2] / "addons"
SERVER_WIDE = ["base", "web", "dkn_auth"]


class lazy_property:  # noqa: N801 - the name core uses
    def __init__(self, fget):
        self.fget = fget

    def __get__(self, obj, cls):
        if obj is None:
            return self
        value = self.fget(obj)
        setattr(obj, self.fget.__name__, value)
        return value


# -- werkzeug-style store base (odoo.tools._vendor.sessions) ----------------

_sha1_re = re.compile(r"^[a-f0-9]{40}$")


class SessionStore:
    def __init__(self, session_class=None):
        self.session_class = session_class

    def is_valid_key(self, key):
        return _sha1_re.match(key) is not None

    def generate_key(self, salt=None):
        return hashlib.sha1(os.urandom(32) + str(time.time()).encode()).hexdigest()

    def new(self):
        return self.session_class({}, self.generate_key(), True)

    def save(self, session):
        raise AssertionError("base store save() must never be reached")

    def delete(self, session):
        raise AssertionError("base store delete() must never be reached")

    def get(self, sid):
        raise AssertionError("base store get() must never be reached")


class VendoredFilesystemSessionStore(SessionStore):
    pass


class FilesystemSessionStore18(VendoredFilesystemSessionStore):
    def generate_key(self, salt=None):
        digest = hashlib.sha512(str(time.time()).encode() + os.urandom(64)).digest()[:-1]
        return base64.urlsafe_b64encode(digest).decode()

    def is_valid_key(self, key):
        return re.match(r"^[A-Za-z0-9_-]{84}$", key) is not None


# -- sessions -----------------------------------------------------------------


def default_session(major):
    data = {"context": {}, "db": None, "debug": "", "login": None, "uid": None, "session_token": None}
    if major >= 18:
        data["_trace"] = []
    if major >= 19:
        data["create_time"] = time.time()
    return data


class OpenERPSession(dict):
    """14/15: a dict with a ``modified`` flag; attributes map to keys once inited."""

    def __init__(self, data, sid, new=False):
        object.__setattr__(self, "inited", False)
        dict.__init__(self, data)
        self.sid = sid
        self.new = new
        self.rotate = False
        self.modified = False
        self.inited = True
        for key, value in default_session(14).items():
            self.setdefault(key, value)
        self.modified = False

    def __getattr__(self, attr):
        return self.get(attr)

    def __setattr__(self, key, value):
        if getattr(self, "inited", False):
            try:
                object.__getattribute__(self, key)
            except AttributeError:
                self[key] = value
                return
        object.__setattr__(self, key, value)

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, value)
        object.__setattr__(self, "modified", True)

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        object.__setattr__(self, "modified", True)

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def pop(self, key, *default):
        object.__setattr__(self, "modified", True)
        return dict.pop(self, key, *default)

    def clear(self):
        dict.clear(self)
        object.__setattr__(self, "modified", True)

    @property
    def should_save(self):
        return self.modified


def make_slotted_session(major):
    copy_value = pickle_copy if major < 18 else json_copy
    slots = ("can_save", "_Session__data", "is_dirty", "is_new", "should_rotate", "sid")
    if major == 17:
        slots += ("is_explicit",)

    class Session(collections.abc.MutableMapping):
        __slots__ = slots

        def __init__(self, data, sid, new=False):
            self.can_save = True
            self.__data = {}
            self.update(data)
            self.is_dirty = False
            self.is_new = new
            self.should_rotate = False
            self.sid = sid
            if major == 17:
                self.is_explicit = False

        def __getitem__(self, key):
            return self.__data[key]

        def __setitem__(self, key, value):
            value = copy_value(value)
            if key not in self.__data or self.__data[key] != value:
                self.is_dirty = True
            self.__data[key] = value

        def __delitem__(self, key):
            del self.__data[key]
            self.is_dirty = True

        def __len__(self):
            return len(self.__data)

        def __iter__(self):
            return iter(self.__data)

        def __getattr__(self, attr):
            return self.get(attr, None)

        def __setattr__(self, key, value):
            if key in self.__slots__:
                super().__setattr__(key, value)
            else:
                self[key] = value

        def clear(self):
            self.__data.clear()
            self.is_dirty = True

        def touch(self):
            self.is_dirty = True

    return Session


def make_session19():
    class Session(collections.abc.MutableMapping):
        __slots__ = ("_Session__data", "can_save", "is_dirty", "is_new", "should_rotate", "sid")

        def __init__(self, data, sid, new=False):
            self.can_save = True
            self.__data = {}
            self.update(data)
            self.is_dirty = False
            self.is_new = new
            self.should_rotate = False
            self.sid = sid

        def __getitem__(self, key):
            return self.__data[key]

        def __setitem__(self, key, value):
            if not isinstance(value, (str, int, float, bool, type(None))):
                value = json_copy(value)
            if key not in self.__data or self.__data[key] != value:
                self.is_dirty = True
            self.__data[key] = value

        def __delitem__(self, key):
            del self.__data[key]
            self.is_dirty = True

        def __len__(self):
            return len(self.__data)

        def __iter__(self):
            return iter(self.__data)

        def clear(self):
            self.__data.clear()
            self.is_dirty = True

        def touch(self):
            self.is_dirty = True

        uid = property(lambda self: self.get("uid"), lambda self, v: self.__setitem__("uid", v))
        db = property(lambda self: self.get("db"), lambda self, v: self.__setitem__("db", v))
        login = property(lambda self: self.get("login"), lambda self, v: self.__setitem__("login", v))
        context = property(lambda self: self.get("context"), lambda self, v: self.__setitem__("context", v))
        debug = property(lambda self: self.get("debug"), lambda self, v: self.__setitem__("debug", v))
        session_token = property(
            lambda self: self.get("session_token"), lambda self, v: self.__setitem__("session_token", v)
        )

    return Session


def pickle_copy(value):
    return pickle.loads(pickle.dumps(value))


class _HttpModule(types.ModuleType):
    """``odoo.http`` whose ``request`` is per thread (core: a werkzeug LocalProxy)."""

    _local = threading.local()

    @property
    def request(self):
        return getattr(self._local, "request", None)

    @request.setter
    def request(self, value):
        self._local.request = value


def json_copy(value):
    return json.loads(json.dumps(value))


# -- environment --------------------------------------------------------------


class FakeCursor:
    def __init__(self, dbname):
        self.dbname = dbname
        self._closed = False


class FakeICP:
    def __init__(self, params):
        self.params = params

    def sudo(self):
        return self

    def get_param(self, key, default=False):
        return self.params.get(key, default)


class FakeEnv:
    def __init__(self, dbname="db1", params=None):
        self.cr = FakeCursor(dbname)
        self.params = dict(params or {})

    def __getitem__(self, model):
        assert model == "ir.config_parameter", model
        return FakeICP(self.params)


class FakeRequest:
    def __init__(self, env, db=None, session=None):
        self.env = env
        self.db = db  # 16+ requests with a database run inside the retry loop
        self.session = session


SESSION_ROTATION_INTERVAL = 3 * 3600  # Odoo 19
MAX_TRIES_ON_CONCURRENCY_FAILURE = 5


def compute_session_token(session, env):
    return hmac.new(SECRET, f"{session.sid}:{session['uid']}".encode(), hashlib.sha256).hexdigest()


# -- controllers and routing ----------------------------------------------------


def build_routing(http, major):
    """``Controller``, ``route``, ``Response`` and the routing rules of ``major``."""
    import werkzeug.wrappers

    class Response(werkzeug.wrappers.Response):
        default_mimetype = "text/html"

        @classmethod
        def load(cls, result):
            if isinstance(result, Response):
                return result
            if isinstance(result, (bytes, str)):
                return cls(result)
            raise TypeError(f"{result!r} is not a response")

    http.Response = Response
    http.warnings = []

    if major < 16:

        class ControllerType(type):
            def __init__(cls, name, bases, attrs):
                super().__init__(name, bases, attrs)
                path = cls.__module__.split(".")
                module = path[2] if path[:2] == ["odoo", "addons"] else ""
                if "Controller" in vars(http) and http.Controller in bases:
                    entry = (f"{cls.__module__}.{name}", cls)
                    http.controllers_per_module.setdefault(module, []).append(entry)

        http.controllers_per_module = {}
        http.Controller = ControllerType("Controller", (object,), {"__module__": "odoo.http"})

        def route(route=None, **kw):
            routing = dict(kw)
            if route:
                routing["routes"] = route if isinstance(route, list) else [route]

            def decorator(f):
                @functools.wraps(f)
                def response_wrap(*args, **params):
                    response = f(*args, **params)  # 14/15 pass every parameter
                    return Response.load(response)

                response_wrap.routing = routing
                response_wrap.original_func = f
                return response_wrap

            return decorator

        def generate_routing_rules(modules, nodb_only):
            def valid(c):
                return c.__module__.startswith("odoo.addons.") and c.__module__.split(".")[2] in modules

            def get_subclasses(klass):
                result = []
                for sub in klass.__subclasses__():
                    if valid(sub):
                        result.extend(get_subclasses(sub))
                if not result and valid(klass):
                    result = [klass]
                return result

            for module in modules:
                for _name, cls in http.controllers_per_module.get(module, []):
                    subclasses = [c for c in dict.fromkeys(get_subclasses(cls)) if c is not cls]
                    if subclasses:
                        cls = type(cls.__name__ + " (extended)", tuple(reversed(subclasses)), {})
                    ctrl = cls()
                    for _, mv in inspect.getmembers(ctrl, inspect.ismethod):
                        if not hasattr(mv, "routing"):
                            continue
                        routing = {"type": "http", "auth": "user", "methods": None, "routes": None}
                        for claz in reversed(type(ctrl).mro()):
                            fn = vars(claz).get(mv.__name__)
                            if fn is not None and hasattr(fn, "routing"):
                                routing.update(fn.routing)
                        if not nodb_only or routing["auth"] == "none":
                            for url in routing["routes"]:
                                yield url, mv, routing

    else:

        class Controller:
            children_classes = {}

            def __init_subclass__(cls):
                super().__init_subclass__()
                if Controller in cls.__bases__:
                    path = cls.__module__.split(".")
                    module = path[2] if path[:2] == ["odoo", "addons"] else ""
                    Controller.children_classes.setdefault(module, []).append(cls)

        Controller.__module__ = "odoo.http"
        http.Controller = Controller

        def route(route=None, **routing):
            if route:
                routing["routes"] = route if isinstance(route, list) else [route]

            def decorator(endpoint):
                @functools.wraps(endpoint)
                def route_wrapper(self, *args, **params):
                    accepted = inspect.signature(endpoint).parameters
                    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
                        ok = params
                    else:
                        ok = {k: v for k, v in params.items() if k in accepted}
                    ignored = set(params) - set(ok)
                    if ignored:
                        http.warnings.append(f"{endpoint.__name__} called ignoring args {ignored}")
                    return Response.load(endpoint(self, *args, **ok))

                route_wrapper.original_routing = routing
                route_wrapper.original_endpoint = endpoint
                return route_wrapper

            return decorator

        def generate_routing_rules(modules, nodb_only):
            def is_valid(cls):
                path = cls.__module__.split(".")
                return path[:2] == ["odoo", "addons"] and path[2] in modules

            def get_leaf_classes(cls):
                result = []
                for sub in cls.__subclasses__():
                    if is_valid(sub):
                        result.extend(get_leaf_classes(sub))
                if not result and is_valid(cls):
                    result.append(cls)
                return result

            for module in modules:
                for top in Controller.children_classes.get(module, []):
                    leaves = list(dict.fromkeys(get_leaf_classes(top)))
                    ctrl = type(top.__name__, tuple(reversed(leaves)), {})()
                    for name, method in inspect.getmembers(ctrl, inspect.ismethod):
                        mro = type(ctrl).mro()
                        if not any(getattr(getattr(c, name, None), "original_routing", None) for c in mro):
                            continue
                        merged = {"auth": "user", "methods": None, "routes": []}
                        for cls in reversed(mro[:-2]):  # ancestors first
                            if name not in vars(cls):
                                continue
                            sub = getattr(cls, name)
                            if not hasattr(sub, "original_routing"):
                                http.warnings.append(f"{cls.__name__}.{name} is not decorated by @route()")
                                sub = route()(sub)
                            merged.setdefault("type", sub.original_routing.get("type", "http"))
                            merged.update(sub.original_routing)
                        if nodb_only and merged["auth"] != "none":
                            continue
                        for url in merged["routes"]:
                            yield url, method, merged

    http.route = route
    http._generate_routing_rules = generate_routing_rules


def build_web(mods, http, major):
    """``odoo.addons.web``'s ``Home`` controller with core's ``/web/health``."""
    import json as _json

    def request():
        return http.request

    attrs = {"__module__": "odoo.addons.web.controllers." + ("home" if major >= 16 else "main")}
    if major == 15 or major == 17:

        def health(self):
            data = _json.dumps({"status": "pass"})
            headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
            return request().make_response(data, headers)

        attrs["health"] = http.route("/web/health", type="http", auth="none", save_session=False)(health)
    elif major >= 16:

        def health(self, db_server_status=False):
            info = {"status": "pass"}
            status = 200
            if db_server_status:
                info["db_server_status"] = http.fake_db_up
                if not http.fake_db_up:
                    info["status"] = "fail"
                    status = 500
            headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
            return request().make_response(_json.dumps(info), headers, status=status)

        attrs["health"] = http.route("/web/health", type="http", auth="none", save_session=False)(health)

    def login(self):
        return "login page"

    attrs["login"] = http.route("/web/login", type="http", auth="none")(login)
    Home = type(http.Controller)("Home", (http.Controller,), attrs)
    module = mods[attrs["__module__"]]
    module.Home = Home
    http.fake_db_up = True


class FakeHttpRequest:
    """What a route sees as ``odoo.http.request`` (params, make_response)."""

    def __init__(self, http, major, env, session, params):
        self.http = http
        self.major = major
        self.env = env
        self.session = session
        self.params = params

    def make_response(self, data, headers=None, cookies=None, status=200):
        if self.major < 16 and status != 200:
            raise TypeError("make_response() got an unexpected keyword argument 'status'")
        return self.http.Response(data, status=status, headers=headers)


def nodb_routes(http):
    routes = {}
    modules = [""] + list(sys.modules["odoo.conf"].server_wide_modules)
    for url, endpoint, routing in http._generate_routing_rules(modules, nodb_only=True):
        routes[url] = (endpoint, routing)
    return routes


def dispatch(http, major, environ, start_response, session):
    """Serve a no-database route; ``None`` when the path has none."""
    routes = vars(http.root).get("nodb_routes")
    if routes is None:
        routes = http.root.nodb_routes = nodb_routes(http)  # core: a lazy_property
    path = environ.get("PATH_INFO", "/")
    if path not in routes:
        return None
    endpoint, _routing = routes[path]
    params = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    http.request = FakeHttpRequest(http, major, http.fake_env, session, params)
    try:
        response = endpoint(**params)
    finally:
        http.request = None
    return response(environ, start_response)  # save_session=False: nothing saved


# -- the WSGI entry points ----------------------------------------------------


def _cookie_sid(environ):
    cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    return cookie["session_id"].value if "session_id" in cookie else None


def _respond(start_response, status, payload, cookie_sid=None):
    body = json.dumps(payload, default=str).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if cookie_sid:
        headers.append(("Set-Cookie", f"session_id={cookie_sid}; HttpOnly; Path=/"))
    start_response(status, headers)
    return [body]


def _error(environ, start_response):
    # Core's way: a JSON-RPC error with HTTP 200 on JSON routes, 500 otherwise.
    if environ.get("fake.json"):
        return _respond(start_response, "200 OK", {"error": {"code": 200, "message": "Odoo Server Error"}})
    return _respond(start_response, "500 Internal Server Error", {"error": "internal"})


def build(major):
    """Create ``odoo`` modules for Odoo ``major`` in ``sys.modules``; return ``odoo.http``."""
    remove()
    mods = {name: types.ModuleType(name) for name in MODULES}
    for name in MODULES:
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(mods[parent], child, mods[name])
        mods[name].__path__ = []
    mods["odoo.addons"].__path__ = [str(ADDONS)]  # ``import odoo.addons.dkn_auth`` as Odoo does
    mods["odoo.conf"].server_wide_modules = list(SERVER_WIDE)
    mods["odoo.release"].version_info = (major, 0, 0, "final", 0, "")
    mods["odoo.release"].major_version = f"{major}.0"
    config = {}
    mods["odoo.tools"].config = config
    mods["odoo.tools.func"].lazy_property = lazy_property
    vendored = mods["odoo.tools._vendor.sessions"]
    vendored.SessionStore = SessionStore
    vendored.FilesystemSessionStore = VendoredFilesystemSessionStore
    mods["odoo.service.security"].compute_session_token = compute_session_token
    http = mods["odoo.http"]
    http.__class__ = _HttpModule  # ``request`` per thread, as core's LocalProxy
    http.request = None
    http.retries = []  # pgcode names of the retries the 16+ retry loop made
    http.errors = []  # exceptions that became a 500
    env = FakeEnv()
    http.fake_env = env
    build_routing(http, major)
    build_web(mods, http, major)

    if major < 16:
        build_root(http, major)
    else:
        build_application(http, major)
    sys.modules.update(mods)
    return http


def build_root(http, major):
    http.OpenERPSession = OpenERPSession
    http.gc_calls = []

    def session_gc(store):
        http.gc_calls.append(store)

    http.session_gc = session_gc

    class Root:
        @lazy_property
        def session_store(self):
            return VendoredFilesystemSessionStore(session_class=OpenERPSession)

        def __call__(self, environ, start_response):
            try:
                http.session_gc(self.session_store)
                sid = _cookie_sid(environ)
                store = self.session_store
                session = store.new() if sid is None else store.get(sid)
                served = dispatch(http, major, environ, start_response, session)
                if served is not None:
                    return served
                http.request = FakeRequest(http.fake_env)
                try:
                    result = environ.get("fake.handler", lambda s: None)(session)
                    if session.should_save:
                        if session.rotate:
                            store.delete(session)
                            session.sid = store.generate_key()
                            if session.uid:
                                session.session_token = compute_session_token(session, http.fake_env)
                            session.modified = True
                        store.save(session)
                finally:
                    http.request = None
                return _respond(
                    start_response, "200 OK", {"sid": session.sid, "result": result}, cookie_sid=session.sid
                )
            except Exception:
                # 14/15 only catch werkzeug HTTPExceptions; the rest escapes.
                import werkzeug.exceptions

                exc = sys.exc_info()[1]
                if isinstance(exc, werkzeug.exceptions.HTTPException):
                    return exc(environ, start_response)
                raise

    http.Root = Root
    http.root = Root()


def build_application(http, major):
    Session = make_session19() if major >= 19 else make_slotted_session(major)
    http.Session = Session
    http.SESSION_LIFETIME = 604800
    if major >= 18:
        http.FilesystemSessionStore = FilesystemSessionStore18
    else:
        http.FilesystemSessionStore = VendoredFilesystemSessionStore
    if major >= 19:
        http.SESSION_DELETION_TIMER = 120
        http.STORED_SESSION_BYTES = 42

    def make_store(self):
        return http.FilesystemSessionStore(session_class=Session)

    make_store.__name__ = "session_store"

    class Application:
        if major >= 19:
            session_store = functools.cached_property(make_store)
        else:
            session_store = lazy_property(make_store)

        def _get_session(self, environ):
            store = self.session_store
            sid = _cookie_sid(environ)
            if not sid or not store.is_valid_key(sid):
                session = store.new()
            else:
                session = store.get(sid)
                session.sid = sid
            for key, value in default_session(major).items():
                session.setdefault(key, value)
            session.is_dirty = False
            return session

        def _save_session(self, session):
            # Core's Request._save_session; 19 soft-rotates a logged-in session three
            # hours after create_time, on any request, dirty or not.
            store = self.session_store
            if not session.can_save:
                return
            if session.should_rotate:
                store.rotate(session, http.fake_env)
            elif (
                major >= 19
                and session.get("uid")
                and time.time() >= session.get("create_time", 0) + SESSION_ROTATION_INTERVAL
            ):
                store.rotate(session, http.fake_env, True)
            elif session.is_dirty:
                store.save(session)

        def __call__(self, environ, start_response):
            try:
                session = self._get_session(environ)
                served = dispatch(http, major, environ, start_response, session)
                if served is not None:
                    return served
                request = http.request = FakeRequest(http.fake_env, db="db1", session=session)
                handler = environ.get("fake.handler", lambda s: None)
                try:
                    # Core's service.model.retrying around the dispatch, whose
                    # post_dispatch saves the session: a concurrency error rolls
                    # back, re-reads the session from the store and runs again.
                    import psycopg2.errors
                    from psycopg2 import errorcodes

                    retry = (
                        psycopg2.errors.LockNotAvailable,
                        psycopg2.errors.SerializationFailure,
                        psycopg2.errors.DeadlockDetected,
                    )
                    for tryno in range(1, MAX_TRIES_ON_CONCURRENCY_FAILURE + 1):
                        try:
                            result = handler(request.session)
                            self._save_session(request.session)
                            break
                        except psycopg2.OperationalError as exc:
                            request.session = self._get_session(environ)
                            if not isinstance(exc, retry) or tryno == MAX_TRIES_ON_CONCURRENCY_FAILURE:
                                raise
                            http.retries.append(errorcodes.lookup(exc.pgcode))
                            time.sleep(environ.get("fake.retry_wait", 0.01))
                    session = request.session
                finally:
                    http.request = None
                return _respond(
                    start_response, "200 OK", {"sid": session.sid, "result": result}, cookie_sid=session.sid
                )
            except Exception:
                http.errors.append(sys.exc_info()[1])
                return _error(environ, start_response)

    http.Application = Application
    http.root = Application()


def remove():
    for name in MODULES + MASTER_MODULES:
        sys.modules.pop(name, None)
    for name in [m for m in sys.modules if m.startswith("odoo.addons.dkn_auth")]:
        del sys.modules[name]


# -- Odoo after 19: odoo/http/session.py with a module-level session_store() ---

MASTER_MODULES = ("odoo.http.session", "odoo.http.application")
_sid86_re = re.compile(r"^[A-Za-z0-9_-]{84,86}$")


def build_master():
    """The layout of Odoo's master after 19 (read in odoo/http/session.py).

    ``odoo.http`` is a package; ``odoo.http.session`` holds ``Session``,
    ``SessionStore`` (``generate_key()`` = ``secrets.token_urlsafe(64)``, 86
    characters; ``is_valid_session_id`` accepts 84 to 86; ``get(sid, *,
    keep_sid=False)``), ``update_session_token`` and a module-level
    ``@functools.cache session_store()``. The request cycle gets the store by
    calling ``session_store()`` from another module that imported it by name,
    loads with ``get(sid, keep_sid=True)`` (no ``session.sid = sid`` after),
    and saves as core's ``save_session`` does.
    """
    import secrets

    http = build(19)
    for name in MASTER_MODULES:
        sys.modules[name] = types.ModuleType(name)
    session_mod = sys.modules["odoo.http.session"]
    app_mod = sys.modules["odoo.http.application"]
    http.session = session_mod
    http.application = app_mod
    http.__path__ = []
    mods_release = sys.modules["odoo.release"]
    mods_release.version_info = ("saas~19", 1, 0, "alpha", 1, "")
    mods_release.major_version = "saas~19.1"
    Session = make_session19()
    Session.__module__ = "odoo.http.session"
    del http.FilesystemSessionStore  # gone from this layout
    core_calls = []

    class SessionStore:
        def __init__(self, path=None, session_cls=Session):
            self.session_cls = session_cls

        def generate_key(self):
            return secrets.token_urlsafe(64)

        def is_valid_session_id(self, sid):
            return _sid86_re.fullmatch(sid) is not None

        def __getattr__(self, name):
            core_calls.append(name)
            raise AssertionError(f"core store {name}() must never be reached")

    @functools.cache
    def session_store():
        core_calls.append("session_store()")
        return SessionStore()

    def update_session_token(session, env):
        session["session_token"] = compute_session_token(session, env)

    session_mod.Session = Session
    session_mod.SessionStore = SessionStore
    session_mod.session_store = session_store
    session_mod.update_session_token = update_session_token
    session_mod.SESSION_DELETION_TIMER = 120
    session_mod.STORED_SESSION_BYTES = 42
    session_mod.core_calls = core_calls
    http.Session = Session
    # ``from odoo.http.session import session_store``, done before the addon loads.
    app_mod.session_store = session_store

    class Application:
        def __call__(self, environ, start_response):
            try:
                store = sys.modules["odoo.http.application"].session_store()
                sid = _cookie_sid(environ)
                session = store.get(sid, keep_sid=True) if sid else store.new()
                for key, value in default_session(19).items():
                    session.setdefault(key, value)
                session.is_dirty = False
                http.request = FakeRequest(http.fake_env)
                try:
                    result = environ.get("fake.handler", lambda s: None)(session)
                    if session.can_save:
                        if session.should_rotate:
                            store.rotate(session, http.fake_env)
                        elif session.is_dirty:
                            store.save(session)
                finally:
                    http.request = None
                return _respond(
                    start_response, "200 OK", {"sid": session.sid, "result": result}, cookie_sid=session.sid
                )
            except Exception:
                return _error(environ, start_response)

    Application.__module__ = "odoo.http.application"
    del http.Application
    app_mod.Application = Application
    http.root = app_mod.root = Application()
    return http
