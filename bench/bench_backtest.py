"""`fleetwatch backtest` over a week: 3 tiers, 30 instances, a cycle every 5 minutes, against a local Prometheus.

Prints a table. Run: python bench/bench_backtest.py [--days 7] [--instances 10] [--scrape 120] [--step 300]
Needs `prometheus` and `promtool` on PATH (Debian: apt-get install prometheus).

- history: the demo's engine model (its healthy fleet) simulated for ``--sim`` seconds at ``--scrape``; each
  instance of each tier then replays one simulated engine's per-scrape increments over ``--days``, scaled by a
  day's curve (30% at night to 120% of the simulated load in the afternoon), so counters and histograms grow as a
  week of traffic would. A third tier, h200, replays the h100 engines. Only the series fleetwatch's queries read
  are kept;
- store: written as OpenMetrics and turned into TSDB blocks by `promtool tsdb create-blocks-from openmetrics`,
  then served by a Prometheus on that directory (the blocks are kept under --cache between runs);
- replay: `fleetwatch backtest` in a fresh process over the whole week: its wall time, its CPU, Prometheus's CPU
  during it, the range queries, and the peak RSS. The baseline, in the same run, is the same command replaying
  one cycle at the week's end (start-up, the history read, one evaluation): the price of one live cycle.
- not included: the GPUs' series (dcgm-exporter); their rows are unknown in this replay.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_backed import cpu_of, simulate  # noqa: E402 - after the path

PLANS = ROOT / "exporter" / "demo" / "plans"
COUNTER = re.compile(r"(_total|_bucket|_count|_sum)$")


def read_by_backtest() -> set[str]:
    """The series names the backtest's questions read (the catalogue's PromQL, the findings' percentiles)."""
    from exporter.backtest import questions
    from exporter.config import load_config

    work = Path(tempfile.mkdtemp(prefix="fw-bench-bt-"))
    cfg = write_config(work, "http://127.0.0.1:1", 120.0)
    exprs = " ".join(questions(load_config(str(cfg))))
    names = set(re.findall(r"[A-Za-z_:][\w:]*", exprs))
    shutil.rmtree(work)
    return names | {"up"}


def day_shape(t: float) -> float:
    """Load over a day: 30% at 04:00, 120% at 16:00 (UTC)."""
    return 0.75 - 0.45 * math.cos(2 * math.pi * ((t % 86400) - 4 * 3600) / 86400)


BLOCK = 7200.0  # promtool writes 2 h blocks, and reads its whole input for each: one input file per block


def openmetrics(out_dir: Path, days: float, scrape: float, per_tier: int, sim_seconds: float, end: float
                ) -> list[Path]:
    """Write the week as OpenMetrics, one file per 2 h block (series one after another, families together):
    the files, oldest first."""
    stamps, sim = simulate(sim_seconds / 3600, scrape)
    sim["h200"] = sim["h100"]
    wanted = read_by_backtest()
    n = int(days * 86400 / scrape)
    times = [end - (n - k) * scrape for k in range(1, n + 1)]
    shape = [day_shape(t) for t in times]
    series: list[tuple[str, str, list[float]]] = []  # (name, labels, one simulated engine's values)
    for ti, tier in enumerate(sorted(sim)):
        for i in range(per_tier):
            engine, _ = sim[tier][i % len(sim[tier])]
            labels = f'tier="{tier}",namespace="llm",pod="{tier}-vllm-{i}",job="llm-engines",' \
                     f'instance="10.{ti}.{i // 250}.{i % 250}:8000"'
            series.append(("up", labels, [1.0]))
            for (name, lab), values in engine.items():
                if name in wanted and len(values) == len(stamps):
                    inner = ",".join(f'{k}="{v}"' for k, v in lab if k not in ("tier", "pod", "namespace", "instance",
                                                                                  "job"))
                    series.append((name, (inner + "," if inner else "") + labels, values))
    series.sort(key=lambda s: s[0])  # a family's series together
    totals = [values[0] for _, _, values in series]  # each counter's running value, carried across files
    files: list[Path] = []
    k = 0
    while k < n:
        block_end = (math.floor(times[k] / BLOCK) + 1) * BLOCK
        ks = [j for j in range(k, n) if times[j] < block_end]
        path = out_dir / f"part-{len(files):04d}.om"
        with path.open("w") as out:
            for idx, (name, labels, values) in enumerate(series):
                if name == "up":
                    out.writelines(f"up{{{labels}}} 1 {times[j]:.0f}\n" for j in ks)
                elif COUNTER.search(name):
                    incs = [max(0.0, b - a) for a, b in zip(values, values[1:])] or [0.0]
                    total = totals[idx]
                    for j in ks:
                        total += incs[j % len(incs)] * shape[j]
                        out.write(f"{name}{{{labels}}} {total:.6g} {times[j]:.0f}\n")
                    totals[idx] = total
                else:
                    out.writelines(f"{name}{{{labels}}} {values[j % len(values)] * shape[j]:.6g} {times[j]:.0f}\n"
                                   for j in ks)
            out.write("# EOF\n")
        files.append(path)
        k = ks[-1] + 1
    return files


