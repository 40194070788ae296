"""``dead-letter list|export|requeue|purge``: the operations that will not be sent, and why."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Sequence
from typing import TextIO

from .._config import enabled_in_env
from .._storage import DeadLetterRow, Storage
from .._storage.sqlite import DEAD_LETTER_SHARE, MAX_DEAD_LETTERS
from .._wire import shorten
from ._args import Subcommands, add_group
from ._interrupt import StopRequest
from ._output import iso, plural, switched_off
from ._progress import Progress
from ._spool_access import SpoolLocation, add_spool_command, locate, note

__all__ = ["register"]


def register(commands: Subcommands) -> None:
    """Add the ``dead-letter`` group and its commands to ``commands``."""
    letters = add_group(
        commands,
        "dead-letter",
        dest="dead_letter_command",
        help="list, export, requeue or delete the operations the API refused",
        description=(
            "The dead letter keeps, in the spool file, the operations that will not be "
            "sent: the ones the Track API refused, with its reason, and invalid events "
            f"(reason only). It keeps the newest {MAX_DEAD_LETTERS:,}, within "
            f"1/{DEAD_LETTER_SHARE} of max_spool_bytes; older ones are evicted and counted "
            "(see: spool status). With a Redis URL (--redis-url, CUSTOMERIO_REDIS_URL) "
            "these commands work on the fleet's dead letter, in Redis."
        ),
        epilog=(
            "example:\n  python -m customerio_logging dead-letter list --spool-path "
            "/var/lib/app/spool.sqlite3"
        ),
        failure="the spool cannot be used, or the command failed (see its --help)",
    )
    _add_list(letters)
    _add_export(letters)
    _add_requeue(letters)
    _add_purge(letters)


def _add_list(commands: Subcommands) -> None:
    listing = add_spool_command(
        commands,
        "list",
        _dead_letter_list,
        help="show the newest dead letters as a table",
        description=(
            "Show the newest dead letters, oldest of them first: seq (to pick rows for "
            "requeue and purge), when, operation id, event name, reason, field and the "
            "API's message. --spool-path alone suffices: no credentials needed; else the "
            "site id (no API key) finds the workspace's spool."
        ),
        epilog=(
            "examples:\n  python -m customerio_logging dead-letter list --spool-path "
            "/var/lib/app/spool.sqlite3\n"
            "  python -m customerio_logging dead-letter list --reason invalid_identifier "
            "--json"
        ),
        failure="the spool cannot be read (busy, unreadable, Redis unreachable)",
    )
    how_many = listing.add_mutually_exclusive_group()
    how_many.add_argument(
        "--limit",
        type=_count,
        default=50,
        metavar="N",
        help="show the newest N rows (default 50)",
    )
    how_many.add_argument("--all", action="store_true", help="show every row")
    listing.add_argument("--reason", help="only rows with this reason")
    listing.add_argument(
        "--json", action="store_true", help="print JSON lines (the operations included)"
    )


def _add_export(commands: Subcommands) -> None:
    export = add_spool_command(
        commands,
        "export",
        _dead_letter_export,
        help="write the dead letters as JSON lines, operations included",
        description=(
            "Write every dead letter (or those with --reason) as JSON lines, one row a "
            "line, oldest first, with the operation as it would have been sent. The rows "
            "hold event payloads: a --output file is created readable by its owner only. "
            "The count goes to stderr."
        ),
        epilog=(
            "example:\n  python -m customerio_logging dead-letter export --spool-path "
            "/var/lib/app/spool.sqlite3 --output refused.jsonl"
        ),
        failure="the spool cannot be read, or --output cannot be written",
    )
    export.add_argument("--reason", help="only rows with this reason")
    export.add_argument(
        "--output", metavar="FILE", help="write to FILE, mode 0600 (default: stdout)"
    )


def _add_requeue(commands: Subcommands) -> None:
    requeue = add_spool_command(
        commands,
        "requeue",
        _dead_letter_requeue,
        help="move dead letters back into the spool, for the next replay",
        description=(
            "Move dead letters back into the spool, to be sent by the next replay (the "
            "app's, or spool replay). Invalid events have no operation to send: they "
            "cannot be requeued and stay. Rows move in batches, progress on stderr; Ctrl-C "
            "stops between two, and every row is then either moved or where it was."
        ),
        epilog=(
            "examples:\n  python -m customerio_logging dead-letter requeue --reason "
            "http_500 --spool-path /var/lib/app/spool.sqlite3\n"
            "  python -m customerio_logging dead-letter requeue --seq 12 --seq 13"
        ),
        failure="interrupted (Ctrl-C), or the spool cannot be used",
    )
    _add_row_selection(requeue)


def _add_purge(commands: Subcommands) -> None:
    purge = add_spool_command(
        commands,
        "purge",
        _dead_letter_purge,
        help="delete dead letters (needs --yes)",
        description=(
            "Delete the chosen dead letters for good. Without --yes, say how many would "
            "go and delete nothing."
        ),
        epilog=(
            "example:\n  python -m customerio_logging dead-letter purge --reason invalid_name --yes"
        ),
        failure="refused without --yes, or the spool cannot be used",
    )
    _add_row_selection(purge)
    purge.add_argument("--yes", action="store_true", help="really delete them")


def _add_row_selection(parser: argparse.ArgumentParser) -> None:
    rows = parser.add_argument_group("which rows (one is required)")
    which = rows.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--seq",
        type=_count,
        action="append",
        metavar="N",
        help="the row with this seq (see dead-letter list); repeatable",
    )
    which.add_argument("--reason", help="every row with this reason")
    which.add_argument("--all", action="store_true", help="every row")


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 up, got {text!r}")
    return int(text)


# -- list and export ----------------------------------------------------------------------


def _dead_letter_list(args: argparse.Namespace) -> int:
    """Print the newest dead letters as a table, or as JSON lines."""
    where = locate(args)
    if where.missing:
        print(f"no spool at {where}: no dead letters", file=sys.stderr if args.json else sys.stdout)
        return 0
    limit = None if args.all else args.limit
    with where.open() as spool:
        # Read oldest first (the spool's order), keeping the last ``limit``: the newest.
        newest: deque[DeadLetterRow] = deque(maxlen=limit)
        total = 0
        for row in spool.dead_letters(reason=args.reason):
            newest.append(row)
            total += 1
    _note_local_dead_letters(where)
    if args.json:
        for row in newest:
            print(json.dumps(row.as_json(), ensure_ascii=False))
        return 0
    which = f" with reason {args.reason}" if args.reason else ""
    if not newest:
        print(f"no dead letters{which} in {where}")
        return 0
    for line in _table(newest, shutil.get_terminal_size((120, 24)).columns):
        print(line)
    if len(newest) < total:
        print(f"the newest {len(newest)} of {total} dead letters{which} (--all for every one)")
    else:
        print(f"{plural(total, 'dead letter')}{which}")
    return 0


_COLUMNS = ("SEQ", "WHEN", "ID", "NAME", "REASON", "FIELD")
_COLUMN_CAPS = (10, 20, 26, 24, 24, 24)  # the message has what is left of the line


def _table(rows: Sequence[DeadLetterRow], width: int) -> list[str]:
    cells = [
        (str(r.seq), iso(r.at), r.id or "-", r.name or "-", r.reason, r.field or "-") for r in rows
    ]
    widths = [
        min(cap, max(len(title), *(len(row[i]) for row in cells)))
        for i, (title, cap) in enumerate(zip(_COLUMNS, _COLUMN_CAPS, strict=True))
    ]
    message_width = max(20, width - sum(widths) - 2 * len(widths))

    def line(values: Sequence[str], message: str) -> str:
        fitted = [shorten(v, w).ljust(w) for v, w in zip(values, widths, strict=True)]
        return "  ".join([*fitted, shorten(message, message_width)]).rstrip()

    header = line(_COLUMNS, "MESSAGE")
    return [header, *(line(c, r.message) for c, r in zip(cells, rows, strict=True))]


def _note_local_dead_letters(where: SpoolLocation) -> None:
    """With Redis: say that this host's spool file has dead letters of its own."""
    local = where.local_rows()
    if local is not None and local.dead_letters:
        note(
            f"this host's spool file {local.path} holds "
            f"{plural(local.dead_letters, 'dead letter')} too, set aside while Redis was "
            f"down (see: python -m customerio_logging dead-letter list --spool-path "
            f"{local.path})"
        )


