"""How much headroom the demo's simulator and pipeline have, against the budgets they run in.

Prints a table. Run: python bench/bench_demo.py
- simulation: simulated fleet-seconds per wall-second, default fleet (7 instances), per scenario;
  the baseline is real time (1.0x), which the interactive demo needs;
- cycle: one pipeline cycle against the simulated fleet over loopback HTTP (10 scrapes + evaluate),
  against the demo's 5 s interval;
- memory: peak traced allocation of the fleet plus a full 30 s window.
"""
from __future__ import annotations

import time
import tracemalloc

from exporter.daemon import Pipeline
from exporter.demo.run import INTERVAL_SECONDS, SimClock, reports, start_fleet
from exporter.scrape import Scraper


def simulation_speed(scenario: str, seconds: float = 60.0) -> float:
    demo = start_fleet(scenario, warmup=0.0)
    try:
        t0 = time.perf_counter()
        demo.fleet.advance(seconds)
        return seconds / (time.perf_counter() - t0)
    finally:
        demo.close()


def cycle_time() -> tuple[float, float]:
    demo = start_fleet("healthy")
    try:
        clock = SimClock(demo.fleet)
        scraper = Scraper(demo.config, clock=clock.now)
        pipeline = Pipeline(demo.config, scraper, clock=clock.now)
        times = []
        for k in range(8):
            clock.wait_until(k * INTERVAL_SECONDS)
            t0 = time.perf_counter()
            pipeline.cycle()
            times.append(time.perf_counter() - t0)
        scraper.close()
        return min(times[2:]), max(times[2:])
    finally:
        demo.close()


def memory_mib() -> float:
    tracemalloc.start()
    demo = start_fleet("healthy")
    try:
        for _ in reports(demo, SimClock(demo.fleet), 35.0):
            pass
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
        demo.close()


def main() -> None:
    rows = []
    for sc in ("healthy", "undersized", "kv-pressure"):
        rows.append((f"simulate 60 s of the fleet ({sc})", "1.0x (real time)", f"{simulation_speed(sc):.1f}x"))
    lo, hi = cycle_time()
    rows.append(("one pipeline cycle (10 scrapes + evaluate)", f"{INTERVAL_SECONDS:g} s interval",
                 f"{lo * 1000:.0f}-{hi * 1000:.0f} ms"))
    rows.append(("peak memory, fleet + 30 s window", "-", f"{memory_mib():.0f} MiB"))
    w = max(len(r[0]) for r in rows)
    print(f"{'what':<{w}}  {'budget / baseline':<18}  measured")
    for what, base, got in rows:
        print(f"{what:<{w}}  {base:<18}  {got}")


if __name__ == "__main__":
    main()
