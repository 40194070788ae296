"""The command-line tests' fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "events.sqlite3"