def _dead_letter_export(args: argparse.Namespace) -> int:
    """Write the dead letters as JSON lines to stdout or a private file."""
    where = locate(args)
    with contextlib.ExitStack() as stack:
        # Opened (a file checked, Redis reached) before --output is made: a wrong path,
        # or a Redis down, leaves no file.
        spool = None if where.missing else stack.enter_context(where.open())
        return _export(spool, where, args)


def _export(spool: Storage | None, where: SpoolLocation, args: argparse.Namespace) -> int:
    """Write ``spool``'s dead letters (None: no spool there) where ``--output`` says."""
    target = "stdout" if args.output is None else args.output
    try:
        output = sys.stdout if args.output is None else _private_file(args.output)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        print(f"FAILED: cannot write {args.output}: {reason}", file=sys.stderr)
        return 1
    count = 0
    try:
        if spool is None:
            print(f"no spool at {where}: no dead letters", file=sys.stderr)
        else:
            for row in spool.dead_letters(reason=args.reason):
                output.write(json.dumps(row.as_json(), ensure_ascii=False) + "\n")
                count += 1
            output.flush()
    except OSError as exc:  # a full disk: what was written is incomplete
        reason = exc.strerror or type(exc).__name__
        print(f"FAILED: cannot write {target}: {reason}", file=sys.stderr)
        return 1
    finally:
        if output is not sys.stdout:
            with contextlib.suppress(OSError):  # flushed above; a failed write was reported
                output.close()
    print(f"exported {plural(count, 'dead letter')} to {target}", file=sys.stderr)
    _note_local_dead_letters(where)
    return 0


