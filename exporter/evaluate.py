"""Pure evaluation: (tier windows, config, history, now) -> Report.

No I/O, no clock, no globals: everything it needs is an argument.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Sequence

from . import catalogue, guardrails, heterogeneity
from .catalogue import Context, Row, apply_override
from .guardrails import BREAKER_RANGE, drift_findings, recommendations, runaway_finding
from .heterogeneity import fp8_on_a100, latency_outliers, mixed_models
from .model import Config, CurvePoint, Plan, TierConfig
from .model import (Action, Band, Finding, Guardrail, HistoryNote, MetricValue, ObservedWorkload, PlanCheck, Report, Resize,
                    Status, TierReport, TokenLengths)
from .inputs import INPUTS
from .sizing import (counts_toward_peak, history_covers_a_day, littles_law_floor, recommended_instances,
                     scale_down_floor, scale_down_to, sizing_peak)
from .text import num, plural, seconds
from .window import MAX_NAMED, Asks, Percentile, Quantity, TierView, TierWindow

STEP13_TTFT_FACTOR = 1.30  # "more than 30% above benchmark"
STEP13_UTIL_POINTS = 0.20  # "more than 20 points below", on the 0-1 scale
PREFIX_HIT_FLOOR = 0.7  # x the benchmark's prefix cache hit ratio
EVICTION_POINTS = 0.05  # above the benchmark's KV eviction ratio, on the 0-1 scale
OPERATING_POINT_TOLERANCE = 0.15  # with no curve, compare only within +-15% of the operating point
def peak_sample(tw: TierView, rps: float | None, window_seconds: float) -> float | None:
    """The window's RPS if it may count toward the observed peak: only over a full window."""
    return rps if counts_toward_peak(tw.span(), window_seconds) else None


@dataclass(frozen=True)
class HistoryPoint:
    """What a previous cycle concluded for a tier; the daemon keeps these for peak and scale-down."""

    timestamp: float
    rps: float | None
    recommended: int | None


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "unknown"
    if unit == "s":
        return seconds(v)
    if unit == "%":
        return f"{v * 100:.0f}%"
    return f"{num(v)}"


# ------------------------------------------------------------------ Step 13


BENCHMARK_CHECKS = {"ttft_p99_vs_benchmark": "TTFT P99", "itl_p99_vs_benchmark": "ITL P99",
                    "gpu_utilization_vs_benchmark": "GPU utilization",
                    "prefix_cache_hit_ratio_vs_benchmark": "prefix cache hit ratio",
                    "kv_cache_eviction_ratio_vs_benchmark": "KV eviction ratio"}


def predicted_at(plan: Plan, field: str, per_instance_rps: float | None) -> tuple[float | None, str]:
    """The benchmark's prediction of ``field`` at the observed per-instance load, or (None, why)."""
    b = plan.benchmark
    op = CurvePoint(b.usable_rps_per_instance, b.ttft_p99, b.itl_p99, b.gpu_utilization)
    # the curve's points that give the field, and the operating point where the curve gives none at its RPS
    given = {p.rps: v for p in b.curve if (v := getattr(p, field)) is not None}
    given.setdefault(op.rps, getattr(op, field))
    pts = sorted(given.items())
    if per_instance_rps is None:
        return None, "observed RPS is unknown"
    if len(pts) == 1:
        lo, hi = op.rps * (1 - OPERATING_POINT_TOLERANCE), op.rps * (1 + OPERATING_POINT_TOLERANCE)
        if lo <= per_instance_rps <= hi:
            return pts[0][1], "operating point"
        return None, (f"observed {num(per_instance_rps)} RPS per instance is outside ±15% of the benchmark's "
                      f"operating point ({num(op.rps)}); add plan.benchmark.curve to compare at other loads")
    if not pts[0][0] <= per_instance_rps <= pts[-1][0]:
        return None, (f"observed {num(per_instance_rps)} RPS per instance is outside the benchmark curve "
                      f"({num(pts[0][0])}-{num(pts[-1][0])}); it is never extrapolated")
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= per_instance_rps <= x1:
            y = y0 if x1 == x0 else y0 + (y1 - y0) * (per_instance_rps - x0) / (x1 - x0)
            return y, "curve"
    return pts[-1][1], "curve"


