# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl).
"""Tests run by Odoo itself (``--test-tags /dkn_auth``), against a running sidecar.

They need dkn_auth loaded server-wide (``--load=base,web,dkn_auth``) and the
sidecar reachable through ``DKN_AUTH_URL``/``DKN_AUTH_SOCKET``.
"""

import json
from unittest.mock import patch

from odoo import http, release
from odoo.tests import HttpCase, tagged

from ..client import Client
from ..client.config import Settings
from ..odoo_glue import health_check, odoo_major

MAJOR = odoo_major(release)


@tagged("post_install", "-at_install", "dkn_auth")
class TestSessionStore(HttpCase):
    @property
    def store(self):
        return http.root.session_store

    def _sid(self):
        return self.opener.cookies.get("session_id")

    def _session_info(self):
        return self.url_open(
            "/web/session/get_session_info",
            data=json.dumps({"jsonrpc": "2.0", "method": "call", "params": {}}),
            headers={"Content-Type": "application/json"},
        )

    def test_store_is_the_sidecar(self):
        self.assertEqual(type(self.store).__name__, "DknSessionStore")
        self.assertEqual(len(self.store.generate_key()), 84 if MAJOR >= 18 else 40)
        self.assertTrue(self.store.client.ready(), "the sidecar does not answer /readyz")

    def test_health_follows_the_sidecar(self):
        # Through this database's routing map (installed modules + server-wide ones).
        response = self.url_open("/web/health")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json()["status"], "pass")
        with patch.object(health_check(), "status", return_value=(False, "test: sidecar down")):
            response = self.url_open("/web/health")
        self.assertEqual(response.status_code, 503)
        self.assertEqual(response.json()["error"], "test: sidecar down")

    def test_login_is_kept_by_the_sidecar(self):
        admin = self.env.ref("base.user_admin")
        self.authenticate(admin.login, "admin")
        sid = self._sid()
        record = self.store.client.get(sid)
        self.assertIsNotNone(record)
        self.assertEqual(record.data["uid"], admin.id)
        response = self._session_info()
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json()["result"]["uid"], admin.id)

    def test_logout_deletes_the_session(self):
        admin = self.env.ref("base.user_admin")
        self.authenticate(admin.login, "admin")
        sid = self._sid()
        self.url_open("/web/session/logout", allow_redirects=False)
        self.assertIsNone(self.store.client.get(sid))

    def test_session_gc_is_a_no_op(self):
        if hasattr(type(self.env["ir.http"]), "_gc_sessions"):
            self.env["ir.http"]._gc_sessions()
        self.assertIsNone(self.store.vacuum(max_lifetime=1))

    def test_outage_is_503(self):
        admin = self.env.ref("base.user_admin")
        self.authenticate(admin.login, "admin")
        client = self.store.client
        self.store.client = Client(Settings(url="http://127.0.0.1:1", timeout=0.5))
        try:
            response = self.url_open("/web/login", allow_redirects=False)
            self.assertEqual(response.status_code, 503)
            self.assertEqual(response.text, "session store unavailable\n")
            response = self._session_info()
            self.assertEqual(response.status_code, 503)
        finally:
            self.store.client = client

    def test_device_revocation_ends_the_session(self):
        if MAJOR < 18:
            self.skipTest("res.device exists from Odoo 18")
        admin = self.env.ref("base.user_admin")
        self.authenticate(admin.login, "admin")
        sid = self._sid()
        self.assertIsNotNone(self.store.client.get(sid))
        self.assertEqual(self.store.get_missing_session_identifiers([sid[:42]]), set())
        # A request with the session makes Odoo log the device (res.device.log).
        self.assertEqual(self._session_info().status_code, 200)
        self.env.invalidate_all()
        devices = self.env["res.device"].search([("session_identifier", "=", sid[:42])])
        self.assertTrue(devices)
        devices._revoke()
        self.assertIsNone(self.store.client.get(sid))
        self.assertEqual(self.store.get_missing_session_identifiers([sid[:42]]), {sid[:42]})
