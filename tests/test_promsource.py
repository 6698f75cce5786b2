"""The Prometheus-backed mode (source: prometheus): the catalogue's PromQL asked of a real Prometheus
gives the report that scraping gives, on the same simulated fleet.

The comparison runs both modes side by side on one wall-clock fleet: a direct pipeline scraping the
engines every second, and a real Prometheus scraping the same engines every second, read by a
Prometheus-backed pipeline at the direct report's own instant. They may differ only by how the
rates are estimated (Prometheus extrapolates to the window's edges, fleetwatch takes last minus
first) and by the second's phase between the two scrapers.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from exporter.config import ConfigError, load_config
from exporter.daemon import Pipeline
from exporter.evaluate import ASKS, replay_history
from exporter.sizing import recommended_instances
from exporter.model import PrometheusSource, Status
from exporter.promread import PrometheusReader
from exporter.promview import Answers, inline, prefetch, row_queries
from exporter.scrape import Scraper
from exporter.sources.prometheus_api import PrometheusApi, PrometheusError, parse_matrix, parse_vector

from conftest import binary
from fakes import refused_url
from realbins import Prometheus
from test_e2e import fleet_scraped_by_prometheus, prometheus_config
from test_sidecar import STEADY

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fleet-prometheus.yaml"
PLANS = ROOT / "examples" / "plans"


def _write(tmp_path: Path, text: str) -> str:
    f = tmp_path / "fleet.yaml"
    f.write_text(text.replace("PLANS", str(PLANS)))
    return str(f)


BACKED = """
source:
  prometheus: {url: "http://prom:9090/", instance_label: pod}
tiers:
  h100: {plan: PLANS/h100.yaml}
