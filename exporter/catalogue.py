"""The metric catalogue: every derived quantity, defined once.

A ``Row`` is the whole of one quantity: its key and unit, its Python computation over a
TierWindow, the PromQL for the same quantity (``{w}`` is the window, e.g. ``5m``) and for its
evidence, its band as data (``BandSpec``: thresholds that are constants or factors of a plan
figure), its diagnosis, and its alert's name and runbook text. The daemon, the Prometheus-backed
mode, the rule, runbook and dashboard generators all iterate ``ROWS``: a row added here gets its
value, its recording rule, its alerts, its runbook entries and its panel, and none of them keeps a
table of rows of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from . import engines as I
from .inputs import INPUTS
from .model import BandOverride, Plan
from .guardrails import BREAKER_RANGE
from .model import Band, Status, Threshold
from .window import Quantity, TierWindow, absent, evidence

Values = Mapping[str, Quantity]
Statuses = Mapping[str, Status]


@dataclass(frozen=True)
class Context:
    """What a band or a diagnosis may look at: the plan, every row's value, and their statuses."""

    plan: Plan
    values: Values
    statuses: Statuses
    ttft_rising: bool = False

    def v(self, key: str) -> float | None:
        q = self.values.get(key)
        return None if q is None else q.value


@dataclass(frozen=True)
class Limit:
    """One band threshold as data: ``factor``, times a plan figure if ``plan`` names one, times
    another row's current value if ``per`` names one (the queue's limit scales with the arrival
    rate). It does not apply while a figure it needs is unknown."""

    factor: float
    plan: str | None = None  # a key of PLAN_TERMS: one of the plan's figures
    per: str | None = None  # a row key
    inclusive: bool = False  # ">=" / "<=" rather than ">" / "<"

    def value(self, plan: Plan | None, values: Values, per_unit: bool = False) -> float | None:
        """``per_unit``: the coefficient of ``per`` (its value taken as 1), for readers that multiply
        by the row's series themselves (the rules)."""
        base = 1.0
        if self.plan is not None:
            figure = None if plan is None else PLAN_TERMS[self.plan](plan)
            if figure is None:
                return None
            base = figure
        if self.per is not None and not per_unit:
            q = values.get(self.per)
            if q is None or q.value is None:
                return None
            base = base * q.value
        return self.factor * base


Limits = tuple[Limit, ...]  # the largest that applies


@dataclass(frozen=True)
class BandSpec:
    """A row's band as data. ``target`` may name ``{ref}``, the value of ``reference`` (the line the
    factors scale, e.g. the SLO): while the reference is unknown, so is the band."""

    target: str
    warning_above: Limits = ()
    critical_above: Limits = ()
    warning_below: Limits = ()
    critical_below: Limits = ()
    reference: Limit | None = None
    reference_name: str = ""  # what the reference is, in words (alert summaries)
    reference_text: str = ""  # the same, with its value as ``{ref}`` (alert descriptions)
    ok_floor: float | None = None  # values below this are ok whatever else says (a queue under 1 request)
    while_serving: bool = False  # the lower thresholds apply only while the tier serves requests

    SIDES = ("warning_above", "critical_above", "warning_below", "critical_below")

    def limits(self) -> tuple[Limit, ...]:
        return tuple(lim for side in self.SIDES for lim in getattr(self, side))

    @property
    def static(self) -> bool:
        """The same on every tier: no plan figure, no other row, no serving condition."""
        refs = (*self.limits(), *((self.reference,) if self.reference else ()))
        return not self.while_serving and all(lim.plan is None and lim.per is None for lim in refs)

    def resolve(self, plan: Plan | None, values: Values, per_unit: bool = False) -> Band | None:
        """The band on one tier at one moment. ``per_unit``: thresholds that scale with another row
        are given per unit of it, and the serving condition is left to the reader (the rules)."""
        ref = None
        if self.reference is not None:
            ref = self.reference.value(plan, values, per_unit)
            if ref is None:
                return None
        serving = per_unit or _serving(values)
        sides: dict[str, Threshold] = {}
        for side in self.SIDES:
            if side.endswith("_below") and self.while_serving and not serving:
                continue
            candidates = [(v, lim.inclusive) for lim in getattr(self, side)
                          if (v := lim.value(plan, values, per_unit)) is not None]
            if candidates:
                v, inclusive = max(candidates)
                sides[side] = Threshold(v, inclusive)
        return Band(target=self.target.format(ref=ref) if ref is not None else self.target,
                    ok_floor=self.ok_floor, **sides)


def _serving(values: Values) -> bool:
    rps = values.get("requests_per_second")
    return rps is not None and rps.value is not None and rps.value > 0


def band(target: str, *, warning_above: float | None = None, critical_above: float | None = None,
         warning_below: float | None = None, critical_below: float | None = None,
         inclusive: tuple[str, ...] = (), **more: object) -> BandSpec:
    """A band of constant thresholds; ``inclusive`` names the sides compared with >= or <=."""
    given = {"warning_above": warning_above, "critical_above": critical_above,
             "warning_below": warning_below, "critical_below": critical_below}
    sides = {k: (Limit(v, inclusive=k in inclusive),) for k, v in given.items() if v is not None}
    return BandSpec(target, **sides, **more)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RowAlert:
    """The alerts a row's band raises: their names and their runbook text. ``name`` is the alert's
    stem; ``below`` and ``critical_above`` name the alerts of those sides where they differ."""

    name: str
    meaning: str
    check: str
    do: str
    below: str | None = None
    critical_above: str | None = None
    family: str = "capacity"  # of its upper thresholds (a key of model.ALERT_FOR); its lower ones are efficiency
    causes: tuple[str, ...] = ()  # the likely causes, most likely first (the runbook's)
    # the runbook of the alerts ``below`` and ``critical_above`` name, where it differs: (meaning, do, causes)
    sides: Mapping[str, tuple[str, str, tuple[str, ...]]] = field(default_factory=dict)

    def text(self, name: str) -> tuple[str, str, tuple[str, ...]]:
        """(meaning, do, causes) of the alert ``name`` (without the Fleetwatch prefix)."""
        return self.sides.get(name, (self.meaning, self.do, self.causes))

    def family_of(self, above: bool) -> str:
        return self.family if above else "efficiency"

    def alert_name(self, above: bool, severity: str) -> str:
        if not above and self.below:
            return self.below
        if above and severity == "critical" and self.critical_above:
            return self.critical_above
        return self.name


