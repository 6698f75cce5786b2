"""TensorRT-LLM's OpenAI server (``trtllm-serve``) /metrics -> canonical engine inputs.

Its collector (``tensorrt_llm/metrics/collector.py``, prefix ``trtllm_``, labels ``model_name`` and
``engine_type``) was modelled on vLLM 0.10's: the same latency histograms, a finished-request
counter split by ``finished_reason``, running and waiting gauges, a KV cache utilization gauge
(used / max blocks). Prefix-cache queries are its prompt tokens and hits the prompt tokens served
from the KV cache. It has no preemption counter and no prompt- or output-length histogram: the KV
eviction row and the workload's length percentiles are unknown on it, and say so. Per-request
metrics need ``return_perf_metrics``, the iteration gauges ``enable_iter_perf_stats``.
"""
from __future__ import annotations

import math

from .. import exposition
from ..model import EngineSample
from . import PROCESS_START, Engine, by_name, process_start, read_inputs, split_by_reason, wanted

# canonical input -> TensorRT-LLM's names for it
NAMES: dict[str, tuple[str, ...]] = {
    "requests_finished": ("trtllm_request_success_total",),
    "prompt_tokens": ("trtllm_prompt_tokens_total",),
    "generation_tokens": ("trtllm_generation_tokens_total",),
    "prefix_cache_queries": ("trtllm_prompt_tokens_total",),
    "prefix_cache_hits": ("trtllm_prompt_cached_tokens_total",),
    "spec_draft_tokens": ("trtllm_spec_decode_num_draft_tokens_total",),
    "spec_accepted_tokens": ("trtllm_spec_decode_num_accepted_tokens_total",),
    "requests_running": ("trtllm_num_requests_running",),
    "requests_waiting": ("trtllm_num_requests_waiting",),
    "kv_cache_usage": ("trtllm_kv_cache_utilization",),
    "ttft_seconds": ("trtllm_time_to_first_token_seconds",),
    "itl_seconds": ("trtllm_time_per_output_token_seconds",),
    "e2e_seconds": ("trtllm_e2e_request_latency_seconds",),
}
PREFIXES = ("trtllm_", PROCESS_START)
WANTED = wanted(NAMES, "trtllm_kv_cache_max_blocks", "trtllm_kv_cache_tokens_per_block", PROCESS_START)


def parse(text: str) -> EngineSample:
    samples = exposition.parse(text, PREFIXES, WANTED)
    if not any(s.name != PROCESS_START for s in samples) and not exposition.has_prefix(text, PREFIXES[:1]):
        raise exposition.not_metrics(text, "trtllm_")
    idx = by_name(samples)
    c = read_inputs(idx, NAMES)
    split_by_reason(c, idx.get(NAMES["requests_finished"][0], ()))
    process_start(idx, c.gauges)
    return EngineSample(engine="trtllm", counters=c.counters, gauges=c.gauges, histograms=c.histograms,
                        kv_capacity_tokens=_kv_capacity(idx), invalid=frozenset(c.invalid))


def _kv_capacity(idx: dict[str, list[exposition.Sample]]) -> float | None:
    blocks, per = idx.get("trtllm_kv_cache_max_blocks", ()), idx.get("trtllm_kv_cache_tokens_per_block", ())
    if len(blocks) != 1 or len(per) != 1:
        return None
    total = blocks[0].value * per[0].value
    return total if total > 0 and math.isfinite(total) else None


ENGINE = Engine("trtllm", "TensorRT-LLM", "trtllm_", 8000, NAMES, parse, finished_reason_label="finished_reason")
