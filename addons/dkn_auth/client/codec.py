"""JSON encoding of session values.

Odoo 14 to 17 keep sessions with pickle, so their sessions may hold values
JSON has no type for. The ones met in standard apps are tagged and come back
as the same type::

    set / frozenset  -> {"_type": "set", "value": [...]}        (back as set)
    datetime         -> {"_type": "datetime_isoformat", "value": "..."}
    date             -> {"_type": "date_isoformat", "value": "..."}

The tag format is the one camptocamp ``session_redis`` uses, so sessions
written by it decode the same. What still changes type (documented in
docs/odoo-addon.md): tuples come back as lists, frozensets as sets, and dict
keys that are int/float/bool/None come back as strings. Any other type (bytes,
Decimal, records...) is refused with :class:`UnencodableValue`: never pickle.

Odoo 18+ sessions are plain JSON already (``Session.__setitem__`` checks), so
the glue uses ``tagged=False`` there and user data that happens to look like a
tag is left alone.
"""

import datetime
import json
import re

SET = "set"
DATETIME = "datetime_isoformat"
DATE = "date_isoformat"
_TAGS = frozenset({SET, DATETIME, DATE})


class UnencodableValue(TypeError):
    pass


def _key(k, path):
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, (bool, int, float)):
        # json.dumps would do the same conversion; doing it here keeps
        # sort_keys usable on mixed key types.
        return json.dumps(k)
    raise UnencodableValue(
        f"session value at {path}: dict key {k!r} of type {type(k).__name__} cannot be stored as JSON"
    )


def encode(value, tagged=True, path="session"):
    """Return a JSON-ready copy of ``value`` (new containers, tags if ``tagged``)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {_key(k, path): encode(v, tagged, f"{path}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v, tagged, f"{path}[{i}]") for i, v in enumerate(value)]
    if tagged:
        if isinstance(value, (set, frozenset)):
            items = [encode(v, tagged, f"{path}{{}}") for v in value]
            try:
                # A stable order keeps "same set" == "same JSON" for the diff.
                items.sort(key=_sort_key)
            except TypeError:
                pass
            return {"_type": SET, "value": items}
        if isinstance(value, datetime.datetime):
            return {"_type": DATETIME, "value": value.isoformat()}
        if isinstance(value, datetime.date):
            return {"_type": DATE, "value": value.isoformat()}
    raise UnencodableValue(
        f"session value at {path} of type {type(value).__name__} cannot be stored as JSON"
        + ("" if tagged else " (Odoo 18+ sessions hold JSON values only)")
    )


def _sort_key(v):
    return json.dumps(v, sort_keys=True)


def decode(value):
    """Inverse of :func:`encode` with tags; always returns new containers."""
    if isinstance(value, dict):
        if len(value) == 2 and value.get("_type") in _TAGS and "value" in value:
            tag, inner = value["_type"], value["value"]
            try:
                if tag == SET:
                    return {_hashable(decode(v)) for v in inner}
                if tag == DATETIME:
                    return _parse_datetime(inner)
                return _parse_date(inner)
            except (TypeError, ValueError):
                pass  # not one of ours: keep the dict as it is
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?"
    r"(?:([+-])(\d{2}):(\d{2})(?::(\d{2}))?)?)?$"
)


def _parse_iso(text, with_time):
    # datetime.fromisoformat only exists from Python 3.7 (Odoo 14 runs on 3.6).
    if not isinstance(text, str):
        raise TypeError("not a string")
    m = _ISO_RE.match(text)
    if not m or (m.group(4) is None) == with_time:
        raise ValueError(f"not an ISO {'datetime' if with_time else 'date'}: {text!r}")
    y, mo, d, hh, mm, ss, frac, sign, tzh, tzm, tzs = m.groups()
    if not with_time:
        return datetime.date(int(y), int(mo), int(d))
    tz = None
    if sign:
        offset = datetime.timedelta(hours=int(tzh), minutes=int(tzm), seconds=int(tzs or 0))
        tz = datetime.timezone(-offset if sign == "-" else offset)
    micro = int((frac or "0").ljust(6, "0"))
    return datetime.datetime(int(y), int(mo), int(d), int(hh), int(mm), int(ss or 0), micro, tz)


def _parse_datetime(text):
    return _parse_iso(text, True)


def _parse_date(text):
    return _parse_iso(text, False)


def _hashable(v):
    # A set member that was a tuple was stored as a list; make it a tuple again
    # so it fits in the set.
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def canonical(value):
    """One string per JSON value, equal iff the values are equal as JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
