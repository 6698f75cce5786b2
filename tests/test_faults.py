"""Five faulty targets next to healthy ones: the cycle ends on time and nothing healthy is lost."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from exporter.config import load_config
from exporter.daemon import Pipeline, Server, serve
from exporter.scrape import Scraper

from conftest import fixture_text
from fakes import FakeTarget, refused_url, write_config

pytestmark = pytest.mark.integration
FOLDER = "vllm/generated/vllm-0.33.0"


def snapshots() -> list[str]:
    return [fixture_text(f"{FOLDER}/snapshot-{i:02d}.prom") for i in range(21)]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def healthy_numbers(cfg_path: str, texts: list[str]) -> tuple[dict[str, object], float]:
    """Run two cycles 15 fake seconds apart; return the healthy tier's metrics and the slowest cycle."""
    cfg = load_config(cfg_path)
    clock = FakeClock()
    scraper = Scraper(cfg, clock=clock)
    pipe = Pipeline(cfg, scraper, clock=clock)
    slowest = 0.0
    try:
        for _ in range(2):
            t0 = time.monotonic()
            report = pipe.cycle()
            slowest = max(slowest, time.monotonic() - t0)
            clock.t += 15
    finally:
        scraper.close()
    return {k: v.value for k, v in report.tiers["good"].metrics.items()}, slowest


def test_faulty_targets_are_contained(tmp_path: Path) -> None:
    texts = snapshots()
    good = [FakeTarget(body_fn=lambda n: texts[min(5 + 5 * n, 20)]) for _ in range(2)]
    hang = FakeTarget(mode="hang")
    garbage = FakeTarget(mode="garbage")
    huge = FakeTarget(mode="huge")
    reset = FakeTarget(body_fn=lambda n: texts[20] if n == 0 else texts[3])  # engine restarted between scrapes
    extra = "interval: 3s\nscrape_timeout: 1s"
    good_targets = [{"vllm": t.url, "name": f"good-{i}"} for i, t in enumerate(good)]
    bad_targets = [{"vllm": refused_url(), "name": "refused"}, {"vllm": hang.url, "name": "hang"},
                   {"vllm": garbage.url, "name": "garbage"}, {"vllm": huge.url, "name": "huge"},
                   {"vllm": reset.url, "name": "reset"}]
    try:
        alone, _ = healthy_numbers(write_config(str(tmp_path / "alone.yaml"), {"good": good_targets}, extra=extra),
                                   texts)
        for t in good:
            t.requests = 0
        cfg_path = write_config(str(tmp_path / "mixed.yaml"), {"good": good_targets, "bad": bad_targets}, extra=extra)
        mixed, slowest = healthy_numbers(cfg_path, texts)
        assert mixed == alone, "a faulty target changed a healthy tier's numbers"
        assert alone["ttft_p99_seconds"] is not None
        assert slowest < 1.0 + 1.5, f"a cycle took {slowest:.2f}s with a 1s scrape timeout"

        # serve keeps serving, and counts each error by reason
        for t in good:
            t.requests = 0
        reset.requests = 0
        cfg = load_config(cfg_path)
        from dataclasses import replace
        cfg = replace(cfg, listen="127.0.0.1:0", interval=1.0)
        ready: list[Server] = []
        stop = threading.Event()
        th = threading.Thread(target=serve, args=(cfg,), kwargs={"stop": stop, "on_ready": ready.append})
        th.start()
        try:
            deadline = time.monotonic() + 20
            while not ready and time.monotonic() < deadline:
                time.sleep(0.05)
            url = f"http://127.0.0.1:{ready[0].port}"
            text = ""
            while time.monotonic() < deadline:
                text = requests.get(url + "/metrics", timeout=5).text
                if "fleetwatch_cycles_total 3.0" in text:
                    break
                time.sleep(0.2)
            assert "fleetwatch_cycles_total 3.0" in text
            for inst, reason in (("refused", "refused"), ("hang", "timeout"), ("garbage", "malformed"),
                                 ("huge", "too_large")):
                assert (f'fleetwatch_scrape_errors_total{{instance="{inst}",reason="{reason}",source="vllm",'
                        f'tier="bad"}}') in text, inst
            assert 'fleetwatch_counter_resets_total{instance="reset",tier="bad"}' in text
            assert 'fleetwatch_target_up{instance="good-0",source="vllm",tier="good"} 1.0' in text
            assert 'fleetwatch_target_up{instance="hang",source="vllm",tier="bad"} 0.0' in text
            assert 'fleetwatch_finding{instance="hang",kind="target_down",status="warning",tier="bad"} 1.0' in text
            assert requests.get(url + "/healthz", timeout=5).status_code == 200
        finally:
            stop.set()
            th.join(15)
        assert not th.is_alive(), "serve did not stop within 15s of the stop signal"
    finally:
        for t in (*good, hang, garbage, huge, reset):
            t.close()
