"""``python -m customerio_logging emulator`` run as another process: what it prints at start,
read with a deadline, and how it ends."""

from __future__ import annotations

import contextlib
import queue
import shlex
import signal
import threading
from collections.abc import Iterator

from ..helpers import start_python

LINE_TIMEOUT = 10.0  # seconds to wait for each line the emulator prints


class EmulatorProcess:
    """The emulator command in a subprocess, up to the end of its start-up banner.

    Attributes:
        proc: The process; stdout and stderr piped as text.
        banner: The lines printed at start, up to "Stop it with ...".
        env: The variables of the banner's ``export`` line.
    """

    def __init__(self, *args: object) -> None:
        # --duration: a test that fails half-way leaves no emulator behind for long.
        self.proc = start_python(
            "-m", "customerio_logging", "emulator", "--duration", "120", *args, clean=True
        )
        assert self.proc.stdout is not None
        self._lines: queue.Queue[str | None] = queue.Queue()
        # A thread reads, so that every wait for output can have a deadline.
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout,), name="emulator-output", daemon=True
        )
        self._reader.start()
        self.banner: list[str] = []
        try:
            while not self.banner or not self.banner[-1].startswith("Stop it with"):
                line = self._lines.get(timeout=LINE_TIMEOUT)
                assert line is not None, f"the emulator ended at start: {self._stderr()}"
                self.banner.append(line.rstrip("\n"))
        except BaseException:
            self.close()
            raise
        (export,) = [line for line in self.banner if line.startswith("export ")]
        self.env = dict(word.split("=", 1) for word in shlex.split(export)[1:])

    @property
    def url(self) -> str:
        return self.env["CUSTOMERIO_TRACK_URL"]

    def shown(self, label: str) -> str:
        """What the banner line ``<label>: ...`` says."""
        (line,) = [line for line in self.banner if line.startswith(f"{label}: ")]
        return line.removeprefix(f"{label}: ")

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        """Send ``signum``; the exit code, the rest of stdout and all of stderr."""
        self.proc.send_signal(signum)
        rest = []
        while (line := self._lines.get(timeout=LINE_TIMEOUT)) is not None:
            rest.append(line)
        code = self.proc.wait(timeout=LINE_TIMEOUT)
        return code, "".join(rest), self._stderr()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=LINE_TIMEOUT)
        self._reader.join(timeout=LINE_TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def _read(self, stream: Iterator[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)  # end of output

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()


@contextlib.contextmanager
def emulator_process(*args: object) -> Iterator[EmulatorProcess]:
    """The emulator command with ``args``, started, its banner read; killed at the end if
    it still runs."""
    emulator = EmulatorProcess(*args)
    try:
        yield emulator
    finally:
        emulator.close()
