"""The model side of sizing: parameters, weight bytes, KV cache bytes, LoRA adapter bytes.

Read from a Hugging Face ``config.json`` (or given inline), each attention family from its own keys:
- multi-head, grouped-query and multi-query attention: K and V for ``num_key_value_heads`` heads of
  ``head_dim`` (read when the config sets it; hidden / heads only when it does not, which is wrong
  for Gemma, Qwen3 and Mistral-Nemo-style configs);
- multi-head latent attention (DeepSeek V2/V3/R1, Kimi K2): one compressed latent of
  ``kv_lora_rank + qk_rope_head_dim`` per layer and token, not a K and a V per head, and held whole
  on every tensor-parallel rank (vLLM does not shard it);
- sliding-window and hybrid layers (Mistral v0.1, Gemma 2 and 3, gpt-oss): the layers that attend
  within a window hold at most ``sliding_window`` tokens of a sequence, whatever its length.
Mixture-of-experts models count every expert's weights (they all sit in HBM), the dense layers
before the first MoE one, and the shared experts, and report the active parameters beside them.
Weight bytes follow the checkpoint's ``quantization_config``: which layers are quantized and to
how many bits, the rest staying 16-bit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "mxfp4": 4.25 / 8}
_TORCH_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float8_e4m3fn": "fp8", "int8": "int8"}

# model types whose config class ties the LM head to the embeddings when the key is absent (transformers'
# defaults); every other known type defaults to untied. An unknown type takes PretrainedConfig's default
# (tied), with a warning.
TIED_BY_DEFAULT = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n_text", "qwen3_next"})
UNTIED_BY_DEFAULT = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "deepseek_v2", "deepseek_v3",
    "kimi_k2", "gpt_oss", "phi3", "olmo2", "granite", "falcon", "llava", "mllama", "qwen2_5_vl", "qwen2_vl",
    "mistral3", "llama4_text", "llama4"})
# keys a config class fills in when config.json leaves them out (a multimodal text_config often does)
TYPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {"vocab_size": 262_208, "sliding_window_pattern": 6, "head_dim": 256, "sliding_window": 4096,
                    "num_attention_heads": 8, "num_key_value_heads": 4},
    "gemma2": {"sliding_window": 4096, "head_dim": 256},
}
MLA_TYPES = frozenset({"deepseek_v2", "deepseek_v3", "kimi_k2"})  # their attention is latent: kv_lora_rank is required
# keys that, when a config writes them, must hold a number: a null there would size another model
# (null experts: a dense 3B for gpt-oss-120b)
NOT_NULL = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "num_local_experts",
            "num_experts", "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "kv_lora_rank",
            "qk_rope_head_dim", "qk_nope_head_dim")
QKV_BIAS_TYPES = frozenset({"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl"})  # biased Q, K and V, no key for it
QK_NORM_TYPES = frozenset({"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2"})  # RMSNorm on Q and K per head
SANDWICH_NORM_TYPES = frozenset({"gemma2", "gemma3", "gemma3_text"})  # four norms a layer, not two


class ArchitectureError(ValueError):
    """A config.json (or inline block) that does not describe a model this planner can size."""


@dataclass(frozen=True)
class Mla:
    """Multi-head latent attention's shapes (DeepSeek V2/V3)."""

    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None


@dataclass(frozen=True)
class Quantization:
    """How a checkpoint stores its weights: ``bytes_per_param`` for the quantized ones (scales
    included), over ``scope``: "linear" (every linear layer but the LM head) or "experts" (only the
    routed experts, as MXFP4 does). Everything else stays at the 16-bit dtype."""

    method: str
    weights: str  # the precision a plan names: fp8, int8, int4, mxfp4
    bytes_per_param: float
    scope: str
    why: str


