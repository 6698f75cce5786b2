"""YAML config -> the frozen dataclasses of exporter.model, validated strictly.

Every error is a ConfigError whose text is one line: ``file: key.path: reason``. The YAML is
read with a SafeLoader that also refuses what safe_load lets through: duplicate keys, deep
nesting and aliases that expand without bound. A file is size-checked before it is parsed, and
no message echoes more than a short prefix of a value.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import MISSING, fields
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Callable, Mapping, TypeVar

import yaml

from .engines import engine_names, in_words
from .files import ConfigError, read_text
from .secrets import REDACT, redact_url
from .model import (ALERT_FOR, Alerting, BandOverride, Benchmark, Config, CurvePoint, DnsDiscovery, EndpointTemplate, GpuSelector,
                    KubernetesDiscovery, LengthProfile, Plan, Precision, PrometheusSource, ScheduleSettings, SidecarSettings, Slo,
                    Target, TierConfig, Workload)

__all__ = ["ConfigError", "Reader", "default_name", "exact_duration", "format_duration", "load_config", "load_yaml",
           "parse_duration", "require_targets", "validate_listen"]

T = TypeVar("T")


def _default(cls: type, name: str) -> Any:
    """A field's default as its dataclass in exporter/model.py declares it: each default is written once."""
    (f,) = [f for f in fields(cls) if f.name == name]
    assert f.default is not MISSING, f"{cls.__name__}.{name} has no default"
    return f.default

MAX_FILE_BYTES = 1 << 20  # a config for a thousand targets is a few hundred kB
MAX_DEPTH = 32  # the deepest real config nests 7 levels
MAX_NODES = 100_000  # YAML nodes after aliases are expanded (a "billion laughs" file has 1e9)
MAX_SHOWN = 80  # characters of a value an error message may echo
MAX_NUMBER = 1e15  # no figure of a plan or a config is larger (costs, rates, token counts)
MAX_COUNT = 1_000_000_000  # instances, GPUs, ports, sizes: a whole number past this is a mistake
MAX_RPS = 1e9  # a tier's arrival rate or an instance's capacity, in requests a second
MIN_CAPACITY = 1e-6  # requests a second an instance serves, at least (one in 11 days): below, counts overflow
# upper bounds that keep every duration a number the scheduler and the clock can use
MAX_DURATION = 366 * 86400.0
MAX_INTERVAL = 3600.0
CYCLE_SHARE = 0.8  # scrape_timeout may use at most this share of interval; the rest is evaluation




_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """Prometheus-style duration ('15s', '5m', '1h30m', '250ms'; decimals allowed) -> seconds."""
    if not isinstance(text, str) or len(text) > 40 or not _DURATION_RE.match(text.strip()):
        raise ValueError(f"expected a duration like 1.2s, got {show(text)}")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text.strip()))
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError(f"must be at most 366d, got {show(text)}")
    return seconds


def show(value: Any) -> str:
    """A value for an error message: never more than MAX_SHOWN characters, and never the repr
    of a whole structure (an alias bomb's repr is gigabytes)."""
    if isinstance(value, str):
        return repr(value[:MAX_SHOWN]) + ("..." if len(value) > MAX_SHOWN else "")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** MAX_SHOWN:
        return f"a {len(str(abs(value)))}-digit number"
    if isinstance(value, (bool, int, float)) or value is None:
        text = repr(value)
        return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."
    return _kind(value)


def validate_listen(listen: str) -> str | None:
    """None when ``listen`` is a usable host:port, else why not."""
    m = re.match(r"^([^\s]*):(\d{1,5})$", listen)
    if not m:
        return f"expected host:port, got {show(listen)}"
    if int(m.group(2)) > 65535:
        return f"port must be 0-65535, got {m.group(2)}"
    return None


