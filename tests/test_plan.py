"""`fleetwatch plan`: Steps 1-12 of 9.1 from a workload, a model and a GPU, and Step 13's loop back."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.sizing import recommended_instances
from exporter.planner.architecture import count_params, from_hf_config, kv_bytes_per_token
from exporter.planner.gpus import CATALOGUE, lookup
from exporter.planner.sizing import Lengths, MemoryModel, Workload, size
from exporter.model import Slo

from conftest import fixture_text
from fakes import FakeTarget

ROOT = Path(__file__).resolve().parents[1]

# public config.json excerpts (Hugging Face), the keys the planner reads
LLAMA_3_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64, "num_hidden_layers": 80,
               "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
               "model_type": "llama"}
LLAMA_3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
              "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16", "model_type": "llama"}
FALCON_7B = {"hidden_size": 4544, "n_head": 71, "n_layer": 32, "multi_query": True, "vocab_size": 65024,
             "torch_dtype": "bfloat16"}
GEMMA_7B = {"hidden_size": 3072, "intermediate_size": 24576, "num_attention_heads": 16, "num_key_value_heads": 16,
            "head_dim": 256, "num_hidden_layers": 28, "vocab_size": 256000, "torch_dtype": "bfloat16"}
MISTRAL_NEMO = {"hidden_size": 5120, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
                "head_dim": 128, "num_hidden_layers": 40, "vocab_size": 131072, "torch_dtype": "bfloat16"}
MIXTRAL_8X7B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
                "num_hidden_layers": 32, "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000,
                "tie_word_embeddings": False, "torch_dtype": "bfloat16", "model_type": "mixtral"}

WORKLOAD = Workload(input_tokens=Lengths(900, 2000, 3500), output_tokens=Lengths(250, 500, 900), peak_rps=1500,
                    average_rps=600, slo=Slo(2.0, 0.05))


# ---------------------------------------------------------------- the KV formula and parameter counts


def test_kv_bytes_per_token_reads_kv_heads_and_an_explicit_head_dim() -> None:
    # GQA, Llama 3 8B: 2 x 32 layers x 8 KV heads (not 32 query heads) x 128 x 2 B
    assert kv_bytes_per_token(from_hf_config(LLAMA_3_8B), "fp16") == 2 * 32 * 8 * 128 * 2 == 131_072
    # MQA, Falcon 7B: one KV head; head_dim 4544 / 71 = 64
    falcon = from_hf_config(FALCON_7B)
    assert (falcon.kv_heads, falcon.head_dim) == (1, 64)
    assert kv_bytes_per_token(falcon, "fp16") == 2 * 32 * 1 * 64 * 2 == 8_192
    # an explicit head_dim unlike hidden / heads: Gemma 7B 256 (not 3072 / 16 = 192), Mistral-Nemo 128 (not 160)
    assert kv_bytes_per_token(from_hf_config(GEMMA_7B), "fp16") == 2 * 28 * 16 * 256 * 2 == 458_752
    assert kv_bytes_per_token(from_hf_config(MISTRAL_NEMO), "fp8") == 2 * 40 * 8 * 128 * 1 == 81_920
    # multi-head attention: no num_key_value_heads means every head has its own K and V
    mha = from_hf_config({k: v for k, v in LLAMA_3_8B.items() if k != "num_key_value_heads"})
    assert kv_bytes_per_token(mha, "fp16") == 2 * 32 * 32 * 128 * 2


def test_parameters_are_counted_from_the_shapes_dense_and_moe() -> None:
    """By hand. Llama 3 70B, per layer: Q 8192 x 8192 = 67,108,864; K and V 2 x 8192 x 1024 = 16,777,216;
    O 67,108,864; gated MLP 3 x 8192 x 28672 = 704,643,072; two norms 16,384: 855,654,400, x 80 =
    68,452,352,000; embeddings and LM head 2 x 128256 x 8192 = 2,101,346,304; the final norm 8,192:
    70,553,706,496 (70.6B).
    Mixtral 8x7B, per layer: attention 16,777,216 + 8,388,608 + 16,777,216 = 41,943,040; an expert
    3 x 4096 x 14336 = 176,160,768, eight of them 1,409,286,144; router 4096 x 8 = 32,768; norms 8,192:
    1,451,270,144, x 32 = 46,440,644,608, + 2 x 32000 x 4096 = 262,144,000, + the final norm 4,096:
    46,702,792,704 (46.7B). Active (two experts): 41,943,040 + 352,321,536 + 32,768 + 8,192 = 394,305,536,
    x 32 + 262,144,000 + 4,096 = 12,879,925,248 (12.9B)."""
    assert count_params(from_hf_config(LLAMA_3_70B)) == (70_553_706_496, 70_553_706_496)
    assert count_params(from_hf_config(MIXTRAL_8X7B)) == (46_702_792_704, 12_879_925_248)
    # a config that states its parameter count is taken at its word
    assert from_hf_config({**LLAMA_3_70B, "num_parameters": 70_600_000_000}).total_params == 70.6e9


# ---------------------------------------------------------------- the worked example


def test_worked_example_70b_gqa_on_h100_fp16_against_fp8() -> None:
    """Llama 3 70B (GQA: 8 KV heads of 128) on H100 (80 GB), 32 sequences of P95 2,000 in + 500 out.

    KV per token: 2 x 80 x 8 x 128 x 2 B = 327,680 B; for 32 x 2,500 = 80,000 tokens: 26.21 GB.
    FP16: weights 70.554B x 2 = 141.11 GB, activations 20% = 28.22 GB; 195.54 GB. The framework takes 7.5%
      of the instance's VRAM, so n GPUs hold 0.925 x 80 n GB: 195.54 / 74 = 2.64 -> 3 GPUs, whose floor is
      195.54 + 0.075 x 3 x 80 = 213.54 GB. The lowest TP >= 3 that divides 64 heads: TP 4, 2 replicas per
      8-GPU node.
    FP8 weights (KV stays at the native FP16): weights 70.55 GB, activations 14.11 GB; 110.88 GB / 74 = 1.50
      -> 2 GPUs; floor 110.88 + 12 = 122.88 GB. TP 2: 4 replicas per node, twice as many.
    """
    arch = from_hf_config(LLAMA_3_70B)
    h100 = lookup("H100")
    fp16 = size(WORKLOAD, arch, h100, CATALOGUE, memory_model=MemoryModel.CHAPTER)
    fp8 = size(WORKLOAD, arch, h100, CATALOGUE, weights="fp8", memory_model=MemoryModel.CHAPTER)
    assert fp16.kv_bytes_per_token == fp8.kv_bytes_per_token == 327_680
    assert fp16.steps["4_memory_floor"]["kv_cache_bytes"] == 26_214_400_000
    assert (fp16.min_gpus, fp16.tp, fp16.pp) == (3, 4, 1)
    assert (fp8.min_gpus, fp8.tp, fp8.pp) == (2, 2, 1)
    assert fp16.memory_floor_bytes / 1e9 == pytest.approx(213.54, abs=0.01)
    assert fp8.memory_floor_bytes / 1e9 == pytest.approx(122.88, abs=0.01)
    step5 = fp8.steps["5_precision"]
    assert step5["tp"] == {"native": 4, "chosen": 2}
    assert step5["replicas_per_node"] == {"native": 2, "chosen": 4}
    assert step5["changes"]["min_gpus"] == {"native": 3, "chosen": 2}
    # without a sweep the instance count is the roofline estimate, and says so
    assert fp16.binding_constraint == fp8.binding_constraint == "roofline_estimate"
    assert fp8.estimate and fp8.instances is not None and fp8.steps["7_10_benchmark"]["estimate"] is True


def test_an_fp8_kv_cache_and_pcie_change_what_step_5_and_6_decide() -> None:
    arch = from_hf_config(LLAMA_3_70B)
    kv8 = size(WORKLOAD, arch, lookup("H100"), CATALOGUE, weights="fp8", kv_cache="fp8")
    assert kv8.kv_bytes_per_token == 327_680 // 2
    # L40S (48 GB, PCIe): 122.88 GB-class floor needs 4 GPUs; TP stops at 2 without NVLink, so PP 2
    l40s = size(WORKLOAD, arch, CATALOGUE["L40S"], CATALOGUE, weights="fp8", memory_model=MemoryModel.CHAPTER)
    assert (l40s.tp, l40s.pp) == (2, l40s.min_gpus // 2 + l40s.min_gpus % 2)
    assert l40s.binding_constraint == "interconnect" and "pcie" in l40s.binding_reason


# ---------------------------------------------------------------- sweep -> plan -> config -> check

SWEEP = [  # concurrency, rps, ttft_p99, itl_p99: TTFT crosses its 2 s SLO between 100 and 1,000 RPS
    (1, 0.001, 0.1, 0.01), (2, 1, 0.2, 0.015), (4, 10, 0.4, 0.02), (8, 100, 1.0, 0.03), (16, 1000, 3.0, 0.04),
    (32, 100000, 10.0, 0.2)]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def _inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = tmp_path / "config.json"
    model.write_text(json.dumps(LLAMA_3_70B))
    workload = tmp_path / "workload.yaml"
    workload.write_text("input_tokens: {p50: 900, p95: 2000, p99: 3500}\noutput_tokens: {p50: 250, p95: 500, p99: 900}\n"
                        "peak_rps: 1500\naverage_rps: 600\nslo: {ttft_p99: 2s, itl_p99: 50ms}\n")
    sweep = tmp_path / "sweep.csv"
    with sweep.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["concurrency", "rps", "ttft_p99", "itl_p99"])
        w.writerows(SWEEP)
    return model, workload, sweep


def test_vllm_bench_serve_results_read_as_the_csv_does(tmp_path: Path) -> None:
    model, workload, sweep = _inputs(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    for c, rps, ttft, itl in SWEEP:  # one --save-result file per --max-concurrency, as a sweep script writes them
        (results / f"c{c:03d}.json").write_text(json.dumps({
            "backend": "vllm", "max_concurrency": c, "completed": 1000, "request_throughput": rps,
            "p99_ttft_ms": ttft * 1000, "p99_itl_ms": itl * 1000, "mean_e2el_ms": c / rps * 1000}))
    a = json.loads(_cli("plan", "-w", str(workload), "-m", str(model), "-g", "H100", "--weights", "fp8", "--sweep",
                        str(sweep), "--format", "json").stdout)
    b = json.loads(_cli("plan", "-w", str(workload), "-m", str(model), "-g", "H100", "--weights", "fp8", "--sweep",
                        str(results), "--format", "json").stdout)
    assert a["usable_rps_per_instance"] == b["usable_rps_per_instance"] == pytest.approx(550.0)
    # the JSON's mean e2e latency makes Little's Law checkable: L = lambda W holds exactly here
    assert b["steps"]["7_10_benchmark"]["littles_law_gap"] == pytest.approx(1.0)
    assert a["instances"] == recommended_instances(1500, 550.0, 0.2) and a["total_gpus"] == a["instances"] * 2


@pytest.mark.integration
def test_round_trip_sweep_plan_config_check(tmp_path: Path) -> None:
    model, workload, sweep = _inputs(tmp_path)
    r = _cli("plan", "-w", str(workload), "-m", str(model), "-g", "H100", "--weights", "fp8", "--sweep", str(sweep),
             "--format", "yaml")
    assert r.returncode == 0, r.stderr
    (tmp_path / "h100.yaml").write_text(r.stdout)
    engines = [FakeTarget([fixture_text(f"vllm/generated/vllm-0.33.0/snapshot-{i:02d}.prom") for i in (5, 12)])
               for _ in range(2)]
    try:
        cfg = tmp_path / "fleet.yaml"
        cfg.write_text("interval: 5s\nscrape_timeout: 2s\ntiers:\n  h100:\n    plan: h100.yaml\n    targets:\n"
                       + "".join(f"      - {{vllm: '{e.url}'}}\n" for e in engines))
        assert _cli("validate-config", str(cfg)).returncode == 0
        out = _cli("check", "--config", str(cfg), "--window", "1s", "--format", "json")
    finally:
        for e in engines:
            e.close()
    report = json.loads(out.stdout)["tiers"]["h100"]
    per_instance = report["metrics"]["requests_per_second"]["value"] / report["instances"]["up"]
    checks = {c["check"]: c for c in report["plan_checks"]}
    ttft = checks["ttft_p99_vs_benchmark"]
    # the prediction comes from the ingested curve: between the two swept TTFTs around the observed load
    below = max(p for p in SWEEP if p[1] <= per_instance)
    above = min(p for p in SWEEP if p[1] >= per_instance)
    assert ttft["status"] != "unknown", ttft
    assert below[2] - 1e-9 <= ttft["predicted"] <= above[2] + 1e-9, (per_instance, ttft)
    assert report["resize"]["recommended_instances"] is not None


def _report(tmp_path: Path, factor: float, rps: float) -> Path:
    """A report as `check --format json` writes it, of the plan's workload with input lengths x factor."""
    tier = {"metrics": {"requests_per_second": {"value": rps}}, "resize": {"peak_rps": rps},
            "history": {"covers_seconds": 300}, "workload": {
                "input_tokens": {"p50": 900 * factor, "p95": 2000 * factor, "p99": 3500 * factor, "samples": 5000},
                "output_tokens": {"p50": 250, "p95": 500, "p99": 900, "samples": 5000}}}
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"tiers": {"h100": tier}}))
    return path


