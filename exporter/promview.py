"""The Prometheus-backed mode's view of a tier: the catalogue's PromQL, and the questions the rest
of evaluation asks (instances up, length percentiles, finish reasons, GPU models, per-instance
tails), put to a Prometheus instead of to a window of scrapes. Pure: every answer comes through
an ``Answers`` object whose query function is the only I/O, injected by exporter/promread.py.

The queries aggregate ``by (tier)`` over the whole fleet: one query answers every tier, and the
work of reading 1,000 instances is Prometheus's. Plan figures are written into the PromQL as
constants from the config, and recorded series are written out, so no rules need be loaded.
"""
from __future__ import annotations

import math
import re
import threading
from typing import Callable, Generic, Iterable, Mapping, Sequence, TypeVar

from . import engines as I
from .engines import ENGINES
from .inputs import INPUTS
from . import catalogue
from .catalogue import ENGINE_TARGETS, PLAN_FIGURES, PODDED_EXPORTERS, written_out
from .config import format_duration
from .model import Config
from .window import Asks, Quantity

Labels = Mapping[str, str]
Result = Sequence[tuple[Labels, float]]
Query = Callable[[str], Result]
T = TypeVar("T")

SOURCE = "prometheus"  # every row's `source` in this mode: the PromQL's `or` branches do not say which held


class Memo(Generic[T]):
    """Answers by expression, each asked once; a failure is remembered and raised again, not asked again.
    Safe for several threads (two asking one expression at once may both send it)."""

    def __init__(self, ask: Callable[[str], T], known: Mapping[str, T] | None = None) -> None:
        self._ask = ask
        self._known: dict[str, T] = dict(known or {})
        self._failed: dict[str, Exception] = {}
        self._lock = threading.Lock()

    def get(self, expr: str) -> T:
        with self._lock:
            hit, failed = self._known.get(expr), self._failed.get(expr)
        if failed is not None:
            raise failed
        if hit is not None:
            return hit
        try:
            result = self._ask(expr)
        except Exception as e:
            with self._lock:
                self._failed[expr] = e
            raise
        with self._lock:
            self._known[expr] = result
        return result

    def asked(self) -> list[str]:
        """Every expression asked so far, answered or not."""
        with self._lock:
            return list(self._known) + list(self._failed)


class Answers:
    """Query results of one cycle, by expression. Prefetched concurrently, or asked when first needed."""

    def __init__(self, query: Query, known: Mapping[str, Result] | None = None) -> None:
        self._memo: Memo[Result] = Memo(query, known)
        self._index: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], float]] = {}
        self._lock = threading.Lock()

    def get(self, expr: str) -> Result:
        return self._memo.get(expr)

    def by(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        """``expr``'s answer keyed by ``labels``: indexed once per cycle, as every instance of a tier looks up its
        own value in it (a fresh index per lookup made a cycle quadratic in the instances)."""
        key = (expr, labels)
        with self._lock:
            index = self._index.get(key)
        if index is None:
            index = {tuple(m.get(k, "") for k in labels): v for m, v in self.get(expr)}
            with self._lock:
                self._index[key] = index
        return index


# ---------------------------------------------------------------- PromQL, from the catalogue


def _constant(config: Config, get: Callable[..., float]) -> str:
    """A plan figure of every tier as a vector labelled by tier, written into the query."""
    parts = [f'label_replace(vector({float(get(t.plan))!r}), "tier", "{name}", "", "")'
             for name, t in config.tiers.items()]
    return "(" + " or ".join(parts) + ")"


def _window(promql: str, seconds: float, offset: float = 0.0) -> str:
    w = format_duration(seconds)
    promql = promql.replace("[{w}]", f"[{w}] offset {format_duration(offset)}" if offset else f"[{w}]")
    return promql.replace("{w}", w).replace("{ws}", f"{seconds:g}")


def windowed(promql: str, seconds: float) -> str:
    """A catalogue PromQL over ``seconds`` (its ``{w}`` filled in)."""
    return _window(promql, seconds)


def inline(promql: str, config: Config, seconds: float) -> str:
    """A catalogue PromQL with what the rules would record written out, over ``seconds``."""
    return _window(written_out(promql, {key: _constant(config, get) for key, _, get in PLAN_FIGURES}), seconds)


def row_queries(config: Config, seconds: float) -> dict[str, tuple[str, str | None]]:
    """row key -> (value PromQL, evidence PromQL), for the rows that have PromQL."""
    return {r.key: (inline(r.promql, config, seconds),
                    inline(r.evidence, config, seconds) if r.evidence else None)
            for r in catalogue.ROWS if not r.gauge_only}


def _selector(tier: str, label: str, instances: Sequence[str] | None) -> str:
    parts = [f'tier="{tier}"']
    if instances is not None:
        # a regex of the exact names, as a PromQL string: backslashes and quotes escaped once more
        alternatives = "|".join(re.escape(i) for i in instances).replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'{label}=~"{alternatives}"')
    return "{" + ", ".join(parts) + "}"


