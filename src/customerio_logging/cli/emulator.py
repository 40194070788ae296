"""``emulator``: the local Track API emulator, served until Ctrl-C, SIGTERM or ``--duration``."""

from __future__ import annotations

import argparse
import contextlib
import queue
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from .._config import is_loopback
from ._args import Subcommands, add_command, positive_seconds
from ._output import plural

__all__ = ["register"]


def register(commands: Subcommands) -> None:
    """Add the ``emulator`` command to ``commands``."""
    emulator = add_command(
        commands,
        "emulator",
        help="run the local Track API emulator until Ctrl-C or SIGTERM",
        description=(
            "Serve the Track API emulator (the one the tests use) and print the "
            "environment that points an app at it. On Ctrl-C or SIGTERM it stops and "
            "says how many operations it accepted."
        ),
        epilog="example:\n  python -m customerio_logging emulator --port 8089",
        failure="the emulator could not listen on the address",
    )
    emulator.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1); a loopback address, since the library "
        "sends to plain http:// only there",
    )
    emulator.add_argument(
        "--port", type=_port, default=0, help="port to bind (default 0: any free port)"
    )
    emulator.add_argument("--site-id", help="site id to accept (default emulator-site)")
    emulator.add_argument("--api-key", help="API key to accept (default emulator-key)")
    emulator.add_argument(
        "--duration",
        type=positive_seconds,
        metavar="SECONDS",
        help="stop by itself after this long (default: run until stopped)",
    )
    emulator.set_defaults(run=_emulator)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def _emulator(args: argparse.Namespace) -> int:
    """Serve the emulator until a signal or ``--duration``, then report what it accepted."""
    from ..testing import TrackAPIEmulator

    # The emulator's server is IPv4 only: a loopback name or IPv4 address, never ::1.
    if ":" in args.host or not is_loopback(args.host):
        print(
            f"configuration error: --host must be a loopback address such as 127.0.0.1, "
            f"got {args.host!r}: the library sends to plain http:// only on loopback",
            file=sys.stderr,
        )
        return 2
    credentials = {"site_id": args.site_id, "api_key": args.api_key}
    emulator = TrackAPIEmulator(
        host=args.host,
        port=args.port,
        **{name: value for name, value in credentials.items() if value is not None},
    )
    try:
        emulator.start()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        print(f"FAILED: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 1
    # A SimpleQueue, not an Event: its put() is reentrant, so the signal handler cannot
    # deadlock on a lock this same (main) thread holds inside the wait.
    stop: queue.SimpleQueue[int] = queue.SimpleQueue()
    restore = _on_stop_signals(stop.put)
    try:
        print(f"Track API emulator listening on {emulator.url}")
        print("Point an app at it (paste into a shell):")
        print(
            f"export CUSTOMERIO_TRACK_URL={shlex.quote(emulator.url)} "
            f"CUSTOMERIO_SITE_ID={shlex.quote(emulator.site_id)} "
            f"CUSTOMERIO_TRACK_API_KEY={shlex.quote(emulator.api_key)}"
        )
        # Flushed now: whoever reads a pipe from us (a script, a test) needs the URL first.
        print("Stop it with Ctrl-C or SIGTERM.", flush=True)
        with contextlib.suppress(queue.Empty):  # Empty: --duration is up
            stop.get(timeout=args.duration)
    finally:
        restore()
        emulator.stop()
    operations = len(emulator.operations)
    requests_made = len(emulator.requests)
    print(
        f"Stopped: accepted {plural(operations, 'operation')} in "
        f"{plural(requests_made, 'request')}."
    )
    return 0


def _on_stop_signals(stop: Callable[[int], None]) -> Callable[[], None]:
    """Make SIGINT and SIGTERM call ``stop``; returns what puts the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        # Signal handlers can only be set on the main thread; --duration still ends it.
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        stop(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
