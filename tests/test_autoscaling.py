"""deploy/kubernetes/autoscaling: KEDA and HPA examples on fleetwatch's schedule (9.2).

Both render with kubectl kustomize. The HPA passes kubernetes-validate --strict (autoscaling/v2).
The ScaledObject is checked against the fields it uses of KEDA's CRD schema (keda.sh/v1alpha1,
config/crd/bases/keda.sh_scaledobjects.yaml of kedacore/keda), transcribed below: no copy of the
CRD is in the repository. The PromQL each of them sends is parsed by a real Prometheus.
"""
from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
import requests
import yaml

from conftest import binary
from realbins import Prometheus
from k8s import K8S_VERSION
from test_kubernetes import render

ROOT = Path(__file__).resolve().parents[1]
AUTOSCALING = ROOT / "deploy" / "kubernetes" / "autoscaling"

_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
# the ScaledObject fields the example uses, with the types and requirements of KEDA's CRD
SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                                  "apiVersion": {"type": "string"}}},
                "minReplicaCount": _INT32, "maxReplicaCount": _INT32, "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "advanced": {"type": "object", "additionalProperties": False, "properties": {
                    "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False, "properties": {
                        "behavior": {"type": "object", "additionalProperties": False, "properties": {
                            "scaleDown": {"type": "object", "properties": {
                                "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600}}},
                            "scaleUp": {"type": "object"}}}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"}, "name": {"type": "string"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}}}}},
            }},
    },
}


def _render(name: str) -> list[dict[str, Any]]:
    r = subprocess.run([binary("kubectl"), "kustomize", str(AUTOSCALING / name)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def _tier_deployments() -> set[str]:
    return {d["metadata"]["name"] for d in render("sidecar") if d["kind"] == "Deployment"}


def test_the_keda_scaled_object_fits_the_crd_and_scales_a_tier_to_its_schedule() -> None:
    (so,) = _render("keda")
    jsonschema.validate(so, SCALED_OBJECT)
    assert so["metadata"]["namespace"] == "llm" and so["spec"]["scaleTargetRef"]["name"] in _tier_deployments()
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "1"  # replicas = ceil(scheduled / 1)
    assert 'fleetwatch_scheduled_instances{tier="h100", horizon=""}' in trigger["metadata"]["query"]
    # the schema does catch what KEDA would refuse: a numeric threshold, a misspelt field
    breaches: list[Callable[[dict[str, Any]], object]] = [
        lambda s: s["spec"]["triggers"][0]["metadata"].update(threshold=1),
        lambda s: s["spec"].update(minReplicas=1),
        lambda s: s["spec"]["scaleTargetRef"].pop("name")]
    for breach in breaches:
        bad = copy.deepcopy(so)
        breach(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCALED_OBJECT)


def test_the_hpa_passes_kubernetes_validate_and_reads_the_external_metric() -> None:
    import kubernetes_validate

    (hpa,) = _render("hpa")
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    assert hpa["spec"]["scaleTargetRef"]["name"] in _tier_deployments()
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "fleetwatch_scheduled_instances"
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"tier": "h100", "horizon": ""}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 1800
    bad = copy.deepcopy(hpa)
    bad["spec"]["metrics"][0]["external"]["target"]["averageValu"] = "1"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.integration
def test_the_promql_they_send_parses_in_a_real_prometheus(tmp_path: Path) -> None:
    (so,) = _render("keda")
    adapter = yaml.safe_load((AUTOSCALING / "hpa" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["external"]
    # the adapter's template, filled in as it fills it for the HPA's selector
    adapter_query = (rule["metricsQuery"].replace("<<.Series>>", rule["name"]["as"])
                     .replace("<<.LabelMatchers>>", 'tier="h100",horizon=""'))
    series = re.sub(r"\{.*\}", "", rule["seriesQuery"])
    assert series == "fleetwatch_scheduled_instances" == rule["name"]["as"]
    prom = Prometheus(binary("prometheus"), "global: {scrape_interval: 1s}\nscrape_configs: []\n")
    try:
        for expr in (so["spec"]["triggers"][0]["metadata"]["query"], adapter_query, rule["seriesQuery"]):
            r = requests.get(prom.url + "/api/v1/query", params={"query": expr}, timeout=10)
            assert r.status_code == 200 and r.json()["status"] == "success", (expr, r.text)
        bad = requests.get(prom.url + "/api/v1/query", params={"query": "max(fleetwatch_scheduled_instances{"}, timeout=10)
        assert bad.status_code == 400
    finally:
        prom.stop()
