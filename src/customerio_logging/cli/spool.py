"""``spool status|replay|purge``: what waits in the spool, sent now, or deleted."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

from .._config import Settings
from .._delivery import Delivery, transport_for
from .._fleet_rate import fleet_rate
from .._pacing import Pacer
from .._replay import Replayer
from .._retry import RetryPolicy
from .._storage import SpoolBusyError, SpoolStatus, SpoolUnavailableError, Storage
from .._wire import Response, Transport, status_phrase
from ..exceptions import DeliveryError
from ._args import Subcommands, add_group, positive_seconds
from ._interrupt import StopRequest
from ._output import iso, not_sent_while_off, plural
from ._progress import Progress
from ._spool_access import (
    LocalRows,
    SpoolLocation,
    add_spool_command,
    locate,
    location_of,
    note,
    replay_settings,
)

__all__ = ["register"]


def register(commands: Subcommands) -> None:
    """Add the ``spool`` group and its commands to ``commands``."""
    spool = add_group(
        commands,
        "spool",
        dest="spool_command",
        help="show, replay or empty the spool, where events wait to be sent",
        description=(
            "The spool is the SQLite file where events wait when they cannot be sent now "
            "(the API unreachable, the queue full, the process exiting); the app replays it "
            "by itself. With a Redis URL (--redis-url, CUSTOMERIO_REDIS_URL) it is the "
            "fleet's backlog in Redis, shared by every process and host of the workspace, "
            "and each host's file keeps only what waited while Redis was down. These "
            "commands show it, send what waits, or delete it."
        ),
        epilog=(
            "examples:\n  python -m customerio_logging spool status --spool-path "
            "/var/lib/app/spool.sqlite3\n"
            "  CUSTOMERIO_REDIS_URL=redis://redis.internal:6379/0 CUSTOMERIO_SITE_ID=... "
            "python -m customerio_logging spool status"
        ),
        failure="the spool cannot be used, or the command failed (see its --help)",
    )
    _add_status(spool)
    _add_replay(spool)
    _add_purge(spool)


def _add_status(commands: Subcommands) -> None:
    status = add_spool_command(
        commands,
        "status",
        _spool_status,
        help="what waits in the spool: counts, bytes, ages, dead letters",
        description=(
            "Show the spool file, its workspace, the operations waiting (and how many a "
            "sender holds right now), their size against the bound, the oldest and newest, "
            "and the dead letter's size. --spool-path alone suffices: no credentials needed; "
            "else the site id (no API key) finds the workspace's file. A missing file is "
            "reported, never created. With a Redis URL, the same for the fleet's backlog in "
            "Redis, and a line for what this host's spool file still holds."
        ),
        epilog=(
            "examples:\n  python -m customerio_logging spool status --spool-path "
            "/var/lib/app/spool.sqlite3\n"
            "  CUSTOMERIO_SITE_ID=... CUSTOMERIO_TRACK_API_KEY=... "
            "python -m customerio_logging spool status --json"
        ),
        failure="the spool cannot be read (busy, unreadable, Redis unreachable)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")


def _add_replay(commands: Subcommands) -> None:
    replay = add_spool_command(
        commands,
        "replay",
        _spool_replay,
        help="send everything waiting in the spool now",
        description=(
            "Send what waits in the spool, a batch at a time, with the library's retries "
            "and rate limit, until nothing is left or the API cannot be reached. "
            "Operations the API refuses go to the dead letter (see dead-letter list); that "
            "is reported, not a failure. With a Redis URL, what waits in this host's spool "
            "file moves to Redis first, then the fleet's backlog is sent beside the running "
            "apps: what one of them is sending is not sent twice. Needs the workspace's "
            "credentials; a spool holding another workspace's events is refused, and so is "
            "a replay while CUSTOMERIO_ENABLED=0 switches the library off. Progress goes to "
            "stderr: a line redrawn on a terminal, else a line every tenth or 10 seconds. "
            "Ctrl-C stops after the request in flight, a second Ctrl-C at once."
        ),
        epilog=(
            "example:\n  CUSTOMERIO_SITE_ID=... CUSTOMERIO_TRACK_API_KEY=... "
            "python -m customerio_logging spool replay --timeout 600"
        ),
        failure=(
            "operations could not be sent now (unreachable, credentials refused, "
            "--timeout, Ctrl-C, the library switched off by CUSTOMERIO_ENABLED=0) and wait "
            "for the next run, or the spool cannot be used (Redis unreachable)"
        ),
    )
    replay.add_argument(
        "--batch-size",
        type=_batch_size,
        metavar="N",
        help="operations per request, 1 to 1000 (default: the settings' batch_size, 500)",
    )
    replay.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="longest time for the whole replay, retries included; what is not sent by "
        "then waits for the next run (default: no limit)",
    )


def _add_purge(commands: Subcommands) -> None:
    purge = add_spool_command(
        commands,
        "purge",
        _spool_purge,
        help="delete every operation waiting in the spool (needs --yes)",
        description=(
            "Delete every operation waiting in the spool: no replay sends them (one a "
            "running app is sending at that moment may still arrive). The dead "
            "letter is kept (see dead-letter purge). With a Redis URL, the fleet's backlog "
            "in Redis; this host's spool file is left alone (--spool-path purges it). "
            "Without --yes, say how many would go and delete nothing."
        ),
        epilog=(
            "example:\n  python -m customerio_logging spool purge --spool-path "
            "/var/lib/app/spool.sqlite3 --yes"
        ),
        failure="refused without --yes, or the spool cannot be used",
    )
    purge.add_argument("--yes", action="store_true", help="really delete them")


def _batch_size(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected a batch size from 1 to 1000, got {text!r}")
    return int(text)


# -- status -------------------------------------------------------------------------------


def _spool_status(args: argparse.Namespace) -> int:
    """Print what the spool holds; a missing file is shown as empty and left missing."""
    where = locate(args)
    if where.missing:
        status = SpoolStatus(str(where), 0, 0, 0, where.max_bytes, None, None, 0, 0, None)
        if args.json:
            print(json.dumps({**dataclasses.asdict(status), "backend": "file", "exists": False}))
            return 0
        print(f"no spool at {where}: nothing waits")
        print("waiting:       0 operations")
        print("dead letters:  0")
        return 0
    with where.open() as spool:
        # Shown as the location is: a Redis URL may hold a password.
        status = dataclasses.replace(spool.status(), path=str(where))
    local = where.local_rows()
    if args.json:
        shown = {**dataclasses.asdict(status), "exists": True, **_backend(where, local)}
        print(json.dumps(shown))
        return 0
    _print_status(status)
    if local is not None:
        _print_local_rows(local)
    return 0


def _backend(where: SpoolLocation, local: LocalRows | None) -> dict[str, object]:
    """``status --json``'s fields saying where the spool is."""
    if where.redis_url is None:
        return {"backend": "file"}
    return {
        "backend": "redis",
        "namespace": where.namespace,
        "local_path": None if where.file is None else str(where.file),
        "local_pending": 0 if local is None else local.pending,
        "local_dead_letters": 0 if local is None else local.dead_letters,
    }


