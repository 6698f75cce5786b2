"""The time bounds the tests assert only by counts: how long each bounded thing really takes.

Prints a table, each bound beside a baseline measured in the same run. Run: python bench/bench_lifecycle.py
- a fetch from a target that drips, hangs or never ends its body, against the fetch's deadline;
- an Alertmanager POST to one that drips its headers, against the client's timeout;
- `validate-config` refusing a hostile file (huge, deeply nested, an alias bomb), against the same
  command on the smallest valid config (the interpreter's and the package's own start);
- `serve` beside a target of every hostile kind: SIGTERM to exit, against interval + scrape_timeout;
- `serve` reading a Prometheus whose queries drip and whose history hangs: SIGTERM to exit, the same bound;
- the cycle's duration beside six dripping Alertmanagers, against the same fleet with none.
"""
from __future__ import annotations

import argparse
import logging
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from exporter.alertmanager import Alert, AlertmanagerClient  # noqa: E402
from exporter.fetch import FetchError, fetch_text, new_session  # noqa: E402
from fakes import FakeTarget, free_port, refused_url, write_config  # noqa: E402

MINIMAL = (ROOT / "examples" / "minimal.yaml").read_text(encoding="utf-8")


def _alias_bomb(levels: int) -> str:
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text + MINIMAL.replace("tiers:", f"interval: *a{levels}\ntiers:", 1)


HOSTILE_CONFIGS: dict[str, Callable[[], str]] = {
    "50 MB file": lambda: MINIMAL + ("# " + "x" * 1022 + "\n") * (50 * 1024),
    "nested 5,000 deep": lambda: "tiers: " + "[" * 5000 + "]" * 5000 + "\n",
    "alias bomb, 9 levels": lambda: _alias_bomb(9),
}


def fetch_rows(repeat: int) -> list[tuple[str, float, list[float]]]:
    out = []
    for mode in ("drip", "header-drip", "chunked", "hang"):
        target = FakeTarget(mode=mode, drip_seconds=0.1)
        session = new_session()
        took = []
        try:
            for _ in range(repeat):
                t0 = time.monotonic()
                try:
                    fetch_text(session, target.url, timeout=0.5, max_bytes=1 << 20)
                except FetchError:
                    pass
                took.append(time.monotonic() - t0)
        finally:
            session.close()
            target.close()
        out.append((f"fetch from a {mode} target", 0.5, took))
    am = FakeTarget(mode="header-drip", drip_seconds=0.1)
    client = AlertmanagerClient([am.url.rsplit("/metrics", 1)[0]], interval=15, timeout=1.5)
    took = []
    try:
        for k in range(repeat):
            client.update([Alert({"alertname": "FleetwatchResizeTrigger", "tier": f"t{k}"}, {"summary": "x"})],
                          now=1000.0 + k)
            t0 = time.monotonic()
            client.flush()
            took.append(time.monotonic() - t0)
    finally:
        client.close()
        am.close()
    out.append(("Alertmanager POST, headers dripped", 1.5, took))
    return out


def _validate(path: str) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "exporter", "validate-config", path], capture_output=True, cwd=ROOT)
    return time.monotonic() - t0


def config_rows(folder: Path, repeat: int) -> tuple[list[float], list[tuple[str, list[float]]]]:
    good = folder / "minimal.yaml"
    good.write_text(MINIMAL, encoding="utf-8")
    baseline = [_validate(str(good)) for _ in range(repeat)]
    out = []
    for name, make in HOSTILE_CONFIGS.items():
        f = folder / "hostile.yaml"
        f.write_text(make(), encoding="utf-8")
        out.append((name, [_validate(str(f)) for _ in range(repeat)]))
    return baseline, out


def sigterm_rows(folder: Path, repeat: int) -> list[float]:
    modes = ("hang", "drip", "header-drip", "chunked", "huge", "gzip-bomb")
    targets = [FakeTarget(mode=m) for m in modes]
    good = FakeTarget(["vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 1\n"])
    cfg = write_config(str(folder / "serve.yaml"), {
        "good": [{"vllm": good.url, "name": "good"}],
        "bad": [{"vllm": refused_url(), "name": "refused"}] + [{"vllm": t.url, "name": m} for t, m in zip(targets, modes)]},
        extra="interval: 2s")
    took = []
    try:
        for _ in range(repeat):
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", cfg, "--listen",
                                     f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
            assert proc.stderr is not None
            for line in proc.stderr:
                if re.search(r"cycle 2 done", line):
                    break
            # cycle 3 starts about 0.4 s later and waits 1.6 s for the hostile targets: signal it halfway
            time.sleep(1.0)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
            took.append(time.monotonic() - t0)
    finally:
        for t in (*targets, good):
            t.close()
    return took


