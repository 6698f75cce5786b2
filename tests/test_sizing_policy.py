"""The sizing policy is one specification (exporter/sizing.py): fleetwatch's resize verdict and the
generated rules' ScaleUp/ScaleDown alerts, fed the same series, agree on every branch.

Each scenario is a timeline of the tier's arrival rate, queue and deployed instances at the rules'
interval. The Python side replays it as the daemon would (one resize per cycle, each cycle's
history point appended after it); the PromQL side is the generated recording rules and the two
scale alerts, run by ``promtool test rules``. What promtool must find at each checked time is
what the Python side decided there, never a constant written here.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.catalogue import PLAN_FIGURES
from exporter.config import Config, load_config
from exporter.evaluate import HistoryPoint, history_gap, peak_sample, resize
from exporter.model import Resize
from exporter.render import rules
from exporter import sizing
from exporter.sizing import littles_law_floor, scale_down_floor

from conftest import binary

STEP = 60.0  # the cycle interval and the rules' evaluation interval
CONFIG = """\
interval: 1m
window: 5m
history: 2d
tiers:
  h100:
    plan:
      gpus_per_instance: 1
      instances: 5
      gpu_hour_cost_usd: 2.0
      peak_rps: 8
      safety_factor: 0.25
      scale_down_stabilization: 10m
      slo: {ttft_p99: 2s, itl_p99: 50ms}
      benchmark: {usable_rps_per_instance: 2, ttft_p99: 1s, itl_p99: 30ms, gpu_utilization: 0.7}
    schedule: {min_warm_instances: MIN_WARM}
    targets: [{vllm: 'http://127.0.0.1:8000/metrics'}]
