"""Catalogue + plans -> Prometheus recording and alerting rules, their promtool tests, a runbook.

Pure: ``build(config, ...)`` returns file name -> text. Every alert is an ``AlertSpec``: the rule,
its runbook entry and its two promtool test cases (a series that fires it, one at the boundary that
must not) come from that one object, so none of them can miss an alert. Only what Prometheus 2.42
accepts: no group ``labels``, no ``query_offset``, no native histograms.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import yaml

from .. import catalogue, sizing
from .. import engines as I
from ..catalogue import (INSTANCES, PREFIX, RECOMMENDED, SEVERITY_SIDES, Row, fleet_series, plan_series,
                         runbook_url)
from ..config import format_duration, parse_duration
from ..evaluate import STEP13_TTFT_FACTOR, STEP13_UTIL_POINTS
from ..guardrails import BREAKER_RANGE
from ..model import Config, Threshold, TierConfig

FINDINGS: dict[str, tuple[str, str, tuple[str, ...], str]] = {  # kind -> (alert stem, meaning, causes, do)
    "input_length_drift": ("InputLengthDrift", "Input length P95 moved beyond the tolerance from the plan's workload "
                           "profile: the plan's capacity and KV sizing rest on lengths production no longer sends.",
                           ("A new client, feature or prompt template (longer system prompts, retrieval context)",
                            "A change of traffic mix between tenants",
                            "The plan's profile was measured on too short a sample"),
                           "Re-characterize the workload (`fleetwatch plan --from-report`), then re-run the benchmark "
                           "and re-size the fleet."),
    "output_length_drift": ("OutputLengthDrift", "Output length P95/P99 moved beyond the tolerance from the plan: "
                            "decode takes longer per request than the plan assumed.",
                            ("Clients asking for longer answers, or a new model version that talks more",
                             "No max_tokens enforced at the gateway",
                             "Runaway generations (see FleetwatchRunawayGeneration)"),
                            "Re-characterize the workload; set max_output_tokens at the gateway."),
    "runaway_generation": ("RunawayGeneration", "A growing share of requests stops at max_tokens: runaway generation "
                           "holds decode slots and KV cache for nothing.",
                           ("Prompts that make the model loop or repeat", "A sampling change (temperature, "
                            "repetition penalty) in a new client", "A model or template change"),
                           "Enforce max_new_tokens at the gateway; add runaway pattern detection."),
    "mixed_tier": ("MixedTier", "An instance does not behave like its tier: a different GPU model, or its P99 far above "
                   "the tier's median. Its numbers blend into the tier's.",
                   ("A pod scheduled on a node of other hardware (missing node selector or affinity)",
                    "A straggler: a throttled, unhealthy or noisy-neighbour GPU", "A different engine build or setting"),
                   "Move it to its own tier with its own benchmark curve and plan, or fix its placement."),
    "fp8_on_a100": ("FP8OnA100", "FP8 weights on A100s run without the FP8 tensor-core path: slower than the plan "
                    "assumed.", ("The FP8 build deployed to an A100 tier", "A node pool change moved the tier to "
                                 "A100s"), "Build and validate an INT8 artefact for A100s, or move the tier."),
    "peak_above_plan": ("PeakAbovePlan", "The observed peak exceeds the peak the plan was sized for: the fleet size "
                        "rests on a load that no longer holds.",
                        ("Organic growth", "A new client or launch", "Retries from an overloaded fleet inflating "
                                                                     "arrivals"),
                        "Re-plan with the new peak (`fleetwatch plan --from-report`); resize."),
    "instances_differ_from_plan": ("InstancesDifferFromPlan", "Deployed instances differ from the plan's fleet size.",
                                   ("An autoscaler or a person changed the replica count",
                                    "Pods pending for lack of GPUs", "The plan was updated but not deployed"),
                                   "Deploy what the plan says or re-plan."),
}


@dataclass(frozen=True)
class TestCase:
    series: tuple[tuple[str, str], ...]  # (series, values); the first is the one the alert returns ($value)
    fires: bool
    labels: dict[str, str] = field(default_factory=dict)  # labels the alert keeps from its series
    tier: str = ""  # the tier its series are on; "" for a case about fleetwatch itself
    # the severities of this alert name that fire on it, where more than the case's own may (a band's)
    severities: frozenset[str] | None = None
    value: float | None = None  # the alert's $value where it is not the first series' (a count)


@dataclass(frozen=True)
class Runbook:
    """What an on-call reads for one alert: what it means, the PromQL that confirms it, the dashboard
    panel, the likely causes (most likely first), the commands that check them, and what to do."""

    meaning: str
    confirm: tuple[str, ...]  # PromQL; <tier> stands for the alert's tier
    panel: str  # the title of a panel of the generated dashboards
    causes: tuple[str, ...]
    commands: tuple[str, ...]  # shell; <tier>, <pod> and <fleetwatch> stand for what the alert names
    do: str


# what the commands say, for every alert that needs them
PODS = "kubectl -n <namespace> get pods -l fleetwatch.io/tier=<tier> -o wide"
FLEETWATCH_LOG = "kubectl -n <namespace> logs deploy/fleetwatch --since=30m | grep 'tier=<tier>'"
CHECK_JQ = "fleetwatch check --config <config> --format json | jq '.tiers[\"<tier>\"].{what}'"


def engine_metrics(names: tuple[str, ...], pod: str = "<pod>", port: int = 8000) -> str:
    """A pod's /metrics through the API server's proxy: no port-forward to wait for, no curl in the image."""
    return (f'kubectl get --raw "/api/v1/namespaces/<namespace>/pods/{pod}:{port}/proxy/metrics" | '
            f"grep -E '^({'|'.join(re.escape(n) for n in names)})'")


def fleetwatch_metrics(pattern: str) -> str:
    return f"curl -s http://<fleetwatch>:9108/metrics | grep -E '{pattern}'"


@dataclass(frozen=True)
class AlertSpec:
    """One alerting rule. Its labels are ``severity``, the config's alert_labels, and the tier its
    expression returns (every expression aggregates to ``tier`` alone, or to nothing for an alert about
    fleetwatch itself), so fleetwatch's own posts of the same problem carry the same label set."""

    name: str
    severity: str
    family: str  # a key of model.ALERT_FOR: how long it waits before it fires
    expr: str
    summary: str
    description: str  # may use VALUE, {{ $labels.tier }} and query_value(...)
    runbook: Runbook
    cases: tuple[TestCase, ...] = ()
    extra_labels: dict[str, str] = field(default_factory=dict)
    for_: str | None = None  # its own "for:" (a tier's scale-down stabilization), else its family's
    gated: bool = False  # a row's alert: quiet until its range holds a full window (the expression says so)

    def rule(self, for_: str, runbook_base: str) -> dict[str, Any]:
        return {"alert": self.name, "expr": self.expr, "for": for_,  # as alert_for resolved it
                "labels": {"severity": self.severity, **self.extra_labels},
                "annotations": {"summary": self.summary, "description": self.description,
                                "runbook_url": runbook_url(runbook_base, self.name)}}


