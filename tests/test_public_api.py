"""The public facade: __all__ is sorted and complete; imports stay light."""

from __future__ import annotations

import customerio_logging
from customerio_logging import testing

from .helpers import run_python


class TestAll:
    def test_all_is_sorted(self) -> None:
        assert customerio_logging.__all__ == sorted(customerio_logging.__all__)
        assert testing.__all__ == sorted(testing.__all__)

    def test_all_is_complete(self) -> None:
        public = {
            name
            for name, value in vars(customerio_logging).items()
            if not name.startswith("_")
            and getattr(value, "__module__", "").startswith("customerio_logging")
        }
        assert public == set(customerio_logging.__all__)

    def test_the_contract_names_exist(self) -> None:
        contract = {
            "configure",
            "get_bridge",
            "flush",
            "shutdown",
            "stats",
            "Stats",
            "CustomerIOHandler",
            "CustomerIOProcessor",
            "Event",
            "UserAttributes",
            "CustomerIOLoggingError",
            "ConfigurationError",
            "InvalidEventError",
            "DeliveryError",
            "app_api",
            "send_email",
            "send_push",
            "reset",
        }
        assert contract <= set(customerio_logging.__all__)
        fields = set(customerio_logging.Stats.__dataclass_fields__)
        assert {
            "enqueued",
            "sent",
            "retried",
            "failed",
            "dropped",
            "invalid",
            "spooled",
            "replayed",
            "dead_lettered",
            "batches",
            "queue_depth",
            "last_error",
        } <= fields


class TestImport:
    def test_import_needs_no_structlog_and_starts_no_thread(self) -> None:
        # The HTTP client (customerio, requests) is loaded when a bridge is first built,
        # not by the import nor by a handler or processor made before configuration.
        code = (
            "import sys, threading\n"
            "sys.modules['structlog'] = None\n"
            "import customerio_logging as cio\n"
            "p = cio.CustomerIOProcessor(); h = cio.CustomerIOHandler()\n"
            "assert threading.active_count() == 1, threading.enumerate()\n"
            "loaded = {'requests', 'customerio', 'urllib3'} & set(sys.modules)\n"
            "assert not loaded, loaded\n"
        )
        result = run_python("-c", code, timeout=60)
        assert result.returncode == 0, result.stderr