def step13_checks(plan: Plan, values: Mapping[str, Quantity], up: int) -> list[PlanCheck]:
    rps = values["requests_per_second"].value
    per_inst = None if rps is None or up == 0 else rps / up
    out: list[PlanCheck] = []

    def latency(check: str, key: str, field: str, label: str) -> None:
        obs = values[key].value
        pred, how = predicted_at(plan, field, per_inst)
        if obs is None or pred is None or per_inst is None:
            out.append(PlanCheck(check, obs, pred, Status.UNKNOWN,
                                 f"{label}: {values[key].reason if obs is None else how}"))
            return
        over = obs / pred - 1 if pred > 0 else math.inf
        if obs > STEP13_TTFT_FACTOR * pred:
            out.append(PlanCheck(check, obs, pred, Status.CRITICAL,
                                 f"{label} {_fmt(obs, 's')} is {over * 100:.0f}% above the benchmark's "
                                 f"{_fmt(pred, 's')} at {num(per_inst)} RPS per instance: production no longer matches the "
                                 f"benchmark; re-characterize the workload (lengths, prefix reuse, peak) and "
                                 f"re-run the benchmark."))
        else:
            out.append(PlanCheck(check, obs, pred, Status.OK,
                                 f"{label} {_fmt(obs, 's')} vs benchmark {_fmt(pred, 's')} at {num(per_inst)} RPS per "
                                 f"instance."))

    latency("ttft_p99_vs_benchmark", "ttft_p99_seconds", "ttft_p99", "TTFT P99")
    latency("itl_p99_vs_benchmark", "itl_p99_seconds", "itl_p99", "ITL P99")

    obs = values["gpu_compute_utilization_ratio"].value
    pred, how = predicted_at(plan, "gpu_utilization", per_inst)
    if obs is None or pred is None:
        out.append(PlanCheck("gpu_utilization_vs_benchmark", obs, pred, Status.UNKNOWN,
                             f"GPU utilization: {values['gpu_compute_utilization_ratio'].reason if obs is None else how}"))
    elif obs < pred - STEP13_UTIL_POINTS:
        out.append(PlanCheck("gpu_utilization_vs_benchmark", obs, pred, Status.CRITICAL,
                             f"GPU utilization {_fmt(obs, '%')} is {(pred - obs) * 100:.0f} points below the "
                             f"benchmark's {_fmt(pred, '%')} at equivalent RPS: production no longer matches the benchmark; "
                             f"re-characterize the workload and re-run the benchmark."))
    else:
        out.append(PlanCheck("gpu_utilization_vs_benchmark", obs, pred, Status.OK,
                             f"GPU utilization {_fmt(obs, '%')} vs benchmark {_fmt(pred, '%')}."))

    b = plan.benchmark
    if b.prefix_cache_hit_ratio is not None:
        obs = values["prefix_cache_hit_ratio"].value
        st = Status.UNKNOWN if obs is None else (
            Status.WARNING if obs < PREFIX_HIT_FLOOR * b.prefix_cache_hit_ratio else Status.OK)
        out.append(PlanCheck("prefix_cache_hit_ratio_vs_benchmark", obs, b.prefix_cache_hit_ratio, st,
                             f"prefix cache hit ratio {_fmt(obs, '%')} vs benchmark {_fmt(b.prefix_cache_hit_ratio, '%')}"
                             + (f" (below {PREFIX_HIT_FLOOR:.0%} of the prediction)" if st is Status.WARNING else "")))
    if b.kv_cache_eviction_ratio is not None:
        obs = values["kv_cache_eviction_ratio"].value
        st = Status.UNKNOWN if obs is None else (
            Status.WARNING if obs > b.kv_cache_eviction_ratio + EVICTION_POINTS else Status.OK)
        out.append(PlanCheck("kv_cache_eviction_ratio_vs_benchmark", obs, b.kv_cache_eviction_ratio, st,
                             f"KV eviction ratio {_fmt(obs, '%')} vs benchmark {_fmt(b.kv_cache_eviction_ratio, '%')}"
                             + (f" (more than {EVICTION_POINTS * 100:.0f} points above the prediction)"
                                if st is Status.WARNING else "")))
    return out


