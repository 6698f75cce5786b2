"""Steps 1-12 of the sizing algorithm (9.1): from a workload profile, a model architecture, a GPU
and precisions (and, for Steps 7-12, a concurrency sweep) to the plan fleetwatch validates.

Pure: every input is an argument and the result is a dict (the ``--format json`` document),
each step's numbers with the reason behind them. Values that need a sweep are None with the
reason when there is none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Mapping

from ..sizing import recommended_instances
from ..model import Precision, Slo
from ..text import num, plural
from .architecture import (BYTES, Architecture, describe, kv_bytes, kv_bytes_per_token, lora_bytes, parameters,
                           weight_bytes)
from .curve import Curve
from .gpus import GIB, Gpu

ACTIVATIONS = 0.20  # Step 4: activations, about 20% of the weights
FRAMEWORK = 0.075  # Step 4: framework overhead, 5-10% of the instance's VRAM (the middle)
PREFILL_RATIO = 4.0  # Step 2: P50 input over P50 output at or above this is prefill-heavy
MIXED_LENGTHS = 4.0  # Step 9: P99 / P50 input above this is "mixed input lengths"
UTILIZATION_TRAP = 0.60  # 9.2: below this average utilization the cost per token inflates
ROUTING_GPUS = 8  # Step 3: a large-model fleet past this many GPUs is worth routing
HOURS_PER_YEAR = 8760


@dataclass(frozen=True)
class Lengths:
    p50: float
    p95: float
    p99: float


@dataclass(frozen=True)
class Workload:
    """Step 1: the workload profile (the keys `fleetwatch plan --workload` reads)."""

    input_tokens: Lengths
    output_tokens: Lengths
    peak_rps: float
    average_rps: float
    slo: Slo
    online_share: float = 1.0  # online (streaming) share of the traffic; the rest is offline batch
    concurrency_per_instance: int = 32  # Step 4: sequences one instance holds KV cache for
    safety_factor: float = 0.2  # Step 11: 0.2 predictable, 0.5 new or high variance
    simple_share: float = 0.0  # Step 3: share of requests a small model could serve
    shared_prefixes: bool = False  # Step 8: system prompts, RAG context shared between requests
    lora_adapters: int = 0
    lora_rank: int = 0


class MemoryModel(StrEnum):
    """How one instance's memory is accounted for."""

    VLLM = "vllm"  # vLLM's: a share of the reported HBM, less weights and measured overhead, is KV cache
    CHAPTER = "chapter"  # the rule of thumb: activations 20% of weights, the framework 7.5% of the VRAM


GPU_MEMORY_UTILIZATION = 0.90  # vLLM's default --gpu-memory-utilization
# vLLM's profile run (its "Memory profiling" log line) measures, besides the weights: non-torch memory
# (the CUDA context's allocations outside PyTorch, NCCL's buffers once there are peers) and the
# activation peak of one forward pass of max_num_batched_tokens tokens plus the sampler's logits
NON_TORCH_BYTES = 0.15 * GIB  # one GPU: 0.07-0.35 GiB in vLLM's logs
NCCL_BYTES = 1.5 * GIB  # more once the GPU has tensor-parallel peers (all-reduce buffers): 1.7 GiB at TP 4
MAX_BATCHED_TOKENS = 8192  # vLLM's default max_num_batched_tokens for `vllm serve` (chunked prefill)
MAX_NUM_SEQS = 256  # vLLM's default max_num_seqs: the profile run samples that many sequences' logits


@dataclass(frozen=True)
class Engine:
    """The vLLM settings the memory accounting depends on (its defaults)."""

    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION
    max_batched_tokens: int = MAX_BATCHED_TOKENS

    @property
    def overhead_source(self) -> str:
        return (f"vLLM's start-up memory profile: non-torch memory ({NON_TORCH_BYTES / GIB:g} GiB, "
                f"+{NCCL_BYTES / GIB:g} GiB at TP > 1) + the activation peak of {self.max_batched_tokens:,} batched "
                f"tokens (gated MLP and hidden states, 16-bit) and {MAX_NUM_SEQS} sequences' logits (FP32, twice)")
MAX_GPUS = 512  # an instance larger than this is no plan


@dataclass(frozen=True)
class Layout:
    """A parallel layout the user pinned (--tp, --pp, --ep); None: the planner picks."""

    tp: int | None = None
    pp: int | None = None
    ep: int | None = None


def _overhead(arch: Architecture, tp: int, engine: Engine) -> tuple[float, float]:
    """(non-torch, activation peak) bytes on one GPU of a TP group, as vLLM's profile run measures them."""
    width = max(arch.intermediate or 0, (arch.moe_intermediate or 0) * max(arch.experts_per_token, 1)) / tp
    act = engine.max_batched_tokens * (3 * width + 4 * arch.hidden) * 2 + MAX_NUM_SEQS * (arch.vocab or 0) * 4 * 2
    return NON_TORCH_BYTES + (NCCL_BYTES if tp > 1 else 0.0), act


def _seq_tokens(wl: Workload) -> float:
    return wl.input_tokens.p95 + wl.output_tokens.p95


def _adapters(arch: Architecture, wl: Workload, weights: str) -> float:
    if not (wl.lora_adapters and wl.lora_rank):
        return 0.0
    return float(wl.lora_adapters * lora_bytes(arch, wl.lora_rank, weights if weights in ("fp16", "bf16") else "bf16"))


def _kv_dtype(arch: Architecture, kv: str | None) -> str:
    """vLLM's kv-cache-dtype auto: the model's 16-bit dtype, whatever the weights' quantization."""
    return kv or (arch.native_dtype if arch.native_dtype in ("bf16", "fp16") else "bf16")


