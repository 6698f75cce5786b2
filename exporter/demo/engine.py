"""A simulated LLM server: a continuous-batching scheduler driven by a model, not by noise.

Each engine step (iteration) decodes one token for every running sequence and spends what is
left of the step's token budget on prefill, as vLLM V1's chunked-prefill scheduler does:

- step time = base + per-sequence cost x decoding sequences + prefill tokens / prefill rate,
  so ITL grows with the batch and spikes with prefill interference;
- TTFT = queue wait + the steps it takes to get the prompt's uncached tokens through;
- KV usage = tokens held by running sequences / capacity; when the next step does not fit,
  the newest sequence is preempted back to the queue and recomputed later;
- the GPU is busy while steps run; SM activity is lower in the memory-bound part of a step.

Time is an argument (``advance(until)``), so tests run hours of traffic in seconds. Every counter
and histogram is observed once per simulated request or token, so rates, quantiles and Little's
Law agree in the exposition.
"""
from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .flavours import DEFAULT_FLAVOUR, FLAVOURS, Flavour, request_token_buckets

MEMORY_BOUND_SM_SHARE = 0.45  # SM activity during the weight-streaming (base) part of a decode step
GPU_ACTIVITY_TAU_SECONDS = 1.0  # dcgm-exporter reports activity averaged over about its sampling period


@dataclass(frozen=True)
class Hardware:
    """How fast one instance of a tier serves. Figures are per instance (all its TP GPUs)."""

    name: str
    gpu_model: str
    tp: int
    step_base_seconds: float  # one decode step with an empty batch (weights streamed once)
    step_per_sequence_seconds: float  # added per decoding sequence
    prefill_tokens_per_second: float
    max_num_seqs: int
    max_num_batched_tokens: int  # the step's token budget (chunked prefill)
    kv_capacity_tokens: int
    gpu_memory_bytes: int
    max_model_len: int = 8192


@dataclass(frozen=True)
class Lengths:
    """Lognormal with a given P50 and P95."""

    p50: float
    p95: float

    @property
    def sigma(self) -> float:
        return math.log(self.p95 / self.p50) / 1.6448536269514722

    def draw(self, rng: random.Random, cap: int) -> int:
        return max(1, min(cap, int(round(rng.lognormvariate(math.log(self.p50), self.sigma)))))


@dataclass
class Request:
    arrival: float
    prompt: int
    output: int  # what the model would generate if not cut off
    max_tokens: int
    cached: int  # prompt tokens found in the prefix cache
    scheduled: float | None = None
    prefill_left: int = 0
    generated: int = 0
    last_token: float = 0.0
    first_token: float | None = None
    preemptions: int = 0
    held: int = 0  # KV tokens allocated to it now

    @property
    def target(self) -> int:
        return min(self.output, self.max_tokens)


