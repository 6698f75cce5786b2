"""The GPUs on both installs' defaults: the GPU Operator's dcgm-exporter assets and the dcgm-exporter chart,
rendered as they come. A sidecar reaches the exporter on its own node through a Service with
internalTrafficPolicy: Local; the fleet modes reach every node's exporter through its Service's
EndpointSlices; and a monitor selects each install's pods, on the port they really name."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from exporter.config import load_config
from exporter.discovery import kubernetes_targets
from exporter.render.inject import SidecarSpec

from conftest import binary
from k8s import CHARTS, ROOT, docs_of, matches, render_chart, service_selects

INSTALLS = ("gpu-operator", "dcgm-exporter")
NAMESPACE = {"gpu-operator": "gpu-operator", "dcgm-exporter": "gpu"}


def install(kind: str) -> list[dict[str, Any]]:
    """The exporter's DaemonSet and Service, as each install makes them."""
    if kind == "gpu-operator":  # static assets; the operator fills in the namespace (and images)
        folder = CHARTS / "gpu-operator-dcgm-exporter-assets"
        text = "\n---\n".join(p.read_text() for p in sorted(folder.glob("*.yaml")))
        docs = docs_of([text.replace('"FILLED BY THE OPERATOR"', NAMESPACE[kind])])
    else:
        docs = render_chart(CHARTS / "dcgm-exporter", {}, "dcgm-exporter", NAMESPACE[kind])
    return [d for d in docs if d["kind"] in ("DaemonSet", "Service", "ServiceMonitor")]


def daemonset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    return ds