def slo_checks(plan: Plan, values: Mapping[str, Quantity]) -> list[PlanCheck]:
    out = []
    for check, key, slo, label in (("ttft_p99_slo", "ttft_p99_seconds", plan.slo.ttft_p99, "TTFT P99"),
                                   ("itl_p99_slo", "itl_p99_seconds", plan.slo.itl_p99, "ITL P99")):
        obs = values[key].value
        if obs is None:
            out.append(PlanCheck(check, None, slo, Status.UNKNOWN, f"{label}: {values[key].reason}"))
        elif obs > slo:
            out.append(PlanCheck(check, obs, slo, Status.CRITICAL,
                                 f"{label} {_fmt(obs, 's')} violates the SLO of {_fmt(slo, 's')}."))
        else:
            out.append(PlanCheck(check, obs, slo, Status.OK, f"{label} {_fmt(obs, 's')} within the SLO of {_fmt(slo, 's')}."))
    return out


def littles_law_check(plan: Plan, values: Mapping[str, Quantity], queue_status: Status) -> PlanCheck:
    rps, q = values["requests_per_second"].value, values["queue_depth_requests"].value
    if rps is None or q is None:
        return PlanCheck("queue_depth_littles_law", q, None, Status.UNKNOWN,
                         "queue depth or arrival rate unknown")
    limit = plan.slo.ttft_p99 * rps
    return PlanCheck("queue_depth_littles_law", q, limit, queue_status,
                     f"mean queue {num(q)} vs Little's Law max safe depth at the current arrival rate, {num(limit)} "
                     f"({_fmt(plan.slo.ttft_p99, 's')} TTFT SLO x {num(rps)} RPS now); warning at "
                     f"{BREAKER_RANGE[0]:.0%}, critical at {BREAKER_RANGE[1]:.0%} of it. The gateway's static breaker "
                     f"is sized on the plan's peak instead: see the guardrails.")


# ------------------------------------------------------------------ resize


def plan_shortfall(tier: TierConfig) -> str | None:
    """Where the plan's own figures need more instances than it decided: its peak over its usable RPS per
    instance, with its safety margin. ``serve`` would then say scale_up on its first cycle."""
    plan = tier.plan
    usable = plan.benchmark.usable_rps_per_instance
    needed = recommended_instances(plan.peak_rps, usable, plan.safety_factor)
    if plan.instances >= needed:
        return None
    return (f"{plan.instances} is below the {needed} the plan's own figures need: ceil(ceil({num(plan.peak_rps)} "
            f"peak RPS / {num(usable)} usable RPS per instance) x (1 + {num(plan.safety_factor)} safety)) = {needed}; "
            f"fleetwatch will recommend scale_up to {needed} from its first cycle")


def observed_throughout(history: Sequence[HistoryPoint], start: float, now: float, max_gap: float) -> bool:
    """Whether the history has a point at least every ``max_gap`` seconds from ``start`` to ``now``
    (a restart or an outage leaves a gap that must not count as observed)."""
    times = [h.timestamp for h in history if start - max_gap <= h.timestamp <= now]
    if not times or times[0] > start + max_gap:
        return False
    edges = [*times, now]
    return all(b - a <= max_gap for a, b in zip(edges, edges[1:]))


