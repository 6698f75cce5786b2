"""`fleetwatch demo`: every scenario is caught on the right tier; healthy raises nothing.

The scenario tests run the real pipeline (HTTP scrapes of the simulated fleet on loopback) in
simulated time, with the demo's defaults: 5 s interval, 30 s window, the shipped plans.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from exporter.catalogue import row_keys
from exporter.demo.run import SimClock, reports, start_fleet
from exporter.model import Report, Status, TierReport

ROOT = Path(__file__).resolve().parents[1]
BAD = (Status.WARNING, Status.CRITICAL)


def run(scenario: str, seconds: float, engine: str = "vllm-0.33") -> list[tuple[float, Report]]:
    demo = start_fleet(scenario, flavour=engine)
    try:
        return list(reports(demo, SimClock(demo.fleet), seconds))
    finally:
        demo.close()


def problems(t: TierReport) -> list[str]:
    """Every warning or critical thing in a tier's report."""
    out = [f"{k}={m.status.value} ({m.value})" for k, m in t.metrics.items() if m.status in BAD]
    out += [f"{c.check}={c.status.value} ({c.observed} vs {c.predicted})" for c in t.plan_checks if c.status in BAD]
    out += [f"{f.kind}={f.status.value} {f.instance}" for f in t.findings if f.status in BAD]
    if t.resize.action != "hold":
        out.append(f"resize {t.resize.action}")
    return out


def caught_from(history: list[tuple[float, Report]], tier: str, seen: Callable[[TierReport], bool]) -> float:
    """When ``seen`` first held for ``tier``; it must hold in every later report too."""
    first = next((t for t, r in history if seen(r.tiers[tier])), None)
    assert first is not None, f"never caught on {tier}; last report: {problems(history[-1][1].tiers[tier])}"
    missed = [t for t, r in history if t >= first and not seen(r.tiers[tier])]
    assert not missed, f"caught at {first}s on {tier} but gone again at {missed}"
    return first


def test_healthy_raises_nothing_for_a_whole_day() -> None:
    history = run("healthy", 300.0)  # one compressed day: the load swings through peak and trough
    assert len(history) == 61
    for t, report in history[1:]:  # the first report has a single scrape: rates are unknown
        for name, tier in report.tiers.items():
            assert problems(tier) == [], f"t={t}s tier {name}"
            assert tier.instances_up == tier.instances_total
            for key, m in tier.metrics.items():
                assert m.value is not None or m.reason, f"{key} unknown without a reason"
    final = history[-1][1].tiers
    filled = {k for k in row_keys() if final["h100"].metrics[k].value is not None}
    # what no vLLM exposes without speculative decoding or LoRA stays unknown, everything else is filled
    assert set(row_keys()) - filled == {"spec_decode_acceptance_ratio", "lora_adapter_cache_hit_ratio",
                                      "lora_adapter_evictions_per_second"}
    util = [v for _, r in history[6:] if (v := r.tiers["h100"].metrics["fleet_utilization_ratio"].value) is not None]
    assert max(util) - min(util) > 0.05, "the diurnal swing should show in fleet utilization"


def _plan_check(t: TierReport, check: str) -> Status:
    return next(c.status for c in t.plan_checks if c.check == check)


