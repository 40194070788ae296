"""One process's use of the Redis that keeps the backlog: one call at a time per storage
object, every wait bounded, opened on first use and anew in a forked child, and each
Redis error turned into the spool's error, in words without the URL's password.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .._redis_client import describe_error, is_redis_error, make_client
from .base import SpoolBusyError, SpoolUnavailableError

if TYPE_CHECKING:
    import redis

__all__ = ["DEFAULT_WAIT", "RedisConnection"]

DEFAULT_WAIT = 5.0
"""Seconds a call without a ``wait`` may wait for this object's lock (another thread's call)."""
_SHORTEST_TIMEOUT = 0.005  # a socket timeout of 0 would make the socket non-blocking
_MOST_CLIENTS = 4  # clients kept, one per socket timeout asked for (two, in practice)

# Clients dropped in a forked child, kept from the garbage collector: closing one there
# takes its pool's fork lock, which a parent thread may have held at the fork.
_abandoned: list[redis.Redis] = []


class RedisConnection:
    """The clients of one storage object, for every thread of this process.

    Args:
        url: The Redis URL (it may hold a password: it is never shown, see
            ``redis_location``).
        timeout: Most seconds for one Redis exchange (connecting, then each reply).
        opener: Run once the first call has a client (and again after :meth:`close` or a
            fork): readies the keys, checks they are this workspace's; returns a notice
            for ``on_problem``, or None. Raises :class:`SpoolUnavailableError` to refuse.
        on_problem: Told an opener's notice, outside the lock.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        opener: Callable[[redis.Redis], str | None],
        on_problem: Callable[[str], None] | None,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._opener = opener
        self._on_problem = on_problem
        self._lock = threading.Lock()
        self._holder: int | None = None  # the thread inside a call
        self._pid = os.getpid()
        self._clients: dict[float, redis.Redis] = {}
        self._open = False
        self._failing = False  # an episode of errors runs until the next success

    @property
    def is_open(self) -> bool:
        """True once this process has used the storage (a forked child has not)."""
        return self._open and self._pid == os.getpid()

    @contextlib.contextmanager
    def use(self, *, wait: float | None = None, open_file: bool = True) -> Iterator[redis.Redis]:
        """A client for one call, this object's lock held for the whole of it.

        Args:
            wait: Most seconds for the lock, and then for each Redis exchange (so the
                call takes at most about twice ``wait``); None: ``DEFAULT_WAIT`` for the
                lock and the object's ``timeout`` for Redis.
            open_file: Open the storage if this process has not yet; when False the
                call raises :class:`SpoolBusyError` instead.

        Raises:
            SpoolUnavailableError: Redis failed (``first`` set for the first error since
                the last success).
            SpoolBusyError: The lock stayed held for the wait, or this thread holds it.
        """
        notices: list[str] = []  # the opener's, if this call opens the storage
        try:
            with self._held(DEFAULT_WAIT if wait is None else max(0.0, wait)):
                if not self._open and not open_file:
                    raise SpoolBusyError("the Redis backlog is not open yet")
                timeout = self._timeout if wait is None else min(self._timeout, wait)
                client = self._client(max(_SHORTEST_TIMEOUT, timeout))
                try:
                    if not self._open:
                        notices += filter(None, [self._opener(client)])
                        self._open = True
                    yield client
                except SpoolUnavailableError as exc:
                    raise self._failed(str(exc)) from None
                except Exception as exc:
                    if not is_redis_error(exc):
                        raise
                    raise self._failed(describe_error(self._url, exc)) from None
                self._failing = False
        finally:
            # Told outside the lock (it is the app's code), and even if the call failed
            # after the opening: the opening is not done again to tell it.
            if notices and self._on_problem is not None:
                with contextlib.suppress(Exception):  # a notice must not undo a sound call
                    self._on_problem(notices[0])

    @contextlib.contextmanager
    def _held(self, wait: float) -> Iterator[None]:
        """This object's lock, held by this thread (waited for up to ``wait`` seconds)."""
        if self._pid != os.getpid():
            self.reset_after_fork()
        if self._holder == threading.get_ident():
            # A signal handler on this thread, run in the middle of a call.
            raise SpoolBusyError("the Redis backlog is in use by this very thread")
        if not self._lock.acquire(timeout=wait):
            raise SpoolBusyError(f"the Redis backlog stayed busy for {wait:g} s")
        try:
            self._holder = threading.get_ident()
            yield
        finally:
            self._holder = None
            self._lock.release()

    def close(self) -> None:
        """Close the clients; a later call opens the storage again. Never raises."""
        self.reset_after_fork()
        if self._holder == threading.get_ident() or not self._lock.acquire(timeout=DEFAULT_WAIT):
            return  # a signal handler inside a call, or a call that hangs: leave it be
        try:
            clients, self._clients = self._clients, {}
            self._open = False
        finally:
            self._lock.release()
        for client in clients.values():
            with contextlib.suppress(Exception):
                client.close()

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's clients without closing them (their
        sockets are the parent's), and its lock, which a parent thread may have held."""
        if self._pid == os.getpid():
            return
        _abandoned.extend(self._clients.values())
        self._clients = {}
        self._lock = threading.Lock()
        self._holder = None
        self._open = False
        self._failing = False  # a new process: its first error is its own to warn about
        self._pid = os.getpid()

    def _client(self, timeout: float) -> redis.Redis:
        client = self._clients.get(timeout)
        if client is None:
            if len(self._clients) >= _MOST_CLIENTS:
                # Not the ordinary one: the others serve callers' own waits.
                other = next(t for t in self._clients if t != self._timeout)
                with contextlib.suppress(Exception):
                    self._clients.pop(other).close()
            client = self._clients[timeout] = make_client(self._url, timeout=timeout)
        return client

    def _failed(self, message: str) -> SpoolUnavailableError:
        first, self._failing = not self._failing, True
        return SpoolUnavailableError(message, first=first)
