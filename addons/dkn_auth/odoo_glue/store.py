"""The session store, adapted to each Odoo version's interface.

``make_store_class(http, major)`` builds a store class for the running Odoo
from facts found on ``odoo.http`` (its Session class, its key format), so one
code path serves Odoo 14 to 19. See docs/odoo-addon.md for the behaviour.
"""

import hashlib
import logging
import os
import re
import time

from ..client import (
    AlreadyRotated,
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    PreconditionFailed,
    SidecarError,
    Unavailable,
)
from ..client.codec import decode, encode
from ..client.diff import Snapshot, changes
from . import wsgi

_logger = logging.getLogger("odoo.addons.dkn_auth")

STORED_SESSION_BYTES = 42  # Odoo 18+: sid[:42] is the device identifier
MAX_TTL = 31536000  # one year, the longest TTL the sidecar accepts
# Stored next to the session's keys, hidden from Odoo: the TTL the session was
# last written with, so a read in any process refreshes it to the same value
# (Odoo's sessions.max_inactivity_seconds cannot be read before the request has
# a database cursor).
TTL_KEY = "_dkn_ttl"
_identifier_re = re.compile(r"^[A-Za-z0-9_-]{42}$")
_sha1_re = re.compile(r"^[a-f0-9]{40}$")
_SNAP = "_dkn_snapshot"
MODERN_KEY_LENGTHS = (84, 86)  # 18/19 and after 19


def _unavailable_exception():
    from werkzeug.exceptions import ServiceUnavailable

    class SessionStoreUnavailable(ServiceUnavailable):
        description = "session store unavailable"

    return SessionStoreUnavailable


SessionStoreUnavailable = _unavailable_exception()


def _conflict_exception():
    """The error Odoo's request retry loop (``service.model.retrying``, 16+) retries.

    A psycopg2 serialization failure: the loop rolls the transaction back,
    re-reads the session from the store and runs the request again. Its
    ``pgcode`` is set because the loop logs ``errorcodes.lookup(exc.pgcode)``.
    ``None`` without psycopg2 (never the case inside Odoo).
    """
    try:
        from psycopg2.errors import SerializationFailure
    except ImportError:
        return None

    class SessionConflict(SerializationFailure):
        pgcode = "40001"
        pgerror = None

    return SessionConflict


SessionConflict = _conflict_exception()


def make_session_class(base):
    """Subclass of Odoo's Session able to carry the load snapshot.

    Odoo 16+ Sessions use ``__slots__`` and route unknown attributes into the
    session data, so the snapshot gets its own slot and bypasses that routing.
    """
    if "__slots__" in vars(base):
        # Core's __setattr__ tests ``key in self.__slots__``, which on a
        # subclass only lists the subclass's own slots: route every slot of
        # the hierarchy ourselves or the flags would leak into the data.
        slots = {_SNAP}
        for klass in base.__mro__:
            declared = vars(klass).get("__slots__", ())
            slots.update((declared,) if isinstance(declared, str) else declared)

        class DknSession(base):
            __slots__ = (_SNAP,)

            def __setattr__(self, key, value):
                if key in slots:
                    object.__setattr__(self, key, value)
                else:
                    base.__setattr__(self, key, value)

    else:

        class DknSession(base):
            pass

    DknSession.__name__ = base.__name__
    DknSession.__qualname__ = base.__qualname__
    return DknSession


def get_snapshot(session):
    try:
        snap = object.__getattribute__(session, _SNAP)
    except AttributeError:
        return None
    return snap if isinstance(snap, Snapshot) else None


def set_snapshot(session, snap):
    try:
        object.__setattr__(session, _SNAP, snap)
    except AttributeError:
        # A Session not built by this store (plain core class): it is saved
        # whole as a new session, which is what core would do.
        pass