def pod_ports(ds: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in ds["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])}


def chart(kind: str, mode: str = "sidecar") -> list[dict[str, Any]]:
    return render_chart(ROOT / "deploy" / "helm" / "fleetwatch",
                        {"mode": mode, "gpu": {"install": kind, "namespace": NAMESPACE[kind]}}, "fleetwatch", "monitoring")


def kustomize(overlay: str) -> list[dict[str, Any]]:
    r = subprocess.run([binary("kubectl"), "kustomize", str(ROOT / "deploy" / "kubernetes" / "overlays" / overlay)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return docs_of([r.stdout])


def local_service(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (svc,) = [d for d in docs if d["kind"] == "Service" and d["spec"].get("internalTrafficPolicy") == "Local"]
    return svc


def reaches(svc: dict[str, Any], ds: dict[str, Any]) -> bool:
    """The Service sends to the DaemonSet's pods: same namespace, selector, a target port they expose."""
    port = svc["spec"]["ports"][0]
    target = port["targetPort"]
    ports = pod_ports(ds)
    return (svc["metadata"]["namespace"] == ds["metadata"]["namespace"]
            and service_selects(svc["spec"]["selector"], ds["spec"]["template"]["metadata"]["labels"])
            and (target in ports if isinstance(target, str) else target in ports.values()))


@pytest.mark.parametrize("kind", INSTALLS)
def test_a_sidecar_reaches_the_exporter_on_its_own_node(kind: str) -> None:
    ds = daemonset(install(kind))
    assert not any("hostPort" in p for c in ds["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])), \
        "the installs open no hostPort: the old $(HOST_IP):9400 could not work"
    svc = local_service(chart(kind))
    assert reaches(svc, ds)
    # the sidecar's URL names that Service: the post-renderer's default for the GPU Operator, the flag otherwise
    url = SidecarSpec().dcgm_url if kind == "gpu-operator" else \
        f"http://fleetwatch-dcgm-local.{NAMESPACE[kind]}.svc:9400/metrics"
    host = urlparse(url).hostname or ""
    assert host == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
    assert urlparse(url).port == svc["spec"]["ports"][0]["port"]


def test_the_kustomize_sidecar_overlay_reaches_the_gpu_operators_exporter() -> None:
    docs = kustomize("sidecar")
    svc = local_service(docs)
    assert reaches(svc, daemonset(install("gpu-operator")))
    assert not reaches(svc, daemonset(install("dcgm-exporter")))  # the check can fail: the other install's labels
    side = next(c for d in docs if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]
                if c["name"] == "fleetwatch")
    url = next(e["value"] for e in side["env"] if e["name"] == "FLEETWATCH_DCGM_URL")
    assert urlparse(url).hostname == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"


@pytest.mark.parametrize("kind", INSTALLS)
def test_the_fleet_modes_reach_every_nodes_exporter(kind: str, tmp_path: Path) -> None:
    """Discovery lists the exporter Service's EndpointSlices: one endpoint per node, each engine pod reading the
    one on its node. The chart's default config names the GPU Operator's Service; the dcgm-exporter chart's
    Service is named in the config the same way."""
    docs = install(kind)
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    ds = daemonset(docs)
    assert service_selects(svc["spec"]["selector"], ds["spec"]["template"]["metadata"]["labels"])
    cfg_text = (ROOT / "deploy" / "helm" / "fleetwatch" / "files" / "fleet.yaml").read_text()
    if kind != "gpu-operator":
        cfg_text = cfg_text.replace("dcgm: {namespace: gpu-operator, service: nvidia-dcgm-exporter, port: gpu-metrics}",
                                    f"dcgm: {{namespace: {NAMESPACE[kind]}, service: {svc['metadata']['name']}, "
                                    f"port: {svc['spec']['ports'][0]['name']}}}")
    for f in ("h100-plan.yaml", "a100-plan.yaml"):
        (tmp_path / f).write_text((ROOT / "deploy" / "helm" / "fleetwatch" / "files" / f).read_text())
    (tmp_path / "fleet.yaml").write_text(cfg_text)
    spec = load_config(str(tmp_path / "fleet.yaml")).kubernetes
    assert spec is not None
    assert (spec.dcgm_namespace, spec.dcgm_service) == (svc["metadata"]["namespace"], svc["metadata"]["name"])
    assert spec.dcgm_port in {p["name"] for p in svc["spec"]["ports"]}
    # the EndpointSlices the API would give for that Service on two nodes, and two engine pods
    slices = [{"metadata": {"labels": {"kubernetes.io/service-name": spec.service}},
               "ports": [{"name": spec.port, "port": 8000}],
               "endpoints": [{"addresses": [f"10.0.{n}.5"], "nodeName": f"node-{n}",
                              "targetRef": {"kind": "Pod", "name": f"vllm-{n}", "namespace": spec.namespace}}
                             for n in (1, 2)]}]
    pods = [{"metadata": {"name": f"vllm-{n}", "labels": {spec.tier_label: "h100"}}} for n in (1, 2)]
    dcgm = [{"metadata": {"labels": {"kubernetes.io/service-name": svc["metadata"]["name"]}},
             "ports": [{"name": p["name"], "port": p["port"]} for p in svc["spec"]["ports"]],
             "endpoints": [{"addresses": [f"10.0.{n}.9"], "nodeName": f"node-{n}"} for n in (1, 2)]}]
    by_tier, _ = kubernetes_targets(spec, load_config(str(tmp_path / "fleet.yaml")).kubernetes_endpoint,
                                    ["h100"], slices, pods, dcgm)
    assert {t.name: t.dcgm for t in by_tier["h100"]} == {f"vllm-{n}": f"http://10.0.{n}.9:9400/metrics" for n in (1, 2)}


@pytest.mark.parametrize("kind", INSTALLS)
@pytest.mark.parametrize("source", ["helm", "kustomize"])
def test_a_monitor_selects_each_installs_pods_on_their_port(kind: str, source: str) -> None:
    ds = daemonset(install(kind))
    labels = ds["spec"]["template"]["metadata"]["labels"]
    docs = chart(kind) if source == "helm" else kustomize("sidecar")
    monitors = [d for d in docs if d["kind"] == "PodMonitor" and d["spec"].get("namespaceSelector", {}).get("any")]
    chosen = [m for m in monitors if matches(m["spec"]["selector"], labels)]
    assert len(chosen) == 1, [m["metadata"]["name"] for m in monitors]
    assert {e["port"] for e in chosen[0]["spec"]["podMetricsEndpoints"]} <= set(pod_ports(ds))
    assert all(e.get("honorLabels") for e in chosen[0]["spec"]["podMetricsEndpoints"])


@pytest.mark.parametrize("kind", INSTALLS)
def test_the_evaluators_network_policy_lets_it_reach_the_exporter(kind: str) -> None:
    ds = daemonset(install(kind))
    (np,) = [d for d in chart(kind, "fleet") if d["kind"] == "NetworkPolicy"]
    allowed = [rule for rule in np["spec"]["egress"] for peer in rule.get("to", [])
               if "podSelector" in peer and matches(peer["podSelector"], ds["spec"]["template"]["metadata"]["labels"])
               and matches(peer.get("namespaceSelector"), {"kubernetes.io/metadata.name": NAMESPACE[kind]})]
    assert allowed and any(p["port"] == 9400 for rule in allowed for p in rule["ports"])
