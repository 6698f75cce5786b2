"""SGLang /metrics (0.4 -> 0.5.23) -> canonical engine inputs.

SGLang has no finished-reason label, so reason shares stay unknown. Its preemption is called
retraction. Prefix-cache queries are prompt tokens and hits are cached tokens (0.4.6+);
0.4.0 has only the cache_hit_rate gauge.
"""
from __future__ import annotations

from .. import exposition
from ..model import EngineSample
from ..inputs import names
from . import PROCESS_START, by_name, mean_gauge, mean_of_valid, read_inputs, sum_of, wanted, process_start

PREFIXES = ("sglang:", PROCESS_START)
NAMES = wanted("sglang", "sglang:spec_accept_length", "sglang:max_total_num_tokens", PROCESS_START)  # the only lines split into labels and values


def parse(text: str) -> EngineSample:
    samples = exposition.parse(text, PREFIXES, NAMES)
    if not any(s.name != PROCESS_START for s in samples) and not exposition.has_prefix(text, PREFIXES[:1]):
        raise exposition.not_metrics(text, "sglang:")
    idx = by_name(samples)
    c = read_inputs(idx, "sglang", skip=_OWN)
    # one token_usage series per TP/DP rank: their mean is the pool's usage; likewise the rates
    mean_gauge(c.gauges, idx, "kv_cache_usage", *names("kv_cache_usage", "sglang"), invalid=c.invalid)
    if "prefix_cache_hits" not in c.counters:  # 0.4.0: only the gauge
        mean_gauge(c.gauges, idx, "prefix_cache_hit_rate", *names("prefix_cache_hit_rate", "sglang"), invalid=c.invalid)
    # spec_accept_rate reads 0.0 when speculative decoding is off; only trust it with drafts
    length = mean_of_valid(idx.get("sglang:spec_accept_length", ()))
    rate = mean_of_valid(idx.get(names("spec_acceptance_rate", "sglang")[0], ()))
    if rate is not None and length is not None and length > 0:
        c.gauges["spec_acceptance_rate"] = rate
    try:
        cap = sum_of(idx.get("sglang:max_total_num_tokens", []), "sglang:max_total_num_tokens")
    except ValueError:
        cap = None
    process_start(idx, c.gauges)
    return EngineSample(engine="sglang", counters=c.counters, gauges=c.gauges, histograms=c.histograms,
                        kv_capacity_tokens=cap, invalid=frozenset(c.invalid))


_OWN = frozenset({"kv_cache_usage", "prefix_cache_hit_rate", "spec_acceptance_rate"})
