"""Test helpers for apps that use customerio_logging: a local Track API emulator, and a
transport that answers in memory.

``TrackAPIEmulator`` serves the Track API endpoints the library and the official client use
on ``127.0.0.1``, answers as Customer.io does (200, 207, 400, 401, 413) and records what it
accepted, so a test can assert on the events an app logged without the real service.
A ``FaultPlan`` makes it fail on purpose, reproducibly: scripted statuses, a failure rate,
dropped connections, a rate limit with ``Retry-After``, slow answers, a lower 413 threshold
and chosen operations refused in a 207. ``MockTransport`` (with ``Response``) answers the
bridge's batches without any server: ``configure(transport=MockTransport())``.
``capture_events()`` (the ``cio_events`` fixture) keeps every operation the code under test
makes in memory, as it is made, with ``assert_sent``.
"""

from customerio_logging._wire import Response
from customerio_logging.testing._events import (
    CapturedEvent,
    CapturedEvents,
    InvalidCall,
    capture_events,
)
from customerio_logging.testing._faults import FaultPlan
from customerio_logging.testing._mock import MockTransport
from customerio_logging.testing._recorder import RecordedRequest
from customerio_logging.testing._server import TrackAPIEmulator

__all__ = [
    "CapturedEvent",
    "CapturedEvents",
    "FaultPlan",
    "InvalidCall",
    "MockTransport",
    "RecordedRequest",
    "Response",
    "TrackAPIEmulator",
    "capture_events",
]
