"""A raw ASGI app for uvicorn: each request logs one tagged event after a little work.

Settings come from the environment (CUSTOMERIO_*), ``configure()`` runs at import (as
the README says to). ``APP_MIDDLEWARE=1`` wraps the app in CustomerIOMiddleware;
a request works until the file ``APP_RELEASE`` exists (a test makes it once the server
is shutting down, so that requests are in flight at SIGTERM whatever the machine's load),
or ``APP_WORK`` seconds without it; then it logs and answers. ``APP_FLUSH_INTERVAL`` is
the bridge's flush_interval. The app does not speak lifespan (it
returns on any scope but http), like many raw apps and Django's ASGIHandler. It writes
``started <user>`` to stderr when a request begins, so a test knows it is in flight.
"""

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import customerio_logging as cio

WORK = float(os.environ.get("APP_WORK", "0"))
RELEASE = os.environ.get("APP_RELEASE")

cio.configure(flush_interval=float(os.environ.get("APP_FLUSH_INTERVAL", "1.0")))
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.addHandler(cio.CustomerIOHandler())


async def _work() -> None:
    if RELEASE is None:
        await asyncio.sleep(WORK)
        return
    deadline = time.monotonic() + 30.0
    while not os.path.exists(RELEASE) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def _app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    user = parse_qs(scope["query_string"].decode()).get("user", ["nobody"])[0]
    sys.stderr.write(f"started {user}\n")
    sys.stderr.flush()
    await _work()
    log.info("request_done", extra={"cio_event": True, "user_id": user, "pid": os.getpid()})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


app = _app
if os.environ.get("APP_MIDDLEWARE") == "1":
    from customerio_logging.integrations.asgi import CustomerIOMiddleware

    app = CustomerIOMiddleware(_app)