def test_step_13_from_report_resizes_from_what_production_observed(tmp_path: Path) -> None:
    model, workload, sweep = _inputs(tmp_path)
    base = ["plan", "-w", str(workload), "-m", str(model), "-g", "H100", "--weights", "fp8", "--sweep", str(sweep),
            "--format", "json"]
    before = json.loads(_cli(*base).stdout)
    after_run = _cli(*base, "--from-report", str(_report(tmp_path, 2.0, 2400.0)))
    assert after_run.returncode == 0, after_run.stderr
    after = json.loads(after_run.stdout)
    # twice the input: the KV cache grows by (2 x 2000 + 500) / (2000 + 500) = 1.8x, and so the floor
    kv_before = before["steps"]["5_precision"]["kv_cache_bytes"]
    assert after["steps"]["5_precision"]["kv_cache_bytes"] == pytest.approx(kv_before * 4500 / 2500)
    assert after["memory_floor_bytes"] > before["memory_floor_bytes"]
    assert after["steps"]["1_workload"]["input_tokens"] == {"p50": 1800, "p95": 4000, "p99": 7000}
    # and the observed 2,400 RPS peak, not the assumed 1,500, sets the instance count
    assert before["instances"] == recommended_instances(1500, 550.0, 0.2)
    assert after["instances"] == recommended_instances(2400, 550.0, 0.2) != before["instances"]


