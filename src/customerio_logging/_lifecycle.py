"""Process lifecycle: the exit hook that flushes the bridge before the interpreter ends."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable

__all__ = ["install_exit_hook"]

_installed = False
_lock = threading.Lock()


def install_exit_hook(on_exit: Callable[[], None]) -> None:
    """Run ``on_exit`` at interpreter exit, once, however often this is called.

    ``on_exit`` must find the current bridge itself and flush it within that bridge's
    ``shutdown_timeout``: one deadline for the whole exit. The bridge module calls this
    when it is imported: after ``logging`` is (so the hook runs before
    ``logging.shutdown`` closes the handlers: atexit runs hooks last-in, first-out) and
    before the app registers its own hooks (so events they log are still delivered).
    The dispatch thread is a daemon thread so that the interpreter never waits on it
    before the atexit hooks run.
    """
    global _installed
    with _lock:
        if not _installed:
            atexit.register(on_exit)
            _installed = True