def write_config(work: Path, url: str, window: float) -> Path:
    tiers = "".join(f"  {t}: {{plan: {PLANS / (t if t != 'h200' else 'h100')}.yaml}}\n" for t in ("a100", "h100", "h200"))
    path = work / "fleet.yaml"
    path.write_text(f"source:\n  prometheus: {{url: \"{url}\", instance_label: pod}}\ninterval: 60s\n"
                    f"window: {window:g}s\nscrape_timeout: 30s\ntiers:\n{tiers}")
    return path


def run(cmd: list[str], prom_pid: int) -> dict[str, float]:
    """``cmd`` in a fresh process: its wall time, CPU (every thread, children included) and Prometheus's CPU."""
    p0 = cpu_of(prom_pid)
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", *cmd], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"{cmd[3]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    user, system, rss_kb = proc.stderr.strip().splitlines()[-1].split()
    return {"wall": wall, "cpu": float(user) + float(system), "rss_mb": int(rss_kb) / 1024,
            "prom_cpu": cpu_of(prom_pid) - p0, "stdout": proc.stdout}  # type: ignore[dict-item]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--instances", type=int, default=10, help="per tier (3 tiers)")
    ap.add_argument("--scrape", type=float, default=120.0, help="seconds between the stored samples")
    ap.add_argument("--step", type=float, default=300.0, help="the backtest's step")
    ap.add_argument("--sim", type=float, default=1200.0, help="simulated seconds each instance replays")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "fw-bench-backtest"))
    args = ap.parse_args()
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prometheus or not promtool:
        sys.exit("bench_backtest: prometheus and promtool are needed (Debian: apt-get install prometheus)")
    cache = Path(args.cache) / f"d{args.days:g}-i{args.instances}-s{args.scrape:g}"
    data = cache / "data"
    end_file = cache / "end"
    if not end_file.exists():
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        end = math.floor(time.time() / 3600) * 3600 - 3 * 3600  # whole hours, clear of Prometheus's head block
        t0 = time.perf_counter()
        files = openmetrics(cache, args.days, args.scrape, args.instances, args.sim, end)
        size = sum(f.stat().st_size for f in files)
        print(f"wrote {len(files)} OpenMetrics files ({size / 2**20:,.0f} MiB) in {time.perf_counter() - t0:.0f} s",
              flush=True)
        t0 = time.perf_counter()
        for f in files:
            subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(f), str(data)], check=True,
                           stdout=subprocess.DEVNULL)
            f.unlink()
        print(f"promtool made the blocks in {time.perf_counter() - t0:.0f} s", flush=True)
        end_file.write_text(str(end))
    end_at = float(end_file.read_text())
    port = 19390 + os.getpid() % 500
    url = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="fw-bench-bt-"))
    (work / "prometheus.yml").write_text("global: {scrape_interval: 1h}\n")
    prom = subprocess.Popen([prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={data}",
                             "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=error"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                if requests.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        config = write_config(work, url, 10 * 60.0)
        start = end_at - args.days * 86400 + 3600
        base = [sys.executable, "-m", "exporter"]
        # the baseline: the same command replaying one cycle (start-up, the history read, one evaluation)
        check = run(base + ["backtest", "-c", str(config), "--from", f"{end_at - 1:.0f}", "--to", f"{end_at:.0f}", "--format",
                            "json"], prom.pid)
        bt = run(base + ["backtest", "-c", str(config), "--from", f"{start:.0f}", "--to", f"{end_at:.0f}", "--step",
                         f"{args.step:g}s", "--format", "json"], prom.pid)
        import json

        doc = json.loads(str(bt["stdout"]))
        steps = sum(len(v) for v in doc["steps"].values()) // len(doc["steps"])
        print(f"\nbacktest over {args.days:g} days, {3 * args.instances} instances in 3 tiers, samples every "
              f"{args.scrape:g} s, a cycle every {args.step:g} s ({steps:,} cycles, {doc['range_queries']} range "
              f"queries); {os.cpu_count()} cores\n")
        print("| run | wall | fleetwatch CPU | Prometheus CPU | peak RSS |")
        print("|---|---|---|---|---|")
        for name, r in (("one cycle (baseline)", check), ("the whole stretch", bt)):
            print(f"| {name} | {r['wall']:.1f} s | {r['cpu']:.1f} s | {r['prom_cpu']:.1f} s | {r['rss_mb']:.0f} MB |")
        print(f"\nper replayed cycle: {bt['wall'] / steps * 1000:.1f} ms of wall time, against {check['wall'] * 1000:.0f} "
              f"ms for one live cycle ({check['wall'] / (bt['wall'] / steps):.0f}x)")
    finally:
        prom.terminate()
        prom.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