def quantile_expr(key: str, q: float, by: str, seconds: float, offset: float = 0.0, selector: str = "") -> str:
    return _window(f"histogram_quantile({q:g}, sum by ({by}, le) ({I.bucket_rate(key, selector)}))", seconds, offset)


def count_expr(key: str, by: str, seconds: float, offset: float = 0.0, selector: str = "") -> str:
    return _window(f"sum by ({by}) ({I.count_increase(key, selector)})", seconds, offset)


def up_expr(label: str) -> str:
    """1 or 0 per engine target of each tier seen within the catalogue's ENGINE_SEEN, by ``label``."""
    return f"max by (tier, {label}) (up and on (job, instance) {ENGINE_TARGETS})"


def reasons_expr(seconds: float) -> str:
    # the engines that label their finished requests with the reason, under one label name
    parts = [f"sum by (tier, finished_reason) (increase({e.names['requests_finished'][0]}[{{w}}]))"
             for e in ENGINES if e.finished_reason_label == "finished_reason" and e.names.get("requests_finished")]
    return _window(" or ".join(parts), seconds)


def gpu_models_expr(label: str) -> tuple[str, str]:
    """(GPUs held by engine pods, by the engine's tier and ``label``; GPUs of pod-less exporters, by theirs)."""
    carry = "tier" if label in ("namespace", "pod") else f"tier, {label}"
    engines = I.instant("requests_running", '{pod!=""}')
    owned = (f'group by (tier, {label}, modelName) (group by (namespace, pod, modelName) '
             f'({{__name__=~"DCGM_FI_.+", pod!="", modelName!=""}}) * on (namespace, pod) group_left ({carry}) '
             f'group by (namespace, pod, {carry}) ({engines}))')
    unmapped = (f'group by (tier, instance, modelName) ({{__name__=~"DCGM_FI_.+", pod="", modelName!=""}} '
                f'unless on (instance) {PODDED_EXPORTERS})')
    return owned, unmapped


# ---------------------------------------------------------------- the view


