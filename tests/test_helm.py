"""deploy/helm/fleetwatch, rendered and linted by the real Helm 4 engine (helm-python-sdk): every mode's
objects pass kubernetes-validate --strict and the prometheus-operator CRD schemas, every pod is
restricted, the config it carries is one fleetwatch accepts, values.schema.json and the chart's own checks
refuse bad values with their message, and its generated files do not drift from their generators."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import load_config
from exporter.sidecar import sidecar_config

from k8s import ROOT, breaches, pod_specs, render_chart, restricted_violations, validate_core, validate_crds

CHART = ROOT / "deploy" / "helm" / "fleetwatch"
CI = sorted((CHART / "ci").glob("*.yaml"))
BAD = sorted((Path(__file__).resolve().parent / "helm-values").glob("bad-*.yaml"))


def values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def render(vals: dict[str, Any], name: str = "fleetwatch", namespace: str = "monitoring") -> list[dict[str, Any]]:
    return render_chart(CHART, vals, name, namespace)


def fleetwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@pytest.mark.parametrize("ci", CI, ids=[p.stem for p in CI])
def test_the_chart_lints_clean(ci: Path) -> None:
    from helm_python.chart import lint

    report = lint(str(CHART), values(ci), strict=True, namespace="monitoring")
    assert report["errors"] == [] and not [m for m in report["messages"] if m["severity"] >= 2], report


@pytest.mark.parametrize("ci", CI, ids=[p.stem for p in CI])
def test_every_mode_renders_objects_kubernetes_and_the_operator_accept(ci: Path, tmp_path: Path) -> None:
    vals = values(ci)
    docs = render(vals)
    validate_core(docs)
    kinds = validate_crds(docs)
    assert {"PodMonitor"} <= kinds
    evaluator = vals.get("mode", "fleet") != "sidecar"
    assert ("ServiceMonitor" in kinds) == evaluator  # fleetwatch's own: its Service, or the sidecars' pods
    assert ("PrometheusRule" in kinds) == vals.get("prometheusRule", {}).get("enabled", True)
    specs = pod_specs(docs)
    assert len(specs) == (1 if evaluator else 0)
    for name, spec in specs:
        assert restricted_violations(spec) == [], name
        discovery = any(d["kind"] == "Role" for d in docs)
        assert spec["automountServiceAccountToken"] is discovery, "a token only where fleetwatch lists the API"
    # kube-prometheus-stack's selector label reaches every monitor and the rules
    selected = [d for d in docs if d["kind"] in ("PodMonitor", "ServiceMonitor", "PrometheusRule")]
    assert selected and all(d["metadata"]["labels"].get("release") == "kps" for d in selected)

    # the config it carries is one fleetwatch accepts, beside the plan files it names
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "fleetwatch-config"]
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
    cfg = load_config(str(tmp_path / "fleet.yaml"))
    if evaluator:
        assert cm["metadata"]["namespace"] == "monitoring"
    else:  # the sidecars mount it in the engines' namespace, and each tier's sidecar config builds
        assert cm["metadata"]["namespace"] == vals["engines"]["namespace"]
        for tier in cfg.tiers:
            side = sidecar_config(cfg, tier, pod="p", namespace="llm")
            assert side.kubernetes is None and side.state_dir is None and len(side.tiers[tier].targets) == 1


def test_the_restricted_check_catches_a_breach_in_the_charts_pod() -> None:
    (_, spec), = pod_specs(render(values(CHART / "ci" / "fleet-values.yaml")))
    for bad in breaches(spec, "fleetwatch"):
        assert restricted_violations(bad)


@pytest.mark.parametrize("bad", BAD, ids=[p.stem for p in BAD])
def test_bad_values_are_refused_with_their_message(bad: Path) -> None:
    from helm_python.errors import HelmError

    expect = bad.read_text().splitlines()[0].split("expect: ", 1)[1]
    with pytest.raises(HelmError) as e:
        render(values(bad))
    assert expect in str(e.value), str(e.value)


def test_at_least_five_bad_values_files_fail_the_schema_itself() -> None:
    from helm_python.chart import Chart
    from helm_python.errors import HelmValuesError

    refused = 0
    with Chart.load(str(CHART)) as c:
        c.validate_schema(values(CHART / "values.yaml"))  # the defaults pass
        for bad in BAD:
            try:
                c.validate_schema(values(bad))
            except HelmValuesError:
                refused += 1
    assert refused >= 5


def test_the_charts_generated_files_match_their_generators() -> None:
    files = CHART / "files"
    r = fleetwatch("rules", "--config", str(files / "fleet.yaml"), "--prometheusrule",
                   str(files / "prometheusrule.yaml"), "--check")
    assert r.returncode == 0, r.stderr
    r = fleetwatch("dashboards", "-o", str(files / "dashboards"), "--check")
    assert r.returncode == 0, r.stderr
    # its default config and plans are the kustomize deployment's
    kube = ROOT / "deploy" / "kubernetes"
    assert (files / "fleet.yaml").read_text() == (kube / "overlays" / "fleet" / "fleetwatch" / "fleet.yaml").read_text()
    for plan in ("h100-plan.yaml", "a100-plan.yaml"):
        assert (files / plan).read_text() == (kube / "base" / plan).read_text(), plan


def test_a_config_of_ones_own_goes_in_with_its_own_rules(tmp_path: Path) -> None:
    """The README's Helm path: fleetwatch rules for my-fleet.yaml, then --set-file of both."""
    mine = tmp_path / "my-fleet.yaml"  # the example, its a100 plan beside it as the ConfigMap will hold it
    mine.write_text((ROOT / "examples" / "fleet.yaml").read_text().replace("plan: plans/a100.yaml", "plan: a100.yaml"))
    plan = (ROOT / "examples" / "plans" / "a100.yaml").read_text()
    (tmp_path / "a100.yaml").write_text(plan)
    r = fleetwatch("rules", "--config", str(mine), "-o", str(tmp_path / "my-rules"))
    assert r.returncode == 0, r.stderr
    generated = (tmp_path / "my-rules" / "fleetwatch.rules.yml").read_text()
    vals = {"config": mine.read_text(), "plans": {"a100.yaml": plan}, "prometheusSelectorLabels": {"release": "kps"},
            "prometheusRule": {"rules": generated, "runbookUrl": "https://wiki.example.com/fleetwatch"}}
    docs = render(vals)
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    expected = copy.deepcopy(yaml.safe_load(generated)["groups"])
    for g in expected:
        for r_ in g["rules"]:
            if "annotations" in r_:
                r_["annotations"]["runbook_url"] = r_["annotations"]["runbook_url"].replace(
                    "https://github.com/fleetwatch/fleetwatch/blob/main/rules/runbook.md", "https://wiki.example.com/fleetwatch")
    assert rule["spec"]["groups"] == expected
    assert validate_crds([rule]) == {"PrometheusRule"}
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "fleetwatch-config"]
    assert cm["data"]["fleet.yaml"].rstrip() == mine.read_text().rstrip()
