"""What a simulated engine's /metrics looks like, per emulated engine version.

The simulator records canonical events ("ttft", "prompt_tokens", ...). A flavour maps each to the
family one real engine version exposes: name, type, help, labels and buckets, taken from
``tests/fixtures/reference/vllm-metric-defs/`` and the captures beside it (tests compare them).
A canonical event a flavour has no family for is simply not exposed, as the real engine would not.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def request_token_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series up to max_model_len (``build_1_2_5_buckets``)."""
    out: list[float] = []
    mag = 1
    while True:
        for m in (1, 2, 5):
            if m * mag > max_model_len:
                return tuple(out)
            out.append(float(m * mag))
        mag *= 10


@dataclass(frozen=True)
class Family:
    canonical: str  # the simulator's event name
    name: str  # as prometheus_client is given it (counters without _total, as vLLM writes them)
    kind: str  # counter | gauge | histogram
    help: str
    buckets: tuple[float, ...] | str = ()  # "tokens" = request_token_buckets(max_model_len)
    labels: dict[str, str] = field(default_factory=dict)  # constant labels beyond the flavour's own


@dataclass(frozen=True)
class Flavour:
    key: str
    engine: str  # the config key that scrapes it: vllm | sglang
    base_labels: tuple[str, ...]  # label names every family carries; values from the instance
    families: tuple[Family, ...]
    reasons: tuple[str, ...] = ()  # finished_reason values pre-created at start (vLLM does)
    created: bool = True  # prometheus_client's <name>_created series; multiprocess mode has none


# vLLM 0.33 (V1) defaults: reference/engine-metrics.md section 1 and the vllm-0.33.0 capture
V1_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
           80.0, 160.0, 640.0, 2560.0)
V1_ITL = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
V1_LATENCY = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
              960.0, 1920.0, 7680.0)

VLLM_033 = Flavour("vllm-0.33", "vllm", ("model_name", "engine"), (
    Family("running", "vllm:num_requests_running", "gauge", "Number of requests in model execution batches."),
    Family("waiting", "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    Family("kv_usage", "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."),
    Family("prefix_queries", "vllm:prefix_cache_queries", "counter",
           "Prefix cache queries, in terms of number of queried tokens."),
    Family("prefix_hits", "vllm:prefix_cache_hits", "counter", "Prefix cache hits, in terms of number of cached tokens."),
    Family("preemptions", "vllm:num_preemptions", "counter", "Cumulative number of preemption from the engine."),
    Family("prompt_tokens", "vllm:prompt_tokens", "counter", "Number of prefill tokens processed."),
    Family("generation_tokens", "vllm:generation_tokens", "counter", "Number of generation tokens processed."),
    Family("success", "vllm:request_success", "counter", "Count of successfully processed requests."),
    Family("ttft", "vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
           V1_TTFT),
    Family("itl", "vllm:inter_token_latency_seconds", "histogram", "Histogram of inter-token latency in seconds.",
           V1_ITL),
    Family("e2e", "vllm:e2e_request_latency_seconds", "histogram", "Histogram of e2e request latency in seconds.",
           V1_LATENCY),
    Family("queue_time", "vllm:request_queue_time_seconds", "histogram",
           "Histogram of time spent in WAITING phase for request.", V1_LATENCY),
    Family("prefill_time", "vllm:request_prefill_time_seconds", "histogram",
           "Histogram of time spent in PREFILL phase for request.", V1_LATENCY),
    Family("decode_time", "vllm:request_decode_time_seconds", "histogram",
           "Histogram of time spent in DECODE phase for request.", V1_LATENCY),
    Family("prompt_len", "vllm:request_prompt_tokens", "histogram", "Number of prefill tokens processed.", "tokens"),
    Family("output_len", "vllm:request_generation_tokens", "histogram", "Number of generation tokens processed.",
           "tokens"),
    Family("max_tokens", "vllm:request_params_max_tokens", "histogram", "Histogram of the max_tokens request parameter.",
           "tokens"),
), reasons=("stop", "length", "abort", "error", "repetition"))

# vLLM 0.6 (V0 engine): the datadog/aibrix captures; model_name is the only label
V0_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
V0_TPOT = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
V0_LATENCY = (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)

VLLM_06 = Flavour("vllm-0.6", "vllm", ("model_name",), (
    Family("running", "vllm:num_requests_running", "gauge", "Number of requests currently running on GPU."),
    Family("waiting", "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    Family("swapped", "vllm:num_requests_swapped", "gauge", "Number of requests swapped to CPU."),
    Family("kv_usage", "vllm:gpu_cache_usage_perc", "gauge", "GPU KV-cache usage. 1 means 100 percent usage."),
    Family("cpu_kv_usage", "vllm:cpu_cache_usage_perc", "gauge", "CPU KV-cache usage. 1 means 100 percent usage."),
    Family("prefix_hit_rate", "vllm:gpu_prefix_cache_hit_rate", "gauge",
           "GPU prefix cache block hit rate."),
    Family("preemptions", "vllm:num_preemptions", "counter", "Cumulative number of preemption from the engine."),
    Family("prompt_tokens", "vllm:prompt_tokens", "counter", "Number of prefill tokens processed."),
    Family("generation_tokens", "vllm:generation_tokens", "counter", "Number of generation tokens processed."),
    Family("success", "vllm:request_success", "counter", "Count of successfully processed requests."),
    Family("ttft", "vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
           V0_TTFT),
    Family("itl", "vllm:time_per_output_token_seconds", "histogram", "Histogram of time per output token in seconds.",
           V0_TPOT),
    Family("e2e", "vllm:e2e_request_latency_seconds", "histogram", "Histogram of end to end request latency in seconds.",
           V0_LATENCY),
    Family("prompt_len", "vllm:request_prompt_tokens", "histogram", "Number of prefill tokens processed.", "tokens"),
    Family("output_len", "vllm:request_generation_tokens", "histogram", "Number of generation tokens processed.",
           "tokens"),
), reasons=(), created=False)

# SGLang 0.5.23: the generated capture; scheduler families carry the rank labels
_RANKS = {"engine_type": "unified", "moe_ep_rank": "0", "pp_rank": "0", "tp_rank": "0"}
_TOKENIZER = {"engine_type": "unified"}
_STREAM = {"engine_type": "unified", "is_streaming": "true"}
SG_TTFT = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0, 400.0)
SG_ITL = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8,
          1.0, 2.0, 4.0, 6.0, 8.0)
