"""Catalogue + plans -> Prometheus recording and alerting rules, their promtool tests, a runbook.

Pure: ``build(config, ...)`` returns file name -> text. Every alert is an ``AlertSpec``: the rule,
its runbook entry and its two promtool test cases (a series that fires it, one at the boundary that
must not) come from that one object, so none of them can miss an alert. Only what Prometheus 2.42
accepts: no group ``labels``, no ``query_offset``, no native histograms.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from ..catalogue import INSTANCES, RECOMMENDED, ROWS, Context, apply_override, fleet_series, plan_series
from ..config import Config, TierConfig, format_duration
from ..evaluate import STEP13_TTFT_FACTOR, STEP13_UTIL_POINTS
from ..guardrails import BREAKER_RANGE
from ..model import Band, Threshold
from ..window import Quantity

PREFIX = "Fleetwatch"
RUNBOOK = "runbook.md"
# the aggregation in each recording rule's name: tier:fleetwatch_<key>:<op><window>
OPS = {"requests_per_second": "rate", "ttft_p50_seconds": "rate", "ttft_p99_seconds": "rate",
       "itl_p50_seconds": "rate", "itl_p99_seconds": "rate", "kv_cache_utilization_ratio": "avg",
       "kv_cache_eviction_ratio": "increase", "prefix_cache_hit_ratio": "rate", "queue_depth_requests": "avg",
       "fleet_utilization_ratio": "rate", "gpu_memory_utilization_ratio": "avg",
       "gpu_compute_utilization_ratio": "avg", "spec_decode_acceptance_ratio": "rate",
       "tokens_per_gpu_hour": "rate", "cost_per_million_tokens_usd": "rate"}

# 9.3 "what it tells you", what to check, what to do: the runbook, per band alert
ROW_TEXT: dict[str, tuple[str, str, str, str]] = {
    # key: (alert stem, meaning, check, do)
    "ttft_p50_seconds": ("TTFTP50High", "Median time to first token is near the SLO: the fleet is undersized or the "
                         "workload shifted beyond the benchmark (P50 and P99 both violating).",
                         "Queue depth and fleet utilization of the tier; input length P95 against the plan.",
                         "Scale the tier up if utilization is high; otherwise re-characterize the workload."),
    "ttft_p99_seconds": ("TTFTP99High", "Tail time to first token violates or approaches the SLO. P99 bad with P50 "
                         "fine means queueing or prefill interference.",
                         "TTFT P50, queue depth, prefill share of steps, chunked prefill settings.",
                         "Enable or tune chunked prefill; scale up if the queue grows; shed load at the breaker."),
    "itl_p50_seconds": ("ITLP50High", "Inter-token latency is elevated at the median: decode batch too large or "
                        "decode hardware undersized.", "Running batch size, KV cache usage, GPU compute utilization.",
                        "Lower max_num_seqs or scale the tier; consider P/D disaggregation."),
    "itl_p99_seconds": ("ITLP99High", "Inter-token latency spikes at P99: prefill interference.",
                        "Prefill tokens per step (max_num_batched_tokens), long prompts in the mix.",
                        "Try chunked prefill with a smaller token budget, or separate long-prompt traffic."),
    "kv_cache_utilization_ratio": ("KVCacheUtilizationHigh", "KV cache near the ceiling: it becomes the bottleneck "
                                   "before compute does.", "KV usage per instance, eviction ratio, input lengths.",
                                   "Evaluate KV cache quantization or offloading; cap max_input_tokens at the gateway."),
    "kv_cache_eviction_ratio": ("KVCacheEvictionHigh", "Requests are preempted for KV space: above 5% the KV budget "
                                "is undersized; above 20% it is the memory pressure cascade, which shows up as "
                                "latency.", "Preemptions per finished request, KV usage, prompt P95 against the plan.",
                                "Add KV capacity (instances, quantized KV, offload) or cap input length; "
                                "re-characterize if prompts grew."),
    "prefix_cache_hit_ratio": ("PrefixCacheHitLow", "Low prefix cache hits on a workload with known prefix reuse: "
                               "routing misconfiguration or a cache too small.",
                               "Prefix-aware routing, cache size, whether the shared prefixes changed.",
                               "Fix routing (session or prefix affinity) or give the cache more room."),
    "queue_depth_requests": ("QueueDepthHigh", "The queue nears Little's Law's limit (max wait x arrival rate): "
                             "requests queue faster than they are served.",
                             "Arrival rate against the plan's peak, fleet utilization, instances up.",
                             "Scale up; make sure the gateway circuit breaker sheds load at 80-90% of the limit."),
    "fleet_utilization_ratio": ("Utilization", "Load against usable capacity: below 40% is the utilization trap "
                                "(idle GPUs inflate cost per token); above 80% leaves little headroom; above 90% "
                                "none.", "Requests per second against the plan's peak and the instances up.",
                                "Below 40%: scale down or consolidate. Above 80-90%: scale up or quantize."),
    "gpu_memory_utilization_ratio": ("GPUMemory", "GPU memory: below 70% is over-provisioned; above 90-95% risks "
                                     "OOM on spikes.", "gpu_memory_utilization setting, weights and KV pool sizes.",
                                     "Resize the KV pool or the model's footprint; pick a smaller GPU if far below."),
    "gpu_compute_utilization_ratio": ("GPUComputeLow", "Low compute during active serving: batches too small or "
                                      "the workload is decode-dominated.", "Running batch size, max_num_seqs.",
                                      "Raise batch size / concurrency; consider a cheaper tier for decode."),
    "spec_decode_acceptance_ratio": ("SpecDecodeAcceptanceLow", "The draft model matches current traffic poorly: "
                                     "below 50% speculative decoding costs more than it saves.",
                                     "Acceptance by traffic type; draft model version.",
                                     "Disable speculative decoding or retune the draft model."),
    "lora_adapter_cache_hit_ratio": ("LoRAAdapterCacheHitLow", "Adapter variants compete for GPU memory.",
                                     "Adapters per instance, max_loras, adapter ranks.",
                                     "Increase max_loras or reduce adapter rank; route adapters to fewer instances."),
    "lora_adapter_evictions_per_second": ("LoRAAdapterEvictions", "Adapters are paged out and reloaded on demand: "
                                          "TTFT spikes on specific tenants.", "Running vs waiting adapters.",
                                          "Increase max_loras or pin hot adapters to dedicated instances."),
}

# rows without PromQL of their own read fleetwatch's exported per-tier gauge instead
GAUGE_ROWS = {"lora_adapter_cache_hit_ratio", "lora_adapter_evictions_per_second"}

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
    tier: str
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
                "labels": {"severity": self.severity, "tier": self.tier, **self.extra_labels},
                "annotations": {"summary": self.summary, "description": self.description,
                                "runbook_url": f"{runbook_base}#{self.name.lower()}"}}


def _g(v: float) -> str:
    """Go's printf "%.4g" for the values the tests use (same as Python's)."""
    return "%.4g" % v


VALUE = '{{ $value | printf "%.4g" }}'


def record_name(key: str, window: str) -> str:
    return f"tier:fleetwatch_{key}:{OPS[key]}{window}"


def peak_name(history: float) -> str:
    return f"tier:fleetwatch_requests_per_second:max_over_time{format_duration(history)}"


SIZING_PEAK = "tier:fleetwatch_resize_peak_rps:max"


def sizing_rules(window: float, history: float) -> dict[str, str]:
    """Step 11 in PromQL, as ``evaluate.resize`` computes it: P is the peak of the recorded arrival
    rate over the retained history, or, until that history reaches back one day, the larger of it
    and the plan's peak. recommended = ceil(ceil(P / usable - 1e-9) x (1 + safety) - 1e-9)."""
    rps, peak, plan_peak = record_name("requests_per_second", format_duration(window)), peak_name(history), \
        plan_series("peak_rps")
    return {
        peak: f"max_over_time({rps}[{format_duration(history)}])",
        SIZING_PEAK: f"({peak} and on (tier) ({rps} offset 1d))"
                     f" or on (tier) ({peak} >= on (tier) {plan_peak}) or on (tier) {plan_peak}",
        RECOMMENDED: f"clamp_min(ceil(ceil({SIZING_PEAK} / on (tier) {plan_series('usable_rps_per_instance')} - 1e-9)"
                     f" * on (tier) (1 + {plan_series('safety_factor')}) - 1e-9), 0)",
    }


