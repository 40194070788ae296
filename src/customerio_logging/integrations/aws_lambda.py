"""AWS Lambda: after each invocation, deliver what it logged or put it on disk, bounded."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar, overload

from .._global import flush_or_spool

__all__ = ["DEFAULT_TIMEOUT", "SAFETY_MARGIN", "flush_after"]

DEFAULT_TIMEOUT = 1.0
"""Seconds an invocation may spend delivering its events after the handler returns."""
SAFETY_MARGIN = 0.5
"""Seconds always left to the invocation's own deadline (the context's remaining time)."""

F = TypeVar("F", bound=Callable[..., Any])


@overload
def flush_after(timeout: F) -> F: ...


@overload
def flush_after(timeout: float | None = None) -> Callable[[F], F]: ...


def flush_after(timeout: float | Callable[..., Any] | None = None) -> Any:
    """Decorate a Lambda handler: after each invocation, what it logged is delivered or
    on disk before the handler's answer goes back.

    Lambda freezes the sandbox as soon as the handler returns, and may never thaw it: the
    background thread cannot be counted on to send later. So after each invocation the
    events are delivered within a bound: ``timeout`` (``DEFAULT_TIMEOUT`` when None), cut
    to the invocation's remaining time less ``SAFETY_MARGIN``. Whatever is not delivered
    by then (the API down or slow) is written to the spool before the handler returns,
    and sent by a later invocation's background replay. An invocation with the API down
    is held that bound, and a few milliseconds more, never longer. Set ``spool_path`` (or
    ``CUSTOMERIO_SPOOL_PATH``) to a file under ``/tmp``: the only writable place there.

    Use as ``@flush_after`` or ``@flush_after(timeout=2.0)``. Never raises from the
    flush: the handler's own result or exception goes back unchanged.
    """
    if callable(timeout):
        return _decorate(timeout, None)
    return functools.partial(_decorate, timeout=timeout)


def _decorate(handler: F, timeout: float | None) -> F:
    @functools.wraps(handler)
    def invoke(event: Any, context: Any = None, *args: Any, **kwargs: Any) -> Any:
        try:
            return handler(event, context, *args, **kwargs)
        finally:
            with contextlib.suppress(Exception):  # the handler's outcome goes back as is
                flush_or_spool(_bound(timeout, context))

    return invoke  # type: ignore[return-value]


def _bound(timeout: float | None, context: Any) -> float:
    """The seconds to deliver in: the timeout, within the invocation's remaining time."""
    bound = DEFAULT_TIMEOUT if timeout is None else timeout
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        with contextlib.suppress(Exception):
            bound = min(bound, float(remaining()) / 1000 - SAFETY_MARGIN)
    return max(0.0, bound)
