"""The spool behind one seam: the Storage protocol, and the backend settings ask for.

The bridge and replay speak only :class:`Storage`; :func:`open_storage` picks the backend:
the SQLite file, or with ``redis_url`` the fleet's Redis with the file as its fallback.
The three fork functions keep the spool's connections sound across ``os.fork()``; the
process's lifecycle registers them.
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
    settings: Settings,
    *,
    on_problem: Callable[[str], None] | None = None,
    on_evicted: Callable[[int, int], None] | None = None,
) -> Storage | None:
    """The storage ``settings`` ask for; None when the spool is off.

    With ``redis_url``, a :class:`~.fleet.FleetStorage`: the backlog in Redis, and the
    spool file (unless ``spool_path=False``) while Redis cannot be reached. Nothing is
    opened yet: the storage opens on first use, or at :meth:`Storage.prepare`.

    Args:
        settings: Where the spool is (``spool_file``, ``redis_url``), its bound
            (``max_spool_bytes``) and the workspace it must belong to (``site_id``,
            ``track_url``).
        on_problem: Told, in words, of a problem the storage worked around (a damaged
            spool file moved aside for a fresh one, Redis down or back).
        on_evicted: Told how many operations Redis evicted to take the rows moved to
            it from the spool file (the evictions no write returns), and the bound
            (``max_spool_bytes``).
    """
    path = settings.spool_file
    local = None
    if path is not None:
        local = SQLiteSpool(
            path,
            max_bytes=settings.max_spool_bytes,
            site_id=settings.site_id,
            track_url=settings.track_url,
            on_problem=on_problem,
        )
    if settings.redis_url is None:
        return local
    from .._redis_url import redis_location
    from .fleet import FleetStorage
    from .redis import RedisStorage

    bound = settings.max_spool_bytes
    remote = RedisStorage(
        settings.redis_url,
        max_bytes=settings.max_spool_bytes,
        site_id=settings.site_id,
        track_url=settings.track_url,
        on_problem=on_problem,
    )
    return FleetStorage(
        remote,
        local,
        location=redis_location(settings.redis_url),
        on_problem=on_problem,
        on_evicted=None if on_evicted is None else lambda count: on_evicted(count, bound),
    )
