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
from .architecture import BYTES, Architecture, kv_bytes_per_token, lora_bytes
from .curve import Curve
from .gpus import Gpu

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


def _floor(arch: Architecture, wl: Workload, gpu: Gpu, weights: str, kv: str) -> dict[str, Any]:
    """Step 4 (at ``weights``/``kv``): one instance's memory floor and the GPUs it needs."""
    w = arch.total_params * BYTES[weights]
    act = ACTIVATIONS * w
    per_token = kv_bytes_per_token(arch, kv)
    tokens = wl.concurrency_per_instance * (wl.input_tokens.p95 + wl.output_tokens.p95)
    kv_bytes = per_token * tokens
    adapters = wl.lora_adapters * lora_bytes(arch, wl.lora_rank, weights if weights in ("fp16", "bf16") else "fp16") \
        if wl.lora_adapters and wl.lora_rank else 0
    base = w + act + kv_bytes + adapters
    # the framework takes 7.5% of the instance's VRAM: n GPUs hold base + 0.075 n HBM
    min_gpus = max(1, math.ceil(base / ((1 - FRAMEWORK) * gpu.hbm_bytes) - 1e-9))
    overhead = FRAMEWORK * min_gpus * gpu.hbm_bytes
    return {"weights": weights, "kv_cache": kv, "weights_bytes": int(w), "activations_bytes": int(act),
            "kv_bytes_per_token": per_token, "kv_tokens": int(tokens), "kv_cache_bytes": int(kv_bytes),
            "adapters_bytes": int(adapters), "framework_overhead_bytes": int(overhead),
            "memory_floor_bytes": int(base + overhead), "min_gpus": min_gpus,
            "why": (f"{num(arch.total_params / 1e9)}B parameters x {num(BYTES[weights])} B = {num(w / 1e9)} GB weights, "
                    f"+20% activations, + KV for {wl.concurrency_per_instance} sequences x "
                    f"{wl.input_tokens.p95 + wl.output_tokens.p95:.0f} tokens (P95 in + out) x {per_token} B, "
                    f"+ 7.5% of the instance's VRAM: {num((base + overhead) / 1e9)} GB on {num(gpu.hbm_gb)} GB GPUs "
                    f"-> {min_gpus}")}