def _g(v: float) -> str:
    """Go's printf "%.4g" (the same as Python's)."""
    return "%.4g" % v


VALUE = '{{ $value | printf "%.4g" }}'
PERCENT = "{{ $value | humanizePercentage }}"  # Prometheus's: the value x 100 as "%.4g%%"
TIER = "{{ $labels.tier }}"
_QUERY_VALUE = '{{ . | first | value | printf "%.4g" }}'


def query_value(promql: str) -> str:
    """A template that prints the value of ``promql`` (its ``%s`` is the alert's tier), or nothing."""
    return f"{{{{ with printf `{promql}` $labels.tier | query }}}}{_QUERY_VALUE}{{{{ end }}}}"


_WITH_QUERY = re.compile(r"\{\{ with printf `([^`]*)` \$labels\.tier \| query \}\}"
                         + re.escape(_QUERY_VALUE) + r"\{\{ end \}\}")
_LABEL = re.compile(r"\{\{ \$labels\.([a-zA-Z_][a-zA-Z0-9_]*) \}\}")


def render(template: str, value: float, labels: Mapping[str, str], query: Callable[[str], float | None]) -> str:
    """An annotation as Prometheus renders it, for the templates above only: the promtool expectations,
    and fleetwatch's own posts of the same alerts."""
    def with_query(m: re.Match[str]) -> str:
        v = query(m.group(1) % labels.get("tier", ""))
        return "" if v is None else _g(v)
    out = _WITH_QUERY.sub(with_query, template).replace(VALUE, _g(value)).replace(PERCENT, _g(value * 100) + "%")
    return _LABEL.sub(lambda m: labels.get(m.group(1), ""), out)


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


def _series(row: Row, window: str, tier: str | None = None) -> str:
    """The row's series as the rules read it, on every tier or (the test cases) on one."""
    where = "" if tier is None else f'{{tier="{tier}"}}'
    if row.gauge_only:
        return f"fleetwatch_{row.key}{where}"
    return f"{record_name(row.key, window)}{where}"


# the value the test cases give a row that a threshold scales with (the queue's arrival rate)
PER_VALUE = 10.0
SERVING_RPS = 5.0


def _compare(above: bool, inclusive: bool) -> str:
    return (">=" if inclusive else ">") if above else ("<=" if inclusive else "<")


def band_alerts(config: Config, window: str) -> list[AlertSpec]:
    """Each alerting row's thresholds, one rule per severity and side for every tier: the rule compares
    the row's series with the threshold series fleetwatch exports from the tier's plan and bands, so a
    plan or band change reaches the alerts without new rules. Quiet until the row's range holds a full
    window: a rate over the first seconds after a start reads low."""
    out: list[AlertSpec] = []
    for row in catalogue.ROWS:
        text, spec = row.alert, row.band
        if text is None:
            continue
        x = _series(row, window)
        value = x if not row.gauge_only else f"max by (tier) ({x})"
        for severity, side in _sides(config, row):
            above = side == "above"
            name = PREFIX + text.alert_name(above, severity)
            op = _compare(above, catalogue.inclusive(row, severity, side))
            per = next((lim.per for lim in getattr(spec, f"{severity}_{side}") if lim.per), None)
            th = f"{catalogue.threshold_series(row.key, severity, side)}"
            limit = th if per is None else f"({th} * on (tier) {record_name(per, window)})"
            expr = f"{value} {op} on (tier) {limit}"
            if spec.while_serving and not above:  # lower thresholds hold only while the tier serves
                expr += f' and on (tier) {record_name("requests_per_second", window)} > 0'
            if spec.ok_floor is not None and above:
                expr += f" and {value} >= {spec.ok_floor:g}"
            expr += f" and on (tier) ({value.replace(x, f'{x} offset {window}')})"
            shown = query_value(catalogue.threshold_series(row.key, severity, side, "%s"))
            shown_value = PERCENT if row.unit == "ratio" else f"{VALUE} {row.unit}"
            direction = "above" if above else "below"
            limit_text = shown if per is None else f"{shown} x the arrival rate ({spec.reference_name})"
            out.append(AlertSpec(
                name, severity, text.family_of(above), expr,
                summary=f"Tier {TIER}: {row.title} {direction} its {severity} threshold",
                description=f"{row.title} of tier {TIER} is {shown_value}, {direction} the {severity} "
                            f"threshold {limit_text}. {text.meaning}",
                runbook=_row_runbook(row, text.alert_name(above, severity), x, severity, side),
                cases=tuple(c for tier in config.tiers.values()
                            for c in _band_cases(tier, row, severity, side, window)),
                gated=True))
    return out


def _row_runbook(row: Row, name: str, series: str, severity: str, side: str) -> Runbook:
    assert row.alert is not None
    meaning, do, causes = row.alert.text(name)
    names = tuple(n for canonical in row.inputs for n in I.all_names(canonical))
    gpu = row.key.startswith("gpu_")
    commands = (PODS, *((engine_metrics(names),) if names else ()),
                *((engine_metrics(("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_PROF_SM_ACTIVE",
                                   "DCGM_FI_DEV_GPU_UTIL"), "<the node's dcgm-exporter pod>", 9400),) if gpu else ()),
                fleetwatch_metrics(f'fleetwatch_({row.key}|band_threshold).*tier="<tier>"'))
    where = '{tier="<tier>"}'
    return Runbook(meaning, (series + where, catalogue.threshold_series(row.key, severity, side, "<tier>")),
                   row.title if row.panel else "Status of every row", causes or (row.alert.check,), commands, do)


