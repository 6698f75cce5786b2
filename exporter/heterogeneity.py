"""9.5: is a tier really one tier? Pure checks over a tier's window.

- GPU model names that differ inside a tier (DCGM ``modelName`` or NVML name);
- an instance whose TTFT or ITL P99 sits far above the tier's median in both halves of the
  window (sustained, not one bad scrape), with how much it drags the tier's P99;
- FP8 weights planned on A100s, which run without the FP8 tensor-core path.
"""
from __future__ import annotations

import statistics
from collections import Counter

from .model import Plan
from .model import Finding, Status
from .window import Asks, Percentile, TierView
from .text import num, plural

OUTLIER_FACTOR = 1.3  # instance P99 over the tier's median P99
# per instance and half-window: a P99 from fewer requests jumps between histogram buckets
MIN_SAMPLES = {"ttft_seconds": 200, "itl_seconds": 1000}
MIN_INSTANCES = 3  # a median of two says nothing about which one is odd
_LABELS = {"ttft_seconds": "TTFT", "itl_seconds": "ITL"}

# the GPU models of each instance, and each instance's TTFT and ITL P99 over the window and its halves
ASKS = Asks(tuple(Percentile(key, 0.99, per_instance=True, halves=True) for key in _LABELS), gpu_models=True)

def mixed_models(tw: TierView) -> Finding | None:
    per_instance = tw.gpu_models()
    counts = Counter(m for models in per_instance.values() for m in models)
    if len(counts) < 2:
        return None
    majority = counts.most_common(1)[0][0]
    odd = sorted(i for i, models in per_instance.items() if models != {majority})
    detail = "; ".join(f"{i} runs {', '.join(sorted(per_instance[i]))}" for i in odd)
    n_major = sum(1 for models in per_instance.values() if models == {majority})
    return Finding("mixed_tier", Status.WARNING,
                   f"tier mixes GPU models: {detail}, while {plural(n_major, 'instance')} "
                   f"run{'s' if n_major == 1 else ''} {majority}. The slower model sets the tier's P99; give it its own "
                   f"tier, benchmark curve and plan.",
                   odd[0] if len(odd) == 1 else None)


def _p99(tw: TierView, key: str, instances: list[str]) -> tuple[float | None, int]:
    q = tw.quantile(key, 0.99, instances)
    return q.value, q.samples


def _outliers(tw: TierView, halves: tuple[TierView, TierView], key: str, up: list[str]) -> dict[str, str]:
    """instance -> how it drags the tier's P99 of ``key``, for instances above the median in both halves.

    Each instance's P99 is computed once per window and half (n quantiles, not n squared)."""
    label = _LABELS[key]
    whole = {i: v for i in up if (v := _p99(tw, key, [i])[0]) is not None}
    if len(whole) < MIN_INSTANCES:
        return {}
    median = statistics.median(whole.values())
    if median <= 0:
        return {}
    per_half = [{i: _p99(h, key, [i]) for i in up} for h in halves]
    out: dict[str, str] = {}
    for inst, v in sorted(whole.items()):
        if v < OUTLIER_FACTOR * median:
            continue
        sustained = True
        for half in per_half:
            hv, n = half[inst]
            others = [x for o, (x, _) in half.items() if o != inst and x is not None]
            if hv is None or n < MIN_SAMPLES[key] or not others or hv < OUTLIER_FACTOR * statistics.median(others):
                sustained = False
        if not sustained:
            continue
        text = f"{label} P99 {num(v)}s is {v / median:.2f}x the tier median {num(median)}s"
        tier_p99, without = _p99(tw, key, up)[0], _p99(tw, key, [i for i in up if i != inst])[0]
        if tier_p99 is not None and without is not None:
            text += f" (without it the tier's {label} P99 would be {num(without)}s instead of {num(tier_p99)}s)"
        out[inst] = text
    return out


def latency_outliers(tw: TierView) -> list[Finding]:
    """One finding per instance whose TTFT or ITL P99 stays far above the tier's median."""
    up = list(tw.up())
    if len(up) < MIN_INSTANCES:
        return []
    halves = tw.halves()
    found = [_outliers(tw, halves, key, up) for key in _LABELS]
    out: list[Finding] = []
    for inst in sorted(up):
        parts = [f[inst] for f in found if inst in f]
        if parts:
            out.append(Finding("mixed_tier", Status.WARNING,
                               f"{inst} drags the tier's P99 in both halves of the window: {'; '.join(parts)}. "
                               f"It does not behave like its tier: check its hardware, placement and config.",
                               inst))
    return out


def fp8_on_a100(tw: TierView, plan: Plan) -> Finding | None:
    weights = (plan.precision.weights if plan.precision else None) or ""
    if not weights.lower().startswith("fp8"):
        return None
    a100 = sorted(i for i, models in tw.gpu_models().items() if any("A100" in m.upper() for m in models))
    if not a100:
        return None
    return Finding("fp8_on_a100", Status.WARNING,
                   f"the plan's weights are {weights} but {', '.join(a100)} run{'s' if len(a100) == 1 else ''} on "
                   f"A100: FP8 tensor-core acceleration is H100/Blackwell-only, so an FP8 artefact runs there "
                   f"without it (about INT8 speed, without INT8's memory saving). Build and validate an INT8 "
                   f"artefact for A100.",
                   a100[0] if len(a100) == 1 else None)
