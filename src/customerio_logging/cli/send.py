"""``send``: one test event logged and delivered through the library's own pipeline."""

from __future__ import annotations

import argparse
import json
import logging
import math
from typing import Any
from urllib.parse import urlsplit

from .._capture import RESERVED_KEYS, TAG
from .._config import MAX_SECONDS, Settings
from .._delivery import transport_for
from .._global import configure, shutdown
from .._ledger import DeadLetter, Stats
from .._wire import Response, Transport
from ..exceptions import ConfigurationError
from ..handler import CustomerIOHandler
from ._args import (
    Subcommands,
    add_command,
    credential_overrides,
    credentials_parent,
    positive_seconds,
)
from ._output import configuration_error, not_sent_while_off

__all__ = ["register"]

# Lets a send that the deadline cut short settle its count (sent, failed or dropped),
# so the verdict is the final one.
_SHUTDOWN_GRACE = 1.0
# Not for Customer.io, for this tool: the events it logs stay out of the app's loggers.
_SEND_LOGGER = "customerio-logging.send"


def register(commands: Subcommands) -> None:
    """Add the ``send`` command to ``commands``."""
    send = add_command(
        commands,
        "send",
        parents=[credentials_parent()],
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
            "is sent as given."
        ),
        failure=(
            "the event was not accepted: refused, unreachable, invalid or late; or not "
            "sent, the library being switched off (CUSTOMERIO_ENABLED=0)"
        ),
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
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="longest time for delivery, retries included (default 10)",
    )
    send.set_defaults(run=_send)


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
        **credential_overrides(args),
        "install_signal_handlers": False,
        "spool_path": False,
        # The whole delivery fits --timeout: one request, and the retries after it
        # (neither setting takes more than an hour; the flush below waits it all).
        "request_timeout": min(args.timeout, MAX_SECONDS),
        "retry_budget": min(args.timeout, MAX_SECONDS),
    }
    try:
        settings = Settings.from_env(**overrides)
        if not settings.enabled:
            return not_sent_while_off()
        recorder = _IdRecorder(transport_for(settings))
        bridge = configure(**overrides, transport=recorder)
    except ConfigurationError as exc:
        return configuration_error(exc)
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