def recording_rules(window: float, history: float = 7 * 86400.0) -> list[dict[str, str]]:
    """In the order Prometheus must evaluate them: a group's rules run in sequence, each seeing the
    ones before it at the same timestamp."""
    w = format_duration(window)
    out = [{"record": name, "expr": expr} for name, expr in fleet_series().items()]
    for row in ROWS:
        if not row.promql:
            continue
        expr = row.promql.replace("{w}", w).replace("{ws}", f"{window:g}")
        out.append({"record": record_name(row.key, w), "expr": expr})
    out += [{"record": name, "expr": expr} for name, expr in sizing_rules(window, history).items()]
    return out


def _threshold_cases(series: str, t: Threshold, above: bool) -> tuple[TestCase, TestCase]:
    """Fire beyond the threshold; at the boundary (or just inside an inclusive one) it must not."""
    step = max(abs(t.value) * 0.5, 0.01)
    fire = t.value + step if above else max(t.value - step, t.value / 2)
    edge = t.value if not t.inclusive else (t.value - step / 10 if above else t.value + step / 10)
    return TestCase(((series, f"{_g(fire)}x40"),), True), TestCase(((series, f"{_g(edge)}x40"),), False)


def _band(tier: TierConfig, key: str) -> Band | None:
    row = next(r for r in ROWS if r.key == key)
    values = {r.key: Quantity(None) for r in ROWS}
    values["requests_per_second"] = Quantity(1.0)  # "while serving": rules add the serving condition themselves
    ctx = Context(tier.plan, values, {})
    return apply_override(row.band(ctx), tier.bands.get(key))


