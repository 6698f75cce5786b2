from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config, parse_duration

ROOT = Path(__file__).resolve().parents[1]
GOOD = """
tiers:
  h100:
    plan:
      gpus_per_instance: 2
      instances: 4
      gpu_hour_cost_usd: 4.10
      peak_rps: 24
      safety_factor: 0.2
      slo: {ttft_p99: 2s, itl_p99: 50ms}
      benchmark: {usable_rps_per_instance: 8, ttft_p99: 1.2s, itl_p99: 35ms, gpu_utilization: 0.78}
    targets:
      - {vllm: "http://10.0.0.5:8000/metrics"}
"""


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "fleet.yaml"
    p.write_text(text)
    return str(p)


def test_durations() -> None:
    assert parse_duration("15s") == 15 and parse_duration("5m") == 300 and parse_duration("250ms") == 0.25
    assert parse_duration("1h30m") == 5400 and parse_duration("1.2s") == 1.2
    for bad in ("fast", "15", "", "1.2 s", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_smallest_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.interval == 15 and cfg.window == 300 and cfg.tls_verify is True
    t = cfg.tiers["h100"]
    assert t.plan.slo.itl_p99 == 0.05 and t.plan.benchmark.curve == () and t.plan.scale_down_stabilization == 1800
    assert t.targets[0].name == "10.0.0.5:8000" and t.targets[0].engine == "vllm"


@pytest.mark.parametrize("mutate, path, reason", [
    (lambda s: s.replace("ttft_p99: 1.2s", "ttft_p99: fast"), "tiers.h100.plan.benchmark.ttft_p99",
     "expected a duration like 1.2s, got 'fast'"),
    (lambda s: s.replace("peak_rps: 24", "peak_rps: 24\n      peek_rps: 3"), "tiers.h100.plan.peek_rps", "unknown key"),
    (lambda s: s.replace("      gpu_hour_cost_usd: 4.10\n", ""), "tiers.h100.plan.gpu_hour_cost_usd", "required key is missing"),
    (lambda s: s.replace("instances: 4", "instances: four"), "tiers.h100.plan.instances", "expected a whole number"),
    (lambda s: s.replace('{vllm: "http://10.0.0.5:8000/metrics"}', "{vllm: nope}"), "tiers.h100.targets[0].vllm",
     "expected an http:// or https:// URL"),
    (lambda s: "interval: 5s\nscrape_timeout: 10s\n" + s, "scrape_timeout", "must be shorter than interval"),
    (lambda s: s + "    bands:\n      no_such_row: {warning_above: 1}\n", "tiers.h100.bands.no_such_row", "unknown key"),
])
def test_errors_name_file_key_path_and_reason(tmp_path: Path, mutate, path: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    f = write(tmp_path, mutate(GOOD))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"{f}: {path}: ") and reason in str(e.value)
    assert "\n" not in str(e.value)


def test_validate_config_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    f = write(tmp_path, GOOD.replace("ttft_p99: 1.2s", "ttft_p99: fast"))
    r = subprocess.run([sys.executable, "-m", "exporter", "validate-config", f], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"fleetwatch: {f}: tiers.h100.plan.benchmark.ttft_p99: expected a duration like 1.2s, got 'fast'"]
    assert "Traceback" not in r.stderr


def test_every_example_is_valid() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples
    for e in examples:
        load_config(str(e))


def test_plan_file_errors_name_the_plan_file(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("gpus_per_instance: 0\n")
    f = write(tmp_path, "tiers:\n  a:\n    plan: p.yaml\n    targets: [{vllm: 'http://x:1/metrics'}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(str(tmp_path / "p.yaml") + ": ")
