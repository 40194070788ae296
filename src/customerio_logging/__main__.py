"""The command line: ``python -m customerio_logging demo|check|emulator|send|spool|dead-letter``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import ipaddress
import json
import logging
import math
import os
import queue
import shlex
import shutil
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TextIO, cast
from urllib.parse import urlsplit

import requests

from ._bridge import DeadLetter, Stats, configure, shutdown
from ._capture import RESERVED_KEYS, TAG
from ._config import ENV_VARS, MAX_SECONDS, MIN_SECONDS, REGION_URLS, Settings
from ._delivery import Delivery, SessionTransport, official_client
from ._pacing import Pacer
from ._replay import Replayer
from ._retry import RetryPolicy
from ._storage import DeadLetterRow, SpoolBusyError, SpoolStatus, SpoolUnavailableError
from ._storage.sqlite import DEAD_LETTER_SHARE, MAX_DEAD_LETTERS, SQLiteSpool
from ._storage.sqlite_file import check_spool_path
from ._storage.sqlite_schema import APPLICATION_ID
from ._wire import Response, Transport, shorten
from .exceptions import ConfigurationError, DeliveryError
from .handler import CustomerIOHandler

__all__ = ["main"]

_Command = Callable[[argparse.Namespace], int]

_REGION_PATH = "/api/v1/accounts/region"
# Lets a send that the deadline cut short settle its count (sent, failed or dropped),
# so the verdict is the final one.
_SHUTDOWN_GRACE = 1.0
# Not for Customer.io, for this tool: the events it logs stay out of the app's loggers.
_SEND_LOGGER = "customerio-logging.send"


def _exit_codes(failure: str) -> str:
    """The exit-code table for a help epilog, with what exit code 1 means there."""
    return (
        "exit codes:\n"
        "  0  success\n"
        f"  1  {failure}\n"
        "  2  usage or configuration error (the message says what to change)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (see ``--help``)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits after --help (0) and on a usage error (2); main() returns instead.
        return exc.code if isinstance(exc.code, int) else 2
    run: _Command | None = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    return run(args)


# -- the parser ---------------------------------------------------------------------------


class _Formatter(argparse.HelpFormatter):
    """Wraps a paragraph written on one line; keeps one with line breaks (examples, tables)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n\n".join(
            paragraph if "\n" in paragraph else fill(paragraph, width, indent)
            for paragraph in text.split("\n\n")
        )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m customerio_logging",
        description="Send product events to Customer.io from log calls.",
        epilog=_exit_codes("what the command checked or attempted failed (see its --help)"),
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run a small app against the embedded Track API emulator (no account needed)",
        description=(
            "Start the local Track API emulator, log events through stdlib logging and "
            "structlog, and print what was delivered and what was rejected."
        ),
    )
    demo.add_argument("--events", type=int, default=300, help="events to log (default 300)")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(run=_demo)

    credentials = argparse.ArgumentParser(add_help=False)
    _add_credential_flags(credentials)

    check = commands.add_parser(
        "check",
        parents=[credentials],
        help="check the settings and that the Track API accepts the credentials",
        description=(
            "Build the settings as the library does (flags, then CUSTOMERIO_* environment "
            "variables, then defaults), print them without the API key, and ask the Track "
            f"API whether it accepts the credentials (GET {_REGION_PATH})."
        ),
        epilog=(
            "example:\n  CUSTOMERIO_SITE_ID=... CUSTOMERIO_TRACK_API_KEY=... "
            "python -m customerio_logging check\n\n"
            + _exit_codes(
                "the Track API refused the credentials, could not be reached, answered "
                "something else, or names another region"
            )
        ),
        formatter_class=_Formatter,
    )
    check.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="longest wait for the answer (default 10)",
    )
    check.set_defaults(run=_check)

    emulator = commands.add_parser(
        "emulator",
        help="run the local Track API emulator until Ctrl-C or SIGTERM",
        description=(
            "Serve the Track API emulator (the one the tests use) and print the "
            "environment that points an app at it. On Ctrl-C or SIGTERM it stops and "
            "says how many operations it accepted."
        ),
        epilog=(
            "example:\n  python -m customerio_logging emulator --port 8089\n\n"
            + _exit_codes("the emulator could not listen on the address")
        ),
        formatter_class=_Formatter,
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
        type=_positive_seconds,
        metavar="SECONDS",
        help="stop by itself after this long (default: run until stopped)",
    )
    emulator.set_defaults(run=_emulator)

    send = commands.add_parser(
        "send",
        parents=[credentials],
        help="deliver one test event through the library's pipeline",
        description=(
            "Log one event through CustomerIOHandler and deliver it as an app would "
            "(batching, retries, rate limit; no spool), then say whether the Track API "
            "accepted it."
        ),
        epilog=(
            "example:\n  python -m customerio_logging send plan_changed --user-id u1 "
            "--data to=pro --data seats=3\n\n"
            "A --data key that logging or the handler reserves (name, email, user_id...) "
            "is sent as given.\n\n"
            + _exit_codes("the event was not accepted: refused, unreachable, invalid or late")
        ),
        formatter_class=_Formatter,
    )
    send.add_argument("name", type=_event_name, metavar="NAME", help="the event name")
    who = send.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id", metavar="ID", help="the person's id (identifiers.id)")
    who.add_argument("--email", help="the person's email, instead of --user-id")
    who.add_argument("--anonymous-id", metavar="ID", help="an anonymous id, instead of --user-id")
    send.add_argument(
        "--data",
        type=_data_item,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an event attribute; VALUE is read as JSON when it parses (3, true, "
        '["a"]), else as text; repeatable',
    )
    send.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="longest time for delivery, retries included (default 10)",
    )
    send.set_defaults(run=_send)

    # Where the spool is: --spool-path, else the file the settings name (the credentials
    # are needed only for that, and for replay).
    location = argparse.ArgumentParser(add_help=False)
    location.add_argument(
        "--spool-path",
        type=_spool_path,
        metavar="PATH",
        help=f"the spool file (default: {ENV_VARS['spool_path']}, else the workspace's "
        "file in the user's state directory, found from the site id and track URL)",
    )
    _add_credential_flags(location)
    _add_spool_commands(commands, location)
    _add_dead_letter_commands(commands, location)
    return parser


