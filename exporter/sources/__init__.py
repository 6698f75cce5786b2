"""One module per source; each has a pure ``parse(text) -> canonical`` and uses exporter.fetch.

Canonical engine inputs (the only names evaluation ever sees):

counters   requests_finished, requests_finished_reason:<reason>, prompt_tokens,
           generation_tokens, preemptions, prefix_cache_queries, prefix_cache_hits,
           spec_draft_tokens, spec_accepted_tokens
gauges     requests_running, requests_waiting, kv_cache_usage, prefix_cache_hit_rate
           (engines with only a gauge), spec_acceptance_rate (engines with only a gauge)
histograms ttft_seconds, itl_seconds, prompt_tokens_per_request, generation_tokens_per_request

A counter, gauge or histogram with a NaN, infinite or negative sample is not stored: its
canonical name goes into ``invalid`` instead, so the rows that read it say why they are unknown
and no such number ever reaches a report.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from ..exposition import Sample
from ..inputs import INPUTS
from ..model import EngineSample, GpuReading, GpuSelector, Histogram, Target

Names = Mapping[str, tuple[str, ...]]  # canonical input -> the engine's raw names, newest first
Gpus = tuple[GpuReading, ...]


def selects(selector: GpuSelector | None) -> bool:
    return selector is not None and bool(selector.pod or selector.namespace or selector.indices or selector.uuids)


def maps_pods(gpus: Sequence[GpuReading]) -> bool:
    """Whether the exporter labels its GPUs with the pods that hold them (a node-wide one in Kubernetes)."""
    return any(g.pod for g in gpus)


def select_gpus(gpus: Sequence[GpuReading], selector: GpuSelector | None) -> Gpus:
    """A target's own GPUs: its selector (by pod and namespace, index or UUID); else, on an exporter that
    covers one instance's node (no pod labels), all of them, by UUID. The rule the generated rules follow
    too: on an exporter that labels GPUs with their pods, a GPU belongs to the engine pod holding it, so
    with no selector naming this target's pod none is counted, never another pod's (the scraper warns)."""
    if not selects(selector) and maps_pods(gpus):
        return ()
    if selector is not None and selects(selector):
        return tuple(g for g in gpus
                     if (not selector.pod or g.pod == selector.pod)
                     and (not selector.namespace or g.namespace == selector.namespace)
                     and (not selector.indices or g.index in selector.indices)
                     and (not selector.uuids or g.uuid in selector.uuids))
    seen: dict[tuple[str, str | None], GpuReading] = {}
    for g in gpus:
        seen.setdefault(g.key, g)
    return tuple(seen.values())


def _none(target: Target) -> str | None:
    return None


@dataclass(frozen=True)
class GpuSource:
    """A way to read GPUs: everything about it is in its own module (``exporter/sources/<name>.py``),
    registered by one line in ``exporter/gpus.py``. Either fetched over HTTP (``parse``; one fetch per URL
    a cycle, shared by the targets on that node) or read on this host (``open``; once a cycle)."""

    name: str  # the target's key (``dcgm: URL``, ``nvml: true``) and the source its failures are counted under
    title: str  # in words: what reasons and logs call it
    select: Callable[[Sequence[GpuReading], GpuSelector | None], Gpus] = select_gpus
    parse: Callable[[str], Gpus] | None = None  # fetched: its body -> every GPU it reports
    url: Callable[[Target], str | None] = _none  # fetched: where this target's GPUs are
    token_file: Callable[[Target], str | None] = _none  # fetched: its own bearer token, when it has one
    open: Callable[[], Callable[[], Gpus]] | None = None  # local: a reader, called once a cycle
    wanted: Callable[[Target], bool] = lambda target: False  # local: whether this target reads it


@dataclass(frozen=True)
class Engine:
    """An inference engine fleetwatch reads: everything about it is in its own module
    (``exporter/sources/<name>.py``), registered by one line in ``exporter/engines.py``."""

    name: str  # the config key of its targets (``vllm: URL``) and its samples' engine
    title: str  # in words
    prefix: str  # every metric of its own starts with it
    default_port: int  # where a sidecar finds it on localhost
    names: Names
    parse: Callable[[str], EngineSample]
    # PromQL of a rate gauge where the engine's reading means something (engines without the counters)
    gauge_promql: Mapping[str, str] = field(default_factory=dict)
    finished_reason_label: str | None = None  # the label that splits requests_finished by reason
    lora_info: str | None = None  # the series that reports its LoRA adapters, where it has one


def valid(v: float) -> bool:
    """A counter, gauge or bucket value fleetwatch may use: finite and not negative."""
    return math.isfinite(v) and v >= 0


def sum_of(samples: Iterable[Sample], name: str) -> float | None:
    """Sum every series of ``name`` (over engine, model_name, ...); None when absent.

    Raises ValueError when a series is NaN, infinite or negative, or the sum overflows."""
    total, seen = 0.0, False
    for s in samples:
        if s.name == name:
            if not valid(s.value):
                raise ValueError(name)
            total += s.value
            seen = True
    if not math.isfinite(total):
        raise ValueError(name)
    return total if seen else None


def by_name(samples: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.name].append(s)
    return out


def histogram(index: dict[str, list[Sample]], family: str) -> Histogram | None:
    """Sum a histogram family over all its non-``le`` labels. None when it has no +Inf bucket.

    Raises ValueError when a bucket, the count or the sum is NaN, infinite or negative."""
    buckets: dict[float, float] = defaultdict(float)
    for s in index.get(family + "_bucket", ()):
        le = s.labels.get("le")
        if le is None:
            continue
        try:
            bound = float(le)
        except ValueError:
            continue
        if math.isnan(bound) or not valid(s.value):
            raise ValueError(family)
        buckets[bound] += s.value
    if not buckets or math.inf not in buckets:
        return None
    count = sum_of(index.get(family + "_count", ()), family + "_count")
    total = sum_of(index.get(family + "_sum", ()), family + "_sum")
    if not all(math.isfinite(v) for v in buckets.values()):
        raise ValueError(family)
    return Histogram(tuple(sorted(buckets.items())), buckets[math.inf] if count is None else count, total or 0.0)


def first_present(index: dict[str, list[Sample]], *names: str) -> str | None:
    """The first name that exists in the scrape: newest names are listed first, so an old
    alias exposed beside its replacement is never read (never added together)."""
    for n in names:
        if n in index:
            return n
    return None


def put(target: dict[str, float], index: dict[str, list[Sample]], canonical: str, *names: str,
        invalid: set[str]) -> None:
    """Store the sum of the first present of ``names`` (newest first) under ``canonical``;
    a NaN, infinite or negative value marks ``canonical`` invalid instead."""
    name = first_present(index, *names)
    if name is not None:
        try:
            v = sum_of(index[name], name)
        except ValueError:
            invalid.add(canonical)
            return
        if v is not None:
            target[canonical] = v


def histograms(index: dict[str, list[Sample]], spec: tuple[tuple[str, tuple[str, ...]], ...],
               invalid: set[str]) -> dict[str, Histogram]:
    """canonical -> histogram of the first present family (newest first) for each spec entry."""
    out: dict[str, Histogram] = {}
    for canonical, families in spec:
        fam = first_present(index, *(f + "_bucket" for f in families))
        if fam is not None:
            try:
                h = histogram(index, fam[: -len("_bucket")])
            except ValueError:
                invalid.add(canonical)
                continue
            if h is not None:
                out[canonical] = h
    return out


def mean_of_valid(samples: Iterable[Sample]) -> float | None:
    """Mean of a per-rank gauge's usable values (a negative value is an engine's "no data")."""
    vals = [s.value for s in samples if valid(s.value)]
    return sum(vals) / len(vals) if vals else None


def mean_gauge(target: dict[str, float], index: dict[str, list[Sample]], canonical: str, *names: str,
               invalid: set[str]) -> None:
    """Store the mean over series (TP/DP ranks) of the first present of ``names``; a NaN,
    infinite or negative value marks ``canonical`` invalid."""
    name = first_present(index, *names)
    if name is None:
        return
    series = index[name]
    try:
        total = sum_of(series, name)
    except ValueError:
        invalid.add(canonical)
        return
    if total is not None:
        target[canonical] = total / len(series)


@dataclass
class Canonical:
    """An engine scrape's canonical inputs while its parser fills them in."""

    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    invalid: set[str] = field(default_factory=set)


