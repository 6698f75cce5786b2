"""Step 7/10: a single-instance concurrency sweep -> latency-throughput curve -> usable RPS at SLO.

Pure: it takes measured sweep points (from the demo's simulator today, from real benchmark
runs later) and returns the curve the plan's ``benchmark:`` block is written from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..config import MIN_CAPACITY, exact_duration
from ..model import Slo
from ..text import num

LITTLES_LAW_MAX_GAP = 2.0  # Step 7: "a gap over 2x means benchmark inputs do not match production"


@dataclass(frozen=True)
class SweepPoint:
    """One concurrency level of the sweep, as measured."""

    concurrency: int
    rps: float
    ttft_p99: float
    itl_p99: float
    mean_latency: float | None = None  # mean arrival->finish seconds, for the Little's Law check
    gpu_utilization: float | None = None
    itl_from_tpot: bool = False  # the result had no p99_itl_ms: its p99_tpot_ms stands in
    model: str | None = None  # vLLM's result: the model_id it ran
    gpu: str | None = None  # vLLM's result: a gpu (or device) metadata field, when the sweep set one


@dataclass(frozen=True)
class Curve:
    points: tuple[SweepPoint, ...]
    usable_rps_per_instance: float
    c_max: int | None  # the highest swept concurrency that meets both SLOs
    ttft_p99: float  # predictions at the usable RPS (interpolated)
    itl_p99: float
    gpu_utilization: float | None
    binding: str  # which SLO bounds the usable RPS: ttft_p99 | itl_p99 | sweep_end
    littles_law_gap: float | None
    warnings: tuple[str, ...]

    def as_benchmark(self) -> dict[str, object]:
        """The plan's ``benchmark:`` block (durations written the way the config reads them)."""
        d = exact_duration

        out: dict[str, object] = {
            "usable_rps_per_instance": round(self.usable_rps_per_instance, 6),
            "ttft_p99": d(self.ttft_p99),
            "itl_p99": d(self.itl_p99),
            "gpu_utilization": round(self.gpu_utilization, 6) if self.gpu_utilization is not None else 0.0,
        }
        out["curve"] = [
            {"rps": round(p.rps, 6), "ttft_p99": d(p.ttft_p99), "itl_p99": d(p.itl_p99),
             **({"gpu_utilization": round(p.gpu_utilization, 6)} if p.gpu_utilization is not None else {})}
            for p in _monotonic_in_rps(self.points)
        ]
        return out


def _monotonic_in_rps(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """Past saturation throughput can fall while concurrency grows; a curve keyed on RPS keeps
    only the rising part."""
    out: list[SweepPoint] = []
    for p in points:
        if not out or p.rps > out[-1].rps:
            out.append(p)
    return out


def _lerp(x0: float, y0: float, x1: float, y1: float, x: float) -> float:
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def littles_law_gap(p: SweepPoint) -> float | None:
    """max(L / (lambda W), lambda W / L) for one point; 1.0 is a perfect match."""
    if p.mean_latency is None or p.rps <= 0 or p.mean_latency <= 0 or p.concurrency <= 0:
        return None
    lw = p.rps * p.mean_latency
    if not 0 < lw < math.inf:  # tiny figures underflow to 0
        return None
    return max(p.concurrency / lw, lw / p.concurrency)


def usable_rps_at_slo(points: Sequence[SweepPoint], slo: Slo) -> Curve:
    """The largest throughput at which both TTFT P99 and ITL P99 stay within the SLO.

    Between the last passing and the first failing point the crossing is interpolated linearly
    in RPS; the tighter of the two SLO crossings wins. Never extrapolated past the sweep.
    """
    if not points:
        raise ValueError("an empty sweep has no curve")
    pts = _monotonic_in_rps(sorted(points, key=lambda p: p.concurrency))
    warnings: list[str] = []

    def ok(p: SweepPoint) -> bool:
        return p.ttft_p99 <= slo.ttft_p99 and p.itl_p99 <= slo.itl_p99

    if not ok(pts[0]):
        raise ValueError(f"even concurrency {pts[0].concurrency} misses the workload's SLO "
                         f"(TTFT P99 {num(pts[0].ttft_p99)}s against {num(slo.ttft_p99)}s, ITL P99 "
                         f"{num(pts[0].itl_p99)}s against {num(slo.itl_p99)}s)")
    last = 0  # the last point of the passing run from the start: linear, a sweep may have many points
    while last + 1 < len(pts) and ok(pts[last + 1]):
        last += 1
    lo = pts[last]
    if last == len(pts) - 1:
        usable, binding = lo.rps, "sweep_end"
        warnings.append("every swept concurrency meets the SLO: usable RPS is the sweep's end, not the knee; "
                        "sweep higher")
    else:
        hi = pts[last + 1]
        crossings = []
        for name, limit in (("ttft_p99", slo.ttft_p99), ("itl_p99", slo.itl_p99)):
            y0, y1 = getattr(lo, name), getattr(hi, name)
            if y1 > limit:
                crossings.append((_lerp(y0, lo.rps, y1, hi.rps, limit) if y1 != y0 else lo.rps, name))
        usable, binding = min(crossings)
    seg = next(((a, b) for a, b in zip(pts, pts[1:]) if a.rps <= usable <= b.rps), (lo, lo))
    a, b = seg

    def at(name: str) -> float | None:
        ya: float | None = getattr(a, name)
        yb: float | None = getattr(b, name)
        if ya is None or yb is None:
            return ya if ya is not None else yb
        return _lerp(a.rps, ya, b.rps, yb, usable)

    gaps = [g for g in (littles_law_gap(p) for p in pts) if g is not None]
    gap = max(gaps) if gaps else None
    if gap is not None and gap > LITTLES_LAW_MAX_GAP:
        warnings.append(f"Little's Law gap {gap:.2f}x exceeds 2x: the benchmark's inputs do not match production")
    ttft, itl = at("ttft_p99"), at("itl_p99")
    assert ttft is not None and itl is not None
    if not math.isfinite(usable) or usable < MIN_CAPACITY:
        raise ValueError(f"the sweep gives a usable capacity of {num(usable)} RPS per instance: no plan can be sized on "
                         f"it (do its rows measure throughput?)")
    return Curve(points=tuple(pts), usable_rps_per_instance=usable, c_max=lo.concurrency, ttft_p99=ttft,
                 itl_p99=itl, gpu_utilization=at("gpu_utilization"), binding=binding, littles_law_gap=gap,
                 warnings=tuple(warnings))
