"""9.4 guardrails and drift, 9.5 mixed tiers: pure checks on windows whose percentiles are known.

Histograms are built so Prometheus's bucket interpolation lands exactly on a bound (all of a
bucket's observations below the rank), so each expected percentile follows from the counts.
"""
from __future__ import annotations

from typing import Callable

import math
from dataclasses import replace

from exporter.model import Benchmark, LengthProfile, Plan, Precision, Slo, Workload
from exporter.guardrails import drift_findings, recommendations, runaway_finding
from exporter.heterogeneity import fp8_on_a100, latency_outliers, mixed_models
from exporter.model import EngineSample, GpuReading, Histogram, InstanceSample, Status
from exporter.window import TierWindow, tier_window

TOKENS = (100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, math.inf)
LAT = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, math.inf)
PLAN = Plan(gpus_per_instance=2, instances=4, gpu_hour_cost_usd=4.0, peak_rps=50, safety_factor=0.2,
            slo=Slo(2.0, 0.05), benchmark=Benchmark(usable_rps_per_instance=15, ttft_p99=1.0, itl_p99=0.035,
                                                    gpu_utilization=0.78))


def hist(bounds: tuple[float, ...], per_bucket: dict[float, float], scale: float = 1.0) -> Histogram:
    cum, out = 0.0, []
    for b in bounds:
        cum += per_bucket.get(b, 0.0) * scale
        out.append((b, cum))
    return Histogram(tuple(out), cum, 0.0)


def window(hists: dict[str, dict[float, float]] | None = None, *, reasons: dict[str, float] | None = None,
           n: int = 1, models: dict[int, str] | None = None, ttft_by_instance: dict[int, dict[float, float]] | None = None
           ) -> TierWindow:
    """n instances, scrapes at 0, 30 and 60 s; every count grows linearly from zero."""
    samples = []
    for i in range(n):
        for t in (0.0, 30.0, 60.0):
            f = t / 60.0
            h: dict[str, Histogram] = {}
            for key, per in (hists or {}).items():
                h[key] = hist(TOKENS if "tokens" in key else LAT, per, f)
            if ttft_by_instance and i in ttft_by_instance:
                h["ttft_seconds"] = hist(LAT, ttft_by_instance[i], f)
            counters = {f"requests_finished_reason:{r}": v * f for r, v in (reasons or {}).items()}
            gpus = (GpuReading(uuid=f"GPU-{i}", index="0", model=(models or {}).get(i, "NVIDIA H100 80GB HBM3")),)
            samples.append(InstanceSample("t", f"i{i}", t, EngineSample("vllm", counters, {}, h), gpus))
    return tier_window("t", samples, [f"i{i}" for i in range(n)])


def test_max_input_tokens_is_two_to_three_times_the_p95() -> None:
    # 95 of 100 prompts in (500, 1000], 5 in (1000, 2000]: P95 = 1000 exactly
    tw = window({"prompt_tokens_per_request": {1000.0: 95, 2000.0: 5}})
    rec = recommendations(tw, PLAN)["max_input_tokens"]
    assert (rec.low, rec.high) == (2 * 1000, 3 * 1000)
    assert rec.low is not None and rec.value is not None and rec.high is not None
    assert rec.low <= rec.value <= rec.high


def test_max_output_tokens_comes_from_the_p99() -> None:
    # 99 of 100 outputs in (200, 500], one in (500, 1000]: P99 = 500 exactly
    tw = window({"generation_tokens_per_request": {500.0: 99, 1000.0: 1}})
    rec = recommendations(tw, PLAN)["max_output_tokens"]
    assert rec.low is not None and rec.value is not None and rec.high is not None
    assert rec.low <= rec.value <= rec.high
    assert rec.low >= 500 and rec.value == 2 * 500


def test_circuit_breaker_is_the_worked_example_of_9_4() -> None:
    # "a 2-second TTFT SLO and 50 RPS ... 2 x 50 = 100 requests. Set your circuit breaker at 80-90"
    rec = recommendations(window(), PLAN)["circuit_breaker_queue_threshold"]
    assert (rec.low, rec.high) == (80, 90) and rec.value is not None
    assert 80 <= rec.value <= 90


def test_unknown_lengths_give_no_number_and_a_reason() -> None:
    rec = recommendations(window(), PLAN)
    assert rec["max_input_tokens"].value is None and "unknown" in rec["max_input_tokens"].basis


WORKLOAD = Workload(input_tokens=LengthProfile(p95=1000), output_tokens=LengthProfile(p95=500, p99=1000))


def test_input_drift_beyond_the_tolerance_only() -> None:
    plan = replace(PLAN, workload=WORKLOAD)
    same = window({"prompt_tokens_per_request": {1000.0: 950, 2000.0: 50}})
    assert [f.kind for f in drift_findings(same, plan)] == []
    # P95 = 2000 (950 at or below 2000, all of them in (1000, 2000]): 100% above the plan's 1000
    grown = window({"prompt_tokens_per_request": {2000.0: 950, 5000.0: 50}})
    found = drift_findings(grown, plan)
    assert [(f.kind, f.status) for f in found] == [("input_length_drift", Status.WARNING)]
    assert "re-characterize" in found[0].message
    loose = replace(plan, workload=replace(WORKLOAD, drift_tolerance=1.5))
    assert drift_findings(grown, loose) == []
    few = window({"prompt_tokens_per_request": {2000.0: 95, 5000.0: 5}})  # 100 requests: a P95 of noise
    assert drift_findings(few, plan) == []


