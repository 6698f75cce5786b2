"""`fleetwatch check --format json` against local fake engines serving fixture text."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.catalogue import row_keys

from conftest import fixture_text
from fakes import FakeTarget, refused_url, write_config

pytestmark = pytest.mark.integration


def pair(folder: str, a: int, b: int) -> list[str]:
    return [fixture_text(f"{folder}/snapshot-{a:02d}.prom"), fixture_text(f"{folder}/snapshot-{b:02d}.prom")]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60)


def test_check_json_report_is_complete_per_tier(tmp_path: Path) -> None:
    h100 = [FakeTarget(pair("vllm/generated/vllm-0.33.0", 5, 12)),
            FakeTarget(pair("vllm/generated/vllm-0.11.0-features", 5, 12))]
    dcgm = FakeTarget([fixture_text("dcgm/dcgm_h100x8_k8s_aicr.prom")])
    a100 = [FakeTarget(pair("sglang/generated/sglang-0.5.23", 8, 20))]
    down = refused_url()
    cfg = write_config(str(tmp_path / "f.yaml"), {
        "h100": [{"vllm": t.url, "dcgm": dcgm.url, "gpus": {"indices": [str(i)]}} for i, t in enumerate(h100)],
        "a100": [{"sglang": t.url} for t in a100] + [{"sglang": down, "name": "gone"}],
    }, extra="scrape_timeout: 2s\ninterval: 5s")
    try:
        r = run(["check", "--config", cfg, "--window", "1s", "--format", "json"])
    finally:
        for t in (*h100, *a100, dcgm):
            t.close()
    assert r.stdout.count("\n") == 1, "exactly one JSON document on stdout"
    report = json.loads(r.stdout)
    assert set(report["tiers"]) == {"h100", "a100"}
    for name, tier in report["tiers"].items():
        assert set(tier["metrics"]) == set(row_keys())
        for key, m in tier["metrics"].items():
            assert m["status"] in {"ok", "warning", "critical", "unknown"}
            if m["value"] is None:
                assert m["status"] == "unknown" and m["reason"], (name, key)
        assert set(tier["resize"]) >= {"current_instances", "recommended_instances", "action", "reason"}
        assert tier["resize"]["action"] in {"scale_up", "recharacterize", "scale_down", "hold"}
        assert {"instances", "plan_checks", "workload", "findings", "guardrails"} <= set(tier)
    h, a = report["tiers"]["h100"], report["tiers"]["a100"]
    assert h["instances"] == {"up": 2, "total": 2} and a["instances"] == {"up": 1, "total": 2}
    assert h["metrics"]["ttft_p99_seconds"]["value"] != a["metrics"]["ttft_p99_seconds"]["value"]
    assert h["metrics"]["gpu_compute_utilization_ratio"]["source"] == "gpu_util"
    assert a["metrics"]["gpu_compute_utilization_ratio"]["status"] == "unknown"
    assert a["metrics"]["lora_adapter_cache_hit_ratio"]["reason"]
    # the h100 tier has spec decode (0.11 features); SGLang's spec gauge reads 0 with no drafts -> unknown
    assert h["metrics"]["spec_decode_acceptance_ratio"]["value"] is not None
    assert a["metrics"]["spec_decode_acceptance_ratio"]["status"] == "unknown"
    assert [f["instance"] for f in a["findings"] if f["kind"] == "target_down"] == ["gone"]
    assert h["workload"]["finished_reasons"] and h["workload"]["input_tokens"]["p95"] is not None
    assert r.returncode == (1 if report["critical"] else 0)


def test_check_table_and_exit_code_on_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: {h100: {plan: {}, targets: []}}\n")
    r = run(["check", "--config", str(bad)])
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1


def test_help_explains_commands() -> None:
    r = run(["--help"])
    assert r.returncode == 0
    for word in ("serve", "check", "validate-config", "exit codes"):
        assert word in r.stdout
