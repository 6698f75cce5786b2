"""`fleetwatch backtest` against a real Prometheus that watched a simulated day.

The day is the demo's engine model on the wall clock, compressed as the demo's days are: an h100 morning
inside its bands, an undersized afternoon (140% of the tier's usable capacity) and a utilization-trap
night (15%). Prometheus scrapes it every second with the generated rules loaded and `fleetwatch serve`
beside it, so the stored history is what a live deployment leaves, with honest timestamps. The backtest
then replays that stretch, and its findings are checked against the scenario's own timeline and against
figures the test computes itself from the same series.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml

from exporter.alertreplay import (AlertRule, Firing, Route, alert_rules, evaluate_rule, flapping, notifications,
                                  recordings)
from exporter.backtest import (Backtest, TierStep, backtest, curve_at, cycle_times, parse_time, periods, plan_outcome,
                               span_text)
from exporter.config import load_plan
from exporter.demo.fleet import TierBehaviour
from exporter.demo.scenarios import HEALTHY_LOAD, Scenario
from exporter.model import PrometheusSource, Status
from exporter.render.rules import build
from exporter.sources.prometheus_api import PrometheusApi

from conftest import binary
from realbins import Prometheus
from test_e2e import fleet_and_fleetwatch, prometheus_config
from test_live import Pane

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "exporter" / "demo" / "plans"
WINDOW, INTERVAL, STEP = 10.0, 1.0, 2.0
MORNING, AFTERNOON, NIGHT, END = 0.0, 40.0, 85.0, 140.0  # run seconds of the compressed day


def h100_load(t: float) -> float:
    return 0.57 if t < AFTERNOON else 1.4 if t < NIGHT else 0.15


DAY = Scenario("day", "h100: a morning in band, an undersized afternoon, a utilization-trap night",
               "scale_up in the afternoon, the utilization trap at night",
               # a100's arrivals evenly spaced: Poisson noise over 10 s windows would dip its 52% under the trap's 40%
               {"h100": TierBehaviour(load=h100_load), "a100": TierBehaviour(load=HEALTHY_LOAD["a100"], steady=True)})


# ---------------------------------------------------------------- pure parts


def test_parse_time_reads_what_an_operator_types() -> None:
    now = 1_800_000_000.0
    assert parse_time("now", now) == now
    assert parse_time("now-7d", now) == now - 7 * 86400
    assert parse_time("-90m", now) == now - 5400
    assert parse_time("1700000000", now) == 1_700_000_000.0
    assert parse_time("2026-11-26T00:00:00Z", now) == parse_time("2026-11-26", now) == 1795651200.0
    assert parse_time("2026-11-26 14:00", now) == 1795651200.0 + 14 * 3600
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday", now)


def test_cycles_end_at_to_and_cover_exactly_the_stretch() -> None:
    times = cycle_times(1000.0, 1300.0, 10.0)
    assert times[-1] == 1300.0 and len(times) == 30 and times[0] == 1010.0  # each stands for the 10 s before it
    assert cycle_times(1000.0, 1001.0, 300.0) == [1001.0]  # less than a step: one cycle, at the end
    with pytest.raises(ValueError, match="positive"):
        cycle_times(0.0, 100.0, 0.0)
    with pytest.raises(ValueError, match="use a longer step"):
        cycle_times(0.0, 30 * 86400.0, 1.0)


def test_span_text() -> None:
    assert [span_text(s) for s in (45, 60, 125, 3600 + 5 * 60, 26 * 3600)] == ["45s", "1m", "2m05s", "1h05m", "26h00m"]


def _step(at: float, **kw: Any) -> TierStep:
    base: dict[str, Any] = dict(values={}, statuses={}, deployed=4, up=4, recommended=4, action="hold", scheduled=None,
                                findings=(), trap=False)
    return TierStep(at=at, **{**base, **kw})


def test_periods_join_consecutive_steps_only() -> None:
    steps = [_step(t, trap=t in (2, 3, 4, 8)) for t in range(10)]
    assert [(p.start, p.end) for p in periods(steps, lambda s: s.trap)] == [(2, 4), (8, 8)]
    assert periods(steps[:2], lambda s: s.trap) == []


def test_a_plan_is_read_on_its_own_curve_never_extrapolated() -> None:
    plan = load_plan(str(PLANS / "h100.yaml"))
    pts = sorted((p.rps, p.ttft_p99) for p in plan.benchmark.curve if p.ttft_p99 is not None)
    (x0, y0), (x1, y1) = pts[2], pts[3]
    mid = (x0 + x1) / 2
    v, beyond = curve_at(plan, "ttft_p99", mid)
    assert v == pytest.approx((y0 + y1) / 2) and not beyond
    assert curve_at(plan, "ttft_p99", pts[0][0] / 2) == (pts[0][1], False)  # a lighter load is no slower
    assert curve_at(plan, "ttft_p99", pts[-1][0] * 1.01) == (None, True)  # beyond the benchmark
    # a step whose load is past the curve counts as violating; one step's RPS unknown counts as unknown
    steps = [_step(0, values={"requests_per_second": pts[-1][0] * plan.instances * 2}),
             _step(60, values={"requests_per_second": None}),
             _step(120, values={"requests_per_second": pts[0][0] * plan.instances})]
    out = plan_outcome("p", plan, steps, 60.0)
    assert (out.slo_violation_minutes, out.beyond_benchmark_minutes, out.unknown_minutes) == (1.0, 1.0, 1.0)
    assert out.gpu_hours == pytest.approx(plan.instances * plan.gpus_per_instance * 3 / 60)


# ---------------------------------------------------------------- a real Prometheus that watched a day


@pytest.fixture(scope="module")
def watched_day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The compressed day, watched live by Prometheus (rules loaded) and fleetwatch: its config, the
    Prometheus, and the day's start (run second 0) and end as Unix times."""
    prometheus_bin = binary("prometheus")
    tmp = tmp_path_factory.mktemp("day")
    with fleet_and_fleetwatch(DAY, INTERVAL, WINDOW, for_=2.0) as (demo, fleetwatch_url):
        rules = tmp / "rules"
        for name, text in build(demo.config, eval_interval="1s").items():
            (rules / name).parent.mkdir(parents=True, exist_ok=True)
            (rules / name).write_text(text)
        prom = Prometheus(prometheus_bin, prometheus_config(demo, fleetwatch_url, rules / "fleetwatch.rules.yml"))
        try:
            # Prometheus's first scrapes: a replay starts two windows after them, as a rate over a window in which
            # a series begins is not extrapolated to the window's start (it reads low)
            watched = time.time()
            # when the simulated day really crossed into its afternoon and its night, on the wall clock (on a busy
            # machine the simulation falls a little behind real time, and the phases with it)
            crossed: dict[float, float] = {}
            while demo.fleet.t < END:  # the day passes on the wall clock: nothing to simulate faster
                t = demo.fleet.t
                for phase in (AFTERNOON, NIGHT):
                    if t >= phase and phase not in crossed:
                        crossed[phase] = time.time() - (t - phase)
                time.sleep(0.1)  # polling the simulation's clock as it runs
            config = replace(demo.config, prometheus=PrometheusSource(prom.url))
            yield {"config": config, "prom": prom, "end": time.time() - 1, "demo": demo,
                   "rules": rules, "from": watched + 2 * WINDOW, "afternoon": crossed[AFTERNOON],
                   "night": crossed[NIGHT]}
        finally:
            prom.stop()


