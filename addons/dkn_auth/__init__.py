# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl).
from . import client  # noqa: F401  (importable without Odoo)


def post_load():
    from .odoo_glue import install_or_fail_closed

    install_or_fail_closed()


# Imported by Odoo as a server-wide module: install before the first request.
# Imported as plain ``dkn_auth`` (the Odoo-free tests), do nothing.
if __name__.startswith("odoo.addons."):
    post_load()
