"""Test helpers for apps that use customerio_logging: a local Track API emulator.

``TrackAPIEmulator`` serves the Track API endpoints the library and the official client use
on ``127.0.0.1``, answers as Customer.io does (200, 207, 400, 401, 413) and records what it
accepted, so a test can assert on the events an app logged without the real service.
"""

from customerio_logging.testing._emulator import RecordedRequest, TrackAPIEmulator

__all__ = ["RecordedRequest", "TrackAPIEmulator"]