SG_E2E = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0, 400.0, 600.0,
          1200.0, 1800.0, 2400.0)
SG_TOKENS = (100.0, 300.0, 500.0, 700.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 7000.0, 8000.0,
             9000.0, 10000.0, 12500.0, 15000.0, 17500.0, 20000.0, 22500.0, 25000.0, 27500.0, 30000.0, 35000.0,
             40000.0, 60000.0, 80000.0, 100000.0, 200000.0, 300000.0, 400000.0, 600000.0, 800000.0, 1e6, 1.1e6)

SGLANG_05 = Flavour("sglang-0.5", "sglang", ("model_name",), (
    Family("running", "sglang:num_running_reqs", "gauge", "The number of running requests.", labels=_RANKS),
    Family("waiting", "sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.", labels=_RANKS),
    Family("kv_usage", "sglang:token_usage", "gauge", "The token usage.", labels=_RANKS),
    Family("kv_capacity", "sglang:max_total_num_tokens", "gauge",
           "Maximum total number of tokens in the KV cache pool.", labels=_RANKS),
    Family("prefix_hit_rate", "sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.", labels=_RANKS),
    Family("prefix_hits", "sglang:cached_tokens", "counter",
           "Number of cached prompt tokens by source (device/host/storage).",
           labels={"cache_source": "device", "engine_type": "unified"}),
    Family("preemptions", "sglang:num_retracted_requests", "counter", "Total number of retracted requests.",
           labels=_RANKS),
    Family("prompt_tokens", "sglang:prompt_tokens", "counter", "Number of prefill tokens processed.", labels=_STREAM),
    Family("generation_tokens", "sglang:generation_tokens", "counter", "Number of generation tokens processed.",
           labels=_STREAM),
    Family("requests", "sglang:num_requests", "counter", "Number of requests processed.", labels=_STREAM),
    Family("ttft", "sglang:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
           SG_TTFT, labels=_STREAM),
    Family("itl", "sglang:inter_token_latency_seconds", "histogram", "Histogram of inter-token latency in seconds.",
           SG_ITL, labels=_TOKENIZER),
    Family("e2e", "sglang:e2e_request_latency_seconds", "histogram", "Histogram of End-to-end request latency in seconds",
           SG_E2E, labels=_STREAM),
    Family("prompt_len", "sglang:prompt_tokens_histogram", "histogram", "Histogram of prompt token length.",
           SG_TOKENS, labels=_TOKENIZER),
    Family("output_len", "sglang:generation_tokens_histogram", "histogram", "Histogram of generation token length.",
           SG_TOKENS, labels=_TOKENIZER),
), created=False)

FLAVOURS: dict[str, Flavour] = {f.key: f for f in (VLLM_033, VLLM_06, SGLANG_05)}
DEFAULT_FLAVOUR = VLLM_033.key
