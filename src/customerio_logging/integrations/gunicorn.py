"""gunicorn: a ``worker_exit`` hook that delivers what a worker logged before it ends."""

from __future__ import annotations

import contextlib
from typing import Any

from .._global import shutdown

__all__ = ["worker_exit"]


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook: shut the worker's bridge down (deliver what is
    queued within ``shutdown_timeout``, spool the rest) before the worker process ends.

    gunicorn runs it in the worker, after the worker stopped serving, whatever ended it
    (SIGTERM, ``--max-requests``, a reload), and before the process exits. The exit hook
    usually does the same; this one still does when the app's own signal handling or an
    ``os._exit`` skips it. Install it with one line in ``gunicorn.conf.py``::

        from customerio_logging.integrations.gunicorn import worker_exit  # noqa: F401

    Keep ``shutdown_timeout`` under gunicorn's ``graceful_timeout`` (30 s by default).
    Never raises.
    """
    with contextlib.suppress(Exception):
        shutdown()
