"""SGLang /metrics (0.4 -> 0.5.23) -> canonical engine inputs.

SGLang has no finished-reason label, so reason shares stay unknown. Its preemption is called
retraction. Prefix-cache queries are prompt tokens and hits are cached tokens (0.4.6+);
0.4.0 has only the cache_hit_rate gauge.
"""
from __future__ import annotations

from .. import exposition
from ..model import EngineSample
from . import by_name, histograms, put, sum_of

PREFIXES = ("sglang:",)


def parse(text: str) -> EngineSample:
    samples = exposition.parse(text, PREFIXES)
    if not samples:
        raise exposition.ExpositionError("no sglang: metrics in the body")
    idx = by_name(samples)
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}

    # 0.4.0 has no request counter; every finished request observes the e2e latency histogram
    put(counters, idx, "requests_finished", "sglang:num_requests_total", "sglang:e2e_request_latency_seconds_count")
    put(counters, idx, "prompt_tokens", "sglang:prompt_tokens_total")
    put(counters, idx, "generation_tokens", "sglang:generation_tokens_total")
    put(counters, idx, "preemptions", "sglang:num_retracted_requests_total", "sglang:total_retracted_reqs")
    if "sglang:cached_tokens_total" in idx and "prompt_tokens" in counters:
        put(counters, idx, "prefix_cache_hits", "sglang:cached_tokens_total")
        counters["prefix_cache_queries"] = counters["prompt_tokens"]
    else:
        put(gauges, idx, "prefix_cache_hit_rate", "sglang:cache_hit_rate")
    put(gauges, idx, "requests_running", "sglang:num_running_reqs")
    put(gauges, idx, "requests_waiting", "sglang:num_queue_reqs")
    usage = [s.value for s in idx.get("sglang:token_usage", ())]
    if usage:  # one series per TP/DP rank: their mean is the pool's usage
        gauges["kv_cache_usage"] = sum(usage) / len(usage)
    # spec_accept_rate reads 0.0 when speculative decoding is off; only trust it with drafts
    lengths = [s.value for s in idx.get("sglang:spec_accept_length", ())]
    rates = [s.value for s in idx.get("sglang:spec_accept_rate", ())]
    if rates and lengths and max(lengths) > 0:
        gauges["spec_acceptance_rate"] = sum(rates) / len(rates)

    hists = histograms(idx, (
        ("ttft_seconds", ("sglang:time_to_first_token_seconds",)),
        ("itl_seconds", ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds")),
        ("prompt_tokens_per_request", ("sglang:prompt_tokens_histogram",)),
        ("generation_tokens_per_request", ("sglang:generation_tokens_histogram",)),
        ("e2e_seconds", ("sglang:e2e_request_latency_seconds",)),
    ))
    cap = sum_of(idx.get("sglang:max_total_num_tokens", []), "sglang:max_total_num_tokens")
    return EngineSample(engine="sglang", counters=counters, gauges=gauges, histograms=hists,
                        kv_capacity_tokens=cap)
