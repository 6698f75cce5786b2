"""deploy/Dockerfile: hadolint passes it; the image built by deploy/build-image.sh runs read-only as
UID 65532, has no build tools, answers /metrics and /healthz, reports healthy, and scrapes a fleet.

The build needs a Docker daemon and debootstrap (`.ci/run` starts dockerd and builds the image
before pytest, in the background; FLEETWATCH_IMAGE_BUILD names the file where the build writes
its exit status). Without a daemon these tests skip, or fail under FLEETWATCH_REQUIRE_REAL=1.
"""
from __future__ import annotations

import json
import os
import re
import tomllib
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
import yaml

from exporter.demo.run import start_fleet

from conftest import binary, need
from fakes import free_port

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("FLEETWATCH_IMAGE", "fleetwatch:dev")
BUILD_WAIT = 900.0  # seconds a background build may still take


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.registry"])
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    hadolint = binary("hadolint")
    r = subprocess.run([hadolint, str(ROOT / "deploy" / dockerfile)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_registry_dockerfile_pins_its_base_by_digest_and_installs_the_lock() -> None:
    text = (ROOT / "deploy" / "Dockerfile.registry").read_text()
    base = next(ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("ARG BASE="))
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    assert "--require-hashes" in text and "-r /requirements.lock" in text


def locked() -> dict[str, str]:
    """deploy/requirements.lock as name -> version, names normalised as pip does."""
    out = {}
    for line in (ROOT / "deploy" / "requirements.lock").read_text().splitlines():
        if "==" in line:
            name, version = line.split(" ")[0].split("==")
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_the_lock_pins_every_runtime_dependency_with_a_hash() -> None:
    text = (ROOT / "deploy" / "requirements.lock").read_text()
    pins = locked()
    assert {"prometheus-client", "requests", "pyyaml", "apscheduler", "nvidia-ml-py", "rich", "dnspython"} <= set(pins)
    blocks = [b for b in text.split("\n") if "==" in b]
    assert len(blocks) == len(pins) and text.count("--hash=sha256:") >= len(pins)
    # every direct dependency of the package is locked, at a version its requirement admits
    from packaging.requirements import Requirement

    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins and req.specifier.contains(pins[name]), (spec, pins.get(name))
    # the binary wheels have one hash per architecture (amd64 and arm64)
    for name in ("pyyaml", "charset_normalizer"):
        block = text.split(f"{name}==", 1)[1].split("==", 1)[0]
        assert block.count("--hash=sha256:") >= 2, name


@pytest.fixture(scope="module")
def image() -> str:
    binary("docker")
    need(docker("info", check=False, timeout=30).returncode == 0,
         "no Docker daemon running (start one: dockerd --iptables=false --bridge=none &)")
    status = os.environ.get("FLEETWATCH_IMAGE_BUILD")
    if status:  # .ci/run builds in the background while the rest of the suite runs
        deadline = time.monotonic() + BUILD_WAIT
        while not Path(status).exists() and time.monotonic() < deadline:
            time.sleep(2)
        assert Path(status).exists(), f"the background image build did not finish in {BUILD_WAIT:g} s"
        assert Path(status).read_text().strip() == "0", f"the image build failed: see {status}.log"
    elif docker("image", "inspect", IMAGE, check=False).returncode != 0:
        binary("debootstrap")
        r = subprocess.run([str(ROOT / "deploy" / "build-image.sh"), IMAGE], capture_output=True, text=True,
                           timeout=BUILD_WAIT)
        assert r.returncode == 0, r.stderr[-3000:]
    return IMAGE


def test_image_runs_as_65532_without_build_tools(image: str) -> None:
    cfg = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Healthcheck"]["Test"][0] == "CMD"
    r = docker("run", "--rm", "--network=none", "--read-only", "--entrypoint", "python3", image, "-c",
               "import os, shutil, importlib.util as u; print(os.getuid(), os.getgid(), "
               "[t for t in ('gcc', 'cc', 'make', 'pip', 'pip3') if shutil.which(t)], "
               "u.find_spec('pip') is not None, u.find_spec('ensurepip') is not None)")
    assert r.stdout.strip().split(maxsplit=2) == ["65532", "65532", "[] False False"], r.stdout
    # the installed package is this checkout's: its serve --help documents sidecar mode
    r = docker("run", "--rm", "--network=none", "--read-only", image, "serve", "--help")
    assert "sidecar mode" in r.stdout and "--tier" in r.stdout, r.stdout


def test_image_holds_exactly_the_locked_dependencies_and_says_what_it_is(image: str) -> None:
    r = docker("run", "--rm", "--network=none", "--read-only", "--entrypoint", "python3", image, "-c",
               "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version "
               "for d in m.distributions()}))")
    installed = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in json.loads(r.stdout).items()}
    assert installed.pop("fleetwatch") == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert installed == locked()
    labels = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "fleetwatch"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == installed_version(image)
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels["org.opencontainers.image.revision"])