def test_output_drift_from_p95_or_p99() -> None:
    plan = replace(PLAN, workload=WORKLOAD)
    # P95 = 500 as planned, but P99 = 2000 (rank 990 is the last of the 20 in (1000, 2000])
    tail = window({"generation_tokens_per_request": {500.0: 970, 2000.0: 20, 5000.0: 10}})
    found = drift_findings(tail, plan)
    assert [f.kind for f in found] == ["output_length_drift"] and "P99" in found[0].message
    # the same shape over 500 requests: only 5 beyond the P99, too few to call drift
    short = window({"generation_tokens_per_request": {500.0: 485, 2000.0: 10, 5000.0: 5}})
    assert drift_findings(short, plan) == []


def test_runaway_generation_share() -> None:
    assert runaway_finding(window(reasons={"stop": 97, "length": 3})) is None
    warn = runaway_finding(window(reasons={"stop": 90, "length": 10}))
    crit = runaway_finding(window(reasons={"stop": 70, "length": 30}))
    assert warn is not None and warn.status is Status.WARNING and "10%" in warn.message
    assert crit is not None and crit.status is Status.CRITICAL
    assert runaway_finding(window(reasons={"stop": 5, "length": 5})) is None  # too few to say


def test_mixed_models_names_the_odd_instance_and_fp8_on_a100() -> None:
    tw = window(n=4, models={3: "NVIDIA A100-SXM4-80GB"})
    f = mixed_models(tw)
    assert f is not None and f.kind == "mixed_tier" and f.instance == "i3" and "A100" in f.message
    assert mixed_models(window(n=4)) is None
    fp8 = replace(PLAN, precision=Precision(weights="fp8"))
    g = fp8_on_a100(tw, fp8)
    assert g is not None and g.instance == "i3" and g.status is Status.WARNING
    assert fp8_on_a100(window(n=4), fp8) is None
    assert fp8_on_a100(tw, replace(PLAN, precision=Precision(weights="int8"))) is None


def test_latency_outlier_must_be_sustained_and_says_how_much_it_drags() -> None:
    fast = {0.1: 600.0, 0.2: 400.0}  # P99 inside (0.1, 0.2]; 500 requests per half-window
    slow = {0.4: 600.0, 0.8: 400.0}  # P99 inside (0.4, 0.8]
    tw = window(n=4, ttft_by_instance={0: fast, 1: fast, 2: fast, 3: slow})
    found = latency_outliers(tw)
    assert [(f.kind, f.instance) for f in found] == [("mixed_tier", "i3")]
    assert "TTFT" in found[0].message and "without it" in found[0].message
    assert latency_outliers(window(n=4, ttft_by_instance={i: fast for i in range(4)})) == []
    assert latency_outliers(window(n=2, ttft_by_instance={0: fast, 1: slow})) == []  # two say nothing


# ------------------------------------------------------------------ real captures


def _engine_window(parse: Callable[[str], EngineSample], first: str | None, last: str) -> TierWindow:
    """Two scrapes a minute apart; a single capture is paired with an engine that just started."""
    end = parse(last)
    start = parse(first) if first is not None else EngineSample(
        end.engine, {k: 0.0 for k in end.counters}, dict(end.gauges),
        {k: Histogram(tuple((b, 0.0) for b, _ in h.buckets), 0.0, 0.0) for k, h in end.histograms.items()})
    return tier_window("t", [InstanceSample("t", "i", 0.0, start), InstanceSample("t", "i", 60.0, end)], ["i"])


def test_real_captures_fill_the_workload_block_and_the_recommendations() -> None:
    from conftest import fixture_text
    from exporter.evaluate import workload
    from exporter.sources import sglang, vllm

    cases = [(vllm.parse, f"vllm/generated/{v}/snapshot-{{:02d}}.prom") for v in ("vllm-0.33.0", "vllm-0.11.0-features")]
    cases.append((sglang.parse, "sglang/generated/sglang-0.5.23/snapshot-{:02d}.prom"))
    windows = [_engine_window(p, fixture_text(f.format(5)), fixture_text(f.format(20))) for p, f in cases]
    windows.append(_engine_window(vllm.parse, None, fixture_text("vllm/captured/v0-0.4.3-0.5.0_datadog-fixture.prom")))
    for tw in windows:
        wl = workload(tw)
        for block in ("input_tokens", "output_tokens"):
            lengths = getattr(wl, block)
            assert all(isinstance(v, float) for v in (lengths.p50, lengths.p95, lengths.p99)), wl
        rec = recommendations(tw, PLAN)
        p95 = wl.input_tokens.p95
        assert p95 is not None
        assert rec["max_input_tokens"].low == math.ceil(2 * p95) and rec["max_output_tokens"].value is not None
