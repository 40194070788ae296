"""Celery: pool children and the worker deliver before they exit; root keeps our handlers.

Celery is imported when :func:`install` or :func:`handler` is called, never at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

import customerio_logging as cio
from customerio_logging.handler import CustomerIOHandler

if TYPE_CHECKING:
    from celery import Celery  # type: ignore[import-untyped]

__all__ = ["handler", "install"]

_lock = threading.Lock()
_installed = False
# The CustomerIOHandlers seen on the root logger before Celery set logging up: a worker
# that hijacks the root logger (the default) removes them; they are put back after.
_kept: list[CustomerIOHandler] = []
# The main thread of the process that imported this module: the worker's, in a pool child.
_main_thread_id = threading.main_thread().ident
_parent_pid = 0  # a pool child's parent, set when the child starts


def install(app: Celery) -> None:
    """Make a Celery worker deliver every tagged event; call it where the app is made.

    It connects Celery's signals (process-wide, so once is enough; calling it again does
    nothing):

    - ``worker_process_shutdown``: a prefork child, leaving on a warm shutdown or
      recycled by ``--max-tasks-per-child`` / ``--max-memory-per-child``, shuts the
      bridge down (delivers what it queued, within ``shutdown_timeout``, spooling what
      is left) before billiard ends it with ``os._exit``, which skips atexit.
    - ``worker_shutdown``: the main process does the same on a warm shutdown.
    - ``worker_init`` and ``after_setup_logger``: the ``CustomerIOHandler`` instances on
      the root logger when ``install`` is called or when the worker starts are put back
      after Celery's logging setup (``worker_hijack_root_logger`` removes them);
      ``after_setup_task_logger``: added to Celery's task logger too, which does not
      propagate to the root logger.
    - ``worker_process_init``: a child forked by one of the pool's threads (the
      replacement of a recycled child, when the broker transport is not asynchronous,
      e.g. ``filesystem://``) gets, in place of Celery's parent-death SIGKILL, which
      Linux sends when that *thread* ends (at a warm shutdown, before the child is
      told to stop), a signal that kills it only if the worker process is gone.

    Args:
        app: The Celery app. The hooks serve any worker this process runs.
    """
    global _installed
    from celery import signals

    del app  # Celery's signals are process-wide
    _remember_root_handlers()
    with _lock:
        if _installed:
            return
        _installed = True
    uid = "customerio_logging"
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid=uid)
    signals.after_setup_logger.connect(_on_setup_logger, weak=False, dispatch_uid=uid)
    signals.after_setup_task_logger.connect(_on_setup_logger, weak=False, dispatch_uid=uid)
    signals.worker_process_init.connect(_on_child_start, weak=False, dispatch_uid=uid)
    signals.worker_process_shutdown.connect(_on_exit, weak=False, dispatch_uid=uid)
    signals.worker_shutdown.connect(_on_exit, weak=False, dispatch_uid=uid)


def handler() -> CustomerIOHandler:
    """A ``CustomerIOHandler`` that also calls :func:`install`: Celery from ``dictConfig`` alone.

    Name it as the handler's factory, ``"()": "customerio_logging.integrations.celery.handler"``,
    in place of ``"class": "customerio_logging.CustomerIOHandler"``.
    """
    from celery import current_app

    install(current_app)
    return CustomerIOHandler()


def _remember_root_handlers() -> None:
    with _lock:
        for each in logging.getLogger().handlers:
            if isinstance(each, CustomerIOHandler) and each not in _kept:
                _kept.append(each)


def _on_worker_init(**_: Any) -> None:
    # Sent after the worker imported the app's modules (dictConfig done, Django set up)
    # and before Celery sets logging up.
    _remember_root_handlers()


def _on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is None:
        return
    with _lock:
        kept = list(_kept)
    for each in kept:
        if each not in logger.handlers:
            logger.addHandler(each)


def _on_exit(**_: Any) -> None:
    # Within the bridge's shutdown_timeout; nothing to do if no bridge was ever built.
    cio.shutdown()


def _on_child_start(**_: Any) -> None:
    # Celery arms SIGKILL as a pool child's parent-death signal. Linux sends it when the
    # *thread* that forked the child ends: for a child a pool thread forked, that is at a
    # warm shutdown, before the child is told to stop and delivers.
    global _parent_pid
    if sys.platform != "linux" or threading.get_ident() == _main_thread_id:
        return  # no parent-death signal, or forked by the worker's main thread: it is right
    # A real-time signal: nothing else sends it, and Python can handle it.
    parent_gone = signal.SIGRTMAX - 3
    with contextlib.suppress(ImportError, OSError):  # a billiard without them: left alone
        from billiard.util import get_pdeathsig, set_pdeathsig  # type: ignore[import-untyped]

        if get_pdeathsig() != signal.SIGKILL:
            return
        _parent_pid = os.getppid()
        signal.signal(parent_gone, _on_parent_thread_exit)
        set_pdeathsig(parent_gone)


def _on_parent_thread_exit(signum: int, frame: object) -> None:
    if os.getppid() == _parent_pid:
        return  # only the pool thread that forked this child ended; the worker runs on
    # The worker process is gone: deliver, then die as Celery's SIGKILL would have.
    with contextlib.suppress(Exception):
        cio.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)
