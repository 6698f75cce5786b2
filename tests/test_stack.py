"""kube-prometheus-stack, rendered by the Helm 4 engine under two release names, selects fleetwatch's
monitors, rules and dashboards from the Helm chart and from kustomize, by the selectors its Prometheus and
Grafana actually carry, and a stack of another name selects none of them."""
from __future__ import annotations

import subprocess
from typing import Any

import pytest

from conftest import binary
from k8s import CHARTS, KPS_OFF, ROOT, docs_of, matches, namespace_selected, render_chart

KINDS = {"PodMonitor": ("podMonitorSelector", "podMonitorNamespaceSelector"),
         "ServiceMonitor": ("serviceMonitorSelector", "serviceMonitorNamespaceSelector"),
         "PrometheusRule": ("ruleSelector", "ruleNamespaceSelector")}


def kps(release: str, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return render_chart(CHARTS / "kube-prometheus-stack", {**KPS_OFF, **(extra or {})}, release, "monitoring")


def prometheus(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (p,) = [d for d in docs if d["kind"] == "Prometheus"]
    return p


def selected(p: dict[str, Any], objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """The fleetwatch objects this Prometheus loads: its selector and its namespace selector both match."""
    out = set()
    for o in objects:
        if o["kind"] not in KINDS:
            continue
        sel, ns_sel = KINDS[o["kind"]]
        selector = p["spec"].get(sel)
        if selector is None:  # a null selector selects nothing (the operator's rule)
            continue
        if matches(selector, o["metadata"].get("labels") or {}) and namespace_selected(
                p["spec"].get(ns_sel), o["metadata"].get("namespace", "default"), p["metadata"]["namespace"]):
            out.add((o["kind"], o["metadata"]["name"]))
    return out


def fleetwatch_chart(release: str = "kps", mode: str = "fleet") -> list[dict[str, Any]]:
    return render_chart(ROOT / "deploy" / "helm" / "fleetwatch",
                        {"mode": mode, "prometheusSelectorLabels": {"release": release}}, "fleetwatch", "monitoring")


def kustomize(overlay: str) -> list[dict[str, Any]]:
    r = subprocess.run([binary("kubectl"), "kustomize", str(ROOT / "deploy" / "kubernetes" / "overlays" / overlay)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return docs_of([r.stdout])


def wanted(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] in KINDS}


@pytest.mark.parametrize("source", ["helm-fleet", "helm-sidecar", "kustomize-sidecar", "kustomize-fleet",
                                    "kustomize-prometheus"])
def test_the_stack_named_kps_loads_every_monitor_and_rule(source: str) -> None:
    how, mode = source.split("-")
    objects = fleetwatch_chart(mode=mode) if how == "helm" else kustomize(mode)
    want = wanted(objects)
    assert {k for k, _ in want} >= {"PodMonitor", "PrometheusRule"}
    assert selected(prometheus(kps("kps")), objects) == want


@pytest.mark.parametrize("source", ["helm", "kustomize"])
def test_a_stack_of_another_name_selects_none_of_them(source: str) -> None:
    """fleetwatch labelled for release "kps" is invisible to a stack released as "monitoring"."""
    objects = fleetwatch_chart("kps") if source == "helm" else kustomize("fleet")
    assert wanted(objects) and selected(prometheus(kps("monitoring")), objects) == set()
    # and labelled for that release, it is seen
    assert selected(prometheus(kps("monitoring")), fleetwatch_chart("monitoring")) == wanted(fleetwatch_chart())


def test_match_expressions_and_namespace_selectors_are_evaluated() -> None:
    """A stack that selects rules by expression, only in namespaces labelled for monitoring."""
    spec = {"ruleSelectorNilUsesHelmValues": False,
            "ruleSelector": {"matchExpressions": [{"key": "release", "operator": "In", "values": ["kps", "other"]},
                                                   {"key": "app.kubernetes.io/component", "operator": "Exists"}]},
            "ruleNamespaceSelector": {"matchLabels": {"monitoring": "enabled"}}}
    p = prometheus(kps("kps", {"prometheus": {"prometheusSpec": spec}}))
    assert p["spec"]["ruleSelector"] == spec["ruleSelector"]  # the stack carries the expressions as given
    objects = fleetwatch_chart()
    rule = {("PrometheusRule", "fleetwatch")}
    assert ("PrometheusRule", "fleetwatch") in wanted(objects)
    # the namespace is not labelled: not loaded
    assert selected(p, objects) & rule == set()
    labelled = {"monitoring": {"monitoring": "enabled"}}
    o = next(o for o in objects if o["kind"] == "PrometheusRule")
    assert matches(p["spec"]["ruleSelector"], o["metadata"]["labels"])
    assert namespace_selected(p["spec"]["ruleNamespaceSelector"], "monitoring", "monitoring", labelled)
    # an expression fleetwatch's rule does not meet
    assert not matches({"matchExpressions": [{"key": "release", "operator": "NotIn", "values": ["kps"]}]},
                       o["metadata"]["labels"])


@pytest.mark.parametrize("source", ["helm", "kustomize"])
def test_the_grafana_sidecar_finds_the_dashboards(source: str) -> None:
    from helm_python.chart import Chart

    with Chart.load(str(CHARTS / "kube-prometheus-stack")) as c:
        sidecar = c.merge_values(KPS_OFF)["grafana"]["sidecar"]["dashboards"]
    objects = fleetwatch_chart() if source == "helm" else kustomize("sidecar")
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and "dashboards" in o["metadata"]["name"]]
    assert cm["metadata"]["labels"].get(sidecar["label"]) == sidecar["labelValue"]
    # ALL: every namespace; otherwise it must be Grafana's own (the stack's, here monitoring)
    assert sidecar["searchNamespace"] == "ALL" or cm["metadata"]["namespace"] == "monitoring"
    assert len(cm["data"]) == 3
