"""``demo``: its own emulator, whatever the environment says (the README's run of the demo
is tests/test_examples.py)."""

from __future__ import annotations

import json

from ..helpers import run_python


class TestDemo:
    def test_it_delivers_to_its_emulator_while_the_library_is_switched_off(self) -> None:
        # The demo never reaches a workspace: CUSTOMERIO_ENABLED=0 (a dev box's setting)
        # must not turn it into a run that delivers nothing.
        result = run_python(
            *("-m", "customerio_logging", "demo", "--events", "10", "--json"),
            env={"CUSTOMERIO_ENABLED": "0"},
            clean=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert (summary["logged"], summary["delivered"]) == (10, 9)
