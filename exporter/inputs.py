"""The canonical engine inputs: the only names evaluation ever sees.

Each engine's raw names for them live in its own module (``exporter/sources/<engine>.py``, its
``NAMES``, newest first); ``exporter/engines.py`` registers the engines and renders their names
to PromQL. Pure data; no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Input:
    canonical: str
    kind: Kind
    what: str  # in words, for reasons
    # False: named for the dashboards' PromQL only; the parsers skip its lines, so a scrape costs nothing more
    parsed: bool = True


_INPUTS = (
    Input("requests_finished", "counter", "finished-request counter"),
    Input("prompt_tokens", "counter", "prompt-token counter"),
    Input("generation_tokens", "counter", "generation-token counter"),
    Input("preemptions", "counter", "preemption (SGLang: retraction) counter"),
    Input("prefix_cache_queries", "counter", "prefix-cache query counter"),
    Input("prefix_cache_hits", "counter", "prefix-cache hit counter"),
    Input("spec_draft_tokens", "counter", "speculative-decoding draft-token counter"),
    Input("spec_accepted_tokens", "counter", "speculative-decoding accepted-token counter"),
    Input("requests_running", "gauge", "running-requests gauge"),
    Input("requests_waiting", "gauge", "waiting-requests gauge"),
    Input("kv_cache_usage", "gauge", "KV cache usage gauge"),
    # gauges of engines without the counters (vLLM V0, SGLang 0.4.0)
    Input("prefix_cache_hit_rate", "gauge", "prefix-cache hit-rate gauge"),
    Input("spec_acceptance_rate", "gauge", "speculative-decoding acceptance gauge"),
    Input("ttft_seconds", "histogram", "time-to-first-token histogram"),
    Input("itl_seconds", "histogram", "inter-token-latency histogram"),
    Input("prompt_tokens_per_request", "histogram", "prompt-length histogram"),
    Input("generation_tokens_per_request", "histogram", "output-length histogram"),
    Input("e2e_seconds", "histogram", "end-to-end latency histogram"),
    # a request's time in each phase (vLLM V1): read by the dashboards, not by a row
    Input("queue_seconds", "histogram", "queue-time histogram", parsed=False),
    Input("prefill_seconds", "histogram", "prefill-time histogram", parsed=False),
    Input("decode_seconds", "histogram", "decode-time histogram", parsed=False),
)

INPUTS: Mapping[str, Input] = {i.canonical: i for i in _INPUTS}