def _replay(day: dict[str, Any], **kw: Any) -> Backtest:
    cfg = day["config"]
    api = PrometheusApi(cfg.prometheus, timeout=30, max_bytes=64 << 20)
    try:
        return backtest(cfg, api.query_range, day["from"], day["end"], STEP, **kw)
    finally:
        api.close()


@pytest.mark.integration
def test_backtest_finds_the_undersized_afternoon_and_the_night_trap(watched_day: dict[str, Any]) -> None:
    bt = _replay(watched_day)
    afternoon, night, end = watched_day["afternoon"], watched_day["night"], watched_day["end"]
    h100, a100 = bt.tiers["h100"], bt.tiers["a100"]
    plan = watched_day["config"].tiers["h100"].plan
    assert bt.failed == ()
    # scale-up comes once the window holds afternoon traffic, and not before
    first_up = min(s.at for s in bt.steps["h100"] if s.action == "scale_up")
    assert 0 < first_up - afternoon <= WINDOW + 2 * STEP, first_up - afternoon
    assert h100.undersized and h100.undersized[0].start == first_up
    # it needs at least the afternoon's 140% of four instances' usable load, with the plan's safety margin
    needs = re.fullmatch(r"needs (\d+), has 4", h100.undersized[0].detail)
    assert needs and int(needs[1]) >= math.ceil(4 * 1.4 * (1 + plan.safety_factor) - 0.01), h100.undersized
    # the traffic of the moment needed more than was deployed: the afternoon, give or take a window
    over = h100.over_capacity
    assert len(over) == 1, [(p.start - afternoon, p.end - afternoon) for p in over]
    assert 0 < over[0].start - afternoon <= WINDOW, over[0].start - afternoon
    assert 0 < over[0].end - night <= WINDOW + STEP, over[0].end - night
    # the night's utilization trap, once the window holds only night traffic
    trap = h100.utilization_trap
    assert trap and 0 < trap[0].start - night <= WINDOW + 2 * STEP, [(p.start - night, p.end - night) for p in trap]
    assert trap[-1].end == bt.steps["h100"][-1].at
    assert all(p.start > night for p in trap), [(p.start - night, p.end - night) for p in trap]
    # the afternoon broke the TTFT SLO; not before, and it cleared once the night drained the afternoon's queue
    assert h100.outside_slo_seconds["ttft_p99"] > 0
    late = [s.at for s in bt.steps["h100"] if (v := s.values.get("ttft_p99_seconds")) is not None and v > plan.slo.ttft_p99]
    assert late and afternoon < min(late) and max(late) < end - 2 * WINDOW, (min(late) - afternoon, end - max(late))
    # a100's load stayed in its band all day: never over capacity, never in the trap
    assert not a100.utilization_trap and not a100.over_capacity, (a100.utilization_trap, a100.over_capacity)
    # GPU-hours: the instances Prometheus saw, at the plan's GPUs each, over the steps
    assert h100.deployed == (4, 4)
    assert h100.gpu_hours["used"] == pytest.approx(4 * plan.gpus_per_instance * h100.steps * STEP / 3600)
    # statuses are the live ones: the night's fleet utilization row is below its band
    dark = [s for s in bt.steps["h100"] if s.at > night + WINDOW]
    assert dark and all(s.statuses["fleet_utilization_ratio"] is not Status.OK for s in dark)


