"""The sizing policy, once: each part as a Python function beside its PromQL rendering.

fleetwatch's resize verdict (``evaluate.resize``) calls the functions; the generated rules
(``render/rules.py``) record the renderings. A test feeds the same series to both through
``promtool test rules`` and compares every branch (tests/test_sizing_policy.py).

- Which arrival rates count: a rate over at least ``FULL_WINDOW_SHARE`` of the window (just after
  a start, a rate rests on a few seconds and is too noisy to call a peak).
- Which peak: the highest counted rate over the retained history once that history reaches back a
  day (its oldest point is a day old), until then the larger of it and the plan's peak.
- The fleet size: ceil(ceil(peak / usable RPS per instance) x (1 + safety)).
- The floors a scale-down never goes under: the tier's minimum warm count, and (Little's Law) the
  instances that serve the arrivals and drain the current queue within the TTFT SLO.
- The stabilization: a scale-down only after the recommendation stayed below the deployed count for
  the plan's whole ``scale_down_stabilization``, observed without a break.
"""
from __future__ import annotations

import math
from typing import Mapping

from .config import format_duration as _duration

ONE_DAY = 86400.0
FULL_WINDOW_SHARE = 0.9
FLOAT_NOISE = 1e-9  # so that exact multiples are not bumped up by float error


def counts_toward_peak(span: float, window: float) -> bool:
    """Whether a rate measured over ``span`` seconds of a ``window``-second window counts."""
    return span >= FULL_WINDOW_SHARE * window


def counted_rate_promql(rate: str, window: float) -> str:
    """The recorded rate where it counts: the rules' rate series existed a full-window share ago."""
    return f"{rate} and on (tier) ({rate} offset {_duration(FULL_WINDOW_SHARE * window)})"


def history_covers_a_day(oldest: float, now: float) -> bool:
    return now - oldest >= ONE_DAY


def sizing_peak(observed_peak: float | None, covers_a_day: bool, plan_peak: float) -> float:
    if covers_a_day and observed_peak is not None:
        return observed_peak
    return max(observed_peak or 0.0, plan_peak)


def sizing_peak_promql(peak: str, rate: str, plan_peak: str, history: float) -> str:
    """``peak``: the recorded peak of the counted rate over ``history``; ``rate``: the recorded rate,
    whose oldest sample within ``history`` tells whether it reaches back a day."""
    if history <= ONE_DAY:  # the history kept can never reach back a day: the plan's peak is a floor
        return f"({peak} >= on (tier) {plan_peak}) or on (tier) {plan_peak}"
    day = _duration(ONE_DAY)
    # a sample in (now - history, now - 1d]: the oldest point is at least a day old
    covered = f"count_over_time({rate}[{_duration(history - ONE_DAY)}] offset {day})"
    return f"({peak} and on (tier) {covered}) or on (tier) ({peak} >= on (tier) {plan_peak}) or on (tier) {plan_peak}"


def recommended_instances(peak_rps: float, usable_rps: float, safety: float) -> int:
    return max(0, math.ceil(math.ceil(peak_rps / usable_rps - FLOAT_NOISE) * (1 + safety) - FLOAT_NOISE))


def recommended_promql(peak: str, usable: str, safety: str) -> str:
    return (f"clamp_min(ceil(ceil({peak} / on (tier) {usable} - {FLOAT_NOISE:g}) * on (tier) (1 + {safety})"
            f" - {FLOAT_NOISE:g}), 0)")


def littles_law_floor(rps: float | None, queue: float | None, usable_rps: float, slo_ttft: float) -> int | None:
    """Instances that serve ``rps`` and drain ``queue`` within the TTFT SLO; None while either is unknown."""
    if rps is None or queue is None:
        return None
    return math.ceil((rps + queue / slo_ttft) / usable_rps - FLOAT_NOISE)


def littles_law_floor_promql(rps: str, queue: str, usable: str, slo_ttft: str) -> str:
    return f"ceil(({rps} + on (tier) {queue} / on (tier) {slo_ttft}) / on (tier) {usable} - {FLOAT_NOISE:g})"


def scale_down_floor(min_warm: int, littles_law: int | None) -> int:
    return min_warm if littles_law is None else max(min_warm, littles_law)


def scale_down_floor_promql(littles_law: str, min_warm: Mapping[str, int], deployed: str) -> str:
    """The floor of every tier; ``min_warm``: tier -> its minimum warm count, written in."""
    warm = " or ".join(f'({deployed}{{tier="{t}"}} * 0 + {n})' for t, n in min_warm.items()) or "vector(0)"
    return f"({littles_law} >= on (tier) ({warm})) or on (tier) ({warm})"


def scale_down_to(recommended: int, floor: int) -> int:
    return max(recommended, floor)


def scale_down_to_promql(recommended: str, floor: str) -> str:
    return f"({recommended} >= on (tier) ({floor})) or on (tier) ({floor})"
