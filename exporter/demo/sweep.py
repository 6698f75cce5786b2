"""The demo's plan, measured: a single-instance load sweep of the simulator (Step 7 of 9.1).

Each point offers one simulated instance Poisson traffic at a rate (as ``vllm bench serve
--request-rate`` does; production arrivals are Poisson too, so Step 13 compares like with like),
records the concurrency that results, and reads the latencies from the instance's own /metrics,
through the same parser and histogram_quantile fleetwatch uses, so the
plan's predictions and the production numbers are computed the same way. The sweep goes through
``planner.curve`` (sweep -> curve -> usable RPS at SLO); real benchmark sweeps will too.

    python -m exporter.demo.sweep            # rewrite the shipped plans in exporter/demo/plans/
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from ..model import Slo
from ..sizing import recommended_instances
from ..model import Histogram, InstanceSample
from ..planner.curve import Curve, SweepPoint, usable_rps_at_slo
from ..sources import vllm
from ..window import histogram_quantile, tier_window
from .engine import Request, SimEngine
from .fleet import DEFAULT_TIERS, TierSpec
from .flavours import request_token_buckets

PLANS_DIR = Path(__file__).parent / "plans"
# offered load as shares of the instance's saturation throughput (found by a closed-loop probe)
LOAD_SHARES = (0.05, 0.15, 0.3, 0.45, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.1)
WARMUP_SECONDS = 30.0
MEASURE_SECONDS = 180.0
PEAK_SHARE = {"h100": 0.72, "a100": 0.65}  # Step 1 peak as a share of the tier's usable capacity

Run = tuple[SweepPoint, float | None, float | None]  # point, prefix-cache hit ratio, KV eviction ratio


def _requests(spec: TierSpec, rng: random.Random) -> Callable[[float], Request]:
    return lambda t: spec.workload.request(rng, t, spec.hardware.max_model_len)


def saturation_rps(spec: TierSpec, *, seed: int = 0, seconds: float = 60.0) -> float:
    """Closed loop at twice max_num_seqs: the most the instance can finish per second."""
    eng = SimEngine(spec.hardware)
    new_request = _requests(spec, random.Random(seed))
    clients = 2 * spec.hardware.max_num_seqs
    t, done0 = 0.0, 0.0
    while t < WARMUP_SECONDS + seconds:
        t += 0.05
        eng.advance(t)
        for _ in range(clients - eng.load()):
            eng.submit(new_request(eng.t))
        if abs(t - WARMUP_SECONDS) < 0.025:
            done0 = _finished(eng)
    return (_finished(eng) - done0) / seconds


def _finished(eng: SimEngine) -> float:
    return vllm.parse(eng.exposition()).counters["requests_finished"]


def measure_point(spec: TierSpec, rate: float, *, seed: int = 0, warmup: float = WARMUP_SECONDS,
                  seconds: float = MEASURE_SECONDS) -> Run:
    """One run with Poisson arrivals at ``rate``, read from the instance's /metrics once a second."""
    eng = SimEngine(spec.hardware)
    rng = random.Random(seed * 7919 + int(rate * 1000))
    new_request = _requests(spec, rng)
    samples: list[InstanceSample] = []
    gpu: list[float] = []
    in_flight: list[int] = []
    t, next_arrival, next_scrape = 0.0, rng.expovariate(rate), warmup
    while t < warmup + seconds - 1e-9:
        t = min(t + 0.05, warmup + seconds)
        while next_arrival < t:
            eng.submit(new_request(next_arrival))
            next_arrival += rng.expovariate(rate)
        eng.advance(t)
        if t >= next_scrape - 1e-9:
            samples.append(InstanceSample("sweep", "i", t, vllm.parse(eng.exposition()), ()))
            if len(samples) > 1:
                gpu.append(eng.sm_avg)
                in_flight.append(eng.load())
            next_scrape += 1.0
    tw = tier_window("sweep", samples, ["i"])
    finished = tw.increase("requests_finished") or 0.0
    span = samples[-1].timestamp - samples[0].timestamp
    e2e = tw.histogram_increase("e2e_seconds")
    ttft = tw.quantile("ttft_seconds", 0.99).value
    itl = tw.quantile("itl_seconds", 0.99).value
    point = SweepPoint(concurrency=max(1, round(sum(in_flight) / len(in_flight))), rps=finished / span,
                       ttft_p99=ttft if ttft is not None else math.inf,
                       itl_p99=itl if itl is not None else math.inf,
                       mean_latency=e2e.sum / e2e.count if e2e is not None and e2e.count else None,
                       gpu_utilization=sum(gpu) / len(gpu) if gpu else None)
    q, h, pre = tw.increase("prefix_cache_queries"), tw.increase("prefix_cache_hits"), tw.increase("preemptions")
    prefix = h / q if q and h is not None else None
    evictions = pre / finished if finished and pre is not None else None
    return point, prefix, evictions


def sweep_rates(spec: TierSpec, *, seed: int = 0) -> tuple[float, ...]:
    top = saturation_rps(spec, seed=seed)
    return tuple(round(top * s, 3) for s in LOAD_SHARES)