def _add_credential_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each defaults to its environment variable)")
    group.add_argument("--site-id", help="Track API site id (CUSTOMERIO_SITE_ID)")
    group.add_argument(
        "--api-key",
        help="Track API key (CUSTOMERIO_TRACK_API_KEY, preferred: a command line is "
        "visible to other users in ps)",
    )
    group.add_argument(
        "--region", metavar="{us,eu}", help="workspace region (CUSTOMERIO_REGION; default us)"
    )
    group.add_argument(
        "--track-url",
        metavar="URL",
        help="Track API base URL (CUSTOMERIO_TRACK_URL; default the region's host)",
    )


def _credential_overrides(args: argparse.Namespace) -> dict[str, Any]:
    # None means "not given": Settings.from_env then falls back to the environment.
    return {
        "site_id": args.site_id,
        "api_key": args.api_key,
        "region": args.region,
        "track_url": args.track_url,
    }


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not MIN_SECONDS <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SECONDS:g} seconds, got {text!r}")
    return seconds


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def _event_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the event name must not be blank")
    return text


def _data_item(text: str) -> tuple[str, Any]:
    key, equals, raw = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw, parse_constant=_not_finite, parse_float=_finite_float)
    except ValueError:
        value = raw
    return key, value


# NaN and infinities are not JSON (the handler would send null): keep such a VALUE as text.
def _not_finite(text: str) -> float:
    raise ValueError(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _configuration_error(exc: ConfigurationError) -> int:
    print(f"configuration error: {exc}", file=sys.stderr)
    return 2


# -- demo ---------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(events=args.events, as_json=args.json)


# -- check --------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    """Print the settings in effect, then whether the Track API accepts the credentials."""
    try:
        settings = Settings.from_env(**_credential_overrides(args))
    except ConfigurationError as exc:
        return _configuration_error(exc)
    print(f"site id:   {settings.site_id}")
    print(f"track url: {settings.track_url}")
    print(f"region:    {settings.region}")
    print(f"spool:     {_describe_spool(settings.spool_path)}")
    host = urlsplit(settings.track_url).netloc
    try:
        reply = requests.get(
            settings.track_url + _REGION_PATH,
            auth=(settings.site_id, settings.api_key),
            timeout=args.timeout,
            # A redirect would carry the credentials elsewhere; report it instead.
            allow_redirects=False,
        )
    except (requests.RequestException, OSError) as exc:
        # The class name only: an exception's text can quote the URL and request.
        print(f"UNREACHABLE: could not connect to {host}: {type(exc).__name__}")
        return 1
    if reply.status_code in (401, 403):
        print(
            f"REFUSED: {host} answered HTTP {reply.status_code}: check CUSTOMERIO_SITE_ID and "
            "CUSTOMERIO_TRACK_API_KEY (or --site-id and --api-key); they are the Track API "
            "credentials, not an App API key"
        )
        return 1
    if reply.status_code != 200:
        print(
            f"UNEXPECTED: {host} answered HTTP {reply.status_code} {_phrase(reply.status_code)}"
            f", not 200: check that {settings.track_url} is the Track API "
            "(CUSTOMERIO_TRACK_URL), or try again later"
        )
        return 1
    region = _reported_region(reply)
    if region is None:
        print(f"OK: credentials accepted by {host}; the answer did not name the region")
        return 0
    if region in REGION_URLS and region != settings.region:
        print(
            f"MISMATCH: credentials accepted by {host}, but the workspace is in region "
            f"{region} and the configured region is {settings.region}: set "
            f"CUSTOMERIO_REGION={region} (or pass --region {region})"
        )
        return 1
    print(f"OK: credentials accepted by {host}; the workspace is in region {region}")
    return 0


def _describe_spool(path: str | os.PathLike[str] | Literal[False] | None) -> str:
    if path is None:
        return "the default location"
    return "off" if path is False else os.fspath(path)


def _reported_region(reply: requests.Response) -> str | None:
    try:
        body = reply.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    # The Track API answers "data_center"; "region" in case it is ever named so.
    for key in ("region", "data_center"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            # The server's word, printed: a short line, whatever it sent.
            return shorten(value, 40).lower()
    return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


# -- emulator -----------------------------------------------------------------------------


def _emulator(args: argparse.Namespace) -> int:
    """Serve the emulator until a signal or ``--duration``, then report what it accepted."""
    from .testing import TrackAPIEmulator

    if not _is_ipv4_loopback(args.host):
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
        f"Stopped: accepted {_plural(operations, 'operation')} in "
        f"{_plural(requests_made, 'request')}."
    )
    return 0


def _is_ipv4_loopback(host: str) -> bool:
    # The emulator's server is IPv4 only; "localhost" is what most people type.
    if host == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# -- send ---------------------------------------------------------------------------------


class _IdRecorder:
    """A transport that notes the operation ids it carries, then hands on to the real one.

    The bridge makes an operation's id on its own thread and reports only counts; this
    is how ``send`` learns the id of the event it sent.
    """

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self.ids: list[str] = []

    def send(self, body: bytes) -> Response:
        self.ids.extend(op["id"] for op in json.loads(body)["batch"] if "id" in op)
        return self._inner.send(body)

    def close(self) -> None:
        self._inner.close()


def _send(args: argparse.Namespace) -> int:
    """Log one event, deliver it within ``--timeout``, and say whether it was accepted."""
    name: str = args.name
    overrides = {
        **_credential_overrides(args),
        "install_signal_handlers": False,
        "spool_path": False,
        # The whole delivery fits --timeout: one request, and the retries after it
        # (neither setting takes more than an hour; the flush below waits it all).
        "request_timeout": min(args.timeout, MAX_SECONDS),
        "retry_budget": min(args.timeout, MAX_SECONDS),
    }
    try:
        settings = Settings.from_env(**overrides)
        recorder = _IdRecorder(_session_transport(settings))
        bridge = configure(**overrides, transport=recorder)
    except ConfigurationError as exc:
        return _configuration_error(exc)
    log = logging.getLogger(_SEND_LOGGER)
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = CustomerIOHandler(bridge=bridge)
    log.addHandler(handler)
    try:
        log.info(name, extra={TAG: name, **_event_fields(args)})
    finally:
        log.removeHandler(handler)
    bridge.flush(args.timeout)
    shutdown(_SHUTDOWN_GRACE)
    stats = bridge.stats()
    if stats.sent:
        sent_id = recorder.ids[-1] if recorder.ids else "unknown"
        host = urlsplit(settings.track_url).netloc
        print(f"SENT: event {name} (id {sent_id}) accepted by {host}")
        return 0
    print(f"NOT SENT: {_why_not_sent(stats, bridge.dead_letters(), args.timeout)}")
    return 1


def _event_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The person and the ``--data`` of the event, as ``extra`` for the log call."""
    # argparse made these mutually exclusive and one of them required.
    if args.user_id is not None:
        who = {"user_id": args.user_id}
    elif args.email is not None:
        who = {"email": args.email}
    else:
        who = {"anonymous_id": args.anonymous_id}
    return {**who, **{_data_key(key): value for key, value in args.data}}


def _session_transport(settings: Settings) -> SessionTransport:
    """The transport the bridge would build: the official client's session, no retries."""
    client = official_client(settings)
    return SessionTransport(client, settings.track_url, timeout=settings.request_timeout)


def _data_key(key: str) -> str:
    # The handler drops one trailing underscore (from_ -> "from"): adding one lets a
    # reserved key, or a key that ends in "_", arrive as typed.
    return f"{key}_" if key in RESERVED_KEYS or key.endswith("_") else key


def _why_not_sent(stats: Stats, dead_letters: list[DeadLetter], timeout: float) -> str:
    if dead_letters:
        letter = dead_letters[-1]
        where = f"; id {letter.id}" if letter.id else ""
        return f"{letter.message} ({letter.reason}{where})"
    if stats.last_error:
        return stats.last_error
    return f"not delivered within {timeout:g}s"


# -- spool and dead-letter: the parsers ---------------------------------------------------


def _add_spool_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    location: argparse.ArgumentParser,
) -> None:
    spool = commands.add_parser(
        "spool",
        help="show, replay or empty the spool, where events wait to be sent",
        description=(
            "The spool is the SQLite file where events wait when they cannot be sent now "
            "(the API unreachable, the queue full, the process exiting); the app replays it "
            "by itself. These commands show it, send what waits, or delete it."
        ),
        epilog=(
            "example:\n  python -m customerio_logging spool status --spool-path "
            "/var/lib/app/spool.sqlite3\n\n"
            + _exit_codes("the spool cannot be used, or the command failed (see its --help)")
        ),
        formatter_class=_Formatter,
    )
    spool.set_defaults(run=_print_help(spool))
    spool_commands = spool.add_subparsers(dest="spool_command", metavar="COMMAND")

    status = spool_commands.add_parser(
        "status",
        parents=[location],
        help="what waits in the spool: counts, bytes, ages, dead letters",
        description=(
            "Show the spool file, its workspace, the operations waiting (and how many a "
            "sender holds right now), their size against the bound, the oldest and newest, "
            "and the dead letter's size. --spool-path alone suffices: no credentials needed. "
            "A missing file is reported, never created."
        ),
        epilog=(
            "examples:\n  python -m customerio_logging spool status --spool-path "
            "/var/lib/app/spool.sqlite3\n"
            "  CUSTOMERIO_SITE_ID=... CUSTOMERIO_TRACK_API_KEY=... "
            "python -m customerio_logging spool status --json\n\n"
            + _exit_codes("the spool file cannot be read (busy, unreadable)")
        ),
        formatter_class=_Formatter,
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(run=_spool_command(_spool_status))

    replay = spool_commands.add_parser(
        "replay",
        parents=[location],
        help="send everything waiting in the spool now",
        description=(
            "Send what waits in the spool, a batch at a time, with the library's retries "
            "and rate limit, until nothing is left or the API cannot be reached. "
            "Operations the API refuses go to the dead letter (see dead-letter list); that "
            "is reported, not a failure. Needs the workspace's credentials; a spool "
            "holding another workspace's events is refused. Progress goes to stderr."
        ),
        epilog=(
            "example:\n  CUSTOMERIO_SITE_ID=... CUSTOMERIO_TRACK_API_KEY=... "
            "python -m customerio_logging spool replay --timeout 600\n\n"
            + _exit_codes(
                "operations could not be sent now (unreachable, credentials refused, "
                "--timeout) and wait for the next run, or the spool cannot be used"
            )
        ),
        formatter_class=_Formatter,
    )
    replay.add_argument(
        "--batch-size",
        type=_batch_size,
        metavar="N",
        help="operations per request, 1 to 1000 (default: the settings' batch_size, 500)",
    )
    replay.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="longest time for the whole replay, retries included; what is not sent by "
        "then waits for the next run (default: no limit)",
    )
    replay.set_defaults(run=_spool_command(_spool_replay))

    purge = spool_commands.add_parser(
        "purge",
        parents=[location],
        help="delete every operation waiting in the spool (needs --yes)",
        description=(
            "Delete every operation waiting in the spool: no replay sends them (one a "
            "running app is sending at that moment may still arrive). The dead "
            "letter is kept (see dead-letter purge). Without --yes, say how many would go "
            "and delete nothing."
        ),
        epilog=(
            "example:\n  python -m customerio_logging spool purge --spool-path "
            "/var/lib/app/spool.sqlite3 --yes\n\n"
            + _exit_codes("refused without --yes, or the spool cannot be used")
        ),
        formatter_class=_Formatter,
    )
    purge.add_argument("--yes", action="store_true", help="really delete them")
    purge.set_defaults(run=_spool_command(_spool_purge))


