"""What every fixture does around a test: pin the process to the test's destination, and
put the process's bridge and App API client back as they were afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .. import _app_api, _routing
from .._global import current_bridge, swap_bridge

__all__ = ["isolated"]

_SHUTDOWN_TIMEOUT = 5.0


@contextlib.contextmanager
def isolated(pin: _routing.Pin, tap: _routing.Tap | None = None) -> Iterator[None]:
    """Impose ``pin`` (and ``tap``) for the block, then restore the process.

    A bridge the process had before (built at the app's import, say) is left running
    but gets no call meanwhile: its calls go to a bridge built under the pin (see
    ``_routing.diverted``). Afterwards, a bridge made the process's during the block
    (by the fixture, or by the app's own ``configure()``) is shut down, and the one from
    before is the process's again. The App API client is built anew on both sides, so
    that neither sees the other's address.
    """
    saved = current_bridge()
    _app_api.reset()
    last = saved
    try:
        with _routing.tapped(pin, tap):
            try:
                yield
            finally:
                last = current_bridge()
    finally:
        # The pin is gone first: a thread still logging now reaches the bridge it calls,
        # and none is built for a pin that no longer holds.
        if last is not saved:
            swap_bridge(saved)
            if last is not None:
                last.shutdown(_SHUTDOWN_TIMEOUT)
        _app_api.reset()
