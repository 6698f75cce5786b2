"""Kubernetes checks shared by the kustomize, Helm and peer-chart tests: render, validate, select.

Rendering uses the real engines (kubectl's kustomize, the Helm 4 engine of helm-python-sdk); validation
the real schemas (kubernetes-validate, the prometheus-operator CRDs in tests/fixtures); selection the
label-selector semantics Kubernetes and prometheus-operator apply.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from conftest import REFERENCE

ROOT = Path(__file__).resolve().parents[1]
CHARTS = Path(__file__).resolve().parent / "fixtures" / "charts"
K8S_VERSION = "1.32.0"
CRDS = {"PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
        "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
        "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
        "AlertmanagerConfig": "monitoring.coreos.com_alertmanagerconfigs.yaml"}
KPS_OFF = {"crds": {"enabled": False}, "grafana": {"enabled": False}, "kubeStateMetrics": {"enabled": False},
           "nodeExporter": {"enabled": False}, "windowsMonitoring": {"enabled": False},
           "defaultRules": {"create": False}}  # what the vendored kube-prometheus-stack was trimmed of

Doc = dict[str, Any]


class _CrdLoader(yaml.SafeLoader):
    """SafeLoader that reads a bare ``=`` (an enum value in the AlertmanagerConfig CRD: a matcher's
    matchType) as the string it is, not YAML 1.1's "value" key type."""


def _scalar(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return str(loader.construct_scalar(node))


_CrdLoader.add_constructor("tag:yaml.org,2002:value", _scalar)


def crd(kind: str) -> Doc:
    """The CustomResourceDefinition of a prometheus-operator kind, from tests/fixtures."""
    text = (REFERENCE / "prometheus-operator-crds" / CRDS[kind]).read_text()
    return next(c for c in yaml.load_all(text, Loader=_CrdLoader) if c and c.get("kind") == "CustomResourceDefinition")


def docs_of(texts: Iterable[str]) -> list[Doc]:
    return [d for t in texts for d in yaml.safe_load_all(t) if d]


def render_chart(chart: Path, values: Mapping[str, Any] | None = None, name: str = "release",
                 namespace: str = "default") -> list[Doc]:
    """Every object the chart renders, as the Helm 4 engine renders it (NOTES.txt and the like left out)."""
    from helm_python.chart import Chart

    with Chart.load(str(chart)) as c:
        out = c.render(values=dict(values or {}), name=name, namespace=namespace, is_install=True)
    return docs_of(text for path, text in sorted(out.items()) if path.endswith((".yaml", ".yml")))


def validate_core(docs: Iterable[Doc]) -> None:
    """kubernetes-validate --strict on every object of a core kind; raises on the first error."""
    import kubernetes_validate

    for d in docs:
        if not d["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def validate_crds(docs: Iterable[Doc]) -> set[str]:
    """Each prometheus-operator object against its CRD's schema; the kinds seen."""
    import jsonschema

    seen = set()
    for d in docs:
        if d["kind"] in CRDS:
            version = next(v for v in crd(d["kind"])["spec"]["versions"] if v["name"] == d["apiVersion"].split("/")[1])
            # the CRD's Go regexes are not Python ones: no metaschema check
            jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"]).validate(d)
            seen.add(d["kind"])
    return seen


def pod_specs(docs: Iterable[Doc]) -> list[tuple[str, Doc]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def restricted_violations(spec: Doc, containers: Iterable[str] | None = None) -> list[str]:
    """The restricted Pod Security Standard (v1.32), plus a read-only root filesystem, for the named
    containers (all of them by default)."""
    out = []
    pod = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(key)
    out += [f"volume {v['name']}: hostPath" for v in spec.get("volumes", []) if "hostPath" in v]
    for c in spec.get("initContainers", []) + spec["containers"]:
        if containers is not None and c["name"] not in containers:
            continue
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation")
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: readOnlyRootFilesystem")
        if any("hostPort" in p for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out


def breaches(spec: Doc, container: str) -> list[Doc]:
    """Copies of ``spec``, each breaking one rule of the restricted standard in ``container``."""
    out = []
    for breach in ({"privileged": True}, {"allowPrivilegeEscalation": True}, {"readOnlyRootFilesystem": False},
                   {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}, {"runAsUser": 0}):
        bad = copy.deepcopy(spec)
        next(c for c in bad["containers"] if c["name"] == container).setdefault("securityContext", {}).update(breach)
        out.append(bad)
    return out


# ---------------------------------------------------------------- label selectors


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions, ANDed). An empty selector selects
    everything; None is handled by the caller (its meaning differs by field)."""
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown operator {op}")
    return True


def namespace_selected(selector: Mapping[str, Any] | None, namespace: str, own: str,
                       namespace_labels: Mapping[str, Mapping[str, str]] | None = None) -> bool:
    """prometheus-operator's *NamespaceSelector on a Prometheus: absent (null) means its own namespace only,
    {} every namespace, otherwise the namespaces whose labels match (kubernetes.io/metadata.name at least)."""
    if selector is None:
        return namespace == own
    labels = {"kubernetes.io/metadata.name": namespace, **((namespace_labels or {}).get(namespace) or {})}
    return matches(selector, labels)


def service_selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A Service's selector: equality on every key (no expressions)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
