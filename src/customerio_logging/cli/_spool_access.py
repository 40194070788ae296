"""The spool file a ``spool`` or ``dead-letter`` command works on: found, checked, opened."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from pathlib import Path

from .._config import DEFAULT_MAX_SPOOL_BYTES, ENV_VARS, Settings
from .._storage import NotASpoolError, SpoolBusyError, SpoolUnavailableError
from .._storage import check_spool_file as check_storage_file
from .._storage.sqlite import SQLiteSpool
from ..exceptions import ConfigurationError
from ._args import Command, Subcommands, add_command, add_credential_flags, credential_overrides
from ._output import configuration_error

__all__ = [
    "add_spool_command",
    "check_spool_file",
    "locate",
    "max_spool_bytes",
    "note",
    "open_spool",
    "spool_file",
]


def add_spool_command(
    commands: Subcommands,
    name: str,
    run: Command,
    *,
    help: str,
    description: str,
    epilog: str,
    failure: str,
) -> argparse.ArgumentParser:
    """Add a command that works on the spool file (see :func:`~._args.add_command`): it
    takes ``--spool-path`` and the credential flags, and ``run``'s settings and spool
    errors become exit codes 2 and 1."""
    parser = add_command(
        commands,
        name,
        parents=[_location()],
        help=help,
        description=description,
        epilog=epilog,
        failure=failure,
    )
    parser.set_defaults(run=_spool_command(run))
    return parser


def _location() -> argparse.ArgumentParser:
    """A parent parser saying where the spool is: ``--spool-path``, else the file the
    settings name (the credentials are needed only for that, and for replay)."""
    location = argparse.ArgumentParser(add_help=False)
    location.add_argument(
        "--spool-path",
        type=_spool_path,
        metavar="PATH",
        help=f"the spool file (default: {ENV_VARS['spool_path']}, else the workspace's "
        "file in the user's state directory, found from the site id and track URL)",
    )
    add_credential_flags(location)
    return location


def _spool_path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the spool path must not be blank")
    return text


def _spool_command(run: Command) -> Command:
    """``run``, its settings and spool errors made exit codes 2 and 1."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except ConfigurationError as exc:
            return configuration_error(exc)
        except (SpoolUnavailableError, SpoolBusyError) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1

    return wrapper


def locate(args: argparse.Namespace) -> tuple[Path, Settings | None]:
    """The spool file: ``--spool-path`` as given, else the one the settings name."""
    if args.spool_path is not None:
        return Path(os.path.expanduser(args.spool_path)), None
    try:
        # A file command works whatever CUSTOMERIO_ENABLED says: switched off, the
        # settings name no spool, but the switch turns the app's spool off, not the file.
        settings = Settings.from_env(**credential_overrides(args), enabled=True)
    except ConfigurationError as exc:
        if exc.setting not in ("site_id", "api_key"):
            raise
        raise ConfigurationError(
            f"{exc}; or name the spool file with --spool-path",
            setting=exc.setting,
            env_var=exc.env_var,
        ) from None
    return spool_file(settings), settings


def spool_file(settings: Settings) -> Path:
    """The spool file ``settings`` name.

    Raises:
        ConfigurationError: The settings turn the spool off.
    """
    path = settings.spool_file
    if path is None:
        raise ConfigurationError(
            f"the spool is off (spool_path is off, from {ENV_VARS['spool_path']}): there is "
            "no spool file; name one with --spool-path",
            setting="spool_path",
            env_var=ENV_VARS["spool_path"],
        )
    return path


def check_spool_file(path: Path) -> None:
    """Refuse a file that is not a spool, before the spool opens it.

    Opening moves a file that is not a spool aside as damaged, and starts a fresh one:
    right for the app, wrong for a command given the wrong path. A path the app would
    refuse as unsafe (a link, another user's file or folder) is refused here too.

    Raises:
        SpoolUnavailableError: The path is unsafe, or the file cannot be read.
        ConfigurationError: The file is not a customerio-logging spool.
    """
    try:
        check_storage_file(path)
    except NotASpoolError as exc:
        raise ConfigurationError(
            f"{exc}: check --spool-path and {ENV_VARS['spool_path']}",
            setting="spool_path",
            env_var=ENV_VARS["spool_path"],
        ) from None


def open_spool(path: Path, settings: Settings | None) -> contextlib.closing[SQLiteSpool]:
    """The spool at ``path`` for a local command: any workspace's file is accepted."""
    check_spool_file(path)
    spool = SQLiteSpool(path, max_bytes=max_spool_bytes(settings), on_problem=note)
    return contextlib.closing(spool)


def max_spool_bytes(settings: Settings | None) -> int:
    """The spool's bound: the settings', else (``--spool-path`` alone) the library's default."""
    return DEFAULT_MAX_SPOOL_BYTES if settings is None else settings.max_spool_bytes


def note(message: str) -> None:
    """Print the spool's notice (a damaged file moved aside...) on stderr."""
    print(f"note: {message}", file=sys.stderr)
