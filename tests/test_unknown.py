"""An unknown row says why, in the operator's words: warming up (so many scrapes of so many), the target
down with the fetch's own reason, not exposed by this engine version, or an invalid reading. Each case
runs the real pipeline (HTTP scrapes on loopback) with a fake clock."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from exporter.config import load_config
from exporter.daemon import Pipeline
from exporter.model import Report, TierReport
from exporter.scrape import Scraper

from conftest import fixture_text
from fakes import FakeTarget, refused_url, write_config

V033 = "vllm/generated/vllm-0.33.0"
RATE_ROWS = ("requests_per_second", "ttft_p99_seconds", "itl_p50_seconds", "kv_cache_eviction_ratio",
             "tokens_per_gpu_hour")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def cycles(cfg_path: str, n: int) -> Iterator[Report]:
    """``n`` cycles of the real pipeline, one interval of fake time apart."""
    cfg = load_config(cfg_path)
    clock = FakeClock()
    scraper = Scraper(cfg, clock=clock)
    pipe = Pipeline(cfg, scraper, clock=clock)
    try:
        for _ in range(n):
            yield pipe.cycle()
            clock.t += cfg.interval
    finally:
        scraper.close()


def tier_after(tmp_path: Path, target: dict[str, object], n: int = 2, extra: str = "interval: 15s\nwindow: 5m"
               ) -> TierReport:
    path = write_config(str(tmp_path / "f.yaml"), {"h100": [target]}, extra=extra + "\nscrape_timeout: 1s")
    return list(cycles(path, n))[-1].tiers["h100"]


def reasons(t: TierReport, keys: tuple[str, ...] = RATE_ROWS) -> dict[str, str]:
    assert all(t.metrics[k].value is None for k in keys), {k: t.metrics[k].value for k in keys}
    return {k: t.metrics[k].reason or "" for k in keys}


@pytest.fixture
def engine() -> Iterator[FakeTarget]:
    texts = [fixture_text(f"{V033}/snapshot-{i:02d}.prom") for i in range(5, 21)]
    t = FakeTarget(body_fn=lambda n: texts[min(n, len(texts) - 1)])
    yield t
    t.close()


def test_warming_up_counts_the_scrapes_of_a_window(tmp_path: Path, engine: FakeTarget) -> None:
    t = tier_after(tmp_path, {"vllm": engine.url, "name": "a"}, n=1)
    for key, why in reasons(t).items():
        assert why == "warming up: 1 of the 21 scrapes a window holds so far; rates and quantiles need two", key
    # a gauge needs one reading: it has its value at once
    assert t.metrics["kv_cache_utilization_ratio"].value is not None
    # and the second scrape ends the warm-up
    t = tier_after(tmp_path, {"vllm": engine.url, "name": "a"}, n=2)
    assert all(t.metrics[k].value is not None for k in ("requests_per_second", "ttft_p99_seconds"))


def test_check_warms_up_over_its_two_scrapes(tmp_path: Path) -> None:
    from exporter.check import run_check

    texts = [fixture_text(f"{V033}/snapshot-{i:02d}.prom") for i in (5, 10)]
    late = FakeTarget(body_fn=lambda n: texts[min(n, 1)] if n else "<html><title>starting</title></html>")
    try:
        cfg = load_config(write_config(str(tmp_path / "f.yaml"), {"h100": [{"vllm": late.url, "name": "a"}]}))
        report = run_check(cfg, 0.0, sleep=lambda s: None)
        why = report.tiers["h100"].metrics["ttft_p99_seconds"].reason
        assert why == "warming up: 1 of the 2 scrapes a window holds so far; rates and quantiles need two"
    finally:
        late.close()


@pytest.mark.parametrize("mode, said", [
    ("refused", "connection refused"),
    ("hang", "no complete answer within the 1s scrape_timeout"),
    ("http-404", "HTTP 404 Not Found: text of "),
    ("http-404-page", "HTTP 404 Not Found: an HTML page of "),
    ("garbage", "not Prometheus metrics: no vllm: metrics in the body: it is an HTML page of 57 bytes"),
])
def test_a_target_down_says_the_fetchs_reason(tmp_path: Path, mode: str, said: str) -> None:
    target = None if mode == "refused" else FakeTarget(mode=mode)
    try:
        url = refused_url() if target is None else target.url
        t = tier_after(tmp_path, {"vllm": url, "name": "gone"})
        for key, why in reasons(t, (*RATE_ROWS, "kv_cache_utilization_ratio", "gpu_memory_utilization_ratio")).items():
            assert why.startswith("target down, no instance answered (gone: ") and said in why, (key, why)
        (down,) = [f for f in t.findings if f.kind == "target_down"]
        assert down.instance == "gone" and down.message.startswith("gone is down: ") and said in down.message
        assert "_Deadline" not in down.message and "object at 0x" not in down.message
    finally:
        if target is not None:
            target.close()


def test_a_target_backing_off_keeps_its_last_reason(tmp_path: Path) -> None:
    t = tier_after(tmp_path, {"vllm": refused_url(), "name": "gone"}, n=6)
    (down,) = [f for f in t.findings if f.kind == "target_down"]
    assert "connection refused" in down.message and "in a row" in down.message, down.message


def served(tmp_path: Path, target: FakeTarget, name: str) -> TierReport:
    """The tier after two cycles of ``target`` alone."""
    try:
        return tier_after(tmp_path, {"vllm": target.url, "name": name})
    finally:
        target.close()


def test_an_old_engine_names_what_it_does_not_expose(tmp_path: Path) -> None:
    t = served(tmp_path, FakeTarget([fixture_text("vllm/captured/v0-0.4.3-0.5.0_datadog-fixture.prom")]), "old")
    why = t.metrics["prefix_cache_hit_ratio"].reason or ""
    assert why.startswith("not exposed by this engine version: no prefix-cache query counter"), why
    assert "vllm:prefix_cache_queries_total" in why and "vllm:gpu_prefix_cache_hit_rate" in why
    assert t.metrics["requests_per_second"].value is not None  # the tier is up and past its warm-up


def test_an_invalid_reading_names_the_instance(tmp_path: Path) -> None:
    texts = [fixture_text(f"{V033}/snapshot-{i:02d}.prom") for i in (5, 10)]
    nan = FakeTarget(body_fn=lambda n: "\n".join(
        ln.rsplit(" ", 1)[0] + " NaN" if ln.startswith("vllm:num_preemptions_total{") else ln
        for ln in texts[min(n, 1)].splitlines()) + "\n")
    t = served(tmp_path, nan, "odd")
    why = t.metrics["kv_cache_eviction_ratio"].reason or ""
    assert why.startswith("odd reported a NaN, infinite or negative preemption"), why
    assert t.metrics["ttft_p99_seconds"].value is not None


def test_a_gpu_source_that_does_not_answer_is_named(tmp_path: Path, engine: FakeTarget) -> None:
    t = tier_after(tmp_path, {"vllm": engine.url, "dcgm": refused_url(), "name": "a"})
    for key in ("gpu_memory_utilization_ratio", "gpu_compute_utilization_ratio"):
        assert t.metrics[key].reason == "the GPU source did not answer (a: dcgm-exporter connection refused)", key
    assert t.metrics["ttft_p99_seconds"].value is not None
