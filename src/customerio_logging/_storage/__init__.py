"""The spool behind one seam: the Storage protocol, and the backend settings ask for.

The bridge and replay speak only :class:`Storage`; :func:`open_storage` picks the backend
(today the SQLite file; a Redis backend plugs in there). The three fork functions keep
the spool's connections sound across ``os.fork()``; the process's lifecycle registers them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import (
    CALLER_WAIT,
    DeadLetterRow,
    SpoolBusyError,
    SpoolStatus,
    SpoolUnavailableError,
    Storage,
)
from .sqlite import SQLiteSpool
from .sqlite_connection import after_fork_in_child, after_fork_in_parent, before_fork
from .sqlite_file import NotASpoolError, check_spool_file

if TYPE_CHECKING:
    from .._config import Settings

__all__ = [
    "CALLER_WAIT",
    "DeadLetterRow",
    "NotASpoolError",
    "SpoolBusyError",
    "SpoolStatus",
    "SpoolUnavailableError",
    "Storage",
    "after_fork_in_child",
    "after_fork_in_parent",
    "before_fork",
    "check_spool_file",
    "open_storage",
]


def open_storage(
    settings: Settings, *, on_problem: Callable[[str], None] | None = None
) -> Storage | None:
    """The storage ``settings`` ask for; None when the spool is off.

    Nothing is opened yet: the storage opens on first use, or at
    :meth:`Storage.prepare`.

    Args:
        settings: Where the spool is (``spool_file``), its bound (``max_spool_bytes``)
            and the workspace it must belong to (``site_id``, ``track_url``).
        on_problem: Told, in words, of a problem the storage worked around (a damaged
            spool file moved aside for a fresh one).
    """
    path = settings.spool_file
    if path is None:
        return None
    return SQLiteSpool(
        path,
        max_bytes=settings.max_spool_bytes,
        site_id=settings.site_id,
        track_url=settings.track_url,
        on_problem=on_problem,
    )