def _parallelism(arch: Architecture, gpu: Gpu, min_gpus: int) -> dict[str, Any]:
    """Step 6: the lowest TP that fits in one node (and divides the attention heads); PP only past a node."""
    node = gpu.gpus_per_node
    cap = node if gpu.switched_fabric else min(2, node)  # TP > 2 needs NVLink-class links
    warnings: list[str] = []
    tp = next((t for t in (1, 2, 4, 8, 16) if t >= min_gpus and t <= cap and arch.heads % t == 0), None)
    pp = 1
    if tp is None:
        tp = max(t for t in (1, 2, 4, 8, 16) if t <= cap and arch.heads % t == 0)
        pp = math.ceil(min_gpus / tp)
        if not gpu.switched_fabric and min_gpus > 2:
            warnings.append(f"{gpu.name} has {gpu.interconnect} between GPUs: TP stops at 2, so the model runs "
                            f"{pp} pipeline stages deep (PP {pp}); an NVLink GPU would run it at TP alone")
        else:
            warnings.append(f"{min_gpus} GPUs do not fit one {node}-GPU node: TP {tp} within the node, PP {pp} across")
    why = (f"the lowest TP that holds {min_gpus} GPUs' worth of memory and divides {arch.heads} heads"
           + ("" if pp == 1 else f", then PP {pp}"))
    return {"tp": tp, "pp": pp, "gpus_per_instance": tp * pp, "replicas_per_node": node // (tp * pp) if tp * pp <= node
            else 0, "why": why, "warnings": warnings}


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
        ("fp8_kv_cache", chosen["kv_cache"] not in ("fp8",) and kv_share >= 0.2 and "fp8" in gpu.tflops,
         f"KV cache is {kv_share:.0%} of the memory floor"
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
    MEMORY = "memory"  # no sweep: the memory floor at this precision
    INTERCONNECT = "interconnect"  # pipeline parallelism across nodes without a switched fabric


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

    def summary(self) -> dict[str, Any]:
        """What a routed tier's entry carries."""
        return {"kv_bytes_per_token": self.kv_bytes_per_token, "memory_floor_bytes": self.memory_floor_bytes,
                "min_gpus": self.min_gpus, "tp": self.tp, "pp": self.pp, "instances": self.instances,
                "total_gpus": self.total_gpus, "usable_rps_per_instance": self.usable_rps_per_instance,
                "cost_per_million_tokens_usd": self.cost_per_million_tokens_usd,
                "binding_constraint": str(self.binding_constraint), "binding_reason": self.binding_reason,
                "reasons": dict(self.reasons), "gpu": self.gpu,
                "precision": {"weights": self.precision.weights, "kv_cache": self.precision.kv_cache}}

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
         kv_cache: str | None = None, curve: Curve | None = None, small: SmallTier | None = None) -> SizingResult:
    native = "fp16" if arch.native_dtype in ("bf16", "fp16", "fp32") else arch.native_dtype
    weights = weights or native
    kv_cache = kv_cache or native
    native_floor = _floor(arch, wl, gpu, native, native)
    chosen = _floor(arch, wl, gpu, weights, kv_cache)
    changes = {k: {"native": native_floor[k], "chosen": chosen[k]}
               for k in ("weights_bytes", "activations_bytes", "kv_cache_bytes", "memory_floor_bytes", "min_gpus")
               if native_floor[k] != chosen[k]}
    par_native = _parallelism(arch, gpu, native_floor["min_gpus"])
    par = _parallelism(arch, gpu, chosen["min_gpus"])
    reasons: dict[str, str] = {}
    usable = instances = total_gpus = None
    cost = annual = utilization = None
    bench: dict[str, Any] | None = None
    if curve is None:
        for k in ("usable_rps_per_instance", "instances", "total_gpus", "cost_per_million_tokens_usd"):
            reasons[k] = "needs a concurrency sweep of the chosen configuration (--sweep)"
    else:
        usable = curve.usable_rps_per_instance
        instances = recommended_instances(wl.peak_rps, usable, wl.safety_factor)
        total_gpus = instances * par["gpus_per_instance"]
        bench = {"usable_rps_per_instance": usable, "c_max": curve.c_max, "binding": curve.binding,
                 "ttft_p99_at_usable": curve.ttft_p99, "itl_p99_at_usable": curve.itl_p99,
                 "littles_law_gap": curve.littles_law_gap, "warnings": list(curve.warnings)}
        capacity = instances * usable
        utilization = wl.average_rps / capacity if capacity > 0 else None
        tokens_per_hour = wl.average_rps * wl.output_tokens.p50 * 3600
        hourly = gpu.hour_usd * total_gpus
        cost = hourly / tokens_per_hour * 1e6 if tokens_per_hour > 0 else None
        annual = hourly * HOURS_PER_YEAR
    # Little's Law: the fleet holds peak RPS x expected latency sequences (latency from the SLOs)
    latency = wl.slo.ttft_p99 + wl.output_tokens.p95 * wl.slo.itl_p99
    fleet_seqs = wl.peak_rps * latency
    fleet_kv = fleet_seqs * (wl.input_tokens.p95 + wl.output_tokens.p95) * chosen["kv_bytes_per_token"]
    binding: Binding
    if curve is not None:
        assert usable is not None and instances is not None  # set from the curve above
        binding, binding_why = ({"ttft_p99": Binding.TTFT_SLO, "itl_p99": Binding.ITL_SLO}.get(curve.binding,
                                                                                            Binding.SWEEP_END),
                                f"the benchmark: the {curve.binding} SLO caps one instance at {num(usable)} RPS, so "
                                f"{num(wl.peak_rps)} peak RPS needs {plural(instances, 'instance')}"
                                if curve.binding != "sweep_end"
                                else "the benchmark: the sweep ended before either SLO was reached: sweep higher")
    else:
        binding, binding_why = Binding.MEMORY, (f"the memory floor at this precision: {num(chosen['memory_floor_bytes'] / 1e9)} "
                                          f"GB per instance needs {chosen['min_gpus']} x {gpu.name}, run at TP "
                                          f"{par['tp']}")
    if par["pp"] > 1 and not gpu.switched_fabric:
        binding, binding_why = Binding.INTERCONNECT, par["warnings"][0]
    trap = utilization is not None and utilization < UTILIZATION_TRAP
    routing = _routing(wl, total_gpus)
    tier_plans: list[SizingResult] = []
    if routing.get("multi_tier"):
        # one sub-plan per tier (Steps 4-12 again, each at its share of the traffic)
        large = size(_share(wl, 1 - wl.simple_share), arch, gpu, catalogue, weights=weights, kv_cache=kv_cache,
                     curve=curve)
        routing["tiers"][0]["plan"] = large.summary()
        tier_plans.append(large)
        if small is not None:
            sub = size(_share(wl, wl.simple_share), small.arch, small.gpu, catalogue, weights=small.weights,
                       curve=small.curve)
            routing["tiers"][1]["plan"] = sub.summary()
            tier_plans.append(sub)
        else:
            routing["tiers"][1]["reason"] = "give the small model (--small-model, --small-gpu, --small-sweep) to size it"
    steps = {
        "1_workload": {"input_tokens": vars(wl.input_tokens), "output_tokens": vars(wl.output_tokens),
                       "peak_rps": wl.peak_rps, "average_rps": wl.average_rps,
                       "slo": {"ttft_p99": wl.slo.ttft_p99, "itl_p99": wl.slo.itl_p99},
                       "online_share": wl.online_share},
        "2_hardware": _hardware(wl, gpu, catalogue, weights),
        "3_routing": routing,
        "4_memory_floor": {**native_floor, "fleet_concurrency": fleet_seqs, "fleet_kv_cache_bytes": int(fleet_kv),
                           "fleet_why": f"Little's Law: {num(wl.peak_rps)} peak RPS x {num(latency)} s expected "
                                        f"latency (TTFT SLO + P95 output x ITL SLO) = {num(fleet_seqs, 4)} sequences"},
        "5_precision": {**chosen, "changes": changes,
                        "tp": {"native": par_native["tp"], "chosen": par["tp"]},
                        "replicas_per_node": {"native": par_native["replicas_per_node"],
                                              "chosen": par["replicas_per_node"]}},
        "6_parallelism": par,
        "7_10_benchmark": bench if bench is not None else {"reason": reasons["usable_rps_per_instance"]},
        "8_9_checklist": _checklist(wl, gpu, chosen, curve, total_gpus),
        "11_fleet": ({"instances": instances, "total_gpus": total_gpus, "dp": instances,
                      "why": f"ceil(ceil({num(wl.peak_rps)} / {num(usable or 0, 4)}) x "
                             f"(1 + {num(wl.safety_factor)})) = {instances}"
                             f" instances x {par['gpus_per_instance']} GPUs"}
                     if instances is not None else {"reason": reasons["instances"]}),
        "12_cost": ({"cost_per_million_tokens_usd": cost, "annual_cost_usd": annual,
                     "average_utilization": utilization,
                     "why": f"{num(gpu.hour_usd)} USD/GPU-hour x {total_gpus} GPUs / ({num(wl.average_rps)} average RPS x "
                            f"{num(wl.output_tokens.p50)} output tokens x 3600)",
                     "warning": (f"average utilization {utilization:.0%} is below {UTILIZATION_TRAP:.0%}: the "
                                 f"utilization trap inflates the cost per token; fill idle capacity "
                                 f"(offline batch, colocation) or scale down off-peak") if trap else None}
                    if cost is not None else {"reason": reasons.get("cost_per_million_tokens_usd",
                                                                     "no average traffic to spread the cost over")}),
    }
    return SizingResult(
        kv_bytes_per_token=chosen["kv_bytes_per_token"], memory_floor_bytes=chosen["memory_floor_bytes"],
        min_gpus=chosen["min_gpus"], tp=par["tp"], pp=par["pp"], instances=instances, total_gpus=total_gpus,
        usable_rps_per_instance=usable, cost_per_million_tokens_usd=cost, annual_cost_usd=annual,
        binding_constraint=binding, binding_reason=binding_why, reasons=reasons, gpu=gpu.name,
        precision=Precision(weights, kv_cache), steps=steps, tier_plans=tuple(tier_plans))


def with_observed(wl: Workload, input_tokens: Lengths | None, output_tokens: Lengths | None,
                  peak_rps: float | None) -> Workload:
    """Step 13 -> Step 1: the workload with what production measured in place of what was assumed."""
    return replace(wl, input_tokens=input_tokens or wl.input_tokens, output_tokens=output_tokens or wl.output_tokens,
                   peak_rps=peak_rps if peak_rps is not None else wl.peak_rps)
