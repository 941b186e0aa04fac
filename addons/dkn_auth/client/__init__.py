"""Odoo-free client of the odoo-session-sidecar HTTP API.

Nothing in this package imports Odoo: it is tested on its own against a real
sidecar process, and the Odoo glue (``..odoo_glue``) only adapts it to each
Odoo version's session store interface.
"""

from .api import (
    BadRequest,
    Client,
    Gone,
    NotFound,
    PreconditionFailed,
    SessionRecord,
    SidecarError,
    Unavailable,
)
from .config import ConfigError, Settings, load_settings

__all__ = [
    "BadRequest",
    "Client",
    "ConfigError",
    "Gone",
    "NotFound",
    "PreconditionFailed",
    "SessionRecord",
    "Settings",
    "SidecarError",
    "Unavailable",
    "load_settings",
]