SCENARIOS: dict[str, tuple[str, Callable[[TierReport], bool]]] = {
    "ttft-regression": ("h100", lambda t: _plan_check(t, "ttft_p99_vs_benchmark") is Status.CRITICAL
                        and t.resize.action == "recharacterize"),
    "kv-pressure": ("a100", lambda t: t.metrics["kv_cache_eviction_ratio"].status is Status.CRITICAL
                    and (t.metrics["kv_cache_eviction_ratio"].value or 0) > 0.20),
    "utilization-trap": ("h100", lambda t: t.metrics["fleet_utilization_ratio"].status is Status.WARNING
                         and (t.metrics["fleet_utilization_ratio"].value or 1) < 0.40),
    "undersized": ("a100", lambda t: t.resize.action == "scale_up"
                   and (t.resize.recommended_instances or 0) > t.resize.current_instances
                   and t.metrics["queue_depth_requests"].status is Status.CRITICAL),
    "mixed-tier": ("h100", lambda t: any(f.kind == "mixed_tier" and f.instance == "h100-3" for f in t.findings)),
    "length-drift": ("a100", lambda t: any(f.kind == "input_length_drift" for f in t.findings)),
    "runaway": ("h100", lambda t: any(f.kind == "runaway_generation" for f in t.findings)),
    "dead-instance": ("h100", lambda t: any(f.kind == "target_down" and f.instance == "h100-3" for f in t.findings)
                      and t.instances_up == 3),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_is_caught_on_its_tier_within_60s_and_stays(scenario: str) -> None:
    tier, seen = SCENARIOS[scenario]
    history = run(scenario, 90.0)
    assert caught_from(history, tier, seen) <= 60.0
    other = next(n for n in history[-1][1].tiers if n != tier)
    for t, report in history[1:]:
        assert problems(report.tiers[other]) == [], f"t={t}s: {scenario} leaked into tier {other}"
        assert not seen(report.tiers[other])


@pytest.mark.parametrize("engine", ["vllm-0.6", "sglang-0.5"])
def test_other_engine_flavours_fill_the_latency_rows(engine: str) -> None:
    history = run("healthy", 30.0, engine)
    for tier in history[-1][1].tiers.values():
        for key in ("ttft_p99_seconds", "itl_p99_seconds", "kv_cache_utilization_ratio", "prefix_cache_hit_ratio",
                    "queue_depth_requests", "fleet_utilization_ratio", "tokens_per_gpu_hour"):
            assert tier.metrics[key].value is not None, (engine, key, tier.metrics[key].reason)
        assert problems(tier) == [], (engine, tier.tier)


def test_cli_demo_prints_a_json_report_per_interval_and_exits() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "exporter", "demo", "--duration", "6s", "--format", "json"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout[:500]  # t=0s and t=5s
    docs = [json.loads(ln) for ln in lines]
    assert set(docs[-1]["tiers"]) == {"h100", "a100"}
    for tier in docs[-1]["tiers"].values():
        assert set(tier["metrics"]) == set(row_keys())
        assert all(m["value"] is not None or m["reason"] for m in tier["metrics"].values())
    assert "fleetwatch /metrics: http://127.0.0.1:" in r.stderr


@pytest.mark.parametrize("tier", ["h100", "a100"])
def test_shipped_plan_is_what_the_sweep_measures(tier: str) -> None:
    """The demo's plan is measured, not typed: re-measuring two of its points reproduces them exactly.

    (The whole sweep takes ~40 s; `python -m exporter.demo.sweep --check` runs it all.)"""
    from exporter.config import load_config
    from exporter.demo.fleet import DEFAULT_TIERS
    from exporter.demo.sweep import PLANS_DIR, measure_point, sweep_rates

    spec = next(s for s in DEFAULT_TIERS if s.name == tier)
    cfg_file = ROOT / "examples" / "demo.yaml"
    plan = load_config(str(cfg_file)).tiers[tier].plan
    assert (PLANS_DIR / f"{tier}.yaml").exists()
    shipped = {round(p.rps, 6): p for p in plan.benchmark.curve}
    rates = sweep_rates(spec)
    for rate in (rates[2], rates[6]):
        point, _, _ = measure_point(spec, rate)
        got = shipped.get(round(point.rps, 6))
        assert got is not None, f"a fresh point at {rate} RPS offered ({point.rps:.6f} done) is not in the plan"
        assert got.ttft_p99 == pytest.approx(point.ttft_p99, rel=1e-5)
        assert got.itl_p99 == pytest.approx(point.itl_p99, rel=1e-5)
        assert got.gpu_utilization == pytest.approx(point.gpu_utilization, rel=1e-5)


@pytest.mark.integration
def test_the_demo_writes_a_prometheus_config_that_scrapes_all_of_it(tmp_path: Path) -> None:
    """`demo --prometheus-config`: a real Prometheus reading the file scrapes every engine, dcgm-exporter and
    fleetwatch, with the labels the dashboards' GPU panels join on."""
    import time

    from conftest import binary
    from realbins import Prometheus

    prometheus_bin = binary("prometheus")
    cfg = tmp_path / "prometheus.yml"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    demo = subprocess.Popen([sys.executable, "-m", "exporter", "demo", "--duration", "60s", "--format", "json",
                             "--prometheus-config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    prom = None
    try:
        deadline = time.monotonic() + 30
        while not (cfg.exists() and cfg.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.2)  # waiting for another process to write the file
        assert cfg.exists(), "the demo wrote no Prometheus config"
        prom = Prometheus(prometheus_bin, cfg.read_text())

        def up() -> dict[str, float]:
            assert prom is not None
            return {r["metric"]["job"]: float(r["value"][1]) for r in prom.query("sum by (job) (up)")}

        import yaml

        listed = {j["job_name"]: float(sum(len(sc["targets"]) for sc in j["static_configs"]))
                  for j in yaml.safe_load(cfg.read_text())["scrape_configs"]}
        assert listed["llm-engines"] == 7 and listed["fleetwatch"] == 1 and listed["dcgm"] >= 1, listed
        deadline = time.monotonic() + 30
        while up() != listed and time.monotonic() < deadline:
            time.sleep(0.5)
        assert up() == listed  # every target it lists, up
        engines = prom.query("vllm:num_requests_running")
        assert {r["metric"]["tier"] for r in engines} == {"h100", "a100"}
        assert all(r["metric"]["namespace"] == "llm" and r["metric"]["pod"] for r in engines)
        assert prom.query('DCGM_FI_DEV_FB_USED{pod=~".+"}')  # the GPUs held by the engine pods
    finally:
        if prom is not None:
            prom.stop()
        demo.terminate()
        demo.wait(30)