def _floor_chapter(arch: Architecture, wl: Workload, gpu: Gpu, weights: str | None, kv: str) -> dict[str, Any]:
    """One instance's memory floor by the rule of thumb, and the GPUs it needs."""
    label = weights or arch.checkpoint_weights
    w = arch.total_params * BYTES[label]
    act = ACTIVATIONS * w
    per_token = kv_bytes_per_token(arch, kv)
    tokens = wl.concurrency_per_instance * _seq_tokens(wl)
    kv_cache = wl.concurrency_per_instance * kv_bytes(arch, kv, _seq_tokens(wl))
    adapters = _adapters(arch, wl, label)
    base = w + act + kv_cache + adapters
    # the framework takes 7.5% of the instance's VRAM: n GPUs hold base + 0.075 n HBM
    min_gpus = max(1, math.ceil(base / ((1 - FRAMEWORK) * gpu.hbm_bytes) - 1e-9))
    overhead = FRAMEWORK * min_gpus * gpu.hbm_bytes
    return {"memory_model": str(MemoryModel.CHAPTER), "weights": label, "kv_cache": kv, "weights_bytes": int(w),
            "activations_bytes": int(act), "kv_bytes_per_token": per_token, "kv_tokens": int(tokens),
            "kv_cache_bytes": int(kv_cache), "adapters_bytes": int(adapters), "framework_overhead_bytes": int(overhead),
            "memory_floor_bytes": int(base + overhead), "min_gpus": min_gpus,
            "why": (f"{num(arch.total_params / 1e9)}B parameters x {num(BYTES[label])} B = {num(w / 1e9)} GB weights, "
                    f"+20% activations, + KV for {wl.concurrency_per_instance} sequences x "
                    f"{_seq_tokens(wl):.0f} tokens (P95 in + out), "
                    f"+ 7.5% of the instance's VRAM: {num((base + overhead) / 1e9)} GB on {num(gpu.hbm_gb)} GB GPUs "
                    f"-> {min_gpus}")}


def _per_gpu(arch: Architecture, wl: Workload, gpu: Gpu, weights: str | None, kv: str, tp: int, pp: int,
             engine: Engine) -> dict[str, float]:
    """vLLM's accounting on one GPU of a TP x PP instance: what is left for KV, and what it holds."""
    n = tp * pp
    budget = engine.gpu_memory_utilization * gpu.reported_bytes
    w = weight_bytes(arch, weights) / n
    non_torch, act = _overhead(arch, tp, engine)
    adapters = _adapters(arch, wl, weights or arch.checkpoint_weights) / n
    available = budget - w - non_torch - act - adapters
    per_token = kv_bytes_per_token(arch, kv, tp) / n
    per_seq = kv_bytes(arch, kv, _seq_tokens(wl), tp) / n
    return {"budget": budget, "weights": w, "non_torch": non_torch, "activations": act, "adapters": adapters,
            "available": available, "per_token": per_token, "per_seq": per_seq,
            "tokens": max(0.0, available) / per_token, "concurrency": max(0.0, available) / per_seq}


def _floor_vllm(arch: Architecture, wl: Workload, gpu: Gpu, weights: str | None, kv: str,
                engine: Engine) -> dict[str, Any]:
    """The fewest GPUs whose vLLM budget holds the weights, the overhead and the KV of
    concurrency_per_instance sequences of P95 length."""
    label = weights or arch.checkpoint_weights
    min_gpus = next((n for n in range(1, MAX_GPUS + 1)
                     if _per_gpu(arch, wl, gpu, weights, kv, n, 1, engine)["concurrency"]
                     >= wl.concurrency_per_instance), MAX_GPUS)
    g = _per_gpu(arch, wl, gpu, weights, kv, min_gpus, 1, engine)
    need = g["per_seq"] * wl.concurrency_per_instance
    floor = min_gpus * (g["weights"] + g["non_torch"] + g["activations"] + g["adapters"] + need)
    return {"memory_model": str(MemoryModel.VLLM), "weights": label, "kv_cache": kv,
            "weights_bytes": int(weight_bytes(arch, weights)), "activations_bytes": int(g["activations"] * min_gpus),
            "kv_bytes_per_token": kv_bytes_per_token(arch, kv), "kv_tokens": int(wl.concurrency_per_instance
                                                                                 * _seq_tokens(wl)),
            "kv_cache_bytes": int(need * min_gpus), "adapters_bytes": int(g["adapters"] * min_gpus),
            "framework_overhead_bytes": int(g["non_torch"] * min_gpus), "memory_floor_bytes": int(floor),
            "min_gpus": min_gpus, "gpu_memory_utilization": engine.gpu_memory_utilization,
            "usable_bytes_per_gpu": int(g["budget"]), "overhead_source": engine.overhead_source,
            "why": (f"{num(weight_bytes(arch, weights) / GIB)} GiB weights ({label}), + per GPU "
                    f"{num((g['non_torch'] + g['activations']) / GIB)} GiB overhead, + KV for "
                    f"{wl.concurrency_per_instance} sequences x {_seq_tokens(wl):.0f} tokens (P95 in + out); each GPU "
                    f"gives {engine.gpu_memory_utilization:g} x {num(gpu.reported_bytes / GIB)} GiB reported = "
                    f"{num(g['budget'] / GIB)} GiB -> {min_gpus}")}


def _floor(arch: Architecture, wl: Workload, gpu: Gpu, weights: str | None, kv: str, model: MemoryModel,
           engine: Engine) -> dict[str, Any]:
    if model is MemoryModel.CHAPTER:
        return _floor_chapter(arch, wl, gpu, weights, kv)
    return _floor_vllm(arch, wl, gpu, weights, kv, engine)


