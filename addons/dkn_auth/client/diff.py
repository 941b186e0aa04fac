"""What changed in a session since it was loaded.

The store keeps the JSON the sidecar returned (``Snapshot.data``) and compares
it key by key with the JSON of the session at save time. Comparing encoded
JSON, not Python objects, catches in-place changes (``session['x'].append``)
and type changes that ``==`` misses (``1`` vs ``True``).
"""

from .codec import canonical


class Snapshot:
    """The session as loaded (``data``: the stored JSON) and what became of it."""

    __slots__ = ("sid", "data", "version", "ttl", "gone", "_canon")

    def __init__(self, sid, data, version=0, ttl=0, gone=False):
        self.sid = sid
        self.data = data
        self.version = version
        self.ttl = ttl
        self.gone = gone
        self._canon = {}

    def canonical(self, key):
        try:
            return self._canon[key]
        except KeyError:
            c = self._canon[key] = canonical(self.data[key])
            return c


def changes(snapshot, current):
    """Return ``(set_, remove)`` to turn ``snapshot.data`` into ``current``.

    ``current`` is the encoded (JSON-ready) session.
    """
    set_ = {}
    for key, value in current.items():
        if key not in snapshot.data or snapshot.canonical(key) != canonical(value):
            set_[key] = value
    remove = [key for key in snapshot.data if key not in current]
    return set_, remove
