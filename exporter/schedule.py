"""9.2's predictive scaling and utilization levers, per tier, from the retained RPS history. Pure.

- The load profile: the history's arrival rates binned by time of day (and by day of week once a
  whole week is retained), a high quantile per bin. Until ``warmup`` of history it is unknown.
- The schedule: for every upcoming moment, the count the profile says the tier will need once a
  new instance has had time to start: the most any bin up to ``cold start + margin`` ahead needs,
  never below ``min_warm_instances``. So it rises one lead before a peak and falls after it.
- The levers: idle windows by hour of day with their idle GPU-hours and cost, how often the
  tier could have run smaller and what that would have saved, and the batch-fill capacity.
Times are UTC.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Sequence

from dataclasses import replace
from typing import Mapping

from .evaluate import HistoryPoint
from .sizing import recommended_instances
from .model import (CapacitySchedule, Config, Mode, IdleWindow, Plan, Report, ScheduledBin, ScheduleSettings, Status,
                    UtilizationLevers)
from .text import num

DAY, WEEK = 86400.0, 7 * 86400.0
HORIZONS = (("15m", 900.0), ("1h", 3600.0))
IDLE_BELOW = 0.40  # an hour of day whose mean utilization is under this is an idle window (the trap, 9.2)
MIN_POINTS = 3  # a bin with fewer points says nothing yet


DEFAULT_COLD_START = 300.0  # 9.2: "2-5 minutes"; the conservative end until a cold start is measured


def _quantile(xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Profile:
    kind: str  # "weekly" | "daily" | "unknown"
    bin: float
    rps: dict[int, float]  # bin key -> the quantile of the arrival rate in it
    covers: float
    reason: str | None = None

    def key(self, t: float) -> int:
        period = WEEK if self.kind == "weekly" else DAY
        return int((t % period) // self.bin)

    def at(self, t: float) -> float | None:
        return self.rps.get(self.key(t)) if self.kind != "unknown" else None


def learn(history: Sequence[HistoryPoint], s: ScheduleSettings) -> Profile:
    points = [(h.timestamp, h.rps) for h in history if h.rps is not None]
    covers = points[-1][0] - points[0][0] if len(points) > 1 else 0.0
    if covers < s.warmup:
        return Profile("unknown", s.bin, {}, covers, f"{covers / 3600:.1f} h of history; the profile is trusted after "
                                                      f"{num(s.warmup / 3600)} h")
    kind = "weekly" if covers >= WEEK else "daily"
    period = WEEK if kind == "weekly" else DAY
    bins: dict[int, list[float]] = {}
    for t, rps in points:
        bins.setdefault(int((t % period) // s.bin), []).append(rps)
    return Profile(kind, s.bin, {k: _quantile(v, s.quantile) for k, v in bins.items() if len(v) >= MIN_POINTS}, covers)


def lead_time(s: ScheduleSettings, measured: float | None) -> tuple[float, str]:
    if s.cold_start is not None:
        return s.cold_start + s.margin, "configured"
    if measured is not None:
        return measured + s.margin, "measured"
    return DEFAULT_COLD_START + s.margin, "default"


def needed(profile: Profile, plan: Plan, t: float, s: ScheduleSettings) -> int | None:
    rps = profile.at(t)
    if rps is None:
        return None
    return max(s.min_warm_instances, recommended_instances(rps, plan.benchmark.usable_rps_per_instance,
                                                           plan.safety_factor))


def scheduled(profile: Profile, plan: Plan, t: float, lead: float, s: ScheduleSettings) -> int | None:
    """What must be running at ``t``: the most any moment up to ``lead`` ahead needs (an instance asked
    for now is serving ``lead`` later)."""
    steps = max(1, math.ceil(lead / profile.bin)) + 1
    ahead = [needed(profile, plan, min(t + i * profile.bin, t + lead), s) for i in range(steps)]
    known = [n for n in ahead if n is not None]
    return max(known) if known else None


def schedule(history: Sequence[HistoryPoint], plan: Plan, now: float, s: ScheduleSettings,
             measured_cold_start: float | None) -> CapacitySchedule:
    profile = learn(history, s)
    lead, lead_source = lead_time(s, measured_cold_start)
    known = partial(CapacitySchedule, profile=profile.kind, quantile=s.quantile, bin_seconds=s.bin,
                    history_seconds=profile.covers, lead_seconds=lead, lead_source=lead_source,
                    cold_start_p90_seconds=measured_cold_start, min_warm_instances=s.min_warm_instances)
    if profile.kind == "unknown":
        return known(status=Status.UNKNOWN, reason=profile.reason, now=None, ahead={h: None for h, _ in HORIZONS},
                     upcoming=())
    start = now - now % s.bin
    return known(status=Status.OK, reason=None, now=scheduled(profile, plan, now, lead, s),
                 ahead={h: scheduled(profile, plan, now + dt, lead, s) for h, dt in HORIZONS},
                 upcoming=tuple(ScheduledBin(start + i * s.bin, profile.at(start + i * s.bin),
                                             scheduled(profile, plan, start + i * s.bin, lead, s))
                                for i in range(int(DAY // s.bin))))


def scheduled_now(history: Sequence[HistoryPoint], plan: Plan, now: float, s: ScheduleSettings,
                  measured_cold_start: float | None = None) -> int | None:
    """``schedule(...).now`` alone: the count that must run at ``now`` (None while the profile is unknown),
    without the day of upcoming bins a report lists."""
    profile = learn(history, s)
    if profile.kind == "unknown":
        return None
    return scheduled(profile, plan, now, lead_time(s, measured_cold_start)[0], s)


def utilization_levers(history: Sequence[HistoryPoint], plan: Plan, deployed: int,
                       tokens_per_request: float | None) -> UtilizationLevers:
    """Figures from the history: idle windows by hour of day, scale-down time and savings, batch fill."""
    usable = plan.benchmark.usable_rps_per_instance
    gpu_hour = plan.gpu_hour_cost_usd * plan.gpus_per_instance
    points = [h for h in history if h.rps is not None]
    if len(points) < 2 or deployed <= 0:  # the same keys as a known answer: tools read one shape
        return UtilizationLevers(Status.UNKNOWN, "no history yet (or no instance deployed)")
    by_hour: dict[int, list[float]] = {}
    for h in points:
        by_hour.setdefault(int((h.timestamp % DAY) // 3600), []).append(h.rps)  # type: ignore[arg-type]
    capacity = deployed * usable
    windows = []
    for hour in sorted(by_hour):
        mean = sum(by_hour[hour]) / len(by_hour[hour])
        util = mean / capacity
        if util < IDLE_BELOW:
            idle_instances = deployed * (1 - util)
            windows.append(IdleWindow(
                hour, mean, util, idle_gpu_hours_per_day=idle_instances * plan.gpus_per_instance,
                idle_cost_usd_per_day=idle_instances * gpu_hour,
                batch_fill_tokens=(capacity - mean) * 3600 * tokens_per_request if tokens_per_request else None))
    # time the tier could have run smaller, and what that would have saved (each point until the next)
    smaller = saved = total = 0.0
    for a, b in zip(points, points[1:]):
        dt = b.timestamp - a.timestamp
        if dt <= 0 or dt > 6 * 3600:
            continue  # a gap in the history is not observed time
        total += dt
        need = max(1, recommended_instances(a.rps or 0.0, usable, plan.safety_factor))
        if need < deployed:
            smaller += dt
            saved += (deployed - need) * gpu_hour * dt / 3600
    mean_util = sum(h.rps or 0.0 for h in points) / len(points) / capacity
    return UtilizationLevers(
        Status.OK, None, in_trap=mean_util < IDLE_BELOW, mean_utilization=mean_util, idle_windows=tuple(windows),
        scale_down_share=smaller / total if total else None, scale_down_savings_usd=saved, observed_hours=total / 3600,
        scale_down_savings_usd_per_day=saved / (total / DAY) if total else None,
        batch_fill_tokens_per_day=sum(w.batch_fill_tokens or 0.0 for w in windows) if tokens_per_request else None)


def annotate(report: Report, config: Config, history: Mapping[str, Sequence[HistoryPoint]], now: float,
             cold_starts: Mapping[str, float | None]) -> Report:
    """The report with each tier's ``schedule`` and ``utilization_levers`` (fleet mode: a sidecar's history
    is one instance's, not the tier's)."""
    if config.mode is not Mode.FLEET:
        return report
    tiers = {}
    for name, t in report.tiers.items():
        tc = config.tiers[name]
        hist = history.get(name, ())
        p50 = t.workload.output_tokens.p50 if t.workload else None
        tiers[name] = replace(t, schedule=schedule(hist, tc.plan, now, tc.schedule, cold_starts.get(name)),
                              utilization_levers=utilization_levers(hist, tc.plan, t.instances_total, p50))
    return replace(report, tiers=tiers)
