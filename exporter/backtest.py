"""``fleetwatch backtest``: a stored stretch of the fleet's history replayed through the plan, one cycle per
step, as the Prometheus-backed daemon would have seen it at that time.

Each step asks the backed mode's own questions (exporter/promview.py: the catalogue's PromQL, the instances
up, the percentiles findings ask). Each question is sent once, as a range query over the whole stretch:
Prometheus evaluates a range query at every step exactly as an instant query at that time, so what step
``t`` reads is what a cycle at ``t`` would have read. The resize verdict at ``t`` rests on the history up to
``t`` only. Pure: the range queries come in through a function; exporter/cli.py gives it the HTTP API.
"""
from __future__ import annotations

import bisect
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from .alertreplay import (FLAPPING_EPISODES, AlertReplay, AlertRule, Firing, Route, evaluate_rule, flapping,
                          notifications, reads)
from .evaluate import ASKS, HistoryPoint, evaluate, history_step, peak_sample, replay_history
from .model import Config, Plan, Status, TierReport
from .promview import Answers, Memo, PromTierView, Query, Result, prefetch, row_queries
from .promview import rows as row_values
from .schedule import scheduled_now

Labels = Mapping[str, str]
RangeResult = Sequence[tuple[Labels, Sequence[tuple[float, float]]]]
RangeQuery = Callable[[str, float, float, float], RangeResult]  # (expr, start, end, step)

MAX_POINTS = 10_000  # steps per range query; Prometheus refuses more than 11,000 points per series
POOL = 8  # range queries at once: the same restraint toward a shared Prometheus as a live cycle's
SLOS = (("ttft_p99", "ttft_p99_seconds", "TTFT P99"), ("itl_p99", "itl_p99_seconds", "ITL P99"))


def step_times(start: float, end: float, step: float) -> list[float]:
    """A range query's evaluation times: ``start``, ``start + step``, ... up to ``end``, both ends included."""
    n = int(math.floor((end - start) / step + 1e-9))
    return [start + k * step for k in range(n + 1)]


MAX_CYCLES = 100_000  # a month at 30 s; more is a --step mistaken for a scrape interval


def cycle_times(start: float, end: float, step: float) -> list[float]:
    """The replayed cycles from ``start`` to ``end``: each stands for the ``step`` before it, so they end at
    ``end`` and together cover exactly ``end - start`` (one cycle, at ``end``, when that is less than a step)."""
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"the step must be a positive duration, got {step:g}s")
    n = max(1, int(math.floor((end - start) / step + 1e-9)))
    if n > MAX_CYCLES:
        raise ValueError(f"{n:,} cycles from --from to --to at this --step: at most {MAX_CYCLES:,}; use a longer step")
    return [end - (n - 1 - k) * step for k in range(n)]


class RangeAnswers:
    """Every expression's answer at every step of a range, each expression asked once (in ranges of at most
    MAX_POINTS steps). ``at(t)`` is a cycle's query function at step ``t``. Safe for several threads."""

    def __init__(self, query_range: RangeQuery, start: float, end: float, step: float) -> None:
        self._query_range = query_range
        self.start, self.end, self.step = start, end, step
        self.queries = 0  # range queries sent
        self._memo: Memo[dict[int, list[tuple[Labels, float]]]] = Memo(self._ask)
        self._lock = threading.Lock()

    def _index(self, t: float) -> int:
        return round((t - self.start) / self.step)

    def _ask(self, expr: str) -> dict[int, list[tuple[Labels, float]]]:
        out: dict[int, list[tuple[Labels, float]]] = {}
        s = self.start
        while s <= self.end + 1e-9:
            e = min(self.end, s + (MAX_POINTS - 1) * self.step)
            with self._lock:
                self.queries += 1
            for labels, points in self._query_range(expr, s, e, self.step):
                for ts, v in points:
                    out.setdefault(self._index(ts), []).append((labels, v))
            s = e + self.step
        return out

    def series(self, expr: str) -> dict[int, list[tuple[Labels, float]]]:
        """``expr`` at every step: step index -> (labels, value) per series."""
        return self._memo.get(expr)

    def asked(self) -> list[str]:
        """Every expression asked so far (answered or not)."""
        return self._memo.asked()

    def at(self, t: float) -> Query:
        k = self._index(t)

        def query(expr: str) -> Result:
            return self.series(expr).get(k, [])
        return query

    def prefetch(self, exprs: Iterable[str]) -> list[Exception]:
        """Ask ``exprs`` at once on a small pool; the errors (each also raised again where its answer is used)."""
        errors: list[Exception] = []
        with ThreadPoolExecutor(max_workers=POOL, thread_name_prefix="promql-range") as pool:
            for f in [pool.submit(self.series, e) for e in exprs]:
                try:
                    f.result()
                except Exception as e:  # noqa: BLE001 - a failed question leaves its rows unknown, as live
                    errors.append(e)
        return errors