@dataclass(frozen=True)
class Partial:
    """What a tier's window holds while it is not full: the arrival rate over it, and why it is partial."""

    rps: float | None
    why: str


def resize(plan: Plan, tier: str, current: int, rps_now: float | None, history: Sequence[HistoryPoint],
           now: float, step13_critical: bool, max_gap: float = math.inf, floor: tuple[int, str] = (0, ""),
           partial: Partial | None = None) -> Resize:
    """``floor``: (count, why) that a scale-down may never go under (the minimum warm count, or what drains
    the current queue within the TTFT SLO). ``partial``: the window is not full yet. With no full window
    ever observed, the verdict rests on what the partial window holds, and says it is provisional; with
    not even that, it is unknown, never a hold or a scale-up from the plan alone."""
    observed = [h.rps for h in history if h.rps is not None] + ([rps_now] if rps_now is not None else [])
    if not observed and partial is not None:
        if partial.rps is None:
            return Resize(current, None, Action.UNKNOWN, f"tier {tier}: no arrival rate observed yet ({partial.why}); "
                                                         f"no resize verdict until there is one.", None)
        verdict = resize(plan, tier, current, partial.rps, (), now, step13_critical, max_gap, floor)
        return replace(verdict, provisional=partial.why)
    observed_peak = max(observed) if observed else None
    oldest = min((h.timestamp for h in history), default=now)
    covered = now - oldest
    a_day = history_covers_a_day(oldest, now)
    peak = sizing_peak(observed_peak, a_day, plan.peak_rps)
    if a_day and observed_peak is not None:
        basis = f"observed peak {num(observed_peak)} RPS over the retained history"
    else:
        if observed_peak is None:
            basis = (f"the plan's peak of {num(plan.peak_rps)} RPS (no full window observed yet, and less than a "
                     f"day of history)")
        elif observed_peak > plan.peak_rps:
            basis = f"the observed peak of {num(observed_peak)} RPS (above the plan's {num(plan.peak_rps)})"
        else:
            basis = (f"the plan's peak of {num(plan.peak_rps)} RPS (observed up to {num(observed_peak)}; the plan's "
                     f"counts until a day of history is kept)")
    usable = plan.benchmark.usable_rps_per_instance
    rec = recommended_instances(peak, usable, plan.safety_factor)
    formula = f"{basis} / {num(usable)} usable RPS per instance x (1 + {num(plan.safety_factor)} safety)"
    if rec > current:
        return Resize(current, rec, Action.SCALE_UP, f"tier {tier} needs {plural(rec, 'instance')}, has {current}: "
                                                f"{formula}.", peak)
    if step13_critical:
        return Resize(current, rec, Action.RECHARACTERIZE,
                      f"tier {tier}: production no longer matches the benchmark the plan was sized on (observed vs "
                      f"benchmark is critical); re-characterize the workload and re-run the benchmark before "
                      f"resizing. The sizing math says {rec} for {current}.", peak)
    if rec < current and floor[0] >= current:
        return Resize(current, rec, Action.HOLD, f"tier {tier} could run {plural(rec, 'instance')} by the sizing math, but "
                                            f"keeps {current}: {floor[1]}.", peak)
    if rec < current:
        start = now - plan.scale_down_stabilization
        window = [h for h in history if h.timestamp >= start]
        long_enough = covered >= plan.scale_down_stabilization and observed_throughout(history, start, now, max_gap)
        if long_enough and all(h.recommended is not None and h.recommended < current for h in window):
            to = scale_down_to(rec, floor[0])
            return Resize(current, rec, Action.SCALE_DOWN,
                          f"tier {tier} needs {plural(rec, 'instance')}, has {current}, for the whole "
                          f"{num(plan.scale_down_stabilization / 60)}m stabilization window: {formula}"
                          + (f"; scale down to {to}, not below: {floor[1]}" if to > rec else "") + ".", peak)
        return Resize(current, rec, Action.HOLD,
                      f"tier {tier} could run {plural(rec, 'instance')} instead of {current}, but not yet for a whole "
                      f"{num(plan.scale_down_stabilization / 60)}m stabilization window: {formula}.", peak)
    return Resize(current, rec, Action.HOLD, f"tier {tier} has the {plural(current, 'instance')} it needs: {formula}.",
                  peak)


