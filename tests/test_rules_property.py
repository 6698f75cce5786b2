"""The generated promtool tests hold for any valid plan, not only the example's.

Plans are generated (seeded, so a failure is reproducible): one to five tiers, SLOs from 50 ms to
60 s log-uniform with both ends and the 6 s at which a hand-picked queue case used to break, and
band overrides at their limits (0, and 1 for ratios) or anywhere between. Each goes through
``load_config`` like a user's file, through ``fleetwatch rules``' generator, and through
``promtool test rules``; every expected alert and annotation is computed from the Python
definitions. All plans run in one promtool call (its start-up is most of a small file's cost).
"""
from __future__ import annotations

import math
import random
import subprocess
from pathlib import Path
from typing import Any, Callable

import yaml

from exporter import catalogue
from exporter.config import load_config
from exporter.model import Config
from exporter.render import rules

from conftest import binary

PLANS = 200
SEED = 20261204
SLO_RANGE = (0.05, 60.0)
SLO_EDGES = (0.05, 6.0, 60.0)


def _slo(rng: random.Random) -> float:
    if rng.random() < 0.3:
        return rng.choice(SLO_EDGES)
    lo, hi = (math.log(x) for x in SLO_RANGE)
    return round(math.exp(rng.uniform(lo, hi)), 3)


def _band_value(rng: random.Random, ratio: bool) -> float:
    edges = (0.0, 1.0) if ratio else (0.0,)
    if rng.random() < 0.5:
        return rng.choice(edges)
    return round(rng.uniform(0.0, 1.0 if ratio else 50.0), 4)


def _tier(rng: random.Random) -> dict[str, Any]:
    ttft, itl = _slo(rng), _slo(rng)
    usable = round(rng.uniform(0.1, 200.0), 3)
    plan: dict[str, Any] = {
        "gpus_per_instance": rng.choice((1, 2, 4, 8)),
        "instances": rng.randint(0, 40),
        "gpu_hour_cost_usd": round(rng.uniform(0.5, 12.0), 2),
        "peak_rps": round(rng.uniform(0.0, 2000.0), 2),
        "safety_factor": round(rng.uniform(0.0, 1.0), 2),
        "slo": {"ttft_p99": f"{ttft:g}s", "itl_p99": f"{itl:g}s"},
        "benchmark": {"usable_rps_per_instance": usable, "ttft_p99": f"{ttft * rng.uniform(0.2, 1.0):.4g}s",
                      "itl_p99": f"{itl * rng.uniform(0.2, 1.0):.4g}s",
                      "gpu_utilization": round(rng.uniform(0.0, 1.0), 3)},
        "scale_down_stabilization": "1m",
    }
    if rng.random() < 0.5:
        plan["benchmark"]["prefix_cache_hit_ratio"] = round(rng.uniform(0.0, 1.0), 3)
    if rng.random() < 0.5:
        plan["workload"] = {"input_tokens": {"p50": 500, "p95": 2000, "p99": 4000},
                            "output_tokens": {"p50": 200, "p95": 500, "p99": 900}, "prefix_reuse": rng.random() < 0.5}
    bands: dict[str, dict[str, float]] = {}
    for row in rng.sample([r for r in catalogue.ROWS if r.alert is not None], rng.randint(0, 4)):
        sides = [s for s in catalogue.BandSpec.SIDES if getattr(row.band, s)]
        if sides:
            bands[row.key] = {s: _band_value(rng, row.unit == "ratio") for s in rng.sample(sides, rng.randint(1, len(sides)))}
    return {"plan": plan, "targets": [{"vllm": "http://10.0.0.1:8000/metrics"}], **({"bands": bands} if bands else {})}


def generated_config(rng: random.Random) -> dict[str, Any]:
    """A fleet config a user could write, with short windows so promtool evaluates few steps."""
    return {"interval": "15s", "window": "30s", "tiers": {f"t{i}": _tier(rng) for i in range(rng.randint(1, 5))}}


def write_plan_tests(configs: list[Config], out: Path,
                     build: Callable[..., dict[str, str]] = rules.build) -> list[str]:
    """Each config's rules and promtool tests in a folder of its own; the test files' paths."""
    files = []
    for i, config in enumerate(configs):
        folder = out / f"plan{i:03d}"
        for name, text in build(config, for_="0s").items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        files.append(str(folder / "tests" / "fleetwatch_test.yml"))
    return files


def load_generated(tmp_path: Path, count: int, seed: int = SEED) -> list[Config]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        path = tmp_path / "configs" / f"fleet{i:03d}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(generated_config(rng)))
        out.append(load_config(str(path)))  # a valid plan, as a user's file is checked
    return out


def promtool_test(files: list[str], processes: int = 2) -> subprocess.CompletedProcess[str]:
    """``promtool test rules`` over the files, split between ``processes`` runs at once (CI has two
    cores); one result, as if one run had read them all."""
    chunks = [files[i::processes] for i in range(processes) if files[i::processes]]
    runs = [subprocess.Popen([binary("promtool"), "test", "rules", *chunk], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for chunk in chunks]
    said = [run.communicate(timeout=900) for run in runs]
    return subprocess.CompletedProcess(["promtool", "test", "rules", *files],
                                       max(run.returncode for run in runs),
                                       "".join(out for out, _ in said), "".join(err for _, err in said))


def failed(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The files promtool reports failing, with the first lines of why."""
    lines = (done.stdout + done.stderr).splitlines()
    return [ln for i, ln in enumerate(lines) if "FAILED" in ln or (i and "FAILED" in lines[i - 1])][:20]


def test_the_generated_promtool_tests_hold_for_generated_plans(tmp_path: Path) -> None:
    configs = load_generated(tmp_path, PLANS)
    slos = [t.plan.slo.ttft_p99 for c in configs for t in c.tiers.values()]
    assert min(slos) == SLO_RANGE[0] and max(slos) == SLO_RANGE[1] and 6.0 in slos
    assert any(v == 0 for c in configs for t in c.tiers.values() for b in t.bands.values()
               for v in (b.warning_above, b.critical_above, b.warning_below, b.critical_below))
    assert {len(c.tiers) for c in configs} == {1, 2, 3, 4, 5}
    done = promtool_test(write_plan_tests(configs, tmp_path / "rules"))
    assert done.returncode == 0, "\n".join(failed(done)) or (done.stdout + done.stderr)[-3000:]
    assert done.stdout.count("SUCCESS") == PLANS


def test_a_hand_picked_case_is_caught(tmp_path: Path, monkeypatch: Any) -> None:
    """The property test can fail: with the queue's firing case hard-coded as it once was (a queue of
    50 at 10 RPS), plans with a long TTFT SLO fail it."""
    def old_queue_case(tier: Any, row: Any, severity: str, side: str, window: str) -> list[rules.TestCase]:
        cases = original(tier, row, severity, side, window)
        if row.key != "queue_depth_requests" or not cases:
            return cases
        fire = cases[0]
        series = ((fire.series[0][0], "50x40"), *fire.series[1:])
        return [rules.TestCase(series, True, {}, fire.tier, frozenset({severity})), *cases[1:]]
    original = rules._band_cases
    monkeypatch.setattr(rules, "_band_cases", old_queue_case)
    configs = [c for c in load_generated(tmp_path, 40)
               if any(t.plan.slo.ttft_p99 >= 6 for t in c.tiers.values())][:5]
    assert configs
    done = promtool_test(write_plan_tests(configs, tmp_path / "rules"))
    said = done.stdout + done.stderr
    assert done.returncode != 0 and "alertname: FleetwatchQueueDepthHigh" in said, said[-2000:]
