"""deploy/kubernetes: both overlays render with kubectl kustomize, pass kubernetes-validate --strict
(core kinds) and the prometheus-operator CRD schemas (PodMonitor, PrometheusRule), hold the restricted
Pod Security Standard on every pod spec, and carry configs that fleetwatch itself accepts."""
from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import load_config
from exporter.render.dashboards import build as dashboards
from exporter.sidecar import sidecar_config

from conftest import binary
from k8s import K8S_VERSION, ROOT, breaches, pod_specs, restricted_violations, validate_crds

KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("sidecar", "fleet", "prometheus", "victoriametrics")
OPERATOR = ("sidecar", "fleet", "prometheus")  # the overlays for a prometheus-operator (kube-prometheus-stack)


def render(overlay: str) -> list[dict[str, Any]]:
    r = subprocess.run([binary("kubectl"), "kustomize", str(KUBE / "overlays" / overlay)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_core_kinds_pass_kubernetes_validate_strict(overlay: str) -> None:
    import kubernetes_validate

    core = [d for d in render(overlay) if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in core} >= {"ConfigMap", "Deployment", "NetworkPolicy"}
    for d in core:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)  # raises on any error
    # and the validator does catch a field Kubernetes does not know
    bad = copy.deepcopy(next(d for d in core if d["kind"] == "Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OPERATOR)
def test_overlay_monitors_and_rules_fit_the_prometheus_operator_crds(overlay: str) -> None:
    docs = render(overlay)
    assert validate_crds(docs) == {"PodMonitor", "PrometheusRule"}
    # the engines' monitor gives every engine series the tier label the rules aggregate by
    engines = next(d for d in docs if d["kind"] == "PodMonitor" and d["metadata"]["name"] == "llm-engines")
    relabel = engines["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_fleetwatch_io_tier"], "targetLabel": "tier"} in relabel


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_spec_is_restricted(overlay: str) -> None:
    specs = pod_specs(render(overlay))
    assert specs
    # the API token only where a workload lists pods and EndpointSlices (fleetwatch in the fleet overlay, vmagent)
    bound = {s["name"] for d in render(overlay) if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
             for s in d["subjects"]}
    for name, spec in specs:
        assert restricted_violations(spec) == [], name
        assert spec.get("automountServiceAccountToken") is (spec.get("serviceAccountName") in bound), name
        for c in spec["containers"]:
            assert c.get("resources", {}).get("requests") and c["resources"].get("limits", {}).get("memory"), c["name"]
    fw = [c for _, s in specs for c in s["containers"] if c["name"] == "fleetwatch"]
    assert fw and all(c["securityContext"].get("runAsUser", 65532) == 65532 for c in fw)


def test_the_restricted_check_can_fail() -> None:
    (_, spec), *_ = pod_specs(render("fleet"))
    for bad in breaches(spec, spec["containers"][0]["name"]):
        assert restricted_violations(bad)
    bad = copy.deepcopy(spec)
    bad["securityContext"].pop("seccompProfile")
    assert restricted_violations(bad) == ["fleetwatch: seccompProfile"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_config_map_holds_a_config_fleetwatch_accepts(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("fleetwatch-config")]
    for key, text in cm["data"].items():
        (tmp_path / key).write_text(text)
    cfg = load_config(str(tmp_path / "fleet.yaml"))
    # every fleetwatch workload mounts this ConfigMap (kustomize renamed it with its hash everywhere)
    for name, spec in pod_specs(docs):
        if overlay == "victoriametrics" and name != "fleetwatch":
            continue
        assert {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v} == {cm["metadata"]["name"]}, name
    if overlay == "fleet":  # the instances come from the API, through the Service the overlay creates
        assert cfg.kubernetes is not None
        service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == cfg.kubernetes.service)
        assert service["metadata"]["namespace"] == cfg.kubernetes.namespace
        assert cfg.kubernetes.port in {p["name"] for p in service["spec"]["ports"]}
        roles = {(d["metadata"]["namespace"], r["resources"][0]) for d in docs if d["kind"] == "Role" for r in d["rules"]}
        assert roles == {(cfg.kubernetes.namespace, "pods"), (cfg.kubernetes.namespace, "endpointslices"),
                         (cfg.kubernetes.dcgm_namespace, "endpointslices")}
        return
    if overlay == "prometheus":
        assert cfg.prometheus is not None and not any(d["kind"] in ("Role", "ClusterRole") for d in docs)
        return
    if overlay == "victoriametrics":  # it reads the overlay's own VictoriaMetrics, through its Service
        assert cfg.prometheus is not None
        host, port = cfg.prometheus.url.split("//")[1].split(":")
        service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == host.split(".")[0])
        assert host.split(".")[1] == service["metadata"]["namespace"] and int(port) in {
            p["port"] for p in service["spec"]["ports"]}
        return
    # a sidecar's tier comes from its pod's label through the downward API; the label names a tier
    for name, spec in pod_specs(docs):
        deployment = next(d for d in docs if d["metadata"]["name"] == name)
        tier = deployment["spec"]["template"]["metadata"]["labels"]["fleetwatch.io/tier"]
        side = next(c for c in spec["containers"] if c["name"] == "fleetwatch")
        env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in side["env"]}
        assert env["FLEETWATCH_TIER"] == "metadata.labels['fleetwatch.io/tier']"
        assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
        one = sidecar_config(cfg, tier, pod="vllm-h100-abc", namespace="llm")
        assert one.tiers[tier].targets[0].url == "http://127.0.0.1:8000/metrics"