# Grafana's unit for each of the rows' units
GRAFANA_UNITS = {"s": "s", "ratio": "percentunit", "requests/s": "reqps", "requests": "short", "1/s": "short",
                 "tokens/GPU-hour": "short", "USD/1M tokens": "currencyUSD"}


@dataclass(frozen=True)
class Row:
    key: str
    unit: str  # a key of GRAFANA_UNITS
    title: str  # the monitoring table's name for it
    help: str
    compute: Callable[[TierWindow, Plan], Quantity]
    promql: str  # "" where only fleetwatch can compute it: the rules and panels read its exported gauge
    band: BandSpec
    diagnose: Callable[[Context, Status], str | None]
    inputs: tuple[str, ...] = ()  # the canonical engine inputs it reads (exporter/inputs.py)
    readings: int = 2  # readings of an instance it needs: two for rates and quantiles, one for a gauge
    op: str = "rate"  # the aggregation in its recording rule's name: tier:fleetwatch_<key>:<op><window>
    evidence: str = ""  # PromQL of what its ``samples`` counts, for the Prometheus-backed mode
    alert: RowAlert | None = None  # None: the band raises no alert (or the row has no thresholds)
    panel: bool = True  # False: no engine exposes it, and a panel that is always empty helps nobody

    @property
    def gauge_only(self) -> bool:
        """Only fleetwatch computes it: the rules and dashboards read fleetwatch_<key>{tier}."""
        return not self.promql

    @property
    def grafana_unit(self) -> str:
        return GRAFANA_UNITS[self.unit]


# ------------------------------------------------------------------ computations


def _ratio(tw: TierWindow, num: str, den: str, gauge: str | None, what: str) -> Quantity:
    n, d = tw.increase(num), tw.increase(den)
    if d is not None and d > 0 and n is not None:
        return Quantity(n / d, evidence(d), source="counters")
    if gauge is not None:
        means = tw.gauge_means(gauge)
        if means:
            return Quantity(sum(means.values()) / len(means), len(means), source="gauge")
    if d is None or n is None:  # say what is missing: the denominator, else the numerator
        return Quantity(None, reason=absent(tw, den if d is None else num, *((gauge,) if gauge else ())))
    return Quantity(None, 0, reason=f"no {what}: the {INPUTS[den].what} did not increase in the window")


def requests_per_second(tw: TierWindow, plan: Plan) -> Quantity:
    finished = tw.counter_increases("requests_finished")
    if not finished:
        return Quantity(None, reason=absent(tw, "requests_finished"))
    rate = sum(v / d for v, d in finished.values() if d > 0)
    backlog = tw.gauge_change_rate(("requests_running", "requests_waiting"))
    rate += sum(backlog.get(i, 0.0) for i in finished)
    return Quantity(max(rate, 0.0), evidence(sum(v for v, _ in finished.values())))


def _quantile(key: str, q: float) -> Callable[[TierWindow, Plan], Quantity]:
    return lambda tw, plan: tw.quantile(key, q)


def kv_cache_utilization(tw: TierWindow, plan: Plan) -> Quantity:
    means = tw.gauge_means("kv_cache_usage")
    if not means:
        return Quantity(None, reason=absent(tw, "kv_cache_usage"))
    return Quantity(sum(means.values()) / len(means), len(means))


def kv_cache_eviction(tw: TierWindow, plan: Plan) -> Quantity:
    return _ratio(tw, "preemptions", "requests_finished", None, "preemptions per finished request")


def prefix_cache_hit(tw: TierWindow, plan: Plan) -> Quantity:
    return _ratio(tw, "prefix_cache_hits", "prefix_cache_queries", "prefix_cache_hit_rate", "prefix cache queries")


def queue_depth(tw: TierWindow, plan: Plan) -> Quantity:
    means = tw.gauge_means("requests_waiting")
    if not means:
        return Quantity(None, reason=absent(tw, "requests_waiting"))
    return Quantity(sum(means.values()), len(means))


def fleet_utilization(tw: TierWindow, plan: Plan) -> Quantity:
    rps = requests_per_second(tw, plan)
    up = len(tw.up())
    if rps.value is None:
        return Quantity(None, reason=rps.reason)
    if up == 0:
        return Quantity(None, reason="no instance is up")
    return Quantity(rps.value / (up * plan.benchmark.usable_rps_per_instance), rps.samples)


def gpu_memory_utilization(tw: TierWindow, plan: Plan) -> Quantity:
    ratios = []
    series = tw.gpu_series()
    for readings in series.values():
        per = [used / total for g in readings
               if (used := g.memory_used_bytes) is not None and (total := g.memory_total_bytes)]
        if per:
            ratios.append(sum(per) / len(per))
    if not ratios:
        if not series:
            return Quantity(None, reason="no GPU readings (configure dcgm: or nvml: on the targets)")
        readings = [g for rs in series.values() for g in rs]
        missing = [f for f, attr in (("DCGM_FI_DEV_FB_USED", "memory_used_bytes"),
                                     ("DCGM_FI_DEV_FB_FREE", "memory_free_bytes"))
                   if all(getattr(g, attr) is None for g in readings)]
        return Quantity(None, reason=f"{len(series)} GPUs are read but report no framebuffer memory: missing "
                                     f"{' and '.join(missing) or 'usable FB values'} (add the field to "
                                     f"dcgm-exporter's counters CSV; NVML reports it without setup)")
    return Quantity(max(ratios), len(ratios), source="worst GPU")


_COMPUTE_SOURCES = ("sm_active", "gr_engine_active", "gpu_util")


def gpu_compute_utilization(tw: TierWindow, plan: Plan) -> Quantity:
    series = tw.gpu_series()
    if not series:
        return Quantity(None, reason="no GPU readings (configure dcgm: or nvml: on the targets)")
    for source in _COMPUTE_SOURCES:  # the best source that every GPU of the tier has
        per_gpu = []
        for readings in series.values():
            vals = [getattr(g, source) for g in readings if getattr(g, source) is not None]
            if vals:
                per_gpu.append(sum(vals) / len(vals))
        if per_gpu and len(per_gpu) == len(series):
            return Quantity(sum(per_gpu) / len(per_gpu), len(per_gpu), source=source)
    return Quantity(None, reason="GPUs report no SM_ACTIVE, GR_ENGINE_ACTIVE or GPU_UTIL")


def spec_decode_acceptance(tw: TierWindow, plan: Plan) -> Quantity:
    return _ratio(tw, "spec_accepted_tokens", "spec_draft_tokens", "spec_acceptance_rate",
                  "speculative-decoding draft tokens")


def lora_cache_hit(tw: TierWindow, plan: Plan) -> Quantity:
    return Quantity(None, reason="no engine exposes an adapter cache hit counter")


def lora_evictions(tw: TierWindow, plan: Plan) -> Quantity:
    return tw.lora_evictions()


def tokens_per_gpu_hour(tw: TierWindow, plan: Plan) -> Quantity:
    rate = tw.rate("generation_tokens")
    up = len(tw.up())
    if rate is None:
        return Quantity(None, reason=absent(tw, "generation_tokens"))
    if up == 0:
        return Quantity(None, reason="no instance is up")
    return Quantity(rate * 3600 / (up * plan.gpus_per_instance), evidence(tw.increase("generation_tokens")))


def cost_per_million_tokens(tw: TierWindow, plan: Plan) -> Quantity:
    rate = tw.rate("generation_tokens")
    if rate is None:
        return Quantity(None, reason=absent(tw, "generation_tokens"))
    if rate <= 0:
        return Quantity(None, 0, reason="no tokens generated in the window")
    per_hour = plan.gpu_hour_cost_usd * plan.gpus_per_instance * len(tw.instances)
    return Quantity(per_hour / (rate * 3600) * 1e6, evidence(tw.increase("generation_tokens")))


# ------------------------------------------------------------------ bands


def _slo_band(slo: str, critical: bool) -> BandSpec:
    return BandSpec("within SLO ({ref:g}s)", warning_above=(Limit(0.8, plan=slo),),
                    critical_above=(Limit(1.0, plan=slo),) if critical else (),
                    reference=Limit(1.0, plan=slo), reference_name="the SLO")


# Little's Law: the max safe queue is the max wait (the TTFT SLO) x the arrival rate; warn and page
# where the gateway circuit breaker goes, at 80% and 90% of it
_LITTLES_LAW = Limit(1.0, plan="slo_ttft_p99_seconds", per="requests_per_second")
_QUEUE_BAND = BandSpec(
    "near zero; Little's Law limit {ref:.3g} requests",
    warning_above=(replace(_LITTLES_LAW, factor=BREAKER_RANGE[0], inclusive=True),),
    critical_above=(replace(_LITTLES_LAW, factor=BREAKER_RANGE[1], inclusive=True),),
    reference=_LITTLES_LAW, reference_name="Little's Law's limit",
    reference_text="the max safe depth {ref:g}s TTFT SLO x arrival rate", ok_floor=1.0)

# a workload with known prefix reuse should hit at least 30%; a benchmark's prediction, 70% of it
_PREFIX_BAND = BandSpec("workload-dependent", warning_below=(Limit(0.30, plan="workload_prefix_reuse"),
                                                             Limit(0.7, plan="benchmark_prefix_cache_hit_ratio")))

# "< 60% while serving": an idle tier's low utilization is the fleet row's business, not this one's
_COMPUTE_BAND = band("60-85% during active serving", warning_below=0.60, while_serving=True)


# ------------------------------------------------------------------ diagnoses


def _bad(s: Status | None) -> bool:
    return s in (Status.WARNING, Status.CRITICAL)


def _ttft_diag(ctx: Context, status: Status) -> str | None:
    if not _bad(status):
        return None
    p50, p99 = ctx.statuses.get("ttft_p50_seconds"), ctx.statuses.get("ttft_p99_seconds")
    if _bad(p99) and not _bad(p50):
        return "P99 violating but P50 fine: queue depth or prefill interference is causing tail latency."
    if _bad(p99) and _bad(p50):
        return "P50 and P99 both violating: the fleet is undersized or the workload has shifted beyond the benchmark."
    return None


def _itl_diag(ctx: Context, status: Status) -> str | None:
    if not _bad(status):
        return None
    p50, p99 = ctx.statuses.get("itl_p50_seconds"), ctx.statuses.get("itl_p99_seconds")
    if _bad(p99) and not _bad(p50):
        return "P99 ITL spikes: prefill interference; try chunked prefill."
    if _bad(p99) and _bad(p50):
        return "ITL elevated at every percentile: decode batch too large or decode hardware undersized."
    return None


def _compute_diag(ctx: Context, status: Status) -> str | None:
    v = ctx.v("gpu_compute_utilization_ratio")
    if v is None:
        return None
    if v >= 0.95:
        if ctx.ttft_rising:
            return "Pegged at 100% with rising TTFT: prefill-bound and saturated; consider chunked prefill or P/D disaggregation."
        return "Pegged at 100% with stable TTFT: prefill-bound but healthy."
    if status is Status.WARNING:
        return "Low during active serving: batch size too small or decode-dominated; a batching improvement opportunity."
    return None


def _queue_diag(ctx: Context, status: Status) -> str | None:
    if _bad(status):
        q, rps = ctx.v("queue_depth_requests"), ctx.v("requests_per_second")
        past = q is not None and rps is not None and q >= ctx.plan.slo.ttft_p99 * rps
        return (f"Queue {'past' if past else 'growing toward'} the Little's Law limit: the fleet is undersized; "
                f"requests queue faster than they are served.")
    q, gpu = ctx.v("queue_depth_requests"), ctx.v("gpu_compute_utilization_ratio")
    if q is not None and q < 0.05 and gpu is not None and gpu < 0.4:
        return "Queue consistently zero at low GPU utilization: the fleet is oversized."
    return None


def _by_status(warning: str, critical: str | None = None) -> Callable[[Context, Status], str | None]:
    def diag(ctx: Context, status: Status) -> str | None:
        if status is Status.CRITICAL:
            return critical or warning
        if status is Status.WARNING:
            return warning
        return None
    return diag


def _fleet_diag(ctx: Context, status: Status) -> str | None:
    v = ctx.v("fleet_utilization_ratio")
    if v is None or status is Status.OK:
        return None
    if v < 0.40:
        return "Below 40%: the tier is in the utilization trap; cost per token is inflated by idle GPUs."
    if v > 0.90:
        return "Above 90%: no headroom for traffic spikes; size up or quantize to move the knee right."
    return "Between 80% and 90%: little headroom left for spikes."


def _memory_diag(ctx: Context, status: Status) -> str | None:
    v = ctx.v("gpu_memory_utilization_ratio")
    if v is None or status is Status.OK:
        return None
    if v < 0.70:
        return "Below 70%: over-provisioned on memory."
    if v > 0.95:
        return "Above 95%: OOM risk on traffic spikes."
    return "Above 90%: approaching the memory ceiling."


def _none(ctx: Context, status: Status) -> str | None:
    return None


def _tokens_diag(ctx: Context, status: Status) -> str | None:
    return ("The core efficiency metric: it reflects quantization, batching, KV cache efficiency and fleet "
            "utilization in one number. Flat or falling while traffic grows means something saturates.")


# ------------------------------------------------------------------ the rows

_T = "tier"  # every PromQL aggregates by the tier label that the scrape config attaches


def _sum(expr: str) -> str:
    return f"sum by ({_T}) ({expr})"


# Fleet-level series, recorded before the rows that read them. They come from the engines' own
# `up` and from the plan gauges alone, so they mean the same whether one fleet-mode fleetwatch or
# one sidecar per instance exports the plan (max: every sidecar of a tier exports the same plan).
# An engine target is one that exposed an engine series within ENGINE_SEEN: a target down longer
# than that is no longer counted as deployed.
ENGINE_SEEN = "1h"
ENGINE_TARGETS = (f'group by (job, instance) (last_over_time({{__name__=~"{"|".join(I.all_names("requests_running"))}"}}'
            f"[{ENGINE_SEEN}]))")
INSTANCES_UP = "tier:fleetwatch_instances_up:sum"
INSTANCES = "tier:fleetwatch_instances:count"
RECOMMENDED = "tier:fleetwatch_recommended_instances:ceil"  # Step 11, recorded by the rules (render/rules.py)


def plan_series(key: str) -> str:
    return f"tier:fleetwatch_plan_{key}:max"


# the plan's figures, exported as fleetwatch_plan_<key>{tier} gauges for the rules and dashboards
PLAN_FIGURES: tuple[tuple[str, str, Callable[[Plan], float]], ...] = (
    ("instances", "Instances the plan decided (its fleet size).", lambda p: p.instances),
    ("gpus_per_instance", "GPUs per instance (TP x PP).", lambda p: p.gpus_per_instance),
    ("gpu_hour_cost_usd", "Cost of one GPU-hour in USD.", lambda p: p.gpu_hour_cost_usd),
    ("peak_rps", "Planned peak arrival rate of the tier (its workload profile), requests per second.",
     lambda p: p.peak_rps),
    ("safety_factor", "Safety factor of the fleet size.", lambda p: p.safety_factor),
    ("usable_rps_per_instance", "Usable RPS per instance at SLO from the plan's benchmark.",
     lambda p: p.benchmark.usable_rps_per_instance),
    ("slo_ttft_p99_seconds", "TTFT P99 SLO.", lambda p: p.slo.ttft_p99),
    ("slo_itl_p99_seconds", "ITL P99 SLO.", lambda p: p.slo.itl_p99),
    ("benchmark_ttft_p99_seconds", "Benchmark TTFT P99 at the operating point.", lambda p: p.benchmark.ttft_p99),
    ("benchmark_itl_p99_seconds", "Benchmark ITL P99 at the operating point.", lambda p: p.benchmark.itl_p99),
    ("benchmark_gpu_utilization_ratio", "Benchmark GPU utilization at the operating point.",
     lambda p: p.benchmark.gpu_utilization),
)


# every plan figure a band may scale: the exported ones, and those only a band reads (None: not set)
PLAN_TERMS: dict[str, Callable[[Plan], float | None]] = {
    **{key: get for key, _, get in PLAN_FIGURES},
    "benchmark_prefix_cache_hit_ratio": lambda p: p.benchmark.prefix_cache_hit_ratio,
    "workload_prefix_reuse": lambda p: 1.0 if p.workload is not None and p.workload.prefix_reuse else None,
}


# Each row's band thresholds on each tier, as the rules compare them, exported by fleetwatch from its
# config: the rules read them instead of carrying numbers, so a plan or band change is a config change.
BAND_THRESHOLD = "fleetwatch_band_threshold"
THRESHOLDS = "tier:fleetwatch_band_threshold:max"
PREFIX = "Fleetwatch"  # every alert fleetwatch's rules raise is named Fleetwatch<stem>


def runbook_url(base: str, name: str) -> str:
    """The runbook entry of alert ``name`` under ``base`` (where runbook.md is published)."""
    return f"{base}#{name.lower()}"


SEVERITY_SIDES = (("warning", "above"), ("critical", "above"), ("warning", "below"), ("critical", "below"))


def rules_band(row: Row, plan: Plan, override: BandOverride | None) -> Band | None:
    """The row's band on a tier as the rules compare it: a threshold that scales with another row is
    given per unit of it (the rule multiplies it by that row's series)."""
    return apply_override(row.band.resolve(plan, {}, per_unit=True), override)


def band_thresholds(plan: Plan, bands: Mapping[str, BandOverride]) -> list[tuple[str, str, str, float]]:
    """(row key, severity, side, threshold) of every alerting row's band on a tier."""
    out = []
    for r in ROWS:
        band = rules_band(r, plan, bands.get(r.key))
        if r.alert is None or band is None:
            continue
        for severity, side in SEVERITY_SIDES:
            th: Threshold | None = getattr(band, f"{severity}_{side}")
            if th is not None:
                out.append((r.key, severity, side, th.value))
    return out


def inclusive(row: Row, severity: str, side: str) -> bool:
    """Whether the rule compares with >= / <=: as the row's band says (an override keeps it)."""
    return any(lim.inclusive for lim in getattr(row.band, f"{severity}_{side}"))


def threshold_series(key: str, severity: str, side: str, tier: str | None = None) -> str:
    where = "" if tier is None else f'{_T}="{tier}",'
    return f'{THRESHOLDS}{{{where}row="{key}",severity="{severity}",side="{side}"}}'


def fleet_series() -> dict[str, str]:
    """Recorded name -> PromQL of the plan and instance series, in the order they must be recorded."""
    out = {plan_series(k): f"max by ({_T}) (fleetwatch_plan_{k})" for k, _, _ in PLAN_FIGURES}
    out[THRESHOLDS] = f"max by ({_T}, row, severity, side) ({BAND_THRESHOLD})"
    out[INSTANCES_UP] = f"sum by ({_T}) (up and on (job, instance) {ENGINE_TARGETS})"
    out[INSTANCES] = f"count by ({_T}) (up and on (job, instance) {ENGINE_TARGETS})"
    return out


def _q(q: float, canonical: str) -> str:
    return f"histogram_quantile({q:g}, sum by ({_T}, le) ({I.bucket_rate(canonical)}))"


def _rate_gauge(canonical: str) -> str:
    """A rate gauge of engines without the counters, per tier; V0 reads -1 for "no data"."""
    return f"avg by ({_T}) ({I.avg_over_time(canonical)} >= 0)"


# The GPU rows select the GPUs fleetwatch selects. A node-wide dcgm-exporter labels each GPU with
# the pod that holds it: a GPU held by an engine pod belongs to that pod's tier (the engine series
# carry tier, namespace and pod), whatever the exporter's own tier label says, and GPUs of other
# pods or of no pod are left out, as a target's `gpus: {pod: ...}` selector leaves them out.
_HAS_POD = '{pod!=""}'
_ENGINE_PODS = f"group by (namespace, pod, {_T}) ({I.instant('requests_running', _HAS_POD)})"


# An exporter with no pod labels at all (no Kubernetes mapping: static configs) covers its node's
# GPUs, all of them, in the tier its scrape job gives it.
PODDED_EXPORTERS = 'group by (instance) ({__name__=~"DCGM_FI_.+", pod!=""})'


def per_gpu_promql(template: str) -> str:
    """``template`` (with ``{sel}`` where each DCGM selector goes) over the GPUs of each tier."""
    owned = template.replace("{sel}", _HAS_POD)
    unmapped = template.replace("{sel}", '{pod=""}')
    return (f"(({owned}) * on (namespace, pod) group_left ({_T}) {_ENGINE_PODS}"
            f" or (({unmapped}) unless on (instance) {PODDED_EXPORTERS}))")


def dcgm_field(field: str) -> str:
    """A DCGM field averaged over the window, with {sel} where its selector goes."""
    return f"avg_over_time(DCGM_FI_{field}{{sel}}[{{w}}])"


_FB_USED, _FB_FREE, _FB_RESERVED = dcgm_field("DEV_FB_USED"), dcgm_field("DEV_FB_FREE"), dcgm_field("DEV_FB_RESERVED")
# FB_RESERVED is missing from older exporters: count it as 0 there, as fleetwatch does
GPU_MEMORY_PER_GPU = per_gpu_promql(f"{_FB_USED} / ({_FB_USED} + {_FB_FREE} + ({_FB_RESERVED} or {_FB_USED} * 0))")
GPU_COMPUTE_PER_GPU = per_gpu_promql(f"{dcgm_field('PROF_SM_ACTIVE')} or {dcgm_field('PROF_GR_ENGINE_ACTIVE')}"
                                     f" or {dcgm_field('DEV_GPU_UTIL')} / 100")

_FINISHED = I.rate("requests_finished")

# What each row's ``samples`` counts, in PromQL, for the Prometheus-backed mode: the same evidence
# the Python computation reports (requests, observations, instances or GPUs behind the value).
_FINISHED_N = _sum(I.increase("requests_finished"))
_TOKENS_N = _sum(I.increase("generation_tokens"))


def _observations(canonical: str) -> str:
    return _sum(I.count_increase(canonical))


def _instances(canonical: str) -> str:
    return f"count by ({_T}) ({I.avg_over_time(canonical)})"


_TTFT_CHECK = ("Queue depth and fleet utilization of the tier; input length P95 against the plan.",
               "Scale the tier up if utilization is high; otherwise re-characterize the workload.")

