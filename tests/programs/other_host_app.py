"""tests/programs/spool_app.py as a process of another host: ``other_host_app.py HOST LEASE
ARGS...`` runs spool_app with ARGS, its host name HOST (so no process of this host can
tell whether it is alive: its leases run their full time) and replay leases of LEASE
seconds (for a test that cannot wait the real five minutes).
"""

from __future__ import annotations

import runpy
import socket
import sys
from pathlib import Path

from customerio_logging._storage import leases

host, lease, *rest = sys.argv[1:]
socket.gethostname = lambda: host
leases.REPLAY_LEASE = float(lease)
app = Path(__file__).with_name("spool_app.py")
sys.argv = [str(app), *rest]
runpy.run_path(str(app), run_name="__main__")