def _sigterm_after(cfg: str, cycles_line: str) -> float:
    """Start serve on ``cfg``, wait for ``cycles_line`` in its log, signal it mid-cycle; seconds to exit."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", cfg, "--listen",
                             f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stderr is not None
    for line in proc.stderr:
        if re.search(cycles_line, line):
            break
    time.sleep(0.5)  # into the next cycle
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    return time.monotonic() - t0


def prometheus_rows(folder: Path, repeat: int) -> list[float]:
    """serve reading a Prometheus whose cycle queries drip and whose history range query hangs."""
    from fakes import FakePrometheus

    prom = FakePrometheus({"query": "drip", "query_range": "hang"})
    cfg = folder / "backed.yaml"
    cfg.write_text(f"interval: 2s\nscrape_timeout: 1s\nsource:\n  prometheus: {{url: '{prom.url}'}}\n"
                   f"tiers:\n  h100: {{plan: {ROOT / 'examples' / 'plans' / 'h100.yaml'}}}\n")
    try:
        return [_sigterm_after(str(cfg), r"cycle failed") for _ in range(repeat)]
    finally:
        prom.close()


def alertmanager_cycle_rows(folder: Path) -> tuple[list[float], list[float]]:
    """Cycle durations (the daemon's own gauge) beside six dripping Alertmanagers, and without any."""
    good = FakeTarget(["vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 1\n"])
    ams = [FakeTarget(mode="header-drip", drip_seconds=0.1) for _ in range(6)]
    out = []
    try:
        for with_ams in (False, True):
            am_list = ", ".join(f"'{a.url.rsplit('/metrics', 1)[0]}'" for a in ams) if with_ams else ""
            cfg = write_config(str(folder / "am.yaml"), {"h100": [{"vllm": good.url, "name": "up"},
                                                                  {"vllm": refused_url(), "name": "down"}]},
                               extra=f"interval: 1s\nscrape_timeout: 0.5s\nalertmanagers: [{am_list}]")
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", cfg, "--listen",
                                     f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL, cwd=ROOT)
            import requests

            took: list[float] = []
            seen = 0.0
            try:
                while len(took) < 10:
                    time.sleep(0.2)  # polling another process
                    try:
                        page = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                    except requests.RequestException:
                        continue
                    m = dict(re.findall(r"^(fleetwatch_cycle(?:s_total|_duration_seconds)) (\S+)$", page, re.M))
                    if float(m.get("fleetwatch_cycles_total", 0)) > seen:
                        seen = float(m["fleetwatch_cycles_total"])
                        took.append(float(m["fleetwatch_cycle_duration_seconds"]))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=60)
            out.append(took)
    finally:
        for t in (good, *ams):
            t.close()
    return out[0], out[1]


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the client's retry warnings are expected here
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"{'what':<50} {'bound / baseline':>17} {'median':>8} {'worst':>8}")

    def row(what: str, bound: str, xs: list[float]) -> None:
        print(f"{what:<50} {bound:>17} {statistics.median(xs):>7.3f}s {max(xs):>7.3f}s")

    for what, bound, xs in fetch_rows(args.repeat):
        row(what, f"deadline {bound:g}s", xs)
    with tempfile.TemporaryDirectory() as tmp:
        baseline, hostile = config_rows(Path(tmp), args.repeat)
        row("validate-config, the smallest valid config", "baseline", baseline)
        for name, xs in hostile:
            row(f"validate-config refuses: {name}", f"{statistics.median(baseline):.2f}s + refusal", xs)
        row("serve beside 7 hostile targets: SIGTERM to exit", "2s + 1.6s = 3.6s", sigterm_rows(Path(tmp), args.repeat))
        row("serve, Prometheus drips, history hangs: SIGTERM", "2s + 1s = 3s", prometheus_rows(Path(tmp), args.repeat))
        alone, dripping = alertmanager_cycle_rows(Path(tmp))
        row("cycle with no Alertmanager", "baseline", alone)
        row("cycle beside 6 dripping Alertmanagers", f"{statistics.median(alone):.2f}s, interval 1s", dripping)


if __name__ == "__main__":
    main()
