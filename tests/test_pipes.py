"""A reader that goes away (`fleetwatch demo | head`) ends a command quietly, with the status of a command
killed by SIGPIPE, and nothing on stderr."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import refused_url, write_config

ROOT = Path(__file__).resolve().parents[1]
PLAN = ["plan", "--workload", "examples/plan/workload.yaml", "--model", "examples/plan/llama-3-70b.config.json",
        "--gpu", "H100", "--sweep", "examples/plan/sweep.csv"]


def _into_closed_pipe(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run fleetwatch with stdout a pipe whose reader has already gone: its first write fails."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "exporter", *args], stdout=w, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, timeout=120)
    finally:
        os.close(w)


@pytest.mark.parametrize("args", [
    ["demo", "--duration", "5s"],
    ["demo", "--duration", "5s", "--format", "json"],
    PLAN,
    PLAN[:-2] + ["--format", "json"],
    ["dashboards", "-o", "{tmp}"],
    ["rules", "--config", "examples/fleet.yaml", "-o", "{tmp}"],
], ids=["demo", "demo-json", "plan", "plan-json", "dashboards", "rules"])
def test_a_closed_pipe_ends_the_command_quietly(args: list[str], tmp_path: Path) -> None:
    done = _into_closed_pipe([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert done.returncode == 141, (done.returncode, done.stderr[-2000:])
    if "json" in args:  # the demo's banner goes to stderr beside JSON lines, and must still be there
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    else:  # nothing but a note or warning the command gives anyway (rules: a relative runbook link; plan: the
        # utilization trap of the example's workload)
        assert all(ln.startswith(("fleetwatch: note: ", "fleetwatch: warning: ")) for ln in done.stderr.splitlines()), \
            done.stderr


def test_check_into_a_closed_pipe(tmp_path: Path) -> None:
    cfg = write_config(str(tmp_path / "f.yaml"), {"h100": [{"vllm": refused_url(), "name": "gone"}]})
    done = _into_closed_pipe(["--log-level", "error", "check", "--config", cfg, "--window", "0s"])
    assert done.returncode == 141 and done.stderr == "", (done.returncode, done.stderr)


def test_demo_into_head_reads_its_first_line_and_ends() -> None:
    """The shell way: `fleetwatch demo --duration 10s | head -1`."""
    done = subprocess.run(["bash", "-c", f"{sys.executable} -m exporter demo --duration 10s | head -1; "
                                         "exit ${PIPESTATUS[0]}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode in (0, 141), (done.returncode, done.stderr)
    assert done.stdout.startswith("fleetwatch demo: scenario healthy") and done.stdout.count("\n") == 1
    assert done.stderr == ""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_demo_ended_by_a_signal_removes_its_folder(sig: str) -> None:
    """SIGHUP is a closed terminal or a dropped ssh session: the demo cleans up as on SIGTERM or Ctrl-C."""
    import re
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "exporter", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        folder = None
        for line in proc.stdout:  # the banner names the demo's fleet config, in its temporary folder
            m = re.search(r"fleet config: (\S+)/fleet\.yaml", line)
            if m:
                folder = Path(m.group(1))
            if line.startswith("--- t="):  # the first report: everything has started
                break
        assert folder is not None and folder.is_dir()
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(timeout=60) == 0
        assert not folder.exists(), f"{folder} left behind after {sig}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