class DknSessionStoreBase:
    """Version-independent part. ``make_store_class`` adds the per-version bits."""

    major = 16
    tagged = True  # sets/dates/datetimes need tags (Odoo < 18)
    soft_rotation = False  # Odoo 19
    deletion_timer = 120
    # Odoo 19 and later assert that a session with a user is rotated with an
    # env (its session_token must be recomputed); 16-18 skip the token.
    rotation_needs_env = False
    layout = "application"  # "module": Odoo after 19 (odoo.http.session)

    def __init__(self, client, settings, session_class, config_error=None):
        self.client = client
        self.settings = settings
        self.session_class = session_class
        self.config_error = config_error
        # Odoo's sessions.max_inactivity_seconds, per database, as last read.
        self._max_inactivity = {}

    # -- helpers ------------------------------------------------------------

    def _fail(self, exc):
        wsgi.mark_unavailable(exc)
        _logger.error("session store unavailable: %s", exc)
        raise SessionStoreUnavailable() from None

    def _api(self):
        if self.client is None:
            self._fail(f"dkn_auth is misconfigured ({self.config_error})")
        return self.client

    def _call(self, method, *args, **kwargs):
        try:
            return getattr(self._api(), method)(*args, **kwargs)
        except Unavailable as exc:
            self._fail(exc.message if exc.status == 0 else f"sidecar answered {exc.status} {exc.code}")

    def _user_ttl(self, db=None, env=None):
        if env is not None:
            try:
                if not getattr(env.cr, "_closed", False):
                    db = env.cr.dbname
                    raw = env["ir.config_parameter"].sudo().get_param("sessions.max_inactivity_seconds")
                    self._max_inactivity[db] = self._parse_max_inactivity(raw)
            except Exception as exc:  # noqa: BLE001 - e.g. an aborted transaction: keep the last value
                _logger.warning("cannot read sessions.max_inactivity_seconds (%s)", exc)
        return self._max_inactivity.get(db) or self.settings.expiry

    @staticmethod
    def _parse_max_inactivity(raw):
        if not raw:
            return None
        try:
            value = int(raw)
        except (TypeError, ValueError):
            _logger.warning("invalid sessions.max_inactivity_seconds %r, using DKN_AUTH_EXPIRY", raw)
            return None
        # The sidecar refuses TTLs over a year; non-positive means "not set".
        return min(value, MAX_TTL) if value > 0 else None

    def _request_env(self):
        try:
            from odoo.http import request
        except ImportError:
            return None
        try:
            return request.env if request else None
        except Exception:  # noqa: BLE001 - no request bound to this thread
            return None

    def _ttl_for(self, session, env=None):
        if session.get("uid"):
            return self._user_ttl(session.get("db"), env if env is not None else self._request_env())
        return self.settings.anonymous_expiry

    def _encode(self, session, ttl):
        data = encode(dict(session), tagged=self.tagged)
        data[TTL_KEY] = ttl
        return data

    # -- the store interface ------------------------------------------------

    def new(self):
        return self.session_class({}, self.generate_key(), True)

    def _missing(self, sid, keep_sid):
        # 16-19 core sets ``session.sid = sid`` right after ``get``, so the sid
        # of a fresh session is overwritten anyway; Odoo after 19 asks for the
        # cookie's sid explicitly with ``keep_sid=True`` (and gets new=False).
        if keep_sid:
            return self.session_class({}, sid, False)
        return self.new()

    def _decoded(self, record):
        data = {k: v for k, v in record.data.items() if k != TTL_KEY}
        return decode(data) if self.tagged else data

    def get(self, sid, *, keep_sid=False):
        if not self.is_valid_key(sid):
            return self.new()
        try:
            record = self._call("get", sid)
        except SidecarError as exc:
            _logger.warning("session %s... could not be read (%s), starting a new one", sid[:8], exc)
            return self._missing(sid, keep_sid)
        if record is None:
            return self._missing(sid, keep_sid)
        try:
            session = self.session_class(self._decoded(record), sid, False)
        except Exception as exc:  # noqa: BLE001 - unreadable stored data: core's stores reset too
            _logger.warning("session %s... is unreadable (%s), starting a new one", sid[:8], exc)
            return self._missing(sid, keep_sid)
        set_snapshot(session, Snapshot(sid, record.data, record.version, record.ttl))
        self._maybe_refresh(session, record)
        return session

    def _maybe_refresh(self, session, record):
        """Slide the TTL at most once per refresh interval, not on every request."""
        if "deletion_time" in record.data:
            return  # Odoo 19: a soft-rotated sid must die at the end of its grace period
        target = record.data.get(TTL_KEY)
        if not isinstance(target, int) or not 0 < target <= MAX_TTL:
            # Written by an older version or by hand: use the current settings.
            target = (
                self._user_ttl(record.data.get("db"))
                if record.data.get("uid")
                else self.settings.anonymous_expiry
            )
        interval = min(self.settings.refresh_interval, target // 2)
        if record.ttl >= target - interval:
            return
        try:
            self._call("patch", record.sid, ttl=target)
        except (NotFound, Gone):
            pass  # deleted meanwhile: the request sees it as loaded, saves are refused

    def save(self, session):
        ttl = self._ttl_for(session)
        data = self._encode(session, ttl)
        snap = get_snapshot(session)
        if snap is None or snap.sid != session.sid:
            self._create(session, data, ttl)
            return
        if snap.gone:
            return
        set_, remove = changes(snap, data)
        # Each changed key must still hold what this request loaded: a request that
        # changed the same key meanwhile makes the sidecar refuse (409 conflict).
        expect, absent = _expectations(snap, set_, remove)
        try:
            try:
                version = self._call(
                    "patch",
                    session.sid,
                    set_=set_,
                    remove=remove,
                    ttl=ttl,
                    expect=expect,
                    expect_absent=absent,
                )
            except Conflict as exc:
                self._conflict(session, exc)
                # Outside a retry loop: last writer wins, as before this check.
                version = self._call("patch", session.sid, set_=set_, remove=remove, ttl=ttl)
            except BadRequest as exc:
                if not (expect or absent) or "expect" not in exc.message:
                    raise
                # A sidecar older than the addon (rolling upgrade): no per-key check.
                _logger.warning("the sidecar does not check per-key conditions (%s): upgrade it", exc.message)
                version = self._call("patch", session.sid, set_=set_, remove=remove, ttl=ttl)
        except (NotFound, Gone):
            # Logged out, revoked or expired since it was loaded: never bring
            # it back (the stale copy would still pass check_session).
            _logger.info("session %s... was deleted meanwhile, its changes are dropped", session.sid[:8])
            snap.gone = True
            return
        set_snapshot(session, Snapshot(session.sid, data, version, ttl))

    def _in_retry_loop(self):
        """True when this save runs inside Odoo's ``service.model.retrying`` (16+).

        Odoo 16 and later save the session from ``post_dispatch``, inside the
        retry loop of a request with a database (``_serve_db``); requests
        without one (``_serve_nodb``), 14/15 and code outside requests do not.
        """
        if SessionConflict is None or (self.major < 16 and self.layout != "module"):
            return False
        try:
            from odoo.http import request
        except ImportError:
            return False
        try:
            return bool(request) and bool(getattr(request, "db", None)) and request.env is not None
        except Exception:  # noqa: BLE001 - no request bound to this thread
            return False

    def _conflict(self, session, exc):
        keys = ", ".join(exc.keys) or "?"
        if self._in_retry_loop():
            _logger.info("session %s...: %s changed meanwhile, the request is retried", session.sid[:8], keys)
            raise SessionConflict(
                f"session {session.sid[:8]}... keys changed by a concurrent request: {keys}"
            )
        _logger.warning(
            "session %s...: %s changed by a concurrent request; no retry loop here, this request's wins",
            session.sid[:8],
            keys,
        )

    def _create(self, session, data, ttl):
        sid = session.sid
        try:
            version = self._call("put", sid, data, ttl=ttl, create_only=True)
        except PreconditionFailed:
            # Created meanwhile by a parallel request with the same cookie:
            # merge into it, update-only.
            try:
                version = self._call("patch", sid, set_=data, ttl=ttl)
            except (NotFound, Gone):
                set_snapshot(session, Snapshot(sid, data, gone=True))
                return
        except Gone:
            if session.get("uid"):
                # Its session_token is bound to this deleted sid: stay out.
                _logger.info("session %s... was deleted, not recreating it", sid[:8])
                set_snapshot(session, Snapshot(sid, data, gone=True))
                return
            # An anonymous cookie naming a deleted sid: give it a fresh one
            # (core sets the new cookie because the sid changed).
            session.sid = sid = self.generate_key()
            version = self._call("put", sid, data, ttl=ttl, create_only=True)
        set_snapshot(session, Snapshot(sid, data, version, ttl))

    def delete(self, session):
        self._call("delete", session.sid)
        snap = get_snapshot(session)
        if snap is not None and snap.sid == session.sid:
            snap.gone = True

    def rotate(self, session, env=None, soft=False):
        if self.rotation_needs_env and session.get("uid") and env is None:
            # Core 19+ asserts the same (after it has deleted the old session;
            # here nothing is touched yet): rotating without an env would keep
            # a session_token bound to the old sid.
            raise AssertionError("saving this session requires an environment")
        soft = bool(soft) and self.soft_rotation
        old_sid = session.sid
        snap = get_snapshot(session)
        keep_old = None
        own = None
        if soft:
            if snap is not None and snap.sid == old_sid and not snap.gone:
                # This request's own changes, to carry over if it follows another rotation.
                own = changes(snap, self._encode(session, snap.data.get(TTL_KEY)))
            recent = self._call("get", old_sid)
            if recent is not None and "next_sid" in recent.data:
                # A concurrent request already rotated: follow it (core does).
                self._follow(session, recent.data["next_sid"], own)
                return
            new_sid = old_sid[:STORED_SESSION_BYTES] + self.generate_key()[STORED_SESSION_BYTES:]
            keep_old = {
                "ttl": self.deletion_timer,
                "set": {"next_sid": new_sid, "deletion_time": time.time() + self.deletion_timer},
            }
            session["gc_previous_sessions"] = True
        else:
            new_sid = self.generate_key()
        session.sid = new_sid
        if session.get("uid") and env is not None:
            self._update_session_token(session, env)
        if self.major >= 16:
            session.should_rotate = False
        if self.soft_rotation:
            session["create_time"] = time.time()
        ttl = self._ttl_for(session, env)
        data = self._encode(session, ttl)
        stored = snap is not None and snap.sid == old_sid and not snap.gone
        try:
            if soft and stored:
                # Same user, same identifier: apply this request's changes to the
                # stored copy, which must still exist (a revoked session stays gone).
                set_, remove = changes(snap, data)
                version = self._call(
                    "rotate", old_sid, new_sid, set_=set_, remove=remove, ttl=ttl, keep_old=keep_old
                )
            else:
                # Login/logout: the new session is exactly this request's copy, as
                # in core; a key another request added meanwhile must not survive
                # a logout into the anonymous session.
                version = self._call("rotate", old_sid, new_sid, data=data, ttl=ttl, keep_old=keep_old)
        except AlreadyRotated as exc:
            # Another request of this browser soft-rotated the same sid first (the
            # check above raced with it): the sidecar names its new sid, follow it.
            self._follow(session, exc.new_sid, own)
            return
        except (NotFound, Gone):
            if soft:
                # Deleted since it was loaded (revoked, logged out): stay deleted.
                _logger.info("session %s... was deleted meanwhile, not rotating it", old_sid[:8])
                set_snapshot(session, Snapshot(new_sid, data, gone=True))
                return
            # Hard rotation = login or logout in this very request: the new
            # session is legitimate on its own, the old sid stays deleted.
            version = self._call("put", new_sid, data, ttl=ttl, create_only=True)
        set_snapshot(session, Snapshot(new_sid, data, version, ttl))

    def _follow(self, session, next_sid, own):
        """End up on the session another request's soft rotation created.

        As core: ``session.sid = next_sid`` (the cookie follows). Beyond core,
        the session takes that session's stored data (its ``session_token`` and
        ``create_time``), and this request's own changes, if any, are saved onto
        it like any save (with their conditions).
        """
        session.sid = next_sid
        if self.major >= 16:
            session.should_rotate = False
        record = self._call("get", next_sid)
        if record is None:
            # Gone already (logged out, revoked): nothing to follow into.
            set_snapshot(session, Snapshot(next_sid, {}, gone=True))
            return
        for key in list(session):
            del session[key]
        session.update(self._decoded(record))
        set_snapshot(session, Snapshot(next_sid, record.data, record.version, record.ttl))
        if own is None or not (own[0] or own[1]):
            return
        set_, remove = own
        for key, value in set_.items():
            if key != TTL_KEY:
                session[key] = decode({key: value})[key] if self.tagged else value
        for key in remove:
            session.pop(key, None)
        self.save(session)

    def _update_session_token(self, session, env):
        if self.layout == "module":
            # After 19: odoo.http.session.update_session_token(session, env).
            import odoo.http.session

            odoo.http.session.update_session_token(session, env)
            return
        from odoo.service import security

        session["session_token"] = security.compute_session_token(session, env)

    def vacuum(self, *args, **kwargs):
        """Expiry is the backend's TTL: nothing to collect."""
        return None

    # Part of werkzeug's store API that some addons call: refuse it plainly.
    def list(self):
        raise NotImplementedError("dkn_auth does not list sessions (they are keyed in the sidecar's backend)")


def _expectations(snap, set_, remove):
    """``(expect, expect_absent)`` of a save: what each changed key held when loaded.

    The hidden TTL key is left out: two requests that refresh it to the same
    value do not conflict.
    """
    expect, absent = {}, []
    for key in list(set_) + list(remove):
        if key == TTL_KEY:
            continue
        if key in snap.data:
            expect[key] = snap.data[key]
        else:
            absent.append(key)
    return expect, absent


class DeviceMethods:
    """Odoo 18+: ``res.device`` revocation and clean-up."""

    strict_identifiers = False  # Odoo 19 raises on a malformed identifier

    def delete_from_identifiers(self, identifiers):
        identifiers = list(identifiers)
        if self.strict_identifiers:
            for identifier in identifiers:
                if not isinstance(identifier, str) or not _identifier_re.match(identifier):
                    raise ValueError(
                        "Identifier format incorrect, did you pass in a string instead of a list?"
                    )
            valid = identifiers
        else:
            # 18 (and Odoo after 19) skips identifiers that are not 42
            # characters: a 2-character one must never delete another
            # database's sessions.
            valid = [i for i in identifiers if isinstance(i, str) and _identifier_re.match(i)]
        if valid:
            self._call("delete_identifiers", valid)

    def get_missing_session_identifiers(self, identifiers):
        identifiers = set(identifiers)
        valid = {i for i in identifiers if isinstance(i, str) and _identifier_re.match(i)}
        missing = identifiers - valid  # a malformed identifier names no session
        if valid:
            missing |= self._call("missing_identifiers", valid)
        return missing


class SoftRotationMethods:
    """Odoo 19."""

    soft_rotation = True

    def delete_old_sessions(self, session):
        """Core deletes the pre-rotation sids once the grace period is over.

        Here the old sid was written with a TTL of that grace period (rotate's
        ``keep_old``), so the backend already drops it; what is left is the
        marker on the current session.
        """
        if "gc_previous_sessions" in session:
            if session.get("create_time", 0) + self.deletion_timer < time.time():
                del session["gc_previous_sessions"]
                self.save(session)


def _sha1_key(self, salt=None):
    # Odoo 14 to 17 (werkzeug's SessionStore): 40 lowercase hex characters.
    return hashlib.sha1(os.urandom(32) + str(time.time()).encode()).hexdigest()


def _sha1_valid(self, key):
    return _sha1_re.match(key) is not None


def make_store_class(http, major, layout="application"):
    """Build the store class for the running Odoo (``http`` = ``odoo.http``).

    Nothing is inherited from Odoo's stores: a method this class lacks must
    fail loudly, never fall through to the filesystem. Only the key functions
    come from Odoo (16+), so each version keeps its own key format.

    ``layout="module"`` is Odoo after 19 (``http`` = ``odoo.http.session``):
    ``SessionStore`` with ``is_valid_session_id`` and a ``generate_key()``
    without salt (86-character keys), soft rotation and device methods.
    """
    modern = layout == "module"
    if modern:
        core_store = http.SessionStore
        core_generate = core_store.generate_key
        core_valid = core_store.is_valid_session_id
    else:
        core_store = getattr(http, "FilesystemSessionStore", None)
        core_generate = getattr(core_store, "generate_key", None) or _sha1_key
        core_valid = getattr(core_store, "is_valid_key", None) or _sha1_valid
    bases = []
    if modern or major >= 19:
        bases.append(SoftRotationMethods)
    if modern or major >= 18:
        bases.append(DeviceMethods)
    bases.append(DknSessionStoreBase)

    def generate_key(self, salt=None):
        return core_generate(self) if modern else core_generate(self, salt)

    def is_valid_key(self, key):
        if not isinstance(key, str) or not core_valid(self, key):
            return False
        # After 19 core's check lets 84 to 86 characters through but generates
        # 86 (84 in 18/19 sessions): an 85-character cookie was never issued
        # and the sidecar refuses it, so it starts a new session like any
        # malformed cookie.
        return not modern or len(key) in MODERN_KEY_LENGTHS

    attrs = {
        "major": major,
        "layout": layout,
        "tagged": major < 18 and not modern,
        "rotation_needs_env": modern or major >= 19,
        "strict_identifiers": major >= 19 and not modern,
        "deletion_timer": int(getattr(http, "SESSION_DELETION_TIMER", 120)),
        "generate_key": generate_key,
        "is_valid_key": is_valid_key,
        "is_valid_session_id": is_valid_key,
    }
    return type("DknSessionStore", tuple(bases), attrs)
