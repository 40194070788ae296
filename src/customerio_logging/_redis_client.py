"""One way to reach the fleet's Redis: clients with bounded waits and no hidden retries,
the keys' namespace, what a Redis error becomes in words without secrets, and when a
Redis that failed is tried again.

Shared by the Redis storage and the fleet's rate limit. redis-py's clients are made only
here, and redis-py is imported only when a Redis URL is configured (it is the optional
``[redis]`` extra; ``_redis_url`` reads the URL with it at ``configure()``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._redis_url import redis_location

if TYPE_CHECKING:
    import redis

__all__ = [
    "FIRST_RETRY",
    "LONGEST_RETRY",
    "REDIS_TIMEOUT",
    "Health",
    "describe_error",
    "eviction_policy",
    "is_redis_error",
    "make_client",
    "may_evict_backlog",
    "namespace",
]

REDIS_TIMEOUT = 1.0
"""Seconds one Redis call may take on a thread of the library's (connecting included)."""
FIRST_RETRY = 1.0
"""Seconds after a failed Redis call before Redis is tried again; doubles each failure."""
LONGEST_RETRY = 30.0
"""The longest wait between two tries of a Redis that keeps failing."""


def namespace(site_id: str | None, track_url: str | None) -> str:
    """The prefix of every key for one workspace and API host: ``cio:{<16 hex>}:``.

    The same inputs as the SQLite spool's file name, so one app's backlog never mixes
    with another workspace's. The braces are a Redis Cluster hash tag: every key of one
    namespace lives in one slot, as a Lua script touching several of them needs.
    """
    key = hashlib.sha256(f"{site_id or ''}\n{track_url or ''}".encode()).hexdigest()[:16]
    return f"cio:{{{key}}}:"


def make_client(url: str, *, timeout: float = REDIS_TIMEOUT) -> redis.Redis:
    """A client for ``url`` whose every call (connecting, each read) waits at most
    ``timeout`` seconds, and that never retries by itself: the caller decides.

    redis-py's connection pool notices a fork and opens the child's own connections.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "health_check_interval": 30,
        "client_name": "customerio-logging",
    }
    return redis.Redis.from_url(url, **options)


def eviction_policy(client: redis.Redis) -> str | None:
    """Redis's ``maxmemory-policy``, read through ``INFO`` (managed services refuse
    ``CONFIG``); None when this user may not read it (an ACL refusing ``INFO`` too)."""
    import redis

    try:
        return str(client.info("memory").get("maxmemory_policy", "noeviction"))
    except redis.ResponseError:
        return None


def may_evict_backlog(policy: str) -> bool:
    """Whether ``policy`` lets Redis evict the backlog's keys: the ``allkeys-*`` ones.
    ``noeviction`` refuses writes instead, and a ``volatile-*`` policy evicts only keys
    with a time to live, which the backlog's have none of."""
    return policy.startswith("allkeys-")


def is_redis_error(exc: BaseException) -> bool:
    """True for an error of redis-py's (a connection, a timeout, a refused command)."""
    try:
        import redis
    except ImportError:  # pragma: no cover - only called once a client was made
        return False
    return isinstance(exc, redis.RedisError)


def describe_error(url: str, exc: BaseException) -> str:
    """What went wrong with the Redis at ``url``, in words that never hold its password.

    redis-py's messages name the host and port, never the credentials; the URL itself
    is shown by :func:`~._redis_url.redis_location` only.
    """
    kind = type(exc).__name__
    text = str(exc).strip() or kind
    if len(text) > 200:
        text = text[:200] + "..."
    return f"Redis at {redis_location(url)} failed ({kind}: {text})"


class Health:
    """Whether Redis is taken as down, and when to try it again.

    Args:
        clock: Monotonic seconds.
        fallback: Whether there is a local file to use meanwhile (without one, every
            call tries Redis).
    """

    def __init__(self, clock: Callable[[], float], *, fallback: bool) -> None:
        self._clock = clock
        self._fallback = fallback
        self._lock = threading.Lock()
        self.down = False
        self._retry_at = 0.0
        self._backoff = 0.0

    def use_remote(self, *, probe: bool) -> bool:
        """Whether to call Redis now. While it is down, only a call that may wait
        (``probe``: the library's threads, never a log call's short write) tries it
        again, once the backoff since the last failure has run out."""
        if not (self.down and self._fallback):
            return True
        return probe and self._clock() >= self._retry_at

    def failed(self) -> bool:
        """A Redis call failed: back off. True for the first failure of an outage."""
        with self._lock:
            self._backoff = min(LONGEST_RETRY, max(FIRST_RETRY, self._backoff * 2))
            self._retry_at = self._clock() + self._backoff
            first, self.down = not self.down, True
        return first

    def answered(self) -> bool:
        """A Redis call succeeded. True when that ends an outage."""
        if not self.down:
            return False
        with self._lock:
            ended, self.down, self._backoff = self.down, False, 0.0
        return ended