def _sides(config: Config, row: Row) -> list[tuple[str, str]]:
    """The sides a row's band declares, and those a tier's override adds (a rule needs them; a changed
    value needs none)."""
    return [(severity, side) for severity, side in SEVERITY_SIDES
            if getattr(row.band, f"{severity}_{side}") or any(
                getattr(t.bands.get(row.key), f"{severity}_{side}", None) is not None for t in config.tiers.values())]


def _band_cases(tier: TierConfig, row: Row, severity: str, side: str, window: str) -> list[TestCase]:
    """On ``tier``: a value beyond its threshold and one at the edge, each with every threshold of the
    row on the tier as the rules read it; the severities that fire are those Python's band fires."""
    band = catalogue.rules_band(row, tier.plan, tier.bands.get(row.key))
    th: Threshold | None = None if band is None else getattr(band, f"{severity}_{side}")
    if band is None or th is None or row.alert is None:
        return []
    t, above, spec = tier.name, side == "above", row.band
    per = next((lim.per for lim in getattr(spec, f"{severity}_{side}") if lim.per), None)
    scale = PER_VALUE if per is not None else 1.0
    step = max(abs(th.value * scale) * 0.5, 0.01)
    limit = th.value * scale
    fire = limit + step if above else limit - step
    if spec.ok_floor is not None and above:
        fire = max(fire, spec.ok_floor * 2)
    edge = limit if not th.inclusive else (limit - step / 10 if above else limit + step / 10)
    inputs: list[tuple[str, str]] = []
    for sev, sd in SEVERITY_SIDES:
        other: Threshold | None = getattr(band, f"{sev}_{sd}")
        if other is not None and row.alert.alert_name(sd == "above", sev) == row.alert.alert_name(above, severity):
            inputs.append((catalogue.threshold_series(row.key, sev, sd, t), f"{_num(other.value)}x40"))
    if per is not None:
        inputs.append((f'{record_name(per, window)}{{tier="{t}"}}', f"{PER_VALUE:g}x40"))
    if spec.while_serving and not above:
        inputs.append((f'{record_name("requests_per_second", window)}{{tier="{t}"}}', f"{SERVING_RPS:g}x40"))

    def fires(v: float) -> frozenset[str]:
        out = set()
        for sev, sd in SEVERITY_SIDES:
            other = getattr(band, f"{sev}_{sd}")
            if other is None or row.alert is None or (
                    row.alert.alert_name(sd == "above", sev) != row.alert.alert_name(above, severity)):
                continue
            o_scale = PER_VALUE if any(lim.per for lim in getattr(spec, f"{sev}_{sd}")) else 1.0
            crossed = Threshold(other.value * o_scale, catalogue.inclusive(row, sev, sd))
            ok = crossed.above(v) if sd == "above" else crossed.below(v)
            if sd == "above" and spec.ok_floor is not None:
                ok = ok and v >= spec.ok_floor
            if ok:
                out.add(sev)
        return frozenset(out)

    series = _series(row, window, t)
    return [TestCase(((series, f"{_num(value)}x40"), *inputs), bool(fires(value)), {}, t, fires(value))
            for value in (fire, edge)]
def _num(v: float) -> str:
    """A value for promtool's input notation: exact, and never in exponent form."""
    text = repr(float(v))
    return text if "e" not in text else f"{v:.20f}".rstrip("0")


