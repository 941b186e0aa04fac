"""Odoo-free client of the odoo-session-sidecar HTTP API.

Nothing in this package imports Odoo: it is tested on its own against a real
sidecar process, and the Odoo glue (``..odoo_glue``) only adapts it to each
Odoo version's session store interface.
"""

from .api import (
    AlreadyRotated,
    BadRequest,
    Client,
    Conflict,
    Gone,
    NotFound,
    PreconditionFailed,
    SessionRecord,
    SidecarError,
    Unavailable,
)
from .config import ConfigError, Settings, load_settings

__all__ = [
    "AlreadyRotated",
    "BadRequest",
    "Client",
    "ConfigError",
    "Conflict",
    "Gone",
    "NotFound",
    "PreconditionFailed",
    "SessionRecord",
    "Settings",
    "SidecarError",
    "Unavailable",
    "load_settings",
]
