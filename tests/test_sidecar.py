"""Sidecar mode (serve --tier): one fleetwatch per instance, the fleet verdicts from the rules.

The comparison test runs both modes against one simulated fleet: a Prometheus that scrapes the
engines and one sidecar per instance, and a Prometheus that scrapes the engines and one fleet-mode
fleetwatch. The rules' recommended count must equal fleet-mode fleetwatch's own, in both.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import threading
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from exporter.collector import make_registry
from exporter.config import ConfigError, load_config
from exporter.daemon import Server
from exporter.lifecycle import serve
from exporter.demo.fleet import TierBehaviour
from exporter.demo.scenarios import HEALTHY_LOAD, Scenario
from exporter.model import GpuReading, GpuSelector, Mode, SidecarSettings
from exporter.sidecar import default_url, sidecar_config
from exporter.sources import dcgm
from exporter.render.rules import build

from conftest import binary
from realbins import Prometheus
from test_e2e import fleet_and_fleetwatch, prometheus_config, wait_until

ROOT = Path(__file__).resolve().parents[1]
# h100 at 1.125x the plan's usable capacity: an observed peak of 4.5 instances' worth, well above the
# plan's peak and mid-way between two counts (6 = ceil(ceil(4.5) x 1.2)), so that the rate estimators'
# small differences cannot flip it; a100 healthy. Steady arrivals: no Poisson noise in the maxima
STEADY = Scenario("steady", "h100 over its plan's peak", "scale_up on h100", {
    "h100": TierBehaviour(load=lambda t: 1.125, steady=True),
    "a100": TierBehaviour(load=HEALTHY_LOAD["a100"], steady=True),
})
EXAMPLE = ROOT / "examples" / "fleet.yaml"


def test_sidecar_config_keeps_one_tier_and_watches_localhost() -> None:
    cfg = load_config(str(EXAMPLE))
    side = sidecar_config(cfg, "a100", pod="vllm-a100-7f9c", namespace="llm")
    assert side.mode == "sidecar" and list(side.tiers) == ["a100"]
    assert side.tiers["a100"].plan == cfg.tiers["a100"].plan and side.tiers["a100"].bands == cfg.tiers["a100"].bands
    (t,) = side.tiers["a100"].targets
    # the example's sidecar: block names the engine, the node's dcgm-exporter and its token
    assert (t.name, t.engine, t.url, t.nvml) == ("vllm-a100-7f9c", "vllm", cfg.sidecar.url, False)
    assert (t.dcgm, t.dcgm_bearer_token_file) == (cfg.sidecar.dcgm, cfg.sidecar.dcgm_bearer_token_file)
    assert t.dcgm and t.gpus == GpuSelector(pod="vllm-a100-7f9c", namespace="llm")
    # without the downward API there is no pod to select by: every GPU of the exporter counts
    (t,) = sidecar_config(cfg, "a100").tiers["a100"].targets
    assert t.gpus is None and t.name == "127.0.0.1:8000"


def test_flags_override_the_config_block_and_select_the_pods_gpus(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    text = (EXAMPLE.parent / "minimal.yaml").read_text()
    f.write_text(text + "sidecar:\n  engine: sglang\n  dcgm: http://10.0.0.1:9400/metrics\n"
                        "  dcgm_bearer_token_file: dcgm.token\n")
    cfg = load_config(str(f))
    assert cfg.sidecar.engine == "sglang" and cfg.sidecar.dcgm_bearer_token_file == str(tmp_path / "dcgm.token")
    (t,) = sidecar_config(cfg, "h100", pod="p1", namespace="llm").tiers["h100"].targets
    assert (t.engine, t.url, t.dcgm) == ("sglang", default_url("sglang"), "http://10.0.0.1:9400/metrics")
    assert t.dcgm_bearer_token_file == str(tmp_path / "dcgm.token")
    flags = SidecarSettings(engine="vllm", url="http://127.0.0.1:9000/metrics", dcgm="http://10.9.9.9:9400/metrics")
    (t,) = sidecar_config(cfg, "h100", flags, pod="p1", namespace="llm").tiers["h100"].targets
    assert (t.engine, t.url, t.dcgm) == ("vllm", "http://127.0.0.1:9000/metrics", "http://10.9.9.9:9400/metrics")
    # a node-wide exporter lists two pods' GPUs, and a same-named pod of another namespace: only its own count
    gpus = (GpuReading("GPU-a", "0", "H100", pod="p1", namespace="llm"),
            GpuReading("GPU-b", "1", "H100", pod="p2", namespace="llm"),
            GpuReading("GPU-c", "2", "H100", pod="p1", namespace="other"))
    assert [g.uuid for g in dcgm.select(gpus, t.gpus)] == ["GPU-a"]


@pytest.mark.parametrize("tier, flags, where", [
    ("l40s", SidecarSettings(), "tiers"),
    ("h100", SidecarSettings(dcgm="http://10.0.0.1:9400/metrics", nvml=True), "sidecar"),
    ("h100", SidecarSettings(url="ftp://x/metrics"), "sidecar.url"),
    ("h100", SidecarSettings(dcgm_bearer_token_file="/t"), "sidecar.dcgm_bearer_token_file"),
])
def test_bad_sidecar_settings_name_the_key(tier: str, flags: SidecarSettings, where: str) -> None:
    minimal = str(EXAMPLE.parent / "minimal.yaml")  # no sidecar: block: the flags alone
    with pytest.raises(ConfigError) as e:
        sidecar_config(load_config(minimal), tier, flags)
    assert e.value.path == where and e.value.file == minimal


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter.cli", *args], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.mark.parametrize("name, value, reason", [
    (b"POD_NAME", b"vllm-\xff\xfe-0", "fleetwatch: environment: POD_NAME: not UTF-8 text"),
    (b"POD_NAME", b"vllm-0\nfleetwatch: forged line", "fleetwatch: environment: POD_NAME: holds a line break"),
    (b"POD_NAMESPACE", b"LLM Team", "fleetwatch: environment: POD_NAMESPACE: expected a namespace"),
    (b"POD_NAME", b"vllm-0\";evil=\"", "fleetwatch: environment: POD_NAME: expected a pod name"),
    (b"FLEETWATCH_TIER", b"h100\x1b[2J", "command line: --tier (or FLEETWATCH_TIER): holds a line break"),
    (b"FLEETWATCH_ENGINE_URL", b"http://u:secret@127.0.0.1:99999/metrics", "sidecar.url: the port must be"),
])
def test_the_sidecars_environment_is_checked_like_the_config(name: bytes, value: bytes, reason: str) -> None:
    """What the downward API and the pod spec hand a sidecar becomes labels and log fields: a non-UTF-8
    POD_NAME once broke /metrics for the life of the process, and a newline in it forged log lines."""
    import os

    env = {k.encode(): v.encode() for k, v in os.environ.items()} | {b"FLEETWATCH_TIER": b"a100", name: value}
    r = subprocess.run([sys.executable, "-m", "exporter.cli", "serve", "--config", str(EXAMPLE)], capture_output=True,
                       timeout=60, env=env)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2 and len(err.strip().splitlines()) == 1 and reason in err, err
    assert "forged" not in err and "secret" not in err and "\x1b" not in err


def test_serve_refuses_an_unknown_tier_and_fleet_mode_without_targets(tmp_path: Path) -> None:
    import os

    r = run_cli("serve", "--config", str(EXAMPLE), env={**os.environ, "FLEETWATCH_TIER": "l40s"})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "l40s" in r.stderr, r.stderr
    # a config for sidecars only: plans, no targets. Fleet mode needs targets; the message says where
    doc = EXAMPLE.read_text().split("    targets:")[0] + "    bands: {}\n"
    shutil.copytree(EXAMPLE.parent / "plans", tmp_path / "plans")
    f = tmp_path / "plans-only.yaml"
    f.write_text(doc)
    assert load_config(str(f)).tiers["h100"].targets == ()
    r = run_cli("serve", "--config", str(f))
    assert r.returncode == 2 and "tiers.h100.targets" in r.stderr and "--tier" in r.stderr, r.stderr
    r = run_cli("serve", "--config", str(EXAMPLE), "--dcgm-url", "http://x:9400/metrics")
    assert r.returncode == 2 and "need --tier" in r.stderr, r.stderr


def test_a_sidecar_exports_no_fleet_verdicts() -> None:
    """One instance's view cannot size the tier: the recommended count and the action come from the rules."""
    from exporter.daemon import Pipeline
    from exporter.scrape import Scraper

    # port 9 on loopback refuses at once: a cycle with the engine down has no rate to size on
    side = sidecar_config(load_config(str(EXAMPLE)), "h100", SidecarSettings(url="http://127.0.0.1:9/metrics"),
                          pod="p")
    for cfg, present in ((replace(side, mode=Mode.FLEET), True), (side, False)):
        scraper = Scraper(cfg)
        try:
            pipe = Pipeline(cfg, scraper)
            report = pipe.cycle()
            assert report.tiers["h100"].resize.action == "unknown"  # not the plan's count: nothing observed
            names = {m.name for m in make_registry(cfg, pipe.snapshot).collect()}
        finally:
            scraper.close()
        assert ("fleetwatch_recommended_instances" in names) is present
        assert ("fleetwatch_resize_action" in names) is present
        assert {"fleetwatch_plan_usable_rps_per_instance", "fleetwatch_instances_up"} <= names