def format_duration(seconds: float) -> str:
    """As Prometheus writes a duration, in the largest unit that divides it: 7d, 1h, 5m, 15s, 250ms."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{int(round(seconds * 1000))}ms"


def exact_duration(seconds: float) -> str:
    """A duration for a file the config reads back, without rounding: 2s, 46.6ms."""
    if seconds >= 1 and abs(seconds - round(seconds)) < 1e-9:
        return f"{round(seconds)}s"
    return f"{seconds * 1000:.6g}ms"


# ---------------------------------------------------------------- validation helpers


class Reader:
    """Carries the file name so every helper can raise a located error."""

    def __init__(self, file: str) -> None:
        self.file = file

    def err(self, path: str, reason: str) -> ConfigError:
        return ConfigError(self.file, path, reason)

    def mapping(self, value: Any, path: str, allowed: set[str], required: frozenset[str] | set[str] = frozenset()
                ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.err(path, f"expected a mapping, got {_kind(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.err(path, f"keys must be strings, got {show(k)}")
            if k not in allowed:
                raise self.err(_join(path, k), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for k in sorted(required):
            if k not in value or value[k] is None:
                raise self.err(_join(path, k), "required key is missing")
        return value

    def number(self, value: Any, path: str, *, minimum: float | None = None, maximum: float | None = None,
               strict_min: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or (isinstance(value, float) and not math.isfinite(value)):
            if isinstance(value, float):
                raise self.err(path, f"expected a finite number, got {show(value)}")
            if isinstance(value, str) and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value.strip()):
                # YAML 1.1 reads an exponent without a decimal point as text, not a number
                raise self.err(path, f"expected a number, got the text {show(value)} (write it with a decimal "
                                     f"point, as in 1.0e-3)")
            raise self.err(path, f"expected a number, got {show(value)}")
        if abs(value) > MAX_NUMBER:  # range-checked before any arithmetic: 10**400 would overflow float()
            raise self.err(path, f"must be at most {MAX_NUMBER:.0e} in size, got {show(value)}")
        v = float(value)
        if minimum is not None and (v < minimum or (strict_min and v == minimum)):
            raise self.err(path, f"must be {'more than' if strict_min else 'at least'} {minimum:g}, got {show(value)}")
        if maximum is not None and v > maximum:
            raise self.err(path, f"must be at most {maximum:g}, got {show(value)}")
        return v

    def integer(self, value: Any, path: str, *, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(path, f"expected a whole number, got {show(value)}")
        if value < minimum:
            raise self.err(path, f"must be at least {minimum}, got {show(value)}")
        if value > maximum:
            raise self.err(path, f"must be at most {maximum:,}, got {show(value)}")
        return value

    def duration(self, value: Any, path: str, *, positive: bool = True, maximum: float = MAX_DURATION) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise self.err(path, str(e)) from None
        if positive and seconds <= 0:
            raise self.err(path, f"must be longer than 0s, got {show(value)}")
        if seconds > maximum:
            raise self.err(path, f"must be at most {format_duration(maximum)}, got {show(value)}")
        return seconds

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.err(path, f"expected a non-empty string, got {show(value)}")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):  # one line: names, paths and URLs reach logs
            raise self.err(path, "holds a line break or another control character")
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.err(path, f"expected true or false, got {show(value)}")
        return value

    def url(self, value: Any, path: str) -> str:
        """An http(s) URL, parsed once here: a scheme, a host, a valid port, no spaces. A password is
        never echoed: every message shows the URL redacted."""
        s = self.string(value, path)
        shown = show(redact_url(s))
        if not re.match(r"^https?://[^/\s]+", s):
            # not a URL, so no userinfo to cut: whatever precedes an @ may be a password
            raise self.err(path, f"expected an http:// or https:// URL, got {show(re.sub(r'^[^@]*@', '***@', s))}")
        if any(ch.isspace() for ch in s):
            raise self.err(path, f"a URL holds no spaces (write %20), got {shown}")
        try:
            parts = urlsplit(s)
        except ValueError:  # an unbalanced [ of an IPv6 address
            raise self.err(path, f"not a valid URL (an IPv6 host is written [::1]), got {shown}") from None
        if parts.netloc.count("@") > 1:
            raise self.err(path, f"an '@' in the user or password must be written %40, got {shown}")
        try:
            port = parts.port
        except ValueError:
            raise self.err(path, f"the port must be a number 1-65535, got {shown}") from None
        if not parts.hostname or port == 0:
            raise self.err(path, f"expected a host{' and a port 1-65535' if port == 0 else ''}, got {shown}")
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


def _slo(c: Reader, v: Any, path: str) -> Slo:
    m = c.mapping(v, path, {"ttft_p99", "itl_p99"}, {"ttft_p99", "itl_p99"})
    return Slo(c.duration(m["ttft_p99"], _join(path, "ttft_p99")), c.duration(m["itl_p99"], _join(path, "itl_p99")))


def _ratio(c: Reader) -> Callable[[Any, str], float]:
    return lambda v, p: c.number(v, p, minimum=0, maximum=1)


def _curve(c: Reader, v: Any, path: str) -> tuple[CurvePoint, ...]:
    if not isinstance(v, list) or not v:
        raise c.err(path, f"expected a non-empty list of points, got {_kind(v)}")
    points: list[CurvePoint] = []
    for i, raw in enumerate(v):
        p = _join(path, i)
        m = c.mapping(raw, p, {"rps", "ttft_p99", "itl_p99", "gpu_utilization"}, {"rps"})
        points.append(CurvePoint(
            rps=c.number(m["rps"], _join(p, "rps"), minimum=0, maximum=MAX_RPS),
            ttft_p99=c.optional(m, "ttft_p99", p, c.duration),
            itl_p99=c.optional(m, "itl_p99", p, c.duration),
            gpu_utilization=c.optional(m, "gpu_utilization", p, _ratio(c)),
        ))
    rps = [pt.rps for pt in points]
    if rps != sorted(rps) or len(set(rps)) != len(rps):
        raise c.err(path, "points must be listed in strictly increasing rps")
    return tuple(points)


def _benchmark(c: Reader, v: Any, path: str) -> Benchmark:
    req = {"usable_rps_per_instance", "ttft_p99", "itl_p99", "gpu_utilization"}
    m = c.mapping(v, path, req | {"curve", "prefix_cache_hit_ratio", "kv_cache_eviction_ratio"}, req)
    return Benchmark(
        usable_rps_per_instance=c.number(m["usable_rps_per_instance"], _join(path, "usable_rps_per_instance"),
                                         minimum=MIN_CAPACITY, maximum=MAX_RPS),
        ttft_p99=c.duration(m["ttft_p99"], _join(path, "ttft_p99")),
        itl_p99=c.duration(m["itl_p99"], _join(path, "itl_p99")),
        gpu_utilization=_ratio(c)(m["gpu_utilization"], _join(path, "gpu_utilization")),
        curve=c.optional(m, "curve", path, lambda x, p: _curve(c, x, p)) or (),
        prefix_cache_hit_ratio=c.optional(m, "prefix_cache_hit_ratio", path, _ratio(c)),
        kv_cache_eviction_ratio=c.optional(m, "kv_cache_eviction_ratio", path, _ratio(c)),
    )


def _lengths(c: Reader, v: Any, path: str) -> LengthProfile:
    m = c.mapping(v, path, {"p50", "p95", "p99"})
    pos = lambda x, p: c.number(x, p, minimum=0, strict_min=True)  # noqa: E731
    return LengthProfile(c.optional(m, "p50", path, pos), c.optional(m, "p95", path, pos), c.optional(m, "p99", path, pos))


def _workload(c: Reader, v: Any, path: str) -> Workload:
    m = c.mapping(v, path, {"input_tokens", "output_tokens", "prefix_reuse", "drift_tolerance"})
    tol = c.optional(m, "drift_tolerance", path, lambda x, p: c.number(x, p, minimum=0, strict_min=True))
    return Workload(
        input_tokens=c.optional(m, "input_tokens", path, lambda x, p: _lengths(c, x, p)),
        output_tokens=c.optional(m, "output_tokens", path, lambda x, p: _lengths(c, x, p)),
        prefix_reuse=c.optional(m, "prefix_reuse", path, c.boolean),
        drift_tolerance=tol if tol is not None else _default(Workload, "drift_tolerance"),
    )


def _precision(c: Reader, v: Any, path: str) -> Precision:
    m = c.mapping(v, path, {"weights", "kv_cache"})
    return Precision(c.optional(m, "weights", path, c.string), c.optional(m, "kv_cache", path, c.string))


_PLAN_REQUIRED = {"gpus_per_instance", "instances", "gpu_hour_cost_usd", "peak_rps", "safety_factor", "slo", "benchmark"}


def _plan(c: Reader, v: Any, path: str) -> Plan:
    if isinstance(v, dict) and "benchmark" in v and v["benchmark"] is None:
        raise c.err(_join(path, "benchmark"), "null: this plan was made without a concurrency sweep; run "
                                              "`fleetwatch plan --sweep` on a sweep of this configuration")
    m = c.mapping(v, path, _PLAN_REQUIRED | {"workload", "precision", "scale_down_stabilization", "predicted"},
                  _PLAN_REQUIRED)
    predicted = c.optional(m, "predicted", path, lambda x, p: _predicted(c, x, p)) or {}
    return Plan(
        gpus_per_instance=c.integer(m["gpus_per_instance"], _join(path, "gpus_per_instance"), minimum=1),
        instances=c.integer(m["instances"], _join(path, "instances"), minimum=0),
        gpu_hour_cost_usd=c.number(m["gpu_hour_cost_usd"], _join(path, "gpu_hour_cost_usd"), minimum=0),
        peak_rps=c.number(m["peak_rps"], _join(path, "peak_rps"), minimum=0, maximum=MAX_RPS),
        safety_factor=c.number(m["safety_factor"], _join(path, "safety_factor"), minimum=0, maximum=10),
        slo=_slo(c, m["slo"], _join(path, "slo")),
        benchmark=_benchmark(c, m["benchmark"], _join(path, "benchmark")),
        workload=c.optional(m, "workload", path, lambda x, p: _workload(c, x, p)),
        precision=c.optional(m, "precision", path, lambda x, p: _precision(c, x, p)),
        scale_down_stabilization=(c.optional(m, "scale_down_stabilization", path, c.duration)
                                  or _default(Plan, "scale_down_stabilization")),
        predicted_tokens_per_gpu_hour=predicted.get("tokens_per_gpu_hour"),
    )


def _predicted(c: Reader, v: Any, path: str) -> dict[str, float | None]:
    """What `fleetwatch plan` predicted (its `predicted:` block): numbers, or null where it had none."""
    m = c.mapping(v, path, {"tokens_per_gpu_hour", "average_utilization", "kv_cache_tokens", "source"})
    out: dict[str, float | None] = {}
    for key in ("tokens_per_gpu_hour", "average_utilization", "kv_cache_tokens"):
        out[key] = c.optional(m, key, path, lambda x, p: c.number(x, p, minimum=0, maximum=MAX_NUMBER))
    c.optional(m, "source", path, c.string)
    return out


def _selector(c: Reader, v: Any, path: str) -> GpuSelector:
    m = c.mapping(v, path, {"pod", "namespace", "indices", "uuids"})

    def strings(x: Any, p: str) -> tuple[str, ...]:
        if not isinstance(x, list):
            raise c.err(p, f"expected a list, got {_kind(x)}")
        return tuple(str(i) for i in x)

    return GpuSelector(
        pod=c.optional(m, "pod", path, c.string),
        namespace=c.optional(m, "namespace", path, c.string),
        indices=c.optional(m, "indices", path, strings) or (),
        uuids=c.optional(m, "uuids", path, strings) or (),
    )


def _target(c: Reader, v: Any, path: str, base: Path) -> Target:
    m = c.mapping(v, path, {"name", *engine_names(), "dcgm", "nvml", "gpus", "bearer_token_file",
                            "dcgm_bearer_token_file"})
    engines = [k for k in engine_names() if m.get(k) is not None]
    if len(engines) != 1:
        raise c.err(path, f"each target needs exactly one of {in_words(':', ' or ')}: (the engine's /metrics URL)")
    engine = engines[0]
    url = c.url(m[engine], _join(path, engine))
    token, dcgm_token = (_relative_to(base, c.optional(m, k, path, c.string))
                         for k in ("bearer_token_file", "dcgm_bearer_token_file"))
    if dcgm_token is not None and m.get("dcgm") is None:
        raise c.err(_join(path, "dcgm_bearer_token_file"), "set without dcgm: (the token is for that URL)")
    return Target(
        name=c.optional(m, "name", path, c.string) or default_name(url),
        engine=engine,
        url=url,
        dcgm=c.optional(m, "dcgm", path, c.url),
        nvml=bool(c.optional(m, "nvml", path, c.boolean)),
        gpus=c.optional(m, "gpus", path, lambda x, p: _selector(c, x, p)),
        bearer_token_file=token,
        dcgm_bearer_token_file=dcgm_token,
    )


def _relative_to(base: Path, path: str | None) -> str | None:
    if path is None or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def default_name(url: str) -> str:
    """The URL's host:port: never its user:password@, which would reach labels and logs."""
    return re.sub(r"^https?://", "", redact_url(url)).split("/", 1)[0]