# ---------------------------------------------------------------- one tier at one step


@dataclass(frozen=True)
class TierStep:
    """What a cycle at ``at`` concluded for one tier: the figures a backtest summarises and plots."""

    at: float
    values: Mapping[str, float | None]  # row key -> value
    statuses: Mapping[str, Status]
    deployed: int  # instances Prometheus knew (up or not)
    up: int
    recommended: int | None
    action: str
    scheduled: int | None  # what the learned schedule asked for at that time
    findings: tuple[str, ...]  # kinds of the findings that were not ok
    trap: bool  # fleet utilization below its band: the utilization trap
    error: str | None = None


def tier_step(t: float, tr: TierReport, scheduled: int | None) -> TierStep:
    util = tr.metrics.get("fleet_utilization_ratio")
    trap = bool(util and util.value is not None and util.band and util.band.warning_below
                and util.band.warning_below.below(util.value))
    return TierStep(
        at=t, values={k: m.value for k, m in tr.metrics.items()}, statuses={k: m.status for k, m in tr.metrics.items()},
        deployed=tr.instances_total, up=tr.instances_up, recommended=tr.resize.recommended_instances,
        action=str(tr.resize.action), scheduled=scheduled,
        findings=tuple(sorted({f.kind for f in tr.findings if f.status is not Status.OK})), trap=trap, error=tr.error)


def _history_until(points: Sequence[HistoryPoint], stamps: Sequence[float], t: float,
                   keep: float) -> list[HistoryPoint]:
    lo, hi = bisect.bisect_right(stamps, t - keep), bisect.bisect_right(stamps, t)
    return list(points[lo:hi])


def history_points(config: Config, answers: RangeAnswers) -> dict[str, list[HistoryPoint]]:
    """Each tier's arrival rate over ``answers``'s range, with what each point would have recommended: what a
    daemon started at the range's end reads back from Prometheus."""
    expr, _ = row_queries(config, config.window)["requests_per_second"]
    by_tier: dict[str, list[tuple[float, float | None]]] = {}
    for k, result in sorted(answers.series(expr).items()):
        for labels, v in result:
            by_tier.setdefault(labels.get("tier", ""), []).append((answers.start + k * answers.step, v))
    return {name: replay_history(t.plan, by_tier.get(name, [])) for name, t in config.tiers.items()}


def replay(config: Config, stretches: Iterable[RangeAnswers], history: Mapping[str, Sequence[HistoryPoint]],
           progress: Callable[[int], None] | None = None) -> dict[str, list[TierStep]]:
    """Every step of each of ``stretches`` (consecutive, oldest first), evaluated as a live cycle: tier -> its
    steps, oldest first. ``history`` is what a daemon started at the first step read back; each step then adds
    its own point, as each live cycle does."""
    assert config.prometheus is not None
    label, seconds = config.prometheus.instance_label, config.window
    held: dict[str, list[HistoryPoint]] | None = None
    stamps: dict[str, list[float]] = {}
    out: dict[str, list[TierStep]] = {name: [] for name in config.tiers}
    for answers in stretches:
        if held is None:
            held = {n: [p for p in history.get(n, ()) if p.timestamp < answers.start] for n in config.tiers}
            stamps = {n: [p.timestamp for p in pts] for n, pts in held.items()}
        for t in step_times(answers.start, answers.end, answers.step):
            cycle = Answers(answers.at(t))
            views = {name: PromTierView(name, cycle, seconds, config.interval, label) for name in config.tiers}
            rows = row_values(config, cycle, seconds)
            hist = {n: _history_until(held[n], stamps[n], t, config.history) for n in config.tiers}
            # the schedule's count for now only: a report's day of upcoming bins and its utilization levers (each
            # a pass over the whole history) are not needed at every step, and were two thirds of a week's replay
            report = evaluate(config, views, hist, t, seconds, rows=rows)
            for name, tr in report.tiers.items():
                tc = config.tiers[name]
                out[name].append(tier_step(t, tr, scheduled_now(hist[name], tc.plan, t, tc.schedule)))
                if tr.error is None:  # as Pipeline._evaluate appends after each cycle
                    rps = peak_sample(views[name], tr.metrics["requests_per_second"].value, config.window)
                    held[name].append(HistoryPoint(t, rps, tr.resize.recommended_instances))
                    stamps[name].append(t)
            if progress is not None:
                progress(1)
    return out


