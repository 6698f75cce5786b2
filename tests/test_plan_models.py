"""`fleetwatch plan` on the models people deploy, read from their real config.json files
(tests/fixtures/models/, each with its source), against an independent computation, the model
cards' published counts, and vLLM's own start-up logs (tests/fixtures/vllm-logs/)."""
from __future__ import annotations

import json
import re
from typing import Any

import pytest

from exporter.planner.architecture import (
    from_hf_config, kv_bytes, kv_bytes_per_token, parameters, weight_bytes)
from exporter.planner.gpus import CATALOGUE, Gpu, lookup
from exporter.planner.sizing import Engine, Layout, Lengths, Workload, _per_gpu, size, tp_problem
from exporter.model import Slo

from conftest import FIXTURES, fixture_text

GIB = 1 << 30


def config(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(fixture_text(f"models/{name}.config.json"))
    return doc


# ---------------------------------------------------------------- the independent computation
# Written from each family's modelling code (transformers' modeling_<type>.py), one branch per family,
# reading the raw config keys: not the planner's generic path.


def by_hand(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(total parameters, active parameters, KV bytes per token at 16 bits) of the text model."""
    c = {**cfg, **cfg.get("text_config", {})}
    t = c["model_type"]
    if t == "gemma3_text":  # Gemma3TextConfig's defaults, for the keys a multimodal config leaves out
        c = {"vocab_size": 262_208, "head_dim": 256, "num_attention_heads": 8, "num_key_value_heads": 4, **c}
    h, L, V = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    H = c["num_attention_heads"]
    K = c.get("num_key_value_heads", H)
    d = c.get("head_dim") or h // H
    tied = c.get("tie_word_embeddings", t.startswith("gemma"))
    embed = V * h * (1 if tied else 2)
    if t in ("deepseek_v2", "deepseek_v3", "kimi_k2"):
        qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
        r, qr = c["kv_lora_rank"], c["q_lora_rank"]
        q = (h * qr + qr + qr * H * qk) if qr else h * H * qk  # V2-Lite projects Q without a low-rank step
        attn = (q + h * (r + c["qk_rope_head_dim"]) + r
                + r * H * (c["qk_nope_head_dim"] + c["v_head_dim"]) + H * c["v_head_dim"] * h)
        dense = c["first_k_dense_replace"]
        E, k, Im, S = c["n_routed_experts"], c["num_experts_per_tok"], c["moe_intermediate_size"], c["n_shared_experts"]
        expert = 3 * h * Im
        bias = E if c.get("topk_method") == "noaux_tc" else 0  # V3's score-correction bias per expert
        moe_fixed = S * expert + h * E + bias  # shared experts, router
        total = (L * (attn + 2 * h) + dense * 3 * h * c["intermediate_size"]
                 + (L - dense) * (moe_fixed + E * expert) + embed + h)
        active = total - (L - dense) * (E - k) * expert
        return total, active, L * (r + c["qk_rope_head_dim"]) * 2
    qkv_bias = t in ("qwen2", "qwen2_5_vl") or c.get("attention_bias", False)
    attn = h * H * d + 2 * h * K * d + H * d * h
    attn += (H * d + 2 * K * d if qkv_bias else 0) + (h if c.get("attention_bias", False) else 0)
    attn += 2 * d if t in ("qwen3", "qwen3_moe", "gemma3_text") else 0  # q_norm, k_norm
    attn += H if t == "gpt_oss" else 0  # attention sinks
    norms = 4 * h if t.startswith("gemma") else 2 * h
    if t in ("mixtral", "qwen3_moe", "gpt_oss"):
        E = c.get("num_local_experts") or c["num_experts"]
        k = c.get("num_experts_per_tok") or c["experts_per_token"]
        Im = c.get("moe_intermediate_size") or c["intermediate_size"]
        expert = 3 * h * Im + ((2 * Im + h) if t == "gpt_oss" else 0)
        router = h * E + (E if t == "gpt_oss" else 0)
        total = L * (attn + norms + router + E * expert) + embed + h
        active = total - L * (E - k) * expert
    else:
        total = active = L * (attn + norms + 3 * h * c["intermediate_size"]) + embed + h
    return total, active, 2 * L * K * d * 2


FAMILIES = {  # file -> (family, the card's total, its active count, how the card counts active)
    "llama-3.1-8b": ("Llama 3.x", "8B", None, ""),
    "llama-3.1-70b": ("Llama 3.x", "70B", None, ""),
    "llama-3.1-405b": ("Llama 3.x", "405B", None, ""),
    "qwen2.5-7b": ("Qwen2.5", "7.61B", None, ""),
    "qwen2.5-72b": ("Qwen2.5", "72.7B", None, ""),
    "qwen3-8b": ("Qwen3 dense", "8.2B", None, ""),
    "qwen3-32b": ("Qwen3 dense", "32.8B", None, ""),
    "qwen3-30b-a3b": ("Qwen3 MoE", "30.5B", 3.3e9, "with embeddings"),
    "qwen3-235b-a22b": ("Qwen3 MoE", "235B", 22e9, "with embeddings"),
    "mixtral-8x7b-v0.1": ("Mixtral", "47B", 13e9, "with embeddings"),
    "deepseek-v3": ("DeepSeek V3 (MLA)", "671B", 37e9, "with embeddings"),
    "kimi-k2-instruct": ("Kimi K2 (MLA)", "1T", 32e9, "with embeddings"),
    # Mistral AI's family: Mixtral above; no verbatim Mistral-7B config.json was found in a public repository
    "gemma-2-9b-it": ("Gemma 2", "9.24B", None, ""),
    "gemma-3-27b-it": ("Gemma 3 (multimodal)", "27B", None, ""),
    "gemma-3-4b-it": ("Gemma 3 (multimodal)", "4.3B", None, ""),
    "deepseek-v2-lite-chat": ("DeepSeek V2 (MLA)", "16B", 2.4e9, "without the input embedding"),
    "gpt-oss-20b": ("gpt-oss", "21B", 3.6e9, "without the input embedding"),
    "gpt-oss-120b": ("gpt-oss", "117B", 5.1e9, "without the input embedding"),
    "qwen2.5-vl-7b-instruct": ("multimodal (Qwen2.5-VL)", "8.29B", None, ""),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_kv_bytes_and_parameters_equal_the_independent_computation(name: str) -> None:
    cfg = config(name)
    arch = from_hf_config(cfg)
    total, active, kv = by_hand(cfg)
    p = parameters(arch)
    assert kv_bytes_per_token(arch, "bf16") == kv, name
    assert p.total - p.vision == total, name  # the text model exactly; a vision tower is approximate
    assert p.active - p.vision == active, name
    if arch.vision:
        assert any(arch.vision in n for n in arch.notes), arch.notes  # the tower is named, counted or not
    family, card, published_active, convention = FAMILIES[name]
    # and the model card's figure, to the precision the card states it (half a unit of its last digit), or 2%
    mantissa = card[:-1]
    published = float(mantissa) * {"B": 1e9, "T": 1e12}[card[-1]]
    unit = 10 ** -len(mantissa.partition(".")[2])
    assert p.total == pytest.approx(published, rel=max(0.02, 0.5 * unit / float(mantissa))), (name, p.total)
    if published_active is not None:
        counted = p.active - (p.embeddings if convention == "without the input embedding" else 0)
        assert counted == pytest.approx(published_active, rel=0.05), (name, counted)


def test_mla_kv_is_the_latent_on_every_rank_not_heads() -> None:
    """DeepSeek V3: 61 layers x (512 latent + 64 rope) x 2 B = 70,272 B per token, 25x under the MHA
    reading (2 x 61 x 128 heads x 56 x 2 = 1,748,992); the latent is whole on every TP rank."""
    arch = from_hf_config(config("deepseek-v3"))
    assert kv_bytes_per_token(arch, "bf16") == 61 * 576 * 2 == 70_272
    mha = 2 * 61 * 128 * (7168 // 128) * 2
    assert mha / kv_bytes_per_token(arch, "bf16") > 24
    # TP 8: each of the 8 GPUs holds 70,272 B per token, the instance 8x
    assert kv_bytes_per_token(arch, "bf16", tp=8) == 8 * 70_272
    # the first three layers are dense: every layer as MoE would add 3 x 256 experts' worth (+5%)
    assert arch.moe_layers == 58
    assert tp_problem(arch, 8) is None  # 128 heads; MLA has no KV heads to divide


def test_sliding_window_layers_hold_at_most_the_window() -> None:
    """gpt-oss-20b: 12 of 24 layers slide within 128 tokens (layer_types); Gemma 2 9B: every other
    layer within 4,096. KV for a sequence is summed layer type by layer type."""
    oss = from_hf_config(config("gpt-oss-20b"))
    per_layer = 2 * 8 * 64 * 2  # K and V, 8 KV heads of 64, 16-bit
    assert (oss.sliding_layers, oss.sliding_window) == (12, 128)
    assert kv_bytes(oss, "bf16", 2500) == 12 * 2500 * per_layer + 12 * 128 * per_layer
    assert kv_bytes(oss, "bf16", 100) == 24 * 100 * per_layer  # within the window every layer holds it all
    gemma = from_hf_config(config("gemma-2-9b-it"))
    per_layer = 2 * 8 * 256 * 2
    assert (gemma.sliding_layers, gemma.sliding_window) == (21, 4096)
    assert kv_bytes(gemma, "bf16", 8192) == 21 * 8192 * per_layer + 21 * 4096 * per_layer
    # the MHA-everywhere reading overstates gpt-oss's KV about 2x at 2,500 tokens
    assert 24 * 2500 * 2048 / kv_bytes(oss, "bf16", 2500) > 1.9


def test_quantization_config_sets_the_weight_bytes() -> None:
    """FP8 block-scaled (DeepSeek V3, Qwen3 FP8): linear layers at 1 B (+ one FP32 scale per 128x128
    block), embeddings, LM head and norms at 2 B. MXFP4 (gpt-oss): the experts at 4.25 bits, the rest 16."""
    ds = from_hf_config(config("deepseek-v3"))
    p = parameters(ds)
    linear = p.attention + p.dense_mlp + p.experts + p.shared
    assert weight_bytes(ds) == pytest.approx(linear * (1 + 4 / 128 / 128) + (p.total - linear) * 2)
    oss = from_hf_config(config("gpt-oss-120b"))
    q = parameters(oss)
    assert weight_bytes(oss) == pytest.approx(q.experts * 4.25 / 8 + (q.total - q.experts) * 2)
    # the FP8 Qwen3-235B checkpoint loads as 55.19 GiB per GPU at TP 4 (vLLM's log): ours within 1%
    fp8 = from_hf_config(config("qwen3-235b-a22b-fp8"))
    loading = re.search(r"Model loading took ([\d.]+) GiB",
                        fixture_text("vllm-logs/qwen3-235b-a22b-2507-fp8_rtxpro6000x4_tp4_v0.27.1.log"))
    assert loading
    logged = float(loading[1])
    assert weight_bytes(fp8) / 4 / GIB == pytest.approx(logged, rel=0.01)


def test_config_quirks_are_read_or_said() -> None:
    gemma = config("gemma-2-9b-it")
    assert "tie_word_embeddings" not in gemma  # Gemma's config class ties by default
    assert from_hf_config(gemma).tied_embeddings
    # a multimodal text_config without vocab_size takes its config class's default, and says so
    gemma3 = {"model_type": "gemma3", "text_config": {
        "model_type": "gemma3_text", "hidden_size": 5376, "intermediate_size": 21504, "num_attention_heads": 32,
        "num_hidden_layers": 62, "num_key_value_heads": 16, "head_dim": 128, "sliding_window": 1024},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                          "num_hidden_layers": 27, "patch_size": 14}}
    arch = from_hf_config(gemma3)
    assert arch.vocab == 262_208 and any("vocab_size" in n for n in arch.notes)
    # Gemma 3: every sixth layer global, the others within 1,024 tokens
    assert (arch.sliding_layers, arch.sliding_window) == (62 - 62 // 6, 1024)
    assert arch.vision == "siglip_vision_model" and any("siglip_vision_model" in n for n in arch.notes)
    # an unknown model type without tie_word_embeddings: transformers' default (tied), said
    odd = from_hf_config({**config("llama-3.1-8b"), "model_type": "newthing"} | {"tie_word_embeddings": None})
    assert odd.tied_embeddings and any("tie_word_embeddings" in n for n in odd.notes)
    # a quantization method fleetwatch cannot size is said, not silently 16-bit
    hqq = from_hf_config({**config("llama-3.1-8b"), "quantization_config": {"quant_method": "hqq"}})
    assert hqq.quantization is None and any("hqq" in n for n in hqq.notes)


# ---------------------------------------------------------------- vLLM's memory accounting, against its logs

LOG_SETUPS = [  # log, model config, GPU total as logged, TP, gpu_memory_utilization, max_num_batched_tokens
    # vLLM 0.27.1 serve, default batch; the log's model is the 2507 FP8 release, whose shapes are the FP8 config's
    ("qwen3-235b-a22b-2507-fp8_rtxpro6000x4_tp4_v0.27.1.log", "qwen3-235b-a22b-fp8", 95.01, 4, 0.90, 8192),
    # the V0 engine without chunked prefill profiles a batch of max_model_len tokens
    ("llama-3.1-8b-instruct_rtx3090_tp1_v0-engine_maxlen20000.log", "llama-3.1-8b", 23.58, 1, 0.90, 20000),
    ("llama-3.1-8b-instruct_rtx3090_tp1_v0-engine_maxlen29000.log", "llama-3.1-8b", 23.58, 1, 0.90, 29000),
]


def logged_tokens(log: str) -> int:
    text = fixture_text(f"vllm-logs/{log}")
    if m := re.search(r"GPU KV cache size: ([\d,]+) tokens", text):
        return int(m[1].replace(",", ""))
    blocks = re.search(r"GPU blocks: (\d+)", text)
    assert blocks, log
    return int(blocks[1]) * 16  # vLLM's CUDA block size


def _gpu(total_gib: float) -> Gpu:
    return Gpu("logged", total_gib * 1.07, 1.0, {"fp16": 100.0}, "nvlink", 100, 1.0, reported_gib=total_gib)


@pytest.mark.parametrize("log,model,total,tp,utilization,batched", LOG_SETUPS, ids=[s[0][:30] for s in LOG_SETUPS])
def test_kv_capacity_within_ten_percent_of_vllms_log(log: str, model: str, total: float, tp: int,
                                                     utilization: float, batched: int) -> None:
    arch = from_hf_config(config(model))
    wl = Workload(Lengths(1, 1, 1), Lengths(1, 1, 1), 1, 1, Slo(1, 1))
    ours = _per_gpu(arch, wl, _gpu(total), None, "bf16", tp, 1, Engine(utilization, batched))["tokens"]
    assert ours == pytest.approx(logged_tokens(log), rel=0.10), (log, ours)


def test_kv_bytes_per_token_per_gpu_match_vllms_logs() -> None:
    """Available KV memory over the logged token count is vLLM's KV per token on one GPU: ours to 0.2%
    (the GiB figure is rounded to two decimals), dense at TP 4 with 4 KV heads, and gpt-oss's hybrid
    layers (vLLM counts a token in every layer)."""
    for log, model, tp in (("qwen3-235b-a22b-2507-fp8_rtxpro6000x4_tp4_v0.27.1.log", "qwen3-235b-a22b-fp8", 4),
                           ("gpt-oss-120b_kaggle-1gpu_tp1_v0.11.2.log", "gpt-oss-120b", 1),
                           ("meta-llama-3-8b_a100-40gb_tp1_v0-engine.log", "llama-3.1-8b", 1)):
        text = fixture_text(f"vllm-logs/{log}")
        gib = re.search(r"(?:Available KV cache memory: |kv cache memory in use is |reserved for KV Cache is )"
                        r"([\d.]+) ?GiB", text)
        assert gib, log
        per_token = float(gib[1]) * GIB / logged_tokens(log)
        ours = kv_bytes_per_token(from_hf_config(config(model)), "bf16", tp) / tp
        assert per_token == pytest.approx(ours, rel=0.002), (log, per_token, ours)
    # MLA at TP 2 x PP 2 (DeepSeek-V2-Lite): the first stage's GPUs hold 14 of the 27 layers, each the whole
    # 576-wide latent (not split by TP); vLLM's token count is the smaller stage's
    lite = from_hf_config(config("deepseek-v2-lite-chat"))
    text = fixture_text("vllm-logs/deepseek-v2-lite_l4x4_tp2-pp2_v0.1.dev7548.log")
    stages = sorted({float(g) for g in re.findall(r"Available KV cache memory: ([\d.]+) GiB", text)}, reverse=True)
    per_layer = kv_bytes_per_token(lite, "bf16", tp=2) / 2 / lite.layers
    assert per_layer == 576 * 2
    tokens = min(g * GIB / (n * per_layer) for g, n in zip(stages, (14, 13)))
    assert tokens == pytest.approx(logged_tokens("deepseek-v2-lite_l4x4_tp2-pp2_v0.1.dev7548.log"), rel=0.002)


# ---------------------------------------------------------------- TP and layouts vLLM accepts

WL = Workload(Lengths(900, 2000, 3500), Lengths(250, 500, 900), peak_rps=20, average_rps=10, slo=Slo(2.0, 0.05))


def test_tp_must_divide_kv_heads_or_be_a_multiple_and_replication_is_counted() -> None:
    qwen = from_hf_config(config("qwen3-235b-a22b"))  # 64 heads, 4 KV heads
    assert tp_problem(qwen, 8) is None  # 8 is a multiple of 4: each rank holds a copy of one KV head
    # so a GPU at TP 8 holds as much KV per token as at TP 4, twice the 4-heads-over-8-GPUs share
    assert kv_bytes_per_token(qwen, "bf16", tp=8) / 8 == kv_bytes_per_token(qwen, "bf16", tp=4) / 4
    assert kv_bytes_per_token(qwen, "bf16", tp=8) / 8 == 2 * kv_bytes_per_token(qwen, "bf16") / 8
    ten = from_hf_config({**config("llama-3.1-8b"), "num_attention_heads": 40, "num_key_value_heads": 10,
                                                  "head_dim": 128})
    assert tp_problem(ten, 4) and "10 KV heads" in (tp_problem(ten, 4) or "")
    plan = size(WL, ten, lookup("H100"), CATALOGUE, layout=Layout())
    assert plan.tp in (1, 2, 5, 10) and tp_problem(ten, plan.tp) is None
    with pytest.raises(ValueError, match="--tp 4"):
        size(WL, ten, lookup("H100"), CATALOGUE, layout=Layout(tp=4))
    replicated = size(WL, qwen, lookup("H100"), CATALOGUE, weights="fp8", layout=Layout(tp=8))
    assert any("replicates" in w for w in replicated.warnings)


def test_pinned_tp_and_expert_parallel() -> None:
    qwen = from_hf_config(config("qwen3-30b-a3b"))
    pinned = size(WL, qwen, lookup("H100"), CATALOGUE, layout=Layout(tp=2, ep=2))
    assert (pinned.tp, pinned.pp) == (2, 1) and pinned.steps["6_parallelism"]["experts_per_gpu"] == 64
    with pytest.raises(ValueError, match="equals --tp"):
        size(WL, qwen, lookup("H100"), CATALOGUE, layout=Layout(tp=2, ep=4))
    with pytest.raises(ValueError, match="mixture-of-experts"):
        size(WL, from_hf_config(config("llama-3.1-8b")), lookup("H100"), CATALOGUE, layout=Layout(ep=2))


def test_quantized_checkpoints_fit_where_vllm_runs_them() -> None:
    """gpt-oss-120b's MXFP4 experts fit one 80 GB GPU (not TP 4 at 16 bits); a 70B at FP8 weights fits
    one H100 at a low concurrency, as vLLM serves it."""
    oss = size(WL, from_hf_config(config("gpt-oss-120b")), lookup("H100"), CATALOGUE)
    assert oss.tp == 1 and oss.precision.weights == "mxfp4"
    small = Workload(Lengths(900, 2000, 3500), Lengths(250, 500, 900), 5, 2, Slo(2.0, 0.05),
                     concurrency_per_instance=1)
    llama = size(small, from_hf_config(config("llama-3.1-70b")), lookup("H100"), CATALOGUE, weights="fp8")
    assert llama.tp == 1, llama.steps["6_parallelism"]
    # Qwen3-235B-A22B-FP8 runs at TP 4 on H100 (vLLM's log in issue 21348 shows it): room for KV at TP 4
    qwen = size(WL, from_hf_config(config("qwen3-235b-a22b-fp8")), lookup("H100"), CATALOGUE)
    assert qwen.tp == 4 and qwen.kv_capacity_tokens and qwen.kv_capacity_tokens > 178_880


def test_a_model_past_one_node_is_a_verdict_naming_the_nodes() -> None:
    """Llama 3.1 405B at BF16 on L40S (48 GB, PCIe): no layout of one 8-GPU node holds 756 GiB."""
    plan = size(WL, from_hf_config(config("llama-3.1-405b")), lookup("L40S"), CATALOGUE)
    assert plan.binding_constraint == "multi_node"
    assert "nodes" in plan.binding_reason and f"--pp {plan.pp}" in plan.binding_reason
    assert plan.tp * plan.pp > 8 and plan.steps["6_parallelism"]["nodes_per_instance"] >= 2


def test_the_report_states_vllms_kv_line_and_the_memory_source() -> None:
    plan = size(WL, from_hf_config(config("qwen3-32b")), lookup("H100"), CATALOGUE)
    cap = plan.steps["5_precision"]["kv_capacity"]
    assert cap["line"].startswith(f"KV cache: {plan.kv_capacity_tokens:,} tokens; maximum concurrency")
    arch = from_hf_config(config("qwen3-32b"))
    assert f"P95 input + output (2,500 tokens, {2500 * kv_bytes_per_token(arch, 'bf16') / 2**20:,.0f} MiB of KV each)" \
        in cap["line"]
    assert "vLLM's start-up memory profile" in plan.steps["5_precision"]["overhead_source"]
    assert plan.tokens_per_gpu_hour == pytest.approx(10 * 250 * 3600 / plan.total_gpus)  # type: ignore[operator]


def test_gpu_catalogue_variants_aliases_and_ambiguity() -> None:
    assert lookup("H100-80GB").name == lookup("NVIDIA H100 80GB HBM3").name == "H100-SXM"
    assert lookup("a100_40gb").reported_gib == 39.50  # vLLM's total_gpu_memory on an A100 40GB
    with pytest.raises(KeyError, match="ambiguous: say A100-40GB or A100-80GB"):
        lookup("A100")
    for name in ("H100-SXM", "H100-PCIe", "H100-NVL", "H200", "H20", "A100-40GB", "A100-80GB", "L4", "L40S",
                 "MI300X", "MI325X", "B200", "GB200"):
        g = CATALOGUE[name]
        assert g.reported_gib is not None and g.reported_gib < g.hbm_gb, name  # a little under the nominal GiB


def test_the_model_fixtures_are_the_ones_sources_md_lists() -> None:
    listed = fixture_text("models/SOURCES.md")
    for f in (FIXTURES / "models").glob("*.json"):
        assert f"`{f.name}`" in listed, f.name


# ---------------------------------------------------------------- found by trying it as a new user would


def test_configs_that_would_size_another_model_are_refused() -> None:
    from exporter.planner.architecture import ArchitectureError

    ds = config("deepseek-v3")
    for key, words in (("kv_lora_rank", "needs kv_lora_rank"), ("moe_intermediate_size", "moe_intermediate_size")):
        with pytest.raises(ArchitectureError, match=words):  # not MHA of 128 heads, not 5,923B parameters
            from_hf_config({k: v for k, v in ds.items() if k != key})
    with pytest.raises(ArchitectureError, match="num_local_experts: null"):  # not a dense 3B gpt-oss-120b
        from_hf_config({**config("gpt-oss-120b"), "num_local_experts": None})
    with pytest.raises(ArchitectureError, match="not a multiple of num_attention_heads"):
        from_hf_config({**config("llama-3.1-70b"), "hidden_size": 8001})
    odd = from_hf_config({**config("llama-3.1-8b"), "torch_dtype": "float64", "model_type": None})
    assert any("float64" in n for n in odd.notes) and any("no model_type" in n for n in odd.notes)


def test_the_estimate_reads_the_experts_a_batch_routes_to() -> None:
    """gpt-oss-120b, 4 of 128 experts a token: a batch of b touches 1 - (124/128)^b of them, so past a few
    dozen sequences a step reads nearly every expert, not the active 4."""
    from exporter.planner.sizing import BANDWIDTH_EFFICIENCY, roofline

    arch = from_hf_config(config("gpt-oss-120b"))
    h100 = lookup("H100")
    est = roofline(arch, WL, h100, None, "bf16", 1, 1, 1000)
    b = est["batch"]
    assert b > 1
    p = parameters(arch)
    total = weight_bytes(arch)
    experts = total * p.experts / p.total
    read = total - experts + experts * (1 - (1 - 4 / 128) ** b)
    kv = kv_bytes(arch, "bf16", WL.input_tokens.p50 + WL.output_tokens.p50 / 2)
    assert est["step_ms"] == pytest.approx((read + b * kv) / (h100.hbm_tb_s * 1e12 * BANDWIDTH_EFFICIENCY) * 1000)
    assert read > 0.9 * total  # the batch touches nearly every expert
    assert "dense fp16 TFLOPS" in est["assumptions"]  # MXFP4 weights compute with 16-bit activations


def test_layout_words_say_what_was_pinned_and_what_was_chosen() -> None:
    gemma = from_hf_config(config("gemma-3-27b-it"))
    plan = size(WL, gemma, lookup("H100"), CATALOGUE, layout=Layout(tp=1))
    par = plan.steps["6_parallelism"]
    if plan.pp > 1:  # TP 1 cannot hold 27B at 16 bits with 32 sequences: PP is the planner's, and said
        assert "chosen" in par["why"] and any("--tp 1 does not hold" in w for w in plan.warnings)
    assert par["why"].startswith("pinned: TP 1")
    pcie = size(WL, from_hf_config(config("qwen3-32b")), lookup("L40S"), CATALOGUE, layout=Layout(tp=4))
    assert any("TP 4 over pcie" in w for w in pcie.warnings)
    qwen = from_hf_config(config("qwen3-30b-a3b"))
    ep_only = size(WL, qwen, lookup("H100"), CATALOGUE, layout=Layout(ep=2))
    assert (ep_only.tp, ep_only.steps["6_parallelism"]["ep"]) == (2, 2)


def test_estimate_failure_utilization_and_chapter_capacity_are_said() -> None:
    # a decode step that misses the ITL SLO at any batch: the binding says the estimate failed, and why
    tight = Workload(WL.input_tokens, WL.output_tokens, WL.peak_rps, WL.average_rps, Slo(2.0, 0.005))
    slow = size(tight, from_hf_config(config("llama-3.1-70b")), lookup("H100"), CATALOGUE)
    assert slow.instances is None and slow.binding_constraint == "roofline_estimate"
    assert "misses the ITL SLO" in slow.binding_reason
    # the utilization trap is a warning like the others (stderr, JSON), not only a line of the cost step
    idle = Workload(WL.input_tokens, WL.output_tokens, peak_rps=20, average_rps=1, slo=WL.slo)
    llama = from_hf_config(config("llama-3.1-8b"))
    assert any("utilization trap" in w for w in size(idle, llama, lookup("H100"), CATALOGUE).warnings)
    # the rule of thumb's KV room differs from vLLM's, and the KV line follows the memory model chosen
    from exporter.planner.sizing import MemoryModel

    chapter = size(WL, llama, lookup("H100"), CATALOGUE, memory_model=MemoryModel.CHAPTER)
    vllm = size(WL, llama, lookup("H100"), CATALOGUE)
    assert chapter.kv_capacity_tokens != vllm.kv_capacity_tokens
    room = (0.925 * 80e9 - chapter.steps["5_precision"]["weights_bytes"] * 1.2) / kv_bytes_per_token(llama, "bf16")
    assert chapter.kv_capacity_tokens == pytest.approx(room, abs=1)
    # an MXFP4 re-quantization of a model that has no such checkpoint is said
    assert any("--weights mxfp4" in w for w in size(WL, llama, lookup("H100"), CATALOGUE, weights="mxfp4").warnings)
