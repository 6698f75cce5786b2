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

import yaml

from exporter.catalogue import PLAN_FIGURES, RECOMMENDED
from exporter.config import load_config
from exporter.model import Config
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
"""
TIER = """\
  TIER:
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
    targets: [{vllm: 'http://127.0.0.1:PORT/metrics'}]
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


def _tier(i: int) -> str:
    return f"s{i}"  # one tier per scenario, all in one config and one promtool run


def _config(tmp_path: Path) -> Config:
    f = tmp_path / "fleet.yaml"
    f.write_text(CONFIG + "".join(TIER.replace("TIER", _tier(i)).replace("MIN_WARM", str(s.min_warm))
                                  .replace("PORT", str(8000 + i)) for i, s in enumerate(SCENARIOS)))
    return load_config(str(f))


def _python(config: Config, s: Scenario, name: str) -> dict[int, Resize]:
    """The daemon's loop over the timeline: resize each cycle, then append that cycle's point."""
    tier = config.tiers[name]
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
        r = resize(plan, name, s.deployed, counted, history, now, False, history_gap(config), (floor, "floor"))
        out[i] = r
        history.append(HistoryPoint(now, counted, r.recommended_instances))
    return out


def _series(values: tuple[float | None, ...]) -> str:
    return " ".join("_" if v is None else f"{v:g}" for v in values)


def _promtool_checks(config: Config, s: Scenario, name: str, verdicts: dict[int, Resize]
                     ) -> tuple[list[tuple[str, tuple[float | None, ...]]], list[dict[str, Any]]]:
    """The scenario's input series on its tier, and at each checked step: which scale alert fires on
    that tier (promtool records them as ALERTS), and the count each side would scale to."""
    tier = config.tiers[name]
    w = "5m"
    sel = f'{{tier="{name}"}}'
    inputs = [
        (f"tier:fleetwatch_requests_per_second:rate{w}{sel}", s.rps),
        (f"tier:fleetwatch_queue_depth_requests:avg{w}{sel}", tuple(None if r is None else s.queue for r in s.rps)),
        (f"tier:fleetwatch_instances:count{sel}", tuple(None if r is None else float(s.deployed) for r in s.rps)),
    ]
    inputs += [(f"fleetwatch_plan_{key}{sel}", tuple(None if r is None else float(get(tier.plan)) for r in s.rps))
               for key, _, get in PLAN_FIGURES]
    checks = []
    for step in s.checks:
        v = verdicts.get(step)
        assert v is not None, f"{s.name}: no cycle at step {step}"
        at = f"{int(step * STEP)}s"
        for alert, action in (("FleetwatchScaleUp", "scale_up"), ("FleetwatchScaleDown", "scale_down")):
            severity = "critical" if action == "scale_up" else "warning"
            checks.append({"expr": f'count by (tier, severity) (ALERTS{{alertname="{alert}",'
                                   f'alertstate="firing",tier="{name}"}})', "eval_time": at,
                           "exp_samples": [{"labels": f'{{severity="{severity}",tier="{name}"}}',
                                            "value": 1}] if v.action == action else []})
        target = v.recommended_instances if v.action != "scale_down" else _scaled_to(config, s, name, v)
        rec, floor = RECOMMENDED + sel, rules.SCALE_DOWN_FLOOR + sel
        expr = sizing.scale_down_to_promql(rec, floor) if v.action == "scale_down" else rec
        checks.append({"expr": f"max by (tier) ({expr})", "eval_time": at,
                       "exp_samples": [{"labels": sel, "value": target}]})
    return inputs, checks


def _scaled_to(config: Config, s: Scenario, name: str, v: Resize) -> int:
    assert v.recommended_instances is not None
    tier = config.tiers[name]
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
    recording = rules.recording_rules(config)
    needed = rules.read_by([a.expr for a in alerts], recording)  # the rest would only cost promtool time
    alert_rules = []
    for a in alerts:
        r = a.rule(rules.alert_for(config, a, "0s"), "runbook.md")  # a scale-down keeps its stabilization
        del r["annotations"]
        alert_rules.append(r)
    recording = [r for r in recording if r["record"] in needed]
    return {"groups": [{"name": "recording", "interval": f"{int(STEP)}s", "rules": recording},
                       {"name": "alerts", "interval": f"{int(STEP)}s", "rules": alert_rules}]}


def test_the_rules_decide_as_fleetwatch_does(tmp_path: Path) -> None:
    """Every scenario on its own tier, in one promtool run (the timelines are a day long: one run each
    cost promtool seconds apiece)."""
    promtool = binary("promtool")
    config = _config(tmp_path)
    series, checks, decided = [], [], {}
    for i, scenario in enumerate(SCENARIOS):
        verdicts = _python(config, scenario, _tier(i))
        inputs, mine = _promtool_checks(config, scenario, _tier(i), verdicts)
        series += [{"series": name, "values": _series(vals)} for name, vals in inputs]
        checks += mine
        decided[f"{_tier(i)} {scenario.name}"] = {step: (str(verdicts[step].action), verdicts[step].recommended_instances)
                                                  for step in scenario.checks}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(_rule_file(config), sort_keys=False))
    test = {"rule_files": ["rules.yml"], "evaluation_interval": f"{int(STEP)}s",
            "tests": [{"interval": f"{int(STEP)}s", "input_series": series, "promql_expr_test": checks}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    done = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, f"fleetwatch decided {decided}\n{done.stdout[-4000:]}{done.stderr}"


def test_the_scenarios_cover_every_branch(tmp_path: Path) -> None:
    """Scale up, scale down, each floor holding, less and more than a day, and the gap."""
    seen: set[str] = set()
    config = _config(tmp_path)
    for i, s in enumerate(SCENARIOS):
        for step, v in _python(config, s, _tier(i)).items():
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