CHUNK_STEPS = 288  # a day at 5m: Prometheus answers the next stretch's range queries while this one is evaluated


def stretches(query_range: RangeQuery, start: float, end: float, step: float, asked: list[str],
              sent: list[RangeAnswers], failed: list[Exception]) -> Iterator[RangeAnswers]:
    """``start`` to ``end`` in stretches of CHUNK_STEPS steps, each with ``asked`` already answered; the next
    stretch's queries run while the caller evaluates this one. A question first asked while a stretch was
    evaluated joins ``asked`` for the stretches after the next."""
    times = step_times(start, end, step)
    spans = [(times[i], times[min(i + CHUNK_STEPS, len(times)) - 1]) for i in range(0, len(times), CHUNK_STEPS)]

    def load(span: tuple[float, float], exprs: list[str]) -> RangeAnswers:
        answers = RangeAnswers(query_range, span[0], span[1], step)
        failed.extend(answers.prefetch(exprs))
        sent.append(answers)
        return answers

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="backtest-ahead") as ahead:
        upcoming = ahead.submit(load, spans[0], list(asked))
        for k in range(len(spans)):
            answers = upcoming.result()
            if k + 1 < len(spans):
                upcoming = ahead.submit(load, spans[k + 1], list(asked))
            yield answers
            asked.extend(e for e in answers.asked() if e not in asked)


def questions(config: Config) -> list[str]:
    """What every replayed cycle asks: sent once each, before the steps are evaluated."""
    assert config.prometheus is not None
    return prefetch(config, config.window, config.prometheus.instance_label, ASKS)


# ---------------------------------------------------------------- what the steps add up to


@dataclass(frozen=True)
class Period:
    """A run of consecutive steps where something held: ``start`` to ``end`` (the last such step)."""

    start: float
    end: float
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"from": self.start, "to": self.end, "detail": self.detail}


def periods(steps: Sequence[TierStep], holds: Callable[[TierStep], bool],
            detail: Callable[[list[TierStep]], str] = lambda run: "") -> list[Period]:
    out: list[Period] = []
    run: list[TierStep] = []
    for s in list(steps) + [None]:
        if s is not None and holds(s):
            run.append(s)
            continue
        if run:
            out.append(Period(run[0].at, run[-1].at, detail(run)))
            run = []
    return out


def curve_at(plan: Plan, field_name: str, per_instance_rps: float) -> tuple[float | None, bool]:
    """The benchmark's ``field_name`` at ``per_instance_rps`` and whether that load is beyond what the
    benchmark measured. Interpolated on the curve (with the operating point); below its first point the first
    point's value (a lighter load is no slower); beyond its last point, (None, True)."""
    b = plan.benchmark
    given = {p.rps: v for p in b.curve if (v := getattr(p, field_name)) is not None}
    given.setdefault(b.usable_rps_per_instance, getattr(b, field_name))
    pts = sorted(given.items())
    if per_instance_rps > pts[-1][0] * (1 + 1e-9):
        return None, True
    if per_instance_rps <= pts[0][0]:
        return pts[0][1], False
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= per_instance_rps <= x1:
            return (y0 if x1 == x0 else y0 + (y1 - y0) * (per_instance_rps - x0) / (x1 - x0)), False
    return pts[-1][1], False