def special_alerts(config: Config, window: str) -> list[AlertSpec]:
    """The alerts that are not a row's band, on every tier; the scale-down, whose stabilization is the
    tier's own ``for:``, on each tier."""
    out: list[AlertSpec] = []
    t = next(iter(config.tiers))  # the tier the test cases of the tier-independent alerts run on
    one = f'{{tier="{t}"}}'
    queue = record_name("queue_depth_requests", window)
    # the gateway circuit breaker fleetwatch recommends: the queue passed its low end
    br = 'fleetwatch_guardrail_recommended{guardrail="circuit_breaker_queue_threshold",bound="low"}'
    br_t = br.replace("{", '{tier="%s",')
    out.append(AlertSpec(
        f"{PREFIX}QueueAboveCircuitBreaker", "warning", "capacity", f"{queue} > on (tier) max by (tier) ({br})",
        summary=f"Tier {TIER}: queue above the recommended circuit-breaker threshold",
        description=f"Mean queue of tier {TIER} is {VALUE} requests, above the breaker threshold fleetwatch "
                    f"recommends ({query_value(br_t)}, {BREAKER_RANGE[0] * 100:.0f}% of the TTFT SLO x the planned "
                    f"peak RPS): requests a gateway breaker would have shed with a 429.",
        runbook=Runbook(
            "The queue passed the threshold at which fleetwatch recommends a gateway circuit breaker shed load: "
            "without a breaker, a burst becomes an out-of-memory cascade and every request degrades.",
            (f'{queue}{{tier="<tier>"}}', br_t.replace("%s", "<tier>")), "Queue depth and the Little's Law limit",
            ("No circuit breaker at the gateway, or one set above the recommended threshold",
             "Arrivals above the fleet's usable capacity (a peak above the plan's)",
             "Instances down, so the rest queue what they cannot serve"),
            (PODS, engine_metrics(I.all_names("requests_waiting")),
             fleetwatch_metrics('fleetwatch_guardrail_recommended.*circuit_breaker.*tier="<tier>"')),
            "Set the gateway's breaker at the recommended threshold (429 beyond it); scale up if the queue stays."),
        cases=(TestCase(((queue + one, "100x40"), (br_t % t, "80x40")), True, tier=t),
               TestCase(((queue + one, "80x40"), (br_t % t, "80x40")), False, tier=t))))
    # production diverges from the benchmark at equivalent RPS (fleetwatch computes the curve)
    checks = "ttft_p99_vs_benchmark|itl_p99_vs_benchmark|gpu_utilization_vs_benchmark"
    status = f'fleetwatch_plan_check_status{{check=~"{checks}",status="critical"}}'
    step13 = f"max by (tier) ({status}) == 1"
    status_t = f'fleetwatch_plan_check_status{{tier="{t}",check="ttft_p99_vs_benchmark",status="critical"}}'
    out.append(AlertSpec(
        f"{PREFIX}Recharacterize", "warning", "workload", step13,
        summary=f"Tier {TIER}: production diverges from the benchmark the plan was sized on",
        description=f"A plan check of tier {TIER} against the plan's benchmark at equivalent RPS is critical (TTFT "
                    f"P99 or ITL P99 above the benchmark's, or GPU utilization below it, beyond the limits): "
                    f"re-characterize the workload and re-run the benchmark before resizing.",
        runbook=Runbook(
            f"Production no longer matches the benchmark the plan was sized on: at the same RPS per instance, TTFT "
            f"P99 is more than {(STEP13_TTFT_FACTOR - 1) * 100:.0f}% above the benchmark's, or GPU utilization "
            f"more than {STEP13_UTIL_POINTS * 100:.0f} points below it. Sizing on that benchmark would be wrong.",
            ('fleetwatch_plan_check_status{tier="<tier>",status="critical"} == 1',
             'fleetwatch_plan_check_observed{tier="<tier>"} / fleetwatch_plan_check_predicted{tier="<tier>"}'),
            "Plan checks not ok",
            ("The workload changed: longer prompts or outputs than the plan's profile (see the drift alerts)",
             "A new engine version, model build or engine setting that changed per-instance performance",
             "Mixed hardware or a straggler instance in the tier"),
            (fleetwatch_metrics('fleetwatch_plan_check_(status|observed|predicted).*tier="<tier>"'),
             CHECK_JQ.format(what='plan_checks, .tiers[\"<tier>\"].workload'), FLEETWATCH_LOG),
            "Re-characterize the workload (`fleetwatch plan --from-report`) and re-run the benchmark before "
            "resizing; the scale-down alert stays quiet meanwhile."),
        cases=(TestCase(((status_t, "1x40"),), True, tier=t), TestCase(((status_t, "0x40"),), False, tier=t))))
    # engine targets down, in Prometheus's own up
    up = 'up{tier!=""}'
    up_t = f'up{{tier="{t}",instance="x-{t}"}}'
    out.append(AlertSpec(
        f"{PREFIX}TargetDown", "warning", "targets", f"count by (tier) ({up} == 0)",
        summary=f"Tier {TIER}: targets down ({VALUE})",
        description=f"Targets of tier {TIER} that did not answer their last scrape: {VALUE}. The tier serves "
                    f"with fewer instances than planned.",
        runbook=Runbook(
            "Engine targets of the tier do not answer Prometheus's scrape: the tier serves with fewer instances "
            "than planned (a GPU exporter fleetwatch cannot reach is FleetwatchScrapeFailing).",
            ('up{tier="<tier>"} == 0',), "Instances: needed, deployed, up",
            ("The engine pod crashed or restarts (out of memory, a failed model load)",
             "The node is unhealthy or the pod was evicted",
             "The scrape itself fails: a changed port, path, or NetworkPolicy"),
            (PODS, "kubectl -n <namespace> describe pod <pod> | tail -20",
             "kubectl -n <namespace> logs <pod> --previous | tail -50",
             engine_metrics(I.all_names("requests_running"))),
            "Restart or replace the instance; the remaining instances carry its load meanwhile (watch the "
            "utilization and queue alerts)."),
        cases=(TestCase(((up_t, "0x40"),), True, tier=t, value=1.0), TestCase(((up_t, "1x40"),), False, tier=t))))
    # fleetwatch's own view: a target it has not reached for ten minutes (an engine, or a GPU source)
    seen = "fleetwatch_target_up"
    sample = f'{seen}{{tier="{t}",instance="x-{t}",source="dcgm"}}'
    out.append(AlertSpec(
        f"{PREFIX}ScrapeFailing", "warning", "targets",
        f"max by (tier, instance, source) (max_over_time({seen}[10m])) == 0",
        summary=f"Tier {TIER}: fleetwatch cannot scrape {{{{ $labels.instance }}}} ({{{{ $labels.source }}}})",
        description=f"fleetwatch has not reached the {{{{ $labels.source }}}} target of {{{{ $labels.instance }}}} "
                    f"(tier {TIER}) in any scrape of the last 10 minutes: the rows that need it are unknown.",
        runbook=Runbook(
            "fleetwatch has failed every scrape of one target for ten minutes: an engine, or the GPU source beside "
            "it (source=\"dcgm\" is dcgm-exporter, which Prometheus's own up may not show). The rows that read it "
            "stay unknown.",
            ('max_over_time(fleetwatch_target_up{tier="<tier>"}[10m]) == 0',
             'sum by (instance, source, reason) (increase(fleetwatch_scrape_errors_total{tier="<tier>"}[10m]))'),
            "fleetwatch itself",
            ("The target is down (the engine pod, or the node's dcgm-exporter DaemonSet pod)",
             "Its address, port or credentials in the config are wrong (reason http_status or token)",
             "A NetworkPolicy or TLS setting blocks fleetwatch (reason refused, timeout or tls)"),
            (fleetwatch_metrics('fleetwatch_scrape_errors_total.*tier="<tier>"'),
             "kubectl get pods -A -o wide | grep -E 'dcgm|<tier>'", FLEETWATCH_LOG),
            "Restore the target (restart the engine or the exporter, fix its address or credentials in the "
            "config); fleetwatch tries it again on its own."),
        cases=(TestCase(((sample, "0x40"),), True, {"instance": f"x-{t}", "source": "dcgm"}, tier=t),
               TestCase(((sample, "1x40"),), False, {"instance": f"x-{t}", "source": "dcgm"}, tier=t)),
        for_="1m"))
    # the engine series of a tier vanished from Prometheus (the rules compute nothing for it any more):
    # seen within ENGINE_SEEN, gone now (past the lookback, or ended by a staleness marker)
    engines = f'{{__name__=~"{"|".join(I.all_names("requests_running"))}", tier!=""}}'
    sample = f'{I.all_names("requests_running")[0]}{{tier="{t}",instance="x-{t}"}}'
    one_tier = engines.replace('tier!=""', 'tier="<tier>"')
    out.append(AlertSpec(
        f"{PREFIX}EngineSeriesMissing", "warning", "targets",
        f"group by (tier) (max_over_time({engines}[{catalogue.ENGINE_SEEN}])) unless on (tier) "
        f"group by (tier) ({engines})",
        summary=f"Tier {TIER}: its engine series are gone from Prometheus",
        description=f"Prometheus held engine series for tier {TIER} within the last {catalogue.ENGINE_SEEN} and "
                    f"holds none now: the recording rules compute no row, and no row alert can fire for it.",
        runbook=Runbook(
            "Prometheus stopped receiving the tier's engine series: the rules compute nothing for it, so its other "
            "alerts are silent, not satisfied.",
            (one_tier, f"max_over_time({one_tier}[{catalogue.ENGINE_SEEN}])"),
            "Instances: needed, deployed, up",
            ("A relabelling or PodMonitor/ServiceMonitor change dropped the tier label or the engines' job",
             "The engine pods are gone (scaled to zero, deleted, their Deployment renamed)",
             "The engines changed their metric names (a new engine version)"),
            (PODS, "kubectl get podmonitors,servicemonitors -A | grep -i -E 'vllm|sglang|engine'",
             engine_metrics(I.all_names("requests_running"))),
            "Restore the scrape (the tier label and the job) or the engines themselves; until then nothing checks "
            "the tier."),
        cases=(TestCase(((sample, "1x3 stale"),), True, tier=t), TestCase(((sample, "1x40"),), False, tier=t))))
    out += resize_alerts(config)
    # findings fleetwatch computes (guardrails, drift, mixed tiers)
    for kind, (fstem, meaning, causes, do) in FINDINGS.items():
        for severity in ("warning", "critical"):
            f = f'fleetwatch_finding{{kind="{kind}",status="{severity}"}}'
            f_t = f'fleetwatch_finding{{tier="{t}",kind="{kind}",status="{severity}",instance=""}}'
            out.append(AlertSpec(
                f"{PREFIX}{fstem}", severity, "workload", f"max by (tier) ({f}) == 1",
                summary=f"Tier {TIER}: {kind.replace('_', ' ')} ({severity})",
                description=f"fleetwatch found {kind.replace('_', ' ')} on tier {TIER}. {meaning}",
                runbook=Runbook(
                    meaning, (f'fleetwatch_finding{{tier="<tier>",kind="{kind}"}}',), "Findings", causes,
                    (fleetwatch_metrics(f'fleetwatch_finding.*kind="{kind}".*tier="<tier>"'),
                     CHECK_JQ.format(what="findings"), FLEETWATCH_LOG), do),
                cases=(TestCase(((f_t, "1x40"),), True, tier=t), TestCase(((f_t, "0x40"),), False, tier=t))))
    return out