def _print_local_rows(local: LocalRows) -> None:
    """What this host's spool file holds beside Redis, kept there while Redis was down."""
    if local.pending:
        print(
            f"this host:     {plural(local.pending, 'operation')} in the spool file "
            f"{local.path} (kept while Redis was down) move to Redis at the next replay"
        )
    if local.dead_letters:
        print(
            f"this host:     {plural(local.dead_letters, 'dead letter')} in the spool file "
            f"{local.path} (see: python -m customerio_logging dead-letter list "
            f"--spool-path {local.path})"
        )


def _print_status(status: SpoolStatus) -> None:
    print(f"spool:         {status.path}")
    print(f"workspace:     {status.site_id or 'none recorded yet'}")
    being_sent = f" ({status.leased} being sent right now)" if status.leased else ""
    bodies = f", {_size(status.bytes)} of JSON" if status.pending else ""
    print(f"waiting:       {plural(status.pending, 'operation')}{bodies}{being_sent}")
    # The bound is on the file's size on disk (its log included): that is what fills up.
    share = 100 * status.file_bytes / status.max_bytes
    print(f"size:          {_size(status.file_bytes)} of {_size(status.max_bytes)} ({share:.0f}%)")
    now = time.time()
    if status.oldest is not None and status.newest is not None:
        print(f"oldest:        {_when(status.oldest, now)}")
        print(f"newest:        {_when(status.newest, now)}")
    see = " (see: python -m customerio_logging dead-letter list)" if status.dead_letters else ""
    print(f"dead letters:  {status.dead_letters}{see}")
    if status.dead_letters or status.dead_letters_evicted:
        evicted = status.dead_letters_evicted
        gone = f"; {plural(evicted, 'older one')} evicted to stay within it" if evicted else ""
        kept, bound = _size(status.dead_letter_bytes), _size(status.dead_letter_max_bytes)
        print(f"               {kept} of {bound}{gone}")


