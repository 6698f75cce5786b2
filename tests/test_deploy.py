"""deploy/: the example Prometheus and Alertmanager configs are valid and route right."""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from conftest import binary

ROOT = Path(__file__).resolve().parents[1]
AM = ROOT / "deploy" / "alertmanager" / "alertmanager.example.yml"
PROM = ROOT / "deploy" / "prometheus" / "prometheus.example.yml"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("amtool"), *args], capture_output=True, text=True, timeout=30)


def test_alertmanager_example_is_valid_and_routes_resize_triggers_to_the_autoscaler() -> None:
    r = amtool("check-config", str(AM))
    assert r.returncode == 0, r.stdout + r.stderr
    cases = [
        ("autoscaler", ["alertname=FleetwatchScaleUp", "tier=h100", "severity=critical"]),
        ("autoscaler", ["alertname=FleetwatchScaleDown", "tier=a100", "severity=warning"]),
        ("pager", ["alertname=FleetwatchKVCacheEvictionHigh", "tier=h100", "severity=critical"]),
        ("team-chat", ["alertname=FleetwatchUtilizationTrap", "tier=a100", "severity=warning"]),
    ]
    for receiver, labels in cases:
        r = amtool("config", "routes", "test", f"--config.file={AM}", f"--verify.receivers={receiver}", *labels)
        assert r.returncode == 0, (receiver, labels, r.stdout + r.stderr)
    # and a mismatch is noticed: a critical alert must not go to the chat
    r = amtool("config", "routes", "test", f"--config.file={AM}", "--verify.receivers=team-chat",
               "alertname=FleetwatchNoHeadroom", "tier=h100", "severity=critical")
    assert r.returncode == 1


def test_prometheus_example_attaches_tier_statically_and_from_the_pod_label(tmp_path: Path) -> None:
    doc = yaml.safe_load(PROM.read_text())
    static = [j for j in doc["scrape_configs"] if "static_configs" in j and j["job_name"] != "fleetwatch"]
    assert static and all(all("tier" in g.get("labels", {}) for g in j["static_configs"]) for j in static)
    k8s = [j for j in doc["scrape_configs"] if "kubernetes_sd_configs" in j]
    assert k8s
    for j in k8s:
        assert any(r.get("target_label") == "tier" and r["source_labels"] == ["__meta_kubernetes_pod_label_fleetwatch_io_tier"]
                   for r in j["relabel_configs"]), j["job_name"]
    fw = next(j for j in doc["scrape_configs"] if j["job_name"] == "fleetwatch")
    assert fw.get("honor_labels") is True  # fleetwatch's own tier/instance labels must survive
    # Debian's Prometheus 2.42 is built without Kubernetes service discovery: check the rest with promtool
    doc["scrape_configs"] = [j for j in doc["scrape_configs"] if "kubernetes_sd_configs" not in j]
    doc["rule_files"] = [str(ROOT / "rules" / "fleetwatch.rules.yml")]
    f = tmp_path / "prometheus.yml"
    f.write_text(yaml.safe_dump(doc))
    r = subprocess.run([binary("promtool"), "check", "config", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_memory_limits_are_derived_from_the_documented_bound() -> None:
    """The chart's and kustomize's limits are the memory bound (bench/bench_memory.py measures against it)
    plus a quarter: for the evaluator at 1,000 targets, for a sidecar at its two fetches, 16 MiB bodies."""
    from exporter.model import Mode
    from exporter.scrape import memory_bound_mib, memory_limit_mib

    fleet, sidecar = memory_limit_mib(1000, 16 << 20), memory_limit_mib(2, 16 << 20, Mode.SIDECAR)
    assert fleet >= 1.25 * memory_bound_mib(1000, 16 << 20) and fleet % 64 == 0
    values = yaml.safe_load((ROOT / "deploy/helm/fleetwatch/values.yaml").read_text())
    assert values["resources"]["limits"]["memory"] == f"{fleet}Mi"
    evaluator = yaml.safe_load((ROOT / "deploy/kubernetes/components/evaluator/deployment.yaml").read_text())
    (container,) = [c for c in evaluator["spec"]["template"]["spec"]["containers"] if c["name"] == "fleetwatch"]
    assert container["resources"]["limits"]["memory"] == f"{fleet}Mi"
    patch = (ROOT / "deploy/kubernetes/components/sidecar/sidecar.yaml").read_text()
    assert f"memory: {sidecar}Mi" in patch
    # the bound grows with the body cap: a config that raises max_body_bytes needs a larger limit
    assert memory_limit_mib(1000, 64 << 20) > fleet
