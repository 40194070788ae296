"""Who holds a lease, for how long, and whether that holder is gone.

A lease's owner is a token naming the process (host, pid namespace, pid, and a random
part); a process on this host can tell that another's owner has died, and free its
rows at once instead of waiting out the lease. Nothing here knows how leases are stored.
"""

from __future__ import annotations

import os
import secrets
import socket

__all__ = ["FRESH_LEASE", "REPLAY_LEASE", "owner_is_gone", "owner_token"]

REPLAY_LEASE = 300.0
"""Seconds a replay claim holds its rows: far beyond one request and its pacing."""
FRESH_LEASE = 3600.0
"""Seconds a row written by ``durability="disk"`` stays reserved for the live queue."""

_token: tuple[int, str] = (0, "")


def owner_token() -> str:
    """Who holds a lease: host, pid namespace, pid, and a random part for this process.

    One per process (every spool object in it shares it), made anew after a fork.
    """
    global _token
    pid, token = _token
    if pid != os.getpid():
        pid = os.getpid()
        token = "|".join((socket.gethostname(), _pid_namespace(), str(pid), secrets.token_hex(6)))
        _token = (pid, token)
    return token


def owner_is_gone(owner: str) -> bool:
    """True when ``owner`` was a process on this host that no longer exists.

    Only a process in the same host and pid namespace can be looked up; any other
    owner's lease runs its full time.
    """
    parts = owner.split("|")
    if len(parts) != 4 or parts[0] != socket.gethostname() or parts[1] != _pid_namespace():
        return False
    try:
        pid = int(parts[2])
    except ValueError:
        return False
    if pid == os.getpid():
        return True  # this process, but an earlier owner token: one from before a fork
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, owned by someone else
    return False


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
