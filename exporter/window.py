"""Windowed views of samples: counter increases, histogram quantiles, gauge means.

Increases are last minus first with counter resets handled the way Prometheus handles them
(a drop means the counter restarted from zero), and no extrapolation. Quantiles follow
Prometheus's ``histogram_quantile`` exactly, so for a reset-free window they equal
``histogram_quantile(q, sum by (le) (x_bucket - x_bucket offset W))``.
"""
from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from .engines import ENGINES, names as engine_names
from .inputs import INPUTS
from .model import EngineSample, GpuReading, Histogram, InstanceSample
from .text import plural


def counter_increase(values: Sequence[float]) -> float:
    """Increase over consecutive counter readings; a decrease is a reset (Prometheus semantics)."""
    if len(values) < 2:
        return 0.0
    total = values[-1] - values[0]
    for prev, cur in zip(values, values[1:]):
        if cur < prev:
            total += prev
    return total


def count_resets(values: Sequence[float]) -> int:
    """How many drops (restarts) a counter's readings show."""
    return sum(1 for prev, cur in zip(values, values[1:]) if cur < prev)


def histogram_increase(hists: Sequence[Histogram]) -> Histogram | None:
    """Bucket-wise increase. Buckets missing from any reading are dropped (layout change)."""
    if len(hists) < 2:
        return None
    first = hists[0].buckets
    layout = [b for b, _ in first]
    if layout and layout[-1] == math.inf and all(len(h.buckets) == len(first) and [b for b, _ in h.buckets] == layout
                                                  for h in hists[1:]):
        # the usual case, one bucket layout throughout: the series of each bucket, column by column
        columns = zip(*[[c for _, c in h.buckets] for h in hists])
        return Histogram(tuple(zip(layout, map(counter_increase, columns))),
                         counter_increase([h.count for h in hists]), counter_increase([h.sum for h in hists]))
    bounds = set(layout)
    for h in hists[1:]:
        bounds &= set(b for b, _ in h.buckets)
    if math.inf not in bounds:
        return None
    per_bound: dict[float, list[float]] = defaultdict(list)
    for h in hists:
        for b, c in h.buckets:
            if b in bounds:
                per_bound[b].append(c)
    buckets = tuple(sorted((b, counter_increase(cs)) for b, cs in per_bound.items()))
    return Histogram(buckets, counter_increase([h.count for h in hists]), counter_increase([h.sum for h in hists]))


def add_histograms(hists: Iterable[Histogram]) -> Histogram | None:
    buckets: dict[float, float] = defaultdict(float)
    count = total = 0.0
    seen = False
    for h in hists:
        seen = True
        for b, c in h.buckets:
            buckets[b] += c
        count += h.count
        total += h.sum
    if not seen:
        return None
    return Histogram(tuple(sorted(buckets.items())), count, total)


def histogram_quantile(q: float, h: Histogram) -> float:
    """Prometheus 2.42 ``bucketQuantile``: NaN when undefined."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(h.buckets)
    if not buckets or not math.isinf(buckets[-1][0]):
        return math.nan
    # coalesce equal bounds
    merged: list[list[float]] = []
    for b, c in buckets:
        if merged and merged[-1][0] == b:
            merged[-1][1] += c
        else:
            merged.append([b, c])
    # ensure monotonic cumulative counts
    running = -math.inf
    for m in merged:
        running = max(running, m[1])
        m[1] = running
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = len(merged) - 1
    for i in range(len(merged) - 1):  # sort.Search over all but the +Inf bucket
        if merged[i][1] >= rank:
            b = i
            break
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    bucket_start = 0.0
    bucket_end = merged[b][0]
    count = merged[b][1]
    if b > 0:
        bucket_start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return bucket_start + (bucket_end - bucket_start) * (rank / count)


@dataclass(frozen=True)
class Quantity:
    """A windowed value with the evidence behind it."""

    value: float | None
    samples: int = 0
    source: str | None = None
    reason: str | None = None


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def evidence(x: float | None) -> int:
    """A count of observations as a whole number; 0 for one that overflowed."""
    return int(round(x)) if x is not None and math.isfinite(x) else 0


@dataclass(frozen=True)
class Percentile:
    """A histogram percentile a finding asks of a tier's window."""

    key: str
    q: float
    per_instance: bool = False  # each instance's own, and the tier's without one
    halves: bool = False  # also in each half of the window