def band_alerts(tier: TierConfig, window: str) -> list[AlertSpec]:
    out: list[AlertSpec] = []
    t = tier.name
    for row in ROWS:
        if row.key not in ROW_TEXT or row.key == "queue_depth_requests":
            continue
        band = _band(tier, row.key)
        if band is None:
            continue
        stem, meaning, check, do = ROW_TEXT[row.key]
        if row.key in GAUGE_ROWS:
            series = f'fleetwatch_{row.key}{{tier="{t}"}}'
        else:
            series = f'{record_name(row.key, window)}{{tier="{t}"}}'
        serving = ""
        if row.key == "gpu_compute_utilization_ratio":
            serving = f' and on (tier) {record_name("requests_per_second", window)}{{tier="{t}"}} > 0'
        for attr, severity, above in (("warning_above", "warning", True), ("critical_above", "critical", True),
                                      ("warning_below", "warning", False), ("critical_below", "critical", False)):
            th: Threshold | None = getattr(band, attr)
            if th is None:
                continue
            op = (">=" if th.inclusive else ">") if above else ("<=" if th.inclusive else "<")
            name = _alert_name(row.key, stem, above, severity)
            fire, edge = _threshold_cases(series, th, above)
            extra: tuple[tuple[str, str], ...] = ()
            if serving:
                extra = ((f'{record_name("requests_per_second", window)}{{tier="{t}"}}', "5x40"),)
            fire = TestCase(fire.series + extra, True)
            edge = TestCase(edge.series + extra, False)
            out.append(AlertSpec(
                name, severity, t, f"{series} {op} {th.value:g}{serving}",
                summary=f"Tier {t}: {row.title} {'above' if above else 'below'} {th.value:g} ({severity})",
                description=f"{row.title} of tier {t} is {VALUE} {row.unit}, {'above' if above else 'below'} the "
                            f"{severity} threshold {th.value:g} (target: {band.target}). {meaning}",
                runbook=(meaning, check, do), cases=(fire, edge),
                op=op, th=th.value))
    return out


