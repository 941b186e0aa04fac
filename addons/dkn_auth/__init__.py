# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl).
import logging

from . import client  # noqa: F401  (importable without Odoo)


def post_load():
    from .odoo_glue import install_or_fail_closed

    install_or_fail_closed()


def _load_controllers():
    """``/web/health`` override; a failure here must not undo the store."""
    try:
        from . import controllers  # noqa: F401
    except Exception:  # noqa: BLE001 - Odoo would only log it and drop the addon
        logging.getLogger("odoo.addons.dkn_auth").error(
            "dkn_auth: /web/health is not overridden (it answers 200 even with the sidecar down)",
            exc_info=True,
        )


# Imported by Odoo as a server-wide module: install before the first request.
# Imported as plain ``dkn_auth`` (the Odoo-free tests), do nothing.
if __name__.startswith("odoo.addons."):
    post_load()
    _load_controllers()
