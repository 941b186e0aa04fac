import os
import threading
import time

from odoo import http
from odoo.http import request

# Runs of /dkn_probe/slow_incr per token, in this process: Odoo's retry loop
# runs the route again under the same request, so runs - 1 = retries.
_RUNS = {}
_RUNS_LOCK = threading.Lock()


class DknProbe(http.Controller):
    @http.route("/dkn_probe/slow_set_a", type="json", auth="user")
    def slow_set_a(self, value, delay=1.0):
        # The session is loaded before the sleep: a store that writes back the
        # whole copy at the end of this request erases what others saved meanwhile.
        time.sleep(float(delay))
        request.session["a"] = value
        return {"a": value, "sid42": request.session.sid[:42]}

    @http.route("/dkn_probe/set_b", type="json", auth="user")
    def set_b(self, value):
        request.session["b"] = value
        return {"b": value}

    @http.route("/dkn_probe/slow_incr", type="json", auth="user")
    def slow_incr(self, token, delay=0.7):
        # A slow read-modify-write of ONE key: two at once must give +2, which
        # needs the second save refused and the request re-run on fresh data.
        with _RUNS_LOCK:
            runs = _RUNS[token] = _RUNS.get(token, 0) + 1
        before = int(request.session.get("counter") or 0)
        time.sleep(float(delay))
        request.session["counter"] = before + 1
        return {"before": before, "after": before + 1, "runs": runs, "pid": os.getpid()}

    @http.route("/dkn_probe/get", type="json", auth="user")
    def get(self):
        return {
            "a": request.session.get("a"),
            "b": request.session.get("b"),
            "counter": request.session.get("counter"),
            "uid": request.session.uid,
        }

    @http.route("/dkn_probe/whoami", type="json", auth="none")
    def whoami(self):
        # auth="none" so a dead session does not turn into an error: lets the
        # harness tell "logged out" apart from "server broken".
        return {"uid": request.session.uid, "sid_len": len(request.session.sid)}