def sweep(spec: TierSpec, rates: tuple[float, ...] | None = None, *, seed: int = 0, **kw: Any
          ) -> tuple[Curve, list[Run]]:
    runs = [measure_point(spec, r, seed=seed, **kw) for r in (rates or sweep_rates(spec, seed=seed))]
    slo = Slo(spec.ttft_slo_seconds, spec.itl_slo_seconds)
    return usable_rps_at_slo([p for p, _, _ in runs], slo), runs


def workload_profile(spec: TierSpec, n: int = 20000, seed: int = 0) -> dict[str, Any]:
    """Step 1's length profile, read the way fleetwatch reads production: through vLLM's token
    histogram buckets and histogram_quantile, so bucket interpolation is the same on both sides."""
    rng = random.Random(seed)
    buckets = request_token_buckets(spec.hardware.max_model_len) + (math.inf,)
    new_request = _requests(spec, rng)
    reqs = [new_request(0.0) for _ in range(n)]
    out: dict[str, Any] = {}
    for name, values in (("input_tokens", [r.prompt for r in reqs]),
                         ("output_tokens", [min(r.output, r.max_tokens) for r in reqs])):
        counts = [sum(1 for v in values if v <= b) for b in buckets]
        h = Histogram(tuple(zip(buckets, map(float, counts))), float(n), float(sum(values)))
        out[name] = {k: round(histogram_quantile(q, h)) for k, q in (("p50", .5), ("p95", .95), ("p99", .99))}
    out["prefix_reuse"] = spec.workload.prefix_share > 0
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.6g}ms"


def plan_document(spec: TierSpec, curve: Curve, runs: list[tuple[SweepPoint, float | None, float | None]]
                  ) -> dict[str, Any]:
    """The tier's plan, with the benchmark block measured and the peak set from PEAK_SHARE."""
    usable = curve.usable_rps_per_instance
    peak = round(PEAK_SHARE.get(spec.name, 0.6) * spec.instances * usable, 2)
    needed = recommended_instances(peak, usable, spec.safety_factor)
    if needed != spec.instances:
        raise ValueError(f"tier {spec.name}: a peak of {peak} RPS needs {needed} instances at {usable:.3g} usable "
                         f"RPS each, but the demo deploys {spec.instances}; change PEAK_SHARE")
    passing = [r for r in runs if r[0].rps <= usable + 1e-9]
    at_usable = passing[-1] if passing else runs[0]
    bench = curve.as_benchmark()
    if at_usable[1] is not None:
        bench["prefix_cache_hit_ratio"] = round(at_usable[1], 4)
    if at_usable[2] is not None:
        bench["kv_cache_eviction_ratio"] = round(at_usable[2], 4)
    return {
        "gpus_per_instance": spec.hardware.tp,
        "instances": spec.instances,
        "gpu_hour_cost_usd": spec.gpu_hour_cost_usd,
        "peak_rps": peak,
        "safety_factor": spec.safety_factor,
        "slo": {"ttft_p99": _ms(spec.ttft_slo_seconds), "itl_p99": _ms(spec.itl_slo_seconds)},
        "benchmark": bench,
        "workload": workload_profile(spec),
        "precision": {"weights": spec.weights, "kv_cache": "fp16"},
    }


def render_plan(spec: TierSpec, doc: dict[str, Any], curve: Curve) -> str:
    head = [
        f"# Demo plan for tier {spec.name}: {spec.instances} x {spec.hardware.gpu_model} at TP{spec.hardware.tp}.",
        "# Generated by `python -m exporter.demo.sweep` from the simulator's own single-instance",
        "# load sweep (Step 7): do not edit by hand; `fleetwatch demo --remeasure` reruns it.",
        f"# usable RPS per instance {curve.usable_rps_per_instance:.4g}, bound by {curve.binding}; "
        f"C_max {curve.c_max}; Little's Law gap {curve.littles_law_gap:.3f}" if curve.littles_law_gap else
        f"# usable RPS per instance {curve.usable_rps_per_instance:.4g}, bound by {curve.binding}",
    ]
    return "\n".join(head) + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110)


def measure_all(tiers: tuple[TierSpec, ...] = DEFAULT_TIERS, **kw: Any) -> dict[str, str]:
    """tier -> the plan file's text."""
    out = {}
    for spec in tiers:
        curve, runs = sweep(spec, **kw)
        out[spec.name] = render_plan(spec, plan_document(spec, curve, runs), curve)
    return out


def write_plans(directory: Path, texts: dict[str, str]) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in texts.items():
        p = directory / f"{name}.yaml"
        p.write_text(text, encoding="utf-8")
        paths[name] = p
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Measure the demo plans with the simulator load sweep.")
    ap.add_argument("-o", "--out", type=Path, default=PLANS_DIR, help=f"directory (default: {PLANS_DIR})")
    ap.add_argument("--check", action="store_true", help="exit 1 when the shipped plans differ from a fresh sweep")
    args = ap.parse_args(argv)
    texts = measure_all()
    if args.check:
        stale = [n for n, t in texts.items() if not (args.out / f"{n}.yaml").exists()
                 or (args.out / f"{n}.yaml").read_text(encoding="utf-8") != t]
        for n in stale:
            print(f"{args.out / (n + '.yaml')}: differs from a fresh sweep; run python -m exporter.demo.sweep",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in write_plans(args.out, texts).values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
