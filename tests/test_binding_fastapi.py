"""bind() with FastAPI, as the README shows it: an ``async def`` dependency with yield, or an
ASGI middleware; the bound user reaches async and sync (worker thread) endpoints. A plain
``def`` dependency binds nothing the endpoint sees, and its requests still succeed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import customerio_logging as cio
from customerio_logging import _binding
from customerio_logging._capture import capture_record

fastapi = pytest.importorskip("fastapi")
from fastapi import Depends, FastAPI, Request  # noqa: E402 - only once FastAPI is known there

log = logging.getLogger("tests.binding.fastapi")
PATHS = ["/async", "/sync"]


class Captured(logging.Handler):
    """Keeps the fields of each tagged record, as the real handler captures them."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        capture = capture_record(record)
        if capture is not None:
            self.fields.append(capture.fields)


@pytest.fixture
def captured() -> Iterator[Captured]:
    log.setLevel(logging.INFO)
    handler = Captured()
    log.addHandler(handler)
    yield handler
    log.removeHandler(handler)


def shop(**options: Any) -> FastAPI:
    app = FastAPI(**options)

    @app.get("/async")
    async def async_view() -> dict[str, str]:
        log.info("signed_up", extra={"cio_event": True})
        return {}

    @app.get("/sync")
    def sync_view() -> dict[str, str]:  # run on a worker thread
        log.info("signed_up", extra={"cio_event": True})
        return {}

    return app


async def bound_user(request: Request) -> AsyncIterator[None]:
    with cio.bind(user_id=request.headers["x-user"]):
        yield


async def get(app: Any, path: str, user: str) -> int:
    """GET ``path`` from the ASGI ``app`` with an ``X-User`` header; the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"x-user", user.encode())],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


@pytest.mark.parametrize("path", PATHS)
def test_an_async_dependency_with_yield(captured: Captured, path: str) -> None:
    app = shop(dependencies=[Depends(bound_user)])
    assert asyncio.run(get(app, path, "42")) == 200
    assert captured.fields == [{"user_id": "42"}]


@pytest.mark.parametrize("path", PATHS)
def test_an_asgi_middleware(captured: Captured, path: str) -> None:
    app = shop()

    async def with_user(scope: Any, receive: Any, send: Any) -> None:
        with cio.bind(user_id=dict(scope["headers"])[b"x-user"].decode()):
            await app(scope, receive, send)

    assert asyncio.run(get(with_user, path, "42")) == 200
    assert captured.fields == [{"user_id": "42"}]


def sync_bound_user(request: Request) -> Iterator[None]:
    # A plain `def` generator: FastAPI runs its steps on worker threads, each in its own
    # copy of the request's context.
    with cio.bind(user_id=request.headers["x-user"]):
        yield


@pytest.mark.parametrize("path", PATHS)
def test_a_sync_dependency_warns_once_and_requests_succeed(
    captured: Captured,
    path: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_binding, "_warned_other_context", False)  # not yet said here
    app = shop(dependencies=[Depends(sync_bound_user)])
    with caplog.at_level(logging.WARNING, logger="customerio_logging"):
        statuses = [asyncio.run(get(app, path, user)) for user in ("42", "43")]
    assert statuses == [200, 200]
    assert captured.fields == [{}, {}]  # the binding never reached the endpoint
    (warning,) = [r for r in caplog.records if r.name == "customerio_logging"]
    assert "`async def` dependency" in warning.getMessage()