"""


@dataclass(frozen=True)
class Scenario:
    """Per step (STEP apart, from t=0): arrival rate, queue and deployed instances; None: no data
    and no cycle (fleetwatch and Prometheus both saw nothing)."""

    name: str
    rps: tuple[float | None, ...]
    queue: float
    deployed: int
    min_warm: int
    checks: tuple[int, ...]  # the steps to compare at


def _steps(minutes: int, value: float | None) -> tuple[float | None, ...]:
    return (value,) * minutes


DAY = 24 * 60
SCENARIOS = (
    # more load than the plan: scale up, with no stabilization
    Scenario("scale-up", _steps(20, 12.0), 0.0, 5, 1, (3, 6, 19)),
    # less than a day of history, light load: the plan's peak still counts, the tier holds
    Scenario("under-a-day-holds-the-plan-peak", _steps(60, 2.0), 0.0, 5, 1, (30, 59)),
    # more than a day of light load: the observed peak counts, scale down after the stabilization
    Scenario("over-a-day-scales-down", _steps(DAY + 30, 2.0), 0.0, 5, 1, (DAY - 5, DAY + 5, DAY + 12, DAY + 29)),
    # the same, but the minimum warm count is the deployed count: never below it
    Scenario("min-warm-floor-holds", _steps(DAY + 30, 2.0), 0.0, 5, 5, (DAY + 12, DAY + 29)),
    # the same, with a minimum warm count between: scale down to it, not to the recommendation
    Scenario("min-warm-floor-bounds", _steps(DAY + 30, 2.0), 0.0, 5, 3, (DAY + 12, DAY + 29)),
    # the queue: arrivals plus draining it within the TTFT SLO need every deployed instance
    Scenario("littles-law-floor-holds", _steps(DAY + 30, 2.0), 16.0, 5, 1, (DAY + 12, DAY + 29)),
    # a 30-minute gap where nothing was observed restarts the stabilization on both sides
    Scenario("gap-restarts-stabilization", _steps(DAY + 20, 2.0) + _steps(30, None) + _steps(30, 2.0), 0.0, 5, 1,
             (DAY + 15, DAY + 55, DAY + 75)),
)


def _config(tmp_path: Path, min_warm: int) -> Config:
    f = tmp_path / "fleet.yaml"
    f.write_text(CONFIG.replace("MIN_WARM", str(min_warm)))
    return load_config(str(f))


def _python(config: Config, s: Scenario) -> dict[int, Resize]:
    """The daemon's loop over the timeline: resize each cycle, then append that cycle's point."""
    tier = config.tiers["h100"]
    plan, window = tier.plan, config.window
    history: list[HistoryPoint] = []
    start = None
    out: dict[int, Resize] = {}
    for i, rps in enumerate(s.rps):
        now = i * STEP
        if rps is None:
            continue
        start = now if start is None else start

        class Span:  # what peak_sample asks of a window: how much of it the data covers
            def __init__(self, seconds: float) -> None:
                self.seconds = seconds

            def span(self) -> float:
                return self.seconds

        counted = peak_sample(Span(now - start), rps, window)  # type: ignore[arg-type]
        floor = scale_down_floor(tier.schedule.min_warm_instances,
                                 littles_law_floor(rps, s.queue, plan.benchmark.usable_rps_per_instance,
                                                   plan.slo.ttft_p99))
        history = [h for h in history if h.timestamp >= now - config.history]
        r = resize(plan, "h100", s.deployed, counted, history, now, False, history_gap(config), (floor, "floor"))
        out[i] = r
        history.append(HistoryPoint(now, counted, r.recommended_instances))
    return out


def _series(values: tuple[float | None, ...]) -> str:
    return " ".join("_" if v is None else f"{v:g}" for v in values)


def _promtool_case(config: Config, s: Scenario, verdicts: dict[int, Resize]) -> dict[str, Any]:
    tier = config.tiers["h100"]
    w = "5m"
    sel = '{tier="h100"}'
    inputs = [
        (f"tier:fleetwatch_requests_per_second:rate{w}{sel}", s.rps),
        (f"tier:fleetwatch_queue_depth_requests:avg{w}{sel}", tuple(None if r is None else s.queue for r in s.rps)),
        (f"tier:fleetwatch_instances:count{sel}", tuple(None if r is None else float(s.deployed) for r in s.rps)),
    ]
    inputs += [(f"fleetwatch_plan_{key}{sel}", tuple(None if r is None else float(get(tier.plan)) for r in s.rps))
               for key, _, get in PLAN_FIGURES]
    labels = {**config.alert_labels, "tier": "h100"}
    alert_tests, expr_tests = [], []
    for step in s.checks:
        v = verdicts.get(step)
        assert v is not None, f"{s.name}: no cycle at step {step}"
        for alert, action in (("FleetwatchScaleUp", "scale_up"), ("FleetwatchScaleDown", "scale_down")):
            fires = v.action == action
            exp = [{"exp_labels": {**labels, "severity": "critical" if action == "scale_up" else "warning",
                                   "action": action}}] if fires else []
            alert_tests.append({"eval_time": f"{int(step * STEP)}s", "alertname": alert, "exp_alerts": exp})
        # the count each side would scale to
        target = v.recommended_instances if v.action != "scale_down" else _scaled_to(config, s, v)
        rec, floor = rules.RECOMMENDED + sel, rules.SCALE_DOWN_FLOOR + sel
        expr = sizing.scale_down_to_promql(rec, floor) if v.action == "scale_down" else rec
        expr_tests.append({"expr": f"max by (tier) ({expr})", "eval_time": f"{int(step * STEP)}s",
                           "exp_samples": [{"labels": sel, "value": target}]})
    return {"interval": f"{int(STEP)}s",
            "input_series": [{"series": name, "values": _series(vals)} for name, vals in inputs],
            "alert_rule_test": alert_tests, "promql_expr_test": expr_tests}


def _scaled_to(config: Config, s: Scenario, v: Resize) -> int:
    assert v.recommended_instances is not None
    tier = config.tiers["h100"]
    floor = scale_down_floor(tier.schedule.min_warm_instances, littles_law_floor(
        2.0, s.queue, tier.plan.benchmark.usable_rps_per_instance, tier.plan.slo.ttft_p99))
    return max(v.recommended_instances, floor)


def _rule_file(config: Config) -> dict[str, Any]:
    """The generated recording rules and the generated scale alerts, without their annotations (the
    alert texts are tested elsewhere; here only when they fire, and at what count). ScaleUp's shared
    ``for:`` is how long an alert must hold before it pages, not sizing: it is 0 here; ScaleDown's
    own ``for:`` is the stabilization, and stays."""
    alerts = [replace(a, summary="", description="") for a in rules.alerts(config)
              if a.name in ("FleetwatchScaleUp", "FleetwatchScaleDown")]
    alert_rules = []
    for a in alerts:
        r = a.rule("0s", "runbook.md")
        del r["annotations"]
        alert_rules.append(r)
    return {"groups": [{"name": "recording", "interval": f"{int(STEP)}s", "rules": rules.recording_rules(config)},
                       {"name": "alerts", "interval": f"{int(STEP)}s", "rules": alert_rules}]}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_the_rules_decide_as_fleetwatch_does(scenario: Scenario, tmp_path: Path) -> None:
    promtool = binary("promtool")
    config = _config(tmp_path, scenario.min_warm)
    verdicts = _python(config, scenario)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(_rule_file(config), sort_keys=False))
    test = {"rule_files": ["rules.yml"], "evaluation_interval": f"{int(STEP)}s",
            "tests": [_promtool_case(config, scenario, verdicts)]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    done = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    decided = {step: (verdicts[step].action, verdicts[step].recommended_instances) for step in scenario.checks}
    assert done.returncode == 0, f"{scenario.name}: fleetwatch decided {decided}\n{done.stdout[-3000:]}{done.stderr}"


def test_the_scenarios_cover_every_branch(tmp_path: Path) -> None:
    """Scale up, scale down, each floor holding, less and more than a day, and the gap."""
    seen: set[str] = set()
    for s in SCENARIOS:
        config = _config(tmp_path, s.min_warm)
        for step, v in _python(config, s).items():
            if step not in s.checks:
                continue
            seen.add(v.action)
            if v.action == "hold" and "keeps" in v.reason:
                seen.add("floor")
            if "the plan's peak" in v.reason:
                seen.add("plan peak")
            if "over the retained history" in v.reason:
                seen.add("observed peak")
            if "not yet for a whole" in v.reason:
                seen.add("stabilizing")
    assert {"scale_up", "scale_down", "hold", "floor", "plan peak", "observed peak", "stabilizing"} <= seen, seen