def _hand_rps(day: dict[str, Any], tier: str, first: float) -> list[tuple[float, float]]:
    """The tier's arrival rate at each step, asked of Prometheus by the test's own query (not the catalogue's):
    requests completed, plus the growth of those running and waiting, over the window."""
    sel, w = f'{{tier="{tier}"}}', f"[{WINDOW:g}s]"
    r = requests.get(day["prom"].url + "/api/v1/query_range", params={
        "query": f"sum(rate(vllm:request_success_total{sel}{w})) + (sum(delta(vllm:num_requests_running{sel}{w})) + "
                 f"sum(delta(vllm:num_requests_waiting{sel}{w}))) / {WINDOW:g}",
        "start": f"{first:.3f}", "end": f"{day['end']:.3f}", "step": f"{STEP:g}"}, timeout=30)
    (series,) = r.json()["data"]["result"]
    return [(float(t), float(v)) for t, v in series["values"]]


def _hand_minutes(plan_doc: dict[str, Any], instances: int, rps: list[tuple[float, float]]) -> float:
    """Minutes the plan's own curve says break the SLO, computed here from the plan file's numbers."""
    def seconds(v: str) -> float:
        return float(v[:-2]) / 1000 if v.endswith("ms") else float(v[:-1])

    b, slo = plan_doc["benchmark"], plan_doc["slo"]
    curve = sorted([(p["rps"], seconds(p["ttft_p99"]), seconds(p["itl_p99"])) for p in b["curve"]]
                   + [(b["usable_rps_per_instance"], seconds(b["ttft_p99"]), seconds(b["itl_p99"]))])
    bad = 0
    for _, total in rps:
        x = total / instances
        if x > curve[-1][0]:
            bad += 1
            continue
        for (x0, t0, i0), (x1, t1, i1) in zip([curve[0]] + curve, curve):
            if x <= x1:
                f = 0.0 if x1 == x0 or x <= x0 else (x - x0) / (x1 - x0)
                ttft, itl = t0 + f * (t1 - t0), i0 + f * (i1 - i0)
                bad += ttft > seconds(slo["ttft_p99"]) or itl > seconds(slo["itl_p99"])
                break
    return bad * STEP / 60


