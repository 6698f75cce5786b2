"""A simulated vLLM 0.33 instance: a continuous-batching server driven by a model, not by noise.

Time is an argument (``step(now, dt)``), so tests run hours of traffic in seconds. Every
counter and histogram is observed once per simulated request or token, through
prometheus_client with vLLM 0.33's names, labels and buckets, so rates, quantiles and Little's
Law agree in the exposition.
"""
from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# vLLM 0.33 defaults (reference/engine-metrics.md section 1)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)


def request_token_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series up to max_model_len."""
    out: list[float] = []
    mag = 1
    while True:
        for m in (1, 2, 5):
            v = m * mag
            if v > max_model_len:
                return tuple(float(x) for x in out)
            out.append(v)
        mag *= 10


@dataclass(frozen=True)
class Hardware:
    """How fast one instance of a tier serves. Figures are per instance (all its TP GPUs)."""

    name: str
    gpu_model: str
    tp: int
    prefill_tokens_per_second: float  # alone on the instance
    itl_base_seconds: float  # one sequence decoding alone
    itl_per_sequence_seconds: float  # added per sequence in the batch
    max_concurrency: int
    kv_capacity_tokens: int
    max_model_len: int = 8192


@dataclass(frozen=True)
class Lengths:
    """Lognormal with a given P50 and P95."""

    p50: float
    p95: float

    def draw(self, rng: random.Random, cap: int) -> int:
        sigma = math.log(self.p95 / self.p50) / 1.6448536269514722
        return max(1, min(cap, int(round(rng.lognormvariate(math.log(self.p50), sigma)))))


@dataclass
class Request:
    arrival: float
    prompt: int
    output: int
    max_tokens: int
    cached: int
    scheduled: float | None = None
    prefill_left: float = 0.0
    prefilling: bool = False
    first_token: float | None = None
    generated: float = 0.0


@dataclass
class SimEngine:
    hardware: Hardware
    model_name: str = "meta-llama/Llama-3.1-8B-Instruct"
    seed: int = 0
    waiting: deque[Request] = field(default_factory=deque)
    running: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.registry = CollectorRegistry(auto_describe=True)
        r, lbl = self.registry, ["model_name", "engine"]
        self.lv = {"model_name": self.model_name, "engine": "0"}
        tok = request_token_buckets(self.hardware.max_model_len)
        self.m_running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", lbl, registry=r)
        self.m_waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", lbl, registry=r)
        self.m_kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", lbl, registry=r)
        self.m_pq = Counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", lbl, registry=r)
        self.m_ph = Counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", lbl, registry=r)
        self.m_pre = Counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", lbl, registry=r)
        self.m_prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", lbl, registry=r)
        self.m_gen = Counter("vllm:generation_tokens", "Number of generation tokens processed.", lbl, registry=r)
        self.m_success = Counter("vllm:request_success", "Count of successfully processed requests.",
                                 lbl + ["finished_reason"], registry=r)
        self.m_ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                                lbl, buckets=TTFT_BUCKETS, registry=r)
        self.m_itl = Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                               lbl, buckets=ITL_BUCKETS, registry=r)
        self.m_e2e = Histogram("vllm:e2e_request_latency_seconds",
                               "Histogram of e2e request latency in seconds.", lbl, buckets=LATENCY_BUCKETS, registry=r)
        self.m_queue = Histogram("vllm:request_queue_time_seconds",
                                 "Histogram of time spent in WAITING phase for request.", lbl,
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.m_in = Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", lbl,
                              buckets=tok, registry=r)
        self.m_out = Histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", lbl,
                               buckets=tok, registry=r)
        for reason in ("stop", "length", "abort", "error", "repetition"):  # vLLM pre-creates every reason
            self.m_success.labels(finished_reason=reason, **self.lv)
        self.m_prompt.labels(**self.lv)
        self.m_gen.labels(**self.lv)
        self.m_pre.labels(**self.lv)
        self.m_pq.labels(**self.lv)
        self.m_ph.labels(**self.lv)
        self._publish_gauges()

    # ------------------------------------------------------------------ traffic in
    def submit(self, req: Request) -> None:
        self.waiting.append(req)

    def kv_tokens(self) -> float:
        return sum(r.prompt + r.generated for r in self.running)

    # ------------------------------------------------------------------ one tick
    def step(self, now: float, dt: float) -> None:
        hw = self.hardware
        # admit from the queue while there is a batch slot and KV room for the prompt
        while self.waiting and len(self.running) < hw.max_concurrency:
            nxt = self.waiting[0]
            if self.kv_tokens() + nxt.prompt > hw.kv_capacity_tokens and self.running:
                break
            self.waiting.popleft()
            if nxt.scheduled is None:
                nxt.scheduled = now
                self.m_queue.labels(**self.lv).observe(now - nxt.arrival)
                self.m_pq.labels(**self.lv).inc(nxt.prompt)
                self.m_ph.labels(**self.lv).inc(nxt.cached)
                self.m_prompt.labels(**self.lv).inc(nxt.prompt)
            # prefill slows down as the batch fills (prefill interference); a preempted request
            # recomputes its prompt and what it had generated
            load = len(self.running) / hw.max_concurrency
            todo = nxt.prompt - nxt.cached + int(nxt.generated)
            nxt.prefill_left = todo / hw.prefill_tokens_per_second * (1 + load)
            nxt.prefilling = True
            self.running.append(nxt)
        decoding = [r for r in self.running if not r.prefilling]
        itl = hw.itl_base_seconds + hw.itl_per_sequence_seconds * len(decoding)
        finished: list[tuple[Request, str]] = []
        for r in list(self.running):
            if r.prefilling:
                r.prefill_left -= dt
                if r.prefill_left <= 0:
                    r.prefilling = False
                    if r.first_token is None:
                        r.first_token = now + dt + r.prefill_left
                        self.m_ttft.labels(**self.lv).observe(r.first_token - r.arrival)
                        r.generated = 1
                        self.m_gen.labels(**self.lv).inc()
                continue
            before = int(r.generated)
            r.generated += dt / itl
            for _ in range(int(r.generated) - before):
                self.m_itl.labels(**self.lv).observe(itl)
                self.m_gen.labels(**self.lv).inc()
            if r.generated >= min(r.output, r.max_tokens):
                finished.append((r, "stop" if r.output <= r.max_tokens else "length"))
        for r, reason in finished:
            self.running.remove(r)
            end = now + dt
            self.m_success.labels(finished_reason=reason, **self.lv).inc()
            self.m_e2e.labels(**self.lv).observe(end - r.arrival)
            self.m_in.labels(**self.lv).observe(r.prompt)
            self.m_out.labels(**self.lv).observe(int(min(r.output, r.max_tokens)))
        # KV full: preempt the newest request back to the queue (recompute, as vLLM V1 does)
        while self.kv_tokens() > hw.kv_capacity_tokens and len(self.running) > 1:
            victim = self.running.pop()
            self.waiting.appendleft(victim)
            self.m_pre.labels(**self.lv).inc()
        self._publish_gauges()

    def _publish_gauges(self) -> None:
        self.m_running.labels(**self.lv).set(len(self.running))
        self.m_waiting.labels(**self.lv).set(len(self.waiting))
        self.m_kv.labels(**self.lv).set(min(1.0, self.kv_tokens() / self.hardware.kv_capacity_tokens))

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()


def drive(engine: SimEngine, rng: random.Random, *, rate: float, prompt: Lengths, output: Lengths,
          prefix_share: float, prefix_tokens: int, start: float, seconds: float, dt: float,
          max_tokens: int = 2048) -> float:
    """Feed Poisson arrivals at ``rate`` requests/s into ``engine`` for ``seconds``; return the end time."""
    t = start
    cap = engine.hardware.max_model_len
    while t < start + seconds - 1e-9:
        # Poisson arrivals in [t, t + dt), spread uniformly inside the tick
        acc = rng.expovariate(rate) if rate > 0 else math.inf
        while acc < dt:
            p = prompt.draw(rng, cap)
            cached = min(p - 1, prefix_tokens) if rng.random() < prefix_share else 0
            engine.submit(Request(arrival=t + acc, prompt=p, output=output.draw(rng, cap), max_tokens=max_tokens,
                                  cached=max(0, cached)))
            acc += rng.expovariate(rate)
        engine.step(t, dt)
        t += dt
    return t
