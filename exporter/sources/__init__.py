"""One module per source; each has a pure ``parse(text) -> canonical`` and uses exporter.fetch.

Canonical engine inputs (the only names evaluation ever sees):

counters   requests_finished, requests_finished_reason:<reason>, prompt_tokens,
           generation_tokens, preemptions, prefix_cache_queries, prefix_cache_hits,
           spec_draft_tokens, spec_accepted_tokens
gauges     requests_running, requests_waiting, kv_cache_usage, prefix_cache_hit_rate
           (engines with only a gauge), spec_acceptance_rate (engines with only a gauge)
histograms ttft_seconds, itl_seconds, prompt_tokens_per_request, generation_tokens_per_request
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

from ..exposition import Sample
from ..model import Histogram


def sum_of(samples: Iterable[Sample], name: str) -> float | None:
    """Sum every series of ``name`` (over engine, model_name, ...); None when absent."""
    total, seen = 0.0, False
    for s in samples:
        if s.name == name and not math.isnan(s.value):
            total += s.value
            seen = True
    return total if seen else None


def by_name(samples: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.name].append(s)
    return out


def histogram(index: dict[str, list[Sample]], family: str) -> Histogram | None:
    """Sum a histogram family over all its non-``le`` labels. None when it has no +Inf bucket."""
    buckets: dict[float, float] = defaultdict(float)
    for s in index.get(family + "_bucket", ()):
        le = s.labels.get("le")
        if le is None or math.isnan(s.value):
            continue
        try:
            bound = float(le)
        except ValueError:
            continue
        buckets[bound] += s.value
    if not buckets or math.inf not in buckets:
        return None
    count = sum(s.value for s in index.get(family + "_count", ()))
    total = sum(s.value for s in index.get(family + "_sum", ()))
    return Histogram(tuple(sorted(buckets.items())), count if index.get(family + "_count") else buckets[math.inf],
                     total)


def first_present(index: dict[str, list[Sample]], *names: str) -> str | None:
    """The first name that exists in the scrape: newest names are listed first, so an old
    alias exposed beside its replacement is never read (never added together)."""
    for n in names:
        if n in index:
            return n
    return None


def put(target: dict[str, float], index: dict[str, list[Sample]], canonical: str, *names: str) -> None:
    """Store the sum of the first present of ``names`` (newest first) under ``canonical``."""
    name = first_present(index, *names)
    if name is not None:
        v = sum_of(index[name], name)
        if v is not None:
            target[canonical] = v


def histograms(index: dict[str, list[Sample]],
               spec: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, Histogram]:
    """canonical -> histogram of the first present family (newest first) for each spec entry."""
    out: dict[str, Histogram] = {}
    for canonical, families in spec:
        fam = first_present(index, *(f + "_bucket" for f in families))
        if fam is not None:
            h = histogram(index, fam[: -len("_bucket")])
            if h is not None:
                out[canonical] = h
    return out