@pytest.mark.integration
def test_a_bigger_plan_would_have_held_the_afternoon_at_a_cost(watched_day: dict[str, Any], tmp_path: Path) -> None:
    doc = yaml.safe_load((PLANS / "h100.yaml").read_text())
    bigger = {**doc, "instances": 7}
    (tmp_path / "h100-b.yaml").write_text(yaml.safe_dump(bigger))
    bt = _replay(watched_day, alternatives={"h100": {"h100-b.yaml": load_plan(str(tmp_path / "h100-b.yaml"))}})
    current, b = bt.tiers["h100"].plans
    assert b.name == "h100-b.yaml" and (current.instances, b.instances) == (4, 7)
    rps = _hand_rps(watched_day, "h100", bt.steps["h100"][0].at)
    assert len(rps) == bt.tiers["h100"].steps
    # by hand: the same series, the plan file's curve, each plan's instance count
    assert current.slo_violation_minutes == pytest.approx(_hand_minutes(doc, 4, rps), abs=2 * STEP / 60)
    assert b.slo_violation_minutes == pytest.approx(_hand_minutes(bigger, 7, rps), abs=2 * STEP / 60)
    assert b.slo_violation_minutes < current.slo_violation_minutes
    hours = len(rps) * STEP / 3600
    assert b.gpu_hours == pytest.approx(7 * doc["gpus_per_instance"] * hours)
    assert current.gpu_hours == pytest.approx(4 * doc["gpus_per_instance"] * hours)
    assert b.cost_usd == pytest.approx(b.gpu_hours * doc["gpu_hour_cost_usd"]) and b.cost_usd > current.cost_usd


