"""Request deadlines: one thread shuts down the sockets of requests that outlive theirs.

A socket timeout bounds each read and write, not the request: a server that trickles its
answer a byte at a time keeps every read under the timeout and holds the request for as
long as it likes. So each request also gets a deadline, and one thread, the watchdog,
shuts down the sockets of a request still running at its deadline. ``shutdown()`` wakes
a read or write blocked on the socket (``close()`` would not): the request fails at once,
and its connection, broken, is never pooled again.

The requesting thread names the sockets with :func:`watch_socket` (the HTTP adapter's
connections do it as they connect and send). The thread starts with the first request,
never at import; it sleeps on a condition until the next deadline, without a timeout once
no request runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Iterator

__all__ = ["THREAD_NAME", "RequestDeadlines", "Watch", "watch_socket"]

THREAD_NAME = "customerio-deadline"


class Watch:
    """One request under a deadline; see :meth:`RequestDeadlines.request`.

    Attributes:
        deadline: When the request must be over (monotonic seconds).
        limit: The seconds the request was given when it started.
        cut: True when the deadline is the one :meth:`RequestDeadlines.cut` set (shutdown's),
            which came before the request's own.
        expired: True once the deadline came while the request ran: its sockets were shut
            down, and whatever it read is incomplete.
    """

    __slots__ = ("_copies", "_dog", "_group", "_sockets", "cut", "deadline", "expired", "limit")

    def __init__(
        self, dog: _Watchdog, group: RequestDeadlines, deadline: float, limit: float, cut: bool
    ) -> None:
        self._dog = dog
        self._group = group
        self.deadline = deadline
        self.limit = limit
        self.cut = cut
        self.expired = False
        self._sockets: list[socket.socket] = []  # the connection's own
        self._copies: list[socket.socket] = []  # duplicates, ours to close

    def __repr__(self) -> str:
        state = "expired" if self.expired else "running"
        return f"<Watch {state} limit={self.limit:g}s>"


class RequestDeadlines:
    """The deadlines of one transport's requests.

    Each request ends ``seconds`` after it starts, or by the deadline :meth:`cut` set,
    whichever comes first.

    Args:
        seconds: The longest one request may take, connecting and reading included.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._cut = math.inf  # guarded by the watchdog's lock

    @contextlib.contextmanager
    def request(self) -> Iterator[Watch]:
        """Run one request under its deadline, on this thread; yields its :class:`Watch`.

        Sockets named with :func:`watch_socket` on this thread meanwhile are shut down
        should the deadline come first.
        """
        dog = _watchdog()
        watch = dog.start(self)
        outer = getattr(_current, "watch", None)
        _current.watch = watch
        try:
            yield watch
        finally:
            _current.watch = outer
            dog.finish(watch)

    def cut(self, deadline: float) -> None:
        """From now on no request outlives ``deadline`` (monotonic seconds), not even one
        already running."""
        _watchdog().cut(self, deadline)


def watch_socket(sock: object, *, copy: bool = False) -> None:
    """Put ``sock`` under the deadline of the request running on this thread, if any.

    Args:
        sock: A socket, or an object wrapping one as ``.socket`` (TLS in TLS).
        copy: Watch a duplicate: for a socket about to be wrapped for TLS, which moves it
            into a new object and detaches this one before the handshake.
    """
    watch: Watch | None = getattr(_current, "watch", None)
    if watch is None:
        return
    if not isinstance(sock, socket.socket):
        sock = getattr(sock, "socket", None)
        if not isinstance(sock, socket.socket):
            return
    if copy:
        try:
            sock = sock.dup()
        except OSError:  # out of file descriptors: the original, as long as it lasts
            copy = False
    watch._dog.attach(watch, sock, copy=copy)


class _Watchdog:
    """The process's watchdog thread and the requests it watches."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        # Reentrant: shutdown's cut may come from the SIGTERM handler, between two
        # bytecodes of a thread that holds the lock (the CLI sends on the main thread).
        self._cond = threading.Condition(threading.RLock())
        self._watches: list[Watch] = []  # running, not expired: a few at most
        self._wake_at = math.inf  # when the thread next looks
        self._thread: threading.Thread | None = None

    def start(self, group: RequestDeadlines) -> Watch:
        own = time.monotonic() + group.seconds
        with self._cond:
            deadline = min(own, group._cut)
            watch = Watch(self, group, deadline, group.seconds, cut=deadline < own)
            self._watches.append(watch)
            if deadline < self._wake_at:
                self._wake()
        return watch

    def finish(self, watch: Watch) -> None:
        with self._cond:
            if not watch.expired:
                self._watches.remove(watch)
            copies, watch._copies, watch._sockets = watch._copies, [], []
        for sock in copies:
            sock.close()

    def attach(self, watch: Watch, sock: socket.socket, *, copy: bool) -> None:
        with self._cond:
            (watch._copies if copy else watch._sockets).append(sock)
            if watch.expired:
                _shut(sock)  # the deadline came while it was connecting

    def cut(self, group: RequestDeadlines, deadline: float) -> None:
        with self._cond:
            group._cut = min(group._cut, deadline)
            for watch in self._watches:
                if watch._group is group and deadline < watch.deadline:
                    watch.deadline = deadline
                    watch.cut = True
            # Only ever a notify: this may run in an exit hook, where no thread may start
            # (and with no thread yet, no request is running).
            if deadline < self._wake_at and self._thread is not None:
                self._cond.notify()

    def _wake(self) -> None:
        """Have the thread look again now (the lock held); start it the first time."""
        if self._thread is not None:
            self._cond.notify()
            return
        thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        try:
            thread.start()
        except RuntimeError:
            # The interpreter is shutting down: the requests keep their per-read
            # timeouts, and the next one tries again.
            return
        self._thread = thread

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                soonest = math.inf
                for watch in list(self._watches):
                    if watch.deadline <= now:
                        self._expire(watch)
                    elif watch.deadline < soonest:
                        soonest = watch.deadline
                self._wake_at = soonest
                # No request running: sleep until one starts (start() notifies).
                self._cond.wait(None if soonest == math.inf else soonest - now)

    def _expire(self, watch: Watch) -> None:
        watch.expired = True
        self._watches.remove(watch)
        for sock in (*watch._sockets, *watch._copies):
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown even for a TLS one: SSLSocket.shutdown() would also drop
    # its TLS state under the thread that is reading through it.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_current = threading.local()  # .watch: the request running on that thread
_lock = threading.RLock()  # reentrant for the same reason
_shared: _Watchdog | None = None


def _watchdog() -> _Watchdog:
    """The process's watchdog; a forked child builds its own (the parent's thread is not
    in it)."""
    global _shared
    dog = _shared
    if dog is None or dog.pid != os.getpid():
        with _lock:
            if _shared is None or _shared.pid != os.getpid():
                _shared = _Watchdog()
            dog = _shared
    return dog


def forget_after_fork() -> None:
    """In a forked child: forget the parent's watchdog (its thread is not here). A hook,
    not a thread: the child's first request builds its own; the pid check above covers
    forks that bypass os.fork."""
    global _lock, _shared
    # A parent thread may have held the lock at the fork; that thread is not here.
    _lock = threading.RLock()
    _shared = None