_BAND_KEYS = {"warning_above", "critical_above", "warning_below", "critical_below"}


def _bands(c: Reader, v: Any, path: str, known_rows: set[str]) -> dict[str, BandOverride]:
    m = c.mapping(v, path, known_rows)
    out: dict[str, BandOverride] = {}
    for row, raw in m.items():
        p = _join(path, row)
        b = c.mapping(raw, p, _BAND_KEYS)
        out[row] = BandOverride(**{k: c.number(b[k], _join(p, k)) for k in b if b[k] is not None})
    return out


class _Refused(yaml.YAMLError):
    """What _Loader refuses, with the line it refused at."""

    def __init__(self, line: int, reason: str) -> None:
        self.line, self.reason = line, reason
        super().__init__(reason)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, deep nesting and unbounded alias expansion."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0  # nodes so far, each alias counted as the whole subtree it repeats
        self._weights: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._count(self._weights.get(id(node), 1), node)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _Refused(mark.line + 1, f"nesting deeper than {MAX_DEPTH} levels")
        before = self._nodes
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, node)
        self._weights[id(node)] = self._nodes - before
        return node

    def _count(self, n: int, node: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise _Refused(node.start_mark.line + 1, f"the document expands to more than {MAX_NODES} nodes "
                                                     f"(aliases repeating aliases?)")

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if dup:
                raise _Refused(key_node.start_mark.line + 1, f"duplicate key {show(key)}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(file: str, what: str = "config", text: str | None = None) -> Any:
    loader = _Loader(read_text(file, MAX_FILE_BYTES, what) if text is None else text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise ConfigError(file, "", f"nesting deeper than {MAX_DEPTH} levels") from None
    except _Refused as e:
        raise ConfigError(file, f"line {e.line}", e.reason) from None
    except ValueError as e:  # the YAML constructors' own: a number of thousands of digits, a bad date
        said = "a number of thousands of digits" if "digits" in str(e) else str(e).splitlines()[0][:100]
        raise ConfigError(file, "", f"invalid YAML value: {said}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(e, "problem", None) or (str(e).splitlines() or ["invalid"])[0]
        raise ConfigError(file, where, f"invalid YAML: {str(problem)[:120]}") from None
    finally:
        loader.dispose()


_TOP = {"source", "discovery", "interval", "window", "listen", "scrape_timeout", "max_body_bytes", "tls_verify", "ca_file",
        "history", "alertmanagers", "tiers", "state_dir", "sidecar", "alert_labels", "deprecated_metric_names",
        "alerting"}
# labels fleetwatch's alerts set themselves: alert_labels may not replace them
ALERT_OWN_LABELS = {"alertname", "severity", "tier", "action", "instance", "kind", "status", "check"}


def _alert_labels(c: Reader, v: Any, path: str) -> dict[str, str]:
    m = c.mapping(v, path, set(v) if isinstance(v, dict) else set())
    out = {}
    for k, val in m.items():
        p = _join(path, str(k))
        if not isinstance(k, str) or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", k) or k.startswith("__"):
            raise c.err(p, "a label name is letters, digits and '_', not starting with a digit or '__'")
        if k in ALERT_OWN_LABELS:
            raise c.err(p, f"{k} is a label fleetwatch's alerts set themselves")
        if not isinstance(val, (str, int, float)) or isinstance(val, bool):
            raise c.err(p, f"expected a string, got {_kind(val)}")
        out[k] = str(val)
    return out


def _alerting(c: Reader, v: Any, path: str) -> Alerting:
    m = c.mapping(v, path, {"for", "runbook_url"})
    for_ = {family: dict(by) for family, by in ALERT_FOR.items()}
    if m.get("for") is not None:
        fp = _join(path, "for")
        families = c.mapping(m["for"], fp, set(ALERT_FOR))
        for family, by in families.items():
            p = _join(fp, family)
            for severity, d in c.mapping(by, p, set(ALERT_FOR[family])).items():
                for_[family][severity] = c.duration(d, _join(p, severity), positive=False, maximum=86400.0)
            waits = for_[family]
            if "critical" in waits and "warning" in waits and waits["critical"] > waits["warning"]:
                raise c.err(p, f"critical waits {format_duration(waits['critical'])}, longer than warning "
                               f"({format_duration(waits['warning'])}): a page must not wait longer than a warning")
    url = c.optional(m, "runbook_url", path, c.string) or _default(Alerting, "runbook_url")
    return Alerting(for_=for_, runbook_url=url)


def load_plan(file: str) -> Plan:
    """A plan file on its own (``fleetwatch backtest --plan``), validated as a tier's ``plan:`` file is."""
    c = Reader(file)
    if not os.path.lexists(file):
        raise c.err("", "plan file not found")
    raw = load_yaml(file, "plan", read_text(file, MAX_FILE_BYTES, "plan"))
    if raw is None:
        raise c.err("", "the file is empty")
    return _plan(c, raw, "")


def load_config(file: str, *, known_rows: set[str] | None = None) -> Config:
    """Read and validate a fleet config. Raises ConfigError with a one-line message."""
    if known_rows is None:
        from .catalogue import row_keys  # late import: the catalogue is the source of row names

        known_rows = set(row_keys())
    c = Reader(file)
    raw = load_yaml(file)
    if raw is None:
        raise c.err("", "the file is empty")
    m = c.mapping(raw, "", _TOP, {"tiers"})
    base = Path(file).resolve().parent
    interval = (c.optional(m, "interval", "", lambda v, p: c.duration(v, p, maximum=MAX_INTERVAL))
                or _default(Config, "interval"))
    if interval < 0.1:
        raise c.err("interval", f"must be at least 100ms, got {format_duration(interval)}")
    window = c.optional(m, "window", "", lambda v, p: c.duration(v, p, maximum=86400.0)) or _default(Config, "window")
    if window < interval:
        raise c.err("window", f"must be at least one interval ({format_duration(interval)}): a rate needs two scrapes")
    timeout = c.optional(m, "scrape_timeout", "", c.duration) or min(5.0, interval * CYCLE_SHARE)
    if timeout > interval * CYCLE_SHARE + 1e-9:
        # a cycle is the scrape (bounded by scrape_timeout) plus evaluation: it must fit the interval
        raise c.err("scrape_timeout", f"must be at most {CYCLE_SHARE:.0%} of interval ({format_duration(interval)}), "
                                      f"leaving the rest of the cycle for evaluation; got {format_duration(timeout)}")
    listen = c.optional(m, "listen", "", c.string) or _default(Config, "listen")
    bad_listen = validate_listen(listen)
    if bad_listen:
        raise c.err("listen", bad_listen)
    ams = m.get("alertmanagers") or []
    if not isinstance(ams, list):
        raise c.err("alertmanagers", f"expected a list of URLs, got {_kind(ams)}")
    tiers_raw = m["tiers"]
    if not isinstance(tiers_raw, dict) or not tiers_raw:
        raise c.err("tiers", "expected a non-empty mapping of tier name to tier")
    tiers: dict[str, TierConfig] = {}
    for name, traw in tiers_raw.items():
        p = _join("tiers", str(name))
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise c.err(p, "tier names may use letters, digits, '_', '.' and '-' only")
        # targets may be left out of a config that only sidecars read (serve --tier): they watch localhost
        t = c.mapping(traw, p, {"plan", "targets", "bands", "discover", "schedule"}, {"plan"})
        plan_raw, plan_ctx, plan_path, plan_file = t["plan"], c, _join(p, "plan"), None
        if isinstance(plan_raw, str):  # a path to a plan file, relative to this config
            # the path as written, not a symlink's target: the message names what the user wrote
            plan_file = os.path.normpath(base / plan_raw) if not os.path.isabs(plan_raw) else plan_raw
            if not os.path.lexists(plan_file):
                raise c.err(_join(p, "plan"), f"plan file {plan_file} not found")
            try:  # a plan that cannot be read is this key's error; one that does not parse, the plan's
                text = read_text(plan_file, MAX_FILE_BYTES, "plan")
            except ConfigError as e:
                raise c.err(_join(p, "plan"), f"plan file {plan_file}: {e.reason}") from None
            plan_ctx, plan_path = Reader(plan_file), ""
            plan_raw = load_yaml(plan_file, "plan", text)
        targets_raw = t.get("targets", [])
        if not isinstance(targets_raw, list) or ("targets" in t and not targets_raw):
            raise c.err(_join(p, "targets"), "expected a non-empty list of targets")
        targets = tuple(_target(c, tr, _join(_join(p, "targets"), i), base) for i, tr in enumerate(targets_raw))
        names = [tg.name for tg in targets]
        if len(set(names)) != len(names):
            raise c.err(_join(p, "targets"), "target names must be unique within a tier (set name:)")
        discover, endpoint = None, EndpointTemplate()
        if t.get("discover") is not None:
            if targets:
                raise c.err(_join(p, "discover"), "a tier's targets are listed or discovered, not both")
            discover, endpoint = _dns(c, t["discover"], _join(p, "discover"), base)
        tiers[name] = TierConfig(
            name=name,
            plan=_plan(plan_ctx, plan_raw, plan_path),
            targets=targets,
            bands=c.optional(t, "bands", p, lambda x, pp: _bands(c, x, pp, known_rows)) or {},
            discover=discover,
            endpoint=endpoint,
            schedule=c.optional(t, "schedule", p, lambda x, pp: _schedule(c, x, pp)) or ScheduleSettings(),
            plan_file=plan_file,
        )
    kubernetes, kubernetes_endpoint = None, EndpointTemplate()
    if m.get("discovery") is not None:
        d = c.mapping(m["discovery"], "discovery", {"kubernetes"}, {"kubernetes"})
        kubernetes, kubernetes_endpoint = _kubernetes(c, d["kubernetes"], "discovery.kubernetes", base)
    cfg = Config(
        path=file,
        interval=interval,
        window=window,
        listen=listen,
        scrape_timeout=timeout,
        max_body_bytes=int(c.optional(m, "max_body_bytes", "", lambda v, p: c.integer(v, p, minimum=1024))
                           or _default(Config, "max_body_bytes")),
        tls_verify=True if m.get("tls_verify") is None else c.boolean(m["tls_verify"], "tls_verify"),
        ca_file=c.optional(m, "ca_file", "", c.string),
        history=(c.optional(m, "history", "", lambda v, p: c.duration(v, p, maximum=90 * 86400.0))
                 or _default(Config, "history")),
        alertmanagers=tuple(c.url(u, _join("alertmanagers", i)) for i, u in enumerate(ams)),
        tiers=tiers,
        state_dir=_state_dir(c, m, base),
        sidecar=c.optional(m, "sidecar", "", lambda v, p: _sidecar(c, v, p, base)) or SidecarSettings(),
        prometheus=_source(c, m, base, tiers),
        kubernetes=kubernetes,
        kubernetes_endpoint=kubernetes_endpoint,
        alert_labels=c.optional(m, "alert_labels", "", lambda v, p: _alert_labels(c, v, p)) or {},
        deprecated_metric_names=bool(c.optional(m, "deprecated_metric_names", "", c.boolean)),
        alerting=c.optional(m, "alerting", "", lambda v, p: _alerting(c, v, p)) or Alerting(),
    )
    REDACT.learn_urls(config_urls(cfg))  # their passwords are masked in everything written from now on
    return cfg


def config_urls(cfg: Config) -> list[str]:
    """Every URL of a config: targets, dcgm-exporters, Alertmanagers, the Prometheus source, the API."""
    urls = [u for t in cfg.tiers.values() for x in t.targets for u in (x.url, x.dcgm) if u]
    urls += list(cfg.alertmanagers)
    if cfg.prometheus is not None:
        urls.append(cfg.prometheus.url)
    if cfg.kubernetes is not None and cfg.kubernetes.api:
        urls.append(cfg.kubernetes.api)
    return urls


def _schedule(c: Reader, v: Any, path: str) -> ScheduleSettings:
    m = c.mapping(v, path, {"min_warm_instances", "cold_start", "margin", "quantile", "bin", "warmup"})
    d = ScheduleSettings()
    bin_ = c.optional(m, "bin", path, c.duration) or d.bin
    if 86400 % bin_:
        raise c.err(_join(path, "bin"), f"must divide a day evenly (1h, 30m, 15m ...), got {format_duration(bin_)}")
    return ScheduleSettings(
        min_warm_instances=d.min_warm_instances if m.get("min_warm_instances") is None
        else c.integer(m["min_warm_instances"], _join(path, "min_warm_instances")),
        cold_start=c.optional(m, "cold_start", path, c.duration),
        margin=d.margin if m.get("margin") is None else c.duration(m["margin"], _join(path, "margin"), positive=False),
        quantile=c.optional(m, "quantile", path, lambda x, pp: c.number(x, pp, minimum=0, maximum=1)) or d.quantile,
        bin=bin_,
        warmup=c.optional(m, "warmup", path, lambda x, pp: c.duration(x, pp, maximum=90 * 86400.0)) or d.warmup,
    )


_ENDPOINT_KEYS = {"engine", "path", "scheme", "bearer_token_file"}


def _endpoint(c: Reader, m: Mapping[str, Any], path: str, base: Path) -> EndpointTemplate:
    engine = c.optional(m, "engine", path, c.string) or engine_names()[0]
    if engine not in engine_names():
        raise c.err(_join(path, "engine"), f"expected {in_words()}, got {show(engine)}")
    scheme = c.optional(m, "scheme", path, c.string) or _default(EndpointTemplate, "scheme")
    if scheme not in ("http", "https"):
        raise c.err(_join(path, "scheme"), f"expected http or https, got {show(scheme)}")
    url_path = c.optional(m, "path", path, c.string) or _default(EndpointTemplate, "path")
    if not url_path.startswith("/"):
        raise c.err(_join(path, "path"), f"expected a path starting with /, got {show(url_path)}")
    return EndpointTemplate(engine=engine, path=url_path, scheme=scheme,
                            bearer_token_file=_relative_to(base, c.optional(m, "bearer_token_file", path, c.string)))


def _port_number(c: Reader, v: Any, path: str) -> int:
    port = c.integer(v, path, minimum=1)
    if port > 65535:
        raise c.err(path, f"must be 1-65535, got {port}")
    return port


def _dns(c: Reader, v: Any, path: str, base: Path) -> tuple[DnsDiscovery, EndpointTemplate]:
    m = c.mapping(v, path, {"dns"} | _ENDPOINT_KEYS, {"dns"})
    dp = _join(path, "dns")
    d = c.mapping(m["dns"], dp, {"name", "type", "port", "nameserver"}, {"name"})
    kind = c.optional(d, "type", dp, c.string) or _default(DnsDiscovery, "type")
    if kind not in ("A", "SRV"):
        raise c.err(_join(dp, "type"), f"expected A or SRV, got {show(kind)}")
    port = c.optional(d, "port", dp, lambda x, pp: _port_number(c, x, pp))
    if kind == "A" and port is None:
        raise c.err(_join(dp, "port"), "required with type A (an SRV record carries its port)")
    return DnsDiscovery(name=c.string(d["name"], _join(dp, "name")), type=kind, port=port,
                        nameserver=c.optional(d, "nameserver", dp, c.string)), _endpoint(c, m, path, base)


def _kubernetes(c: Reader, v: Any, path: str, base: Path) -> tuple[KubernetesDiscovery, EndpointTemplate]:
    m = c.mapping(v, path, {"namespace", "service", "tier_label", "port", "api", "token_file", "ca_file", "dcgm"}
                  | _ENDPOINT_KEYS, {"namespace", "service", "tier_label", "port"})
    dcgm = c.mapping(m["dcgm"], _join(path, "dcgm"), {"namespace", "service", "port"}, {"service", "port"}) \
        if m.get("dcgm") is not None else {}
    defaults = KubernetesDiscovery("", "", "", "")
    return KubernetesDiscovery(
        namespace=c.string(m["namespace"], _join(path, "namespace")),
        service=c.string(m["service"], _join(path, "service")),
        tier_label=c.string(m["tier_label"], _join(path, "tier_label")),
        port=str(m["port"]) if isinstance(m["port"], int) else c.string(m["port"], _join(path, "port")),
        api=c.optional(m, "api", path, c.url),
        token_file=_relative_to(base, c.optional(m, "token_file", path, c.string)) or defaults.token_file,
        ca_file=_relative_to(base, c.optional(m, "ca_file", path, c.string)) or defaults.ca_file,
        dcgm_namespace=c.optional(dcgm, "namespace", _join(path, "dcgm"), c.string),
        dcgm_service=c.optional(dcgm, "service", _join(path, "dcgm"), c.string),
        dcgm_port=(str(dcgm["port"]) if isinstance(dcgm.get("port"), int)
                   else c.optional(dcgm, "port", _join(path, "dcgm"), c.string)),
    ), _endpoint(c, m, path, base)


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _source(c: Reader, m: Mapping[str, Any], base: Path, tiers: Mapping[str, TierConfig]) -> PrometheusSource | None:
    """``source:`` left out (or ``scrape``): fleetwatch scrapes the targets. ``source: {prometheus: {url: ...}}``:
    it reads the fleet from that API, and the keys that only scraping reads are errors, not silently ignored."""
    raw = m.get("source")
    if raw is None or raw == "scrape":
        return None
    s = c.mapping(raw, "source", {"prometheus"}, {"prometheus"})
    p = c.mapping(s["prometheus"], "source.prometheus", {"url", "bearer_token_file", "instance_label"}, {"url"})
    label = c.optional(p, "instance_label", "source.prometheus", c.string) or _default(PrometheusSource, "instance_label")
    if not _LABEL_NAME.match(label) or label.startswith("__"):
        raise c.err("source.prometheus.instance_label", f"expected a Prometheus label name, got {show(label)}")
    if m.get("discovery") is not None:
        raise c.err("discovery", "not used with source: prometheus: the instances are the series Prometheus has")
    for name, tier in tiers.items():
        if tier.discover is not None:
            raise c.err(_join(_join("tiers", name), "discover"), "not used with source: prometheus")
        if tier.targets:
            raise c.err(_join(_join("tiers", name), "targets"),
                        f"not read with source: prometheus (the tier's instances are the series that Prometheus "
                        f"labels tier=\"{name}\"); remove it")
    if m.get("state_dir") is not None:
        raise c.err("state_dir", "not used with source: prometheus: the history comes from Prometheus itself")
    return PrometheusSource(
        url=c.url(p["url"], "source.prometheus.url").rstrip("/"),
        bearer_token_file=_relative_to(base, c.optional(p, "bearer_token_file", "source.prometheus", c.string)),
        instance_label=label,
    )


def _sidecar(c: Reader, v: Any, path: str, base: Path) -> SidecarSettings:
    m = c.mapping(v, path, {"engine", "url", "dcgm", "nvml", "bearer_token_file", "dcgm_bearer_token_file"})
    engine = c.optional(m, "engine", path, c.string)
    if engine is not None and engine not in engine_names():
        raise c.err(_join(path, "engine"), f"expected {in_words()}, got {show(engine)}")
    s = SidecarSettings(
        engine=engine,
        url=c.optional(m, "url", path, c.url),
        dcgm=c.optional(m, "dcgm", path, c.url),
        nvml=c.optional(m, "nvml", path, c.boolean),
        bearer_token_file=_relative_to(base, c.optional(m, "bearer_token_file", path, c.string)),
        dcgm_bearer_token_file=_relative_to(base, c.optional(m, "dcgm_bearer_token_file", path, c.string)),
    )
    if s.dcgm and s.nvml:
        raise c.err(path, "dcgm: and nvml: both set; a sidecar reads its GPUs from one of them")
    return s


def _state_dir(c: Reader, m: Mapping[str, Any], base: Path) -> str | None:
    raw = c.optional(m, "state_dir", "", c.string)
    if raw is None:
        return None
    path = Path(raw) if os.path.isabs(raw) else (base / raw)
    if path.exists() and not path.is_dir():
        raise c.err("state_dir", f"{show(str(path))} exists and is not a directory")
    return str(path)


def require_targets(config: Config) -> None:
    """Fleet mode (``serve`` without ``--tier``, ``check``) watches the listed targets: every tier needs some
    (unless the fleet is read from Prometheus)."""
    if config.prometheus is not None or config.kubernetes is not None:
        return
    for name, tier in config.tiers.items():
        if not tier.targets and tier.discover is None:
            raise ConfigError(config.path, _join(_join("tiers", name), "targets"),
                              "required in fleet mode (a sidecar config may leave it out: serve --tier NAME)")
