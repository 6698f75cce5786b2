"""The fleetwatch sidecar, defined once, added to the engine workloads users already run.

Pure: ``container(spec)`` is the sidecar; ``inject(docs, spec)`` adds it to every Deployment and
StatefulSet labelled with the tier label (a Helm post-renderer: `fleetwatch inject`), and
``component(spec)`` writes the same addition as a kustomize Component (strategic-merge patches
selected by that label). Tests compare the two on the same manifests.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable

import yaml

from ..model import Mode
from ..scrape import memory_limit_mib

WORKLOADS = ("Deployment", "StatefulSet")
CONTAINER = "fleetwatch"
VOLUME = "fleetwatch-config"
PORT_NAME = "fleetwatch"  # the sidecars' PodMonitor scrapes this port


@dataclass(frozen=True)
class SidecarSpec:
    image: str = "fleetwatch:dev"
    tier_label: str = "fleetwatch.io/tier"
    config_map: str = "fleetwatch-config"  # fleet.yaml and the plans, in the engines' namespace
    # the node's dcgm-exporter through a Service with internalTrafficPolicy: Local (deploy/helm, deploy/kubernetes)
    dcgm_url: str | None = "http://fleetwatch-dcgm-local.gpu-operator.svc:9400/metrics"
    engine_url: str | None = None  # default: the engine on localhost (vLLM :8000, SGLang :30000)
    port: int = 9108


def container(spec: SidecarSpec) -> dict[str, Any]:
    """The sidecar container: serve --tier from the pod's tier label (downward API)."""
    env: list[dict[str, Any]] = [
        {"name": "FLEETWATCH_TIER", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{spec.tier_label}']"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "FLEETWATCH_LISTEN", "value": f"0.0.0.0:{spec.port}"},
    ]
    if spec.dcgm_url:
        env.append({"name": "FLEETWATCH_DCGM_URL", "value": spec.dcgm_url})
    if spec.engine_url:
        env.append({"name": "FLEETWATCH_ENGINE_URL", "value": spec.engine_url})
    probe = {"httpGet": {"path": "/healthz", "port": PORT_NAME}}
    return {
        "name": CONTAINER,
        "image": spec.image,
        # --tier given explicitly: a pod without the tier label stops with a clear error, not in fleet mode
        "args": ["serve", "--config", "/etc/fleetwatch/fleet.yaml", "--tier", "$(FLEETWATCH_TIER)"],
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": spec.port}],
        "readinessProbe": {**probe, "periodSeconds": 15},
        "livenessProbe": {**probe, "periodSeconds": 30, "failureThreshold": 4},
        # the limit is the memory bound of a sidecar's two fetches (engine, dcgm-exporter) at 16 MiB bodies
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                      "limits": {"memory": f"{memory_limit_mib(2, 16 << 20, Mode.SIDECAR)}Mi"}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": VOLUME, "mountPath": "/etc/fleetwatch", "readOnly": True}],
    }


def volume(spec: SidecarSpec) -> dict[str, Any]:
    return {"name": VOLUME, "configMap": {"name": spec.config_map}}


def _tier(doc: dict[str, Any], label: str) -> str | None:
    labels = (doc.get("metadata") or {}).get("labels") or {}
    pod = (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
    tier = pod.get(label, labels.get(label))
    return str(tier) if tier is not None else None


def inject(docs: Iterable[Any], spec: SidecarSpec) -> list[Any]:
    """``docs`` with the sidecar in every Deployment and StatefulSet whose workload or pod template carries
    ``spec.tier_label`` (the pod template gets the label too: the sidecar reads its tier from it). Anything
    else, a workload that already has the sidecar included, passes through unchanged."""
    out = []
    for doc in docs:
        tier = _tier(doc, spec.tier_label) if isinstance(doc, dict) and doc.get("kind") in WORKLOADS else None
        if tier is None:
            out.append(doc)
            continue
        doc = copy.deepcopy(doc)
        template = doc["spec"].setdefault("template", {})
        template.setdefault("metadata", {}).setdefault("labels", {})[spec.tier_label] = tier
        pod = template.setdefault("spec", {})
        containers = pod.setdefault("containers", [])
        if not any(c.get("name") == CONTAINER for c in containers):
            containers.append(container(spec))
        volumes = pod.setdefault("volumes", [])
        if not any(v.get("name") == VOLUME for v in volumes):
            volumes.append(volume(spec))
        out.append(doc)
    return out


def inject_text(text: str, spec: SidecarSpec) -> str:
    """A post-renderer's whole job: YAML documents in, the same with the sidecar added, out."""
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    return yaml.safe_dump_all(inject(docs, spec), sort_keys=False, width=120)


HEADER = "# Generated by `fleetwatch inject --component`; do not edit. Regenerate and commit.\n"


def component(spec: SidecarSpec) -> dict[str, str]:
    """A kustomize Component adding the sidecar to every Deployment and StatefulSet labelled with the tier
    label: file name -> contents."""
    patch = {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "any"},  # a patch with a target applies to every match, whatever its name
             "spec": {"template": {"spec": {"containers": [container(spec)], "volumes": [volume(spec)]}}}}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
        "patches": [{"path": "sidecar.yaml", "target": {"group": "apps", "kind": kind, "labelSelector": spec.tier_label}}
                    for kind in WORKLOADS]}
    note = (f"# Adds the fleetwatch sidecar to every Deployment and StatefulSet labelled {spec.tier_label}. Their pod\n"
            f"# templates must carry the label too: the sidecar reads its tier from it (downward API).\n")
    return {"kustomization.yaml": HEADER + note + yaml.safe_dump(kustomization, sort_keys=False),
            "sidecar.yaml": HEADER + yaml.safe_dump(patch, sort_keys=False, width=120)}