def _alert_name(key: str, stem: str, above: bool, severity: str) -> str:
    if key == "fleet_utilization_ratio":
        if not above:
            return f"{PREFIX}UtilizationTrap"
        return f"{PREFIX}NoHeadroom" if severity == "critical" else f"{PREFIX}UtilizationHigh"
    if key == "gpu_memory_utilization_ratio":
        return f"{PREFIX}{stem}{'High' if above else 'Low'}"
    return f"{PREFIX}{stem}"


def special_alerts(tier: TierConfig, window: str) -> list[AlertSpec]:
    t, plan = tier.name, tier.plan
    out: list[AlertSpec] = []
    rps = f'{record_name("requests_per_second", window)}{{tier="{t}"}}'
    queue = f'{record_name("queue_depth_requests", window)}{{tier="{t}"}}'
    stem, meaning, check, do = ROW_TEXT["queue_depth_requests"]
    # the catalogue's Little's Law band at 1 RPS gives the queue per unit of arrival rate
    band = _band(tier, "queue_depth_requests")
    assert band is not None
    floor = band.ok_floor if band.ok_floor is not None else 0.0
    for severity, th in (("warning", band.warning_above), ("critical", band.critical_above)):
        if th is None:
            continue
        share = th.value / plan.slo.ttft_p99
        out.append(AlertSpec(
            f"{PREFIX}{stem}", severity, t, f"{queue} >= {th.value:g} * {rps} and {queue} >= {floor:g}",
            summary=f"Tier {t}: queue at {share * 100:.0f}% of Little's Law's limit ({severity})",
            description=f"Mean queue of tier {t} is {VALUE} requests, at or above {share * 100:.0f}% of the "
                        f"max safe depth {plan.slo.ttft_p99:g}s TTFT SLO x arrival rate. {meaning}",
            runbook=(meaning, check, do),
            cases=(TestCase(((queue, "50x40"), (rps, "10x40")), True),
                   TestCase(((queue, f"{_g(th.value * 10 - 0.01)}x40"), (rps, "10x40")), False)),
            op=">=", th=max(floor, th.value * 10)))
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
        cases=(TestCase(((queue, "100x40"), (br, "80x40")), True), TestCase(((queue, "80x40"), (br, "80x40")), False)), op=">", th=80.0))
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
        runbook=("An engine or dcgm-exporter target does not answer.", "The pod, its logs, the node.",
                 "Restart or replace the instance; the remaining instances carry its load meanwhile."),
        cases=(TestCase(((up.replace("}", ',instance="x"}'), "0x40"),), True, {"instance": "x"}),
               TestCase(((up.replace("}", ',instance="x"}'), "1x40"),), False, {"instance": "x"})), op="==", th=0.0))
    # resize triggers, from the recording rules alone: they work in fleet and in sidecar mode, and
    # carry the recommended count as $value
    rec, have = f'{RECOMMENDED}{{tier="{t}"}}', f'{INSTANCES}{{tier="{t}"}}'
    current = f"{{{{ with query `{have}` }}}}{{{{ . | first | value }}}}{{{{ end }}}}"
    step13 = (f'fleetwatch_plan_check_status{{tier="{t}",check=~"{checks}",status="critical"}} == 1')
    formula = (f"peak RPS / {plan.benchmark.usable_rps_per_instance:g} usable RPS per instance x "
               f"(1 + {plan.safety_factor:g} safety)")
    for action, severity, op, for_, expr in (
            ("scale_up", "critical", ">", None, f"{rec} > on (tier) {have}"),
            # not while a Step 13 check says the benchmark no longer describes the workload, and only
            # once the recommendation stayed below for the whole stabilization window (for:)
            # warning, not info: kube-prometheus-stack's Alertmanager inhibits info alerts (InfoInhibitor)
            ("scale_down", "warning", "<", format_duration(plan.scale_down_stabilization),
             f"{rec} < on (tier) {have} unless on (tier) ({step13})")):
        name = f"{PREFIX}{'ScaleUp' if action == 'scale_up' else 'ScaleDown'}"
        fire, hold = ("7x40", "4x40"), ("4x40", "4x40")
        if action == "scale_down":
            fire, hold = ("2x40", "4x40"), ("4x40", "4x40")
        out.append(AlertSpec(
            name, severity, t, expr,
            summary=f"Tier {t}: resize to {{{{ $value }}}} instances ({action})",
            description=f"Tier {t} needs {{{{ $value }}}} instances, has {current}: {formula}.",
            runbook=("The fleet-size arithmetic (peak RPS over usable RPS per instance, with the safety margin) "
                     "asks for a different instance count.",
                     "The recorded peak (tier:fleetwatch_resize_peak_rps:max) against the plan's; the resize "
                     "reason in fleetwatch's report in fleet mode.",
                     "Apply the recommended count (the autoscaler receives this alert); re-plan if it recurs."),
            cases=(TestCase(((rec, fire[0]), (have, fire[1])), True), TestCase(((rec, hold[0]), (have, hold[1])), False)),
            extra_labels={"action": action}, for_=for_, op=op, th=4.0))
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


