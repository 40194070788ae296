"""How far a long command has got: a redrawn line on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import re

import pytest

from customerio_logging.cli._progress import (
    REDRAW_INTERVAL,
    Progress,
    duration,
)

from ..helpers import FakeClock
from .conftest import FakeTerminal

STATUS = re.compile(r"\d+/\d+ \(\d+%\)(, .+)?")


def _progress(
    stream: io.StringIO, clock: FakeClock, total: int = 1000, label: str = "copy"
) -> Progress:
    return Progress(label, total, "item", stream=stream, clock=clock)


def _redraws(shown: str) -> list[str]:
    """The lines drawn over one another: what follows each carriage return."""
    return [part for part in shown.split("\r")[1:] if part.strip()]


class TestOnATerminal:
    def test_the_first_update_is_drawn_at_once_with_rate_left_and_eta(self) -> None:
        terminal, clock = FakeTerminal(), FakeClock()
        progress = _progress(terminal, clock)
        clock.advance(2.0)
        progress.update(100)
        assert terminal.getvalue() == (
            "\rcopy [##------------------] 100/1000 (10%), 50/s, 900 left, ETA 18 s"
        )

    def test_it_is_redrawn_at_most_every_redraw_interval(self) -> None:
        terminal, clock = FakeTerminal(), FakeClock()
        progress = _progress(terminal, clock)
        for done in range(1, 101):  # 100 updates in 1 s
            clock.advance(0.01)
            progress.update(done)
        drawn = _redraws(terminal.getvalue())
        assert 1 < len(drawn) <= 1 + 1 / REDRAW_INTERVAL
        assert "\n" not in terminal.getvalue()
        assert all(re.fullmatch(r"copy \[[#-]{20}\] " + STATUS.pattern, line) for line in drawn)

    def test_a_shorter_line_covers_the_longer_one_before_it(self) -> None:
        terminal, clock = FakeTerminal(), FakeClock()
        progress = _progress(terminal, clock)
        progress.update(5, "a note that makes this line long")
        clock.advance(REDRAW_INTERVAL)
        progress.update(6)
        first, second = terminal.getvalue().split("\r")[1:]
        assert len(second) == len(first)
        assert second.rstrip(" ") != second

    def test_a_line_is_cut_to_the_terminals_width(self) -> None:
        # The fake terminal has no width to tell: 80 columns are assumed.
        terminal, clock = FakeTerminal(), FakeClock()
        progress = _progress(terminal, clock, label="x" * 200)
        progress.update(1)
        assert len(terminal.getvalue()) == 1 + 79

    def test_finish_erases_the_line_then_prints_a_summary(self) -> None:
        terminal, clock = FakeTerminal(), FakeClock()
        progress = _progress(terminal, clock)
        progress.update(500)
        drawn = terminal.getvalue()
        clock.advance(4.0)
        progress.finish()
        progress.finish()  # once
        progress.update(600)  # ignored: it is over
        erase = "\r" + " " * (len(drawn) - 1) + "\r"
        assert terminal.getvalue() == drawn + erase + "copy: 500 of 1000 items in 4.0 s (125/s)\n"

    def test_a_note_has_a_line_of_its_own_and_the_progress_line_comes_back(self) -> None:
        terminal, clock = FakeTerminal(), FakeClock()
        progress = _progress(terminal, clock)
        progress.update(10)
        drawn = terminal.getvalue()
        progress.note("stopping")
        line = drawn[1:]
        erase = "\r" + " " * len(line) + "\r"
        assert terminal.getvalue() == drawn + erase + "stopping\n" + "\r" + line


class TestInAPipe:
    @pytest.mark.parametrize(
        ("total", "lines"),
        [
            (50, 0),  # fewer items than a step: the summary alone
            (3_000, 3),  # a line each 1000 items (LINE_STEP)
            (100_000, 10),  # a line each tenth
        ],
    )
    def test_a_line_each_tenth_and_never_one_per_item(self, total: int, lines: int) -> None:
        pipe, clock = io.StringIO(), FakeClock()
        progress = _progress(pipe, clock, total=total)
        for hundredth in range(1, 101):
            clock.advance(0.01)
            progress.update(total * hundredth // 100)
        progress.finish()
        shown = pipe.getvalue()
        assert "\r" not in shown
        *status, summary = shown.splitlines()
        assert len(status) == lines
        assert all(line.startswith("copy: ") for line in status)
        assert all(STATUS.fullmatch(line.removeprefix("copy: ")) for line in status)
        assert summary == f"copy: {total} items in 1.0 s ({total}/s)"

    def test_a_slow_run_gets_a_line_every_line_interval(self) -> None:
        pipe, clock = io.StringIO(), FakeClock()
        progress = _progress(pipe, clock, total=1_000_000)
        for done in range(1, 11):  # 10 items, one every 3 s: LINE_INTERVAL is 10 s
            clock.advance(3.0)
            progress.update(done)
        assert pipe.getvalue().splitlines() == [
            "copy: 4/1000000 (0%), 0.3/s, 999996 left, ETA 34 d 17 h",
            "copy: 8/1000000 (0%), 0.3/s, 999992 left, ETA 34 d 17 h",
        ]

    def test_the_line_says_what_is_done_left_and_how_fast(self) -> None:
        pipe, clock = io.StringIO(), FakeClock()
        progress = _progress(pipe, clock, total=2000)
        clock.advance(20.0)
        progress.update(1000, "3 refused")
        assert pipe.getvalue() == "copy: 1000/2000 (50%), 3 refused, 50/s, 1000 left, ETA 20 s\n"

    def test_more_done_than_the_total_never_shows_past_100_percent(self) -> None:
        # Another process added to the work meanwhile: the summary has the real count.
        pipe, clock = io.StringIO(), FakeClock()
        progress = _progress(pipe, clock, total=1000)
        clock.advance(1.0)
        progress.update(1200)
        progress.finish()
        assert pipe.getvalue().splitlines() == [
            "copy: 1000/1000 (100%), 1200/s, 0 left",
            "copy: 1200 items in 1.0 s (1200/s)",
        ]

    def test_a_note_is_a_line_and_the_summary_keeps_the_last_note(self) -> None:
        pipe, clock = io.StringIO(), FakeClock()
        progress = _progress(pipe, clock, total=10)
        progress.update(3, "1 refused")
        progress.note("stopping")
        clock.advance(0.5)
        progress.finish()
        assert pipe.getvalue() == ("stopping\ncopy: 3 of 10 items in 0.5 s (6.0/s), 1 refused\n")


class _ReaderGone(io.StringIO):
    """stderr as a pipe whose reader quit (``replay 2>&1 | head -1``), or a terminal closed."""

    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self._terminal = terminal

    def isatty(self) -> bool:
        return self._terminal

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


class TestABrokenStream:
    @pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
    def test_it_is_given_up_and_never_raises(self, terminal: bool) -> None:
        progress = _progress(_ReaderGone(terminal), FakeClock())
        for done in range(0, 1001, 100):
            progress.update(done)
        progress.note("stopping")
        progress.finish()


class TestDuration:
    @pytest.mark.parametrize(
        ("seconds", "shown"),
        [
            (0.0, "<0.1 s"),
            (0.04, "<0.1 s"),
            (0.4, "0.4 s"),
            (9.94, "9.9 s"),
            (42.0, "42 s"),
            (185.0, "3 min 05 s"),
            (7620.0, "2 h 07 min"),
            (3 * 86400 + 7 * 3600 + 1800, "3 d 07 h"),
        ],
    )
    def test_as_a_person_reads_it(self, seconds: float, shown: str) -> None:
        assert duration(seconds) == shown
