"""Catalogue + plans -> Prometheus recording and alerting rules, their promtool tests, a runbook.

Pure: ``build(config, ...)`` returns file name -> text. Every alert is an ``AlertSpec``: the rule,
its runbook entry and its two promtool test cases (a series that fires it, one at the boundary that
must not) come from that one object, so none of them can miss an alert. Only what Prometheus 2.42
accepts: no group ``labels``, no ``query_offset``, no native histograms.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from .. import catalogue, sizing
from .. import engines as I
from ..catalogue import INSTANCES, RECOMMENDED, Row, apply_override, fleet_series, plan_series
from ..config import format_duration
from ..model import Config, TierConfig
from ..evaluate import STEP13_TTFT_FACTOR, STEP13_UTIL_POINTS
from ..guardrails import BREAKER_RANGE
from ..model import Band, Threshold

PREFIX = "Fleetwatch"
RUNBOOK = "runbook.md"
FINDINGS: dict[str, tuple[str, str, str, str]] = {
    "input_length_drift": ("InputLengthDrift", "Input length P95 moved beyond the tolerance from the plan's workload "
                           "profile.", "The workload block of the report against the plan.",
                           "Re-characterize the workload (`fleetwatch plan --from-report`), then re-run the benchmark "
                           "and re-size the fleet."),
    "output_length_drift": ("OutputLengthDrift", "Output length P95/P99 moved beyond the tolerance from the plan.",
                            "Output P99, finished_reason shares.",
                            "Re-characterize the workload; set max_output_tokens at the gateway."),
    "runaway_generation": ("RunawayGeneration", "A growing share of requests stops at max_tokens: runaway "
                           "generation holds decode slots.", "finished_reason=length share; prompts that loop.",
                           "Enforce max_new_tokens at the gateway; add runaway pattern detection."),
    "mixed_tier": ("MixedTier", "An instance does not behave like its tier (different GPU model, or its P99 far "
                   "above the tier's median).", "GPU model of each instance; the named instance's placement.",
                   "Move it to its own tier with its own benchmark curve and plan."),
    "fp8_on_a100": ("FP8OnA100", "FP8 weights on A100s run without the FP8 tensor-core path.",
                    "plan.precision.weights and the tier's GPU models.", "Build and validate an INT8 artefact."),
    "peak_above_plan": ("PeakAbovePlan", "The observed peak exceeds the peak the plan was sized for.",
                        "Requests per second history.", "Re-plan with the new peak (`fleetwatch plan --from-report`); "
                                                        "resize."),
    "instances_differ_from_plan": ("InstancesDifferFromPlan", "Deployed instances differ from the plan's fleet size.",
                                   "Targets configured or discovered.", "Deploy what the plan says or re-plan."),
}


@dataclass(frozen=True)
class TestCase:
    series: tuple[tuple[str, str], ...]  # (series, values); the first is the one compared
    fires: bool
    labels: dict[str, str] = field(default_factory=dict)  # labels the alert keeps from its series


@dataclass(frozen=True)
class AlertSpec:
    name: str
    severity: str
    tier: str  # "" for an alert about fleetwatch itself, not about one tier
    expr: str
    summary: str
    description: str  # may use {{ $value | printf "%.4g" }}
    runbook: tuple[str, str, str]  # meaning, check, do
    cases: tuple[TestCase, ...] = ()
    extra_labels: dict[str, str] = field(default_factory=dict)
    op: str = "=="  # fires when the first test series' value <op> th (the promtool cases' arithmetic)
    th: float = 1.0
    for_: str | None = None  # its own "for:", else the one all alerts share

    def rule(self, for_: str, runbook_base: str) -> dict[str, Any]:
        return {"alert": self.name, "expr": self.expr, "for": self.for_ or for_,
                "labels": {"severity": self.severity, **({"tier": self.tier} if self.tier else {}),
                           **self.extra_labels},
                "annotations": {"summary": self.summary, "description": self.description,
                                "runbook_url": f"{runbook_base}#{self.name.lower()}"}}


def _g(v: float) -> str:
    """Go's printf "%.4g" for the values the tests use (same as Python's)."""
    return "%.4g" % v


VALUE = '{{ $value | printf "%.4g" }}'


def record_name(key: str, window: str) -> str:
    return f"tier:fleetwatch_{key}:{catalogue.row(key).op}{window}"


def peak_name(history: float) -> str:
    return f"tier:fleetwatch_requests_per_second:max_over_time{format_duration(history)}"


SIZING_PEAK = "tier:fleetwatch_resize_peak_rps:max"
LITTLES_LAW_FLOOR = "tier:fleetwatch_littles_law_floor:ceil"
SCALE_DOWN_FLOOR = "tier:fleetwatch_scale_down_floor:max"


def counted_rate_name(window: float) -> str:
    return f"tier:fleetwatch_resize_rps:rate{format_duration(window)}"


def sizing_rules(config: Config) -> list[tuple[str, str]]:
    """The sizing policy (exporter/sizing.py) as recording rules, as ``evaluate.resize`` computes it:
    the counted arrival rate, its peak over the retained history, the peak the fleet is sized for,
    the recommended count, and each tier's scale-down floor."""
    w = format_duration(config.window)
    rps, queue = record_name("requests_per_second", w), record_name("queue_depth_requests", w)
    counted, peak = counted_rate_name(config.window), peak_name(config.history)
    out = [
        (counted, sizing.counted_rate_promql(rps, config.window)),
        (peak, f"max_over_time({counted}[{format_duration(config.history)}])"),
        (SIZING_PEAK, sizing.sizing_peak_promql(peak, rps, plan_series("peak_rps"), config.history)),
        (RECOMMENDED, sizing.recommended_promql(SIZING_PEAK, plan_series("usable_rps_per_instance"),
                                                plan_series("safety_factor"))),
        (LITTLES_LAW_FLOOR, sizing.littles_law_floor_promql(rps, queue, plan_series("usable_rps_per_instance"),
                                                            plan_series("slo_ttft_p99_seconds"))),
    ]
    warm = {name: tier.schedule.min_warm_instances for name, tier in config.tiers.items()}
    out.append((SCALE_DOWN_FLOOR, sizing.scale_down_floor_promql(LITTLES_LAW_FLOOR, warm, INSTANCES)))
    return out


