"""A real ``redis-server`` for tests: started on a free port in a folder of its own, with
persistence on, and stopped (or stopped and started again) on demand.

The fleet features (``configure(redis_url=...)``) are tested against this, never a mock:
the pytest plugin's ``redis_server`` fixture gives each test one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .._redis_url import redis_location

__all__ = ["RedisServer", "RedisServerMissingError", "redis_server_binary"]

_START_WAIT = 10.0  # seconds a server may take to answer after it was started
_STOP_WAIT = 10.0
REQUIRE_VAR = "CUSTOMERIO_TEST_REDIS"
"""Set to ``required`` (``.ci/run`` does) to fail, not skip, when no server can be had."""


class RedisServerMissingError(RuntimeError):
    """No ``redis-server`` binary on ``PATH`` (Debian: ``apt-get install redis-server``)."""


def redis_server_binary() -> str | None:
    """The ``redis-server`` on ``PATH`` (or ``/usr/bin``), None if there is none."""
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process of the test's own, on 127.0.0.1.

    Persistence is on (an append-only file, synced every second, in ``directory``), so
    :meth:`restart` brings back what was written before :meth:`stop`. Use it as a
    context manager, or call :meth:`start` and :meth:`stop`.

    Args:
        directory: Where the server keeps its files; a new temporary folder (removed at
            :meth:`stop` for good) when None.
        port: The port; a free one when None. A restart keeps it.
        password: The password clients must give (``--requirepass``); it is in
            :attr:`url`. None: no password.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        password: str | None = None,
    ):
        binary = redis_server_binary()
        if binary is None:
            raise RedisServerMissingError(
                "no redis-server binary on PATH: install it (Debian: apt-get install "
                "redis-server) to run the tests of the Redis backend"
            )
        self._binary = binary
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="cio-redis-"))
        self.port = port or _free_port()
        self._password = password
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {redis_location(self.url)} {state}>"  # never the password

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (``redis://:<password>@...`` with a password):
        what ``configure(redis_url=...)`` takes."""
        auth = "" if self._password is None else f":{self._password}@"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the server process runs."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers (idempotent)."""
        if self.running:
            return self
        log = (self.directory / "redis.log").open("ab")
        auth = [] if self._password is None else ["--requirepass", self._password]
        try:
            self._process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
                [
                    self._binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.directory),
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    "--save", "",
                    "--daemonize", "no",
                    "--protected-mode", "yes",
                    "--maxmemory-policy", "noeviction",
                    *auth,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            log.close()
        end = time.monotonic() + _START_WAIT
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > end:
                output = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{output}")
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (its files stay until :meth:`close`); idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused server handles no SIGTERM
            process.terminate()  # redis-server writes its append-only file on SIGTERM
            try:
                process.wait(_STOP_WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it keeps its connections and its port but answers
        nothing, as a Redis that hangs, until :meth:`resume`."""
        if self._process is not None and self.running:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server answer again (SIGCONT)."""
        if self._process is not None and self.running:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        """Stop, then start on the same port and files: what was written comes back."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its folder, if it made it."""
        self.stop()
        if self._own_directory:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.directory)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