def _add_dead_letter_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    location: argparse.ArgumentParser,
) -> None:
    dead_letter = commands.add_parser(
        "dead-letter",
        help="list, export, requeue or delete the operations the API refused",
        description=(
            "The dead letter keeps, in the spool file, the operations that will not be "
            "sent: the ones the Track API refused, with its reason, and invalid events "
            f"(reason only). It keeps the newest {MAX_DEAD_LETTERS:,}, within "
            f"1/{DEAD_LETTER_SHARE} of max_spool_bytes; older ones are evicted and counted "
            "(see: spool status)."
        ),
        epilog=(
            "example:\n  python -m customerio_logging dead-letter list --spool-path "
            "/var/lib/app/spool.sqlite3\n\n"
            + _exit_codes("the spool cannot be used, or the command failed (see its --help)")
        ),
        formatter_class=_Formatter,
    )
    dead_letter.set_defaults(run=_print_help(dead_letter))
    letters = dead_letter.add_subparsers(dest="dead_letter_command", metavar="COMMAND")

    listing = letters.add_parser(
        "list",
        parents=[location],
        help="show the newest dead letters as a table",
        description=(
            "Show the newest dead letters, oldest of them first: seq (to pick rows for "
            "requeue and purge), when, operation id, event name, reason, field and the "
            "API's message. --spool-path alone suffices: no credentials needed."
        ),
        epilog=(
            "examples:\n  python -m customerio_logging dead-letter list --spool-path "
            "/var/lib/app/spool.sqlite3\n"
            "  python -m customerio_logging dead-letter list --reason invalid_identifiers "
            "--json\n\n" + _exit_codes("the spool file cannot be read (busy, unreadable)")
        ),
        formatter_class=_Formatter,
    )
    how_many = listing.add_mutually_exclusive_group()
    how_many.add_argument(
        "--limit",
        type=_count,
        default=50,
        metavar="N",
        help="show the newest N rows (default 50)",
    )
    how_many.add_argument("--all", action="store_true", help="show every row")
    listing.add_argument("--reason", help="only rows with this reason")
    listing.add_argument(
        "--json", action="store_true", help="print JSON lines (the operations included)"
    )
    listing.set_defaults(run=_spool_command(_dead_letter_list))

    export = letters.add_parser(
        "export",
        parents=[location],
        help="write the dead letters as JSON lines, operations included",
        description=(
            "Write every dead letter (or those with --reason) as JSON lines, one row a "
            "line, oldest first, with the operation as it would have been sent. The rows "
            "hold event payloads: a --output file is created readable by its owner only. "
            "The count goes to stderr."
        ),
        epilog=(
            "example:\n  python -m customerio_logging dead-letter export --spool-path "
            "/var/lib/app/spool.sqlite3 --output refused.jsonl\n\n"
            + _exit_codes("the spool cannot be read, or --output cannot be written")
        ),
        formatter_class=_Formatter,
    )
    export.add_argument("--reason", help="only rows with this reason")
    export.add_argument(
        "--output", metavar="FILE", help="write to FILE, mode 0600 (default: stdout)"
    )
    export.set_defaults(run=_spool_command(_dead_letter_export))

    requeue = letters.add_parser(
        "requeue",
        parents=[location],
        help="move dead letters back into the spool, for the next replay",
        description=(
            "Move dead letters back into the spool, to be sent by the next replay (the "
            "app's, or spool replay). Invalid events have no operation to send: they "
            "cannot be requeued and stay."
        ),
        epilog=(
            "examples:\n  python -m customerio_logging dead-letter requeue --reason "
            "http_500 --spool-path /var/lib/app/spool.sqlite3\n"
            "  python -m customerio_logging dead-letter requeue --seq 12 --seq 13\n\n"
            + _exit_codes("the spool cannot be used")
        ),
        formatter_class=_Formatter,
    )
    _add_row_selection(requeue)
    requeue.set_defaults(run=_spool_command(_dead_letter_requeue))

    purge = letters.add_parser(
        "purge",
        parents=[location],
        help="delete dead letters (needs --yes)",
        description=(
            "Delete the chosen dead letters for good. Without --yes, say how many would "
            "go and delete nothing."
        ),
        epilog=(
            "example:\n  python -m customerio_logging dead-letter purge --reason "
            "invalid_name --yes\n\n"
            + _exit_codes("refused without --yes, or the spool cannot be used")
        ),
        formatter_class=_Formatter,
    )
    _add_row_selection(purge)
    purge.add_argument("--yes", action="store_true", help="really delete them")
    purge.set_defaults(run=_spool_command(_dead_letter_purge))


