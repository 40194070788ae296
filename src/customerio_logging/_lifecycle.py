"""How the process's hooks are installed: atexit, a chained SIGTERM handler, fork hooks;
and whether a server's SIGTERM capture will skip ours. ``_global`` says what they do."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

__all__ = [
    "cover_multiprocessing_exit",
    "install_exit_hook",
    "install_fork_hooks",
    "install_sigterm_handler",
    "note_exit_covered",
    "sigterm_hint",
    "temporary_capture",
]

_lock = threading.Lock()

# -- exit ------------------------------------------------------------------------------

_on_exit: Callable[[], None] | None = None
_exiting = False  # set once the exit hook runs: SIGTERM then lets the exit finish


def install_exit_hook(on_exit: Callable[[], None]) -> None:
    """Run ``on_exit`` at interpreter exit, once, however often this is called.

    ``on_exit`` must find the current bridge itself and flush it within that bridge's
    ``shutdown_timeout``: one deadline for the whole exit (see ``_global``, which
    registers it). The dispatch thread is a daemon thread so that the interpreter never
    waits on it before the atexit hooks run.
    """
    global _on_exit
    with _lock:
        if _on_exit is None:
            _on_exit = on_exit
            atexit.register(_run_exit_hook)


def _run_exit_hook() -> None:
    global _exiting
    _exiting = True
    on_exit = _on_exit
    if on_exit is not None:
        on_exit()


_covered_pid = 0


def cover_multiprocessing_exit() -> None:
    """Have a ``multiprocessing`` child run the exit hook too; cheap when called again.

    ``multiprocessing`` ends the children it forks with ``os._exit``, which skips
    atexit; it runs its own finalizers first. It clears them when the child starts, so
    this registers one from the child itself (the bridge calls it when it starts a
    thread). Lowest priority: it runs after the finalizers that may still log.
    """
    global _covered_pid
    pid = os.getpid()
    if _covered_pid == pid:
        return
    _covered_pid = pid
    process = sys.modules.get("multiprocessing.process")
    if process is None or process.parent_process() is None:
        return  # not a multiprocessing child: atexit runs as usual
    from multiprocessing import util

    util.Finalize(None, _run_exit_hook, exitpriority=-100)


# -- fork ------------------------------------------------------------------------------

_fork_hooked = False


def install_fork_hooks(
    *,
    before: Sequence[Callable[[], None]],
    after_in_parent: Sequence[Callable[[], None]],
    after_in_child: Sequence[Callable[[], None]],
) -> None:
    """Register the library's fork hooks with ``os.register_at_fork``; once per process.

    Each list runs in its order (``os.register_at_fork`` alone would run ``before``
    hooks in reverse). The child's hooks run before ``fork()`` returns there, on the
    only thread the child has: they must not start threads, wait or do I/O, only make
    state the child's own. Forks that bypass ``os.fork`` (a C extension calling
    ``fork()``) skip them; the bridge also checks its pid when an event is submitted.
    """
    global _fork_hooked
    with _lock:
        if _fork_hooked:
            return
        _fork_hooked = True
    hooks = (tuple(before), tuple(after_in_parent), tuple(after_in_child))

    def run_before() -> None:
        _run_each(hooks[0])

    def run_in_parent() -> None:
        _run_each(hooks[1])

    def run_in_child() -> None:
        global _lock
        # A parent thread may have held it at the fork: that thread does not exist here.
        _lock = threading.Lock()
        _run_each(hooks[2])

    os.register_at_fork(
        before=run_before, after_in_parent=run_in_parent, after_in_child=run_in_child
    )


def _run_each(hooks: Sequence[Callable[[], None]]) -> None:
    """Run every hook, as ``os.register_at_fork`` would run separate ones: one that raises
    is reported on stderr and the next still runs."""
    for hook in hooks:
        try:
            hook()
        except Exception:  # noqa: BLE001 - reported; the other hooks must still run
            name = getattr(hook, "__qualname__", repr(hook))
            sys.stderr.write(f"customerio_logging: fork hook {name} failed:\n")
            traceback.print_exc()


# -- SIGTERM ---------------------------------------------------------------------------

_Handler = Callable[[int, FrameType | None], Any] | int | None

_on_sigterm: Callable[[bool], None] | None = None
_previous_sigterm: _Handler = None


def install_sigterm_handler(on_sigterm: Callable[[bool], None]) -> bool:
    """On SIGTERM, call ``on_sigterm`` then do what the previous handler would have done.

    Installed at most once per process, so configuring again neither stacks handlers
    nor chains one to itself. ``on_sigterm(final)`` is told whether the process is
    about to end: True when the previous disposition was the default (it then shuts
    the bridge down, and the process is killed by SIGTERM again, exit status -15/143),
    False when the previous handler was ``SIG_IGN`` (the process keeps running) or a
    Python callable (called after the flush with ``(signum, frame)``; it decides).

    It runs on the main thread between two bytecodes, possibly while that thread holds
    one of the bridge's locks; so the bridge's locks that it takes are reentrant, and it
    never starts a thread. Arriving while the exit hook runs, it lets that exit finish
    (within its deadline). As PID 1 of a container, which the kernel does not kill with
    a default-disposition signal, it exits with status 143 itself.

    Returns:
        True when the handler is installed (now or before). False off the main thread,
        where Python cannot install signal handlers, or when the current handler was
        set outside Python (``signal.getsignal`` returns None): it could not be chained
        to, so it is left alone.
    """
    global _on_sigterm, _previous_sigterm
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        if _on_sigterm is not None:
            return True
        previous = signal.getsignal(signal.SIGTERM)
        if previous is None:
            return False
        # Both set before the handler goes in: a SIGTERM right after must find them.
        _on_sigterm, _previous_sigterm = on_sigterm, previous
        try:
            signal.signal(signal.SIGTERM, _handle_sigterm)
        except ValueError:  # not the main interpreter's main thread
            _on_sigterm, _previous_sigterm = None, None
            return False
        return True


def _handle_sigterm(signum: int, frame: FrameType | None) -> None:
    previous = _previous_sigterm
    final = not callable(previous) and previous != signal.SIG_IGN
    on_sigterm = _on_sigterm
    # Already exiting: the exit hook is delivering within its deadline; let it finish.
    if not _exiting and on_sigterm is not None:
        # The signal is honoured whatever happened to the flush.
        with contextlib.suppress(Exception):
            on_sigterm(final)
    if callable(previous):
        previous(signum, frame)
        return
    if not final or _exiting:
        return
    # Die by the signal, as the default disposition would have: same exit status, no
    # atexit hooks, no finally blocks.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    # Still here: PID 1 in a container, whose default-disposition signals the kernel
    # drops. Exit the way a shell reports death by that signal.
    os._exit(128 + signum)


# -- SIGTERM taken by a server that skips our flush ---------------------------------------

# Modules whose SIGTERM handler is temporary: uvicorn's ``Server.capture_signals`` puts
# its own in while serving, then puts back the handler it found and raises SIGTERM again.
_CAPTURING_MODULES = ("uvicorn.",)

_exit_covered = False  # something else shuts the bridge down in time (CustomerIOMiddleware)
_hinted = False


def note_exit_covered() -> None:
    """Say that the app shuts the bridge down itself before the process ends (the ASGI
    middleware does, at lifespan shutdown): ``sigterm_hint`` then stays silent."""
    global _exit_covered
    _exit_covered = True


def sigterm_hint() -> str | None:
    """Once per process, a warning when SIGTERM will end it without our flush; else None.

    That can be told for uvicorn: it captures SIGTERM while it serves, and after draining
    it restores the handler it found and raises SIGTERM again. When the handler it found
    is not ours (ours chains onto uvicorn's, because the app, and ``configure()`` with
    it, was imported inside the capture, as ``--workers`` does; or ours was never
    installed), the process dies with neither our flush nor ``atexit``. When uvicorn
    displaced ours, it restores ours: nothing is lost, and nothing is said. A handler
    displaced by another server (gunicorn's, which exits through ``atexit``) is not
    reported either: it may be just as harmless, and this cannot tell.

    Reads the signal table only (``signal.getsignal`` works from any thread): cheap
    enough for the dispatch thread to call once per batch.
    """
    global _hinted
    if _hinted or _exit_covered:
        return None
    installed = _on_sigterm is not None
    capture = temporary_capture(
        signal.getsignal(signal.SIGTERM), _previous_sigterm if installed else None
    )
    if capture is None:
        return None
    _hinted = True
    return (
        f"SIGTERM is handled by {capture}, which ends the process without "
        f"customerio_logging's flush and without atexit: events still queued then are lost. "
        f"Wrap the ASGI app in customerio_logging.integrations.asgi.CustomerIOMiddleware: "
        f"it shuts the bridge down at lifespan shutdown, after the server drained (under "
        f"gunicorn's UvicornWorker too, where a worker_exit hook would never run)"
    )


def temporary_capture(current: _Handler, chained: _Handler) -> str | None:
    """The name of the temporary SIGTERM capture whose end skips our handler, or None.

    Args:
        current: The SIGTERM handler in force (``signal.getsignal``).
        chained: The handler ours chains onto; None when ours was never installed.
    """
    if current is _handle_sigterm:
        handler = chained  # ours hands the signal on to it
    elif chained is None:
        handler = current
    else:
        return None  # ours was displaced: a capture restores it (and raises it again)
    module = getattr(handler, "__module__", None)
    if not isinstance(module, str) or not module.startswith(_CAPTURING_MODULES):
        return None
    return f"{module}.{getattr(handler, '__qualname__', type(handler).__qualname__)}"
