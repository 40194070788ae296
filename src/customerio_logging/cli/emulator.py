"""``emulator``: the local Track API emulator, served until Ctrl-C, SIGTERM or ``--duration``,
with its dump file, its fault plan and the environment that points an app at it."""

from __future__ import annotations

import argparse
import contextlib
import functools
import queue
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from .._config import is_loopback
from ._args import Subcommands, add_command, positive_seconds, usage_error
from ._output import plural

if TYPE_CHECKING:
    from ..testing import FaultPlan, TrackAPIEmulator

__all__ = ["register"]


def register(commands: Subcommands) -> None:
    """Add the ``emulator`` command to ``commands``."""
    emulator = add_command(
        commands,
        "emulator",
        help="run the local Track API emulator until Ctrl-C or SIGTERM",
        description=(
            "Serve the Track API emulator (the one the tests use) and print the "
            "environment that points an app at it, Track API and App API. Other processes "
            "read what it accepted at GET /_emulator/operations (?name=, ?action=, "
            "?user_id=, ?route=), and in the --dump file. On Ctrl-C or SIGTERM it stops "
            "and says how many operations it accepted."
        ),
        epilog=(
            "examples:\n  python -m customerio_logging emulator --port 8089\n"
            "  python -m customerio_logging emulator --dump ops.jsonl "
            "--failure-rate 0.3 --drop-rate 0.05 --seed 7"
        ),
        failure="the emulator could not listen on the address, or write its dump",
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
    emulator.add_argument("--app-api-key", help="App API key to accept (default emulator-app-key)")
    emulator.add_argument(
        "--dump",
        type=Path,
        metavar="FILE",
        help="write each accepted operation to FILE as it arrives, one JSON object a line "
        '({"received_at": ..., "route": ..., "operation": {...}}), mode 0600; an existing '
        "FILE is replaced",
    )
    emulator.add_argument(
        "--duration",
        type=positive_seconds,
        metavar="SECONDS",
        help="stop by itself after this long (default: run until stopped)",
    )
    _add_fault_flags(emulator)
    emulator.set_defaults(run=functools.partial(_emulator, emulator))


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


# -- the fault plan ------------------------------------------------------------------------


def _script(text: str) -> tuple[int | str, ...]:
    """``503,drop,drop_after_accept``: statuses as ints, words as given (FaultPlan checks)."""
    steps = [step.strip() for step in text.split(",")]
    if not all(steps):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return tuple(int(step) if step.isascii() and step.isdigit() else step for step in steps)


def _statuses(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(status) for status in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected statuses separated by commas, e.g. 500,503, got {text!r}"
        ) from None


def _retry_after(text: str) -> float | str:
    """Seconds when ``text`` is a number, else an HTTP date, sent as given."""
    try:
        return float(text)
    except ValueError:
        return text


# FaultPlan's fields, each a flag of the same name: (type, metavar, help).
_FAULT_FLAGS: Final[dict[str, tuple[Callable[[str], Any], str, str]]] = {
    "seed": (int, "N", "seeds the random draws (default 0): same seed, same faults"),
    "script": (
        _script,
        "LIST",
        "answers for the first requests, one each, before anything else: error statuses, "
        "drop or drop_after_accept, e.g. 503,drop,429",
    ),
    "failure_rate": (float, "FRACTION", "share of requests answered with --failure-statuses"),
    "failure_statuses": (_statuses, "LIST", "the statuses drawn from (default 500,503)"),
    "drop_rate": (float, "FRACTION", "share of requests hung up on, nothing accepted"),
    "drop_after_accept_rate": (
        float,
        "FRACTION",
        "share of requests accepted, then hung up on unanswered (so a client sends them again)",
    ),
    "rate_limit": (float, "PER_SECOND", "requests a second allowed; 429 above it"),
    "retry_after": (
        _retry_after,
        "SECONDS|DATE",
        "Retry-After of each 429 and 503: seconds or an HTTP date (default 1)",
    ),
    "delay": (float, "SECONDS", "hold every answer back this long"),
    "trickle": (float, "SECONDS", "send every answer a byte at a time, this far apart"),
    "max_request_bytes": (int, "BYTES", "413 for a body over this size"),
}
_FIELD_NAMES: Final = re.compile(r"\b(" + "|".join(_FAULT_FLAGS) + r")\b")


def _add_fault_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "faults (customerio_logging.testing.FaultPlan; none by default)",
        "Each request, in arrival order, gets the next --script answer while any is left; "
        "else a 429 over --rate-limit; else one random draw: a --failure-rate status, a "
        "drop or a drop after accepting. Not the /_emulator/ paths.",
    )
    for name, (parse, metavar, help) in _FAULT_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, dest=name, type=parse, metavar=metavar, help=help)


