"""Speed and memory of the hot path, against baselines measured in the same run.

Prints a table. Run: python bench/bench_pipeline.py [--fixtures tests/fixtures]
- parse: fleetwatch's selective parser vs prometheus_client's text_string_to_metric_families
  on the same vLLM 0.33 scrape (the baseline any Python exporter would reach for);
- evaluate: one tier's full evaluation (rows, plan checks, guardrails, drift and mixed-tier findings)
  over a 5m window of N instances x 21 scrapes, against computing the catalogue rows alone;
- peak memory (tracemalloc) of holding that window.
"""
from __future__ import annotations

import math
from typing import Callable

import argparse
import statistics
import time
import tracemalloc
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from exporter.catalogue import ROWS
from exporter.model import Benchmark, Plan, Slo, Target, TierConfig
from exporter.evaluate import evaluate_window
from exporter.model import InstanceSample
from exporter.sources import vllm
from exporter.window import tier_window


def timeit(fn: Callable[[], object], repeat: int = 7, number: int = 5, clock: Callable[[], float] = time.perf_counter,
           pick: Callable[[list[float]], float] = statistics.median) -> float:
    """Seconds per call of ``fn``: ``pick`` (the median) of ``repeat`` runs of ``number`` calls on ``clock``."""
    runs = []
    for _ in range(repeat):
        t0 = clock()
        for _ in range(number):
            fn()
        runs.append((clock() - t0) / number)
    return pick(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 8, 32])
    args = ap.parse_args()
    folder = Path(args.fixtures) / "vllm/generated/vllm-0.33.0"
    texts = [(folder / f"snapshot-{i:02d}.prom").read_text() for i in range(21)]
    text = texts[-1]
    rows = []
    base = timeit(lambda: list(text_string_to_metric_families(text)))
    ours = timeit(lambda: vllm.parse(text))
    rows.append(("parse vLLM 0.33 scrape (%d kB)" % (len(text) // 1024), "prometheus_client parser",
                 base * 1e3, ours * 1e3))
    plan = Plan(2, 4, 4.1, 24, 0.2, Slo(2.0, 0.05), Benchmark(8, 1.2, 0.035, 0.78))
    parsed = [vllm.parse(t) for t in texts]
    for n in args.instances:
        names = [f"i{i}" for i in range(n)]
        samples = [InstanceSample("h100", name, 15.0 * k, e) for name in names for k, e in enumerate(parsed)]
        tier = TierConfig("h100", plan, tuple(Target(nm, "vllm", "http://x/metrics") for nm in names))
        # a fresh window each run: a window caches its histogram increases
        t = timeit(lambda: evaluate_window(tier, tier_window("h100", samples, names), [], 300.0), repeat=3, number=1)
        # baseline: the catalogue rows alone, without plan checks, guardrails and findings
        b = timeit(lambda: [row.compute(w, plan) for w in [tier_window("h100", samples, names)] for row in ROWS],
                   repeat=3, number=1)
        tracemalloc.start()
        kept = [vllm.parse(texts[k]) for _ in names for k in range(21)]
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del kept
        rows.append((f"evaluate tier, {n} instances x 21 scrapes", "catalogue rows only", b * 1e3, t * 1e3))
        rows.append((f"memory of that window ({n} x 21 parsed scrapes)", "-", math.nan, peak / 2**20))
    print(f"{'what':<48} {'baseline':<26} {'baseline':>10} {'fleetwatch':>11} {'ratio':>7}")
    for what, bname, b, o in rows:
        unit = "MiB" if what.startswith("memory") else "ms"
        bs = f"{b:.2f}{unit}" if not math.isnan(b) else "-"
        ratio = f"{b / o:.1f}x" if not math.isnan(b) else "-"
        print(f"{what:<48} {bname:<26} {bs:>10} {o:>9.2f}{unit:>2} {ratio:>7}")


if __name__ == "__main__":
    main()
