"""The Django example (examples/django_shop) passes its own tests, run as its README says:
in a pytest process of their own, since they set Django up for their settings module."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import run_python

pytest.importorskip("django")

SHOP = Path(__file__).parent.parent / "examples" / "django_shop"


def test_the_django_example_passes_its_tests() -> None:
    result = run_python("-m", "pytest", "-q", str(SHOP), clean=True, timeout=120.0)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout
