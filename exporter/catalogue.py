"""The metric catalogue: every derived quantity, defined once.

Each row holds its key and unit, the 9.3 row it answers, its Python computation over a
TierWindow, the PromQL for the same quantity (``{w}`` is the window, e.g. ``5m``), its band,
and its diagnosis. The daemon, the rule generator and the dashboard generator read this module.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping

from . import inputs as I
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
class Row:
    key: str
    unit: str
    title: str  # the 9.3 (or 9.2) row it implements
    help: str
    compute: Callable[[TierWindow, Plan], Quantity]
    promql: str
    band: Callable[[Context], Band | None]
    diagnose: Callable[[Context, Status], str | None]
    inputs: tuple[str, ...] = ()  # the canonical engine inputs it reads (exporter/inputs.py)
    readings: int = 2  # readings of an instance it needs: two for rates and quantiles, one for a gauge


# ------------------------------------------------------------------ computations


def _ratio(tw: TierWindow, num: str, den: str, gauge: str | None, what: str) -> Quantity:
    n, d = tw.increase(num), tw.increase(den)
    if d is not None and d > 0 and n is not None:
        return Quantity(n / d, evidence(d), source="counters")
    if gauge is not None:
        means = tw.gauge_means(gauge)
        if means:
            return Quantity(sum(means.values()) / len(means), len(means), source="gauge")
    if d is None or n is None:
        return Quantity(None, reason=absent(tw, den, *((gauge,) if gauge else ())))
    return Quantity(None, 0, reason=f"no {what}: the {I.INPUTS[den].what} did not increase in the window")


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
    for field in _COMPUTE_SOURCES:  # the best source that every GPU of the tier has
        per_gpu = []
        for readings in series.values():
            vals = [getattr(g, field) for g in readings if getattr(g, field) is not None]
            if vals:
                per_gpu.append(sum(vals) / len(vals))
        if per_gpu and len(per_gpu) == len(series):
            return Quantity(sum(per_gpu) / len(per_gpu), len(per_gpu), source=field)
    return Quantity(None, reason="GPUs report no SM_ACTIVE, GR_ENGINE_ACTIVE or GPU_UTIL")


def spec_decode_acceptance(tw: TierWindow, plan: Plan) -> Quantity:
    return _ratio(tw, "spec_accepted_tokens", "spec_draft_tokens", "spec_acceptance_rate",
                  "speculative-decoding draft tokens")


def lora_cache_hit(tw: TierWindow, plan: Plan) -> Quantity:
    return Quantity(None, reason="vLLM and SGLang expose no adapter cache hit counter")


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


def _t(v: float, inclusive: bool = False) -> Threshold:
    return Threshold(v, inclusive)


def _slo_band(slo: Callable[[Plan], float], critical: bool) -> Callable[[Context], Band]:
    def band(ctx: Context) -> Band:
        s = slo(ctx.plan)
        return Band(target=f"within SLO ({s:g}s)", warning_above=_t(0.8 * s),
                    critical_above=_t(s) if critical else None)
    return band


def _fixed(band: Band) -> Callable[[Context], Band]:
    return lambda ctx: band


def _queue_band(ctx: Context) -> Band | None:
    rps = ctx.v("requests_per_second")
    if rps is None:
        return None
    limit = ctx.plan.slo.ttft_p99 * rps  # Little's Law: max safe queue = max wait x arrival rate
    # warn and page where 9.4 sets the circuit breaker: 80% and 90% of the limit
    return Band(target=f"near zero; Little's Law limit {limit:.3g} requests",
                warning_above=_t(BREAKER_RANGE[0] * limit, True), critical_above=_t(BREAKER_RANGE[1] * limit, True),
                ok_floor=1.0)


def _prefix_band(ctx: Context) -> Band | None:
    wl, pred = ctx.plan.workload, ctx.plan.benchmark.prefix_cache_hit_ratio
    floors = []
    if wl is not None and wl.prefix_reuse:
        floors.append(0.30)
    if pred is not None:
        floors.append(0.7 * pred)
    return Band(target="workload-dependent", warning_below=_t(max(floors)) if floors else None)


def _compute_band(ctx: Context) -> Band:
    rps = ctx.v("requests_per_second")
    serving = rps is not None and rps > 0
    # "< 60% while serving": an idle tier's low utilization is the fleet row's business, not this one's
    return Band("60-85% during active serving", warning_below=_t(0.60) if serving else None)


def _no_band(target: str) -> Callable[[Context], Band]:
    return lambda ctx: Band(target=target)


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
ENGINE_TARGETS = (f'group by (job, instance) (last_over_time({{__name__=~"{"|".join(I.INPUTS["requests_running"].all_names())}"}}'
            f"[{ENGINE_SEEN}]))")
INSTANCES_UP = "tier:fleetwatch_instances_up:sum"
INSTANCES = "tier:fleetwatch_instances:count"
RECOMMENDED = "tier:fleetwatch_recommended_instances:ceil"  # Step 11, recorded by the rules (render/rules.py)


def plan_series(key: str) -> str:
    return f"tier:fleetwatch_plan_{key}:max"


# the plan's figures, exported as fleetwatch_plan_<key>{tier} gauges for the rules and dashboards
PLAN_FIGURES: tuple[tuple[str, str, Callable[[Plan], float]], ...] = (
    ("instances", "Instances the plan decided (its fleet size).", lambda p: p.instances),
    ("gpus_per_instance", "GPUs per instance (TP degree).", lambda p: p.gpus_per_instance),
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


def fleet_series() -> dict[str, str]:
    """Recorded name -> PromQL of the plan and instance series, in the order they must be recorded."""
    out = {plan_series(k): f"max by ({_T}) (fleetwatch_plan_{k})" for k, _, _ in PLAN_FIGURES}
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


def _per_gpu(template: str) -> str:
    """``template`` (with ``{sel}`` where each DCGM selector goes) over the GPUs of each tier."""
    owned = template.replace("{sel}", _HAS_POD)
    unmapped = template.replace("{sel}", '{pod=""}')
    return (f"(({owned}) * on (namespace, pod) group_left ({_T}) {_ENGINE_PODS}"
            f" or (({unmapped}) unless on (instance) {PODDED_EXPORTERS}))")


def _dcgm(field: str) -> str:
    return f"avg_over_time(DCGM_FI_{field}{{sel}}[{{w}}])"


_FB_USED, _FB_FREE, _FB_RESERVED = _dcgm("DEV_FB_USED"), _dcgm("DEV_FB_FREE"), _dcgm("DEV_FB_RESERVED")
# FB_RESERVED is missing from older exporters: count it as 0 there, as fleetwatch does
GPU_MEMORY_PER_GPU = _per_gpu(f"{_FB_USED} / ({_FB_USED} + {_FB_FREE} + ({_FB_RESERVED} or {_FB_USED} * 0))")
GPU_COMPUTE_PER_GPU = _per_gpu(f"{_dcgm('PROF_SM_ACTIVE')} or {_dcgm('PROF_GR_ENGINE_ACTIVE')} or {_dcgm('DEV_GPU_UTIL')} / 100")

_FINISHED = I.rate("requests_finished")

ROWS: tuple[Row, ...] = (
    Row("requests_per_second", "requests/s", "Arrival rate",
        "Arrival rate: finished-request rate plus the growth of running+waiting requests.",
        requests_per_second,
        # finished rate + backlog growth; "or (finished * 0)" keeps tiers whose engine has no gauges
        f"{_sum(_FINISHED)} + ({_sum(I.delta('requests_running') + ' + ' + I.delta('requests_waiting'))} / {{ws}}"
        f" or {_sum(_FINISHED)} * 0)",
        _no_band("load"), _none, ("requests_finished", "requests_running", "requests_waiting")),
    Row("ttft_p50_seconds", "s", "TTFT P50", "Median time to first token over the tier.",
        _quantile("ttft_seconds", 0.50), _q(0.5, "ttft_seconds"),
        _slo_band(lambda p: p.slo.ttft_p99, critical=False), _ttft_diag, ("ttft_seconds",)),
    Row("ttft_p99_seconds", "s", "TTFT P99", "99th percentile time to first token over the tier.",
        _quantile("ttft_seconds", 0.99), _q(0.99, "ttft_seconds"),
        _slo_band(lambda p: p.slo.ttft_p99, critical=True), _ttft_diag, ("ttft_seconds",)),
    Row("itl_p50_seconds", "s", "ITL / TPOT P50", "Median inter-token latency over the tier.",
        _quantile("itl_seconds", 0.50), _q(0.5, "itl_seconds"),
        _slo_band(lambda p: p.slo.itl_p99, critical=False), _itl_diag, ("itl_seconds",)),
    Row("itl_p99_seconds", "s", "ITL / TPOT P99", "99th percentile inter-token latency over the tier.",
        _quantile("itl_seconds", 0.99), _q(0.99, "itl_seconds"),
        _slo_band(lambda p: p.slo.itl_p99, critical=True), _itl_diag, ("itl_seconds",)),
    Row("kv_cache_utilization_ratio", "ratio", "KV cache utilization", "Mean over instances of KV cache usage.",
        kv_cache_utilization, f"avg by ({_T}) ({I.avg_over_time('kv_cache_usage')})",
        _fixed(Band("75-90%", warning_above=_t(0.90), critical_above=_t(0.98, True))),
        _by_status("Near the ceiling: evaluate KV cache quantization or offloading before it becomes the bottleneck."),
        ("kv_cache_usage",), readings=1),
    Row("kv_cache_eviction_ratio", "ratio", "KV cache eviction rate",
        "Preemptions per finished request (SGLang: retractions).",
        kv_cache_eviction,
        f"{_sum(I.increase('preemptions'))} / {_sum(I.increase('requests_finished'))}",
        _fixed(Band("below 5%", warning_above=_t(0.05, True), critical_above=_t(0.20))),
        _by_status("KV budget undersized for current traffic.",
                   "Above 20%: degraded state presenting as a latency problem rather than a memory problem "
                   "(the memory pressure cascade)."),
        ("preemptions", "requests_finished")),
    Row("prefix_cache_hit_ratio", "ratio", "Prefix cache hit rate", "Prefix-cache hit tokens over queried tokens.",
        prefix_cache_hit,
        f"{_sum(I.rate('prefix_cache_hits'))} / {_sum(I.rate('prefix_cache_queries'))}"
        f" or {_rate_gauge('prefix_cache_hit_rate')}",
        _prefix_band,
        _by_status("Low on a workload with known prefix reuse: routing misconfiguration or cache too small."),
        ("prefix_cache_hits", "prefix_cache_queries", "prefix_cache_hit_rate")),
    Row("queue_depth_requests", "requests", "Queue depth", "Window mean of waiting requests, summed over the tier.",
        queue_depth, _sum(I.avg_over_time("requests_waiting")),
        _queue_band, _queue_diag, ("requests_waiting",), readings=1),
    Row("fleet_utilization_ratio", "ratio", "Fleet utilization",
        "Arrival rate over (instances up x usable RPS per instance from the plan).",
        fleet_utilization,
        f"tier:fleetwatch_requests_per_second:rate{{w}} / on ({_T}) ({INSTANCES_UP} * on ({_T}) "
        f"{plan_series('usable_rps_per_instance')})",
        _fixed(Band("60-80%", warning_below=_t(0.40), warning_above=_t(0.80), critical_above=_t(0.90))),
        _fleet_diag, ("requests_finished", "requests_running", "requests_waiting")),
    Row("gpu_memory_utilization_ratio", "ratio", "GPU memory utilization",
        "used / (free + used + reserved) of the tier's worst GPU.",
        gpu_memory_utilization, f"max by ({_T}) ({GPU_MEMORY_PER_GPU})",
        _fixed(Band("80-90%", warning_below=_t(0.70), warning_above=_t(0.90), critical_above=_t(0.95))),
        _memory_diag, readings=1),
    Row("gpu_compute_utilization_ratio", "ratio", "GPU compute utilization",
        "Mean over the tier's GPUs of SM_ACTIVE, else GR_ENGINE_ACTIVE, else GPU_UTIL/100.",
        gpu_compute_utilization, f"avg by ({_T}) ({GPU_COMPUTE_PER_GPU})",
        _compute_band, _compute_diag, readings=1),
    Row("spec_decode_acceptance_ratio", "ratio", "Speculative decoding acceptance rate",
        "Accepted draft tokens over proposed draft tokens.",
        spec_decode_acceptance,
        f"{_sum(I.rate('spec_accepted_tokens'))} / {_sum(I.rate('spec_draft_tokens'))}"
        # SGLang's rate gauge reads 0 while speculative decoding is off: only with drafts
        f" or avg by ({_T}) (avg_over_time(vllm:spec_decode_draft_acceptance_rate[{{w}}]) >= 0"
        f" or (avg_over_time(sglang:spec_accept_rate[{{w}}]) and avg_over_time(sglang:spec_accept_length[{{w}}]) > 0))",
        _fixed(Band("above 60%", warning_below=_t(0.60, True), critical_below=_t(0.50))),
        _by_status("Draft acceptance is marginal: the draft model matches current traffic poorly.",
                   "Below 50%: the draft model is poorly matched to current traffic; speculative decoding adds "
                   "overhead without benefit. Disable or retune it."),
        ("spec_accepted_tokens", "spec_draft_tokens", "spec_acceptance_rate")),
    Row("lora_adapter_cache_hit_ratio", "ratio", "Adapter cache hit rate",
        "Adapter cache hits over lookups, where the engine exposes it.",
        lora_cache_hit,
        "",  # no engine exposes it: no PromQL
        _fixed(Band("above 80% for stable traffic", warning_below=_t(0.80), critical_below=_t(0.60))),
        _by_status("Adapter variants compete for GPU memory.",
                   "Below 60%: too many simultaneous adapter variants; increase max_loras or reduce adapter rank."), readings=1),
    Row("lora_adapter_evictions_per_second", "1/s", "Adapter eviction rate",
        "Adapters leaving the running set while requests for them wait.",
        lora_evictions,
        "",  # needs set difference across scrapes: computed by fleetwatch, exported as a gauge
        _fixed(Band("near zero", warning_above=_t(0.01))),
        _by_status("Adapters are paged out and reloaded on demand, adding hidden latency: TTFT spikes on specific "
                   "tenants that do not respond to chunked prefill tuning.")),
    Row("tokens_per_gpu_hour", "tokens/GPU-hour", "Tokens/GPU-hour",
        "Generated tokens per GPU-hour of the instances that are up.",
        tokens_per_gpu_hour,
        f"{_sum(I.rate('generation_tokens'))} * 3600"
        f" / on ({_T}) ({INSTANCES_UP} * on ({_T}) {plan_series('gpus_per_instance')})",
        _no_band("maximize"), _tokens_diag, ("generation_tokens",)),
    Row("cost_per_million_tokens_usd", "USD/1M tokens", "Cost per million tokens",
        "Provisioned GPU cost per hour over generated tokens per hour, per million tokens.",
        cost_per_million_tokens,
        f"({plan_series('gpu_hour_cost_usd')} * on ({_T}) {plan_series('gpus_per_instance')} * on ({_T})"
        f" {INSTANCES}) / on ({_T}) ({_sum(I.rate('generation_tokens'))} * 3600) * 1e6",
        _no_band("minimize"), _none, ("generation_tokens",)),
)

# What each row's ``samples`` counts, in PromQL, for the Prometheus-backed mode: the same evidence
# the Python computation reports (requests, observations, instances or GPUs behind the value).
_FINISHED_N = _sum(I.increase("requests_finished"))
_TOKENS_N = _sum(I.increase("generation_tokens"))
EVIDENCE: Mapping[str, str] = {
    "requests_per_second": _FINISHED_N,
    **{f"{k}_{p}_seconds": _sum(I.count_increase(f"{k}_seconds")) for k in ("ttft", "itl") for p in ("p50", "p99")},
    "kv_cache_utilization_ratio": f"count by ({_T}) ({I.avg_over_time('kv_cache_usage')})",
    "kv_cache_eviction_ratio": _FINISHED_N,
    "prefix_cache_hit_ratio": f"{_sum(I.increase('prefix_cache_queries'))} or count by ({_T}) "
                              f"({I.avg_over_time('prefix_cache_hit_rate')} >= 0)",
    "queue_depth_requests": f"count by ({_T}) ({I.avg_over_time('requests_waiting')})",
    "fleet_utilization_ratio": _FINISHED_N,
    "gpu_memory_utilization_ratio": f"count by ({_T}) ({GPU_MEMORY_PER_GPU})",
    "gpu_compute_utilization_ratio": f"count by ({_T}) ({GPU_COMPUTE_PER_GPU})",
    "spec_decode_acceptance_ratio": _sum(I.increase("spec_draft_tokens")),
    "tokens_per_gpu_hour": _TOKENS_N,
    "cost_per_million_tokens_usd": _TOKENS_N,
}

ROW_KEYS: tuple[str, ...] = tuple(r.key for r in ROWS)
ROWS_BY_KEY: dict[str, Row] = {r.key: r for r in ROWS}


def written_out(promql: str, plan: Mapping[str, str] | None = None) -> str:
    """A row's PromQL with the series the rules record in front of it written out, for readers that
    have no rules loaded (dashboards, the Prometheus-backed mode): the recorded arrival rate, the
    instance series, and the plan series, as their PromQL or, given ``plan`` (key -> PromQL), as that."""
    promql = promql.replace("tier:fleetwatch_requests_per_second:rate{w}", f"({ROWS_BY_KEY['requests_per_second'].promql})")
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

