"""vLLM /metrics (V0 and V1, 0.4 -> 0.33) -> canonical engine inputs.

The names read, and the renames between versions (newest first, the old one ignored when both
exist), are ``NAMES`` below. V0's gpu_prefix_cache_hit_rate gauge reads -1 for "no data" and is
treated as missing.
"""
from __future__ import annotations

import math

from .. import exposition
from ..model import EngineSample, LoraState
from . import PROCESS_START, Engine, by_name, mean_of_valid, process_start, read_inputs, split_by_reason, wanted

# canonical input -> vLLM's names for it, newest first
NAMES: dict[str, tuple[str, ...]] = {
    "requests_finished": ("vllm:request_success_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
    "preemptions": ("vllm:num_preemptions_total",),
    # 0.9 renamed gpu_prefix_cache_* to prefix_cache_*
    "prefix_cache_queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "spec_draft_tokens": ("vllm:spec_decode_num_draft_tokens_total",),
    "spec_accepted_tokens": ("vllm:spec_decode_num_accepted_tokens_total",),
    "requests_running": ("vllm:num_requests_running",),
    "requests_waiting": ("vllm:num_requests_waiting",),
    # 0.9 renamed gpu_cache_usage_perc (kept until 0.10.x, hidden in 0.11)
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    # V0's rate gauges, read where the counters are absent; they read -1 for "no data"
    "prefix_cache_hit_rate": ("vllm:gpu_prefix_cache_hit_rate",),
    "spec_acceptance_rate": ("vllm:spec_decode_draft_acceptance_rate",),
    "ttft_seconds": ("vllm:time_to_first_token_seconds",),
    # 0.10.2 renamed time_per_output_token_seconds (in V1 it was already ITL)
    "itl_seconds": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "prompt_tokens_per_request": ("vllm:request_prompt_tokens",),
    "generation_tokens_per_request": ("vllm:request_generation_tokens",),
    "e2e_seconds": ("vllm:e2e_request_latency_seconds",),
    "queue_seconds": ("vllm:request_queue_time_seconds",),
    "prefill_seconds": ("vllm:request_prefill_time_seconds",),
    "decode_seconds": ("vllm:request_decode_time_seconds",),
}
PREFIXES = ("vllm:", PROCESS_START)
# the only lines split into labels and values
WANTED = wanted(NAMES, "vllm:lora_requests_info", "vllm:cache_config_info", PROCESS_START)


def parse(text: str) -> EngineSample:
    samples = exposition.parse(text, PREFIXES, WANTED)
    if not any(s.name != PROCESS_START for s in samples) and not exposition.has_prefix(text, PREFIXES[:1]):
        raise exposition.not_metrics(text, "vllm:")
    idx = by_name(samples)
    c = read_inputs(idx, NAMES, skip=_OWN)
    split_by_reason(c, idx.get(NAMES["requests_finished"][0], ()))
    # V0's rate gauges read -1 for "no data": only usable values are averaged, and only
    # where the counters that replaced them are absent
    for gauge, counter in (("prefix_cache_hit_rate", "prefix_cache_queries"), ("spec_acceptance_rate", "spec_draft_tokens")):
        if counter not in c.counters and counter not in c.invalid:
            rate = mean_of_valid(idx.get(NAMES[gauge][0], ()))
            if rate is not None:
                c.gauges[gauge] = rate
    process_start(idx, c.gauges)
    return EngineSample(engine="vllm", counters=c.counters, gauges=c.gauges, histograms=c.histograms,
                        lora=_lora(idx), kv_capacity_tokens=_kv_capacity(idx), invalid=frozenset(c.invalid))


_OWN = frozenset({"prefix_cache_hit_rate", "spec_acceptance_rate"})


def _lora(idx: dict[str, list[exposition.Sample]]) -> LoraState | None:
    series = idx.get("vllm:lora_requests_info")
    if not series:
        return None
    # A new series appears for each adapter set; the newest has the largest timestamp value.
    s = max(series, key=lambda x: x.value)
    raw = s.labels.get("max_lora", "0")
    try:
        max_lora = int(float(raw))
    except (ValueError, OverflowError):  # "inf" overflows int(); "nan" is a ValueError
        raise exposition.ExpositionError(f"vllm:lora_requests_info has max_lora={raw[:40]!r}, not a count") from None
    if max_lora < 0:
        raise exposition.ExpositionError(f"vllm:lora_requests_info has max_lora={raw[:40]!r}, not a count")
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
    return total if total > 0 and math.isfinite(total) else None


ENGINE = Engine(
    "vllm", "vLLM", "vllm:", 8000, NAMES, parse,
    gauge_promql={"spec_acceptance_rate": "avg_over_time(vllm:spec_decode_draft_acceptance_rate[{w}]) >= 0"},
    finished_reason_label="finished_reason", lora_info="vllm:lora_requests_info")