@dataclass(frozen=True)
class Parameters:
    """Parameter counts by part of the model (the parts weights are stored differently by)."""

    embeddings: float
    lm_head: float
    attention: float  # linear weights of the attention projections
    dense_mlp: float  # the MLPs of dense layers
    experts: float  # every routed expert
    experts_active: float  # the routed experts one token runs through
    shared: float  # shared experts
    other: float  # norms, biases, routers, attention sinks: always 16-bit
    vision: float = 0.0  # a multimodal model's vision tower (approximate, from vision_config)

    @property
    def total(self) -> float:
        return (self.embeddings + self.lm_head + self.attention + self.dense_mlp + self.experts + self.shared
                + self.other + self.vision)

    @property
    def active(self) -> float:
        return self.total - self.experts + self.experts_active


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
    shared_intermediate: int | None = None  # one shared expert's width when it differs from moe_intermediate
    moe_layers: int | None = None  # layers with experts (None: all of them, when experts > 0)
    tied_embeddings: bool = False
    native_dtype: str = "bf16"
    params: float | None = None  # given: used as is; otherwise counted from the shapes
    model_type: str = ""
    name: str = ""  # the model's name as the config gives it (_name_or_path), to check a sweep against
    mla: Mla | None = None
    sliding_window: int | None = None
    sliding_layers: int = 0  # layers that attend within the window
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    norms_per_layer: int = 2
    expert_bias: bool = False  # gpt-oss: biased expert projections and router
    router_bias: bool = False  # DeepSeek V3's aux-loss-free routing: a score-correction bias per expert
    attention_sinks: bool = False
    quantization: Quantization | None = None
    vision_params: float = 0.0
    vision: str | None = None  # the vision tower's model type, when there is one
    mtp_layers: int = 0  # multi-token-prediction layers in the checkpoint (vLLM loads them only to speculate)
    notes: tuple[str, ...] = ()  # what was assumed reading the config, said where the plan is shown

    @property
    def attention(self) -> str:
        if self.mla is not None:
            return "mla"
        if self.kv_heads == self.heads:
            return "mha"
        return "mqa" if self.kv_heads == 1 else "gqa"

    @property
    def full_layers(self) -> int:
        return self.layers - self.sliding_layers

    @property
    def total_params(self) -> float:
        return self.params if self.params is not None else parameters(self).total

    @property
    def active_params(self) -> float:
        return parameters(self).active if self.params is None or self.experts else self.total_params

    @property
    def checkpoint_weights(self) -> str:
        """The weights' precision as the checkpoint stores them."""
        return self.quantization.weights if self.quantization else self.native_dtype


def kv_layer_bytes(arch: Architecture, kv_dtype: str, tp: int = 1) -> float:
    """One layer's KV for one token, summed over the instance's ``tp`` ranks: MLA's latent on every
    rank; K and V of each KV head, replicated when TP exceeds the KV heads (each rank holds one)."""
    if arch.mla is not None:
        return tp * (arch.mla.kv_lora_rank + arch.mla.qk_rope_head_dim) * BYTES[kv_dtype]
    return 2 * max(arch.kv_heads, tp) * arch.head_dim * BYTES[kv_dtype]


def kv_bytes_per_token(arch: Architecture, kv_dtype: str, tp: int = 1) -> int:
    """Every layer's KV for one token of a sequence still within the sliding window (as vLLM counts
    its "GPU KV cache size" tokens): 2 x layers x kv_heads x head_dim x bytes, or layers x latent."""
    return int(arch.layers * kv_layer_bytes(arch, kv_dtype, tp))


def kv_bytes(arch: Architecture, kv_dtype: str, tokens: float, tp: int = 1) -> float:
    """The KV of one sequence of ``tokens``, layer type by layer type: full-attention layers hold every
    token, sliding-window ones at most the window."""
    window = min(tokens, arch.sliding_window) if arch.sliding_window else tokens
    return kv_layer_bytes(arch, kv_dtype, tp) * (arch.full_layers * tokens + arch.sliding_layers * window)