class SimEngine:
    """One instance. Not thread-safe: the fleet serialises ``advance`` and ``exposition``."""

    def __init__(self, hardware: Hardware, *, flavour: str = DEFAULT_FLAVOUR,
                 model_name: str = "meta-llama/Llama-3.1-70B-Instruct", kv_scale: float = 1.0,
                 max_waiting: int = 4096) -> None:
        self.hardware = hardware
        self.flavour: Flavour = FLAVOURS[flavour]
        self.kv_capacity = max(1, int(hardware.kv_capacity_tokens * kv_scale))
        self.max_waiting = max_waiting  # beyond this the gateway rejects (429); not the engine's business
        self.t = 0.0
        self.inbox: deque[Request] = deque()  # arrived at the server, not yet seen by the scheduler
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.kv_used = 0
        # GPU activity, exponentially averaged in simulated time
        self.busy_avg = 0.0
        self.sm_avg = 0.0
        self.model_name = model_name  # the model_name label every series carries
        self._build_registry(model_name)

    # ------------------------------------------------------------------ metrics
    def _build_registry(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        base = {"model_name": model_name, "engine": "0"}
        base = {k: base[k] for k in self.flavour.base_labels}
        self._m: dict[str, Any] = {}
        self._success: dict[str, Any] = {}
        for fam in self.flavour.families:
            labels = {**base, **fam.labels}
            names = sorted(labels) + (["finished_reason"] if fam.canonical == "success" else [])
            if fam.kind == "counter":
                metric: Any = Counter(fam.name, fam.help, names, registry=self.registry)
            elif fam.kind == "gauge":
                metric = Gauge(fam.name, fam.help, names, registry=self.registry)
            else:
                buckets = request_token_buckets(self.hardware.max_model_len) if fam.buckets == "tokens" else fam.buckets
                metric = Histogram(fam.name, fam.help, names, buckets=buckets, registry=self.registry)
            if fam.canonical == "success":
                self._success_parent, self._success_labels = metric, labels
                for reason in self.flavour.reasons:  # vLLM pre-creates every finished reason
                    self._success[reason] = metric.labels(finished_reason=reason, **labels)
            else:
                self._m[fam.canonical] = metric.labels(**labels)
        for name in ("prompt_tokens", "generation_tokens", "preemptions", "prefix_queries", "prefix_hits"):
            if name in self._m:
                self._m[name].inc(0)
        if "kv_capacity" in self._m:
            self._m["kv_capacity"].set(self.kv_capacity)
        self._prefix_q = self._prefix_h = 0  # for engines that only expose a hit-rate gauge
        self._publish_gauges()

    def _inc(self, name: str, v: float = 1.0) -> None:
        m = self._m.get(name)
        if m is not None:
            m.inc(v)

    def _obs(self, name: str, v: float) -> None:
        m = self._m.get(name)
        if m is not None:
            m.observe(v)

    def _finished(self, reason: str) -> None:
        if "requests" in self._m:  # SGLang counts requests without a reason
            self._m["requests"].inc()
        child = self._success.get(reason)
        if child is None and hasattr(self, "_success_parent"):
            child = self._success[reason] = self._success_parent.labels(finished_reason=reason,
                                                                        **self._success_labels)
        if child is not None:
            child.inc()

    def _publish_gauges(self) -> None:
        for name, v in (("running", len(self.running)), ("waiting", len(self.waiting) + len(self.inbox)),
                        ("kv_usage", min(1.0, self.kv_used / self.kv_capacity)), ("swapped", 0),
                        ("cpu_kv_usage", 0.0)):
            m = self._m.get(name)
            if m is not None:
                m.set(v)
        if "prefix_hit_rate" in self._m:
            self._m["prefix_hit_rate"].set(self._prefix_h / self._prefix_q if self._prefix_q else 0.0)

    def exposition(self) -> str:
        self._publish_gauges()
        text = generate_latest(self.registry).decode()
        if self.flavour.created:
            return text
        return "".join(ln for ln in text.splitlines(keepends=True) if "_created" not in ln.split("{", 1)[0])

    # ------------------------------------------------------------------ traffic in
    def submit(self, req: Request) -> bool:
        """A request reaches the server at ``req.arrival``. False when the queue is full (rejected)."""
        if len(self.waiting) + len(self.inbox) >= self.max_waiting:
            return False
        self.inbox.append(req)
        return True

    def _preempt(self, victim: Request) -> None:
        self.running.remove(victim)
        self.kv_used -= victim.held
        victim.preemptions += 1
        victim.held = victim.cached  # the shared prefix stays cached
        victim.prefill_left = max(1, victim.prompt - victim.cached + victim.generated)
        self.waiting.appendleft(victim)
        self._inc("preemptions")

    def load(self) -> int:
        """Outstanding requests, as a least-outstanding-requests router counts them."""
        return len(self.running) + len(self.waiting) + len(self.inbox)

    # ------------------------------------------------------------------ time
    def _decay(self, seconds: float, busy: float, sm: float) -> None:
        a = 1.0 - math.exp(-seconds / GPU_ACTIVITY_TAU_SECONDS)
        self.busy_avg += (busy - self.busy_avg) * a
        self.sm_avg += (sm - self.sm_avg) * a

    def advance(self, until: float) -> None:
        """Run engine steps until the next one would end after ``until``."""
        while True:
            while self.inbox and self.inbox[0].arrival <= self.t:
                self.waiting.append(self.inbox.popleft())
            if not self.running and not self.waiting:
                nxt = self.inbox[0].arrival if self.inbox else math.inf
                idle_to = min(nxt, until)
                if idle_to > self.t:
                    self._decay(idle_to - self.t, 0.0, 0.0)
                    self.t = idle_to
                if nxt > until:
                    return
                continue
            if not self._step(until):
                return

    def _step(self, until: float) -> bool:
        hw = self.hardware
        budget = hw.max_num_batched_tokens
        # KV blocks are allocated per step for the tokens it computes (vLLM V1). When the running
        # sequences' next tokens do not fit, the newest is preempted and recomputed later.
        decoding = [r for r in self.running if r.prefill_left == 0]
        while self.kv_used + len(decoding) > self.kv_capacity and len(self.running) > 1:
            self._preempt(self.running[-1])
            decoding = [r for r in self.running if r.prefill_left == 0]
        budget -= len(decoding)
        free = self.kv_capacity - self.kv_used - len(decoding)
        chunks: list[tuple[Request, int]] = []
        for r in self.running:
            if r.prefill_left > 0 and budget > 0 and free > 0:
                n = min(r.prefill_left, budget, free)
                chunks.append((r, n))
                budget -= n
                free -= n
        # admit from the queue while there is a slot, budget, and KV room for its first chunk
        while self.waiting and budget > 0 and len(self.running) < hw.max_num_seqs:
            nxt = self.waiting[0]
            if nxt.scheduled is None:
                nxt.prefill_left = max(1, nxt.prompt - nxt.cached)
                nxt.held = nxt.cached
            n = min(nxt.prefill_left, budget, free - nxt.held)
            if n < min(nxt.prefill_left, 16) and self.running:  # not even one KV block free
                break
            n = max(n, 1)
            self.waiting.popleft()
            if nxt.scheduled is None:
                nxt.scheduled = self.t
                self._obs("queue_time", self.t - nxt.arrival)
                self._inc("prefix_queries", nxt.prompt)
                self._inc("prefix_hits", nxt.cached)
                self._prefix_q += nxt.prompt
                self._prefix_h += nxt.cached
                self._inc("prompt_tokens", nxt.prompt)
            self.running.append(nxt)
            self.kv_used += nxt.held
            free -= nxt.held + n
            chunks.append((nxt, n))
            budget -= n
        prefill = sum(n for _, n in chunks)
        base, per_seq = hw.step_base_seconds, hw.step_per_sequence_seconds * len(decoding)
        pre_s = prefill / hw.prefill_tokens_per_second
        dur = base + per_seq + pre_s
        if self.t + dur > until:
            # the step does not fit: undo nothing (admission is idempotent), run it next call
            return False
        end = self.t + dur
        self._decay(dur, 1.0, (MEMORY_BOUND_SM_SHARE * base + per_seq + pre_s) / dur)
        self.t = end
        finished: list[Request] = []
        for r in decoding:
            r.generated += 1
            r.held += 1
            self.kv_used += 1
            self._obs("itl", end - r.last_token)
            r.last_token = end
            if r.generated >= r.target:
                finished.append(r)
        self._inc("generation_tokens", len(decoding))
        for r, n in chunks:
            r.prefill_left -= n
            r.held += n
            self.kv_used += n
            if r.prefill_left == 0 and r.first_token is None:
                r.first_token = end
                r.generated = 1
                r.held += 1
                self.kv_used += 1
                r.last_token = end
                self._obs("ttft", end - r.arrival)
                self._inc("generation_tokens")
                if r.generated >= r.target:
                    finished.append(r)
        for r in finished:
            self.running.remove(r)
            self.kv_used -= r.held
            self._finished("length" if r.output > r.max_tokens else "stop")
            self._obs("e2e", end - r.arrival)
            assert r.scheduled is not None and r.first_token is not None
            self._obs("prefill_time", r.first_token - r.scheduled)
            self._obs("decode_time", end - r.first_token)
            self._obs("prompt_len", r.prompt)
            self._obs("output_len", r.generated)
            self._obs("max_tokens", r.max_tokens)
        return True
