"""A row is one object: a made-up row added to the catalogue, and nowhere else, gets its Python
value, its recording rule, its alerts with promtool cases, its runbook entry, its panel, its
exported gauge and its band override, with no table in any other module to edit."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from exporter import catalogue, engines as I
from exporter.catalogue import BandSpec, Limit, Row, RowAlert, band, band_thresholds
from exporter.collector import Published, Snapshot, make_registry
from exporter.config import load_config
from exporter.model import Config
from exporter.scrape import ScrapeStats
from exporter.evaluate import evaluate_window
from exporter.model import Report, Status
from exporter.render import dashboards, rules
from exporter.window import Quantity, TierWindow, absent

from conftest import binary
from test_evaluate import PLAN, tier, window

KEY = "running_requests"


def running_requests(tw: TierWindow, plan: object) -> Quantity:
    means = tw.gauge_means("requests_running")
    if not means:
        return Quantity(None, reason=absent(tw, "requests_running"))
    return Quantity(sum(means.values()), len(means))


MADE_UP = Row(
    KEY, "requests", "Running requests", "Window mean of running requests, summed over the tier.",
    running_requests, f"sum by (tier) ({I.avg_over_time('requests_running')})",
    # warn at a constant, page at 3 x the plan's usable RPS per instance (a plan-scaled threshold)
    BandSpec("a few per instance", warning_above=(Limit(1.5),),
             critical_above=(Limit(3.0, plan="usable_rps_per_instance"),)),
    lambda ctx, st: "Many requests in flight." if st is not Status.OK else None,
    ("requests_running",), readings=1, op="avg",
    evidence=f"count by (tier) ({I.avg_over_time('requests_running')})",
    alert=RowAlert("RunningRequestsHigh", "More requests run at once than the tier was sized for.",
                   "Running requests per instance against max_num_seqs.", "Scale up or lower max_num_seqs."))


@pytest.fixture
def with_made_up_row(monkeypatch: pytest.MonkeyPatch) -> Row:
    monkeypatch.setattr(catalogue, "ROWS", (*catalogue.ROWS, MADE_UP))
    return MADE_UP


CONFIG = """\
interval: 15s
window: 5m
tiers:
  h100:
    plan: {gpus_per_instance: 2, instances: 2, gpu_hour_cost_usd: 4.0, peak_rps: 4, safety_factor: 0.2,
           slo: {ttft_p99: 2s, itl_p99: 50ms},
           benchmark: {usable_rps_per_instance: 2, ttft_p99: 1s, itl_p99: 35ms, gpu_utilization: 0.78}}
    targets: [{vllm: 'http://127.0.0.1:8000/metrics'}]
    bands:
      running_requests: {warning_above: 1.75}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    f = tmp_path / "made-up.yaml"
    f.write_text(CONFIG)
    return load_config(str(f))


def test_the_made_up_row_gets_its_python_value_status_and_diagnosis(with_made_up_row: Row, config: Config) -> None:
    # two instances, one running request each: 2.0, past the warning at 1.5, below the page at 3 x 2 RPS
    rep = evaluate_window(tier(), window(1.0, [10, 0, 0, 0, 0, 0, 0]), [], now=60)
    m = rep.metrics[KEY]
    assert m.value == 2.0 and m.status is Status.WARNING and m.diagnosis == "Many requests in flight."
    assert m.band is not None and m.band.critical_above is not None
    assert m.band.critical_above.value == 3.0 * PLAN.benchmark.usable_rps_per_instance
    # its band override in the config is accepted like any row's, and applied
    assert config.tiers["h100"].bands[KEY].warning_above == 1.75


def test_the_made_up_row_gets_its_recording_rule_alerts_runbook_and_promtool_cases(
        with_made_up_row: Row, config: Config, tmp_path: Path) -> None:
    out = rules.build(config)
    groups = yaml.safe_load(out["fleetwatch.rules.yml"])["groups"]
    recorded = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    assert recorded["tier:fleetwatch_running_requests:avg5m"] == MADE_UP.promql.replace("{w}", "5m")
    alerts = [r for g in groups for r in g["rules"] if r.get("alert") == "FleetwatchRunningRequestsHigh"]
    assert sorted(a["labels"]["severity"] for a in alerts) == ["critical", "warning"]
    # the rules compare with the exported thresholds: the override moved the warning; the page follows
    # the plan, 3 x 2 usable RPS per instance
    thresholds = {(row, sev, side): v for row, sev, side, v in band_thresholds(PLAN, config.tiers["h100"].bands)}
    assert thresholds[(KEY, "warning", "above")] == 1.75 and thresholds[(KEY, "critical", "above")] == 6
    assert "## FleetwatchRunningRequestsHigh" in rules.runbook(config)
    doc = yaml.safe_load(out["tests/fleetwatch_test.yml"])
    mine = [t for t in doc["tests"] if any(a["alertname"] == "FleetwatchRunningRequestsHigh" for a in t["alert_rule_test"])]
    assert sum(a["alertname"] == "FleetwatchRunningRequestsHigh" for t in mine for a in t["alert_rule_test"]) == 4
    promtool = binary("promtool")
    for name, text in out.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    # only the test groups with the made-up row's cases (the rest is the committed rules' test)
    (tmp_path / "tests" / "fleetwatch_test.yml").write_text(yaml.safe_dump({**doc, "tests": mine}, sort_keys=False))
    done = subprocess.run([promtool, "test", "rules", "tests/fleetwatch_test.yml"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_made_up_row_gets_its_panel(with_made_up_row: Row) -> None:
    board = json.loads(dashboards.build()["fleetwatch-fleet.json"])
    panel = next(p for p in board["panels"] if p.get("title") == "Running requests")
    assert panel["fieldConfig"]["defaults"]["unit"] == "short"
    assert "requests_running" in panel["targets"][0]["expr"] or "num_requests_running" in panel["targets"][0]["expr"]
    # a constant warning gives a colour step; a plan-scaled page gives none on a dashboard of every tier
    assert not MADE_UP.band.static


def test_the_made_up_row_is_exported(with_made_up_row: Row, config: Config) -> None:
    rep = evaluate_window(config.tiers["h100"], window(1.0, [10, 0, 0, 0, 0, 0, 0]), [], now=60)
    snapshot = Snapshot()
    snapshot.publish(Published(Report(60.0, 300.0, {"h100": rep}), ScrapeStats(), 1, 0.1, 0))
    page = generate_latest(make_registry(config, snapshot)).decode()
    assert 'fleetwatch_running_requests{tier="h100"} 2.0' in page
    # and so are its thresholds, which its alerts compare with
    assert ('fleetwatch_band_threshold{row="running_requests",severity="warning",side="above",tier="h100"} 1.75'
            in page)


def test_band_data_resolves_as_the_thresholds_it_names() -> None:
    spec = band("x", warning_above=0.5, critical_below=0.1, inclusive=("warning_above",))
    b = spec.resolve(None, {})
    assert b is not None and spec.static
    assert b.warning_above is not None and b.warning_above.inclusive and b.warning_above.value == 0.5
    assert b.critical_below is not None and not b.critical_below.inclusive
    # a limit that scales with another row is unknown until that row is
    queue = catalogue.row("queue_depth_requests").band
    assert queue.resolve(PLAN, {}) is None
    resolved = queue.resolve(PLAN, {"requests_per_second": Quantity(4.0)})
    assert resolved is not None and resolved.warning_above is not None
    assert resolved.warning_above.value == 0.8 * (PLAN.slo.ttft_p99 * 4.0)
