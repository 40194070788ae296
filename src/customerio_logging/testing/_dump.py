"""The emulator's dump file: each accepted operation appended as one JSON line, flushed as
it is written, so another process can read it while the emulator runs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Final, TextIO

__all__ = ["Dump"]


class Dump:
    """A JSON-lines file of accepted operations, one record per line.

    ``open()`` truncates the file the first time and appends after that, so an emulator
    restarted with ``start()`` keeps what it wrote before, as it keeps its ``operations``.
    A file it creates, or a regular file it finds, gets mode 0600: the lines hold event
    data. A write that fails (a full disk) ends the dump: the error is kept in ``error``,
    the file is known to be incomplete, and the emulator goes on answering.

    Not thread-safe: the emulator writes under its own lock, which also keeps the lines in
    the order of ``TrackAPIEmulator.operations``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: Final = Path(path)
        self.error: OSError | None = None
        self.lines = 0
        self._file: TextIO | None = None
        self._opened = False

    def open(self) -> None:
        """Open the file for writing: truncated the first time, appended to afterwards.

        Raises:
            OSError: If the file cannot be opened (its ``filename`` is the path).
        """
        mode = os.O_APPEND if self._opened else os.O_TRUNC
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | mode, 0o600)
        try:
            # Only a regular file: a FIFO or /dev/stdout keeps its mode (a device's belongs
            # to the system, and root could change it).
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fchmod(fd, 0o600)  # a file that was already there keeps its mode otherwise
            self._file = os.fdopen(fd, "w", encoding="utf-8")
        except BaseException:
            os.close(fd)
            raise
        self._opened = True

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and flush it; nothing once closed or failed."""
        if self._file is None:
            return
        # ASCII (ensure_ascii): a lone surrogate a client sent cannot fail the encoding.
        line = json.dumps(record, separators=(",", ":")) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            self.error = exc
            self.close()
            return
        self.lines += 1

    def close(self) -> None:
        """Flush and close the file; safe to call more than once."""
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()
        except OSError as exc:
            # The first error is the one that says why the dump ended.
            self.error = self.error or exc