SCALE_FORMULA = "peak RPS / usable RPS per instance x (1 + safety factor)"
FLOORS = "never under the tier's floors (its minimum warm count, and what drains the queue within the TTFT SLO)"


def resize_alerts(config: Config) -> list[AlertSpec]:
    """Resize triggers from the recording rules alone (fleet and sidecar mode alike), with the count to
    scale to as their value. A scale-down waits the tier's stabilization (its ``for:``), so it is one
    rule per tier; a scale-up is one rule."""
    out: list[AlertSpec] = []
    rec, have = RECOMMENDED, INSTANCES
    current = query_value(f'{INSTANCES}{{tier="%s"}}')
    confirm = (f'{RECOMMENDED}{{tier="<tier>"}}', f'{INSTANCES}{{tier="<tier>"}}', f'{SIZING_PEAK}{{tier="<tier>"}}')
    commands = (PODS, fleetwatch_metrics('fleetwatch_(recommended_instances|resize_action|resize_peak_rps).*'
                                         'tier="<tier>"'), CHECK_JQ.format(what="resize"))
    up = Runbook(
        "More instances needed: the fleet-size arithmetic (the peak arrival rate over the usable RPS per instance, "
        "with the safety margin) asks for more than the tier has, and at the peak requests would queue past the "
        "SLO.",
        confirm, "Instances: needed, deployed, up",
        ("Load grew past the peak the fleet was sized for", "Instances down or not scheduled (pending for GPUs)",
         "The plan's usable RPS per instance overstates production (see FleetwatchRecharacterize)"),
        commands, "Scale the tier to the count in the alert (an autoscaler fed by this alert does; by hand: "
                  "`kubectl -n <namespace> scale deployment/<the tier's engine Deployment> --replicas=<count>`); "
                  "re-plan if it recurs.")
    down = replace(up, meaning=(
        "Instances idle: the recommended count, never under the tier's floors (the minimum warm count, and what "
        "drains the queue within the TTFT SLO), stayed below the deployed count for the plan's whole stabilization "
        "window."), causes=(
        "Load fell below the peak the fleet was sized for (a night, a season, traffic moved)",
        "The fleet was scaled up for a peak that has passed",
        "The plan's peak or safety factor is larger than the workload needs"),
        do="Scale down to the count in the alert, not below it (`kubectl -n <namespace> scale deployment/<the tier's "
           "engine Deployment> --replicas=<count>`); the floors already keep the warm and queue-draining instances.")
    t = next(iter(config.tiers))
    out.append(AlertSpec(
        f"{PREFIX}ScaleUp", "critical", "resize", f"{rec} > on (tier) {have}",
        summary=f"Tier {TIER}: scale up to {VALUE} instances",
        description=f"Tier {TIER} needs {VALUE} instances, has {current}: {SCALE_FORMULA}.", runbook=up,
        cases=(TestCase(((f'{rec}{{tier="{t}"}}', "7x40"), (f'{have}{{tier="{t}"}}', "4x40")), True, tier=t),
               TestCase(((f'{rec}{{tier="{t}"}}', "4x40"), (f'{have}{{tier="{t}"}}', "4x40")), False, tier=t))))
    checks = "ttft_p99_vs_benchmark|itl_p99_vs_benchmark|gpu_utilization_vs_benchmark"
    for tier in config.tiers.values():
        t, one = tier.name, f'{{tier="{tier.name}"}}'
        # to the recommendation, never under the tier's floors; not while a benchmark check says the
        # benchmark no longer describes the workload, and only once that stayed below the deployed count
        # for the whole stabilization window (for:). Warning, not info: kube-prometheus-stack's
        # Alertmanager inhibits info alerts (InfoInhibitor)
        step13 = f'fleetwatch_plan_check_status{{tier="{t}",check=~"{checks}",status="critical"}} == 1'
        floor, littles_law = SCALE_DOWN_FLOOR + one, LITTLES_LAW_FLOOR + one
        warm = tier.schedule.min_warm_instances
        r, h = rec + one, have + one
        out.append(AlertSpec(
            f"{PREFIX}ScaleDown", "warning", "resize",
            f"({sizing.scale_down_to_promql(r, floor)}) < on (tier) {h} unless on (tier) ({step13})",
            summary=f"Tier {TIER}: scale down to {VALUE} instances",
            description=f"Tier {TIER} needs {VALUE} instances, has {current}: {SCALE_FORMULA}, {FLOORS}.",
            runbook=down,
            cases=(TestCase(((r, f"{max(2, warm)}x40"), (h, f"{max(2, warm) + 2}x40"), (littles_law, "1x40")),
                            True, tier=t),
                   TestCase(((r, "4x40"), (h, "4x40"), (littles_law, "1x40")), False, tier=t),
                   # the recommendation is below, but Little's Law's floor is not: no scale-down
                   TestCase(((r, "2x40"), (h, f"{max(4, warm)}x40"), (littles_law, f"{max(4, warm)}x40")),
                            False, tier=t)),
            # the tier's label, which its expression returns anyway, tells the tiers' rules apart
            extra_labels={"tier": t}, for_=format_duration(tier.plan.scale_down_stabilization)))
    return out