def _fault_plan(args: argparse.Namespace) -> FaultPlan | None:
    """The plan the fault flags give, or None without any.

    Raises:
        ValueError: If FaultPlan refuses the values; the message names the flags.
    """
    from ..testing import FaultPlan

    given = {name: getattr(args, name) for name in _FAULT_FLAGS}
    given = {name: value for name, value in given.items() if value is not None}
    if not given:
        return None
    try:
        return FaultPlan(**given)
    except ValueError as exc:
        flags = _FIELD_NAMES.sub(lambda match: "--" + match[1].replace("_", "-"), str(exc))
        raise ValueError(flags) from None


def _describe(plan: FaultPlan | None) -> str:
    """The plan as the flags that make it; ``none`` for a plan that injects nothing."""
    from ..testing import FaultPlan

    if plan is None:
        return "none"
    default = FaultPlan()
    draws = bool(plan.failure_rate or plan.drop_rate or plan.drop_after_accept_rate)
    # These two count only for the random draws, and then even at their defaults.
    relevant = {"seed": draws, "failure_statuses": bool(plan.failure_rate)}
    shown = [
        f"--{name.replace('_', '-')} {_flag_value(getattr(plan, name))}"
        for name in _FAULT_FLAGS
        if relevant.get(name, getattr(plan, name) != getattr(default, name))
    ]
    return " ".join(shown) or "none"


def _flag_value(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return shlex.quote(str(value))


# -- the command ---------------------------------------------------------------------------


def _emulator(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
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
    try:
        faults = _fault_plan(args)
    except ValueError as exc:
        return usage_error(parser, str(exc))
    keys = {"site_id": args.site_id, "api_key": args.api_key, "app_api_key": args.app_api_key}
    emulator = TrackAPIEmulator(
        host=args.host,
        port=args.port,
        faults=faults,
        dump=args.dump,
        **{name: value for name, value in keys.items() if value is not None},
    )
    try:
        emulator.start()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.filename is not None:
            print(f"FAILED: cannot write the dump to {exc.filename}: {reason}", file=sys.stderr)
        else:
            print(f"FAILED: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 1
    # A SimpleQueue, not an Event: its put() is reentrant, so the signal handler cannot
    # deadlock on a lock this same (main) thread holds inside the wait.
    stop: queue.SimpleQueue[int] = queue.SimpleQueue()
    restore = _on_stop_signals(stop.put)
    try:
        _print_banner(emulator, args.dump)
        with contextlib.suppress(queue.Empty):  # Empty: --duration is up
            stop.get(timeout=args.duration)
    finally:
        restore()
        emulator.stop()
    return _report(emulator, args.dump)


def _print_banner(emulator: TrackAPIEmulator, dump: Path | None) -> None:
    """Where the emulator listens, the environment for an app, where to read what it
    accepted, its faults."""
    print(f"Track API emulator listening on {emulator.url}")
    print("Point an app at it (paste into a shell):")
    env = {
        "CUSTOMERIO_TRACK_URL": emulator.url,
        "CUSTOMERIO_SITE_ID": emulator.site_id,
        "CUSTOMERIO_TRACK_API_KEY": emulator.api_key,
        # The App API's send endpoints are served on the same address.
        "CUSTOMERIO_APP_URL": emulator.url,
        "CUSTOMERIO_APP_API_KEY": emulator.app_api_key,
    }
    print("export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items()))
    print(f"Accepted operations: {emulator.operations_url} (?name=, ?action=, ?user_id=, ?route=)")
    if dump is not None:
        print(f"Dump: {dump.absolute()} (a JSON line per accepted operation, as it arrives)")
    print(f"Faults: {_describe(emulator.faults)}")
    # Flushed now: whoever reads a pipe from us (a script, a test) needs the URL first.
    print("Stop it with Ctrl-C or SIGTERM.", flush=True)


def _report(emulator: TrackAPIEmulator, dump: Path | None) -> int:
    """Say what the stopped emulator accepted; 1 if its dump ended early."""
    operations = len(emulator.operations)
    requests_made = len(emulator.requests)
    print(
        f"Stopped: accepted {plural(operations, 'operation')} in "
        f"{plural(requests_made, 'request')}."
    )
    error = emulator.dump_error
    if error is not None:
        reason = error.strerror or type(error).__name__
        print(f"FAILED: the dump {dump} stopped early: {reason}", file=sys.stderr)
        return 1
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
