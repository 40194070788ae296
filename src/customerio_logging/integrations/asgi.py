"""ASGI middleware that shuts the bridge down at lifespan shutdown, after the server drained.

No framework is imported: it wraps any ASGI 3 app (Starlette, FastAPI, Django, Litestar).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .. import _lifecycle, shutdown

__all__ = ["CustomerIOMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("customerio_logging")

_STARTUP_REPLIES = frozenset({"lifespan.startup.complete", "lifespan.startup.failed"})
_SHUTDOWN_REPLIES = frozenset({"lifespan.shutdown.complete", "lifespan.shutdown.failed"})


@dataclass
class _Progress:
    """How far the lifespan protocol went between the server and the wrapped app."""

    startup: bool = False  # lifespan.startup received from the server
    shutdown: bool = False  # lifespan.shutdown received from the server
    startup_reply: str | None = None  # the startup reply sent to the server
    shutdown_replied: bool = False


class CustomerIOMiddleware:
    """Deliver what is queued when the server shuts down, after it drained its requests.

    At ``lifespan.shutdown`` (which uvicorn and gunicorn's ``UvicornWorker`` send once the
    requests in flight are answered) it shuts the process's bridge down, off the event
    loop, within ``shutdown_timeout``: events are delivered, what cannot be is spooled.
    Only then does the server hear that the app shut down. This matters where the
    server ends the process in a way that skips ``atexit`` (``uvicorn --workers N``
    re-raises SIGTERM with its default disposition).

    HTTP and websocket scopes pass straight through. An app that does not support the
    lifespan protocol (it returns or raises on the ``lifespan`` scope, as Django's
    ``ASGIHandler`` does) is spoken for: the middleware answers the server itself.
    Without lifespan (``uvicorn --lifespan off``) nothing is shut down here.

    ::

        app = CustomerIOMiddleware(app)  # or Starlette: Middleware(CustomerIOMiddleware)

    Args:
        app: The ASGI application to wrap.
        shutdown_timeout: Seconds the shutdown may take; the bridge's own
            ``shutdown_timeout`` when None (it may run ``EXIT_MARGIN`` past that to
            write the rest to disk).
    """

    def __init__(self, app: ASGIApp, *, shutdown_timeout: float | None = None) -> None:
        self.app = app
        self.shutdown_timeout = shutdown_timeout
        # The process's exit is covered: no need to warn that SIGTERM skips our flush.
        _lifecycle.note_exit_covered()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        progress = _Progress()

        async def app_receive() -> Message:
            message = await receive()
            kind = message.get("type")
            if kind == "lifespan.startup":
                progress.startup = True
            elif kind == "lifespan.shutdown":
                progress.shutdown = True
            return message

        async def app_send(message: Message) -> None:
            kind = message.get("type")
            if kind in _SHUTDOWN_REPLIES:
                # The app's own shutdown is done (what it logged there is queued): the
                # server ends the process soon after this reply, so deliver first.
                await self._shut_bridge_down()
                progress.shutdown_replied = True
            elif kind in _STARTUP_REPLIES:
                progress.startup_reply = kind
            await send(message)

        error: Exception | None = None
        try:
            await self.app(scope, app_receive, app_send)
        except Exception as exc:  # noqa: BLE001 - re-raised below, or lifespan unsupported
            error = exc
        if progress.shutdown_replied or progress.startup_reply == "lifespan.startup.failed":
            if error is not None:
                raise error
            return
        if progress.startup_reply is None:
            # The app ended before answering startup: it does not speak lifespan (what
            # uvicorn's "auto" mode and the ASGI spec take an error here to mean).
            if error is not None:
                _log.debug("the ASGI app does not support lifespan: %r", error)
                error = None
            if not progress.startup:
                await app_receive()
            await send({"type": "lifespan.startup.complete"})
        # Started, and the app ended without answering shutdown: finish for it.
        while not progress.shutdown:
            await app_receive()
        await self._shut_bridge_down()
        if error is not None:
            raise error
        await send({"type": "lifespan.shutdown.complete"})

    async def _shut_bridge_down(self) -> None:
        await _off_loop(functools.partial(shutdown, self.shutdown_timeout))


async def _off_loop(work: Callable[[], None]) -> None:
    """Run ``work`` on a worker thread, so that the event loop is never blocked by it."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        # Not asyncio (trio): no thread to await without importing a framework. At
        # lifespan shutdown the requests are drained: blocking delays only the exit.
        work()
        return
    await loop.run_in_executor(None, work)
