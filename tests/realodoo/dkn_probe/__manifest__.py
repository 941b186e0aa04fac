# Test addon for tests/realodoo/check_two_process.py; never shipped.
{
    "name": "dkn_probe (local session test routes)",
    "version": "1.0.0",
    "license": "LGPL-3",
    "depends": ["web"],
    "installable": True,
    "post_init_hook": "post_init",
}
