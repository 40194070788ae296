"""Ctrl-C in a long command: the first asks it to stop, a second stops it at once.

Signals are sent in a process of their own (``run_python``), never to pytest's.
"""

from __future__ import annotations

import json
from typing import Any

from ..helpers import run_python

_PRELUDE = """
import json, signal, threading, time
from customerio_logging.cli._interrupt import StopRequest

calls = []
called = threading.Event()

def on_stop():
    calls.append(threading.current_thread().name)
    called.set()

def ctrl_c():
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    time.sleep(0.5)  # the handler runs here, or KeyboardInterrupt cuts it short

seen = {"handler_before": signal.getsignal(signal.SIGINT) is signal.default_int_handler}
"""

_TWICE = """
with StopRequest(on_stop) as request:
    seen["requested_at_first"] = request.requested
    ctrl_c()
    seen["requested"] = request.requested
    seen["on_stop_called"] = called.wait(5)
    try:
        ctrl_c()
        seen["second"] = "went on"
    except KeyboardInterrupt:
        seen["second"] = "KeyboardInterrupt"
seen["calls"] = calls
seen["handler_after"] = signal.getsignal(signal.SIGINT) is signal.default_int_handler
seen["threads_after"] = [t.name for t in threading.enumerate()]
print(json.dumps(seen))
"""

_NEVER = """
with StopRequest(on_stop) as request:
    seen["handler_within"] = signal.getsignal(signal.SIGINT) is not signal.default_int_handler
seen["requested"] = request.requested
seen["calls"] = calls
seen["threads_after"] = [t.name for t in threading.enumerate()]
try:
    ctrl_c()
    seen["after"] = "went on"
except KeyboardInterrupt:
    seen["after"] = "KeyboardInterrupt"
print(json.dumps(seen))
"""

_OFF_THE_MAIN_THREAD = """
def work():
    with StopRequest(on_stop) as request:
        seen["handler_within"] = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        seen["requested"] = request.requested

worker = threading.Thread(target=work)
worker.start()
worker.join()
print(json.dumps(seen))
"""


def _run(program: str) -> Any:
    result = run_python("-c", _PRELUDE + program, check=True, timeout=30)
    return json.loads(result.stdout)


class TestStopRequest:
    def test_the_first_ctrl_c_asks_and_the_second_stops_at_once(self) -> None:
        seen = _run(_TWICE)
        assert seen["handler_before"] is True
        assert seen["requested_at_first"] is False
        assert seen["requested"] is True
        assert seen["on_stop_called"] is True
        assert seen["calls"] == ["customerio-cli-stop"]  # once, off the main thread
        assert seen["second"] == "KeyboardInterrupt"
        assert seen["handler_after"] is True
        assert "customerio-cli-stop" not in seen["threads_after"]

    def test_without_ctrl_c_nothing_is_called_and_everything_is_put_back(self) -> None:
        seen = _run(_NEVER)
        assert seen["handler_within"] is True
        assert seen["requested"] is False
        assert seen["calls"] == []
        assert "customerio-cli-stop" not in seen["threads_after"]
        assert seen["after"] == "KeyboardInterrupt"  # Ctrl-C is as usual again

    def test_off_the_main_thread_it_leaves_ctrl_c_alone(self) -> None:
        seen = _run(_OFF_THE_MAIN_THREAD)
        assert seen == {"handler_before": True, "handler_within": True, "requested": False}
