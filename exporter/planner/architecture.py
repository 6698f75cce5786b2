"""The model side of Steps 4-5: parameters, KV cache bytes per token, LoRA adapter bytes.

Read from a Hugging Face ``config.json`` (or given inline). Two errors of the published
estimators are avoided on purpose:
- grouped-query attention: the KV cache holds ``num_key_value_heads`` heads, not
  ``num_attention_heads`` (gpu_poor sizes GQA models as if every head had its own K and V);
- ``head_dim`` is read when the config sets it, and only derived as hidden / heads when it does
  not (llm-analysis always derives it, which is wrong for Gemma, Qwen3 and Mistral-Nemo-style
  configs, where head_dim x heads differs from hidden).
Mixture-of-experts models count every expert's weights (they all sit in HBM) and report the
active parameters per token beside them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
_TORCH_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float8_e4m3fn": "fp8", "int8": "int8"}


class ArchitectureError(ValueError):
    """A config.json (or inline block) that does not describe a model this planner can size."""


@dataclass(frozen=True)
class Architecture:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int | None = None
    vocab: int | None = None
    experts: int = 0  # routed experts (0: dense)
    experts_per_token: int = 0
    moe_intermediate: int | None = None
    shared_experts: int = 0
    tied_embeddings: bool = False
    native_dtype: str = "bf16"
    params: float | None = None  # given: used as is; otherwise counted from the shapes

    @property
    def total_params(self) -> float:
        return self.params if self.params is not None else count_params(self)[0]

    @property
    def active_params(self) -> float:
        return count_params(self)[1] if self.params is None or self.experts else self.total_params


def kv_bytes_per_token(arch: Architecture, kv_dtype: str) -> int:
    """K and V, for every layer and KV head: 2 x layers x kv_heads x head_dim x bytes."""
    return int(2 * arch.layers * arch.kv_heads * arch.head_dim * BYTES[kv_dtype])


def count_params(arch: Architecture) -> tuple[float, float]:
    """(total, active per token) parameters from the shapes: attention (Q, K, V, O), a gated MLP
    (gate, up, down) or routed experts plus shared ones, embeddings (and an untied LM head)."""
    q = arch.hidden * arch.heads * arch.head_dim
    kv = 2 * arch.hidden * arch.kv_heads * arch.head_dim
    o = arch.heads * arch.head_dim * arch.hidden
    attention = q + kv + o
    if arch.experts:
        width = arch.moe_intermediate or arch.intermediate
        if width is None:
            raise ArchitectureError("a mixture-of-experts model needs moe_intermediate_size (or intermediate_size)")
        expert = 3 * arch.hidden * width
        router = arch.hidden * arch.experts
        mlp_total = arch.experts * expert + arch.shared_experts * expert + router
        mlp_active = arch.experts_per_token * expert + arch.shared_experts * expert + router
    else:
        if arch.intermediate is None:
            raise ArchitectureError("intermediate_size is needed to count parameters (or give num_parameters)")
        mlp_total = mlp_active = 3 * arch.hidden * arch.intermediate
    norms = 2 * arch.hidden
    embed = (arch.vocab or 0) * arch.hidden * (1 if arch.tied_embeddings else 2)
    total = arch.layers * (attention + mlp_total + norms) + embed
    active = arch.layers * (attention + mlp_active + norms) + embed
    return float(total), float(active)


def lora_bytes(arch: Architecture, rank: int, dtype: str) -> int:
    """One adapter on the attention projections (Q, K, V, O) of every layer: rank x (in + out) each."""
    q = arch.hidden + arch.heads * arch.head_dim
    kv = 2 * (arch.hidden + arch.kv_heads * arch.head_dim)
    o = arch.heads * arch.head_dim + arch.hidden
    return int(arch.layers * rank * (q + kv + o) * BYTES[dtype])


MAX_DIMENSION = 10_000_000  # no layer count, width, head count or vocabulary of a real model is larger


def _int(cfg: Mapping[str, Any], *keys: str) -> int | None:
    """The first of ``keys`` present, as a positive whole number; None when none is there. A key that is
    there but not such a number is an error: falling back would size another model (a kv-head count
    taken for the head count gives 8x the KV)."""
    for k in keys:
        if k not in cfg or cfg[k] is None:
            continue
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_DIMENSION:
            raise ArchitectureError(f"{k}: expected a whole number from 1 to {MAX_DIMENSION:,}, got {_json(v)}")
        return v
    return None


def from_hf_config(cfg: Mapping[str, Any]) -> Architecture:
    """An Architecture from a Hugging Face config.json (a text_config inside is read for multimodal ones)."""
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _int(cfg, "hidden_size", "n_embd", "d_model")
    heads = _int(cfg, "num_attention_heads", "n_head")
    if layers is None or hidden is None or heads is None:
        raise ArchitectureError("config needs num_hidden_layers, hidden_size and num_attention_heads")
    # no num_key_value_heads: multi-head attention (every head its own K and V); 1: multi-query
    kv_heads = _int(cfg, "num_key_value_heads", "n_head_kv", "num_kv_heads") or (
        1 if cfg.get("multi_query") is True else heads)  # Falcon writes MQA as multi_query: true
    if heads % kv_heads:
        raise ArchitectureError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    head_dim = _int(cfg, "head_dim") or hidden // heads
    dtype = _TORCH_DTYPES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"), "bf16")
    experts = _int(cfg, "num_local_experts", "num_experts", "n_routed_experts") or 0
    params = cfg.get("num_parameters")
    if params is not None and (isinstance(params, bool) or not isinstance(params, (int, float))
                               or not 0 < params <= 1e15):
        raise ArchitectureError(f"num_parameters: expected a positive number up to 1e15, got {_json(params)}")
    return Architecture(
        layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        intermediate=_int(cfg, "intermediate_size", "ffn_dim"), vocab=_int(cfg, "vocab_size"),
        experts=experts, experts_per_token=_int(cfg, "num_experts_per_tok", "num_experts_per_token") or (2 if experts else 0),
        moe_intermediate=_int(cfg, "moe_intermediate_size"), shared_experts=_int(cfg, "n_shared_experts") or 0,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)), native_dtype=dtype,
        params=float(params) if params is not None else None,
    )


def _json(value: Any) -> str:
    """A config.json value as JSON spells it (a string in quotes, true, null), cut at 40 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= 40 else text[:40] + "..."