# ------------------------------------------------------------------ workload


WORKLOAD_ASKS = Asks(tuple(Percentile(key, q) for key in ("prompt_tokens_per_request", "generation_tokens_per_request")
                           for q in (0.50, 0.95, 0.99)), finish_reasons=True)


def workload(tw: TierView) -> ObservedWorkload:
    def lengths(key: str) -> TokenLengths:
        return TokenLengths(tw.quantile(key, 0.50).value, tw.quantile(key, 0.95).value, tw.quantile(key, 0.99).value,
                            tw.quantile(key, 0.5).samples)
    reasons = {k.split(":", 1)[1]: tw.increase(k) for k in tw.counter_keys("requests_finished_reason:")}
    total = sum(v for v in reasons.values() if v)
    return ObservedWorkload(lengths("prompt_tokens_per_request"), lengths("generation_tokens_per_request"),
                            {r: (v or 0.0) / total for r, v in sorted(reasons.items())} if total > 0 else {})


# ------------------------------------------------------------------ the tier


TTFT_RISING_ASKS = Asks((Percentile("ttft_seconds", 0.99, halves=True),))


def _ttft_rising(tw: TierView) -> bool:
    """TTFT P99 of the window's second half more than 20% above its first half."""
    if tw.scrapes() < 4:
        return False
    first, second = tw.halves()
    a, b = first.quantile("ttft_seconds", 0.99).value, second.quantile("ttft_seconds", 0.99).value
    return a is not None and b is not None and b > 1.2 * a


def _usable(q: Quantity) -> Quantity:
    """A row's value as computed, unless it is not a number a row can hold."""
    if q.value is not None and (not math.isfinite(q.value) or q.value < 0):
        return Quantity(None, 0, reason="the inputs produce a value that is not a finite, non-negative number")
    return q


def _valid_inputs(q: Quantity, window: TierWindow, inputs: Sequence[str]) -> Quantity:
    """A row computed over a window of scrapes, unless one of its inputs held an unusable reading."""
    for key in inputs:
        bad = window.invalid(key)
        if bad:
            what = INPUTS[key].what if key in INPUTS else key
            return Quantity(None, 0, reason=f"{', '.join(bad)} reported a NaN, infinite or negative {what} in the "
                                            f"window; the row is unknown until that reading leaves the window")
    return q


class WindowRows(Mapping[str, Quantity]):
    """Each row's Python computation over a window of scrapes, computed when first read (inside the
    tier's evaluation, so that one tier's failing row fails that tier only)."""

    def __init__(self, window: TierWindow, plan: Plan) -> None:
        self._window, self._plan = window, plan
        self._rows: dict[str, Quantity] | None = None

    def _all(self) -> dict[str, Quantity]:
        if self._rows is None:
            self._rows = {row.key: _valid_inputs(row.compute(self._window, self._plan), self._window, row.inputs)
                          for row in catalogue.ROWS}
        return self._rows

    def __getitem__(self, key: str) -> Quantity:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def scraped_rows(config: Config, windows: Mapping[str, TierWindow]) -> dict[str, Mapping[str, Quantity]]:
    """Per tier, its rows over its window of scrapes."""
    return {name: WindowRows(windows[name], tier.plan) for name, tier in config.tiers.items()}


