"""Where a ``spool`` or ``dead-letter`` command works: a spool file, or the fleet's backlog
in Redis; found from the flags and settings, checked, opened."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .._config import DEFAULT_MAX_SPOOL_BYTES, ENV_VARS, Settings
from .._redis_client import namespace
from .._redis_url import redis_location
from .._storage import (
    NotASpoolError,
    SpoolBusyError,
    SpoolUnavailableError,
    Storage,
    open_storage,
)
from .._storage import check_spool_file as check_storage_file
from .._storage.fleet import FleetStorage
from .._storage.redis import RedisStorage
from .._storage.sqlite import SQLiteSpool
from ..exceptions import ConfigurationError
from ._args import Command, Subcommands, add_command, add_credential_flags, credential_overrides
from ._output import configuration_error

__all__ = [
    "REDIS_WAIT",
    "LocalRows",
    "SpoolLocation",
    "add_spool_command",
    "check_spool_file",
    "locate",
    "location_of",
    "note",
    "replay_settings",
]

REDIS_WAIT = 5.0
"""Seconds one Redis call of a command may take: longer than the app's (an operator's
command is not a log call), short enough to report an unreachable Redis soon."""


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
    """Add a command that works on the spool (see :func:`~._args.add_command`): it takes
    ``--spool-path``, ``--redis-url`` and the credential flags, and ``run``'s settings and
    spool errors become exit codes 2 and 1."""
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
    """A parent parser saying where the spool is: ``--spool-path``, else ``--redis-url``,
    else what the settings name (found from the site id and track URL)."""
    location = argparse.ArgumentParser(add_help=False)
    where = location.add_mutually_exclusive_group()
    where.add_argument(
        "--spool-path",
        type=_spool_path,
        metavar="PATH",
        help="the spool file to work on, even with a Redis URL set (default: "
        f"{ENV_VARS['spool_path']}, else the workspace's file in the user's state "
        "directory, found from the site id and track URL)",
    )
    where.add_argument(
        "--redis-url",
        type=_redis_url,
        metavar="URL",
        help=f"work on the fleet's backlog in this Redis ({ENV_VARS['redis_url']}, "
        "preferred: a password in a command line is visible to other users in ps), in the "
        "namespace of the workspace and API host given by the site id and track URL",
    )
    add_credential_flags(location)
    return location


def _spool_path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the spool path must not be blank")
    return text


def _redis_url(text: str) -> str:
    # The settings check the URL itself, without echoing it: it may hold a password.
    if not text.strip():
        raise argparse.ArgumentTypeError("the Redis URL must not be blank")
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


# -- where the spool is -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalRows:
    """What this host's spool file holds beside the fleet's backlog in Redis: rows the
    app kept there while Redis was down.

    Attributes:
        path: The file.
        pending: Operations waiting there; the next replay moves them to Redis.
        dead_letters: Dead letters there; they stay in the file.
    """

    path: Path
    pending: int
    dead_letters: int


@dataclass(frozen=True, slots=True)
class SpoolLocation:
    """Where a command works: a spool file, or the fleet's backlog in Redis.

    With a Redis URL in ``settings``, the backlog is Redis's, in the namespace of the
    settings' workspace and API host (the app's own), and ``file`` is this host's spool
    file, where the app keeps rows while Redis is down (None when the settings turn it
    off). Without, ``file`` is the spool file to work on.

    ``str()`` of it is what messages show: the file's path, or the Redis server and the
    namespace, never the Redis URL (it may hold a password).

    Attributes:
        file: The spool file; see above.
        settings: The settings it was found from; None for ``--spool-path`` alone.
    """

    file: Path | None
    settings: Settings | None = None

    def __str__(self) -> str:
        url = self.redis_url
        if url is None:
            return str(self.file)
        return f"{redis_location(url)} (namespace {self.namespace})"

    @property
    def redis_url(self) -> str | None:
        """The fleet's Redis, when the backlog is there; never to be shown."""
        return None if self.settings is None else self.settings.redis_url

    @property
    def namespace(self) -> str | None:
        """The prefix of the backlog's keys in Redis; None for a file."""
        settings = self.settings
        if settings is None or settings.redis_url is None:
            return None
        return namespace(settings.site_id, settings.track_url)

    @property
    def max_bytes(self) -> int:
        """The spool's bound: the settings', else (``--spool-path`` alone) the default."""
        return DEFAULT_MAX_SPOOL_BYTES if self.settings is None else self.settings.max_spool_bytes

    @property
    def missing(self) -> bool:
        """True for a spool file that is not there: a command reports it, and makes
        none. Redis is always asked."""
        return self.redis_url is None and not os.path.lexists(self._file())

    def _file(self) -> Path:
        assert self.file is not None  # a location without Redis names its file
        return self.file

    def open(self) -> contextlib.closing[Storage]:
        """The storage, for a command that reads or changes it.

        A file is checked first (see :func:`check_spool_file`), and may be any
        workspace's. Redis is connected to at once: one that cannot be reached fails
        here, before the command prints or writes anything.

        Raises:
            SpoolUnavailableError: The file cannot be used, or Redis cannot be reached.
            ConfigurationError: The file is not a spool.
        """
        url, settings = self.redis_url, self.settings
        if url is None or settings is None:
            path = self._file()
            check_spool_file(path)
            return contextlib.closing(SQLiteSpool(path, max_bytes=self.max_bytes, on_problem=note))
        storage = RedisStorage(
            url,
            max_bytes=settings.max_spool_bytes,
            site_id=settings.site_id,
            track_url=settings.track_url,
            on_problem=note,
            timeout=REDIS_WAIT,
        )
        _connect(storage, storage)
        return contextlib.closing(storage)

    def open_to_send(self) -> Storage:
        """The storage a replay sends from, as the app opens it (:func:`open_storage`):
        the file, refused if another workspace's; or Redis, with this host's spool file
        beside it, whose rows move to Redis as replay claims.

        Redis is connected to at once: one that cannot be reached fails here, rather
        than the replay falling back to this host's file alone (``--spool-path`` does
        that on purpose). A spool file that is not there is not made.
        """
        settings = self.settings
        assert settings is not None  # a replay has the settings it sends with
        local = self.file
        if local is not None and os.path.lexists(local):
            check_spool_file(local)
        elif self.redis_url is not None:
            settings = dataclasses.replace(settings, spool_path=False)  # no rows to move
        storage = open_storage(settings, on_problem=note)
        assert storage is not None  # location_of(): a file, or Redis
        if isinstance(storage, FleetStorage):
            _connect(storage.remote, storage)
        return storage

    def local_rows(self) -> LocalRows | None:
        """With Redis: what this host's spool file holds, when it holds anything (rows
        the app kept there while Redis was down). A file that cannot be read is noted on
        stderr and passed over: the fleet's backlog is the command's subject."""
        path = self.file
        if self.redis_url is None or path is None or not os.path.lexists(path):
            return None
        try:
            check_storage_file(path)
            with contextlib.closing(SQLiteSpool(path, max_bytes=self.max_bytes)) as spool:
                status = spool.status()
        except (NotASpoolError, SpoolUnavailableError, SpoolBusyError) as exc:
            note(f"this host's spool file cannot be read: {exc}")
            return None
        if not (status.pending or status.dead_letters):
            return None
        return LocalRows(path, status.pending, status.dead_letters)


