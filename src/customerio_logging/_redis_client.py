"""One way to reach the fleet's Redis: clients with bounded waits and no hidden retries,
the keys' namespace, and what a Redis error becomes in words without secrets.

Shared by the Redis storage and the fleet's rate limit. redis-py is imported only here
and only when a Redis URL is configured (it is the optional ``[redis]`` extra).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ._redis_url import redis_location

if TYPE_CHECKING:
    import redis

__all__ = ["REDIS_TIMEOUT", "describe_error", "is_redis_error", "make_client", "namespace"]

REDIS_TIMEOUT = 1.0
"""Seconds one Redis call may take on a thread of the library's (connecting included)."""


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
