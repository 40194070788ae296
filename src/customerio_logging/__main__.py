"""The command line: ``python -m customerio_logging demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m customerio_logging",
        description="Send product events to Customer.io from log calls.",
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
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(events=args.events, as_json=args.json)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
