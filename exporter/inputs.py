"""Canonical engine inputs and the raw names each engine version exposes for them.

One table, read twice: the source parsers store the first name present in a scrape (newest
first) under the canonical name, and the catalogue renders the same list to PromQL as
``rate(new[w]) or rate(old[w])``. ``or`` keeps the left side's series where both carry the same
labels, so in both renderings the newest name wins and an old alias is never added to its
replacement. Pure data and string helpers; no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Input:
    canonical: str
    kind: Kind
    names: Mapping[str, tuple[str, ...]]  # engine -> raw names, newest first (histograms: family names)
    what: str  # in words, for reasons

    def all_names(self) -> tuple[str, ...]:
        return tuple(n for engine in ("vllm", "sglang") for n in self.names.get(engine, ()))


_INPUTS = (
    Input("requests_finished", "counter",
          {"vllm": ("vllm:request_success_total",),
           # SGLang 0.4.0 has no request counter; every finished request observes the e2e histogram
           "sglang": ("sglang:num_requests_total", "sglang:e2e_request_latency_seconds_count")},
          "finished-request counter"),
    Input("prompt_tokens", "counter", {"vllm": ("vllm:prompt_tokens_total",), "sglang": ("sglang:prompt_tokens_total",)},
          "prompt-token counter"),
    Input("generation_tokens", "counter",
          {"vllm": ("vllm:generation_tokens_total",), "sglang": ("sglang:generation_tokens_total",)},
          "generation-token counter"),
    Input("preemptions", "counter",
          {"vllm": ("vllm:num_preemptions_total",),
           "sglang": ("sglang:num_retracted_requests_total", "sglang:total_retracted_reqs")},
          "preemption (SGLang: retraction) counter"),
    # vLLM 0.9 renamed gpu_prefix_cache_* to prefix_cache_*; SGLang's queries are its prompt tokens
    Input("prefix_cache_queries", "counter",
          {"vllm": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
           "sglang": ("sglang:prompt_tokens_total",)},
          "prefix-cache query counter"),
    Input("prefix_cache_hits", "counter",
          {"vllm": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
           "sglang": ("sglang:cached_tokens_total",)},
          "prefix-cache hit counter"),
    Input("spec_draft_tokens", "counter", {"vllm": ("vllm:spec_decode_num_draft_tokens_total",)},
          "speculative-decoding draft-token counter"),
    Input("spec_accepted_tokens", "counter", {"vllm": ("vllm:spec_decode_num_accepted_tokens_total",)},
          "speculative-decoding accepted-token counter"),
    Input("requests_running", "gauge", {"vllm": ("vllm:num_requests_running",), "sglang": ("sglang:num_running_reqs",)},
          "running-requests gauge"),
    Input("requests_waiting", "gauge", {"vllm": ("vllm:num_requests_waiting",), "sglang": ("sglang:num_queue_reqs",)},
          "waiting-requests gauge"),
    # vLLM 0.9 renamed gpu_cache_usage_perc (kept until 0.10.x, hidden in 0.11)
    Input("kv_cache_usage", "gauge",
          {"vllm": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), "sglang": ("sglang:token_usage",)},
          "KV cache usage gauge"),
    # gauges of engines without the counters (vLLM V0, SGLang 0.4.0); V0 reads -1 for "no data"
    Input("prefix_cache_hit_rate", "gauge",
          {"vllm": ("vllm:gpu_prefix_cache_hit_rate",), "sglang": ("sglang:cache_hit_rate",)},
          "prefix-cache hit-rate gauge"),
    Input("spec_acceptance_rate", "gauge",
          {"vllm": ("vllm:spec_decode_draft_acceptance_rate",), "sglang": ("sglang:spec_accept_rate",)},
          "speculative-decoding acceptance gauge"),
    Input("ttft_seconds", "histogram",
          {"vllm": ("vllm:time_to_first_token_seconds",), "sglang": ("sglang:time_to_first_token_seconds",)},
          "time-to-first-token histogram"),
    # vLLM 0.10.2 / SGLang 0.4.6 renamed time_per_output_token_seconds (in V1 it was already ITL)
    Input("itl_seconds", "histogram",
          {"vllm": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
           "sglang": ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds")},
          "inter-token-latency histogram"),
    Input("prompt_tokens_per_request", "histogram",
          {"vllm": ("vllm:request_prompt_tokens",), "sglang": ("sglang:prompt_tokens_histogram",)},
          "prompt-length histogram"),
    Input("generation_tokens_per_request", "histogram",
          {"vllm": ("vllm:request_generation_tokens",), "sglang": ("sglang:generation_tokens_histogram",)},
          "output-length histogram"),
    Input("e2e_seconds", "histogram",
          {"vllm": ("vllm:e2e_request_latency_seconds",), "sglang": ("sglang:e2e_request_latency_seconds",)},
          "end-to-end latency histogram"),
)

INPUTS: Mapping[str, Input] = {i.canonical: i for i in _INPUTS}


def names(canonical: str, engine: str) -> tuple[str, ...]:
    """The raw names of ``canonical`` on ``engine``, newest first."""
    return INPUTS[canonical].names.get(engine, ())


# ---------------------------------------------------------------- PromQL renderings
# ``{w}`` stays a placeholder for the window, filled in by the rule generator.


def _either(template: str, canonical: str, suffix: str = "", selector: str = "") -> str:
    parts = [template.replace("{m}", n + suffix + selector) for n in INPUTS[canonical].all_names()]
    return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"


def rate(canonical: str) -> str:
    return _either("rate({m}[{w}])", canonical)


def increase(canonical: str) -> str:
    return _either("increase({m}[{w}])", canonical)


def delta(canonical: str) -> str:
    return _either("delta({m}[{w}])", canonical)


def avg_over_time(canonical: str) -> str:
    return _either("avg_over_time({m}[{w}])", canonical)


def bucket_rate(canonical: str, selector: str = "") -> str:
    """``selector`` (``{instance=~"..."}``) narrows every name, for per-instance panels."""
    return _either("rate({m}[{w}])", canonical, "_bucket", selector)


def count_increase(canonical: str, selector: str = "") -> str:
    """Observations of a histogram in the window: the increase of its ``_count``."""
    return _either("increase({m}[{w}])", canonical, "_count", selector)


def instant(canonical: str, selector: str = "") -> str:
    parts = [n + selector for n in INPUTS[canonical].all_names()]
    return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"
