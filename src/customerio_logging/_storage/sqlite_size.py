"""The spool file's size on disk: the write-ahead log's share of the byte bound, and the
pages left for rows, so that the file, its log and its index together stay within it.

SQLite never gives a freed page back to the file system: it reuses it. So the file is
as large as the most pages ever in use, and bounding the pages in use bounds the file.
The write-ahead log is bounded beside it: a checkpoint every so many pages, and the log
cut back to that size when it starts over after a larger transaction (an eviction).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .sqlite_path import sibling

__all__ = [
    "MIN_FILE_BOUND",
    "FileBudget",
    "file_budget",
    "file_pages",
    "free_pages",
    "journal_limit",
    "keep_within",
    "on_disk",
    "wal_pages",
]

MIN_FILE_BOUND = 1024 * 1024
"""The smallest byte bound the file is kept within (the smallest ``max_spool_bytes``).
Below it, too little for the file's own pages and log, only the waiting operations'
bytes are bounded (the unit tests' spools of a few hundred bytes)."""
_MIN_PAGES = 64  # nor is the file kept within a bound that leaves it fewer pages in use

# Between checkpoints the log takes an eighth of the bound, at least 32 pages and at most
# SQLite's own default of 1000 pages (4 MiB, from a 32 MiB bound up). A write adds 5 to
# 8 pages to the log, and a checkpoint costs a write dozens of µs: at 100 pages one
# spool write costs a third more than at 1000, at 16 pages three times as much.
_WAL_SHARE = 8
_MIN_WAL = 32 * 4096
_MAX_WAL = 1000 * 4096
_STEP_SHARE = 40  # an eviction frees a 40th of the bound beyond the excess
_SLACK_FRAMES = 16  # the write that crosses the checkpoint mark: log kept, not cut back
_WAL_HEADER = 32  # bytes: the log's header, then each frame's header and page
_FRAME_HEADER = 24
_SHM_BLOCK = 32 * 1024  # the -shm index: 32 KiB for every 4096 frames of log
_SHM_FRAMES = 4096


@dataclass(frozen=True, slots=True)
class FileBudget:
    """The pages a spool file may have in use, and how far past that an eviction goes.

    Attributes:
        pages: Most pages in use (rows, indexes, dead letters, bookkeeping).
        step: Pages an eviction frees beyond the excess, so that a full spool evicts
            once per step rather than on every write.
        page_size: The file's page size, in bytes.
    """

    pages: int
    step: int
    page_size: int


def wal_pages(max_bytes: int, page_size: int) -> int:
    """Pages of write-ahead log between two checkpoints (``PRAGMA wal_autocheckpoint``)."""
    wal = min(_MAX_WAL, max(_MIN_WAL, max_bytes // _WAL_SHARE))
    return max(1, wal // page_size)


def journal_limit(max_bytes: int, page_size: int) -> int:
    """Bytes the write-ahead log is cut back to when it starts over
    (``PRAGMA journal_size_limit``): its checkpoint mark, and a write's worth past it.

    Room for that write keeps a log of ordinary size as it is, rather than cut and grown
    again on every cycle; the log of an eviction's large transaction is cut back."""
    frames = wal_pages(max_bytes, page_size) + _SLACK_FRAMES
    return _WAL_HEADER + frames * (page_size + _FRAME_HEADER)


def file_budget(max_bytes: int, page_size: int) -> FileBudget | None:
    """The pages in use that keep the file, its log and its index within ``max_bytes``;
    None below ``MIN_FILE_BOUND`` (or for pages so large that too few would be left).

    At its largest the log holds its checkpoint mark, a write past it, and an eviction
    (the pages it frees are written to the log once more); its index grows with it.
    """
    if max_bytes < MIN_FILE_BOUND:
        return None
    step = max(1, max_bytes // _STEP_SHARE // page_size)
    log = journal_limit(max_bytes, page_size) + step * (page_size + _FRAME_HEADER)
    frames = wal_pages(max_bytes, page_size) + _SLACK_FRAMES + step
    index = _SHM_BLOCK * (1 + frames // _SHM_FRAMES)
    pages = (max_bytes - log - index) // page_size
    return FileBudget(pages, step, page_size) if pages >= _MIN_PAGES else None


def keep_within(conn: sqlite3.Connection, max_bytes: int) -> FileBudget | None:
    """Set the connection's write-ahead log in proportion to ``max_bytes``; the file's
    budget of pages (None below ``MIN_FILE_BOUND``)."""
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages(max_bytes, page_size)}")
    conn.execute(f"PRAGMA journal_size_limit = {journal_limit(max_bytes, page_size)}")
    return file_budget(max_bytes, page_size)


def on_disk(path: Path) -> int:
    """Bytes the spool file at ``path`` takes on disk: the file, its write-ahead log and
    the log's index (``-shm``)."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(sibling(path, suffix)).st_size
    return total


def file_pages(conn: sqlite3.Connection) -> int:
    """The file's pages, free ones included."""
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    return int(pages)


def free_pages(conn: sqlite3.Connection) -> int:
    """The file's free pages, kept for reuse."""
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    return int(free)
