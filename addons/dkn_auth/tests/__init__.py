from . import test_session_store  # noqa: F401
