"""The README's demo command and the examples run and deliver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import run_python

ROOT = Path(__file__).parent.parent
TIMEOUT = 120.0
# Each runs with no CUSTOMERIO_* settings in its environment (clean=True), as from a fresh shell.


class TestDemo:
    def test_the_demo_delivers_all_but_the_one_invalid_event(self) -> None:
        result = run_python(
            "-m", "customerio_logging", "demo", "--json", clean=True, timeout=TIMEOUT
        )
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["logged"] == 300
        assert summary["delivered"] == 299
        assert [r["reason"] for r in summary["rejected"]] == ["schema_mismatch"]
        assert summary["stats"]["sent"] == 299
        assert summary["example_operation"]["type"] == "person"

    def test_the_plain_demo_prints_a_readable_summary(self) -> None:
        result = run_python(
            "-m", "customerio_logging", "demo", "--events", "40", clean=True, timeout=TIMEOUT
        )
        assert result.returncode == 0, result.stderr
        assert "Delivered 39 operations" in result.stdout
        assert "schema_mismatch" in result.stdout

    def test_no_command_prints_help_and_exits_2(self) -> None:
        result = run_python("-m", "customerio_logging", clean=True, timeout=TIMEOUT)
        assert result.returncode == 2
        assert "demo" in result.stderr


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("stdlib_app.py", "'name': 'plan_changed'"),
        ("structlog_app.py", "rejected: plan_changed schema_mismatch"),
        ("dictconfig_app.py", "'name': 'order_placed'"),
        ("webhook_app.py", "upgrade: {'events': ['sent', 'sent'], 'email': "),
        ("webhook_app.py", "transactional: {'type': 'email'"),
    ],
)
def test_examples_run_against_the_emulator(example: str, expected: str) -> None:
    result = run_python(str(ROOT / "examples" / example), clean=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_the_benchmark_runs_and_its_sanity_checks_hold() -> None:
    # Timing targets are not asserted here (shared, noisy machines); only that the
    # benchmark runs and every event it logs is delivered (exit 2 otherwise).
    result = run_python(
        str(ROOT / "benchmarks" / "bench_pipeline.py"), "--quick", clean=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(d)/(e) events/s" in result.stdout


@pytest.mark.parametrize("example", ["fastapi_app.py", "celery_app.py"])
def test_the_framework_examples_lose_nothing_at_sigterm(example: str) -> None:
    result = run_python(str(ROOT / "examples" / example), clean=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "all delivered" in result.stdout, result.stdout