def self_alerts(config: Config) -> list[AlertSpec]:
    """Who watches the watcher: fleetwatch absent, its cycles stale, its notifications failing or dropped.
    (A target fleetwatch cannot reach and a tier whose engine series vanished are a tier's: special_alerts.)"""
    stale = config.stale_after
    last = "fleetwatch_last_cycle_timestamp_seconds"
    out = [
        AlertSpec(
            f"{PREFIX}Absent", "critical", "self", f"absent({last})",
            summary="fleetwatch is not reporting",
            description="Prometheus has no fleetwatch series: fleetwatch is down, or Prometheus does not scrape "
                        "it. Nothing checks the fleet against its plan meanwhile.",
            runbook=Runbook(
                "Prometheus holds no fleetwatch series: fleetwatch is down or not scraped, and no tier is checked "
                "against its plan (the rules' rows still compute, but no threshold series exists to compare them "
                "with).", (f"absent({last})", 'up{job=~".*fleetwatch.*"}'), "fleetwatch itself",
                ("The fleetwatch pod is not running (crash loop on a config error: exit 2 names the key)",
                 "Prometheus does not select it (the PodMonitor or ServiceMonitor's labels, namespace selector)",
                 "A NetworkPolicy blocks Prometheus from port 9108"),
                ("kubectl -n <namespace> get pods -l app.kubernetes.io/name=fleetwatch -o wide",
                 "kubectl -n <namespace> logs deploy/fleetwatch --previous | tail -20",
                 "kubectl get podmonitors,servicemonitors -A | grep fleetwatch",
                 "curl -s http://<fleetwatch>:9108/healthz"),
                "Fix what the log or /healthz says (a config error names the file, key and reason), or the scrape "
                "job; restart fleetwatch."),
            cases=(TestCase((("fleetwatch_cycles_total", "1x40"),), True),
                   TestCase(((last, "0+15x40"),), False))),
        AlertSpec(
            f"{PREFIX}CycleStale", "critical", "self", f"time() - max({last}) > {stale:g}",
            summary="fleetwatch's last cycle is stale",
            description=f"fleetwatch's last completed cycle is more than {stale:g} s old (three intervals and a "
                        f"scrape timeout): its report and /metrics no longer describe the fleet.",
            runbook=Runbook(
                "fleetwatch runs but its cycles stopped completing: the report and /metrics it serves describe the "
                "fleet as it was.",
                (f"time() - max({last})", "increase(fleetwatch_cycle_failures_total[10m])",
                 "increase(fleetwatch_cycle_overruns_total[10m])"), "fleetwatch itself",
                ("Every cycle fails (the log names why: a Prometheus source that does not answer, an evaluation "
                 "error)", "Cycles overrun the interval (many hanging targets, too short a scrape_timeout)",
                 "The process is wedged or starved of CPU (throttled by its limit)"),
                ("curl -s -o /dev/null -w '%{http_code}\\n' http://<fleetwatch>:9108/healthz",
                 "kubectl -n <namespace> logs deploy/fleetwatch --since=15m | grep -E 'ERROR|WARNING' | tail -20",
                 "kubectl -n <namespace> top pod -l app.kubernetes.io/name=fleetwatch"),
                "A failing cycle says why in the log: fix that; an overrunning one needs a longer interval or "
                "scrape_timeout, or fewer hanging targets. Restart it if it is wedged."),
            cases=(TestCase(((last, "0x40"),), True), TestCase(((last, "0+15x40"),), False))),
    ]
    for kind, severity, meaning, do in (
            ("failed", "warning", "fleetwatch's POSTs to an Alertmanager fail: its alerts wait in its queue and are "
             "resent when it answers.", "Fix the Alertmanager's address, TLS or health; nothing is lost while the "
             "queue holds."),
            ("dropped", "critical", "fleetwatch's queue for an Alertmanager overflowed: alerts were dropped and "
             "never delivered.", "The Alertmanager has been unreachable for long: restore it; the rules' alerts in "
             "Prometheus still fire meanwhile.")):
        counter = f"fleetwatch_alertmanager_notifications_{kind}_total"
        name = f"{PREFIX}Notifications{kind.capitalize()}"
        out.append(AlertSpec(
            name, severity, "self", f"sum by (alertmanager) (increase({counter}[10m])) > 0",
            summary=f"fleetwatch's notifications {kind} ({{{{ $labels.alertmanager }}}})",
            description=f"Notifications from fleetwatch to {{{{ $labels.alertmanager }}}} {kind} in the last 10 "
                        f"minutes.",
            runbook=Runbook(
                meaning, (f"sum by (alertmanager) (increase({counter}[10m]))",
                          "fleetwatch_alertmanager_queue_length"), "fleetwatch itself",
                ("The Alertmanager is down or restarting", "A wrong address, or TLS that fleetwatch does not trust "
                 "(ca_file)", "A NetworkPolicy between fleetwatch and Alertmanager"),
                ("kubectl -n <namespace> logs deploy/fleetwatch --since=30m | grep alertmanager | tail -10",
                 "kubectl get pods -A -l app.kubernetes.io/name=alertmanager",
                 "curl -s http://<alertmanager>:9093/-/healthy"), do),
            cases=(TestCase(((counter.replace("_total", '_total{alertmanager="am"}'), "0+1x40"),), True,
                            {"alertmanager": "am"}),
                   TestCase(((counter.replace("_total", '_total{alertmanager="am"}'), "3x40"),), False,
                            {"alertmanager": "am"}))))
    return out