def recording_rules(config: Config) -> list[dict[str, str]]:
    """In the order Prometheus must evaluate them: a group's rules run in sequence, each seeing the
    ones before it at the same timestamp."""
    window = config.window
    w = format_duration(window)
    out = [{"record": name, "expr": expr} for name, expr in fleet_series().items()]
    for row in catalogue.ROWS:
        if row.gauge_only:
            continue
        expr = row.promql.replace("{w}", w).replace("{ws}", f"{window:g}")
        out.append({"record": record_name(row.key, w), "expr": expr})
    out += [{"record": name, "expr": expr} for name, expr in sizing_rules(config)]
    return out


def _threshold_cases(series: str, t: Threshold, above: bool) -> tuple[TestCase, TestCase]:
    """Fire beyond the threshold; at the boundary (or just inside an inclusive one) it must not."""
    step = max(abs(t.value) * 0.5, 0.01)
    fire = t.value + step if above else max(t.value - step, t.value / 2)
    edge = t.value if not t.inclusive else (t.value - step / 10 if above else t.value + step / 10)
    return TestCase(((series, f"{_g(fire)}x40"),), True), TestCase(((series, f"{_g(edge)}x40"),), False)


def _band(tier: TierConfig, row: Row) -> Band | None:
    """The row's band on ``tier`` as the rules compare it: thresholds that scale with another row
    given per unit of it (the expression multiplies by that row's series)."""
    return apply_override(row.band.resolve(tier.plan, {}, per_unit=True), tier.bands.get(row.key))


def _series(row: Row, tier: str, window: str) -> str:
    if row.gauge_only:
        return f'fleetwatch_{row.key}{{tier="{tier}"}}'
    return f'{record_name(row.key, window)}{{tier="{tier}"}}'


# the value the test cases give a row that a threshold scales with (the queue's arrival rate)
PER_VALUE = 10.0


