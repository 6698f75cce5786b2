"""Domain types shared by every stage: samples in, report out.

Everything here is a frozen dataclass so that a snapshot handed to the HTTP
thread can never change under it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum, StrEnum
from typing import Mapping


class Status(str, Enum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Histogram:
    """A cumulative histogram as exposed: (upper bound, cumulative count) pairs, sorted."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    def has_inf(self) -> bool:
        return bool(self.buckets) and math.isinf(self.buckets[-1][0])


@dataclass(frozen=True)
class GpuReading:
    """One GPU (or MIG instance) at one instant, from DCGM or NVML, in base units."""

    uuid: str
    index: str
    model: str
    mig_instance: str | None = None
    pod: str | None = None
    namespace: str | None = None
    hostname: str | None = None
    memory_used_bytes: float | None = None
    memory_free_bytes: float | None = None
    memory_reserved_bytes: float | None = None
    # compute utilisation on the 0-1 scale, one field per source so the report can say which
    sm_active: float | None = None
    gr_engine_active: float | None = None
    gpu_util: float | None = None
    up: bool = True

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.uuid, self.mig_instance)

    @property
    def memory_total_bytes(self) -> float | None:
        parts = [self.memory_used_bytes, self.memory_free_bytes]
        if any(p is None for p in parts):
            return None
        return sum(p for p in parts if p is not None) + (self.memory_reserved_bytes or 0.0)


@dataclass(frozen=True)
class LoraState:
    max_lora: int
    running: frozenset[str]
    waiting: frozenset[str]


@dataclass(frozen=True)
class EngineSample:
    """Canonical engine inputs parsed from one scrape of one instance.

    Counter and gauge keys are the canonical names listed in exporter/sources/__init__.py;
    values are already summed over the engine's own labels (engine, model_name, ...).
    """

    engine: str  # "vllm" | "sglang"
    counters: Mapping[str, float] = field(default_factory=dict)
    gauges: Mapping[str, float] = field(default_factory=dict)
    histograms: Mapping[str, Histogram] = field(default_factory=dict)
    lora: LoraState | None = None
    kv_capacity_tokens: float | None = None
    invalid: frozenset[str] = frozenset()  # canonical names whose samples were NaN, infinite or negative


@dataclass(frozen=True)
class InstanceSample:
    """Everything read from one target in one cycle."""

    tier: str
    instance: str
    timestamp: float
    engine: EngineSample | None  # None when the engine scrape failed
    gpus: tuple[GpuReading, ...] = ()
    error: str | None = None  # why the engine scrape failed, in words ("HTTP 404", "connection refused")
    gpu_error: str | None = None  # why the GPU source (dcgm-exporter) failed, when it did

    @property
    def up(self) -> bool:
        return self.engine is not None


@dataclass(frozen=True)
class Threshold:
    value: float
    inclusive: bool = False  # True: ">=" / "<=", False: ">" / "<"

    def above(self, v: float) -> bool:
        return v >= self.value if self.inclusive else v > self.value

    def below(self, v: float) -> bool:
        return v <= self.value if self.inclusive else v < self.value


@dataclass(frozen=True)
class Band:
    """Thresholds for one row on one tier. Any may be None (not defined for that row)."""

    target: str
    warning_above: Threshold | None = None
    critical_above: Threshold | None = None
    warning_below: Threshold | None = None
    critical_below: Threshold | None = None
    ok_floor: float | None = None  # values below this are ok whatever else says (queue < 1 request)

    def status(self, v: float | None) -> Status:
        if v is None or math.isnan(v):
            return Status.UNKNOWN
        if self.ok_floor is not None and v < self.ok_floor:
            return Status.OK
        if (self.critical_above and self.critical_above.above(v)) or (
            self.critical_below and self.critical_below.below(v)
        ):
            return Status.CRITICAL
        if (self.warning_above and self.warning_above.above(v)) or (
            self.warning_below and self.warning_below.below(v)
        ):
            return Status.WARNING
        return Status.OK

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"target": self.target}
        for name in ("warning_above", "critical_above", "warning_below", "critical_below"):
            t: Threshold | None = getattr(self, name)
            if t is not None:
                out[name] = t.value
        return out