def alerts(config: Config) -> list[AlertSpec]:
    w = format_duration(config.window)
    out = band_alerts(config, w) + special_alerts(config, w) + self_alerts(config)
    if config.alert_labels:  # the config's static labels, on every alert (its own labels win)
        out = [replace(a, extra_labels={**config.alert_labels, **a.extra_labels}) for a in out]
    return out


def alert_for(config: Config, spec: AlertSpec, for_: str | None = None) -> str:
    """The rule's ``for:``: a scale-down's is its tier's stabilization; else ``for_`` where given (every
    other alert's, for drills and tests); else the alert's own, or its family's and severity's."""
    if "tier" in spec.extra_labels and spec.for_:  # one tier's rule: the plan's stabilization
        return spec.for_
    return for_ or spec.for_ or format_duration(config.alerting.for_seconds(spec.family, spec.severity))


# libyaml's emitter where PyYAML has it: the same text (checked on the committed files), several
# times faster, which `fleetwatch rules` and the generated-plans test notice
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_DUMPER, sort_keys=False, width=120, allow_unicode=True)


def rule_groups(config: Config, for_: str | None = None, runbook_base: str | None = None,
                eval_interval: str | None = None) -> list[dict[str, Any]]:
    interval = eval_interval or format_duration(config.interval)
    base = runbook_base or config.alerting.runbook_url
    return [
        {"name": "fleetwatch-recording", "interval": interval, "rules": recording_rules(config)},
        {"name": "fleetwatch-alerts", "interval": interval,
         "rules": [a.rule(alert_for(config, a, for_), base) for a in alerts(config)]},
    ]


def prometheus_rule(groups: list[dict[str, Any]], name: str = "fleetwatch") -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "fleetwatch",
                                                  "app.kubernetes.io/component": "rules"}},
            "spec": {"groups": groups}}


def promtool_tests(config: Config, for_: str | None = None, runbook_base: str | None = None,
                   rule_file: str = "../fleetwatch.rules.yml") -> dict[str, Any]:
    """Every alert's cases; each check expects exactly the alerts of its name that fire on its inputs.

    Cases are packed into as few test groups as stay independent (see ``_pack``): promtool evaluates
    every rule at every step of every group, so one group per case took it half a minute."""
    specs = alerts(config)
    base = runbook_base or config.alerting.runbook_url
    interval = format_duration(config.interval)
    waits: dict[int, float] = {}  # id(case) -> when its check looks

    def wait_for(spec: AlertSpec) -> float:  # past the ``for:``, and for a row's alert past its first full window
        return (parse_duration(alert_for(config, spec, for_)) + (config.window if spec.gated else 0.0)
                + config.interval * 4)
    cases = []
    for spec in specs:
        for case in spec.cases:  # long enough for every severity the case fires
            waits[id(case)] = max(wait_for(o) for o in specs
                                  if o.name == spec.name and o.severity in _firing(spec, case) or o is spec)
            cases.append((spec, case))
    reads = _reads(recording_rules(config))
    tests = []
    for group in _pack(cases, reads, waits):
        samples = int(max(waits[id(c)] for _, c in group) / config.interval) + 2  # every series spans the group
        series: list[dict[str, str]] = []
        checks: dict[tuple[str, float], list[dict[str, Any]]] = {}
        for spec, case in group:
            # a value that ends by itself ("1x3 stale") is kept; the others span the whole group
            series += [{"series": s, "values": v if " " in v else f"{v.rsplit('x', 1)[0]}x{samples}"}
                       for s, v in case.series]
            checks.setdefault((spec.name, waits[id(case)]), []).extend(_expected(specs, spec, case, base))
        tests.append({"interval": interval, "input_series": series, "alert_rule_test": [
            {"eval_time": format_duration(wait), "alertname": name, "exp_alerts": exp}
            for (name, wait), exp in checks.items()]})
    return {"rule_files": [rule_file], "evaluation_interval": interval, "tests": tests}


def _expected(specs: list[AlertSpec], spec: AlertSpec, case: TestCase, runbook_base: str) -> list[dict[str, Any]]:
    """The alerts of the case's name that fire on its inputs: its own, and the other severities a
    band's case says fire too."""
    fire = _firing(spec, case)
    values = {s: _initial(v) for s, v in case.series}
    labels = {**({"tier": case.tier} if case.tier else {}), **case.labels}
    out = []
    for other in specs:
        if other.name != spec.name or other.severity not in fire:
            continue
        if not _on_tier(other, case.tier):
            continue
        value = values[case.series[0][0]] if case.value is None else case.value
        out.append({"exp_labels": {"severity": other.severity, **other.extra_labels, **labels},
                    "exp_annotations": {k: render(v, value, labels, values.get) for k, v in
                                        (("summary", other.summary), ("description", other.description))}
                    | {"runbook_url": runbook_url(runbook_base, other.name)}})
    return out


def _firing(spec: AlertSpec, case: TestCase) -> frozenset[str]:
    if case.severities is not None:
        return case.severities
    return frozenset({spec.severity}) if case.fires else frozenset()