def test_plan_input_errors_name_the_file_and_key(tmp_path: Path) -> None:
    model, workload, sweep = _inputs(tmp_path)
    good = workload.read_text()
    bad = tmp_path / "bad.yaml"
    for old, new, key in (("p95: 2000", "p95: 800", "input_tokens"), ("ttft_p99: 2s", "ttft_p99: soon", "slo.ttft_p99"),
                          ("average_rps: 600", "average_rps: 6000", "average_rps"),
                          ("peak_rps: 1500", "peak_rps: 1500\nburst: 3", "burst")):
        bad.write_text(good.replace(old, new))
        r = _cli("plan", "-w", str(bad), "-m", str(model), "-g", "H100")
        assert r.returncode == 2 and str(bad) in r.stderr and key in r.stderr, (key, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    r = _cli("plan", "-w", str(workload), "-m", str(model), "-g", "TPU9")
    assert r.returncode == 2 and "unknown GPU TPU9 (" in r.stderr and "--gpu-catalog" in r.stderr
    assert "'" not in r.stderr and '"' not in r.stderr, r.stderr  # the message, not a repr of it
    catalog = tmp_path / "gpus.yaml"
    catalog.write_text("H100: {hour_usd: 2.0}\n")
    r2 = json.loads(_cli("plan", "-w", str(workload), "-m", str(model), "-g", "h100", "--gpu-catalog", str(catalog),
                         "--sweep", str(sweep), "--format", "json").stdout)
    assert r2["plan"]["gpu_hour_cost_usd"] == 2.0


def test_the_examples_plan_is_a_plan_serve_reads(tmp_path: Path) -> None:
    """The README's command on examples/plan: its YAML loads as a tier's plan, with the JSON's numbers."""
    from exporter.config import load_config

    ex = ROOT / "examples" / "plan"
    args = ["plan", "-w", str(ex / "workload.yaml"), "-m", str(ex / "llama-3-70b.config.json"), "-g", "H100",
            "--weights", "fp8", "--sweep", str(ex / "sweep.csv")]
    doc = json.loads(_cli(*args, "--format", "json").stdout)
    (tmp_path / "h100.yaml").write_text(_cli(*args, "--format", "yaml").stdout)
    (tmp_path / "fleet.yaml").write_text("tiers:\n  h100:\n    plan: h100.yaml\n    targets: [{vllm: 'http://x:1/m'}]\n")
    plan = load_config(str(tmp_path / "fleet.yaml")).tiers["h100"].plan
    assert (plan.instances, plan.gpus_per_instance) == (doc["instances"], doc["tp"] * doc["pp"])
    assert plan.benchmark.usable_rps_per_instance == pytest.approx(doc["usable_rps_per_instance"], rel=1e-5)
    assert plan.benchmark.curve and plan.precision is not None and plan.precision.weights == "fp8"
    table = _cli(*args).stdout  # the table names each part of the sizing in words, with the fleet's count
    assert f"fleet          {doc['instances']} instances" in table and "memory floor" in table


def test_step_3_routes_simple_requests_to_a_small_tier_and_sizes_each(tmp_path: Path) -> None:
    model, workload, sweep = _inputs(tmp_path)
    routed = tmp_path / "routed.yaml"
    routed.write_text(workload.read_text().replace("peak_rps: 1500", "peak_rps: 6000") + "simple_share: 0.4\n")
    small = tmp_path / "small.json"
    small.write_text(json.dumps(LLAMA_3_8B))
    args = ["plan", "-w", str(routed), "-m", str(model), "-g", "H100", "--weights", "fp8", "--sweep", str(sweep)]
    doc = json.loads(_cli(*args, "--small-model", str(small), "--small-sweep", str(sweep), "--format", "json").stdout)
    r = doc["steps"]["3_routing"]
    assert r["multi_tier"] is True and doc["total_gpus"] > 8
    large, little = r["tiers"]
    # each tier sized on its own share: 60% and 40% of 6,000 peak RPS, the small model on one GPU
    assert (large["peak_rps"], little["peak_rps"]) == pytest.approx((3600.0, 2400.0))
    assert large["plan"]["instances"] == recommended_instances(3600, 550.0, 0.2)
    assert little["plan"]["instances"] == recommended_instances(2400, 550.0, 0.2)
    assert little["plan"]["tp"] == 1 and little["plan"]["memory_floor_bytes"] < large["plan"]["memory_floor_bytes"]
    # as YAML, one plan document per tier
    text = _cli(*args, "--small-model", str(small), "--small-sweep", str(sweep), "--format", "yaml").stdout
    import yaml

    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [d["instances"] for d in docs] == [large["plan"]["instances"], little["plan"]["instances"]]
    # a small model given where routing does not pay is said, not dropped
    ignored = json.loads(_cli("plan", "-w", str(workload), "-m", str(model), "-g", "H100", "--weights", "fp8",
                              "--sweep", str(sweep), "--small-model", str(small), "--format", "json").stdout)
    assert any("small model is not sized" in w for w in ignored["warnings"])
    # no simple share, or a fleet of 8 GPUs or fewer: no routing
    plain = json.loads(_cli("plan", "-w", str(workload), "-m", str(model), "-g", "H100", "--weights", "fp8",
                            "--sweep", str(sweep), "--format", "json").stdout)
    assert plain["steps"]["3_routing"]["multi_tier"] is False


# ---------------------------------------------------------------- what used to be answered silently


def _result(tmp_path: Path, name: str, **fields: object) -> Path:
    doc = {"backend": "vllm", "max_concurrency": 8, "completed": 1000, "request_throughput": 100.0,
           "p99_ttft_ms": 1000.0, "p99_itl_ms": 30.0, **fields}
    path = tmp_path / "results" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({k: v for k, v in doc.items() if v is not None}))
    return path