def installed_version(image: str) -> str:
    return docker("run", "--rm", "--network=none", "--entrypoint", "python3", image, "-c",
                  "import importlib.metadata as m; print(m.version('fleetwatch'))").stdout.strip()


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[Path]:
    """A simulated fleet on loopback, and its config where UID 65532 in the container can read it:
    the plans inlined (the demo's config names them by host path), the folder world-readable."""
    demo = start_fleet("healthy", interval=1.0, window=10.0)
    try:
        doc = yaml.safe_load(Path(demo.config.path).read_text())
        for tier in doc["tiers"].values():
            tier["plan"] = yaml.safe_load(Path(tier["plan"]).read_text())
        folder = tmp_path / "etc"
        folder.mkdir()
        (folder / "fleet.yaml").write_text(yaml.safe_dump(doc))
        folder.chmod(0o755)
        (folder / "fleet.yaml").chmod(0o644)
        yield folder / "fleet.yaml"
    finally:
        demo.close()


def test_image_serves_metrics_and_healthz_read_only(image: str, fleet: Path) -> None:
    port = free_port()
    # host networking: the daemon runs without a bridge here, and the simulated fleet is on loopback
    cid = docker("run", "--detach", "--read-only", "--user", "65532", "--network=host", "--cap-drop=ALL",
                 "--security-opt=no-new-privileges", "--health-interval=1s", "--health-start-period=1s",
                 "-e", f"FLEETWATCH_LISTEN=127.0.0.1:{port}", "-v", f"{fleet.parent}:/etc/fleetwatch:ro",
                 image, "serve", "--config", f"/etc/fleetwatch/{fleet.name}").stdout.strip()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline, body, health = time.monotonic() + 60, "", ""
        while time.monotonic() < deadline:
            if docker("inspect", "--format", "{{.State.Running}}", cid).stdout.strip() != "true":
                break  # it exited: the logs below say why
            try:
                body = requests.get(base + "/metrics", timeout=2).text
                health = docker("inspect", "--format", "{{.State.Health.Status}}", cid).stdout.strip()
                if "fleetwatch_cycles_total" in body and 'fleetwatch_target_up{instance="h100-0"' in body \
                        and health == "healthy":
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        assert health == "healthy", docker("logs", cid).stderr[-2000:]
        assert requests.get(base + "/healthz", timeout=2).status_code == 200
        up = [line for line in body.splitlines() if line.startswith("fleetwatch_target_up{")]
        assert up and all(line.endswith(" 1.0") for line in up), up
        assert docker("exec", cid, "python3", "-c", "import os; print(os.getuid())").stdout.strip() == "65532"
        # the root filesystem really is read-only
        r = docker("exec", cid, "python3", "-c", "open('/opt/fleetwatch/x', 'w')", check=False)
        assert r.returncode != 0 and "Read-only file system" in r.stderr
    finally:
        docker("stop", "--time", "10", cid, check=False)
        logs = docker("logs", cid, check=False)
        docker("rm", "-f", cid, check=False)
    assert "stopped" in logs.stderr, logs.stderr[-2000:]  # SIGTERM: a clean shutdown, not a kill