@dataclass(frozen=True)
class PlanOutcome:
    """One plan against the replayed traffic: what it would have run, cost, and the minutes its own
    benchmark curve says the SLO would have been broken at the RPS per instance it would have had."""

    name: str
    instances: int
    gpu_hours: float
    cost_usd: float
    slo_violation_minutes: float
    beyond_benchmark_minutes: float  # load past the curve's last point: counted as violating
    unknown_minutes: float  # steps whose RPS Prometheus could not give

    def as_dict(self) -> dict[str, object]:
        return {"plan": self.name, "instances": self.instances, "gpu_hours": self.gpu_hours, "cost_usd": self.cost_usd,
                "slo_violation_minutes": self.slo_violation_minutes,
                "beyond_benchmark_minutes": self.beyond_benchmark_minutes, "unknown_minutes": self.unknown_minutes}


def plan_outcome(name: str, plan: Plan, steps: Sequence[TierStep], step: float) -> PlanOutcome:
    violating = beyond = unknown = 0.0
    for s in steps:
        rps = s.values.get("requests_per_second")
        if rps is None or not math.isfinite(rps):
            unknown += step
            continue
        per = rps / plan.instances
        broken = False
        for fld, _, _ in SLOS:
            v, past = curve_at(plan, fld, per)
            if past:
                beyond += step
                broken = True
                break
            if v is not None and v > getattr(plan.slo, fld):
                broken = True
        violating += step if broken else 0.0
    hours = len(steps) * step / 3600
    gpu_hours = plan.instances * plan.gpus_per_instance * hours
    return PlanOutcome(name, plan.instances, gpu_hours, gpu_hours * plan.gpu_hour_cost_usd, violating / 60,
                       beyond / 60, unknown / 60)


@dataclass(frozen=True)
class TierSummary:
    tier: str
    seconds: float  # the stretch the steps stand for
    steps: int
    outside_slo_seconds: Mapping[str, float]  # "ttft_p99" / "itl_p99" -> seconds the observed P99 was above it
    unknown_slo_seconds: Mapping[str, float]
    undersized: tuple[Period, ...]  # scale_up recommended
    oversized: tuple[Period, ...]  # scale_down recommended
    # the window's arrivals above what the instances up could serve (up x the plan's usable RPS): the
    # moments the tier was short, where the resize verdict sizes for the peak over the whole history
    over_capacity: tuple[Period, ...]
    utilization_trap: tuple[Period, ...]
    findings: Mapping[str, float]  # finding kind -> seconds it was raised
    deployed: tuple[int, int]  # min, max
    recommended: tuple[int, int] | None
    scheduled: tuple[int, int] | None
    gpu_hours: Mapping[str, float | None]  # used / plan / recommended / schedule
    cost_usd: Mapping[str, float | None]
    plans: tuple[PlanOutcome, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, object]:
        return {"tier": self.tier, "seconds": self.seconds, "steps": self.steps,
                "outside_slo_seconds": dict(self.outside_slo_seconds),
                "unknown_slo_seconds": dict(self.unknown_slo_seconds),
                "undersized": [p.as_dict() for p in self.undersized],
                "oversized": [p.as_dict() for p in self.oversized],
                "over_capacity": [p.as_dict() for p in self.over_capacity],
                "utilization_trap": [p.as_dict() for p in self.utilization_trap],
                "findings_seconds": dict(self.findings),
                "instances": {"deployed": list(self.deployed),
                              "recommended": list(self.recommended) if self.recommended else None,
                              "scheduled": list(self.scheduled) if self.scheduled else None},
                "gpu_hours": dict(self.gpu_hours), "cost_usd": dict(self.cost_usd),
                "plans": [p.as_dict() for p in self.plans]}


def _span(xs: Iterable[int | None]) -> tuple[int, int] | None:
    known = [x for x in xs if x is not None]
    return (min(known), max(known)) if known else None


def _needs(run: list[TierStep]) -> str:
    top = max(run, key=lambda s: s.recommended or 0)
    return f"needs {top.recommended}, has {top.deployed}"


def _over(s: TierStep) -> bool:
    """Arrivals above what the instances up serve: the catalogue's fleet utilization (arrivals over up x the
    plan's usable RPS) above 1. Unknown with none up: no capacity to be over."""
    util = s.values.get("fleet_utilization_ratio")
    return util is not None and math.isfinite(util) and util > 1.0


