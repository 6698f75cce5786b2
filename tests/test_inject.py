"""The sidecar on the engines users already run: vLLM production-stack rendered with two model specs in two
tiers, through `fleetwatch inject` as Helm's post-renderer runs it and through the kustomize component.
Both add the same sidecar to every engine pod and nothing else, the result passes kubernetes-validate
--strict, and the monitors scrape the engines' real port name and the sidecars'."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.render.inject import SidecarSpec, container, inject

from conftest import binary
from k8s import CHARTS, ROOT, docs_of, render_chart, restricted_violations, validate_core

COMPONENT = ROOT / "deploy" / "kubernetes" / "components" / "sidecar"
PLUGIN = ROOT / "deploy" / "helm" / "fleetwatch-sidecar" / "plugin.yaml"
TIERS = {"h100": 2, "a100": 3}  # tier -> replicas


def stack() -> list[dict[str, Any]]:
    """production-stack with one model spec per tier, each labelled (workload and pods) with its tier."""
    specs = [{"name": f"llama-{tier}", "repository": "vllm/vllm-openai", "tag": "v0.11.0",
              "modelURL": "meta-llama/Llama-3.1-70B-Instruct", "replicaCount": n, "requestCPU": 8,
              "requestMemory": "64Gi", "requestGPU": 2, "labels": {"fleetwatch.io/tier": tier},
              "podLabels": {"fleetwatch.io/tier": tier}} for tier, n in TIERS.items()]
    return render_chart(CHARTS / "vllm-production-stack", {"servingEngineSpec": {"modelSpec": specs}}, "vllm", "llm")


def post_render(docs: list[dict[str, Any]], *args: str) -> list[dict[str, Any]]:
    """What Helm does with a post-renderer: the manifests on its stdin, the new ones from its stdout."""
    plugin = yaml.safe_load(PLUGIN.read_text())
    (command,) = plugin["runtimeConfig"]["platformCommand"]
    assert plugin["type"] == "postrenderer/v1" and command["command"] == "fleetwatch"
    done = subprocess.run([sys.executable, "-m", "exporter", *command["args"], *args], input=yaml.safe_dump_all(docs),
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return docs_of([done.stdout])


def kustomized(docs: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    shutil.copytree(COMPONENT, tmp_path / "sidecar")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "stack.yaml").write_text(yaml.safe_dump_all(docs))
    (tmp_path / "app" / "kustomization.yaml").write_text("resources: [stack.yaml]\ncomponents: [../sidecar]\n")
    r = subprocess.run([binary("kubectl"), "kustomize", str(tmp_path / "app")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return docs_of([r.stdout])


def engines(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"
            and "fleetwatch.io/tier" in d["metadata"].get("labels", {})}


def test_both_ways_add_the_same_sidecar_to_every_engine_pod_and_nothing_else(tmp_path: Path) -> None:
    before = stack()
    via_helm = post_render(before)
    via_kustomize = kustomized(before, tmp_path)
    assert len(engines(before)) == len(TIERS) and len(via_helm) == len(before) == len(via_kustomize)
    spec = SidecarSpec()
    for d in (via_helm, via_kustomize):
        got = engines(d)
        assert {e["spec"]["template"]["metadata"]["labels"]["fleetwatch.io/tier"] for e in got.values()} == set(TIERS)
        for name, e in got.items():
            pod = e["spec"]["template"]["spec"]
            containers = {c["name"]: c for c in pod["containers"]}
            assert set(containers) == {"vllm", "fleetwatch"}, name
            assert containers["fleetwatch"] == container(spec), name
            assert {"name": "fleetwatch-config", "configMap": {"name": "fleetwatch-config"}} in pod["volumes"]
            assert restricted_violations(pod, containers=["fleetwatch"]) == [], name
        # the router and everything else pass through unchanged (kustomize sorts them by kind)
        def others(docs: list[dict[str, Any]], got: Any = got) -> list[dict[str, Any]]:
            return sorted((x for x in docs if x["kind"] != "Deployment" or x["metadata"]["name"] not in got),
                          key=lambda x: (x["kind"], x["metadata"]["name"]))
        assert others(d) == others(before)
    # the two ways agree, container for container (kustomize's merge puts the patch's first)
    for name in engines(before):
        a, b = engines(via_helm)[name], engines(via_kustomize)[name]
        key = lambda c: c["name"]  # noqa: E731
        assert sorted(a["spec"]["template"]["spec"]["containers"], key=key) == \
               sorted(b["spec"]["template"]["spec"]["containers"], key=key)
    validate_core(via_helm)
    validate_core(via_kustomize)


def test_a_second_pass_changes_nothing_and_unlabelled_workloads_stay_as_they_are() -> None:
    once = inject(stack(), SidecarSpec())
    assert inject(once, SidecarSpec()) == once
    plain = [d for d in stack() if d["kind"] == "Deployment" and "fleetwatch.io/tier" not in d["metadata"]["labels"]]
    assert plain and inject(plain, SidecarSpec()) == plain


def test_the_post_renderers_flags_reach_the_sidecar() -> None:
    out = post_render(stack(), "--image=registry.example.com/fleetwatch:0.1.0", "--dcgm-url=")
    for e in engines(out).values():
        side = next(c for c in e["spec"]["template"]["spec"]["containers"] if c["name"] == "fleetwatch")
        assert side["image"] == "registry.example.com/fleetwatch:0.1.0"
        assert "FLEETWATCH_DCGM_URL" not in {v["name"] for v in side["env"]}


@pytest.mark.parametrize("monitors", ["helm", "kustomize"])
def test_the_monitors_scrape_the_engines_port_by_its_real_name_and_the_sidecars(monitors: str) -> None:
    if monitors == "helm":
        docs = render_chart(ROOT / "deploy" / "helm" / "fleetwatch", {"mode": "sidecar"}, "fleetwatch", "monitoring")
    else:
        r = subprocess.run([binary("kubectl"), "kustomize", str(ROOT / "deploy" / "kubernetes" / "overlays" / "sidecar")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        docs = docs_of([r.stdout])
    from k8s import matches

    pods = [e["spec"]["template"] for e in engines(inject(stack(), SidecarSpec())).values()]
    monitors_ = [d for d in docs if d["kind"] == "PodMonitor"]
    port_sets = {m["metadata"]["name"]: {e["port"] for e in m["spec"]["podMetricsEndpoints"]} for m in monitors_}
    for pod in pods:
        names = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        selecting = [m for m in monitors_ if matches(m["spec"]["selector"], pod["metadata"]["labels"])]
        scraped = set().union(*(port_sets[m["metadata"]["name"]] & names for m in selecting))
        assert {"container-port", "fleetwatch"} <= scraped, (pod["metadata"]["labels"], port_sets)


def test_the_committed_component_is_what_inject_writes(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "exporter", "inject", "--component", str(COMPONENT), "--check"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr


def test_a_pod_without_its_tier_label_stops_with_a_clear_error(tmp_path: Path) -> None:
    """The label only on the workload, not the pod template: FLEETWATCH_TIER would be empty."""
    cfg = ROOT / "deploy" / "kubernetes" / "base" / "fleet.yaml"
    r = subprocess.run([sys.executable, "-m", "exporter", "serve", "--config", str(cfg), "--tier", ""],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "--tier is empty" in r.stderr and "pod template" in r.stderr, r.stderr