def _initial(values: str) -> float:
    """The first value of promtool's notation ("7x40", "0+1x40", "1x3 stale"): the cases' values hold."""
    m = re.match(r"-?[0-9.]+(e[-+]?[0-9]+)?", values)
    assert m, values
    return float(m.group(0))


def _on_tier(spec: AlertSpec, tier: str) -> bool:
    """Whether ``spec``'s rule can fire on ``tier`` (a scale-down's rule is one tier's)."""
    return not re.search(r'tier="([^"]*)"', spec.expr) or f'tier="{tier}"' in spec.expr


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


def _by_name(selectors: set[Selector]) -> dict[str, list[frozenset[tuple[str, str]]]]:
    out: dict[str, list[frozenset[tuple[str, str]]]] = {}
    for name, matchers in selectors:
        out.setdefault(name, []).append(matchers)
    return out


def _pack(cases: list[tuple[AlertSpec, TestCase]], reads: dict[str, set[Selector]], waits: dict[int, float]
          ) -> list[list[tuple[AlertSpec, TestCase]]]:
    """First fit. In a group, no case's input series is selected by another case's alert (by its
    expression or the recording rules behind it), so each sees only its own; but cases of one alert
    name on different tiers share a group, their checks merged where they look at the same time (every
    rule aggregates by tier, and the cases' instances are named after their tier, so tiers never meet).
    One name is on a tier once, and looked at once."""
    exprs: dict[str, set[Selector]] = {}  # promtool checks an alert name on every tier and severity at once
    for spec, _ in cases:
        exprs.setdefault(spec.name, set()).update(_selectors(spec.expr))
    reached = {name: sel.union(*(reads.get(n, set()) for n, _ in sel)) for name, sel in exprs.items()}

    by_name = {name: _by_name(sel) for name, sel in reached.items()}

    def hits(series: list[tuple[str, dict[str, str]]], selectors: dict[str, list[frozenset[tuple[str, str]]]]) -> bool:
        return any(all(labels.get(k, "") == v for k, v in m) for name, labels in series
                   for m in selectors.get(name, ()))

    Member = tuple[AlertSpec, TestCase, list[tuple[str, dict[str, str]]]]
    groups: list[list[Member]] = []
    for spec, case in cases:
        mine = [_input(s) for s, _ in case.series]

        def fits(group: list[Member], spec: AlertSpec = spec, case: TestCase = case,
                 mine: list[tuple[str, dict[str, str]]] = mine) -> bool:
            for other, oc, theirs in group:
                if other.name == spec.name:
                    if oc.tier == case.tier or not case.tier or waits[id(oc)] != waits[id(case)]:
                        return False
                elif hits(mine, by_name[other.name]) or hits(theirs, by_name[spec.name]):
                    return False
            return True
        for group in groups:
            if fits(group):
                group.append((spec, case, mine))
                break
        else:
            groups.append([(spec, case, mine)])
    return [[(spec, case) for spec, case, _ in group] for group in groups]


def alert_table(config: Config) -> str:
    """Every alert as a Markdown table (name, severities, when it fires), as README lists them."""
    rows: dict[str, dict[str, str]] = {}
    summary: dict[str, str] = {}
    for a in alerts(config):
        # a scale-down waits its own tier's stabilization
        rows.setdefault(a.name, {})[a.severity] = ("the tier's stabilization" if "tier" in a.extra_labels
                                                   else alert_for(config, a))
        summary.setdefault(a.name, a.runbook.meaning.split(": ")[0].split(". ")[0].rstrip("."))
    lines = ["| Alert | Fires after | What it means |", "|---|---|---|"]
    for name in sorted(rows):
        waits = ", ".join(f"{sev} {rows[name][sev]}" for sev in ("critical", "warning") if sev in rows[name])
        lines.append(f"| `{name}` | {waits} | {summary[name]} |")
    return "\n".join(lines) + "\n"


def runbook(config: Config, for_: str | None = None) -> str:
    """One entry per alert name, as an on-call reads it (``for_``: as ``fleetwatch rules --for``)."""
    from .dashboards import panel_link

    seen: dict[str, AlertSpec] = {}
    severities: dict[str, set[str]] = {}
    waits: dict[str, set[str]] = {}
    for a in alerts(config):
        seen.setdefault(a.name, a)
        severities.setdefault(a.name, set()).add(a.severity)
        waits.setdefault(a.name, set()).add(f"{a.severity} {alert_for(config, a, for_)}" + (
            f" on tier {a.extra_labels['tier']}" if "tier" in a.extra_labels else ""))
    lines = ["# fleetwatch runbook", "",
             "Generated by `fleetwatch rules` beside the rules it goes with; every alert has an entry: what it",
             "means, the PromQL that confirms it, the dashboard panel, the likely causes (most likely first), the",
             "commands that check them, and what to do. `<tier>` is the alert's tier label, `<namespace>` its",
             "namespace, `<pod>` an engine pod of that tier, `<fleetwatch>` fleetwatch's Service, `<config>` its",
             "config file. Dashboard links are paths on your Grafana with the generated dashboards loaded.", ""]
    for name in sorted(seen):
        r = seen[name].runbook
        board, title, link = panel_link(r.panel)
        if seen[name].family != "self":  # an alert about a tier opens the panel on that tier
            link += "&var-tier=<tier>"
        lines += [f"## {name}", "",
                  f"Severity: {', '.join(sorted(severities[name]))}. Fires after: {'; '.join(sorted(waits[name]))}.",
                  "", f"**What it means.** {r.meaning}", "", "**Confirm** (in Prometheus):", "", "```promql",
                  *r.confirm, "```", "", f"**Dashboard.** [{board} › {title}]({link})", "",
                  "**Likely causes**, most likely first:", "",
                  *(f"{i}. {c}." if not c.endswith(".") else f"{i}. {c}" for i, c in enumerate(r.causes, 1)), "",
                  "**Check:**", "", "```sh", *r.commands, "```", "", f"**Do.** {r.do}", ""]
    return "\n".join(lines)


def build(config: Config, *, for_: str | None = None, runbook_base: str | None = None,
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