def parameters(arch: Architecture) -> Parameters:
    """The parameter count by part, from the shapes."""
    h, L = arch.hidden, arch.layers
    other = 0.0
    if arch.mla is not None:
        m = arch.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = (h * m.q_lora_rank + m.q_lora_rank * arch.heads * qk) if m.q_lora_rank else h * arch.heads * qk
        attention = q + h * (m.kv_lora_rank + m.qk_rope_head_dim) \
            + m.kv_lora_rank * arch.heads * (m.qk_nope_head_dim + m.v_head_dim) + arch.heads * m.v_head_dim * h
        other += m.kv_lora_rank + (m.q_lora_rank or 0)  # the latent's norms
    else:
        q_out, kv_out = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
        attention = h * q_out + 2 * h * kv_out + q_out * h
        if arch.qkv_bias:
            other += q_out + 2 * kv_out
        if arch.o_bias:
            other += h
        if arch.qk_norm:
            other += 2 * arch.head_dim
        if arch.attention_sinks:
            other += arch.heads
    other += arch.norms_per_layer * h
    moe_layers = (arch.moe_layers if arch.moe_layers is not None else L) if arch.experts else 0
    dense_layers = L - moe_layers
    if dense_layers and arch.intermediate is None:
        raise ArchitectureError("intermediate_size is needed to count parameters (or give num_parameters)")
    dense_mlp = dense_layers * 3 * h * (arch.intermediate or 0)
    experts = active = shared = 0.0
    if arch.experts:
        width = arch.moe_intermediate or arch.intermediate
        if width is None:
            raise ArchitectureError("a mixture-of-experts model needs moe_intermediate_size (or intermediate_size)")
        expert = 3 * h * width + ((2 * width + h) if arch.expert_bias else 0)
        experts = moe_layers * arch.experts * expert
        active = moe_layers * arch.experts_per_token * expert
        shared_width = arch.shared_intermediate or width * arch.shared_experts
        shared = moe_layers * 3 * h * shared_width if arch.shared_experts else 0
        router = h * arch.experts + (arch.experts if arch.expert_bias or arch.router_bias else 0)
        if arch.shared_intermediate:
            router += h  # Qwen2-MoE's gate on the shared expert
        other_moe = moe_layers * router
    else:
        other_moe = 0
    vocab = arch.vocab or 0
    return Parameters(
        embeddings=float(vocab * h), lm_head=0.0 if arch.tied_embeddings else float(vocab * h),
        attention=float(L * attention), dense_mlp=float(dense_mlp), experts=float(experts),
        experts_active=float(active), shared=float(shared), other=float(L * other + other_moe + h),
        vision=arch.vision_params)


def count_params(arch: Architecture) -> tuple[float, float]:
    """(total, active per token) parameters from the shapes (the vision tower included)."""
    p = parameters(arch)
    return p.total, p.active


def weight_bytes(arch: Architecture, weights: str | None = None) -> float:
    """What the weights take in HBM: the checkpoint's quantization (or ``weights`` for every linear
    layer but the LM head, as vLLM's online quantization does); embeddings, LM head, norms and
    routers at 16 bits. A model given only by its parameter count is count x bytes."""
    sixteen = BYTES["bf16"] if arch.native_dtype != "fp32" else BYTES["fp32"]
    if arch.params is not None:
        return arch.params * BYTES[weights or arch.checkpoint_weights]
    p = parameters(arch)
    linear = p.attention + p.dense_mlp + p.experts + p.shared
    rest = p.embeddings + p.lm_head + p.other + p.vision
    if weights is not None:
        return linear * BYTES[weights] + rest * sixteen
    q = arch.quantization
    if q is None:
        return (linear + rest) * BYTES[arch.native_dtype]
    quantized = p.experts if q.scope == "experts" else linear
    return quantized * q.bytes_per_param + (linear - quantized + rest) * sixteen


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


def _count(cfg: Mapping[str, Any], key: str) -> int:
    """A count that may be zero (dense layers first, shared experts, prediction layers); absent is 0."""
    v = cfg.get(key)
    if v is None or v == 0:
        return 0
    return _int(cfg, key) or 0


