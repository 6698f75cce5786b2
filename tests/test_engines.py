"""The engine registry: an engine is one module and one registry line. TensorRT-LLM was added so,
and from that alone it is a target key, a sidecar engine, part of every row's PromQL, and its rows
come out of `fleetwatch check` (its rows against a real Prometheus: test_prometheus_compare)."""
from __future__ import annotations

import functools
from pathlib import Path

from exporter import engines as I
from exporter.inputs import INPUTS
from exporter.catalogue import ROWS
from exporter.check import run_check
from exporter.config import load_config
from exporter.engines import ENGINES, engine
from exporter.model import SidecarSettings, Status
from exporter.sidecar import sidecar_config

from conftest import fixture_text
from fakes import FakeTarget, write_config

TRTLLM = "trtllm/generated/trtllm-050f80de"


def test_every_engine_owns_its_names() -> None:
    assert len({e.name for e in ENGINES}) == len(ENGINES)
    for e in ENGINES:
        assert set(e.names) <= set(INPUTS), e.name  # only canonical inputs
        assert all(n.startswith(e.prefix) for names in e.names.values() for n in names), e.name
        # every name of the engine reaches the PromQL of the inputs it feeds
        for canonical, names in e.names.items():
            assert set(names) <= set(I.all_names(canonical)), (e.name, canonical)


def test_a_trtllm_target_is_scraped_and_evaluated_from_the_registry_alone(tmp_path: Path) -> None:
    """`check` over two TensorRT-LLM targets 60 s of traffic apart: what the engine exposes is a
    value, what it lacks is unknown with a reason naming what is missing."""
    texts = [fixture_text(f"{TRTLLM}/snapshot-{i:02d}.prom") for i in range(21)]
    targets = [FakeTarget(body_fn=functools.partial(lambda k, n: texts[min(8 + 4 * n + k, 20)], k)) for k in range(2)]
    try:
        cfg = load_config(write_config(str(tmp_path / "fleet.yaml"),
                                       {"h200": [{"trtllm": t.url, "name": f"trt-{i}"} for i, t in enumerate(targets)]}))
        assert {t.engine for t in cfg.tiers["h200"].targets} == {"trtllm"}
        report = run_check(cfg, 0.0, sleep=lambda s: None)
    finally:
        for t in targets:
            t.close()
    rows = report.tiers["h200"].metrics
    for key in ("requests_per_second", "ttft_p99_seconds", "itl_p99_seconds", "kv_cache_utilization_ratio",
                "prefix_cache_hit_ratio", "queue_depth_requests", "tokens_per_gpu_hour"):
        assert rows[key].value is not None and rows[key].status is not Status.UNKNOWN, (key, rows[key].reason)
    eviction = rows["kv_cache_eviction_ratio"]
    assert eviction.value is None and "preemption" in (eviction.reason or ""), eviction.reason
    assert {r.key for r in ROWS} == set(rows)


def test_a_sidecar_beside_trtllm_finds_it_on_its_default_port(tmp_path: Path) -> None:
    cfg = load_config(write_config(str(tmp_path / "fleet.yaml"), {"h200": [{"trtllm": "http://10.0.0.1:8000/metrics"}]}))
    side = sidecar_config(cfg, "h200", SidecarSettings(engine="trtllm"))
    (t,) = side.tiers["h200"].targets
    assert (t.engine, t.url) == ("trtllm", f"http://127.0.0.1:{engine('trtllm').default_port}/metrics")


def test_the_parsers_skip_what_only_the_dashboards_read() -> None:
    """An input named for the dashboards' PromQL alone costs a scrape nothing: no parser keeps its lines."""
    dashboards_only = {c for c, i in INPUTS.items() if not i.parsed}
    assert dashboards_only  # the phase histograms of vLLM V1
    text = fixture_text("vllm/generated/vllm-0.33.0/snapshot-20.prom")
    sample = engine("vllm").parse(text)
    for c in dashboards_only:
        raw = engine("vllm").names.get(c, ())
        assert raw and all(n + "_bucket" in text for n in raw), c  # the capture has them
        assert c not in sample.histograms, c
