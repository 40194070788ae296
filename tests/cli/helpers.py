"""Helpers the command-line tests share: credentials for the emulator, spool files filled
and read back."""

from __future__ import annotations

import json
import time
from pathlib import Path

from customerio_logging._storage import DeadLetterRow
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._wire import Operation, new_ulid
from customerio_logging.testing import TrackAPIEmulator

WRONG_KEY = "wrong-key-5f3a9c"
BIG = 100_000_000  # a spool bound that never evicts


def credentials(emulator: TrackAPIEmulator, *, api_key: str | None = None) -> list[str]:
    return [
        "--site-id",
        emulator.site_id,
        "--api-key",
        api_key or emulator.api_key,
        "--track-url",
        emulator.url,
    ]


def make_operation(name: str = "replayed") -> Operation:
    """A valid batch operation, as the bridge spools it."""
    op_id = new_ulid(time.time())
    body = {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "event",
        "name": name,
        "id": op_id,
        "timestamp": 1700000000,
    }
    return Operation(op_id, "event", name, json.dumps(body, separators=(",", ":")).encode())


def make_letter(
    op: Operation | None, reason: str = "http_400", *, at: float = 1_700_000_000.0
) -> DeadLetterRow:
    """A dead-letter row for ``op``; None makes an invalid event's (no operation)."""
    if op is None:
        return DeadLetterRow(
            0, None, "event", "bad", reason, "name", "name must be a string", at, None
        )
    return DeadLetterRow(
        0, op.id, op.action, op.name, reason, "attributes.plan", "refused by the test", at, op.body
    )


def fill_spool(
    path: Path,
    ops: list[Operation] | None = None,
    letters: list[DeadLetterRow] | None = None,
    *,
    site_id: str | None = None,
    track_url: str | None = None,
) -> None:
    spool = SQLiteSpool(path, max_bytes=BIG, site_id=site_id, track_url=track_url)
    try:
        spool.add(ops or [])
        spool.dead_letter(letters or [])
    finally:
        spool.close()


def read_spool(path: Path) -> tuple[int, list[DeadLetterRow]]:
    """What waits, and the dead letter, read as any workspace."""
    spool = SQLiteSpool(path, max_bytes=BIG)
    try:
        return spool.pending(), list(spool.dead_letters())
    finally:
        spool.close()


def replay_args(emulator: TrackAPIEmulator, path: Path, *extra: str) -> list[str]:
    return ["spool", "replay", "--spool-path", str(path), *credentials(emulator), *extra]