def _quantization(q: Any, dtype: str) -> tuple[Quantization | None, str | None]:
    """(how the checkpoint is quantized, a note when fleetwatch cannot tell) from quantization_config."""
    if not isinstance(q, dict):
        return None, None
    method = str(q.get("quant_method") or "").lower()
    if method in ("fp8", "fbgemm_fp8"):
        block: Any = q.get("weight_block_size")
        blocked = isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)
        scale = 4 / (block[0] * block[1]) if blocked else 0.0  # one FP32 scale per block
        return Quantization(method, "fp8", 1 + scale, "linear",
                            "FP8 linear layers" + (f", {block[0]}x{block[1]} block scales" if blocked else "")), None
    if method == "mxfp4":  # 4-bit values with one 8-bit scale per 32: 4.25 bits, on the routed experts
        return Quantization(method, "mxfp4", 4.25 / 8, "experts", "MXFP4 experts; attention, router and "
                                                                   "embeddings in 16 bits"), None
    if method in ("awq", "gptq", "awq_marlin", "gptq_marlin"):
        bits = q.get("bits") or q.get("w_bit") or 4
        group = q.get("group_size") or q.get("q_group_size") or 128
        if not isinstance(bits, int) or bits not in (2, 3, 4, 8) or not isinstance(group, int):
            return None, f"quantization_config: {method} with bits {_json(bits)} is not one fleetwatch sizes"
        per_group = (2 + bits / 8) / group if group > 0 else 0.0  # an FP16 scale and a packed zero per group
        return Quantization(method, "int4" if bits <= 4 else "int8", bits / 8 + per_group, "linear",
                            f"{method.upper()} INT{bits} linear layers, group {group}"), None
    if method == "compressed-tensors":
        groups: Any = q.get("config_groups")
        first: Any = next(iter(groups.values()), {}) if isinstance(groups, dict) and groups else {}
        w = first.get("weights") if isinstance(first, dict) else None
        if isinstance(w, dict) and w.get("num_bits") in (4, 8):
            bits = w["num_bits"]
            kind = "fp8" if bits == 8 and w.get("type") == "float" else "int8" if bits == 8 else "int4"
            group = w.get("group_size") if isinstance(w.get("group_size"), int) else 0
            extra = (2 / group) if group else 0.0
            return Quantization(method, kind, bits / 8 + extra, "linear",
                                f"compressed-tensors {kind.upper()} linear layers"), None
        return None, "quantization_config: compressed-tensors without a 4- or 8-bit weights scheme; weights sized " \
                     f"at {dtype}: give --weights"
    if method == "bitsandbytes":
        if q.get("load_in_4bit"):
            return Quantization(method, "int4", 0.5 + 4 / 64, "linear", "bitsandbytes 4-bit"), None
        if q.get("load_in_8bit"):
            return Quantization(method, "int8", 1.0, "linear", "bitsandbytes 8-bit"), None
    return None, (f"quantization_config: quant_method {_json(method)} is not one fleetwatch reads; weights sized at "
                  f"{dtype}: give --weights")


def _sliding(cfg: Mapping[str, Any], model_type: str, layers: int) -> tuple[int | None, int]:
    """(window, layers that use it) from layer_types, the Gemma patterns, Qwen's use_sliding_window, or
    a window every layer uses (Mistral v0.1)."""
    window = _int(cfg, "sliding_window")
    kinds = cfg.get("layer_types")
    if isinstance(kinds, list) and kinds:
        if len(kinds) != layers:
            raise ArchitectureError(f"layer_types: {len(kinds)} entries for {layers} layers")
        sliding = sum(1 for k in kinds if "sliding" in str(k) or "chunked" in str(k))
        if sliding and window is None:
            raise ArchitectureError("layer_types names sliding-window layers but sliding_window is not set")
        return (window, sliding) if sliding else (None, 0)
    if window is None:
        return None, 0
    if model_type.startswith("qwen"):  # Qwen writes a window it does not use unless use_sliding_window is true
        if not cfg.get("use_sliding_window"):
            return None, 0
        return window, max(0, layers - (_int(cfg, "max_window_layers") or 0))
    pattern = _int(cfg, "sliding_window_pattern")
    if pattern:  # Gemma 3: every pattern-th layer is global, the others slide
        return window, layers - layers // pattern
    if model_type == "gemma2":  # alternating, the first layer local
        return window, (layers + 1) // 2
    return window, layers


