"""The per-tier history survives a restart; a corrupt state file is set aside, said and counted."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from exporter import state
from exporter.collector import make_registry
from exporter.config import load_config
from exporter.daemon import Pipeline
from exporter.evaluate import HistoryPoint
from exporter.scrape import Scraper

from conftest import fixture_text
from fakes import FakeTarget, write_config

FOLDER = "vllm/generated/vllm-0.33.0"
# usable 0.5 RPS per instance against ~2.4 RPS of traffic: the observed peak, not the plan's 0.5,
# decides the count, so forgetting the peak changes the recommendation
PLAN = """
      gpus_per_instance: 2
      instances: 1
      gpu_hour_cost_usd: 4.10
      peak_rps: 0.5
      safety_factor: 0.2
      slo: {ttft_p99: 2s, itl_p99: 50ms}
      benchmark: {usable_rps_per_instance: 0.5, ttft_p99: 1.2s, itl_p99: 35ms, gpu_utilization: 0.78}"""


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _config(tmp_path: Path, url: str, state_dir: str | None) -> str:
    extra = "interval: 5s\nwindow: 30s" + (f"\nstate_dir: {state_dir}" if state_dir else "")
    return write_config(str(tmp_path / f"fleet-{bool(state_dir)}.yaml"), {"h100": [{"vllm": url, "name": "i0"}]},
                        extra=extra, plans={"h100": PLAN})


def _run(cfg_path: str, clock: FakeClock, cycles: int) -> tuple[Pipeline, list[tuple[float | None, int | None]]]:
    cfg = load_config(cfg_path)
    scraper = Scraper(cfg, clock=clock)
    pipe = Pipeline(cfg, scraper, clock=clock)
    seen = []
    try:
        for _ in range(cycles):
            r = pipe.cycle().tiers["h100"].resize
            seen.append((r.peak_rps, r.recommended_instances))
            clock.t += 5
        pipe.save_state(force=True)
    finally:
        scraper.close()
    return pipe, seen


def test_peak_and_recommendation_survive_a_restart(tmp_path: Path) -> None:
    texts = [fixture_text(f"{FOLDER}/snapshot-{i:02d}.prom") for i in range(21)]
    target = FakeTarget(body_fn=lambda n: texts[min(n, 20)])
    state_dir = str(tmp_path / "state")
    try:
        clock = FakeClock(1_800_000_000.0)
        _, before = _run(_config(tmp_path, target.url, state_dir), clock, 12)
        peak, recommended = before[-1]
        assert peak is not None and peak > 0.5 and recommended is not None and recommended > 2

        # the restart: a new process state, the same state_dir; its first cycle has one scrape only
        target.requests = 0
        clock.t += 20
        _, after = _run(_config(tmp_path, target.url, state_dir), clock, 1)
        assert after[0] == (peak, recommended)

        # without state_dir the same restart forgets: no rate yet, so no count (unknown), where the
        # restored history gave the one before: the test above can fail
        target.requests = 0
        _, forgot = _run(_config(tmp_path, target.url, None), clock, 1)
        assert forgot[0] == (None, None)
    finally:
        target.close()


def test_a_corrupt_state_file_is_set_aside_logged_and_counted(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / state.FILE_NAME).write_bytes(b'{"version": 1, "tiers": {"h100": [[1, "x"')
    target = FakeTarget([fixture_text(f"{FOLDER}/snapshot-05.prom")])
    try:
        cfg = load_config(_config(tmp_path, target.url, str(state_dir)))
        scraper = Scraper(cfg, clock=FakeClock(1_800_000_000.0))
        with caplog.at_level(logging.ERROR):
            pipe = Pipeline(cfg, scraper, clock=FakeClock(1_800_000_000.0))
        errors = [r for r in caplog.records if "state file" in r.getMessage()]
        assert len(errors) == 1 and "moved aside" in errors[0].getMessage()
        assert not (state_dir / state.FILE_NAME).exists()
        assert len(list(state_dir.glob(state.FILE_NAME + ".corrupt-*"))) == 1
        report = pipe.cycle()  # and the daemon goes on, with an empty history
        scraper.close()
        assert report.tiers["h100"].instances_up == 1
        note = report.tiers["h100"].history
        assert note is not None and note.points == 0
        page = generate_latest(make_registry(cfg, pipe.snapshot)).decode()
        assert 'fleetwatch_state_errors_total{reason="corrupt"} 1.0' in page
        pipe.save_state(force=True)  # a good file replaces it
        assert state.load(str(state_dir), ["h100"]).error is None
    finally:
        target.close()


@pytest.mark.parametrize("text", ["", "[]", '{"version": 2, "tiers": {}}', '{"version": 1, "tiers": {"t": [[1, -1, 2]]}}',
                                  '{"version": 1, "tiers": {"t": [[NaN, 1, 2]]}}',
                                  '{"version": 1, "tiers": {"t": [[1, 1, true]]}}'])
def test_decode_trusts_nothing(text: str) -> None:
    with pytest.raises(state.StateError):
        state.decode(text)


def test_encode_decode_round_trip() -> None:
    hist = {"a": [HistoryPoint(1.5, 2.25, 3), HistoryPoint(2.0, None, None)], "b": []}
    assert state.decode(state.encode(hist, 10.0)) == hist
