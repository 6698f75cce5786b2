"""Pure evaluation: plan checks, resize and diagnoses on synthetic windows (no sockets, no clock)."""
from __future__ import annotations

import math
from dataclasses import replace

from exporter.model import Benchmark, CurvePoint, Plan, Slo, TierConfig, Target, Workload
from exporter.evaluate import HistoryPoint, evaluate_window, predicted_at
from exporter.sizing import recommended_instances
from exporter.model import EngineSample, Histogram, InstanceSample, Status
from exporter.window import TierWindow, tier_window

BOUNDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf)
PLAN = Plan(gpus_per_instance=2, instances=2, gpu_hour_cost_usd=4.0, peak_rps=4, safety_factor=0.2,
            slo=Slo(2.0, 0.05), benchmark=Benchmark(usable_rps_per_instance=2, ttft_p99=1.0, itl_p99=0.035,
                                                    gpu_utilization=0.78))


def ttft_hist(per_bucket: list[float]) -> Histogram:
    cum, out = 0.0, []
    for b, n in zip(BOUNDS, per_bucket):
        cum += n
        out.append((b, cum))
    return Histogram(tuple(out), cum, 0.0)


def tier(plan: Plan = PLAN, n: int = 2) -> TierConfig:
    return TierConfig("h100", plan, tuple(Target(f"i{i}", "vllm", f"http://x{i}/metrics") for i in range(n)))


def window(rps_per_instance: float, ttft_last: list[float], waiting: float = 0.0, n: int = 2,
           seconds: float = 60) -> TierWindow:
    samples = []
    for i in range(n):
        for t, frac in ((0.0, 0.0), (seconds, 1.0)):
            finished = rps_per_instance * t
            hist = ttft_hist([x * frac for x in ttft_last])
            samples.append(InstanceSample("h100", f"i{i}", t, EngineSample(
                "vllm", {"requests_finished": finished, "preemptions": 0.0, "generation_tokens": 100 * finished},
                {"requests_waiting": waiting, "requests_running": 1.0, "kv_cache_usage": 0.5},
                {"ttft_seconds": hist})))
    return tier_window("h100", samples, [f"i{i}" for i in range(n)])


def test_recommended_instances_formula() -> None:
    assert recommended_instances(24, 8, 0.2) == 4  # ceil(3 * 1.2) = ceil(3.6)
    assert recommended_instances(41, 8, 0.2) == 8  # ceil(6) = 6 -> ceil(7.2)
    assert recommended_instances(16, 8, 0.5) == 3  # exact multiples are not bumped by float noise


def test_interpolation_on_curve_and_no_extrapolation() -> None:
    plan = replace(PLAN, benchmark=replace(PLAN.benchmark, curve=(CurvePoint(0.5, ttft_p99=0.4),)))
    # points: (0.5, 0.4) and the operating point (2, 1.0)
    assert math.isclose(predicted_at(plan, "ttft_p99", 1.25)[0] or 0, 0.7)
    assert predicted_at(plan, "ttft_p99", 3.0)[0] is None
    # operating point only: +-15%
    assert predicted_at(PLAN, "ttft_p99", 2.2)[0] == 1.0 and predicted_at(PLAN, "ttft_p99", 2.5)[0] is None


def test_ttft_above_benchmark_triggers_recharacterize() -> None:
    # at 2 RPS/instance, 1% of requests land in (2.5, 5]: P99 ~ 2.5s > 1.3 x 1.0s
    tw = window(2.0, [50, 30, 10, 5, 4, 1, 0])
    plan = replace(PLAN, safety_factor=0.0)  # sized exactly: scale_up must not pre-empt recharacterize
    rep = evaluate_window(tier(plan), tw, [], now=60)
    check = next(c for c in rep.plan_checks if c.check == "ttft_p99_vs_benchmark")
    assert check.status is Status.CRITICAL and "re-characterize" in check.message
    assert rep.resize.action == "recharacterize"
    assert rep.metrics["ttft_p99_seconds"].status is Status.CRITICAL
    assert "P99 violating but P50 fine" in (rep.metrics["ttft_p99_seconds"].diagnosis or "")


