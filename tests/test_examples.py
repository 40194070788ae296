"""The README's demo command and the examples run and deliver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with ``args``, with no CUSTOMERIO_* settings in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMERIO_")}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


class TestDemo:
    def test_the_demo_delivers_all_but_the_one_invalid_event(self) -> None:
        result = _run("-m", "customerio_logging", "demo", "--json")
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["logged"] == 300
        assert summary["delivered"] == 299
        assert [r["reason"] for r in summary["rejected"]] == ["schema_mismatch"]
        assert summary["stats"]["sent"] == 299
        assert summary["example_operation"]["type"] == "person"

    def test_the_plain_demo_prints_a_readable_summary(self) -> None:
        result = _run("-m", "customerio_logging", "demo", "--events", "40")
        assert result.returncode == 0, result.stderr
        assert "Delivered 39 operations" in result.stdout
        assert "schema_mismatch" in result.stdout

    def test_no_command_prints_help_and_exits_2(self) -> None:
        result = _run("-m", "customerio_logging")
        assert result.returncode == 2
        assert "demo" in result.stderr


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("stdlib_app.py", "'name': 'plan_changed'"),
        ("structlog_app.py", "rejected: plan_changed schema_mismatch"),
        ("dictconfig_app.py", "'name': 'order_placed'"),
    ],
)
def test_examples_run_against_the_emulator(example: str, expected: str) -> None:
    result = _run(str(ROOT / "examples" / example))
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_the_benchmark_runs_and_its_sanity_checks_hold() -> None:
    # Timing targets are not asserted here (shared, noisy machines); only that the
    # benchmark runs and every event it logs is delivered (exit 2 otherwise).
    result = _run(str(ROOT / "benchmarks" / "bench_pipeline.py"), "--quick")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(d)/(e) events/s" in result.stdout


@pytest.mark.parametrize("example", ["fastapi_app.py", "celery_app.py"])
def test_the_framework_examples_lose_nothing_at_sigterm(example: str) -> None:
    result = _run(str(ROOT / "examples" / example), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "all delivered" in result.stdout, result.stdout
