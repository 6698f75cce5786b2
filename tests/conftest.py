from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
REQUIRE_REAL = os.environ.get("FLEETWATCH_REQUIRE_REAL") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip when a real dependency is missing; in CI (FLEETWATCH_REQUIRE_REAL=1) fail instead."""
    if condition:
        return
    if REQUIRE_REAL:
        pytest.fail(f"FLEETWATCH_REQUIRE_REAL=1 but {reason}")
    pytest.skip(reason)


def fixture_path(rel: str) -> Path:
    need(FIXTURES.is_dir(), f"../shared/fixtures not found at {FIXTURES}")
    p = FIXTURES / rel
    need(p.exists(), f"fixture {rel} missing")
    return p


def fixture_text(rel: str) -> str:
    return fixture_path(rel).read_text(encoding="utf-8")


def binary(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"{name} not installed (apt-get install prometheus prometheus-alertmanager)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def alertmanager():  # type: ignore[no-untyped-def]
    """One real Alertmanager for the whole test session."""
    from realbins import Alertmanager

    am = Alertmanager(binary("prometheus-alertmanager"))
    yield am
    am.stop()
