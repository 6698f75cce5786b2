"""How close the generated recording rules come to fleetwatch's own numbers, in steady state.

A real Prometheus scrapes the demo's simulated fleet (healthy scenario) and fleetwatch every
--interval and evaluates the generated rules as often; fleetwatch scrapes the same engines on its
own schedule. Every --every seconds this reads each tier's fleetwatch_<row> gauge and the rule's
tier:fleetwatch_<row>:... series, and prints, per row, the median and largest relative
difference, in the first window after start and afterwards. Same data, different readings: the
rules' ranges start at Prometheus's evaluation instant, fleetwatch's window on its own scrapes.
Run: python bench/rules_vs_fleetwatch.py [--seconds 120] (needs prometheus on PATH)
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import requests  # noqa: E402

from exporter.demo.scenarios import SCENARIOS  # noqa: E402
from exporter.render.rules import build  # noqa: E402

from realbins import Prometheus  # noqa: E402
from test_e2e import fleet_and_fleetwatch, prometheus_config  # noqa: E402

ROWS = ("requests_per_second", "ttft_p50_seconds", "ttft_p99_seconds", "itl_p50_seconds", "itl_p99_seconds",
        "kv_cache_utilization_ratio", "kv_cache_eviction_ratio", "prefix_cache_hit_ratio", "queue_depth_requests",
        "gpu_compute_utilization_ratio", "gpu_memory_utilization_ratio")


def _fleetwatch(url: str) -> dict[tuple[str, str], float]:
    out = {}
    for line in requests.get(url, timeout=5).text.splitlines():
        for row in ROWS:
            prefix = f"fleetwatch_{row}{{tier=\""
            if line.startswith(prefix):
                tier = line[len(prefix):].split('"', 1)[0]
                out[(row, tier)] = float(line.rsplit(" ", 1)[1])
    return out


def _largest(xs: list[float]) -> float:
    return max(xs, key=abs)


def _pct(xs: list[float], f: Callable[[list[float]], float]) -> str:
    return f"{f(xs) * 100:+.1f}%" if xs else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--window", type=float, default=15.0)
    ap.add_argument("--every", type=float, default=2.0)
    args = ap.parse_args()
    prom_bin = shutil.which("prometheus")
    if prom_bin is None:
        print("prometheus not installed (apt-get install prometheus)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-"))
    diffs: dict[tuple[str, bool], list[float]] = {}
    with fleet_and_fleetwatch(SCENARIOS["healthy"], args.interval, args.window) as (demo, fw_url):
        prom = None
        try:
            ivl = f"{int(args.interval * 1000)}ms"
            for name, text in build(demo.config, for_="1m", eval_interval=ivl).items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_text(text)
            cfg = prometheus_config(demo, fw_url, tmp / "fleetwatch.rules.yml", "http://127.0.0.1:1")
            cfg = cfg.replace("scrape_interval: 1s", f"scrape_interval: {ivl}").replace(
                "evaluation_interval: 1s", f"evaluation_interval: {ivl}")
            prom = Prometheus(prom_bin, cfg)
            started = time.monotonic()
            while time.monotonic() - started < args.seconds:
                time.sleep(args.every)  # sampling two running processes, not simulating time
                first_window = time.monotonic() - started < 2 * args.window
                ours = _fleetwatch(fw_url)
                for r in prom.query('{__name__=~"tier:fleetwatch_.+"}'):
                    name = r["metric"]["__name__"]
                    row = name.split(":")[1][len("fleetwatch_"):]
                    key = (row, r["metric"]["tier"])
                    if row in ROWS and key in ours:
                        theirs = float(r["value"][1])
                        if ours[key] != 0 and theirs == theirs:
                            diffs.setdefault((row, first_window), []).append(theirs / ours[key] - 1)
        finally:
            if prom is not None:
                prom.stop()
    print(f"rules / fleetwatch - 1, per tier and sample; interval {args.interval:g}s, window {args.window:g}s, "
          f"{args.seconds:g}s")
    print(f"{'row':<32} {'first window: median':>21} {'max |d|':>8} {'after: median':>14} {'max |d|':>8} {'n':>4}")
    for row in ROWS:
        a, b = diffs.get((row, True), []), diffs.get((row, False), [])
        print(f"{row:<32} {_pct(a, statistics.median):>21} {_pct(a, _largest):>8} "
              f"{_pct(b, statistics.median):>14} {_pct(b, _largest):>8} {len(b):>4}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