def _when(timestamp: float, now: float) -> str:
    return f"{iso(timestamp)} ({_ago(now - timestamp)})"


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "in the future: is a clock wrong?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h ago"
    if hours:
        return f"{hours} h {minutes} min ago"
    return f"{minutes} min ago" if minutes else f"{secs} s ago"


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


# -- replay -------------------------------------------------------------------------------


class _LastProblem:
    """A transport that remembers what went wrong with the last request, if anything.

    Replay's verdict names it when ``--timeout`` cuts the retries short: the delivery
    then only knows that time ran out, not why nothing got through.
    """

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self.problem: str | None = None

    def send(self, body: bytes) -> Response:
        try:
            response = self._inner.send(body)
        except DeliveryError as exc:
            self.problem = str(exc)
            raise
        failed = response.status >= 300 and response.status != 207
        self.problem = (
            f"HTTP {response.status} {status_phrase(response.status)}" if failed else None
        )
        return response

    def close(self) -> None:
        self._inner.close()


class _Sender:
    """Replay's delivery: the library's retries and rate limit, within ``--timeout``.

    Unlike the bridge's replay, it retries (no fresh events wait behind it), and it gives
    up at once when the credentials are refused.
    """

    def __init__(self, settings: Settings, timeout: float | None) -> None:
        self._timeout = timeout
        # With redis_url, the fleet's limit: a replay beside the running apps shares it.
        shared = fleet_rate(settings, on_problem=note, on_back=note)
        self._pacer = Pacer(settings.max_requests_per_second, shared=shared)
        if timeout is not None:
            self._pacer.set_deadline(time.monotonic() + timeout)
        self._credentials_refused = False
        self._stopped = False
        self._transport = _LastProblem(transport_for(settings))
        self.delivery = Delivery(
            self._transport,
            pacer=self._pacer,
            policy=RetryPolicy.from_settings(settings, pacer=self._pacer),
            on_problem=self._refused,
        )

    def _refused(self, message: str) -> None:
        # The bridge holds its batch until the credentials are fixed, for as long as the
        # app runs; a person at a terminal had better hear it now. Ending the pacer's
        # time makes the delivery give up at once.
        self._credentials_refused = True
        self._pacer.set_deadline(time.monotonic())

    def stop(self) -> None:
        """Ctrl-C: no more requests and no more waiting; the one in flight may end, so
        that what it sends is settled, not sent again by the next replay."""
        self._stopped = True
        self._pacer.set_deadline(time.monotonic())

    def timed_out(self) -> str | None:
        """Why sending stopped, when ``--timeout`` ran out; None when it did not."""
        if self._stopped or self._credentials_refused or not self._pacer.expired():
            return None
        problem = self._transport.problem
        cause = f"; the last attempt: {problem}" if problem else ""
        return f"the --timeout of {self._timeout:g} s ran out{cause}"

    def close(self) -> None:
        self._transport.close()


def _spool_replay(args: argparse.Namespace) -> int:
    """Send what waits, round after round, until nothing is left or a round cannot send."""
    settings = replay_settings(args)
    if not settings.enabled:
        return not_sent_while_off()
    where = location_of(settings)
    if where.missing:
        print(f"no spool at {where}: nothing waits")
        return 0
    local = where.local_rows()
    if args.timeout is not None:
        # One request must not outlast the whole replay.
        timeout = min(settings.request_timeout, args.timeout)
        settings = dataclasses.replace(settings, request_timeout=timeout)
    spool = where.open_to_send()
    sender = _Sender(settings, args.timeout)
    problems: list[Exception] = []
    batch_size = args.batch_size or settings.batch_size
    replayer = Replayer(spool, sender.delivery, batch_size=batch_size, on_problem=problems.append)
    try:
        total = spool.pending()
        if not total:
            print(f"the spool at {where} is empty: nothing waits")
            return 0
        host = urlsplit(settings.track_url).netloc
        print(f"replaying {plural(total, 'operation')} from {where} to {host}", file=sys.stderr)
        if local is not None and local.pending:
            print(
                f"{local.pending} of them wait in this host's spool file {local.path}: "
                "moved to Redis first",
                file=sys.stderr,
            )
        sent, refused, failure = _replay_rounds(replayer, sender, total, problems)
        if failure is not None and not problems:
            failure = sender.timed_out() or failure
        return _replay_verdict(spool, sent, refused, failure)
    finally:
        spool.close()
        sender.close()