def _add_row_selection(parser: argparse.ArgumentParser) -> None:
    rows = parser.add_argument_group("which rows (one is required)")
    which = rows.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--seq",
        type=_count,
        action="append",
        metavar="N",
        help="the row with this seq (see dead-letter list); repeatable",
    )
    which.add_argument("--reason", help="every row with this reason")
    which.add_argument("--all", action="store_true", help="every row")


def _print_help(parser: argparse.ArgumentParser) -> _Command:
    """A command for a group named without its subcommand: its help, and a usage error."""

    def run(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return run


def _spool_path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the spool path must not be blank")
    return text


def _batch_size(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected a batch size from 1 to 1000, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 up, got {text!r}")
    return int(text)


# -- spool and dead-letter: finding and opening the file ----------------------------------

# Without settings (only --spool-path given): the bound the library uses by default.
_DEFAULT_MAX_SPOOL_BYTES = cast(
    "int", next(f.default for f in dataclasses.fields(Settings) if f.name == "max_spool_bytes")
)
_SQLITE_HEADER = b"SQLite format 3\x00"
_APPLICATION_ID_AT = 68  # the offset of PRAGMA application_id in SQLite's file header


def _spool_command(run: _Command) -> _Command:
    """A spool command whose settings and spool errors become exit codes 2 and 1."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except ConfigurationError as exc:
            return _configuration_error(exc)
        except (SpoolUnavailableError, SpoolBusyError) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1

    return wrapper


def _locate(args: argparse.Namespace) -> tuple[Path, Settings | None]:
    """The spool file: ``--spool-path`` as given, else the one the settings name."""
    if args.spool_path is not None:
        return Path(os.path.expanduser(args.spool_path)), None
    try:
        settings = Settings.from_env(**_credential_overrides(args))
    except ConfigurationError as exc:
        if exc.setting not in ("site_id", "api_key"):
            raise
        raise ConfigurationError(
            f"{exc}; or name the spool file with --spool-path",
            setting=exc.setting,
            env_var=exc.env_var,
        ) from None
    return _spool_file(settings), settings


def _spool_file(settings: Settings) -> Path:
    path = settings.spool_file
    if path is None:
        raise ConfigurationError(
            f"the spool is off (spool_path is off, from {ENV_VARS['spool_path']}): there is "
            "no spool file; name one with --spool-path",
            setting="spool_path",
            env_var=ENV_VARS["spool_path"],
        )
    return path


def _check_spool_file(path: Path) -> None:
    """Refuse a file that is not a spool, before the spool opens it.

    Opening moves a file that is not a spool aside as damaged, and starts a fresh one:
    right for the app, wrong for a command given the wrong path. A path the app would
    refuse as unsafe (a link, another user's file or folder) is refused here too.
    """
    check_spool_path(path)
    try:
        with path.open("rb") as file:
            head = file.read(_APPLICATION_ID_AT + 4)
    except OSError as exc:
        raise SpoolUnavailableError(
            f"the spool at {path} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
    if not head:
        return  # an empty file: the spool makes it one
    app_id = int.from_bytes(head[_APPLICATION_ID_AT:], "big")
    if not head.startswith(_SQLITE_HEADER) or (
        len(head) > _APPLICATION_ID_AT and app_id != APPLICATION_ID
    ):
        raise ConfigurationError(
            f"{path} is not a customerio-logging spool, so it was left as it is: check "
            f"--spool-path and {ENV_VARS['spool_path']}",
            setting="spool_path",
            env_var=ENV_VARS["spool_path"],
        )


def _open_spool(path: Path, settings: Settings | None) -> contextlib.closing[SQLiteSpool]:
    """The spool at ``path`` for a local command: any workspace's file is accepted."""
    _check_spool_file(path)
    max_bytes = _DEFAULT_MAX_SPOOL_BYTES if settings is None else settings.max_spool_bytes
    return contextlib.closing(SQLiteSpool(path, max_bytes=max_bytes, on_problem=_note))


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# -- spool status -------------------------------------------------------------------------


def _spool_status(args: argparse.Namespace) -> int:
    """Print what the spool holds; a missing file is shown as empty and left missing."""
    path, settings = _locate(args)
    exists = os.path.lexists(path)
    if exists:
        with _open_spool(path, settings) as spool:
            status = spool.status()
    else:
        max_bytes = _DEFAULT_MAX_SPOOL_BYTES if settings is None else settings.max_spool_bytes
        status = SpoolStatus(str(path), 0, 0, 0, max_bytes, None, None, 0, 0, None)
    if args.json:
        print(json.dumps({**dataclasses.asdict(status), "exists": exists}))
        return 0
    if not exists:
        print(f"no spool at {path}: nothing waits")
        print("waiting:       0 operations")
        print("dead letters:  0")
        return 0
    print(f"spool:         {status.path}")
    print(f"workspace:     {status.site_id or 'none recorded yet'}")
    being_sent = f" ({status.leased} being sent right now)" if status.leased else ""
    print(f"waiting:       {_plural(status.pending, 'operation')}{being_sent}")
    share = 100 * status.bytes / status.max_bytes
    print(f"size:          {_size(status.bytes)} of {_size(status.max_bytes)} ({share:.0f}%)")
    now = time.time()
    if status.oldest is not None and status.newest is not None:
        print(f"oldest:        {_when(status.oldest, now)}")
        print(f"newest:        {_when(status.newest, now)}")
    see = " (see: python -m customerio_logging dead-letter list)" if status.dead_letters else ""
    print(f"dead letters:  {status.dead_letters}{see}")
    if status.dead_letters or status.dead_letters_evicted:
        evicted = status.dead_letters_evicted
        gone = f"; {_plural(evicted, 'older one')} evicted to stay within it" if evicted else ""
        kept, bound = _size(status.dead_letter_bytes), _size(status.dead_letter_max_bytes)
        print(f"               {kept} of {bound}{gone}")
    print(f"file:          {_size(status.file_bytes)} on disk")
    return 0


def _when(timestamp: float, now: float) -> str:
    return f"{_iso(timestamp)} ({_ago(now - timestamp)})"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "in the future: is a clock wrong?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h ago"
    if hours:
        return f"{hours} h {minutes} min ago"
    return f"{minutes} min ago" if minutes else f"{secs} s ago"


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


# -- spool replay -------------------------------------------------------------------------


class _LastProblem:
    """A transport that remembers what went wrong with the last request, if anything.

    Replay's verdict names it when ``--timeout`` cuts the retries short: the delivery
    then only knows that time ran out, not why nothing got through.
    """

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self.problem: str | None = None

    def send(self, body: bytes) -> Response:
        try:
            response = self._inner.send(body)
        except DeliveryError as exc:
            self.problem = str(exc)
            raise
        failed = response.status >= 300 and response.status != 207
        self.problem = f"HTTP {response.status} {_phrase(response.status)}" if failed else None
        return response

    def close(self) -> None:
        self._inner.close()


class _Progress:
    """Replay's progress on stderr: one redrawn bar on a terminal, else a line a tenth."""

    _WIDTH = 20

    def __init__(self, total: int, stream: TextIO) -> None:
        self._total = max(1, total)
        self._stream = stream
        self._terminal = stream.isatty()
        self._tenths = 0
        self._line = ""
        self._printed = ""

    def show(self, sent: int, refused: int) -> None:
        # Another process may drain the spool meanwhile, or add to it: never past 100%.
        done = min(self._total, sent + refused)
        extra = f", {refused} refused" if refused else ""
        if self._terminal:
            filled = self._WIDTH * done // self._total
            bar = "#" * filled + "-" * (self._WIDTH - filled)
            digits = len(str(self._total))
            shown = min(sent, done)
            self._line = f"[{bar}]  {shown:>{digits}}/{self._total} sent{extra}"
            self._stream.write("\r" + self._line)
            self._stream.flush()
            return
        self._line = (
            f"replay: {min(sent, done)}/{self._total} sent ({100 * done // self._total}%){extra}"
        )
        tenths = 10 * done // self._total
        if tenths > self._tenths:
            self._tenths = tenths
            self._print()

    def close(self) -> None:
        if self._terminal:
            if self._line:
                self._stream.write("\n")
                self._stream.flush()
        elif self._line != self._printed:
            self._print()

    def _print(self) -> None:
        print(self._line, file=self._stream, flush=True)
        self._printed = self._line


def _spool_replay(args: argparse.Namespace) -> int:
    """Send what waits, round after round, until nothing is left or a round cannot send."""
    settings = Settings.from_env(**_credential_overrides(args), spool_path=args.spool_path)
    path = _spool_file(settings)
    if not os.path.lexists(path):
        print(f"no spool at {path}: nothing waits")
        return 0
    _check_spool_file(path)
    if args.timeout is not None:
        # One request must not outlast the whole replay.
        timeout = min(settings.request_timeout, args.timeout)
        settings = dataclasses.replace(settings, request_timeout=timeout)
    pacer = Pacer(settings.max_requests_per_second)
    if args.timeout is not None:
        pacer.set_deadline(time.monotonic() + args.timeout)
    refused_credentials: list[str] = []

    def credentials_refused(message: str) -> None:
        # The bridge holds its batch until the credentials are fixed, for as long as the
        # app runs; a person at a terminal had better hear it now. Ending the pacer's
        # time makes the delivery give up at once.
        refused_credentials.append(message)
        pacer.set_deadline(time.monotonic())

    transport = _LastProblem(_session_transport(settings))
    delivery = Delivery(
        transport,
        pacer=pacer,
        # Unlike the bridge's replay, the CLI retries: no fresh events wait behind it.
        policy=RetryPolicy.from_settings(settings, pacer=pacer),
        notify=credentials_refused,
    )
    spool = SQLiteSpool(
        path,
        max_bytes=settings.max_spool_bytes,
        site_id=settings.site_id,
        track_url=settings.track_url,
        on_problem=_note,
    )
    problems: list[Exception] = []
    replayer = Replayer(
        spool,
        delivery,
        batch_size=args.batch_size or settings.batch_size,
        on_problem=problems.append,
    )
    try:
        total = spool.status().pending
        if not total:
            print(f"the spool at {path} is empty: nothing waits")
            return 0
        host = urlsplit(settings.track_url).netloc
        print(f"replaying {_plural(total, 'operation')} from {path} to {host}", file=sys.stderr)
        sent, refused, failure = _replay_rounds(replayer, total, problems)
        if failure is not None and not problems and pacer.expired() and not refused_credentials:
            cause = f"; the last attempt: {transport.problem}" if transport.problem else ""
            failure = f"the --timeout of {args.timeout:g} s ran out{cause}"
        return _replay_verdict(spool, sent, refused, failure)
    finally:
        spool.close()
        transport.close()


def _replay_rounds(
    replayer: Replayer, total: int, problems: list[Exception]
) -> tuple[int, Counter[str], str | None]:
    """Rounds until the spool is drained or one cannot send: sent, refusals, what failed."""
    progress = _Progress(total, sys.stderr)
    sent = 0
    refused: Counter[str] = Counter()
    try:
        while True:
            result = replayer.round()
            sent += len(result.sent)
            refused.update(failure.reason for _, failure in result.refused)
            if result.claimed:
                progress.show(sent, refused.total())
            if problems:  # the spool could not be read or settled: stop, say why
                return sent, refused, str(problems[-1])
            if result.returned:
                return sent, refused, result.error or "the Track API could not be reached"
            if not result.claimed:
                return sent, refused, None
    except KeyboardInterrupt:
        return sent, refused, "interrupted"
    finally:
        progress.close()


def _replay_verdict(
    spool: SQLiteSpool, sent: int, refused: Counter[str], failure: str | None
) -> int:
    print(f"sent:          {sent}")
    if refused:
        reasons = ", ".join(f"{count} {reason}" for reason, count in refused.most_common())
        print(
            f"refused:       {refused.total()} ({reasons}): moved to the dead letter; "
            "see: python -m customerio_logging dead-letter list"
        )
    else:
        print("refused:       0")
    try:
        status = spool.status()
    except (SpoolUnavailableError, SpoolBusyError) as exc:
        print(f"still waiting: unknown ({exc})")
        return 1
    held = f" ({status.leased} held by another sender)" if status.leased else ""
    print(f"still waiting: {status.pending}{held}")
    if failure is not None:
        print(f"NOT SENT: {failure}")
        print(f"{_plural(status.pending, 'operation')} still wait; run again later")
        return 1
    return 0


# -- spool purge --------------------------------------------------------------------------


def _spool_purge(args: argparse.Namespace) -> int:
    """Delete every waiting operation, once ``--yes`` confirms it."""
    path, settings = _locate(args)
    if not os.path.lexists(path):
        print(f"no spool at {path}: nothing to delete")
        return 0
    with _open_spool(path, settings) as spool:
        if not args.yes:
            pending = spool.status().pending
            print(
                f"refusing without --yes: this would delete {_plural(pending, 'operation')} "
                f"waiting in {path}, unsent",
                file=sys.stderr,
            )
            return 1
        deleted = spool.purge()
    print(f"deleted {_plural(deleted, 'waiting operation')} from {path}")
    return 0


# -- dead-letter list and export ----------------------------------------------------------


def _dead_letter_list(args: argparse.Namespace) -> int:
    """Print the newest dead letters as a table, or as JSON lines."""
    path, settings = _locate(args)
    if not os.path.lexists(path):
        print(f"no spool at {path}: no dead letters", file=sys.stderr if args.json else sys.stdout)
        return 0
    limit = None if args.all else args.limit
    with _open_spool(path, settings) as spool:
        # Read oldest first (the spool's order), keeping the last ``limit``: the newest.
        newest: deque[DeadLetterRow] = deque(maxlen=limit)
        total = 0
        for row in spool.dead_letters(reason=args.reason):
            newest.append(row)
            total += 1
    if args.json:
        for row in newest:
            print(json.dumps(row.as_json(), ensure_ascii=False))
        return 0
    which = f" with reason {args.reason}" if args.reason else ""
    if not newest:
        print(f"no dead letters{which} in {path}")
        return 0
    for line in _table(newest, shutil.get_terminal_size((120, 24)).columns):
        print(line)
    if len(newest) < total:
        print(f"the newest {len(newest)} of {total} dead letters{which} (--all for every one)")
    else:
        print(f"{_plural(total, 'dead letter')}{which}")
    return 0


_COLUMNS = ("SEQ", "WHEN", "ID", "NAME", "REASON", "FIELD")
_COLUMN_CAPS = (10, 20, 26, 24, 24, 24)  # the message has what is left of the line


def _table(rows: Sequence[DeadLetterRow], width: int) -> list[str]:
    cells = [
        (str(r.seq), _iso(r.at), r.id or "-", r.name or "-", r.reason, r.field or "-") for r in rows
    ]
    widths = [
        min(cap, max(len(title), *(len(row[i]) for row in cells)))
        for i, (title, cap) in enumerate(zip(_COLUMNS, _COLUMN_CAPS, strict=True))
    ]
    message_width = max(20, width - sum(widths) - 2 * len(widths))

    def line(values: Sequence[str], message: str) -> str:
        fitted = [shorten(v, w).ljust(w) for v, w in zip(values, widths, strict=True)]
        return "  ".join([*fitted, shorten(message, message_width)]).rstrip()

    header = line(_COLUMNS, "MESSAGE")
    return [header, *(line(c, r.message) for c, r in zip(cells, rows, strict=True))]


def _dead_letter_export(args: argparse.Namespace) -> int:
    """Write the dead letters as JSON lines to stdout or a private file."""
    path, settings = _locate(args)
    exists = os.path.lexists(path)
    if exists:
        _check_spool_file(path)  # before --output is made: a wrong path leaves no file
    where = "stdout" if args.output is None else args.output
    try:
        output = sys.stdout if args.output is None else _private_file(args.output)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        print(f"FAILED: cannot write {args.output}: {reason}", file=sys.stderr)
        return 1
    count = 0
    try:
        if not exists:
            print(f"no spool at {path}: no dead letters", file=sys.stderr)
        else:
            with _open_spool(path, settings) as spool:
                for row in spool.dead_letters(reason=args.reason):
                    output.write(json.dumps(row.as_json(), ensure_ascii=False) + "\n")
                    count += 1
            output.flush()
    except OSError as exc:  # a full disk: what was written is incomplete
        reason = exc.strerror or type(exc).__name__
        print(f"FAILED: cannot write {where}: {reason}", file=sys.stderr)
        return 1
    finally:
        if output is not sys.stdout:
            with contextlib.suppress(OSError):  # flushed above; a failed write was reported
                output.close()
    print(f"exported {_plural(count, 'dead letter')} to {where}", file=sys.stderr)
    return 0


def _private_file(name: str) -> TextIO:
    """``name`` opened for writing, emptied, readable by its owner only (it holds payloads)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file that was already there keeps its mode otherwise
        return os.fdopen(fd, "w", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


# -- dead-letter requeue and purge --------------------------------------------------------


def _dead_letter_requeue(args: argparse.Namespace) -> int:
    """Move the chosen dead letters back into the spool, for the next replay."""
    path, settings = _locate(args)
    if not os.path.lexists(path):
        print(f"no spool at {path}: no dead letters")
        return 0
    with _open_spool(path, settings) as spool:
        moved = spool.requeue(args.seq, reason=args.reason)
        # What still matches stayed: rows without an operation (invalid events).
        stayed = _matching(spool, args)
    print(
        f"moved {_plural(moved, 'dead letter')} back into the spool at {path}; the next "
        "replay sends them (the app's, or: python -m customerio_logging spool replay)"
    )
    if stayed:
        print(
            f"{_plural(stayed, 'dead letter')} stayed: invalid events have no operation to "
            "send, so they cannot be requeued (dead-letter purge deletes them)"
        )
    return 0


def _dead_letter_purge(args: argparse.Namespace) -> int:
    """Delete the chosen dead letters, once ``--yes`` confirms it."""
    path, settings = _locate(args)
    if not os.path.lexists(path):
        print(f"no spool at {path}: no dead letters")
        return 0
    with _open_spool(path, settings) as spool:
        if not args.yes:
            count = _matching(spool, args)
            print(
                f"refusing without --yes: this would delete {_plural(count, 'dead letter')} "
                f"from {path}, for good",
                file=sys.stderr,
            )
            return 1
        deleted = spool.purge_dead_letters(args.seq, reason=args.reason)
    print(f"deleted {_plural(deleted, 'dead letter')} from {path}")
    return 0


def _matching(spool: SQLiteSpool, args: argparse.Namespace) -> int:
    """How many dead letters ``--seq``, ``--reason`` or ``--all`` choose."""
    seqs = None if args.seq is None else set(args.seq)
    return sum(seqs is None or row.seq in seqs for row in spool.dead_letters(reason=args.reason))


if __name__ == "__main__":
    sys.exit(main())
