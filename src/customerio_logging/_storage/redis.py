"""The fleet's shared backlog on Redis Streams: operations waiting to be sent and the dead
letter, for every process and host that points at one Redis.

A :class:`~.base.Storage`, like the SQLite spool, for processes that do not share a disk.
This module says what the keys hold and how leases map onto a stream's pending entries;
the scripts that change them are in ``redis_scripts``, the clients in ``redis_connection``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from .._limits import BATCH_BODY_BYTES
from .._redis_client import REDIS_TIMEOUT, eviction_policy, may_evict_backlog, namespace
from .._redis_url import redis_location
from .._wire import BODY_OVERHEAD, Operation, shorten
from . import leases
from .base import (
    DEAD_LETTER_SHARE,
    DEAD_LETTER_TEXT,
    MAX_DEAD_LETTERS,
    DeadLetterRow,
    SpoolStatus,
    SpoolUnavailableError,
)
from .redis_connection import DEFAULT_WAIT, RedisConnection
from .redis_scripts import GROUP, RELEASED, Scripts

if TYPE_CHECKING:
    import redis

__all__ = [
    "HORIZON",
    "LETTER_OVERHEAD",
    "MIN_MEMORY_BOUND",
    "ROW_OVERHEAD",
    "SLACK_SHARE",
    "RedisStorage",
]

HORIZON = 7 * 24 * 3600 * 1000
"""Milliseconds between a lease's end and the delivery time its row is given in the
stream's pending entries: the lease has ended once the row's idle time reaches it.

A constant rather than the longest lease, so that processes whose leases differ (a test
program that shortens them) read every row's lease end alike; any lease up to it works."""
ROW_OVERHEAD = 200
"""Bytes Redis takes for a waiting row besides its body: its stream entry's other fields,
its share of the stream's node, its ``ids`` entry (measured with ``MEMORY USAGE``: 190 to
215 bytes a row for bodies up to 700 bytes, with 26-character ids)."""
SLACK_SHARE = 4
"""And a quarter of the body more: the allocator rounds a stream node up to its next size
class, by up to a quarter (measured: 390 bytes a row beyond 1,000-byte bodies, 950
beyond 3,000, 1,500 beyond 5,000, 3,150 beyond 30,000)."""
LETTER_OVERHEAD = 100
"""Bytes Redis takes for a dead letter besides its body and texts (and their quarter)."""
MIN_MEMORY_BOUND = 1024 * 1024
"""Below this ``max_bytes`` (the unit tests' few hundred bytes), too little for Redis's
own structures, only the bodies and dead letters' bytes are bounded, as in SQLite."""
_LONG_IDLE = 2.0  # FRESH_LEASEs a consumer with nothing pending stays listed
_Entries = list[tuple[bytes, dict[bytes, bytes]]]  # a stream's entries, as redis-py reads them