def band_alerts(tier: TierConfig, window: str) -> list[AlertSpec]:
    out: list[AlertSpec] = []
    t = tier.name
    for row in catalogue.ROWS:
        band = _band(tier, row)
        if row.alert is None or band is None:
            continue
        text = row.alert
        series = _series(row, t, window)
        spec = row.band
        for attr, severity, above in (("warning_above", "warning", True), ("critical_above", "critical", True),
                                      ("warning_below", "warning", False), ("critical_below", "critical", False)):
            th: Threshold | None = getattr(band, attr)
            if th is None:
                continue
            op = (">=" if th.inclusive else ">") if above else ("<=" if th.inclusive else "<")
            name = PREFIX + text.alert_name(above, severity)
            per = next((lim.per for lim in getattr(spec, attr) if lim.per), None)
            direction = "above" if above else "below"
            extra: tuple[tuple[str, str], ...] = ()
            cond, scale = "", 1.0
            if per is not None:  # the threshold scales with another row: compare with it x its series
                per_series = f'{record_name(per, window)}{{tier="{t}"}}'
                cond = f" * {per_series}"
                extra, scale = ((per_series, f"{_g(PER_VALUE)}x40"),), PER_VALUE
            if spec.while_serving and not above:  # lower thresholds hold only while the tier serves
                rps = f'{record_name("requests_per_second", window)}{{tier="{t}"}}'
                cond += f" and on (tier) {rps} > 0"
                extra += ((rps, "5x40"),)
            floor = band.ok_floor
            if floor is not None and above:
                cond += f" and {series} >= {floor:g}"
            effective = Threshold(th.value * scale, th.inclusive)
            fire, edge = _threshold_cases(series, effective, above)
            if floor is not None and above:
                fire = TestCase(((series, f"{_g(max(_first_value(fire), floor * 2))}x40"),), True)
            summary = f"Tier {t}: {row.title} {direction} {th.value:g} ({severity})"
            description = (f"{row.title} of tier {t} is {VALUE} {row.unit}, {direction} the {severity} threshold "
                           f"{th.value:g} (target: {band.target}). {text.meaning}")
            if per is not None:
                ref = _reference(tier, row) or 1.0
                share = th.value / ref
                summary = f"Tier {t}: {row.title} at {share * 100:.0f}% of {spec.reference_name} ({severity})"
                description = (f"{row.title} of tier {t} is {VALUE} {row.unit}, at or above {share * 100:.0f}% of "
                               f"{spec.reference_text.format(ref=ref)}. {text.meaning}")
            out.append(AlertSpec(
                name, severity, t, f"{series} {op} {th.value:g}{cond}", summary=summary, description=description,
                runbook=(text.meaning, text.check, text.do),
                cases=(TestCase(fire.series + extra, True), TestCase(edge.series + extra, False)),
                op=op, th=max(floor or -math.inf, effective.value) if above else effective.value))
    return out


def _reference(tier: TierConfig, row: Row) -> float | None:
    ref = row.band.reference
    return None if ref is None else ref.value(tier.plan, {}, per_unit=True)