def test_undersized_scales_up_with_reason_in_words() -> None:
    tw = window(4.0, [90, 10, 0, 0, 0, 0, 0])  # 8 RPS on 2 instances of 2 usable
    rep = evaluate_window(tier(), tw, [], now=60)
    assert rep.resize.action == "scale_up"
    assert rep.resize.recommended_instances == recommended_instances(8, 2, 0.2) == 5
    assert "needs 5 instances, has 2" in rep.resize.reason
    assert any(f.kind == "peak_above_plan" for f in rep.findings)
    assert rep.metrics["fleet_utilization_ratio"].status is Status.CRITICAL


def test_scale_down_waits_for_the_stabilization_window() -> None:
    plan = replace(PLAN, instances=6)
    tw = window(0.2, [100, 0, 0, 0, 0, 0, 0], n=6)
    young = [HistoryPoint(0, 1.2, 3)]
    assert evaluate_window(tier(plan, 6), tw, young, now=600).resize.action == "hold"
    old = [HistoryPoint(t, 1.2, 3) for t in range(0, 1900, 100)]
    rep = evaluate_window(tier(plan, 6), tw, old, now=1900)
    # less than a day of history: the plan's peak still counts
    assert rep.resize.action == "scale_down"
    assert rep.resize.recommended_instances == recommended_instances(plan.peak_rps, 2, 0.2) < 6


def test_queue_band_uses_littles_law() -> None:
    # 2 instances x 1 RPS = 2 RPS; L = 2s x 2 = 4; waiting 2 x 1.7 = 3.4 >= 0.8 L = 3.2
    rep = evaluate_window(tier(), window(1.0, [100, 0, 0, 0, 0, 0, 0], waiting=1.7), [], now=60)
    q = rep.metrics["queue_depth_requests"]
    assert q.status is Status.WARNING and q.band is not None and q.band.warning_above is not None
    assert math.isclose(q.band.warning_above.value, 0.8 * 2.0 * rep.metrics["requests_per_second"].value)  # type: ignore[operator]
    check = next(c for c in rep.plan_checks if c.check == "queue_depth_littles_law")
    assert check.status is Status.WARNING


def test_prefix_band_when_plan_declares_reuse_and_overrides() -> None:
    plan = replace(PLAN, workload=Workload(prefix_reuse=True))
    from exporter.model import BandOverride
    t = replace(tier(plan), bands={"kv_cache_utilization_ratio": BandOverride(warning_above=0.4)})
    rep = evaluate_window(t, window(1.0, [100, 0, 0, 0, 0, 0, 0]), [], now=60)
    assert rep.metrics["prefix_cache_hit_ratio"].band.warning_below.value == 0.30  # type: ignore[union-attr]
    assert rep.metrics["kv_cache_utilization_ratio"].status is Status.WARNING  # 0.5 > overridden 0.4


def test_missing_inputs_are_unknown_with_reasons() -> None:
    rep = evaluate_window(tier(), window(1.0, [100, 0, 0, 0, 0, 0, 0]), [], now=60)
    for key in ("spec_decode_acceptance_ratio", "gpu_compute_utilization_ratio", "lora_adapter_cache_hit_ratio",
                "lora_adapter_evictions_per_second", "itl_p99_seconds"):
        m = rep.metrics[key]
        assert m.value is None and m.status is Status.UNKNOWN and m.reason, key


def test_a_curve_point_at_the_operating_rps_without_the_field_falls_back_to_the_operating_point() -> None:
    """Found by bench/fuzz_files.py: a curve point at the operating point's RPS that gives no TTFT hid
    the operating point's own, and the lookup indexed an empty list."""
    plan = replace(PLAN, benchmark=replace(PLAN.benchmark, curve=(CurvePoint(2.0, itl_p99=0.03),)))
    assert predicted_at(plan, "ttft_p99", 2.0) == (1.0, "operating point")
    assert predicted_at(plan, "itl_p99", 2.0)[0] == 0.03
