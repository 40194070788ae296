"""Ctrl-C in a long command: the first asks it to stop at its next safe point, a second at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopRequest"]

_WATCHER_WAIT = 5.0
"""Seconds the end of the block waits for ``on_stop`` still running (it should be quick)."""


class StopRequest:
    """Within its ``with`` block, the first Ctrl-C (SIGINT) asks the command to stop.

    The first sets :attr:`requested`, which the command reads between two batches, so
    that no batch is left half done, and calls ``on_stop`` on a thread of its own; a
    second raises KeyboardInterrupt as usual, wherever the command is. ``on_stop`` is
    where the command ends its waits and says it is stopping: not in the signal handler,
    which runs wherever the main thread happens to be, maybe holding a lock ``on_stop``
    needs.

    Off the main thread (where no signal handler can be set) it does nothing: Ctrl-C
    raises KeyboardInterrupt as usual.

    Args:
        on_stop: Called once, at the first Ctrl-C; it must not block for long.
    """

    def __init__(self, on_stop: Callable[[], None]) -> None:
        self.requested = False
        self._on_stop = on_stop
        self._woken = threading.Event()
        self._previous: Any = None
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._watcher = threading.Thread(
            target=self._watch, name="customerio-cli-stop", daemon=True
        )
        self._watcher.start()
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._watcher is None:
            return
        # A handler set outside Python reads as None: the default is the nearest.
        previous = signal.default_int_handler if self._previous is None else self._previous
        try:
            signal.signal(signal.SIGINT, previous)
        finally:
            # Only now, with the handler gone (it sets this Event too), the watcher ends.
            self._woken.set()
            self._watcher.join(_WATCHER_WAIT)
            self._watcher = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._woken.set()

    def _watch(self) -> None:
        self._woken.wait()
        if self.requested:
            self._on_stop()
