"""Fixtures for the storage tests: a spool file's path, and SQLite spools closed at the end."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from customerio_logging._storage.sqlite import SQLiteSpool

from ..helpers import BIG, SITE


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool.sqlite3"


@pytest.fixture
def make_spool(spool_path: Path) -> Iterator[Callable[..., SQLiteSpool]]:
    """SQLiteSpool(path=spool_path, max_bytes=BIG, site_id=SITE, **overrides), closed at the end."""
    made: list[SQLiteSpool] = []

    def make(**overrides: Any) -> SQLiteSpool:
        options: dict[str, Any] = {"path": spool_path, "max_bytes": BIG, "site_id": SITE}
        options.update(overrides)
        spool = SQLiteSpool(options.pop("path"), **options)
        made.append(spool)
        return spool

    yield make
    for spool in made:
        spool.close()


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: what the spool makes private, it makes private itself."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)