def special_alerts(tier: TierConfig, window: str) -> list[AlertSpec]:
    t, plan = tier.name, tier.plan
    out: list[AlertSpec] = []
    queue = f'{record_name("queue_depth_requests", window)}{{tier="{t}"}}'
    # the gateway circuit breaker recommended by fleetwatch (9.4): the queue passed its low end
    br = f'fleetwatch_guardrail_recommended{{tier="{t}",guardrail="circuit_breaker_queue_threshold",bound="low"}}'
    out.append(AlertSpec(
        f"{PREFIX}QueueAboveCircuitBreaker", "warning", t, f"{queue} > on (tier) max by (tier) ({br})",
        summary=f"Tier {t}: queue above the recommended circuit-breaker threshold",
        description=f"Mean queue of tier {t} is {VALUE} requests, above the breaker threshold fleetwatch "
                    f"recommends ({BREAKER_RANGE[0] * 100:.0f}% of {plan.slo.ttft_p99:g}s x {plan.peak_rps:g} peak "
                    f"RPS): requests a gateway "
                    f"breaker would have shed with a 429.",
        runbook=("The queue passed the recommended gateway circuit-breaker threshold: without a breaker, a spike "
                 "becomes an OOM cascade and every request degrades.", "Gateway breaker configuration; arrival rate.",
                 "Configure the breaker at the recommended threshold; scale up if this persists."),
        cases=(TestCase(((queue, "100x40"), (br, "80x40")), True), TestCase(((queue, "80x40"), (br, "80x40")), False)),
        op=">", th=80.0))
    # Step 13: production diverges from the benchmark at equivalent RPS (fleetwatch computes the curve)
    checks = "ttft_p99_vs_benchmark|itl_p99_vs_benchmark|gpu_utilization_vs_benchmark"
    status = f'fleetwatch_plan_check_status{{tier="{t}",check=~"{checks}",status="critical"}}'
    observed = f'fleetwatch_plan_check_observed{{tier="{t}",check=~"{checks}"}}'
    b = plan.benchmark

    def one(series: str) -> str:
        return series.replace(f'=~"{checks}"', '="ttft_p99_vs_benchmark"')

    out.append(AlertSpec(
        f"{PREFIX}Recharacterize", "warning", t, f"{observed} and on (tier, check) ({status} == 1)",
        summary=f"Tier {t}: {{{{ $labels.check }}}} diverges from the benchmark (observed vs benchmark)",
        description=f"{{{{ $labels.check }}}} of tier {t} is {VALUE}, beyond the limit against the plan's "
                    f"benchmark at equivalent RPS (operating point: {b.usable_rps_per_instance:g} RPS per instance, "
                    f"TTFT P99 {b.ttft_p99:g}s, ITL P99 {b.itl_p99:g}s, GPU {b.gpu_utilization:g}). Re-characterize "
                    f"the workload and re-run the benchmark before resizing.",
        runbook=(f"Production no longer matches the benchmark the plan was sized on: TTFT P99 more than "
                 f"{(STEP13_TTFT_FACTOR - 1) * 100:.0f}% above it, or GPU utilization more than "
                 f"{STEP13_UTIL_POINTS * 100:.0f} points below it, at the same RPS per instance.",
                 "The plan checks in the report: which one, observed against predicted; the workload block.",
                 "Re-characterize the workload (`fleetwatch plan --from-report`) and re-run the benchmark."),
        cases=(TestCase(((one(status), "1x40"), (one(observed), "2.5x40")), True, {"check": "ttft_p99_vs_benchmark"}),
               TestCase(((one(status), "0x40"), (one(observed), "2.5x40")), False, {"check": "ttft_p99_vs_benchmark"}))))
    # target down: Prometheus's own up for engine jobs, and fleetwatch's view
    up = f'up{{tier="{t}"}}'
    out.append(AlertSpec(
        f"{PREFIX}TargetDown", "warning", t, f"{up} == 0",
        summary=f"Tier {t}: a target is down", description=f"{{{{ $labels.instance }}}} of tier {t} did not "
        f"answer its scrape (up = {VALUE}). The tier serves with fewer instances than planned.",
        runbook=("An engine target that Prometheus scrapes does not answer (a GPU exporter fleetwatch cannot "
                 "reach is FleetwatchScrapeFailing).", "The pod, its logs, the node.",
                 "Restart or replace the instance; the remaining instances carry its load meanwhile."),
        cases=(TestCase(((up.replace("}", ',instance="x"}'), "0x40"),), True, {"instance": "x"}),
               TestCase(((up.replace("}", ',instance="x"}'), "1x40"),), False, {"instance": "x"})), op="==", th=0.0))
    # fleetwatch's own view: a target it has not reached for ten minutes (an engine, or a GPU source)
    seen = f'fleetwatch_target_up{{tier="{t}"}}'
    sample = seen.replace("}", ',instance="x",source="dcgm"}')
    out.append(AlertSpec(
        f"{PREFIX}ScrapeFailing", "warning", t, f"max by (tier, instance, source) (max_over_time({seen}[10m])) == 0",
        summary=f"Tier {t}: fleetwatch cannot scrape {{{{ $labels.instance }}}} ({{{{ $labels.source }}}})",
        description=f"fleetwatch has not reached the {{{{ $labels.source }}}} target of {{{{ $labels.instance }}}} "
                    f"(tier {t}) in any scrape of the last 10 minutes: the rows that need it are unknown.",
        runbook=("fleetwatch has failed every scrape of one target for ten minutes: an engine, or the GPU source "
                 "beside it (source=\"dcgm\" is dcgm-exporter). The rows that read it stay unknown.",
                 "`fleetwatch_target_up == 0` and `fleetwatch_scrape_errors_total` by reason (refused, timeout, "
                 "http status, malformed); `curl` the target's /metrics from fleetwatch's pod; for dcgm-exporter, "
                 "its DaemonSet pod on that node (`kubectl get pods -o wide`).",
                 "Restore the target (restart the engine, the exporter, or fix its address and credentials in "
                 "the config); fleetwatch tries it again on its own."),
        cases=(TestCase(((sample, "0x40"),), True, {"instance": "x", "source": "dcgm"}),
               TestCase(((sample, "1x40"),), False, {"instance": "x", "source": "dcgm"})), op="==", th=0.0,
        for_="1m"))
    # the engine series of a tier vanished from Prometheus (the rules compute nothing for it any more):
    # seen within ENGINE_SEEN, gone now (past the lookback, or ended by a staleness marker)
    engines = f'{{__name__=~"{"|".join(I.all_names("requests_running"))}", tier="{t}"}}'
    sample = f'{I.all_names("requests_running")[0]}{{tier="{t}",instance="x"}}'
    out.append(AlertSpec(
        f"{PREFIX}EngineSeriesMissing", "warning", t,
        f"group by (tier) (max_over_time({engines}[{catalogue.ENGINE_SEEN}])) unless on (tier) "
        f"group by (tier) ({engines})",
        summary=f"Tier {t}: its engine series are gone from Prometheus",
        description=f"Prometheus held engine series for tier {t} within the last {catalogue.ENGINE_SEEN} and holds "
                    f"none now: the recording rules compute no row, and no row alert can fire for it.",
        runbook=("Prometheus stopped receiving the tier's engine series: the rules compute nothing for it, so its "
                 "other alerts are silent, not satisfied.",
                 f"`{engines}` (empty) against `max_over_time({engines}[{catalogue.ENGINE_SEEN}])`; the engines' "
                 f"scrape job in Prometheus (its PodMonitor or ServiceMonitor, the `tier` relabelling); the pods "
                 f"(`kubectl get pods -l <the tier's label>`).",
                 "Restore the scrape (a relabelling or selector change drops the tier label or the job), or the "
                 "engines themselves if they are gone."),
        cases=(TestCase(((sample, "1x3 stale"),), True), TestCase(((sample, "1x40"),), False))))
    # resize triggers, from the recording rules alone: they work in fleet and in sidecar mode, and
    # carry the recommended count as $value
    rec, have = f'{RECOMMENDED}{{tier="{t}"}}', f'{INSTANCES}{{tier="{t}"}}'
    current = f"{{{{ with query `{have}` }}}}{{{{ . | first | value }}}}{{{{ end }}}}"
    step13 = (f'fleetwatch_plan_check_status{{tier="{t}",check=~"{checks}",status="critical"}} == 1')
    formula = (f"peak RPS / {plan.benchmark.usable_rps_per_instance:g} usable RPS per instance x "
               f"(1 + {plan.safety_factor:g} safety)")
    floor = f'{SCALE_DOWN_FLOOR}{{tier="{t}"}}'
    littles_law = f'{LITTLES_LAW_FLOOR}{{tier="{t}"}}'
    for action, severity, op, for_, expr in (
            ("scale_up", "critical", ">", None, f"{rec} > on (tier) {have}"),
            # to the recommendation, never under the tier's floors; not while a Step 13 check says the
            # benchmark no longer describes the workload, and only once that stayed below the deployed
            # count for the whole stabilization window (for:)
            # warning, not info: kube-prometheus-stack's Alertmanager inhibits info alerts (InfoInhibitor)
            ("scale_down", "warning", "<", format_duration(plan.scale_down_stabilization),
             f"({sizing.scale_down_to_promql(rec, floor)}) < on (tier) {have} unless on (tier) ({step13})")):
        name = f"{PREFIX}{'ScaleUp' if action == 'scale_up' else 'ScaleDown'}"
        cases: tuple[TestCase, ...] = (TestCase(((rec, "7x40"), (have, "4x40")), True),
                                       TestCase(((rec, "4x40"), (have, "4x40")), False))
        if action == "scale_down":
            warm = tier.schedule.min_warm_instances
            cases = (TestCase(((rec, f"{max(2, warm)}x40"), (have, f"{max(2, warm) + 2}x40"),
                               (littles_law, "1x40")), True),
                     TestCase(((rec, "4x40"), (have, "4x40"), (littles_law, "1x40")), False),
                     # the recommendation is below, but Little's Law's floor is not: no scale-down
                     TestCase(((rec, "2x40"), (have, f"{max(4, warm)}x40"), (littles_law, f"{max(4, warm)}x40")),
                              False))
        out.append(AlertSpec(
            name, severity, t, expr,
            summary=f"Tier {t}: resize to {{{{ $value }}}} instances ({action})",
            description=f"Tier {t} needs {{{{ $value }}}} instances, has {current}: {formula}.",
            runbook=("The fleet-size arithmetic (peak RPS over usable RPS per instance, with the safety margin) "
                     "asks for a different instance count.",
                     "The recorded peak (tier:fleetwatch_resize_peak_rps:max) against the plan's; the resize "
                     "reason in fleetwatch's report in fleet mode.",
                     "Apply the recommended count (the autoscaler receives this alert); re-plan if it recurs."),
            cases=cases, extra_labels={"action": action}, for_=for_, op=op, th=4.0))
    # findings fleetwatch computes (guardrails, drift, mixed tiers)
    for kind, (fstem, meaning, check, do) in FINDINGS.items():
        for severity in ("warning", "critical"):
            f = f'fleetwatch_finding{{tier="{t}",kind="{kind}",status="{severity}"}}'
            out.append(AlertSpec(
                f"{PREFIX}{fstem}", severity, t, f"{f} == 1",
                summary=f"Tier {t}: {kind.replace('_', ' ')} ({severity})",
                description=f"fleetwatch found {kind} on tier {t}{{{{ if $labels.instance }}}} (instance "
                            f"{{{{ $labels.instance }}}}){{{{ end }}}}. {meaning}",
                runbook=(meaning, check, do),
                cases=(TestCase(((f.replace("}", ',instance=""}'), "1x40"),), True, {"kind": kind, "status": severity}),
                       TestCase(((f.replace("}", ',instance=""}'), "0x40"),), False, {"kind": kind, "status": severity}))))
    return out


