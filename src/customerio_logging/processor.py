"""CustomerIOProcessor: the structlog processor that hands tagged event dicts to the bridge."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from . import _routing
from ._capture import TAG, TakenByProcessor, UnreadableTag, snapshot_event_dict
from ._global import note_lost, submit_capture
from .exceptions import InvalidEventError

if TYPE_CHECKING:
    from ._bridge import Bridge

__all__ = ["CustomerIOProcessor"]


class CustomerIOProcessor:
    """A structlog processor that sends event dicts tagged ``cio_event`` to Customer.io.

    A plain callable: importing it needs no structlog. Place it after the processors that
    add context (``merge_contextvars``) and before the renderer::

        structlog.configure(processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            CustomerIOProcessor(),
            structlog.processors.JSONRenderer(),
        ])
        log.info("plan_changed", cio_event=True, user_id="u1", from_="free", to="pro")

    The event dict passes through unchanged except ``cio_event``, which becomes the
    event's name as a marker string: a ``CustomerIOHandler`` further down the chain then
    knows the event was taken and does not send it twice. Never raises into the log call
    (but in a test fixture's strict mode, for an invalid event). Switched off
    (``CUSTOMERIO_ENABLED=0``), a tagged event dict costs what an untagged one does.

    Args:
        bridge: The bridge to use; the process's (``get_bridge()``) when None.
    """

    __slots__ = ("_bridge",)

    def __init__(self, *, bridge: Bridge | None = None) -> None:
        self._bridge = bridge

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        tag = event_dict.get(TAG)
        try:
            if not tag or type(tag) is TakenByProcessor:
                return event_dict
        except Exception:  # noqa: BLE001 - a tag with no truth value (a numpy array):
            tag = UnreadableTag(tag)  # taken below, and counted invalid by the bridge
        if _routing.muted and self._bridge is None:
            return event_dict  # switched off: as cheap as an untagged event dict
        try:
            capture = snapshot_event_dict(event_dict, tag)
            if self._bridge is None:
                submit_capture(capture)
            else:
                self._bridge.submit(capture)
        except InvalidEventError:
            raise  # only a test fixture's strict mode raises it: the test fails at the call
        except Exception as exc:  # noqa: BLE001 - a log call must never fail because of us
            note_lost(exc)
        # Taken, whatever became of it (queued, or counted lost): a CustomerIOHandler
        # further down must neither send nor count it again.
        name = tag if isinstance(tag, str) else event_dict.get("event")
        event_dict[TAG] = TakenByProcessor(name if isinstance(name, str) else "")
        return event_dict

    def __repr__(self) -> str:
        return "CustomerIOProcessor()"