_STOPPED = "interrupted (Ctrl-C) after the batch in flight"
_STOPPED_AT_ONCE = (
    "interrupted (Ctrl-C twice) in the middle of a batch: its operations wait again once "
    "this command has ended"
)


def _replay_rounds(
    replayer: Replayer, sender: _Sender, total: int, problems: list[Exception]
) -> tuple[int, Counter[str], str | None]:
    """Rounds until the spool is drained, one cannot send, or Ctrl-C: sent, refusals,
    what stopped them."""
    progress = Progress("replay", total, "operation")
    sent = 0
    refused: Counter[str] = Counter()

    def stop() -> None:
        sender.stop()
        progress.note("stopping after the request in flight (Ctrl-C again to stop at once)")

    try:
        with StopRequest(stop) as ctrl_c:
            while not ctrl_c.requested:
                result = replayer.round()
                sent += len(result.sent)
                refused.update(failure.reason for _, failure in result.refused)
                if result.claimed:
                    note = f"{refused.total()} refused" if refused else ""
                    progress.update(sent + refused.total(), note)
                if problems:  # the spool could not be read or settled: stop, say why
                    return sent, refused, str(problems[-1])
                if ctrl_c.requested:
                    break
                if result.returned:
                    return sent, refused, result.error or "the Track API could not be reached"
                if not result.claimed:
                    return sent, refused, None
            return sent, refused, _STOPPED
    except KeyboardInterrupt:
        return sent, refused, _STOPPED_AT_ONCE
    finally:
        progress.finish()


def _replay_verdict(spool: Storage, sent: int, refused: Counter[str], failure: str | None) -> int:
    print(f"sent:          {sent}")
    if refused:
        reasons = ", ".join(f"{count} {reason}" for reason, count in refused.most_common())
        print(
            f"refused:       {refused.total()} ({reasons}): moved to the dead letter; "
            "see: python -m customerio_logging dead-letter list"
        )
    else:
        print("refused:       0")
    try:
        status = spool.status()
    except (SpoolUnavailableError, SpoolBusyError) as exc:
        print(f"still waiting: unknown ({exc})")
        return 1
    held = f" ({status.leased} claimed by a sender right now)" if status.leased else ""
    print(f"still waiting: {status.pending}{held}")
    if failure is not None:
        print(f"NOT SENT: {failure}")
        print(f"{plural(status.pending, 'operation')} still wait; run again later")
        return 1
    return 0


# -- purge --------------------------------------------------------------------------------


def _spool_purge(args: argparse.Namespace) -> int:
    """Delete every waiting operation, once ``--yes`` confirms it."""
    where = locate(args)
    if where.missing:
        print(f"no spool at {where}: nothing to delete")
        return 0
    with where.open() as spool:
        if not args.yes:
            pending = spool.pending()
            print(
                f"refusing without --yes: this would delete {plural(pending, 'operation')} "
                f"waiting in {where}, unsent",
                file=sys.stderr,
            )
            _note_local_rows_stay(where)
            return 1
        deleted = spool.purge()
    print(f"deleted {plural(deleted, 'waiting operation')} from {where}")
    _note_local_rows_stay(where)
    return 0


def _note_local_rows_stay(where: SpoolLocation) -> None:
    """With Redis: say that what waits in this host's spool file is not purged."""
    local = where.local_rows()
    if local is not None and local.pending:
        note(
            f"{plural(local.pending, 'operation')} in this host's spool file {local.path} "
            "(kept while Redis was down) stay, and move to Redis at the next replay; "
            f"to delete them: python -m customerio_logging spool purge --spool-path "
            f"{local.path}"
        )
