"""How far a long command has got, on stderr: one line redrawn on a terminal, else plain lines."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from ._output import plural

__all__ = ["LINE_INTERVAL", "LINE_STEP", "REDRAW_INTERVAL", "Progress", "duration"]

REDRAW_INTERVAL = 0.2
"""Seconds between two redraws on a terminal: five a second at most looks live enough."""
LINE_INTERVAL = 10.0
"""Seconds after which a plain line is due, whatever the count: a slow run shows life."""
LINE_STEP = 1000
"""Fewest items between two plain lines (a tenth of the total, when that is more)."""
_BAR_WIDTH = 20
_COLUMNS = 80  # a terminal that does not say its width (a fresh pseudo-terminal says 0)


class Progress:
    """Shows how far a command has got: items done of the total, the rate, what is left
    and the time it should take.

    On a terminal (``stream.isatty()``) one line is redrawn in place with ``\\r``, at
    most every :data:`REDRAW_INTERVAL` seconds, cut to the terminal's width, and erased
    by :meth:`finish`. Anywhere else (a pipe, a file, a CI log) a plain line is printed
    each tenth of the total (:data:`LINE_STEP` items apart at least) or every
    :data:`LINE_INTERVAL` seconds, whichever comes first, never with a carriage return.
    :meth:`finish` ends both with one summary line. Thread-safe: a stop notice may come
    from another thread. A stream that fails (a closed pipe) is given up, never raised
    from: the command's work matters more than its progress.

    Args:
        label: What the command does, first on every line: ``"replay"``.
        total: How many items there are to do.
        noun: What an item is, singular: ``"operation"``.
        stream: Where it goes; stderr by default, so that stdout keeps the command's result.
        clock: Monotonic seconds; tests inject one.
    """

    def __init__(
        self,
        label: str,
        total: int,
        noun: str,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._label = label
        self._total = max(0, total)
        self._noun = noun
        self._stream = sys.stderr if stream is None else stream
        self._clock = clock
        self._terminal = _is_terminal(self._stream)
        self._step = max(LINE_STEP, math.ceil(self._total / 10))
        self._lock = threading.Lock()
        self._started = self._last_shown = clock()
        self._done = self._done_shown = 0
        self._note = ""
        self._on_screen = ""  # the terminal's line as last drawn
        self._finished = False
        self._broken = False  # the stream failed: nothing more is written

    def update(self, done: int, note: str = "") -> None:
        """``done`` items are done (``note`` adds to the line: ``"3 refused"``); shown
        now if a line is due."""
        with self._lock:
            if self._finished:
                return
            self._done, self._note = done, note
            now = self._clock()
            if self._terminal:
                if not self._on_screen or now - self._last_shown >= REDRAW_INTERVAL:
                    self._draw(f"{self._label} {self._bar()} {self._status(now)}")
                    self._last_shown = now
            elif (
                done // self._step > self._done_shown // self._step
                or now - self._last_shown >= LINE_INTERVAL
            ):
                self._print(f"{self._label}: {self._status(now)}")
                self._last_shown, self._done_shown = now, done

    def note(self, message: str) -> None:
        """Print ``message`` on a line of its own; on a terminal the progress line is
        drawn again below it."""
        with self._lock:
            shown = self._on_screen
            self._erase()
            self._print(message)
            if shown:
                self._draw(shown)

    def finish(self) -> None:
        """Erase the terminal's line, then print the summary: what was done, in how long,
        how fast. Once; later updates are ignored."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            self._erase()
            self._print(f"{self._label}: {self._summary(self._clock())}")

    # -- the text ---------------------------------------------------------------------

    def _shown_done(self) -> int:
        # Another process may add to the work meanwhile: never past 100%.
        return min(self._done, self._total)

    def _bar(self) -> str:
        filled = _BAR_WIDTH * self._shown_done() // max(1, self._total)
        return "[" + "#" * filled + "-" * (_BAR_WIDTH - filled) + "]"

    def _status(self, now: float) -> str:
        done = self._shown_done()
        percent = 100 * done // self._total if self._total else 100
        parts = [f"{done}/{self._total} ({percent}%)"]
        if self._note:
            parts.append(self._note)
        left = self._total - done
        rate = _rate(self._done, now - self._started)
        if rate is not None:
            parts.append(_per_second(rate))
        parts.append(f"{left} left")
        if rate is not None and left:
            parts.append(f"ETA {duration(left / rate)}")
        return ", ".join(parts)

    def _summary(self, now: float) -> str:
        elapsed = now - self._started
        done = self._done
        if done >= self._total:
            what = plural(done, self._noun)
        else:
            what = f"{done} of {plural(self._total, self._noun)}"
        rate = _rate(done, elapsed)
        speed = f" ({_per_second(rate)})" if rate is not None else ""
        note = f", {self._note}" if self._note else ""
        return f"{what} in {duration(elapsed)}{speed}{note}"

    # -- the stream -------------------------------------------------------------------

    def _draw(self, line: str) -> None:
        line = line[: _columns(self._stream) - 1]
        # Spaces over what is left of a longer line drawn before.
        padding = " " * max(0, len(self._on_screen) - len(line))
        self._write(f"\r{line}{padding}")
        self._on_screen = line

    def _erase(self) -> None:
        if self._on_screen:
            self._write("\r" + " " * len(self._on_screen) + "\r")
            self._on_screen = ""

    def _print(self, line: str) -> None:
        self._write(line + "\n")

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            # stderr gone (a pipe whose reader quit, a closed file): the work goes on,
            # unseen, rather than stop half done over a progress line.
            self._broken = True


def duration(seconds: float) -> str:
    """Seconds for a person: ``"<0.1 s"``, ``"4.2 s"``, ``"3 min 05 s"``, ``"2 d 07 h"``."""
    if seconds < 0.05:
        return "<0.1 s"  # not "0.0 s", which reads as nothing at all
    if seconds < 10:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours:02d} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _rate(done: int, elapsed: float) -> float | None:
    """Items a second so far; None before there is anything to tell."""
    return done / elapsed if done > 0 and elapsed > 0 else None


def _per_second(rate: float) -> str:
    return f"{rate:.0f}/s" if rate >= 10 else f"{rate:.1f}/s"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty(), or closed
        return False


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a file, or not a terminal's
        return _COLUMNS
    return columns or _COLUMNS