def test_a_sweep_of_another_model_or_gpu_or_with_tpot_for_itl_is_warned(tmp_path: Path) -> None:
    _, workload, _ = _inputs(tmp_path)
    folder = tmp_path / "Llama-3.1-70B"  # the config's folder names the model, as a Hugging Face download does
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_3_70B))
    args = ["plan", "-w", str(workload), "-m", str(folder / "config.json"), "-g", "H100", "--format", "json",
            "--sweep", str(tmp_path / "results")]
    _result(tmp_path, "c8", model_id="meta-llama/Llama-3.1-70B", gpu="NVIDIA H100 80GB HBM3")
    _result(tmp_path, "c16", max_concurrency=16, model_id="meta-llama/Llama-3.1-70B", gpu="H100-SXM")
    clean = _cli(*args)
    assert clean.returncode == 0, clean.stderr
    assert not [w for w in json.loads(clean.stdout)["warnings"] if "sweep" in w], clean.stdout[-500:]
    _result(tmp_path, "c32", max_concurrency=32, request_throughput=150.0, p99_itl_ms=None, p99_tpot_ms=40.0,
            model_id="Qwen/Qwen3-32B", gpu="A100-80GB")
    r = _cli(*args)
    warnings = json.loads(r.stdout)["warnings"]
    assert any("p99_tpot_ms" in w and "32" in w for w in warnings), warnings
    assert any("Qwen/Qwen3-32B" in w and "planned model" in w for w in warnings), warnings
    assert any("A100-80GB" in w and "H100-SXM" in w for w in warnings), warnings
    assert all(f"warning: {w}" in r.stderr for w in warnings)  # on stderr too, whatever the format


