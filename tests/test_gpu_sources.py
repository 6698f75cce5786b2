"""GPU sources behind one interface (exporter/sources GpuSource, registered in exporter/gpus.py): the
scraper reads every registered source the same way, fetched (dcgm-exporter) or local (NVML)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from exporter import gpus, scrape
from exporter.config import load_config
from exporter.model import GpuReading, InstanceSample, Target
from exporter.scrape import Scraper
from exporter.sources import GpuSource, Gpus, dcgm
from exporter.sources.nvml import NvmlReader

from conftest import fixture_text
from fakes import FakeTarget, write_config
from test_nvml import FakeNvml

ENGINE = 'vllm:num_requests_running{model_name="m"} 1\n'


def _scrape_once(tmp_path: Path, tiers: dict[str, list[dict[str, object]]],
                 local_gpus: dict[str, Callable[[], Gpus]] | None = None) -> dict[str, InstanceSample]:
    """One scrape of a config with these targets; its samples by instance."""
    scraper = Scraper(load_config(write_config(str(tmp_path / "f.yaml"), tiers)), local_gpus=local_gpus)
    try:
        return {s.instance: s for s in scraper.scrape()}
    finally:
        scraper.close()


def test_every_registered_source_is_fetched_or_local_and_named_once() -> None:
    names = [s.name for s in gpus.GPU_SOURCES]
    assert len(names) == len(set(names)) and {"dcgm", "nvml"} <= set(names)
    assert all((s.parse is None) != (s.open is None) for s in gpus.GPU_SOURCES), "each is one kind or the other"


def test_nvml_readings_reach_the_targets_that_ask_for_them(tmp_path: Path) -> None:
    target = FakeTarget([ENGINE])
    try:
        by_name = _scrape_once(tmp_path, {"h200": [{"vllm": target.url, "name": "local", "nvml": True},
                                                   {"vllm": target.url, "name": "other"}]},
                               {"nvml": NvmlReader(FakeNvml()).read})
    finally:
        target.close()
    (g,) = by_name["local"].gpus
    assert g.model == "NVIDIA H200" and g.gpu_util == pytest.approx(0.98)
    assert by_name["other"].gpus == ()


def test_a_made_up_fetched_source_is_one_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second node-wide exporter, told apart only by its entry: its URL is fetched once a cycle for every
    target on it, its readings selected like dcgm-exporter's, its failure counted under its own name."""
    node = FakeTarget([fixture_text("dcgm/dcgm_h100x8_k8s_aicr.prom")])
    engine = FakeTarget([ENGINE])
    made_up = GpuSource("made_up", "made-up exporter", parse=dcgm.parse,
                        url=lambda t: node.url if t.name.startswith("a") else "http://127.0.0.1:9/metrics")
    monkeypatch.setattr(scrape, "FETCHED", (made_up,))
    try:
        cfg = load_config(write_config(str(tmp_path / "f.yaml"), {
            "h100": [{"vllm": engine.url, "name": "a0", "gpus": {"indices": ["0"]}},
                     {"vllm": engine.url, "name": "a1", "gpus": {"indices": ["1"]}},
                     {"vllm": engine.url, "name": "b"}]}))
        scraper = Scraper(cfg)
        try:
            by_name = {s.instance: s for s in scraper.scrape()}
            errors = dict(scraper.stats.errors)
        finally:
            scraper.close()
    finally:
        node.close()
        engine.close()
    assert node.requests == 1, "one fetch a cycle for the targets on one node"
    assert [g.index for g in by_name["a0"].gpus] == ["0"] and [g.index for g in by_name["a1"].gpus] == ["1"]
    assert by_name["b"].gpus == () and (by_name["b"].gpu_error or "").startswith("made-up exporter ")
    assert any(key[2] == "made_up" for key in errors), errors


def test_a_made_up_local_source_is_one_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reading = GpuReading("GPU-1", "0", "Made-up Accelerator", memory_used_bytes=1.0, memory_free_bytes=3.0)

    def wanted(t: Target) -> bool:
        return t.name == "with"

    made_up = GpuSource("made_up", "made-up SMI", open=lambda: lambda: (reading,), wanted=wanted)
    monkeypatch.setattr(scrape, "LOCAL", (made_up,))
    engine = FakeTarget([ENGINE])
    try:
        assert made_up.open is not None
        by_name = _scrape_once(tmp_path, {"x": [{"vllm": engine.url, "name": "with"},
                                                {"vllm": engine.url, "name": "without"}]},
                               {"made_up": made_up.open()})
    finally:
        engine.close()
    assert by_name["with"].gpus == (reading,) and by_name["without"].gpus == ()
