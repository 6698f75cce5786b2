"""One rule attributes a GPU to a tier, in fleetwatch and in the generated rules: on a node-wide
dcgm-exporter that labels each GPU with the pod holding it, a GPU belongs to the engine pod holding
it and to that pod's tier; another pod's GPU is never counted, and a target with no selector naming
its pod gets none, with one warning (it used to get the whole node: 8 GPUs, 11 attributions).

The simulated fleet puts several instances of a tier on one node behind one node-wide exporter, as a
Kubernetes node with a dcgm-exporter DaemonSet does."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest

from exporter import catalogue
from exporter.config import format_duration
from exporter.daemon import Pipeline
from exporter.demo.run import start_fleet
from exporter.model import Config, GpuSelector, Report
from exporter.scrape import Scraper
from exporter.sources import dcgm, select_gpus

from conftest import fixture_text
from test_e2e import fleet_scraped_by_prometheus

GPU_ROW = "gpu_memory_utilization_ratio"


def test_a_podded_exporter_gives_a_target_only_its_pods_gpus() -> None:
    """On a real capture from a Kubernetes node: the pod's GPUs by its selector, none without one; an
    exporter with no pod labels (one instance's node) gives all of them."""
    gpus = dcgm.parse(fixture_text("dcgm/dcgm_h100x8_k8s_aicr.prom"))
    pods = {g.pod for g in gpus if g.pod}
    assert pods and len(gpus) > len([g for g in gpus if g.pod])  # owned GPUs and free ones
    pod = next(iter(pods))
    mine = select_gpus(gpus, GpuSelector(pod=pod, namespace="dynamo-workload"))
    assert mine and all(g.pod == pod for g in mine)
    assert select_gpus(gpus, None) == ()
    plain = dcgm.parse(fixture_text("dcgm/dcgm_l40s_upcloud.prom"))
    assert plain and not any(g.pod for g in plain) and len(select_gpus(plain, None)) == len({g.key for g in plain})


def _config(base: Config, by_pod: bool) -> Config:
    tiers = {}
    for name, tier in base.tiers.items():
        targets = tuple(replace(t, gpus=GpuSelector(pod=f"{name}-vllm-{i}", namespace="llm") if by_pod else None)
                        for i, t in enumerate(tier.targets))
        tiers[name] = replace(tier, targets=targets)
    return replace(base, tiers=tiers)


def _cycles(config: Config, demo: object, n: int) -> Report:
    fleet = demo.fleet  # type: ignore[attr-defined]
    scraper = Scraper(config, clock=lambda: fleet.t)
    try:
        pipe = Pipeline(config, scraper, clock=lambda: fleet.t)
        report = pipe.cycle()
        for _ in range(n - 1):
            fleet.advance(fleet.t + config.interval)
            report = pipe.cycle()
        return report
    finally:
        scraper.close()


def test_fleetwatch_counts_each_gpu_once_for_the_tier_of_its_pod(caplog: pytest.LogCaptureFixture) -> None:
    demo = start_fleet("healthy")
    try:
        owned = {name: sum(len(i.gpu_indices) for i in t.instances) for name, t in demo.fleet.tiers.items()}
        node_gpus = sum(len(slots) for slots in demo.fleet.nodes.values())
        assert sum(owned.values()) < node_gpus  # free GPUs beside the pods' on some node
        by_pod = _cycles(_config(demo.config, True), demo, 3)
        with caplog.at_level(logging.WARNING, logger="exporter.scrape"):
            unselected = _cycles(_config(demo.config, False), demo, 3)
    finally:
        demo.close()
    counted = {name: t.metrics[GPU_ROW].samples for name, t in by_pod.tiers.items()}
    assert counted == owned
    for name, t in unselected.tiers.items():
        m = t.metrics[GPU_ROW]
        assert m.value is None and "selector" in (m.reason or ""), (name, m)
    warned = [r.getMessage() for r in caplog.records if "no gpus: {pod: ...} selector" in r.getMessage()]
    targets = sum(len(t.targets) for t in demo.config.tiers.values())
    assert len(warned) == targets, warned  # once per target, not once per cycle


@pytest.mark.integration
def test_the_rules_attribute_the_gpus_as_fleetwatch_does(tmp_path: Path) -> None:
    """The generated GPU rows' PromQL, on a real Prometheus scraping the same fleet (engines labelled
    with their pods, as the Kubernetes scrape job labels them), counts per tier the GPUs fleetwatch
    counts with each target's pod selector."""
    with fleet_scraped_by_prometheus(tmp_path) as (demo, clock, prom):
        assert clock.wait_until(8.0)
        per_gpu = catalogue.GPU_MEMORY_PER_GPU.replace("{w}", format_duration(demo.config.window))
        by_rules = {r["metric"]["tier"]: int(float(r["value"][1]))
                    for r in prom.query(f"count by (tier) ({per_gpu})", at=time.time())}
        report = _cycles(_config(demo.config, True), demo, 2)
    assert by_rules == {name: t.metrics[GPU_ROW].samples for name, t in report.tiers.items()}, by_rules
