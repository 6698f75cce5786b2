"""SGLang /metrics (0.4 -> 0.5.23) -> canonical engine inputs.

SGLang has no finished-reason label, so reason shares stay unknown. Its preemption is called
retraction. Prefix-cache queries are prompt tokens and hits are cached tokens (0.4.6+);
0.4.0 has only the cache_hit_rate gauge.
"""
from __future__ import annotations

from .. import exposition
from ..model import EngineSample
from . import PROCESS_START, Engine, by_name, mean_gauge, mean_of_valid, read_inputs, sum_of, wanted, process_start

# canonical input -> SGLang's names for it, newest first
NAMES: dict[str, tuple[str, ...]] = {
    # 0.4.0 has no request counter; every finished request observes the e2e histogram
    "requests_finished": ("sglang:num_requests_total", "sglang:e2e_request_latency_seconds_count"),
    "prompt_tokens": ("sglang:prompt_tokens_total",),
    "generation_tokens": ("sglang:generation_tokens_total",),
    "preemptions": ("sglang:num_retracted_requests_total", "sglang:total_retracted_reqs"),
    # its prefix-cache queries are its prompt tokens, its hits the cached tokens (0.4.6+)
    "prefix_cache_queries": ("sglang:prompt_tokens_total",),
    "prefix_cache_hits": ("sglang:cached_tokens_total",),
    "requests_running": ("sglang:num_running_reqs",),
    "requests_waiting": ("sglang:num_queue_reqs",),
    "kv_cache_usage": ("sglang:token_usage",),
    "prefix_cache_hit_rate": ("sglang:cache_hit_rate",),
    "spec_acceptance_rate": ("sglang:spec_accept_rate",),
    "ttft_seconds": ("sglang:time_to_first_token_seconds",),
    # 0.4.6 renamed time_per_output_token_seconds
    "itl_seconds": ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
    "prompt_tokens_per_request": ("sglang:prompt_tokens_histogram",),
    "generation_tokens_per_request": ("sglang:generation_tokens_histogram",),
    "e2e_seconds": ("sglang:e2e_request_latency_seconds",),
}
PREFIXES = ("sglang:", PROCESS_START)
# the only lines split into labels and values
WANTED = wanted(NAMES, "sglang:spec_accept_length", "sglang:max_total_num_tokens", PROCESS_START)


def parse(text: str) -> EngineSample:
    samples = exposition.parse(text, PREFIXES, WANTED)
    if not any(s.name != PROCESS_START for s in samples) and not exposition.has_prefix(text, PREFIXES[:1]):
        raise exposition.not_metrics(text, "sglang:")
    idx = by_name(samples)
    c = read_inputs(idx, NAMES, skip=_OWN)
    # one token_usage series per TP/DP rank: their mean is the pool's usage; likewise the rates
    mean_gauge(c.gauges, idx, "kv_cache_usage", *NAMES["kv_cache_usage"], invalid=c.invalid)
    if "prefix_cache_hits" not in c.counters:  # 0.4.0: only the gauge
        mean_gauge(c.gauges, idx, "prefix_cache_hit_rate", *NAMES["prefix_cache_hit_rate"], invalid=c.invalid)
    # spec_accept_rate reads 0.0 when speculative decoding is off; only trust it with drafts
    length = mean_of_valid(idx.get("sglang:spec_accept_length", ()))
    rate = mean_of_valid(idx.get(NAMES["spec_acceptance_rate"][0], ()))
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


ENGINE = Engine(
    "sglang", "SGLang", "sglang:", 30000, NAMES, parse,
    # its rate gauge reads 0 while speculative decoding is off: only with drafts
    gauge_promql={"spec_acceptance_rate": "(avg_over_time(sglang:spec_accept_rate[{w}]) and "
                                          "avg_over_time(sglang:spec_accept_length[{w}]) > 0)"})