def self_alerts(config: Config) -> list[AlertSpec]:
    """Who watches the watcher: fleetwatch absent, its cycles stale, its notifications failing or dropped.
    (A target fleetwatch cannot reach and a tier whose engine series vanished are per tier: special_alerts.)"""
    stale = config.stale_after
    last = "fleetwatch_last_cycle_timestamp_seconds"
    out = [
        AlertSpec(
            f"{PREFIX}Absent", "critical", "", f"absent({last})",
            summary="fleetwatch is not reporting",
            description="Prometheus has no fleetwatch series: fleetwatch is down, or Prometheus does not scrape "
                        "it. Nothing checks the fleet against its plan meanwhile.",
            runbook=("Prometheus holds no fleetwatch series: fleetwatch is down or not scraped, and no tier is "
                     "checked against its plan.",
                     "`absent(fleetwatch_last_cycle_timestamp_seconds)`; the fleetwatch pod "
                     "(`kubectl get pods -l app.kubernetes.io/name=fleetwatch`, its logs); Prometheus's target "
                     "page for the fleetwatch job (its ServiceMonitor or PodMonitor selects it).",
                     "Restart fleetwatch or fix the scrape job; `curl http://FLEETWATCH:9108/healthz` says why a "
                     "running one is unhealthy."),
            cases=(TestCase((("fleetwatch_cycles_total", "1x40"),), True),
                   TestCase(((last, "0+15x40"),), False)), op="=="),
        AlertSpec(
            f"{PREFIX}CycleStale", "critical", "", f"time() - max({last}) > {stale:g}",
            summary="fleetwatch's last cycle is stale",
            description=f"fleetwatch's last completed cycle is more than {stale:g} s old (three intervals and a "
                        f"scrape timeout): its report and /metrics no longer describe the fleet.",
            runbook=("fleetwatch runs but its cycles stopped completing: the report it serves is old.",
                     "`time() - fleetwatch_last_cycle_timestamp_seconds`; `fleetwatch_cycle_failures_total` and "
                     "`fleetwatch_cycle_overruns_total`; its log (`kubectl logs`) and `curl "
                     "http://FLEETWATCH:9108/healthz` (it answers 503 with the reason).",
                     "A cycle that fails says why in the log; one that overruns needs a longer interval or "
                     "scrape_timeout, or fewer hanging targets. Restart it if it is wedged."),
            cases=(TestCase(((last, "0x40"),), True), TestCase(((last, "0+15x40"),), False)), op=">", th=stale),
    ]
    for kind, severity, meaning, do in (
            ("failed", "warning", "fleetwatch's POSTs to an Alertmanager fail: its alerts wait in its queue.",
             "Check the Alertmanager's address, its TLS and its health; the alerts are resent when it answers."),
            ("dropped", "critical", "fleetwatch's queue for an Alertmanager overflowed: alerts were dropped and "
             "never delivered.", "The Alertmanager has been unreachable for long: restore it; the rules' alerts in "
             "Prometheus still fire meanwhile.")):
        counter = f"fleetwatch_alertmanager_notifications_{kind}_total"
        name = f"{PREFIX}Notifications{kind.capitalize()}"
        out.append(AlertSpec(
            name, severity, "", f"sum by (alertmanager) (increase({counter}[10m])) > 0",
            summary=f"fleetwatch's notifications {kind} ({{{{ $labels.alertmanager }}}})",
            description=f"Notifications from fleetwatch to {{{{ $labels.alertmanager }}}} {kind} in the last 10 "
                        f"minutes.",
            runbook=(meaning, f"`increase({counter}[10m])` and `fleetwatch_alertmanager_queue_length` by "
                              f"alertmanager; fleetwatch's log names the failure.", do),
            cases=(TestCase(((counter.replace("_total", '_total{alertmanager="am"}'), "0+1x40"),), True,
                            {"alertmanager": "am"}),
                   TestCase(((counter.replace("_total", '_total{alertmanager="am"}'), "3x40"),), False,
                            {"alertmanager": "am"})), op=">", th=0.0))
    return out