def _one(prom: Prometheus, expr: str) -> dict[str, float]:
    return {r["metric"].get("tier", ""): float(r["value"][1]) for r in prom.query(expr)}


def write_rules(demo: Any, where: Path) -> Path:
    """The rules generated for the demo's config (for: 2s, evaluated every second) under ``where``: the rule file."""
    for name, text in build(demo.config, for_="2s", eval_interval="1s").items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_text(text)
    return where / "fleetwatch.rules.yml"


def start_sidecars(demo: Any, stack: ExitStack) -> list[str]:
    """One sidecar per instance of the simulated fleet, as the kustomize sidecar overlay deploys them, stopped
    when ``stack`` closes: their /metrics URLs."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def join() -> None:
        for th in threads:
            th.join(20)

    stack.callback(join)
    stack.callback(stop.set)  # last in, first out: stop, then join
    urls: list[str] = []
    for name, tier in demo.config.tiers.items():
        for inst, t in zip(demo.fleet.tiers[name].instances, tier.targets):
            cfg = sidecar_config(demo.config, name, SidecarSettings(url=t.url, dcgm=t.dcgm), pod=inst.pod,
                                 namespace="llm")
            ready: list[Server] = []
            th = threading.Thread(target=serve, args=(cfg,), kwargs={"stop": stop, "on_ready": ready.append},
                                  daemon=True)
            th.start()
            threads.append(th)
            assert wait_until(functools.partial(list, ready), 10), "a sidecar did not start"
            urls.append(f"http://127.0.0.1:{ready[0].port}/metrics")
    return urls


@pytest.mark.integration
def test_sidecars_and_fleet_mode_agree_on_the_recommended_count(tmp_path: Path) -> None:
    prometheus_bin = binary("prometheus")
    with ExitStack() as stack:
        demo, fleet_url = stack.enter_context(fleet_and_fleetwatch(STEADY, 1.0, 10.0))
        sidecar_urls = start_sidecars(demo, stack)
        rule_file = write_rules(demo, tmp_path / "rules")
        fleet = Prometheus(prometheus_bin, prometheus_config(demo, fleet_url, rule_file))
        stack.callback(fleet.stop)
        sidecars = Prometheus(prometheus_bin, prometheus_config(demo, sidecar_urls, rule_file))
        stack.callback(sidecars.stop)
        tiers = set(demo.config.tiers)
        rec = "tier:fleetwatch_recommended_instances:ceil"

        def agreement() -> tuple[dict[str, float], ...] | None:
            own = _one(fleet, "fleetwatch_recommended_instances")
            by_rules = _one(fleet, rec)
            by_sidecar_rules = _one(sidecars, rec)
            if set(own) == tiers and own == by_rules == by_sidecar_rules and own["h100"] > 4:
                return own, by_rules, by_sidecar_rules
            return None

        # h100 runs at 1.4x its plan: its observed peak, not the plan's, sets the count
        got = wait_until(agreement, 90)
        assert got, (f"fleetwatch {_one(fleet, 'fleetwatch_recommended_instances')}, rules in fleet mode "
                     f"{_one(fleet, rec)}, rules over sidecars {_one(sidecars, rec)}")
        # instances up: the engines' own up series, as fleetwatch counts them
        expected = {n: float(len(t.targets)) for n, t in demo.config.tiers.items()}
        for prom in (fleet, sidecars):
            assert _one(prom, "tier:fleetwatch_instances_up:sum") == expected
            assert _one(prom, "tier:fleetwatch_instances:count") == expected
        assert _one(fleet, "fleetwatch_instances_up") == expected
        # the sidecars' plan gauges, one per sidecar, still give one plan per tier
        assert len(sidecars.query('fleetwatch_plan_usable_rps_per_instance{tier="h100"}')) == 4
        assert _one(sidecars, "tier:fleetwatch_plan_usable_rps_per_instance:max") == \
            _one(fleet, "tier:fleetwatch_plan_usable_rps_per_instance:max")
        # and the resize trigger fires from the sidecars' Prometheus, for h100 only
        firing = wait_until(lambda: sidecars.query('ALERTS{alertname="FleetwatchScaleUp",alertstate="firing"}'), 30)
        assert {a["metric"]["tier"] for a in firing} == {"h100"}
