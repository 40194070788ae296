"""How the commands word what they print: counts, times, a configuration error, the switch."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

from .._config import ENV_VARS
from ..exceptions import ConfigurationError

__all__ = [
    "TURN_ON",
    "configuration_error",
    "iso",
    "not_sent_while_off",
    "plural",
    "switch_as_set",
    "switched_off",
]

TURN_ON = "unset it or set it to 1 to send"
"""What to do about :func:`switched_off`, after it."""


def configuration_error(exc: ConfigurationError) -> int:
    """Print ``exc`` as a configuration error on stderr; returns its exit code, 2."""
    print(f"configuration error: {exc}", file=sys.stderr)
    return 2


def switch_as_set() -> str:
    """The switch as the environment sets it: ``CUSTOMERIO_ENABLED=0``.

    The command line has no flag for the switch: only this variable turns it off.
    """
    name = ENV_VARS["enabled"]
    return f"{name}={os.environ.get(name, '').strip()}"


def switched_off() -> str:
    """Why nothing is sent: the library is switched off, and by what."""
    return f"customerio_logging is switched off ({switch_as_set()})"


def not_sent_while_off() -> int:
    """Refuse to send while the library is switched off; returns the exit code, 1.

    A command that sends does not override the switch: on a machine where it is set (a
    developer's, CI), credentials left in the environment would otherwise reach a real
    workspace by surprise.
    """
    print(f"NOT SENT: {switched_off()}; {TURN_ON}")
    return 1


def plural(count: int, noun: str) -> str:
    """``"1 operation"``, ``"2 operations"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def iso(timestamp: float) -> str:
    """A Unix time as ISO 8601 UTC to the second: ``2023-11-14T22:13:20Z``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