def alerts(config: Config) -> list[AlertSpec]:
    w = format_duration(config.window)
    out: list[AlertSpec] = []
    for tier in config.tiers.values():
        out += band_alerts(tier, w) + special_alerts(tier, w)
    out += self_alerts(config)
    if config.alert_labels:  # the config's static labels, on every alert (its own labels win)
        out = [replace(a, extra_labels={**config.alert_labels, **a.extra_labels}) for a in out]
    return out


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


def rule_groups(config: Config, for_: str, runbook_base: str, eval_interval: str | None = None
                ) -> list[dict[str, Any]]:
    interval = eval_interval or format_duration(config.interval)
    return [
        {"name": "fleetwatch-recording", "interval": interval, "rules": recording_rules(config)},
        {"name": "fleetwatch-alerts", "interval": interval,
         "rules": [a.rule(for_, runbook_base) for a in alerts(config)]},
    ]


def prometheus_rule(groups: list[dict[str, Any]], name: str = "fleetwatch") -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "fleetwatch",
                                                  "app.kubernetes.io/component": "rules"}},
            "spec": {"groups": groups}}


def promtool_tests(config: Config, for_: str, runbook_base: str, rule_file: str) -> dict[str, Any]:
    """Every alert's cases; each fire case expects exactly the rules that fire on it.

    Cases are packed into as few test groups as stay independent (see ``_pack``): promtool evaluates
    every rule at every step of every group, so one group per case took it half a minute."""
    specs = alerts(config)
    interval = format_duration(config.interval)
    by_wait: dict[float, list[tuple[AlertSpec, TestCase]]] = {}
    for spec in specs:
        wait = max(config.interval * 4, _seconds(spec.for_ or for_) + config.interval * 4)
        by_wait.setdefault(wait, []).extend((spec, case) for case in spec.cases)
    reads = _reads(recording_rules(config))
    tests = []
    for wait, cases in sorted(by_wait.items()):
        samples = int(wait / config.interval) + 2  # every series spans the whole wait
        for group in _pack(cases, reads):
            series: list[dict[str, str]] = []
            checks = []
            for spec, case in group:
                # a value that ends by itself ("1x3 stale") is kept; the others span the whole wait
                series += [{"series": s, "values": v if " " in v else f"{v.split('x')[0]}x{samples}"}
                           for s, v in case.series]
                checks.append({"eval_time": format_duration(wait), "alertname": spec.name,
                               "exp_alerts": _expected(specs, spec, case, runbook_base)})
            tests.append({"interval": interval, "input_series": series, "alert_rule_test": checks})
    return {"rule_files": [rule_file], "evaluation_interval": interval, "tests": tests}


