"""Turn a session store outage into ``503 session store unavailable``.

Odoo catches exceptions inside its WSGI entry point and answers them its own
way (a JSON-RPC error with HTTP 200 for JSON routes, an HTML error page
otherwise). So the store records the outage in a request-local flag, and this
wrapper around the entry point replaces whatever Odoo built with a plain 503.
The start_response call is held back until Odoo returns so the status can
still be changed.
"""

import threading

BODY = b"session store unavailable\n"

_state = threading.local()  # per greenlet under gevent


def mark_unavailable(reason):
    _state.failed = reason


def clear():
    _state.failed = None


def failed():
    return getattr(_state, "failed", None)


def unavailable_response(start_response):
    start_response(
        "503 Service Unavailable",
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(BODY))),
            ("Cache-Control", "no-store"),
            ("Retry-After", "5"),
        ],
    )
    return [BODY]


def wrap(call):
    def __call__(self, environ, start_response):
        clear()
        held = []
        started = []

        def real_start():
            if not started and held:
                started.append(True)
                return start_response(*held[-1])
            return None

        def holding_start_response(status, headers, exc_info=None):
            if started:
                return start_response(status, headers, exc_info)
            held.append((status, headers, exc_info))

            def write(data):
                real_write = real_start()
                if real_write is not None:
                    real_write(data)

            return write

        try:
            app_iter = call(self, environ, holding_start_response)
        except Exception:
            if failed() is None:
                raise
            clear()
            return unavailable_response(start_response)
        if failed() is not None:
            clear()
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
            return unavailable_response(start_response)
        if held:
            real_start()
        else:
            # The application starts the response lazily: let it through.
            started.append(True)
        return app_iter

    __call__.__wrapped__ = call
    __call__._dkn_auth = True
    return __call__