def alerts(config: Config) -> list[AlertSpec]:
    w = format_duration(config.window)
    out: list[AlertSpec] = []
    for tier in config.tiers.values():
        out += band_alerts(tier, w) + special_alerts(tier, w)
    if config.alert_labels:  # the config's static labels, on every alert (its own labels win)
        out = [replace(a, extra_labels={**config.alert_labels, **a.extra_labels}) for a in out]
    return out


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


def rule_groups(config: Config, for_: str, runbook_base: str, eval_interval: str | None = None
                ) -> list[dict[str, Any]]:
    interval = eval_interval or format_duration(config.interval)
    return [
        {"name": "fleetwatch-recording", "interval": interval, "rules": recording_rules(config.window, config.history)},
        {"name": "fleetwatch-alerts", "interval": interval,
         "rules": [a.rule(for_, runbook_base) for a in alerts(config)]},
    ]


def prometheus_rule(groups: list[dict[str, Any]], name: str = "fleetwatch") -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "fleetwatch",
                                                  "app.kubernetes.io/component": "rules"}},
            "spec": {"groups": groups}}


def promtool_tests(config: Config, for_: str, runbook_base: str, rule_file: str) -> dict[str, Any]:
    """One test per alert and case: the fire case expects exactly the rules that fire on it."""
    specs = alerts(config)
    interval = format_duration(config.interval)
    tests = []
    for spec in specs:
        wait = max(config.interval * 4, _seconds(spec.for_ or for_) + config.interval * 4)
        eval_time = format_duration(wait)
        samples = int(wait / config.interval) + 2  # every series spans the whole wait
        for case in spec.cases:
            expected = []
            for other in specs:  # the same alert name on the same inputs: every severity that fires
                if other.name == spec.name and other.tier == spec.tier and _fires(other, case, spec):
                    expected.append({"exp_labels": {"severity": other.severity, "tier": other.tier,
                                                    **other.extra_labels, **case.labels},
                                     "exp_annotations": _annotations(other, case, runbook_base)})
            tests.append({"interval": interval,
                          "input_series": [{"series": s, "values": f"{v.split('x')[0]}x{samples}"}
                                           for s, v in case.series],
                          "alert_rule_test": [{"eval_time": eval_time, "alertname": spec.name,
                                               "exp_alerts": expected}]})
    return {"rule_files": [rule_file], "evaluation_interval": interval, "tests": tests}


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
    v = float(returned[1].split("x")[0])
    out = template.replace(VALUE, _g(v)).replace("{{ $value }}", _g(v))
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
