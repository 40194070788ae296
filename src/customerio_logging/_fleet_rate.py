"""The fleet's rate limit: one token bucket and one 429 pause in Redis, shared by every
process that sends to a workspace, and what to do while Redis cannot be reached."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ._redis_client import (
    FIRST_RETRY,
    Health,
    describe_error,
    make_client,
    namespace,
)
from ._redis_url import redis_location

if TYPE_CHECKING:
    import redis

    from ._config import Settings

__all__ = ["FleetRate", "Turn", "fleet_burst", "fleet_rate"]

# One call per request: refill from Redis's own clock (one clock for every host), then
# either the fleet's pause, or a token, or how long until the next one. Seconds go back
# as strings (Redis turns a Lua number into an integer); string.format keeps the
# microseconds that tostring's 14 digits would round away from a Unix time.
_TAKE = """
if redis.replicate_commands then redis.replicate_commands() end
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then
  return {string.format('%.3f', paused / 1000), 1}
end
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then
  tokens, at = burst, now
end
-- A clock set back refills nothing (never a negative refill, never a free one).
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 - 1e-9 then
  tokens = math.max(0, tokens - 1)
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.9f', tokens),
           'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {string.format('%.6f', wait), 0}
"""

# The pause only grows: a shorter Retry-After met later by another process does not cut
# a longer one short. Its key expires when the pause ends.
_PAUSE = """
local wanted = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < wanted then
  redis.call('SET', KEYS[1], '1', 'PX', wanted)
end
return 1
"""


def fleet_burst(rate: float) -> float:
    """The fleet's burst: a tenth of a second's worth of requests, at least one.

    A bucket of ``b`` tokens filled at ``r`` per second lets through at most
    ``b + r * T`` requests in any ``T`` seconds, so no second of the whole fleet holds
    more than a tenth over ``max_requests_per_second`` (one over, at rates below 10): a
    quiet fleet that wakes cannot spike past the workspace's limit. A tenth of a
    second's tokens still wait for a process that comes a little late for its turn,
    so the fleet does not lose the rate it is allowed.
    """
    return max(1.0, rate / 10)


class Turn(NamedTuple):
    """The fleet's answer to one request for a token."""

    wait: float
    """Seconds to wait before asking again; 0 when the token was taken."""
    paused: bool
    """True when the wait is the fleet's 429 pause rather than the rate's."""


class FleetRate:
    """A token bucket and a 429 pause in Redis, shared by every process of a workspace.

    Each :meth:`take` is one call of a Lua script, which Redis runs atomically. While
    Redis fails (or takes longer than the client's timeout), :meth:`take` answers None
    at once, so the caller paces itself alone, and Redis is tried again after
    ``FIRST_RETRY`` seconds, doubling up to ``LONGEST_RETRY``. ``on_problem`` hears once
    per outage, ``on_back`` once when Redis answers again. Call it from one thread: the
    dispatch thread (every call may wait up to the client's timeout).

    Args:
        url: The Redis URL (it may hold a password: it is never shown).
        prefix: The keys' namespace (:func:`~._redis_client.namespace`).
        rate: Requests per second for the whole fleet.
        on_problem: Told, in words without secrets, when Redis first fails.
        on_back: Told when Redis answers again after failing.
        clock: Monotonic seconds, for the backoff; tests inject one.
        client: The Redis client; one from :func:`~._redis_client.make_client` when None.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        rate: float,
        on_problem: Callable[[str], None],
        on_back: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        client: redis.Redis | None = None,
    ) -> None:
        self._url = url
        self._rate = rate
        self._burst = fleet_burst(rate)
        # An absent bucket is a full one: once it would be full again, Redis may forget it.
        self._ttl_ms = math.ceil(self._burst / rate * 1000) + 1000
        self._bucket_key = f"{prefix}rate:bucket"
        self._pause_key = f"{prefix}rate:pause"
        self._on_problem = on_problem
        self._on_back = on_back
        client = client if client is not None else make_client(url)
        # register_script does no I/O: the script is loaded on its first call.
        self._take = client.register_script(_TAKE)
        self._pause = client.register_script(_PAUSE)
        self._health = Health(clock, fallback=True)

    def __repr__(self) -> str:
        return f"<FleetRate {self._rate:g}/s {'down' if self._health.down else 'up'}>"

    def take(self) -> Turn | None:
        """Take a token for one request, or learn how long to wait; None while Redis
        cannot be used (pace locally meanwhile)."""
        if not self._health.use_remote(probe=True):
            return None
        try:
            wait, paused = self._take(
                keys=[self._bucket_key, self._pause_key],
                args=[repr(self._rate), repr(self._burst), self._ttl_ms],
            )
            turn = Turn(float(wait), paused == 1)
        except Exception as exc:  # noqa: BLE001 - any failure: pace locally, never stop
            self._failed(exc)
            return None
        self._answered()
        return turn

    def pause(self, seconds: float) -> None:
        """Pause every process of the fleet for ``seconds`` (a 429's Retry-After), unless
        a longer pause is already set; a no-op while Redis cannot be used."""
        if seconds <= 0 or not self._health.use_remote(probe=True):
            return
        try:
            self._pause(keys=[self._pause_key], args=[math.ceil(seconds * 1000)])
        except Exception as exc:  # noqa: BLE001 - the local pause still holds this process
            self._failed(exc)
            return
        self._answered()

    def _failed(self, exc: Exception) -> None:
        if self._health.failed():
            self._on_problem(
                f"{describe_error(self._url, exc)}; the fleet's rate limit is not shared "
                f"meanwhile: this process sends up to max_requests_per_second on its own "
                f"(Redis is tried again after {FIRST_RETRY:g} s, then less often)"
            )

    def _answered(self) -> None:
        if self._health.answered():
            self._on_back(
                f"Redis at {redis_location(self._url)} answers again: "
                f"max_requests_per_second is shared by the fleet again"
            )


def fleet_rate(
    settings: Settings, *, on_problem: Callable[[str], None], on_back: Callable[[str], None]
) -> FleetRate | None:
    """The fleet's rate limit the settings ask for: None without ``redis_url``."""
    if settings.redis_url is None:
        return None
    return FleetRate(
        settings.redis_url,
        prefix=namespace(settings.site_id, settings.track_url),
        rate=settings.max_requests_per_second,
        on_problem=on_problem,
        on_back=on_back,
    )
