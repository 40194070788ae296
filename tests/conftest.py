"""Shared fixtures: a Track API emulator per test, a clean process-wide bridge, and a
self-signed certificate for the TLS tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from customerio_logging import _app_api, _global, _values
from customerio_logging.testing import TrackAPIEmulator

from .helpers import open_session


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for var in (
        "CUSTOMERIO_SITE_ID",
        "CUSTOMERIO_TRACK_API_KEY",
        "CUSTOMERIO_REGION",
        "CUSTOMERIO_TRACK_URL",
        "CUSTOMERIO_SPOOL_PATH",
        "CUSTOMERIO_APP_API_KEY",
        "CUSTOMERIO_APP_URL",
        "CUSTOMERIO_ENABLED",
        "CUSTOMERIO_REDIS_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    # The default spool lives in the user's state directory: keep each test's apart,
    # in its own temporary folder (subprocesses inherit it).
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    yield
    old = _global.forget_bridge()
    if old is not None:
        old.shutdown(1.0)
    _app_api.reset()


@pytest.fixture
def emulator(track_api_emulator: TrackAPIEmulator) -> TrackAPIEmulator:
    """The pytest plugin's emulator (``track_api_emulator``), under the tests' short name."""
    return track_api_emulator


@pytest.fixture
def session(emulator: TrackAPIEmulator) -> Iterator[requests.Session]:
    """A requests session with the emulator's credentials."""
    with open_session(emulator) as s:
        yield s


@pytest.fixture
def settings(emulator: TrackAPIEmulator) -> dict[str, object]:
    """Keyword arguments for configure() that point at the emulator."""
    return {
        "site_id": emulator.site_id,
        "api_key": emulator.api_key,
        "track_url": emulator.url,
        "flush_interval": 0.05,
    }


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    names = "subjectAltName=IP:127.0.0.1"
    subprocess.run(
        [openssl, *request.split(), "-addext", names, "-keyout", key, "-out", cert],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose server accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


@pytest.fixture
def hanging_api(hanging_port: int) -> str:
    """A Track API URL whose server accepts connections and never answers."""
    return f"http://127.0.0.1:{hanging_port}"


@pytest.fixture
def hanging_redis(hanging_port: int) -> str:
    """A Redis URL whose server accepts connections and never answers."""
    return f"redis://127.0.0.1:{hanging_port}/0"


@pytest.fixture(params=["orjson", "stdlib"])
def json_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with each JSON encoder: orjson's (when installed) and the standard
    library's, the path taken without orjson."""
    if request.param == "stdlib":
        monkeypatch.setattr(_values, "fast_dumps", None)
    elif _values.fast_dumps is None:
        pytest.skip("orjson is not installed")
    return str(request.param)
