"""Where the spool's files may live: the default place, and what makes a place safe.

SQLite opens its file by name and follows a symbolic link there, so the spool checks the
place first and SQLite's open after: a folder that only this user (or root) controls, or a
sticky shared one; in it, regular files of this user's own, never a link, never another's.
Its own files are opened here without following links.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import sqlite3
import stat
import time
from pathlib import Path

__all__ = [
    "LOCK",
    "SIBLINGS",
    "FileId",
    "UnsafePathError",
    "check_file",
    "check_opened",
    "check_place",
    "default_spool_path",
    "file_id",
    "make_private",
    "move_aside",
    "open_private",
    "prepare",
    "sibling",
]

SIBLINGS = ("-wal", "-shm", "-journal")
"""The files SQLite keeps beside the database, named after it."""
LOCK = ".lock"
"""The spool's own file beside the database: the lock taken to open it."""
FileId = tuple[int, int]
"""A file's identity: device and inode."""
_FIX = "point spool_path at a file in a folder only this user can write"
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class UnsafePathError(Exception):
    """The spool's place is not safe to use: leave it be, and do without.

    The message completes "the spool at PATH ...".
    """


def default_spool_path(site_id: str, track_url: str) -> Path:
    """The per-user spool file for one workspace and API host.

    ``$XDG_STATE_HOME/customerio-logging`` (``~/.local/state/customerio-logging``) on
    Linux, ``~/Library/Application Support/customerio-logging`` on macOS. One file per
    workspace and host, so two apps sending to different workspaces never mix events.
    """
    import hashlib
    import sys
    import tempfile

    key = hashlib.sha256(f"{site_id}\n{track_url}".encode()).hexdigest()[:16]
    name = f"spool-{key}.sqlite3"
    state = os.environ.get("XDG_STATE_HOME", "").strip()
    if os.path.isabs(state) and sys.platform != "darwin":
        return Path(state) / "customerio-logging" / name
    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        # No HOME and no passwd entry (a container running as an arbitrary uid): a
        # private folder in the temporary directory, rather than no spool at all.
        return Path(tempfile.gettempdir()) / f"customerio-logging-{os.getuid()}" / name
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "customerio-logging" / name
    return home / ".local" / "state" / "customerio-logging" / name


def sibling(path: Path, suffix: str) -> Path:
    """``path`` with ``suffix`` added to its name: ``spool.sqlite3-wal``."""
    return path.with_name(path.name + suffix)


def prepare(path: Path) -> Path:
    """Make the spool's folder (mode 0700) if missing, check the place, and return the
    path through the folder's real location: SQLite then meets no link but in the last part.

    Raises:
        UnsafePathError: The place is not safe (see :func:`check_place`).
        OSError: The folder cannot be made.
    """
    directory = path.parent
    if not directory.is_dir():
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            # mkdir's own words ("File exists") would puzzle: say which part is not a folder.
            raise NotADirectoryError(0, f"{directory} is not a directory") from None
    real = Path(os.path.realpath(directory)) / path.name
    check_place(real)  # before the lock file is made beside it
    return real


def check_place(path: Path) -> None:
    """Refuse an unsafe place without making or opening anything (for read-only views).

    Unsafe: a folder owned by another user than this one or root; a folder that others
    can write to without the sticky bit (which stops them renaming or deleting our files);
    the file, or one SQLite or the spool keeps beside it, being a symbolic link, not a
    regular file, another user's, or hard-linked.

    Raises:
        UnsafePathError: Saying which, and what to do.
    """
    directory = path.parent
    if directory.is_dir():
        _check_folder(Path(os.path.realpath(directory)))
    for suffix in ("", *SIBLINGS, LOCK):
        with contextlib.suppress(FileNotFoundError):
            _check_file(os.lstat(sibling(path, suffix)), suffix)


def open_private(path: Path, suffix: str = "") -> int:
    """The file ``path + suffix`` opened read-write without following a link: a
    descriptor on a regular file of this user's, created with mode 0600 if missing.

    Only for a file no SQLite connection of this process has open: closing any descriptor
    on a file drops every POSIX lock the process holds on it, SQLite's included.

    Raises:
        UnsafePathError: A link, a file that is not regular, another user's, hard-linked.
        OSError: It cannot be opened.
    """
    name = sibling(path, suffix)
    with contextlib.suppress(FileNotFoundError):
        _check_file(os.lstat(name), suffix)  # before open(): opening a device or FIFO acts
    try:
        fd = os.open(name, _OPEN_FLAGS | os.O_CREAT, 0o600)
    except OSError:
        if os.path.islink(name):  # put there since the check: O_NOFOLLOW refused it
            raise UnsafePathError(_link_problem(suffix)) from None
        raise
    try:
        _check_file(os.fstat(fd), suffix)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_file(path: Path, suffix: str = "") -> FileId | None:
    """Refuse an unsafe ``path + suffix`` (see :func:`check_place`), without opening it;
    its identity, None when it is missing."""
    try:
        info = os.lstat(sibling(path, suffix))
    except FileNotFoundError:
        return None
    _check_file(info, suffix)
    return info.st_dev, info.st_ino


