"""``/web/health`` fails when this pod's sidecar cannot be reached.

Core's ``/web/health`` (``auth='none'``, ``save_session=False``) answers 200
as long as the Odoo process runs, so with the sidecar down a load balancer
keeps sending users to a pod where nobody can log in. This override answers
core's answer (``super().health(...)``, whatever its signature: ``health()``
on 15 and early 16/17, ``health(db_server_status=False)`` on later 16, 17.x,
18, 19) when the sidecar answers its ``/readyz``, and a 503 naming the
sidecar's address and the error when it does not.

``dkn_auth`` is a server-wide module, so Odoo includes this controller both in
its no-database routing map (``[''] + server_wide_modules``) and in every
database's routing map (installed modules plus server-wide modules). The
method is decorated again with ``@http.route()``, as Odoo requires of an
overridden route (14/15 drop an undecorated override; 16+ warn and decorate
it).
"""

import logging

from odoo import http

from ..odoo_glue import health, health_check

try:  # Odoo 16+
    from odoo.addons.web.controllers.home import Home
except ImportError:  # Odoo 14/15
    from odoo.addons.web.controllers.main import Home

_logger = logging.getLogger("odoo.addons.dkn_auth")


def _unavailable(check, error):
    return http.Response(check.failure_body(error), status=503, headers=list(health.FAILURE_HEADERS))


if hasattr(Home, "health"):

    class DknAuthHealth(Home):
        @http.route()
        def health(self, **kw):
            check = health_check()
            if check is None:
                # The store was not installed: every request already answers 503.
                return http.Response(
                    '{"status": "fail", "dkn_auth": "session store not installed"}',
                    status=503,
                    headers=list(health.FAILURE_HEADERS),
                )
            ok, error = check.status()
            if ok:
                return super().health(**kw)
            return _unavailable(check, error)

else:  # pragma: no cover - an Odoo without core's /web/health
    _logger.info("dkn_auth: this Odoo has no /web/health route; probe the sidecar's /readyz instead")
