"""The Prometheus-backed mode at scale: one `source: prometheus` cycle over 200 to 2,000 instances.

Prints a table. Run: python bench/bench_backed.py [--sizes 200 500 1000 2000] [--hours 1] [--step 15]
Needs `victoria-metrics` on PATH (Debian: apt-get install victoria-metrics).

- history: the demo's engine model (its healthy two-tier fleet, seven simulated vLLM engines and their
  GPUs) run for ``--hours`` at ``--step``, each scrape kept as the series fleetwatch's queries read
  (engine counters, gauges and histograms, the dcgm-exporter fields, ``up``); each synthetic instance
  replays one simulated engine of its tier under its own pod, instance and node labels;
- store: a single-node VictoriaMetrics, fed through its JSON-lines import API, sizes imported one after
  the other into the same store (200, then 300 more, ...);
- cycle: at each size, a fresh process runs what `fleetwatch serve` runs at start and then every
  interval: the history read (one range query), then two cycles (the second measured: the first pays
  for imports); its CPU (every thread), wall time, the wall time of its queries, and its peak RSS. The
  store's own CPU during the measured cycle is read from /proc beside it. The baseline is the smallest
  size, measured in the same run: fleetwatch's own cost should stay flat as the fleet grows, since
  every query aggregates by tier.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLANS = ROOT / "exporter" / "demo" / "plans"
LINE = re.compile(r'^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# the dcgm-exporter labels a synthetic GPU keeps (the rest name the simulated node and pod)
GPU_LABELS = ("gpu", "modelName", "device")


def read_names() -> set[str]:
    """Every series name fleetwatch's queries read in this mode: the engines' and the GPUs'."""
    from exporter import engines as I

    names = {n + s for e in I.ENGINES for v in e.names.values() for n in v for s in ("", "_bucket", "_count")}
    return names | {"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED",
                    "DCGM_FI_PROF_SM_ACTIVE", "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_DEV_GPU_UTIL"}


Series = dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]


def simulate(hours: float, step: float) -> tuple[list[int], dict[str, list[tuple[Series, Series]]]]:
    """(timestamps in ms, each tier's simulated instances as (engine series, GPU series)) over ``hours``."""
    from exporter.demo.fleet import DEFAULT_TIERS, SimFleet
    from exporter.demo.scenarios import SCENARIOS
    import yaml

    usable = {s.name: float(yaml.safe_load((PLANS / f"{s.name}.yaml").read_text())["benchmark"]
                            ["usable_rps_per_instance"]) for s in DEFAULT_TIERS}
    fleet = SimFleet({s.name: (s, SCENARIOS["healthy"].behaviour(s.name), usable[s.name]) for s in DEFAULT_TIERS})
    names = read_names()
    steps = int(hours * 3600 / step)
    end_ms = int(time.time() * 1000) // 1000 * 1000
    stamps = [end_ms - int((steps - k) * step * 1000) for k in range(1, steps + 1)]
    out: dict[str, list[tuple[Series, Series]]] = {
        t: [({}, {}) for _ in fleet.tiers[t].instances] for t in fleet.tiers}
    for k in range(1, steps + 1):
        fleet.advance(fleet.start + k * step)
        for tier, sim in fleet.tiers.items():
            for i, inst in enumerate(sim.instances):
                engine, gpus = out[tier][i]
                for text, into, keep in ((fleet.engine_text(tier, inst.index), engine, None),
                                         (fleet.dcgm_text(inst.node), gpus, inst.pod)):
                    for line in text.splitlines():
                        m = LINE.match(line)
                        if not m or m[1] not in names:
                            continue
                        labels = dict(LABEL.findall(m[2] or ""))
                        if keep is not None:
                            if labels.get("pod") != keep:
                                continue
                            labels = {k: v for k, v in labels.items() if k in GPU_LABELS}
                        into.setdefault((m[1], tuple(sorted(labels.items()))), []).append(float(m[3]))
    return stamps, out