ROWS: tuple[Row, ...] = (
    Row("requests_per_second", "requests/s", "Arrival rate",
        "Arrival rate: finished-request rate plus the growth of running+waiting requests.",
        requests_per_second,
        # finished rate + backlog growth; "or (finished * 0)" keeps tiers whose engine has no gauges
        f"{_sum(_FINISHED)} + ({_sum(I.delta('requests_running') + ' + ' + I.delta('requests_waiting'))} / {{ws}}"
        f" or {_sum(_FINISHED)} * 0)",
        BandSpec("load"), _none, ("requests_finished", "requests_running", "requests_waiting"),
        evidence=_FINISHED_N),
    Row("ttft_p50_seconds", "s", "TTFT P50", "Median time to first token over the tier.",
        _quantile("ttft_seconds", 0.50), _q(0.5, "ttft_seconds"),
        _slo_band("slo_ttft_p99_seconds", critical=False), _ttft_diag, ("ttft_seconds",),
        evidence=_observations("ttft_seconds"),
        alert=RowAlert("TTFTP50High", "Median time to first token is near the SLO: the fleet is undersized or the "
                       "workload shifted beyond the benchmark (P50 and P99 both violating).", *_TTFT_CHECK, family="latency",
                       causes=('Arrivals above what the deployed instances serve within the SLO '
                               '(queueing)',
                               "Prompts longer than the plan's workload profile (prefill takes longer)",
                               'Instances down or restarting, so the rest carry their load'))),
    Row("ttft_p99_seconds", "s", "TTFT P99", "99th percentile time to first token over the tier.",
        _quantile("ttft_seconds", 0.99), _q(0.99, "ttft_seconds"),
        _slo_band("slo_ttft_p99_seconds", critical=True), _ttft_diag, ("ttft_seconds",),
        evidence=_observations("ttft_seconds"),
        alert=RowAlert("TTFTP99High", "Tail time to first token violates or approaches the SLO. P99 bad with P50 "
                       "fine means queueing or prefill interference.",
                       "TTFT P50, queue depth, prefill share of steps, chunked prefill settings.",
                       "Enable or tune chunked prefill; scale up if the queue grows; shed load at the breaker.",
                       family="latency",
                       causes=('A queue building behind bursts of arrivals',
                               "Long prompts interfering with the others' prefill (no or large chunked "
                               'prefill)',
                               'One slow instance (a straggler or an instance of other hardware in the '
                               'pool)'))),
    Row("itl_p50_seconds", "s", "ITL / TPOT P50", "Median inter-token latency over the tier.",
        _quantile("itl_seconds", 0.50), _q(0.5, "itl_seconds"),
        _slo_band("slo_itl_p99_seconds", critical=False), _itl_diag, ("itl_seconds",),
        evidence=_observations("itl_seconds"),
        alert=RowAlert("ITLP50High", "Inter-token latency is elevated at the median: decode batch too large or "
                       "decode hardware undersized.", "Running batch size, KV cache usage, GPU compute utilization.",
                       "Lower max_num_seqs or scale the tier; consider P/D disaggregation.", family="latency",
                       causes=('Decode batches too large for the hardware (max_num_seqs high)',
                               'KV cache pressure: preemptions and recomputation',
                               'Fewer instances up than planned, so each decodes more sequences'))),
    Row("itl_p99_seconds", "s", "ITL / TPOT P99", "99th percentile inter-token latency over the tier.",
        _quantile("itl_seconds", 0.99), _q(0.99, "itl_seconds"),
        _slo_band("slo_itl_p99_seconds", critical=True), _itl_diag, ("itl_seconds",),
        evidence=_observations("itl_seconds"),
        alert=RowAlert("ITLP99High", "Inter-token latency spikes at P99: prefill interference.",
                       "Prefill tokens per step (max_num_batched_tokens), long prompts in the mix.",
                       "Try chunked prefill with a smaller token budget, or separate long-prompt traffic.", family="latency",
                       causes=('Prefill steps of long prompts stalling decode (max_num_batched_tokens '
                               'large)',
                               'A burst of long prompts in the mix',
                               'One instance far slower than the others'))),
    Row("kv_cache_utilization_ratio", "ratio", "KV cache utilization", "Mean over instances of KV cache usage.",
        kv_cache_utilization, f"avg by ({_T}) ({I.avg_over_time('kv_cache_usage')})",
        band("75-90%", warning_above=0.90, critical_above=0.98, inclusive=("critical_above",)),
        _by_status("Near the ceiling: evaluate KV cache quantization or offloading before it becomes the bottleneck."),
        ("kv_cache_usage",), readings=1, op="avg", evidence=_instances("kv_cache_usage"),
        alert=RowAlert("KVCacheUtilizationHigh", "KV cache near the ceiling: it becomes the bottleneck before compute "
                       "does.", "KV usage per instance, eviction ratio, input lengths.",
                       "Evaluate KV cache quantization or offloading; cap max_input_tokens at the gateway.",
                       causes=("Prompts or outputs longer than the plan's profile",
                               'More concurrent sequences per instance than planned (load above plan, '
                               'instances down)',
                               'A KV pool smaller than sized (gpu_memory_utilization lowered, a larger '
                               'model build)'))),
    Row("kv_cache_eviction_ratio", "ratio", "KV cache eviction rate",
        "Preemptions per finished request (SGLang: retractions).",
        kv_cache_eviction,
        f"{_sum(I.increase('preemptions'))} / {_sum(I.increase('requests_finished'))}",
        band("below 5%", warning_above=0.05, critical_above=0.20, inclusive=("warning_above",)),
        _by_status("KV budget undersized for current traffic.",
                   "Above 20%: preempted requests recompute their prompts, which needs more KV cache and preempts "
                   "others in turn: it presents as a latency problem rather than a memory one."),
        ("preemptions", "requests_finished"), op="increase", evidence=_FINISHED_N,
        alert=RowAlert("KVCacheEvictionHigh", "Requests are preempted for KV space: above 5% the KV budget is "
                       "undersized; above 20% preempted requests recompute their prompts and preempt others in turn, which "
                       "shows up as latency.",
                       "Preemptions per finished request, KV usage, prompt P95 against the plan.",
                       "Add KV capacity (instances, quantized KV, offload) or cap input length; re-characterize if "
                       "prompts grew.",
                       causes=('KV pool too small for the concurrent sequences (load or lengths above '
                               'plan)',
                               "Prompts that grew beyond the plan's profile",
                               'Instances down, raising the concurrency on the rest'))),
    Row("prefix_cache_hit_ratio", "ratio", "Prefix cache hit rate", "Prefix-cache hit tokens over queried tokens.",
        prefix_cache_hit,
        f"{_sum(I.rate('prefix_cache_hits'))} / {_sum(I.rate('prefix_cache_queries'))}"
        f" or {_rate_gauge('prefix_cache_hit_rate')}",
        _PREFIX_BAND,
        _by_status("Low on a workload with known prefix reuse: routing misconfiguration or cache too small."),
        ("prefix_cache_hits", "prefix_cache_queries", "prefix_cache_hit_rate"),
        evidence=f"{_sum(I.increase('prefix_cache_queries'))} or count by ({_T}) "
                 f"({I.avg_over_time('prefix_cache_hit_rate')} >= 0)",
        alert=RowAlert("PrefixCacheHitLow", "Low prefix cache hits on a workload with known prefix reuse: routing "
                       "misconfiguration or a cache too small.",
                       "Prefix-aware routing, cache size, whether the shared prefixes changed.",
                       "Fix routing (session or prefix affinity) or give the cache more room.",
                       causes=('Routing that ignores prefixes (round robin instead of session or prefix '
                               'affinity)',
                               'The shared prefixes changed (a new system prompt or template)',
                               'A prefix cache too small for the working set'))),
    Row("queue_depth_requests", "requests", "Queue depth", "Window mean of waiting requests, summed over the tier.",
        queue_depth, _sum(I.avg_over_time("requests_waiting")),
        _QUEUE_BAND, _queue_diag, ("requests_waiting",), readings=1, op="avg", evidence=_instances("requests_waiting"),
        alert=RowAlert("QueueDepthHigh", "The queue nears Little's Law's limit (max wait x arrival rate): requests "
                       "queue faster than they are served.",
                       "Arrival rate against the plan's peak, fleet utilization, instances up.",
                       "Scale up; make sure the gateway circuit breaker sheds load at 80-90% of the limit.",
                       causes=("Arrivals above the fleet's usable capacity (a peak above the plan's)",
                               'Instances down or not ready, shrinking capacity',
                               'Requests slower than planned (longer prompts or outputs), lowering '
                               'capacity per instance'))),
    Row("fleet_utilization_ratio", "ratio", "Fleet utilization",
        "Arrival rate over (instances up x usable RPS per instance from the plan).",
        fleet_utilization,
        f"tier:fleetwatch_requests_per_second:rate{{w}} / on ({_T}) ({INSTANCES_UP} * on ({_T}) "
        f"{plan_series('usable_rps_per_instance')})",
        band("60-80%", warning_below=0.40, warning_above=0.80, critical_above=0.90),
        _fleet_diag, ("requests_finished", "requests_running", "requests_waiting"), evidence=_FINISHED_N,
        alert=RowAlert("UtilizationHigh", "Load against usable capacity: below 40% is the utilization trap (idle "
                       "GPUs inflate cost per token); above 80% leaves little headroom; above 90% none.",
                       "Requests per second against the plan's peak and the instances up.",
                       "Below 40%: scale down or consolidate. Above 80-90%: scale up or quantize.",
                       below="UtilizationTrap", critical_above="NoHeadroom",
                       causes=("Load grew toward the plan's peak or past it",
                               'Instances down, so the rest run closer to their capacity',
                               "The benchmark's usable RPS per instance overstates what production gets"),
                       sides={"UtilizationHigh": ('Load above 80% of the usable capacity: little headroom is left for a '
                                   'burst or a lost instance.',
                                   'Plan a scale-up; check that the gateway breaker is set '
                                   '(FleetwatchQueueAboveCircuitBreaker).',
                                   ("Load grew toward the plan's peak or past it",
                                    'Instances down, so the rest run closer to their capacity',
                                    "The benchmark's usable RPS per instance overstates what production "
                                    'gets')),
                              "NoHeadroom": ('Load at 90% or more of the usable capacity: one more instance lost or'
                                   ' one more burst and requests queue past the SLO.',
                                   'Scale up now (the resize alerts give the count); shed load at the '
                                   'gateway breaker meanwhile.',
                                   ("Load at or past the fleet's usable capacity (a peak above the "
                                    "plan's)",
                                    'Instances down or evicted from their nodes',
                                    "Requests heavier than the benchmark's (the plan's per-instance "
                                    'capacity no longer holds)')),
                              "UtilizationTrap": ('Load below 40% of the usable capacity: most GPUs idle while they cost'
                                   ' as much as busy ones, so cost per token is high.',
                                   'Scale down toward the recommended count (FleetwatchScaleDown says '
                                   "when), consolidate tiers, or lower the plan's peak if it overstates "
                                   'the workload.',
                                   ('The fleet is sized for a peak that is not now (night, weekend): idle'
                                    ' GPUs cost per token',
                                    'Traffic moved to another tier or region',
                                    "The plan's peak or safety factor is larger than the workload needs"))})),
    Row("gpu_memory_utilization_ratio", "ratio", "GPU memory utilization",
        "used / (free + used + reserved) of the tier's worst GPU.",
        gpu_memory_utilization, f"max by ({_T}) ({GPU_MEMORY_PER_GPU})",
        band("80-90%", warning_below=0.70, warning_above=0.90, critical_above=0.95),
        _memory_diag, readings=1, op="avg", evidence=f"count by ({_T}) ({GPU_MEMORY_PER_GPU})",
        alert=RowAlert("GPUMemoryHigh", "GPU memory: below 70% is over-provisioned; above 90-95% risks OOM on "
                       "spikes.", "gpu_memory_utilization setting, weights and KV pool sizes.",
                       "Resize the KV pool or the model's footprint; pick a smaller GPU if far below.",
                       below="GPUMemoryLow",
                       causes=('gpu_memory_utilization set near 1.0, leaving no room for activation '
                               'spikes',
                               'A larger model build or more LoRA adapters than sized',
                               'Another process on the GPU (a second container, a stuck job)'),
                       sides={"GPUMemoryHigh": ('GPU memory above 90% used: a spike of activations or adapters can run'
                                   ' out of memory and crash the engine.',
                                   'Lower gpu_memory_utilization a little, shrink the KV pool or the '
                                   "model's footprint.",
                                   ('gpu_memory_utilization set near 1.0, leaving no room for activation '
                                    'spikes',
                                    'A larger model build or more LoRA adapters than sized',
                                    'Another process on the GPU (a second container, a stuck job)')),
                              "GPUMemoryLow": ('GPU memory below 70% used: the GPUs are larger than the model and its'
                                   ' KV pool need, or the pool is set small.',
                                   'Raise gpu_memory_utilization to give the KV pool the memory, or move '
                                   'to a smaller GPU.',
                                   ('gpu_memory_utilization set low, leaving the KV pool small and memory'
                                    ' idle',
                                    'A smaller model or quantized build on a GPU sized for a larger one',
                                    'The GPU is larger than the workload needs (a cheaper one would do)'))})),
    Row("gpu_compute_utilization_ratio", "ratio", "GPU compute utilization",
        "Mean over the tier's GPUs of SM_ACTIVE, else GR_ENGINE_ACTIVE, else GPU_UTIL/100.",
        gpu_compute_utilization, f"avg by ({_T}) ({GPU_COMPUTE_PER_GPU})",
        _COMPUTE_BAND, _compute_diag, readings=1, op="avg", evidence=f"count by ({_T}) ({GPU_COMPUTE_PER_GPU})",
        alert=RowAlert("GPUComputeLow", "Low compute during active serving: batches too small or the workload is "
                       "decode-dominated.", "Running batch size, max_num_seqs.",
                       "Raise batch size / concurrency; consider a cheaper tier for decode.",
                       causes=("Batches too small: max_num_seqs or the gateway's concurrency limit too "
                               'low',
                               'A decode-dominated workload (short prompts, long outputs) on '
                               'compute-heavy GPUs',
                               'Requests waiting elsewhere (the gateway, the tokenizer) rather than on '
                               'the GPU'))),
    Row("spec_decode_acceptance_ratio", "ratio", "Speculative decoding acceptance rate",
        "Accepted draft tokens over proposed draft tokens.",
        spec_decode_acceptance,
        f"{_sum(I.rate('spec_accepted_tokens'))} / {_sum(I.rate('spec_draft_tokens'))}"
        # engines with only a rate gauge: each engine says when its reading means something
        f" or avg by ({_T}) ({I.valid_gauge('spec_acceptance_rate')})",
        band("above 60%", warning_below=0.60, critical_below=0.50, inclusive=("warning_below",)),
        _by_status("Draft acceptance is marginal: the draft model matches current traffic poorly.",
                   "Below 50%: the draft model is poorly matched to current traffic; speculative decoding adds "
                   "overhead without benefit. Disable or retune it."),
        ("spec_accepted_tokens", "spec_draft_tokens", "spec_acceptance_rate"),
        evidence=_sum(I.increase("spec_draft_tokens")),
        alert=RowAlert("SpecDecodeAcceptanceLow", "The draft model matches current traffic poorly: below 50% "
                       "speculative decoding costs more than it saves.", "Acceptance by traffic type; draft model "
                       "version.", "Disable speculative decoding or retune the draft model.",
                       causes=('Traffic that differs from what the draft model was trained on',
                               'A draft model version that no longer matches the target model',
                               'Too many speculative tokens per step for this traffic'))),
    Row("lora_adapter_cache_hit_ratio", "ratio", "Adapter cache hit rate",
        "Adapter cache hits over lookups, where the engine exposes it.",
        lora_cache_hit,
        "",  # no engine exposes it: no PromQL
        band("above 80% for stable traffic", warning_below=0.80, critical_below=0.60),
        _by_status("Adapter variants compete for GPU memory.",
                   "Below 60%: too many simultaneous adapter variants; increase max_loras or reduce adapter rank."),
        readings=1, panel=False,
        alert=RowAlert("LoRAAdapterCacheHitLow", "Adapter variants compete for GPU memory.",
                       "Adapters per instance, max_loras, adapter ranks.",
                       "Increase max_loras or reduce adapter rank; route adapters to fewer instances.",
                       causes=('More distinct adapters in use than max_loras slots',
                               'Adapters spread over every instance instead of routed to a few',
                               'Large adapter ranks taking the memory of several slots'))),
    Row("lora_adapter_evictions_per_second", "1/s", "Adapter eviction rate",
        "Adapters leaving the running set while requests for them wait.",
        lora_evictions,
        "",  # needs set difference across scrapes: computed by fleetwatch, exported as a gauge
        band("near zero", warning_above=0.01),
        _by_status("Adapters are paged out and reloaded on demand, adding hidden latency: TTFT spikes on specific "
                   "tenants that do not respond to chunked prefill tuning."),
        alert=RowAlert("LoRAAdapterEvictions", "Adapters are paged out and reloaded on demand: TTFT spikes on "
                       "specific tenants.", "Running vs waiting adapters.",
                       "Increase max_loras or pin hot adapters to dedicated instances.",
                       causes=('More hot adapters than max_loras slots',
                               'Routing that sends each adapter to every instance',
                               'A burst of requests for rarely used adapters'))),
    Row("tokens_per_gpu_hour", "tokens/GPU-hour", "Tokens/GPU-hour",
        "Generated tokens per GPU-hour of the instances that are up.",
        tokens_per_gpu_hour,
        f"{_sum(I.rate('generation_tokens'))} * 3600"
        f" / on ({_T}) ({INSTANCES_UP} * on ({_T}) {plan_series('gpus_per_instance')})",
        BandSpec("maximize"), _tokens_diag, ("generation_tokens",), evidence=_TOKENS_N),
    Row("cost_per_million_tokens_usd", "USD/1M tokens", "Cost per million tokens",
        "Provisioned GPU cost per hour over generated tokens per hour, per million tokens.",
        cost_per_million_tokens,
        f"({plan_series('gpu_hour_cost_usd')} * on ({_T}) {plan_series('gpus_per_instance')} * on ({_T})"
        f" {INSTANCES}) / on ({_T}) ({_sum(I.rate('generation_tokens'))} * 3600) * 1e6",
        BandSpec("minimize"), _none, ("generation_tokens",), evidence=_TOKENS_N),
)