class PromTierView:
    """One tier as a Prometheus sees it over ``seconds`` (ending ``offset`` ago): a TierView."""

    def __init__(self, tier: str, answers: Answers, seconds: float, interval: float, label: str = "instance",
                 offset: float = 0.0, up: Mapping[str, bool] | None = None) -> None:
        self._tier, self.answers, self.seconds, self.interval = tier, answers, seconds, interval
        self.label, self.offset = label, offset
        if up is None:
            up = {k[1]: v > 0 for k, v in answers.by(up_expr(label), "tier", label).items() if k[0] == tier}
        self._up = dict(sorted(up.items()))
        self._up_now = tuple(i for i, ok in self._up.items() if ok)  # asked for every instance: kept

    @property
    def tier(self) -> str:
        return self._tier

    @property
    def instances(self) -> tuple[str, ...]:
        return tuple(self._up)

    def up(self) -> tuple[str, ...]:
        return self._up_now

    def down(self) -> tuple[str, ...]:
        return tuple(i for i, ok in self._up.items() if not ok)

    def halves(self) -> tuple["PromTierView", "PromTierView"]:
        half = self.seconds / 2
        return (PromTierView(self._tier, self.answers, half, self.interval, self.label, self.offset + half, self._up),
                PromTierView(self._tier, self.answers, half, self.interval, self.label, self.offset, self._up))

    def span(self) -> float:
        # Prometheus holds the whole window wherever the tier has instances at all
        return self.seconds if self._up else 0.0

    def scrapes(self) -> int:
        return len(self._up) * max(2, int(self.seconds / self.interval))

    def warming(self) -> str | None:
        return None  # Prometheus holds the whole window already

    def gpu_failure(self) -> str | None:
        return None  # a failed GPU exporter shows as its rows' missing series

    def error(self, instance: str) -> str | None:
        return "Prometheus's last scrape of it failed (its up series is 0)" if self._up.get(instance) is False else None

    def gpu_models(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        owned, unmapped = gpu_models_expr(self.label)
        for expr, label in ((owned, self.label), (unmapped, "instance")):
            for (tier, inst, model), _ in self.answers.by(expr, "tier", label, "modelName").items():
                if tier == self._tier:
                    out.setdefault(inst, set()).add(model)
        return out

    def _reasons(self) -> dict[str, float]:
        return {f"requests_finished_reason:{r or 'unknown'}": v
                for (tier, r), v in self.answers.by(reasons_expr(self.seconds), "tier", "finished_reason").items()
                if tier == self._tier}

    def counter_keys(self, prefix: str) -> set[str]:
        if prefix != "requests_finished_reason:":
            raise ValueError(f"the Prometheus-backed view has no counter keys for {prefix!r}")
        return set(self._reasons())

    def increase(self, key: str) -> float | None:
        if key.startswith("requests_finished_reason:"):
            return self._reasons().get(key)
        expr = _window(f"sum by (tier) ({I.increase(key)})", self.seconds, self.offset)
        return self.answers.by(expr, "tier").get((self._tier,))

    def quantile(self, key: str, q: float, instances: Iterable[str] | None = None) -> Quantity:
        names = None if instances is None else sorted(instances)
        if names is not None and set(names) == set(self.up()):
            names = None  # the tier's own
        if names is None:
            qs, ns = (self.answers.by(quantile_expr(key, q, "tier", self.seconds, self.offset), "tier"),
                      self.answers.by(count_expr(key, "tier", self.seconds, self.offset), "tier"))
            k: tuple[str, ...] = (self._tier,)
        elif len(names) == 1:
            by = f"tier, {self.label}"
            qs = self.answers.by(quantile_expr(key, q, by, self.seconds, self.offset), "tier", self.label)
            ns = self.answers.by(count_expr(key, by, self.seconds, self.offset), "tier", self.label)
            k = (self._tier, names[0])
        else:
            sel = _selector(self._tier, self.label, names)
            qs = self.answers.by(quantile_expr(key, q, "tier", self.seconds, self.offset, sel), "tier")
            ns = self.answers.by(count_expr(key, "tier", self.seconds, self.offset, sel), "tier")
            k = (self._tier,)
        n, v = ns.get(k), qs.get(k)
        what = INPUTS[key].what if key in INPUTS else f"{key} histogram"
        if n is None or v is None:
            return Quantity(None, 0, reason=f"Prometheus has no {what} ({', '.join(I.all_names(key))}) "
                                            f"for this tier over the window" if key in INPUTS else
                            f"Prometheus has no {what} for this tier over the window")
        if not math.isfinite(n):
            return Quantity(None, 0, reason=f"the {what} bucket counts overflow")
        count = int(round(n))
        if count <= 0:
            return Quantity(None, 0, reason=f"nothing observed by the {what} in the window")
        if math.isnan(v):
            return Quantity(None, count, reason=f"the {what}'s buckets give no quantile (no +Inf bucket or one bucket)")
        return Quantity(v, count)


def prefetch(config: Config, seconds: float, label: str, asks: Asks) -> list[str]:
    """The queries of one cycle, sent at once: every row's, the instances up, and what ``asks`` (the
    questions findings declare) puts to a window. A question not declared is asked when first needed."""
    out = [e for pair in row_queries(config, seconds).values() for e in pair if e]
    out.append(up_expr(label))
    if asks.finish_reasons:
        out.append(reasons_expr(seconds))
    if asks.gpu_models:
        out += gpu_models_expr(label)
    half = seconds / 2
    for p in asks.percentiles:
        spans = [(seconds, 0.0)] + ([(half, half), (half, 0.0)] if p.halves else [])
        for by in ("tier", f"tier, {label}") if p.per_instance else ("tier",):
            for span, off in spans:
                out += [quantile_expr(p.key, p.q, by, span, off), count_expr(p.key, by, span, off)]
    return list(dict.fromkeys(out))


def rows(config: Config, answers: Answers, seconds: float) -> dict[str, dict[str, Quantity]]:
    """tier -> row key -> the row's value as Prometheus computes it."""
    queries = row_queries(config, seconds)
    out: dict[str, dict[str, Quantity]] = {name: {} for name in config.tiers}
    for row in catalogue.ROWS:
        if row.key not in queries:
            for name in config.tiers:
                out[name][row.key] = Quantity(None, reason="not available with source: prometheus: fleetwatch "
                                                           "computes it from scrape-to-scrape changes")
            continue
        value_expr, evidence_expr = queries[row.key]
        try:
            values = answers.by(value_expr, "tier")
            samples = answers.by(evidence_expr, "tier") if evidence_expr else {}
        except Exception as e:  # noqa: BLE001 - one failed query leaves its row unknown, not the tier
            for name in config.tiers:
                out[name][row.key] = Quantity(None, reason=f"the Prometheus query for this row failed: {e}"[:300])
            continue
        for name in config.tiers:
            v = values.get((name,))
            n = samples.get((name,))
            count = int(round(n)) if n is not None and math.isfinite(n) else 0
            if v is None:
                out[name][row.key] = Quantity(None, 0, reason=f"Prometheus returned no series for this row on tier "
                                                              f"{name} over {format_duration(seconds)} (its inputs "
                                                              f"are missing or have fewer than two samples)")
            elif math.isnan(v):
                out[name][row.key] = Quantity(None, count, reason="no data in the window (the PromQL gives NaN: "
                                                                  "no observations, or 0/0)")
            else:
                out[name][row.key] = Quantity(v, count, source=SOURCE)
    return out
