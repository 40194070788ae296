"""A WSGI app for the gunicorn test: each request logs one tagged event for ?user=ID.

Settings come from the environment (CUSTOMERIO_*). ``CIO_APP_EXIT=os`` makes the worker
end with os._exit at exit (as an app that skips atexit would), to show the hook's worth.
"""

import atexit
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import customerio_logging as cio

log = logging.getLogger("wsgi")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(cio.CustomerIOHandler())

if os.environ.get("CIO_APP_EXIT") == "os":
    # Registered at import, before the library's exit hook runs (hooks run last-in,
    # first-out, and the library registered its own when imported above): this one runs
    # first and ends the process.
    atexit.register(os._exit, 0)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    user = parse_qs(environ.get("QUERY_STRING", "")).get("user", ["anon"])[0]
    log.info("page_viewed", extra={"cio_event": True, "user_id": user})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