def _short(run: list[TierStep]) -> str:
    top = max(run, key=lambda s: s.values.get("requests_per_second") or 0.0)
    return f"peak {top.values.get('requests_per_second') or 0:.1f} RPS on {top.up} up"


def summarise(tier: str, plan: Plan, steps: Sequence[TierStep], step: float,
              alternatives: Mapping[str, Plan] | None = None, plan_name: str = "current") -> TierSummary:
    outside = {fld: 0.0 for fld, _, _ in SLOS}
    unknown = {fld: 0.0 for fld, _, _ in SLOS}
    findings: dict[str, float] = {}
    for s in steps:
        for fld, key, _ in SLOS:
            v = s.values.get(key)
            if v is None or not math.isfinite(v):
                unknown[fld] += step
            elif v > getattr(plan.slo, fld):
                outside[fld] += step
        for kind in s.findings:
            findings[kind] = findings.get(kind, 0.0) + step
    g = plan.gpus_per_instance

    def gpu_hours(counts: Iterable[int | None]) -> float | None:
        xs = list(counts)
        if not xs or any(x is None for x in xs):
            return None
        return sum(x or 0 for x in xs) * g * step / 3600

    hours = {"used": gpu_hours(s.deployed for s in steps),
             "plan": plan.instances * g * len(steps) * step / 3600,
             "recommended": gpu_hours(s.recommended for s in steps),
             "schedule": gpu_hours(s.scheduled for s in steps)}
    plans = [plan_outcome(plan_name, plan, steps, step)]
    plans += [plan_outcome(name, p, steps, step) for name, p in (alternatives or {}).items()]
    return TierSummary(
        tier=tier, seconds=len(steps) * step, steps=len(steps), outside_slo_seconds=outside,
        unknown_slo_seconds=unknown,
        undersized=tuple(periods(steps, lambda s: s.action == "scale_up", _needs)),
        oversized=tuple(periods(steps, lambda s: s.action == "scale_down", _needs)),
        over_capacity=tuple(periods(steps, _over, _short)),
        utilization_trap=tuple(periods(steps, lambda s: s.trap)),
        findings=findings, deployed=_span(s.deployed for s in steps) or (0, 0),
        recommended=_span(s.recommended for s in steps), scheduled=_span(s.scheduled for s in steps),
        gpu_hours=hours,
        cost_usd={k: (v * plan.gpu_hour_cost_usd if v is not None else None) for k, v in hours.items()},
        plans=tuple(plans))


# ---------------------------------------------------------------- the command's input and output


def parse_time(text: str, now: float) -> float:
    """``--from``/``--to``: RFC 3339 or a UTC date and time (2026-11-26T00:00:00Z, 2026-11-26 14:00,
    2026-11-26), Unix seconds, ``now``, or ``now-7d`` / ``-7d`` (a duration before now)."""
    from datetime import datetime, timezone

    from .config import parse_duration

    s = text.strip()
    if s == "now":
        return now
    rel = s[3:] if s.startswith("now") else s
    if rel.startswith("-") and rel[1:2].isdigit() and not rel[1:].replace(".", "", 1).isdigit():
        return now - parse_duration(rel[1:])
    try:
        return float(s)
    except ValueError:
        pass
    try:
        d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use 2026-11-26T00:00:00Z, 2026-11-26 14:00 (UTC), Unix "
                         f"seconds, now or now-7d") from None
    return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()


