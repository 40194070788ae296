"""bind(): fields that every tagged log call made inside a ``with`` block carries, on contextvars.

``_capture`` reads :data:`BOUND` when it takes a tagged call; nothing else does.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType, TracebackType
from typing import Any

__all__ = ["BOUND", "Binding", "bind"]

BOUND: ContextVar[Mapping[str, Any]] = ContextVar(
    "customerio_logging.bound", default=MappingProxyType({})
)
"""The fields bound in the current context: never mutated, replaced by each ``bind``."""

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

    - **The call wins.** A key the call passes itself is kept over the bound one. A call
      that names its own person (a ``user_id``, ``customer_id``, ``email``, ``cio_id`` or
      ``anonymous_id`` that is not None) gets none of the bound person keys: the event is
      about whom the call says. A person key the call passes as None names nobody: the
      bound person is used.
    - **Blocks nest.** An inner ``bind`` adds to the outer one's fields and overrides
      them; binding a key to None hides the outer value inside the block. Each block's
      fields are undone when it exits.
    - **Contexts keep their own.** Bound fields live in a ``contextvars.ContextVar``: an
      asyncio task sees what was bound when it was created, and what it binds stays its
      own; a thread started inside the block starts with nothing bound (run it with
      ``contextvars.copy_context().run`` to carry them). Fields are read on the thread
      that logs: a ``CustomerIOHandler`` behind a ``QueueHandler`` runs on the queue's
      listener thread and sees none of them.
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
    (``__exit__`` raises ``RuntimeError`` otherwise); call ``bind()`` again for another
    block.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = dict(fields)
        self._token: Token[Mapping[str, Any]] | None = None

    def __enter__(self) -> None:
        if self._token is not None:
            raise RuntimeError("this bind() is already in use: call bind() again for another block")
        merged = {**BOUND.get(), **self._fields}
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
            # contextvars' own message names a token; say what went wrong instead.
            raise RuntimeError(
                "bind()'s block ended in another context than the one it began in, so its "
                "fields never reached the code in between: enter and exit it on one thread "
                "or task (with FastAPI, bind in an `async def` dependency or a middleware)"
            ) from None

    def __repr__(self) -> str:
        # The keys only: the values are event data, never shown in a repr.
        return f"<bind {', '.join(sorted(self._fields))}>"
