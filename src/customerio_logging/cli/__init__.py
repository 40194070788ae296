"""The command line: ``python -m customerio_logging demo|check|emulator|send|spool|dead-letter``.

Each command group registers its own parser from its module; :func:`main` parses and runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import check, dead_letter, demo, emulator, send, spool
from ._args import Command, Formatter, exit_codes

__all__ = ["main"]

# In the order --help lists them.
_GROUPS = (demo, check, emulator, send, spool, dead_letter)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (see ``--help``)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits after --help (0) and on a usage error (2); main() returns instead.
        return exc.code if isinstance(exc.code, int) else 2
    run: Command | None = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    return run(args)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m customerio_logging",
        description="Send product events to Customer.io from log calls.",
        epilog=exit_codes("what the command checked or attempted failed (see its --help)"),
        formatter_class=Formatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        group.register(commands)
    return parser
