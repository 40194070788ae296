"""The command line: ``python -m customerio_logging demo|check|emulator|send``."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import math
import os
import queue
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from types import FrameType
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from ._bridge import DeadLetter, Stats, configure, shutdown
from ._capture import ACTION, TAG
from ._config import REGION_URLS, Settings
from ._delivery import Response, SessionTransport, Transport
from .exceptions import ConfigurationError
from .handler import CustomerIOHandler

__all__ = ["main"]

_Command = Callable[[argparse.Namespace], int]

_REGION_PATH = "/api/v1/accounts/region"
# Lets a send that the deadline cut short settle its count (sent, failed or dropped),
# so the verdict is the final one.
_SHUTDOWN_GRACE = 1.0
# Not for Customer.io, for this tool: the events it logs stay out of the app's loggers.
_SEND_LOGGER = "customerio-logging.send"
# Keys a log call cannot carry as event data under their own name: the attributes of a
# LogRecord (logging refuses them in `extra`, or the handler skips them) and the keys the
# handler reads as the tag, the action or the person.
_RESERVED_KEYS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "_logger",
    "_name",
    TAG,
    ACTION,
    "user_id",
    "customer_id",
    "email",
    "cio_id",
    "anonymous_id",
}


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
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
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
            return value.strip().lower()
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
        # The whole delivery fits --timeout: one request, and the retries after it.
        "request_timeout": args.timeout,
        "retry_budget": args.timeout,
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
    from customerio import CustomerIO

    client = CustomerIO(
        site_id=settings.site_id,
        api_key=settings.api_key,
        retries=0,
        timeout=settings.request_timeout,
    )
    return SessionTransport(client, settings.track_url, timeout=settings.request_timeout)


def _data_key(key: str) -> str:
    # The handler drops one trailing underscore (from_ -> "from"): adding one lets a
    # reserved key, or a key that ends in "_", arrive as typed.
    return f"{key}_" if key in _RESERVED_KEYS or key.endswith("_") else key


def _why_not_sent(stats: Stats, dead_letters: list[DeadLetter], timeout: float) -> str:
    if dead_letters:
        letter = dead_letters[-1]
        where = f"; id {letter.id}" if letter.id else ""
        return f"{letter.message} ({letter.reason}{where})"
    if stats.last_error:
        return stats.last_error
    return f"not delivered within {timeout:g}s"


if __name__ == "__main__":
    sys.exit(main())
