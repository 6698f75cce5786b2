"""The live terminal view, in a real terminal: tmux runs `fleetwatch demo` in a 100 x 40 pane and the
test reads the pane as a user would see it. Pipes and TERM=dumb keep the plain reports."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from exporter.live import changes, sparkline

from conftest import binary

ROOT = Path(__file__).resolve().parents[1]


def test_sparkline_scales_to_its_own_range_and_keeps_gaps() -> None:
    assert sparkline([1.0, 2.0, None, 3.0]) == "▁▅ █"
    assert sparkline([5.0, 5.0]) == "▁▁" and sparkline([None, None]) == ""
    assert len(sparkline([float(i) for i in range(100)])) == 24


class Pane:
    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.name = f"fw-{uuid.uuid4().hex[:8]}"
        # a tmux server of its own: a pane created as another's server exits would join a dying server
        self.tmux = [binary("tmux"), "-L", self.name]
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        subprocess.run([*self.tmux, "new-session", "-d", "-s", self.name, "-x", "100", "-y", "40",
                        # the pane's own size, not a COLUMNS/LINES the caller's environment may carry
                        f"cd {ROOT} && env -u COLUMNS -u LINES {exports} {sys.executable} -m exporter {command}; "
                        "sleep 120"], check=True)

    def screen(self, escapes: bool = False, scrollback: bool = False) -> str:
        args = [*self.tmux, "capture-pane", "-p", "-t", self.name] + (["-e"] if escapes else []) + (
            ["-S", "-"] if scrollback else [])
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout

    def scrolled(self) -> int:
        return int(subprocess.run([*self.tmux, "display", "-p", "-t", self.name, "#{history_size}"],
                                  capture_output=True, text=True, check=True).stdout)

    def wait_for(self, pattern: str, seconds: float, scrollback: bool = False) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            text = self.screen(scrollback=scrollback)
            if re.search(pattern, text):
                return text
            time.sleep(0.5)  # polling a real process's terminal
        raise AssertionError(f"{pattern!r} never appeared; the pane:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


@pytest.mark.integration
def test_demo_live_view_shows_the_verdict_in_one_redrawn_screen() -> None:
    pane = Pane("demo --scenario undersized --duration 60s", {"TERM": "xterm-256color"})
    try:
        # a whole screen (a capture can fall in the middle of a redraw): from the title to the footer
        text = pane.wait_for(r"t=40s[\s\S]*\n(CRITICAL|no critical finding)\n", 90)
        coloured = pane.screen(escapes=True)
        scrolled = pane.scrolled()
    finally:
        pane.close()
    lines = text.rstrip("\n").splitlines()
    # the a100 verdict with its count, as the demo's own report gives it (3 deployed, undersized)
    m = re.search(r"^a100\s+3/3 up\s+scale_up → (\d+)", text, re.M)
    assert m and int(m.group(1)) > 3, text
    assert re.search(r"tier a100 needs \d+ instances, has 3", text), text
    # one screen: the title and the last line both in the 40-line pane, nothing scrolled off after
    # eight reports (printed one after the other they would be hundreds of lines)
    assert len(lines) <= 40 and any(ln.startswith("fleetwatch demo: scenario undersized  t=40s") for ln in lines)
    assert lines[-1] in ("CRITICAL", "no critical finding")
    assert scrolled == 0, f"{scrolled} lines scrolled off: the view grew instead of redrawing"
    assert "\x1b[" in coloured  # statuses in colour
    # every row shown is a key row or a row that is not ok
    assert "ttft_p99_seconds" in text and "queue_depth_requests" in text


@pytest.mark.integration
def test_no_color_and_dumb_terminals_and_pipes_get_what_they_can_show() -> None:
    pane = Pane("demo --scenario healthy --duration 10s", {"TERM": "xterm-256color", "NO_COLOR": "1"})
    try:
        pane.wait_for(r"t=5s", 60)
        plain = pane.screen(escapes=True)
    finally:
        pane.close()
    assert not re.search(r"\x1b\[[0-9;]*3[0-7]m|\x1b\[[0-9;]*38;", plain), "NO_COLOR: no colour codes"
    dumb = Pane("demo --scenario healthy --duration 5s", {"TERM": "dumb"})
    try:
        # the plain reports, one after another, scrolling as a log does
        text = dumb.wait_for(r"--- t=5s scenario=healthy ---", 60, scrollback=True)
        assert "--- t=0s scenario=healthy ---" in text and dumb.scrolled() > 0
    finally:
        dumb.close()
    piped = subprocess.run([sys.executable, "-m", "exporter", "demo", "--duration", "5s"], capture_output=True,
                           text=True, timeout=120, cwd=ROOT, env={**os.environ, "TERM": "xterm-256color"})
    assert piped.returncode == 0 and "--- t=0s scenario=healthy ---" in piped.stdout and "\x1b[" not in piped.stdout


def test_serve_watch_needs_a_terminal() -> None:
    r = subprocess.run([sys.executable, "-m", "exporter", "serve", "-c", str(ROOT / "examples" / "minimal.yaml"),
                        "--watch"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and "--watch needs a terminal" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_changes_name_what_moved() -> None:
    from dataclasses import replace

    from exporter.demo.run import SimClock, reports, start_fleet

    demo = start_fleet("undersized")
    try:
        got = list(reports(demo, SimClock(demo.fleet), 10.0))
    finally:
        demo.close()
    a, b = got[-2][1], got[-1][1]
    assert changes(None, b) == [] and changes(b, b) == []
    t = b.tiers["a100"]
    moved = replace(b, tiers={**b.tiers, "a100": replace(t, resize=replace(t.resize, recommended_instances=99))})
    assert any(c.startswith("a100 resize") and c.endswith(" 99") for c in changes(a, moved))