@dataclass(frozen=True)
class MetricValue:
    key: str
    value: float | None
    unit: str
    status: Status
    band: Band | None
    diagnosis: str | None
    samples: int
    source: str | None
    reason: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "value": self.value,
            "unit": self.unit,
            "status": self.status.value,
            "band": self.band.as_dict() if self.band else None,
            "diagnosis": self.diagnosis,
            "samples": self.samples,
            "source": self.source,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PlanCheck:
    check: str
    observed: float | None
    predicted: float | None
    status: Status
    message: str

    def as_dict(self) -> dict[str, object]:
        return {
            "check": self.check,
            "observed": self.observed,
            "predicted": self.predicted,
            "status": self.status.value,
            "message": self.message,
        }


@dataclass(frozen=True)
class Finding:
    kind: str
    status: Status
    message: str
    instance: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "status": self.status.value, "message": self.message, "instance": self.instance}


class Action(StrEnum):
    """A tier's resize verdict. Its value is what reports, labels and alerts say."""

    SCALE_UP = "scale_up"
    RECHARACTERIZE = "recharacterize"
    SCALE_DOWN = "scale_down"
    HOLD = "hold"
    UNKNOWN = "unknown"  # nothing to decide on yet: no instance of the tier seen, or no arrival rate


@dataclass(frozen=True)
class Resize:
    current_instances: int
    recommended_instances: int | None
    action: Action
    reason: str
    peak_rps: float | None
    # why the verdict may still change with more data ("" where it rests on a full window): it is
    # reported and exported, never posted as an alert
    provisional: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "current_instances": self.current_instances,
            "recommended_instances": self.recommended_instances,
            "action": str(self.action),
            "reason": self.reason,
            "peak_rps": self.peak_rps,
            "provisional": self.provisional or None,
        }


@dataclass(frozen=True)
class TokenLengths:
    """Observed tokens per request: percentiles and how many requests they rest on."""

    p50: float | None
    p95: float | None
    p99: float | None
    samples: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ObservedWorkload:
    """The workload profile production measured: what the plan's was, observed."""

    input_tokens: TokenLengths
    output_tokens: TokenLengths
    finished_reasons: Mapping[str, float]  # reason -> share of the finished requests

    def as_dict(self) -> dict[str, object]:
        return {"input_tokens": self.input_tokens.as_dict(), "output_tokens": self.output_tokens.as_dict(),
                "finished_reasons": dict(self.finished_reasons)}


