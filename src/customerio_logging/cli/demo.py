"""``demo``: a small app run against the embedded Track API emulator (no account needed)."""

from __future__ import annotations

import argparse

from ._args import Subcommands

__all__ = ["register"]


def register(commands: Subcommands) -> None:
    """Add the ``demo`` command to ``commands``."""
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


def _demo(args: argparse.Namespace) -> int:
    # Imported on use: the app starts the emulator and declares its own events.
    from ._demo_app import run_demo

    return run_demo(events=args.events, as_json=args.json)
