"""How the commands word what they print: counts, times, a configuration error."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from ..exceptions import ConfigurationError

__all__ = ["configuration_error", "iso", "plural"]


def configuration_error(exc: ConfigurationError) -> int:
    """Print ``exc`` as a configuration error on stderr; returns its exit code, 2."""
    print(f"configuration error: {exc}", file=sys.stderr)
    return 2


def plural(count: int, noun: str) -> str:
    """``"1 operation"``, ``"2 operations"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def iso(timestamp: float) -> str:
    """A Unix time as ISO 8601 UTC to the second: ``2023-11-14T22:13:20Z``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