def _expected(specs: list[AlertSpec], spec: AlertSpec, case: TestCase, runbook_base: str) -> list[dict[str, Any]]:
    """The same alert name on the same inputs: every severity that fires."""
    return [{"exp_labels": {"severity": other.severity, **({"tier": other.tier} if other.tier else {}),
                            **other.extra_labels, **case.labels},
             "exp_annotations": _annotations(other, case, runbook_base)}
            for other in specs if other.name == spec.name and other.tier == spec.tier and _fires(other, case, spec)]


_SELECTOR = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?')
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"')
Selector = tuple[str, frozenset[tuple[str, str]]]  # a name and its equality matchers


def _selectors(expr: str) -> set[Selector]:
    """Every name an expression reads, with the equality matchers it puts on it (words such as ``sum``
    come along; no input series has their names)."""
    return {(name, frozenset(_MATCHER.findall(braces or ""))) for name, braces in _SELECTOR.findall(expr)}


def _reads(recording: list[dict[str, Any]]) -> dict[str, set[Selector]]:
    """Each recorded series -> every selector it is computed from, through other recording rules."""
    direct: dict[str, set[Selector]] = {}
    for r in recording:
        direct.setdefault(r["record"], set()).update(_selectors(r["expr"]))
    closed: dict[str, set[Selector]] = {}

    def close(name: str, seen: frozenset[str]) -> set[Selector]:
        if name not in closed:
            out = set(direct.get(name, ()))
            for n, _ in list(out):
                if n in direct and n not in seen:
                    out |= close(n, seen | {n})
            closed[name] = out
        return closed[name]
    return {name: close(name, frozenset({name})) for name in direct}


def read_by(exprs: list[str], recording: list[dict[str, Any]]) -> set[str]:
    """The recorded series the expressions read, directly or through other recording rules."""
    reads = _reads(recording)
    names = {n for e in exprs for n, _ in _selectors(e) if n in reads}
    return names | {n for name in names for n, _ in reads[name] if n in reads}


def _input(text: str) -> tuple[str, dict[str, str]]:
    name, _, labels = text.partition("{")
    return name, dict(_MATCHER.findall(labels))