def _vision(v: Any, text_hidden: int) -> tuple[float, str | None]:
    """About how many parameters a ViT-style tower has (blocks, patch embedding, projector)."""
    if not isinstance(v, dict):
        return 0.0, None
    name = str(v.get("model_type") or "vision_config")
    h, i = v.get("hidden_size"), v.get("intermediate_size")
    n = v.get("num_hidden_layers") or v.get("depth")  # Qwen2-VL's tower says depth
    if not all(isinstance(x, int) and x > 0 for x in (h, i, n)):
        return 0.0, name
    assert isinstance(h, int) and isinstance(i, int) and isinstance(n, int)
    def whole(key: str, default: int) -> int:
        x = v.get(key)
        return x if isinstance(x, int) and not isinstance(x, bool) and x > 0 else default

    patch = whole("patch_size", 14)
    channels = whole("num_channels", whole("in_chans", 3))
    gated = str(v.get("hidden_act", "")).lower() in ("silu", "swiglu")  # Qwen2.5-VL's tower: a gated MLP
    block = 4 * h * h + 4 * h + (3 if gated else 2) * h * i + i + h + 4 * h
    merge = whole("spatial_merge_size", 1)
    wide = h * merge * merge  # the projector into the text model, from merged patches
    out = whole("out_hidden_size", text_hidden)
    temporal = whole("temporal_patch_size", 1)
    projector = wide * wide + wide * out if merge > 1 else h * out
    return float(n * block + temporal * patch * patch * channels * h + projector), name


