"""vLLM /metrics (V0 and V1, 0.4 -> 0.33) -> canonical engine inputs.

Renames handled (newest first, the old one ignored when both exist):
  kv_cache_usage_perc <- gpu_cache_usage_perc (0.9)
  prefix_cache_{queries,hits}_total <- gpu_prefix_cache_{queries,hits}_total (0.9)
  inter_token_latency_seconds <- time_per_output_token_seconds (0.10.2; the V1 TPOT was ITL)
V0's gpu_prefix_cache_hit_rate gauge reads -1 for "no data" and is treated as missing.
"""
from __future__ import annotations

import math

from .. import exposition
from ..model import EngineSample, LoraState
from . import by_name, first_present, histograms, put

PREFIXES = ("vllm:",)


def parse(text: str) -> EngineSample:
    samples = exposition.parse(text, PREFIXES)
    if not samples:
        raise exposition.ExpositionError("no vllm: metrics in the body")
    idx = by_name(samples)
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}

    def counter(canonical: str, *names: str) -> None:
        put(counters, idx, canonical, *names)

    def gauge(canonical: str, *names: str) -> None:
        put(gauges, idx, canonical, *names)

    for s in idx.get("vllm:request_success_total", ()):
        reason = s.labels.get("finished_reason", "unknown")
        key = f"requests_finished_reason:{reason}"
        counters[key] = counters.get(key, 0.0) + s.value
    if "vllm:request_success_total" in idx:
        counters["requests_finished"] = sum(s.value for s in idx["vllm:request_success_total"])
    counter("prompt_tokens", "vllm:prompt_tokens_total")
    counter("generation_tokens", "vllm:generation_tokens_total")
    counter("preemptions", "vllm:num_preemptions_total")
    qname = first_present(idx, "vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
    if qname is not None:
        hname = qname.replace("queries", "hits")
        counter("prefix_cache_queries", qname)
        counter("prefix_cache_hits", hname)
    counter("spec_draft_tokens", "vllm:spec_decode_num_draft_tokens_total")
    counter("spec_accepted_tokens", "vllm:spec_decode_num_accepted_tokens_total")

    gauge("requests_running", "vllm:num_requests_running")
    gauge("requests_waiting", "vllm:num_requests_waiting")
    gauge("kv_cache_usage", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    if "prefix_cache_queries" not in counters:
        rates = [s.value for s in idx.get("vllm:gpu_prefix_cache_hit_rate", ()) if s.value >= 0]
        if rates:
            gauges["prefix_cache_hit_rate"] = sum(rates) / len(rates)
    if "spec_draft_tokens" not in counters:
        rates = [s.value for s in idx.get("vllm:spec_decode_draft_acceptance_rate", ()) if s.value >= 0]
        if rates:
            gauges["spec_acceptance_rate"] = sum(rates) / len(rates)

    hists = histograms(idx, (
        ("ttft_seconds", ("vllm:time_to_first_token_seconds",)),
        ("itl_seconds", ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")),
        ("prompt_tokens_per_request", ("vllm:request_prompt_tokens",)),
        ("generation_tokens_per_request", ("vllm:request_generation_tokens",)),
        ("e2e_seconds", ("vllm:e2e_request_latency_seconds",)),
    ))

    return EngineSample(engine="vllm", counters=counters, gauges=gauges, histograms=hists,
                        lora=_lora(idx), kv_capacity_tokens=_kv_capacity(idx))


def _lora(idx: dict[str, list[exposition.Sample]]) -> LoraState | None:
    series = idx.get("vllm:lora_requests_info")
    if not series:
        return None
    # A new series appears for each adapter set; the newest has the largest timestamp value.
    s = max(series, key=lambda x: x.value)
    try:
        max_lora = int(float(s.labels.get("max_lora", "0")))
    except ValueError:
        max_lora = 0
    if max_lora == 0:  # V0 always exposes the family, with max_lora="0" when LoRA is off
        return None

    def split(v: str) -> frozenset[str]:
        return frozenset(a for a in v.split(",") if a)

    return LoraState(max_lora, split(s.labels.get("running_lora_adapters", "")),
                     split(s.labels.get("waiting_lora_adapters", "")))


def _kv_capacity(idx: dict[str, list[exposition.Sample]]) -> float | None:
    total = 0.0
    for s in idx.get("vllm:cache_config_info", ()):
        lb = s.labels
        try:
            if "kv_cache_size_tokens" in lb:
                total += float(lb["kv_cache_size_tokens"])
            else:
                total += float(lb["num_gpu_blocks"]) * float(lb["block_size"])
        except (KeyError, ValueError):
            continue
    return total if total > 0 and not math.isnan(total) else None
