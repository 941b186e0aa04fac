"""Typed calls to the sidecar API (docs/sidecar-api.md), statuses as exceptions."""

import json
import urllib.parse

from .transport import Transport, TransportError

# The sidecar takes up to 100,000 identifiers per call, but answers 503 when
# one call takes its backend longer than DKN_AUTH_BACKEND_TIMEOUT_MS (1 s by
# default): a debug build on a busy machine needed 1.6 s for 100,000 on Redis.
# 10,000 per call keeps each call short; Odoo's cron batch of 100,000 is ten.
IDENTIFIER_BATCH = 10000
# Deleting costs the backend one script per identifier (and Odoo revokes a few
# devices at a time): smaller calls.
DELETE_BATCH = 1000


class SidecarError(Exception):
    """The sidecar answered with an error status."""

    def __init__(self, status, code, message, body=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


class BadRequest(SidecarError):
    """4xx other than the ones below: our request was wrong, nothing changed."""


class NotFound(SidecarError):
    pass


class Gone(SidecarError):
    """Write to a deleted (tombstoned) sid: refused, nothing changed."""


class PreconditionFailed(SidecarError):
    @property
    def current_version(self):
        return self.body.get("current_version")


class Unavailable(SidecarError):
    """Sidecar unreachable, timing out, or its backend is down (503/5xx)."""


class AlreadyRotated(SidecarError):
    """409 ``already_rotated``: an earlier soft rotation moved the session to ``new_sid``."""

    @property
    def new_sid(self):
        return self.body.get("new_sid")


class Conflict(SidecarError):
    """409 ``conflict``: keys of a conditional patch changed since they were read."""

    @property
    def keys(self):
        return list(self.body.get("keys") or [])


_BY_STATUS = {404: NotFound, 410: Gone, 412: PreconditionFailed}
_BY_CODE = {"already_rotated": AlreadyRotated, "conflict": Conflict}


class SessionRecord:
    """A stored session: its data, version and seconds of TTL left."""

    __slots__ = ("sid", "version", "data", "ttl")

    def __init__(self, sid, version, data, ttl):
        self.sid = sid
        self.version = version
        self.data = data
        self.ttl = ttl

    def __repr__(self):
        return f"SessionRecord(sid={self.sid[:8]!r}..., version={self.version}, ttl={self.ttl})"


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _quote(sid):
    # sids and identifiers are [A-Za-z0-9_-]; quoting anyway keeps a bad value
    # from ever changing the path (the sidecar answers 400 for it).
    return urllib.parse.quote(sid, safe="")


class Client:
    def __init__(self, settings, transport=None):
        self.settings = settings
        self.transport = transport or Transport(settings)

    def close(self):
        self.transport.close()

    def _call(self, method, path, body=None, headers=None, ok=(200,)):
        payload = None if body is None else _dumps(body)
        try:
            status, _headers, raw = self.transport.request(method, path, payload, headers)
        except TransportError as exc:
            raise Unavailable(0, "unreachable", str(exc)) from exc
        if status in ok:
            if not raw:
                return {}
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise Unavailable(
                    status, "bad_response", f"sidecar answered invalid JSON on {method} {path}"
                ) from exc
        try:
            err = json.loads(raw) if raw else {}
            if not isinstance(err, dict):
                err = {}
        except ValueError:
            err = {}
        code = err.get("error", "") or f"http_{status}"
        message = err.get("message", "") or raw[:200].decode("utf-8", "replace")
        if status >= 500:
            raise Unavailable(status, code, message, err)
        cls = _BY_CODE.get(code) if status == 409 else None
        raise (cls or _BY_STATUS.get(status, BadRequest))(status, code, message, err)

    # -- sessions ---------------------------------------------------------

    def get(self, sid):
        """The stored session, or ``None`` when missing, expired or deleted."""
        try:
            body = self._call("GET", f"/v1/sessions/{_quote(sid)}")
        except NotFound:
            return None
        data = body.get("data")
        if not isinstance(data, dict):
            raise Unavailable(200, "bad_response", "sidecar answered a session without a data object")
        return SessionRecord(
            sid=sid, version=int(body.get("version", 0)), data=data, ttl=int(body.get("ttl", 0))
        )

    def put(self, sid, data, ttl=None, create_only=False, if_match=None):
        body = {"data": data}
        if ttl is not None:
            body["ttl"] = ttl
        headers = {}
        if create_only:
            headers["If-None-Match"] = "*"
        elif if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        return int(self._call("PUT", f"/v1/sessions/{_quote(sid)}", body, headers, ok=(200, 201))["version"])

    def patch(self, sid, set_=None, remove=None, ttl=None, if_match=None, expect=None, expect_absent=None):
        """``expect``/``expect_absent``: what keys held when read (``Conflict`` if changed)."""
        body = {}
        if set_:
            body["set"] = set_
        if remove:
            body["remove"] = list(remove)
        if expect:
            body["expect"] = expect
        if expect_absent:
            body["expect_absent"] = list(expect_absent)
        if ttl is not None:
            body["ttl"] = ttl
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else None
        return int(self._call("PATCH", f"/v1/sessions/{_quote(sid)}", body, headers)["version"])

    def delete(self, sid):
        self._call("DELETE", f"/v1/sessions/{_quote(sid)}", ok=(200, 204))

    def rotate(self, sid, new_sid, set_=None, remove=None, data=None, ttl=None, keep_old=None):
        body = {"new_sid": new_sid}
        if data is not None:
            body["data"] = data
        else:
            if set_:
                body["set"] = set_
            if remove:
                body["remove"] = list(remove)
        if ttl is not None:
            body["ttl"] = ttl
        if keep_old is not None:
            body["keep_old"] = keep_old
        return int(self._call("POST", f"/v1/sessions/{_quote(sid)}/rotate", body, ok=(200, 201))["version"])

    # -- Odoo 18+ device identifiers --------------------------------------

    def delete_identifiers(self, identifiers):
        identifiers = list(identifiers)
        deleted = 0
        for i in range(0, len(identifiers), DELETE_BATCH):
            chunk = identifiers[i : i + DELETE_BATCH]
            deleted += int(
                self._call("POST", "/v1/identifiers/delete", {"identifiers": chunk}).get("deleted", 0)
            )
        return deleted

    def missing_identifiers(self, identifiers):
        identifiers = list(dict.fromkeys(identifiers))
        missing = set()
        for i in range(0, len(identifiers), IDENTIFIER_BATCH):
            chunk = identifiers[i : i + IDENTIFIER_BATCH]
            missing.update(self._call("POST", "/v1/identifiers/missing", {"identifiers": chunk})["missing"])
        return missing

    # -- operations -------------------------------------------------------

    def readiness(self):
        """``(True, "")`` when the sidecar answers ``200`` on ``/readyz``, else ``(False, reason)``.

        ``/readyz`` says the sidecar is up and configured; what it says about
        the shared backend depends on the sidecar's version (see
        docs/sidecar-api.md), and callers take its answer as it is.
        """
        try:
            status, _headers, raw = self.transport.request("GET", "/readyz")
        except TransportError as exc:
            return False, str(exc)
        if status == 200:
            return True, ""
        try:
            err = json.loads(raw) if raw else {}
            if not isinstance(err, dict):
                err = {}
        except ValueError:
            err = {}
        detail = ": ".join(str(part) for part in (err.get("error"), err.get("message")) if part)
        if not detail:
            detail = raw[:200].decode("utf-8", "replace").strip()
        reason = f"the sidecar at {self.settings.describe()} answered {status} on /readyz"
        return False, f"{reason}: {detail}" if detail else reason

    def ready(self):
        """True when the sidecar answers ``200`` on ``/readyz``."""
        return self.readiness()[0]
