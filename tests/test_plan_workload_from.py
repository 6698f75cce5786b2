"""`fleetwatch plan --workload-from URL`: the workload derived from a real Prometheus scraping the
simulated fleet equals what that Prometheus's own histogram_quantile says over the same range."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from exporter.planner.observe import daily_profile

from test_e2e import fleet_scraped_by_prometheus

ROOT = Path(__file__).resolve().parents[1]
RANGE = 10.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def _quantile(family: str, q: float) -> str:
    """The PromQL an operator would type, written here, not taken from fleetwatch."""
    names = {"prompt": "vllm:request_prompt_tokens_bucket|sglang:prompt_tokens_histogram_bucket",
             "output": "vllm:request_generation_tokens_bucket|sglang:generation_tokens_histogram_bucket"}[family]
    return f'histogram_quantile({q}, sum by (le) (rate({{__name__=~"{names}", tier="h100"}}[{RANGE:g}s])))'


@pytest.mark.integration
def test_derived_workload_equals_prometheus_histogram_quantile(tmp_path: Path) -> None:
    out = tmp_path / "workload.yaml"
    with fleet_scraped_by_prometheus(tmp_path) as (demo, clock, prom):
        assert clock.wait_until(RANGE + 4)
        at = time.time() - 1.0  # a moment every scrape before it has landed
        base = ["plan", "--workload-from", prom.url, "--tier", "h100", "--range", f"{RANGE:g}s", "--at", f"{at:.3f}",
                "--workload-out", str(out)]
        # no SLOs anywhere (this Prometheus scrapes no fleetwatch): an error that says where to get them
        bare = _cli(*base)
        assert bare.returncode == 2 and "no SLOs" in bare.stderr and "--config" in bare.stderr, bare.stderr
        assert len(bare.stderr.strip().splitlines()) == 1
        r = _cli(*base, "--config", str(ROOT / "examples" / "fleet.yaml"))
        assert r.returncode == 0, r.stderr
        expected = {(fam, k): prom.query(_quantile(fam, q), at) for fam in ("prompt", "output")
                    for k, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}
        finished = prom.query('sum(increase({__name__=~"vllm:request_prompt_tokens_count|'
                              f'sglang:prompt_tokens_histogram_count", tier="h100"}}[{RANGE:g}s]))', at)
        # the derived workload sizes a plan straight away
        planned = _cli(*base, "--config", str(ROOT / "examples" / "fleet.yaml"), "--model",
                       str(ROOT / "examples" / "plan" / "llama-3-70b.config.json"), "--gpu", "H100", "--format", "json")
    wl = yaml.safe_load(out.read_text())
    for (fam, k), result in expected.items():
        assert result, (fam, k)
        value = float(result[0]["value"][1])
        key = "input_tokens" if fam == "prompt" else "output_tokens"
        assert wl[key][k] == round(value), (key, k, wl[key][k], value)
    assert wl["average_rps"] == pytest.approx(float(finished[0]["value"][1]) / RANGE, abs=1e-4)
    assert wl["peak_rps"] >= wl["average_rps"] > 0
    assert wl["slo"] == {"ttft_p99": "2s", "itl_p99": "50ms"}  # the h100 tier's plan in examples/fleet.yaml
    assert wl["observed"]["tier"] == "h100" and wl["observed"]["range"] == "10s"
    assert planned.returncode == 0, planned.stderr
    step1 = json.loads(planned.stdout)["steps"]["1_workload"]
    assert step1["input_tokens"] == {k: wl["input_tokens"][k] for k in ("p50", "p95", "p99")}


def test_daily_profile_averages_each_hour_of_the_day() -> None:
    day = 86400.0
    # two days of hourly rates; each sample closes the hour before it, so a sample at 01:00 is hour 0
    points = [(h * 3600.0 + 3600.0 + d * day, float(h + 10 * d)) for d in (0, 1) for h in range(24)]
    profile = daily_profile(points)
    assert profile == tuple(float(h + 5) for h in range(24))
    assert daily_profile([(3600.0, float("nan"))])[0] is None


def test_an_unreachable_prometheus_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "workload.yaml"
    r = _cli("plan", "--workload-from", f"http://127.0.0.1:{port}", "--tier", "h100", "--range", "1h",
             "--config", str(ROOT / "examples" / "fleet.yaml"), "--workload-out", str(out))
    assert r.returncode == 2 and f"--workload-from http://127.0.0.1:{port}" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    bad = _cli("plan", "--workload-from", "http://127.0.0.1:9", "--range", "soon")
    assert bad.returncode == 2 and "--range" in bad.stderr