def test_gpu_names_variants_and_ambiguity_at_the_command_line(tmp_path: Path) -> None:
    model, workload, sweep = _inputs(tmp_path)
    plain = _cli("plan", "-w", str(workload), "-m", str(model), "-g", "A100", "--sweep", str(sweep))
    assert plain.returncode == 2 and "A100 is ambiguous: say A100-40GB or A100-80GB" in plain.stderr
    ok = _cli("plan", "-w", str(workload), "-m", str(model), "-g", "H100-80GB", "--sweep", str(sweep),
              "--format", "json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["gpu"] == "H100-SXM"


def test_without_a_sweep_the_count_is_a_labelled_estimate_and_tokens_per_gpu_hour_are_printed(tmp_path: Path) -> None:
    model, workload, sweep = _inputs(tmp_path)
    base = ["plan", "-w", str(workload), "-m", str(model), "-g", "H100", "--weights", "fp8"]
    est = json.loads(_cli(*base, "--format", "json").stdout)
    assert est["estimate"] is True and est["binding_constraint"] == "roofline_estimate"
    assert est["instances"] and est["plan"]["predicted"]["source"] == "roofline estimate"
    assert "assumptions" in est["steps"]["7_10_benchmark"]
    measured = json.loads(_cli(*base, "--sweep", str(sweep), "--format", "json").stdout)
    assert measured["estimate"] is False and measured["plan"]["predicted"]["source"] == "sweep"
    # tokens per GPU-hour at average load: 600 RPS x 250 output tokens x 3600 over the fleet's GPUs
    assert measured["tokens_per_gpu_hour"] == pytest.approx(600 * 250 * 3600 / measured["total_gpus"])
    table = _cli(*base, "--sweep", str(sweep)).stdout
    assert f"{measured['tokens_per_gpu_hour']:,.0f} tokens per GPU-hour" in table
    assert "ESTIMATE" in _cli(*base).stdout and "ESTIMATE" in _cli(*base, "--format", "yaml").stdout
    plan_yaml = _cli(*base, "--sweep", str(sweep), "--format", "yaml").stdout
    (tmp_path / "p.yaml").write_text(plan_yaml)
    (tmp_path / "fleet.yaml").write_text("tiers:\n  h100:\n    plan: p.yaml\n    targets: [{vllm: 'http://x:1/m'}]\n")
    from exporter.config import load_config

    plan = load_config(str(tmp_path / "fleet.yaml")).tiers["h100"].plan
    assert plan.predicted_tokens_per_gpu_hour == pytest.approx(measured["tokens_per_gpu_hour"], rel=1e-6)
    # an estimated plan is no yardstick yet: serve refuses it, saying why
    (tmp_path / "p.yaml").write_text(_cli(*base, "--format", "yaml").stdout)
    refused = _cli("validate-config", str(tmp_path / "fleet.yaml"))
    assert refused.returncode == 2 and "without a concurrency sweep" in refused.stderr


def test_fp8_kv_checklist_says_when_the_cache_is_already_fp8(tmp_path: Path) -> None:
    arch = from_hf_config(LLAMA_3_70B)
    kv8 = size(WORKLOAD, arch, lookup("H100"), CATALOGUE, weights="fp8", kv_cache="fp8")
    item = next(i for i in kv8.steps["8_9_checklist"] if i["item"] == "fp8_kv_cache")
    assert item["on"] is False and "already FP8" in item["why"]
    kv16 = size(WORKLOAD, arch, lookup("H100"), CATALOGUE, weights="fp8")
    assert "already" not in next(i for i in kv16.steps["8_9_checklist"] if i["item"] == "fp8_kv_cache")["why"]


def test_tp_pp_flags_and_the_memory_model_at_the_command_line(tmp_path: Path) -> None:
    model, workload, sweep = _inputs(tmp_path)
    base = ["plan", "-w", str(workload), "-m", str(model), "-g", "H100", "--sweep", str(sweep), "--format", "json"]
    pinned = json.loads(_cli(*base, "--weights", "fp8", "--tp", "4").stdout)
    assert (pinned["tp"], pinned["pp"]) == (4, 1) and "pinned" in pinned["steps"]["6_parallelism"]["why"]
    bad = _cli(*base, "--tp", "3")
    assert bad.returncode == 2 and "--tp 3: TP 3 does not divide the 64 attention heads" in bad.stderr
    both = _cli(*base, "--workload-from", "http://127.0.0.1:9")
    assert both.returncode == 2 and "give one" in both.stderr
    rank = _cli(*base, "--lora-adapters", "8", "--lora-rank", "0")
    assert rank.returncode == 2 and rank.stderr.startswith("fleetwatch: --lora-rank 0") and str(workload) not in rank.stderr
    for url, words in (("ftp://x", "http:// or https://"), ("http://127.0.0.1:99999", "port must be a number")):
        r = _cli("plan", "--workload-from", url)
        assert r.returncode == 2 and f"--workload-from {url}: " in r.stderr and words in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    chapter = json.loads(_cli(*base, "--memory-model", "chapter").stdout)
    vllm = json.loads(_cli(*base).stdout)
    assert chapter["steps"]["5_precision"]["memory_model"] == "chapter"
    assert vllm["steps"]["5_precision"]["memory_model"] == "vllm"
    # the chapter's 20% activations reserve 28 GB for a 141 GB model; vLLM's profile a few GB
    assert chapter["steps"]["5_precision"]["activations_bytes"] > 5 * vllm["steps"]["5_precision"]["activations_bytes"]
    assert _cli(*base, "--gpu-memory-utilization", "1.5").returncode == 2
