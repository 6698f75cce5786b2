"""A verdict without the data to decide is unknown, or provisional with its reason; never a plain hold
or scale-up from the plan alone. In the three places it used to be wrong: `check` over less than a
window, the first windows of `serve`, and the first cycles reading a Prometheus that holds no series.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.alertmanager import alerts_from_report, identities
from exporter.check import format_table, run_check
from exporter.daemon import Pipeline
from exporter.demo.run import start_fleet
from exporter.model import Action, PrometheusSource
from exporter.promread import PrometheusReader
from exporter.scrape import Scraper
from exporter.sizing import counts_toward_peak
from exporter.text import seconds

from test_e2e import fleet_scraped_by_prometheus

pytestmark = pytest.mark.integration


def test_check_decides_an_overloaded_tier_on_what_it_saw_and_says_so() -> None:
    """a100 runs at 140% of its usable capacity with a critical queue: `check` over 5 s of a 30 s window
    says scale up, provisional, where it used to say hold (the plan's peak alone)."""
    demo = start_fleet("undersized")
    try:
        scraper = Scraper(demo.config, clock=lambda: demo.fleet.t)
        report = run_check(demo.config, 5.0, scraper=scraper, sleep=lambda s: demo.fleet.advance(demo.fleet.t + s))
    finally:
        demo.close()
    a100, h100 = report.tiers["a100"], report.tiers["h100"]
    assert a100.metrics["queue_depth_requests"].status.value == "critical"
    assert a100.resize.action is Action.SCALE_UP
    assert a100.resize.recommended_instances is not None and a100.resize.recommended_instances > a100.instances_total
    said = a100.resize.provisional
    assert seconds(5.0) in said and seconds(demo.config.window) in said, said
    assert h100.resize.action is Action.HOLD and h100.resize.provisional  # healthy, but only 5 s seen
    assert "scale_up (provisional)" in format_table(report)
    # a provisional verdict is reported, never posted: the rules too wait for a full window
    posted = alerts_from_report(report, identities(demo.config))
    assert all(a.labels["alertname"] != "FleetwatchScaleUp" for a in posted), posted


def test_the_first_windows_of_serve_are_provisional_and_a_healthy_tier_never_recharacterizes() -> None:
    demo = start_fleet("healthy")
    try:
        scraper = Scraper(demo.config, clock=lambda: demo.fleet.t)
        pipe = Pipeline(demo.config, scraper, clock=lambda: demo.fleet.t)
        seen: list[tuple[float, str, Action, str]] = []
        start = demo.fleet.t
        while demo.fleet.t - start <= 3 * demo.config.window:
            report = pipe.cycle()
            for name, t in report.tiers.items():
                seen.append((demo.fleet.t - start, name, t.resize.action, t.resize.provisional))
            demo.fleet.advance(demo.fleet.t + demo.config.interval)
    finally:
        demo.close()
    window = demo.config.window
    early = [s for s in seen if not counts_toward_peak(s[0], window)]
    late = [s for s in seen if s[0] >= window]
    assert early and late
    # before a full window: provisional (or unknown before any rate), never a final verdict
    assert all(action is Action.UNKNOWN or provisional for _, _, action, provisional in early), early
    assert all(not provisional for *_, provisional in late), late
    # a healthy fleet: no re-characterize, no resize, in any cycle
    assert {action for _, _, action, _ in seen} <= {Action.HOLD, Action.UNKNOWN}, seen


def test_backed_mode_says_unknown_until_prometheus_holds_the_tier(tmp_path: Path) -> None:
    """source: prometheus, before Prometheus has scraped anything: every tier, healthy ones included,
    is unknown, not 0 instances and scale_up; once the series are there, verdicts come."""
    with fleet_scraped_by_prometheus(tmp_path) as (demo, clock, prom):
        cfg = replace(demo.config, prometheus=PrometheusSource(prom.url, instance_label="pod"),
                      tiers={n: replace(t, targets=()) for n, t in demo.config.tiers.items()})
        reader = PrometheusReader(cfg)
        pipe = Pipeline(cfg, None, reader=reader)
        try:
            # the same cycle at an instant before Prometheus's first scrape: it holds no series then
            before = pipe.evaluate_prometheus(time.time() - 3600.0)
            for name, t in before.tiers.items():
                assert t.resize.action is Action.UNKNOWN, (name, t.resize)
                assert t.resize.recommended_instances is None and "no instance seen" in t.resize.reason
            posted = alerts_from_report(before, identities(cfg))
            assert all(a.labels["alertname"] not in ("FleetwatchScaleUp", "FleetwatchScaleDown") for a in posted), posted
            assert clock.wait_until(8.0)
            after = pipe.evaluate_prometheus(time.time())
            for name, t in after.tiers.items():
                assert t.instances_total == len(demo.config.tiers[name].targets)
                assert t.resize.action is not Action.UNKNOWN, (name, t.resize)
        finally:
            reader.close()
