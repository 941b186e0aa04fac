from . import controllers


def post_init(env_or_cr, registry=None):
    """Attachments in the database: the two processes have separate data directories.

    Odoo 16 passes ``(cr, registry)``, 17+ an env.
    """
    from odoo import SUPERUSER_ID, api

    env = env_or_cr if registry is None else api.Environment(env_or_cr, SUPERUSER_ID, {})
    env["ir.config_parameter"].set_param("ir_attachment.location", "db")
    env["ir.attachment"].force_storage()
