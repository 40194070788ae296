"""Fixtures for the storage tests: a spool file's path, SQLite spools closed at the end, one
Redis server shared by the Redis tests, and one of a test's own (with a password) to stop."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging.testing._redis import REQUIRE_VAR, RedisServer, redis_server_binary

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


_REDIS_PASSWORD = "hunter2-5f3a9c"  # the tests check that it never shows


def _need_redis_server() -> None:
    """Skip the test (fail it, when ``CUSTOMERIO_TEST_REDIS=required``) without a
    ``redis-server``, as the plugin's ``redis_server`` fixture does."""
    if redis_server_binary() is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get(REQUIRE_VAR, "").strip().lower() == "required":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` for the storage tests, each in a namespace of its own (a test
    that stops or restarts Redis takes ``locked_redis`` instead)."""
    _need_redis_server()
    with RedisServer(tmp_path_factory.mktemp("cio-redis")) as server:
        yield server


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of the test's own, to stop and restart, that asks for a password
    (its ``url`` holds it)."""
    _need_redis_server()
    directory = tmp_path / "redis"
    directory.mkdir()
    with RedisServer(directory, password=_REDIS_PASSWORD) as server:
        yield server
