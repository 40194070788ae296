"""The parser pieces every command shares: help layout, exit codes, credential flags, seconds."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from .._config import MIN_SECONDS

__all__ = [
    "Command",
    "Formatter",
    "Subcommands",
    "add_command",
    "add_credential_flags",
    "add_group",
    "credential_overrides",
    "credentials_parent",
    "exit_codes",
    "positive_seconds",
    "usage_error",
]

Command = Callable[[argparse.Namespace], int]
"""What a parsed command runs (``args.run``): returns the process exit code."""
# A string: _SubParsersAction is generic only to type checkers.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""Where commands are added: what ``add_subparsers()`` returns."""


class Formatter(argparse.HelpFormatter):
    """Wraps a paragraph written on one line; keeps one with line breaks (examples, tables)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n\n".join(
            paragraph if "\n" in paragraph else fill(paragraph, width, indent)
            for paragraph in text.split("\n\n")
        )


def exit_codes(failure: str) -> str:
    """The exit-code table for a help epilog, with what exit code 1 means there."""
    return (
        "exit codes:\n"
        "  0  success\n"
        f"  1  {failure}\n"
        "  2  usage or configuration error (the message says what to change)"
    )


def add_command(
    commands: Subcommands,
    name: str,
    *,
    help: str,
    description: str,
    epilog: str,
    failure: str,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """Add the command ``name`` to ``commands``: its help ends with ``epilog`` (examples),
    then the exit-code table, in which exit code 1 means ``failure``."""
    return commands.add_parser(
        name,
        parents=list(parents),
        help=help,
        description=description,
        epilog=f"{epilog}\n\n{exit_codes(failure)}",
        formatter_class=Formatter,
    )


def add_group(
    commands: Subcommands,
    name: str,
    *,
    dest: str,
    help: str,
    description: str,
    epilog: str,
    failure: str,
) -> Subcommands:
    """Add the command group ``name`` (see :func:`add_command`); returns where its
    commands go (``args.<dest>`` names the one given). Named without one, the group
    prints its help: a usage error."""
    group = add_command(
        commands, name, help=help, description=description, epilog=epilog, failure=failure
    )
    group.set_defaults(run=_print_help(group))
    return group.add_subparsers(dest=dest, metavar="COMMAND")


def _print_help(parser: argparse.ArgumentParser) -> Command:
    """A command for a group named without its subcommand: its help, and a usage error."""

    def run(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return run


def usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """Print ``message`` as argparse prints a usage error (the usage line, then ``prog:
    error: message``) for a check it cannot make while parsing; returns its exit code, 2."""
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def credentials_parent() -> argparse.ArgumentParser:
    """A parent parser holding the credential flags (``parents=[...]``)."""
    parent = argparse.ArgumentParser(add_help=False)
    add_credential_flags(parent)
    return parent


def add_credential_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--site-id``, ``--api-key``, ``--region`` and ``--track-url`` to ``parser``."""
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


def credential_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The credential flags as ``Settings.from_env`` overrides."""
    # None means "not given": Settings.from_env then falls back to the environment.
    return {
        "site_id": args.site_id,
        "api_key": args.api_key,
        "region": args.region,
        "track_url": args.track_url,
    }


def positive_seconds(text: str) -> float:
    """An argument type: seconds, at least the settings' shortest wait."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not MIN_SECONDS <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SECONDS:g} seconds, got {text!r}")
    return seconds
