# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl).
{
    "name": "Shared HTTP sessions (odoo-ha-session sidecar)",
    "summary": "Keep Odoo sessions in the odoo-session-sidecar (Redis/PostgreSQL) instead of local files",
    "version": "1.0.0",
    "category": "Technical",
    "website": "https://github.com/odoo-ha-session/odoo-ha-session",
    "author": "odoo-ha-session contributors",
    "license": "LGPL-3",
    "depends": ["base", "web"],
    "external_dependencies": {"python": []},
    "data": [],
    "post_load": "post_load",
    "installable": True,
    "auto_install": False,
}