def down_reason(tw: TierView) -> str | None:
    """Why the whole tier is unknown, when it is: no instance, or none answering (each with the fetch's
    reason). None while some instance answers."""
    if not tw.instances:
        return "the tier has no instances (none configured, or discovery found none)"
    if tw.up():
        return None
    named = [f"{i}: {tw.error(i) or 'did not answer'}" for i in tw.instances[:MAX_NAMED]]
    more = len(tw.instances) - len(named)
    return "target down, no instance answered (" + "; ".join(named) + (f"; and {more} more" if more else "") + ")"


def explain(tw: TierView, row: Row, q: Quantity) -> Quantity:
    """An unknown row's reason, from the tier's state when that is the cause: the tier is down (with each
    fetch's reason), it is warming up, or its GPU source did not answer; otherwise the row's own reason
    (not exposed by this engine version, no events in the window, an invalid reading)."""
    if q.value is not None:
        return q
    cause = down_reason(tw)
    if cause is None and row.readings >= 2:
        cause = tw.warming()
    if cause is None and row.key.startswith("gpu_"):
        cause = tw.gpu_failure()
    return q if cause is None else replace(q, reason=cause)


def _explained(guardrails: dict[str, Guardrail], tw: TierView) -> dict[str, Guardrail]:
    """A guardrail with no value says why as an unknown row does: the tier down or warming up first."""
    cause = down_reason(tw) or tw.warming()
    if cause is None:
        return guardrails
    return {k: (replace(g, basis=cause) if g.value is None else g) for k, g in guardrails.items()}


def _scale_down_floor(tier: TierConfig, values: Mapping[str, Quantity]) -> tuple[int, str]:
    """The fewest instances a scale-down may leave: the minimum warm count, and (Little's Law) enough to
    serve the arrivals and drain the current queue within the TTFT SLO."""
    warm = tier.schedule.min_warm_instances
    rps, queue = values["requests_per_second"].value, values["queue_depth_requests"].value
    usable, slo = tier.plan.benchmark.usable_rps_per_instance, tier.plan.slo.ttft_p99
    drain = littles_law_floor(rps, queue, usable, slo)
    if drain is not None and scale_down_floor(warm, drain) > warm:
        assert rps is not None and queue is not None
        return drain, (f"{num(rps)} RPS plus draining {num(queue)} queued requests within the {num(slo)}s TTFT SLO need "
                       f"{drain} instances")
    return warm, f"the minimum warm count is {warm}"


# every question evaluation asks of a window besides the rows: the Prometheus-backed view is derived from it
ASKS = WORKLOAD_ASKS | TTFT_RISING_ASKS | guardrails.ASKS | heterogeneity.ASKS


