"""bind(): fields that every tagged log call made inside a ``with`` block carries, on contextvars.

It sets ``_capture.BOUND``, which ``_capture`` reads when it takes a tagged call.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import Any

from ._capture import BOUND, USER_ID_KEYS
from ._ownlog import warn

__all__ = ["Binding", "bind"]

# Each log call tags itself; a bound tag would make untagged calls events.
_PER_CALL_KEYS = frozenset({"cio_event", "cio_action"})


def bind(**fields: Any) -> Binding:
    """Add ``fields`` to every tagged log call made inside a ``with`` block.

    ::

        with cio.bind(user_id=str(user.pk), plan=account.plan):
            log.info("signed_up", extra={"cio_event": True})   # sent for user_id, with plan

    Both ``CustomerIOHandler`` and ``CustomerIOProcessor`` add them. The values are data
    like any logged value: read (containers copied) when the call is logged, checked and
    converted as the call's own are, so a value that cannot be sent makes that event
    ``invalid``, never an exception here.

    - **As if the call had passed them.** Only the call's own keys win, key by key
      (``user_id`` and ``customer_id`` count as one key). The person is then picked as
      for any call, ``user_id`` first, then ``email``, ``cio_id``, ``anonymous_id``, and
      the person keys not picked are sent as data: inside ``bind(user_id="42")``, a call
      logging ``email="new@example.com"`` is sent for user 42, with that email as data.
    - **A call about someone else names them.** Its own ``user_id`` wins over the bound
      one; a key it passes as None removes the bound value, so ``user_id=None,
      email="invitee@example.com"`` is sent to the invitee, by email.
    - **Blocks nest.** An inner ``bind`` adds to the outer one's fields and overrides
      them, key by key as a call does; binding a key to None hides the outer value
      inside the block. Each block's fields are undone when it exits.
    - **Contexts keep their own.** Bound fields live in a ``contextvars.ContextVar``: an
      asyncio task sees what was bound when it was created, and what it binds stays its
      own; a thread started inside the block starts with nothing bound (run it with
      ``contextvars.copy_context().run`` to carry them). Fields are read on the thread
      that logs: a ``CustomerIOHandler`` behind a ``QueueHandler`` runs on the queue's
      listener thread and sees none of them. A block must end on the thread or task it
      began on; one that does not is warned about once, never raised about (a FastAPI
      plain ``def`` dependency runs each step on its own worker thread: its fields
      never reach the endpoint).
    - **Log calls only.** Direct calls (``cio.track(person, ...)``) name their person and
      data explicitly and ignore bound fields.

    With structlog, context bound with ``structlog.contextvars`` is part of the call's own
    event dict (``merge_contextvars``), so it wins over fields bound here.

    Args:
        **fields: The keys and values to add: a person (``user_id``, ``email``,
            ``anonymous_id``...) or any attribute.

    Returns:
        A context manager; the fields are bound from ``__enter__`` to ``__exit__``.

    Raises:
        TypeError: ``cio_event`` or ``cio_action`` was given: each call tags itself.
    """
    per_call = sorted(_PER_CALL_KEYS.intersection(fields))
    if per_call:
        raise TypeError(
            f"bind() cannot bind {' or '.join(per_call)}: each log call tags itself; bind "
            f"the person and the data"
        )
    return Binding(fields)


class Binding:
    """What :func:`bind` returns: binds its fields from ``__enter__`` to ``__exit__``.

    One ``with`` block at a time, begun and ended on the same thread or asyncio task
    (``__exit__`` warns once, on the ``customerio_logging`` logger, otherwise); call
    ``bind()`` again for another block.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = dict(fields)
        self._token: Token[Mapping[str, Any]] | None = None

    def __enter__(self) -> None:
        if self._token is not None:
            raise RuntimeError("this bind() is already in use: call bind() again for another block")
        outer = BOUND.get()
        if any(key in self._fields for key in USER_ID_KEYS):
            # Two names of one identifier: an inner one replaces the outer, whichever it is.
            outer = {key: value for key, value in outer.items() if key not in USER_ID_KEYS}
        merged = {**outer, **self._fields}
        self._token = BOUND.set({key: value for key, value in merged.items() if value is not None})

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        try:
            BOUND.reset(token)
        except ValueError:
            # Raising would fail the request at its teardown, its work done: say it instead.
            _warn_other_context()

    def __repr__(self) -> str:
        # The keys only: the values are event data, never shown in a repr.
        return f"<bind {', '.join(sorted(self._fields))}>"


_warned_other_context = False
_warned_lock = threading.Lock()


def _warn_other_context() -> None:
    """Say, once per process, that a block ended in another context than it began in."""
    global _warned_other_context
    with _warned_lock:
        said, _warned_other_context = _warned_other_context, True
    if not said:
        warn(
            "a bind() block ended on another thread or task than the one it began on: its "
            "fields may not have reached the code in between, and stay bound where it "
            "began. Enter and exit it on one thread or task; with FastAPI, bind in an "
            "`async def` dependency or a middleware, not a plain `def` one (said once)"
        )
