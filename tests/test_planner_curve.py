from __future__ import annotations

import math

import pytest

from exporter.model import Slo
from exporter.planner.curve import SweepPoint, usable_rps_at_slo


def sweep(ttfts: list[float], itls: list[float], rps: list[float]) -> list[SweepPoint]:
    return [SweepPoint(c, r, t, i, mean_latency=c / r, gpu_utilization=min(1.0, r / 5))
            for c, (t, i, r) in enumerate(zip(ttfts, itls, rps), start=1)]


def test_ttft_bound_crossing_is_interpolated() -> None:
    pts = sweep([0.5, 1.0, 1.5, 2.5], [0.02, 0.025, 0.03, 0.035], [1, 2, 3, 4])
    c = usable_rps_at_slo(pts, Slo(2.0, 0.05))
    # TTFT crosses 2.0 halfway between 1.5 (3 RPS) and 2.5 (4 RPS)
    assert c.binding == "ttft_p99" and math.isclose(c.usable_rps_per_instance, 3 + (2.0 - 1.5) / (2.5 - 1.5))
    assert c.c_max == 3 and math.isclose(c.ttft_p99, 2.0) and math.isclose(c.gpu_utilization or 0, 3.5 / 5)
    assert c.littles_law_gap is not None and math.isclose(c.littles_law_gap, 1.0)


def test_tighter_slo_wins_and_benchmark_block_round_trips_through_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pts = sweep([0.5, 1.0, 1.5, 2.5], [0.02, 0.03, 0.045, 0.09], [1, 2, 3, 4])
    c = usable_rps_at_slo(pts, Slo(2.0, 0.05))
    assert c.binding == "itl_p99" and math.isclose(c.usable_rps_per_instance, 3 + (0.05 - 0.045) / (0.09 - 0.045))
    import yaml

    from exporter.config import load_config
    plan = {"gpus_per_instance": 1, "instances": 1, "gpu_hour_cost_usd": 1, "peak_rps": 1, "safety_factor": 0.2,
            "slo": {"ttft_p99": "2s", "itl_p99": "50ms"}, "benchmark": c.as_benchmark()}
    f = tmp_path / "f.yaml"
    f.write_text(yaml.safe_dump({"tiers": {"t": {"plan": plan, "targets": [{"vllm": "http://x:1/metrics"}]}}}))
    b = load_config(str(f)).tiers["t"].plan.benchmark
    assert math.isclose(b.usable_rps_per_instance, round(c.usable_rps_per_instance, 6))
    assert len(b.curve) == 4 and math.isclose(b.itl_p99, c.itl_p99, rel_tol=1e-5)


def test_sweep_that_never_reaches_the_slo_is_flagged_not_extrapolated() -> None:
    c = usable_rps_at_slo(sweep([0.1, 0.2], [0.01, 0.01], [1, 2]), Slo(2.0, 0.05))
    assert c.usable_rps_per_instance == 2 and c.binding == "sweep_end" and c.warnings


def test_littles_law_gap_over_2x_is_flagged() -> None:
    pts = [SweepPoint(8, 1.0, 0.5, 0.02, mean_latency=2.0), SweepPoint(16, 2.0, 3.0, 0.02, mean_latency=2.0)]
    c = usable_rps_at_slo(pts, Slo(2.0, 0.05))
    assert c.littles_law_gap == 4.0 and any("Little" in w for w in c.warnings)


def test_first_point_missing_slo_is_an_error() -> None:
    with pytest.raises(ValueError):
        usable_rps_at_slo(sweep([5.0], [0.01], [1]), Slo(2.0, 0.05))
