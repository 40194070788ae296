"""The markers a background thread's queue carries beside its items: a flush and a stop."""

from __future__ import annotations

import threading

__all__ = ["Flush", "Stop"]


class Flush:
    """Everything queued before it is done (sent, or written) when the thread reaches it;
    ``done`` is set then."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class Stop:
    """The thread ends when it reaches it."""

    __slots__ = ()