def evaluate_tier(tier: TierConfig, tw: TierView, history: Sequence[HistoryPoint], now: float,
                  window_seconds: float = 0.0, max_gap: float = math.inf, *,
                  rows: Mapping[str, Quantity], sized_window: float | None = None) -> TierReport:
    """``rows``: the rows' values as the fleet source computed them (over its window of scrapes, or by
    Prometheus from the catalogue's PromQL); ``tw`` answers every other question evaluation asks.
    ``sized_window``: the config's window, where ``window_seconds`` may be shorter (`check`'s span)."""
    plan = tier.plan
    values = {row.key: explain(tw, row, _usable(rows[row.key])) for row in catalogue.ROWS}
    bands: dict[str, Band | None] = {}
    statuses: dict[str, Status] = {}
    ctx = Context(plan, values, statuses, _ttft_rising(tw))
    for row in catalogue.ROWS:
        band = apply_override(row.band.resolve(plan, values), tier.bands.get(row.key))
        bands[row.key] = band
        statuses[row.key] = band.status(values[row.key].value) if band is not None else (
            Status.UNKNOWN if values[row.key].value is None else Status.OK)
    metrics = {}
    for row in catalogue.ROWS:
        q, st = values[row.key], statuses[row.key]
        metrics[row.key] = MetricValue(
            key=row.key, value=q.value, unit=row.unit, status=st, band=bands[row.key],
            diagnosis=row.diagnose(ctx, st) if q.value is not None else None,
            samples=q.samples, source=q.source, reason=q.reason if q.value is None else None)

    up = tw.up()
    step13 = step13_checks(plan, values, len(up))
    if window_seconds and not counts_toward_peak(tw.span(), window_seconds):
        # just after a start a P99 rests on a few seconds of requests: one slow one would ask to
        # re-characterize the workload. The benchmark is compared over a full window only
        partial = (f"the window holds {seconds(tw.span())} of {seconds(window_seconds)} so far; production is "
                   f"compared with the benchmark over a full window")
        step13 = [replace(c, status=Status.UNKNOWN, message=f"{BENCHMARK_CHECKS[c.check]}: {partial}")
                  if c.status is not Status.UNKNOWN else c for c in step13]
    checks = step13 + slo_checks(plan, values) + [littles_law_check(plan, values, statuses["queue_depth_requests"])]
    step13_critical = any(c.status is Status.CRITICAL for c in step13)

    findings: list[Finding] = []
    for inst in tw.down():
        why = tw.error(inst)
        findings.append(Finding("target_down", Status.CRITICAL if not up else Status.WARNING,
                                f"{inst} is down: {why}" if why else f"{inst} did not answer its last scrape", inst))
    total = len(tw.instances)
    if total != plan.instances:
        findings.append(Finding("instances_differ_from_plan", Status.WARNING,
                                f"{plural(total, 'instance')} deployed, the plan's fleet size is {plan.instances}"))
    rps = values["requests_per_second"].value
    rps_now = peak_sample(tw, rps, window_seconds)
    observed_peak = max([h.rps for h in history if h.rps is not None] + ([rps_now] if rps_now is not None else []),
                        default=None)
    if observed_peak is not None and observed_peak > plan.peak_rps:
        findings.append(Finding("peak_above_plan", Status.WARNING,
                                f"observed peak {num(observed_peak)} RPS exceeds the plan's peak of {num(plan.peak_rps)} RPS: "
                                f"the workload profile's load assumption no longer holds"))

    findings += drift_findings(tw, plan)
    findings += [f for f in (runaway_finding(tw), mixed_models(tw), fp8_on_a100(tw, plan)) if f is not None]
    findings += latency_outliers(tw)

    return TierReport(
        tier=tier.name, instances_up=len(up), instances_total=total, metrics=metrics,
        plan_checks=tuple(checks),
        resize=_verdict(plan, tier.name, total, tw, values["requests_per_second"], rps_now, history, now,
                        step13_critical, max_gap,
                        _scale_down_floor(tier, values), window_seconds, sized_window),
        workload=workload(tw), findings=tuple(findings),
        guardrails=_explained(recommendations(tw, plan), tw),
    )


def _verdict(plan: Plan, tier: str, total: int, tw: TierView, rate: Quantity, rps_now: float | None,
             history: Sequence[HistoryPoint], now: float, step13_critical: bool, max_gap: float,
             floor: tuple[int, str], window_seconds: float, sized_window: float | None = None) -> Resize:
    """The resize verdict, or unknown while no instance of the tier has been seen (the first cycles
    reading a Prometheus that holds no series yet): 0 deployed is not known to be 0 deployed."""
    if total == 0:
        return Resize(0, None, Action.UNKNOWN, f"tier {tier}: no instance seen yet; no resize verdict until one is.",
                      None)
    partial = None
    if rps_now is None:
        # no rate at all says why (targets down, warming up); a partial one how much of the window it spans
        partial = Partial(rate.value, (rate.reason or "no arrival rate") if rate.value is None else
                          f"the window holds {seconds(tw.span())} of {seconds(window_seconds)} so far"
                          if window_seconds else "no full window observed yet")
    verdict = resize(plan, tier, total, rps_now, history, now, step13_critical, max_gap, floor, partial)
    short = sized_window is not None and window_seconds and not counts_toward_peak(window_seconds, sized_window)
    if short and not verdict.provisional and not any(h.rps is not None for h in history):
        # `check`: its whole window is shorter than the one fleetwatch sizes on
        return replace(verdict, provisional=f"it rests on {seconds(window_seconds)} of traffic, not a full "
                                            f"{seconds(sized_window or 0.0)} window")
    return verdict