@dataclass(frozen=True)
class Asks:
    """What a finding, the workload block or a guardrail asks of a tier's window besides the rows (which
    declare their own inputs). The Prometheus-backed view sends exactly these questions, at once."""

    percentiles: tuple[Percentile, ...] = ()
    finish_reasons: bool = False
    gpu_models: bool = False

    def __or__(self, other: Asks) -> Asks:
        return Asks(tuple(dict.fromkeys(self.percentiles + other.percentiles)),
                    self.finish_reasons or other.finish_reasons, self.gpu_models or other.gpu_models)


MAX_NAMED = 3  # instances named in one reason; the rest are counted


class TierView(Protocol):
    """What evaluation reads of a tier besides its rows: a TierWindow of scraped samples, or the
    Prometheus-backed view (exporter/promview.py) that asks a Prometheus the same questions."""

    @property
    def tier(self) -> str: ...
    @property
    def instances(self) -> tuple[str, ...]: ...
    def up(self) -> tuple[str, ...]: ...
    def down(self) -> tuple[str, ...]: ...
    def halves(self) -> tuple["TierView", "TierView"]: ...
    def gpu_models(self) -> dict[str, set[str]]: ...
    def span(self) -> float: ...
    def scrapes(self) -> int: ...
    def increase(self, key: str) -> float | None: ...
    def warming(self) -> str | None:
        """Why rates and quantiles are unknown right after a start, while they are."""
    def gpu_failure(self) -> str | None:
        """Why the GPU rows are unknown when the GPU source failed: what it said, per instance."""
    def counter_keys(self, prefix: str) -> set[str]: ...
    def quantile(self, key: str, q: float, instances: Iterable[str] | None = None) -> Quantity: ...
    def error(self, instance: str) -> str | None: ...


_TIER_SUM = "\x00tier"  # the memo key of the tier's summed histogram: no instance is named so