@pytest.mark.integration
def test_the_command_prints_the_table_and_the_json(watched_day: dict[str, Any], tmp_path: Path) -> None:
    cfg = dict(yaml.safe_load(Path(watched_day["demo"].config_path).read_text()))
    cfg["source"] = {"prometheus": {"url": watched_day["prom"].url}}
    for tier in cfg["tiers"].values():
        tier.pop("targets")
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "h100-b.yaml").write_text(yaml.safe_dump({**yaml.safe_load((PLANS / "h100.yaml").read_text()),
                                                          "instances": 7}))
    args = [sys.executable, "-m", "exporter", "backtest", "-c", str(tmp_path / "fleet.yaml"),
            "--from", f"{watched_day['from']:.3f}", "--to", f"{watched_day['end']:.3f}", "--step", "2s",
            "--plan", f"h100={tmp_path / 'h100-b.yaml'}"]
    table = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert table.returncode == 0, table.stderr
    assert "tier h100" in table.stdout and "undersized (scale up): " in table.stdout
    assert "h100-b.yaml" in table.stdout and "utilization trap" in table.stdout
    assert "\r" not in table.stderr  # no progress bar off a terminal
    out = subprocess.run(args + ["--format", "json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["tiers"]["h100"]["undersized"] and doc["tiers"]["h100"]["utilization_trap"]
    assert [p["plan"] for p in doc["tiers"]["h100"]["plans"]] == ["current (h100.yaml)", "h100-b.yaml"]
    assert all(math.isfinite(s["deployed"]) for s in doc["steps"]["h100"])
    # on a terminal, a progress bar on stderr, drawn in place, ending at every step replayed
    pane = Pane("backtest " + " ".join(args[4:]) + " --no-alerts > /dev/null", {"TERM": "xterm-256color"})
    try:
        screen = pane.wait_for(r"replaying \[#+\] 100% \(\d+ of \d+ steps\)", 60)
    finally:
        pane.close()
    steps = re.search(r"\((\d+) of (\d+) steps\)", screen)
    assert steps and steps[1] == steps[2] == str(len(doc["steps"]["h100"])), screen
    assert screen.count("replaying [") == 1, screen  # redrawn on one line, not a line per step
    # bad input is a usage error, said in one line, before anything is replayed
    for extra, said in ((["--step", "0s"], "positive"), (["--step", "1s", "--from", "now-60d"], "use a longer step"),
                        (["--report", "/proc/fleetwatch-report"], "cannot write to /proc/fleetwatch-report"),
                        (["--alertmanager-config", str(tmp_path / "fleet.yaml")], "is this an Alertmanager config?")):
        bad = subprocess.run(args + extra, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert bad.returncode == 2 and said in bad.stderr and "Traceback" not in bad.stderr, (extra, bad.stderr)
    # a bad --plan is a usage error, said in one line
    bad = subprocess.run(args[:-2] + ["--plan", "h200=x.yaml"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "no tier 'h200'" in bad.stderr, bad.stderr


# ---------------------------------------------------------------- alerts


def _rule(for_seconds: float = 2.0) -> AlertRule:
    return AlertRule("X", "x > 1", for_seconds, {"severity": "warning"}, "g", 1.0)


def test_an_alert_fires_after_for_and_resolves_at_the_first_evaluation_without_it() -> None:
    times = [float(t) for t in range(10)]
    on = {k: [({"tier": "h100"}, 2.0)] for k in (1, 2, 3, 4, 6, 7)}
    eps = evaluate_rule(_rule(2.0), times, on)
    # pending at 1, firing at 3 (2 s later), gone at 5; pending again at 6, never firing before 8 (gone)
    assert [(f.active_at, f.start, f.end) for f in eps] == [(1.0, 3.0, 5.0)]
    assert dict(eps[0].labels) == {"alertname": "X", "severity": "warning", "tier": "h100"}
    # for: 0 fires at the first evaluation; a NaN answer is no answer
    eps = evaluate_rule(_rule(0.0), times, {**on, 8: [({"tier": "h100"}, float("nan"))]})
    assert [(f.start, f.end) for f in eps] == [(1.0, 5.0), (6.0, 8.0)]
    # still firing at the end
    assert evaluate_rule(_rule(0.0), times, {9: [({}, 1.0)]})[0].end is None


def _episode(start: float, end: float | None, **labels: str) -> Firing:
    return Firing(tuple(sorted({"alertname": "X", **labels}.items())), start, start, end)


def test_notifications_follow_group_wait_group_interval_and_repeat_interval() -> None:
    route = Route(group_by=("alertname",), group_wait=10, group_interval=60, repeat_interval=300)
    a, b = _episode(0, 200, tier="h100"), _episode(30, None, tier="a100")
    sent = notifications([a, b], route, end=1000)
    # first flush at group_wait with the one firing; b joins at the next group_interval; a's resolution at the
    # first flush after 200; then b alone again every repeat_interval
    assert [(n.at, len(n.firing), len(n.resolved)) for n in sent] == [
        (10, 1, 0), (70, 2, 0), (250, 1, 1), (550, 1, 0), (850, 1, 0)]
    # grouped by every label ('...'), each alert is its own group
    each = notifications([a, b], Route(group_by=None, group_wait=10, group_interval=60, repeat_interval=300), 100)
    assert sorted((n.at, n.firing[0]) for n in each) == [(10, a.labels), (40, b.labels)]
    five = [_episode(t, t + 1) for t in range(5)]  # one alert, five episodes
    assert flapping(five, more_than=3) == {five[0].labels: 5} and flapping(five, more_than=5) == {}


def _alerts_fired(prom: Prometheus, start: float, end: float) -> dict[tuple[tuple[str, str], ...], list[float]]:
    """Prometheus's own ALERTS series over the range: each firing identity and the times it was firing."""
    r = requests.get(prom.url + "/api/v1/query_range", params={
        "query": 'ALERTS{alertstate="firing"}', "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"}, timeout=30)
    out = {}
    for s in r.json()["data"]["result"]:
        labels = {k: v for k, v in s["metric"].items() if k not in ("__name__", "alertstate")}
        out[tuple(sorted(labels.items()))] = [float(t) for t, _ in s["values"]]
    return out


@pytest.mark.integration
def test_the_replayed_alerts_are_those_prometheus_fired_live(watched_day: dict[str, Any]) -> None:
    rules = alert_rules(yaml.safe_load((watched_day["rules"] / "fleetwatch.rules.yml").read_text()))
    assert {r.interval for r in rules} == {INTERVAL}
    start, end = watched_day["from"], watched_day["end"] - 2  # the last seconds: both have evaluated them
    bt = _replay(watched_day, rules=rules)
    assert bt.alerts is not None and not bt.alerts.unanswered
    replayed = [f for f in bt.alerts.episodes if f.start <= end]
    live = _alerts_fired(watched_day["prom"], start, end)
    # exactly the alerts Prometheus fired over the same stretch, by name and labels
    assert {f.labels for f in replayed} == set(live), (sorted({f.labels for f in replayed} ^ set(live)))
    assert any(dict(k)["alertname"] == "FleetwatchScaleUp" and dict(k)["tier"] == "h100" for k in live)
    assert any(dict(k)["alertname"] == "FleetwatchUtilizationTrap" and dict(k)["tier"] == "h100" for k in live)
    # rules whose recorded series Prometheus never held (another window: rules never loaded) are not replayed,
    # and said to be, rather than read as silence
    other = build(replace(watched_day["config"], window=2 * WINDOW), eval_interval="1s")["fleetwatch.rules.yml"]
    doc = yaml.safe_load(other)
    unloaded = _replay(watched_day, rules=alert_rules(doc), recorded=recordings(doc)).alerts
    assert unloaded is not None
    said = unloaded.unanswered.get("FleetwatchTTFTP99High (critical)", "")
    assert f"reads tier:fleetwatch_ttft_p99_seconds:rate{2 * WINDOW:g}s" in said, unloaded.unanswered
    assert "were the recording rules loaded then?" in said
    assert not any(dict(f.labels)["alertname"] == "FleetwatchTTFTP99High" for f in unloaded.episodes)
    # the rules that were loaded: nothing said about them
    loaded_doc = yaml.safe_load((watched_day["rules"] / "fleetwatch.rules.yml").read_text())
    loaded = _replay(watched_day, rules=rules, recorded=recordings(loaded_doc)).alerts
    assert loaded is not None and loaded.unanswered == {}
    # and at the same times, within an evaluation interval either way (the live group's phase is its own)
    for f in replayed:
        seen = live[f.labels]
        assert any(abs(t - max(f.start, start)) <= INTERVAL + 1 for t in seen), (f, seen[:5])
        if f.end is not None and f.end <= end:
            assert any(abs(t - (f.end - INTERVAL)) <= INTERVAL + 1 for t in seen), (f, seen[-5:])


# ---------------------------------------------------------------- the report


CHECKER = """<!doctype html><html><body><iframe id="f" src="report/index.html"></iframe><pre id="out">pending</pre>
<script>document.getElementById("f").addEventListener("load", function () {
  document.getElementById("out").textContent = JSON.stringify(Array.from(this.contentDocument.images).map(
    function (i) { return [i.getAttribute("src"), i.complete, i.naturalWidth, i.naturalHeight]; }));
});</script></body></html>"""


def _images_in_chromium(chromium: str, page_dir: Path) -> list[list[Any]]:
    """Every <img> of page_dir/report/index.html as headless Chromium loaded it: [src, complete, width, height]."""
    (page_dir / "check.html").write_text(CHECKER)
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=5000", "--dump-dom", (page_dir / "check.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="out">(.*?)</pre>', out.stdout, re.S)
    assert m and m[1] != "pending", (out.stdout[-2000:], out.stderr[-2000:])
    return list(json.loads(m[1]))


@pytest.mark.integration
def test_the_report_opens_offline_with_every_plot(watched_day: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from exporter.render.report import write_report

    chromium = binary("chromium")
    rules = alert_rules(yaml.safe_load((watched_day["rules"] / "fleetwatch.rules.yml").read_text()))
    doc = yaml.safe_load((PLANS / "h100.yaml").read_text())
    (tmp_path / "h100-b.yaml").write_text(yaml.safe_dump({**doc, "instances": 7}))
    bt = _replay(watched_day, rules=rules, alternatives={"h100": {"h100-b.yaml": load_plan(str(tmp_path / "h100-b.yaml"))}})
    index = write_report(bt, watched_day["config"], tmp_path / "report")
    text = index.read_text()
    assert "http://" not in text and "https://" not in text  # nothing to fetch: it opens offline
    assert "h100-b.yaml" in text and "FleetwatchScaleUp" in text
    images = _images_in_chromium(chromium, tmp_path)
    # three plots per tier, each loaded and drawn at its size
    assert len(images) == 3 * len(bt.tiers), images
    assert all(complete and w > 400 and h > 100 for _, complete, w, h in images), images
    # the check can fail: a missing plot is reported as not loaded
    (tmp_path / "report" / images[0][0]).unlink()
    assert _images_in_chromium(chromium, tmp_path)[0][2] == 0