def row(key: str) -> Row:
    """The row of ``key``; looked up in ``ROWS`` at call time, so a row added there is found."""
    return next(r for r in ROWS if r.key == key)


def row_keys() -> tuple[str, ...]:
    return tuple(r.key for r in ROWS)


def written_out(promql: str, plan: Mapping[str, str] | None = None) -> str:
    """A row's PromQL with the series the rules record in front of it written out, for readers that
    have no rules loaded (dashboards, the Prometheus-backed mode): the recorded arrival rate, the
    instance series, and the plan series, as their PromQL or, given ``plan`` (key -> PromQL), as that."""
    promql = promql.replace("tier:fleetwatch_requests_per_second:rate{w}", f"({row('requests_per_second').promql})")
    for key, _, _ in PLAN_FIGURES:
        if plan is not None:
            promql = promql.replace(plan_series(key), plan[key])
    for name, expr in fleet_series().items():
        promql = promql.replace(name, f"({expr})")
    return promql


def apply_override(band: Band | None, override: BandOverride | None) -> Band | None:
    """A tier's ``bands:`` entry replaces the thresholds it names, keeping their inclusiveness."""
    if override is None:
        return band
    base = band or Band(target="overridden")
    changes: dict[str, Threshold] = {}
    for name in ("warning_above", "critical_above", "warning_below", "critical_below"):
        v = getattr(override, name)
        if v is not None:
            old: Threshold | None = getattr(base, name)
            changes[name] = Threshold(v, old.inclusive if old else False)
    return replace(base, **changes)  # type: ignore[arg-type]

