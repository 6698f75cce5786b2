"""YAML config -> frozen dataclasses, validated strictly.

Every error is a ConfigError whose text is one line: ``file: key.path: reason``.
Only ``yaml.safe_load`` is used.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(Exception):
    def __init__(self, file: str, path: str, reason: str) -> None:
        self.file, self.path, self.reason = file, path, reason
        super().__init__(f"{file}: {path}: {reason}" if path else f"{file}: {reason}")


_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """Prometheus-style duration ('15s', '5m', '1h30m', '250ms'; decimals allowed) -> seconds."""
    if not isinstance(text, str) or not _DURATION_RE.match(text.strip()):
        raise ValueError(f"expected a duration like 1.2s, got {text!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text.strip()))


def format_duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{int(round(seconds * 1000))}ms"


# ---------------------------------------------------------------- domain


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


@dataclass(frozen=True)
class GpuSelector:
    pod: str | None = None
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


@dataclass(frozen=True)
class BandOverride:
    warning_above: float | None = None
    critical_above: float | None = None
    warning_below: float | None = None
    critical_below: float | None = None


@dataclass(frozen=True)
class TierConfig:
    name: str
    plan: Plan
    targets: tuple[Target, ...]
    bands: Mapping[str, BandOverride] = field(default_factory=dict)


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

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0] or "0.0.0.0"

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


# ---------------------------------------------------------------- validation helpers


class _Ctx:
    """Carries the file name so every helper can raise a located error."""

    def __init__(self, file: str) -> None:
        self.file = file

    def err(self, path: str, reason: str) -> ConfigError:
        return ConfigError(self.file, path, reason)

    def mapping(self, value: Any, path: str, allowed: set[str], required: set[str] = set()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.err(path, f"expected a mapping, got {_kind(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.err(path, f"keys must be strings, got {k!r}")
            if k not in allowed:
                raise self.err(_join(path, k), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for k in sorted(required):
            if k not in value or value[k] is None:
                raise self.err(_join(path, k), "required key is missing")
        return value

    def number(self, value: Any, path: str, *, minimum: float | None = None, maximum: float | None = None,
               strict_min: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
            raise self.err(path, f"expected a number, got {value!r}")
        v = float(value)
        if minimum is not None and (v < minimum or (strict_min and v == minimum)):
            raise self.err(path, f"must be {'>' if strict_min else '>='} {minimum:g}, got {value!r}")
        if maximum is not None and v > maximum:
            raise self.err(path, f"must be <= {maximum:g}, got {value!r}")
        return v

    def integer(self, value: Any, path: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(path, f"expected a whole number, got {value!r}")
        if value < minimum:
            raise self.err(path, f"must be >= {minimum}, got {value!r}")
        return value

    def duration(self, value: Any, path: str, *, positive: bool = True) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise self.err(path, str(e)) from None
        if positive and seconds <= 0:
            raise self.err(path, f"must be longer than 0s, got {value!r}")
        return seconds

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.err(path, f"expected a non-empty string, got {value!r}")
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.err(path, f"expected true or false, got {value!r}")
        return value

    def url(self, value: Any, path: str) -> str:
        s = self.string(value, path)
        if not re.match(r"^https?://[^/\s]+", s):
            raise self.err(path, f"expected an http:// or https:// URL, got {s!r}")
        return s

    def optional(self, m: Mapping[str, Any], key: str, path: str, fn: Callable[[Any, str], T]) -> T | None:
        v = m.get(key)
        return None if v is None else fn(v, _join(path, key))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _kind(v: Any) -> str:
    names: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string"}
    return names.get(type(v), repr(v))


# ---------------------------------------------------------------- sections


def _slo(c: _Ctx, v: Any, path: str) -> Slo:
    m = c.mapping(v, path, {"ttft_p99", "itl_p99"}, {"ttft_p99", "itl_p99"})
    return Slo(c.duration(m["ttft_p99"], _join(path, "ttft_p99")), c.duration(m["itl_p99"], _join(path, "itl_p99")))


def _ratio(c: _Ctx) -> Callable[[Any, str], float]:
    return lambda v, p: c.number(v, p, minimum=0, maximum=1)


def _curve(c: _Ctx, v: Any, path: str) -> tuple[CurvePoint, ...]:
    if not isinstance(v, list) or not v:
        raise c.err(path, f"expected a non-empty list of points, got {_kind(v)}")
    points: list[CurvePoint] = []
    for i, raw in enumerate(v):
        p = _join(path, i)
        m = c.mapping(raw, p, {"rps", "ttft_p99", "itl_p99", "gpu_utilization"}, {"rps"})
        points.append(CurvePoint(
            rps=c.number(m["rps"], _join(p, "rps"), minimum=0),
            ttft_p99=c.optional(m, "ttft_p99", p, c.duration),
            itl_p99=c.optional(m, "itl_p99", p, c.duration),
            gpu_utilization=c.optional(m, "gpu_utilization", p, _ratio(c)),
        ))
    rps = [pt.rps for pt in points]
    if rps != sorted(rps) or len(set(rps)) != len(rps):
        raise c.err(path, "points must be listed in strictly increasing rps")
    return tuple(points)


def _benchmark(c: _Ctx, v: Any, path: str) -> Benchmark:
    req = {"usable_rps_per_instance", "ttft_p99", "itl_p99", "gpu_utilization"}
    m = c.mapping(v, path, req | {"curve", "prefix_cache_hit_ratio", "kv_cache_eviction_ratio"}, req)
    return Benchmark(
        usable_rps_per_instance=c.number(m["usable_rps_per_instance"], _join(path, "usable_rps_per_instance"),
                                         minimum=0, strict_min=True),
        ttft_p99=c.duration(m["ttft_p99"], _join(path, "ttft_p99")),
        itl_p99=c.duration(m["itl_p99"], _join(path, "itl_p99")),
        gpu_utilization=_ratio(c)(m["gpu_utilization"], _join(path, "gpu_utilization")),
        curve=c.optional(m, "curve", path, lambda x, p: _curve(c, x, p)) or (),
        prefix_cache_hit_ratio=c.optional(m, "prefix_cache_hit_ratio", path, _ratio(c)),
        kv_cache_eviction_ratio=c.optional(m, "kv_cache_eviction_ratio", path, _ratio(c)),
    )


def _lengths(c: _Ctx, v: Any, path: str) -> LengthProfile:
    m = c.mapping(v, path, {"p50", "p95", "p99"})
    pos = lambda x, p: c.number(x, p, minimum=0, strict_min=True)  # noqa: E731
    return LengthProfile(c.optional(m, "p50", path, pos), c.optional(m, "p95", path, pos), c.optional(m, "p99", path, pos))


def _workload(c: _Ctx, v: Any, path: str) -> Workload:
    m = c.mapping(v, path, {"input_tokens", "output_tokens", "prefix_reuse", "drift_tolerance"})
    tol = c.optional(m, "drift_tolerance", path, lambda x, p: c.number(x, p, minimum=0, strict_min=True))
    return Workload(
        input_tokens=c.optional(m, "input_tokens", path, lambda x, p: _lengths(c, x, p)),
        output_tokens=c.optional(m, "output_tokens", path, lambda x, p: _lengths(c, x, p)),
        prefix_reuse=c.optional(m, "prefix_reuse", path, c.boolean),
        drift_tolerance=tol if tol is not None else 0.25,
    )


def _precision(c: _Ctx, v: Any, path: str) -> Precision:
    m = c.mapping(v, path, {"weights", "kv_cache"})
    return Precision(c.optional(m, "weights", path, c.string), c.optional(m, "kv_cache", path, c.string))


_PLAN_REQUIRED = {"gpus_per_instance", "instances", "gpu_hour_cost_usd", "peak_rps", "safety_factor", "slo", "benchmark"}


def _plan(c: _Ctx, v: Any, path: str) -> Plan:
    m = c.mapping(v, path, _PLAN_REQUIRED | {"workload", "precision", "scale_down_stabilization"}, _PLAN_REQUIRED)
    return Plan(
        gpus_per_instance=c.integer(m["gpus_per_instance"], _join(path, "gpus_per_instance"), minimum=1),
        instances=c.integer(m["instances"], _join(path, "instances"), minimum=0),
        gpu_hour_cost_usd=c.number(m["gpu_hour_cost_usd"], _join(path, "gpu_hour_cost_usd"), minimum=0),
        peak_rps=c.number(m["peak_rps"], _join(path, "peak_rps"), minimum=0),
        safety_factor=c.number(m["safety_factor"], _join(path, "safety_factor"), minimum=0, maximum=10),
        slo=_slo(c, m["slo"], _join(path, "slo")),
        benchmark=_benchmark(c, m["benchmark"], _join(path, "benchmark")),
        workload=c.optional(m, "workload", path, lambda x, p: _workload(c, x, p)),
        precision=c.optional(m, "precision", path, lambda x, p: _precision(c, x, p)),
        scale_down_stabilization=c.optional(m, "scale_down_stabilization", path, c.duration) or 1800.0,
    )


def _selector(c: _Ctx, v: Any, path: str) -> GpuSelector:
    m = c.mapping(v, path, {"pod", "indices", "uuids"})

    def strings(x: Any, p: str) -> tuple[str, ...]:
        if not isinstance(x, list):
            raise c.err(p, f"expected a list, got {_kind(x)}")
        return tuple(str(i) for i in x)

    return GpuSelector(
        pod=c.optional(m, "pod", path, c.string),
        indices=c.optional(m, "indices", path, strings) or (),
        uuids=c.optional(m, "uuids", path, strings) or (),
    )


def _target(c: _Ctx, v: Any, path: str, base: Path) -> Target:
    m = c.mapping(v, path, {"name", "vllm", "sglang", "dcgm", "nvml", "gpus", "bearer_token_file"})
    engines = [k for k in ("vllm", "sglang") if m.get(k) is not None]
    if len(engines) != 1:
        raise c.err(path, "each target needs exactly one of vllm: or sglang: (the engine's /metrics URL)")
    engine = engines[0]
    url = c.url(m[engine], _join(path, engine))
    token = c.optional(m, "bearer_token_file", path, c.string)
    if token is not None:
        token = str((base / token).resolve()) if not os.path.isabs(token) else token
    return Target(
        name=c.optional(m, "name", path, c.string) or _default_name(url),
        engine=engine,
        url=url,
        dcgm=c.optional(m, "dcgm", path, c.url),
        nvml=bool(c.optional(m, "nvml", path, c.boolean)),
        gpus=c.optional(m, "gpus", path, lambda x, p: _selector(c, x, p)),
        bearer_token_file=token,
    )


def _default_name(url: str) -> str:
    return re.sub(r"^https?://", "", url).split("/", 1)[0]


_BAND_KEYS = {"warning_above", "critical_above", "warning_below", "critical_below"}


def _bands(c: _Ctx, v: Any, path: str, known_rows: set[str]) -> dict[str, BandOverride]:
    m = c.mapping(v, path, known_rows)
    out: dict[str, BandOverride] = {}
    for row, raw in m.items():
        p = _join(path, row)
        b = c.mapping(raw, p, _BAND_KEYS)
        out[row] = BandOverride(**{k: c.number(b[k], _join(p, k)) for k in b if b[k] is not None})
    return out


def _load_yaml(file: str) -> Any:
    try:
        with open(file, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except OSError as e:
        raise ConfigError(file, "", f"cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(file, where, f"invalid YAML: {problem}") from None


_TOP = {"interval", "window", "listen", "scrape_timeout", "max_body_bytes", "tls_verify", "ca_file",
        "history", "alertmanagers", "tiers"}


def load_config(file: str, *, known_rows: set[str] | None = None) -> Config:
    """Read and validate a fleet config. Raises ConfigError with a one-line message."""
    if known_rows is None:
        from .catalogue import ROW_KEYS  # late import: the catalogue is the source of row names

        known_rows = set(ROW_KEYS)
    c = _Ctx(file)
    raw = _load_yaml(file)
    if raw is None:
        raise c.err("", "the file is empty")
    m = c.mapping(raw, "", _TOP, {"tiers"})
    base = Path(file).resolve().parent
    interval = c.optional(m, "interval", "", c.duration) or 15.0
    window = c.optional(m, "window", "", c.duration) or 300.0
    timeout = c.optional(m, "scrape_timeout", "", c.duration) or min(5.0, interval * 0.8)
    if timeout >= interval:
        raise c.err("scrape_timeout", f"must be shorter than interval ({format_duration(interval)})")
    listen = c.optional(m, "listen", "", c.string) or "0.0.0.0:9108"
    if not re.match(r"^[^\s]*:\d{1,5}$", listen):
        raise c.err("listen", f"expected host:port, got {listen!r}")
    ams = m.get("alertmanagers") or []
    if not isinstance(ams, list):
        raise c.err("alertmanagers", f"expected a list of URLs, got {_kind(ams)}")
    tiers_raw = m["tiers"]
    if not isinstance(tiers_raw, dict) or not tiers_raw:
        raise c.err("tiers", "expected a non-empty mapping of tier name to tier")
    tiers: dict[str, TierConfig] = {}
    for name, traw in tiers_raw.items():
        p = _join("tiers", str(name))
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]+$", name):
            raise c.err(p, "tier names may use letters, digits, '_', '.' and '-' only")
        t = c.mapping(traw, p, {"plan", "targets", "bands"}, {"plan", "targets"})
        plan_raw, plan_ctx, plan_path = t["plan"], c, _join(p, "plan")
        if isinstance(plan_raw, str):  # a path to a plan file, relative to this config
            plan_file = str((base / plan_raw).resolve()) if not os.path.isabs(plan_raw) else plan_raw
            plan_ctx, plan_path = _Ctx(plan_file), ""
            plan_raw = _load_yaml(plan_file)
        targets_raw = t["targets"]
        if not isinstance(targets_raw, list) or not targets_raw:
            raise c.err(_join(p, "targets"), "expected a non-empty list of targets")
        targets = tuple(_target(c, tr, _join(_join(p, "targets"), i), base) for i, tr in enumerate(targets_raw))
        names = [tg.name for tg in targets]
        if len(set(names)) != len(names):
            raise c.err(_join(p, "targets"), "target names must be unique within a tier (set name:)")
        tiers[name] = TierConfig(
            name=name,
            plan=_plan(plan_ctx, plan_raw, plan_path),
            targets=targets,
            bands=c.optional(t, "bands", p, lambda x, pp: _bands(c, x, pp, known_rows)) or {},
        )
    return Config(
        path=file,
        interval=interval,
        window=window,
        listen=listen,
        scrape_timeout=timeout,
        max_body_bytes=int(c.optional(m, "max_body_bytes", "", lambda v, p: c.integer(v, p, minimum=1024)) or 16 << 20),
        tls_verify=True if m.get("tls_verify") is None else c.boolean(m["tls_verify"], "tls_verify"),
        ca_file=c.optional(m, "ca_file", "", c.string),
        history=c.optional(m, "history", "", c.duration) or 7 * 86400.0,
        alertmanagers=tuple(c.url(u, _join("alertmanagers", i)) for i, u in enumerate(ams)),
        tiers=tiers,
    )