def from_hf_config(cfg: Mapping[str, Any]) -> Architecture:
    """An Architecture from a Hugging Face config.json (a text_config inside is read for multimodal ones)."""
    notes: list[str] = []
    top = cfg
    vision_cfg = cfg.get("vision_config")
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}, **cfg["text_config"]}
    model_type = str(cfg.get("model_type") or top.get("model_type") or "")
    nulls = [k for k in NOT_NULL if k in cfg and cfg[k] is None]
    if nulls:
        raise ArchitectureError(f"{nulls[0]}: null where a whole number belongs")
    if not model_type:
        notes.append("no model_type: read as a generic decoder (no per-family defaults, biases or norms)")
    defaults = TYPE_DEFAULTS.get(model_type, {})
    filled = [k for k in defaults if cfg.get(k) is None]
    if filled and cfg is not top:
        notes.append(f"{model_type} text_config leaves out {', '.join(filled)}: taken as its config class's defaults "
                     f"({', '.join(f'{k} {defaults[k]}' for k in filled)})")
    cfg = {**defaults, **{k: v for k, v in cfg.items() if v is not None}}
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
    head_dim = _int(cfg, "head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ArchitectureError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}: give "
                                    f"head_dim")
        head_dim = hidden // heads
    written = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    dtype = _TORCH_DTYPES.get(written, "bf16")
    if written not in _TORCH_DTYPES:
        notes.append(f"torch_dtype {written} is not one vLLM serves: taken as bfloat16")
    experts = _int(cfg, "num_local_experts", "num_experts", "n_routed_experts") or 0
    params = cfg.get("num_parameters")
    if params is not None and (isinstance(params, bool) or not isinstance(params, (int, float))
                               or not 0 < params <= 1e15):
        raise ArchitectureError(f"num_parameters: expected a positive number up to 1e15, got {_json(params)}")
    mla = None
    if model_type in MLA_TYPES and cfg.get("kv_lora_rank") is None:
        raise ArchitectureError(f"a {model_type} config needs kv_lora_rank (its attention is a compressed latent)")
    if model_type in MLA_TYPES | {"qwen2_moe", "qwen3_moe"} and experts and cfg.get("moe_intermediate_size") is None:
        raise ArchitectureError(f"a {model_type} config with experts needs moe_intermediate_size")
    if cfg.get("kv_lora_rank") is not None:
        rope, nope = _int(cfg, "qk_rope_head_dim"), _int(cfg, "qk_nope_head_dim")
        if rope is None or nope is None:
            raise ArchitectureError("an MLA config (kv_lora_rank) needs qk_rope_head_dim and qk_nope_head_dim")
        mla = Mla(kv_lora_rank=_int(cfg, "kv_lora_rank") or 0, qk_rope_head_dim=rope, qk_nope_head_dim=nope,
                  v_head_dim=_int(cfg, "v_head_dim") or nope, q_lora_rank=_int(cfg, "q_lora_rank"))
    moe_layers = None
    if experts:
        dense = _count(cfg, "first_k_dense_replace")
        only = cfg.get("mlp_only_layers")
        step = _int(cfg, "decoder_sparse_step", "moe_layer_freq") or 1
        moe_layers = sum(1 for i in range(layers) if i >= dense and (i + 1) % step == 0
                         and not (isinstance(only, list) and i in only))
    tie = cfg.get("tie_word_embeddings")
    if tie is None:
        tie = model_type in TIED_BY_DEFAULT or model_type not in UNTIED_BY_DEFAULT
        if model_type not in TIED_BY_DEFAULT | UNTIED_BY_DEFAULT:
            notes.append(f"tie_word_embeddings not set and model type {model_type or '(none)'} unknown: taken as "
                         f"transformers' default (tied, no separate LM head)")
    quant, quant_note = _quantization(top.get("quantization_config") or cfg.get("quantization_config"), dtype)
    if quant_note:
        notes.append(quant_note)
    window, sliding = _sliding(cfg, model_type, layers)
    vision_params, vision = _vision(vision_cfg, hidden)
    if vision and not vision_params:
        notes.append(f"the vision tower ({vision}) is not counted: its vision_config has no hidden_size, "
                     f"intermediate_size and num_hidden_layers (or depth)")
    elif vision:
        notes.append(f"the vision tower ({vision}) counted approximately from vision_config: "
                     f"{vision_params / 1e9:.2f}B parameters")
    cross = cfg.get("cross_attention_layers")
    if isinstance(cross, list) and cross:
        notes.append(f"{len(cross)} of {layers} layers cross-attend to the image: counted as self-attention layers, "
                     f"so KV and parameters are approximate")
    mtp = _count(cfg, "num_nextn_predict_layers")
    if mtp:
        notes.append(f"{mtp} multi-token-prediction layer(s) in the checkpoint are not counted: vLLM loads them "
                     f"only for speculative decoding")
    attention_bias = bool(cfg.get("attention_bias", False))
    shared_width = _int(cfg, "shared_expert_intermediate_size")
    return Architecture(
        layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        intermediate=_int(cfg, "intermediate_size", "ffn_dim"), vocab=_int(cfg, "vocab_size"),
        experts=experts, experts_per_token=_int(cfg, "num_experts_per_tok", "num_experts_per_token",
                                                "experts_per_token") or (2 if experts else 0),
        moe_intermediate=_int(cfg, "moe_intermediate_size"),
        shared_experts=_count(cfg, "n_shared_experts") or (1 if shared_width else 0), shared_intermediate=shared_width,
        moe_layers=moe_layers, tied_embeddings=bool(tie), native_dtype=dtype,
        params=float(params) if params is not None else None, model_type=model_type,
        name=str(top.get("_name_or_path") or ""), mla=mla, sliding_window=window, sliding_layers=sliding,
        qkv_bias=attention_bias or model_type in QKV_BIAS_TYPES, o_bias=attention_bias,
        qk_norm=model_type in QK_NORM_TYPES, norms_per_layer=4 if model_type in SANDWICH_NORM_TYPES else 2,
        expert_bias=model_type == "gpt_oss", router_bias=cfg.get("topk_method") == "noaux_tc",
        attention_sinks=model_type == "gpt_oss", quantization=quant,
        vision_params=vision_params, vision=vision, mtp_layers=mtp, notes=tuple(notes))


def describe(arch: Architecture) -> str:
    """The attention family and the layers, in a line: what the KV formula was."""
    if arch.mla is not None:
        kv = f"MLA latent {arch.mla.kv_lora_rank} + rope {arch.mla.qk_rope_head_dim} per layer, on every TP rank"
    else:
        kv = f"{arch.attention.upper()} {arch.kv_heads} KV heads x {arch.head_dim}"
    if arch.sliding_layers:
        kv += (f"; {arch.sliding_layers} of {arch.layers} layers slide within {arch.sliding_window:,} tokens"
               if arch.sliding_layers < arch.layers else f"; every layer slides within {arch.sliding_window:,} tokens")
    return f"{arch.layers} layers, {kv}"


def _json(value: Any) -> str:
    """A config.json value as JSON spells it (a string in quotes, true, null), cut at 40 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= 40 else text[:40] + "..."


__all__ = ["BYTES", "Architecture", "ArchitectureError", "Mla", "Parameters", "Quantization", "count_params",
           "describe", "from_hf_config", "kv_bytes", "kv_bytes_per_token", "kv_layer_bytes", "lora_bytes",
           "parameters", "weight_bytes"]