def failed_tier(tier: TierConfig, tw: TierView, error: str) -> TierReport:
    """What a tier reports when its evaluation raised: every row unknown, the error said once."""
    reason = f"evaluation of this tier failed: {error}"
    metrics = {row.key: MetricValue(row.key, None, row.unit, Status.UNKNOWN, None, None, 0, None, reason)
               for row in catalogue.ROWS}
    total = len(tw.instances)
    return TierReport(
        tier=tier.name, instances_up=len(tw.up()), instances_total=total, metrics=metrics, plan_checks=(),
        resize=Resize(total, None, Action.UNKNOWN, f"tier {tier.name}: no resize verdict ({reason}).", None),
        workload=None, findings=(), guardrails={}, error=error)


MAX_HISTORY_POINTS = 10_000  # per tier and range query; Prometheus refuses more than 11,000


def history_step(config: Config) -> float:
    """The resolution of the history read back from Prometheus (source: prometheus)."""
    return max(config.interval, math.ceil(config.history / MAX_HISTORY_POINTS))


def history_gap(config: Config) -> float:
    """The longest pause between cycles that still counts as observing without a break."""
    gap = max(3 * config.interval, 60.0)
    return gap if config.prometheus is None else max(gap, 2 * history_step(config))


def replay_history(plan: Plan, points: Sequence[tuple[float, float | None]]) -> list[HistoryPoint]:
    """History points from past arrival rates (oldest first), with the count that each cycle would have
    recommended then: the running observed peak, floored by the plan's peak until a day is covered."""
    out: list[HistoryPoint] = []
    peak: float | None = None
    first = points[0][0] if points else 0.0
    for t, rps in points:
        if rps is not None and math.isfinite(rps):
            peak = rps if peak is None else max(peak, rps)
        else:
            rps = None
        basis = sizing_peak(peak, history_covers_a_day(first, t), plan.peak_rps)
        out.append(HistoryPoint(t, rps, recommended_instances(basis, plan.benchmark.usable_rps_per_instance,
                                                               plan.safety_factor)))
    return out


def evaluate_window(tier: TierConfig, window: TierWindow, history: Sequence[HistoryPoint], now: float,
                    window_seconds: float = 0.0, max_gap: float = math.inf) -> TierReport:
    """A tier over a window of scrapes, its rows computed in Python."""
    return evaluate_tier(tier, window, history, now, window_seconds, max_gap, rows=WindowRows(window, tier.plan))


def evaluate(config: Config, windows: Mapping[str, TierView], history: Mapping[str, Sequence[HistoryPoint]],
             now: float, window_seconds: float, history_note: HistoryNote | None = None, *,
             rows: Mapping[str, Mapping[str, Quantity]]) -> Report:
    tiers: dict[str, TierReport] = {}
    for name, t in config.tiers.items():
        hist = history.get(name, ())
        try:
            tr = evaluate_tier(t, windows[name], hist, now, window_seconds, history_gap(config), rows=rows[name],
                               sized_window=config.window)
        except Exception as e:  # noqa: BLE001 - one tier's bug must never take the others down
            tr = failed_tier(t, windows[name], f"{type(e).__name__}: {str(e)[:200]}")
        oldest = min((h.timestamp for h in hist), default=now)
        note = history_note or HistoryNote(persisted=False, since=None)
        tiers[name] = replace(tr, history=replace(note, points=len(hist), covers_seconds=now - oldest))
    return Report(generated_at=now, window_seconds=window_seconds, tiers=tiers)