def tp_problem(arch: Architecture, tp: int) -> str | None:
    """Why vLLM would refuse TP ``tp`` for this model, or None. KV heads must be divided by TP or
    divide it (then each rank holds a copy of one KV head)."""
    if arch.heads % tp:
        return f"TP {tp} does not divide the {arch.heads} attention heads"
    if arch.mla is None and arch.kv_heads % tp and tp % arch.kv_heads:
        return f"TP {tp} neither divides the {arch.kv_heads} KV heads nor is a multiple of them"
    return None


def _fits(arch: Architecture, wl: Workload, gpu: Gpu, weights: str | None, kv: str, tp: int, pp: int,
          model: MemoryModel, floor: Mapping[str, Any], engine: Engine) -> bool:
    if model is MemoryModel.CHAPTER:
        return bool(tp * pp >= floor["min_gpus"])
    return _per_gpu(arch, wl, gpu, weights, kv, tp, pp, engine)["concurrency"] >= wl.concurrency_per_instance


def _parallelism(arch: Architecture, wl: Workload, gpu: Gpu, weights: str | None, kv: str, model: MemoryModel,
                 floor: Mapping[str, Any], layout: Layout, engine: Engine) -> dict[str, Any]:
    """The lowest TP vLLM accepts that holds the model in one node; PP only when pinned or past the
    interconnect; a model too big for a node is a verdict that names the nodes, never a silent PP."""
    node = gpu.gpus_per_node
    cap = node if gpu.switched_fabric else min(2, node)  # TP > 2 needs NVLink-class links
    warnings: list[str] = []
    verdict = None
    sizes = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= node]

    def fits(t: int, p: int) -> bool:
        return _fits(arch, wl, gpu, weights, kv, t, p, model, floor, engine)

    if layout.tp is not None or layout.pp is not None:
        tp, pp = layout.tp or 1, layout.pp or 1
        chosen = ""
        if layout.tp is None:  # --pp alone: the lowest TP that fits with it
            tp = next((t for t in sizes if t <= cap and not tp_problem(arch, t) and fits(t, pp)), cap)
            chosen = f"TP {tp} chosen to hold the model"
        elif layout.pp is None:
            pp = next((p for p in range(1, MAX_GPUS // tp + 1) if fits(tp, p)), 1)
            if pp > 1:
                chosen = f"PP {pp} chosen: TP {tp} alone does not hold the model"
                warnings.append(f"--tp {tp} does not hold the model and {wl.concurrency_per_instance} sequences' KV: "
                                f"it needs PP {pp} (pin --pp to choose, or a larger --tp)")
        if not fits(tp, pp):
            warnings.append(f"the pinned layout TP {tp} x PP {pp} does not hold {wl.concurrency_per_instance} "
                            f"sequences of P95 length: the KV cache will queue requests")
        why = ("pinned: " + ", ".join(f"{k} {getattr(layout, k.lower())}" for k in ("TP", "PP")
                                      if getattr(layout, k.lower()) is not None) + (f"; {chosen}" if chosen else ""))
        if tp > 2 and not gpu.switched_fabric:
            warnings.append(f"TP {tp} over {gpu.interconnect}: every layer's all-reduce crosses PCIe; the planner "
                            f"would stop at TP 2 and pipeline the rest")
    else:
        valid = [t for t in sizes if t <= cap and not tp_problem(arch, t)]
        tp = next((t for t in valid if t >= floor["min_gpus"] and fits(t, 1)), 0)
        pp = 1
        if tp:
            why = (f"the lowest TP that holds the model and {wl.concurrency_per_instance} sequences' KV, and that "
                   f"vLLM accepts ({arch.heads} attention heads, "
                   + ("an MLA latent on every rank)" if arch.mla else f"{arch.kv_heads} KV heads)"))
        else:
            tp = max(valid) if valid else 1
            pp = next((p for p in range(2, MAX_GPUS // tp + 1) if fits(tp, p)), MAX_GPUS // tp)
            nodes = math.ceil(tp * pp / node)
            if not gpu.switched_fabric and tp * pp <= node:
                warnings.append(f"{gpu.name} has {gpu.interconnect} between GPUs: TP stops at 2, so the model runs "
                                f"{pp} pipeline stages deep (PP {pp}); an NVLink GPU would run it at TP alone")
                why = f"TP {tp} (the most {gpu.interconnect} carries), then PP {pp} within the node"
            else:
                verdict = (f"the model does not fit one {node}-GPU {gpu.name} node: it needs TP {tp} x PP {pp} = "
                           f"{tp * pp} GPUs, {nodes} nodes, as sized here; pin --pp {pp} to accept that layout, or "
                           f"choose a larger GPU or a lower precision")
                warnings.append(verdict)
                why = f"no layout within one node holds it: TP {tp} x PP {pp} across {nodes} nodes"
    if layout.tp is not None and (problem := tp_problem(arch, tp)):
        raise ValueError(f"--tp {tp}: {problem}")
    if tp * pp > node and (layout.tp is not None or layout.pp is not None):
        warnings.append(f"TP {tp} x PP {pp} = {tp * pp} GPUs spans {math.ceil(tp * pp / node)} {node}-GPU nodes")
    ep = layout.ep
    if ep is not None:
        if not arch.experts:
            raise ValueError("--ep: expert parallelism needs a mixture-of-experts model")
        if ep != tp:
            raise ValueError(f"--ep {ep}: within one instance vLLM spreads the experts over its TP group: --ep equals "
                             f"--tp ({tp})")
        if arch.experts % ep:
            raise ValueError(f"--ep {ep} does not divide the {arch.experts} routed experts")
    if arch.mla is None and tp > arch.kv_heads:
        warnings.append(f"TP {tp} exceeds the {arch.kv_heads} KV heads: vLLM replicates them, so each GPU holds a "
                        f"full KV head and the KV per token is {tp // arch.kv_heads}x the unsharded figure")
    return {"tp": tp, "pp": pp, "ep": ep, "gpus_per_instance": tp * pp,
            "replicas_per_node": node // (tp * pp) if tp * pp <= node else 0,
            "nodes_per_instance": math.ceil(tp * pp / node), "why": why, "warnings": warnings, "verdict": verdict,
            **({"experts_per_gpu": arch.experts // ep} if ep else {})}


# the roofline estimate without a sweep: decode reads the active weights and each sequence's KV once per
# step at this share of peak HBM bandwidth; prefill runs at this share of the dense tensor throughput
BANDWIDTH_EFFICIENCY = 0.6
FLOPS_EFFICIENCY = 0.4
ITL_P99_OVER_MEAN = 1.25  # a step's P99 over its mean, for batches that mix prefill chunks


def _prefill_precision(label: str) -> str:
    """The precision prefill's matmuls run at: weight-only INT4 and MXFP4 compute with 16-bit activations."""
    return "fp16" if label in ("int4", "mxfp4", "bf16", "fp16", "fp32") else label


def roofline(arch: Architecture, wl: Workload, gpu: Gpu, weights: str | None, kv: str, tp: int, pp: int,
             max_concurrency: float) -> dict[str, Any]:
    """A rough usable RPS per instance from HBM bandwidth (decode) and FLOPS (prefill): the largest
    batch whose step meets the ITL SLO and fits the KV cache, and the requests a second it serves.
    A mixture-of-experts step reads the experts its batch routes to: 1 - (1 - k/E)^batch of them."""
    label = weights or arch.checkpoint_weights
    total_weights = weight_bytes(arch, weights)
    p = parameters(arch) if arch.params is None else None
    expert_bytes = total_weights * (p.experts / p.total) if p is not None and arch.experts and p.total else 0.0
    fixed_bytes = total_weights - expert_bytes
    context = wl.input_tokens.p50 + wl.output_tokens.p50 / 2  # a sequence's mean length while it decodes
    kv_read = kv_bytes(arch, kv, context, tp)
    # a PP stage reads its share of the weights one after another: one token's step sees TP GPUs' bandwidth
    bandwidth = gpu.hbm_tb_s * 1e12 * tp * BANDWIDTH_EFFICIENCY

    def step(batch: int) -> float:
        share = 1 - (1 - arch.experts_per_token / arch.experts) ** batch if arch.experts else 0.0
        return (fixed_bytes + expert_bytes * share + batch * kv_read) / bandwidth

    limit = wl.slo.itl_p99 / ITL_P99_OVER_MEAN
    cap = int(max_concurrency)
    batch = 0
    if cap >= 1 and step(1) <= limit:
        lo, hi = 1, cap  # the step grows with the batch: the largest batch within the limit, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if step(mid) <= limit else (lo, mid - 1)
        batch = lo
    compute = _prefill_precision(label)
    flops = (gpu.tflops.get(compute) or gpu.tflops.get("fp16") or 0.0) * 1e12 * tp * FLOPS_EFFICIENCY
    prefill = 2 * arch.active_params * wl.input_tokens.p50 / flops if flops else float("inf")
    prefill_p99 = 2 * arch.active_params * wl.input_tokens.p99 / flops if flops else float("inf")
    warnings = []
    if batch < 1:
        warnings.append(f"even one sequence's decode step ({num(step(1) * 1000)} ms) misses the ITL SLO "
                        f"({num(wl.slo.itl_p99 * 1000)} ms) at this bandwidth")
    if prefill_p99 > wl.slo.ttft_p99:
        warnings.append(f"prefill of a P99 prompt takes about {num(prefill_p99)} s, past the TTFT SLO "
                        f"({num(wl.slo.ttft_p99)} s), before any queueing")
    if tp > gpu.gpus_per_node:
        warnings.append(f"TP {tp} spans nodes: the estimate counts no inter-node all-reduce, which makes TP across "
                        f"nodes slower than this")
    # PP keeps pp micro-batches in flight: pp times the requests of one stage's batch
    rps = pp / (prefill + wl.output_tokens.p50 * step(batch) / batch) if batch >= 1 else 0.0
    read = fixed_bytes + (expert_bytes * (1 - (1 - arch.experts_per_token / arch.experts) ** max(batch, 1))
                          if arch.experts else 0.0)
    return {"estimate": True, "usable_rps_per_instance": rps, "batch": batch,
            "step_ms": step(max(batch, 1)) * 1000, "prefill_s": prefill, "warnings": warnings,
            "assumptions": (f"each decode step reads the weights its batch uses ({num(read / GIB)} GiB"
                            + (", the experts the batch routes to" if arch.experts else "")
                            + f") and each sequence's KV at {num(context)} tokens, at {BANDWIDTH_EFFICIENCY:.0%} of "
                            f"{num(gpu.hbm_tb_s)} TB/s x TP {tp}" + (f", PP {pp} stages pipelined" if pp > 1 else "")
                            + f"; prefill at {FLOPS_EFFICIENCY:.0%} of dense {compute} TFLOPS; ITL P99 = "
                            f"{ITL_P99_OVER_MEAN:g} x the mean step; no queueing. A measured sweep (--sweep) "
                            f"replaces this estimate")}


RESOURCE_WORDS = {"tflops": "tensor throughput (TFLOPS)", "hbm_tb_s": "memory bandwidth (HBM TB/s)"}


def _hardware(wl: Workload, gpu: Gpu, catalogue: Mapping[str, Gpu], weights: str) -> dict[str, Any]:
    ratio = wl.input_tokens.p50 / max(wl.output_tokens.p50, 1.0)
    prefill = ratio >= PREFILL_RATIO
    resource = "tflops" if prefill else "hbm_tb_s"

    def value(g: Gpu) -> float | None:
        if prefill:
            t = g.tflops.get(weights if weights in g.tflops else "fp16")
            return None if t is None else t / g.hour_usd
        return g.hbm_tb_s / g.hour_usd

    ranking = sorted(((g.name, v) for g in catalogue.values() if (v := value(g)) is not None
                      and weights in g.tflops), key=lambda x: -x[1])
    notes = []
    if weights not in gpu.tflops:
        notes.append(f"{gpu.name} has no {weights} tensor-core path: it runs {weights} weights without the speed-up")
    if ranking and ranking[0][0] != gpu.name:
        notes.append(f"{ranking[0][0]} gives the most {RESOURCE_WORDS[resource]} per dollar for this archetype")
    return {"archetype": "prefill-heavy" if prefill else "decode-heavy",
            "why": f"P50 input / P50 output = {num(ratio)} ({'>=' if prefill else '<'} {num(PREFILL_RATIO)})",
            "binding_resource": resource, "ranking": [{"gpu": n, f"{resource}_per_usd_hour": round(v, 4)}
                                                      for n, v in ranking],
            "gpu": gpu.name, "interconnect": gpu.interconnect, "notes": notes}


def _routing(wl: Workload, total_gpus: int | None) -> dict[str, Any]:
    if total_gpus is None:
        return {"multi_tier": None, "why": "the fleet's size needs a concurrency sweep (--sweep)"}
    if total_gpus > ROUTING_GPUS and wl.simple_share > 0:
        simple = wl.simple_share
        return {"multi_tier": True,
                "why": f"the large-model fleet needs {total_gpus} GPUs (> {ROUTING_GPUS}) and {simple:.0%} of requests "
                       f"are simple: route them to a small-model tier and size each tier on its own",
                "tiers": [{"tier": "large", "peak_rps": wl.peak_rps * (1 - simple)},
                          {"tier": "small", "peak_rps": wl.peak_rps * simple}]}
    return {"multi_tier": False,
            "why": (f"{total_gpus} GPUs" + (f" (<= {ROUTING_GPUS})" if total_gpus <= ROUTING_GPUS else "")
                    + ("" if wl.simple_share > 0 else "; the workload declares no simple-request share"))}


def _checklist(wl: Workload, gpu: Gpu, chosen: Mapping[str, Any], curve: Curve | None,
               total_gpus: int | None) -> list[dict[str, Any]]:
    kv_share = chosen["kv_cache_bytes"] / max(chosen["memory_floor_bytes"], 1)
    spread = wl.input_tokens.p99 / max(wl.input_tokens.p50, 1.0)
    latency_sensitive = wl.online_share >= 0.5 and wl.slo.itl_p99 <= 0.05
    items = [
        ("paged_attention", True, "default in vLLM and SGLang: verify it is not disabled"),
        ("continuous_batching", True, "default in vLLM and SGLang: verify it is not disabled"),
        ("fp8_kv_cache", chosen["kv_cache"] != "fp8" and kv_share >= 0.2 and "fp8" in gpu.tflops,
         "the KV cache is already FP8 (--kv-cache fp8)" if chosen["kv_cache"] == "fp8"
         else f"KV cache is {kv_share:.0%} of the memory floor"
         + ("" if "fp8" in gpu.tflops else f"; {gpu.name} has no FP8 path")),
        ("prefix_caching", wl.shared_prefixes,
         "the workload declares shared prefixes" if wl.shared_prefixes else "no shared prefixes declared"),
        ("chunked_prefill", spread > MIXED_LENGTHS,
         f"input P99 / P50 = {num(spread)} ({'>' if spread > MIXED_LENGTHS else '<='} {num(MIXED_LENGTHS)})"),
        ("speculative_decoding", latency_sensitive and wl.concurrency_per_instance <= 16,
         f"online share {wl.online_share:.0%}, ITL SLO {num(wl.slo.itl_p99 * 1000)} ms, "
         f"{wl.concurrency_per_instance} sequences per instance (on when latency-sensitive and at most 16)"),
    ]
    conflict = False
    if curve is not None and total_gpus is not None and total_gpus >= 16:
        # both SLOs bind at about the same load: colocated prefill and decode cannot meet one without the other
        conflict = curve.binding in ("ttft_p99", "itl_p99") and abs(curve.ttft_p99 / wl.slo.ttft_p99
                                                                    - curve.itl_p99 / wl.slo.itl_p99) < 0.15
    items.append(("pd_disaggregation", conflict,
                  "a large fleet whose TTFT and ITL SLOs bind together" if conflict
                  else "only for large fleets (16+ GPUs) whose TTFT and ITL SLOs conflict"))
    return [{"item": k, "on": bool(on), "why": why} for k, on, why in items]


@dataclass(frozen=True)
class SmallTier:
    """Step 3's small-model tier, when routing is worth it: its model, GPU and (optional) sweep."""

    arch: Architecture
    gpu: Gpu
    curve: Curve | None = None
    weights: str | None = None


class Binding(StrEnum):
    """What sets the plan's size. Its value is what the JSON and the YAML's header say."""

    TTFT_SLO = "ttft_slo"
    ITL_SLO = "itl_slo"
    SWEEP_END = "sweep_end"  # the sweep ended before either SLO was reached
    MEMORY = "memory"  # no sweep and no estimate: the memory floor at this precision
    ESTIMATE = "roofline_estimate"  # no sweep: the roofline estimate sets the count
    INTERCONNECT = "interconnect"  # pipeline parallelism within a node without a switched fabric
    MULTI_NODE = "multi_node"  # the model does not fit one node


@dataclass(frozen=True)
class SizingResult:
    """``fleetwatch plan``'s answer: the fleet, what binds it, and each step's working (``steps``, the
    document ``--format json`` prints, with the reasons behind every number). JSON only in ``as_dict``."""

    kv_bytes_per_token: int
    memory_floor_bytes: int
    min_gpus: int
    tp: int
    pp: int
    instances: int | None  # None without a sweep (``reasons`` says so)
    total_gpus: int | None
    usable_rps_per_instance: float | None
    cost_per_million_tokens_usd: float | None
    annual_cost_usd: float | None
    binding_constraint: Binding
    binding_reason: str
    reasons: Mapping[str, str]  # figure -> why it is None
    gpu: str
    precision: Precision
    steps: Mapping[str, Any]
    tier_plans: tuple[SizingResult, ...] = ()  # when the traffic is routed: the large tier's and the small one's
    warnings: tuple[str, ...] = ()  # what the planner assumed or doubts, each said once
    estimate: bool = False  # the instance count is the roofline estimate, not a measured sweep's
    kv_capacity_tokens: int | None = None  # vLLM's "GPU KV cache size" at the chosen layout
    max_concurrency: float | None = None  # sequences of P95 input + output the KV cache holds
    tokens_per_gpu_hour: float | None = None  # output tokens per GPU-hour at average load
    average_utilization: float | None = None  # average RPS over the fleet's usable capacity

    def summary(self) -> dict[str, Any]:
        """What a routed tier's entry carries."""
        return {"kv_bytes_per_token": self.kv_bytes_per_token, "memory_floor_bytes": self.memory_floor_bytes,
                "min_gpus": self.min_gpus, "tp": self.tp, "pp": self.pp, "instances": self.instances,
                "total_gpus": self.total_gpus, "usable_rps_per_instance": self.usable_rps_per_instance,
                "cost_per_million_tokens_usd": self.cost_per_million_tokens_usd,
                "binding_constraint": str(self.binding_constraint), "binding_reason": self.binding_reason,
                "reasons": dict(self.reasons), "gpu": self.gpu,
                "precision": {"weights": self.precision.weights, "kv_cache": self.precision.kv_cache},
                "estimate": self.estimate, "kv_capacity_tokens": self.kv_capacity_tokens,
                "max_concurrency": self.max_concurrency, "tokens_per_gpu_hour": self.tokens_per_gpu_hour,
                "average_utilization": self.average_utilization, "warnings": list(self.warnings)}

    def as_dict(self) -> dict[str, Any]:
        out = self.summary()
        keys = list(out)
        out["annual_cost_usd"] = self.annual_cost_usd
        # the documented order: annual cost after the cost per million tokens
        order = keys[:keys.index("cost_per_million_tokens_usd") + 1] + ["annual_cost_usd"] + \
            keys[keys.index("cost_per_million_tokens_usd") + 1:]
        return {**{k: out[k] for k in order}, "steps": self.steps}


def _share(wl: Workload, share: float) -> Workload:
    return replace(wl, peak_rps=round(wl.peak_rps * share, 6), average_rps=round(wl.average_rps * share, 6),
                   simple_share=0.0)


def size(wl: Workload, arch: Architecture, gpu: Gpu, catalogue: Mapping[str, Gpu], *, weights: str | None = None,
         kv_cache: str | None = None, curve: Curve | None = None, small: SmallTier | None = None,
         memory_model: MemoryModel = MemoryModel.VLLM, layout: Layout = Layout(),
         engine: Engine = Engine(), sweep_warnings: tuple[str, ...] = ()) -> SizingResult:
    kv_cache = _kv_dtype(arch, kv_cache)
    if weights == arch.checkpoint_weights:
        weights = None  # the checkpoint's own precision: its quantization, not a re-quantization
    label = weights or arch.checkpoint_weights
    if layout.ep is not None and layout.tp is None:
        layout = replace(layout, tp=layout.ep)  # within an instance the experts spread over the TP group
    early: list[str] = []
    if weights in ("mxfp4", "int4") and not (arch.quantization and arch.quantization.weights == weights):
        early.append(f"--weights {weights}: vLLM serves {weights.upper()} from a checkpoint quantized that way; "
                     f"this sizes the model as if one existed")
    native_floor = _floor(arch, wl, gpu, None, _kv_dtype(arch, None), memory_model, engine)
    chosen = _floor(arch, wl, gpu, weights, kv_cache, memory_model, engine)
    changes = {k: {"native": native_floor[k], "chosen": chosen[k]}
               for k in ("weights_bytes", "activations_bytes", "kv_cache_bytes", "memory_floor_bytes", "min_gpus")
               if native_floor[k] != chosen[k]}
    par_native = _parallelism(arch, wl, gpu, None, _kv_dtype(arch, None), memory_model, native_floor, Layout(),
                              engine)
    par = _parallelism(arch, wl, gpu, weights, kv_cache, memory_model, chosen, layout, engine)
    tp, pp = par["tp"], par["pp"]
    per_gpu = _per_gpu(arch, wl, gpu, weights, kv_cache, tp, pp, engine)
    if memory_model is MemoryModel.CHAPTER:  # the rule of thumb's room: VRAM less 7.5%, less weights x 1.2
        room = ((1 - FRAMEWORK) * gpu.hbm_bytes * tp * pp - chosen["weights_bytes"] - chosen["activations_bytes"]
                - chosen["adapters_bytes"]) / (tp * pp)
        per_gpu = {**per_gpu, "available": room, "tokens": max(0.0, room) / per_gpu["per_token"],
                   "concurrency": max(0.0, room) / per_gpu["per_seq"]}
    capacity: dict[str, Any] = {"kv_capacity_tokens": int(per_gpu["tokens"]), "max_concurrency": round(per_gpu["concurrency"], 2),
                "available_kv_bytes_per_gpu": int(per_gpu["available"]),
                "kv_bytes_per_token_per_gpu": per_gpu["per_token"],
                "kv_bytes_per_sequence": int(kv_bytes(arch, kv_cache, _seq_tokens(wl), tp)),
                "sequence_tokens": _seq_tokens(wl),
                "line": (f"KV cache: {int(per_gpu['tokens']):,} tokens; maximum concurrency "
                         f"{per_gpu['concurrency']:.2f}x at P95 input + output ({_seq_tokens(wl):,.0f} tokens, "
                         f"{kv_bytes(arch, kv_cache, _seq_tokens(wl), tp) / 2**20:,.0f} MiB of KV each)")}
    warnings: list[str] = [*arch.notes, *early, *sweep_warnings, *par["warnings"]]
    if per_gpu["available"] <= 0:
        warnings.append(f"at TP {tp} x PP {pp} the weights and overhead leave no memory for the KV cache "
                        f"({num(per_gpu['available'] / GIB)} GiB per GPU): vLLM would not start")
    reasons: dict[str, str] = {}
    usable = instances = total_gpus = None
    cost = annual = utilization = tokens_per_gpu_hour = None
    bench: dict[str, Any] | None = None
    estimate: dict[str, Any] | None = None
    if curve is None:
        estimate = roofline(arch, wl, gpu, weights, kv_cache, tp, pp, per_gpu["concurrency"])
        warnings += estimate["warnings"]
        usable = estimate["usable_rps_per_instance"] or None
        if usable is None:
            for k in ("usable_rps_per_instance", "instances", "total_gpus", "cost_per_million_tokens_usd"):
                reasons[k] = "the roofline estimate serves no request within the SLOs: run a concurrency sweep (--sweep)"
    else:
        usable = curve.usable_rps_per_instance
        bench = {"usable_rps_per_instance": usable, "c_max": curve.c_max, "binding": curve.binding,
                 "ttft_p99_at_usable": curve.ttft_p99, "itl_p99_at_usable": curve.itl_p99,
                 "littles_law_gap": curve.littles_law_gap, "warnings": list(curve.warnings)}
    if usable is not None:
        instances = recommended_instances(wl.peak_rps, usable, wl.safety_factor)
        total_gpus = instances * par["gpus_per_instance"]
        fleet_capacity = instances * usable
        utilization = wl.average_rps / fleet_capacity if fleet_capacity > 0 else None
        tokens_per_hour = wl.average_rps * wl.output_tokens.p50 * 3600
        hourly = gpu.hour_usd * total_gpus
        cost = hourly / tokens_per_hour * 1e6 if tokens_per_hour > 0 else None
        annual = hourly * HOURS_PER_YEAR
        tokens_per_gpu_hour = tokens_per_hour / total_gpus if total_gpus else None
    # Little's Law: the fleet holds peak RPS x expected latency sequences (latency from the SLOs)
    latency = wl.slo.ttft_p99 + wl.output_tokens.p95 * wl.slo.itl_p99
    fleet_seqs = wl.peak_rps * latency
    fleet_kv = fleet_seqs * kv_bytes(arch, kv_cache, _seq_tokens(wl))
    binding: Binding
    if curve is not None:
        assert usable is not None and instances is not None  # set from the curve above
        binding, binding_why = ({"ttft_p99": Binding.TTFT_SLO, "itl_p99": Binding.ITL_SLO}.get(curve.binding,
                                                                                            Binding.SWEEP_END),
                                f"the benchmark: the {curve.binding} SLO caps one instance at {num(usable)} RPS, so "
                                f"{num(wl.peak_rps)} peak RPS needs {plural(instances, 'instance')}"
                                if curve.binding != "sweep_end"
                                else "the benchmark: the sweep ended before either SLO was reached: sweep higher")
    elif instances is not None:
        assert usable is not None
        binding, binding_why = Binding.ESTIMATE, (f"a roofline estimate, not a measurement: about {num(usable)} RPS "
                                                  f"per instance, so {num(wl.peak_rps)} peak RPS needs about "
                                                  f"{plural(instances, 'instance')}; run a sweep (--sweep) to replace it")
    elif estimate is not None and estimate["warnings"]:
        binding, binding_why = Binding.ESTIMATE, f"the roofline estimate serves no request: {estimate['warnings'][0]}"
    else:
        binding, binding_why = Binding.MEMORY, (f"the memory floor at this precision: "
                                                f"{num(chosen['memory_floor_bytes'] / 1e9)} GB per instance needs "
                                                f"{chosen['min_gpus']} x {gpu.name}, run at TP {tp}")
    if par["verdict"]:
        binding, binding_why = Binding.MULTI_NODE, par["verdict"]
    elif pp > 1 and not gpu.switched_fabric and layout.pp is None:
        binding, binding_why = Binding.INTERCONNECT, par["warnings"][0]
    trap = utilization is not None and utilization < UTILIZATION_TRAP
    trap_words = (f"average utilization {utilization:.0%} is below {UTILIZATION_TRAP:.0%}: the utilization trap "
                  f"inflates the cost per token; fill idle capacity (offline batch, colocation) or scale down "
                  f"off-peak") if trap and utilization is not None else None
    if trap_words:
        warnings.append(trap_words)
    routing = _routing(wl, total_gpus)
    tier_plans: list[SizingResult] = []
    if routing.get("multi_tier"):
        # one sub-plan per tier (Steps 4-12 again, each at its share of the traffic)
        large = size(_share(wl, 1 - wl.simple_share), arch, gpu, catalogue, weights=weights, kv_cache=kv_cache,
                     curve=curve, memory_model=memory_model, layout=layout, engine=engine)
        routing["tiers"][0]["plan"] = large.summary()
        tier_plans.append(large)
        if small is not None:
            sub = size(_share(wl, wl.simple_share), small.arch, small.gpu, catalogue, weights=small.weights,
                       curve=small.curve, memory_model=memory_model, engine=engine)
            routing["tiers"][1]["plan"] = sub.summary()
            tier_plans.append(sub)
        else:
            routing["tiers"][1]["reason"] = "give the small model (--small-model, --small-gpu, --small-sweep) to size it"
    elif small is not None:
        warnings.append(f"the small model is not sized: routing does not pay here ({routing['why']})")
    model_why = {"model": describe(arch), "parameters": arch.total_params, "active_parameters": arch.active_params,
                 "quantization": arch.quantization.why if arch.quantization else None, "notes": list(arch.notes)}
    steps = {
        "1_workload": {"input_tokens": vars(wl.input_tokens), "output_tokens": vars(wl.output_tokens),
                       "peak_rps": wl.peak_rps, "average_rps": wl.average_rps,
                       "slo": {"ttft_p99": wl.slo.ttft_p99, "itl_p99": wl.slo.itl_p99},
                       "online_share": wl.online_share},
        "2_hardware": _hardware(wl, gpu, catalogue, label),
        "3_routing": routing,
        "4_memory_floor": {**native_floor, "model": model_why, "fleet_concurrency": fleet_seqs,
                           "fleet_kv_cache_bytes": int(fleet_kv),
                           "fleet_why": f"Little's Law: {num(wl.peak_rps)} peak RPS x {num(latency)} s expected "
                                        f"latency (TTFT SLO + P95 output x ITL SLO) = {num(fleet_seqs, 4)} sequences"},
        "5_precision": {**chosen, "changes": changes,
                        "tp": {"native": par_native["tp"], "chosen": tp},
                        "replicas_per_node": {"native": par_native["replicas_per_node"],
                                              "chosen": par["replicas_per_node"]},
                        "kv_capacity": capacity},
        "6_parallelism": par,
        "7_10_benchmark": (bench if bench is not None else {**estimate, "reason": "no sweep: a roofline estimate"}
                           if estimate is not None and usable is not None
                           else {"reason": reasons.get("usable_rps_per_instance", "no sweep")}),
        "8_9_checklist": _checklist(wl, gpu, chosen, curve, total_gpus),
        "11_fleet": ({"instances": instances, "total_gpus": total_gpus, "dp": instances,
                      "estimate": curve is None,
                      "why": f"ceil(ceil({num(wl.peak_rps)} / {num(usable or 0, 4)}) x "
                             f"(1 + {num(wl.safety_factor)})) = {instances}"
                             f" instances x {par['gpus_per_instance']} GPUs"
                             + (" (usable RPS from the roofline estimate)" if curve is None else "")}
                     if instances is not None else {"reason": reasons["instances"]}),
        "12_cost": ({"cost_per_million_tokens_usd": cost, "annual_cost_usd": annual,
                     "average_utilization": utilization, "tokens_per_gpu_hour": tokens_per_gpu_hour,
                     "why": f"{num(gpu.hour_usd)} USD/GPU-hour x {total_gpus} GPUs / ({num(wl.average_rps)} average RPS x "
                            f"{num(wl.output_tokens.p50)} output tokens x 3600)",
                     "warning": trap_words}
                    if cost is not None else {"reason": reasons.get("cost_per_million_tokens_usd",
                                                                     "no average traffic to spread the cost over")}),
    }
    return SizingResult(
        kv_bytes_per_token=chosen["kv_bytes_per_token"], memory_floor_bytes=chosen["memory_floor_bytes"],
        min_gpus=chosen["min_gpus"], tp=tp, pp=pp, instances=instances, total_gpus=total_gpus,
        usable_rps_per_instance=usable, cost_per_million_tokens_usd=cost, annual_cost_usd=annual,
        binding_constraint=binding, binding_reason=binding_why, reasons=reasons, gpu=gpu.name,
        precision=Precision(label, kv_cache), steps=steps, tier_plans=tuple(tier_plans),
        warnings=tuple(dict.fromkeys(warnings)), estimate=curve is None and instances is not None,
        kv_capacity_tokens=capacity["kv_capacity_tokens"], max_concurrency=capacity["max_concurrency"],
        tokens_per_gpu_hour=tokens_per_gpu_hour, average_utilization=utilization)


def with_observed(wl: Workload, input_tokens: Lengths | None, output_tokens: Lengths | None,
                  peak_rps: float | None) -> Workload:
    """Step 13 -> Step 1: the workload with what production measured in place of what was assumed."""
    return replace(wl, input_tokens=input_tokens or wl.input_tokens, output_tokens=output_tokens or wl.output_tokens,
                   peak_rps=peak_rps if peak_rps is not None else wl.peak_rps)