def _pack(cases: list[tuple[AlertSpec, TestCase]], reads: dict[str, set[Selector]]
          ) -> list[list[tuple[AlertSpec, TestCase]]]:
    """First fit: a group holds each alert name once, and no case's input series is selected by another
    case's alert (by its expression or the recording rules behind it), so each case sees only its own."""
    exprs: dict[str, set[Selector]] = {}  # promtool checks an alert name on every tier and severity at once
    for spec, _ in cases:
        exprs.setdefault(spec.name, set()).update(_selectors(spec.expr))

    def reached(spec: AlertSpec) -> set[Selector]:
        sel = exprs[spec.name]
        return sel.union(*(reads.get(n, set()) for n, _ in sel))

    def hits(series: list[tuple[str, dict[str, str]]], selectors: set[Selector]) -> bool:
        return any(n == name and all(labels.get(k, "") == v for k, v in m) for name, labels in series
                   for n, m in selectors)

    groups: list[tuple[list[tuple[AlertSpec, TestCase]], set[str], list[tuple[str, dict[str, str]]], set[Selector]]] = []
    for spec, case in cases:
        mine, mine_reached = [_input(s) for s, _ in case.series], reached(spec)
        for members, names, fed, read in groups:
            if spec.name not in names and not hits(mine, read) and not hits(fed, mine_reached):
                members.append((spec, case))
                names.add(spec.name)
                fed += mine
                read |= mine_reached
                break
        else:
            groups.append(([(spec, case)], {spec.name}, list(mine), set(mine_reached)))
    return [members for members, *_ in groups]


def _seconds(d: str) -> float:
    from ..config import parse_duration

    return parse_duration(d)


def _first_value(case: TestCase) -> float:
    return float(case.series[0][1].split("x")[0])


def _fires(spec: AlertSpec, case: TestCase, origin: AlertSpec) -> bool:
    if spec is origin:
        return case.fires
    if not spec.cases or spec.cases[0].series[0][0] != case.series[0][0]:
        return False  # compares another series
    v, th = _first_value(case), spec.th
    return {">=": v >= th, "<=": v <= th, ">": v > th, "<": v < th, "==": v == th}[spec.op]


def _render(template: str, case: TestCase, spec: AlertSpec) -> str:
    # $value is the sample of the series the expression returns: the observed value for Step 13
    returned = case.series[1] if spec.name.endswith("Recharacterize") else case.series[0]
    out = template
    if "$value" in out:
        v = float(returned[1].split("x")[0])
        out = out.replace(VALUE, _g(v)).replace("{{ $value }}", _g(v))
    if "{{ with query `" in out:  # the value of the one test series the query names
        head, rest = out.split("{{ with query `", 1)
        query, tail = rest.split("` }}", 1)
        tail = tail.split("{{ end }}", 1)[1]
        value = next(vals for series, vals in case.series if series == query)
        out = head + _g(float(value.split("x")[0])) + tail
    for k, val in case.labels.items():
        out = out.replace(f"{{{{ $labels.{k} }}}}", val)
    if "{{ if $labels.instance }}" in out:
        inst = case.labels.get("instance", "")
        head, rest = out.split("{{ if $labels.instance }}", 1)
        inner, tail = rest.split("{{ end }}", 1)
        out = head + (inner.replace("{{ $labels.instance }}", inst) if inst else "") + tail
    return out


def _annotations(spec: AlertSpec, case: TestCase, runbook_base: str) -> dict[str, str]:
    return {"summary": _render(spec.summary, case, spec), "description": _render(spec.description, case, spec),
            "runbook_url": f"{runbook_base}#{spec.name.lower()}"}


def runbook(config: Config) -> str:
    seen: dict[str, AlertSpec] = {}
    severities: dict[str, set[str]] = {}
    for a in alerts(config):
        seen.setdefault(a.name, a)
        severities.setdefault(a.name, set()).add(a.severity)
    lines = ["# fleetwatch runbook", "",
             "Generated by `fleetwatch rules` with the rules in `rules/`; every alert has an entry. Each says",
             "what the alert means, what to check, and what to do.", ""]
    for name in sorted(seen):
        meaning, check, do = seen[name].runbook
        lines += [f"## {name}", "", f"Severity: {', '.join(sorted(severities[name]))}.", "",
                  f"- **Meaning.** {meaning}", f"- **Check.** {check}", f"- **Do.** {do}", ""]
    return "\n".join(lines)


def build(config: Config, *, for_: str = "5m", runbook_base: str = RUNBOOK,
          eval_interval: str | None = None) -> dict[str, str]:
    """file name (relative to the output directory) -> contents."""
    groups = rule_groups(config, for_, runbook_base, eval_interval)
    header = "# Generated by `fleetwatch rules`; do not edit. Regenerate and commit.\n"
    return {
        "fleetwatch.rules.yml": header + _dump({"groups": groups}),
        "fleetwatch-prometheusrule.yaml": header + _dump(prometheus_rule(groups)),
        "tests/fleetwatch_test.yml": header + _dump(promtool_tests(config, for_, runbook_base,
                                                                    "../fleetwatch.rules.yml")),
    }
