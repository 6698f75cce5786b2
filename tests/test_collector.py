from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from prometheus_client import generate_latest

from exporter.collector import Published, Snapshot, make_registry
from exporter.config import load_config
from exporter.daemon import Pipeline
from exporter.exposition import parse
from exporter.scrape import Scraper

from conftest import binary, fixture_text
from fakes import FakeTarget, free_port, write_config

pytestmark = pytest.mark.integration


def test_own_exposition_passes_promtool_and_never_scrapes(tmp_path: Path) -> None:
    promtool = binary("promtool")
    # the second scrape's counters are lower: a restart, so that its counter is on the page too
    texts = [fixture_text(f"vllm/generated/vllm-0.11.0-features/snapshot-{i:02d}.prom") for i in (9, 4)]
    engine = FakeTarget(texts)
    dcgm = FakeTarget([fixture_text("dcgm/dcgm_t4_dcp_ericsson-ccd.prom")])
    cfg = load_config(write_config(str(tmp_path / "f.yaml"), {"h100": [{"vllm": engine.url, "dcgm": dcgm.url}]}))
    scraper = Scraper(cfg)
    pipe = Pipeline(cfg, scraper)
    try:
        pipe.ingest(scraper.scrape())
        pipe.cycle()
        registry = make_registry(cfg, pipe.snapshot)
        before = engine.requests
        body = generate_latest(registry)
        assert engine.requests == before, "rendering /metrics must not fetch anything"
    finally:
        scraper.close()
        engine.close()
        dcgm.close()
    r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in parse(body.decode())}
    assert samples[("fleetwatch_plan_usable_rps_per_instance", (("tier", "h100"),))] == 3
    assert ("fleetwatch_ttft_p99_seconds", (("tier", "h100"),)) in samples
    assert samples[("fleetwatch_metric_status", (("metric", "lora_adapter_cache_hit_ratio"), ("status", "unknown"),
                                                   ("tier", "h100")))] == 1
    assert ("fleetwatch_recommended_instances", (("tier", "h100"),)) in samples
    restarts = {labels: v for (name, labels), v in samples.items() if name == "fleetwatch_engine_restarts_total"}
    assert list(restarts.values()) == [1.0], restarts
    assert not any(name.startswith("fleetwatch_counter_resets") for name, _ in samples)  # deprecated: opt-in


def test_the_deprecated_restart_counter_name_is_opt_in(tmp_path: Path) -> None:
    from dataclasses import replace

    from exporter.scrape import ScrapeStats

    cfg = load_config(write_config(str(tmp_path / "f.yaml"), {"a100": [{"vllm": "http://127.0.0.1:9/metrics"}]}))
    stats = ScrapeStats()
    stats.reset_seen("a100", "e0", 2)
    pages = {}
    for on in (False, True):
        snapshot = Snapshot()
        snapshot.publish(Published(None, stats, 0, None, 0))
        pages[on] = generate_latest(make_registry(replace(cfg, deprecated_metric_names=on), snapshot)).decode()
    for page in pages.values():
        assert 'fleetwatch_engine_restarts_total{instance="e0",tier="a100"} 2.0' in page
    assert "fleetwatch_counter_resets" not in pages[False]
    assert 'fleetwatch_counter_resets_total{instance="e0",tier="a100"} 2.0' in pages[True]
    assert "# HELP fleetwatch_counter_resets_total DEPRECATED" in pages[True]


def test_empty_snapshot_renders_plan_figures(tmp_path: Path) -> None:
    cfg = load_config(write_config(str(tmp_path / "f.yaml"), {"a100": [{"vllm": "http://127.0.0.1:9/metrics"}]}))
    text = generate_latest(make_registry(cfg, Snapshot())).decode()
    assert 'fleetwatch_plan_instances{tier="a100"} 1.0' in text
    assert "fleetwatch_last_cycle_timestamp_seconds" not in text  # no cycle yet: absent, not 0


def test_serve_process_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    engine = FakeTarget([fixture_text("vllm/generated/vllm-0.33.0/snapshot-10.prom")])
    port = free_port()
    cfg = write_config(str(tmp_path / "f.yaml"), {"h100": [{"vllm": engine.url}]},
                       extra=f"interval: 1s\nlisten: '127.0.0.1:{port}'")
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", cfg],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        ok = False
        while time.monotonic() < deadline and not ok:
            try:
                ok = "fleetwatch_cycles_total 1.0" in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.RequestException:
                pass
            if not ok:
                time.sleep(0.2)
        assert ok, "serve did not publish a cycle"
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).text == "ok\n"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
        err = proc.stderr.read() if proc.stderr else ""
        assert rc == 0, err
        assert "received SIGTERM" in err and "stopped" in err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        engine.close()