def _connect(redis: Storage, owner: Storage) -> None:
    """Connect to Redis now; on failure close ``owner`` (the storage ``redis`` belongs
    to), and an unreachable Redis raises :class:`SpoolUnavailableError` saying where to
    look."""
    try:
        redis.prepare()
    except BaseException as exc:
        owner.close()
        if isinstance(exc, SpoolUnavailableError):
            raise SpoolUnavailableError(
                f"{exc}: is the server up, and is the URL right (--redis-url, "
                f"{ENV_VARS['redis_url']})?"
            ) from None
        raise


_NO_KEY_NEEDED = "not-needed-to-read-the-spool"


def locate(args: argparse.Namespace) -> SpoolLocation:
    """Where a command that does not send works: ``--spool-path``'s file as given; else
    the fleet's backlog in Redis, with a Redis URL (``--redis-url`` or the environment);
    else the spool file the settings name."""
    if args.spool_path is not None:
        return SpoolLocation(Path(os.path.expanduser(args.spool_path)))
    overrides = {**credential_overrides(args), "redis_url": args.redis_url}
    if overrides["api_key"] is None and not os.environ.get(ENV_VARS["api_key"], "").strip():
        # These commands never send: they need no key. A stand-in, never sent (no
        # transport is made), passes the settings' check that one is set.
        overrides["api_key"] = _NO_KEY_NEEDED
    try:
        # A command on the spool works whatever CUSTOMERIO_ENABLED says: switched off,
        # the settings name no spool, but the switch turns the app's spool off, not the
        # file or the fleet's backlog.
        settings = Settings.from_env(**overrides, enabled=True)
    except ConfigurationError as exc:
        if exc.setting != "site_id":
            raise
        raise ConfigurationError(
            f"{exc}; or name the spool file with --spool-path",
            setting=exc.setting,
            env_var=exc.env_var,
        ) from None
    return location_of(settings)


def replay_settings(args: argparse.Namespace) -> Settings:
    """The settings a replay sends with: the credentials (all needed), and where the
    spool is as :func:`locate` finds it (``--spool-path``'s file alone, even with a
    Redis URL set)."""
    settings = Settings.from_env(
        **credential_overrides(args), spool_path=args.spool_path, redis_url=args.redis_url
    )
    if args.spool_path is not None and settings.redis_url is not None:
        settings = dataclasses.replace(settings, redis_url=None)  # the file named wins
    return settings


def location_of(settings: Settings) -> SpoolLocation:
    """Where ``settings`` keep the spool: Redis (this host's file beside it), or the file.

    Raises:
        ConfigurationError: The settings turn the spool off and name no Redis.
    """
    if settings.redis_url is not None:
        return SpoolLocation(settings.spool_file, settings)
    path = settings.spool_file
    if path is None:
        raise ConfigurationError(
            f"the spool is off (spool_path is off, from {ENV_VARS['spool_path']}): there is "
            "no spool file; name one with --spool-path",
            setting="spool_path",
            env_var=ENV_VARS["spool_path"],
        )
    return SpoolLocation(path, settings)


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


def note(message: str) -> None:
    """Print the spool's notice (a damaged file moved aside...) on stderr."""
    print(f"note: {message}", file=sys.stderr)
