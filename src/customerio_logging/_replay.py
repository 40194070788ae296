"""Replay: what waits in the spool is claimed a batch at a time, sent, and settled."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ._delivery import Delivery, DeliveryReport, Failure
from ._storage import DeadLetterRow, SpoolBusyError, SpoolUnavailableError, Storage
from ._wire import Operation

__all__ = ["ReplayRound", "Replayer", "dead_letter_rows"]

MIN_BACKOFF = 5.0
"""Seconds before replay tries again after a round that could not send."""
MAX_BACKOFF = 300.0
"""The longest pause between two replay rounds that could not send."""
POLL_INTERVAL = 30.0
"""Seconds between looks at an empty spool (another process may spool meanwhile)."""


@dataclass(slots=True)
class ReplayRound:
    """What one round did.

    Attributes:
        claimed: Operations taken from the spool.
        sent: Of those, the ones the API accepted (removed from the spool).
        refused: The ones it refused for good (moved to the dead letter).
        returned: The ones given back to wait (the API could not be reached, or the
            shutdown deadline came).
        report: The delivery's report, when something was sent.
        error: What went wrong, in words.
    """

    claimed: int = 0
    sent: list[Operation] = field(default_factory=list)
    refused: list[tuple[Operation, Failure]] = field(default_factory=list)
    returned: int = 0
    report: DeliveryReport | None = None
    error: str | None = None


def dead_letter_rows(
    failed: list[tuple[Operation, Failure]], at: float | None = None
) -> list[DeadLetterRow]:
    """Dead-letter rows for refused operations, their bodies kept for a requeue."""
    when = time.time() if at is None else at
    return [
        DeadLetterRow(0, op.id, op.action, op.name, f.reason, f.field, f.message, when, op.body)
        for op, f in failed
    ]


class Replayer:
    """Sends the spool's operations, one claimed batch per :meth:`round`.

    Rounds that cannot send back off (``MIN_BACKOFF`` doubling to ``MAX_BACKOFF``); a
    round that sent asks for the next at once; an empty spool is looked at again every
    ``POLL_INTERVAL`` seconds.

    Args:
        spool: Where the operations wait.
        delivery: Sends a batch; its pacer is the bridge's, so replay shares the rate
            limit and the shutdown deadline. Give it no retry policy: a failed round is
            retried by the backoff, which lets fresh events through meanwhile.
        batch_size: Most operations per round.
        on_problem: Told of the error when the spool cannot be used.
    """

    def __init__(
        self,
        spool: Storage,
        delivery: Delivery,
        *,
        batch_size: int,
        on_problem: Callable[[Exception], None] | None = None,
    ) -> None:
        self.spool = spool
        self.delivery = delivery
        self._batch_size = batch_size
        self._on_problem = on_problem
        self._backoff = 0.0

    def round(self) -> ReplayRound:
        """Claim one batch, send it, and settle each operation in the spool."""
        result = ReplayRound()
        try:
            ops = self.spool.claim(self._batch_size)
        except (SpoolUnavailableError, SpoolBusyError) as exc:
            result.error = str(exc)
            if self._on_problem is not None:
                self._on_problem(exc)
            return result
        result.claimed = len(ops)
        if not ops:
            return result
        report = self.delivery.deliver(ops)
        result.report = report
        result.sent = report.sent
        result.refused = [(op, f) for op, f in report.failed if f.permanent]
        back = [op.id for op, f in report.failed if not f.permanent]
        back += [op.id for op in report.dropped]
        result.returned = len(back)
        result.error = report.error
        # Each step on its own: one failing must not keep the others' rows leased. A
        # sent row left behind is sent again when its lease ends, and the API drops the
        # duplicate by id; nothing is lost.
        steps: list[Callable[[], object]] = [
            lambda: self.spool.ack([op.id for op in report.sent]),
            lambda: self.spool.dead_letter(dead_letter_rows(result.refused)),
            lambda: self.spool.release(back),
        ]
        for step in steps:
            try:
                step()
            except (SpoolUnavailableError, SpoolBusyError) as exc:
                result.error = str(exc)
                if self._on_problem is not None:
                    self._on_problem(exc)
        return result

    def next_delay(self, result: ReplayRound) -> float:
        """Seconds until the next round, given how this one went."""
        if result.returned or (result.error and not result.claimed):
            self._backoff = min(MAX_BACKOFF, max(MIN_BACKOFF, self._backoff * 2))
            return self._backoff
        self._backoff = 0.0
        return 0.0 if result.claimed else POLL_INTERVAL

    def retry_soon(self) -> None:
        """Forget the backoff: the API answered again (fresh events went through)."""
        self._backoff = 0.0
