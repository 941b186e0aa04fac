import time

from odoo import http
from odoo.http import request


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

    @http.route("/dkn_probe/get", type="json", auth="user")
    def get(self):
        return {
            "a": request.session.get("a"),
            "b": request.session.get("b"),
            "uid": request.session.uid,
        }

    @http.route("/dkn_probe/whoami", type="json", auth="none")
    def whoami(self):
        # auth="none" so a dead session does not turn into an error: lets the
        # harness tell "logged out" apart from "server broken".
        return {"uid": request.session.uid, "sid_len": len(request.session.sid)}
