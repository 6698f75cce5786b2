"""vLLM /metrics (V0 and V1, 0.4 -> 0.33) -> canonical engine inputs.

The names read, and the renames between versions (newest first, the old one ignored when both
exist), are the table in exporter/inputs.py. V0's gpu_prefix_cache_hit_rate gauge reads -1 for
"no data" and is treated as missing.
"""
from __future__ import annotations

import math

from .. import exposition
from ..model import EngineSample, LoraState
from ..inputs import names
from . import PROCESS_START, by_name, mean_of_valid, process_start, read_inputs, wanted

PREFIXES = ("vllm:", PROCESS_START)
NAMES = wanted("vllm", "vllm:lora_requests_info", "vllm:cache_config_info", PROCESS_START)  # the only lines split into labels and values


def parse(text: str) -> EngineSample:
    samples = exposition.parse(text, PREFIXES, NAMES)
    if not any(s.name != PROCESS_START for s in samples) and not exposition.has_prefix(text, PREFIXES[:1]):
        raise exposition.not_metrics(text, "vllm:")
    idx = by_name(samples)
    c = read_inputs(idx, "vllm", skip=_OWN)
    finished = idx.get("vllm:request_success_total", [])
    if "requests_finished" in c.counters:  # the same series, split by finished_reason
        for s in finished:
            key = f"requests_finished_reason:{s.labels.get('finished_reason', 'unknown')}"
            c.counters[key] = c.counters.get(key, 0.0) + s.value
    # V0's rate gauges read -1 for "no data": only usable values are averaged, and only
    # where the counters that replaced them are absent
    for gauge, counter in (("prefix_cache_hit_rate", "prefix_cache_queries"), ("spec_acceptance_rate", "spec_draft_tokens")):
        if counter not in c.counters and counter not in c.invalid:
            rate = mean_of_valid(idx.get(names(gauge, "vllm")[0], ()))
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