def clock(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S").removesuffix(":00")


def span_text(seconds: float) -> str:
    """3h05m, 12m, 45s: a stretch of time as an operator reads it."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    h, m = divmod(s // 60, 60)
    rest = s % 60
    out = f"{h}h{m:02d}m" if h else f"{m}m"
    return out + (f"{rest:02d}s" if rest and not h else "")


@dataclass(frozen=True)
class Backtest:
    """What ``fleetwatch backtest`` found: per tier, its steps and their summary."""

    start: float
    end: float
    step: float
    window: float
    steps: Mapping[str, Sequence[TierStep]]
    tiers: Mapping[str, TierSummary]
    queries: int  # range queries sent
    failed: tuple[str, ...] = ()  # questions Prometheus could not answer (their rows are unknown)
    alerts: AlertReplay | None = None

    def as_dict(self) -> dict[str, object]:
        return {"from": self.start, "to": self.end, "step_seconds": self.step, "window_seconds": self.window,
                "range_queries": self.queries, "failed_queries": list(self.failed),
                "tiers": {n: s.as_dict() for n, s in self.tiers.items()},
                "alerts": self.alerts.as_dict() if self.alerts else None,
                "steps": {n: [{"at": s.at, "requests_per_second": s.values.get("requests_per_second"),
                               "ttft_p99_seconds": s.values.get("ttft_p99_seconds"),
                               "itl_p99_seconds": s.values.get("itl_p99_seconds"),
                               "fleet_utilization_ratio": s.values.get("fleet_utilization_ratio"),
                               "deployed": s.deployed, "up": s.up, "recommended": s.recommended,
                               "scheduled": s.scheduled, "action": s.action, "findings": list(s.findings)}
                              for s in steps] for n, steps in self.steps.items()}}


def _money(v: float | None) -> str:
    return "unknown" if v is None else f"${v:,.0f}" if v >= 100 else f"${v:,.2f}"


def _hours(v: float | None) -> str:
    return "unknown" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"


def _minutes(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


def _share(part: float, whole: float) -> str:
    return f"{span_text(part)} ({100 * part / whole:.1f}%)" if whole else span_text(part)


def _periods(ps: Sequence[Period], limit: int = 6) -> str:
    if not ps:
        return "never"
    def until(p: Period) -> str:  # the end without its date when it is the start's
        a, b = clock(p.start), clock(p.end)
        return b.split(" ", 1)[1] if a.split(" ")[0] == b.split(" ")[0] else b

    shown = [(f"{clock(p.start)} to {until(p)}" if p.end > p.start else f"at {clock(p.start)}")
             + (f" ({p.detail})" if p.detail else "") for p in ps[:limit]]
    return "; ".join(shown) + (f"; and {len(ps) - limit} more" if len(ps) > limit else "")


def format_table(bt: Backtest) -> str:
    lines = [f"backtest {clock(bt.start)} to {clock(bt.end)} UTC, a cycle every {span_text(bt.step)} over a "
             f"{span_text(bt.window)} window ({bt.queries} range queries)"]
    if bt.failed:
        lines.append(f"  {len(bt.failed)} questions went unanswered; the rows that need them are unknown at "
                     f"every step")
    for name, s in bt.tiers.items():
        lines += ["", f"tier {name}"]
        for fld, _, title in SLOS:
            unknown = s.unknown_slo_seconds[fld]
            lines.append(f"  {title} above the SLO: {_share(s.outside_slo_seconds[fld], s.seconds)}"
                         + (f", unknown {span_text(unknown)}" if unknown else ""))
        lines.append(f"  undersized (scale up): {_periods(s.undersized)}")
        lines.append(f"  oversized (scale down): {_periods(s.oversized)}")
        lines.append(f"  over capacity (arrivals above what the instances up serve): {_periods(s.over_capacity)}")
        lines.append(f"  utilization trap (fleet utilization below its band): {_periods(s.utilization_trap)}")
        if s.findings:
            lines.append("  findings: " + ", ".join(f"{k} {span_text(v)}" for k, v in sorted(s.findings.items())))
        rec = f"{s.recommended[0]}-{s.recommended[1]}" if s.recommended else "unknown"
        sch = f"{s.scheduled[0]}-{s.scheduled[1]}" if s.scheduled else "unknown"
        dep = str(s.deployed[0]) if s.deployed[0] == s.deployed[1] else f"{s.deployed[0]}-{s.deployed[1]}"
        lines.append(f"  instances: deployed {dep}, recommended {rec}, scheduled {sch}")
        lines.append("  GPU-hours: " + ", ".join(f"{k} {_hours(v)}" for k, v in s.gpu_hours.items())
                     + "; cost: " + ", ".join(f"{k} {_money(v)}" for k, v in s.cost_usd.items()))
        lines.append("  plans on this traffic (SLO minutes from each plan's benchmark curve at the RPS per "
                     "instance it would have had):")
        width = max(len(p.name) for p in s.plans)
        lines.append(f"    {'plan':<{width}}  instances  GPU-hours      cost  SLO-violation min  beyond benchmark min")
        for p in s.plans:
            lines.append(f"    {p.name:<{width}}  {p.instances:>9}  {_hours(p.gpu_hours):>9}  {_money(p.cost_usd):>8}  "
                         f"{_minutes(p.slo_violation_minutes):>17}  {_minutes(p.beyond_benchmark_minutes):>20}")
    if bt.alerts is not None:
        lines += [""] + _alert_lines(bt.alerts, bt.start)
    return "\n".join(lines) + "\n"


def _alert_name(labels: Labels | Sequence[tuple[str, str]]) -> str:
    d = dict(labels)
    rest = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("alertname",))
    return f"{d.get('alertname', '?')} {{{rest}}}"


def _alert_lines(a: AlertReplay, start: float) -> list[str]:
    lines = [f"alerts: {len(a.episodes)} firing episodes, {len(a.notifications)} notifications Alertmanager would "
             f"have sent"]
    for f in a.episodes[:40]:
        until = f"resolved {clock(f.end)}" if f.end is not None else "still firing at the end"
        since = "" if f.start >= start else f" (firing since {clock(f.start)}, before the replay)"
        lines.append(f"  {clock(max(f.start, start))}  {_alert_name(f.labels)}  {until}{since}")
    if len(a.episodes) > 40:
        lines.append(f"  and {len(a.episodes) - 40} more (--format json lists every one)")
    for k, n in a.flapping.items():
        lines.append(f"  flapping: {_alert_name(k)} fired {n} times")
    for note in a.notifications[:20]:
        what = ", ".join([f"{len(note.firing)} firing"] + ([f"{len(note.resolved)} resolved"] if note.resolved else []))
        group = ", ".join(f"{k}={v}" for k, v in note.group) or "one group"
        lines.append(f"  notification {clock(note.at)}  {{{group}}}: {what}")
    if len(a.notifications) > 20:
        lines.append(f"  and {len(a.notifications) - 20} more notifications (--format json lists every one)")
    for rule, why in a.unanswered.items():
        lines.append(f"  {rule}: {why}" if why.startswith("replayed") else f"  not replayed: {rule}: {why}")
    return lines


def format_json(bt: Backtest) -> str:
    import json

    return json.dumps(bt.as_dict(), indent=2, allow_nan=False) + "\n"


COVERAGE_POINTS = 200  # steps of the check that a recorded series exists over the stretch


def _coverage(expr: str, query_range: RangeQuery, start: float, end: float) -> float:
    """The share of the stretch's coarse steps at which ``expr`` has a value."""
    step = max(1.0, (end - start) / COVERAGE_POINTS)
    got = query_range(f"count({expr})", start, end, step)
    return max((len(points) for _, points in got), default=0) / len(step_times(start, end, step))


def unrecorded(recorded: Mapping[str, str], query_range: RangeQuery, start: float, end: float
               ) -> dict[str, tuple[float, float]]:
    """Recorded series that Prometheus holds for less of ``start`` to ``end`` than their recording rule's
    expression has data: name -> (the share of the stretch it was recorded for, the share its expression had
    data for). (0, x): never recorded, the rules were not loaded then. A series whose expression has no data
    either is not missing: an alert on it could not fire."""
    out = {}
    for name, expr in recorded.items():
        have = _coverage(f'{{__name__="{name}"}}', query_range, start, end)
        if have < 1.0:
            could = _coverage(expr, query_range, start, end)
            if could > have + 0.01:
                out[name] = (have, could)
    return out


def rule_title(r: AlertRule) -> str:
    return f"{r.name} ({r.labels['severity']})" if r.labels.get("severity") else r.name


def replay_alerts(rules: Sequence[AlertRule], query_range: RangeQuery, start: float, end: float, *,
                  route: Route | None = None, flap: int = FLAPPING_EPISODES, recorded: Mapping[str, str] | None = None
                  ) -> AlertReplay:
    """What ``rules`` would have fired from ``start`` to ``end``, and what Alertmanager would have sent.
    Each expression is one range query at its group's interval, from its ``for:`` before ``start``. A rule
    that reads a series of ``recorded`` (the recording rules' output) which Prometheus never recorded over
    the stretch, though its inputs were there, is not replayed, and said: its alerts would look like silence."""
    episodes: list[Firing] = []
    unanswered: dict[str, str] = {}
    recorded = recorded or {}
    names = {n for r in rules for n in reads(r, list(recorded))}
    missing = unrecorded({n: e for n, e in recorded.items() if n in names}, query_range, start, end)
    by_interval: dict[tuple[float, float], list[AlertRule]] = {}
    for r in rules:
        gone = [n for n in reads(r, list(missing)) if missing[n][0] == 0.0]
        if gone:
            unanswered[rule_title(r)] = (f"reads {gone[0]}, which Prometheus never recorded over the stretch though "
                                         f"its inputs were there: were the recording rules loaded then?")
            continue
        partly = reads(r, list(missing))
        if partly:
            have, could = missing[partly[0]]
            unanswered[rule_title(r)] = (f"replayed, but {partly[0]} was recorded over {100 * have:.0f}% of the "
                                         f"stretch where its inputs were there over {100 * could:.0f}%: no alert "
                                         f"in the rest")
        # each rule evaluated from its own for: before the stretch, on multiples of its group's interval
        lead = math.ceil(r.for_seconds / r.interval) * r.interval
        by_interval.setdefault((r.interval, lead), []).append(r)
    for (interval, lead), group in by_interval.items():
        first = math.floor((start - lead) / interval) * interval
        answers = RangeAnswers(query_range, first, end, interval)
        answers.prefetch(dict.fromkeys(r.expr for r in group))  # a failed one is raised again, and said, below
        times = step_times(first, end, interval)
        for r in group:
            try:
                got = answers.series(r.expr)
            except Exception as e:  # noqa: BLE001 - one rule Prometheus cannot answer is said, not fatal
                unanswered[rule_title(r)] = str(e)[:200]
                continue
            episodes += [f for f in evaluate_rule(r, times, got) if f.end is None or f.end > start]
    episodes.sort(key=lambda f: (f.start, f.labels))
    return AlertReplay(tuple(episodes), tuple(notifications(episodes, route or Route(), end)),
                       flapping(episodes, flap), unanswered)


def backtest(config: Config, query_range: RangeQuery, start: float, end: float, step: float, *,
             alternatives: Mapping[str, Mapping[str, Plan]] | None = None,
             rules: Sequence[AlertRule] = (), recorded: Mapping[str, str] | None = None, route: Route | None = None,
             flap: int = FLAPPING_EPISODES,
             progress: Callable[[int, int], None] | None = None) -> Backtest:
    """Replay ``start`` to ``end`` every ``step`` through ``config``'s plans (and ``alternatives``, per tier: plan
    name -> plan), reading the fleet's history through ``query_range``. The alerts' range queries run beside
    the replay of the rows."""
    cycle_times(start, end, step)  # a bad step or too many cycles: said before anything is asked
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="backtest-alerts") as side:
        alerts_later = (side.submit(replay_alerts, rules, query_range, start, end, route=route, flap=flap,
                                    recorded=recorded) if rules else None)
        # the history before the stretch, as a daemon started then would have read it back
        hstep = history_step(config)
        history = history_points(config, RangeAnswers(query_range, start - config.history, start - hstep, hstep))
        sent: list[RangeAnswers] = []
        failed: list[Exception] = []
        times = cycle_times(start, end, step)
        total, done = len(times), [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], total)

        steps = replay(config, stretches(query_range, times[0], end, step, questions(config), sent, failed),
                       history, tick)
        alerts = alerts_later.result() if alerts_later is not None else None
    alternatives = alternatives or {}
    tiers = {name: summarise(name, t.plan, steps[name], step, alternatives.get(name),
                             plan_name="current" + (f" ({os.path.basename(t.plan_file)})" if t.plan_file else ""))
             for name, t in config.tiers.items()}
    return Backtest(start, end, step, config.window, steps, tiers, sum(a.queries for a in sent) + 1,
                    tuple(dict.fromkeys(str(e).splitlines()[0] if str(e) else type(e).__name__ for e in failed)),
                    alerts)