@dataclass(frozen=True)
class Guardrail:
    """A gateway setting the observed traffic calls for: a range, its middle, and what it rests on."""

    value: int | None
    low: int | None
    high: int | None
    basis: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class HistoryNote:
    """What the observed peak and the scale-down rest on. The optional keys appear only when set."""

    persisted: bool
    since: float | None
    points: int = 0
    covers_seconds: float = 0.0
    source: str | None = None  # "prometheus" when the history is read from it
    read: bool | None = None  # with source: whether Prometheus has answered yet
    state_dir: str | None = None
    note: str | None = None
    seeded: str | None = None  # the demo's simulated days

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"persisted": self.persisted}
        for key in ("source", "read"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["since"] = self.since
        for key in ("state_dir", "note", "seeded"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["points"], out["covers_seconds"] = self.points, self.covers_seconds
        return out


@dataclass(frozen=True)
class ScheduledBin:
    start: float
    profile_rps: float | None
    instances: int | None

    def as_dict(self) -> dict[str, object]:
        return {"from": self.start, "profile_rps": self.profile_rps, "instances": self.instances}


@dataclass(frozen=True)
class CapacitySchedule:
    """Predictive capacity: what the tier's learned load profile says must run now and ahead."""

    status: Status  # OK or UNKNOWN (with the reason)
    reason: str | None
    profile: str
    quantile: float
    bin_seconds: float
    history_seconds: float
    lead_seconds: float
    lead_source: str
    cold_start_p90_seconds: float | None
    min_warm_instances: int
    now: int | None
    ahead: Mapping[str, int | None]  # horizon ("15m", "1h") -> instances
    upcoming: tuple[ScheduledBin, ...]

    def as_dict(self) -> dict[str, object]:
        return {"profile": self.profile, "quantile": self.quantile, "bin_seconds": self.bin_seconds,
                "history_seconds": self.history_seconds, "lead_seconds": self.lead_seconds,
                "lead_source": self.lead_source, "cold_start_p90_seconds": self.cold_start_p90_seconds,
                "min_warm_instances": self.min_warm_instances, "status": self.status.value, "reason": self.reason,
                "now": self.now, "ahead": dict(self.ahead), "upcoming": [b.as_dict() for b in self.upcoming]}


@dataclass(frozen=True)
class IdleWindow:
    hour_utc: int
    mean_rps: float
    utilization: float
    idle_gpu_hours_per_day: float
    idle_cost_usd_per_day: float
    batch_fill_tokens: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class UtilizationLevers:
    """From the history: idle hours of the day, the time the tier could have run smaller, batch fill."""

    status: Status
    reason: str | None
    in_trap: bool | None = None
    mean_utilization: float | None = None
    idle_windows: tuple[IdleWindow, ...] = ()
    scale_down_share: float | None = None
    scale_down_savings_usd: float | None = None
    observed_hours: float | None = None
    scale_down_savings_usd_per_day: float | None = None
    batch_fill_tokens_per_day: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {"status": self.status.value, "reason": self.reason, "in_trap": self.in_trap,
                "mean_utilization": self.mean_utilization, "idle_windows": [w.as_dict() for w in self.idle_windows],
                "scale_down_share": self.scale_down_share, "scale_down_savings_usd": self.scale_down_savings_usd,
                "observed_hours": self.observed_hours,
                "scale_down_savings_usd_per_day": self.scale_down_savings_usd_per_day,
                "batch_fill_tokens_per_day": self.batch_fill_tokens_per_day}


@dataclass(frozen=True)
class TierReport:
    tier: str
    instances_up: int
    instances_total: int
    metrics: Mapping[str, MetricValue]
    plan_checks: tuple[PlanCheck, ...]
    resize: Resize
    workload: ObservedWorkload | None  # None when evaluating the tier failed
    findings: tuple[Finding, ...]
    guardrails: Mapping[str, Guardrail]  # max_input_tokens, max_output_tokens, circuit_breaker_queue_threshold
    error: str | None = None  # set when evaluating this tier raised; every row is then unknown
    history: HistoryNote | None = None  # what the observed peak rests on
    schedule: CapacitySchedule | None = None  # fleet mode only (exporter/schedule.py)
    utilization_levers: UtilizationLevers | None = None  # fleet mode only

    def statuses(self) -> list[Status]:
        return (
            [m.status for m in self.metrics.values()]
            + [c.status for c in self.plan_checks]
            + [f.status for f in self.findings]
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "instances": {"up": self.instances_up, "total": self.instances_total},
            "metrics": {k: v.as_dict() for k, v in self.metrics.items()},
            "plan_checks": [c.as_dict() for c in self.plan_checks],
            "resize": self.resize.as_dict(),
            "workload": self.workload.as_dict() if self.workload else {},
            "findings": [f.as_dict() for f in self.findings],
            "guardrails": {k: g.as_dict() for k, g in self.guardrails.items()},
            "error": self.error,
            "history": self.history.as_dict() if self.history else {},
            "schedule": self.schedule.as_dict() if self.schedule else {},
            "utilization_levers": self.utilization_levers.as_dict() if self.utilization_levers else {},
        }


@dataclass(frozen=True)
class Report:
    generated_at: float
    window_seconds: float
    tiers: Mapping[str, TierReport]

    @property
    def critical(self) -> bool:
        return any(s is Status.CRITICAL for t in self.tiers.values() for s in t.statuses())

    def as_dict(self) -> dict[str, object]:
        return {
            "generated_at": self.generated_at,
            "window_seconds": self.window_seconds,
            "critical": self.critical,
            "tiers": {name: t.as_dict() for name, t in self.tiers.items()},
        }


# ---------------------------------------------------------------- the plan and the config
# (built and validated by exporter/config.py; here so that pure modules need not import it)


@dataclass(frozen=True)
class Slo:
    ttft_p99: float
    itl_p99: float


@dataclass(frozen=True)
class CurvePoint:
    rps: float
    ttft_p99: float | None = None
    itl_p99: float | None = None
    gpu_utilization: float | None = None


@dataclass(frozen=True)
class Benchmark:
    usable_rps_per_instance: float
    ttft_p99: float
    itl_p99: float
    gpu_utilization: float
    curve: tuple[CurvePoint, ...] = ()
    prefix_cache_hit_ratio: float | None = None
    kv_cache_eviction_ratio: float | None = None


@dataclass(frozen=True)
class LengthProfile:
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


@dataclass(frozen=True)
class Workload:
    input_tokens: LengthProfile | None = None
    output_tokens: LengthProfile | None = None
    prefix_reuse: bool | None = None
    drift_tolerance: float = 0.25  # a length percentile moving more than this share is drift


@dataclass(frozen=True)
class Precision:
    weights: str | None = None
    kv_cache: str | None = None


@dataclass(frozen=True)
class Plan:
    gpus_per_instance: int
    instances: int
    gpu_hour_cost_usd: float
    peak_rps: float
    safety_factor: float
    slo: Slo
    benchmark: Benchmark
    workload: Workload | None = None
    precision: Precision | None = None
    scale_down_stabilization: float = 1800.0
    predicted_tokens_per_gpu_hour: float | None = None  # what `fleetwatch plan` expected at average load


@dataclass(frozen=True)
class GpuSelector:
    pod: str | None = None
    namespace: str | None = None  # with pod: the same pod name in two namespaces is two pods
    indices: tuple[str, ...] = ()
    uuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    name: str
    engine: str  # "vllm" | "sglang"
    url: str
    dcgm: str | None = None
    nvml: bool = False
    gpus: GpuSelector | None = None
    bearer_token_file: str | None = None
    dcgm_bearer_token_file: str | None = None  # dcgm-exporter behind its own auth proxy
    started_at: float | None = None  # the pod's start (Kubernetes discovery), for the cold start


@dataclass(frozen=True)
class BandOverride:
    warning_above: float | None = None
    critical_above: float | None = None
    warning_below: float | None = None
    critical_below: float | None = None


@dataclass(frozen=True)
class DnsDiscovery:
    """``tiers.<name>.discover.dns``: the tier's instances are the records of a (headless Service's) name."""

    name: str
    type: str = "A"  # "A" (A and AAAA: every address, at ``port``) | "SRV" (host and port from each record)
    port: int | None = None  # required with A
    nameserver: str | None = None  # host[:port]; default: the system's resolver


@dataclass(frozen=True)
class KubernetesDiscovery:
    """``discovery.kubernetes``: the instances are the endpoints of a Service's EndpointSlices, each pod's
    ``tier_label`` naming its tier. In the cluster, the API and credentials come from the service account."""

    namespace: str
    service: str
    tier_label: str
    port: str  # the EndpointSlice port's name, or its number
    api: str | None = None  # default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
    token_file: str | None = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_file: str | None = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    # the node-wide dcgm-exporter's Service: each instance reads its node's, its GPUs selected by pod
    dcgm_namespace: str | None = None
    dcgm_service: str | None = None
    dcgm_port: str | None = None


@dataclass(frozen=True)
class EndpointTemplate:
    """How a discovered address becomes a target: engine, URL path and scheme, credentials."""

    engine: str = "vllm"
    path: str = "/metrics"
    scheme: str = "http"
    bearer_token_file: str | None = None


@dataclass(frozen=True)
class ScheduleSettings:
    """``tiers.<name>.schedule``: how the tier's load profile is learned and how far ahead it is read (9.2)."""

    min_warm_instances: int = 1
    cold_start: float | None = None  # seconds; None: the measured P90, else exporter/schedule.py's default
    margin: float = 120.0
    quantile: float = 0.95
    bin: float = 3600.0
    warmup: float = 86400.0


@dataclass(frozen=True)
class TierConfig:
    name: str
    plan: Plan
    targets: tuple[Target, ...]
    bands: Mapping[str, BandOverride] = field(default_factory=dict)
    discover: DnsDiscovery | None = None  # set: ``targets`` are what the last lookup found
    endpoint: EndpointTemplate = EndpointTemplate()
    schedule: ScheduleSettings = ScheduleSettings()
    plan_file: str | None = None  # where the plan came from, when it is a file of its own


@dataclass(frozen=True)
class SidecarSettings:
    """Where a sidecar (serve --tier) finds its engine and GPUs: the config's ``sidecar:`` block,
    overridden by flags. None means "not said here"."""

    engine: str | None = None  # "vllm" | "sglang"
    url: str | None = None
    dcgm: str | None = None
    nvml: bool | None = None
    bearer_token_file: str | None = None
    dcgm_bearer_token_file: str | None = None


@dataclass(frozen=True)
class PrometheusSource:
    """``source: {prometheus: ...}``: read the fleet from a Prometheus-compatible HTTP API (Prometheus,
    Thanos, Mimir) instead of scraping it. TLS follows the config's tls_verify and ca_file."""

    url: str  # the API's base, e.g. http://prometheus:9090 (Mimir: .../prometheus)
    bearer_token_file: str | None = None
    instance_label: str = "instance"  # the label that tells a tier's instances apart (Kubernetes: pod)


# How long a condition must hold before its alert fires, per family of alerts and severity: latency pages
# sooner than capacity, a warning waits longer than a critical, and slow-moving workload drift longest.
# ``alerting.for`` overrides any of them; ``fleetwatch rules --for`` sets all of them but a scale-down's
# (tests, drills). A family has the severities its alerts use.
ALERT_FOR: Mapping[str, Mapping[str, float]] = {
    "latency": {"critical": 120.0, "warning": 600.0},
    "capacity": {"critical": 300.0, "warning": 900.0},
    "efficiency": {"critical": 900.0, "warning": 1800.0},
    "workload": {"critical": 600.0, "warning": 1800.0},
    "resize": {"critical": 300.0},  # a scale-down (warning) waits its tier's stabilization instead
    "targets": {"warning": 300.0},
    "self": {"critical": 120.0, "warning": 300.0},
}


@dataclass(frozen=True)
class Alerting:
    """``alerting:``: how long each family of alerts waits (``for``), and where runbook links point."""

    for_: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: ALERT_FOR)
    # the runbook's base URL in every alert's runbook_url (anchor: the alert's name in lower case); the
    # default is the runbook generated beside the rules: publish it and set its address here
    runbook_url: str = "runbook.md"

    def for_seconds(self, family: str, severity: str) -> float:
        return self.for_[family][severity]


class Mode(StrEnum):
    """How much of the fleet this process sees. Its value is what logs and metrics say."""

    FLEET = "fleet"  # every instance: this process computes the fleet verdicts
    SIDECAR = "sidecar"  # one instance (serve --tier): the fleet verdicts come from the generated rules


@dataclass(frozen=True)
class Config:
    path: str
    interval: float = 15.0
    window: float = 300.0
    listen: str = "0.0.0.0:9108"
    scrape_timeout: float = 5.0
    max_body_bytes: int = 16 * 1024 * 1024
    tls_verify: bool = True
    ca_file: str | None = None
    history: float = 7 * 86400.0
    alertmanagers: tuple[str, ...] = ()
    tiers: Mapping[str, TierConfig] = field(default_factory=dict)
    state_dir: str | None = None  # where the per-tier history survives restarts; None: memory only
    mode: Mode = Mode.FLEET
    sidecar: SidecarSettings = SidecarSettings()
    prometheus: PrometheusSource | None = None  # set: the fleet is read from this API, not scraped
    kubernetes: KubernetesDiscovery | None = None  # set: the tiers' targets come from EndpointSlices
    kubernetes_endpoint: EndpointTemplate = EndpointTemplate()
    # static labels on every alert, from the rules and from fleetwatch's own posts (kube-prometheus-stack's
    # Alertmanager routes and inhibits by namespace)
    alert_labels: Mapping[str, str] = field(default_factory=dict)
    # also emit metric names of the previous release (fleetwatch_counter_resets_total), for dashboards and
    # rules not yet moved; off by default, since those names fail promtool's lint
    deprecated_metric_names: bool = False
    alerting: Alerting = Alerting()

    @property
    def discovers(self) -> bool:
        return self.kubernetes is not None or any(t.discover is not None for t in self.tiers.values())

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0] or "0.0.0.0"

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def stale_after(self) -> float:
        """A report older than this is stale (/healthz, and the rules' FleetwatchCycleStale): three
        intervals and a scrape timeout, so one slow or skipped cycle is not an outage."""
        return 3 * self.interval + self.scrape_timeout