def read_inputs(index: dict[str, list[Sample]], names: Names, *, skip: frozenset[str] = frozenset()) -> Canonical:
    """Every input the engine exposes (``names``, its table), summed over the engine's own labels,
    first present name first; the parsers handle the inputs in ``skip`` themselves."""
    out = Canonical()
    names = {c: raw for c, raw in names.items() if INPUTS[c].parsed}
    for canonical, raw in names.items():
        kind = INPUTS[canonical].kind
        if not raw or canonical in skip:
            continue
        if kind == "counter":
            put(out.counters, index, canonical, *raw, invalid=out.invalid)
        elif kind == "gauge":
            put(out.gauges, index, canonical, *raw, invalid=out.invalid)
    out.histograms = histograms(index, tuple((c, raw) for c, raw in names.items() if INPUTS[c].kind == "histogram"),
                                out.invalid)
    return out


def split_by_reason(c: Canonical, series: Iterable[Sample], label: str = "finished_reason") -> None:
    """The finished-request counter again, split by its reason label (requests_finished_reason:<reason>),
    where the whole counter was read."""
    if "requests_finished" not in c.counters:
        return
    for s in series:
        key = f"requests_finished_reason:{s.labels.get(label, 'unknown')}"
        c.counters[key] = c.counters.get(key, 0.0) + s.value


PROCESS_START = "process_start_time_seconds"  # prometheus_client's process collector, in every engine's /metrics


def process_start(idx: Mapping[str, Sequence[Sample]], gauges: dict[str, float]) -> None:
    """The engine process's start time (for the cold start: start to first generated token)."""
    series = idx.get(PROCESS_START) or ()
    if len(series) == 1 and math.isfinite(series[0].value) and series[0].value > 0:
        gauges["process_start_time"] = series[0].value


def wanted(names: Names, *extra: str) -> frozenset[str]:
    """Every sample name a parser reads: the engine's table (a histogram's as _bucket, _sum and
    _count; not the inputs only the dashboards read) plus ``extra``. The exposition parser skips every other
    line."""
    out = set(extra)
    for canonical, raw in names.items():
        if not INPUTS[canonical].parsed:
            continue
        for n in raw:
            out |= {n + s for s in ("_bucket", "_sum", "_count")} if INPUTS[canonical].kind == "histogram" else {n}
    return frozenset(out)