def test_the_dashboards_config_map_is_the_generated_dashboards() -> None:
    docs = render("sidecar")
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "fleetwatch-dashboards"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"] == dashboards()
    rules = next(d for d in docs if d["kind"] == "PrometheusRule")
    groups = {g["name"] for g in rules["spec"]["groups"]}
    assert groups == {"fleetwatch-recording", "fleetwatch-alerts"}


def test_the_base_plans_are_the_examples_plans() -> None:
    """kustomize reads no file outside its base, so the plans are copies there: they must not drift."""
    base = load_config(str(KUBE / "base" / "fleet.yaml"))
    example = load_config(str(ROOT / "examples" / "fleet.yaml"))
    assert {n: t.plan for n, t in base.tiers.items()} == {n: t.plan for n, t in example.tiers.items()}
    backed = load_config(str(ROOT / "examples" / "fleet-prometheus.yaml"))
    assert {n: t.plan for n, t in backed.tiers.items()} == {n: t.plan for n, t in example.tiers.items()}


VM = KUBE / "overlays" / "victoriametrics"


def test_the_victoriametrics_overlay_needs_no_operator_and_its_files_pass_the_real_tools(tmp_path: Path) -> None:
    """vmagent and vmalert check the scrape config and the rules the overlay mounts (-dryRun); the rules are the
    ones fleetwatch generates for the base's config; the overlay holds none of the prometheus-operator's kinds."""
    from exporter.render.rules import build

    docs = render("victoriametrics")
    assert validate_crds(docs) == set() and not any(d["apiVersion"].startswith("monitoring.coreos.com/") for d in docs)
    data = {d["metadata"]["name"].rsplit("-", 1)[0]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    rules = data["vmalert-rules"]["fleetwatch.rules.yml"]
    assert rules == build(load_config(str(KUBE / "base" / "fleet.yaml")))["fleetwatch.rules.yml"], (
        "regenerate: fleetwatch rules --config deploy/kubernetes/base/fleet.yaml -o DIR, then copy "
        "fleetwatch.rules.yml into deploy/kubernetes/overlays/victoriametrics/")
    (tmp_path / "scrape.yml").write_text(data["vmagent-scrape"]["scrape.yml"])
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "broken.yml").write_text(rules.replace("sum by (tier)", "sum by (tier", 1))
    vmagent, vmalert = binary("vmagent"), binary("vmalert")

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*args, "-dryRun", "-loggerLevel=ERROR"], capture_output=True, text=True, timeout=60)

    assert check(vmagent, f"-promscrape.config={tmp_path / 'scrape.yml'}").returncode == 0
    assert check(vmalert, f"-rule={tmp_path / 'rules.yml'}").returncode == 0
    assert check(vmalert, f"-rule={tmp_path / 'broken.yml'}").returncode != 0  # the check does fail
    # every shard reads one scrape config and scrapes its own share: as many shards as members
    (agent,) = [d for d in docs if d["metadata"]["name"] == "vmagent" and d["kind"] == "StatefulSet"]
    args = agent["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"-promscrape.cluster.membersCount={agent['spec']['replicas']}" in args
    # the same relabelling as the PodMonitor: the engines' tier from their pod's label
    scrape = yaml.safe_load(data["vmagent-scrape"]["scrape.yml"])
    engines = next(j for j in scrape["scrape_configs"] if j["job_name"] == "llm-engines")
    assert {"source_labels": ["__meta_kubernetes_pod_label_fleetwatch_io_tier"], "target_label": "tier"} in \
        engines["relabel_configs"]
