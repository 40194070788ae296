"""FastAPI under ``uvicorn --workers 2`` with CustomerIOMiddleware: a SIGTERM that lands
while requests are in flight loses none of their events.

Run it all against the local emulator (it starts uvicorn, sends four slow requests,
SIGTERMs uvicorn while they are in flight, and prints what arrived):

    python examples/fastapi_app.py

Or serve it yourself: ``CUSTOMERIO_SITE_ID=... CUSTOMERIO_TRACK_API_KEY=... uvicorn
fastapi_app:app --app-dir examples --workers 2``.
"""

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from fastapi import FastAPI

import customerio_logging as cio
from customerio_logging.integrations.asgi import CustomerIOMiddleware

log = logging.getLogger("shop")
log.setLevel(logging.INFO)
log.addHandler(cio.CustomerIOHandler())

app = FastAPI()
app.add_middleware(CustomerIOMiddleware)


@app.get("/checkout")
async def checkout(user: str) -> dict[str, str]:
    await asyncio.sleep(0.5)  # some work: the request is in flight at SIGTERM
    log.info("checkout_completed", extra={"cio_event": True, "user_id": user, "items": 3})
    return {"status": "ok"}


if __name__ != "__main__":
    cio.configure()  # in each uvicorn worker: settings from CUSTOMERIO_* variables


def _demo() -> None:
    from customerio_logging.testing import TrackAPIEmulator

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with TrackAPIEmulator() as emulator:
        env = {
            **os.environ,
            "CUSTOMERIO_SITE_ID": emulator.site_id,
            "CUSTOMERIO_TRACK_API_KEY": emulator.api_key,
            "CUSTOMERIO_TRACK_URL": emulator.url,
            "CUSTOMERIO_SPOOL_PATH": "off",
        }
        here = Path(__file__).parent
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(here),
             "--workers", "2", "--port", str(port), "--log-level", "warning"],
            env=env,
        )  # fmt: skip
        try:
            _wait_until_up(port)
            users = [f"user-{i}" for i in range(4)]
            requests = [threading.Thread(target=_get, args=(port, u)) for u in users]
            for request in requests:
                request.start()
            time.sleep(0.2)  # all four are in the app now
            server.send_signal(signal.SIGTERM)
            for request in requests:
                request.join(10)
            server.wait(30)
        finally:
            if server.poll() is None:
                server.kill()
        arrived = sorted(op["identifiers"]["id"] for op in emulator.operations)
        print(f"sent SIGTERM with {len(users)} requests in flight; events that arrived:")
        for user in arrived:
            print(f"  checkout_completed for {user}")
        print("all delivered" if arrived == users else "MISSING: " + str(set(users) - set(arrived)))


def _wait_until_up(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _get(port: int, user: str) -> None:
    url = f"http://127.0.0.1:{port}/checkout?user={user}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        answer.read()


if __name__ == "__main__":
    _demo()