def file_id(fd: int) -> FileId:
    """The identity (device, inode) of the file behind ``fd``."""
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def make_private(path: Path, suffix: str = "") -> None:
    """Check ``path + suffix`` (see :func:`check_file`) and make it mode 0600 if it is not.

    A missing file is fine (SQLite makes its -wal and -shm with the database's mode). By
    name, not through a descriptor (see :func:`open_private`): the check then the change
    cannot meet another file, since the folder lets no one else rename ours (see
    :func:`check_place`).

    Raises:
        UnsafePathError: As :func:`check_file`.
    """
    name = sibling(path, suffix)
    if check_file(path, suffix) is not None and os.lstat(name).st_mode & 0o077:
        # The spool holds the app's events: readable by its owner only.
        os.chmod(name, 0o600)


def check_opened(conn: sqlite3.Connection, checked: FileId) -> None:
    """Check that the file SQLite opened (by name, itself) is the one ``checked``.

    SQLite resolves a link in the name on its own and opens its target; it names what it
    opened in ``PRAGMA database_list``. A file put in place between the check and SQLite's
    open shows there as another file.

    Raises:
        UnsafePathError: SQLite opened another file.
    """
    opened = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    try:
        found = os.stat(opened)
    except (OSError, ValueError):
        found = None
    if found is None or (found.st_dev, found.st_ino) != checked:
        raise UnsafePathError(f"was replaced by another file while it was opened; {_FIX}")


def move_aside(path: Path) -> Path:
    """Rename a bad spool (and its -wal, -shm, -journal) to ``NAME.corrupt-STAMP``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    extra = 1
    # lexists: a link there counts as taken too, and is never renamed over.
    while any(os.path.lexists(sibling(target, s)) for s in ("", *SIBLINGS)):
        extra += 1  # a second bad file within the same second keeps the first's copy
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{extra}")
    for suffix in ("", *SIBLINGS):
        source = sibling(path, suffix)
        if os.path.lexists(source):
            with contextlib.suppress(OSError):
                source.rename(sibling(target, suffix))
    return target


def _check_folder(directory: Path) -> None:
    info = os.stat(directory)
    if info.st_uid not in (os.geteuid(), 0):
        raise UnsafePathError(
            f"is in a folder owned by another user ({directory}, uid {info.st_uid}); {_FIX}"
        )
    writers = info.st_mode & (0o002 if _private_group(info.st_gid) else 0o022)
    if writers and not info.st_mode & stat.S_ISVTX:
        # Others could rename our file and put a link, or their own file, in its place.
        raise UnsafePathError(
            f"is in a folder other users can write to ({directory}, mode "
            f"{stat.S_IMODE(info.st_mode):04o}, no sticky bit); {_FIX}"
        )


def _private_group(gid: int) -> bool:
    """True for this user's own group, as systems with user private groups (a umask of
    002) make it: named after the user, with no other member, and no other user's
    primary group. Its write bit lets no one else in."""
    if gid != os.getegid():
        return False
    try:
        user = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(gid)
    except KeyError:  # a uid or gid with no name (a container's arbitrary one)
        return False
    if group.gr_name != user.pw_name or any(m != user.pw_name for m in group.gr_mem):
        return False
    return all(u.pw_gid != gid or u.pw_uid == user.pw_uid for u in pwd.getpwall())


def _check_file(info: os.stat_result, suffix: str = "") -> None:
    # The message goes on from "the spool at PATH": it says when it is about a sibling.
    which = f"has a {suffix} file beside it that " if suffix else ""
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        raise UnsafePathError(_link_problem(suffix))
    if stat.S_ISDIR(mode):
        raise UnsafePathError(f"{which}is a directory, not a file; point spool_path at a file")
    if not stat.S_ISREG(mode):
        raise UnsafePathError(f"{which}is not a regular file; point spool_path at a file")
    if info.st_uid != os.geteuid():
        raise UnsafePathError(
            f"{which}belongs to another user (uid {info.st_uid}), so it was left alone; {_FIX}"
        )
    if info.st_nlink > 1:
        # Two names for one database: SQLite's -wal beside each would corrupt it.
        raise UnsafePathError(f"{which}has other hard links to it, so it was left alone; {_FIX}")


def _link_problem(suffix: str = "") -> str:
    which = f"has a {suffix} file beside it that " if suffix else ""
    return f"{which}is a symbolic link, so it was left alone; {_FIX}"