class RedisStorage:
    """The backlog in Redis: operations waiting to be sent, and the dead letter.

    A :class:`~.base.Storage`, shared by every process and host using the same Redis,
    workspace and API host. Thread-safe; connects on first use, and anew in a forked
    child. Every Redis error raises :class:`~.base.SpoolUnavailableError`, in words that
    never hold the URL's password; nothing already stored is lost by one.

    Keys, under ``namespace(site_id, track_url)`` (one Redis Cluster slot):
    ``ops`` a stream of the waiting rows (fields ``id``, ``action``, ``name``, ``body``,
    ``created``) with the consumer group ``senders``; ``ids`` a hash from an operation's id
    to ``"<entry id> <body bytes>"``; ``reserved`` a hash from an entry id to
    ``"<owner> <lease end>"`` for ``add(lease=True)`` rows no claim has seen yet; ``meta``
    a hash of counters and the workspace; ``dead`` a stream of dead letters, entry
    ``<seq>-0``.

    A claimed row is a pending entry of the group, held by the consumer named by its
    owner's token (``leases.owner_token``), and its lease end is its delivery time plus
    ``HORIZON``: the lease has ended when the entry's idle time reaches ``HORIZON`` (plus
    the caller's clock's lag behind the server's), which is what ``XAUTOCLAIM`` takes.
    A released row is held by the consumer ``released`` with delivery time 0.

    ``max_bytes`` bounds what the backlog takes in Redis, approximately: the bodies and
    dead letters' bytes, a quarter more (``SLACK_SHARE``), and ``ROW_OVERHEAD`` per
    waiting row and ``LETTER_OVERHEAD`` per dead letter (below ``MIN_MEMORY_BOUND``, the
    bytes alone). Not counted: a claimed row's pending entry (about 550 bytes while it
    is claimed: a batch per sender) and a reservation's (about 100 bytes); and a stream
    node (up to 4 KiB) is freed only once all its rows are gone, so rows left here and
    there among deleted ones hold more than their share.

    Needs Redis 6.2 or later. A write that timed out may have landed: the operation's
    id keeps a retry to one row.

    Attributes:
        url_location: Where the Redis is, without the URL's password (for messages).
        namespace: The prefix of the keys.

    Args:
        url: The Redis URL (``redis://``, ``rediss://`` or ``unix://``).
        max_bytes: The bound above; writes evict the oldest waiting operations to stay
            within it. The dead letter has a bound of its own within it (see
            ``DEAD_LETTER_SHARE``).
        site_id: The workspace whose events these are: with ``track_url``, it names the
            keys' namespace. Keys whose meta names another workspace (a namespace
            collision) are refused.
        track_url: The API host the events are for.
        on_problem: Told, in words, when Redis may evict the backlog (its
            ``maxmemory-policy``). Errors are raised, not told.
        clock: Wall-clock seconds for leases and times; None (the default) takes the
            Redis server's time, one clock for the whole fleet. Tests inject one; it must
            not run ahead of the server's by more than ``HORIZON``.
        timeout: Most seconds one Redis exchange may take (connecting, each reply).
    """

    def __init__(
        self,
        url: str,
        *,
        max_bytes: int,
        site_id: str | None = None,
        track_url: str | None = None,
        on_problem: Callable[[str], None] | None = None,
        clock: Callable[[], float] | None = None,
        timeout: float = REDIS_TIMEOUT,
    ) -> None:
        self.url_location = redis_location(url)
        self.max_bytes = max_bytes
        self.dead_letter_max_bytes = max_bytes // DEAD_LETTER_SHARE
        self.namespace = namespace(site_id, track_url)
        self._site_id = site_id
        self._track_url = track_url
        self._clock = clock
        self._keys = [self.namespace + key for key in ("ops", "ids", "reserved", "meta", "dead")]
        self._scripts: Scripts | None = None
        self._policy_checked = False
        self._redis = RedisConnection(
            url, timeout=timeout, opener=self._open, on_problem=on_problem
        )

    def __repr__(self) -> str:
        return f"<RedisStorage {self.url_location} {self.namespace}>"

    # -- writing ----------------------------------------------------------------------

    def add(
        self,
        ops: Sequence[Operation],
        *,
        lease: bool = False,
        wait: float | None = None,
        open_file: bool | None = None,
    ) -> int:
        """Keep ``ops`` until they are sent; an op already here is released to replay
        (see :meth:`~.base.Storage.add`).

        Returns:
            How many operations (the oldest, maybe some of ``ops``) were evicted.
        """
        if not ops:
            return 0
        args: list[Any] = [self._now(), leases.owner_token() if lease else ""]
        args += [_millis(leases.FRESH_LEASE), *self._bound()]
        for op in ops:
            args += [op.id, op.action, "0" if op.name is None else "1", op.name or "", op.body]
        opens = wait is None if open_file is None else open_file
        with self._redis.use(wait=wait, open_file=opens) as client:
            return int(self._run(client, "add", args))

    def claim(self, limit: int, *, max_bytes: int = BATCH_BODY_BYTES) -> list[Operation]:
        """Take up to ``limit`` waiting operations, oldest first, for this process to send
        (see :meth:`~.base.Storage.claim`).

        A claim that meets more than a thousand rows reserved by live processes (their
        ``durability="disk"`` queues) hands those back to their owners and may come
        back short: the next claim goes on past them.
        """
        if limit <= 0:
            return []
        me = leases.owner_token()
        with self._redis.use() as client:
            gone, idle = _consumers(client, self._keys[0], me)
            args: list[Any] = [me, limit, max_bytes, BODY_OVERHEAD, self._now()]
            args += [_millis(leases.REPLAY_LEASE), HORIZON, len(gone), *gone, *idle]
            flat = self._run(client, "claim", args)
        return [
            Operation(
                flat[i].decode(),
                flat[i + 1].decode(),
                None if flat[i + 2] is None else flat[i + 2].decode(),
                flat[i + 3],
            )
            for i in range(0, len(flat), 4)
        ]

    def ack(self, ids: Sequence[str]) -> None:
        """Remove operations that were sent; unknown ids are ignored."""
        if ids:
            with self._redis.use() as client:
                self._run(client, "ack", list(ids))

    def release(self, ids: Sequence[str]) -> None:
        """Give back operations this process claimed; ids it does not hold are ignored."""
        if ids:
            with self._redis.use() as client:
                self._run(client, "release", [leases.owner_token(), *ids])

    def dead_letter(
        self,
        letters: Sequence[DeadLetterRow],
        *,
        wait: float | None = None,
        open_file: bool | None = None,
    ) -> int:
        """Set operations aside for good (``seq`` is ignored); their waiting rows go.

        Texts are cut to ``DEAD_LETTER_TEXT`` characters. The dead letter keeps its newest
        ``MAX_DEAD_LETTERS`` rows within ``dead_letter_max_bytes``; older ones are evicted
        and counted. ``wait`` and ``open_file`` are as for :meth:`add`.

        Returns:
            How many dead letters (the oldest, maybe some of ``letters``) were evicted.
        """
        if not letters:
            return 0
        args: list[Any] = [self.dead_letter_max_bytes, MAX_DEAD_LETTERS]
        for letter in letters:
            pairs = _letter_fields(letter)
            args += [len(pairs) // 2, *pairs]
        opens = wait is None if open_file is None else open_file
        with self._redis.use(wait=wait, open_file=opens) as client:
            return int(self._run(client, "dead_letter", args))

    def requeue(self, seqs: Sequence[int] | None = None, *, reason: str | None = None) -> int:
        """Move dead letters back to wait, to be sent again by replay (see
        :meth:`~.base.Storage.requeue`); no eviction: the next write evicts if need be."""
        with self._redis.use() as client:
            return int(self._run(client, "requeue", [self._now(), *_choice(seqs, reason)]))

    def purge(self) -> int:
        """Delete every waiting operation, claimed or not; returns how many."""
        with self._redis.use() as client:
            return int(self._run(client, "purge", []))

    def purge_dead_letters(
        self, seqs: Sequence[int] | None = None, *, reason: str | None = None
    ) -> int:
        """Delete dead letters (all, or the given rows or reason); returns how many."""
        with self._redis.use() as client:
            return int(self._run(client, "purge_dead_letters", _choice(seqs, reason)))

    # -- reading ----------------------------------------------------------------------

    def status(self) -> SpoolStatus:
        """Counts, bytes and ages of what the backlog holds.

        ``path`` is the Redis's location and the namespace; ``file_bytes`` what Redis
        says the keys take (``MEMORY USAGE``, which samples large keys: approximate).
        """
        with self._redis.use() as client:
            reply = self._run(client, "status", [self._now(), HORIZON])
        pending, leased, used, oldest, newest, dead, dead_bytes, evicted, site, memory = reply
        return SpoolStatus(
            path=f"{self.url_location} {self.namespace}",
            pending=int(pending),
            leased=int(leased),
            bytes=int(used),
            max_bytes=self.max_bytes,
            oldest=None if oldest is None else float(oldest),
            newest=None if newest is None else float(newest),
            dead_letters=int(dead),
            file_bytes=int(memory),
            site_id=None if site is None else site.decode(),
            dead_letter_bytes=int(dead_bytes),
            dead_letter_max_bytes=self.dead_letter_max_bytes,
            dead_letters_evicted=int(evicted),
        )

    def pending(self) -> int:
        """Operations waiting (claimed or not)."""
        with self._redis.use() as client:
            return int(client.xlen(self._keys[0]))

    def dead_letters(
        self, *, reason: str | None = None, limit: int | None = None
    ) -> Iterator[DeadLetterRow]:
        """The dead letter's rows, oldest first, at most ``limit`` (read in pages, so
        an export can stream)."""
        after, left = "-", limit
        while left is None or left > 0:
            with self._redis.use() as client:
                page = cast(_Entries, client.xrange(self._keys[4], after, "+", count=500))
            if not page:
                return
            for entry_id, fields in page:
                row = _letter(entry_id, fields)
                if reason is not None and row.reason != reason:
                    continue
                yield row
                if left is not None:
                    left -= 1
                    if left <= 0:
                        return
            after = "(" + page[-1][0].decode()

    # -- the connection ---------------------------------------------------------------

    def prepare(self, wait: float = DEFAULT_WAIT) -> None:
        """Connect now, if this process has not yet (see :meth:`~.base.Storage.prepare`):
        the stream and its group are made, and the keys checked to be this workspace's."""
        with self._redis.use(wait=wait):
            pass

    @property
    def is_open(self) -> bool:
        """True once this process has used the backlog (a forked child has not)."""
        return self._redis.is_open

    def close(self) -> None:
        """Close this process's clients; a later call connects again."""
        self._redis.close()

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's clients without closing them."""
        self._redis.reset_after_fork()

    # -- inside -----------------------------------------------------------------------

    def _open(self, client: redis.Redis) -> str | None:
        """Ready the keys, refuse another workspace's, and say if Redis may evict them."""
        if self._scripts is None:
            self._scripts = Scripts(client)
        check = self._site_id is not None
        args = ["1" if check else "0", self._site_id or "", self._track_url or ""]
        site, url = self._scripts.open(keys=self._keys, args=args, client=client)
        mine = ((self._site_id or "").encode(), (self._track_url or "").encode())
        if check and (site, url or b"") != mine:
            raise SpoolUnavailableError(
                f"Redis at {self.url_location} keeps another workspace's backlog under "
                f"{self.namespace}: not used"
            )
        if self._policy_checked:
            return None
        self._policy_checked = True
        return _eviction_notice(client, self.url_location)

    def _run(self, client: redis.Redis, name: str, args: list[Any]) -> Any:
        assert self._scripts is not None  # made by _open, before any call gets a client
        return getattr(self._scripts, name)(keys=self._keys, args=args, client=client)

    def _now(self) -> str:
        """The time the scripts go by: the caller's clock, or '' for the server's."""
        return "" if self._clock is None else repr(self._clock())

    def _bound(self) -> list[int]:
        """The bound and its model of what a row takes, as the scripts' ``evict`` reads them."""
        if self.max_bytes < MIN_MEMORY_BOUND:
            return [self.max_bytes, 0, 0, 0]
        return [self.max_bytes, ROW_OVERHEAD, LETTER_OVERHEAD, SLACK_SHARE]


def _consumers(client: redis.Redis, stream: str, me: str) -> tuple[list[str], list[str]]:
    """The group's consumers whose owner is gone, and those long idle with nothing
    pending (they pile up: one per process that ever claimed)."""
    import redis

    try:
        consumers = client.xinfo_consumers(stream, GROUP)
    except redis.ResponseError:
        return [], []  # no group yet: the claim makes it
    long_idle = _LONG_IDLE * _millis(leases.FRESH_LEASE)
    gone: list[str] = []
    idle: list[str] = []
    for consumer in consumers:
        name = consumer["name"].decode(errors="replace")
        if name in (me, RELEASED):
            continue
        if leases.owner_is_gone(name):
            gone.append(name)
        elif not consumer["pending"] and consumer["idle"] > long_idle:
            idle.append(name)
    return gone, idle


def _eviction_notice(client: redis.Redis, location: str) -> str | None:
    """What to tell when Redis may evict keys without a time to live (ours), else None
    (nothing to say either when this user may not read the policy)."""
    policy = eviction_policy(client)
    if policy is None or not may_evict_backlog(policy):
        return None
    return (
        f"Redis at {location} may evict the backlog when it runs out of memory (its "
        f"maxmemory-policy is {policy}): events waiting there could be lost. Set "
        f"maxmemory-policy to noeviction, so that Redis refuses writes instead and the "
        f"events wait in the local spool"
    )


def _millis(seconds: float) -> int:
    return int(seconds * 1000)


def _capped(text: str, limit: int) -> str:
    return text if len(text) <= limit else shorten(text, limit)


def _letter_fields(letter: DeadLetterRow) -> list[str | bytes]:
    """A dead letter as a stream entry's fields and values (None fields left out)."""
    pairs: list[str | bytes] = [
        "reason",
        _capped(letter.reason, DEAD_LETTER_TEXT // 5),
        "message",
        _capped(letter.message, DEAD_LETTER_TEXT),
        "at",
        repr(float(letter.at)),
    ]
    if letter.field is not None:
        pairs += ["field", _capped(letter.field, DEAD_LETTER_TEXT // 5)]
    for name, value in (("id", letter.id), ("action", letter.action), ("name", letter.name)):
        if value is not None:
            pairs += [name, value]
    if letter.body is not None:
        pairs += ["body", letter.body]
    return pairs


def _letter(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetterRow:
    def text(name: bytes) -> str | None:
        value = fields.get(name)
        return None if value is None else value.decode(errors="replace")

    return DeadLetterRow(
        seq=int(entry_id.split(b"-")[0]),
        id=text(b"id"),
        action=text(b"action"),
        name=text(b"name"),
        reason=text(b"reason") or "",
        field=text(b"field"),
        message=text(b"message") or "",
        at=float(fields.get(b"at", b"0")),
        body=fields.get(b"body"),
    )


def _choice(seqs: Sequence[int] | None, reason: str | None) -> list[Any]:
    """Which dead letters a call is about, as the scripts' ``each_letter`` reads it."""
    head = ["0", ""] if reason is None else ["1", reason]
    if seqs is None:
        return [*head, "all"]
    return [*head, "some", *(int(seq) for seq in seqs if int(seq) >= 0)]
