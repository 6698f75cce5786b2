"""The generated rules follow the plan without being regenerated: they compare each row with the
thresholds fleetwatch exports from the config, so a plan or band change is a config change.

A real Prometheus loads the rules once and scrapes one endpoint that serves an engine's KV-cache
gauge and what fleetwatch's collector exports for a config. Changing the config's band (as a new
ConfigMap and a restarted fleetwatch would) moves the alert, with no rules reload."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from prometheus_client import generate_latest

from exporter.collector import Snapshot, make_registry
from exporter.config import load_config
from exporter.model import BandOverride, Config
from exporter.render.rules import build

from conftest import binary
from fakes import FakeTarget
from realbins import Prometheus

ROOT = Path(__file__).resolve().parents[1]
KV = 0.95  # the engine's KV cache usage: above a 0.92 warning, below a 0.97 one


def _config(warning_above: float) -> Config:
    base = load_config(str(ROOT / "examples" / "fleet.yaml"))
    h100 = base.tiers["h100"]
    bands = {**h100.bands, "kv_cache_utilization_ratio": BandOverride(warning_above=warning_above, critical_above=0.99)}
    return dataclasses.replace(base, interval=1.0, window=5.0,
                               tiers={**base.tiers, "h100": dataclasses.replace(h100, bands=bands)})


def _page(config: Config) -> str:
    engine = f'vllm:kv_cache_usage_perc{{tier="h100",instance="h100-0"}} {KV}\n'
    return engine + generate_latest(make_registry(config, Snapshot())).decode()


def _wait(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()) and time.monotonic() < deadline:
        time.sleep(0.5)  # polling a real Prometheus
    return got


def _reloaded(prom: Prometheus) -> str:
    """When Prometheus last loaded its configuration and rules."""
    import requests

    info = requests.get(prom.url + "/api/v1/status/runtimeinfo", timeout=10).json()["data"]
    assert info["reloadConfigSuccess"]
    return str(info["lastConfigTime"])


@pytest.mark.integration
def test_a_band_change_moves_the_alert_without_new_rules(tmp_path: Path) -> None:
    served = {"page": _page(_config(0.92))}
    target = FakeTarget(body_fn=lambda n: served["page"])
    rules = tmp_path / "fleetwatch.rules.yml"
    rules.write_text(build(_config(0.92), for_="1s", eval_interval="1s")["fleetwatch.rules.yml"])
    before = rules.read_text()
    prom = Prometheus(binary("prometheus"), yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "fleetwatch", "honor_labels": True,
                            "static_configs": [{"targets": [target.base.removeprefix("http://")]}]}]}))
    alert = 'ALERTS{alertname="FleetwatchKVCacheUtilizationHigh",alertstate="firing",tier="h100"}'
    try:
        firing = _wait(lambda: prom.query(alert))
        assert [a["metric"]["severity"] for a in firing] == ["warning"], firing
        reloads = _reloaded(prom)
        # the band moves above the observed value: a new config, the same rules
        served["page"] = _page(_config(0.97))
        assert _wait(lambda: prom.query(
            'tier:fleetwatch_band_threshold:max{tier="h100",row="kv_cache_utilization_ratio",severity="warning"}'
            ' == 0.97'))
        assert _wait(lambda: not prom.query(alert)), prom.query(alert)
        # and back below it: the alert follows again
        served["page"] = _page(_config(0.9))
        assert _wait(lambda: prom.query(alert))
        assert rules.read_text() == before
        assert _reloaded(prom) == reloads
    finally:
        prom.stop()
        target.close()