@dataclass(frozen=True)
class TierWindow:
    """One tier's samples inside the window, per instance, oldest first."""

    tier: str
    instances: tuple[str, ...]
    samples: Mapping[str, tuple[InstanceSample, ...]]
    expected: int | None = None  # readings per instance a full window holds (window / interval + 1)
    # per-instance histogram increases, computed once: rows, checks and findings ask many times
    _increases: dict[tuple[str, str], Histogram | None] = field(default_factory=dict, compare=False, repr=False)
    _memo: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)
    _series: dict[str, list[tuple[float, EngineSample]]] = field(default_factory=dict, compare=False, repr=False)

    # -------------------------------------------------------------- instances
    def up(self) -> tuple[str, ...]:
        # asked for by every row and check: computed once (the samples never change)
        if "up" not in self._memo:
            self._memo["up"] = tuple(i for i in self.instances if self.samples.get(i) and self.samples[i][-1].up)
        return self._memo["up"]

    def down(self) -> tuple[str, ...]:
        up = set(self.up())
        return tuple(i for i in self.instances if i not in up)

    def error(self, instance: str) -> str | None:
        """Why the instance's latest scrape failed, in words; None when it answered (or nobody said)."""
        ss = self.samples.get(instance)
        return ss[-1].error if ss else None

    def gpu_error(self, instance: str) -> str | None:
        ss = self.samples.get(instance)
        return ss[-1].gpu_error if ss else None

    def warming(self) -> str | None:
        n = self.readings()
        if n >= 2:
            return None
        so_far = f"{n} of the {self.expected} scrapes a window holds" if self.expected else plural(n, "scrape")
        return f"warming up: {so_far} so far; rates and quantiles need two"

    def gpu_failure(self) -> str | None:
        if self.gpu_series():
            return None
        failed = [f"{i}: {e}" for i in self.up() if (e := self.gpu_error(i))]
        if not failed:
            return None
        return "the GPU source did not answer (" + "; ".join(failed[:MAX_NAMED]) + (
            f"; and {len(failed) - MAX_NAMED} more" if len(failed) > MAX_NAMED else "") + ")"

    def readings(self) -> int:
        """The most engine readings an up instance has in the window: below two, nothing has a rate yet."""
        return max((len(self._engine_series(i)) for i in self.up()), default=0)

    def engines(self) -> set[str]:
        """The engines (vllm, sglang) the up instances run."""
        return {e.engine for i in self.up() for _, e in self._engine_series(i)}

    def exposes(self, key: str) -> bool:
        """Whether any up instance's reading holds the canonical input ``key`` (or reported it unusable)."""
        return any(key in e.counters or key in e.gauges or key in e.histograms or key in e.invalid
                   for i in self.up() for _, e in self._engine_series(i))

    def halves(self) -> tuple["TierWindow", "TierWindow"]:
        """The window split at its middle instant (the middle scrape belongs to both)."""
        times = [s.timestamp for ss in self.samples.values() for s in ss]
        mid = (min(times) + max(times)) / 2 if times else 0.0
        first = {i: tuple(s for s in ss if s.timestamp <= mid) for i, ss in self.samples.items()}
        second = {i: tuple(s for s in ss if s.timestamp >= mid) for i, ss in self.samples.items()}
        return (TierWindow(self.tier, self.instances, first, self.expected),
                TierWindow(self.tier, self.instances, second, self.expected))

    def gpu_models(self) -> dict[str, set[str]]:
        """instance -> the GPU model names its latest sample reported."""
        out: dict[str, set[str]] = {}
        for inst in self.up():
            models = {g.model for g in self.samples[inst][-1].gpus if g.model}
            if models:
                out[inst] = models
        return out

    def scrapes(self) -> int:
        """Samples in the window, over all instances."""
        return sum(len(ss) for ss in self.samples.values())

    def span(self) -> float:
        """Seconds between the oldest and the newest sample of the tier."""
        times = [s.timestamp for ss in self.samples.values() for s in ss]
        return max(times) - min(times) if times else 0.0

    def _engine_series(self, instance: str) -> list[tuple[float, EngineSample]]:
        series = self._series.get(instance)
        if series is None:
            series = self._series[instance] = [(s.timestamp, s.engine) for s in self.samples.get(instance, ())
                                               if s.engine is not None]
        return series

    # -------------------------------------------------------------- counters
    def counter_increases(self, key: str) -> Mapping[str, tuple[float, float]]:
        """instance -> (increase, seconds) for instances with >= 2 readings of ``key``."""
        out: dict[str, tuple[float, float]] = {}
        for inst in self.up():
            series = [(t, e.counters[key]) for t, e in self._engine_series(inst) if key in e.counters]
            if len(series) < 2:
                continue
            out[inst] = (counter_increase([v for _, v in series]), series[-1][0] - series[0][0])
        return out

    def increase(self, key: str) -> float | None:
        inc = self.counter_increases(key)
        return sum(v for v, _ in inc.values()) if inc else None

    def rate(self, key: str) -> float | None:
        inc = self.counter_increases(key)
        rates = [v / d for v, d in inc.values() if d > 0]
        return sum(rates) if rates else None

    def invalid(self, key: str) -> tuple[str, ...]:
        """Up instances that reported a NaN, infinite or negative ``key`` inside the window."""
        return tuple(i for i in self.up() if any(key in e.invalid for _, e in self._engine_series(i)))

    def counter_keys(self, prefix: str) -> set[str]:
        keys: set[str] = set()
        for inst in self.up():
            for _, e in self._engine_series(inst):
                keys.update(k for k in e.counters if k.startswith(prefix))
        return keys

    # -------------------------------------------------------------- gauges
    def gauge_means(self, key: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for inst in self.up():
            vals = [e.gauges[key] for _, e in self._engine_series(inst)
                    if key in e.gauges and math.isfinite(e.gauges[key])]
            if vals:
                out[inst] = _mean(vals)
        return out

    def gauge_change_rate(self, keys: Sequence[str]) -> dict[str, float]:
        """instance -> (last - first of the sum of ``keys``) / seconds."""
        out: dict[str, float] = {}
        for inst in self.up():
            series = [(t, e) for t, e in self._engine_series(inst) if all(k in e.gauges for k in keys)]
            if len(series) < 2:
                continue
            d = series[-1][0] - series[0][0]
            if d <= 0:
                continue
            first = sum(series[0][1].gauges[k] for k in keys)
            last = sum(series[-1][1].gauges[k] for k in keys)
            out[inst] = (last - first) / d
        return out

    # -------------------------------------------------------------- histograms
    def histogram_increase(self, key: str, instances: Iterable[str] | None = None) -> Histogram | None:
        if instances is None:  # the tier's sum: every quantile of every row asks for it
            if (key, _TIER_SUM) not in self._increases:
                self._increases[(key, _TIER_SUM)] = self._sum_increases(key, self.up())
            return self._increases[(key, _TIER_SUM)]
        return self._sum_increases(key, instances)

    def _sum_increases(self, key: str, instances: Iterable[str]) -> Histogram | None:
        parts = []
        for inst in instances:
            if (key, inst) not in self._increases:
                self._increases[(key, inst)] = histogram_increase(
                    [e.histograms[key] for _, e in self._engine_series(inst) if key in e.histograms])
            h = self._increases[(key, inst)]
            if h is not None:
                parts.append(h)
        return add_histograms(parts)

    def quantile(self, key: str, q: float, instances: Iterable[str] | None = None) -> Quantity:
        h = self.histogram_increase(key, instances)
        if h is None:
            return Quantity(None, 0, reason=absent(self, key))
        total = h.buckets[-1][1] if h.buckets else 0.0
        if not math.isfinite(total):
            return Quantity(None, 0, reason=f"the {INPUTS[key].what if key in INPUTS else key} bucket counts overflow")
        n = int(round(total))
        what = INPUTS[key].what if key in INPUTS else f"{key} histogram"
        if n <= 0:
            return Quantity(None, 0, reason=f"nothing observed by the {what} in the window")
        v = histogram_quantile(q, h)
        if math.isnan(v):
            return Quantity(None, n, reason=f"the {what}'s buckets give no quantile (no +Inf bucket or one bucket)")
        return Quantity(v, n)

    # -------------------------------------------------------------- GPUs
    def gpu_series(self) -> dict[tuple[str, str, str | None], list[GpuReading]]:
        """(instance, uuid, mig) -> readings in the window, for up GPUs of up instances."""
        out: dict[tuple[str, str, str | None], list[GpuReading]] = defaultdict(list)
        for inst in self.up():
            for s in self.samples[inst]:
                for g in s.gpus:
                    if g.up:
                        out[(inst, g.uuid, g.mig_instance)].append(g)
        return out

    def lora_evictions(self) -> Quantity:
        """Adapters leaving the running set while requests for them wait, per second."""
        events, seconds, seen = 0, 0.0, False
        for inst in self.up():
            series = [(t, e.lora) for t, e in self._engine_series(inst) if e.lora is not None]
            if len(series) < 2:
                continue
            seen = True
            seconds = max(seconds, series[-1][0] - series[0][0])
            for (_, p), (_, c) in zip(series, series[1:]):
                assert p is not None and c is not None
                events += len((p.running - c.running) & c.waiting)
        if not seen or seconds <= 0:
            infos = [e.lora_info for e in ENGINES if e.name in self.engines() and e.lora_info]
            if infos:
                return Quantity(None, reason=f"the engine exposes no LoRA state ({infos[0]} needs --enable-lora)")
            return Quantity(None, reason=f"not exposed: {' and '.join(sorted(self.engines())) or 'the engine'} has "
                                         f"no LoRA adapter state")
        return Quantity(events / seconds, events)


class WindowStore:
    """Keeps each target's recent samples. Mutated only by the cycle thread.

    The window's oldest edge sits ``slack`` (half a scrape interval) before ``now - window``:
    a reading taken nominally one window ago is inside whether its scrape ran a little early or
    late, and the one before it is outside. With scrapes every interval, a window therefore holds
    window / interval + 1 readings per target, every cycle, whatever the jitter below slack.
    """

    def __init__(self, window: float, tiers: Mapping[str, Sequence[str]], slack: float = 0.0,
                 expected: int | None = None) -> None:
        self.window = window
        self.slack = slack
        self.expected = expected  # readings per target a full window holds, for "warming up: n of N"
        self._tiers = {t: tuple(insts) for t, insts in tiers.items()}
        self._samples: dict[tuple[str, str], deque[InstanceSample]] = defaultdict(deque)

    def add(self, sample: InstanceSample) -> None:
        self._samples[(sample.tier, sample.instance)].append(sample)

    def set_instances(self, tiers: Mapping[str, Sequence[str]]) -> None:
        """Discovery changed the targets: an instance that left is forgotten, one that came starts empty."""
        self._tiers = {t: tuple(insts) for t, insts in tiers.items()}
        keep = {(t, i) for t, insts in self._tiers.items() for i in insts}
        for key in [k for k in self._samples if k not in keep]:
            del self._samples[key]

    def oldest(self, now: float, window: float | None = None) -> float:
        """The earliest timestamp a reading may have to be in the window ending at ``now``."""
        return now - (self.window if window is None else window) - self.slack - 1e-9

    def trim(self, now: float) -> None:
        # increases use only samples inside the window, so nothing older is kept
        edge = self.oldest(now)
        for dq in self._samples.values():
            while dq and dq[0].timestamp < edge:
                dq.popleft()

    def view(self, tier: str, now: float, window: float | None = None,
             keep: Callable[[InstanceSample], bool] | None = None) -> TierWindow:
        edge = self.oldest(now, window)
        out: dict[str, tuple[InstanceSample, ...]] = {}
        for inst in self._tiers.get(tier, ()):
            out[inst] = tuple(s for s in self._samples.get((tier, inst), ())
                              if edge <= s.timestamp <= now and (keep is None or keep(s)))
        return TierWindow(tier, self._tiers.get(tier, ()), out, self.expected)


def absent(tw: TierWindow, *keys: str) -> str:
    """Why no instance of the tier gives two readings of any of ``keys``: the engine does not expose it
    (naming the series looked for), or too few scrapes hold it yet."""
    if any(tw.exposes(k) for k in keys):
        return f"fewer than two scrapes in the window hold the {INPUTS[keys[0]].what} yet" if keys[0] in INPUTS \
            else "fewer than two scrapes in the window hold it yet"
    engines = sorted(tw.engines())
    what = " or ".join(INPUTS[k].what for k in keys if k in INPUTS) or keys[0]
    names = [n for k in keys if k in INPUTS for e in engines for n in engine_names(k, e)]
    if not names:
        return f"not exposed: {' and '.join(engines) or 'the engine'} has no {what}"
    return f"not exposed by this engine version: no {what} ({', '.join(names)})"


def tier_window(tier: str, samples: Iterable[InstanceSample], instances: Sequence[str] | None = None) -> TierWindow:
    """Build a TierWindow straight from samples (for check, tests and benchmarks)."""
    by_inst: dict[str, list[InstanceSample]] = defaultdict(list)
    for s in samples:
        by_inst[s.instance].append(s)
    names = tuple(instances) if instances is not None else tuple(sorted(by_inst))
    return TierWindow(tier, names, {i: tuple(sorted(by_inst.get(i, []), key=lambda s: s.timestamp)) for i in names})