def import_lines(first: int, last: int, stamps: list[int], sim: dict[str, list[tuple[Series, Series]]]) -> Any:
    """JSON lines of instances ``first`` .. ``last`` - 1, tiers taken in turn, each replaying one simulated
    engine of its tier under its own labels; a node and a dcgm-exporter per instance."""
    ts = json.dumps(stamps)
    tiers = sorted(sim)
    ones = json.dumps([1] * len(stamps))
    cache: dict[int, str] = {}
    for i in range(first, last):
        tier = tiers[i % len(tiers)]
        engine, gpus = sim[tier][(i // len(tiers)) % len(sim[tier])]
        pod, node = f"{tier}-vllm-{i}", f"node-{i}"
        base = {"tier": tier, "namespace": "llm", "pod": pod}
        target = {"job": "llm-engines", "instance": f"10.{i // 250}.{i % 250}.10:8000", **base}
        exporter = {"job": "dcgm", "instance": f"10.{i // 250}.{i % 250}.20:9400", "Hostname": node, **base}
        yield '{"metric":' + json.dumps({"__name__": "up", **target}) + ',"values":' + ones + ',"timestamps":' + \
            ts + "}\n"
        for series, labels_of in ((engine, target), (gpus, exporter)):
            for (name, labels), values in series.items():
                if len(values) != len(stamps):
                    continue  # a series the engine began mid-run (a finish reason first seen later)
                body = cache.get(id(values))
                if body is None:
                    body = cache[id(values)] = ',"values":' + json.dumps(values) + ',"timestamps":' + ts + "}\n"
                yield '{"metric":' + json.dumps({"__name__": name, **dict(labels), **labels_of}) + body


def peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage's ru_maxrss: a child started by fork and exec inherits its parent's
    (here the bench's, holding the whole history), where VmHWM starts afresh with the new program."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)[1]) / 1024  # type: ignore[index]


def cpu_of(pid: int) -> float:
    """A process's CPU seconds so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_cycle(config: str, at: float) -> dict[str, Any]:
    """In this process: the history read and two cycles of `serve` in the backed mode; the second measured."""
    from exporter.config import load_config
    from exporter.daemon import Pipeline
    from exporter.promread import PrometheusReader

    cfg = load_config(config)
    reader = PrometheusReader(cfg)
    spent = [0.0, 0]
    query = reader.api.query

    def timed(expr: str, when: float, timeout: float | None = None) -> list[tuple[dict[str, str], float]]:
        t0 = time.perf_counter()
        try:
            return query(expr, when, timeout)
        finally:
            spent[0] += time.perf_counter() - t0
            spent[1] += 1

    reader.api.query = timed  # type: ignore[method-assign, assignment]
    pipe = Pipeline(cfg, None, reader=reader)
    t0, c0 = time.perf_counter(), time.process_time()
    history = reader.history(at)
    history_s, history_cpu = time.perf_counter() - t0, time.process_time() - c0
    pipe.evaluate_prometheus(at)
    spent[:] = [0.0, 0]
    t0, c0 = time.perf_counter(), time.process_time()
    report = pipe.evaluate_prometheus(at)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    reader.close()
    known = sum(1 for t in report.tiers.values() for m in t.metrics.values() if m.value is not None)
    return {"wall": wall, "cpu": cpu, "query_wall": spent[0], "queries": spent[1], "history_s": history_s,
            "history_cpu": history_cpu, "history_points": sum(len(v) for v in history.values()),
            "rss_mb": peak_rss_mb(), "known_rows": known,
            "up": {name: t.instances_up for name, t in report.tiers.items()},
            "actions": {name: t.resize.action for name, t in report.tiers.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000, 2000])
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--step", type=float, default=15.0)
    ap.add_argument("--cycle", nargs=2, metavar=("CONFIG", "AT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cycle:
        print(json.dumps(one_cycle(args.cycle[0], float(args.cycle[1]))))
        return
    binary = shutil.which("victoria-metrics")
    if binary is None:
        sys.exit("bench_backed: victoria-metrics is not installed (Debian: apt-get install victoria-metrics)")
    t0 = time.process_time()
    stamps, sim = simulate(args.hours, args.step)
    print(f"simulated {args.hours:g} h at {args.step:g} s of {sum(map(len, sim.values()))} engines in "
          f"{time.process_time() - t0:.0f} s CPU", flush=True)
    work = Path(tempfile.mkdtemp(prefix="fw-bench-backed-"))
    port = 18428 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    vm = subprocess.Popen([binary, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={work}/data",
                           "-retentionPeriod=100y", "-search.latencyOffset=1s", "-search.disableCache",
                           "-loggerLevel=ERROR"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        config = work / "fleet.yaml"
        config.write_text(f"source:\n  prometheus: {{url: \"{url}\", instance_label: pod}}\ninterval: 15s\n"
                          f"window: 5m\nscrape_timeout: 12s\nhistory: {args.hours:g}h\ntiers:\n"
                          + "".join(f"  {t}: {{plan: {PLANS / (t + '.yaml')}}}\n" for t in sorted(sim)))
        at = stamps[-1] / 1000
        rows = []
        done = 0
        for size in args.sizes:
            t0 = time.perf_counter()
            lines = 0
            batch: list[str] = []
            for line in import_lines(done, size, stamps, sim):
                batch.append(line)
                if len(batch) == 20_000:
                    requests.post(url + "/api/v1/import", data="".join(batch).encode(), timeout=600).raise_for_status()
                    lines += len(batch)
                    batch = []
            if batch:
                requests.post(url + "/api/v1/import", data="".join(batch).encode(), timeout=600).raise_for_status()
                lines += len(batch)
            requests.get(url + "/internal/force_flush", timeout=60)
            imported = time.perf_counter() - t0
            done = size
            series = requests.get(url + "/api/v1/series/count", timeout=60).json()["data"][0]
            vm_before = cpu_of(vm.pid)
            run = subprocess.run([sys.executable, __file__, "--cycle", str(config), f"{at:.3f}"],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"bench_backed: the cycle failed at {size} instances:\n{run.stderr[-3000:]}")
            got = json.loads(run.stdout)
            got.update(size=size, series=series, import_s=imported, vm_cpu=cpu_of(vm.pid) - vm_before)
            rows.append(got)
            print(f"  {size} instances: {json.dumps(got)}", flush=True)
        base = rows[0]
        print()
        print(f"| instances | series in the store | import | cycle wall | its queries ({base['queries']}) | "
              f"fleetwatch CPU | x {base['size']} | store CPU (history + 2 cycles) | peak RSS | history read |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['size']:,} | {r['series']:,} | {r['import_s']:.0f} s | {r['wall']:.2f} s | "
                  f"{r['query_wall']:.2f} s | {r['cpu']:.3f} s | {r['cpu'] / base['cpu']:.2f} | "
                  f"{r['vm_cpu']:.1f} s | {r['rss_mb']:.0f} MB | {r['history_s']:.2f} s |")
        print()
        print("instances up as fleetwatch saw them: " + ", ".join(f"{r['size']}: {r['up']}" for r in rows))
        print("rows known per cycle: " + ", ".join(f"{r['size']}: {r['known_rows']}" for r in rows))
    finally:
        vm.terminate()
        vm.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