"""


# ---------------------------------------------------------------- config


def test_the_source_block_is_read_and_checked(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BACKED))
    assert cfg.prometheus == PrometheusSource("http://prom:9090", None, "pod")
    assert cfg.tiers["h100"].targets == ()
    assert load_config(str(EXAMPLE)).prometheus is not None
    for text, where in (
        (BACKED.replace("instance_label: pod", "instance_label: 'no-dash'"), "source.prometheus.instance_label"),
        (BACKED.replace("url:", "ur1:"), "source.prometheus.ur1"),
        (BACKED.replace('"http://prom:9090/"', "prom:9090"), "source.prometheus.url"),
        (BACKED.replace("prometheus: {", "thanos: {"), "source.thanos"),
        (BACKED + "state_dir: /tmp\n", "state_dir"),
        (BACKED.replace("{plan: PLANS/h100.yaml}", "{plan: PLANS/h100.yaml, targets: [{vllm: 'http://x:1/m'}]}"),
         "tiers.h100.targets"),
    ):
        with pytest.raises(ConfigError) as e:
            load_config(_write(tmp_path, text))
        assert e.value.path == where, (where, str(e.value))


def test_a_sidecar_cannot_read_from_prometheus(tmp_path: Path) -> None:
    f = _write(tmp_path, BACKED)
    r = subprocess.run([sys.executable, "-m", "exporter", "serve", "-c", f, "--tier", "h100"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "source" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------- pure parts


def test_every_query_is_whole_promql_with_the_plan_written_in(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BACKED))
    exprs = prefetch(cfg, 300.0, "pod", ASKS)
    assert len(exprs) == len(set(exprs)) > 30
    for e in exprs:
        # no placeholder, no recorded series and no plan gauge left: nothing needs the rules loaded
        assert "{w}" not in e and "{ws}" not in e and "tier:fleetwatch_" not in e and "fleetwatch_plan_" not in e, e
    fleet = row_queries(cfg, 300.0)["fleet_utilization_ratio"][0]
    usable = cfg.tiers["h100"].plan.benchmark.usable_rps_per_instance
    assert f'label_replace(vector({usable!r}), "tier", "h100", "", "")' in fleet
    assert inline("rate(x[{w}])", cfg, 90.0) == "rate(x[90s])"


def test_answers_ask_each_query_once_and_remember_failures() -> None:
    asked: list[str] = []

    def query(expr: str) -> list[tuple[dict[str, str], float]]:
        asked.append(expr)
        if expr == "bad":
            raise PrometheusError("timeout", "slow")
        return [({"tier": "h100"}, 1.0)]

    a = Answers(query)
    assert a.by("good", "tier") == a.by("good", "tier") == {("h100",): 1.0}
    for _ in range(2):
        with pytest.raises(PrometheusError):
            a.get("bad")
    assert asked == ["good", "bad"]


def test_api_answers_are_parsed_strictly() -> None:
    ok = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"tier": "h100"}, "value": [1.0, "2.5"]}, {"metric": {"tier": "a100"}, "value": [1.0, "NaN"]}]}}
    got = parse_vector(json.dumps(ok))
    assert got[0] == ({"tier": "h100"}, 2.5) and math.isnan(got[1][1])
    m = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"tier": "h100"}, "values": [[10, "1"], [20, "+Inf"]]}]}}
    assert parse_matrix(json.dumps(m)) == [({"tier": "h100"}, [(10.0, 1.0), (20.0, math.inf)])]
    for body, reason in (("<html>", "malformed"), ("[]", "malformed"),
                         ('{"status": "error", "errorType": "bad_data", "error": "parse error"}', "query"),
                         (json.dumps({**ok, "data": {"resultType": "matrix", "result": []}}), "malformed"),
                         (json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
                             {"metric": {"tier": "h100"}, "value": [1.0, 2.5]}]}}), "malformed")):
        with pytest.raises(PrometheusError) as e:
            parse_vector(body)
        assert e.value.reason == reason, body


def test_replayed_history_recommends_what_each_cycle_would_have() -> None:
    """Plan: peak 24, usable 8, safety 0.2. Until a day is covered the plan's peak floors the basis:
    ceil(ceil(24 / 8) x 1.2) = 4 while rps stays at or under 24; at 40 RPS, ceil(ceil(5) x 1.2) = 6, and
    that peak holds for every later point. After a day the observed peak alone counts: still 40."""
    plan = load_config(str(EXAMPLE)).tiers["h100"].plan
    day = 86400.0
    points = [(0.0, 10.0), (60.0, None), (120.0, 40.0), (180.0, 5.0), (day + 180.0, 5.0)]
    got = replay_history(plan, points)
    assert [h.rps for h in got] == [10.0, None, 40.0, 5.0, 5.0]
    assert [h.recommended for h in got] == [4, 4, 6, 6, 6]
    assert recommended_instances(24, 8, 0.2) == 4 and recommended_instances(40, 8, 0.2) == 6


def test_a_dead_prometheus_fails_the_cycle_counted_and_keeps_serving(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BACKED.replace("http://prom:9090/", refused_url())))
    reader = PrometheusReader(cfg)
    try:
        pipe = Pipeline(cfg, None, reader=reader)
        for _ in range(2):
            pipe.safe_cycle()
        assert pipe.failures == 2 and pipe.snapshot.get().report is None
        errors = pipe.snapshot.get().stats.errors
        assert sum(n for (tier, inst, src, reason), n in errors.items() if src == "prometheus" and reason == "refused") \
            >= 2 * len(prefetch(cfg, cfg.window, "pod", ASKS))
        assert pipe.history_note().read is False  # the history is asked again once Prometheus answers
    finally:
        reader.close()
    r = subprocess.run([sys.executable, "-m", "exporter", "check", "-c", str(tmp_path / "fleet.yaml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("fleetwatch: cannot read the fleet")


# ---------------------------------------------------------------- against a real Prometheus

WINDOW = 20.0
REL = {"ttft": 0.15, "itl": 0.15, "queue_depth_requests": 0.3}  # a tail quantile moves a bucket; a queue is small


def _close(key: str, a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    tol = next((v for k, v in REL.items() if key.startswith(k)), 0.10)
    return abs(a - b) <= tol * max(abs(a), abs(b)) + (1.0 if key == "queue_depth_requests" else 1e-9)


def _shape(d: Any) -> Any:
    """The keys, nested; leaves are numbers or text (None where unknown)."""
    if isinstance(d, dict):
        return {k: _shape(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_shape(v) for v in d[:1]]
    return "number" if isinstance(d, (int, float)) and not isinstance(d, bool) else "leaf"


@pytest.mark.integration
def test_prometheus_backed_and_direct_mode_give_the_same_report(tmp_path: Path) -> None:
    from exporter.demo.run import WallClock, start_fleet

    prometheus_bin = binary("prometheus")
    demo = start_fleet(STEADY, interval=1.0, window=WINDOW)
    stop = threading.Event()
    clock = WallClock(demo.fleet, stop)
    rules = tmp_path / "none.rules.yml"
    rules.write_text("groups: []\n")  # the backed mode needs no rules: it writes recorded series out
    prom = Prometheus(prometheus_bin, prometheus_config(demo, [], rules))
    direct_cfg = demo.config
    backed_cfg = replace(direct_cfg, prometheus=PrometheusSource(prom.url, instance_label="pod"),
                         tiers={n: replace(t, targets=()) for n, t in direct_cfg.tiers.items()})
    scraper, reader = Scraper(direct_cfg), PrometheusReader(backed_cfg)
    try:
        direct = Pipeline(direct_cfg, scraper)
        t0 = time.monotonic()
        while time.monotonic() - t0 < WINDOW + 6:  # a full window in both, at the fleet's wall-clock pace
            direct.cycle()
            clock.wait_until(time.monotonic() - clock.t0 + 1.0)
        d = direct.cycle()
        backed = Pipeline(backed_cfg, None, reader=reader)
        asked: list[str] = []
        query = reader.api.query

        def recorded(expr: str, at: float, timeout: float | None = None) -> list[tuple[dict[str, str], float]]:
            asked.append(expr)
            return query(expr, at, timeout)

        reader.api.query = recorded  # type: ignore[method-assign]
        p = backed.evaluate_prometheus(d.generated_at)
        history = backed.history.snapshot()
    finally:
        stop.set()
        scraper.close()
        reader.close()
        prom.stop()
        demo.close()

    # every question the findings asked was one they declared: the cycle's queries are its prefetch, all sent at once
    planned = set(prefetch(backed_cfg, WINDOW, "pod", ASKS))
    assert asked and [e for e in asked if e not in planned] == [], "undeclared questions"
    dd: dict[str, Any] = d.as_dict()
    pd: dict[str, Any] = p.as_dict()
    for tier in dd["tiers"]:
        a, b = dd["tiers"][tier], pd["tiers"][tier]
        assert b["error"] is None
        # the same report, field for field, apart from what the history rests on
        # the history-based blocks: the same keys (their figures rest on histories of different lengths)
        rests_on_history = ("history", "schedule", "utilization_levers")
        assert _shape({k: v for k, v in a.items() if k not in rests_on_history}) == \
            _shape({k: v for k, v in b.items() if k not in rests_on_history}), tier
        for k in rests_on_history[1:]:
            assert set(a[k]) == set(b[k]), (tier, k)
        assert a["instances"] == b["instances"] == {"up": len(direct_cfg.tiers[tier].targets),
                                                    "total": len(direct_cfg.tiers[tier].targets)}
        for key, m in a["metrics"].items():
            assert _close(key, m["value"], b["metrics"][key]["value"]), (tier, key, m["value"], b["metrics"][key])
            assert m["status"] == b["metrics"][key]["status"], (tier, key, m, b["metrics"][key])
            if m["value"] is not None:
                assert _close("samples", m["samples"], b["metrics"][key]["samples"]) or m["samples"] < 20, (tier, key)
        assert [(c["check"], c["status"]) for c in a["plan_checks"]] == \
            [(c["check"], c["status"]) for c in b["plan_checks"]]
        assert (a["resize"]["action"], a["resize"]["recommended_instances"]) == \
            (b["resize"]["action"], b["resize"]["recommended_instances"]), tier
        assert sorted(f["kind"] for f in a["findings"]) == sorted(f["kind"] for f in b["findings"])
        for side in ("input_tokens", "output_tokens"):
            for q in ("p50", "p95"):
                assert _close("ttft", a["workload"][side][q], b["workload"][side][q]), (tier, side, q)
        assert a["workload"]["finished_reasons"] == b["workload"]["finished_reasons"]
    # h100 runs over its plan: both modes say scale_up, and the report says so in the same words
    assert pd["tiers"]["h100"]["resize"]["action"] == "scale_up"
    assert pd["tiers"]["h100"]["metrics"]["fleet_utilization_ratio"]["status"] == Status.CRITICAL.value
    # the history came from Prometheus itself: its peak is the arrival rate both modes see now
    for tier, points in history.items():
        rates = [h.rps for h in points if h.rps is not None]
        assert rates and _close("rps", max(rates), dd["tiers"][tier]["metrics"]["requests_per_second"]["value"]), \
            (tier, max(rates) if rates else None)
    assert pd["tiers"]["h100"]["history"]["source"] == "prometheus"


@pytest.mark.integration
def test_a_failed_row_query_leaves_only_that_row_unknown(tmp_path: Path) -> None:
    """A Prometheus that refuses one query (its own query timeout, a limit) takes one row, not the tier."""
    with fleet_scraped_by_prometheus(tmp_path, STEADY) as (demo, clock, prom):
        cfg = replace(demo.config, prometheus=PrometheusSource(prom.url, instance_label="pod"),
                      tiers={n: replace(t, targets=()) for n, t in demo.config.tiers.items()})
        refused = row_queries(cfg, 5.0)["ttft_p99_seconds"][0]
        api = PrometheusApi(cfg.prometheus, timeout=2.0, max_bytes=cfg.max_body_bytes)
        real = api.query

        def query(expr: str, at: float, timeout: float | None = None) -> list[tuple[dict[str, str], float]]:
            if expr == refused:
                raise PrometheusError("http_status", "HTTP 422: query processing would load too many samples")
            return real(expr, at, timeout)

        api.query = query  # type: ignore[method-assign]
        reader = PrometheusReader(cfg, api=api)
        try:
            assert clock.wait_until(8.0)
            views, rows = reader.read(time.time(), 5.0)
        finally:
            reader.close()
        for tier in cfg.tiers:
            assert rows[tier]["ttft_p99_seconds"].value is None
            assert "too many samples" in (rows[tier]["ttft_p99_seconds"].reason or "")
            assert rows[tier]["ttft_p50_seconds"].value is not None and rows[tier]["requests_per_second"].value
            assert len(views[tier].up()) == len(demo.config.tiers[tier].targets)
        assert reader.stats.errors == {("", prom.url, "prometheus", "http_status"): 1}