def _private_file(name: str) -> TextIO:
    """``name`` opened for writing, emptied, readable by its owner only (it holds payloads)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file that was already there keeps its mode otherwise
        return os.fdopen(fd, "w", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


# -- requeue and purge --------------------------------------------------------------------


REQUEUE_BATCH = 500
"""Dead letters moved back per transaction: progress is shown, and Ctrl-C stops, between two."""


def _dead_letter_requeue(args: argparse.Namespace) -> int:
    """Move the chosen dead letters back into the spool, for the next replay."""
    where = locate(args)
    if where.missing:
        print(f"no spool at {where}: no dead letters")
        return 0
    with where.open() as spool:
        chosen = _requeueable(spool, args)
        if chosen:
            moved, stopped = _requeue(spool, chosen, args)
        else:  # none, unless one came since they were read: the selection decides
            moved, stopped = spool.requeue(args.seq, reason=args.reason), None
        left = len(_requeueable(spool, args)) if stopped else 0
        # What else still matches stayed: rows without an operation (invalid events).
        stayed = _matching(spool, args) - left
    print(
        f"moved {plural(moved, 'dead letter')} back into the spool at {where}; the next "
        "replay sends them (the app's, or: python -m customerio_logging spool replay)"
    )
    if moved and not enabled_in_env():
        note(f"{switched_off()}: no replay sends them until it is unset or set to 1")
    if stayed:
        print(
            f"{plural(stayed, 'dead letter')} stayed: invalid events have no operation to "
            "send, so they cannot be requeued (dead-letter purge deletes them)"
        )
    if stopped is not None:
        print(f"NOT DONE: {stopped}")
        print(f"{plural(left, 'dead letter')} still to move; run the command again")
        return 1
    return 0


def _requeueable(spool: Storage, args: argparse.Namespace) -> list[int]:
    """The seqs of the chosen rows that hold an operation, oldest first."""
    seqs = None if args.seq is None else set(args.seq)
    return [
        row.seq
        for row in spool.dead_letters(reason=args.reason)
        if (seqs is None or row.seq in seqs) and row.body is not None and row.id is not None
    ]


def _requeue(spool: Storage, chosen: list[int], args: argparse.Namespace) -> tuple[int, str | None]:
    """Move ``chosen`` back a batch at a time, then what matched since (the app may
    dead-letter more meanwhile): how many moved, and what stopped it, if anything.

    Each batch is one transaction: Ctrl-C leaves every row either moved or where it was.
    """
    progress = Progress("requeue", len(chosen), "dead letter")
    moved = 0

    def stop() -> None:
        progress.note("stopping after this batch (Ctrl-C again to stop at once)")

    try:
        with StopRequest(stop) as ctrl_c:
            print(f"requeueing {plural(len(chosen), 'dead letter')}", file=sys.stderr)
            for start in range(0, len(chosen), REQUEUE_BATCH):
                if ctrl_c.requested:
                    return moved, "interrupted (Ctrl-C)"
                batch = chosen[start : start + REQUEUE_BATCH]
                moved += spool.requeue(batch, reason=args.reason)
                progress.update(start + len(batch))
            if ctrl_c.requested:  # during the last batch: the final sweep is not asked for
                return moved, "interrupted (Ctrl-C)"
            moved += spool.requeue(args.seq, reason=args.reason)
    except KeyboardInterrupt:
        return moved, "interrupted (Ctrl-C twice)"
    finally:
        progress.finish()
    return moved, None


def _dead_letter_purge(args: argparse.Namespace) -> int:
    """Delete the chosen dead letters, once ``--yes`` confirms it."""
    where = locate(args)
    if where.missing:
        print(f"no spool at {where}: no dead letters")
        return 0
    with where.open() as spool:
        if not args.yes:
            count = _matching(spool, args)
            print(
                f"refusing without --yes: this would delete {plural(count, 'dead letter')} "
                f"from {where}, for good",
                file=sys.stderr,
            )
            return 1
        deleted = spool.purge_dead_letters(args.seq, reason=args.reason)
    print(f"deleted {plural(deleted, 'dead letter')} from {where}")
    return 0


def _matching(spool: Storage, args: argparse.Namespace) -> int:
    """How many dead letters ``--seq``, ``--reason`` or ``--all`` choose."""
    seqs = None if args.seq is None else set(args.seq)
    return sum(seqs is None or row.seq in seqs for row in spool.dead_letters(reason=args.reason))
